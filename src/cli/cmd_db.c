/*
 * p11escrow db — schema migrations and status.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <p11escrow/setup.h>
#include <p11escrow/store.h>

#include "cli.h"
#include "cli_json.h"

#define CMD "db"

static void
help(void)
{
	printf("Usage: %s " CMD " migrate|status [OPTIONS]\n"
	       "       %s " CMD " status --json [OPTIONS]\n"
	       "       %s " CMD " grant-service ROLE [OPTIONS]\n\n"
	       "  migrate   apply the schema migrations this program carries (idempotent; each in its\n"
	       "            own transaction; a database newer than this program is refused)\n"
	       "  status    print the database's schema version and this program's; --json: as\n"
	       "            {\"database_version\": N, \"program_version\": N, \"current\": true|false},\n"
	       "            printed also when they differ (the exit status says so, as without --json)\n"
	       "  grant-service  give the existing database role ROLE exactly what p11escrowd needs:\n"
	       "            read, insert enrollment, archival, recovery and audit rows, update a\n"
	       "            recovery's progress — never UPDATE, DELETE or TRUNCATE of audit rows.\n"
	       "            Revokes anything else it had; idempotent; later migrations extend it.\n"
	       "            Run as the owner of the tables; create the role first, e.g.\n"
	       "            CREATE ROLE p11escrowd LOGIN; it may be neither a superuser nor the owner.\n\n"
	       "Options:\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string; several servers, e.g.\n"
	       "                             'host=db1,db2 dbname=p11escrow target_session_attrs=read-write',\n"
	       "                             reach whichever is the primary (docs/ha.md)\n"
	       "      --json                 status: " CLI_JSON_HELP "\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG, PROG);
	cli_print_exit_codes();
}

int
db_main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *action;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	enum esc_err r;
	int c, rc, from = 0, to = 0, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:h", longopts, NULL)) != -1) {
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
		case 'j':
			json = 1;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(CMD, "expected one action: migrate, status or grant-service ROLE");
	action = argv[optind];
	if (strcmp(action, "migrate") != 0 && strcmp(action, "status") != 0 && strcmp(action, "grant-service") != 0)
		return cli_usage_error(CMD, "unknown action '%s' (use migrate, status or grant-service ROLE)", action);
	if (strcmp(action, "grant-service") == 0 ? optind + 2 != argc : optind + 1 != argc)
		return cli_usage_error(CMD, "%s",
				       strcmp(action, "grant-service") == 0 ? "grant-service takes one ROLE"
									    : "expected one action");
	if (json && strcmp(action, "status") != 0)
		return cli_usage_error(CMD, "--json goes with status");
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (database != NULL && (rc = cli_set(CMD, ctx, cfg, "database", database)) != 0)
		goto out;
	if ((r = esc_store_connect(ctx, esc_config_get(cfg, "database"), &st)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	if (strcmp(action, "grant-service") == 0) {
		if ((r = esc_setup_grant_service(ctx, st, argv[optind + 1])) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		printf("database role '%s' granted the service's privileges: SELECT; INSERT on enrollment, archival, "
		       "recovery, revocation and audit tables; UPDATE of a recovery's progress and a one-time "
		       "password's use only; no UPDATE, DELETE or TRUNCATE of audit rows\n",
		       argv[optind + 1]);
	} else if (strcmp(action, "migrate") == 0) {
		if ((r = esc_store_migrate(ctx, st, &from, &to)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		if (from == to)
			printf("schema is at version %d: nothing to do\n", to);
		else
			printf("schema migrated from version %d to %d\n", from, to);
	} else {
		if ((r = esc_store_schema_version(ctx, st, &from)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		/* The versions are the answer, also when they differ: printed before the exit status says so. */
		if (json)
			rc = cli_json_print(CMD, json_pack("{s:i, s:i, s:b}", "database_version", from,
							   "program_version", esc_store_known_version(), "current",
							   from == esc_store_known_version()));
		else
			printf("database schema version: %d\nprogram schema version:  %d\n", from,
			       esc_store_known_version());
		if (rc != 0)
			goto out;
		if (from != esc_store_known_version()) {
			r = esc_store_check_schema(ctx, st);
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
	}
	rc = 0;
out:
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
