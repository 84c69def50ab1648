/*
 * p11escrow — EST (RFC 7030, RFC 8951) and CMC (RFC 5272) message codecs.
 *
 * Pure encoding and decoding: no database, no token.  Every decoder takes
 * outside input, bounds it (ESC_EST_BODY_MAX) and fails with
 * ESC_ERR_BAD_INPUT and a short reason that never quotes the input.
 *
 * Full PKI Request for archival (/fullcmc), as p11escrow builds and accepts it:
 *
 *   ContentInfo { signedData, SignedData {
 *       eContentType id-cct-PKIData (1.3.6.1.5.5.7.12.2),
 *       eContent PKIData {
 *           controlSequence  {}                       -- any; ignored
 *           reqSequence      { tcr [0] { bodyPartID, PKCS#10 } }   -- exactly one
 *           cmsSequence      { { bodyPartID, ContentInfo EnvelopedData
 *                                or AuthEnvelopedData to the CA transport
 *                                certificate, holding the private key as
 *                                PKCS#8 } }                           -- exactly one
 *           otherMsgSequence {} } } }                  -- any; ignored
 *
 * Signer infos of the outer SignedData, if any, are not relied upon: the
 * PKCS#10 signature proves possession of the key, the decrypted key is
 * checked against it, and the enrollee is authenticated by TLS or HTTP.
 */
#ifndef P11ESCROW_EST_H
#define P11ESCROW_EST_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>

/* Largest request body the service reads and any decoder accepts. */
#define ESC_EST_BODY_MAX (64 * 1024)

/*
 * Decode base64 as RFC 8951 has it: whitespace (space, tab, CR, LF) anywhere
 * is skipped; any other character outside the alphabet, bad padding or a
 * length over ESC_EST_BODY_MAX is BAD_INPUT.  *out is malloc'ed.
 */
enum esc_err esc_b64_decode(struct esc_ctx *ctx, const char *in, size_t inlen, unsigned char **out,
			    size_t *outlen) ESC_MUST_CHECK;

/* The same with another bound on the decoded length (e.g. base64 in the service's JSON answers). */
enum esc_err esc_b64_decode_max(struct esc_ctx *ctx, const char *in, size_t inlen, size_t max, unsigned char **out,
				size_t *outlen) ESC_MUST_CHECK;

/*
 * esc_b64_decode_max for a secret (a private key): the copy of the text it
 * makes and *out are in the secure heap; free *out with
 * OPENSSL_secure_clear_free(*out, *outlen).
 */
enum esc_err esc_b64_decode_secure(struct esc_ctx *ctx, const char *in, size_t inlen, size_t max, unsigned char **out,
				   size_t *outlen) ESC_MUST_CHECK;

/* Base64 with CRLF every 64 characters and a final CRLF; malloc'ed, NUL-terminated.  Errors: NOMEM. */
enum esc_err esc_b64_encode(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, char **out,
			    size_t *outlen) ESC_MUST_CHECK;

/*
 * Decode a DER PKCS#10 request and verify its self-signature.
 * Errors: BAD_INPUT ("not a PKCS#10 request", trailing data),
 * CRYPTO ("the request's signature does not verify").
 */
enum esc_err esc_csr_decode(struct esc_ctx *ctx, const unsigned char *der, size_t len, X509_REQ **out) ESC_MUST_CHECK;

/*
 * The RFC 7030 §4.4.1.2 AsymmetricDecryptKeyIdentifier attribute of a
 * serverkeygen request, if any: *kid (malloc'ed) and *kidlen, or *kid =
 * NULL when absent.  Errors: BAD_INPUT (present but malformed).
 */
enum esc_err esc_csr_asymmetric_kid(struct esc_ctx *ctx, X509_REQ *req, unsigned char **kid,
				    size_t *kidlen) ESC_MUST_CHECK;

/*
 * Build a Full PKI Request (see above) carrying csr and key, the key sealed
 * as PKCS#8 in a CMS EnvelopedData (AES-256-CBC) to transport_cert.  For
 * clients (the CLI, tests, the benchmark).  *der is malloc'ed.
 * Errors: USAGE (key does not match csr), CRYPTO.
 */
enum esc_err esc_cmc_request_build(struct esc_ctx *ctx, X509_REQ *csr, EVP_PKEY *key, X509 *transport_cert,
				   unsigned char **der, size_t *derlen) ESC_MUST_CHECK;

/*
 * Decode a Full PKI Request: its one PKCS#10 (signature verified, as
 * esc_csr_decode) and the DER ContentInfo of its one CMS envelope (not yet
 * decrypted; *env malloc'ed).  Errors: BAD_INPUT (not a SignedData of
 * PKIData, no or several requests/envelopes, CRMF requests), CRYPTO (CSR
 * signature).
 */
enum esc_err esc_cmc_request_parse(struct esc_ctx *ctx, const unsigned char *der, size_t len, X509_REQ **csr,
				   unsigned char **env, size_t *envlen) ESC_MUST_CHECK;

/*
 * A certs-only (degenerate) CMS SignedData holding certs in order: the EST
 * /cacerts and /simpleenroll response and the CMC Simple PKI Response.
 * *der is malloc'ed.  Errors: CRYPTO.
 */
enum esc_err esc_certs_only_build(struct esc_ctx *ctx, X509 *const *certs, size_t ncerts, unsigned char **der,
				  size_t *derlen) ESC_MUST_CHECK;

/*
 * Decode a certs-only SignedData (client side: the CLI, tests).  *out is a
 * new stack the caller frees with sk_X509_pop_free(, X509_free).
 * Errors: BAD_INPUT.
 */
enum esc_err esc_certs_only_parse(struct esc_ctx *ctx, const unsigned char *der, size_t len,
				  STACK_OF(X509) **out) ESC_MUST_CHECK;

/*
 * The RFC 7030 §4.4.1.1 DecryptKeyIdentifier attribute (the key asked for
 * encrypted with a symmetric key shared with the server): *yes = 1 if the
 * request carries one, in any form.  p11escrow has no such keys, so the
 * service refuses these requests rather than return the key unencrypted.
 * Errors: USAGE.
 */
enum esc_err esc_csr_wants_symmetric(struct esc_ctx *ctx, X509_REQ *req, int *yes) ESC_MUST_CHECK;

/*
 * May a server-generated key be encrypted to cert (RFC 7030 §4.4.2)?  Its
 * key usage must allow it: keyEncipherment for an RSA key (key transport),
 * keyAgreement for an EC key; a certificate without the keyUsage extension
 * allows both.  Other key types cannot receive keys.
 * Errors: BAD_INPUT ("the TLS client certificate cannot receive encrypted
 * keys: ...", naming what is missing).
 */
enum esc_err esc_est_key_recipient_check(struct esc_ctx *ctx, X509 *cert) ESC_MUST_CHECK;

/*
 * A server-generated key as RFC 7030 §4.4.2 returns it when the request
 * asked for it encrypted to an asymmetric key: the key as an
 * AsymmetricKeyPackage (RFC 5958: SEQUENCE OF OneAsymmetricKey, here one
 * PKCS#8 PrivateKeyInfo) in a CMS SignedData of content type
 * id-ct-KP-aKeyPackage (2.16.840.1.101.2.1.2.78.5), signed by signer_key
 * (its certificate signer_cert and chain, may be NULL, included), in a CMS
 * EnvelopedData (AES-256-CBC) to recipient: RSA-OAEP with SHA-256 (ktri)
 * for an RSA certificate, ECDH (kari) for an EC one.  Checks recipient with
 * esc_est_key_recipient_check first.  The plaintext copies are made in
 * secure memory and wiped.  *der is malloc'ed.
 * Errors: BAD_INPUT (recipient), USAGE, CRYPTO (signing, also on a token).
 */
enum esc_err esc_est_key_package_seal(struct esc_ctx *ctx, X509 *signer_cert, STACK_OF(X509) *chain,
				      EVP_PKEY *signer_key, EVP_PKEY *key, X509 *recipient, unsigned char **der,
				      size_t *derlen) ESC_MUST_CHECK;

/*
 * What a CsrAttrs (RFC 7030 §4.5.2, as RFC 9908 clarifies it) lists: the
 * OIDs (dotted text, e.g. "1.2.840.10045.4.3.2"), then one attribute
 * id-ecPublicKey with a value per allowed curve ("prime256v1", "P-384") if
 * there are curves, then one attribute rsaEncryption with an INTEGER per
 * allowed modulus size in bits if there are sizes.
 */
struct esc_csrattrs {
	const char *const *oids;
	size_t noids;
	const char *const *curves;
	size_t ncurves;
	const int *rsa_bits;
	size_t nrsa;
};

/* CsrAttrs DER for spec; *der is malloc'ed.  Errors: USAGE (bad OID, curve or size), CRYPTO. */
enum esc_err esc_csrattrs_build(struct esc_ctx *ctx, const struct esc_csrattrs *spec, unsigned char **der,
				size_t *derlen) ESC_MUST_CHECK;

struct esc_profile;

/*
 * The CsrAttrs of a certificate profile: what its requests may carry — a
 * signature algorithm per key family it accepts (ecdsa-with-SHA256,
 * sha256WithRSAEncryption), its curves and its RSA sizes (enroll.h's
 * profile keys).  *der is malloc'ed.  Errors: USAGE, CRYPTO.
 */
enum esc_err esc_csrattrs_for_profile(struct esc_ctx *ctx, const struct esc_profile *p, unsigned char **der,
				      size_t *derlen) ESC_MUST_CHECK;

/* ---- Client side: p11escrow est, the benchmark ---------------------------- */

/* Largest answer a client parses (a /serverkeygen answer: key and certificate, base64, in parts). */
#define ESC_EST_REPLY_MAX (256 * 1024)

/*
 * A PKCS#10 request for key with subject (NULL: an empty one), signed with
 * key: SHA-384 for an EC P-384 key, SHA-256 otherwise (what the profiles'
 * CsrAttrs name).  Errors: USAGE, NOMEM, CRYPTO.
 */
enum esc_err esc_est_csr_build(struct esc_ctx *ctx, EVP_PKEY *key, const X509_NAME *subject,
			       X509_REQ **out) ESC_MUST_CHECK;

/*
 * A base64 certs-only answer (/cacerts, /simpleenroll, /fullcmc's Simple
 * PKI Response): esc_b64_decode, then esc_certs_only_parse.  Errors:
 * BAD_INPUT.
 */
enum esc_err esc_est_certs_decode(struct esc_ctx *ctx, const char *b64, size_t len,
				  STACK_OF(X509) **out) ESC_MUST_CHECK;

/*
 * The answer of /serverkeygen (RFC 7030 §4.4.2) to a request that did not
 * ask for the key encrypted: ctype its Content-Type (multipart/mixed with a
 * boundary), body at most ESC_EST_REPLY_MAX bytes.  *key is the private key
 * of its application/pkcs8 part (base64 and DER decoded in the secure
 * heap), *certs the certificates of its certs-only part (sk_X509_pop_free).
 * Parts of other types are ignored; one key part and one certificate part,
 * base64 (or no Content-Transfer-Encoding), are required.  Errors:
 * BAD_INPUT (not multipart, malformed, a part missing or twice, the key
 * encrypted (server-generated-key), not base64, not PKCS#8, not
 * certs-only), USAGE.
 */
enum esc_err esc_est_serverkeygen_parse(struct esc_ctx *ctx, const char *ctype, const unsigned char *body, size_t len,
					EVP_PKEY **key, STACK_OF(X509) **certs) ESC_MUST_CHECK;

/*
 * Check a certificate the server issued against cacerts (as /cacerts
 * answers them, the CA certificate first): it verifies, valid now, with
 * those certificates as trust anchors, is issued by the first of them
 * (esc_cert_issued_by), and, if key is given, certifies that key.
 * Errors: BAD_INPUT (does not verify: OpenSSL's reason; another issuer),
 * MISMATCH (another key), USAGE.
 */
enum esc_err esc_est_cert_check(struct esc_ctx *ctx, X509 *cert, STACK_OF(X509) *cacerts, EVP_PKEY *key) ESC_MUST_CHECK;

/*
 * May a client encrypt its key to transport, the CA's transport certificate
 * (/transportcert)?  Checked as esc_est_cert_check (issued by the CA of
 * cacerts, valid now), not a CA certificate, and a key usage for receiving
 * keys: keyEncipherment for an RSA key, keyAgreement for an EC key (the
 * extension is required).  Errors: BAD_INPUT naming what fails, USAGE.
 */
enum esc_err esc_est_transport_check(struct esc_ctx *ctx, X509 *transport, STACK_OF(X509) *cacerts) ESC_MUST_CHECK;

/* PBKDF2 (HMAC-SHA-256) iterations of the key files below, as for a recovered key's PKCS#12. */
#define ESC_EST_KDF_ITER 600000

/*
 * key as an encrypted PKCS#8 PEM ("ENCRYPTED PRIVATE KEY": PBES2,
 * AES-256-CBC, PBKDF2 with HMAC-SHA-256, ESC_EST_KDF_ITER) under
 * password, which `openssl pkey` opens.  *pem is malloc'ed and
 * NUL-terminated.  Errors: USAGE (empty password), CRYPTO.
 */
enum esc_err esc_est_key_pem(struct esc_ctx *ctx, EVP_PKEY *key, const struct esc_secret *password, char **pem,
			     size_t *len) ESC_MUST_CHECK;

/*
 * key with cert and chain (may be NULL; the CA certificates) as a PKCS#12
 * under password: AES-256-CBC with PBKDF2, a SHA-256 MAC, ESC_EST_KDF_ITER
 * each; name its friendly name (may be NULL).  *der is malloc'ed.
 * Errors: USAGE (empty password, key not cert's), CRYPTO.
 */
enum esc_err esc_est_key_p12(struct esc_ctx *ctx, EVP_PKEY *key, X509 *cert, STACK_OF(X509) *chain, const char *name,
			     const struct esc_secret *password, unsigned char **der, size_t *len) ESC_MUST_CHECK;

#endif
