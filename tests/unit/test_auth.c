/*
 * Unit tests for roles and password hashing (no database).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testctx.h"
#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/pin.h>

static struct esc_secret *
secret(struct esc_ctx *ctx, const char *s)
{
	struct esc_secret *out = NULL;

	assert_int_equal(esc_secret_new(ctx, s, strlen(s), &out), ESC_OK);
	return out;
}

static void
test_roles_round_trip(void **state)
{
	static const char *const lists[] = {"admin",	     "cert-manager",	     "kra",	   "auditor",
					    "admin,auditor", "cert-manager,auditor", "kra,auditor"};
	struct esc_ctx *ctx = *state;
	char buf[64];
	unsigned roles, again;
	size_t i;

	for (i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		assert_int_equal(esc_roles_parse(ctx, lists[i], &roles), ESC_OK);
		esc_roles_format(roles, buf, sizeof(buf));
		assert_string_equal(buf, lists[i]);
		assert_int_equal(esc_roles_parse(ctx, buf, &again), ESC_OK);
		assert_int_equal(again, roles);
	}
	/* Order of input does not matter; the canonical order is fixed. */
	assert_int_equal(esc_roles_parse(ctx, "auditor,admin", &roles), ESC_OK);
	assert_int_equal(roles, ESC_ROLE_ADMIN | ESC_ROLE_AUDITOR);
	esc_roles_format(roles, buf, sizeof(buf));
	assert_string_equal(buf, "admin,auditor");
	esc_roles_format(0, buf, sizeof(buf));
	assert_string_equal(buf, "");
}

static void
test_roles_refused(void **state)
{
	static const char *const bad[] = {"",	   "root",	     "admin,",	    ",admin", "admin,,auditor",
					  "Admin", "admin ,auditor", "cert_manager"};
	struct esc_ctx *ctx = *state;
	unsigned roles = 0x55;
	size_t i;

	assert_int_equal(esc_roles_parse(ctx, "cert-manager,kra", &roles), ESC_ERR_USAGE);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "a certificate manager is never a KRA"));
	assert_int_equal(esc_roles_parse(ctx, "kra,admin,cert-manager", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse(ctx, "admin,root", &roles), ESC_ERR_USAGE);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "unknown role 'root'"));
	/* DESIGN §3: administrator, certificate manager and KRA are three different people. */
	assert_int_equal(esc_roles_parse(ctx, "admin,cert-manager", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse(ctx, "admin,kra", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse(ctx, "kra,cert-manager", &roles), ESC_ERR_USAGE);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(esc_roles_parse(ctx, bad[i], &roles), ESC_ERR_USAGE);
	assert_int_equal(roles, 0x55); /* untouched on failure */
}

/* Policy role sets (cert_login_roles): any combination, none twice, "" empty. */
static void
test_role_sets(void **state)
{
	struct esc_ctx *ctx = *state;
	unsigned roles = 99;

	assert_int_equal(esc_roles_parse_set(ctx, "", &roles), ESC_OK);
	assert_int_equal(roles, 0);
	assert_int_equal(esc_roles_parse_set(ctx, "admin,cert-manager,kra", &roles), ESC_OK);
	assert_int_equal(roles, ESC_ROLE_ADMIN | ESC_ROLE_CERT_MANAGER | ESC_ROLE_KRA);
	assert_int_equal(esc_roles_parse_set(ctx, "auditor", &roles), ESC_OK);
	assert_int_equal(roles, ESC_ROLE_AUDITOR);
	assert_int_equal(esc_roles_parse_set(ctx, "kra,kra", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse_set(ctx, "kra,", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse_set(ctx, ",", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse_set(ctx, "root", &roles), ESC_ERR_USAGE);
	assert_int_equal(esc_roles_parse_set(ctx, "Admin", &roles), ESC_ERR_USAGE);
}

/* Fingerprints as people write them, normalised; anything else refused. */
static void
test_cert_sha256_parse(void **state)
{
	static const char hex[] = "3fa9000000000000000000000000000000000000000000000000000000000abc";
	char out[ESC_CERT_SHA256_HEX + 1], colons[200] = "SHA256:";
	size_t i;

	(void)state;
	assert_int_equal(esc_cert_sha256_parse(hex, out), 0);
	assert_string_equal(out, hex);
	for (i = 0; i < 64; i += 2)
		snprintf(colons + strlen(colons), sizeof(colons) - strlen(colons), "%s%c%c", i ? ":" : "",
			 hex[i] - (hex[i] >= 'a' ? 32 : 0), hex[i + 1] - (hex[i + 1] >= 'a' ? 32 : 0));
	assert_int_equal(esc_cert_sha256_parse(colons, out), 0);
	assert_string_equal(out, hex);
	assert_int_equal(esc_cert_sha256_parse("3fa9", out), -1);
	assert_int_equal(
		esc_cert_sha256_parse("3fa900000000000000000000000000000000000000000000000000000000000abcd", out), -1);
	assert_int_equal(esc_cert_sha256_parse("3fa90000000000000000000000000000000000000000000000000000000000xy", out),
			 -1);
	assert_int_equal(esc_cert_sha256_parse("", out), -1);
	assert_int_equal(esc_cert_sha256_parse(NULL, out), -1);
}

static void
test_hash_and_verify(void **state)
{
	static const char pw_text[] = "correct horse battery";
	struct esc_ctx *ctx = *state;
	struct esc_secret *pw = secret(ctx, pw_text), *wrong = secret(ctx, "correct horse battery!");
	char *h1 = NULL, *h2 = NULL;

	assert_int_equal(esc_auth_hash_password(ctx, pw, &h1), ESC_OK);
	assert_int_equal(esc_auth_hash_password(ctx, pw, &h2), ESC_OK);
	assert_int_equal(strncmp(h1, "$argon2id$v=19$m=65536,t=3,p=1$", 31), 0);
	assert_string_not_equal(h1, h2); /* a fresh salt each time */
	assert_null(strstr(h1, pw_text));
	assert_null(strstr(h1, "correct"));

	assert_int_equal(esc_auth_verify_password(ctx, h1, pw), ESC_OK);
	assert_int_equal(esc_auth_verify_password(ctx, h2, pw), ESC_OK);
	assert_int_equal(esc_auth_verify_password(ctx, h1, wrong), ESC_ERR_AUTH);

	/* Not an argon2id hash, or one asking for absurd cost: refused before any work. */
	assert_int_not_equal(esc_auth_verify_password(ctx, "$argon2i$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA", pw), ESC_OK);
	assert_int_not_equal(
		esc_auth_verify_password(ctx, "$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2g", pw),
		ESC_OK);
	free(h1);
	free(h2);
	esc_secret_free(pw);
	esc_secret_free(wrong);
}

static void
test_short_password(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_secret *pw = secret(ctx, "elevenchars");
	char *h = NULL;

	assert_int_equal(ESC_PASSWORD_MIN, 12);
	assert_int_equal(esc_auth_hash_password(ctx, pw, &h), ESC_ERR_USAGE);
	assert_null(h);
	esc_secret_free(pw);
}

static void
test_require(void **state)
{
	struct esc_ctx *ctx = *state;

	assert_int_equal(esc_account_require(ctx, NULL, ESC_ROLE_ADMIN), ESC_ERR_DENIED);
	assert_int_equal(esc_account_has_role(NULL, ESC_ROLE_AUDITOR), 0);
	esc_account_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roles_round_trip, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_roles_refused, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_role_sets, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test(test_cert_sha256_parse),
		cmocka_unit_test_setup_teardown(test_hash_and_verify, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_short_password, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_require, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
