/*
 * recovery_latency — how long a two-person key recovery takes once it is
 * approved, measured through the library as the service and a KRA's
 * workstation run it:
 *
 *   request   a certificate manager files it (policy: no extra approvals,
 *             so it is approved at once)                 — timed, reported apart
 *   release   the CA token opens the record's storage layer and hands the
 *             inner envelope to the request's KRA (esc_recovery_release)
 *   complete  the KRA, with its card, decrypts, checks the key against the
 *             certificate and gets a PKCS#12 (esc_recovery_complete)
 *
 * release + complete is the latency reported (median and p99), for records
 * already archived (e.g. by est_load), alternating between the KRAs given so
 * each card type is measured.  Run it while p11escrowd is stopped (SoftHSM2:
 * one process per token).  The PKCS#12 made is wiped and dropped.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/kra.h>
#include <p11escrow/pin.h>
#include <p11escrow/recovery.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "bench_util.h"

#define PROG "recovery_latency"
#define AGENTS_MAX 8

struct agent {
	const char *account_name;
	const char *token_uri;
	struct esc_account *account;
	struct esc_token *card;
	char kra[65];
	char key_type[16];
	struct bench_samples total;
};

static void
usage(FILE *f)
{
	fprintf(f, "Usage: " PROG " --manager NAME --agent ACCOUNT=TOKEN_URI [--agent ...]\n"
		   "                        --password-file FILE [--pin-file FILE] [--database CONNINFO]\n"
		   "                        [--module PATH] [--count M] [--subject TEXT]\n\n"
		   "Times M recoveries of archived records: request (certificate manager NAME),\n"
		   "release (CA token) and complete (the KRA account's card, PKCS#12 out), alternating\n"
		   "between the agents given; prints median and p99 of release + complete.\n"
		   "Run it while p11escrowd is stopped.\n\n"
		   "  --manager NAME         a certificate manager account\n"
		   "  --agent ACCOUNT=URI    a KRA account and the PKCS#11 URI of its card (repeatable)\n"
		   "  --password-file FILE   the accounts' password (one for all: a benchmark setup)\n"
		   "  --pin-file FILE        user PIN of the CA token and the cards (default $P11ESCROW_CA_PIN)\n"
		   "  --database CONNINFO    default $P11ESCROW_DATABASE\n"
		   "  --module PATH          PKCS#11 module (default: as recorded, else the build default)\n"
		   "  --count M              recoveries (default 20; at most 100 records are searched)\n"
		   "  --subject TEXT         only records whose subject contains TEXT\n");
}

static int
fail(struct esc_ctx *ctx, const char *what)
{
	fprintf(stderr, PROG ": %s: %s\n", what, esc_ctx_errmsg(ctx));
	return 1;
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"database", required_argument, NULL, 'd'}, {"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'M'},   {"manager", required_argument, NULL, 'm'},
		{"agent", required_argument, NULL, 'a'},    {"password-file", required_argument, NULL, 'P'},
		{"count", required_argument, NULL, 'n'},    {"subject", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0},
	};
	struct agent agents[AGENTS_MAX];
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_keeper *keeper = NULL;
	struct esc_secret *pin = NULL, *password = NULL, *p12pw = NULL;
	struct esc_account *manager = NULL;
	struct esc_record_summary *recs = NULL;
	struct esc_kra *kras = NULL;
	struct bench_samples req_ms = {0}, rel_ms = {0}, cmp_ms = {0}, tot_ms = {0};
	const char *database = getenv("P11ESCROW_DATABASE"), *module = NULL, *pin_file = NULL, *pw_file = NULL;
	const char *manager_name = NULL, *subject = NULL;
	size_t nrecs = 0, nkras = 0, j;
	int nagents = 0, count = 20, c, i, rc = 1;
	char *eq;

	memset(agents, 0, sizeof(agents));
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'd':
			database = optarg;
			break;
		case 'p':
			pin_file = optarg;
			break;
		case 'M':
			module = optarg;
			break;
		case 'm':
			manager_name = optarg;
			break;
		case 'a':
			if (nagents == AGENTS_MAX || (eq = strchr(optarg, '=')) == NULL || eq == optarg) {
				fprintf(stderr, PROG ": --agent ACCOUNT=TOKEN_URI (at most %d)\n", AGENTS_MAX);
				return 2;
			}
			*eq = '\0';
			agents[nagents].account_name = optarg;
			agents[nagents].token_uri = eq + 1;
			nagents++;
			break;
		case 'P':
			pw_file = optarg;
			break;
		case 'n':
			count = (int)bench_parse_long(PROG, "--count", optarg, 1, 100);
			break;
		case 's':
			subject = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || database == NULL || manager_name == NULL || nagents == 0 || pw_file == NULL) {
		usage(stderr);
		return 2;
	}
	(void)!esc_secmem_init();
	if (esc_ctx_new(&ctx) != ESC_OK)
		return 1;
	if (esc_secret_obtain(ctx, pin_file, "P11ESCROW_CA_PIN", NULL, &pin) != ESC_OK ||
	    esc_secret_from_file(ctx, pw_file, &password) != ESC_OK ||
	    esc_secret_new(ctx, "benchmark-p12-password-0001", 27, &p12pw) != ESC_OK) {
		rc = fail(ctx, "secrets");
		goto out;
	}
	/* Everything untimed first: database, the CA token (as the service holds it), logins, cards. */
	if (esc_store_connect(ctx, database, &st) != ESC_OK ||
	    esc_keeper_open(ctx, st, module, pin, &keeper) != ESC_OK) {
		rc = fail(ctx, "database or CA token");
		goto out;
	}
	if (esc_account_login(ctx, st, manager_name, password, &manager) != ESC_OK) {
		rc = fail(ctx, manager_name);
		goto out;
	}
	if (esc_kra_list(ctx, st, &kras, &nkras) != ESC_OK) {
		rc = fail(ctx, "KRAs");
		goto out;
	}
	for (i = 0; i < nagents; i++) {
		struct agent *a = &agents[i];

		if (esc_account_login(ctx, st, a->account_name, password, &a->account) != ESC_OK) {
			rc = fail(ctx, a->account_name);
			goto out;
		}
		for (j = 0; j < nkras; j++)
			if (kras[j].id == esc_account_kra_id(a->account)) {
				snprintf(a->kra, sizeof(a->kra), "%s", kras[j].name);
				snprintf(a->key_type, sizeof(a->key_type), "%s", kras[j].key_type);
			}
		if (a->kra[0] == '\0') {
			fprintf(stderr, PROG ": account '%s' is not bound to a KRA\n", a->account_name);
			goto out;
		}
		if (esc_token_open(ctx, module, a->token_uri, &a->card) != ESC_OK ||
		    esc_token_login(ctx, a->card, pin) != ESC_OK) {
			rc = fail(ctx, a->token_uri);
			goto out;
		}
	}
	if (esc_archive_search(ctx, st, manager, NULL, subject, NULL, &recs, &nrecs) != ESC_OK) {
		rc = fail(ctx, "search");
		goto out;
	}
	if (nrecs < (size_t)count) {
		fprintf(stderr, PROG ": %zu archived record(s)%s%s%s, %d wanted: archive more first (e.g. est_load)\n",
			nrecs, subject ? " with '" : "", subject ? subject : "", subject ? "' in the subject" : "",
			count);
		goto out;
	}

	for (i = 0; i < count; i++) {
		struct agent *a = &agents[i % nagents];
		unsigned char *p12 = NULL;
		size_t p12len = 0;
		long long id;
		double t0, t1, t2, t3;

		t0 = bench_now();
		if (esc_recovery_request(ctx, st, manager, recs[i].id, a->kra, "benchmark: recovery latency", &id) !=
		    ESC_OK) {
			rc = fail(ctx, "request");
			goto out;
		}
		t1 = bench_now();
		if (esc_keeper_release(ctx, keeper, st, id) != ESC_OK) {
			rc = fail(ctx, "release");
			goto out;
		}
		t2 = bench_now();
		if (esc_recovery_complete(ctx, st, a->account, id, a->card, p12pw, &p12, &p12len) != ESC_OK) {
			rc = fail(ctx, "complete");
			goto out;
		}
		t3 = bench_now();
		esc_recovery_p12_free(p12, p12len);
		(void)bench_samples_add(&req_ms, (t1 - t0) * 1e3);
		(void)bench_samples_add(&rel_ms, (t2 - t1) * 1e3);
		(void)bench_samples_add(&cmp_ms, (t3 - t2) * 1e3);
		(void)bench_samples_add(&tot_ms, (t3 - t1) * 1e3);
		(void)bench_samples_add(&a->total, (t3 - t1) * 1e3);
	}
	printf("recovery_latency count=%d p50_ms=%.1f p99_ms=%.1f release_p50_ms=%.1f release_p99_ms=%.1f "
	       "complete_p50_ms=%.1f complete_p99_ms=%.1f request_p50_ms=%.1f\n",
	       count, bench_quantile(&tot_ms, 0.5), bench_quantile(&tot_ms, 0.99), bench_quantile(&rel_ms, 0.5),
	       bench_quantile(&rel_ms, 0.99), bench_quantile(&cmp_ms, 0.5), bench_quantile(&cmp_ms, 0.99),
	       bench_quantile(&req_ms, 0.5));
	for (i = 0; i < nagents; i++)
		printf("recovery_latency agent=%s kra=%s kra_key=%s count=%zu p50_ms=%.1f p99_ms=%.1f\n",
		       agents[i].account_name, agents[i].kra, agents[i].key_type, agents[i].total.n,
		       bench_quantile(&agents[i].total, 0.5), bench_quantile(&agents[i].total, 0.99));
	rc = 0;
out:
	for (i = 0; i < nagents; i++) {
		esc_token_free(agents[i].card);
		esc_account_free(agents[i].account);
		bench_samples_free(&agents[i].total);
	}
	bench_samples_free(&req_ms);
	bench_samples_free(&rel_ms);
	bench_samples_free(&cmp_ms);
	bench_samples_free(&tot_ms);
	free(recs);
	free(kras);
	esc_account_free(manager);
	esc_keeper_free(keeper);
	esc_store_free(st);
	esc_secret_free(p12pw);
	esc_secret_free(password);
	esc_secret_free(pin);
	esc_ctx_free(ctx);
	return rc;
}
