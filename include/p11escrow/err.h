/*
 * p11escrow — one error type for the whole library.
 *
 * Every fallible library function returns enum esc_err.  ESC_OK is zero,
 * every failure is negative.  A human-readable sentence with the detail
 * (the CK_RV name, OpenSSL's reason, libpq's message) is kept in the
 * struct esc_ctx that was passed to the failing call: see esc_ctx_errmsg().
 */
#ifndef P11ESCROW_ERR_H
#define P11ESCROW_ERR_H

#include <stddef.h>

#define ESC_MUST_CHECK __attribute__((warn_unused_result))

enum esc_err {
	ESC_OK = 0,
	ESC_ERR_NOMEM = -1,	       /* out of memory */
	ESC_ERR_INTERNAL = -2,	       /* a bug: an invariant did not hold */
	ESC_ERR_USAGE = -3,	       /* bad argument or option value */
	ESC_ERR_CONFIG = -4,	       /* configuration file or value invalid */
	ESC_ERR_IO = -5,	       /* reading or writing a file failed */
	ESC_ERR_PIN_MISSING = -10,     /* no PIN source available */
	ESC_ERR_PIN_INCORRECT = -11,   /* CKR_PIN_INCORRECT */
	ESC_ERR_PIN_LOCKED = -12,      /* CKR_PIN_LOCKED */
	ESC_ERR_TOKEN_NOT_FOUND = -13, /* no token matches the URI */
	ESC_ERR_KEY_NOT_FOUND = -14,   /* no key matches the URI */
	ESC_ERR_AMBIGUOUS = -15,       /* URI matches more than one token/key */
	ESC_ERR_MECHANISM = -16,       /* token lacks a needed mechanism */
	ESC_ERR_PKCS11 = -17,	       /* other PKCS#11 failure */
	ESC_ERR_MODULE = -18,	       /* PKCS#11 module cannot be loaded */
	ESC_ERR_URI = -19,	       /* malformed PKCS#11 URI */
	ESC_ERR_DB_CONNECT = -20,      /* database unreachable */
	ESC_ERR_DB = -21,	       /* database statement failed */
	ESC_ERR_SCHEMA_NEWER = -22,    /* database schema newer than binary */
	ESC_ERR_SCHEMA_OLD = -23,      /* schema not migrated */
	ESC_ERR_BUSY = -24,	       /* a transaction kept losing races with concurrent ones */
	ESC_ERR_CRYPTO = -30,	       /* OpenSSL operation failed */
	ESC_ERR_BAD_INPUT = -31,       /* malformed certificate/CSR/key input */
	ESC_ERR_MISMATCH = -32,	       /* key does not match certificate */
	ESC_ERR_TAMPERED = -33,	       /* authenticated encryption failed: data altered */
	ESC_ERR_NOT_RECIPIENT = -34,   /* this key is not a recipient of the envelope */
	ESC_ERR_CARDS_NEEDED = -35,    /* the KRA cards given cannot open it: others are needed */
	ESC_ERR_ROLLED_BACK = -36,     /* the database is older than a signed audit checkpoint kept outside it */
	ESC_ERR_EXISTS = -40,	       /* object already exists */
	ESC_ERR_STATE = -41,	       /* operation not valid in this state */
	ESC_ERR_NOT_FOUND = -42,       /* no such object (serial, record, request, account) */
	ESC_ERR_POLICY = -43,	       /* refused by policy (signing key, foreign issuer, ...) */
	ESC_ERR_ARCHIVED = -44,	       /* this certificate or key is archived already */
	ESC_ERR_AUTH = -50,	       /* authentication failed */
	ESC_ERR_DENIED = -51,	       /* not permitted for this account or role (dual control) */
	ESC_ERR_PASSWORD_CHANGE = -52, /* the account must change its password (an administrator set it) first */
};

/* Stable short name of an error code, e.g. "token not found". Never NULL. */
const char *esc_strerror(enum esc_err err);

/*
 * Process exit code documented for each error (see p11escrow(1), EXIT
 * STATUS).  Distinct per error class so scripts can react precisely.
 */
int esc_err_exit_code(enum esc_err err);

/*
 * The i-th code of the library's table, ESC_OK first, in the order of
 * their exit codes (NOMEM and INTERNAL, which share 70, right after
 * ESC_OK); 1 and *out set, or 0 past the end.  For listing every code
 * (the CLI's EXIT STATUS table) without a copy of the table.
 */
int esc_err_at(size_t i, enum esc_err *out);

#endif
