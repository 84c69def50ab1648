#!/bin/bash
# Faults under load, in every run: p11escrowd serving /serverkeygen to four
# parallel clients while (1) PostgreSQL stops and starts again (a clean
# stop, then a crash), (2) the CA token's p11-kit server dies and comes back,
# and (3) the database's disk is full.  During an outage every request
# fails cleanly and at once (503 with Retry-After naming the database or the
# HSM, or a clear 500 for a full disk; never a hang, never a certificate
# without its archive record); afterwards the service reconnects by itself;
# every 200 is exactly one certificate row and one archive record, nothing
# lost, nothing duplicated.
. "$(dirname "$0")/lib.sh"

CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
PGC=$SRC/tests/harness/pg-cluster
provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Fault Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001

# The CA token only through p11-kit server, as a network HSM would be reached.
P11PID=$T/p11kit.pid
_server_pidfiles+=("$P11PID")
p11kit_start() {
    "$SRC/hsm/export-tokens" --dir "$T/hsm" --socket "$T/p11kit.sock" --pidfile "$P11PID" 'pkcs11:token=CA' \
        >"$T/export.log" 2>&1 || { cat "$T/export.log" >&2; fail "p11-kit server did not start"; }
}
p11kit_start
export P11_KIT_SERVER_ADDRESS=unix:path=$T/p11kit.sock
TIMEOUT=10
start_daemon 2 "module = $CLIENT" "request_timeout = $TIMEOUT"

note "a client certificate (signing profile) for the load"
otp=$("$ESC" enroll-password create --subject 'CN=Load,O=Example' --profile signing --user admin) ||
    fail "enroll-password create"
otp=$(awk '$1 == "name:" {n = $2} $1 == "password:" {p = $2} END {print n ":" p}' <<<"$otp")
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/client.key" \
    -subj '/CN=Load/O=Example' -outform DER 2>/dev/null | openssl base64 >"$T/sign.b64"
curl -sS --fail --cacert "$SERVER_CA" --user "$otp" -H 'Content-Type: application/pkcs10' \
    --data-binary @"$T/sign.b64" "$URL/.well-known/est/signing/simpleenroll" -o "$T/sign.resp" ||
    fail "signing enrollment"
openssl base64 -d -in "$T/sign.resp" | openssl pkcs7 -inform DER -print_certs -out "$T/client.pem"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
    -subj '/CN=x' -outform DER 2>/dev/null | openssl base64 >"$T/req.b64"

# ---- load: four clients posting /serverkeygen in a loop -----------------------------------
# Each request appends "ID START END STATUS" to $LD/codes (times in ms, curl's
# own failure as 'curlN'); its body and headers stay in $LD/ID.{b,h}.
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
one_request() { # ID
    local t0 code rc=0
    t0=$(now_ms)
    code=$(curl -sS --max-time $((TIMEOUT + 5)) --cacert "$SERVER_CA" --cert "$T/client.pem" \
        --key "$T/client.key" -H 'Content-Type: application/pkcs10' --data-binary @"$T/req.b64" \
        -D "$LD/$1.h" -o "$LD/$1.b" -w '%{http_code}' "$URL/.well-known/est/serverkeygen" 2>>"$LD/curl.err") || rc=$?
    [ "$rc" = 0 ] || code=curl$rc
    echo "$1 $t0 $(now_ms) $code" >>"$LD/codes"
}
client_loop() {
    local n=0
    while [ ! -e "$LD/stop" ]; do
        n=$((n + 1))
        one_request "$1.$n"
    done
}
_loaders=()
# The clients stop first, at any exit (each ends within its --max-time).
stop_loaders_then_cleanup() {
    local rc=$? p
    set +e
    [ -n "${LD:-}" ] && [ -d "$LD" ] && touch "$LD/stop"
    for p in "${_loaders[@]}"; do wait "$p" 2>/dev/null; done
    (exit "$rc")    # cleanup takes the test's status from $?
    cleanup
}
trap stop_loaders_then_cleanup EXIT
load_start() { # NAME
    LD=$T/load.$1
    mkdir "$LD"
    : >"$LD/codes"
    local c
    for c in 1 2 3 4; do client_loop "$c" & _loaders+=($!); done
}
load_stop() {
    local p
    touch "$LD/stop"
    for p in "${_loaders[@]}"; do wait "$p" || true; done
    _loaders=()
}
# count STATUS [AFTER_MS]: responses with STATUS that started after AFTER_MS
count() { awk -v s="$1" -v a="${2:-0}" '$4 == s && $2 > a' "$LD/codes" | wc -l; }
# wait_for STATUS N [AFTER_MS]: until N such responses (20 s at most)
wait_for() {
    local i
    for i in $(seq 200); do
        [ "$(count "$1" "${3:-0}")" -ge "$2" ] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DAEMON_LOG" >&2; fail "p11escrowd died"; }
        sleep 0.1
    done
    grep 'level=error' "$DAEMON_LOG" | tail -3 >&2
    fail "no $2 responses with status $1 within 20 s: $(awk '{print $4}' "$LD/codes" | sort | uniq -c | tr '\n' ' ')"
}
# first_ok_after MS: ms from MS to the end of the first 200 that started after it
first_ok_after() { awk -v a="$1" '$4 == 200 && $2 >= a { if (!m || $3 < m) m = $3 } END { print (m ? m - a : "?") }' "$LD/codes"; }

# Every response: 200 or 503 (with Retry-After and a reason naming what is down), never
# curl's own failure (a hang, a reset); every 200 a certificate recorded with its archive
# record, each once.  The serials of the 200s go to $LD/serials.
check_load() { # REASON_PATTERN_FOR_503 [EXTRA_ALLOWED_STATUS]
    local pat=$1 extra=${2:-} bad
    bad=$(awk -v x="$extra" '$4 != 200 && $4 != 503 && $4 != x' "$LD/codes")
    [ -z "$bad" ] || { grep -E "level=(error|warn)" "$DAEMON_LOG" | grep -v "unavailable: cannot connect" | head -8 >&2
        fail "responses other than 200/503${extra:+/$extra}: $(head -5 <<<"$bad") $(head -c 300 "$LD/curl.err")"; }
    awk '{ if ($3 - $2 > ('"$TIMEOUT"' + 1) * 1000) print }' "$LD/codes" | grep_q . &&
        fail "a request took longer than request_timeout: $(awk '{print $3 - $2}' "$LD/codes" | sort -n | tail -1) ms"
    for f in $(awk '$4 == 503 {print $1}' "$LD/codes"); do
        grep -qi '^Retry-After: 5' "$LD/$f.h" || fail "503 without Retry-After ($f)"
        grep -qiE "$pat" "$LD/$f.b" || fail "503 without the reason '$pat' ($f): $(cat "$LD/$f.b")"
    done
    awk '$4 == 200 {print $1}' "$LD/codes" | python3 -c '
import base64, re, sys
def tlv(b, i):
    t, l = b[i], b[i + 1]; i += 2
    if l & 0x80:
        n = l & 0x7f; l = int.from_bytes(b[i:i + n], "big"); i += n
    return t, i, i + l
d = sys.argv[1]
for f in sys.stdin.read().split():
    h = open(f"{d}/{f}.h", encoding="latin-1").read()
    m = re.search(r"boundary=([^;\s]+)", h, re.I)
    body = open(f"{d}/{f}.b", "rb").read().replace(b"\r", b"")
    parts = [p for p in body.split(b"--" + m.group(1).encode()) if b"certs-only" in p]
    der = base64.b64decode(parts[0].split(b"\n\n", 1)[1])
    _, i, _ = tlv(der, 0)            # ContentInfo
    _, i, _ = tlv(der, i); i = _     # contentType OID
    _, i, _ = tlv(der, i)            # [0]
    _, i, _ = tlv(der, i)            # SignedData
    for _k in range(3):              # version, digestAlgorithms, encapContentInfo
        _, _s, i = tlv(der, i)
    t, i, _ = tlv(der, i)            # [0] certificates
    assert t == 0xa0, "no certificates"
    _, i, _ = tlv(der, i)            # Certificate
    _, i, _ = tlv(der, i)            # TBSCertificate
    t, _s, e = tlv(der, i)
    if t == 0xa0: i = e              # [0] version
    _, s, e = tlv(der, i)            # serialNumber
    print(format(int.from_bytes(der[s:e], "big"), "x"))
' "$LD" >"$LD/serials" || fail "a 200 response is not a serverkeygen response"
    [ "$(sort "$LD/serials" | uniq -d | wc -l)" = 0 ] || fail "a serial was returned twice"
    local ok n
    ok=$(wc -l <"$LD/serials")
    n=$(psql_val "SELECT count(*) FROM certificates c JOIN archive_records a ON a.cert_serial = c.serial
                  WHERE c.serial = ANY (string_to_array('$(paste -sd, "$LD/serials")', ','))")
    [ "$n" = "$ok" ] || fail "$LD: $ok certificates returned, $n of them recorded with their archive record"
    check_db
}
# The database as a whole: every encryption certificate has its archive record and every
# record its certificate; returned certificates are all the rows there are.
rows() { psql_val "SELECT (SELECT count(*) FROM certificates WHERE profile = 'encryption') || ' ' ||
                          (SELECT count(*) FROM archive_records)"; }
check_db() {
    [ "$(psql_val "SELECT count(*) FROM certificates c LEFT JOIN archive_records a ON a.cert_serial = c.serial
                   WHERE c.profile = 'encryption' AND a.id IS NULL")" = 0 ] || fail "a certificate without its archive record"
    [ "$(psql_val "SELECT count(*) FROM archive_records a LEFT JOIN certificates c ON c.serial = a.cert_serial
                   WHERE c.serial IS NULL")" = 0 ] || fail "an archive record without its certificate"
}
# expect_rows BEFORE: the rows grew by exactly the 200s of this load
expect_rows() {
    local ok
    ok=$(count 200)
    set -- $1
    [ "$(rows)" = "$(($1 + ok)) $(($2 + ok))" ] ||
        fail "$ok enrollments answered 200, rows went from '$1 $2' to '$(rows)'"
}
summary() { awk '{print $4}' "$LD/codes" | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s = ", "}'; }

# ---- 1. PostgreSQL stops and starts again under load ----------------------------------------
for mode in fast immediate; do
    note "PostgreSQL stopped ($mode) and started again under load"
    before=$(rows)
    load_start "pg-$mode"
    wait_for 200 8
    t_down=$(now_ms)
    "$PGC" down "$T/pg" --mode "$mode" >"$T/out" 2>&1 || fail "pg-cluster down"
    t_stopped=$(now_ms)
    wait_for 503 8 "$t_stopped"
    sleep 1
    t_up=$(now_ms)
    "$PGC" up "$T/pg" >"$T/out" 2>&1 || fail "pg-cluster up"
    t_ready=$(now_ms)
    wait_for 200 8 "$t_up"
    load_stop
    check_load 'database'
    expect_rows "$before"
    note "  $(summary); PostgreSQL started in $((t_ready - t_up)) ms, the first 200 ended $(first_ok_after "$t_up") ms after the start began"
    # While the server was down (after it had stopped, before it was started) nothing succeeded.
    [ "$(awk -v a="$t_stopped" -v b="$t_up" '$4 == 200 && $2 > a && $3 < b' "$LD/codes" | wc -l)" = 0 ] ||
        fail "a request succeeded while PostgreSQL was down"
done
grep -q 'unavailable: cannot connect to the database' "$DAEMON_LOG" || fail "no log line names the database"
grep -q 'reconnected: database' "$DAEMON_LOG" || fail "no reconnection logged"

# ---- 2. The CA token vanishes under load: its p11-kit server dies, then comes back -----------
# A client on one keep-alive connection: its worker is busy, the other idle (it must not keep
# the dead module loaded for the busy one).
cat >"$T/keepalive.py" <<'PY'
import http.client, os, ssl, sys, time
host, port, ca, cert, key, body, d = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
data = open(body, "rb").read()
conn, n = None, 0
with open(f"{d}/codes", "a", buffering=1) as log:
    while not os.path.exists(f"{d}/stop"):
        n += 1
        t0 = time.time_ns() // 1000000
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=15)
            conn.request("POST", "/.well-known/est/serverkeygen", data, {"Content-Type": "application/pkcs10"})
            r = conn.getresponse()
            with open(f"{d}/k.{n}.b", "wb") as f:
                f.write(r.read())
            with open(f"{d}/k.{n}.h", "w") as f:
                f.write(f"HTTP/1.1 {r.status}\n" + "".join(f"{k}: {v}\n" for k, v in r.getheaders()))
            code = str(r.status)
        except Exception as e:
            code, conn = "exc-" + type(e).__name__, None
        log.write(f"k.{n} {t0} {time.time_ns() // 1000000} {code}\n")
        time.sleep(0.05)
PY
keepalive_start() {
    local hp=${URL#https://}
    LD=$T/load.keepalive
    mkdir "$LD"
    : >"$LD/codes"
    # One request at a time over one connection: its host, port, trust, client certificate, body.
    python3 "$T/keepalive.py" "${hp%:*}" "${hp##*:}" "$SERVER_CA" "$T/client.pem" "$T/client.key" \
        "$T/req.b64" "$LD" &
    _loaders+=($!)
}

# hsm_outage: the server and the p11-kit-remote it runs for each connection are killed (the
# whole "HSM" goes; the server stopped first, so it forks none while they are listed), then
# the server is started again on the same socket.
hsm_outage() {
    local pid kids p
    wait_for 200 5
    pid=$(cat "$P11PID")
    kill -STOP "$pid"
    kids=$(ps -o pid= --ppid "$pid" || true)
    [ -n "$kids" ] || fail "the p11-kit server serves no connection of p11escrowd"
    kill -KILL "$pid" $kids
    for p in $pid $kids; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
    rm -f "$T/p11kit.sock" "$P11PID"
    t_stopped=$(now_ms)
    wait_for 503 5 "$t_stopped"
    sleep 1
    kill -0 "$DAEMON_PID" || fail "p11escrowd died with the token"
    t_up=$(now_ms)
    p11kit_start
    t_ready=$(now_ms)
    wait_for 200 5 "$t_up"
    load_stop
    # Mid-request when the token went, a request may fail with another status than 503:
    # never a 200 while it was gone.
    check_load 'HSM'
    [ "$(awk -v a="$t_stopped" -v b="$t_up" '$4 == 200 && $2 > a && $3 < b' "$LD/codes" | wc -l)" = 0 ] ||
        fail "a request succeeded while the token was gone"
    note "  $(summary); server back in $((t_ready - t_up)) ms, the first 200 ended $(first_ok_after "$t_up") ms after its start began"
}

note "the CA token's p11-kit server killed by its PID under load (4 clients), then started again"
before=$(rows)
load_start hsm
hsm_outage
expect_rows "$before"
note "the same with one client on one keep-alive connection"
before=$(rows)
keepalive_start
hsm_outage
expect_rows "$before"
# The keeper finds the token gone and is forked again (a fresh C_Initialize); every worker gets its new connection.
grep -q "the CA token is lost" "$DAEMON_LOG" || fail "the keeper did not notice the token was gone"
grep -q "keeper restarted" "$DAEMON_LOG" || fail "the keeper was not restarted"
grep -q "reconnected: CA token" "$DAEMON_LOG" || fail "no reconnection to the token logged"

# ---- 3. The database's disk is full ----------------------------------------------------------
note "the disk holding the certificates and archive records is full"
if ((EUID != 0)); then
    note "  skipped: mounting the small disk (tmpfs) needs root"
    stop_daemon
    exit 0
fi
# A tablespace on a small tmpfs, owned by the cluster's system user, for the two tables.
pguser=$(stat -c %U "$T/pg/data")
mkdir "$T/full"
mount -t tmpfs -o size=4m,mode=0700,uid="$(id -u "$pguser")" tmpfs "$T/full" || fail "cannot mount a tmpfs"
_mounts+=("$T/full")
mkdir "$T/full/ts"
chown "$pguser" "$T/full/ts"
psql "$DB" -Xq -v ON_ERROR_STOP=1 -c "CREATE TABLESPACE full_disk LOCATION '$T/full/ts'" \
    -c "ALTER TABLE certificates SET TABLESPACE full_disk" -c "ALTER TABLE archive_records SET TABLESPACE full_disk" \
    >"$T/out" 2>&1 || fail "cannot move the tables to the small disk: $(cat "$T/out")"
dd if=/dev/zero of="$T/full/filler" bs=64k 2>/dev/null || true
[ "$(df --output=avail "$T/full" | tail -1)" -lt 64 ] || fail "the disk did not fill"
before=$(rows)
LD=$T/load.full
mkdir "$LD"
: >"$LD/codes"
# One client, until the pages the tables still had are used up.
for i in $(seq 60); do
    one_request "f.$i"
    [ "$(tail -1 "$LD/codes" | awk '{print $4}')" = 200 ] || break
done
code=$(tail -1 "$LD/codes" | awk '{print $4}')
[ "$code" = 500 ] || [ "$code" = 503 ] || fail "a full disk answered $code ($(summary))"
grep -q 'No space left on device' "$DAEMON_LOG" || fail "the log does not say the disk is full"
grep 'No space left on device' "$DAEMON_LOG" | head -1 | cut -c1-400 | sed 's/^/#   log: /'
check_load 'database' 500
expect_rows "$before"
curl -sf --cacert "$SERVER_CA" "$URL/healthz" >/dev/null || fail "the service stopped serving"
note "  $(summary) until the disk was full; then space again"
rm -f "$T/full/filler"
before=$(rows)
load_start after-full
wait_for 200 4
load_stop
check_load 'database'
expect_rows "$before"

stop_daemon
check_db
run_esc 0 audit verify
exit 0
