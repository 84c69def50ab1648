#!/bin/bash
# k of n KRAs through the service (issue #14): every step with --server from
# a workstation that cannot reach the database (srv).  Records of version 2,
# kra_threshold 2 of kra_set_size 3.  The contributing KRA fetches its share
# (still sealed to its card), opens and re-seals it to the completing KRA on
# its card at its workstation, and posts back ciphertext only; the completer
# fetches a package with the shares that are in and combines them on its
# card.  Fewer than k: refused before any PIN, saying how many are in; the
# completer cannot contribute; a KRA counts once; a KRA outside the record's
# set, a certificate manager: refused; a damaged contributed share is found
# before combining; a post that is not an envelope to the completer is
# refused.  Outputs: PKCS#12, --to-cert, --to-token.  Then a KRA's certificate renewed (same card key): its version 2
# share, sealed to the earlier certificate, still recovers, with that KRA
# completing (--to-cert) and contributing.  The audit trail verifies.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1 KRA2 KRA3 KRA4 USER
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=KofN Server Test CA,O=Example'
pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
for k in 1 2 3; do
    as admin 0 kra enroll --pin-file "$PIN_FILE" --token "pkcs11:token=KRA$k" --kra-pin-file "$PIN_FILE" \
        --name "kra$k" $([ $k = 2 ] && echo --key-type ec-p256)
done
as admin 0 policy set allow_foreign_issuers true
as admin 0 policy set kra_set_size 3
as admin 0 policy set kra_threshold 2

for u in alice bob; do
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u" -days 30 \
        -addext keyUsage=critical,keyEncipherment -out "$T/$u.pem" 2>/dev/null
    run_esc 0 archive import --user admin --account-password-file "$T/admin.pw" --key "$T/$u.key" --cert "$T/$u.pem"
done
rec_of() { psql_val "SELECT id FROM archive_records WHERE subject LIKE '%CN=$1%'"; }
ALICE=$(rec_of alice) BOB=$(rec_of bob)
[ -n "$ALICE" ] && [ -n "$BOB" ] || fail "records not found"
# kra4 enrolled after the archival: outside both records' KRA sets.
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA4' --kra-pin-file "$PIN_FILE" --name kra4
for who in cm1:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
for k in 1 2 3 4; do
    pw "kra$k-acct" "kra$k-password-0001"
    P11ESCROW_NEW_PASSWORD=$(cat "$T/kra$k-acct.pw") as admin 0 account add "kra$k-acct" --role kra --kra "kra$k"
done
start_daemon 2
unset P11ESCROW_KRA_PIN

# request RECORD KRA REASON: filed through the service, which releases it at once; REQ is its id
request() {
    srv cm1 0 recovery request --record "$1" --reason "$3" --kra "$2"
    REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
    [ -n "$REQ" ] || fail "no request id"
    assert_out "request $REQ released by the service to KRA '$2'"
}
contributed() { psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $1 AND contributed IS NOT NULL"; }
same_key() { # same_key FILE USER: FILE holds USER's archived private key
    cmp -s <(openssl pkey -in "$1" -outform DER) <(openssl pkey -in "$T/$2.key" -outform DER)
}
p12_key() { openssl pkcs12 -in "$1" -nocerts -nodes -passin "file:$T/cm1.pw" 2>/dev/null | openssl pkey -out "$2"; }

note "request and release through the service: the three shares stored, still sealed to their cards"
request "$ALICE" kra1 "alice lost her laptop"
[ "$(psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $REQ AND sealed IS NOT NULL")" = 3 ] ||
    fail "release did not store the three sealed shares"

note "fewer than k: completion refused before any PIN is asked for (none given), saying how many are in"
srv kra1-acct 41 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --out "$T/a0.p12"
assert_out "has 1 of the 2 shares it needs"
assert_out "1 more KRA(s) of the record's set must run 'p11escrow recovery contribute $REQ' first"
assert_not_out "PIN"
[ ! -e "$T/a0.p12" ] || fail "a refused completion left its output"

note "refused contributions: the completer, a certificate manager, a KRA outside the set, the wrong card"
srv kra1-acct 41 recovery contribute "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE"
assert_out "its own share is opened at completion"
srv cm1 51 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
srv kra4-acct 41 recovery contribute "$REQ" --token 'pkcs11:token=KRA4' --kra-pin-file "$PIN_FILE"
assert_out "holds no share for account 'kra4-acct''s KRA"
srv kra2-acct 14 recovery contribute "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE"
assert_out "does not hold the key of KRA 'kra2'"
[ "$(contributed "$REQ")" = 0 ] || fail "a refused contribution stored a share"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'recovery.share.fetch' AND outcome <> 'ok'")" -ge 3 ] ||
    fail "the refused share fetches are not audited"

note "a post that is not an envelope to the completer is refused (the service cannot read it, but checks that)"
code=$(curl -sS --cacert "$SERVER_CA" -K "$T/kra2-acct.curl" -o "$T/body" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' --data-binary "{\"contributed\": \"$(head -c 600 /dev/urandom | base64 -w0)\"}" \
    "$URL/api/v1/recoveries/$REQ/contribute")
[ "$code" = 400 ] || fail "POST of garbage as a share: HTTP $code: $(cat "$T/body")"
grep -q "is not an envelope to KRA 'kra1''s certificate" "$T/body" || fail "garbage refused how? $(cat "$T/body")"
[ "$(contributed "$REQ")" = 0 ] || fail "garbage stored as a share"

note "kra2 contributes at its workstation: the share opened on its card, re-sealed to kra1, ciphertext posted"
srv kra2-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
assert_out "of KRA 'kra2' fetched, still sealed to its card; it goes to KRA 'kra1', the request's completer"
assert_out "share opened on card 'KRA2', checked and re-sealed here; the service relayed ciphertext only"
assert_out "2 of 2 share(s) in: it can complete"
srv kra2-acct 41 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
assert_out "already contributed its share to request $REQ: a KRA counts once"
[ "$(contributed "$REQ")" = 1 ] || fail "the same KRA counted twice"
psql_val "SELECT details FROM audit_events WHERE action = 'recovery.contribute' AND outcome = 'ok'" >"$T/out"
assert_out "KRA 'kra2' opened its share (x = "
assert_out "re-sealed it to KRA 'kra1'; 2 of 2 in"
# No share plaintext (ShareInfo names the record id) anywhere in the database.
psql_val "SELECT encode(coalesce(contributed, ''), 'hex') || encode(coalesce(sealed, ''), 'hex') FROM recovery_shares" >"$T/out"
assert_not_out "$(printf %s "$ALICE" | xxd -p -c 64)"

note "kra1 completes at its workstation: 2 shares combined on its card, alice's key byte for byte"
srv kra1-acct 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/alice.p12" \
    --p12-password-file "$T/cm1.pw"
assert_out "request $REQ completed: the key matches its certificate"
p12_key "$T/alice.p12" "$T/alice.got" && same_key "$T/alice.got" alice || fail "alice's recovered key differs"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = completed ] || fail "not completed"
[ "$(psql_val "SELECT count(*) FROM recovery_shares WHERE request_id = $REQ AND (sealed IS NOT NULL OR
               contributed IS NOT NULL)")" = 0 ] || fail "shares kept after completion"
psql_val "SELECT details FROM audit_events WHERE action = 'recovery.fetch' AND outcome = 'ok'" >"$T/out"
assert_out "package fetched by KRA 'kra1' with 2 of the 2 shares needed"
srv kra2-acct 41 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"

note "a damaged contributed share: found on the completer's card before anything is combined"
request "$BOB" kra3 "bob lost his phone"
srv kra1-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE"
psql_val "UPDATE recovery_shares SET contributed = set_byte(contributed, length(contributed) - 6, get_byte(contributed, length(contributed) - 6) # 1)
          WHERE request_id = $REQ AND contributed IS NOT NULL" >/dev/null
srv kra3-acct 33 recovery complete "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --out "$T/b0.p12"
assert_out "does not open on this card"
[ ! -e "$T/b0.p12" ] || fail "a damaged share left an output"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "a failed completion ended the request"
srv cm1 0 recovery cancel "$REQ" --reason "share damaged in the test"

note "kra2's certificate renewed (same card key): its share of bob's record names the earlier certificate"
OLD2=$(psql_val "SELECT cert_serial FROM kras WHERE name = 'kra2'")
srv admin 0 kra renew kra2 --kra-pin-file "$PIN_FILE"
[ "$(psql_val "SELECT cert_serial FROM kras WHERE name = 'kra2'")" != "$OLD2" ] || fail "kra2 not renewed"
[ "$(psql_val "SELECT count(*) FROM kra_certificates WHERE cert_serial = '$OLD2'")" = 1 ] || fail "old cert not kept"

note "the renewed kra2 completes (--to-cert), kra3 contributing"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/rcpt.key" -subj "/CN=help desk" -days 30 \
    -addext keyUsage=critical,keyEncipherment -out "$T/rcpt.pem" 2>/dev/null
request "$BOB" kra2 "bob's key to the help desk"
srv kra3-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE"
srv kra2-acct 0 recovery complete "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" \
    --to-cert "$T/rcpt.pem" --out "$T/bob.p7m"
assert_out "CMS (DER) encrypted to certificate SHA256:"
openssl cms -decrypt -inform DER -in "$T/bob.p7m" -recip "$T/rcpt.pem" -inkey "$T/rcpt.key" -out "$T/bob.content" ||
    fail "openssl cms cannot open the CMS"
same_key "$T/bob.content" bob || fail "the key in the CMS differs from bob's"

note "the renewed kra2 contributes (its share sealed to the earlier certificate), kra3 completes"
request "$BOB" kra3 "bob's key once more"
srv kra2-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE"
srv kra3-acct 0 recovery complete "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --out "$T/bob.p12" \
    --p12-password-file "$T/cm1.pw"
p12_key "$T/bob.p12" "$T/bob.got" && same_key "$T/bob.got" bob || fail "bob's recovered key differs"

note "--to-token: alice's key onto her replacement token, kra3 completing with kra1's share"
request "$ALICE" kra3 "alice's new card"
srv kra1-acct 0 recovery contribute "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE"
srv kra3-acct 0 recovery complete "$REQ" --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" \
    --to-token 'pkcs11:token=USER' --to-token-pin-file "$PIN_FILE"
assert_out "key and certificate written onto token 'USER'"
[ "$(count_private_keys "$SOFTHSM2_CONF" USER)" = 1 ] || fail "alice's key is not on her token"
pkcs11-tool --module "$SOFTHSM" --token-label USER --read-object --type cert --label alice -o "$T/oncard.der" \
    >/dev/null 2>&1 || fail "no certificate on alice's token"
cmp -s "$T/oncard.der" <(openssl x509 -in "$T/alice.pem" -outform DER) || fail "the certificate on the token is not alice's"

note "the audit trail verifies"
run_esc 0 audit verify --user audrey --password-file "$T/audrey.pw"
note "ok"
