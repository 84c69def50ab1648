/* The audit trail's reading without a reader: for the account layer (auth.c) only. */
#ifndef P11ESCROW_AUDIT_INTERNAL_H
#define P11ESCROW_AUDIT_INTERNAL_H

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

#endif
