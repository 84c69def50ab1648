/*
 * Fuzz target: the keeper protocol's decoder (esc_kp_decode), which the
 * keeper process runs on every message a network-facing worker sends: a
 * worker taken over by an attacker writes whatever bytes it likes.  The
 * input is one message without its length field.  Whatever decodes must
 * be a message the tables allow (it encodes again), and the encoding must
 * decode to the same fields.
 */
#include <string.h>

#include <openssl/crypto.h>

#include <p11escrow/ctx.h>

#include "fuzz.h"
#include "keeper_proto.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	struct esc_kp_msg m, again;
	unsigned char *enc = NULL;
	size_t enclen = 0;
	enum esc_err r;
	unsigned tag;

	if (esc_ctx_new(&ctx) != ESC_OK)
		abort();
	r = esc_kp_decode(ctx, data, size, &m);
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_BAD_INPUT);
	FUZZ_CHECK(r == ESC_OK || esc_ctx_errmsg(ctx)[0] != '\0');
	if (r == ESC_OK) {
		/* Fields point into the input, inside its bounds. */
		for (tag = 1; tag <= ESC_KP_T_MAX; tag++)
			FUZZ_CHECK(m.f[tag].p == NULL ||
				   (m.f[tag].p >= data && m.f[tag].p + m.f[tag].len <= data + size));
		FUZZ_CHECK(esc_kp_encode(ctx, &m, 0, &enc, &enclen) == ESC_OK);
		FUZZ_CHECK(enclen == size + 4 && esc_kp_frame_length(enc) == size);
		FUZZ_CHECK(esc_kp_decode(ctx, enc + 4, enclen - 4, &again) == ESC_OK);
		FUZZ_CHECK(again.type == m.type && again.seq == m.seq);
		for (tag = 1; tag <= ESC_KP_T_MAX; tag++) {
			FUZZ_CHECK((again.f[tag].p == NULL) == (m.f[tag].p == NULL));
			FUZZ_CHECK(again.f[tag].len == m.f[tag].len);
			FUZZ_CHECK(m.f[tag].len == 0 || memcmp(again.f[tag].p, m.f[tag].p, m.f[tag].len) == 0);
		}
		esc_kp_free(enc, enclen, 0);
	}
	esc_ctx_free(ctx);
	return 0;
}
