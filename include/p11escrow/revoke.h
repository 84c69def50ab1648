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
 * Build and sign (CA key on ca_tok, logged in) a CRL of every revoked
 * certificate of this CA, valid for days, with the next CRL number.
 * Caller frees.  Errors: STATE (no active CA), PKCS11, CRYPTO, DB.
 */
enum esc_err esc_crl_build(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, int days,
			   X509_CRL **out) ESC_MUST_CHECK;
/*
 * esc_crl_build on behalf of account actor (the service's API): only an
 * administrator or a certificate manager may ask (DENIED, audited as
 * cert.crl refused).  Errors: DENIED, and esc_crl_build's.
 */
enum esc_err esc_crl_build_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			      struct esc_token *ca_tok, int days, X509_CRL **out) ESC_MUST_CHECK;

#endif
