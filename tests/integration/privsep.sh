#!/bin/bash
# Privilege separation (issue 12): p11escrowd is a supervisor, one keeper
# process (the only one with the CA PIN and the PKCS#11 module) and worker
# processes (the network).  Under EST load: the PIN is in no worker's memory
# (but in the keeper's: the scanner's negative control), SoftHSM2 is mapped
# in the keeper only, workers run as the configured user with no_new_privs;
# the keeper killed by its PID gives 503s with Retry-After, then service
# resumes; a worker killed loses only its connections and is restarted;
# every 200 has its certificate and archive record; SIGTERM ends with the
# keeper's last checkpoint.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Privsep Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001
PIN=$P11ESCROW_USER_PIN
# The daemon must not inherit the PINs through this script's environment (the scan would find them there).
run_esc 0 service-cert --cert "$T/tls.pem" --key "$T/tls.key" --name 127.0.0.1 --name localhost \
    --pin-file "$PIN_FILE" --user admin --password-file "$T/admin.pw"
unset P11ESCROW_USER_PIN P11ESCROW_SO_PIN
TIMEOUT=10
WUSER=root
[ "$(id -u)" = 0 ] && WUSER=nobody
start_daemon 2 "user = $WUSER" "request_timeout = $TIMEOUT" "checkpoint_events = 5"

# children: the daemon's child processes; keeper: the one with the CA token's module mapped
children() { ps -o pid= --ppid "$DAEMON_PID" | tr -d ' '; }
maps_module() { grep -q libsofthsm2 "/proc/$1/maps" 2>/dev/null; }
keeper_pid() { local p; for p in $(children); do maps_module "$p" && { echo "$p"; return; }; done; }
worker_pids() { local p; for p in $(children); do maps_module "$p" || echo "$p"; done; }

note "one keeper, two workers; the module in the keeper only"
KEEPER=$(keeper_pid)
[ -n "$KEEPER" ] || fail "no child maps libsofthsm2.so (no keeper?)"
[ "$(children | wc -l)" = 3 ] || fail "children: $(children | tr '\n' ' ')"
[ "$(worker_pids | wc -l)" = 2 ] || fail "not two workers: $(worker_pids | tr '\n' ' ')"
grep -q "keeper pid $KEEPER" "$DAEMON_LOG" || fail "the log does not name the keeper's pid $KEEPER"
maps_module "$DAEMON_PID" && fail "the supervisor maps the module"
for w in $(worker_pids); do
    # The module is never loaded (libp11 itself is linked into the one p11escrowd binary, unused here).
    grep -q 'libsofthsm2\|p11-kit-client\|/pkcs11/' "/proc/$w/maps" && fail "worker $w maps a PKCS#11 module"
    grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$w/status" || fail "worker $w has no no_new_privs"
    if [ "$WUSER" = nobody ]; then
        grep -qE "^Uid:[[:space:]]+$(id -u nobody)[[:space:]]+$(id -u nobody)[[:space:]]+$(id -u nobody)" "/proc/$w/status" ||
            fail "worker $w does not run as nobody: $(grep ^Uid "/proc/$w/status")"
    fi
done

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
note "and one-time passwords for /serverkeygen"
for i in $(seq 6); do
    "$ESC" enroll-password create --subject "CN=Otp $i,O=Example" --user admin >"$T/otp.$i" || fail "otp $i"
    awk '$1 == "name:" {n = $2} $1 == "password:" {p = $2} END {print n ":" p}' "$T/otp.$i" >"$T/otp.$i.cred"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
        -subj "/CN=Otp $i/O=Example" -outform DER 2>/dev/null | openssl base64 >"$T/otp.$i.b64"
done

# ---- load: client-certificate /serverkeygen in loops, as in faults.sh ----------------------
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
client_loop() { local n=0; while [ ! -e "$LD/stop" ]; do n=$((n + 1)); one_request "$1.$n"; done; }
_loaders=()
stop_loaders_then_cleanup() {
    local rc=$? p
    set +e
    [ -n "${LD:-}" ] && [ -d "$LD" ] && touch "$LD/stop"
    for p in "${_loaders[@]}"; do wait "$p" 2>/dev/null; done
    (exit "$rc")
    cleanup
}
trap stop_loaders_then_cleanup EXIT
load_start() { # NAME
    LD=$T/load.$1
    mkdir "$LD"
    : >"$LD/codes"
    local c
    for c in 1 2 3; do client_loop "$c" & _loaders+=($!); done
}
load_stop() { local p; touch "$LD/stop"; for p in "${_loaders[@]}"; do wait "$p" || true; done; _loaders=(); }
count() { awk -v s="$1" -v a="${2:-0}" '$4 == s && $2 > a' "$LD/codes" | wc -l; }
wait_for() { # STATUS N [AFTER_MS]
    local i
    for i in $(seq 300); do
        [ "$(count "$1" "${3:-0}")" -ge "$2" ] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DAEMON_LOG" >&2; fail "p11escrowd died"; }
        sleep 0.1
    done
    fail "no $2 responses with status $1 within 30 s: $(awk '{print $4}' "$LD/codes" | sort | uniq -c | tr '\n' ' ')"
}
summary() { awk '{print $4}' "$LD/codes" | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s = ", "}'; }
# Every 200 is a certificate recorded with its archive record; every 503 has Retry-After.
check_load() { # ALLOWED_STATUS_REGEX
    local bad serials n
    bad=$(awk -v x="$1" '$4 != 200 && $4 !~ x' "$LD/codes")
    [ -z "$bad" ] || fail "unexpected responses: $(head -5 <<<"$bad") $(head -c 300 "$LD/curl.err")"
    for f in $(awk '$4 == 503 {print $1}' "$LD/codes"); do
        grep -qi '^Retry-After: 5' "$LD/$f.h" || fail "503 without Retry-After ($f)"
    done
    serials=$(for f in $(awk '$4 == 200 {print $1}' "$LD/codes"); do
        tr -d '\r' <"$LD/$f.b" | awk '/certs-only/ {c = 1} c && /^$/ {b = 1; next} b && /^--/ {exit} b {print}' |
            base64 -d | openssl pkcs7 -inform DER -print_certs 2>/dev/null | openssl x509 -noout -serial |
            sed 's/serial=//' | tr 'A-F' 'a-f' | sed 's/^0*//'
    done)
    [ "$(wc -w <<<"$serials")" = "$(count 200)" ] || fail "a 200 without its certificate"
    n=$(psql_val "SELECT count(*) FROM certificates c JOIN archive_records a ON a.cert_serial = c.serial
                  WHERE ltrim(lower(c.serial), '0') = ANY (string_to_array('$(tr '\n' ',' <<<"$serials" | sed 's/,$//')', ','))")
    [ "$n" = "$(count 200)" ] || fail "$(count 200) certificates returned, $n recorded with their archive record"
}

# scan PID NEEDLE: is NEEDLE anywhere in PID's readable memory?  (root reads even non-dumpable processes)
# Exit 0 found, 1 not found, 2 the scan itself failed (then no answer may be taken as "not there").
# Regions are read in 16 MiB pieces that overlap by the needle's length; mappings over 4 GiB are
# skipped: in a sanitizer build they are AddressSanitizer's shadow (reserved, never written by us).
scan() {
    python3 - "$1" "$2" <<'PY'
import sys
pid, needle = sys.argv[1], sys.argv[2].encode()
STEP, SKIP = 16 << 20, 4 << 30
scanned = 0
try:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            f = line.split()
            if "r" not in f[1] or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            a, b = (int(x, 16) for x in f[0].split("-"))
            if b - a > SKIP:
                continue
            pos, tail = a, b""
            while pos < b:
                try:
                    mem.seek(pos)
                    chunk = mem.read(min(STEP, b - pos))
                except (OSError, ValueError, OverflowError):
                    break
                if not chunk:
                    break
                scanned += len(chunk)
                if needle in tail + chunk:
                    print(line.strip())
                    sys.exit(0)
                tail = chunk[-(len(needle) - 1):] if len(needle) > 1 else b""
                pos += len(chunk)
except OSError as e:
    print(f"scan failed: {e}", file=sys.stderr)
    sys.exit(2)
sys.exit(1 if scanned > 0 else 2)
PY
}
# absent PID NEEDLE WHAT: fail unless the scan ran and did not find NEEDLE.
absent() {
    local rc=0
    scan "$1" "$2" >"$T/out" || rc=$?
    [ "$rc" = 1 ] || fail "$3 (scan exit $rc)"
}

note "the PIN in no worker's memory under load (and in the keeper's: the scanner works)"
if [ "$(id -u)" != 0 ]; then
    note "  skipped: reading other processes' memory needs root"
else
    load_start scan
    wait_for 200 10
    otp_pids=()
    for i in $(seq 6); do
        curl -sS --cacert "$SERVER_CA" --user "$(cat "$T/otp.$i.cred")" -H 'Content-Type: application/pkcs10' \
            --data-binary @"$T/otp.$i.b64" -o /dev/null -w '%{http_code}\n' \
            "$URL/.well-known/est/serverkeygen" >>"$T/otp.codes" &
        otp_pids+=($!)
    done
    wait_for 200 20
    for w in $(worker_pids); do
        absent "$w" "$PIN" "the CA PIN is in worker $w's memory"
        absent "$w" "test-so-pin-0815" "the SO PIN is in worker $w's memory"
    done
    scan "$KEEPER" "$PIN" >"$T/out" || fail "the scanner does not find the PIN in the keeper either"
    absent "$DAEMON_PID" "$PIN" "the CA PIN is in the supervisor's memory"
    for p in "${otp_pids[@]}"; do wait "$p" || true; done
    [ "$(grep -c '^200$' "$T/otp.codes")" = 6 ] || fail "OTP enrollments: $(sort "$T/otp.codes" | uniq -c)"
    load_stop
    check_load '^$'
    note "  $(summary); 6 one-time-password enrollments"
fi

note "the keeper killed by its PID under load: 503s with Retry-After, then service again"
load_start keeper
wait_for 200 5
KEEPER=$(keeper_pid)
kill -KILL "$KEEPER"
t_killed=$(now_ms)
wait_for 503 1 "$t_killed"
wait_for 200 5 "$t_killed"
load_stop
check_load '^503$'
NEWKEEPER=$(keeper_pid)
[ -n "$NEWKEEPER" ] && [ "$NEWKEEPER" != "$KEEPER" ] || fail "no new keeper"
grep -q "the keeper (pid $KEEPER) was killed by signal 9" "$DAEMON_LOG" || fail "the keeper's death is not logged"
grep -q "keeper restarted" "$DAEMON_LOG" || fail "the keeper's restart is not logged"
[ "$(grep -c 'reconnected: CA token (a new keeper process)' "$DAEMON_LOG")" -ge 2 ] || fail "not every worker reconnected"
note "  $(summary)"

note "a worker killed: its connections fail, the other one serves on, it is restarted"
load_start worker
wait_for 200 5
set -- $(worker_pids)
VICTIM=$1 SURVIVOR=$2
kill -KILL "$VICTIM"
t_killed=$(now_ms)
wait_for 200 10 "$t_killed"
for i in $(seq 50); do [ "$(worker_pids | wc -l)" = 2 ] && break; sleep 0.1; done
[ "$(worker_pids | wc -l)" = 2 ] || fail "the worker was not restarted"
now=" $(worker_pids | tr '\n' ' ') "
[[ $now == *" $SURVIVOR "* ]] || fail "the other worker ($SURVIVOR) did not survive: now$now, killed $VICTIM"
[[ $now == *" $VICTIM "* ]] && fail "the killed worker $VICTIM is still listed"
grep -qE "worker [01] \(pid $VICTIM\) was killed by signal 9" "$DAEMON_LOG" || fail "the worker's death is not logged"
grep -qE "worker [01] restarted" "$DAEMON_LOG" || fail "the worker's restart is not logged"
wait_for 200 20 "$t_killed"
load_stop
# The killed worker's requests in flight end as curl errors (reset) or a 503; nothing else.
check_load '^(503|curl[0-9]+)$'
note "  $(summary)"

note "SIGTERM: workers drain, then the keeper signs the last checkpoint"
# One audit event after the newest checkpoint (fewer than checkpoint_events: worker 0 leaves it to the end).
"$ESC" enroll-password create --subject 'CN=Last,O=Example' --user admin >"$T/out" || fail "enroll-password create"
stop_daemon
grep -q "proc=keeper msg=\"audit checkpoint signed: events up to [0-9]* (at shutdown)\"" "$DAEMON_LOG" ||
    fail "no shutdown checkpoint by the keeper"
for p in $KEEPER $NEWKEEPER $SURVIVOR; do kill -0 "$p" 2>/dev/null && fail "process $p outlived the daemon"; done
note "ok"
