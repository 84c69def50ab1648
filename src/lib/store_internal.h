/* Internal access to the database for library modules. */
#ifndef P11ESCROW_STORE_INTERNAL_H
#define P11ESCROW_STORE_INTERNAL_H

#include <libpq-fe.h>
#include <openssl/x509.h>

#include <p11escrow/store.h>

/*
 * Run one parameterised statement.  Text parameters unless lengths/formats
 * say otherwise (formats[i] = 1: binary, e.g. bytea).  *res (if non-NULL)
 * receives the result for the caller to PQclear.  Errors: DB, DB_CONNECT
 * (connection lost).
 */
enum esc_err esc_store_exec(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams,
			    const char *const *values, const int *lengths, const int *formats, PGresult **res)
	ESC_MUST_CHECK;

/*
 * Did the last failed statement lose a race with another transaction
 * (serialisation failure, deadlock, two audit events on one predecessor)?
 * Then the whole transaction may be retried.
 */
int esc_store_transient(const struct esc_store *st);

enum esc_err esc_store_begin(struct esc_ctx *ctx, struct esc_store *st) ESC_MUST_CHECK;
enum esc_err esc_store_commit(struct esc_ctx *ctx, struct esc_store *st) ESC_MUST_CHECK;
/* Roll back if a transaction is open; never fails loudly (used on error paths). */
void esc_store_rollback(struct esc_store *st);

/* Is a transaction open on st (begun with esc_store_begin)? */
int esc_store_in_tx(const struct esc_store *st);
/* Record that the caller opened a transaction with its own BEGIN statement. */
void esc_store_mark_tx(struct esc_store *st);

/*
 * Run a query whose first column of its one row is a DER certificate
 * (bytea) and decode it.  Errors: NOT_FOUND (no row or NULL; message uses
 * what), DB, BAD_INPUT (undecodable).
 */
enum esc_err esc_store_get_cert(struct esc_ctx *ctx, struct esc_store *st, const char *what, const char *sql,
				int nparams, const char *const *values, X509 **out) ESC_MUST_CHECK;

/*
 * The integer in column col of row row of res (an integer or bigint column
 * in PostgreSQL's text form) into *out.  Errors: DB if it is NULL, not a
 * decimal number or outside int: a count or a threshold that cannot be read
 * must fail, not read as 0.
 */
enum esc_err esc_store_get_int(struct esc_ctx *ctx, const PGresult *res, int row, int col, int *out) ESC_MUST_CHECK;

/*
 * Record certificate x (one this CA issued, or at setup the CA's own and
 * its keys') in certificates under profile.
 * With inserted NULL a serial already there is an error (EXISTS); else
 * *inserted says whether the row went in (ON CONFLICT DO NOTHING: the
 * transaction stays usable, so the caller can redraw).  Errors: NOMEM, DB,
 * EXISTS.
 */
enum esc_err esc_store_insert_cert(struct esc_ctx *ctx, struct esc_store *st, X509 *x, const char *profile,
				   int *inserted) ESC_MUST_CHECK;

/* Decode a bytea column in libpq's text form ("\\x" + hex) holding a DER certificate; NULL if it is not one. */
X509 *esc_store_cert_from_text(const char *value);

/* A policy value; *out is a copy the caller frees.  Errors: NOT_FOUND, DB. */
enum esc_err esc_store_policy(struct esc_ctx *ctx, struct esc_store *st, const char *key, char **out)
	ESC_MUST_CHECK;

#endif
