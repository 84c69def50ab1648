/*
 * Fuzz target: the sealed content of an archive record (esc_record_parse:
 * the DER EscrowRecord inside a record's outer layer, checked against the
 * row it was read from).  Whoever can write to the database and holds the
 * storage certificate (it is public) can seal any content, so this is
 * outside input.  The row it is checked against is fixed (ROW_ID,
 * ROW_HASH); the seeds (make-corpus.sh) carry both, so inputs reach the
 * checks past the DER and the copy of the inner layer.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include <p11escrow/ctx.h>

#include "archive_internal.h"
#include "fuzz.h"

#define ROW_ID "00000000-0000-4000-8000-000000000001"
#define ROW_HASH "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	unsigned char *inner = NULL;
	size_t innerlen = 0;
	enum esc_err r;

	if (esc_ctx_new(&ctx) != ESC_OK)
		abort();
	r = esc_record_parse(ctx, data, size, ROW_ID, ROW_HASH, &inner, &innerlen, NULL);
	/* Content that is not this row's record is tampering, never anything else (NOMEM aside). */
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_TAMPERED);
	FUZZ_CHECK(r == ESC_OK || esc_ctx_errmsg(ctx)[0] != '\0');
	if (r == ESC_OK) {
		/* Only a record sealed for this row and certificate opens, and its inner layer is copied out whole. */
		FUZZ_CHECK(memmem(data, size, ROW_ID, strlen(ROW_ID)) != NULL);
		FUZZ_CHECK(inner != NULL && innerlen > 0 && innerlen < size);
		FUZZ_CHECK(memmem(data, size, inner, innerlen) != NULL);
	} else {
		FUZZ_CHECK(inner == NULL);
	}
	free(inner);
	esc_ctx_free(ctx);
	ERR_clear_error();
	return 0;
}
