/*
 * sign_rate — the raw rate of CA signatures with the CA token's signing
 * key: the ceiling of archival enrollment, which costs exactly one such
 * signature each (DESIGN §4).
 *
 * Like p11escrowd's workers, each thread opens its own keeper
 * (esc_keeper_open: one token session per thread, the module loaded once
 * and the login shared) for the CA certificate, and its own session of the
 * CA token for the signing key (the keeper hands out no token), and signs
 * until the time is up:
 *
 *   cert    (default) whole certificates, as issuance makes them:
 *           esc_ca_issue_ee builds an end-entity certificate for a P-256 key
 *           (its SPKI bytes placed as they are, as the keeper process does)
 *           as the "encryption" profile has it (keyAgreement,
 *           emailProtection), signs it on the token (RSA: PKCS#1 v1.5 with
 *           SHA-256) and checks the signature with the CA's public key.
 *   digest  only the token operation: EVP_PKEY_sign of a SHA-256 digest
 *           (RSA: PKCS#1 v1.5, i.e. CKM_RSA_PKCS on the DigestInfo).
 *
 * Run it while p11escrowd is stopped: SoftHSM2 serves one process per token
 * (DESIGN §7).  Prints one line of key=value pairs.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/gate.h>
#include <p11escrow/enroll.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "bench_util.h"

#define PROG "sign_rate"

struct shared {
	const char *database, *module, *key_uri;
	const struct esc_secret *pin;
	int digest;
	struct esc_token_gate *gate; /* meters the token's share, as in the keeper (no bound) */
	pthread_barrier_t ready, go;
	double start, deadline;
};

struct worker {
	struct shared *sh;
	int index;
	pthread_t thread;
	long count;
	int failed;
	double last_done;
	char keyname[32];
	struct bench_samples lat;
};

static void
usage(FILE *f)
{
	fprintf(f, "Usage: " PROG " [--database CONNINFO] [--pin-file FILE] [--module PATH]\n"
		   "                 [--threads N] [--seconds N] [--mode cert|digest]\n\n"
		   "Signatures per second with the CA token's signing key (the one recorded at setup),\n"
		   "N threads each with its own keeper (token session), as p11escrowd's workers have.\n"
		   "Run it while p11escrowd is stopped.\n\n"
		   "  --database CONNINFO  libpq connection string (default: $P11ESCROW_DATABASE)\n"
		   "  --pin-file FILE      the CA token's user PIN (default: $P11ESCROW_CA_PIN)\n"
		   "  --module PATH        PKCS#11 module (default: as recorded, else the build default)\n"
		   "  --threads N          default 2\n"
		   "  --seconds N          default 10\n"
		   "  --mode cert          sign whole certificates as issuance does (default)\n"
		   "  --mode digest        sign SHA-256 digests only (the token operation alone)\n");
}

/* Sign one SHA-256 digest the way X509_sign does for this key type. */
static int
sign_digest(EVP_PKEY *signer, const unsigned char *dgst, unsigned char *sig, size_t *siglen, size_t cap)
{
	EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(signer, NULL);
	int ok;

	*siglen = cap;
	ok = pc != NULL && EVP_PKEY_sign_init(pc) == 1 &&
	     (!EVP_PKEY_is_a(signer, "RSA") || EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1) &&
	     EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 && EVP_PKEY_sign(pc, sig, siglen, dgst, 32) == 1;
	EVP_PKEY_CTX_free(pc);
	return ok ? 0 : -1;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = w->sh;
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_keeper *k = NULL;
	struct esc_token *tok = NULL;
	struct esc_token_key *tk = NULL;
	EVP_PKEY *signer = NULL, *pub = NULL;
	unsigned char *spki = NULL;
	int spkilen = 0;
	X509_NAME *subject = NULL;
	unsigned char dgst[32], sig[1024];
	size_t siglen;

	w->failed = 1;
	if (esc_ctx_new(&ctx) != ESC_OK)
		goto ready;
	esc_ctx_set_token_gate(ctx, sh->gate);
	if (esc_store_connect(ctx, sh->database, &st) != ESC_OK ||
	    esc_keeper_open(ctx, st, sh->module, sh->pin, &k) != ESC_OK ||
	    esc_token_open(ctx, sh->module, sh->key_uri, &tok) != ESC_OK ||
	    esc_token_login(ctx, tok, sh->pin) != ESC_OK || esc_token_find_key(ctx, tok, sh->key_uri, &tk) != ESC_OK ||
	    esc_token_key_private(ctx, tok, tk, &signer) != ESC_OK) {
		fprintf(stderr, PROG ": thread %d: %s\n", w->index, esc_ctx_errmsg(ctx));
		goto ready;
	}
	if ((pub = EVP_EC_gen("P-256")) == NULL || (spkilen = i2d_PUBKEY(pub, &spki)) <= 0 ||
	    esc_name_parse(ctx, "CN=sign-rate,O=p11escrow bench", &subject) != ESC_OK) {
		fprintf(stderr, PROG ": thread %d: cannot make a key and subject\n", w->index);
		goto ready;
	}
	snprintf(w->keyname, sizeof(w->keyname), "%s-%d",
		 EVP_PKEY_get0_type_name(signer) ? EVP_PKEY_get0_type_name(signer) : "?", EVP_PKEY_get_bits(signer));
	memset(dgst, 0x5a, sizeof(dgst));
	w->failed = 0;
ready:
	pthread_barrier_wait(&sh->ready);
	pthread_barrier_wait(&sh->go);
	w->last_done = sh->start;
	while (!w->failed && bench_now() < sh->deadline) {
		double t0 = bench_now(), t1;

		if (sh->digest) {
			struct esc_token_pass pass;
			int bad;

			dgst[w->count % 32]++;
			esc_token_gate_enter(ctx, &pass);
			bad = sign_digest(signer, dgst, sig, &siglen, sizeof(sig)) != 0;
			esc_token_gate_leave(&pass);
			if (bad) {
				fprintf(stderr, PROG ": thread %d: signing failed\n", w->index);
				ERR_print_errors_fp(stderr);
				w->failed = 1;
				break;
			}
		} else {
			struct esc_ee_spec spec;
			X509 *x = NULL;

			memset(&spec, 0, sizeof(spec));
			spec.subject = subject;
			spec.pub = pub;
			/* As the keeper process issues: the key's SPKI bytes as the worker sends them (ca.h). */
			spec.spki = spki;
			spec.spkilen = (size_t)spkilen;
			spec.key_usage = "critical,keyAgreement";
			spec.ext_key_usage = "emailProtection";
			spec.days = 365;
			if (esc_ca_issue_ee(ctx, esc_keeper_ca_cert(k), signer, &spec, &x) != ESC_OK) {
				fprintf(stderr, PROG ": thread %d: %s\n", w->index, esc_ctx_errmsg(ctx));
				w->failed = 1;
				break;
			}
			X509_free(x);
		}
		t1 = bench_now();
		w->count++;
		w->last_done = t1;
		(void)bench_samples_add(&w->lat, (t1 - t0) * 1e3);
	}
	X509_NAME_free(subject);
	EVP_PKEY_free(pub);
	OPENSSL_free(spki);
	EVP_PKEY_free(signer);
	esc_token_key_free(tk);
	esc_token_free(tok);
	esc_keeper_free(k);
	esc_store_free(st);
	esc_ctx_free(ctx);
	return NULL;
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"database", required_argument, NULL, 'd'}, {"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'M'},   {"threads", required_argument, NULL, 'n'},
		{"seconds", required_argument, NULL, 's'},  {"mode", required_argument, NULL, 'm'},
		{"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0},
	};
	struct shared sh;
	struct worker *ws = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_secret *pin = NULL;
	struct bench_samples all = {0};
	const char *pin_file = NULL, *mode = "cert";
	char *uri = NULL, per[256] = "";
	int threads = 2, seconds = 10, c, i, failed = 0, rc = 1;
	long total = 0;
	double end, cpu0, cpu1, secs;
	uint64_t gops = 0, gcpu = 0, gwait = 0;

	memset(&sh, 0, sizeof(sh));
	sh.database = getenv("P11ESCROW_DATABASE");
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'd':
			sh.database = optarg;
			break;
		case 'p':
			pin_file = optarg;
			break;
		case 'M':
			sh.module = optarg;
			break;
		case 'n':
			threads = (int)bench_parse_long(PROG, "--threads", optarg, 1, 64);
			break;
		case 's':
			seconds = (int)bench_parse_long(PROG, "--seconds", optarg, 1, 3600);
			break;
		case 'm':
			mode = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || sh.database == NULL || (strcmp(mode, "cert") != 0 && strcmp(mode, "digest") != 0)) {
		usage(stderr);
		return 2;
	}
	sh.digest = strcmp(mode, "digest") == 0;
	(void)!esc_secmem_init();
	if (esc_ctx_new(&ctx) != ESC_OK)
		return 1;
	if (esc_token_gate_new(ctx, 0, NULL, &sh.gate) != ESC_OK) {
		fprintf(stderr, PROG ": %s\n", esc_ctx_errmsg(ctx));
		goto out;
	}
	if (esc_secret_obtain(ctx, pin_file, "P11ESCROW_CA_PIN", NULL, &pin) != ESC_OK) {
		fprintf(stderr, PROG ": %s\n", esc_ctx_errmsg(ctx));
		goto out;
	}
	sh.pin = pin;
	/* The signing key as recorded at setup (the keeper has no accessor for it: it never hands it out). */
	if ((uri = bench_db_value(sh.database, "SELECT uri FROM token_keys WHERE role = 'ca-sign'")) == NULL)
		goto out;
	sh.key_uri = uri;
	if ((ws = calloc((size_t)threads, sizeof(*ws))) == NULL)
		goto out;
	pthread_barrier_init(&sh.ready, NULL, (unsigned)threads + 1);
	pthread_barrier_init(&sh.go, NULL, (unsigned)threads + 1);
	for (i = 0; i < threads; i++) {
		ws[i].sh = &sh;
		ws[i].index = i;
		if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
			fprintf(stderr, PROG ": cannot start thread %d\n", i);
			exit(1);
		}
	}
	pthread_barrier_wait(&sh.ready);
	cpu0 = bench_cpu();
	sh.start = bench_now();
	sh.deadline = sh.start + seconds;
	pthread_barrier_wait(&sh.go);
	end = sh.start;
	for (i = 0; i < threads; i++) {
		size_t l = strlen(per);

		pthread_join(ws[i].thread, NULL);
		failed |= ws[i].failed;
		total += ws[i].count;
		if (ws[i].last_done > end)
			end = ws[i].last_done;
		(void)bench_samples_merge(&all, &ws[i].lat);
		snprintf(per + l, sizeof(per) - l, "%s%ld", i ? "," : "", ws[i].count);
	}
	cpu1 = bench_cpu();
	if (failed) {
		fprintf(stderr, PROG ": a thread failed (see above)\n");
		goto out;
	}
	secs = end - sh.start;
	esc_token_gate_read(sh.gate, &gops, &gcpu, &gwait);
	printf("sign_rate mode=%s key=%s threads=%d signatures=%ld seconds=%.2f rate=%.1f per_thread=%s p50_ms=%.2f "
	       "p99_ms=%.2f cpu_s=%.2f token_ops=%llu token_cpu_s=%.3f\n",
	       mode, ws[0].keyname, threads, total, secs, secs > 0 ? (double)total / secs : 0.0, per,
	       bench_quantile(&all, 0.5), bench_quantile(&all, 0.99), cpu1 - cpu0, (unsigned long long)gops,
	       (double)gcpu / 1e9);
	rc = 0;
out:
	for (i = 0; ws != NULL && i < threads; i++)
		bench_samples_free(&ws[i].lat);
	free(ws);
	bench_samples_free(&all);
	free(uri);
	esc_secret_free(pin);
	esc_ctx_free(ctx);
	esc_token_gate_free(sh.gate);
	return rc;
}
