/*
 * Internal to the library: the audit trail's reading without a reader (for
 * the account layer, auth.c), and appending with ids reserved by a
 * caller's statement (archive.c).
 */
#ifndef P11ESCROW_AUDIT_INTERNAL_H
#define P11ESCROW_AUDIT_INTERNAL_H

#include <libpq-fe.h>

#include <p11escrow/audit.h>

/*
 * Events matching every filter of f, oldest first, whoever asks: the
 * public esc_audit_search (auth.c) checks the reader's roles first.  *out
 * is malloc'ed.  Errors: USAGE (bad serial), NOMEM, DB.
 */
enum esc_err esc_audit_query(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_filter *f,
			     struct esc_audit_row **out, size_t *n) ESC_MUST_CHECK;

/*
 * The first step of esc_audit_verify_checkpoint without a database: parse
 * an exported checkpoint (text, len bytes) and check its form only (no
 * signature); event and time into *a.  For the fuzz target
 * (tests/fuzz/fuzz_anchor.c).  Errors: BAD_INPUT.
 */
enum esc_err esc_audit_anchor_parse(struct esc_ctx *ctx, const char *text, size_t len,
				    struct esc_audit_anchor *a) ESC_MUST_CHECK;

/*
 * The select list that reserves audit event ids after the chain's end:
 * one row per event, the newest event's hash (hex, NULL for an empty
 * chain) and a new id.  Append the parameter holding the count and ")".
 * It must run in a statement that began after the audit lock
 * (ESC_STORE_AUDIT_LOCK) was taken in this transaction, so its snapshot
 * sees the end the last appender committed.
 */
#define ESC_AUDIT_RESERVE_SQL                                                              \
	"SELECT (SELECT encode(hash, 'hex') FROM audit_events ORDER BY id DESC LIMIT 1), " \
	"nextval('audit_events_id_seq') FROM generate_series(1, "

/*
 * Append ev[0..n) with the chain's end and ids of res (rows 0..n-1 of a
 * statement made with ESC_AUDIT_RESERVE_SQL, columns 0 and 1), in the
 * caller's transaction: one statement.  Errors: USAGE, TAMPERED, DB, BUSY.
 */
enum esc_err esc_audit_append_reserved(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev,
				       size_t n, const PGresult *res) ESC_MUST_CHECK;

#endif
