#!/bin/bash
# Manual archival end to end: `p11escrow archive import` with PKCS#12 and PEM
# keys certified by the CA on the token (and by a foreign software CA), every
# refusal with its exit code and nothing written, batches with a summary, and
# no private key material anywhere in a dump of the database.
. "$(dirname "$0")/lib.sh"
unset P11ESCROW_P12_PASSWORD P11ESCROW_PASSWORD P11ESCROW_NEW_PASSWORD || true

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
run_esc 0 setup --database "$DB" --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Import Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
[ -s "$T/ca.pem" ] || psql_val "SELECT encode(certificate, 'base64') FROM ca WHERE state = 'active'" | base64 -d |
    openssl x509 -inform DER -out "$T/ca.pem"

pw admin 'admin-password-0001'
pw cm 'cm-password-0000002'
pw p12 'p12-transport-secret'
pw wrong 'not-the-p12-password'
# import ARGS...: `archive import` as the administrator, output in $T/out.
import() { local want=$1; shift; run_esc "$want" archive import --database "$DB" --user admin \
    --account-password-file "$T/admin.pw" "$@"; }
records() { psql_val "SELECT count(*) FROM archive_records"; }
cert_hash() { openssl x509 -in "$1" -outform DER | sha256sum | cut -d' ' -f1; }
has_record() { [ "$(psql_val "SELECT count(*) FROM archive_records WHERE cert_sha256 = '$(cert_hash "$1")'")" = 1 ]; }

note "the first administrator, a certificate manager, two KRAs; records wrapped to both"
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin --database "$DB"
P11ESCROW_NEW_PASSWORD=cm-password-0000002 run_esc 0 account add cm --role cert-manager --database "$DB" \
    --user admin --password-file "$T/admin.pw"
run_esc 0 kra enroll --database "$DB" --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
run_esc 0 kra enroll --database "$DB" --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256 --user admin --password-file "$T/admin.pw"
psql_val "UPDATE policy SET value = '2' WHERE key = 'kra_set_size'" >/dev/null

note "user keys certified by the CA on the token (RSA keyEncipherment, EC keyAgreement, signing-only)"
# Throwaway test token only: the engine takes its PIN from the URI here.
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
# issue NAME KEYALG USAGE [CA_CERT CA_KEY]: NAME.key + NAME.pem (CA on the token unless given).
issue() {
    local name=$1 alg=$2 usage=$3
    printf 'keyUsage=critical,%s\nsubjectAltName=email:%s@example.org\n' "$usage" "$name" >"$T/$name.ext"
    case $alg in
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/$name.key" 2>/dev/null ;;
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$name.key" 2>/dev/null ;;
    esac
    openssl req -new -key "$T/$name.key" -subj "/CN=$name/O=Example" -out "$T/$name.csr" 2>/dev/null
    if [ $# -gt 3 ]; then
        openssl x509 -req -in "$T/$name.csr" -CA "$4" -CAkey "$5" -set_serial "0x$(openssl rand -hex 16)" -days 30 \
            -extfile "$T/$name.ext" -out "$T/$name.pem" >/dev/null 2>&1
    else
        openssl x509 -req -in "$T/$name.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
            -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/$name.ext" -out "$T/$name.pem" >/dev/null 2>&1
    fi || fail "issuing $name's certificate"
}
# p12 NAME [openssl pkcs12 options]: NAME.p12 with the test password (AES-256-CBC, PBKDF2 by default).
p12() { local n=$1; shift; openssl pkcs12 -export -inkey "$T/$n.key" -in "$T/$n.pem" -passout "file:$T/p12.pw" \
    -out "$T/$n.p12" "$@" || fail "PKCS#12 for $n"; }
issue alice rsa keyEncipherment
issue bob ec keyAgreement
issue carol rsa keyEncipherment,dataEncipherment
issue dave ec keyAgreement
issue erin rsa keyEncipherment
issue signer rsa digitalSignature,nonRepudiation
openssl verify -CAfile "$T/ca.pem" "$T/alice.pem" >/dev/null || fail "test certificate does not verify"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/other-ca.key" -out "$T/other-ca.pem" \
    -days 30 -subj '/CN=Some Other CA' >/dev/null 2>&1
issue frank rsa keyEncipherment "$T/other-ca.pem" "$T/other-ca.key"
p12 alice
p12 signer
p12 frank
p12 carol -legacy # RC2-40 certificate bag, 3DES key bag: as older software exports
cat "$T/dave.key" "$T/dave.pem" >"$T/dave-bundle.pem"

note "--help, usage errors"
run_esc 0 archive --help
assert_out "signing keys are never archived"
assert_out "Exit status"
run_esc 2 archive import "$T/alice.p12"
assert_out "--user"
run_esc 2 archive import --user admin --key "$T/bob.key"
run_esc 2 archive export --user admin "$T/alice.p12"

note "a PKCS#12 RSA key: archived, wrapped to both KRAs"
import 0 --password-file "$T/p12.pw" "$T/alice.p12"
assert_out "archived $T/alice.p12: record"
assert_out "archived 1, already archived 0, refused 0, failed 0"
has_record "$T/alice.pem" || fail "no record for alice"
ID=$(psql_val "SELECT id FROM archive_records WHERE cert_sha256 = '$(cert_hash "$T/alice.pem")'")
[ "$(psql_val "SELECT count(*) FROM archive_record_kras WHERE record_id = '$ID'")" = 2 ] ||
    fail "record not wrapped to kra_set_size = 2 KRAs"
[ "$(psql_val "SELECT source || ' ' || foreign_issuer || ' ' || key_type FROM archive_records WHERE id = '$ID'")" = \
    "import false rsa2048" ] || fail "record metadata"

note "a PEM EC key + certificate pair; the password from the environment is not needed"
P11ESCROW_P12_PASSWORD=unused import 0 --key "$T/bob.key" --cert "$T/bob.pem"
assert_out "archived $T/bob.key: record"
has_record "$T/bob.pem" || fail "no record for bob"
[ "$(records)" = 2 ] || fail "expected 2 records"

note "the same key again: reported, not stored twice"
import 0 --password-file "$T/p12.pw" "$T/alice.p12"
assert_out "already archived $T/alice.p12: as record $ID"
assert_out "archived 0, already archived 1, refused 0, failed 0"
[ "$(records)" = 2 ] || fail "a key was stored twice"

note "refusals: each with its own exit code, nothing written"
import 43 --password-file "$T/p12.pw" "$T/signer.p12"
assert_out "signing keys are never archived"
assert_out "refused 1"
import 32 --key "$T/erin.key" --cert "$T/dave.pem"
assert_out "does not match"
cat "$T/erin.key" "$T/dave.pem" >"$T/mixed.pem"
import 32 "$T/mixed.pem"
import 50 --password-file "$T/wrong.pw" "$T/alice.p12"
assert_out "wrong password"
head -c 700 "$T/frank.p12" >"$T/truncated.p12"
import 31 --password-file "$T/p12.pw" "$T/truncated.p12"
assert_out "corrupt"
cp "$T/frank.p12" "$T/altered.p12"
size=$(stat -c %s "$T/altered.p12")
printf '\x55' | dd of="$T/altered.p12" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
cmp -s "$T/frank.p12" "$T/altered.p12" && printf '\xaa' | dd of="$T/altered.p12" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
import 31 --password-file "$T/p12.pw" "$T/altered.p12"
assert_out "damaged"
head -c $((1024 * 1024 + 1)) /dev/zero >"$T/huge.pem"
import 31 "$T/huge.pem"
assert_out "larger than"
import 4 "$T/no-such-file.p12"
# No password anywhere and no terminal to ask on.
rc=0
setsid -w "$ESC" archive import --database "$DB" --user admin --account-password-file "$T/admin.pw" "$T/alice.p12" \
    "$T/frank.p12" >"$T/out" 2>&1 </dev/null || rc=$?
[ "$rc" = 10 ] || fail "no PKCS#12 password: exit $rc, expected 10"
assert_out "protected by a password"
assert_out "refused 0, failed 2"
[ "$(records)" = 2 ] || fail "a refused key was written"
import 43 --password-file "$T/p12.pw" "$T/frank.p12"
assert_out "not by this CA"
has_record "$T/frank.pem" && fail "foreign certificate archived against policy"

note "only administrators import"
run_esc 51 archive import --database "$DB" --user cm --account-password-file "$T/cm.pw" --password-file "$T/p12.pw" \
    "$T/frank.p12"
run_esc 50 archive import --database "$DB" --user admin --account-password-file "$T/wrong.pw" "$T/frank.p12"
[ "$(records)" = 2 ] || fail "written without an administrator"

note "foreign issuers allowed by policy: archived and recorded as foreign"
psql "$DB" -Xq -c "UPDATE policy SET value='true' WHERE key='allow_foreign_issuers'"
import 0 --password-file "$T/p12.pw" "$T/frank.p12"
assert_out "foreign issuer"
[ "$(psql_val "SELECT foreign_issuer FROM archive_records WHERE cert_sha256 = '$(cert_hash "$T/frank.pem")'")" = t ] ||
    fail "foreign certificate not recorded as foreign"

note "an encrypted PEM key, the password from the environment"
issue gina ec keyAgreement
openssl pkcs8 -topk8 -v2 aes-256-cbc -in "$T/gina.key" -passout "file:$T/p12.pw" -out "$T/gina.enc"
cat "$T/gina.enc" "$T/gina.pem" >"$T/gina-bundle.pem"
P11ESCROW_P12_PASSWORD=not-the-password import 50 "$T/gina-bundle.pem"
P11ESCROW_P12_PASSWORD=$(cat "$T/p12.pw") import 0 "$T/gina-bundle.pem"
has_record "$T/gina.pem" || fail "no record for gina"

note "a directory: the good files archived although others are bad; summary and first failure's exit code"
mkdir "$T/batch"
cp "$T/carol.p12" "$T/dave-bundle.pem" "$T/signer.p12" "$T/truncated.p12" "$T/alice.p12" "$T/batch/"
cp "$T/erin.key" "$T/batch/erin.pem.key"                     # not an importable name: skipped
cat "$T/erin.key" "$T/erin.pem" >"$T/batch/zz-erin.PEM"
mkdir "$T/batch/sub.p12"                                      # directories are not followed
import 43 --password-file "$T/p12.pw" "$T/batch" # signer.p12 comes before truncated.p12
assert_out "archived 3, already archived 1, refused 1, failed 1"
assert_out "failed $T/batch/truncated.p12:"
assert_out "refused $T/batch/signer.p12: signing keys are never archived"
for u in carol dave erin; do has_record "$T/$u.pem" || fail "$u not archived in the batch"; done
[ "$(records)" = 7 ] || fail "expected 7 records after the batch, have $(records)"
# In order: alice (already), carol, dave, signer (refused 43), truncated (31), zz-erin.
[ "$(grep -c '' "$T/out")" = 7 ] || fail "expected one line per file and a summary"
sed -n 4p "$T/out" | grep_q "^refused $T/batch/signer.p12" || fail "files not in name order"

note "--list: one path per line; with a progress bar on a terminal"
printf '# comment\n%s\n\n%s\n' "$T/alice.p12" "$T/bob.key" >"$T/list"
import 31 --password-file "$T/p12.pw" --list "$T/list"
assert_out "already archived 1, refused 0, failed 1"
script -qec "'$ESC' archive import --database '$DB' --user admin --account-password-file '$T/admin.pw' \
    --password-file '$T/p12.pw' '$T/batch'" /dev/null >"$T/out" 2>&1 </dev/null || true
assert_out "6/6 archived 0, already 4, refused 1, failed 1"
assert_out "[##############################]"

note "nothing private in the database: no PKCS#8 bytes, no RSA prime, no EC scalar"
pg_dump "$DB" >"$T/dump.sql" || fail "pg_dump"
tr 'A-F' 'a-f' <"$T/dump.sql" >"$T/dump.lower" # bytea appears as hex text in the dump
xxd -p "$T/dump.sql" | tr -d '\n' >"$T/dump.hex" # and as raw bytes, if any
absent() { if grep -qF "$1" "$T/dump.lower" || grep_q -F "$1" "$T/dump.hex"; then fail "$2 found in the database dump"; fi; }
# Hex of the private field FIELD (as printed by `openssl pkey -text`) of key file KEY.
field_hex() { openssl pkey -in "$1" -noout -text | awk -v f="$2:" '$1 == f { on = 1; next } on && /^ / { gsub(/[ :]/, ""); h = h $0; next } on { exit } END { print h }'; }
checked=0
for u in alice bob carol dave erin frank gina; do
    openssl pkcs8 -topk8 -nocrypt -in "$T/$u.key" -outform DER -out "$T/$u.p8"
    p8=$(xxd -p "$T/$u.p8" | tr -d '\n')
    absent "$p8" "$u's PKCS#8"
    # The private parts: the tail of the PKCS#8 for RSA (the CRT coefficient), the prime p / the EC scalar.
    if openssl pkey -in "$T/$u.key" -noout -text | grep_q '^prime1:'; then
        absent "${p8: -64}" "a 32-byte chunk of $u's PKCS#8"
        priv=$(field_hex "$T/$u.key" prime1)
        priv=${priv:4} # past a possible 00 sign byte
    else
        priv=$(field_hex "$T/$u.key" priv)
    fi
    [ "${#priv}" -ge 64 ] || fail "cannot extract $u's private value"
    absent "${priv:0:64}" "$u's private prime/scalar"
    checked=$((checked + 1))
done
[ "$checked" = 7 ] || fail "hygiene check incomplete"
# The search works: the certificates' public keys are in the dump.
grep -qF "$(openssl x509 -in "$T/alice.pem" -outform DER | xxd -p | tr -d '\n' | cut -c 1-64)" "$T/dump.lower" ||
    fail "the dump search finds nothing: the hygiene check would prove nothing"
echo ok
