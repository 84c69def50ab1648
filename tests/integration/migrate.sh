#!/bin/bash
# p11escrow db migrate / status: idempotent, versioned, refuses newer schemas.
. "$(dirname "$0")/lib.sh"

start_pg "$T/pg"

run_esc 23 db status --database "$DB"
assert_out "database schema version: 0"
run_esc 0 db migrate --database "$DB"
assert_out "schema migrated from version 0 to $SCHEMA_VERSION"
run_esc 0 db migrate --database "$DB"
assert_out "nothing to do"
[ "$(psql_val "SELECT count(*) FROM p11escrow_schema")" = "$SCHEMA_VERSION" ] || fail "migration recorded twice"
run_esc 0 db status --database "$DB"
assert_out "database schema version: $SCHEMA_VERSION"

note "concurrent migrations serialise"
createdb -h "$(sed -n 's/.*host=\([^ ]*\).*/\1/p' <<<"$DB")" -p "$(sed -n 's/.*port=\([^ ]*\).*/\1/p' <<<"$DB")" -U postgres race
DBR=${DB/dbname=p11escrow/dbname=race}
pids=()
for i in 1 2 3 4; do "$ESC" db migrate --database "$DBR" >"$T/race$i" 2>&1 & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "a concurrent migrate failed: $(cat "$T"/race*)"; done
[ "$(psql "$DBR" -XAtqc "SELECT count(*) FROM p11escrow_schema")" = "$SCHEMA_VERSION" ] || fail "race recorded twice"

note "the environment names the database too"
P11ESCROW_DATABASE=$DB run_esc 0 db status

note "a newer schema is refused and left alone"
psql_val "INSERT INTO p11escrow_schema (version, name) VALUES (999, 'from_the_future')" >/dev/null
run_esc 22 db migrate --database "$DB"
assert_out "upgrade p11escrow"
run_esc 22 db status --database "$DB"
[ "$(psql_val "SELECT max(version) FROM p11escrow_schema")" = 999 ] || fail "newer schema touched"

note "database unreachable"
run_esc 20 db migrate --database "host=$T/none dbname=x"
assert_out "cannot connect to the database"
run_esc 2 db frob
run_esc 2 db
echo ok
