/*
 * p11escrow — login sessions of the JSON API.
 *
 * An account logs in once with its password and receives a token: 32
 * random bytes, sent as 43 characters of base64url (RFC 4648 §5, no
 * padding).  Only the token's SHA-256 is stored (table sessions); the token
 * itself lives in the client and, while it is made, in secure memory.  A
 * session ends at logout, after session_idle_timeout seconds without use,
 * session_lifetime seconds after it began, when its account is disabled
 * and when its account's password changes.  The account a session stands
 * for is read afresh on every use: roles, KRA binding, disabled.
 */
#ifndef P11ESCROW_SESSION_H
#define P11ESCROW_SESSION_H

#include <stddef.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>

#define ESC_SESSION_TOKEN_BYTES 32
#define ESC_SESSION_TOKEN_LEN 43   /* base64url characters of a token */
#define ESC_SESSION_EXPIRES_LEN 32 /* room for "2026-01-31T23:59:59Z" */

/*
 * Decode a token as a client sent it (len bytes, not NUL-terminated): 0
 * and raw, or -1 if it is not exactly ESC_SESSION_TOKEN_LEN characters of
 * the base64url alphabet in canonical form.  Reads at most len bytes.
 */
int esc_session_token_decode(const char *text, size_t len, unsigned char raw[ESC_SESSION_TOKEN_BYTES]);

/*
 * Open a session for account a, which has just logged in with its password
 * (esc_account_login; an account object from a session cannot open
 * another).  lifetime: seconds until it ends whatever happens.  If a's
 * password changed since that login, or a was disabled or reset meanwhile,
 * no session is opened (AUTH).  *token: the token for the client, in
 * secure memory (esc_secret_free).  expires: when it ends at the latest,
 * UTC "YYYY-MM-DDTHH:MM:SSZ".  Audited (auth.login ok, "session opened") in
 * the transaction that stores it.  Errors: USAGE, AUTH, CRYPTO, NOMEM, DB,
 * BUSY.
 */
enum esc_err esc_session_open(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a,
			      long long lifetime, struct esc_secret **token,
			      char expires[ESC_SESSION_EXPIRES_LEN]) ESC_MUST_CHECK;

/*
 * The account the session of token (as the client sent it, len bytes)
 * stands for, read now.  idle, lifetime: the settings now, in seconds (a
 * lifetime shortened since the session opened applies to it too).  A
 * session past either, whose account is disabled or whose account's
 * password changed after it began is ended here (its reason recorded) and
 * refused.  Its use is recorded (last_used_at) at most every idle/10
 * seconds, at most every 60: a read, not a write, on most calls, so it may
 * end up to that much before idle seconds after its last use.  Every
 * refusal is ESC_ERR_AUTH with one message: a client learns nothing about
 * tokens it does not hold.  *out: the caller frees it.  Errors: AUTH,
 * NOMEM, DB.
 */
enum esc_err esc_session_resume(struct esc_ctx *ctx, struct esc_store *st, const char *token, size_t len,
				long long idle, long long lifetime, struct esc_account **out) ESC_MUST_CHECK;

/*
 * End the session of token (logout) held by a (esc_session_resume's
 * account).  Audited (auth.logout) in its transaction.  Errors: AUTH (no
 * such live session), DB, BUSY.
 */
enum esc_err esc_session_close(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a,
			       const char *token, size_t len) ESC_MUST_CHECK;

#endif
