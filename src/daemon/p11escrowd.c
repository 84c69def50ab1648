/*
 * p11escrowd — the HTTPS service: EST enrollment with key archival and the
 * JSON API of the recovery workflow, thin over libp11escrow.
 *
 * Process model (docs/architecture.md, "Process model"): the main process
 * is a supervisor.  It reads the configuration, opens the listening socket
 * and forks the keeper first: the only process that obtains the CA PIN,
 * loads the PKCS#11 module and logs in; it serves each worker's socketpair
 * on a thread of its own with its own token session and database
 * connection (esc_keeper_serve).  Then the supervisor builds the TLS
 * context (from the keeper's HELLO: CA certificate and chain) and forks N
 * worker processes, each running one libevent loop over the inherited
 * listening socket, with its own database connection and a remote keeper
 * (esc_keeper_connect) instead of a token.  Workers never see the PIN and
 * never load the module; started as root they become the configured
 * `user` and set no_new_privs.  A worker that dies is forked again; a
 * keeper that dies (or loses the token) is forked again and every worker
 * gets its new connection over its control socket (SCM_RIGHTS); meanwhile
 * the workers answer 503 with Retry-After.  SIGTERM/SIGINT: the workers
 * stop accepting, finish what is in flight and exit; then the keeper signs
 * the last audit checkpoint and exits; the supervisor exits 0.  Runs in
 * the foreground (systemd Type=notify: READY=1 once every worker serves,
 * STOPPING=1 at SIGTERM/SIGINT), logs structured lines to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/config.h>
#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/gate.h>
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/kra.h>
#include <p11escrow/recovery.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "esc_build_config.h"
#include "api_admin.h"
#include "metrics.h"
#include "sandbox.h"
#include "svc.h"

struct slot {
	struct svc_worker w;
	struct event_base *base;
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	struct event *term_ev, *int_ev, *drain_ev;
	struct event *ctl_ev; /* the supervisor's control socket: new keeper connections */
	int inflight;
	int stopping;
	struct timespec stop_since;
	struct timespec last_rx; /* the last TLS record any connection of this worker received */
	struct event *ckpt_ev;	 /* worker 0: the audit checkpoint timer */
	struct event *ckpt_soon; /* worker 0: a check CKPT_AFTER_REQUEST after requests (one for a burst) */
	long long ckpt_retry;	 /* worker 0: no checkpoint before this (monotonic seconds) after a failure */
	int ckpt_backoff;	 /* worker 0: seconds of the current back-off, 0 after a success */
	struct event *expire_ev; /* worker 0: the sweep of released packages past release_ttl_hours */
	long long kra_checked;	 /* worker 0: when the KRAs' health was last logged (monotonic seconds), 0: never */
};

/* A child process of the supervisor: the keeper, or a worker. */
struct proc {
	pid_t pid;	      /* 0: not running */
	int ctl;	      /* the supervisor's end of its control socket, -1 if none */
	long long started;    /* monotonic seconds */
	long long respawn_at; /* monotonic seconds: fork it again then (0: not due) */
	int backoff;	      /* seconds before the next respawn after a quick death */
};

struct svc {
	struct esc_config *cfg;
	struct esc_secret *pin; /* the keeper process's only */
	int pin_from_env;	/* the PIN came from P11ESCROW_CA_PIN, wiped once read: no keeper restart */
	SSL_CTX *tls;
	int listen_fd;
	int nworkers;
	int log_level;
	int log_json; /* log_format = json: one JSON object a line */
	pthread_mutex_t log_lock;
	struct svc_metrics *metrics; /* counters, in memory shared by every process (metrics.c) */
	struct svc_guard *guard;     /* failed logins, in memory shared by every worker process */
	const char *proc_name;	     /* "keeper" in the keeper process, NULL elsewhere */
	struct esc_token_gate *gate; /* the keeper process's: token_sessions, token_meter */
	/* The supervisor's view. */
	struct proc keeper;
	struct proc *workers;
	uid_t run_uid; /* workers become this user when started as root ... */
	gid_t run_gid;
	int drop; /* ... if set */
	/* A worker process's own. */
	int ctl_fd;			  /* its control socket to the supervisor */
	STACK_OF(X509_CRL) *account_crls; /* account_cert_crl, or NULL: loaded by the supervisor, inherited */
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* ---- logging ------------------------------------------------------------- */

/*
 * One log line on stderr.  Text: ts=... level=... worker=N|proc=NAME
 * msg="..." (quotes and control characters in msg replaced, so a message
 * cannot forge another line).  JSON (log_format = json): one object a line
 * with ts, level, worker or proc, msg and fields' members; a message that
 * starts with "req=ID " has that id as member req.  Never a secret: msg
 * and fields are what the callers log in either format.
 */
static void
emit(struct svc *s, int worker, enum esc_log_level level, char *msg, json_t *fields)
{
	char ts[64], base[32];
	struct timespec now;
	struct tm tm;
	char *line = NULL;
	size_t i;

	if (s != NULL && (int)level > s->log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts, sizeof(ts), "%.19s.%03dZ", base, (int)(now.tv_nsec / 1000000L) % 1000);
	if (s != NULL && s->log_json) {
		json_t *o = json_object();
		const char *m = msg;
		size_t n;

		if (o != NULL) {
			(void)json_object_set_new(o, "ts", json_string(ts));
			(void)json_object_set_new(o, "level", json_string(level_names[level]));
			if (worker >= 0)
				(void)json_object_set_new(o, "worker", json_integer(worker));
			else if (s->proc_name != NULL)
				(void)json_object_set_new(o, "proc", json_string(s->proc_name));
			if (strncmp(m, "req=", 4) == 0 && (n = strcspn(m + 4, " ")) > 0 && n <= 16 && m[4 + n] == ' ') {
				(void)json_object_set_new(o, "req", json_stringn(m + 4, n));
				m += 5 + n;
			}
			(void)json_object_set_new(o, "msg", svc_json_text(m));
			if (fields != NULL)
				(void)json_object_update(o, fields);
			/* 6 significant digits: "ms":433.1, not the double nearest to it. */
			line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
			json_decref(o);
		}
		pthread_mutex_lock(&s->log_lock);
		if (line != NULL)
			fprintf(stderr, "%s\n", line);
		else
			fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"error\",\"msg\":\"cannot format a log line\"}\n",
				ts);
		fflush(stderr);
		pthread_mutex_unlock(&s->log_lock);
		free(line);
		return;
	}
	/* One line per event: quotes and control characters cannot forge another. */
	for (i = 0; msg[i] != '\0'; i++)
		if ((unsigned char)msg[i] < 0x20 || msg[i] == '"' || msg[i] == 0x7f)
			msg[i] = msg[i] == '"' ? '\'' : ' ';
	if (s != NULL)
		pthread_mutex_lock(&s->log_lock);
	if (worker >= 0)
		fprintf(stderr, "ts=%s level=%s worker=%d msg=\"%s\"\n", ts, level_names[level], worker, msg);
	else if (s != NULL && s->proc_name != NULL)
		fprintf(stderr, "ts=%s level=%s proc=%s msg=\"%s\"\n", ts, level_names[level], s->proc_name, msg);
	else
		fprintf(stderr, "ts=%s level=%s msg=\"%s\"\n", ts, level_names[level], msg);
	fflush(stderr);
	if (s != NULL)
		pthread_mutex_unlock(&s->log_lock);
}

static void
vlog_line(struct svc *s, int worker, enum esc_log_level level, const char *fmt, va_list ap)
{
	char msg[1024];

	if (s != NULL && (int)level > s->log_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	emit(s, worker, level, msg, NULL);
}

static void __attribute__((format(printf, 3, 4))) mlog(struct svc *s, enum esc_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_line(s, -1, level, fmt, ap);
	va_end(ap);
}

void
svc_log(struct svc_worker *w, enum esc_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_line(w->svc, w->index, level, fmt, ap);
	va_end(ap);
}

/*
 * The request's line, one per request at its end: id, method, path (no
 * query), status, body bytes, milliseconds, the account or one-time
 * password name that authenticated, and the client certificate's subject
 * hash (X509_NAME_hash, as `openssl x509 -subject_hash`).  Never a body,
 * an Authorization header or a cookie.
 */
static void
log_request(struct svc_worker *w, const struct svc_request *r, double ms)
{
	char msg[1024], hash[16] = "";
	const char *path = r->path != NULL ? r->path : "?";
	json_t *f = NULL;

	if (w->svc->log_level < ESC_LOG_INFO)
		return;
	if (r->client_cert != NULL)
		snprintf(hash, sizeof(hash), "%08lx", X509_subject_name_hash(r->client_cert));
	if (w->svc->log_json && (f = json_object()) != NULL) {
		(void)json_object_set_new(f, "req", json_string(r->id));
		(void)json_object_set_new(f, "method", json_string(r->method_name));
		(void)json_object_set_new(f, "path", svc_json_text(path));
		(void)json_object_set_new(f, "status", json_integer(r->status));
		(void)json_object_set_new(f, "bytes", json_integer((json_int_t)r->bytes));
		(void)json_object_set_new(f, "ms", json_real((double)(long long)(ms * 10 + 0.5) / 10));
		if (r->actor[0] != '\0')
			(void)json_object_set_new(f, "actor", svc_json_text(r->actor));
		if (hash[0] != '\0')
			(void)json_object_set_new(f, "client_cert_subject_hash", json_string(hash));
		snprintf(msg, sizeof(msg), "request");
	} else {
		snprintf(msg, sizeof(msg),
			 "req=%s method=%s path=%s status=%d bytes=%zu ms=%.1f actor=%s client_cert=%s%s%s", r->id,
			 r->method_name, path, r->status, r->bytes, ms, r->actor[0] ? r->actor : "-",
			 hash[0] ? "yes" : "no", hash[0] ? " client_cert_subject_hash=" : "", hash);
	}
	emit(w->svc, w->index, ESC_LOG_INFO, msg, f);
	json_decref(f);
}

/* Library log lines of a worker's context. */
static void
lib_log(void *arg, enum esc_log_level level, const char *msg)
{
	svc_log(arg, level, "%s", msg);
}

/* ---- the worker's connections: database and keeper ------------------------ */

/*
 * The database is reconnected here after a loss.  The keeper is not: a
 * worker cannot reach it by itself (no path, no address); a lost keeper
 * stays lost until the supervisor sends the new keeper's connection
 * (on_ctl), and requests meanwhile get 503.
 */
static enum esc_err
worker_connect(struct svc_worker *w)
{
	struct svc *s = w->svc;
	enum esc_err r;

	if (w->st == NULL) {
		if ((r = esc_store_connect(w->ctx, esc_config_get(s->cfg, "database"), &w->st)) != ESC_OK)
			return r;
		if ((r = esc_store_check_schema(w->ctx, w->st)) != ESC_OK) {
			esc_store_free(w->st);
			w->st = NULL;
			return r;
		}
	}
	if (w->keeper != NULL && esc_keeper_lost(w->keeper)) {
		esc_keeper_free(w->keeper);
		w->keeper = NULL;
	}
	return w->keeper != NULL ? ESC_OK : ESC_ERR_TOKEN_NOT_FOUND;
}

enum esc_err
svc_worker_db(struct svc_worker *w)
{
	enum esc_err r;

	if (w->st != NULL)
		return ESC_OK;
	if ((r = esc_store_connect(w->ctx, esc_config_get(w->svc->cfg, "database"), &w->st)) != ESC_OK)
		w->st = NULL;
	return r;
}

int
svc_worker_ready(struct svc_worker *w, struct svc_request *r)
{
	int had_db = w->st != NULL;
	enum esc_err e = worker_connect(w);

	if (e == ESC_OK) {
		if (!had_db)
			svc_log(w, ESC_LOG_INFO, "reconnected: database");
		return 0;
	}
	svc_log(w, ESC_LOG_ERROR, "req=%s unavailable: %s", r->id,
		w->keeper == NULL && e == ESC_ERR_TOKEN_NOT_FOUND
			? "the keeper is unavailable (the CA token's process is restarting)"
			: esc_ctx_errmsg(w->ctx));
	svc_worker_forget(w, e);
	svc_add_header(r, "Retry-After", "5");
	svc_reply_error_code(r, 503,
			     w->st == NULL ? "the database is unavailable; try again later"
					   : "the CA token (HSM) is unavailable; try again later",
			     w->st == NULL ? ESC_ERR_DB_CONNECT : ESC_ERR_TOKEN_NOT_FOUND);
	return -1;
}

/*
 * After a connection-class error: drop a lost database connection so the
 * next request reconnects.  The keeper's token errors are the keeper's to
 * mend (it checks the token and restarts if it is gone); only a keeper
 * connection that is itself lost is dropped.
 */
void
svc_worker_forget(struct svc_worker *w, enum esc_err e)
{
	switch (e) {
	case ESC_ERR_DB_CONNECT:
	case ESC_ERR_SCHEMA_OLD:
	case ESC_ERR_SCHEMA_NEWER:
		esc_store_free(w->st);
		w->st = NULL;
		break;
	default:
		if (w->keeper != NULL && esc_keeper_lost(w->keeper)) {
			esc_keeper_free(w->keeper);
			w->keeper = NULL;
		}
		break;
	}
}

/* ---- audit checkpoints ---------------------------------------------------- */

static void __attribute__((format(printf, 4, 5)))
log_as(struct svc *s, int worker, enum esc_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog_line(s, worker, level, fmt, ap);
	va_end(ap);
}

/*
 * A checkpoint this service signed, kept outside the database so that a
 * database restored from an older backup is caught (audit verify
 * --checkpoint): its one-line form on the log (worker: its index; -1 the
 * keeper) and the file form in audit_checkpoint_file, if set.  The
 * checkpoint is in the database already: a failure here is only logged.
 */
static void
checkpoint_publish(struct svc *s, int worker, struct esc_ctx *ctx, struct esc_store *st, long long id)
{
	const char *path = esc_config_get(s->cfg, "audit_checkpoint_file");
	char *text = NULL;

	if (esc_audit_checkpoint_export(ctx, st, id, 0, &text, NULL) != ESC_OK)
		goto failed;
	log_as(s, worker, ESC_LOG_INFO, "audit checkpoint: %s", text);
	free(text);
	text = NULL;
	if (path == NULL || *path == '\0')
		return;
	if (esc_audit_checkpoint_export(ctx, st, id, 1, &text, NULL) != ESC_OK ||
	    esc_audit_checkpoint_write(ctx, path, text) != ESC_OK)
		goto failed;
	free(text);
	return;
failed:
	free(text);
	log_as(s, worker, ESC_LOG_ERROR, "audit checkpoint of event %lld not exported: %s", id, esc_ctx_errmsg(ctx));
}

void
svc_checkpoint_published(struct svc_worker *w, long long event_id)
{
	if (w->st != NULL)
		checkpoint_publish(w->svc, w->index, w->ctx, w->st, event_id);
}

#define CKPT_TICK 5	      /* seconds between worker 0's timed checks */
#define CKPT_AFTER_REQUEST 1  /* seconds after a request (the first of a burst) that worker 0 checks */
#define CKPT_BACKOFF_MIN 60   /* a failed checkpoint is retried after this, doubling ... */
#define CKPT_BACKOFF_MAX 3600 /* ... up to this */

/*
 * Ask the keeper to sign an audit checkpoint if checkpoint_events or
 * checkpoint_seconds say one is due.  Only worker 0 asks, so the service
 * never signs two at once; the last one, at shutdown, is the keeper's own
 * (keeper_main).  A failure never fails a request: the keeper audits it,
 * the log says it, and it is retried after a back-off.
 */
static void
checkpoint_maybe(struct slot *sl)
{
	struct svc_worker *w = &sl->w;
	long long events = esc_config_get_long(w->svc->cfg, "checkpoint_events");
	long long seconds = esc_config_get_long(w->svc->cfg, "checkpoint_seconds");
	long long id = 0;
	struct timespec now;
	enum esc_err r;

	if (events == 0 && seconds == 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec < sl->ckpt_retry)
		return;
	if ((r = worker_connect(w)) == ESC_OK)
		r = esc_keeper_checkpoint(w->ctx, w->keeper, w->st, NULL, events, seconds, &id);
	if (r == ESC_OK) {
		sl->ckpt_backoff = 0;
		if (id > 0) {
			svc_log(w, ESC_LOG_INFO, "audit checkpoint signed: events up to %lld", id);
			svc_checkpoint_published(w, id);
		}
		return;
	}
	/* The keeper restarting is no failure of the checkpoint: the next tick asks again. */
	if (w->keeper == NULL)
		return;
	sl->ckpt_backoff = sl->ckpt_backoff == 0		      ? CKPT_BACKOFF_MIN
			   : sl->ckpt_backoff >= CKPT_BACKOFF_MAX / 2 ? CKPT_BACKOFF_MAX
								      : 2 * sl->ckpt_backoff;
	sl->ckpt_retry = (long long)now.tv_sec + sl->ckpt_backoff;
	svc_log(w, ESC_LOG_ERROR, "audit checkpoint failed (retried later): %s", esc_ctx_errmsg(w->ctx));
	svc_worker_forget(w, r);
}

static void
on_checkpoint_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	checkpoint_maybe(arg);
}

/* ---- released packages that nobody completed ------------------------------ */

#define EXPIRE_TICK 60 /* seconds between worker 0's sweeps (and one at start) */

/*
 * Expire every released package older than the policy release_ttl_hours
 * (esc_recovery_expire, audited as 'service').  Only worker 0, at start and
 * once a minute: fetch and completion refuse an overdue package by
 * themselves, so the sweep only decides how soon it is deleted.  A failure
 * never stops the service; the next tick tries again.
 */
static void
expire_sweep(struct slot *sl)
{
	struct svc_worker *w = &sl->w;
	enum esc_err r;
	int n = 0;

	/* Only the database is needed; a missing CA token is the requests' business. */
	if (w->st == NULL && worker_connect(w) != ESC_OK && w->st == NULL) {
		svc_log(w, ESC_LOG_ERROR, "expiring released packages: %s (retried in %d s)", esc_ctx_errmsg(w->ctx),
			EXPIRE_TICK);
		return;
	}
	if ((r = esc_recovery_expire(w->ctx, w->st, NULL, &n)) == ESC_OK) {
		if (n > 0)
			svc_log(w, ESC_LOG_INFO, "%d released package(s) expired (policy release_ttl_hours)", n);
		return;
	}
	svc_log(w, ESC_LOG_ERROR, "expiring released packages failed (retried in %d s): %s", EXPIRE_TICK,
		esc_ctx_errmsg(w->ctx));
	if (r == ESC_ERR_DB_CONNECT)
		svc_worker_forget(w, r);
}

#define KRA_HEALTH_EVERY 86400 /* seconds between worker 0's log lines on the KRAs' health (and at start) */

/*
 * Log what would make records unrecoverable before it happens: a KRA
 * certificate that expires within kra_expiry_warning_days or has expired,
 * and records whose KRA set holds fewer than k usable KRAs
 * (esc_kra_health).  Worker 0, at start and once a day; a failure is
 * logged and tried again at the next sweep.
 */
static void
kra_health_log(struct slot *sl)
{
	struct svc_worker *w = &sl->w;
	struct esc_kra *k = NULL;
	struct esc_kra_health h;
	size_t n = 0, i;
	char why[256];
	int days = (int)esc_config_get_long(w->svc->cfg, "kra_expiry_warning_days");
	enum esc_err r;

	if (w->st == NULL)
		return; /* expire_sweep said why */
	if ((r = esc_kra_list(w->ctx, w->st, &k, &n)) != ESC_OK ||
	    (r = esc_kra_health(w->ctx, w->st, k, n, days, &h)) != ESC_OK) {
		svc_log(w, ESC_LOG_ERROR, "checking the KRAs' certificates failed (retried in %d s): %s", EXPIRE_TICK,
			esc_ctx_errmsg(w->ctx));
		if (r == ESC_ERR_DB_CONNECT)
			svc_worker_forget(w, r);
		free(k);
		return;
	}
	sl->kra_checked = svc_mono_seconds();
	for (i = 0; i < n; i++)
		if (esc_kra_warning(&k[i], days, why, sizeof(why)))
			svc_log(w, ESC_LOG_WARN, "KRA '%s': %s", k[i].name, why);
	if (h.records_short > 0)
		svc_log(w, ESC_LOG_WARN,
			"KRAs: %lld of %lld archive record(s) have fewer than %d usable (active, unexpired) KRA(s) in "
			"their set, %lld of them none: recovery of those waits for a KRA of their set to be renewed "
			"(first: record %s)",
			h.records_short, h.records, h.threshold, h.records_none, h.first_short);
	else
		svc_log(w, ESC_LOG_INFO,
			"KRAs: %zu active, %zu usable, %zu expiring within %d day(s), %zu expired; every one of %lld "
			"record(s) has at least %d usable KRA(s)",
			h.active, h.usable, h.expiring, days, h.expired, h.records, h.threshold);
	free(k);
}

static void
on_expire_tick(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;

	(void)fd;
	(void)what;
	expire_sweep(sl);
	if (sl->kra_checked == 0 || svc_mono_seconds() - sl->kra_checked >= KRA_HEALTH_EVERY)
		kra_health_log(sl);
}

/* ---- requests ------------------------------------------------------------- */

static void
on_complete(struct evhttp_request *req, void *arg)
{
	struct slot *sl = arg;

	(void)req;
	sl->inflight--;
}

static void
on_request(struct evhttp_request *req, void *arg)
{
	struct slot *sl = arg;
	struct svc_request r;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	sl->inflight++;
	evhttp_request_set_on_complete_cb(req, on_complete, sl);
	if (sl->stopping)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
	if (svc_request_init(&r, &sl->w, req) == 0)
		svc_http_dispatch(&r);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	log_request(&sl->w, &r, (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
	svc_metrics_request(sl->w.mslot, r.path, r.status);
	svc_request_done(&r);
	/*
	 * Worker 0: is a checkpoint due?  Checked from the loop a second after
	 * the request, not here: the reply goes out first, and under load the
	 * two statements of the check run once a second, not once a request.
	 */
	if (sl->ckpt_soon != NULL && !evtimer_pending(sl->ckpt_soon, NULL)) {
		struct timeval soon = {CKPT_AFTER_REQUEST, 0};

		evtimer_add(sl->ckpt_soon, &soon);
	}
}

/*
 * Every TLS record received notes the time on its worker: at shutdown a
 * request still arriving (a slow upload) keeps the worker running, while
 * idle keep-alive connections do not.
 */
static void
on_tls_msg(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl, void *arg)
{
	struct slot *sl = SSL_get_app_data(ssl);

	(void)version;
	(void)content_type;
	(void)buf;
	(void)len;
	(void)arg;
	if (!write_p && sl != NULL)
		clock_gettime(CLOCK_MONOTONIC, &sl->last_rx);
}

/* TLS for every new connection. */
static struct bufferevent *
make_bev(struct event_base *base, void *arg)
{
	struct slot *sl = arg;
	SSL *ssl = SSL_new(sl->w.svc->tls);

	if (ssl == NULL)
		return NULL;
	SSL_set_app_data(ssl, sl);
	SSL_set_msg_callback(ssl, on_tls_msg);
	return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
}

/* ---- graceful stop ---------------------------------------------------------- */

static double
since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

/*
 * At shutdown, a worker whose connections sent no TLS record for this
 * long has nothing arriving.  A client that limits its rate sends a burst
 * a second (curl --limit-rate does): one second was a coin flip between
 * the next burst and the exit, and cut such uploads off now and then.
 */
#define QUIET_SECONDS 3.0

static void
on_drain(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;
	double grace = (double)esc_config_get_long(sl->w.svc->cfg, "shutdown_grace");

	(void)fd;
	(void)what;
	/* Nothing in flight and nothing arriving for a moment, or out of time. */
	if ((sl->inflight <= 0 && since(&sl->stop_since) >= 0.5 && since(&sl->last_rx) >= QUIET_SECONDS) ||
	    since(&sl->stop_since) >= grace) {
		if (sl->inflight > 0)
			svc_log(&sl->w, ESC_LOG_WARN, "shutdown grace of %.0f s over with %d request(s) in flight",
				grace, sl->inflight);
		event_base_loopexit(sl->base, NULL);
	}
}

/* Stop accepting; the loop ends once what is in flight is done (on_drain). */
static void
begin_stop(struct slot *sl)
{
	struct timeval tick = {0, 100000};

	if (sl->stopping)
		return;
	sl->stopping = 1;
	clock_gettime(CLOCK_MONOTONIC, &sl->stop_since);
	if (sl->bound != NULL) {
		evhttp_del_accept_socket(sl->http, sl->bound); /* closes our duplicate only */
		sl->bound = NULL;
	}
	if ((sl->drain_ev = event_new(sl->base, -1, EV_PERSIST, on_drain, sl)) == NULL ||
	    event_add(sl->drain_ev, &tick) != 0)
		event_base_loopexit(sl->base, NULL);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	svc_log(&((struct slot *)arg)->w, ESC_LOG_INFO, "%s: finishing requests in flight, then stopping",
		sig == SIGTERM ? "SIGTERM" : "SIGINT");
	begin_stop(arg);
}

/*
 * Receive one descriptor sent with SCM_RIGHTS on fd (a SOCK_SEQPACKET
 * socket): the descriptor, or -1 at the end of the stream or on error
 * (*eof says which).
 */
static int
recv_fd(int fd, int *eof)
{
	char byte, cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {0};
	struct cmsghdr *c;
	ssize_t n;
	int got = -1;

	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	*eof = 0;
	do
		n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		*eof = n == 0;
		return -1;
	}
	for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(&got, CMSG_DATA(c), sizeof(int));
	return got;
}

/* Send descriptor pass over fd with SCM_RIGHTS; 0 or -1. */
static int
send_fd(int fd, int pass)
{
	char byte = 'k', cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {0};
	struct cmsghdr *c;
	ssize_t n;

	memset(cbuf, 0, sizeof(cbuf));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &pass, sizeof(int));
	do
		n = sendmsg(fd, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n == 1 ? 0 : -1;
}

/* The supervisor sent a new keeper's connection (the keeper was restarted), or went away. */
static void
on_ctl(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;
	struct svc_worker *w = &sl->w;
	struct esc_keeper *k = NULL;
	int kfd, eof;

	(void)what;
	if ((kfd = recv_fd(fd, &eof)) < 0) {
		if (eof) {
			svc_log(w, ESC_LOG_ERROR, "the supervisor is gone: stopping");
			event_del(sl->ctl_ev);
			begin_stop(sl);
		}
		return;
	}
	esc_keeper_free(w->keeper);
	w->keeper = NULL;
	if (esc_keeper_connect(w->ctx, kfd, &k) != ESC_OK) {
		svc_log(w, ESC_LOG_ERROR, "cannot greet the new keeper: %s", esc_ctx_errmsg(w->ctx));
		return;
	}
	w->keeper = k;
	svc_log(w, ESC_LOG_INFO, "reconnected: CA token (a new keeper process)");
}

static int
worker_setup(struct svc *s, struct slot *sl)
{
	struct esc_config *cfg = s->cfg;

	if ((sl->base = event_base_new()) == NULL || (sl->http = evhttp_new(sl->base)) == NULL)
		return -1;
	evhttp_set_bevcb(sl->http, make_bev, sl);
	evhttp_set_gencb(sl->http, on_request, sl);
	/*
	 * Bodies: a handler sees at most max_body bytes (svc_request_init answers
	 * 413 in the endpoint's format above that).  evhttp's own limit, twice
	 * that, only bounds the memory a request holds: libevent 2.1 has no hook
	 * before it answers its own HTML 413, so it must rarely be reached.
	 */
	sl->w.max_body = (size_t)esc_config_get_long(cfg, "max_body");
	evhttp_set_max_body_size(sl->http, 2 * (ev_ssize_t)sl->w.max_body);
	evhttp_set_max_headers_size(sl->http, 16 * 1024);
	evhttp_set_timeout(sl->http, (int)esc_config_get_long(cfg, "request_timeout"));
	/*
	 * Every method reaches svc_http_dispatch, which answers 405 with Allow
	 * (or 501 for a method libevent cannot name: it gives those a type
	 * outside its enum, which 0xffff covers) in the endpoint's format, not
	 * libevent's HTML 501.
	 */
	evhttp_set_allowed_methods(sl->http, 0xffff);
	/* A body over evhttp's limit is answered 413 and the rest read and dropped, so the client sees the 413, not a reset. */
	evhttp_set_flags(sl->http, EVHTTP_SERVER_LINGERING_CLOSE);
	evhttp_set_default_content_type(sl->http, "text/plain; charset=utf-8");
	/* The listening socket, inherited from the supervisor: the worker processes share its queue. */
	if ((sl->bound = evhttp_accept_socket_with_handle(sl->http, s->listen_fd)) == NULL)
		return -1;
	s->listen_fd = -1; /* the bound socket's now */
	if ((sl->term_ev = evsignal_new(sl->base, SIGTERM, on_signal, sl)) == NULL ||
	    event_add(sl->term_ev, NULL) != 0 || (sl->int_ev = evsignal_new(sl->base, SIGINT, on_signal, sl)) == NULL ||
	    event_add(sl->int_ev, NULL) != 0)
		return -1;
	if ((sl->ctl_ev = event_new(sl->base, s->ctl_fd, EV_READ | EV_PERSIST, on_ctl, sl)) == NULL ||
	    event_add(sl->ctl_ev, NULL) != 0)
		return -1;
	/* Audit checkpoints: worker 0 also checks on a timer, for events other workers or processes wrote. */
	if (sl->w.index == 0 &&
	    (esc_config_get_long(cfg, "checkpoint_events") > 0 || esc_config_get_long(cfg, "checkpoint_seconds") > 0)) {
		long secs = esc_config_get_long(cfg, "checkpoint_seconds");
		struct timeval tick = {secs > 0 && secs < CKPT_TICK ? secs : CKPT_TICK, 0};

		if ((sl->ckpt_ev = event_new(sl->base, -1, EV_PERSIST, on_checkpoint_tick, sl)) == NULL ||
		    event_add(sl->ckpt_ev, &tick) != 0 ||
		    (sl->ckpt_soon = evtimer_new(sl->base, on_checkpoint_tick, sl)) == NULL)
			return -1;
	}
	if (sl->w.index == 0) {
		struct timeval tick = {EXPIRE_TICK, 0};

		if ((sl->expire_ev = event_new(sl->base, -1, EV_PERSIST, on_expire_tick, sl)) == NULL ||
		    event_add(sl->expire_ev, &tick) != 0)
			return -1;
	}
	return 0;
}

static void
worker_teardown(struct slot *sl)
{
	if (sl->http != NULL)
		evhttp_free(sl->http);
	if (sl->term_ev != NULL)
		event_free(sl->term_ev);
	if (sl->int_ev != NULL)
		event_free(sl->int_ev);
	if (sl->ctl_ev != NULL)
		event_free(sl->ctl_ev);
	if (sl->drain_ev != NULL)
		event_free(sl->drain_ev);
	if (sl->ckpt_ev != NULL)
		event_free(sl->ckpt_ev);
	if (sl->ckpt_soon != NULL)
		event_free(sl->ckpt_soon);
	if (sl->expire_ev != NULL)
		event_free(sl->expire_ev);
	if (sl->base != NULL)
		event_base_free(sl->base);
	free(sl->w.crl);
	esc_keeper_free(sl->w.keeper);
	esc_store_free(sl->w.st);
	esc_ctx_free(sl->w.ctx);
}

/* ---- TLS and the listening socket --------------------------------------- */

static int
tls_setup(struct svc *s, struct esc_keeper *k)
{
	const char *cert = esc_config_get(s->cfg, "tls_cert"), *key = esc_config_get(s->cfg, "tls_key");
	const char *mode = esc_config_get(s->cfg, "tls_client_auth");
	const char *acct_ca = esc_config_get(s->cfg, "account_cert_ca");
	STACK_OF(X509) *chain = esc_keeper_chain(k);
	X509_STORE *store;
	static const unsigned char sid_ctx[] = "p11escrowd";
	unsigned long e;
	int i;

	if (*cert == '\0' || *key == '\0') {
		mlog(s, ESC_LOG_ERROR, "tls_cert and tls_key must be set (p11escrow service-cert issues them)");
		return 3;
	}
	if ((s->tls = SSL_CTX_new(TLS_server_method())) == NULL ||
	    !SSL_CTX_set_min_proto_version(s->tls, TLS1_2_VERSION))
		goto ossl;
	SSL_CTX_set_options(s->tls, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
	if (SSL_CTX_use_certificate_chain_file(s->tls, cert) != 1) {
		e = ERR_peek_last_error();
		mlog(s, ESC_LOG_ERROR, "cannot load tls_cert '%s': %s", cert, ERR_reason_error_string(e));
		return 3;
	}
	if (SSL_CTX_use_PrivateKey_file(s->tls, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(s->tls) != 1) {
		e = ERR_peek_last_error();
		mlog(s, ESC_LOG_ERROR, "cannot use tls_key '%s' with tls_cert: %s", key, ERR_reason_error_string(e));
		return 3;
	}
	if (strcmp(mode, "none") == 0 && *acct_ca != '\0') {
		mlog(s, ESC_LOG_ERROR, "account_cert_ca needs tls_client_auth optional or require (it is none)");
		return 3;
	}
	/*
	 * Client certificates: those of this CA (enrollees, accounts) and of
	 * the enterprise CAs of account_cert_ca (accounts only: EST checks
	 * that an enrollee's is this CA's), for TLS client use.
	 */
	if (strcmp(mode, "none") != 0) {
		store = SSL_CTX_get_cert_store(s->tls);
		if (X509_STORE_add_cert(store, esc_keeper_ca_cert(k)) != 1)
			goto ossl;
		for (i = 0; chain != NULL && i < sk_X509_num(chain); i++)
			if (X509_STORE_add_cert(store, sk_X509_value(chain, i)) != 1)
				goto ossl;
		if (*acct_ca != '\0' && X509_STORE_load_file(store, acct_ca) != 1) {
			e = ERR_peek_last_error();
			mlog(s, ESC_LOG_ERROR, "cannot load account_cert_ca '%s': %s", acct_ca,
			     ERR_reason_error_string(e));
			return 3;
		}
		/* An enterprise issuing CA listed without its root is a trust anchor of its own. */
		if (*acct_ca != '\0' && X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN) != 1)
			goto ossl;
		if (SSL_CTX_set_purpose(s->tls, X509_PURPOSE_SSL_CLIENT) != 1)
			goto ossl;
		/*
		 * Never fail the handshake for a missing certificate: with
		 * "require" the request is answered 403 with the reason, which
		 * a client can show (a failed handshake explains nothing).
		 */
		SSL_CTX_set_verify(s->tls, SSL_VERIFY_PEER, NULL);
		if (SSL_CTX_set_session_id_context(s->tls, sid_ctx, sizeof(sid_ctx) - 1) != 1)
			goto ossl;
		{
			STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
			X509_NAME *n = X509_NAME_dup(X509_get_subject_name(esc_keeper_ca_cert(k)));

			if (names == NULL || n == NULL || !sk_X509_NAME_push(names, n)) {
				X509_NAME_free(n);
				sk_X509_NAME_pop_free(names, X509_NAME_free);
				goto ossl;
			}
			/* The enterprise CAs too, so a client picks a certificate of theirs. */
			if (*acct_ca != '\0' && SSL_add_file_cert_subjects_to_stack(names, acct_ca) != 1) {
				sk_X509_NAME_pop_free(names, X509_NAME_free);
				goto ossl;
			}
			SSL_CTX_set_client_CA_list(s->tls, names);
		}
	}
	return 0;
ossl:
	e = ERR_peek_last_error();
	mlog(s, ESC_LOG_ERROR, "cannot set up TLS: %s", ERR_reason_error_string(e));
	return 70;
}

static int
listen_setup(struct svc *s)
{
	const char *spec = esc_config_get(s->cfg, "listen");
	char host[256], port[16];
	const char *colon;
	struct addrinfo hints = {0}, *ai = NULL;
	int fd = -1, one = 1, rc;
	size_t hl;

	/* HOST:PORT or [ADDRESS]:PORT (validated by the configuration). */
	colon = strrchr(spec, ':');
	if (colon == NULL || strlen(colon + 1) >= sizeof(port))
		return -1;
	hl = (size_t)(colon - spec);
	if (hl >= 2 && spec[0] == '[' && spec[hl - 1] == ']') {
		spec++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return -1;
	memcpy(host, spec, hl);
	host[hl] = '\0';
	strcpy(port, colon + 1);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((rc = getaddrinfo(*host ? host : NULL, port, &hints, &ai)) != 0) {
		mlog(s, ESC_LOG_ERROR, "listen = %s: %s", esc_config_get(s->cfg, "listen"), gai_strerror(rc));
		return -1;
	}
	if ((fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    /*
	     * Replies leave as two TLS records (headers, body): without
	     * TCP_NODELAY the second waits for the client's delayed ACK, ~40 ms
	     * a response (docs/performance.md).  Linux passes it on to accepted
	     * sockets.
	     */
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 256) != 0) {
		mlog(s, ESC_LOG_ERROR, "cannot listen on %s: %s", esc_config_get(s->cfg, "listen"), strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	s->listen_fd = fd;
	return 0;
}

/* ---- main ------------------------------------------------------------------ */

static void
help(void)
{
	printf("Usage: p11escrowd [--config FILE] [--check] [--log-format text|json]\n\n"
	       "Serves EST (RFC 7030) enrollment with key archival and the JSON API of the\n"
	       "recovery workflow over HTTPS, in the foreground; stops on SIGTERM.\n\n"
	       "  -c, --config FILE   configuration (default %s;\n"
	       "                      P11ESCROW_<KEY> environment variables override it)\n"
	       "      --check         validate configuration, database schema, CA token and TLS files, then exit\n"
	       "      --log-format F  log lines as text (key=value, the default) or json (one JSON\n"
	       "                      object a line); overrides log_format\n"
	       "  -V, --version       print the version\n"
	       "  -h, --help          this text\n\n"
	       "The CA token PIN: ca_pin_file, else the systemd credential 'ca-pin'\n"
	       "($CREDENTIALS_DIRECTORY/ca-pin), else P11ESCROW_CA_PIN. Never an argument.\n",
	       ESC_CONFIG_DEFAULT_PATH);
}

static int
fail(struct svc *s, struct esc_ctx *ctx, enum esc_err r)
{
	mlog(s, ESC_LOG_ERROR, "%s", esc_ctx_errmsg(ctx));
	return esc_err_exit_code(r);
}

/* Where the keeper reads the PIN: the file (in path, returned), or NULL: the environment. */
static const char *
pin_file(struct svc *s, char *path, size_t len)
{
	const char *file = esc_config_get(s->cfg, "ca_pin_file"), *creds = getenv("CREDENTIALS_DIRECTORY");

	if (*file != '\0')
		return file;
	if (creds != NULL && *creds == '/') {
		snprintf(path, len, "%s/ca-pin", creds);
		if (access(path, F_OK) == 0)
			return path;
	}
	return NULL;
}

static enum esc_err
obtain_pin(struct svc *s, struct esc_ctx *ctx)
{
	char path[4096];
	const char *file = pin_file(s, path, sizeof(path));
	enum esc_err r;

	r = esc_secret_obtain(ctx, file, "P11ESCROW_CA_PIN", NULL, &s->pin);
	/* Copied into the secure heap (or not needed): gone from the environment, before any thread starts. */
	esc_env_wipe("P11ESCROW_CA_PIN");
	return r;
}

static int
log_level_of(const char *name)
{
	int i;

	for (i = 0; i < 4; i++)
		if (strcmp(name, level_names[i]) == 0)
			return i;
	return ESC_LOG_INFO;
}

/* ---- the keeper process ------------------------------------------------------- */

/* Exit status of a keeper that lost the CA token: the supervisor forks a new one (fresh C_Initialize). */
#define EXIT_TOKEN_LOST 75
/* Exit statuses after which a keeper is not forked again: configuration, PIN missing, incorrect, locked. */
#define KEEPER_FATAL(st) ((st) == 3 || (st) == 10 || (st) == 11 || (st) == 12)

struct conn_arg {
	struct svc *s;
	int fd;
};

static void
keeper_log(void *arg, enum esc_log_level level, const char *msg)
{
	struct svc *s = arg;

	mlog(s, level, "%s", msg);
}

static enum esc_err
keeper_ctx(struct svc *s, struct esc_ctx **out)
{
	struct esc_ctx *ctx = NULL;
	enum esc_err r;

	if ((r = esc_ctx_new(&ctx)) != ESC_OK)
		return r;
	esc_ctx_set_log(ctx, keeper_log, s);
	/* The keeper's database statements: the slot after the workers'. */
	esc_ctx_set_timing(ctx, svc_metrics_timing, svc_metrics_slot(s->metrics, s->nworkers));
	if ((r = esc_ctx_set_module_allow(ctx, esc_config_get(s->cfg, "module_allow"))) != ESC_OK ||
	    (r = esc_config_set_publication(ctx, s->cfg)) != ESC_OK) {
		esc_ctx_free(ctx);
		return r;
	}
	*out = ctx;
	return ESC_OK;
}

/*
 * One worker's connection, on a thread of its own with its own token
 * session and database connection: the token never waits on another
 * worker's requests, only on the token itself.  A lost database is
 * reconnected at the next request that needs it; a token error is checked
 * with a fresh session: if the token is gone, the whole keeper exits and
 * the supervisor forks a new one (a fresh C_Initialize is the only
 * reconnection every PKCS#11 module supports).
 */
static void *
keeper_conn(void *p)
{
	struct conn_arg *a = p;
	struct svc *s = a->s;
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_keeper *k = NULL, *probe;
	const char *db = esc_config_get(s->cfg, "database"), *module = esc_config_get(s->cfg, "module");
	enum esc_err r;

	if (keeper_ctx(s, &ctx) != ESC_OK)
		_exit(70);
	esc_ctx_set_token_gate(ctx, s->gate);
	if (esc_store_connect(ctx, db, &st) != ESC_OK || esc_keeper_open(ctx, st, module, s->pin, &k) != ESC_OK) {
		mlog(s, ESC_LOG_ERROR, "cannot open a token session for a worker: %s: restarting the keeper",
		     esc_ctx_errmsg(ctx));
		_exit(EXIT_TOKEN_LOST);
	}
	for (;;) {
		r = esc_keeper_serve(ctx, k, st, a->fd);
		if (r == ESC_OK || r == ESC_ERR_BAD_INPUT || r == ESC_ERR_IO)
			break;
		if (r == ESC_ERR_DB_CONNECT || st == NULL) {
			esc_store_free(st);
			if (esc_store_connect(ctx, db, &st) != ESC_OK)
				st = NULL; /* requests that need it get DB_CONNECT; tried again at the next */
			if (r == ESC_ERR_DB_CONNECT)
				continue;
		}
		/* A token error: the request's own, or is the token gone? */
		if (st != NULL && esc_keeper_open(ctx, st, module, s->pin, &probe) == ESC_OK) {
			esc_keeper_free(probe);
			continue;
		}
		mlog(s, ESC_LOG_ERROR, "the CA token is lost (%s): restarting the keeper", esc_ctx_errmsg(ctx));
		_exit(EXIT_TOKEN_LOST);
	}
	close(a->fd);
	esc_keeper_free(k);
	esc_store_free(st);
	esc_ctx_free(ctx);
	free(a);
	return NULL;
}

/* The final audit checkpoint, at shutdown: if any event follows the newest one. */
static void
keeper_final_checkpoint(struct svc *s, struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k)
{
	long long id = 0;

	if (esc_config_get_long(s->cfg, "checkpoint_events") == 0 &&
	    esc_config_get_long(s->cfg, "checkpoint_seconds") == 0)
		return;
	if (esc_keeper_checkpoint(ctx, k, st, NULL, 1, 0, &id) != ESC_OK)
		mlog(s, ESC_LOG_ERROR, "audit checkpoint failed at shutdown: %s", esc_ctx_errmsg(ctx));
	else if (id > 0) {
		mlog(s, ESC_LOG_INFO, "audit checkpoint signed: events up to %lld (at shutdown)", id);
		checkpoint_publish(s, -1, ctx, st, id);
	}
}

/*
 * The keeper: PIN, module, login, then a thread per worker connection the
 * supervisor sends over ctl.  Writes one byte to ready once the CA token is
 * logged in.  Never touches the network: the listening socket was closed
 * before this.  Returns the process's exit status.
 */
static int
keeper_main(struct svc *s, int ctl, int ready)
{
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_keeper *k = NULL;
	struct pollfd pfd[2];
	sigset_t sigs;
	enum esc_err r;
	int sfd, rc = 70;

	s->proc_name = "keeper";
	if (esc_secmem_init() != ESC_OK) {
		mlog(s, ESC_LOG_ERROR,
		     "cannot lock the secure heap for the CA PIN in memory (raise RLIMIT_MEMLOCK: "
		     "systemd LimitMEMLOCK=8M, shell ulimit -l 8192)");
		esc_env_wipe("P11ESCROW_CA_PIN");
		return 70;
	}
	if (keeper_ctx(s, &ctx) != ESC_OK)
		return 70;
	/* Only here: the PIN file, the systemd credential or P11ESCROW_CA_PIN (then wiped). */
	if ((r = obtain_pin(s, ctx)) != ESC_OK ||
	    (r = esc_store_connect(ctx, esc_config_get(s->cfg, "database"), &st)) != ESC_OK ||
	    (r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = esc_keeper_open(ctx, st, esc_config_get(s->cfg, "module"), s->pin, &k)) != ESC_OK ||
	    (r = esc_token_gate_new(ctx, esc_config_get_long(s->cfg, "token_sessions"),
				    esc_config_get(s->cfg, "token_meter"), &s->gate)) != ESC_OK) {
		rc = fail(s, ctx, r);
		goto out;
	}
	/* Every worker connection's thread passes the one gate: at most token_sessions signatures at once. */
	esc_ctx_set_token_gate(ctx, s->gate);
	mlog(s, ESC_LOG_INFO, "CA token '%s' logged in", esc_keeper_token_label(k));
	if (esc_config_get_long(s->cfg, "token_sessions") > 0)
		mlog(s, ESC_LOG_INFO, "token operations: at most %ld at once (token_sessions)",
		     esc_config_get_long(s->cfg, "token_sessions"));
	if (write(ready, "r", 1) != 1)
		goto out;
	close(ready);
	/* SIGTERM (from the supervisor, after the workers stopped) through a signalfd; SIGINT is the supervisor's. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	if ((sfd = signalfd(-1, &sigs, SFD_CLOEXEC)) < 0)
		goto out;
	pfd[0].fd = ctl;
	pfd[0].events = POLLIN;
	pfd[1].fd = sfd;
	pfd[1].events = POLLIN;
	for (;;) {
		struct conn_arg *a;
		pthread_attr_t attr;
		pthread_t t;
		int fd, eof;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents & POLLIN) {
			keeper_final_checkpoint(s, ctx, st, k);
			rc = 0;
			break;
		}
		if (!(pfd[0].revents & (POLLIN | POLLHUP)))
			continue;
		if ((fd = recv_fd(ctl, &eof)) < 0) {
			if (eof) {
				mlog(s, ESC_LOG_ERROR, "the supervisor is gone: stopping");
				keeper_final_checkpoint(s, ctx, st, k);
				rc = 0;
				break;
			}
			continue;
		}
		if ((a = calloc(1, sizeof(*a))) == NULL) {
			close(fd);
			continue;
		}
		a->s = s;
		a->fd = fd;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &attr, keeper_conn, a) != 0) {
			mlog(s, ESC_LOG_ERROR, "cannot start a thread for a worker's connection");
			close(fd);
			free(a);
		}
		pthread_attr_destroy(&attr);
	}
out:
	/* The serving threads still hold their sessions: _exit, not a teardown under their feet. */
	fflush(NULL);
	_exit(rc);
}

/* ---- a worker process --------------------------------------------------------- */

/*
 * Drop what a worker does not need: started as root, become the configured
 * user (all groups set, then the uid, checked irreversible); in any case
 * no_new_privs, so nothing it could exec gains privileges.  0 or -1.
 */
static int
drop_privileges(struct svc *s, struct svc_worker *w)
{
	if (s->drop) {
		if (setgroups(1, &s->run_gid) != 0 || setgid(s->run_gid) != 0 || setuid(s->run_uid) != 0) {
			svc_log(w, ESC_LOG_ERROR, "cannot become uid %u: %s", (unsigned)s->run_uid, strerror(errno));
			return -1;
		}
		if (setuid(0) == 0 || geteuid() == 0) {
			svc_log(w, ESC_LOG_ERROR, "could become root again after dropping privileges");
			return -1;
		}
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		svc_log(w, ESC_LOG_ERROR, "cannot set no_new_privs: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Worker index: the event loop over the inherited listening socket, a
 * remote keeper on kfd (-1: the keeper is down; one comes over ctl), the
 * supervisor's control socket ctl.  Writes one byte to ready (if not -1)
 * when serving.  Returns the process's exit status.
 */
static int
worker_proc_main(struct svc *s, int index, int kfd, int ctl, int ready)
{
	struct slot sl;
	struct svc_worker *w = &sl.w;
	sigset_t sigs;
	int rc = 70;

	memset(&sl, 0, sizeof(sl));
	s->ctl_fd = ctl;
	/* No way back to the credential the keeper reads (the PIN itself was never in this process). */
	unsetenv("CREDENTIALS_DIRECTORY");
	if (esc_secmem_init() != ESC_OK) {
		mlog(s, ESC_LOG_ERROR, "worker %d: cannot lock the secure heap (raise RLIMIT_MEMLOCK)", index);
		return 70;
	}
	w->index = index;
	w->svc = s;
	w->require_cert = strcmp(esc_config_get(s->cfg, "tls_client_auth"), "require") == 0;
	w->client_cert_recheck = esc_config_get_long(s->cfg, "client_cert_recheck");
	w->guard = s->guard;
	w->session_idle = esc_config_get_long(s->cfg, "session_idle_timeout");
	w->session_lifetime = esc_config_get_long(s->cfg, "session_lifetime");
	w->kra_warning_days = (int)esc_config_get_long(s->cfg, "kra_expiry_warning_days");
	w->console = strcmp(esc_config_get(s->cfg, "console"), "on") == 0;
	w->account_crls = s->account_crls;
	w->metrics = s->metrics;
	w->mslot = svc_metrics_slot(s->metrics, index);
	if (esc_ctx_new(&w->ctx) != ESC_OK)
		return 70;
	esc_ctx_set_log(w->ctx, lib_log, w);
	esc_ctx_set_timing(w->ctx, svc_metrics_timing, w->mslot);
	{
		char why[512];

		/* Before privileges are dropped: the file may be readable by root only. */
		if ((w->metrics_token_set = svc_metrics_token_read(w->ctx, esc_config_get(s->cfg, "metrics_token_file"),
								   w->metrics_token, why, sizeof(why))) < 0) {
			svc_log(w, ESC_LOG_ERROR, "%s", why);
			esc_ctx_free(w->ctx);
			return 3;
		}
	}
	/* The keeper's connection (greeted now: the CA's certificates), the database; both mended later if lost. */
	if (kfd >= 0 && esc_keeper_connect(w->ctx, kfd, &w->keeper) != ESC_OK)
		svc_log(w, ESC_LOG_ERROR, "cannot greet the keeper: %s", esc_ctx_errmsg(w->ctx));
	if (esc_store_connect(w->ctx, esc_config_get(s->cfg, "database"), &w->st) != ESC_OK) {
		svc_log(w, ESC_LOG_ERROR, "database: %s (reconnected at the next request)", esc_ctx_errmsg(w->ctx));
		w->st = NULL;
	}
	if (worker_setup(s, &sl) != 0) {
		svc_log(w, ESC_LOG_ERROR, "cannot set up the event loop: %s", strerror(errno));
		goto out;
	}
	if (drop_privileges(s, w) != 0)
		goto out;
	{
		char why[160];

		if (svc_sandbox_worker(why, sizeof(why)) != 0) {
			svc_log(w, ESC_LOG_ERROR, "cannot install the seccomp filter: %s", why);
			goto out;
		}
	}
	/* The supervisor's signals were blocked for it; the loop takes SIGTERM and SIGINT itself. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_UNBLOCK, &sigs, NULL);
	if (ready >= 0) {
		if (write(ready, "r", 1) != 1)
			goto out;
		close(ready);
	}
#ifdef ESC_TEST_HOOKS
	/* Test builds: P11ESCROW_FAULT_EXEC=FILE makes the first worker to create FILE try to run a program. */
	{
		const char *f = getenv("P11ESCROW_FAULT_EXEC");
		int fd;

		if (f != NULL && (fd = open(f, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) >= 0) {
			char *const args[] = {(char *)"/bin/true", NULL};

			close(fd);
			(void)execve(args[0], args, environ);
			svc_log(w, ESC_LOG_ERROR, "the seccomp filter let execve through: %s", strerror(errno));
			_exit(71);
		}
	}
#endif
	/* Worker 0 expires overdue packages at once, then on its timer. */
	if (sl.expire_ev != NULL) {
		expire_sweep(&sl);
		kra_health_log(&sl); /* and the KRAs' health, then once a day */
	}
	event_base_dispatch(sl.base);
	rc = 0;
out:
	worker_teardown(&sl);
	return rc;
}

/* ---- the supervisor ------------------------------------------------------------- */

static long long
mono(void)
{
	return svc_mono_seconds();
}

/* Close in a child what belongs to the supervisor and the other children. */
static void
close_others(struct svc *s, int keep_listen)
{
	int i;

	if (!keep_listen && s->listen_fd >= 0) {
		close(s->listen_fd);
		s->listen_fd = -1;
	}
	if (s->keeper.ctl >= 0)
		close(s->keeper.ctl);
	for (i = 0; s->workers != NULL && i < s->nworkers; i++)
		if (s->workers[i].ctl >= 0)
			close(s->workers[i].ctl);
}

/* In a child: end with the supervisor, and never with a signal handler of its. */
static void
child_init(pid_t parent)
{
	(void)prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	if (getppid() != parent)
		_exit(0);
}

/*
 * Wait for the byte a child writes on ready when it is up: 0; or its exit
 * status (waited for) if it ended first; -1 if it did neither within
 * timeout_ms (it is killed).
 */
static int
wait_ready(pid_t pid, int ready, int timeout_ms)
{
	struct pollfd pfd = {ready, POLLIN, 0};
	char b;
	int st = 0, n;

	while ((n = poll(&pfd, 1, timeout_ms)) < 0 && errno == EINTR)
		;
	if (n > 0 && read(ready, &b, 1) == 1) {
		close(ready);
		return 0;
	}
	close(ready);
	if (n == 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (n == 0)
		return -1;
	return WIFEXITED(st) && WEXITSTATUS(st) != 0 ? WEXITSTATUS(st) : 70;
}

/* Fork the keeper and wait until it is logged in: 0, or the exit status it failed with. */
static int
spawn_keeper(struct svc *s)
{
	int ctl[2], ready[2], rc;
	pid_t pid, parent = getpid();

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0 || pipe2(ready, O_CLOEXEC) != 0) {
		mlog(s, ESC_LOG_ERROR, "cannot make the keeper's sockets: %s", strerror(errno));
		return 70;
	}
	fflush(NULL);
	if ((pid = fork()) < 0) {
		mlog(s, ESC_LOG_ERROR, "cannot fork the keeper: %s", strerror(errno));
		close(ctl[0]);
		close(ctl[1]);
		close(ready[0]);
		close(ready[1]);
		return 70;
	}
	if (pid == 0) {
		child_init(parent);
		close(ctl[0]);
		close(ready[0]);
		close_others(s, 0);
		_exit(keeper_main(s, ctl[1], ready[1]));
	}
	close(ctl[1]);
	close(ready[1]);
	/* Logging in can take a network HSM a while. */
	if ((rc = wait_ready(pid, ready[0], 60 * 1000)) != 0) {
		close(ctl[0]);
		return rc < 0 ? 70 : rc;
	}
	s->keeper.pid = pid;
	s->keeper.ctl = ctl[0];
	s->keeper.started = mono();
	return 0;
}

/*
 * A new connection to the keeper: its end sent to the keeper, which
 * serves it on a new thread; the other end returned (-1 if the keeper is
 * not running or the sending failed).
 */
static int
keeper_connection(struct svc *s)
{
	int sp[2];

	if (s->keeper.pid == 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
		return -1;
	if (send_fd(s->keeper.ctl, sp[1]) != 0) {
		close(sp[0]);
		close(sp[1]);
		return -1;
	}
	close(sp[1]);
	return sp[0];
}

/* Fork worker i; with wait, until it serves: 0, or its exit status. */
static int
spawn_worker(struct svc *s, int i, int wait)
{
	int ctl[2], ready[2] = {-1, -1}, kfd, rc;
	pid_t pid, parent = getpid();

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) != 0 || (wait && pipe2(ready, O_CLOEXEC) != 0)) {
		mlog(s, ESC_LOG_ERROR, "cannot make worker %d's sockets: %s", i, strerror(errno));
		return 70;
	}
	kfd = keeper_connection(s);
	fflush(NULL);
	if ((pid = fork()) < 0) {
		mlog(s, ESC_LOG_ERROR, "cannot fork worker %d: %s", i, strerror(errno));
		close(ctl[0]);
		close(ctl[1]);
		if (kfd >= 0)
			close(kfd);
		if (ready[0] >= 0) {
			close(ready[0]);
			close(ready[1]);
		}
		return 70;
	}
	if (pid == 0) {
		child_init(parent);
		close(ctl[0]);
		if (ready[0] >= 0)
			close(ready[0]);
		close_others(s, 1);
		_exit(worker_proc_main(s, i, kfd, ctl[1], ready[1]));
	}
	if (kfd >= 0)
		close(kfd);
	close(ctl[1]);
	s->workers[i].pid = pid;
	s->workers[i].ctl = ctl[0];
	s->workers[i].started = mono();
	s->workers[i].respawn_at = 0;
	if (!wait)
		return 0;
	close(ready[1]);
	if ((rc = wait_ready(pid, ready[0], 120 * 1000)) != 0) {
		s->workers[i].pid = 0;
		close(s->workers[i].ctl);
		s->workers[i].ctl = -1;
		return rc < 0 ? 70 : rc;
	}
	return 0;
}

/* How a child ended, for the log. */
static void
describe_end(int st, char *buf, size_t len)
{
	if (WIFSIGNALED(st))
		snprintf(buf, len, "was killed by signal %d", WTERMSIG(st));
	else
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
}

/* The next back-off after a child lived `lived` seconds: 1 s, doubling while it dies young, at most 8 s. */
static int
next_backoff(int prev, long long lived)
{
	if (lived >= 10 || prev == 0)
		return 1;
	return prev >= 4 ? 8 : 2 * prev;
}

/* Reap every child that ended; plan its respawn.  -1: a keeper that must not be restarted (its status). */
static int
reap(struct svc *s, int *fatal)
{
	char how[64];
	pid_t pid;
	int st, i;

	*fatal = 0;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		describe_end(st, how, sizeof(how));
		if (pid == s->keeper.pid) {
			s->keeper.pid = 0;
			close(s->keeper.ctl);
			s->keeper.ctl = -1;
			if (WIFEXITED(st) && KEEPER_FATAL(WEXITSTATUS(st))) {
				mlog(s, ESC_LOG_ERROR, "the keeper %s: not restarted", how);
				*fatal = WEXITSTATUS(st);
				return -1;
			}
			if (s->pin_from_env) {
				/* A new keeper would find no PIN: stop now, saying why, not after a failed login. */
				mlog(s, ESC_LOG_ERROR,
				     "the keeper (pid %d) %s and cannot be restarted: the CA PIN came from "
				     "P11ESCROW_CA_PIN, which was wiped once read; stopping (set ca_pin_file or a "
				     "systemd credential 'ca-pin' so that a keeper can be restarted)",
				     (int)pid, how);
				*fatal = 10;
				return -1;
			}
			s->keeper.backoff = next_backoff(s->keeper.backoff, mono() - s->keeper.started);
			s->keeper.respawn_at = mono() + s->keeper.backoff;
			mlog(s, ESC_LOG_ERROR,
			     "the keeper (pid %d) %s: restarting it in %d s; until then the workers "
			     "answer 503",
			     (int)pid, how, s->keeper.backoff);
			continue;
		}
		for (i = 0; i < s->nworkers; i++) {
			struct proc *p = &s->workers[i];

			if (p->pid != pid)
				continue;
			p->pid = 0;
			close(p->ctl);
			p->ctl = -1;
			p->backoff = next_backoff(p->backoff, mono() - p->started);
			p->respawn_at = mono() + p->backoff;
			mlog(s, ESC_LOG_ERROR, "worker %d (pid %d) %s: restarting it in %d s", i, (int)pid, how,
			     p->backoff);
		}
	}
	return 0;
}

/* Respawn what is due: the keeper first, then its new connections to every running worker. */
static int
respawn(struct svc *s, int *fatal)
{
	long long now = mono();
	int i, rc, kfd;

	*fatal = 0;
	if (s->keeper.pid == 0 && s->keeper.respawn_at != 0 && now >= s->keeper.respawn_at) {
		if ((rc = spawn_keeper(s)) != 0) {
			if (KEEPER_FATAL(rc)) {
				*fatal = rc;
				return -1;
			}
			s->keeper.backoff = next_backoff(s->keeper.backoff, 0);
			s->keeper.respawn_at = mono() + s->keeper.backoff;
			mlog(s, ESC_LOG_ERROR, "the keeper did not start (status %d): trying again in %d s", rc,
			     s->keeper.backoff);
		} else {
			s->keeper.respawn_at = 0;
			mlog(s, ESC_LOG_INFO, "keeper restarted (pid %d): handing each worker its new connection",
			     (int)s->keeper.pid);
			for (i = 0; i < s->nworkers; i++) {
				if (s->workers[i].pid == 0 || (kfd = keeper_connection(s)) < 0)
					continue;
				if (send_fd(s->workers[i].ctl, kfd) != 0)
					mlog(s, ESC_LOG_ERROR, "cannot hand worker %d its keeper connection", i);
				close(kfd);
			}
		}
	}
	for (i = 0; i < s->nworkers; i++) {
		struct proc *p = &s->workers[i];

		if (p->pid == 0 && p->respawn_at != 0 && now >= p->respawn_at && spawn_worker(s, i, 0) == 0)
			mlog(s, ESC_LOG_INFO, "worker %d restarted (pid %d)", i, (int)p->pid);
	}
	return 0;
}

/* Wait for pid's end, at most until deadline (monotonic seconds), then SIGKILL it. */
static int
wait_child(struct svc *s, pid_t pid, long long deadline, const char *what)
{
	int st = 0;
	pid_t r;

	while ((r = waitpid(pid, &st, WNOHANG)) == 0) {
		if (mono() >= deadline) {
			mlog(s, ESC_LOG_WARN, "%s (pid %d) still running at the end of the grace: killed", what,
			     (int)pid);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -1;
		}
		usleep(50000);
	}
	return r == pid && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/*
 * The account workers run as, when started as root: `user`, or p11escrow
 * if that account exists; never root unless `user = root` says so.
 */
static int
resolve_user(struct svc *s)
{
	const char *name = esc_config_get(s->cfg, "user");
	struct passwd *pw;

	if (geteuid() != 0) {
		if (*name != '\0' && ((pw = getpwnam(name)) == NULL || pw->pw_uid != geteuid()))
			mlog(s, ESC_LOG_WARN, "user = %s: ignored (not started as root: the workers keep uid %u)", name,
			     (unsigned)geteuid());
		return 0;
	}
	if (strcmp(name, "root") == 0) {
		mlog(s, ESC_LOG_WARN, "user = root: the workers, which parse the network, run as root");
		return 0;
	}
	if ((pw = getpwnam(*name != '\0' ? name : "p11escrow")) == NULL) {
		if (*name != '\0')
			mlog(s, ESC_LOG_ERROR, "user = %s: no such account", name);
		else
			mlog(s, ESC_LOG_ERROR,
			     "started as root and no account 'p11escrow' exists: set user to the account the workers "
			     "run as (or user = root to keep them root)");
		return -1;
	}
	if (pw->pw_uid == 0) {
		mlog(s, ESC_LOG_ERROR, "user = %s is uid 0: say user = root if that is meant", name);
		return -1;
	}
	s->run_uid = pw->pw_uid;
	s->run_gid = pw->pw_gid;
	s->drop = 1;
	return 0;
}

/* --check: everything in this one process, as before privilege separation: nothing is served. */
/* account_cert_crl, checked against account_cert_ca: 0, or the exit code after saying why. */
static int
account_crls_load(struct svc *s, struct esc_ctx *ctx)
{
	enum esc_err r;

	if (*esc_config_get(s->cfg, "account_cert_crl") == '\0')
		return 0;
	if ((r = esc_account_cert_crls_load(ctx, esc_config_get(s->cfg, "account_cert_crl"),
					    esc_config_get(s->cfg, "account_cert_ca"), &s->account_crls)) != ESC_OK)
		return fail(s, ctx, r);
	return 0;
}

static int
check_main(struct svc *s, struct esc_ctx *ctx, const char *config)
{
	struct esc_store *st = NULL;
	struct esc_keeper *k = NULL;
	enum esc_err r;
	int rc;

	if (esc_secmem_init() != ESC_OK) {
		fprintf(stderr,
			"p11escrowd: cannot lock the secure heap for the CA PIN in memory (raise RLIMIT_MEMLOCK)\n");
		return 70;
	}
	if ((r = obtain_pin(s, ctx)) != ESC_OK ||
	    (r = esc_store_connect(ctx, esc_config_get(s->cfg, "database"), &st)) != ESC_OK ||
	    (r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = esc_keeper_open(ctx, st, esc_config_get(s->cfg, "module"), s->pin, &k)) != ESC_OK) {
		rc = fail(s, ctx, r);
		goto out;
	}
	if ((rc = tls_setup(s, k)) != 0 || (rc = account_crls_load(s, ctx)) != 0)
		goto out;
	{
		unsigned char hash[32];
		char why[512];

		if (svc_metrics_token_read(ctx, esc_config_get(s->cfg, "metrics_token_file"), hash, why, sizeof(why)) <
		    0) {
			mlog(s, ESC_LOG_ERROR, "%s", why);
			rc = 3;
			goto out;
		}
		OPENSSL_cleanse(hash, sizeof(hash));
	}
	printf("p11escrowd: configuration '%s' valid; schema current; CA token '%s' logged in; TLS "
	       "certificate and key usable\n",
	       config, esc_keeper_token_label(k));
	rc = 0;
out:
	esc_keeper_free(k);
	esc_store_free(st);
	return rc;
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check", no_argument, NULL, 'C'},
		{"log-format", required_argument, NULL, 'L'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = ESC_CONFIG_DEFAULT_PATH, *log_format = NULL;
	struct rlimit nocore = {0, 0};
	struct esc_keeper *hello = NULL;
	struct svc s;
	struct esc_ctx *ctx = NULL;
	sigset_t sigs;
	siginfo_t si;
	struct timespec tick = {0, 200 * 1000000L};
	enum esc_err r;
	int c, check = 0, rc = 1, i, sig, fatal = 0, kfd;
	long long deadline;

	/* Before any JSON: bodies carry passwords and key files (api_admin.c). */
	api_json_wipe_on_free();

	memset(&s, 0, sizeof(s));
	s.listen_fd = -1;
	s.ctl_fd = -1;
	s.keeper.ctl = -1;
	s.log_level = ESC_LOG_INFO;
	pthread_mutex_init(&s.log_lock, NULL);
	/* No core dumps, in any process (inherited): the keeper holds the CA PIN, workers briefly private keys. */
	(void)setrlimit(RLIMIT_CORE, &nocore);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	opterr = 0;
	while ((c = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'C':
			check = 1;
			break;
		case 'L':
			if (strcmp(optarg, "text") != 0 && strcmp(optarg, "json") != 0) {
				fprintf(stderr, "p11escrowd: --log-format: '%s' is neither text nor json\n", optarg);
				return 2;
			}
			log_format = optarg;
			s.log_json = strcmp(optarg, "json") == 0;
			break;
		case 'V':
			printf("p11escrowd %s\n", ESC_VERSION);
			return 0;
		case 'h':
			help();
			return 0;
		default:
			fprintf(stderr, "p11escrowd: unknown option or missing value: '%s' (see --help)\n",
				argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "p11escrowd: unexpected argument '%s' (see --help)\n", argv[optind]);
		return 2;
	}
	if (esc_ctx_new(&ctx) != ESC_OK)
		return 70;
	/* Signals are taken by the supervisor with sigtimedwait; every child starts with them blocked. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGCHLD);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((r = esc_config_new(ctx, &s.cfg)) != ESC_OK ||
	    (access(config, F_OK) == 0 || strcmp(config, ESC_CONFIG_DEFAULT_PATH) != 0
		     ? (r = esc_config_load_file(ctx, s.cfg, config)) != ESC_OK
		     : 0) ||
	    (r = esc_config_apply_env(ctx, s.cfg)) != ESC_OK ||
	    (r = esc_ctx_set_module_allow(ctx, esc_config_get(s.cfg, "module_allow"))) != ESC_OK ||
	    (r = esc_config_set_publication(ctx, s.cfg)) != ESC_OK) {
		rc = fail(&s, ctx, r);
		goto out;
	}
	s.log_level = log_level_of(esc_config_get(s.cfg, "log_level"));
	s.log_json = strcmp(log_format != NULL ? log_format : esc_config_get(s.cfg, "log_format"), "json") == 0;
	s.nworkers = (int)esc_config_get_long(s.cfg, "workers");
	if (check) {
		rc = check_main(&s, ctx, config);
		goto out;
	}
	if (resolve_user(&s) != 0) {
		rc = 3;
		goto out;
	}
	if ((s.workers = calloc((size_t)s.nworkers, sizeof(*s.workers))) == NULL ||
	    (s.guard = svc_guard_new(esc_config_get_long(s.cfg, "auth_fail_limit"),
				     esc_config_get_long(s.cfg, "auth_fail_limit_address"),
				     esc_config_get_long(s.cfg, "auth_fail_window"))) == NULL ||
	    (s.metrics = svc_metrics_new(s.nworkers + 1)) == NULL) {
		rc = 70;
		goto out;
	}
	for (i = 0; i < s.nworkers; i++)
		s.workers[i].ctl = -1;
	/* The keeper first: the only process that reads the PIN and loads the module. */
	{
		char path[4096];

		s.pin_from_env = pin_file(&s, path, sizeof(path)) == NULL;
	}
	if ((rc = spawn_keeper(&s)) != 0)
		goto out;
	if (s.pin_from_env)
		mlog(&s, ESC_LOG_WARN,
		     "the CA PIN came from P11ESCROW_CA_PIN: should the keeper die, p11escrowd stops (exit 10) "
		     "instead of restarting it; set ca_pin_file or a systemd credential 'ca-pin'");
	/* Never read here: gone from this environment before any worker is forked. */
	esc_env_wipe("P11ESCROW_CA_PIN");
	/* TLS from the keeper's greeting (the CA's certificates): built once, inherited by every worker. */
	if ((kfd = keeper_connection(&s)) < 0 || esc_keeper_connect(ctx, kfd, &hello) != ESC_OK) {
		mlog(&s, ESC_LOG_ERROR, "cannot greet the keeper: %s", esc_ctx_errmsg(ctx));
		rc = 70;
		goto stop;
	}
	rc = tls_setup(&s, hello);
	esc_keeper_free(hello);
	if (rc != 0)
		goto stop;
	/* The enterprise CAs' CRLs: verified now, so a wrong file stops the start, not a login; inherited by workers. */
	if ((rc = account_crls_load(&s, ctx)) != 0)
		goto stop;
	if (listen_setup(&s) != 0) {
		rc = 4;
		goto stop;
	}
	for (i = 0; i < s.nworkers; i++) {
		if ((rc = spawn_worker(&s, i, 1)) != 0) {
			mlog(&s, ESC_LOG_ERROR, "worker %d did not start (status %d)", i, rc);
			goto stop;
		}
	}
	mlog(&s, ESC_LOG_INFO,
	     "p11escrowd %s serving https://%s with %d worker(s); client certificates %s; keeper pid %d", ESC_VERSION,
	     esc_config_get(s.cfg, "listen"), s.nworkers, esc_config_get(s.cfg, "tls_client_auth"), (int)s.keeper.pid);
	/* systemd Type=notify: every worker has said it serves (spawn_worker waited), so `systemctl start` may return.
	 * Only this process (the unit's main PID) notifies; without $NOTIFY_SOCKET it is a no-op. */
	sd_notifyf(0, "READY=1\nSTATUS=serving https://%s with %d worker(s)\nMAINPID=%d",
		   esc_config_get(s.cfg, "listen"), s.nworkers, (int)getpid());
	for (;;) {
		sig = sigtimedwait(&sigs, &si, &tick);
		if (sig == SIGHUP) {
			mlog(&s, ESC_LOG_INFO, "SIGHUP ignored: restart the service to apply a new configuration");
			continue;
		}
		if (sig == SIGTERM || sig == SIGINT) {
			mlog(&s, ESC_LOG_INFO, "%s: finishing requests in flight, then stopping",
			     sig == SIGTERM ? "SIGTERM" : "SIGINT");
			sd_notify(0, "STOPPING=1\nSTATUS=finishing requests in flight");
			break;
		}
		if (reap(&s, &fatal) != 0 || respawn(&s, &fatal) != 0) {
			rc = fatal;
			goto stop;
		}
	}
	rc = 0;
stop:
	/* The workers drain first (their last requests may need the keeper), then the keeper signs the last checkpoint. */
	for (i = 0; s.workers != NULL && i < s.nworkers; i++)
		if (s.workers[i].pid > 0)
			kill(s.workers[i].pid, SIGTERM);
	deadline = mono() + esc_config_get_long(s.cfg, "shutdown_grace") + 5;
	for (i = 0; s.workers != NULL && i < s.nworkers; i++)
		if (s.workers[i].pid > 0 && wait_child(&s, s.workers[i].pid, deadline, "a worker") != 0 && rc == 0)
			mlog(&s, ESC_LOG_WARN, "worker %d did not stop cleanly", i);
	if (s.keeper.pid > 0) {
		kill(s.keeper.pid, SIGTERM);
		if (wait_child(&s, s.keeper.pid, mono() + 30, "the keeper") != 0 && rc == 0)
			mlog(&s, ESC_LOG_WARN, "the keeper did not stop cleanly");
	}
	if (rc == 0)
		mlog(&s, ESC_LOG_INFO, "stopped");
out:
	for (i = 0; s.workers != NULL && i < s.nworkers; i++)
		if (s.workers[i].ctl >= 0)
			close(s.workers[i].ctl);
	if (s.keeper.ctl >= 0)
		close(s.keeper.ctl);
	free(s.workers);
	svc_guard_free(s.guard);
	svc_metrics_free(s.metrics);
	if (s.listen_fd >= 0)
		close(s.listen_fd);
	SSL_CTX_free(s.tls);
	sk_X509_CRL_pop_free(s.account_crls, X509_CRL_free);
	esc_secret_free(s.pin);
	esc_config_free(s.cfg);
	esc_ctx_free(ctx);
	pthread_mutex_destroy(&s.log_lock);
	return rc;
}
