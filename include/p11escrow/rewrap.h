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

#endif
