/*
 * p11escrowd — internal interfaces between the service's parts:
 * p11escrowd.c (process, TLS, workers), http.c (request/reply helpers over
 * libevent's evhttp), est.c (EST endpoints), api.c (JSON API).
 *
 * Processes: each worker process runs one event loop and owns its library
 * context, database connection and a remote keeper (esc_keeper_connect:
 * the CA token lives in the keeper process, p11escrowd.c).  A request is
 * handled start to finish on one worker; handlers may block.
 */
#ifndef P11ESCROWD_SVC_H
#define P11ESCROWD_SVC_H

#include <stddef.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <p11escrow/config.h>
#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>

struct svc;
struct svc_metrics;
struct svc_metrics_slot;

/* Monotonic seconds (0 if the clock fails): for windows and lifetimes within one process. */
static inline long long
svc_mono_seconds(void)
{
	struct timespec ts;

	return clock_gettime(CLOCK_MONOTONIC, &ts) == 0 ? (long long)ts.tv_sec : 0;
}

struct svc_worker {
	int index;
	struct svc *svc;
	struct esc_ctx *ctx;
	struct esc_store *st;	   /* NULL while the database is unreachable */
	struct esc_keeper *keeper; /* remote; NULL while the keeper process is unavailable */
	unsigned char *crl;	   /* the current CRL (DER) as this worker last read it from the database */
	size_t crl_len;
	long long crl_number;	       /* its number: re-read when the database's current one differs */
	int require_cert;	       /* tls_client_auth = require: no request without a client certificate */
	long long client_cert_recheck; /* seconds a checked client certificate stays accepted on its connection */
	struct svc_guard *guard;       /* failed logins, shared by every worker process (guard.c) */
	size_t max_body;	       /* the largest body a handler sees (max_body); evhttp's own limit is higher */
	long long session_idle;	       /* session_idle_timeout: seconds a JSON API session may go unused */
	long long session_lifetime;    /* session_lifetime: seconds a JSON API session lasts at most */
	const STACK_OF(X509_CRL) *account_crls; /* account_cert_crl, verified at start (shared, read only), or NULL */
	int kra_warning_days; /* kra_expiry_warning_days: warn this many days before a KRA certificate expires */
	int console;	      /* console = on: the web console's files under /console/ (console.c) */
	/* Monitoring (metrics.c). */
	struct svc_metrics *metrics;	 /* every process's counters, shared */
	struct svc_metrics_slot *mslot;	 /* this worker's */
	unsigned char metrics_token[32]; /* SHA-256 of the metrics_token_file token ... */
	int metrics_token_set;		 /* ... if one is configured */
	struct esc_store_stats stats;	 /* the database's counts as this worker last read them */
	long long stats_at;		 /* when (monotonic seconds), 0: never */
	int stats_ok;			 /* that read succeeded */
};

/*
 * Ensure w->st and w->keeper are usable, reconnecting the database after a
 * loss (the keeper's new connection comes from the supervisor).  Returns 0,
 * or -1 after replying 503 with the reason and Retry-After to r.
 */
struct svc_request;
int svc_worker_ready(struct svc_worker *w, struct svc_request *r);
/* Ensure w->st (a lost database connection reconnected), nothing else, and no reply: ESC_OK or the error. */
enum esc_err svc_worker_db(struct svc_worker *w);
/* After a library call failed with a connection-class error: drop a lost database connection (reconnected at the next request) or a lost keeper connection. */
void svc_worker_forget(struct svc_worker *w, enum esc_err e);

struct svc_request {
	struct svc_worker *w;
	struct evhttp_request *ev;
	enum evhttp_cmd_type method; /* HEAD is served as GET: this says GET, head says HEAD */
	const char *method_name;     /* "GET", "POST", "HEAD", ... as the client sent it */
	int head;		     /* a HEAD request: the GET answer's status and headers, no body */
	char *path;		     /* decoded path, without the query */
	struct evkeyvalq query;	     /* decoded query parameters */
	unsigned char *body;	     /* the body, NUL-terminated; NULL if none */
	size_t bodylen;
	X509 *client_cert; /* TLS client certificate (verified against the CA), or NULL */
	SSL *ssl;	   /* the request's TLS connection (not owned), or NULL */
	char peer[64];	   /* the client's address, "" if unknown */
	char id[17];	   /* request id for log lines */
	int api;	   /* the path is under /api/v1: errors are JSON, not text */
	int replied;
	int status;	 /* the status replied, for the access log */
	size_t bytes;	 /* the body's length replied (a HEAD's: 0) */
	char actor[128]; /* who authenticated: an account, est:otp:NAME, est:cert:SERIAL; "" if none */
};

/*
 * Was r's client certificate checked against the database (issued here, an
 * enrollee's, not revoked) on this TLS connection less than
 * client_cert_recheck seconds ago?  svc_client_cert_checked records a
 * check that passed.  A keep-alive connection then skips the database for
 * its later requests; a revocation reaches it within that time.
 */
int svc_client_cert_fresh(struct svc_request *r);
void svc_client_cert_checked(struct svc_request *r);

/*
 * Was a login of an account with r's client certificate audited on this
 * TLS connection less than client_cert_recheck seconds ago
 * (svc_account_cert_audited records one)?  Only the audit event is saved:
 * the binding and the account are read at every request.  Kept apart from
 * the EST check above, which is a different check.
 */
int svc_account_cert_audit_due(struct svc_request *r);
void svc_account_cert_audited(struct svc_request *r);

/*
 * Failed logins (guard.c): per name (an account, a one-time password's
 * name) and per client address, within a window of seconds; a limit of 0
 * turns that count off.
 */
struct svc_guard;
#define SVC_GUARD_NAME 1
#define SVC_GUARD_ADDRESS 2
struct svc_guard *svc_guard_new(long long limit_name, long long limit_address, long long window);
void svc_guard_free(struct svc_guard *g);
/* Seconds further attempts for name or from address are refused (0: not refused). */
long long svc_guard_blocked(struct svc_guard *g, const char *address, const char *name);
/* Count a failure; returns which limits (SVC_GUARD_*) this failure reached. */
int svc_guard_failed(struct svc_guard *g, const char *address, const char *name);
/* A success: forget name's failures. */
void svc_guard_succeeded(struct svc_guard *g, const char *name);
/* How many names and addresses are held off now (a scan of the table, for /metrics). */
void svc_guard_held(struct svc_guard *g, long long *names, long long *addresses);

/*
 * Before a password of name is checked: 0 if it may be, else the seconds
 * until it may (too many failures for name or from r's address), with
 * Retry-After set and msg the reason for the caller's 429 (its own format:
 * JSON for the API, text for EST); the password is then not even checked.
 * After the check, svc_login_result counts a failure (logged, and audited
 * when it reaches a limit) or clears name's.
 */
long long svc_login_wait(struct svc_request *r, const char *name, char *msg, size_t msglen);
void svc_login_result(struct svc_request *r, const char *name, int ok);

/*
 * Set up r for req (0), or reply and return -1: 400 for a malformed path or
 * query, 413 for a body over w->max_body (evhttp, whose own limit is higher,
 * has read it: the client sees this answer, not a reset).
 */
int svc_request_init(struct svc_request *r, struct svc_worker *w, struct evhttp_request *req);
/* The cRLNumber of crl, or 0 if it has none. */
long long svc_crl_number(X509_CRL *crl);
/* Route r to its endpoint; replies exactly once. */
void svc_http_dispatch(struct svc_request *r);
/* Free what svc_request_init allocated (the body is wiped). */
void svc_request_done(struct svc_request *r);

/* A request header, or NULL. */
const char *svc_header(struct svc_request *r, const char *name);
/* A query parameter, or NULL. */
const char *svc_query(struct svc_request *r, const char *name);
/* Does the Content-Type header's media type (before any ';') equal type, case-insensitively? */
int svc_content_type_is(struct svc_request *r, const char *type);

/* Add a response header (before the reply). */
void svc_add_header(struct svc_request *r, const char *name, const char *value);
/* Send the reply (once; later calls are ignored). */
void svc_reply(struct svc_request *r, int status, const char *content_type, const void *body, size_t len);
/*
 * Send a reply whose body is secret (a private key): body must come from
 * OPENSSL_secure_malloc; it is sent without being copied and wiped and
 * freed when sent (or dropped).  Ownership passes to the reply.
 */
void svc_reply_secret(struct svc_request *r, int status, const char *content_type, unsigned char *body, size_t len);
/*
 * An error reply in the format of r's endpoint family (docs/api.md,
 * docs/est.md): under /api/v1 {"error": reason, "code": esc_strerror(e)},
 * elsewhere one text/plain line with the reason.  The reason is never a
 * secret.  svc_reply_error takes e from the status (400 USAGE, 404
 * NOT_FOUND, ...).
 */
void svc_reply_error(struct svc_request *r, int status, const char *reason);
void svc_reply_error_code(struct svc_request *r, int status, const char *reason, enum esc_err e);
/* A JSON string of s (a new reference, NULL if out of memory); bytes jansson refuses (invalid UTF-8) become '?'. */
struct json_t;
struct json_t *svc_json_text(const char *s);
/* Reply with the HTTP status for library error e and the context's message. */
void svc_reply_esc(struct svc_request *r, enum esc_err e);
/*
 * The HTTP status for a library error (DENIED 403, AUTH 401, NOT_FOUND 404,
 * STATE/EXISTS 409, ...).  TAMPERED is 400 here, as EST has it: the
 * client's own envelope is broken.  The JSON API answers 409 for it (a
 * stored record failed its integrity check), see api.c.
 */
int svc_http_status(enum esc_err e);

/*
 * HTTP Basic credentials: 1 and user (NUL-terminated, at most userlen-1
 * bytes) plus *password (secure memory; free with esc_secret_free) if
 * present and well-formed; 0 if absent; -1 if malformed.
 */
int svc_basic_auth(struct svc_request *r, char *user, size_t userlen, struct esc_secret **password);

/* Structured log line on stderr: "level=info worker=1 req=... msg=..."; never a secret. */
/*
 * The checkpoint of event_id the service just signed, kept outside the
 * database (docs/backup.md): its one-line form on the log and, with
 * audit_checkpoint_file, the file form there.  A failure is only logged.
 */
void svc_checkpoint_published(struct svc_worker *w, long long event_id);

void svc_log(struct svc_worker *w, enum esc_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Endpoint families: each replies exactly once. */
void svc_est_handle(struct svc_request *r, const char *label, const char *op);
void svc_api_handle(struct svc_request *r, const char *subpath);
/* The web console: rest is the path after "/console" ("", "/", "/app.js", ...). */
void svc_console_handle(struct svc_request *r, const char *rest);

#endif
