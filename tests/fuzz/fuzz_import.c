/*
 * Fuzz target: key and certificate files for manual archival
 * (esc_import_load: PKCS#12 DER, with its MAC and PBE/PBES2 layers, and PEM
 * with PKCS#8, encrypted PKCS#8 and traditional keys and certificates).
 *
 * The password is fixed: the seed PKCS#12 files and encrypted PEM keys in
 * corpus/import use it (see make-corpus.sh), so mutations of them get past
 * the MAC and the decryption.
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/import.h>
#include <p11escrow/pin.h>

#include "fuzz.h"

#define FUZZ_PASSWORD "fuzz-password"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	struct esc_secret *pass = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	enum esc_err r;

	if (esc_ctx_new(&ctx) != ESC_OK ||
	    esc_secret_new(ctx, FUZZ_PASSWORD, sizeof(FUZZ_PASSWORD) - 1, &pass) != ESC_OK)
		abort();
	r = esc_import_load(ctx, data, size, "fuzz-input", pass, &key, &cert);
	/* Both outputs on success, neither on failure (STYLE.md rule 5). */
	if (r == ESC_OK)
		FUZZ_CHECK(key != NULL && cert != NULL);
	else
		FUZZ_CHECK(key == NULL && cert == NULL);
	/* The errors import.h lists; PIN_MISSING only ever without a password. */
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT || r == ESC_ERR_AUTH || r == ESC_ERR_MISMATCH);
	EVP_PKEY_free(key);
	X509_free(cert);
	esc_secret_free(pass);
	esc_ctx_free(ctx);
	ERR_clear_error();
	return 0;
}
