#!/bin/bash
# One CRL for the whole service (issue 15): two p11escrowd processes of three
# workers each on one database and one SoftHSM2 CA token serve the same
# current CRL, whose number never goes down (RFC 5280 §5.2.3) — at a
# concurrent first fetch (one signature only), across a revocation, a CRL
# made on demand by the CLI, a restart, and a due CRL replaced.  Issued
# certificates carry the configured CRL distribution point and caIssuers;
# the CRL verifies with openssl and makes `openssl verify -crl_check` refuse
# a revoked certificate; /ca.crt serves the CA certificate in DER.
. "$(dirname "$0")/lib.sh"

provision_tokens "$T/hsm" CA
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=CRL Test CA'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
export P11ESCROW_PASSWORD=admin-password-0001
pw admin admin-password-0001
ca_pem "$T/ca.pem"

CDP=http://pki.example.test/crl/p11escrow.crl
AIA=http://pki.example.test/ca/p11escrow.crt

note "bad publication settings are refused at start, naming the key"
printf 'crl_url = "ftp://pki.example.test/x.crl"\n' >"$T/bad.conf"
run_esc 3 account list --user admin --config "$T/bad.conf"
assert_out "crl_url must be empty or an http://, https:// or ldap:// URL"
printf 'ca_issuer_url = "http://pki.example.test/a b.crt"\n' >"$T/bad.conf"
run_esc 3 account list --user admin --config "$T/bad.conf"
assert_out "ca_issuer_url must be empty"
printf 'crl_refresh = 95\n' >"$T/bad.conf"
run_esc 3 account list --user admin --config "$T/bad.conf"
assert_out "crl_refresh must be an integer from 10 to 90"

start_daemon 3 "crl_url = $CDP" "ca_issuer_url = $AIA"
PID1=$DAEMON_PID URL1=$URL
start_daemon 3 "crl_url = $CDP" "ca_issuer_url = $AIA"
PID2=$DAEMON_PID URL2=$URL

# fetch URL OUT: GET URL/crl (DER) into OUT; prints its CRL number (decimal).
fetch() {
    curl -sf --cacert "$SERVER_CA" -o "$2" "$1/crl" || fail "GET $1/crl"
    local n
    n=$(openssl crl -inform DER -in "$2" -noout -crlnumber) || fail "$1/crl is not a DER CRL"
    n=${n#crlNumber=0x}
    echo $((16#$n))
}
stored() { psql_val "SELECT count(*) FROM crls"; }

note "a concurrent first fetch from six workers of two daemons: one CRL signed, the same number everywhere"
[ "$(stored)" = 0 ] || fail "a CRL was made before anyone asked"
for i in $(seq 12); do
    for u in "$URL1" "$URL2"; do
        curl -sf --cacert "$SERVER_CA" -o "$T/first.$i.${u##*:}" "$u/crl" &
    done
done
for j in $(jobs -p); do
    case " ${_daemon_pids[*]} " in *" $j "*) ;; *) wait "$j" || fail "a concurrent GET /crl failed" ;; esac
done
[ "$(stored)" = 1 ] || fail "$(stored) CRLs were signed for one concurrent first fetch"
[ "$(for f in "$T"/first.*; do openssl crl -inform DER -in "$f" -noout -crlnumber; done | sort -u | wc -l)" = 1 ] ||
    fail "concurrent fetches saw different CRL numbers"
openssl crl -inform DER -in "$T/first.1.${URL1##*:}" -CAfile "$T/ca.pem" -noout 2>&1 | grep_q "verify OK" ||
    fail "the CRL does not verify with the CA certificate"
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'cert.crl' AND outcome = 'ok' AND actor = 'service'")" = 1 ] ||
    fail "the CRL's issuance is not audited once"

note "an enrolled certificate carries the CRL distribution point and caIssuers"
# otp PROFILE: "name:password" of a new one-time password for CN=User N
otp() {
    "$ESC" enroll-password create --subject "CN=User $2,O=Example" --profile "$1" --user admin >"$T/otp.txt" ||
        fail "enroll-password create"
    printf '%s:%s' "$(awk '$1 == "name:" {print $2}' "$T/otp.txt")" "$(awk '$1 == "password:" {print $2}' "$T/otp.txt")"
}
# enroll N URL: an EST simpleenroll (signing profile) of CN=User N through URL; the certificate in $T/user.N.pem
enroll() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/user.$1.key" \
        -subj "/CN=User $1/O=Example" -outform DER 2>/dev/null | openssl base64 >"$T/user.$1.b64"
    code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
        --data-binary @"$T/user.$1.b64" --user "$(otp signing "$1")" "$2/.well-known/est/signing/simpleenroll")
    [ "$code" = 200 ] || fail "enrollment $1: HTTP $code $(cat "$T/resp")"
    openssl base64 -d -in "$T/resp" | openssl pkcs7 -inform DER -print_certs -out "$T/user.$1.pem"
}
serial() { openssl x509 -in "$T/user.$1.pem" -noout -serial | sed 's/^serial=//'; }
enroll 1 "$URL1"
enroll 2 "$URL2"
enroll 3 "$URL1"
openssl x509 -in "$T/user.1.pem" -noout -text >"$T/x509.txt"
grep -A3 'X509v3 CRL Distribution Points' "$T/x509.txt" | grep_q -F "URI:$CDP" ||
    fail "no CRL distribution point $CDP: $(cat "$T/x509.txt")"
grep -A2 'Authority Information Access' "$T/x509.txt" | grep_q -F "CA Issuers - URI:$AIA" ||
    fail "no caIssuers $AIA: $(cat "$T/x509.txt")"

note "/ca.crt is the CA certificate in DER"
curl -sf --cacert "$SERVER_CA" -D "$T/cacrt.h" -o "$T/ca.der" "$URL2/ca.crt" || fail "GET /ca.crt"
grep -qi '^Content-Type: application/pkix-cert' "$T/cacrt.h" || fail "/ca.crt: $(cat "$T/cacrt.h")"
cmp -s "$T/ca.der" <(openssl x509 -in "$T/ca.pem" -outform DER) || fail "/ca.crt is not the CA certificate"

openssl crl -inform DER -in "$T/first.1.${URL1##*:}" -out "$T/crl0.pem"
openssl verify -crl_check -CRLfile "$T/crl0.pem" -CAfile "$T/ca.pem" "$T/user.2.pem" >"$T/out" 2>&1 ||
    fail "a valid certificate does not verify with -crl_check"

note "fetches alternating between the daemons, revocations in between: numbers never go down"
seq_file=$T/numbers
: >"$seq_file"
for i in $(seq 24); do
    case $i in
    8) run_esc 0 cert revoke --serial "$(serial 1)" --reason keyCompromise --user admin ;;
    16) srv admin 0 cert revoke --serial "$(serial 2)" --reason superseded ;;
    esac
    if ((i % 2)); then u=$URL1; else u=$URL2; fi
    fetch "$u" "$T/seq.der" >>"$seq_file"
done
sort -n -c "$seq_file" 2>/dev/null || fail "a CRL number went down: $(tr '\n' ' ' <"$seq_file")"
[ "$(sort -u "$seq_file" | wc -l)" = 3 ] || fail "expected three CRLs (first, after each revocation): $(tr '\n' ' ' <"$seq_file")"
# The fetch right after each revocation already lists it, from whichever daemon.
[ "$(sed -n 8p "$seq_file")" -gt "$(sed -n 7p "$seq_file")" ] || fail "the first fetch after a revocation was not a new CRL"
[ "$(sed -n 16p "$seq_file")" -gt "$(sed -n 15p "$seq_file")" ] || fail "the fetch after the second revocation was not new"
n2=$(fetch "$URL2" "$T/crl2.der")
n1=$(fetch "$URL1" "$T/crl1.der")
[ "$n1" = "$n2" ] && cmp -s "$T/crl1.der" "$T/crl2.der" || fail "the daemons serve different CRLs: $n1, $n2"
openssl crl -inform DER -in "$T/crl1.der" -out "$T/crl1.pem"
openssl crl -in "$T/crl1.pem" -CAfile "$T/ca.pem" -noout 2>&1 | grep_q "verify OK" || fail "the CRL does not verify"
openssl crl -in "$T/crl1.pem" -noout -text >"$T/crl.txt"
for s in "$(serial 1)" "$(serial 2)"; do
    grep -qi "Serial Number: *0*$s" "$T/crl.txt" || fail "serial $s is not on the CRL: $(cat "$T/crl.txt")"
done
grep -q "Key Compromise" "$T/crl.txt" && grep -q "Superseded" "$T/crl.txt" || fail "reasons missing on the CRL"
grep -qi "Serial Number: *0*$(serial 3)" "$T/crl.txt" && fail "an unrevoked certificate is on the CRL"
if openssl verify -crl_check -CRLfile "$T/crl1.pem" -CAfile "$T/ca.pem" "$T/user.1.pem" >"$T/out" 2>&1; then
    fail "openssl verify -crl_check accepted a revoked certificate"
fi
assert_out "certificate revoked"
openssl verify -crl_check -CRLfile "$T/crl1.pem" -CAfile "$T/ca.pem" "$T/user.3.pem" >"$T/out" 2>&1 ||
    fail "an unrevoked certificate fails -crl_check"

note "a CRL on demand (CLI, local and --server) is published: both daemons serve it next"
run_esc 0 cert crl --out "$T/cli.pem" --pin-file "$PIN_FILE"
c=$(openssl crl -in "$T/cli.pem" -noout -crlnumber); c=$((16#${c#crlNumber=0x}))
[ "$c" -gt "$n1" ] || fail "the CLI's CRL $c is not above the served $n1"
[ "$(fetch "$URL1" "$T/x.der")" = "$c" ] && [ "$(fetch "$URL2" "$T/x.der")" = "$c" ] ||
    fail "the daemons do not serve the CLI's CRL $c"
srv admin 0 cert crl --out "$T/srv.pem" --days 3
s=$(openssl crl -in "$T/srv.pem" -noout -crlnumber); s=$((16#${s#crlNumber=0x}))
[ "$s" -gt "$c" ] && [ "$(fetch "$URL2" "$T/x.der")" = "$s" ] && [ "$(fetch "$URL1" "$T/x.der")" = "$s" ] ||
    fail "the service's CRL on demand $s is not what both serve"
[ "$(psql_val "SELECT made_by FROM crls ORDER BY number DESC LIMIT 1")" = admin ] || fail "made_by of an API CRL"
curl -sf --cacert "$SERVER_CA" --user admin:admin-password-0001 -H 'Content-Type: application/json' \
    --data '{"days":"2"}' -o "$T/api.json" "$URL1/api/v1/crl" || fail "POST /api/v1/crl"
a=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["number"])' "$T/api.json")
[ "$a" -gt "$s" ] && [ "$(fetch "$URL2" "$T/x.der")" = "$a" ] || fail "POST /crl answered number $a, GET /crl differs"
s=$a
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'cert.crl' AND outcome = 'ok'")" = "$(stored)" ] ||
    fail "not every CRL's issuance is audited"

note "a daemon restarted (with a tiny CRL validity): the number does not go back"
kill -TERM "$PID2"
wait "$PID2" || fail "p11escrowd exited non-zero on SIGTERM"
start_daemon 2 "crl_url = $CDP" "ca_issuer_url = $AIA" "crl_validity = 60" "crl_refresh = 10"
PID2=$DAEMON_PID URL2=$URL
[ "$(fetch "$URL2" "$T/x.der")" = "$s" ] || fail "after a restart the daemon does not serve CRL $s"

note "a CRL past crl_refresh of its validity is replaced"
run_esc 0 cert revoke --serial "$(serial 3)" --reason cessationOfOperation --user admin
d=$(fetch "$URL2" "$T/due.der")
[ "$d" -gt "$s" ] || fail "no new CRL after the third revocation"
# Made by the restarted daemon's keeper: valid 60 s, due after 6 s.
[ "$(psql_val "SELECT extract(epoch FROM next_update - this_update)::int || ' ' || extract(epoch FROM refresh_at - this_update)::int FROM crls WHERE number = $d")" = "60 6" ] ||
    fail "the CRL's validity and refresh do not follow crl_validity and crl_refresh"
[ "$(fetch "$URL1" "$T/x.der")" = "$d" ] || fail "not due yet, yet not the same CRL"
sleep 7
e=$(fetch "$URL1" "$T/x.der")
[ "$e" -gt "$d" ] || fail "a due CRL ($d) was not replaced: $e"
[ "$(fetch "$URL2" "$T/x.der")" = "$e" ] || fail "the daemons disagree after the replacement"
[ "$(psql_val "SELECT extract(epoch FROM next_update - this_update)::int FROM crls WHERE number = $e")" = 604800 ] ||
    fail "the replacement does not have its maker's validity (7 days)"
[ "$(psql_val "SELECT count(*) FROM crls")" = "$(psql_val "SELECT count(DISTINCT number) FROM crls")" ] || fail "duplicate numbers"

note "the number cannot be made to go down in the database either"
psql "$DB" -XAtq -c "INSERT INTO crls (number, der, this_update, next_update, refresh_at, revision, revoked, made_by)
    SELECT number - 1, der, this_update, next_update, refresh_at, revision, revoked, 'test' FROM crls
    ORDER BY number DESC LIMIT 1" >"$T/out" 2>&1 && fail "a CRL with a lower number was stored"
assert_out "is not above the current CRL"

# Both daemons end cleanly (under the sanitizers: nothing leaked or misused on the CRL paths).
for p in "$PID1" "$PID2"; do
    kill -TERM "$p"
    wait "$p" || fail "p11escrowd $p exited non-zero on SIGTERM"
done
exit 0
