/*
 * Fuzz target: the EST and CMC decoders of est.h, which read what enrollees
 * and EST servers send.  The first input byte selects one (modulo 4), the
 * rest is its input:
 *
 *   0  esc_b64_decode (RFC 8951 bodies); what decodes must encode and
 *      decode back to the same bytes
 *   1  esc_csr_decode, then esc_csr_asymmetric_kid on what decodes
 *   2  esc_cmc_request_parse (a Full PKI Request), then the same checks on
 *      its request, and its envelope must decode as CMS
 *   3  esc_certs_only_parse; what decodes must build and parse back to the
 *      same certificates
 *
 * No keys: nothing here decrypts (the envelope is opened by the CA's
 * transport key elsewhere) and the PKCS#10 signature is checked with the
 * request's own key.
 */
#include <string.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/est.h>

#include "fuzz.h"

static void
check_kid(struct esc_ctx *ctx, X509_REQ *req)
{
	unsigned char *kid = (unsigned char *)"unset";
	size_t kidlen = 99;
	enum esc_err r = esc_csr_asymmetric_kid(ctx, req, &kid, &kidlen);

	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
	if (r == ESC_OK)
		FUZZ_CHECK((kid == NULL && kidlen == 0) || (kid != NULL && kidlen > 0 && kidlen <= 256));
	else
		FUZZ_CHECK(kid != NULL && kidlen == 99); /* untouched on failure */
	if (r == ESC_OK)
		free(kid);
}

static void
fuzz_b64(struct esc_ctx *ctx, const uint8_t *data, size_t size)
{
	unsigned char *out = NULL, *back = NULL;
	size_t outlen = 0, textlen = 0, backlen = 0;
	char *text = NULL;
	enum esc_err r = esc_b64_decode(ctx, (const char *)data, size, &out, &outlen);

	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
	if (r != ESC_OK) {
		FUZZ_CHECK(out == NULL && outlen == 0);
		return;
	}
	FUZZ_CHECK(out != NULL && outlen > 0 && outlen <= ESC_EST_BODY_MAX);
	/* Canonical: one encoding per byte string, so the round trip is exact. */
	FUZZ_CHECK(esc_b64_encode(ctx, out, outlen, &text, &textlen) == ESC_OK);
	FUZZ_CHECK(strlen(text) == textlen);
	FUZZ_CHECK(esc_b64_decode(ctx, text, textlen, &back, &backlen) == ESC_OK);
	FUZZ_CHECK(backlen == outlen && memcmp(back, out, outlen) == 0);
	free(back);
	free(text);
	free(out);
}

static void
fuzz_csr(struct esc_ctx *ctx, const uint8_t *data, size_t size)
{
	X509_REQ *req = NULL;
	enum esc_err r = esc_csr_decode(ctx, data, size, &req);

	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT || r == ESC_ERR_CRYPTO);
	FUZZ_CHECK((r == ESC_OK) == (req != NULL));
	if (req != NULL)
		check_kid(ctx, req);
	X509_REQ_free(req);
}

static void
fuzz_cmc(struct esc_ctx *ctx, const uint8_t *data, size_t size)
{
	X509_REQ *req = NULL;
	unsigned char *env = NULL;
	size_t envlen = 0;
	enum esc_err r = esc_cmc_request_parse(ctx, data, size, &req, &env, &envlen);

	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT || r == ESC_ERR_CRYPTO);
	if (r != ESC_OK) {
		FUZZ_CHECK(req == NULL && env == NULL && envlen == 0);
		return;
	}
	FUZZ_CHECK(req != NULL && env != NULL && envlen > 0);
	check_kid(ctx, req);
	{
		const unsigned char *p = env;
		CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)envlen);
		int nid;

		FUZZ_CHECK(cms != NULL && p == env + envlen);
		nid = OBJ_obj2nid(CMS_get0_type(cms));
		FUZZ_CHECK(nid == NID_pkcs7_enveloped || nid == NID_id_smime_ct_authEnvelopedData);
		CMS_ContentInfo_free(cms);
	}
	free(env);
	X509_REQ_free(req);
}

static void
fuzz_certs_only(struct esc_ctx *ctx, const uint8_t *data, size_t size)
{
	STACK_OF(X509) *certs = NULL, *again = NULL;
	unsigned char *der = NULL;
	size_t derlen = 0;
	enum esc_err r = esc_certs_only_parse(ctx, data, size, &certs);
	int i, n;

	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
	FUZZ_CHECK((r == ESC_OK) == (certs != NULL));
	if (certs == NULL)
		return;
	n = sk_X509_num(certs);
	FUZZ_CHECK(n > 0);
	/* What parses builds again, and parses back to the same certificates in the same order. */
	{
		X509 **v = malloc((size_t)n * sizeof(*v));

		FUZZ_CHECK(v != NULL);
		for (i = 0; i < n; i++)
			v[i] = sk_X509_value(certs, i);
		r = esc_certs_only_build(ctx, v, (size_t)n, &der, &derlen);
		free(v);
	}
	/* A decoded certificate may not encode again (OpenSSL keeps no encoding of some): CRYPTO, then. */
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_CRYPTO);
	if (r == ESC_OK && derlen <= ESC_EST_BODY_MAX) {
		FUZZ_CHECK(esc_certs_only_parse(ctx, der, derlen, &again) == ESC_OK);
		FUZZ_CHECK(sk_X509_num(again) == n);
		for (i = 0; i < n; i++)
			FUZZ_CHECK(X509_cmp(sk_X509_value(again, i), sk_X509_value(certs, i)) == 0);
		sk_X509_pop_free(again, X509_free);
	}
	free(der);
	sk_X509_pop_free(certs, X509_free);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;

	if (size < 1)
		return 0;
	if (esc_ctx_new(&ctx) != ESC_OK)
		abort();
	switch (data[0] % 4) {
	case 0:
		fuzz_b64(ctx, data + 1, size - 1);
		break;
	case 1:
		fuzz_csr(ctx, data + 1, size - 1);
		break;
	case 2:
		fuzz_cmc(ctx, data + 1, size - 1);
		break;
	default:
		fuzz_certs_only(ctx, data + 1, size - 1);
		break;
	}
	esc_ctx_free(ctx);
	ERR_clear_error();
	return 0;
}
