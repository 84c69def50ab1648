/*
 * Unit tests: PKCS#11 URI checks, key type names, CK_RV and mechanism names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>
#include <p11-kit/pkcs11.h>

#include "testctx.h"
#include <p11escrow/ctx.h>
#include <p11escrow/token.h>

static void
test_valid_uris(void **state)
{
	struct esc_ctx *ctx = *state;
	static const char *const ok[] = {
		"pkcs11:token=CA",
		"pkcs11:token=My%20CA;serial=1e01cd751c91349c",
		"pkcs11:token=CA;object=p11escrow%20CA%20signing%20key;type=private",
		"pkcs11:id=%01%02%03;type=private",
		"pkcs11:token=module-path",
		"pkcs11:",
	};
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		assert_int_equal(esc_token_uri_check(ctx, ok[i]), ESC_OK);
}

static void
test_bad_uris(void **state)
{
	struct esc_ctx *ctx = *state;

	assert_int_equal(esc_token_uri_check(ctx, "token=CA"), ESC_ERR_URI);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "must start with 'pkcs11:'"));
	assert_int_equal(esc_token_uri_check(ctx, "pkcs11:token=CA;type=bogus"), ESC_ERR_URI);
	assert_int_equal(esc_token_uri_check(ctx, "pkcs11:id=%zz"), ESC_ERR_URI);
	assert_int_equal(esc_token_uri_check(ctx, NULL), ESC_ERR_URI);
}

static void
test_pin_in_uri_refused_without_echo(void **state)
{
	struct esc_ctx *ctx = *state;

	assert_int_equal(esc_token_uri_check(ctx, "pkcs11:token=CA?pin-value=s3cr3tPIN"), ESC_ERR_URI);
	assert_null(strstr(esc_ctx_errmsg(ctx), "s3cr3tPIN"));
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "PINs never travel in URIs"));
	assert_int_equal(esc_token_uri_check(ctx, "pkcs11:token=CA?PIN-VALUE=s3cr3tPIN"), ESC_ERR_URI);
	assert_null(strstr(esc_ctx_errmsg(ctx), "s3cr3tPIN"));
	/* Not even a malformed prefix echoes it (found by fuzz_uri). */
	assert_int_equal(esc_token_uri_check(ctx, "PKCS11:token=CA?pin-value=s3cr3tPIN"), ESC_ERR_URI);
	assert_null(strstr(esc_ctx_errmsg(ctx), "s3cr3tPIN"));
	assert_int_equal(esc_token_uri_check(ctx, "pkcs11:token=CA?pin-source=file:/tmp/pin"), ESC_ERR_URI);
	assert_null(strstr(esc_ctx_errmsg(ctx), "/tmp/pin"));
}

/* Stored (token_keys, kras) and received (recovery package) URIs never choose the module. */
static void
test_module_in_uri_refused(void **state)
{
	struct esc_ctx *ctx = *state;
	static const char *const bad[] = {
		"pkcs11:token=CA?module-path=/tmp/evil.so",
		"pkcs11:token=CA?module-name=softhsm2",
		"pkcs11:token=CA;id=%01;type=private?module-path=%2Ftmp%2Fevil.so",
		"pkcs11:?module-name=p11-kit-trust&module-path=/usr/lib/softhsm/libsofthsm2.so",
		/* A module attribute can't hide behind a PIN refusal either: both refused. */
		"pkcs11:token=CA?module-path=/tmp/evil.so&pin-value=1234",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(esc_token_uri_check(ctx, bad[i]), ESC_ERR_URI);
		assert_null(strstr(esc_ctx_errmsg(ctx), "1234"));
	}
	assert_int_equal(esc_token_uri_check(ctx, bad[0]), ESC_ERR_URI);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "names a module (module-path)"));
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "only by the module setting"));
	assert_int_equal(esc_token_uri_check(ctx, bad[1]), ESC_ERR_URI);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "names a module (module-name)"));
}

static void
test_unknown_module_name(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_token *tok = NULL;

	assert_int_equal(esc_token_open(ctx, "p11-kit:no-such-module-xyz", "pkcs11:token=CA", &tok), ESC_ERR_MODULE);
	assert_null(tok);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "no-such-module-xyz"));
	assert_int_equal(esc_token_open(ctx, "relative/path.so", "pkcs11:token=CA", &tok), ESC_ERR_MODULE);
	assert_int_equal(esc_token_open(ctx, "/nonexistent/module.so", "pkcs11:token=CA", &tok), ESC_ERR_MODULE);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "/nonexistent/module.so"));
}

static void
test_key_types(void **state)
{
	struct esc_ctx *ctx = *state;
	enum esc_key_type t;
	static const char *const names[] = {"rsa3072", "rsa4096", "ec-p256", "ec-p384"};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		assert_int_equal(esc_key_type_parse(ctx, names[i], &t), ESC_OK);
		assert_string_equal(esc_key_type_name(t), names[i]);
	}
	assert_int_equal(esc_key_type_parse(ctx, "rsa1024", &t), ESC_ERR_USAGE);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "rsa1024"));
}

static void
test_names(void **state)
{
	(void)state;
	assert_string_equal(esc_ckr_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
	assert_string_equal(esc_ckr_name(CKR_PIN_LOCKED), "CKR_PIN_LOCKED");
	assert_string_equal(esc_ckr_name(CKR_TOKEN_NOT_PRESENT), "CKR_TOKEN_NOT_PRESENT");
	assert_string_equal(esc_ckr_name(0x80001234UL), "CKR_VENDOR_OR_UNKNOWN");
	assert_string_equal(esc_ckm_name(CKM_RSA_PKCS_OAEP), "CKM_RSA_PKCS_OAEP");
	assert_string_equal(esc_ckm_name(CKM_ECDH1_DERIVE), "CKM_ECDH1_DERIVE");
	assert_null(esc_ckm_name(0x7ffffff0UL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_valid_uris, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_bad_uris, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_pin_in_uri_refused_without_echo, test_ctx_setup,
						test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_module_in_uri_refused, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_unknown_module_name, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_key_types, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_names, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
