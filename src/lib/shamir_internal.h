/*
 * Shamir secret sharing of a record's KEK (k-of-n KRA threshold,
 * docs/archival.md "Record version 2").  The field arithmetic is
 * libgfshare's (GF(2^8), one polynomial per byte); this module only sets
 * its random source to OpenSSL's CSPRNG and checks arguments.  Not
 * installed.
 */
#ifndef P11ESCROW_SHAMIR_INTERNAL_H
#define P11ESCROW_SHAMIR_INTERNAL_H

#include <stddef.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

#define ESC_SHAMIR_MAX_SHARES 16 /* kra_set_size's maximum */
#define ESC_SHAMIR_MAX_SECRET 64

/*
 * Split secret (len bytes, 1..ESC_SHAMIR_MAX_SECRET) into n shares
 * (2 <= k <= n <= ESC_SHAMIR_MAX_SHARES) of which any k recover it.  Share
 * i is evaluated at x = xs[i], which the caller chooses: distinct, non-zero
 * (gfshare's coefficients; gfsplit numbers them the same way).  shares[i]
 * are n caller buffers of len bytes each (secure memory: each share is a
 * secret).  The polynomial's coefficients come from RAND_bytes.
 * Errors: USAGE (k, n, len or xs out of range), CRYPTO (no randomness),
 * NOMEM.  On failure every share buffer is zeroed.
 */
enum esc_err esc_shamir_split(struct esc_ctx *ctx, const unsigned char *secret, size_t len, unsigned k, unsigned n,
			      const unsigned char *xs, unsigned char *const *shares) ESC_MUST_CHECK;

/*
 * Combine count shares (shares[i] evaluated at xs[i], distinct, non-zero;
 * len bytes each) into secret (len bytes).  Interpolation cannot tell too
 * few or wrong shares: the result is then another value, which the caller
 * detects (the inner layer's GCM tag).  Errors: USAGE (count 0 or above
 * ESC_SHAMIR_MAX_SHARES, xs zero or repeated, len out of range), NOMEM.
 */
enum esc_err esc_shamir_combine(struct esc_ctx *ctx, const unsigned char *xs, unsigned char *const *shares,
				unsigned count, size_t len, unsigned char *secret) ESC_MUST_CHECK;

#endif
