/*
 * p11escrow — configuration: file (key = value) plus environment overrides.
 *
 * Format: one `key = value` per line; `#` starts a comment line; blank lines
 * ignored; a value may be wrapped in double quotes (then it may contain `#`
 * and leading/trailing blanks).  Unknown keys, duplicate keys, lines longer
 * than ESC_CONFIG_LINE_MAX and files larger than ESC_CONFIG_FILE_MAX are
 * errors that name the file and line.  Values are validated when set.
 *
 * Environment: P11ESCROW_<KEY> (key upper-cased) overrides the file, e.g.
 * P11ESCROW_DATABASE overrides `database`.  No secret is ever a config value:
 * PINs come from files, the environment (P11ESCROW_CA_PIN) or a prompt.
 */
#ifndef P11ESCROW_CONFIG_H
#define P11ESCROW_CONFIG_H

#include <stddef.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

#define ESC_CONFIG_LINE_MAX 4096
#define ESC_CONFIG_FILE_MAX (64 * 1024)
#define ESC_CONFIG_DEFAULT_PATH "/etc/p11escrow/p11escrowd.conf"

struct esc_config;

/* A new configuration holding every key's default.  Errors: NOMEM. */
enum esc_err esc_config_new(struct esc_ctx *ctx, struct esc_config **out) ESC_MUST_CHECK;
void esc_config_free(struct esc_config *cfg);

/*
 * Parse a file into cfg (keys it sets replace defaults).  On error cfg is
 * unchanged.  Errors: IO (cannot read; message names path and errno text),
 * CONFIG (syntax, unknown key, bad value: message names path:line).
 */
enum esc_err esc_config_load_file(struct esc_ctx *ctx, struct esc_config *cfg, const char *path) ESC_MUST_CHECK;

/* Same from memory; origin names the source in messages. */
enum esc_err esc_config_load_buffer(struct esc_ctx *ctx, struct esc_config *cfg, const char *buf, size_t len,
				    const char *origin) ESC_MUST_CHECK;

/* Apply P11ESCROW_<KEY> environment overrides.  Errors: CONFIG (bad value). */
enum esc_err esc_config_apply_env(struct esc_ctx *ctx, struct esc_config *cfg) ESC_MUST_CHECK;

/* Set one key after validating its value.  Errors: CONFIG (unknown key, bad value). */
enum esc_err esc_config_set(struct esc_ctx *ctx, struct esc_config *cfg, const char *key,
			    const char *value) ESC_MUST_CHECK;

/* The value of key (default if never set), or NULL for an unknown key.  Owned by cfg. */
const char *esc_config_get(const struct esc_config *cfg, const char *key);
/* The value of an integer key; 0 for an unknown or non-integer key. */
long esc_config_get_long(const struct esc_config *cfg, const char *key);

/*
 * Set ctx's publication settings (esc_ctx_set_publication) from cfg's
 * crl_url, ca_issuer_url, crl_validity and crl_refresh.  Errors: CONFIG.
 */
enum esc_err esc_config_set_publication(struct esc_ctx *ctx, const struct esc_config *cfg) ESC_MUST_CHECK;

/* Iterate known keys: returns the i-th key name or NULL past the end. */
const char *esc_config_key_name(size_t i);

#endif
