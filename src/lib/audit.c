/*
 * The audit trail: append-only, hash-chained events.  It knows actors as
 * strings (name and roles) and no accounts: whatever acts for an account,
 * and the role check before the trail is read, is auth.c's, above it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/stat.h>

#include <openssl/buffer.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>

#include "audit_internal.h"
#include "internal.h"
#include "store_internal.h"

/* Serialises appenders so each event links to the one before ("p11a"). */
#define ENCODING_TAG "p11escrow-audit-v1\n"
#define HASH_LEN 32
#define CHECKPOINT_TAG "p11escrow-audit-checkpoint-v1\n"

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
	const char *parts[] = {f->id,	  f->at,      f->actor,	  f->role,    f->action,
			       f->object, f->outcome, f->details, f->prev_hex};
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

/* The stored fields of ev (id, time and chain link still to fill).  Errors: USAGE. */
static enum esc_err
fields_of(struct esc_ctx *ctx, const struct esc_audit_event *ev, struct fields *f)
{
	memset(f, 0, sizeof(*f));
	clean(f->actor, sizeof(f->actor), ev->actor);
	clean(f->role, sizeof(f->role), ev->role);
	clean(f->action, sizeof(f->action), ev->action);
	clean(f->object, sizeof(f->object), ev->object);
	clean(f->outcome, sizeof(f->outcome), ev->outcome);
	clean(f->details, sizeof(f->details), ev->details);
	if (f->actor[0] == '\0' || f->action[0] == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "an audit event needs an actor and an action");
	return ESC_OK;
}

static enum esc_err
append_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev)
{
	int own = !esc_store_in_tx(st);
	enum esc_err r;

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
	if ((r = esc_audit_append_many(ctx, st, ev, 1)) == ESC_OK && own)
		r = esc_store_commit(ctx, st);
	if (own)
		esc_store_rollback(st);
	return r;
}

enum esc_err
esc_audit_append(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	/*
	 * In its own transaction an append can still lose a race: PostgreSQL
	 * may break a deadlock with a transaction that holds the audit lock
	 * through a retry (esc_store_retry) by cancelling this one.  In the
	 * caller's transaction, the caller retries.
	 */
	do
		r = append_impl(ctx, st, ev);
	while (esc_store_retry(ctx, st, &t, &r));
	return r;
}

/* Parameters of one audit_events row ($1..$10 from v[0]); prev and hash are the raw 32 bytes. */
#define EVENT_NPARAMS 10

/*
 * Insert ev[0..n) with the ids of rows 0..n-1 of res (column 1), linked
 * to prev (the chain's end under the audit lock), in one statement.
 */
static enum esc_err
insert_events(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev, size_t n,
	      const PGresult *res, const unsigned char prev[HASH_LEN])
{
	struct fields *f = NULL;
	unsigned char(*hash)[HASH_LEN] = NULL;
	const char **v = NULL;
	int *len = NULL, *fmt = NULL;
	char *sql = NULL;
	size_t i, j, off, cap;
	enum esc_err r;

	if ((size_t)PQntuples(res) != n || PQnfields(res) < 2)
		return esc_error(ctx, ESC_ERR_DB, "the database gave %d audit event ids, not %zu", PQntuples(res), n);
	cap = 128 + n * (EVENT_NPARAMS * 7 + 4);
	f = calloc(n, sizeof(*f));
	hash = calloc(n, sizeof(*hash));
	v = calloc(n * EVENT_NPARAMS, sizeof(*v));
	len = calloc(n * EVENT_NPARAMS, sizeof(*len));
	fmt = calloc(n * EVENT_NPARAMS, sizeof(*fmt));
	if (f == NULL || hash == NULL || v == NULL || len == NULL || fmt == NULL || (sql = malloc(cap)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++)
		if ((r = fields_of(ctx, &ev[i], &f[i])) != ESC_OK)
			goto out;
	/* nextval's values in row order are increasing: the chain's order is the ids' order. */
	off = (size_t)snprintf(sql, cap,
			       "INSERT INTO audit_events (id, at, actor, role, action, object, outcome, details, "
			       "prev_hash, hash) VALUES ");
	for (i = 0; i < n; i++) {
		const unsigned char *link = i == 0 ? prev : hash[i - 1];
		const char **w = v + i * EVENT_NPARAMS;

		snprintf(f[i].id, sizeof(f[i].id), "%s", PQgetvalue(res, (int)i, 1));
		now_utc(f[i].at, sizeof(f[i].at));
		hex_of(link, HASH_LEN, f[i].prev_hex);
		if (!event_hash(&f[i], hash[i])) {
			r = esc_error(ctx, ESC_ERR_CRYPTO, "cannot hash the audit event");
			goto out;
		}
		w[0] = f[i].id;
		w[1] = f[i].at;
		w[2] = f[i].actor;
		w[3] = f[i].role;
		w[4] = f[i].action;
		w[5] = f[i].object;
		w[6] = f[i].outcome;
		w[7] = f[i].details;
		w[8] = (const char *)link;
		len[i * EVENT_NPARAMS + 8] = HASH_LEN;
		fmt[i * EVENT_NPARAMS + 8] = 1;
		w[9] = (const char *)hash[i];
		len[i * EVENT_NPARAMS + 9] = HASH_LEN;
		fmt[i * EVENT_NPARAMS + 9] = 1;
		for (j = 0; j < EVENT_NPARAMS; j++)
			off += (size_t)snprintf(sql + off, cap - off, "%s$%zu%s", j == 0 ? (i ? ",(" : "(") : ",",
						i * EVENT_NPARAMS + j + 1, j + 1 == EVENT_NPARAMS ? ")" : "");
	}
	/* Sent with the transaction's next statement (its COMMIT, as a rule), in one round trip. */
	if ((r = esc_store_exec_later(ctx, st, sql, (int)(n * EVENT_NPARAMS), v, len, fmt)) != ESC_OK)
		goto out;
	esc_store_set_audit_tail(st, hash[n - 1]);
	r = ESC_OK;
out:
	free(f);
	free(hash);
	free(v);
	free(len);
	free(fmt);
	free(sql);
	return r;
}

static enum esc_err
check_many(struct esc_ctx *ctx, struct esc_store *st, size_t n)
{
	if (!esc_store_in_tx(st) || n > ESC_AUDIT_MANY_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "appending many audit events needs a transaction and at most %d",
				 ESC_AUDIT_MANY_MAX);
	return ESC_OK;
}

/* esc_audit_append_reserved once its arguments are checked. */
static enum esc_err
append_reserved(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev, size_t n,
		const PGresult *res)
{
	unsigned char prev[HASH_LEN];

	memset(prev, 0, sizeof(prev)); /* the first event links to 32 zero bytes */
	if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0)) {
		long l = 0;
		unsigned char *p = OPENSSL_hexstr2buf(PQgetvalue(res, 0, 0), &l);

		if (p == NULL || l != HASH_LEN) {
			OPENSSL_free(p);
			return esc_error(ctx, ESC_ERR_TAMPERED, "the newest audit event's hash is unreadable");
		}
		memcpy(prev, p, HASH_LEN);
		OPENSSL_free(p);
	}
	return insert_events(ctx, st, ev, n, res, prev);
}

enum esc_err
esc_audit_append_reserved(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev, size_t n,
			  const PGresult *res)
{
	enum esc_err r;

	if (n == 0)
		return ESC_OK;
	if ((r = check_many(ctx, st, n)) != ESC_OK)
		return r;
	return append_reserved(ctx, st, ev, n, res);
}

enum esc_err
esc_audit_append_many(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_event *ev, size_t n)
{
	PGresult *res = NULL;
	unsigned char prev[HASH_LEN];
	char count[24];
	const char *v[1] = {count};
	enum esc_err r;

	if (n == 0)
		return ESC_OK;
	if ((r = check_many(ctx, st, n)) != ESC_OK)
		return r;
	/* The chain's end (under the audit lock, as append_impl takes it) and n ids, in one round trip each. */
	snprintf(count, sizeof(count), "%zu", n);
	if (esc_store_audit_tail(st, prev)) {
		if ((r = esc_store_exec(ctx, st,
					"SELECT NULL, nextval('audit_events_id_seq') FROM generate_series(1, $1)", 1, v,
					NULL, NULL, &res)) == ESC_OK)
			r = insert_events(ctx, st, ev, n, res, prev);
	} else if ((r = esc_store_exec(ctx, st, "SELECT pg_advisory_xact_lock(" ESC_STORE_AUDIT_LOCK ")", 0, NULL, NULL,
				       NULL, NULL)) == ESC_OK &&
		   (r = esc_store_exec(ctx, st, ESC_AUDIT_RESERVE_SQL "$1)", 1, v, NULL, NULL, &res)) == ESC_OK)
		r = append_reserved(ctx, st, ev, n, res);
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
	case ESC_ERR_ARCHIVED:
	case ESC_ERR_MISMATCH:
	case ESC_ERR_NOT_FOUND:
	case ESC_ERR_USAGE:
	case ESC_ERR_TAMPERED:
	case ESC_ERR_ROLLED_BACK:
		return "refused";
	default:
		return "failed";
	}
}

const char *
esc_audit_outcome_word(enum esc_err r)
{
	return outcome_of(r);
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
		(void)esc_error(ctx, code, "%s", saved);
	else
		esc_ctx_clear_error(ctx);
}

/* What a checkpoint signs. */
static void
checkpoint_message(char *buf, size_t len, const char *event_id, const char *hash_hex, const char *at)
{
	snprintf(buf, len, CHECKPOINT_TAG "%s\n%s\n%s\n", event_id, hash_hex, at);
}

static enum esc_err
checkpoint_impl(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, long long *event_id)
{
	PGresult *res = NULL;
	struct esc_token_key *key = NULL;
	EVP_PKEY *pkey = NULL;
	EVP_MD_CTX *md = NULL;
	unsigned char *sig = NULL;
	size_t siglen = 0;
	char msg[256], at[40], id[24], hash_hex[2 * HASH_LEN + 1];
	const char *v[4];
	int len[4] = {0}, fmt[4] = {0};
	enum esc_err r;

	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT (SELECT uri FROM token_keys WHERE role = 'audit'), id, encode(hash, 'hex') FROM "
		     "audit_events ORDER BY id DESC LIMIT 1",
		     0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      PQntuples(res) != 1 ? "there is no audit event to sign"
						  : "no audit key is recorded: this CA predates it");
		goto out;
	}
	snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 1));
	snprintf(hash_hex, sizeof(hash_hex), "%s", PQgetvalue(res, 0, 2));
	now_utc(at, sizeof(at));
	checkpoint_message(msg, sizeof(msg), id, hash_hex, at);
	if ((r = esc_token_find_key(ctx, ca_tok, PQgetvalue(res, 0, 0), &key)) != ESC_OK ||
	    (r = esc_token_key_private(ctx, ca_tok, key, &pkey)) != ESC_OK)
		goto out;
	if ((md = EVP_MD_CTX_new()) == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey) != 1 ||
	    EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)msg, strlen(msg)) != 1 ||
	    (sig = OPENSSL_malloc(siglen)) == NULL ||
	    EVP_DigestSign(md, sig, &siglen, (const unsigned char *)msg, strlen(msg)) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_PKCS11, "the audit key on token '%s' could not sign the checkpoint",
				   esc_token_label(ca_tok));
		goto out;
	}
	{
		long l = 0;
		unsigned char *h = OPENSSL_hexstr2buf(hash_hex, &l);

		v[0] = id;
		v[1] = (const char *)h;
		len[1] = (int)l;
		fmt[1] = 1;
		v[2] = at;
		v[3] = (const char *)sig;
		len[3] = (int)siglen;
		fmt[3] = 1;
		r = h == NULL ? esc_error(ctx, ESC_ERR_NOMEM, "out of memory")
			      : esc_store_exec(ctx, st,
					       "INSERT INTO audit_checkpoints (event_id, event_hash, at, signature) "
					       "VALUES ($1, $2, $3, $4)",
					       4, v, len, fmt, NULL);
		OPENSSL_free(h);
		if (r != ESC_OK)
			goto out;
	}
	{
		char obj[40];
		struct esc_audit_event ev = {"ca-token", "service", "audit.checkpoint", obj, "ok", at};

		snprintf(obj, sizeof(obj), "event %s", id);
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	*event_id = strtoll(id, NULL, 10);
	r = ESC_OK;
out:
	OPENSSL_free(sig);
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(pkey);
	esc_token_key_free(key);
	PQclear(res);
	return r;
}

enum esc_err
esc_audit_checkpoint(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, long long *event_id)
{
	enum esc_err r;

	if (st == NULL || ca_tok == NULL || event_id == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_audit_checkpoint: NULL argument");
	/* A checkpoint that cannot be made (no audit key, token trouble) is a security event too. */
	if ((r = checkpoint_impl(ctx, st, ca_tok, event_id)) != ESC_OK)
		esc_audit_outcome(ctx, st, "ca-token", "service", "audit.checkpoint", "chain", r);
	return r;
}

enum esc_err
esc_audit_checkpoint_if_due(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, long long events,
			    long long seconds, long long *event_id)
{
	PGresult *res = NULL;
	char since[24] = "0", want[24];
	const char *v[2] = {since, want};
	long long pending, age = -1;
	enum esc_err r;

	if (events <= 0 && seconds <= 0) {
		*event_id = 0;
		return ESC_OK;
	}
	if ((r = esc_store_exec(ctx, st,
				"SELECT event_id, floor(extract(epoch FROM now() - at::timestamptz))::bigint FROM "
				"audit_checkpoints ORDER BY id DESC LIMIT 1",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) == 1) {
		snprintf(since, sizeof(since), "%s", PQgetvalue(res, 0, 0));
		age = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	}
	PQclear(res);
	res = NULL;
	/* Count no further than needed: after a long pause this stays a short index scan. */
	snprintf(want, sizeof(want), "%lld", events > 0 ? events : 1);
	if ((r = esc_store_exec(ctx, st,
				"SELECT count(*) FROM (SELECT 1 FROM audit_events WHERE id > $1::bigint AND action <> "
				"'audit.checkpoint' ORDER BY id LIMIT $2::bigint) x",
				2, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	pending = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	if (pending == 0 || !((events > 0 && pending >= events) || (seconds > 0 && (age < 0 || age >= seconds)))) {
		*event_id = 0;
		return ESC_OK;
	}
	return esc_audit_checkpoint(ctx, st, ca_tok, event_id);
}

/* Is this checkpoint's signature good under pub? */
static int
checkpoint_signed(EVP_PKEY *pub, const char *event_id, const char *hash_hex, const char *at, const unsigned char *sig,
		  size_t siglen)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	char msg[256];
	int ok;

	checkpoint_message(msg, sizeof(msg), event_id, hash_hex, at);
	ok = md != NULL && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
	     EVP_DigestVerify(md, sig, siglen, (const unsigned char *)msg, strlen(msg)) == 1;
	EVP_MD_CTX_free(md);
	return ok;
}

/* The audit key's certificate (token_keys) and, with ca non-NULL, the CA's.  Errors: those of esc_store_get_cert. */
static enum esc_err
audit_certs(struct esc_ctx *ctx, struct esc_store *st, X509 **ca, X509 **auditor)
{
	enum esc_err r;

	if (ca != NULL && (r = esc_store_get_cert(ctx, st, "the CA certificate", "SELECT certificate FROM ca", 0, NULL,
						  ca)) != ESC_OK)
		return r;
	return esc_store_get_cert(ctx, st, "the audit certificate",
				  "SELECT certificate FROM token_keys WHERE role = 'audit'", 0, NULL, auditor);
}

/* What the chain said of one checkpoint's event (esc_audit_verify reads the chain once, in pages). */
struct cp_seen {
	long long event; /* the event the checkpoint signed */
	int found;	 /* 1: the chain holds it with the signed hash; 2: with another hash */
};

/*
 * Check every checkpoint (rows of cps, ordered by id) against what the
 * chain held (seen, in the same order; last: the chain's last event id).
 */
static enum esc_err
verify_checkpoints(struct esc_ctx *ctx, struct esc_store *st, PGresult *cps, const struct cp_seen *seen, long long last,
		   struct esc_audit_report *rep)
{
	X509 *ca = NULL, *auditor = NULL;
	enum esc_err r;
	int i, rows = PQntuples(cps);

	if (rows == 0 || seen == NULL)
		return ESC_OK;
	if ((r = audit_certs(ctx, st, &ca, &auditor)) != ESC_OK)
		goto out;
	if (X509_verify(auditor, X509_get0_pubkey(ca)) != 1) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "the stored audit certificate was not issued by the CA");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		const char *eid = PQgetvalue(cps, i, 1), *hh = PQgetvalue(cps, i, 2);
		long long e = seen[i].event;
		long siglen = 0;
		unsigned char *sig = OPENSSL_hexstr2buf(PQgetvalue(cps, i, 4), &siglen);
		int good = sig != NULL && checkpoint_signed(X509_get0_pubkey(auditor), eid, hh, PQgetvalue(cps, i, 3),
							    sig, (size_t)siglen);

		OPENSSL_free(sig);
		if (!good) {
			snprintf(rep->problem, sizeof(rep->problem), "checkpoint %s's signature does not verify",
				 PQgetvalue(cps, i, 0));
			rep->first_bad = e;
			r = esc_error(ctx, ESC_ERR_TAMPERED, "audit checkpoint %s: its signature does not verify",
				      PQgetvalue(cps, i, 0));
			goto out;
		}
		if (e > last) {
			snprintf(rep->problem, sizeof(rep->problem), "events after %lld were removed", last);
			rep->first_bad = last + 1;
			r = esc_error(ctx, ESC_ERR_TAMPERED,
				      "audit checkpoint %s signed event %lld, but the log ends at event %lld: events "
				      "were cut from its end",
				      PQgetvalue(cps, i, 0), e, last);
			goto out;
		}
		if (seen[i].found != 1) {
			snprintf(rep->problem, sizeof(rep->problem),
				 "the event checkpoint %s signed is gone or changed", PQgetvalue(cps, i, 0));
			rep->first_bad = e;
			r = esc_error(
				ctx, ESC_ERR_TAMPERED,
				"audit event %lld: it is not the event checkpoint %s signed (the log was rewritten)", e,
				PQgetvalue(cps, i, 0));
			goto out;
		}
		rep->checkpoints++;
		rep->last_signed = e;
	}
	r = ESC_OK;
out:
	X509_free(ca);
	X509_free(auditor);
	return r;
}

/* Events read per FETCH: memory stays that of one page whatever the chain's length. */
#define VERIFY_PAGE "5000"

/* idx[0..n): the entries of seen in the order of their events (insertion: checkpoints are few and in order already). */
static void
order_by_event(const struct cp_seen *seen, int n, int *idx)
{
	int i, j;

	for (i = 0; i < n; i++) {
		for (j = i; j > 0 && seen[idx[j - 1]].event > seen[i].event; j--)
			idx[j] = idx[j - 1];
		idx[j] = i;
	}
}

enum esc_err
esc_audit_verify(struct esc_ctx *ctx, struct esc_store *st, struct esc_audit_report *rep)
{
	PGresult *cps = NULL, *res = NULL;
	struct cp_seen *seen = NULL;
	struct fields f;
	unsigned char hash[HASH_LEN];
	char expect_prev[2 * HASH_LEN + 1], hash_hex[2 * HASH_LEN + 1], prev_id[24] = "start of the log";
	long long last_id = 0;
	enum esc_err r;
	int i, rows, ncp, *idx = NULL, next = 0, own = !esc_store_in_tx(st);

	memset(rep, 0, sizeof(*rep));
	/*
	 * One snapshot for the checkpoints and the whole chain, read through a
	 * cursor a page at a time: a million events took 510 MB in one result.
	 */
	if (own) {
		if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL, NULL,
					NULL)) != ESC_OK)
			return r;
		esc_store_mark_tx(st);
	}
	if ((r = esc_store_exec(ctx, st,
				"SELECT id, event_id, encode(event_hash, 'hex'), at, encode(signature, 'hex') FROM "
				"audit_checkpoints ORDER BY id",
				0, NULL, NULL, NULL, &cps)) != ESC_OK)
		goto out;
	ncp = PQntuples(cps);
	if (ncp > 0 && ((seen = calloc((size_t)ncp, sizeof(*seen))) == NULL ||
			(idx = calloc((size_t)ncp, sizeof(*idx))) == NULL)) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < ncp; i++)
		seen[i].event = strtoll(PQgetvalue(cps, i, 1), NULL, 10);
	order_by_event(seen, ncp, idx);
	if ((r = esc_store_exec(ctx, st,
				"DECLARE audit_verify NO SCROLL CURSOR FOR SELECT id, at, actor, role, action, object, "
				"outcome, details, encode(prev_hash, 'hex'), encode(hash, 'hex') FROM audit_events "
				"ORDER BY id",
				0, NULL, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	memset(expect_prev, '0', 2 * HASH_LEN);
	expect_prev[2 * HASH_LEN] = '\0';
	for (;;) {
		PQclear(res);
		res = NULL;
		if ((r = esc_store_exec(ctx, st, "FETCH FORWARD " VERIFY_PAGE " FROM audit_verify", 0, NULL, NULL, NULL,
					&res)) != ESC_OK)
			goto out;
		if ((rows = PQntuples(res)) == 0)
			break;
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
					 "it does not follow the event before it (%s): an event was removed or "
					 "reordered",
					 prev_id);
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
			/* The checkpoints that signed this event: is it the hash they signed? */
			while (next < ncp && seen[idx[next]].event < id)
				next++;
			for (; next < ncp && seen[idx[next]].event == id; next++)
				seen[idx[next]].found =
					strcmp(PQgetvalue(res, i, 9), PQgetvalue(cps, idx[next], 2)) == 0 ? 1 : 2;
			snprintf(expect_prev, sizeof(expect_prev), "%s", PQgetvalue(res, i, 9));
			snprintf(prev_id, sizeof(prev_id), "%s", PQgetvalue(res, i, 0));
			last_id = id;
		}
	}
	r = verify_checkpoints(ctx, st, cps, seen, last_id, rep);
out:
	if (own) {
		esc_store_rollback(st); /* read only: nothing to keep; the cursor goes with it */
	} else if (r == ESC_OK) {
		/* In the caller's transaction the cursor is closed (after a failure that transaction is aborted). */
		r = esc_store_exec(ctx, st, "CLOSE audit_verify", 0, NULL, NULL, NULL, NULL);
	}
	PQclear(res);
	PQclear(cps);
	free(seen);
	free(idx);
	return r;
}

/* A serial as the trail records it: lower-case hex without separators or leading zeros. */
static enum esc_err
serial_filter(struct esc_ctx *ctx, const char *in, char *out, size_t len)
{
	size_t n = 0;

	for (; *in == '0' || *in == ':'; in++)
		;
	for (; *in != '\0'; in++) {
		if (*in == ':')
			continue;
		if (!((*in >= '0' && *in <= '9') || (*in >= 'a' && *in <= 'f') || (*in >= 'A' && *in <= 'F')) ||
		    n + 1 >= len)
			return esc_error(ctx, ESC_ERR_USAGE, "--serial takes a certificate serial in hexadecimal");
		out[n++] = (char)(*in >= 'A' && *in <= 'F' ? *in - 'A' + 'a' : *in);
	}
	out[n] = '\0';
	if (n == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "--serial takes a certificate serial in hexadecimal");
	return ESC_OK;
}

/*
 * Append " AND " cond to sql (len bytes, truncation impossible for the
 * fixed fragments below), each '?' in cond the next parameter's "$N"; value
 * becomes that parameter.
 */
static void
add_filter(char *sql, size_t len, const char *cond, const char **v, int *nv, const char *value)
{
	size_t used = strlen(sql);

	v[(*nv)++] = value;
	used += (size_t)snprintf(sql + used, len - used, " AND ");
	for (; *cond != '\0' && used < len; cond++)
		used += (size_t)(*cond == '?' ? snprintf(sql + used, len - used, "$%d", *nv)
					      : snprintf(sql + used, len - used, "%c", *cond));
}

/*
 * The audit listing's WHERE clause is built from fixed fragments for the
 * filters given, their values parameters: a statement of "$1 IS NULL OR
 * ..." alternatives, planned once per connection, gets a generic plan that
 * uses no index.  Each fragment is an indexed column compared by itself
 * (sql/003 and sql/015).
 */
#define AUDIT_QUERY_HEAD "SELECT id, at, actor, role, action, object, outcome, details FROM audit_events WHERE true"
/*
 * A serial is stored as the certificate's hex (one leading zero when its
 * first byte is below 0x10, none after a revocation's normalisation);
 * recovery events name their request, so the requests of the records of
 * that serial (and the record ids, as a refused request may name one) are
 * matched too.  Every alternative is an exact object, so the object index
 * serves it, and the records are found through their normalised serial's.
 */
#define AUDIT_SERIAL_FILTER                                                                                              \
	"object = ANY (ARRAY[?::text, '0' || ?::text] || ARRAY(SELECT 'request ' || q.id FROM recovery_requests q JOIN " \
	"archive_records a ON a.id = q.record_id WHERE ltrim(a.cert_serial, '0') = ?) || ARRAY(SELECT "                  \
	"a.id::text FROM archive_records a WHERE ltrim(a.cert_serial, '0') = ?))"

enum esc_err
esc_audit_query(struct esc_ctx *ctx, struct esc_store *st, const struct esc_audit_filter *f, struct esc_audit_row **out,
		size_t *n)
{
	PGresult *res = NULL;
	struct esc_audit_row *rows = NULL;
	char lim[24], serial[130], sql[sizeof(AUDIT_QUERY_HEAD) + sizeof(AUDIT_SERIAL_FILTER) + 256];
	const char *v[7];
	enum esc_err r;
	int i, count, nv = 0;

	if (f->serial != NULL && (r = serial_filter(ctx, f->serial, serial, sizeof(serial))) != ESC_OK)
		return r;
	snprintf(lim, sizeof(lim), "%zu", f->limit == 0 || f->limit > 100000 ? 100000 : f->limit);
	snprintf(sql, sizeof(sql), "%s", AUDIT_QUERY_HEAD);
	if (f->since != NULL)
		add_filter(sql, sizeof(sql), "at >= ?", v, &nv, f->since);
	if (f->until != NULL)
		add_filter(sql, sizeof(sql), "at <= ?", v, &nv, f->until);
	if (f->actor != NULL)
		add_filter(sql, sizeof(sql), "actor = ?", v, &nv, f->actor);
	if (f->action != NULL)
		add_filter(sql, sizeof(sql), "action = ?", v, &nv, f->action);
	if (f->object != NULL)
		add_filter(sql, sizeof(sql), "object = ?", v, &nv, f->object);
	if (f->serial != NULL)
		add_filter(sql, sizeof(sql), AUDIT_SERIAL_FILTER, v, &nv, serial);
	v[nv++] = lim;
	snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), " ORDER BY id LIMIT $%d::bigint", nv);
	if ((r = esc_store_exec(ctx, st, sql, nv, v, NULL, NULL, &res)) != ESC_OK)
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

/* ---- Checkpoints kept outside the database -------------------------------- */

#define ANCHOR_TAG "p11escrow-audit-checkpoint-v1"
#define ANCHOR_SIG_MAX 1024 /* bytes of a signature: RSA-8192 is 1024 */

/* The SHA-256 of x's DER, as lower-case hex. */
static int
cert_sha256_hex(X509 *x, char out[2 * HASH_LEN + 1])
{
	unsigned char md[HASH_LEN];
	unsigned int n = 0;

	if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != HASH_LEN)
		return 0;
	hex_of(md, HASH_LEN, out);
	return 1;
}

enum esc_err
esc_audit_checkpoint_export(struct esc_ctx *ctx, struct esc_store *st, long long event_id, int with_cert, char **out,
			    struct esc_audit_anchor *a)
{
	PGresult *res = NULL;
	X509 *auditor = NULL;
	BIO *bio = NULL;
	BUF_MEM *mem = NULL;
	char want[24], signer[2 * HASH_LEN + 1], *b64 = NULL, *text = NULL;
	const char *v[1] = {want};
	const char *sep = with_cert ? "\n" : " ";
	const unsigned char *sig;
	size_t siglen;
	enum esc_err r;

	if (st == NULL || out == NULL || event_id < 0)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_audit_checkpoint_export: bad argument");
	snprintf(want, sizeof(want), "%lld", event_id);
	if ((r = esc_store_exec(ctx, st,
				"SELECT event_id, encode(event_hash, 'hex'), at, signature FROM audit_checkpoints "
				"WHERE $1::bigint = 0 OR event_id = $1::bigint ORDER BY id DESC LIMIT 1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = event_id == 0
			    ? esc_error(ctx, ESC_ERR_NOT_FOUND, "the audit trail has no checkpoint yet")
			    : esc_error(ctx, ESC_ERR_NOT_FOUND, "no audit checkpoint signed event %lld", event_id);
		goto out;
	}
	if ((r = audit_certs(ctx, st, NULL, &auditor)) != ESC_OK)
		goto out;
	if (!cert_sha256_hex(auditor, signer)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the audit certificate");
		goto out;
	}
	{
		/* The signature column is bytea, read as text: PQunescapeBytea gives its bytes. */
		unsigned char *raw = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, 3), &siglen);

		sig = raw;
		if (raw == NULL || siglen == 0 || siglen > ANCHOR_SIG_MAX ||
		    (b64 = malloc(4 * ((siglen + 2) / 3) + 1)) == NULL) {
			PQfreemem(raw);
			r = esc_error(ctx, ESC_ERR_NOMEM, "cannot read the checkpoint's signature");
			goto out;
		}
		EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
		PQfreemem(raw);
	}
	if ((bio = BIO_new(BIO_s_mem())) == NULL ||
	    BIO_printf(bio, "%s" ANCHOR_TAG "%sevent=%s%shash=%s%stime=%s%ssigner-sha256=%s%ssignature=%s%s",
		       with_cert ? "# p11escrow audit checkpoint: keep it off-host; check a database against it with\n"
				   "# p11escrow audit verify --checkpoint FILE\n"
				 : "",
		       sep, PQgetvalue(res, 0, 0), sep, PQgetvalue(res, 0, 1), sep, PQgetvalue(res, 0, 2), sep, signer,
		       sep, b64, with_cert ? "\n" : "") <= 0 ||
	    (with_cert && PEM_write_bio_X509(bio, auditor) != 1)) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "cannot format the checkpoint");
		goto out;
	}
	BIO_get_mem_ptr(bio, &mem);
	if ((text = malloc(mem->length + 1)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(text, mem->data, mem->length);
	text[mem->length] = '\0';
	if (a != NULL) {
		memset(a, 0, sizeof(*a));
		a->event = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		snprintf(a->at, sizeof(a->at), "%s", PQgetvalue(res, 0, 2));
	}
	*out = text;
	text = NULL; /* transferred */
	r = ESC_OK;
out:
	free(text);
	free(b64);
	BIO_free(bio);
	X509_free(auditor);
	PQclear(res);
	return r;
}

enum esc_err
esc_audit_checkpoint_write(struct esc_ctx *ctx, const char *path, const char *text)
{
	char tmp[4096];
	size_t len;
	int fd, ok;

	if (path == NULL || *path == '\0' || text == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "no file to write the checkpoint to");
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmpXXXXXX", path) >= sizeof(tmp))
		return esc_error(ctx, ESC_ERR_USAGE, "checkpoint file path too long");
	if ((fd = mkstemp(tmp)) == -1)
		return esc_error(ctx, ESC_ERR_IO, "cannot create '%s': %s", tmp, strerror(errno));
	/* It holds no secret: readable by whoever ships it off-host. */
	len = strlen(text);
	ok = fchmod(fd, 0644) == 0;
	while (ok && len > 0) {
		ssize_t n = write(fd, text, len);

		if (n < 0 && errno == EINTR)
			continue;
		ok = n > 0;
		if (ok) {
			text += n;
			len -= (size_t)n;
		}
	}
	ok = ok && fsync(fd) == 0;
	if (close(fd) != 0)
		ok = 0;
	if (!ok) {
		unlink(tmp);
		return esc_error(ctx, ESC_ERR_IO, "cannot write the checkpoint to '%s': %s", tmp, strerror(errno));
	}
	if (rename(tmp, path) == -1) {
		int e = errno;

		unlink(tmp);
		return esc_error(ctx, ESC_ERR_IO, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
	}
	return ESC_OK;
}

/* An exported checkpoint, parsed. */
struct anchor_file {
	char event[24];
	char hash[2 * HASH_LEN + 1];
	char at[40];
	char signer[2 * HASH_LEN + 1];
	unsigned char sig[ANCHOR_SIG_MAX + 3];
	size_t siglen;
	X509 *cert; /* the file form's audit certificate; NULL in the one-line form */
};

#define ANCHOR_EVENT 1u
#define ANCHOR_HASH 2u
#define ANCHOR_TIME 4u
#define ANCHOR_SIGNER 8u
#define ANCHOR_SIGNATURE 16u
#define ANCHOR_ALL 31u

static int
is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

static int
all_of(const char *s, size_t n, const char *set)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (s[i] == '\0' || strchr(set, s[i]) == NULL)
			return 0;
	return 1;
}

/* Copy n bytes of src to dst (cap bytes with the NUL) if they fit and are of set. */
static int
take(char *dst, size_t cap, const char *src, size_t n, size_t min, const char *set)
{
	if (n < min || n >= cap || !all_of(src, n, set))
		return 0;
	memcpy(dst, src, n);
	dst[n] = '\0';
	return 1;
}

#define DIGITS "0123456789"
#define LOWER_HEX "0123456789abcdef"
#define BASE64 "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

/* One "key=value" token (n bytes) into f; 0 if unknown, repeated or malformed. */
static int
anchor_field(struct anchor_file *f, const char *tok, size_t n, unsigned *seen)
{
	const char *eq = memchr(tok, '=', n), *v;
	size_t k, vn;
	unsigned bit;
	int ok;

	if (eq == NULL)
		return 0;
	k = (size_t)(eq - tok);
	v = eq + 1;
	vn = n - k - 1;
	if (k == 5 && memcmp(tok, "event", 5) == 0) {
		bit = ANCHOR_EVENT;
		ok = take(f->event, 19, v, vn, 1, DIGITS) && f->event[0] != '0';
	} else if (k == 4 && memcmp(tok, "hash", 4) == 0) {
		bit = ANCHOR_HASH;
		ok = vn == 2 * HASH_LEN && take(f->hash, sizeof(f->hash), v, vn, 1, LOWER_HEX);
	} else if (k == 4 && memcmp(tok, "time", 4) == 0) {
		bit = ANCHOR_TIME;
		ok = take(f->at, sizeof(f->at), v, vn, 1, DIGITS "TZ:.+-");
	} else if (k == 13 && memcmp(tok, "signer-sha256", 13) == 0) {
		bit = ANCHOR_SIGNER;
		ok = vn == 2 * HASH_LEN && take(f->signer, sizeof(f->signer), v, vn, 1, LOWER_HEX);
	} else if (k == 9 && memcmp(tok, "signature", 9) == 0) {
		char b64[4 * ((ANCHOR_SIG_MAX + 2) / 3) + 1];
		int out;

		bit = ANCHOR_SIGNATURE;
		ok = vn % 4 == 0 && take(b64, sizeof(b64), v, vn, 4, BASE64) &&
		     (out = EVP_DecodeBlock(f->sig, (const unsigned char *)b64, (int)vn)) > 0;
		if (ok) {
			/* EVP_DecodeBlock counts the padding as zero bytes. */
			f->siglen = (size_t)out - (v[vn - 1] == '=') - (v[vn - 2] == '=');
			ok = f->siglen > 0 && f->siglen <= ANCHOR_SIG_MAX;
		}
	} else
		return 0;
	if (!ok || (*seen & bit) != 0)
		return 0;
	*seen |= bit;
	return 1;
}

/*
 * Parse an exported checkpoint: the tag, then the five fields as
 * whitespace-separated key=value tokens ('#' starts a comment line), then
 * optionally one PEM certificate and nothing else.
 */
static enum esc_err
anchor_parse(struct esc_ctx *ctx, const char *text, size_t len, struct anchor_file *f)
{
	static const char pem_begin[] = "-----BEGIN ";
	size_t i = 0, j, head = len, n;
	unsigned seen = 0;
	int tagged = 0;

	if (len > ESC_AUDIT_CHECKPOINT_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the checkpoint is larger than %d bytes: not a checkpoint",
				 ESC_AUDIT_CHECKPOINT_MAX);
	if (memchr(text, '\0', len) != NULL)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the checkpoint holds a NUL byte: not a checkpoint");
	for (j = 0; j + sizeof(pem_begin) - 1 <= len; j++)
		if (memcmp(text + j, pem_begin, sizeof(pem_begin) - 1) == 0) {
			head = j;
			break;
		}
	while (i < head) {
		if (is_space(text[i])) {
			i++;
			continue;
		}
		if (text[i] == '#') {
			while (i < head && text[i] != '\n')
				i++;
			continue;
		}
		for (j = i; i < head && !is_space(text[i]); i++)
			;
		n = i - j;
		if (!tagged) {
			if (n != strlen(ANCHOR_TAG) || memcmp(text + j, ANCHOR_TAG, n) != 0)
				return esc_error(ctx, ESC_ERR_BAD_INPUT,
						 "not a p11escrow audit checkpoint (it must begin with " ANCHOR_TAG
						 ")");
			tagged = 1;
		} else if (!anchor_field(f, text + j, n, &seen))
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the checkpoint's field '%.*s' is unknown, repeated or malformed",
					 (int)(n > 40 ? 40 : n), text + j);
	}
	if (!tagged || seen != ANCHOR_ALL)
		return esc_error(
			ctx, ESC_ERR_BAD_INPUT,
			"the checkpoint lacks a field: it needs event, hash, time, signer-sha256 and signature");
	if (head < len) {
		BIO *b = BIO_new_mem_buf(text + head, (int)(len - head));
		char rest[64];
		int got, ok;

		ok = b != NULL && (f->cert = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL;
		while (ok && (got = BIO_read(b, rest, sizeof(rest))) > 0)
			ok = all_of(rest, (size_t)got, " \t\r\n");
		BIO_free(b);
		if (!ok)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the checkpoint's certificate is malformed, or something follows it");
	}
	return ESC_OK;
}

enum esc_err
esc_audit_anchor_parse(struct esc_ctx *ctx, const char *text, size_t len, struct esc_audit_anchor *a)
{
	struct anchor_file f;
	enum esc_err r;

	memset(&f, 0, sizeof(f));
	memset(a, 0, sizeof(*a));
	if ((r = anchor_parse(ctx, text, len, &f)) == ESC_OK) {
		a->event = strtoll(f.event, NULL, 10);
		snprintf(a->at, sizeof(a->at), "%s", f.at);
	}
	X509_free(f.cert);
	return r;
}

enum esc_err
esc_audit_verify_checkpoint(struct esc_ctx *ctx, struct esc_store *st, const char *text, size_t len,
			    struct esc_audit_anchor *a)
{
	struct anchor_file f;
	PGresult *res = NULL;
	X509 *ca = NULL, *auditor = NULL;
	char mine[2 * HASH_LEN + 1], theirs[2 * HASH_LEN + 1];
	const char *v[1];
	long long newest;
	enum esc_err r;

	if (st == NULL || text == NULL || a == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_audit_verify_checkpoint: NULL argument");
	memset(&f, 0, sizeof(f));
	memset(a, 0, sizeof(*a));
	if ((r = anchor_parse(ctx, text, len, &f)) != ESC_OK)
		goto out;
	a->event = strtoll(f.event, NULL, 10);
	snprintf(a->at, sizeof(a->at), "%s", f.at);
	/*
	 * The signer must be this database's audit certificate, issued by its
	 * CA: a file signed by any other key the CA certified (a user's) is no
	 * checkpoint, and a database with another CA does not match the file.
	 */
	if ((r = audit_certs(ctx, st, &ca, &auditor)) != ESC_OK)
		goto out;
	if (!cert_sha256_hex(auditor, mine) || (f.cert != NULL && !cert_sha256_hex(f.cert, theirs))) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the audit certificate");
		goto out;
	}
	if (X509_verify(auditor, X509_get0_pubkey(ca)) != 1) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "the stored audit certificate was not issued by the CA");
		goto out;
	}
	if (f.cert != NULL && strcmp(theirs, f.signer) != 0) {
		r = esc_error(
			ctx, ESC_ERR_TAMPERED,
			"the checkpoint's certificate is not the one its signer-sha256 names: the file was altered");
		goto out;
	}
	if (strcmp(mine, f.signer) != 0) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "the checkpoint was not signed by this database's audit key (certificate SHA-256 %s): "
			      "it belongs to another CA, or the database's CA was replaced",
			      f.signer);
		goto out;
	}
	if (!checkpoint_signed(X509_get0_pubkey(auditor), f.event, f.hash, f.at, f.sig, f.siglen)) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "the checkpoint's signature does not verify: its event, hash or time was altered");
		goto out;
	}
	v[0] = f.event;
	if ((r = esc_store_exec(ctx, st,
				"SELECT (SELECT coalesce(max(id), 0) FROM audit_events), (SELECT encode(hash, 'hex') "
				"FROM audit_events WHERE id = $1::bigint)",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	a->newest = newest = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	if (newest < a->event) {
		r = esc_error(ctx, ESC_ERR_ROLLED_BACK,
			      "the database is older than the checkpoint of %s: events %lld..%lld are missing; it was "
			      "restored from an older backup or rolled back",
			      f.at, newest + 1, a->event);
		goto out;
	}
	if (PQgetisnull(res, 0, 1) || strcmp(PQgetvalue(res, 0, 1), f.hash) != 0) {
		r = esc_error(ctx, ESC_ERR_ROLLED_BACK,
			      "audit event %lld is not the event the checkpoint of %s signed: the history up to it was "
			      "replaced; restored from an older backup and written to since, or rewritten",
			      a->event, f.at);
		goto out;
	}
	r = ESC_OK;
out:
	X509_free(f.cert);
	X509_free(ca);
	X509_free(auditor);
	PQclear(res);
	return r;
}
