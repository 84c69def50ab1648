#!/bin/bash
# p11escrowd under stress: bad input of every kind (right status, nothing
# stored, still serving), SIGTERM while a request is still arriving, kill -9
# at every step of an enrollment (certificate and archive record: both or
# neither), and two processes sharing one database and one token set
# through p11-kit server issuing concurrently (no duplicate serial, nothing lost).
. "$(dirname "$0")/lib.sh"

CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Service Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001
start_daemon 2


# otp PROFILE: "name:password" of a new one-time password for CN=Test User
otp() {
    "$ESC" enroll-password create --subject 'CN=Test User,O=Example' --profile "$1" --user admin >"$T/otp.txt" ||
        fail "enroll-password create"
    printf '%s:%s' "$(awk '$1 == "name:" {print $2}' "$T/otp.txt")" "$(awk '$1 == "password:" {print $2}' "$T/otp.txt")"
}
rows() { psql_val "SELECT (SELECT count(*) FROM certificates) || ' ' || (SELECT count(*) FROM archive_records)"; }
# post PATH CONTENT_TYPE BODY_FILE [curl args...]: prints the HTTP status; body in $T/resp
post() {
    local path=$1 ct=$2 body=$3; shift 3
    curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' -H "Content-Type: $ct" \
        --data-binary @"$body" "$@" "$URL/.well-known/est/$path"
}

note "a client certificate for the signing profile (used by the load below)"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/client.key" \
    -subj '/CN=Test User/O=Example' -outform DER 2>/dev/null | openssl base64 >"$T/sign.b64"
[ "$(post signing/simpleenroll application/pkcs10 "$T/sign.b64" --user "$(otp signing)")" = 200 ] ||
    fail "signing enrollment: $(cat "$T/resp")"
openssl base64 -d -in "$T/resp" | openssl pkcs7 -inform DER -print_certs -out "$T/client.pem"
CC=(--cert "$T/client.pem" --key "$T/client.key")
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/tmp.key" \
    -subj '/CN=x' -outform DER 2>/dev/null >"$T/req.der"
openssl base64 -in "$T/req.der" >"$T/req.b64"

note "bad input: the right status and reason, nothing stored, still serving"
before=$(rows)
printf 'not base64 at all!' >"$T/bad.b64"
[ "$(post serverkeygen application/pkcs10 "$T/bad.b64" "${CC[@]}")" = 400 ] || fail "malformed base64"
head -c 300 /dev/urandom | openssl base64 >"$T/bad.b64"
[ "$(post serverkeygen application/pkcs10 "$T/bad.b64" "${CC[@]}")" = 400 ] || fail "malformed DER"
# A CSR whose signature fails: flip the last byte (inside the signature).
python3 -c 'import sys; d=bytearray(open(sys.argv[1],"rb").read()); d[-1]^=1; open(sys.argv[2],"wb").write(d)' \
    "$T/req.der" "$T/badsig.der"
openssl base64 -in "$T/badsig.der" >"$T/badsig.b64"
[ "$(post serverkeygen application/pkcs10 "$T/badsig.b64" "${CC[@]}")" = 400 ] || fail "bad CSR signature"
grep -q "signature does not verify" "$T/resp" || fail "bad-signature reason: $(cat "$T/resp")"
[ "$(post serverkeygen text/plain "$T/req.b64" "${CC[@]}")" = 415 ] || fail "wrong content type"
[ "$(post fullcmc application/pkcs7-mime "$T/req.b64" "${CC[@]}")" = 400 ] || fail "a CSR is not a CMC request"
head -c 200000 /dev/zero | tr '\0' 'A' >"$T/big.b64"
[ "$(post serverkeygen application/pkcs10 "$T/big.b64" "${CC[@]}")" = 413 ] || fail "oversize body"
# est_text_error WHAT: the answer ($T/resp, headers $T/resp.h) is one line of text/plain, not HTML
est_text_error() {
    grep -qi '^Content-Type: text/plain' "$T/resp.h" || fail "$1: not text/plain: $(cat "$T/resp.h")"
    [ "$(wc -l <"$T/resp")" = 1 ] && ! grep -qi '<html' "$T/resp" || fail "$1: not one line: $(head -c 300 "$T/resp")"
}
# Over max_body (64 KiB) but within evhttp's own limit (twice that): our 413, not libevent's HTML page.
head -c 100000 /dev/zero | tr '\0' 'A' >"$T/big.b64"
[ "$(post serverkeygen application/pkcs10 "$T/big.b64" "${CC[@]}" -D "$T/resp.h")" = 413 ] || fail "oversize body"
est_text_error "a body over max_body"
grep -q "larger than 65536 bytes" "$T/resp" || fail "oversize reason: $(cat "$T/resp")"
[ "$(post serverkeygen application/pkcs10 "$T/big.b64" "${CC[@]}" -D "$T/resp.h" -H 'Transfer-Encoding: chunked')" = 413 ] ||
    fail "oversize chunked body"
est_text_error "a chunked body over max_body"
# Every method reaches the EST router: 405 with Allow (libevent answered 501 with its HTML page).
for m in DELETE PUT PATCH; do
    code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -D "$T/resp.h" -w '%{http_code}' -X "$m" "$URL/.well-known/est/cacerts")
    [ "$code" = 405 ] || fail "$m cacerts: HTTP $code"
    grep -qi '^Allow: GET' "$T/resp.h" || fail "$m cacerts: no Allow: GET"
    est_text_error "$m cacerts"
done
[ "$(post serverkeygen application/pkcs10 "$T/req.b64" -X PUT -D "$T/resp.h")" = 405 ] || fail "PUT serverkeygen"
grep -qi '^Allow: POST' "$T/resp.h" || fail "PUT serverkeygen: no Allow: POST"
est_text_error "PUT serverkeygen"
code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -D "$T/resp.h" -w '%{http_code}' -X FROB "$URL/.well-known/est/cacerts")
[ "$code" = 501 ] || fail "unknown method: HTTP $code"
est_text_error "an unknown method"
[ "$(post nosuchop application/pkcs10 "$T/req.b64")" = 404 ] || fail "unknown operation"
[ "$(post nolabel/serverkeygen application/pkcs10 "$T/req.b64")" = 404 ] || fail "unknown label"
[ "$(post ../../etc/passwd application/pkcs10 "$T/req.b64" --path-as-is)" = 400 ] || fail "path traversal"
[ "$(post serverkeygen application/pkcs10 "$T/req.b64")" = 401 ] || fail "no credentials"
[ "$(post serverkeygen application/pkcs10 "$T/req.b64" --user 'enroll-nobody:wrong-password-1')" = 401 ] ||
    fail "wrong one-time password"
[ "$(post simpleenroll application/pkcs10 "$T/req.b64" "${CC[@]}")" = 403 ] || fail "archival profile simpleenroll"
grep -q "requires key archival" "$T/resp" || fail "archival reason: $(cat "$T/resp")"
[ "$(post signing/serverkeygen application/pkcs10 "$T/req.b64" "${CC[@]}")" = 403 ] || fail "signing keygen"
[ "$(post signing/simplereenroll application/pkcs10 "$T/req.b64" "${CC[@]}")" = 400 ] ||
    fail "re-enrollment with another subject"
# An RSA-1024 key is no profile's.
openssl req -new -newkey rsa:1024 -nodes -keyout /dev/null -subj '/CN=Test User/O=Example' -outform DER \
    2>/dev/null | openssl base64 >"$T/weak.b64"
[ "$(post signing/simpleenroll application/pkcs10 "$T/weak.b64" "${CC[@]}")" = 403 ] || fail "RSA-1024 allowed"
[ "$(rows)" = "$before" ] || fail "a refused request stored something: $before -> $(rows)"
curl -sf --cacert "$SERVER_CA" "$URL/healthz" >/dev/null || fail "the service stopped serving"

note "CRL served by the service, signed by the CA"
curl -sf --cacert "$SERVER_CA" -o "$T/crl.der" "$URL/crl" || fail "GET /crl"
openssl crl -inform DER -in "$T/crl.der" -CAfile "$SERVER_CA" -noout 2>&1 | grep_q "verify OK" || fail "CRL"

note "SIGTERM while a request is still arriving: it completes, then the process exits 0"
( printf '%s' "$(cat "$T/req.b64")"; head -c 30000 /dev/zero | tr '\0' '\n' ) >"$T/slow.b64"
curl -sS --cacert "$SERVER_CA" -o "$T/slow.resp" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
    --limit-rate 10K --data-binary @"$T/slow.b64" "${CC[@]}" "$URL/.well-known/est/serverkeygen" >"$T/slow.code" &
slow=$!
sleep 1
stop_daemon
wait "$slow" || fail "the slow request was cut off"
[ "$(cat "$T/slow.code")" = 200 ] || fail "the slow request got $(cat "$T/slow.code")"

note "tls_client_auth = require: a missing client certificate is a 403 with its reason"
start_daemon 1 "tls_client_auth = require"
code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' "$URL/.well-known/est/cacerts")
[ "$code" = 403 ] && grep -q "requires a TLS client certificate" "$T/resp" || fail "no client cert: $code $(cat "$T/resp")"
code=$(curl -sS --cacert "$SERVER_CA" "${CC[@]}" -o "$T/resp" -w '%{http_code}' "$URL/.well-known/est/cacerts")
[ "$code" = 200 ] || fail "with a client certificate: $code"
# A certificate of another CA does not get through the handshake.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/other.key" -subj '/CN=other' \
    -out "$T/other.pem" -days 1 2>/dev/null
! curl -sS --cacert "$SERVER_CA" --cert "$T/other.pem" --key "$T/other.key" -o /dev/null \
    "$URL/.well-known/est/cacerts" 2>/dev/null || fail "a foreign client certificate was accepted"
stop_daemon

note "a client certificate is checked once per connection (client_cert_recheck); a new connection always"
# keepalive CERT KEY N: N /serverkeygen requests on one TLS connection with CERT, after the
# first of which the file $T/go-revoke is made and $T/revoked awaited; prints the statuses.
keepalive() {
    python3 - "$URL" "$SERVER_CA" "$1" "$2" "$3" "$T/req.b64" "$T" <<'EOF'
import http.client, os, ssl, sys, time, urllib.parse
url, ca, cert, key, n, req, tmp = sys.argv[1:]
u = urllib.parse.urlsplit(url)
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
body = open(req, "rb").read()
out = []
for i in range(int(n)):
    c.request("POST", "/.well-known/est/serverkeygen", body=body, headers={"Content-Type": "application/pkcs10"})
    r = c.getresponse()
    r.read()
    out.append(str(r.status))
    if i == 0:
        open(os.path.join(tmp, "go-revoke"), "w").close()
        for _ in range(300):
            if os.path.exists(os.path.join(tmp, "revoked")):
                break
            time.sleep(0.1)
print(" ".join(out))
EOF
}
# revoke_when_asked SERIAL: revokes SERIAL once keepalive asks, then says so
revoke_when_asked() {
    for i in $(seq 300); do [ -e "$T/go-revoke" ] && break; sleep 0.1; done
    "$ESC" cert revoke --serial "$1" --reason keyCompromise --user admin >/dev/null || fail "revoke $1"
    touch "$T/revoked"
}
# client_cert NAME: a new signing-profile client certificate $T/NAME.pem (key $T/NAME.key); prints its serial
client_cert() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$1.key" \
        -subj '/CN=Test User/O=Example' -outform DER 2>/dev/null | openssl base64 >"$T/$1.b64"
    [ "$(post signing/simpleenroll application/pkcs10 "$T/$1.b64" --user "$(otp signing)")" = 200 ] ||
        fail "signing enrollment: $(cat "$T/resp")"
    openssl base64 -d -in "$T/resp" | openssl pkcs7 -inform DER -print_certs -out "$T/$1.pem"
    openssl x509 -in "$T/$1.pem" -noout -serial | cut -d= -f2
}
start_daemon 1
serial=$(client_cert keep30)
rm -f "$T/go-revoke" "$T/revoked"
revoke_when_asked "$serial" &
st=$(keepalive "$T/keep30.pem" "$T/keep30.key" 2)
wait $!
[ "$st" = "200 200" ] || fail "default recheck: a revoked certificate on its checked connection got '$st'"
code=$(post serverkeygen application/pkcs10 "$T/req.b64" --cert "$T/keep30.pem" --key "$T/keep30.key")
[ "$code" = 401 ] || [ "$code" = 403 ] || fail "a revoked certificate on a new connection got $code"
grep -q "revoked" "$T/resp" || fail "revoked reason: $(cat "$T/resp")"
stop_daemon
start_daemon 1 "client_cert_recheck = 0"
serial=$(client_cert keep0)
rm -f "$T/go-revoke" "$T/revoked"
revoke_when_asked "$serial" &
st=$(keepalive "$T/keep0.pem" "$T/keep0.key" 2)
wait $!
[ "$st" = "200 401" ] || [ "$st" = "200 403" ] ||
    fail "client_cert_recheck = 0: a certificate revoked mid-connection got '$st'"
stop_daemon

note "one-time passwords: past auth_fail_limit failures for one name, 429 even with the right password"
start_daemon 1 "auth_fail_limit = 2"
cred=$(otp encryption)
for i in 1 2; do
    code=$(post encryption/serverkeygen application/pkcs10 "$T/req.b64" --user "${cred%%:*}:wrong-password-0000000")
    [ "$code" = 401 ] || fail "a wrong one-time password got $code: $(cat "$T/resp")"
done
code=$(post encryption/serverkeygen application/pkcs10 "$T/req.b64" --user "$cred")
[ "$code" = 429 ] && grep -q "too many failed logins" "$T/resp" || fail "after 2 failures: $code $(cat "$T/resp")"
stop_daemon

note "kill -9 at every step of an enrollment: both rows or neither"
for point in after-sign after-cert-row after-archive after-commit; do
    before=$(rows)
    P11ESCROW_FAULT_KILL=$point start_daemon 1
    code=$(post serverkeygen application/pkcs10 "$T/req.b64" "${CC[@]}" 2>/dev/null) || true
    # The hook kills the worker process that runs the enrollment; the supervisor restarts it.
    for i in $(seq 100); do grep -q "worker 0 (pid [0-9]*) was killed by signal 9" "$DAEMON_LOG" && break; sleep 0.1; done
    grep -q "worker 0 (pid [0-9]*) was killed by signal 9" "$DAEMON_LOG" ||
        { cat "$DAEMON_LOG" >&2; fail "$point: the fault hook did not fire (HTTP $code)"; }
    stop_daemon
    set -- $before
    after=$(rows)
    if [ "$point" = after-commit ]; then
        [ "$after" = "$(($1 + 1)) $(($2 + 1))" ] || fail "$point: $before -> $after"
    else
        [ "$after" = "$before" ] || fail "$point: $before -> $after"
        [ "$code" != 200 ] || fail "$point: a certificate was returned"
    fi
done
[ "$(psql_val "SELECT count(*) FROM archive_records a LEFT JOIN certificates c ON c.serial = a.cert_serial
               WHERE c.serial IS NULL")" = 0 ] || fail "an archive record without its certificate"

note "two processes, one database, one token set through p11-kit server: concurrent issuance"
_server_pidfiles+=("$T/p11kit.pid")
"$SRC/hsm/export-tokens" --dir "$T/hsm" --socket "$T/p11kit.sock" --pidfile "$T/p11kit.pid" 'pkcs11:token=CA' \
    >"$T/export.log" 2>&1 || { cat "$T/export.log" >&2; fail "p11-kit server did not start"; }
export P11_KIT_SERVER_ADDRESS=unix:path=$T/p11kit.sock
start_daemon 2 "module = $CLIENT"
URL1=$URL
start_daemon 2 "module = $CLIENT"
URL2=$URL
before=$(rows)
for i in $(seq 12); do
    for u in "$URL1" "$URL2"; do
        curl -sS --cacert "$SERVER_CA" -o /dev/null -w '%{http_code}\n' -H 'Content-Type: application/pkcs10' \
            --data-binary @"$T/req.b64" "${CC[@]}" "$u/.well-known/est/serverkeygen" >>"$T/codes" &
    done
done
for j in $(jobs -p); do
    case " ${_daemon_pids[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac
done
ok=$(grep -cx 200 "$T/codes" || true)
[ "$ok" = 24 ] || fail "only $ok of 24 concurrent enrollments succeeded: $(sort "$T/codes" | uniq -c)"
set -- $before
[ "$(rows)" = "$(($1 + 24)) $(($2 + 24))" ] || fail "rows: $before -> $(rows) after 24 enrollments"
[ "$(psql_val "SELECT count(DISTINCT serial) FROM certificates")" = "$(psql_val "SELECT count(*) FROM certificates")" ] ||
    fail "duplicate serials"
grep -q 'worker=1' "$DAEMON_LOG" || note "(only one worker of the second process was used)"
exit 0
