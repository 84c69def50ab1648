#!/bin/bash
# The CA token reached "remotely" through p11-kit server and p11-kit-client.so,
# as a network HSM would be.
. "$(dirname "$0")/lib.sh"

CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"

_server_pidfiles+=("$T/p11kit.pid")
"$SRC/hsm/export-tokens" --dir "$T/hsm" --socket "$T/p11kit.sock" --pidfile "$T/p11kit.pid" 'pkcs11:token=CA' \
    >"$T/export.log" 2>&1 || { cat "$T/export.log" >&2; fail "p11-kit server did not start"; }
export P11_KIT_SERVER_ADDRESS=unix:path=$T/p11kit.sock

note "token info through the client module lists mechanisms"
run_esc 0 token info --module "$CLIENT" 'pkcs11:token=CA'
assert_out "token:        CA"
assert_out "CKM_RSA_PKCS_KEY_PAIR_GEN"

note "setup through p11-kit-client.so"
run_esc 0 setup --database "$DB" --module "$CLIENT" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE"
assert_out "CA created"
assert_out "transport key is rsa3072, not ec-p256"
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
openssl verify -CAfile "$T/ca.pem" "$T/ca.pem" >/dev/null || fail "CA certificate rejected"

note "the keys exist on the real token behind the server"
"$SRC/hsm/export-tokens" --stop --pidfile "$T/p11kit.pid" >/dev/null
[ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = 4 ] || fail "keys not on the SoftHSM2 token"

note "server gone: the token is reported missing, not taken as success"
run_esc 0 setup --database "$DB" --module "$CLIENT" --token 'pkcs11:token=CA'
assert_out "already set up"
rc=0; "$ESC" token info --module "$CLIENT" 'pkcs11:token=CA' >"$T/out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "token info succeeded without a server"
echo ok
