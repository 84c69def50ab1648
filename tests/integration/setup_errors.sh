#!/bin/bash
# Bad input to setup: each gets one clear message, its own exit code, and
# leaves the database and the token exactly as they were.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA
provision_tokens "$T/weak" WEAK -- --mechanisms "-CKM_RSA_PKCS_KEY_PAIR_GEN"
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"

untouched() {  # the database has no schema and the token no keys
    [ "$(psql_val "SELECT to_regclass('public.p11escrow_schema') IS NULL")" = t ] || fail "$1: database changed"
    [ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = 0 ] || fail "$1: token changed"
}

note "wrong PIN: exit 11, CKR_PIN_INCORRECT, nothing changed"
printf 'wrong-pin-1234\n' >"$T/bad.pin"; chmod 600 "$T/bad.pin"
run_esc 11 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$T/bad.pin"
assert_out "CKR_PIN_INCORRECT"
assert_not_out "wrong-pin-1234"
untouched "wrong PIN"

note "missing token: exit 13, the tokens present are listed"
run_esc 13 setup --database "$DB" --token 'pkcs11:token=NOPE' --pin-file "$PIN_FILE"
assert_out "no token matches 'pkcs11:token=NOPE'"
assert_out "'CA' (serial"
untouched "missing token"

note "database down: exit 20, token untouched"
run_esc 20 setup --database "host=$T/nowhere dbname=x user=postgres" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE"
assert_out "cannot connect to the database"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = 0 ] || fail "token changed although the database is down"

note "token lacking a mechanism: exit 16, named, nothing changed"
SOFTHSM2_CONF=$T/weak/softhsm2.conf run_esc 16 setup --database "$DB" --token 'pkcs11:token=WEAK' --pin-file "$PIN_FILE"
assert_out "lacks CKM_RSA_PKCS_KEY_PAIR_GEN"
[ "$(count_private_keys "$T/weak/softhsm2.conf" WEAK)" = 0 ] || fail "weak token changed"
untouched "missing mechanism"

note "no PIN source without a terminal: exit 10"
run_esc 10 setup --database "$DB" --token 'pkcs11:token=CA'
assert_out "PIN"
untouched "no PIN"

note "PIN file readable by others: refused"
cp "$PIN_FILE" "$T/open.pin"; chmod 644 "$T/open.pin"
run_esc 2 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$T/open.pin"
assert_out "accessible by other users"
untouched "open PIN file"

note "a PIN inside the URI: refused as a configuration error (exit 3), never echoed"
run_esc 3 setup --database "$DB" --token 'pkcs11:token=CA?pin-value=supersecret99' --pin-file "$PIN_FILE"
assert_out "PINs never travel in URIs"
assert_not_out "supersecret99"
untouched "PIN in URI"

note "usage errors: exit 2 with one line"
run_esc 2 setup --bogus
assert_out "unknown option '--bogus'"
run_esc 3 setup --key-type rsa1024 --database "$DB" --pin-file "$PIN_FILE"
assert_out "rsa1024"
run_esc 2 setup --days
assert_out "needs a value"
run_esc 2 frobnicate
assert_out "unknown command 'frobnicate'"
run_esc 3 setup --days 0 --database "$DB"
run_esc 4 setup --config "$T/does-not-exist.conf"
assert_out "does-not-exist.conf"
untouched "usage errors"

note "a config file with an unknown key names file and line"
printf 'database = "%s"\nca_tokn = pkcs11:token=CA\n' "$DB" >"$T/bad.conf"
run_esc 3 setup --config "$T/bad.conf"
assert_out "bad.conf:2"

note "--help is complete and lists the exit codes"
run_esc 0 setup --help
for o in --database --module --token --pin-file --key-type --subject --csr --import-cert --adopt-key; do assert_out "$o"; done
assert_out "PIN incorrect"
run_esc 0 --help
assert_out "setup"
assert_out "token"

note "a database newer than the program is refused, nothing changed"
run_esc 0 db migrate --database "$DB"
psql_val "INSERT INTO p11escrow_schema (version, name) VALUES (999, 'future')" >/dev/null
run_esc 22 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE"
assert_out "version 999"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = 0 ] || fail "token changed for a newer database"
[ "$(psql_val "SELECT count(*) FROM ca")" = 0 ] || fail "a CA row appeared"
echo ok
