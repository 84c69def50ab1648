#!/bin/bash
# --json output of every listing and show action of the CLI (issue 18): recovery search, list and
# show (new), kra list, account list and scope, account cert list, audit show, policy show,
# storage-key list, enroll-password list, profile list, token info and db status.  Each is parsed
# with python3 and its values checked against the database (serials, states, KRA names, counts, times in RFC 3339 UTC); where the
# action also runs through the service, --local and --server must print the same document (the
# same code builds both).  The database runs in a time zone that is not UTC, so a time left in
# local time shows.  With --json an error leaves stdout empty and keeps its exit code, and
# --json with an action that prints no listing is a usage error.  No password is ever printed.
. "$(dirname "$0")/lib.sh"
unset P11ESCROW_P12_PASSWORD P11ESCROW_PASSWORD P11ESCROW_NEW_PASSWORD || true

provision_tokens "$T/hsm" CA KRA1 KRA2
export SOFTHSM2_CONF=$T/hsm/softhsm2.conf
start_pg "$T/pg"
export P11ESCROW_DATABASE=$DB
# Every session of the test database in a time zone 5:30 away from UTC.
psql "$DB" -XAtq -c "DO \$\$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', current_database(),
                                                   'Asia/Kolkata'); END \$\$" >/dev/null
[ "$(psql_val "SHOW timezone")" = Asia/Kolkata ] || fail "the database is not in Asia/Kolkata"
run_esc 0 setup --token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --subject 'CN=JSON Test CA,O=Example'
ca_pem "$T/ca.pem"

pw admin 'admin-password-0001'; pw cm1 'cm1-password-00001'; pw audrey 'audrey-password-05'
pw kent 'kent-password-0003'; pw p12 'p12-transport-secret'
P11ESCROW_NEW_PASSWORD=admin-password-0001 run_esc 0 account add admin --role admin
for k in 1 2; do
    as admin 0 kra enroll --ca-token 'pkcs11:token=CA' --pin-file "$PIN_FILE" --token "pkcs11:token=KRA$k" \
        --kra-pin-file "$PIN_FILE" --name "kra$k" --key-type ec-p256
done
P11ESCROW_NEW_PASSWORD=$(cat "$T/cm1.pw") as admin 0 account add cm1 --role cert-manager
P11ESCROW_NEW_PASSWORD=$(cat "$T/audrey.pw") as admin 0 account add audrey --role auditor
P11ESCROW_NEW_PASSWORD=$(cat "$T/kent.pw") as admin 0 account add kent --role kra --kra kra1
as admin 0 policy set kra_set_size 2

note "two keys archived, a recovery request, an enrollment password"
CA_KEY="$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'");pin-value=$P11ESCROW_USER_PIN"
# issue NAME [EXTENSIONS]: a certificate of the CA for NAME (default: an encryption certificate),
# and its key, in $T/NAME.pem, $T/NAME.key and $T/NAME.p12.
issue() {
    printf "${2:-keyUsage=critical,keyEncipherment\nsubjectAltName=email:%s@example.org\n}" "$1" >"$T/$1.ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/$1.key" 2>/dev/null
    openssl req -new -key "$T/$1.key" -subj "/CN=$1/O=Example" -out "$T/$1.csr" 2>/dev/null
    openssl x509 -req -in "$T/$1.csr" -engine pkcs11 -CAkeyform engine -CAkey "$CA_KEY" -CA "$T/ca.pem" \
        -set_serial "0x00$(openssl rand -hex 15)" -days 30 -extfile "$T/$1.ext" -out "$T/$1.pem" >/dev/null 2>&1 ||
        fail "issuing $1's certificate"
    openssl pkcs12 -export -inkey "$T/$1.key" -in "$T/$1.pem" -passout "file:$T/p12.pw" -out "$T/$1.p12"
}
issue alice; issue bob
run_esc 0 archive import "$T/alice.p12" "$T/bob.p12" --password-file "$T/p12.pw" --user admin \
    --account-password-file "$T/admin.pw"
ALICE=$(openssl x509 -in "$T/alice.pem" -noout -serial | sed 's/serial=//')
# The serial as the library shows it: lower-case hex, whole bytes (as openssl prints it, lower case).
ALICE_HEX=$(printf '%s' "$ALICE" | tr 'A-F' 'a-f')
as cm1 0 recovery request --serial "$ALICE" --kra kra1 --reason 'lost laptop'
REQ=$(psql_val "SELECT max(id) FROM recovery_requests")
as cm1 0 enroll-password create --subject 'CN=Dave,O=Example' --hours 2
OTP_PW=$(sed -n 's/^password: //p' "$T/out")
[ -n "$OTP_PW" ] || fail "no enrollment password shown"
start_daemon 1

# jl USER WANT ARGS...: p11escrow ARGS --json on the database (--local) as USER: stdout in $T/l.json
# js USER WANT ARGS...: the same through the service (--server, the database unreachable): $T/s.json
# Both keep stderr apart (in $T/out, for fail) and check the exit code.
jrun() {
    local dest=$1 want=$2 rc=0; shift 2
    "$ESC" "$@" --json >"$dest" 2>"$T/out" </dev/null || rc=$?
    [ "$rc" -eq "$want" ] || fail "p11escrow $* --json exited $rc, expected $want"
}
jl() { local u=$1 want=$2; shift 2; jrun "$T/l.json" "$want" "$@" --user "$u" --password-file "$T/$u.pw"; }
js() {
    local u=$1 want=$2; shift 2
    P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' jrun "$T/s.json" "$want" "$@" \
        --server "$URL" --server-ca "$SERVER_CA" --user "$u" --password-file "$T/$u.pw"
}
# check FILE PYTHON...: each PYTHON expression must be true, on the document d of FILE, with env
# (the exported values to compare with) and RFC3339 (a pattern of "YYYY-MM-DDTHH:MM:SS[.f]Z").
check() {
    local f=$1; shift
    python3 - "$f" "$@" <<'EOF' || fail "$(cat "$f")"
import json, os, re, sys
d = json.load(open(sys.argv[1]))
env = os.environ
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
for expr in sys.argv[2:]:
    if not eval(expr):
        print("not true: " + expr, file=sys.stderr)
        sys.exit(1)
EOF
}
# same: the local and the service's document are equal (and so have the same keys).
same() {
    python3 - "$T/l.json" "$T/s.json" <<'EOF' || fail "--local and --server differ for: $*"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = lambda d: sorted({k for o in (d if isinstance(d, list) else [d]) for k in o})
if keys(a) != keys(b):
    print("keys: %s / %s" % (keys(a), keys(b)), file=sys.stderr)
    sys.exit(1)
if a != b:
    print("local:  %s\nserver: %s" % (json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)), file=sys.stderr)
    sys.exit(1)
EOF
}
utc() { psql_val "SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') $2"; }
export ALICE_HEX REQ
ALICE_ID=$(psql_val "SELECT id FROM archive_records ORDER BY created_at LIMIT 1")
ALICE_AT=$(utc created_at "FROM archive_records WHERE id = '$ALICE_ID'")
REQ_AT=$(utc created_at "FROM recovery_requests WHERE id = $REQ")
POLICY_AT=$(utc updated_at "FROM policy WHERE key = 'kra_set_size'")
export ALICE_ID ALICE_AT REQ_AT POLICY_AT

note "recovery search"
for mode in jl js; do
    $mode cm1 0 recovery search --serial "$ALICE"
done
check "$T/l.json" 'isinstance(d, list) and len(d) == 1' 'd[0]["serial"] == env["ALICE_HEX"]' \
    'd[0]["id"] == env["ALICE_ID"]' 'd[0]["kras"] == ["kra1", "kra2"]' 'd[0]["subject"] == "CN=alice,O=Example"' \
    'd[0]["email"] == "alice@example.org"' 'd[0]["foreign"] is False and d[0]["tampered"] is False' \
    'RFC3339.match(d[0]["created"])' 'd[0]["created"] == env["ALICE_AT"]' \
    'sorted(d[0]) == ["created", "email", "foreign", "id", "issuer", "kras", "serial", "subject", "tampered"]'
same recovery search
jl cm1 0 recovery search --email bob@example.org
check "$T/l.json" 'len(d) == 1' 'd[0]["subject"] == "CN=bob,O=Example"'
jl cm1 0 recovery search
check "$T/l.json" 'len(d) == 2'
jl cm1 0 recovery search --serial 0badc0ffee
check "$T/l.json" 'd == []'

note "recovery list"
jl cm1 0 recovery list; js cm1 0 recovery list
check "$T/l.json" 'len(d) == 1' 'd[0]["id"] == int(env["REQ"])' 'd[0]["record"] == env["ALICE_ID"]' \
    'd[0]["serial"] == env["ALICE_HEX"]' 'd[0]["kra"] == "kra1"' 'd[0]["requester"] == "cm1"' \
    'd[0]["reason"] == "lost laptop"' 'd[0]["state"] in ("pending", "approved")' \
    'd[0]["approvals"] == 0 and d[0]["approvals_required"] == 0' 'd[0]["created"] == env["REQ_AT"]'
same recovery list
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))[0], open(sys.argv[2], "w"))' "$T/l.json" "$T/one.json"
STATE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["state"])' "$T/l.json")
[ "$STATE" = "$(psql_val "SELECT state FROM recovery_requests WHERE id = $REQ")" ] || fail "state $STATE"
jl cm1 0 recovery list --state denied
check "$T/l.json" 'd == []'

note "recovery show: one object, the same as list's"
jl kent 0 recovery show "$REQ"; js kent 0 recovery show "$REQ"
same recovery show
python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
    "$T/l.json" "$T/one.json" || fail "recovery show differs from list's entry: $(cat "$T/l.json")"
as kent 0 recovery show "$REQ"
assert_out "request $REQ "; assert_out "reason: lost laptop"; assert_not_out "request(s)"
jl kent 42 recovery show 999999
[ ! -s "$T/l.json" ] || fail "stdout holds something for an unknown request"
js kent 42 recovery show 999999
[ ! -s "$T/s.json" ] || fail "stdout holds something for an unknown request through the service"

note "kra list"
jl audrey 0 kra list; js audrey 0 kra list
check "$T/l.json" '[k["name"] for k in d] == ["kra1", "kra2"]' 'all(k["state"] == "active" for k in d)' \
    'all(k["records"] == 2 for k in d)' 'all(k["key_type"] == "ec-p256" and k["recipient"] == "ecdh" for k in d)' \
    'all(RFC3339.match(k["not_after"]) and k["days_left"] > 600 and k["expired"] is False for k in d)' \
    'all(k["warning"] is None and re.match(r"^[0-9a-f]+$", k["cert_serial"]) for k in d)' \
    'd[0]["token_label"] == "KRA1" and d[0]["origin"] == "generated"'
same kra list

note "account list"
jl audrey 0 account list; js audrey 0 account list
check "$T/l.json" '{a["name"]: a["roles"] for a in d} == {"admin": ["admin"], "cm1": ["cert-manager"],
                                                         "audrey": ["auditor"], "kent": ["kra"]}' \
    '{a["name"]: a["kra"] for a in d}["kent"] == "kra1" and {a["name"]: a["kra"] for a in d}["audrey"] is None' \
    'all(a["disabled"] is False and a["scope"] is None for a in d)' \
    'sorted(d[0]) == ["disabled", "kra", "name", "roles", "scope"]'
same account list

note "account cert list (break-glass only: the service has no endpoint for bindings)"
jl admin 0 account cert list cm1 --local
check "$T/l.json" 'd == []'
issue cm1-client 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
as admin 0 account cert add cm1 --cert "$T/cm1-client.pem"
CERT_SHA256=$(openssl x509 -in "$T/cm1-client.pem" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f')
CERT_SERIAL=$(openssl x509 -in "$T/cm1-client.pem" -noout -serial | sed 's/serial=//' | tr 'A-F' 'a-f')
CERT_END=$(date -u -d "$(openssl x509 -in "$T/cm1-client.pem" -noout -enddate | sed 's/notAfter=//')" +%Y-%m-%dT%H:%M:%SZ)
export CERT_SHA256 CERT_SERIAL CERT_END
jl cm1 0 account cert list cm1
check "$T/l.json" 'len(d) == 1' 'd[0]["sha256"] == env["CERT_SHA256"] and d[0]["serial"] == env["CERT_SERIAL"]' \
    'd[0]["subject"] == "CN=cm1-client,O=Example" and d[0]["not_after"] == env["CERT_END"]' \
    'd[0]["added_by"] == "admin" and RFC3339.match(d[0]["added_at"])' \
    'sorted(d[0]) == ["added_at", "added_by", "issuer", "not_after", "serial", "sha256", "subject"]'

note "audit show"
jl audrey 0 audit show --action archive.store; js audrey 0 audit show --action archive.store
check "$T/l.json" 'len(d) == 2' 'all(e["actor"] == "admin" and e["action"] == "archive.store" for e in d)' \
    'all(e["outcome"] == "ok" and RFC3339.match(e["time"]) for e in d)' 'd[0]["id"] < d[1]["id"]' \
    'sorted(d[0]) == ["action", "actor", "details", "id", "object", "outcome", "role", "time"]'
same audit show
jl audrey 0 audit show --action no.such.action
check "$T/l.json" 'd == []'

note "policy show"
jl kent 0 policy show; js kent 0 policy show
check "$T/l.json" '{p["key"]: p["value"] for p in d}["kra_set_size"] == "2"' \
    '[p for p in d if p["key"] == "kra_set_size"][0]["updated_by"] == "admin"' \
    '[p for p in d if p["key"] == "kra_set_size"][0]["updated_at"] == env["POLICY_AT"]' \
    'all(p["updated_by"] is None and p["updated_at"] is None for p in d if p["key"] == "kra_threshold")'
same policy show

note "storage-key list"
jl audrey 0 storage-key list; js audrey 0 storage-key list
check "$T/l.json" 'len(d) == 1' 'd[0]["generation"] == 1 and d[0]["current"] is True' 'd[0]["records"] == 2' \
    'd[0]["retired"] is None and d[0]["retired_by"] is None' 'RFC3339.match(d[0]["created"])' \
    'd[0]["fingerprint"].startswith("SHA256:") or len(d[0]["fingerprint"]) > 0'
same storage-key list

note "enroll-password list: never the password"
jl audrey 0 enroll-password list; js audrey 0 enroll-password list
check "$T/l.json" 'len(d) == 1' 'd[0]["subject"] == "CN=Dave,O=Example" and d[0]["state"] == "unused"' \
    'd[0]["created_by"] == "cm1" and d[0]["used"] is None and d[0]["profile"] == "encryption"' \
    'RFC3339.match(d[0]["expires"]) and RFC3339.match(d[0]["created"])' \
    '"password" not in json.dumps(d)'
same enroll-password list

note "profile list: the built-in table and the service's"
jrun "$T/l.json" 0 profile list
js admin 0 profile list
check "$T/l.json" '[p["name"] for p in d if p["default"]] == ["encryption"]' \
    'all(isinstance(p["keys"], list) and isinstance(p["days"], int) for p in d)'
same profile list

note "account scope: one object, as GET /accounts/NAME/scope"
jl admin 0 account scope cm1; js admin 0 account scope cm1
check "$T/l.json" 'd == {"name": "cm1", "scoped": False, "profiles": [], "groups": []}'
same account scope unscoped
jl admin 0 account scope cm1 --group Sales --profile encryption
check "$T/l.json" 'd == {"name": "cm1", "scoped": True, "profiles": ["encryption"], "groups": ["Sales"]}'
js admin 0 account scope cm1
same account scope
js admin 0 account scope cm1 --clear
check "$T/s.json" 'd == {"name": "cm1", "scoped": False, "profiles": [], "groups": []}'

note "token info and db status (on the service host, no account)"
jrun "$T/t.json" 0 token info 'pkcs11:token=CA' --key "$(psql_val "SELECT uri FROM token_keys WHERE role = 'ca-sign'")" \
    --pin-file "$PIN_FILE"
check "$T/t.json" 'd["token"] == "CA" and d["module"].endswith(".so") and len(d["serial"]) > 0' \
    'any(m["name"] == "CKM_ECDSA" and "sign" in m["flags"] for m in d["mechanisms"])' \
    'all(isinstance(m["min_bits"], int) and isinstance(m["max_bits"], int) for m in d["mechanisms"])' \
    'd["key"]["protection"] == "sensitive, never extractable" and d["key"]["uri"].startswith("pkcs11:")'
jrun "$T/t2.json" 0 token info 'pkcs11:token=KRA1'
check "$T/t2.json" 'd["token"] == "KRA1" and d["key"] is None'
jrun "$T/t2.json" 13 token info 'pkcs11:token=NOSUCH'
[ ! -s "$T/t2.json" ] || fail "stdout holds something when the token is not found"
jrun "$T/db.json" 0 db status
export SCHEMA_VERSION
check "$T/db.json" 'd == {"database_version": int(env["SCHEMA_VERSION"]), "program_version": int(env["SCHEMA_VERSION"]),
                          "current": True}'

note "no secret in any of it"
for f in "$T"/l.json "$T"/s.json "$T"/t.json; do
    for s in admin-password-0001 cm1-password-00001 audrey-password-05 kent-password-0003 p12-transport-secret \
        "$OTP_PW" "$P11ESCROW_USER_PIN"; do
        ! grep -qF -- "$s" "$f" || fail "a secret is in $f"
    done
done

note "errors: stdout stays empty, the exit code is the text mode's"
jl cm1 51 audit show
[ ! -s "$T/l.json" ] || fail "stdout holds something on an error: $(cat "$T/l.json")"
js cm1 51 audit show
[ ! -s "$T/s.json" ] || fail "stdout holds something on an error: $(cat "$T/s.json")"
grep -q 'error' "$T/out" || fail "no error on stderr"
jrun "$T/l.json" 50 recovery list --user kent --password-file "$T/cm1.pw"
[ ! -s "$T/l.json" ] || fail "stdout holds something after a failed login"
P11ESCROW_DATABASE='host=/nonexistent dbname=none connect_timeout=1' jrun "$T/s.json" 50 recovery list \
    --server "$URL" --server-ca "$SERVER_CA" --user kent --password-file "$T/cm1.pw"
[ ! -s "$T/s.json" ] || fail "stdout holds something after a failed login through the service"
jl cm1 2 recovery approve "$REQ"
assert_out "--json goes with search, list and show"
jl admin 2 kra retire kra2
assert_out "--json goes with list"
jl audrey 2 audit export
assert_out "--json goes with show"
jl admin 2 policy set kra_set_size 1
[ "$(psql_val "SELECT value FROM policy WHERE key = 'kra_set_size'")" = 2 ] || fail "policy set ran with --json"
echo "ok"
