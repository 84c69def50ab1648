/*
 * Unit tests of the KRA recipient decision (esc_kra_choose_recipient): what
 * a card's probe (esc_token_probe_decrypt) leads to, and the PKCS#1 v1.5
 * policy gate.  Every combination of the four RSA probe results is checked
 * against the rule written out here independently; the integration tests
 * kra_adopt and smartcard_kra probe real tokens.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <p11escrow/ctx.h>
#include <p11escrow/kra.h>
#include <p11escrow/token.h>

static int
setup(void **state)
{
	struct esc_ctx *ctx = NULL;

	if (esc_ctx_new(&ctx) != ESC_OK)
		return -1;
	*state = ctx;
	return 0;
}

static int
teardown(void **state)
{
	esc_ctx_free(*state);
	return 0;
}

/* The rule, restated: raw RSA gives OAEP (SHA-1 only if the card's own OAEP is SHA-1 only), else PKCS#1 v1.5 by policy. */
static void
test_rsa_all_combinations(void **state)
{
	struct esc_ctx *ctx = *state;
	unsigned bits, allow;

	for (bits = 0; bits < 16; bits++)
		for (allow = 0; allow < 2; allow++) {
			struct esc_token_decrypt_probe p = {.rsa = 1,
							    .oaep_sha256 = (bits & 1) != 0,
							    .oaep_sha1 = (bits & 2) != 0,
							    .raw = (bits & 4) != 0,
							    .pkcs1 = (bits & 8) != 0};
			const char *recipient = NULL;
			char why[304] = "";
			enum esc_err r =
				esc_kra_choose_recipient(ctx, "C", &p, (int)allow, &recipient, why, sizeof(why));

			if (p.raw) {
				assert_int_equal(r, ESC_OK);
				assert_string_equal(recipient, p.oaep_sha1 && !p.oaep_sha256 ? "rsa-oaep-sha1"
											     : "rsa-oaep-sha256");
				assert_non_null(strstr(why, "CKM_RSA_X_509"));
			} else if (p.pkcs1 && allow) {
				assert_int_equal(r, ESC_OK);
				assert_string_equal(recipient, "rsa-pkcs1v15");
				assert_non_null(strstr(why, "weaker"));
			} else if (p.pkcs1) {
				assert_int_equal(r, ESC_ERR_POLICY);
				assert_null(recipient);
				assert_non_null(strstr(esc_ctx_errmsg(ctx), "kra_allow_rsa_pkcs1v15"));
			} else {
				assert_int_equal(r, ESC_ERR_MECHANISM);
				assert_null(recipient);
				assert_non_null(strstr(esc_ctx_errmsg(ctx), "card 'C'"));
			}
		}
}

/* The reasons name what the card did. */
static void
test_rsa_reasons(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_token_decrypt_probe softhsm = {.rsa = 1, .oaep_sha1 = 1, .raw = 1, .pkcs1 = 1};
	struct esc_token_decrypt_probe opensc = {.rsa = 1, .oaep_sha256 = 1, .oaep_sha1 = 1, .raw = 1, .pkcs1 = 1};
	struct esc_token_decrypt_probe raw = {.rsa = 1, .raw = 1};
	struct esc_token_decrypt_probe oaep = {.rsa = 1, .oaep_sha256 = 1};
	const char *recipient = NULL;
	char why[304];

	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &softhsm, 0, &recipient, why, sizeof(why)), ESC_OK);
	assert_string_equal(recipient, "rsa-oaep-sha1");
	assert_non_null(strstr(why, "only with SHA-1"));
	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &opensc, 0, &recipient, why, sizeof(why)), ESC_OK);
	assert_string_equal(recipient, "rsa-oaep-sha256");
	assert_non_null(strstr(why, "RSA-OAEP with SHA-256"));
	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &raw, 0, &recipient, why, sizeof(why)), ESC_OK);
	assert_string_equal(recipient, "rsa-oaep-sha256");
	assert_non_null(strstr(why, "no RSA-OAEP probe itself, only raw RSA"));
	recipient = NULL;
	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &oaep, 1, &recipient, why, sizeof(why)), ESC_ERR_MECHANISM);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "not raw RSA"));
}

static void
test_ec(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_token_decrypt_probe p = {.rsa = 0};
	const char *recipient = NULL;
	char why[304];

	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &p, 1, &recipient, why, sizeof(why)), ESC_ERR_MECHANISM);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "CKM_ECDH1_DERIVE"));
	p.ecdh_cofactor = 1;
	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &p, 0, &recipient, why, sizeof(why)), ESC_OK);
	assert_string_equal(recipient, "ecdh");
	assert_non_null(strstr(why, "CKM_ECDH1_COFACTOR_DERIVE"));
	p.ecdh = 1;
	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &p, 0, &recipient, why, sizeof(why)), ESC_OK);
	assert_non_null(strstr(why, "CKM_ECDH1_DERIVE and CKM_ECDH1_COFACTOR_DERIVE"));
	/* PKCS#1 v1.5 results of an EC key (none are probed) never matter. */
	p.pkcs1 = 1;
	assert_int_equal(esc_kra_choose_recipient(ctx, "C", &p, 1, &recipient, why, sizeof(why)), ESC_OK);
	assert_string_equal(recipient, "ecdh");
}

/* esc_kra_warning: active KRAs only; expired first; within warn_days, not at or beyond it. */
static void
test_expiry_warning(void **state)
{
	struct esc_kra k;
	char why[256];

	(void)state;
	memset(&k, 0, sizeof(k));
	strcpy(k.name, "kra1");
	strcpy(k.state, "active");
	strcpy(k.not_after, "2027-01-01T00:00:00Z");
	k.days_left = 59;
	assert_int_equal(esc_kra_warning(&k, 60, why, sizeof(why)), 1);
	assert_non_null(strstr(why, "in 59 day(s)"));
	assert_non_null(strstr(why, "p11escrow kra renew kra1"));
	k.days_left = 60;
	assert_int_equal(esc_kra_warning(&k, 60, why, sizeof(why)), 0);
	k.days_left = 0;
	assert_int_equal(esc_kra_warning(&k, 0, why, sizeof(why)), 0);
	k.expired = 1;
	k.days_left = -3;
	assert_int_equal(esc_kra_warning(&k, 0, why, sizeof(why)), 1);
	assert_non_null(strstr(why, "expired 2027-01-01T00:00:00Z"));
	assert_non_null(strstr(why, "recovery refuses"));
	/* A retired KRA wraps nothing new and is not renewed: no warning, expired or not. */
	strcpy(k.state, "retired");
	assert_int_equal(esc_kra_warning(&k, 60, why, sizeof(why)), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rsa_all_combinations),
		cmocka_unit_test(test_rsa_reasons),
		cmocka_unit_test(test_ec),
		cmocka_unit_test(test_expiry_warning),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
