/*
 * p11escrow — storage key generations: rotation and the re-seal job
 * (issue #14, "Storage key rotation"; docs/archival.md, "Storage key
 * generations").
 *
 * Every archive record's outer layer is sealed to the storage key, a
 * decryption key on the CA token.  Rotation makes a new one (generation
 * n + 1) beside the old: new records are sealed to it from then on, and the
 * old key stays on the token, recorded in retired_storage_keys, for the
 * records still sealed to it.  The re-seal job then moves every such record
 * to the current key, batch by batch: it opens the outer layer with the key
 * of the record's generation, checks the EscrowRecord inside exactly as a
 * recovery does, and seals the same content to the current storage
 * certificate.  The inner layer (to the KRAs) is not touched, so no KRA
 * card is needed, and nothing but the inner ciphertext is ever in clear.
 * Both run where the CA token is logged in: the keeper (keeper.h).
 */
#ifndef P11ESCROW_STORAGE_H
#define P11ESCROW_STORAGE_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/archive.h>
#include <p11escrow/auth.h>
#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#define ESC_RESEAL_BATCH_MAX 1000 /* records per batch: one batch is one short transaction */

/* One storage key generation, as esc_storage_list reports it. */
struct esc_storage_gen {
	int generation;
	int current;	    /* the key new records are sealed to */
	char key_type[16];  /* "ec-p256", "rsa3072", ... */
	char key_label[72]; /* CKA_LABEL */
	char key_id[72];    /* CKA_ID, lower-case hex */
	char token_label[40];
	char uri[1024];			       /* RFC 7512, no PIN */
	char fingerprint[ESC_FINGERPRINT_MAX]; /* of its certificate */
	char created[32];		       /* when it became current, UTC */
	char retired[32];		       /* when it was replaced, UTC; "" for the current one */
	char retired_by[65];		       /* who rotated it out; "" for the current one */
	long long records;		       /* archive records sealed to it now */
};

/*
 * Every generation, newest (the current one) first, with the number of
 * records sealed to each.  *out is malloc'ed (free()), *n entries.
 * Errors: STATE (no storage key recorded: setup has not run), DB, NOMEM.
 */
enum esc_err esc_storage_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_storage_gen **out,
			      size_t *n) ESC_MUST_CHECK;

/* What a rotation made. */
struct esc_storage_rotation {
	int from, to; /* generations */
	char key_type[16];
	char key_label[72];
	char key_id[72]; /* hex */
	char uri[1024];
	char serial[72]; /* of the new storage certificate, hex */
	char fingerprint[ESC_FINGERPRINT_MAX];
};

/*
 * Rotate the storage key, for administrator by: generate a new key pair on
 * tok (the CA token, logged in) of type (NULL: the current key's type) for
 * decryption only, sensitive and never extractable, as setup makes it
 * (label "p11escrow storage key N"); issue its certificate from ca_cert
 * with signer (the CA key on tok), valid days (capped at the CA's); then
 * in ONE transaction move the current key to retired_storage_keys, make
 * the new one current (generation + 1), record the certificate and write
 * the storage-key.rotate audit event.  Records already sealed stay sealed
 * to the earlier key until `rewrap --storage` re-seals them
 * (esc_storage_reseal_batch).  The transaction holds a SHARE lock on
 * archive_records while it commits, so no archival reads the old
 * certificate and commits after it (sql/012).  If anything fails after the
 * key was generated, the key is destroyed again: nothing half-made stays
 * on the token or in the database.  (Only when the connection is lost
 * while committing is the outcome unknown; then the key is kept, and the
 * message says to check `storage-key list`.)  A refusal is audited.
 * Errors: DENIED (not an administrator), USAGE (key type), STATE (no active
 * CA or storage key, a rotation at the same time), MECHANISM, PKCS11,
 * CRYPTO, DB, BUSY.
 */
enum esc_err esc_storage_rotate(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by,
				struct esc_token *tok, X509 *ca_cert, EVP_PKEY *signer, const char *type, int days,
				struct esc_storage_rotation *out) ESC_MUST_CHECK;

/* One record a batch skipped: it failed the checks a recovery makes (or its generation's key is gone). */
struct esc_reseal_skip {
	char id[ESC_RECORD_ID_LEN + 1];
	enum esc_err code; /* TAMPERED, NOT_RECIPIENT, BAD_INPUT, CRYPTO, KEY_NOT_FOUND */
	char reason[256];
};

/* What one batch did. */
struct esc_reseal_batch {
	size_t resealed;		  /* records now sealed to the current key */
	size_t skipped;			  /* records left as they were: skips[0..skipped) */
	struct esc_reseal_skip *skips;	  /* malloc'ed by the batch; esc_reseal_batch_clear frees it */
	int to;				  /* the current generation */
	int from_low, from_high;	  /* generations of the records looked at (0: none) */
	char last[ESC_RECORD_ID_LEN + 1]; /* the last record looked at, "" if none: the next batch's after */
	long long remaining;		  /* records of earlier generations after this batch (all jobs) */
};
void esc_reseal_batch_clear(struct esc_reseal_batch *b);

/*
 * One batch of the re-seal job, for administrator by (NULL: the holder of
 * the CA token PIN, the CLI's local mode), with tok (the CA token, logged
 * in) holding every storage key generation: up to n (1..
 * ESC_RESEAL_BATCH_MAX) records of earlier generations whose id sorts
 * after after (NULL or "": from the first), picked in id order with
 * SELECT ... FOR UPDATE SKIP LOCKED, so two jobs never take the same
 * record and neither waits for the other, nor for enrollment or recovery.
 * Each record must match its certificate (esc_archive_row_check), its outer
 * layer must open with its generation's key and hold this row's
 * EscrowRecord (esc_record_parse): then the same content is sealed to the
 * current storage certificate (whose key must be on tok and be the CA's
 * storage certificate's) and the row's record and storage_generation are
 * updated.  A record that fails is skipped, never rewritten: reported in
 * *out and audited on its own (rewrap.storage, refused, object its id).
 * The batch commits as one transaction (READ COMMITTED) with one
 * rewrap.storage event counting what it did: a crash at any moment leaves
 * each record either sealed as before or re-sealed, and the next run goes
 * on.  Damaged records do not fail the batch; *out says how many.
 * *out is the caller's (esc_reseal_batch_clear).
 * Errors: DENIED (not an administrator), USAGE (n, after), STATE (no
 * storage key), KEY_NOT_FOUND/MISMATCH (the current key is not on the
 * token), PKCS11, DB, BUSY, NOMEM.
 */
enum esc_err esc_storage_reseal_batch(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by,
				      struct esc_token *tok, const char *after, size_t n,
				      struct esc_reseal_batch *out) ESC_MUST_CHECK;

/* Records sealed to a storage key of an earlier generation (all of them).  Errors: DB. */
enum esc_err esc_storage_remaining(struct esc_ctx *ctx, struct esc_store *st, long long *n) ESC_MUST_CHECK;

/*
 * The current storage certificate (*cert, a reference: X509_free) and its
 * generation, checked before anything is sealed to it: issued by this
 * CA's active certificate, and its key on tok (the CA token) — a database
 * writer who put another certificate in token_keys would otherwise have
 * records moved to a key of theirs.  Errors: STATE (none recorded),
 * BAD_INPUT, MISMATCH, KEY_NOT_FOUND, PKCS11, DB.
 */
enum esc_err esc_storage_current(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *tok, X509 **cert,
				 int *generation) ESC_MUST_CHECK;

#endif
