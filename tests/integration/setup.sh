#!/bin/bash
# p11escrow setup on real SoftHSM2 tokens and a throwaway PostgreSQL:
# a new CA, a repeated setup, EC and adopted signing keys, and what
# openssl and p11tool say about the result.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA CA2 CA3
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"

note "first setup creates the CA"
run_esc 0 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" \
    --subject 'CN=Test Escrow CA,O=Example Org'
assert_out "CA created"
assert_out "subject:     CN=Test Escrow CA,O=Example Org"
assert_out "schema:      migrated from version 0 to $SCHEMA_VERSION"
fp=$(sed -n 's/^  fingerprint: //p' "$T/out")
[[ $fp =~ ^SHA256(:[0-9A-F]{2}){32}$ ]] || fail "fingerprint '$fp' malformed"
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"

note "openssl accepts the CA certificate; its fingerprint is the one reported"
openssl verify -CAfile "$T/ca.pem" "$T/ca.pem" >/dev/null || fail "openssl verify rejects the CA certificate"
ofp=$(openssl x509 -in "$T/ca.pem" -noout -fingerprint -sha256 | sed 's/^.*=//')
[ "SHA256:$ofp" = "$fp" ] || fail "fingerprint mismatch: $ofp vs $fp"
openssl x509 -in "$T/ca.pem" -noout -text >"$T/ca.txt"
grep -q "CA:TRUE" "$T/ca.txt" || fail "CA certificate lacks CA:TRUE"
grep -q "Certificate Sign, CRL Sign" "$T/ca.txt" || fail "CA certificate lacks keyCertSign/cRLSign"
grep -q "Public-Key: (3072 bit)" "$T/ca.txt" || fail "default CA key is not RSA-3072"

note "the database holds the same certificate and key references, no PIN"
dbfp=$(psql_val "SELECT fingerprint_sha256 FROM ca")
[ "$dbfp" = "$fp" ] || fail "database fingerprint $dbfp differs"
[ "$(psql_val "SELECT count(*) FROM token_keys")" = 4 ] || fail "expected 4 token_keys rows"
[ "$(psql_val "SELECT count(*) FROM certificates")" = 4 ] || fail "expected CA, transport, storage and audit certificates"
pg_dump "$DB" >"$T/dump.sql"
! grep -qF "$P11ESCROW_USER_PIN" "$T/dump.sql" || fail "the PIN reached the database"

note "the transport certificate chains to the CA"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d >"$T/tr.der"
openssl x509 -inform DER -in "$T/tr.der" -out "$T/tr.pem"
openssl verify -CAfile "$T/ca.pem" "$T/tr.pem" >/dev/null || fail "transport certificate does not verify"
openssl x509 -in "$T/tr.pem" -noout -text | grep_q "Key Agreement" || fail "EC transport cert lacks keyAgreement"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d >"$T/st.der"
openssl x509 -inform DER -in "$T/st.der" -out "$T/st.pem"
openssl verify -CAfile "$T/ca.pem" "$T/st.pem" >/dev/null || fail "storage certificate does not verify"
openssl x509 -in "$T/st.pem" -noout -text | grep_q "Key Encipherment" || fail "RSA storage cert lacks keyEncipherment"
openssl x509 -in "$T/st.pem" -noout -subject | grep_q "Key Archival Storage" || fail "storage cert subject"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'audit'" | base64 -d |
    openssl x509 -inform DER -out "$T/au.pem"
openssl verify -CAfile "$T/ca.pem" "$T/au.pem" >/dev/null || fail "audit certificate does not verify"
openssl x509 -in "$T/au.pem" -noout -text | grep_q "Digital Signature" || fail "audit cert lacks digitalSignature"

note "the private keys are sensitive and never extractable"
GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --list-privkeys 'pkcs11:token=CA' >"$T/keys.txt"
[ "$(grep -c 'Type: Private key' "$T/keys.txt")" = 4 ] || fail "expected 4 private keys on the CA token"
[ "$(grep -c 'CKA_SENSITIVE' "$T/keys.txt")" = 4 ] || fail "not every key is sensitive"
[ "$(grep -c 'CKA_NEVER_EXTRACTABLE' "$T/keys.txt")" = 4 ] || fail "not every key is never-extractable"
! grep -q 'CKA_EXTRACTABLE' "$T/keys.txt" || fail "a key is extractable"

note "a second setup reports the existing CA and creates nothing"
run_esc 0 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE"
assert_out "already set up: nothing changed"
assert_out "$fp"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = 4 ] || fail "second setup changed the token"
[ "$(psql_val "SELECT count(*) FROM ca")" = 1 ] || fail "second CA row"
note "... also without any PIN, since nothing needs the token"
run_esc 0 setup --database "$DB"
assert_out "already set up"

note "EC P-384 CA key in a second database"
createdb -h "$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$DB")" -p "$(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$DB")" -U postgres ec
DB2=${DB/dbname=p11escrow/dbname=ec}
P11ESCROW_CA_PIN=$P11ESCROW_USER_PIN run_esc 0 setup --database "$DB2" --token 'pkcs11:token=CA2' \
    --key-type ec-p384 --storage-key-type ec-p256 --subject 'CN=EC Escrow CA'
assert_out "CA created"
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca2.pem"
openssl verify -CAfile "$T/ca2.pem" "$T/ca2.pem" >/dev/null || fail "EC CA certificate rejected"
openssl x509 -in "$T/ca2.pem" -noout -text | grep_q "ecdsa-with-SHA384" || fail "P-384 CA not signed with SHA-384"

note "adopting an existing key: ambiguous URI refused with candidates, then the right one used"
createdb -h "$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$DB")" -p "$(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$DB")" -U postgres adopt
DB3=${DB/dbname=p11escrow/dbname=adopt}
for id in 01 02; do
    GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --generate-privkey ecdsa --curve secp256r1 \
        --label "existing ca key" --id "$id" 'pkcs11:token=CA3' >/dev/null 2>&1 || fail "p11tool keygen failed"
done
run_esc 15 setup --database "$DB3" --token 'pkcs11:token=CA3' --pin-file "$PIN_FILE" \
    --adopt-key 'pkcs11:token=CA3;object=existing%20ca%20key;type=private'
assert_out "matches 2 private keys"
assert_out "id=01"
assert_out "id=02"
[ "$(psql_val "SELECT count(*) FROM pg_database WHERE datname = 'adopt'")" = 1 ] || fail "adopt database vanished"
[ "$(psql "$DB3" -XAtqc "SELECT to_regclass('public.ca') IS NULL")" = t ] || fail "refused setup changed the database"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA3)" = 2 ] || fail "refused setup changed the token"
run_esc 0 setup --database "$DB3" --token 'pkcs11:token=CA3' --pin-file "$PIN_FILE" \
    --adopt-key 'pkcs11:token=CA3;id=%02;type=private'
assert_out "CA created"
[ "$(psql "$DB3" -XAtqc "SELECT generated FROM token_keys WHERE role = 'ca-sign'")" = f ] || fail "adopted key recorded as generated"
[ "$(psql "$DB3" -XAtqc "SELECT encode(key_id, 'hex') FROM token_keys WHERE role = 'ca-sign'")" = 02 ] || fail "wrong key adopted"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA3)" = 5 ] || fail "expected adopted + transport + storage + audit + the other key"
echo "ok"
