/*
 * Unit tests for the check of an archive_records row against its own
 * certificate (esc_archive_row_check, esc_archive_row_compare): no
 * database, no token.  The relabelled rows themselves are exercised against
 * PostgreSQL in tests/integration/relabel.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "archive_internal.h"
#include "testctx.h"
#include "testkeys.h"

#define ID "00000000-0000-4000-8000-000000000001"

/* A certificate as libpq returns a bytea column in text form: "\x" + hex. */
static char *
bytea_text(X509 *x)
{
	unsigned char *der = NULL;
	char *s;
	int n = i2d_X509(x, &der), i;

	assert_true(n > 0);
	s = malloc(2 + 2 * (size_t)n + 1);
	assert_non_null(s);
	memcpy(s, "\\x", 2);
	for (i = 0; i < n; i++)
		snprintf(s + 2 + 2 * i, 3, "%02x", der[i]);
	OPENSSL_free(der);
	return s;
}

/* The row archival would have written for x (from f) with certificate text cert. */
static struct esc_archive_row
row_of(const struct esc_archive_fields *f, const char *cert)
{
	struct esc_archive_row row = {
		ID, f->serial, f->issuer, f->subject, f->email, f->cert_sha256, f->public_key_sha256, cert};

	return row;
}

static void
test_row_check(void **state)
{
	struct esc_ctx *ctx = *state;
	struct test_keys k = {NULL, NULL, NULL, NULL, NULL, NULL};
	struct esc_archive_fields a, b, truth;
	struct esc_archive_row row;
	char *ta, *tb, bad[] = "\\x3082";
	X509 *got = NULL;

	assert_int_equal(test_keys_make(ctx, &k, 2048, "CN=alice,O=Example", "CN=bob,O=Example", "CN=x"), 0);
	assert_int_equal(esc_archive_fields_of(ctx, k.rsa_cert, &a), ESC_OK);
	assert_int_equal(esc_archive_fields_of(ctx, k.ec_cert, &b), ESC_OK);
	assert_string_equal(a.subject, "CN=alice,O=Example");
	assert_null(a.email);
	assert_int_equal(strlen(a.cert_sha256), 64);
	assert_int_equal(strlen(a.public_key_sha256), 64);
	ta = bytea_text(k.rsa_cert);
	tb = bytea_text(k.ec_cert);

	/* The row as archived: accepted; certificate and truth come out. */
	row = row_of(&a, ta);
	assert_int_equal(esc_archive_row_check(ctx, &row, &got, &truth), ESC_OK);
	assert_int_equal(X509_cmp(got, k.rsa_cert), 0);
	assert_string_equal(truth.serial, a.serial);
	assert_string_equal(truth.subject, a.subject);
	X509_free(got);
	esc_archive_fields_clear(&truth);

	/* Relabelled: bob's serial, subject and email on alice's certificate. */
	row.serial = b.serial;
	row.subject = b.subject;
	row.email = "bob@example.org";
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "archive record " ID " was altered"));
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "cert_serial, subject, email do not match"));
	assert_int_equal(esc_archive_row_compare(ctx, &row, &a), ESC_ERR_TAMPERED);

	/* One column is enough, each of them. */
	row = row_of(&a, ta);
	row.issuer = "CN=Other CA";
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "its issuer does not match"));
	row = row_of(&a, ta);
	row.email = "";
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	row = row_of(&a, ta);
	row.public_key_sha256 = b.public_key_sha256;
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "public_key_sha256"));

	/* Another certificate under alice's columns, with or without its hash. */
	row = row_of(&a, tb);
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	row.cert_sha256 = b.cert_sha256;
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	assert_null(strstr(esc_ctx_errmsg(ctx), "cert_sha256"));

	/* A certificate column that is not one certificate. */
	row = row_of(&a, bad);
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "does not hold one certificate"));
	row.certificate = NULL;
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_ERR_TAMPERED);

	/* A consistent row of another certificate passes here: the sealed hash is the release's check. */
	row = row_of(&b, tb);
	assert_int_equal(esc_archive_row_check(ctx, &row, NULL, NULL), ESC_OK);

	free(ta);
	free(tb);
	esc_archive_fields_clear(&a);
	esc_archive_fields_clear(&b);
	esc_archive_fields_clear(&b); /* twice: a cleared one is fine */
	test_keys_free(&k);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_row_check, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
