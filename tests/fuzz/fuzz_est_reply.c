/*
 * Fuzz target: what an EST server answers a client (est.h, "Client side"),
 * as p11escrow est reads it.  The input is the answer's Content-Type, a
 * line break, then its body:
 *
 *   esc_est_serverkeygen_parse (the /serverkeygen multipart answer: its
 *   boundary, parts, part headers, the base64 PKCS#8 key decoded in the
 *   secure heap, the certs-only part), and esc_est_certs_decode of the
 *   whole body (/cacerts, /simpleenroll, /fullcmc, /transportcert).
 *
 * An input without a line break is all Content-Type, with an empty body.
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/est.h>

#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	const uint8_t *nl = memchr(data, '\n', size);
	size_t ctlen = nl != NULL ? (size_t)(nl - data) : size;
	char ctype[256];
	const unsigned char *body = nl != NULL ? nl + 1 : data + size;
	size_t bodylen = size - (size_t)(body - data);
	STACK_OF(X509) *certs = NULL;
	EVP_PKEY *key = NULL;
	enum esc_err r;

	if (ctlen >= sizeof(ctype) || esc_ctx_new(&ctx) != ESC_OK)
		return 0;
	memcpy(ctype, data, ctlen);
	ctype[ctlen] = '\0';

	r = esc_est_serverkeygen_parse(ctx, ctype, body, bodylen, &key, &certs);
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT || r == ESC_ERR_USAGE);
	if (r == ESC_OK) {
		FUZZ_CHECK(key != NULL && certs != NULL && sk_X509_num(certs) > 0);
		FUZZ_CHECK(bodylen <= ESC_EST_REPLY_MAX);
	} else {
		FUZZ_CHECK(key == NULL && certs == NULL); /* untouched on failure */
	}
	EVP_PKEY_free(key);
	sk_X509_pop_free(certs, X509_free);
	certs = NULL;

	r = esc_est_certs_decode(ctx, (const char *)body, bodylen, &certs);
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
	FUZZ_CHECK((r == ESC_OK) == (certs != NULL));
	if (certs != NULL)
		FUZZ_CHECK(sk_X509_num(certs) > 0);
	sk_X509_pop_free(certs, X509_free);
	ERR_clear_error();
	esc_ctx_free(ctx);
	return 0;
}
