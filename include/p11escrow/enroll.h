/*
 * p11escrow — enrollment: one-time enrollment passwords, client
 * certificate checks, the service's TLS certificate, and issuance that
 * commits the certificate and its archive record together.  Profiles are
 * profile.h's; the signature is the keeper's (keeper.h).
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
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/profile.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

/* ---- Issuance ----------------------------------------------------------- */

struct esc_enroll_request {
	const struct esc_profile *profile;
	const char *actor;	  /* audit actor, e.g. "est:otp:alice-7f3a" or "est:cert:<serial>" */
	const X509_NAME *subject; /* subject of the certificate to issue */
	EVP_PKEY *pub;		  /* the enrollee's public key (from its verified CSR) */
	EVP_PKEY *key;		  /* the private key to archive: required iff profile->archival, else NULL */
	enum esc_archive_source source;
	const char *otp_name; /* one-time password consumed in the same transaction, or NULL */
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
			      const struct esc_enroll_request *req, X509 **cert,
			      struct esc_archive_info *info) ESC_MUST_CHECK;

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
	char subject[512]; /* RFC 2253 */
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
	char subject[512]; /* RFC 2253 */
	char profile[32];
	char created_by[65]; /* account name */
	char created[32];    /* "YYYY-MM-DD HH:MM:SSZ" (UTC) */
	char expires[32];
	char used[32];	/* "" while unused */
	char state[12]; /* "unused", "used" or "expired" */
};

/*
 * One-time enrollment passwords, newest first (at most 1000), or only the
 * one called name (non-NULL).  Never a password or hash.  actor must be an
 * administrator, certificate manager or auditor.  *out is malloc'ed (the
 * caller frees it), *n its length.  Errors: DENIED, DB.
 */
enum esc_err esc_otp_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
			  struct esc_otp_info **out, size_t *n) ESC_MUST_CHECK;

/* ---- The service's own TLS certificate -------------------------------------- */

/*
 * Generate an EC P-256 key in software and issue a TLS server certificate
 * for it (subjectAltName: each of names, DNS names or IP addresses) under
 * the CA on k's token; store and audit it.  Errors: USAGE (no or bad names),
 * PKCS11, DB.
 */
enum esc_err esc_enroll_server_cert(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k,
				    const char *const *names, size_t nnames, EVP_PKEY **key,
				    X509 **cert) ESC_MUST_CHECK;

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
