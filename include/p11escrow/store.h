/*
 * p11escrow — PostgreSQL storage (libpq).
 *
 * Every statement goes through PQexecParams with parameters: no SQL is ever
 * built from strings.  The schema is versioned by numbered migrations
 * (sql/NNN_name.sql, embedded at build time).
 */
#ifndef P11ESCROW_STORE_H
#define P11ESCROW_STORE_H

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

struct esc_store;

/*
 * Connect with a libpq connection string ("" for libpq's defaults and PG*
 * environment).  Errors: DB_CONNECT (message has libpq's reason).
 */
enum esc_err esc_store_connect(struct esc_ctx *ctx, const char *conninfo, struct esc_store **out) ESC_MUST_CHECK;
/* Disconnect; accepts NULL. */
void esc_store_free(struct esc_store *st);

/* Newest schema version this program knows. */
int esc_store_known_version(void);

/* Current schema version (0 = never migrated).  Errors: DB. */
enum esc_err esc_store_schema_version(struct esc_ctx *ctx, struct esc_store *st, int *version) ESC_MUST_CHECK;

/*
 * Apply pending migrations, each in its own transaction under an advisory
 * lock (concurrent runs serialise).  from and to receive the versions before
 * and after (may be NULL).  A second run is a no-op.  Errors: SCHEMA_NEWER
 * (database newer than this program: nothing is changed), DB.
 */
enum esc_err esc_store_migrate(struct esc_ctx *ctx, struct esc_store *st, int *from, int *to) ESC_MUST_CHECK;

/* Fail with SCHEMA_OLD or SCHEMA_NEWER unless the schema is exactly current. */
enum esc_err esc_store_check_schema(struct esc_ctx *ctx, struct esc_store *st) ESC_MUST_CHECK;

/*
 * What the service's monitoring reads from the database (p11escrowd's
 * /metrics): counts by state, the audit chain's length and the age of its
 * newest checkpoint, all read by one statement.
 */
struct esc_store_stats {
	long long enroll_unused, enroll_used, enroll_expired;	     /* one-time enrollment passwords */
	long long certificates;					     /* issued by this CA (any profile) */
	long long archived_import, archived_client, archived_server; /* archive records by source */
	/* Recovery requests by state. */
	long long rec_pending, rec_approved, rec_released, rec_completed, rec_denied, rec_cancelled, rec_expired;
	long long audit_last_id;    /* the newest audit event's id (0: none) */
	long long checkpoint_age;   /* seconds since the newest audit checkpoint was signed, -1 if none */
	long long checkpoint_event; /* the event it signed, 0 if none */
};

/* Fill *out.  Errors: DB, DB_CONNECT. */
enum esc_err esc_store_stats(struct esc_ctx *ctx, struct esc_store *st, struct esc_store_stats *out) ESC_MUST_CHECK;

#endif
