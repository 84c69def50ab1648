/*
 * p11escrow policy — show and change stored policy.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/policy.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define CMD "policy"

static void
help(void)
{
	printf("Usage: %s " CMD " show [--json] [OPTIONS]\n"
	       "       %s " CMD " set KEY VALUE --user ADMIN [OPTIONS]\n\n"
	       "Policies:\n"
	       "  kra_set_size           1..16       each archived key is wrapped to this many active KRAs\n"
	       "  kra_threshold          1..16       KRAs of a record's set needed to recover it (never above\n"
	       "                                     kra_set_size; above 1: k-of-n, recovery contribute)\n"
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
	       "With --server URL both go through the service (show: any account).  Straight on the\n"
	       "database only with --local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such.\n\n"
	       "Options:\n"
	       "      --server URL           the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE       CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --local                break-glass: straight on the database (audited)\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string (--local)\n"
	       "  -u, --user NAME            the acting account (set: an administrator)\n"
	       "      --password-file FILE   their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "      --json                 show: " CLI_JSON_HELP "\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG);
	cli_print_exit_codes();
}

/* The policy values as text or (--json) a JSON array; 0 or an exit code. */
static int
print_items(const struct esc_policy_item *items, size_t n, int json)
{
	size_t i;

	if (json)
		return cli_json_print(CMD, cli_json_array(items, n, sizeof(*items), cli_json_policy));
	for (i = 0; i < n; i++) {
		if (items[i].updated_by[0] != '\0')
			printf("%-22s %-9s set by %s at %s\n", items[i].key, items[i].value, items[i].updated_by,
			       items[i].updated_at);
		else
			printf("%-22s %-9s default\n", items[i].key, items[i].value);
	}
	return 0;
}

static void
item_from_json(struct esc_policy_item *p, const json_t *e)
{
	memset(p, 0, sizeof(*p));
	cli_json_copy(p->key, sizeof(p->key), e, "key");
	cli_json_copy(p->value, sizeof(p->value), e, "value");
	cli_json_copy(p->updated_by, sizeof(p->updated_by), e, "updated_by");
	cli_json_copy(p->updated_at, sizeof(p->updated_at), e, "updated_at");
}

/* show / set through the service. */
static int
remote(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *user, const char *password_file,
       const char *key, const char *value, int json)
{
	struct cli_http *h = NULL;
	struct esc_policy_item *items = NULL;
	json_t *body = NULL, *doc = NULL;
	char path[128] = "";
	const char *p;
	size_t n, i;
	int rc;

	if (key != NULL) {
		for (p = key; *p && ((*p >= 'a' && *p <= 'z') || *p == '_'); p++)
			;
		if (*p != '\0' || *key == '\0' || strlen(key) > 64)
			return cli_usage_error(CMD, "unknown policy '%s' (see '%s %s --help')", key, PROG, CMD);
		snprintf(path, sizeof(path), "/policy/%s", key);
		if ((body = json_object()) == NULL || json_object_set_new(body, "value", json_string(value)) != 0) {
			json_decref(body);
			return cli_usage_error(CMD, "the value must be UTF-8 text");
		}
	}
	if ((rc = cli_http_open(CMD, ctx, server, server_ca, user, password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, key ? CLI_HTTP_POST : CLI_HTTP_GET, key ? path : "/policy", body, &doc)) != 0)
		goto out;
	if (key != NULL) {
		printf("policy %s set to %s by %s\n", key, value, user);
		goto out;
	}
	n = json_array_size(json_object_get(doc, "policy"));
	if ((items = calloc(n + 1, sizeof(*items))) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	for (i = 0; i < n; i++)
		item_from_json(&items[i], json_array_get(json_object_get(doc, "policy"), i));
	rc = print_items(items, n, json);
out:
	free(items);
	json_decref(body);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

int
policy_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_SERVER, OPT_SERVER_CA, OPT_LOCAL, OPT_JSON };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *action;
	const char *server = NULL, *server_ca = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *admin = NULL;
	struct esc_policy_item *items = NULL;
	size_t n = 0;
	enum esc_err r;
	int c, rc, local = 0, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c':
			config = optarg;
			break;
		case 'd':
			database = optarg;
			break;
		case 'u':
			user = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
			break;
		case OPT_SERVER:
			server = optarg;
			break;
		case OPT_SERVER_CA:
			server_ca = optarg;
			break;
		case OPT_LOCAL:
			local = 1;
			break;
		case OPT_JSON:
			json = 1;
			break;
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
	if (json && strcmp(action, "show") != 0)
		return cli_usage_error(CMD, "--json goes with show");
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (server != NULL) {
		rc = remote(ctx, server, server_ca, user, password_file,
			    strcmp(action, "set") == 0 ? argv[optind] : NULL,
			    strcmp(action, "set") == 0 ? argv[optind + 1] : NULL, json);
		goto out;
	}
	if ((rc = cli_apply_common(CMD, ctx, cfg, database, NULL, NULL, NULL)) != 0 ||
	    (rc = cli_open_store_local(CMD, strcmp(action, "set") == 0 ? "policy set" : "policy show", ctx, cfg,
				       &st)) != 0)
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
		rc = print_items(items, n, json);
		goto out;
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
