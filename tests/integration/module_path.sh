#!/bin/bash
# A database writer cannot choose the PKCS#11 module: a token URI stored in
# token_keys or kras (or received in a recovery package) that names a module
# (module-path, module-name) is refused before anything is loaded, and the
# module setting itself must resolve into module_allow.  "evil.so" is a
# shared object whose constructor leaves a marker file: if any command loads
# it, the marker shows.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}" "${P11ESCROWD_BIN:?set by meson}"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Module Test CA'
ca_pem "$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1

note "the evil module: its constructor writes a marker when it is loaded"
MARKER=$T/evil-was-loaded
mkdir "$T/evil"
cat >"$T/evil/evil.c" <<EOF
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void)
{
	int fd = open("$MARKER", O_WRONLY | O_CREAT | O_APPEND, 0600);

	if (fd >= 0) {
		(void)!write(fd, "loaded\n", 7);
		close(fd);
	}
}
EOF
cc -shared -fPIC -o "$T/evil/evil.so" "$T/evil/evil.c" || fail "cannot build evil.so"
EVIL=$T/evil/evil.so
# The harness itself must be able to see a load: dlopen it once, then forget the marker.
python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$EVIL"
[ -f "$MARKER" ] || fail "evil.so's constructor leaves no marker: the test could not see a load"
rm -f "$MARKER"
no_marker() { [ ! -e "$MARKER" ] || fail "evil.so was loaded by: $*"; }

# A key to recover, archived to kra1, and a request for it.
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
printf 'keyUsage=critical,keyEncipherment\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" \
    2>/dev/null
openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" >/dev/null 2>&1 ||
    fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >"$T/alice.rec" 2>"$T/out" || fail "archiving alice"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"

# tamper TABLE COLUMN WHERE SUFFIX: append SUFFIX to a stored URI (as a database writer would).
tamper() { psql_val "UPDATE $1 SET $2 = $2 || '$4' WHERE $3" >/dev/null; }
restore() { psql_val "UPDATE $1 SET $2 = split_part($2, '?', 1) WHERE $3" >/dev/null; }

note "token_keys ca-sign with module-path: audit checkpoint, cert crl, kra enroll and p11escrowd refuse it"
tamper token_keys uri "role = 'ca-sign'" "?module-path=$EVIL"
run_esc 19 audit checkpoint --pin-file "$PIN_FILE"
assert_out "names a module (module-path)"
assert_out "only by the module setting"
assert_not_out "$P11ESCROW_USER_PIN"
no_marker "audit checkpoint"
run_esc 19 cert crl --pin-file "$PIN_FILE" --out "$T/crl.pem"
assert_out "module-path"
no_marker "cert crl"
printf 'database = "%s"\nca_pin_file = %s\nworkers = 1\n' "$DB" "$PIN_FILE" >"$T/d.conf"
# Run as root here: the workers stay root (the refusal tested comes from the keeper, before any worker).
[ "$(id -u)" = 0 ] && echo 'user = root' >>"$T/d.conf"
rc=0; "$P11ESCROWD_BIN" --config "$T/d.conf" --check >"$T/out" 2>&1 </dev/null || rc=$?
[ "$rc" -eq 19 ] || fail "p11escrowd --check exited $rc, expected 19"
assert_out "names a module (module-path)"
no_marker "p11escrowd --check"
rc=0; "$P11ESCROWD_BIN" --config "$T/d.conf" >"$T/out" 2>&1 </dev/null || rc=$?
[ "$rc" -eq 19 ] || fail "p11escrowd exited $rc at start, expected 19"
no_marker "p11escrowd"
# module-name too (p11-kit's name of a registered module: still not the database's choice).
restore token_keys uri "role = 'ca-sign'"
tamper token_keys uri "role = 'ca-sign'" "?module-name=p11-kit-trust"
run_esc 19 audit checkpoint --pin-file "$PIN_FILE"
assert_out "names a module (module-name)"
restore token_keys uri "role = 'ca-sign'"
run_esc 0 audit checkpoint --pin-file "$PIN_FILE"

note "token_keys storage and audit: recovery release and audit checkpoint refuse them"
tamper token_keys uri "role = 'storage'" "?module-path=$EVIL"
run_esc 19 recovery release "$REQ" --pin-file "$PIN_FILE"
assert_out "module-path"
no_marker "recovery release"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = approved ] ||
    fail "a refused release changed the request"
restore token_keys uri "role = 'storage'"
tamper token_keys uri "role = 'audit'" "?module-path=$EVIL"
run_esc 19 audit checkpoint --pin-file "$PIN_FILE"
assert_out "module-path"
no_marker "audit checkpoint (audit key)"
restore token_keys uri "role = 'audit'"
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"

note "kras.key_uri with module-path: the KRA's completion refuses it, locally and through the service"
tamper kras key_uri "name = 'kra1'" "?module-path=$EVIL"
as kent 19 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a.p12"
assert_out "names a module (module-path)"
[ ! -e "$T/a.p12" ] || fail "a refused completion left a file"
no_marker "recovery complete"
start_daemon 1
srv kent 31 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a.p12"
assert_out "the KRA's key URI is refused"
assert_out "module-path"
[ ! -e "$T/a.p12" ] || fail "a refused completion left a file"
no_marker "recovery complete --server"
stop_daemon
restore kras key_uri "name = 'kra1'"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] ||
    fail "a refused completion changed the request"
as kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a.p12"
assert_out "the key matches its certificate"

note "typed URIs: no module attributes either (command line, configuration)"
run_esc 19 token info "pkcs11:token=CA?module-path=$EVIL"
assert_out "module-path"
P11ESCROW_CA_TOKEN="pkcs11:token=CA?module-path=$EVIL" run_esc 3 token info 'pkcs11:token=CA'
assert_out "P11ESCROW_CA_TOKEN: ca_token must not contain module-path or module-name"
no_marker "typed URIs"

note "the module setting: only from module_allow, resolved past symlinks"
run_esc 3 token info --module "$EVIL" 'pkcs11:token=CA'
assert_out "is not in module_allow"
assert_out "set module_allow = "
assert_out "P11ESCROW_MODULE_ALLOW"
P11ESCROW_MODULE=$EVIL run_esc 3 token info 'pkcs11:token=CA'
no_marker "--module outside module_allow"
mkdir "$T/allowed"
ln -s "$EVIL" "$T/allowed/softhsm.so"
P11ESCROW_MODULE_ALLOW=$T/allowed run_esc 3 token info --module "$T/allowed/softhsm.so" 'pkcs11:token=CA'
assert_out "(the file $EVIL) is not in module_allow"
no_marker "a symlink out of module_allow"
P11ESCROW_MODULE_ALLOW=evil run_esc 3 token info 'pkcs11:token=CA'
assert_out "P11ESCROW_MODULE_ALLOW: module_allow must be"
# The default module passes the default list; a copy in an allowed directory passes that list.
run_esc 0 token info 'pkcs11:token=CA'
cp "$(readlink -f "$SOFTHSM")" "$T/allowed/libsofthsm2.so"
P11ESCROW_MODULE_ALLOW=$T/allowed run_esc 0 token info --module "$T/allowed/libsofthsm2.so" 'pkcs11:token=CA'
assert_out "module:       $T/allowed/libsofthsm2.so"
P11ESCROW_MODULE_ALLOW=$T/allowed run_esc 3 token info 'pkcs11:token=CA'
assert_out "is not in module_allow ($T/allowed)"
no_marker "the whole test"
note "ok"
