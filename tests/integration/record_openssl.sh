#!/bin/bash
# docs/archival.md's "Opening a record with stock tools", run as written:
# psql, openssl cms with the PKCS#11 engine (the CA token's storage key, then
# a KRA card: RSA-OAEP and ECDH), openssl asn1parse to cut the EscrowRecord
# open.  Each KRA of the record's set gets the archived key back byte for
# byte; a record copied into another row is reported by step 3.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Record Test CA,O=Example'
pw admin 'admin-password-0001'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --name kra2 \
    --key-type ec-p256
as admin 0 policy set kra_set_size 2
as admin 0 policy set allow_foreign_issuers true

note "two users' keys archived (RSA and EC), each wrapped to both KRAs"
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

# The sh blocks of the walkthrough that names this test (docs/archival.md holds another).
awk '/^<!-- walkthrough:.*record_openssl\.sh/ { on = 1 } /^<!-- walkthrough end/ { on = 0 }
     on && /^```sh$/ { sh = 1; next } /^```/ { sh = 0 } on && sh' "$P11ESCROW_SRC/docs/archival.md" >"$T/walkthrough.sh"
grep -q 'openssl cms -decrypt' "$T/walkthrough.sh" || fail "no stock-tools walkthrough in docs/archival.md"

# walk RECORD KRA: the walkthrough in a fresh private directory, output in $T/out.
walk() {
    rm -rf "$T/walk" && mkdir -m 700 "$T/walk"
    cp "$PIN_FILE" "$T/walk/ca.pin" && cp "$PIN_FILE" "$T/walk/kra.pin"
    ( cd "$T/walk" && RECORD=$1 KRA=$2 bash -euo pipefail "$T/walkthrough.sh" ) >"$T/out" 2>&1 ||
        fail "the walkthrough failed for record $1 with $2"
}
for k in kra1 kra2; do
    for u in alice bob; do
        note "$u's record, inner layer opened on $k's card"
        r=$ALICE; [ $u = bob ] && r=$BOB
        walk "$r" "$k"
        assert_out "key matches the certificate"
        assert_not_out "NOT THIS ROW'S RECORD"
        assert_not_out "SEALED FOR ANOTHER CERTIFICATE"
        assert_not_out "KEY DOES NOT MATCH"
        cmp -s <(openssl pkey -in "$T/walk/key.pem" -outform DER) <(openssl pkey -in "$T/$u.key" -outform DER) ||
            fail "$u's key from $k differs from the archived one"
        [ ! -e "$T/walk/ca.pin.raw" ] && [ ! -e "$T/walk/kra.pin.raw" ] || fail "PIN copies left behind"
    done
done

note "after a storage key rotation: an old record opens with the retired key, a new one with the current"
as admin 0 storage-key rotate --pin-file "$PIN_FILE"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/carol.key" -subj /CN=Carol -days 30 \
    -addext keyUsage=critical,keyEncipherment -out "$T/carol.pem" 2>/dev/null
run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/carol.key" --cert "$T/carol.pem"
CAROL=$(rec_of Carol)
[ "$(psql_val "SELECT storage_generation FROM archive_records WHERE id = '$CAROL'")" = 2 ] || fail "carol not in gen 2"
for u in alice carol; do
    r=$ALICE; [ $u = carol ] && r=$CAROL
    walk "$r" kra2
    assert_out "key matches the certificate"
    cmp -s <(openssl pkey -in "$T/walk/key.pem" -outform DER) <(openssl pkey -in "$T/$u.key" -outform DER) ||
        fail "$u's key after the rotation differs from the archived one"
done

note "alice's record copied into bob's row: step 3 says so"
psql_val "UPDATE archive_records SET record = (SELECT record FROM archive_records WHERE id = '$ALICE') \
    WHERE id = '$BOB'" >/dev/null
walk "$BOB" kra1
assert_out "NOT THIS ROW'S RECORD"
assert_out "SEALED FOR ANOTHER CERTIFICATE"
assert_out "KEY DOES NOT MATCH THE CERTIFICATE"
note "ok"
