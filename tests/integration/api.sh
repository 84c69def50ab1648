#!/bin/bash
# The JSON API (/api/v1) of a running p11escrowd: authentication, roles and
# dual control exactly as the library has them, strict input (SQL
# metacharacters in every text field change nothing), and a full two-person
# recovery with the CLI's --server mode only — the KRA needs the CLI, the
# card and the network, no database — down to a PKCS#12 that stock openssl
# opens, holding the archived key byte for byte.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=API Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw kim 'kim-password-000004'; pw audrey 'audrey-password-05'

note "accounts, two KRA cards, an archived key"
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256
for who in cm1:cert-manager cm2:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/kim.pw") as admin 0 account add kim --role kra --kra kra2
as admin 0 policy set kra_set_size 2
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
for u in alice bob; do
    printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n' "$u" >"$T/enc.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u/O=Example" -out "$T/$u.csr" 2>/dev/null
    openssl x509 -req -in "$T/$u.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/$u.pem" >/dev/null 2>&1 ||
        fail "issuing $u's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$u.pem" "$T/$u.key" >"$T/$u.rec" 2>"$T/out" || fail "archiving $u"
done
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
BOBSERIAL=$(openssl x509 -in "$T/bob.pem" -noout -serial | sed 's/serial=//')

start_daemon 2
API=$URL/api/v1

# api USER METHOD PATH [BODY_FILE [CONTENT_TYPE]] [curl args...]: prints the status;
# body in $T/body, headers in $T/headers.  USER "-" sends no credentials.
api() {
    local user=$1 method=$2 path=$3 body=${4:-} ct=${5:-application/json} auth=()
    (($# > 5)) && shift 5 || shift $#
    [ "$user" = - ] || auth=(-K "$T/$user.curl")
    if [ -n "$body" ]; then
        curl -sS --cacert "$SERVER_CA" "${auth[@]}" -o "$T/body" -D "$T/headers" -w '%{http_code}' -X "$method" \
            -H "Content-Type: $ct" --data-binary @"$body" "$@" "$API$path"
    else
        curl -sS --cacert "$SERVER_CA" "${auth[@]}" -o "$T/body" -D "$T/headers" -w '%{http_code}' -X "$method" \
            "$@" "$API$path"
    fi
}
# expect STATUS USER METHOD PATH [BODY_FILE [CONTENT_TYPE]]
expect() {
    local want=$1 got; shift
    got=$(api "$@") || fail "curl $*"
    [ "$got" = "$want" ] || fail "$2 $3 as $1: HTTP $got, expected $want: $(head -c 400 "$T/body")"
}
# jget EXPR: a Python expression over the JSON body d
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T/body" "$1"; }
body() { printf '%s' "$1" >"$T/req.json"; echo "$T/req.json"; }
rows() {
    psql_val "SELECT (SELECT count(*) FROM archive_records) || ' ' || (SELECT count(*) FROM recovery_requests) || ' '
              || (SELECT count(*) FROM recovery_approvals) || ' ' || (SELECT count(*) FROM accounts) || ' '
              || (SELECT count(*) FROM kras) || ' ' || (SELECT string_agg(state, ',' ORDER BY id) FROM recovery_requests)"
}

note "authentication: HTTP Basic; unknown user and wrong password look the same"
expect 401 - GET /whoami
grep -qi '^WWW-Authenticate: Basic realm="p11escrow"' "$T/headers" || fail "no Basic challenge"
expect 401 - GET /no/such/thing
cp "$T/body" "$T/body.noauth"
( umask 077; printf 'user = "cm1:wrong-password-000"\n' >"$T/wrong.curl"; printf 'user = "nobody:cm1-password-00001"\n' >"$T/nobody.curl" )
expect 401 wrong GET /whoami
cp "$T/body" "$T/body.wrong"
expect 401 nobody GET /whoami
cmp -s "$T/body" "$T/body.wrong" || fail "unknown user and wrong password answer differently"
grep -qi '^WWW-Authenticate: Basic' "$T/headers" || fail "no Basic challenge after a wrong password"
expect 200 cm1 GET /whoami
[ "$(jget 'd["name"], d["roles"]')" = "('cm1', ['cert-manager'])" ] || fail "whoami: $(cat "$T/body")"
expect 200 kent GET /whoami
[ "$(jget 'd["roles"]')" = "['kra']" ] || fail "whoami kent: $(cat "$T/body")"
grep -qi '^Cache-Control: no-store' "$T/headers" || fail "no Cache-Control: no-store"

note "routing: unknown path 404, wrong method 405 with Allow, JSON errors"
expect 404 cm1 GET /nothing-here
[ "$(jget 'sorted(d.keys())')" = "['code', 'error']" ] || fail "404 is not a JSON error: $(cat "$T/body")"
expect 404 cm1 GET /recoveries/abc/approve
expect 404 cm1 GET /recoveries/0
expect 404 cm1 GET /recoveries/1/approve/x
expect 405 cm1 GET /recoveries/1/approve
grep -qi '^Allow: POST' "$T/headers" || fail "405 without Allow: POST"
expect 405 cm1 POST /whoami
grep -qi '^Allow: GET' "$T/headers" || fail "405 without Allow: GET"
expect 404 cm1 GET /recoveries/999999
# is_json_error: the body is {"error": ..., "code": ...} with Content-Type application/json
is_json_error() {
    grep -qi '^Content-Type: application/json' "$T/headers" || fail "$1: not application/json: $(cat "$T/headers")"
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert isinstance(d["error"], str) and d["code"]' \
        <"$T/body" || fail "$1: not a JSON error: $(head -c 400 "$T/body")"
}
# Every method reaches the router (libevent answered 501 with its HTML page for these).
for m in DELETE PUT PATCH OPTIONS; do
    expect 405 cm1 "$m" /recoveries
    grep -qi '^Allow: GET, POST' "$T/headers" || fail "$m: 405 without Allow: GET, POST"
    is_json_error "$m /recoveries"
done
expect 405 cm1 DELETE /recoveries/1
grep -qi '^Allow: GET' "$T/headers" || fail "DELETE /recoveries/1: no Allow: GET"
is_json_error "DELETE /recoveries/1"
expect 405 cm1 PUT /recoveries "$(body '{"record":"1","reason":"abc"}')"
is_json_error "PUT /recoveries with a body"
# A method libevent cannot name: 501, still JSON, and the connection closed.
expect 501 cm1 FROB /recoveries
is_json_error "FROB /recoveries"
grep -qi '^Connection: close' "$T/headers" || fail "FROB: connection not closed"
expect 200 cm1 GET /whoami

note "strict bodies: 415, 400 (malformed, not an object, unknown field, wrong type, duplicates, NUL), 413"
before=$(rows)
expect 415 cm1 POST /recoveries "$(body '{"record":"1","reason":"abc"}')" text/plain
expect 415 cm1 POST /recoveries
expect 400 cm1 POST /recoveries "$(body '{"record": "1", "reason": ')"
jget 'd["error"]' | grep_q "malformed JSON" || fail "malformed JSON reason: $(cat "$T/body")"
expect 400 cm1 POST /recoveries "$(body '["record", "reason"]')"
expect 400 cm1 POST /recoveries "$(body "{\"record\":\"$SERIAL\",\"reason\":\"lost laptop\",\"admin\":true}")"
jget 'd["error"]' | grep_q "unknown field 'admin'" || fail "unknown-field reason: $(cat "$T/body")"
expect 400 cm1 POST /recoveries "$(body "{\"record\":\"$SERIAL\",\"reason\":5}")"
expect 400 cm1 POST /recoveries "$(body "{\"record\":\"$SERIAL\",\"reason\":\"abcd\",\"reason\":\"efgh\"}")"
expect 400 cm1 POST /recoveries "$(body "{\"record\":\"$SERIAL\",\"reason\":\"lost\\u0000laptop\"}")"
expect 400 cm1 POST /recoveries "$(body "{\"record\":\"$SERIAL\"}")"
jget 'd["error"]' | grep_q "field 'reason' is required" || fail "missing-field reason: $(cat "$T/body")"
python3 -c 'import json,sys; print(json.dumps({"record": sys.argv[1], "reason": "x" * 20000}))' "$SERIAL" >"$T/big.json"
expect 413 cm1 POST /recoveries "$T/big.json"
is_json_error "a body over 16 KiB"
# Over max_body (64 KiB): refused before authentication, in JSON too (it was libevent's HTML page).
python3 -c 'import json,sys; print(json.dumps({"record": sys.argv[1], "reason": "x" * 100000}))' "$SERIAL" >"$T/huge.json"
expect 413 - POST /recoveries "$T/huge.json"
is_json_error "a body over max_body"
expect 413 cm1 POST /recoveries "$T/huge.json" application/json -H 'Transfer-Encoding: chunked'
is_json_error "a chunked body over max_body"
expect 413 cm1 PUT /recoveries "$T/huge.json"
is_json_error "PUT with a body over max_body"
expect 400 cm1 POST /recoveries/1/approve "$(body '{"x":1}')"
expect 400 cm1 GET '/records?colour=blue'
expect 400 cm1 GET '/records?serial=1&serial=2'
expect 400 cm1 GET '/recoveries?state=lost'
expect 400 audrey GET '/audit?limit=0'
[ "$(rows)" = "$before" ] || fail "refused requests changed the database: $before -> $(rows)"

note "SQL metacharacters in every text field: refused or taken as data, nothing changed"
INJ="x'; DROP TABLE archive_records; --"
INJQ=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$INJ")
inj() { python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >"$T/inj.json"; echo "$T/inj.json"; }
expect 400 cm1 POST /recoveries "$(inj record "$INJ" reason "a valid reason")"
expect 400 cm1 POST /recoveries "$(inj record "$INJ" reason "$INJ" kra "$INJ")"
expect 409 cm1 POST /recoveries "$(inj record "$SERIAL" reason "a valid reason" kra "$INJ")"
expect 400 cm1 GET "/records?serial=$INJQ"
expect 200 cm1 GET "/records?subject=$INJQ&email=$INJQ"
[ "$(jget 'len(d["records"])')" = 0 ] || fail "an injected search matched"
expect 400 cm1 GET "/recoveries?state=$INJQ"
expect 200 audrey GET "/audit?actor=$INJQ&action=$INJQ&object=$INJQ&since=$INJQ&until=$INJQ"
[ "$(jget 'len(d["events"])')" = 0 ] || fail "an injected audit filter matched"
expect 404 cm1 POST "/recoveries/1$INJQ/approve"
( umask 077; printf 'user = "%s:%s"\n' "x'; DROP TABLE accounts; --" "$INJ" >"$T/inj.curl" )
expect 401 inj GET /whoami
[ "$(rows)" = "$before" ] || fail "injection attempts changed the database: $before -> $(rows)"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = 2 ] || fail "archive_records lost rows"

note "roles: a KRA cannot request or search; an auditor cannot approve; nobody else reads a package"
expect 403 kent POST /recoveries "$(inj record "$SERIAL" reason "I want it" kra kra1)"
expect 403 kent GET "/records?serial=$SERIAL"
expect 200 audrey GET "/records?serial=$SERIAL"
[ "$(jget 'd["records"][0]["kras"]')" = "['kra1', 'kra2']" ] || fail "record view: $(cat "$T/body")"
expect 403 cm1 GET /audit
expect 200 cm1 GET /kras
[ "$(jget '[k["name"] for k in d["kras"]]')" = "['kra1', 'kra2']" ] || fail "kras: $(cat "$T/body")"
[ "$(rows)" = "$before" ] || fail "refusals changed the database"

note "a data field with metacharacters is stored verbatim (parameters, never SQL text)"
as admin 0 policy set recovery_approvals 1
expect 201 cm1 POST /recoveries "$(inj record "$BOBSERIAL" reason "$INJ" kra kra2)"
RQ=$(jget 'd["id"]')
[ "$(jget 'd["state"], d["reason"]')" = "('pending', \"$INJ\")" ] || fail "created: $(cat "$T/body")"
grep -qi "^Location: /api/v1/recoveries/$RQ" "$T/headers" || fail "no Location header"
[ "$(psql_val "SELECT reason FROM recovery_requests WHERE id = $RQ")" = "$INJ" ] || fail "reason not verbatim"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = 2 ] || fail "archive_records lost rows"
note "dual control over HTTP: the requester never approves; a KRA or an auditor neither"
expect 403 cm1 POST "/recoveries/$RQ/approve"
jget 'd["error"]' | grep_q "cannot approve their own" || fail "self-approval reason: $(cat "$T/body")"
expect 403 kim POST "/recoveries/$RQ/approve"
expect 403 audrey POST "/recoveries/$RQ/approve"
expect 409 kim GET "/recoveries/$RQ/package"
expect 403 kim POST "/recoveries/$RQ/release"
expect 409 cm1 POST "/recoveries/$RQ/release"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $RQ")" = pending ] || fail "state changed"

note "the whole recovery through the service with the CLI alone (an unreachable database proves it)"
srv cm1 0 recovery search --serial "$SERIAL"
assert_out "1 record(s)"
assert_out "CN=alice"
srv kent 51 recovery search --serial "$SERIAL"
srv kent 0 kra list
assert_out "kra1"
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"
assert_out "request $REQ is pending: 0 of 1 approval(s)"
srv cm1 51 recovery approve "$REQ"
assert_out "cannot approve their own"
srv kent 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/early.p12"
[ ! -e "$T/early.p12" ] || fail "a file was left by a refused completion"
srv cm2 0 recovery approve "$REQ"
assert_out "request $REQ approved by cm2"
assert_out "request $REQ released by the service to KRA 'kra1'"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "not released"
srv cm2 41 recovery approve "$REQ"
expect 403 cm1 GET "/recoveries/$REQ/package"
expect 403 kim GET "/recoveries/$REQ/package"
expect 403 audrey GET "/recoveries/$REQ/package"
expect 403 cm1 POST "/recoveries/$REQ/complete"
expect 403 kim POST "/recoveries/$REQ/complete"
srv kim 51 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/kim.p12"
[ ! -e "$T/kim.p12" ] || fail "a file was left for the wrong KRA"
srv kent 0 recovery list --state released
assert_out "request $REQ  released"
printf 'wrong-pin-0000\n' >"$T/bad.pin"; chmod 600 "$T/bad.pin"
srv kent 11 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$T/bad.pin" --out "$T/x.p12"
[ ! -e "$T/x.p12" ] || fail "a file was left by a wrong KRA PIN"
srv kent 14 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/x.p12"
assert_out "does not hold the key of KRA 'kra1'"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "a failed completion completed"
unset P11ESCROW_DATABASE
P11ESCROW_SERVER_CA=$SERVER_CA run_esc 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --out "$T/alice.p12" --server "$URL" --user kent --password-file "$T/kent.pw"
export P11ESCROW_DATABASE=$DB
assert_out "request $REQ completed: the key matches its certificate"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
[ ${#P12PW} -ge 20 ] || fail "no generated password shown"
[ "$(stat -c %a "$T/alice.p12")" = 600 ] || fail "PKCS#12 not mode 0600"
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl pkcs12 cannot open the output"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "recovered key differs from the archived key"
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nokeys 2>/dev/null | openssl x509 -noout -serial |
    grep -qi "$SERIAL" || fail "the PKCS#12 holds another certificate"
[ "$(psql_val "SELECT state || ' ' || (package IS NULL) FROM recovery_requests WHERE id = $REQ")" = "completed true" ] ||
    fail "not completed, or the package kept"

note "a completion is not replayed: 409 over HTTP, exit 41 from the CLI, no file"
expect 409 kent POST "/recoveries/$REQ/complete"
jget 'd["error"]' | grep_q "completes once" || fail "replay reason: $(cat "$T/body")"
expect 409 kent GET "/recoveries/$REQ/package"
srv kent 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/again.p12"
[ ! -e "$T/again.p12" ] || fail "a replay left a file"
expect 409 cm1 POST "/recoveries/$REQ/release"

note "no extra approval needed: the service releases at once; release by a certificate manager is a retry"
as admin 0 policy set recovery_approvals 0
expect 201 cm1 POST /recoveries "$(inj record "$SERIAL" reason "second copy for alice" kra kra2)"
R2=$(jget 'd["id"]')
[ "$(jget 'd["state"]')" = released ] || fail "not released at once: $(cat "$T/body")"
expect 403 kent POST "/recoveries/$R2/release"
expect 409 cm2 POST "/recoveries/$R2/release"
expect 200 kim GET "/recoveries/$R2/package"
[ "$(jget 'sorted(d.keys())')" = "['certificate', 'id', 'kra', 'kra_certificate', 'kra_key_uri', 'package']" ] ||
    fail "package view: $(cat "$T/body")"
grep -qi '^Cache-Control: no-store' "$T/headers" || fail "package without Cache-Control: no-store"
jget 'd["kra_certificate"]' | base64 -d | openssl x509 -inform DER -noout 2>/dev/null || fail "kra_certificate"
jget 'd["package"]' | base64 -d >"$T/pkg.der"
openssl cms -cmsout -inform DER -in "$T/pkg.der" -print 2>/dev/null | grep_q -i "authEnvelopedData" ||
    fail "the package is not a CMS AuthEnvelopedData"
expect 200 kim POST "/recoveries/$R2/complete"
[ "$(jget 'd["state"]')" = completed ] || fail "complete: $(cat "$T/body")"
expect 409 kim POST "/recoveries/$R2/complete"

note "a tampered record: the request stands, the release is refused, 409 and exit 33 (TAMPERED)"
# Swap the two records' sealed envelopes: each row now holds the other's (bound to its row: TAMPERED).
swap_records() {
    psql_val "UPDATE archive_records a SET record = (SELECT b.record FROM archive_records b WHERE b.id <> a.id)" >/dev/null
}
swap_records
srv cm1 33 recovery request --serial "$SERIAL" --reason "alice's key again" --kra kra1
R3=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$R3" ] || fail "no request id printed for a request whose release failed"
assert_out "could not release request $R3"
assert_out "belongs to another row"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $R3")" = approved ] || fail "request $R3 not left approved"
expect 409 cm1 POST "/recoveries/$R3/release"
[ "$(jget 'd["code"]')" = "integrity check failed: data was altered" ] || fail "release of a tampered record: $(cat "$T/body")"
srv cm1 33 recovery release "$R3"
expect 201 cm1 POST /recoveries "$(inj record "$SERIAL" reason "and once more" kra kra1)"
[ "$(jget 'd["state"], d["release_code"]')" = "('approved', 'integrity check failed: data was altered')" ] ||
    fail "201 with a failed release: $(cat "$T/body")"
# The same when an approval triggers the release.
as admin 0 policy set recovery_approvals 1
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice, approved this time" --kra kra1
R4=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
srv cm2 33 recovery approve "$R4"
assert_out "request $R4 approved by cm2"
assert_out "could not release request $R4"
swap_records
as admin 0 policy set recovery_approvals 0

note "the audit trail has every step, refusals included; auditors read it through the service"
srv audrey 0 audit show --object "request $REQ"
for a in recovery.request recovery.approve recovery.release recovery.fetch recovery.complete; do
    grep -q " $a request $REQ: ok" "$T/out" || fail "no successful $a event for request $REQ"
done
grep -q "cm1 (cert-manager) recovery.approve request $REQ: refused - a requester cannot approve" "$T/out" ||
    fail "the refused self-approval is not audited"
grep -q "kim (kra) recovery.fetch request $REQ: refused" "$T/out" || fail "the wrong KRA's fetch is not audited"
grep -q "kent (kra) recovery.complete request $REQ: refused" "$T/out" || fail "the replay is not audited"
grep -q "kent (kra) recovery.fetch request $REQ: refused - request $REQ is pending" "$T/out" ||
    fail "the early fetch is not audited"
srv audrey 0 audit export --action recovery.complete
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$T/out" || fail "export is not JSON lines"
srv cm1 51 audit show
expect 200 audrey GET "/audit?action=recovery.release&limit=2"
[ "$(jget 'len(d["events"])')" = 2 ] || fail "audit limit: $(cat "$T/body")"
run_esc 0 audit verify
assert_out "audit trail intact"

note "path traversal: in the URL (raw and percent-encoded) and in the CLI's file options"
code=$(curl -sS --cacert "$SERVER_CA" -K "$T/cm1.curl" -o /dev/null -w '%{http_code}' --path-as-is \
    "$API/../../../etc/passwd")
[ "$code" = 400 ] || fail "raw ../ in the path: HTTP $code"
expect 400 cm1 GET "/recoveries/..%2F..%2F..%2Fetc%2Fpasswd"
expect 400 cm1 GET "/records%2F..%2F..%2Fkras"
# --out never follows a planted symlink or replaces an existing file (O_EXCL): nothing written through it.
ln -s "$T/victim" "$T/link.p12"
srv kent 4 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/link.p12"
[ ! -e "$T/victim" ] || fail "--out followed a symlink"
run_esc 4 recovery list --server "$URL" --server-ca "../../../nonexistent/ca.pem" --user cm1 --password-file "$T/cm1.pw"

note "no password, PIN or key in the service's log"
for s in admin-password-0001 cm1-password-00001 cm2-password-00002 kent-password-0003 kim-password-000004 \
    audrey-password-05 "$P12PW" "$P11ESCROW_USER_PIN" "$(printf 'kent:kent-password-0003' | base64)"; do
    ! grep -qF -- "$s" "$DAEMON_LOG" || fail "a secret is in the service's log"
done
stop_daemon

note "failed logins: past the limit for a name or an address, 429 at once, the password not even checked"
start_daemon 1 "auth_fail_limit = 3" "auth_fail_limit_address = 6" "auth_fail_window = 60"
API=$URL/api/v1
for n in cm2 x1 x2 x3; do printf 'user = "%s:not-the-password"\n' "$n" >"$T/bad-$n.curl"; done
for i in 1 2 3; do expect 401 bad-cm2 GET /whoami; done
expect 429 cm2 GET /whoami
grep -qiE '^retry-after: [0-9]+' "$T/headers" || fail "no Retry-After on 429"
[ "$(jget 'd["code"]')" = "authentication failed" ] && jget 'd["error"]' | grep_q "too many failed logins" ||
    fail "429 body: $(cat "$T/body")"
# The CLI says so, with the exit code of a failed login.
srv cm2 50 recovery list
assert_out "too many failed logins"
expect 200 cm1 GET /whoami
# Three more failures from this address (other names): 6 in all, the address's limit.
for n in x1 x2 x3; do expect 401 "bad-$n" GET /whoami; done
expect 429 cm1 GET /whoami
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'auth.throttle' AND outcome = 'refused'")" = 2 ] ||
    fail "the two throttles are not audited: $(psql_val "SELECT string_agg(object || ' ' || details, '; ') FROM audit_events WHERE action = 'auth.throttle'")"
grep -q "too many failed logins for 'cm2'" "$DAEMON_LOG" || fail "the name's throttle is not logged"
grep -q "too many failed logins *from 127.0.0.1" "$DAEMON_LOG" || fail "the address's throttle is not logged"
! grep -qF "not-the-password" "$DAEMON_LOG" || fail "a tried password is in the service's log"
stop_daemon
# The counts live in the process: a restarted service starts afresh.
start_daemon 1 "auth_fail_limit = 3" "auth_fail_limit_address = 6" "auth_fail_window = 60"
API=$URL/api/v1
expect 200 cm2 GET /whoami
stop_daemon
echo ok
