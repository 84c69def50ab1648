/*
 * Unit tests for the KEK split (shamir.c over libgfshare): every k-subset
 * of n shares recovers the secret, fewer than k do not, bad arguments are
 * refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/rand.h>

#include "shamir_internal.h"
#include "testctx.h"

#define LEN 32

static void
split_n(struct esc_ctx *ctx, const unsigned char *secret, unsigned k, unsigned n, unsigned char *xs,
	unsigned char store[][LEN], unsigned char **ptrs)
{
	unsigned i;

	for (i = 0; i < n; i++) {
		xs[i] = (unsigned char)(i + 1);
		ptrs[i] = store[i];
	}
	assert_int_equal(esc_shamir_split(ctx, secret, LEN, k, n, xs, ptrs), ESC_OK);
}

/* Combine the shares whose bits are set in mask; compare with secret. */
static int
combine_mask(struct esc_ctx *ctx, const unsigned char *secret, unsigned n, const unsigned char *xs,
	     unsigned char **ptrs, unsigned mask)
{
	unsigned char sx[ESC_SHAMIR_MAX_SHARES], *sp[ESC_SHAMIR_MAX_SHARES], out[LEN];
	unsigned i, c = 0;

	for (i = 0; i < n; i++)
		if (mask & (1u << i)) {
			sx[c] = xs[i];
			sp[c++] = ptrs[i];
		}
	assert_int_equal(esc_shamir_combine(ctx, sx, sp, c, LEN, out), ESC_OK);
	return memcmp(out, secret, LEN) == 0;
}

static void
test_every_subset(void **state)
{
	unsigned char secret[LEN], xs[ESC_SHAMIR_MAX_SHARES], store[ESC_SHAMIR_MAX_SHARES][LEN],
		*ptrs[ESC_SHAMIR_MAX_SHARES];
	unsigned n, k, mask, tried = 0, recovered = 0, short_ok = 0;

	for (n = 2; n <= 6; n++)
		for (k = 2; k <= n; k++) {
			assert_int_equal(RAND_bytes(secret, LEN), 1);
			split_n(*state, secret, k, n, xs, store, ptrs);
			for (mask = 1; mask < (1u << n); mask++) {
				unsigned pop = (unsigned)__builtin_popcount(mask);

				if (pop >= k) {
					tried++;
					recovered += (unsigned)combine_mask(*state, secret, n, xs, ptrs, mask);
				} else if (combine_mask(*state, secret, n, xs, ptrs, mask)) {
					short_ok++; /* k-1 or fewer shares: the secret only by a 2^-256 chance */
				}
			}
		}
	assert_true(tried > 0);
	assert_int_equal(recovered, tried);
	assert_int_equal(short_ok, 0);
}

/* The x values are the caller's: not 1..n (a record's share of KRA 3 at x = 3 whatever the set). */
static void
test_chosen_x(void **state)
{
	unsigned char secret[LEN], xs[3] = {7, 200, 3}, store[3][LEN], *ptrs[3] = {store[0], store[1], store[2]};
	unsigned char sx[2] = {3, 200}, *sp[2] = {store[2], store[1]}, out[LEN];

	assert_int_equal(RAND_bytes(secret, LEN), 1);
	assert_int_equal(esc_shamir_split(*state, secret, LEN, 2, 3, xs, ptrs), ESC_OK);
	assert_int_equal(esc_shamir_combine(*state, sx, sp, 2, LEN, out), ESC_OK);
	assert_memory_equal(out, secret, LEN);
	/* A share given under another x combines to something else. */
	sx[0] = 7;
	assert_int_equal(esc_shamir_combine(*state, sx, sp, 2, LEN, out), ESC_OK);
	assert_memory_not_equal(out, secret, LEN);
}

/* Two splits of one secret differ (fresh coefficients); shares are not the secret. */
static void
test_random_coefficients(void **state)
{
	unsigned char secret[LEN], xs[ESC_SHAMIR_MAX_SHARES], a[ESC_SHAMIR_MAX_SHARES][LEN],
		b[ESC_SHAMIR_MAX_SHARES][LEN], *pa[ESC_SHAMIR_MAX_SHARES], *pb[ESC_SHAMIR_MAX_SHARES];

	assert_int_equal(RAND_bytes(secret, LEN), 1);
	split_n(*state, secret, 2, 3, xs, a, pa);
	split_n(*state, secret, 2, 3, xs, b, pb);
	assert_memory_not_equal(a[0], b[0], LEN);
	assert_memory_not_equal(a[0], secret, LEN);
}

static void
test_refusals(void **state)
{
	unsigned char secret[LEN] = {1}, store[17][LEN], *ptrs[17], xs[17], out[LEN];
	unsigned i;

	for (i = 0; i < 17; i++) {
		ptrs[i] = store[i];
		xs[i] = (unsigned char)(i + 1);
	}
	assert_int_equal(esc_shamir_split(*state, secret, LEN, 1, 3, xs, ptrs), ESC_ERR_USAGE); /* k 1: no split */
	assert_int_equal(esc_shamir_split(*state, secret, LEN, 4, 3, xs, ptrs), ESC_ERR_USAGE); /* k > n */
	assert_int_equal(esc_shamir_split(*state, secret, LEN, 2, 17, xs, ptrs), ESC_ERR_USAGE);
	assert_int_equal(esc_shamir_split(*state, secret, 0, 2, 3, xs, ptrs), ESC_ERR_USAGE);
	assert_int_equal(esc_shamir_split(*state, secret, 65, 2, 3, xs, ptrs), ESC_ERR_USAGE);
	xs[1] = 1; /* repeated x */
	assert_int_equal(esc_shamir_split(*state, secret, LEN, 2, 3, xs, ptrs), ESC_ERR_USAGE);
	assert_int_equal(esc_shamir_combine(*state, xs, ptrs, 2, LEN, out), ESC_ERR_USAGE);
	xs[1] = 0; /* x 0 is the secret itself */
	assert_int_equal(esc_shamir_split(*state, secret, LEN, 2, 3, xs, ptrs), ESC_ERR_USAGE);
	assert_int_equal(esc_shamir_combine(*state, xs, ptrs, 0, LEN, out), ESC_ERR_USAGE);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_subset, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_chosen_x, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_random_coefficients, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_refusals, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
