#!/bin/bash
# The curl + openssl walkthrough of docs/est.md, run exactly as written (its
# ```sh blocks, in order) against a throwaway CA served by p11escrowd; then
# what it must have done: keys archived for the encryption certificate only,
# every certificate verifying, refusals with their statuses.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=EST Test CA,O=Example'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
start_daemon 2

note "docs/est.md, block by block"
mkdir "$T/walk"
awk '/^```sh$/ { on = 1; next } /^```/ { on = 0 } on' "$SRC/docs/est.md" >"$T/walk/walkthrough.sh"
[ "$(grep -c . "$T/walk/walkthrough.sh")" -gt 20 ] || fail "no walkthrough found in docs/est.md"
mkdir "$T/bin"
ln -s "$ESC" "$T/bin/p11escrow"
(
    cd "$T/walk"
    export PATH=$T/bin:$PATH EST=$URL/.well-known/est CACERT=$SERVER_CA
    export P11ESCROW_PASSWORD=admin-password-0001
    bash -euo pipefail walkthrough.sh
) >"$T/out" 2>&1 || fail "the walkthrough failed"
assert_out "key matches"
assert_out "alice-enc.pem: OK"
assert_out "alice-sign.pem: OK"
tail -n 1 "$T/out" | grep_q -x 403 || fail "simpleenroll on the archival profile was not refused with 403"
fp=$(grep -ci 'sha256 fingerprint' "$T/out")
[ "$fp" -eq 2 ] && [ "$(grep -i 'sha256 fingerprint' "$T/out" | sort -u | wc -l)" -eq 1 ] ||
    fail "/cacerts did not return the CA certificate"

note "archived: the server-generated encryption key, nothing else"
enc_serial=$(openssl x509 -in "$T/walk/alice-enc.pem" -noout -serial | cut -d= -f2 | tr A-F a-f | sed 's/^0*//')
sign_serial=$(openssl x509 -in "$T/walk/alice-sign.pem" -noout -serial | cut -d= -f2 | tr A-F a-f | sed 's/^0*//')
[ "$(psql_val "SELECT count(*) FROM archive_records WHERE cert_serial = '$enc_serial' AND source = 'enroll-server'")" = 1 ] ||
    fail "the serverkeygen key is not archived"
[ "$(psql_val "SELECT count(*) FROM certificates WHERE serial = '$sign_serial'")" = 1 ] || fail "no signing cert row"
[ "$(psql_val "SELECT count(*) FROM archive_records")" = 1 ] || fail "a signing key was archived"
openssl x509 -in "$T/walk/alice-sign.pem" -noout -ext keyUsage | grep_q "Digital Signature" || fail "signing KU"

note "a one-time password works once"
curl -sS --cacert "$SERVER_CA" --user "$(awk '$1 == "name:" {print $2}' "$T/walk/otp-enc.txt"):$(awk '$1 == "password:" {print $2}' "$T/walk/otp-enc.txt")" \
    -o /dev/null -w '%{http_code}' -H 'Content-Type: application/pkcs10' --data-binary @"$T/walk/req.b64" \
    "$URL/.well-known/est/serverkeygen" >"$T/out"
grep -qx 401 "$T/out" || fail "a used one-time password was accepted: $(cat "$T/out")"

stop_daemon
grep -q 'msg="stopped"' "$DAEMON_LOG" || fail "no clean stop in the log"
exit 0
