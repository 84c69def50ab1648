/*
 * A synchronous HTTPS client for the service, on libcurl (OpenSSL backend):
 * one easy handle per client, so the requests of one command share a
 * kept-alive TLS connection.  libcurl verifies the server with the trust
 * store built here from --server-ca (installed into each TLS context by the
 * SSL_CTX callback, so the system's CA certificates never count) and checks
 * the host name; the TLS client certificate and key are loaded here, the
 * key into the secure heap, and handed to OpenSSL the same way.  libcurl's
 * own heap blocks are wiped when freed (main.c's curl_global_init_mem), and
 * it is never made verbose: neither the Authorization header nor a body is
 * ever logged.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/err.h>
#include <p11escrow/pin.h>

#include "cli.h"
#include "esc_build_config.h"
#include "http_client.h"

#define CLIENT_KEY_MAX (64 * 1024) /* a PEM private key file */
#define URL_MAX 2048

struct cli_http {
	const char *cmd;
	struct esc_ctx *ctx;
	CURL *curl;
	X509_STORE *trust; /* the --server-ca certificates: the only ones trusted */
	X509 *client_cert; /* the TLS client certificate, its chain and key (secure heap), if any */
	STACK_OF(X509) *client_chain;
	EVP_PKEY *client_key;
	char *url;   /* as given, for messages */
	char *base;  /* scheme, host and port, and the URL's path without a trailing '/' */
	char *host;  /* for messages */
	char *proxy; /* --proxy, else NULL: libcurl reads https_proxy, no_proxy */
	char *auth;  /* "Authorization: Basic ..." in secure memory, until a session replaces it */
	size_t authlen;
	char *bearer; /* "Authorization: Bearer TOKEN" in secure memory once logged in (POST /session) */
	size_t bearerlen;
	int login_tried; /* POST /session was sent (once per client, i.e. per command) */
	int quiet;	 /* cli_http_call_quiet: keep the reason instead of printing it */
	int last_status; /* the HTTP status of the last failed call, 0 if none came */
	enum esc_err last_err;
	char last_msg[512];
	int by_cert;	  /* a TLS client certificate logs the account in: no password */
	char account[65]; /* the account: --user, or the client certificate's (GET /whoami) */
	char errbuf[CURL_ERROR_SIZE];
};

/* The answer being received. */
struct sink {
	unsigned char *buf;
	size_t len, cap, max;
	int secure;  /* buf is in the secure heap */
	int too_big; /* more than max bytes came */
	int no_memory;
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

static void
sink_free(struct sink *s)
{
	if (s->buf == NULL)
		return;
	if (s->secure)
		OPENSSL_secure_clear_free(s->buf, s->cap);
	else
		OPENSSL_clear_free(s->buf, s->cap);
	s->buf = NULL;
	s->len = s->cap = 0;
}

/* libcurl's write callback: append to the sink, at most max bytes; a block that grows is copied and wiped. */
static size_t
on_data(char *data, size_t size, size_t nmemb, void *arg)
{
	struct sink *s = arg;
	size_t n = size * nmemb, cap;
	unsigned char *nb;

	if (n > s->max - s->len) {
		s->too_big = 1;
		return 0; /* libcurl stops: CURLE_WRITE_ERROR */
	}
	if (s->len + n + 1 > s->cap) {
		cap = s->cap > 0 ? s->cap : 4096;
		while (cap < s->len + n + 1)
			cap *= 2;
		if (cap > s->max + 1)
			cap = s->max + 1;
		nb = s->secure ? OPENSSL_secure_zalloc(cap) : OPENSSL_zalloc(cap);
		if (nb == NULL) {
			s->no_memory = 1;
			return 0;
		}
		if (s->buf != NULL)
			memcpy(nb, s->buf, s->len);
		sink_free(&(struct sink){.buf = s->buf, .cap = s->cap, .secure = s->secure});
		s->buf = nb;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, data, n);
	s->len += n;
	s->buf[s->len] = '\0';
	return n;
}

/*
 * libcurl's SSL_CTX callback, run for each new TLS connection before the
 * handshake: only the --server-ca certificates are trusted, TLS 1.2 or
 * newer, and the client certificate (with its chain) and key, if any.
 */
static CURLcode
on_ssl_ctx(CURL *curl, void *sslctx, void *arg)
{
	struct cli_http *h = arg;
	SSL_CTX *ctx = sslctx;
	int i;

	(void)curl;
	SSL_CTX_set1_cert_store(ctx, h->trust);
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		return CURLE_SSL_CERTPROBLEM;
	if (h->client_cert == NULL)
		return CURLE_OK;
	if (SSL_CTX_use_certificate(ctx, h->client_cert) != 1 || SSL_CTX_use_PrivateKey(ctx, h->client_key) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1)
		return CURLE_SSL_CERTPROBLEM;
	for (i = 0; i < sk_X509_num(h->client_chain); i++)
		if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(h->client_chain, i)) != 1)
			return CURLE_SSL_CERTPROBLEM;
	return CURLE_OK;
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
	if (h->bearer != NULL && h->curl != NULL && call(h, CLI_HTTP_DELETE, "/session", NULL, &doc, &status) == 0)
		json_decref(doc);
	if (h->bearer != NULL)
		OPENSSL_secure_clear_free(h->bearer, h->bearerlen);
	if (h->auth != NULL)
		OPENSSL_secure_clear_free(h->auth, h->authlen);
	if (h->curl != NULL)
		curl_easy_cleanup(h->curl);
	X509_STORE_free(h->trust);
	X509_free(h->client_cert);
	sk_X509_pop_free(h->client_chain, X509_free);
	EVP_PKEY_free(h->client_key);
	free(h->url);
	free(h->base);
	free(h->host);
	free(h->proxy);
	free(h);
}

/* "Authorization: Basic base64(user:password)", built and kept in secure memory. */
static int
make_auth(struct cli_http *h, const char *user, const struct esc_secret *pw)
{
	static const char prefix[] = "Authorization: Basic ";
	size_t ulen = strlen(user), plen = esc_secret_len(pw), rawlen = ulen + 1 + plen, b64len,
	       pl = sizeof(prefix) - 1;
	unsigned char *raw = NULL;
	int rc = -1;

	if (h->auth != NULL)
		OPENSSL_secure_clear_free(h->auth, h->authlen);
	h->auth = NULL;
	b64len = (rawlen + 2) / 3 * 4;
	if ((raw = OPENSSL_secure_malloc(rawlen)) == NULL || (h->auth = OPENSSL_secure_zalloc(pl + b64len + 1)) == NULL)
		goto out;
	h->authlen = pl + b64len + 1;
	/* raw is the base64 input, rawlen bytes: "user:" and the password, no NUL. */
	memcpy(raw, user, ulen); // NOLINT(bugprone-not-null-terminated-result): not a C string
	raw[ulen] = ':';
	memcpy(raw + ulen + 1, esc_secret_str(pw), plen);
	memcpy(h->auth, prefix, pl);
	EVP_EncodeBlock((unsigned char *)h->auth + pl, raw, (int)rawlen);
	rc = 0;
out:
	if (raw != NULL)
		OPENSSL_secure_clear_free(raw, rawlen);
	return rc;
}

/* Where the password of an encrypted client key comes from (NULL: an encrypted key is refused). */
struct key_password {
	struct cli_http *h;
	const char *file;
	const char *key_file;
	int asked;
};

/* OpenSSL's PEM password callback: the key's password from file, environment or prompt, once. */
static int
key_password_cb(char *buf, int size, int rwflag, void *u)
{
	struct key_password *kp = u;
	struct esc_secret *pw = NULL;
	char prompt[512];
	size_t n;

	(void)rwflag;
	if (kp == NULL || kp->asked)
		return -1;
	kp->asked = 1;
	snprintf(prompt, sizeof(prompt), "Password of the key '%s': ", kp->key_file);
	if (esc_secret_obtain(kp->h->ctx, kp->file, CLI_CLIENT_KEY_PASSWORD_ENV, prompt, &pw) != ESC_OK)
		return -1;
	n = esc_secret_len(pw);
	if (n > (size_t)size) {
		esc_secret_free(pw);
		return -1;
	}
	memcpy(buf, esc_secret_str(pw), n);
	esc_secret_free(pw);
	return (int)n;
}

/*
 * Read the private key of key_file into the secure heap: a regular file
 * only its owner may read or write, like a PIN file.  An encrypted PEM key
 * needs kp (its password source), else it is refused.
 */
static int
load_key_file(struct cli_http *h, const char *key_file, struct key_password *kp, EVP_PKEY **out)
{
	unsigned char *buf = NULL;
	EVP_PKEY *pkey = NULL;
	struct stat sb;
	BIO *b = NULL;
	size_t len = 0;
	ssize_t got;
	int fd, rc;

	memset(&sb, 0, sizeof(sb));
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
	    (pkey = PEM_read_bio_PrivateKey(b, NULL, key_password_cb, kp)) == NULL) {
		ERR_clear_error();
		if (kp != NULL && kp->asked)
			rc = fail(h, ESC_ERR_AUTH, "cannot decrypt the client key '%s' (wrong or no password?)",
				  key_file);
		else
			rc = fail(h, ESC_ERR_BAD_INPUT, "'%s' holds no %sPEM private key", key_file,
				  kp != NULL ? "" : "unencrypted ");
		goto out;
	}
	*out = pkey;
	pkey = NULL; /* transferred */
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

/* The certificate and chain of cert_file (PEM) and the key of key_file, checked to belong together. */
static int
use_client_cert(struct cli_http *h, const char *cert_file, const char *key_file, struct key_password *kp)
{
	STACK_OF(X509) *chain = NULL;
	EVP_PKEY *pkey = NULL;
	X509 *cert = NULL, *x;
	BIO *b = NULL;
	int rc;

	if ((rc = load_key_file(h, key_file, kp, &pkey)) != 0)
		goto out;
	if ((b = BIO_new_file(cert_file, "r")) == NULL || (cert = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL ||
	    (chain = sk_X509_new_null()) == NULL) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_IO, "cannot read the client certificate(s) from '%s'", cert_file);
		goto out;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
		if (sk_X509_push(chain, x) <= 0) {
			X509_free(x);
			rc = fail(h, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
	ERR_clear_error(); /* the end of the file */
	if (X509_check_private_key(cert, pkey) != 1) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_USAGE, "the client key '%s' does not belong to the certificate '%s'", key_file,
			  cert_file);
		goto out;
	}
	X509_free(h->client_cert);
	sk_X509_pop_free(h->client_chain, X509_free);
	EVP_PKEY_free(h->client_key);
	h->client_cert = cert;
	h->client_chain = chain;
	h->client_key = pkey;
	cert = NULL;
	chain = NULL;
	pkey = NULL; /* transferred */
	h->by_cert = 1;
	rc = 0;
out:
	X509_free(cert);
	sk_X509_pop_free(chain, X509_free);
	EVP_PKEY_free(pkey);
	BIO_free(b);
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

/* The parts of url a client needs, or a usage error: https only, no credentials, query or fragment. */
static int
parse_url(struct cli_http *h, const char *url)
{
	CURLU *u = NULL;
	char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *user = NULL, *query = NULL, *frag = NULL;
	size_t n, baselen;
	int rc;

	if (strlen(url) > URL_MAX || (u = curl_url()) == NULL ||
	    curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK || strcasecmp(scheme, "https") != 0 ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || *host == '\0' ||
	    curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER ||
	    curl_url_get(u, CURLUPART_QUERY, &query, 0) != CURLUE_NO_QUERY ||
	    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) != CURLUE_NO_FRAGMENT) {
		rc = cli_usage_error(h->cmd, "--server wants https://HOST[:PORT][/PATH], without credentials, query "
					     "or fragment");
		goto out;
	}
	if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (n = strlen(path); n > 0 && path[n - 1] == '/'; n--)
		path[n - 1] = '\0';
	/* The host keeps the brackets of an IPv6 address, as a URL has them. */
	baselen = strlen("https://") + strlen(host) + 1 + strlen(port) + strlen(path) + 1;
	if ((h->base = malloc(baselen)) == NULL || (h->host = strdup(host)) == NULL || (h->url = strdup(url)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	snprintf(h->base, baselen, "https://%s:%s%s", host, port, path);
	rc = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_free(user);
	curl_free(query);
	curl_free(frag);
	curl_url_cleanup(u);
	return rc;
}

/*
 * What every client has: the URL, the trust store of ca_file (NULL:
 * $P11ESCROW_SERVER_CA) and an easy handle set up as the header comment
 * says.
 */
static int
http_new(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file, struct cli_http **out)
{
	struct cli_http *h = NULL;
	int rc;

	*out = NULL;
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
	if ((rc = parse_url(h, url)) != 0)
		goto out;
	if ((h->trust = X509_STORE_new()) == NULL || X509_STORE_load_file(h->trust, ca_file) != 1) {
		ERR_clear_error();
		rc = fail(h, ESC_ERR_IO, "cannot read the service's CA certificate(s) from '%s'", ca_file);
		goto out;
	}
	if ((h->curl = curl_easy_init()) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "cannot set up the HTTPS client");
		goto out;
	}
	/* Options that cannot fail but for lack of memory or an old libcurl: checked all at once. */
	if (curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "https") != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_REDIR_PROTOCOLS_STR, "https") != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_VERBOSE, 0L) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
	    /* The file for libcurl's own checks; the SSL_CTX callback replaces the store with ours, no CA path. */
	    curl_easy_setopt(h->curl, CURLOPT_CAINFO, ca_file) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_CAPATH, NULL) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_SSL_CTX_DATA, h) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT, (long)CLI_HTTP_TIMEOUT) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_LOW_SPEED_LIMIT, 1L) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_LOW_SPEED_TIME, (long)CLI_HTTP_TIMEOUT) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT, (long)CLI_HTTP_DEADLINE) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_USERAGENT, "p11escrow/" ESC_VERSION) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, h->errbuf) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_data) != CURLE_OK) {
		rc = fail(h, ESC_ERR_INTERNAL, "cannot set up the HTTPS client (libcurl %s)", curl_version());
		goto out;
	}
	*out = h;
	h = NULL; /* transferred */
	rc = 0;
out:
	cli_http_free(h);
	return rc;
}

int
cli_http_set_proxy(struct cli_http *h, const char *proxy)
{
	CURLU *u = NULL;
	char *user = NULL, *scheme = NULL;
	int rc;

	if (proxy == NULL)
		return 0;
	/* Credentials do not belong in argv: a proxy that needs them is given by https_proxy. */
	if (strlen(proxy) > URL_MAX || (u = curl_url()) == NULL ||
	    curl_url_set(u, CURLUPART_URL, proxy, CURLU_NON_SUPPORT_SCHEME | CURLU_GUESS_SCHEME) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) ||
	    curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER) {
		rc = cli_usage_error(h->cmd, "--proxy wants http[s]://HOST[:PORT], without credentials (give a proxy "
					     "that needs them in $https_proxy)");
		goto out;
	}
	free(h->proxy);
	if ((h->proxy = strdup(proxy)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* This proxy for every host: no_proxy of the environment does not apply to an explicit one. */
	if (curl_easy_setopt(h->curl, CURLOPT_PROXY, h->proxy) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_NOPROXY, "") != CURLE_OK) {
		rc = fail(h, ESC_ERR_INTERNAL, "cannot set the proxy");
		goto out;
	}
	rc = 0;
out:
	curl_free(user);
	curl_free(scheme);
	curl_url_cleanup(u);
	return rc;
}

int
cli_http_open_cert(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file, const char *user,
		   const char *password_file, const char *client_cert, const char *client_key, struct cli_http **out)
{
	struct cli_http *h = NULL;
	struct esc_secret *pw = NULL;
	int rc;

	if ((rc = http_new(cmd, ctx, url, ca_file, &h)) != 0 || h == NULL)
		return rc != 0 ? rc : esc_err_exit_code(ESC_ERR_INTERNAL);
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
		if ((rc = use_client_cert(h, client_cert, client_key, NULL)) != 0)
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
	cli_http_free(h);
	return rc;
}

int
cli_http_open_anonymous(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file,
			struct cli_http **out)
{
	struct cli_http *h = NULL;
	int rc;

	if ((rc = http_new(cmd, ctx, url, ca_file, &h)) != 0 || h == NULL)
		return rc != 0 ? rc : esc_err_exit_code(ESC_ERR_INTERNAL);
	h->login_tried = 1; /* no account: no session */
	*out = h;
	return 0;
}

int
cli_http_set_client_cert(struct cli_http *h, const char *cert_file, const char *key_file, const char *key_password_file)
{
	struct key_password kp = {h, key_password_file, key_file, 0};

	return use_client_cert(h, cert_file, key_file, &kp);
}

int
cli_http_set_basic(struct cli_http *h, const char *user, const struct esc_secret *pw)
{
	if (strchr(user, ':') != NULL)
		return cli_usage_error(h->cmd, "a user name for HTTP Basic cannot contain ':'");
	if (make_auth(h, user, pw) != 0)
		return fail(h, ESC_ERR_NOMEM, "out of secure memory");
	return 0;
}

EVP_PKEY *
cli_http_client_key(const struct cli_http *h)
{
	return h->client_key;
}

X509 *
cli_http_client_cert(const struct cli_http *h)
{
	return h->client_cert;
}

/* Text from the server, safe for a terminal: at most max bytes, one line, control characters as '?'. */
static void
printable(char *dst, size_t len, const char *src, size_t max)
{
	size_t i;

	for (i = 0; i + 1 < len && i < max && src[i] != '\0' && src[i] != '\n' && src[i] != '\r'; i++)
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

/* libcurl's error text, one line for a terminal, or its generic one for code. */
static const char *
curl_reason(struct cli_http *h, CURLcode code, char *buf, size_t len)
{
	printable(buf, len, h->errbuf[0] != '\0' ? h->errbuf : curl_easy_strerror(code), len);
	return buf;
}

/* Why a request got no answer: one line, and the exit code of the matching error. */
static int
no_answer(struct cli_http *h, CURLcode code, const struct sink *s)
{
	long vr = X509_V_OK;
	char why[CURL_ERROR_SIZE];
	const char *via = h->proxy != NULL ? " through the proxy " : "", *proxy = h->proxy != NULL ? h->proxy : "";

	if (s->too_big || code == CURLE_FILESIZE_EXCEEDED)
		return fail(h, ESC_ERR_BAD_INPUT, "the answer of %s is larger than %zu bytes", h->url, s->max);
	if (s->no_memory || code == CURLE_OUT_OF_MEMORY)
		return fail(h, ESC_ERR_NOMEM, "out of memory receiving the answer of %s", h->url);
	switch (code) {
	case CURLE_OPERATION_TIMEDOUT:
		return fail(h, ESC_ERR_IO, "%s did not answer in time%s%s", h->url, via, proxy);
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
		if (curl_easy_getinfo(h->curl, CURLINFO_SSL_VERIFYRESULT, &vr) == CURLE_OK && vr != X509_V_OK)
			return fail(h, ESC_ERR_AUTH,
				    "the service at %s is not trusted: %s (checked against the --server-ca "
				    "certificates and the name '%s')",
				    h->url, X509_verify_cert_error_string(vr), h->host);
		return fail(h, ESC_ERR_AUTH,
			    "the service at %s is not trusted: %s (checked against the --server-ca certificates "
			    "and the name '%s')",
			    h->url, curl_reason(h, code, why, sizeof(why)), h->host);
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_USE_SSL_FAILED:
		return fail(h, ESC_ERR_IO, "TLS with %s failed: %s", h->url, curl_reason(h, code, why, sizeof(why)));
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_PROXY:
		return fail(h, ESC_ERR_IO, "the proxy%s%s for %s failed: %s", *proxy ? " " : "", proxy, h->url,
			    curl_reason(h, code, why, sizeof(why)));
	default:
		/* Refused, reset, closed, unresolvable: libcurl's line names host and port (never credentials). */
		return fail(h, ESC_ERR_IO, "no answer from %s%s%s: %s", h->url, via, proxy,
			    curl_reason(h, code, why, sizeof(why)));
	}
}

int
cli_http_query(char *buf, size_t len, const char *key, const char *value)
{
	size_t used = strlen(buf);
	char *enc;
	int n;

	if (value == NULL)
		return 0;
	/* curl_easy_escape ignores its handle (libcurl >= 7.82): letters, digits and -._~ stay, the rest %XX. */
	if ((enc = curl_easy_escape(NULL, value, 0)) == NULL)
		return -1;
	n = snprintf(buf + used, len - used, "%c%s=%s", strchr(buf, '?') ? '&' : '?', key, enc);
	curl_free(enc);
	if (n < 0 || (size_t)n >= len - used) {
		buf[used] = '\0';
		return -1;
	}
	return 0;
}

/*
 * One exchange on h's connection: method on path (below the URL's path),
 * body of type ctype (NULL: none), accept the media type to ask for.  The
 * answer goes to s.  Returns 0 with *status and *ctype_out set (an HTTP
 * answer came, of any status), or the exit code after printing why none
 * came.
 */
static int
exchange(struct cli_http *h, enum cli_http_method method, const char *path, const char *ctype, const void *body,
	 size_t bodylen, const char *accept, struct sink *s, int *status, char *ctype_out, size_t ctype_len)
{
	struct curl_slist *hdrs = NULL, *t;
	char *url = NULL, line[160];
	const char *ct = NULL;
	size_t urllen;
	long code = 0;
	CURLcode res;
	int rc;

	urllen = strlen(h->base) + strlen(path) + 1;
	if ((url = malloc(urllen)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	snprintf(url, urllen, "%s%s", h->base, path);
	snprintf(line, sizeof(line), "Accept: %s", accept);
	/* No Expect: 100-continue: the body goes at once. */
	if ((t = curl_slist_append(hdrs, line)) == NULL ||
	    (hdrs = t, (t = curl_slist_append(hdrs, "Expect:")) == NULL)) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	hdrs = t;
	if (ctype != NULL) {
		snprintf(line, sizeof(line), "Content-Type: %s", ctype);
		if ((t = curl_slist_append(hdrs, line)) == NULL) {
			rc = fail(h, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		hdrs = t;
	}
	/*
	 * A client certificate's login sends no Authorization header until it
	 * has a session.  libcurl copies the line into blocks wiped when freed.
	 */
	if (h->bearer != NULL || h->auth != NULL) {
		if ((t = curl_slist_append(hdrs, h->bearer != NULL ? h->bearer : h->auth)) == NULL) {
			rc = fail(h, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		hdrs = t;
	}
	h->errbuf[0] = '\0';
	/* Each request sets what the last one may have changed: the method, the body, the headers. */
	if (curl_easy_setopt(h->curl, CURLOPT_URL, url) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, hdrs) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, s) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s->max) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_CUSTOMREQUEST, NULL) != CURLE_OK ||
	    curl_easy_setopt(h->curl, CURLOPT_HTTPGET, 1L) != CURLE_OK) {
		rc = fail(h, ESC_ERR_INTERNAL, "cannot set up the request");
		goto out;
	}
	if (method == CLI_HTTP_POST &&
	    /* Referenced, not copied: the body stays in the caller's (possibly secure) memory. */
	    (curl_easy_setopt(h->curl, CURLOPT_POST, 1L) != CURLE_OK ||
	     curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodylen) != CURLE_OK ||
	     curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, body != NULL ? body : "") != CURLE_OK)) {
		rc = fail(h, ESC_ERR_INTERNAL, "cannot set up the request");
		goto out;
	}
	if (method == CLI_HTTP_DELETE && curl_easy_setopt(h->curl, CURLOPT_CUSTOMREQUEST, "DELETE") != CURLE_OK) {
		rc = fail(h, ESC_ERR_INTERNAL, "cannot set up the request");
		goto out;
	}
	if ((res = curl_easy_perform(h->curl)) != CURLE_OK) {
		rc = no_answer(h, res, s);
		goto out;
	}
	if (curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK || code < 100 || code > 599) {
		rc = fail(h, ESC_ERR_BAD_INPUT, "no HTTP answer from %s", h->url);
		goto out;
	}
	if (curl_easy_getinfo(h->curl, CURLINFO_CONTENT_TYPE, &ct) != CURLE_OK || ct == NULL)
		ct = "";
	printable(ctype_out, ctype_len, ct, ctype_len);
	*status = (int)code;
	rc = 0;
out:
	/* The header list held the Authorization line: nothing may point at it any more. */
	(void)curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, NULL);
	(void)curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, NULL);
	curl_slist_free_all(hdrs); /* libcurl's free: wiped (main.c) */
	free(url);
	return rc;
}

/*
 * One API call, authenticated with the session's token once there is one,
 * else with Basic.  *status: the HTTP status answered (0 if none).  A 404
 * to POST /session (a service without sessions) is not printed.
 */
static int
call(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out, int *status)
{
	struct sink s = {.max = CLI_HTTP_RESPONSE_MAX};
	char *text = NULL, *apipath = NULL, msg[512], ctype[128];
	json_t *doc = NULL, *jerr;
	json_error_t perr;
	size_t len;
	int rc, st = 0;

	h->last_status = 0;
	h->last_err = ESC_OK;
	h->last_msg[0] = '\0';
	len = strlen("/api/v1") + strlen(path) + 1;
	if ((apipath = malloc(len)) == NULL || (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL)) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	snprintf(apipath, len, "/api/v1%s", path);
	if ((rc = exchange(h, method, apipath, text != NULL ? "application/json" : NULL, text,
			   text != NULL ? strlen(text) : 0, "application/json", &s, &st, ctype, sizeof(ctype))) != 0)
		goto out;
	*status = st;
	if (s.len > 0)
		doc = json_loadb((const char *)s.buf, s.len, JSON_REJECT_DUPLICATES, &perr);
	if (st == 404 && method == CLI_HTTP_POST && strcmp(path, "/session") == 0) {
		rc = esc_err_exit_code(ESC_ERR_NOT_FOUND);
		goto out;
	}
	if (st >= 200 && st < 300) {
		if (doc == NULL || !json_is_object(doc)) {
			rc = fail(h, ESC_ERR_BAD_INPUT, "the answer of %s is not a JSON object (HTTP %d)", h->url, st);
			goto out;
		}
		*out = doc;
		doc = NULL; /* transferred */
		rc = 0;
		goto out;
	}
	/* An error: the server's reason, from {"error": ...} or a plain-text line. */
	h->last_status = st;
	if (doc != NULL && json_is_object(doc) && json_is_string(jerr = json_object_get(doc, "error"))) {
		const json_t *code = json_object_get(doc, "code");

		printable(msg, sizeof(msg), json_string_value(jerr), 400);
		rc = fail(h, error_for(st, json_is_string(code) ? json_string_value(code) : NULL), "%s", msg);
	} else {
		printable(msg, sizeof(msg), s.len > 0 ? (const char *)s.buf : "", 400);
		rc = fail(h, error_for(st, NULL), "%s answered HTTP %d%s%s", h->url, st, *msg ? ": " : "", msg);
	}
out:
	sink_free(&s); /* a package is ciphertext, but no need to leave it around */
	json_decref(doc);
	if (text != NULL) {
		OPENSSL_cleanse(text, strlen(text));
		free(text);
	}
	free(apipath);
	return rc;
}

int
cli_http_send(struct cli_http *h, enum cli_http_method method, const char *path, const char *ctype, const void *body,
	      size_t len, const char *accept, int secret, struct cli_http_reply *out)
{
	struct sink s = {.max = secret ? CLI_HTTP_SECRET_REPLY_MAX : CLI_HTTP_RESPONSE_MAX, .secure = secret};
	char msg[512];
	int rc, st = 0;

	memset(out, 0, sizeof(*out));
	h->last_status = 0;
	h->last_err = ESC_OK;
	if ((rc = exchange(h, method, path, ctype, body, len, accept, &s, &st, out->ctype, sizeof(out->ctype))) != 0)
		goto out;
	out->status = st;
	if (st < 200 || st > 299) {
		/* EST refusals are one line of text/plain: the reason, printed as it came (made printable). */
		h->last_status = st;
		printable(msg, sizeof(msg), s.len > 0 ? (const char *)s.buf : "", 400);
		rc = fail(h, error_for(st, NULL), "%s answered HTTP %d%s%s", h->url, st, *msg ? ": " : "", msg);
		goto out;
	}
	if (s.buf == NULL && (s.buf = secret ? OPENSSL_secure_zalloc(1) : OPENSSL_zalloc(1)) != NULL)
		s.cap = 1;
	if (s.buf == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	out->body = s.buf;
	out->len = s.len;
	out->cap = s.cap;
	out->secure = s.secure;
	s.buf = NULL; /* transferred */
	rc = 0;
out:
	sink_free(&s);
	return rc;
}

void
cli_http_reply_clear(struct cli_http_reply *r)
{
	if (r == NULL)
		return;
	sink_free(&(struct sink){.buf = r->body, .cap = r->cap, .secure = r->secure});
	memset(r, 0, sizeof(*r));
}

const char *
cli_http_session_token(const struct cli_http *h)
{
	static const char prefix[] = "Authorization: Bearer ";

	return h != NULL && h->bearer != NULL ? h->bearer + sizeof(prefix) - 1 : NULL;
}

/*
 * Log in once: POST /session with the password (Basic); every later call
 * of this client sends the token instead, and the password is wiped.  A
 * service that has no sessions (404) keeps getting Basic.
 */
static int
login(struct cli_http *h)
{
	static const char prefix[] = "Authorization: Bearer ";
	json_t *doc = NULL, *tok = NULL;
	size_t n, pl = sizeof(prefix) - 1;
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
	h->bearerlen = pl + n + 1;
	if ((h->bearer = OPENSSL_secure_zalloc(h->bearerlen)) == NULL) {
		rc = fail(h, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	memcpy(h->bearer, prefix, pl);
	memcpy(h->bearer + pl, json_string_value(tok), n);
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
