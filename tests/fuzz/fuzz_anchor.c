/*
 * Fuzz target: an audit checkpoint kept outside the database (a file from
 * `audit checkpoint --export`, or a line of the service's log), as `audit
 * verify --checkpoint` and POST /api/v1/audit/verify read it: the tag, the
 * key=value fields, the optional PEM certificate (esc_audit_anchor_parse,
 * internal, src/lib/audit_internal.h).  Anyone can hand the verifier a file.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include <p11escrow/audit.h>
#include <p11escrow/ctx.h>

#include "audit_internal.h"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	struct esc_audit_anchor a;
	enum esc_err r;

	if (esc_ctx_new(&ctx) != ESC_OK)
		abort();
	r = esc_audit_anchor_parse(ctx, (const char *)data, size, &a);
	/* Well formed, or refused as malformed with a reason: nothing else, and never a crash. */
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
	FUZZ_CHECK(r == ESC_OK || esc_ctx_errmsg(ctx)[0] != '\0');
	FUZZ_CHECK(r != ESC_OK || size <= ESC_AUDIT_CHECKPOINT_MAX);
	if (r == ESC_OK)
		FUZZ_CHECK(a.event > 0 && a.at[0] != '\0' && strlen(a.at) < sizeof(a.at));
	esc_ctx_free(ctx);
	ERR_clear_error();
	return 0;
}
