#!/bin/bash
# A record cannot be relabelled.  A database writer who changes the columns
# stored beside a record's certificate (cert_serial, subject, email, the
# certificate and its hash) does not make anyone see or recover the wrong
# key: search and list show what the certificate says and flag the row,
# request, release and completion refuse it (exit 33, audited), locally and
# through the service; and a certificate moved in from another row with all
# its columns is refused at release by the certificate hash sealed in the
# record.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Relabel Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw kent 'kent-password-0003'
pw audrey 'audrey-password-05'

note "accounts, a KRA card, four archived keys"
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
for who in cm1:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
for u in alice bob carol dave; do
    printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n' "$u" >"$T/enc.ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$T/$u.key" -subj "/CN=$u/O=Example" -out "$T/$u.csr" 2>/dev/null
    openssl x509 -req -in "$T/$u.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/$u.pem" >/dev/null 2>&1 ||
        fail "issuing $u's certificate"
    "$ENVELOPE_TOOL" archive "$DB" "$T/$u.pem" "$T/$u.key" >"$T/$u.rec" 2>"$T/out" || fail "archiving $u"
done
ALICE=$(cut -d' ' -f1 "$T/alice.rec"); BOB=$(cut -d' ' -f1 "$T/bob.rec")
CAROL=$(cut -d' ' -f1 "$T/carol.rec"); DAVE=$(cut -d' ' -f1 "$T/dave.rec")
serial_of() { psql_val "SELECT cert_serial FROM archive_records WHERE id = '$1'"; }
ALICE_SERIAL=$(serial_of "$ALICE"); BOB_SERIAL=$(serial_of "$BOB")

note "an untouched row is not flagged"
as cm1 0 recovery search --serial "$ALICE_SERIAL"
assert_out "1 record(s)"
assert_out "CN=alice"
assert_not_out "TAMPERED"

note "requests filed before the rows are altered: alice's released, alice's and carol's approved"
request() { # request RECORD: files it as cm1 (approved at once, the default policy); prints its id
    as cm1 0 recovery request --record "$1" --reason "filed before the relabel" --kra kra1
    sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out"
}
REQ_DONE=$(request "$ALICE")
run_esc 0 recovery release "$REQ_DONE" --pin-file "$PIN_FILE"
REQ_REL=$(request "$ALICE")
REQ_SWAP=$(request "$CAROL")
[ -n "$REQ_DONE" ] && [ -n "$REQ_REL" ] && [ -n "$REQ_SWAP" ] || fail "no request ids"
start_daemon 2
API=$URL/api/v1

note "relabel: alice's row gets bob's serial, subject and email (as the database owner)"
psql_val "UPDATE archive_records SET (cert_serial, subject, email) = (SELECT cert_serial, subject, email
          FROM archive_records WHERE id = '$BOB') WHERE id = '$ALICE'" >/dev/null
[ "$(serial_of "$ALICE")" = "$BOB_SERIAL" ] || fail "the relabel did not happen"

# check_search: $T/out holds 'recovery search --serial BOB_SERIAL' output
check_search() {
    assert_out "2 record(s)"
    grep -A2 "^record $ALICE" "$T/out" >"$T/alice.txt" || fail "alice's row is not in the search"
    grep -q "^record $ALICE  TAMPERED" "$T/alice.txt" || fail "alice's relabelled row is not flagged: $(cat "$T/alice.txt")"
    grep -q "serial:  $ALICE_SERIAL\$" "$T/alice.txt" || fail "alice's row does not show her serial"
    grep -q "subject: CN=alice,O=Example\$" "$T/alice.txt" || fail "alice's row does not show her subject"
    grep -q "^record $BOB\$" "$T/out" || fail "bob's own row is missing or flagged"
}
note "search, local and through the service: alice's row shows alice, flagged; bob's row is bob's"
as cm1 0 recovery search --serial "$BOB_SERIAL"
check_search
as audrey 0 recovery search --email bob@example.org
grep -q "^record $ALICE  TAMPERED" "$T/out" || fail "a search by email does not flag alice's row"
srv cm1 0 recovery search --serial "$BOB_SERIAL"
check_search
code=$(curl -sS --cacert "$SERVER_CA" -K "$T/cm1.curl" -o "$T/body" -w '%{http_code}' \
    "$API/records?serial=$BOB_SERIAL") || fail "curl"
[ "$code" = 200 ] || fail "GET /records: HTTP $code"
python3 - "$T/body" "$ALICE" "$BOB" "$ALICE_SERIAL" <<'EOF' || fail "GET /records: $(cat "$T/body")"
import json, sys
d = {r["id"]: r for r in json.load(open(sys.argv[1]))["records"]}
a, b = d[sys.argv[2]], d[sys.argv[3]]
assert a["tampered"] is True and b["tampered"] is False, (a, b)
assert a["subject"] == "CN=alice,O=Example" and a["serial"] == sys.argv[4], a
assert a["email"] == "alice@example.org", a
EOF

note "a request for alice's record is refused as tampering (exit 33) and audited, locally and through the service"
refusals() { psql_val "SELECT count(*) FROM audit_events WHERE action = '$1' AND outcome = 'refused' AND $2"; }
n0=$(refusals recovery.request "object = '$ALICE'")
nreq=$(psql_val "SELECT count(*) FROM recovery_requests")
as cm1 33 recovery request --record "$ALICE" --reason "bob lost his laptop" --kra kra1
assert_out "was altered"
assert_out "cert_serial, subject, email"
srv cm1 33 recovery request --record "$ALICE" --reason "bob lost his laptop" --kra kra1
printf '{"record":"%s","reason":"bob lost his laptop","kra":"kra1"}' "$ALICE" >"$T/req.json"
code=$(curl -sS --cacert "$SERVER_CA" -K "$T/cm1.curl" -o "$T/body" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' --data-binary @"$T/req.json" "$API/recoveries") || fail "curl"
[ "$code" = 409 ] || fail "POST /recoveries for a relabelled row: HTTP $code, expected 409"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["code"] == "integrity check failed: data was altered", d' \
    "$T/body" || fail "POST /recoveries error: $(cat "$T/body")"
[ "$(refusals recovery.request "object = '$ALICE'")" = $((n0 + 3)) ] || fail "the refused requests are not audited"
[ "$(psql_val "SELECT count(*) FROM recovery_requests")" = "$nreq" ] || fail "a request was filed for a relabelled row"

note "the requests filed before: listed with alice's serial and subject, flagged"
as cm1 0 recovery list
grep -A2 "^request $REQ_DONE " "$T/out" >"$T/req.txt"
grep -q "serial $ALICE_SERIAL\$" "$T/req.txt" && grep -q "subject: CN=alice,O=Example" "$T/req.txt" &&
    grep -q "TAMPERED" "$T/req.txt" || fail "request $REQ_DONE is not shown as alice's, flagged: $(cat "$T/req.txt")"
srv kent 0 recovery list --state released
grep -A2 "^request $REQ_DONE " "$T/out" | grep_q TAMPERED || fail "the service's list does not flag request $REQ_DONE"
code=$(curl -sS --cacert "$SERVER_CA" -K "$T/cm1.curl" -o "$T/body" -w '%{http_code}' "$API/recoveries/$REQ_SWAP")
[ "$code" = 200 ] || fail "GET /recoveries/$REQ_SWAP: HTTP $code"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["tampered"] is False, d' "$T/body" ||
    fail "an untouched request is flagged: $(cat "$T/body")"

note "release of a request filed before the relabel: refused (33), nothing released"
run_esc 33 recovery release "$REQ_REL" --pin-file "$PIN_FILE"
assert_out "was altered"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ_REL")" = approved ] || fail "released anyway"

note "completion of a package released before the relabel: refused (33), nothing written, locally and via the service"
n0=$(refusals recovery.complete "object = 'request $REQ_DONE'")
as kent 33 recovery complete "$REQ_DONE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/local.p12"
assert_out "was altered"
assert_not_out "the key matches its certificate"
[ ! -e "$T/local.p12" ] || fail "a file was written for a relabelled record"
srv kent 33 recovery complete "$REQ_DONE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/srv.p12"
assert_not_out "the key matches its certificate"
[ ! -e "$T/srv.p12" ] || fail "a file was written for a relabelled record through the service"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ_DONE")" = released ] || fail "completed anyway"
[ "$(refusals recovery.complete "object = 'request $REQ_DONE'")" = $((n0 + 1)) ] || fail "refused completion not audited"
[ "$(refusals recovery.fetch "object = 'request $REQ_DONE'")" -ge 1 ] || fail "refused fetch not audited"

swap() { # swap COLUMN...: exchange these columns between carol's and dave's rows (unique ones via a detour)
    local set="" c
    for c in "$@"; do set+="${set:+, }$c = s.$c"; done
    psql "$DB" -XAtq -v ON_ERROR_STOP=1 >/dev/null <<EOF || fail "could not swap $*"
BEGIN;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT * FROM archive_records WHERE id IN ('$CAROL', '$DAVE');
UPDATE archive_records SET cert_sha256 = 'x' || id, public_key_sha256 = 'y' || id WHERE id IN ('$CAROL', '$DAVE');
UPDATE archive_records a SET $set FROM s WHERE a.id IN ('$CAROL', '$DAVE') AND s.id <> a.id;
UPDATE archive_records a SET cert_sha256 = s.cert_sha256 FROM s WHERE a.id = s.id AND a.cert_sha256 LIKE 'x%';
UPDATE archive_records a SET public_key_sha256 = s.public_key_sha256 FROM s WHERE a.id = s.id AND a.public_key_sha256 LIKE 'y%';
COMMIT;
EOF
}
note "swap the certificate alone between carol's and dave's rows: refused at release (its hash is not the column's)"
swap certificate
as cm1 0 recovery search --subject carol
grep -q "^record $CAROL  TAMPERED" "$T/out" || fail "carol's row with dave's certificate is not flagged"
run_esc 33 recovery release "$REQ_SWAP" --pin-file "$PIN_FILE"
assert_out "cert_sha256"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ_SWAP")" = approved ] || fail "released anyway"
note "... the certificate with its hash: refused at release (serial, subject, email are carol's)"
swap cert_sha256
as cm1 0 recovery search --subject carol
grep -q "^record $CAROL  TAMPERED" "$T/out" || fail "carol's row with dave's certificate and hash is not flagged"
run_esc 33 recovery release "$REQ_SWAP" --pin-file "$PIN_FILE"
assert_out "was altered"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ_SWAP")" = approved ] || fail "released anyway"

note "... and with every column of the certificate moved too: the hash sealed in the record refuses it"
swap cert_serial subject email public_key_sha256
[ "$(psql_val "SELECT subject FROM archive_records WHERE id = '$CAROL'")" = "CN=dave,O=Example" ] || fail "no full swap"
run_esc 33 recovery release "$REQ_SWAP" --pin-file "$PIN_FILE"
assert_out "sealed for another certificate"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ_SWAP")" = approved ] || fail "released anyway"
[ "$(refusals recovery.release "object = 'request $REQ_SWAP'")" = 3 ] || fail "refused releases not audited"

note "the audit trail is intact and names the certificate's serial in request events"
run_esc 0 audit verify
assert_out "audit trail intact"
psql_val "SELECT details FROM audit_events WHERE action = 'recovery.request' AND outcome = 'ok' AND object = 'request $REQ_DONE'" |
    grep -q "serial $ALICE_SERIAL, subject 'CN=alice,O=Example'" || fail "the request event does not name alice's certificate"
stop_daemon
echo ok
