#!/bin/bash
# "When a KRA card dies, is lost or is stolen" (docs/security-officer-guide.md),
# run as written on SoftHSM2 tokens: a card is "lost" by deleting its token.
#   - Records wrapped to two KRAs (kra_set_size 2) stay recoverable with the
#     other card; recovery search shows each record's KRA set, kra list its
#     number of records; the lost KRA is retired and no request can name it.
#   - A replacement card is enrolled; new records go to it, old ones are not
#     re-wrapped (no rewrap yet): their set still names the lost KRA.
#   - When the second card of those records is lost too, retiring it is
#     refused (41), naming the records, and the guide's query lists exactly
#     them: they can no longer be recovered.
#   - The lost card itself: token info answers "token not found" (13).
#   - Its certificate revoked (cert revoke knows KRA certificates): new
#     records are not wrapped to it, no request names it, it is on the CRL.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2 KRA3
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Lost Card Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'; pw kim 'kim-password-000004'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
P11ESCROW_NEW_PASSWORD=cm1-password-00001 as admin 0 account add cm1 --role cert-manager
enroll() {
    as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token "pkcs11:token=$1" \
        --kra-pin-file "$PIN_FILE" --name "$2"
}
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
# archive USER [may-fail]: a CA-issued encryption key archived; its record id in $T/USER.id, serial in $T/USER.serial
archive() {
    printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n' "$1" >"$T/enc.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$T/$1.key" -subj "/CN=$1/O=Example" -out "$T/$1.csr" 2>/dev/null
    PKCS11_MODULE_PATH=$SOFTHSM openssl x509 -req -in "$T/$1.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" \
        -CA "$T/ca.pem" -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/$1.pem" \
        >/dev/null 2>&1 || fail "issuing $1's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$1.pem" "$T/$1.key" >"$T/$1.rec" 2>"$T/out" ||
        { [ "${2:-}" = may-fail ] && return 1; fail "archiving $1"; }
    cut -d' ' -f1 "$T/$1.rec" >"$T/$1.id"
    openssl x509 -in "$T/$1.pem" -noout -serial | sed 's/serial=//' >"$T/$1.serial"
}
# kras_of USER: the KRA set recovery search shows for USER's record
kras_of() {
    as cm1 0 recovery search --serial "$(cat "$T/$1.serial")"
    sed -n 's/^  KRAs: *//p' "$T/out"
}
# lose LABEL: the card is gone (its SoftHSM2 token deleted)
lose() {
    local d
    d=$(grep -la "$1" "$T"/hsm/tokens/*/token.object | xargs -r dirname)
    [ -n "$d" ] && [ "$(printf '%s\n' "$d" | wc -l)" = 1 ] || fail "no single token directory for $1"
    rm -rf "$d"
}
# only_kra NAME: the guide's query, records NAME is the last active KRA of (ids, sorted)
only_kra() {
    psql "$DB" -XAtq -v kra="$1" <"$T/only-kra.sql" | cut -d'|' -f1 | sort | paste -sd' '
}
# The query exactly as docs/security-officer-guide.md shows it.
cat >"$T/only-kra.sql" <<'EOF'
SELECT a.id, a.cert_serial, a.subject
  FROM archive_records a
  JOIN archive_record_kras x ON x.record_id = a.id
  JOIN kras k ON k.id = x.kra_id AND k.name = :'kra'
 WHERE NOT EXISTS (SELECT 1 FROM archive_record_kras o JOIN kras ok ON ok.id = o.kra_id
                    WHERE o.record_id = a.id AND ok.id <> k.id AND ok.state = 'active')
 ORDER BY a.created_at;
EOF

note "two KRA cards, kra_set_size 2: alice's and bob's keys go to both"
enroll KRA1 kra1
enroll KRA2 kra2
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/kim.pw") as admin 0 account add kim --role kra --kra kra2
as admin 0 policy set kra_set_size 2
archive alice
archive bob
[ "$(kras_of alice)" = "kra1,kra2" ] || fail "alice's KRA set: $(kras_of alice)"
[ "$(kras_of bob)" = "kra1,kra2" ] || fail "bob's KRA set: $(kras_of bob)"
[ -z "$(only_kra kra1)" ] || fail "the query lists records of kra1 that kra2 also holds"

note "kra1's card is lost: its records are listed, none is kra1's alone, it is retired"
lose KRA1
run_esc 0 kra list
grep -Eq '^kra1 +active +rsa3072 +rsa-oaep-sha1 +2 ' "$T/out" || fail "kra list: $(cat "$T/out")"
run_esc 13 token info 'pkcs11:token=KRA1'
as admin 0 kra retire kra1
assert_out "KRA 'kra1' retired: no new record will be wrapped to it"
as cm1 41 recovery request --serial "$(cat "$T/alice.serial")" --reason "alice lost her laptop" --kra kra1
assert_out "retired"

note "bob's key is recovered with the other card, byte for byte"
as cm1 0 recovery request --serial "$(cat "$T/bob.serial")" --reason "bob lost his laptop" --kra kra2
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
as kim 0 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/bob.p12"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
openssl pkcs12 -in "$T/bob.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl cannot open the PKCS#12"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/bob.key" -outform DER) ||
    fail "the recovered key differs from the archived one"

note "a replacement card: new records go to it; old ones keep their set (no rewrap yet)"
enroll KRA3 kra3
archive carol
[ "$(kras_of carol)" = "kra2,kra3" ] || fail "carol's KRA set: $(kras_of carol)"
[ "$(kras_of alice)" = "kra1,kra2" ] || fail "alice's record changed its KRA set: $(kras_of alice)"
[ "$(only_kra kra2)" = "$(sort "$T/alice.id" "$T/bob.id" | paste -sd' ')" ] ||
    fail "the query does not list alice and bob as kra2's alone: $(only_kra kra2)"

note "kra2's card is lost too: retiring it is refused, naming the records only it can still open"
lose KRA2
as admin 41 kra retire kra2
assert_out "retiring KRA 'kra2' would leave 2 record(s) recoverable by no active KRA"
assert_out "$(cat "$T/alice.id")"
assert_out "$(cat "$T/bob.id")"
assert_out "nothing was changed"

note "kra2's certificate revoked: no new record goes to it, no request names it, it is on the CRL"
K2SERIAL=$(psql_val "SELECT cert_serial FROM kras WHERE name = 'kra2'")
as admin 0 cert revoke --serial "$K2SERIAL" --reason keyCompromise
archive dave may-fail && fail "dave archived with kra_set_size 2 and one usable KRA"
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE subject LIKE '%CN=dave%'")" = 0 ] ||
    fail "dave archived with kra_set_size 2 and one usable KRA"
grep -q "only 1 active KRA(s) with an unrevoked certificate" "$T/out" || fail "the refusal does not say why"
as admin 0 policy set kra_set_size 1
archive erin
[ "$(kras_of erin)" = "kra3" ] || fail "erin's KRA set: $(kras_of erin)"
as cm1 41 recovery request --serial "$(cat "$T/alice.serial")" --reason "after the loss" --kra kra2
assert_out "KRA 'kra2''s certificate is revoked"
run_esc 0 cert crl --out "$T/crl.pem" --pin-file "$PIN_FILE" --user admin --password-file "$T/admin.pw"
openssl crl -in "$T/crl.pem" -noout -text >"$T/crl.txt"
grep -qi "serial number: $(echo "$K2SERIAL" | sed 's/^0*//')" "$T/crl.txt" ||
    fail "kra2's certificate is not on the CRL"
run_esc 0 audit verify
note "kra_lost: ok"
