/*
 * Helpers shared by the subcommands: configuration, errors, exit codes.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <pwd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <p11escrow/audit.h>
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/setup.h>
#include <p11escrow/token.h>

#include "cli.h"

int
cli_fail(const char *cmd, struct esc_ctx *ctx, enum esc_err err)
{
	const char *msg = ctx != NULL ? esc_ctx_errmsg(ctx) : "";

	fprintf(stderr, "%s %s: error: %s\n", PROG, cmd, *msg ? msg : esc_strerror(err));
	return esc_err_exit_code(err);
}

int
cli_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s %s: ", PROG, cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see '%s %s --help')\n", PROG, cmd);
	return esc_err_exit_code(ESC_ERR_USAGE);
}

int
cli_int_option(const char *cmd, const char *opt, const char *arg, int min, int max, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (*arg == '\0' || *end != '\0' || errno != 0 || v < min || v > max)
		return cli_usage_error(cmd, "%s must be %d..%d", opt, min, max);
	*out = (int)v;
	return 0;
}

/*
 * Library log lines (e.g. a failed clean-up) go to stderr; they never hold
 * secrets.  Debug lines (e.g. a transaction retried after a lost race) only
 * with P11ESCROW_DEBUG set.
 */
static void
log_stderr(void *arg, enum esc_log_level level, const char *msg)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};

	if (level == ESC_LOG_DEBUG && getenv("P11ESCROW_DEBUG") == NULL)
		return;
	fprintf(stderr, "%s %s: %s: %s\n", PROG, (const char *)arg, names[level], msg);
}

int
cli_init(const char *cmd, const char *config_path, struct esc_ctx **ctx, struct esc_config **cfg)
{
	enum esc_err r;

	struct rlimit nocore = {0, 0};

	*ctx = NULL;
	*cfg = NULL;
	/* PINs, passwords and recovered keys pass through this process: no core dumps. */
	(void)setrlimit(RLIMIT_CORE, &nocore);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	/* Lock the secure heap before any secret is read; warn if we cannot. */
	if (esc_secmem_init() != ESC_OK)
		fprintf(stderr, "%s %s: warning: cannot lock memory for secrets (RLIMIT_MEMLOCK?)\n", PROG, cmd);
	if (esc_ctx_new(ctx) != ESC_OK) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, cmd);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	esc_ctx_set_log(*ctx, log_stderr, (void *)cmd);
	if ((r = esc_config_new(*ctx, cfg)) != ESC_OK)
		return cli_fail(cmd, *ctx, r);
	if (config_path == NULL && access(ESC_CONFIG_DEFAULT_PATH, F_OK) == 0)
		config_path = ESC_CONFIG_DEFAULT_PATH;
	if (config_path != NULL && (r = esc_config_load_file(*ctx, *cfg, config_path)) != ESC_OK)
		return cli_fail(cmd, *ctx, r);
	if ((r = esc_config_apply_env(*ctx, *cfg)) != ESC_OK ||
	    (r = esc_ctx_set_module_allow(*ctx, esc_config_get(*cfg, "module_allow"))) != ESC_OK ||
	    (r = esc_config_set_publication(*ctx, *cfg)) != ESC_OK)
		return cli_fail(cmd, *ctx, r);
	return 0;
}

int
cli_set(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, const char *key, const char *value)
{
	char abs[PATH_MAX];
	enum esc_err r;

	/* Paths from the command line may be relative; the configuration wants absolute ones. */
	if (strcmp(key, "ca_pin_file") == 0 && value[0] != '/' && value[0] != '\0') {
		if (realpath(value, abs) == NULL) {
			fprintf(stderr, "%s %s: error: cannot find PIN file '%s'\n", PROG, cmd, value);
			return esc_err_exit_code(ESC_ERR_IO);
		}
		value = abs;
	}
	r = esc_config_set(ctx, cfg, key, value);

	return r == ESC_OK ? 0 : cli_fail(cmd, ctx, r);
}

void
cli_print_exit_codes(void)
{
	enum esc_err e;
	size_t i;

	/* The library's table: every code once, NOMEM left out (it shares 70 with INTERNAL, printed last). */
	printf("\nExit status:\n  %3d  success\n", 0);
	for (i = 0; esc_err_at(i, &e); i++)
		if (e != ESC_OK && e != ESC_ERR_NOMEM && e != ESC_ERR_INTERNAL)
			printf("  %3d  %s\n", esc_err_exit_code(e), esc_strerror(e));
	printf("  %3d  %s\n", esc_err_exit_code(ESC_ERR_INTERNAL), esc_strerror(ESC_ERR_INTERNAL));
}

int
cli_password(const char *cmd, struct esc_ctx *ctx, const char *user, const char *password_file, struct esc_secret **out)
{
	char prompt[128];
	enum esc_err r;

	if (user == NULL)
		return cli_usage_error(cmd, "--user NAME is required: this action needs an authenticated account");
	snprintf(prompt, sizeof(prompt), "Password for %s: ", user);
	r = esc_secret_obtain(ctx, password_file, "P11ESCROW_PASSWORD", prompt, out);
	return r == ESC_OK ? 0 : cli_fail(cmd, ctx, r);
}

int
cli_login(const char *cmd, struct esc_ctx *ctx, struct esc_store *st, const char *user, const char *password_file,
	  struct esc_account **out)
{
	return cli_login_flags(cmd, ctx, st, user, password_file, 0, out);
}

int
cli_login_flags(const char *cmd, struct esc_ctx *ctx, struct esc_store *st, const char *user, const char *password_file,
		unsigned flags, struct esc_account **out)
{
	struct esc_secret *pw = NULL;
	enum esc_err r;
	int rc;

	if ((rc = cli_password(cmd, ctx, user, password_file, &pw)) != 0)
		return rc;
	r = esc_account_login_ex(ctx, st, user, pw, flags, out);
	esc_secret_free(pw);
	return r == ESC_OK ? 0 : cli_fail(cmd, ctx, r);
}

int
cli_apply_common(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, const char *database, const char *module,
		 const char *ca_token, const char *pin_file)
{
	int rc = 0;

	if ((database && (rc = cli_set(cmd, ctx, cfg, "database", database)) != 0) ||
	    (module && (rc = cli_set(cmd, ctx, cfg, "module", module)) != 0) ||
	    (ca_token && (rc = cli_set(cmd, ctx, cfg, "ca_token", ca_token)) != 0) ||
	    (pin_file && (rc = cli_set(cmd, ctx, cfg, "ca_pin_file", pin_file)) != 0))
		return rc;
	return 0;
}

int
cli_open_store(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store **st)
{
	enum esc_err r;

	if ((r = esc_store_connect(ctx, esc_config_get(cfg, "database"), st)) != ESC_OK ||
	    (r = esc_store_check_schema(ctx, *st)) != ESC_OK)
		return cli_fail(cmd, ctx, r);
	return 0;
}

int
cli_check_mode(const char *cmd, const char *server, int local_flag)
{
	const char *env = getenv(CLI_LOCAL_ENV);
	int env_local;

	if (env != NULL && *env != '\0' && strcmp(env, "0") != 0 && strcmp(env, "1") != 0)
		return cli_usage_error(cmd, "$%s must be 1 (break-glass direct database access), 0 or empty",
				       CLI_LOCAL_ENV);
	env_local = env != NULL && strcmp(env, "1") == 0;
	if (server != NULL && local_flag)
		return cli_usage_error(cmd, "--server and --local exclude each other");
	/* --server wins over the environment: a script on the service host may still use the service. */
	if (server != NULL || local_flag || env_local)
		return 0;
	fprintf(stderr, "%s %s: %s: direct database mode is for setup and db on the service host\n", PROG, cmd,
		CLI_LOCAL_HINT);
	return esc_err_exit_code(ESC_ERR_USAGE);
}

int
cli_open_store_local(const char *cmd, const char *what, struct esc_ctx *ctx, struct esc_config *cfg,
		     struct esc_store **st)
{
	struct passwd *pw = getpwuid(geteuid());
	char host[256] = "", details[512], actor[80];
	struct esc_audit_event ev;
	enum esc_err r;
	int rc;

	if ((rc = cli_open_store(cmd, ctx, cfg, st)) != 0)
		return rc;
	if (gethostname(host, sizeof(host) - 1) != 0)
		snprintf(host, sizeof(host), "unknown");
	host[sizeof(host) - 1] = '\0';
	snprintf(actor, sizeof(actor), "os:%.64s", pw != NULL ? pw->pw_name : "unknown");
	snprintf(details, sizeof(details),
		 "break-glass (--local): '%s %s' straight on the database, not through the service; OS user uid %ld "
		 "on host %.128s",
		 PROG, what, (long)geteuid(), host);
	ev.actor = actor;
	ev.role = "break-glass";
	ev.action = "break-glass.local";
	ev.object = what;
	ev.outcome = "ok";
	ev.details = details;
	if ((r = esc_audit_append(ctx, *st, &ev)) != ESC_OK) {
		rc = cli_fail(cmd, ctx, r);
		fprintf(stderr, "%s %s: break-glass use cannot be audited: nothing was done\n", PROG, cmd);
		esc_store_free(*st);
		*st = NULL;
		return rc;
	}
	return 0;
}

int
cli_open_keeper(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st,
		struct esc_keeper **out)
{
	struct esc_secret *pin = NULL;
	struct esc_keeper *k = NULL;
	enum esc_err r;

	if ((r = esc_secret_obtain(ctx, esc_config_get(cfg, "ca_pin_file"), "P11ESCROW_CA_PIN",
				   "CA token PIN: ", &pin)) == ESC_OK)
		r = esc_keeper_open(ctx, st, esc_config_get(cfg, "module"), pin, &k);
	esc_secret_free(pin);
	if (r != ESC_OK)
		return cli_fail(cmd, ctx, r);
	*out = k;
	return 0;
}

int
cli_open_ca_token(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const char *role,
		  const char *explicit_uri, struct esc_token **out)
{
	struct esc_secret *pin = NULL;
	struct esc_token *tok = NULL;
	char *uri = NULL;
	enum esc_err r;

	/* The token the role's key was recorded on at setup, unless the caller names one. */
	if ((explicit_uri == NULL && (r = esc_setup_key_uri(ctx, st, role, &uri)) != ESC_OK) ||
	    (r = esc_secret_obtain(ctx, esc_config_get(cfg, "ca_pin_file"), "P11ESCROW_CA_PIN",
				   "CA token PIN: ", &pin)) != ESC_OK ||
	    (r = esc_token_open(ctx, esc_config_get(cfg, "module"), explicit_uri ? explicit_uri : uri, &tok)) !=
		    ESC_OK ||
	    (r = esc_token_login(ctx, tok, pin)) != ESC_OK) {
		esc_token_free(tok);
		tok = NULL;
	}
	free(uri);
	esc_secret_free(pin);
	if (tok == NULL)
		return cli_fail(cmd, ctx, r);
	*out = tok;
	return 0;
}

enum esc_err
cli_random_password(struct esc_ctx *ctx, struct esc_secret **out)
{
	static const char abc[] = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_";
	unsigned char rnd[24];
	char pw[25];
	size_t i;
	enum esc_err r;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		return ESC_ERR_CRYPTO;
	/* 58 symbols: the small modulo bias is irrelevant at 24 characters. */
	for (i = 0; i < sizeof(rnd); i++)
		pw[i] = abc[rnd[i] % (sizeof(abc) - 1)];
	pw[24] = '\0';
	r = esc_secret_new(ctx, pw, 24, out);
	OPENSSL_cleanse(pw, sizeof(pw));
	OPENSSL_cleanse(rnd, sizeof(rnd));
	return r;
}
