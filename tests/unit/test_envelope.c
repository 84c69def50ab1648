/*
 * Unit tests: CMS AuthEnvelopedData envelopes with software keys (the token
 * path is covered by the integration tests).
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/envelope.h>

struct fixture {
	struct esc_ctx *ctx;
	EVP_PKEY *rsa, *ec, *other;
	X509 *rsa_cert, *ec_cert, *other_cert;
};

static X509 *
self_signed(struct esc_ctx *ctx, EVP_PKEY *k, const char *cn)
{
	X509 *x = NULL;

	if (esc_ca_self_sign(ctx, k, k, cn, 30, &x) != ESC_OK)
		return NULL;
	return x;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL || esc_ctx_new(&f->ctx) != ESC_OK)
		return -1;
	f->rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	f->ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	f->other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (f->rsa == NULL || f->ec == NULL || f->other == NULL)
		return -1;
	f->rsa_cert = self_signed(f->ctx, f->rsa, "CN=KRA RSA");
	f->ec_cert = self_signed(f->ctx, f->ec, "CN=KRA EC");
	f->other_cert = self_signed(f->ctx, f->other, "CN=Not a recipient");
	if (f->rsa_cert == NULL || f->ec_cert == NULL || f->other_cert == NULL)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	X509_free(f->rsa_cert);
	X509_free(f->ec_cert);
	X509_free(f->other_cert);
	EVP_PKEY_free(f->rsa);
	EVP_PKEY_free(f->ec);
	EVP_PKEY_free(f->other);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

static const unsigned char secret[] = "a PKCS#8 private key would be here";

static void
roundtrip(struct fixture *f, enum esc_oaep_hash hash)
{
	X509 *recips[2] = {f->rsa_cert, f->ec_cert};
	enum esc_oaep_hash hashes[2] = {hash, hash};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;
	int yes = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, hashes, 2, &env, &envlen), ESC_OK);
	assert_null(memmem(env, envlen, secret, sizeof(secret) - 1));
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->rsa, f->rsa_cert, &plain, &plainlen), ESC_OK);
	assert_int_equal(plainlen, sizeof(secret));
	assert_memory_equal(plain, secret, sizeof(secret));
	esc_envelope_plain_free(plain, plainlen);
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->ec, f->ec_cert, &plain, &plainlen), ESC_OK);
	assert_memory_equal(plain, secret, sizeof(secret));
	esc_envelope_plain_free(plain, plainlen);
	assert_int_equal(esc_envelope_has_recipient(f->ctx, env, envlen, f->other_cert, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_has_recipient(f->ctx, env, envlen, f->ec_cert, &yes), ESC_OK);
	assert_true(yes);
	free(env);
}

static void
test_roundtrip_sha1(void **state)
{
	roundtrip(*state, ESC_OAEP_SHA1);
}

static void
test_roundtrip_sha256(void **state)
{
	roundtrip(*state, ESC_OAEP_SHA256);
}

static void
test_not_recipient(void **state)
{
	struct fixture *f = *state;
	X509 *recips[1] = {f->rsa_cert};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 1, &env, &envlen),
			 ESC_OK);
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->other, f->other_cert, &plain, &plainlen),
			 ESC_ERR_NOT_RECIPIENT);
	assert_null(plain);
	/* The right certificate with the wrong key: the key fails, not the data. */
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->other, f->rsa_cert, &plain, &plainlen),
			 ESC_ERR_CRYPTO);
	free(env);
}

static void
test_tampered(void **state)
{
	struct fixture *f = *state;
	X509 *recips[1] = {f->ec_cert};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 1, &env, &envlen),
			 ESC_OK);
	/* The encrypted content sits just before the 16-byte GCM tag at the end. */
	env[envlen - 40] ^= 0x01;
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->ec, f->ec_cert, &plain, &plainlen), ESC_ERR_TAMPERED);
	assert_null(plain);
	env[envlen - 40] ^= 0x01;
	env[envlen - 1] ^= 0x80; /* the tag itself */
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->ec, f->ec_cert, &plain, &plainlen), ESC_ERR_TAMPERED);
	free(env);
}

static void
test_bad_input(void **state)
{
	struct fixture *f = *state;
	unsigned char junk[64] = {0x30, 0x03, 0x02, 0x01, 0x01};
	unsigned char *plain = NULL, *env = NULL;
	size_t plainlen = 0, envlen = 0;
	X509 *recips[1] = {f->ec_cert};

	assert_int_equal(esc_envelope_open(f->ctx, junk, sizeof(junk), f->ec, f->ec_cert, &plain, &plainlen),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_envelope_open(f->ctx, junk, 0, f->ec, f->ec_cert, &plain, &plainlen), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 0, &env, &envlen),
			 ESC_ERR_USAGE);
	assert_int_equal(esc_envelope_seal(f->ctx, secret, 0, recips, NULL, 1, &env, &envlen), ESC_ERR_USAGE);
	assert_null(env);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_sha1),
		cmocka_unit_test(test_roundtrip_sha256),
		cmocka_unit_test(test_not_recipient),
		cmocka_unit_test(test_tampered),
		cmocka_unit_test(test_bad_input),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
