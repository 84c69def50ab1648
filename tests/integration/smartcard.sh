#!/bin/bash
# A real card driver stack (issue #13): a virtual CAC card (libcacard, keys in
# an NSS database whose password is the PIN) behind vsmartcard's vpcd reader
# in a private pcscd (tests/harness/vcard), driven only through OpenSC's
# PKCS#11 module: the token and its mechanisms are listed, the PIN logs in,
# the private keys are found, and secrets encrypted to the card's
# certificates with openssl come back byte for byte from decryptions on the
# card (PKCS#1 v1.5, OAEP with SHA-1 and with SHA-256), through pkcs11-tool
# and through openssl's pkcs11 engine; `p11escrow token info` sees the same.
. "$(dirname "$0")/lib.sh"

LABEL='KRA card one'
start_vcard "$T/card" --label "$LABEL"
M=$VCARD_MODULE
[ "$M" = /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so ] || fail "module is $M, not OpenSC's"
note "card up: $VCARD_TOKEN through $M"
# PINs reach the tools through their environment or a file, never argv.
VCARD_PIN=$(head -n 1 "$VCARD_PIN_FILE")
export VCARD_PIN

note "the token, through OpenSC"
pkcs11-tool --module "$M" -L >"$T/out" 2>&1 || fail "pkcs11-tool -L"
assert_out "token label        : $LABEL"
assert_out 'token manufacturer : Common Access Card'
assert_out 'login required'
p11tool --provider "$M" --list-token-urls >"$T/out" 2>&1 || fail "p11tool --list-token-urls"
assert_out ";token=${LABEL// /%20}"
p11tool --provider "$M" --list-mechanisms "$VCARD_TOKEN" >"$T/out" 2>&1 || fail "p11tool --list-mechanisms"
assert_out 'CKM_RSA_PKCS '
assert_out 'CKM_RSA_PKCS_OAEP'

note "private keys: none without the PIN, three (one per CAC slot) with it"
n=$(p11tool --provider "$M" --only-urls --list-privkeys "$VCARD_TOKEN" 2>/dev/null | grep -c '^pkcs11:' || true)
[ "$n" -eq 0 ] || fail "$n private keys visible without login"
GNUTLS_PIN=$VCARD_PIN p11tool --provider "$M" --login --only-urls --list-privkeys "$VCARD_TOKEN" >"$T/out" 2>&1 ||
    fail "p11tool --login --list-privkeys"
[ "$(grep -c '^pkcs11:' "$T/out")" -eq 3 ] || fail "expected 3 private keys after login"
for id in 01 02 03; do assert_out ";id=%00%$id;"; done
GNUTLS_PIN=$VCARD_PIN p11tool --provider "$M" --login --list-privkeys "$VCARD_TOKEN" >"$T/out" 2>&1 || true
assert_out 'Type: Private key (RSA-2048)'
assert_not_out 'CKA_EXTRACTABLE'

# decrypt_all ID CERT: a fresh 32-byte secret, encrypted to CERT with openssl, in each padding;
# each decrypted on the card through pkcs11-tool and through openssl's pkcs11 engine.
decrypt_all() {
    local id=$1 cert=$2 pad key enc p11
    openssl rand 32 >"$T/secret"
    # libp11's pin-source reads the whole file: the PIN without its newline.
    key="${VCARD_TOKEN};id=%00%${id};type=private;pin-source=file:$T/card/pin.raw"
    for pad in pkcs1 oaep-sha1 oaep-sha256; do
        case $pad in
            pkcs1) enc=() p11=(-m RSA-PKCS) ;;
            oaep-sha1) enc=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1)
                       p11=(-m RSA-PKCS-OAEP --hash-algorithm SHA-1 --mgf MGF1-SHA1) ;;
            oaep-sha256) enc=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256)
                         p11=(-m RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf MGF1-SHA256) ;;
        esac
        openssl pkeyutl -encrypt -certin -inkey "$cert" "${enc[@]}" -in "$T/secret" -out "$T/ct.$pad" ||
            fail "openssl pkeyutl -encrypt ($pad)"
        rm -f "$T/pt"
        pkcs11-tool --module "$M" --login --pin env:VCARD_PIN --decrypt "${p11[@]}" --id "00$id" \
            -i "$T/ct.$pad" -o "$T/pt" >"$T/out" 2>&1 || fail "pkcs11-tool --decrypt, key $id, $pad"
        cmp -s "$T/secret" "$T/pt" || fail "pkcs11-tool --decrypt, key $id, $pad: not the secret"
        rm -f "$T/pt"
        PKCS11_MODULE_PATH=$M openssl pkeyutl -decrypt -engine pkcs11 -keyform engine -inkey "$key" "${enc[@]}" \
            -in "$T/ct.$pad" -out "$T/pt" >"$T/out" 2>&1 || fail "openssl pkeyutl -decrypt -engine pkcs11, key $id, $pad"
        cmp -s "$T/secret" "$T/pt" || fail "openssl -engine pkcs11, key $id, $pad: not the secret"
        note "key $id, $pad: decrypted on the card, byte for byte (pkcs11-tool and openssl -engine pkcs11)"
    done
}
decrypt_all 01 "$T/card/cert1.pem"
decrypt_all 03 "$T/card/cert3.pem"

note "a ciphertext for key 01 does not decrypt with key 02"
openssl pkeyutl -encrypt -certin -inkey "$T/card/cert1.pem" -in "$T/secret" -out "$T/ct.k1" || fail "encrypt"
rm -f "$T/pt"
if pkcs11-tool --module "$M" --login --pin env:VCARD_PIN --decrypt -m RSA-PKCS --id 0002 \
    -i "$T/ct.k1" -o "$T/pt" >"$T/out" 2>&1 && cmp -s "$T/secret" "$T/pt"; then
    fail "key 02 decrypted key 01's ciphertext"
fi

note "a wrong PIN is refused and decrypts nothing"
WRONG_PIN=$(printf '%08d' $(((10#$VCARD_PIN + 1) % 100000000)))
export WRONG_PIN
rm -f "$T/pt"
! pkcs11-tool --module "$M" --login --pin env:WRONG_PIN --decrypt -m RSA-PKCS --id 0001 \
    -i "$T/ct.k1" -o "$T/pt" >"$T/out" 2>&1 || fail "a wrong PIN logged in"
assert_out 'C_Login failed'
[ ! -s "$T/pt" ] || fail "output written with a wrong PIN"

note "p11escrow token info through OpenSC"
run_esc 0 token info --module "$M" "$VCARD_TOKEN"
assert_out "module:       $M"
assert_out "token:        $LABEL"
assert_out 'manufacturer: Common Access Card'
grep -Eq '^  CKM_RSA_PKCS +[0-9]+\.\.[0-9]+ +hw,decrypt' "$T/out" || fail "CKM_RSA_PKCS with hw,decrypt not listed"
grep -Eq '^  CKM_RSA_PKCS_OAEP +[0-9]+\.\.[0-9]+ +hw,decrypt' "$T/out" || fail "CKM_RSA_PKCS_OAEP with hw,decrypt not listed"
assert_not_out 'key:'
( umask 077; printf '%s\n' "$WRONG_PIN" >"$T/wrong.pin" )
for id in 01 03; do
    run_esc 0 token info --module "$M" --key "$VCARD_TOKEN;id=%00%$id;type=private" --pin-file "$VCARD_PIN_FILE" \
        "$VCARD_TOKEN"
    assert_out 'key:          CAC '
    assert_out '(rsa2048)'
    assert_out ";id=%00%$id;type=private"
    assert_out 'protection: sensitive, never extractable'
done
assert_out 'key:          CAC Email Encryption Certificate (rsa2048)'
# A real CAC answers a wrong PIN with 63Cx (CKR_PIN_INCORRECT, exit 11); libcacard's emulation
# answers 6985, which OpenSC reports as CKR_GENERAL_ERROR (a PKCS#11 error, exit 17).
rc=0
"$ESC" token info --module "$M" --key "$VCARD_TOKEN;id=%00%01;type=private" --pin-file "$T/wrong.pin" \
    "$VCARD_TOKEN" >"$T/out" 2>&1 </dev/null || rc=$?
[ "$rc" -eq 11 ] || [ "$rc" -eq 17 ] || fail "token info with a wrong PIN exited $rc, expected 11 or 17"
assert_not_out 'key:'
assert_not_out "$WRONG_PIN"

note "the card outlives its clients: after all that, still the same token"
pkcs11-tool --module "$M" -L >"$T/out" 2>&1 || fail "pkcs11-tool -L at the end"
assert_out "token label        : $LABEL"
note "smartcard: ok"
