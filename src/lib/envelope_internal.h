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

#endif
