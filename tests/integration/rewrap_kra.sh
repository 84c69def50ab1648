#!/bin/bash
# Re-wrap of the KRA layer (issue #14; docs/archival.md, "Re-wrapping the KRA layer"): three KRAs, sets of
# two, RSA and EC keys archived.  A KRA retired: --dry-run counts the records that hold it (no card);
# dual control refused where the administrator is a KRA or a KRA is given twice; a run
# with one card re-wraps what that card opens and skips (exit 35, listed with the KRAs needed, audited)
# the records it cannot; with a second card every set is valid.  A request released before the re-wrap
# completes after it (its package is its own ciphertext), a pending one is released against the new
# wrap; a record is recovered byte for byte by a KRA that was not in its old set.  Then kra_threshold
# 1 -> 2 with sets of 3: kill -9 inside the third batch's transaction, run again: every record version
# 2, none lost, none half-wrapped, archival going on meanwhile, the audit chain verifies; 2 of 3 recover
# byte for byte.
. "$(dirname "$0")/lib.sh"

. "$(dirname "$0")/rewrap_lib.sh"
rewrap_world 'CN=Rewrap Test CA,O=Example'

# rewrap RC [ARGS...]: rewrap --kra as admin
rewrap() { local want=$1; shift; as admin "$want" rewrap --kra --pin-file "$PIN_FILE" "$@"; }
records() { psql_val "SELECT count(*) FROM archive_records"; }
kra_id() { psql_val "SELECT id FROM kras WHERE name = '$1'"; }
set_of() { psql_val "SELECT string_agg(k.name, ' ' ORDER BY k.name) FROM archive_record_kras x JOIN kras k ON k.id = x.kra_id
                     WHERE x.record_id = '$1'"; }
with_kra() { psql_val "SELECT count(DISTINCT record_id) FROM archive_record_kras WHERE kra_id = $(kra_id "$1")"; }
rec_of() { psql_val "SELECT id FROM archive_records WHERE subject LIKE '%CN=$1%'"; }

# recover ID KEYFILE COMPLETER [CONTRIBUTOR]: cm1 requests record ID for COMPLETER's KRA, the CA token releases,
# CONTRIBUTOR (k of n) contributes, COMPLETER completes; the key must be KEYFILE's, byte for byte.
recover() {
    local id=$1 key=$2 by=$3 with=${4:-} req
    as cm1 0 recovery request --record "$id" --reason "rewrap test" --kra "kra$by"
    req=$(psql_val "SELECT max(id) FROM recovery_requests")
    run_esc 0 recovery release "$req" --pin-file "$PIN_FILE"
    [ -z "$with" ] || as "k$with" 0 recovery contribute "$req" --token "pkcs11:token=KRA$with" --kra-pin-file "$PIN_FILE"
    complete "$req" "$key" "$by"
}
# complete REQ KEYFILE KRA: KRA N's account completes REQ on its card; the key must be KEYFILE's.
complete() {
    rm -f "$T/rec.p12"
    as "k$3" 0 recovery complete "$1" --token "pkcs11:token=KRA$3" --kra-pin-file "$PIN_FILE" --out "$T/rec.p12" \
        --p12-password-file "$T/cm1.pw"
    openssl pkcs12 -in "$T/rec.p12" -nocerts -nodes -passin "file:$T/cm1.pw" 2>/dev/null |
        openssl pkey -outform DER >"$T/rec.der" || fail "openssl cannot open the recovered PKCS#12"
    cmp -s "$T/rec.der" <(openssl pkey -in "$2" -outform DER) || fail "the key recovered by request $1 differs from $2"
}

note "RSA and EC keys archived to sets of 2 of kra1..kra3"
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/ec:24:0" || fail "cannot make the test keys"
run_esc 0 archive import "$T/keys/ec" --user admin --account-password-file "$T/admin.pw"
assert_out "archived 24, already archived 0"
for u in alice bob carol; do
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u" -days 30 \
        -addext keyUsage=critical,keyEncipherment -out "$T/$u.pem" 2>/dev/null
    run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/$u.key" --cert "$T/$u.pem"
done
N=$(records)
[ "$N" = 27 ] || fail "27 records expected, $N archived"
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE record_version = 1 AND wrap_version = 1")" = 27 ] ||
    fail "archival did not record version 1, threshold 1"
as admin 0 rewrap --kra --dry-run
assert_out "0 of 27 record(s) to re-wrap"

note "kra1 retired: --dry-run lists the records that hold it, without cards"
WITH1=$(with_kra kra1)
[ "$WITH1" -gt 0 ] || fail "no record holds kra1"
# Two records of kra1 and kra2 (whichever they are): one with a request released now, one with a request pending.
read -r REL_ID PEND_ID < <(psql_val "SELECT string_agg(id::text, ' ') FROM (SELECT x.record_id AS id FROM archive_record_kras x
    JOIN archive_record_kras y ON y.record_id = x.record_id WHERE x.kra_id = $(kra_id kra1) AND y.kra_id = $(kra_id kra2)
    ORDER BY 1 LIMIT 2) s")
[ -n "$PEND_ID" ] || fail "fewer than two records of kra1 and kra2"
# keyfile ID: the file holding record ID's private key (a test key whose certificate is the record's)
keyfile() {
    local want f
    want=$(psql_val "SELECT cert_sha256 FROM archive_records WHERE id = '$1'")
    for f in "$T"/keys/ec/*.pem "$T"/keys/more/*.pem "$T"/alice.pem "$T"/bob.pem "$T"/carol.pem; do
        [ -e "$f" ] || continue
        if [ "$(openssl x509 -in "$f" -outform DER | sha256sum | cut -d' ' -f1)" = "$want" ]; then
            case $f in "$T"/keys/*) echo "$f" ;; *) echo "${f%.pem}.key" ;; esac
            return
        fi
    done
    fail "no key file for record $1"
}
as cm1 0 recovery request --record "$REL_ID" --reason "released before the re-wrap" --kra kra2
REL_REQ=$(psql_val "SELECT max(id) FROM recovery_requests")
run_esc 0 recovery release "$REL_REQ" --pin-file "$PIN_FILE"
as cm1 0 recovery request --record "$PEND_ID" --reason "pending across the re-wrap" --kra kra2
PEND_REQ=$(psql_val "SELECT max(id) FROM recovery_requests")
as admin 0 kra retire kra1
as admin 0 rewrap --kra --dry-run
assert_out "$WITH1 of 27 record(s) to re-wrap"
grep -qE "^  retired KRA +$WITH1\$" "$T/out" || fail "--dry-run does not count $WITH1 records under 'retired KRA'"

note "dual control: the administrator is never one of the KRAs, a KRA counts once"
as k2 51 rewrap --kra --pin-file "$PIN_FILE" $(card 3)
rewrap 51 --card 'pkcs11:token=KRA2' --card-user admin --card-pin-file "$PIN_FILE" --card-password-file "$T/admin.pw"
rewrap 51 $(card 2) --card 'pkcs11:token=KRA2' --card-user k2 --card-pin-file "$PIN_FILE" --card-password-file "$T/k2.pw"
assert_out "given twice"
rewrap 2
assert_out "needs the KRA cards"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.kra' AND outcome = 'refused'")" -ge 3 ] ||
    fail "refused re-wraps not audited"
[ "$(with_kra kra1)" = "$WITH1" ] || fail "a refused re-wrap changed a record"

note "kra2's card only: the records of kra1 and kra3 are skipped (exit 35), listed with the KRAs they need"
ONLY13=$(psql_val "SELECT count(*) FROM archive_record_kras x JOIN archive_record_kras y ON y.record_id = x.record_id
                   WHERE x.kra_id = $(kra_id kra1) AND y.kra_id = $(kra_id kra3)")
rewrap 35 $(card 2) --batch 4
assert_out "needs the card of one of KRA(s) kra1, kra3"
[ "$(grep -c '^skipped record .*other KRA cards needed' "$T/out")" = "$ONLY13" ] || fail "not every kra1+kra3 record listed"
assert_out "skipped $ONLY13 needing other cards"
[ "$(with_kra kra1)" = "$ONLY13" ] || fail "records left with kra1: $(with_kra kra1), expected $ONLY13"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.kra' AND outcome = 'refused'
               AND details LIKE '%needs the card of one of KRA(s) kra1, kra3%'")" -ge "$ONLY13" ] || fail "skips not audited"
# Per batch: counts and the cards that opened records (a batch of skips only opened with none).
psql_val "SELECT details FROM audit_events WHERE action = 'rewrap.kra' AND object = 'records' AND outcome = 'ok'
          ORDER BY id" >"$T/out"
assert_out "opened with the cards of kra2 (account k2)"
assert_out "need other cards"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'rewrap.kra' AND object IN ('start', 'stop')
               AND actor = 'admin'")" = 2 ] || fail "no start/stop events"

note "kra2's and kra3's cards: every set is valid (2 active KRAs, no kra1), records as many as before"
rewrap 0 $(card 2) $(card 3)
assert_out "re-wrapped $ONLY13 record(s)"
[ "$(records)" = "$N" ] || fail "records lost"
[ "$(with_kra kra1)" = 0 ] || fail "records still wrapped to kra1"
[ "$(psql_val "SELECT count(*) FROM archive_records a WHERE (SELECT count(*) FROM archive_record_kras x JOIN kras k
               ON k.id = x.kra_id WHERE x.record_id = a.id AND k.state = 'active') <> 2")" = 0 ] || fail "a set is not 2 active KRAs"
as admin 0 rewrap --kra --dry-run
assert_out "0 of 27 record(s) to re-wrap"

note "the request released before the re-wrap completes after it; the pending one is released against the new wrap"
complete "$REL_REQ" "$(keyfile "$REL_ID")" 2
run_esc 0 recovery release "$PEND_REQ" --pin-file "$PIN_FILE"
complete "$PEND_REQ" "$(keyfile "$PEND_ID")" 2

note "recovered by kra3, which was not in the old set of a record of kra1 and kra2 (and alice's RSA key by kra3)"
ALICE=$(rec_of alice)
recover "$ALICE" "$T/alice.key" 3
# a record whose old set was kra1+kra2 is now kra2+kra3: kra3 was not in it
[ "$(set_of "$REL_ID")" = "kra2 kra3" ] || fail "record $REL_ID: set $(set_of "$REL_ID")"
recover "$REL_ID" "$(keyfile "$REL_ID")" 3

note "kra_threshold 2 of sets of 3 (kra4 enrolled): kill -9 in the third batch, then run again"
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA4' --kra-pin-file "$PIN_FILE" --name kra4 --key-type ec-p256
P11ESCROW_NEW_PASSWORD=$(cat "$T/k4.pw") as admin 0 account add k4 --role kra --kra kra4
as admin 0 policy set kra_set_size 3
as admin 0 policy set kra_threshold 2
as admin 0 rewrap --kra --dry-run
assert_out "27 of 27 record(s) to re-wrap"
grep -qE "^  threshold +27\$" "$T/out" || fail "--dry-run threshold count"
grep -qE "^  set size +27\$" "$T/out" || fail "--dry-run set size count"
P11ESCROW_FAULT_KILL=rewrap-kra-before-commit P11ESCROW_FAULT_KILL_SKIP=2 rewrap 137 $(card 2) $(card 3) --batch 5
[ "$(records)" = "$N" ] || fail "records lost by the kill"
V2=$(psql_val "SELECT count(*) FROM archive_records WHERE record_version = 2")
[ "$V2" = 10 ] || fail "two batches of 5 should have committed before the kill: $V2 version 2 records"
# Each record whole: version 2 with 3 KRAs, or version 1 with its 2, never between.
[ "$(psql_val "SELECT count(*) FROM archive_records a WHERE (a.record_version, a.wrap_version,
               (SELECT count(*) FROM archive_record_kras x WHERE x.record_id = a.id)) NOT IN ((2, 2, 3), (1, 1, 2))")" = 0 ] ||
    fail "a record is half re-wrapped"
HALF=$(psql_val "SELECT id FROM archive_records WHERE record_version = 1 AND subject LIKE '%CN=bob%'")
[ -z "$HALF" ] || recover "$HALF" "$T/bob.key" 2
# Archival goes on meanwhile: ten more keys imported while the job runs (new records are version 2 already).
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/more:10:100" || fail "cannot make the test keys"
"$ESC" archive import "$T/keys/more" --user admin --account-password-file "$T/admin.pw" >"$T/import.out" 2>&1 </dev/null &
IMPORT=$!
rewrap 0 $(card 2) $(card 3) --batch 5
assert_out "re-wrapped 17 record(s)"
wait "$IMPORT" || { cat "$T/import.out" >&2; fail "archival failed while the re-wrap ran"; }
grep -qF "archived 10, already archived 0" "$T/import.out" || fail "import during the re-wrap: $(cat "$T/import.out")"
N=$((N + 10))
[ "$(records)" = "$N" ] || fail "records lost"
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE record_version = 2 AND wrap_version = 2")" = "$N" ] ||
    fail "not every record is version 2"
[ "$(psql_val "SELECT count(*) FROM archive_record_kras")" = $((3 * N)) ] || fail "KRA sets of 3 expected"
as admin 0 rewrap --kra --dry-run
assert_out "0 of 37 record(s) to re-wrap"
run_esc 0 audit verify --user audrey --password-file "$T/audrey.pw"

note "2 of 3 recover byte for byte (RSA and EC), kra4 completing, which opened nothing"
recover "$(rec_of bob)" "$T/bob.key" 4 3
EC=$(psql_val "SELECT id FROM archive_records WHERE key_type LIKE 'ec%' ORDER BY id LIMIT 1")
recover "$EC" "$(keyfile "$EC")" 4 2
note "ok"
