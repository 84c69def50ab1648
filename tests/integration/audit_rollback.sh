#!/bin/bash
# Rollback detection (issue 18): a signed audit checkpoint kept outside the
# database catches a database restored from an older backup.  Two checkpoints
# exported to files with a pg_dump between them; the older dump restored into
# a fresh cluster: `audit verify --checkpoint` with the newer file reports the
# rollback (exit 36), with the older one passes; a checkpoint file whose event
# or hash was altered is refused as a bad signature (exit 33); the same
# through the service, which also logs every checkpoint it signs as one line
# and writes it to audit_checkpoint_file — and that log line verifies too.
. "$(dirname "$0")/lib.sh"
unset P11ESCROW_P12_PASSWORD P11ESCROW_PASSWORD P11ESCROW_NEW_PASSWORD || true
command -v pg_dump >/dev/null && command -v pg_restore >/dev/null || skip "pg_dump/pg_restore missing"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Rollback Test CA,O=Example'
ca_pem "$T/ca.pem"
pw admin 'admin-password-0001'; pw audrey 'audrey-password-05'; pw cm1 'cm1-password-00001'
P11ESCROW_NEW_PASSWORD=$(cat "$T/admin.pw") run_esc 0 account add admin --role admin
P11ESCROW_NEW_PASSWORD=$(cat "$T/audrey.pw") as admin 0 account add audrey --role auditor
P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1

CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
# archive NAME: an RSA key certified by the CA on the token, archived (archive import, PEM).
archive() {
    printf 'keyUsage=critical,keyEncipherment\n' >"$T/$1.ext"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/$1.key" 2>/dev/null
    openssl req -new -key "$T/$1.key" -subj "/CN=$1/O=Example" -out "$T/$1.csr" 2>/dev/null
    openssl x509 -req -in "$T/$1.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/$1.ext" -out "$T/$1.pem" >/dev/null 2>&1 ||
        fail "issuing $1's certificate"
    cat "$T/$1.key" "$T/$1.pem" >"$T/$1-all.pem"
    run_esc 0 archive import "$T/$1-all.pem" --user admin --account-password-file "$T/admin.pw"
}

note "archive, a checkpoint exported to a file, a dump"
archive alice
run_esc 0 audit checkpoint --pin-file "$PIN_FILE" --export "$T/ck1"
assert_out "written to $T/ck1"
[ "$(stat -c %a "$T/ck1")" = 644 ] || fail "the checkpoint file is not mode 0644"
grep -q '^p11escrow-audit-checkpoint-v1$' "$T/ck1" && grep -q '^BEGIN CERTIFICATE' <(sed 's/^-----//' "$T/ck1") ||
    fail "the checkpoint file lacks its tag or certificate: $(cat "$T/ck1")"
E1=$(sed -n 's/^event=//p' "$T/ck1")
[ "$E1" = "$(psql_val "SELECT max(event_id) FROM audit_checkpoints")" ] || fail "the file is not the newest checkpoint"
pg_dump -Fc -f "$T/old.dump" "$DB" || fail "pg_dump"

note "more events, a second export (the newest existing checkpoint, without the PIN)"
archive bob
for i in 1 2 3; do as admin 0 policy set recovery_approvals "$((i % 2))"; done
run_esc 0 audit checkpoint --pin-file "$PIN_FILE"
run_esc 0 audit checkpoint --export "$T/ck2" --newest
E2=$(sed -n 's/^event=//p' "$T/ck2")
[ "$E2" -gt "$((E1 + 5))" ] || fail "the second checkpoint ($E2) is not well after the first ($E1)"
run_esc 2 audit checkpoint --newest
assert_out "give --export FILE"
run_esc 2 audit show --checkpoint "$T/ck2"
run_esc 0 audit verify --checkpoint "$T/ck2"
assert_out "not rolled back"
run_esc 0 audit verify --checkpoint "$T/ck1"

note "the older dump restored into a fresh cluster: the newer checkpoint reports the rollback"
ORIG=$DB
start_pg "$T/pg2"
export P11ESCROW_DATABASE=$DB
pg_restore --exit-on-error -d "$DB" "$T/old.dump" || fail "pg_restore"
NEWEST=$(psql_val "SELECT max(id) FROM audit_events")
[ "$NEWEST" -lt "$E2" ] || fail "the restored database is not older than the second checkpoint"
run_esc 36 audit verify --checkpoint "$T/ck2"
T2=$(sed -n 's/^time=//p' "$T/ck2")
assert_out "the database is older than the checkpoint of $T2: events $((NEWEST + 2))..$E2 are missing"
assert_out "restored from an older backup or rolled back"
run_esc 0 audit verify --checkpoint "$T/ck1"
assert_out "not rolled back"
run_esc 0 audit verify
assert_out "audit trail intact"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'audit.verify' AND outcome = 'refused' AND details LIKE '%rolled back%'")" = 1 ] ||
    fail "the rollback is not audited"
run_esc 0 audit verify --checkpoint "$T/ck2" --database "$ORIG"

note "a tampered checkpoint file is a bad signature; a malformed one is refused as such"
# flip FIELD IN OUT: OUT is IN with the first hex digit of FIELD's value changed.
flip() { awk -v f="$1=" 'index($0, f) == 1 { c = substr($0, length(f) + 1, 1); $0 = f (c == "0" ? "1" : "0") substr($0, length(f) + 2) } { print }' "$2" >"$3"
    ! cmp -s "$2" "$3" || fail "$1 was not changed"; }
sed "s/^event=.*/event=$((NEWEST - 3))/" "$T/ck2" >"$T/ck-event"
run_esc 33 audit verify --checkpoint "$T/ck-event"
assert_out "the checkpoint's signature does not verify"
flip hash "$T/ck1" "$T/ck-hash"
run_esc 33 audit verify --checkpoint "$T/ck-hash"
assert_out "the checkpoint's signature does not verify"
flip signer-sha256 "$T/ck1" "$T/ck-signer"
run_esc 33 audit verify --checkpoint "$T/ck-signer"
assert_out "is not the one its signer-sha256 names"
printf 'p11escrow-audit-checkpoint-v1\nevent=1\n' >"$T/ck-short"
run_esc 31 audit verify --checkpoint "$T/ck-short"
assert_out "lacks a field"
printf 'hello\n' >"$T/ck-junk"
run_esc 31 audit verify --checkpoint "$T/ck-junk"
run_esc 4 audit verify --checkpoint "$T/none"
head -c 20000 /dev/zero | tr '\0' a >"$T/ck-big"
run_esc 31 audit verify --checkpoint "$T/ck-big"

note "through the service on the restored database; its checkpoints on the log and in audit_checkpoint_file"
mkdir "$T/offhost"
start_daemon 1 "audit_checkpoint_file = $T/offhost/checkpoint" 'checkpoint_events = 0' 'checkpoint_seconds = 0'
srv audrey 36 audit verify --checkpoint "$T/ck2"
grep -qE "is older than the checkpoint of $T2|is not the event the checkpoint of $T2 signed" "$T/out" ||
    fail "the rollback is not named through the service"
srv audrey 0 audit verify --checkpoint "$T/ck1"
assert_out "not rolled back"
srv admin 2 audit verify
assert_out "verify reads the whole chain from the database: use --local"
[ "$(curl -sS --cacert "$SERVER_CA" -K "$T/admin.curl" -o /dev/null -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' -d '{}' "$URL/api/v1/audit/verify")" = 400 ] ||
    fail "POST /audit/verify without a checkpoint is not refused"
srv audrey 33 audit verify --checkpoint "$T/ck-event"
assert_out "signature does not verify"
srv audrey 31 audit verify --checkpoint "$T/ck-short"
srv cm1 51 audit verify --checkpoint "$T/ck1"
srv cm1 51 audit checkpoint --export "$T/x" --newest
[ ! -e "$T/x" ] || fail "a refused export left a file"
srv audrey 0 audit checkpoint --export "$T/ck3"
E3=$(sed -n 's/^event=//p' "$T/ck3")
assert_out "checkpoint signed: events up to $E3"
cmp -s "$T/ck3" "$T/offhost/checkpoint" || fail "audit_checkpoint_file is not the checkpoint signed"
[ "$(stat -c %a "$T/offhost/checkpoint")" = 644 ] || fail "audit_checkpoint_file is not mode 0644"
grep -q "audit checkpoint: p11escrow-audit-checkpoint-v1 event=$E3 hash=" "$DAEMON_LOG" ||
    fail "the checkpoint is not on the service's log: $(grep checkpoint "$DAEMON_LOG")"
grep -o "p11escrow-audit-checkpoint-v1 event=$E3 [^\"]*" "$DAEMON_LOG" | head -n 1 >"$T/ck3.line"
run_esc 0 audit verify --checkpoint "$T/ck3.line"
assert_out "checkpoint of $(sed -n 's/^time=//p' "$T/ck3") verified"
# The one-line form names the audit certificate by its hash only: another hash is another key.
sed 's/signer-sha256=./signer-sha256=x/;s/signer-sha256=x/signer-sha256=0/' "$T/ck3.line" >"$T/ck3.other"
grep -q 'signer-sha256=0' "$T/ck3.line" && sed -i 's/signer-sha256=0/signer-sha256=1/' "$T/ck3.other"
run_esc 33 audit verify --checkpoint "$T/ck3.other"
assert_out "the checkpoint was not signed by this database's audit key"
srv audrey 0 audit checkpoint --export "$T/ck4" --newest
cmp -s "$T/ck3" "$T/ck4" || fail "the newest checkpoint through the service is not the one signed"
srv audrey 36 audit verify --checkpoint "$T/ck2"
stop_daemon
note "audit_rollback passed"
