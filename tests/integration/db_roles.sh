#!/bin/bash
# The service's own database role (sql/006, `p11escrow db grant-service`):
# through the library it inserts audit events, but UPDATE, DELETE and
# TRUNCATE of audit rows are refused by its grants (and by the triggers
# behind them, for the owner); p11escrowd runs under that role — EST
# enrollment with archival, a recovery over the API, the CRL — and signs
# audit checkpoints every N events and at SIGTERM, which `audit verify`
# checks; a missing audit key is a clear, audited refusal.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=DB Role Test CA,O=Example'

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
P11ESCROW_NEW_PASSWORD=cm1-password-00001 as admin 0 account add cm1 --role cert-manager
P11ESCROW_NEW_PASSWORD=kent-password-0003 as admin 0 account add kent --role kra --kra kra1
P11ESCROW_NEW_PASSWORD=audrey-password-05 as admin 0 account add audrey --role auditor

# svc_psql SQL: run SQL as the service role; prints psql's error on failure.
SVC_DB=${DB/user=postgres/user=p11escrowd}
[ "$SVC_DB" != "$DB" ] || fail "cannot derive the service role's conninfo from '$DB'"
svc_psql() { psql "$SVC_DB" -XAtq -v ON_ERROR_STOP=1 -c "$1" 2>&1; }
denied() {
    local out
    out=$(svc_psql "$1") && fail "the service role could: $1"
    grep -qE "permission denied|must be owner" <<<"$out" || fail "'$1' failed, but not for lack of privilege: $out"
}

note "grant-service: the role must exist and be neither a superuser nor the owner; each refusal audited"
run_esc 42 db grant-service p11escrowd
assert_out 'role "p11escrowd" does not exist: create it first'
run_esc 43 db grant-service postgres
assert_out "superuser or owns the p11escrow tables"
run_esc 2 db grant-service "$(printf 'bad\tname')"
psql_val "CREATE ROLE p11escrowd LOGIN" >/dev/null
run_esc 0 db grant-service p11escrowd
assert_out "database role 'p11escrowd' granted the service's privileges"
run_esc 0 db grant-service p11escrowd
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'db.grant-service' AND object = 'p11escrowd' AND outcome = 'ok' AND actor = 'db:postgres'")" = 2 ] ||
    fail "grants not audited"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'db.grant-service' AND outcome = 'refused'")" -ge 3 ] ||
    fail "refused grants not audited"

note "exactly the privileges the service needs: INSERT and SELECT only on the audit tables"
[ "$(psql_val "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants
               WHERE grantee = 'p11escrowd' AND table_name = 'audit_events'")" = INSERT,SELECT ] ||
    fail "audit_events privileges: $(psql_val "SELECT string_agg(privilege_type, ',') FROM information_schema.role_table_grants WHERE grantee = 'p11escrowd' AND table_name = 'audit_events'")"
[ "$(psql_val "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants
               WHERE grantee = 'p11escrowd' AND table_name = 'audit_checkpoints'")" = INSERT,SELECT ] ||
    fail "audit_checkpoints privileges"
[ "$(psql_val "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'p11escrowd'
               AND privilege_type IN ('DELETE', 'TRUNCATE', 'TRIGGER', 'REFERENCES')")" = 0 ] ||
    fail "the service role may delete, truncate or add triggers somewhere"
note "the service role owns nothing: no table, sequence, function, type or schema, and no role membership"
[ "$(psql_val "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
               + (SELECT count(*) FROM pg_type WHERE typowner = r.oid) + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
               + (SELECT count(*) FROM pg_auth_members WHERE member = r.oid)
               FROM pg_roles r WHERE r.rolname = 'p11escrowd'")" = 0 ] || fail "the service role owns objects or belongs to a role"
[ "$(psql_val "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls FROM pg_roles WHERE rolname = 'p11escrowd'")" = f ] ||
    fail "the service role has a role attribute it does not need"

note "as the service role, through the library: an audit event is inserted"
before=$(psql_val "SELECT max(id) FROM audit_events")
P11ESCROW_DATABASE=$SVC_DB as audrey 0 audit verify
assert_out "audit trail intact"
[ "$(psql_val "SELECT actor || ' ' || action || ' ' || outcome FROM audit_events WHERE id > $before ORDER BY id DESC LIMIT 1")" = "audrey audit.verify ok" ] ||
    fail "the service role's audit event is missing"
P11ESCROW_DATABASE=$SVC_DB run_esc 0 db status

note "as the service role: UPDATE, DELETE, TRUNCATE of audit rows are permission denied"
denied "UPDATE audit_events SET details = 'x' WHERE id = 1"
denied "DELETE FROM audit_events WHERE id = 1"
denied "TRUNCATE audit_events"
denied "UPDATE audit_checkpoints SET at = 'x'"
denied "DELETE FROM audit_checkpoints"
denied "TRUNCATE audit_checkpoints"
denied "ALTER TABLE audit_events DISABLE TRIGGER audit_no_update"
denied "DROP TRIGGER audit_no_update ON audit_events"
denied "CREATE TABLE public.shadow (x int)"
note "... nor anything an administrator does"
denied "UPDATE policy SET value = '0' WHERE key = 'recovery_approvals'"
denied "UPDATE accounts SET roles = '{admin}' WHERE name = 'cm1'"
denied "UPDATE kras SET state = 'retired', retired_at = now()"
denied "DELETE FROM kras"
note "... and of KRA enrollment challenges (sql/010) only what the service does: insert, mark used"
denied "UPDATE kra_challenges SET expires_at = now() + interval '1 year'"
denied "UPDATE kra_challenges SET secret_sha256 = sha256('x')"
denied "DELETE FROM kra_challenges"
denied "DELETE FROM archive_records"
denied "UPDATE recovery_requests SET approvals_required = 0"
denied "SELECT p11escrow_grant_service('p11escrowd')"
P11ESCROW_DATABASE=$SVC_DB as admin 21 policy set recovery_approvals 3
assert_out "permission denied for table policy"
P11ESCROW_DATABASE=$SVC_DB run_esc 51 db grant-service p11escrowd
assert_out "permission denied for function p11escrow_grant_service"
[ "$(psql_val "SELECT actor || ' ' || outcome FROM audit_events WHERE action = 'db.grant-service' ORDER BY id DESC LIMIT 1")" = "db:p11escrowd refused" ] ||
    fail "the service role's grant attempt is not audited"
note "the append-only triggers remain the second line, even for the owner"
out=$(psql "$DB" -XAtq -c "UPDATE audit_events SET details = 'x' WHERE id = 1" 2>&1) && fail "the owner updated an audit event"
grep -q "append-only" <<<"$out" || fail "the trigger did not refuse: $out"

note "p11escrowd under the service role signs a checkpoint every 5 events"
run_esc 0 service-cert --cert "$T/tls.pem" --key "$T/tls.key" --name 127.0.0.1 --pin-file "$PIN_FILE" \
    --user admin --password-file "$T/admin.pw"
ckpts() { psql_val "SELECT count(*) FROM audit_checkpoints"; }
[ "$(ckpts)" = 0 ] || fail "a checkpoint before the service ran"
DB=$SVC_DB start_daemon 1 "checkpoint_events = 5" "checkpoint_seconds = 0"
# enroll N: serverkeygen with a one-time password for CN=User N (created by the administrator's CLI)
enroll() {
    as admin 0 enroll-password create --subject "CN=User $1,O=Example" --profile encryption
    local name pass code
    name=$(sed -n 's/^name: //p' "$T/out"); pass=$(sed -n 's/^password: //p' "$T/out")
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
        -subj "/CN=User $1/O=Example" -outform DER 2>/dev/null | openssl base64 >"$T/req.b64"
    code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
        --user "$name:$pass" --data-binary @"$T/req.b64" "$URL/.well-known/est/serverkeygen")
    [ "$code" = 200 ] || fail "enrollment $1 under the service role: HTTP $code $(head -c 300 "$T/resp")"
}
for i in 1 2 3; do enroll "$i"; done
[ "$(psql_val "SELECT count(*) FROM archive_records")" = 3 ] || fail "the enrollments were not archived"
# Worker 0 checks a second after a request (CKPT_AFTER_REQUEST): wait up to 5 s.
for i in $(seq 50); do [ "$(ckpts)" -ge 1 ] && break; sleep 0.1; done
[ "$(ckpts)" -ge 1 ] || { cat "$DAEMON_LOG" >&2; fail "no checkpoint after 3 enrollments"; }
grep -q "audit checkpoint signed: events up to" "$DAEMON_LOG" || fail "the checkpoint is not logged"
[ "$(psql_val "SELECT actor || ' ' || role FROM audit_events WHERE action = 'audit.checkpoint' ORDER BY id LIMIT 1")" = "ca-token service" ] ||
    fail "the checkpoint is not an audit event"

note "a recovery through the API and the CRL, under the service role"
SERIAL=$(psql_val "SELECT cert_serial FROM archive_records ORDER BY created_at LIMIT 1")
srv cm1 0 recovery request --serial "$SERIAL" --reason "user 1 lost the laptop" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "not released: $(cat "$T/out")"
pw p12 'recovered-p12-password'
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/user1.p12" \
    --p12-password-file "$T/p12.pw"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = completed ] || fail "not completed"
openssl pkcs12 -in "$T/user1.p12" -passin file:"$T/p12.pw" -nodes -noout 2>/dev/null || fail "the PKCS#12 does not open"
curl -sf --cacert "$SERVER_CA" -o "$T/crl.der" "$URL/crl" || fail "GET /crl under the service role"
note "a KRA enrolled through the service under the service role (challenge, proof, registration)"
srv admin 0 kra enroll --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256
assert_out "possession proven"
[ "$(psql_val "SELECT state FROM kras WHERE name = 'kra2'")" = active ] || fail "kra2 not registered"
srv audrey 0 audit show --serial "$SERIAL"
for a in archive.store enroll.issue recovery.request recovery.release recovery.fetch recovery.complete; do
    grep -q " $a " "$T/out" || fail "audit show --serial lacks $a: $(cat "$T/out")"
done
! grep -q "User 2" "$T/out" || fail "audit show --serial shows another certificate's events"

note "SIGTERM: after draining, a last checkpoint covers every event before it"
# An event the service's own checkpoint timer does not see (written by the CLI, not by a request):
# without it, a checkpoint a second after the last request may already cover everything.  First
# sign what is pending through the service, so that the CLI's two events (its break-glass.local
# and audit.verify) stay below checkpoint_events and only the shutdown signs them.
srv audrey 0 audit checkpoint
as audrey 0 audit verify
before=$(ckpts)
stop_daemon
[ "$(ckpts)" -gt "$before" ] || { cat "$DAEMON_LOG" >&2; fail "no checkpoint at shutdown"; }
grep -q "(at shutdown)" "$DAEMON_LOG" || fail "the shutdown checkpoint is not logged"
last=$(psql_val "SELECT event_id FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE id > $last AND action <> 'audit.checkpoint'")" = 0 ] ||
    fail "events after the last checkpoint ($last): $(psql_val "SELECT string_agg(id || ' ' || action, ', ') FROM audit_events WHERE id > $last")"
note "a quiet restart and stop signs nothing new"
n=$(ckpts)
DB=$SVC_DB start_daemon 1 "checkpoint_events = 5" "checkpoint_seconds = 1"
sleep 2
stop_daemon
[ "$(ckpts)" = "$n" ] || fail "a checkpoint of no new events"
as audrey 0 audit verify
assert_out "audit trail intact"
assert_out "the newest signing events up to $last"

note "a missing checkpoint key: a clear error and an audited refusal"
HOSTP="-h $(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$DB") -p $(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$DB") -U postgres"
# shellcheck disable=SC2086
createdb $HOSTP -T p11escrow nokey
D=${DB/dbname=p11escrow/dbname=nokey}
psql "$D" -XAtq -c "DELETE FROM token_keys WHERE role = 'audit'" >/dev/null || fail "could not remove the audit key"
run_esc 41 audit checkpoint --database "$D" --pin-file "$PIN_FILE"
assert_out "no audit key is recorded"
[ "$(psql "$D" -XAtqc "SELECT outcome || ' ' || details FROM audit_events WHERE action = 'audit.checkpoint' ORDER BY id DESC LIMIT 1")" = "refused no audit key is recorded: this CA predates it" ] ||
    fail "the missing audit key is not audited"
as audrey 42 audit verify --database "$D"
assert_out "the audit certificate not found"
[ "$(psql "$D" -XAtqc "SELECT outcome FROM audit_events WHERE action = 'audit.verify' ORDER BY id DESC LIMIT 1")" = refused ] ||
    fail "the failed verification is not audited"
exit 0
