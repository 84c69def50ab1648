#!/bin/bash
# Storage key rotation and the re-seal job (issue #14; docs/archival.md, "Storage key generations"):
# a few hundred keys archived under generation 1; `storage-key rotate` (administrators only; a failure
# after the key was generated leaves no key behind); new records under generation 2, old ones still
# recoverable; `rewrap --storage --batch 50` killed with SIGKILL inside a batch's transaction and
# between batches, then run again to completion while archival goes on; a tampered record skipped,
# reported (exit 33), audited and left byte for byte as it was; records re-sealed open with the new
# key only (openssl cms through the token) and recover byte for byte in a two-person recovery; per-
# batch audit events; `audit verify`.  Then the same through a running p11escrowd whose database
# role is the service's (sql/012's grants and triggers), to completion, and the hint that the earlier
# keys may now be destroyed.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Rotation Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --key-type ec-p256
for who in cm1:cert-manager cm2:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
as admin 0 policy set allow_foreign_issuers true

# gen N: how many records are sealed to storage key generation N
gen() { psql_val "SELECT count(*) FROM archive_records WHERE storage_generation = $1"; }
records() { psql_val "SELECT count(*) FROM archive_records"; }
serial_of() { openssl x509 -in "$1" -noout -serial | sed 's/serial=//'; }
id_of() { psql_val "SELECT id FROM archive_records WHERE cert_serial = lower('$(serial_of "$1")')"; }

# recover KEYFILE ADMIN_MODE...: a two-person recovery of KEYFILE's key (cm1 requests, the CA token releases,
# kent completes on KRA1); the key in the PKCS#12 must be KEYFILE's, byte for byte.  Mode: local or server.
recover() {
    local key=$1 mode=$2 serial req pw
    serial=$(serial_of "$key")
    if [ "$mode" = server ]; then
        srv cm1 0 recovery request --serial "$serial" --reason "storage rotation test" --kra kra1
    else
        as cm1 0 recovery request --serial "$serial" --reason "storage rotation test" --kra kra1
    fi
    req=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
    [ -n "$req" ] || fail "no request id"
    [ "$mode" = server ] || run_esc 0 recovery release "$req" --pin-file "$PIN_FILE"
    [ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $req")" = released ] || fail "request $req not released"
    rm -f "$T/rec.p12"
    as kent 0 recovery complete "$req" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/rec.p12"
    pw=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
    openssl pkcs12 -in "$T/rec.p12" -passin "pass:$pw" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
        fail "openssl cannot open the recovered PKCS#12"
    cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$key" -outform DER) ||
        fail "the recovered key differs from $key"
}

# opens_with ID GENERATION: the record's outer layer opens with openssl cms and that generation's key on the CA token
# (the engine takes the PIN from the URI: throwaway test token).
opens_with() {
    local tbl="token_keys WHERE role = 'storage' AND generation = $2"
    [ "$(psql_val "SELECT count(*) FROM $tbl")" = 1 ] || tbl="retired_storage_keys WHERE generation = $2"
    psql_val "SELECT encode(certificate, 'base64') FROM $tbl" | base64 -d | openssl x509 -inform DER -out "$T/st.pem"
    psql_val "SELECT encode(record, 'base64') FROM archive_records WHERE id = '$1'" | base64 -d >"$T/rec.der"
    openssl cms -decrypt -binary -inform DER -in "$T/rec.der" -recip "$T/st.pem" -engine pkcs11 -keyform engine \
        -inkey "$(psql_val "SELECT uri FROM $tbl");pin-value=$P11ESCROW_USER_PIN" -out "$T/content.der" >/dev/null 2>&1
}

note "400 keys of a foreign CA: 300 archived under the first storage key"
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/pre:300:0" "$T/keys/post:60:1000" "$T/keys/during:20:2000" \
    "$T/keys/srv:20:3000" || fail "cannot make the test keys"
run_esc 0 archive import "$T/keys/pre" --user admin --account-password-file "$T/admin.pw"
assert_out "archived 300, already archived 0, refused 0, failed 0"
[ "$(gen 1)" = 300 ] || fail "records not under generation 1: $(gen 1)"
run_esc 0 storage-key list
assert_out "1           current  rsa3072         300"

note "rotation: administrators only; a failure after the key was generated leaves no key on the token"
keys0=$(count_private_keys "$SOFTHSM2_CONF" CA)
as cm1 51 storage-key rotate --pin-file "$PIN_FILE"
as admin 2 storage-key rotate --pin-file "$PIN_FILE" --key-type rsa1024
as admin 2 storage-key rotate --server https://127.0.0.1:1 --pin-file "$PIN_FILE"
assert_out "does not rotate the storage key"
P11ESCROW_FAULT_FAIL=rotate-before-commit as admin 21 storage-key rotate --pin-file "$PIN_FILE"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = "$keys0" ] || fail "a failed rotation left its key on the token"
[ "$(psql_val "SELECT generation FROM token_keys WHERE role = 'storage'")" = 1 ] || fail "a failed rotation changed the generation"
[ "$(psql_val "SELECT count(*) FROM retired_storage_keys")" = 0 ] || fail "a failed rotation retired the key"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'storage-key.rotate' AND outcome <> 'ok'")" -ge 2 ] ||
    fail "refused and failed rotations not audited"
OLD_CERT=$(psql_val "SELECT encode(certificate, 'hex') FROM token_keys WHERE role = 'storage'")
as admin 0 storage-key rotate --pin-file "$PIN_FILE"
assert_out "storage key rotated: generation 1 -> 2"
assert_out "300 record(s) are still sealed to an earlier one"
[ "$(count_private_keys "$SOFTHSM2_CONF" CA)" = $((keys0 + 1)) ] || fail "no new key on the token"
[ "$(psql_val "SELECT generation FROM token_keys WHERE role = 'storage'")" = 2 ] || fail "generation not 2"
[ "$(psql_val "SELECT encode(certificate, 'hex') FROM retired_storage_keys WHERE generation = 1")" = "$OLD_CERT" ] ||
    fail "the earlier key is not kept as generation 1"
[ "$(psql_val "SELECT retired_by FROM retired_storage_keys WHERE generation = 1")" = admin ] || fail "retired_by"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'storage-key.rotate' AND outcome = 'ok' AND actor = 'admin'")" = 1 ] ||
    fail "rotation not audited"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d |
    openssl x509 -inform DER -out "$T/storage2.pem"
openssl verify -CAfile "$T/ca.pem" "$T/storage2.pem" >/dev/null || fail "the new storage certificate does not verify"
openssl x509 -in "$T/storage2.pem" -noout -subject | grep_q "OU *= *Key Archival Storage" || fail "storage certificate name"
NEW_URI=$(psql_val "SELECT uri FROM token_keys WHERE role = 'storage'")
GNUTLS_PIN=$P11ESCROW_USER_PIN p11tool --provider "$SOFTHSM" --login --list-privkeys "$NEW_URI" >"$T/k.txt" 2>/dev/null
grep -q CKA_NEVER_EXTRACTABLE "$T/k.txt" && grep -q CKA_SENSITIVE "$T/k.txt" || fail "new storage key not protected"
! grep -q CKA_SIGN "$T/k.txt" || fail "the new storage key may sign"
run_esc 0 storage-key list
assert_out "2           current  rsa3072           0"
assert_out "1           retired  rsa3072         300"

note "new records are sealed to generation 2; an insert under the retired generation is refused"
run_esc 0 archive import "$T/keys/post" --user admin --account-password-file "$T/admin.pw"
assert_out "archived 60, already archived 0"
[ "$(gen 2)" = 60 ] || fail "new records not under generation 2: $(gen 2)"
POST_ID=$(id_of "$T/keys/post/k001000.pem")
opens_with "$POST_ID" 2 || fail "a new record does not open with the new key"
! opens_with "$POST_ID" 1 || fail "a new record opens with the old key"
out=$(psql "$DB" -XAtq -c "INSERT INTO archive_records SELECT gen_random_uuid(), record_version, wrap_version, 'ab',
      issuer, subject, email, 'x', 'y', key_type, certificate, foreign_issuer, source, record, created_at, 1
      FROM archive_records LIMIT 1" 2>&1) && fail "a record was inserted under a retired generation"
grep -q "not the current one" <<<"$out" || fail "insert under a retired generation: $out"

note "before the re-seal, a pre-rotation key is recovered with the earlier key"
recover "$T/keys/pre/k000007.pem" local

note "the service's database role: it may re-seal, nothing more"
psql_val "CREATE ROLE p11escrowd LOGIN" >/dev/null
run_esc 0 db grant-service p11escrowd
SVC_DB=${DB/user=postgres/user=p11escrowd}
svc_psql() { psql "$SVC_DB" -XAtq -v ON_ERROR_STOP=1 -c "$1" 2>&1; }
for sql in "UPDATE token_keys SET generation = 1 WHERE role = 'storage'" \
    "INSERT INTO retired_storage_keys SELECT * FROM retired_storage_keys" \
    "UPDATE archive_records SET certificate = certificate WHERE id = '$POST_ID'" \
    "DELETE FROM retired_storage_keys"; do
    out=$(svc_psql "$sql") && fail "the service role could: $sql"
    grep -q "permission denied" <<<"$out" || fail "'$sql' failed, but not for lack of privilege: $out"
done
out=$(svc_psql "UPDATE archive_records SET storage_generation = 1 WHERE id = '$POST_ID'") &&
    fail "the service role moved a record back to a retired key"
grep -q "only ever re-sealed" <<<"$out" || fail "moving a record back: $out"
out=$(svc_psql "UPDATE archive_records SET record = record WHERE id = '$POST_ID'") &&
    fail "the service role rewrote a current record"
grep -q "only ever re-sealed" <<<"$out" || fail "rewriting a current record: $out"
svc_psql "SELECT count(*) FROM retired_storage_keys" >/dev/null || fail "the service role cannot read the retired keys"

note "a tampered record: one byte of its outer layer flipped"
BAD_ID=$(id_of "$T/keys/pre/k000123.pem")
psql_val "UPDATE archive_records SET record = set_byte(record, length(record) - 20,
          get_byte(record, length(record) - 20) # 255) WHERE id = '$BAD_ID'" >/dev/null
BAD_SUM=$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$BAD_ID'")

note "killed inside a batch's transaction: nothing of the batch is kept"
P11ESCROW_FAULT_KILL=reseal-before-commit as admin 137 rewrap --storage --batch 50 --pin-file "$PIN_FILE"
[ "$(gen 1)" = 300 ] || fail "a killed batch left re-sealed records: $(gen 1) under generation 1"

note "killed between batches (SIGKILL from outside, after the first batch committed), while archival goes on"
events0=$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.storage' AND outcome = 'ok'")
"$ESC" rewrap --storage --batch 10 --user admin --password-file "$T/admin.pw" --pin-file "$PIN_FILE" \
    >"$T/job1.out" 2>&1 </dev/null &
JOB=$!
for i in $(seq 600); do
    [ "$(gen 1)" -lt 300 ] && break
    kill -0 "$JOB" 2>/dev/null || break
    sleep 0.02
done
kill -9 "$JOB" 2>/dev/null || true
wait "$JOB" 2>/dev/null || true
left=$(gen 1)
note "killed with $left records left under generation 1"
((left < 300)) || { cat "$T/job1.out" >&2; fail "the first batch never committed"; }
((left > 1)) || fail "the job finished before it was killed ($left left): nothing was tested"
[ "$(records)" = 360 ] || fail "records lost or added: $(records)"
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE storage_generation NOT IN (1, 2)")" = 0 ] || fail "odd generations"

note "run again to completion; an archive import at the same time succeeds"
"$ESC" archive import "$T/keys/during" --user admin --account-password-file "$T/admin.pw" >"$T/during.out" 2>&1 </dev/null &
IMPORT=$!
as admin 33 rewrap --storage --batch 50 --pin-file "$PIN_FILE"
wait "$IMPORT" || { cat "$T/during.out" >&2; fail "the archive import during the re-seal failed"; }
grep -q "archived 20, already archived 0, refused 0, failed 0" "$T/during.out" || fail "import during the job: $(tail -1 "$T/during.out")"
assert_out "skipped record $BAD_ID (integrity check failed"
assert_out "skipped 1 damaged, 1 left under an earlier generation"
assert_out "are damaged and were left as they were"
assert_not_out "may now be destroyed"
[ "$(gen 1)" = 1 ] || fail "records left under generation 1: $(gen 1)"
[ "$(gen 2)" = 379 ] || fail "records under generation 2: $(gen 2)"
[ "$(records)" = 380 ] || fail "record count: $(records)"
[ "$(psql_val "SELECT md5(record) || storage_generation FROM archive_records WHERE id = '$BAD_ID'")" = "${BAD_SUM}1" ] ||
    fail "the tampered record was rewritten"

note "re-sealed records open with the new key only"
PRE_ID=$(id_of "$T/keys/pre/k000042.pem")
opens_with "$PRE_ID" 2 || fail "a re-sealed record does not open with the new key"
openssl asn1parse -inform DER -in "$T/content.der" | grep_q "$PRE_ID" || fail "the re-sealed content lost its record id"
! opens_with "$PRE_ID" 1 || fail "a re-sealed record still opens with the old key"

note "audit: one event per batch with its counts, the tampered record on its own; the chain verifies"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.storage' AND outcome = 'ok'")" -gt "$events0" ] ||
    fail "no per-batch events"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.storage' AND outcome = 'ok'
               AND details LIKE 'resealed %, skipped %, storage key generation 1 -> 2'")" = \
  "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.storage' AND outcome = 'ok'")" ] ||
    fail "batch events without counts: $(psql_val "SELECT details FROM audit_events WHERE action = 'rewrap.storage' LIMIT 3")"
[ "$(psql_val "SELECT sum(substring(details from 'resealed ([0-9]+)')::int) FROM audit_events
               WHERE action = 'rewrap.storage' AND outcome = 'ok'")" = 299 ] ||
    fail "the batch events do not add up to the records re-sealed"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.storage' AND outcome = 'refused' AND object = '$BAD_ID'")" -ge 1 ] ||
    fail "the skipped record is not audited"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.storage'")" -lt 80 ] || fail "audited per record"
as audrey 0 audit verify
assert_out "audit trail intact"

note "two-person recovery, byte for byte: a re-sealed pre-rotation key and a post-rotation key"
recover "$T/keys/pre/k000042.pem" local
recover "$T/keys/post/k001001.pem" local
recover "$T/keys/during/k002003.pem" local

note "through the service: a third generation, re-sealed by p11escrowd's keeper under the service's role"
as admin 0 storage-key rotate --pin-file "$PIN_FILE"
assert_out "storage key rotated: generation 2 -> 3"
DB=$SVC_DB start_daemon 2
grep -q "^database = \"$SVC_DB\"$" "$DAEMON_CONF" || fail "the daemon does not run under the service's role"
srv audrey 0 storage-key list
assert_out "3           current"
srv cm1 51 rewrap --storage --batch 50
srv admin 2 storage-key rotate
"$ESC" archive import "$T/keys/srv" --user admin --account-password-file "$T/admin.pw" --server "$URL" --server-ca "$SERVER_CA" \
    >"$T/srv-import.out" 2>&1 </dev/null &
IMPORT=$!
srv admin 33 rewrap --storage --batch 50
wait "$IMPORT" || { cat "$T/srv-import.out" >&2; fail "the archive import through the service during the re-seal failed"; }
assert_out "skipped record $BAD_ID"
[ "$(gen 3)" = 399 ] || fail "records under generation 3: $(gen 3)"
[ "$(records)" = 400 ] || fail "record count: $(records)"
[ "$(psql_val "SELECT md5(record) || storage_generation FROM archive_records WHERE id = '$BAD_ID'")" = "${BAD_SUM}1" ] ||
    fail "the tampered record was rewritten through the service"
recover "$T/keys/pre/k000099.pem" server

note "the damaged record repaired (restored from a backup): the job finishes, and says the old keys may go"
psql_val "UPDATE archive_records SET record = set_byte(record, length(record) - 20,
          get_byte(record, length(record) - 20) # 255) WHERE id = '$BAD_ID'" >/dev/null
srv admin 0 rewrap --storage
assert_out "re-sealed 1 record(s) to storage key generation 3"
assert_out "storage key generation 2 seals no record any more: it may now be destroyed"
assert_out "storage key generation 1 seals no record any more"
assert_out "--delete-object --type privkey --id $(psql_val "SELECT encode(key_id, 'hex') FROM retired_storage_keys WHERE generation = 1")"
[ "$(gen 3)" = 400 ] || fail "not every record is under generation 3"
recover "$T/keys/pre/k000123.pem" server
stop_daemon
as audrey 0 audit verify
assert_out "audit trail intact"
