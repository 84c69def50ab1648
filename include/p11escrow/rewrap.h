/*
 * p11escrow — re-wrap of the KRA layer (issue #14, "Re-wrap, online and
 * resumable"; docs/archival.md, "Re-wrapping the KRA layer").
 *
 * A record's inner layer is sealed to its KRA set (version 1: any one
 * card opens it; version 2: k of the set's cards, a Shamir share each).
 * When a KRA is retired, revoked or its certificate expires, when policy
 * kra_set_size or kra_threshold changes, or when a KRA's recipient form
 * is no longer the one its record was sealed in, the record is re-wrapped:
 * opened with k cards of its CURRENT set, sealed again to the set and
 * threshold current policy would choose (the record's valid members kept,
 * the rest drawn at random, as archival draws them), the outer layer
 * sealed to the current storage key, and the row replaced — record,
 * storage generation and KRA set — in one short transaction per batch.
 *
 * Opening keys is never one person's act: the job runs for an
 * administrator account and is given the cards of KRA accounts that have
 * each logged in, all distinct identities, none of them the administrator.
 * The user's key, a version 2 record's KEK and shares exist in clear only
 * in OpenSSL's secure heap, and only while one record is re-wrapped.
 */
#ifndef P11ESCROW_REWRAP_H
#define P11ESCROW_REWRAP_H

#include <stddef.h>

#include <openssl/x509.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/storage.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

/* Why a record's KRA layer is not what current policy would write (a record may have several). */
enum esc_rewrap_reason {
	ESC_REWRAP_RETIRED,   /* its set holds a retired KRA */
	ESC_REWRAP_REVOKED,   /* ... a KRA whose certificate is revoked (lost or compromised card) */
	ESC_REWRAP_EXPIRED,   /* ... a KRA whose certificate has expired */
	ESC_REWRAP_SET_SIZE,  /* its set is not kra_set_size KRAs */
	ESC_REWRAP_THRESHOLD, /* it needs another number of KRAs than kra_threshold (version 1: 1) */
	ESC_REWRAP_RECIPIENT, /* a member's recipient form is no longer the KRA's (kras.recipient) */
	ESC_REWRAP_NREASONS
};

/* The reason's words, as --dry-run prints them ("retired KRA", ...). */
const char *esc_rewrap_reason_name(enum esc_rewrap_reason r);

/* What a re-wrap would do now: no card, no token. */
struct esc_rewrap_plan {
	long long records;			  /* archive records in all */
	long long needed;			  /* of them, those whose KRA layer is to be re-wrapped */
	long long by_reason[ESC_REWRAP_NREASONS]; /* records per reason (a record may count under several) */
	int set_size;				  /* policy kra_set_size */
	unsigned threshold;			  /* policy kra_threshold */
	int usable;				  /* KRAs a new set may be drawn from (active, valid certificate) */
};

/*
 * The plan (--dry-run), for an administrator by.  Counts come from the
 * rows beside the records (archive_record_kras, kras, wrap_version), not
 * from the sealed records: see docs/archival.md for what that means.
 * Errors: DENIED (audited), DB, BAD_INPUT (unreadable KRA certificate).
 */
enum esc_err esc_rewrap_kra_plan(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by,
				 struct esc_rewrap_plan *out) ESC_MUST_CHECK;

struct esc_rewrap_job;

/*
 * A re-wrap job for administrator admin (borrowed, must outlive the job)
 * with ca_tok (the CA token, logged in: it opens and seals the outer
 * layer).  Cards are added with esc_rewrap_job_add_card.
 * Errors: DENIED (not an administrator; audited rewrap.kra refused),
 * USAGE, NOMEM.
 */
enum esc_err esc_rewrap_job_new(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
				struct esc_token *ca_tok, struct esc_rewrap_job **out) ESC_MUST_CHECK;
/* Free job (accepts NULL); the accounts and tokens given are the caller's. */
void esc_rewrap_job_free(struct esc_rewrap_job *job);

/*
 * Give the job the card of the KRA account kra (logged in; borrowed, must
 * outlive the job) on token card (logged in; borrowed).  The account must
 * hold the KRA role and be neither the job's administrator nor the
 * account of a card given before, and its KRA not a KRA given before:
 * dual control is distinct people.  The card must hold the KRA's key
 * (kras.key_uri), the key of its certificate.  A retired KRA's card may
 * be given: it opens records still sealed to it, and nothing is ever
 * sealed to it again.  Errors: DENIED (audited), KEY_NOT_FOUND,
 * MISMATCH, PKCS11, DB, USAGE (more than 16 cards).
 */
enum esc_err esc_rewrap_job_add_card(struct esc_ctx *ctx, struct esc_rewrap_job *job, const struct esc_account *kra,
				     struct esc_token *card) ESC_MUST_CHECK;

/*
 * One audit event for the job as a whole (rewrap.kra, object "job"):
 * what "start" or "stop", details free text (never a secret); the actor
 * is the administrator, the details name every card's KRA and account.
 * Errors: DB.
 */
enum esc_err esc_rewrap_job_event(struct esc_ctx *ctx, struct esc_rewrap_job *job, const char *what,
				  const char *details) ESC_MUST_CHECK;

/*
 * One batch: up to n (1..ESC_RESEAL_BATCH_MAX) records whose KRA layer is
 * to be re-wrapped (esc_rewrap_kra_plan's rule) and whose id sorts after
 * after (NULL or "": from the first), in id order, picked with SELECT ...
 * FOR UPDATE SKIP LOCKED (enrollment, recovery and another job go on).
 * Each record must match its certificate and its outer layer hold this
 * row's EscrowRecord (as a recovery checks); it is opened with the cards
 * given (version 1: one card of its set; version 2: k of them, each share
 * checked against its commitment before combining), the key checked
 * against the certificate, and sealed again — same record id, same
 * certificate hash — to a new set (its valid members kept, a KRA named by
 * a pending or approved recovery request first), at policy's threshold,
 * then to the current storage key (esc_storage_current).  The row's
 * record, storage generation, record_version and wrap_version and its
 * archive_record_kras rows are replaced in the batch's one transaction,
 * with one rewrap.kra event counting what it did and naming the KRAs whose
 * cards opened records; a crash at any moment leaves each record wrapped
 * as before or as after.  A record the cards cannot open is skipped with
 * CARDS_NEEDED and the KRAs it needs; a damaged one with TAMPERED,
 * MISMATCH, ... as esc_storage_reseal_batch; each skip is audited on its
 * own and leaves the record as it was.  out->resealed counts re-wrapped
 * records, out->to is the storage generation sealed to; out->remaining is
 * counted (all jobs) only when the batch reached the end (out->last ""
 * or fewer than n rows), else -1.
 * Errors: USAGE (n, after), STATE (too few valid KRAs for policy, no
 * storage key), CONFIG (policy), MISMATCH/KEY_NOT_FOUND (storage key),
 * PKCS11, DB, BUSY, NOMEM.
 */
enum esc_err esc_rewrap_kra_batch(struct esc_ctx *ctx, struct esc_rewrap_job *job, const char *after, size_t n,
				  struct esc_reseal_batch *out) ESC_MUST_CHECK;

/* ---- Through the service (docs/archival.md, "Re-wrapping through the service") ----------------------------------
 *
 * The service (p11escrowd) never holds the KRA cards and the workstation
 * that holds them never holds the storage key.  A batch goes:
 *   1. the service picks records that need a re-wrap and that the cards
 *      present can open (esc_rewrap_pick); the keeper opens each one's
 *      outer layer (esc_rewrap_open_record through esc_keeper_rewrap_open);
 *      the service chooses the new set and threshold and records the offer
 *      with the record's hash (esc_rewrap_offers_make);
 *   2. the workstation opens the inner layer with its cards and seals it
 *      again to the offered set (esc_rewrap_offer_seal);
 *   3. the service checks that the new inner layer is addressed to exactly
 *      the offered set, seals the outer layer to the current storage key
 *      and replaces the row if it is still the one offered
 *      (esc_rewrap_commit).
 */

#define ESC_REWRAP_SET_MAX 16 /* policy kra_set_size's maximum */

/* One record offered to the workstation for a re-wrap. */
struct esc_rewrap_offer {
	char id[ESC_RECORD_ID_LEN + 1];
	unsigned char sha[32];	/* SHA-256 of the stored record offered: the commit's concurrency token */
	unsigned char *content; /* malloc'd: the EscrowRecord, outer layer opened, inner layer still sealed */
	size_t contentlen;
	X509 *cert;	    /* the record's certificate (owned) */
	char old_set[1200]; /* the names of the KRAs of its current set, for messages */
	unsigned threshold; /* the new k */
	size_t n;	    /* the new set: n KRAs */
	long long kra_ids[ESC_REWRAP_SET_MAX];
	char kra_names[ESC_REWRAP_SET_MAX][65];
	char recipients[ESC_REWRAP_SET_MAX][24]; /* each one's recipient form (kras.recipient) */
	X509 *kra_certs[ESC_REWRAP_SET_MAX];	 /* owned */
};
/* Free what o holds and zero it; accepts a zeroed o. */
void esc_rewrap_offer_clear(struct esc_rewrap_offer *o);

/*
 * The keeper's step: open record id's outer layer with the storage key on
 * ca_tok, for administrator by, if the record needs a re-wrap
 * (esc_rewrap_kra_plan's rule) and its row is its certificate's (the
 * checks of a recovery).  *content: the record's EscrowRecord, its inner
 * layer still sealed to the KRA cards (malloc'd, free()); sha: SHA-256 of
 * the stored record opened.  Errors: DENIED (audited), STATE (the record
 * needs no re-wrap or is not there), TAMPERED, MISMATCH, KEY_NOT_FOUND,
 * PKCS11, DB, NOMEM.
 */
enum esc_err esc_rewrap_open_record(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
				    const struct esc_account *by, const char *id, unsigned char **content,
				    size_t *contentlen, unsigned char sha[32]) ESC_MUST_CHECK;

/*
 * Dual control through the service: admin an administrator, each of
 * kras[0..n) (1..16) a KRA account with a KRA, none of them admin, no
 * account or KRA twice — the rules of esc_rewrap_job_add_card.  Errors:
 * DENIED (audited), USAGE.
 */
enum esc_err esc_rewrap_check_people(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
				     const struct esc_account *const *kras, size_t n) ESC_MUST_CHECK;

/*
 * Up to n (1..ESC_RESEAL_BATCH_MAX) records after record id after (""
 * from the first), in id order, that need a re-wrap: those that the KRAs
 * of the cards (card_kras[0..ncards), KRA ids) can open go to ids (room
 * for n), the others to out->skips (CARDS_NEEDED, naming the KRAs each
 * needs; audited one by one).  out->last: the last id looked at ("" if
 * none); *end: fewer than n rows were left.  Nothing is locked: the
 * commit checks each record's hash.  Errors: USAGE, DB, NOMEM.
 */
enum esc_err esc_rewrap_pick(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
			     const long long *card_kras, size_t ncards, const char *after, size_t n,
			     char (*ids)[ESC_RECORD_ID_LEN + 1], size_t *nids, struct esc_reseal_batch *out,
			     int *end) ESC_MUST_CHECK;

/*
 * The service's choice for each of offers[0..n), whose id, sha and content
 * (the record the keeper opened and its hash, taken over) the caller set:
 * the new set (its valid members kept, a KRA of a pending or approved
 * recovery request first, the rest drawn as archival draws them) and
 * policy's threshold, filled in and recorded in rewrap_offers for the
 * commit (a stale offer replaced), all in one transaction.  On failure
 * every offer is cleared (esc_rewrap_offer_clear), its content freed.
 * Errors: DENIED, STATE (too few valid KRAs), CONFIG, BAD_INPUT,
 * NOT_FOUND, DB, BUSY, NOMEM.
 */
enum esc_err esc_rewrap_offers_make(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
				    struct esc_rewrap_offer *offers, size_t n) ESC_MUST_CHECK;

/*
 * A job at the workstation: no database, no CA token; its cards are added
 * with esc_rewrap_job_add_remote_card and its records re-sealed with
 * esc_rewrap_offer_seal.  Errors: NOMEM.
 */
enum esc_err esc_rewrap_job_new_remote(struct esc_ctx *ctx, struct esc_rewrap_job **out) ESC_MUST_CHECK;

/*
 * Give a workstation job the card (logged in; borrowed) of KRA kra_id
 * named kra, whose key is key_uri and whose certificates are certs[0..n)
 * (the current one first, then earlier ones of the same key; borrowed,
 * referenced), as the service sent them.  The card's key must be the
 * current certificate's.  Errors: KEY_NOT_FOUND, MISMATCH, PKCS11, USAGE
 * (no certificate, more than 16 cards, a KRA given twice), CRYPTO.
 */
enum esc_err esc_rewrap_job_add_remote_card(struct esc_ctx *ctx, struct esc_rewrap_job *job, long long kra_id,
					    const char *kra, const char *key_uri, X509 *const *certs, size_t n,
					    struct esc_token *card) ESC_MUST_CHECK;

/*
 * The workstation's step: open offer o's inner layer with the job's cards
 * (version 1: one card of its set; version 2: k, each share checked),
 * check the key against the record's certificate, and seal it again to the
 * offered set at the offered threshold: *content is the new EscrowRecord
 * (same id, same certificate hash; malloc'd, free()).  The key, KEK and
 * shares exist in clear only in the secure heap and are wiped.  Errors:
 * CARDS_NEEDED, TAMPERED (the record is not the offer's), MISMATCH,
 * CRYPTO, NOMEM, PKCS11.
 */
enum esc_err esc_rewrap_offer_seal(struct esc_ctx *ctx, struct esc_rewrap_job *job, const struct esc_rewrap_offer *o,
				   unsigned char **content, size_t *contentlen) ESC_MUST_CHECK;

/* One record as the workstation returns it. */
struct esc_rewrap_item {
	char id[ESC_RECORD_ID_LEN + 1];
	unsigned char sha[32];	      /* the offer's */
	const unsigned char *content; /* the new EscrowRecord (borrowed) */
	size_t contentlen;
};

/*
 * The service's last step, for administrator admin with the cards of the
 * KRA accounts kras[0..nkras) (esc_rewrap_check_people again): for each
 * item, its offer must still stand and the record be unchanged since (else
 * it counts in *stale and is left for the next batch); the new record must
 * be the row's (id, certificate hash) and its inner layer addressed to
 * exactly the offered set at the offered threshold (else it is refused:
 * in out->skips, audited, left as it was).  The others are sealed to the
 * current storage key and replaced (p11escrow_rewrap_kra, sql/017) in one
 * transaction with one rewrap.kra event counting what it did.
 * out->resealed counts the records replaced, out->to the storage
 * generation; out->remaining is counted (all jobs) when count is set, else
 * -1.  Errors: DENIED, USAGE, STATE, DB, BUSY, NOMEM.
 */
enum esc_err esc_rewrap_commit(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
			       const struct esc_account *const *kras, size_t nkras, const struct esc_rewrap_item *items,
			       size_t n, int count, struct esc_reseal_batch *out, size_t *stale) ESC_MUST_CHECK;

/* What a workstation needs to use the card of a KRA account: its KRA, key and certificates. */
struct esc_rewrap_card_info {
	long long kra_id;
	char kra[65];
	char key_uri[1024];
	X509 *certs[8]; /* the current certificate, then earlier ones (kra_certificates), newest first; owned */
	size_t ncerts;
};
/*
 * The card info of KRA account kra (a KRA role holder).  Errors:
 * NOT_FOUND (no KRA), BAD_INPUT (unreadable certificate), DB.
 */
enum esc_err esc_rewrap_card_info(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *kra,
				  struct esc_rewrap_card_info *out) ESC_MUST_CHECK;
/* Free what ci holds and zero it. */
void esc_rewrap_card_info_clear(struct esc_rewrap_card_info *ci);

/* A record hash (an offer's sha) as 64 lower-case hex digits, and back: 0, or -1 if text is not that. */
void esc_rewrap_hash_hex(const unsigned char in[32], char out[65]);
int esc_rewrap_hash_parse(const char *text, size_t len, unsigned char out[32]);

#endif
