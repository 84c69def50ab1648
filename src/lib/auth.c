/*
 * Accounts, roles and password authentication.
 *
 * Passwords are hashed with Argon2id (libargon2) and only the encoded hash
 * is stored.  Login gives one answer for every failure — unknown name,
 * wrong password, disabled account — and verifies a dummy hash for unknown
 * names, so neither the message nor the time tells whether a name exists.
 * An account object keeps neither the password nor its hash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <argon2.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/enroll.h>

#include "audit_internal.h"
#include "auth_internal.h"
#include "internal.h"
#include "store_internal.h"

/* Argon2id parameters for new hashes (RFC 9106's second recommendation). */
#define ARGON_T 3
#define ARGON_M_KIB 65536 /* 64 MiB */
#define ARGON_P 1
#define ARGON_SALT_LEN 16
#define ARGON_HASH_LEN 32

/*
 * What a stored hash may ask for when verified: room to raise the
 * parameters later, but a doctored row cannot make us allocate gigabytes
 * or spin for minutes.
 */
#define ARGON_M_KIB_MAX (256 * 1024)
#define ARGON_T_MAX 16
#define ARGON_P_MAX 8
#define ENCODED_MAX 256

/*
 * Verified for names that do not exist (accounts, enrollment passwords), so
 * an unknown name costs the same Argon2id computation as a known one.  Made
 * once with the parameters above from a random password that was then
 * thrown away: nothing verifies against it.
 */
static const char dummy_hash[] =
	"$argon2id$v=19$m=65536,t=3,p=1$P5wmCbQEAzI6So3pfYvqow$uxgZaf3XpJFJOZd9gouMEzPOg9JW/6dmh/aJEXhH1UM";

#define NAME_MAX_LEN 64
#define ROLES_TEXT_MAX 255

#define SEPARATION_MSG                                                                                           \
	"one identity holds at most one of the administrator, certificate-manager and KRA roles (a certificate " \
	"manager is never a KRA)"

/* DESIGN §3: the three roles of a recovery are held by different identities. */
static int
separated(unsigned roles)
{
	unsigned r = roles & (ESC_ROLE_ADMIN | ESC_ROLE_CERT_MANAGER | ESC_ROLE_KRA);

	return (r & (r - 1)) == 0;
}

struct esc_account {
	long long id;
	char name[NAME_MAX_LEN + 1];
	unsigned roles;
	long long kra_id;
	int must_change;   /* logged in with a password an administrator set: may only change it */
	char pw_stamp[48]; /* accounts.password_changed_at at the password login, "" otherwise */
	char cert[65];	   /* SHA-256 (hex) of the client certificate it logged in with, "" otherwise */
};

static const struct {
	enum esc_role role;
	const char *name;
	const char *title; /* for "account 'x' is not <title>" */
} role_table[] = {
	{ESC_ROLE_ADMIN, "admin", "an administrator"},
	{ESC_ROLE_CERT_MANAGER, "cert-manager", "a certificate manager"},
	{ESC_ROLE_KRA, "kra", "a key recovery agent"},
	{ESC_ROLE_AUDITOR, "auditor", "an auditor"},
};

#define ALL_ROLES (ESC_ROLE_ADMIN | ESC_ROLE_CERT_MANAGER | ESC_ROLE_KRA | ESC_ROLE_AUDITOR)

static unsigned
role_bit(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(role_table); i++)
		if (strlen(role_table[i].name) == n && memcmp(role_table[i].name, s, n) == 0)
			return (unsigned)role_table[i].role;
	return 0;
}

/*
 * Parse n bytes of "a,b,c" (no braces).  Messages quote at most 32 bytes of
 * input.  separate: the roles of one account (DESIGN §3 applies); else a
 * set of roles as a policy names them (any combination).
 */
static enum esc_err
parse_roles(struct esc_ctx *ctx, const char *s, size_t n, int separate, unsigned *out)
{
	const char *p = s, *end = s + n, *comma;
	unsigned roles = 0, bit;
	size_t len;

	if (n == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "no role given (use admin, cert-manager, kra or auditor)");
	if (n > ROLES_TEXT_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "role list longer than %d bytes", ROLES_TEXT_MAX);
	for (;;) {
		comma = memchr(p, ',', (size_t)(end - p));
		len = (size_t)((comma != NULL ? comma : end) - p);
		if (len == 0)
			return esc_error(ctx, ESC_ERR_USAGE, "empty role name in the role list");
		if ((bit = role_bit(p, len)) == 0)
			return esc_error(ctx, ESC_ERR_USAGE,
					 "unknown role '%.*s' (use admin, cert-manager, kra or auditor)",
					 (int)(len > 32 ? 32 : len), p);
		if (!separate && (roles & bit))
			return esc_error(ctx, ESC_ERR_USAGE, "role '%.*s' is named twice", (int)len, p);
		roles |= bit;
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	if (separate && !separated(roles))
		return esc_error(ctx, ESC_ERR_USAGE, SEPARATION_MSG);
	*out = roles;
	return ESC_OK;
}

enum esc_err
esc_roles_parse(struct esc_ctx *ctx, const char *text, unsigned *roles)
{
	if (text == NULL || roles == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_roles_parse: NULL argument");
	return parse_roles(ctx, text, strnlen(text, ROLES_TEXT_MAX + 1), 1, roles);
}

enum esc_err
esc_roles_parse_set(struct esc_ctx *ctx, const char *text, unsigned *roles)
{
	size_t n;

	if (text == NULL || roles == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_roles_parse_set: NULL argument");
	if ((n = strnlen(text, ROLES_TEXT_MAX + 1)) == 0) {
		*roles = 0;
		return ESC_OK;
	}
	return parse_roles(ctx, text, n, 0, roles);
}

void
esc_roles_format(unsigned roles, char *buf, size_t len)
{
	size_t i, used = 0;
	int n;

	if (buf == NULL || len == 0)
		return;
	buf[0] = '\0';
	for (i = 0; i < ESC_ARRAY_LEN(role_table); i++) {
		if (!(roles & (unsigned)role_table[i].role))
			continue;
		n = snprintf(buf + used, len - used, "%s%s", used > 0 ? "," : "", role_table[i].name);
		if (n < 0 || (size_t)n >= len - used)
			return; /* truncated, still NUL-terminated */
		used += (size_t)n;
	}
}

/* PostgreSQL's text form of a text[] of role names: "{admin,auditor}". */
static enum esc_err
parse_pg_roles(struct esc_ctx *ctx, const char *text, unsigned *roles)
{
	size_t n = strnlen(text, ROLES_TEXT_MAX + 1);

	if (n < 2 || n > ROLES_TEXT_MAX || text[0] != '{' || text[n - 1] != '}' ||
	    parse_roles(ctx, text + 1, n - 2, 1, roles) != ESC_OK)
		return esc_error(ctx, ESC_ERR_INTERNAL, "stored roles are malformed");
	return ESC_OK;
}

static int
valid_account_name(const char *name)
{
	size_t i, n = strnlen(name, NAME_MAX_LEN + 1);

	if (n == 0 || n > NAME_MAX_LEN)
		return 0;
	for (i = 0; i < n; i++) {
		char c = name[i];

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			continue;
		if (i > 0 && (c == '.' || c == '_' || c == '-'))
			continue;
		return 0;
	}
	return 1;
}

/* A name from outside, fit for a one-line message: bounded, printable ASCII. */
static const char *
shown_name(char *buf, size_t len, const char *name)
{
	size_t i, n = strnlen(name, NAME_MAX_LEN + 1);

	if (n > NAME_MAX_LEN)
		n = NAME_MAX_LEN;
	for (i = 0; i < n && i + 4 < len; i++)
		buf[i] = (name[i] >= 0x20 && name[i] < 0x7f && name[i] != '\'') ? name[i] : '?';
	if (name[i] != '\0' && i + 4 <= len) {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

enum esc_err
esc_auth_hash_password(struct esc_ctx *ctx, const struct esc_secret *password, char **encoded)
{
	unsigned char salt[ARGON_SALT_LEN];
	char *enc = NULL;
	size_t elen;
	enum esc_err r;
	int ar;

	if (password == NULL || encoded == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_auth_hash_password: NULL argument");
	if (esc_secret_len(password) < ESC_PASSWORD_MIN)
		return esc_error(ctx, ESC_ERR_USAGE, "the password is too short: use at least %d characters",
				 ESC_PASSWORD_MIN);
	if (RAND_bytes(salt, sizeof(salt)) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot draw a random salt");
		goto out;
	}
	elen = argon2_encodedlen(ARGON_T, ARGON_M_KIB, ARGON_P, ARGON_SALT_LEN, ARGON_HASH_LEN, Argon2_id) + 1;
	if ((enc = calloc(1, elen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* The password goes to libargon2 straight from secure memory: no copy to wipe. */
	ar = argon2id_hash_encoded(ARGON_T, ARGON_M_KIB, ARGON_P, esc_secret_str(password), esc_secret_len(password),
				   salt, sizeof(salt), ARGON_HASH_LEN, enc, elen);
	if (ar != ARGON2_OK) {
		r = esc_error(ctx, ar == ARGON2_MEMORY_ALLOCATION_ERROR ? ESC_ERR_NOMEM : ESC_ERR_CRYPTO,
			      "argon2id hashing failed: %s", argon2_error_message(ar));
		goto out;
	}
	*encoded = enc;
	enc = NULL; /* transferred */
	r = ESC_OK;
out:
	OPENSSL_cleanse(salt, sizeof(salt));
	if (enc != NULL)
		OPENSSL_cleanse(enc, elen);
	free(enc);
	return r;
}

/* Read "<key>=<decimal>" at *p, at most 10 digits; advance *p past it. */
static int
read_param(const char **p, const char *key, unsigned long *val)
{
	size_t klen = strlen(key), digits = 0;
	unsigned long v = 0;

	if (strncmp(*p, key, klen) != 0)
		return 0;
	*p += klen;
	while (**p >= '0' && **p <= '9' && digits < 10) {
		v = v * 10 + (unsigned long)(**p - '0');
		(*p)++;
		digits++;
	}
	if (digits == 0 || (**p >= '0' && **p <= '9'))
		return 0;
	*val = v;
	return 1;
}

/* Is encoded an argon2id hash whose cost we are willing to pay? */
static int
acceptable_hash(const char *encoded)
{
	const char *p = encoded;
	unsigned long m, t, par;

	if (strnlen(encoded, ENCODED_MAX + 1) > ENCODED_MAX || strncmp(p, "$argon2id$v=19$", 15) != 0)
		return 0;
	p += 15;
	if (!read_param(&p, "m=", &m) || *p++ != ',' || !read_param(&p, "t=", &t) || *p++ != ',' ||
	    !read_param(&p, "p=", &par) || *p != '$')
		return 0;
	return m >= 8 && m <= ARGON_M_KIB_MAX && t >= 1 && t <= ARGON_T_MAX && par >= 1 && par <= ARGON_P_MAX;
}

enum esc_err
esc_auth_verify_password(struct esc_ctx *ctx, const char *encoded, const struct esc_secret *password)
{
	int ar;

	if (encoded == NULL || password == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_auth_verify_password: NULL argument");
	if (!acceptable_hash(encoded))
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "not an argon2id password hash within the accepted parameters");
	/* libargon2 compares the hashes in constant time. */
	ar = argon2id_verify(encoded, esc_secret_str(password), esc_secret_len(password));
	if (ar == ARGON2_OK)
		return ESC_OK;
	if (ar == ARGON2_VERIFY_MISMATCH)
		return esc_error(ctx, ESC_ERR_AUTH, "the password does not match");
	if (ar == ARGON2_MEMORY_ALLOCATION_ERROR)
		return esc_error(ctx, ESC_ERR_NOMEM, "argon2id verification: out of memory");
	return esc_error(ctx, ESC_ERR_BAD_INPUT, "argon2id verification failed: %s", argon2_error_message(ar));
}

enum esc_err
esc_auth_verify_or_dummy(struct esc_ctx *ctx, const char *encoded, const struct esc_secret *password)
{
	return esc_auth_verify_password(ctx, encoded != NULL ? encoded : dummy_hash, password);
}

/*
 * May account a (password verified) log in to the service with its
 * password?  Not if it holds a role of policy cert_login_roles: those log
 * in with a client certificate only.  Refusals are audited (auth.login).
 */
static enum esc_err
password_allowed(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *shown)
{
	char *value = NULL, roles[64], held[64], details[160];
	struct esc_audit_event ev = {shown, roles, "auth.login", shown, "refused", details};
	unsigned set = 0;
	enum esc_err r;

	r = esc_store_policy(ctx, st, "cert_login_roles", &value);
	if (r == ESC_ERR_NOT_FOUND) {
		esc_ctx_clear_error(ctx);
		return ESC_OK; /* not in the schema's policy: nothing is restricted */
	}
	if (r != ESC_OK)
		return r;
	if (esc_roles_parse_set(ctx, value, &set) != ESC_OK) {
		r = esc_error(ctx, ESC_ERR_INTERNAL, "policy cert_login_roles is malformed");
		goto out;
	}
	if ((a->roles & set) == 0) {
		r = ESC_OK;
		goto out;
	}
	esc_roles_format(a->roles, roles, sizeof(roles));
	esc_roles_format(a->roles & set, held, sizeof(held));
	snprintf(details, sizeof(details),
		 "password refused: role %s logs in with a client certificate only "
		 "(policy cert_login_roles)",
		 held);
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_error(ctx, ESC_ERR_DENIED,
		      "account '%s' holds the role %s, which logs in to the service with a TLS client certificate "
		      "only (policy cert_login_roles): a client certificate is required",
		      shown, held);
out:
	free(value);
	return r;
}

enum esc_err
esc_account_login(struct esc_ctx *ctx, struct esc_store *st, const char *name, const struct esc_secret *password,
		  struct esc_account **out)
{
	return esc_account_login_ex(ctx, st, name, password, 0, out);
}

enum esc_err
esc_account_login_ex(struct esc_ctx *ctx, struct esc_store *st, const char *name, const struct esc_secret *password,
		     unsigned flags, struct esc_account **out)
{
	struct esc_account *a = NULL;
	PGresult *res = NULL;
	const char *v[1], *hash = NULL;
	char shown[NAME_MAX_LEN + 8], roles[64];
	enum esc_err r, vr;
	int found = 0, disabled = 0, must_change = 0;

	if (st == NULL || name == NULL || password == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_login: NULL argument");
	shown_name(shown, sizeof(shown), name);
	/* A name the schema would refuse cannot exist: skip the query, not the hash. */
	if (valid_account_name(name)) {
		v[0] = name;
		if ((r = esc_store_exec(ctx, st,
					"SELECT id, roles, password_hash, kra_id, disabled, must_change_password, "
					"password_changed_at FROM accounts WHERE name = $1",
					1, v, NULL, NULL, &res)) != ESC_OK)
			goto out;
		if (PQntuples(res) == 1) {
			found = 1;
			hash = PQgetvalue(res, 0, 2);
			disabled = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
			must_change = strcmp(PQgetvalue(res, 0, 5), "t") == 0;
		}
	}
	vr = esc_auth_verify_or_dummy(ctx, hash, password);
	if (vr == ESC_ERR_NOMEM) {
		r = vr;
		goto out;
	}
	if (found && vr != ESC_OK && vr != ESC_ERR_AUTH)
		esc_log(ctx, ESC_LOG_WARN, "account '%s': the stored password hash is unusable (%s)", shown,
			esc_ctx_errmsg(ctx));
	if (!found || disabled || vr != ESC_OK) {
		r = esc_error(ctx, ESC_ERR_AUTH, "authentication failed for account '%s'", shown);
		/* The reason stays in the audit trail, not in the caller's message. */
		esc_audit_outcome(ctx, st, shown, "unknown", "auth.login", shown, r);
		(void)esc_error(ctx, ESC_ERR_AUTH, "authentication failed for account '%s'", shown);
		goto out;
	}
	if ((a = calloc(1, sizeof(*a))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	a->id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	snprintf(a->name, sizeof(a->name), "%s", name);
	if (parse_pg_roles(ctx, PQgetvalue(res, 0, 1), &a->roles) != ESC_OK) {
		r = esc_error(ctx, ESC_ERR_INTERNAL, "account '%s': stored roles are malformed", shown);
		goto out;
	}
	a->kra_id = PQgetisnull(res, 0, 3) ? 0 : strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	snprintf(a->pw_stamp, sizeof(a->pw_stamp), "%s", PQgetvalue(res, 0, 6));
	/* After the password is verified: a 403 here tells only its holder that it is right. */
	if ((flags & ESC_LOGIN_REMOTE) && (r = password_allowed(ctx, st, a, shown)) != ESC_OK)
		goto out;
	if (must_change) {
		/* The right password, set by an administrator: good for changing it, for nothing else. */
		struct esc_audit_event ev = {shown,
					     roles,
					     "auth.login",
					     shown,
					     (flags & ESC_LOGIN_PASSWORD_CHANGE) ? "ok" : "refused",
					     (flags & ESC_LOGIN_PASSWORD_CHANGE)
						     ? "password change required: logged in to change it"
						     : "password change required"};

		esc_roles_format(a->roles, roles, sizeof(roles));
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
		if (!(flags & ESC_LOGIN_PASSWORD_CHANGE)) {
			r = esc_error(ctx, ESC_ERR_PASSWORD_CHANGE,
				      "account '%s' must change its password first: an administrator set it "
				      "('p11escrow account passwd --user %s', or POST /api/v1/account/password)",
				      shown, shown);
			goto out;
		}
		a->must_change = 1;
	}
	*out = a;
	a = NULL; /* transferred */
	r = ESC_OK;
out:
	/* The hash is not the password, but it is what an offline guesser wants. */
	if (found)
		OPENSSL_cleanse(PQgetvalue(res, 0, 2), (size_t)PQgetlength(res, 0, 2));
	PQclear(res);
	esc_account_free(a);
	return r;
}

enum esc_err
esc_account_make(struct esc_ctx *ctx, long long id, const char *name, const char *pg_roles, long long kra_id,
		 struct esc_account **out)
{
	struct esc_account *a;

	if ((a = calloc(1, sizeof(*a))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	a->id = id;
	snprintf(a->name, sizeof(a->name), "%s", name);
	a->kra_id = kra_id;
	if (parse_pg_roles(ctx, pg_roles, &a->roles) != ESC_OK) {
		free(a);
		return esc_error(ctx, ESC_ERR_INTERNAL, "account '%.64s': stored roles are malformed", name);
	}
	*out = a;
	return ESC_OK;
}

static enum esc_err recheck_admin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor);

const char *
esc_account_pw_stamp(const struct esc_account *a)
{
	return a != NULL ? a->pw_stamp : "";
}

const char *
esc_account_cert_sha256(const struct esc_account *a)
{
	return a != NULL ? a->cert : "";
}

void
esc_account_set_cert(struct esc_account *a, const char *sha256)
{
	snprintf(a->cert, sizeof(a->cert), "%s", sha256);
}

enum esc_err
esc_account_recheck_admin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor)
{
	return recheck_admin(ctx, st, actor);
}

int
esc_account_must_change(const struct esc_account *a)
{
	return a != NULL && a->must_change;
}

enum esc_err
esc_account_admin_exists(struct esc_ctx *ctx, struct esc_store *st, int *yes)
{
	PGresult *res = NULL;
	enum esc_err r;

	/* Disabled administrators count: the actor-less path is for the very first one only. */
	if ((r = esc_store_exec(ctx, st, "SELECT EXISTS (SELECT 1 FROM accounts WHERE 'admin' = ANY (roles))", 0, NULL,
				NULL, NULL, &res)) != ESC_OK)
		return r;
	*yes = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return ESC_OK;
}

/* Inside the transaction: is actor still an enabled administrator, as it was at login? */
static enum esc_err
recheck_admin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor)
{
	PGresult *res = NULL;
	char id[32];
	const char *v[1] = {id};
	unsigned roles = 0;
	enum esc_err r;

	snprintf(id, sizeof(id), "%lld", actor->id);
	if ((r = esc_store_exec(ctx, st, "SELECT roles FROM accounts WHERE id = $1 AND NOT disabled", 1, v, NULL, NULL,
				&res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || parse_pg_roles(ctx, PQgetvalue(res, 0, 0), &roles) != ESC_OK ||
	    !(roles & ESC_ROLE_ADMIN))
		r = esc_error(ctx, ESC_ERR_DENIED, "account '%s' is no longer an enabled administrator", actor->name);
	PQclear(res);
	return r;
}

/* The id of the active KRA kra_name, refused if an account is already bound to it. */
static enum esc_err
free_kra(struct esc_ctx *ctx, struct esc_store *st, const char *kra_name, char *id, size_t idlen)
{
	PGresult *res = NULL;
	const char *v[1] = {kra_name};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT id FROM kras WHERE name = $1 AND state = 'active'", 1, v, NULL, NULL,
				&res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no active KRA named '%.64s' (see 'p11escrow kra list')",
			      kra_name);
		goto out;
	}
	snprintf(id, idlen, "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	res = NULL;
	v[0] = id;
	if ((r = esc_store_exec(ctx, st, "SELECT name FROM accounts WHERE kra_id = $1", 1, v, NULL, NULL, &res)) !=
	    ESC_OK)
		goto out;
	if (PQntuples(res) > 0)
		r = esc_error(ctx, ESC_ERR_EXISTS, "KRA '%.64s' is already bound to account '%s'", kra_name,
			      PQgetvalue(res, 0, 0));
out:
	PQclear(res);
	return r;
}

static enum esc_err
create_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	    unsigned roles, const char *kra_name, const struct esc_secret *password)
{
	PGresult *res = NULL;
	char *hash = NULL, shown[NAME_MAX_LEN + 8], list[64], array[72], kra_id[32];
	const char *v[4];
	enum esc_err r;
	int admin_exists = 0;

	if (st == NULL || name == NULL || password == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_create: NULL argument");
	/* The name as messages and the audit event show it (the success event too). */
	shown_name(shown, sizeof(shown), name);
	if (actor != NULL && (r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		return r;
	if (!valid_account_name(name))
		return esc_error(ctx, ESC_ERR_USAGE,
				 "invalid account name '%s': 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a "
				 "letter or digit",
				 shown);
	if (roles == 0 || (roles & ~(unsigned)ALL_ROLES) != 0)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "an account needs one or more of the roles admin, cert-manager, "
				 "kra and auditor");
	if (!separated(roles))
		return esc_error(ctx, ESC_ERR_USAGE, SEPARATION_MSG);
	if ((roles & ESC_ROLE_KRA) && (kra_name == NULL || *kra_name == '\0'))
		return esc_error(ctx, ESC_ERR_USAGE, "an account with the kra role must be bound to a registered KRA");
	if (!(roles & ESC_ROLE_KRA) && kra_name != NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "only an account with the kra role is bound to a KRA");
	if (actor == NULL && !(roles & ESC_ROLE_ADMIN))
		return esc_error(ctx, ESC_ERR_DENIED,
				 "no administrator exists yet: the first account must have the admin role");
	/* Slow on purpose: before the transaction, so it holds no snapshot meanwhile. */
	if ((r = esc_auth_hash_password(ctx, password, &hash)) != ESC_OK)
		return r;

	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		goto out;
	/*
	 * SERIALIZABLE: two concurrent "first administrator" calls cannot both
	 * see an empty table and both insert; one of them fails to commit.
	 */
	if (actor == NULL) {
		if ((r = esc_account_admin_exists(ctx, st, &admin_exists)) != ESC_OK)
			goto out;
		if (admin_exists) {
			r = esc_error(ctx, ESC_ERR_DENIED,
				      "an administrator exists: only an administrator can create accounts");
			goto out;
		}
	} else if ((r = recheck_admin(ctx, st, actor)) != ESC_OK)
		goto out;
	v[0] = name;
	if ((r = esc_store_exec(ctx, st, "SELECT 1 FROM accounts WHERE name = $1", 1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) > 0) {
		r = esc_error(ctx, ESC_ERR_EXISTS, "account '%s' already exists", name);
		goto out;
	}
	if ((roles & ESC_ROLE_KRA) && (r = free_kra(ctx, st, kra_name, kra_id, sizeof(kra_id))) != ESC_OK)
		goto out;
	/* A text[] parameter value built from the fixed role names only. */
	esc_roles_format(roles, list, sizeof(list));
	snprintf(array, sizeof(array), "{%s}", list);
	v[1] = array;
	v[2] = hash;
	v[3] = (roles & ESC_ROLE_KRA) ? kra_id : NULL;
	if ((r = esc_store_exec(ctx, st,
				"INSERT INTO accounts (name, roles, password_hash, kra_id) "
				"VALUES ($1, $2::text[], $3, $4::bigint)",
				4, v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	{
		char actor_roles[64] = "none", details[128];
		struct esc_audit_event ev = {
			actor ? actor->name : "setup", actor_roles, "account.create", shown, "ok", details};

		if (actor != NULL)
			esc_roles_format(actor->roles, actor_roles, sizeof(actor_roles));
		snprintf(details, sizeof(details), "roles %s%s%s", list, kra_name ? ", KRA " : "",
			 kra_name ? kra_id : "");
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	if (hash != NULL)
		OPENSSL_cleanse(hash, strlen(hash));
	free(hash);
	return r;
}

enum esc_err
esc_account_create(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
		   unsigned roles, const char *kra_name, const struct esc_secret *password)
{
	char shown[NAME_MAX_LEN + 8];
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = create_impl(ctx, st, actor, name, roles, kra_name, password);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		shown_name(shown, sizeof(shown), name ? name : "");
		if (actor != NULL)
			esc_audit_outcome_by(ctx, st, actor, "account.create", shown, r);
		else
			esc_audit_outcome(ctx, st, "setup", "none", "account.create", shown, r);
	}
	return r;
}

enum esc_err
esc_account_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
		 struct esc_account_info **out, size_t *n)
{
	struct esc_account_info *list = NULL;
	PGresult *res = NULL;
	enum esc_err r;
	int i, rows;

	if (actor == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "listing accounts needs an authenticated account");
	if ((r = esc_store_exec(ctx, st,
				"SELECT a.id, a.name, a.roles, coalesce(k.name, ''), a.disabled, coalesce((SELECT "
				"string_agg(s.kind || ' ' || s.value, ', ' ORDER BY s.kind DESC, lower(s.value)) FROM "
				"manager_scopes s WHERE s.account_id = a.id), '') FROM accounts a LEFT JOIN kras k ON "
				"k.id = a.kra_id ORDER BY a.id",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if ((list = calloc((size_t)rows + 1, sizeof(*list))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		list[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		snprintf(list[i].name, sizeof(list[i].name), "%s", PQgetvalue(res, i, 1));
		if (parse_pg_roles(ctx, PQgetvalue(res, i, 2), &list[i].roles) != ESC_OK) {
			r = esc_error(ctx, ESC_ERR_INTERNAL, "account '%s': stored roles are malformed", list[i].name);
			goto out;
		}
		snprintf(list[i].kra_name, sizeof(list[i].kra_name), "%s", PQgetvalue(res, i, 3));
		list[i].disabled = strcmp(PQgetvalue(res, i, 4), "t") == 0;
		snprintf(list[i].scope, sizeof(list[i].scope), "%s", PQgetvalue(res, i, 5));
	}
	*out = list;
	*n = (size_t)rows;
	list = NULL; /* transferred */
	r = ESC_OK;
out:
	free(list);
	PQclear(res);
	return r;
}

long long
esc_account_id(const struct esc_account *a)
{
	return a != NULL ? a->id : 0;
}

const char *
esc_account_name(const struct esc_account *a)
{
	return a != NULL ? a->name : "";
}

unsigned
esc_account_roles(const struct esc_account *a)
{
	return a != NULL ? a->roles : 0;
}

long long
esc_account_kra_id(const struct esc_account *a)
{
	return a != NULL ? a->kra_id : 0;
}

int
esc_account_has_role(const struct esc_account *a, enum esc_role role)
{
	/* Logged in only to change a password an administrator set: no role until it has. */
	return a != NULL && !a->must_change && (a->roles & (unsigned)role) != 0;
}

enum esc_err
esc_account_require(struct esc_ctx *ctx, const struct esc_account *a, enum esc_role role)
{
	const char *title = "permitted";
	size_t i;

	if (esc_account_has_role(a, role))
		return ESC_OK;
	for (i = 0; i < ESC_ARRAY_LEN(role_table); i++)
		if (role_table[i].role == role)
			title = role_table[i].title;
	if (a == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "not logged in: this needs %s", title);
	return esc_error(ctx, ESC_ERR_DENIED, "account '%s' is not %s", a->name, title);
}

void
esc_account_free(struct esc_account *a)
{
	/* Holds no secret: the password and its hash are never kept. */
	free(a);
}

static enum esc_err
disabled_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	      int disabled)
{
	PGresult *res = NULL;
	const char *v[2] = {name, disabled ? "true" : "false"};
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		return r;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	/* Lock every administrator row: two concurrent disables cannot both pass the check. */
	if ((r = recheck_admin(ctx, st, actor)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st, "SELECT id FROM accounts WHERE 'admin' = ANY (roles) FOR UPDATE", 0, NULL,
				NULL, NULL, NULL)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st, "UPDATE accounts SET disabled = $2::boolean WHERE name = $1 RETURNING id", 2,
				v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	/* Its sessions end with it (the service also checks accounts.disabled at every use). */
	if (disabled) {
		const char *id[1] = {PQgetvalue(res, 0, 0)};

		if ((r = esc_store_exec(ctx, st,
					"UPDATE sessions SET ended_at = now(), end_reason = 'account disabled' "
					"WHERE account_id = $1 AND ended_at IS NULL",
					1, id, NULL, NULL, NULL)) != ESC_OK)
			goto out;
	}
	PQclear(res);
	res = NULL;
	if ((r = esc_store_exec(ctx, st, "SELECT count(*) FROM accounts WHERE 'admin' = ANY (roles) AND NOT disabled",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "'%.64s' is the last enabled administrator: nothing was changed",
			      name);
		goto out;
	}
	{
		char roles[64];
		struct esc_audit_event ev = {actor->name, roles, disabled ? "account.disable" : "account.enable",
					     name,	  "ok",	 ""};

		esc_roles_format(actor->roles, roles, sizeof(roles));
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_account_set_disabled(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
			 int disabled)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = disabled_impl(ctx, st, actor, name, disabled);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, disabled ? "account.disable" : "account.enable", name, r);
	return r;
}

/* The stored hash of account name and whether it must be changed, read before the slow checks.  *hash: caller frees (wipe). */
static enum esc_err
read_password(struct esc_ctx *ctx, struct esc_store *st, const char *name, char **hash, int *must_change)
{
	PGresult *res = NULL;
	const char *v[1] = {name};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT password_hash, must_change_password FROM accounts WHERE name = $1", 1,
				v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	if ((*hash = strdup(PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	*must_change = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	r = ESC_OK;
out:
	if (PQntuples(res) == 1)
		OPENSSL_cleanse(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
	PQclear(res);
	return r;
}

/*
 * One transaction: the new hash, the must-change flag (reset: set; else
 * cleared), every session of the account ended, the audit event.  seen: the
 * hash the slow checks before ran against; if it is no longer the stored
 * one, nothing changes (STATE).
 */
static enum esc_err
passwd_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	    const char *hash, const char *seen, int reset)
{
	PGresult *res = NULL;
	char id[32], roles[64], details[160];
	const char *v[3];
	struct esc_audit_event ev = {actor->name, roles, "account.passwd", name, "ok", details};
	enum esc_err r;
	int same;

	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if (reset && (r = recheck_admin(ctx, st, actor)) != ESC_OK)
		goto out;
	v[0] = name;
	if ((r = esc_store_exec(ctx, st, "SELECT id, password_hash FROM accounts WHERE name = $1 FOR UPDATE", 1, v,
				NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
	same = seen == NULL || strcmp(seen, PQgetvalue(res, 0, 1)) == 0;
	OPENSSL_cleanse(PQgetvalue(res, 0, 1), (size_t)PQgetlength(res, 0, 1));
	PQclear(res);
	res = NULL;
	if (!same) {
		r = esc_error(ctx, ESC_ERR_STATE, "the password of '%.64s' changed meanwhile: nothing was changed",
			      name);
		goto out;
	}
	v[0] = id;
	v[1] = hash;
	v[2] = reset ? "true" : "false";
	/* clock_timestamp(): later than the start of any session opened before this commits. */
	if ((r = esc_store_exec(ctx, st,
				"UPDATE accounts SET password_hash = $2, must_change_password = $3::boolean, "
				"password_changed_at = clock_timestamp() WHERE id = $1",
				3, v, NULL, NULL, NULL)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"UPDATE sessions SET ended_at = now(), end_reason = 'password changed' "
				"WHERE account_id = $1 AND ended_at IS NULL",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	snprintf(details, sizeof(details), "%s; %s session(s) ended",
		 reset ? "reset by administrator: to be changed at the next login" : "changed by self",
		 PQcmdTuples(res));
	esc_roles_format(actor->roles, roles, sizeof(roles));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

/*
 * Set name's password to password: the checks, then passwd_impl in the
 * retry loop.  current: verify it first (esc_account_change_password).
 */
static enum esc_err
set_password(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	     const struct esc_secret *current, const struct esc_secret *password)
{
	struct esc_store_retry t = {0};
	char *hash = NULL, *stored = NULL, shown[NAME_MAX_LEN + 8];
	enum esc_err r, vr;
	int self, must_change = 0;

	if (actor == NULL || st == NULL || name == NULL || password == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "only the account itself or an administrator sets its password");
	shown_name(shown, sizeof(shown), name);
	self = strcmp(actor->name, name) == 0;
	/* has_role is false while the actor must change its own password: then it sets no other. */
	if (!self && !esc_account_has_role(actor, ESC_ROLE_ADMIN)) {
		r = esc_error(ctx, ESC_ERR_DENIED, "only the account itself or an administrator sets its password");
		goto out;
	}
	if ((r = esc_auth_hash_password(ctx, password, &hash)) != ESC_OK ||
	    (r = read_password(ctx, st, shown, &stored, &must_change)) != ESC_OK)
		goto out;
	/* Slow checks, before the transaction (no snapshot held meanwhile). */
	if (current != NULL) {
		vr = esc_auth_verify_password(ctx, stored, current);
		if (vr != ESC_OK) {
			r = vr == ESC_ERR_NOMEM
				    ? vr
				    : esc_error(ctx, ESC_ERR_AUTH, "the current password of '%s' is not right", shown);
			goto out;
		}
	}
	if (self && must_change) {
		/* Keeping the administrator's password would leave it known to the administrator. */
		vr = esc_auth_verify_password(ctx, stored, password);
		if (vr == ESC_OK) {
			r = esc_error(ctx, ESC_ERR_USAGE,
				      "choose a new password: this is the one the administrator set");
			goto out;
		}
		if (vr == ESC_ERR_NOMEM) {
			r = vr;
			goto out;
		}
	}
	do
		r = passwd_impl(ctx, st, actor, shown, hash, stored, !self);
	while (esc_store_retry(ctx, st, &t, &r));
out:
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "account.passwd", shown, r);
	if (hash != NULL)
		OPENSSL_cleanse(hash, strlen(hash));
	if (stored != NULL)
		OPENSSL_cleanse(stored, strlen(stored));
	free(hash);
	free(stored);
	return r;
}

enum esc_err
esc_account_set_password(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
			 const struct esc_secret *password)
{
	return set_password(ctx, st, actor, name, NULL, password);
}

enum esc_err
esc_account_change_password(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			    const struct esc_secret *current, const struct esc_secret *password)
{
	if (actor == NULL || current == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "changing a password needs the account and its current password");
	return set_password(ctx, st, actor, actor->name, current, password);
}

/* ---- Certificate managers' scopes ------------------------------------------------------------------------ */

/* A scope value: 1..ESC_SCOPE_VALUE_MAX printable characters (UTF-8 allowed), none of them control characters. */
static int
valid_scope_value(const char *v)
{
	size_t i, n = strnlen(v, ESC_SCOPE_VALUE_MAX + 1);

	if (n == 0 || n > ESC_SCOPE_VALUE_MAX)
		return 0;
	for (i = 0; i < n; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
			return 0;
	return 1;
}

/* Check one kind of scope values; profiles must name an archival profile or "imported". */
static enum esc_err
check_scope_values(struct esc_ctx *ctx, const char *kind, const char *const *vals, size_t n)
{
	const struct esc_profile *p;
	size_t i, j;

	if (n > ESC_SCOPE_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a scope holds at most %d %ss", ESC_SCOPE_MAX, kind);
	for (i = 0; i < n; i++) {
		if (vals[i] == NULL || !valid_scope_value(vals[i]))
			return esc_error(ctx, ESC_ERR_USAGE,
					 "a %s in a scope has 1 to %d characters, no control characters", kind,
					 ESC_SCOPE_VALUE_MAX);
		if (kind[0] == 'p' && strcmp(vals[i], ESC_SCOPE_PROFILE_IMPORTED) != 0) {
			if ((p = esc_profile_find(vals[i])) == NULL || strcmp(p->name, vals[i]) != 0)
				return esc_error(
					ctx, ESC_ERR_USAGE,
					"unknown profile '%.64s' (see 'p11escrow profile list'; '" ESC_SCOPE_PROFILE_IMPORTED
					"' stands for records archived without one)",
					vals[i]);
			if (!p->archival)
				return esc_error(
					ctx, ESC_ERR_USAGE,
					"profile '%s' never archives keys: a scope of it would match no record",
					p->name);
		}
		for (j = 0; j < i; j++)
			if (kind[0] == 'p' ? strcmp(vals[i], vals[j]) == 0 : strcasecmp(vals[i], vals[j]) == 0)
				return esc_error(ctx, ESC_ERR_USAGE, "%s '%.64s' is given twice", kind, vals[i]);
	}
	return ESC_OK;
}

static enum esc_err
scope_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	   const char *const *profiles, size_t np, const char *const *groups, size_t ng, char *details, size_t dlen)
{
	PGresult *res = NULL;
	char id[24], roles[64];
	const char *v[4];
	unsigned target_roles = 0;
	struct esc_audit_event ev = {NULL, roles, "account.scope", name, "ok", details};
	enum esc_err r;
	size_t i, used;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK ||
	    (r = check_scope_values(ctx, "profile", profiles, np)) != ESC_OK ||
	    (r = check_scope_values(ctx, "group", groups, ng)) != ESC_OK)
		return r;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = recheck_admin(ctx, st, actor)) != ESC_OK)
		goto out;
	v[0] = name;
	if ((r = esc_store_exec(ctx, st, "SELECT id, roles FROM accounts WHERE name = $1 FOR UPDATE", 1, v, NULL, NULL,
				&res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
	if ((r = parse_pg_roles(ctx, PQgetvalue(res, 0, 1), &target_roles)) != ESC_OK)
		goto out;
	if ((np > 0 || ng > 0) && !(target_roles & ESC_ROLE_CERT_MANAGER)) {
		r = esc_error(ctx, ESC_ERR_USAGE,
			      "account '%.64s' is not a certificate manager: only they have a scope", name);
		goto out;
	}
	v[0] = id;
	if ((r = esc_store_exec(ctx, st, "DELETE FROM manager_scopes WHERE account_id = $1", 1, v, NULL, NULL, NULL)) !=
	    ESC_OK)
		goto out;
	v[3] = actor->name;
	for (i = 0; i < np + ng; i++) {
		v[1] = i < np ? "profile" : "group";
		v[2] = i < np ? profiles[i] : groups[i - np];
		if ((r = esc_store_exec(
			     ctx, st,
			     "INSERT INTO manager_scopes (account_id, kind, value, created_by) VALUES ($1, $2, $3, "
			     "$4)",
			     4, v, NULL, NULL, NULL)) != ESC_OK)
			goto out;
	}
	/* The details name the whole new scope (values are bounded: at most 2 x 16 x 64 characters, cut here). */
	if (np == 0 && ng == 0)
		snprintf(details, dlen, "unscoped: every record");
	else {
		snprintf(details, dlen, "profiles:");
		for (i = 0; i < np; i++) {
			used = strlen(details);
			snprintf(details + used, dlen - used, "%s%s", i ? "," : " ", profiles[i]);
		}
		used = strlen(details);
		snprintf(details + used, dlen - used, "%s; groups:", np ? "" : " any");
		for (i = 0; i < ng; i++) {
			used = strlen(details);
			snprintf(details + used, dlen - used, "%s%s", i ? "," : " ", groups[i]);
		}
		if (ng == 0) {
			used = strlen(details);
			snprintf(details + used, dlen - used, " any");
		}
	}
	ev.actor = actor->name;
	esc_roles_format(actor->roles, roles, sizeof(roles));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_account_set_scope(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
		      const char *const *profiles, size_t nprofiles, const char *const *groups, size_t ngroups)
{
	char shown[NAME_MAX_LEN + 8], details[512] = "";
	struct esc_store_retry t = {0};
	enum esc_err r;

	if (st == NULL || name == NULL || (nprofiles > 0 && profiles == NULL) || (ngroups > 0 && groups == NULL))
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_set_scope: NULL argument");
	shown_name(shown, sizeof(shown), name);
	do
		r = scope_impl(ctx, st, actor, shown, profiles, nprofiles, groups, ngroups, details, sizeof(details));
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "account.scope", shown, r);
	return r;
}

enum esc_err
esc_account_get_scope(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
		      struct esc_scope_item **out, size_t *n)
{
	struct esc_scope_item *items = NULL;
	PGresult *res = NULL;
	const char *v[1] = {name};
	enum esc_err r;
	size_t count = 0;
	int i, rows;

	if (actor == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "reading a scope needs an authenticated account");
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT s.kind, s.value FROM accounts a LEFT JOIN manager_scopes s ON s.account_id = a.id "
		     "WHERE a.name = $1 ORDER BY s.kind DESC, lower(s.value)",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if ((rows = PQntuples(res)) == 0) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	if ((items = calloc((size_t)rows + 1, sizeof(*items))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		if (PQgetisnull(res, i, 0))
			continue; /* the account's row, without a scope */
		snprintf(items[count].kind, sizeof(items[count].kind), "%s", PQgetvalue(res, i, 0));
		snprintf(items[count].value, sizeof(items[count].value), "%s", PQgetvalue(res, i, 1));
		count++;
	}
	*out = items;
	*n = count;
	items = NULL; /* transferred */
	r = ESC_OK;
out:
	free(items);
	PQclear(res);
	return r;
}

/*
 * ---- The audit trail on behalf of an account ------------------------------
 *
 * audit.c knows actors only as strings and has no role checks: these
 * wrappers (names kept from when audit.c held them) turn an account into
 * its name and roles, and check who may read the trail or ask for a
 * checkpoint.  auth -> audit is the layering's direction, never back.
 */

void
esc_audit_outcome_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *action,
		     const char *object, enum esc_err r)
{
	char roles[64] = "none";

	if (a != NULL)
		esc_roles_format(esc_account_roles(a), roles, sizeof(roles));
	esc_audit_outcome(ctx, st, a ? esc_account_name(a) : "unknown", roles, action, object, r);
}

enum esc_err
esc_audit_checkpoint_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			struct esc_token *ca_tok, long long *event_id)
{
	enum esc_err r;

	if (actor == NULL ||
	    (!esc_account_has_role(actor, ESC_ROLE_ADMIN) && !esc_account_has_role(actor, ESC_ROLE_AUDITOR))) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "account '%s' is neither an administrator nor an auditor: it cannot have the audit trail "
			      "checkpointed",
			      actor ? esc_account_name(actor) : "unknown");
		esc_audit_outcome_by(ctx, st, actor, "audit.checkpoint", "chain", r);
		return r;
	}
	return esc_audit_checkpoint(ctx, st, ca_tok, event_id);
}

enum esc_err
esc_audit_search(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
		 const struct esc_audit_filter *f, struct esc_audit_row **out, size_t *n)
{
	/* As every role check: an account that must first change its password has no role yet. */
	if (!esc_account_has_role(reader, ESC_ROLE_AUDITOR) && !esc_account_has_role(reader, ESC_ROLE_ADMIN))
		return esc_error(ctx, ESC_ERR_DENIED, "account '%s' may not read the audit trail",
				 reader ? esc_account_name(reader) : "(none)");
	return esc_audit_query(ctx, st, f, out, n);
}

/* May reader read the audit trail (auditor or administrator)?  DENIED with the reason, else OK. */
static enum esc_err
audit_reader(struct esc_ctx *ctx, const struct esc_account *reader)
{
	if (!esc_account_has_role(reader, ESC_ROLE_AUDITOR) && !esc_account_has_role(reader, ESC_ROLE_ADMIN))
		return esc_error(ctx, ESC_ERR_DENIED, "account '%s' may not read the audit trail",
				 reader ? esc_account_name(reader) : "(none)");
	return ESC_OK;
}

enum esc_err
esc_audit_verify_checkpoint_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
			       const char *checkpoint, size_t len, struct esc_audit_anchor *a)
{
	enum esc_err r;

	if ((r = audit_reader(ctx, reader)) == ESC_OK)
		r = esc_audit_verify_checkpoint(ctx, st, checkpoint, len, a);
	/* The verification itself is an event, after what it checked. */
	esc_audit_outcome_by(ctx, st, reader, "audit.verify", "exported checkpoint", r);
	return r;
}

enum esc_err
esc_audit_checkpoint_export_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
			       long long event_id, char **out, struct esc_audit_anchor *a)
{
	enum esc_err r;

	if ((r = audit_reader(ctx, reader)) != ESC_OK)
		return r;
	return esc_audit_checkpoint_export(ctx, st, event_id, 1, out, a);
}

enum esc_err
esc_audit_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader, const char *since,
	       const char *until, const char *actor, const char *action, const char *object, size_t limit,
	       struct esc_audit_row **out, size_t *n)
{
	struct esc_audit_filter f = {since, until, actor, action, object, NULL, limit};

	return esc_audit_search(ctx, st, reader, &f, out, n);
}
