/*
 * Unit tests: the keeper protocol's framing (src/lib/keeper_proto.c).  A
 * worker may be an attacker's: every malformed, oversized, out-of-order or
 * replayed message must be refused before any field is used.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <p11escrow/ctx.h>

#include "keeper_proto.h"

static const unsigned char spki[] = {0x30, 0x03, 0x02, 0x01, 0x07};
static const unsigned char name[] = {0x30, 0x00, 0x01};

/* An issue request, encoded: *out (length field included) for esc_kp_free(out, len, 0). */
static void
issue(struct esc_ctx *ctx, uint32_t seq, unsigned char **out, size_t *len)
{
	struct esc_kp_msg m;
	unsigned char days[4];

	esc_kp_init(&m, ESC_KP_ISSUE, seq);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "encryption", 10);
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, sizeof(name));
	esc_kp_set(&m, ESC_KP_T_SPKI, spki, sizeof(spki));
	esc_kp_put32(days, 365);
	esc_kp_set(&m, ESC_KP_T_DAYS, days, 4);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, out, len), ESC_OK);
}

static void
test_roundtrip(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_kp_msg m;
	unsigned char *buf = NULL;
	size_t len = 0;

	issue(ctx, 7, &buf, &len);
	assert_int_equal(esc_kp_frame_length(buf), len - 4);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &m), ESC_OK);
	assert_int_equal(m.type, ESC_KP_ISSUE);
	assert_int_equal(m.seq, 7);
	assert_int_equal(m.f[ESC_KP_T_PROFILE].len, 10);
	assert_memory_equal(m.f[ESC_KP_T_PROFILE].p, "encryption", 10);
	assert_memory_equal(m.f[ESC_KP_T_SPKI].p, spki, sizeof(spki));
	assert_int_equal(esc_kp_get32(&m, ESC_KP_T_DAYS), 365);
	assert_null(m.f[ESC_KP_T_SAN].p); /* optional, absent */
	assert_string_equal(esc_kp_type_name(m.type), "issue");
	esc_kp_free(buf, len, 0);
}

static void
test_numbers(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_kp_msg m, d;
	unsigned char id[8], *buf = NULL;
	size_t len = 0;

	esc_kp_init(&m, ESC_KP_RELEASE, 1);
	esc_kp_put64(id, 0x0102030405060708ULL);
	esc_kp_set(&m, ESC_KP_T_ID, id, 8);
	assert_int_equal(esc_kp_encode(ctx, &m, 1, &buf, &len), ESC_OK);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_true(esc_kp_get64(&d, ESC_KP_T_ID) == 0x0102030405060708ULL);
	esc_kp_free(buf, len, 1);
}

/* Decoding buf[0..len) must fail with BAD_INPUT and leave no field set. */
static void
refused(struct esc_ctx *ctx, const unsigned char *buf, size_t len, const char *why)
{
	struct esc_kp_msg m;
	unsigned tag;

	assert_int_equal(esc_kp_decode(ctx, buf, len, &m), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), why));
	for (tag = 0; tag <= ESC_KP_T_MAX; tag++)
		assert_null(m.f[tag].p);
}

static void
test_malformed(void **state)
{
	struct esc_ctx *ctx = *state;
	unsigned char *buf = NULL, bad[ESC_KP_MAX + 16];
	size_t len = 0, body;

	issue(ctx, 1, &buf, &len);
	body = len - 4;
	memcpy(bad, buf + 4, body);

	refused(ctx, bad, 3, "out of bounds");
	bad[0] = 2;
	refused(ctx, bad, body, "protocol version 2");
	bad[0] = ESC_KP_VERSION;
	bad[1] = 0x42;
	refused(ctx, bad, body, "unknown type 66");
	bad[1] = ESC_KP_ISSUE;
	/* Trailing bytes: a field header cut short. */
	bad[body] = ESC_KP_T_SAN;
	refused(ctx, bad, body + 1, "cut short");
	/* A field whose length runs past the end. */
	memcpy(bad + body, "\x03\x00\x00\x10\x00", 5);
	refused(ctx, bad, body + 5, "runs past the end");
	/* An unknown tag, and tag 0. */
	memcpy(bad + body, "\x63\x00\x00\x00\x01x", 6);
	refused(ctx, bad, body + 6, "unknown field");
	memcpy(bad + body, "\x00\x00\x00\x00\x01x", 6);
	refused(ctx, bad, body + 6, "unknown field");
	/* A field given twice (the profile again). */
	memcpy(bad + body, "\x01\x00\x00\x00\x01x", 6);
	refused(ctx, bad, body + 6, "given twice");
	/* A field this type does not carry (a PKCS#8 key in an issue request). */
	memcpy(bad + body, "\x08\x00\x00\x00\x01x", 6);
	refused(ctx, bad, body + 6, "does not carry");
	/* A number of the wrong width. */
	memcpy(bad + body, "\x05\x00\x00\x00\x02xy", 7);
	refused(ctx, bad, body + 7, "given twice"); /* days is there already */
	esc_kp_free(buf, len, 0);

	/* A required field missing; an oversized one; an empty one. */
	{
		struct esc_kp_msg m;
		static unsigned char big[ESC_KP_MAX];

		esc_kp_init(&m, ESC_KP_ISSUE, 1);
		esc_kp_set(&m, ESC_KP_T_PROFILE, "encryption", 10);
		esc_kp_set(&m, ESC_KP_T_SUBJECT, name, sizeof(name));
		assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
		assert_non_null(strstr(esc_ctx_errmsg(ctx), "required field is missing"));
		esc_kp_set(&m, ESC_KP_T_SPKI, big, 70 * 1024);
		assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
		assert_non_null(strstr(esc_ctx_errmsg(ctx), "longer than its type allows"));
		esc_kp_set(&m, ESC_KP_T_SPKI, big, 0);
		assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
		assert_non_null(strstr(esc_ctx_errmsg(ctx), "empty"));
		esc_kp_init(&m, ESC_KP_RELEASE, 1);
		esc_kp_set(&m, ESC_KP_T_ID, "1234", 4);
		assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
		assert_non_null(strstr(esc_ctx_errmsg(ctx), "wrong length"));
	}
}

static void
test_frame_length(void **state)
{
	unsigned char h[4];

	(void)state;
	esc_kp_put32(h, 0);
	assert_int_equal(esc_kp_frame_length(h), 0);
	esc_kp_put32(h, ESC_KP_HEADER - 1);
	assert_int_equal(esc_kp_frame_length(h), 0);
	esc_kp_put32(h, ESC_KP_MAX + 1);
	assert_int_equal(esc_kp_frame_length(h), 0);
	esc_kp_put32(h, 0xffffffffu);
	assert_int_equal(esc_kp_frame_length(h), 0);
	esc_kp_put32(h, ESC_KP_HEADER);
	assert_int_equal(esc_kp_frame_length(h), ESC_KP_HEADER);
}

static void
test_sequence(void **state)
{
	struct esc_ctx *ctx = *state;
	uint32_t last = 0;

	assert_int_equal(esc_kp_next_seq(ctx, &last, 0), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_kp_next_seq(ctx, &last, 1), ESC_OK);
	assert_int_equal(esc_kp_next_seq(ctx, &last, 2), ESC_OK);
	/* Replayed, reordered, skipped: refused, and the expected number does not move. */
	assert_int_equal(esc_kp_next_seq(ctx, &last, 2), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "replayed or reordered"));
	assert_int_equal(esc_kp_next_seq(ctx, &last, 1), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_kp_next_seq(ctx, &last, 4), ESC_ERR_BAD_INPUT);
	assert_int_equal(last, 2);
	assert_int_equal(esc_kp_next_seq(ctx, &last, 3), ESC_OK);
}

static void
test_error_reply(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_kp_msg m, d;
	unsigned char code[4], *buf = NULL;
	size_t len = 0;

	esc_kp_init(&m, ESC_KP_ERROR, 9);
	esc_kp_put32(code, (uint32_t)(int32_t)ESC_ERR_DENIED);
	esc_kp_set(&m, ESC_KP_T_CODE, code, 4);
	esc_kp_set(&m, ESC_KP_T_MESSAGE, "request 9 is not approved", 25);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_OK);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_int_equal((int32_t)esc_kp_get32(&d, ESC_KP_T_CODE), ESC_ERR_DENIED);
	esc_kp_free(buf, len, 0);
	/* The hello reply's chain may be empty, and is still present. */
	esc_kp_init(&m, ESC_KP_HELLO | ESC_KP_REPLY, 1);
	esc_kp_set(&m, ESC_KP_T_CA, name, sizeof(name));
	esc_kp_set(&m, ESC_KP_T_TRANSPORT, name, sizeof(name));
	esc_kp_set(&m, ESC_KP_T_CHAIN, NULL, 0);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_OK);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_non_null(d.f[ESC_KP_T_CHAIN].p);
	assert_int_equal(d.f[ESC_KP_T_CHAIN].len, 0);
	esc_kp_free(buf, len, 0);
}

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

/* Types that carry a private key are known before their body is read; SEAL_KEY and the account field. */
static void
test_secret_types(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_kp_msg m, d;
	unsigned char *buf = NULL, days[4];
	size_t len = 0;

	assert_int_equal(esc_kp_type_secret(ESC_KP_OPEN_TRANSPORT | ESC_KP_REPLY), 1);
	assert_int_equal(esc_kp_type_secret(ESC_KP_SEAL_KEY), 1);
	assert_int_equal(esc_kp_type_secret(ESC_KP_OPEN_TRANSPORT), 0);
	assert_int_equal(esc_kp_type_secret(ESC_KP_ISSUE), 0);
	assert_int_equal(esc_kp_type_secret(0x42), 0);
	esc_kp_init(&m, ESC_KP_SEAL_KEY, 3);
	esc_kp_set(&m, ESC_KP_T_PKCS8, name, sizeof(name));
	esc_kp_set(&m, ESC_KP_T_CERT, name, sizeof(name));
	esc_kp_set(&m, ESC_KP_T_RECIPIENT, name, sizeof(name));
	assert_int_equal(esc_kp_encode(ctx, &m, 1, &buf, &len), ESC_OK);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_int_equal(d.f[ESC_KP_T_RECIPIENT].len, sizeof(name));
	esc_kp_free(buf, len, 1);
	/* A sealed key without its recipient is no message. */
	esc_kp_init(&m, ESC_KP_SEAL_KEY, 3);
	esc_kp_set(&m, ESC_KP_T_PKCS8, name, sizeof(name));
	esc_kp_set(&m, ESC_KP_T_CERT, name, sizeof(name));
	assert_int_equal(esc_kp_encode(ctx, &m, 1, &buf, &len), ESC_ERR_USAGE);
	/* An account name: at most 64 bytes, only where a request may act for an account. */
	esc_kp_put32(days, 7);
	esc_kp_init(&m, ESC_KP_SIGN_CRL, 4);
	esc_kp_set(&m, ESC_KP_T_DAYS, days, 4);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, "admin", 5);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_OK);
	esc_kp_free(buf, len, 0);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, "an-account-name-longer-than-sixty-four-bytes-is-refused-by-the-table", 68);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
	esc_kp_init(&m, ESC_KP_RELEASE, 5);
	esc_kp_set(&m, ESC_KP_T_ID, "12345678", 8);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, "admin", 5);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
}

/* STATUS carries nothing either way; anything in it is refused. */
static void
test_status(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_kp_msg m, d;
	unsigned char *buf = NULL;
	size_t len = 0;

	esc_kp_init(&m, ESC_KP_STATUS, 3);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_OK);
	assert_int_equal(len, 4 + ESC_KP_HEADER);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_int_equal(d.type, ESC_KP_STATUS);
	assert_string_equal(esc_kp_type_name(d.type), "status");
	assert_string_equal(esc_kp_type_name(ESC_KP_STATUS | ESC_KP_REPLY), "status reply");
	assert_false(esc_kp_type_secret(ESC_KP_STATUS));
	esc_kp_free(buf, len, 0);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, "admin", 5);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
}

/*
 * RESEAL: a worker names an account, a count and where the last batch
 * ended, never a record to act on or a key; the reply is counts only, of
 * fixed width.
 */
static void
test_reseal(void **state)
{
	struct esc_ctx *ctx = *state;
	static const char id[] = "0f0e0d0c-0b0a-4908-8706-050403020100";
	struct esc_kp_msg m, d;
	unsigned char n[4], tally[28] = {0}, *buf = NULL;
	size_t len = 0;

	esc_kp_put32(n, 50);
	esc_kp_init(&m, ESC_KP_RESEAL, 1);
	esc_kp_set(&m, ESC_KP_T_COUNT, n, 4);
	/* No account: refused (a worker never asks for itself). */
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, "admin", 5);
	/* A record id is exactly a UUID's 36 characters. */
	esc_kp_set(&m, ESC_KP_T_RECORD, id, 35);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
	esc_kp_set(&m, ESC_KP_T_RECORD, id, 36);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_OK);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_int_equal(esc_kp_get32(&d, ESC_KP_T_COUNT), 50);
	assert_memory_equal(d.f[ESC_KP_T_RECORD].p, id, 36);
	assert_string_equal(esc_kp_type_name(d.type), "reseal");
	assert_false(esc_kp_type_secret(ESC_KP_RESEAL));
	esc_kp_free(buf, len, 0);
	/* A request may not carry what a reply does. */
	esc_kp_set(&m, ESC_KP_T_TALLY, tally, sizeof(tally));
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);

	esc_kp_init(&m, ESC_KP_RESEAL | ESC_KP_REPLY, 1);
	esc_kp_set(&m, ESC_KP_T_TALLY, tally, 27);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_ERR_USAGE);
	esc_kp_set(&m, ESC_KP_T_TALLY, tally, 28);
	assert_int_equal(esc_kp_encode(ctx, &m, 0, &buf, &len), ESC_OK);
	assert_int_equal(esc_kp_decode(ctx, buf + 4, len - 4, &d), ESC_OK);
	assert_null(d.f[ESC_KP_T_SKIPS].p);
	esc_kp_free(buf, len, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),    cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_malformed),    cmocka_unit_test(test_frame_length),
		cmocka_unit_test(test_sequence),     cmocka_unit_test(test_error_reply),
		cmocka_unit_test(test_secret_types), cmocka_unit_test(test_reseal),
		cmocka_unit_test(test_status),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
