/*
 * The audit trail: append-only, hash-chained events.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <p11escrow/audit.h>

#include "internal.h"
#include "store_internal.h"

/* Serialises appenders so each event links to the one before ("p11a"). */
#define AUDIT_LOCK "1882536289"
#define ENCODING_TAG "p11escrow-audit-v1\n"
#define HASH_LEN 32

struct fields {
	char id[24];
	char at[40];
	char actor[65];
	char role[64];
	char action[48];
	char object[128];
	char outcome[16];
	char details[512];
	char prev_hex[2 * HASH_LEN + 1];
};

/* Printable ASCII only, bounded: what is hashed is exactly what is stored. */
static void
clean(char *dst, size_t len, const char *src)
{
	size_t i;

	for (i = 0; src != NULL && src[i] != '\0' && i + 1 < len; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[i] = '\0';
}

static void
hex_of(const unsigned char *in, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", in[i]);
}

/* SHA-256 over the canonical encoding: a tag, then each field as "LEN:BYTES\n". */
static int
event_hash(const struct fields *f, unsigned char out[HASH_LEN])
{
	const char *parts[] = {f->id, f->at, f->actor, f->role, f->action, f->object, f->outcome, f->details,
			       f->prev_hex};
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int n = 0;
	char len[24];
	size_t i;
	int ok;

	ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
	     EVP_DigestUpdate(md, ENCODING_TAG, strlen(ENCODING_TAG));
	for (i = 0; ok && i < ESC_ARRAY_LEN(parts); i++) {
		snprintf(len, sizeof(len), "%zu:", strlen(parts[i]));
		ok = EVP_DigestUpdate(md, len, strlen(len)) && EVP_DigestUpdate(md, parts[i], strlen(parts[i])) &&
		     EVP_DigestUpdate(md, "\n", 1);
	}
	ok = ok && EVP_DigestFinal_ex(md, out, &n) && n == HASH_LEN;
	EVP_MD_CTX_free(md);
	return ok;
}

static void
now_utc(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	char base[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%.19s.%06dZ", base, (int)(ts.tv_nsec / 1000) % 1000000);
}

enum esc_err
esc_audit_append(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev)
{
	PGresult *res = NULL;
	struct fields f;
	unsigned char hash[HASH_LEN], prev[HASH_LEN];
	const char *v[10];
	int len[10] = {0}, fmt[10] = {0}, own = !esc_store_in_tx(st);
	enum esc_err r;

	memset(&f, 0, sizeof(f));
	clean(f.actor, sizeof(f.actor), ev->actor);
	clean(f.role, sizeof(f.role), ev->role);
	clean(f.action, sizeof(f.action), ev->action);
	clean(f.object, sizeof(f.object), ev->object);
	clean(f.outcome, sizeof(f.outcome), ev->outcome);
	clean(f.details, sizeof(f.details), ev->details);
	if (f.actor[0] == '\0' || f.action[0] == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "an audit event needs an actor and an action");
	/*
	 * Our own transaction is READ COMMITTED so that, once the lock is ours,
	 * we see the event our predecessor committed; inside a caller's
	 * SERIALIZABLE transaction a stale read ends in a serialisation
	 * failure or a prev_hash unique violation, never a forked chain.
	 */
	if (own) {
		if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) !=
		    ESC_OK)
			return r;
		esc_store_mark_tx(st);
	}
	if ((r = esc_store_exec(ctx, st, "SELECT pg_advisory_xact_lock(" AUDIT_LOCK ")", 0, NULL, NULL, NULL, NULL)) !=
		    ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"SELECT encode(hash, 'hex'), nextval('audit_events_id_seq') FROM (SELECT hash FROM "
				"audit_events ORDER BY id DESC LIMIT 1) last RIGHT JOIN (SELECT 1) one ON true",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		goto out;
	memset(prev, 0, sizeof(prev)); /* the first event links to 32 zero bytes */
	if (PQgetisnull(res, 0, 0))
		hex_of(prev, HASH_LEN, f.prev_hex);
	else
		snprintf(f.prev_hex, sizeof(f.prev_hex), "%s", PQgetvalue(res, 0, 0));
	snprintf(f.id, sizeof(f.id), "%s", PQgetvalue(res, 0, 1));
	now_utc(f.at, sizeof(f.at));
	{
		long l = 0;
		unsigned char *p = OPENSSL_hexstr2buf(f.prev_hex, &l);

		if (p == NULL || l != HASH_LEN || !event_hash(&f, hash)) {
			OPENSSL_free(p);
			r = esc_error(ctx, ESC_ERR_CRYPTO, "cannot hash the audit event");
			goto out;
		}
		memcpy(prev, p, HASH_LEN);
		OPENSSL_free(p);
	}
	v[0] = f.id;
	v[1] = f.at;
	v[2] = f.actor;
	v[3] = f.role;
	v[4] = f.action;
	v[5] = f.object;
	v[6] = f.outcome;
	v[7] = f.details;
	v[8] = (const char *)prev;
	len[8] = HASH_LEN;
	fmt[8] = 1;
	v[9] = (const char *)hash;
	len[9] = HASH_LEN;
	fmt[9] = 1;
	if ((r = esc_store_exec(ctx, st,
				"INSERT INTO audit_events (id, at, actor, role, action, object, outcome, details, "
				"prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
				10, v, len, fmt, NULL)) != ESC_OK)
		goto out;
	if (own && (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	if (own)
		esc_store_rollback(st);
	PQclear(res);
	return r;
}

static const char *
outcome_of(enum esc_err r)
{
	switch (r) {
	case ESC_OK:
		return "ok";
	case ESC_ERR_DENIED:
	case ESC_ERR_AUTH:
	case ESC_ERR_POLICY:
	case ESC_ERR_STATE:
	case ESC_ERR_EXISTS:
	case ESC_ERR_MISMATCH:
	case ESC_ERR_NOT_FOUND:
	case ESC_ERR_USAGE:
	case ESC_ERR_TAMPERED:
		return "refused";
	default:
		return "failed";
	}
}

void
esc_audit_outcome(struct esc_ctx *ctx, struct esc_store *st, const char *actor, const char *role, const char *action,
		  const char *object, enum esc_err r)
{
	char saved[ESC_ERRMSG_MAX];
	enum esc_err code = esc_ctx_errcode(ctx);
	struct esc_audit_event ev = {actor, role, action, object, outcome_of(r), ""};

	snprintf(saved, sizeof(saved), "%s", r == ESC_OK ? "" : esc_ctx_errmsg(ctx));
	ev.details = saved;
	/* The database may be gone (that may be the failure): then say so on the log. */
	if (esc_audit_append(ctx, st, &ev) != ESC_OK)
		esc_log(ctx, ESC_LOG_ERROR, "could not write the audit event %s %s: %s", action, object,
			esc_ctx_errmsg(ctx));
	if (code != ESC_OK)
		esc_error(ctx, code, "%s", saved);
	else
		esc_ctx_clear_error(ctx);
}

void
esc_audit_outcome_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *action,
		     const char *object, enum esc_err r)
{
	char roles[64] = "none";

	if (a != NULL)
		esc_roles_format(esc_account_roles(a), roles, sizeof(roles));
	esc_audit_outcome(ctx, st, a ? esc_account_name(a) : "unknown", roles, action, object, r);
}

enum esc_err
esc_audit_verify(struct esc_ctx *ctx, struct esc_store *st, struct esc_audit_report *rep)
{
	PGresult *res = NULL;
	struct fields f;
	unsigned char hash[HASH_LEN];
	char expect_prev[2 * HASH_LEN + 1], hash_hex[2 * HASH_LEN + 1];
	long long last_id = 0;
	enum esc_err r;
	int i, rows;

	memset(rep, 0, sizeof(*rep));
	if ((r = esc_store_exec(ctx, st,
				"SELECT id, at, actor, role, action, object, outcome, details, encode(prev_hash, 'hex'), "
				"encode(hash, 'hex') FROM audit_events ORDER BY id",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	memset(expect_prev, '0', 2 * HASH_LEN);
	expect_prev[2 * HASH_LEN] = '\0';
	for (i = 0; i < rows; i++) {
		long long id = strtoll(PQgetvalue(res, i, 0), NULL, 10);

		memset(&f, 0, sizeof(f));
		snprintf(f.id, sizeof(f.id), "%s", PQgetvalue(res, i, 0));
		snprintf(f.at, sizeof(f.at), "%s", PQgetvalue(res, i, 1));
		snprintf(f.actor, sizeof(f.actor), "%s", PQgetvalue(res, i, 2));
		snprintf(f.role, sizeof(f.role), "%s", PQgetvalue(res, i, 3));
		snprintf(f.action, sizeof(f.action), "%s", PQgetvalue(res, i, 4));
		snprintf(f.object, sizeof(f.object), "%s", PQgetvalue(res, i, 5));
		snprintf(f.outcome, sizeof(f.outcome), "%s", PQgetvalue(res, i, 6));
		snprintf(f.details, sizeof(f.details), "%s", PQgetvalue(res, i, 7));
		snprintf(f.prev_hex, sizeof(f.prev_hex), "%s", PQgetvalue(res, i, 8));
		rep->events++;
		if (id <= last_id)
			snprintf(rep->problem, sizeof(rep->problem), "ids out of order");
		else if (strcmp(f.prev_hex, expect_prev) != 0)
			snprintf(rep->problem, sizeof(rep->problem),
				 "it does not follow the event before it (%s): an event was removed or reordered",
				 i ? PQgetvalue(res, i - 1, 0) : "start of the log");
		else if (!event_hash(&f, hash))
			snprintf(rep->problem, sizeof(rep->problem), "cannot hash it");
		else {
			hex_of(hash, HASH_LEN, hash_hex);
			if (strlen(f.actor) != (size_t)PQgetlength(res, i, 2) ||
			    strlen(f.details) != (size_t)PQgetlength(res, i, 7) ||
			    CRYPTO_memcmp(hash_hex, PQgetvalue(res, i, 9), 2 * HASH_LEN) != 0)
				snprintf(rep->problem, sizeof(rep->problem),
					 "its content does not match its hash: it was altered");
		}
		if (rep->problem[0] != '\0') {
			rep->first_bad = id;
			r = esc_error(ctx, ESC_ERR_TAMPERED, "audit event %lld: %s", id, rep->problem);
			goto out;
		}
		snprintf(expect_prev, sizeof(expect_prev), "%s", PQgetvalue(res, i, 9));
		last_id = id;
	}
	r = ESC_OK;
out:
	PQclear(res);
	return r;
}

enum esc_err
esc_audit_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *reader, const char *since,
	       const char *until, const char *actor, const char *action, const char *object, size_t limit,
	       struct esc_audit_row **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_audit_row *rows = NULL;
	char lim[24];
	const char *v[6] = {since, until, actor, action, object, lim};
	enum esc_err r;
	int i, count;

	if (reader == NULL ||
	    !(esc_account_roles(reader) & (ESC_ROLE_AUDITOR | ESC_ROLE_ADMIN)))
		return esc_error(ctx, ESC_ERR_DENIED, "account '%s' may not read the audit trail",
				 reader ? esc_account_name(reader) : "(none)");
	snprintf(lim, sizeof(lim), "%zu", limit == 0 || limit > 100000 ? 100000 : limit);
	if ((r = esc_store_exec(ctx, st,
				"SELECT id, at, actor, role, action, object, outcome, details FROM audit_events WHERE "
				"($1::text IS NULL OR at >= $1) AND ($2::text IS NULL OR at <= $2) AND ($3::text IS NULL "
				"OR actor = $3) AND ($4::text IS NULL OR action = $4) AND ($5::text IS NULL OR object = "
				"$5) ORDER BY id LIMIT $6::bigint",
				6, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	count = PQntuples(res);
	if ((rows = calloc((size_t)count + 1, sizeof(*rows))) == NULL) {
		PQclear(res);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < count; i++) {
		rows[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		snprintf(rows[i].at, sizeof(rows[i].at), "%s", PQgetvalue(res, i, 1));
		snprintf(rows[i].actor, sizeof(rows[i].actor), "%s", PQgetvalue(res, i, 2));
		snprintf(rows[i].role, sizeof(rows[i].role), "%s", PQgetvalue(res, i, 3));
		snprintf(rows[i].action, sizeof(rows[i].action), "%s", PQgetvalue(res, i, 4));
		snprintf(rows[i].object, sizeof(rows[i].object), "%s", PQgetvalue(res, i, 5));
		snprintf(rows[i].outcome, sizeof(rows[i].outcome), "%s", PQgetvalue(res, i, 6));
		snprintf(rows[i].details, sizeof(rows[i].details), "%s", PQgetvalue(res, i, 7));
	}
	PQclear(res);
	*out = rows;
	*n = (size_t)count;
	return ESC_OK;
}
