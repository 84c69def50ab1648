/*
 * p11escrow — revocation and CRLs.
 */
#ifndef P11ESCROW_REVOKE_H
#define P11ESCROW_REVOKE_H

#include <openssl/x509.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

/*
 * Revoke the archived or issued certificate with this serial (hex) for
 * reason (unspecified, keyCompromise, affiliationChanged, superseded,
 * cessationOfOperation).  Certificates of this CA go on its CRL; a foreign
 * one is marked revoked here only (its own CA must publish it).  actor must
 * be an administrator or certificate manager.  Audited.
 * Errors: DENIED, USAGE, NOT_FOUND, EXISTS (already revoked), DB.
 */
enum esc_err esc_cert_revoke(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			     const char *serial, const char *reason) ESC_MUST_CHECK;

/*
 * Is the certificate of archive record id revoked?  Errors: NOT_FOUND, DB.
 */
enum esc_err esc_cert_record_revoked(struct esc_ctx *ctx, struct esc_store *st, const char *record_id,
				     int *yes) ESC_MUST_CHECK;

/*
 * One current CRL for the whole service (docs/operator-guide.md,
 * "Revocation and CRLs"): every CRL the CA signs is stored in the
 * database, and the one with the highest number is the current CRL that
 * every worker of every p11escrowd serves.  Numbers only grow, across
 * workers, daemons and restarts: a new CRL is made under a database lock
 * and its number is above every stored one.
 */

/*
 * Sign now (CA key on ca_tok, logged in) a CRL of every revoked
 * certificate of this CA, valid for days, with the next number, and store
 * it as the current CRL; audited (cert.crl ok, as the CA token holder).
 * Caller frees *out.  Errors: USAGE (days not 1..366), STATE (no active
 * CA), PKCS11, CRYPTO, DB.
 */
enum esc_err esc_crl_build(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, int days,
			   X509_CRL **out) ESC_MUST_CHECK;
/* The validity in days of a CRL made on request without one given: ctx's crl_validity, in whole days, 1..366. */
int esc_crl_default_days(const struct esc_ctx *ctx);

/*
 * esc_crl_build on behalf of account actor (the service's API): only an
 * administrator or a certificate manager may ask (DENIED, audited as
 * cert.crl refused); audited as actor.  Errors: DENIED, and esc_crl_build's.
 */
enum esc_err esc_crl_build_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			      struct esc_token *ca_tok, int days, X509_CRL **out) ESC_MUST_CHECK;

/*
 * The current CRL, a new one made first (as esc_crl_build, valid ctx's
 * crl_validity, audited as the service) only when none is stored, a
 * revocation of this CA came after the current one was built, or it is
 * past crl_refresh percent of its validity; if another process made one
 * meanwhile, that one.  What a client's GET /crl may cause: at most one
 * signature per revocation and per refresh period, whoever asks.  Caller
 * frees *out.  Errors: those of esc_crl_build.
 */
enum esc_err esc_crl_refresh(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
			     X509_CRL **out) ESC_MUST_CHECK;

/*
 * The current CRL as stored (no token needed): its number and whether a
 * new one is due (see esc_crl_refresh), and its DER into *der (malloc'ed,
 * the caller frees) unless its number is have, when *der is NULL (the
 * caller's copy is current).  One indexed query: cheap enough for every
 * GET /crl.  Errors: NOT_FOUND (none made yet), DB, NOMEM.
 */
enum esc_err esc_crl_current(struct esc_ctx *ctx, struct esc_store *st, long long have, unsigned char **der,
			     size_t *len, long long *number, int *due) ESC_MUST_CHECK;

#endif
