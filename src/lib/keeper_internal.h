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

#endif
