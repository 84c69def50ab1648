#!/bin/bash
# KRA certificate renewal for the same card key (issue #14), and the
# warnings before KRAs lapse.  Renewal: a new serial for the same key, the
# KRA's id and records kept, the old serial in the audit trail and in
# kra_certificates; a record wrapped before the renewal (its inner layer
# names the OLD certificate) recovers byte for byte with the renewed KRA, a
# record wrapped after names the new one; refusals (another card's key, a
# wrong PIN, a retired KRA, a non-administrator); the same through the
# service (--server).  Warnings: kra list (WARN column, lines), GET
# /api/v1/kras/health, p11escrowd's log; an expired KRA and records no
# usable KRA can recover, with faketime.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2 KRA3
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=KRA Renewal Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'; pw kim 'kim-password-00004'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
CA=(--ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE")
printf 'wrong-pin-0000\n' >"$T/bad.pin"; chmod 600 "$T/bad.pin"
kra_pem() { psql_val "SELECT encode(certificate, 'base64') FROM kras WHERE name = '$1'" | base64 -d | openssl x509 -inform DER -out "$2"; }
events() { psql_val "SELECT count(*) FROM audit_events WHERE action = '$1' AND outcome = '$2'"; }

note "kra1 certified for 10 days only, kra2 for the default 730"
as admin 0 kra enroll "${CA[@]}" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1 --days 10
as admin 0 kra enroll "${CA[@]}" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256
for who in cm1:cert-manager; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/kim.pw") as admin 0 account add kim --role kra --kra kra2

note "warnings: kra list shows kra1 expiring (default kra_expiry_warning_days 60), kra2 not"
run_esc 0 kra list
grep -E '^kra1 .* SOON ' "$T/out" >/dev/null || fail "kra1 has no SOON in the WARN column: $(cat "$T/out")"
grep -E '^kra2 .* - ' "$T/out" >/dev/null || fail "kra2 is warned about: $(cat "$T/out")"
assert_out "warning: KRA 'kra1': certificate expires"
assert_out "in 9 day(s)"
assert_out "p11escrow kra renew kra1"
assert_not_out "warning: KRA 'kra2'"
note "kra_expiry_warning_days = 5: 9 days left is no warning yet"
P11ESCROW_KRA_EXPIRY_WARNING_DAYS=5 run_esc 0 kra list
assert_not_out "warning"
P11ESCROW_KRA_EXPIRY_WARNING_DAYS=-1 run_esc 3 kra list
assert_out "kra_expiry_warning_days must be an integer from 0 to 36500"
if [ -n "${ASAN_OPTIONS:-}" ]; then
    note "skipped under ASan: libfaketime cannot be preloaded ahead of the sanitizer runtime"
else
    note "11 days on (faketime): kra1 EXPIRED"
    rc=0; faketime -f '+11d' "$ESC" kra list >"$T/out" 2>&1 || rc=$?
    [ "$rc" = 0 ] || fail "kra list under faketime exited $rc"
    grep -E '^kra1 .* EXPIRED ' "$T/out" >/dev/null || fail "kra1 is not EXPIRED: $(cat "$T/out")"
    assert_out "warning: KRA 'kra1': certificate expired"
    assert_out "recovery refuses this KRA"
fi

note "the service warns at start: its log, and GET /api/v1/kras/health"
start_daemon 1
grep -q "KRA 'kra1': certificate expires .* in 9 day(s)" "$DAEMON_LOG" || fail "no warning in the log: $(cat "$DAEMON_LOG")"
grep -q "KRAs: 2 active, 2 usable, 1 expiring within 60 day(s), 0 expired" "$DAEMON_LOG" ||
    fail "no KRA summary in the log: $(cat "$DAEMON_LOG")"
health() {
    code=$(curl -sS --cacert "$SERVER_CA" -K "$T/$1.curl" -o "$T/body" -w '%{http_code}' "$URL/api/v1/kras/health")
    [ "$code" = 200 ] || fail "GET /kras/health: HTTP $code: $(cat "$T/body")"
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print('"$1"')' "$T/body"; }
health cm1
[ "$(jget 'd["status"]')" = warn ] || fail "health is not warn: $(cat "$T/body")"
[ "$(jget 'd["expiring"], d["expired"], d["usable"], d["threshold"], d["warning_days"]')" = "1 0 2 1 60" ] ||
    fail "health counts: $(cat "$T/body")"
[ "$(jget '[k["name"] for k in d["kras"]]')" = "['kra1']" ] || fail "health names: $(cat "$T/body")"
[ "$(jget 'd["kras"][0]["days_left"]')" = 9 ] || fail "health days_left: $(cat "$T/body")"
code=$(curl -sS --cacert "$SERVER_CA" -o /dev/null -w '%{http_code}' "$URL/api/v1/kras/health")
[ "$code" = 401 ] || fail "GET /kras/health without an account: HTTP $code"

note "alice's key archived to both KRAs, before any renewal"
as admin 0 policy set kra_set_size 2
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
issue() { # issue USER: a CA-signed encryption certificate and its software key in $T/USER.{pem,key}, archived
    printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n' "$1" >"$T/enc.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$T/$1.key" -subj "/CN=$1/O=Example" -out "$T/$1.csr" 2>/dev/null
    openssl x509 -req -in "$T/$1.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/$1.pem" >/dev/null 2>&1 ||
        fail "issuing $1's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$1.pem" "$T/$1.key" >"$T/$1.rec" 2>"$T/out" || fail "archiving $1"
}
issue alice
ALICE=$(cut -d' ' -f1 "$T/alice.rec")
# The recipients a record's inner layer names (issuer and serial), opened with stock openssl and the CA token.
STORAGE_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'storage'");pin-value=$P11ESCROW_USER_PIN"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d |
    openssl x509 -inform DER -out "$T/storage.pem"
recipient_serials() { # recipient_serials RECORD: the serials (upper-case hex, no leading zeros) its inner layer names
    psql_val "SELECT encode(record, 'base64') FROM archive_records WHERE id = '$1'" | base64 -d >"$T/rec.der"
    openssl cms -decrypt -binary -inform DER -in "$T/rec.der" -recip "$T/storage.pem" -engine pkcs11 -keyform engine \
        -inkey "$STORAGE_KEY" -out "$T/content.der" 2>/dev/null || fail "openssl cannot open $1's outer layer"
    openssl asn1parse -inform DER -in "$T/content.der" >"$T/asn1.txt"
    off=$(awk -F: '/OCTET STRING/ { o = $1 } END { print o + 0 }' "$T/asn1.txt")
    openssl asn1parse -inform DER -in "$T/content.der" -strparse "$off" -noout -out "$T/inner.der" ||
        fail "cannot extract $1's inner layer"
    openssl cms -cmsout -print -inform DER -in "$T/inner.der" 2>/dev/null |
        sed -n 's/^ *serialNumber: *//p' | python3 -c '
import sys
for l in sys.stdin:
    l = l.strip().split()[0]
    v = int(l, 16) if l.lower().startswith("0x") else int(l)
    print("%X" % v)' | sort
}
serial_of() { openssl x509 -in "$1" -noout -serial | sed 's/serial=//' | python3 -c 'import sys; print("%X" % int(sys.stdin.read().strip(), 16))'; }
kra_pem kra1 "$T/kra1-old.pem"
OLD1=$(serial_of "$T/kra1-old.pem")
recipient_serials "$ALICE" | grep_q -x "$OLD1" || fail "alice's record does not name kra1's certificate ($OLD1)"
ID1=$(psql_val "SELECT id FROM kras WHERE name = 'kra1'")

note "refused: another card's key (mismatch), a wrong card PIN, a non-administrator, an unknown KRA"
KRA2_URI=$(psql_val "SELECT key_uri FROM kras WHERE name = 'kra2'")
c0=$(events kra.renew.challenge refused)
as admin 32 kra renew kra1 "${CA[@]}" --key "$KRA2_URI" --kra-pin-file "$PIN_FILE"
assert_out "is not the key of KRA 'kra1'"
as admin 11 kra renew kra1 "${CA[@]}" --kra-pin-file "$T/bad.pin"
as cm1 51 kra renew kra1 "${CA[@]}" --kra-pin-file "$PIN_FILE"
as admin 42 kra renew nosuch "${CA[@]}" --kra-pin-file "$PIN_FILE"
as admin 2 kra renew kra1 "${CA[@]}" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE"
[ "$(events kra.renew.challenge refused)" = $((c0 + 1)) ] || fail "the mismatch is not audited"
[ "$(psql_val "SELECT count(*) FROM kra_certificates")" = 0 ] || fail "a refused renewal kept a certificate"
[ "$(serial_of <(kra_pem kra1 /dev/stdout))" = "$OLD1" ] || fail "a refused renewal changed kra1's certificate"

note "kra1 renewed on the service host: a new serial, the same key, id and records"
as admin 0 kra renew kra1 "${CA[@]}" --kra-pin-file "$PIN_FILE" --days 400
assert_out "KRA 'kra1' renewed, possession proven: the same key on card 'KRA1'"
assert_not_out "not on the card"
kra_pem kra1 "$T/kra1-new.pem"
NEW1=$(serial_of "$T/kra1-new.pem")
[ "$NEW1" != "$OLD1" ] || fail "the renewed certificate kept the serial"
assert_out "replacing serial"
cmp -s <(openssl x509 -in "$T/kra1-old.pem" -noout -pubkey) <(openssl x509 -in "$T/kra1-new.pem" -noout -pubkey) ||
    fail "the renewed certificate is for another key"
openssl verify -CAfile "$T/ca.pem" "$T/kra1-new.pem" >/dev/null || fail "the renewed certificate does not verify"
openssl x509 -in "$T/kra1-new.pem" -noout -ext extendedKeyUsage | grep_q "1.3.6.1.4.1.311.21.6" || fail "no KRA EKU"
openssl x509 -in "$T/kra1-new.pem" -noout -subject | grep_q "CN *= *kra1" || fail "the renewed certificate's subject"
days=$(( ( $(date -d "$(openssl x509 -in "$T/kra1-new.pem" -noout -enddate | cut -d= -f2)" +%s) - $(date +%s) ) / 86400 ))
[ "$days" -ge 398 ] && [ "$days" -le 400 ] || fail "the renewed certificate is valid for $days days, not 400"
[ "$(psql_val "SELECT id || ' ' || state || ' ' || token_label FROM kras WHERE name = 'kra1'")" = "$ID1 active KRA1" ] ||
    fail "the KRA row changed identity"
[ "$(psql_val "SELECT count(*) FROM archive_record_kras WHERE kra_id = $ID1")" = 1 ] || fail "kra1's records changed"
[ "$(psql_val "SELECT count(*) FROM kras")" = 2 ] || fail "a renewal added a KRA"
[ "$(psql_val "SELECT count(*) FROM kra_certificates WHERE kra_id = $ID1")" = 1 ] || fail "the old certificate was not kept"
[ "$(psql_val "SELECT outcome FROM kra_challenges WHERE name = 'kra1' AND renews AND used_at IS NOT NULL AND outcome <> 'wrong secret'")" = renewed ] ||
    fail "the renewal's challenge is not used up as renewed"
details=$(psql_val "SELECT details FROM audit_events WHERE action = 'kra.renew' AND object = 'kra1' AND outcome = 'ok'")
old_hex=$(psql_val "SELECT cert_serial FROM kra_certificates WHERE kra_id = $ID1")
case "$details" in *"replacing serial $old_hex"*"same card key"*) ;; *) fail "kra.renew details: $details" ;; esac
SOFTHSM2_CONF=$SOFTHSM2_CONF p11tool --provider "$SOFTHSM" --list-all-certs 'pkcs11:token=KRA1' 2>/dev/null |
    grep -c "p11escrow KRA kra1" >"$T/ncerts" || true
[ "$(cat "$T/ncerts")" -ge 1 ] || fail "no KRA certificate on the card"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA1)" = 1 ] || fail "the card holds other than one key after the renewal"
run_esc 0 kra list
assert_not_out "warning: KRA 'kra1'"
grep -E '^kra1 .* - ' "$T/out" >/dev/null || fail "kra1 still warned about after the renewal: $(cat "$T/out")"

note "a record wrapped after the renewal names the new certificate; alice's still names the old one"
issue bob
BOB=$(cut -d' ' -f1 "$T/bob.rec")
recipient_serials "$BOB" | grep_q -x "$NEW1" || fail "bob's record does not name kra1's new certificate"
recipient_serials "$BOB" | grep_q -x "$OLD1" && fail "bob's record names kra1's old certificate"
recipient_serials "$ALICE" | grep_q -x "$OLD1" || fail "alice's record changed"

recover() { # recover USER KRA ACCOUNT TOKEN: the record recovered by KRA, compared byte for byte with USER's key
    local req
    as cm1 0 recovery request --serial "$(openssl x509 -in "$T/$1.pem" -noout -serial | sed 's/serial=//')" \
        --reason "$1 lost the laptop ($2)" --kra "$2"
    req=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
    [ -n "$req" ] || fail "no request id"
    run_esc 0 recovery release "$req" --pin-file "$PIN_FILE"
    P11ESCROW_P12_PASSWORD=p12-password-0000 as "$3" 0 recovery complete "$req" --token "pkcs11:token=$4" \
        --kra-pin-file "$PIN_FILE" --out "$T/$1-$2.p12"
    assert_out "request $req completed: the key matches its certificate"
    openssl pkcs12 -in "$T/$1-$2.p12" -passin pass:p12-password-0000 -nodes -nocerts -out "$T/$1-$2.key" 2>/dev/null ||
        fail "openssl pkcs12 cannot open the output"
    cmp -s <(openssl pkey -in "$T/$1-$2.key" -outform DER) <(openssl pkey -in "$T/$1.key" -outform DER) ||
        fail "the key recovered by $2 differs from $1's archived one"
}
note "alice's record (wrapped to kra1's OLD certificate) recovers byte for byte with the renewed kra1"
recover alice kra1 kent KRA1
note "bob's (wrapped to the new certificate) too"
recover bob kra1 kent KRA1

note "through the service: kra2 renewed at the workstation (no CA token, no database there)"
OLD2=$(psql_val "SELECT cert_serial FROM kras WHERE name = 'kra2'")
KRA1_URI=$(psql_val "SELECT key_uri FROM kras WHERE name = 'kra1'")
srv admin 32 kra renew kra2 --key "$KRA1_URI" --kra-pin-file "$PIN_FILE"
assert_out "is not the key of KRA 'kra2'"
srv admin 11 kra renew kra2 --kra-pin-file "$T/bad.pin"
srv cm1 51 kra renew kra2 --kra-pin-file "$PIN_FILE"
[ "$(psql_val "SELECT cert_serial FROM kras WHERE name = 'kra2'")" = "$OLD2" ] || fail "a refused renewal changed kra2"
note "a renewal refused at its proof through the service is audited as kra.renew, not kra.enroll"
# Every challenge made now is already past its time when the card's answer arrives.
psql_val "CREATE FUNCTION t_expire() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN
          NEW.expires_at := NEW.created_at + interval '1 millisecond'; RETURN NEW; END \$\$;
          CREATE TRIGGER t_expire BEFORE INSERT ON kra_challenges FOR EACH ROW EXECUTE FUNCTION t_expire()" >/dev/null
r0=$(events kra.renew refused) e0=$(events kra.enroll refused)
srv admin 41 kra renew kra2 --kra-pin-file "$PIN_FILE"
assert_out "expired"
psql_val "DROP TRIGGER t_expire ON kra_challenges; DROP FUNCTION t_expire()" >/dev/null
[ "$(events kra.renew refused)" = $((r0 + 1)) ] || fail "the refused proof is not audited as kra.renew"
[ "$(events kra.enroll refused)" = "$e0" ] || fail "the refused renewal was audited as kra.enroll"
srv admin 0 kra renew kra2 --kra-pin-file "$PIN_FILE" --days 200
assert_out "KRA 'kra2' renewed through the service, possession proven"
assert_out "replacing serial $OLD2"
NEW2=$(psql_val "SELECT cert_serial FROM kras WHERE name = 'kra2'")
[ "$NEW2" != "$OLD2" ] || fail "kra2's serial did not change"
psql_val "SELECT details FROM audit_events WHERE action = 'kra.renew' AND object = 'kra2' AND outcome = 'ok'" |
    grep -q "^through the service, possession proven" || fail "kra.renew through the service does not say how"
note "alice's record (wrapped to kra2's old certificate) recovers through the service with the renewed kra2"
as cm1 0 recovery request --record "$ALICE" --reason "alice again (kra2)" --kra kra2
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
P11ESCROW_P12_PASSWORD=p12-password-0000 srv kim 0 recovery complete "$REQ" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --out "$T/alice-srv.p12"
openssl pkcs12 -in "$T/alice-srv.p12" -passin pass:p12-password-0000 -nodes -nocerts -out "$T/alice-srv.key" 2>/dev/null ||
    fail "openssl pkcs12 cannot open the output"
cmp -s <(openssl pkey -in "$T/alice-srv.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the key recovered through the service differs"
health cm1
[ "$(jget 'd["status"], d["expiring"], d["records"], d["records_below_threshold"]')" = "ok 0 2 0" ] ||
    fail "health after the renewals: $(cat "$T/body")"
srv cm1 0 kra list
assert_not_out "warning"

note "a retired KRA is not renewed"
as admin 0 kra enroll "${CA[@]}" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --name kra3
as admin 0 kra retire kra3
as admin 41 kra renew kra3 "${CA[@]}" --kra-pin-file "$PIN_FILE"
assert_out "KRA 'kra3' is retired"
srv admin 41 kra renew kra3 --kra-pin-file "$PIN_FILE"

if [ -z "${ASAN_OPTIONS:-}" ]; then
    note "800 days on (faketime): every KRA expired, both records have no usable KRA"
    rc=0; faketime -f '+800d' "$ESC" kra list >"$T/out" 2>&1 || rc=$?
    [ "$rc" = 0 ] || fail "kra list under faketime exited $rc"
    assert_out "warning: 2 of 2 record(s) have fewer than 1 usable (active, unexpired) KRA(s) in their set, 2 of them none"
fi
stop_daemon
echo "PASS kra_renew"
