/* The profile table's entries as the library's modules need them (profile.c). */
#ifndef P11ESCROW_PROFILE_INTERNAL_H
#define P11ESCROW_PROFILE_INTERNAL_H

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/profile.h>

struct profile_def {
	struct esc_profile p; /* first: esc_profile_at() hands out &def->p */
	const char *ku_rsa;   /* keyUsage for RSA keys */
	const char *ku_ec;    /* ... for EC keys */
	const char *eku;      /* extendedKeyUsage */
	int email_san;	      /* copy the subject's emailAddress into subjectAltName (S/MIME) */
};

/*
 * The table entry for p: the caller's pointer, or a profile of the same
 * name — whose rules are then the table's, never the caller's copy.  NULL
 * if there is none.
 */
const struct profile_def *esc_profile_def(const struct esc_profile *p);

/*
 * The alternative names a profile with email_san derives from subject: its
 * emailAddress attributes as rfc822Names (possibly none).  The keeper
 * process derives them again rather than signing a worker's list.
 * *out is the caller's.  Errors: POLICY (not a plain mail address), NOMEM.
 */
enum esc_err esc_profile_email_sans(struct esc_ctx *ctx, const X509_NAME *subject, GENERAL_NAMES **out) ESC_MUST_CHECK;

/*
 * Append a name of type (GEN_EMAIL, GEN_DNS: IA5String; GEN_IPADD: 4 or 16
 * octets) to gens, copying data.  1, or 0 when out of memory.
 */
int esc_profile_add_name(GENERAL_NAMES *gens, int type, const unsigned char *data, int len);

/*
 * The end-entity certificate the keeper builds for pub under profile def
 * (esc_ca_issue_ee): subject and san as given (the caller derives san:
 * esc_profile_email_sans), keyUsage by the key's type (ku_ec for EC, else
 * ku_rsa), the profile's extendedKeyUsage and validity.  Nothing comes from
 * a request.  spec points into def, subject, pub and san.  Errors: POLICY
 * (the profile does not allow pub), USAGE (no key).
 */
enum esc_err esc_profile_ee_spec(struct esc_ctx *ctx, const struct profile_def *def, const X509_NAME *subject,
				 EVP_PKEY *pub, const GENERAL_NAMES *san, struct esc_ee_spec *spec) ESC_MUST_CHECK;

#endif
