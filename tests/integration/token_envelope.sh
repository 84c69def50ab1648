#!/bin/bash
# The archive record's two layers with real token keys: the library seals,
# stock `openssl cms -decrypt -engine pkcs11` opens (and the library opens
# too), byte for byte.  Tampering and wrong recipients are told apart.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
run_esc 0 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE"
PIN=$P11ESCROW_USER_PIN

psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d |
    openssl x509 -inform DER -out "$T/storage.pem"
STORAGE_URI=$(psql_val "SELECT uri FROM token_keys WHERE role = 'storage'")

note "KRA keys on two cards (decrypt-only RSA-3072, EC P-256), certified by a software test CA"
"$ENVELOPE_TOOL" genkey 'pkcs11:token=KRA1' rsa3072 kra "$PIN_FILE" >"$T/kra1.pubkey" || fail "RSA KRA key generation"
"$ENVELOPE_TOOL" genkey 'pkcs11:token=KRA2' ec-p256 kra "$PIN_FILE" >"$T/kra2.pubkey" || fail "EC KRA key generation"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/tca.key" -out "$T/tca.pem" \
    -days 30 -subj /CN=TestCA >/dev/null 2>&1
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/dummy.key" -subj /CN=dummy \
    -out "$T/dummy.csr" >/dev/null 2>&1
for n in 1 2; do
    openssl x509 -req -in "$T/dummy.csr" -force_pubkey "$T/kra$n.pubkey" -subj "/CN=KRA$n" -CA "$T/tca.pem" \
        -CAkey "$T/tca.key" -set_serial "$n" -days 30 -out "$T/kra$n.pem" >/dev/null 2>&1 || fail "KRA$n certificate"
done
# Throwaway test tokens only: the engine takes its PIN from the URI here.
KRA1_KEY="pkcs11:token=KRA1;object=kra;type=private;pin-value=$PIN"
KRA2_KEY="pkcs11:token=KRA2;object=kra;type=private;pin-value=$PIN"
STORAGE_KEY="$STORAGE_URI;pin-value=$PIN"

note "a user key as PKCS#8, sealed inner (to both KRAs) and outer (to the storage key)"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER -out "$T/user.p8" 2>/dev/null
"$ENVELOPE_TOOL" seal "$T/kra1.pem" "$T/kra2.pem" <"$T/user.p8" >"$T/inner.der" || fail "inner seal"
"$ENVELOPE_TOOL" seal "$T/storage.pem" <"$T/inner.der" >"$T/outer.der" || fail "outer seal"
openssl cms -cmsout -inform DER -in "$T/outer.der" -print | grep_q "id-smime-ct-authEnvelopedData" ||
    fail "outer layer is not an AuthEnvelopedData"
openssl cms -cmsout -inform DER -in "$T/inner.der" -print | grep_q "aes-256-gcm" || fail "inner layer is not AES-256-GCM"

note "stock openssl opens both layers with the tokens"
openssl cms -decrypt -binary -inform DER -in "$T/outer.der" -recip "$T/storage.pem" -engine pkcs11 -keyform engine \
    -inkey "$STORAGE_KEY" -out "$T/inner.ossl" 2>"$T/out" || fail "openssl cannot open the outer layer"
cmp -s "$T/inner.ossl" "$T/inner.der" || fail "outer layer content differs"
for n in 1 2; do
    key=KRA${n}_KEY
    openssl cms -decrypt -binary -inform DER -in "$T/inner.ossl" -recip "$T/kra$n.pem" -engine pkcs11 \
        -keyform engine -inkey "${!key}" -out "$T/user$n.ossl" 2>"$T/out" || fail "openssl cannot open with KRA$n"
    cmp -s "$T/user$n.ossl" "$T/user.p8" || fail "KRA$n: recovered PKCS#8 differs"
done

note "the library opens both layers with the tokens (libp11)"
"$ENVELOPE_TOOL" open --token 'pkcs11:token=CA' --key "$STORAGE_URI" --cert "$T/storage.pem" --pin-file "$PIN_FILE" \
    <"$T/outer.der" >"$T/inner.lib" 2>"$T/out" || fail "library cannot open the outer layer"
cmp -s "$T/inner.lib" "$T/inner.der" || fail "library: outer content differs"
"$ENVELOPE_TOOL" open --token 'pkcs11:token=KRA1' --key 'pkcs11:object=kra;type=private' --cert "$T/kra1.pem" \
    --pin-file "$PIN_FILE" <"$T/inner.lib" >"$T/user1.lib" 2>"$T/out" || fail "library cannot open with KRA1 (RSA)"
cmp -s "$T/user1.lib" "$T/user.p8" || fail "library KRA1 PKCS#8 differs"
"$ENVELOPE_TOOL" open --token 'pkcs11:token=KRA2' --key 'pkcs11:object=kra;type=private' --cert "$T/kra2.pem" \
    --pin-file "$PIN_FILE" <"$T/inner.lib" >"$T/user2.lib" 2>"$T/out" || fail "library cannot open with KRA2 (EC)"
cmp -s "$T/user2.lib" "$T/user.p8" || fail "library KRA2 PKCS#8 differs"

note "RSA-OAEP with SHA-256 on SoftHSM2 (libp11 and openssl)"
"$ENVELOPE_TOOL" seal --sha256 "$T/kra1.pem" <"$T/user.p8" >"$T/inner256.der" || fail "sha256 seal"
"$ENVELOPE_TOOL" open --token 'pkcs11:token=KRA1' --key 'pkcs11:object=kra;type=private' --cert "$T/kra1.pem" \
    --pin-file "$PIN_FILE" <"$T/inner256.der" >"$T/user256.lib" 2>"$T/out" || fail "library cannot open OAEP-SHA256"
cmp -s "$T/user256.lib" "$T/user.p8" || fail "OAEP-SHA256 PKCS#8 differs"

note "one KRA card and the database, without the CA token: nothing"
rc=0
"$ENVELOPE_TOOL" open --token 'pkcs11:token=KRA1' --key 'pkcs11:object=kra;type=private' --cert "$T/kra1.pem" \
    --pin-file "$PIN_FILE" <"$T/outer.der" >"$T/none" 2>"$T/out" || rc=$?
[ "$rc" = 34 ] || fail "KRA1 on the outer layer: exit $rc, expected 34 (not a recipient)"
[ ! -s "$T/none" ] || fail "output written although refused"

note "a tampered record is reported as tampering"
# Flip every bit of one byte of the ciphertext (writing 0xff left it unchanged when it was 0xff already).
python3 -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[-30] ^= 0xff; open(sys.argv[2], "wb").write(b)' \
    "$T/outer.der" "$T/bad.der"
cmp -s "$T/outer.der" "$T/bad.der" && fail "the record was not altered"
rc=0
"$ENVELOPE_TOOL" open --token 'pkcs11:token=CA' --key "$STORAGE_URI" --cert "$T/storage.pem" --pin-file "$PIN_FILE" \
    <"$T/bad.der" >"$T/none" 2>"$T/out" || rc=$?
[ "$rc" = 33 ] || fail "tampered record: exit $rc, expected 33"
assert_out "integrity check"
echo ok
