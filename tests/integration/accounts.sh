#!/bin/bash
# p11escrow account: the first administrator, roles and their separation,
# KRA binding, authentication that does not tell whether a name exists, and
# passwords that never reach argv or the database in clear.
. "$(dirname "$0")/lib.sh"

unset P11ESCROW_PASSWORD P11ESCROW_NEW_PASSWORD || true

# Passwords live in mode-600 files or the environment only, never in argv.
ADMIN_PW='first-admin-pw-31415926'
CAROL_PW='carol-cert-manager-27182'
KENT_PW='kent-key-recovery-16180'
AUDREY_PW='audrey-the-auditor-14142'
pwfile() { ( umask 077; printf '%s\n' "$2" >"$T/$1.pw" ); }
pwfile admin "$ADMIN_PW"
pwfile carol "$CAROL_PW"
pwfile audrey "$AUDREY_PW"
pwfile short 'abcde'
AS_ADMIN=(--user first --password-file "$T/admin.pw")

start_pg "$T/pg"

note "an unmigrated database is named as such"
run_esc 23 account list --user first --database "$DB"
assert_out "db migrate"
run_esc 0 db migrate --database "$DB"

note "the first administrator needs no --user while no administrator exists"
run_esc 2 account add first --role admin --database "$DB" --new-password-file "$T/admin.pw" --password-file "$T/admin.pw"
run_esc 51 account add early --role auditor --database "$DB" --new-password-file "$T/carol.pw"
assert_out "the first account must have the admin role"
run_esc 0 account add first --role admin --database "$DB" --new-password-file "$T/admin.pw"
assert_out "account 'first' created with roles admin (the first administrator)"
run_esc 2 account add second --role admin --database "$DB" --new-password-file "$T/admin.pw"
assert_out "--user ADMIN is required"

note "KRAs (no enrollment yet: registered directly)"
for k in 1 2; do
    psql_val "INSERT INTO kras (name, state, certificate, cert_serial, cert_sha256, key_type, recipient,
                                token_label, token_serial, key_uri)
              VALUES ('kra$k', 'active', '\\x00'::bytea, '0$k', repeat('$k', 64), 'rsa3072', 'rsa-oaep-sha256',
                      'KRA$k', '000$k', 'pkcs11:token=KRA$k;object=kra')" >/dev/null
done

note "an administrator creates a certificate manager, a KRA account and an auditor"
run_esc 0 account add carol --role cert-manager "${AS_ADMIN[@]}" --new-password-file "$T/carol.pw" --database "$DB"
P11ESCROW_PASSWORD=$ADMIN_PW P11ESCROW_NEW_PASSWORD=$KENT_PW \
    run_esc 0 account add kent --role kra --kra kra1 --user first --database "$DB"
assert_out "bound to KRA 'kra1'"
run_esc 0 account add audrey --role auditor "${AS_ADMIN[@]}" --new-password-file "$T/audrey.pw" -d "$DB"
run_esc 40 account add carol --role auditor "${AS_ADMIN[@]}" --new-password-file "$T/audrey.pw" -d "$DB"
assert_out "account 'carol' already exists"
# The success events name the account created (their object was uninitialised memory once).
[ "$(psql_val "SELECT string_agg(object, ',' ORDER BY id) FROM audit_events WHERE action = 'account.create' AND outcome = 'ok'
               AND object IN ('carol', 'kent', 'audrey')")" = carol,kent,audrey ] ||
    fail "account.create events do not name the accounts: $(psql_val "SELECT string_agg(object, ',') FROM audit_events WHERE action = 'account.create'")"

note "one KRA, one account"
P11ESCROW_NEW_PASSWORD=$KENT_PW run_esc 40 account add kent2 --role kra --kra kra1 "${AS_ADMIN[@]}" -d "$DB"
assert_out "KRA 'kra1' is already bound to account 'kent'"
P11ESCROW_NEW_PASSWORD=$KENT_PW run_esc 42 account add kent2 --role kra --kra nosuch "${AS_ADMIN[@]}" -d "$DB"
run_esc 2 account add kent2 --role kra "${AS_ADMIN[@]}" --new-password-file "$T/carol.pw" -d "$DB"

note "certificate manager and KRA never in one identity: refused here and by the database"
run_esc 2 account add both --role cert-manager,kra --kra kra2 "${AS_ADMIN[@]}" --new-password-file "$T/carol.pw" -d "$DB"
assert_out "a certificate manager is never a KRA"
run_esc 2 account add boss --role admin,cert-manager "${AS_ADMIN[@]}" --new-password-file "$T/carol.pw" -d "$DB"
assert_out "at most one of the administrator, certificate-manager and KRA roles"
if psql "$DB" -XAtq -c "INSERT INTO accounts (name, roles, password_hash, kra_id)
        VALUES ('both', '{cert-manager,kra}', '\$argon2id\$v=19\$x', (SELECT id FROM kras WHERE name = 'kra2'))" \
        >"$T/out" 2>&1; then
    fail "the database accepted an account with both the cert-manager and the kra role"
fi
assert_out "violates check constraint"

note "only an administrator creates accounts"
run_esc 51 account add mallory --role admin --user carol --password-file "$T/carol.pw" \
    --new-password-file "$T/carol.pw" -d "$DB"
assert_out "account 'carol' is not an administrator"
[ "$(psql_val "SELECT count(*) FROM accounts WHERE name = 'mallory'")" = 0 ] || fail "mallory was created"

note "a failed login does not tell whether the account exists"
P11ESCROW_PASSWORD='not-the-admin-password' run_esc 50 account add x1 --role auditor --user first \
    --new-password-file "$T/carol.pw" -d "$DB"
sed "s/'first'/'NAME'/" "$T/out" >"$T/wrong-password"
P11ESCROW_PASSWORD='not-the-admin-password' run_esc 50 account add x1 --role auditor --user nobody \
    --new-password-file "$T/carol.pw" -d "$DB"
sed "s/'nobody'/'NAME'/" "$T/out" >"$T/unknown-user"
grep -qF "authentication failed for account 'NAME'" "$T/unknown-user" || fail "unexpected message: $(cat "$T/unknown-user")"
cmp -s "$T/wrong-password" "$T/unknown-user" ||
    fail "messages differ: '$(cat "$T/wrong-password")' vs '$(cat "$T/unknown-user")'"

note "passwords: a minimum length, files private to their owner, no password option"
run_esc 2 account add shorty --role auditor "${AS_ADMIN[@]}" --new-password-file "$T/short.pw" -d "$DB"
assert_out "at least 12 characters"
chmod 0644 "$T/carol.pw"
run_esc 2 account add open --role auditor "${AS_ADMIN[@]}" --new-password-file "$T/carol.pw" -d "$DB"
chmod 0600 "$T/carol.pw"
run_esc 10 account add nopw --role auditor "${AS_ADMIN[@]}" -d "$DB"
assert_out "no password for the new account"
run_esc 2 account add x2 --role auditor --password "$ADMIN_PW" -d "$DB"
[ "$(psql_val "SELECT count(*) FROM accounts WHERE name IN ('shorty', 'open', 'nopw', 'x1', 'x2')")" = 0 ] ||
    fail "a refused account was created"

note "any authenticated account lists the accounts"
run_esc 0 account list --user audrey --password-file "$T/audrey.pw" -d "$DB"
grep -qE '^first +admin +- +no$' "$T/out" || fail "list lacks the administrator"
grep -qE '^carol +cert-manager +- +no$' "$T/out" || fail "list lacks carol"
grep -qE '^kent +kra +kra1 +no$' "$T/out" || fail "list lacks kent and his KRA"
grep -qE '^audrey +auditor +- +no$' "$T/out" || fail "list lacks audrey"

note "a disabled account cannot log in, with the same message"
run_esc 51 account disable audrey --user carol --password-file "$T/carol.pw" -d "$DB"
run_esc 0 account disable audrey "${AS_ADMIN[@]}" -d "$DB"
assert_out "account 'audrey': disabled"
run_esc 50 account list --user audrey --password-file "$T/audrey.pw" -d "$DB"
assert_out "authentication failed for account 'audrey'"
run_esc 0 account enable audrey "${AS_ADMIN[@]}" -d "$DB"
run_esc 0 account list --user audrey --password-file "$T/audrey.pw" -d "$DB"
run_esc 41 account disable first "${AS_ADMIN[@]}" -d "$DB"
assert_out "last enabled administrator"
run_esc 42 account disable nobody "${AS_ADMIN[@]}" -d "$DB"

note "passwords change: one's own, or anyone's by an administrator; never another's otherwise"
( umask 077; printf 'carol-new-password-42\n' >"$T/carol2.pw" )
run_esc 51 account passwd audrey --user carol --password-file "$T/carol.pw" --new-password-file "$T/carol2.pw" -d "$DB"
run_esc 0 account passwd --user carol --password-file "$T/carol.pw" --new-password-file "$T/carol2.pw" -d "$DB"
run_esc 50 account list --user carol --password-file "$T/carol.pw" -d "$DB"
run_esc 0 account list --user carol --password-file "$T/carol2.pw" -d "$DB"
run_esc 0 account passwd carol "${AS_ADMIN[@]}" --new-password-file "$T/carol.pw" -d "$DB"
assert_out "password reset"
note "an administrator's reset is single-use: carol may only change it"
run_esc 52 account list --user carol --password-file "$T/carol.pw" -d "$DB"
assert_out "must change its password first"
( umask 077; printf 'short\n' >"$T/short.pw" )
run_esc 2 account passwd --user carol --password-file "$T/carol.pw" --new-password-file "$T/short.pw" -d "$DB"
run_esc 2 account passwd --user carol --password-file "$T/carol.pw" --new-password-file "$T/carol.pw" -d "$DB"
assert_out "the one the administrator set"
( umask 077; printf 'carol-own-password-314\n' >"$T/carol.pw.new" )
run_esc 0 account passwd --user carol --password-file "$T/carol.pw" --new-password-file "$T/carol.pw.new" -d "$DB"
mv "$T/carol.pw.new" "$T/carol.pw"
run_esc 0 account list --user carol --password-file "$T/carol.pw" -d "$DB"

note "the database holds Argon2id hashes, never a password"
[ "$(psql_val "SELECT count(*) FROM accounts WHERE password_hash NOT LIKE '\$argon2id\$v=19\$m=65536,t=3,p=1\$%'")" = 0 ] ||
    fail "a password hash with other parameters"
pg_dump "$DB" >"$T/dump.sql" 2>"$T/out" || fail "pg_dump failed"
grep -qF 'carol' "$T/dump.sql" || fail "the dump does not hold the accounts"
for pw in "$ADMIN_PW" "$CAROL_PW" "$KENT_PW" "$AUDREY_PW"; do
    ! grep -qF -- "$pw" "$T/dump.sql" || fail "a password is in the database dump"
done
echo ok
