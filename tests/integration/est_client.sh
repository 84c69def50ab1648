#!/bin/bash
# p11escrow est, the first-party EST client, against a running p11escrowd:
# the transport certificate fetched and verified (the one in the database);
# enrollment in each mode — fullcmc (own key, archived: record source
# enroll-client), serverkeygen (PEM and PKCS#12, an RSA label; record
# enroll-server), simpleenroll on the signing label (nothing archived),
# simplereenroll with that certificate (same key, then --new-key), fullcmc
# authenticated by that client certificate — each certificate verified with
# stock openssl against /cacerts, each key file encrypted and matching its
# certificate; the archive records found through `recovery search --server`;
# the walkthrough of docs/archival.md run as written.
# Through a CONNECT proxy (tests/tools/connect_proxy.py): --proxy and
# https_proxy (no_proxy honoured), one tunnel per command (connection reuse,
# also for the JSON API client).  Refusals with their exit codes: a wrong or
# used one-time password (50), an untrusted server (50), a server that is
# down or a proxy that is (4), an unknown label (42), fullcmc on the signing
# profile (51), existing output files (4) — no output file left behind.
. "$(dirname "$0")/lib.sh"
unset P11ESCROW_KEY_PASSWORD P11ESCROW_OTP_PASSWORD P11ESCROW_CLIENT_KEY_PASSWORD P11ESCROW_SERVER_CA \
    P11ESCROW_CLIENT_CERT P11ESCROW_CLIENT_KEY https_proxy HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY || true

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=EST Client Test CA,O=Example'
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw key 'key-file-password-1'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
P11ESCROW_NEW_PASSWORD=cm1-password-00001 run_esc 0 account add cm1 --role cert-manager --user admin \
    --password-file "$T/admin.pw"
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
start_daemon 2

# otp PROFILE SUBJECT: a one-time password; its name in $OTP, its password in $T/otp.pw
otp() {
    srv admin 0 enroll-password create --subject "$2" --profile "$1"
    OTP=$(awk '$1 == "name:" {print $2}' "$T/out")
    ( umask 077; awk '$1 == "password:" {print $2}' "$T/out" >"$T/otp.pw" )
    [ -n "$OTP" ] && [ -s "$T/otp.pw" ] || fail "no one-time password"
}
# serial_of PEM: the serial as the database has it (lower-case hex, no leading zeros)
serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2 | tr A-F a-f | sed 's/^0*//'; }
records() { psql_val "SELECT count(*) FROM archive_records WHERE cert_serial = '$(serial_of "$1")' AND source = '$2'"; }
# pub_of_key KEY: its public key (the key file is encrypted with $T/key.pw)
pub_of_key() { openssl pkey -in "$1" -passin file:"$T/key.pw" -pubout; }
pub_of_cert() { openssl x509 -in "$1" -noout -pubkey; }
# no_secret_out: neither the one-time password nor the key file's password is printed
no_secret_out() {
    ! grep -qF -- "$(cat "$T/otp.pw")" "$T/out" || fail "the one-time password was printed"
    ! grep -qF -- "key-file-password-1" "$T/out" || fail "the key file's password was printed"
}
EST=(--server "$URL" --server-ca "$SERVER_CA")
ENROLL=(est enroll "${EST[@]}" --key-password-file "$T/key.pw")

note "transport-cert: fetched, issued by the CA, may receive keys, the one recorded at setup"
run_esc 0 est transport-cert "${EST[@]}" -o "$T/transport.pem"
assert_out "transport certificate (issued by the CA, may receive keys) written to $T/transport.pem"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d |
    openssl x509 -inform DER -outform PEM >"$T/transport-db.pem"
cmp -s "$T/transport.pem" "$T/transport-db.pem" || fail "the transport certificate is not the one recorded"
openssl verify -CAfile "$SERVER_CA" "$T/transport.pem" >/dev/null || fail "openssl does not verify it"
openssl x509 -in "$T/transport.pem" -noout -ext keyUsage | grep_q "Key Agreement" || fail "not keyAgreement"
run_esc 0 est transport-cert "${EST[@]}"
grep -q "BEGIN CERTIFICATE" "$T/out" || fail "no PEM on standard output"
[ "$(curl -sS --cacert "$SERVER_CA" -o /dev/null -w '%{http_code} %{content_type}' -I \
    "$URL/.well-known/est/transportcert")" = "200 application/pkcs7-mime; smime-type=certs-only" ] ||
    fail "HEAD /transportcert is not answered as GET"
[ "$(curl -sS --cacert "$SERVER_CA" -o /dev/null -D "$T/headers" -w '%{http_code}' -X POST \
    "$URL/.well-known/est/transportcert")" = 405 ] && grep -qi '^Allow: GET, HEAD' "$T/headers" ||
    fail "POST /transportcert is not refused with 405 and Allow: GET, HEAD"
run_esc 0 est cacerts "${EST[@]}" -o "$T/cacerts.pem"
cmp -s <(openssl x509 -in "$T/cacerts.pem" -outform DER) <(openssl x509 -in "$SERVER_CA" -outform DER) ||
    fail "/cacerts is not the CA certificate"
run_esc 4 est transport-cert "${EST[@]}" -o "$T/transport.pem"
assert_out "output files are never overwritten"
cmp -s "$T/transport.pem" "$T/transport-db.pem" || fail "an existing file was changed"

note "fullcmc (the default): own EC key, sent to the transport certificate, archived"
otp encryption 'CN=Alice Example,O=Example'
run_esc 0 "${ENROLL[@]}" --otp "$OTP" --otp-file "$T/otp.pw" --out-cert "$T/alice.pem" --out-key "$T/alice.key" \
    --out-ca "$T/alice-ca.pem"
assert_out "enrolled; key archived by the service (fullcmc)"
assert_out "subject: CN=Alice Example,O=Example"
no_secret_out
openssl verify -CAfile "$T/alice-ca.pem" "$T/alice.pem" >/dev/null || fail "alice.pem does not verify"
[ "$(head -n 1 "$T/alice.key")" = "-----BEGIN ENCRYPTED PRIVATE KEY-----" ] || fail "the key file is not encrypted"
[ "$(stat -c %a "$T/alice.key")" = 600 ] || fail "the key file is mode $(stat -c %a "$T/alice.key")"
openssl pkey -in "$T/alice.key" -passin pass:wrong-password -noout 2>/dev/null && fail "a wrong password opens the key"
[ "$(pub_of_key "$T/alice.key")" = "$(pub_of_cert "$T/alice.pem")" ] || fail "alice's key is not her certificate's"
openssl pkey -in "$T/alice.key" -passin file:"$T/key.pw" -noout -text | grep_q "NIST CURVE: P-256" ||
    fail "not an EC P-256 key"
[ "$(records "$T/alice.pem" enroll-client)" = 1 ] || fail "the fullcmc key is not archived"
SERIAL=$(serial_of "$T/alice.pem")
srv cm1 0 recovery search --serial "$SERIAL"
assert_out "$SERIAL"

note "fullcmc with --key-type rsa3072, PKCS#12 out"
otp encryption 'CN=Alice Example,O=Example'
run_esc 0 "${ENROLL[@]}" --fullcmc --key-type rsa3072 --otp "$OTP" --otp-file "$T/otp.pw" --out-p12 "$T/alice-rsa.p12"
openssl pkcs12 -in "$T/alice-rsa.p12" -passin file:"$T/key.pw" -nokeys -clcerts -out "$T/alice-rsa.pem" 2>/dev/null ||
    fail "openssl cannot read the PKCS#12"
openssl pkcs12 -in "$T/alice-rsa.p12" -passin file:"$T/key.pw" -nocerts -nodes 2>/dev/null |
    openssl pkey -pubout >"$T/alice-rsa.pub"
[ "$(cat "$T/alice-rsa.pub")" = "$(pub_of_cert "$T/alice-rsa.pem")" ] || fail "the PKCS#12 key is not its certificate's"
openssl x509 -in "$T/alice-rsa.pem" -noout -text | grep_q "Public-Key: (3072 bit)" || fail "not RSA-3072"
[ "$(records "$T/alice-rsa.pem" enroll-client)" = 1 ] || fail "the RSA key is not archived"

note "serverkeygen: the service makes the key, archives it, returns it"
otp encryption 'CN=Bob Example,O=Example'
run_esc 0 "${ENROLL[@]}" --serverkeygen --otp "$OTP" --otp-file "$T/otp.pw" --out-cert "$T/bob.pem" \
    --out-key "$T/bob.key"
assert_out "key made and archived by the service (serverkeygen)"
no_secret_out
openssl verify -CAfile "$SERVER_CA" "$T/bob.pem" >/dev/null || fail "bob.pem does not verify"
[ "$(pub_of_key "$T/bob.key")" = "$(pub_of_cert "$T/bob.pem")" ] || fail "bob's key is not his certificate's"
[ "$(records "$T/bob.pem" enroll-server)" = 1 ] || fail "the serverkeygen key is not archived"
srv cm1 0 recovery search --serial "$(serial_of "$T/bob.pem")"
assert_out "$(serial_of "$T/bob.pem")"

note "serverkeygen on label encryption-rsa, PKCS#12 with the CA certificate"
otp encryption-rsa 'CN=Bob Example,O=Example'
run_esc 0 "${ENROLL[@]}" --serverkeygen --label encryption-rsa --otp "$OTP" --otp-file "$T/otp.pw" \
    --out-p12 "$T/bob-rsa.p12"
openssl pkcs12 -in "$T/bob-rsa.p12" -passin file:"$T/key.pw" -nokeys -clcerts -out "$T/bob-rsa.pem" 2>/dev/null ||
    fail "openssl cannot read the PKCS#12"
openssl pkcs12 -in "$T/bob-rsa.p12" -passin file:"$T/key.pw" -nokeys -cacerts 2>/dev/null | grep_q "BEGIN CERTIFICATE" ||
    fail "the PKCS#12 lacks the CA certificate"
openssl x509 -in "$T/bob-rsa.pem" -noout -text | grep_q "Public-Key: (2048 bit)" || fail "not the RSA-2048 the label makes"
[ "$(records "$T/bob-rsa.pem" enroll-server)" = 1 ] || fail "the RSA serverkeygen key is not archived"

note "simpleenroll on the signing label: a key that is never archived"
otp signing 'CN=Carol Example,O=Example'
before=$(psql_val "SELECT count(*) FROM archive_records")
run_esc 0 "${ENROLL[@]}" --simpleenroll --label signing --otp "$OTP" --otp-file "$T/otp.pw" \
    --out-cert "$T/carol.pem" --out-key "$T/carol.key"
openssl verify -CAfile "$SERVER_CA" "$T/carol.pem" >/dev/null || fail "carol.pem does not verify"
openssl x509 -in "$T/carol.pem" -noout -ext keyUsage | grep_q "Digital Signature" || fail "not a signing certificate"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = "$before" ] || fail "a signing key was archived"

note "simplereenroll with that certificate (its encrypted key): same subject and key, new serial"
run_esc 0 est enroll --simplereenroll --label signing "${EST[@]}" --client-cert "$T/carol.pem" \
    --client-key "$T/carol.key" --client-key-password-file "$T/key.pw" --out-cert "$T/carol2.pem"
assert_out "renewed"
[ "$(pub_of_cert "$T/carol2.pem")" = "$(pub_of_cert "$T/carol.pem")" ] || fail "the renewal changed the key"
[ "$(serial_of "$T/carol2.pem")" != "$(serial_of "$T/carol.pem")" ] || fail "the renewal kept the serial"
[ "$(openssl x509 -in "$T/carol2.pem" -noout -subject)" = "$(openssl x509 -in "$T/carol.pem" -noout -subject)" ] ||
    fail "the renewal changed the subject"
P11ESCROW_CLIENT_KEY_PASSWORD=key-file-password-1 run_esc 0 est enroll --simplereenroll --new-key --label signing \
    "${EST[@]}" --client-cert "$T/carol.pem" --client-key "$T/carol.key" --out-cert "$T/carol3.pem" \
    --out-key "$T/carol3.key" --key-password-file "$T/key.pw"
[ "$(pub_of_cert "$T/carol3.pem")" != "$(pub_of_cert "$T/carol.pem")" ] || fail "--new-key kept the key"
[ "$(pub_of_key "$T/carol3.key")" = "$(pub_of_cert "$T/carol3.pem")" ] || fail "the new key is not its certificate's"
run_esc 50 est enroll --simplereenroll --label signing "${EST[@]}" --client-cert "$T/carol.pem" \
    --client-key "$T/carol.key" --client-key-password-file "$T/admin.pw" --out-cert "$T/carol4.pem"
assert_out "cannot decrypt the client key"
[ ! -e "$T/carol4.pem" ] || fail "a failed renewal left its output file"

note "fullcmc authenticated by the client certificate: its subject, archived"
run_esc 0 "${ENROLL[@]}" --client-cert "$T/carol.pem" --client-key "$T/carol.key" \
    --client-key-password-file "$T/key.pw" --out-cert "$T/carol-enc.pem" --out-key "$T/carol-enc.key"
[ "$(openssl x509 -in "$T/carol-enc.pem" -noout -subject)" = "$(openssl x509 -in "$T/carol.pem" -noout -subject)" ] ||
    fail "not the client certificate's subject"
[ "$(records "$T/carol-enc.pem" enroll-client)" = 1 ] || fail "the key is not archived"

note "through a CONNECT proxy: --proxy, https_proxy, no_proxy; one tunnel per command"
python3 "$SRC/tests/tools/connect_proxy.py" "$T/proxy.port" "$T/proxy.log" 2>"$T/proxy.err" &
_daemon_pids+=("$!")
for i in $(seq 50); do [ -s "$T/proxy.port" ] && break; sleep 0.1; done
PROXY=http://127.0.0.1:$(cat "$T/proxy.port")
tunnels() { grep -c "^CONNECT 127.0.0.1:${URL##*:}$" "$T/proxy.log" || true; }
otp encryption 'CN=Dave Example,O=Example'
run_esc 0 "${ENROLL[@]}" --proxy "$PROXY" --otp "$OTP" --otp-file "$T/otp.pw" --out-cert "$T/dave.pem" \
    --out-key "$T/dave.key"
# /cacerts, /transportcert and /fullcmc over one connection.
[ "$(tunnels)" = 1 ] || fail "fullcmc through the proxy made $(tunnels) tunnels, not 1"
[ "$(records "$T/dave.pem" enroll-client)" = 1 ] || fail "the key sent through the proxy is not archived"
https_proxy=$PROXY run_esc 0 est cacerts "${EST[@]}"
[ "$(tunnels)" = 2 ] || fail "https_proxy was not used"
https_proxy=$PROXY no_proxy=127.0.0.1 run_esc 0 est cacerts "${EST[@]}"
[ "$(tunnels)" = 2 ] || fail "no_proxy was not honoured"
# The JSON API client: login, the call and the logout over one connection too.
https_proxy=$PROXY srv admin 0 enroll-password list
[ "$(tunnels)" = 3 ] || fail "enroll-password list --server made $(($(tunnels) - 2)) tunnels, not 1"
run_esc 4 est cacerts "${EST[@]}" --proxy http://127.0.0.1:1
assert_out "through the proxy http://127.0.0.1:1"
run_esc 2 est cacerts "${EST[@]}" --proxy http://user:secret@127.0.0.1:1
assert_out "without credentials"

note "refusals, with their exit codes; no output file is left behind"
otp encryption 'CN=Eve Example,O=Example'
good_otp=$OTP
cp "$T/otp.pw" "$T/good-otp.pw"
( umask 077; echo wrong-password-123 >"$T/otp.pw" )
run_esc 50 "${ENROLL[@]}" --otp "$good_otp" --otp-file "$T/otp.pw" --out-cert "$T/eve.pem" --out-key "$T/eve.key"
assert_out "answered HTTP 401"
[ ! -e "$T/eve.pem" ] && [ ! -e "$T/eve.key" ] || fail "a refused enrollment left files"
otp signing 'CN=Eve Example,O=Example'
run_esc 51 "${ENROLL[@]}" --label signing --otp "$OTP" --otp-file "$T/otp.pw" --out-cert "$T/eve.pem" \
    --out-key "$T/eve.key"
assert_out "answered HTTP 403"
run_esc 42 "${ENROLL[@]}" --label no-such-profile --otp "$good_otp" --otp-file "$T/good-otp.pw" \
    --out-cert "$T/eve.pem" --out-key "$T/eve.key"
assert_out "answered HTTP 404"
run_esc 0 "${ENROLL[@]}" --otp "$good_otp" --otp-file "$T/good-otp.pw" --out-cert "$T/eve.pem" --out-key "$T/eve.key"
rm -f "$T/eve.pem" "$T/eve.key"
run_esc 50 "${ENROLL[@]}" --otp "$good_otp" --otp-file "$T/good-otp.pw" --out-cert "$T/eve.pem" --out-key "$T/eve.key"
assert_out "answered HTTP 401"
[ ! -e "$T/eve.pem" ] || fail "a refused enrollment left files"
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/other-ca.key" \
    -subj '/CN=Some Other CA' -days 2 -out "$T/other-ca.pem" 2>/dev/null
run_esc 50 est cacerts --server "$URL" --server-ca "$T/other-ca.pem"
assert_out "is not trusted"
run_esc 50 "${ENROLL[@]/$SERVER_CA/$T/other-ca.pem}" --otp "$good_otp" --otp-file "$T/good-otp.pw" \
    --out-cert "$T/eve.pem" --out-key "$T/eve.key"
assert_out "is not trusted"
[ ! -e "$T/eve.pem" ] || fail "a refused enrollment left files"
down=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_esc 4 est transport-cert --server "https://127.0.0.1:$down" --server-ca "$SERVER_CA"
assert_out "no answer from https://127.0.0.1:$down"
run_esc 2 est enroll "${EST[@]}" --out-cert "$T/x.pem" --out-key "$T/x.key"
assert_out "how does the enrollee authenticate?"
run_esc 2 est enroll "${EST[@]}" --serverkeygen --fullcmc --otp x --out-p12 "$T/x.p12"
assert_out "exclude each other"
run_esc 2 est enroll "${EST[@]}" --label ../api --otp x --out-p12 "$T/x.p12"
run_esc 2 est transport-cert --server "http://127.0.0.1:${URL##*:}" --server-ca "$SERVER_CA"
[ ! -e "$T/x.p12" ] && [ ! -e "$T/x.pem" ] || fail "a usage error left files"

note "docs/archival.md's walkthrough, block by block as written"
mkdir "$T/walk" "$T/bin"
awk '/^<!-- walkthrough:.*est_client\.sh/ { on = 1 } /^<!-- walkthrough end/ { on = 0 }
     on && /^```sh$/ { sh = 1; next } /^```/ { sh = 0 } on && sh' "$SRC/docs/archival.md" >"$T/walk/walkthrough.sh"
[ "$(grep -c 'p11escrow est enroll' "$T/walk/walkthrough.sh")" = 2 ] || fail "no walkthrough found in docs/archival.md"
ln -s "$ESC" "$T/bin/p11escrow"
cp "$T/admin.pw" "$T/cm1.pw" "$T/walk/"
(
    cd "$T/walk"
    export PATH=$T/bin:$PATH SERVER=$URL CACERT=$SERVER_CA
    bash -euo pipefail walkthrough.sh
) >"$T/out" 2>&1 || fail "the walkthrough failed"
assert_out "key matches"
assert_out "alice.pem: OK"
assert_out "alice-2.pem: OK"
[ "$(records "$T/walk/alice.pem" enroll-client)" = 1 ] || fail "the walkthrough's fullcmc key is not archived"
[ "$(records "$T/walk/alice-2.pem" enroll-server)" = 1 ] || fail "the walkthrough's serverkeygen key is not archived"
assert_out "$(serial_of "$T/walk/alice.pem")"
assert_out "$(serial_of "$T/walk/alice-2.pem")"

stop_daemon
exit 0
