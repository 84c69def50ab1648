/*
 * p11escrow — certificate building and signing with a token key.
 *
 * The signer is an EVP_PKEY whose private operations run on the token
 * (esc_token_key_private); nothing here ever sees private key bytes.
 */
#ifndef P11ESCROW_CA_H
#define P11ESCROW_CA_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

#define ESC_FINGERPRINT_MAX 128

/*
 * Parse a distinguished name: "CN=Example CA,O=Org" or "/CN=Example CA/O=Org".
 * Errors: USAGE (names the bad component).
 */
enum esc_err esc_name_parse(struct esc_ctx *ctx, const char *text, X509_NAME **out) ESC_MUST_CHECK;

/* One-line RFC 2253 form of a name; caller frees. */
char *esc_name_to_string(const X509_NAME *name);

/* "SHA256:AB:CD:..." fingerprint of a certificate's DER. */
void esc_cert_fingerprint(X509 *cert, char out[ESC_FINGERPRINT_MAX]);

/* Lower-case hex of a certificate's serial; caller frees. */
char *esc_cert_serial_hex(const X509 *cert);

/*
 * Self-signed CA certificate for subject, valid days from now; signed by
 * signer, whose public half is pub.  The signature is verified with pub
 * before return.  Errors: USAGE, CRYPTO.
 */
enum esc_err esc_ca_self_sign(struct esc_ctx *ctx, EVP_PKEY *signer, EVP_PKEY *pub, const char *subject, int days,
			      X509 **out) ESC_MUST_CHECK;

/* PKCS#10 request for an external CA, signed by signer.  Errors: USAGE, CRYPTO. */
enum esc_err esc_ca_make_csr(struct esc_ctx *ctx, EVP_PKEY *signer, EVP_PKEY *pub, const char *subject,
			     X509_REQ **out) ESC_MUST_CHECK;

enum esc_cert_profile {
	ESC_PROFILE_ENCRYPTION, /* transport and storage keys: keyEncipherment (RSA) or keyAgreement (EC) */
	ESC_PROFILE_KRA,	/* Key Recovery Agent: as above plus EKU 1.3.6.1.4.1.311.21.6 */
	ESC_PROFILE_AUDIT,	/* audit checkpoints: digitalSignature only */
};

/*
 * Issue a certificate for pub under ca_cert, signed by signer; like every
 * certificate issued under ca_cert here, it carries the CRL distribution
 * point and caIssuers URL of ctx's publication settings when set
 * (esc_ctx_set_publication).  Errors: USAGE, CRYPTO.
 */
enum esc_err esc_ca_issue(struct esc_ctx *ctx, X509 *ca_cert, EVP_PKEY *signer, EVP_PKEY *pub, const X509_NAME *subject,
			  int days, enum esc_cert_profile profile, X509 **out) ESC_MUST_CHECK;

/* What an end-entity certificate carries besides the CA's own choices. */
struct esc_ee_spec {
	const X509_NAME *subject;  /* non-empty */
	EVP_PKEY *pub;		   /* the certified public key */
	const GENERAL_NAMES *san;  /* subjectAltName entries; NULL or empty: no extension */
	const char *key_usage;	   /* keyUsage in OpenSSL's configuration syntax, e.g. "critical,keyAgreement" */
	const char *ext_key_usage; /* extendedKeyUsage, e.g. "emailProtection,clientAuth"; NULL: none */
	int days;		   /* validity from now (1..36500), capped at the CA certificate's notAfter */
};

/*
 * Issue an end-entity certificate for spec under ca_cert, signed by signer
 * (the CA key on its token): a random 159-bit serial, basicConstraints
 * CA:FALSE, keyUsage and extendedKeyUsage as given, subjectAltName,
 * subject and authority key identifiers, the CRL distribution point and
 * caIssuers of ctx's publication settings when set; notBefore 5 minutes back.  The
 * signature is verified with ca_cert's public key before return, so a
 * signer that is not ca_cert's key never yields a certificate.  Extensions
 * a request asked for are never copied: the caller decides every one.
 * Errors: USAGE (empty subject, validity, bad usage text), STATE (the CA
 * certificate has expired), PKCS11 (the token did not sign), MISMATCH,
 * CRYPTO.
 */
enum esc_err esc_ca_issue_ee(struct esc_ctx *ctx, X509 *ca_cert, EVP_PKEY *signer, const struct esc_ee_spec *spec,
			     X509 **out) ESC_MUST_CHECK;

#define ESC_OID_KRA_EKU "1.3.6.1.4.1.311.21.6"

/* Did ca issue cert: ca's subject and key identifiers match cert's issuer, and cert's signature verifies with ca's key? */
int esc_cert_issued_by(X509 *cert, X509 *ca);

/* Is cert's public key the same as pub? */
int esc_cert_matches_key(X509 *cert, EVP_PKEY *pub);

#endif
