/*
 * Software keys and self-signed certificates shared by unit tests.
 */
#ifndef P11ESCROW_TESTKEYS_H
#define P11ESCROW_TESTKEYS_H

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>

/* An RSA key, an EC key and a third (EC) key, each with a self-signed certificate. */
struct test_keys {
	EVP_PKEY *rsa, *ec, *other;
	X509 *rsa_cert, *ec_cert, *other_cert;
};

static inline X509 *
test_self_signed(struct esc_ctx *ctx, EVP_PKEY *k, const char *cn)
{
	X509 *x = NULL;

	if (esc_ca_self_sign(ctx, k, k, cn, 30, &x) != ESC_OK)
		return NULL;
	return x;
}

/* 0 on success; names are the three certificates' subjects. */
static inline int
test_keys_make(struct esc_ctx *ctx, struct test_keys *k, size_t rsa_bits, const char *rsa_cn, const char *ec_cn,
	       const char *other_cn)
{
	k->rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", rsa_bits);
	k->ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	k->other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (k->rsa == NULL || k->ec == NULL || k->other == NULL)
		return -1;
	k->rsa_cert = test_self_signed(ctx, k->rsa, rsa_cn);
	k->ec_cert = test_self_signed(ctx, k->ec, ec_cn);
	k->other_cert = test_self_signed(ctx, k->other, other_cn);
	return k->rsa_cert && k->ec_cert && k->other_cert ? 0 : -1;
}

static inline void
test_keys_free(struct test_keys *k)
{
	X509_free(k->rsa_cert);
	X509_free(k->ec_cert);
	X509_free(k->other_cert);
	EVP_PKEY_free(k->rsa);
	EVP_PKEY_free(k->ec);
	EVP_PKEY_free(k->other);
}

#endif
