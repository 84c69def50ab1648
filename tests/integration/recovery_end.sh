#!/bin/bash
# Recovery requests that end (issue 11): a released package opens only on the
# card of the KRA the request names (stock openssl cms), requests are denied
# or cancelled by the right people only — locally and through the service —
# and a package nobody completed expires (refused at once, deleted by the
# sweep).  Every step and every refusal is audited.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Request End Test CA,O=Example'
ca_pem "$T/ca.pem"
PIN=$P11ESCROW_USER_PIN

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw cm3 'cm3-password-00003'; pw kent 'kent-password-0003'; pw kim 'kim-password-000004'
pw audrey 'audrey-password-05'

note "accounts, two KRA cards (RSA and EC), a key archived to both"
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256
for who in cm1:cert-manager cm2:cert-manager cm3:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
P11ESCROW_NEW_PASSWORD=$(cat "$T/kim.pw") as admin 0 account add kim --role kra --kra kra2
# cm3 manages only the Sales group: alice (O=Example) is outside its scope.
as admin 0 account scope cm3 --group Sales
as admin 0 policy set kra_set_size 2
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$PIN"
printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:alice@example.org\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" 2>/dev/null
openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" >/dev/null 2>&1 ||
    fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >"$T/alice.rec" 2>"$T/out" || fail "archiving alice"
grep -q "kra1,kra2\|kra2,kra1" "$T/alice.rec" || fail "record not wrapped to both KRAs: $(cat "$T/alice.rec")"
ALICE_ID=$(cut -d' ' -f1 "$T/alice.rec")
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
openssl pkcs8 -topk8 -nocrypt -in "$T/alice.key" -outform DER -out "$T/alice.p8"
for n in 1 2; do
    psql_val "SELECT encode(certificate, 'base64') FROM kras WHERE name = 'kra$n'" | base64 -d |
        openssl x509 -inform DER -out "$T/kra$n.pem"
done
# Throwaway test tokens only: the engine takes its PIN from the URI here.
KRA1_KEY="$(psql_val "SELECT key_uri FROM kras WHERE name = 'kra1'");pin-value=$PIN"
KRA2_KEY="$(psql_val "SELECT key_uri FROM kras WHERE name = 'kra2'");pin-value=$PIN"
STORAGE_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'storage'");pin-value=$PIN"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'storage'" | base64 -d |
    openssl x509 -inform DER -out "$T/storage.pem"

# opens N FILE: stock openssl opens the envelope FILE with KRA N's card (and -recip its certificate)
opens() {
    local key=KRA$1_KEY
    openssl cms -decrypt -binary -inform DER -in "$2" -recip "$T/kra$1.pem" -engine pkcs11 -keyform engine \
        -inkey "${!key}" -out "$T/opened.p8" >/dev/null 2>&1 && cmp -s "$T/opened.p8" "$T/alice.p8"
}
# opens_any N FILE: the same without -recip: openssl tries the card's key on every recipient
opens_any() {
    local key=KRA$1_KEY
    openssl cms -decrypt -binary -inform DER -in "$2" -engine pkcs11 -keyform engine \
        -inkey "${!key}" -out "$T/opened.p8" >/dev/null 2>&1 && cmp -s "$T/opened.p8" "$T/alice.p8"
}
state() { psql_val "SELECT state || ' ' || (package IS NULL) FROM recovery_requests WHERE id = $1"; }
reqid() { sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out"; }
# audited ACTOR ACTION ID OUTCOME: at least one such event
audited() {
    [ "$(psql_val "SELECT count(*) FROM audit_events WHERE actor = '$1' AND action = '$2' AND object = 'request $3' AND outcome = '$4'")" -ge 1 ] ||
        fail "no audit event '$1 $2 request $3 $4': $(psql_val "SELECT string_agg(actor || ' ' || action || ' ' || object || ' ' || outcome, '; ') FROM audit_events WHERE object = 'request $3'")"
}

note "release to kra1: the package opens with KRA1's card only (stock openssl cms), byte for byte"
as cm1 0 recovery request --serial "$SERIAL" --reason "alice lost her laptop" --kra kra1
R1=$(reqid)
run_esc 0 recovery release "$R1" --pin-file "$PIN_FILE"
[ "$(state "$R1")" = "released false" ] || fail "not released: $(state "$R1")"
psql_val "SELECT encode(package, 'base64') FROM recovery_requests WHERE id = $R1" | base64 -d >"$T/pkg1.der"
opens 1 "$T/pkg1.der" || fail "KRA1's card does not open the package to kra1 (or not alice's PKCS#8)"
! opens 2 "$T/pkg1.der" || fail "KRA2's card opened the package released to kra1"
! opens_any 2 "$T/pkg1.der" || fail "KRA2's card opened the package released to kra1 (any recipient)"
[ "$(openssl cms -cmsout -inform DER -in "$T/pkg1.der" -print 2>/dev/null | grep -c 'd.ktri:\|d.kari:')" = 1 ] ||
    fail "the package has more than one recipient"
note "the record is unchanged: its inner layer still opens with KRA2 (and KRA1)"
psql_val "SELECT encode(record, 'base64') FROM archive_records WHERE id = '$ALICE_ID'" | base64 -d >"$T/rec.der"
openssl cms -decrypt -binary -inform DER -in "$T/rec.der" -recip "$T/storage.pem" -engine pkcs11 -keyform engine \
    -inkey "$STORAGE_KEY" -out "$T/content.der" 2>/dev/null || fail "openssl cannot open the outer layer"
openssl asn1parse -inform DER -in "$T/content.der" >"$T/asn1.txt"
off=$(awk -F: '/OCTET STRING/ { o = $1 } END { print o + 0 }' "$T/asn1.txt")
openssl asn1parse -inform DER -in "$T/content.der" -strparse "$off" -noout -out "$T/inner.der" ||
    fail "cannot extract the inner layer"
opens 2 "$T/inner.der" || fail "the record's inner layer no longer opens with KRA2"
opens 1 "$T/inner.der" || fail "the record's inner layer no longer opens with KRA1"
note "and the library completes it with KRA1's card"
as kent 0 recovery complete "$R1" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/r1.p12"
[ "$(state "$R1")" = "completed true" ] || fail "not completed: $(state "$R1")"

note "a completed request is neither denied nor cancelled (41)"
as cm2 41 recovery deny "$R1" --reason "too late to deny"
as cm1 41 recovery cancel "$R1" --reason "too late to cancel"
as admin 41 recovery cancel "$R1" --reason "too late to cancel"
[ "$(state "$R1")" = "completed true" ] || fail "a completed request changed: $(state "$R1")"
audited cm2 recovery.deny "$R1" refused
audited cm1 recovery.cancel "$R1" refused

note "deny: never the KRA, an auditor, the requester or an out-of-scope manager; a reason of 3..1000"
as admin 0 policy set recovery_approvals 1
as cm1 0 recovery request --serial "$SERIAL" --reason "alice needs her old mail" --kra kra1
R2=$(reqid)
[ "$(state "$R2")" = "pending true" ] || fail "not pending: $(state "$R2")"
as kent 51 recovery deny "$R2" --reason "a KRA says no"
as audrey 51 recovery deny "$R2" --reason "an auditor says no"
as cm1 51 recovery deny "$R2" --reason "my own request"
assert_out "cancel it"
as cm3 51 recovery deny "$R2" --reason "not my scope"
assert_out "outside the scope"
as cm2 2 recovery deny "$R2"
as cm2 2 recovery deny "$R2" --reason "no"
as cm2 2 recovery deny "$R2" --reason "$(printf 'bad\treason')"
as cm2 42 recovery deny 999999 --reason "no such request"
[ "$(state "$R2")" = "pending true" ] || fail "a refused denial changed the request: $(state "$R2")"
as cm2 0 recovery deny "$R2" --reason "no ticket for this recovery"
assert_out "request $R2 denied by cm2"
[ "$(psql_val "SELECT state || '|' || ended_by || '|' || end_reason || '|' || (ended_at IS NOT NULL) FROM recovery_requests WHERE id = $R2")" = \
    "denied|cm2|no ticket for this recovery|true" ] || fail "denial not recorded"
as cm2 41 recovery deny "$R2" --reason "deny twice"
as cm1 41 recovery cancel "$R2" --reason "cancel a denied one"
as cm2 41 recovery approve "$R2"
run_esc 41 recovery release "$R2" --pin-file "$PIN_FILE"
as cm1 0 recovery list --state denied
assert_out "request $R2  denied"
audited cm2 recovery.deny "$R2" ok
audited kent recovery.deny "$R2" refused
audited cm1 recovery.deny "$R2" refused
audited cm3 recovery.deny "$R2" refused
[ "$(psql_val "SELECT details FROM audit_events WHERE action = 'recovery.deny' AND object = 'request $R2' AND outcome = 'ok'")" = \
    "pending request denied; reason: no ticket for this recovery" ] || fail "deny event details"

note "an administrator denies an approved request"
as cm1 0 recovery request --serial "$SERIAL" --reason "alice, second attempt" --kra kra2
R3=$(reqid)
as cm2 0 recovery approve "$R3"
[ "$(state "$R3")" = "approved true" ] || fail "not approved: $(state "$R3")"
as admin 0 recovery deny "$R3" --reason "the owner objected"
[ "$(state "$R3")" = "denied true" ] || fail "admin denial: $(state "$R3")"
audited admin recovery.deny "$R3" ok

note "cancel: a released package is deleted, the KRA's completion then fails (41); nobody else cancels (51)"
as admin 0 policy set recovery_approvals 0
as cm1 0 recovery request --serial "$SERIAL" --reason "alice, third attempt" --kra kra1
R4=$(reqid)
run_esc 0 recovery release "$R4" --pin-file "$PIN_FILE"
[ "$(state "$R4")" = "released false" ] || fail "not released: $(state "$R4")"
as cm2 51 recovery cancel "$R4" --reason "not mine to cancel"
as kent 51 recovery cancel "$R4" --reason "the KRA cancels"
as audrey 51 recovery cancel "$R4" --reason "the auditor cancels"
as cm1 2 recovery cancel "$R4"
[ "$(state "$R4")" = "released false" ] || fail "a refused cancel changed the request: $(state "$R4")"
as cm1 0 recovery cancel "$R4" --reason "alice found her laptop"
assert_out "request $R4 cancelled by cm1"
[ "$(state "$R4")" = "cancelled true" ] || fail "cancel kept the package: $(state "$R4")"
as kent 41 recovery complete "$R4" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/r4.p12"
assert_out "is cancelled, not released"
[ ! -e "$T/r4.p12" ] || fail "a file was left by a refused completion"
audited cm1 recovery.cancel "$R4" ok
audited cm2 recovery.cancel "$R4" refused
audited kent recovery.complete "$R4" refused
[ "$(psql_val "SELECT details FROM audit_events WHERE action = 'recovery.cancel' AND object = 'request $R4' AND outcome = 'ok'")" = \
    "released request cancelled, its package deleted; reason: alice found her laptop" ] || fail "cancel event details"
note "an administrator cancels a pending request"
as admin 0 policy set recovery_approvals 2
as cm1 0 recovery request --serial "$SERIAL" --reason "alice, fourth attempt" --kra kra1
R5=$(reqid)
as admin 0 recovery cancel "$R5" --reason "duplicate of another ticket"
[ "$(state "$R5")" = "cancelled true" ] || fail "admin cancel: $(state "$R5")"
as admin 0 policy set recovery_approvals 0

note "policy release_ttl_hours: whole hours 1..720, default 24; the database refuses others too"
run_esc 0 policy show
assert_out "release_ttl_hours"
[ "$(psql_val "SELECT value FROM policy WHERE key = 'release_ttl_hours'")" = 24 ] || fail "default TTL"
for bad in 0 721 1.5 -1 +3 ' 3' abc ''; do as admin 2 policy set release_ttl_hours "$bad"; done
as cm1 51 policy set release_ttl_hours 48
! psql "$DB" -XAtqc "UPDATE policy SET value = '0' WHERE key = 'release_ttl_hours'" 2>/dev/null ||
    fail "the database accepted release_ttl_hours 0"

note "through the service (under its own database role): deny, cancel, the package for the named KRA only"
psql_val "CREATE ROLE p11escrowd LOGIN" >/dev/null
run_esc 0 db grant-service p11escrowd
[ "$(psql_val "SELECT bool_and(has_column_privilege('p11escrowd', 'recovery_requests', c, 'UPDATE')) FROM unnest(ARRAY['ended_at', 'ended_by', 'end_reason', 'state', 'package']) c")" = t ] ||
    fail "the service role may not end requests"
[ "$(psql_val "SELECT has_column_privilege('p11escrowd', 'recovery_requests', 'reason', 'UPDATE')")" = f ] ||
    fail "the service role may change a request's reason"
SVC_DB=${DB/user=postgres/user=p11escrowd}
[ "$SVC_DB" != "$DB" ] || fail "cannot derive the service role's conninfo from '$DB'"
DB=$SVC_DB start_daemon 1
API=$URL/api/v1
# post USER PATH JSON: prints the status; body in $T/body
post() {
    curl -sS --cacert "$SERVER_CA" -K "$T/$1.curl" -o "$T/body" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' --data-binary "$3" "$API$2"
}
get() { curl -sS --cacert "$SERVER_CA" -K "$T/$1.curl" -o "$T/body" -w '%{http_code}' "$API$2"; }
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T/body" "$1"; }

as admin 0 policy set recovery_approvals 1
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice via the service" --kra kra2
R6=$(reqid)
srv kim 51 recovery deny "$R6" --reason "the KRA says no"
srv cm3 51 recovery deny "$R6" --reason "out of scope"
srv cm1 51 recovery deny "$R6" --reason "my own"
srv cm2 2 recovery deny "$R6" --reason "x"
[ "$(post kim "/recoveries/$R6/deny" '{"reason":"the KRA says no"}')" = 403 ] || fail "KRA deny over HTTP: $(head -c 300 "$T/body")"
[ "$(post cm2 "/recoveries/$R6/deny" '{}')" = 400 ] || fail "deny without reason: $(head -c 300 "$T/body")"
[ "$(post cm2 "/recoveries/$R6/deny" '{"reason":"abc","extra":"x"}')" = 400 ] || fail "deny with an unknown field"
[ "$(post cm2 "/recoveries/$R6/deny" '')" = 400 ] || fail "deny with an empty body: $(head -c 300 "$T/body")"
[ "$(post cm2 "/recoveries/999999/deny" '{"reason":"no such request"}')" = 404 ] || fail "deny of no request"
[ "$(state "$R6")" = "pending true" ] || fail "refusals changed the request: $(state "$R6")"
srv cm2 0 recovery deny "$R6" --reason "no ticket, said the helpdesk"
assert_out "request $R6 denied by cm2"
[ "$(state "$R6")" = "denied true" ] || fail "deny through the service: $(state "$R6")"
[ "$(post cm2 "/recoveries/$R6/deny" '{"reason":"again"}')" = 409 ] || fail "deny twice over HTTP"
[ "$(get cm1 "/recoveries/$R6")" = 200 ] && [ "$(jget 'd["state"]')" = denied ] || fail "GET a denied request"
[ "$(get cm1 "/recoveries?state=denied")" = 200 ] && [ "$(jget 'len(d["recoveries"])')" = 3 ] ||
    fail "list denied: $(head -c 300 "$T/body")"
[ "$(get cm1 "/recoveries?state=cancelled")" = 200 ] || fail "list cancelled: $(head -c 300 "$T/body")"
[ "$(get cm1 "/recoveries?state=expired")" = 200 ] || fail "list expired: $(head -c 300 "$T/body")"
audited cm2 recovery.deny "$R6" ok
audited kim recovery.deny "$R6" refused

note "released at once by the service to kra2: the API's package opens with KRA2's card, not KRA1's"
as admin 0 policy set recovery_approvals 0
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice, service release" --kra kra2
R7=$(reqid)
[ "$(state "$R7")" = "released false" ] || fail "not released by the service: $(state "$R7")"
[ "$(get kim "/recoveries/$R7/package")" = 200 ] || fail "package: $(head -c 300 "$T/body")"
jget 'd["package"]' | base64 -d >"$T/pkg7.der"
opens 2 "$T/pkg7.der" || fail "KRA2's card does not open the package from the API"
! opens 1 "$T/pkg7.der" || fail "KRA1's card opened the package released to kra2"
! opens_any 1 "$T/pkg7.der" || fail "KRA1's card opened the package released to kra2 (any recipient)"
note "cancel through the service: by the requester; the package is gone for the KRA (409, 41)"
srv cm2 51 recovery cancel "$R7" --reason "not mine"
[ "$(post kim "/recoveries/$R7/cancel" '{"reason":"KRA cancels"}')" = 403 ] || fail "KRA cancel over HTTP"
[ "$(state "$R7")" = "released false" ] || fail "refusals changed the request: $(state "$R7")"
srv cm1 0 recovery cancel "$R7" --reason "alice found a backup"
assert_out "request $R7 cancelled by cm1"
[ "$(state "$R7")" = "cancelled true" ] || fail "cancel through the service: $(state "$R7")"
[ "$(get kim "/recoveries/$R7/package")" = 409 ] || fail "package of a cancelled request: $(head -c 300 "$T/body")"
[ "$(post kim "/recoveries/$R7/complete" '')" = 409 ] || fail "completion of a cancelled request"
srv kim 41 recovery complete "$R7" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/r7.p12"
[ ! -e "$T/r7.p12" ] || fail "a file was left by a refused completion"
[ "$(post admin "/recoveries/$R7/cancel" '{"reason":"cancel twice"}')" = 409 ] || fail "cancel twice over HTTP"
audited cm1 recovery.cancel "$R7" ok
audited cm2 recovery.cancel "$R7" refused
audited kim recovery.fetch "$R7" refused

note "expiry: a package past release_ttl_hours is refused at once, then the sweep expires it"
srv cm1 0 recovery request --serial "$SERIAL" --reason "alice, will expire (service)" --kra kra1
R8=$(reqid)
as cm1 0 recovery request --serial "$SERIAL" --reason "alice, will expire (CLI)" --kra kra2
R9=$(reqid)
run_esc 0 recovery release "$R9" --pin-file "$PIN_FILE"
as cm1 0 recovery request --serial "$SERIAL" --reason "alice, still in time" --kra kra1
R10=$(reqid)
run_esc 0 recovery release "$R10" --pin-file "$PIN_FILE"
for r in "$R8" "$R9" "$R10"; do [ "$(state "$r")" = "released false" ] || fail "$r not released: $(state "$r")"; done
psql_val "UPDATE recovery_requests SET released_at = now() - interval '25 hours' WHERE id IN ($R8, $R9, $R10)" >/dev/null
psql_val "UPDATE recovery_requests SET released_at = now() - interval '23 hours' WHERE id = $R10" >/dev/null
[ "$(get kent "/recoveries/$R8/package")" = 409 ] || fail "fetch of an overdue package: $(head -c 300 "$T/body")"
jget 'd["error"]' | grep_q "expired" || fail "fetch refusal does not say expired: $(head -c 300 "$T/body")"
[ "$(post kent "/recoveries/$R8/complete" '')" = 409 ] || fail "completion of an overdue package over HTTP"
jget 'd["error"]' | grep_q "expired" || fail "completion refusal does not say expired: $(head -c 300 "$T/body")"
srv kent 41 recovery complete "$R8" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/r8.p12"
[ ! -e "$T/r8.p12" ] || fail "a file was left by a refused completion"
as kim 41 recovery complete "$R9" --token 'pkcs11:token=KRA2' --kra-pin-file "$PIN_FILE" --out "$T/r9.p12"
assert_out "expired"
[ ! -e "$T/r9.p12" ] || fail "a file was left by a refused completion"
[ "$(get kent "/recoveries/$R10/package")" = 200 ] || fail "a package within its time was refused: $(head -c 300 "$T/body")"
note "a longer TTL keeps an older package; the policy is read at each check"
as admin 0 policy set release_ttl_hours 48
[ "$(get kent "/recoveries/$R8/package")" = 200 ] || fail "TTL 48 h: a 25 h package refused: $(head -c 300 "$T/body")"
as admin 0 policy set release_ttl_hours 24
[ "$(get kent "/recoveries/$R8/package")" = 409 ] || fail "TTL 24 h again: a 25 h package served"
for r in "$R8" "$R9"; do [ "$(state "$r")" = "released false" ] || fail "refusal changed $r: $(state "$r")"; done
audited kent recovery.fetch "$R8" refused
audited kent recovery.complete "$R8" refused
audited kim recovery.complete "$R9" refused

note "the CLI's sweep (certificate managers and administrators) expires overdue packages, and only those"
as kent 51 recovery expire
as audrey 51 recovery expire
run_esc 2 recovery expire --server "$URL" --server-ca "$SERVER_CA" --user cm1 --password-file "$T/cm1.pw"
psql_val "UPDATE recovery_requests SET released_at = now() - interval '23 hours' WHERE id = $R8" >/dev/null
as cm1 0 recovery expire
assert_out "1 released package(s) expired"
[ "$(state "$R9")" = "expired true" ] || fail "the CLI sweep did not expire $R9: $(state "$R9")"
[ "$(state "$R8")" = "released false" ] || fail "the CLI sweep expired $R8 within its time"
[ "$(state "$R10")" = "released false" ] || fail "the CLI sweep expired $R10 within its time"
audited cm1 recovery.expire "$R9" ok
[ "$(psql_val "SELECT ended_by || '|' || end_reason FROM recovery_requests WHERE id = $R9")" = \
    "cm1|not completed within 24 hour(s) of its release (policy release_ttl_hours)" ] || fail "expiry not recorded"
as cm1 41 recovery cancel "$R9" --reason "cancel an expired one"
as cm1 0 recovery expire
assert_out "0 released package(s) expired"

note "the service's sweep at start (and every minute) expires as 'service'"
psql_val "UPDATE recovery_requests SET released_at = now() - interval '25 hours' WHERE id = $R8" >/dev/null
stop_daemon
DB=$SVC_DB start_daemon 1
API=$URL/api/v1
for i in $(seq 50); do [ "$(state "$R8")" = "expired true" ] && break; sleep 0.1; done
[ "$(state "$R8")" = "expired true" ] || { cat "$DAEMON_LOG" >&2; fail "the service did not expire $R8: $(state "$R8")"; }
[ "$(state "$R10")" = "released false" ] || fail "the service expired $R10 within its time"
grep -q "1 released package(s) expired" "$DAEMON_LOG" || fail "the sweep is not logged"
[ "$(psql_val "SELECT actor || ' ' || role || ' ' || outcome FROM audit_events WHERE action = 'recovery.expire' AND object = 'request $R8'")" = \
    "service service ok" ] || fail "the service's expiry is not audited as 'service'"
[ "$(psql_val "SELECT ended_by FROM recovery_requests WHERE id = $R8")" = service ] || fail "ended_by of the service's expiry"
[ "$(get kent "/recoveries/$R8/package")" = 409 ] || fail "package of an expired request"
jget 'd["error"]' | grep_q "is expired, not released" || fail "expired refusal: $(head -c 300 "$T/body")"
srv cm1 0 recovery list --state expired
assert_out "request $R8  expired"
assert_out "request $R9  expired"
stop_daemon

note "the audit trail is intact and holds every end"
run_esc 0 audit verify
assert_out "audit trail intact"
as audrey 0 audit show --action recovery.deny
[ "$(grep -c 'recovery.deny request' "$T/out")" -ge 10 ] || fail "deny events: $(cat "$T/out")"
as audrey 0 audit show --action recovery.cancel
grep -q "cm1 (cert-manager) recovery.cancel request $R4: ok" "$T/out" || fail "cancel event in audit show"
[ "$(psql_val "SELECT count(*) FROM recovery_requests WHERE package IS NOT NULL AND state <> 'released'")" = 0 ] ||
    fail "a package outlived its release"
echo ok
