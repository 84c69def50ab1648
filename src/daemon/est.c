/*
 * p11escrowd — EST (RFC 7030, RFC 8951) endpoints.
 *
 *   GET  /.well-known/est[/<label>]/cacerts        CA certificates (no authentication)
 *   GET  /.well-known/est[/<label>]/csrattrs       what the profile wants in a CSR
 *   GET  /.well-known/est[/<label>]/transportcert  the CA transport certificate /fullcmc encrypts keys to
 *   POST /.well-known/est[/<label>]/simpleenroll   non-archival profiles only
 *   POST /.well-known/est[/<label>]/simplereenroll TLS client certificate; same subject
 *   POST /.well-known/est[/<label>]/serverkeygen   key generated here, archived, then returned
 *   POST /.well-known/est[/<label>]/fullcmc        key sent encrypted to the transport certificate
 *
 * The label selects a certificate profile (esc_profile_find).  Enrollees
 * authenticate with a TLS client certificate of this CA or HTTP Basic with
 * a one-time enrollment password; a request with neither gets a bare 401
 * challenge with an empty body.  Bodies are base64 DER (RFC 8951);
 * single-part responses carry Content-Transfer-Encoding: base64, the
 * multipart /serverkeygen response only in its parts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/enroll.h>
#include <p11escrow/est.h>

#include "svc.h"

#define CT_CERTS "application/pkcs7-mime; smime-type=certs-only"
#define CT_CMC_RESPONSE "application/pkcs7-mime; smime-type=CMC-response"
#define CT_SERVER_KEY "application/pkcs7-mime; smime-type=server-generated-key"

/* Who is enrolling, as established by est_authenticate. */
struct est_auth {
	char actor[128];
	char otp_name[65];  /* "" unless a one-time password was used */
	X509_NAME *subject; /* the subject the enrollee may have */
};

static void
auth_clear(struct est_auth *a)
{
	X509_NAME_free(a->subject);
	memset(a, 0, sizeof(*a));
}

/*
 * Reply 200 with der as a single-part base64 body (RFC 8951), or with the
 * error e that building der failed with.  Frees der.
 */
static void
reply_der(struct svc_request *r, enum esc_err e, const char *ctype, unsigned char *der, size_t derlen)
{
	char *b64 = NULL;
	size_t b64len = 0;

	if (e == ESC_OK)
		e = esc_b64_encode(r->w->ctx, der, derlen, &b64, &b64len);
	if (e != ESC_OK) {
		svc_reply_esc(r, e);
	} else {
		svc_add_header(r, "Content-Transfer-Encoding", "base64");
		svc_reply(r, 200, ctype, b64, b64len);
	}
	free(der);
	free(b64);
}

/* Reply with a certs-only response (single part, base64). */
static void
reply_certs(struct svc_request *r, const char *ctype, X509 *const *certs, size_t n)
{
	unsigned char *der = NULL;
	size_t derlen = 0;
	enum esc_err e = esc_certs_only_build(r->w->ctx, certs, n, &der, &derlen);

	reply_der(r, e, ctype, der, derlen);
}

static void
est_cacerts(struct svc_request *r)
{
	X509 *certs[16];
	STACK_OF(X509) *chain = esc_keeper_chain(r->w->keeper);
	size_t n = 0;
	int i;

	certs[n++] = esc_keeper_ca_cert(r->w->keeper);
	for (i = 0; chain != NULL && i < sk_X509_num(chain) && n < 16; i++)
		certs[n++] = sk_X509_value(chain, i);
	reply_certs(r, CT_CERTS, certs, n);
}

/*
 * The transport certificate, certs-only like /cacerts: public data a
 * /fullcmc client needs and checks itself (issued by the CA of /cacerts,
 * a key usage for receiving keys).  Not an RFC 7030 operation.
 */
static void
est_transportcert(struct svc_request *r)
{
	X509 *cert = esc_keeper_transport_cert(r->w->keeper);

	if (cert == NULL) {
		svc_reply_error(r, 503, "the transport certificate is not loaded");
		return;
	}
	reply_certs(r, CT_CERTS, &cert, 1);
}

static void
est_csrattrs(struct svc_request *r, const struct esc_profile *p)
{
	unsigned char *der = NULL;
	size_t derlen = 0;
	enum esc_err e = esc_csrattrs_for_profile(r->w->ctx, p, &der, &derlen);

	reply_der(r, e, "application/csrattrs", der, derlen);
}

/*
 * Authenticate the enrollee for profile p: a TLS client certificate of this
 * CA (valid, not revoked), else a one-time password for this profile.
 * Returns 0, or -1 after replying.
 */
static int
est_authenticate(struct svc_request *r, const struct esc_profile *p, struct est_auth *a)
{
	struct esc_ctx *ctx = r->w->ctx;
	struct esc_otp_grant grant;
	struct esc_secret *pw = NULL;
	char user[65], msg[160];
	enum esc_err e;
	int rc;

	memset(a, 0, sizeof(*a));
	if (r->client_cert != NULL) {
		char *serial;

		if (!svc_client_cert_fresh(r)) {
			if ((e = esc_enroll_check_client_cert(ctx, r->w->st, r->client_cert)) != ESC_OK) {
				svc_reply_esc(r, e);
				return -1;
			}
			svc_client_cert_checked(r);
		}
		serial = esc_cert_serial_hex(r->client_cert);
		snprintf(a->actor, sizeof(a->actor), "est:cert:%s", serial != NULL ? serial : "?");
		snprintf(r->actor, sizeof(r->actor), "%s", a->actor); /* the request's log line names it too */
		free(serial);
		if ((a->subject = X509_NAME_dup(X509_get_subject_name(r->client_cert))) == NULL) {
			svc_reply_error(r, 503, "out of memory");
			return -1;
		}
		return 0;
	}
	rc = svc_basic_auth(r, user, sizeof(user), &pw);
	if (rc == 0) {
		/*
		 * The bare challenge has an empty body: Bouncy Castle's HttpAuth
		 * (1.72) closes this response unread and fails on any body
		 * ("Stream closed before limit fully read").  WWW-Authenticate
		 * says what to do; refusals of credentials keep their reason.
		 */
		svc_add_header(r, "WWW-Authenticate", "Basic realm=\"p11escrow\", charset=\"UTF-8\"");
		svc_reply(r, 401, "text/plain; charset=utf-8", "", 0);
		return -1;
	}
	if (rc < 0) {
		svc_reply_error(r, 400, "malformed Authorization header");
		return -1;
	}
	if (svc_login_wait(r, user, msg, sizeof(msg)) > 0) {
		esc_secret_free(pw);
		svc_reply_error(r, 429, msg);
		return -1;
	}
	e = esc_otp_check(ctx, r->w->st, user, pw, &grant);
	esc_secret_free(pw);
	if (e == ESC_OK || e == ESC_ERR_AUTH)
		svc_login_result(r, user, e == ESC_OK);
	if (e != ESC_OK) {
		svc_reply_esc(r, e);
		return -1;
	}
	if (strcmp(grant.profile, p->name) != 0) {
		snprintf(msg, sizeof(msg), "this enrollment password is for profile '%s', not '%s'", grant.profile,
			 p->name);
		svc_reply_error(r, 403, msg);
		return -1;
	}
	if ((e = esc_name_parse(ctx, grant.subject, &a->subject)) != ESC_OK) {
		svc_reply_esc(r, e == ESC_ERR_USAGE ? ESC_ERR_INTERNAL : e);
		return -1;
	}
	snprintf(a->actor, sizeof(a->actor), "est:otp:%s", grant.name);
	snprintf(r->actor, sizeof(r->actor), "%s", a->actor); /* the password's name, never the password */
	snprintf(a->otp_name, sizeof(a->otp_name), "%s", grant.name);
	return 0;
}

/* The base64 body of the given media type, decoded.  Returns 0, or -1 after replying. */
static int
est_body(struct svc_request *r, const char *media, unsigned char **der, size_t *len)
{
	enum esc_err e;
	char msg[160];

	if (!svc_content_type_is(r, media)) {
		snprintf(msg, sizeof(msg), "expected Content-Type %s", media);
		svc_reply_error(r, 415, msg);
		return -1;
	}
	if (r->body == NULL || r->bodylen == 0) {
		svc_reply_error(r, 400, "empty request body");
		return -1;
	}
	if ((e = esc_b64_decode(r->w->ctx, (const char *)r->body, r->bodylen, der, len)) != ESC_OK) {
		svc_reply_esc(r, e);
		return -1;
	}
	return 0;
}

/* Decode and verify a PKCS#10 body.  Returns 0, or -1 after replying. */
static int
est_csr(struct svc_request *r, X509_REQ **csr)
{
	unsigned char *der = NULL;
	size_t len = 0;
	enum esc_err e;

	if (est_body(r, "application/pkcs10", &der, &len) != 0)
		return -1;
	e = esc_csr_decode(r->w->ctx, der, len, csr);
	free(der);
	if (e != ESC_OK) {
		if (e == ESC_ERR_CRYPTO)
			svc_reply_error(r, 400, "the certification request's signature does not verify");
		else
			svc_reply_esc(r, e);
		return -1;
	}
	return 0;
}

static int
issue(struct svc_request *r, const struct esc_profile *p, struct est_auth *a, EVP_PKEY *pub, EVP_PKEY *key,
      enum esc_archive_source source, X509 **cert)
{
	struct esc_enroll_request req;
	struct esc_archive_info info;
	enum esc_err e;

	memset(&req, 0, sizeof(req));
	req.profile = p;
	req.actor = a->actor;
	req.subject = a->subject;
	req.pub = pub;
	req.key = key;
	req.source = source;
	req.otp_name = a->otp_name[0] ? a->otp_name : NULL;
	if ((e = esc_enroll_issue(r->w->ctx, r->w->st, r->w->keeper, &req, cert, &info)) != ESC_OK) {
		svc_reply_esc(r, e);
		return -1;
	}
	{
		char *serial = esc_cert_serial_hex(*cert);

		svc_log(r->w, ESC_LOG_INFO, "req=%s issued serial=%s profile=%s actor=%s archived=%s", r->id,
			serial != NULL ? serial : "?", p->name, a->actor, key != NULL ? info.id : "no");
		free(serial);
	}
	return 0;
}

static void
est_simpleenroll(struct svc_request *r, const struct esc_profile *p, int reenroll)
{
	struct est_auth a;
	X509_REQ *csr = NULL;
	X509 *cert = NULL;
	char msg[200];

	memset(&a, 0, sizeof(a));
	if (p->archival) {
		snprintf(msg, sizeof(msg),
			 "profile '%s' requires key archival: enroll with /fullcmc (your key, encrypted to the CA "
			 "transport certificate) or /serverkeygen",
			 p->name);
		svc_reply_error(r, 403, msg);
		return;
	}
	if (reenroll && r->client_cert == NULL) {
		svc_reply_error(r, 401, "re-enrollment needs the TLS client certificate being renewed");
		return;
	}
	if (est_authenticate(r, p, &a) != 0 || est_csr(r, &csr) != 0)
		goto out;
	if (reenroll && X509_NAME_cmp(X509_REQ_get_subject_name(csr), a.subject) != 0) {
		svc_reply_error(r, 400,
				"a re-enrollment request must carry the subject of the certificate being renewed");
		goto out;
	}
	if (issue(r, p, &a, X509_REQ_get0_pubkey(csr), NULL, ESC_SOURCE_ENROLL_CLIENT, &cert) != 0)
		goto out;
	reply_certs(r, CT_CERTS, &cert, 1);
out:
	X509_free(cert);
	X509_REQ_free(csr);
	auth_clear(&a);
}

static void
est_fullcmc(struct svc_request *r, const struct esc_profile *p)
{
	struct esc_ctx *ctx = r->w->ctx;
	struct est_auth a;
	unsigned char *der = NULL, *env = NULL;
	size_t len = 0, envlen = 0;
	X509_REQ *csr = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	enum esc_err e;
	char msg[200];

	memset(&a, 0, sizeof(a));
	if (p->signing) {
		snprintf(msg, sizeof(msg), "profile '%s' is a signing profile: signing keys are never archived",
			 p->name);
		svc_reply_error(r, 403, msg);
		return;
	}
	if (est_authenticate(r, p, &a) != 0 || est_body(r, "application/pkcs7-mime", &der, &len) != 0)
		goto out;
	if ((e = esc_cmc_request_parse(ctx, der, len, &csr, &env, &envlen)) != ESC_OK) {
		if (e == ESC_ERR_CRYPTO)
			svc_reply_error(r, 400, "the certification request's signature does not verify");
		else
			svc_reply_esc(r, e);
		goto out;
	}
	if ((e = esc_profile_check_key(ctx, p, X509_REQ_get0_pubkey(csr))) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if ((e = esc_keeper_open_transport(ctx, r->w->keeper, env, envlen, &key)) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if (EVP_PKEY_eq(X509_REQ_get0_pubkey(csr), key) != 1) {
		svc_reply_error(r, 400,
				"the encrypted private key does not match the certification request's public key");
		goto out;
	}
	if (issue(r, p, &a, X509_REQ_get0_pubkey(csr), key, ESC_SOURCE_ENROLL_CLIENT, &cert) != 0)
		goto out;
	reply_certs(r, CT_CMC_RESPONSE, &cert, 1);
out:
	ERR_clear_error();
	EVP_PKEY_free(key);
	X509_free(cert);
	X509_REQ_free(csr);
	free(der);
	free(env);
	auth_clear(&a);
}

/* Append s to the secure buffer buf (capacity cap), failing on overflow. */
static int
sappend(unsigned char *buf, size_t cap, size_t *len, const void *s, size_t n)
{
	if (n > cap - *len)
		return -1;
	memcpy(buf + *len, s, n);
	*len += n;
	return 0;
}

/* Append one base64 part of a multipart/mixed body. */
static int
sappend_part(unsigned char *buf, size_t cap, size_t *len, const char *boundary, const char *ctype, const char *b64,
	     size_t b64len)
{
	char hdr[256];
	int n = snprintf(hdr, sizeof(hdr), "--%s\r\nContent-Type: %s\r\nContent-Transfer-Encoding: base64\r\n\r\n",
			 boundary, ctype);

	if (n < 0 || (size_t)n >= sizeof(hdr))
		return -1;
	return sappend(buf, cap, len, hdr, (size_t)n) != 0 || sappend(buf, cap, len, b64, b64len) != 0 ? -1 : 0;
}

/* The client certificate's subject key identifier equals kid? */
static int
client_kid_matches(X509 *cert, const unsigned char *kid, size_t kidlen)
{
	const ASN1_OCTET_STRING *ski = cert != NULL ? X509_get0_subject_key_id(cert) : NULL;

	return ski != NULL && (size_t)ASN1_STRING_length(ski) == kidlen &&
	       memcmp(ASN1_STRING_get0_data(ski), kid, kidlen) == 0;
}

static void
est_serverkeygen(struct svc_request *r, const struct esc_profile *p)
{
	struct esc_ctx *ctx = r->w->ctx;
	struct est_auth a;
	X509_REQ *csr = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	unsigned char *kid = NULL, *p8 = NULL, *keyder = NULL, *certsder = NULL, *body = NULL;
	char *keyb64 = NULL, *certsb64 = NULL, boundary[40], hdr[256], ctype[128], msg[200];
	size_t kidlen = 0, keyderlen = 0, certsderlen = 0, keyb64len = 0, certsb64len = 0, cap = 0, len = 0;
	int p8len = 0, i, symmetric = 0;
	unsigned char rnd[12];
	enum esc_err e;

	memset(&a, 0, sizeof(a));
	if (p->keygen == 0) {
		snprintf(msg, sizeof(msg), "profile '%s' does not generate keys: its keys are made by their owner",
			 p->name);
		svc_reply_error(r, 403, msg);
		return;
	}
	if (est_authenticate(r, p, &a) != 0 || est_csr(r, &csr) != 0)
		goto out;
	/*
	 * Everything that can refuse the request is decided before the key is
	 * generated and the certificate issued: a refusal stores nothing.
	 */
	if ((e = esc_csr_wants_symmetric(ctx, csr, &symmetric)) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if (symmetric) {
		/* RFC 7030 §4.4.1.1: no key shared with this server, and never the key in clear instead. */
		svc_reply_error(r, 400,
				"the request asks for the key encrypted with a symmetric key "
				"(DecryptKeyIdentifier): this service has no keys shared with clients; ask "
				"without it, or with AsymmetricDecryptKeyIdentifier");
		goto out;
	}
	if ((e = esc_csr_asymmetric_kid(ctx, csr, &kid, &kidlen)) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if (kid != NULL && !client_kid_matches(r->client_cert, kid, kidlen)) {
		svc_reply_error(r, 400,
				"the request asks for the key encrypted to a key identifier that is not "
				"the TLS client certificate's");
		goto out;
	}
	if (kid != NULL && (e = esc_est_key_recipient_check(ctx, r->client_cert)) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if ((e = esc_profile_generate_key(ctx, p, &key)) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if (issue(r, p, &a, key, key, ESC_SOURCE_ENROLL_SERVER, &cert) != 0)
		goto out;

	if (kid != NULL) {
		/* RFC 7030 §4.4.2: EnvelopedData { SignedData by the CA { AsymmetricKeyPackage } } to the client. */
		if ((e = esc_keeper_seal_server_key(ctx, r->w->keeper, key, cert, r->client_cert, &keyder,
						    &keyderlen)) != ESC_OK) {
			svc_reply_esc(r, e);
			goto out;
		}
	} else {
		/* The key as PKCS#8 DER, in secure memory. */
		PKCS8_PRIV_KEY_INFO *inf = EVP_PKEY2PKCS8(key);
		unsigned char *q;

		if (inf == NULL || (p8len = i2d_PKCS8_PRIV_KEY_INFO(inf, NULL)) <= 0 ||
		    (p8 = OPENSSL_secure_malloc((size_t)p8len)) == NULL) {
			PKCS8_PRIV_KEY_INFO_free(inf);
			svc_reply_error(r, 500, "cannot encode the generated key");
			goto out;
		}
		q = p8;
		i2d_PKCS8_PRIV_KEY_INFO(inf, &q);
		PKCS8_PRIV_KEY_INFO_free(inf);
	}
	if ((e = esc_b64_encode(ctx, kid != NULL ? keyder : p8, kid != NULL ? keyderlen : (size_t)p8len, &keyb64,
				&keyb64len)) != ESC_OK ||
	    (e = esc_certs_only_build(ctx, &cert, 1, &certsder, &certsderlen)) != ESC_OK ||
	    (e = esc_b64_encode(ctx, certsder, certsderlen, &certsb64, &certsb64len)) != ESC_OK) {
		svc_reply_esc(r, e);
		goto out;
	}
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		svc_reply_error(r, 500, "no randomness");
		goto out;
	}
	strcpy(boundary, "esc-");
	for (i = 0; i < (int)sizeof(rnd); i++)
		snprintf(boundary + 4 + 2 * i, 3, "%02x", rnd[i]);
	cap = keyb64len + certsb64len + 1024;
	if ((body = OPENSSL_secure_malloc(cap)) == NULL) {
		svc_reply_error(r, 503, "out of memory");
		goto out;
	}
	if (sappend_part(body, cap, &len, boundary, kid != NULL ? CT_SERVER_KEY : "application/pkcs8", keyb64,
			 keyb64len) != 0 ||
	    sappend_part(body, cap, &len, boundary, CT_CERTS, certsb64, certsb64len) != 0)
		goto toolong;
	snprintf(hdr, sizeof(hdr), "--%s--\r\n", boundary);
	if (sappend(body, cap, &len, hdr, strlen(hdr)) != 0)
		goto toolong;
	snprintf(ctype, sizeof(ctype), "multipart/mixed; boundary=%s", boundary);
	/* Only the first len bytes were ever written: wiping those is wiping all. */
	svc_reply_secret(r, 200, ctype, body, len);
	body = NULL; /* the reply wipes and frees it */
	goto out;
toolong:
	svc_reply_error(r, 500, "response too large");
out:
	ERR_clear_error();
	if (body != NULL)
		OPENSSL_secure_clear_free(body, cap);
	if (keyb64 != NULL) {
		OPENSSL_cleanse(keyb64, keyb64len);
		free(keyb64);
	}
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, (size_t)p8len);
	free(keyder);
	free(certsder);
	free(certsb64);
	free(kid);
	EVP_PKEY_free(key);
	X509_free(cert);
	X509_REQ_free(csr);
	auth_clear(&a);
}

void
svc_est_handle(struct svc_request *r, const char *label, const char *op)
{
	const struct esc_profile *p = esc_profile_find(label);
	int get = strcmp(op, "cacerts") == 0 || strcmp(op, "csrattrs") == 0 || strcmp(op, "transportcert") == 0;
	int post = strcmp(op, "simpleenroll") == 0 || strcmp(op, "simplereenroll") == 0 ||
		   strcmp(op, "serverkeygen") == 0 || strcmp(op, "fullcmc") == 0;

	if (!get && !post) {
		svc_reply_error(r, 404, "no such EST operation");
		return;
	}
	if (p == NULL || !p->enrollable) {
		svc_reply_error(r, 404, "no such EST label (certificate profile)");
		return;
	}
	if ((get && r->method != EVHTTP_REQ_GET) || (post && r->method != EVHTTP_REQ_POST)) {
		svc_add_header(r, "Allow", get ? "GET" : "POST");
		svc_reply_error(r, 405, "method not allowed");
		return;
	}
	if (svc_worker_ready(r->w, r) != 0)
		return;
	if (strcmp(op, "cacerts") == 0)
		est_cacerts(r);
	else if (strcmp(op, "csrattrs") == 0)
		est_csrattrs(r, p);
	else if (strcmp(op, "transportcert") == 0)
		est_transportcert(r);
	else if (strcmp(op, "simpleenroll") == 0)
		est_simpleenroll(r, p, 0);
	else if (strcmp(op, "simplereenroll") == 0)
		est_simpleenroll(r, p, 1);
	else if (strcmp(op, "serverkeygen") == 0)
		est_serverkeygen(r, p);
	else
		est_fullcmc(r, p);
}
