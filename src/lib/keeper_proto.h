/*
 * p11escrow — the keeper protocol: typed, length-prefixed messages between
 * p11escrowd's network-facing workers and the keeper process that alone
 * holds the CA token (docs/architecture.md, "Process model").
 *
 * One message:
 *
 *     uint32 length      bytes that follow this field (big-endian), at most ESC_KP_MAX
 *     uint8  version     ESC_KP_VERSION
 *     uint8  type        enum esc_kp_type
 *     uint32 seq         the request's number; a reply carries its request's
 *     fields             tag (uint8), len (uint32), len bytes; each tag at most once
 *
 * The keeper decides on meaning, not bytes: every type has a table of the
 * fields it may carry, which of them it must carry and how long each may
 * be.  esc_kp_decode refuses anything else (an unknown type or tag, a
 * missing, repeated or oversized field, trailing bytes) before any field
 * is looked at; the caller then checks what the fields mean.  Requests are
 * numbered from 1 on each connection and must arrive in order
 * (esc_kp_next_seq): a replayed or reordered message is refused.
 *
 * Library-internal: the daemon and its tests use it; nothing is installed.
 */
#ifndef P11ESCROW_KEEPER_PROTO_H
#define P11ESCROW_KEEPER_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

#define ESC_KP_VERSION 1
/* The largest message after its length field: an envelope (256 KiB) and its framing fit. */
#define ESC_KP_MAX (320 * 1024)
#define ESC_KP_HEADER 6 /* version, type, seq */

enum esc_kp_type {
	/* Requests, worker to keeper. */
	ESC_KP_HELLO = 1,	   /* the CA's public certificates (no fields) */
	ESC_KP_ISSUE = 2,	   /* sign a certificate the keeper builds from a profile */
	ESC_KP_OPEN_TRANSPORT = 3, /* open an archival envelope to the transport certificate */
	ESC_KP_RELEASE = 4,	   /* release an approved recovery request */
	ESC_KP_SIGN_CRL = 5,	   /* sign the CRL the keeper builds from the database */
	ESC_KP_CHECKPOINT = 6,	   /* sign an audit checkpoint if one is due, or for an account */
	ESC_KP_SEAL_KEY = 7,	   /* a generated key to its enrollee, signed by the CA (RFC 7030 §4.4.2) */
	ESC_KP_KRA_PROVE = 8,	   /* certify a KRA key whose possession a challenge's answer proves */
	ESC_KP_RESEAL = 9,	   /* re-seal a batch of archive records to the current storage key */
	ESC_KP_STATUS = 10,	   /* is the token's session logged in? (no fields; the reply has none either) */
	ESC_KP_REWRAP_OPEN = 11,   /* open a record's outer layer for a KRA re-wrap: its inner layer, still sealed */
	/* Replies, keeper to worker: the request's type with this bit, or ERROR. */
	ESC_KP_REPLY = 0x80,
	ESC_KP_ERROR = 0xff,
};

enum esc_kp_tag {
	ESC_KP_T_PROFILE = 1,	 /* text: a profile name */
	ESC_KP_T_SUBJECT = 2,	 /* DER X509_NAME */
	ESC_KP_T_SAN = 3,	 /* DER GeneralNames */
	ESC_KP_T_SPKI = 4,	 /* DER SubjectPublicKeyInfo */
	ESC_KP_T_DAYS = 5,	 /* uint32 */
	ESC_KP_T_CERT = 6,	 /* DER certificate */
	ESC_KP_T_ENVELOPE = 7,	 /* DER CMS ContentInfo */
	ESC_KP_T_PKCS8 = 8,	 /* DER PKCS#8: a private key (secret) */
	ESC_KP_T_ID = 9,	 /* uint64: a recovery request id */
	ESC_KP_T_CRL = 10,	 /* DER CRL */
	ESC_KP_T_EVENTS = 11,	 /* uint32: events since the last checkpoint that make one due */
	ESC_KP_T_SECONDS = 12,	 /* uint32: age of the newest checkpoint that makes one due */
	ESC_KP_T_FINAL = 13,	 /* uint32 0/1: a last checkpoint at shutdown */
	ESC_KP_T_EVENT_ID = 14,	 /* uint64: the event a checkpoint signed (0: none due) */
	ESC_KP_T_CA = 15,	 /* DER certificate: the CA's */
	ESC_KP_T_CHAIN = 16,	 /* DER certificates above the CA's, concatenated (may be empty) */
	ESC_KP_T_TRANSPORT = 17, /* DER certificate: the transport certificate */
	ESC_KP_T_CODE = 18,	 /* int32: an enum esc_err */
	ESC_KP_T_MESSAGE = 19,	 /* text: the error's message (never a secret) */
	ESC_KP_T_RECIPIENT = 20, /* DER certificate: whom a sealed key is encrypted to */
	ESC_KP_T_ACCOUNT = 21,	 /* text: an account's name, re-read by the keeper */
	ESC_KP_T_NAME = 22,	 /* text: a KRA's name */
	ESC_KP_T_SECRET = 23,	 /* bytes: a challenge's answer (secret) */
	ESC_KP_T_RECORD = 24,	 /* text: an archive record id (a UUID, 36 characters) */
	ESC_KP_T_COUNT = 25,	 /* uint32: how many records */
	ESC_KP_T_SKIPS = 26,	 /* text: records left as they were, one a line: id TAB code TAB reason */
	ESC_KP_T_TALLY = 27,	 /* 5 x uint32 (resealed, skipped, to, from low, from high), uint64 remaining */
	ESC_KP_T_DIGEST = 28,	 /* 32 bytes: SHA-256 of a stored record (a re-wrap's concurrency token) */
	ESC_KP_T_MAX = 28,
};

struct esc_kp_field {
	const unsigned char *p; /* into the decoded buffer; NULL if absent */
	size_t len;
};

struct esc_kp_msg {
	uint8_t type;
	uint32_t seq;
	struct esc_kp_field f[ESC_KP_T_MAX + 1]; /* by tag */
};

/*
 * Decode buf[0..len) (a message without its length field) into *m, whose
 * fields then point into buf.  Errors: BAD_INPUT, with a message naming
 * what is wrong (never a field's bytes).
 */
enum esc_err esc_kp_decode(struct esc_ctx *ctx, const unsigned char *buf, size_t len,
			   struct esc_kp_msg *m) ESC_MUST_CHECK;

/*
 * Encode *m as one message, length field included, into a buffer of
 * *outlen bytes from OPENSSL_secure_malloc when secure (a message holding
 * a private key), else OPENSSL_malloc; free it with esc_kp_free(out,
 * outlen, secure).  Fields are written in tag order.  The same tables as
 * esc_kp_decode apply: a message it would refuse is not encoded.
 * Errors: USAGE (not a valid message), NOMEM.
 */
enum esc_err esc_kp_encode(struct esc_ctx *ctx, const struct esc_kp_msg *m, int secure, unsigned char **out,
			   size_t *outlen) ESC_MUST_CHECK;
void esc_kp_free(unsigned char *buf, size_t len, int secure);

/* Start a message of type and seq with no fields. */
void esc_kp_init(struct esc_kp_msg *m, uint8_t type, uint32_t seq);
/* Set field tag to p[0..len) (not copied: p must outlive the encoding). */
void esc_kp_set(struct esc_kp_msg *m, enum esc_kp_tag tag, const void *p, size_t len);

/* Numbers travel big-endian in fields of exactly 4 or 8 bytes; these read them (0 if the field is absent). */
void esc_kp_put32(unsigned char out[4], uint32_t v);
void esc_kp_put64(unsigned char out[8], uint64_t v);
uint32_t esc_kp_get32(const struct esc_kp_msg *m, enum esc_kp_tag tag);
uint64_t esc_kp_get64(const struct esc_kp_msg *m, enum esc_kp_tag tag);

/*
 * The length a message's first 4 bytes announce, or 0 if it is out of
 * bounds (shorter than a header, longer than ESC_KP_MAX): a reader stops
 * at once instead of allocating.
 */
size_t esc_kp_frame_length(const unsigned char hdr[4]);

/*
 * Is seq the next request of a connection whose last one was *last?  Yes:
 * *last becomes seq.  No (replayed, reordered, skipped): BAD_INPUT.
 */
enum esc_err esc_kp_next_seq(struct esc_ctx *ctx, uint32_t *last, uint32_t seq) ESC_MUST_CHECK;

/*
 * Does a message of type carry a private key (OPEN_TRANSPORT's reply,
 * SEAL_KEY)?  A reader that sees such a type in the header allocates the
 * frame with OPENSSL_secure_malloc, and an encoder passes secure = 1.
 */
int esc_kp_type_secret(uint8_t type);

/* The name of a message type, for logs ("issue", "issue reply", "error"); "unknown" otherwise. */
const char *esc_kp_type_name(uint8_t type);

#endif
