#!/bin/bash
# Recovery onto the user's replacement token (--to-token) and to a recipient
# certificate (--to-cert), after a full two-person recovery: the key lands on
# a second SoftHSM2 token sensitive and never extractable beside its
# certificate (same CKA_ID) and decrypts there byte for byte; the CMS opens
# with stock `openssl cms -decrypt` and holds the archived key.  Refusals
# (duplicate CKA_ID, wrong token PIN, an unsuitable recipient, two output
# forms) leave nothing on the token and the request released.  Locally and
# through the service, every completion audited with its destination.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 ALICE
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Output Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'
pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
P11ESCROW_NEW_PASSWORD=$(cat "$T/audrey.pw") as admin 0 account add audrey --role auditor
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1

# p11 ARGS...: pkcs11-tool on the test tokens (throwaway PIN)
p11() { pkcs11-tool --module "$SOFTHSM" "$@" 2>/dev/null; }
# objects LABEL: every object on token LABEL, as pkcs11-tool lists them after login
objects() { p11 --token-label "$1" --login --pin "$P11ESCROW_USER_PIN" --list-objects; }
# count_id LABEL HEXID: how many objects of token LABEL carry CKA_ID HEXID
count_id() { objects "$1" | grep -c "^ *ID: *$2\$" || true; }
# privkey_block HEXID: the private key object with CKA_ID HEXID as pkcs11-tool listed it in $T/objs.txt
privkey_block() {
    awk -v id="$1" 'function flush() { if (b ~ /^Private Key Object/ && b ~ ("ID: *" id "\n")) printf "%s", b }
        /^[^ ]/ { flush(); b = "" } { b = b $0 "\n" } END { flush() }' "$T/objs.txt"
}
# ski CERT: SHA-1 of the certificate's subjectPublicKey (RFC 5280 4.2.1.2 method 1), computed independently
ski() {
    python3 -c 'import sys
from cryptography import x509
c = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
print(x509.SubjectKeyIdentifier.from_public_key(c.public_key()).digest.hex())' "$1"
}
# state ID: the request's state
state() { psql_val "SELECT state FROM recovery_requests WHERE id = $1"; }
reqid() { sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out"; }
# released SERIAL [REASON]: a request for SERIAL, filed and released; its id in REQ.  Once the
# service runs, through it (it releases at once): one process on the CA token at a time.
released() {
    if [ -n "${URL:-}" ]; then
        srv cm1 0 recovery request --serial "$1" --reason "${2:-a lost card}" --kra kra1
        REQ=$(reqid)
    else
        as cm1 0 recovery request --serial "$1" --reason "${2:-a lost card}" --kra kra1
        REQ=$(reqid)
        run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
    fi
    [ "$(state "$REQ")" = released ] || fail "request $REQ not released"
}
# complete_details ID: the details of request ID's successful completion event
complete_details() {
    psql_val "SELECT details FROM audit_events WHERE action = 'recovery.complete' AND object = 'request $1' AND outcome = 'ok'"
}

note "alice (RSA, keyEncipherment only) and bob (EC P-256, digitalSignature and keyAgreement), archived"
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
issue() { # issue NAME KEYUSAGE NEWKEY...
    local u=$1 ku=$2; shift 2
    printf 'keyUsage=critical,%s\nsubjectAltName=email:%s@example.org\n' "$ku" "$u" >"$T/$u.ext"
    openssl req -new "$@" -nodes -keyout "$T/$u.key" -subj "/CN=$u/O=Example" -out "$T/$u.csr" 2>/dev/null
    openssl x509 -req -in "$T/$u.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/$u.ext" -out "$T/$u.pem" >/dev/null 2>&1 ||
        fail "issuing $u's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$u.pem" "$T/$u.key" >"$T/$u.rec" 2>"$T/out" || fail "archiving $u"
}
issue alice keyEncipherment -newkey rsa:2048
issue bob digitalSignature,keyAgreement -newkey ec -pkeyopt ec_paramgen_curve:P-256
ALICE=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
BOB=$(openssl x509 -in "$T/bob.pem" -noout -serial | sed 's/serial=//')
ALICE_ID=$(ski "$T/alice.pem")
BOB_ID=$(ski "$T/bob.pem")
[ "$(objects ALICE | grep -c '^[A-Z][a-z]* Key Object\|^Certificate Object')" = 0 ] || fail "ALICE is not empty"

note "usage errors: one output form per completion"
released "$ALICE"
as kent 2 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-cert "$T/ca.pem" --out "$T/both.p7m"
assert_out "not both --to-token and --to-cert"
as kent 2 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --out "$T/both.p12"
as kent 2 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --to-cert "$T/ca.pem"
as kent 2 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a.p12" \
    --label alice
as cm1 2 recovery list --to-token 'pkcs11:token=ALICE'
[ ! -e "$T/both.p7m" ] && [ ! -e "$T/both.p12" ] && [ ! -e "$T/a.p12" ] || fail "a usage error left a file"

note "wrong PIN of the replacement token: refused (11), nothing written, still released"
printf 'wrong-pin-0000\n' >"$T/bad.pin"; chmod 600 "$T/bad.pin"
as kent 11 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$T/bad.pin"
[ "$(state "$REQ")" = released ] || fail "a wrong token PIN changed the request"
[ "$(count_id ALICE "$ALICE_ID")" = 0 ] || fail "a wrong token PIN left objects"

note "an object with the key's CKA_ID on the token already: refused (40), nothing written, still released"
openssl x509 -in "$T/alice.pem" -outform DER -out "$T/alice.der"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --write-object "$T/alice.der" --type cert \
    --id "$ALICE_ID" --label squatter >/dev/null || fail "cannot write the squatting certificate"
[ "$(count_id ALICE "$ALICE_ID")" = 1 ] || fail "the squatting certificate is not there"
as kent 40 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE"
assert_out "already holds 1 object(s) with CKA_ID $ALICE_ID"
[ "$(count_id ALICE "$ALICE_ID")" = 1 ] || fail "a refused completion wrote objects"
[ "$(state "$REQ")" = released ] || fail "a refused completion changed the request"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --delete-object --type cert --id "$ALICE_ID" ||
    fail "cannot remove the squatting certificate"
[ "$(count_id ALICE "$ALICE_ID")" = 0 ] || fail "the squatting certificate is still there"

note "the KRA card is never the target"
as kent 2 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=KRA1' --to-token-pin-file "$PIN_FILE"
assert_out "is the KRA card"

note "--to-token: key, public key and certificate on ALICE, one CKA_ID, sensitive, not extractable, no sign"
as kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE"
assert_out "written onto token 'ALICE'"
assert_out "id=%"
[ "$(state "$REQ")" = completed ] || fail "not completed: $(state "$REQ")"
[ "$(psql_val "SELECT package IS NULL FROM recovery_requests WHERE id = $REQ")" = t ] || fail "package kept"
objects ALICE >"$T/objs.txt"
[ "$(grep -c "^ *ID: *$ALICE_ID\$" "$T/objs.txt")" = 3 ] || fail "not three objects with the key's id: $(cat "$T/objs.txt")"
awk -v id="$ALICE_ID" '/^[A-Z]/ { o = $0 } $1 == "ID:" && $2 == id { print o }' "$T/objs.txt" | sort >"$T/kinds.txt"
grep -q '^Private Key Object; RSA' "$T/kinds.txt" && grep -q '^Public Key Object; RSA' "$T/kinds.txt" &&
    grep -q '^Certificate Object; type = X.509' "$T/kinds.txt" || fail "objects: $(cat "$T/kinds.txt")"
privkey_block "$ALICE_ID" >"$T/priv.txt"
grep -q "label: *alice$" "$T/priv.txt" || fail "label is not the certificate's CN: $(cat "$T/priv.txt")"
grep -q "Usage: *decrypt, unwrap$" "$T/priv.txt" || fail "usage: $(grep Usage "$T/priv.txt")"
grep -q "Access: *sensitive" "$T/priv.txt" || fail "not sensitive: $(grep Access "$T/priv.txt")"
! grep -q "Access:.*extractable" "$T/priv.txt" || grep_q "never extractable" "$T/priv.txt" ||
    fail "extractable: $(grep Access "$T/priv.txt")"
# The same attributes read by another library (GnuTLS's p11tool): sensitive, and no CKA_EXTRACTABLE.
GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --list-privkeys 'pkcs11:token=ALICE' \
    >"$T/p11tool.txt" 2>/dev/null
grep -q "CKA_SENSITIVE" "$T/p11tool.txt" || fail "p11tool: not sensitive: $(cat "$T/p11tool.txt")"
! grep -q "CKA_EXTRACTABLE" "$T/p11tool.txt" || fail "p11tool: extractable: $(cat "$T/p11tool.txt")"
p11 --token-label ALICE --read-object --type cert --id "$ALICE_ID" -o "$T/oncard.der" || fail "no certificate"
cmp -s "$T/oncard.der" "$T/alice.der" || fail "the certificate on the token is not alice's"

note "it decrypts on the token: a secret encrypted to alice's certificate with openssl, byte for byte"
openssl rand 32 >"$T/secret"
openssl pkeyutl -encrypt -certin -inkey "$T/alice.pem" -in "$T/secret" -out "$T/ct.v15"
openssl pkeyutl -encrypt -certin -inkey "$T/alice.pem" -pkeyopt rsa_padding_mode:oaep -in "$T/secret" -out "$T/ct.oaep"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --decrypt -m RSA-PKCS --id "$ALICE_ID" \
    -i "$T/ct.v15" -o "$T/pt.v15" || fail "PKCS#1 v1.5 decryption on the token failed"
cmp -s "$T/pt.v15" "$T/secret" || fail "PKCS#1 v1.5: the token decrypted something else"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --decrypt -m RSA-PKCS-OAEP --hash-algorithm SHA-1 \
    --mgf MGF1-SHA1 --id "$ALICE_ID" -i "$T/ct.oaep" -o "$T/pt.oaep" || fail "OAEP decryption on the token failed"
cmp -s "$T/pt.oaep" "$T/secret" || fail "OAEP: the token decrypted something else"
! p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --sign -m SHA256-RSA-PKCS --id "$ALICE_ID" \
    -i "$T/secret" -o "$T/sig" || fail "the key signs, though its certificate does not allow it"

note "the completion is audited with the token's URI (no PIN) and serial"
D=$(complete_details "$REQ")
ALICE_SERIAL=$(p11 --list-token-slots | awk '/token label *: ALICE$/ { t = 1 } t && /serial num/ { print $NF; exit }')
case $D in
"key decrypted on the KRA card, checked against its certificate, delivered onto token serial $ALICE_SERIAL, key label 'alice', key pkcs11:"*";token=ALICE;id=%"*";type=private") ;;
*) fail "completion event: $D" ;;
esac
case $D in *pin-*|*"$P11ESCROW_USER_PIN"*) fail "a PIN in the audit trail: $D" ;; esac

note "the key again: the token holds it already (40)"
released "$ALICE" "the same card again"
as kent 40 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE"
[ "$(count_id ALICE "$ALICE_ID")" = 3 ] || fail "a refused completion changed the token"
[ "$(state "$REQ")" = released ] || fail "a refused completion changed the request"
ALICE_REQ=$REQ # completed --to-cert below

note "an EC key on a token without ECDH: refused (16), nothing written"
released "$BOB"
sed 's/^slots.mechanisms.*//' "$SOFTHSM2_CONF" >"$T/noecdh.conf"
# (SoftHSM 2.6.1 skips the first entry of a list: "-,A,B", as in hsm/provision-tokens)
printf 'slots.mechanisms = -,CKM_ECDH1_DERIVE,CKM_ECDH1_COFACTOR_DERIVE\n' >>"$T/noecdh.conf"
SOFTHSM2_CONF=$T/noecdh.conf as kent 16 recovery complete "$REQ" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE"
assert_out "CKM_ECDH1_DERIVE"
[ "$(count_id ALICE "$BOB_ID")" = 0 ] || fail "a refused EC completion wrote objects"

note "bob's EC key: derive, and sign because its certificate allows digitalSignature; a label given"
as kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE" --label "Bob's mail key"
objects ALICE >"$T/objs.txt"
[ "$(grep -c "^ *ID: *$BOB_ID\$" "$T/objs.txt")" = 3 ] || fail "bob: not three objects: $(cat "$T/objs.txt")"
privkey_block "$BOB_ID" >"$T/bob.txt"
grep -q "Private Key Object; EC" "$T/bob.txt" || fail "bob's key: $(cat "$T/bob.txt")"
grep -q "label: *Bob's mail key" "$T/bob.txt" || fail "bob's label: $(cat "$T/bob.txt")"
grep -q "Usage: *sign, derive$" "$T/bob.txt" || fail "bob's usage: $(grep Usage "$T/bob.txt")"
grep -q "Access: *sensitive" "$T/bob.txt" || fail "bob's key not sensitive"
# ECDH on the token with a peer key equals ECDH in software with bob's archived key.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/peer.key" 2>/dev/null
openssl pkey -in "$T/peer.key" -pubout -out "$T/peer.pub.pem"
openssl pkey -in "$T/peer.key" -pubout -outform DER -out "$T/peer.pub.der"
openssl pkeyutl -derive -inkey "$T/bob.key" -peerkey "$T/peer.pub.pem" -out "$T/z.soft"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --derive -m ECDH1-DERIVE --id "$BOB_ID" \
    -i "$T/peer.pub.der" -o "$T/z.token" >/dev/null || fail "ECDH on the token failed"
cmp -s "$T/z.token" "$T/z.soft" || fail "ECDH on the token differs from ECDH with the archived key"

note "--to-cert: refused for an expired recipient (41), one without keyEncipherment (31), no file left"
python3 - "$T" <<'EOF'
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
t = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
def make(name, key, start, end, ku):
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")])
    c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
         .add_extension(x509.KeyUsage(**ku), critical=True).sign(key, hashes.SHA256()))
    open(f"{t}/{name}.pem", "wb").write(c.public_bytes(serialization.Encoding.PEM))
    open(f"{t}/{name}.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
none = dict(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
day = datetime.timedelta(days=1)
r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
make("rcpt-rsa", r, now - day, now + 30 * day, dict(none, key_encipherment=True))
make("rcpt-expired", r, now - 60 * day, now - day, dict(none, key_encipherment=True))
make("rcpt-signonly", r, now - day, now + 30 * day, dict(none, digital_signature=True))
make("rcpt-ec", ec.generate_private_key(ec.SECP384R1()), now - day, now + 30 * day, dict(none, key_agreement=True))
EOF
as kent 41 recovery complete "$ALICE_REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-cert "$T/rcpt-expired.pem" --out "$T/expired.p7m"
assert_out "has expired"
as kent 31 recovery complete "$ALICE_REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-cert "$T/rcpt-signonly.pem" --out "$T/signonly.p7m"
assert_out "does not allow key encipherment"
[ ! -e "$T/expired.p7m" ] && [ ! -e "$T/signonly.p7m" ] || fail "a refused recipient left a file"
[ "$(state "$ALICE_REQ")" = released ] || fail "a refused recipient changed the request"

note "--to-cert (RSA-OAEP SHA-256, PEM by extension): openssl cms -decrypt gives alice's PKCS#8 and certificate"
as kent 0 recovery complete "$ALICE_REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-cert "$T/rcpt-rsa.pem" --out "$T/alice.cms.pem"
assert_out "CMS (PEM) encrypted to certificate SHA256:"
assert_out "subject 'CN=rcpt-rsa,O=Example' written to $T/alice.cms.pem"
[ "$(stat -c %a "$T/alice.cms.pem")" = 600 ] || fail "CMS not mode 0600"
head -n 1 "$T/alice.cms.pem" | grep_q "^-----BEGIN CMS-----$" || fail "not PEM CMS"
openssl cms -cmsout -print -inform PEM -in "$T/alice.cms.pem" >"$T/cms.txt"
grep -q "id-smime-ct-authEnvelopedData" "$T/cms.txt" && grep -q "rsaesOaep" "$T/cms.txt" &&
    grep -q "sha256" "$T/cms.txt" && grep -q "aes-256-gcm" "$T/cms.txt" || fail "CMS structure: $(head -c 2000 "$T/cms.txt")"
openssl cms -decrypt -inform PEM -in "$T/alice.cms.pem" -recip "$T/rcpt-rsa.pem" -inkey "$T/rcpt-rsa.key" \
    -out "$T/alice.content" || fail "openssl cms cannot open the CMS"
[ "$(grep -c '^-----BEGIN PRIVATE KEY-----$' "$T/alice.content")" = 1 ] &&
    [ "$(grep -c '^-----BEGIN CERTIFICATE-----$' "$T/alice.content")" = 1 ] || fail "content: not one key and one cert"
cmp -s <(openssl pkey -in "$T/alice.content" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the key in the CMS differs from the archived key"
cmp -s <(openssl pkey -in "$T/alice.content" -pubout -outform DER) <(openssl x509 -in "$T/alice.pem" -pubkey -noout |
    openssl pkey -pubin -outform DER) || fail "the key in the CMS does not match alice's certificate"
cmp -s <(openssl x509 -in "$T/alice.content" -outform DER) "$T/alice.der" || fail "the certificate in the CMS is not alice's"
D=$(complete_details "$ALICE_REQ")
FP=SHA256:$(openssl x509 -in "$T/rcpt-rsa.pem" -noout -fingerprint -sha256 | sed 's/.*=//')
[ "$D" = "key decrypted on the KRA card, checked against its certificate, delivered as CMS AuthEnvelopedData encrypted to certificate $FP, subject 'CN=rcpt-rsa,O=Example'" ] ||
    fail "completion event: $D"

note "through the service: --to-cert to an EC recipient (ECDH, DER by extension), audited as reported"
start_daemon 1
released "$ALICE" "through the service, to the help desk's certificate"
srv kent 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-cert "$T/rcpt-expired.pem" --out "$T/x.p7m"
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-cert "$T/rcpt-ec.pem" --out "$T/alice.p7m"
assert_out "CMS (DER)"
openssl cms -decrypt -inform DER -in "$T/alice.p7m" -recip "$T/rcpt-ec.pem" -inkey "$T/rcpt-ec.key" \
    -out "$T/alice.content2" || fail "openssl cms cannot open the ECDH CMS"
cmp -s <(openssl pkey -in "$T/alice.content2" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the key in the ECDH CMS differs from the archived key"
FP=SHA256:$(openssl x509 -in "$T/rcpt-ec.pem" -noout -fingerprint -sha256 | sed 's/.*=//')
[ "$(complete_details "$REQ")" = "key decrypted on the KRA card at its workstation, checked against its certificate, package deleted; delivered, as the workstation reports, as CMS AuthEnvelopedData encrypted to certificate $FP, subject 'CN=rcpt-ec,O=Example'" ] ||
    fail "service completion event: $(complete_details "$REQ")"

note "through the service: the service refuses the report (cancelled meanwhile): the key comes off the token again"
p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --delete-object --type privkey --id "$BOB_ID" &&
    p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --delete-object --type pubkey --id "$BOB_ID" &&
    p11 --token-label ALICE --login --pin "$P11ESCROW_USER_PIN" --delete-object --type cert --id "$BOB_ID" ||
    fail "cannot clear bob's objects"
released "$BOB" "through the service, onto bob's card"
# The token's PIN is typed at the prompt; the request is cancelled while the prompt waits.
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' python3 - "$ESC" "$REQ" "$URL" "$SERVER_CA" \
    "$T" "$PIN_FILE" "$P11ESCROW_USER_PIN" >"$T/pty.log" 2>&1 <<'EOF' || { cat "$T/pty.log" >&2; fail "pty run"; }
import os, pty, subprocess, sys
esc, req, url, ca, t, pin_file, pin = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(esc, [esc, "recovery", "complete", req, "--token", "pkcs11:token=KRA1", "--kra-pin-file", pin_file,
                   "--to-token", "pkcs11:token=ALICE", "--server", url, "--server-ca", ca, "--user", "kent",
                   "--password-file", f"{t}/kent.pw"])
out = b""
while b"Replacement token PIN:" not in out:
    out += os.read(fd, 1024)
subprocess.run([esc, "recovery", "cancel", req, "--reason", "bob found his card", "--server", url, "--server-ca",
                ca, "--user", "cm1", "--password-file", f"{t}/cm1.pw"], check=True, stdout=subprocess.DEVNULL)
os.write(fd, pin.encode() + b"\n")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
print(f"\nexit {os.waitstatus_to_exitcode(status)}")
EOF
grep -q "^exit 41" "$T/pty.log" || fail "not refused with 41: $(cat "$T/pty.log")"
grep -q "the key was taken off the token again" "$T/pty.log" || fail "no word of the undo: $(cat "$T/pty.log")"
[ "$(count_id ALICE "$BOB_ID")" = 0 ] || fail "the refused report left bob's key on the token"
[ "$(state "$REQ")" = cancelled ] || fail "state: $(state "$REQ")"

note "through the service: --to-token, audited with the token's URI as the workstation reports it"
released "$BOB" "through the service, onto bob's card, again"
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=ALICE' --to-token-pin-file "$PIN_FILE"
[ "$(count_id ALICE "$BOB_ID")" = 3 ] || fail "bob's key is not on the token"
case $(complete_details "$REQ") in
"key decrypted on the KRA card at its workstation, checked against its certificate, package deleted; delivered, as the workstation reports, onto token serial $ALICE_SERIAL, key label 'bob', key pkcs11:"*";token=ALICE;id=%"*";type=private") ;;
*) fail "service completion event: $(complete_details "$REQ")" ;;
esac

note "every completion and refusal is in the audit trail, which verifies"
as audrey 0 audit show --action recovery.complete
[ "$(grep -c 'kent (kra) recovery.complete request [0-9]*: ok' "$T/out")" = 5 ] || fail "five completions: $(cat "$T/out")"
grep -q "recovery.complete request $ALICE_REQ: refused" "$T/out" || fail "refusals not audited"
run_esc 0 audit verify
! grep -rqF "$P11ESCROW_USER_PIN" "$DAEMON_LOG" "$T/pty.log" "$T/out" || fail "a token PIN in a log or an output"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE details LIKE '%$P11ESCROW_USER_PIN%' OR details ILIKE '%pin-value%'")" = 0 ] ||
    fail "a PIN in the audit trail"
echo ok
