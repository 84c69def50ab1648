/*
 * p11escrow — accounts, roles and authentication.
 *
 * Roles: administrator, certificate manager, key recovery agent (bound to
 * one registered KRA), auditor.  One account never holds both the
 * certificate-manager and the KRA role (enforced here and by a database
 * CHECK).  Passwords are hashed with Argon2id (libargon2) and never stored
 * or logged in clear.
 */
#ifndef P11ESCROW_AUTH_H
#define P11ESCROW_AUTH_H

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>

enum esc_role {
	ESC_ROLE_ADMIN = 1 << 0,
	ESC_ROLE_CERT_MANAGER = 1 << 1,
	ESC_ROLE_KRA = 1 << 2,
	ESC_ROLE_AUDITOR = 1 << 3,
};

#define ESC_PASSWORD_MIN 12

struct esc_account;

/* Parse "admin,auditor" style role lists.  Errors: USAGE (unknown role, cert-manager+kra). */
enum esc_err esc_roles_parse(struct esc_ctx *ctx, const char *text, unsigned *roles) ESC_MUST_CHECK;
/* "admin,cert-manager" for a role set, into the caller's buffer (len >= 64). */
void esc_roles_format(unsigned roles, char *buf, size_t len);

/* Argon2id-encoded hash of a password.  Caller frees.  Errors: USAGE (too short), NOMEM, CRYPTO. */
enum esc_err esc_auth_hash_password(struct esc_ctx *ctx, const struct esc_secret *password, char **encoded)
	ESC_MUST_CHECK;
/* ESC_OK if password matches encoded, ESC_ERR_AUTH if not. */
enum esc_err esc_auth_verify_password(struct esc_ctx *ctx, const char *encoded, const struct esc_secret *password)
	ESC_MUST_CHECK;

/*
 * Authenticate name with password.  Unknown name, wrong password and a
 * disabled account all give the same ESC_ERR_AUTH message, and take the
 * same time (a dummy hash is verified for unknown names).
 */
enum esc_err esc_account_login(struct esc_ctx *ctx, struct esc_store *st, const char *name,
			       const struct esc_secret *password, struct esc_account **out) ESC_MUST_CHECK;

/*
 * esc_account_login's answer for the right password of an account whose
 * password an administrator set (reset) and that has not changed it since:
 * ESC_ERR_PASSWORD_CHANGE, audited (auth.login refused, "password change
 * required").  With ESC_LOGIN_PASSWORD_CHANGE in flags the login succeeds
 * instead (audited as auth.login ok with the same words), for the one thing
 * such an account may do: change its own password (esc_account_set_password
 * on itself, esc_account_change_password).  esc_account_must_change then
 * says so; such an account acts in no role until it has.
 */
#define ESC_LOGIN_PASSWORD_CHANGE 1u
enum esc_err esc_account_login_ex(struct esc_ctx *ctx, struct esc_store *st, const char *name,
				  const struct esc_secret *password, unsigned flags, struct esc_account **out)
	ESC_MUST_CHECK;
/* Did a's login find a password it must change (esc_account_login_ex)? */
int esc_account_must_change(const struct esc_account *a);

/*
 * Create an account.  actor must be an administrator — or NULL, which is
 * allowed only while no administrator exists (the first one, at setup).
 * kra_name: the registered, active KRA a KRA account is bound to (required
 * iff roles has ESC_ROLE_KRA).  Errors: DENIED, USAGE, EXISTS, NOT_FOUND
 * (no such KRA), DB.
 */
enum esc_err esc_account_create(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				const char *name, unsigned roles, const char *kra_name,
				const struct esc_secret *password) ESC_MUST_CHECK;

/* Does any administrator exist?  Errors: DB. */
enum esc_err esc_account_admin_exists(struct esc_ctx *ctx, struct esc_store *st, int *yes) ESC_MUST_CHECK;

long long esc_account_id(const struct esc_account *a);
const char *esc_account_name(const struct esc_account *a);
unsigned esc_account_roles(const struct esc_account *a);
/* The KRA id bound to a KRA account, 0 otherwise. */
long long esc_account_kra_id(const struct esc_account *a);
int esc_account_has_role(const struct esc_account *a, enum esc_role role);
/* Fail with ESC_ERR_DENIED ("account 'x' is not a certificate manager") unless a has role. */
enum esc_err esc_account_require(struct esc_ctx *ctx, const struct esc_account *a, enum esc_role role)
	ESC_MUST_CHECK;
void esc_account_free(struct esc_account *a);

/*
 * Disable or re-enable account name.  actor must be an administrator; the
 * last enabled administrator cannot be disabled.  A disabled account cannot
 * log in, and disabling it ends its sessions (same transaction).  Errors: DENIED, NOT_FOUND, STATE, DB.
 */
enum esc_err esc_account_set_disabled(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				      const char *name, int disabled) ESC_MUST_CHECK;

/*
 * Set account name's password.  actor must be that account or an
 * administrator.  An administrator setting another account's password
 * resets it: that account must change it at its next login (see
 * esc_account_login_ex).  The account itself changing it clears that; a
 * password it must change cannot be "changed" to itself.  Either way every
 * session of the account ends, in the transaction of the change and of its
 * audit event (account.passwd, "reset by administrator" / "changed by
 * self").  An actor that must change its own password sets no other.
 * Errors: DENIED, NOT_FOUND, USAGE (too short, the same as the reset one),
 * STATE (changed meanwhile), DB, BUSY.
 */
enum esc_err esc_account_set_password(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				      const char *name, const struct esc_secret *password) ESC_MUST_CHECK;

/*
 * actor's own password changed, after current is verified against the
 * stored one (the JSON API's POST /account/password, where the caller may
 * hold only a session).  As esc_account_set_password on itself otherwise.
 * A wrong current password: ESC_ERR_AUTH, audited.  Errors: AUTH, and those
 * of esc_account_set_password.
 */
enum esc_err esc_account_change_password(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
					 const struct esc_secret *current, const struct esc_secret *password)
	ESC_MUST_CHECK;

struct esc_account_info {
	long long id;
	char name[65];
	unsigned roles;
	char kra_name[65]; /* "" unless bound to a KRA */
	int disabled;
	char scope[512];   /* "" if unscoped, else e.g. "profile encryption, group Sales" (may be cut short) */
};

/* Every account (for any authenticated actor).  *out is malloc'ed; caller frees.  Errors: DENIED, DB. */
enum esc_err esc_account_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			      struct esc_account_info **out, size_t *n) ESC_MUST_CHECK;

/* ---- Certificate managers' scopes ------------------------------------------------------------------------ */

#define ESC_SCOPE_MAX 16       /* profiles, and groups, per account */
#define ESC_SCOPE_VALUE_MAX 64 /* characters of one profile or group */
/* The profile of an archive record without one (manual archival, foreign certificates). */
#define ESC_SCOPE_PROFILE_IMPORTED "imported"

/*
 * Set the scope of certificate-manager account name, replacing any earlier
 * one.  A scoped manager searches, requests recovery of and approves only
 * records in scope: the record's profile is one of profiles (if any are
 * given) AND one of the record's groups — the O and OU values of its
 * subject, compared without regard to case — is one of groups (if any are
 * given).  A record issued by this CA has the profile it was issued under;
 * any other record has the profile "imported".  Profiles must be archival
 * profiles or "imported".  No profiles and no groups: unscoped again (every
 * record, as an account never scoped).  actor must be an enabled
 * administrator.  Audited (account.scope, refusals included).
 * Errors: DENIED, NOT_FOUND (no such account), USAGE (not a certificate
 * manager, unknown or non-archival profile, bad or repeated value, more
 * than ESC_SCOPE_MAX), DB.
 */
enum esc_err esc_account_set_scope(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				   const char *name, const char *const *profiles, size_t nprofiles,
				   const char *const *groups, size_t ngroups) ESC_MUST_CHECK;

struct esc_scope_item {
	char kind[8]; /* "profile" or "group" */
	char value[ESC_SCOPE_VALUE_MAX + 1];
};

/*
 * The scope of account name (*n == 0: unscoped), for any authenticated
 * actor.  *out is malloc'ed; the caller frees it.  Errors: DENIED,
 * NOT_FOUND, DB.
 */
enum esc_err esc_account_get_scope(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				   const char *name, struct esc_scope_item **out, size_t *n) ESC_MUST_CHECK;

#endif
