/*
 * cmocka setup/teardown giving each test a fresh struct esc_ctx in *state.
 */
#ifndef P11ESCROW_TESTCTX_H
#define P11ESCROW_TESTCTX_H

#include <p11escrow/ctx.h>

static inline int
test_ctx_setup(void **state)
{
	struct esc_ctx *ctx = NULL;

	if (esc_ctx_new(&ctx) != ESC_OK)
		return -1;
	*state = ctx;
	return 0;
}

static inline int
test_ctx_teardown(void **state)
{
	esc_ctx_free(*state);
	return 0;
}

#endif
