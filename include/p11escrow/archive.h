/*
 * p11escrow — archive records.
 *
 * A record is two CMS AuthEnvelopedData layers (AES-256-GCM):
 *   outer, to the storage key's certificate (CA token), containing
 *     EscrowRecord ::= SEQUENCE {
 *         version     INTEGER (1),
 *         recordId    UTF8String,    -- the row's id: records cannot be swapped
 *         certSha256  OCTET STRING,  -- the certificate the key belongs to
 *         inner       OCTET STRING } -- DER of the inner layer
 *   inner, to every KRA of the record's KRA set, containing the user's
 *   private key as PKCS#8.
 * Archival needs only public data (no token login); opening the outer
 * layer needs the CA token and happens only for an approved recovery.
 */
#ifndef P11ESCROW_ARCHIVE_H
#define P11ESCROW_ARCHIVE_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#define ESC_RECORD_ID_LEN 36 /* UUID text */

enum esc_archive_source {
	ESC_SOURCE_IMPORT,
	ESC_SOURCE_ENROLL_CLIENT,
	ESC_SOURCE_ENROLL_SERVER,
};

struct esc_archive_info {
	char id[ESC_RECORD_ID_LEN + 1];
	int foreign;	    /* issued by another CA */
	size_t nkras;	    /* size of the KRA set */
	unsigned threshold; /* KRAs of the set needed to recover it (policy kra_threshold; 1: any one) */
	char kras[256];	    /* their names, comma-separated */
};

/*
 * Archive key for cert.  Before anything is written: the key must match the
 * certificate's public key (MISMATCH); the certificate must allow encryption
 * — signing keys are never archived (POLICY); it must be ours or foreign
 * issuers allowed by policy (POLICY); neither certificate nor key may be
 * archived already (ARCHIVED, naming the record); enough active KRAs must exist
 * (STATE).  Writes in its own transaction, or in the caller's if one is open.
 * actor (an account name, or the enrollment client) is recorded in the audit
 * trail with the outcome, refusals included.
 * Errors: those, and DB, CRYPTO, SCHEMA_OLD.
 */
enum esc_err esc_archive_key(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert, EVP_PKEY *key,
			     enum esc_archive_source source, struct esc_archive_info *info) ESC_MUST_CHECK;

#define ESC_ARCHIVE_REASON_MAX 1024

/* One key of esc_archive_keys: given cert and key (borrowed); result, reason and info come back. */
struct esc_archive_item {
	X509 *cert;
	EVP_PKEY *key;
	enum esc_err result;		     /* ESC_OK: archived (committed) */
	char reason[ESC_ARCHIVE_REASON_MAX]; /* why not, when result is not ESC_OK */
	struct esc_archive_info info;	     /* when archived */
};

/* Keys esc_archive_keys takes at once. */
#define ESC_ARCHIVE_KEYS_MAX 500

/*
 * Archive items[0..n) (n at most ESC_ARCHIVE_KEYS_MAX) for actor, each with
 * every check of esc_archive_key and the same audit events, but as one
 * batch: policy, KRAs and the storage key read once, the duplicate check
 * one statement, the records, their KRA rows and the audit events written
 * in one transaction of a few statements.  Each item gets its own result:
 * a refused or already archived key does not hold up the others.  A race
 * the batch loses (a KRA retired, a storage key rotated, the same key
 * archived meanwhile) is resolved by running it again, and finally key by
 * key.  Not in a caller's transaction (USAGE).
 * Returns OK when every item has its result; otherwise the error that kept
 * the batch from committing (DB, DB_CONNECT, BUSY, SCHEMA_OLD, ...), and
 * then no item of it is archived — except after DB_CONNECT saying the
 * COMMIT's outcome is unknown: a run again then reports the archived ones
 * as already archived.
 */
enum esc_err esc_archive_keys(struct esc_ctx *ctx, struct esc_store *st, const char *actor,
			      enum esc_archive_source source, struct esc_archive_item *items, size_t n) ESC_MUST_CHECK;

#endif
