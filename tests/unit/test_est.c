/*
 * Unit tests: EST and CMC codecs (est.h) with software keys: base64 as RFC
 * 8951 has it, PKCS#10 decoding, the Full PKI Request for archival built and
 * parsed back (and its envelope opened with stock CMS_decrypt), certs-only
 * responses, CsrAttrs (also what each profile's say), and the encrypted
 * server-generated key of RFC 7030 §4.4.2 opened and verified with stock
 * CMS_decrypt and CMS_verify.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/est.h>

#include "testkeys.h"

#define OID_KID "1.2.840.113549.1.9.16.2.54"
#define OID_SYMMETRIC_KID "1.2.840.113549.1.9.16.2.37"
#define OID_A_KEY_PACKAGE "2.16.840.1.101.2.1.2.78.5"

struct fixture {
	struct esc_ctx *ctx;
	struct test_keys k;	 /* transport certificates: k.rsa_cert (RSA-2048), k.ec_cert (P-256) */
	EVP_PKEY *enrollee;	 /* the key to archive (P-256) */
	EVP_PKEY *enrollee_rsa;	 /* another one (RSA-2048) */
	X509_REQ *csr, *csr_rsa; /* their requests */
};

/* A PKCS#10 request for key, with an AsymmetricDecryptKeyIdentifier of type attr_type if kid is given. */
static X509_REQ *
make_csr(EVP_PKEY *key, int attr_type, const unsigned char *kid, int kidlen)
{
	X509_REQ *req = X509_REQ_new();
	X509_NAME *name = X509_NAME_new();

	if (req == NULL || name == NULL ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)"enrollee", -1, -1, 0) != 1 ||
	    X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, key) != 1 ||
	    (kid != NULL && X509_REQ_add1_attr_by_txt(req, OID_KID, attr_type, kid, kidlen) != 1) ||
	    X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
		X509_REQ_free(req);
		req = NULL;
	}
	X509_NAME_free(name);
	return req;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL || esc_ctx_new(&f->ctx) != ESC_OK)
		return -1;
	if (test_keys_make(f->ctx, &f->k, 2048, "CN=Transport RSA", "CN=Transport EC", "CN=Other") != 0)
		return -1;
	f->enrollee = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	f->enrollee_rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	if (f->enrollee == NULL || f->enrollee_rsa == NULL)
		return -1;
	f->csr = make_csr(f->enrollee, 0, NULL, 0);
	f->csr_rsa = make_csr(f->enrollee_rsa, 0, NULL, 0);
	if (f->csr == NULL || f->csr_rsa == NULL)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	X509_REQ_free(f->csr);
	X509_REQ_free(f->csr_rsa);
	EVP_PKEY_free(f->enrollee);
	EVP_PKEY_free(f->enrollee_rsa);
	test_keys_free(&f->k);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

/* i2d into a malloc'ed buffer (for comparisons). */
static unsigned char *
req_der(X509_REQ *req, size_t *len)
{
	unsigned char *tmp = NULL, *out;
	int n = i2d_X509_REQ(req, &tmp);

	assert_true(n > 0);
	out = malloc((size_t)n);
	assert_non_null(out);
	memcpy(out, tmp, (size_t)n);
	OPENSSL_free(tmp);
	*len = (size_t)n;
	return out;
}

/* A DER TLV of tag/class (constructed for SEQUENCE, SET and context tags) holding up to three pieces. */
static unsigned char *
tlv(int tag, int xclass, const unsigned char *c1, size_t l1, const unsigned char *c2, size_t l2,
    const unsigned char *c3, size_t l3, size_t *outlen)
{
	size_t clen = l1 + l2 + l3;
	int cons = xclass == V_ASN1_CONTEXT_SPECIFIC || tag == V_ASN1_SEQUENCE || tag == V_ASN1_SET;
	int total = ASN1_object_size(cons, (int)clen, tag);
	unsigned char *out = malloc((size_t)total), *p = out;

	assert_non_null(out);
	ASN1_put_object(&p, cons, (int)clen, tag, xclass);
	if (l1)
		memcpy(p, c1, l1), p += l1;
	if (l2)
		memcpy(p, c2, l2), p += l2;
	if (l3)
		memcpy(p, c3, l3), p += l3;
	assert_int_equal(p - out, total);
	*outlen = (size_t)total;
	return out;
}

/* The content of a TLV (skipping its header). */
static const unsigned char *
tlv_content(const unsigned char *der, size_t len, size_t *clen)
{
	const unsigned char *p = der;
	long l;
	int tag, xclass;

	assert_false(ASN1_get_object(&p, &l, &tag, &xclass, (long)len) & 0x80);
	*clen = (size_t)l;
	return p;
}

/* ---- base64 ------------------------------------------------------------------ */

static void
expect_b64(struct fixture *f, const char *text, size_t textlen, const char *want, size_t wantlen)
{
	unsigned char *out = NULL;
	size_t outlen = 0;

	assert_int_equal(esc_b64_decode(f->ctx, text, textlen, &out, &outlen), ESC_OK);
	assert_int_equal(outlen, wantlen);
	assert_memory_equal(out, want, wantlen);
	free(out);
}

static void
expect_b64_bad(struct fixture *f, const char *text, size_t textlen)
{
	unsigned char *out = NULL;
	size_t outlen = 0;

	assert_int_equal(esc_b64_decode(f->ctx, text, textlen, &out, &outlen), ESC_ERR_BAD_INPUT);
	assert_null(out);
	assert_int_equal(outlen, 0);
	/* The reason never quotes the input. */
	assert_null(strstr(esc_ctx_errmsg(f->ctx), "QQ"));
}

static void
test_b64_roundtrip(void **state)
{
	struct fixture *f = *state;
	static const size_t sizes[] = {1, 2, 3, 47, 48, 49, 95, 96, 97, 1000, 4096};
	unsigned char data[4096], *back;
	size_t i, j, len, backlen;
	char *text;

	for (i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7 + (i >> 8));
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		text = NULL;
		assert_int_equal(esc_b64_encode(f->ctx, data, sizes[i], &text, &len), ESC_OK);
		assert_int_equal(strlen(text), len);
		/* Lines of at most 64 characters, each ending in CRLF, the last one too. */
		assert_true(len >= 2 && text[len - 2] == '\r' && text[len - 1] == '\n');
		for (j = 0; j < len;) {
			size_t line = strcspn(text + j, "\r");

			assert_true(line > 0 && line <= 64);
			assert_true(text[j + line] == '\r' && text[j + line + 1] == '\n');
			if (j + line + 2 < len)
				assert_int_equal(line, 64);
			j += line + 2;
		}
		back = NULL;
		assert_int_equal(esc_b64_decode(f->ctx, text, len, &back, &backlen), ESC_OK);
		assert_int_equal(backlen, sizes[i]);
		assert_memory_equal(back, data, sizes[i]);
		free(back);
		free(text);
	}
	/* Nothing in, nothing out (an empty string). */
	assert_int_equal(esc_b64_encode(f->ctx, data, 0, &text, &len), ESC_OK);
	assert_int_equal(len, 0);
	assert_string_equal(text, "");
	free(text);
}

static void
test_b64_whitespace(void **state)
{
	struct fixture *f = *state;
	static const char lf[] = "TWFu\nTWE=\n";
	static const char crlf[] = "TWFu\r\nTWE=\r\n";
	static const char spaces[] = " \tT W\r\nF\tu  TW\nE =\r\n ";

	expect_b64(f, "TWFu", 4, "Man", 3);
	expect_b64(f, "TWE=", 4, "Ma", 2);
	expect_b64(f, "TQ==", 4, "M", 1);
	expect_b64(f, lf, sizeof(lf) - 1, "ManMa", 5);
	expect_b64(f, crlf, sizeof(crlf) - 1, "ManMa", 5);
	expect_b64(f, spaces, sizeof(spaces) - 1, "ManMa", 5);
}

static void
test_b64_bad_chars(void **state)
{
	struct fixture *f = *state;

	expect_b64_bad(f, "TWF-", 4); /* base64url's alphabet */
	expect_b64_bad(f, "TWF_", 4);
	expect_b64_bad(f, "TW.u", 4);
	expect_b64_bad(f, "TWFu\0", 5); /* NUL */
	expect_b64_bad(f, "TWFu\v", 5); /* only space, tab, CR and LF are blanks */
	expect_b64_bad(f, "TWFu\f", 5);
	expect_b64_bad(f, "TWFu\xc3\xa9", 6);
	expect_b64_bad(f, "QQ==!", 5);
}

static void
test_b64_bad_padding(void **state)
{
	struct fixture *f = *state;

	expect_b64_bad(f, "TWE", 3);  /* unpadded */
	expect_b64_bad(f, "TQ=", 3);  /* short padding */
	expect_b64_bad(f, "TW=u", 4); /* '=' inside */
	expect_b64_bad(f, "=TWF", 4);
	expect_b64_bad(f, "T===", 4); /* three pad characters */
	expect_b64_bad(f, "====", 4);
	expect_b64_bad(f, "TQ==TQ==", 8); /* padding, then more */
	expect_b64_bad(f, "TR==", 4);	  /* non-zero bits under the padding */
	expect_b64_bad(f, "TWF=", 4);
	expect_b64_bad(f, "TWFuT", 5); /* truncated group */
}

static void
test_b64_sizes(void **state)
{
	struct fixture *f = *state;
	unsigned char *data = calloc(1, ESC_EST_BODY_MAX + 3), *out = NULL;
	size_t len, outlen = 0;
	char *text = NULL;

	assert_non_null(data);
	/* Exactly the maximum decodes; one byte more does not. */
	assert_int_equal(esc_b64_encode(f->ctx, data, ESC_EST_BODY_MAX, &text, &len), ESC_OK);
	assert_int_equal(esc_b64_decode(f->ctx, text, len, &out, &outlen), ESC_OK);
	assert_int_equal(outlen, ESC_EST_BODY_MAX);
	free(out);
	free(text);
	out = NULL;
	outlen = 0;
	assert_int_equal(esc_b64_encode(f->ctx, data, ESC_EST_BODY_MAX + 1, &text, &len), ESC_OK);
	assert_int_equal(esc_b64_decode(f->ctx, text, len, &out, &outlen), ESC_ERR_BAD_INPUT);
	assert_null(out);
	free(text);
	assert_int_equal(esc_b64_encode(f->ctx, data, ESC_EST_BODY_MAX + 3, &text, &len), ESC_OK);
	assert_int_equal(esc_b64_decode(f->ctx, text, len, &out, &outlen), ESC_ERR_BAD_INPUT);
	assert_null(out);
	/* Another bound, given: the same text decodes under a larger one, and 10 bytes are the limit at 10. */
	assert_int_equal(esc_b64_decode_max(f->ctx, text, len, ESC_EST_BODY_MAX + 3, &out, &outlen), ESC_OK);
	assert_int_equal(outlen, ESC_EST_BODY_MAX + 3);
	free(out);
	out = NULL;
	free(text);
	assert_int_equal(esc_b64_encode(f->ctx, data, 10, &text, &len), ESC_OK);
	assert_int_equal(esc_b64_decode_max(f->ctx, text, len, 10, &out, &outlen), ESC_OK);
	free(out);
	out = NULL;
	assert_int_equal(esc_b64_decode_max(f->ctx, text, len, 9, &out, &outlen), ESC_ERR_BAD_INPUT);
	assert_null(out);
	free(text);
	free(data);
	/* Nothing but blanks, or nothing at all. */
	expect_b64_bad(f, " \r\n\t", 4);
	expect_b64_bad(f, "", 0);
}

/* ---- PKCS#10 ------------------------------------------------------------------- */

static void
test_csr_good(void **state)
{
	struct fixture *f = *state;
	X509_REQ *reqs[2] = {f->csr, f->csr_rsa}, *out;
	unsigned char *der, *der2;
	size_t i, len, len2;

	for (i = 0; i < 2; i++) {
		der = req_der(reqs[i], &len);
		out = NULL;
		assert_int_equal(esc_csr_decode(f->ctx, der, len, &out), ESC_OK);
		assert_non_null(out);
		der2 = req_der(out, &len2);
		assert_int_equal(len2, len);
		assert_memory_equal(der2, der, len);
		free(der2);
		free(der);
		X509_REQ_free(out);
	}
}

static void
test_csr_bad(void **state)
{
	struct fixture *f = *state;
	unsigned char *der, *longer, junk[64] = {0x30, 0x03, 0x02, 0x01, 0x01};
	X509_REQ *out = NULL;
	size_t len;

	der = req_der(f->csr_rsa, &len);
	/* The last byte is the RSA signature's: it no longer verifies. */
	der[len - 1] ^= 0x01;
	assert_int_equal(esc_csr_decode(f->ctx, der, len, &out), ESC_ERR_CRYPTO);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "the request's signature does not verify"));
	assert_null(out);
	der[len - 1] ^= 0x01;
	/* A byte of the signed part changed (inside the public key): still a CSR, signature wrong. */
	der[len / 2] ^= 0x01;
	assert_int_not_equal(esc_csr_decode(f->ctx, der, len, &out), ESC_OK);
	assert_null(out);
	der[len / 2] ^= 0x01;
	/* Trailing data. */
	longer = malloc(len + 1);
	assert_non_null(longer);
	memcpy(longer, der, len);
	longer[len] = 0;
	assert_int_equal(esc_csr_decode(f->ctx, longer, len + 1, &out), ESC_ERR_BAD_INPUT);
	assert_null(out);
	free(longer);
	/* Truncated, garbage, empty. */
	assert_int_equal(esc_csr_decode(f->ctx, der, len - 1, &out), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_csr_decode(f->ctx, junk, sizeof(junk), &out), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_csr_decode(f->ctx, junk, 0, &out), ESC_ERR_BAD_INPUT);
	assert_null(out);
	/* The untouched request still decodes. */
	assert_int_equal(esc_csr_decode(f->ctx, der, len, &out), ESC_OK);
	X509_REQ_free(out);
	free(der);
}

/*
 * A request for key with attributes a1 and a2 (DER Attribute each), put
 * together by hand with an empty signature: for the attribute parser only.
 */
static X509_REQ *
raw_csr(EVP_PKEY *key, const unsigned char *a1, size_t l1, const unsigned char *a2, size_t l2)
{
	static const unsigned char version[] = {0x02, 0x01, 0x00};
	static const unsigned char sigalg_sig[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
						   0x3d, 0x04, 0x03, 0x02, 0x03, 0x01, 0x00};
	unsigned char *spki = NULL, *name = NULL, *attrs, *head, *cri, *der;
	size_t attrslen, headlen, crilen, derlen;
	const unsigned char *p;
	X509_NAME *n = X509_NAME_new();
	X509_REQ *req;
	int spkilen, namelen;

	assert_non_null(n);
	assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"raw", -1, -1, 0),
			 1);
	namelen = i2d_X509_NAME(n, &name);
	spkilen = i2d_PUBKEY(key, &spki);
	assert_true(namelen > 0 && spkilen > 0);
	attrs = tlv(0, V_ASN1_CONTEXT_SPECIFIC, a1, l1, a2, l2, NULL, 0, &attrslen);
	head = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, version, sizeof(version), name, (size_t)namelen, spki,
		   (size_t)spkilen, &headlen);
	/* CertificationRequestInfo: the header's content, then the attributes. */
	p = tlv_content(head, headlen, &crilen);
	cri = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, p, crilen, attrs, attrslen, NULL, 0, &crilen);
	der = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, cri, crilen, sigalg_sig, sizeof(sigalg_sig), NULL, 0, &derlen);
	p = der;
	req = d2i_X509_REQ(NULL, &p, (long)derlen);
	assert_non_null(req);
	free(der);
	free(cri);
	free(head);
	free(attrs);
	OPENSSL_free(spki);
	OPENSSL_free(name);
	X509_NAME_free(n);
	return req;
}

static void
test_csr_kid(void **state)
{
	struct fixture *f = *state;
	static const unsigned char kid_in[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
	unsigned char *kid = (unsigned char *)"unchanged";
	size_t kidlen = 99;
	X509_REQ *req;

	/* Absent: NULL, and success. */
	assert_int_equal(esc_csr_asymmetric_kid(f->ctx, f->csr, &kid, &kidlen), ESC_OK);
	assert_null(kid);
	assert_int_equal(kidlen, 0);

	req = make_csr(f->enrollee, V_ASN1_OCTET_STRING, kid_in, sizeof(kid_in));
	assert_non_null(req);
	assert_int_equal(esc_csr_asymmetric_kid(f->ctx, req, &kid, &kidlen), ESC_OK);
	assert_int_equal(kidlen, sizeof(kid_in));
	assert_memory_equal(kid, kid_in, sizeof(kid_in));
	free(kid);
	/* A second value in the same attribute. */
	assert_int_equal(X509_ATTRIBUTE_set1_data(X509_REQ_get_attr(req, 0), V_ASN1_OCTET_STRING, kid_in, 4), 1);
	kid = NULL;
	assert_int_equal(esc_csr_asymmetric_kid(f->ctx, req, &kid, &kidlen), ESC_ERR_BAD_INPUT);
	assert_null(kid);
	X509_REQ_free(req);

	/* Not an OCTET STRING. */
	req = make_csr(f->enrollee, MBSTRING_UTF8, (const unsigned char *)"key-1", 5);
	assert_non_null(req);
	assert_int_equal(esc_csr_asymmetric_kid(f->ctx, req, &kid, &kidlen), ESC_ERR_BAD_INPUT);
	assert_null(kid);
	X509_REQ_free(req);

	/* Two attributes (OpenSSL refuses to add a second one: assembled by hand), or an empty identifier. */
	{
		static const unsigned char kid_attr[] = {0x30, 0x13, 0x06, 0x0b, 0x2a, 0x86, 0x48,
							 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02,
							 0x36, 0x31, 0x04, 0x04, 0x02, 0xab, 0xcd};
		static const unsigned char empty_attr[] = {0x30, 0x11, 0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
							   0x01, 0x09, 0x10, 0x02, 0x36, 0x31, 0x02, 0x04, 0x00};

		req = raw_csr(f->enrollee, kid_attr, sizeof(kid_attr), NULL, 0);
		assert_int_equal(esc_csr_asymmetric_kid(f->ctx, req, &kid, &kidlen), ESC_OK);
		assert_int_equal(kidlen, 2);
		assert_int_equal(kid[0], 0xab);
		assert_int_equal(kid[1], 0xcd);
		free(kid);
		X509_REQ_free(req);
		kid = NULL;
		req = raw_csr(f->enrollee, kid_attr, sizeof(kid_attr), kid_attr, sizeof(kid_attr));
		assert_int_equal(esc_csr_asymmetric_kid(f->ctx, req, &kid, &kidlen), ESC_ERR_BAD_INPUT);
		assert_null(kid);
		X509_REQ_free(req);
		req = raw_csr(f->enrollee, empty_attr, sizeof(empty_attr), NULL, 0);
		assert_int_equal(esc_csr_asymmetric_kid(f->ctx, req, &kid, &kidlen), ESC_ERR_BAD_INPUT);
		assert_null(kid);
		X509_REQ_free(req);
	}
}

/* ---- CMC Full PKI Request --------------------------------------------------------- */

static unsigned char *
pkcs8_der(EVP_PKEY *key, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(key);
	unsigned char *tmp = NULL, *out;
	int n;

	assert_non_null(p8);
	n = i2d_PKCS8_PRIV_KEY_INFO(p8, &tmp);
	assert_true(n > 0);
	out = malloc((size_t)n);
	assert_non_null(out);
	memcpy(out, tmp, (size_t)n);
	OPENSSL_clear_free(tmp, (size_t)n);
	PKCS8_PRIV_KEY_INFO_free(p8);
	*len = (size_t)n;
	return out;
}

/* Open env with the transport key through stock CMS_decrypt and compare with key's PKCS#8. */
static void
check_envelope(const unsigned char *env, size_t envlen, EVP_PKEY *tkey, X509 *tcert, EVP_PKEY *key, int oaep)
{
	const unsigned char *p = env;
	CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)envlen);
	BIO *out = BIO_new(BIO_s_mem());
	unsigned char *want, *got;
	size_t wantlen;
	long gotlen;

	assert_non_null(cms);
	assert_ptr_equal(p, env + envlen);
	assert_int_equal(OBJ_obj2nid(CMS_get0_type(cms)), NID_pkcs7_enveloped);
	if (oaep) {
		CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(CMS_get0_RecipientInfos(cms), 0);
		X509_ALGOR *alg = NULL;
		const ASN1_OBJECT *obj;

		assert_int_equal(CMS_RecipientInfo_type(ri), CMS_RECIPINFO_TRANS);
		assert_int_equal(CMS_RecipientInfo_ktri_get0_algs(ri, NULL, NULL, &alg), 1);
		X509_ALGOR_get0(&obj, NULL, NULL, alg);
		assert_int_equal(OBJ_obj2nid(obj), NID_rsaesOaep);
	}
	assert_non_null(out);
	assert_int_equal(CMS_decrypt(cms, tkey, tcert, NULL, out, CMS_BINARY), 1);
	gotlen = BIO_get_mem_data(out, (char **)&got);
	want = pkcs8_der(key, &wantlen);
	assert_int_equal((size_t)gotlen, wantlen);
	assert_memory_equal(got, want, wantlen);
	free(want);
	BIO_free(out);
	CMS_ContentInfo_free(cms);
}

static void
roundtrip(struct fixture *f, X509_REQ *csr, EVP_PKEY *key, EVP_PKEY *tkey, X509 *tcert, int oaep)
{
	unsigned char *der = NULL, *env = NULL, *a, *b;
	size_t derlen = 0, envlen = 0, alen, blen, p8len;
	X509_REQ *out = NULL;
	unsigned char *p8 = pkcs8_der(key, &p8len);

	assert_int_equal(esc_cmc_request_build(f->ctx, csr, key, tcert, &der, &derlen), ESC_OK);
	assert_true(derlen > 0 && derlen <= ESC_EST_BODY_MAX);
	/* The private key is nowhere in the clear. */
	assert_null(memmem(der, derlen, p8, p8len));
	free(p8);
	assert_int_equal(esc_cmc_request_parse(f->ctx, der, derlen, &out, &env, &envlen), ESC_OK);
	a = req_der(csr, &alen);
	b = req_der(out, &blen);
	assert_int_equal(alen, blen);
	assert_memory_equal(a, b, alen);
	free(a);
	free(b);
	check_envelope(env, envlen, tkey, tcert, key, oaep);
	X509_REQ_free(out);
	free(env);
	free(der);
}

static void
test_cmc_roundtrip_ec(void **state)
{
	struct fixture *f = *state;

	roundtrip(f, f->csr, f->enrollee, f->k.ec, f->k.ec_cert, 0);
	roundtrip(f, f->csr_rsa, f->enrollee_rsa, f->k.ec, f->k.ec_cert, 0);
}

static void
test_cmc_roundtrip_rsa(void **state)
{
	struct fixture *f = *state;

	roundtrip(f, f->csr, f->enrollee, f->k.rsa, f->k.rsa_cert, 1);
	roundtrip(f, f->csr_rsa, f->enrollee_rsa, f->k.rsa, f->k.rsa_cert, 1);
}

static void
test_cmc_key_mismatch(void **state)
{
	struct fixture *f = *state;
	unsigned char *der = NULL;
	size_t derlen = 0;

	assert_int_equal(esc_cmc_request_build(f->ctx, f->csr, f->enrollee_rsa, f->k.ec_cert, &der, &derlen),
			 ESC_ERR_USAGE);
	assert_int_equal(esc_cmc_request_build(f->ctx, f->csr, f->k.other, f->k.ec_cert, &der, &derlen), ESC_ERR_USAGE);
	assert_null(der);
}

/*
 * Hand-made variants of a good request: the four sequences of its PKIData
 * re-assembled with changes, then wrapped as esc_cmc_request_build does.
 */
struct pkidata {
	unsigned char *part[4]; /* controlSequence, reqSequence, cmsSequence, otherMsgSequence (each a whole TLV) */
	size_t len[4];
};

static void
pkidata_split(struct fixture *f, struct pkidata *pd)
{
	unsigned char *der = NULL;
	size_t derlen = 0;
	const unsigned char *p, *start, *end;
	CMS_ContentInfo *cms;
	ASN1_OCTET_STRING **content;
	long len;
	int tag, xclass, i;

	assert_int_equal(esc_cmc_request_build(f->ctx, f->csr, f->enrollee, f->k.ec_cert, &der, &derlen), ESC_OK);
	p = der;
	cms = d2i_CMS_ContentInfo(NULL, &p, (long)derlen);
	assert_non_null(cms);
	assert_int_equal(OBJ_obj2nid(CMS_get0_eContentType(cms)), NID_id_cct_PKIData);
	content = CMS_get0_content(cms);
	assert_true(content != NULL && *content != NULL);
	p = ASN1_STRING_get0_data(*content);
	end = p + ASN1_STRING_length(*content);
	assert_int_equal(ASN1_get_object(&p, &len, &tag, &xclass, end - p), V_ASN1_CONSTRUCTED);
	for (i = 0; i < 4; i++) {
		start = p;
		assert_int_equal(ASN1_get_object(&p, &len, &tag, &xclass, end - p), V_ASN1_CONSTRUCTED);
		assert_int_equal(tag, V_ASN1_SEQUENCE);
		p += len;
		pd->len[i] = (size_t)(p - start);
		pd->part[i] = malloc(pd->len[i]);
		assert_non_null(pd->part[i]);
		memcpy(pd->part[i], start, pd->len[i]);
	}
	assert_ptr_equal(p, end);
	CMS_ContentInfo_free(cms);
	free(der);
}

static void
pkidata_set(struct pkidata *pd, int i, unsigned char *part, size_t len)
{
	free(pd->part[i]);
	pd->part[i] = part;
	pd->len[i] = len;
}

static void
pkidata_free(struct pkidata *pd)
{
	int i;

	for (i = 0; i < 4; i++)
		free(pd->part[i]);
}

/* DER of an object identifier (malloc'ed). */
static unsigned char *
oid_der(int nid, size_t *len)
{
	unsigned char *tmp = NULL, *out;
	int n = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), &tmp);

	assert_true(n > 0);
	out = malloc((size_t)n);
	assert_non_null(out);
	memcpy(out, tmp, (size_t)n);
	OPENSSL_free(tmp);
	*len = (size_t)n;
	return out;
}

/*
 * ContentInfo { signedData, SignedData { 3, {}, { nid, [0] OCTET STRING PKIData
 * (absent unless embed) }, {} } }, assembled here byte by byte, not with the
 * library's encoder.
 */
static unsigned char *
pkidata_wrap(const struct pkidata *pd, int nid, int embed, size_t *outlen)
{
	static const unsigned char version_digests[] = {0x02, 0x01, 0x03, 0x31, 0x00};
	static const unsigned char signers[] = {0x31, 0x00};
	unsigned char *body, *os, *econt, *ctype, *eci, *sd, *sdx, *sdoid, *ci, *p;
	size_t bodylen, oslen, econtlen, ctypelen, ecilen, sdlen, sdxlen, sdoidlen, inner;
	int total, i;

	inner = pd->len[0] + pd->len[1] + pd->len[2] + pd->len[3];
	total = ASN1_object_size(1, (int)inner, V_ASN1_SEQUENCE);
	body = malloc((size_t)total);
	assert_non_null(body);
	p = body;
	ASN1_put_object(&p, 1, (int)inner, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
	for (i = 0; i < 4; i++) {
		memcpy(p, pd->part[i], pd->len[i]);
		p += pd->len[i];
	}
	bodylen = (size_t)total;
	os = tlv(V_ASN1_OCTET_STRING, V_ASN1_UNIVERSAL, body, bodylen, NULL, 0, NULL, 0, &oslen);
	econt = tlv(0, V_ASN1_CONTEXT_SPECIFIC, os, oslen, NULL, 0, NULL, 0, &econtlen);
	ctype = oid_der(nid, &ctypelen);
	eci = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, ctype, ctypelen, econt, embed ? econtlen : 0, NULL, 0, &ecilen);
	sd = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, version_digests, sizeof(version_digests), eci, ecilen, signers,
		 sizeof(signers), &sdlen);
	sdx = tlv(0, V_ASN1_CONTEXT_SPECIFIC, sd, sdlen, NULL, 0, NULL, 0, &sdxlen);
	sdoid = oid_der(NID_pkcs7_signed, &sdoidlen);
	ci = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, sdoid, sdoidlen, sdx, sdxlen, NULL, 0, outlen);
	free(sdoid);
	free(sdx);
	free(sd);
	free(eci);
	free(ctype);
	free(econt);
	free(os);
	free(body);
	return ci;
}

/* Parse a variant, expecting code (and a reason containing why, if given). */
static void
expect_parse_ex(struct fixture *f, const struct pkidata *pd, int nid, int embed, enum esc_err code, const char *why)
{
	unsigned char *der, *env = NULL;
	size_t derlen, envlen = 0;
	X509_REQ *csr = NULL;

	der = pkidata_wrap(pd, nid, embed, &derlen);
	if (esc_cmc_request_parse(f->ctx, der, derlen, &csr, &env, &envlen) != code)
		fail_msg("expected %d: %s", code, esc_ctx_errmsg(f->ctx));
	if (code == ESC_OK) {
		X509_REQ_free(csr);
		free(env);
	} else {
		assert_null(csr);
		assert_null(env);
		if (why != NULL)
			assert_non_null(strstr(esc_ctx_errmsg(f->ctx), why));
	}
	free(der);
}

static void
expect_parse(struct fixture *f, const struct pkidata *pd, int nid, enum esc_err code, const char *why)
{
	expect_parse_ex(f, pd, nid, 1, code, why);
}

static void
test_cmc_variants(void **state)
{
	struct fixture *f = *state;
	struct pkidata pd = {{NULL}, {0}};
	unsigned char *saved, *part, *twice, *crm;
	size_t savedlen, partlen, clen, twicelen, crmlen, i;
	const unsigned char *c;
	/* TaggedAttribute { 1, 1.2.3.4, {} } and OtherMsg { 3, 1.2.3.4, NULL } */
	static const unsigned char attr[] = {0x30, 0x0a, 0x02, 0x01, 0x01, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x31, 0x00};
	static const unsigned char other[] = {0x30, 0x0a, 0x02, 0x01, 0x03, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x05, 0x00};
	/* crm [1] IMPLICIT CertReqMsg (here a minimal SEQUENCE body), orm [2] IMPLICIT SEQUENCE */
	static const unsigned char crm_req[] = {0xa1, 0x05, 0x30, 0x03, 0x02, 0x01, 0x00};
	static const unsigned char orm_req[] = {0xa2, 0x0a, 0x02, 0x01, 0x05, 0x06, 0x03, 0x2a, 0x03, 0x04, 0x05, 0x00};
	unsigned char many[17 * sizeof(attr)];

	pkidata_split(f, &pd);
	/* As built: accepted; with controls and other messages, still accepted (ignored). */
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_OK, NULL);
	part = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, attr, sizeof(attr), NULL, 0, NULL, 0, &partlen);
	pkidata_set(&pd, 0, part, partlen);
	part = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, other, sizeof(other), NULL, 0, NULL, 0, &partlen);
	pkidata_set(&pd, 3, part, partlen);
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_OK, NULL);

	/* Wrong eContentType; PKIData not embedded. */
	expect_parse(f, &pd, NID_pkcs7_data, ESC_ERR_BAD_INPUT, "id-cct-PKIData");
	expect_parse_ex(f, &pd, NID_id_cct_PKIData, 0, ESC_ERR_BAD_INPUT, "detached");

	/* 17 controls: too many. */
	for (i = 0; i < 17; i++)
		memcpy(many + i * sizeof(attr), attr, sizeof(attr));
	saved = pd.part[0];
	savedlen = pd.len[0];
	pd.part[0] = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, many, sizeof(many), NULL, 0, NULL, 0, &pd.len[0]);
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "more than 16");
	pkidata_set(&pd, 0, saved, savedlen);

	/* Two requests. */
	saved = pd.part[1];
	savedlen = pd.len[1];
	c = tlv_content(saved, savedlen, &clen);
	twice = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, c, clen, c, clen, NULL, 0, &twicelen);
	pd.part[1] = twice;
	pd.len[1] = twicelen;
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "more than one request");
	free(twice);
	/* No request. */
	pd.part[1] = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, NULL, 0, NULL, 0, NULL, 0, &pd.len[1]);
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "no request");
	free(pd.part[1]);
	/* A CRMF request, alone or after the PKCS#10. */
	crm = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, crm_req, sizeof(crm_req), NULL, 0, NULL, 0, &crmlen);
	pd.part[1] = crm;
	pd.len[1] = crmlen;
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "CRMF requests are not supported");
	free(crm);
	crm = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, c, clen, crm_req, sizeof(crm_req), NULL, 0, &crmlen);
	pd.part[1] = crm;
	pd.len[1] = crmlen;
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "CRMF requests are not supported");
	free(crm);
	/* Another request message (orm). */
	crm = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, orm_req, sizeof(orm_req), NULL, 0, NULL, 0, &crmlen);
	pd.part[1] = crm;
	pd.len[1] = crmlen;
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "(orm)");
	free(crm);
	pd.part[1] = saved;
	pd.len[1] = savedlen;

	/* No envelope, two envelopes. */
	saved = pd.part[2];
	savedlen = pd.len[2];
	pd.part[2] = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, NULL, 0, NULL, 0, NULL, 0, &pd.len[2]);
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "exactly one envelope");
	free(pd.part[2]);
	c = tlv_content(saved, savedlen, &clen);
	pd.part[2] = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, c, clen, c, clen, NULL, 0, &pd.len[2]);
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "exactly one envelope");
	free(pd.part[2]);
	{
		/* An envelope that is a SignedData (a certs-only response). */
		X509 *certs[1] = {f->k.ec_cert};
		unsigned char *co = NULL, *tci, *seq;
		size_t colen = 0, tcilen, seqlen;
		static const unsigned char bpid[] = {0x02, 0x01, 0x02};

		assert_int_equal(esc_certs_only_build(f->ctx, certs, 1, &co, &colen), ESC_OK);
		tci = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, bpid, sizeof(bpid), co, colen, NULL, 0, &tcilen);
		seq = tlv(V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, tci, tcilen, NULL, 0, NULL, 0, &seqlen);
		pd.part[2] = seq;
		pd.len[2] = seqlen;
		expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_BAD_INPUT, "not an EnvelopedData");
		free(seq);
		free(tci);
		free(co);
	}
	pd.part[2] = saved;
	pd.len[2] = savedlen;

	/* A request whose signature does not verify: CRYPTO. */
	saved = pd.part[1];
	part = malloc(pd.len[1]);
	assert_non_null(part);
	memcpy(part, saved, pd.len[1]);
	part[pd.len[1] - 1] ^= 0x01; /* last byte of the ECDSA signature */
	pd.part[1] = part;
	expect_parse(f, &pd, NID_id_cct_PKIData, ESC_ERR_CRYPTO, "does not verify");
	free(part);
	pd.part[1] = saved;

	pkidata_free(&pd);
}

static void
test_cmc_bad_outer(void **state)
{
	struct fixture *f = *state;
	X509 *certs[1] = {f->k.ec_cert};
	unsigned char *der = NULL, *env = NULL, *longer;
	size_t derlen = 0, envlen = 0;
	X509_REQ *csr = NULL;
	unsigned char junk[] = {0x30, 0x03, 0x02, 0x01, 0x01};

	/* A SignedData, but of id-data (a certs-only response). */
	assert_int_equal(esc_certs_only_build(f->ctx, certs, 1, &der, &derlen), ESC_OK);
	assert_int_equal(esc_cmc_request_parse(f->ctx, der, derlen, &csr, &env, &envlen), ESC_ERR_BAD_INPUT);
	free(der);
	/* Not CMS at all, empty, too long. */
	assert_int_equal(esc_cmc_request_parse(f->ctx, junk, sizeof(junk), &csr, &env, &envlen), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_cmc_request_parse(f->ctx, junk, 0, &csr, &env, &envlen), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_cmc_request_parse(f->ctx, junk, ESC_EST_BODY_MAX + 1, &csr, &env, &envlen),
			 ESC_ERR_BAD_INPUT);
	/* A good request with a byte after it. */
	assert_int_equal(esc_cmc_request_build(f->ctx, f->csr, f->enrollee, f->k.ec_cert, &der, &derlen), ESC_OK);
	longer = malloc(derlen + 1);
	assert_non_null(longer);
	memcpy(longer, der, derlen);
	longer[derlen] = 0;
	assert_int_equal(esc_cmc_request_parse(f->ctx, longer, derlen + 1, &csr, &env, &envlen), ESC_ERR_BAD_INPUT);
	/* Or cut short. */
	assert_int_equal(esc_cmc_request_parse(f->ctx, der, derlen - 1, &csr, &env, &envlen), ESC_ERR_BAD_INPUT);
	assert_null(csr);
	assert_null(env);
	free(longer);
	free(der);
}

/* ---- certs-only ---------------------------------------------------------------------- */

static void
test_certs_only(void **state)
{
	struct fixture *f = *state;
	/* Both orders: CMS's SET OF would sort them, the response must not. */
	X509 *orders[2][3] = {{f->k.ec_cert, f->k.rsa_cert, f->k.other_cert},
			      {f->k.other_cert, f->k.rsa_cert, f->k.ec_cert}};
	STACK_OF(X509) *out;
	unsigned char *der;
	const unsigned char *p;
	PKCS7 *p7;
	size_t derlen, o;
	int i;

	for (o = 0; o < 2; o++) {
		der = NULL;
		assert_int_equal(esc_certs_only_build(f->ctx, orders[o], 3, &der, &derlen), ESC_OK);
		/* Degenerate: no signers, no content. */
		p = der;
		p7 = d2i_PKCS7(NULL, &p, (long)derlen);
		assert_non_null(p7);
		assert_true(PKCS7_type_is_signed(p7));
		assert_int_equal(sk_PKCS7_SIGNER_INFO_num(p7->d.sign->signer_info), 0);
		assert_null(p7->d.sign->contents->d.data);
		PKCS7_free(p7);
		out = NULL;
		assert_int_equal(esc_certs_only_parse(f->ctx, der, derlen, &out), ESC_OK);
		assert_int_equal(sk_X509_num(out), 3);
		for (i = 0; i < 3; i++)
			assert_int_equal(X509_cmp(sk_X509_value(out, i), orders[o][i]), 0);
		sk_X509_pop_free(out, X509_free);
		free(der);
	}
}

static void
test_certs_only_bad(void **state)
{
	struct fixture *f = *state;
	X509 *certs[1] = {f->k.ec_cert};
	unsigned char *der = NULL;
	size_t derlen = 0;
	STACK_OF(X509) *out = NULL;
	PKCS7 *p7;
	unsigned char junk[] = {0x30, 0x03, 0x02, 0x01, 0x01};
	/* ContentInfo { signedData } without its [0] content. */
	unsigned char bare[] = {0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02};

	assert_int_equal(esc_certs_only_build(f->ctx, certs, 0, &der, &derlen), ESC_ERR_USAGE);
	assert_null(der);
	assert_int_equal(esc_certs_only_parse(f->ctx, junk, sizeof(junk), &out), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_certs_only_parse(f->ctx, junk, 0, &out), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_certs_only_parse(f->ctx, bare, sizeof(bare), &out), ESC_ERR_BAD_INPUT);
	assert_null(out);
	/* A SignedData without certificates. */
	p7 = PKCS7_new();
	assert_non_null(p7);
	assert_int_equal(PKCS7_set_type(p7, NID_pkcs7_signed), 1);
	assert_int_equal(PKCS7_content_new(p7, NID_pkcs7_data), 1);
	derlen = (size_t)i2d_PKCS7(p7, &der);
	PKCS7_free(p7);
	assert_int_equal(esc_certs_only_parse(f->ctx, der, derlen, &out), ESC_ERR_BAD_INPUT);
	assert_null(out);
	OPENSSL_free(der);
	der = NULL;
	/* A Full PKI Request is a SignedData, but not certs-only: no certificates. */
	assert_int_equal(esc_cmc_request_build(f->ctx, f->csr, f->enrollee, f->k.ec_cert, &der, &derlen), ESC_OK);
	assert_int_equal(esc_certs_only_parse(f->ctx, der, derlen, &out), ESC_ERR_BAD_INPUT);
	free(der);
}

/* ---- CsrAttrs ------------------------------------------------------------------------- */

static void
test_csrattrs(void **state)
{
	struct fixture *f = *state;
	static const char *const oids[] = {"1.2.840.113549.1.9.7", "1.2.840.10045.4.3.3"};
	/* SEQUENCE { challengePassword, { id-ecPublicKey, SET { prime256v1 } } } */
	static const unsigned char want[] = {0x30, 0x22, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09,
					     0x07, 0x30, 0x15, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
					     0x31, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
	static const char *const bad[] = {"challengePassword", "1.2.x", ""};
	unsigned char *der = NULL;
	const unsigned char *p;
	size_t derlen = 0, i;
	ASN1_SEQUENCE_ANY *seq;
	X509_ATTRIBUTE *attr;
	ASN1_TYPE *t;
	BIO *mem;
	const char *p256[] = {"prime256v1"}, *nist[] = {"P-256"}, *p384[] = {"secp384r1"}, *nocurve[] = {"sha256"},
		   *unknown[] = {"no-such-curve"};
	static const int tiny[] = {512};
	struct esc_csrattrs spec = {oids, 1, p256, 1, NULL, 0};

	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_OK);
	assert_int_equal(derlen, sizeof(want));
	assert_memory_equal(der, want, sizeof(want));
	free(der);
	/* NIST name, same curve. */
	spec.curves = nist;
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_OK);
	assert_memory_equal(der, want, sizeof(want));
	free(der);

	/* RFC 7030's example shape: OID, OID, then the attribute (secp384r1); it decodes generically. */
	spec.noids = 2;
	spec.curves = p384;
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_OK);
	mem = BIO_new(BIO_s_mem());
	assert_int_equal(ASN1_parse(mem, der, (long)derlen, 0), 1);
	BIO_free(mem);
	p = der;
	seq = d2i_ASN1_SEQUENCE_ANY(NULL, &p, (long)derlen);
	assert_non_null(seq);
	assert_ptr_equal(p, der + derlen);
	assert_int_equal(sk_ASN1_TYPE_num(seq), 3);
	assert_int_equal(ASN1_TYPE_get(sk_ASN1_TYPE_value(seq, 0)), V_ASN1_OBJECT);
	assert_int_equal(OBJ_obj2nid(sk_ASN1_TYPE_value(seq, 0)->value.object), NID_pkcs9_challengePassword);
	assert_int_equal(OBJ_obj2nid(sk_ASN1_TYPE_value(seq, 1)->value.object), NID_ecdsa_with_SHA384);
	t = sk_ASN1_TYPE_value(seq, 2);
	assert_int_equal(ASN1_TYPE_get(t), V_ASN1_SEQUENCE);
	p = t->value.sequence->data;
	attr = d2i_X509_ATTRIBUTE(NULL, &p, t->value.sequence->length);
	assert_non_null(attr);
	assert_int_equal(OBJ_obj2nid(X509_ATTRIBUTE_get0_object(attr)), NID_X9_62_id_ecPublicKey);
	assert_int_equal(X509_ATTRIBUTE_count(attr), 1);
	t = X509_ATTRIBUTE_get0_type(attr, 0);
	assert_int_equal(ASN1_TYPE_get(t), V_ASN1_OBJECT);
	assert_int_equal(OBJ_obj2nid(t->value.object), NID_secp384r1);
	X509_ATTRIBUTE_free(attr);
	sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
	free(der);

	/* Nothing asked for: an empty sequence. */
	memset(&spec, 0, sizeof(spec));
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_OK);
	assert_int_equal(derlen, 2);
	assert_int_equal(der[0], 0x30);
	assert_int_equal(der[1], 0x00);
	free(der);

	/* Names or nonsense instead of dotted OIDs; hashes or nonsense instead of curves. */
	der = NULL;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct esc_csrattrs one = {&bad[i], 1, NULL, 0, NULL, 0};

		assert_int_equal(esc_csrattrs_build(f->ctx, &one, &der, &derlen), ESC_ERR_USAGE);
	}
	spec = (struct esc_csrattrs){oids, 1, nocurve, 1, NULL, 0};
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_ERR_USAGE);
	spec.curves = unknown;
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_ERR_USAGE);
	spec = (struct esc_csrattrs){NULL, 1, NULL, 0, NULL, 0};
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_ERR_USAGE);
	spec = (struct esc_csrattrs){NULL, 0, NULL, 0, tiny, 1};
	assert_int_equal(esc_csrattrs_build(f->ctx, &spec, &der, &derlen), ESC_ERR_USAGE);
	assert_int_equal(esc_csrattrs_build(f->ctx, NULL, &der, &derlen), ESC_ERR_USAGE);
	assert_null(der);
}

/* The values of the attribute of type nid in the CsrAttrs seq (NULL if absent): caller frees. */
static X509_ATTRIBUTE *
csrattrs_attribute(ASN1_SEQUENCE_ANY *seq, int nid)
{
	const unsigned char *p;
	X509_ATTRIBUTE *attr;
	int i;

	for (i = 0; i < sk_ASN1_TYPE_num(seq); i++) {
		ASN1_TYPE *t = sk_ASN1_TYPE_value(seq, i);

		if (ASN1_TYPE_get(t) != V_ASN1_SEQUENCE)
			continue;
		p = t->value.sequence->data;
		attr = d2i_X509_ATTRIBUTE(NULL, &p, t->value.sequence->length);
		assert_non_null(attr);
		if (OBJ_obj2nid(X509_ATTRIBUTE_get0_object(attr)) == nid)
			return attr;
		X509_ATTRIBUTE_free(attr);
	}
	return NULL;
}

static int
csrattrs_has_oid(ASN1_SEQUENCE_ANY *seq, int nid)
{
	int i;

	for (i = 0; i < sk_ASN1_TYPE_num(seq); i++)
		if (ASN1_TYPE_get(sk_ASN1_TYPE_value(seq, i)) == V_ASN1_OBJECT &&
		    OBJ_obj2nid(sk_ASN1_TYPE_value(seq, i)->value.object) == nid)
			return 1;
	return 0;
}

/*
 * Each profile's CsrAttrs names every key it accepts: the signing profile
 * takes RSA as well as EC (its CsrAttrs used to offer EC P-256 only).
 */
static void
test_csrattrs_profiles(void **state)
{
	struct fixture *f = *state;
	const struct esc_profile *p;
	unsigned char *der = NULL;
	const unsigned char *q;
	size_t derlen = 0, i;
	ASN1_SEQUENCE_ANY *seq;
	X509_ATTRIBUTE *attr;
	long bits[3];
	int j;

	for (i = 0; (p = esc_profile_at(i)) != NULL; i++) {
		int ec = (p->keys & (ESC_EKEY_EC_P256 | ESC_EKEY_EC_P384)) != 0;
		int rsa = (p->keys & (ESC_EKEY_RSA2048 | ESC_EKEY_RSA3072 | ESC_EKEY_RSA4096)) != 0;

		assert_int_equal(esc_csrattrs_for_profile(f->ctx, p, &der, &derlen), ESC_OK);
		q = der;
		seq = d2i_ASN1_SEQUENCE_ANY(NULL, &q, (long)derlen);
		assert_non_null(seq);
		assert_ptr_equal(q, der + derlen);
		assert_int_equal(csrattrs_has_oid(seq, NID_ecdsa_with_SHA256), ec);
		assert_int_equal(csrattrs_has_oid(seq, NID_sha256WithRSAEncryption), rsa);
		attr = csrattrs_attribute(seq, NID_X9_62_id_ecPublicKey);
		assert_int_equal(attr != NULL, ec);
		if (attr != NULL) {
			int want = ((p->keys & ESC_EKEY_EC_P256) != 0) + ((p->keys & ESC_EKEY_EC_P384) != 0);

			assert_int_equal(X509_ATTRIBUTE_count(attr), want);
			for (j = 0; j < X509_ATTRIBUTE_count(attr); j++) {
				ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(attr, j);
				int nid = OBJ_obj2nid(t->value.object);

				assert_int_equal(ASN1_TYPE_get(t), V_ASN1_OBJECT);
				assert_true((nid == NID_X9_62_prime256v1 && (p->keys & ESC_EKEY_EC_P256)) ||
					    (nid == NID_secp384r1 && (p->keys & ESC_EKEY_EC_P384)));
			}
			X509_ATTRIBUTE_free(attr);
		}
		attr = csrattrs_attribute(seq, NID_rsaEncryption);
		assert_int_equal(attr != NULL, rsa);
		if (attr != NULL) {
			assert_true(X509_ATTRIBUTE_count(attr) <= 3);
			for (j = 0; j < X509_ATTRIBUTE_count(attr); j++) {
				ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(attr, j);

				assert_int_equal(ASN1_TYPE_get(t), V_ASN1_INTEGER);
				bits[j] = ASN1_INTEGER_get(t->value.integer);
				assert_true((bits[j] == 2048 && (p->keys & ESC_EKEY_RSA2048)) ||
					    (bits[j] == 3072 && (p->keys & ESC_EKEY_RSA3072)) ||
					    (bits[j] == 4096 && (p->keys & ESC_EKEY_RSA4096)));
			}
			X509_ATTRIBUTE_free(attr);
		}
		sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
		free(der);
		der = NULL;
	}
	/* The case of the issue: signing accepts RSA-2048..4096 and EC P-256/P-384, and says so. */
	p = esc_profile_find("signing");
	assert_non_null(p);
	assert_int_equal(esc_csrattrs_for_profile(f->ctx, p, &der, &derlen), ESC_OK);
	q = der;
	seq = d2i_ASN1_SEQUENCE_ANY(NULL, &q, (long)derlen);
	assert_non_null(seq);
	attr = csrattrs_attribute(seq, NID_rsaEncryption);
	assert_non_null(attr);
	assert_int_equal(X509_ATTRIBUTE_count(attr), 3);
	X509_ATTRIBUTE_free(attr);
	attr = csrattrs_attribute(seq, NID_X9_62_id_ecPublicKey);
	assert_non_null(attr);
	assert_int_equal(X509_ATTRIBUTE_count(attr), 2);
	X509_ATTRIBUTE_free(attr);
	sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
	free(der);
}

/* ---- Server-generated key, encrypted (RFC 7030 §4.4.2) --------------------------------- */

/* A certificate for key, signed by issuer_key as issuer_cert (or self-signed), with keyUsage ku (NULL: none). */
static X509 *
cert_with_ku(EVP_PKEY *key, const char *cn, const char *ku, X509 *issuer_cert, EVP_PKEY *issuer_key)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	X509_EXTENSION *ext = NULL;
	X509V3_CTX v3;

	assert_non_null(x);
	assert_non_null(name);
	assert_int_equal(X509_set_version(x, 2), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 7), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0),
			 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	assert_int_equal(X509_set_issuer_name(x, issuer_cert != NULL ? X509_get_subject_name(issuer_cert) : name), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -60));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
	assert_int_equal(X509_set_pubkey(x, key), 1);
	X509V3_set_ctx(&v3, issuer_cert != NULL ? issuer_cert : x, x, NULL, NULL, 0);
	assert_non_null(ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_key_identifier, "hash"));
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);
	if (ku != NULL) {
		assert_non_null(ext = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, ku));
		assert_int_equal(X509_add_ext(x, ext, -1), 1);
		X509_EXTENSION_free(ext);
	}
	assert_true(X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) > 0);
	X509_NAME_free(name);
	return x;
}

static void
test_key_recipient(void **state)
{
	struct fixture *f = *state;
	static const struct {
		int rsa;
		const char *ku;
		enum esc_err want;
	} cases[] = {
		{1, "critical,keyEncipherment", ESC_OK},
		{1, "critical,digitalSignature,keyEncipherment", ESC_OK},
		{1, NULL, ESC_OK},
		{1, "critical,digitalSignature,nonRepudiation", ESC_ERR_BAD_INPUT},
		{1, "critical,keyAgreement", ESC_ERR_BAD_INPUT},
		{0, "critical,keyAgreement", ESC_OK},
		{0, NULL, ESC_OK},
		{0, "critical,digitalSignature,nonRepudiation", ESC_ERR_BAD_INPUT},
		{0, "critical,keyEncipherment", ESC_ERR_BAD_INPUT},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		X509 *x = cert_with_ku(cases[i].rsa ? f->k.rsa : f->k.ec, "client", cases[i].ku, NULL, NULL);

		assert_int_equal(esc_est_key_recipient_check(f->ctx, x), cases[i].want);
		if (cases[i].want != ESC_OK)
			assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "cannot receive encrypted keys"));
		X509_free(x);
	}
	assert_int_equal(esc_est_key_recipient_check(f->ctx, NULL), ESC_ERR_BAD_INPUT);
}

/* Open an encrypted server-generated key as a client would, with stock CMS; returns the key. */
static EVP_PKEY *
open_key_package(const unsigned char *der, size_t len, EVP_PKEY *rkey, X509 *rcert, X509 *ca)
{
	const unsigned char *p = der;
	CMS_ContentInfo *env, *sd;
	BIO *dec = BIO_new(BIO_s_mem()), *pkg = BIO_new(BIO_s_mem());
	X509_STORE *store = X509_STORE_new();
	ASN1_OBJECT *akp = OBJ_txt2obj(OID_A_KEY_PACKAGE, 1);
	unsigned char *data;
	long n;
	STACK_OF(ASN1_TYPE) *keys;
	PKCS8_PRIV_KEY_INFO *p8;
	EVP_PKEY *key;
	const unsigned char *q;

	assert_non_null(dec);
	assert_non_null(pkg);
	assert_non_null(store);
	assert_non_null(akp);
	env = d2i_CMS_ContentInfo(NULL, &p, (long)len);
	assert_non_null(env);
	assert_ptr_equal(p, der + len);
	assert_int_equal(OBJ_obj2nid(CMS_get0_type(env)), NID_pkcs7_enveloped);
	/* The EnvelopedData says what it holds: a SignedData. */
	assert_int_equal(OBJ_obj2nid(CMS_get0_eContentType(env)), NID_pkcs7_signed);
	assert_int_equal(CMS_decrypt(env, rkey, rcert, NULL, dec, CMS_BINARY), 1);
	n = BIO_get_mem_data(dec, &data);
	q = data;
	sd = d2i_CMS_ContentInfo(NULL, &q, n);
	assert_non_null(sd);
	assert_ptr_equal(q, data + n);
	assert_int_equal(OBJ_obj2nid(CMS_get0_type(sd)), NID_pkcs7_signed);
	assert_int_equal(OBJ_cmp(CMS_get0_eContentType(sd), akp), 0);
	/* Signed by the CA: verifies against it as the only trust anchor (its key usage is its own business). */
	assert_int_equal(X509_STORE_add_cert(store, ca), 1);
	assert_int_equal(X509_VERIFY_PARAM_set_purpose(X509_STORE_get0_param(store), X509_PURPOSE_ANY), 1);
	assert_int_equal(CMS_verify(sd, NULL, store, NULL, pkg, CMS_BINARY), 1);
	n = BIO_get_mem_data(pkg, &data);
	q = data;
	/* AsymmetricKeyPackage: SEQUENCE OF OneAsymmetricKey, here exactly one. */
	keys = d2i_ASN1_SEQUENCE_ANY(NULL, &q, n);
	assert_non_null(keys);
	assert_ptr_equal(q, data + n);
	assert_int_equal(sk_ASN1_TYPE_num(keys), 1);
	assert_int_equal(ASN1_TYPE_get(sk_ASN1_TYPE_value(keys, 0)), V_ASN1_SEQUENCE);
	q = sk_ASN1_TYPE_value(keys, 0)->value.sequence->data;
	p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &q, sk_ASN1_TYPE_value(keys, 0)->value.sequence->length);
	assert_non_null(p8);
	key = EVP_PKCS82PKEY(p8);
	assert_non_null(key);
	PKCS8_PRIV_KEY_INFO_free(p8);
	sk_ASN1_TYPE_pop_free(keys, ASN1_TYPE_free);
	CMS_ContentInfo_free(sd);
	CMS_ContentInfo_free(env);
	ASN1_OBJECT_free(akp);
	X509_STORE_free(store);
	BIO_free(dec);
	BIO_free(pkg);
	return key;
}

static void
test_key_package(void **state)
{
	struct fixture *f = *state;
	/* The CA: the EC transport test key standing in for the token's; recipients of either kind. */
	X509 *ca = f->k.ec_cert;
	X509 *rsa_client =
		cert_with_ku(f->k.rsa, "rsa client", "critical,digitalSignature,keyEncipherment", ca, f->k.ec);
	X509 *ec_client = cert_with_ku(f->k.other, "ec client", "critical,digitalSignature,keyAgreement", ca, f->k.ec);
	X509 *signing_only =
		cert_with_ku(f->k.other, "signer", "critical,digitalSignature,nonRepudiation", ca, f->k.ec);
	unsigned char *der = NULL;
	size_t derlen = 0;
	EVP_PKEY *got;

	/* RSA recipient (ktri, OAEP), an EC server-generated key. */
	assert_int_equal(esc_est_key_package_seal(f->ctx, ca, NULL, f->k.ec, f->enrollee, rsa_client, &der, &derlen),
			 ESC_OK);
	got = open_key_package(der, derlen, f->k.rsa, rsa_client, ca);
	assert_int_equal(EVP_PKEY_eq(got, f->enrollee), 1);
	EVP_PKEY_free(got);
	/* Not the bare PKCS#8 inside the EnvelopedData, as before. */
	{
		const unsigned char *p = der;
		CMS_ContentInfo *env = d2i_CMS_ContentInfo(NULL, &p, (long)derlen);
		BIO *dec = BIO_new(BIO_s_mem());
		unsigned char *data;
		const unsigned char *q;
		long n;
		PKCS8_PRIV_KEY_INFO *p8;

		assert_int_equal(CMS_decrypt(env, f->k.rsa, rsa_client, NULL, dec, CMS_BINARY), 1);
		n = BIO_get_mem_data(dec, &data);
		q = data;
		p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &q, n);
		assert_true(p8 == NULL || q != data + n);
		PKCS8_PRIV_KEY_INFO_free(p8);
		ERR_clear_error();
		BIO_free(dec);
		CMS_ContentInfo_free(env);
	}
	free(der);
	der = NULL;

	/* EC recipient (kari), an RSA server-generated key. */
	assert_int_equal(esc_est_key_package_seal(f->ctx, ca, NULL, f->k.ec, f->enrollee_rsa, ec_client, &der, &derlen),
			 ESC_OK);
	got = open_key_package(der, derlen, f->k.other, ec_client, ca);
	assert_int_equal(EVP_PKEY_eq(got, f->enrollee_rsa), 1);
	EVP_PKEY_free(got);
	free(der);
	der = NULL;

	/* A signing-only certificate is no recipient: refused, nothing made. */
	assert_int_equal(esc_est_key_package_seal(f->ctx, ca, NULL, f->k.ec, f->enrollee, signing_only, &der, &derlen),
			 ESC_ERR_BAD_INPUT);
	assert_null(der);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "cannot receive encrypted keys"));
	X509_free(rsa_client);
	X509_free(ec_client);
	X509_free(signing_only);
}

/* DecryptKeyIdentifier (symmetric) is seen, whatever its form, so the service can refuse it. */
static void
test_csr_symmetric(void **state)
{
	struct fixture *f = *state;
	static const unsigned char kid[] = {1, 2, 3, 4};
	X509_REQ *req;
	int yes = -1;

	assert_int_equal(esc_csr_wants_symmetric(f->ctx, f->csr, &yes), ESC_OK);
	assert_int_equal(yes, 0);
	req = make_csr(f->enrollee, V_ASN1_OCTET_STRING, kid, sizeof(kid));
	assert_non_null(req);
	assert_int_equal(esc_csr_wants_symmetric(f->ctx, req, &yes), ESC_OK);
	assert_int_equal(yes, 0); /* the asymmetric one is another attribute */
	X509_REQ_free(req);
	req = X509_REQ_dup(f->csr);
	assert_non_null(req);
	assert_int_equal(X509_REQ_add1_attr_by_txt(req, OID_SYMMETRIC_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)), 1);
	assert_int_equal(esc_csr_wants_symmetric(f->ctx, req, &yes), ESC_OK);
	assert_int_equal(yes, 1);
	X509_REQ_free(req);
	req = X509_REQ_dup(f->csr);
	assert_non_null(req);
	assert_int_equal(X509_REQ_add1_attr_by_txt(req, OID_SYMMETRIC_KID, V_ASN1_UTF8STRING, kid, sizeof(kid)), 1);
	assert_int_equal(esc_csr_wants_symmetric(f->ctx, req, &yes), ESC_OK);
	assert_int_equal(yes, 1);
	X509_REQ_free(req);
}

/* ---- client side (est.h "Client side") ----------------------------------------- */

static void
test_client_csr(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	X509_NAME *name = X509_NAME_new();
	X509_REQ *req = NULL, *back = NULL;
	unsigned char *der;
	size_t len;

	assert_non_null(p384);
	assert_non_null(name);
	/* No subject: an empty one (the service takes it from the password or the client certificate). */
	assert_int_equal(esc_est_csr_build(f->ctx, f->enrollee, NULL, &req), ESC_OK);
	assert_int_equal(X509_NAME_entry_count(X509_REQ_get_subject_name(req)), 0);
	assert_int_equal(X509_REQ_get_signature_nid(req), NID_ecdsa_with_SHA256);
	der = req_der(req, &len);
	assert_int_equal(esc_csr_decode(f->ctx, der, len, &back), ESC_OK);
	assert_int_equal(EVP_PKEY_eq(X509_REQ_get0_pubkey(back), f->enrollee), 1);
	free(der);
	X509_REQ_free(back);
	X509_REQ_free(req);
	req = NULL;
	assert_int_equal(
		X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)"Alice", -1, -1, 0), 1);
	assert_int_equal(esc_est_csr_build(f->ctx, p384, name, &req), ESC_OK);
	assert_int_equal(X509_NAME_cmp(X509_REQ_get_subject_name(req), name), 0);
	assert_int_equal(X509_REQ_get_signature_nid(req), NID_ecdsa_with_SHA384);
	X509_REQ_free(req);
	req = NULL;
	assert_int_equal(esc_est_csr_build(f->ctx, f->enrollee_rsa, name, &req), ESC_OK);
	assert_int_equal(X509_REQ_get_signature_nid(req), NID_sha256WithRSAEncryption);
	assert_int_equal(X509_REQ_verify(req, f->enrollee_rsa), 1);
	X509_REQ_free(req);
	req = NULL;
	assert_int_equal(esc_est_csr_build(f->ctx, NULL, name, &req), ESC_ERR_USAGE);
	assert_null(req);
	X509_NAME_free(name);
	EVP_PKEY_free(p384);
}

/* The base64 (one line per 64 characters, CRLF) of der, as a malloc'ed string. */
static char *
b64_of(struct fixture *f, const unsigned char *der, size_t len)
{
	char *b64 = NULL;
	size_t n = 0;

	assert_int_equal(esc_b64_encode(f->ctx, der, len, &b64, &n), ESC_OK);
	return b64;
}

/* A /serverkeygen answer as p11escrowd writes it, with a line break nl ("\r\n" or "\n"); cte NULL: no such header. */
static char *
skg_body(const char *nl, const char *boundary, const char *key_ctype, const char *key_b64, const char *cert_ctype,
	 const char *cert_b64, const char *cte)
{
	char *out = NULL, cte_line[64] = "";
	int n;

	if (cte != NULL)
		snprintf(cte_line, sizeof(cte_line), "Content-Transfer-Encoding: %s%s", cte, nl);
	n = asprintf(&out,
		     "preamble%s"
		     "--%s%sContent-Type: %s%s%s%s%s"
		     "--%s%sContent-Type: %s%sContent-Transfer-Encoding: base64%s%s%s"
		     "--%s--%s",
		     nl, boundary, nl, key_ctype, nl, cte_line, nl, key_b64, boundary, nl, cert_ctype, nl, nl, nl,
		     cert_b64, boundary, nl);
	assert_true(n > 0);
	return out;
}

static void
test_serverkeygen_parse(void **state)
{
	struct fixture *f = *state;
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(f->enrollee);
	unsigned char *p8der = NULL, *certs_der = NULL;
	int p8len = i2d_PKCS8_PRIV_KEY_INFO(p8, &p8der);
	size_t certs_len = 0;
	X509 *certs[1] = {f->k.ec_cert};
	char *key_b64, *cert_b64, *body;
	STACK_OF(X509) *got = NULL;
	EVP_PKEY *key = NULL;
	static const char ct[] = "multipart/mixed; boundary=esc-0123abcd";
	static const char ct_quoted[] = "multipart/mixed; charset=x; boundary=\"esc-0123abcd\"";
	static const char key_ct[] = "application/pkcs8";
	static const char cert_ct[] = "application/pkcs7-mime; smime-type=certs-only";
	size_t i;

	assert_true(p8len > 0);
	assert_int_equal(esc_certs_only_build(f->ctx, certs, 1, &certs_der, &certs_len), ESC_OK);
	key_b64 = b64_of(f, p8der, (size_t)p8len);
	cert_b64 = b64_of(f, certs_der, certs_len);

	/* As the service sends it (CRLF, the key's Content-Transfer-Encoding), and with LF, quoted boundary. */
	for (i = 0; i < 3; i++) {
		body = skg_body(i == 1 ? "\n" : "\r\n", "esc-0123abcd", key_ct, key_b64, cert_ct, cert_b64,
				i == 2 ? NULL : "base64");
		assert_int_equal(esc_est_serverkeygen_parse(f->ctx, i == 2 ? ct_quoted : ct,
							    (const unsigned char *)body, strlen(body), &key, &got),
				 ESC_OK);
		assert_int_equal(EVP_PKEY_eq(key, f->enrollee), 1);
		assert_int_equal(EVP_PKEY_get_bits(key), 256);
		assert_int_equal(sk_X509_num(got), 1);
		assert_int_equal(X509_cmp(sk_X509_value(got, 0), f->k.ec_cert), 0);
		EVP_PKEY_free(key);
		sk_X509_pop_free(got, X509_free);
		key = NULL;
		got = NULL;
		free(body);
	}

	/* Refused, nothing returned: each with BAD_INPUT. */
	{
		const struct {
			const char *ctype, *key_ct, *key_b64, *cert_ct, *cert_b64, *cte, *boundary;
		} bad[] = {
			{"application/pkcs7-mime", key_ct, key_b64, cert_ct, cert_b64, "base64", "esc-0123abcd"},
			{"multipart/mixed", key_ct, key_b64, cert_ct, cert_b64, "base64", "esc-0123abcd"},
			{ct, key_ct, key_b64, cert_ct, cert_b64, "base64", "other-boundary"},
			{ct, "application/pkcs7-mime; smime-type=server-generated-key", key_b64, cert_ct, cert_b64,
			 "base64", "esc-0123abcd"},
			{ct, "text/plain", key_b64, cert_ct, cert_b64, "base64", "esc-0123abcd"},
			{ct, key_ct, key_b64, "text/plain", cert_b64, "base64", "esc-0123abcd"},
			{ct, key_ct, key_b64, key_ct, key_b64, "base64", "esc-0123abcd"},
			{ct, key_ct, key_b64, cert_ct, cert_b64, "8bit", "esc-0123abcd"},
			{ct, key_ct, cert_b64, cert_ct, cert_b64, "base64", "esc-0123abcd"},
			{ct, key_ct, key_b64, cert_ct, key_b64, "base64", "esc-0123abcd"},
			{ct, key_ct, "not base64!", cert_ct, cert_b64, "base64", "esc-0123abcd"},
		};

		for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			body = skg_body("\r\n", bad[i].boundary, bad[i].key_ct, bad[i].key_b64, bad[i].cert_ct,
					bad[i].cert_b64, bad[i].cte);
			assert_int_equal(esc_est_serverkeygen_parse(f->ctx, bad[i].ctype, (const unsigned char *)body,
								    strlen(body), &key, &got),
					 ESC_ERR_BAD_INPUT);
			assert_null(key);
			assert_null(got);
			free(body);
		}
	}
	/* Cut anywhere before the close delimiter: refused, never read past the end. */
	body = skg_body("\r\n", "esc-0123abcd", key_ct, key_b64, cert_ct, cert_b64, "base64");
	for (i = 0; i + 19 < strlen(body); i += 7)
		assert_int_equal(esc_est_serverkeygen_parse(f->ctx, ct, (const unsigned char *)body, i, &key, &got),
				 ESC_ERR_BAD_INPUT);
	assert_null(key);
	free(body);
	assert_int_equal(
		esc_est_serverkeygen_parse(f->ctx, ct, (const unsigned char *)"x", ESC_EST_REPLY_MAX + 1, &key, &got),
		ESC_ERR_BAD_INPUT);
	free(key_b64);
	free(cert_b64);
	free(certs_der);
	OPENSSL_free(p8der);
	PKCS8_PRIV_KEY_INFO_free(p8);
}

/* A certificate for pub issued by ca (key signer) with esc_ca_issue's profile. */
static X509 *
issue(struct fixture *f, X509 *ca, EVP_PKEY *signer, EVP_PKEY *pub, enum esc_cert_profile profile)
{
	X509_NAME *name = X509_NAME_new();
	X509 *x = NULL;

	assert_non_null(name);
	assert_int_equal(
		X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)"leaf", -1, -1, 0), 1);
	assert_int_equal(esc_ca_issue(f->ctx, ca, signer, pub, name, 30, profile, &x), ESC_OK);
	X509_NAME_free(name);
	return x;
}

static void
test_cert_checks(void **state)
{
	struct fixture *f = *state;
	STACK_OF(X509) *cacerts = sk_X509_new_null(), *others = sk_X509_new_null();
	X509 *ec_leaf, *rsa_leaf, *audit_leaf, *foreign;

	/* The EC test key plays the CA; the RSA one another CA. */
	assert_non_null(cacerts);
	assert_non_null(others);
	assert_true(sk_X509_push(cacerts, f->k.ec_cert) > 0);
	assert_true(sk_X509_push(others, f->k.rsa_cert) > 0);
	ec_leaf = issue(f, f->k.ec_cert, f->k.ec, f->enrollee, ESC_PROFILE_ENCRYPTION);
	rsa_leaf = issue(f, f->k.ec_cert, f->k.ec, f->enrollee_rsa, ESC_PROFILE_ENCRYPTION);
	audit_leaf = issue(f, f->k.ec_cert, f->k.ec, f->enrollee, ESC_PROFILE_AUDIT);
	foreign = issue(f, f->k.rsa_cert, f->k.rsa, f->enrollee, ESC_PROFILE_ENCRYPTION);

	assert_int_equal(esc_est_cert_check(f->ctx, ec_leaf, cacerts, f->enrollee), ESC_OK);
	assert_int_equal(esc_est_cert_check(f->ctx, ec_leaf, cacerts, NULL), ESC_OK);
	assert_int_equal(esc_est_cert_check(f->ctx, ec_leaf, cacerts, f->enrollee_rsa), ESC_ERR_MISMATCH);
	assert_int_equal(esc_est_cert_check(f->ctx, foreign, cacerts, f->enrollee), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "does not verify"));
	assert_int_equal(esc_est_cert_check(f->ctx, ec_leaf, others, f->enrollee), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_est_cert_check(f->ctx, NULL, cacerts, NULL), ESC_ERR_USAGE);

	/* Transport: keyAgreement (EC), keyEncipherment (RSA); not signing-only, not the CA, not another CA's. */
	assert_int_equal(esc_est_transport_check(f->ctx, ec_leaf, cacerts), ESC_OK);
	assert_int_equal(esc_est_transport_check(f->ctx, rsa_leaf, cacerts), ESC_OK);
	assert_int_equal(esc_est_transport_check(f->ctx, audit_leaf, cacerts), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "keyAgreement"));
	assert_int_equal(esc_est_transport_check(f->ctx, f->k.ec_cert, cacerts), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_est_transport_check(f->ctx, foreign, cacerts), ESC_ERR_BAD_INPUT);

	X509_free(ec_leaf);
	X509_free(rsa_leaf);
	X509_free(audit_leaf);
	X509_free(foreign);
	sk_X509_free(cacerts);
	sk_X509_free(others);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64_roundtrip),	  cmocka_unit_test(test_b64_whitespace),
		cmocka_unit_test(test_b64_bad_chars),	  cmocka_unit_test(test_b64_bad_padding),
		cmocka_unit_test(test_b64_sizes),	  cmocka_unit_test(test_csr_good),
		cmocka_unit_test(test_csr_bad),		  cmocka_unit_test(test_csr_kid),
		cmocka_unit_test(test_cmc_roundtrip_ec),  cmocka_unit_test(test_cmc_roundtrip_rsa),
		cmocka_unit_test(test_cmc_key_mismatch),  cmocka_unit_test(test_cmc_variants),
		cmocka_unit_test(test_cmc_bad_outer),	  cmocka_unit_test(test_certs_only),
		cmocka_unit_test(test_certs_only_bad),	  cmocka_unit_test(test_csrattrs),
		cmocka_unit_test(test_csrattrs_profiles), cmocka_unit_test(test_key_recipient),
		cmocka_unit_test(test_key_package),	  cmocka_unit_test(test_csr_symmetric),
		cmocka_unit_test(test_client_csr),	  cmocka_unit_test(test_serverkeygen_parse),
		cmocka_unit_test(test_cert_checks),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
