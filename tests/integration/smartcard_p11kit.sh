#!/bin/bash
# The security officer guide's card procedure (docs/security-officer-guide.md,
# "KRA cards officers hold"), run as written on the one card this machine has:
# the virtual CAC card of smartcard.sh (libcacard behind vpcd in a private
# pcscd, read-only from PKCS#11, RSA-2048), reached not by the path of OpenSC's
# module but by the name of a p11-kit module file, as an officer configures a
# YubiKey's, an OpenPGP card's or a SmartCard-HSM's module:
#   - the module file (module:, priority:, enable-in:) is what p11-kit lists,
#     and a program that enable-in leaves out does not get the module
#     (p11escrow: exit 18, naming p11-kit list-modules);
#   - "card not seen" (no pcscd behind the socket) is exit 17, "cannot list
#     the slots";
#   - the key's URI is found with p11tool --list-all-privkeys and
#     pkcs11-tool -O as the guide shows;
#   - kra enroll --key URI --kra-module p11-kit:NAME adopts it through the
#     service (the workstation case), printing the probe and recipient lines
#     the guide quotes, without the "imported" note (OpenSC reports every
#     key of an emulated card as never extractable);
#   - a key archived to it is recovered on the card with --module
#     p11-kit:NAME, byte for byte.
# p11-kit reads module files from /etc/pkcs11/modules and
# /usr/share/p11-kit/modules only (user files are ignored for root), so the
# test runs in a private mount namespace with a tmpfs over the latter: the
# machine's own configuration is neither read nor changed.  Skipped (77)
# where the smart card stack or namespaces are missing.
if [ -z "${SMARTCARD_P11KIT_NS:-}" ]; then
    unshare --mount --propagation private true 2>/dev/null ||
        { echo "SKIP (${0##*/}): cannot make a mount namespace (unshare --mount)"; exit 77; }
    SMARTCARD_P11KIT_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

MODDIR=/usr/share/p11-kit/modules
OPENSC=/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$MODDIR" || fail "cannot mount a tmpfs over $MODDIR"
# module_file ENABLE-IN: the guide's module file for the officer's card, enabled in those programs
module_file() {
    printf 'module: opensc-pkcs11.so\npriority: 10\nenable-in: %s\n' "$1" >"$MODDIR/kra-card.module"
}
module_file 'p11escrow, p11tool, p11-kit'

note "the module file is what p11-kit lists"
p11-kit list-modules >"$T/out" 2>&1 || fail "p11-kit list-modules failed"
grep -q '^kra-card: opensc-pkcs11.so' "$T/out" || fail "p11-kit does not list kra-card: $(cat "$T/out")"

note "no pcscd behind the socket (card not seen): exit 17, cannot list the slots"
PCSCLITE_CSOCK_NAME=$T/no-pcscd.comm run_esc 17 token info -m p11-kit:kra-card 'pkcs11:token=KRA%20card%20two'
assert_out "cannot list the slots of PKCS#11 module '$OPENSC'"

LABEL='KRA card two'
start_vcard "$T/card" --label "$LABEL"
[ "$VCARD_MODULE" = "$OPENSC" ] || fail "module is $VCARD_MODULE, not OpenSC's"
export VCARD_PIN
VCARD_PIN=$(head -n 1 "$VCARD_PIN_FILE")

note "the card seen: opensc-tool -l, p11-kit list-modules, p11escrow token info -m p11-kit:kra-card"
opensc-tool -l >"$T/out" 2>&1 || fail "opensc-tool -l failed"
grep -q 'Virtual PCD' "$T/out" || fail "opensc-tool -l lists no vpcd reader: $(cat "$T/out")"
p11-kit list-modules >"$T/out" 2>&1 || fail "p11-kit list-modules failed"
assert_out "token: $LABEL"
run_esc 0 token info -m p11-kit:kra-card 'pkcs11:token=KRA%20card%20two'
assert_out "CKM_RSA_X_509"
cp "$T/out" "$T/token-info.out"

note "a program that enable-in leaves out does not get the module: exit 18"
module_file 'p11tool'
run_esc 18 token info -m p11-kit:kra-card 'pkcs11:token=KRA%20card%20two'
assert_out "p11-kit has no module named 'kra-card' (see p11-kit list-modules)"
module_file 'p11escrow, p11tool, p11-kit'

note "the key's URI: p11tool --list-all-privkeys --login, pkcs11-tool -O"
GNUTLS_PIN=$VCARD_PIN p11tool --list-all-privkeys --login --only-urls 'pkcs11:token=KRA%20card%20two' >"$T/out" 2>&1 ||
    fail "p11tool --list-all-privkeys: $(cat "$T/out")"
grep -q '^pkcs11:.*token=KRA%20card%20two;id=%00%03;object=CAC%20Email%20Encryption%20Certificate;type=private' \
    "$T/out" || fail "p11tool does not list the encryption key's URI: $(cat "$T/out")"
pkcs11-tool --module "$OPENSC" --token-label "$LABEL" --login --pin env:VCARD_PIN -O >"$T/out" 2>&1 ||
    fail "pkcs11-tool -O: $(cat "$T/out")"
grep -A4 '^Private Key Object' "$T/out" | grep_q 'label: *CAC Email Encryption Certificate' ||
    fail "pkcs11-tool -O lists no encryption key: $(cat "$T/out")"
grep -q 'ID: *0003' "$T/out" || fail "pkcs11-tool -O shows no ID 0003"
KEY='pkcs11:token=KRA%20card%20two;id=%00%03'

provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Card Procedure Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
P11ESCROW_NEW_PASSWORD=cm1-password-00001 as admin 0 account add cm1 --role cert-manager
as admin 0 policy set kra_min_rsa_bits 2048

note "adopted at the workstation through the service, the card's module named by p11-kit"
start_daemon 1
srv admin 0 kra enroll --key "$KEY" --kra-module p11-kit:kra-card --kra-pin-file "$VCARD_PIN_FILE" --name kra-card2
cp "$T/out" "$T/enroll.out"
assert_out "card '$LABEL' (serial "
assert_out "key 'CAC Email Encryption Certificate' (rsa2048, adopted)"
assert_out "probe:       CKM_RSA_PKCS_OAEP SHA-256 yes, SHA-1 yes; CKM_RSA_X_509 yes; CKM_RSA_PKCS yes"
assert_out "recipient:   rsa-oaep-sha256: the card decrypted RSA-OAEP with SHA-256 (CKM_RSA_PKCS_OAEP) and raw RSA (CKM_RSA_X_509) probes"
assert_out "KRA 'kra-card2' enrolled on card '$LABEL'"
assert_out "through the service, possession proven"
assert_out "the card did not take the certificate"
# OpenSC reports every key of an emulated card (PIV, CAC, OpenPGP, SmartCard-HSM) as always sensitive and
# never extractable: p11escrow cannot tell an imported key there, and the guide says so.
assert_not_out "imported onto the card"
[ "$(psql_val "SELECT key_origin || ' ' || recipient FROM kras WHERE name = 'kra-card2'")" = \
    "adopted rsa-oaep-sha256" ] || fail "kra-card2 not registered as adopted with rsa-oaep-sha256"

note "a key archived to the card, recovered on it with --module p11-kit:kra-card, byte for byte"
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra-card2
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:alice@example.org\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" 2>/dev/null
PKCS11_MODULE_PATH=$SOFTHSM openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" \
    -CA "$T/ca.pem" -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" \
    >/dev/null 2>&1 || fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >"$T/alice.rec" 2>"$T/out" || fail "archiving alice"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra kra-card2
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
srv kent 0 recovery complete "$REQ" --module p11-kit:kra-card --token 'pkcs11:token=KRA%20card%20two' \
    --kra-pin-file "$VCARD_PIN_FILE" --out "$T/alice.p12"
assert_out "the key matches its certificate"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl cannot open the PKCS#12"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the recovered key differs from the archived one"
note "smartcard_p11kit: ok"
