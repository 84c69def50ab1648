#!/bin/bash
# Setup under an external CA: CSR out, signed certificate in.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"

run_esc 0 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" \
    --subject 'CN=Issuing Escrow CA,O=Example' --csr "$T/ca.csr"
assert_out "pending"
openssl req -in "$T/ca.csr" -noout -verify 2>&1 | grep_q "verify OK" || fail "CSR signature invalid"
[ "$(psql_val "SELECT state FROM ca")" = pending-certificate ] || fail "CA not pending"

note "a repeated setup reports the pending state"
run_esc 0 setup --database "$DB"
assert_out "pending"

note "an external root signs the CSR"
openssl req -x509 -newkey rsa:3072 -nodes -keyout "$T/root.key" -out "$T/root.pem" -days 30 \
    -subj '/CN=External Root' >/dev/null 2>&1
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$T/ext.cnf"
openssl x509 -req -in "$T/ca.csr" -CA "$T/root.pem" -CAkey "$T/root.key" -CAcreateserial -days 30 \
    -extfile "$T/ext.cnf" -out "$T/ca.pem" >/dev/null 2>&1

note "importing a certificate for another key is refused"
openssl req -x509 -newkey rsa:3072 -nodes -keyout "$T/other.key" -out "$T/other.pem" -days 30 \
    -subj '/CN=Other' -addext 'basicConstraints=critical,CA:TRUE' >/dev/null 2>&1
run_esc 32 setup --database "$DB" --pin-file "$PIN_FILE" --token 'pkcs11:token=CA' --import-cert "$T/other.pem"
assert_out "is not for the CA signing key"
[ "$(psql_val "SELECT state FROM ca")" = pending-certificate ] || fail "refused import changed the CA"
printf 'garbage' >"$T/garbage.pem"
run_esc 31 setup --database "$DB" --pin-file "$PIN_FILE" --token 'pkcs11:token=CA' --import-cert "$T/garbage.pem"

note "a chain whose next certificate did not sign ours is refused"
cat "$T/ca.pem" "$T/other.pem" >"$T/badchain.pem"
run_esc 31 setup --database "$DB" --pin-file "$PIN_FILE" --token 'pkcs11:token=CA' --import-cert "$T/badchain.pem"
assert_out "not signed by the next certificate"

note "importing the right certificate activates the CA"
cat "$T/ca.pem" "$T/root.pem" >"$T/chain.pem"
run_esc 0 setup --database "$DB" --pin-file "$PIN_FILE" --token 'pkcs11:token=CA' --import-cert "$T/chain.pem"
assert_out "external CA certificate imported"
assert_out "CN=Issuing Escrow CA,O=Example"
[ "$(psql_val "SELECT state FROM ca")" = active ] || fail "CA not active"
openssl verify -CAfile "$T/root.pem" "$T/ca.pem" >/dev/null || fail "imported CA does not verify"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d |
    openssl x509 -inform DER -out "$T/tr.pem"
openssl verify -CAfile "$T/root.pem" -untrusted "$T/ca.pem" "$T/tr.pem" >/dev/null || fail "transport cert does not chain"
[ "$(psql_val "SELECT count(*) FROM token_keys WHERE certificate IS NOT NULL")" = 3 ] || fail "transport/storage/audit certs missing"
run_esc 41 setup --database "$DB" --pin-file "$PIN_FILE" --import-cert "$T/chain.pem"
assert_out "already active"
echo ok
