#!/bin/bash
# k of n KRAs (issue #14): policy kra_threshold and its bounds; records of
# version 2 with kra_threshold 2 / kra_set_size 3, opened with stock tools as
# docs/archival.md shows (each share on its own card, gfcombine, openssl cms
# -secretkey): any 2 of the 3 KRAs get the key back byte for byte, one KRA
# gets nothing, a damaged share and a share swapped in from another record
# are detected before combining.  Then through p11escrow (local mode):
# release stores the sealed shares, another KRA contributes its share
# re-sealed to the completer, completion with fewer than k is refused saying
# how many are in, the same KRA counts once, damaged and swapped shares are
# refused before combining, 2 KRAs recover byte for byte.  k = 1 records are
# still version 1.
. "$(dirname "$0")/lib.sh"
command -v gfcombine >/dev/null || skip "gfcombine (libgfshare-bin) is not installed"

provision_tokens "$T/hsm" CA KRA1 KRA2 KRA3
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=KofN Test CA,O=Example'
pw admin 'admin-password-0001'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --name kra2 \
    --key-type ec-p256
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --name kra3
as admin 0 policy set allow_foreign_issuers true

note "policy: kra_threshold defaults to 1 and never exceeds kra_set_size"
[ "$(psql_val "SELECT value FROM policy WHERE key = 'kra_threshold'")" = 1 ] || fail "kra_threshold default"
as admin 2 policy set kra_threshold 2
assert_out "kra_threshold (2) may not exceed kra_set_size (1)"
as admin 2 policy set kra_threshold 0
as admin 2 policy set kra_threshold 17
as admin 0 policy set kra_set_size 3
as admin 0 policy set kra_threshold 2
as admin 2 policy set kra_set_size 1
assert_out "kra_threshold (2) may not exceed kra_set_size (1)"
[ "$(psql_val "SELECT value FROM policy WHERE key = 'kra_set_size'")" = 3 ] || fail "refused change stored"
! psql_val "UPDATE policy SET value = '99' WHERE key = 'kra_threshold'" >/dev/null 2>&1 ||
    fail "the database accepted kra_threshold 99"

note "two keys archived 2 of 3 (RSA and EC): version 2 records, one archive_record_kras row per KRA"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj /CN=Alice -days 30 \
    -addext keyUsage=critical,keyEncipherment -out "$T/alice.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/bob.key" -subj /CN=Bob -days 30 \
    -addext keyUsage=critical,keyAgreement -out "$T/bob.pem" 2>/dev/null
for u in alice bob; do
    run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/$u.key" --cert "$T/$u.pem"
done
rec_of() { psql_val "SELECT id FROM archive_records WHERE subject LIKE '%CN=$1%'"; }
ALICE=$(rec_of Alice) BOB=$(rec_of Bob)
[ -n "$ALICE" ] && [ -n "$BOB" ] || fail "records not found"
[ "$(psql_val "SELECT count(*) FROM archive_record_kras WHERE record_id = '$ALICE'")" = 3 ] || fail "KRA set rows"
psql_val "SELECT details FROM audit_events WHERE action = 'archive.store' AND details LIKE '%$ALICE%'" >"$T/out"
assert_out "3 KRA(s), 2 needed"

# Steps 1-4 of the version 1 walkthrough, then the version 2 one.
awk '/^<!-- walkthrough:.*record_openssl\.sh/ { on = 1 } /^<!-- walkthrough end/ { on = 0 }
     on && /^```sh$/ { sh = 1; next } /^```/ { sh = 0 } on && sh' "$P11ESCROW_SRC/docs/archival.md" |
    awk '/^# 5\./ { exit } { print }' >"$T/walkthrough.sh"
awk '/^<!-- walkthrough:.*kofn\.sh/ { on = 1 } /^<!-- walkthrough end/ { on = 0 }
     on && /^```sh$/ { sh = 1; next } /^```/ { sh = 0 } on && sh' "$P11ESCROW_SRC/docs/archival.md" \
    >>"$T/walkthrough.sh"
grep -q 'gfcombine' "$T/walkthrough.sh" || fail "no version 2 walkthrough in docs/archival.md"

# walk RECORD "KRAS": the walkthrough ($T/walkthrough.sh) in a fresh private directory, output in $T/out.
walk() {
    rm -rf "$T/walk" && mkdir -m 700 "$T/walk"
    cp "$PIN_FILE" "$T/walk/ca.pin"
    for k in kra1 kra2 kra3; do cp "$PIN_FILE" "$T/walk/$k.pin"; done
    ( cd "$T/walk" && RECORD=$1 KRAS=$2 bash -euo pipefail "$T/walkthrough.sh" ) >"$T/out" 2>&1
}
for u in alice bob; do
    r=$ALICE; [ $u = bob ] && r=$BOB
    for set in "kra1 kra2" "kra3 kra1" "kra2 kra3" "kra1 kra2 kra3"; do
        note "$u's record, shares of $set"
        walk "$r" "$set" || fail "the walkthrough failed for $u with $set"
        assert_out "record version 2: 2 KRA(s) needed"
        assert_out "key matches the certificate"
        assert_not_out "DOES NOT MATCH ITS COMMITMENT"
        assert_not_out "ANOTHER RECORD'S"
        assert_not_out "ANOTHER SHARE"
        cmp -s <(openssl pkey -in "$T/walk/key.pem" -outform DER) <(openssl pkey -in "$T/$u.key" -outform DER) ||
            fail "$u's key from $set differs from the archived one"
        [ -z "$(find "$T/walk" -name 'kek*' -o -name '*.raw' -o -name 'share.der')" ] || fail "secrets left behind"
    done
done

note "one KRA's share recovers nothing"
rc=0; walk "$ALICE" "kra2" || rc=$?
[ "$rc" -ne 0 ] || fail "one share opened the record"
[ ! -e "$T/walk/key.p8" ] || fail "one share wrote a key"
assert_out "Insufficient input files"

note "a damaged share: its commitment no longer matches (detected before combining)"
# The walkthrough's step 6 with one byte of kra1's decrypted share flipped (XOR 1, in the share bytes),
# as a damaged card or file would.
cat >"$T/flip.sh" <<'FLIP'
off=$(($(stat -c %s "$1") - 5))
b=$(od -An -tu1 -j "$off" -N1 "$1" | tr -d ' ')
printf "\\x$(printf %02x $((b ^ 1)))" | dd of="$1" bs=1 seek="$off" conv=notrunc 2>/dev/null
FLIP
sed 's|^\( *\)rm -f kra.pin.raw$|&\n\1[ "$KRA" != kra1 ] \|\| bash "$FLIP" share.der|' "$T/walkthrough.sh" >"$T/damaged.sh"
grep -q 'FLIP' "$T/damaged.sh" || fail "could not prepare the damaged-share run"
export FLIP=$T/flip.sh
cp "$T/walkthrough.sh" "$T/walkthrough.good" && cp "$T/damaged.sh" "$T/walkthrough.sh"
rc=0; walk "$ALICE" "kra1 kra2" || rc=$?
[ "$rc" -ne 0 ] || fail "a damaged share did not stop the walkthrough"
assert_out "SHARE OF kra1 DOES NOT MATCH ITS COMMITMENT"
[ ! -e "$T/walk/key.p8" ] && ! ls "$T/walk"/kek.* >/dev/null 2>&1 || fail "combined with a damaged share"
cp "$T/walkthrough.good" "$T/walkthrough.sh"

note "a share swapped in from another record: refused by its binding after decryption"
# bob's kra1 share, decrypted, in place of alice's, its commitment forged to match (as one who can
# rewrite the record could), so the binding inside the share is what refuses it.
sed 's/^\( *\)rm -f kra.pin.raw$/&\n\1[ "$KRA" != kra1 ] || { cp "$SWAP" share.der; c=$(sha256sum <share.der | cut -d" " -f1); }/' \
    "$T/walkthrough.good" >"$T/walkthrough.sh"
# a decrypted share of bob's record, from the step 6 of a run stopped before its rm
sed 's/^\( *\)rm -f share.der share.txt$/\1cp share.der "$SWAP_OUT"; &/' "$T/walkthrough.good" >"$T/grab.sh"
( rm -rf "$T/walk" && mkdir -m 700 "$T/walk" && cp "$PIN_FILE" "$T/walk/ca.pin" && cp "$PIN_FILE" "$T/walk/kra1.pin" &&
  cd "$T/walk" && RECORD=$BOB KRAS=kra1 SWAP_OUT=$T/bob-share.der bash -euo pipefail "$T/grab.sh" ) >/dev/null 2>&1 || true
[ -s "$T/bob-share.der" ] || fail "could not take bob's share"
rm -rf "$T/walk" && mkdir -m 700 "$T/walk" && cp "$PIN_FILE" "$T/walk/ca.pin"
for k in kra1 kra2 kra3; do cp "$PIN_FILE" "$T/walk/$k.pin"; done
( cd "$T/walk" && RECORD=$ALICE KRAS="kra1 kra2" SWAP=$T/bob-share.der bash -euo pipefail "$T/walkthrough.sh" ) \
    >"$T/out" 2>&1 && fail "a swapped share did not stop the walkthrough"
assert_out "SHARE OF kra1 IS ANOTHER RECORD'S"
[ ! -e "$T/walk/key.p8" ] || fail "combined with a swapped share"
rm -f "$T/bob-share.der"
cp "$T/walkthrough.good" "$T/walkthrough.sh"

note "through p11escrow (local): request names the completing KRA, release stores every sealed share"
pw cm1 'cm1-password-00001'
P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
for k in 1 2 3; do
    pw "kra$k-acct" "kra$k-password-0001"
    P11ESCROW_NEW_PASSWORD=$(cat "$T/kra$k-acct.pw") as admin 0 account add "kra$k-acct" --role kra --kra "kra$k"
done
as cm1 0 recovery request --record "$ALICE" --reason "lost laptop" --kra kra1
REQ=$(psql_val "SELECT max(id) FROM recovery_requests")
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
[ "$(psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $REQ AND contributed IS NULL")" = 3 ] ||
    fail "release did not store the three sealed shares"
psql_val "SELECT details FROM audit_events WHERE action = 'recovery.release' ORDER BY id DESC LIMIT 1" >"$T/out"
assert_out "to complete with 2 of its 3 KRAs' shares"
# The service holds ciphertext only: no share plaintext (ShareInfo with the record id) in the database.
psql_val "SELECT encode(sealed, 'hex') FROM recovery_shares WHERE request_id = $REQ" >"$T/out"
assert_not_out "$(printf %s "$ALICE" | xxd -p -c 64)"

note "fewer than k shares: completion refused, saying how many are in"
as kra1-acct 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a0.p12"
assert_out "has 1 of the 2 shares it needs"
[ ! -e "$T/a0.p12" ] || fail "a refused completion left its output"
note "the completer cannot contribute its own share; a KRA outside the request cannot contribute twice"
as kra1-acct 41 recovery contribute "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE"
assert_out "its own share is opened at completion"
as cm1 51 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
as kra2-acct 14 recovery contribute "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE"
as kra2-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
assert_out "2 of 2 share(s) in: it can complete"
as kra2-acct 41 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
assert_out "already contributed its share to request $REQ: a KRA counts once"
[ "$(psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $REQ AND contributed IS NOT NULL")" = 1 ] ||
    fail "the same KRA counted twice"

note "a damaged contributed share is detected before combining"
psql_val "UPDATE recovery_shares SET contributed = set_byte(contributed, length(contributed) - 6, get_byte(contributed, length(contributed) - 6) # 1)
          WHERE request_id = $REQ AND contributed IS NOT NULL" >/dev/null
as kra1-acct 33 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a1.p12"
assert_out "does not open on this card"
note "a share swapped from another record: its binding refuses it before combining"
# kra3's contributed share of bob's request (and its commitment) moved into alice's request.
as cm1 0 recovery request --record "$BOB" --reason "lost phone" --kra kra1
REQB=$(psql_val "SELECT max(id) FROM recovery_requests")
run_esc 0 recovery release "$REQB" --pin-file "$PIN_FILE"
as kra3-acct 0 recovery contribute "$REQB" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE"
psql_val "UPDATE recovery_shares a SET contributed = b.contributed, commitment = b.commitment
          FROM recovery_shares b WHERE a.request_id = $REQ AND a.kra_id = (SELECT id FROM kras WHERE name = 'kra2')
          AND b.request_id = $REQB AND b.kra_id = (SELECT id FROM kras WHERE name = 'kra3')" >/dev/null
as kra1-acct 33 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/a2.p12"
assert_out "is another record's"
note "bob's request completes with kra1 (completer) and kra3: the key byte for byte"
as kra1-acct 0 recovery complete "$REQB" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/bob.p12" \
    --p12-password-file "$T/cm1.pw"
openssl pkcs12 -in "$T/bob.p12" -nocerts -nodes -passin "file:$T/cm1.pw" 2>/dev/null | openssl pkey -outform DER >"$T/bob.got"
cmp -s "$T/bob.got" <(openssl pkey -in "$T/bob.key" -outform DER) || fail "bob's recovered key differs"
[ "$(psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $REQB AND (sealed IS NOT NULL OR
               contributed IS NOT NULL)")" = 0 ] || fail "shares kept after completion"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQB")" = completed ] || fail "not completed"
note "alice's: a fresh request, kra2 completing with kra3's share"
as cm1 0 recovery cancel "$REQ" --reason "shares tampered with in the test"
[ "$(psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $REQ AND (sealed IS NOT NULL OR
               contributed IS NOT NULL)")" = 0 ] || fail "shares kept after cancel"
as cm1 0 recovery request --record "$ALICE" --reason "lost laptop again" --kra kra2
REQ=$(psql_val "SELECT max(id) FROM recovery_requests")
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
as kra3-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE"
as kra2-acct 0 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/alice.p12" \
    --p12-password-file "$T/cm1.pw"
openssl pkcs12 -in "$T/alice.p12" -nocerts -nodes -passin "file:$T/cm1.pw" 2>/dev/null |
    openssl pkey -outform DER >"$T/alice.got"
cmp -s "$T/alice.got" <(openssl pkey -in "$T/alice.key" -outform DER) || fail "alice's recovered key differs"

note "k = 1 again: new records are version 1, recovered by one KRA as always"
as admin 0 policy set kra_threshold 1
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/carol.key" -subj /CN=Carol -days 30 \
    -addext keyUsage=critical,keyEncipherment -out "$T/carol.pem" 2>/dev/null
run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/carol.key" --cert "$T/carol.pem"
CAROL=$(rec_of Carol)
awk '/^<!-- walkthrough:.*record_openssl\.sh/ { on = 1 } /^<!-- walkthrough end/ { on = 0 }
     on && /^```sh$/ { sh = 1; next } /^```/ { sh = 0 } on && sh' "$P11ESCROW_SRC/docs/archival.md" >"$T/v1.sh"
rm -rf "$T/walk" && mkdir -m 700 "$T/walk" && cp "$PIN_FILE" "$T/walk/ca.pin" && cp "$PIN_FILE" "$T/walk/kra.pin"
( cd "$T/walk" && RECORD=$CAROL KRA=kra3 bash -euo pipefail "$T/v1.sh" ) >"$T/out" 2>&1 || fail "v1 walkthrough"
assert_out "key matches the certificate"
grep -q "INTEGER *:01" "$T/walk/record.txt" || fail "carol's record is not version 1"
cmp -s <(openssl pkey -in "$T/walk/key.pem" -outform DER) <(openssl pkey -in "$T/carol.key" -outform DER) ||
    fail "carol's key differs"
note "ok"
