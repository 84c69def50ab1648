#!/bin/bash
# Observability of p11escrowd (docs/operator-guide.md, "Monitoring"): with 2 workers and
# --log-format json, GET /metrics refused without its bearer token (or with a wrong one, or an
# unbound or certificate manager's client certificate) and served for the token and an auditor's
# certificate; its exposition strictly well-formed, its counters moved by exactly what the test
# did (summed over both workers, through a worker killed and forked again), its database gauges
# equal to the database's counts; GET /readyz 200, 503 naming the database while PostgreSQL is
# down (/healthz still 200), 200 again after, 503 naming the schema when it is newer than the
# program, 503 naming the CA token while the keeper is restarting; every stderr line one JSON object, one request line per request with the id the client
# saw (X-Request-Id), and no password, PIN or token in any line.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Obs Test CA,O=Example'
ADMIN_PW=admin-password-obs-0001
pw admin "$ADMIN_PW"
P11ESCROW_NEW_PASSWORD=$ADMIN_PW run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
METRICS_TOKEN=metrics-token-$(openssl rand -hex 16)
( umask 077; printf '%s\n' "$METRICS_TOKEN" >"$T/metrics.token" )

note "--log-format: a bad value is a usage error (exit 2)"
rc=0
"$P11ESCROWD_BIN" --log-format xml >"$T/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "--log-format xml exited $rc, expected 2"
assert_out "neither text nor json"

# The configuration says text; the option wins.
DAEMON_ARGS="--log-format json" start_daemon 2 "metrics_token_file = $T/metrics.token" "log_format = text"
mkdir "$T/h"
# get NAME PATH [curl options...]: GET URL/PATH, headers in $T/h/NAME.hdr, body $T/h/NAME.body; prints the status.
get() {
    local name=$1 path=$2
    shift 2
    curl -sS --cacert "$SERVER_CA" -D "$T/h/$name.hdr" -o "$T/h/$name.body" -w '%{http_code}' "$@" "$URL$path"
}
scrape() { get "$1" /metrics -H "Authorization: Bearer $METRICS_TOKEN"; }
# value FILE SERIES: the value of one series (name with its labels, exactly as exposed), or fail.
value() {
    local v
    v=$(awk -v s="$2 " 'index($0, s) == 1 { print $NF }' "$1")
    [ -n "$v" ] || fail "no series $2 in $1"
    printf '%s\n' "$v"
}
# total FILE NAME: the sum of every series of NAME (all labels).
total() { awk -v p="$2" 'index($1, p "{") == 1 || $1 == p { s += $2 } END { printf "%d\n", s }' "$1"; }

note "/metrics: refused without a credential, with a wrong token, with Basic; served with the token"
[ "$(get m-none /metrics)" = 401 ] || fail "/metrics without a credential: $(cat "$T/h/m-none.body")"
grep -qi '^WWW-Authenticate: Bearer' "$T/h/m-none.hdr" || fail "no Bearer challenge"
[ "$(get m-bad /metrics -H 'Authorization: Bearer not-the-token-at-all')" = 401 ] || fail "a wrong token was accepted"
[ "$(get m-basic /metrics --user "admin:$ADMIN_PW")" = 401 ] || fail "Basic credentials were accepted for /metrics"
[ "$(scrape m0)" = 200 ] || fail "/metrics with the token: $(cat "$T/h/m0.body")"
grep -qi '^Content-Type: text/plain; version=0.0.4' "$T/h/m0.hdr" || fail "not the 0.0.4 text format"

# A strict reader of the text exposition format 0.0.4: HELP and TYPE before a family's samples,
# names and labels well-formed, values numbers, no series twice, families not interleaved,
# histogram buckets ascending in le, cumulative, +Inf equal to _count.
cat >"$T/promparse.py" <<'PY'
import math, re, sys
NAME = r'[a-zA-Z_:][a-zA-Z0-9_:]*'
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(r'^(' + NAME + r')(?:\{(.*)\})? (\S+)$')
LABELS = re.compile(r'^' + LABEL + r'(?:,' + LABEL + r')*$')
types, helps, seen, done, current = {}, {}, set(), set(), None
hist = {}
def family_of(name):
    for suffix in ('_bucket', '_sum', '_count'):
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) == 'histogram':
            return name[:-len(suffix)]
    return name
def die(msg, n, line):
    sys.exit(f'line {n}: {msg}: {line!r}')
text = open(sys.argv[1], encoding='utf-8').read()
if not text.endswith('\n'):
    sys.exit('the exposition does not end with a newline')
for n, line in enumerate(text.split('\n')[:-1], 1):
    if line.startswith('#'):
        m = re.match(r'^# (HELP|TYPE) (' + NAME + r') (.+)$', line)
        if not m:
            die('malformed comment', n, line)
        kind, name, rest = m.groups()
        if current is not None and name != current:
            done.add(current)
        if name in done:
            die('family declared again after its samples', n, line)
        current = name
        if kind == 'TYPE':
            if rest not in ('counter', 'gauge', 'histogram', 'summary', 'untyped') or name in types:
                die('bad or repeated TYPE', n, line)
            types[name] = rest
        else:
            if name in helps:
                die('repeated HELP', n, line)
            helps[name] = rest
        continue
    m = SAMPLE.match(line)
    if not m:
        die('malformed sample', n, line)
    name, labeltext, value = m.groups()
    if labeltext is not None and not LABELS.match(labeltext):
        die('malformed labels', n, line)
    labels = dict(re.findall(LABEL, labeltext or ''))
    fam = family_of(name)
    if fam != current or fam not in types or fam not in helps:
        die('sample outside its family (no HELP/TYPE before it)', n, line)
    try:
        v = float(value)
    except ValueError:
        die('value is not a number', n, line)
    if types[fam] == 'counter' and (v < 0 or not name.endswith('_total')):
        die('counter negative or not named *_total', n, line)
    key = (name, tuple(sorted(labels.items())))
    if key in seen:
        die('series repeated', n, line)
    seen.add(key)
    if types[fam] == 'histogram':
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != 'le'))
        h = hist.setdefault((fam, rest), {'b': [], 'count': None})
        if name.endswith('_bucket'):
            le = math.inf if labels['le'] == '+Inf' else float(labels['le'])
            if h['b'] and (le <= h['b'][-1][0] or v < h['b'][-1][1]):
                die('bucket not ascending or not cumulative', n, line)
            h['b'].append((le, v))
        elif name.endswith('_count'):
            h['count'] = v
for (fam, rest), h in hist.items():
    if not h['b'] or h['b'][-1][0] != math.inf or h['b'][-1][1] != h['count']:
        sys.exit(f'histogram {fam}{rest}: +Inf bucket missing or not equal to _count')
print(f'{len(seen)} series in {len(types)} families')
PY
python3 "$T/promparse.py" "$T/h/m0.body" >"$T/out" 2>&1 || fail "the exposition does not parse"
for fam in p11escrow_requests_total p11escrow_errors_total p11escrow_logins_failed_total \
    p11escrow_logins_throttled_total p11escrow_logins_held_off p11escrow_database_duration_seconds \
    p11escrow_enrollment_passwords p11escrow_archive_records p11escrow_recovery_requests p11escrow_audit_events \
    p11escrow_certificates_issued; do
    grep -q "^# TYPE $fam " "$T/h/m0.body" || fail "no family $fam"
done
# The refusals above: three 401s on /metrics, two failed logins (the wrong token and Basic are
# not the token; no credential at all is no failed login).
[ "$(value "$T/h/m0.body" 'p11escrow_requests_total{route="metrics",status="4xx"}')" = 3 ] ||
    fail "/metrics refusals not counted 3"
[ "$(value "$T/h/m0.body" p11escrow_logins_failed_total)" = 1 ] || fail "failed logins: expected 1 (the wrong token)"
[ "$(value "$T/h/m0.body" 'p11escrow_errors_total{code="authentication failed"}')" = 3 ] || fail "AUTH errors not 3"

note "enrollments through EST (one simpleenroll, two serverkeygen with archival) and a failed login"
req_before=$(total "$T/h/m0.body" p11escrow_requests_total)
arch_before=$(value "$T/h/m0.body" 'p11escrow_archive_records{source="enroll-server"}')
P11ESCROW_PASSWORD=$ADMIN_PW serverkeygen_client
OTP_PW=$(awk '$1 == "password:" {print $2}' "$T/otp.txt")
for i in 1 2; do
    [ "$(keygen "k$i")" = 200 ] || fail "serverkeygen $i: $(cat "$T/r/k$i.body")"
    grep -i '^X-Request-Id:' "$T/r/k$i.hdr" | tr -d '\r' | awk '{print $2}' >>"$T/ids"
done
[ "$(get login-bad /api/v1/records --user 'admin:wrong-password-obs')" = 401 ] || fail "a wrong password was accepted"
[ "$(get login-ok /api/v1/kras --user "admin:$ADMIN_PW")" = 200 ] || fail "admin login: $(cat "$T/h/login-ok.body")"
sleep 5.2 # the database's counts are read at most every 5 s by each worker
[ "$(scrape m1)" = 200 ] || fail "second scrape"
python3 "$T/promparse.py" "$T/h/m1.body" >"$T/out" 2>&1 || fail "the second exposition does not parse"
# Prometheus' own checker and linter too, where it is installed (Debian: prometheus; not a dependency).
if command -v promtool >/dev/null; then
    promtool check metrics <"$T/h/m1.body" >"$T/out" 2>&1 || fail "promtool check metrics"
    [ ! -s "$T/out" ] || fail "promtool check metrics found problems"
fi
# Requests between the scrapes: m0 itself, 1 simpleenroll, 2 serverkeygen, 2 API.
[ "$(total "$T/h/m1.body" p11escrow_requests_total)" = $((req_before + 6)) ] ||
    fail "requests: $(total "$T/h/m1.body" p11escrow_requests_total), expected $((req_before + 6))"
[ "$(value "$T/h/m1.body" 'p11escrow_requests_total{route="est",status="2xx"}')" = 3 ] || fail "EST 2xx not 3"
[ "$(value "$T/h/m1.body" 'p11escrow_requests_total{route="api",status="4xx"}')" = 1 ] || fail "API 4xx not 1"
[ "$(value "$T/h/m1.body" 'p11escrow_requests_total{route="api",status="2xx"}')" = 1 ] || fail "API 2xx not 1"
[ "$(value "$T/h/m1.body" p11escrow_logins_failed_total)" = 2 ] || fail "failed logins: expected 2"
[ "$(value "$T/h/m1.body" 'p11escrow_archive_records{source="enroll-server"}')" = $((arch_before + 2)) ] ||
    fail "archive records (enroll-server) did not grow by 2"
[ "$(value "$T/h/m1.body" 'p11escrow_archive_records{source="enroll-server"}')" = \
    "$(psql_val "SELECT count(*) FROM archive_records WHERE source = 'enroll-server'")" ] || fail "archive gauge != DB"
[ "$(value "$T/h/m1.body" 'p11escrow_enrollment_passwords{state="used"}')" = 1 ] || fail "used OTPs not 1"
[ "$(value "$T/h/m1.body" p11escrow_certificates_issued)" = "$(psql_val 'SELECT count(*) FROM certificates')" ] ||
    fail "certificates gauge != DB"
[ "$(value "$T/h/m1.body" p11escrow_audit_events)" = "$(psql_val 'SELECT max(id) FROM audit_events')" ] ||
    fail "audit chain length != DB"
# The keeper signed 3 certificates for the workers: 3 "issue" operations, timed.
[ "$(value "$T/h/m1.body" 'p11escrow_token_operation_duration_seconds_count{op="issue"}')" = 3 ] ||
    fail "token issue operations not 3"
[ "$(value "$T/h/m1.body" 'p11escrow_token_operation_duration_seconds_bucket{op="issue",le="+Inf"}')" = 3 ] ||
    fail "issue histogram +Inf not 3"
[ "$(value "$T/h/m1.body" 'p11escrow_database_duration_seconds_count{op="commit"}')" -ge 3 ] ||
    fail "fewer than 3 commits timed"

note "login throttling: an account held off after auth_fail_limit (10) failures"
for i in $(seq 10); do get "lim$i" /api/v1/records --user 'throttled:wrong-password' >/dev/null; done
[ "$(get lim11 /api/v1/records --user 'throttled:wrong-password')" = 429 ] || fail "no 429 after 10 failures"
[ "$(scrape m2)" = 200 ] || fail "third scrape"
[ "$(value "$T/h/m2.body" p11escrow_logins_throttled_total)" = 1 ] || fail "throttled logins not 1"
[ "$(value "$T/h/m2.body" p11escrow_logins_failed_total)" = 12 ] || fail "failed logins not 12"
[ "$(value "$T/h/m2.body" 'p11escrow_logins_held_off{kind="name"}')" = 1 ] || fail "held-off names not 1"

note "a worker killed and forked again: no count lost, none doubled"
keeper=$(python3 -c '
import json, re, sys
for line in open(sys.argv[1]):
    m = re.search(r"keeper pid (\d+)", json.loads(line)["msg"])
    if m: print(m.group(1)); break' "$DAEMON_LOG")
victim=$(ps -o pid= --ppid "$DAEMON_PID" | tr -d ' ' | grep -vx "$keeper" | head -n 1)
[ -n "$victim" ] || fail "no worker process found"
before=$(total "$T/h/m2.body" p11escrow_requests_total)
kill -KILL "$victim"
for i in $(seq 50); do
    grep -q '"msg":"worker [01] restarted' "$DAEMON_LOG" && break
    sleep 0.2
done
grep -q '"msg":"worker [01] restarted' "$DAEMON_LOG" || fail "the killed worker was not forked again"
[ "$(scrape m3)" = 200 ] || fail "scrape after the restart"
# Only m2 itself since.
[ "$(total "$T/h/m3.body" p11escrow_requests_total)" = $((before + 1)) ] ||
    fail "requests after a worker restart: $(total "$T/h/m3.body" p11escrow_requests_total), expected $((before + 1))"

note "/metrics by client certificate: unbound 401, a certificate manager's 403, an auditor's 200"
[ "$(get mc-unbound /metrics "${CC[@]}")" = 401 ] || fail "an unbound client certificate read /metrics"
P11ESCROW_NEW_PASSWORD=cm-password-obs-0001 as admin 0 account add cm --role cert-manager
P11ESCROW_NEW_PASSWORD=auditor-password-obs-0001 as admin 0 account add audrey --role auditor
as admin 0 account cert add cm --cert "$T/client.pem"
[ "$(get mc-cm /metrics "${CC[@]}")" = 403 ] || fail "a certificate manager's certificate read /metrics"
fp=$(openssl x509 -in "$T/client.pem" -noout -fingerprint -sha256 | cut -d= -f2)
as admin 0 account cert remove cm --sha256 "$fp"
as admin 0 account cert add audrey --cert "$T/client.pem"
[ "$(get mc-audrey /metrics "${CC[@]}")" = 200 ] || fail "an auditor's certificate: $(cat "$T/h/mc-audrey.body")"
python3 "$T/promparse.py" "$T/h/mc-audrey.body" >"$T/out" 2>&1 || fail "the exposition (certificate)"

note "/readyz: 200; PostgreSQL down: 503 naming the database, /healthz 200; up again: 200"
[ "$(get r0 /readyz)" = 200 ] || fail "/readyz: $(cat "$T/h/r0.body")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d=={"status":"ready","checks":{"database":"ok","schema":"ok","ca_token":"ok"}}, d' \
    "$T/h/r0.body" || fail "/readyz body: $(cat "$T/h/r0.body")"
"$SRC/tests/harness/pg-cluster" down "$T/pg" >"$T/out" 2>&1 || fail "pg-cluster down"
for i in 1 2 3 4; do # both workers, whichever takes each request
    [ "$(get "r-down$i" /readyz)" = 503 ] || fail "/readyz with the database down: $(cat "$T/h/r-down$i.body")"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["status"]=="not ready" and d["checks"]["database"]=="failed" and d["checks"]["ca_token"]=="ok", d' \
        "$T/h/r-down$i.body" || fail "/readyz 503 body: $(cat "$T/h/r-down$i.body")"
    [ "$(get "h-down$i" /healthz)" = 200 ] || fail "/healthz with the database down: $(cat "$T/h/h-down$i.body")"
done
sleep 5.2 # past the counts a worker read before
[ "$(scrape m-down)" = 200 ] || fail "/metrics with the database down (token auth needs no database)"
[ "$(value "$T/h/m-down.body" p11escrow_database_counts_up)" = 0 ] || fail "counts_up not 0 with the database down"
python3 "$T/promparse.py" "$T/h/m-down.body" >"$T/out" 2>&1 || fail "the exposition without the database"
"$SRC/tests/harness/pg-cluster" up "$T/pg" >"$T/out" 2>&1 || fail "pg-cluster up"
for i in 1 2 3 4; do
    [ "$(get "r-up$i" /readyz)" = 200 ] || fail "/readyz after the database came back: $(cat "$T/h/r-up$i.body")"
done
note "/readyz: a schema newer than this program is 503 naming the schema"
psql_val "INSERT INTO p11escrow_schema (version, name) VALUES ($SCHEMA_VERSION + 1, 'future')" >/dev/null
[ "$(get r-schema /readyz)" = 503 ] || fail "/readyz with a newer schema: $(cat "$T/h/r-schema.body")"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["checks"]=={"database":"ok","schema":"failed","ca_token":"ok"}, d' \
    "$T/h/r-schema.body" || fail "/readyz schema body: $(cat "$T/h/r-schema.body")"
psql_val "DELETE FROM p11escrow_schema WHERE name = 'future'" >/dev/null
[ "$(get r-schema-ok /readyz)" = 200 ] || fail "/readyz after the schema is current again"

note "/readyz: the keeper (CA token) killed: 503 naming the token until the new keeper is logged in"
kill -KILL "$keeper"
seen=0
for i in $(seq 40); do
    code=$(get "r-keeper$i" /readyz)
    if [ "$code" = 503 ]; then
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["checks"]=={"database":"ok","schema":"ok","ca_token":"failed"}, d' \
            "$T/h/r-keeper$i.body" || fail "/readyz without a keeper: $(cat "$T/h/r-keeper$i.body")"
        seen=1
    elif [ "$code" = 200 ] && ((seen)); then
        break
    fi
    sleep 0.25
done
((seen)) || fail "/readyz never said the CA token was unavailable"
[ "$code" = 200 ] || fail "/readyz not 200 again after the keeper's restart: $code"

stop_daemon

note "metrics_token_file: a token under 16 characters stops --check and the start (exit 3)"
( umask 077; printf 'short-token\n' >"$T/short.token" )
for mode in --check ""; do
    rc=0
    # shellcheck disable=SC2086 # $mode: one option or none
    P11ESCROW_METRICS_TOKEN_FILE=$T/short.token timeout 60 "$P11ESCROWD_BIN" --config "$DAEMON_CONF" $mode \
        >"$T/out" 2>&1 || rc=$?
    [ "$rc" = 3 ] || fail "a short metrics token: p11escrowd $mode exited $rc, expected 3"
    assert_out "shorter than 16 characters"
    assert_not_out "short-token"
done

note "the log: every line JSON, one request line per request with the client's X-Request-Id, no secret"
python3 - "$DAEMON_LOG" "$T/h" "$T/ids" <<'PY' || fail "the JSON log"
import glob, json, re, sys
log, hdir, idfile = sys.argv[1], sys.argv[2], sys.argv[3]
lines = open(log, encoding='utf-8').read().splitlines()
objs = []
for i, line in enumerate(lines, 1):
    try:
        o = json.loads(line)
    except ValueError:
        sys.exit(f'line {i} is not JSON: {line!r}')
    if not isinstance(o, dict) or not {'ts', 'level', 'msg'} <= o.keys():
        sys.exit(f'line {i} lacks ts, level or msg: {line!r}')
    if not re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z', o['ts']):
        sys.exit(f'line {i}: bad ts {o["ts"]!r}')
    objs.append(o)
reqs = [o for o in objs if o['msg'] == 'request']
by_id = {}
for o in reqs:
    for k in ('req', 'method', 'path', 'status', 'bytes', 'ms', 'worker'):
        if k not in o:
            sys.exit(f'request line without {k}: {o}')
    if o['req'] in by_id:
        sys.exit(f'two request lines for {o["req"]}')
    by_id[o['req']] = o
ids = []
for hdr in sorted(glob.glob(hdir + '/*.hdr')):
    got = [l.split(':', 1)[1].strip() for l in open(hdr, encoding='latin-1') if l.lower().startswith('x-request-id:')]
    if len(got) != 1 or not re.fullmatch(r'[0-9a-f]{16}', got[0]):
        sys.exit(f'{hdr}: not one X-Request-Id: {got}')
    ids.append((hdr, got[0]))
ids += [('serverkeygen', l.strip()) for l in open(idfile) if l.strip()]
if len(ids) < 30:
    sys.exit(f'only {len(ids)} requests seen by the client')
for where, rid in ids:
    o = by_id.get(rid)
    if o is None:
        sys.exit(f'no request line for {rid} ({where})')
    status = int(open(where).readline().split()[1]) if where.endswith('.hdr') else 200
    if o['status'] != status:
        sys.exit(f'{rid}: logged status {o["status"]}, the client saw {status}')
kg = [by_id[r] for _, r in ids if by_id[r]['path'] == '/.well-known/est/serverkeygen']
if len(kg) != 2 or any('client_cert_subject_hash' not in o or o['bytes'] <= 0 or
                       not o.get('actor', '').startswith('est:cert:') for o in kg):
    sys.exit(f'serverkeygen lines lack the client certificate hash or bytes: {kg}')
ok = [by_id[r] for w, r in ids if w.endswith('login-ok.hdr')]
if len(ok) != 1 or ok[0].get('actor') != 'admin':
    sys.exit(f'the API request line lacks actor admin: {ok}')
aud = [by_id[r] for w, r in ids if w.endswith('mc-audrey.hdr')]
if len(aud) != 1 or aud[0].get('actor') != 'audrey' or 'client_cert_subject_hash' not in aud[0]:
    sys.exit(f'the certificate scrape line lacks actor audrey: {aud}')
if not any(o['level'] == 'warn' and o.get('req') for o in objs):
    sys.exit('no warn line carrying its request id (the /readyz refusals)')
print(f'{len(objs)} lines, {len(reqs)} request lines')
PY
for secret in "$ADMIN_PW" cm-password-obs-0001 auditor-password-obs-0001 wrong-password-obs "$METRICS_TOKEN" not-the-token-at-all "$OTP_PW" "$P11ESCROW_USER_PIN"; do
    ! grep -qF -- "$secret" "$DAEMON_LOG" || fail "a secret is in the log"
done
exit 0
