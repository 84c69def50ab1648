/*
 * p11escrow — two-person key recovery.
 *
 *   1. A certificate manager finds the record and files a request with a
 *      reason, naming a KRA of the record's set (esc_recovery_request).
 *   2. Policy may demand more approvals, by other certificate managers —
 *      never by the requester (esc_recovery_approve).
 *   3. The holder of the CA token (the service) strips the storage layer of
 *      an approved request and releases the inner envelope to the request's
 *      KRA, with every other KRA's recipient removed (esc_recovery_release).
 *      Nobody receives it in clear.
 *   4. That KRA — another account, with its card — decrypts, checks the key
 *      against the certificate and gets a password-protected PKCS#12
 *      (esc_recovery_complete).  A released package completes once.
 *      Through the service the same step is split in three, with the same
 *      checks: the service hands the package to the KRA account
 *      (esc_recovery_fetch), the KRA's workstation opens it on the card
 *      with no database (esc_recovery_open_package), and the service marks
 *      the request completed and deletes the package (esc_recovery_finish).
 *   k of n (record version 2): before step 4, k - 1 other KRAs of the
 *      record's set each open their own share on their card and re-seal it
 *      to the request's KRA (esc_recovery_contribute; through the service
 *      esc_recovery_share_fetch, esc_recovery_share_reseal at the
 *      workstation, esc_recovery_share_store); completion combines k shares
 *      on the completer's card.
 * Every rule is enforced here, not left to front-ends.
 */
#ifndef P11ESCROW_RECOVERY_H
#define P11ESCROW_RECOVERY_H

#include <stddef.h>

#include <openssl/x509.h>

#include <p11escrow/archive.h>
#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#define ESC_REASON_MAX 1000

/*
 * serial, subject, email and issuer are read from the record's certificate,
 * never from the columns stored beside it.  tampered: those columns (or the
 * certificate hashes) disagree with the certificate, or the certificate does
 * not decode (then the four are empty) — a database writer altered the row,
 * and request, approval, release and completion refuse it (TAMPERED).
 */
struct esc_record_summary {
	char id[ESC_RECORD_ID_LEN + 1];
	char serial[64];
	char subject[256];
	char email[128];
	char issuer[256];
	char kras[256];
	int foreign;
	int tampered;
	char created[32];
};

/* serial and subject are the record's certificate's; tampered as in esc_record_summary. */
struct esc_recovery {
	long long id;
	char record_id[ESC_RECORD_ID_LEN + 1];
	char serial[64];
	char subject[256];
	int tampered;
	char state[16];
	char requester[65];
	char kra[65];
	char reason[ESC_REASON_MAX + 1];
	int approvals;
	int approvals_required;
	char created[32];
};

/* The longest subject text esc_archive_search takes. */
#define ESC_SEARCH_TEXT_MAX 1024

/*
 * Archived records matching every given criterion (NULL = any): serial
 * (hex; colons, case and leading zeros ignored), subject (substring,
 * case-blind; % and _ are literal characters, at most ESC_SEARCH_TEXT_MAX
 * bytes), email (exact, case-blind).  Newest first, at most 100.  Each
 * criterion is an index lookup (sql/015).  For certificate
 * managers, auditors and administrators; a scoped certificate manager
 * (esc_account_set_scope) sees only the records in scope.  The criteria
 * match the stored columns; what is returned is each record's certificate's,
 * and a row whose columns disagree with it is returned flagged (tampered).
 * Errors: DENIED, USAGE (serial not hex, subject too long), NOMEM, DB.
 */
enum esc_err esc_archive_search(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				const char *serial, const char *subject, const char *email,
				struct esc_record_summary **out, size_t *n) ESC_MUST_CHECK;

/*
 * File a recovery request for record (a record id or a certificate serial
 * in hex) to be recovered by KRA kra_name (NULL: the record's only active
 * KRA).  actor must be a certificate manager whose scope, if any, holds the
 * record.  The record's row must match its certificate.  Audited, refusals
 * included (a serial as the object); the event names the serial and subject
 * read from the certificate.
 * Errors: DENIED (role, out of scope), NOT_FOUND, USAGE (reason, ambiguous
 * KRA), STATE (KRA not active / not in the record's set), POLICY (not yet
 * revoked, revoke_before_recovery), TAMPERED (the row was altered), DB.
 */
enum esc_err esc_recovery_request(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  const char *record, const char *kra_name, const char *reason,
				  long long *id) ESC_MUST_CHECK;

/*
 * Approve a pending request, as a certificate manager other than the
 * requester whose scope, if any, holds the request's record, and whose row
 * must still match its certificate.
 * Errors: DENIED (not a certificate manager, own request, out of scope), STATE, EXISTS, NOT_FOUND,
 * TAMPERED.
 */
enum esc_err esc_recovery_approve(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  long long id) ESC_MUST_CHECK;

/*
 * Release an approved request: open the record's outer layer with the
 * storage key on ca_tok (logged in) and hand the inner envelope to the
 * request's KRA (esc_archive_open_outer: the row must match its certificate,
 * and that certificate be the one sealed in the record).  The package keeps
 * only that KRA's recipient (esc_envelope_keep_recipient): no other card of
 * the record's KRA set can open it.  It waits release_ttl_hours for its KRA
 * (esc_recovery_expire).
 * Errors: STATE (not approved, KRA retired or expired), NOT_FOUND, TAMPERED,
 * PKCS11, DB.
 */
enum esc_err esc_recovery_release(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
				  long long id) ESC_MUST_CHECK;

/*
 * Complete a released request with the KRA's card (logged in): decrypt the
 * package on the card, check the key against the record's certificate and
 * return a PKCS#12 (AES-256-CBC, PBKDF2, SHA-256 MAC) protected by password.
 * actor must be the KRA account the request names; the record's row must
 * still match its certificate (TAMPERED otherwise, nothing returned).  Marks the request
 * completed in the same transaction that reads the package.
 * Errors: DENIED (not the request's KRA, retired), STATE (not released, or
 * released longer than release_ttl_hours ago), NOT_FOUND, KEY_NOT_FOUND
 * (card lacks the KRA key), TAMPERED, MISMATCH, DB.
 */
enum esc_err esc_recovery_complete(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				   long long id, struct esc_token *card, const struct esc_secret *password,
				   unsigned char **p12, size_t *p12len) ESC_MUST_CHECK;

/*
 * Requests, newest first; state NULL = all.  For any authenticated account;
 * a scoped certificate manager sees only those of records in scope (so
 * esc_recovery_get answers NOT_FOUND for the others).  A request whose
 * record's row disagrees with its certificate is listed, flagged tampered.
 * Errors: DENIED, NOMEM, DB.
 */
enum esc_err esc_recovery_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			       const char *state, struct esc_recovery **out, size_t *n) ESC_MUST_CHECK;

/* One request, as esc_recovery_list shows it.  For any authenticated account.  Errors: DENIED, NOT_FOUND, DB. */
enum esc_err esc_recovery_get(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
			      struct esc_recovery *out) ESC_MUST_CHECK;

/*
 * A released package as a KRA's workstation needs it: the inner envelope
 * (ciphertext to the request's KRA alone), the record's certificate,
 * the KRA's certificate and the URI of the KRA's key on its card.
 */
struct esc_recovery_package;

/*
 * The package of released request id, for actor — with exactly the checks
 * of esc_recovery_complete: actor is the KRA account the request names,
 * that KRA is active and its certificate unexpired, the request is
 * released (less than release_ttl_hours ago), the record's row still
 * matches its certificate.  Changes nothing
 * but the audit trail (recovery.fetch, refusals included); may be fetched
 * again until the request is completed.
 * *out is the caller's (esc_recovery_package_free).
 * Errors: DENIED, STATE, NOT_FOUND, TAMPERED, BAD_INPUT (stored data
 * unreadable), DB.
 */
enum esc_err esc_recovery_fetch(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				long long id, struct esc_recovery_package **out) ESC_MUST_CHECK;

/*
 * A package from its parts as the service sends them (DER; kra_name and
 * key_uri text), e.g. at a KRA's workstation.  Copies everything.
 * Errors: BAD_INPUT (a certificate does not decode, empty or oversized
 * package, key_uri not a PKCS#11 URI without a PIN), NOMEM.
 */
enum esc_err esc_recovery_package_new(struct esc_ctx *ctx, long long id, const unsigned char *package,
				      size_t package_len, const unsigned char *cert, size_t cert_len,
				      const unsigned char *kra_cert, size_t kra_cert_len, const char *kra_name,
				      const char *key_uri, struct esc_recovery_package **out) ESC_MUST_CHECK;

long long esc_recovery_package_id(const struct esc_recovery_package *p);
/* The inner envelope (DER), owned by p. */
const unsigned char *esc_recovery_package_der(const struct esc_recovery_package *p, size_t *len);
/* The record's certificate and the KRA's certificate, owned by p. */
X509 *esc_recovery_package_cert(const struct esc_recovery_package *p);
X509 *esc_recovery_package_kra_cert(const struct esc_recovery_package *p);
const char *esc_recovery_package_kra_name(const struct esc_recovery_package *p);
const char *esc_recovery_package_key_uri(const struct esc_recovery_package *p);

/*
 * k of n (record version 2): k (0 for a version 1 package), the record
 * id the shares are bound to, and the shares the request's KRA can open —
 * its own and those contributed, each sealed to its card: share i's x,
 * commitment (32 bytes), the certificate it is sealed to (the KRA's now,
 * or an earlier one of the same key: kra renew) and, returned, the sealed
 * share (sealed_len bytes).  All owned by p; NULL past the last share.
 */
unsigned esc_recovery_package_threshold(const struct esc_recovery_package *p);
const char *esc_recovery_package_record_id(const struct esc_recovery_package *p);
size_t esc_recovery_package_nshares(const struct esc_recovery_package *p);
const unsigned char *esc_recovery_package_share(const struct esc_recovery_package *p, size_t i, unsigned *x,
						const unsigned char **commitment, size_t *sealed_len, X509 **cert);

/*
 * Add a share to a package from esc_recovery_package_new (at a KRA's
 * workstation, as the service sends them): the record id and k (the same
 * for every share of p), its x (1..255, once), commitment (32 bytes), the
 * sealed share and the DER certificate it is sealed to (NULL: the
 * package's KRA certificate).  Copies everything.
 * Errors: BAD_INPUT (out of bounds, disagreeing, x twice, more than 16,
 * a certificate that does not decode), NOMEM.
 */
enum esc_err esc_recovery_package_add_share(struct esc_ctx *ctx, struct esc_recovery_package *p, const char *record_id,
					    unsigned threshold, unsigned x, const unsigned char commitment[32],
					    const unsigned char *sealed, size_t sealed_len, const unsigned char *cert,
					    size_t cert_len) ESC_MUST_CHECK;
/* Accepts NULL. */
void esc_recovery_package_free(struct esc_recovery_package *p);

/*
 * Open a package on the KRA's card (logged in), with no database: find the
 * KRA's key on the card by the package's key URI, decrypt the inner
 * envelope there, check the key against the record's certificate and
 * return a PKCS#12 as esc_recovery_complete does (*p12 in secure memory;
 * esc_recovery_p12_free).  Changes nothing anywhere: the caller reports
 * completion (esc_recovery_finish, through the service).
 * Errors: KEY_NOT_FOUND (card lacks the KRA key), NOT_RECIPIENT, TAMPERED,
 * MISMATCH, PKCS11, CRYPTO.
 */
enum esc_err esc_recovery_open_package(struct esc_ctx *ctx, const struct esc_recovery_package *p,
				       struct esc_token *card, const struct esc_secret *password, unsigned char **p12,
				       size_t *p12len) ESC_MUST_CHECK;

/*
 * Where a completion puts the recovered key: exactly one of three forms.
 *   ESC_RECOVERY_P12    a PKCS#12 (key and certificate) protected by a
 *                       password, as esc_recovery_complete makes it;
 *   ESC_RECOVERY_TOKEN  the key and its certificate written onto a PKCS#11
 *                       token, the user's replacement card
 *                       (esc_token_import_key: sensitive, never extractable);
 *   ESC_RECOVERY_CERT   a CMS AuthEnvelopedData (AES-256-GCM) encrypted to a
 *                       recipient certificate (RSA-OAEP SHA-256, or ECDH),
 *                       whose content is the PKCS#8 private key and the
 *                       certificate, both PEM (docs/recovery.md).
 * An output serves one completion (esc_recovery_complete_to,
 * esc_recovery_open_package_to); a failed completion leaves nothing in it
 * and nothing on its token.
 */
enum esc_recovery_form {
	ESC_RECOVERY_P12,
	ESC_RECOVERY_TOKEN,
	ESC_RECOVERY_CERT,
};

struct esc_recovery_output;

/* "p12", "token", "cert": the names the service's API and the audit trail use. */
const char *esc_recovery_form_name(enum esc_recovery_form f);

/* A PKCS#12 protected by password (borrowed: it must outlive *out).  Errors: NOMEM. */
enum esc_err esc_recovery_output_p12(struct esc_ctx *ctx, const struct esc_secret *password,
				     struct esc_recovery_output **out) ESC_MUST_CHECK;

/*
 * Onto target, a token the caller opened and logged in to as its user
 * (borrowed: it must outlive *out), with CKA_LABEL label (NULL: the
 * certificate's common name, else "recovered key").
 * Errors: USAGE (label empty, longer than 128 bytes, or with control
 * characters), NOMEM.
 */
enum esc_err esc_recovery_output_token(struct esc_ctx *ctx, struct esc_token *target, const char *label,
				       struct esc_recovery_output **out) ESC_MUST_CHECK;

/*
 * Encrypted to recipient (copied), written as PEM ("-----BEGIN CMS-----")
 * if pem, else DER.  The certificate is checked now: valid today, an RSA
 * key of at least 2048 bits whose keyUsage (if any) has keyEncipherment, or
 * an EC key whose keyUsage (if any) has keyAgreement.
 * Errors: STATE (expired or not yet valid), BAD_INPUT (key type or size,
 * keyUsage), NOMEM.
 */
enum esc_err esc_recovery_output_cert(struct esc_ctx *ctx, X509 *recipient, int pem,
				      struct esc_recovery_output **out) ESC_MUST_CHECK;

enum esc_recovery_form esc_recovery_output_form(const struct esc_recovery_output *o);

/*
 * After a completion: the bytes to write for ESC_RECOVERY_P12 (DER, in
 * secure memory) and ESC_RECOVERY_CERT (PEM or DER), owned by o; NULL
 * (*len 0) before, and for a token.
 */
const unsigned char *esc_recovery_output_data(const struct esc_recovery_output *o, size_t *len);

/*
 * After a completion, where the key went, as the audit event names it:
 * "" for a PKCS#12; for a token "serial S, key label 'L', key URI" (the
 * RFC 7512 URI of the key written, never a PIN); for a certificate
 * "SHA256:…, subject '…'".  Owned by o.
 */
const char *esc_recovery_output_destination(const struct esc_recovery_output *o);

/*
 * Take back a delivery the completion was not recorded for (the service
 * refused esc_recovery_finish_to): the objects written to the token are
 * destroyed, the bytes of a file form dropped.  Errors: PKCS11 (an object
 * could not be destroyed: the message says which).
 */
enum esc_err esc_recovery_output_undo(struct esc_ctx *ctx, struct esc_recovery_output *o) ESC_MUST_CHECK;

/* Wipe and free; accepts NULL.  Never touches the token (esc_recovery_output_undo does). */
void esc_recovery_output_free(struct esc_recovery_output *o);

/*
 * k of n (record version 2, docs/recovery.md "k of n"): actor, a KRA
 * account whose KRA holds a share of the released request id's record and
 * is not the request's KRA (who completes), opens that share on its card
 * (logged in), checks it against the record's commitment and its binding,
 * re-seals it to the request's KRA and stores that.  *have and *need
 * (either may be NULL): the shares the completer can now open, and k.
 * Errors: DENIED (not a KRA account, KRA retired or revoked), STATE (no
 * share of this KRA, not released, the completer's own, already
 * contributed: a KRA counts once), KEY_NOT_FOUND (another card), TAMPERED
 * (commitment or binding fails, GCM), BAD_INPUT, PKCS11, CRYPTO, DB.
 */
enum esc_err esc_recovery_contribute(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				     long long id, struct esc_token *card, int *have, int *need) ESC_MUST_CHECK;

/*
 * k of n through the service: esc_recovery_contribute in three steps, with
 * the same checks and the same card step (docs/recovery.md).
 *   1. the service hands the contributing KRA account its share, still
 *      sealed to its card (esc_recovery_share_fetch);
 *   2. its workstation, with no database, opens it on the card, checks it
 *      and re-seals it to the completing KRA (esc_recovery_share_reseal);
 *   3. the service stores what comes back (esc_recovery_share_store).
 * The service relays ciphertext only: it never holds a share in clear.
 */
struct esc_recovery_share;

/*
 * A share as the service sends it and the workstation rebuilds it
 * (esc_recovery_share_new, esc_recovery_share_parts): request id, the
 * record it is bound to, its x and k, commitment (32 bytes, SHA-256 of the
 * plaintext), the share sealed to the contributor's card, the certificate
 * it is sealed to (DER: the KRA's now, or an earlier one of its key), the
 * KRA's name and key URI on its card, and the completing KRA: name,
 * certificate (DER) and recipient form (kras.recipient: rsa-oaep-sha1,
 * rsa-oaep-sha256, rsa-pkcs1v15, ecdh).
 */
struct esc_recovery_share_parts {
	long long id;
	const char *record_id;
	unsigned x, threshold;
	const unsigned char *commitment;
	const unsigned char *sealed;
	size_t sealed_len;
	const unsigned char *kra_cert;
	size_t kra_cert_len;
	const char *kra_name, *key_uri;
	const unsigned char *completer_cert;
	size_t completer_cert_len;
	const char *completer_name, *completer_recipient;
};

/*
 * The share of released request id that actor's KRA holds, with every
 * check of esc_recovery_contribute: a KRA account, its KRA active with an
 * unexpired certificate and holding a share of the request's record, not
 * the request's KRA (who completes), not yet contributed; the request
 * released, not past release_ttl_hours.  Changes nothing but the audit
 * trail (recovery.share.fetch, refusals included).  *out: the caller's
 * (esc_recovery_share_free).
 * Errors: DENIED, STATE, TAMPERED (sealed to none of the KRA's
 * certificates), BAD_INPUT (stored data unreadable), NOMEM, DB.
 */
enum esc_err esc_recovery_share_fetch(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				      long long id, struct esc_recovery_share **out) ESC_MUST_CHECK;

/*
 * A share from its parts (copied), at a KRA's workstation.
 * Errors: BAD_INPUT (out of bounds, a certificate that does not decode, a
 * key URI with a PIN or a module), NOMEM.
 */
enum esc_err esc_recovery_share_new(struct esc_ctx *ctx, const struct esc_recovery_share_parts *in,
				    struct esc_recovery_share **out) ESC_MUST_CHECK;

/* s's parts, owned by s. */
void esc_recovery_share_parts(const struct esc_recovery_share *s, struct esc_recovery_share_parts *out);

/* Accepts NULL. */
void esc_recovery_share_free(struct esc_recovery_share *s);

/*
 * With no database: open share s on the KRA's card (logged in; the key
 * found by s's key URI), check it against its commitment and its binding
 * (the record, x and k), and seal it to the completing KRA's certificate.
 * The plaintext lives in secure memory only and is wiped.  *out: DER,
 * malloc'd (free()).
 * Errors: KEY_NOT_FOUND (another card), NOT_RECIPIENT, TAMPERED
 * (commitment, binding or GCM fails: nothing re-sealed), PKCS11, CRYPTO.
 */
enum esc_err esc_recovery_share_reseal(struct esc_ctx *ctx, const struct esc_recovery_share *s, struct esc_token *card,
				       unsigned char **out, size_t *outlen) ESC_MUST_CHECK;

/*
 * Store actor's KRA's share of request id re-sealed (resealed, from
 * esc_recovery_share_reseal at its workstation): every check of
 * esc_recovery_share_fetch again, under the share's row lock (a KRA counts
 * once), and resealed must be an envelope addressed to the completing
 * KRA's certificate (the service cannot read it; the completer's card
 * checks commitment and binding before combining).  Audited
 * (recovery.contribute, with how many shares are in).  *have, *need as
 * esc_recovery_contribute.
 * Errors: those of esc_recovery_share_fetch; BAD_INPUT (not such an
 * envelope, empty, over 64 KiB).
 */
enum esc_err esc_recovery_share_store(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				      long long id, const unsigned char *resealed, size_t resealedlen, int *have,
				      int *need) ESC_MUST_CHECK;

/*
 * esc_recovery_complete, delivering to out instead of a PKCS#12: the same
 * checks, then (for a token, before the card decrypts anything) whether the
 * target can take the key (esc_token_import_check), then the key is written
 * or sealed, and only then is the request marked completed — in the same
 * transaction as the recovery.complete event, which names the form and the
 * destination.  If anything fails after the key was written to the token,
 * it is removed again.  A token that is the KRA card itself is refused.
 * Errors: those of esc_recovery_complete; for a token also
 * esc_token_import_key's (EXISTS, MECHANISM, PKCS11).
 */
enum esc_err esc_recovery_complete_to(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				      long long id, struct esc_token *card,
				      struct esc_recovery_output *out) ESC_MUST_CHECK;

/*
 * esc_recovery_open_package, delivering to out: at a KRA's workstation
 * through the service.  The caller then reports the completion
 * (esc_recovery_finish_to) and, if that fails, takes the delivery back
 * (esc_recovery_output_undo).  Errors: as esc_recovery_open_package, and
 * for a token those of esc_token_import_key.
 */
enum esc_err esc_recovery_open_package_to(struct esc_ctx *ctx, const struct esc_recovery_package *p,
					  struct esc_token *card, struct esc_recovery_output *out) ESC_MUST_CHECK;

/*
 * Mark released request id completed and delete its package, for actor,
 * the KRA account the request names (after esc_recovery_open_package
 * succeeded at its workstation).  One UPDATE that requires the request to
 * be released (less than release_ttl_hours ago) and addressed to actor's
 * KRA, so a package completes once: a second call fails with STATE.  Audited (recovery.complete, refusals
 * included).  Errors: DENIED, STATE, NOT_FOUND, DB.
 */
enum esc_err esc_recovery_finish(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				 long long id) ESC_MUST_CHECK;

/*
 * esc_recovery_finish for a completion that delivered in form ("p12",
 * "token", "cert"; NULL: "p12") to destination, as the KRA's workstation
 * reports it (esc_recovery_output_destination): the recovery.complete
 * event names both.  destination: none for "p12", else 1..600 bytes of
 * text without control characters or PIN attributes.
 * Errors: USAGE (form, destination), and those of esc_recovery_finish.
 */
enum esc_err esc_recovery_finish_to(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				    long long id, const char *form, const char *destination) ESC_MUST_CHECK;

/*
 * End request id without a recovery.  reason: 3..1000 characters, no
 * control characters (as a request's); kept with the request (end_reason)
 * and in the audit event.
 *
 * esc_recovery_deny: a pending or approved request, by a certificate
 * manager other than the requester whose scope, if any, holds the
 * request's record, or by an administrator.  Never by a KRA or an auditor.
 * esc_recovery_cancel: a pending, approved or released request, by its
 * requester or an administrator; a released package is deleted with it.
 *
 * One locked row decides; state, end and audit event (recovery.deny,
 * recovery.cancel; refusals included) commit together.  A completed,
 * denied, cancelled or expired request stays as it is (STATE).
 * Errors: DENIED (role, the requester denying, someone else cancelling,
 * out of scope), USAGE (reason), STATE, NOT_FOUND, DB.
 */
enum esc_err esc_recovery_deny(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
			       const char *reason) ESC_MUST_CHECK;
enum esc_err esc_recovery_cancel(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				 long long id, const char *reason) ESC_MUST_CHECK;

/*
 * Expire every released request whose package has waited longer than
 * policy release_ttl_hours: state expired, package deleted, one
 * recovery.expire event each, all in one transaction; *n is how many.
 * actor NULL: the service (p11escrowd's periodic sweep, audited as
 * 'service'); else a certificate manager or an administrator (the CLI's
 * 'recovery expire', for installations without the service).  Fetch and
 * completion refuse an overdue package (STATE) whether or not this ran.
 * Errors: DENIED (actor's role), DB.
 */
enum esc_err esc_recovery_expire(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				 int *n) ESC_MUST_CHECK;

/* Wipe and free a PKCS#12 from esc_recovery_complete; accepts NULL. */
void esc_recovery_p12_free(unsigned char *p12, size_t len);

#endif
