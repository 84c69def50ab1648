/*
 * Shamir secret sharing over libgfshare: argument checks and a CSPRNG.
 */
#include <string.h>

#include <libgfshare.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include "internal.h"
#include "shamir_internal.h"

/*
 * libgfshare draws the polynomial's coefficients through the global
 * function pointer gfshare_fill_rand (its default is no generator at all).
 * Ours is RAND_bytes; its void signature cannot report a failure, so a
 * failure is noted per thread and the split refused afterwards.
 */
static _Thread_local int rand_failed;

static void
fill_rand(unsigned char *buf, unsigned int len)
{
	if (RAND_bytes(buf, (int)len) != 1) {
		rand_failed = 1;
		OPENSSL_cleanse(buf, len);
	}
}

static int
xs_ok(const unsigned char *xs, unsigned n)
{
	unsigned i, j;

	for (i = 0; i < n; i++) {
		if (xs[i] == 0)
			return 0;
		for (j = 0; j < i; j++)
			if (xs[i] == xs[j])
				return 0;
	}
	return 1;
}

enum esc_err
esc_shamir_split(struct esc_ctx *ctx, const unsigned char *secret, size_t len, unsigned k, unsigned n,
		 const unsigned char *xs, unsigned char *const *shares)
{
	gfshare_ctx *g = NULL;
	unsigned char nrs[ESC_SHAMIR_MAX_SHARES], buf[ESC_SHAMIR_MAX_SECRET];
	unsigned i;
	enum esc_err r;

	if (k < 2 || k > n || n > ESC_SHAMIR_MAX_SHARES || len == 0 || len > ESC_SHAMIR_MAX_SECRET || !xs_ok(xs, n))
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a secret is split into 2..%d shares, 2..n needed, at distinct "
				 "non-zero x",
				 ESC_SHAMIR_MAX_SHARES);
	memcpy(nrs, xs, n);
	/* gfshare_ctx_enc_setsecret takes a non-const pointer: a copy, wiped below. */
	memcpy(buf, secret, len);
	gfshare_fill_rand = fill_rand;
	rand_failed = 0;
	if ((g = gfshare_ctx_init_enc(nrs, n, (unsigned char)k, (unsigned int)len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "cannot set up the secret split");
		goto out;
	}
	gfshare_ctx_enc_setsecret(g, buf);
	for (i = 0; i < n; i++)
		gfshare_ctx_enc_getshare(g, (unsigned char)i, shares[i]); /* i: the index into nrs */
	if (rand_failed) {
		for (i = 0; i < n; i++)
			OPENSSL_cleanse(shares[i], len);
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "no randomness for the secret split");
		goto out;
	}
	r = ESC_OK;
out:
	if (g != NULL)
		gfshare_ctx_free(g); /* overwrites its coefficients (the secret among them) before freeing */
	OPENSSL_cleanse(buf, sizeof(buf));
	return r;
}

enum esc_err
esc_shamir_combine(struct esc_ctx *ctx, const unsigned char *xs, unsigned char *const *shares, unsigned count,
		   size_t len, unsigned char *secret)
{
	gfshare_ctx *g = NULL;
	unsigned char nrs[ESC_SHAMIR_MAX_SHARES];
	unsigned i;

	if (count == 0 || count > ESC_SHAMIR_MAX_SHARES || len == 0 || len > ESC_SHAMIR_MAX_SECRET || !xs_ok(xs, count))
		return esc_error(ctx, ESC_ERR_USAGE, "1..%d shares of distinct non-zero x are combined",
				 ESC_SHAMIR_MAX_SHARES);
	memcpy(nrs, xs, count);
	/* gfshare_ctx_free overwrites with gfshare_fill_rand: ours, even if no split ran in this process. */
	gfshare_fill_rand = fill_rand;
	if ((g = gfshare_ctx_init_dec(nrs, count, (unsigned int)len)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "cannot set up the share combination");
	for (i = 0; i < count; i++)
		gfshare_ctx_dec_giveshare(g, (unsigned char)i, shares[i]);
	gfshare_ctx_dec_extract(g, secret);
	gfshare_ctx_free(g);
	return ESC_OK;
}
