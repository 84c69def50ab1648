/*
 * Internal helpers shared by the modules of libp11escrow.  Not installed.
 */
#ifndef P11ESCROW_INTERNAL_H
#define P11ESCROW_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <time.h>

#include <openssl/decoder.h>
#include <openssl/types.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

#define ESC_ERRMSG_MAX 1024

/*
 * Record a failure in ctx with a printf-style sentence and yield code, so
 * callers can write `r = esc_error(ctx, ESC_ERR_X, "...", ...); goto out;`.
 * The message must never contain a secret.
 *
 * A macro, not a function returning code: the value is then visible where
 * it is used, so static analysis (scripts/lint) knows that a failure path
 * never yields ESC_OK without having set its outputs.  code is evaluated
 * twice: pass a constant or a plain variable.
 */
#define esc_error(ctx, code, ...) (esc_error_set((ctx), (code), __VA_ARGS__), (code))
void esc_error_set(struct esc_ctx *ctx, enum esc_err code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Like esc_error, then appends " (OpenSSL: <reason>)" from the OpenSSL error
 * queue (which it empties).
 */
#define esc_error_ossl(ctx, code, ...) (esc_error_ossl_set((ctx), (code), __VA_ARGS__), (code))
void esc_error_ossl_set(struct esc_ctx *ctx, enum esc_err code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Emit a log line through the context's sink (no-op without one). */
void esc_log(struct esc_ctx *ctx, enum esc_log_level level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Time one operation for the context's timing sink (esc_ctx_set_timing):
 * started = esc_timing_start(ctx, &t0) before it, esc_timing_end(ctx,
 * started, &t0, kind, what) after it.  Without a sink no clock is read.
 */
int esc_timing_start(const struct esc_ctx *ctx, struct timespec *t0);
void esc_timing_end(const struct esc_ctx *ctx, int started, const struct timespec *t0, enum esc_timing_kind kind,
		    const char *what);

struct esc_secret;

/*
 * Always one Argon2id verification, so that the time of an answer does not
 * tell an unknown name from a wrong password: password against encoded, the
 * stored hash of the name looked up, or with encoded NULL (no such name)
 * against a dummy hash of the same cost, whose result the caller ignores
 * but for ESC_ERR_NOMEM.  Errors: as esc_auth_verify_password.
 */
enum esc_err esc_auth_verify_or_dummy(struct esc_ctx *ctx, const char *encoded,
				      const struct esc_secret *password) ESC_MUST_CHECK;

/*
 * pub's SubjectPublicKeyInfo DER, the bytes of i2d_PUBKEY (OPENSSL_free
 * them; *len set), made without OpenSSL 3.0's encoder for EC keys; NULL
 * if it cannot be encoded.
 */
unsigned char *esc_pubkey_spki(EVP_PKEY *pub, size_t *len);

#define ESC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * A decoder kept between calls: OpenSSL 3.0 builds one for every d2i_PUBKEY
 * or EVP_PKCS82PKEY (0.2-0.45 ms, more than the rest of decoding a P-256
 * key).  Zeroed: none yet.  One thread's at a time.
 */
struct esc_kept_decoder {
	OSSL_DECODER_CTX *dec;
	EVP_PKEY *out; /* where dec writes the key it decodes */
};
/* The key in DER der, exactly one structure ("PrivateKeyInfo", "SubjectPublicKeyInfo") of selection; NULL if none. */
EVP_PKEY *esc_kept_decode(struct esc_kept_decoder *kd, const char *structure, int selection, const unsigned char *der,
			  size_t len);
/* Free kd's decoder and empty it. */
void esc_kept_decoder_free(struct esc_kept_decoder *kd);

/*
 * The private key in the unencrypted PKCS#8 DER der (exactly one
 * structure), with a decoder ctx keeps across calls (a context is one
 * thread's); NULL if der holds none.
 */
EVP_PKEY *esc_ctx_pkcs8_decode(struct esc_ctx *ctx, const unsigned char *der, size_t len);

#endif
