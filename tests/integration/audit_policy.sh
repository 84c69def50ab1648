#!/bin/bash
# Recovery policies security officers expect, each change by an
# administrator only and audited: certificate managers scoped to profiles
# and groups (search, request and approve, through the CLI and the API;
# out of scope is DENIED and audited), at most one valid archived encryption
# key per subject and profile (supersede or refuse), and the audit trail's
# filters (--serial, --actor, --action, --since, --until).
. "$(dirname "$0")/lib.sh"
: "${ENROLL_TOOL:?set by meson}" "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Policy Test CA,O=Example'

pw admin 'admin-password-0001'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
for who in cmall:cert-manager cmsales:cert-manager cmrsa:cert-manager cm2:cert-manager audrey:auditor; do
    u=${who%%:*}
    pw "$u" "$u-password-000000"
    P11ESCROW_NEW_PASSWORD=$(cat "$T/$u.pw") as admin 0 account add "$u" --role "${who#*:}"
done

# issue NAME PROFILE SUBJECT [EXPECTED_RC]: enroll_tool issues and archives an EC key; SERIAL_<NAME> is set
issue() {
    local rc=0 want=${4:-0}
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$1.key" 2>/dev/null
    "$ENROLL_TOOL" issue "$DB" "$PIN_FILE" "$2" "$3" "$T/$1.key" --key "$T/$1.key" --out "$T/$1.pem" \
        >"$T/out" 2>&1 </dev/null || rc=$?
    [ "$rc" -eq "$want" ] || fail "issuing $1 ($2, $3) exited $rc, expected $want"
    [ "$want" -ne 0 ] || printf -v "SERIAL_$1" '%s' "$(awk '{print $2}' "$T/out")"
}

note "archived keys of several profiles and groups (O and OU of the subject)"
issue alice encryption 'CN=Alice,O=Example,OU=Sales'
issue bob encryption 'CN=Bob,O=Example,OU=Engineering'
issue carol encryption-rsa 'CN=Carol,O=Example,OU=Sales'
# A CN that reads like a group is no group: the comma is escaped in the stored subject.
issue eve encryption '/CN=Eve,OU=Sales/O=Other'
[ "$(psql_val "SELECT subject FROM archive_records WHERE cert_serial = '$SERIAL_eve'")" = 'CN=Eve\,OU=Sales,O=Other' ] ||
    fail "eve's subject: $(psql_val "SELECT subject FROM archive_records WHERE cert_serial = '$SERIAL_eve'")"
# A foreign certificate, imported: it has no profile ('imported').
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/foreign-ca.key" \
    -subj '/CN=Foreign CA' -days 30 -out "$T/foreign-ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/dave.key" \
    -subj '/CN=Dave/O=Example/OU=Sales' -out "$T/dave.csr" 2>/dev/null
printf 'keyUsage=critical,keyAgreement\n' >"$T/enc.ext"
openssl x509 -req -in "$T/dave.csr" -CA "$T/foreign-ca.pem" -CAkey "$T/foreign-ca.key" -set_serial 0x0d0e \
    -days 30 -extfile "$T/enc.ext" -out "$T/dave.pem" 2>/dev/null
as admin 0 policy set allow_foreign_issuers true
"$ENVELOPE_TOOL" archive "$DB" "$T/dave.pem" "$T/dave.key" >"$T/dave.rec" 2>"$T/out" || fail "archiving dave"
SERIAL_dave=d0e

note "scopes: set by administrators only, validated, each change and refusal audited"
as cmall 51 account scope cmsales --group sales
as audrey 51 account scope cmsales --clear
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'account.scope' AND outcome = 'refused'")" = 2 ] ||
    fail "refused scope changes not audited"
as admin 2 account scope cmsales --profile nonsense
assert_out "unknown profile 'nonsense'"
as admin 2 account scope cmsales --profile signing
assert_out "never archives keys"
as admin 2 account scope audrey --group sales
assert_out "not a certificate manager"
as admin 2 account scope cmsales --group Sales --group SALES
assert_out "given twice"
as admin 42 account scope nobody --group sales
as admin 2 account scope cmsales --clear --group sales
[ "$(psql_val "SELECT count(*) FROM manager_scopes")" = 0 ] || fail "a refused scope was stored"
as admin 0 account scope cmsales --group sales
assert_out "account 'cmsales': group sales"
as admin 0 account scope cmrsa --profile encryption-rsa --profile imported
as cmall 0 account scope cmrsa
assert_out "account 'cmrsa': profile encryption-rsa"
assert_out "account 'cmrsa': profile imported"
as cmall 0 account list
grep -qE '^cmsales +cert-manager +- +no +group sales$' "$T/out" || fail "account list lacks cmsales's scope"
grep -qE '^cmall +cert-manager +- +no$' "$T/out" || fail "an unscoped manager shows a scope"
[ "$(psql_val "SELECT details FROM audit_events WHERE action = 'account.scope' AND object = 'cmrsa' AND outcome = 'ok'")" = \
    "profiles: encryption-rsa,imported; groups: any" ] || fail "scope change not audited with the new scope"

note "search shows a scoped manager only what is in scope; unscoped managers and auditors see all"
as cmall 0 recovery search --subject 'CN='
assert_out "5 record(s)"
as audrey 0 recovery search --subject 'CN='
assert_out "5 record(s)"
as cmsales 0 recovery search --subject 'CN='
assert_out "3 record(s)"
for n in Alice Carol Dave; do assert_out "CN=$n"; done
for n in Bob Eve; do assert_not_out "CN=$n"; done
as cmrsa 0 recovery search --subject 'CN='
assert_out "2 record(s)"
assert_out "CN=Carol"
assert_out "CN=Dave"
as cmsales 0 recovery search --serial "$SERIAL_bob"
assert_out "0 record(s)"

note "request: out of scope is DENIED and audited; in scope works"
as cmsales 51 recovery request --serial "$SERIAL_bob" --reason "bob left" --kra kra1
assert_out "outside the scope of account 'cmsales'"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'recovery.request' AND actor = 'cmsales' AND object = '$SERIAL_bob' AND outcome = 'refused'")" = 1 ] ||
    fail "the out-of-scope request is not audited"
as cmsales 51 recovery request --serial "$SERIAL_eve" --reason "eve left" --kra kra1
as cmrsa 51 recovery request --serial "$SERIAL_alice" --reason "alice left" --kra kra1
as cmsales 0 recovery request --serial "$SERIAL_alice" --reason "alice lost her laptop" --kra kra1
as cmrsa 0 recovery request --serial "$SERIAL_dave" --reason "dave lost his laptop" --kra kra1
[ "$(psql_val "SELECT count(*) FROM recovery_requests")" = 2 ] || fail "requests: $(psql_val "SELECT count(*) FROM recovery_requests")"

note "approve: only managers whose scope holds the record; they list only its requests"
as admin 0 policy set recovery_approvals 1
as cmall 0 recovery request --serial "$SERIAL_bob" --reason "bob left the company" --kra kra1
REQ_BOB=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
as cmsales 51 recovery approve "$REQ_BOB"
assert_out "outside the scope of account 'cmsales'"
as cmsales 0 recovery list
assert_not_out "CN=Bob"
assert_out "CN=Alice"
as cm2 0 recovery approve "$REQ_BOB"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ_BOB")" = approved ] || fail "bob's request not approved"

note "the same through the service's API (CLI --server)"
start_daemon 1
srv cmsales 0 recovery search --subject 'CN='
assert_out "3 record(s)"
assert_not_out "CN=Bob"
srv cmsales 51 recovery request --serial "$SERIAL_bob" --reason "bob left, through the API" --kra kra1
assert_out "outside the scope"
srv cmsales 0 recovery request --serial "$SERIAL_carol" --reason "carol lost her card" --kra kra1
REQ_CAROL=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
srv cmrsa 0 recovery approve "$REQ_CAROL"
srv cmall 51 recovery approve "$REQ_BOB"
stop_daemon
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'recovery.request' AND actor = 'cmsales' AND outcome = 'refused'")" = 3 ] ||
    fail "API refusals not audited"

note "clearing a scope: every record again"
as admin 0 account scope cmsales --clear
assert_out "scope cleared"
as cmsales 0 recovery search --subject 'CN='
assert_out "5 record(s)"
as admin 0 policy set recovery_approvals 0

note "one key per subject and profile: off by default, changed only by an administrator"
issue alice2 encryption 'CN=Alice,O=Example,OU=Sales'
as cmall 51 policy set one_key_per_subject refuse
as admin 2 policy set one_key_per_subject maybe
assert_out "off, supersede or refuse"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'policy.set' AND outcome = 'refused'")" = 2 ] ||
    fail "refused policy changes not audited"
as admin 0 policy set one_key_per_subject refuse
run_esc 0 policy show
grep -qE '^one_key_per_subject +refuse +set by admin' "$T/out" || fail "policy show: $(cat "$T/out")"

note "refuse: a second valid archived key of the subject and profile is refused, nothing stored"
before=$(psql_val "SELECT count(*) FROM certificates")
issue alice3 encryption 'CN=Alice,O=Example,OU=Sales' 43
assert_out "subject already has a valid archived encryption key (serial $SERIAL_alice)"
[ "$(psql_val "SELECT count(*) FROM certificates")" = "$before" ] || fail "a refused enrollment stored a certificate"
[ "$(psql_val "SELECT outcome FROM audit_events WHERE action = 'enroll.issue' ORDER BY id DESC LIMIT 1")" = refused ] ||
    fail "the refusal is not audited"
issue alice_rsa encryption-rsa 'CN=Alice,O=Example,OU=Sales'
issue frank encryption 'CN=Frank,O=Example'

note "supersede: the new certificate revokes the older ones (reason superseded, on the CRL), audited"
as admin 0 policy set one_key_per_subject supersede
issue alice4 encryption 'CN=Alice,O=Example,OU=Sales'
for old in "$SERIAL_alice" "$SERIAL_alice2"; do
    [ "$(psql_val "SELECT reason || ' ' || own FROM revocations WHERE serial = '$old'")" = "superseded true" ] ||
        fail "$old was not revoked as superseded"
    [ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'cert.revoke' AND object = '$old' AND details LIKE 'reason superseded by $SERIAL_alice4%'")" = 1 ] ||
        fail "the supersession of $old is not audited"
done
for keep in "$SERIAL_alice4" "$SERIAL_alice_rsa" "$SERIAL_frank" "$SERIAL_bob"; do
    [ "$(psql_val "SELECT count(*) FROM revocations WHERE serial = '$keep'")" = 0 ] || fail "$keep was revoked"
done
run_esc 0 cert crl --out "$T/crl.pem" --pin-file "$PIN_FILE"
openssl crl -in "$T/crl.pem" -noout -text >"$T/crl.txt"
grep -qi "$(tr a-f A-F <<<"$SERIAL_alice")" "$T/crl.txt" && grep -q "Superseded" "$T/crl.txt" ||
    fail "the superseded certificate is not on the CRL"
as admin 0 policy set one_key_per_subject refuse
issue alice5 encryption 'CN=Alice,O=Example,OU=Sales' 43
assert_out "(serial $SERIAL_alice4)"
as admin 0 cert revoke --serial "$SERIAL_alice4" --reason keyCompromise
issue alice6 encryption 'CN=Alice,O=Example,OU=Sales'

note "audit show: filters by serial, actor, action and time; export as JSON lines"
as audrey 0 audit show --serial "$SERIAL_bob"
for a in archive.store enroll.issue recovery.request recovery.approve; do
    grep -q " $a " "$T/out" || fail "audit show --serial lacks $a"
done
grep -q "cmsales (cert-manager) recovery.request $SERIAL_bob: refused - .*outside the scope" "$T/out" ||
    fail "audit show --serial lacks the refused request"
! grep -q "$SERIAL_alice" "$T/out" || fail "audit show --serial shows another certificate"
as audrey 0 audit show --serial "$(tr a-f A-F <<<"$SERIAL_bob" | sed 's/../&:/g; s/:$//')"
grep -q " recovery.approve " "$T/out" || fail "a serial with colons and capitals"
as audrey 2 audit show --serial 'xyz'
as audrey 0 audit show --actor cmsales --action recovery.request
[ "$(wc -l <"$T/out")" -ge 4 ] && ! grep -v " cmsales (cert-manager) recovery.request " "$T/out" ||
    fail "--actor/--action: $(cat "$T/out")"
as audrey 0 audit show --until 2000-01-01T00:00:00
[ ! -s "$T/out" ] || fail "events before 2000"
as audrey 0 audit show --since "$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%S)"
[ ! -s "$T/out" ] || fail "events from tomorrow"
as audrey 0 audit show --since "$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%S)" --action policy.set
[ "$(grep -c ' policy.set ' "$T/out")" -ge 8 ] || fail "--since: $(cat "$T/out")"
as audrey 0 audit export --serial "$SERIAL_bob"
python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; assert r and all(set(e) == {"id","time","actor","role","action","object","outcome","details"} for e in r)' \
    "$T/out" || fail "export --serial is not JSON lines of events"
as cmall 51 audit show --serial "$SERIAL_bob"
run_esc 0 audit verify
assert_out "audit trail intact"
exit 0
