/*
 * p11escrow — Key Recovery Agents.
 *
 * A KRA is a security officer's smart card (or HSM token) holding a
 * decryption key pair generated on it, never extractable, certified by the
 * CA with the Key Recovery Agent EKU.  Archive records are wrapped to sets
 * of active KRAs; retiring one never orphans a record.
 */
#ifndef P11ESCROW_KRA_H
#define P11ESCROW_KRA_H

#include <stddef.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

struct esc_kra {
	long long id;
	char name[65];
	char state[16];        /* active, retired */
	char key_type[16];
	char recipient[24];    /* rsa-oaep-sha1, rsa-oaep-sha256, ecdh */
	char cert_serial[64];
	char not_after[32];
	char token_label[33];
	char token_serial[17];
	char key_uri[512];
	long long records;     /* records this KRA can recover */
};

/*
 * Enroll a KRA: generate its key pair on kra_tok (logged in; decrypt-only,
 * sensitive, never extractable), have the CA (ca_tok, logged in) issue its
 * certificate, store the certificate on the card and register the KRA as
 * active.  actor must be an administrator.  On failure the generated key is
 * removed again and nothing is registered.
 * Errors: DENIED, USAGE, EXISTS (name or card already enrolled), MECHANISM,
 * PKCS11, STATE (no active CA), DB.
 */
enum esc_err esc_kra_enroll(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			    struct esc_token *ca_tok, struct esc_token *kra_tok, const char *name,
			    enum esc_key_type type, int days, struct esc_kra *out) ESC_MUST_CHECK;

/* All KRAs, oldest first.  *out is malloc'ed (caller frees).  Errors: DB. */
enum esc_err esc_kra_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_kra **out, size_t *n)
	ESC_MUST_CHECK;

/*
 * Retire a KRA.  Refused (STATE, naming records) while any record would be
 * left with no active KRA in its set.  actor must be an administrator.
 * Errors: DENIED, NOT_FOUND, STATE, DB.
 */
enum esc_err esc_kra_retire(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			    const char *name) ESC_MUST_CHECK;

#endif
