/*
 * p11escrow — certificate profiles: the built-in table of what each kind of
 * certificate may be (key types, usages, validity, whether its key is
 * archived).  The EST label selects one; the keeper builds every
 * certificate it signs from one (keeper.h), never from what a request asks.
 */
#ifndef P11ESCROW_PROFILE_H
#define P11ESCROW_PROFILE_H

#include <stddef.h>

#include <openssl/evp.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

/* ---- Profiles (built in; the EST label selects one) ---------------------- */

/* Key types a profile may allow (bit set). */
enum esc_enroll_key {
	ESC_EKEY_RSA2048 = 1 << 0,
	ESC_EKEY_RSA3072 = 1 << 1,
	ESC_EKEY_RSA4096 = 1 << 2,
	ESC_EKEY_EC_P256 = 1 << 3,
	ESC_EKEY_EC_P384 = 1 << 4,
};

struct esc_profile {
	const char *name;    /* also the EST label: /.well-known/est/<name>/... */
	const char *summary; /* one line for help and docs */
	int archival;	     /* the key must be archived: /simpleenroll refused, /fullcmc and /serverkeygen only */
	int signing;	     /* a signing profile: never archived, /serverkeygen and /fullcmc refused */
	unsigned keys;	     /* allowed enrollee key types (ESC_EKEY_*) */
	unsigned keygen;     /* the one type /serverkeygen generates (0: none) */
	int days;	     /* validity (capped at the CA's notAfter) */
	int enrollable;	     /* reachable through EST (tls-server is not) */
};

/* The default EST profile (no label): "encryption". */
#define ESC_PROFILE_DEFAULT "encryption"

/* The profile named name (NULL or "" = the default), or NULL if unknown. */
const struct esc_profile *esc_profile_find(const char *name);
/* The i-th built-in profile, NULL past the end. */
const struct esc_profile *esc_profile_at(size_t i);
/* The ESC_EKEY_* type of pub, or 0 if no profile could allow it. */
unsigned esc_enroll_key_type(EVP_PKEY *pub);

/* The ESC_EKEY_* type named "rsa2048", "rsa3072", "rsa4096", "ec-p256" or "ec-p384", 0 if none. */
unsigned esc_enroll_key_parse(const char *name);
/* The name of an ESC_EKEY_* type, NULL if none. */
const char *esc_enroll_key_name(unsigned type);
/* Generate a software key of ESC_EKEY_* type (an enrollee's own).  Errors: USAGE (no such type), CRYPTO. */
enum esc_err esc_enroll_key_generate(struct esc_ctx *ctx, unsigned type, EVP_PKEY **out) ESC_MUST_CHECK;

/*
 * Does profile p allow a certificate for public key pub?  Errors: POLICY
 * (names the key type found and those allowed).
 */
enum esc_err esc_profile_check_key(struct esc_ctx *ctx, const struct esc_profile *p, EVP_PKEY *pub) ESC_MUST_CHECK;

/* Generate the profile's /serverkeygen key in software.  Errors: POLICY (profile has none), CRYPTO. */
enum esc_err esc_profile_generate_key(struct esc_ctx *ctx, const struct esc_profile *p, EVP_PKEY **out) ESC_MUST_CHECK;

#endif
