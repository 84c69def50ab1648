/*
 * p11escrow rewrap — re-seal archive records (issue #14): today the storage
 * layer, to the current storage key after a rotation.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11escrow/keeper.h>
#include <p11escrow/storage.h>

#include "cli.h"
#include "http_client.h"

#define CMD "rewrap"
#define BAR_WIDTH 30
#define DEFAULT_BATCH 100

static void
help(void)
{
	printf("Usage: %s " CMD " --storage [--batch N] --user ADMIN [OPTIONS]\n\n"
	       "Re-seal every archive record whose outer layer is sealed to an earlier storage key\n"
	       "generation ('p11escrow storage-key rotate') to the current storage key, on the CA token\n"
	       "only: no KRA card is needed and the inner layer is not touched.  Batches of N records\n"
	       "(default %d, at most %d), each one short transaction: records are picked with FOR\n"
	       "UPDATE SKIP LOCKED, so enrollment, recovery and a second job go on meanwhile.  A\n"
	       "record that fails the checks a recovery makes (altered, moved between rows, sealed\n"
	       "for another certificate, its key gone) is reported, audited and left as it was.\n"
	       "Crash-safe: kill it at any moment and run it again; it goes on where it stopped, and\n"
	       "a record's earlier wrap stays valid until its new one has committed.  Each batch is\n"
	       "one audit event (rewrap.storage) with its counts.\n\n"
	       "On a terminal a progress bar shows done/total, records/s and the time left; otherwise\n"
	       "one summary line.  When no record is left under an earlier generation, the earlier\n"
	       "keys may be destroyed on the token: the command says which and how.\n\n"
	       "Exit status: 0 when every record is sealed to the current key; 33 when some records\n"
	       "are damaged and were skipped (listed); 24 when others are still locked by another\n"
	       "job (run again); otherwise the error's code.\n\n"
	       "With --server URL the batches run in the service's keeper, which holds the CA token\n"
	       "(no PIN here).  Straight on the database and the CA token only with --local (or\n"
	       "$" CLI_LOCAL_ENV "=1): break-glass, audited as such, with the CA token's PIN.\n\n"
	       "Options:\n"
	       "      --storage              re-seal the storage layer (the only kind of re-wrap so far)\n"
	       "      --batch N              records per batch (default %d)\n"
	       "      --server URL           the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE       CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --local                break-glass: straight on the database and the CA token (audited)\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string (--local)\n"
	       "  -u, --user NAME            the acting administrator\n"
	       "      --password-file FILE   their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -m, --module MODULE        PKCS#11 module of the CA token (--local)\n"
	       "  -p, --pin-file FILE        CA token PIN (--local; else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "  -h, --help                 this text\n",
	       PROG, DEFAULT_BATCH, ESC_RESEAL_BATCH_MAX, DEFAULT_BATCH);
	cli_print_exit_codes();
}

/* Where batches run: the local keeper, or the service. */
struct job {
	struct esc_ctx *ctx;
	struct esc_store *st;
	struct esc_keeper *k;
	const struct esc_account *a;
	struct cli_http *h;
	size_t batch;
	int tty, bar_shown;
	double start;
	long long done, skipped, total;
};

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
clear_bar(struct job *j)
{
	if (j->bar_shown) {
		printf("\r\033[K");
		fflush(stdout);
		j->bar_shown = 0;
	}
}

static void
draw_bar(struct job *j)
{
	char bar[BAR_WIDTH + 1], eta[32] = "-";
	double secs = now_s() - j->start, rate = secs > 0 ? (double)j->done / secs : 0;
	long long left = j->total - j->done - j->skipped;
	size_t fill = j->total > 0 ? (size_t)((j->done + j->skipped) * BAR_WIDTH / j->total) : BAR_WIDTH;

	if (fill > BAR_WIDTH)
		fill = BAR_WIDTH;
	memset(bar, '#', fill);
	memset(bar + fill, ' ', BAR_WIDTH - fill);
	bar[BAR_WIDTH] = '\0';
	if (rate > 0 && left > 0) {
		long long s = (long long)((double)left / rate + 0.5);

		snprintf(eta, sizeof(eta), "%lldm%02llds", s / 60, s % 60);
	} else if (left <= 0)
		snprintf(eta, sizeof(eta), "0s");
	printf("\r[%s] %lld/%lld re-sealed, %lld skipped, %.0f records/s, ETA %s", bar, j->done, j->total, j->skipped,
	       rate, eta);
	fflush(stdout);
	j->bar_shown = 1;
}

/* One batch: local keeper or POST /storage-keys/reseal.  0 or an exit code (printed). */
static int
one_batch(struct job *j, const char *after, struct esc_reseal_batch *b)
{
	json_t *body = NULL, *doc = NULL, *list;
	char n[16];
	size_t i, len;
	enum esc_err r;
	int rc;

	if (j->h == NULL) {
		if ((r = esc_keeper_reseal(j->ctx, j->k, j->st, j->a, after, j->batch, b)) != ESC_OK) {
			clear_bar(j);
			return cli_fail(CMD, j->ctx, r);
		}
		return 0;
	}
	snprintf(n, sizeof(n), "%zu", j->batch);
	if ((body = json_object()) == NULL || json_object_set_new(body, "batch", json_string(n)) != 0 ||
	    (*after && json_object_set_new(body, "after", json_string(after)) != 0)) {
		json_decref(body);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	rc = cli_http_call(j->h, CLI_HTTP_POST, "/storage-keys/reseal", body, &doc);
	json_decref(body);
	if (rc != 0) {
		clear_bar(j);
		return rc;
	}
	memset(b, 0, sizeof(*b));
	b->resealed = (size_t)cli_json_int(doc, "resealed");
	b->to = (int)cli_json_int(doc, "generation");
	b->from_low = (int)cli_json_int(doc, "from_low");
	b->from_high = (int)cli_json_int(doc, "from_high");
	b->remaining = cli_json_int(doc, "remaining");
	cli_json_copy(b->last, sizeof(b->last), doc, "last");
	list = json_object_get(doc, "skipped");
	if ((len = json_array_size(list)) > 0) {
		if (len > ESC_RESEAL_BATCH_MAX || (b->skips = calloc(len, sizeof(*b->skips))) == NULL) {
			json_decref(doc);
			clear_bar(j);
			fprintf(stderr, "%s %s: error: the service's answer lists too many skipped records\n", PROG,
				CMD);
			return esc_err_exit_code(ESC_ERR_BAD_INPUT);
		}
		for (i = 0; i < len; i++) {
			json_t *e = json_array_get(list, i);
			char code[64];

			cli_json_copy(b->skips[i].id, sizeof(b->skips[i].id), e, "id");
			cli_json_copy(b->skips[i].reason, sizeof(b->skips[i].reason), e, "reason");
			cli_json_copy(code, sizeof(code), e, "code");
			b->skips[i].code = cli_http_error_named(code);
		}
		b->skipped = len;
	}
	json_decref(doc);
	return 0;
}

/*
 * Passes over the records in id order, batch after batch, until none of an
 * earlier generation is left, or those left are the damaged ones this pass
 * skipped, or a pass re-sealed nothing (the rest is another job's).
 * *remaining and *damaged: as the last pass left them.
 */
static int
run(struct job *j, long long *remaining, long long *damaged, int *to)
{
	struct esc_reseal_batch b;
	char after[ESC_RECORD_ID_LEN + 1];
	long long pass_done, pass_skipped;
	size_t i;
	int rc;

	*remaining = 0;
	*damaged = 0;
	for (;;) {
		after[0] = '\0';
		pass_done = pass_skipped = 0;
		for (;;) {
			if ((rc = one_batch(j, after, &b)) != 0)
				return rc;
			*remaining = b.remaining;
			if (b.to > 0)
				*to = b.to;
			for (i = 0; i < b.skipped; i++) {
				clear_bar(j);
				printf("skipped record %s (%s): %s\n", b.skips[i].id, esc_strerror(b.skips[i].code),
				       b.skips[i].reason);
			}
			pass_done += (long long)b.resealed;
			pass_skipped += (long long)b.skipped;
			j->done += (long long)b.resealed;
			j->skipped = pass_skipped;
			/* What is left of the job: done now plus what is still to do. */
			j->total = j->done + b.remaining;
			if (j->tty && b.last[0] != '\0')
				draw_bar(j);
			snprintf(after, sizeof(after), "%s", b.last);
			esc_reseal_batch_clear(&b);
			if (after[0] == '\0')
				break; /* nothing after the last record looked at */
		}
		*damaged = pass_skipped;
		if (*remaining == 0 || *remaining <= pass_skipped || pass_done == 0)
			return 0;
	}
}

static int
finish(struct job *j, struct esc_config *cfg, long long remaining, long long damaged, int to)
{
	struct esc_storage_gen *g = NULL;
	double secs = now_s() - j->start;
	size_t n = 0;
	int rc = 0;

	clear_bar(j);
	printf("re-sealed %lld record(s) to storage key generation %d in %.1f s (%.0f records/s), skipped %lld "
	       "damaged, %lld left under an earlier generation\n",
	       j->done, to, secs, secs > 0 ? (double)j->done / secs : 0.0, damaged, remaining);
	if (remaining > 0 && damaged > 0) {
		fprintf(stderr,
			"%s %s: error: %lld record(s) are damaged and were left as they were (see above and the "
			"audit trail, rewrap.storage)\n",
			PROG, CMD, damaged);
		return esc_err_exit_code(ESC_ERR_TAMPERED);
	}
	if (remaining > 0) {
		fprintf(stderr, "%s %s: error: %lld record(s) are held by another re-seal job: run again\n", PROG, CMD,
			remaining);
		return esc_err_exit_code(ESC_ERR_BUSY);
	}
	/* Every record is on the current key: say which earlier keys nothing needs any more. */
	if (j->h != NULL)
		rc = cli_storage_fetch(j->h, &g, &n);
	else if (esc_storage_list(j->ctx, j->st, &g, &n) != ESC_OK)
		rc = cli_fail(CMD, j->ctx, ESC_ERR_DB);
	if (rc == 0)
		cli_storage_destroy_hint(g, n, esc_config_get(cfg, "module"));
	free(g);
	return rc;
}

int
rewrap_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_SERVER, OPT_SERVER_CA, OPT_LOCAL, OPT_STORAGE, OPT_BATCH };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"module", required_argument, NULL, 'm'},
		{"pin-file", required_argument, NULL, 'p'},
		{"storage", no_argument, NULL, OPT_STORAGE},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *module = NULL;
	const char *pin_file = NULL, *server = NULL, *server_ca = NULL;
	struct esc_config *cfg = NULL;
	struct esc_account *a = NULL;
	struct job j;
	long long remaining = 0, damaged = 0;
	int c, rc, storage = 0, local = 0, batch = DEFAULT_BATCH, to = 0;

	memset(&j, 0, sizeof(j));
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
		case OPT_STORAGE:
			storage = 1;
			break;
		case OPT_BATCH:
			if ((rc = cli_int_option(CMD, "--batch", optarg, 1, ESC_RESEAL_BATCH_MAX, &batch)) != 0)
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
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc)
		return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
	if (!storage)
		return cli_usage_error(CMD, "say what to re-wrap: --storage (re-wrapping the KRA layer is not built "
					    "yet)");
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &j.ctx, &cfg)) != 0)
		goto out;
	j.batch = (size_t)batch;
	j.tty = isatty(STDOUT_FILENO);
	if (server != NULL) {
		if ((rc = cli_http_open(CMD, j.ctx, server, server_ca, user, password_file, &j.h)) != 0)
			goto out;
	} else if ((rc = cli_apply_common(CMD, j.ctx, cfg, database, module, NULL, pin_file)) != 0 ||
		   (rc = cli_open_store_local(CMD, "rewrap --storage", j.ctx, cfg, &j.st)) != 0 ||
		   (rc = cli_login(CMD, j.ctx, j.st, user, password_file, &a)) != 0 ||
		   (rc = cli_open_keeper(CMD, j.ctx, cfg, j.st, &j.k)) != 0)
		goto out;
	j.a = a;
	j.start = now_s();
	if ((rc = run(&j, &remaining, &damaged, &to)) != 0)
		goto out;
	rc = finish(&j, cfg, remaining, damaged, to);
out:
	esc_keeper_free(j.k);
	cli_http_free(j.h);
	esc_account_free(a);
	esc_store_free(j.st);
	esc_config_free(cfg);
	esc_ctx_free(j.ctx);
	return rc;
}
