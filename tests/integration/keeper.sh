#!/bin/bash
# The keeper in a process of its own (issue 12, step 1): tests/tools/keeper_tool
# forks a keeper on the real SoftHSM2 CA token that serves socketpairs, and
# plays the worker: issuance (also archived), transport envelopes, sealed
# server-generated keys, CRL, checkpoints and releases go through the keeper
# protocol; malformed, replayed, out-of-order and out-of-profile requests are
# refused while the keeper goes on serving; a killed keeper is "unavailable".
. "$(dirname "$0")/lib.sh"
: "${KEEPER_TOOL:?set by meson}" "${ENROLL_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 OTHER
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Keeper Test CA,O=Example'
ca_pem "$T/ca.pem"
pw admin 'admin-password-0001'; pw cm 'cm-password-000002'; pw cm2 'cm2-password-00003'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
P11ESCROW_NEW_PASSWORD=cm-password-000002 as admin 0 account add cm --role cert-manager
P11ESCROW_NEW_PASSWORD=cm2-password-00003 as admin 0 account add cm2 --role cert-manager
as admin 0 policy set recovery_approvals 1
as admin 0 kra enroll --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --name kra1

# keeper EXPECTED_RC ARGS...: run keeper_tool, output in $T/out.
keeper() {
    local want=$1 rc=0; shift
    "$KEEPER_TOOL" "$@" >"$T/out" 2>&1 </dev/null || rc=$?
    [ "$rc" -eq "$want" ] || fail "keeper_tool $* exited $rc, expected $want"
}

note "inputs: a key in an envelope to the transport certificate, one to another certificate, a recipient"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/dave.key" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$T/dave.key" -outform DER -out "$T/dave.p8"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d |
    openssl x509 -inform DER -out "$T/transport.pem"
openssl cms -encrypt -recip "$T/transport.pem" -aes256 -binary -outform DER -in "$T/dave.p8" -out "$T/env.der"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/other.key" -subj /CN=other \
    -days 2 -out "$T/other.pem" 2>/dev/null
openssl cms -encrypt -recip "$T/other.pem" -aes256 -binary -outform DER -in "$T/dave.p8" -out "$T/other.der"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/rcpt.key" 2>/dev/null
"$ENROLL_TOOL" client-cert "$DB" "$PIN_FILE" 'critical,digitalSignature,keyAgreement' 'CN=Recipient,O=Example' \
    "$T/rcpt.key" "$T/rcpt.pem" >"$T/out" 2>&1 || fail "enroll_tool client-cert"

note "a worker without the PIN: every operation through the keeper, every bad request refused"
certs0=$(psql_val "SELECT count(*) FROM certificates")
keeper 0 session "$DB" "$PIN_FILE" "$T/dave.key" "$T/env.der" "$T/other.der" "$T/rcpt.pem"
cat "$T/out"
for c in "connected" "issue (signing)" "issue (encryption, archived" "open_transport: the envelope" \
    "another recipient is refused" "seal_server_key: the key is sealed" "not its certificate's is refused" \
    "sign_crl: the CRL verifies" "checkpoint: signed" "an unknown request is refused" \
    "before the greeting is refused" "second greeting is refused" "unknown type is refused" \
    "field given twice is refused" "replayed request number is refused" "skipped ahead is refused" \
    "answers the next request in order" "profile enrollees may not use" "unknown profile is refused" \
    "validity other than the profile's" "alternative names the profile does not derive" \
    "key type the profile does not allow" "on demand without an account" "unknown account is refused" \
    "reply sent as a request" "still answers on this connection" "oversized frame ends its connection" \
    "goes on serving its other connection" "a dead keeper: TOKEN_NOT_FOUND"; do
    grep "^ok: " "$T/out" | grep_q -F "$c" || fail "check missing: $c"
done
# Three certificates went through the keeper; the out-of-profile requests left nothing.
[ "$(psql_val "SELECT count(*) FROM certificates")" = $((certs0 + 3)) ] || fail "certificates recorded: not 3 more"
grep -q "level=1 keeper: refused a request (malformed)" "$T/out" || fail "a malformed request was not logged"
grep -q "level=1 keeper: refused a request (out of order or replayed)" "$T/out" || fail "a replay was not logged"
grep -q "keeper: connection ended: a frame length out of bounds" "$T/out" || fail "the oversized frame was not logged"
grep -qF "$(cat "$PIN_FILE")" "$T/out" && fail "the PIN was logged"
SERIAL=$(sed -n 's/^archived //p' "$T/out")
[ -n "$SERIAL" ] || fail "no archived serial"
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE cert_serial = '$SERIAL'")" = 1 ] ||
    fail "the archived certificate has no archive record"

note "release through the keeper: only an approved request"
as cm 0 recovery request --serial "$SERIAL" --reason "keeper test" --kra kra1
RID=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$RID" ] || fail "no request id"
keeper 41 release "$DB" "$PIN_FILE" "$RID"
assert_out "only an approved request is released"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $RID")" = pending ] || fail "the request changed"
note "a state written by a worker is not the decision: the keeper counts the approvals again"
# What a compromised worker could write with the service's database rights: the state alone.
psql_val "UPDATE recovery_requests SET state = 'approved' WHERE id = $RID" >/dev/null
keeper 51 release "$DB" "$PIN_FILE" "$RID"
assert_out "is marked approved but has 0 valid approval(s) of the 1 required"
[ "$(psql_val "SELECT package IS NULL FROM recovery_requests WHERE id = $RID")" = t ] || fail "a package was stored"
psql_val "UPDATE recovery_requests SET state = 'pending' WHERE id = $RID" >/dev/null
as cm2 0 recovery approve "$RID"
# ... a request that asks for no approval, under a policy that demands one;
psql_val "UPDATE recovery_requests SET approvals_required = 0 WHERE id = $RID" >/dev/null
as admin 0 policy set recovery_approvals 2
keeper 51 release "$DB" "$PIN_FILE" "$RID"
assert_out "has 1 valid approval(s) of the 2 required (1 recorded; policy recovery_approvals is 2 now)"
as admin 0 policy set recovery_approvals 1
# ... an approver disabled since, and a requester disabled since.
as admin 0 account disable cm2
keeper 51 release "$DB" "$PIN_FILE" "$RID"
assert_out "has 0 valid approval(s) of the 1 required"
as admin 0 account enable cm2
as admin 0 account disable cm
keeper 51 release "$DB" "$PIN_FILE" "$RID"
assert_out "its requester is not an enabled certificate manager"
as admin 0 account enable cm
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $RID")" = approved ] || fail "the request changed"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'recovery.release' AND outcome <> 'ok'")" -ge 4 ] ||
    fail "the refused releases were not audited"
keeper 0 release "$DB" "$PIN_FILE" "$RID"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $RID")" = released ] || fail "not released"
keeper 41 release "$DB" "$PIN_FILE" "$RID"
keeper 42 release "$DB" "$PIN_FILE" 999999
note "ok"
