/*
 * p11escrow audit — verify, show and export the audit trail.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/audit.h>
#include <p11escrow/keeper.h>
#include <p11escrow/token.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define CMD "audit"

static void
help(void)
{
	printf("Usage: %s " CMD " verify [OPTIONS]\n"
	       "       %s " CMD " show|export --user NAME [FILTERS] [OPTIONS]\n"
	       "       %s " CMD " checkpoint [OPTIONS]\n\n"
	       "verify  recompute the hash chain of every event, check every checkpoint's signature\n"
	       "        (audit certificate issued by the CA) and that the events it signed are still\n"
	       "        there; name the first event altered, removed, reordered or cut (exit 33).\n"
	       "checkpoint  sign the newest event's hash with the audit key on the CA token (needs\n"
	       "        the CA token PIN: -p FILE, else $P11ESCROW_CA_PIN, else a prompt).\n"
	       "show    events, oldest first, one per line (auditors and administrators); --json: a\n"
	       "        JSON array of them.\n"
	       "export  the same as JSON lines, for a SIEM.\n"
	       "show, export and checkpoint take --server URL: through the service's JSON API (no\n"
	       "database, no PIN here; checkpoint: administrators and auditors, the service signs).\n"
	       "verify reads the whole chain: --local only.  --local (or $" CLI_LOCAL_ENV "=1) is\n"
	       "break-glass, audited as such.\n\n"
	       "Filters:\n"
	       "      --since TIME          events at or after TIME (UTC, e.g. 2026-11-23T12:00:00)\n"
	       "      --until TIME          events at or before TIME\n"
	       "      --actor NAME          events by this account\n"
	       "      --action ACTION       e.g. recovery.release, archive.store, auth.login\n"
	       "      --object OBJECT       e.g. a certificate serial, 'request 4', a KRA or account name\n"
	       "      --serial HEX          events of that certificate: enrollment, archival, revocation,\n"
	       "                            and every step of a recovery of its key\n"
	       "      --limit N             at most N events (default 10000)\n\n"
	       "Options:\n"
	       "  -c, --config FILE         configuration file\n"
	       "  -d, --database CONNINFO   libpq connection string\n"
	       "  -u, --user NAME           the reading account (auditor or administrator)\n"
	       "  -p, --pin-file FILE       CA token PIN (checkpoint)\n"
	       "  -m, --module MODULE       PKCS#11 module of the CA token (checkpoint)\n"
	       "      --password-file FILE  its password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "      --server URL          through the service, e.g. https://escrow.example.org:8443\n"
	       "      --local               break-glass: straight on the database (audited)\n"
	       "      --server-ca FILE      CA certificate(s) to verify the service with (else $P11ESCROW_SERVER_CA)\n"
	       "      --client-cert FILE    with --client-key FILE: log in to the service with this TLS client\n"
	       "                            certificate and no password (else $P11ESCROW_CLIENT_CERT/_KEY)\n"
	       "      --json                show: " CLI_JSON_HELP "\n"
	       "  -h, --help                this text\n",
	       PROG, PROG, PROG);
	cli_print_exit_codes();
}

static int
do_checkpoint(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st)
{
	struct esc_keeper *k = NULL;
	long long id = 0;
	enum esc_err r;
	int rc;

	/*
	 * The keeper, as the service has it (setup keeps the audit key on the CA
	 * token): a missing audit key is then the library's clear, audited refusal.
	 */
	if ((rc = cli_open_keeper(CMD, ctx, cfg, st, &k)) != 0)
		return rc;
	if ((r = esc_keeper_checkpoint(ctx, k, st, NULL, 0, 0, &id)) == ESC_OK)
		printf("checkpoint signed: events up to %lld\n", id);
	esc_keeper_free(k);
	return r == ESC_OK ? 0 : cli_fail(CMD, ctx, r);
}

/* checkpoint through the service: it signs with the audit key on its CA token. */
static int
remote_checkpoint(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *user,
		  const char *password_file)
{
	struct cli_http *h = NULL;
	json_t *doc = NULL;
	int rc;

	if ((rc = cli_http_open(CMD, ctx, server, server_ca, user, password_file, &h)) == 0 &&
	    (rc = cli_http_call(h, CLI_HTTP_POST, "/audit/checkpoint", NULL, &doc)) == 0)
		printf("checkpoint signed: events up to %lld\n", cli_json_int(doc, "event"));
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

/* JSON string body: the fields are printable ASCII already; escape quote and backslash. */
static void
json_str(const char *key, const char *v, int last)
{
	printf("\"%s\":\"", key);
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			putchar('\\');
		putchar(*v);
	}
	printf("\"%s", last ? "" : ",");
}

/* The events through the service's JSON API (at most 10000, as the service allows). */
static int
remote_list(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *const client[2],
	    const char *user, const char *password_file, const char *const filters[6], size_t limit,
	    struct esc_audit_row **out, size_t *n)
{
	static const char *const names[6] = {"since", "until", "actor", "action", "object", "serial"};
	struct cli_http *h = NULL;
	struct esc_audit_row *rows = NULL;
	char path[2048] = "/audit", lim[24];
	const json_t *list, *e;
	json_t *doc = NULL;
	size_t i, count;
	int rc;

	snprintf(lim, sizeof(lim), "%zu", limit > 10000 ? (size_t)10000 : limit);
	for (i = 0; i < 6; i++)
		if (cli_http_query(path, sizeof(path), names[i], filters[i]) != 0)
			return cli_usage_error(CMD, "filters too long");
	if (cli_http_query(path, sizeof(path), "limit", lim) != 0)
		return cli_usage_error(CMD, "filters too long");
	if ((rc = cli_http_open_cert(CMD, ctx, server, server_ca, user, password_file, client[0], client[1], &h)) !=
		    0 ||
	    (rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0)
		goto out;
	list = json_object_get(doc, "events");
	count = json_array_size(list);
	if ((rows = calloc(count + 1, sizeof(*rows))) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	for (i = 0; i < count; i++) {
		e = json_array_get(list, i);
		rows[i].id = cli_json_int(e, "id");
		cli_json_copy(rows[i].at, sizeof(rows[i].at), e, "time");
		cli_json_copy(rows[i].actor, sizeof(rows[i].actor), e, "actor");
		cli_json_copy(rows[i].role, sizeof(rows[i].role), e, "role");
		cli_json_copy(rows[i].action, sizeof(rows[i].action), e, "action");
		cli_json_copy(rows[i].object, sizeof(rows[i].object), e, "object");
		cli_json_copy(rows[i].outcome, sizeof(rows[i].outcome), e, "outcome");
		cli_json_copy(rows[i].details, sizeof(rows[i].details), e, "details");
	}
	*out = rows;
	*n = count;
	rows = NULL; /* transferred */
	rc = 0;
out:
	free(rows);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

int
audit_main(int argc, char *argv[])
{
	enum {
		OPT_PASSWORD = 256,
		OPT_SINCE,
		OPT_UNTIL,
		OPT_ACTOR,
		OPT_ACTION,
		OPT_OBJECT,
		OPT_LIMIT,
		OPT_SERVER,
		OPT_SERVER_CA,
		OPT_SERIAL,
		OPT_LOCAL,
		OPT_CLIENT_CERT,
		OPT_CLIENT_KEY,
		OPT_JSON
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"since", required_argument, NULL, OPT_SINCE},
		{"until", required_argument, NULL, OPT_UNTIL},
		{"actor", required_argument, NULL, OPT_ACTOR},
		{"action", required_argument, NULL, OPT_ACTION},
		{"object", required_argument, NULL, OPT_OBJECT},
		{"limit", required_argument, NULL, OPT_LIMIT},
		{"serial", required_argument, NULL, OPT_SERIAL},
		{"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'm'},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"client-cert", required_argument, NULL, OPT_CLIENT_CERT},
		{"client-key", required_argument, NULL, OPT_CLIENT_KEY},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *action;
	const char *pin_file = NULL, *module = NULL, *server = NULL, *server_ca = NULL;
	const char *client[2] = {NULL, NULL};
	const char *since = NULL, *until = NULL, *actor = NULL, *act = NULL, *object = NULL, *serial = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *reader = NULL;
	struct esc_audit_row *rows = NULL;
	struct esc_audit_report rep;
	size_t n = 0, i, limit = 10000;
	enum esc_err r;
	int c, rc, nlimit, local = 0, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:p:m:h", longopts, NULL)) != -1) {
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
		case 'p':
			pin_file = optarg;
			break;
		case 'm':
			module = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
			break;
		case OPT_SINCE:
			since = optarg;
			break;
		case OPT_UNTIL:
			until = optarg;
			break;
		case OPT_ACTOR:
			actor = optarg;
			break;
		case OPT_ACTION:
			act = optarg;
			break;
		case OPT_OBJECT:
			object = optarg;
			break;
		case OPT_SERIAL:
			serial = optarg;
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
		case OPT_CLIENT_CERT:
			client[0] = optarg;
			break;
		case OPT_CLIENT_KEY:
			client[1] = optarg;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case OPT_LIMIT:
			if ((rc = cli_int_option(CMD, "--limit", optarg, 1, 100000, &nlimit)) != 0)
				return rc;
			limit = (size_t)nlimit;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return cli_usage_error(CMD, "expected one action: verify, show, export or checkpoint");
	action = argv[optind];
	if (strcmp(action, "verify") != 0 && strcmp(action, "show") != 0 && strcmp(action, "export") != 0 &&
	    strcmp(action, "checkpoint") != 0)
		return cli_usage_error(CMD, "unknown action '%s' (use verify, show, export or checkpoint)", action);
	if (json && strcmp(action, "show") != 0)
		return cli_usage_error(CMD, "--json goes with show (export writes JSON lines already)");
	if (server != NULL && strcmp(action, "verify") == 0)
		return cli_usage_error(CMD, "verify reads the whole chain from the database: use --local");
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (server != NULL && strcmp(action, "checkpoint") == 0) {
		rc = remote_checkpoint(ctx, server, server_ca, user, password_file);
		goto out;
	}
	if (server != NULL) {
		const char *filters[6] = {since, until, actor, act, object, serial};

		if ((rc = remote_list(ctx, server, server_ca, client, user, password_file, filters, limit, &rows,
				      &n)) != 0)
			goto out;
		goto print;
	}
	{
		char what[32];

		snprintf(what, sizeof(what), "%s %s", CMD, action);
		if ((rc = cli_apply_common(CMD, ctx, cfg, database, module, NULL, pin_file)) != 0 ||
		    (rc = cli_open_store_local(CMD, what, ctx, cfg, &st)) != 0)
			goto out;
	}
	if (strcmp(action, "checkpoint") == 0) {
		rc = do_checkpoint(ctx, cfg, st);
		goto out;
	}
	if (user != NULL && (rc = cli_login(CMD, ctx, st, user, password_file, &reader)) != 0)
		goto out;
	if (strcmp(action, "verify") == 0) {
		r = esc_audit_verify(ctx, st, &rep);
		/* The verification itself is an event, after the chain it checked. */
		esc_audit_outcome(ctx, st, reader ? esc_account_name(reader) : "cli", "auditor", "audit.verify",
				  "chain", r);
		if (r != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		printf("audit trail intact: %lld event(s), every hash and link verified; %lld checkpoint(s)",
		       rep.events, rep.checkpoints);
		if (rep.checkpoints > 0)
			printf(", the newest signing events up to %lld", rep.last_signed);
		printf("\n");
		rc = 0;
		goto out;
	}
	{
		struct esc_audit_filter f = {since, until, actor, act, object, serial, limit};

		if ((r = esc_audit_search(ctx, st, reader, &f, &rows, &n)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
	}
print:
	if (json) {
		rc = cli_json_print(CMD, cli_json_array(rows, n, sizeof(*rows), cli_json_event));
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (strcmp(action, "show") == 0) {
			printf("%lld %s %s (%s) %s %s: %s%s%s\n", rows[i].id, rows[i].at, rows[i].actor, rows[i].role,
			       rows[i].action, rows[i].object, rows[i].outcome, rows[i].details[0] ? " - " : "",
			       rows[i].details);
			continue;
		}
		printf("{\"id\":%lld,", rows[i].id);
		json_str("time", rows[i].at, 0);
		json_str("actor", rows[i].actor, 0);
		json_str("role", rows[i].role, 0);
		json_str("action", rows[i].action, 0);
		json_str("object", rows[i].object, 0);
		json_str("outcome", rows[i].outcome, 0);
		json_str("details", rows[i].details, 1);
		printf("}\n");
	}
	rc = 0;
out:
	free(rows);
	esc_account_free(reader);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
