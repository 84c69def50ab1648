/*
 * Unit tests: reading keys and certificates for manual archival (PKCS#12
 * and PEM), with keys and certificates made in memory.  No database, no
 * token: the archival checks themselves are esc_archive_key's and covered
 * by the integration tests.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/import.h>

#include "testkeys.h"
#include <p11escrow/pin.h>

struct fixture {
	struct esc_ctx *ctx;
	struct test_keys k;
	struct esc_secret *pass, *wrong, *empty;
};

/* A buffer made by a test; freed by the test. */
struct blob {
	unsigned char *data;
	size_t len;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL || esc_ctx_new(&f->ctx) != ESC_OK)
		return -1;
	if (test_keys_make(f->ctx, &f->k, 2048, "CN=user RSA", "CN=user EC", "CN=someone else") != 0)
		return -1;
	if (esc_secret_new(f->ctx, "correct horse", 13, &f->pass) != ESC_OK ||
	    esc_secret_new(f->ctx, "battery staple", 14, &f->wrong) != ESC_OK ||
	    esc_secret_new(f->ctx, "", 0, &f->empty) != ESC_OK)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	test_keys_free(&f->k);
	esc_secret_free(f->pass);
	esc_secret_free(f->wrong);
	esc_secret_free(f->empty);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

/* PKCS#12 as recovery writes it: AES-256-CBC with PBKDF2 for key and certificates. */
static struct blob
make_p12(EVP_PKEY *key, X509 *cert, STACK_OF(X509) *ca, const char *pass)
{
	PKCS12 *p12 = PKCS12_create(pass, "user", key, cert, ca, NID_aes_256_cbc, NID_aes_256_cbc, 2048, 1, 0);
	struct blob b = {NULL, 0};
	int n;

	assert_non_null(p12);
	n = i2d_PKCS12(p12, &b.data);
	assert_true(n > 0);
	b.len = (size_t)n;
	PKCS12_free(p12);
	return b;
}

static struct blob
bio_blob(BIO *bio)
{
	struct blob b = {NULL, 0};
	char *p = NULL;
	long n = BIO_get_mem_data(bio, &p);

	assert_true(n > 0);
	b.data = malloc((size_t)n);
	assert_non_null(b.data);
	memcpy(b.data, p, (size_t)n);
	b.len = (size_t)n;
	BIO_free(bio);
	return b;
}

enum pem_key_form { PKCS8, PKCS8_ENCRYPTED, TRADITIONAL, TRADITIONAL_ENCRYPTED, NO_KEY };

static void
write_key(BIO *bio, EVP_PKEY *key, enum pem_key_form form, const char *pass)
{
	int ok = 1;

	switch (form) {
	case PKCS8:
		ok = PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL);
		break;
	case PKCS8_ENCRYPTED:
		ok = PEM_write_bio_PKCS8PrivateKey(bio, key, EVP_aes_256_cbc(), pass, (int)strlen(pass), NULL, NULL);
		break;
	case TRADITIONAL:
		ok = PEM_write_bio_PrivateKey_traditional(bio, key, NULL, NULL, 0, NULL, NULL);
		break;
	case TRADITIONAL_ENCRYPTED:
		ok = PEM_write_bio_PrivateKey_traditional(bio, key, EVP_aes_128_cbc(), (unsigned char *)pass,
							  (int)strlen(pass), NULL, NULL);
		break;
	case NO_KEY:
		break;
	}
	assert_true(ok);
}

/* A PEM file: the key (in form) followed by the certificates given. */
static struct blob
make_pem(EVP_PKEY *key, enum pem_key_form form, const char *pass, X509 *c1, X509 *c2)
{
	BIO *bio = BIO_new(BIO_s_mem());

	assert_non_null(bio);
	write_key(bio, key, form, pass);
	if (c1 != NULL)
		assert_true(PEM_write_bio_X509(bio, c1));
	if (c2 != NULL)
		assert_true(PEM_write_bio_X509(bio, c2));
	return bio_blob(bio);
}

static enum esc_err
load(struct fixture *f, struct blob b, const struct esc_secret *pass, EVP_PKEY **key, X509 **cert)
{
	enum esc_err r = esc_import_load(f->ctx, b.data, b.len, "test input", pass, key, cert);

	free(b.data);
	return r;
}

/* Loads, and the result is exactly key with cert. */
static void
expect_ok(struct fixture *f, struct blob b, const struct esc_secret *pass, EVP_PKEY *want_key, X509 *want_cert)
{
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	enum esc_err r = load(f, b, pass, &key, &cert);

	if (r != ESC_OK)
		print_error("esc_import_load: %s\n", esc_ctx_errmsg(f->ctx));
	assert_int_equal(r, ESC_OK);
	assert_non_null(key);
	assert_non_null(cert);
	assert_int_equal(EVP_PKEY_eq(key, want_key), 1);
	assert_int_equal(X509_cmp(cert, want_cert), 0);
	EVP_PKEY_free(key);
	X509_free(cert);
}

/* Fails with want, and leaves the outputs alone. */
static void
expect_err(struct fixture *f, struct blob b, const struct esc_secret *pass, enum esc_err want)
{
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	enum esc_err r = load(f, b, pass, &key, &cert);

	if (r != want)
		print_error("got %d (%s), wanted %d\n", r, esc_ctx_errmsg(f->ctx), want);
	if (getenv("TEST_IMPORT_VERBOSE") != NULL)
		print_message("%d: %s\n", r, esc_ctx_errmsg(f->ctx));
	assert_int_equal(r, want);
	assert_null(key);
	assert_null(cert);
	assert_true(esc_ctx_errmsg(f->ctx)[0] != '\0');
}

static void
test_p12_rsa_ec(void **state)
{
	struct fixture *f = *state;

	expect_ok(f, make_p12(f->k.rsa, f->k.rsa_cert, NULL, "correct horse"), f->pass, f->k.rsa, f->k.rsa_cert);
	expect_ok(f, make_p12(f->k.ec, f->k.ec_cert, NULL, "correct horse"), f->pass, f->k.ec, f->k.ec_cert);
}

static void
test_p12_password(void **state)
{
	struct fixture *f = *state;

	expect_err(f, make_p12(f->k.rsa, f->k.rsa_cert, NULL, "correct horse"), f->wrong, ESC_ERR_AUTH);
	expect_err(f, make_p12(f->k.ec, f->k.ec_cert, NULL, "correct horse"), f->empty, ESC_ERR_AUTH);
	/* No password given: the caller is told one is needed, and can ask for it. */
	expect_err(f, make_p12(f->k.rsa, f->k.rsa_cert, NULL, "correct horse"), NULL, ESC_ERR_PIN_MISSING);
	/* Exported with the empty password: opens without asking. */
	expect_ok(f, make_p12(f->k.ec, f->k.ec_cert, NULL, ""), NULL, f->k.ec, f->k.ec_cert);
	expect_ok(f, make_p12(f->k.ec, f->k.ec_cert, NULL, ""), f->empty, f->k.ec, f->k.ec_cert);
}

static void
test_p12_corrupt(void **state)
{
	struct fixture *f = *state;
	struct blob b;
	size_t where[] = {0, 2, 1, 0};
	size_t i;

	/* A byte changed in the middle (encrypted bags), in the MAC at the end, near the start. */
	for (i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
		b = make_p12(f->k.rsa, f->k.rsa_cert, NULL, "correct horse");
		where[0] = b.len / 2;
		where[1] = b.len - 2;
		where[2] = b.len / 3;
		where[3] = 40;
		b.data[where[i]] ^= 0x5a;
		expect_err(f, b, f->pass, ESC_ERR_BAD_INPUT);
	}
	/* Truncated. */
	b = make_p12(f->k.ec, f->k.ec_cert, NULL, "correct horse");
	b.len -= 100;
	expect_err(f, b, f->pass, ESC_ERR_BAD_INPUT);
	/* DER that is no PKCS#12: a certificate alone. */
	b.data = NULL;
	b.len = (size_t)i2d_X509(f->k.ec_cert, &b.data);
	expect_err(f, b, f->pass, ESC_ERR_BAD_INPUT);
	/* Neither DER nor PEM. */
	b.data = (unsigned char *)strdup("just some text\n");
	b.len = strlen((char *)b.data);
	expect_err(f, b, f->pass, ESC_ERR_BAD_INPUT);
}

static void
test_p12_several_certs(void **state)
{
	struct fixture *f = *state;
	STACK_OF(X509) *ca = sk_X509_new_null();

	/* The certificate matching the key is picked, whatever the order. */
	assert_true(sk_X509_push(ca, f->k.other_cert) && sk_X509_push(ca, f->k.ec_cert));
	expect_ok(f, make_p12(f->k.rsa, f->k.rsa_cert, ca, "correct horse"), f->pass, f->k.rsa, f->k.rsa_cert);
	/* A key with only foreign certificates: two → mismatch, here. */
	expect_err(f, make_p12(f->k.rsa, NULL, ca, "correct horse"), f->pass, ESC_ERR_MISMATCH);
	sk_X509_free(ca);
}

static void
test_p12_one_unmatched_cert(void **state)
{
	struct fixture *f = *state;
	STACK_OF(X509) *ca = sk_X509_new_null();
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;

	/* One certificate that does not match: returned, for esc_archive_key to refuse. */
	assert_true(sk_X509_push(ca, f->k.other_cert));
	assert_int_equal(load(f, make_p12(f->k.rsa, NULL, ca, "correct horse"), f->pass, &key, &cert), ESC_OK);
	assert_int_equal(X509_cmp(cert, f->k.other_cert), 0);
	assert_false(esc_cert_matches_key(cert, key));
	EVP_PKEY_free(key);
	X509_free(cert);
	sk_X509_free(ca);
}

static void
test_pem_forms(void **state)
{
	struct fixture *f = *state;

	expect_ok(f, make_pem(f->k.rsa, PKCS8, NULL, f->k.rsa_cert, NULL), NULL, f->k.rsa, f->k.rsa_cert);
	expect_ok(f, make_pem(f->k.ec, PKCS8, NULL, f->k.ec_cert, NULL), NULL, f->k.ec, f->k.ec_cert);
	expect_ok(f, make_pem(f->k.rsa, TRADITIONAL, NULL, f->k.rsa_cert, NULL), NULL, f->k.rsa, f->k.rsa_cert);
	expect_ok(f, make_pem(f->k.ec, TRADITIONAL, NULL, f->k.ec_cert, NULL), NULL, f->k.ec, f->k.ec_cert);
	/* A password given but not needed is ignored. */
	expect_ok(f, make_pem(f->k.ec, PKCS8, NULL, f->k.ec_cert, NULL), f->wrong, f->k.ec, f->k.ec_cert);
	/* Certificate first, then the key. */
	{
		BIO *bio = BIO_new(BIO_s_mem());

		assert_true(PEM_write_bio_X509(bio, f->k.ec_cert));
		write_key(bio, f->k.ec, PKCS8, NULL);
		expect_ok(f, bio_blob(bio), NULL, f->k.ec, f->k.ec_cert);
	}
}

static void
test_pem_encrypted(void **state)
{
	struct fixture *f = *state;

	expect_ok(f, make_pem(f->k.rsa, PKCS8_ENCRYPTED, "correct horse", f->k.rsa_cert, NULL), f->pass, f->k.rsa,
		  f->k.rsa_cert);
	expect_ok(f, make_pem(f->k.ec, TRADITIONAL_ENCRYPTED, "correct horse", f->k.ec_cert, NULL), f->pass, f->k.ec,
		  f->k.ec_cert);
	expect_err(f, make_pem(f->k.rsa, PKCS8_ENCRYPTED, "correct horse", f->k.rsa_cert, NULL), f->wrong,
		   ESC_ERR_AUTH);
	expect_err(f, make_pem(f->k.ec, TRADITIONAL_ENCRYPTED, "correct horse", f->k.ec_cert, NULL), f->wrong,
		   ESC_ERR_AUTH);
	expect_err(f, make_pem(f->k.ec, PKCS8_ENCRYPTED, "correct horse", f->k.ec_cert, NULL), NULL,
		   ESC_ERR_PIN_MISSING);
	expect_err(f, make_pem(f->k.rsa, TRADITIONAL_ENCRYPTED, "correct horse", f->k.rsa_cert, NULL), NULL,
		   ESC_ERR_PIN_MISSING);
}

static void
test_pem_incomplete(void **state)
{
	struct fixture *f = *state;
	struct blob b;

	/* Without a key, without a certificate. */
	expect_err(f, make_pem(NULL, NO_KEY, NULL, f->k.rsa_cert, NULL), NULL, ESC_ERR_BAD_INPUT);
	expect_err(f, make_pem(f->k.rsa, PKCS8, NULL, NULL, NULL), NULL, ESC_ERR_BAD_INPUT);
	/* Two keys. */
	{
		BIO *bio = BIO_new(BIO_s_mem());

		write_key(bio, f->k.rsa, PKCS8, NULL);
		write_key(bio, f->k.ec, PKCS8, NULL);
		assert_true(PEM_write_bio_X509(bio, f->k.rsa_cert));
		expect_err(f, bio_blob(bio), NULL, ESC_ERR_BAD_INPUT);
	}
	/* A key type that is not archived. */
	b.data = (unsigned char *)strdup(
		"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n");
	b.len = strlen((char *)b.data);
	expect_err(f, b, NULL, ESC_ERR_BAD_INPUT);
	/* A damaged block. */
	b = make_pem(f->k.ec, PKCS8, NULL, f->k.ec_cert, NULL);
	memcpy(b.data + 40, "!!!!", 4);
	expect_err(f, b, NULL, ESC_ERR_BAD_INPUT);
}

static void
test_pem_chain(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;

	/* Key with a chain: the matching certificate, wherever it is. */
	expect_ok(f, make_pem(f->k.ec, PKCS8, NULL, f->k.other_cert, f->k.ec_cert), NULL, f->k.ec, f->k.ec_cert);
	/* No certificate matches: the first is returned for esc_archive_key to refuse. */
	assert_int_equal(load(f, make_pem(f->k.ec, PKCS8, NULL, f->k.other_cert, f->k.rsa_cert), NULL, &key, &cert),
			 ESC_OK);
	assert_int_equal(X509_cmp(cert, f->k.other_cert), 0);
	EVP_PKEY_free(key);
	X509_free(cert);
}

static void
test_pair(void **state)
{
	struct fixture *f = *state;
	struct blob k = make_pem(f->k.rsa, PKCS8_ENCRYPTED, "correct horse", NULL, NULL);
	struct blob c = make_pem(NULL, NO_KEY, NULL, f->k.rsa_cert, NULL);
	unsigned char *der = NULL;
	int derlen = i2d_X509(f->k.rsa_cert, &der);
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;

	assert_int_equal(
		esc_import_load_pair(f->ctx, k.data, k.len, "key.pem", c.data, c.len, "cert.pem", f->pass, &key, &cert),
		ESC_OK);
	assert_int_equal(EVP_PKEY_eq(key, f->k.rsa), 1);
	assert_int_equal(X509_cmp(cert, f->k.rsa_cert), 0);
	EVP_PKEY_free(key);
	X509_free(cert);
	key = NULL;
	cert = NULL;
	/* DER certificate file. */
	assert_int_equal(esc_import_load_pair(f->ctx, k.data, k.len, "key.pem", der, (size_t)derlen, "cert.der",
					      f->pass, &key, &cert),
			 ESC_OK);
	assert_int_equal(X509_cmp(cert, f->k.rsa_cert), 0);
	EVP_PKEY_free(key);
	X509_free(cert);
	key = NULL;
	cert = NULL;
	/* Wrong password; the files swapped (no key in the key file). */
	assert_int_equal(esc_import_load_pair(f->ctx, k.data, k.len, "key.pem", c.data, c.len, "cert.pem", f->wrong,
					      &key, &cert),
			 ESC_ERR_AUTH);
	assert_int_equal(
		esc_import_load_pair(f->ctx, c.data, c.len, "cert.pem", k.data, k.len, "key.pem", f->pass, &key, &cert),
		ESC_ERR_BAD_INPUT);
	assert_null(key);
	assert_null(cert);
	free(k.data);
	free(c.data);
	OPENSSL_free(der);
}

static void
test_size_limits(void **state)
{
	struct fixture *f = *state;
	struct blob pem = make_pem(f->k.ec, PKCS8, NULL, f->k.ec_cert, NULL);
	struct blob b;

	/* A valid PEM padded past the limit is refused before parsing. */
	b.len = (size_t)ESC_IMPORT_MAX + 1;
	b.data = calloc(1, b.len);
	assert_non_null(b.data);
	memcpy(b.data, pem.data, pem.len);
	memset(b.data + pem.len, '\n', b.len - pem.len);
	expect_err(f, b, NULL, ESC_ERR_BAD_INPUT);
	/* Exactly at the limit is fine. */
	b.len = (size_t)ESC_IMPORT_MAX;
	b.data = calloc(1, b.len);
	memcpy(b.data, pem.data, pem.len);
	memset(b.data + pem.len, '\n', b.len - pem.len);
	expect_ok(f, b, NULL, f->k.ec, f->k.ec_cert);
	/* Empty. */
	b.data = malloc(1);
	b.len = 0;
	expect_err(f, b, NULL, ESC_ERR_BAD_INPUT);
	free(pem.data);
}

static void
test_file_read(void **state)
{
	struct fixture *f = *state;
	struct blob p12 = make_p12(f->k.ec, f->k.ec_cert, NULL, "correct horse");
	char dir[] = "/tmp/test_import.XXXXXX", path[64], big[64];
	struct esc_import_file *file = NULL;
	FILE *fp;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/user.p12", dir);
	snprintf(big, sizeof(big), "%s/big.p12", dir);
	fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(p12.data, 1, p12.len, fp), p12.len);
	fclose(fp);
	assert_int_equal(esc_import_file_read(f->ctx, path, &file), ESC_OK);
	assert_int_equal(esc_import_file_len(file), p12.len);
	assert_memory_equal(esc_import_file_data(file), p12.data, p12.len);
	assert_int_equal(esc_import_load(f->ctx, esc_import_file_data(file), esc_import_file_len(file), path, f->pass,
					 &key, &cert),
			 ESC_OK);
	EVP_PKEY_free(key);
	X509_free(cert);
	esc_import_file_free(file);
	file = NULL;
	/* Missing, a directory, too large (sparse), empty. */
	snprintf(path, sizeof(path), "%s/missing.p12", dir);
	assert_int_equal(esc_import_file_read(f->ctx, path, &file), ESC_ERR_IO);
	assert_int_equal(esc_import_file_read(f->ctx, dir, &file), ESC_ERR_IO);
	fp = fopen(big, "wb");
	assert_non_null(fp);
	assert_int_equal(ftruncate(fileno(fp), (off_t)ESC_IMPORT_MAX + 1), 0);
	fclose(fp);
	assert_int_equal(esc_import_file_read(f->ctx, big, &file), ESC_ERR_BAD_INPUT);
	fp = fopen(big, "wb");
	fclose(fp);
	assert_int_equal(esc_import_file_read(f->ctx, big, &file), ESC_ERR_BAD_INPUT);
	assert_null(file);
	esc_import_file_free(NULL);
	unlink(big);
	snprintf(path, sizeof(path), "%s/user.p12", dir);
	unlink(path);
	rmdir(dir);
	free(p12.data);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_p12_rsa_ec),
		cmocka_unit_test(test_p12_password),
		cmocka_unit_test(test_p12_corrupt),
		cmocka_unit_test(test_p12_several_certs),
		cmocka_unit_test(test_p12_one_unmatched_cert),
		cmocka_unit_test(test_pem_forms),
		cmocka_unit_test(test_pem_encrypted),
		cmocka_unit_test(test_pem_incomplete),
		cmocka_unit_test(test_pem_chain),
		cmocka_unit_test(test_pair),
		cmocka_unit_test(test_size_limits),
		cmocka_unit_test(test_file_read),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
