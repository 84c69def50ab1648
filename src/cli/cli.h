/* p11escrow CLI: shared declarations of the subcommands and helpers. */
#ifndef P11ESCROW_CLI_H
#define P11ESCROW_CLI_H

#include <p11escrow/auth.h>
#include <p11escrow/config.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>

#define PROG "p11escrow"

int setup_main(int argc, char *argv[]);
int db_main(int argc, char *argv[]);
int account_main(int argc, char *argv[]);
int account_cert_main(int argc, char *argv[]);
int token_main(int argc, char *argv[]);

/* Print "p11escrow CMD: error: MSG" for err and return its exit code. */
int cli_fail(const char *cmd, struct esc_ctx *ctx, enum esc_err err);
/* Print a usage error (one line, plus a hint to --help) and return 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The value arg of integer option opt ("--days"): decimal, min..max.
 * Returns 0, or prints "OPT must be MIN..MAX" and returns the usage exit code.
 */
int cli_int_option(const char *cmd, const char *opt, const char *arg, int min, int max, int *out);

/*
 * Create a context and load the configuration: the file given (must exist),
 * else the default path if it exists; then environment overrides.
 */
int cli_init(const char *cmd, const char *config_path, struct esc_ctx **ctx, struct esc_config **cfg);
/* Set one config key from a command-line option; returns 0 or an exit code. */
int cli_set(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, const char *key, const char *value);

/*
 * The password of account user (--user): from password_file, else
 * $P11ESCROW_PASSWORD, else a prompt.  *out is the caller's
 * (esc_secret_free).  Returns 0 or an exit code (printed).
 */
struct esc_secret;

/* A random 24-character password (58-symbol URL-safe alphabet) in the secure heap, for a file the CLI writes. */
enum esc_err cli_random_password(struct esc_ctx *ctx, struct esc_secret **out);
int cli_password(const char *cmd, struct esc_ctx *ctx, const char *user, const char *password_file,
		 struct esc_secret **out);
/* Authenticate --user with the password cli_password obtains.  Returns 0 or an exit code (printed). */
int cli_login(const char *cmd, struct esc_ctx *ctx, struct esc_store *st, const char *user, const char *password_file,
	      struct esc_account **out);
/* cli_login with esc_account_login_ex's flags (ESC_LOGIN_PASSWORD_CHANGE: for 'account passwd' on oneself). */
int cli_login_flags(const char *cmd, struct esc_ctx *ctx, struct esc_store *st, const char *user,
		    const char *password_file, unsigned flags, struct esc_account **out);
int kra_main(int argc, char *argv[]);
int archive_main(int argc, char *argv[]);
int recovery_main(int argc, char *argv[]);
int policy_main(int argc, char *argv[]);
int audit_main(int argc, char *argv[]);
int cert_main(int argc, char *argv[]);
int enroll_password_main(int argc, char *argv[]);
int service_cert_main(int argc, char *argv[]);
int profile_main(int argc, char *argv[]);
int est_main(int argc, char *argv[]);
int storage_key_main(int argc, char *argv[]);
int rewrap_main(int argc, char *argv[]);

/* Storage key generations (cmd_storage_key.c), shared with rewrap. */
struct esc_storage_gen;
struct cli_http;
/* Print the generations as a table. */
void cli_storage_print(const struct esc_storage_gen *g, size_t n);
/* For each retired generation no record uses any more: that it may be destroyed, and the commands. */
void cli_storage_destroy_hint(const struct esc_storage_gen *g, size_t n, const char *module);
/* GET /storage-keys into *out (malloc'ed, free()), *n entries.  0 or an exit code (printed). */
int cli_storage_fetch(struct cli_http *h, struct esc_storage_gen **out, size_t *n);

/* Apply the usual command-line overrides (each may be NULL).  Returns 0 or an exit code. */
int cli_apply_common(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, const char *database,
		     const char *module, const char *ca_token, const char *pin_file);
/*
 * Connect to the configured database and require the current schema.  Returns 0 or an exit code.
 * Only for setup and db on the service host: every other command uses cli_open_store_local.
 */
int cli_open_store(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store **st);

/*
 * Direct database mode is break-glass (docs/operator-guide.md): every
 * command but setup and db goes through the service (--server URL) unless
 * given --local, or $P11ESCROW_LOCAL=1 (the same, e.g. for scripts on the
 * service host).
 */
#define CLI_LOCAL_ENV "P11ESCROW_LOCAL"
#define CLI_LOCAL_HINT "use --server URL (or --local for break-glass direct database access)"
/*
 * May this command run?  server: --server's value (NULL if not given);
 * local_flag: --local was given.  Returns 0 (through the service if server
 * is set, else break-glass), or prints why not and returns the usage exit
 * code: neither was given, both were, or $P11ESCROW_LOCAL is neither "",
 * "0" nor "1".
 */
int cli_check_mode(const char *cmd, const char *server, int local_flag);
/*
 * cli_open_store for a break-glass command, then record the break-glass
 * use as one audit event (break-glass.local; object: what, e.g. "account
 * add"; details: the OS user and host — never an argument or a secret)
 * before anything else happens.  If the event cannot be written the
 * command is refused: break-glass is audited or does not happen.
 */
int cli_open_store_local(const char *cmd, const char *what, struct esc_ctx *ctx, struct esc_config *cfg,
			 struct esc_store **st);

struct esc_token;
/*
 * Open and log in to the CA token: the one recorded at setup for role
 * ("ca-sign", "storage", "audit") unless explicit_uri names it; PIN from
 * ca_pin_file, else $P11ESCROW_CA_PIN, else a prompt.  Returns 0 or an
 * exit code (printed).
 */
int cli_open_ca_token(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st,
		      const char *role, const char *explicit_uri, struct esc_token **out);

struct esc_keeper;
/*
 * Open the keeper (keeper.h) on the CA token recorded at setup, as
 * p11escrowd does: the local mode's release, CRL and checkpoint then run
 * the same code as the service's.  PIN as cli_open_ca_token.  Returns 0 or
 * an exit code (printed).
 */
int cli_open_keeper(const char *cmd, struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st,
		    struct esc_keeper **out);

/* The EXIT STATUS table printed by --help. */
void cli_print_exit_codes(void);

#endif
