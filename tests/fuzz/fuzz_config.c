/*
 * Fuzz target: the configuration file parser (esc_config_load_buffer: lines,
 * quoting, keys and every value check).  The input is a whole file.
 */
#include <string.h>

#include <openssl/err.h>

#include <p11escrow/config.h>
#include <p11escrow/ctx.h>

#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL, *def = NULL;
	const char *key, *val;
	size_t i;
	enum esc_err r;

	if (esc_ctx_new(&ctx) != ESC_OK || esc_config_new(ctx, &cfg) != ESC_OK || esc_config_new(ctx, &def) != ESC_OK)
		abort();
	r = esc_config_load_buffer(ctx, cfg, (const char *)data, size, "fuzz.conf");
	FUZZ_CHECK(r == ESC_OK || r == ESC_ERR_CONFIG);
	FUZZ_CHECK(size <= ESC_CONFIG_FILE_MAX || r == ESC_ERR_CONFIG);
	/*
	 * Every key still has a value, loaded or default, and each is bounded;
	 * on error the configuration is unchanged (all defaults here).
	 */
	for (i = 0; (key = esc_config_key_name(i)) != NULL; i++) {
		val = esc_config_get(cfg, key);
		FUZZ_CHECK(val != NULL && strlen(val) <= ESC_CONFIG_LINE_MAX);
		FUZZ_CHECK(r == ESC_OK || strcmp(val, esc_config_get(def, key)) == 0);
		(void)esc_config_get_long(cfg, key);
	}
	esc_config_free(def);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	ERR_clear_error();
	return 0;
}
