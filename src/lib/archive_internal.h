/* Internal to the library: the archive record's sealed content, for archive.c and its fuzz target. */
#ifndef P11ESCROW_ARCHIVE_INTERNAL_H
#define P11ESCROW_ARCHIVE_INTERNAL_H

#include <stddef.h>

#include <libpq-fe.h>
#include <openssl/x509.h>

#include <p11escrow/archive.h>
#include <p11escrow/audit.h>
#include <p11escrow/ctx.h>
#include <p11escrow/envelope.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>

#include "internal.h"

/* The source's name as records and audit events spell it: "import", "enroll-client", "enroll-server". */
const char *esc_archive_source_name(enum esc_archive_source s);

#define ESC_KEK_LEN 32 /* a version 2 record's KEK, and so each of its shares */

/* One share of a version 2 record (docs/archival.md, "Record version 2"). */
struct esc_record_share {
	unsigned char kra_cert_sha256[32]; /* SHA-256 of the DER certificate of the KRA it is sealed to */
	unsigned x;			   /* its gfshare coefficient: 1..255 */
	unsigned char commitment[32];	   /* SHA-256 of its plaintext (esc_share_plain_encode) */
	unsigned char *sealed;		   /* malloc'd: CMS AuthEnvelopedData of the plaintext to the KRA */
	size_t sealedlen;
};

/* k and the n shares of a version 2 record; 2 <= threshold <= n <= 16. */
struct esc_record_shares {
	unsigned threshold;
	size_t n;
	struct esc_record_share share[16];
};

/* Free sh and its sealed shares; accepts NULL. */
void esc_record_shares_free(struct esc_record_shares *sh);

/*
 * Check the content of a record's outer layer (DER EscrowRecord, decrypted
 * with the storage key) against the row it was read from — version 1 or 2,
 * the row's id, the row's certificate hash (64 lower-case hex digits) — and
 * copy out the inner layer into *inner (malloc'd; the caller frees it):
 * version 1, the CMS envelope to the KRAs; version 2, the CMS envelope to
 * the record's KEK.  A version 2 record's shares go to *shares (malloc'd,
 * esc_record_shares_free) when shares is non-NULL, which is then NULL for
 * version 1; they are checked whether or not the caller takes them.
 * Anyone holding the storage certificate can seal content, so this is
 * outside input.  Errors: TAMPERED (not one DER EscrowRecord, another
 * row's or another certificate's, a version 1 with shares or a version 2
 * without, shares out of bounds or at one x twice), NOMEM.
 */
enum esc_err esc_record_parse(struct esc_ctx *ctx, const unsigned char *content, size_t contentlen, const char *id,
			      const char *cert_hash, unsigned char **inner, size_t *innerlen,
			      struct esc_record_shares **shares) ESC_MUST_CHECK;

/*
 * The DER EscrowRecord binding id and the certificate hash (32 bytes) to
 * inner: version 1 when sh is NULL, else version 2 carrying sh.  *out is
 * OPENSSL_malloc'd (OPENSSL_free).  Errors: CRYPTO.
 */
enum esc_err esc_record_encode(struct esc_ctx *ctx, const char *id, const unsigned char cert_sha[32],
			       const unsigned char *inner, size_t innerlen, const struct esc_record_shares *sh,
			       unsigned char **out, int *outlen) ESC_MUST_CHECK;

/*
 * A share's plaintext: DER ShareInfo {recordId, x, threshold, share}, in
 * secure memory (*out: OPENSSL_secure_clear_free).  Errors: CRYPTO, NOMEM.
 */
enum esc_err esc_share_plain_encode(struct esc_ctx *ctx, const char *id, unsigned x, unsigned k,
				    const unsigned char *share, size_t sharelen, unsigned char **out,
				    size_t *outlen) ESC_MUST_CHECK;

/*
 * Parse a decrypted share's plaintext and check that it is record id's
 * share at x for threshold k; copy its ESC_KEK_LEN share bytes to share
 * (the caller's secure memory).  Errors: TAMPERED (malformed, another
 * record's, another x or k).
 */
enum esc_err esc_share_plain_parse(struct esc_ctx *ctx, const unsigned char *plain, size_t plainlen, const char *id,
				   unsigned x, unsigned k, unsigned char share[ESC_KEK_LEN]) ESC_MUST_CHECK;

/*
 * What archival derives from a certificate and stores beside it in
 * archive_records, computed exactly as archival computes it (archival itself
 * uses this): cert_serial (esc_cert_serial_hex), issuer and subject
 * (esc_name_to_string), email (the first X509_get1_email address, NULL if
 * none), cert_sha256 (SHA-256 of the DER certificate) and
 * public_key_sha256 (SHA-256 of the DER SubjectPublicKeyInfo), as lower-case
 * hex.  Everything a person sees or decides on comes from these, never from
 * the columns, which any database writer can change.
 */
struct esc_archive_fields {
	char *serial, *issuer, *subject, *email; /* malloc'd; email NULL if the certificate has none */
	char cert_sha256[65], public_key_sha256[65];
	unsigned char cert_sha256_raw[32];
};

/* Derive *f from cert.  On failure *f is all NULL.  Errors: NOMEM, CRYPTO. */
enum esc_err esc_archive_fields_of(struct esc_ctx *ctx, X509 *cert, struct esc_archive_fields *f) ESC_MUST_CHECK;
/* Free what *f holds and zero it; accepts a zeroed or cleared *f. */
void esc_archive_fields_clear(struct esc_archive_fields *f);

/*
 * One archive_records row as a query returned it (libpq text values, owned
 * by the result): the id, the derived columns and the certificate (bytea in
 * libpq's text form).  email is NULL when the column is.
 */
struct esc_archive_row {
	const char *id, *serial, *issuer, *subject, *email, *cert_sha256, *public_key_sha256, *certificate;
};

/*
 * The columns a query selects for esc_archive_row_get, in its order, from
 * archive_records aliased "a".  Keep the two together.
 */
#define ESC_ARCHIVE_ROW_SQL \
	"a.id, a.cert_serial, a.issuer, a.subject, a.email, a.cert_sha256, a.public_key_sha256, a.certificate"
#define ESC_ARCHIVE_ROW_NCOLS 8

/* Row row of res, whose columns col .. col + ESC_ARCHIVE_ROW_NCOLS - 1 are ESC_ARCHIVE_ROW_SQL. */
void esc_archive_row_get(const PGresult *res, int row, int col, struct esc_archive_row *out);

/*
 * Compare the derived columns of row with f, derived from the row's
 * certificate (esc_archive_fields_of).  No database, no token.
 * Errors: TAMPERED, naming the record and every column that disagrees.
 */
enum esc_err esc_archive_row_compare(struct esc_ctx *ctx, const struct esc_archive_row *row,
				     const struct esc_archive_fields *f) ESC_MUST_CHECK;

/*
 * Decode row's certificate, derive its fields and compare the row with
 * them (esc_archive_row_compare): a row relabelled by a database writer —
 * serial, subject, email or issuer of another certificate, or another
 * certificate with the old hashes — is refused here.  On success,
 * optionally, *cert is the decoded certificate (caller X509_frees) and
 * *truth what it says (caller esc_archive_fields_clear); both come from the
 * certificate, never from the columns.  This checks the row against its
 * own certificate only; that the certificate is the one the key was sealed
 * with is esc_archive_open_outer's check (it needs the storage key).
 * Errors: TAMPERED (columns disagree, certificate column not one DER
 * certificate), NOMEM, CRYPTO.
 */
enum esc_err esc_archive_row_check(struct esc_ctx *ctx, const struct esc_archive_row *row, X509 **cert,
				   struct esc_archive_fields *truth) ESC_MUST_CHECK;

/*
 * Open the outer layer of record id with the storage key of the record's
 * generation (esc_archive_storage_key) on the CA token (logged in) and
 * check that it belongs to that row.  First the row must
 * match its certificate column (serial, issuer, subject, email and both
 * hashes as archival derived them); then the certificate hash sealed in the
 * record must be the hash of that certificate column itself, so neither
 * relabelled columns nor a certificate moved in from another row pass.
 * *inner is the DER of the inner layer (ciphertext to the KRA set;
 * malloc'ed, caller frees).  Library-internal callers only do this for an
 * approved recovery.  A version 2 record's shares go to *shares (NULL for
 * version 1); with shares NULL a version 2 record is refused (STATE).
 * Errors: NOT_FOUND, TAMPERED (GCM tag, a record moved between rows, a row
 * that does not match its certificate, a certificate other than the sealed
 * one), NOT_RECIPIENT (the generation column names another key),
 * KEY_NOT_FOUND, PKCS11, NOMEM, CRYPTO, DB.
 */
enum esc_err esc_archive_open_outer(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, const char *id,
				    unsigned char **inner, size_t *innerlen,
				    struct esc_record_shares **shares) ESC_MUST_CHECK;

/* Is s a record id in PostgreSQL's text form (a lower-case UUID), or ""?  A batch's cursor. */
int esc_archive_id_text_ok(const char *s);

/*
 * The columns esc_archive_open_row reads, in its order, from
 * archive_records aliased "a": the record (hex), its storage generation,
 * then ESC_ARCHIVE_ROW_SQL.  A query may select more after them.
 */
#define ESC_ARCHIVE_OPEN_SQL "encode(a.record, 'hex'), a.storage_generation, " ESC_ARCHIVE_ROW_SQL
#define ESC_ARCHIVE_OPEN_NCOLS (2 + ESC_ARCHIVE_ROW_NCOLS)

/*
 * esc_archive_open_outer on row i of res (columns ESC_ARCHIVE_OPEN_SQL),
 * for a caller that selected (and locked) the rows itself.  Optionally
 * *cert (X509_free) and *fields (esc_archive_fields_clear): the row's
 * certificate and what it says, as esc_archive_row_check gives them.
 * Errors: as esc_archive_open_outer but NOT_FOUND.
 */
enum esc_err esc_archive_open_row(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
				  const PGresult *res, int i, X509 **cert, struct esc_archive_fields *fields,
				  unsigned char **inner, size_t *innerlen,
				  struct esc_record_shares **shares) ESC_MUST_CHECK;

/*
 * The storage key of generation (sql/012): its RFC 7512 URI on the CA
 * token into uri (urilen bytes) and its certificate (*cert: a new
 * reference, shared with st's certificate cache: read it, never change
 * it; X509_free it).  The current key is token_keys' 'storage' row, an
 * earlier one a row of retired_storage_keys.  Errors: KEY_NOT_FOUND (no
 * such generation recorded), BAD_INPUT (unreadable certificate, URI too
 * long), DB.
 */
enum esc_err esc_archive_storage_key(struct esc_ctx *ctx, struct esc_store *st, int generation, char *uri,
				     size_t urilen, X509 **cert) ESC_MUST_CHECK;

/* ---- Shared by archival and the KRA re-wrap (rewrap.c) ------------------------------------------------------ */

#define ESC_KRA_SET_MAX 16 /* policy kra_set_size's maximum */

/* A record's KRA set as archival seals to it: ids, names, recipient forms, certificates (owned). */
struct esc_kra_set {
	size_t n;
	long long ids[ESC_KRA_SET_MAX];
	char names[ESC_KRA_SET_MAX][65];
	char recipient[ESC_KRA_SET_MAX][24];
	X509 *certs[ESC_KRA_SET_MAX];
	enum esc_oaep_hash hashes[ESC_KRA_SET_MAX];
};
/* Free the certificates and empty ks. */
void esc_kra_set_clear(struct esc_kra_set *ks);

/*
 * Fill ks (empty) with policy kra_set_size KRAs: active, certificate
 * unrevoked and unexpired, locked FOR SHARE until the caller's transaction
 * ends (none is retired under it).  First those of keep[0..nkeep) that
 * qualify, in keep's order (a re-wrap keeps a record's valid members), then
 * others at random (RAND_bytes).  Errors: CONFIG (kra_set_size), STATE
 * (too few valid KRAs), BAD_INPUT (unreadable KRA certificate), CRYPTO, DB.
 */
enum esc_err esc_archive_choose_kras(struct esc_ctx *ctx, struct esc_store *st, const long long *keep, size_t nkeep,
				     struct esc_kra_set *ks) ESC_MUST_CHECK;

/* Policy kra_threshold k for a set of nkras: 1..nkras.  Errors: CONFIG, DB. */
enum esc_err esc_archive_threshold(struct esc_ctx *ctx, struct esc_store *st, size_t nkras, unsigned *k) ESC_MUST_CHECK;

/*
 * The inner layer of record id for the PKCS#8 key p8 (secure memory) and
 * set ks: k = 1, version 1 (one envelope to every KRA of the set; *shares
 * NULL); k > 1, version 2 (the key under a fresh KEK split k of n, one
 * sealed share per KRA; *shares esc_record_shares_free).  *inner malloc'd
 * (free()).  The KEK and shares live in secure memory only and are wiped.
 * Errors: CRYPTO, NOMEM, USAGE.
 */
enum esc_err esc_archive_seal_inner(struct esc_ctx *ctx, const char *id, const unsigned char *p8, size_t p8len,
				    const struct esc_kra_set *ks, unsigned k, unsigned char **inner, size_t *innerlen,
				    struct esc_record_shares **shares) ESC_MUST_CHECK;

/* Insert record id's archive_record_kras rows for ks (in the caller's transaction).  Errors: DB. */
enum esc_err esc_archive_insert_kras(struct esc_ctx *ctx, struct esc_store *st, const char *id,
				     const struct esc_kra_set *ks) ESC_MUST_CHECK;

/*
 * The current storage certificate (a reference: X509_free) and its
 * generation (decimal, into generation[len]), read in one statement.
 * Errors: STATE (none recorded), BAD_INPUT, DB.
 */
enum esc_err esc_archive_current_storage(struct esc_ctx *ctx, struct esc_store *st, X509 **cert, char *generation,
					 size_t len) ESC_MUST_CHECK;

/*
 * Open share e of version 2 record id (threshold k) with key, the private
 * key of the KRA certificate cert the share is sealed to; check it against
 * its commitment and its binding (record, x, k) before anything uses it;
 * its ESC_KEK_LEN bytes go to share (the caller's secure memory).
 * Errors: NOT_RECIPIENT, CRYPTO, BAD_INPUT (does not open), TAMPERED
 * (commitment or binding).
 */
enum esc_err esc_share_open(struct esc_ctx *ctx, const char *id, unsigned k, const struct esc_record_share *e,
			    EVP_PKEY *key, X509 *cert, unsigned char share[ESC_KEK_LEN]) ESC_MUST_CHECK;

/*
 * Combine k opened shares (xs[i], shares[i]) into record id's KEK and open
 * the inner layer with it: *p8 in secure memory (esc_envelope_plain_free).
 * The KEK is wiped.  Errors: TAMPERED (wrong shares or altered layer),
 * USAGE, NOMEM, BAD_INPUT.
 */
enum esc_err esc_shares_open_inner(struct esc_ctx *ctx, const char *id, const unsigned char *xs,
				   unsigned char *const *shares, unsigned k, const unsigned char *inner,
				   size_t innerlen, unsigned char **p8, size_t *p8len) ESC_MUST_CHECK;

/* --- archival's steps, shared by esc_archive_key and esc_archive_keys (archive_batch.c) --- */

/* Key type (ktype[len], e.g. "ec-p256"), key matches cert, cert allows encryption.  Errors: BAD_INPUT, MISMATCH, POLICY. */
enum esc_err esc_archive_check_key(struct esc_ctx *ctx, X509 *cert, EVP_PKEY *key, char *ktype,
				   size_t len) ESC_MUST_CHECK;
/* Policy kra_set_size.  Errors: CONFIG, DB. */
enum esc_err esc_archive_set_size(struct esc_ctx *ctx, struct esc_store *st, long *want) ESC_MUST_CHECK;
/* The KRAs a set may be drawn from (id, name, recipient, certificate), locked FOR SHARE.  Errors: DB. */
enum esc_err esc_archive_kras_query(struct esc_ctx *ctx, struct esc_store *st, PGresult **res) ESC_MUST_CHECK;
/* esc_archive_choose_kras from rows first.. of res, with esc_archive_kras_query's columns first. */
enum esc_err esc_archive_kras_pick(struct esc_ctx *ctx, struct esc_store *st, const PGresult *res, int first, long want,
				   const long long *keep, size_t nkeep, struct esc_kra_set *ks) ESC_MUST_CHECK;

/*
 * What archiving reads before it seals, in one statement
 * (esc_archive_env_load): the active CA, policy allow_foreign_issuers,
 * kra_set_size and kra_threshold, the KRAs a set may be drawn from (locked
 * FOR SHARE), the storage certificate and its generation and, for one key,
 * a record that already holds its certificate or key.  What is missing or
 * wrong is kept as an error for the step that needs it (ca_err for the
 * issuer check, wrap_err for sealing), so each caller refuses in its order.
 */
struct esc_archive_env {
	PGresult *res;	   /* row 0: the rest; rows 1..: the KRAs (esc_archive_kras_pick with first = 1) */
	X509 *ca;	   /* NULL: ca_err says why */
	int allow_foreign; /* policy allow_foreign_issuers; -1: unset */
	long set_size;
	unsigned k;
	X509 *storage;
	char generation[16];
	char archived_id[ESC_RECORD_ID_LEN + 1]; /* the record holding the key already; "" if none */
	int archived_same_cert;			 /* ... with the same certificate (else the same key) */
	enum esc_err ca_err, wrap_err;
	char ca_msg[ESC_ERRMSG_MAX], wrap_msg[ESC_ERRMSG_MAX];
};

/*
 * Load *e (zeroed) in one statement.  f: the key whose record is looked for
 * (NULL: none).  audit_lock: also take the audit lock for the caller's
 * transaction, after the KRAs' row locks (the order every writer keeps), so
 * that the caller's next statement may reserve audit ids
 * (ESC_AUDIT_RESERVE_SQL).  Errors: DB, BUSY (the statement failed); each
 * refusal is in e.
 */
enum esc_err esc_archive_env_load(struct esc_ctx *ctx, struct esc_store *st, const struct esc_archive_fields *f,
				  int audit_lock, struct esc_archive_env *e) ESC_MUST_CHECK;
/*
 * One more audit event to append with a record's archive.store event, in
 * the same statement: fill() writes it once the record's id is known
 * (the strings it points to must outlive the call of esc_archive_key_and).
 */
struct esc_archive_also {
	void (*fill)(void *arg, const char *record_id, struct esc_audit_event *ev);
	void *arg;
};
/* esc_archive_key, appending also's event (NULL: none) after archive.store. */
enum esc_err esc_archive_key_and(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert,
				 EVP_PKEY *key, enum esc_archive_source source, const struct esc_archive_also *also,
				 struct esc_archive_info *info) ESC_MUST_CHECK;

/* Free what *e holds and zero it. */
void esc_archive_env_clear(struct esc_archive_env *e);
/* *foreign: cert not issued by e's CA; refused when e has no CA or policy forbids a foreign issuer. */
enum esc_err esc_archive_env_issuer(struct esc_ctx *ctx, const struct esc_archive_env *e, X509 *cert,
				    int *foreign) ESC_MUST_CHECK;

/* Records written by one statement at most (multi-row INSERT: 15 parameters each). */
#define ESC_ARCHIVE_BATCH_MAX 1000

/* A record to be written: its columns, then its sealed record (esc_archive_seal_record). */
struct esc_archive_new {
	char id[ESC_RECORD_ID_LEN + 1]; /* drawn by esc_archive_seal_record */
	const struct esc_archive_fields *f;
	const char *key_type;
	int foreign;
	enum esc_archive_source source;
	unsigned char *cder; /* the certificate's DER (OPENSSL_free) */
	int clen;
	const char *generation; /* storage key generation the record is sealed to */
	const struct esc_kra_set *ks;
	unsigned k;
	unsigned char *outer; /* the sealed record (free) */
	size_t outerlen;
	char version_text[8], k_text[8];
};
/* Draw n's id and seal key into n->outer: inner layer to n->ks (k of them), outer to storage.  Errors: CRYPTO, NOMEM. */
enum esc_err esc_archive_seal_record(struct esc_ctx *ctx, struct esc_archive_new *n, EVP_PKEY *key,
				     X509 *storage) ESC_MUST_CHECK;
/* Free n's certificate DER and sealed record. */
void esc_archive_new_clear(struct esc_archive_new *n);
/*
 * Insert rows[0..n) and their archive_record_kras rows in one statement, in
 * the caller's transaction.  nevents > 0: the same statement reserves that
 * many audit event ids (ESC_AUDIT_RESERVE_SQL; the audit lock must be held
 * already), *events for esc_audit_append_reserved.  Errors: DB, ARCHIVED, BUSY.
 */
enum esc_err esc_archive_insert_rows(struct esc_ctx *ctx, struct esc_store *st, struct esc_archive_new *rows, size_t n,
				     size_t nevents, PGresult **events) ESC_MUST_CHECK;
/* The archive.store audit event of n (details written to details[len], which ev points to). */
void esc_archive_event(const struct esc_archive_new *n, const char *actor, char *details, size_t len,
		       struct esc_audit_event *ev);
/* What the caller is told of n. */
void esc_archive_info_of(const struct esc_archive_new *n, struct esc_archive_info *info);

#endif
