/*
 * p11escrow — secrets in locked memory: PINs and passwords.
 *
 * A struct esc_secret holds bytes in OpenSSL's secure heap (mlock'ed,
 * excluded from core dumps) once esc_secmem_init() has run, and is wiped
 * with OPENSSL_cleanse when freed.  Secrets come from a file, an environment
 * variable or an interactive prompt — never from argv or a PKCS#11 URI.
 */
#ifndef P11ESCROW_PIN_H
#define P11ESCROW_PIN_H

#include <stddef.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

#define ESC_SECRET_MAX 256

struct esc_secret;

/*
 * Set up the process-wide secure heap.  Call once at start of main(), before
 * threads.  Returns ESC_ERR_NOMEM if there is no secure heap, and also if
 * OpenSSL made one it could not lock in memory (mlock failed, e.g.
 * RLIMIT_MEMLOCK too low: secrets could then be swapped out): the caller
 * decides whether to go on.
 */
enum esc_err esc_secmem_init(void) ESC_MUST_CHECK;

/*
 * Overwrite the value of environment variable var in place, then remove it,
 * so neither getenv() nor /proc/PID/environ shows the secret it held any
 * more.  Call before any thread starts.  Nothing happens if it is unset.
 */
void esc_env_wipe(const char *var);

/*
 * Read a secret from a file: one line, trailing newline stripped, at most
 * ESC_SECRET_MAX-1 bytes.  The file must not be readable or writable by
 * others.  Errors: IO, PIN_MISSING (empty file), USAGE (permissions, size).
 */
enum esc_err esc_secret_from_file(struct esc_ctx *ctx, const char *path, struct esc_secret **out) ESC_MUST_CHECK;

/* Copy a secret from an environment variable.  Errors: PIN_MISSING (unset or empty). */
enum esc_err esc_secret_from_env(struct esc_ctx *ctx, const char *var, struct esc_secret **out) ESC_MUST_CHECK;

/*
 * Prompt on the controlling terminal with echo off.  Errors: PIN_MISSING
 * (no terminal), IO.
 */
enum esc_err esc_secret_prompt(struct esc_ctx *ctx, const char *prompt, struct esc_secret **out) ESC_MUST_CHECK;

/*
 * The usual order: file (if path non-NULL and non-empty), then the
 * environment variable (if set), then a prompt if a terminal is attached.
 * Errors: PIN_MISSING naming every source that was tried, or those above.
 */
enum esc_err esc_secret_obtain(struct esc_ctx *ctx, const char *path, const char *env_var, const char *prompt,
			       struct esc_secret **out) ESC_MUST_CHECK;

/* Copy len bytes into a new secret.  Errors: NOMEM, USAGE (too long). */
enum esc_err esc_secret_new(struct esc_ctx *ctx, const void *data, size_t len, struct esc_secret **out) ESC_MUST_CHECK;

/* NUL-terminated bytes of the secret (owned by it). */
const char *esc_secret_str(const struct esc_secret *s);
size_t esc_secret_len(const struct esc_secret *s);
/* Wipe and free; accepts NULL. */
void esc_secret_free(struct esc_secret *s);

#endif
