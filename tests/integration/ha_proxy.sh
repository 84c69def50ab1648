#!/bin/bash
# Two p11escrowd behind HAProxy (TCP mode: TLS passes through), sharing one
# database and the CA token through p11-kit server (docs/ha.md).  Two
# clients enroll with /serverkeygen in a loop, each enrollment retried until
# it gets a 200; one daemon is killed (SIGKILL to its supervisor, workers
# and keeper, by PID) under that load.  Every enrollment still ends in a
# 200, through the other daemon; each 200 is one certificate and one
# archive record; an extra record can only be a request in flight on the
# killed daemon that committed before its answer was sent.  Skipped where
# haproxy is missing.
. "$(dirname "$0")/lib.sh"

HAPROXY=$(command -v haproxy || true)
[ -x /usr/sbin/haproxy ] && HAPROXY=/usr/sbin/haproxy
[ -n "$HAPROXY" ] || skip "haproxy is not installed (Debian package haproxy)"
CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=HA Proxy Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001

note "the CA token through p11-kit server; two daemons on it"
_server_pidfiles+=("$T/p11kit.pid")
"$SRC/hsm/export-tokens" --dir "$T/hsm" --socket "$T/p11kit.sock" --pidfile "$T/p11kit.pid" 'pkcs11:token=CA' \
    >"$T/export.log" 2>&1 || { cat "$T/export.log" >&2; fail "p11-kit server did not start"; }
export P11_KIT_SERVER_ADDRESS=unix:path=$T/p11kit.sock
start_daemon 2 "module = $CLIENT" "checkpoint_events = 0" "checkpoint_seconds = 0"
PID1=$DAEMON_PID LOG1=$DAEMON_LOG PORT1=${URL##*:}
start_daemon 2 "module = $CLIENT" "checkpoint_events = 0" "checkpoint_seconds = 0"
LOG2=$DAEMON_LOG PORT2=${URL##*:}

note "HAProxy in front of both (TCP mode, health check GET /readyz over TLS)"
HPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$T/haproxy.cfg" <<EOF
global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
frontend est
    bind 127.0.0.1:$HPORT
    default_backend p11escrowd
backend p11escrowd
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    server a 127.0.0.1:$PORT1 check check-ssl verify none inter 500ms fall 2 rise 2
    server b 127.0.0.1:$PORT2 check check-ssl verify none inter 500ms fall 2 rise 2
EOF
"$HAPROXY" -c -f "$T/haproxy.cfg" >"$T/haproxy.log" 2>&1 || { cat "$T/haproxy.log" >&2; fail "haproxy -c"; }
"$HAPROXY" -db -f "$T/haproxy.cfg" >>"$T/haproxy.log" 2>&1 &
_daemon_pids+=("$!")
URL=https://127.0.0.1:$HPORT
for i in $(seq 100); do
    curl -sf --cacert "$SERVER_CA" "$URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf --cacert "$SERVER_CA" "$URL/healthz" >/dev/null || { cat "$T/haproxy.log" >&2; fail "HAProxy does not answer"; }

serverkeygen_client
rows() { psql_val "SELECT (SELECT count(*) FROM certificates) || ' ' || (SELECT count(*) FROM archive_records)"; }

note "two clients, each enrollment retried until it gets a 200; one daemon killed under that load"
base=$(rows)
# client N: enrollments until $T/stop exists, each tried up to 25 times, 0.2 s apart;
# "ID LAST_STATUS TRIES" per enrollment in $T/codes.N, the 200 answer in $T/r/ID.TRY.*
client() {
    local n=0 try code
    while [ ! -e "$T/stop" ]; do
        n=$((n + 1))
        for try in $(seq 25); do
            code=$(keygen "$1.$n.$try")
            printf '%s %s\n' "$1.$n.$try" "$code" >>"$T/tries.$1"
            [ "$code" = 200 ] && break
            sleep 0.2
        done
        printf '%s %s %s\n' "$1.$n" "$code" "$try" >>"$T/codes.$1"
    done
}
done_ok() { cat "$T"/codes.* 2>/dev/null | awk '$2 == 200' | wc -l; }
client 1 &
C1=$!
client 2 &
C2=$!
for i in $(seq 300); do [ "$(done_ok)" -ge 10 ] && break; sleep 0.1; done
[ "$(done_ok)" -ge 10 ] || fail "the load did not start: $(cat "$T"/tries.* | head)"
grep -q "issued serial=" "$LOG1" && grep -q "issued serial=" "$LOG2" ||
    fail "HAProxy did not use both daemons before the kill"
# Requests certainly in flight when the daemon dies: slow uploads (a CSR padded with 2,000 blank
# lines, at 500 bytes/s: about 6 s), four of them, each then retried at full speed through HAProxy.
# The first two go to daemon 1 itself, the other two through HAProxy.  Before, the CSR alone (about
# 900 bytes: two bursts of curl's rate limit, one second apart) could finish before the kill at one
# second, and through HAProxy none needs to reach daemon 1: CI saw all four answered on the first try.
openssl req -new -newkey rsa:2048 -nodes -keyout /dev/null -subj '/CN=slow' -outform DER 2>/dev/null |
    openssl base64 >"$T/slow.b64"
head -c 2000 /dev/zero | tr '\0' '\n' >>"$T/slow.b64"
# slow N URL: one slow upload to URL, then retries through HAProxy until a 200
slow() {
    local try code
    for try in $(seq 25); do
        if ((try == 1)); then
            code=$(curl -sS --max-time 30 --limit-rate 500 --cacert "$SERVER_CA" -o "$T/r/slow$1.$try.body" \
                -D "$T/r/slow$1.$try.hdr" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
                --data-binary @"$T/slow.b64" "${CC[@]}" "$2/.well-known/est/serverkeygen" 2>>"$T/curl.err") || true
        else
            code=$(keygen "slow$1.$try")
        fi
        printf '%s %s\n' "slow$1.$try" "$code" >>"$T/tries.slow$1"
        [ "$code" = 200 ] && break
        sleep 0.2
    done
    printf '%s %s %s\n' "slow$1" "$code" "$try" >>"$T/codes.slow$1"
}
slows=()
for i in 1 2; do slow "$i" "https://127.0.0.1:$PORT1" & slows+=("$!"); done
for i in 3 4; do slow "$i" "$URL" & slows+=("$!"); done
sleep 1
# The whole daemon at once, as a machine would go: supervisor, workers and keeper.
victims=$(ps -o pid= --ppid "$PID1" | tr -d ' ' | tr '\n' ' ')
kill -KILL "$PID1" $victims
at_kill=$(done_ok)
note "killed daemon 1 (pids $PID1 $victims) after $at_kill enrollments"
for i in $(seq 300); do [ "$(done_ok)" -ge $((at_kill + 10)) ] && break; sleep 0.1; done
touch "$T/stop"
wait "$C1" "$C2" "${slows[@]}"
cat "$T"/codes.* >"$T/codes"
cat "$T"/tries.* >"$T/tries"
failed=$(awk '$2 != 200' "$T/codes")
[ -z "$failed" ] || fail "enrollments that never got a 200: $failed"
total=$(wc -l <"$T/codes")
[ "$total" -ge $((at_kill + 10)) ] || fail "only $total enrollments, $at_kill before the kill"
retried=$(awk '$3 > 1' "$T/codes" | wc -l)
[ "$(cat "$T"/codes.slow* | awk '$3 > 1' | wc -l)" -ge 1 ] ||
    fail "no slow request was in flight on the killed daemon: $(cat "$T"/tries.slow*)"
note "$total enrollments, all answered 200; $retried needed a retry ($(awk '$2 != 200 {print $2}' "$T/tries" | sort | uniq -c | tr '\n' ' '))"
grep -q "issued serial=" <(tail -n +1 "$LOG2") || fail "daemon 2 issued nothing"

note "every 200 exactly once; an extra record only for a request in flight on the killed daemon"
serials=()
for id in $(awk '$2 == 200 {print $1}' "$T/tries"); do
    s=$(serial_of "$id")
    [[ $s =~ ^[0-9A-F]+$ ]] || fail "$id: no serial in the answer"
    serials+=("'$s'")
done
[ "${#serials[@]}" = "$total" ] || fail "${#serials[@]} answers with a certificate for $total enrollments"
list=$(IFS=,; echo "${serials[*]}")
bad=$(psql_val "SELECT s FROM unnest(ARRAY[$list]) s WHERE
    (SELECT count(*) FROM certificates c WHERE upper(ltrim(c.serial, '0')) = s) <> 1 OR
    (SELECT count(*) FROM archive_records a WHERE upper(ltrim(a.cert_serial, '0')) = s) <> 1")
[ -z "$bad" ] || fail "answered 200 but not exactly once in the database: $bad"
set -- $base
read -r certs records <<<"$(rows)"
extra=$((records - $2 - total))
[ "$((certs - $1 - total))" = "$extra" ] || fail "certificates and records differ: $base -> $(rows), $total answered"
((extra >= 0 && extra <= 6)) || fail "$extra records beyond the $total answered (6 clients: at most 6 in flight)"
[ "$(psql_val "SELECT count(*) FROM archive_records a LEFT JOIN certificates c ON c.serial = a.cert_serial
               WHERE c.serial IS NULL")" = 0 ] || fail "an archive record without its certificate"
note "$extra record(s) of requests in flight on the killed daemon"
run_esc 0 audit verify
stop_daemon
exit 0
