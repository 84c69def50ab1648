#!/bin/bash
# KRA enrollment through the service, at a security officer's workstation
# (no CA token, no database there: srv makes it unreachable).  The key pair
# is generated on the card; the service seals a secret to its public key and
# certifies the key and registers the KRA only once the card decrypted it.
# RSA and EC cards; both KRAs then recover an archived key through the
# service.  Refusals: a non-administrator, a name or a card enrolled
# already, a wrong secret, a challenge answered twice, an expired one,
# another administrator's; each audited, nothing registered, and the key a
# failed CLI enrollment generated is gone from the card again.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2 KRA3
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=KRA Server Test CA,O=Example'

pw admin 'admin-password-0001'; pw admin2 'admin2-password-002'; pw cm1 'cm1-password-00001'
pw kent 'kent-password-0003'; pw kim 'kim-password-00004'; pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
for who in admin2:admin cm1:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
start_daemon 2
API=$URL/api/v1
http() {
    local data=()
    [ $# -gt 3 ] && data=(-H 'Content-Type: application/json' --data-binary "$4")
    curl -sS --cacert "$SERVER_CA" -K "$T/$1.curl" -o "$T/body" -w '%{http_code}' -X "$2" "${data[@]}" "$API$3"
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print('"$1"')' "$T/body"; }
kras() { psql_val "SELECT count(*) FROM kras"; }
events() { psql_val "SELECT count(*) FROM audit_events WHERE action = '$1' AND outcome = '$2'"; }

note "an RSA card enrolled through the service: key on the card, possession proven, then certified"
srv admin 0 kra enroll --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra-rsa
assert_out "KRA 'kra-rsa' enrolled on card 'KRA1'"
assert_out "through the service, possession proven"
assert_out "rsa3072, recipient rsa-oaep-sha1"
assert_not_out "warning"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA1)" = 1 ] || fail "KRA1 does not hold exactly one private key"
[ "$(psql_val "SELECT state || ' ' || key_type || ' ' || recipient || ' ' || token_label FROM kras
               WHERE name = 'kra-rsa'")" = "active rsa3072 rsa-oaep-sha1 KRA1" ] || fail "kra-rsa not registered"
[ "$(psql_val "SELECT outcome FROM kra_challenges WHERE name = 'kra-rsa'")" = enrolled ] || fail "challenge not used"
psql_val "SELECT details FROM audit_events WHERE action = 'kra.enroll' AND object = 'kra-rsa' AND outcome = 'ok'" |
    grep -q "^through the service, possession proven" || fail "kra.enroll event does not say how"
[ "$(psql_val "SELECT actor FROM audit_events WHERE action = 'kra.enroll.challenge' AND object = 'kra-rsa'")" = admin ] ||
    fail "the challenge is not audited"
psql_val "SELECT encode(certificate, 'base64') FROM kras WHERE name = 'kra-rsa'" | base64 -d |
    openssl x509 -inform DER -out "$T/kra-rsa.pem"
openssl verify -CAfile "$T/ca.pem" "$T/kra-rsa.pem" >/dev/null || fail "the KRA certificate does not verify"
openssl x509 -in "$T/kra-rsa.pem" -noout -ext extendedKeyUsage | grep_q "1.3.6.1.4.1.311.21.6" ||
    fail "the KRA certificate lacks the KRA EKU"
openssl x509 -in "$T/kra-rsa.pem" -noout -subject | grep_q "CN *= *kra-rsa" || fail "the KRA certificate's subject"
SOFTHSM2_CONF=$SOFTHSM2_CONF p11tool --provider "$SOFTHSM" --list-all-certs 'pkcs11:token=KRA1' 2>/dev/null |
    grep -q "p11escrow KRA kra-rsa" || fail "the certificate is not on the card"

note "an EC card (P-256, ECDH)"
srv admin 0 kra enroll --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --name kra-ec --key-type ec-p256
assert_out "ec-p256, recipient ecdh"
[ "$(psql_val "SELECT key_type || ' ' || recipient FROM kras WHERE name = 'kra-ec'")" = "ec-p256 ecdh" ] ||
    fail "kra-ec not registered"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA2)" = 1 ] || fail "KRA2 does not hold exactly one private key"
srv audrey 0 kra list
assert_out "kra-rsa"; assert_out "kra-ec"

note "refused, audited, nothing registered, the generated key removed: a non-administrator"
n0=$(kras); c0=$(events kra.enroll.challenge refused)
srv cm1 51 kra enroll --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --name kra3
assert_out "was removed again"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA3)" = 0 ] || fail "a refused enrollment left a key on KRA3"
[ "$(events kra.enroll.challenge refused)" = $((c0 + 1)) ] || fail "the refusal is not audited"
note "a name enrolled already"
srv admin 40 kra enroll --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --name kra-rsa
assert_out "a KRA named 'kra-rsa' is already enrolled"
assert_out "was removed again"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA3)" = 0 ] || fail "a refused enrollment left a key on KRA3"
note "a card enrolled already"
srv admin 40 kra enroll --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra-again
assert_out "is already enrolled as KRA 'kra-rsa'"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA1)" = 1 ] || fail "a refused enrollment left a second key on KRA1"
[ "$(kras)" = "$n0" ] || fail "a refused enrollment registered a KRA"
[ "$(events kra.enroll.challenge refused)" = $((c0 + 3)) ] || fail "the refusals are not all audited"
note "a wrong password costs no key: the CLI logs in before it touches the card"
printf 'wrong-password-0000\n' >"$T/bad.pw"; chmod 600 "$T/bad.pw"
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' run_esc 50 kra enroll \
    --token 'pkcs11:token=KRA3' --kra-pin-file "$PIN_FILE" --name kra3 \
    --server "$URL" --server-ca "$SERVER_CA" --user admin --password-file "$T/bad.pw"
[ "$(count_private_keys "$SOFTHSM2_CONF" KRA3)" = 0 ] || fail "a key was generated for a failed login"

note "both KRAs recover an archived key through the service"
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") srv admin 0 account add kent --role kra --kra kra-rsa
P11ESCROW_NEW_PASSWORD=$(cat "$T/kim.pw") srv admin 0 account add kim --role kra --kra kra-ec
srv admin 0 policy set kra_set_size 2
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:alice@example.org\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" 2>/dev/null
openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" >/dev/null 2>&1 ||
    fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >"$T/alice.rec" 2>"$T/out" || fail "archiving alice"
ALICE=$(cut -d' ' -f1 "$T/alice.rec")
[ "$(psql_val "SELECT string_agg(k.name, ',' ORDER BY k.name) FROM archive_record_kras a JOIN kras k ON k.id = a.kra_id
               WHERE a.record_id = '$ALICE'")" = "kra-ec,kra-rsa" ] || fail "alice's record is not wrapped to both KRAs"
recover() { # recover KRA ACCOUNT TOKEN
    local req
    srv cm1 0 recovery request --record "$ALICE" --reason "alice lost her laptop ($1)" --kra "$1"
    req=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
    [ -n "$req" ] || fail "no request id"
    [ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $req")" = released ] || fail "request $req not released"
    P11ESCROW_P12_PASSWORD=p12-password-0000 srv "$2" 0 recovery complete "$req" --token "pkcs11:token=$3" \
        --kra-pin-file "$PIN_FILE" --out "$T/$1.p12"
    assert_out "request $req completed: the key matches its certificate"
    openssl pkcs12 -in "$T/$1.p12" -passin pass:p12-password-0000 -nodes -nocerts -out "$T/$1.key" 2>/dev/null ||
        fail "openssl pkcs12 cannot open $1's output"
    cmp -s <(openssl pkey -in "$T/$1.key" -outform DER) <(openssl pkey -in "$T/alice.key" -outform DER) ||
        fail "the key recovered by $1 differs from the archived one"
}
recover kra-rsa kent KRA1
recover kra-ec kim KRA2

note "the protocol with curl and a software key: stock 'openssl cms -decrypt' opens the challenge"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$T/soft.key" 2>/dev/null
SPKI=$(openssl pkey -in "$T/soft.key" -pubout -outform DER | base64 -w0)
offer() { # offer NAME LABEL [KEY_TYPE]: the body of POST /kras for the software key
    printf '{"name":"%s","token_label":"%s","token_serial":"00000000000000%02d","key_uri":"pkcs11:token=%s;id=%%01;type=private","key_type":"%s","recipient":"rsa-oaep-sha1","public_key":"%s"}' \
        "$1" "$2" "${#1}" "$2" "${3:-rsa3072}" "$SPKI"
}
challenge() { # challenge NAME LABEL: POST /kras as admin; sets CID and writes the challenge to $T/chal.der
    local code
    code=$(http admin POST /kras "$(offer "$1" "$2")")
    [ "$code" = 201 ] || fail "POST /kras $1: HTTP $code: $(cat "$T/body")"
    CID=$(jget 'd["challenge_id"]')
    jget 'd["challenge"]' | base64 -d >"$T/chal.der"
    [ -n "$CID" ] && [ -s "$T/chal.der" ] || fail "no challenge: $(cat "$T/body")"
}
answer() { # answer: the right secret of $T/chal.der, base64
    openssl cms -decrypt -inform DER -in "$T/chal.der" -inkey "$T/soft.key" -binary 2>"$T/cms.err" | base64 -w0 ||
        fail "openssl cms cannot open the challenge: $(cat "$T/cms.err")"
}
prove() { http "$1" POST "/kras/$2/prove" "{\"challenge_id\":\"$3\",\"secret\":\"$4\"}"; }

note "a wrong secret: 403, audited, nothing registered, the challenge used up (409 with the right one then)"
n0=$(kras); w0=$(events kra.enroll refused)
challenge soft1 SOFT1
RIGHT=$(answer)
[ "$(printf '%s' "$RIGHT" | base64 -d | wc -c)" = 32 ] || fail "the secret is not 32 bytes"
[ "$(prove admin soft1 "$CID" "$(head -c 32 /dev/urandom | base64 -w0)")" = 403 ] || fail "a wrong secret: $(cat "$T/body")"
jget 'd["error"]' | grep_q "did not prove" || fail "wrong secret reason: $(cat "$T/body")"
[ "$(kras)" = "$n0" ] || fail "a wrong secret registered a KRA"
[ "$(events kra.enroll refused)" = $((w0 + 1)) ] || fail "the wrong secret is not audited"
[ "$(psql_val "SELECT outcome FROM kra_challenges WHERE id = $CID")" = "wrong secret" ] || fail "challenge not used up"
note "a challenge is answered once"
[ "$(prove admin soft1 "$CID" "$RIGHT")" = 409 ] || fail "a used challenge: $(cat "$T/body")"
jget 'd["error"]' | grep_q "answered already" || fail "reuse reason: $(cat "$T/body")"
[ "$(kras)" = "$n0" ] || fail "a used challenge registered a KRA"

note "an expired challenge: 409, audited, nothing registered"
challenge soft1 SOFT1
RIGHT=$(answer)
psql_val "UPDATE kra_challenges SET created_at = now() - interval '10 minutes', expires_at = now() - interval '5 minutes'
          WHERE id = $CID" >/dev/null
[ "$(prove admin soft1 "$CID" "$RIGHT")" = 409 ] || fail "an expired challenge: $(cat "$T/body")"
jget 'd["error"]' | grep_q "expired" || fail "expiry reason: $(cat "$T/body")"
[ "$(kras)" = "$n0" ] || fail "an expired challenge registered a KRA"
[ "$(events kra.enroll refused)" = $((w0 + 3)) ] || fail "the reuse and the expiry are not audited"

note "only the administrator who started the enrollment answers; not a certificate manager; not another name"
challenge soft1 SOFT1
RIGHT=$(answer)
[ "$(prove admin2 soft1 "$CID" "$RIGHT")" = 403 ] || fail "another administrator answered: $(cat "$T/body")"
[ "$(prove cm1 soft1 "$CID" "$RIGHT")" = 403 ] || fail "a certificate manager answered: $(cat "$T/body")"
[ "$(prove admin kra-other "$CID" "$RIGHT")" = 404 ] || fail "the challenge of another name: $(cat "$T/body")"
[ "$(kras)" = "$n0" ] || fail "a refused answer registered a KRA"
note "the right answer: 201 with the certificate, registered"
[ "$(prove admin soft1 "$CID" "$RIGHT")" = 201 ] || fail "the right secret: $(cat "$T/body")"
jget 'd["certificate"]' | base64 -d | openssl x509 -inform DER -noout -pubkey >"$T/soft-cert.pub"
cmp -s "$T/soft-cert.pub" <(openssl pkey -in "$T/soft.key" -pubout) || fail "the certificate is not for the key"
[ "$(psql_val "SELECT state FROM kras WHERE name = 'soft1'")" = active ] || fail "soft1 not registered"

note "offers the service refuses (400, audited) before any challenge"
c0=$(psql_val "SELECT count(*) FROM kra_challenges")
[ "$(http admin POST /kras "$(offer soft2 SOFT2 ec-p256)")" = 400 ] || fail "an RSA key offered as EC: $(cat "$T/body")"
[ "$(http admin POST /kras "$(offer soft2 SOFT2 rsa4096)")" = 400 ] || fail "a 3072-bit key offered as 4096"
[ "$(http admin POST /kras "$(offer soft2 SOFT2 | sed 's/type=private/type=private;pin-value=1234/')")" = 400 ] ||
    fail "a URI with a PIN: $(cat "$T/body")"
[ "$(http admin POST /kras "$(offer soft2 SOFT2 | sed 's/"public_key":"[^"]*"/"public_key":"AAAA"/')")" = 400 ] ||
    fail "a public key that is no SPKI: $(cat "$T/body")"
[ "$(http admin POST /kras "$(offer 'bad/name' SOFT2)")" = 400 ] || fail "a bad name: $(cat "$T/body")"
[ "$(http admin POST /kras "$(offer soft2 SOFT2 | sed 's/}$/,"extra":"x"}/')")" = 400 ] || fail "an unknown field"
[ "$(psql_val "SELECT count(*) FROM kra_challenges")" = "$c0" ] || fail "a refused offer left a challenge"
[ "$(http audrey POST /kras "$(offer soft2 SOFT2)")" = 403 ] || fail "an auditor offered a key"

note "the secret never reaches a log"
! grep -qF "$RIGHT" "$DAEMON_LOG" || fail "the secret is in the service's log"
stop_daemon
note "ok"
