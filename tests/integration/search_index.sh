#!/bin/bash
# Archive search and audit filters are index lookups at any size (sql/015):
# the plans PostgreSQL actually ran for the library's statements — logged by
# auto_explain, for the CLI (one-off statements) and for p11escrowd (prepared
# statements, run often enough for PostgreSQL to consider a generic plan) —
# use the serial, email, subject-trigram and audit indexes on tables of
# 20,000 rows; and the results are what they were: serial with or without
# leading zeros and colons, in either case; email exact but case-blind;
# subject a case-blind substring in which % _ and \ are literal.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Search Index Test CA,O=Example'

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --key-type ec-p256
P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
P11ESCROW_NEW_PASSWORD=$(cat "$T/audrey.pw") as admin 0 account add audrey --role auditor
as admin 0 policy set allow_foreign_issuers true

note "pg_trgm: created by the migration, as a trusted extension"
[ "$(psql_val "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")" = 1 ] || fail "pg_trgm not installed"
[ "$(psql_val "SELECT trusted FROM pg_available_extension_versions WHERE name = 'pg_trgm' AND version =
               (SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm')")" = t ] ||
    fail "pg_trgm is not a trusted extension here: the database owner could not create it"

note "a database owned by a role that is no superuser: db migrate creates pg_trgm (trusted) by itself"
psql_val "CREATE ROLE esc_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE" >/dev/null
psql_val "CREATE DATABASE owned OWNER esc_owner" >/dev/null
OWNED=${DB/user=postgres/user=esc_owner}
OWNED=${OWNED/dbname=p11escrow/dbname=owned}
[ "$(psql "$OWNED" -XAtqc "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")" = f ] || fail "esc_owner is a superuser"
run_esc 0 db migrate --database "$OWNED"
assert_out "to $SCHEMA_VERSION"
[ "$(psql "$OWNED" -XAtqc "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")" = 1 ] ||
    fail "pg_trgm not created in a database of a non-superuser owner"

note "keys whose serial, subject and email test the matching rules (a foreign software CA)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/fca.key" -subj "/CN=Foreign CA" \
    -days 30 -out "$T/fca.pem" 2>/dev/null || fail "foreign CA"
# issue NAME SERIAL SUBJECT EMAIL: NAME.pem (key and certificate, for archive import) in $T/keys.
mkdir -p "$T/keys"
issue() {
    printf 'keyUsage=critical,keyAgreement\nsubjectAltName=email:%s\n' "$4" >"$T/$1.ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$1.key" 2>/dev/null
    openssl req -new -key "$T/$1.key" -subj "$3" -out "$T/$1.csr" 2>/dev/null
    openssl x509 -req -in "$T/$1.csr" -CA "$T/fca.pem" -CAkey "$T/fca.key" -set_serial "$2" -days 30 \
        -extfile "$T/$1.ext" -out "$T/$1.crt" 2>/dev/null || fail "issuing $1"
    cat "$T/$1.key" "$T/$1.crt" >"$T/keys/$1.pem"
}
# First byte 0x0a: the column keeps the leading zero ("0a1b..."), the search ignores it.
issue lead 0x0A1B2C3D4E5F60718293 "/CN=Leading Zero/O=Example" lead@example.org
issue pct 0x51 "/CN=100%_done/O=Example" pct@example.org
issue under 0x52 "/CN=under_score/O=Example" under@example.org
issue nounder 0x53 "/CN=underXscore/O=Example" nounder@example.org
issue back 0x54 "/CN=back\\\\slash/O=Example" back@example.org
issue mixed 0x55 "/CN=Mixed Case/O=Example" Mixed.Case@Example.ORG
as admin 0 archive import "$T/keys" --account-password-file "$T/admin.pw"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = 6 ] || fail "not all six keys archived"
[ "$(psql_val "SELECT cert_serial FROM archive_records WHERE subject LIKE '%Leading%'")" = 0a1b2c3d4e5f60718293 ] ||
    fail "the serial is not stored with its leading zero: the test no longer tests leading zeros"

# found ARGS...: `recovery search ARGS` as cm1; the CNs it shows, sorted, comma-separated, in $found.
found() {
    as cm1 0 recovery search "$@"
    found=$(sed -n 's/^  subject: .*CN=\([^,]*\).*/\1/p' "$T/out" | sort | paste -sd, -)
}
expect() { local want=$1; shift; found "$@"; [ "$found" = "$want" ] || fail "search $* found '$found', expected '$want'"; }
# check_results: every matching rule, on whatever the tables hold now.
check_results() {
    expect "Leading Zero" --serial 0a1b2c3d4e5f60718293
    expect "Leading Zero" --serial A1B2C3D4E5F60718293
    expect "Leading Zero" --serial 000a1b2c3d4e5f60718293
    expect "Leading Zero" --serial 0A:1B:2C:3D:4E:5F:60:71:82:93
    expect "" --serial a1b2c3d4e5f6071829
    expect "Mixed Case" --email Mixed.Case@Example.ORG
    expect "Mixed Case" --email mixed.case@example.org
    expect "Mixed Case" --email MIXED.CASE@EXAMPLE.ORG
    expect "" --email mixed.case@example
    expect "" --email ixed.case@example.org
    expect "under_score" --subject under_score
    expect "under_score" --subject UNDER_SCORE
    expect "underXscore" --subject underx
    expect "100%_done" --subject '%_'
    expect "100%_done" --subject 100%
    expect "" --subject '1%done'
    expect "" --subject 'under%score'
    expect "" --subject '_nder'
    # openssl writes CN=back\\slash as the two characters "\\" ... shown as the name says
    expect "$(psql_val "SELECT substring(subject from 'CN=([^,]*)') FROM archive_records WHERE email = 'back@example.org'")" \
        --subject 'back\'
    expect "" --subject '\x'
    expect "Leading Zero" --subject leading --serial a1b2c3d4e5f60718293 --email LEAD@example.org
    expect "" --subject trailing --serial a1b2c3d4e5f60718293
}
note "results on six records"
check_results
as cm1 2 recovery search --subject "$(head -c 1025 /dev/zero | tr '\0' x)"
assert_out "at most 1024"

note "20,000 more rows (copies of a record under new identities; search reads only their columns) and audit events"
psql "$DB" -Xq -v ON_ERROR_STOP=1 >"$T/fill.log" 2>&1 <<'EOF' || fail "filling: $(cat "$T/fill.log")"
INSERT INTO archive_records (id, cert_serial, issuer, subject, email, cert_sha256, public_key_sha256, key_type,
                             certificate, foreign_issuer, source, record, created_at)
SELECT gen_random_uuid(), to_hex(1000000 + g), r.issuer, 'CN=filler ' || g || ',O=Filler', 'filler' || g || '@example.net',
       encode(sha256(('c' || g)::bytea), 'hex'), encode(sha256(('k' || g)::bytea), 'hex'), r.key_type,
       r.certificate, r.foreign_issuer, r.source, r.record, now() - make_interval(secs => g)
FROM generate_series(1, 20000) g, (SELECT * FROM archive_records WHERE email = 'pct@example.org') r;
INSERT INTO archive_record_kras (record_id, kra_id, recipient)
SELECT a.id, t.kra_id, t.recipient FROM archive_records a,
       (SELECT x.* FROM archive_record_kras x JOIN archive_records r ON r.id = x.record_id
        WHERE r.email = 'pct@example.org') t
WHERE a.subject LIKE 'CN=filler %';
-- Audit rows for the filter plans only (this test does not verify the chain after them).
INSERT INTO audit_events (id, at, actor, role, action, object, outcome, details, prev_hash, hash)
SELECT nextval('audit_events_id_seq'), '2020-01-01T00:00:00.' || lpad(g::text, 6, '0') || 'Z', 'filler' || (g % 50),
       'cert-manager', 'archive.store', to_hex(1000000 + g), 'ok', '', sha256(('p' || g)::bytea),
       sha256(('h' || g)::bytea)
FROM generate_series(1, 20000) g;
ANALYZE archive_records; ANALYZE archive_record_kras; ANALYZE audit_events; ANALYZE recovery_requests;
EOF
check_results

note "the plans PostgreSQL ran (auto_explain), from the CLI"
psql "$DB" -Xq -v ON_ERROR_STOP=1 >"$T/ae.log" 2>&1 <<'EOF' || fail "auto_explain: $(cat "$T/ae.log")"
ALTER DATABASE p11escrow SET session_preload_libraries = 'auto_explain';
ALTER DATABASE p11escrow SET auto_explain.log_min_duration = 0;
EOF
PGLOG=$T/pg/postgres.log
# plan_of MARK PATTERN: the plans, since log offset MARK, of statements whose text holds PATTERN.
plan_of() {
    tail -c +"$(($1 + 1))" "$PGLOG" | awk -v pat="$2" '
        /^[0-9]{4}-/ { on = 0 }
        /Query Text:/ && index($0, pat) { on = 1; n++; print "---- plan " n }
        on { print }'
}
# uses MARK PATTERN INDEX WHAT: every plan of PATTERN since MARK (at least one) scans INDEX.
uses() {
    plan_of "$1" "$2" >"$T/plan"
    local plans bad
    plans=$(grep -c '^---- plan' "$T/plan" || true)
    ((plans > 0)) || fail "$4: no plan logged for a statement with '$2'"
    bad=$(awk -v idx="$3" '/^---- plan/ { if (n && !hit) bad++; n++; hit = 0 } index($0, idx) { hit = 1 }
                           END { if (n && !hit) bad++; print bad + 0 }' "$T/plan")
    [ "$bad" = 0 ] || { sed 's/^/  | /' "$T/plan" >&2; fail "$4: $bad of $plans plan(s) do not use $3"; }
    grep -q 'Seq Scan on archive_records\|Seq Scan on audit_events' "$T/plan" &&
        { sed 's/^/  | /' "$T/plan" >&2; fail "$4: a sequential scan of a large table"; }
    note "$4: $plans plan(s), each through $3"
}
mark() { stat -c %s "$PGLOG"; }
m=$(mark); expect "Leading Zero" --serial 000A1B2C3D4E5F60718293
uses "$m" "ltrim(a.cert_serial, '0') = \$2" archive_records_serial_norm_idx "search by serial (CLI)"
m=$(mark); expect "Mixed Case" --email MIXED.case@example.org
uses "$m" "lower(a.email) = lower(\$2)" archive_records_email_lower_idx "search by email (CLI)"
m=$(mark); expect "under_score" --subject r_sc
uses "$m" "a.subject ILIKE \$2" archive_records_subject_trgm_idx "search by subject (CLI)"
m=$(mark); as audrey 0 audit show --actor cm1
uses "$m" "actor = \$1" audit_events_actor_id_idx "audit show --actor (CLI)"
m=$(mark); as audrey 0 audit show --since "$(date -u +%Y-%m-%dT%H:%M:%S -d '-1 hour')"
[ "$(grep -c ' archive.store ' "$T/out")" = 6 ] || fail "audit show --since: not the six archivals"
uses "$m" "at >= \$1" audit_events_at_idx "audit show --since (CLI)"
m=$(mark); as audrey 0 audit show --serial 0A1B2C3D4E5F60718293
assert_out "archive.store"
uses "$m" "object = ANY (ARRAY[\$1::text" audit_events_object_id_idx "audit show --serial (CLI)"
uses "$m" "object = ANY (ARRAY[\$1::text" archive_records_serial_norm_idx "audit show --serial, its records (CLI)"
m=$(mark)
LEAD_ID=$(psql_val "SELECT id FROM archive_records WHERE email = 'lead@example.org'")
as cm1 0 recovery request --record "$LEAD_ID" --reason "plan check at 20,000 records"
uses "$m" "a.id::text = \$1" archive_records_id_text_idx "recovery request: its record (CLI)"
uses "$m" "x.record_id::text = \$1" archive_record_kras_record_text_idx "recovery request: its KRAs (CLI)"

note "through p11escrowd: one worker, the same statement eight times (PostgreSQL weighs a generic plan after five)"
start_daemon 1
for kind in serial email subject; do
    m=$(mark)
    for i in 1 2 3 4 5 6 7 8; do
        case $kind in
        serial) srv cm1 0 recovery search --serial "$(printf '%x' $((1000000 + i * 7)))"; pat="ltrim(a.cert_serial, '0') = \$2"
            idx=archive_records_serial_norm_idx ;;
        email) srv cm1 0 recovery search --email "FILLER$((i * 7))@example.net"; pat="lower(a.email) = lower(\$2)"
            idx=archive_records_email_lower_idx ;;
        subject) srv cm1 0 recovery search --subject "filler $((i * 7 + 100)),"; pat="a.subject ILIKE \$2"
            idx=archive_records_subject_trgm_idx ;;
        esac
        grep -q "^record " "$T/out" || fail "search by $kind through the service found nothing"
    done
    uses "$m" "$pat" "$idx" "search by $kind (service)"
done
m=$(mark)
for who in cm1 admin audrey cm1 admin audrey cm1 admin; do srv audrey 0 audit show --actor "$who"; done
uses "$m" "actor = \$1" audit_events_actor_id_idx "audit show --actor (service)"
stop_daemon
echo ok
