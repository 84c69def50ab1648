/* Internal access to accounts for library modules (session.c). */
#ifndef P11ESCROW_AUTH_INTERNAL_H
#define P11ESCROW_AUTH_INTERNAL_H

#include <p11escrow/auth.h>

/*
 * An account object from a row of accounts read by another module: id,
 * name, roles in PostgreSQL's text[] form, kra_id (0: none).  It carries no
 * password stamp (esc_account_pw_stamp is ""), so it cannot open a
 * session.  Errors: NOMEM, INTERNAL (malformed roles).
 */
enum esc_err esc_account_make(struct esc_ctx *ctx, long long id, const char *name, const char *pg_roles,
			      long long kra_id, struct esc_account **out) ESC_MUST_CHECK;

/*
 * The accounts.password_changed_at value (PostgreSQL's text form) read at
 * a's login with its password; "" for an account not made by a password
 * login.  A session opened for a is tied to it: if the password changed
 * meanwhile, no session is opened.
 */
const char *esc_account_pw_stamp(const struct esc_account *a);

/* Mark a (from esc_account_make) as logged in with the client certificate whose SHA-256 (hex) is sha256. */
void esc_account_set_cert(struct esc_account *a, const char *sha256);

/* Inside the caller's transaction: is actor still an enabled administrator?  Errors: DENIED, DB. */
enum esc_err esc_account_recheck_admin(struct esc_ctx *ctx, struct esc_store *st,
				       const struct esc_account *actor) ESC_MUST_CHECK;

#endif
