/*
 * Fuzz target: PKCS#11 URIs (esc_token_uri_check, RFC 7512 through p11-kit's
 * parser, and the refusal of PIN attributes).  The input is one URI: copied,
 * capped at URI_MAX bytes and NUL-terminated (an embedded NUL ends it early,
 * as it would in a C string from a config file or the command line).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include <p11escrow/ctx.h>
#include <p11escrow/token.h>

#include "fuzz.h"

#define URI_MAX 4096

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	char *uri;
	size_t n = size < URI_MAX ? size : URI_MAX;
	enum esc_err r;

	if ((uri = malloc(n + 1)) == NULL || esc_ctx_new(&ctx) != ESC_OK)
		abort();
	memcpy(uri, data, n);
	uri[n] = '\0';
	r = esc_token_uri_check(ctx, uri);
	/* ESC_OK or ESC_ERR_URI only; NOMEM is not expected at these sizes. */
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_URI);
	FUZZ_CHECK(r == ESC_OK || esc_ctx_errmsg(ctx)[0] != '\0');
	/* A PIN never passes (STYLE.md rule 8) and is never echoed in the message. */
	if (strcasestr(uri, "pin-value") != NULL || strcasestr(uri, "pin-source") != NULL) {
		FUZZ_CHECK(r == ESC_ERR_URI);
		FUZZ_CHECK(strcasestr(esc_ctx_errmsg(ctx), "pin-value=") == NULL);
	}
	esc_ctx_free(ctx);
	free(uri);
	ERR_clear_error();
	return 0;
}
