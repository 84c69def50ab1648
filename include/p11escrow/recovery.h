/*
 * p11escrow — two-person key recovery.
 *
 *   1. A certificate manager finds the record and files a request with a
 *      reason, naming a KRA of the record's set (esc_recovery_request).
 *   2. Policy may demand more approvals, by other certificate managers —
 *      never by the requester (esc_recovery_approve).
 *   3. The holder of the CA token (the service) strips the storage layer of
 *      an approved request and releases the inner envelope to the request's
 *      KRA (esc_recovery_release).  Nobody receives it in clear.
 *   4. That KRA — another account, with its card — decrypts, checks the key
 *      against the certificate and gets a password-protected PKCS#12
 *      (esc_recovery_complete).  A released package completes once.
 * Every rule is enforced here, not left to front-ends.
 */
#ifndef P11ESCROW_RECOVERY_H
#define P11ESCROW_RECOVERY_H

#include <stddef.h>

#include <p11escrow/archive.h>
#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#define ESC_REASON_MAX 1000

struct esc_record_summary {
	char id[ESC_RECORD_ID_LEN + 1];
	char serial[64];
	char subject[256];
	char email[128];
	char issuer[256];
	char kras[256];
	int foreign;
	char created[32];
};

struct esc_recovery {
	long long id;
	char record_id[ESC_RECORD_ID_LEN + 1];
	char serial[64];
	char subject[256];
	char state[16];
	char requester[65];
	char kra[65];
	char reason[ESC_REASON_MAX + 1];
	int approvals;
	int approvals_required;
	char created[32];
};

/*
 * Archived records matching every given criterion (NULL = any): serial
 * (hex), subject (substring), email (exact).  At most 100.  For certificate
 * managers, auditors and administrators.  Errors: DENIED, USAGE, DB.
 */
enum esc_err esc_archive_search(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				const char *serial, const char *subject, const char *email,
				struct esc_record_summary **out, size_t *n) ESC_MUST_CHECK;

/*
 * File a recovery request for record (a record id or a certificate serial
 * in hex) to be recovered by KRA kra_name (NULL: the record's only active
 * KRA).  actor must be a certificate manager.
 * Errors: DENIED, NOT_FOUND, USAGE (reason, ambiguous KRA), STATE (KRA not
 * active / not in the record's set), DB.
 */
enum esc_err esc_recovery_request(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  const char *record, const char *kra_name, const char *reason, long long *id)
	ESC_MUST_CHECK;

/* Approve a pending request.  Errors: DENIED (not a certificate manager, own request), STATE, EXISTS, NOT_FOUND. */
enum esc_err esc_recovery_approve(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  long long id) ESC_MUST_CHECK;

/*
 * Release an approved request: open the record's outer layer with the
 * storage key on ca_tok (logged in) and hand the inner envelope to the
 * request's KRA.  Errors: STATE (not approved, KRA retired or expired),
 * NOT_FOUND, TAMPERED, PKCS11, DB.
 */
enum esc_err esc_recovery_release(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, long long id)
	ESC_MUST_CHECK;

/*
 * Complete a released request with the KRA's card (logged in): decrypt the
 * package on the card, check the key against the record's certificate and
 * return a PKCS#12 (AES-256-CBC, PBKDF2, SHA-256 MAC) protected by password.
 * actor must be the KRA account the request names.  Marks the request
 * completed in the same transaction that reads the package.
 * Errors: DENIED (not the request's KRA, retired), STATE (not released),
 * NOT_FOUND, KEY_NOT_FOUND (card lacks the KRA key), TAMPERED, MISMATCH, DB.
 */
enum esc_err esc_recovery_complete(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				   long long id, struct esc_token *card, const struct esc_secret *password,
				   unsigned char **p12, size_t *p12len) ESC_MUST_CHECK;

/* Requests, newest first; state NULL = all.  For any authenticated account.  Errors: DB. */
enum esc_err esc_recovery_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			       const char *state, struct esc_recovery **out, size_t *n) ESC_MUST_CHECK;

/* Wipe and free a PKCS#12 from esc_recovery_complete; accepts NULL. */
void esc_recovery_p12_free(unsigned char *p12, size_t len);

#endif
