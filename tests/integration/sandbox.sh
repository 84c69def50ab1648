#!/bin/bash
# The workers' seccomp filter (issue 12): every worker process runs under a
# filter (Seccomp: 2 in /proc) with no_new_privs; a worker that tries to run
# a program (the test hook P11ESCROW_FAULT_EXEC makes the first one try
# execve) is killed by SIGSYS before the program runs, the supervisor logs it
# and starts a new worker, and the service goes on answering.  A daemon
# whose CA PIN came from the environment (wiped once read) says at start
# that a keeper cannot be restarted, and stops with exit 10 when it dies.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Sandbox Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
# The hook exists in test builds only (-Dtest_hooks=true, what scripts/test configures).
grep -qa P11ESCROW_FAULT_EXEC "$P11ESCROWD_BIN" || skip "p11escrowd built without -Dtest_hooks=true"
unset P11ESCROW_USER_PIN P11ESCROW_SO_PIN
WUSER=root
[ "$(id -u)" = 0 ] && WUSER=nobody
# The workers (nobody, when the test runs as root) create the hook's file: a directory they can write.
mkdir -m 0777 "$T/hook"
export P11ESCROW_FAULT_EXEC=$T/hook/exec.tried
start_daemon 2 "user = $WUSER"

children() { ps -o pid= --ppid "$DAEMON_PID" | tr -d ' '; }
maps_module() { grep -q libsofthsm2 "/proc/$1/maps" 2>/dev/null; }
worker_pids() { local p; for p in $(children); do maps_module "$p" || echo "$p"; done; }

note "a worker that runs a program is killed by SIGSYS (31) and replaced"
for i in $(seq 100); do grep -q "was killed by signal 31" "$DAEMON_LOG" && break; sleep 0.1; done
grep -qE "worker [01] \(pid [0-9]+\) was killed by signal 31" "$DAEMON_LOG" ||
    { cat "$DAEMON_LOG" >&2; fail "no worker was killed by SIGSYS"; }
[ -e "$T/hook/exec.tried" ] || fail "the hook did not run"
grep -q "the seccomp filter let execve through" "$DAEMON_LOG" && fail "execve was not stopped"
for i in $(seq 100); do grep -qE "worker [01] restarted" "$DAEMON_LOG" && [ "$(worker_pids | wc -l)" = 2 ] && break
    sleep 0.1; done
grep -qE "worker [01] restarted" "$DAEMON_LOG" || fail "the worker was not restarted"
[ "$(worker_pids | wc -l)" = 2 ] || fail "not two workers: $(worker_pids | tr '\n' ' ')"

note "every worker is filtered, with no_new_privs; the keeper (which loads the module) is not"
for w in $(worker_pids); do
    grep -q '^Seccomp:[[:space:]]*2' "/proc/$w/status" || fail "worker $w runs without a seccomp filter"
    grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$w/status" || fail "worker $w has no no_new_privs"
done
for p in $(children); do
    maps_module "$p" && { grep -q '^Seccomp:[[:space:]]*0' "/proc/$p/status" || fail "the keeper is filtered"; }
done

note "the service answers on every worker"
for i in $(seq 8); do
    curl -sf --cacert "$SERVER_CA" "$URL/.well-known/est/cacerts" -o "$T/cacerts.$i" || fail "cacerts request $i"
    [ -s "$T/cacerts.$i" ] || fail "empty cacerts reply"
done
stop_daemon
grep -q "killed by signal 31" <(grep -v "was killed by signal 31" "$DAEMON_LOG" | grep "signal 31") &&
    fail "a second worker was killed"

note "the CA PIN from the environment: said at start; a dead keeper stops the daemon (exit 10), saying why"
unset P11ESCROW_FAULT_EXEC
DAEMON_PIN_ENV=1 start_daemon 1 "user = $WUSER"
grep -q 'the CA PIN came from P11ESCROW_CA_PIN: should the keeper die, p11escrowd stops' "$DAEMON_LOG" ||
    fail "no warning about the PIN from the environment"
KEEPER=$(for p in $(children); do maps_module "$p" && echo "$p"; done; true)
[ -n "$KEEPER" ] || fail "no keeper"
grep -qa P11ESCROW_CA_PIN= "/proc/$DAEMON_PID/environ" && fail "the PIN is still in the supervisor's environment"
kill -KILL "$KEEPER"
rc=0
timeout 20 tail --pid="$DAEMON_PID" -f /dev/null || fail "p11escrowd did not stop after its keeper died"
wait "$DAEMON_PID" || rc=$?
[ "$rc" = 10 ] || { cat "$DAEMON_LOG" >&2; fail "p11escrowd exited $rc, expected 10"; }
grep -q "the keeper (pid $KEEPER) was killed by signal 9 and cannot be restarted: the CA PIN came from" \
    "$DAEMON_LOG" || { cat "$DAEMON_LOG" >&2; fail "the reason is not logged"; }
note "ok"
