/*
 * p11escrow — reading keys and certificates for manual archival.
 *
 * Accepted inputs: PKCS#12 (DER), or PEM holding one private key (PKCS#8,
 * encrypted PKCS#8, or the traditional RSA/EC forms, possibly encrypted)
 * and its certificate — in one file, or as a key file and a certificate
 * file.  Inputs are bounded (ESC_IMPORT_MAX bytes).  This module only
 * parses: every policy check (key matches certificate, no signing-only
 * keys, issuer, duplicates, KRA set) is esc_archive_key's.
 */
#ifndef P11ESCROW_IMPORT_H
#define P11ESCROW_IMPORT_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>

#define ESC_IMPORT_MAX (1024 * 1024) /* largest input accepted, in bytes */

/* The bytes of one input file, in locked memory excluded from core dumps. */
struct esc_import_file;

/*
 * Read the whole regular file path (at most ESC_IMPORT_MAX bytes) into
 * memory that is locked where the limits allow and never written to a core
 * dump: an unencrypted PEM file holds a private key.  Free with
 * esc_import_file_free, which wipes it.
 * Errors: IO (cannot open or read; not a regular file), BAD_INPUT (too
 * large, empty), NOMEM.
 */
enum esc_err esc_import_file_read(struct esc_ctx *ctx, const char *path, struct esc_import_file **out) ESC_MUST_CHECK;
const unsigned char *esc_import_file_data(const struct esc_import_file *f);
size_t esc_import_file_len(const struct esc_import_file *f);
/* Wipe and free; accepts NULL. */
void esc_import_file_free(struct esc_import_file *f);

/*
 * Parse buf (len bytes) as PKCS#12 or PEM and return the private key and
 * its certificate.  name is used in messages only (e.g. the file name).
 * password decrypts PKCS#12 or an encrypted PEM key; it may be NULL, in
 * which case a PKCS#12 protected with the empty password still opens and
 * anything else that needs a password fails with PIN_MISSING, so a caller
 * can ask for the password only when an input needs one.
 *
 * PKCS#12: the first private key and the certificate matching it (a single
 * certificate that does not match is returned as is, for esc_archive_key to
 * refuse).  PEM: exactly one private key; of several certificates, the one
 * matching the key, else the first.
 *
 * On success *key and *cert are new references the caller frees; on failure
 * they are untouched.  buf is only read.
 * Errors: BAD_INPUT (neither PKCS#12 nor PEM, corrupt or damaged PKCS#12,
 * no key, no certificate, several keys, too large), AUTH (wrong password),
 * PIN_MISSING (a password is needed and none was given), MISMATCH (a
 * PKCS#12 with several certificates none of which matches its key), NOMEM.
 */
enum esc_err esc_import_load(struct esc_ctx *ctx, const unsigned char *buf, size_t len, const char *name,
			     const struct esc_secret *password, EVP_PKEY **key, X509 **cert) ESC_MUST_CHECK;

/*
 * As esc_import_load for a PEM key file and a separate certificate file
 * (PEM or DER).  The key must come from key_buf, the certificate from
 * cert_buf.  Errors: as esc_import_load.
 */
enum esc_err esc_import_load_pair(struct esc_ctx *ctx, const unsigned char *key_buf, size_t key_len,
				  const char *key_name, const unsigned char *cert_buf, size_t cert_len,
				  const char *cert_name, const struct esc_secret *password, EVP_PKEY **key,
				  X509 **cert) ESC_MUST_CHECK;

#endif
