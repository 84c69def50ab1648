/*
 * The client side of EST (est.h, "Client side"): what p11escrow est and
 * the benchmark need to build requests and to check what a server answers.
 * Everything a server sends is bounded (ESC_EST_REPLY_MAX) and checked
 * before use; a server-generated private key is decoded in the secure heap.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/est.h>

#include "internal.h"

/* RFC 2046 §5.1.1: a boundary is 1..70 characters. */
#define BOUNDARY_MAX 70
/* At most this many parts are looked at (a /serverkeygen answer has two). */
#define PARTS_MAX 8
/* The longest header block of one part. */
#define PART_HEADERS_MAX 1024

enum esc_err
esc_est_csr_build(struct esc_ctx *ctx, EVP_PKEY *key, const X509_NAME *subject, X509_REQ **out)
{
	const EVP_MD *md = EVP_sha256();
	X509_REQ *req = NULL;
	X509_NAME *empty = NULL;
	enum esc_err r;

	if (key == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "a certification request needs a key");
	/* As the profiles' CsrAttrs advertise; a P-384 key is signed with SHA-384, as the CA signs with one. */
	if (EVP_PKEY_is_a(key, "EC") && EVP_PKEY_get_bits(key) == 384)
		md = EVP_sha384();
	if (subject == NULL && (subject = empty = X509_NAME_new()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((req = X509_REQ_new()) == NULL || X509_REQ_set_version(req, 0) != 1 ||
	    X509_REQ_set_subject_name(req, subject) != 1 || X509_REQ_set_pubkey(req, key) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the certification request");
		goto out;
	}
	if (X509_REQ_sign(req, key, md) <= 0 || X509_REQ_verify(req, key) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot sign the certification request");
		goto out;
	}
	*out = req;
	req = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_REQ_free(req);
	X509_NAME_free(empty);
	return r;
}

enum esc_err
esc_est_certs_decode(struct esc_ctx *ctx, const char *b64, size_t len, STACK_OF(X509) **out)
{
	unsigned char *der = NULL;
	size_t derlen = 0;
	enum esc_err r;

	if ((r = esc_b64_decode(ctx, b64, len, &der, &derlen)) != ESC_OK)
		return r;
	r = esc_certs_only_parse(ctx, der, derlen, out);
	free(der);
	return r;
}

/* Does s (n bytes) start with the text t, ignoring case? */
static int
starts_with_ci(const char *s, size_t n, const char *t)
{
	size_t tl = strlen(t);

	return n >= tl && strncasecmp(s, t, tl) == 0;
}

/* The boundary parameter of a multipart Content-Type into b (BOUNDARY_MAX + 1), or -1. */
static int
boundary_of(const char *ctype, char *b)
{
	const char *p;
	size_t n;

	if (ctype == NULL || !starts_with_ci(ctype, strlen(ctype), "multipart/mixed"))
		return -1;
	for (p = ctype; (p = strchr(p, ';')) != NULL;) {
		p++;
		p += strspn(p, " \t");
		if (strncasecmp(p, "boundary=", 9) != 0)
			continue;
		p += 9;
		if (*p == '"') {
			p++;
			n = strcspn(p, "\"");
			if (p[n] != '"')
				return -1;
		} else {
			n = strcspn(p, "; \t");
		}
		if (n == 0 || n > BOUNDARY_MAX)
			return -1;
		memcpy(b, p, n);
		b[n] = '\0';
		return 0;
	}
	return -1;
}

/* One part of a multipart body: its Content-Type and its content (pointers into the body). */
struct part {
	char ctype[128];
	int encoding_ok; /* no Content-Transfer-Encoding, or base64 (RFC 8951) */
	const char *content;
	size_t len;
};

/* The end of the line starting at p (its '\n', or end). */
static const char *
line_end(const char *p, const char *end)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));

	return nl != NULL ? nl : end;
}

/* The headers of a part, from hdr to hend: Content-Type and Content-Transfer-Encoding. */
static void
part_headers(struct part *pt, const char *hdr, const char *hend)
{
	const char *p, *e, *v;
	size_t n;

	pt->encoding_ok = 1;
	for (p = hdr; p < hend; p = e + 1) {
		e = line_end(p, hend);
		n = (size_t)(e - p);
		if (n > 0 && p[n - 1] == '\r')
			n--;
		if (starts_with_ci(p, n, "Content-Type:")) {
			v = p + 13;
			while (v < p + n && (*v == ' ' || *v == '\t'))
				v++;
			snprintf(pt->ctype, sizeof(pt->ctype), "%.*s", (int)(p + n - v), v);
		} else if (starts_with_ci(p, n, "Content-Transfer-Encoding:")) {
			v = p + 26;
			while (v < p + n && (*v == ' ' || *v == '\t'))
				v++;
			pt->encoding_ok = (size_t)(p + n - v) == 6 && strncasecmp(v, "base64", 6) == 0;
		}
	}
}

/*
 * The parts of body (RFC 2046 §5.1.1): each delimiter "--boundary" at the
 * start of a line, the part's headers up to an empty line, its content up
 * to the line break before the next delimiter; "--boundary--" closes.
 * Returns the number of parts, or -1 if malformed or unterminated.
 */
static int
split_parts(const char *body, size_t len, const char *boundary, struct part *parts, int max)
{
	const char *end = body + len, *p = body, *d, *hend, *c, *next;
	char delim[BOUNDARY_MAX + 3];
	size_t dl;
	int n = 0;

	dl = (size_t)snprintf(delim, sizeof(delim), "--%s", boundary);
	/* The first delimiter: at the start, or after the preamble's line break. */
	for (d = NULL; p + dl <= end; p = line_end(p, end) + 1) {
		if (memcmp(p, delim, dl) == 0) {
			d = p;
			break;
		}
		if (line_end(p, end) == end)
			break;
	}
	if (d == NULL)
		return -1;
	for (;;) {
		p = d + dl;
		if (end - p >= 2 && p[0] == '-' && p[1] == '-')
			return n; /* the close delimiter */
		/* Transport padding, then the line break ending the delimiter line. */
		p = line_end(p, end);
		if (p == end)
			return -1;
		p++;
		/* Headers up to an empty line. */
		for (hend = p;;) {
			const char *le;

			if (hend >= end || hend - p > PART_HEADERS_MAX)
				return -1;
			if (*hend == '\n' || (*hend == '\r' && hend + 1 < end && hend[1] == '\n'))
				break;
			if ((le = line_end(hend, end)) == end)
				return -1;
			hend = le + 1;
		}
		c = hend + (*hend == '\r' ? 2 : 1);
		/* The next delimiter starts a line: find "\n--boundary". */
		for (next = c;; next++) {
			next = memchr(next, '\n', (size_t)(end - next));
			if (next == NULL || (size_t)(end - next - 1) < dl)
				return -1;
			if (memcmp(next + 1, delim, dl) == 0)
				break;
		}
		if (n == max)
			return -1;
		memset(&parts[n], 0, sizeof(parts[n]));
		part_headers(&parts[n], p, hend);
		parts[n].content = c;
		/* The line break before the delimiter belongs to it. */
		parts[n].len = (size_t)(next - c);
		if (parts[n].len > 0 && c[parts[n].len - 1] == '\r')
			parts[n].len--;
		n++;
		d = next + 1;
	}
}

/* The PKCS#8 key of base64 text, decoded in the secure heap. */
static enum esc_err
key_decode(struct esc_ctx *ctx, const char *b64, size_t len, EVP_PKEY **out)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	PKCS8_PRIV_KEY_INFO *inf = NULL;
	EVP_PKEY *key = NULL;
	size_t derlen = 0;
	enum esc_err r;

	if ((r = esc_b64_decode_secure(ctx, b64, len, ESC_EST_BODY_MAX, &der, &derlen)) != ESC_OK)
		return r;
	p = der;
	if ((inf = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)derlen)) == NULL || p != der + derlen ||
	    (key = EVP_PKCS82PKEY(inf)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the key part is not a PKCS#8 private key");
		goto out;
	}
	*out = key;
	key = NULL; /* transferred */
	r = ESC_OK;
out:
	EVP_PKEY_free(key);
	PKCS8_PRIV_KEY_INFO_free(inf); /* frees its key copy with cleansing */
	OPENSSL_secure_clear_free(der, derlen);
	return r;
}

enum esc_err
esc_est_serverkeygen_parse(struct esc_ctx *ctx, const char *ctype, const unsigned char *body, size_t len,
			   EVP_PKEY **key, STACK_OF(X509) **certs)
{
	struct part parts[PARTS_MAX];
	char boundary[BOUNDARY_MAX + 1];
	STACK_OF(X509) *sk = NULL;
	EVP_PKEY *k = NULL;
	const struct part *kp = NULL, *cp = NULL;
	enum esc_err r;
	int n, i;

	if (body == NULL || key == NULL || certs == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "no serverkeygen answer");
	if (len == 0 || len > ESC_EST_REPLY_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "a serverkeygen answer must be 1..%d bytes",
				 ESC_EST_REPLY_MAX);
	if (boundary_of(ctype, boundary) != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "the serverkeygen answer is not multipart/mixed with a boundary (RFC 7030 §4.4.2)");
	if ((n = split_parts((const char *)body, len, boundary, parts, PARTS_MAX)) < 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the serverkeygen answer is not a well-formed multipart body");
	for (i = 0; i < n; i++) {
		const struct part *pt = &parts[i];
		size_t cl = strlen(pt->ctype);

		if (starts_with_ci(pt->ctype, cl, "application/pkcs8")) {
			if (kp != NULL)
				return esc_error(ctx, ESC_ERR_BAD_INPUT, "the serverkeygen answer has two key parts");
			kp = pt;
		} else if (starts_with_ci(pt->ctype, cl, "application/pkcs7-mime") &&
			   strstr(pt->ctype, "server-generated-key") != NULL) {
			/* RFC 7030 §4.4.2's encrypted key: only for a request that asked for it, as ours never do. */
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the serverkeygen answer holds the key encrypted (server-generated-key), "
					 "which was not asked for");
		} else if (starts_with_ci(pt->ctype, cl, "application/pkcs7-mime")) {
			if (cp != NULL)
				return esc_error(ctx, ESC_ERR_BAD_INPUT,
						 "the serverkeygen answer has two certificate parts");
			cp = pt;
		}
	}
	if (kp == NULL || cp == NULL)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the serverkeygen answer lacks its %s part",
				 kp == NULL ? "application/pkcs8 key" : "certs-only certificate");
	if (!kp->encoding_ok || !cp->encoding_ok)
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "a part of the serverkeygen answer has a Content-Transfer-Encoding other than base64");
	if ((r = key_decode(ctx, kp->content, kp->len, &k)) != ESC_OK ||
	    (r = esc_est_certs_decode(ctx, cp->content, cp->len, &sk)) != ESC_OK)
		goto out;
	*key = k;
	*certs = sk;
	k = NULL;
	sk = NULL; /* transferred */
	r = ESC_OK;
out:
	EVP_PKEY_free(k);
	sk_X509_pop_free(sk, X509_free);
	return r;
}

/* Verify cert's chain up to the CA certificates cacerts (all trusted: the first may sit below an external root). */
static enum esc_err
chain_check(struct esc_ctx *ctx, X509 *cert, STACK_OF(X509) *cacerts, const char *what)
{
	X509_STORE *store = NULL;
	X509_STORE_CTX *vctx = NULL;
	enum esc_err r;
	int i, err;

	if ((store = X509_STORE_new()) == NULL || (vctx = X509_STORE_CTX_new()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < sk_X509_num(cacerts); i++)
		if (X509_STORE_add_cert(store, sk_X509_value(cacerts, i)) != 1) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot use the CA certificates");
			goto out;
		}
	X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_X509_STRICT);
	if (X509_STORE_CTX_init(vctx, store, cert, NULL) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot verify the %s", what);
		goto out;
	}
	if (X509_verify_cert(vctx) != 1) {
		err = X509_STORE_CTX_get_error(vctx);
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the %s does not verify with the CA certificates: %s", what,
			      X509_verify_cert_error_string(err));
		goto out;
	}
	/* Issued by the CA itself, the first of cacerts (the certificate /cacerts answers first). */
	if (!esc_cert_issued_by(cert, sk_X509_value(cacerts, 0))) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the %s is not issued by the CA certificate", what);
		goto out;
	}
	r = ESC_OK;
out:
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(store);
	return r;
}

enum esc_err
esc_est_cert_check(struct esc_ctx *ctx, X509 *cert, STACK_OF(X509) *cacerts, EVP_PKEY *key)
{
	enum esc_err r;

	if (cert == NULL || sk_X509_num(cacerts) < 1)
		return esc_error(ctx, ESC_ERR_USAGE, "no certificate, or no CA certificate to check it with");
	if ((r = chain_check(ctx, cert, cacerts, "certificate issued")) != ESC_OK)
		return r;
	if (key != NULL && !esc_cert_matches_key(cert, key))
		return esc_error(ctx, ESC_ERR_MISMATCH, "the certificate issued is not for the key enrolled");
	return ESC_OK;
}

enum esc_err
esc_est_transport_check(struct esc_ctx *ctx, X509 *transport, STACK_OF(X509) *cacerts)
{
	EVP_PKEY *pub;
	uint32_t ku;
	enum esc_err r;

	if (transport == NULL || sk_X509_num(cacerts) < 1)
		return esc_error(ctx, ESC_ERR_USAGE, "no transport certificate, or no CA certificate to check it with");
	if ((r = chain_check(ctx, transport, cacerts, "transport certificate")) != ESC_OK)
		return r;
	if (X509_check_ca(transport) != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the transport certificate is a CA certificate");
	if ((pub = X509_get0_pubkey(transport)) == NULL) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the transport certificate has no usable public key");
	}
	/* A key is sent to it: key transport (RSA) or key agreement (EC), as the CA issues it (architecture.md). */
	ku = X509_get_key_usage(transport);
	if (ku == UINT32_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the transport certificate has no key usage");
	if (EVP_PKEY_is_a(pub, "RSA") && (ku & KU_KEY_ENCIPHERMENT) == 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the transport certificate's key usage lacks keyEncipherment");
	if (EVP_PKEY_is_a(pub, "EC") && (ku & KU_KEY_AGREEMENT) == 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the transport certificate's key usage lacks keyAgreement");
	if (!EVP_PKEY_is_a(pub, "RSA") && !EVP_PKEY_is_a(pub, "EC"))
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the transport certificate's key is neither RSA nor EC");
	return ESC_OK;
}

enum esc_err
esc_est_key_pem(struct esc_ctx *ctx, EVP_PKEY *key, const struct esc_secret *password, char **pem, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	X509_ALGOR *pbe = NULL;
	X509_SIG *enc = NULL;
	BIO *b = NULL;
	BUF_MEM *mem = NULL;
	char *buf = NULL;
	enum esc_err r;

	if (key == NULL || password == NULL || esc_secret_len(password) == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "a key file needs a key and a password that is not empty");
	if ((p8 = EVP_PKEY2PKCS8(key)) == NULL ||
	    (pbe = PKCS5_pbe2_set_iv(EVP_aes_256_cbc(), ESC_EST_KDF_ITER, NULL, 0, NULL, NID_hmacWithSHA256)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encrypt the private key");
		goto out;
	}
	/* Takes pbe on success only. */
	if ((enc = PKCS8_set0_pbe(esc_secret_str(password), (int)esc_secret_len(password), p8, pbe)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encrypt the private key");
		goto out;
	}
	pbe = NULL;
	if ((b = BIO_new(BIO_s_mem())) == NULL || PEM_write_bio_PKCS8(b, enc) != 1 || BIO_get_mem_ptr(b, &mem) != 1 ||
	    mem == NULL || (buf = malloc(mem->length + 1)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot write the encrypted private key");
		goto out;
	}
	memcpy(buf, mem->data, mem->length);
	buf[mem->length] = '\0';
	*pem = buf;
	*len = mem->length;
	buf = NULL; /* transferred */
	r = ESC_OK;
out:
	free(buf);
	BIO_free(b);
	X509_SIG_free(enc);
	X509_ALGOR_free(pbe);
	PKCS8_PRIV_KEY_INFO_free(p8); /* frees its key copy with cleansing */
	return r;
}

enum esc_err
esc_est_key_p12(struct esc_ctx *ctx, EVP_PKEY *key, X509 *cert, STACK_OF(X509) *chain, const char *name,
		const struct esc_secret *password, unsigned char **der, size_t *len)
{
	PKCS12 *p12 = NULL;
	unsigned char *buf = NULL, *p;
	enum esc_err r;
	int n;

	if (key == NULL || cert == NULL || password == NULL || esc_secret_len(password) == 0)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a PKCS#12 needs a key, its certificate and a password that is not empty");
	if (!esc_cert_matches_key(cert, key))
		return esc_error(ctx, ESC_ERR_USAGE, "the key is not the certificate's");
	p12 = PKCS12_create(esc_secret_str(password), name, key, cert, chain, NID_aes_256_cbc, NID_aes_256_cbc,
			    ESC_EST_KDF_ITER, -1, 0);
	if (p12 == NULL ||
	    !PKCS12_set_mac(p12, esc_secret_str(password), -1, NULL, 0, ESC_EST_KDF_ITER, EVP_sha256())) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the PKCS#12");
		goto out;
	}
	if ((n = i2d_PKCS12(p12, NULL)) <= 0 || (buf = malloc((size_t)n)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the PKCS#12");
		goto out;
	}
	p = buf;
	if (i2d_PKCS12(p12, &p) != n) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the PKCS#12");
		goto out;
	}
	*der = buf;
	*len = (size_t)n;
	buf = NULL; /* transferred */
	r = ESC_OK;
out:
	free(buf);
	PKCS12_free(p12);
	return r;
}
