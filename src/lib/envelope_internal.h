/* Internal CMS helpers of envelope.c for other library modules.  Not installed. */
#ifndef P11ESCROW_ENVELOPE_INTERNAL_H
#define P11ESCROW_ENVELOPE_INTERNAL_H

#include <openssl/cms.h>
#include <openssl/x509.h>

/*
 * Is cert among the key-transport or key-agreement recipients of the
 * enveloped (or auth-enveloped) cms?  1 or 0; borrows both, never fails.
 */
int esc_envelope_cms_addressed_to(CMS_ContentInfo *cms, X509 *cert);

/*
 * Does every key-agreement recipient of cms wrap its key with AES key wrap
 * without padding (id-aes128-wrap, id-aes192-wrap, id-aes256-wrap, the only
 * ones OpenSSL and we seal with)?  1 or 0; borrows cms, never fails.  Checked
 * before any decryption: OpenSSL 3.0 before 3.0.22 writes 8 zero bytes past a
 * heap buffer when an AES-wrap-with-padding key does not unwrap
 * (CRYPTO_128_unwrap_pad, CVE-2026-63072), which any altered envelope does.
 */
int esc_envelope_cms_kari_wrap_ok(CMS_ContentInfo *cms);

#endif
