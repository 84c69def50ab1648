#!/bin/bash
# Re-wrap of the KRA layer through the service (issue #14; docs/archival.md, "Re-wrapping through the
# service"; docs/api.md, /rewrap/kra/...): `rewrap --kra --server` from a workstation that cannot reach the
# database, with the daemon on the service's own database role (sql/017: it replaces a KRA layer only
# through p11escrow_rewrap_kra).  Three KRAs, sets of two; kra1 retired: --dry-run counts through the
# service; the administrator as a KRA is refused (51); a forged commit (the old inner layer, sealed to a set
# holding the retired KRA) is refused and audited; a commit of a record re-wrapped since its offer is stale
# and changes nothing; kra2's card alone skips the records of kra1+kra3 (exit 35); the cards of kra2 and
# kra3 re-wrap every record, each set valid, and kra3 recovers a
# record of kra1+kra2 byte for byte.  Then kra_threshold 1 -> 2 with sets of 3: the CLI killed (-9) before
# its third commit, run again and the daemon killed (-9) under it, restarted, run again beside an archival: every record
# version 2, none lost or half-wrapped; 2 of 3 recover byte for byte; the audit chain verifies.
. "$(dirname "$0")/lib.sh"

. "$(dirname "$0")/rewrap_lib.sh"
rewrap_world 'CN=Rewrap Server Test CA,O=Example'

# rewrap RC [ARGS...]: rewrap --kra as admin, through the service
rewrap() { local want=$1; shift; srv admin "$want" rewrap --kra "$@"; }
records() { psql_val "SELECT count(*) FROM archive_records"; }
kra_id() { psql_val "SELECT id FROM kras WHERE name = '$1'"; }
set_of() { psql_val "SELECT string_agg(k.name, ' ' ORDER BY k.name) FROM archive_record_kras x JOIN kras k ON k.id = x.kra_id
                     WHERE x.record_id = '$1'"; }
with_kra() { psql_val "SELECT count(DISTINCT record_id) FROM archive_record_kras WHERE kra_id = $(kra_id "$1")"; }
rec_of() { psql_val "SELECT id FROM archive_records WHERE subject LIKE '%CN=$1%'"; }
refused_events() { psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.kra' AND outcome = 'refused'"; }

# recover ID KEYFILE COMPLETER [CONTRIBUTOR]: recovered on the service host (local), byte for byte KEYFILE's key.
recover() {
    local id=$1 key=$2 by=$3 with=${4:-} req
    as cm1 0 recovery request --record "$id" --reason "rewrap server test" --kra "kra$by"
    req=$(psql_val "SELECT max(id) FROM recovery_requests")
    run_esc 0 recovery release "$req" --pin-file "$PIN_FILE"
    [ -z "$with" ] || as "k$with" 0 recovery contribute "$req" --token "pkcs11:token=KRA$with" --kra-pin-file "$PIN_FILE"
    rm -f "$T/rec.p12"
    as "k$by" 0 recovery complete "$req" --token "pkcs11:token=KRA$by" --kra-pin-file "$PIN_FILE" --out "$T/rec.p12" \
        --p12-password-file "$T/cm1.pw"
    openssl pkcs12 -in "$T/rec.p12" -nocerts -nodes -passin "file:$T/cm1.pw" 2>/dev/null |
        openssl pkey -outform DER >"$T/rec.der" || fail "openssl cannot open the recovered PKCS#12"
    cmp -s "$T/rec.der" <(openssl pkey -in "$key" -outform DER) || fail "the key recovered by request $req differs from $key"
}

note "RSA and EC keys archived to sets of 2 of kra1..kra3"
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/ec:12:0" || fail "cannot make the test keys"
run_esc 0 archive import "$T/keys/ec" --user admin --account-password-file "$T/admin.pw"
for u in alice bob; do
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u" -days 30 \
        -addext keyUsage=critical,keyEncipherment -out "$T/$u.pem" 2>/dev/null
    run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/$u.key" --cert "$T/$u.pem"
done
N=$(records)
[ "$N" = 14 ] || fail "14 records expected, $N archived"

note "the daemon on the service's database role"
psql_val "CREATE ROLE p11escrowd LOGIN" >/dev/null
run_esc 0 db grant-service p11escrowd
SVC_DB=${DB/user=postgres/user=p11escrowd}
svc_psql() { psql "$SVC_DB" -XAtq -v ON_ERROR_STOP=1 -c "$1" 2>&1; }
ANY_ID=$(rec_of alice)
out=$(svc_psql "UPDATE archive_records SET wrap_version = 2 WHERE id = '$ANY_ID'") && fail "the service role changed wrap_version"
grep -q "permission denied" <<<"$out" || fail "wrap_version update: $out"
out=$(svc_psql "DELETE FROM archive_record_kras WHERE record_id = '$ANY_ID'") && fail "the service role deleted a KRA set"
grep -q "permission denied" <<<"$out" || fail "archive_record_kras delete: $out"
# Without an offer of the service's, the function replaces nothing.
[ "$(svc_psql "SELECT p11escrow_rewrap_kra('$ANY_ID', sha256(record), record || record, 1) FROM archive_records
               WHERE id = '$ANY_ID'")" = f ] || fail "p11escrow_rewrap_kra replaced a record that was never offered"
DB=$SVC_DB start_daemon 2
unset P11ESCROW_KRA_PIN

note "kra1 retired: --dry-run through the service counts the records that hold it"
WITH1=$(with_kra kra1)
[ "$WITH1" -gt 0 ] || fail "no record holds kra1"
REL_ID=$(psql_val "SELECT x.record_id FROM archive_record_kras x JOIN archive_record_kras y ON y.record_id = x.record_id
                   WHERE x.kra_id = $(kra_id kra1) AND y.kra_id = $(kra_id kra2) ORDER BY 1 LIMIT 1")
[ -n "$REL_ID" ] || fail "no record of kra1 and kra2"
as admin 0 kra retire kra1
# The service's role writing an offer of its own: a set holding the retired kra1 is refused by the function.
svc_psql "INSERT INTO rewrap_offers (record_id, record_sha256, kra_ids, threshold, offered_by) SELECT id, sha256(record),
          ARRAY[$(kra_id kra1), $(kra_id kra2)], 1, (SELECT id FROM accounts WHERE name = 'admin') FROM archive_records
          WHERE id = '$REL_ID'" >/dev/null || fail "the service role cannot write an offer"
BEFORE=$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$REL_ID'")
out=$(svc_psql "SELECT p11escrow_rewrap_kra('$REL_ID', sha256(record), record || record, 1) FROM archive_records
                WHERE id = '$REL_ID'") && fail "p11escrow_rewrap_kra took a set holding a retired KRA"
grep -q "not one current policy allows" <<<"$out" || fail "offer of a retired KRA: $out"
[ "$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$REL_ID'")" = "$BEFORE" ] || fail "the record changed"
rewrap 0 --dry-run
assert_out "$WITH1 of $N record(s) to re-wrap"
grep -qE "^  retired KRA +$WITH1\$" "$T/out" || fail "--dry-run does not count $WITH1 records under 'retired KRA'"

note "dual control through the service: the administrator is not a KRA (51), a non-administrator cannot run it"
rewrap 51 --card 'pkcs11:token=KRA2' --card-user admin --card-pin-file "$PIN_FILE" --card-password-file "$T/admin.pw"
srv k2 51 rewrap --kra $(card 3)
[ "$(with_kra kra1)" = "$WITH1" ] || fail "a refused re-wrap changed a record"

note "a forged commit: the record's old inner layer (sealed to kra1 and kra2) posted back is refused and audited"
api() { # api TOKEN METHOD PATH [BODY]
    curl -s --cacert "$SERVER_CA" -H "Authorization: Bearer $1" -H 'Content-Type: application/json' -X "$2" \
        ${4:+--data-binary "$4"} "$URL/api/v1$3"
}
login() { curl -sf --cacert "$SERVER_CA" -K "$T/$1.curl" -X POST "$URL/api/v1/session" | jq -r .token; }
ADM=$(login admin) K2=$(login k2) K3=$(login k3)
[ -n "$ADM" ] && [ -n "$K3" ] && [ "$ADM" != null ] || fail "no API sessions"
SESS="[\"$K2\", \"$K3\"]"
api "$ADM" POST /rewrap/kra/batch "{\"batch\": \"1\", \"kra_sessions\": $SESS}" >"$T/offer.json"
FID=$(jq -r '.records[0].id' "$T/offer.json")
FSHA=$(jq -r '.records[0].sha256' "$T/offer.json")
[ -n "$FID" ] && [ "$FID" != null ] || fail "no offer: $(cat "$T/offer.json")"
jq -e '.records[0].kras | length == 2' "$T/offer.json" >/dev/null || fail "the offer does not name a set of 2"
jq -e '[.records[0].kras[].name] | index("kra1") == null' "$T/offer.json" >/dev/null || fail "the offer names kra1"
BEFORE=$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$FID'")
ev0=$(refused_events)
api "$ADM" POST /rewrap/kra/commit "$(jq -c --arg s "$K2" --arg t "$K3" --arg r "$FID $FSHA $(jq -r '.records[0].record' "$T/offer.json")" \
    -n '{kra_sessions: [$s, $t], records: $r}')" >"$T/commit.json"
jq -e '.rewrapped == 0 and (.refused | length) == 1 and .refused[0].code == "not a recipient"' "$T/commit.json" >/dev/null ||
    fail "a forged commit was not refused: $(cat "$T/commit.json")"
[ "$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$FID'")" = "$BEFORE" ] || fail "a forged commit changed the record"
[ "$(refused_events)" -gt "$ev0" ] || fail "the forged commit is not audited"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.kra' AND object = '$FID' AND outcome = 'refused'
               AND details LIKE '%not sealed to exactly the KRA set the service chose%'")" = 1 ] || fail "forged commit audit"
# The same record offered again: the offer above is replaced, its hash kept for the stale commit below.
api "$ADM" POST /rewrap/kra/batch "{\"batch\": \"1\", \"kra_sessions\": $SESS}" >"$T/offer2.json"
[ "$(jq -r '.records[0].id' "$T/offer2.json")" = "$FID" ] || fail "the record is not offered again"

note "kra2's card only: the records of kra1 and kra3 are skipped (exit 35), listed with the KRAs they need"
ONLY13=$(psql_val "SELECT count(*) FROM archive_record_kras x JOIN archive_record_kras y ON y.record_id = x.record_id
                   WHERE x.kra_id = $(kra_id kra1) AND y.kra_id = $(kra_id kra3)")
# (sets are drawn at random: with no record of kra1+kra3, nothing is left for other cards)
if [ "$ONLY13" -gt 0 ]; then
    rewrap 35 $(card 2) --batch 4
    assert_out "needs the card of one of KRA(s) kra1, kra3"
else
    rewrap 0 $(card 2) --batch 4
fi
assert_out "re-wrapped $((WITH1 - ONLY13)) record(s)"
assert_out "skipped $ONLY13 needing other cards"
[ "$(with_kra kra1)" = "$ONLY13" ] || fail "records left with kra1: $(with_kra kra1), expected $ONLY13"

note "the cards of kra2 and kra3 through the service: every set valid, records as many as before"
rewrap 0 $(card 2) $(card 3) --batch 4
assert_out "re-wrapped $ONLY13 record(s)"
[ "$(records)" = "$N" ] || fail "records lost"
[ "$(with_kra kra1)" = 0 ] || fail "records still wrapped to kra1"
[ "$(psql_val "SELECT count(*) FROM archive_records a WHERE (SELECT count(*) FROM archive_record_kras x JOIN kras k
               ON k.id = x.kra_id WHERE x.record_id = a.id AND k.state = 'active') <> 2")" = 0 ] || fail "a set is not 2 active KRAs"
[ "$(psql_val "SELECT count(*) FROM rewrap_offers")" = 0 ] || fail "offers left behind"
psql_val "SELECT details FROM audit_events WHERE action = 'rewrap.kra' AND object = 'records' AND outcome = 'ok' ORDER BY id" >"$T/out"
assert_out "through the service: rewrapped"
assert_out "KRA account(s) k2, k3; administrator admin"
rewrap 0 --dry-run
assert_out "0 of $N record(s) to re-wrap"

note "a commit of a record re-wrapped since it was offered: stale, nothing changed"
AFTER=$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$FID'")
api "$ADM" POST /rewrap/kra/commit "$(jq -c --arg s "$K2" --arg t "$K3" --arg r "$FID $FSHA $(jq -r '.records[0].record' "$T/offer.json")" \
    -n '{kra_sessions: [$s, $t], records: $r}')" >"$T/commit.json"
jq -e '.rewrapped == 0 and .stale == 1 and (.refused | length) == 0' "$T/commit.json" >/dev/null ||
    fail "a stale commit was not recognised: $(cat "$T/commit.json")"
[ "$(psql_val "SELECT md5(record) FROM archive_records WHERE id = '$FID'")" = "$AFTER" ] || fail "a stale commit changed the record"

note "recovered by kra3, which was not in the old set of a record of kra1 and kra2"
[ "$(set_of "$REL_ID")" = "kra2 kra3" ] || fail "record $REL_ID: set $(set_of "$REL_ID")"
keyfile() {
    local want f
    want=$(psql_val "SELECT cert_sha256 FROM archive_records WHERE id = '$1'")
    for f in "$T"/keys/ec/*.pem "$T"/alice.pem "$T"/bob.pem; do
        if [ "$(openssl x509 -in "$f" -outform DER | sha256sum | cut -d' ' -f1)" = "$want" ]; then
            case $f in "$T"/keys/*) echo "$f" ;; *) echo "${f%.pem}.key" ;; esac
            return
        fi
    done
    fail "no key file for record $1"
}
recover "$REL_ID" "$(keyfile "$REL_ID")" 3

note "kra_threshold 2 of sets of 3 (kra4): the CLI killed before its third commit, then run again"
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA4' --kra-pin-file "$PIN_FILE" --name kra4 --key-type ec-p256
P11ESCROW_NEW_PASSWORD=$(cat "$T/k4.pw") as admin 0 account add k4 --role kra --kra kra4
as admin 0 policy set kra_set_size 3
as admin 0 policy set kra_threshold 2
P11ESCROW_FAULT_KILL=rewrap-kra-server-commit P11ESCROW_FAULT_KILL_SKIP=2 rewrap 137 $(card 2) $(card 3) --batch 4
[ "$(records)" = "$N" ] || fail "records lost by the kill"
V2=$(psql_val "SELECT count(*) FROM archive_records WHERE record_version = 2")
[ "$V2" = 8 ] || fail "two batches of 4 should have committed before the kill: $V2 version 2 records"
[ "$(psql_val "SELECT count(*) FROM archive_records a WHERE (a.record_version, a.wrap_version,
               (SELECT count(*) FROM archive_record_kras x WHERE x.record_id = a.id)) NOT IN ((2, 2, 3), (1, 1, 2))")" = 0 ] ||
    fail "a record is half re-wrapped"
note "the daemon killed (-9, supervisor, workers and keeper) once the rerun's first offer is made; restarted, run again"
v2() { psql_val "SELECT count(*) FROM archive_records WHERE record_version = 2"; }
T0=$(psql_val "SELECT now()")
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' "$ESC" rewrap --kra --batch 1 --server "$URL" \
    --server-ca "$SERVER_CA" --user admin --password-file "$T/admin.pw" $(card 2) $(card 3) >"$T/job.out" 2>&1 </dev/null &
JOB=$!
for _ in $(seq 400); do
    [ "$(psql_val "SELECT count(*) FROM rewrap_offers WHERE offered_at > '$T0'")" -gt 0 ] && break
    kill -0 "$JOB" 2>/dev/null || break
done
victims=$(ps -o pid= --ppid "$DAEMON_PID" | tr -d ' ' | tr '\n' ' ')
kill -KILL "$DAEMON_PID" $victims
wait "$DAEMON_PID" 2>/dev/null || true
wait "$JOB" 2>/dev/null || true
note "daemon killed with $(v2) of $N records version 2"
[ "$(records)" = "$N" ] || fail "records lost by the daemon's kill"
[ "$(psql_val "SELECT count(*) FROM archive_records a WHERE (a.record_version, a.wrap_version,
               (SELECT count(*) FROM archive_record_kras x WHERE x.record_id = a.id)) NOT IN ((2, 2, 3), (1, 1, 2))")" = 0 ] ||
    fail "a record is half re-wrapped after the daemon's kill"
DB=$SVC_DB start_daemon 2
# Archival goes on meanwhile: four more keys imported while the job runs (version 2 at once).
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/more:4:100" || fail "cannot make the test keys"
"$ESC" archive import "$T/keys/more" --user admin --account-password-file "$T/admin.pw" >"$T/import.out" 2>&1 </dev/null &
IMPORT=$!
rewrap 0 $(card 2) $(card 3) --batch 4
assert_out ", 0 left"
wait "$IMPORT" || { cat "$T/import.out" >&2; fail "archival failed while the re-wrap ran"; }
grep -qF "archived 4, already archived 0" "$T/import.out" || fail "import during the re-wrap: $(cat "$T/import.out")"
N=$((N + 4))
[ "$(records)" = "$N" ] || fail "records lost"
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE record_version = 2 AND wrap_version = 2")" = "$N" ] ||
    fail "not every record is version 2"
[ "$(psql_val "SELECT count(*) FROM archive_record_kras")" = $((3 * N)) ] || fail "KRA sets of 3 expected"
rewrap 0 --dry-run
assert_out "0 of $N record(s) to re-wrap"

note "2 of 3 recover a version 2 record byte for byte (bob's RSA key: kra2 contributes, kra3 completes)"
recover "$(rec_of bob)" "$T/bob.key" 3 2

stop_daemon
run_esc 0 audit verify --user audrey --password-file "$T/audrey.pw"
note "ok"
