#!/bin/bash
# Enrollment without the service: profiles, one-time enrollment passwords,
# the service's own TLS certificate (CLI), and the library calls the EST
# service makes (tests/tools/enroll_tool): issuance with archival in one
# transaction (also when the process is killed at each step), single use of
# passwords, the keeper's transport decryption (ECDH and RSA), client
# certificate checks, and several keepers on worker threads of one process.
. "$(dirname "$0")/lib.sh"
: "${ENROLL_TOOL:?set by meson}"
TOOL=$ENROLL_TOOL

provision_tokens "$T/hsm" CA KRA1 CA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Enroll Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm 'cm-password-000002'; pw aud 'aud-password-00003'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
P11ESCROW_NEW_PASSWORD=cm-password-000002 as admin 0 account add cm --role cert-manager
P11ESCROW_NEW_PASSWORD=aud-password-00003 as admin 0 account add aud --role auditor
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1

# tool EXPECTED_RC ARGS...: run enroll_tool, output in $T/out.
tool() {
    local want=$1 rc=0; shift
    "$TOOL" "$@" >"$T/out" 2>&1 </dev/null || rc=$?
    [ "$rc" -eq "$want" ] || fail "enroll_tool $* exited $rc, expected $want"
}
count() { psql_val "SELECT count(*) FROM $1"; }
eckey() { openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:${2:-P-256}" -out "$T/$1.key" 2>/dev/null; }
rsakey() { openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${2:-2048}" -out "$T/$1.key" 2>/dev/null; }

note "profiles"
run_esc 0 profile list
for p in encryption encryption-rsa signing tls-server; do assert_out "$p"; done
assert_out "(default)"
run_esc 0 profile --help
run_esc 2 profile frob
# A configuration file changes nothing of the built-in list (it once made 'list' an error).
printf 'log_level = info\n' >"$T/profile.conf"
run_esc 0 profile list
cp "$T/out" "$T/profiles.builtin"
run_esc 0 profile list --config "$T/profile.conf"
cmp -s "$T/out" "$T/profiles.builtin" || fail "profile list --config lists other profiles"
run_esc 2 profile list --user admin
assert_out "go with --server URL"

note "one-time enrollment passwords: created by administrators and certificate managers only"
as cm 0 enroll-password create --subject 'CN=Alice,O=Example,emailAddress=alice@example.org' --hours 2
grep -qE '^name: enroll-[0-9a-f]{8}$' "$T/out" || fail "no name line"
grep -qE '^password: [2-9a-km-np-zA-HJ-NP-Z]{20}$' "$T/out" || fail "no 20-character unambiguous password"
grep -qE '^expires: 20[0-9-]+ [0-9:]+Z$' "$T/out" || fail "no expiry"
OTP_A=$(sed -n 's/^name: //p' "$T/out")
( umask 077; sed -n 's/^password: //p' "$T/out" >"$T/otp_a.pw" )
as admin 0 enroll-password create --subject 'CN=Bob,O=Example' --profile signing
OTP_B=$(sed -n 's/^name: //p' "$T/out")
( umask 077; sed -n 's/^password: //p' "$T/out" >"$T/otp_b.pw" )
as aud 51 enroll-password create --subject 'CN=Eve'
as cm 2 enroll-password create --subject 'CN=Eve' --profile nonsense
as cm 2 enroll-password create --subject 'CN=Eve' --profile tls-server
assert_out "not a profile enrollees can use"
as cm 2 enroll-password create --subject 'CN=Eve' --hours 0
as cm 2 enroll-password create --subject 'CN=Eve' --hours 721
as cm 2 enroll-password create --subject 'NOTATYPE=Eve'
as cm 2 enroll-password create --subject 'CN=Eve\+Mallory'
run_esc 2 enroll-password create --subject 'CN=Eve'
run_esc 0 enroll-password --help
[ "$(count enrollment_passwords)" = 2 ] || fail "refused creations left rows"
as aud 0 enroll-password list
assert_out "2 enrollment password(s)"
assert_out "$OTP_A"
assert_out "unused"
assert_not_out "$(cat "$T/otp_a.pw")"
[ "$(psql_val "SELECT count(*) FROM enrollment_passwords WHERE hash LIKE '\$argon2id\$%'")" = 2 ] ||
    fail "passwords not stored as Argon2id hashes"
psql_val "SELECT * FROM enrollment_passwords" | grep_q -F "$(cat "$T/otp_a.pw")" && fail "a password is in the database"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.password.create' AND outcome = 'ok'")" = 2 ] ||
    fail "password creations not audited"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.password.create' AND outcome = 'refused'")" -ge 2 ] ||
    fail "refused creations not audited"
! psql "$DB" -XAtqc "UPDATE enrollment_passwords SET used_at = NULL WHERE name = '$OTP_A'" 2>/dev/null ||
    fail "the database let a password be marked unused"

note "password checks: wrong, unknown and malformed names fail alike and are audited"
tool 0 otp-check "$DB" "$OTP_A" "$T/otp_a.pw"
grep -q "^subject CN=Alice,O=Example,emailAddress=alice@example.org$" "$T/out" || fail "grant subject"
tool 50 otp-check "$DB" "$OTP_A" "$T/otp_b.pw"
msg_wrong=$(sed 's/enroll-[0-9a-f]*//' "$T/out")
tool 50 otp-check "$DB" enroll-00000000 "$T/otp_a.pw"
[ "$(sed 's/enroll-[0-9a-f]*//' "$T/out")" = "$msg_wrong" ] || fail "an unknown name answers differently"
tool 50 otp-check "$DB" "x'; DROP TABLE accounts; --" "$T/otp_a.pw"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.password.check' AND outcome = 'refused'")" = 3 ] ||
    fail "failed password checks not audited"

note "issuance with archival: certificate and record in one transaction"
eckey alice
tool 0 issue "$DB" "$PIN_FILE" encryption 'CN=Alice,O=Example,emailAddress=alice@example.org' "$T/alice.key" \
    --key "$T/alice.key" --otp "$OTP_A" --out "$T/alice.pem"
read -r _ SERIAL _ RECORD <"$T/out"
[ "$(psql_val "SELECT count(*) FROM certificates WHERE serial = '$SERIAL' AND profile = 'encryption'")" = 1 ] ||
    fail "no certificates row"
[ "$(psql_val "SELECT cert_serial || ' ' || source FROM archive_records WHERE id = '$RECORD'")" = "$SERIAL enroll-client" ] ||
    fail "no archive record for the certificate"
[ "$(psql_val "SELECT count(*) FROM archive_record_kras WHERE record_id = '$RECORD'")" = 1 ] || fail "no KRA set"
[ "$(psql_val "SELECT used_at IS NOT NULL FROM enrollment_passwords WHERE name = '$OTP_A'")" = t ] ||
    fail "password not consumed"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.issue' AND object = '$SERIAL' AND outcome = 'ok' AND details LIKE '%record $RECORD%'")" = 1 ] ||
    fail "issuance not audited"
openssl verify -CAfile "$T/ca.pem" "$T/alice.pem" >/dev/null || fail "certificate does not verify"
openssl x509 -in "$T/alice.pem" -noout -ext keyUsage,extendedKeyUsage,subjectAltName >"$T/ext.txt"
grep -q "Key Agreement" "$T/ext.txt" && grep -q "E-mail Protection" "$T/ext.txt" &&
    grep -q "email:alice@example.org" "$T/ext.txt" || fail "wrong extensions: $(cat "$T/ext.txt")"
cmp -s <(psql_val "SELECT encode(der, 'base64') FROM certificates WHERE serial = '$SERIAL'" | base64 -d) \
    <(openssl x509 -in "$T/alice.pem" -outform DER) || fail "stored DER differs"

note "a one-time password works once"
eckey alice2
tool 50 issue "$DB" "$PIN_FILE" encryption 'CN=Alice,O=Example,emailAddress=alice@example.org' "$T/alice2.key" \
    --key "$T/alice2.key" --otp "$OTP_A"
tool 50 otp-check "$DB" "$OTP_A" "$T/otp_a.pw"
note "... for its own subject and profile only, and a mismatch does not consume it"
eckey bob
tool 43 issue "$DB" "$PIN_FILE" signing 'CN=Mallory,O=Example' "$T/bob.key" --otp "$OTP_B"
tool 43 issue "$DB" "$PIN_FILE" encryption 'CN=Bob,O=Example' "$T/bob.key" --key "$T/bob.key" --otp "$OTP_B"
tool 0 issue "$DB" "$PIN_FILE" signing 'CN=Bob,O=Example' "$T/bob.key" --otp "$OTP_B" --out "$T/bob.pem"
read -r _ BOB_SERIAL _ BOB_RECORD <"$T/out"
[ "$BOB_RECORD" = - ] || fail "a signing key was archived"
openssl x509 -in "$T/bob.pem" -noout -ext keyUsage,extendedKeyUsage >"$T/ext.txt"
grep -q "Digital Signature, Non Repudiation" "$T/ext.txt" && grep -q "TLS Web Client Authentication" "$T/ext.txt" ||
    fail "signing profile extensions: $(cat "$T/ext.txt")"

note "refusals: signing key archived, archival without key, other key types, wrong key"
before=$(count certificates)
tool 43 issue "$DB" "$PIN_FILE" signing 'CN=Carol' "$T/bob.key" --key "$T/bob.key"
grep -q "never archived" "$T/out" || fail "no reason given"
tool 43 issue "$DB" "$PIN_FILE" encryption 'CN=Carol' "$T/bob.key"
grep -q "requires key archival: use /fullcmc or /serverkeygen" "$T/out" || fail "no reason given"
tool 43 issue "$DB" "$PIN_FILE" tls-server 'CN=Carol' "$T/bob.key"
tool 43 issue "$DB" "$PIN_FILE" nonsense 'CN=Carol' "$T/bob.key"
rsakey small 1024
tool 43 issue "$DB" "$PIN_FILE" signing 'CN=Carol' "$T/small.key"
grep -q "allowed: rsa2048, rsa3072, rsa4096, ec-p256, ec-p384" "$T/out" || fail "allowed key types not named"
eckey p521 P-521
tool 43 issue "$DB" "$PIN_FILE" signing 'CN=Carol' "$T/p521.key"
tool 32 issue "$DB" "$PIN_FILE" encryption 'CN=Carol' "$T/bob.key" --key "$T/alice2.key"
long="CN=Carol$(for i in $(seq 9); do printf ',OU=%060d' "$i"; done)"
tool 43 issue "$DB" "$PIN_FILE" signing "$long" "$T/bob.key"
assert_out "longer than 511 characters"
[ "$(count certificates)" = "$before" ] || fail "a refused request left a certificate"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.issue' AND outcome = 'refused'")" -ge 10 ] ||
    fail "refusals not audited"
note "RSA keys: keyEncipherment"
rsakey carol
tool 0 issue "$DB" "$PIN_FILE" encryption-rsa 'CN=Carol,O=Example' "$T/carol.key" --key "$T/carol.key" \
    --source server --out "$T/carol.pem"
openssl x509 -in "$T/carol.pem" -noout -ext keyUsage | grep_q "Key Encipherment" || fail "RSA key usage"
[ "$(psql_val "SELECT source FROM archive_records WHERE subject = 'CN=Carol,O=Example'")" = enroll-server ] ||
    fail "source not recorded"
note "server key generation per profile"
tool 0 keygen encryption
grep -q "BEGIN PRIVATE KEY" "$T/out" || fail "no key generated"
tool 0 keygen encryption-rsa
tool 43 keygen signing

note "killed at each step: both rows or neither (and the password consumed only with them)"
for point in after-sign after-cert-row after-archive after-commit; do
    as cm 0 enroll-password create --subject "CN=Fault $point" --profile encryption
    name=$(sed -n 's/^name: //p' "$T/out")
    eckey "$point"
    rc=0
    # (in a subshell, whose "Killed" notice is dropped)
    ( P11ESCROW_FAULT_KILL=$point "$TOOL" issue "$DB" "$PIN_FILE" encryption "CN=Fault $point" "$T/$point.key" \
        --key "$T/$point.key" --otp "$name" >"$T/out" 2>&1; r=$?; exit $r ) 2>/dev/null || rc=$?
    [ "$rc" -eq 137 ] || fail "P11ESCROW_FAULT_KILL=$point: exited $rc, not killed"
    # The killed client's backend rolls back as soon as it sees the connection gone.
    for _ in $(seq 50); do
        [ "$(psql_val "SELECT count(*) FROM pg_stat_activity WHERE datname = 'p11escrow' AND state LIKE 'idle in transaction%'")" = 0 ] && break
        sleep 0.1
    done
    c=$(psql_val "SELECT count(*) FROM certificates WHERE subject = 'CN=Fault $point'")
    a=$(psql_val "SELECT count(*) FROM archive_records WHERE subject = 'CN=Fault $point'")
    u=$(psql_val "SELECT count(*) FROM enrollment_passwords WHERE name = '$name' AND used_at IS NOT NULL")
    want=0
    [ "$point" = after-commit ] && want=1
    [ "$c$a$u" = "$want$want$want" ] ||
        fail "killed $point: $c certificate row(s), $a archive record(s), $u password(s) used; expected $want each"
done

note "the keeper opens archival envelopes to the transport certificate: ECDH (the default)"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d |
    openssl x509 -inform DER -out "$T/transport.pem"
eckey dave
openssl pkcs8 -topk8 -nocrypt -in "$T/dave.key" -outform DER -out "$T/dave.p8"
openssl cms -encrypt -recip "$T/transport.pem" -aes256 -binary -outform DER -in "$T/dave.p8" -out "$T/env.der"
tool 0 transport "$DB" "$PIN_FILE" "$T/env.der" --expect "$T/dave.key"
assert_out "the envelope holds the expected key"
openssl cms -encrypt -recip "$T/transport.pem" -aes-256-gcm -binary -outform DER -in "$T/dave.p8" -out "$T/envg.der"
tool 0 transport "$DB" "$PIN_FILE" "$T/envg.der" --expect "$T/dave.key"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/other.key" -subj /CN=other \
    -days 1 -out "$T/other.pem" 2>/dev/null
openssl cms -encrypt -recip "$T/other.pem" -aes256 -binary -outform DER -in "$T/dave.p8" -out "$T/wrong.der"
tool 34 transport "$DB" "$PIN_FILE" "$T/wrong.der"
head -c 100 "$T/env.der" >"$T/short.der"
tool 31 transport "$DB" "$PIN_FILE" "$T/short.der"
python3 -c 'import sys; d = bytearray(open(sys.argv[1], "rb").read()); d[-20] ^= 1; open(sys.argv[2], "wb").write(d)' \
    "$T/env.der" "$T/tampered.der"
tool 33 transport "$DB" "$PIN_FILE" "$T/tampered.der"
printf 'not a key' | openssl cms -encrypt -recip "$T/transport.pem" -aes256 -binary -outform DER -out "$T/nokey.der"
tool 31 transport "$DB" "$PIN_FILE" "$T/nokey.der"
# AES key wrap with padding (RFC 5649) for the ECDH recipient: refused before any decryption (OpenSSL
# before 3.0.22 writes past a heap buffer when such a wrapped key does not unwrap: CVE-2026-63072).
openssl cms -encrypt -recip "$T/transport.pem" -aes256 -wrap id-aes256-wrap-pad -binary -outform DER \
    -in "$T/dave.p8" -out "$T/wrappad.der"
tool 31 transport "$DB" "$PIN_FILE" "$T/wrappad.der"
assert_out "uses a key wrap other than AES key wrap (RFC 3394)"
python3 -c 'import sys; d = bytearray(open(sys.argv[1], "rb").read()); d[-40] ^= 1; open(sys.argv[2], "wb").write(d)' \
    "$T/wrappad.der" "$T/wrappad-bad.der"
tool 31 transport "$DB" "$PIN_FILE" "$T/wrappad-bad.der"
# A PKCS#8 structure whose key octets are no EC private key: the structure parses, the key does not.
cat >"$T/badkey.cnf" <<'EOF'
asn1 = SEQUENCE:p8
[p8]
version = INT:0
alg = SEQUENCE:alg
key = FORMAT:HEX,OCTETSTRING:3003020101
[alg]
oid = OID:id-ecPublicKey
curve = OID:prime256v1
EOF
openssl asn1parse -genconf "$T/badkey.cnf" -out "$T/badkey.p8" >/dev/null
openssl cms -encrypt -recip "$T/transport.pem" -aes256 -binary -outform DER -in "$T/badkey.p8" -out "$T/badkey.der"
note "prepared statements the server dropped or a schema change altered: one transient failure, then they work"
tool 0 store-stale "$DB"

note "statements held back for the next round trip: a failing one fails the statement it went with, the session stays clean"
tool 0 store-pipeline "$DB"

note "one keeper, one envelope after another: a key that does not decode spoils none of the next"
tool 0 transport-seq "$DB" "$PIN_FILE" "$T/dave.key" "$T/env.der:0" "$T/badkey.der:31" "$T/envg.der:0" \
    "$T/nokey.der:31" "$T/tampered.der:33" "$T/env.der:0"
assert_out "badkey.der: 31 the archival envelope does not hold an unencrypted PKCS#8 private key"

note "... and RSA key transport (PKCS#1 v1.5 and OAEP) with an RSA transport key"
createdb -h "$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$DB")" -p "$(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$DB")" \
    -U postgres rsaca
DB2=${DB/dbname=p11escrow/dbname=rsaca}
run_esc 0 setup --database "$DB2" --token 'pkcs11:token=CA2' --pin-file "$PIN_FILE" --subject 'CN=RSA Transport CA' \
    --transport-key-type rsa3072
psql "$DB2" -XAtqc "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d |
    openssl x509 -inform DER -out "$T/transport2.pem"
openssl cms -encrypt -recip "$T/transport2.pem" -aes256 -binary -outform DER -in "$T/dave.p8" -out "$T/env2.der"
tool 0 transport "$DB2" "$PIN_FILE" "$T/env2.der" --expect "$T/dave.key"
openssl cms -encrypt -recip "$T/transport2.pem" -keyopt rsa_padding_mode:oaep -aes256 -binary -outform DER \
    -in "$T/dave.p8" -out "$T/env3.der"
tool 0 transport "$DB2" "$PIN_FILE" "$T/env3.der" --expect "$T/dave.key"
tool 34 transport "$DB2" "$PIN_FILE" "$T/env.der"

note "client certificates: ours, recorded, valid, not revoked"
tool 0 check-cert "$DB" "$T/bob.pem"
tool 50 check-cert "$DB" "$T/other.pem"
assert_out "was not issued by this CA"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d |
    openssl x509 -inform DER -out "$T/storage.pem"
tool 50 check-cert "$DB" "$T/storage.pem"
assert_out "does not authenticate enrollees"
# The CA key signs another certificate with Bob's serial, never recorded.
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
openssl req -new -key "$T/bob.key" -subj '/CN=Not Bob' -out "$T/twin.csr"
openssl x509 -req -in "$T/twin.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
    -set_serial "0x$BOB_SERIAL" -days 30 -out "$T/twin.pem" >/dev/null 2>&1 || fail "cannot sign the twin"
tool 50 check-cert "$DB" "$T/twin.pem"
assert_out "differs from the one recorded"
if command -v faketime >/dev/null; then
    rc=0
    # (faketime is preloaded ahead of a sanitizer runtime: tell ASan that is fine)
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
        faketime -f '+400d' "$TOOL" check-cert "$DB" "$T/bob.pem" >"$T/out" 2>&1 || rc=$?
    [ "$rc" -eq 50 ] && grep -q "has expired" "$T/out" || fail "an expired certificate was accepted ($rc)"
fi
as cm 0 cert revoke --serial "$BOB_SERIAL" --reason superseded
tool 50 check-cert "$DB" "$T/bob.pem"
assert_out "is revoked"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.client-cert' AND outcome = 'refused'")" -ge 4 ] ||
    fail "refused client certificates not audited"

note "service-cert: the service's TLS certificate"
as cm 51 service-cert --cert "$T/svc.pem" --key "$T/svc.key" --name escrow.example.org --pin-file "$PIN_FILE"
[ ! -e "$T/svc.pem" ] && [ ! -e "$T/svc.key" ] || fail "a refused service-cert left files"
as admin 2 service-cert --cert "$T/svc.pem" --key "$T/svc.key" --name 'bad_name!' --pin-file "$PIN_FILE"
[ ! -e "$T/svc.pem" ] && [ ! -e "$T/svc.key" ] || fail "a refused service-cert left files"
as admin 2 service-cert --cert "$T/svc.pem" --key "$T/svc.key" --pin-file "$PIN_FILE"
as admin 0 service-cert --cert "$T/svc.pem" --key "$T/svc.key" --name escrow.example.org --name 127.0.0.1 \
    --name ::1 --pin-file "$PIN_FILE"
assert_out "mode 0600"
[ "$(stat -c %a "$T/svc.key")" = 600 ] || fail "key file mode $(stat -c %a "$T/svc.key")"
openssl verify -CAfile "$T/ca.pem" "$T/svc.pem" >/dev/null || fail "service certificate does not verify"
[ "$(grep -c 'BEGIN CERTIFICATE' "$T/svc.pem")" = 2 ] || fail "the CA certificate does not follow"
openssl x509 -in "$T/svc.pem" -noout -ext subjectAltName,extendedKeyUsage,keyUsage -subject >"$T/ext.txt"
for want in "DNS:escrow.example.org" "IP Address:127.0.0.1" "IP Address:0:0:0:0:0:0:0:1" \
    "TLS Web Server Authentication" "Digital Signature" "CN = escrow.example.org"; do
    grep -qF "$want" "$T/ext.txt" || fail "service certificate lacks $want"
done
openssl x509 -in "$T/svc.pem" -noout -text | grep_q "ASN1 OID: prime256v1" || fail "not an EC P-256 key"
cmp -s <(openssl x509 -in "$T/svc.pem" -noout -pubkey) <(openssl pkey -in "$T/svc.key" -pubout) ||
    fail "the key does not match the certificate"
[ "$(psql_val "SELECT count(*) FROM certificates WHERE profile = 'tls-server'")" = 1 ] || fail "not recorded"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.server-cert' AND actor = 'admin' AND outcome = 'ok'")" = 1 ] ||
    fail "not audited"
sum=$(cat "$T/svc.pem" "$T/svc.key" | sha256sum)
as admin 40 service-cert --cert "$T/svc.pem" --key "$T/svc2.key" --name other.example.org --pin-file "$PIN_FILE"
as admin 40 service-cert --cert "$T/svc2.pem" --key "$T/svc.key" --name other.example.org --pin-file "$PIN_FILE"
assert_out "never overwritten"
[ "$(cat "$T/svc.pem" "$T/svc.key" | sha256sum)" = "$sum" ] || fail "an existing file was changed"
[ ! -e "$T/svc2.key" ] && [ ! -e "$T/svc2.pem" ] || fail "a refused service-cert left files"
run_esc 0 service-cert --help
tool 50 check-cert "$DB" "$T/svc.pem"

note "three keepers in one process, on three threads at once; one closes, the others go on"
tool 0 threads "$DB" "$PIN_FILE" 3 5
assert_out "issued 25, verified 25, expected 25"
tool 0 threads "$DB" "$PIN_FILE" 3 3 encryption "$T/env.der"
assert_out "issued 15, verified 15, expected 15"

note "the audit trail is intact; no secret in the database"
as aud 0 audit verify
assert_out "audit trail intact"
pg_dump "$DB" >"$T/dump.sql" 2>/dev/null || psql "$DB" -XAtqc "SELECT * FROM enrollment_passwords" >"$T/dump.sql"
for s in "$(cat "$T/otp_a.pw")" "$(cat "$T/otp_b.pw")" "$P11ESCROW_USER_PIN"; do
    ! grep -qF -- "$s" "$T/dump.sql" || fail "a secret is in the database"
done
echo ok
