#!/bin/bash
# Sessions of the JSON API (POST/DELETE /api/v1/session, Authorization:
# Bearer): a token works in place of the password, ends at logout, after its
# idle timeout and lifetime, when its account is disabled and when its
# password changes; only its hash is stored, it is never logged; Basic still
# works.  A password an administrator resets is single-use: the account's
# next login may only change it (API and CLI), audited.  The CLI's --server
# mode verifies the password once per command.  The search benchmark prints
# token vs Basic figures.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Session Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
for who in cm1:cert-manager cm2:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:alice@example.org\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" 2>/dev/null
openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" >/dev/null 2>&1 ||
    fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >/dev/null 2>"$T/out" || fail "archiving alice"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')

start_daemon 2
API=$URL/api/v1

# call AUTH METHOD PATH [BODY]: prints the status; body in $T/body, headers in $T/headers.
# AUTH: "basic:USER", "bearer:TOKEN" or "-".
call() {
    local auth=$1 method=$2 path=$3 data=${4:-} args=()
    case $auth in
        basic:*) args=(-K "$T/${auth#basic:}.curl") ;;
        bearer:*) args=(-H "Authorization: Bearer ${auth#bearer:}") ;;
    esac
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
    curl -sS --cacert "$SERVER_CA" "${args[@]}" -o "$T/body" -D "$T/headers" -w '%{http_code}' -X "$method" "$API$path"
}
expect() {
    local want=$1 got; shift
    got=$(call "$@") || fail "curl $*"
    [ "$got" = "$want" ] || fail "$2 $3 ($1): HTTP $got, expected $want: $(head -c 400 "$T/body")"
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T/body" "$1"; }
login() { expect 201 "basic:$1" POST /session; jget 'd["token"]'; }
verified() { grep -c "password verified for '$1'" "$DAEMON_LOG" || true; }

note "login: 201 with a 43-character base64url token, its end and the idle timeout"
expect 201 basic:cm1 POST /session
TOK=$(jget 'd["token"]')
[[ $TOK =~ ^[A-Za-z0-9_-]{43}$ ]] || fail "token is not 43 base64url characters: $TOK"
[ "$(jget 'd["idle_timeout"]')" = 900 ] || fail "idle_timeout: $(jget 'd')"
jget 'd["expires"]' | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$' || fail "expires: $(jget 'd["expires"]')"
grep -qi '^Cache-Control: no-store' "$T/headers" || fail "the token's answer may be cached"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND actor = 'cm1' AND outcome = 'ok'
               AND details LIKE 'session opened%'")" = 1 ] || fail "login not audited"

note "the token works for a search; the password is not verified again"
before=$(verified cm1)
expect 200 "bearer:$TOK" GET "/records?serial=$SERIAL"
[ "$(jget 'len(d["records"])')" = 1 ] || fail "search with a token: $(cat "$T/body")"
expect 200 "bearer:$TOK" GET /whoami
[ "$(jget 'd["name"]')" = cm1 ] || fail "whoami with a token"
[ "$(verified cm1)" = "$before" ] || fail "a call with a token verified the password"
note "... a session cannot open another one"
expect 400 "bearer:$TOK" POST /session

note "wrong, malformed and unknown tokens: 401, one answer"
# Another last character (the last of 32 bytes in base64url is one of 16; 'A' is among them).
if [ "${TOK:42:1}" = A ]; then OTHER=${TOK:0:42}E; else OTHER=${TOK:0:42}A; fi
expect 401 "bearer:$OTHER" GET /whoami
grep -qi '^WWW-Authenticate: Bearer' "$T/headers" || fail "no Bearer challenge"
cp "$T/body" "$T/body.unknown"
expect 401 "bearer:${TOK}x" GET /whoami
cmp -s "$T/body" "$T/body.unknown" || fail "malformed and unknown tokens answer differently"
expect 401 "bearer:" GET /whoami
expect 401 "bearer:$(printf '%043d' 0)" GET /records

note "Basic still works, for every endpoint"
expect 200 basic:cm1 GET "/records?serial=$SERIAL"
expect 200 basic:audrey GET /audit

note "only the token's SHA-256 is stored; the token is in no log and no table in clear"
HASH=$(python3 -c 'import base64,hashlib,sys; t=sys.argv[1]; print(hashlib.sha256(base64.urlsafe_b64decode(t + "=")).hexdigest())' "$TOK")
[ "$(psql_val "SELECT count(*) FROM sessions WHERE encode(token_hash, 'hex') = '$HASH' AND ended_at IS NULL")" = 1 ] ||
    fail "the session's hash is not stored"
! grep -qF -- "$TOK" "$DAEMON_LOG" || fail "the token is in the daemon's log"
pg_dump -d "$DB" --data-only >"$T/dump.sql" 2>/dev/null || psql "$DB" -XAtq -c "SELECT s::text FROM sessions s UNION ALL SELECT e::text FROM audit_events e" >"$T/dump.sql"
! grep -qF -- "$TOK" "$T/dump.sql" || fail "the token is in the database in clear"
! grep -qF -- "cm1-password-00001" "$DAEMON_LOG" "$T/dump.sql" || fail "a password is in the log or database"

note "logout ends it (audited); the token is then refused"
expect 200 "bearer:$TOK" DELETE /session
expect 401 "bearer:$TOK" GET /whoami
expect 401 "bearer:$TOK" DELETE /session
[ "$(psql_val "SELECT end_reason FROM sessions WHERE encode(token_hash, 'hex') = '$HASH'")" = logout ] ||
    fail "end reason of a logout"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.logout' AND actor = 'cm1' AND outcome = 'ok'")" = 1 ] ||
    fail "logout not audited"
expect 400 basic:cm1 DELETE /session
# GET /session says who and how (the web console's reload, console.sh); other methods: 405.
expect 200 basic:cm1 GET /session
grep -qF '"auth":"password"' "$T/body" || fail "GET /session: $(cat "$T/body")"
expect 405 basic:cm1 PUT /session
grep -qi '^Allow: POST, DELETE, GET' "$T/headers" || fail "405 without Allow: POST, DELETE, GET: $(cat "$T/headers")"

note "disabling the account ends its sessions; so does a password change"
T1=$(login cm2)
T2=$(login cm2)
expect 200 "bearer:$T1" GET /whoami
as admin 0 account disable cm2
expect 401 "bearer:$T1" GET /whoami
as admin 0 account enable cm2
expect 401 "bearer:$T2" GET /whoami
[ "$(psql_val "SELECT count(*) FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE a.name = 'cm2'
               AND end_reason = 'account disabled'")" = 2 ] || fail "disable did not end both sessions"
note "... also a disable by hand in the database, checked at use"
T1=$(login cm2)
psql_val "UPDATE accounts SET disabled = true WHERE name = 'cm2'" >/dev/null
expect 401 "bearer:$T1" GET /whoami
psql_val "UPDATE accounts SET disabled = false WHERE name = 'cm2'" >/dev/null
T1=$(login cm2)
expect 200 "bearer:$T1" GET /whoami
P11ESCROW_NEW_PASSWORD='cm2-password-CHANGED' as cm2 0 account passwd
pw cm2 'cm2-password-CHANGED'
expect 401 "bearer:$T1" GET /whoami
[ "$(psql_val "SELECT end_reason FROM sessions WHERE id = (SELECT max(id) FROM sessions)")" = "password changed" ] ||
    fail "password change did not end the session"
[ "$(psql_val "SELECT details FROM audit_events WHERE action = 'account.passwd' ORDER BY id DESC LIMIT 1")" = \
  "changed by self; 1 session(s) ended" ] || fail "passwd audit: $(psql_val "SELECT details FROM audit_events WHERE action = 'account.passwd' ORDER BY id DESC LIMIT 1")"

note "roles are read at every call: an account's session sees a change at once"
T1=$(login cm1)
expect 403 "bearer:$T1" GET /audit
psql_val "UPDATE accounts SET roles = '{auditor}' WHERE name = 'cm1'" >/dev/null
expect 200 "bearer:$T1" GET /audit
expect 403 "bearer:$T1" POST /recoveries "{\"record\": \"$SERIAL\", \"reason\": \"x\"}"
psql_val "UPDATE accounts SET roles = '{cert-manager}' WHERE name = 'cm1'" >/dev/null
expect 200 "bearer:$T1" DELETE /session

note "an administrator's reset is single-use: API 403 'password change required' until changed"
P11ESCROW_NEW_PASSWORD='cm1-reset-by-admin-1' as admin 0 account passwd cm1
assert_out "password reset"
[ "$(psql_val "SELECT details FROM audit_events WHERE action = 'account.passwd' ORDER BY id DESC LIMIT 1")" = \
  "reset by administrator: to be changed at the next login; 0 session(s) ended" ] || fail "reset audit"
pw cm1 'cm1-reset-by-admin-1'
expect 403 basic:cm1 GET "/records?serial=$SERIAL"
[ "$(jget 'd["code"]')" = "password change required" ] || fail "code: $(cat "$T/body")"
expect 403 basic:cm1 POST /session
[ "$(jget 'd["code"]')" = "password change required" ] || fail "session code: $(cat "$T/body")"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND actor = 'cm1' AND outcome = 'refused'
               AND details = 'password change required'")" = 2 ] || fail "must-change logins not audited"
expect 401 basic:cm1 POST /account/password '{"current": "wrong-password-0000", "new": "cm1-own-password-02"}'
expect 400 basic:cm1 POST /account/password '{"current": "cm1-reset-by-admin-1", "new": "cm1-reset-by-admin-1"}'
jget 'd["error"]' | grep_q "the administrator set" || fail "keeping the reset password: $(cat "$T/body")"
expect 200 basic:cm1 POST /account/password '{"current": "cm1-reset-by-admin-1", "new": "cm1-own-password-02"}'
[ "$(jget 'd["password_changed"]')" = True ] || fail "change answer: $(cat "$T/body")"
pw cm1 'cm1-own-password-02'
expect 200 basic:cm1 GET "/records?serial=$SERIAL"
[ "$(psql_val "SELECT must_change_password FROM accounts WHERE name = 'cm1'")" = f ] || fail "flag not cleared"
[ "$(psql_val "SELECT details FROM audit_events WHERE action = 'account.passwd' AND actor = 'cm1' ORDER BY id DESC LIMIT 1")" = \
  "changed by self; 0 session(s) ended" ] || fail "self change audit"
! grep -qF -- "cm1-own-password-02" "$DAEMON_LOG" || fail "a password from the body is in the log"
note "... a session may change its password too (and then ends)"
T1=$(login cm1)
expect 200 "bearer:$T1" POST /account/password '{"current": "cm1-own-password-02", "new": "cm1-own-password-03"}'
pw cm1 'cm1-own-password-03'
expect 401 "bearer:$T1" GET /whoami

note "... and through the CLI: a reset account can only run 'account passwd' on itself"
P11ESCROW_NEW_PASSWORD='audrey-reset-000001' as admin 0 account passwd audrey
pw audrey 'audrey-reset-000001'
as audrey 52 audit show
assert_out "must change its password first"
srv audrey 52 audit show
assert_out "must change its password first"
P11ESCROW_NEW_PASSWORD='audrey-reset-000001' as audrey 2 account passwd
P11ESCROW_NEW_PASSWORD='audrey-own-pass-0006' as audrey 0 account passwd
assert_out "password changed"
pw audrey 'audrey-own-pass-0006'
as audrey 0 audit show --action auth.login
assert_out "password change required"
note "... a reset administrator resets no one"
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin2 --role admin --user admin --password-file "$T/admin.pw"
P11ESCROW_NEW_PASSWORD='admin2-reset-000001' as admin 0 account passwd admin2
pw admin2 'admin2-reset-000001'
P11ESCROW_NEW_PASSWORD='kent-hijacked-00001' as admin2 52 account passwd kent

note "the CLI --server logs in once per command: one password verification for several calls"
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
if [ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = pending ]; then
    srv cm2 0 recovery approve "$REQ"
fi
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "request not released"
before=$(verified kent)
logins=$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND actor = 'kent'")
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/alice.p12"
assert_out "request $REQ completed"
[ "$(( $(verified kent) - before ))" = 1 ] || fail "recovery complete --server verified the password $(( $(verified kent) - before )) times"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND actor = 'kent'") - $logins" ] &&
    [ "$(( $(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.login' AND actor = 'kent'") - logins ))" = 1 ] ||
    fail "not one auth.login for the command"
[ "$(psql_val "SELECT count(*) FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE a.name = 'kent'
               AND ended_at IS NULL")" = 0 ] || fail "the CLI did not log out"
[ "$(psql_val "SELECT end_reason FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE a.name = 'kent'")" = logout ] ||
    fail "the CLI's session did not end by logout"

note "the search benchmark: token next to Basic"
python3 "$SRC/bench/session_search.py" "$URL" "$SERVER_CA" cm1 "$T/cm1.pw" 50 "?serial=$SERIAL" >"$T/bench.out" ||
    { cat "$T/bench.out"; fail "bench/session_search.py failed"; }
cat "$T/bench.out"
grep -q "session token  *median" "$T/bench.out" || fail "no token figure"
grep -q "HTTP Basic  *median" "$T/bench.out" || fail "no Basic figure"
stop_daemon

# Far enough apart that a loaded machine (the sanitizer run) cannot blur them: an idle session is
# 4 s old when it is found idle, well before its lifetime; a session used every second never idles.
note "idle timeout and lifetime (3 s idle, 10 s in all)"
start_daemon 1 "session_idle_timeout = 3" "session_lifetime = 10"
API=$URL/api/v1
T1=$(login cm1)
[ "$(jget 'd["idle_timeout"]')" = 3 ] || fail "idle_timeout setting: $(cat "$T/body")"
sleep 4
expect 401 "bearer:$T1" GET /whoami
[ "$(psql_val "SELECT end_reason FROM sessions WHERE id = (SELECT max(id) FROM sessions)")" = idle ] || fail "idle end reason"
T1=$(login cm1)
t0=$(date +%s)
for i in $(seq 20); do
    sleep 1
    got=$(call "bearer:$T1" GET /whoami)
    [ "$got" = 200 ] || break
done
elapsed=$(($(date +%s) - t0))
[ "$got" = 401 ] || fail "a session in use lived past its 10 s lifetime"
[ "$elapsed" -ge 9 ] || fail "a session in use ended after $elapsed s, before its lifetime"
[ "$(psql_val "SELECT end_reason FROM sessions WHERE id = (SELECT max(id) FROM sessions)")" = lifetime ] || fail "lifetime end reason"
stop_daemon
note "sessions: all checks passed"
