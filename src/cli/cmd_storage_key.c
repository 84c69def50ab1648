/*
 * p11escrow storage-key — rotate the storage key, list its generations.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/keeper.h>
#include <p11escrow/storage.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define CMD "storage-key"

static void
help(void)
{
	printf("Usage: %s " CMD " rotate --user ADMIN --local [--key-type TYPE] [--days N] [OPTIONS]\n"
	       "       %s " CMD " list [--json] [OPTIONS]\n\n"
	       "rotate  generate a new storage key on the CA token (decrypt-only, sensitive, never\n"
	       "        extractable, as setup makes it), issue its certificate from the CA and make it\n"
	       "        the current one, in one transaction that also keeps the earlier key for the\n"
	       "        records still sealed to it; audited (storage-key.rotate).  New records are\n"
	       "        sealed to the new key from then on; 'p11escrow rewrap --storage' re-seals the\n"
	       "        others.  Administrators, with the CA token's PIN, on the service host only\n"
	       "        (--local): the service's database role cannot change the storage key.  With\n"
	       "        SoftHSM2 (one process per token) stop p11escrowd while it runs.  If anything\n"
	       "        fails after the key was generated, the key is removed again.\n"
	       "list    every generation, the current one first, with the records sealed to each;\n"
	       "        a retired generation with no record left may be destroyed on the token\n"
	       "        (administrators and auditors).\n\n"
	       "With --server URL list goes through the service.  Straight on the database only with\n"
	       "--local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such.\n\n"
	       "Options:\n"
	       "      --server URL           the service, e.g. https://escrow.example.org:8443 (list)\n"
	       "      --server-ca FILE       CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --local                straight on the database and the CA token (audited)\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string (--local)\n"
	       "  -u, --user NAME            the acting account (rotate: an administrator)\n"
	       "      --password-file FILE   their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -m, --module MODULE        PKCS#11 module of the CA token (rotate)\n"
	       "  -p, --pin-file FILE        CA token PIN (rotate; else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "      --key-type TYPE        the new key: ec-p256, ec-p384, rsa3072, rsa4096 (rotate;\n"
	       "                             default: the current key's type)\n"
	       "      --days N               validity of the new storage certificate (rotate; default:\n"
	       "                             ca_days, capped at the CA certificate's)\n"
	       "      --json                 list: " CLI_JSON_HELP "\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG);
	cli_print_exit_codes();
}

void
cli_storage_print(const struct esc_storage_gen *g, size_t n)
{
	size_t i;

	printf("%-10s  %-7s  %-8s  %9s  %-20s  %-20s  %s\n", "generation", "state", "key type", "records", "created",
	       "retired", "key");
	for (i = 0; i < n; i++)
		printf("%-10d  %-7s  %-8s  %9lld  %-20s  %-20s  '%s' id %s on token '%s'\n", g[i].generation,
		       g[i].current ? "current" : "retired", g[i].key_type, g[i].records, g[i].created,
		       g[i].retired[0] ? g[i].retired : "-", g[i].key_label, g[i].key_id, g[i].token_label);
}

void
cli_storage_destroy_hint(const struct esc_storage_gen *g, size_t n, const char *module)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (g[i].current || g[i].records != 0)
			continue;
		printf("storage key generation %d seals no record any more: it may now be destroyed on the token "
		       "(p11escrow never deletes it), e.g.\n",
		       g[i].generation);
		printf("  pkcs11-tool --module %s --token-label '%s' --login --delete-object --type privkey --id %s\n",
		       module != NULL && *module ? module : "MODULE", g[i].token_label, g[i].key_id);
		printf("  pkcs11-tool --module %s --token-label '%s' --login --delete-object --type pubkey --id %s\n",
		       module != NULL && *module ? module : "MODULE", g[i].token_label, g[i].key_id);
		printf("  (keep it while a database backup made before the re-seal may still be restored)\n");
	}
}

/* One generation of GET /storage-keys' answer. */
static void
gen_of_json(const json_t *e, struct esc_storage_gen *g)
{
	memset(g, 0, sizeof(*g));
	g->generation = (int)cli_json_int(e, "generation");
	g->current = json_is_true(json_object_get(e, "current"));
	cli_json_copy(g->key_type, sizeof(g->key_type), e, "key_type");
	cli_json_copy(g->key_label, sizeof(g->key_label), e, "key_label");
	cli_json_copy(g->key_id, sizeof(g->key_id), e, "key_id");
	cli_json_copy(g->token_label, sizeof(g->token_label), e, "token_label");
	cli_json_copy(g->uri, sizeof(g->uri), e, "uri");
	cli_json_copy(g->fingerprint, sizeof(g->fingerprint), e, "fingerprint");
	cli_json_copy(g->created, sizeof(g->created), e, "created");
	cli_json_copy(g->retired, sizeof(g->retired), e, "retired");
	cli_json_copy(g->retired_by, sizeof(g->retired_by), e, "retired_by");
	g->records = cli_json_int(e, "records");
}

int
cli_storage_fetch(struct cli_http *h, struct esc_storage_gen **out, size_t *n)
{
	json_t *doc = NULL, *list;
	struct esc_storage_gen *g = NULL;
	size_t i, len;
	int rc;

	if ((rc = cli_http_call(h, CLI_HTTP_GET, "/storage-keys", NULL, &doc)) != 0)
		return rc;
	list = json_object_get(doc, "generations");
	len = json_array_size(list);
	if (len == 0 || len > 100000 || (g = calloc(len, sizeof(*g))) == NULL) {
		fprintf(stderr, "%s: error: the service's answer lists no storage key\n", PROG);
		json_decref(doc);
		return esc_err_exit_code(ESC_ERR_BAD_INPUT);
	}
	for (i = 0; i < len; i++)
		gen_of_json(json_array_get(list, i), &g[i]);
	json_decref(doc);
	*out = g;
	*n = len;
	return 0;
}

static int
do_rotate(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const struct esc_account *a,
	  const char *type, int days)
{
	struct esc_keeper *k = NULL;
	struct esc_storage_rotation rot;
	long long remaining = 0;
	enum esc_err r;
	int rc;

	if ((rc = cli_open_keeper(CMD, ctx, cfg, st, &k)) != 0)
		return rc;
	if ((r = esc_keeper_rotate_storage(ctx, k, st, a, type, days, &rot)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	printf("storage key rotated: generation %d -> %d\n"
	       "  key:         %s '%s' id %s\n"
	       "  uri:         %s\n"
	       "  certificate: serial %s, %s\n",
	       rot.from, rot.to, rot.key_type, rot.key_label, rot.key_id, rot.uri, rot.serial, rot.fingerprint);
	if (esc_storage_remaining(ctx, st, &remaining) == ESC_OK)
		printf("new records are sealed to generation %d; %lld record(s) are still sealed to an earlier one: "
		       "run '%s rewrap --storage'\n",
		       rot.to, remaining, PROG);
	rc = 0;
out:
	esc_keeper_free(k);
	return rc;
}

/* list: the table, or (--json) a JSON array; 0 or an exit code. */
static int
print_list(const struct esc_storage_gen *g, size_t n, int json)
{
	if (json)
		return cli_json_print(CMD, cli_json_array(g, n, sizeof(*g), cli_json_storage_gen));
	cli_storage_print(g, n);
	return 0;
}

int
storage_key_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_SERVER, OPT_SERVER_CA, OPT_LOCAL, OPT_KEY_TYPE, OPT_DAYS, OPT_JSON };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"module", required_argument, NULL, 'm'},
		{"pin-file", required_argument, NULL, 'p'},
		{"key-type", required_argument, NULL, OPT_KEY_TYPE},
		{"days", required_argument, NULL, OPT_DAYS},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *module = NULL;
	const char *pin_file = NULL, *type = NULL, *server = NULL, *server_ca = NULL, *action;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *a = NULL;
	struct esc_storage_gen *g = NULL;
	struct cli_http *h = NULL;
	size_t n = 0;
	enum esc_err r;
	int c, rc, days = 0, local = 0, rotate, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:m:p:h", longopts, NULL)) != -1) {
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
		case 'm':
			module = optarg;
			break;
		case 'p':
			pin_file = optarg;
			break;
		case OPT_KEY_TYPE:
			type = optarg;
			break;
		case OPT_DAYS:
			if ((rc = cli_int_option(CMD, "--days", optarg, 1, 36500, &days)) != 0)
				return rc;
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
	if (optind != argc - 1)
		return cli_usage_error(CMD, "expected one action: rotate or list");
	action = argv[optind];
	rotate = strcmp(action, "rotate") == 0;
	if (!rotate && strcmp(action, "list") != 0)
		return cli_usage_error(CMD, "unknown action '%s': use rotate or list", action);
	if (rotate && server != NULL)
		return cli_usage_error(CMD, "the service does not rotate the storage key (its database role may not "
					    "change it): run 'rotate --local' on the service host");
	if (rotate && json)
		return cli_usage_error(CMD, "--json goes with list");
	if (!rotate && (type != NULL || days != 0))
		return cli_usage_error(CMD, "--key-type and --days belong to rotate");
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (server != NULL) {
		if ((rc = cli_http_open(CMD, ctx, server, server_ca, user, password_file, &h)) != 0 ||
		    (rc = cli_storage_fetch(h, &g, &n)) != 0)
			goto out;
		rc = print_list(g, n, json);
		goto out;
	}
	if ((rc = cli_apply_common(CMD, ctx, cfg, database, module, NULL, pin_file)) != 0 ||
	    (rc = cli_open_store_local(CMD, rotate ? "storage-key rotate" : "storage-key list", ctx, cfg, &st)) != 0)
		goto out;
	if (rotate) {
		if ((rc = cli_login(CMD, ctx, st, user, password_file, &a)) != 0)
			goto out;
		rc = do_rotate(ctx, cfg, st, a, type, days != 0 ? days : (int)esc_config_get_long(cfg, "ca_days"));
		goto out;
	}
	if ((r = esc_storage_list(ctx, st, &g, &n)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = print_list(g, n, json);
out:
	free(g);
	cli_http_free(h);
	esc_account_free(a);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
