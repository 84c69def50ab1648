#!/bin/bash
# systemd readiness (Type=notify): p11escrowd, started with $NOTIFY_SOCKET as systemd
# would, sends READY=1 from its main process (NotifyAccess=main) only once it serves —
# at the moment the datagram arrives, GET /healthz answers 200 — and STOPPING=1 when
# SIGTERM comes, then exits 0.  The listener is a datagram socket of this test
# (tests/tools/notify_listener.py), which takes the sender's pid from SCM_CREDENTIALS.
. "$(dirname "$0")/lib.sh"
: "${P11ESCROWD_BIN:?set by meson}"

provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Notify Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin

note "without NOTIFY_SOCKET: serves as before (start_daemon waits for /healthz)"
start_daemon 2
stop_daemon

# listen [WORKERS]: start the listener on $T/notify.sock, then p11escrowd with NOTIFY_SOCKET
# pointing at it and the configuration start_daemon wrote (same port, certificate, database).
listen() {
    rm -f "$T/notify.sock" "$T/notify.out"
    python3 "$SRC/tests/tools/notify_listener.py" "$T/notify.sock" "$URL/healthz" "$SERVER_CA" \
        >"$T/notify.out" 2>&1 &
    LISTENER=$!
    for i in $(seq 100); do [ -S "$T/notify.sock" ] && break; sleep 0.05; done
    [ -S "$T/notify.sock" ] || fail "the listener did not start: $(cat "$T/notify.out")"
    NOTIFY_SOCKET=$T/notify.sock "$P11ESCROWD_BIN" --config "$DAEMON_CONF" 2>"$DAEMON_LOG" &
    DAEMON_PID=$!
    _daemon_pids+=("$DAEMON_PID")
}

# wait_line PATTERN: the listener printed a line matching PATTERN within 60 s.
wait_line() {
    for i in $(seq 600); do
        grep -q "$1" "$T/notify.out" && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "$1" "$T/notify.out"
}

for workers in 1 4; do
    note "NOTIFY_SOCKET, $workers worker(s): READY=1 only when /healthz answers, from the main pid"
    # The workers value of this start: the configuration's own line replaced.
    sed -i "s/^workers = .*/workers = $workers/" "$DAEMON_CONF"
    listen
    wait_line '^READY ' || { cat "$DAEMON_LOG" >&2; cp "$T/notify.out" "$T/out"; fail "no READY=1 from p11escrowd"; }
    cp "$T/notify.out" "$T/out"
    line=$(grep '^READY ' "$T/notify.out" | head -n 1)
    [[ $line == *"healthz=200"* ]] || fail "READY=1 came before the service answered: $line"
    [[ $line == *"pid=$DAEMON_PID "* ]] || fail "READY=1 not from the main process $DAEMON_PID: $line"
    [[ $line == *"mainpid=$DAEMON_PID"* ]] || fail "MAINPID is not $DAEMON_PID: $line"
    [[ $line == *"with $workers worker(s)"* ]] || fail "STATUS does not name $workers worker(s): $line"
    [ "$(grep -c '^READY ' "$T/notify.out")" = 1 ] || fail "READY=1 sent more than once"
    curl -sf --cacert "$SERVER_CA" "$URL/healthz" >/dev/null || fail "not serving after READY=1"
    grep -q '^STOPPING' "$T/notify.out" && fail "STOPPING=1 before SIGTERM"

    note "SIGTERM: STOPPING=1 from the main pid, then exit 0"
    stop_daemon
    for i in $(seq 50); do grep -q '^STOPPING ' "$T/notify.out" && break; sleep 0.1; done
    cp "$T/notify.out" "$T/out"
    line=$(grep '^STOPPING ' "$T/notify.out" | head -n 1) || fail "no STOPPING=1 after SIGTERM"
    [[ $line == *"pid=$DAEMON_PID "* ]] || fail "STOPPING=1 not from the main process: $line"
    # Nothing but the main process spoke (workers and the keeper inherit NOTIFY_SOCKET but never send).
    [ "$(grep -c "^MSG " "$T/notify.out")" = "$(grep -c "^MSG pid=$DAEMON_PID " "$T/notify.out")" ] ||
        fail "a datagram from another process: $(grep '^MSG ' "$T/notify.out")"
    wait "$LISTENER" || fail "the listener failed: $(cat "$T/notify.out")"
done

note "notify: ok"
