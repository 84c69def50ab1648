#!/bin/bash
# Interoperability with an EST client nobody here wrote: Bouncy Castle's
# ESTService (Debian's libbcpkix-java, 1.72) and its CMC/CMS classes, in
# tests/java/EstInterop.java, against p11escrowd: /cacerts, /csrattrs,
# /simpleenroll (signing; the archival profile refuses), /serverkeygen and
# /fullcmc (the key sent to the transport certificate, ECDH).  Then stock
# openssl and the database check what the service did: certificates that
# verify, the generated key matching its certificate, archive records for
# the encryption keys and none for the signing one, one-time passwords used
# once, enrollments in the audit trail.
. "$(dirname "$0")/lib.sh"

BCJARS=/usr/share/java/bcprov.jar:/usr/share/java/bcpkix.jar:/usr/share/java/bcutil.jar
for j in ${BCJARS//:/ }; do
    [ -r "$j" ] || fail "$j is missing (Debian: libbcprov-java libbcpkix-java libbcutil-java)"
done
command -v javac >/dev/null && command -v java >/dev/null || fail "no JDK (javac, java): Debian's default-jdk-headless"

note "the client, compiled against Bouncy Castle"
mkdir "$T/java" "$T/bc"
javac -Xlint:all,-path -d "$T/java" -cp "$BCJARS" "$SRC/tests/java/EstInterop.java" >"$T/out" 2>&1 ||
    fail "javac EstInterop.java"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=BC Interop Test CA,O=Example'
( umask 077; printf '%s\n' 'admin-password-0001' >"$T/admin.pw" )
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
run_esc 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1 --user admin --password-file "$T/admin.pw"
export P11ESCROW_PASSWORD=admin-password-0001
start_daemon 2

note "the transport certificate, as an enrollee gets it from the administrator"
psql_val "SELECT encode(certificate, 'base64') FROM token_keys WHERE role = 'transport'" | base64 -d |
    openssl x509 -inform DER -out "$T/transport.pem" || fail "no transport certificate"
openssl verify -CAfile "$SERVER_CA" "$T/transport.pem" >/dev/null || fail "the transport certificate does not verify"

note "one-time passwords: signing for /simpleenroll, encryption for /serverkeygen and /fullcmc"
( umask 077; : >"$T/otp.txt" )
declare -A OTP SUBJECT
for p in sign:signing keygen:encryption cmc:encryption; do
    k=${p%%:*}
    SUBJECT[$k]="CN=BC Interop $k,O=Example"
    run_esc 0 enroll-password create --subject "${SUBJECT[$k]}" --profile "${p#*:}" --user admin
    name=$(awk '$1 == "name:" {print $2}' "$T/out")
    pass=$(awk '$1 == "password:" {print $2}' "$T/out")
    [ -n "$name" ] && [ -n "$pass" ] || fail "enroll-password create printed no name or password"
    printf '%s=%s:%s\n' "$k" "$name" "$pass" >>"$T/otp.txt"
    OTP[$k]=$name
done

note "Bouncy Castle's ESTService against p11escrowd"
rc=0
java -cp "$T/java:$BCJARS" EstInterop --server "${URL#https://}" --ca "$SERVER_CA" --tls-cert "$T/tls.pem" \
    --transport "$T/transport.pem" --otp-file "$T/otp.txt" --out "$T/bc" >"$T/out" 2>&1 </dev/null || rc=$?
sed -n 's/^ok /# bc: /p' "$T/out"
[ "$rc" = 0 ] || { sed 's/^/  | /' "$DAEMON_LOG" >&2; fail "the Bouncy Castle client failed (exit $rc)"; }
for s in "ok cacerts" "ok csrattrs" "ok simpleenroll signing" "ok simpleenroll encryption refused: 403" \
    "requires key archival" "ok serverkeygen" "ok fullcmc" "ok reuse refused: 401" "ok reuse refused (serverkeygen): 401" \
    "ok reuse refused (fullcmc): 401" "ok all"; do
    assert_out "$s"
done

note "openssl: the certificates verify, carry the one-time password's subject, the generated key is theirs"
declare -A SERIAL
for k in sign keygen cmc; do
    openssl verify -CAfile "$SERVER_CA" "$T/bc/$k.pem" >/dev/null || fail "the $k certificate does not verify"
    # (the CSR asked for another subject; the order of the two RDNs is not this test's business)
    openssl x509 -in "$T/bc/$k.pem" -noout -subject -nameopt sep_multiline,utf8,-space_eq >"$T/subject"
    grep -qx "    CN=BC Interop $k" "$T/subject" && grep -qx "    O=Example" "$T/subject" && [ "$(grep -c "^    " "$T/subject")" = 2 ] ||
        fail "the $k certificate's subject is not the one-time password's: $(cat "$T/subject")"
    # lower-case hex; leading zeros compared away on both sides
    SERIAL[$k]=$(openssl x509 -in "$T/bc/$k.pem" -noout -serial | sed 's/^serial=//; s/^0*//' | tr 'A-F' 'a-f')
done
[ "$(stat -c %a "$T/bc/keygen.key")" = 600 ] || fail "the generated key was written readable by others"
[ "$(openssl pkey -in "$T/bc/keygen.key" -pubout)" = "$(openssl x509 -in "$T/bc/keygen.pem" -noout -pubkey)" ] ||
    fail "the server-generated key does not match its certificate"
openssl pkey -in "$T/bc/keygen.key" -noout -text | grep_q 'prime256v1' || fail "the server-generated key is not EC P-256"
openssl x509 -in "$T/bc/cacerts.pem" -noout -fingerprint -sha256 >"$T/fp1"
openssl x509 -in "$SERVER_CA" -noout -fingerprint -sha256 >"$T/fp2"
cmp -s "$T/fp1" "$T/fp2" || fail "/cacerts did not return the CA certificate first"

note "the database: archival for the encryption keys only, the passwords used, the enrollments audited"
rec() { psql_val "SELECT count(*) || ' ' || coalesce(min(source), '-') FROM archive_records WHERE ltrim(cert_serial, '0') = '$1'"; }
[ "$(rec "${SERIAL[keygen]}")" = "1 enroll-server" ] || fail "serverkeygen archive record: $(rec "${SERIAL[keygen]}")"
[ "$(rec "${SERIAL[cmc]}")" = "1 enroll-client" ] || fail "fullcmc archive record: $(rec "${SERIAL[cmc]}")"
[ "$(rec "${SERIAL[sign]}")" = "0 -" ] || fail "the signing key was archived"
for k in sign keygen cmc; do
    want=encryption; [ "$k" = sign ] && want=signing
    [ "$(psql_val "SELECT profile FROM certificates WHERE ltrim(serial, '0') = '${SERIAL[$k]}'")" = "$want" ] ||
        fail "the $k certificate is not recorded under profile $want"
    [ "$(psql_val "SELECT used_at IS NOT NULL FROM enrollment_passwords WHERE name = '${OTP[$k]}'")" = t ] ||
        fail "the $k one-time password is not marked used"
    [ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.issue' AND outcome = 'ok'
                   AND ltrim(object, '0') = '${SERIAL[$k]}' AND actor = 'est:otp:${OTP[$k]}'")" = 1 ] ||
        fail "no enroll.issue audit event for the $k certificate ${SERIAL[$k]}"
done
[ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.issue' AND outcome = 'ok'")" = 3 ] ||
    fail "other than three enrollments audited"
[ "$(psql_val "SELECT count(*) FROM certificates WHERE profile IN ('signing', 'encryption')")" = 3 ] ||
    fail "a refused request issued a certificate"
for k in sign keygen cmc; do
    [ "$(psql_val "SELECT count(*) FROM audit_events WHERE action = 'enroll.password.check'
                   AND outcome = 'refused' AND object = '${OTP[$k]}'")" -ge 1 ] ||
        fail "the reuse of the $k one-time password is not audited"
done
run_esc 0 audit verify
assert_out "audit trail intact"
stop_daemon
echo ok
