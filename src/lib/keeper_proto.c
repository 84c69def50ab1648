/*
 * The keeper protocol's framing: one table of what each message type may
 * and must carry, one decoder and one encoder that both obey it.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "internal.h"
#include "keeper_proto.h"

#define F(tag) (1u << (tag))
#define NUM32 4
#define NUM64 8
#define DER_MAX (64 * 1024) /* a certificate, a name, a key */
#define TEXT_MAX 1024	    /* a profile name, an error message */
#define ENVELOPE_MAX (256 * 1024)

/* What each field may hold: exactly `exact` bytes if non-zero, else 1..max (0 allowed where empty_ok). */
static const struct {
	size_t exact;
	size_t max;
	int empty_ok;
} fields[ESC_KP_T_MAX + 1] = {
	[ESC_KP_T_PROFILE] = {0, 32, 0},
	[ESC_KP_T_SUBJECT] = {0, DER_MAX, 0},
	[ESC_KP_T_SAN] = {0, DER_MAX, 0},
	[ESC_KP_T_SPKI] = {0, DER_MAX, 0},
	[ESC_KP_T_DAYS] = {NUM32, 0, 0},
	[ESC_KP_T_CERT] = {0, DER_MAX, 0},
	[ESC_KP_T_ENVELOPE] = {0, ENVELOPE_MAX, 0},
	[ESC_KP_T_PKCS8] = {0, DER_MAX, 0},
	[ESC_KP_T_ID] = {NUM64, 0, 0},
	[ESC_KP_T_CRL] = {0, ENVELOPE_MAX, 0},
	[ESC_KP_T_EVENTS] = {NUM32, 0, 0},
	[ESC_KP_T_SECONDS] = {NUM32, 0, 0},
	[ESC_KP_T_FINAL] = {NUM32, 0, 0},
	[ESC_KP_T_EVENT_ID] = {NUM64, 0, 0},
	[ESC_KP_T_CA] = {0, DER_MAX, 0},
	[ESC_KP_T_CHAIN] = {0, 4 * DER_MAX, 1},
	[ESC_KP_T_TRANSPORT] = {0, DER_MAX, 0},
	[ESC_KP_T_CODE] = {NUM32, 0, 0},
	[ESC_KP_T_MESSAGE] = {0, TEXT_MAX, 0},
	[ESC_KP_T_RECIPIENT] = {0, DER_MAX, 0},
	[ESC_KP_T_ACCOUNT] = {0, 64, 0},
	[ESC_KP_T_NAME] = {0, 64, 0},
	[ESC_KP_T_SECRET] = {0, 64, 0},
	[ESC_KP_T_RECORD] = {36, 0, 0},
	[ESC_KP_T_COUNT] = {NUM32, 0, 0},
	[ESC_KP_T_SKIPS] = {0, ENVELOPE_MAX, 0},
	[ESC_KP_T_TALLY] = {5 * NUM32 + NUM64, 0, 0},
	[ESC_KP_T_DIGEST] = {32, 0, 0},
};

/* Per message type: the fields it may carry and those it must. */
static const struct {
	const char *name;
	uint32_t allowed;
	uint32_t required;
	uint8_t type;
	uint8_t secret; /* carries a private key: framed in secure memory */
} types[] = {
	{.type = ESC_KP_HELLO, .name = "hello", .allowed = 0, .required = 0, .secret = 0},
	{.type = ESC_KP_HELLO | ESC_KP_REPLY,
	 .name = "hello reply",
	 .allowed = F(ESC_KP_T_CA) | F(ESC_KP_T_CHAIN) | F(ESC_KP_T_TRANSPORT),
	 .required = F(ESC_KP_T_CA) | F(ESC_KP_T_CHAIN) | F(ESC_KP_T_TRANSPORT),
	 .secret = 0},
	{.type = ESC_KP_ISSUE,
	 .name = "issue",
	 .allowed = F(ESC_KP_T_PROFILE) | F(ESC_KP_T_SUBJECT) | F(ESC_KP_T_SAN) | F(ESC_KP_T_SPKI) | F(ESC_KP_T_DAYS),
	 .required = F(ESC_KP_T_PROFILE) | F(ESC_KP_T_SUBJECT) | F(ESC_KP_T_SPKI),
	 .secret = 0},
	{.type = ESC_KP_ISSUE | ESC_KP_REPLY,
	 .name = "issue reply",
	 .allowed = F(ESC_KP_T_CERT),
	 .required = F(ESC_KP_T_CERT),
	 .secret = 0},
	/* The profile is optional: when named, it must be an archival one. */
	{.type = ESC_KP_OPEN_TRANSPORT,
	 .name = "open-transport",
	 .allowed = F(ESC_KP_T_PROFILE) | F(ESC_KP_T_ENVELOPE),
	 .required = F(ESC_KP_T_ENVELOPE),
	 .secret = 0},
	{.type = ESC_KP_OPEN_TRANSPORT | ESC_KP_REPLY,
	 .name = "open-transport reply",
	 .allowed = F(ESC_KP_T_PKCS8),
	 .required = F(ESC_KP_T_PKCS8),
	 .secret = 1},
	{.type = ESC_KP_RELEASE, .name = "release", .allowed = F(ESC_KP_T_ID), .required = F(ESC_KP_T_ID), .secret = 0},
	{.type = ESC_KP_RELEASE | ESC_KP_REPLY, .name = "release reply", .allowed = 0, .required = 0, .secret = 0},
	{.type = ESC_KP_SIGN_CRL,
	 .name = "sign-crl",
	 .allowed = F(ESC_KP_T_DAYS) | F(ESC_KP_T_ACCOUNT),
	 .required = F(ESC_KP_T_DAYS),
	 .secret = 0},
	{.type = ESC_KP_SIGN_CRL | ESC_KP_REPLY,
	 .name = "sign-crl reply",
	 .allowed = F(ESC_KP_T_CRL),
	 .required = F(ESC_KP_T_CRL),
	 .secret = 0},
	{.type = ESC_KP_CHECKPOINT,
	 .name = "checkpoint",
	 .allowed = F(ESC_KP_T_EVENTS) | F(ESC_KP_T_SECONDS) | F(ESC_KP_T_FINAL) | F(ESC_KP_T_ACCOUNT),
	 .required = F(ESC_KP_T_EVENTS) | F(ESC_KP_T_SECONDS) | F(ESC_KP_T_FINAL),
	 .secret = 0},
	{.type = ESC_KP_CHECKPOINT | ESC_KP_REPLY,
	 .name = "checkpoint reply",
	 .allowed = F(ESC_KP_T_EVENT_ID),
	 .required = F(ESC_KP_T_EVENT_ID),
	 .secret = 0},
	{.type = ESC_KP_SEAL_KEY,
	 .name = "seal-key",
	 .allowed = F(ESC_KP_T_PKCS8) | F(ESC_KP_T_CERT) | F(ESC_KP_T_RECIPIENT),
	 .required = F(ESC_KP_T_PKCS8) | F(ESC_KP_T_CERT) | F(ESC_KP_T_RECIPIENT),
	 .secret = 1},
	{.type = ESC_KP_SEAL_KEY | ESC_KP_REPLY,
	 .name = "seal-key reply",
	 .allowed = F(ESC_KP_T_ENVELOPE),
	 .required = F(ESC_KP_T_ENVELOPE),
	 .secret = 0},
	{.type = ESC_KP_KRA_PROVE,
	 .name = "kra-prove",
	 .allowed = F(ESC_KP_T_ACCOUNT) | F(ESC_KP_T_NAME) | F(ESC_KP_T_ID) | F(ESC_KP_T_SECRET),
	 .required = F(ESC_KP_T_ACCOUNT) | F(ESC_KP_T_NAME) | F(ESC_KP_T_ID) | F(ESC_KP_T_SECRET),
	 .secret = 1},
	{.type = ESC_KP_KRA_PROVE | ESC_KP_REPLY,
	 .name = "kra-prove reply",
	 .allowed = F(ESC_KP_T_CERT),
	 .required = F(ESC_KP_T_CERT),
	 .secret = 0},
	/* For an account, re-read by the keeper; RECORD: the last record of the previous batch. */
	{.type = ESC_KP_RESEAL,
	 .name = "reseal",
	 .allowed = F(ESC_KP_T_ACCOUNT) | F(ESC_KP_T_RECORD) | F(ESC_KP_T_COUNT),
	 .required = F(ESC_KP_T_ACCOUNT) | F(ESC_KP_T_COUNT),
	 .secret = 0},
	{.type = ESC_KP_RESEAL | ESC_KP_REPLY,
	 .name = "reseal reply",
	 .allowed = F(ESC_KP_T_TALLY) | F(ESC_KP_T_RECORD) | F(ESC_KP_T_SKIPS),
	 .required = F(ESC_KP_T_TALLY),
	 .secret = 0},
	{.type = ESC_KP_STATUS, .name = "status", .allowed = 0, .required = 0, .secret = 0},
	{.type = ESC_KP_STATUS | ESC_KP_REPLY, .name = "status reply", .allowed = 0, .required = 0, .secret = 0},
	/* For an administrator, re-read by the keeper: one record the KRA re-wrap is to offer. */
	{.type = ESC_KP_REWRAP_OPEN,
	 .name = "rewrap-open",
	 .allowed = F(ESC_KP_T_ACCOUNT) | F(ESC_KP_T_RECORD),
	 .required = F(ESC_KP_T_ACCOUNT) | F(ESC_KP_T_RECORD),
	 .secret = 0},
	{.type = ESC_KP_REWRAP_OPEN | ESC_KP_REPLY,
	 .name = "rewrap-open reply",
	 .allowed = F(ESC_KP_T_ENVELOPE) | F(ESC_KP_T_DIGEST),
	 .required = F(ESC_KP_T_ENVELOPE) | F(ESC_KP_T_DIGEST),
	 .secret = 0},
	{.type = ESC_KP_ERROR,
	 .name = "error",
	 .allowed = F(ESC_KP_T_CODE) | F(ESC_KP_T_MESSAGE),
	 .required = F(ESC_KP_T_CODE) | F(ESC_KP_T_MESSAGE),
	 .secret = 0},
};

static int
type_index(uint8_t type)
{
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(types); i++)
		if (types[i].type == type)
			return (int)i;
	return -1;
}

int
esc_kp_type_secret(uint8_t type)
{
	int i = type_index(type);

	return i >= 0 && types[i].secret;
}

const char *
esc_kp_type_name(uint8_t type)
{
	int i = type_index(type);

	return i < 0 ? "unknown" : types[i].name;
}

void
esc_kp_put32(unsigned char out[4], uint32_t v)
{
	out[0] = (unsigned char)(v >> 24);
	out[1] = (unsigned char)(v >> 16);
	out[2] = (unsigned char)(v >> 8);
	out[3] = (unsigned char)v;
}

void
esc_kp_put64(unsigned char out[8], uint64_t v)
{
	esc_kp_put32(out, (uint32_t)(v >> 32));
	esc_kp_put32(out + 4, (uint32_t)v);
}

static uint32_t
get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

uint32_t
esc_kp_get32(const struct esc_kp_msg *m, enum esc_kp_tag tag)
{
	return m->f[tag].p != NULL && m->f[tag].len == NUM32 ? get32(m->f[tag].p) : 0;
}

uint64_t
esc_kp_get64(const struct esc_kp_msg *m, enum esc_kp_tag tag)
{
	if (m->f[tag].p == NULL || m->f[tag].len != NUM64)
		return 0;
	return (uint64_t)get32(m->f[tag].p) << 32 | get32(m->f[tag].p + 4);
}

size_t
esc_kp_frame_length(const unsigned char hdr[4])
{
	uint32_t n = get32(hdr);

	return n < ESC_KP_HEADER || n > ESC_KP_MAX ? 0 : (size_t)n;
}

void
esc_kp_init(struct esc_kp_msg *m, uint8_t type, uint32_t seq)
{
	memset(m, 0, sizeof(*m));
	m->type = type;
	m->seq = seq;
}

void
esc_kp_set(struct esc_kp_msg *m, enum esc_kp_tag tag, const void *p, size_t len)
{
	/* An empty field still counts as present: point at something that is not NULL. */
	static const unsigned char empty;

	m->f[tag].p = p != NULL ? p : &empty;
	m->f[tag].len = len;
}

/* Does field tag of length len fit the table?  Returns the reason it does not, or NULL. */
static const char *
field_bad(unsigned tag, size_t len)
{
	if (fields[tag].exact != 0)
		return len == fields[tag].exact ? NULL : "a number field has the wrong length";
	if (len == 0)
		return fields[tag].empty_ok ? NULL : "a field is empty";
	return len <= fields[tag].max ? NULL : "a field is longer than its type allows";
}

/* Every present field allowed and well-sized, every required one present: NULL, else the reason. */
static const char *
check_fields(const struct esc_kp_msg *m, int ti)
{
	unsigned tag;
	const char *why;

	for (tag = 1; tag <= ESC_KP_T_MAX; tag++) {
		int present = m->f[tag].p != NULL;

		if (present && !(types[ti].allowed & F(tag)))
			return "a field this message type does not carry";
		if (!present && (types[ti].required & F(tag)))
			return "a required field is missing";
		if (present && (why = field_bad(tag, m->f[tag].len)) != NULL)
			return why;
	}
	return NULL;
}

enum esc_err
esc_kp_decode(struct esc_ctx *ctx, const unsigned char *buf, size_t len, struct esc_kp_msg *m)
{
	const char *why;
	size_t off;
	int ti;

	memset(m, 0, sizeof(*m));
	if (len < ESC_KP_HEADER || len > ESC_KP_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message of %zu bytes: out of bounds", len);
	if (buf[0] != ESC_KP_VERSION)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message of protocol version %u, not %u", buf[0],
				 ESC_KP_VERSION);
	if ((ti = type_index(buf[1])) < 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message of unknown type %u", buf[1]);
	m->type = buf[1];
	m->seq = get32(buf + 2);
	for (off = ESC_KP_HEADER; off < len;) {
		unsigned tag;
		size_t flen;

		if (len - off < 5) {
			memset(m, 0, sizeof(*m));
			return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message '%s': a field header is cut short",
					 types[ti].name);
		}
		tag = buf[off];
		flen = get32(buf + off + 1);
		off += 5;
		if (tag == 0 || tag > ESC_KP_T_MAX || m->f[tag].p != NULL || flen > len - off) {
			memset(m, 0, sizeof(*m));
			return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message '%s': %s", types[ti].name,
					 tag == 0 || tag > ESC_KP_T_MAX ? "an unknown field"
					 : flen > len - off		? "a field runs past the end"
									: "a field given twice");
		}
		esc_kp_set(m, tag, buf + off, flen);
		off += flen;
	}
	if ((why = check_fields(m, ti)) != NULL) {
		memset(m, 0, sizeof(*m));
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message '%s': %s", types[ti].name, why);
	}
	return ESC_OK;
}

enum esc_err
esc_kp_encode(struct esc_ctx *ctx, const struct esc_kp_msg *m, int secure, unsigned char **out, size_t *outlen)
{
	unsigned char *buf;
	const char *why;
	size_t total = ESC_KP_HEADER, off;
	unsigned tag;
	int ti;

	if ((ti = type_index(m->type)) < 0)
		return esc_error(ctx, ESC_ERR_USAGE, "keeper message of unknown type %u", m->type);
	if ((why = check_fields(m, ti)) != NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "keeper message '%s': %s", types[ti].name, why);
	for (tag = 1; tag <= ESC_KP_T_MAX; tag++)
		if (m->f[tag].p != NULL)
			total += 5 + m->f[tag].len;
	if (total > ESC_KP_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "keeper message '%s' of %zu bytes is too long", types[ti].name,
				 total);
	buf = secure ? OPENSSL_secure_malloc(4 + total) : OPENSSL_malloc(4 + total);
	if (buf == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	esc_kp_put32(buf, (uint32_t)total);
	buf[4] = ESC_KP_VERSION;
	buf[5] = m->type;
	esc_kp_put32(buf + 6, m->seq);
	off = 4 + ESC_KP_HEADER;
	for (tag = 1; tag <= ESC_KP_T_MAX; tag++) {
		if (m->f[tag].p == NULL)
			continue;
		buf[off] = (unsigned char)tag;
		esc_kp_put32(buf + off + 1, (uint32_t)m->f[tag].len);
		if (m->f[tag].len > 0)
			memcpy(buf + off + 5, m->f[tag].p, m->f[tag].len);
		off += 5 + m->f[tag].len;
	}
	*out = buf;
	*outlen = 4 + total;
	return ESC_OK;
}

void
esc_kp_free(unsigned char *buf, size_t len, int secure)
{
	if (buf == NULL)
		return;
	if (secure)
		OPENSSL_secure_clear_free(buf, len);
	else
		OPENSSL_clear_free(buf, len);
}

enum esc_err
esc_kp_next_seq(struct esc_ctx *ctx, uint32_t *last, uint32_t seq)
{
	if (seq == 0 || seq != *last + 1)
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "keeper message number %u where %u was due: replayed or reordered", seq, *last + 1);
	*last = seq;
	return ESC_OK;
}
