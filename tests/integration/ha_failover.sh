#!/bin/bash
# PostgreSQL failover without loss (docs/ha.md).  Two private clusters: a
# primary and a synchronous streaming standby (pg_basebackup -R,
# synchronous_standby_names = '*', synchronous_commit = on).  p11escrowd
# connects with a multi-host conninfo listing both (target_session_attrs =
# read-write).
#  1. A COMMIT whose answer is lost (test hook): the enrollment finds out
#     whether it took effect and answers 200 either way, one row each.
#  2. EST archival load (/serverkeygen); the primary is killed (SIGKILL to
#     its postmaster, by PID) and the standby promoted: 503 with Retry-After
#     during the switch, then 200s again; every enrollment that got a 200
#     has its certificate and archive record on the new primary, exactly
#     once, no record without a 200, and 'audit verify' passes there; the
#     keeper's checkpoint at shutdown, over its connection from before the
#     failover, is signed there too.
# Skipped where pg_basebackup is missing.
. "$(dirname "$0")/lib.sh"

[ -x /usr/lib/postgresql/15/bin/pg_basebackup ] || skip "pg_basebackup is not installed (Debian package postgresql-15)"
provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg1"
PRIMARY_DB=$DB
start_pg_standby "$T/pg1" "$T/pg2" 5433
pg_sync_standby "$PRIMARY_DB"
note "primary $T/pg1, synchronous standby $T/pg2"

export P11ESCROW_DATABASE=$PRIMARY_DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=HA Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001

# Both servers, the primary first; only a read-write server is taken.
DB="host=$T/pg1,$T/pg2 port=5432,5433 dbname=p11escrow user=postgres target_session_attrs=read-write connect_timeout=2"
export P11ESCROW_DATABASE=$DB
run_esc 0 db status
assert_out "database schema version: $SCHEMA_VERSION"
# The same as a URI (socket directories percent-encoded), for the CLI.
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
URI="postgresql://$(enc "$T/pg1"):5432,$(enc "$T/pg2"):5433/p11escrow?user=postgres&target_session_attrs=read-write"
P11ESCROW_DATABASE=$URI run_esc 0 db status
assert_out "database schema version: $SCHEMA_VERSION"
# The standby alone, without target_session_attrs: a write is refused as read-only (25006), not retried.
P11ESCROW_DATABASE=$STANDBY_DB run_esc 20 enroll-password create --subject 'CN=RO,O=Example' --profile signing \
    --user admin
assert_out "the database server is read-only (a standby? use target_session_attrs=read-write)"
# One-shot commit faults (store.c's test hook).  No checkpoint commit takes the shot: the only one
# is the keeper's at shutdown, over the connection it opened at start (to the old primary).
export P11ESCROW_FAULT_COMMIT=$T/commit-fault
start_daemon 2 "checkpoint_events = 100000" "checkpoint_seconds = 0"

serverkeygen_client
rows() { psql "$1" -XAtq -c "SELECT (SELECT count(*) FROM certificates) || ' ' || (SELECT count(*) FROM archive_records)"; }
# once CONNINFO SERIAL: the serial's certificate rows and archive records there ("1 1" when all is well)
once() {
    psql "$1" -XAtq -c "SELECT (SELECT count(*) FROM certificates WHERE upper(ltrim(serial, '0')) = '$2') || ' ' ||
                               (SELECT count(*) FROM archive_records WHERE upper(ltrim(cert_serial, '0')) = '$2')"
}

note "a COMMIT whose answer is lost: the enrollment looks for what it wrote on a new session"
for when in after before; do
    before=$(rows "$PRIMARY_DB")
    echo "$when" >"$T/commit-fault"
    code=$(keygen "fault-$when")
    [ ! -e "$T/commit-fault" ] || fail "$when: the commit hook did not fire"
    [ "$code" = 200 ] || fail "$when: HTTP $code $(head -c 300 "$T/r/fault-$when.body")"
    set -- $before
    [ "$(rows "$PRIMARY_DB")" = "$(($1 + 1)) $(($2 + 1))" ] || fail "$when: rows $before -> $(rows "$PRIMARY_DB")"
    s=$(serial_of "fault-$when")
    [ "$(once "$PRIMARY_DB" "$s")" = "1 1" ] || fail "$when: serial $s: $(once "$PRIMARY_DB" "$s")"
done
grep -q "the commit took effect (found on the database after reconnecting)" "$DAEMON_LOG" ||
    fail "a commit that took effect was not recognised: $(grep -i commit "$DAEMON_LOG")"
grep -q "the commit did not take effect; enrolling again" "$DAEMON_LOG" ||
    fail "a commit that did not take effect was not recognised: $(grep -i commit "$DAEMON_LOG")"

note "EST archival load, the primary killed, the standby promoted"
base=$(rows "$PRIMARY_DB")
# load N: enrollments one after another until $T/stop exists; "ID STATUS TIME" lines in $T/codes.N
load() {
    local n=0 code
    while [ ! -e "$T/stop" ]; do
        n=$((n + 1))
        code=$(keygen "$1.$n")
        printf '%s %s %s\n' "$1.$n" "$code" "$(date +%s.%N)" >>"$T/codes.$1"
        [ "$code" = 200 ] || sleep 0.2
    done
}
oks() { cat "$T"/codes.* 2>/dev/null | awk '$2 == 200' | wc -l; }
load 1 &
L1=$!
load 2 &
L2=$!
for i in $(seq 300); do [ "$(oks)" -ge 10 ] && break; sleep 0.1; done
[ "$(oks)" -ge 10 ] || fail "the load did not start: $(cat "$T"/codes.* | head)"
PRIMARY_PID=$(pg_postmaster_pid "$T/pg1")
# The primary's host dies: the postmaster and every process of it at once, by PID. (The postmaster
# alone is not enough: its backends and WAL sender live on, orphaned, until they notice, and on a busy
# machine they went on answering the daemon's sessions through the whole outage, so no 503 was seen.)
# Stopped first, so that it starts no process between the list and the kill.
kill -STOP "$PRIMARY_PID"
children=$(python3 - "$PRIMARY_PID" <<'PY'
import os, sys
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    if stat[stat.rindex(")") + 2:].split()[1] == sys.argv[1]:  # the parent's PID, after "(comm) state"
        print(p)
PY
)
# shellcheck disable=SC2086 # PIDs, one per word
kill -KILL "$PRIMARY_PID" $children 2>/dev/null || true
killed_at=$(date +%s.%N)
note "killed the primary (postmaster $PRIMARY_PID) after $(oks) enrollments"
sleep 2
"$SRC/tests/harness/pg-cluster" promote "$T/pg2" >"$T/pg.log" 2>&1 || { cat "$T/pg.log" >&2; fail "promote"; }
promoted_at=$(date +%s.%N)
at_promotion=$(oks)
note "promoted the standby"
for i in $(seq 300); do [ "$(oks)" -ge $((at_promotion + 10)) ] && break; sleep 0.1; done
touch "$T/stop"
wait "$L1" "$L2"
cat "$T"/codes.* >"$T/codes"
after=$(awk -v p="$promoted_at" '$2 == 200 && $3 > p' "$T/codes" | wc -l)
[ "$after" -ge 10 ] || fail "the service did not resume: $after enrollments after the promotion
$(tail -n 20 "$DAEMON_LOG")"
during=$(awk -v k="$killed_at" -v p="$promoted_at" '$2 == 503 && $3 > k && $3 < p' "$T/codes" | wc -l)
[ "$during" -ge 1 ] || fail "no 503 while there was no primary: $(sort -k2 "$T/codes" | awk '{print $2}' | uniq -c)"
others=$(awk '$2 != 200 && $2 != 503' "$T/codes")
[ -z "$others" ] || fail "answers other than 200 and 503: $others $(cat "$T/curl.err" 2>/dev/null)"
for id in $(awk '$2 == 503 {print $1}' "$T/codes"); do
    grep -qi '^Retry-After: [0-9]' "$T/r/$id.hdr" || fail "503 without Retry-After: $(cat "$T/r/$id.hdr")"
done
grep -q "reconnected" "$DAEMON_LOG" || fail "the daemon does not say it reconnected"
note "$(awk '$2 == 200' "$T/codes" | wc -l) enrollments answered 200 ($after after the promotion), $(awk '$2 == 503' "$T/codes" | wc -l) answered 503 with Retry-After; commits whose answer the failover took: $(($(grep -c "lost while committing" "$DAEMON_LOG") - 2))"

note "on the new primary: every 200 once, nothing else, the audit trail intact"
NEW_DB=$STANDBY_DB
[ "$(psql "$NEW_DB" -XAtq -c 'SELECT pg_is_in_recovery()')" = f ] || fail "the standby is not the primary"
serials=()
for id in $(awk '$2 == 200 {print $1}' "$T/codes"); do
    s=$(serial_of "$id")
    [[ $s =~ ^[0-9A-F]+$ ]] || fail "$id: no serial in the answer"
    serials+=("'$s'")
done
list=$(IFS=,; echo "${serials[*]}")
bad=$(psql "$NEW_DB" -XAtq -c "SELECT s FROM unnest(ARRAY[$list]) s WHERE
    (SELECT count(*) FROM certificates c WHERE upper(ltrim(c.serial, '0')) = s) <> 1 OR
    (SELECT count(*) FROM archive_records a WHERE upper(ltrim(a.cert_serial, '0')) = s) <> 1")
[ -z "$bad" ] || fail "answered 200 but not exactly once on the new primary: $bad"
set -- $base
want="$(($1 + ${#serials[@]})) $(($2 + ${#serials[@]}))"
[ "$(rows "$NEW_DB")" = "$want" ] ||
    fail "rows on the new primary: $(rows "$NEW_DB"), expected $want (before the load: $base, ${#serials[@]} answered 200)"
[ "$(psql "$NEW_DB" -XAtq -c "SELECT count(*) FROM archive_records a LEFT JOIN certificates c ON c.serial = a.cert_serial
                               WHERE c.serial IS NULL")" = 0 ] || fail "an archive record without its certificate"
P11ESCROW_DATABASE=$NEW_DB run_esc 0 audit verify

note "the keeper's own connection: its checkpoint at shutdown is signed on the new primary"
stop_daemon
grep -q "audit checkpoint signed: events up to [0-9]* (at shutdown)" "$DAEMON_LOG" ||
    fail "no checkpoint at shutdown: $(grep -i checkpoint "$DAEMON_LOG")"
P11ESCROW_DATABASE=$NEW_DB run_esc 0 audit verify
[ "$(psql "$NEW_DB" -XAtq -c "SELECT count(*) FROM audit_checkpoints")" -ge 1 ] || fail "no checkpoint row"
exit 0
