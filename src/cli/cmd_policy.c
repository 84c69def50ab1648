/*
 * p11escrow policy — show and change stored policy.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/policy.h>

#include "cli.h"

#define CMD "policy"

static void
help(void)
{
	printf("Usage: %s " CMD " show [OPTIONS]\n"
	       "       %s " CMD " set KEY VALUE --user ADMIN [OPTIONS]\n\n"
	       "Policies:\n"
	       "  kra_set_size           1..16       each archived key is wrapped to this many active KRAs\n"
	       "                                     (any one of them can recover it); default 1\n"
	       "  allow_foreign_issuers  true|false  archive certificates issued by other CAs; default false\n"
	       "  recovery_approvals     0..10       approvals by other certificate managers a recovery\n"
	       "                                     request needs; default 0\n"
	       "  revoke_before_recovery true|false  recover a key only once its certificate is revoked\n"
	       "                                     ('p11escrow cert revoke'); default false\n"
	       "  one_key_per_subject    off|supersede|refuse  at most one valid archived encryption key\n"
	       "                                     per subject and profile: a new enrollment revokes the\n"
	       "                                     older certificate (reason superseded) or is refused;\n"
	       "                                     default off\n"
	       "  release_ttl_hours      1..720      hours a released package waits for its KRA; then it\n"
	       "                                     is refused, deleted and the request expired; default 24\n"
	       "  cert_login_roles       ROLES|\"\"    accounts holding one of these roles (comma-separated:\n"
	       "                                     admin, cert-manager, kra, auditor) log in to the service\n"
	       "                                     with their TLS client certificate only, never with a\n"
	       "                                     password (the local CLI is unaffected); default \"\" (none)\n\n"
	       "Only an administrator changes policy; every change, and every refused attempt, is an\n"
	       "audit event (policy.set).\n\n"
	       "Options:\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string\n"
	       "  -u, --user NAME            the acting administrator (set)\n"
	       "      --password-file FILE   their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG);
	cli_print_exit_codes();
}

int
policy_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256 };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'}, {"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},	  {"password-file", required_argument, NULL, OPT_PASSWORD},
		{"help", no_argument, NULL, 'h'},	  {NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *action;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *admin = NULL;
	struct esc_policy_item *items = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int c, rc;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c': config = optarg; break;
		case 'd': database = optarg; break;
		case 'u': user = optarg; break;
		case OPT_PASSWORD: password_file = optarg; break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(CMD, "expected an action: show or set");
	action = argv[optind++];
	if (strcmp(action, "show") == 0 ? optind != argc : strcmp(action, "set") == 0 ? argc - optind != 2 : 1)
		return cli_usage_error(CMD, "use 'policy show' or 'policy set KEY VALUE'");
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0 ||
	    (rc = cli_apply_common(CMD, ctx, cfg, database, NULL, NULL, NULL)) != 0 ||
	    (rc = cli_open_store(CMD, ctx, cfg, &st)) != 0)
		goto out;
	if (strcmp(action, "set") == 0) {
		if ((rc = cli_login(CMD, ctx, st, user, password_file, &admin)) != 0)
			goto out;
		if ((r = esc_policy_set(ctx, st, admin, argv[optind], argv[optind + 1])) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		printf("policy %s set to %s by %s\n", argv[optind], argv[optind + 1], esc_account_name(admin));
	} else {
		if ((r = esc_policy_list(ctx, st, &items, &n)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		for (i = 0; i < n; i++) {
			if (items[i].updated_by[0] != '\0')
				printf("%-22s %-9s set by %s at %s\n", items[i].key, items[i].value, items[i].updated_by,
				       items[i].updated_at);
			else
				printf("%-22s %-9s default\n", items[i].key, items[i].value);
		}
	}
	rc = 0;
out:
	free(items);
	esc_account_free(admin);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
