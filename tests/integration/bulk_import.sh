#!/bin/bash
# Bulk import in batches (issue #15: `archive import --jobs N --batch B`,
# esc_archive_keys): several threads, each with its own database session,
# archive batches of files in one transaction each.  Checks that the batch
# path keeps every guarantee of the key-by-key one: each refusal (a key
# that does not match its certificate, a key given twice in one run, one
# archived before) is reported and audited one by one and does not hold up
# the others; the records are exactly the files reported archived; kill -9
# in the middle loses nothing, and the run again archives exactly the rest;
# the audit chain verifies; bad --jobs/--batch values are usage errors.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB P11ESCROW_LOCAL=1
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Bulk Import Test CA,O=Example'
pw admin 'admin-password-0001'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --key-type ec-p256 --user admin --password-file "$T/admin.pw"
run_esc 0 policy set allow_foreign_issuers true --user admin --password-file "$T/admin.pw"

# import EXPECTED_RC ARGS...: `archive import` as the administrator, output in $T/out.
import() { local want=$1; shift; run_esc "$want" archive import --user admin --account-password-file "$T/admin.pw" "$@"; }
records() { psql_val "SELECT count(*) FROM archive_records"; }
events() { psql_val "SELECT count(*) FROM audit_events WHERE action = 'archive.store' AND outcome = '$1'"; }
assert_out() { grep -qF -- "$1" "$T/out" || fail "expected '$1' in the output"; }

note "bad --jobs / --batch values are usage errors, before any login"
import 2 --jobs 0 "$T"
assert_out "--jobs must be a number from 1 to 16"
import 2 --batch 501 "$T"
assert_out "--batch must be a number from 1 to 500"
import 2 --jobs 2x "$T"
run_esc 2 archive import --server https://127.0.0.1:1 --jobs 2 --user admin "$T"
assert_out "--jobs and --batch are for --local"

note "300 keys in batches of 17 by 3 threads, with a duplicate, a mismatched pair and one archived before"
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/a:300:0" "$T/keys/pre:1:0" "$T/keys/b:600:1000" ||
    fail "cannot make the test keys"
import 0 "$T/keys/pre" # k000000, also in a/
cp "$T/keys/a/k000123.pem" "$T/keys/a/k000123-again.pem"          # the same key twice in one run
{ sed -n '/BEGIN PRIVATE KEY/,/END PRIVATE KEY/p' "$T/keys/a/k000007.pem"
  sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/keys/a/k000008.pem"; } >"$T/keys/a/mismatch.pem"
ok0=$(events ok) refused0=$(events refused)
import 32 --jobs 3 --batch 17 "$T/keys/a"
assert_out "archived 299, already archived 2, refused 1, failed 0"
assert_out "refused $T/keys/a/mismatch.pem: the private key does not match the certificate's public key"
grep -q "^already archived $T/keys/a/k000123-again.pem: as record .* (same certificate)" "$T/out" ||
    grep -q "^already archived $T/keys/a/k000123.pem: as record .* (same certificate)" "$T/out" ||
    fail "the key given twice is not reported already archived"
grep -q "^already archived $T/keys/a/k000000.pem: as record .* (same certificate)" "$T/out" ||
    fail "the key archived before is not reported already archived"
[ "$(grep -c '^archived ' "$T/out")" = 300 ] || fail "expected one line per archived file and the summary"
[ "$(records)" = 300 ] || fail "expected 300 records (1 before + 299), have $(records)"
# The records are exactly the files reported archived: each reported id is a row, for that file's certificate.
grep '^archived .*: record ' "$T/out" | sed 's/^archived \(.*\): record \([0-9a-f-]*\) .*/\1 \2/' | sort >"$T/reported"
[ "$(wc -l <"$T/reported")" = 299 ] || fail "expected 299 'archived FILE: record ID' lines"
bad=0
while read -r f id; do
    want=$(openssl x509 -in "$f" -outform DER | sha256sum | cut -d' ' -f1)
    [ "$(psql_val "SELECT cert_sha256 FROM archive_records WHERE id = '$id'")" = "$want" ] || bad=$((bad + 1))
done < <(sed -n '1~25p' "$T/reported") # every 25th line: the whole file takes too long one psql at a time
[ "$bad" = 0 ] || fail "$bad reported records do not hold their file's certificate"
[ "$(events ok)" = $((ok0 + 299)) ] || fail "expected 299 archive.store ok events, have $(($(events ok) - ok0))"
[ "$(events refused)" = $((refused0 + 3)) ] || fail "expected 3 refusals audited, have $(($(events refused) - refused0))"
[ "$(psql_val "SELECT count(*) FROM archive_record_kras")" = 300 ] || fail "every record needs its KRA row"

note "kill -9 in the middle of 600 files, then the same run again: nothing lost, nothing twice"
"$ESC" archive import --jobs 2 --batch 20 --user admin --account-password-file "$T/admin.pw" "$T/keys/b" \
    >"$T/killed.out" 2>&1 </dev/null &
imp=$!
for _ in $(seq 600); do
    [ "$(records)" -ge 380 ] && break
    kill -0 "$imp" 2>/dev/null || break
    sleep 0.05
done
kill -9 "$imp" 2>/dev/null || true
wait "$imp" 2>/dev/null || true
mid=$(( $(records) - 300 ))
note "killed with $mid of 600 committed"
[ "$mid" -lt 600 ] || note "(the import finished before the kill: the rerun then archives nothing new)"
import 0 --jobs 2 --batch 20 "$T/keys/b"
assert_out "archived $((600 - mid)), already archived $mid, refused 0, failed 0"
[ "$(records)" = 900 ] || fail "expected 900 records after the rerun, have $(records)"
[ "$(psql_val "SELECT count(DISTINCT cert_sha256) FROM archive_records")" = 900 ] || fail "a record is there twice"

note "the audit chain verifies"
run_esc 0 audit verify
echo ok
