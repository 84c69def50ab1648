# Shared helpers for integration tests: a private temporary directory with
# SoftHSM2 tokens and a throwaway PostgreSQL cluster, always cleaned up —
# also when a test fails or is interrupted.  Servers are stopped by the PIDs
# they recorded, never by name.
set -euo pipefail

: "${P11ESCROW_BIN:?set by meson}" "${P11ESCROW_SRC:?set by meson}"
SRC=$P11ESCROW_SRC
ESC=$P11ESCROW_BIN
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
TEST_NAME=${0##*/}

T=$(mktemp -d "${TMPDIR:-/tmp}/p11escrow-test.XXXXXX")
# The PostgreSQL test user must be able to reach its directory below T.
chmod 0711 "$T"
_pg_dirs=()
_server_pidfiles=()
_daemon_pids=()
_mounts=()   # unmounted after the servers stop (a test's tmpfs under $T)
_vcard_dirs=()

cleanup() {
    local rc=$? d f
    set +e
    for f in "${_daemon_pids[@]}"; do
        kill -TERM "$f" 2>/dev/null && wait "$f" 2>/dev/null
    done
    for f in "${_server_pidfiles[@]}"; do
        "$SRC/hsm/export-tokens" --stop --pidfile "$f" >/dev/null 2>&1
    done
    for d in "${_pg_dirs[@]}"; do
        "$SRC/tests/harness/pg-cluster" stop "$d" >/dev/null 2>&1
    done
    for d in "${_vcard_dirs[@]}"; do
        "$SRC/tests/harness/vcard" stop "$d" >/dev/null 2>&1
    done
    for d in "${_mounts[@]}"; do
        umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null
    done
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL ($TEST_NAME): $*" >&2; [ -f "$T/out" ] && sed 's/^/  | /' "$T/out" >&2; exit 1; }
note() { echo "# $*"; }
# skip REASON: the test cannot run on this machine (meson counts exit status 77 as skipped).
skip() { echo "SKIP ($TEST_NAME): $*"; exit 77; }

# Test PINs: throwaway tokens only.
export P11ESCROW_USER_PIN=${P11ESCROW_USER_PIN:-test-user-pin-4711}
export P11ESCROW_SO_PIN=${P11ESCROW_SO_PIN:-test-so-pin-0815}
unset P11ESCROW_CA_PIN P11ESCROW_DATABASE P11ESCROW_MODULE P11ESCROW_CA_TOKEN || true
# Tests drive the library straight on their throwaway database: break-glass mode (--local),
# audited as such.  Through the service they pass --server (srv), which wins over this.
# admin_server.sh unsets it to check the refusal without it.
export P11ESCROW_LOCAL=1
PIN_FILE=$T/user.pin
( umask 077; printf '%s\n' "$P11ESCROW_USER_PIN" >"$PIN_FILE" )

# provision_tokens DIR LABEL... [-- extra provision-tokens options]
provision_tokens() {
    local dir=$1; shift
    local args=()
    while (($#)) && [ "$1" != -- ]; do args+=(--token "$1"); shift; done
    (($#)) && shift
    "$SRC/hsm/provision-tokens" --dir "$dir" "${args[@]}" "$@" >"$T/provision.log" 2>&1 ||
        { cat "$T/provision.log" >&2; fail "token provisioning failed"; }
}

# start_pg DIR: starts a cluster; sets DB to its connection string.
start_pg() {
    local dir=$1
    _pg_dirs+=("$dir")
    "$SRC/tests/harness/pg-cluster" start "$dir" >"$T/pg.log" 2>&1 ||
        { cat "$T/pg.log" >&2; fail "PostgreSQL did not start"; }
    DB=$(cat "$dir/conninfo")
}

# start_vcard DIR [tests/harness/vcard start options]: a virtual smart card behind a private
# pcscd, reached through OpenSC's PKCS#11 module.  Exports PCSCLITE_CSOCK_NAME and OPENSC_CONF
# (so OpenSC finds that pcscd) and sets VCARD_MODULE, VCARD_TOKEN (its URI) and VCARD_PIN_FILE;
# the certificates are DIR/cert1.pem..cert3.pem.  Skips the test (77) with the harness's reason
# if this machine lacks a piece.  Stopped by PID at exit.
start_vcard() {
    local dir=$1 rc=0
    shift
    _vcard_dirs+=("$dir")
    VCARD_BRIDGE=${VCARD_BRIDGE:-} "$SRC/tests/harness/vcard" start "$dir" "$@" >"$T/vcard.env" 2>"$T/vcard.log" ||
        rc=$?
    if ((rc == 77)); then skip "$(tail -n 1 "$T/vcard.log")"; fi
    ((rc == 0)) || { cat "$T/vcard.log" >&2; fail "the virtual smart card did not start"; }
    eval "$(cat "$T/vcard.env")"
}

# run_esc EXPECTED_RC ARGS...: run the CLI, output in $T/out, check the exit code.
run_esc() {
    local want=$1; shift
    local rc=0
    "$ESC" "$@" >"$T/out" 2>&1 </dev/null || rc=$?
    [ "$rc" -eq "$want" ] || fail "p11escrow $* exited $rc, expected $want"
}

assert_out() { grep -qF -- "$1" "$T/out" || fail "output lacks '$1'"; }
assert_not_out() { ! grep -qF -- "$1" "$T/out" || fail "output contains '$1'"; }

# pw NAME PASSWORD: NAME's password in $T/NAME.pw (for --password-file) and $T/NAME.curl (curl -K)
pw() { ( umask 077; printf '%s\n' "$2" >"$T/$1.pw"; printf 'user = "%s:%s"\n' "$1" "$2" >"$T/$1.curl" ); }
# as USER EXPECTED_RC ARGS...: run_esc as account USER (password from pw)
as() { local u=$1 want=$2; shift 2; run_esc "$want" "$@" --user "$u" --password-file "$T/$u.pw"; }
# srv USER EXPECTED_RC ARGS...: the same through the running service (--server), its database unreachable
srv() {
    local u=$1 want=$2; shift 2
    P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' \
        run_esc "$want" "$@" --server "$URL" --server-ca "$SERVER_CA" --user "$u" --password-file "$T/$u.pw"
}

# psql_val SQL: one value from the test database.
# The schema version this tree's migrations reach: one per sql/NNN_*.sql, numbered without gaps.
SCHEMA_VERSION=$(find "$P11ESCROW_SRC/sql" -maxdepth 1 -name '[0-9][0-9][0-9]_*.sql' | wc -l)
psql_val() { psql "$DB" -XAtq -c "$1"; }

# grep_q ARGS...: grep -q for a pipeline.  grep -q exits at the first match; under pipefail the command
# before it then dies of SIGPIPE if it writes again, and the pipeline fails although the line was there.
# This grep reads all of its input.
grep_q() { grep "$@" >/dev/null; }

# count_private_keys SOFTHSM2_CONF TOKEN_LABEL
count_private_keys() {
    SOFTHSM2_CONF=$1 GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --only-urls \
        --list-privkeys "pkcs11:token=$2" 2>/dev/null | grep -c '^pkcs11:' || true
}

# ca_pem OUT: the CA certificate from the database, as PEM.
ca_pem() {
    psql_val "SELECT encode(certificate, 'base64') FROM ca" | base64 -d | openssl x509 -inform DER -out "$1"
}

# start_daemon [WORKERS] [EXTRA_CONFIG_LINE...]: start p11escrowd against $DB and the
# CA token set up in it (SOFTHSM2_CONF or p11-kit exported), with a TLS certificate the
# CA issues for 127.0.0.1 (once per test; an administrator 'admin' with $T/admin.pw
# must exist).  Sets URL, SERVER_CA, DAEMON_PID, DAEMON_LOG, DAEMON_CONF.  Stopped by
# PID at exit, or by stop_daemon.  DAEMON_ARGS: further p11escrowd options (e.g. --log-format json).
start_daemon() {
    local workers=${1:-2} port i
    (($#)) && shift
    : "${P11ESCROWD_BIN:?set by meson}"
    if [ ! -f "$T/tls.key" ]; then
        run_esc 0 service-cert --cert "$T/tls.pem" --key "$T/tls.key" --name 127.0.0.1 --name localhost \
            --pin-file "$PIN_FILE" --user admin --password-file "$T/admin.pw"
    fi
    [ -f "$T/ca.pem" ] || ca_pem "$T/ca.pem"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    DAEMON_CONF=$T/p11escrowd.$port.conf
    {
        printf 'database = "%s"\nlisten = 127.0.0.1:%s\n' "$DB" "$port"
        [ -n "${DAEMON_PIN_ENV:-}" ] || printf 'ca_pin_file = %s\n' "$PIN_FILE"
        printf 'tls_cert = %s\ntls_key = %s\nworkers = %s\nshutdown_grace = 10\n' "$T/tls.pem" "$T/tls.key" "$workers"
        for i in "$@"; do printf '%s\n' "$i"; done
        # Tests run as root without a p11escrow account: the workers stay root unless a test says otherwise.
        # (No pipe into grep -q here: under pipefail, printf's SIGPIPE when grep exits early made a test's
        # own 'user =' line look absent now and then, and the second 'user' refused the configuration.)
        if [ "$(id -u)" = 0 ]; then
            local own_user=0
            for i in "$@"; do [[ $i =~ ^user\ *= ]] && own_user=1; done
            ((own_user)) || printf 'user = root\n'
        fi
    } >"$DAEMON_CONF"
    DAEMON_LOG=$T/p11escrowd.$port.log
    # DAEMON_PIN_ENV=1: the CA PIN in P11ESCROW_CA_PIN (the daemon's environment only), no ca_pin_file.
    if [ -n "${DAEMON_PIN_ENV:-}" ]; then
        P11ESCROW_CA_PIN=$(head -n 1 "$PIN_FILE") "$P11ESCROWD_BIN" --config "$DAEMON_CONF" 2>"$DAEMON_LOG" &
    else
        # shellcheck disable=SC2086 # DAEMON_ARGS: extra options, split on blanks
        "$P11ESCROWD_BIN" --config "$DAEMON_CONF" ${DAEMON_ARGS:-} 2>"$DAEMON_LOG" &
    fi
    DAEMON_PID=$!
    _daemon_pids+=("$DAEMON_PID")
    URL=https://127.0.0.1:$port
    SERVER_CA=$T/ca.pem
    for i in $(seq 100); do
        curl -sf --cacert "$SERVER_CA" "$URL/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DAEMON_LOG" >&2; fail "p11escrowd exited at start"; }
        sleep 0.1
    done
    cat "$DAEMON_LOG" >&2
    fail "p11escrowd did not answer on $URL within 10 s"
}

# stop_daemon: SIGTERM, wait; fails unless it exits 0.
stop_daemon() {
    local rc=0
    kill -TERM "$DAEMON_PID"
    wait "$DAEMON_PID" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$DAEMON_LOG" >&2; fail "p11escrowd exited $rc on SIGTERM"; }
}

# start_pg_standby PRIMARY_DIR DIR PORT: a hot standby of the cluster started by start_pg in
# PRIMARY_DIR (pg_basebackup -R, WAL streamed), its socket in DIR; sets STANDBY_DB to its
# connection string.  Skips the test (77) where pg_basebackup is missing.  Stopped at exit.
start_pg_standby() {
    local rc=0
    _pg_dirs+=("$2")
    "$SRC/tests/harness/pg-cluster" standby "$2" --from "$1" --port "$3" >"$T/pg.log" 2>&1 || rc=$?
    if ((rc == 77)); then skip "$(tail -n 1 "$T/pg.log")"; fi
    ((rc == 0)) || { cat "$T/pg.log" >&2; fail "the standby did not start"; }
    STANDBY_DB=$(cat "$2/conninfo")
}

# pg_sync_standby PRIMARY_CONNINFO: make every streaming standby of that primary synchronous
# (synchronous_standby_names = '*', synchronous_commit = on) and wait until one is 'sync'.
pg_sync_standby() {
    local i
    psql "$1" -XAtq -c "ALTER SYSTEM SET synchronous_standby_names = '*'" \
        -c "ALTER SYSTEM SET synchronous_commit = on" -c "SELECT pg_reload_conf()" >/dev/null ||
        fail "cannot make the standby synchronous"
    for i in $(seq 100); do
        [ "$(psql "$1" -XAtq -c "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")" -ge 1 ] &&
            return 0
        sleep 0.1
    done
    fail "no synchronous standby after 10 s"
}

# pg_postmaster_pid DIR: the PID of the postmaster of the cluster in DIR (its postmaster.pid).
pg_postmaster_pid() { head -n 1 "$1/data/postmaster.pid"; }

# ---- /serverkeygen load (the HA tests) ---------------------------------------------------------------
# serverkeygen_client: a client certificate (signing profile, enrolled through $URL with a one-time
# password made by admin) in CC=(--cert … --key …), and a request body in $T/req.b64 for keygen below.
serverkeygen_client() {
    "$ESC" enroll-password create --subject 'CN=HA User,O=Example' --profile signing --user admin >"$T/otp.txt" ||
        fail "enroll-password create"
    local otp code
    otp="$(awk '$1 == "name:" {print $2}' "$T/otp.txt"):$(awk '$1 == "password:" {print $2}' "$T/otp.txt")"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/client.key" \
        -subj '/CN=HA User/O=Example' -outform DER 2>/dev/null | openssl base64 >"$T/sign.b64"
    code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
        --data-binary @"$T/sign.b64" --user "$otp" "$URL/.well-known/est/signing/simpleenroll")
    [ "$code" = 200 ] || fail "signing enrollment through $URL: $code $(cat "$T/resp")"
    openssl base64 -d -in "$T/resp" | openssl pkcs7 -inform DER -print_certs -out "$T/client.pem"
    CC=(--cert "$T/client.pem" --key "$T/client.key")
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
        -subj '/CN=x' -outform DER 2>/dev/null | openssl base64 >"$T/req.b64"
    mkdir -p "$T/r"
}
# keygen ID: one /serverkeygen; body $T/r/ID.body, headers $T/r/ID.hdr; prints the HTTP status (000: no answer).
keygen() {
    curl -sS --max-time 30 --cacert "$SERVER_CA" -o "$T/r/$1.body" -D "$T/r/$1.hdr" -w '%{http_code}' \
        -H 'Content-Type: application/pkcs10' --data-binary @"$T/req.b64" "${CC[@]}" \
        "$URL/.well-known/est/serverkeygen" 2>>"$T/curl.err" || true
}
# serial_of ID: the serial of the certificate in a /serverkeygen answer (upper-case hex, no leading zeros).
serial_of() {
    python3 - "$T/r/$1.hdr" "$T/r/$1.body" <<'PY' | openssl pkcs7 -inform DER -print_certs | openssl x509 -noout -serial |
import base64, re, sys
hdr = open(sys.argv[1], encoding='latin-1').read()
boundary = re.search(r'boundary="?([^";\r\n]+)', hdr, re.I).group(1)
for part in open(sys.argv[2], 'rb').read().split(b'--' + boundary.encode()):
    head, _, body = part.partition(b'\r\n\r\n')
    if b'certs-only' in head:
        sys.stdout.buffer.write(base64.b64decode(b''.join(body.split())))
PY
        sed 's/^serial=0*//'
}
