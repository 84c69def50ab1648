/*
 * p11escrowd — the HTTPS service (EST + JSON API).
 *
 * This first version only validates its configuration, database schema and
 * CA token access (--check), so packaging and operators can rely on the
 * binary and its configuration now.  Serving requests is tracked in the
 * service issue; until then the daemon refuses to pretend it serves.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <p11escrow/config.h>
#include <p11escrow/ctx.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "esc_build_config.h"

static void
help(void)
{
	printf("Usage: p11escrowd [--config FILE] --check\n\n"
	       "  -c, --config FILE   configuration (default %s)\n"
	       "      --check         validate configuration, database schema and CA token, then exit\n"
	       "  -V, --version       print the version\n"
	       "  -h, --help          this text\n",
	       ESC_CONFIG_DEFAULT_PATH);
}

static int
fail(struct esc_ctx *ctx, enum esc_err r)
{
	fprintf(stderr, "p11escrowd: error: %s\n", esc_ctx_errmsg(ctx));
	return esc_err_exit_code(r);
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'C'},
		{"version", no_argument, NULL, 'V'},	  {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = ESC_CONFIG_DEFAULT_PATH;
	struct rlimit nocore = {0, 0};
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_token *tok = NULL;
	enum esc_err r;
	int c, check = 0, rc = 1;

	/* No core dumps: the process will hold PINs and key material. */
	setrlimit(RLIMIT_CORE, &nocore);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	opterr = 0;
	while ((c = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'C':
			check = 1;
			break;
		case 'V':
			printf("p11escrowd %s\n", ESC_VERSION);
			return 0;
		case 'h':
			help();
			return 0;
		default:
			fprintf(stderr, "p11escrowd: unknown option or missing value: '%s' (see --help)\n",
				argv[optind - 1]);
			return 2;
		}
	}
	if (!check) {
		fprintf(stderr, "p11escrowd: this version can only --check its configuration; the HTTPS service "
				"is not built yet\n");
		return 2;
	}
	(void)!esc_secmem_init();
	if (esc_ctx_new(&ctx) != ESC_OK)
		return 70;
	if ((r = esc_config_new(ctx, &cfg)) != ESC_OK || (r = esc_config_load_file(ctx, cfg, config)) != ESC_OK ||
	    (r = esc_config_apply_env(ctx, cfg)) != ESC_OK ||
	    (r = esc_store_connect(ctx, esc_config_get(cfg, "database"), &st)) != ESC_OK ||
	    (r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = esc_token_open(ctx, esc_config_get(cfg, "module"), esc_config_get(cfg, "ca_token"), &tok)) != ESC_OK) {
		rc = fail(ctx, r);
		goto out;
	}
	printf("p11escrowd: configuration '%s' valid; schema current; CA token '%s' reachable\n", config,
	       esc_token_label(tok));
	rc = 0;
out:
	esc_token_free(tok);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
