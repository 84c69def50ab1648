/*
 * est_load — archival enrollments per second through p11escrowd's EST
 * endpoints, from several threads, each over one persistent TLS connection
 * (HTTP/1.1 keep-alive), authenticated by a TLS client certificate.
 *
 *   fullcmc       POST /.well-known/est/<label>/fullcmc: the client's own
 *                 EC P-256 key, encrypted to the CA transport certificate
 *                 (esc_cmc_request_build).  Keys and request bodies are all
 *                 built before the clock starts, so the client's CPU (it
 *                 shares the machine with the service) goes to I/O only.
 *   serverkeygen  POST /.well-known/est/<label>/serverkeygen: the service
 *                 generates the key (the label's profile says which type),
 *                 archives it and returns it with the certificate.
 *
 * Each response is checked: HTTP 200, a certs-only SignedData holding a
 * certificate of the CA whose public key is the request's key (fullcmc) or
 * the returned key (serverkeygen; also its type).  A one-time password is
 * deliberately not used: each costs an Argon2id verification and is not how
 * bulk enrollment authenticates.
 *
 * Prints one line of key=value pairs: ok, errors, seconds, rate, latency.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ctx.h>
#include <p11escrow/est.h>

#include "bench_util.h"

#define PROG "est_load"
#define RESP_MAX (1024 * 1024) /* largest response accepted */
#define HDR_MAX (16 * 1024)    /* largest response head accepted */
#define ERRORS_SHOWN 5

enum mode { MODE_FULLCMC, MODE_SERVERKEYGEN };

struct opts {
	char host[256], port[16];
	const char *cacert, *cert, *key, *transport, *label, *key_type, *start_file;
	enum mode mode;
	int threads, seconds;
	long requests; /* fullcmc: bodies to build before the clock starts */
	int verbose;
};

/* One ready-to-send request: the whole HTTP message. */
struct item {
	char *msg;
	size_t len;
	unsigned char *spki; /* fullcmc: the key's SubjectPublicKeyInfo (DER) */
	int spkilen;
};

struct shared {
	const struct opts *o;
	SSL_CTX *tls;
	X509 *transport;
	X509_NAME *ca_name;
	struct item skg; /* serverkeygen: one request, sent again and again */
	pthread_barrier_t ready, go;
	double start, deadline;
	atomic_int shown; /* errors printed so far */
};

struct worker {
	struct shared *sh;
	int index;
	pthread_t thread;
	struct esc_ctx *ctx;
	struct item *items;
	size_t nitems, next;
	int fd;
	SSL *ssl;
	unsigned char *buf; /* the response */
	size_t cap;
	long ok, errors, reconnects;
	int exhausted, failed;
	double last_done;
	struct bench_samples lat;
};

/* The response of one request. */
struct response {
	int status;
	int close;
	char ctype[256];
	unsigned char *body; /* points into the worker's buffer */
	size_t bodylen;
	size_t used; /* bytes of the buffer in use (to wipe) */
};

static void
usage(FILE *f)
{
	fprintf(f, "Usage: " PROG " --url https://HOST:PORT --cacert FILE --cert FILE --key FILE\n"
		   "               --mode fullcmc|serverkeygen [--label LABEL] [--transport FILE]\n"
		   "               [--threads N] [--seconds N] [--requests N] [--key-type ec-p256|rsa2048]\n\n"
		   "Archival enrollments per second through p11escrowd's EST endpoints: N threads,\n"
		   "each with one persistent TLS connection authenticated by the client certificate.\n\n"
		   "  --url URL          the service (path ignored)\n"
		   "  --cacert FILE      CA certificate(s) the server's certificate must chain to\n"
		   "  --cert, --key      TLS client certificate and key (PEM) of an enrollee of this CA\n"
		   "  --mode MODE        fullcmc (own P-256 keys, archived via the transport certificate)\n"
		   "                     or serverkeygen (the service generates the key)\n"
		   "  --label LABEL      EST label = certificate profile (default: encryption)\n"
		   "  --transport FILE   the CA transport certificate (PEM; fullcmc)\n"
		   "  --threads N        concurrent connections (default 4)\n"
		   "  --seconds N        measuring time (default 20)\n"
		   "  --requests N       fullcmc: requests built before the clock starts (default 1000\n"
		   "                     per second of measuring time); a thread stops when it has sent its share\n"
		   "  --key-type T       serverkeygen: the key type the label must return (default: rsa2048 if\n"
		   "                     the label contains 'rsa', else ec-p256)\n"
		   "  --start-file FILE  create FILE when the clock starts (requests built, connections up),\n"
		   "                     so a caller can sample CPU counters over the measured time only\n");
}

static int
parse_url(struct opts *o, const char *url)
{
	const char *h, *e, *colon;
	size_t n;

	if (strncmp(url, "https://", 8) != 0)
		return -1;
	h = url + 8;
	if (*h == '[') {
		if ((e = strchr(h, ']')) == NULL)
			return -1;
		n = (size_t)(e - h - 1);
		if (n >= sizeof(o->host))
			return -1;
		memcpy(o->host, h + 1, n);
		o->host[n] = '\0';
		colon = e + 1;
	} else {
		for (e = h; *e && *e != ':' && *e != '/'; e++)
			;
		n = (size_t)(e - h);
		if (n == 0 || n >= sizeof(o->host))
			return -1;
		memcpy(o->host, h, n);
		o->host[n] = '\0';
		colon = e;
	}
	if (*colon == ':') {
		for (e = colon + 1, n = 0; *e >= '0' && *e <= '9'; e++)
			n++;
		if (n == 0 || n >= sizeof(o->port))
			return -1;
		memcpy(o->port, colon + 1, n);
		o->port[n] = '\0';
	} else {
		strcpy(o->port, "443");
	}
	return 0;
}

/* Print the first few errors, with the reason (counting them is the caller's). */
static void __attribute__((format(printf, 2, 3))) report_error(struct worker *w, const char *fmt, ...)
{
	va_list ap;

	if (atomic_fetch_add(&w->sh->shown, 1) >= ERRORS_SHOWN)
		return;
	fprintf(stderr, PROG ": thread %d: ", w->index);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- requests built before the clock --------------------------------------- */

static int
make_message(const struct opts *o, const char *op, const char *ctype, const char *body, size_t bodylen, struct item *it)
{
	char head[768];
	int hl;
	const char *lb = strchr(o->host, ':') ? "[" : "", *rb = *lb ? "]" : "";

	hl = snprintf(head, sizeof(head),
		      "POST /.well-known/est/%s/%s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: p11escrow-est-load\r\n"
		      "Content-Type: %s\r\nContent-Transfer-Encoding: base64\r\nContent-Length: %zu\r\n\r\n",
		      o->label, op, lb, o->host, rb, o->port, ctype, bodylen);
	if (hl < 0 || (size_t)hl >= sizeof(head))
		return -1;
	if ((it->msg = malloc((size_t)hl + bodylen)) == NULL)
		return -1;
	memcpy(it->msg, head, (size_t)hl);
	memcpy(it->msg + hl, body, bodylen);
	it->len = (size_t)hl + bodylen;
	return 0;
}

/* A PKCS#10 request for key, signed with it. */
static X509_REQ *
make_csr(EVP_PKEY *key, const char *cn)
{
	X509_REQ *req = X509_REQ_new();
	X509_NAME *name = X509_NAME_new();

	if (req == NULL || name == NULL ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0) ||
	    !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, key) ||
	    X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
		X509_REQ_free(req);
		req = NULL;
	}
	X509_NAME_free(name);
	return req;
}

/* One fullcmc request: a new P-256 key, its CSR, the key sealed to the transport certificate. */
static int
build_fullcmc(struct worker *w, struct item *it)
{
	const struct opts *o = w->sh->o;
	EVP_PKEY *key = NULL;
	X509_REQ *csr = NULL;
	unsigned char *der = NULL, *p;
	char *b64 = NULL;
	size_t derlen = 0, b64len = 0;
	int rc = -1;

	if ((key = EVP_EC_gen("P-256")) == NULL || (csr = make_csr(key, "est-load fullcmc")) == NULL) {
		fprintf(stderr, PROG ": cannot generate a key and CSR\n");
		goto out;
	}
	if (esc_cmc_request_build(w->ctx, csr, key, w->sh->transport, &der, &derlen) != ESC_OK ||
	    esc_b64_encode(w->ctx, der, derlen, &b64, &b64len) != ESC_OK) {
		fprintf(stderr, PROG ": cannot build a Full PKI Request: %s\n", esc_ctx_errmsg(w->ctx));
		goto out;
	}
	if ((it->spkilen = i2d_PUBKEY(key, NULL)) <= 0 || (it->spki = malloc((size_t)it->spkilen)) == NULL)
		goto out;
	p = it->spki;
	i2d_PUBKEY(key, &p);
	if (make_message(o, "fullcmc", "application/pkcs7-mime; smime-type=CMC-request", b64, b64len, it) != 0)
		goto out;
	rc = 0;
out:
	free(der);
	free(b64);
	X509_REQ_free(csr);
	EVP_PKEY_free(key);
	return rc;
}

static int
build_serverkeygen(struct shared *sh, struct esc_ctx *ctx)
{
	EVP_PKEY *key = NULL;
	X509_REQ *csr = NULL;
	unsigned char *der = NULL, *p;
	char *b64 = NULL;
	size_t b64len = 0;
	int len, rc = -1;

	if ((key = EVP_EC_gen("P-256")) == NULL || (csr = make_csr(key, "est-load serverkeygen")) == NULL ||
	    (len = i2d_X509_REQ(csr, NULL)) <= 0 || (der = malloc((size_t)len)) == NULL)
		goto out;
	p = der;
	i2d_X509_REQ(csr, &p);
	if (esc_b64_encode(ctx, der, (size_t)len, &b64, &b64len) != ESC_OK ||
	    make_message(sh->o, "serverkeygen", "application/pkcs10", b64, b64len, &sh->skg) != 0)
		goto out;
	rc = 0;
out:
	free(der);
	free(b64);
	X509_REQ_free(csr);
	EVP_PKEY_free(key);
	return rc;
}

/* ---- the connection --------------------------------------------------------- */

static void
disconnect(struct worker *w)
{
	if (w->ssl != NULL) {
		SSL_set_quiet_shutdown(w->ssl, 1);
		SSL_free(w->ssl);
		w->ssl = NULL;
	}
	if (w->fd >= 0) {
		close(w->fd);
		w->fd = -1;
	}
}

static int
connect_tls(struct worker *w)
{
	const struct opts *o = w->sh->o;
	struct addrinfo hints = {0}, *ai = NULL, *a;
	struct timeval tv = {60, 0};
	int one = 1, rc;

	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if ((rc = getaddrinfo(o->host, o->port, &hints, &ai)) != 0) {
		report_error(w, "%s: %s", o->host, gai_strerror(rc));
		return -1;
	}
	for (a = ai; a != NULL; a = a->ai_next) {
		if ((w->fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			continue;
		if (connect(w->fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		close(w->fd);
		w->fd = -1;
	}
	freeaddrinfo(ai);
	if (w->fd < 0) {
		report_error(w, "cannot connect to %s:%s: %s", o->host, o->port, strerror(errno));
		return -1;
	}
	/* Whole messages are written at once: no Nagle delay; a hung service does not hang the benchmark. */
	(void)setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void)setsockopt(w->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if ((w->ssl = SSL_new(w->sh->tls)) == NULL || SSL_set_fd(w->ssl, w->fd) != 1)
		goto tls_fail;
	{
		X509_VERIFY_PARAM *vp = SSL_get0_param(w->ssl);
		int is_ip = X509_VERIFY_PARAM_set1_ip_asc(vp, o->host) == 1;

		if (!is_ip && (X509_VERIFY_PARAM_set1_host(vp, o->host, 0) != 1 ||
			       SSL_set_tlsext_host_name(w->ssl, o->host) != 1))
			goto tls_fail;
	}
	if (SSL_connect(w->ssl) != 1)
		goto tls_fail;
	return 0;
tls_fail : {
	unsigned long e = ERR_get_error();
	char msg[256];

	ERR_error_string_n(e, msg, sizeof(msg));
	report_error(w, "TLS connection to %s:%s failed: %s", o->host, o->port, e ? msg : "closed");
	ERR_clear_error();
}
	disconnect(w);
	return -1;
}

static int
write_all(struct worker *w, const char *p, size_t n)
{
	while (n > 0) {
		int k = SSL_write(w->ssl, p, n > 1u << 30 ? 1 << 30 : (int)n);

		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Read more bytes into the buffer: >0 read, 0 closed, -1 error. */
static int
read_more(struct worker *w, size_t *used)
{
	int k;

	if (*used == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 65536;
		unsigned char *b;

		if (cap > RESP_MAX + HDR_MAX)
			return -1;
		if ((b = malloc(cap)) == NULL)
			return -1;
		/* The buffer may hold a returned private key: move it, wipe the old one. */
		memcpy(b, w->buf, *used);
		OPENSSL_cleanse(w->buf, w->cap);
		free(w->buf);
		w->buf = b;
		w->cap = cap;
	}
	k = SSL_read(w->ssl, w->buf + *used, (int)(w->cap - *used));
	if (k > 0) {
		*used += (size_t)k;
		return k;
	}
	return SSL_get_error(w->ssl, k) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

static const char *
find_crlfcrlf(const unsigned char *b, size_t n)
{
	size_t i;

	for (i = 0; i + 3 < n; i++)
		if (b[i] == '\r' && b[i + 1] == '\n' && b[i + 2] == '\r' && b[i + 3] == '\n')
			return (const char *)b + i;
	return NULL;
}

/*
 * Send one request and read its response.  Returns 0 (resp filled), -1 on a
 * failure before any byte of the response came (the connection may have
 * been closed by the server while idle: the caller may retry once), -2 on a
 * failure after.
 */
static int
exchange(struct worker *w, const struct item *it, struct response *resp)
{
	size_t used = 0, head, clen = 0;
	const char *end, *line, *next;
	int have_clen = 0, k;

	memset(resp, 0, sizeof(*resp));
	if (write_all(w, it->msg, it->len) != 0)
		return -1;
	while ((end = find_crlfcrlf(w->buf, used)) == NULL) {
		if (used > HDR_MAX)
			return -2;
		if (read_more(w, &used) <= 0)
			return used == 0 ? -1 : -2;
	}
	head = (size_t)(end - (const char *)w->buf) + 4;
	resp->used = used;
	/* "HTTP/1.x NNN ..." */
	{
		const unsigned char *b = w->buf;

		if (head < 13 || memcmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ' || b[9] < '1' || b[9] > '5' ||
		    b[10] < '0' || b[10] > '9' || b[11] < '0' || b[11] > '9' || (b[12] != ' ' && b[12] != '\r'))
			return -2;
		resp->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
	}
	/* Header lines: Content-Length, Content-Type, Connection. */
	line = memmem(w->buf, head, "\r\n", 2);
	for (line += 2; line < end; line = next + 2) {
		size_t ll;

		next = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
		ll = (size_t)(next - line);
		if (ll > 15 && strncasecmp(line, "Content-Length:", 15) == 0) {
			clen = strtoul(line + 15, NULL, 10);
			have_clen = 1;
		} else if (ll > 13 && strncasecmp(line, "Content-Type:", 13) == 0) {
			const char *v = line + 13;

			while (*v == ' ' || *v == '\t')
				v++;
			snprintf(resp->ctype, sizeof(resp->ctype), "%.*s", (int)(next - v), v);
		} else if (ll > 11 && strncasecmp(line, "Connection:", 11) == 0 &&
			   memmem(line, ll, "close", 5) != NULL) {
			resp->close = 1;
		} else if (ll > 18 && strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
			return -2; /* not sent by evhttp for complete replies; not implemented here */
		}
	}
	if (have_clen && clen > RESP_MAX)
		return -2;
	/* The body: Content-Length bytes, else up to the close. */
	for (;;) {
		if (have_clen && used - head >= clen)
			break;
		k = read_more(w, &used);
		if (k < 0 || (k == 0 && have_clen))
			return -2;
		if (k == 0) {
			resp->close = 1;
			break;
		}
		if (used - head > RESP_MAX)
			return -2;
	}
	resp->used = used;
	resp->body = w->buf + head;
	resp->bodylen = have_clen ? clen : used - head;
	return 0;
}

/* ---- checking responses ---------------------------------------------------- */

/* The one certificate of a base64 certs-only response, issued by the CA; NULL on failure (reported). */
static X509 *
certs_only_cert(struct worker *w, const unsigned char *b64, size_t len)
{
	unsigned char *der = NULL;
	size_t derlen = 0;
	STACK_OF(X509) *certs = NULL;
	X509 *cert = NULL;

	if (esc_b64_decode(w->ctx, (const char *)b64, len, &der, &derlen) != ESC_OK ||
	    esc_certs_only_parse(w->ctx, der, derlen, &certs) != ESC_OK) {
		report_error(w, "the response is not a certs-only SignedData: %s", esc_ctx_errmsg(w->ctx));
		goto out;
	}
	if (sk_X509_num(certs) < 1) {
		report_error(w, "the response holds no certificate");
		goto out;
	}
	cert = sk_X509_value(certs, 0);
	if (X509_NAME_cmp(X509_get_issuer_name(cert), w->sh->ca_name) != 0) {
		report_error(w, "the certificate returned is not issued by the CA");
		cert = NULL;
		goto out;
	}
	X509_up_ref(cert);
out:
	sk_X509_pop_free(certs, X509_free);
	free(der);
	return cert;
}

static int
check_fullcmc(struct worker *w, const struct item *it, const struct response *resp)
{
	X509 *cert = certs_only_cert(w, resp->body, resp->bodylen);
	unsigned char *spki = NULL;
	int n, rc = -1;

	if (cert == NULL)
		return -1;
	/* The certificate's SubjectPublicKeyInfo as it came, not re-encoded from the key (cheaper). */
	n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
	if (n != it->spkilen || memcmp(spki, it->spki, (size_t)n) != 0)
		report_error(w, "the certificate's public key is not the key enrolled");
	else
		rc = 0;
	OPENSSL_free(spki);
	X509_free(cert);
	return rc;
}

/* The key and certificate of the multipart answer (esc_est_serverkeygen_parse, as p11escrow est reads it). */
static int
check_serverkeygen(struct worker *w, const struct response *resp)
{
	const struct opts *o = w->sh->o;
	STACK_OF(X509) *certs = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert;
	int rc = -1, want_rsa = strcmp(o->key_type, "rsa2048") == 0;

	if (esc_est_serverkeygen_parse(w->ctx, resp->ctype, resp->body, resp->bodylen, &key, &certs) != ESC_OK) {
		report_error(w, "serverkeygen response: %s", esc_ctx_errmsg(w->ctx));
		goto out;
	}
	if (want_rsa ? !(EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == 2048)
		     : !(EVP_PKEY_is_a(key, "EC") && EVP_PKEY_get_bits(key) == 256)) {
		report_error(w, "the key returned is %s-%d, not %s", EVP_PKEY_get0_type_name(key),
			     EVP_PKEY_get_bits(key), o->key_type);
		goto out;
	}
	cert = sk_X509_value(certs, 0);
	if (X509_NAME_cmp(X509_get_issuer_name(cert), w->sh->ca_name) != 0) {
		report_error(w, "the certificate returned is not issued by the CA");
		goto out;
	}
	if (EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
		report_error(w, "the certificate's public key is not the key returned");
		goto out;
	}
	rc = 0;
out:
	ERR_clear_error();
	EVP_PKEY_free(key);
	sk_X509_pop_free(certs, X509_free);
	return rc;
}

/* ---- the threads ------------------------------------------------------------- */

static void
one_request(struct worker *w, const struct item *it)
{
	const struct opts *o = w->sh->o;
	struct response resp;
	double t0 = bench_now(), t1;
	int rc, attempt;

	for (attempt = 0; attempt < 2; attempt++) {
		if (w->ssl == NULL) {
			w->reconnects++;
			if (connect_tls(w) != 0) {
				w->errors++;
				return;
			}
		}
		rc = exchange(w, it, &resp);
		if (rc == 0)
			break;
		OPENSSL_cleanse(w->buf, w->cap);
		disconnect(w);
		ERR_clear_error();
		/* A keep-alive connection closed by the server while idle: retry once on a new one. */
		if (rc == -2 || attempt == 1) {
			w->errors++;
			report_error(w, "request failed: %s",
				     rc == -2 ? "bad or truncated response" : "connection lost");
			return;
		}
	}
	t1 = bench_now();
	if (resp.status != 200) {
		w->errors++;
		report_error(w, "HTTP %d: %.*s", resp.status, (int)(resp.bodylen > 300 ? 300 : resp.bodylen),
			     (const char *)resp.body);
	} else if ((o->mode == MODE_FULLCMC ? check_fullcmc(w, it, &resp) : check_serverkeygen(w, &resp)) != 0) {
		w->errors++;
	} else {
		w->ok++;
		w->last_done = t1;
		(void)bench_samples_add(&w->lat, (t1 - t0) * 1e3);
	}
	/* The response may carry a private key (serverkeygen). */
	OPENSSL_cleanse(w->buf, resp.used);
	if (resp.close)
		disconnect(w);
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = w->sh;
	const struct opts *o = sh->o;
	size_t i;

	if (esc_ctx_new(&w->ctx) != ESC_OK) {
		w->failed = 1;
	} else if (o->mode == MODE_FULLCMC) {
		for (i = 0; i < w->nitems; i++)
			if (build_fullcmc(w, &w->items[i]) != 0) {
				w->failed = 1;
				break;
			}
	}
	/*
	 * One connection at a time: p11escrowd's workers accept in a loop, so a
	 * burst of connections would all land on whichever worker woke first
	 * and stay there (keep-alive).
	 */
	if (!w->failed) {
		struct timespec pause = {0, 50L * 1000 * 1000 * w->index};

		if (w->index < 20)
			nanosleep(&pause, NULL);
		if (connect_tls(w) != 0)
			w->failed = 1;
	}
	pthread_barrier_wait(&sh->ready);
	pthread_barrier_wait(&sh->go); /* the main thread set start and deadline in between */
	if (w->failed)
		return NULL;
	w->last_done = sh->start;
	while (bench_now() < sh->deadline) {
		const struct item *it;

		if (o->mode == MODE_FULLCMC) {
			if (w->next == w->nitems) {
				w->exhausted = 1;
				break;
			}
			it = &w->items[w->next++];
		} else {
			it = &sh->skg;
		}
		one_request(w, it);
	}
	disconnect(w);
	return NULL;
}

static int
setup_tls(struct shared *sh)
{
	const struct opts *o = sh->o;
	FILE *f;
	X509 *ca;

	if ((sh->tls = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(sh->tls, TLS1_2_VERSION) != 1)
		goto ossl;
	if (SSL_CTX_load_verify_locations(sh->tls, o->cacert, NULL) != 1) {
		fprintf(stderr, PROG ": cannot load --cacert %s\n", o->cacert);
		goto ossl;
	}
	SSL_CTX_set_verify(sh->tls, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_use_certificate_chain_file(sh->tls, o->cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sh->tls, o->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(sh->tls) != 1) {
		fprintf(stderr, PROG ": cannot use --cert %s with --key %s\n", o->cert, o->key);
		goto ossl;
	}
	/* Certificates returned must be issued by the CA of --cacert (its first certificate). */
	if ((f = fopen(o->cacert, "r")) == NULL || (ca = PEM_read_X509(f, NULL, NULL, NULL)) == NULL) {
		if (f != NULL)
			fclose(f);
		fprintf(stderr, PROG ": cannot read %s\n", o->cacert);
		return -1;
	}
	fclose(f);
	sh->ca_name = X509_NAME_dup(X509_get_subject_name(ca));
	X509_free(ca);
	if (o->mode == MODE_FULLCMC) {
		if (o->transport == NULL) {
			fprintf(stderr,
				PROG ": --mode fullcmc needs --transport FILE (the CA transport certificate)\n");
			return -1;
		}
		if ((f = fopen(o->transport, "r")) == NULL ||
		    (sh->transport = PEM_read_X509(f, NULL, NULL, NULL)) == NULL) {
			if (f != NULL)
				fclose(f);
			fprintf(stderr, PROG ": cannot read the transport certificate %s\n", o->transport);
			return -1;
		}
		fclose(f);
	}
	return sh->ca_name != NULL ? 0 : -1;
ossl:
	ERR_print_errors_fp(stderr);
	return -1;
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"url", required_argument, NULL, 'u'},
		{"cacert", required_argument, NULL, 'C'},
		{"cert", required_argument, NULL, 'c'},
		{"key", required_argument, NULL, 'k'},
		{"mode", required_argument, NULL, 'm'},
		{"label", required_argument, NULL, 'l'},
		{"transport", required_argument, NULL, 't'},
		{"threads", required_argument, NULL, 'n'},
		{"seconds", required_argument, NULL, 's'},
		{"requests", required_argument, NULL, 'r'},
		{"key-type", required_argument, NULL, 'K'},
		{"start-file", required_argument, NULL, 'S'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o;
	struct shared sh;
	struct worker *ws = NULL;
	struct bench_samples all = {0};
	struct esc_ctx *ctx = NULL;
	const char *url = NULL, *mode = NULL;
	long ok = 0, errors = 0, reconnects = 0;
	int c, i, exhausted = 0, failed = 0, rc = 1;
	double end, cpu0, cpu1, secs;

	memset(&o, 0, sizeof(o));
	memset(&sh, 0, sizeof(sh));
	o.threads = 4;
	o.seconds = 20;
	o.label = "encryption";
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'u':
			url = optarg;
			break;
		case 'C':
			o.cacert = optarg;
			break;
		case 'c':
			o.cert = optarg;
			break;
		case 'k':
			o.key = optarg;
			break;
		case 'm':
			mode = optarg;
			break;
		case 'l':
			o.label = optarg;
			break;
		case 't':
			o.transport = optarg;
			break;
		case 'n':
			o.threads = (int)bench_parse_long(PROG, "--threads", optarg, 1, 256);
			break;
		case 's':
			o.seconds = (int)bench_parse_long(PROG, "--seconds", optarg, 1, 3600);
			break;
		case 'r':
			o.requests = bench_parse_long(PROG, "--requests", optarg, 1, 10000000);
			break;
		case 'K':
			o.key_type = optarg;
			break;
		case 'S':
			o.start_file = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || url == NULL || o.cacert == NULL || o.cert == NULL || o.key == NULL || mode == NULL) {
		usage(stderr);
		return 2;
	}
	if (parse_url(&o, url) != 0) {
		fprintf(stderr, PROG ": --url must be https://HOST[:PORT], not '%s'\n", url);
		return 2;
	}
	if (strcmp(mode, "fullcmc") == 0) {
		o.mode = MODE_FULLCMC;
	} else if (strcmp(mode, "serverkeygen") == 0) {
		o.mode = MODE_SERVERKEYGEN;
	} else {
		fprintf(stderr, PROG ": --mode is fullcmc or serverkeygen, not '%s'\n", mode);
		return 2;
	}
	if (o.key_type == NULL)
		o.key_type = strstr(o.label, "rsa") != NULL ? "rsa2048" : "ec-p256";
	if (strcmp(o.key_type, "rsa2048") != 0 && strcmp(o.key_type, "ec-p256") != 0) {
		fprintf(stderr, PROG ": --key-type is ec-p256 or rsa2048\n");
		return 2;
	}
	if (o.requests == 0)
		o.requests = 1000L * o.seconds;
	signal(SIGPIPE, SIG_IGN);
	sh.o = &o;
	atomic_init(&sh.shown, 0);
	if (setup_tls(&sh) != 0 || esc_ctx_new(&ctx) != ESC_OK)
		goto out;
	if (o.mode == MODE_SERVERKEYGEN && build_serverkeygen(&sh, ctx) != 0) {
		fprintf(stderr, PROG ": cannot build the serverkeygen request\n");
		goto out;
	}
	if ((ws = calloc((size_t)o.threads, sizeof(*ws))) == NULL)
		goto out;
	pthread_barrier_init(&sh.ready, NULL, (unsigned)o.threads + 1);
	pthread_barrier_init(&sh.go, NULL, (unsigned)o.threads + 1);
	if (o.mode == MODE_FULLCMC)
		fprintf(stderr, PROG ": building %ld Full PKI Requests (P-256 keys) before the clock starts\n",
			o.requests);
	for (i = 0; i < o.threads; i++) {
		struct worker *w = &ws[i];

		w->sh = &sh;
		w->index = i;
		w->fd = -1;
		if (o.mode == MODE_FULLCMC) {
			w->nitems = (size_t)(o.requests / o.threads + (i < o.requests % o.threads));
			if ((w->items = calloc(w->nitems ? w->nitems : 1, sizeof(*w->items))) == NULL)
				goto out;
		}
	}
	for (i = 0; i < o.threads; i++) {
		if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
			fprintf(stderr, PROG ": cannot start thread %d\n", i);
			exit(1);
		}
	}
	pthread_barrier_wait(&sh.ready);
	cpu0 = bench_cpu();
	sh.start = bench_now();
	sh.deadline = sh.start + o.seconds;
	pthread_barrier_wait(&sh.go);
	if (o.start_file != NULL) {
		FILE *sf = fopen(o.start_file, "w");

		if (sf == NULL || fclose(sf) != 0)
			fprintf(stderr, PROG ": cannot create %s\n", o.start_file);
	}
	end = sh.start;
	for (i = 0; i < o.threads; i++) {
		pthread_join(ws[i].thread, NULL);
		ok += ws[i].ok;
		errors += ws[i].errors;
		reconnects += ws[i].reconnects;
		exhausted |= ws[i].exhausted;
		failed |= ws[i].failed;
		if (ws[i].last_done > end)
			end = ws[i].last_done;
		(void)bench_samples_merge(&all, &ws[i].lat);
	}
	cpu1 = bench_cpu();
	if (failed) {
		fprintf(stderr, PROG ": a thread could not prepare or connect (see above)\n");
		goto out;
	}
	if (exhausted)
		fprintf(stderr, PROG ": warning: a thread sent all its prebuilt requests before the time was up "
				     "(raise --requests); the rate is over the time used\n");
	secs = end - sh.start;
	printf("est_load mode=%s label=%s threads=%d ok=%ld errors=%ld seconds=%.2f rate=%.1f p50_ms=%.1f "
	       "p99_ms=%.1f reconnects=%ld client_cpu_s=%.2f\n",
	       mode, o.label, o.threads, ok, errors, secs, secs > 0 ? (double)ok / secs : 0.0,
	       bench_quantile(&all, 0.5), bench_quantile(&all, 0.99), reconnects, cpu1 - cpu0);
	rc = errors == 0 && ok > 0 ? 0 : 1;
out:
	for (i = 0; ws != NULL && i < o.threads; i++) {
		size_t j;

		for (j = 0; j < ws[i].nitems && ws[i].items != NULL; j++) {
			free(ws[i].items[j].msg);
			free(ws[i].items[j].spki);
		}
		free(ws[i].items);
		if (ws[i].buf != NULL)
			OPENSSL_cleanse(ws[i].buf, ws[i].cap);
		free(ws[i].buf);
		bench_samples_free(&ws[i].lat);
		esc_ctx_free(ws[i].ctx);
	}
	free(ws);
	free(sh.skg.msg);
	bench_samples_free(&all);
	X509_free(sh.transport);
	X509_NAME_free(sh.ca_name);
	SSL_CTX_free(sh.tls);
	esc_ctx_free(ctx);
	return rc;
}
