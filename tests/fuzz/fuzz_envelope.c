/*
 * Fuzz target: CMS AuthEnvelopedData envelopes (the DER parser and the
 * recipient matching of esc_envelope_has_recipient; the key transport, key
 * agreement and AES-GCM steps of esc_envelope_open).
 *
 * Two fixed recipients, an RSA-2048 (key transport, RSA-OAEP) and an EC
 * P-256 one (key agreement, ECDH), with software keys and self-signed
 * certificates.  They are fixed test keys (envelope_keys.h, made by
 * make-corpus.sh), not generated per run: a new certificate would get a new
 * random serial, so the seed envelopes addressed to these certificates
 * would stop reaching the decryption code, and runs would not be
 * reproducible.  They are loaded once, on the first call, and stay reachable
 * until exit (not a leak for LeakSanitizer).
 */
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/envelope.h>

#include "envelope_keys.h"
#include "fuzz.h"

struct recipient {
	const char *key_pem, *cert_pem;
	EVP_PKEY *key;
	X509 *cert;
};

static struct recipient recipients[] = {
	{envelope_rsa_key_pem, envelope_rsa_cert_pem, NULL, NULL},
	{envelope_ec_key_pem, envelope_ec_cert_pem, NULL, NULL},
};

#define NRECIPIENTS (sizeof(recipients) / sizeof(recipients[0]))

static void
load_recipients(void)
{
	BIO *b;
	size_t i;

	for (i = 0; i < NRECIPIENTS; i++) {
		struct recipient *rc = &recipients[i];

		if ((b = BIO_new_mem_buf(rc->key_pem, -1)) == NULL ||
		    (rc->key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL)) == NULL)
			abort();
		BIO_free(b);
		if ((b = BIO_new_mem_buf(rc->cert_pem, -1)) == NULL ||
		    (rc->cert = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL)
			abort();
		BIO_free(b);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	unsigned char *plain;
	size_t i, plainlen;
	enum esc_err r, ro;
	int yes;

	if (recipients[0].key == NULL)
		load_recipients();
	if (esc_ctx_new(&ctx) != ESC_OK)
		abort();
	for (i = 0; i < NRECIPIENTS; i++) {
		struct recipient *rc = &recipients[i];

		yes = -1;
		r = esc_envelope_has_recipient(ctx, data, size, rc->cert, &yes);
		FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
		FUZZ_CHECK(r != ESC_OK || yes == 0 || yes == 1);

		plain = NULL;
		plainlen = 0;
		ro = esc_envelope_open(ctx, data, size, rc->key, rc->cert, &plain, &plainlen);
		/* Both parse the same way; open gets past the parse only as a recipient. */
		if (r != ESC_OK)
			FUZZ_CHECK(ro == r);
		else if (!yes)
			FUZZ_CHECK(ro == ESC_ERR_NOT_RECIPIENT);
		else
			FUZZ_CHECK(ro == ESC_OK || ro == ESC_ERR_CRYPTO || ro == ESC_ERR_TAMPERED ||
				   ro == ESC_ERR_BAD_INPUT);
		/* Outputs are set only on success (STYLE.md rule 5), and bounded. */
		if (ro == ESC_OK)
			FUZZ_CHECK(plain != NULL && plainlen > 0 && plainlen <= ESC_ENVELOPE_MAX);
		else
			FUZZ_CHECK(plain == NULL && plainlen == 0);
		esc_envelope_plain_free(plain, plainlen);
	}
	esc_ctx_free(ctx);
	ERR_clear_error();
	return 0;
}
