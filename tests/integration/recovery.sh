#!/bin/bash
# Two-person recovery end to end on real tokens: KRA enrollment on cards,
# archival, request / approval / release / completion, and every dual-control
# rule, with the recovered key compared byte for byte to the archived one.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Recovery Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw kim 'kim-password-000004'; pw audrey 'audrey-password-05'

note "the first administrator, two KRA cards, and the people"
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
assert_out "recipient rsa-oaep-sha1"
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256
assert_out "recipient ecdh"
as admin 40 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra2
as admin 40 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra3
assert_out "already enrolled as KRA 'kra2'"
run_esc 0 kra list
assert_out "kra1"
for who in cm1:cert-manager cm2:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/kim.pw") as admin 0 account add kim --role kra --kra kra2

note "the KRA certificates: issued by the CA, Key Recovery Agent EKU, key on the card only"
psql_val "SELECT encode(certificate, 'base64') FROM kras WHERE name = 'kra1'" | base64 -d |
    openssl x509 -inform DER -out "$T/kra1.pem"
openssl verify -CAfile "$T/ca.pem" "$T/kra1.pem" >/dev/null || fail "KRA certificate does not verify"
openssl x509 -in "$T/kra1.pem" -noout -ext extendedKeyUsage | grep_q "1.3.6.1.4.1.311.21.6" || fail "KRA EKU"
GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --list-privkeys 'pkcs11:token=KRA1' >"$T/k.txt"
grep -q CKA_NEVER_EXTRACTABLE "$T/k.txt" && grep -q CKA_SENSITIVE "$T/k.txt" || fail "KRA key not protected"

note "two user encryption keys, certified by the CA, archived to both KRAs"
as cm1 51 policy set kra_set_size 2
as admin 2 policy set kra_set_size 99
as admin 0 policy set kra_set_size 2
run_esc 0 policy show
assert_out "set by admin"
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
for u in alice bob; do
    printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n' "$u" >"$T/enc.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u/O=Example" -out "$T/$u.csr" 2>/dev/null
    openssl x509 -req -in "$T/$u.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/$u.pem" >/dev/null 2>&1 ||
        fail "issuing $u's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$u.pem" "$T/$u.key" >"$T/$u.rec" 2>"$T/out" || fail "archiving $u"
done
grep -q "kra1,kra2\|kra2,kra1" "$T/alice.rec" || fail "record not wrapped to both KRAs: $(cat "$T/alice.rec")"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')

note "an archive record opens with stock openssl: outer layer on the CA token, inner on a KRA card"
ALICE_ID=$(cut -d' ' -f1 "$T/alice.rec")
psql_val "SELECT encode(record, 'base64') FROM archive_records WHERE id = '$ALICE_ID'" | base64 -d >"$T/rec.der"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d |
    openssl x509 -inform DER -out "$T/storage.pem"
STORAGE_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'storage'");pin-value=$P11ESCROW_USER_PIN"
KRA1_KEY="$(psql_val "SELECT key_uri FROM kras WHERE name = 'kra1'");pin-value=$P11ESCROW_USER_PIN"
# (throwaway test tokens: the engine takes its PIN from the URI here)
! openssl cms -decrypt -binary -inform DER -in "$T/rec.der" -recip "$T/kra1.pem" -engine pkcs11 -keyform engine \
    -inkey "$KRA1_KEY" -out "$T/nothing" >/dev/null 2>&1 || fail "a KRA card opened the outer layer without the CA token"
openssl cms -decrypt -binary -inform DER -in "$T/rec.der" -recip "$T/storage.pem" -engine pkcs11 -keyform engine \
    -inkey "$STORAGE_KEY" -out "$T/content.der" 2>/dev/null || fail "openssl cannot open the outer layer"
openssl asn1parse -inform DER -in "$T/content.der" >"$T/asn1.txt"
grep -q "$ALICE_ID" "$T/asn1.txt" || fail "the outer layer does not carry the record id"
off=$(awk -F: '/OCTET STRING/ { o = $1 } END { print o + 0 }' "$T/asn1.txt")
openssl asn1parse -inform DER -in "$T/content.der" -strparse "$off" -noout -out "$T/inner.der" ||
    fail "cannot extract the inner layer"
openssl cms -decrypt -binary -inform DER -in "$T/inner.der" -recip "$T/kra1.pem" -engine pkcs11 -keyform engine \
    -inkey "$KRA1_KEY" -out "$T/alice.p8" 2>/dev/null || fail "openssl cannot open the inner layer with KRA1"
cmp -s "$T/alice.p8" <(openssl pkcs8 -topk8 -nocrypt -in "$T/alice.key" -outform DER) ||
    fail "the inner layer is not alice's PKCS#8"

note "search: certificate managers and auditors yes, KRAs no"
as cm1 0 recovery search --serial "$SERIAL"
assert_out "1 record(s)"
assert_out "CN=alice"
as audrey 0 recovery search --email alice@example.org
assert_out "1 record(s)"
as kent 51 recovery search --serial "$SERIAL"

note "a KRA cannot request, a request needs a reason"
as kent 51 recovery request --serial "$SERIAL" --reason "I want it" --kra kra1
as cm1 2 recovery request --serial "$SERIAL" --reason "" --kra kra1
as cm1 2 recovery request --serial "$SERIAL" --reason "lost"
assert_out "choose the KRA"
as cm1 42 recovery request --serial "00ff00ff" --reason "no such key" --kra kra1

note "request (no extra approvals by default), release, completion by the named KRA"
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
as kent 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/early.p12"
[ ! -e "$T/early.p12" ] || fail "a file was left by a refused completion"
as cm1 51 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/cm.p12"
printf 'wrong-pin-0000\n' >"$T/bad.pin"; chmod 600 "$T/bad.pin"
run_esc 11 recovery release "$REQ" --pin-file "$T/bad.pin"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = approved ] || fail "wrong PIN changed state"
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "not released"
as kim 51 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/kim.p12"
as cm1 51 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/cm.p12"
as kent 11 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$T/bad.pin" --out "$T/x.p12"
[ ! -e "$T/x.p12" ] || fail "a file was left by a wrong KRA PIN"
as kent 14 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/x.p12"
assert_out "does not hold the key of KRA 'kra1'"
as kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/alice.p12"
assert_out "the key matches its certificate"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
[ ${#P12PW} -ge 20 ] || fail "no generated password shown"
[ "$(stat -c %a "$T/alice.p12")" = 600 ] || fail "PKCS#12 not mode 0600"

note "openssl opens the PKCS#12; the key is byte for byte the archived one"
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl pkcs12 cannot open the output"
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -info -noout 2>&1 | grep_q "AES-256-CBC" ||
    fail "PKCS#12 not AES-256"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "recovered key differs from the archived key"

note "a released package completes once"
as kent 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/again.p12"
assert_out "completes once"
[ "$(psql_val "SELECT package IS NULL FROM recovery_requests WHERE id = $REQ")" = t ] || fail "package kept"

note "policy: one more approval, never by the requester"
as admin 0 policy set recovery_approvals 1
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost it again" --kra kra2
REQ2=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
run_esc 41 recovery release "$REQ2" --pin-file "$PIN_FILE"
as cm1 51 recovery approve "$REQ2"
assert_out "cannot approve their own"
! psql "$DB" -XAtqc "INSERT INTO recovery_approvals (request_id, approver) SELECT id, requested_by FROM recovery_requests WHERE id = $REQ2" 2>/dev/null ||
    fail "the database accepted a self-approval"
as kent 51 recovery approve "$REQ2"
as cm2 0 recovery approve "$REQ2"
as cm2 41 recovery approve "$REQ2"
run_esc 0 recovery release "$REQ2" --pin-file "$PIN_FILE"
printf 'chosen-p12-password\n' >"$T/p12.pw"; chmod 600 "$T/p12.pw"
as kim 0 recovery complete "$REQ2" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/alice2.p12" \
    --p12-password-file "$T/p12.pw"
assert_not_out "shown once"
openssl pkcs12 -in "$T/alice2.p12" -passin pass:chosen-p12-password -nodes -nocerts 2>/dev/null |
    openssl pkey -outform DER >"$T/rec2.der"
cmp -s "$T/rec2.der" <(openssl pkey -in "$T/alice.key" -outform DER) || fail "EC-KRA recovery differs"

note "a retired KRA gets nothing; retiring the last KRA of a record is refused"
as admin 0 policy set recovery_approvals 0
as cm1 0 recovery request --serial "$SERIAL" --reason "third time" --kra kra1
REQ3=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
run_esc 0 recovery release "$REQ3" --pin-file "$PIN_FILE"
as cm1 51 kra retire kra1
as admin 0 kra retire kra1
as kent 51 recovery complete "$REQ3" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/r.p12"
assert_out "retired"
as cm1 41 recovery request --serial "$SERIAL" --reason "via retired" --kra kra1
as admin 41 kra retire kra2
assert_out "recoverable by no active KRA"
[ "$(psql_val "SELECT state FROM kras WHERE name = 'kra2'")" = active ] || fail "refused retire changed state"

note "an expired KRA certificate gets nothing (the clock moved 800 days on with faketime)"
as cm1 0 recovery request --serial "$SERIAL" --reason "after expiry" --kra kra2
REQX=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
if [ -n "${ASAN_OPTIONS:-}" ]; then
    note "skipped under ASan: libfaketime cannot be preloaded ahead of the sanitizer runtime"
else
    rc=0; faketime -f '+800d' "$ESC" recovery release "$REQX" --pin-file "$PIN_FILE" >"$T/out" 2>&1 || rc=$?
    [ "$rc" = 41 ] || fail "release to an expired KRA: exit $rc, expected 41"
    assert_out "expired"
    run_esc 0 recovery release "$REQX" --pin-file "$PIN_FILE"
    rc=0; faketime -f '+800d' "$ESC" recovery complete "$REQX" --token 'pkcs11:token=KRA2' \
        --kra-pin-file "$PIN_FILE" --out "$T/late.p12" --user kim --password-file "$T/kim.pw" >"$T/out" 2>&1 || rc=$?
    [ "$rc" = 51 ] || fail "completion with an expired KRA certificate: exit $rc, expected 51"
    [ ! -e "$T/late.p12" ] || fail "a file was left by a refused completion"
fi

note "policy: a certificate is revoked before its key is recovered; the CRL is signed on the CA token"
BOBSERIAL=$(openssl x509 -in "$T/bob.pem" -noout -serial | sed 's/serial=//')
as admin 0 policy set revoke_before_recovery true
as cm1 43 recovery request --serial "$BOBSERIAL" --reason "bob left" --kra kra2
assert_out "revoked before its key is recovered"
as kent 51 cert revoke --serial "$BOBSERIAL" --reason keyCompromise
as cm1 2 cert revoke --serial "$BOBSERIAL" --reason because
as cm1 42 cert revoke --serial 00abcdef --reason keyCompromise
as cm1 0 cert revoke --serial "$BOBSERIAL" --reason keyCompromise
as cm1 40 cert revoke --serial "$BOBSERIAL" --reason superseded
run_esc 0 cert crl --out "$T/ca.crl" --pin-file "$PIN_FILE"
assert_out "1 revoked certificate(s)"
openssl crl -in "$T/ca.crl" -CAfile "$T/ca.pem" -noout 2>&1 | grep_q "verify OK" || fail "the CRL does not verify"
openssl crl -in "$T/ca.crl" -noout -text | grep_q -i "Serial Number: $BOBSERIAL" || fail "bob is not on the CRL"
openssl crl -in "$T/ca.crl" -noout -text | grep_q "Key Compromise" || fail "no reason code on the CRL"
! openssl verify -crl_check -CRLfile "$T/ca.crl" -CAfile "$T/ca.pem" "$T/bob.pem" >/dev/null 2>&1 ||
    fail "openssl still accepts bob's certificate"
openssl verify -crl_check -CRLfile "$T/ca.crl" -CAfile "$T/ca.pem" "$T/alice.pem" >/dev/null ||
    fail "alice's certificate should still verify"

note "records cannot be swapped between rows, and tampering is reported"
BOB=$(cut -d' ' -f1 "$T/bob.rec"); ALICE=$(cut -d' ' -f1 "$T/alice.rec")
psql_val "UPDATE archive_records SET record = (SELECT record FROM archive_records WHERE id = '$ALICE') WHERE id = '$BOB'" >/dev/null
as cm1 0 recovery request --serial "$BOBSERIAL" --reason "bob's key" --kra kra2
REQ4=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
run_esc 33 recovery release "$REQ4" --pin-file "$PIN_FILE"
assert_out "belongs to another row"
psql_val "UPDATE archive_records SET record = set_byte(record, length(record) - 21, get_byte(record, length(record) - 21) # 1) WHERE id = '$BOB'" >/dev/null
run_esc 33 recovery release "$REQ4" --pin-file "$PIN_FILE"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ4")" = approved ] || fail "tampered release changed state"

note "every step is in the audit trail; only auditors and administrators read it"
run_esc 0 audit verify
assert_out "audit trail intact"
as audrey 0 audit show
for a in setup.create account.create kra.enroll kra.retire policy.set archive.store cert.revoke recovery.request \
    recovery.approve recovery.release recovery.complete; do
    grep -q " $a " "$T/out" || fail "no $a event in the audit trail"
done
grep -q "cm1 (cert-manager) recovery.approve request $REQ2: refused - a requester cannot approve" "$T/out" ||
    fail "the refused self-approval is not audited"
grep -q "kent (kra) recovery.complete request $REQ3: refused" "$T/out" || fail "the retired KRA's refusal is not audited"
grep -q "recovery.release request $REQ4: refused - .*belongs to another row" "$T/out" || fail "tampering not audited"
as audrey 0 audit show --action recovery.complete --actor kent
[ "$(grep -c 'recovery.complete' "$T/out")" -ge 2 ] || fail "filtering by action and actor"
! grep -v "kent" "$T/out" | grep_q "recovery.complete" || fail "the actor filter let others through"
as cm1 51 audit show
as audrey 0 audit export
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$T/out" || fail "export is not JSON lines"
run_esc 50 audit show --user nobody --password-file "$T/cm1.pw"
as audrey 0 audit show --action auth.login
assert_out "auth.login nobody: refused"

note "the database itself refuses to change or delete audit events, even for its superuser"
! psql "$DB" -XAtqc "UPDATE audit_events SET details = 'x' WHERE id = 1" 2>/dev/null || fail "an audit event was updated"
! psql "$DB" -XAtqc "DELETE FROM audit_events WHERE id = 1" 2>/dev/null || fail "an audit event was deleted"
! psql "$DB" -XAtqc "TRUNCATE audit_events" 2>/dev/null || fail "the audit trail was truncated"

note "tampering behind the triggers' back is found and named: altered, deleted, reordered"
HOSTP="-h $(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$DB") -p $(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$DB") -U postgres"
N=$(psql_val "SELECT count(*) FROM audit_events")
for kind in alter delete reorder; do
    # shellcheck disable=SC2086
    createdb $HOSTP -T p11escrow "t_$kind"
    D=${DB/dbname=p11escrow/dbname=t_$kind}
    case $kind in
    alter) sql="UPDATE audit_events SET details = 'nothing to see' WHERE id = 5" ;;
    delete) sql="DELETE FROM audit_events WHERE id = 5" ;;
    reorder) sql="UPDATE audit_events SET id = -5 WHERE id = 5; UPDATE audit_events SET id = 5 WHERE id = 6;
                  UPDATE audit_events SET id = 6 WHERE id = -5" ;;
    esac
    psql "$D" -XAtq -c "ALTER TABLE audit_events DISABLE TRIGGER audit_no_update" -c "$sql" \
        -c "ALTER TABLE audit_events ENABLE TRIGGER audit_no_update" >/dev/null || fail "could not tamper ($kind)"
    run_esc 33 audit verify --database "$D"
    case $kind in
    alter) assert_out "audit event 5: its content does not match its hash" ;;
    delete) assert_out "audit event 6: it does not follow the event before it (4)" ;;
    reorder) assert_out "audit event 5:" ;;
    esac
done
[ "$N" -gt 40 ] || fail "suspiciously few audit events: $N"

note "checkpoints signed on the CA token catch a log cut short"
N=$((N + 1)) # the local checkpoint's own break-glass.local event comes first
run_esc 0 audit checkpoint --pin-file "$PIN_FILE"
assert_out "checkpoint signed: events up to $N"
run_esc 0 audit verify
assert_out "1 checkpoint(s), the newest signing events up to $N"
# shellcheck disable=SC2086
createdb $HOSTP -T p11escrow t_cut
D=${DB/dbname=p11escrow/dbname=t_cut}
psql "$D" -XAtq -c "ALTER TABLE audit_events DISABLE TRIGGER audit_no_update" \
    -c "DELETE FROM audit_events WHERE id >= $((N - 1))" >/dev/null || fail "could not cut the log"
run_esc 33 audit verify --database "$D"
# The local verify's own break-glass.local event comes first and lands where the cut events were:
# the checkpoint then names it as not the event it signed.
grep -qE "events were cut from its end|it is not the event checkpoint 1 signed" "$T/out" || fail "the cut is not named"
psql "$D" -XAtq -c "ALTER TABLE audit_checkpoints DISABLE TRIGGER audit_checkpoints_no_update" \
    -c "UPDATE audit_checkpoints SET at = 'yesterday'" >/dev/null || fail "could not alter the checkpoint"
run_esc 33 audit verify --database "$D"
assert_out "signature does not verify"

note "no plaintext key, password or PIN in the database"
pg_dump "$DB" | xxd -p | tr -d '\n' >"$T/dump.hex"
for u in alice bob; do
    openssl pkey -in "$T/$u.key" -outform DER | xxd -p | tr -d '\n' | cut -c 200-263 >"$T/chunk"
    ! grep -qf "$T/chunk" "$T/dump.hex" || fail "$u's PKCS#8 bytes are in the database"
    openssl pkey -in "$T/$u.key" -noout -text | sed -n '/^prime1:/,/^prime2:/p' | sed '1d;$d' | tr -d ' :\n' |
        cut -c 1-48 >"$T/prime"
    ! grep -qf "$T/prime" "$T/dump.hex" || fail "$u's RSA prime is in the database"
done
for s in admin-password-0001 kent-password-0003 "$P12PW" chosen-p12-password "$P11ESCROW_USER_PIN"; do
    ! grep -q "$(printf '%s' "$s" | xxd -p | tr -d '\n')" "$T/dump.hex" || fail "a secret reached the database"
done
echo ok
