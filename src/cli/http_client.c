/*
 * A synchronous HTTPS client for the service's JSON API: one TLS
 * connection per request (evhttp_connection over bufferevent_openssl), the
 * event base run until the request completes or its deadline passes.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <fcntl.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <p11escrow/err.h>
#include <p11escrow/pin.h>

#include "cli.h"
#include "esc_build_config.h"
#include "http_client.h"

#define HEADERS_MAX (64 * 1024)
#define CLIENT_KEY_MAX (64 * 1024) /* a PEM private key file */

struct cli_http {
	const char *cmd;
	struct esc_ctx *ctx;
	struct event_base *base;
	SSL_CTX *tls;
	char *url;	/* as given, for messages */
	char *host;	/* without brackets: what is connected to and checked in the certificate */
	char *host_hdr; /* the Host header */
	char *prefix;	/* the URL's path before /api/v1, no trailing '/' */
	int port;
	int host_is_ip;
	char *auth; /* "Basic ..." in secure memory, until a session replaces it */
	size_t authlen;
	char *bearer; /* "Bearer TOKEN" in secure memory once logged in (POST /session) */
	size_t bearerlen;
	int login_tried; /* POST /session was sent (once per client, i.e. per command) */
	int quiet;	 /* cli_http_call_quiet: keep the reason instead of printing it */
	int last_status; /* the HTTP status of the last failed call, 0 if none came */
	enum esc_err last_err;
	char last_msg[512];
	int by_cert;	  /* a TLS client certificate logs the account in: no password */
	char account[65]; /* the account: --user, or the client certificate's (GET /whoami) */
};

/* One request in flight. */
struct exchange {
	struct cli_http *h;
	struct evhttp_request *req;
	SSL *ssl;
	int done;
	int timed_out;
	int status; /* 0: no answer */
	int error;  /* an evhttp_request_error + 1, 0 if none */
	unsigned char *body;
	size_t bodylen;
	char ctype[128];
};

static int fail(struct cli_http *h, enum esc_err e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Print "p11escrow CMD: error: ..." (quiet: keep it) and return e's exit code. */
static int
fail(struct cli_http *h, enum esc_err e, const char *fmt, ...)
{
	va_list ap;

	h->last_err = e;
	if (h->quiet) {
		va_start(ap, fmt);
		vsnprintf(h->last_msg, sizeof(h->last_msg), fmt, ap);
		va_end(ap);
		return esc_err_exit_code(e);
	}
	fprintf(stderr, "%s %s: error: ", PROG, h->cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return esc_err_exit_code(e);
}

static int call(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out,
		int *status);

void
cli_http_free(struct cli_http *h)
{
	json_t *doc = NULL;
	int status = 0;

	if (h == NULL)
		return;
	/* Log out: the token ends now rather than at its idle timeout.  A failure is printed, nothing more. */
	if (h->bearer != NULL && h->base != NULL && call(h, CLI_HTTP_DELETE, "/session", NULL, &doc, &status) == 0)
		json_decref(doc);
	if (h->bearer != NULL)
		OPENSSL_secure_clear_free(h->bearer, h->bearerlen);
	if (h->auth != NULL)
		OPENSSL_secure_clear_free(h->auth, h->authlen);
	SSL_CTX_free(h->tls);
	if (h->base != NULL)
		event_base_free(h->base);
	free(h->url);
	free(h->host);
	free(h->host_hdr);
	free(h->prefix);
	free(h);
}

/* "Basic base64(user:password)", built and kept in secure memory. */
static int
make_auth(struct cli_http *h, const char *user, const struct esc_secret *pw)
{
	size_t ulen = strlen(user), plen = esc_secret_len(pw), rawlen = ulen + 1 + plen, b64len;
	unsigned char *raw = NULL;
	int rc = -1;

	b64len = (rawlen + 2) / 3 * 4;
	if ((raw = OPENSSL_secure_malloc(rawlen)) == NULL || (h->auth = OPENSSL_secure_zalloc(6 + b64len + 1)) == NULL)
		goto out;
	h->authlen = 6 + b64len + 1;
	/* raw is the base64 input, rawlen bytes: "user:" and the password, no NUL. */
	memcpy(raw, user, ulen); // NOLINT(bugprone-not-null-terminated-result): not a C string
	raw[ulen] = ':';
	memcpy(raw + ulen + 1, esc_secret_str(pw), plen);
	memcpy(h->auth, "Basic ", 6);
	EVP_EncodeBlock((unsigned char *)h->auth + 6, raw, (int)rawlen);
	rc = 0;
out:
	if (raw != NULL)
		OPENSSL_secure_clear_free(raw, rawlen);
	return rc;
}

/* No passphrase prompt: an encrypted key is refused (the callback gives none). */
static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf, (void)size, (void)rwflag, (void)u;
	return -1;
}

/*
 * The client certificate (and chain) of cert_file and the private key of
 * key_file for h->tls.  The key file must be a regular file only its owner
 * may read or write, like a PIN file; it is read into secure memory and
 * wiped there.
 */
static int
use_client_cert(struct cli_http *h, const char *cert_file, const char *key_file)
{
	unsigned char *buf = NULL;
	EVP_PKEY *pkey = NULL;
	struct stat sb;
	BIO *b = NULL;
	size_t len = 0;
	ssize_t got;
	int fd, rc;

	if ((fd = open(key_file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		rc = fail(h, ESC_ERR_IO, "cannot open the client key '%s'", key_file);
		goto out;
	}
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > CLIENT_KEY_MAX) {
		rc = fail(h, ESC_ERR_IO, "the client key '%s' is not a regular file of at most %d bytes", key_file,
			  CLIENT_KEY_MAX);
		goto out;
	}
	if ((sb.st_mode & 077) != 0 || sb.st_uid != geteuid()) {
		rc = cli_usage_error(h->cmd,
				     "the client key '%s' must be yours and not accessible by other users "
				     "(chmod 600)",
				     key_file);
		goto out;
	}
	if ((buf = OPENSSL_secure_malloc((size_t)sb.st_size + 1)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	while (len < (size_t)sb.st_size && (got = read(fd, buf + len, (size_t)sb.st_size - len)) > 0)
		len += (size_t)got;
	if ((b = BIO_new_mem_buf(buf, (int)len)) == NULL ||
	    (pkey = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL)) == NULL) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_BAD_INPUT, "'%s' holds no unencrypted PEM private key", key_file);
		goto out;
	}
	if (SSL_CTX_use_certificate_chain_file(h->tls, cert_file) != 1) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_IO, "cannot read the client certificate(s) from '%s'", cert_file);
		goto out;
	}
	if (SSL_CTX_use_PrivateKey(h->tls, pkey) != 1 || SSL_CTX_check_private_key(h->tls) != 1) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_USAGE, "the client key '%s' does not belong to the certificate '%s'", key_file,
			  cert_file);
		goto out;
	}
	h->by_cert = 1;
	rc = 0;
out:
	EVP_PKEY_free(pkey);
	BIO_free(b);
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, (size_t)sb.st_size + 1);
	if (fd != -1)
		close(fd);
	return rc;
}

int
cli_http_open(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file, const char *user,
	      const char *password_file, struct cli_http **out)
{
	return cli_http_open_cert(cmd, ctx, url, ca_file, user, password_file, NULL, NULL, out);
}

const char *
cli_http_account(const struct cli_http *h)
{
	return h->account[0] != '\0' ? h->account : "?";
}

int
cli_http_open_cert(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file, const char *user,
		   const char *password_file, const char *client_cert, const char *client_key, struct cli_http **out)
{
	struct cli_http *h = NULL;
	struct evhttp_uri *u = NULL;
	struct esc_secret *pw = NULL;
	const char *scheme, *host, *path;
	unsigned char addr[16];
	size_t n;
	int rc;

	if ((h = calloc(1, sizeof(*h))) == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, cmd);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	h->cmd = cmd;
	h->ctx = ctx;
	if (ca_file == NULL || *ca_file == '\0')
		ca_file = getenv("P11ESCROW_SERVER_CA");
	if (ca_file == NULL || *ca_file == '\0') {
		rc = cli_usage_error(cmd, "--server needs the CA certificate to verify the service with: "
					  "--server-ca FILE or $P11ESCROW_SERVER_CA");
		goto out;
	}
	if (strlen(url) > 2048 || (u = evhttp_uri_parse(url)) == NULL || (scheme = evhttp_uri_get_scheme(u)) == NULL ||
	    strcasecmp(scheme, "https") != 0 || (host = evhttp_uri_get_host(u)) == NULL || *host == '\0' ||
	    evhttp_uri_get_userinfo(u) != NULL || evhttp_uri_get_query(u) != NULL ||
	    evhttp_uri_get_fragment(u) != NULL) {
		rc = cli_usage_error(cmd, "--server wants https://HOST[:PORT][/PATH], without credentials, query or "
					  "fragment");
		goto out;
	}
	h->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 443;
	n = strlen(host);
	if (host[0] == '[' && n > 2 && host[n - 1] == ']')
		h->host = strndup(host + 1, n - 2);
	else
		h->host = strdup(host);
	path = evhttp_uri_get_path(u) != NULL ? evhttp_uri_get_path(u) : "";
	h->prefix = strdup(path);
	h->url = strdup(url);
	if (h->host == NULL || h->prefix == NULL || h->url == NULL ||
	    (h->host_hdr = malloc(strlen(host) + 8)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* The Host header keeps the brackets of an IPv6 address. */
	snprintf(h->host_hdr, strlen(host) + 8, "%s:%d", host, h->port);
	for (n = strlen(h->prefix); n > 0 && h->prefix[n - 1] == '/'; n--)
		h->prefix[n - 1] = '\0';
	h->host_is_ip = inet_pton(AF_INET, h->host, addr) == 1 || inet_pton(AF_INET6, h->host, addr) == 1;

	if ((h->tls = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(h->tls, TLS1_2_VERSION) != 1) {
		rc = fail(h, ESC_ERR_CRYPTO, "cannot set up TLS");
		goto out;
	}
	SSL_CTX_set_verify(h->tls, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_load_verify_locations(h->tls, ca_file, NULL) != 1) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_IO, "cannot read the service's CA certificate(s) from '%s'", ca_file);
		goto out;
	}
	if ((h->base = event_base_new()) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "cannot create an event base");
		goto out;
	}
	if (client_cert == NULL || *client_cert == '\0')
		client_cert = getenv("P11ESCROW_CLIENT_CERT");
	if (client_key == NULL || *client_key == '\0')
		client_key = getenv("P11ESCROW_CLIENT_KEY");
	if (client_cert != NULL && *client_cert == '\0')
		client_cert = NULL;
	if (client_key != NULL && *client_key == '\0')
		client_key = NULL;
	if ((client_cert == NULL) != (client_key == NULL)) {
		rc = cli_usage_error(cmd, "--client-cert FILE and --client-key FILE go together");
		goto out;
	}
	if (user != NULL)
		snprintf(h->account, sizeof(h->account), "%s", user);
	if (client_cert != NULL) {
		/* The certificate logs the account in: no password is asked for, held or sent. */
		if (password_file != NULL) {
			rc = cli_usage_error(cmd, "--password-file is not used with --client-cert");
			goto out;
		}
		if ((rc = use_client_cert(h, client_cert, client_key)) != 0)
			goto out;
		*out = h;
		h = NULL; /* transferred */
		goto out;
	}
	if (user == NULL) {
		rc = cli_usage_error(cmd, "--user NAME is required: this action needs an authenticated account (or "
					  "--client-cert FILE and --client-key FILE)");
		goto out;
	}
	if ((rc = cli_password(cmd, ctx, user, password_file, &pw)) != 0)
		goto out;
	if (strchr(user, ':') != NULL) {
		rc = cli_usage_error(cmd, "an account name cannot contain ':'");
		goto out;
	}
	if (make_auth(h, user, pw) != 0) {
		rc = fail(h, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	*out = h;
	h = NULL; /* transferred */
	rc = 0;
out:
	esc_secret_free(pw);
	if (u != NULL)
		evhttp_uri_free(u);
	cli_http_free(h);
	return rc;
}

/* Wipe the credentials libevent copied into the request's headers (as far as it still holds them). */
static void
wipe_auth_header(struct evhttp_request *req)
{
	struct evkeyvalq *hdrs = req != NULL ? evhttp_request_get_output_headers(req) : NULL;
	struct evkeyval *kv;

	if (hdrs == NULL)
		return;
	for (kv = hdrs->tqh_first; kv != NULL; kv = kv->next.tqe_next)
		if (strcasecmp(kv->key, "Authorization") == 0)
			OPENSSL_cleanse(kv->value, strlen(kv->value));
}

/* A body may hold a secret (a password, a private key file): libevent reads it from our buffer and wipes nothing. */
static void
wipe_ref(const void *data, size_t len, void *arg)
{
	(void)arg;
	OPENSSL_cleanse((void *)data, len);
}

static void
on_error(enum evhttp_request_error err, void *arg)
{
	struct exchange *x = arg;

	x->error = (int)err + 1;
}

static void
on_done(struct evhttp_request *req, void *arg)
{
	struct exchange *x = arg;
	struct evbuffer *in;
	const char *ct;
	size_t len;

	x->done = 1;
	x->req = NULL; /* libevent frees it */
	if (req == NULL || (x->status = evhttp_request_get_response_code(req)) == 0) {
		event_base_loopbreak(x->h->base);
		return;
	}
	wipe_auth_header(req);
	if ((ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type")) != NULL)
		snprintf(x->ctype, sizeof(x->ctype), "%s", ct);
	in = evhttp_request_get_input_buffer(req);
	len = evbuffer_get_length(in);
	if (len > CLI_HTTP_RESPONSE_MAX) {
		x->error = (int)EVREQ_HTTP_DATA_TOO_LONG + 1;
	} else if ((x->body = malloc(len + 1)) != NULL) {
		evbuffer_remove(in, x->body, len);
		x->body[len] = '\0';
		x->bodylen = len;
	}
	event_base_loopbreak(x->h->base);
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct exchange *x = arg;

	x->timed_out = 1;
	event_base_loopbreak(x->h->base);
}

/* Text from the server, safe for a terminal: at most max bytes, one line, control characters as '?'. */
static void
printable(char *dst, size_t len, const char *src, size_t max)
{
	size_t i;

	for (i = 0; i + 1 < len && i < max && src[i] != '\0' && src[i] != '\n'; i++)
		dst[i] = ((unsigned char)src[i] < 0x20 || src[i] == 0x7f) ? '?' : src[i];
	dst[i] = '\0';
}

enum esc_err
cli_http_error_named(const char *code)
{
	enum esc_err e;
	int i;

	/* esc_strerror's names are stable: map the server's back to the code, hence the exit status. */
	if (code != NULL)
		for (i = -1; i >= -99; i--) {
			e = (enum esc_err)i;
			if (strcmp(esc_strerror(e), "unknown error") != 0 && strcmp(esc_strerror(e), code) == 0)
				return e;
		}
	return ESC_OK;
}

/* The library error the server named ("code"), else the closest one for the status. */
static enum esc_err
error_for(int status, const char *code)
{
	enum esc_err e = cli_http_error_named(code);

	if (e != ESC_OK)
		return e;
	switch (status) {
	case 400:
	case 405:
	case 413:
	case 415:
		return ESC_ERR_USAGE;
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
		return ESC_ERR_INTERNAL;
	}
}

/* Why a request got no answer. */
static int
no_answer(struct cli_http *h, struct exchange *x, struct bufferevent *bev)
{
	unsigned long ossl = bev != NULL ? bufferevent_get_openssl_error(bev) : 0;
	long vr = x->ssl != NULL ? SSL_get_verify_result(x->ssl) : X509_V_OK;
	char why[256];

	if (x->timed_out || x->error == (int)EVREQ_HTTP_TIMEOUT + 1)
		return fail(h, ESC_ERR_IO, "%s did not answer in time", h->url);
	if (vr != X509_V_OK)
		return fail(h, ESC_ERR_AUTH,
			    "the service at %s is not trusted: %s (checked against the --server-ca "
			    "certificates and the name '%s')",
			    h->url, X509_verify_cert_error_string(vr), h->host);
	if (x->error == (int)EVREQ_HTTP_DATA_TOO_LONG + 1)
		return fail(h, ESC_ERR_BAD_INPUT, "the answer of %s is larger than %d bytes", h->url,
			    CLI_HTTP_RESPONSE_MAX);
	/* libevent also queues socket errors here, with no OpenSSL library: those are no TLS failure. */
	if (ossl != 0 && ERR_GET_LIB(ossl) != 0) {
		ERR_error_string_n(ossl, why, sizeof(why));
		return fail(h, ESC_ERR_IO, "TLS with %s failed: %s", h->url, why);
	}
	return fail(h, ESC_ERR_IO, "no answer from %s (connection refused, reset or closed)", h->url);
}

int
cli_http_query(char *buf, size_t len, const char *key, const char *value)
{
	size_t used = strlen(buf);
	char *enc;
	int n;

	if (value == NULL)
		return 0;
	if ((enc = evhttp_uriencode(value, -1, 0)) == NULL)
		return -1;
	n = snprintf(buf + used, len - used, "%c%s=%s", strchr(buf, '?') ? '&' : '?', key, enc);
	free(enc);
	if (n < 0 || (size_t)n >= len - used) {
		buf[used] = '\0';
		return -1;
	}
	return 0;
}

/*
 * One exchange, authenticated with the session's token once there is one,
 * else with Basic.  *status: the HTTP status answered (0 if none).  A 404
 * to POST /session (a service without sessions) is not printed.
 */
static int
call(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out, int *status)
{
	struct exchange x;
	struct bufferevent *bev = NULL;
	struct evhttp_connection *evcon = NULL;
	struct evkeyvalq *hdrs;
	struct event *deadline = NULL;
	struct timeval io = {CLI_HTTP_TIMEOUT, 0}, all = {CLI_HTTP_DEADLINE, 0};
	char *text = NULL, *uri = NULL, msg[512];
	json_t *doc = NULL, *jerr;
	json_error_t perr;
	size_t urilen;
	int rc;

	memset(&x, 0, sizeof(x));
	x.h = h;
	h->last_status = 0;
	h->last_err = ESC_OK;
	h->last_msg[0] = '\0';
	urilen = strlen(h->prefix) + strlen("/api/v1") + strlen(path) + 1;
	if ((uri = malloc(urilen)) == NULL || (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL)) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	snprintf(uri, urilen, "%s/api/v1%s", h->prefix, path);
	if ((x.ssl = SSL_new(h->tls)) == NULL) {
		rc = fail(h, ESC_ERR_CRYPTO, "cannot set up TLS");
		goto out;
	}
	/* The certificate must name the host we asked for: its DNS name or its IP address. */
	if (h->host_is_ip) {
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(x.ssl), h->host) != 1) {
			SSL_free(x.ssl);
			x.ssl = NULL;
			rc = fail(h, ESC_ERR_USAGE, "'%s' is not an IP address", h->host);
			goto out;
		}
	} else {
		SSL_set_hostflags(x.ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (SSL_set1_host(x.ssl, h->host) != 1 || SSL_set_tlsext_host_name(x.ssl, h->host) != 1) {
			SSL_free(x.ssl);
			x.ssl = NULL;
			rc = fail(h, ESC_ERR_CRYPTO, "cannot set the expected server name '%s'", h->host);
			goto out;
		}
	}
	/* bev owns ssl from here, evcon owns bev. */
	if ((bev = bufferevent_openssl_socket_new(h->base, -1, x.ssl, BUFFEREVENT_SSL_CONNECTING,
						  BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)) == NULL) {
		SSL_free(x.ssl);
		x.ssl = NULL;
		rc = fail(h, ESC_ERR_NOMEM, "cannot create a TLS connection");
		goto out;
	}
	/* The answer ends with the connection (Connection: close); a missing close_notify is no truncation here. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	if ((evcon = evhttp_connection_base_bufferevent_new(h->base, NULL, bev, h->host, (unsigned short)h->port)) ==
	    NULL) {
		bufferevent_free(bev);
		rc = fail(h, ESC_ERR_NOMEM, "cannot create an HTTP connection");
		goto out;
	}
	evhttp_connection_set_timeout_tv(evcon, &io);
	evhttp_connection_set_retries(evcon, 0);
	evhttp_connection_set_max_body_size(evcon, CLI_HTTP_RESPONSE_MAX);
	evhttp_connection_set_max_headers_size(evcon, HEADERS_MAX);
	if ((x.req = evhttp_request_new(on_done, &x)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	evhttp_request_set_error_cb(x.req, on_error);
	hdrs = evhttp_request_get_output_headers(x.req);
	evhttp_add_header(hdrs, "Host", h->host_hdr);
	evhttp_add_header(hdrs, "User-Agent", "p11escrow/" ESC_VERSION);
	evhttp_add_header(hdrs, "Accept", "application/json");
	evhttp_add_header(hdrs, "Connection", "close");
	/* A client certificate's login sends no Authorization header until it has a session. */
	if (h->bearer != NULL || h->auth != NULL)
		evhttp_add_header(hdrs, "Authorization", h->bearer != NULL ? h->bearer : h->auth);
	if (text != NULL) {
		evhttp_add_header(hdrs, "Content-Type", "application/json");
		/* Referenced, not copied: the one copy is wiped when libevent lets go of it and again below. */
		if (evbuffer_add_reference(evhttp_request_get_output_buffer(x.req), text, strlen(text), wipe_ref,
					   NULL) != 0) {
			evhttp_request_free(x.req);
			x.req = NULL;
			rc = fail(h, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
	}
	if ((deadline = evtimer_new(h->base, on_deadline, &x)) == NULL || evtimer_add(deadline, &all) != 0) {
		evhttp_request_free(x.req);
		x.req = NULL;
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (evhttp_make_request(evcon, x.req,
				method == CLI_HTTP_POST	    ? EVHTTP_REQ_POST
				: method == CLI_HTTP_DELETE ? EVHTTP_REQ_DELETE
							    : EVHTTP_REQ_GET,
				uri) != 0) {
		x.req = NULL; /* freed by evhttp_make_request on failure */
		rc = no_answer(h, &x, bev);
		goto out;
	}
	while (!x.done && !x.timed_out)
		if (event_base_loop(h->base, EVLOOP_ONCE) != 0)
			break;
	if (!x.done) {
		/* Still pending: wipe what we can; freeing the connection frees the request. */
		wipe_auth_header(x.req);
		x.req = NULL;
	}
	if (x.status == 0) {
		rc = no_answer(h, &x, bev);
		goto out;
	}
	if (x.error != 0 || x.body == NULL) {
		rc = no_answer(h, &x, bev);
		goto out;
	}
	*status = x.status;
	if (x.bodylen > 0)
		doc = json_loadb((const char *)x.body, x.bodylen, JSON_REJECT_DUPLICATES, &perr);
	if (x.status == 404 && method == CLI_HTTP_POST && strcmp(path, "/session") == 0) {
		rc = esc_err_exit_code(ESC_ERR_NOT_FOUND);
		goto out;
	}
	if (x.status >= 200 && x.status < 300) {
		if (doc == NULL || !json_is_object(doc)) {
			rc = fail(h, ESC_ERR_BAD_INPUT, "the answer of %s is not a JSON object (HTTP %d)", h->url,
				  x.status);
			goto out;
		}
		*out = doc;
		doc = NULL; /* transferred */
		rc = 0;
		goto out;
	}
	/* An error: the server's reason, from {"error": ...} or a plain-text line. */
	h->last_status = x.status;
	if (doc != NULL && json_is_object(doc) && json_is_string(jerr = json_object_get(doc, "error"))) {
		const json_t *code = json_object_get(doc, "code");

		printable(msg, sizeof(msg), json_string_value(jerr), 400);
		rc = fail(h, error_for(x.status, json_is_string(code) ? json_string_value(code) : NULL), "%s", msg);
	} else {
		printable(msg, sizeof(msg), x.bodylen > 0 ? (const char *)x.body : "", 400);
		rc = fail(h, error_for(x.status, NULL), "%s answered HTTP %d%s%s", h->url, x.status, *msg ? ": " : "",
			  msg);
	}
out:
	if (deadline != NULL)
		event_free(deadline);
	if (evcon != NULL)
		evhttp_connection_free(evcon); /* frees bev and ssl */
	if (x.body != NULL) {
		OPENSSL_cleanse(x.body, x.bodylen); /* a package is ciphertext, but no need to leave it around */
		free(x.body);
	}
	json_decref(doc);
	if (text != NULL) {
		OPENSSL_cleanse(text, strlen(text));
		free(text);
	}
	free(uri);
	return rc;
}

/*
 * Log in once: POST /session with the password (Basic); every later call
 * of this client sends the token instead, and the password is wiped.  A
 * service that has no sessions (404) keeps getting Basic.
 */
static int
login(struct cli_http *h)
{
	json_t *doc = NULL, *tok;
	size_t n;
	int rc, status = 0;

	h->login_tried = 1;
	if ((rc = call(h, CLI_HTTP_POST, "/session", NULL, &doc, &status)) != 0)
		return status == 404 ? 0 : rc;
	tok = json_object_get(doc, "token");
	n = json_is_string(tok) ? json_string_length(tok) : 0;
	if (n < 16 || n > 256 ||
	    strspn(json_string_value(tok), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
					   "0123456789-_") != n) {
		rc = fail(h, ESC_ERR_BAD_INPUT, "the answer of %s to the login holds no usable session token", h->url);
		goto out;
	}
	h->bearerlen = 7 + n + 1;
	if ((h->bearer = OPENSSL_secure_zalloc(h->bearerlen)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	memcpy(h->bearer, "Bearer ", 7);
	memcpy(h->bearer + 7, json_string_value(tok), n);
	/* The password is needed no more. */
	if (h->auth != NULL)
		OPENSSL_secure_clear_free(h->auth, h->authlen);
	h->auth = NULL;
	h->authlen = 0;
	if (h->by_cert) {
		/* Which account did the certificate log in?  It must be --user's, if that was given. */
		json_t *me = NULL;
		char name[65];

		if ((rc = call(h, CLI_HTTP_GET, "/whoami", NULL, &me, &status)) != 0)
			goto out;
		cli_json_copy(name, sizeof(name), me, "name");
		json_decref(me);
		if (h->account[0] != '\0' && strcmp(name, h->account) != 0) {
			rc = fail(h, ESC_ERR_AUTH, "the client certificate logs in account '%s', not '%s' (--user)",
				  name, h->account);
			goto out;
		}
		snprintf(h->account, sizeof(h->account), "%s", name);
	}
	rc = 0;
out:
	if (json_is_string(tok))
		OPENSSL_cleanse((char *)(uintptr_t)json_string_value(tok), json_string_length(tok));
	json_decref(doc);
	return rc;
}

int
cli_http_call(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out)
{
	int rc, status = 0;

	if (!h->login_tried && (rc = login(h)) != 0)
		return rc;
	return call(h, method, path, body, out, &status);
}

int
cli_http_call_quiet(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out,
		    int *status, enum esc_err *err, char *msg, size_t msglen)
{
	int rc;

	h->quiet = 1;
	rc = cli_http_call(h, method, path, body, out);
	h->quiet = 0;
	*status = h->last_status;
	*err = rc == 0 ? ESC_OK : h->last_err;
	snprintf(msg, msglen, "%s", rc == 0 ? "" : h->last_msg);
	return rc;
}

void
cli_json_copy(char *dst, size_t len, const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	printable(dst, len, json_is_string(v) ? json_string_value(v) : "", len);
}

void
cli_json_copy_value(char *dst, size_t len, const json_t *v)
{
	printable(dst, len, json_is_string(v) ? json_string_value(v) : "", len);
}

long long
cli_json_int(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}
