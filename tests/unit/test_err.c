/*
 * Unit tests for error names, exit codes and the context's error detail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

/* esc_error() is internal to the library; reach it from here whatever the include path. */
#include "../../src/lib/internal.h"

/* Every code err.h declares; a new code must be added here too. */
static const enum esc_err all_codes[] = {
	ESC_OK,
	ESC_ERR_NOMEM,
	ESC_ERR_INTERNAL,
	ESC_ERR_USAGE,
	ESC_ERR_CONFIG,
	ESC_ERR_IO,
	ESC_ERR_PIN_MISSING,
	ESC_ERR_PIN_INCORRECT,
	ESC_ERR_PIN_LOCKED,
	ESC_ERR_TOKEN_NOT_FOUND,
	ESC_ERR_KEY_NOT_FOUND,
	ESC_ERR_AMBIGUOUS,
	ESC_ERR_MECHANISM,
	ESC_ERR_PKCS11,
	ESC_ERR_MODULE,
	ESC_ERR_URI,
	ESC_ERR_DB_CONNECT,
	ESC_ERR_DB,
	ESC_ERR_SCHEMA_NEWER,
	ESC_ERR_SCHEMA_OLD,
	ESC_ERR_BUSY,
	ESC_ERR_CRYPTO,
	ESC_ERR_BAD_INPUT,
	ESC_ERR_MISMATCH,
	ESC_ERR_TAMPERED,
	ESC_ERR_NOT_RECIPIENT,
	ESC_ERR_CARDS_NEEDED,
	ESC_ERR_ROLLED_BACK,
	ESC_ERR_EXISTS,
	ESC_ERR_STATE,
	ESC_ERR_NOT_FOUND,
	ESC_ERR_POLICY,
	ESC_ERR_ARCHIVED,
	ESC_ERR_AUTH,
	ESC_ERR_DENIED,
	ESC_ERR_PASSWORD_CHANGE,
};

#define NCODES (sizeof(all_codes) / sizeof(all_codes[0]))

static void
test_names(void **state)
{
	size_t i, j;
	const char *a;

	(void)state;
	for (i = 0; i < NCODES; i++) {
		a = esc_strerror(all_codes[i]);
		assert_non_null(a);
		assert_true(a[0] != '\0');
		if (strcmp(a, "unknown error") == 0)
			fail_msg("code %d has no name", all_codes[i]);
		for (j = 0; j < i; j++)
			if (strcmp(a, esc_strerror(all_codes[j])) == 0)
				fail_msg("codes %d and %d share the name '%s'", all_codes[i], all_codes[j], a);
	}
	assert_string_equal(esc_strerror(ESC_OK), "success");
	assert_string_equal(esc_strerror(ESC_ERR_PIN_INCORRECT), "PIN incorrect");
	assert_string_equal(esc_strerror(ESC_ERR_TOKEN_NOT_FOUND), "token not found");
}

static void
test_exit_codes(void **state)
{
	/*
	 * Classes a script must tell apart.  NOMEM and INTERNAL deliberately
	 * share one code (70, EX_SOFTWARE): neither is something to react to.
	 */
	static const enum esc_err distinct[] = {
		ESC_ERR_INTERNAL,	 ESC_ERR_USAGE,		ESC_ERR_CONFIG,	    ESC_ERR_IO,
		ESC_ERR_PIN_MISSING,	 ESC_ERR_PIN_INCORRECT, ESC_ERR_PIN_LOCKED, ESC_ERR_TOKEN_NOT_FOUND,
		ESC_ERR_KEY_NOT_FOUND,	 ESC_ERR_AMBIGUOUS,	ESC_ERR_MECHANISM,  ESC_ERR_PKCS11,
		ESC_ERR_MODULE,		 ESC_ERR_URI,		ESC_ERR_DB_CONNECT, ESC_ERR_DB,
		ESC_ERR_SCHEMA_NEWER,	 ESC_ERR_SCHEMA_OLD,	ESC_ERR_BUSY,	    ESC_ERR_CRYPTO,
		ESC_ERR_BAD_INPUT,	 ESC_ERR_MISMATCH,	ESC_ERR_TAMPERED,   ESC_ERR_NOT_RECIPIENT,
		ESC_ERR_CARDS_NEEDED,	 ESC_ERR_EXISTS,	ESC_ERR_STATE,	    ESC_ERR_NOT_FOUND,
		ESC_ERR_POLICY,		 ESC_ERR_ARCHIVED,	ESC_ERR_AUTH,	    ESC_ERR_DENIED,
		ESC_ERR_PASSWORD_CHANGE,
	};
	size_t i, j;
	int a;

	(void)state;
	assert_int_equal(esc_err_exit_code(ESC_OK), 0);
	for (i = 0; i < NCODES; i++) {
		if (all_codes[i] == ESC_OK)
			continue;
		a = esc_err_exit_code(all_codes[i]);
		/* 0 is success, 1 is "unknown", 126 and up belong to the shell. */
		if (a < 2 || a > 125)
			fail_msg("code %d maps to exit status %d", all_codes[i], a);
	}
	for (i = 0; i < sizeof(distinct) / sizeof(distinct[0]); i++)
		for (j = 0; j < i; j++)
			if (esc_err_exit_code(distinct[i]) == esc_err_exit_code(distinct[j]))
				fail_msg("'%s' and '%s' share exit status %d", esc_strerror(distinct[i]),
					 esc_strerror(distinct[j]), esc_err_exit_code(distinct[i]));
	assert_int_equal(esc_err_exit_code(ESC_ERR_NOMEM), esc_err_exit_code(ESC_ERR_INTERNAL));
	assert_int_not_equal(esc_err_exit_code(ESC_ERR_PIN_INCORRECT), esc_err_exit_code(ESC_ERR_TOKEN_NOT_FOUND));
	assert_int_not_equal(esc_err_exit_code(ESC_ERR_PIN_INCORRECT), esc_err_exit_code(ESC_ERR_DB_CONNECT));
	assert_int_not_equal(esc_err_exit_code(ESC_ERR_TOKEN_NOT_FOUND), esc_err_exit_code(ESC_ERR_DB_CONNECT));
}

/* esc_err_at walks the whole table: every declared code once, ESC_OK first, exit codes never decreasing. */
static void
test_table_walk(void **state)
{
	enum esc_err e;
	size_t i, j, seen = 0;
	int last = -1;

	(void)state;
	for (i = 0; esc_err_at(i, &e); i++) {
		if (i == 0)
			assert_int_equal(e, ESC_OK);
		for (j = 0; j < NCODES; j++)
			if (all_codes[j] == e)
				seen++;
		/* NOMEM and INTERNAL (70) come right after OK; the rest in exit-code order. */
		if (e != ESC_ERR_NOMEM && e != ESC_ERR_INTERNAL) {
			assert_true(esc_err_exit_code(e) >= last);
			last = esc_err_exit_code(e);
		}
	}
	assert_int_equal(i, NCODES);
	assert_int_equal(seen, NCODES);
	assert_false(esc_err_at(i, &e));
}

static void
test_unknown_code(void **state)
{
	(void)state;
	assert_string_equal(esc_strerror((enum esc_err) - 999), "unknown error");
	assert_string_equal(esc_strerror((enum esc_err)7), "unknown error");
	assert_int_equal(esc_err_exit_code((enum esc_err) - 999), 1);
	assert_int_equal(esc_err_exit_code((enum esc_err)7), 1);
}

static void
test_esc_error(void **state)
{
	struct esc_ctx *ctx;
	char longer[2 * ESC_ERRMSG_MAX];

	(void)state;
	assert_int_equal(esc_ctx_new(&ctx), ESC_OK);
	assert_string_equal(esc_ctx_errmsg(ctx), "");
	assert_int_equal(esc_ctx_errcode(ctx), ESC_OK);

	assert_int_equal(
		esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "no token matches '%s' (%d slots)", "pkcs11:token=x", 3),
		ESC_ERR_TOKEN_NOT_FOUND);
	assert_int_equal(esc_ctx_errcode(ctx), ESC_ERR_TOKEN_NOT_FOUND);
	assert_string_equal(esc_ctx_errmsg(ctx), "no token matches 'pkcs11:token=x' (3 slots)");

	/* The newest failure replaces the last. */
	assert_int_equal(esc_error(ctx, ESC_ERR_IO, "second"), ESC_ERR_IO);
	assert_int_equal(esc_ctx_errcode(ctx), ESC_ERR_IO);
	assert_string_equal(esc_ctx_errmsg(ctx), "second");

	/* Too long a message is cut, never overflowed. */
	memset(longer, 'x', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	assert_int_equal(esc_error(ctx, ESC_ERR_USAGE, "%s", longer), ESC_ERR_USAGE);
	assert_int_equal(strlen(esc_ctx_errmsg(ctx)), ESC_ERRMSG_MAX - 1);

	esc_ctx_clear_error(ctx);
	assert_string_equal(esc_ctx_errmsg(ctx), "");
	assert_int_equal(esc_ctx_errcode(ctx), ESC_OK);

	/* Without a context the code still comes back. */
	assert_int_equal(esc_error(NULL, ESC_ERR_DB, "lost"), ESC_ERR_DB);
	esc_ctx_free(ctx);
	esc_ctx_free(NULL);
}

static void
test_esc_error_ossl(void **state)
{
	static const unsigned char garbage[] = {0x30, 0x82, 0xff, 0xff, 0x01, 0x02};
	const unsigned char *p = garbage;
	struct esc_ctx *ctx;
	const char *reason;
	unsigned long e;
	X509 *x;

	(void)state;
	assert_int_equal(esc_ctx_new(&ctx), ESC_OK);

	ERR_clear_error();
	x = d2i_X509(NULL, &p, sizeof(garbage));
	assert_null(x);
	assert_true((e = ERR_peek_error()) != 0);
	assert_non_null(reason = ERR_reason_error_string(e));
	assert_int_equal(esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "cannot parse certificate '%s'", "ca.der"),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_ctx_errcode(ctx), ESC_ERR_BAD_INPUT);
	assert_true(strncmp(esc_ctx_errmsg(ctx), "cannot parse certificate 'ca.der' (OpenSSL: ", 44) == 0);
	if (strstr(esc_ctx_errmsg(ctx), reason) == NULL)
		fail_msg("'%s' lacks OpenSSL's reason '%s'", esc_ctx_errmsg(ctx), reason);
	/* The queue is consumed, so a later failure does not inherit it. */
	assert_int_equal(ERR_peek_error(), 0);

	/* The earliest error is the cause and is the one reported. */
	ERR_raise(ERR_LIB_X509, X509_R_CERT_ALREADY_IN_HASH_TABLE);
	ERR_raise(ERR_LIB_EVP, EVP_R_BAD_DECRYPT);
	assert_int_equal(esc_error_ossl(ctx, ESC_ERR_CRYPTO, "step %d", 2), ESC_ERR_CRYPTO);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "cert already in hash table"));
	assert_null(strstr(esc_ctx_errmsg(ctx), "bad decrypt"));
	assert_int_equal(ERR_peek_error(), 0);

	/* An empty queue adds nothing. */
	assert_int_equal(esc_error_ossl(ctx, ESC_ERR_CRYPTO, "plain"), ESC_ERR_CRYPTO);
	assert_string_equal(esc_ctx_errmsg(ctx), "plain");

	/* Without a context the queue is still emptied. */
	ERR_raise(ERR_LIB_EVP, EVP_R_BAD_DECRYPT);
	assert_int_equal(esc_error_ossl(NULL, ESC_ERR_CRYPTO, "x"), ESC_ERR_CRYPTO);
	assert_int_equal(ERR_peek_error(), 0);
	esc_ctx_free(ctx);
}

struct sink {
	int calls;
	enum esc_log_level level;
	char msg[64];
};

static void
sink_fn(void *arg, enum esc_log_level level, const char *msg)
{
	struct sink *s = arg;

	s->calls++;
	s->level = level;
	snprintf(s->msg, sizeof(s->msg), "%s", msg);
}

static void
test_log(void **state)
{
	struct esc_ctx *ctx;
	struct sink s = {0};

	(void)state;
	assert_int_equal(esc_ctx_new(&ctx), ESC_OK);
	esc_log(ctx, ESC_LOG_INFO, "no sink yet");
	esc_ctx_set_log(ctx, sink_fn, &s);
	esc_log(ctx, ESC_LOG_WARN, "token %s has %d slots", "ca", 2);
	assert_int_equal(s.calls, 1);
	assert_int_equal(s.level, ESC_LOG_WARN);
	assert_string_equal(s.msg, "token ca has 2 slots");
	esc_log(NULL, ESC_LOG_ERROR, "ignored");
	assert_int_equal(s.calls, 1);
	esc_ctx_free(ctx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),	     cmocka_unit_test(test_exit_codes),
		cmocka_unit_test(test_unknown_code), cmocka_unit_test(test_table_walk),
		cmocka_unit_test(test_esc_error),    cmocka_unit_test(test_esc_error_ossl),
		cmocka_unit_test(test_log),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
