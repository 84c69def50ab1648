/*
 * p11escrowd — requests and replies over libevent's evhttp, and routing.
 *
 * Everything a handler reads from a request is prepared here: the decoded
 * path (no NUL, no "..", bounded), the query, a NUL-terminated copy of the
 * body (wiped after the request) and the TLS client certificate the
 * handshake verified.  Replies always carry Cache-Control: no-store.
 */
#include <sys/queue.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/pin.h>
#include <p11escrow/revoke.h>

#include "metrics.h"
#include "svc.h"

#define PATH_MAX_LEN 512
#define EST_PREFIX "/.well-known/est/"
#define API_PREFIX "/api/v1"

/* The method's name; NULL for a method libevent does not know (p11escrowd.c lets those through too). */
static const char *
method_name(enum evhttp_cmd_type m)
{
	switch (m) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	default:
		return NULL;
	}
}

/* Is path (raw or decoded) under /api/v1? */
static int
is_api_path(const char *path)
{
	size_t n = sizeof(API_PREFIX) - 1;

	return strncmp(path, API_PREFIX, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* ---- Client certificates checked once per connection ---------------------- */

/* A check of the client certificate that passed on this connection, and when. */
struct cert_seen {
	X509 *cert;   /* renegotiation is off; compared anyway */
	long long at; /* monotonic seconds */
};

struct cert_check {
	struct cert_seen checked; /* against the database (svc_client_cert_checked) */
	struct cert_seen login;	  /* its account login audited (svc_account_cert_audited) */
};

static int check_index = -1;
static pthread_once_t check_once = PTHREAD_ONCE_INIT;

static void
check_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct cert_check *c = ptr;

	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	if (c != NULL) {
		X509_free(c->checked.cert);
		X509_free(c->login.cert);
		free(c);
	}
}

static void
check_index_new(void)
{
	check_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, check_free);
}

/* r's connection's record of passed checks (made on first use when create), or NULL. */
static struct cert_check *
check_of(struct svc_request *r, int create)
{
	struct cert_check *c;

	if (r->ssl == NULL || r->client_cert == NULL || pthread_once(&check_once, check_index_new) != 0 ||
	    check_index < 0)
		return NULL;
	if ((c = SSL_get_ex_data(r->ssl, check_index)) != NULL || !create)
		return c;
	if ((c = calloc(1, sizeof(*c))) != NULL && !SSL_set_ex_data(r->ssl, check_index, c)) {
		free(c);
		c = NULL;
	}
	return c;
}

/* Did r's client certificate pass the check s records less than client_cert_recheck seconds ago? */
static int
seen_fresh(const struct svc_request *r, const struct cert_seen *s)
{
	return s->cert != NULL && X509_cmp(s->cert, r->client_cert) == 0 &&
	       svc_mono_seconds() - s->at < r->w->client_cert_recheck;
}

/* Record in s that r's client certificate passed now.  Failing quietly only means checking again next time. */
static void
seen_now(const struct svc_request *r, struct cert_seen *s)
{
	if (!X509_up_ref(r->client_cert))
		return;
	X509_free(s->cert);
	s->cert = r->client_cert;
	s->at = svc_mono_seconds();
}

int
svc_client_cert_fresh(struct svc_request *r)
{
	struct cert_check *c = check_of(r, 0);

	return c != NULL && seen_fresh(r, &c->checked);
}

void
svc_client_cert_checked(struct svc_request *r)
{
	struct cert_check *c = check_of(r, 1);

	if (c != NULL)
		seen_now(r, &c->checked);
}

int
svc_account_cert_audit_due(struct svc_request *r)
{
	struct cert_check *c = check_of(r, 0);

	return c == NULL || !seen_fresh(r, &c->login);
}

void
svc_account_cert_audited(struct svc_request *r)
{
	struct cert_check *c = check_of(r, 1);

	if (c != NULL)
		seen_now(r, &c->login);
}

/* ---- Failed logins ---------------------------------------------------------- */

/* name as it may appear in a log line: printable ASCII, at most 64 characters. */
static void
loggable(char *dst, size_t len, const char *name)
{
	size_t i, n = name != NULL ? strnlen(name, 64) : 0;

	for (i = 0; i < n && i + 1 < len; i++)
		dst[i] = name[i] >= 0x20 && name[i] < 0x7f ? name[i] : '?';
	dst[i] = '\0';
}

long long
svc_login_wait(struct svc_request *r, const char *name, char *msg, size_t msglen)
{
	long long wait = svc_guard_blocked(r->w->guard, r->peer[0] ? r->peer : NULL, name);
	char secs[24];

	if (wait <= 0)
		return 0;
	svc_metrics_login_throttled(r->w->mslot);
	snprintf(secs, sizeof(secs), "%lld", wait);
	snprintf(msg, msglen, "too many failed logins for this name or from this address: try again in %lld s", wait);
	svc_add_header(r, "Retry-After", secs);
	return wait;
}

void
svc_login_result(struct svc_request *r, const char *name, int ok)
{
	struct svc_worker *w = r->w;
	char shown[72], details[320];
	int reached;

	if (ok) {
		svc_guard_succeeded(w->guard, name);
		return;
	}
	svc_metrics_login_failed(w->mslot);
	if ((reached = svc_guard_failed(w->guard, r->peer[0] ? r->peer : NULL, name)) == 0)
		return;
	loggable(shown, sizeof(shown), name);
	snprintf(details, sizeof(details), "too many failed logins %s%s%s%s%s: further attempts refused for a while",
		 (reached & SVC_GUARD_NAME) ? "for '" : "", (reached & SVC_GUARD_NAME) ? shown : "",
		 (reached & SVC_GUARD_NAME) ? "'" : "", (reached & SVC_GUARD_ADDRESS) ? " from " : "",
		 (reached & SVC_GUARD_ADDRESS) ? r->peer : "");
	svc_log(w, ESC_LOG_WARN, "req=%s %s", r->id, details);
	if (w->st != NULL) {
		struct esc_audit_event ev = {"p11escrowd",    "service",
					     "auth.throttle", (reached & SVC_GUARD_NAME) ? shown : r->peer,
					     "refused",	      details};

		if (esc_audit_append(w->ctx, w->st, &ev) != ESC_OK)
			svc_log(w, ESC_LOG_ERROR, "req=%s could not audit the login throttle: %s", r->id,
				esc_ctx_errmsg(w->ctx));
	}
}

int
svc_request_init(struct svc_request *r, struct svc_worker *w, struct evhttp_request *req)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evhttp_request_get_connection(req));
	SSL *ssl = bev != NULL ? bufferevent_openssl_get_ssl(bev) : NULL;
	unsigned char rnd[8];
	const char *raw, *q;
	size_t len, n, i;

	memset(r, 0, sizeof(*r));
	TAILQ_INIT(&r->query);
	r->w = w;
	r->ev = req;
	r->method = evhttp_request_get_command(req);
	r->method_name = method_name(r->method) != NULL ? method_name(r->method) : "OTHER";
	/*
	 * HEAD is GET without the body (RFC 9110 §9.3.2): every handler sees a
	 * GET, so HEAD works wherever GET does and is refused where GET is;
	 * send_prepared keeps the GET body's Content-Length and libevent drops
	 * the body of a reply to HEAD.
	 */
	if (r->method == EVHTTP_REQ_HEAD) {
		r->head = 1;
		r->method = EVHTTP_REQ_GET;
	}
	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		memset(rnd, 0, sizeof(rnd));
	for (i = 0; i < sizeof(rnd); i++)
		snprintf(r->id + 2 * i, 3, "%02x", rnd[i]);
	r->ssl = ssl;
	{
		char *host = NULL;
		ev_uint16_t port = 0;

		evhttp_connection_get_peer(evhttp_request_get_connection(req), &host, &port);
		snprintf(r->peer, sizeof(r->peer), "%s", host != NULL ? host : "");
	}
	if (ssl != NULL && SSL_get_verify_result(ssl) == X509_V_OK)
		r->client_cert = SSL_get1_peer_certificate(ssl);

	raw = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	/* Even a malformed API path gets its refusal in JSON; the decoded path decides below. */
	r->api = raw != NULL && is_api_path(raw);
	if (raw == NULL || *raw != '/' || strlen(raw) > PATH_MAX_LEN ||
	    (r->path = evhttp_uridecode(raw, 0, &n)) == NULL || strlen(r->path) != n || strstr(r->path, "..") != NULL) {
		svc_reply_error(r, 400, "malformed request path");
		return -1;
	}
	r->api = is_api_path(r->path); /* as svc_http_dispatch routes it */
	q = evhttp_uri_get_query(uri);
	if (q != NULL && evhttp_parse_query_str(q, &r->query) != 0) {
		svc_reply_error(r, 400, "malformed query string");
		return -1;
	}
	len = evbuffer_get_length(in);
	if (len > w->max_body) {
		char msg[96];

		/* Never copied: evhttp holds at most its own, higher limit (p11escrowd.c). */
		snprintf(msg, sizeof(msg), "request body larger than %zu bytes", w->max_body);
		svc_reply_error(r, 413, msg);
		return -1;
	}
	if (len > 0) {
		if ((r->body = malloc(len + 1)) == NULL || evbuffer_remove(in, r->body, len) != (int)len) {
			svc_reply_error(r, 503, "out of memory");
			return -1;
		}
		r->body[len] = '\0';
		r->bodylen = len;
	}
	return 0;
}

void
svc_request_done(struct svc_request *r)
{
	if (r->body != NULL) {
		OPENSSL_cleanse(r->body, r->bodylen);
		free(r->body);
	}
	evhttp_clear_headers(&r->query);
	free(r->path);
	X509_free(r->client_cert);
	memset(r, 0, sizeof(*r));
}

const char *
svc_header(struct svc_request *r, const char *name)
{
	return evhttp_find_header(evhttp_request_get_input_headers(r->ev), name);
}

const char *
svc_query(struct svc_request *r, const char *name)
{
	return evhttp_find_header(&r->query, name);
}

int
svc_content_type_is(struct svc_request *r, const char *type)
{
	const char *ct = svc_header(r, "Content-Type");
	size_t n = strlen(type);

	if (ct == NULL)
		return 0;
	while (*ct == ' ')
		ct++;
	return strncasecmp(ct, type, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

void
svc_add_header(struct svc_request *r, const char *name, const char *value)
{
	evhttp_add_header(evhttp_request_get_output_headers(r->ev), name, value);
}

static const char *
reason_phrase(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 202:
		return "Accepted";
	case 301:
		return "Moved Permanently";
	case 304:
		return "Not Modified";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 409:
		return "Conflict";
	case 413:
		return "Payload Too Large";
	case 415:
		return "Unsupported Media Type";
	case 429:
		return "Too Many Requests";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 503:
		return "Service Unavailable";
	default:
		return "Status";
	}
}

/* Does the Allow list a (comma-separated, as svc handlers write it) name method? */
static int
allow_lists(const char *allow, const char *method)
{
	size_t n = strlen(method);
	const char *p = allow;

	while ((p = strstr(p, method)) != NULL) {
		if ((p == allow || p[-1] == ' ' || p[-1] == ',') && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
			return 1;
		p += n;
	}
	return 0;
}

static void
send_prepared(struct svc_request *r, int status, const char *content_type)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(r->ev);
	const char *allow = evhttp_find_header(h, "Allow");
	char buf[128];

	/* Wherever GET is allowed, so is HEAD (svc_request_init serves one as the other). */
	if (allow != NULL && allow_lists(allow, "GET") && !allow_lists(allow, "HEAD") &&
	    (size_t)snprintf(buf, sizeof(buf), "%s, HEAD", allow) < sizeof(buf)) {
		evhttp_remove_header(h, "Allow");
		evhttp_add_header(h, "Allow", buf);
	}
	/*
	 * A reply to HEAD: the Content-Length of the body a GET gets (libevent
	 * adds none for HEAD), and no body.  libevent 2.1 would write the body
	 * anyway (evhttp_make_header appends whatever the output buffer holds),
	 * which the client would read as the start of the next response: it is
	 * dropped here (a secret body's cleanup wipes it).
	 */
	r->bytes = r->head ? 0 : evbuffer_get_length(evhttp_request_get_output_buffer(r->ev));
	if (r->head) {
		struct evbuffer *out = evhttp_request_get_output_buffer(r->ev);

		snprintf(buf, sizeof(buf), "%zu", evbuffer_get_length(out));
		evhttp_remove_header(h, "Content-Length");
		evhttp_add_header(h, "Content-Length", buf);
		evbuffer_drain(out, evbuffer_get_length(out));
	}
	evhttp_remove_header(h, "Content-Type");
	evhttp_add_header(h, "Content-Type", content_type);
	/* no-store unless the handler chose (the console's static files: no-cache with an ETag). */
	if (evhttp_find_header(h, "Cache-Control") == NULL)
		evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	/* The id of the log line this request gets (p11escrowd.c), for a client to quote. */
	evhttp_add_header(h, "X-Request-Id", r->id);
	evhttp_send_reply(r->ev, status, reason_phrase(status), NULL);
	r->replied = 1;
	r->status = status;
}

void
svc_reply(struct svc_request *r, int status, const char *content_type, const void *body, size_t len)
{
	if (r->replied)
		return;
	if (len > 0 && evbuffer_add(evhttp_request_get_output_buffer(r->ev), body, len) != 0) {
		/* Not libevent's HTML page (evhttp_send_error): an empty 503 is all that memory allows. */
		evbuffer_drain(evhttp_request_get_output_buffer(r->ev), (size_t)-1);
		svc_add_header(r, "Retry-After", "5");
		send_prepared(r, 503, "text/plain; charset=utf-8");
		return;
	}
	send_prepared(r, status, content_type);
}

struct secret_ref {
	unsigned char *p;
	size_t len;
};

static void
wipe_secret(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	OPENSSL_secure_clear_free(arg, len);
}

void
svc_reply_secret(struct svc_request *r, int status, const char *content_type, unsigned char *body, size_t len)
{
	if (r->replied) {
		OPENSSL_secure_clear_free(body, len);
		return;
	}
	/* By reference: libevent never copies the bytes into memory nobody wipes. */
	if (evbuffer_add_reference(evhttp_request_get_output_buffer(r->ev), body, len, wipe_secret, body) != 0) {
		OPENSSL_secure_clear_free(body, len);
		svc_reply_error(r, 503, "out of memory");
		return;
	}
	send_prepared(r, status, content_type);
}

json_t *
svc_json_text(const char *s)
{
	json_t *j;
	char *copy;
	size_t i;

	if (s == NULL)
		s = "";
	if ((j = json_string(s)) != NULL)
		return j;
	if ((copy = strdup(s)) == NULL)
		return NULL;
	for (i = 0; copy[i]; i++)
		if ((unsigned char)copy[i] >= 0x80)
			copy[i] = '?';
	j = json_string(copy);
	free(copy);
	return j;
}

/* The library error an error reply without one names (the CLI maps it back to an exit code, as for 4xx). */
static enum esc_err
error_for_status(int status)
{
	switch (status) {
	case 401:
	case 429:
		return ESC_ERR_AUTH;
	case 403:
		return ESC_ERR_DENIED;
	case 404:
		return ESC_ERR_NOT_FOUND;
	case 409:
		return ESC_ERR_STATE;
	case 503:
		return ESC_ERR_DB_CONNECT;
	default:
		return status >= 500 ? ESC_ERR_INTERNAL : ESC_ERR_USAGE;
	}
}

void
svc_reply_error(struct svc_request *r, int status, const char *reason)
{
	svc_reply_error_code(r, status, reason, error_for_status(status));
}

void
svc_reply_error_code(struct svc_request *r, int status, const char *reason, enum esc_err e)
{
	char line[600], *text = NULL;
	json_t *o;
	int n;

	if (!r->replied)
		svc_metrics_error(r->w->mslot, e);
	/* A challenge unless the handler set one, or chose none for the web console (api.c). */
	if (status == 401 && evhttp_find_header(evhttp_request_get_output_headers(r->ev), "WWW-Authenticate") == NULL &&
	    (svc_header(r, "X-Requested-With") == NULL ||
	     strcmp(svc_header(r, "X-Requested-With"), "p11escrow-console") != 0))
		svc_add_header(r, "WWW-Authenticate", "Basic realm=\"p11escrow\", charset=\"UTF-8\"");
	if (!r->api) {
		n = snprintf(line, sizeof(line), "%s\n", reason);
		if (n < 0 || (size_t)n >= sizeof(line))
			n = (int)sizeof(line) - 1;
		svc_reply(r, status, "text/plain; charset=utf-8", line, (size_t)n);
		return;
	}
	if ((o = json_object()) != NULL && json_object_set_new(o, "error", svc_json_text(reason)) == 0 &&
	    json_object_set_new(o, "code", json_string(esc_strerror(e))) == 0)
		text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (text == NULL) {
		static const char oom[] = "{\"error\":\"internal error: cannot build the response\"}";

		svc_log(r->w, ESC_LOG_ERROR, "req=%s cannot build a JSON response", r->id);
		svc_reply(r, 500, "application/json", oom, sizeof(oom) - 1);
		return;
	}
	svc_reply(r, status, "application/json", text, strlen(text));
	free(text);
}

int
svc_http_status(enum esc_err e)
{
	switch (e) {
	case ESC_OK:
		return 200;
	case ESC_ERR_USAGE:
	case ESC_ERR_BAD_INPUT:
	case ESC_ERR_MISMATCH:
	case ESC_ERR_TAMPERED:
	case ESC_ERR_NOT_RECIPIENT:
		return 400;
	case ESC_ERR_AUTH:
		return 401;
	case ESC_ERR_DENIED:
	case ESC_ERR_POLICY:
	case ESC_ERR_PASSWORD_CHANGE:
		return 403;
	case ESC_ERR_NOT_FOUND:
		return 404;
	case ESC_ERR_EXISTS:
	case ESC_ERR_ARCHIVED:
	case ESC_ERR_STATE:
		return 409;
	case ESC_ERR_NOMEM:
	case ESC_ERR_DB_CONNECT:
	case ESC_ERR_BUSY:
	case ESC_ERR_SCHEMA_OLD:
	case ESC_ERR_SCHEMA_NEWER:
	case ESC_ERR_PKCS11:
	case ESC_ERR_TOKEN_NOT_FOUND:
	case ESC_ERR_MODULE:
	case ESC_ERR_PIN_INCORRECT:
	case ESC_ERR_PIN_LOCKED:
	case ESC_ERR_PIN_MISSING:
	case ESC_ERR_KEY_NOT_FOUND:
		return 503;
	default:
		return 500;
	}
}

void
svc_reply_esc(struct svc_request *r, enum esc_err e)
{
	int status = svc_http_status(e);
	const char *msg = esc_ctx_errmsg(r->w->ctx);

	if (status >= 500) {
		/* The detail is for the operator's log, not for the client. */
		svc_log(r->w, ESC_LOG_ERROR, "req=%s failed: %s", r->id, msg);
		svc_worker_forget(r->w, e);
		if (status == 503)
			svc_add_header(r, "Retry-After", "5");
		svc_reply_error_code(r, status,
				     status == 503
					     ? "service temporarily unavailable (database or HSM); try again later"
					     : "internal error; the operator's log has the details",
				     e);
		return;
	}
	svc_log(r->w, ESC_LOG_INFO, "req=%s refused: %s", r->id, msg);
	svc_reply_error_code(r, status, *msg ? msg : esc_strerror(e), e);
}

int
svc_basic_auth(struct svc_request *r, char *user, size_t userlen, struct esc_secret **password)
{
	const char *h = svc_header(r, "Authorization"), *b64;
	unsigned char *dec = NULL;
	const unsigned char *colon;
	size_t n, declen;
	int len, rc = -1;

	*password = NULL;
	if (h == NULL)
		return 0;
	if (strncasecmp(h, "Basic ", 6) != 0)
		return -1;
	for (b64 = h + 6; *b64 == ' '; b64++)
		;
	n = strlen(b64);
	while (n > 0 && b64[n - 1] == ' ')
		n--;
	if (n == 0 || n % 4 != 0 || n > 1024 || (dec = OPENSSL_secure_malloc(n / 4 * 3 + 1)) == NULL)
		goto out;
	if ((len = EVP_DecodeBlock(dec, (const unsigned char *)b64, (int)n)) < 0)
		goto out;
	declen = (size_t)len;
	if (b64[n - 1] == '=')
		declen--;
	if (b64[n - 2] == '=')
		declen--;
	if ((colon = memchr(dec, ':', declen)) == NULL || (size_t)(colon - dec) >= userlen || colon == dec ||
	    memchr(dec, '\0', declen) != NULL)
		goto out;
	memcpy(user, dec, (size_t)(colon - dec));
	user[colon - dec] = '\0';
	if (esc_secret_new(r->w->ctx, colon + 1, declen - (size_t)(colon - dec) - 1, password) != ESC_OK)
		goto out;
	rc = 1;
out:
	if (dec != NULL)
		OPENSSL_secure_clear_free(dec, n / 4 * 3 + 1);
	return rc;
}

long long
svc_crl_number(X509_CRL *crl)
{
	ASN1_INTEGER *n = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
	int64_t v = 0;

	if (n == NULL || !ASN1_INTEGER_get_int64(&v, n))
		v = 0;
	ASN1_INTEGER_free(n);
	ERR_clear_error();
	return (long long)v;
}

/*
 * GET /crl: the service's current CRL (DER, application/pkix-crl): one for
 * every worker of every p11escrowd on this database (revoke.h), so the
 * number a client sees never goes down.  Each request asks the database
 * for the current number (one indexed query) and serves this worker's copy
 * while it is that one.  When a new CRL is due (a revocation since, or
 * crl_refresh of its validity passed) the keeper makes it, or hands over
 * the one another keeper just made: an anonymous client cannot make the
 * token sign at will.  If the keeper cannot, the stored CRL is served
 * (still valid until its nextUpdate) and the failure logged.
 */
static void
serve_crl(struct svc_request *r)
{
	struct svc_worker *w = r->w;
	X509_CRL *crl = NULL;
	unsigned char *der = NULL, *p;
	size_t len = 0;
	long long number = 0;
	int due = 1, n;
	enum esc_err e;

	if (r->method != EVHTTP_REQ_GET) {
		svc_add_header(r, "Allow", "GET");
		svc_reply_error(r, 405, "method not allowed");
		return;
	}
	if (svc_worker_ready(w, r) != 0)
		return;
	e = esc_crl_current(w->ctx, w->st, w->crl != NULL ? w->crl_number : 0, &der, &len, &number, &due);
	if (e != ESC_OK && e != ESC_ERR_NOT_FOUND) {
		svc_worker_forget(w, e);
		svc_reply_esc(r, e);
		return;
	}
	if (e == ESC_ERR_NOT_FOUND || due) {
		if ((e = esc_keeper_sign_crl(w->ctx, w->keeper, w->st, NULL, 0, &crl)) != ESC_OK) {
			svc_worker_forget(w, e);
			if (number == 0) { /* nothing stored to fall back on */
				svc_reply_esc(r, e);
				return;
			}
			svc_log(w, ESC_LOG_WARN, "req=%s serving CRL %lld although a new one is due: %s", r->id, number,
				esc_ctx_errmsg(w->ctx));
		} else {
			free(der);
			der = NULL;
			if ((n = i2d_X509_CRL(crl, NULL)) <= 0 || (der = malloc((size_t)n)) == NULL) {
				X509_CRL_free(crl);
				svc_reply_error(r, 500, "cannot encode the CRL");
				return;
			}
			p = der;
			i2d_X509_CRL(crl, &p);
			len = (size_t)n;
			number = svc_crl_number(crl);
			X509_CRL_free(crl);
		}
	}
	if (der != NULL) {
		free(w->crl);
		w->crl = der;
		w->crl_len = len;
		w->crl_number = number;
	}
	svc_reply(r, 200, "application/pkix-crl", w->crl, w->crl_len);
}

/*
 * GET /ca.crt: the CA certificate alone, DER (application/pkix-cert), what
 * an authority information access caIssuers URL (ca_issuer_url) may point
 * to (RFC 5280 §4.2.2.1); EST's /cacerts is base64 PKCS#7 instead.
 */
static void
serve_ca_cert(struct svc_request *r)
{
	unsigned char *der = NULL;
	int n;

	if (r->method != EVHTTP_REQ_GET) {
		svc_add_header(r, "Allow", "GET");
		svc_reply_error(r, 405, "method not allowed");
		return;
	}
	if (svc_worker_ready(r->w, r) != 0)
		return;
	if ((n = i2d_X509(esc_keeper_ca_cert(r->w->keeper), &der)) <= 0) {
		svc_reply_error(r, 500, "cannot encode the CA certificate");
		return;
	}
	svc_reply(r, 200, "application/pkix-cert", der, (size_t)n);
	OPENSSL_free(der);
}

void
svc_http_dispatch(struct svc_request *r)
{
	const char *p = r->path;

	if (method_name(r->method) == NULL) {
		/*
		 * A method libevent cannot name (it let it through, p11escrowd.c):
		 * 501 as HTTP has it.  libevent reads no body for such a method,
		 * so one sent anyway would be taken for the next request: close.
		 */
		svc_add_header(r, "Connection", "close");
		svc_reply_error(r, 501, "method not implemented");
	} else if (r->w->require_cert && r->client_cert == NULL && strcmp(p, "/healthz") != 0 &&
		   strcmp(p, "/readyz") != 0 && strcmp(p, "/metrics") != 0) {
		/* Monitoring excepted: /healthz and /readyz need no credential, /metrics checks its own. */
		svc_reply_error(r, 403, "this service requires a TLS client certificate issued by its CA");
	} else if (strncmp(p, EST_PREFIX, sizeof(EST_PREFIX) - 1) == 0) {
		char label[64];
		const char *rest = p + sizeof(EST_PREFIX) - 1, *slash = strchr(rest, '/');

		if (slash == NULL) {
			svc_est_handle(r, NULL, rest);
		} else if ((size_t)(slash - rest) < sizeof(label) && slash > rest && strchr(slash + 1, '/') == NULL) {
			memcpy(label, rest, (size_t)(slash - rest));
			label[slash - rest] = '\0';
			svc_est_handle(r, label, slash + 1);
		} else {
			svc_reply_error(r, 404, "no such EST resource");
		}
	} else if (r->api) {
		svc_api_handle(r, p + sizeof(API_PREFIX) - 1);
	} else if (strncmp(p, "/console", 8) == 0 && (p[8] == '\0' || p[8] == '/')) {
		svc_console_handle(r, p + 8);
	} else if (strcmp(p, "/crl") == 0) {
		serve_crl(r);
	} else if (strcmp(p, "/ca.crt") == 0) {
		serve_ca_cert(r);
	} else if (strcmp(p, "/healthz") == 0) {
		/* Liveness only: this worker's loop answers.  What it depends on is /readyz's. */
		if (r->method != EVHTTP_REQ_GET) {
			svc_add_header(r, "Allow", "GET");
			svc_reply_error(r, 405, "method not allowed");
		} else {
			svc_reply(r, 200, "text/plain; charset=utf-8", "ok\n", 3);
		}
	} else if (strcmp(p, "/readyz") == 0) {
		svc_serve_readyz(r);
	} else if (strcmp(p, "/metrics") == 0) {
		svc_serve_metrics(r);
	} else {
		svc_reply_error(r, 404, "no such resource");
	}
	if (!r->replied)
		svc_reply_error(r, 500, "internal error: no reply");
}
