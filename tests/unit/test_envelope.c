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
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/envelope.h>

#include "testkeys.h"

struct fixture {
	struct esc_ctx *ctx;
	struct test_keys k;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL || esc_ctx_new(&f->ctx) != ESC_OK)
		return -1;
	if (test_keys_make(f->ctx, &f->k, 3072, "CN=KRA RSA", "CN=KRA EC", "CN=Not a recipient") != 0)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	test_keys_free(&f->k);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

static const unsigned char secret[] = "a PKCS#8 private key would be here";

static void
roundtrip(struct fixture *f, enum esc_oaep_hash hash)
{
	X509 *recips[2] = {f->k.rsa_cert, f->k.ec_cert};
	enum esc_oaep_hash hashes[2] = {hash, hash};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;
	int yes = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, hashes, 2, &env, &envlen), ESC_OK);
	assert_null(memmem(env, envlen, secret, sizeof(secret) - 1));
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->k.rsa, f->k.rsa_cert, &plain, &plainlen), ESC_OK);
	assert_int_equal(plainlen, sizeof(secret));
	assert_memory_equal(plain, secret, sizeof(secret));
	esc_envelope_plain_free(plain, plainlen);
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->k.ec, f->k.ec_cert, &plain, &plainlen), ESC_OK);
	assert_memory_equal(plain, secret, sizeof(secret));
	esc_envelope_plain_free(plain, plainlen);
	assert_int_equal(esc_envelope_has_recipient(f->ctx, env, envlen, f->k.other_cert, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_has_recipient(f->ctx, env, envlen, f->k.ec_cert, &yes), ESC_OK);
	assert_true(yes);
	free(env);
}

/*
 * esc_envelope_addressed_exactly (a re-wrap's commit through the service):
 * yes for exactly the set sealed to, in any order; no for a subset, a
 * superset, another set of the same size, or a KEK envelope.
 */
static void
test_addressed_exactly(void **state)
{
	struct fixture *f = *state;
	X509 *both[2] = {f->k.rsa_cert, f->k.ec_cert}, *swapped[2] = {f->k.ec_cert, f->k.rsa_cert};
	X509 *three[3] = {f->k.rsa_cert, f->k.ec_cert, f->k.other_cert}, *other[2] = {f->k.rsa_cert, f->k.other_cert};
	unsigned char *env = NULL, *kenv = NULL, kek[32] = {1}, keyid[8] = {2};
	size_t envlen = 0, kenvlen = 0;
	int yes = -1;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), both, NULL, 2, &env, &envlen), ESC_OK);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, env, envlen, both, 2, &yes), ESC_OK);
	assert_true(yes);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, env, envlen, swapped, 2, &yes), ESC_OK);
	assert_true(yes);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, env, envlen, both, 1, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, env, envlen, &f->k.ec_cert, 1, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, env, envlen, three, 3, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, env, envlen, other, 2, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(
		esc_envelope_seal_kek(f->ctx, secret, sizeof(secret), kek, keyid, sizeof(keyid), &kenv, &kenvlen),
		ESC_OK);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, kenv, kenvlen, both, 0, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_addressed_exactly(f->ctx, secret, sizeof(secret), both, 2, &yes),
			 ESC_ERR_BAD_INPUT);
	free(env);
	free(kenv);
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

/*
 * esc_envelope_keep_recipient: the envelope to RSA and EC keeps exactly the
 * named recipient; it still opens with that key, byte for byte, and no
 * longer with the other, whose recipient info is gone (not merely unused).
 */
static void
keep_one(struct fixture *f, X509 *keep_cert, EVP_PKEY *keep_key, X509 *drop_cert, EVP_PKEY *drop_key)
{
	X509 *recips[2] = {f->k.rsa_cert, f->k.ec_cert};
	unsigned char *env = NULL, *one = NULL, *plain = NULL;
	size_t envlen = 0, onelen = 0, plainlen = 0;
	int yes = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 2, &env, &envlen), ESC_OK);
	assert_int_equal(esc_envelope_keep_recipient(f->ctx, env, envlen, keep_cert, &one, &onelen), ESC_OK);
	assert_true(onelen < envlen);
	assert_int_equal(esc_envelope_has_recipient(f->ctx, one, onelen, keep_cert, &yes), ESC_OK);
	assert_true(yes);
	assert_int_equal(esc_envelope_has_recipient(f->ctx, one, onelen, drop_cert, &yes), ESC_OK);
	assert_false(yes);
	assert_int_equal(esc_envelope_open(f->ctx, one, onelen, keep_key, keep_cert, &plain, &plainlen), ESC_OK);
	assert_int_equal(plainlen, sizeof(secret));
	assert_memory_equal(plain, secret, sizeof(secret));
	esc_envelope_plain_free(plain, plainlen);
	plain = NULL;
	assert_int_equal(esc_envelope_open(f->ctx, one, onelen, drop_key, drop_cert, &plain, &plainlen),
			 ESC_ERR_NOT_RECIPIENT);
	assert_null(plain);
	/* Kept again: nothing more to remove, the same bytes. */
	{
		unsigned char *again = NULL;
		size_t againlen = 0;

		assert_int_equal(esc_envelope_keep_recipient(f->ctx, one, onelen, keep_cert, &again, &againlen),
				 ESC_OK);
		assert_int_equal(againlen, onelen);
		assert_memory_equal(again, one, onelen);
		free(again);
	}
	/* Not a recipient: refused, nothing returned. */
	free(one);
	one = NULL;
	assert_int_equal(esc_envelope_keep_recipient(f->ctx, env, envlen, f->k.other_cert, &one, &onelen),
			 ESC_ERR_NOT_RECIPIENT);
	assert_null(one);
	free(env);
}

static void
test_keep_recipient(void **state)
{
	struct fixture *f = *state;

	keep_one(f, f->k.rsa_cert, f->k.rsa, f->k.ec_cert, f->k.ec);
	keep_one(f, f->k.ec_cert, f->k.ec, f->k.rsa_cert, f->k.rsa);
}

static void
test_not_recipient(void **state)
{
	struct fixture *f = *state;
	X509 *recips[1] = {f->k.rsa_cert};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 1, &env, &envlen), ESC_OK);
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->k.other, f->k.other_cert, &plain, &plainlen),
			 ESC_ERR_NOT_RECIPIENT);
	assert_null(plain);
	/* The right certificate with the wrong key: the key fails, not the data. */
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->k.other, f->k.rsa_cert, &plain, &plainlen),
			 ESC_ERR_CRYPTO);
	free(env);
}

static void
test_tampered(void **state)
{
	struct fixture *f = *state;
	X509 *recips[1] = {f->k.ec_cert};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;

	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 1, &env, &envlen), ESC_OK);
	/* The encrypted content sits just before the 16-byte GCM tag at the end. */
	env[envlen - 40] ^= 0x01;
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->k.ec, f->k.ec_cert, &plain, &plainlen),
			 ESC_ERR_TAMPERED);
	assert_null(plain);
	env[envlen - 40] ^= 0x01;
	env[envlen - 1] ^= 0x80; /* the tag itself */
	assert_int_equal(esc_envelope_open(f->ctx, env, envlen, f->k.ec, f->k.ec_cert, &plain, &plainlen),
			 ESC_ERR_TAMPERED);
	free(env);
}

/*
 * An AuthEnvelopedData to the EC key whose ECDH recipient wraps the content
 * key with AES key wrap *with padding* (RFC 5649), as openssl cms -wrap
 * id-aes256-wrap-pad makes it; damaged, it would make OpenSSL before 3.0.22
 * write past a heap buffer (CVE-2026-63072).  Refused before decryption.
 */
static void
test_kari_wrap_pad(void **state)
{
	struct fixture *f = *state;
	CMS_ContentInfo *cms;
	CMS_RecipientInfo *ri;
	BIO *in;
	unsigned char *env = NULL, *plain = NULL;
	size_t plainlen = 0;
	int envlen;

	assert_non_null(in = BIO_new_mem_buf(secret, sizeof(secret)));
	assert_non_null(cms = CMS_encrypt(NULL, NULL, EVP_aes_256_gcm(), CMS_BINARY | CMS_PARTIAL));
	assert_non_null(ri = CMS_add1_recipient_cert(cms, f->k.ec_cert, CMS_KEY_PARAM));
	assert_int_equal(
		EVP_EncryptInit_ex(CMS_RecipientInfo_kari_get0_ctx(ri), EVP_aes_256_wrap_pad(), NULL, NULL, NULL), 1);
	assert_int_equal(CMS_final(cms, in, NULL, CMS_BINARY), 1);
	assert_true((envlen = i2d_CMS_ContentInfo(cms, &env)) > 0);
	assert_int_equal(esc_envelope_open(f->ctx, env, (size_t)envlen, f->k.ec, f->k.ec_cert, &plain, &plainlen),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "key wrap other than AES key wrap"));
	assert_null(plain);
	OPENSSL_free(env);
	CMS_ContentInfo_free(cms);
	BIO_free(in);
}

static void
test_bad_input(void **state)
{
	struct fixture *f = *state;
	unsigned char junk[64] = {0x30, 0x03, 0x02, 0x01, 0x01};
	unsigned char *plain = NULL, *env = NULL;
	size_t plainlen = 0, envlen = 0;
	X509 *recips[1] = {f->k.ec_cert};

	assert_int_equal(esc_envelope_open(f->ctx, junk, sizeof(junk), f->k.ec, f->k.ec_cert, &plain, &plainlen),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_envelope_open(f->ctx, junk, 0, f->k.ec, f->k.ec_cert, &plain, &plainlen),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, NULL, 0, &env, &envlen),
			 ESC_ERR_USAGE);
	assert_int_equal(esc_envelope_seal(f->ctx, secret, 0, recips, NULL, 1, &env, &envlen), ESC_ERR_USAGE);
	assert_null(env);
}

/* Sealed to a bare public key (no certificate): opened with its private half only, by key identifier. */
static void
test_seal_to_key(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *keys[2] = {f->k.rsa, f->k.ec};
	enum esc_oaep_hash hashes[2] = {ESC_OAEP_SHA256, ESC_OAEP_SHA1};
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0, i;
	int yes = 1;

	for (i = 0; i < 2; i++) {
		assert_int_equal(
			esc_envelope_seal_to_key(f->ctx, secret, sizeof(secret), keys[i], hashes[i], &env, &envlen),
			ESC_OK);
		assert_null(memmem(env, envlen, secret, sizeof(secret) - 1));
		assert_int_equal(esc_envelope_open_with_key(f->ctx, env, envlen, keys[i], keys[i], &plain, &plainlen),
				 ESC_OK);
		assert_int_equal(plainlen, sizeof(secret));
		assert_memory_equal(plain, secret, sizeof(secret));
		esc_envelope_plain_free(plain, plainlen);
		/* The other key is no recipient; nor is a certificate of the same key (named by issuer and serial). */
		assert_int_equal(
			esc_envelope_open_with_key(f->ctx, env, envlen, keys[1 - i], keys[1 - i], &plain, &plainlen),
			ESC_ERR_NOT_RECIPIENT);
		assert_int_equal(esc_envelope_has_recipient(f->ctx, env, envlen, f->k.other_cert, &yes), ESC_OK);
		assert_false(yes);
		free(env);
		env = NULL;
	}
}

/* The keyEncryptionAlgorithm of the envelope's RSA key transport recipient (a NID), or NID_undef. */
static int
ktri_alg(const unsigned char *env, size_t envlen)
{
	const unsigned char *p = env;
	CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)envlen);
	STACK_OF(CMS_RecipientInfo) *ris;
	X509_ALGOR *alg = NULL;
	const ASN1_OBJECT *obj = NULL;
	int i, nid = NID_undef;

	assert_non_null(cms);
	ris = CMS_get0_RecipientInfos(cms);
	for (i = 0; i < sk_CMS_RecipientInfo_num(ris); i++) {
		CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);

		if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS)
			continue;
		assert_int_equal(CMS_RecipientInfo_ktri_get0_algs(ri, NULL, NULL, &alg), 1);
		X509_ALGOR_get0(&obj, NULL, NULL, alg);
		nid = OBJ_obj2nid(obj);
	}
	CMS_ContentInfo_free(cms);
	return nid;
}

/*
 * The PKCS#1 v1.5 recipient form (KRA cards that do nothing else, by
 * policy): CMS's rsaEncryption key transport, where the other forms are
 * RSAES-OAEP; it opens with the key, as a sealed-to-key challenge does.
 */
static void
test_pkcs1v15(void **state)
{
	struct fixture *f = *state;
	unsigned char *env = NULL, *plain = NULL;
	size_t envlen = 0, plainlen = 0;

	assert_string_equal(esc_oaep_hash_name(ESC_RSA_PKCS1V15), "rsa-pkcs1v15");
	assert_int_equal(esc_oaep_hash_of_recipient("rsa-pkcs1v15"), ESC_RSA_PKCS1V15);
	assert_int_equal(esc_oaep_hash_of_recipient("rsa-oaep-sha256"), ESC_OAEP_SHA256);
	assert_int_equal(esc_oaep_hash_of_recipient("rsa-oaep-sha1"), ESC_OAEP_SHA1);
	roundtrip(f, ESC_RSA_PKCS1V15);
	{
		X509 *recips[1] = {f->k.rsa_cert};
		enum esc_oaep_hash h[3] = {ESC_RSA_PKCS1V15, ESC_OAEP_SHA256, ESC_OAEP_SHA1};
		int want[3] = {NID_rsaEncryption, NID_rsaesOaep, NID_rsaesOaep}, i;

		for (i = 0; i < 3; i++) {
			assert_int_equal(
				esc_envelope_seal(f->ctx, secret, sizeof(secret), recips, &h[i], 1, &env, &envlen),
				ESC_OK);
			assert_int_equal(ktri_alg(env, envlen), want[i]);
			free(env);
			env = NULL;
		}
	}
	assert_int_equal(
		esc_envelope_seal_to_key(f->ctx, secret, sizeof(secret), f->k.rsa, ESC_RSA_PKCS1V15, &env, &envlen),
		ESC_OK);
	assert_int_equal(ktri_alg(env, envlen), NID_rsaEncryption);
	assert_int_equal(esc_envelope_open_with_key(f->ctx, env, envlen, f->k.rsa, f->k.rsa, &plain, &plainlen),
			 ESC_OK);
	assert_memory_equal(plain, secret, sizeof(secret));
	esc_envelope_plain_free(plain, plainlen);
	free(env);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_sha1), cmocka_unit_test(test_roundtrip_sha256),
		cmocka_unit_test(test_not_recipient),  cmocka_unit_test(test_keep_recipient),
		cmocka_unit_test(test_tampered),       cmocka_unit_test(test_kari_wrap_pad),
		cmocka_unit_test(test_bad_input),      cmocka_unit_test(test_seal_to_key),
		cmocka_unit_test(test_pkcs1v15),       cmocka_unit_test(test_addressed_exactly),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
