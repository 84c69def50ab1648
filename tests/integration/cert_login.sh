#!/bin/bash
# TLS client-certificate login of accounts (issue 11): certificates of this
# CA (EST-issued, signing profile) and of a throwaway enterprise CA
# (account_cert_ca) bound with 'account cert add' log their account in to
# the JSON API without a password — per request and with POST /session —
# and through the CLI's --client-cert.  Unbound, disabled, revoked (our
# revocations; the enterprise CA's CRL, account_cert_crl) and unbound-again
# certificates get 401; another CA's is refused; policy cert_login_roles
# makes a role certificate-only for the service (403 for its password) and
# leaves the local CLI alone; every step is audited.  EST still takes only
# this CA's certificates.
. "$(dirname "$0")/lib.sh"
: "${ENVELOPE_TOOL:?set by meson}"

provision_tokens "$T/hsm" CA KRA1
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Cert Login Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw cm2 'cm2-password-00002'
pw audrey 'audrey-password-05'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$PIN_FILE" --name kra1
for who in cm1:cert-manager cm2:cert-manager audrey:auditor; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
printf 'keyUsage=critical,keyEncipherment\nsubjectAltName=email:alice@example.org\n' >"$T/enc.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/alice.key" -subj "/CN=alice/O=Example" -out "$T/alice.csr" 2>/dev/null
openssl x509 -req -in "$T/alice.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$T/enc.ext" -out "$T/alice.pem" >/dev/null 2>&1 ||
    fail "issuing alice's certificate"
"$ENVELOPE_TOOL" archive "$DB" "$T/alice.pem" "$T/alice.key" >/dev/null 2>"$T/out" || fail "archiving alice"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')

note "a throwaway enterprise CA (account_cert_ca) and a rogue one (configured nowhere)"
ca_root() { # NAME CN: a self-signed CA $T/NAME.pem, key $T/NAME.key
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$1.key" -subj "/CN=$2/O=Enterprise" \
        -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$T/$1.pem" 2>/dev/null || fail "making CA $1"
}
ca_root ent 'Enterprise Root'
ca_root rogue 'Rogue Root'
# leaf CA NAME CN EXT: a client certificate $T/NAME.pem (key $T/NAME.key, 0600) issued by CA
leaf() {
    ( umask 077; openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$2.key" \
        -subj "/CN=$3/O=Enterprise" -out "$T/$2.csr" 2>/dev/null ) || fail "key $2"
    printf '%b' "$4" >"$T/$2.ext"
    openssl x509 -req -in "$T/$2.csr" -CA "$T/$1.pem" -CAkey "$T/$1.key" -set_serial "0x$(openssl rand -hex 12)" \
        -days 30 -extfile "$T/$2.ext" -out "$T/$2.pem" 2>/dev/null || fail "issuing $2"
}
CLIENT='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
leaf ent ent-cm1 'Carol Manager' "$CLIENT"
leaf ent ent-cm1b 'Carol Manager (laptop)' "$CLIENT"
leaf ent ent-server 'Not A Client' 'keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n'
leaf ent ent-noku 'No Key Usage' 'extendedKeyUsage=clientAuth\n'
leaf rogue rogue-cm1 'Carol Manager' "$CLIENT"
fp() { openssl x509 -in "$T/$1.pem" -outform DER | sha256sum | cut -d' ' -f1; }

start_daemon 2 "account_cert_ca = $T/ent.pem"
API=$URL/api/v1
# EST: our CA's certificates (signing profile: digitalSignature, clientAuth) for audrey, cm2 and one never bound
otp() {
    "$ESC" enroll-password create --subject "CN=$1,O=Example" --profile signing --user admin \
        --password-file "$T/admin.pw" >"$T/otp.txt" || fail "enroll-password create"
    printf '%s:%s' "$(awk '$1 == "name:" {print $2}' "$T/otp.txt")" "$(awk '$1 == "password:" {print $2}' "$T/otp.txt")"
}
our_cert() { # NAME: $T/NAME.pem and $T/NAME.key from this CA through EST
    ( umask 077; openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$1.key" \
        -subj "/CN=$1/O=Example" -outform DER 2>/dev/null | openssl base64 >"$T/$1.b64" )
    code=$(curl -sS --cacert "$SERVER_CA" -o "$T/resp" -w '%{http_code}' -H 'Content-Type: application/pkcs10' \
        --data-binary @"$T/$1.b64" --user "$(otp "$1")" "$URL/.well-known/est/signing/simpleenroll")
    [ "$code" = 200 ] || fail "EST enrollment of $1: $code $(cat "$T/resp")"
    openssl base64 -d -in "$T/resp" | openssl pkcs7 -inform DER -print_certs -out "$T/$1.pem"
}
our_cert audrey-c; our_cert cm2-c; our_cert stranger

# call AUTH METHOD PATH [BODY]: the status; body in $T/body.  AUTH: cert:NAME, basic:USER, bearer:TOKEN, -
call() {
    local auth=$1 method=$2 path=$3 data=${4:-} args=()
    case $auth in
        cert:*) args=(--cert "$T/${auth#cert:}.pem" --key "$T/${auth#cert:}.key") ;;
        basic:*) args=(-K "$T/${auth#basic:}.curl") ;;
        bearer:*) args=(-H "Authorization: Bearer ${auth#bearer:}") ;;
    esac
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' --data-binary "$data")
    curl -sS --cacert "$SERVER_CA" "${args[@]}" -o "$T/body" -w '%{http_code}' -X "$method" "$API$path" 2>"$T/curl.err"
}
expect() {
    local want=$1 got; shift
    got=$(call "$@") || got="curl-failed($(head -c 200 "$T/curl.err"))"
    [ "$got" = "$want" ] || fail "$1 $2 $3: HTTP $got, expected $want: $(head -c 400 "$T/body" 2>/dev/null)"
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T/body" "$1"; }
audit_count() { psql_val "SELECT count(*) FROM audit_events WHERE $1"; }

note "before binding: a verified certificate alone logs nobody in (401, audited)"
expect 401 cert:ent-cm1 GET /whoami
grep -q 'does not log in any account' "$T/body" || fail "401 body: $(cat "$T/body")"
[ "$(audit_count "action = 'auth.login' AND outcome = 'refused' AND details = 'client certificate SHA256:$(fp ent-cm1): bound to no account'")" = 1 ] ||
    fail "unbound certificate not audited"

note "binding: an enterprise certificate needs account_cert_ca in the CLI's configuration too"
as admin 2 account cert add cm1 --cert "$T/ent-cm1.pem"
assert_out "does not verify"
export P11ESCROW_ACCOUNT_CERT_CA=$T/ent.pem
as admin 0 account cert add cm1 --cert "$T/ent-cm1.pem"
assert_out "SHA256:$(fp ent-cm1)"
as admin 0 account cert add cm1 --cert "$T/ent-cm1b.pem"
as admin 0 account cert add audrey --cert "$T/audrey-c.pem"
as admin 0 account cert add cm2 --cert "$T/cm2-c.pem"
note "... refused: bound twice, not for TLS clients, no keyUsage, another CA, not an administrator, no account"
as admin 40 account cert add audrey --cert "$T/ent-cm1.pem"
assert_out "already bound to account 'cm1'"
as admin 2 account cert add cm1 --cert "$T/ent-server.pem"
as admin 2 account cert add cm1 --cert "$T/ent-noku.pem"
assert_out "digitalSignature"
as admin 2 account cert add cm1 --cert "$T/rogue-cm1.pem"
as cm1 51 account cert add cm1 --cert "$T/rogue-cm1.pem"
as admin 42 account cert add nobody --cert "$T/stranger.pem"
[ "$(audit_count "action = 'account.cert-add' AND outcome = 'ok'")" = 4 ] || fail "cert-add not audited"
[ "$(audit_count "action = 'account.cert-add' AND outcome = 'refused'")" -ge 5 ] || fail "refused cert-add not audited"
as admin 0 account cert list cm1
assert_out "SHA256:$(fp ent-cm1)"; assert_out "SHA256:$(fp ent-cm1b)"; assert_out "CN=Enterprise Root"
as cm1 0 account cert list cm1
as cm1 51 account cert list audrey

note "login with the certificate: whoami, a search, the audit log — no password"
expect 200 cert:ent-cm1 GET /whoami
[ "$(jget 'd["name"]')" = cm1 ] || fail "whoami: $(cat "$T/body")"
expect 200 cert:ent-cm1b GET "/records?serial=$SERIAL"
[ "$(jget 'len(d["records"])')" = 1 ] || fail "search with a certificate: $(cat "$T/body")"
expect 200 cert:audrey-c GET /audit
expect 403 cert:ent-cm1 GET /audit
[ "$(audit_count "action = 'auth.login' AND outcome = 'ok' AND actor = 'cm1' AND details = 'client certificate SHA256:$(fp ent-cm1)'")" -ge 1 ] ||
    fail "certificate login not audited"
! grep -q "password verified for 'cm1'" "$DAEMON_LOG" || fail "a certificate login verified a password"
note "... Basic still wins when sent with a certificate"
expect 200 "basic:audrey" GET /whoami
[ "$(jget 'd["name"]')" = audrey ] || fail "whoami with Basic"

note "unbound, other-CA certificates: 401 or refused at TLS"
expect 401 cert:stranger GET /whoami
code=$(call cert:rogue-cm1 GET /whoami) || code=tls-refused
[ "$code" = tls-refused ] || [ "$code" = 401 ] || fail "a rogue CA's certificate got $code"

note "a disabled account's certificate: 401; enabled again: 200"
as admin 0 account disable cm2
expect 401 cert:cm2-c GET /whoami
[ "$(audit_count "action = 'auth.login' AND outcome = 'refused' AND actor = 'cm2' AND details LIKE '%: the account is disabled'")" = 1 ] ||
    fail "disabled account's certificate not audited"
as admin 0 account enable cm2
expect 200 cert:cm2-c GET /whoami

note "sessions: POST /session with the certificate; the token works; unbinding ends it"
expect 201 cert:ent-cm1 POST /session
TOK=$(jget 'd["token"]')
expect 200 "bearer:$TOK" GET "/records?serial=$SERIAL"
[ "$(audit_count "action = 'auth.login' AND actor = 'cm1' AND details LIKE 'session opened%client certificate SHA256:$(fp ent-cm1)'")" = 1 ] ||
    fail "certificate session not audited"
as admin 2 account cert remove cm1 --sha256 nothex
as admin 42 account cert remove audrey --sha256 "$(fp ent-cm1)"
as admin 0 account cert remove cm1 --sha256 "SHA256:$(openssl x509 -in "$T/ent-cm1.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
expect 401 "bearer:$TOK" GET /whoami
expect 401 cert:ent-cm1 GET /whoami
[ "$(psql_val "SELECT end_reason FROM sessions WHERE cert_sha256 = '$(fp ent-cm1)'")" = "certificate removed" ] ||
    fail "unbinding did not end the session"
[ "$(audit_count "action = 'account.cert-remove' AND outcome = 'ok' AND details = 'SHA256:$(fp ent-cm1); 1 session(s) ended'")" = 1 ] ||
    fail "cert-remove audit: $(psql_val "SELECT details FROM audit_events WHERE action = 'account.cert-remove'")"
as admin 0 account cert add cm1 --cert "$T/ent-cm1.pem"

note "a revoked certificate of this CA: 401 at once, and its session ends"
expect 201 cert:cm2-c POST /session
TOK2=$(jget 'd["token"]')
run_esc 0 cert revoke --serial "$(openssl x509 -in "$T/cm2-c.pem" -noout -serial | cut -d= -f2)" \
    --reason keyCompromise --user admin --password-file "$T/admin.pw"
expect 401 cert:cm2-c GET /whoami
expect 401 "bearer:$TOK2" GET /whoami
[ "$(audit_count "action = 'auth.login' AND outcome = 'refused' AND actor = 'cm2' AND details LIKE '%: revoked'")" = 1 ] ||
    fail "revoked certificate not audited"
as admin 2 account cert add cm1 --cert "$T/cm2-c.pem"
assert_out "revoked"

note "the CLI's --server mode with --client-cert: no password asked or sent"
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' P11ESCROW_PASSWORD= \
    run_esc 0 recovery search --serial "$SERIAL" --server "$URL" --server-ca "$SERVER_CA" \
    --client-cert "$T/ent-cm1.pem" --client-key "$T/ent-cm1.key"
assert_out "${SERIAL,,}"
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' P11ESCROW_CLIENT_CERT=$T/audrey-c.pem \
    P11ESCROW_CLIENT_KEY=$T/audrey-c.key run_esc 0 audit show --server "$URL" --server-ca "$SERVER_CA" --action auth.login
assert_out "client certificate SHA256:"
note "... --user must be the certificate's account; the key must be private"
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' \
    run_esc 50 recovery search --serial "$SERIAL" --server "$URL" --server-ca "$SERVER_CA" --user audrey \
    --client-cert "$T/ent-cm1.pem" --client-key "$T/ent-cm1.key"
assert_out "logs in account 'cm1', not 'audrey'"
cp "$T/ent-cm1.key" "$T/open.key"; chmod 644 "$T/open.key"
run_esc 2 recovery search --serial "$SERIAL" --server "$URL" --server-ca "$SERVER_CA" \
    --client-cert "$T/ent-cm1.pem" --client-key "$T/open.key"
assert_out "chmod 600"

note "policy cert_login_roles = cert-manager: a manager's password is refused by the service (403), not locally"
as admin 2 policy set cert_login_roles bogus
as admin 2 policy set cert_login_roles cert-manager,cert-manager
! psql "$DB" -XAtqc "UPDATE policy SET value = 'root' WHERE key = 'cert_login_roles'" 2>/dev/null ||
    fail "the database accepted cert_login_roles root"
as admin 0 policy set cert_login_roles cert-manager
expect 403 basic:cm1 GET /whoami
[ "$(jget 'd["code"]')" = "permission denied" ] || fail "403 code: $(cat "$T/body")"
grep -q 'client certificate is required' "$T/body" || fail "403 message: $(cat "$T/body")"
expect 403 basic:cm1 POST /session
pw wrong 'not-the-password-1'; sed -i 's/^user = "wrong:/user = "cm1:/' "$T/wrong.curl"
expect 401 basic:wrong GET /whoami
expect 200 basic:audrey GET /whoami
expect 200 cert:ent-cm1 GET /whoami
[ "$(audit_count "action = 'auth.login' AND outcome = 'refused' AND actor = 'cm1' AND details LIKE 'password refused: role cert-manager%'")" = 2 ] ||
    fail "policy refusal not audited"
as cm1 0 recovery search --serial "$SERIAL"
assert_out "${SERIAL,,}"
srv audrey 0 audit show --action policy.set
as admin 0 policy set cert_login_roles ''
expect 200 basic:cm1 GET /whoami

note "EST still takes only this CA's client certificates"
code=$(curl -sS --cacert "$SERVER_CA" --cert "$T/ent-cm1.pem" --key "$T/ent-cm1.key" -o "$T/resp" -w '%{http_code}' \
    -H 'Content-Type: application/pkcs10' --data-binary @"$T/stranger.b64" "$URL/.well-known/est/signing/simpleenroll")
[ "$code" = 401 ] || fail "EST with an enterprise certificate: $code $(cat "$T/resp")"
code=$(curl -sS --cacert "$SERVER_CA" --cert "$T/stranger.pem" --key "$T/stranger.key" -o "$T/resp" -w '%{http_code}' \
    -H 'Content-Type: application/pkcs10' --data-binary @"$T/stranger.b64" "$URL/.well-known/est/signing/simplereenroll")
[ "$code" = 200 ] || fail "EST re-enrollment with this CA's certificate: $code $(cat "$T/resp")"

note "account_cert_crl: the enterprise CA's CRL refuses what it lists"
stop_daemon
mkdir -p "$T/entca"; : >"$T/entca/index.txt"
cat >"$T/entca/ca.cnf" <<EOF
[ca]
default_ca = ent
[ent]
database = $T/entca/index.txt
crlnumber = $T/entca/crlnumber
default_md = sha256
default_crl_days = 7
EOF
echo 01 >"$T/entca/crlnumber"
openssl ca -config "$T/entca/ca.cnf" -keyfile "$T/ent.key" -cert "$T/ent.pem" -revoke "$T/ent-cm1b.pem" \
    -crl_reason keyCompromise >/dev/null 2>&1 || fail "revoking in the enterprise CA"
openssl ca -config "$T/entca/ca.cnf" -keyfile "$T/ent.key" -cert "$T/ent.pem" -gencrl -out "$T/ent.crl" \
    >/dev/null 2>&1 || fail "enterprise CRL"
start_daemon 2 "account_cert_ca = $T/ent.pem" "account_cert_crl = $T/ent.crl"
API=$URL/api/v1
expect 200 cert:ent-cm1 GET /whoami
expect 401 cert:ent-cm1b GET /whoami
[ "$(audit_count "action = 'auth.login' AND outcome = 'refused' AND details LIKE '%$(fp ent-cm1b): revoked (account_cert_crl)'")" = 1 ] ||
    fail "CRL refusal not audited"
expect 200 cert:audrey-c GET /whoami
stop_daemon
note "... a CRL not signed by account_cert_ca stops the start"
openssl ca -config "$T/entca/ca.cnf" -keyfile "$T/rogue.key" -cert "$T/rogue.pem" -gencrl -out "$T/rogue.crl" \
    >/dev/null 2>&1 || fail "rogue CRL"
printf 'database = "%s"\nlisten = 127.0.0.1:1\nca_pin_file = %s\ntls_cert = %s\ntls_key = %s\naccount_cert_ca = %s\naccount_cert_crl = %s\n' \
    "$DB" "$PIN_FILE" "$T/tls.pem" "$T/tls.key" "$T/ent.pem" "$T/rogue.crl" >"$T/bad.conf"
rc=0; "$P11ESCROWD_BIN" --config "$T/bad.conf" --check >"$T/out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q "not signed by a certificate of account_cert_ca" "$T/out" || fail "a rogue CRL was accepted ($rc)"

note "audit chain intact"
run_esc 0 audit verify
echo "cert_login: ok"
