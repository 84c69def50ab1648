/*
 * p11escrow — enrollment: certificate profiles, the keeper (the one holder
 * of a logged-in CA token session), one-time enrollment passwords, and
 * issuance that commits the certificate and its archive record together.
 */
#ifndef P11ESCROW_ENROLL_H
#define P11ESCROW_ENROLL_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/archive.h>
#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

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
	const char *name;      /* also the EST label: /.well-known/est/<name>/... */
	const char *summary;   /* one line for help and docs */
	int archival;          /* the key must be archived: /simpleenroll refused, /fullcmc and /serverkeygen only */
	int signing;           /* a signing profile: never archived, /serverkeygen and /fullcmc refused */
	unsigned keys;         /* allowed enrollee key types (ESC_EKEY_*) */
	unsigned keygen;       /* the one type /serverkeygen generates (0: none) */
	int days;              /* validity (capped at the CA's notAfter) */
	int enrollable;        /* reachable through EST (tls-server is not) */
};

/* The default EST profile (no label): "encryption". */
#define ESC_PROFILE_DEFAULT "encryption"

/* The profile named name (NULL or "" = the default), or NULL if unknown. */
const struct esc_profile *esc_profile_find(const char *name);
/* The i-th built-in profile, NULL past the end. */
const struct esc_profile *esc_profile_at(size_t i);
/* The ESC_EKEY_* type of pub, or 0 if no profile could allow it. */
unsigned esc_enroll_key_type(EVP_PKEY *pub);

/*
 * Does profile p allow a certificate for public key pub?  Errors: POLICY
 * (names the key type found and those allowed).
 */
enum esc_err esc_profile_check_key(struct esc_ctx *ctx, const struct esc_profile *p, EVP_PKEY *pub) ESC_MUST_CHECK;

/* Generate the profile's /serverkeygen key in software.  Errors: POLICY (profile has none), CRYPTO. */
enum esc_err esc_profile_generate_key(struct esc_ctx *ctx, const struct esc_profile *p, EVP_PKEY **out)
	ESC_MUST_CHECK;

/* ---- The keeper: the CA token session of one thread ----------------------- */

struct esc_keeper;

/*
 * Open the CA token recorded at setup through module (NULL/"": the build
 * default; never a module the recorded URI names: such a URI is refused,
 * and the module must pass ctx's module allow-list), log in
 * with pin, and load what issuance needs: the CA certificate (and any chain
 * above it), the CA signing key and the transport key and certificate.
 * Several keepers may be open in one process (one per worker thread): the
 * module is loaded once and the login is shared, as PKCS#11 has it.
 * Errors: STATE (no active CA), those of esc_token_open/login, DB.
 */
enum esc_err esc_keeper_open(struct esc_ctx *ctx, struct esc_store *st, const char *module,
			     const struct esc_secret *pin, struct esc_keeper **out) ESC_MUST_CHECK;
void esc_keeper_free(struct esc_keeper *k);

X509 *esc_keeper_ca_cert(const struct esc_keeper *k);
/* Certificates above the CA certificate (external CA), possibly empty; owned by k. */
STACK_OF(X509) *esc_keeper_chain(const struct esc_keeper *k);
X509 *esc_keeper_transport_cert(const struct esc_keeper *k);
/* The logged-in CA token (for recovery release, audit checkpoints, CRLs). */
struct esc_token *esc_keeper_token(struct esc_keeper *k);

/*
 * Decrypt a client's archival envelope (DER ContentInfo: CMS EnvelopedData
 * or AuthEnvelopedData) with the transport key on the token, and decode the
 * PKCS#8 inside.  The plaintext is wiped.  Errors: BAD_INPUT (not an
 * envelope, not a private key), NOT_RECIPIENT (not sealed to the transport
 * certificate), TAMPERED, PKCS11.
 */
enum esc_err esc_keeper_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env,
				       size_t envlen, EVP_PKEY **key) ESC_MUST_CHECK;

/*
 * A key this CA generated, for its enrollee, encrypted to recipient as RFC
 * 7030 §4.4.2 has it (esc_est_key_package_seal): signed with the CA key on
 * the token.  The keeper signs only what that means: key must be the key
 * of cert, and cert a certificate this CA issued; recipient must be able
 * to receive keys (esc_est_key_recipient_check).  *der is malloc'ed.
 * Errors: USAGE (key and cert do not go together, cert not issued here),
 * BAD_INPUT (recipient), CRYPTO, PKCS11.
 */
enum esc_err esc_keeper_seal_server_key(struct esc_ctx *ctx, struct esc_keeper *k, EVP_PKEY *key, X509 *cert,
					X509 *recipient, unsigned char **der, size_t *derlen) ESC_MUST_CHECK;

/* ---- Issuance ----------------------------------------------------------- */

struct esc_enroll_request {
	const struct esc_profile *profile;
	const char *actor;            /* audit actor, e.g. "est:otp:alice-7f3a" or "est:cert:<serial>" */
	const X509_NAME *subject;     /* subject of the certificate to issue */
	EVP_PKEY *pub;                /* the enrollee's public key (from its verified CSR) */
	EVP_PKEY *key;                /* the private key to archive: required iff profile->archival, else NULL */
	enum esc_archive_source source;
	const char *otp_name;         /* one-time password consumed in the same transaction, or NULL */
};

/*
 * Issue a certificate under req->profile, signed on the CA token.  Checks
 * the key type against the profile; refuses archival profiles without a key
 * (POLICY: "profile 'encryption' requires key archival: use /fullcmc or
 * /serverkeygen") and signing profiles with one.  In ONE database
 * transaction: consume the one-time password (AUTH if already used),
 * store the certificate, archive the key (esc_archive_key, all its checks),
 * audit; the certificate is returned only after that transaction commits,
 * so an interruption at any point leaves both rows or neither.
 * Policy one_key_per_subject, for archival profiles, in that transaction:
 * 'refuse' fails with POLICY ("subject already has a valid archived
 * encryption key (serial ...)") before the token is touched if the subject
 * has an unexpired, unrevoked certificate of this profile whose key is
 * archived; 'supersede' revokes each such certificate (reason superseded,
 * on the CRL; a cert.revoke event each).  Enrollments of one subject and
 * profile wait for each other then, so two at once cannot both pass.
 *
 * Fault hook for tests: when the environment variable
 * P11ESCROW_FAULT_KILL names a point — "after-sign", "after-cert-row",
 * "after-archive", "after-commit" — the process SIGKILLs itself there.
 *
 * Errors: POLICY, AUTH, EXISTS, STATE, MISMATCH, PKCS11, DB, DB_CONNECT.
 */
enum esc_err esc_enroll_issue(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k,
			      const struct esc_enroll_request *req, X509 **cert, struct esc_archive_info *info)
	ESC_MUST_CHECK;

/*
 * Check a TLS client certificate presented to the service (already verified
 * against the CA by the TLS layer): it must be one this CA issued, recorded
 * in the database, currently valid and not revoked.
 * Errors: AUTH (names why, e.g. "certificate 1a2b is revoked"), DB.
 */
enum esc_err esc_enroll_check_client_cert(struct esc_ctx *ctx, struct esc_store *st, X509 *cert) ESC_MUST_CHECK;

/* ---- One-time enrollment passwords --------------------------------------- */

struct esc_otp_grant {
	char name[65];
	char subject[512];       /* RFC 2253 */
	char profile[32];
};

/*
 * Create a one-time enrollment password for subject under profile (NULL:
 * default), valid for hours.  actor must be an administrator or a
 * certificate manager.  *name is the HTTP Basic user name, *password the
 * secret (shown once; only its Argon2id hash is stored).
 * Errors: DENIED, USAGE (bad subject, profile, hours), DB.
 */
enum esc_err esc_otp_create(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			    const char *subject, const char *profile, int hours, char **name,
			    struct esc_secret **password) ESC_MUST_CHECK;

/*
 * Check name/password.  Unknown, wrong, used and expired all fail the same
 * way (AUTH) and are audited.  Does not consume it: esc_enroll_issue does.
 * Errors: AUTH, DB.
 */
enum esc_err esc_otp_check(struct esc_ctx *ctx, struct esc_store *st, const char *name,
			   const struct esc_secret *password, struct esc_otp_grant *grant) ESC_MUST_CHECK;

struct esc_otp_info {
	char name[65];
	char subject[512];       /* RFC 2253 */
	char profile[32];
	char created_by[65];     /* account name */
	char created[32];        /* "YYYY-MM-DD HH:MM:SSZ" (UTC) */
	char expires[32];
	char used[32];           /* "" while unused */
	char state[12];          /* "unused", "used" or "expired" */
};

/*
 * One-time enrollment passwords, newest first (at most 1000), or only the
 * one called name (non-NULL).  Never a password or hash.  actor must be an
 * administrator, certificate manager or auditor.  *out is malloc'ed (the
 * caller frees it), *n its length.  Errors: DENIED, DB.
 */
enum esc_err esc_otp_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			  const char *name, struct esc_otp_info **out, size_t *n) ESC_MUST_CHECK;

/* ---- The service's own TLS certificate -------------------------------------- */

/*
 * Generate an EC P-256 key in software and issue a TLS server certificate
 * for it (subjectAltName: each of names, DNS names or IP addresses) under
 * the CA on k's token; store and audit it.  Errors: USAGE (no or bad names),
 * PKCS11, DB.
 */
enum esc_err esc_enroll_server_cert(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k,
				    const char *const *names, size_t nnames, EVP_PKEY **key, X509 **cert)
	ESC_MUST_CHECK;

/*
 * The same on behalf of an account (the CLI's service-cert), which must be
 * an administrator (DENIED otherwise) and is named in the audit trail.
 * actor NULL is esc_enroll_server_cert: the holder of the logged-in CA
 * token ("ca-token"), as the service issuing its own certificate.
 * Errors: DENIED, and those above.
 */
enum esc_err esc_enroll_server_cert_as(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k,
				       const struct esc_account *actor, const char *const *names, size_t nnames,
				       EVP_PKEY **key, X509 **cert) ESC_MUST_CHECK;

#endif
