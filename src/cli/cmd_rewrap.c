/*
 * p11escrow rewrap — re-seal archive records (issue #14): the storage
 * layer to the current storage key after a rotation (--storage), or the
 * KRA layer to the KRA set and threshold of current policy (--kra).  Both
 * run the same batch loop and progress bar; only one batch differs.
 */
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <p11escrow/est.h>
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/rewrap.h>
#include <p11escrow/storage.h>
#include <p11escrow/token.h>

#include "cli.h"
#include "http_client.h"

#define CMD "rewrap"
#define BAR_WIDTH 30
#define DEFAULT_BATCH 100
#define MAX_CARDS 16

static void
help(void)
{
	printf("Usage: %s " CMD " --storage [--batch N] --user ADMIN [OPTIONS]\n"
	       "       %s " CMD " --kra --dry-run --user ADMIN {--local | --server URL} [OPTIONS]\n"
	       "       %s " CMD " --kra --user ADMIN {--local | --server URL} --card URI --card-user KRA_ACCOUNT\n"
	       "               [--card-pin-file FILE] [--card-password-file FILE] [--card ...] [OPTIONS]\n\n"
	       "--storage: re-seal every archive record whose outer layer is sealed to an earlier\n"
	       "storage key generation ('p11escrow storage-key rotate') to the current storage key, on\n"
	       "the CA token only: no KRA card is needed and the inner layer is not touched.\n\n"
	       "--kra: re-wrap every record whose KRA layer is not what current policy would write:\n"
	       "its set holds a retired KRA, or one whose certificate is revoked or expired; its set is\n"
	       "not kra_set_size KRAs; it needs another number of KRAs than kra_threshold; or a member's\n"
	       "recipient form is no longer the KRA's.  --dry-run counts them by reason (no card, no CA\n"
	       "token).  Otherwise each record is opened with the cards given (version 1: one card of\n"
	       "its current set; version 2: as many as its threshold), sealed again to a new set (its\n"
	       "valid members kept, the rest drawn at random as archival does) at the current\n"
	       "threshold and to the current storage key, and its row replaced.  Dual control: ADMIN\n"
	       "is an administrator, each card comes with its KRA account's login, all distinct; the\n"
	       "administrator is never one of the KRAs.  A record the cards cannot open is skipped and\n"
	       "listed with the KRAs it needs.  Through the service (--server) from the workstation\n"
	       "that holds the cards: each card's KRA account logs in on its own session, the\n"
	       "service's keeper opens each record's outer layer and the service chooses the new set,\n"
	       "the cards here open the inner layer and seal it again to that set, and the service\n"
	       "checks whom the new layer is sealed to before it seals the outer layer and replaces\n"
	       "the row (a record changed meanwhile is offered again).\n\n"
	       "Both: batches of N records (default %d, at most %d), each one short transaction:\n"
	       "records are picked with FOR UPDATE SKIP LOCKED, so enrollment, recovery and a second\n"
	       "job go on meanwhile.  A record that fails the checks a recovery makes (altered, moved\n"
	       "between rows, sealed for another certificate, its key gone) is reported, audited and\n"
	       "left as it was.  Crash-safe: kill it at any moment and run it again; it goes on where\n"
	       "it stopped, and a record's earlier wrap stays valid until its new one has committed.\n"
	       "Each batch is one audit event (rewrap.storage, rewrap.kra) with its counts.\n\n"
	       "On a terminal a progress bar shows done/total, records/s and the time left; otherwise\n"
	       "one summary line.  When no record is left under an earlier generation, the earlier\n"
	       "keys may be destroyed on the token: the command says which and how.\n\n"
	       "Exit status: 0 when every record is done; 35 when some records need other KRA cards\n"
	       "(--kra; listed); 33 when some records are damaged and were skipped (listed); 24 when\n"
	       "others are still locked by another job (run again); otherwise the error's code.\n\n"
	       "With --server URL the batches run in the service's keeper, which holds the CA token\n"
	       "(no PIN here).  Straight on the database and the CA token only with\n"
	       "--local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such, with the CA token's PIN.\n\n"
	       "Options:\n"
	       "      --storage              re-seal the storage layer\n"
	       "      --kra                  re-wrap the KRA layer\n"
	       "      --dry-run              --kra: count the records to re-wrap, by reason; change nothing\n"
	       "      --card URI             --kra: a KRA card (repeat for each card); the --card-* options\n"
	       "                             after it are that card's\n"
	       "      --card-user ACCOUNT    the card's KRA account (it logs in: dual control)\n"
	       "      --card-password-file FILE  that account's password (else a prompt)\n"
	       "      --card-pin-file FILE   the card's PIN (else a prompt)\n"
	       "      --card-module MODULE   the card's PKCS#11 module (else --module / the configured one)\n"
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
	       PROG, PROG, PROG, DEFAULT_BATCH, ESC_RESEAL_BATCH_MAX, DEFAULT_BATCH);
	cli_print_exit_codes();
}

/* A KRA card as the options give it: --card URI and the --card-* options after it. */
struct card_opt {
	const char *uri, *user, *pin_file, *password_file, *module;
};

/* Where batches run (the local keeper, the service, the KRA re-wrap job) and how far they are. */
struct job {
	struct esc_ctx *ctx;
	struct esc_store *st;
	struct esc_keeper *k;
	const struct esc_account *a;
	struct cli_http *h;
	struct esc_rewrap_job *rj;
	/* One batch of the job: 0 or an exit code (printed). */
	int (*batch)(struct job *j, const char *after, struct esc_reseal_batch *b);
	const char *verb; /* "re-sealed", "re-wrapped" */
	size_t batch_size;
	int tty, bar_shown;
	double start;
	long long done, skipped, total, needs_cards;
	/* --kra --server: each card's KRA account on its own session, the cards, their options. */
	struct cli_http *kra_h[MAX_CARDS];
	struct esc_token *card_tok[MAX_CARDS];
	const struct card_opt *co;
	size_t ncards;
	int cards_ready;
	long fault_hits; /* test builds: commits reached */
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
	printf("\r[%s] %lld/%lld %s, %lld skipped, %.0f records/s, ETA %s", bar, j->done, j->total, j->verb, j->skipped,
	       rate, eta);
	fflush(stdout);
	j->bar_shown = 1;
}

/* One batch of --storage: local keeper or POST /storage-keys/reseal.  0 or an exit code (printed). */
static int
storage_batch(struct job *j, const char *after, struct esc_reseal_batch *b)
{
	json_t *body = NULL, *doc = NULL, *list;
	char n[16];
	size_t i, len;
	enum esc_err r;
	int rc;

	if (j->h == NULL) {
		if ((r = esc_keeper_reseal(j->ctx, j->k, j->st, j->a, after, j->batch_size, b)) != ESC_OK) {
			clear_bar(j);
			return cli_fail(CMD, j->ctx, r);
		}
		return 0;
	}
	snprintf(n, sizeof(n), "%zu", j->batch_size);
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

/* One batch of --kra: the library's, with the cards of the job.  0 or an exit code (printed). */
static int
kra_batch(struct job *j, const char *after, struct esc_reseal_batch *b)
{
	enum esc_err r;

	if ((r = esc_rewrap_kra_batch(j->ctx, j->rj, after, j->batch_size, b)) != ESC_OK) {
		clear_bar(j);
		return cli_fail(CMD, j->ctx, r);
	}
	return 0;
}

/* ---- --kra --server: the workstation's end of the batch protocol (docs/api.md, /rewrap/kra/...) ---- */

/* The largest commit body sent at once: well under the service's max_body (64 KiB by default). */
#define COMMIT_CHUNK (40 * 1024)

/*
 * Test builds: P11ESCROW_FAULT_KILL=rewrap-kra-server-commit kills the
 * CLI before it sends a commit, the first time or, with
 * P11ESCROW_FAULT_KILL_SKIP=N, after N commits went out (rewrap_kra_server.sh).
 */
static void
fault_kill(struct job *j, const char *point)
{
#ifdef ESC_TEST_HOOKS
	const char *f = getenv("P11ESCROW_FAULT_KILL"), *skip = getenv("P11ESCROW_FAULT_KILL_SKIP");

	if (f != NULL && strcmp(f, point) == 0 && j->fault_hits++ >= (skip != NULL ? strtol(skip, NULL, 10) : 0))
		raise(SIGKILL);
#else
	(void)j;
	(void)point;
#endif
}

/* The service answered something this end cannot use: said, and BAD_INPUT's exit code. */
static int
bad_answer(const char *what)
{
	fprintf(stderr, "%s %s: error: the service's answer has no valid %s\n", PROG, CMD, what);
	return esc_err_exit_code(ESC_ERR_BAD_INPUT);
}

/* A base64 JSON string, decoded (free()).  0 or an exit code (printed). */
static int
b64_of(struct esc_ctx *ctx, const json_t *v, const char *what, unsigned char **out, size_t *len)
{
	const char *t = json_string_value(v);

	if (t == NULL || esc_b64_decode_max(ctx, t, strlen(t), 1024 * 1024, out, len) != ESC_OK)
		return bad_answer(what);
	return 0;
}

/* A base64 DER certificate of a JSON answer (X509_free), NULL if it is none (printed). */
static X509 *
cert_of(struct esc_ctx *ctx, const json_t *v, const char *what)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	size_t len = 0;
	X509 *x = NULL;

	if (b64_of(ctx, v, what, &der, &len) != 0)
		return NULL;
	p = der;
	if ((x = d2i_X509(NULL, &p, (long)len)) == NULL || p != der + len) {
		X509_free(x);
		x = NULL;
		bad_answer(what);
	}
	ERR_clear_error();
	free(der);
	return x;
}

/*
 * The cards the service names (its first answer): each given to the job
 * with its KRA's certificates.  0 or an exit code (printed).
 */
static int
server_cards(struct job *j, const json_t *cards)
{
	size_t i, c, n;
	enum esc_err r = ESC_OK;
	int rc = 0;

	if (json_array_size(cards) != j->ncards)
		return bad_answer("list of cards");
	for (i = 0; i < j->ncards && r == ESC_OK && rc == 0; i++) {
		const json_t *e = json_array_get(cards, i), *certs = json_object_get(e, "certificates");
		X509 *x[8] = {NULL};
		char kra[65], uri[1024], account[65];

		cli_json_copy(kra, sizeof(kra), e, "kra");
		cli_json_copy(uri, sizeof(uri), e, "key_uri");
		cli_json_copy(account, sizeof(account), e, "account");
		/* In the order the sessions were sent: card i is --card-user i's. */
		if (strcmp(account, j->co[i].user) != 0)
			rc = bad_answer("list of cards (in the order of the --card options)");
		for (n = 0; rc == 0 && n < json_array_size(certs) && n < 8; n++)
			if ((x[n] = cert_of(j->ctx, json_array_get(certs, n), "KRA certificate")) == NULL)
				rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
		if (rc == 0)
			r = esc_rewrap_job_add_remote_card(j->ctx, j->rj, cli_json_int(e, "kra_id"), kra, uri, x, n,
							   j->card_tok[i]);
		for (c = 0; c < 8; c++)
			X509_free(x[c]);
	}
	return rc != 0 ? rc : r != ESC_OK ? cli_fail(CMD, j->ctx, r) : 0;
}

/* One offered record of the service's answer into *o (esc_rewrap_offer_clear).  0 or an exit code (printed). */
static int
offer_of(struct esc_ctx *ctx, const json_t *e, struct esc_rewrap_offer *o)
{
	const json_t *kras = json_object_get(e, "kras");
	char sha[65];
	size_t i;
	int rc;

	memset(o, 0, sizeof(*o));
	cli_json_copy(o->id, sizeof(o->id), e, "id");
	cli_json_copy(sha, sizeof(sha), e, "sha256");
	cli_json_copy(o->old_set, sizeof(o->old_set), e, "old_set");
	o->threshold = (unsigned)cli_json_int(e, "threshold");
	if (strlen(o->id) != ESC_RECORD_ID_LEN || esc_rewrap_hash_parse(sha, strlen(sha), o->sha) != 0 ||
	    json_array_size(kras) < 1 || json_array_size(kras) > ESC_REWRAP_SET_MAX)
		return bad_answer("offer");
	if ((rc = b64_of(ctx, json_object_get(e, "record"), "record", &o->content, &o->contentlen)) != 0)
		return rc;
	if ((o->cert = cert_of(ctx, json_object_get(e, "certificate"), "record certificate")) == NULL)
		return esc_err_exit_code(ESC_ERR_BAD_INPUT);
	for (i = 0; i < json_array_size(kras); i++) {
		const json_t *k = json_array_get(kras, i);

		o->kra_ids[i] = cli_json_int(k, "id");
		cli_json_copy(o->kra_names[i], sizeof(o->kra_names[i]), k, "name");
		cli_json_copy(o->recipients[i], sizeof(o->recipients[i]), k, "recipient");
		if ((o->kra_certs[i] = cert_of(ctx, json_object_get(k, "certificate"), "KRA certificate")) == NULL)
			return esc_err_exit_code(ESC_ERR_BAD_INPUT);
		o->n++;
	}
	return 0;
}

/* {"kra_sessions": [...]} and more: the session token of each card's KRA account. */
static json_t *
sessions_body(struct job *j)
{
	json_t *body = json_object(), *list = json_array();
	size_t i;

	if (body == NULL || list == NULL || json_object_set_new(body, "kra_sessions", list) != 0) {
		json_decref(body);
		return NULL;
	}
	for (i = 0; i < j->ncards; i++)
		if (json_array_append_new(list, json_string(cli_http_session_token(j->kra_h[i]))) != 0) {
			json_decref(body);
			return NULL;
		}
	return body;
}

/* Wipe the session tokens of a body before it is freed. */
static void
body_free(json_t *body)
{
	json_t *list = json_object_get(body, "kra_sessions");
	size_t i;

	for (i = 0; i < json_array_size(list); i++) {
		json_t *t = json_array_get(list, i);

		if (json_is_string(t))
			OPENSSL_cleanse((char *)(uintptr_t)json_string_value(t), json_string_length(t));
	}
	json_decref(body);
}

/* Append a skip (id, code, reason) to b, whose skips have room for cap. */
static void
add_skip(struct esc_reseal_batch *b, size_t cap, const char *id, enum esc_err code, const char *reason)
{
	if (b->skipped == cap)
		return;
	snprintf(b->skips[b->skipped].id, sizeof(b->skips[b->skipped].id), "%s", id);
	b->skips[b->skipped].code = code;
	snprintf(b->skips[b->skipped].reason, sizeof(b->skips[b->skipped].reason), "%s", reason);
	b->skipped++;
}

/* The service's list of records left as they were ({id, code, reason}), appended to b's skips. */
static void
add_skips(struct esc_reseal_batch *b, size_t cap, const json_t *list)
{
	size_t i;

	for (i = 0; i < json_array_size(list); i++) {
		const json_t *e = json_array_get(list, i);
		char id[ESC_RECORD_ID_LEN + 1], code[64], reason[256];

		cli_json_copy(id, sizeof(id), e, "id");
		cli_json_copy(code, sizeof(code), e, "code");
		cli_json_copy(reason, sizeof(reason), e, "reason");
		add_skip(b, cap, id, cli_http_error_named(code), reason);
	}
}

/* POST /rewrap/kra/commit of the lines in text; counts into b.  0 or an exit code (printed). */
static int
commit_chunk(struct job *j, const char *text, int count, struct esc_reseal_batch *b, size_t cap)
{
	json_t *body = sessions_body(j), *doc = NULL;
	int rc;

	if (body == NULL || json_object_set_new(body, "records", json_string(text)) != 0 ||
	    (count && json_object_set_new(body, "count", json_string("1")) != 0)) {
		body_free(body);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	fault_kill(j, "rewrap-kra-server-commit");
	rc = cli_http_call(j->h, CLI_HTTP_POST, "/rewrap/kra/commit", body, &doc);
	body_free(body);
	if (rc != 0)
		return rc;
	b->resealed += (size_t)cli_json_int(doc, "rewrapped");
	b->to = b->from_low = b->from_high = (int)cli_json_int(doc, "generation");
	if (count)
		b->remaining = cli_json_int(doc, "remaining");
	add_skips(b, cap, json_object_get(doc, "refused"));
	json_decref(doc);
	return 0;
}

/* A record the workstation could not re-wrap: the record's fault or the cards', not the job's. */
static int
record_fault(enum esc_err e)
{
	return e == ESC_ERR_TAMPERED || e == ESC_ERR_NOT_RECIPIENT || e == ESC_ERR_BAD_INPUT || e == ESC_ERR_CRYPTO ||
	       e == ESC_ERR_KEY_NOT_FOUND || e == ESC_ERR_MISMATCH || e == ESC_ERR_CARDS_NEEDED;
}

/*
 * One batch of --kra --server: the service's offer, each record re-sealed
 * here with the cards, the results committed (in chunks that fit the
 * service's body limit).  0 or an exit code (printed).
 */
static int
kra_server_batch(struct job *j, const char *after, struct esc_reseal_batch *b)
{
	json_t *body = sessions_body(j), *doc = NULL, *records, *skipped;
	char n[16], *text = NULL, *b64 = NULL;
	size_t i, k, cap, used = 0, textcap = COMMIT_CHUNK + 64 * 1024, b64len = 0;
	int rc = 0, end;
	enum esc_err r = ESC_OK;

	memset(b, 0, sizeof(*b));
	snprintf(n, sizeof(n), "%zu", j->batch_size);
	if (body == NULL || json_object_set_new(body, "batch", json_string(n)) != 0 ||
	    (*after && json_object_set_new(body, "after", json_string(after)) != 0)) {
		body_free(body);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	rc = cli_http_call(j->h, CLI_HTTP_POST, "/rewrap/kra/batch", body, &doc);
	body_free(body);
	if (rc != 0)
		goto out;
	if (!j->cards_ready) {
		if ((rc = server_cards(j, json_object_get(doc, "cards"))) != 0)
			goto out;
		j->cards_ready = 1;
	}
	records = json_object_get(doc, "records");
	skipped = json_object_get(doc, "skipped");
	cap = json_array_size(records) + json_array_size(skipped);
	if (cap > 2 * ESC_RESEAL_BATCH_MAX) {
		rc = bad_answer("batch (too many records)");
		goto out;
	}
	if ((cap > 0 && (b->skips = calloc(cap, sizeof(*b->skips))) == NULL) || (text = malloc(textcap)) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	text[0] = '\0';
	add_skips(b, cap, skipped);
	end = json_is_true(json_object_get(doc, "end"));
	b->remaining = -1;
	for (i = 0; i < json_array_size(records); i++) {
		struct esc_rewrap_offer o;
		unsigned char *content = NULL;
		size_t contentlen = 0, line;

		if ((rc = offer_of(j->ctx, json_array_get(records, i), &o)) != 0) {
			esc_rewrap_offer_clear(&o);
			goto out;
		}
		r = esc_rewrap_offer_seal(j->ctx, j->rj, &o, &content, &contentlen);
		if (r != ESC_OK && record_fault(r)) {
			add_skip(b, cap, o.id, r, esc_ctx_errmsg(j->ctx));
			esc_ctx_clear_error(j->ctx);
			esc_rewrap_offer_clear(&o);
			r = ESC_OK;
			continue;
		}
		if (r == ESC_OK && (r = esc_b64_encode(j->ctx, content, contentlen, &b64, &b64len)) == ESC_OK) {
			/* One line: esc_b64_encode breaks it with CRLF. */
			for (k = line = 0; b64[k] != '\0'; k++)
				if (b64[k] != '\r' && b64[k] != '\n')
					b64[line++] = b64[k];
			b64[line] = '\0';
			if (used > 0 && used + line + 120 > COMMIT_CHUNK) {
				rc = commit_chunk(j, text, 0, b, cap);
				used = 0;
				text[0] = '\0';
			}
			if (rc == 0 && used + line + 120 > textcap) {
				char *t = realloc(text, used + line + 120);

				if (t == NULL)
					rc = esc_err_exit_code(ESC_ERR_NOMEM);
				else {
					text = t;
					textcap = used + line + 120;
				}
			}
			if (rc == 0 && r == ESC_OK) {
				char hex[65];

				esc_rewrap_hash_hex(o.sha, hex);
				used += (size_t)snprintf(text + used, textcap - used, "%s %s %s\n", o.id, hex, b64);
			}
		}
		free(b64);
		b64 = NULL;
		free(content);
		esc_rewrap_offer_clear(&o);
		if (rc != 0 || r != ESC_OK)
			goto out;
	}
	/* The last chunk; at the end of the pass it asks how many are left. */
	if (used > 0 || end)
		rc = commit_chunk(j, text, end, b, cap);
	cli_json_copy(b->last, sizeof(b->last), doc, "last");
out:
	free(text);
	json_decref(doc);
	if (rc == 0 && r != ESC_OK)
		rc = cli_fail(CMD, j->ctx, r);
	if (rc != 0) {
		clear_bar(j);
		esc_reseal_batch_clear(b);
	}
	return rc;
}

/*
 * Passes over the records in id order, batch after batch, until none is
 * left to do, or those left are the ones this pass skipped (damaged, or
 * needing other cards), or a pass did nothing (the rest is another job's).
 * *remaining and *damaged (all skips, j->needs_cards of them for want of
 * cards): as the last pass left them.  A batch that did not count what is
 * left (remaining < 0) leaves the total as it was.
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
		j->needs_cards = 0;
		for (;;) {
			if ((rc = j->batch(j, after, &b)) != 0)
				return rc;
			if (b.to > 0)
				*to = b.to;
			for (i = 0; i < b.skipped; i++) {
				clear_bar(j);
				printf("skipped record %s (%s): %s\n", b.skips[i].id, esc_strerror(b.skips[i].code),
				       b.skips[i].reason);
				j->needs_cards += b.skips[i].code == ESC_ERR_CARDS_NEEDED;
			}
			pass_done += (long long)b.resealed;
			pass_skipped += (long long)b.skipped;
			j->done += (long long)b.resealed;
			j->skipped = pass_skipped;
			/* What is left of the job: done now plus what is still to do. */
			if (b.remaining >= 0) {
				*remaining = b.remaining;
				j->total = j->done + b.remaining;
			} else if (j->total < j->done + j->skipped)
				j->total = j->done + j->skipped;
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

/* The exit for what a --kra job left: cards needed (35), damaged (33), another job's (24), or done. */
static int
finish_kra(struct job *j, long long remaining, long long skipped, int to)
{
	double secs = now_s() - j->start;
	long long damaged_n = skipped - j->needs_cards;
	char details[256];
	enum esc_err r;
	int rc = 0;

	clear_bar(j);
	printf("re-wrapped %lld record(s) in %.1f s (%.0f records/s; outer layer to storage key generation %d), "
	       "skipped %lld needing other cards and %lld damaged, %lld left\n",
	       j->done, secs, secs > 0 ? (double)j->done / secs : 0.0, to, j->needs_cards, damaged_n, remaining);
	if (remaining > 0 && j->needs_cards > 0) {
		fprintf(stderr,
			"%s %s: error: %lld record(s) need the cards of other KRAs (listed above with the KRAs each "
			"needs): run again with them\n",
			PROG, CMD, j->needs_cards);
		rc = esc_err_exit_code(ESC_ERR_CARDS_NEEDED);
	} else if (remaining > 0 && damaged_n > 0) {
		fprintf(stderr,
			"%s %s: error: %lld record(s) are damaged and were left as they were (see above and the "
			"audit trail, rewrap.kra)\n",
			PROG, CMD, damaged_n);
		rc = esc_err_exit_code(ESC_ERR_TAMPERED);
	} else if (remaining > 0) {
		fprintf(stderr, "%s %s: error: %lld record(s) are held by another re-wrap job: run again\n", PROG, CMD,
			remaining);
		rc = esc_err_exit_code(ESC_ERR_BUSY);
	}
	snprintf(details, sizeof(details),
		 "stop: re-wrapped %lld, skipped %lld needing other cards and %lld damaged, %lld left, exit %d",
		 j->done, j->needs_cards, damaged_n, remaining, rc);
	if (j->h == NULL && (r = esc_rewrap_job_event(j->ctx, j->rj, "stop", details)) != ESC_OK && rc == 0)
		rc = cli_fail(CMD, j->ctx, r);
	return rc;
}

/* The plan as the service answers it (GET /rewrap/kra/plan).  0 or an exit code (printed). */
static int
plan_remote(struct job *j, struct esc_rewrap_plan *p)
{
	json_t *doc = NULL, *by;
	int i, rc;

	memset(p, 0, sizeof(*p));
	if ((rc = cli_http_call(j->h, CLI_HTTP_GET, "/rewrap/kra/plan", NULL, &doc)) != 0)
		return rc;
	p->records = cli_json_int(doc, "records");
	p->needed = cli_json_int(doc, "needed");
	p->set_size = (int)cli_json_int(doc, "set_size");
	p->threshold = (unsigned)cli_json_int(doc, "threshold");
	p->usable = (int)cli_json_int(doc, "usable");
	by = json_object_get(doc, "by_reason");
	for (i = 0; i < ESC_REWRAP_NREASONS; i++)
		p->by_reason[i] = cli_json_int(by, esc_rewrap_reason_name((enum esc_rewrap_reason)i));
	json_decref(doc);
	return 0;
}

/* The plan, from the database (--local) or the service.  0 or an exit code (printed). */
static int
plan_get(struct job *j, struct esc_rewrap_plan *p)
{
	enum esc_err r;

	if (j->h != NULL)
		return plan_remote(j, p);
	if ((r = esc_rewrap_kra_plan(j->ctx, j->st, j->a, p)) != ESC_OK)
		return cli_fail(CMD, j->ctx, r);
	return 0;
}

/* --dry-run: what a re-wrap would do, by reason. */
static int
kra_dry_run(struct job *j)
{
	struct esc_rewrap_plan p;
	int i, rc;

	if ((rc = plan_get(j, &p)) != 0)
		return rc;
	printf("policy: %d KRA(s) per record, %u needed to recover; %d KRA(s) usable for a new set\n", p.set_size,
	       p.threshold, p.usable);
	printf("%lld of %lld record(s) to re-wrap\n", p.needed, p.records);
	for (i = 0; i < ESC_REWRAP_NREASONS; i++)
		printf("  %-26s %lld\n", esc_rewrap_reason_name((enum esc_rewrap_reason)i), p.by_reason[i]);
	if (p.usable < p.set_size)
		printf("only %d KRA(s) are usable but policy wraps to %d: enroll more before re-wrapping\n", p.usable,
		       p.set_size);
	return 0;
}

/* Open card co and log it in with its PIN (file, else a prompt). */
static enum esc_err
open_card(struct job *j, struct esc_config *cfg, const struct card_opt *co, struct esc_token **tok)
{
	struct esc_secret *pin = NULL;
	char prompt[200];
	enum esc_err r;

	snprintf(prompt, sizeof(prompt), "PIN of the card of KRA account '%s': ", co->user);
	if ((r = esc_token_open(j->ctx, co->module ? co->module : esc_config_get(cfg, "module"), co->uri, tok)) ==
		    ESC_OK &&
	    (r = esc_secret_obtain(j->ctx, co->pin_file, NULL, prompt, &pin)) == ESC_OK)
		r = esc_token_login(j->ctx, *tok, pin);
	esc_secret_free(pin);
	return r;
}

/*
 * Open each card, log it in, log its KRA account in and give both to the
 * job; the tokens and accounts are kept in toks/accts (the caller frees
 * them).  0 or an exit code (printed).
 */
static int
kra_cards(struct job *j, struct esc_config *cfg, const struct card_opt *co, size_t n, struct esc_token **toks,
	  struct esc_account **accts)
{
	struct esc_secret *pw = NULL;
	char prompt[200];
	size_t i;
	enum esc_err r = ESC_OK;

	for (i = 0; i < n && r == ESC_OK; i++) {
		snprintf(prompt, sizeof(prompt), "Password of KRA account '%s': ", co[i].user);
		if ((r = esc_secret_obtain(j->ctx, co[i].password_file, NULL, prompt, &pw)) != ESC_OK ||
		    (r = esc_account_login(j->ctx, j->st, co[i].user, pw, &accts[i])) != ESC_OK)
			break;
		esc_secret_free(pw);
		pw = NULL;
		if ((r = open_card(j, cfg, &co[i], &toks[i])) != ESC_OK)
			break;
		r = esc_rewrap_job_add_card(j->ctx, j->rj, accts[i], toks[i]);
	}
	esc_secret_free(pw);
	return r == ESC_OK ? 0 : cli_fail(CMD, j->ctx, r);
}

/*
 * --kra --server: each card's KRA account logs in on its own session (its
 * token goes with every batch: the service resumes it, dual control as
 * locally) and each card with its PIN; the job is the workstation's.  0 or
 * an exit code (printed).
 */
static int
kra_server_setup(struct job *j, struct esc_config *cfg, const struct card_opt *co, size_t n, const char *server,
		 const char *server_ca)
{
	json_t *who = NULL;
	size_t i;
	enum esc_err r;
	int rc;

	j->co = co;
	j->ncards = n;
	j->batch = kra_server_batch;
	for (i = 0; i < n; i++) {
		if ((rc = cli_http_open(CMD, j->ctx, server, server_ca, co[i].user, co[i].password_file,
					&j->kra_h[i])) != 0 ||
		    (rc = cli_http_call(j->kra_h[i], CLI_HTTP_GET, "/whoami", NULL, &who)) != 0)
			return rc;
		json_decref(who);
		who = NULL;
		if (cli_http_session_token(j->kra_h[i]) == NULL) {
			fprintf(stderr, "%s %s: error: the service opened no session for KRA account '%s'\n", PROG, CMD,
				co[i].user);
			return esc_err_exit_code(ESC_ERR_STATE);
		}
		if ((r = open_card(j, cfg, &co[i], &j->card_tok[i])) != ESC_OK)
			return cli_fail(CMD, j->ctx, r);
	}
	if ((r = esc_rewrap_job_new_remote(j->ctx, &j->rj)) != ESC_OK)
		return cli_fail(CMD, j->ctx, r);
	return 0;
}

/* --kra: the plan, or the job with its cards to the end, here (--local) or through the service. */
static int
rewrap_kra(struct job *j, struct esc_config *cfg, const struct card_opt *co, size_t ncards, int dry_run,
	   const char *server, const char *server_ca)
{
	struct esc_token *ca = NULL, *toks[MAX_CARDS] = {NULL};
	struct esc_account *accts[MAX_CARDS] = {NULL};
	struct esc_rewrap_plan p;
	long long remaining = 0, skipped = 0;
	char details[160];
	enum esc_err r;
	size_t i;
	int rc, to = 0;

	if (dry_run)
		return kra_dry_run(j);
	if (j->h != NULL)
		rc = kra_server_setup(j, cfg, co, ncards, server, server_ca);
	else if ((rc = cli_open_ca_token(CMD, j->ctx, cfg, j->st, "storage", NULL, &ca)) == 0)
		rc = (r = esc_rewrap_job_new(j->ctx, j->st, j->a, ca, &j->rj)) != ESC_OK
			     ? cli_fail(CMD, j->ctx, r)
			     : kra_cards(j, cfg, co, ncards, toks, accts);
	if (rc != 0 || (rc = plan_get(j, &p)) != 0)
		goto out;
	/* Through the service each batch is audited there; the job's start and stop are the local job's. */
	snprintf(details, sizeof(details), "start: %lld of %lld record(s) to re-wrap; policy %d KRA(s), %u needed",
		 p.needed, p.records, p.set_size, p.threshold);
	if (j->h == NULL && (r = esc_rewrap_job_event(j->ctx, j->rj, "start", details)) != ESC_OK) {
		rc = cli_fail(CMD, j->ctx, r);
		goto out;
	}
	j->total = p.needed;
	j->start = now_s();
	if ((rc = run(j, &remaining, &skipped, &to)) != 0) {
		snprintf(details, sizeof(details), "stop: failed after %lld re-wrapped (exit %d)", j->done, rc);
		if (j->h == NULL && esc_rewrap_job_event(j->ctx, j->rj, "stop", details) != ESC_OK)
			esc_ctx_clear_error(j->ctx);
		goto out;
	}
	rc = finish_kra(j, remaining, skipped, to);
out:
	esc_rewrap_job_free(j->rj);
	j->rj = NULL;
	for (i = 0; i < MAX_CARDS; i++) {
		esc_token_free(toks[i]);
		esc_account_free(accts[i]);
		esc_token_free(j->card_tok[i]);
		cli_http_free(j->kra_h[i]);
		j->card_tok[i] = NULL;
		j->kra_h[i] = NULL;
	}
	esc_token_free(ca);
	return rc;
}

int
rewrap_main(int argc, char *argv[])
{
	enum {
		OPT_PASSWORD = 256,
		OPT_SERVER,
		OPT_SERVER_CA,
		OPT_LOCAL,
		OPT_STORAGE,
		OPT_KRA,
		OPT_DRY_RUN,
		OPT_BATCH,
		OPT_CARD,
		OPT_CARD_USER,
		OPT_CARD_PIN,
		OPT_CARD_PASSWORD,
		OPT_CARD_MODULE,
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"module", required_argument, NULL, 'm'},
		{"pin-file", required_argument, NULL, 'p'},
		{"storage", no_argument, NULL, OPT_STORAGE},
		{"kra", no_argument, NULL, OPT_KRA},
		{"dry-run", no_argument, NULL, OPT_DRY_RUN},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"card", required_argument, NULL, OPT_CARD},
		{"card-user", required_argument, NULL, OPT_CARD_USER},
		{"card-pin-file", required_argument, NULL, OPT_CARD_PIN},
		{"card-password-file", required_argument, NULL, OPT_CARD_PASSWORD},
		{"card-module", required_argument, NULL, OPT_CARD_MODULE},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *module = NULL;
	const char *pin_file = NULL, *server = NULL, *server_ca = NULL, **slot;
	struct card_opt cards[MAX_CARDS];
	struct esc_config *cfg = NULL;
	struct esc_account *a = NULL;
	struct job j;
	long long remaining = 0, damaged = 0;
	size_t ncards = 0, i;
	int c, rc, storage = 0, kra = 0, dry_run = 0, local = 0, batch = DEFAULT_BATCH, to = 0;

	memset(&j, 0, sizeof(j));
	memset(cards, 0, sizeof(cards));
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
		case OPT_KRA:
			kra = 1;
			break;
		case OPT_DRY_RUN:
			dry_run = 1;
			break;
		case OPT_BATCH:
			if ((rc = cli_int_option(CMD, "--batch", optarg, 1, ESC_RESEAL_BATCH_MAX, &batch)) != 0)
				return rc;
			break;
		case OPT_CARD:
			if (ncards == MAX_CARDS)
				return cli_usage_error(CMD, "at most %d --card", MAX_CARDS);
			cards[ncards++].uri = optarg;
			break;
		case OPT_CARD_USER:
		case OPT_CARD_PIN:
		case OPT_CARD_PASSWORD:
		case OPT_CARD_MODULE:
			/* Each --card-* option belongs to the --card before it, once. */
			if (ncards == 0)
				return cli_usage_error(CMD, "'%s' comes after the --card URI it belongs to",
						       argv[optind - 1]);
			slot = c == OPT_CARD_USER	? &cards[ncards - 1].user
			       : c == OPT_CARD_PIN	? &cards[ncards - 1].pin_file
			       : c == OPT_CARD_PASSWORD ? &cards[ncards - 1].password_file
							: &cards[ncards - 1].module;
			if (*slot != NULL)
				return cli_usage_error(CMD, "'%s' given twice for card '%s'", argv[optind - 1],
						       cards[ncards - 1].uri);
			*slot = optarg;
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
	if (storage == kra)
		return cli_usage_error(CMD, "say what to re-wrap: --storage (the outer layer) or --kra (the KRA "
					    "layer)");
	if (storage && (dry_run || ncards > 0))
		return cli_usage_error(CMD, "--dry-run and --card go with --kra");
	if (kra) {
		if (!dry_run && ncards == 0)
			return cli_usage_error(CMD, "rewrap --kra needs the KRA cards that open the records: --card "
						    "URI --card-user ACCOUNT ... for each (or --dry-run)");
		if (dry_run && ncards > 0)
			return cli_usage_error(CMD, "--dry-run needs no card: it opens nothing");
		for (i = 0; i < ncards; i++) {
			if (cards[i].user == NULL)
				return cli_usage_error(CMD, "card '%s' needs --card-user ACCOUNT (its KRA account)",
						       cards[i].uri);
			/* Through the service a KRA logs in as the CLI's clients do: never with the administrator's $P11ESCROW_PASSWORD. */
			if (server != NULL && cards[i].password_file == NULL && getenv("P11ESCROW_PASSWORD") != NULL)
				return cli_usage_error(CMD,
						       "card '%s' needs --card-password-file with --server while "
						       "$P11ESCROW_PASSWORD (the administrator's) is set",
						       cards[i].uri);
		}
	}
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &j.ctx, &cfg)) != 0)
		goto out;
	j.batch_size = (size_t)batch;
	j.tty = isatty(STDOUT_FILENO);
	j.batch = kra ? kra_batch : storage_batch;
	j.verb = kra ? "re-wrapped" : "re-sealed";
	if (server != NULL) {
		if ((rc = cli_http_open(CMD, j.ctx, server, server_ca, user, password_file, &j.h)) != 0)
			goto out;
	} else if ((rc = cli_apply_common(CMD, j.ctx, cfg, database, module, NULL, pin_file)) != 0 ||
		   (rc = cli_open_store_local(CMD, kra ? "rewrap --kra" : "rewrap --storage", j.ctx, cfg, &j.st)) !=
			   0 ||
		   (rc = cli_login(CMD, j.ctx, j.st, user, password_file, &a)) != 0 ||
		   (!kra && (rc = cli_open_keeper(CMD, j.ctx, cfg, j.st, &j.k)) != 0))
		goto out;
	j.a = a;
	if (kra) {
		rc = rewrap_kra(&j, cfg, cards, ncards, dry_run, server, server_ca);
		goto out;
	}
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
