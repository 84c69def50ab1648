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

#include <openssl/x509.h>

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
/*
 * Parse a set of roles as a policy names them ("cert-manager,kra"): any
 * combination, no role twice; "" is the empty set.  Errors: USAGE.
 */
enum esc_err esc_roles_parse_set(struct esc_ctx *ctx, const char *text, unsigned *roles) ESC_MUST_CHECK;
/* "admin,cert-manager" for a role set, into the caller's buffer (len >= 64). */
void esc_roles_format(unsigned roles, char *buf, size_t len);

/* Argon2id-encoded hash of a password.  Caller frees.  Errors: USAGE (too short), NOMEM, CRYPTO. */
enum esc_err esc_auth_hash_password(struct esc_ctx *ctx, const struct esc_secret *password,
				    char **encoded) ESC_MUST_CHECK;
/* ESC_OK if password matches encoded, ESC_ERR_AUTH if not. */
enum esc_err esc_auth_verify_password(struct esc_ctx *ctx, const char *encoded,
				      const struct esc_secret *password) ESC_MUST_CHECK;

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
/*
 * ESC_LOGIN_REMOTE: the login comes through the service (the JSON API), so
 * policy cert_login_roles applies: an account holding one of its roles is
 * refused with the right password (ESC_ERR_DENIED, "a client certificate is
 * required", audited auth.login refused).  The CLI's local logins leave it
 * out (break-glass access with the database's credentials).
 */
#define ESC_LOGIN_REMOTE 2u
enum esc_err esc_account_login_ex(struct esc_ctx *ctx, struct esc_store *st, const char *name,
				  const struct esc_secret *password, unsigned flags,
				  struct esc_account **out) ESC_MUST_CHECK;
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

/* The SHA-256 (hex) of the client certificate a logged in with; "" if it did not (password, session). */
const char *esc_account_cert_sha256(const struct esc_account *a);

/* Does any administrator exist?  Errors: DB. */
enum esc_err esc_account_admin_exists(struct esc_ctx *ctx, struct esc_store *st, int *yes) ESC_MUST_CHECK;

long long esc_account_id(const struct esc_account *a);
const char *esc_account_name(const struct esc_account *a);
unsigned esc_account_roles(const struct esc_account *a);
/* The KRA id bound to a KRA account, 0 otherwise. */
long long esc_account_kra_id(const struct esc_account *a);
int esc_account_has_role(const struct esc_account *a, enum esc_role role);
/* Fail with ESC_ERR_DENIED ("account 'x' is not a certificate manager") unless a has role. */
enum esc_err esc_account_require(struct esc_ctx *ctx, const struct esc_account *a, enum esc_role role) ESC_MUST_CHECK;
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
					 const struct esc_secret *current,
					 const struct esc_secret *password) ESC_MUST_CHECK;

struct esc_account_info {
	long long id;
	char name[65];
	unsigned roles;
	char kra_name[65]; /* "" unless bound to a KRA */
	int disabled;
	char scope[512]; /* "" if unscoped, else e.g. "profile encryption, group Sales" (may be cut short) */
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

/* ---- Client certificates bound to accounts (account_cert.c) ------------------------------------------------ */

#define ESC_CERT_SHA256_HEX 64 /* hex digits of a certificate's SHA-256 fingerprint */

/*
 * Normalise a fingerprint as a person writes it ("SHA256:AB:CD:...", "abcd...",
 * with or without colons) into 64 lower-case hex digits.  Returns 0, or -1
 * if it is no SHA-256 fingerprint.
 */
int esc_cert_sha256_parse(const char *text, char out[ESC_CERT_SHA256_HEX + 1]);
/* The SHA-256 of cert's DER encoding, lower-case hex.  Returns 0 or -1. */
int esc_cert_sha256_hex(X509 *cert, char out[ESC_CERT_SHA256_HEX + 1]);

/*
 * May cert log an account in, as a certificate (its chain is the caller's
 * business)?  Within its validity now; a keyUsage extension with
 * digitalSignature; an extendedKeyUsage, if present, with clientAuth; not a
 * CA.  Errors: AUTH (why, in the message).
 */
enum esc_err esc_account_cert_usable(struct esc_ctx *ctx, X509 *cert) ESC_MUST_CHECK;

/*
 * Load the CRLs of PEM file crl_path, each signed by a certificate of the
 * PEM bundle ca_path (account_cert_ca) with the CRL's issuer name: a CRL
 * that is not is an error, so a misconfiguration is found at start, not at
 * a login.  *out: the caller frees (sk_X509_CRL_pop_free).  Errors: IO,
 * BAD_INPUT, CRYPTO, NOMEM.
 */
enum esc_err esc_account_cert_crls_load(struct esc_ctx *ctx, const char *crl_path, const char *ca_path,
					STACK_OF(X509_CRL) **out) ESC_MUST_CHECK;

/*
 * Log in with TLS client certificate cert, whose chain the caller verified
 * (p11escrowd's TLS: this CA or account_cert_ca).  The account it is bound
 * to (esc_account_cert_add), if enabled; cert must be usable
 * (esc_account_cert_usable) and not revoked: for every issuer, not in the
 * table revocations (this CA's revocations, and any other recorded there);
 * for an issuer other than this CA, when crls is non-NULL (account_cert_crl,
 * from esc_account_cert_crls_load): a current CRL of its issuer must be
 * among them and must not list it.  Every refusal is ESC_ERR_AUTH with one
 * message (as a wrong password), audited (auth.login refused, details
 * "client certificate SHA256:<hex>: <reason>"); a success is audited only
 * with ESC_CERT_LOGIN_AUDIT_OK in flags.  The account may open a session
 * (esc_session_open).  *out: the caller frees.  Errors: AUTH, NOMEM, DB.
 */
#define ESC_CERT_LOGIN_AUDIT_OK 1u
enum esc_err esc_account_cert_login(struct esc_ctx *ctx, struct esc_store *st, X509 *cert,
				    const STACK_OF(X509_CRL) *crls, unsigned flags,
				    struct esc_account **out) ESC_MUST_CHECK;

/*
 * Bind certificate cert to account name: afterwards it logs that account
 * in to the service.  actor must be an enabled administrator.  untrusted:
 * intermediate certificates to build the chain with (may be NULL).  The
 * certificate must verify (chain, validity, purpose TLS client) against
 * this CA (and its chain) or a certificate of the PEM bundle ca_path (the
 * configuration's account_cert_ca; NULL or "": this CA only), be usable
 * (esc_account_cert_usable) and not be revoked (table revocations).  One
 * certificate is bound to one account; an account may have several.
 * Audited (account.cert-add, refusals included).  *sha256 (may be NULL):
 * its fingerprint.  Errors: DENIED, NOT_FOUND (no such account), USAGE (does
 * not verify, unusable, revoked), EXISTS (already bound), IO, DB, BUSY.
 */
enum esc_err esc_account_cert_add(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  const char *name, X509 *cert, STACK_OF(X509) *untrusted, const char *ca_path,
				  char sha256[ESC_CERT_SHA256_HEX + 1]) ESC_MUST_CHECK;

/*
 * Unbind the certificate whose fingerprint is sha256 (esc_cert_sha256_parse
 * forms) from account name.  Every session opened with it ends in the same
 * transaction.  actor must be an enabled administrator.  Audited
 * (account.cert-remove).  Errors: DENIED, USAGE (no fingerprint), NOT_FOUND
 * (no such account or binding), DB, BUSY.
 */
enum esc_err esc_account_cert_remove(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				     const char *name, const char *sha256) ESC_MUST_CHECK;

struct esc_account_cert {
	char sha256[ESC_CERT_SHA256_HEX + 1];
	char subject[256]; /* RFC 2253, may be cut short */
	char issuer[256];
	char serial[72];    /* lower-case hex */
	char not_after[24]; /* "YYYY-MM-DD HH:MM:SS" UTC */
	char added_at[24];
	char added_by[65];
};

/*
 * The certificates bound to account name (administrators, and the account
 * itself).  *out is malloc'ed; the caller frees it.  Errors: DENIED,
 * NOT_FOUND, DB.
 */
enum esc_err esc_account_cert_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				   const char *name, struct esc_account_cert **out, size_t *n) ESC_MUST_CHECK;

/*
 * ---- The audit trail on behalf of an account (auth.c) ----------------------
 *
 * audit.h knows actors only as name and roles strings; these take an
 * account, and do the role checks of reading the trail and of asking for a
 * checkpoint.  The account layer sits above the audit trail.
 */
struct esc_audit_filter;
struct esc_audit_row;
struct esc_token;

/* esc_audit_outcome for an authenticated account (actor name and roles taken from a; NULL: "unknown", "none"). */
void esc_audit_outcome_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *action,
			  const char *object, enum esc_err r);

/*
 * esc_audit_checkpoint on behalf of account actor (the service's API):
 * only an administrator or an auditor may ask; a refusal is DENIED and
 * audited (audit.checkpoint by actor).  The checkpoint itself is recorded
 * as esc_audit_checkpoint records it.  Errors: DENIED, and its.
 */
enum esc_err esc_audit_checkpoint_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				     struct esc_token *ca_tok, long long *event_id) ESC_MUST_CHECK;

/*
 * Events matching every filter (audit.h), oldest first.  reader must be an
 * auditor or administrator.  *out is malloc'ed.  Errors: DENIED, USAGE (bad
 * serial), DB.
 */
enum esc_err esc_audit_search(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
			      const struct esc_audit_filter *f, struct esc_audit_row **out, size_t *n) ESC_MUST_CHECK;

struct esc_audit_anchor;

/*
 * esc_audit_verify_checkpoint of an exported checkpoint (len bytes) for
 * reader, who must be an auditor or administrator (the service's API:
 * bounded work, unlike esc_audit_verify, which reads the whole chain and
 * stays on the service host).  Audited as audit.verify by reader, with the
 * outcome.  Errors: DENIED, and its (BAD_INPUT, TAMPERED, ROLLED_BACK, DB).
 */
enum esc_err esc_audit_verify_checkpoint_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
					    const char *checkpoint, size_t len,
					    struct esc_audit_anchor *a) ESC_MUST_CHECK;

/*
 * esc_audit_checkpoint_export (file form) of event_id (0: the newest
 * checkpoint) for reader, an auditor or administrator.  Errors: DENIED, and its.
 */
enum esc_err esc_audit_checkpoint_export_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
					    long long event_id, char **out, struct esc_audit_anchor *a) ESC_MUST_CHECK;

/* esc_audit_search without a serial filter. */
enum esc_err esc_audit_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader,
			    const char *since, const char *until, const char *actor, const char *action,
			    const char *object, size_t limit, struct esc_audit_row **out, size_t *n) ESC_MUST_CHECK;

#endif
