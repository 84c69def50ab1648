/*
 * Error codes, their names and the process exit codes they map to.
 */
#include <p11escrow/err.h>

#include "internal.h"

struct err_row {
	enum esc_err code;
	int exit_code;
	const char *name;
};

/*
 * Exit codes are part of the CLI's interface (documented in p11escrow(1)):
 * never renumber, only append.
 */
static const struct err_row rows[] = {
	{ESC_OK, 0, "success"},
	{ESC_ERR_NOMEM, 70, "out of memory"},
	{ESC_ERR_INTERNAL, 70, "internal error"},
	{ESC_ERR_USAGE, 2, "usage error"},
	{ESC_ERR_CONFIG, 3, "configuration error"},
	{ESC_ERR_IO, 4, "file error"},
	{ESC_ERR_PIN_MISSING, 10, "no PIN available"},
	{ESC_ERR_PIN_INCORRECT, 11, "PIN incorrect"},
	{ESC_ERR_PIN_LOCKED, 12, "PIN locked"},
	{ESC_ERR_TOKEN_NOT_FOUND, 13, "token not found"},
	{ESC_ERR_KEY_NOT_FOUND, 14, "key not found"},
	{ESC_ERR_AMBIGUOUS, 15, "ambiguous PKCS#11 URI"},
	{ESC_ERR_MECHANISM, 16, "mechanism not supported by token"},
	{ESC_ERR_PKCS11, 17, "PKCS#11 error"},
	{ESC_ERR_MODULE, 18, "PKCS#11 module cannot be loaded"},
	{ESC_ERR_URI, 19, "malformed PKCS#11 URI"},
	{ESC_ERR_DB_CONNECT, 20, "database unreachable"},
	{ESC_ERR_DB, 21, "database error"},
	{ESC_ERR_SCHEMA_NEWER, 22, "database schema newer than this program"},
	{ESC_ERR_SCHEMA_OLD, 23, "database schema not migrated"},
	{ESC_ERR_BUSY, 24, "database busy: try again"},
	{ESC_ERR_CRYPTO, 30, "cryptographic operation failed"},
	{ESC_ERR_BAD_INPUT, 31, "malformed input"},
	{ESC_ERR_MISMATCH, 32, "key does not match certificate"},
	{ESC_ERR_TAMPERED, 33, "integrity check failed: data was altered"},
	{ESC_ERR_NOT_RECIPIENT, 34, "not a recipient"},
	{ESC_ERR_CARDS_NEEDED, 35, "other KRA cards needed"},
	{ESC_ERR_ROLLED_BACK, 36, "database rolled back: older than a signed audit checkpoint"},
	{ESC_ERR_EXISTS, 40, "already exists"},
	{ESC_ERR_STATE, 41, "invalid state"},
	{ESC_ERR_NOT_FOUND, 42, "not found"},
	{ESC_ERR_POLICY, 43, "refused by policy"},
	{ESC_ERR_ARCHIVED, 44, "already archived"},
	{ESC_ERR_AUTH, 50, "authentication failed"},
	{ESC_ERR_DENIED, 51, "permission denied"},
	{ESC_ERR_PASSWORD_CHANGE, 52, "password change required"},
};

static const struct err_row *
find_row(enum esc_err err)
{
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(rows); i++)
		if (rows[i].code == err)
			return &rows[i];
	return NULL;
}

const char *
esc_strerror(enum esc_err err)
{
	const struct err_row *row = find_row(err);

	return row != NULL ? row->name : "unknown error";
}

int
esc_err_exit_code(enum esc_err err)
{
	const struct err_row *row = find_row(err);

	return row != NULL ? row->exit_code : 1;
}

int
esc_err_at(size_t i, enum esc_err *out)
{
	if (i >= ESC_ARRAY_LEN(rows))
		return 0;
	*out = rows[i].code;
	return 1;
}
