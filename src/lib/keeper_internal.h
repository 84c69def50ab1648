/* The keeper's operations that only the library's own modules call. */
#ifndef P11ESCROW_KEEPER_INTERNAL_H
#define P11ESCROW_KEEPER_INTERNAL_H

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/keeper.h>

#include "profile_internal.h"

/*
 * The keeper's sign_certificate: a certificate of profile def for pub with
 * subject and san, its key usages, extended key usages and validity from
 * the profile table (never from a request), signed with the CA key on the
 * token.  Errors: POLICY (the profile does not allow pub), CRYPTO, PKCS11.
 */
enum esc_err esc_keeper_issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct profile_def *def,
			      const X509_NAME *subject, EVP_PKEY *pub, const GENERAL_NAMES *san,
			      X509 **out) ESC_MUST_CHECK;

/*
 * A local keeper over keys the caller already holds, without a token: the
 * CA certificate and the chain above it (may be NULL), the CA signing key,
 * the transport key and its certificate (each referenced, not copied).  It
 * builds, signs, opens and seals exactly as a keeper on the CA token does
 * (issue, open_transport, seal_server_key, esc_keeper_serve); what needs
 * the token itself (release, CRL, KRA certificate, checkpoint) it answers
 * TOKEN_NOT_FOUND.  It gives its holder nothing the keys did not: the unit
 * tests use it.  Errors: INTERNAL (a NULL argument), NOMEM.
 */
enum esc_err esc_keeper_from_keys(struct esc_ctx *ctx, X509 *ca_cert, STACK_OF(X509) *chain, EVP_PKEY *signer,
				  EVP_PKEY *transport, X509 *transport_cert, struct esc_keeper **out) ESC_MUST_CHECK;

#endif
