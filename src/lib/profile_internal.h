/* The profile table's entries as the library's modules need them (profile.c). */
#ifndef P11ESCROW_PROFILE_INTERNAL_H
#define P11ESCROW_PROFILE_INTERNAL_H

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

#endif
