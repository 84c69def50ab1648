#!/bin/bash
# Transactions under concurrency (issue: "Bulk import can lose keys while
# reporting success", "Transactions retry in one place").  While a second
# connection appends audit events as fast as it can and p11escrowd signs a
# checkpoint after every few events, two bulk imports of 1,200 keys run at
# once (300 files in both), and every other operation that writes in a
# transaction of its own runs beside them: accounts (add, disable, enable,
# scope), policy, KRA enrollment, revocation, the service's database grant,
# and a whole two-person recovery (request, approve, release, complete).
# Each must succeed: a lost race is retried, never reported as "already
# exists" or a database constraint.  Afterwards the records are exactly the
# ones reported archived, the overlap is exactly the ones reported "already
# archived", an unreadable file makes the import's exit status non-zero,
# and the audit chain verifies.
. "$(dirname "$0")/lib.sh"
: "${ENROLL_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Concurrency Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw kent 'kent-password-0003'; pw audrey 'audrey-password-05'; pw p12 'recovered-p12-pass'
pw aud2 'aud2-password-000006'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --key-type ec-p256
for who in cm1:cert-manager cm2:cert-manager audrey:auditor aud2:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
as admin 0 policy set allow_foreign_issuers true
psql "$DB" -Xq -c "CREATE ROLE svc_concurrency LOGIN" || fail "cannot create the service role"

note "2 x 1200 keys of a foreign CA, 300 of them in both batches, one unreadable file in the first"
python3 "$SRC/tests/tools/mkkeys.py" "$T/keys/ca" "$T/keys/pre:2:999998" "$T/keys/a:1200:0" "$T/keys/b:1200:900" ||
    fail "cannot make the test keys"
head -c 300 "$T/keys/a/k000000.pem" >"$T/keys/a/broken.pem"
run_esc 0 archive import "$T/keys/pre" --user admin --account-password-file "$T/admin.pw"
PRE_SERIAL=$(openssl x509 -in "$T/keys/pre/k999999.pem" -noout -serial | sed 's/serial=//')

# bg NAME EXPECTED_RC USER ARGS...: the CLI as USER in the background; output in $T/op.NAME.out,
# exit status checked by wait_ops.  Steps of one NAME run in order (a chain); chains run at once.
declare -A _ops=()
bg() {
    local name=$1 want=$2 user=$3; shift 3
    _ops[$name]="${_ops[$name]:-}$(printf '%q ' "$want" "$user" "$@")"$'\n'
}
run_chain() {
    local name=$1 want user rc
    while read -r line; do
        [ -n "$line" ] || continue
        eval "set -- $line"
        want=$1 user=$2; shift 2
        rc=0
        if [ "$user" = - ]; then "$ESC" "$@" >>"$T/op.$name.out" 2>&1 </dev/null || rc=$?
        else "$ESC" "$@" --user "$user" --password-file "$T/$user.pw" >>"$T/op.$name.out" 2>&1 </dev/null || rc=$?
        fi
        if [ "$rc" -ne "$want" ]; then
            echo "p11escrow $* exited $rc, expected $want" >>"$T/op.$name.out"
            echo "$rc" >"$T/op.$name.rc"
            return
        fi
    done <<<"${_ops[$name]}"
    echo 0 >"$T/op.$name.rc"
}
_op_pids=()
start_ops() { local n; for n in "${!_ops[@]}"; do rm -f "$T/op.$n.rc"; run_chain "$n" & _op_pids+=($!); done; }
wait_ops() {
    local n bad=0
    wait_jobs "${_op_pids[@]}"
    _op_pids=()
    for n in "${!_ops[@]}"; do
        if [ "$(cat "$T/op.$n.rc" 2>/dev/null)" != 0 ]; then
            echo "operation chain '$n' failed:" >&2; sed 's/^/  | /' "$T/op.$n.out" >&2; bad=1
        fi
    done
    _ops=()
    [ "$bad" = 0 ] || fail "an operation lost a race instead of being retried"
}
wait_jobs() { local p; for p in "$@"; do wait "$p" || true; done; }

note "an audit writer at full speed on its own connection"
"$ENROLL_TOOL" audit-flood "$DB" "$T/flood.stop" >"$T/flood.out" 2>&1 &
FLOOD=$!
sleep 0.5
kill -0 "$FLOOD" 2>/dev/null || { cat "$T/flood.out" >&2; fail "the audit flood did not start"; }

# import NAME DIR: `archive import DIR` in the background; output in $T/import.NAME, exit status in .rc
import_bg() {
    ( rc=0; "$ESC" archive import "$2" --user admin --account-password-file "$T/admin.pw" >"$T/import.$1" 2>&1 </dev/null ||
          rc=$?; echo "$rc" >"$T/import.$1.rc" ) &
}
# summary NAME FIELD: a number of the import's last line "archived A, already archived B, refused C, failed D"
summary() {
    sed -n 's/^archived \([0-9]*\), already archived \([0-9]*\), refused \([0-9]*\), failed \([0-9]*\)$/\1 \2 \3 \4/p' \
        "$T/import.$1" | tail -1 | cut -d' ' -f"$2"
}

note "two imports at once, and every other writing operation beside them"
import_bg a "$T/keys/a"; IMPORT_A=$!
import_bg b "$T/keys/b"; IMPORT_B=$!
for u in 1 2 3; do
    bg "add$u" 0 admin account add "user$u" --role auditor --new-password-file "$T/audrey.pw"
    bg "add$u" 0 admin account disable "user$u"
    bg "add$u" 0 admin account enable "user$u"
done
bg scope 0 admin account scope cm2 --group example
bg scope 0 admin account scope cm2 --clear
for v in 2 3 1 0; do bg policy 0 admin policy set recovery_approvals "$v"; done
bg kra 0 admin kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA2' \
    --kra-pin-file "$PIN_FILE" --name kra2 --key-type ec-p256
bg revoke 0 cm1 cert revoke --serial "$(openssl x509 -in "$T/keys/pre/k999998.pem" -noout -serial | sed 's/serial=//')" \
    --reason affiliationChanged
bg grant 0 - db grant-service svc_concurrency
bg passwd 0 admin account passwd aud2 --new-password-file "$T/audrey.pw"
bg policy 0 cm1 recovery request --serial "$PRE_SERIAL" --reason "concurrency test" --kra kra1
start_ops
wait_ops
wait_jobs "$IMPORT_A" "$IMPORT_B"
for n in a b; do
    [ -n "$(summary $n 1)" ] || fail "import $n gave no summary: $(tail -5 "$T/import.$n")"
    note "import $n: $(tail -1 "$T/import.$n"), exit status $(cat "$T/import.$n.rc")"
done
grep -h '^failed\|^refused' "$T/import.a" "$T/import.b" | grep -v "^failed $T/keys/a/broken.pem:" &&
    fail "a file other than the broken one was not archived"
[ "$(summary a 4)" = 1 ] && [ "$(summary a 3)" = 0 ] || fail "import a: expected exactly the broken file to fail"
[ "$(cat "$T/import.a.rc")" = 31 ] || fail "import a exited $(cat "$T/import.a.rc") although a file was not archived"
[ "$(summary b 4)" = 0 ] && [ "$(summary b 3)" = 0 ] || fail "import b: a file failed"
[ "$(cat "$T/import.b.rc")" = 0 ] || fail "import b exited $(cat "$T/import.b.rc") with every key archived"
archived=$(( $(summary a 1) + $(summary b 1) )); already=$(( $(summary a 2) + $(summary b 2) ))
[ "$archived" = 2100 ] || fail "2100 distinct keys, $archived reported archived"
[ "$already" = 300 ] || fail "300 keys in both batches, $already reported already archived"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = $((archived + 2)) ] ||
    fail "$(psql_val "SELECT count(*) FROM archive_records") records for $archived reported archived (+2 before)"
grep -q "already archived .*(same certificate\|already archived .*as record" "$T/import.b" "$T/import.a" ||
    fail "no 'already archived' line names the record or the concurrent archival"
! grep "audit_events\|duplicate key\|constraint" "$T/import.a" "$T/import.b" "$T"/op.*.out >"$T/out" ||
    fail "a database constraint reached the user"

note "through the service, checkpointing after every 2 events, while the flood goes on: approve, release, complete"
as admin 0 service-cert --cert "$T/tls.pem" --key "$T/tls.key" --name 127.0.0.1 --pin-file "$PIN_FILE"
start_daemon 2 "checkpoint_events = 2" "checkpoint_seconds = 1"
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/op.policy.out")
[ -n "$REQ" ] || fail "no request id in: $(cat "$T/op.policy.out")"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = approved ] ||
    fail "request $REQ filed with recovery_approvals 0 is not approved"
srv cm2 0 recovery release "$REQ"
[ "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" = released ] || fail "request $REQ not released"
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$PIN_FILE" --out "$T/pre.p12" \
    --p12-password-file "$T/p12.pw"
openssl pkcs12 -in "$T/pre.p12" -passin file:"$T/p12.pw" -nodes -nocerts 2>/dev/null |
    openssl pkey -outform DER >"$T/pre.key.der" || fail "the recovered PKCS#12 does not open"
openssl pkey -in "$T/keys/pre/k999999.pem" -outform DER | cmp -s - "$T/pre.key.der" ||
    fail "the recovered key is not the archived one"
stop_daemon
touch "$T/flood.stop"
wait "$FLOOD" || { cat "$T/flood.out" >&2; fail "the audit flood failed"; }
note "the flood: $(cat "$T/flood.out") events; checkpoints: $(psql_val "SELECT count(*) FROM audit_checkpoints")"

note "the chain is whole and every retried operation audited once"
as audrey 0 audit verify
assert_out "audit trail intact"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'policy.set' AND outcome = 'ok'")" = 5 ] ||
    fail "policy.set events: expected 5 (allow_foreign_issuers + 4)"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'archive.store' AND outcome = 'ok'")" = $((archived + 2)) ] ||
    fail "archive.store events do not match the records"
exit 0
