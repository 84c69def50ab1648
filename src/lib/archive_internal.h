/* Internal to the library: the archive record's sealed content, for archive.c and its fuzz target. */
#ifndef P11ESCROW_ARCHIVE_INTERNAL_H
#define P11ESCROW_ARCHIVE_INTERNAL_H

#include <stddef.h>

#include <p11escrow/archive.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

/* The source's name as records and audit events spell it: "import", "enroll-client", "enroll-server". */
const char *esc_archive_source_name(enum esc_archive_source s);

/*
 * Check the content of a record's outer layer (DER EscrowRecord, decrypted
 * with the storage key) against the row it was read from — version 1, the
 * row's id, the row's certificate hash (64 lower-case hex digits) — and
 * copy out the inner layer (the CMS envelope to the KRAs) into *inner
 * (malloc'd; the caller frees it).  Anyone holding the storage certificate
 * can seal content, so this is outside input.  Errors: TAMPERED (not one
 * DER EscrowRecord, another row's or another certificate's), NOMEM.
 */
enum esc_err esc_record_parse(struct esc_ctx *ctx, const unsigned char *content, size_t contentlen, const char *id,
			      const char *cert_hash, unsigned char **inner, size_t *innerlen) ESC_MUST_CHECK;

#endif
