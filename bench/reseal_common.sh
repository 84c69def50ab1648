# Shared by bench/storage_reseal and bench/kra_rewrap (sourced, not run): the release build, a work
# directory cleaned up at exit, throwaway SoftHSM2 tokens (the CA token and the KRA cards named in
# bench_kra_tokens, e.g. (--kra BENCH-KRA1)) and PostgreSQL, N archived keys, the CPU of PostgreSQL,
# and the report.  Expects: here, top, prog, build, keep, records, die, say.
[[ $build == /* ]] || build=$PWD/$build
for c in meson ninja softhsm2-util psql python3 /usr/bin/time; do
    command -v "$c" >/dev/null || die "missing $c: run scripts/bootstrap --no-build"
done
python3 -c 'import cryptography' 2>/dev/null || die "missing python3-cryptography (tests/tools/mkkeys.py)"
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

say "release build in $build"
if [[ ! -f $build/build.ninja ]]; then
    meson setup "$build" "$top" --buildtype=release -Dtests=false -Dwerror=false >"${TMPDIR:-/tmp}/bench-meson.log" 2>&1 ||
        { cat "${TMPDIR:-/tmp}/bench-meson.log" >&2; die "meson setup failed"; }
fi
ninja -C "$build" >"${TMPDIR:-/tmp}/bench-ninja.log" 2>&1 ||
    { tail -n 40 "${TMPDIR:-/tmp}/bench-ninja.log" >&2; die "the release build failed"; }
ESC=$build/src/cli/p11escrow
[[ -x $ESC ]] || die "$ESC was not built"

W=$(mktemp -d "${TMPDIR:-/tmp}/p11escrow-bench.XXXXXX")
chmod 0711 "$W"
pg_started=0
cleanup() {
    local rc=$?
    set +e
    if ((pg_started)); then "$top/tests/harness/pg-cluster" stop "$W/pg" >/dev/null 2>&1; fi
    if ((keep)); then echo "$prog: kept $W" >&2; else rm -rf -- "$W"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rnd() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 20; }
( umask 077; rnd >"$W/user.pin"; rnd >"$W/so.pin"; rnd >"$W/account.pw" )
PIN=$W/user.pin PW=$W/account.pw

say "SoftHSM2 tokens and PostgreSQL in $W"
"$top/hsm/provision-tokens" --dir "$W/hsm" --ca BENCH-CA "${bench_kra_tokens[@]}" \
    --pin-file "$PIN" --so-pin-file "$W/so.pin" >"$W/provision.log" 2>&1 ||
    { cat "$W/provision.log" >&2; die "token provisioning failed"; }
export SOFTHSM2_CONF=$W/hsm/softhsm2.conf
pg_started=1
"$top/tests/harness/pg-cluster" start "$W/pg" >"$W/pg.log" 2>&1 || { cat "$W/pg.log" >&2; die "PostgreSQL did not start"; }
DB=$(cat "$W/pg/conninfo")
export P11ESCROW_DATABASE=$DB P11ESCROW_LOCAL=1
unset P11ESCROW_CA_PIN P11ESCROW_MODULE P11ESCROW_CA_TOKEN || true
psql_val() { psql "$DB" -XAtq -c "$1"; }
esc() {
    "$ESC" "$@" >>"$W/cli.log" 2>&1 </dev/null || { tail -n 20 "$W/cli.log" >&2; die "p11escrow $1 $2 failed"; }
}


# bench_archive: $records foreign EC P-256 keys (tests/tools/mkkeys.py, two at once), archived by two
# imports at once; the records are then analysed.
bench_archive() {
    say "$records keys (tests/tools/mkkeys.py, two at once), archived by two imports at once"
    half=$((records / 2))
    t0=$(date +%s)
    # The foreign CA first (no keys), so that the two runs below share it.
    python3 "$top/tests/tools/mkkeys.py" "$W/keys/ca" "$W/keys/a:0:0" >/dev/null || die "mkkeys failed"
    python3 "$top/tests/tools/mkkeys.py" "$W/keys/ca" "$W/keys/a:$half:0" >/dev/null &
    mk_a=$!
    python3 "$top/tests/tools/mkkeys.py" "$W/keys/ca" "$W/keys/b:$((records - half)):$half" >/dev/null &
    mk_b=$!
    wait "$mk_a" || die "mkkeys failed"
    wait "$mk_b" || die "mkkeys failed"
    for d in a b; do
        "$ESC" archive import "$W/keys/$d" --user admin --account-password-file "$PW" >"$W/import.$d" 2>&1 </dev/null &
        eval "imp_$d=\$!"
    done
    # shellcheck disable=SC2154
    wait "$imp_a" || { tail -n 3 "$W/import.a" >&2; die "archive import failed"; }
    # shellcheck disable=SC2154
    wait "$imp_b" || { tail -n 3 "$W/import.b" >&2; die "archive import failed"; }
    have=$(psql_val "SELECT count(*) FROM archive_records")
    ((have == records)) || die "$have records archived, not $records"
    say "archived $records records in $(($(date +%s) - t0)) s"
    psql_val "VACUUM ANALYZE archive_records" >/dev/null
}

# pg_cpu: CPU seconds (user + system) of the PostgreSQL cluster so far: the postmaster's own and
# its reaped children's (backends that ended), plus every live child's.
pg_cpu() {
    local pm hz p pid
    pm=$(head -n 1 "$W/pg/data/postmaster.pid")
    hz=$(getconf CLK_TCK)
    for p in /proc/[0-9]*/stat; do
        pid=${p#/proc/}
        pid=${pid%/stat}
        sed 's/^.*) //' "$p" 2>/dev/null |
            awk -v pm="$pm" -v pid="$pid" 'pid == pm { print $12 + $13 + $14 + $15 } $2 == pm { print $12 + $13 }'
    done | awk -v hz="$hz" '{ s += $1 } END { printf "%.2f\n", s / hz }'
}

# bench_report TITLE N WALL USER SYS PG0 PG1: the figures of one timed run.
bench_report() {
    awk -v title="$1" -v n="$2" -v w="$3" -v u="$4" -v s="$5" -v p0="$6" -v p1="$7" -v l0="$load_at_start" \
        -v l1="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN {
        printf "\n%s (load average %s at start, %s at end)\n", title, l0, l1
        printf "  %-34s %10.1f s\n", "wall clock", w
        printf "  %-34s %10.0f records/s\n", "throughput", n / w
        printf "  %-34s %10.3f ms/record\n", "CPU, rewrap process (+ SoftHSM2)", 1000 * (u + s) / n
        printf "  %-34s %10.3f ms/record\n", "CPU, PostgreSQL (all processes)", 1000 * (p1 - p0) / n
        printf "  %-34s %10.3f ms/record\n", "CPU, both", 1000 * (u + s + p1 - p0) / n
    }'
}
