/*
 * Unit tests for recovery packages as a KRA's workstation receives them from
 * the service (esc_recovery_package_new: no database, no token).  The
 * workflow itself runs against real tokens and PostgreSQL in
 * tests/integration/recovery.sh and api.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testctx.h"
#include "testkeys.h"
#include <p11escrow/recovery.h>

#define URI "pkcs11:token=KRA1;id=%01%02;type=private"

struct der {
	unsigned char *p;
	int n;
};

static struct der
der_of(X509 *x)
{
	struct der d = {NULL, 0};

	d.n = i2d_X509(x, &d.p);
	assert_true(d.n > 0);
	return d;
}

static void
test_package_new(void **state)
{
	struct esc_ctx *ctx = *state;
	struct test_keys k = {NULL, NULL, NULL, NULL, NULL, NULL};
	struct esc_recovery_package *p = NULL;
	static const unsigned char pkg[] = {0x30, 0x03, 0x02, 0x01, 0x00};
	const unsigned char *got;
	struct der user, kra;
	unsigned char *big;
	size_t len;

	assert_int_equal(test_keys_make(ctx, &k, 2048, "CN=user", "CN=kra1", "CN=other"), 0);
	user = der_of(k.rsa_cert);
	kra = der_of(k.ec_cert);

	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_OK);
	assert_int_equal(esc_recovery_package_id(p), 7);
	got = esc_recovery_package_der(p, &len);
	assert_int_equal(len, sizeof(pkg));
	assert_memory_equal(got, pkg, sizeof(pkg));
	assert_int_equal(X509_cmp(esc_recovery_package_cert(p), k.rsa_cert), 0);
	assert_int_equal(X509_cmp(esc_recovery_package_kra_cert(p), k.ec_cert), 0);
	assert_string_equal(esc_recovery_package_kra_name(p), "kra1");
	assert_string_equal(esc_recovery_package_key_uri(p), URI);
	esc_recovery_package_free(p);
	esc_recovery_package_free(NULL);

	/* Refused, with nothing returned: an empty or huge package, bad certificates, names, URIs. */
	p = NULL;
	assert_int_equal(
		esc_recovery_package_new(ctx, 7, pkg, 0, user.p, (size_t)user.n, kra.p, (size_t)kra.n, "kra1", URI, &p),
		ESC_ERR_BAD_INPUT);
	assert_non_null(big = calloc(1, 1024 * 1024 + 1));
	assert_int_equal(esc_recovery_package_new(ctx, 7, big, 1024 * 1024 + 1, user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	free(big);
	/* A truncated certificate, or one followed by anything else, is not a certificate. */
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n - 1, "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(big = calloc(1, (size_t)user.n + 1));
	memcpy(big, user.p, (size_t)user.n);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), big, (size_t)user.n + 1, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	free(big);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), pkg, sizeof(pkg), kra.p, (size_t)kra.n,
						  "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(
		esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, NULL, 0, "kra1", URI, &p),
		ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", "not a uri", &p),
			 ESC_ERR_BAD_INPUT);
	/* A URI carrying a PIN is refused, and the PIN is not repeated. */
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI "?pin-value=secret-4711", &p),
			 ESC_ERR_BAD_INPUT);
	assert_null(strstr(esc_ctx_errmsg(ctx), "secret-4711"));
	/* A received URI never chooses the module the workstation loads. */
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI "?module-path=/tmp/evil.so", &p),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "names a module (module-path)"));
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI "?module-name=evil", &p),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "names a module (module-name)"));
	{
		char name[200];

		memset(name, 'k', sizeof(name) - 1);
		name[sizeof(name) - 1] = '\0';
		assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
							  (size_t)kra.n, name, URI, &p),
				 ESC_ERR_BAD_INPUT);
	}
	assert_null(p);
	OPENSSL_free(user.p);
	OPENSSL_free(kra.p);
	test_keys_free(&k);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_package_new, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
