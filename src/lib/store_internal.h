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
 *
 * From its second use on a connection, a statement (the same sql text)
 * runs as a prepared statement of that connection: parsed and planned once.
 * sql never holds values (they are parameters), so its text is a fair key.
 */
enum esc_err esc_store_exec(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams,
			    const char *const *values, const int *lengths, const int *formats,
			    PGresult **res) ESC_MUST_CHECK;

/*
 * esc_store_exec for a write whose result nobody reads, in the open
 * transaction: it is held back (parameters copied) and sent with the
 * transaction's next statement in one round trip (libpq's pipeline mode),
 * as a transaction's BEGIN is sent with its first statement.  Its error, if
 * it fails, is that next statement's (the transaction is then aborted, as
 * it would have been).  Outside a transaction it runs at once.
 * Errors: NOMEM; outside a transaction those of esc_store_exec.
 */
enum esc_err esc_store_exec_later(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams,
				  const char *const *values, const int *lengths, const int *formats) ESC_MUST_CHECK;

/*
 * The advisory lock that orders appends to the audit chain (audit.c takes
 * it per transaction; esc_store_retry holds it per session on a retry).
 */
#define ESC_STORE_AUDIT_LOCK "1882536289"

/*
 * Bounded retry of a whole operation whose transaction lost a race with a
 * concurrent one (ESC_ERR_BUSY: a serialisation failure, a deadlock, two
 * audit events chained to the same predecessor, a prepared statement gone
 * stale).  Every operation that writes in its own transaction runs as
 *
 *	struct esc_store_retry t = {0};
 *	do
 *		r = op_impl(ctx, st, ...);	// begins, commits or rolls back itself
 *	while (esc_store_retry(ctx, st, &t, &r));
 *
 * It answers 1 (run the operation again) only when *r is BUSY, no caller's
 * transaction is open (then the caller retries the whole of it) and fewer
 * than ESC_STORE_TX_ATTEMPTS attempts were made.  A retry waits a short
 * random time and runs holding the audit lock for the whole transaction,
 * taken before its snapshot: no appender can then move the chain's end under
 * it, so an audit conflict is not repeated.  When the attempts are used up,
 * *r stays BUSY with a message that says so.  Always releases the lock it
 * took.  The operation must be safe to run again after a rollback (it is:
 * nothing it did before the failure committed).
 */
#define ESC_STORE_TX_ATTEMPTS 8
/*
 * Take (lock = 1) or release (0) the audit chain's lock for this session,
 * outside a transaction: a transaction begun while holding it sees the
 * chain's end as the last appender committed it (esc_store_retry's second
 * attempts, batch archival).  Errors (taking it): DB.
 */
enum esc_err esc_store_audit_lock(struct esc_ctx *ctx, struct esc_store *st, int lock);

struct esc_store_retry {
	int attempt; /* attempts made so far */
	int locked;  /* this session holds the audit lock */
};
int esc_store_retry(struct esc_ctx *ctx, struct esc_store *st, struct esc_store_retry *t, enum esc_err *r);

enum esc_err esc_store_begin(struct esc_ctx *ctx, struct esc_store *st) ESC_MUST_CHECK;
/*
 * Commit the open transaction.  Errors: those of esc_store_exec; when the
 * connection was lost before COMMIT's answer came (the server died, a
 * failover), DB_CONNECT and esc_store_commit_unknown(st) is 1 until the next
 * statement: the transaction may or may not have committed, so it must not
 * be run again blindly.  The caller either looks for what it wrote (on a
 * new session: esc_store_reconnect) or reports the outcome as unknown.
 */
enum esc_err esc_store_commit(struct esc_ctx *ctx, struct esc_store *st) ESC_MUST_CHECK;
int esc_store_commit_unknown(const struct esc_store *st);

/*
 * Lost connections (docs/ha.md).  A statement that finds the session gone
 * (libpq's own error, SQLSTATE class 08, 57P01..57P03 shutdown or restart,
 * 25006 a read-only server) marks it lost:
 *  - inside a transaction the transaction is gone with it: BUSY, so
 *    esc_store_retry runs the operation again (on a new session); but a
 *    read-only server is DB_CONNECT (the same conninfo would find it
 *    again: it lacks target_session_attrs=read-write);
 *  - at COMMIT the outcome is unknown: DB_CONNECT (esc_store_commit);
 *  - a BEGIN is run once more on a new session; any other statement
 *    outside a transaction fails with DB_CONNECT (it may have written).
 * The next statement outside a transaction reconnects first, as does one
 * that finds its idle session ended by the server (a FATAL message or the
 * end of the stream waiting on the socket: a server that died or was
 * restarted while the session was idle).
 *
 * esc_store_reconnect opens a new session with the same connection string
 * (PQreset: every host of a multi-host conninfo is tried again, so
 * target_session_attrs=read-write finds a newly promoted primary) and
 * forgets what belonged to the old one: prepared statements, the schema
 * check, the audit tail.  Never inside a transaction.  Errors: DB_CONNECT
 * (no server answered as the conninfo requires), DB.
 */
enum esc_err esc_store_reconnect(struct esc_ctx *ctx, struct esc_store *st) ESC_MUST_CHECK;
/* Roll back if a transaction is open; never fails loudly (used on error paths). */
void esc_store_rollback(struct esc_store *st);

/*
 * The hash of the last audit event appended in the open transaction, which
 * holds the audit lock from then to its end: no other event can follow it
 * before we commit.  0 (nothing copied) outside a transaction or before the
 * first append in it.  Only esc_audit_append sets it.
 */
int esc_store_audit_tail(const struct esc_store *st, unsigned char hash[32]);
void esc_store_set_audit_tail(struct esc_store *st, const unsigned char hash[32]);

/* Is a transaction open on st (begun with esc_store_begin)? */
int esc_store_in_tx(const struct esc_store *st);
/* Record that the caller opened a transaction with its own BEGIN statement. */
void esc_store_mark_tx(struct esc_store *st);

/*
 * Run a query whose first column of its one row is a DER certificate
 * (bytea) and decode it (through esc_store_cert_cached).  Errors:
 * NOT_FOUND (no row or NULL; message uses what), DB, BAD_INPUT
 * (undecodable).  The certificate may be shared with later calls: read it,
 * never change it.
 */
enum esc_err esc_store_get_cert(struct esc_ctx *ctx, struct esc_store *st, const char *what, const char *sql,
				int nparams, const char *const *values, X509 **out) ESC_MUST_CHECK;

/*
 * The active CA's certificate (esc_store_get_cert; shared, read only).
 * Errors: STATE (there is none: setup has not run), DB, BAD_INPUT.
 */
enum esc_err esc_store_active_ca(struct esc_ctx *ctx, struct esc_store *st, X509 **out) ESC_MUST_CHECK;

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

/*
 * The same, from a small per-connection cache keyed on the stored bytes:
 * the CA, storage, transport and KRA certificates are read on every
 * archival and decoding one costs OpenSSL 3.0 about 0.2 ms.  A new
 * reference (X509_free it); shared with the cache, so never change it.
 */
X509 *esc_store_cert_cached(struct esc_store *st, const char *value);

/*
 * Grant the existing database role `role` the service's privileges
 * (sql/006's p11escrow_grant_service), in the caller's transaction; no
 * audit event (esc_setup_grant_service writes it).  Errors: NOT_FOUND (no
 * such role), DENIED (the caller is not the owner), POLICY (a superuser or
 * the owner), DB_CONNECT, DB; the message is the function's own.
 */
enum esc_err esc_store_grant_role(struct esc_ctx *ctx, struct esc_store *st, const char *role) ESC_MUST_CHECK;

/* A policy value; *out is a copy the caller frees.  Errors: NOT_FOUND, DB. */
enum esc_err esc_store_policy(struct esc_ctx *ctx, struct esc_store *st, const char *key, char **out) ESC_MUST_CHECK;

#endif
