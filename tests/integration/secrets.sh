#!/bin/bash
# Secret hygiene end to end: setup, a KRA, accounts, a one-time enrollment
# password, an EST /serverkeygen enrollment through p11escrowd, a two-person
# recovery through the JSON API with the CLI's --server mode, and error cases
# with wrong PINs and passwords.  Then the service's log, PostgreSQL's log,
# every output of the CLI and a pg_dump of the database are searched for
# every secret of the run: the CA and KRA PINs, the SO PIN, the account
# passwords, the one-time password, the PKCS#12 password, the wrong PINs and
# passwords tried, and the server-generated private key (its PKCS#8 DER in
# hex and base64, its PEM lines, its private scalar).  None may be there —
# except where the CLI shows a generated secret once, by design, on its one
# line.  The running service may not dump core (RLIMIT_CORE 0).
CA_PIN=ca-pin-Q7v9Lr2xTb
KRA_PIN=kra-pin-W3m8Zt5kHd
SO_PIN=so-pin-J4n6Xc1vGs
# lib.sh writes $PIN_FILE (the service's ca_pin_file) from P11ESCROW_USER_PIN.
export P11ESCROW_USER_PIN=$CA_PIN P11ESCROW_SO_PIN=$SO_PIN
. "$(dirname "$0")/lib.sh"

( umask 077; printf '%s\n' "$KRA_PIN" >"$T/kra.pin"; printf '%s\n' "$SO_PIN" >"$T/so.pin" )
provision_tokens "$T/hsm" CA -- --pin-file "$PIN_FILE" --so-pin-file "$T/so.pin"
provision_tokens "$T/hsm" KRA1 -- --pin-file "$T/kra.pin" --so-pin-file "$T/so.pin"
# From here on, PINs only in files.
unset P11ESCROW_USER_PIN P11ESCROW_SO_PIN
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB

# Every CLI run keeps its stdout and stderr in $T/cli/NN-WHAT.{out,err}.
mkdir "$T/cli"
ncli=0
# cli EXPECTED_RC ARGS...: as run_esc, output also in $T/out (both streams)
cli() {
    local want=$1 rc=0 f
    shift
    ncli=$((ncli + 1))
    f=$T/cli/$(printf '%02d' "$ncli")-${1}${2:+-$2}
    "$ESC" "$@" >"$f.out" 2>"$f.err" </dev/null || rc=$?
    cat "$f.out" "$f.err" >"$T/out"
    [ "$rc" -eq "$want" ] || fail "p11escrow $* exited $rc, expected $want"
    LAST=$f
}
pw admin 'admin-Pw-8hT2qLm4zR'
pw cm1 'cm1-Pw-3kV9wXp6cN'
pw cm2 'cm2-Pw-5rB7yGd2fJ'
pw kent 'kent-Pw-9tM4sHq8vL'
WRONG_PW='wrong-Pw-2gK7nZc5xB'
WRONG_CA_PIN='wrong-ca-pin-6pR3'
WRONG_KRA_PIN='wrong-kra-pin-8uF1'
( umask 077; printf '%s\n' "$WRONG_PW" >"$T/wrong.pw"; printf '%s\n' "$WRONG_CA_PIN" >"$T/wrong-ca.pin"
  printf '%s\n' "$WRONG_KRA_PIN" >"$T/wrong-kra.pin" )
as() { local u=$1 want=$2; shift 2; cli "$want" "$@" --user "$u" --password-file "$T/$u.pw"; }

note "setup, accounts, a KRA"
cli 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=Secrets Test CA,O=Example'
P11ESCROW_NEW_PASSWORD=$(cat "$T/admin.pw") cli 0 account add admin --role admin
cli 11 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$T/wrong-ca.pin" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$T/kra.pin" --name kra1 --user admin --password-file "$T/admin.pw"
cli 11 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$T/wrong-kra.pin" --name kra1 --user admin --password-file "$T/admin.pw"
as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token 'pkcs11:token=KRA1' \
    --kra-pin-file "$T/kra.pin" --name kra1
for who in cm1:cert-manager cm2:cert-manager; do
    P11ESCROW_NEW_PASSWORD=$(cat "$T/${who%%:*}.pw") as admin 0 account add "${who%%:*}" --role "${who#*:}"
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
as admin 0 policy set recovery_approvals 1
cli 50 account list --user admin --password-file "$T/wrong.pw"
start_daemon 2

note "the service with a wrong CA PIN refuses to start, naming no PIN"
rc=0
P11ESCROW_CA_PIN_FILE=$T/wrong-ca.pin "$P11ESCROWD_BIN" --config "$DAEMON_CONF" --check >"$T/check.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "p11escrowd --check accepted a wrong CA PIN"
grep -qi 'pin' "$T/check.out" || fail "the refusal does not say the PIN is wrong: $(cat "$T/check.out")"

note "a one-time password and an EST /serverkeygen enrollment with it"
as cm1 0 enroll-password create --subject 'CN=Alice,O=Example' --profile encryption
OTP_FILE=$LAST.out
OTP_NAME=$(awk '$1 == "name:" {print $2}' "$OTP_FILE")
OTP=$(awk '$1 == "password:" {print $2}' "$OTP_FILE")
[ ${#OTP} -ge 16 ] || fail "no one-time password shown: $(cat "$OTP_FILE")"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
    -subj '/CN=Alice/O=Example' -outform DER 2>/dev/null | openssl base64 >"$T/req.b64"
est() { # USER:PASSWORD -> status; body $T/est.body, headers $T/est.h
    curl -sS --cacert "$SERVER_CA" -u "$1" -D "$T/est.h" -o "$T/est.body" -w '%{http_code}' \
        -H 'Content-Type: application/pkcs10' --data-binary @"$T/req.b64" "$URL/.well-known/est/serverkeygen"
}
[ "$(est "$OTP_NAME:$WRONG_PW")" = 401 ] || fail "a wrong one-time password was not refused"
[ "$(est "$OTP_NAME:$OTP")" = 200 ] || fail "serverkeygen: $(cat "$T/est.body")"
BOUNDARY=$(sed -n 's/^[Cc]ontent-[Tt]ype: multipart\/mixed; *boundary=\([^;[:space:]]*\).*/\1/p' "$T/est.h")
tr -d '\r' <"$T/est.body" | awk -v b="--$BOUNDARY" -v d="$T" '
    $0 == b || $0 == b "--" { n++; body = 0; next }
    body { print > (d "/part" n ".b64") }
    $0 == "" { body = 1 }'
( umask 077; openssl base64 -d -in "$T/part1.b64" -out "$T/key.der" )
openssl pkey -inform DER -in "$T/key.der" -noout 2>/dev/null || fail "part 1 is not the private key"
openssl base64 -d -in "$T/part2.b64" | openssl pkcs7 -inform DER -print_certs -out "$T/alice.pem"
SERIAL=$(openssl x509 -in "$T/alice.pem" -noout -serial | cut -d= -f2)
[ "$(est "$OTP_NAME:$OTP")" = 401 ] || fail "the one-time password worked twice"

note "recovery through the service with the CLI's --server mode, wrong passwords and PINs on the way"
srv() {
    local u=$1 want=$2; shift 2
    P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' \
        cli "$want" "$@" --server "$URL" --server-ca "$SERVER_CA" --user "$u" --password-file "$T/$u.pw"
}
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' cli 50 recovery search --serial "$SERIAL" \
    --server "$URL" --server-ca "$SERVER_CA" --user cm1 --password-file "$T/wrong.pw"
[ "$(curl -sS --cacert "$SERVER_CA" -u "cm1:$WRONG_PW" -o /dev/null -w '%{http_code}' "$URL/api/v1/whoami")" = 401 ] ||
    fail "a wrong password was accepted by the API"
srv cm1 0 recovery search --serial "$SERIAL"
srv cm1 0 recovery request --serial "$SERIAL" --reason "Alice lost her laptop" --kra kra1
REQ=$(sed -n 's/^recovery request \([0-9]*\) filed$/\1/p' "$T/out")
[ -n "$REQ" ] || fail "no request id"
srv cm2 0 recovery approve "$REQ"
srv kent 11 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$T/wrong-kra.pin" --out "$T/x.p12"
srv kent 0 recovery complete "$REQ" --token 'pkcs11:token=KRA1' --kra-pin-file "$T/kra.pin" --out "$T/alice.p12"
P12_FILE=$LAST.out
P12PW=$(sed -n 's/^PKCS#12 password (shown once.*): //p' "$P12_FILE")
[ ${#P12PW} -ge 20 ] || fail "no PKCS#12 password shown"
openssl pkcs12 -in "$T/alice.p12" -passin "pass:$P12PW" -nodes -nocerts 2>/dev/null | openssl pkey -outform DER >"$T/rec.der"
cmp -s "$T/rec.der" <(openssl pkey -inform DER -in "$T/key.der" -outform DER) ||
    fail "the recovered key is not the key the service generated"

note "the service may not dump core"
grep -E '^Max core file size +0 +0 ' "/proc/$DAEMON_PID/limits" >/dev/null ||
    fail "p11escrowd may dump core: $(grep 'core file' "/proc/$DAEMON_PID/limits")"
stop_daemon

note "a CA PIN from the environment: gone from the running service's environment (/proc/PID/environ)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
grep -v '^ca_pin_file\|^listen' "$DAEMON_CONF" >"$T/envpin.conf"
printf 'listen = 127.0.0.1:%s\n' "$port" >>"$T/envpin.conf"
P11ESCROW_CA_PIN=$(cat "$PIN_FILE") "$P11ESCROWD_BIN" --config "$T/envpin.conf" 2>"$T/envpin.log" &
ENVPIN_PID=$!
_daemon_pids+=("$ENVPIN_PID")
for i in $(seq 100); do
    curl -sf --cacert "$SERVER_CA" "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$ENVPIN_PID" 2>/dev/null || { cat "$T/envpin.log" >&2; fail "p11escrowd with the PIN in its environment did not start"; }
    sleep 0.1
done
tr '\0' '\n' <"/proc/$ENVPIN_PID/environ" >"$T/envpin.environ"
! grep -q '^P11ESCROW_CA_PIN=' "$T/envpin.environ" || fail "P11ESCROW_CA_PIN is still in the service's environment"
! grep -qF "$(cat "$PIN_FILE")" "$T/envpin.environ" || fail "the CA PIN is still readable in /proc/PID/environ"
grep -q '^PATH=' "$T/envpin.environ" || fail "reading /proc/PID/environ did not work"
kill -TERM "$ENVPIN_PID"; wait "$ENVPIN_PID" || fail "p11escrowd (PIN from the environment) did not stop cleanly"
rm -f "$T/envpin.environ"

pg_dump "$DB" >"$T/dump.sql" || fail "pg_dump"
grep -q 'COPY public.archive_records' "$T/dump.sql" || fail "the dump has no archive records"

note "no secret anywhere"
rm -f "$T/out"     # fail() would show the last CLI output: the PKCS#12 password
# The forms each secret might take: as is, hex (a bytea), base64 (HTTP Basic, a blob).
KEY_HEX=$(od -An -v -tx1 "$T/key.der" | tr -d ' \n')
KEY_B64=$(openssl base64 -A -in "$T/key.der")
SCALAR=$(openssl pkey -inform DER -in "$T/key.der" -noout -text | sed -n '/^priv:/,/^pub:/p' | sed '1d;$d' |
    tr -d ' :\n' | sed 's/^00//')
[ ${#SCALAR} -ge 60 ] || fail "cannot read the private scalar"
names=() needles=()
add() { names+=("$1"); needles+=("$2"); }
add "CA PIN" "$CA_PIN"; add "KRA PIN" "$KRA_PIN"; add "SO PIN" "$SO_PIN"; add "one-time password" "$OTP"
add "PKCS#12 password" "$P12PW"; add "wrong password" "$WRONG_PW"; add "wrong CA PIN" "$WRONG_CA_PIN"
add "wrong KRA PIN" "$WRONG_KRA_PIN"; add "the key's PKCS#8 (hex)" "$KEY_HEX"; add "the key's PKCS#8 (base64)" "$KEY_B64"
add "the private scalar (hex)" "$SCALAR"; add "Basic credentials of the one-time password" "$(printf '%s:%s' "$OTP_NAME" "$OTP" | base64 -w0)"
for u in admin cm1 cm2 kent; do
    p=$(cat "$T/$u.pw")
    add "$u's password" "$p"; add "$u's Basic credentials" "$(printf '%s:%s' "$u" "$p" | base64 -w0)"
done
for v in CA_PIN KRA_PIN OTP P12PW; do add "$v in hex" "$(printf '%s' "${!v}" | od -An -v -tx1 | tr -d ' \n')"; done
i=0
while IFS= read -r line; do
    i=$((i + 1))
    [ ${#line} -ge 32 ] && add "line $i of the key's PEM" "$line"
done < <(openssl pkey -inform DER -in "$T/key.der")
# The CLI shows a generated secret once, by design: on that one line only.
grep -c -- "$OTP" "$OTP_FILE" | grep_q -x 1 || fail "the one-time password is shown more than once"
grep -c -- "$P12PW" "$P12_FILE" | grep_q -x 1 || fail "the PKCS#12 password is shown more than once"
sed -i "/^password: /d" "$OTP_FILE"
sed -i "/^PKCS#12 password (shown once/d" "$P12_FILE"
files=("$DAEMON_LOG" "$T/check.out" "$T/pg/postgres.log" "$T/dump.sql" "$T/cli"/*)
[ "${#files[@]}" -gt 30 ] || fail "only ${#files[@]} files to search"
for i in "${!needles[@]}"; do
    [ ${#needles[i]} -ge 8 ] || fail "${names[i]}: too short to search for"
    hits=$(grep -laiF -- "${needles[i]}" "${files[@]}" || true)
    [ -z "$hits" ] || fail "${names[i]} is in: $hits"
done
note "  ${#needles[@]} forms of secrets, none in ${#files[@]} files ($(cat "${files[@]}" | wc -c) bytes)"
exit 0
