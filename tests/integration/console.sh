#!/bin/bash
# The web console (/console/, issue #19) in a real browser: headless Chromium
# driven by Selenium (tests/integration/console_test.py), TLS to the daemon
# verified against the test CA in a throwaway NSS database.
#
# Here, with curl: every console answer's headers (CSP, nosniff, no referrer,
# Content-Type, ETag revalidation), the cookie mode of POST /session (Secure,
# HttpOnly, SameSite=Strict; the CSRF token bound to the session), a
# state-changing call with the cookie but without or with a wrong CSRF token,
# or from another Origin: 403 and audited (auth.csrf); Bearer and Basic
# callers unaffected; console = off: 404.
# In the browser: two certificate managers in two browser sessions file and
# approve a request, a KRA completes it with the CLI (--server) and the
# console shows it completed; a certificate whose subject holds <script> and
# entities and a reason with markup are shown as text and no script runs; a
# cross-origin form post (a page on another port) and a call without the
# CSRF token are refused and the audit trail shows them; logout ends the
# session.  Screenshots of each page are written to $MESON_BUILD_ROOT/console-screenshots.
# Chromium, chromedriver and python3-selenium are required (scripts/bootstrap
# installs them): missing, the test FAILS (it does not skip).
. "$(dirname "$0")/lib.sh"

PY=/usr/bin/python3
for c in chromium chromedriver certutil; do
    command -v "$c" >/dev/null || fail "$c is missing: run scripts/bootstrap (chromium chromium-driver libnss3-tools)"
done
"$PY" -c 'import selenium' 2>/dev/null || fail "python3-selenium is missing: run scripts/bootstrap"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Console Test CA,O=Example'
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1
as admin 0 policy set allow_foreign_issuers true
as admin 0 policy set recovery_approvals 1
for who in cm1:cert-manager cm2:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1

# Alice's key, and one whose certificate's subject is hostile markup (under 64 characters per attribute).
HOSTILE_CN='<script>window.p11pwned=1</script>&amp;&lt;b&gt;'
# RFC 2253 puts a backslash before < > ; " (the API's subject): this one is still live markup after that.
HOSTILE_O='<img src=x onerror=window.p11pwned=2 >'
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=Alice Console/O=Example" -days 30 \
    -addext keyUsage=critical,keyEncipherment -out "$T/alice.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/evil.key" -days 30 -utf8 \
    -subj "/CN=${HOSTILE_CN//\//\\/}/O=${HOSTILE_O//\//\\/}" \
    -addext keyUsage=critical,keyEncipherment -out "$T/evil.pem" 2>"$T/out" || fail "hostile certificate"
for u in alice evil; do
    run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/$u.key" --cert "$T/$u.pem"
done
openssl x509 -in "$T/evil.pem" -noout -subject -nameopt RFC2253 | grep_q -F 'window.p11pwned=1' ||
    fail "the hostile subject did not survive: $(openssl x509 -in "$T/evil.pem" -noout -subject)"

# cm2's client certificate from a throwaway enterprise CA (account_cert_ca), bound to cm2: a console login
# without a password, and a browser that sends it on a cross-site post too.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/ent.key" -subj '/CN=Ent Root' \
    -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign -out "$T/ent.pem" 2>/dev/null
( umask 077; openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/cm2-c.key" \
    -subj '/CN=cm2 browser' -out "$T/cm2-c.csr" 2>/dev/null )
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$T/c.ext"
openssl x509 -req -in "$T/cm2-c.csr" -CA "$T/ent.pem" -CAkey "$T/ent.key" -set_serial 0x1234 -days 30 \
    -extfile "$T/c.ext" -out "$T/cm2-c.pem" 2>/dev/null || fail "cm2's client certificate"
P11ESCROW_ACCOUNT_CERT_CA=$T/ent.pem as admin 0 account cert add cm2 --cert "$T/cm2-c.pem"

start_daemon 2 "account_cert_ca = $T/ent.pem"
API=$URL/api/v1
# The subject as the API gives it (RFC 2253, as the library formats it): what the page must show, as text.
curl -sS --cacert "$SERVER_CA" -K "$T/cm1.curl" "$API/records?subject=p11pwned" -o "$T/evil.json"
HOSTILE_SUBJECT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["records"][0]["subject"])' "$T/evil.json") ||
    fail "the hostile record: $(cat "$T/evil.json")"
case $HOSTILE_SUBJECT in *'<script'*'&amp'*'<img src=x onerror=window.p11pwned=2 '*) ;; *) fail "markup lost from the subject: $HOSTILE_SUBJECT" ;; esac

# hdr URL [curl args]: status; headers in $T/headers, body in $T/body
hdr() {
    local u=$1; shift
    curl -sS --cacert "$SERVER_CA" -o "$T/body" -D "$T/headers" -w '%{http_code}' "$@" "$u"
}
has_hdr() { grep -qiF -- "$1" "$T/headers" || fail "no '$1' in: $(cat "$T/headers")"; }
CSP="Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

note "serving: the console's files with their headers; no login needed to load them"
for f in /:text/html /index.html:text/html /app.js:text/javascript /style.css:text/css; do
    [ "$(hdr "$URL/console${f%%:*}")" = 200 ] || fail "GET /console${f%%:*}: $(cat "$T/headers")"
    has_hdr "$CSP"
    has_hdr 'X-Content-Type-Options: nosniff'
    has_hdr 'Referrer-Policy: no-referrer'
    has_hdr "Content-Type: ${f#*:}; charset=utf-8"
    has_hdr 'Cache-Control: no-cache'
    has_hdr 'X-Frame-Options: DENY'
    ! grep -qi 'Cache-Control: no-store' "$T/headers" || fail "two Cache-Control headers"
done
# Code, not comments: no HTML or code sink anywhere (values enter as text nodes).
! grep -vE '^\s*(\*|/\*|//)' "$SRC/www/console/app.js" |
    grep -qiE 'innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function|setTimeout\(.?["'"'"']' ||
    fail "app.js uses an HTML or code sink"
! grep -qiE '<script>|<style>| on[a-z]+=| style=' "$SRC/www/console/index.html" || fail "inline script or style in index.html"
ETAG=$(sed -n 's/^ETag: *\(.*\)\r$/\1/Ip' "$T/headers")
[ -n "$ETAG" ] || fail "no ETag"
[ "$(hdr "$URL/console/style.css" -H "If-None-Match: $ETAG")" = 304 ] || fail "If-None-Match: $(cat "$T/headers")"
[ "$(hdr "$URL/console")" = 301 ] || fail "/console without a slash: $(cat "$T/headers")"
has_hdr 'Location: /console/'
for p in /console/nope.js /console/../api/v1/whoami /console/sub/app.js; do
    code=$(hdr "$URL$p" --path-as-is)
    [ "$code" = 404 ] || [ "$code" = 400 ] || fail "GET $p: $code"
done
[ "$(hdr "$URL/console/nope.js")" = 404 ] && has_hdr "$CSP"
[ "$(hdr "$URL/console/" -X POST)" = 405 ] || fail "POST /console/"

note "cookie sessions: Set-Cookie Secure HttpOnly SameSite=Strict, no token in the body, a CSRF token"
[ "$(hdr "$API/session" -K "$T/cm1.curl" -H 'Content-Type: application/json' --data '{"mode":"cookie"}')" = 201 ] ||
    fail "cookie login: $(cat "$T/body")"
COOKIE=$(sed -n 's/^Set-Cookie: *p11escrow_session=\([A-Za-z0-9_-]*\);.*/\1/Ip' "$T/headers" | tr -d '\r')
[ "${#COOKIE}" = 43 ] || fail "no session cookie: $(cat "$T/headers")"
for a in Secure HttpOnly SameSite=Strict Path=/api/v1; do grep -i '^Set-Cookie' "$T/headers" | grep_q -F "; $a" || fail "cookie lacks $a"; done
! grep -qF "$COOKIE" "$T/body" || fail "the session token is in the body"
CSRF=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf"])' "$T/body")
[ "${#CSRF}" = 43 ] || fail "no CSRF token: $(cat "$T/body")"
[ "$(hdr "$API/session" -H "Cookie: p11escrow_session=$COOKIE")" = 200 ] || fail "GET /session: $(cat "$T/body")"
grep -qF "\"csrf\":\"$CSRF\"" "$T/body" || fail "GET /session gives another CSRF token: $(cat "$T/body")"
[ "$(hdr "$API/whoami" -H "Cookie: p11escrow_session=$COOKIE")" = 200 ] || fail "a read with the cookie alone"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.csrf'")" = 0 ] || fail "auth.csrf before any"
ALICE=$(psql_val "SELECT id FROM archive_records WHERE subject LIKE '%Alice Console%'")
printf '{"record":"%s","kra":"kra1","reason":"curl CSRF test"}' "$ALICE" >"$T/req.json"
post() { hdr "$API/recoveries" -H 'Content-Type: application/json' --data-binary @"$T/req.json" "$@"; }
[ "$(post -H "Cookie: p11escrow_session=$COOKIE")" = 403 ] || fail "a POST with the cookie and no CSRF token: $(cat "$T/body")"
grep -qF 'cross-site request refused' "$T/body" || fail "refusal: $(cat "$T/body")"
# Another last character (one in 16 tokens ends in A: replacing it with A gave the right token back).
WRONG=${CSRF%?}A; [ "$WRONG" != "$CSRF" ] || WRONG=${CSRF%?}E
[ "$(post -H "Cookie: p11escrow_session=$COOKIE" -H "X-CSRF-Token: $WRONG")" = 403 ] || fail "a wrong CSRF token"
[ "$(post -H "Cookie: p11escrow_session=$COOKIE" -H "X-CSRF-Token: $CSRF" -H 'Origin: https://evil.example')" = 403 ] ||
    fail "a foreign Origin with the right token"
[ "$(post -K "$T/cm1.curl" -H 'Origin: https://evil.example')" = 403 ] || fail "a foreign Origin with Basic"
[ "$(psql_val "SELECT count(*) FROM recovery_requests")" = 0 ] || fail "a refused call filed a request"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.csrf' AND outcome = 'refused' AND actor = 'cm1'")" = 4 ] ||
    fail "the refusals are not audited with the account: $(psql_val "SELECT actor, details FROM audit_events WHERE action = 'auth.csrf'")"
psql_val "SELECT details FROM audit_events WHERE action = 'auth.csrf'" | grep_q -F 'Origin https://evil.example' ||
    fail "the audit event does not name the Origin"
[ "$(post -H "Cookie: p11escrow_session=$COOKIE" -H "X-CSRF-Token: $CSRF" -H "Origin: $URL")" = 201 ] ||
    fail "the console's own call (cookie, token, own Origin): $(cat "$T/body")"
REQ0=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$T/body")
note "Bearer and Basic callers are unaffected (no Origin, no CSRF token)"
[ "$(hdr "$API/recoveries/$REQ0/cancel" -K "$T/cm1.curl" -H 'Content-Type: application/json' --data '{"reason":"by basic"}')" = 200 ] ||
    fail "Basic POST: $(cat "$T/body")"
note "logout with the cookie (and the token) ends the session and clears the cookie"
[ "$(hdr "$API/session" -X DELETE -H "Cookie: p11escrow_session=$COOKIE")" = 403 ] || fail "logout without the CSRF token"
[ "$(hdr "$API/session" -X DELETE -H "Cookie: p11escrow_session=$COOKIE" -H "X-CSRF-Token: $CSRF")" = 200 ] ||
    fail "logout: $(cat "$T/body")"
grep -i '^Set-Cookie: p11escrow_session=;' "$T/headers" | grep_q -i 'Max-Age=0' || fail "logout does not clear the cookie"
[ "$(hdr "$API/whoami" -H "Cookie: p11escrow_session=$COOKIE" -H 'X-Requested-With: p11escrow-console')" = 401 ] ||
    fail "the cookie still works after logout"
! grep -qi '^WWW-Authenticate: Basic' "$T/headers" || fail "a Basic challenge to the console (the browser's own dialog)"
[ "$(hdr "$API/session" -X POST -H 'Content-Type: application/json' --data '{"mode":"bearer"}' -K "$T/cm1.curl")" = 400 ] ||
    fail "an unknown mode"

note "a client certificate opens a cookie session too; a cross-site post authenticated by it alone is refused"
CC=(--cert "$T/cm2-c.pem" --key "$T/cm2-c.key")
[ "$(hdr "$API/session" "${CC[@]}" -H 'Content-Type: application/json' --data '{"mode":"cookie"}')" = 201 ] ||
    fail "cookie login with a client certificate: $(cat "$T/body")"
grep -qi '^Set-Cookie: p11escrow_session=[A-Za-z0-9_-]\{43\}; ' "$T/headers" || fail "no cookie for the certificate login"
[ "$(hdr "$API/session" "${CC[@]}")" = 200 ] && grep -qF '"auth":"certificate"' "$T/body" ||
    fail "GET /session with the certificate: $(cat "$T/body")"
[ "$(hdr "$API/recoveries/$REQ0/cancel" "${CC[@]}" -H 'Origin: http://127.0.0.1:1' \
    -H 'Content-Type: application/x-www-form-urlencoded' --data 'x=1')" = 403 ] ||
    fail "a cross-site post with a client certificate: $(cat "$T/body")"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.csrf' AND actor = 'cm2'")" = 1 ] ||
    fail "the certificate's cross-site post is not audited with its account"

note "the browser: headless Chromium, the test CA in a throwaway NSS database"
export HOME=$T/home
mkdir -p "$HOME/.pki/nssdb"
certutil -N -d "sql:$HOME/.pki/nssdb" --empty-password
certutil -A -d "sql:$HOME/.pki/nssdb" -n 'p11escrow test CA' -t 'C,,' -i "$T/ca.pem"
SHOTS=${MESON_BUILD_ROOT:-$PWD}/console-screenshots
mkdir -p "$SHOTS"
# The KRA's step, run by the driver when the request is released: the CLI with its card, no database.
cat >"$T/complete.sh" <<EOF
#!/bin/bash
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' exec "$ESC" recovery complete "\$1" \
    --server "$URL" --server-ca "$SERVER_CA" --user kent --password-file "$T/kent.pw" \
    --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/recovered-\$1.p12" </dev/null
EOF
chmod +x "$T/complete.sh"
timeout 150 "$PY" "$SRC/tests/integration/console_test.py" --url "$URL" --shots "$SHOTS" --dir "$T" \
    --complete "$T/complete.sh" --hostile-subject "$HOSTILE_SUBJECT" >"$T/out" 2>&1 ||
    { cat "$T/out" >&2; tail -n 30 "$DAEMON_LOG" >&2; fail "the browser test failed"; }
cat "$T/out"
[ -s "$T/recovered-$(cat "$T/completed.id").p12" ] || fail "the KRA's completion wrote no PKCS#12"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $(cat "$T/completed.id")")" = completed ] ||
    fail "the request is not completed in the database"
note "audited: the browser's call without the token (cm1) and the cross-origin form post (no credentials)"
psql_val "SELECT actor || ' ' || details FROM audit_events WHERE action = 'auth.csrf' ORDER BY id" >"$T/csrf.txt"
grep -qE '^cm1 POST /api/v1/recoveries/[0-9]+/cancel refused: no X-CSRF-Token' "$T/csrf.txt" ||
    fail "the browser's call without the CSRF token is not audited: $(cat "$T/csrf.txt")"
grep -qE '^unauthenticated POST /api/v1/recoveries/[0-9]+/approve refused: the Origin .*Origin http://127\.0\.0\.1:' "$T/csrf.txt" ||
    fail "the cross-origin form post is not audited: $(cat "$T/csrf.txt")"
[ "$(psql_val "SELECT count(*) FROM sessions WHERE ended_at IS NULL AND account_id = (SELECT id FROM accounts WHERE name = 'cm1')")" = 0 ] ||
    fail "cm1's browser session did not end at logout"
ls "$SHOTS"/*.png >/dev/null || fail "no screenshots"

note "console = off: 404 for all of it, the API unchanged"
stop_daemon
start_daemon 1 'console = off'
for p in /console/ /console /console/app.js; do
    [ "$(hdr "$URL$p")" = 404 ] || fail "GET $p with console = off: $(cat "$T/headers")"
done
[ "$(hdr "$URL/api/v1/whoami" -K "$T/cm1.curl")" = 200 ] || fail "the API with console = off"
note "ok"
