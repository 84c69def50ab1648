/*
 * p11escrow — stored policy, changed only by administrators.
 *
 *   kra_set_size           1..16   each record is wrapped to this many active KRAs
 *   kra_threshold          1..16   KRAs of the set needed to recover (<= kra_set_size; > 1: record v2)
 *   allow_foreign_issuers  true|false  archive certificates of other CAs
 *   recovery_approvals     0..10   approvals needed beyond the request itself
 *   revoke_before_recovery true|false  a key is recovered only once its certificate is revoked
 *   one_key_per_subject    off|supersede|refuse  at most one valid archived encryption key per
 *                          subject and profile: a new enrollment revokes the older certificate
 *                          (superseded) or is refused (esc_enroll_issue)
 *   release_ttl_hours      1..720  hours a released package waits for its KRA: past it the
 *                          package is refused and deleted (esc_recovery_expire)
 *   cert_login_roles       roles that log in to the service with a client certificate only
 *   kra_min_rsa_bits       2048|3072|4096  the smallest RSA key a KRA may have (default 3072)
 *   kra_min_ec_bits        256|384  the smallest EC curve of a KRA key (default 256: P-256)
 *   kra_allow_rsa_pkcs1v15 true|false  a card that decrypts RSA only with PKCS#1 v1.5 may be a KRA
 *                          (weaker: docs/threat-model.md; default false)
 *
 * A change by anyone but an enabled administrator is refused (DENIED) and
 * audited (policy.set ... refused), as is an invalid value.
 */
#ifndef P11ESCROW_POLICY_H
#define P11ESCROW_POLICY_H

#include <stddef.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>

struct esc_policy_item {
	char key[32];
	char value[32];
	char updated_by[65];
	char updated_at[32];
};

/* Every policy value.  *out is malloc'ed; caller frees.  Errors: DB. */
enum esc_err esc_policy_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_policy_item **out,
			     size_t *n) ESC_MUST_CHECK;

/*
 * Set one policy value after validating it.  actor must be an
 * administrator.  Errors: DENIED, USAGE (unknown key, bad value), DB.
 */
enum esc_err esc_policy_set(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *key,
			    const char *value) ESC_MUST_CHECK;

#endif
