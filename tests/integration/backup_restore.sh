#!/bin/bash
# The backup and restore drill of docs/backup.md (issue 18), command for
# command: a CA token, two KRA cards and PostgreSQL; RSA and EC keys archived;
# p11escrowd under its own database role exports a signed audit checkpoint
# off-host; the backup: the service's roles (pg_dumpall --roles-only), the
# database (pg_dump -Fc), the SoftHSM2 token directory (the stand-in for the
# HSM vendor's backup) and the configuration.  Then everything is destroyed
# (the cluster stopped by its PID and its data removed, the token directory
# removed) and restored: a new cluster, roles first, pg_restore, db
# grant-service, the tokens back, p11escrowd started.  The audit trail
# verifies against the off-host checkpoint, a key archived before the backup
# is recovered byte for byte by two people, and a new enrollment is archived.
. "$(dirname "$0")/lib.sh"
unset P11ESCROW_P12_PASSWORD P11ESCROW_PASSWORD P11ESCROW_NEW_PASSWORD || true
command -v pg_dump >/dev/null && command -v pg_restore >/dev/null && command -v pg_dumpall >/dev/null ||
    skip "pg_dump, pg_dumpall or pg_restore missing"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Backup Drill CA,O=Example'
ca_pem "$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw kim 'kim-password-000004'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=$(cat "$T/admin.pw") run_esc 0 account add admin --role admin
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
as admin 0 policy set recovery_approvals 1
note "the service's own database role"
psql_val "CREATE ROLE p11escrowd LOGIN" >/dev/null
run_esc 0 db grant-service p11escrowd

note "RSA and EC keys archived"
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
# archive NAME ALG USAGE: a key certified by the CA on the token, archived by the administrator.
archive() {
    printf 'keyUsage=critical,%s\nsubjectAltName=email:%s@example.org\n' "$3" "$1" >"$T/$1.ext"
    case $2 in
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/$1.key" 2>/dev/null ;;
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$1.key" 2>/dev/null ;;
    esac
    openssl req -new -key "$T/$1.key" -subj "/CN=$1/O=Example" -out "$T/$1.csr" 2>/dev/null
    openssl x509 -req -in "$T/$1.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/$1.ext" -out "$T/$1.pem" >/dev/null 2>&1 ||
        fail "issuing $1's certificate"
    cat "$T/$1.key" "$T/$1.pem" >"$T/$1-all.pem"
    run_esc 0 archive import "$T/$1-all.pem" --user admin --account-password-file "$T/admin.pw"
}
archive alice rsa keyEncipherment
archive bob ec keyAgreement
archive carol rsa keyEncipherment
[ "$(psql_val "SELECT count(*) FROM archive_records")" = 3 ] || fail "not three records"

note "the service under its role; a checkpoint exported off-host (audit_checkpoint_file)"
mkdir "$T/offhost"
SVC_DB=${DB/user=postgres/user=p11escrowd}
DB=$SVC_DB start_daemon 1 "audit_checkpoint_file = $T/offhost/checkpoint" "checkpoint_events = 1000" \
    "checkpoint_seconds = 3600"
srv audrey 0 audit checkpoint
[ -s "$T/offhost/checkpoint" ] || fail "no checkpoint in audit_checkpoint_file"
grep -q "audit checkpoint: p11escrow-audit-checkpoint-v1 event=" "$DAEMON_LOG" || fail "no checkpoint on the log"

note "the backup (docs/backup.md): roles, database, token directory, configuration"
B=$T/backup
mkdir -p "$B/etc"
pg_dumpall --roles-only -d "$DB" -f "$B/roles.sql" || fail "pg_dumpall --roles-only"
pg_dump -Fc -d "$DB" -f "$B/p11escrow.dump" || fail "pg_dump"
cp -a "$T/hsm" "$B/hsm"
cp -p "$DAEMON_CONF" "$PIN_FILE" "$T/tls.pem" "$T/tls.key" "$B/etc/"
stop_daemon
RECORDS=$(psql_val "SELECT count(*) FROM archive_records")
EVENTS=$(psql_val "SELECT max(id) FROM audit_events")

note "disaster: the cluster stopped by its PID and its data removed, the token directory removed"
PGPID=$(pg_postmaster_pid "$T/pg")
kill -TERM "$PGPID"
for i in $(seq 100); do kill -0 "$PGPID" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$PGPID" 2>/dev/null || fail "PostgreSQL (pid $PGPID) did not stop"
rm -rf "$T/pg/data" "$T/hsm"
run_esc 20 db status

note "restore: a new cluster, roles first, pg_restore, grants, the tokens back"
start_pg "$T/pg-new"
export P11ESCROW_DATABASE=$DB
# roles.sql creates every role of the old cluster; 'postgres' exists already (that one error is expected).
psql "$DB" -Xq -f "$B/roles.sql" >"$T/roles.log" 2>&1 || true
grep -v 'role "postgres" already exists' "$T/roles.log" | grep_q ERROR && fail "roles: $(cat "$T/roles.log")"
[ "$(psql_val "SELECT count(*) FROM pg_roles WHERE rolname = 'p11escrowd' AND rolcanlogin")" = 1 ] ||
    fail "the service role was not restored"
pg_restore --exit-on-error -d "$DB" "$B/p11escrow.dump" || fail "pg_restore"
run_esc 0 db grant-service p11escrowd
run_esc 0 db status
assert_out "database schema version: $SCHEMA_VERSION"
cp -a "$B/hsm" "$T/hsm"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = "$RECORDS" ] || fail "records lost in the restore"

note "p11escrowd on the restored database; the audit trail verifies against the off-host checkpoint"
SVC_DB=${DB/user=postgres/user=p11escrowd}
DB=$SVC_DB start_daemon 1 "audit_checkpoint_file = $T/offhost/checkpoint.new" "checkpoint_events = 4" \
    "checkpoint_seconds = 0"
srv audrey 0 audit verify --checkpoint "$T/offhost/checkpoint"
assert_out "not rolled back"
run_esc 0 audit verify --checkpoint "$T/offhost/checkpoint"
assert_out "audit trail intact"
assert_out "not rolled back"
[ "$(psql_val "SELECT min(id) FROM audit_events WHERE id > $EVENTS")" = $((EVENTS + 1)) ] ||
    fail "the event ids do not continue after the restore"

note "a key archived before the backup, recovered by two people through the service, byte for byte"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop after the restore" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"
srv cm2 0 recovery approve "$REQ"
assert_out "request $REQ released by the service to KRA 'kra1'"
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/alice.p12"
assert_out "the key matches its certificate"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl pkcs12 cannot open the output"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the recovered key differs from the archived key"
note "... and the EC key, on the other card"
SERIAL=$(openssl x509 -in "$T/bob.pem" -noout -serial | sed 's/serial=//')
srv cm1 0 recovery request --serial "$SERIAL" --reason "bob's key after the restore" --kra kra2
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
srv cm2 0 recovery approve "$REQ"
srv kim 0 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/bob.p12"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
openssl pkcs12 -in "$T/bob.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec-bob.key" 2>/dev/null ||
    fail "openssl pkcs12 cannot open bob's output"
cmp -s <(openssl pkey -in "$T/rec-bob.key" -outform DER) <(openssl pkey -in "$T/bob.key" -outform DER) ||
    fail "the recovered EC key differs from the archived key"

note "the service works: a new enrollment (server-generated key, archived)"
as admin 0 enroll-password create --subject "CN=After Restore,O=Example" --profile encryption
name=$(sed -n 's/^name: //p' "$T/out"); pass=$(sed -n 's/^password: //p' "$T/out")
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
    -subj "/CN=After Restore/O=Example" -outform DER 2>/dev/null | openssl base64 >"$T/req.b64"
code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
    --user "$name:$pass" --data-binary @"$T/req.b64" "$URL/.well-known/est/serverkeygen")
[ "$code" = 200 ] || fail "enrollment after the restore: HTTP $code $(head -c 300 "$T/resp")"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = $((RECORDS + 1)) ] || fail "the new key was not archived"
note "the service's own checkpoints (worker 0 by count, the keeper at shutdown) reach audit_checkpoint_file"
# Worker 0 checks a second after a request (checkpoint_events = 4; the recoveries made more).
for i in $(seq 100); do grep -q 'worker=0 msg="audit checkpoint: p11escrow-audit-checkpoint-v1' "$DAEMON_LOG" && break; sleep 0.1; done
grep -q 'worker=0 msg="audit checkpoint: p11escrow-audit-checkpoint-v1' "$DAEMON_LOG" ||
    fail "worker 0's checkpoint is not on the log: $(grep checkpoint "$DAEMON_LOG")"
[ -s "$T/offhost/checkpoint.new" ] || fail "no audit_checkpoint_file"
srv audrey 0 audit checkpoint --export "$T/offhost/checkpoint.after"
# The logout and this verification's two events (break-glass, audit.verify) are too few for worker 0 (4): the keeper
# signs them at SIGTERM (should worker 0 see a fourth first, it signs; the file is the newest either way).
run_esc 0 audit verify --checkpoint "$T/offhost/checkpoint.after"
stop_daemon
if grep -q 'proc=keeper msg="audit checkpoint signed' "$DAEMON_LOG"; then
    grep -q 'proc=keeper msg="audit checkpoint: p11escrow-audit-checkpoint-v1' "$DAEMON_LOG" ||
        fail "the shutdown checkpoint is not on the keeper's log"
else
    note "(worker 0 signed the last checkpoint before the shutdown)"
fi
[ "$(psql_val "SELECT max(id) FROM audit_events WHERE action <> 'audit.checkpoint'")" -le \
  "$(psql_val "SELECT max(event_id) FROM audit_checkpoints")" ] || fail "events left unsigned at shutdown"
[ "$(sed -n 's/^event=//p' "$T/offhost/checkpoint.new")" = "$(psql_val "SELECT max(event_id) FROM audit_checkpoints")" ] ||
    fail "audit_checkpoint_file is not the newest checkpoint"
run_esc 0 audit verify --checkpoint "$T/offhost/checkpoint.new"
note "backup_restore passed"
