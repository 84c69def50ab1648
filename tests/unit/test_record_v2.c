/*
 * Unit tests for archive records of version 2 (k of n KRAs): the
 * EscrowRecord with shares encoded and parsed, with its refusals; the
 * share plaintext bound to its record, x and k; the inner layer sealed to
 * a KEK that only k shares rebuild.  No database, no token.
 */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <p11escrow/envelope.h>

#include "archive_internal.h"
#include "shamir_internal.h"
#include "testctx.h"

#define ID "00000000-0000-4000-8000-000000000001"
#define OTHER_ID "00000000-0000-4000-8000-000000000002"

static const unsigned char cert_sha[32] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};

static void
cert_hex(char out[65])
{
	int i;

	for (i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", cert_sha[i]);
}

/* Shares of a made-up record: n of them, k needed, x = 1..n. */
static struct esc_record_shares *
some_shares(unsigned k, size_t n)
{
	struct esc_record_shares *sh = calloc(1, sizeof(*sh));
	size_t i;

	assert_non_null(sh);
	sh->threshold = k;
	for (i = 0; i < n; i++) {
		sh->share[i].x = (unsigned)i + 1;
		memset(sh->share[i].kra_cert_sha256, (int)(0x10 + i), 32);
		memset(sh->share[i].commitment, (int)(0x20 + i), 32);
		sh->share[i].sealedlen = 10 + i;
		sh->share[i].sealed = malloc(sh->share[i].sealedlen);
		assert_non_null(sh->share[i].sealed);
		memset(sh->share[i].sealed, (int)(0x30 + i), sh->share[i].sealedlen);
		sh->n++;
	}
	return sh;
}

static enum esc_err
parse_of(struct esc_ctx *ctx, const struct esc_record_shares *sh, struct esc_record_shares **got)
{
	unsigned char *der = NULL, *inner = NULL, innerin[5] = {1, 2, 3, 4, 5};
	size_t innerlen = 0;
	char hex[65];
	int derlen = 0;
	enum esc_err r;

	cert_hex(hex);
	assert_int_equal(esc_record_encode(ctx, ID, cert_sha, innerin, sizeof(innerin), sh, &der, &derlen), ESC_OK);
	r = esc_record_parse(ctx, der, (size_t)derlen, ID, hex, &inner, &innerlen, got);
	if (r == ESC_OK)
		assert_memory_equal(inner, innerin, sizeof(innerin));
	free(inner);
	OPENSSL_free(der);
	return r;
}

static void
test_v2_round_trip(void **state)
{
	struct esc_record_shares *sh = some_shares(2, 3), *got = NULL;
	size_t i;

	assert_int_equal(parse_of(*state, sh, &got), ESC_OK);
	assert_non_null(got);
	assert_int_equal(got->threshold, 2);
	assert_int_equal(got->n, 3);
	for (i = 0; i < 3; i++) {
		assert_int_equal(got->share[i].x, sh->share[i].x);
		assert_memory_equal(got->share[i].kra_cert_sha256, sh->share[i].kra_cert_sha256, 32);
		assert_memory_equal(got->share[i].commitment, sh->share[i].commitment, 32);
		assert_int_equal(got->share[i].sealedlen, sh->share[i].sealedlen);
		assert_memory_equal(got->share[i].sealed, sh->share[i].sealed, sh->share[i].sealedlen);
	}
	esc_record_shares_free(got);
	/* A caller that does not take shares still gets the record checked and its inner layer. */
	assert_int_equal(parse_of(*state, sh, NULL), ESC_OK);
	esc_record_shares_free(sh);
}

/* Version 1 is unchanged: no shares out. */
static void
test_v1_still_reads(void **state)
{
	struct esc_record_shares *got = (struct esc_record_shares *)1;

	assert_int_equal(parse_of(*state, NULL, &got), ESC_OK);
	assert_null(got);
}

static void
test_v2_refusals(void **state)
{
	struct esc_record_shares *sh, *got = NULL;

	sh = some_shares(1, 3); /* k 1 is version 1's business */
	assert_int_equal(parse_of(*state, sh, &got), ESC_ERR_TAMPERED);
	esc_record_shares_free(sh);
	sh = some_shares(4, 3); /* k above n */
	assert_int_equal(parse_of(*state, sh, &got), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(*state), "threshold (4)"));
	esc_record_shares_free(sh);
	sh = some_shares(2, 3);
	sh->share[2].x = 1; /* one x twice */
	assert_int_equal(parse_of(*state, sh, &got), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(*state), "two shares at x = 1"));
	sh->share[2].x = 0; /* x 0 would be the secret */
	assert_int_equal(parse_of(*state, sh, &got), ESC_ERR_TAMPERED);
	sh->share[2].x = 256;
	assert_int_equal(parse_of(*state, sh, &got), ESC_ERR_TAMPERED);
	sh->share[2].x = 3;
	sh->share[2].sealedlen = 0; /* an empty sealed share */
	assert_int_equal(parse_of(*state, sh, &got), ESC_ERR_TAMPERED);
	esc_record_shares_free(sh);
	sh = some_shares(16, 16); /* the largest set, all needed: fine */
	assert_int_equal(parse_of(*state, sh, &got), ESC_OK);
	esc_record_shares_free(got);
	got = NULL;
	esc_record_shares_free(sh);
	assert_null(got);
}

/* The version number and the presence of shares must agree, both ways. */
static void
test_version_mismatch(void **state)
{
	struct esc_record_shares *sh = some_shares(2, 2), *got = NULL;
	unsigned char *der = NULL, *inner = NULL, in[3] = {9, 9, 9}, *v;
	size_t innerlen = 0;
	char hex[65];
	int derlen = 0;
	static const unsigned char v2[] = {0x02, 0x01, 0x02}, v1[] = {0x02, 0x01, 0x01};

	cert_hex(hex);
	assert_int_equal(esc_record_encode(*state, ID, cert_sha, in, sizeof(in), sh, &der, &derlen), ESC_OK);
	assert_non_null(v = memmem(der, (size_t)derlen, v2, sizeof(v2)));
	v[2] = 1; /* version 1 carrying shares */
	assert_int_equal(esc_record_parse(*state, der, (size_t)derlen, ID, hex, &inner, &innerlen, &got),
			 ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(*state), "version 1 but carries key shares"));
	OPENSSL_free(der);
	der = NULL;
	assert_int_equal(esc_record_encode(*state, ID, cert_sha, in, sizeof(in), NULL, &der, &derlen), ESC_OK);
	assert_non_null(v = memmem(der, (size_t)derlen, v1, sizeof(v1)));
	v[2] = 2; /* version 2 without shares */
	assert_int_equal(esc_record_parse(*state, der, (size_t)derlen, ID, hex, &inner, &innerlen, &got),
			 ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(*state), "version 2 but has no key shares"));
	assert_null(inner);
	assert_null(got);
	OPENSSL_free(der);
	esc_record_shares_free(sh);
}

static void
test_share_plain_binding(void **state)
{
	unsigned char share[ESC_KEK_LEN], back[ESC_KEK_LEN], *plain = NULL;
	size_t plainlen = 0;

	assert_int_equal(RAND_bytes(share, sizeof(share)), 1);
	assert_int_equal(esc_share_plain_encode(*state, ID, 3, 2, share, sizeof(share), &plain, &plainlen), ESC_OK);
	assert_int_equal(esc_share_plain_parse(*state, plain, plainlen, ID, 3, 2, back), ESC_OK);
	assert_memory_equal(back, share, sizeof(share));
	/* Swapped from another record, another x, another threshold: refused after decryption. */
	assert_int_equal(esc_share_plain_parse(*state, plain, plainlen, OTHER_ID, 3, 2, back), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(*state), "another record's"));
	assert_int_equal(esc_share_plain_parse(*state, plain, plainlen, ID, 1, 2, back), ESC_ERR_TAMPERED);
	assert_int_equal(esc_share_plain_parse(*state, plain, plainlen, ID, 3, 3, back), ESC_ERR_TAMPERED);
	assert_int_equal(esc_share_plain_parse(*state, plain, plainlen - 1, ID, 3, 2, back), ESC_ERR_TAMPERED);
	OPENSSL_secure_clear_free(plain, plainlen);
}

/* The inner layer opens with the KEK that k shares rebuild, and with nothing k - 1 shares give. */
static void
test_kek_threshold(void **state)
{
	unsigned char kek[ESC_KEK_LEN], key[ESC_KEK_LEN], store[3][ESC_KEK_LEN];
	unsigned char *shares[3] = {store[0], store[1], store[2]}, xs[3] = {1, 2, 3};
	unsigned char msg[100], *sealed = NULL, *plain = NULL;
	size_t sealedlen = 0, plainlen = 0;

	assert_int_equal(RAND_bytes(kek, sizeof(kek)), 1);
	assert_int_equal(RAND_bytes(msg, sizeof(msg)), 1);
	assert_int_equal(esc_envelope_seal_kek(*state, msg, sizeof(msg), kek, (const unsigned char *)ID, strlen(ID),
					       &sealed, &sealedlen),
			 ESC_OK);
	assert_int_equal(esc_shamir_split(*state, kek, sizeof(kek), 2, 3, xs, shares), ESC_OK);
	/* Two of three (shares 3 and 1): the key, the content. */
	{
		unsigned char sx[2] = {3, 1}, *sp[2] = {store[2], store[0]};

		assert_int_equal(esc_shamir_combine(*state, sx, sp, 2, sizeof(key), key), ESC_OK);
		assert_int_equal(esc_envelope_open_kek(*state, sealed, sealedlen, key, (const unsigned char *)ID,
						       strlen(ID), &plain, &plainlen),
				 ESC_OK);
		assert_int_equal(plainlen, sizeof(msg));
		assert_memory_equal(plain, msg, sizeof(msg));
		esc_envelope_plain_free(plain, plainlen);
		plain = NULL;
	}
	/* One share: another key, refused by the envelope (the key unwrap's integrity check). */
	assert_int_equal(esc_shamir_combine(*state, xs + 1, shares + 1, 1, sizeof(key), key), ESC_OK);
	assert_memory_not_equal(key, kek, sizeof(key));
	assert_int_equal(esc_envelope_open_kek(*state, sealed, sealedlen, key, (const unsigned char *)ID, strlen(ID),
					       &plain, &plainlen),
			 ESC_ERR_TAMPERED);
	assert_null(plain);
	/* The right KEK for another key id: not addressed to it. */
	assert_int_equal(esc_envelope_open_kek(*state, sealed, sealedlen, kek, (const unsigned char *)OTHER_ID,
					       strlen(OTHER_ID), &plain, &plainlen),
			 ESC_ERR_NOT_RECIPIENT);
	/* Altered ciphertext (the last byte, in the GCM tag): the tag fails. */
	sealed[sealedlen - 1] ^= 1;
	assert_int_equal(esc_envelope_open_kek(*state, sealed, sealedlen, kek, (const unsigned char *)ID, strlen(ID),
					       &plain, &plainlen),
			 ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(*state), "GCM"));
	free(sealed);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_v2_round_trip, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_v1_still_reads, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_v2_refusals, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_version_mismatch, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_share_plain_binding, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_kek_threshold, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
