/*
 * p11escrow — CMS AuthEnvelopedData (RFC 5083, AES-256-GCM) envelopes.
 *
 * The archive record's two layers are such envelopes: stock
 * `openssl cms -decrypt` opens them with the right key.  RSA recipients use
 * RSA-OAEP (key transport), EC recipients ECDH (key agreement, RFC 5753).
 * Plaintext going in is the caller's; plaintext coming out lives in OpenSSL's
 * secure heap and is wiped when freed with esc_envelope_plain_free().
 */
#ifndef P11ESCROW_ENVELOPE_H
#define P11ESCROW_ENVELOPE_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

/* Largest envelope and plaintext we accept: bounds every parse. */
#define ESC_ENVELOPE_MAX (256 * 1024)

/* Hash for RSA-OAEP and its MGF1 — or, for cards that decrypt nothing else, no OAEP at all. */
enum esc_oaep_hash {
	ESC_OAEP_SHA1, /* what tokens such as SoftHSM2 2.6 do natively */
	ESC_OAEP_SHA256,
	/*
	 * Not OAEP: PKCS#1 v1.5 key transport (rsaEncryption, CMS's default),
	 * for KRA cards that decrypt only that, where policy
	 * kra_allow_rsa_pkcs1v15 accepts them.  Weaker: a card that answers
	 * padding errors differently is a Bleichenbacher oracle.
	 */
	ESC_RSA_PKCS1V15,
};

/* The recipient form's name: "rsa-oaep-sha1", "rsa-oaep-sha256", "rsa-pkcs1v15". */
const char *esc_oaep_hash_name(enum esc_oaep_hash h);
/* The form a KRA's recipient column names ("rsa-oaep-sha256", "rsa-pkcs1v15", else SHA-1; ecdh ignores it). */
enum esc_oaep_hash esc_oaep_hash_of_recipient(const char *recipient);

/*
 * Seal in[0..inlen) to every certificate in recips (RSA: OAEP with
 * hashes[i], or SHA-1 for all if hashes is NULL, or PKCS#1 v1.5 where
 * hashes[i] says so; EC: ECDH).  *out is DER,
 * malloc'ed; the caller frees it with free().
 * Errors: USAGE (no recipient, unsupported key, too large), CRYPTO.
 */
enum esc_err esc_envelope_seal(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *const *recips,
			       const enum esc_oaep_hash *hashes, size_t nrecips, unsigned char **out,
			       size_t *outlen) ESC_MUST_CHECK;

/*
 * Seal in[0..inlen) to the public key pub, which has no certificate yet
 * (RSA: OAEP with hash; EC: ECDH).  The recipient is named by its subject
 * key identifier, the SHA-1 of the public key (RFC 5280 4.2.1.2 method 1).
 * *out as esc_envelope_seal.  Errors: as esc_envelope_seal.
 */
enum esc_err esc_envelope_seal_to_key(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, EVP_PKEY *pub,
				      enum esc_oaep_hash hash, unsigned char **out, size_t *outlen) ESC_MUST_CHECK;

/*
 * Open a DER envelope with key (software or token-backed) for the
 * recipient certificate cert.  *out is in secure memory: free it with
 * esc_envelope_plain_free().  Errors: BAD_INPUT (not an AuthEnvelopedData,
 * too large, a key agreement wrapping with other than AES key wrap without
 * padding), NOT_RECIPIENT (cert is not among the recipients),
 * TAMPERED (the recipient's key worked but the GCM tag did not verify),
 * CRYPTO (the key could not decrypt its recipient info).
 */
enum esc_err esc_envelope_open(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, EVP_PKEY *key, X509 *cert,
			       unsigned char **out, size_t *outlen) ESC_MUST_CHECK;

/*
 * Open an envelope of esc_envelope_seal_to_key with key, the private half
 * of pub (software or token-backed).  As esc_envelope_open: *out in secure
 * memory (esc_envelope_plain_free), the same errors.
 */
enum esc_err esc_envelope_open_with_key(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, EVP_PKEY *key,
					EVP_PKEY *pub, unsigned char **out, size_t *outlen) ESC_MUST_CHECK;

/* Is cert one of the envelope's recipients?  Errors: BAD_INPUT. */
enum esc_err esc_envelope_has_recipient(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *cert,
					int *yes) ESC_MUST_CHECK;

/*
 * Is the envelope addressed to exactly certs[0..n): each of them a
 * recipient, and no recipient that is none of them (a key transport
 * recipient or each key agreement's encrypted key counts once)?  For a
 * service that relays ciphertext it cannot open and must check whom it is
 * for.  Errors: BAD_INPUT (not an envelope).
 */
enum esc_err esc_envelope_addressed_exactly(struct esc_ctx *ctx, const unsigned char *in, size_t inlen,
					    X509 *const *certs, size_t n, int *yes) ESC_MUST_CHECK;

/*
 * The envelope in[0..inlen) with every recipient but cert removed (and, in
 * a key agreement, every other recipient's encrypted key), so that no
 * other key can open it.  The content and its GCM tag are unchanged: the
 * recipient infos are not authenticated (RFC 5083).  *out is DER,
 * malloc'ed (free()).  Errors: BAD_INPUT (not an envelope, or addressed to
 * cert more than once), NOT_RECIPIENT (not addressed to cert), CRYPTO, NOMEM.
 */
enum esc_err esc_envelope_keep_recipient(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *cert,
					 unsigned char **out, size_t *outlen) ESC_MUST_CHECK;

/*
 * Seal in[0..inlen) under the symmetric key kek (32 bytes, AES-256 key
 * wrap) named keyid (1..64 bytes): a CMS AuthEnvelopedData (AES-256-GCM)
 * with one KEKRecipientInfo, which `openssl cms -decrypt -secretkey HEX
 * -secretkeyid HEX` opens.  *out is DER, malloc'ed (free()).
 * Errors: USAGE (sizes), CRYPTO.
 */
enum esc_err esc_envelope_seal_kek(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, const unsigned char *kek,
				   const unsigned char *keyid, size_t keyidlen, unsigned char **out,
				   size_t *outlen) ESC_MUST_CHECK;

/*
 * Open an envelope of esc_envelope_seal_kek with kek (32 bytes) for keyid.
 * *out in secure memory (esc_envelope_plain_free).  Errors: BAD_INPUT (not
 * an AuthEnvelopedData with exactly one KEKRecipientInfo wrapping with
 * id-aes256-wrap), NOT_RECIPIENT (another key id), TAMPERED (the key does
 * not unwrap the content key, or the GCM tag does not verify: a wrong KEK
 * or altered content).
 */
enum esc_err esc_envelope_open_kek(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, const unsigned char *kek,
				   const unsigned char *keyid, size_t keyidlen, unsigned char **out,
				   size_t *outlen) ESC_MUST_CHECK;

/* Wipe and free plaintext from esc_envelope_open(); accepts NULL. */
void esc_envelope_plain_free(unsigned char *p, size_t len);

#endif
