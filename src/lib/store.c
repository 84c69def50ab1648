/*
 * PostgreSQL storage through libpq.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/lhash.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11escrow/ca.h>
#include <p11escrow/store.h>

#include "internal.h"
#include "store_internal.h"
#include "store_migrations.h"

/* Arbitrary constant naming p11escrow's migration lock ("p11e"). */
#define MIGRATION_LOCK "1882536293"

/* Statements this connection has seen, prepared on their second use. */
#define STMT_SLOTS 128
/* Decoded certificates kept per connection, keyed on their stored bytes. */
#define CERT_SLOTS 16
/* A schema version found right is trusted this long on one connection. */
#define SCHEMA_TRUST_SECONDS 10

struct stmt {
	unsigned long hash;
	char *sql;
	int prepared;
};

/*
 * A statement held back to go with the next one in one round trip
 * (libpq's pipeline mode): a transaction's BEGIN, and writes whose result
 * nobody reads (esc_store_exec_later).  Its parameters are copies.
 */
#define QUEUE_MAX 4
struct queued {
	char *sql;
	int nparams;
	char **values;
	int *lengths, *formats;
};

struct cert_slot {
	char *text; /* the bytea column as libpq gave it ("\\x" + hex) */
	size_t len;
	X509 *x;
};

struct esc_store {
	PGconn *conn;
	int in_tx;
	int transient; /* the last failed statement lost a race: retrying the transaction may succeed */
	/* Prepared statements: "p11e_<generation>_<slot>"; a new generation forgets every older one. */
	struct stmt stmts[STMT_SLOTS];
	size_t nstmts;
	unsigned generation;
	struct cert_slot certs[CERT_SLOTS];
	size_t next_cert;
	struct timespec schema_ok; /* when the schema version was last found right; 0: never */
	/*
	 * The session is gone (the server died, restarted, was demoted or
	 * promoted away): the next statement outside a transaction opens a new
	 * one (esc_store_reconnect) before it runs.
	 */
	int lost;
	int commit_unknown; /* the last COMMIT's answer was lost with the connection */
	/* The audit chain's end as this transaction left it (esc_store_audit_tail). */
	unsigned char audit_tail[32];
	int audit_tail_set;
	/* The context of the statement running now: the server's notices go to its log, never to stderr. */
	struct esc_ctx *notice_ctx;
	/* Held back for the next statement's round trip; queue[0] may be the transaction's BEGIN (begin_held). */
	struct queued queue[QUEUE_MAX];
	size_t nqueued;
	int begin_held;
};

static void
queued_free(struct queued *q)
{
	int i;

	for (i = 0; q->values != NULL && i < q->nparams; i++)
		free(q->values[i]);
	free(q->values);
	free(q->lengths);
	free(q->formats);
	free(q->sql);
	memset(q, 0, sizeof(*q));
}

static void
queue_clear(struct esc_store *st)
{
	size_t i;

	for (i = 0; i < st->nqueued; i++)
		queued_free(&st->queue[i]);
	st->nqueued = 0;
	st->begin_held = 0;
}

/* Hold sql back with copies of its parameters (lengths NULL or formats[i] 0: text).  0: out of memory or room. */
static int
queue_add(struct esc_store *st, const char *sql, int nparams, const char *const *values, const int *lengths,
	  const int *formats)
{
	struct queued *q;
	int i;

	if (st->nqueued == QUEUE_MAX)
		return 0;
	q = &st->queue[st->nqueued];
	memset(q, 0, sizeof(*q));
	q->nparams = nparams;
	if ((q->sql = strdup(sql)) == NULL ||
	    (nparams > 0 && ((q->values = calloc((size_t)nparams, sizeof(*q->values))) == NULL ||
			     (q->lengths = calloc((size_t)nparams, sizeof(*q->lengths))) == NULL ||
			     (q->formats = calloc((size_t)nparams, sizeof(*q->formats))) == NULL)))
		goto fail;
	for (i = 0; i < nparams; i++) {
		size_t n;

		if (values[i] == NULL)
			continue;
		q->formats[i] = formats != NULL ? formats[i] : 0;
		n = q->formats[i] ? (size_t)lengths[i] : strlen(values[i]) + 1;
		q->lengths[i] = q->formats[i] ? lengths[i] : 0;
		if ((q->values[i] = malloc(n > 0 ? n : 1)) == NULL)
			goto fail;
		memcpy(q->values[i], values[i], n);
	}
	st->nqueued++;
	return 1;
fail:
	queued_free(q);
	return 0;
}

/* libpq messages end in a newline; keep one line. */
static const char *
one_line(char *buf, size_t len, const char *msg)
{
	size_t n;

	snprintf(buf, len, "%s", msg ? msg : "");
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	for (char *p = buf; *p; p++)
		if (*p == '\n')
			*p = ' ';
	return buf;
}

/*
 * A fixed search_path so no other schema can shadow our tables; commits
 * durable before they are acknowledged, whatever the server's default: a
 * certificate is handed out only after its archive record commits, and an
 * asynchronous commit lost in a crash would leave it unrecorded.  With a
 * synchronous standby (synchronous_standby_names) "on" also means the
 * standby has the commit on disk before it is acknowledged, so a failover
 * to it loses nothing that was answered (docs/ha.md).
 */
static enum esc_err
session_setup(struct esc_ctx *ctx, struct esc_store *st)
{
	PGresult *res = PQexec(st->conn, "SET search_path = public; SET client_min_messages = warning; "
					 "SET synchronous_commit = on");
	enum esc_err r = ESC_OK;

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		r = esc_error(ctx, ESC_ERR_DB, "cannot configure the database session");
	PQclear(res);
	return r;
}

/*
 * A notice or warning of the server (client_min_messages = warning): to the
 * log of the call that caused it.  libpq's default would print it to
 * stderr, a line outside p11escrowd's log format; without a call in
 * progress it is dropped.
 */
static void
on_notice(void *arg, const char *message)
{
	struct esc_store *st = arg;
	char line[512];

	if (st->notice_ctx != NULL)
		esc_log(st->notice_ctx, ESC_LOG_WARN, "database: %s", one_line(line, sizeof(line), message));
}

enum esc_err
esc_store_connect(struct esc_ctx *ctx, const char *conninfo, struct esc_store **out)
{
	struct esc_store *st;
	char msg[512];
	enum esc_err r;

	if ((st = calloc(1, sizeof(*st))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	st->conn = PQconnectdb(conninfo ? conninfo : "");
	if (st->conn == NULL || PQstatus(st->conn) != CONNECTION_OK) {
		r = esc_error(ctx, ESC_ERR_DB_CONNECT,
			      "cannot connect to the database: %s (check 'database' in the "
			      "configuration or P11ESCROW_DATABASE)",
			      one_line(msg, sizeof(msg), st->conn ? PQerrorMessage(st->conn) : "out of memory"));
		esc_store_free(st);
		return r;
	}
	PQsetNoticeProcessor(st->conn, on_notice, st);
	if ((r = session_setup(ctx, st)) != ESC_OK) {
		esc_store_free(st);
		return r;
	}
	*out = st;
	return ESC_OK;
}

static void
forget_statements(struct esc_store *st)
{
	size_t i;

	for (i = 0; i < st->nstmts; i++)
		free(st->stmts[i].sql);
	memset(st->stmts, 0, sizeof(st->stmts));
	st->nstmts = 0;
	st->generation++;
}

enum esc_err
esc_store_reconnect(struct esc_ctx *ctx, struct esc_store *st)
{
	char msg[512];
	enum esc_err r;

	if (st->in_tx)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_store_reconnect: a transaction is still open");
	/*
	 * PQreset opens a new session with the same parameters, from the first
	 * host of a multi-host conninfo on: with target_session_attrs=read-write
	 * it skips a dead primary and a standby still in recovery and lands on
	 * whichever server is the primary now.
	 */
	PQreset(st->conn);
	if (PQstatus(st->conn) != CONNECTION_OK) {
		st->lost = 1;
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "cannot reconnect to the database: %s",
				 one_line(msg, sizeof(msg), PQerrorMessage(st->conn)));
	}
	/* A new session has none of the old one's prepared statements, and may be another server. */
	forget_statements(st);
	st->schema_ok.tv_sec = 0;
	st->schema_ok.tv_nsec = 0;
	st->audit_tail_set = 0;
	st->transient = 0;
	if ((r = session_setup(ctx, st)) != ESC_OK) {
		st->lost = 1;
		return r;
	}
	st->lost = 0;
	esc_log(ctx, ESC_LOG_INFO, "reconnected to the database: host %s port %s",
		PQhost(st->conn) != NULL ? PQhost(st->conn) : "?", PQport(st->conn) != NULL ? PQport(st->conn) : "?");
	return ESC_OK;
}

void
esc_store_free(struct esc_store *st)
{
	size_t i;

	if (st == NULL)
		return;
	queue_clear(st);
	if (st->conn != NULL)
		PQfinish(st->conn);
	forget_statements(st);
	for (i = 0; i < CERT_SLOTS; i++) {
		free(st->certs[i].text);
		X509_free(st->certs[i].x);
	}
	free(st);
}

int
esc_store_known_version(void)
{
	return (int)esc_migrations_count;
}

/* Is res a unique violation of constraint? */
static int
unique_violation(const PGresult *res, const char *constraint)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *c = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);

	return state != NULL && strcmp(state, "23505") == 0 &&
	       (constraint == NULL || (c != NULL && strcmp(c, constraint) == 0));
}

/*
 * Races a retry resolves: a serialisation failure or deadlock, and two
 * audit events chained to the same predecessor (a SERIALIZABLE transaction
 * read the chain's end before another appender committed; see audit.c).
 */
static int
is_transient(const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	if (state == NULL)
		return 0;
	return strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
	       unique_violation(res, "audit_events_prev_hash_key") || unique_violation(res, "audit_events_hash_key");
}

/*
 * Has the server ended this idle session by itself?  A backend that is
 * terminated, or sees its postmaster die, while the session is idle writes
 * a FATAL message and closes the socket; libpq notices only when it next
 * reads.  Anything to read on an idle session is looked at now (one poll,
 * nothing to read: presumed alive), so a statement is not sent to a session
 * known dead, where its failure would leave its outcome in doubt.
 */
static int
idle_session_gone(struct esc_store *st)
{
	struct pollfd p = {.fd = PQsocket(st->conn), .events = POLLIN, .revents = 0};
	int i;

	if (p.fd < 0)
		return 1;
	/* The message and the end of the stream may take one read each. */
	for (i = 0; i < 4; i++) {
		if (poll(&p, 1, 0) <= 0)
			return 0;
		if (!PQconsumeInput(st->conn) || PQstatus(st->conn) != CONNECTION_OK)
			return 1;
	}
	return 0;
}

/*
 * A write refused because the server is read-only (25006): a standby, or
 * the old primary come back as one after a failover, reached through a
 * conninfo without target_session_attrs=read-write or a pooler that
 * still points at it.  This session can never write: it is dropped like a
 * lost one, so the next one finds the primary.
 */
static int
read_only_server(const PGresult *res)
{
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return state != NULL && strcmp(state, "25006") == 0;
}

/*
 * Is the connection gone, whatever PQstatus says yet?  libpq may report a
 * broken connection first as a failed statement (a write that met a reset,
 * the server's FATAL notice read before the end of the stream) and mark the
 * connection bad only later; an error libpq made itself (no SQLSTATE), a
 * connection exception (class 08) and a server shutting down or restarting
 * (57P01..57P03) all mean the session is lost.
 */
static int
connection_lost(const struct esc_store *st, const PGresult *res)
{
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return PQstatus(st->conn) != CONNECTION_OK || state == NULL || strncmp(state, "08", 2) == 0 ||
	       strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 ||
	       read_only_server(res);
}

/*
 * The slot of sql, a new one if there is room (NULL when the table is full:
 * the statement then runs unprepared, as every statement's first use does).
 */
static struct stmt *
stmt_slot(struct esc_store *st, const char *sql, int *fresh)
{
	unsigned long h = OPENSSL_LH_strhash(sql);
	size_t i;

	*fresh = 0;
	for (i = 0; i < st->nstmts; i++)
		if (st->stmts[i].hash == h && strcmp(st->stmts[i].sql, sql) == 0)
			return &st->stmts[i];
	if (st->nstmts == STMT_SLOTS || (st->stmts[st->nstmts].sql = strdup(sql)) == NULL)
		return NULL;
	st->stmts[st->nstmts].hash = h;
	*fresh = 1;
	return &st->stmts[st->nstmts++];
}

/* The server-side name of slot s's prepared statement on this connection ("p11e_<generation>_<slot>"). */
static void
stmt_name(const struct esc_store *st, const struct stmt *s, char name[32])
{
	snprintf(name, 32, "p11e_%u_%zu", st->generation, (size_t)(s - st->stmts));
}

/* One pipelined command: its statement slot, whether it was prepared on the way (a result more). */
struct sent {
	struct stmt *s;
	int prepare;
};

/* Send sql into the pipeline (prepared as run() would run it).  0: it could not be sent. */
static int
send_one(struct esc_store *st, const char *sql, int nparams, const char *const *values, const int *lengths,
	 const int *formats, struct sent *out)
{
	char name[32];
	int fresh;

	out->prepare = 0;
	if ((out->s = stmt_slot(st, sql, &fresh)) == NULL || fresh) {
		out->s = NULL;
		return PQsendQueryParams(st->conn, sql, nparams, NULL, values, lengths, formats, 0);
	}
	stmt_name(st, out->s, name);
	if (!out->s->prepared) {
		if (!PQsendPrepare(st->conn, name, sql, nparams, NULL))
			return 0;
		/* Prepared from here on, also for the same statement later in this round trip (undone if it fails). */
		out->s->prepared = 1;
		out->prepare = 1;
	}
	return PQsendQueryPrepared(st->conn, name, nparams, values, lengths, formats, 0);
}

/*
 * The held-back statements, then sql, in one round trip: libpq's pipeline
 * mode, one sync at the end.  The result is the first one that failed (the
 * server skipped the rest), else sql's; NULL if the connection failed on
 * the way.  *prepared: that statement ran prepared.  The queue is left as
 * it was (exec_untimed empties it).
 */
static PGresult *
run_queued(struct esc_store *st, const char *sql, int nparams, const char *const *values, const int *lengths,
	   const int *formats, int *prepared)
{
	struct sent sent[QUEUE_MAX + 1];
	PGresult *res, *out = NULL;
	size_t i, n = st->nqueued + 1;
	int ok;

	if (!PQenterPipelineMode(st->conn))
		return NULL;
	ok = 1;
	for (i = 0; ok && i < n; i++) {
		const struct queued *q = i < st->nqueued ? &st->queue[i] : NULL;

		ok = q != NULL ? send_one(st, q->sql, q->nparams, (const char *const *)q->values, q->lengths,
					  q->formats, &sent[i])
			       : send_one(st, sql, nparams, values, lengths, formats, &sent[i]);
	}
	ok = ok && PQpipelineSync(st->conn);
	for (i = 0; ok && i < n; i++) {
		if (sent[i].prepare) {
			if ((res = PQgetResult(st->conn)) == NULL) {
				ok = 0;
				break;
			}
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				sent[i].s->prepared = 0;
			if (PQresultStatus(res) != PGRES_COMMAND_OK && out == NULL) {
				out = res;
				*prepared = 0;
			} else
				PQclear(res);
			while ((res = PQgetResult(st->conn)) != NULL)
				PQclear(res);
		}
		if ((res = PQgetResult(st->conn)) == NULL) {
			ok = 0;
			break;
		}
		/* The first failure, or the last statement's result. */
		if (out == NULL && (i + 1 == n || (PQresultStatus(res) != PGRES_COMMAND_OK &&
						   PQresultStatus(res) != PGRES_TUPLES_OK))) {
			out = res;
			*prepared = sent[i].s != NULL;
		} else {
			PQclear(res);
		}
		while ((res = PQgetResult(st->conn)) != NULL)
			PQclear(res);
	}
	if (ok && (res = PQgetResult(st->conn)) != NULL) {
		ok = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
		PQclear(res);
	}
	ok = PQexitPipelineMode(st->conn) && ok;
	if (!ok) {
		/* The session is gone (a reset ends pipeline mode): no answer is to be trusted. */
		PQclear(out);
		return NULL;
	}
	return out;
}

/*
 * Run sql: a statement seen before on this connection runs as a prepared
 * statement (parsed and planned once per connection, not on every call);
 * the first use runs unnamed, so one-off statements (a CLI command's) cost
 * no extra round trip.
 */
static PGresult *
run(struct esc_store *st, const char *sql, int nparams, const char *const *values, const int *lengths,
    const int *formats, int *prepared)
{
	struct stmt *s;
	PGresult *pr;
	char name[32];
	int fresh;

	*prepared = 0;
	if (st->nqueued > 0)
		return run_queued(st, sql, nparams, values, lengths, formats, prepared);
	if ((s = stmt_slot(st, sql, &fresh)) == NULL || fresh)
		return PQexecParams(st->conn, sql, nparams, NULL, values, lengths, formats, 0);
	stmt_name(st, s, name);
	if (!s->prepared) {
		pr = PQprepare(st->conn, name, sql, nparams, NULL);
		if (PQresultStatus(pr) != PGRES_COMMAND_OK)
			return pr; /* its error is the statement's: a closed connection, an aborted transaction */
		PQclear(pr);
		s->prepared = 1;
	}
	*prepared = 1;
	return PQexecPrepared(st->conn, name, nparams, values, lengths, formats, 0);
}

/*
 * A prepared statement the server no longer has, or whose result columns
 * a schema change altered: forget them all (the next use prepares afresh
 * under a new name).  Outside a transaction the statement simply runs
 * again; inside one, the transaction is aborted and its caller may retry it
 * (the error is transient).
 */
static int
stale_statement(const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return state != NULL && (strcmp(state, "26000") == 0 || strcmp(state, "0A000") == 0);
}

/* A new session for a transaction whose statements are still held back (the server has none of it). */
static enum esc_err
reconnect_unsent(struct esc_ctx *ctx, struct esc_store *st)
{
	enum esc_err r;

	st->in_tx = 0;
	r = esc_store_reconnect(ctx, st);
	st->in_tx = 1;
	return r;
}

static enum esc_err
exec_untimed(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams, const char *const *values,
	     const int *lengths, const int *formats, PGresult **out)
{
	PGresult *res;
	ExecStatusType status;
	char msg[512];
	int prepared, again = 0, began;
	enum esc_err r;

	st->commit_unknown = 0;
	if (!st->in_tx && st->nqueued == 0 && nparams == 0 && out == NULL && strncmp(sql, "BEGIN", 5) == 0) {
		/* Held back: it goes with the transaction's first statement, in one round trip. */
		if (!queue_add(st, sql, 0, NULL, NULL, NULL))
			return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		st->begin_held = 1;
		return ESC_OK;
	}
	began = st->begin_held;
	/* Nothing of this transaction was sent: a new session can run all of it. */
	if (began && st->in_tx && (st->lost || PQstatus(st->conn) != CONNECTION_OK || idle_session_gone(st)) &&
	    (r = reconnect_unsent(ctx, st)) != ESC_OK) {
		queue_clear(st);
		return r;
	}
	if ((st->lost || PQstatus(st->conn) != CONNECTION_OK) && st->in_tx) {
		queue_clear(st);
		st->lost = 1;
		/* The server rolled this transaction back with the session: nothing more can join it. */
		st->transient = 1;
		return esc_error(ctx, ESC_ERR_BUSY,
				 "the database connection was lost during this transaction (a failover or restart?): "
				 "it was rolled back and may be run again");
	}
	if ((st->lost || PQstatus(st->conn) != CONNECTION_OK || (!st->in_tx && idle_session_gone(st))) &&
	    (r = esc_store_reconnect(ctx, st)) != ESC_OK)
		return r;
again:
	res = run(st, sql, nparams, values, lengths, formats, &prepared);
	if (res == NULL && began && !again && strcmp(sql, "COMMIT") != 0) {
		/*
		 * The session died under the transaction's first round trip: the
		 * server rolls back what it may have run, so all of it runs once
		 * more on a new session, as a lone BEGIN did.
		 */
		if (reconnect_unsent(ctx, st) == ESC_OK) {
			again = 1;
			goto again;
		}
	}
	queue_clear(st);
	if (prepared && !st->in_tx && stale_statement(res)) {
		/* Outside a transaction nothing was aborted: run it again, parsed afresh. */
		PQclear(res);
		forget_statements(st);
		res = run(st, sql, nparams, values, lengths, formats, &prepared);
	}
	status = PQresultStatus(res);
	st->transient = 0;
	if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
		if (out != NULL)
			*out = res;
		else
			PQclear(res);
		return ESC_OK;
	}
	st->transient = is_transient(res);
	if (prepared && stale_statement(res)) {
		forget_statements(st);
		st->transient = 1;
	}
	/*
	 * A unique violation is classified by its constraint: a key or
	 * certificate archived meanwhile by another transaction is "already
	 * archived", a lost race on the audit chain is transient (never
	 * "exists"), anything else names what exists.
	 */
	if (connection_lost(st, res)) {
		int ro = read_only_server(res);

		one_line(msg, sizeof(msg), ro ? PQresultErrorMessage(res) : PQerrorMessage(st->conn));
		st->lost = 1;
		st->transient = 0;
		PQclear(res);
		if (!st->in_tx && !again && strncmp(sql, "BEGIN", 5) == 0 && esc_store_reconnect(ctx, st) == ESC_OK) {
			/* A BEGIN that met a dead session did nothing: run it once on the new one. */
			again = 1;
			goto again;
		}
		if (strcmp(sql, "COMMIT") == 0) {
			/*
			 * The transaction may or may not have committed: never
			 * retried blindly (esc_store_commit_unknown says so; the
			 * caller checks for what it wrote, or gives up).
			 */
			st->commit_unknown = 1;
			return esc_error(ctx, ESC_ERR_DB_CONNECT,
					 "lost the database connection while committing: the outcome is unknown (%s)",
					 msg);
		}
		if (st->in_tx && !ro) {
			/*
			 * Certainly rolled back: the operation may run again on a
			 * new session.  Not so on a read-only server: the same
			 * conninfo would find the same one (it lacks
			 * target_session_attrs=read-write); that is DB_CONNECT.
			 */
			st->transient = 1;
			return esc_error(ctx, ESC_ERR_BUSY,
					 "lost the database connection (a failover or restart?): the transaction was "
					 "rolled back and may be run again (%s)",
					 msg);
		}
		return esc_error(
			ctx, ESC_ERR_DB_CONNECT, "%s: %s",
			ro ? "the database server is read-only (a standby? use target_session_attrs=read-write)"
			   : "lost the database connection",
			msg);
	}
	if (st->transient)
		r = esc_error(ctx, ESC_ERR_BUSY, "a concurrent transaction changed what this one read: %s",
			      one_line(msg, sizeof(msg), PQresultErrorMessage(res)));
	else if (unique_violation(res, "archive_records_cert_sha256_key"))
		r = esc_error(ctx, ESC_ERR_ARCHIVED, "already archived (same certificate, archived concurrently)");
	else if (unique_violation(res, "archive_records_public_key_sha256_key"))
		r = esc_error(ctx, ESC_ERR_ARCHIVED, "already archived (same key, archived concurrently)");
	else if (unique_violation(res, NULL))
		r = esc_error(ctx, ESC_ERR_EXISTS, "already recorded: %s",
			      one_line(msg, sizeof(msg), PQresultErrorMessage(res)));
	else
		r = esc_error(ctx, ESC_ERR_DB, "database error: %s",
			      one_line(msg, sizeof(msg), PQresultErrorMessage(res)));
	PQclear(res);
	return r;
}

/*
 * Every statement of the library passes here: the one place the context's
 * timing sink (esc_ctx_set_timing) sees the database's latency, reconnects
 * and retries of a statement included, and where the server's notices find
 * the context whose log they go to.
 */
enum esc_err
esc_store_exec(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams, const char *const *values,
	       const int *lengths, const int *formats, PGresult **out)
{
	struct timespec t0;
	int timed = esc_timing_start(ctx, &t0);
	enum esc_err r;

	st->notice_ctx = ctx;
	r = exec_untimed(ctx, st, sql, nparams, values, lengths, formats, out);
	st->notice_ctx = NULL;

	esc_timing_end(ctx, timed, &t0, ESC_TIMING_DB,
		       strcmp(sql, "COMMIT") == 0      ? "commit"
		       : strncmp(sql, "BEGIN", 5) == 0 ? "begin"
						       : "statement");
	return r;
}

enum esc_err
esc_store_exec_later(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams, const char *const *values,
		     const int *lengths, const int *formats)
{
	if (!st->in_tx || st->nqueued == QUEUE_MAX)
		return esc_store_exec(ctx, st, sql, nparams, values, lengths, formats, NULL);
	if (!queue_add(st, sql, nparams, values, lengths, formats))
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	return ESC_OK;
}

/* Take (lock) or release the audit lock for this session; the result only matters when taking it. */
enum esc_err
esc_store_audit_lock(struct esc_ctx *ctx, struct esc_store *st, int lock)
{
	return esc_store_exec(ctx, st,
			      lock ? "SELECT pg_advisory_lock(" ESC_STORE_AUDIT_LOCK ")"
				   : "SELECT pg_advisory_unlock(" ESC_STORE_AUDIT_LOCK ")",
			      0, NULL, NULL, NULL, NULL);
}

int
esc_store_retry(struct esc_ctx *ctx, struct esc_store *st, struct esc_store_retry *t, enum esc_err *r)
{
	char saved[ESC_ERRMSG_MAX];
	unsigned char rnd;
	struct timespec pause;

	t->attempt++;
	if (t->locked) {
		/* Keep the operation's own error: unlocking can only fail on a lost connection, then unlocked anyway. */
		snprintf(saved, sizeof(saved), "%s", esc_ctx_errmsg(ctx));
		(void)esc_store_audit_lock(ctx, st, 0);
		t->locked = 0;
		if (*r != ESC_OK)
			(void)esc_error(ctx, *r, "%s", saved);
		else
			esc_ctx_clear_error(ctx);
	}
	if (*r != ESC_ERR_BUSY || st->in_tx)
		return 0;
	if (t->attempt >= ESC_STORE_TX_ATTEMPTS) {
		snprintf(saved, sizeof(saved), "%s", esc_ctx_errmsg(ctx));
		*r = esc_error(ctx, ESC_ERR_BUSY,
			       "gave up after %d attempts, each undone by a concurrent transaction (%s)", t->attempt,
			       saved);
		return 0;
	}
	esc_log(ctx, ESC_LOG_DEBUG, "transaction lost a race with another (%s): attempt %d of %d", esc_ctx_errmsg(ctx),
		t->attempt + 1, ESC_STORE_TX_ATTEMPTS);
	/* 0..(2^attempt) ms, at most 64: concurrent losers do not come back in step. */
	if (RAND_bytes(&rnd, 1) != 1)
		rnd = 0;
	pause.tv_sec = 0;
	pause.tv_nsec = (long)(rnd % (1u << (t->attempt < 6 ? t->attempt : 6))) * 1000000L;
	nanosleep(&pause, NULL);
	/*
	 * Holding the audit lock across the transaction inverts the usual order
	 * (row locks first, the audit lock last), so waiting for it can end in a
	 * deadlock PostgreSQL breaks (BUSY): then this attempt runs without it.
	 */
	if ((*r = esc_store_audit_lock(ctx, st, 1)) == ESC_OK)
		t->locked = 1;
	else if (*r != ESC_ERR_BUSY)
		return 0;
	*r = ESC_ERR_BUSY;
	return 1;
}

/*
 * Test hook (builds with -Dtest_hooks=true only): P11ESCROW_FAULT_COMMIT
 * names a file; while it exists, the next COMMIT loses its answer, and the
 * file is removed (one shot per file).  It holds "before" (the connection
 * is cut before COMMIT is sent: the transaction rolls back) or "after"
 * (COMMIT takes effect, then the connection is cut before its answer is
 * read).  Either way the caller sees esc_store_commit_unknown.
 */
enum { COMMIT_FAULT_NONE, COMMIT_FAULT_BEFORE, COMMIT_FAULT_AFTER };
#ifdef ESC_TEST_HOOKS
static int
commit_fault(void)
{
	const char *path = getenv("P11ESCROW_FAULT_COMMIT");
	char what[16] = "";
	FILE *f;

	if (path == NULL || (f = fopen(path, "r")) == NULL)
		return COMMIT_FAULT_NONE;
	if (fgets(what, sizeof(what), f) == NULL)
		what[0] = '\0';
	fclose(f);
	if (unlink(path) != 0)
		return COMMIT_FAULT_NONE; /* another process took this shot */
	return strncmp(what, "before", 6) == 0	? COMMIT_FAULT_BEFORE
	       : strncmp(what, "after", 5) == 0 ? COMMIT_FAULT_AFTER
						: COMMIT_FAULT_NONE;
}
#else
static int
commit_fault(void)
{
	return COMMIT_FAULT_NONE;
}
#endif

enum esc_err
esc_store_begin(struct esc_ctx *ctx, struct esc_store *st)
{
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL SERIALIZABLE", 0, NULL, NULL, NULL, NULL)) == ESC_OK)
		esc_store_mark_tx(st);
	return r;
}

enum esc_err
esc_store_commit(struct esc_ctx *ctx, struct esc_store *st)
{
	int fault = commit_fault();
	enum esc_err r;

	if (fault == COMMIT_FAULT_BEFORE)
		(void)shutdown(PQsocket(st->conn), SHUT_RDWR); /* COMMIT cannot be sent: the server rolls back */
	r = esc_store_exec(ctx, st, "COMMIT", 0, NULL, NULL, NULL, NULL);
	if (fault == COMMIT_FAULT_AFTER && r == ESC_OK) {
		/* Committed, but the answer "never came": the session is cut as a crash would cut it. */
		(void)shutdown(PQsocket(st->conn), SHUT_RDWR);
		st->lost = 1;
		st->commit_unknown = 1;
		r = esc_error(ctx, ESC_ERR_DB_CONNECT,
			      "lost the database connection while committing: the outcome is unknown (test hook)");
	}
	/*
	 * A COMMIT that failed may never have run (a statement sent with it in
	 * one round trip failed first, and the server skipped the rest): the
	 * transaction is then still open, aborted.
	 */
	if (r != ESC_OK)
		esc_store_rollback(st);
	st->in_tx = 0;
	st->audit_tail_set = 0;
	return r;
}

void
esc_store_rollback(struct esc_store *st)
{
	PGresult *res;

	if (!st->in_tx)
		return;
	/*
	 * Only what the server holds open: a lost session took its transaction
	 * with it, a BEGIN still held back never began one, and a COMMIT that
	 * failed ended it.
	 */
	if (!st->lost && PQstatus(st->conn) == CONNECTION_OK && PQtransactionStatus(st->conn) != PQTRANS_IDLE) {
		res = PQexec(st->conn, "ROLLBACK");
		PQclear(res);
	}
	queue_clear(st);
	st->in_tx = 0;
	st->audit_tail_set = 0;
}

static enum esc_err
read_version(struct esc_ctx *ctx, struct esc_store *st, int *version)
{
	PGresult *res = NULL;
	enum esc_err r;

	/* to_regclass: no error (and no aborted transaction) when the table is missing. */
	if ((r = esc_store_exec(ctx, st, "SELECT to_regclass('public.p11escrow_schema') IS NOT NULL", 0, NULL, NULL,
				NULL, &res)) != ESC_OK)
		return r;
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		PQclear(res);
		*version = 0;
		return ESC_OK;
	}
	PQclear(res);
	if ((r = esc_store_exec(ctx, st, "SELECT coalesce(max(version), 0) FROM p11escrow_schema", 0, NULL, NULL, NULL,
				&res)) != ESC_OK)
		return r;
	r = esc_store_get_int(ctx, res, 0, 0, version);
	PQclear(res);
	return r;
}

enum esc_err
esc_store_schema_version(struct esc_ctx *ctx, struct esc_store *st, int *version)
{
	return read_version(ctx, st, version);
}

static enum esc_err
newer_error(struct esc_ctx *ctx, int version)
{
	return esc_error(ctx, ESC_ERR_SCHEMA_NEWER,
			 "the database schema is version %d but this program knows only up to %d: upgrade "
			 "p11escrow (nothing was changed)",
			 version, esc_store_known_version());
}

/*
 * Checked on this connection less than SCHEMA_TRUST_SECONDS ago?  A
 * service checks before every archival; a migration by a newer program is
 * noticed within that time, and 'db migrate' itself never relies on this.
 */
static int
schema_recently_ok(const struct esc_store *st, struct timespec *now)
{
	if (clock_gettime(CLOCK_MONOTONIC, now) != 0)
		return 0;
	return (st->schema_ok.tv_sec != 0 || st->schema_ok.tv_nsec != 0) &&
	       now->tv_sec - st->schema_ok.tv_sec < SCHEMA_TRUST_SECONDS;
}

enum esc_err
esc_store_check_schema(struct esc_ctx *ctx, struct esc_store *st)
{
	struct timespec now = {0, 0};
	enum esc_err r;
	int v = 0;

	if (schema_recently_ok(st, &now))
		return ESC_OK;
	if ((r = read_version(ctx, st, &v)) != ESC_OK)
		return r;
	if (v > esc_store_known_version())
		return newer_error(ctx, v);
	if (v < esc_store_known_version())
		return esc_error(ctx, ESC_ERR_SCHEMA_OLD,
				 "the database schema is version %d, this program needs %d: run 'p11escrow db migrate'",
				 v, esc_store_known_version());
	st->schema_ok = now;
	return ESC_OK;
}

/* Apply migration m in its own transaction, unless another run already did. */
static enum esc_err
apply_one(struct esc_ctx *ctx, struct esc_store *st, const struct esc_migration *m)
{
	PGresult *res;
	char vbuf[16];
	const char *params[2];
	enum esc_err r;
	int v = 0;

	/*
	 * READ COMMITTED on purpose: every statement after the lock must see
	 * what a concurrent migrator committed while we waited for it (a
	 * SERIALIZABLE snapshot would be taken before the wait).
	 */
	if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) != ESC_OK)
		return r;
	esc_store_mark_tx(st);
	if ((r = esc_store_exec(ctx, st, "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ")", 0, NULL, NULL, NULL,
				NULL)) != ESC_OK)
		goto out;
	if ((r = esc_store_exec(ctx, st,
				"CREATE TABLE IF NOT EXISTS p11escrow_schema ("
				" version integer PRIMARY KEY, name text NOT NULL,"
				" applied_at timestamptz NOT NULL DEFAULT now())",
				0, NULL, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	if ((r = read_version(ctx, st, &v)) != ESC_OK)
		goto out;
	if (v > esc_store_known_version()) {
		r = newer_error(ctx, v);
		goto out;
	}
	if (v >= m->version) {
		r = ESC_OK;
		goto out; /* done concurrently; rollback below is harmless */
	}
	/*
	 * The migration text is a static, embedded script of several
	 * statements, never built from input: PQexec is the one way to run it.
	 */
	res = PQexec(st->conn, m->sql);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
		char msg[512];

		r = esc_error(ctx, ESC_ERR_DB, "migration %03d_%s failed: %s", m->version, m->name,
			      one_line(msg, sizeof(msg), PQresultErrorMessage(res)));
		PQclear(res);
		goto out;
	}
	PQclear(res);
	snprintf(vbuf, sizeof(vbuf), "%d", m->version);
	params[0] = vbuf;
	params[1] = m->name;
	if ((r = esc_store_exec(ctx, st, "INSERT INTO p11escrow_schema (version, name) VALUES ($1, $2)", 2, params,
				NULL, NULL, NULL)) != ESC_OK)
		goto out;
	return esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	return r;
}

enum esc_err
esc_store_migrate(struct esc_ctx *ctx, struct esc_store *st, int *from, int *to)
{
	enum esc_err r;
	unsigned i;
	int before = 0, after = 0;

	if ((r = read_version(ctx, st, &before)) != ESC_OK)
		return r;
	if (before > esc_store_known_version())
		return newer_error(ctx, before);
	for (i = 0; i < esc_migrations_count; i++) {
		if (esc_migrations[i].version <= before)
			continue;
		if ((r = apply_one(ctx, st, &esc_migrations[i])) != ESC_OK)
			return r;
	}
	if ((r = read_version(ctx, st, &after)) != ESC_OK)
		return r;
	if (from != NULL)
		*from = before;
	if (to != NULL)
		*to = after;
	return ESC_OK;
}

enum esc_err
esc_store_grant_role(struct esc_ctx *ctx, struct esc_store *st, const char *role)
{
	PGresult *res = NULL;
	const char *v[1] = {role};
	char msg[512];
	enum esc_err r = ESC_OK;

	/* What is held back (the transaction's BEGIN) goes first. */
	if (st->nqueued > 0 && (r = esc_store_exec(ctx, st, "SELECT 1", 0, NULL, NULL, NULL, NULL)) != ESC_OK)
		return r;
	/* Not through esc_store_exec: the function's SQLSTATE and primary message say why it refused. */
	res = PQexecParams(st->conn, "SELECT p11escrow_grant_service($1)", 1, NULL, v, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		/* The function says why in its primary message: no such role, a superuser, not the owner. */
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		if (state == NULL || connection_lost(st, res))
			r = esc_error(ctx, ESC_ERR_DB_CONNECT, "lost the database connection: %s",
				      one_line(msg, sizeof(msg), PQerrorMessage(st->conn)));
		else
			r = esc_error(ctx,
				      strcmp(state, "42704") == 0   ? ESC_ERR_NOT_FOUND
				      : strcmp(state, "42501") == 0 ? ESC_ERR_DENIED
				      : strcmp(state, "0LP01") == 0 ? ESC_ERR_POLICY
								    : ESC_ERR_DB,
				      "cannot grant the service role: %s", one_line(msg, sizeof(msg), primary));
	}
	PQclear(res);
	return r;
}

int
esc_store_commit_unknown(const struct esc_store *st)
{
	return st->commit_unknown;
}

int
esc_store_in_tx(const struct esc_store *st)
{
	return st->in_tx;
}

void
esc_store_mark_tx(struct esc_store *st)
{
	st->in_tx = 1;
	st->audit_tail_set = 0;
}

int
esc_store_audit_tail(const struct esc_store *st, unsigned char hash[32])
{
	if (!st->in_tx || !st->audit_tail_set)
		return 0;
	memcpy(hash, st->audit_tail, sizeof(st->audit_tail));
	return 1;
}

void
esc_store_set_audit_tail(struct esc_store *st, const unsigned char hash[32])
{
	if (!st->in_tx)
		return;
	memcpy(st->audit_tail, hash, sizeof(st->audit_tail));
	st->audit_tail_set = 1;
}

enum esc_err
esc_store_get_int(struct esc_ctx *ctx, const PGresult *res, int row, int col, int *out)
{
	const char *s = PQgetvalue(res, row, col);
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (PQgetisnull(res, row, col) || end == s || *end != '\0' || errno != 0 || v < INT_MIN || v > INT_MAX)
		return esc_error(ctx, ESC_ERR_DB, "the database answered '%.32s' where column '%s' needs an integer", s,
				 PQfname(res, col));
	*out = (int)v;
	return ESC_OK;
}

enum esc_err
esc_store_insert_cert(struct esc_ctx *ctx, struct esc_store *st, X509 *x, const char *profile, int *inserted)
{
	static const char q[] = "INSERT INTO certificates (serial, subject, issuer, not_before, not_after, "
				"profile, der) VALUES ($1, $2, $3, $4, $5, $6, $7)";
	static const char q_or_skip[] = "INSERT INTO certificates (serial, subject, issuer, not_before, not_after, "
					"profile, der) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (serial) DO "
					"NOTHING";
	PGresult *res = NULL;
	struct tm tnb, tna;
	char snb[32], sna[32];
	char *serial = esc_cert_serial_hex(x), *subject = esc_name_to_string(X509_get_subject_name(x)),
	     *issuer = esc_name_to_string(X509_get_issuer_name(x));
	unsigned char *der = NULL;
	const char *v[7];
	int len[7] = {0}, fmt[7] = {0}, dlen;
	enum esc_err r;

	if (serial == NULL || subject == NULL || issuer == NULL || !ASN1_TIME_to_tm(X509_get0_notBefore(x), &tnb) ||
	    !ASN1_TIME_to_tm(X509_get0_notAfter(x), &tna) || (dlen = i2d_X509(x, &der)) <= 0) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "cannot describe the certificate");
		goto out;
	}
	strftime(snb, sizeof(snb), "%Y-%m-%d %H:%M:%S+00", &tnb);
	strftime(sna, sizeof(sna), "%Y-%m-%d %H:%M:%S+00", &tna);
	v[0] = serial;
	v[1] = subject;
	v[2] = issuer;
	v[3] = snb;
	v[4] = sna;
	v[5] = profile;
	v[6] = (const char *)der;
	len[6] = dlen;
	fmt[6] = 1;
	if ((r = esc_store_exec(ctx, st, inserted != NULL ? q_or_skip : q, 7, v, len, fmt, &res)) != ESC_OK)
		goto out;
	if (inserted != NULL)
		*inserted = strcmp(PQcmdTuples(res), "1") == 0;
out:
	PQclear(res);
	OPENSSL_free(der);
	free(serial);
	free(subject);
	free(issuer);
	return r;
}

X509 *
esc_store_cert_from_text(const char *value)
{
	long len = 0;
	unsigned char *der = strncmp(value, "\\x", 2) == 0 ? OPENSSL_hexstr2buf(value + 2, &len) : NULL;
	const unsigned char *p = der;
	X509 *x = der != NULL ? d2i_X509(NULL, &p, len) : NULL;

	if (x != NULL && p != der + len) {
		X509_free(x); /* trailing bytes: not exactly one certificate */
		x = NULL;
	}
	OPENSSL_free(der);
	return x;
}

X509 *
esc_store_cert_cached(struct esc_store *st, const char *value)
{
	size_t i, len = strlen(value);
	struct cert_slot *slot;
	X509 *x;

	for (i = 0; i < CERT_SLOTS; i++) {
		slot = &st->certs[i];
		if (slot->x != NULL && slot->len == len && memcmp(slot->text, value, len) == 0)
			return X509_up_ref(slot->x) ? slot->x : NULL;
	}
	if ((x = esc_store_cert_from_text(value)) == NULL)
		return NULL;
	/* Round robin: the certificates a service reads over and over are few (CA, storage, transport, KRAs). */
	slot = &st->certs[st->next_cert];
	st->next_cert = (st->next_cert + 1) % CERT_SLOTS;
	free(slot->text);
	X509_free(slot->x);
	slot->x = NULL;
	if ((slot->text = malloc(len + 1)) != NULL && X509_up_ref(x)) {
		memcpy(slot->text, value, len + 1);
		slot->len = len;
		slot->x = x;
	}
	return x;
}

enum esc_err
esc_store_get_cert(struct esc_ctx *ctx, struct esc_store *st, const char *what, const char *sql, int nparams,
		   const char *const *values, X509 **out)
{
	PGresult *res = NULL;
	X509 *x;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, sql, nparams, values, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "%s not found", what);
	else if ((x = esc_store_cert_cached(st, PQgetvalue(res, 0, 0))) == NULL)
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "stored %s is not a DER certificate", what);
	else
		*out = x;
	PQclear(res);
	return r;
}

enum esc_err
esc_store_active_ca(struct esc_ctx *ctx, struct esc_store *st, X509 **out)
{
	enum esc_err r = esc_store_get_cert(ctx, st, "the CA certificate",
					    "SELECT certificate FROM ca WHERE state = 'active'", 0, NULL, out);

	return r == ESC_ERR_NOT_FOUND ? esc_error(ctx, ESC_ERR_STATE, "there is no active CA: run 'p11escrow setup'")
				      : r;
}

enum esc_err
esc_store_policy(struct esc_ctx *ctx, struct esc_store *st, const char *key, char **out)
{
	PGresult *res = NULL;
	const char *v[1] = {key};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT value FROM policy WHERE key = $1", 1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1)
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "policy '%s' is not set", key);
	else if ((*out = strdup(PQgetvalue(res, 0, 0))) == NULL)
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	PQclear(res);
	return r;
}

enum esc_err
esc_store_stats(struct esc_ctx *ctx, struct esc_store *st, struct esc_store_stats *out)
{
	/* One round trip; every count is a scan the indexes serve or a small table's. */
	static const char sql[] =
		"SELECT (SELECT count(*) FROM enrollment_passwords WHERE used_at IS NULL AND expires_at > now()), "
		"(SELECT count(*) FROM enrollment_passwords WHERE used_at IS NOT NULL), "
		"(SELECT count(*) FROM enrollment_passwords WHERE used_at IS NULL AND expires_at <= now()), "
		"(SELECT count(*) FROM certificates), "
		"a.import, a.client, a.server, "
		"r.pending, r.approved, r.released, r.completed, r.denied, r.cancelled, r.expired, "
		"(SELECT coalesce(max(id), 0) FROM audit_events), "
		"coalesce((SELECT floor(extract(epoch FROM now() - c.at::timestamptz))::bigint FROM audit_checkpoints c "
		"ORDER BY c.id DESC LIMIT 1), -1), "
		"coalesce((SELECT c.event_id FROM audit_checkpoints c ORDER BY c.id DESC LIMIT 1), 0) "
		"FROM (SELECT count(*) FILTER (WHERE source = 'import') AS import, "
		"count(*) FILTER (WHERE source = 'enroll-client') AS client, "
		"count(*) FILTER (WHERE source = 'enroll-server') AS server FROM archive_records) a, "
		"(SELECT count(*) FILTER (WHERE state = 'pending') AS pending, "
		"count(*) FILTER (WHERE state = 'approved') AS approved, "
		"count(*) FILTER (WHERE state = 'released') AS released, "
		"count(*) FILTER (WHERE state = 'completed') AS completed, "
		"count(*) FILTER (WHERE state = 'denied') AS denied, "
		"count(*) FILTER (WHERE state = 'cancelled') AS cancelled, "
		"count(*) FILTER (WHERE state = 'expired') AS expired FROM recovery_requests) r";
	PGresult *res = NULL;
	long long v[17];
	enum esc_err r;
	size_t i;

	if ((r = esc_store_exec(ctx, st, sql, 0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQnfields(res) != (int)ESC_ARRAY_LEN(v)) {
		PQclear(res);
		return esc_error(ctx, ESC_ERR_DB, "database error: unexpected result reading the service's counts");
	}
	for (i = 0; i < ESC_ARRAY_LEN(v); i++)
		v[i] = strtoll(PQgetvalue(res, 0, (int)i), NULL, 10);
	PQclear(res);
	out->enroll_unused = v[0];
	out->enroll_used = v[1];
	out->enroll_expired = v[2];
	out->certificates = v[3];
	out->archived_import = v[4];
	out->archived_client = v[5];
	out->archived_server = v[6];
	out->rec_pending = v[7];
	out->rec_approved = v[8];
	out->rec_released = v[9];
	out->rec_completed = v[10];
	out->rec_denied = v[11];
	out->rec_cancelled = v[12];
	out->rec_expired = v[13];
	out->audit_last_id = v[14];
	out->checkpoint_age = v[15];
	out->checkpoint_event = v[16];
	return ESC_OK;
}
