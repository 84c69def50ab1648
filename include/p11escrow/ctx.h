/*
 * p11escrow — library context.
 *
 * A struct esc_ctx carries the state one caller (one CLI run, one daemon
 * worker thread) needs: the last error's detail, an optional log sink and
 * the PKCS#11 modules this caller may load (local configuration only).
 * There are no mutable globals in the library; pass the context explicitly.
 * A context is not thread-safe: use one per thread.
 */
#ifndef P11ESCROW_CTX_H
#define P11ESCROW_CTX_H

#include <p11escrow/err.h>

struct esc_ctx;

enum esc_log_level { ESC_LOG_ERROR, ESC_LOG_WARN, ESC_LOG_INFO, ESC_LOG_DEBUG };

/* Log sink; msg never contains secrets. */
typedef void (*esc_log_fn)(void *arg, enum esc_log_level level, const char *msg);

/* Allocates a context into *out.  Errors: ESC_ERR_NOMEM. */
enum esc_err esc_ctx_new(struct esc_ctx **out) ESC_MUST_CHECK;
/* Frees a context; accepts NULL. */
void esc_ctx_free(struct esc_ctx *ctx);
void esc_ctx_set_log(struct esc_ctx *ctx, esc_log_fn fn, void *arg);

/*
 * Timing sink: how long each database statement or transaction end
 * (ESC_TIMING_DB, what: "statement", "commit", "rollback") and each
 * request to a keeper process (ESC_TIMING_TOKEN, what: the keeper
 * operation's name, "issue", "open-transport", ...) took, in seconds, as
 * the caller saw it.  what is a constant string.  Unset (the default): the
 * library reads no clock for it.  The daemon's metrics use it
 * (src/daemon/metrics.c).
 */
enum esc_timing_kind { ESC_TIMING_DB, ESC_TIMING_TOKEN };
typedef void (*esc_timing_fn)(void *arg, enum esc_timing_kind kind, const char *what, double seconds);
void esc_ctx_set_timing(struct esc_ctx *ctx, esc_timing_fn fn, void *arg);

#define ESC_MODULE_ALLOW_MAX 1024

/*
 * The PKCS#11 module files this context may load (the `module_allow`
 * setting): a ':'-separated list of absolute paths, each a directory (a
 * module file directly inside it) or a module file.  Compared after
 * realpath(3), see esc_token_module_resolve.  allow is copied; NULL restores
 * the build default (meson option default_module_allow), which is also what
 * a new context has, so a caller that never sets it gets the narrow default.
 * Errors: CONFIG (longer than ESC_MODULE_ALLOW_MAX bytes).
 */
enum esc_err esc_ctx_set_module_allow(struct esc_ctx *ctx, const char *allow) ESC_MUST_CHECK;
/* The list in force: what was set, else the build default.  Owned by ctx. */
const char *esc_ctx_module_allow(const struct esc_ctx *ctx);

#define ESC_URL_MAX 512

/*
 * How this CA publishes what relying parties check (the `crl_url`,
 * `ca_issuer_url`, `crl_validity` and `crl_refresh` settings).  crl_url and
 * ca_issuer_url (NULL or "": none): every certificate the CA signs from then
 * on carries a CRL distribution point and an authority information access
 * caIssuers entry with them.  crl_validity (seconds, 60..31622400) and
 * crl_refresh (percent of it, 10..90): the service's CRLs, which a keeper
 * makes when the current one is that far into its validity.
 */
struct esc_publication {
	const char *crl_url;
	const char *ca_issuer_url;
	long crl_validity;
	int crl_refresh;
};

/*
 * Set ctx's publication settings (copied).  A new context has no URLs, a
 * validity of 7 days and a refresh at 50 %.  Errors: CONFIG (a URL longer
 * than ESC_URL_MAX or holding a blank or control character, a value out of
 * range); ctx is then unchanged.
 */
enum esc_err esc_ctx_set_publication(struct esc_ctx *ctx, const struct esc_publication *p) ESC_MUST_CHECK;
/* The settings in force; the URLs are "" when unset.  Owned by ctx. */
const struct esc_publication *esc_ctx_publication(const struct esc_ctx *ctx);

/*
 * The sentence describing the last failure recorded in ctx, e.g.
 * "login to token 'CA' failed: CKR_PIN_INCORRECT (the PIN is wrong)".
 * Empty string if none.  Valid until the next call that fails.
 */
const char *esc_ctx_errmsg(const struct esc_ctx *ctx);
/* The code of the last failure recorded in ctx (ESC_OK if none). */
enum esc_err esc_ctx_errcode(const struct esc_ctx *ctx);
/* Forget the last failure. */
void esc_ctx_clear_error(struct esc_ctx *ctx);

#endif
