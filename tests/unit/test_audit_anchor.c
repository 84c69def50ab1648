/*
 * Unit tests for the form of an audit checkpoint kept outside the database
 * (esc_audit_anchor_parse): the file form and the log's one-line form
 * parse alike; every malformed variant is BAD_INPUT with a reason.  The
 * signature and the database checks are tests/integration/audit_rollback.sh's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <p11escrow/audit.h>

#include "audit_internal.h"
#include "testctx.h"

#define H "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define FIELDS_NO_SIG "event=42 hash=" H " time=2026-12-05T03:30:00.123456Z signer-sha256=" H
#define SIG "c2lnbmF0dXJl" /* "signature" */
#define LINE "p11escrow-audit-checkpoint-v1 " FIELDS_NO_SIG " signature=" SIG

static enum esc_err
parse(struct esc_ctx *ctx, const char *text, struct esc_audit_anchor *a)
{
	return esc_audit_anchor_parse(ctx, text, strlen(text), a);
}

static void
test_line_and_file(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_audit_anchor a;

	assert_int_equal(parse(ctx, LINE, &a), ESC_OK);
	assert_int_equal(a.event, 42);
	assert_string_equal(a.at, "2026-12-05T03:30:00.123456Z");
	/* One field a line, a comment, CRLF: the same checkpoint. */
	assert_int_equal(parse(ctx,
			       "# a comment\r\np11escrow-audit-checkpoint-v1\r\nsignature=" SIG
			       "\r\nevent=42\r\nhash=" H "\r\ntime=2026-12-05T03:30:00.123456Z\r\nsigner-sha256=" H
			       "\r\n",
			       &a),
			 ESC_OK);
	assert_int_equal(a.event, 42);
	/* base64 padding: "sig" is 3 bytes, "si" 2 ("c2k="), "s" 1 ("cw==") */
	assert_int_equal(parse(ctx, "p11escrow-audit-checkpoint-v1 " FIELDS_NO_SIG " signature=cw==", &a), ESC_OK);
}

static void
test_malformed(void **state)
{
	static const char *const bad[] = {
		"",
		"p11escrow-audit-checkpoint-v1",
		"p11escrow-audit-checkpoint-v2 " FIELDS_NO_SIG " signature=" SIG,
		"event=42 p11escrow-audit-checkpoint-v1",
		LINE " event=43",
		LINE " colour=blue",
		LINE " junk",
		"p11escrow-audit-checkpoint-v1 " FIELDS_NO_SIG,
		"p11escrow-audit-checkpoint-v1 event=042 hash=" H " time=2026-12-05T03:30:00Z signer-sha256=" H
		" signature=" SIG,
		"p11escrow-audit-checkpoint-v1 event=0 hash=" H " time=2026-12-05T03:30:00Z signer-sha256=" H
		" signature=" SIG,
		"p11escrow-audit-checkpoint-v1 event=1234567890123456789 hash=" H
		" time=2026-12-05T03:30:00Z signer-sha256=" H " signature=" SIG,
		"p11escrow-audit-checkpoint-v1 event=42 hash=" H "0 time=2026-12-05T03:30:00Z signer-sha256=" H
		" signature=" SIG,
		"p11escrow-audit-checkpoint-v1 event=42 hash=0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef "
		"time=2026-12-05T03:30:00Z signer-sha256=" H " signature=" SIG,
		"p11escrow-audit-checkpoint-v1 event=42 hash=" H " time=a\"b signer-sha256=" H " signature=" SIG,
		"p11escrow-audit-checkpoint-v1 event=42 hash=" H " time= signer-sha256=" H " signature=" SIG,
		"p11escrow-audit-checkpoint-v1 " FIELDS_NO_SIG " signature=c2lnbmF0dXJl=",
		"p11escrow-audit-checkpoint-v1 " FIELDS_NO_SIG " signature=c2ln!mF0",
		"p11escrow-audit-checkpoint-v1 " FIELDS_NO_SIG " signature=",
		LINE "\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
	};
	struct esc_ctx *ctx = *state;
	struct esc_audit_anchor a;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		esc_ctx_clear_error(ctx);
		if (parse(ctx, bad[i], &a) != ESC_ERR_BAD_INPUT)
			fail_msg("accepted: %s", bad[i]);
		assert_true(esc_ctx_errmsg(ctx)[0] != '\0');
	}
}

static void
test_bounds(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_audit_anchor a;
	static char big[ESC_AUDIT_CHECKPOINT_MAX + 2];
	char nul[] = LINE "\0 ";

	/* A NUL inside: refused, not read as a shorter string. */
	assert_int_equal(esc_audit_anchor_parse(ctx, nul, sizeof(nul) - 1, &a), ESC_ERR_BAD_INPUT);
	/* Larger than the bound: refused before parsing, even when the start is good. */
	memset(big, ' ', sizeof(big) - 1);
	memcpy(big, LINE, strlen(LINE));
	assert_int_equal(esc_audit_anchor_parse(ctx, big, sizeof(big) - 1, &a), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_audit_anchor_parse(ctx, big, ESC_AUDIT_CHECKPOINT_MAX, &a), ESC_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_line_and_file, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_malformed, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_bounds, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
