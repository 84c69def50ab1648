#!/bin/bash
# KRA keys adopted from cards, the card's probe and the KRA key policy, on
# SoftHSM2 tokens (issue #13; smartcard_kra.sh does the same with a real card
# stack).  SoftHSM2's slots.mechanisms takes mechanisms away from a token, so
# each card below decrypts only what a real card of its kind would:
#   GEN      everything (SoftHSM2 2.6: RSA-OAEP natively with SHA-1 only)
#   RAW      raw RSA and PKCS#1 v1.5, no CKM_RSA_PKCS_OAEP
#   OAEPONLY CKM_RSA_PKCS_OAEP only (no raw RSA, no PKCS#1 v1.5)
#   P1       PKCS#1 v1.5 only (CKM_RSA_PKCS)
# The probe's result and the recipient form chosen are checked for each; the
# PKCS#1 v1.5-only card is refused until policy kra_allow_rsa_pkcs1v15 says
# otherwise, then adopted, archived to with PKCS#1 v1.5 key transport and
# recovered on, byte for byte, where the token decrypts nothing but
# CKM_RSA_PKCS.  Also: generated keys meet kra_min_rsa_bits/kra_min_ec_bits,
# a sign-only key, an EC key already on a card, and one whose card holds a
# certificate but no public key object.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA GEN SIGN EC
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=KRA Adoption Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
for who in cm1:cert-manager cm2:cert-manager; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
kras() { psql_val "SELECT count(*) FROM kras"; }
enroll() { as admin "$1" kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --kra-pin-file "$PIN_FILE" "${@:2}"; }
# keygen CONF TOKEN KEY-TYPE: a decryption key made on the token by another tool (pkcs11-tool), id 51
keygen() {
    SOFTHSM2_CONF=$1 pkcs11-tool --module "$SOFTHSM" --token-label "$2" --login --pin env:P11ESCROW_USER_PIN \
        --keypairgen --key-type "$3" --id 51 --label card-key --usage-decrypt --usage-derive >"$T/out" 2>&1 ||
        fail "pkcs11-tool --keypairgen on $2"
}

note "the KRA key policy: its values, refused values"
run_esc 0 policy show
grep -Eq '^kra_min_rsa_bits +3072' "$T/out" && grep -Eq '^kra_min_ec_bits +256' "$T/out" &&
    grep -Eq '^kra_allow_rsa_pkcs1v15 +false' "$T/out" || fail "policy defaults: $(cat "$T/out")"
as admin 2 policy set kra_min_rsa_bits 1024
assert_out "policy kra_min_rsa_bits is 2048, 3072 or 4096"
as admin 2 policy set kra_min_ec_bits 521
as admin 2 policy set kra_allow_rsa_pkcs1v15 yes
as cm1 51 policy set kra_allow_rsa_pkcs1v15 true
! psql "$DB" -XAtqc "UPDATE policy SET value = '1024' WHERE key = 'kra_min_rsa_bits'" 2>/dev/null ||
    fail "the database took kra_min_rsa_bits 1024"

note "generated keys meet the policy too, checked before anything is generated"
as admin 0 policy set kra_min_rsa_bits 4096
enroll 43 --token 'pkcs11:token=GEN' --name gen
assert_out "policy kra_min_rsa_bits (4096)"
as admin 0 policy set kra_min_rsa_bits 3072
as admin 0 policy set kra_min_ec_bits 384
enroll 43 --token 'pkcs11:token=GEN' --name gen --key-type ec-p256
assert_out "policy kra_min_ec_bits (384)"
as admin 0 policy set kra_min_ec_bits 256
[ "$(count_private_keys "$SOFTHSM2_CONF" GEN)" = 0 ] || fail "a refused enrollment left a key on GEN"

note "SoftHSM2's probe: RSA-OAEP natively with SHA-1 only, raw RSA: rsa-oaep-sha1, and why"
enroll 0 --token 'pkcs11:token=GEN' --name gen
assert_out "rsa3072, recipient rsa-oaep-sha1"
assert_out "recipient:   the card decrypted RSA-OAEP only with SHA-1 (CKM_RSA_PKCS_OAEP), and raw RSA"
[ "$(psql_val "SELECT key_origin || ' ' || recipient FROM kras WHERE name = 'gen'")" = "generated rsa-oaep-sha1" ] ||
    fail "gen not registered as generated"
psql_val "SELECT recipient_reason FROM kras WHERE name = 'gen'" | grep_q "only with SHA-1" || fail "gen's probe not stored"
as admin 0 kra retire gen

note "a sign-only key is not adopted (41), and stays on its card"
"$ENVELOPE_TOOL" genkey 'pkcs11:token=SIGN' rsa3072 signer "$PIN_FILE" sign >/dev/null 2>"$T/out" ||
    fail "cannot make a signing key"
enroll 41 --key 'pkcs11:token=SIGN;object=signer' --name signer
assert_out "is not a decryption key (CKA_DECRYPT is false; it is a signing key)"
[ "$(count_private_keys "$SOFTHSM2_CONF" SIGN)" = 1 ] || fail "the signing key is gone"

note "an EC key already on a card (made with pkcs11-tool): adopted, ECDH, P-256"
keygen "$SOFTHSM2_CONF" EC EC:prime256v1
enroll 0 --key 'pkcs11:token=EC;id=%51' --name ec-card
assert_out "key 'card-key' (ec-p256, adopted)"
assert_out "probe:       CKM_ECDH1_DERIVE yes"
assert_out "recipient:   ecdh: EC key; the card derives with CKM_ECDH1_DERIVE"
assert_out "ec-p256, recipient ecdh, adopted from the card"
as admin 0 kra retire ec-card

note "an EC key whose card holds its certificate but no public key object (as cards issued by a CMS do)"
P11="pkcs11-tool --module $SOFTHSM --token-label EC --login --pin env:P11ESCROW_USER_PIN"
$P11 --keypairgen --key-type EC:prime256v1 --id 52 --label ec-nopub --usage-derive >"$T/out" 2>&1 || fail "keygen 52"
$P11 --read-object --type pubkey --id 52 -o "$T/ec52.der" >"$T/out" 2>&1 || fail "reading public key 52"
openssl pkey -pubin -inform DER -in "$T/ec52.der" -out "$T/ec52.pem" || fail "public key 52"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/issuer.key"
openssl req -new -key "$T/issuer.key" -subj /CN=ec-nopub -out "$T/ec52.csr"
openssl x509 -req -in "$T/ec52.csr" -signkey "$T/issuer.key" -force_pubkey "$T/ec52.pem" -days 30 -outform DER \
    -out "$T/ec52.crt" 2>/dev/null || fail "certificate for key 52"
$P11 --write-object "$T/ec52.crt" --type cert --id 52 --label ec-nopub >"$T/out" 2>&1 || fail "writing certificate 52"
$P11 --delete-object --type pubkey --id 52 >"$T/out" 2>&1 || fail "deleting public key 52"
enroll 0 --key 'pkcs11:token=EC;id=%52' --name ec-nopub
assert_out "ec-p256, recipient ecdh, adopted from the card"
psql_val "SELECT encode(certificate, 'base64') FROM kras WHERE name = 'ec-nopub'" | base64 -d |
    openssl x509 -inform DER -noout -pubkey | cmp -s - "$T/ec52.pem" || fail "ec-nopub is not certified for key 52"
as admin 0 kra retire ec-nopub
[ "$(count_private_keys "$SOFTHSM2_CONF" EC)" = 2 ] || fail "the EC card lost a key"

note "cards that decrypt less, at a security officer's workstation (their own SoftHSM2 configuration)"
start_daemon 1
# card NAME MECHANISMS: provision token NAME in its own directory with slots.mechanisms, key id 51 on it
card() {
    provision_tokens "$T/$1" "$1" -- --mechanisms "$2"
    keygen "$T/$1/softhsm2.conf" "$1" rsa:3072
}
# ws CONF-DIR USER RC ARGS...: the CLI at the workstation, through the service
ws() { local d=$1; shift; SOFTHSM2_CONF=$T/$d/softhsm2.conf srv "$@"; }

card RAW "-CKM_RSA_PKCS_OAEP"
ws RAW admin 0 kra enroll --key 'pkcs11:token=RAW;id=%51' --kra-pin-file "$PIN_FILE" --name raw
assert_out "probe:       CKM_RSA_PKCS_OAEP SHA-256 no, SHA-1 no; CKM_RSA_X_509 yes; CKM_RSA_PKCS yes"
assert_out "recipient:   rsa-oaep-sha256: the card decrypted no RSA-OAEP probe itself, only raw RSA (CKM_RSA_X_509)"
assert_out "rsa3072, recipient rsa-oaep-sha256, adopted from the card"
ws RAW admin 0 kra retire raw

card OAEPONLY "-CKM_RSA_X_509,CKM_RSA_PKCS"
n=$(kras)
ws OAEPONLY admin 16 kra enroll --key 'pkcs11:token=OAEPONLY;id=%51' --kra-pin-file "$PIN_FILE" --name oaeponly
assert_out "decrypts RSA-OAEP itself but not raw RSA (CKM_RSA_X_509)"
[ "$(kras)" = "$n" ] || fail "the OAEP-only card was registered"
# Nor is a key generated there: p11escrow could not decrypt with it (before, it was registered, and its
# records failed to open on the card as if tampered with).  The generated key is removed again.
ws OAEPONLY admin 16 kra enroll --token 'pkcs11:token=OAEPONLY' --kra-pin-file "$PIN_FILE" --name oaepgen
assert_out "decrypts RSA-OAEP itself but not raw RSA (CKM_RSA_X_509)"
[ "$(kras)" = "$n" ] || fail "a key generated on the OAEP-only card was registered"
[ "$(count_private_keys "$T/OAEPONLY/softhsm2.conf" OAEPONLY)" = 1 ] || fail "the generated key stayed on OAEPONLY"

note "a PKCS#1 v1.5-only card: refused by default (43), adopted once policy accepts it"
card P1 "-CKM_RSA_PKCS_OAEP,CKM_RSA_X_509"
ws P1 admin 43 kra enroll --key 'pkcs11:token=P1;id=%51' --kra-pin-file "$PIN_FILE" --name p1
assert_out "probe:       CKM_RSA_PKCS_OAEP SHA-256 no, SHA-1 no; CKM_RSA_X_509 no; CKM_RSA_PKCS yes"
assert_out "recipient:   rsa-pkcs1v15"
assert_out "p11escrow policy set kra_allow_rsa_pkcs1v15 true"
[ "$(kras)" = "$n" ] || fail "the PKCS#1 v1.5 card was registered against policy"
as admin 0 policy set kra_allow_rsa_pkcs1v15 true
ws P1 admin 0 kra enroll --key 'pkcs11:token=P1;id=%51' --kra-pin-file "$PIN_FILE" --name p1
assert_out "rsa3072, recipient rsa-pkcs1v15, adopted from the card"
[ "$(psql_val "SELECT recipient || ' ' || key_origin FROM kras WHERE name = 'p1' AND state = 'active'")" = \
    "rsa-pkcs1v15 adopted" ] || fail "p1 not registered"
[ "$(count_private_keys "$T/P1/softhsm2.conf" P1)" = 1 ] || fail "P1 lost its key"

note "archived to it with PKCS#1 v1.5 key transport, recovered on it (CKM_RSA_PKCS, all it decrypts), byte for byte"
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra p1
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:alice@example.org\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" 2>/dev/null
PKCS11_MODULE_PATH=$SOFTHSM openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" \
    -CA "$T/ca.pem" -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" \
    >/dev/null 2>&1 || fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >"$T/alice.rec" 2>"$T/out" || fail "archiving alice"
grep -q "p1" "$T/alice.rec" || fail "alice's record is not wrapped to p1: $(cat "$T/alice.rec")"
[ "$(psql_val "SELECT a.recipient FROM archive_record_kras a JOIN kras k ON k.id = a.kra_id WHERE k.name = 'p1'")" = \
    rsa-pkcs1v15 ] || fail "the record's recipient is not rsa-pkcs1v15"
as admin 0 policy set recovery_approvals 1
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra p1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
as cm2 0 recovery approve "$REQ"
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
ws P1 kent 0 recovery complete "$REQ" --token 'pkcs11:token=P1' --kra-pin-file "$PIN_FILE" --out "$T/alice.p12"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl cannot open the PKCS#12"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the key recovered on the PKCS#1 v1.5 card differs from the archived one"

note "the policy holds when the CA certifies, and enrollment is audited with the probe"
psql_val "SELECT details FROM audit_events WHERE action = 'kra.enroll' AND object = 'p1' AND outcome = 'ok'" |
    grep -q "rsa3072 key adopted from the card, recipient rsa-pkcs1v15 (the card decrypted RSA only with PKCS#1 v1.5" ||
    fail "kra.enroll of p1 does not say how"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'kra.enroll.challenge' AND object = 'p1'
               AND outcome = 'refused' AND details LIKE '%kra_allow_rsa_pkcs1v15%'")" = 1 ] || fail "the policy refusal is not audited"
run_esc 0 audit verify
note "kra_adopt: ok"
