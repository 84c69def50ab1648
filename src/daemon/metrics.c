/*
 * p11escrowd — counters shared by the worker processes, GET /metrics and
 * GET /readyz (metrics.h; docs/operator-guide.md, "Monitoring").
 */
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <p11escrow/auth.h>
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>

#include "metrics.h"
#include "svc.h"

/* Route classes of requests, by path. */
enum route { R_EST, R_API, R_CRL, R_CA, R_HEALTHZ, R_READYZ, R_METRICS, R_OTHER, NROUTES };
static const char *const route_names[NROUTES] = {"est", "api", "crl", "ca", "healthz", "readyz", "metrics", "other"};

/* Status classes: 1xx .. 5xx. */
#define NSTATUS 5

/* Library errors by code: esc_err codes are 0 .. -ERR_SPAN+1. */
#define ERR_SPAN 64

/* Keeper operations (the keeper protocol's request names), and the database's. */
static const char *const token_ops[] = {"hello",     "issue",	   "open-transport", "seal-key", "release", "sign-crl",
					"kra-prove", "checkpoint", "reseal",	     "status",	 "other"};
#define NTOKEN (sizeof(token_ops) / sizeof(token_ops[0]))
static const char *const db_ops[] = {"statement", "begin", "commit", "other"};
#define NDB (sizeof(db_ops) / sizeof(db_ops[0]))

/* Histogram bucket bounds, seconds: from a fast token signature to a slow network HSM or a busy database. */
static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const char *const bound_names[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
					  "0.1",    "0.25",  "0.5",    "1",	"2.5",	"5",	 "10"};
#define NBOUNDS (sizeof(bounds) / sizeof(bounds[0]))

struct hist {
	atomic_ullong bucket[NBOUNDS + 1]; /* per bucket, not cumulative; the last is over the highest bound */
	atomic_ullong count;
	atomic_ullong sum_ns;
};

struct svc_metrics_slot {
	atomic_ullong requests[NROUTES][NSTATUS];
	atomic_ullong errors[ERR_SPAN];
	atomic_ullong logins_failed;
	atomic_ullong logins_throttled;
	struct hist token[NTOKEN];
	struct hist db[NDB];
};

struct svc_metrics {
	size_t size; /* of the mapping */
	int nslots;
	struct svc_metrics_slot slot[];
};

struct svc_metrics *
svc_metrics_new(int nslots)
{
	size_t size = sizeof(struct svc_metrics) + (size_t)nslots * sizeof(struct svc_metrics_slot);
	struct svc_metrics *m;

	if (nslots <= 0)
		return NULL;
	/* Zero-filled (every atomic 0), and seen by every process forked after this. */
	m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	m->size = size;
	m->nslots = nslots;
	return m;
}

void
svc_metrics_free(struct svc_metrics *m)
{
	if (m != NULL)
		munmap(m, m->size);
}

struct svc_metrics_slot *
svc_metrics_slot(struct svc_metrics *m, int i)
{
	return m != NULL && i >= 0 && i < m->nslots ? &m->slot[i] : NULL;
}

static void
add(atomic_ullong *a, unsigned long long n)
{
	atomic_fetch_add_explicit(a, n, memory_order_relaxed);
}

static unsigned long long
get(const atomic_ullong *a)
{
	return atomic_load_explicit(a, memory_order_relaxed);
}

static enum route
route_of(const char *path)
{
	if (path == NULL)
		return R_OTHER;
	if (strncmp(path, "/.well-known/est/", 17) == 0)
		return R_EST;
	if (strncmp(path, "/api/v1", 7) == 0 && (path[7] == '/' || path[7] == '\0'))
		return R_API;
	if (strcmp(path, "/crl") == 0)
		return R_CRL;
	if (strcmp(path, "/ca.crt") == 0)
		return R_CA;
	if (strcmp(path, "/healthz") == 0)
		return R_HEALTHZ;
	if (strcmp(path, "/readyz") == 0)
		return R_READYZ;
	if (strcmp(path, "/metrics") == 0)
		return R_METRICS;
	return R_OTHER;
}

void
svc_metrics_request(struct svc_metrics_slot *s, const char *path, int status)
{
	if (s == NULL || status < 100 || status > 599)
		return;
	add(&s->requests[route_of(path)][status / 100 - 1], 1);
}

void
svc_metrics_error(struct svc_metrics_slot *s, enum esc_err e)
{
	if (s != NULL && (int)e <= 0 && (int)e > -ERR_SPAN)
		add(&s->errors[-(int)e], 1);
}

void
svc_metrics_login_failed(struct svc_metrics_slot *s)
{
	if (s != NULL)
		add(&s->logins_failed, 1);
}

void
svc_metrics_login_throttled(struct svc_metrics_slot *s)
{
	if (s != NULL)
		add(&s->logins_throttled, 1);
}

static void
observe(struct hist *h, double seconds)
{
	size_t i;

	for (i = 0; i < NBOUNDS && seconds > bounds[i]; i++)
		;
	add(&h->bucket[i], 1);
	add(&h->count, 1);
	add(&h->sum_ns, seconds > 0 ? (unsigned long long)(seconds * 1e9) : 0);
}

static size_t
op_index(const char *const *names, size_t n, const char *what)
{
	size_t i;

	for (i = 0; i + 1 < n; i++)
		if (strcmp(names[i], what) == 0)
			return i;
	return n - 1; /* "other" */
}

void
svc_metrics_timing(void *arg, enum esc_timing_kind kind, const char *what, double seconds)
{
	struct svc_metrics_slot *s = arg;

	if (s == NULL || what == NULL)
		return;
	if (kind == ESC_TIMING_TOKEN)
		observe(&s->token[op_index(token_ops, NTOKEN, what)], seconds);
	else
		observe(&s->db[op_index(db_ops, NDB, what)], seconds);
}

int
svc_metrics_token_read(struct esc_ctx *ctx, const char *path, unsigned char hash[32], char *why, size_t whylen)
{
	struct esc_secret *tok = NULL;
	unsigned int n = 0;
	int rc = -1;

	if (path == NULL || *path == '\0')
		return 0;
	if (esc_secret_from_file(ctx, path, &tok) != ESC_OK) {
		snprintf(why, whylen, "metrics_token_file: %s", esc_ctx_errmsg(ctx));
		goto out;
	}
	if (esc_secret_len(tok) < 16) {
		snprintf(why, whylen, "metrics_token_file '%s': the token is shorter than 16 characters", path);
		goto out;
	}
	/* Only its hash is kept: compared in constant time with the hash of what a client presents. */
	if (!EVP_Digest(esc_secret_str(tok), esc_secret_len(tok), hash, &n, EVP_sha256(), NULL) || n != 32) {
		snprintf(why, whylen, "metrics_token_file: cannot hash the token");
		goto out;
	}
	rc = 1;
out:
	esc_secret_free(tok);
	return rc;
}

/* ---- the exposition ---------------------------------------------------------------------------------- */

/* A growing text buffer; a failed append leaves failed set and the reply is a 500. */
struct text {
	char *p;
	size_t len, cap;
	int failed;
};

#define TEXT_MAX (1024 * 1024)

static void __attribute__((format(printf, 2, 3))) out(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->p != NULL ? t->p + t->len : NULL, t->p != NULL ? t->cap - t->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = 1;
			return;
		}
		if (t->p != NULL && (size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		{
			size_t cap = t->cap == 0 ? 16384 : 2 * t->cap;
			char *p;

			while (cap < t->len + (size_t)n + 1)
				cap *= 2;
			if (cap > TEXT_MAX || (p = realloc(t->p, cap)) == NULL) {
				t->failed = 1;
				return;
			}
			t->p = p;
			t->cap = cap;
		}
	}
}

static void
family(struct text *t, const char *name, const char *type, const char *help)
{
	out(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value as the exposition format escapes it (backslash, quote, newline). */
static void
label_value(char *dst, size_t len, const char *v)
{
	size_t i = 0;

	for (; *v != '\0' && i + 2 < len; v++) {
		if (*v == '\\' || *v == '"') {
			dst[i++] = '\\';
			dst[i++] = *v;
		} else if (*v == '\n') {
			dst[i++] = '\\';
			dst[i++] = 'n';
		} else {
			dst[i++] = *v;
		}
	}
	dst[i] = '\0';
}

static void
histograms(struct text *t, struct svc_metrics *m, int token, const char *name, const char *help)
{
	const char *const *names = token ? token_ops : db_ops;
	size_t nops = token ? NTOKEN : NDB, op, b;
	int i;

	family(t, name, "histogram", help);
	for (op = 0; op < nops; op++) {
		unsigned long long bucket[NBOUNDS + 1] = {0}, count = 0, sum = 0, cum = 0;

		for (i = 0; i < m->nslots; i++) {
			const struct hist *h = token ? &m->slot[i].token[op] : &m->slot[i].db[op];

			for (b = 0; b <= NBOUNDS; b++)
				bucket[b] += get(&h->bucket[b]);
			count += get(&h->count);
			sum += get(&h->sum_ns);
		}
		if (count == 0)
			continue; /* an operation never seen: no series */
		for (b = 0; b < NBOUNDS; b++) {
			cum += bucket[b];
			out(t, "%s_bucket{op=\"%s\",le=\"%s\"} %llu\n", name, names[op], bound_names[b], cum);
		}
		out(t, "%s_bucket{op=\"%s\",le=\"+Inf\"} %llu\n", name, names[op], count);
		out(t, "%s_sum{op=\"%s\"} %.9f\n", name, names[op], (double)sum / 1e9);
		out(t, "%s_count{op=\"%s\"} %llu\n", name, names[op], count);
	}
}

#define STATS_TTL 5 /* seconds a worker serves the database's counts it last read */

/* The database's counts, read at most every STATS_TTL seconds by this worker: 0, or -1 if unavailable. */
static int
stats_fresh(struct svc_worker *w)
{
	long long now = svc_mono_seconds();
	struct esc_store_stats s;
	enum esc_err e;

	if (w->stats_at != 0 && now - w->stats_at < STATS_TTL)
		return w->stats_ok ? 0 : -1;
	w->stats_at = now;
	w->stats_ok = 0;
	if (svc_worker_db(w) != ESC_OK)
		return -1;
	memset(&s, 0, sizeof(s));
	if ((e = esc_store_stats(w->ctx, w->st, &s)) != ESC_OK) {
		svc_log(w, ESC_LOG_WARN, "metrics: cannot read the database's counts: %s", esc_ctx_errmsg(w->ctx));
		svc_worker_forget(w, e);
		return -1;
	}
	w->stats = s;
	w->stats_ok = 1;
	return 0;
}

static void
exposition(struct svc_worker *w, struct text *t)
{
	struct svc_metrics *m = w->metrics;
	const struct esc_store_stats *s = &w->stats;
	long long held_names = 0, held_addresses = 0;
	unsigned long long v;
	enum esc_err e;
	char lv[128];
	size_t i, j;
	int k, up;

	family(t, "p11escrow_requests_total", "counter", "HTTP requests answered, by route class and status class.");
	for (i = 0; i < NROUTES; i++)
		for (j = 0; j < NSTATUS; j++) {
			for (v = 0, k = 0; k < m->nslots; k++)
				v += get(&m->slot[k].requests[i][j]);
			out(t, "p11escrow_requests_total{route=\"%s\",status=\"%zuxx\"} %llu\n", route_names[i], j + 1,
			    v);
		}
	family(t, "p11escrow_errors_total", "counter",
	       "Error replies, by the library's error class (the JSON API's \"code\").");
	for (i = 0; esc_err_at(i, &e); i++) {
		if (e == ESC_OK || (int)e <= -ERR_SPAN)
			continue;
		for (v = 0, k = 0; k < m->nslots; k++)
			v += get(&m->slot[k].errors[-(int)e]);
		label_value(lv, sizeof(lv), esc_strerror(e));
		out(t, "p11escrow_errors_total{code=\"%s\"} %llu\n", lv, v);
	}
	family(t, "p11escrow_logins_failed_total", "counter",
	       "Failed logins: passwords, one-time enrollment passwords, session tokens, client certificates, "
	       "metrics tokens.");
	for (v = 0, k = 0; k < m->nslots; k++)
		v += get(&m->slot[k].logins_failed);
	out(t, "p11escrow_logins_failed_total %llu\n", v);
	family(t, "p11escrow_logins_throttled_total", "counter",
	       "Login attempts refused unchecked (429) by the failed-login limits.");
	for (v = 0, k = 0; k < m->nslots; k++)
		v += get(&m->slot[k].logins_throttled);
	out(t, "p11escrow_logins_throttled_total %llu\n", v);
	svc_guard_held(w->guard, &held_names, &held_addresses);
	family(t, "p11escrow_logins_held_off", "gauge",
	       "Names (accounts, one-time passwords) and client addresses held off by the failed-login limits now.");
	out(t, "p11escrow_logins_held_off{kind=\"name\"} %lld\n", held_names);
	out(t, "p11escrow_logins_held_off{kind=\"address\"} %lld\n", held_addresses);
	histograms(t, m, 1, "p11escrow_token_operation_duration_seconds",
		   "Requests to the keeper (the CA token's process), by operation, as a worker waited for them.");
	histograms(t, m, 0, "p11escrow_database_duration_seconds",
		   "Database statements, by kind (statement, begin, commit), workers and keeper.");

	up = stats_fresh(w) == 0;
	family(t, "p11escrow_database_counts_up", "gauge",
	       "1 if the counts below were read from the database (at most 5 s ago), 0 if it was unreachable.");
	out(t, "p11escrow_database_counts_up %d\n", up);
	if (!up)
		return;
	family(t, "p11escrow_enrollment_passwords", "gauge", "One-time enrollment passwords, by state.");
	out(t, "p11escrow_enrollment_passwords{state=\"unused\"} %lld\n", s->enroll_unused);
	out(t, "p11escrow_enrollment_passwords{state=\"used\"} %lld\n", s->enroll_used);
	out(t, "p11escrow_enrollment_passwords{state=\"expired\"} %lld\n", s->enroll_expired);
	family(t, "p11escrow_certificates_issued", "gauge", "Certificates this CA issued (any profile).");
	out(t, "p11escrow_certificates_issued %lld\n", s->certificates);
	family(t, "p11escrow_archive_records", "gauge", "Archived keys, by how they were archived.");
	out(t, "p11escrow_archive_records{source=\"import\"} %lld\n", s->archived_import);
	out(t, "p11escrow_archive_records{source=\"enroll-client\"} %lld\n", s->archived_client);
	out(t, "p11escrow_archive_records{source=\"enroll-server\"} %lld\n", s->archived_server);
	family(t, "p11escrow_recovery_requests", "gauge", "Recovery requests, by state.");
	out(t, "p11escrow_recovery_requests{state=\"pending\"} %lld\n", s->rec_pending);
	out(t, "p11escrow_recovery_requests{state=\"approved\"} %lld\n", s->rec_approved);
	out(t, "p11escrow_recovery_requests{state=\"released\"} %lld\n", s->rec_released);
	out(t, "p11escrow_recovery_requests{state=\"completed\"} %lld\n", s->rec_completed);
	out(t, "p11escrow_recovery_requests{state=\"denied\"} %lld\n", s->rec_denied);
	out(t, "p11escrow_recovery_requests{state=\"cancelled\"} %lld\n", s->rec_cancelled);
	out(t, "p11escrow_recovery_requests{state=\"expired\"} %lld\n", s->rec_expired);
	family(t, "p11escrow_audit_events", "gauge", "Length of the audit chain: the newest event's id.");
	out(t, "p11escrow_audit_events %lld\n", s->audit_last_id);
	family(t, "p11escrow_audit_events_unsigned", "gauge",
	       "Audit events after the newest checkpoint (the whole chain if there is none).");
	out(t, "p11escrow_audit_events_unsigned %lld\n",
	    s->audit_last_id > s->checkpoint_event ? s->audit_last_id - s->checkpoint_event : 0);
	if (s->checkpoint_age >= 0) {
		family(t, "p11escrow_audit_checkpoint_age_seconds", "gauge",
		       "Seconds since the newest audit checkpoint was signed (absent: none yet).");
		out(t, "p11escrow_audit_checkpoint_age_seconds %lld\n", s->checkpoint_age);
	}
}

/* A constant-time comparison of the presented bearer token's hash with the configured one's. */
static int
token_matches(struct svc_worker *w, const char *tok, size_t len)
{
	unsigned char h[32];
	unsigned int n = 0;

	return w->metrics_token_set && EVP_Digest(tok, len, h, &n, EVP_sha256(), NULL) && n == sizeof(h) &&
	       CRYPTO_memcmp(h, w->metrics_token, sizeof(h)) == 0;
}

/*
 * Who may read /metrics: the bearer token of metrics_token_file, or a TLS
 * client certificate bound to an account with role admin or auditor.  0,
 * or -1 after replying 401, 403 or 429.  Failures count against the
 * client's address like any failed login.
 */
static int
metrics_allowed(struct svc_request *r)
{
	struct svc_worker *w = r->w;
	const char *h = svc_header(r, "Authorization");
	struct esc_account *a = NULL;
	char msg[160];
	size_t n;
	enum esc_err e;
	int ok;

	if (h != NULL) {
		if (strncasecmp(h, "Bearer ", 7) != 0) {
			svc_add_header(r, "WWW-Authenticate", "Bearer realm=\"p11escrow metrics\"");
			svc_reply_error_code(r, 401, "GET /metrics takes a bearer token or a client certificate",
					     ESC_ERR_AUTH);
			return -1;
		}
		if (svc_login_wait(r, NULL, msg, sizeof(msg)) > 0) {
			svc_reply_error_code(r, 429, msg, ESC_ERR_AUTH);
			return -1;
		}
		for (h += 7; *h == ' '; h++)
			;
		for (n = strnlen(h, 1024); n > 0 && h[n - 1] == ' '; n--)
			;
		ok = token_matches(w, h, n);
		OPENSSL_cleanse((char *)(uintptr_t)h, strlen(h)); /* libevent's copy; freed unwiped */
		svc_login_result(r, NULL, ok);
		if (!ok) {
			svc_log(w, ESC_LOG_INFO, "req=%s metrics token refused", r->id);
			svc_add_header(r, "WWW-Authenticate", "Bearer realm=\"p11escrow metrics\"");
			svc_reply_error_code(r, 401, "bearer token refused", ESC_ERR_AUTH);
			return -1;
		}
		snprintf(r->actor, sizeof(r->actor), "metrics-token");
		return 0;
	}
	if (r->client_cert == NULL) {
		svc_add_header(r, "WWW-Authenticate", "Bearer realm=\"p11escrow metrics\"");
		svc_reply_error_code(r, 401,
				     "GET /metrics needs the metrics bearer token or a client certificate of an "
				     "administrator or auditor",
				     ESC_ERR_AUTH);
		return -1;
	}
	/* The database only: a scrape works while the keeper restarts. */
	if ((e = svc_worker_db(w)) != ESC_OK) {
		svc_log(w, ESC_LOG_ERROR, "req=%s unavailable: %s", r->id, esc_ctx_errmsg(w->ctx));
		svc_add_header(r, "Retry-After", "5");
		svc_reply_error_code(r, 503, "the database is unavailable; try again later", e);
		return -1;
	}
	if (svc_login_wait(r, NULL, msg, sizeof(msg)) > 0) {
		svc_reply_error_code(r, 429, msg, ESC_ERR_AUTH);
		return -1;
	}
	/* Not audited when it succeeds: a scraper every 15 s would fill the trail. */
	e = esc_account_cert_login(w->ctx, w->st, r->client_cert, w->account_crls, 0, &a);
	if (e == ESC_ERR_AUTH)
		svc_login_result(r, NULL, 0);
	if (e != ESC_OK) {
		svc_reply_esc(r, e);
		return -1;
	}
	if (!esc_account_has_role(a, ESC_ROLE_ADMIN) && !esc_account_has_role(a, ESC_ROLE_AUDITOR)) {
		snprintf(r->actor, sizeof(r->actor), "%s", esc_account_name(a));
		esc_account_free(a);
		svc_reply_error_code(r, 403, "GET /metrics is for administrators and auditors", ESC_ERR_DENIED);
		return -1;
	}
	snprintf(r->actor, sizeof(r->actor), "%s", esc_account_name(a));
	esc_account_free(a);
	return 0;
}

void
svc_serve_metrics(struct svc_request *r)
{
	struct text t = {NULL, 0, 0, 0};

	if (r->method != EVHTTP_REQ_GET) {
		svc_add_header(r, "Allow", "GET");
		svc_reply_error(r, 405, "method not allowed");
		return;
	}
	if (r->w->metrics == NULL) {
		svc_reply_error(r, 503, "metrics are unavailable");
		return;
	}
	if (metrics_allowed(r) != 0)
		return;
	exposition(r->w, &t);
	if (t.failed)
		svc_reply_error(r, 500, "cannot build the metrics");
	else
		svc_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", t.p, t.len);
	free(t.p);
}

/* ---- readiness ----------------------------------------------------------------------------------------- */

/*
 * GET /readyz: 200 when this worker reaches the database, its schema is
 * the one this program needs, and the CA token's session in the keeper is
 * logged in; else 503 naming the checks that failed, nothing more (the
 * reasons go to the log).  No authentication, as /healthz.
 */
void
svc_serve_readyz(struct svc_request *r)
{
	struct svc_worker *w = r->w;
	const char *db = "ok", *schema = "ok", *token = "ok";
	json_t *o = NULL, *checks = NULL;
	char *text = NULL;
	int version = 0, ready;
	enum esc_err e;

	if (r->method != EVHTTP_REQ_GET) {
		svc_add_header(r, "Allow", "GET");
		svc_reply_error(r, 405, "method not allowed");
		return;
	}
	if ((e = svc_worker_db(w)) == ESC_OK)
		e = esc_store_schema_version(w->ctx, w->st, &version);
	if (e != ESC_OK) {
		db = "failed";
		schema = "unknown";
		svc_log(w, ESC_LOG_WARN, "req=%s not ready: database: %s", r->id, esc_ctx_errmsg(w->ctx));
		svc_worker_forget(w, ESC_ERR_DB_CONNECT); /* reconnected at the next request */
	} else if (version != esc_store_known_version()) {
		schema = "failed";
		svc_log(w, ESC_LOG_WARN, "req=%s not ready: the database schema is version %d, this program needs %d",
			r->id, version, esc_store_known_version());
	}
	if (w->keeper != NULL && esc_keeper_lost(w->keeper)) {
		esc_keeper_free(w->keeper);
		w->keeper = NULL;
	}
	if (w->keeper == NULL || (e = esc_keeper_status(w->ctx, w->keeper)) != ESC_OK) {
		token = "failed";
		svc_log(w, ESC_LOG_WARN, "req=%s not ready: CA token: %s", r->id,
			w->keeper == NULL ? "the keeper is unavailable (restarting)" : esc_ctx_errmsg(w->ctx));
		if (w->keeper != NULL)
			svc_worker_forget(w, e);
	}
	ready = strcmp(db, "ok") == 0 && strcmp(schema, "ok") == 0 && strcmp(token, "ok") == 0;
	if ((o = json_object()) == NULL || (checks = json_object()) == NULL ||
	    json_object_set_new(checks, "database", json_string(db)) != 0 ||
	    json_object_set_new(checks, "schema", json_string(schema)) != 0 ||
	    json_object_set_new(checks, "ca_token", json_string(token)) != 0 ||
	    json_object_set_new(o, "status", json_string(ready ? "ready" : "not ready")) != 0 ||
	    json_object_set(o, "checks", checks) != 0 || (text = json_dumps(o, JSON_COMPACT)) == NULL) {
		json_decref(checks);
		json_decref(o);
		svc_reply_error(r, 500, "cannot build the response");
		return;
	}
	json_decref(checks);
	json_decref(o);
	if (!ready)
		svc_add_header(r, "Retry-After", "5");
	svc_reply(r, ready ? 200 : 503, "application/json", text, strlen(text));
	free(text);
}
