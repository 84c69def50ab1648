#!/bin/bash
# p11escrow est enroll --to-token: the enrolled key and its certificate onto
# the user's token (a second SoftHSM2 token, ALICE).  fullcmc (RSA, made
# here, archived) and serverkeygen (made and archived by the service): key,
# public key and certificate with one CKA_ID (SHA-1 of the subjectPublicKey),
# the key sensitive and never extractable, labelled with the certificate's
# CN (or --to-token-label), decrypting on the token what openssl encrypted to
# the certificate, the archive record there.  Checked before anything is
# sent: a wrong token PIN (11) and a CKA_ID already on the token (40) are
# refused and the one-time password then still works.  A write that fails
# after the enrollment leaves an encrypted PKCS#12 named in the error.
# simpleenroll (signing): the key made on the token (always sensitive, never
# extractable, sign only), the request signed there, the certificate stored
# beside it; a refused enrollment takes the key off again.  Usage errors (2):
# --to-token with files, with --simplereenroll, its options without it.
. "$(dirname "$0")/lib.sh"
unset P11ESCROW_KEY_PASSWORD P11ESCROW_OTP_PASSWORD P11ESCROW_TO_TOKEN_PIN P11ESCROW_SERVER_CA \
    https_proxy HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY || true

provision_tokens "$T/hsm" CA KRA1 ALICE
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=EST Token Test CA,O=Example'
pw admin 'admin-password-0001'; pw key 'key-file-password-1'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
start_daemon 2
# The fallback PKCS#12 goes to the working directory.
mkdir "$T/work"
cd "$T/work"

otp() {
    srv admin 0 enroll-password create --subject "$2" --profile "$1"
    OTP=$(awk '$1 == "name:" {print $2}' "$T/out")
    ( umask 077; awk '$1 == "password:" {print $2}' "$T/out" >"$T/otp.pw" )
    [ -n "$OTP" ] && [ -s "$T/otp.pw" ] || fail "no one-time password"
}
otp_state() { psql_val "SELECT used_at IS NOT NULL FROM enrollment_passwords WHERE name = '$1'"; }
records() { psql_val "SELECT count(*) FROM archive_records WHERE cert_serial = '$1' AND source = '$2'"; }
p11() { pkcs11-tool --module "$SOFTHSM" "$@" 2>/dev/null; }
objects() { p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --list-objects; }
count_id() { objects | grep -c "^ *ID: *$1\$" || true; }
count_all() { objects | grep -c "^ *ID:" || true; }
privkey_block() {
    objects | awk -v id="$1" 'function flush() { if (b ~ /^Private Key Object/ && b ~ ("ID: *" id "\n")) printf "%s", b }
        /^[^ ]/ { flush(); b = "" } { b = b $0 "\n" } END { flush() }'
}
# ski PEM: SHA-1 of the subjectPublicKey of a certificate or (-key) a private key, computed independently
ski() {
    python3 -c 'import sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
d = open(sys.argv[2], "rb").read()
k = x509.load_pem_x509_certificate(d).public_key() if sys.argv[1] == "cert" else \
    serialization.load_pem_private_key(d, None).public_key()
print(x509.SubjectKeyIdentifier.from_public_key(k).digest.hex())' "$@"
}
# on_token LABEL OUT: the certificate the last enrollment printed, read back from ALICE by its serial
# (the certificate object whose label is LABEL, the newest); its CKA_ID in ID, its serial in SERIAL
on_token() {
    SERIAL=$(awk '$1 == "serial:" {print $2}' "$T/out" | tr A-F a-f | sed 's/^0*//')
    [ -n "$SERIAL" ] || fail "no serial printed"
    ID=$(grep -o 'id=%[0-9A-Fa-f%]*' "$T/out" | head -n 1 | sed 's/^id=//; s/%//g' | tr A-F a-f)
    [ -n "$ID" ] || fail "no key URI printed"
    p11 --token-label ALICE --read-object --type cert --id "$ID" -o "$2.der" || fail "no certificate with id $ID"
    openssl x509 -inform DER -in "$2.der" -out "$2" || fail "not a certificate"
    [ "$(openssl x509 -in "$2" -noout -serial | cut -d= -f2 | tr A-F a-f | sed 's/^0*//')" = "$SERIAL" ] ||
        fail "the certificate on the token is not the one enrolled"
    [ "$(ski cert "$2")" = "$ID" ] || fail "CKA_ID $ID is not the SHA-1 of the subjectPublicKey"
    [ "$(count_id "$ID")" = 3 ] || fail "not three objects with id $ID: $(objects)"
    privkey_block "$ID" >"$T/priv.txt"
    grep -q "label: *$1\$" "$T/priv.txt" || fail "label is not '$1': $(cat "$T/priv.txt")"
    grep -q "Access: *sensitive" "$T/priv.txt" || fail "not sensitive: $(cat "$T/priv.txt")"
    ! grep -q "Access:.*extractable" "$T/priv.txt" || grep_q "never extractable" "$T/priv.txt" ||
        fail "extractable: $(grep Access "$T/priv.txt")"
    openssl verify -CAfile "$SERVER_CA" "$2" >/dev/null || fail "$2 does not verify"
}
# decrypts ID CERT: a secret encrypted to CERT with openssl comes back from the token, byte for byte
decrypts() {
    openssl rand 32 >"$T/secret"
    openssl pkeyutl -encrypt -certin -inkey "$2" -pkeyopt rsa_padding_mode:oaep -in "$T/secret" -out "$T/ct"
    rm -f "$T/pt"
    p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --decrypt -m RSA-PKCS-OAEP --hash-algorithm SHA-1 \
        --mgf MGF1-SHA1 --id "$1" -i "$T/ct" -o "$T/pt" || fail "OAEP decryption on the token failed"
    cmp -s "$T/pt" "$T/secret" || fail "the token decrypted something else"
    openssl pkeyutl -encrypt -certin -inkey "$2" -in "$T/secret" -out "$T/ct"
    p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --decrypt -m RSA-PKCS --id "$1" -i "$T/ct" \
        -o "$T/pt" || fail "PKCS#1 v1.5 decryption on the token failed"
    cmp -s "$T/pt" "$T/secret" || fail "PKCS#1 v1.5: the token decrypted something else"
}
no_files() { [ -z "$(ls -A "$T/work")" ] || fail "files left in the working directory: $(ls -A "$T/work")"; }
no_secret_out() {
    ! grep -qF -- "$P11ESCROW_USER_PIN" "$T/out" || fail "the token PIN was printed"
    ! grep -qF -- "$(cat "$T/otp.pw")" "$T/out" || fail "the one-time password was printed"
}
EST=(est enroll --server "$URL" --server-ca "$SERVER_CA")
TOK=(--to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE")

note "usage errors (2): --to-token with files, with --simplereenroll; its options without it"
run_esc 2 "${EST[@]}" --otp x "${TOK[@]}" --out-cert "$T/x.pem"
assert_out "--to-token URI or files"
run_esc 2 "${EST[@]}" --otp x "${TOK[@]}" --out-p12 "$T/x.p12"
run_esc 2 est enroll --simplereenroll --server "$URL" --server-ca "$SERVER_CA" --client-cert "$T/x.pem" \
    --client-key "$T/x.key" "${TOK[@]}"
assert_out "--to-token goes with --fullcmc, --serverkeygen or --simpleenroll"
run_esc 2 "${EST[@]}" --otp x --out-p12 "$T/x.p12" --to-token-pin-file "$PIN_FILE"
assert_out "go with --to-token"
run_esc 2 "${EST[@]}" --otp x "${TOK[@]}" --to-token-label "$(printf 'a\tb')"
assert_out "no control characters"
[ ! -e "$T/x.pem" ] && [ ! -e "$T/x.p12" ] || fail "a usage error left files"
[ "$(count_all)" = 0 ] || fail "ALICE is not empty"

note "a wrong token PIN: refused (11) before anything is sent; the one-time password still works"
otp encryption 'CN=Alice Example,O=Example'
printf 'wrong-pin-0000\n' >"$T/bad.pin"; chmod 600 "$T/bad.pin"
run_esc 11 "${EST[@]}" --key-type rsa3072 --otp "$OTP" --otp-file "$T/otp.pw" --to-token 'pkcs11:token=ALICE' \
    --to-token-pin-file "$T/bad.pin"
assert_out "CKR_PIN_INCORRECT"
[ "$(otp_state "$OTP")" = f ] || fail "a wrong token PIN spent the one-time password"
[ "$(count_all)" = 0 ] || fail "a wrong token PIN left objects"
no_files

note "fullcmc --to-token: RSA-3072 key, archived, onto ALICE: sensitive, never extractable, decrypts there"
P11ESCROW_TO_TOKEN_PIN=$P11ESCROW_USER_PIN run_esc 0 "${EST[@]}" --fullcmc --key-type rsa3072 --otp "$OTP" \
    --otp-file "$T/otp.pw" --to-token 'pkcs11:token=ALICE'
assert_out "enrolled; key archived by the service (fullcmc)"
assert_out "key and certificate written onto token 'ALICE' (sensitive, not extractable), label 'Alice Example'"
no_secret_out
no_files
[ "$(otp_state "$OTP")" = t ] || fail "the one-time password is not spent"
on_token "Alice Example" "$T/alice.pem"
openssl x509 -in "$T/alice.pem" -noout -text | grep_q "Public-Key: (3072 bit)" || fail "not RSA-3072"
[ "$(records "$SERIAL" enroll-client)" = 1 ] || fail "the key on the token is not archived"
decrypts "$ID" "$T/alice.pem"
# The same attributes read by GnuTLS's p11tool: sensitive, and no CKA_EXTRACTABLE.
GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --list-privkeys 'pkcs11:token=ALICE' \
    >"$T/p11tool.txt" 2>/dev/null
grep -q "CKA_SENSITIVE" "$T/p11tool.txt" || fail "p11tool: not sensitive: $(cat "$T/p11tool.txt")"
! grep -q "CKA_EXTRACTABLE" "$T/p11tool.txt" || fail "p11tool: extractable: $(cat "$T/p11tool.txt")"

note "an object with the key's CKA_ID on the token: refused (40) before anything is sent"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/dup.key" 2>/dev/null
DUP_ID=$(ski key "$T/dup.key")
openssl pkey -in "$T/dup.key" -pubout -outform DER -out "$T/dup.pub.der"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --write-object "$T/dup.pub.der" --type pubkey \
    --id "$DUP_ID" --label squatter >/dev/null || fail "cannot write the squatting public key"
before=$(count_all)
otp encryption 'CN=Dup Example,O=Example'
P11ESCROW_TEST_EST_KEY=$T/dup.key run_esc 40 "${EST[@]}" --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}"
assert_out "already holds 1 object(s) with CKA_ID $DUP_ID"
assert_out "nothing was sent"
[ "$(otp_state "$OTP")" = f ] || fail "a refused token spent the one-time password"
[ "$(count_all)" = "$before" ] || fail "a refused enrollment changed the token"
no_files
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --delete-object --type pubkey --id "$DUP_ID" ||
    fail "cannot remove the squatting public key"
note "the same one-time password, the squatter gone: the key enrolled and written, --to-token-label"
P11ESCROW_TEST_EST_KEY=$T/dup.key run_esc 0 "${EST[@]}" --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}" \
    --to-token-label "Dup's mail key"
on_token "Dup's mail key" "$T/dup.pem"
[ "$ID" = "$DUP_ID" ] || fail "not the key given"
[ "$(records "$SERIAL" enroll-client)" = 1 ] || fail "not archived"
note "that key again: on the token now, refused (40), the new one-time password unspent"
otp encryption 'CN=Dup Example,O=Example'
P11ESCROW_TEST_EST_KEY=$T/dup.key run_esc 40 "${EST[@]}" --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}"
assert_out "already holds 3 object(s) with CKA_ID $DUP_ID"
[ "$(otp_state "$OTP")" = f ] || fail "a refused token spent the one-time password"

note "serverkeygen --to-token (label encryption-rsa): made and archived by the service, onto ALICE"
otp encryption-rsa 'CN=Bob Example,O=Example'
run_esc 0 "${EST[@]}" --serverkeygen --label encryption-rsa --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}"
assert_out "enrolled; key made and archived by the service (serverkeygen)"
assert_out "written onto token 'ALICE'"
no_secret_out
no_files
on_token "Bob Example" "$T/bob.pem"
openssl x509 -in "$T/bob.pem" -noout -text | grep_q "Public-Key: (2048 bit)" || fail "not the RSA-2048 of the label"
[ "$(records "$SERIAL" enroll-server)" = 1 ] || fail "the serverkeygen key is not archived"
decrypts "$ID" "$T/bob.pem"
note "serverkeygen, a wrong token PIN: refused (11), the one-time password unspent"
otp encryption-rsa 'CN=Bob Example,O=Example'
run_esc 11 "${EST[@]}" --serverkeygen --label encryption-rsa --otp "$OTP" --otp-file "$T/otp.pw" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$T/bad.pin"
[ "$(otp_state "$OTP")" = f ] || fail "a wrong token PIN spent the one-time password"

note "simpleenroll --to-token (signing): the key made on the token, the request signed there, never archived"
otp signing 'CN=Carol Signer,O=Example'
before=$(psql_val "SELECT count(*) FROM archive_records")
n0=$(count_all)
run_esc 50 "${EST[@]}" --simpleenroll --label signing --otp "$OTP" --otp-file "$T/bad.pin" "${TOK[@]}"
assert_out "answered HTTP 401"
[ "$(count_all)" = "$n0" ] || fail "a refused enrollment left its key on the token: $(objects)"
run_esc 2 "${EST[@]}" --simpleenroll --label signing --key-type rsa2048 --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}"
assert_out "ec-p256, ec-p384, rsa3072 or rsa4096"
run_esc 0 "${EST[@]}" --simpleenroll --label signing --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}"
assert_out "key made on token 'ALICE' (sensitive, never extractable), certificate stored with it, label 'Carol Signer'"
no_secret_out
no_files
SERIAL=$(awk '$1 == "serial:" {print $2}' "$T/out" | tr A-F a-f | sed 's/^0*//')
ID=$(grep -o 'id=%[0-9A-Fa-f%]*' "$T/out" | head -n 1 | sed 's/^id=//; s/%//g' | tr A-F a-f)
[ "$(count_id "$ID")" = 3 ] || fail "not key, public key and certificate with id $ID: $(objects)"
p11 --token-label ALICE --read-object --type cert --id "$ID" -o "$T/carol-sign.der" || fail "no certificate"
openssl x509 -inform DER -in "$T/carol-sign.der" -out "$T/carol-sign.pem"
openssl verify -CAfile "$SERVER_CA" "$T/carol-sign.pem" >/dev/null || fail "the signing certificate does not verify"
openssl x509 -in "$T/carol-sign.pem" -noout -ext keyUsage | grep_q "Digital Signature" || fail "not a signing certificate"
privkey_block "$ID" >"$T/priv.txt"
grep -q "label: *Carol Signer$" "$T/priv.txt" || fail "label: $(cat "$T/priv.txt")"
grep -q "Usage: *sign$" "$T/priv.txt" || fail "usage: $(grep Usage "$T/priv.txt")"
grep -q "Access:.*always sensitive, never extractable, local" "$T/priv.txt" ||
    fail "not generated on the token: $(grep Access "$T/priv.txt")"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = "$before" ] || fail "a signing key was archived"
openssl rand 64 | openssl dgst -sha256 -binary >"$T/digest"
pkcs11-tool --module "$SOFTHSM" --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --sign -m ECDSA \
    --signature-format openssl --id "$ID" -i "$T/digest" -o "$T/digest.sig" >"$T/sign.log" 2>&1 ||
    fail "the key does not sign on the token: $(cat "$T/sign.log")"
openssl x509 -in "$T/carol-sign.pem" -noout -pubkey >"$T/carol-sign.pub"
openssl pkeyutl -verify -pubin -inkey "$T/carol-sign.pub" -in "$T/digest" -sigfile "$T/digest.sig" >/dev/null ||
    fail "the token's signature does not verify with the certificate"

note "the write fails after the enrollment: key and certificate kept in an encrypted PKCS#12 named in the error"
before=$(count_all)
otp encryption 'CN=Carol Example,O=Example'
P11ESCROW_FAULT_FAIL=est-token-write run_esc 17 "${EST[@]}" --key-type rsa2048 --otp "$OTP" \
    --otp-file "$T/otp.pw" "${TOK[@]}" --key-password-file "$T/key.pw"
assert_out "could not be written onto the token: test fault est-token-write"
SERIAL=$(awk '$1 == "serial:" {print $2}' "$T/out")
F=p11escrow-est-$SERIAL.p12
assert_out "are in '$F' (encrypted PKCS#12, the key password given)"
[ "$(stat -c %a "$F")" = 600 ] || fail "$F is mode $(stat -c %a "$F")"
openssl pkcs12 -in "$F" -passin pass:wrong-password -noout 2>/dev/null && fail "a wrong password opens $F"
openssl pkcs12 -in "$F" -passin file:"$T/key.pw" -nokeys -clcerts -out "$T/carol.pem" 2>/dev/null ||
    fail "openssl cannot read $F"
openssl pkcs12 -in "$F" -passin file:"$T/key.pw" -nocerts -nodes 2>/dev/null | openssl pkey -pubout >"$T/carol.pub"
[ "$(cat "$T/carol.pub")" = "$(openssl x509 -in "$T/carol.pem" -noout -pubkey)" ] || fail "the key is not its certificate's"
[ "$(records "$(echo "$SERIAL" | tr A-F a-f | sed 's/^0*//')" enroll-client)" = 1 ] || fail "not archived"
[ "$(count_all)" = "$before" ] || fail "a failed write left objects"
rm -f "$F"
note "the same without a key password: one is made and shown once"
otp encryption 'CN=Carol Example,O=Example'
P11ESCROW_FAULT_FAIL=est-token-write run_esc 17 "${EST[@]}" --otp "$OTP" --otp-file "$T/otp.pw" "${TOK[@]}"
SERIAL=$(awk '$1 == "serial:" {print $2}' "$T/out")
F=p11escrow-est-$SERIAL.p12
assert_out "are in '$F' (encrypted PKCS#12, password below)"
GEN=$(sed -n 's/.*PKCS#12 password (shown once): //p' "$T/out")
[ ${#GEN} = 24 ] || fail "no generated password: $GEN"
openssl pkcs12 -in "$F" -passin "pass:$GEN" -nokeys -clcerts -out "$T/carol2.pem" 2>/dev/null ||
    fail "the generated password does not open $F"
no_secret_out

stop_daemon
exit 0
