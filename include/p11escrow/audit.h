/*
 * p11escrow — the audit trail.
 *
 * Every security event is appended to an append-only, hash-chained table:
 * each event's hash covers its id, time, actor, role, action, object,
 * outcome, details and the previous event's hash, so altering, deleting or
 * reordering rows breaks the chain where it happened.  An event is written
 * in the transaction of the operation it records when there is one, so both
 * commit or neither.  Details never hold a secret.
 *
 * This module knows no accounts: an actor is a name and a roles string.
 * What is done on behalf of a logged-in account (esc_audit_outcome_by,
 * esc_audit_checkpoint_by) and reading the trail, which only an auditor or
 * an administrator may (esc_audit_search, esc_audit_list), are declared in
 * auth.h: the account layer sits above the audit trail.
 */
#ifndef P11ESCROW_AUDIT_H
#define P11ESCROW_AUDIT_H

#include <stddef.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

struct esc_audit_event {
	const char *actor;   /* account name, or "setup" / "ca-token" for the token holder */
	const char *role;    /* the actor's roles */
	const char *action;  /* e.g. "recovery.release" */
	const char *object;  /* serial, record or request id, KRA or account name */
	const char *outcome; /* "ok", "refused", "failed" */
	const char *details; /* free text, never a secret; "" if none */
};

/* Events esc_audit_append_many takes at once. */
#define ESC_AUDIT_MANY_MAX 2000
/*
 * Append ev[0..n) in that order, in the caller's open transaction (USAGE
 * otherwise): the chain's end and n ids in one statement, the events in
 * another.  Errors: USAGE, DB, BUSY (the caller retries its transaction).
 */
enum esc_err esc_audit_append_many(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev,
				   size_t n) ESC_MUST_CHECK;
/* The outcome esc_audit_outcome records for r: "ok", "refused" or "failed". */
const char *esc_audit_outcome_word(enum esc_err r);

/* Append one event (in the open transaction, else in its own).  Errors: USAGE, DB. */
enum esc_err esc_audit_append(struct esc_ctx *ctx, struct esc_store *st,
			      const struct esc_audit_event *ev) ESC_MUST_CHECK;

/*
 * Record the outcome of an operation that returned r, after the fact:
 * "ok", or "refused"/"failed" with the ctx's message as details.  Never
 * changes the ctx's error; a failure to write is logged.  For the failure
 * paths of operations whose transaction was rolled back.
 */
void esc_audit_outcome(struct esc_ctx *ctx, struct esc_store *st, const char *actor, const char *role,
		       const char *action, const char *object, enum esc_err r);

struct esc_audit_report {
	long long events;
	long long checkpoints;
	long long last_signed; /* newest event covered by a checkpoint, 0 if none */
	long long first_bad;   /* id of the first event that fails, 0 if none */
	char problem[256];     /* what is wrong with it */
};

/*
 * Sign the newest event's hash with the audit key on ca_tok (logged in) and
 * store the checkpoint; *event_id is the event it covers.  The checkpoint
 * is then recorded as an event of its own (audit.checkpoint), after the
 * one it signs; a failure is recorded too (refused or failed, with the
 * reason).  The service does this every N events, every T seconds and at
 * shutdown (esc_audit_checkpoint_if_due).
 * Errors: STATE (no events, no audit key), KEY_NOT_FOUND, PKCS11, CRYPTO, DB.
 */
enum esc_err esc_audit_checkpoint(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
				  long long *event_id) ESC_MUST_CHECK;
/*
 * Recompute the whole chain, then check every checkpoint: its signature
 * under the audit certificate (which must chain to the CA certificate) and
 * that the event it signed is still there, unchanged.  ESC_OK with first_bad == 0 when intact; with
 * a broken chain ESC_ERR_TAMPERED and the report names the first bad event.
 * Errors: TAMPERED, DB.
 */
enum esc_err esc_audit_verify(struct esc_ctx *ctx, struct esc_store *st, struct esc_audit_report *rep) ESC_MUST_CHECK;

struct esc_audit_row {
	long long id;
	char at[40];
	char actor[65];
	char role[64];
	char action[48];
	char object[128];
	char outcome[16];
	char details[512];
};

/* Filters of esc_audit_search: each NULL matches everything. */
struct esc_audit_filter {
	const char *since;  /* events at or after this UTC time, e.g. "2026-11-23T12:00:00" (compared as text) */
	const char *until;  /* events at or before it ("2026-11-23" means its very start: use ...T23:59:59) */
	const char *actor;  /* exact account (or "setup", "ca-token", ...) */
	const char *action; /* exact, e.g. "recovery.release" */
	const char *object; /* exact, e.g. "request 4" */
	const char *serial; /* certificate serial (hex; colons, case and leading zeros ignored): events whose
			       object is that serial (enrollment, archival, revocation) and every event of a
			       recovery request of a record of that serial */
	size_t limit;	    /* at most this many (0: 100000) */
};

/*
 * Sign a checkpoint (esc_audit_checkpoint) if one is due: when at least
 * events events (0: never by count) follow the newest checkpoint, or when
 * any does and the newest checkpoint is at least seconds old or there is
 * none (seconds 0: never by age).  Checkpoint records themselves
 * (audit.checkpoint) are not counted, so an idle log is not signed again
 * and again.  *event_id: the event signed, 0 if none was due.  The service
 * calls it after requests, on a timer and (events 1, seconds 0) at
 * shutdown.  Errors: those of esc_audit_checkpoint.
 */
enum esc_err esc_audit_checkpoint_if_due(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
					 long long events, long long seconds, long long *event_id) ESC_MUST_CHECK;

/* ---- Checkpoints kept outside the database (rollback detection) ----------- */

#define ESC_AUDIT_CHECKPOINT_MAX (16 * 1024) /* the largest checkpoint text read back */

/* What an exported checkpoint says, and what the database holds against it. */
struct esc_audit_anchor {
	long long event;  /* the event the checkpoint signed */
	char at[40];	  /* when it was signed (UTC, as signed) */
	long long newest; /* esc_audit_verify_checkpoint: the database's newest event (0: none) */
};

/*
 * The stored checkpoint of event event_id (0: the newest checkpoint) as
 * text, for keeping outside the database.  with_cert 1: the file form (a
 * comment line, one field a line, then the audit certificate in PEM);
 * with_cert 0: the one-line form for a log, "p11escrow-audit-checkpoint-v1
 * event=N hash=HEX time=T signer-sha256=HEX signature=BASE64", which names
 * the audit certificate by its SHA-256 only.  Either is read back by
 * esc_audit_verify_checkpoint.  *out is malloc'ed (NUL-terminated, no
 * secret); a (may be NULL) gets event and time.
 * Errors: NOT_FOUND (no such checkpoint), STATE (no audit certificate), NOMEM, CRYPTO, DB.
 */
enum esc_err esc_audit_checkpoint_export(struct esc_ctx *ctx, struct esc_store *st, long long event_id, int with_cert,
					 char **out, struct esc_audit_anchor *a) ESC_MUST_CHECK;

/* Write text to path atomically (temporary file beside it, then rename), mode 0644.  Errors: USAGE, IO. */
enum esc_err esc_audit_checkpoint_write(struct esc_ctx *ctx, const char *path, const char *text) ESC_MUST_CHECK;

/*
 * Check an exported checkpoint (text, len bytes, at most
 * ESC_AUDIT_CHECKPOINT_MAX) against the database: its signature under the
 * audit certificate it carries, or else the database's one with the
 * SHA-256 it names, which must be issued by the CA certificate in the
 * database; then that the database holds the event it signed with exactly
 * that chained hash.  A database whose newest event is older than the
 * checkpoint, or whose event N differs (history replaced after a restore,
 * or rewritten), is ESC_ERR_ROLLED_BACK, the message naming the missing
 * events and the checkpoint's time.  *a is filled on success and on
 * ROLLED_BACK.  Does not recompute the chain (esc_audit_verify does).
 * Errors: BAD_INPUT (malformed), TAMPERED (signature or certificate does
 * not verify), ROLLED_BACK, NOMEM, DB.
 */
enum esc_err esc_audit_verify_checkpoint(struct esc_ctx *ctx, struct esc_store *st, const char *text, size_t len,
					 struct esc_audit_anchor *a) ESC_MUST_CHECK;

#endif
