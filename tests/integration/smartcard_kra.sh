#!/bin/bash
# A real card as a KRA (issue #13): the virtual CAC card of smartcard.sh
# (libcacard behind vpcd in a private pcscd, read-only from PKCS#11, RSA-2048),
# driven only through OpenSC's PKCS#11 module, adopted as a KRA with
# `kra enroll --key`: its key is probed (real decryptions), refused by the
# default key-size policy (3072 bits) and adopted once the policy says 2048,
# through the service and on the service host; the card proves possession,
# the CA certifies the key, the read-only card keeps no certificate (said in
# one line) while the service does.  Keys are archived to it and a
# two-person recovery completes on it, the key byte for byte the archived
# one.  Refused, with their exit codes: a URI matching no key, a wrong PIN,
# the same card or the same key twice.  The card's keys are never removed.
# Skipped (77) where the smart card stack is missing, as smartcard.sh is.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

LABEL='KRA card one'
start_vcard "$T/card" --label "$LABEL"
M=$VCARD_MODULE
[ "$M" = /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so ] || fail "module is $M, not OpenSC's"
VCARD_PIN=$(head -n 1 "$VCARD_PIN_FILE")
KEY1="$VCARD_TOKEN;id=%00%01" # CAC ID Certificate
KEY3="$VCARD_TOKEN;id=%00%03" # CAC Email Encryption Certificate
note "card up: $VCARD_TOKEN through $M"

provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Smart Card KRA Test CA,O=Example'
sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' "$T/out" >"$T/ca.pem"
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
for who in cm1:cert-manager cm2:cert-manager; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done

card_keys() {
    GNUTLS_PIN=$VCARD_PIN p11tool --provider "$M" --login --only-urls --list-privkeys "$VCARD_TOKEN" 2>/dev/null |
        grep -c '^pkcs11:' || true
}
# adopt EXPECTED_RC NAME KEY-URI [PIN-FILE]: kra enroll --key on the service host (CA token here)
adopt() {
    as admin "$1" kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --kra-module "$M" --key "$3" \
        --kra-pin-file "${4:-$VCARD_PIN_FILE}" --name "$2"
}
kras() { psql_val "SELECT count(*) FROM kras"; }
[ "$(card_keys)" = 3 ] || fail "the card does not show its three private keys"

note "policy: an RSA-2048 card key is refused by the default kra_min_rsa_bits (3072), after its probe"
run_esc 0 policy show
grep -Eq '^kra_min_rsa_bits +3072' "$T/out" || fail "kra_min_rsa_bits is not 3072 by default"
grep -Eq '^kra_allow_rsa_pkcs1v15 +false' "$T/out" || fail "kra_allow_rsa_pkcs1v15 is not false by default"
adopt 43 card1 "$KEY3"
assert_out "card '$LABEL'"
assert_out "key 'CAC Email Encryption Certificate' (rsa2048, adopted)"
# The card decrypts every probe (OpenSC pads and unpads over the card's raw RSA).
assert_out "probe:       CKM_RSA_PKCS_OAEP SHA-256 yes, SHA-1 yes; CKM_RSA_X_509 yes; CKM_RSA_PKCS yes"
assert_out "recipient:   rsa-oaep-sha256: the card decrypted RSA-OAEP with SHA-256"
assert_out "policy kra_min_rsa_bits (3072)"
assert_out "p11escrow policy set kra_min_rsa_bits 2048"
[ "$(kras)" = 0 ] || fail "a refused adoption registered a KRA"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'kra.enroll.challenge' AND outcome LIKE 'refused%'")" = 1 ] ||
    fail "the refusal is not audited"
as admin 2 policy set kra_min_rsa_bits 1024
as admin 0 policy set kra_min_rsa_bits 2048

note "refused: a URI matching no key on the card (14), one naming no key (19), a wrong PIN (11, or 17 from this emulation)"
adopt 14 card1 "$VCARD_TOKEN;id=%00%09"
assert_out "no private key matches"
adopt 19 card1 "$VCARD_TOKEN"
assert_out "names no key"
WRONG_PIN=$(printf '%08d' $(((10#$VCARD_PIN + 1) % 100000000)))
( umask 077; printf '%s\n' "$WRONG_PIN" >"$T/wrong.pin" )
rc=0
"$ESC" kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --kra-module "$M" --key "$KEY3" \
    --kra-pin-file "$T/wrong.pin" --name card1 --user admin --password-file "$T/admin.pw" >"$T/out" 2>&1 </dev/null || rc=$?
# A real CAC answers a wrong PIN with CKR_PIN_INCORRECT (11); libcacard's emulation with CKR_GENERAL_ERROR (17).
[ "$rc" -eq 11 ] || [ "$rc" -eq 17 ] || fail "a wrong card PIN: exit $rc, expected 11 or 17"
assert_not_out "$WRONG_PIN"
as admin 2 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --kra-module "$M" --key "$KEY3" \
    --kra-pin-file "$VCARD_PIN_FILE" --name card1 --key-type rsa3072
assert_out "--key-type is for a generated key"
[ "$(kras)" = 0 ] || fail "a refused adoption registered a KRA"

note "adopted through the service, at a workstation (no CA token, no database there)"
start_daemon 1
srv admin 0 kra enroll --kra-module "$M" --key "$KEY1" --kra-pin-file "$VCARD_PIN_FILE" --name card-srv
assert_out "recipient:   rsa-oaep-sha256"
assert_out "KRA 'card-srv' enrolled on card '$LABEL'"
assert_out "through the service, possession proven"
assert_out "rsa2048, recipient rsa-oaep-sha256, adopted from the card"
assert_out "the card did not take the certificate"
[ "$(psql_val "SELECT key_type || ' ' || recipient || ' ' || key_origin FROM kras WHERE name = 'card-srv'")" = \
    "rsa2048 rsa-oaep-sha256 adopted" ] || fail "card-srv not registered as adopted"
psql_val "SELECT details FROM audit_events WHERE action = 'kra.enroll' AND object = 'card-srv' AND outcome = 'ok'" |
    grep -q "rsa2048 key adopted from the card, recipient rsa-oaep-sha256 (the card decrypted" ||
    fail "kra.enroll does not say the key was adopted and why its recipient"
srv admin 0 kra list
assert_out "card-srv"
srv admin 0 kra retire card-srv
[ "$(card_keys)" = 3 ] || fail "the card lost a key"

note "the same key again, under another name (its KRA retired): refused (40)"
adopt 40 card-again "$KEY1"
assert_out "already the key of KRA 'card-srv' (retired)"

note "adopted on the service host: possession proven, certified by the CA, the certificate kept by the service"
adopt 0 card1 "$KEY3"
assert_out "KRA 'card1' enrolled on card '$LABEL'"
assert_out "possession proven"
assert_out "rsa2048, recipient rsa-oaep-sha256, adopted from the card"
# The card is read-only from PKCS#11: one line, not an error.
[ "$(grep -c 'the card did not take the certificate' "$T/out")" = 1 ] || fail "the read-only card is not said once"
assert_not_out "error"
[ "$(psql_val "SELECT key_origin || ' ' || (recipient_reason LIKE 'the card decrypted RSA-OAEP with SHA-256%')
               FROM kras WHERE name = 'card1'")" = "adopted true" ] || fail "card1's origin and probe not stored"
psql_val "SELECT encode(certificate, 'base64') FROM kras WHERE name = 'card1'" | base64 -d |
    openssl x509 -inform DER -out "$T/card1.pem"
openssl verify -CAfile "$T/ca.pem" "$T/card1.pem" >/dev/null || fail "card1's KRA certificate does not verify"
openssl x509 -in "$T/card1.pem" -noout -ext extendedKeyUsage | grep_q "1.3.6.1.4.1.311.21.6" || fail "KRA EKU"
cmp -s <(openssl x509 -in "$T/card1.pem" -noout -pubkey) <(openssl x509 -in "$T/card/cert3.pem" -noout -pubkey) ||
    fail "card1's certificate does not certify the card's key 03"
[ "$(card_keys)" = 3 ] || fail "the card lost a key"

note "the same card twice: refused (40)"
adopt 40 card1b "$KEY3"
assert_out "is already enrolled as KRA 'card1'"
[ "$(kras)" = 2 ] || fail "expected card-srv and card1 only"

note "keys archived to the card's KRA"
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra card1
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
for u in alice bob; do
    printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n' "$u" >"$T/enc.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u/O=Example" -out "$T/$u.csr" 2>/dev/null
    PKCS11_MODULE_PATH=$SOFTHSM openssl x509 -req -in "$T/$u.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" \
        -CA "$T/ca.pem" -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/$u.pem" \
        >/dev/null 2>&1 || fail "issuing $u's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$u.pem" "$T/$u.key" >"$T/$u.rec" 2>"$T/out" || fail "archiving $u"
    grep -q "card1" "$T/$u.rec" || fail "$u's record is not wrapped to card1: $(cat "$T/$u.rec")"
done
[ "$(psql_val "SELECT count(*) FROM archive_record_kras a JOIN kras k ON k.id = a.kra_id
               WHERE k.name = 'card1' AND a.recipient = 'rsa-oaep-sha256'")" = 2 ] || fail "records not wrapped with OAEP-SHA-256"

note "a two-person recovery, completed on the card: the key byte for byte the archived one"
as admin 0 policy set recovery_approvals 1
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra card1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"
as cm1 51 recovery approve "$REQ"
as cm2 0 recovery approve "$REQ"
run_esc 0 recovery release "$REQ" --pin-file "$PIN_FILE"
as kent 0 recovery complete "$REQ" --module "$M" --token "$VCARD_TOKEN" --kra-pin-file "$VCARD_PIN_FILE" \
    --out "$T/alice.p12"
assert_out "the key matches its certificate"
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$T/out")
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts -out "$T/rec.key" 2>/dev/null ||
    fail "openssl cannot open the PKCS#12"
cmp -s <(openssl pkey -in "$T/rec.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
    fail "the recovered key differs from the archived one"
[ "$(card_keys)" = 3 ] || fail "the card lost a key"

note "every step audited, the trail intact"
run_esc 0 audit verify
assert_out "audit trail intact"
note "smartcard_kra: ok"
