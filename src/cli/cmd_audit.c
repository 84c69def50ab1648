/*
 * p11escrow audit — verify, show and export the audit trail.
 */
#include <errno.h>
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
	printf("Usage: %s " CMD " verify [--checkpoint FILE] [OPTIONS]\n"
	       "       %s " CMD " show|export --user NAME [FILTERS] [OPTIONS]\n"
	       "       %s " CMD " checkpoint [--export FILE [--newest]] [OPTIONS]\n\n"
	       "verify  recompute the hash chain of every event, check every checkpoint's signature\n"
	       "        (audit certificate issued by the CA) and that the events it signed are still\n"
	       "        there; name the first event altered, removed, reordered or cut (exit 33).\n"
	       "        --checkpoint FILE: also check a checkpoint kept outside the database (from\n"
	       "        checkpoint --export, or a service log line): its signature by this database's\n"
	       "        audit key (a bad one: exit 33), then that the database holds the event it\n"
	       "        signed with that hash; a database older than it, or with another history up\n"
	       "        to it, was restored from an older backup or rolled back (exit 36).\n"
	       "checkpoint  sign the newest event's hash with the audit key on the CA token (needs\n"
	       "        the CA token PIN: -p FILE, else $P11ESCROW_CA_PIN, else a prompt).\n"
	       "        --export FILE: write the checkpoint to FILE (atomically, mode 0644; no secret)\n"
	       "        to keep off-host; with --newest, the newest existing one, signing none (no PIN).\n"
	       "show    events, oldest first, one per line (auditors and administrators); --json: a\n"
	       "        JSON array of them.\n"
	       "export  the same as JSON lines, for a SIEM.\n"
	       "show, export, checkpoint and verify --checkpoint take --server URL: through the\n"
	       "service's JSON API (no database, no PIN here; checkpoint and verify: administrators\n"
	       "and auditors, the service signs or checks the file).  verify of the whole chain is\n"
	       "--local only.  --local (or $" CLI_LOCAL_ENV "=1) is break-glass, audited as such.\n\n"
	       "Filters:\n"
	       "      --since TIME          events at or after TIME (UTC, e.g. 2026-11-23T12:00:00)\n"
	       "      --until TIME          events at or before TIME\n"
	       "      --actor NAME          events by this account\n"
	       "      --action ACTION       e.g. recovery.release, archive.store, auth.login\n"
	       "      --object OBJECT       e.g. a certificate serial, 'request 4', a KRA or account name\n"
	       "      --serial HEX          events of that certificate: enrollment, archival, revocation,\n"
	       "                            and every step of a recovery of its key\n"
	       "      --limit N             at most N events (default 10000)\n\n"
	       "Checkpoints kept outside the database:\n"
	       "      --checkpoint FILE     verify: check the database against this exported checkpoint\n"
	       "      --export FILE         checkpoint: write the checkpoint signed to FILE\n"
	       "      --newest              checkpoint --export: the newest existing one, sign none\n\n"
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

/* Write an exported checkpoint's text to path and say so. */
static int
write_export(struct esc_ctx *ctx, const char *path, const char *text, long long event)
{
	enum esc_err r;

	if ((r = esc_audit_checkpoint_write(ctx, path, text)) != ESC_OK)
		return cli_fail(CMD, ctx, r);
	printf("checkpoint of event %lld written to %s: keep it off-host\n", event, path);
	return 0;
}

static int
do_checkpoint(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const char *export, int newest)
{
	struct esc_keeper *k = NULL;
	struct esc_audit_anchor a;
	char *text = NULL;
	long long id = 0;
	enum esc_err r = ESC_OK;
	int rc;

	/*
	 * The keeper, as the service has it (setup keeps the audit key on the CA
	 * token): a missing audit key is then the library's clear, audited refusal.
	 */
	if (!newest) {
		if ((rc = cli_open_keeper(CMD, ctx, cfg, st, &k)) != 0)
			return rc;
		if ((r = esc_keeper_checkpoint(ctx, k, st, NULL, 0, 0, &id)) == ESC_OK)
			printf("checkpoint signed: events up to %lld\n", id);
		esc_keeper_free(k);
	}
	if (r == ESC_OK && export != NULL && (r = esc_audit_checkpoint_export(ctx, st, id, 1, &text, &a)) == ESC_OK) {
		rc = write_export(ctx, export, text, a.event);
		free(text);
		return rc;
	}
	return r == ESC_OK ? 0 : cli_fail(CMD, ctx, r);
}

/*
 * checkpoint through the service: it signs with the audit key on its CA
 * token (newest: it only hands out the newest existing checkpoint).
 */
static int
remote_checkpoint(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *user,
		  const char *password_file, const char *export, int newest)
{
	struct cli_http *h = NULL;
	json_t *doc = NULL;
	const char *text;
	int rc;

	if ((rc = cli_http_open(CMD, ctx, server, server_ca, user, password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, newest ? CLI_HTTP_GET : CLI_HTTP_POST, "/audit/checkpoint", NULL, &doc)) != 0)
		goto out;
	if (!newest)
		printf("checkpoint signed: events up to %lld\n", cli_json_int(doc, "event"));
	if (export != NULL) {
		if ((text = json_string_value(json_object_get(doc, "checkpoint"))) == NULL) {
			fprintf(stderr, "%s " CMD ": error: the service sent no checkpoint text\n", PROG);
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
		rc = write_export(ctx, export, text, cli_json_int(doc, "event"));
	}
out:
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

/* A checkpoint file's text (at most ESC_AUDIT_CHECKPOINT_MAX bytes), NUL-terminated; *out malloc'ed. */
static int
read_checkpoint(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "r");
	char *buf = NULL;
	size_t n;
	int rc = 0;

	if (f == NULL) {
		fprintf(stderr, "%s " CMD ": error: cannot open '%s': %s\n", PROG, path, strerror(errno));
		return esc_err_exit_code(ESC_ERR_IO);
	}
	if ((buf = malloc(ESC_AUDIT_CHECKPOINT_MAX + 2)) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	n = fread(buf, 1, ESC_AUDIT_CHECKPOINT_MAX + 1, f);
	if (ferror(f)) {
		fprintf(stderr, "%s " CMD ": error: cannot read '%s'\n", PROG, path);
		rc = esc_err_exit_code(ESC_ERR_IO);
		goto out;
	}
	if (n > ESC_AUDIT_CHECKPOINT_MAX) {
		fprintf(stderr, "%s " CMD ": error: '%s' is larger than %d bytes: not a checkpoint\n", PROG, path,
			ESC_AUDIT_CHECKPOINT_MAX);
		rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	buf = NULL; /* transferred */
out:
	free(buf);
	fclose(f);
	return rc;
}

static void
print_verified(long long events, long long checkpoints, long long last_signed)
{
	printf("audit trail intact: %lld event(s), every hash and link verified; %lld checkpoint(s)", events,
	       checkpoints);
	if (checkpoints > 0)
		printf(", the newest signing events up to %lld", last_signed);
	printf("\n");
}

static void
print_anchor(long long event, const char *at, long long newest)
{
	printf("checkpoint of %s verified: signed by the audit key, and the database holds event %lld with the hash "
	       "it signed (newest event %lld): not rolled back\n",
	       at, event, newest);
}

/* verify --checkpoint through the service: it checks the checkpoint file against its database. */
static int
remote_verify(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *const client[2],
	      const char *user, const char *password_file, const char *checkpoint)
{
	struct cli_http *h = NULL;
	json_t *doc = NULL, *body = NULL;
	char *text = NULL, at[40];
	size_t len = 0;
	int rc;

	if ((rc = read_checkpoint(checkpoint, &text, &len)) != 0)
		return rc;
	if ((body = json_pack("{s:s}", "checkpoint", text)) == NULL) {
		fprintf(stderr, "%s " CMD ": error: '%s' is not a checkpoint (not text)\n", PROG, checkpoint);
		rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
		goto out;
	}
	if ((rc = cli_http_open_cert(CMD, ctx, server, server_ca, user, password_file, client[0], client[1], &h)) !=
		    0 ||
	    (rc = cli_http_call(h, CLI_HTTP_POST, "/audit/verify", body, &doc)) != 0)
		goto out;
	cli_json_copy(at, sizeof(at), doc, "time");
	print_anchor(cli_json_int(doc, "event"), at, cli_json_int(doc, "newest"));
out:
	json_decref(body);
	json_decref(doc);
	cli_http_free(h);
	free(text);
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
		OPT_JSON,
		OPT_CHECKPOINT,
		OPT_EXPORT,
		OPT_NEWEST
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
		{"checkpoint", required_argument, NULL, OPT_CHECKPOINT},
		{"export", required_argument, NULL, OPT_EXPORT},
		{"newest", no_argument, NULL, OPT_NEWEST},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *action;
	const char *pin_file = NULL, *module = NULL, *server = NULL, *server_ca = NULL;
	const char *client[2] = {NULL, NULL};
	const char *checkpoint = NULL, *export = NULL;
	char *anchor_text = NULL;
	size_t anchor_len = 0;
	const char *since = NULL, *until = NULL, *actor = NULL, *act = NULL, *object = NULL, *serial = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *reader = NULL;
	struct esc_audit_row *rows = NULL;
	struct esc_audit_report rep;
	size_t n = 0, i, limit = 10000;
	enum esc_err r;
	int c, rc, nlimit, local = 0, json = 0, newest = 0;

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
		case OPT_CHECKPOINT:
			checkpoint = optarg;
			break;
		case OPT_EXPORT:
			export = optarg;
			break;
		case OPT_NEWEST:
			newest = 1;
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
	if (checkpoint != NULL && strcmp(action, "verify") != 0)
		return cli_usage_error(CMD, "--checkpoint FILE is verify's");
	if ((export != NULL || newest) && strcmp(action, "checkpoint") != 0)
		return cli_usage_error(CMD, "--export and --newest are checkpoint's");
	if (newest && export == NULL)
		return cli_usage_error(CMD, "--newest exports the newest checkpoint: give --export FILE");
	if (server != NULL && strcmp(action, "verify") == 0 && checkpoint == NULL)
		return cli_usage_error(CMD, "verify reads the whole chain from the database: use --local (through "
					    "--server only --checkpoint FILE is checked)");
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (server != NULL && strcmp(action, "checkpoint") == 0) {
		rc = remote_checkpoint(ctx, server, server_ca, user, password_file, export, newest);
		goto out;
	}
	if (server != NULL && strcmp(action, "verify") == 0) {
		rc = remote_verify(ctx, server, server_ca, client, user, password_file, checkpoint);
		goto out;
	}
	if (checkpoint != NULL && (rc = read_checkpoint(checkpoint, &anchor_text, &anchor_len)) != 0)
		goto out;
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
		rc = do_checkpoint(ctx, cfg, st, export, newest);
		goto out;
	}
	if (user != NULL && (rc = cli_login(CMD, ctx, st, user, password_file, &reader)) != 0)
		goto out;
	if (strcmp(action, "verify") == 0) {
		struct esc_audit_anchor a;

		r = esc_audit_verify(ctx, st, &rep);
		if (r == ESC_OK && anchor_text != NULL)
			r = esc_audit_verify_checkpoint(ctx, st, anchor_text, anchor_len, &a);
		/* The verification itself is an event, after the chain it checked. */
		esc_audit_outcome(ctx, st, reader ? esc_account_name(reader) : "cli", "auditor", "audit.verify",
				  anchor_text != NULL ? "chain and exported checkpoint" : "chain", r);
		if (r != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		print_verified(rep.events, rep.checkpoints, rep.last_signed);
		if (anchor_text != NULL)
			print_anchor(a.event, a.at, a.newest);
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
	free(anchor_text);
	free(rows);
	esc_account_free(reader);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
