/*
 * p11escrowd — the HTTPS service: EST enrollment with key archival and the
 * JSON API of the recovery workflow, thin over libp11escrow.
 *
 * Process model: the main thread reads the configuration and the CA PIN,
 * checks database and token, opens the listening socket, starts the worker
 * threads and then only waits for signals.  Each worker runs its own
 * libevent loop over a duplicate of the listening socket and owns its own
 * library context, database connection and CA token session (keeper); a
 * request is handled start to finish on one worker.  SIGTERM/SIGINT: every
 * worker stops accepting, finishes what it has in flight and exits; the
 * process exits 0.  Runs in the foreground (systemd Type=exec), logs
 * structured lines to stderr.
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
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/config.h>
#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/pin.h>
#include <p11escrow/recovery.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "esc_build_config.h"
#include "api_admin.h"
#include "svc.h"

struct slot {
	struct svc_worker w;
	pthread_t thread;
	int started;
	struct event_base *base;
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	int stop_pipe[2];
	struct event *stop_ev, *drain_ev;
	int inflight;
	int stopping;
	struct timespec stop_since;
	struct timespec last_rx;  /* the last TLS record any connection of this worker received */
	int nudge_pipe[2];        /* another worker lost the CA token: let go of ours (O_NONBLOCK) */
	struct event *nudge_ev;
	atomic_int nudged;        /* a byte is in nudge_pipe already */
	struct event *ckpt_ev;    /* worker 0: the audit checkpoint timer */
	struct event *ckpt_soon;  /* worker 0: a check CKPT_AFTER_REQUEST after requests (one for a burst) */
	long long ckpt_retry;     /* worker 0: no checkpoint before this (monotonic seconds) after a failure */
	int ckpt_backoff;         /* worker 0: seconds of the current back-off, 0 after a success */
	struct event *expire_ev;  /* worker 0: the sweep of released packages past release_ttl_hours */
};

struct svc {
	struct esc_config *cfg;
	struct esc_secret *pin;
	SSL_CTX *tls;
	int listen_fd;
	int nworkers;
	struct slot *slots;
	int log_level;
	pthread_mutex_t log_lock;
	struct svc_guard *guard; /* failed logins, for every worker */
	STACK_OF(X509_CRL) *account_crls; /* account_cert_crl, or NULL */
};

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* ---- logging ------------------------------------------------------------- */

static void
vlog_line(struct svc *s, int worker, enum esc_log_level level, const char *fmt, va_list ap)
{
	char ts[32], msg[1024];
	struct timespec now;
	struct tm tm;
	size_t i;

	if (s != NULL && (int)level > s->log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* One line per event: quotes and control characters cannot forge another. */
	for (i = 0; msg[i] != '\0'; i++)
		if ((unsigned char)msg[i] < 0x20 || msg[i] == '"' || msg[i] == 0x7f)
			msg[i] = msg[i] == '"' ? '\'' : ' ';
	if (s != NULL)
		pthread_mutex_lock(&s->log_lock);
	if (worker >= 0)
		fprintf(stderr, "ts=%s.%03ldZ level=%s worker=%d msg=\"%s\"\n", ts, now.tv_nsec / 1000000L,
			level_names[level], worker, msg);
	else
		fprintf(stderr, "ts=%s.%03ldZ level=%s msg=\"%s\"\n", ts, now.tv_nsec / 1000000L, level_names[level],
			msg);
	fflush(stderr);
	if (s != NULL)
		pthread_mutex_unlock(&s->log_lock);
}

static void __attribute__((format(printf, 3, 4)))
mlog(struct svc *s, enum esc_log_level level, const char *fmt, ...)
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

/* Library log lines of a worker's context. */
static void
lib_log(void *arg, enum esc_log_level level, const char *msg)
{
	svc_log(arg, level, "%s", msg);
}

/* ---- the worker's connections: database and CA token ------------------- */

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
	if (w->keeper == NULL &&
	    (r = esc_keeper_open(w->ctx, w->st, esc_config_get(s->cfg, "module"), s->pin, &w->keeper)) != ESC_OK)
		return r;
	return ESC_OK;
}

int
svc_worker_ready(struct svc_worker *w, struct svc_request *r)
{
	int had_db = w->st != NULL, had_token = w->keeper != NULL;
	enum esc_err e = worker_connect(w);

	if (e == ESC_OK) {
		if (!had_db || !had_token)
			svc_log(w, ESC_LOG_INFO, "reconnected:%s%s", had_db ? "" : " database", had_token ? "" : " CA token");
		return 0;
	}
	svc_log(w, ESC_LOG_ERROR, "req=%s unavailable: %s", r->id, esc_ctx_errmsg(w->ctx));
	svc_worker_forget(w, e);
	svc_add_header(r, "Retry-After", "5");
	svc_reply_error_code(r, 503,
			     w->st == NULL ? "the database is unavailable; try again later"
					   : "the CA token (HSM) is unavailable; try again later",
			     w->st == NULL ? ESC_ERR_DB_CONNECT : ESC_ERR_TOKEN_NOT_FOUND);
	return -1;
}

/*
 * The CA token is lost to one worker, so it is to all: the module (one
 * instance in the process, token.c) is finalised only when every token
 * session of it is closed, and only a fresh C_Initialize reconnects (a
 * p11-kit-client.so whose server went away stays disconnected until then).
 * So every other worker is asked to let go of its session between requests,
 * in its own thread; an idle worker would otherwise keep the dead module
 * for ever and the busy ones could never reconnect.
 */
static void
release_token_everywhere(struct svc_worker *w)
{
	struct svc *s = w->svc;
	int i;

	for (i = 0; s->slots != NULL && i < s->nworkers; i++) {
		struct slot *sl = &s->slots[i];

		if (i == w->index || sl->nudge_pipe[1] < 0 || atomic_exchange(&sl->nudged, 1))
			continue;
		/* Non-blocking: a full pipe has a nudge pending already. */
		if (write(sl->nudge_pipe[1], "t", 1) < 0 && errno != EAGAIN)
			atomic_store(&sl->nudged, 0);
	}
}

static void
on_nudge(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;
	char buf[64];

	(void)what;
	atomic_store(&sl->nudged, 0);
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	if (sl->w.keeper != NULL) {
		svc_log(&sl->w, ESC_LOG_INFO, "another worker lost the CA token: closing this worker's session too");
		esc_keeper_free(sl->w.keeper);
		sl->w.keeper = NULL;
	}
}

void
svc_worker_forget(struct svc_worker *w, enum esc_err e)
{
	switch (e) {
	case ESC_ERR_DB_CONNECT:
	case ESC_ERR_SCHEMA_OLD:
	case ESC_ERR_SCHEMA_NEWER:
		/* The keeper read its URIs from this database; it stays valid. */
		esc_store_free(w->st);
		w->st = NULL;
		break;
	case ESC_ERR_PKCS11:
	case ESC_ERR_TOKEN_NOT_FOUND:
	case ESC_ERR_MODULE:
	case ESC_ERR_KEY_NOT_FOUND:
	case ESC_ERR_PIN_INCORRECT:
	case ESC_ERR_PIN_LOCKED:
		esc_keeper_free(w->keeper);
		w->keeper = NULL;
		release_token_everywhere(w);
		break;
	default:
		break;
	}
}

/* ---- audit checkpoints ---------------------------------------------------- */

#define CKPT_TICK 5            /* seconds between worker 0's timed checks */
#define CKPT_AFTER_REQUEST 1   /* seconds after a request (the first of a burst) that worker 0 checks */
#define CKPT_BACKOFF_MIN 60    /* a failed checkpoint is retried after this, doubling ... */
#define CKPT_BACKOFF_MAX 3600  /* ... up to this */

/*
 * Sign an audit checkpoint if checkpoint_events or checkpoint_seconds say
 * one is due; final (at shutdown, the workers stopped): if any event
 * follows the newest checkpoint.  Only worker 0 calls it (then the main
 * thread with worker 0's connections), so a process never signs two at
 * once.  A failure never fails a request: the library audits it, the log
 * says it, and it is retried after a back-off.
 */
static void
checkpoint_maybe(struct slot *sl, int final)
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
	if (!final && now.tv_sec < sl->ckpt_retry)
		return;
	if ((r = worker_connect(w)) == ESC_OK)
		r = esc_keeper_checkpoint(w->ctx, w->keeper, w->st, NULL, final ? 1 : events, final ? 0 : seconds,
					  &id);
	if (r == ESC_OK) {
		sl->ckpt_backoff = 0;
		if (id > 0)
			svc_log(w, ESC_LOG_INFO, "audit checkpoint signed: events up to %lld%s", id,
				final ? " (at shutdown)" : "");
		return;
	}
	sl->ckpt_backoff = sl->ckpt_backoff == 0 ? CKPT_BACKOFF_MIN
			   : sl->ckpt_backoff >= CKPT_BACKOFF_MAX / 2 ? CKPT_BACKOFF_MAX
								      : 2 * sl->ckpt_backoff;
	sl->ckpt_retry = (long long)now.tv_sec + sl->ckpt_backoff;
	svc_log(w, ESC_LOG_ERROR, "audit checkpoint failed%s: %s", final ? " at shutdown" : " (retried later)",
		esc_ctx_errmsg(w->ctx));
	/* A lost connection is dropped; a missing audit key (KEY_NOT_FOUND, STATE) is no reason to reopen the token. */
	if (r == ESC_ERR_DB_CONNECT || r == ESC_ERR_PKCS11 || r == ESC_ERR_TOKEN_NOT_FOUND || r == ESC_ERR_MODULE)
		svc_worker_forget(w, r);
}

static void
on_checkpoint_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	checkpoint_maybe(arg, 0);
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

static void
on_expire_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	expire_sweep(arg);
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
	svc_log(&sl->w, ESC_LOG_INFO, "req=%s method=%s path=%s status=%d ms=%.1f client_cert=%s", r.id,
		r.method_name, r.path != NULL ? r.path : "?", r.status,
		(double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
		r.client_cert != NULL ? "yes" : "no");
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

static void
on_drain(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;
	double grace = (double)esc_config_get_long(sl->w.svc->cfg, "shutdown_grace");

	(void)fd;
	(void)what;
	/* Nothing in flight and nothing arriving for a moment, or out of time. */
	if ((sl->inflight <= 0 && since(&sl->stop_since) >= 0.5 && since(&sl->last_rx) >= 1.0) ||
	    since(&sl->stop_since) >= grace) {
		if (sl->inflight > 0)
			svc_log(&sl->w, ESC_LOG_WARN, "shutdown grace of %.0f s over with %d request(s) in flight", grace,
				sl->inflight);
		event_base_loopexit(sl->base, NULL);
	}
}

static void
on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct slot *sl = arg;
	struct timeval tick = {0, 100000};
	char b;

	(void)what;
	if (read(fd, &b, 1) < 0 || sl->stopping)
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

static void *
worker_main(void *arg)
{
	struct slot *sl = arg;

	/* Worker 0 expires overdue packages at once, then on its timer. */
	if (sl->expire_ev != NULL)
		expire_sweep(sl);
	event_base_dispatch(sl->base);
	/* Idle keep-alive connections are closed here. */
	evhttp_free(sl->http);
	sl->http = NULL;
	return NULL;
}

static int
worker_setup(struct svc *s, struct slot *sl)
{
	struct esc_config *cfg = s->cfg;
	int fd;

	if (pipe2(sl->stop_pipe, O_CLOEXEC) != 0 || pipe2(sl->nudge_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
		return -1;
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
	if ((fd = fcntl(s->listen_fd, F_DUPFD_CLOEXEC, 0)) < 0)
		return -1;
	if ((sl->bound = evhttp_accept_socket_with_handle(sl->http, fd)) == NULL) {
		close(fd);
		return -1;
	}
	if ((sl->stop_ev = event_new(sl->base, sl->stop_pipe[0], EV_READ, on_stop, sl)) == NULL ||
	    event_add(sl->stop_ev, NULL) != 0)
		return -1;
	if ((sl->nudge_ev = event_new(sl->base, sl->nudge_pipe[0], EV_READ | EV_PERSIST, on_nudge, sl)) == NULL ||
	    event_add(sl->nudge_ev, NULL) != 0)
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
	if (sl->stop_ev != NULL)
		event_free(sl->stop_ev);
	if (sl->drain_ev != NULL)
		event_free(sl->drain_ev);
	if (sl->nudge_ev != NULL)
		event_free(sl->nudge_ev);
	if (sl->ckpt_ev != NULL)
		event_free(sl->ckpt_ev);
	if (sl->ckpt_soon != NULL)
		event_free(sl->ckpt_soon);
	if (sl->expire_ev != NULL)
		event_free(sl->expire_ev);
	if (sl->base != NULL)
		event_base_free(sl->base);
	if (sl->stop_pipe[0] >= 0) {
		close(sl->stop_pipe[0]);
		close(sl->stop_pipe[1]);
	}
	if (sl->nudge_pipe[0] >= 0) {
		close(sl->nudge_pipe[0]);
		close(sl->nudge_pipe[1]);
	}
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
	printf("Usage: p11escrowd [--config FILE] [--check]\n\n"
	       "Serves EST (RFC 7030) enrollment with key archival and the JSON API of the\n"
	       "recovery workflow over HTTPS, in the foreground; stops on SIGTERM.\n\n"
	       "  -c, --config FILE   configuration (default %s;\n"
	       "                      P11ESCROW_<KEY> environment variables override it)\n"
	       "      --check         validate configuration, database schema, CA token and TLS files, then exit\n"
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

static enum esc_err
obtain_pin(struct svc *s, struct esc_ctx *ctx)
{
	const char *file = esc_config_get(s->cfg, "ca_pin_file"), *creds = getenv("CREDENTIALS_DIRECTORY");
	char path[4096];
	enum esc_err r;

	if (*file == '\0' && creds != NULL && *creds == '/') {
		snprintf(path, sizeof(path), "%s/ca-pin", creds);
		if (access(path, F_OK) == 0)
			file = path;
	}
	r = esc_secret_obtain(ctx, *file ? file : NULL, "P11ESCROW_CA_PIN", NULL, &s->pin);
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

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'C'},
		{"version", no_argument, NULL, 'V'},	  {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = ESC_CONFIG_DEFAULT_PATH;
	struct rlimit nocore = {0, 0};
	struct svc s;
	struct esc_ctx *ctx = NULL;
	sigset_t sigs;
	enum esc_err r;
	int c, check = 0, rc = 1, i, sig;

	/* Before any JSON: bodies carry passwords and key files (api_admin.c). */
	api_json_wipe_on_free();

	memset(&s, 0, sizeof(s));
	s.listen_fd = -1;
	s.log_level = ESC_LOG_INFO;
	pthread_mutex_init(&s.log_lock, NULL);
	/* No core dumps: the process holds the CA PIN and, briefly, private keys. */
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
	/*
	 * The CA PIN and, briefly, private keys live in the secure heap: without
	 * locked memory they could reach swap, so the service does not start.
	 */
	if (esc_secmem_init() != ESC_OK) {
		struct rlimit ml;

		(void)getrlimit(RLIMIT_MEMLOCK, &ml);
		fprintf(stderr,
			"p11escrowd: cannot lock the secure heap for the CA PIN in memory (mlock failed; "
			"RLIMIT_MEMLOCK is %llu bytes, 1 MiB is needed): raise it (systemd: LimitMEMLOCK=8M, "
			"shell: ulimit -l 8192)\n",
			(unsigned long long)ml.rlim_cur);
		esc_env_wipe("P11ESCROW_CA_PIN");
		return 70;
	}
	if (esc_ctx_new(&ctx) != ESC_OK)
		return 70;
	/* Signals are taken by the main thread only (sigwait); workers inherit the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((r = esc_config_new(ctx, &s.cfg)) != ESC_OK ||
	    (access(config, F_OK) == 0 || strcmp(config, ESC_CONFIG_DEFAULT_PATH) != 0
		     ? (r = esc_config_load_file(ctx, s.cfg, config)) != ESC_OK
		     : 0) ||
	    (r = esc_config_apply_env(ctx, s.cfg)) != ESC_OK ||
	    (r = esc_ctx_set_module_allow(ctx, esc_config_get(s.cfg, "module_allow"))) != ESC_OK) {
		rc = fail(&s, ctx, r);
		goto out;
	}
	s.log_level = log_level_of(esc_config_get(s.cfg, "log_level"));
	s.nworkers = (int)esc_config_get_long(s.cfg, "workers");
	if ((r = obtain_pin(&s, ctx)) != ESC_OK) {
		rc = fail(&s, ctx, r);
		goto out;
	}
	if ((s.slots = calloc((size_t)s.nworkers, sizeof(*s.slots))) == NULL ||
	    (s.guard = svc_guard_new(esc_config_get_long(s.cfg, "auth_fail_limit"),
				     esc_config_get_long(s.cfg, "auth_fail_limit_address"),
				     esc_config_get_long(s.cfg, "auth_fail_window"))) == NULL) {
		rc = 70;
		goto out;
	}
	for (i = 0; i < s.nworkers; i++)
		s.slots[i].stop_pipe[0] = s.slots[i].stop_pipe[1] = s.slots[i].nudge_pipe[0] = s.slots[i].nudge_pipe[1] = -1;
	/* Every worker's database connection and token session, opened now so a bad setup fails at once. */
	for (i = 0; i < s.nworkers; i++) {
		struct svc_worker *w = &s.slots[i].w;

		w->index = i;
		w->svc = &s;
		w->require_cert = strcmp(esc_config_get(s.cfg, "tls_client_auth"), "require") == 0;
		w->client_cert_recheck = esc_config_get_long(s.cfg, "client_cert_recheck");
		w->guard = s.guard;
		w->session_idle = esc_config_get_long(s.cfg, "session_idle_timeout");
		w->session_lifetime = esc_config_get_long(s.cfg, "session_lifetime");
		if (esc_ctx_new(&w->ctx) != ESC_OK) {
			rc = 70;
			goto out;
		}
		esc_ctx_set_log(w->ctx, lib_log, w);
		/* The worker loads the CA token's module: only from where module_allow says. */
		if ((r = esc_ctx_set_module_allow(w->ctx, esc_config_get(s.cfg, "module_allow"))) != ESC_OK ||
		    (r = worker_connect(w)) != ESC_OK) {
			rc = fail(&s, w->ctx, r);
			goto out;
		}
	}
	if ((rc = tls_setup(&s, s.slots[0].w.keeper)) != 0)
		goto out;
	/* The enterprise CAs' CRLs: verified now, so a wrong file stops the start, not a login. */
	if (*esc_config_get(s.cfg, "account_cert_crl") != '\0') {
		if ((r = esc_account_cert_crls_load(ctx, esc_config_get(s.cfg, "account_cert_crl"),
						    esc_config_get(s.cfg, "account_cert_ca"), &s.account_crls)) !=
		    ESC_OK) {
			rc = fail(&s, ctx, r);
			goto out;
		}
		for (i = 0; i < s.nworkers; i++)
			s.slots[i].w.account_crls = s.account_crls;
	}
	if (check) {
		printf("p11escrowd: configuration '%s' valid; schema current; CA token '%s' logged in; TLS "
		       "certificate and key usable\n",
		       config, esc_keeper_token_label(s.slots[0].w.keeper));
		rc = 0;
		goto out;
	}
	if (listen_setup(&s) != 0) {
		rc = 4;
		goto out;
	}
	for (i = 0; i < s.nworkers; i++) {
		if (worker_setup(&s, &s.slots[i]) != 0) {
			mlog(&s, ESC_LOG_ERROR, "cannot set up worker %d: %s", i, strerror(errno));
			rc = 70;
			goto stop;
		}
	}
	for (i = 0; i < s.nworkers; i++) {
		if (pthread_create(&s.slots[i].thread, NULL, worker_main, &s.slots[i]) != 0) {
			mlog(&s, ESC_LOG_ERROR, "cannot start worker %d", i);
			rc = 70;
			goto stop;
		}
		s.slots[i].started = 1;
	}
	mlog(&s, ESC_LOG_INFO, "p11escrowd %s serving https://%s with %d worker(s); client certificates %s",
	     ESC_VERSION, esc_config_get(s.cfg, "listen"), s.nworkers, esc_config_get(s.cfg, "tls_client_auth"));
	for (;;) {
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			mlog(&s, ESC_LOG_INFO, "SIGHUP ignored: restart the service to apply a new configuration");
			continue;
		}
		mlog(&s, ESC_LOG_INFO, "%s: finishing requests in flight, then stopping",
		     sig == SIGTERM ? "SIGTERM" : "SIGINT");
		break;
	}
	rc = 0;
stop:
	for (i = 0; i < s.nworkers; i++)
		if (s.slots[i].started && write(s.slots[i].stop_pipe[1], "x", 1) != 1)
			mlog(&s, ESC_LOG_ERROR, "cannot signal worker %d", i);
	for (i = 0; i < s.nworkers; i++)
		if (s.slots[i].started)
			pthread_join(s.slots[i].thread, NULL);
	/* Drained: one last checkpoint covers every event of this run (worker 0's connections, its thread done). */
	if (rc == 0)
		checkpoint_maybe(&s.slots[0], 1);
	if (rc == 0)
		mlog(&s, ESC_LOG_INFO, "stopped");
out:
	for (i = 0; s.slots != NULL && i < s.nworkers; i++)
		worker_teardown(&s.slots[i]);
	free(s.slots);
	svc_guard_free(s.guard);
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
