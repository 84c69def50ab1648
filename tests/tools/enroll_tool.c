/*
 * Test tool: drive the enrollment library functions that have no CLI front
 * end (the service calls them), so tests/integration/enroll.sh can check
 * them against a real SoftHSM2 CA token and PostgreSQL.  Not installed.
 * Exit status: 0, or the p11escrow exit code of the library error.
 *
 *   enroll_tool issue CONNINFO PIN-FILE PROFILE SUBJECT PUB.pem [--key KEY.pem] [--otp NAME]
 *                     [--source client|server] [--out CERT.pem]
 *       esc_enroll_issue; prints "serial HEX record ID" (ID "-" when not archived)
 *   enroll_tool transport CONNINFO PIN-FILE ENVELOPE.der [--expect KEY.pem] [--out KEY.pem]
 *       esc_keeper_open_transport; with --expect, checks it is that key, PKCS#8 byte for byte
 *   enroll_tool transport-seq CONNINFO PIN-FILE KEY.pem ENVELOPE.der:CODE...
 *       one keeper opens each envelope in turn; each must end with exit code CODE (0: and hold KEY)
 *   enroll_tool store-stale CONNINFO
 *       prepared statements of a connection that the server dropped or a schema change altered:
 *       the statement fails once as a transient error (the transaction may be retried), then works
 *   enroll_tool store-pipeline CONNINFO
 *       statements held back for the next round trip (a transaction's BEGIN, esc_store_exec_later):
 *       a held write that fails fails the statement it went with (COMMIT included), the transaction
 *       is rolled back and the session serves the next one; committed and rolled back as told
 *   enroll_tool audit-flood CONNINFO STOP-FILE
 *       append audit events (esc_audit_append, each in its own transaction) as fast as one
 *       connection can until STOP-FILE exists; prints "appended N"; fails on the first error
 *   enroll_tool check-cert CONNINFO CERT.pem         esc_enroll_check_client_cert
 *   enroll_tool client-cert CONNINFO PIN-FILE KEY-USAGE SUBJECT PUB.pem OUT.pem
 *       a TLS client certificate (clientAuth) with keyUsage KEY-USAGE, signed with the CA
 *       key and recorded under profile signing: what no profile issues (a client certificate that
 *       can receive encrypted keys), for testing what the service does with one
 *   enroll_tool otp-check CONNINFO NAME PASSWORD-FILE   esc_otp_check; prints the grant
 *   enroll_tool keygen PROFILE                       esc_profile_generate_key; PEM key on stdout
 *   enroll_tool threads CONNINFO PIN-FILE N M [PROFILE [ENVELOPE.der]]
 *       N threads each open their own keeper (one process, one token) and issue M certificates
 *       (default profile signing; an archival profile archives each key) at the same time; then
 *       thread 0 closes its keeper and the others issue M more.  Every certificate must verify
 *       with the CA certificate.  With ENVELOPE, each round also opens that archival envelope
 *       with the thread's keeper (transport key on the token, concurrently).
 *
 * (The PIN file is read with esc_secret_from_file: mode 0600.)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/envelope.h>
#include <p11escrow/pin.h>
#include <p11escrow/setup.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "store_internal.h"

#define MAX_THREADS 16

static int
fail(struct esc_ctx *ctx, enum esc_err r)
{
	/* One-shot test helper: error paths end at once (see envelope_tool.c). */
	fprintf(stderr, "enroll_tool: %s\n", esc_ctx_errmsg(ctx));
	fflush(NULL);
	_exit(esc_err_exit_code(r));
}

static int
usage(void)
{
	fprintf(stderr, "enroll_tool: bad arguments (see the comment at the top of tests/tools/enroll_tool.c)\n");
	return 2;
}

static EVP_PKEY *
load_key(const char *path, int private)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k = NULL;

	if (f == NULL)
		return NULL;
	k = private ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
	if (k == NULL && !private) {
		/* A private key file names its public key too. */
		rewind(f);
		k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	}
	fclose(f);
	return k;
}

static X509 *
load_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;

	if (f)
		fclose(f);
	return x;
}

static int
write_cert(const char *path, X509 *x)
{
	FILE *f = fopen(path, "w");
	int ok = f != NULL && PEM_write_X509(f, x);

	if (f != NULL && fclose(f) != 0)
		ok = 0;
	return ok;
}

static struct esc_keeper *
open_keeper(struct esc_ctx *ctx, struct esc_store *st, const char *pin_file)
{
	struct esc_secret *pin = NULL;
	struct esc_keeper *k = NULL;
	enum esc_err r;

	if ((r = esc_secret_from_file(ctx, pin_file, &pin)) != ESC_OK ||
	    (r = esc_keeper_open(ctx, st, NULL, pin, &k)) != ESC_OK)
		fail(ctx, r);
	esc_secret_free(pin);
	return k;
}

static int
cmd_issue(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_enroll_request req;
	struct esc_archive_info info;
	struct esc_store *st = NULL;
	struct esc_keeper *k;
	X509_NAME *subject = NULL;
	EVP_PKEY *pub, *key = NULL;
	X509 *cert = NULL;
	const char *out = NULL;
	char actor[128], *serial;
	enum esc_err r;
	int i;

	if (argc < 7)
		return usage();
	memset(&req, 0, sizeof(req));
	req.source = ESC_SOURCE_ENROLL_CLIENT;
	for (i = 7; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--key") == 0) {
			if ((key = load_key(argv[i + 1], 1)) == NULL)
				return usage();
		} else if (strcmp(argv[i], "--otp") == 0) {
			req.otp_name = argv[i + 1];
		} else if (strcmp(argv[i], "--source") == 0) {
			req.source = strcmp(argv[i + 1], "server") == 0 ? ESC_SOURCE_ENROLL_SERVER
									: ESC_SOURCE_ENROLL_CLIENT;
		} else if (strcmp(argv[i], "--out") == 0) {
			out = argv[i + 1];
		} else {
			return usage();
		}
	}
	if (i != argc || (pub = load_key(argv[6], 0)) == NULL)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	k = open_keeper(ctx, st, argv[3]);
	if ((req.profile = esc_profile_find(argv[4])) == NULL) {
		/* An unknown profile goes to the library as it is: its refusal is what is tested. */
		static struct esc_profile unknown;

		unknown.name = argv[4];
		req.profile = &unknown;
	}
	if ((r = esc_name_parse(ctx, argv[5], &subject)) != ESC_OK)
		return fail(ctx, r);
	snprintf(actor, sizeof(actor), "est:%s", req.otp_name ? req.otp_name : "test-tool");
	req.actor = actor;
	req.subject = subject;
	req.pub = pub;
	req.key = key;
	if ((r = esc_enroll_issue(ctx, st, k, &req, &cert, &info)) != ESC_OK)
		return fail(ctx, r);
	if (out != NULL && !write_cert(out, cert)) {
		fprintf(stderr, "enroll_tool: cannot write %s\n", out);
		return 4;
	}
	serial = esc_cert_serial_hex(cert);
	printf("serial %s record %s\n", serial ? serial : "?", info.id[0] ? info.id : "-");
	free(serial);
	X509_free(cert);
	X509_NAME_free(subject);
	EVP_PKEY_free(pub);
	EVP_PKEY_free(key);
	esc_keeper_free(k);
	esc_store_free(st);
	return 0;
}

static int
cmd_client_cert(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_ee_spec spec;
	struct esc_store *st = NULL;
	struct esc_keeper *k;
	struct esc_token *tok = NULL;
	struct esc_token_key *tk = NULL;
	struct esc_secret *pin = NULL;
	X509_NAME *subject = NULL;
	EVP_PKEY *pub, *signer = NULL;
	X509 *cert = NULL;
	char *uri = NULL;
	enum esc_err r;

	if (argc != 8 || (pub = load_key(argv[6], 0)) == NULL)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	k = open_keeper(ctx, st, argv[3]);
	if ((r = esc_name_parse(ctx, argv[5], &subject)) != ESC_OK ||
	    (r = esc_setup_key_uri(ctx, st, "ca-sign", &uri)) != ESC_OK ||
	    /* A client certificate no profile issues (test data): signed with the CA key directly, not by the keeper. */
	    (r = esc_secret_from_file(ctx, argv[3], &pin)) != ESC_OK ||
	    (r = esc_token_open(ctx, NULL, uri, &tok)) != ESC_OK || (r = esc_token_login(ctx, tok, pin)) != ESC_OK ||
	    (r = esc_token_find_key(ctx, tok, uri, &tk)) != ESC_OK ||
	    (r = esc_token_key_private(ctx, tok, tk, &signer)) != ESC_OK)
		return fail(ctx, r);
	memset(&spec, 0, sizeof(spec));
	spec.subject = subject;
	spec.pub = pub;
	spec.key_usage = argv[4];
	spec.ext_key_usage = "clientAuth";
	spec.days = 30;
	if ((r = esc_ca_issue_ee(ctx, esc_keeper_ca_cert(k), signer, &spec, &cert)) != ESC_OK ||
	    (r = esc_store_insert_cert(ctx, st, cert, "signing", NULL)) != ESC_OK)
		return fail(ctx, r);
	if (!write_cert(argv[7], cert)) {
		fprintf(stderr, "enroll_tool: cannot write %s\n", argv[7]);
		return 4;
	}
	X509_free(cert);
	EVP_PKEY_free(signer);
	esc_token_key_free(tk);
	esc_token_free(tok);
	esc_secret_free(pin);
	free(uri);
	X509_NAME_free(subject);
	EVP_PKEY_free(pub);
	esc_keeper_free(k);
	esc_store_free(st);
	return 0;
}

/* PKCS#8 DER of a key, for a byte-for-byte comparison. */
static int
pkcs8_der(EVP_PKEY *k, unsigned char **der)
{
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(k);
	int n = p8 != NULL ? i2d_PKCS8_PRIV_KEY_INFO(p8, der) : -1;

	PKCS8_PRIV_KEY_INFO_free(p8);
	return n;
}

static int
cmd_transport(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	struct esc_keeper *k;
	EVP_PKEY *key = NULL, *expect = NULL;
	unsigned char *buf, *a = NULL, *b = NULL;
	const char *out = NULL;
	size_t n;
	FILE *f;
	enum esc_err r;
	int i, na = 0, nb = 0;

	if (argc < 5)
		return usage();
	for (i = 5; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--expect") == 0 && (expect = load_key(argv[i + 1], 1)) != NULL)
			continue;
		if (strcmp(argv[i], "--out") == 0) {
			out = argv[i + 1];
			continue;
		}
		return usage();
	}
	if (i != argc || (buf = malloc(ESC_ENVELOPE_MAX + 1)) == NULL || (f = fopen(argv[4], "rb")) == NULL)
		return usage(); /* (a one-shot tool: nothing to free before exit) */
	n = fread(buf, 1, ESC_ENVELOPE_MAX + 1, f);
	fclose(f);
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	k = open_keeper(ctx, st, argv[3]);
	if ((r = esc_keeper_open_transport(ctx, k, buf, n, &key)) != ESC_OK)
		return fail(ctx, r);
	if (expect != NULL) {
		if (EVP_PKEY_eq(key, expect) != 1 || (na = pkcs8_der(key, &a)) <= 0 ||
		    (nb = pkcs8_der(expect, &b)) <= 0 || na != nb || memcmp(a, b, (size_t)na) != 0) {
			fprintf(stderr, "enroll_tool: the envelope's key is not the expected one\n");
			return 1;
		}
		printf("the envelope holds the expected key\n");
	}
	if (out != NULL) {
		if ((f = fopen(out, "w")) == NULL || !PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL)) {
			fprintf(stderr, "enroll_tool: cannot write %s\n", out);
			return 4;
		}
		fclose(f);
	}
	printf("opened: %s key\n", EVP_PKEY_get0_type_name(key));
	OPENSSL_clear_free(a, a ? (size_t)na : 0);
	OPENSSL_clear_free(b, b ? (size_t)nb : 0);
	free(buf);
	EVP_PKEY_free(key);
	EVP_PKEY_free(expect);
	esc_keeper_free(k);
	esc_store_free(st);
	return 0;
}

/* Run sql on st: want 0 = must succeed (and, with expect, give that first value), 1 = must fail transiently. */
static int
stale_step(struct esc_ctx *ctx, struct esc_store *st, const char *sql, int nparams, const char *const *v, int want_fail,
	   const char *expect)
{
	PGresult *res = NULL;
	enum esc_err r = esc_store_exec(ctx, st, sql, nparams, v, NULL, NULL, &res);
	int ok;

	if (want_fail)
		ok = r == ESC_ERR_BUSY; /* transient: the caller retries its transaction */
	else
		ok = r == ESC_OK &&
		     (expect == NULL || (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), expect) == 0));
	printf("%s: %s%s%s\n", sql, r == ESC_OK ? "ok" : "error", r == ESC_OK ? "" : " ",
	       r == ESC_OK ? "" : esc_ctx_errmsg(ctx));
	PQclear(res);
	if (!ok)
		fprintf(stderr, "enroll_tool: '%s' did not %s\n", sql,
			want_fail ? "fail transiently" : "succeed as expected");
	return ok ? 0 : 1;
}

/*
 * Prepared statements the server forgot (DEALLOCATE) or whose result
 * columns a schema change altered.  A statement runs unnamed on first use,
 * prepared from its second.  In a transaction the stale statement fails
 * once as transient (its caller retries the transaction), then works;
 * outside one it just works.  "begin"/"rollback" steps open and end a
 * transaction; want 1 = must fail transiently.
 */
static const struct {
	const char *sql;
	int want_fail;
	const char *expect;
} stale_steps[] = {
	{"SELECT $1::int + 1", 0, "42"},
	{"SELECT $1::int + 1", 0, "42"},
	{"DEALLOCATE ALL", 0, NULL},
	{"begin", 0, NULL},
	{"SELECT $1::int + 1", 1, NULL},
	{"rollback", 0, NULL},
	{"SELECT $1::int + 1", 0, "42"},
	{"SELECT $1::int + 1", 0, "42"},
	{"DEALLOCATE ALL", 0, NULL},
	{"SELECT $1::int + 1", 0, "42"},
	{"SELECT $1::int + 1", 0, "42"},
	{"CREATE TEMP TABLE stale_t (a int)", 0, NULL},
	{"INSERT INTO stale_t VALUES (7)", 0, NULL},
	{"SELECT * FROM stale_t", 0, "7"},
	{"SELECT * FROM stale_t", 0, "7"},
	{"ALTER TABLE stale_t ADD COLUMN b int", 0, NULL},
	{"begin", 0, NULL},
	{"SELECT * FROM stale_t", 1, NULL},
	{"rollback", 0, NULL},
	{"SELECT * FROM stale_t", 0, "7"},
	{"SELECT * FROM stale_t", 0, "7"},
	{"ALTER TABLE stale_t ADD COLUMN c int", 0, NULL},
	{"SELECT * FROM stale_t", 0, "7"},
	{"SELECT $1::int + 1", 0, "42"},
};

/* One check of cmd_store_pipeline: got what was wanted?  Says which step failed. */
static int
pipe_check(struct esc_ctx *ctx, const char *step, enum esc_err got, enum esc_err want)
{
	if (got == want)
		return 0;
	fprintf(stderr, "enroll_tool: store-pipeline: %s: %s (%d), wanted %s: %s\n", step, esc_strerror(got), (int)got,
		esc_strerror(want), esc_ctx_errmsg(ctx));
	return 1;
}

/* One check of cmd_store_pipeline: does pipe_t hold want rows?  Says after which step it does not. */
static int
pipe_rows(struct esc_ctx *ctx, struct esc_store *st, const char *after, long want)
{
	PGresult *res = NULL;
	long n = -1;

	if (esc_store_exec(ctx, st, "SELECT count(*) FROM pipe_t", 0, NULL, NULL, NULL, &res) == ESC_OK)
		n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	if (n == want)
		return 0;
	fprintf(stderr, "enroll_tool: store-pipeline: %ld rows after %s, wanted %ld (%s)\n", n, after, want,
		esc_ctx_errmsg(ctx));
	return 1;
}

static int
cmd_store_pipeline(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	const char *one[1] = {"1"}, *two[1] = {"2"};
	static const char ins[] = "INSERT INTO pipe_t VALUES ($1::int)";
	int bad = 0;
	enum esc_err r;

	if (argc != 3)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	bad |= pipe_check(
		ctx, "create",
		esc_store_exec(ctx, st, "CREATE TEMP TABLE pipe_t (a int PRIMARY KEY)", 0, NULL, NULL, NULL, NULL),
		ESC_OK);
	/* A held write committed with the COMMIT: there afterwards. */
	bad |= pipe_check(ctx, "begin 1", esc_store_begin(ctx, st), ESC_OK);
	bad |= pipe_check(ctx, "later 1", esc_store_exec_later(ctx, st, ins, 1, one, NULL, NULL), ESC_OK);
	bad |= pipe_check(ctx, "commit 1", esc_store_commit(ctx, st), ESC_OK);
	bad |= pipe_rows(ctx, st, "the first commit", 1);
	/* A held write that fails (the same key): the COMMIT fails with its error, and the session is clean. */
	bad |= pipe_check(ctx, "begin 2", esc_store_begin(ctx, st), ESC_OK);
	bad |= pipe_check(ctx, "later 2", esc_store_exec_later(ctx, st, ins, 1, two, NULL, NULL), ESC_OK);
	bad |= pipe_check(ctx, "later 2 (taken key)", esc_store_exec_later(ctx, st, ins, 1, one, NULL, NULL), ESC_OK);
	bad |= pipe_check(ctx, "commit 2", esc_store_commit(ctx, st), ESC_ERR_EXISTS);
	if (esc_store_commit_unknown(st)) {
		fprintf(stderr, "enroll_tool: store-pipeline: a refused commit was called unknown\n");
		bad = 1;
	}
	esc_store_rollback(st);
	bad |= pipe_rows(ctx, st, "the refused commit", 1);
	/* A held write that fails reports through the next statement, whatever it is. */
	bad |= pipe_check(ctx, "begin 3", esc_store_begin(ctx, st), ESC_OK);
	bad |= pipe_check(ctx, "later 3 (taken key)", esc_store_exec_later(ctx, st, ins, 1, one, NULL, NULL), ESC_OK);
	bad |= pipe_check(ctx, "select 3", esc_store_exec(ctx, st, "SELECT 1", 0, NULL, NULL, NULL, NULL),
			  ESC_ERR_EXISTS);
	esc_store_rollback(st);
	/* Held back and rolled back: never sent, so nothing was written and nothing is open. */
	bad |= pipe_check(ctx, "begin 4", esc_store_begin(ctx, st), ESC_OK);
	bad |= pipe_check(ctx, "later 4", esc_store_exec_later(ctx, st, ins, 1, two, NULL, NULL), ESC_OK);
	esc_store_rollback(st);
	bad |= pipe_rows(ctx, st, "a rollback", 1);
	/* A BEGIN held back, then a failing first statement: rolled back, the session serves on. */
	bad |= pipe_check(ctx, "begin 5", esc_store_begin(ctx, st), ESC_OK);
	bad |= pipe_check(ctx, "first 5 (taken key)", esc_store_exec(ctx, st, ins, 1, one, NULL, NULL, NULL),
			  ESC_ERR_EXISTS);
	esc_store_rollback(st);
	bad |= pipe_check(ctx, "begin 6", esc_store_begin(ctx, st), ESC_OK);
	bad |= pipe_check(ctx, "first 6", esc_store_exec(ctx, st, ins, 1, two, NULL, NULL, NULL), ESC_OK);
	bad |= pipe_check(ctx, "commit 6", esc_store_commit(ctx, st), ESC_OK);
	bad |= pipe_rows(ctx, st, "the last commit", 2);
	esc_store_free(st);
	return bad;
}

/* A concurrent audit writer at full speed, for the tests of retried transactions. */
static int
cmd_audit_flood(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	struct esc_audit_event ev = {"audit-flood", "test", "test.flood", "chain", "ok", ""};
	unsigned long n = 0;
	enum esc_err r;

	if (argc != 4)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	while (access(argv[3], F_OK) != 0) {
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			return fail(ctx, r);
		n++;
	}
	printf("appended %lu\n", n);
	esc_store_free(st);
	return 0;
}

static int
cmd_store_stale(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	const char *v[1] = {"41"};
	enum esc_err r;
	size_t i;
	int bad = 0;

	if (argc != 3)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	for (i = 0; i < sizeof(stale_steps) / sizeof(stale_steps[0]); i++) {
		const char *sql = stale_steps[i].sql;

		if (strcmp(sql, "begin") == 0) {
			if ((r = esc_store_begin(ctx, st)) != ESC_OK)
				return fail(ctx, r);
		} else if (strcmp(sql, "rollback") == 0) {
			esc_store_rollback(st);
		} else {
			bad |= stale_step(ctx, st, sql, strchr(sql, '$') != NULL ? 1 : 0, v, stale_steps[i].want_fail,
					  stale_steps[i].expect);
		}
	}
	esc_store_free(st);
	return bad;
}

/* Read an envelope file (at most ESC_ENVELOPE_MAX + 1 bytes, so an oversize one stays oversize). */
static unsigned char *
read_envelope(const char *path, size_t *n)
{
	unsigned char *buf = malloc(ESC_ENVELOPE_MAX + 1);
	FILE *f;

	if (buf == NULL || (f = fopen(path, "rb")) == NULL) {
		free(buf);
		return NULL;
	}
	*n = fread(buf, 1, ESC_ENVELOPE_MAX + 1, f);
	fclose(f);
	return buf;
}

/* The keeper keeps state between envelopes (its PKCS#8 decoder): one that failed must not spoil the next. */
static int
cmd_transport_seq(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	struct esc_keeper *k;
	EVP_PKEY *key, *expect;
	unsigned char *buf;
	char path[4096], *colon;
	size_t n;
	enum esc_err r;
	int i, want, got, bad = 0;

	if (argc < 6 || (expect = load_key(argv[4], 1)) == NULL)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK)
		return fail(ctx, r);
	k = open_keeper(ctx, st, argv[3]);
	for (i = 5; i < argc; i++) {
		snprintf(path, sizeof(path), "%s", argv[i]);
		if ((colon = strrchr(path, ':')) == NULL)
			return usage();
		*colon = '\0';
		want = atoi(colon + 1);
		if ((buf = read_envelope(path, &n)) == NULL)
			return usage();
		key = NULL;
		r = esc_keeper_open_transport(ctx, k, buf, n, &key);
		got = r == ESC_OK ? 0 : esc_err_exit_code(r);
		if (r == ESC_OK && EVP_PKEY_eq(key, expect) != 1)
			got = 1;
		printf("%s: %d%s%s\n", path, got, r != ESC_OK ? " " : "", r != ESC_OK ? esc_ctx_errmsg(ctx) : "");
		if (got != want) {
			fprintf(stderr, "enroll_tool: %s ended with %d, not %d\n", path, got, want);
			bad = 1;
		}
		EVP_PKEY_free(key);
		free(buf);
	}
	EVP_PKEY_free(expect);
	esc_keeper_free(k);
	esc_store_free(st);
	return bad;
}

static int
cmd_check_cert(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	X509 *x;
	enum esc_err r;

	if (argc != 4 || (x = load_cert(argv[3])) == NULL)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK ||
	    (r = esc_enroll_check_client_cert(ctx, st, x)) != ESC_OK)
		return fail(ctx, r);
	printf("client certificate accepted\n");
	X509_free(x);
	esc_store_free(st);
	return 0;
}

static int
cmd_otp_check(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	struct esc_secret *pw = NULL;
	struct esc_otp_grant g;
	enum esc_err r;

	if (argc != 5)
		return usage();
	if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK ||
	    (r = esc_secret_from_file(ctx, argv[4], &pw)) != ESC_OK ||
	    (r = esc_otp_check(ctx, st, argv[3], pw, &g)) != ESC_OK)
		return fail(ctx, r);
	printf("name %s\nsubject %s\nprofile %s\n", g.name, g.subject, g.profile);
	esc_secret_free(pw);
	esc_store_free(st);
	return 0;
}

static int
cmd_keygen(struct esc_ctx *ctx, int argc, char *argv[])
{
	const struct esc_profile *p;
	EVP_PKEY *k = NULL;
	enum esc_err r;

	if (argc != 3 || (p = esc_profile_find(argv[2])) == NULL)
		return usage();
	if ((r = esc_profile_generate_key(ctx, p, &k)) != ESC_OK)
		return fail(ctx, r);
	PEM_write_PrivateKey(stdout, k, NULL, NULL, 0, NULL, NULL);
	EVP_PKEY_free(k);
	return 0;
}

struct worker {
	pthread_t thread;
	int index, rounds;
	const char *conninfo, *pin_file;
	const struct esc_profile *profile;
	const unsigned char *env;
	size_t envlen;
	pthread_barrier_t *barrier;
	X509 *ca;
	int issued, verified, retries;
	enum esc_err err;
	char msg[512];
};

static int
issue_some(struct worker *w, struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, int n)
{
	struct esc_enroll_request req;
	X509_NAME *name = NULL;
	EVP_PKEY *key;
	X509 *cert;
	char subject[64], actor[32];
	int i;

	for (i = 0; i < n; i++) {
		snprintf(subject, sizeof(subject), "CN=thread %d cert %d,O=Example", w->index, w->issued);
		snprintf(actor, sizeof(actor), "est:thread-%d", w->index);
		if ((key = EVP_EC_gen("P-256")) == NULL || (w->err = esc_name_parse(ctx, subject, &name)) != ESC_OK)
			return -1;
		memset(&req, 0, sizeof(req));
		req.profile = w->profile;
		req.actor = actor;
		req.subject = name;
		req.pub = key;
		req.key = w->profile->archival ? key : NULL;
		req.source = ESC_SOURCE_ENROLL_CLIENT;
		w->err = esc_enroll_issue(ctx, st, k, &req, &cert, NULL);
		X509_NAME_free(name);
		EVP_PKEY_free(key);
		if (w->err != ESC_OK)
			return -1;
		w->issued++;
		if (X509_verify(cert, X509_get0_pubkey(w->ca)) == 1)
			w->verified++;
		X509_free(cert);
		if (w->env != NULL) {
			EVP_PKEY *opened = NULL;

			if ((w->err = esc_keeper_open_transport(ctx, k, w->env, w->envlen, &opened)) != ESC_OK)
				return -1;
			EVP_PKEY_free(opened);
		}
	}
	return 0;
}

/* Counts the transactions that lost a race and were retried (the library logs each). */
static void
count_retries(void *arg, enum esc_log_level level, const char *msg)
{
	struct worker *w = arg;

	if (strstr(msg, "retrying") != NULL)
		w->retries++;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_secret *pin = NULL;
	struct esc_keeper *k = NULL;
	int ok;

	/* Each worker as the service has it: its own context, connection and keeper. */
	if (esc_ctx_new(&ctx) != ESC_OK)
		return NULL;
	esc_ctx_set_log(ctx, count_retries, w);
	ok = (w->err = esc_store_connect(ctx, w->conninfo, &st)) == ESC_OK &&
	     (w->err = esc_secret_from_file(ctx, w->pin_file, &pin)) == ESC_OK &&
	     (w->err = esc_keeper_open(ctx, st, NULL, pin, &k)) == ESC_OK;
	pthread_barrier_wait(w->barrier); /* every keeper open at once */
	if (ok)
		ok = issue_some(w, ctx, st, k, w->rounds) == 0;
	pthread_barrier_wait(w->barrier);
	if (w->index == 0) {
		esc_keeper_free(k); /* the others must keep working */
		k = NULL;
	}
	pthread_barrier_wait(w->barrier);
	if (ok && w->index != 0)
		ok = issue_some(w, ctx, st, k, w->rounds) == 0;
	if (!ok && ctx != NULL)
		snprintf(w->msg, sizeof(w->msg), "%s", esc_ctx_errmsg(ctx));
	esc_keeper_free(k);
	esc_secret_free(pin);
	esc_store_free(st);
	esc_ctx_free(ctx);
	return NULL;
}

static int
cmd_threads(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct worker w[MAX_THREADS];
	pthread_barrier_t barrier;
	struct esc_store *st = NULL;
	struct esc_keeper *k;
	int n, m, i, total = 0, verified = 0, rc = 0;

	const struct esc_profile *profile = esc_profile_find(argc >= 7 ? argv[6] : "signing");
	unsigned char *env = NULL;
	size_t envlen = 0;
	FILE *f;

	if (argc < 6 || argc > 8 || profile == NULL || (n = atoi(argv[4])) < 1 || n > MAX_THREADS ||
	    (m = atoi(argv[5])) < 1)
		return usage();
	if (argc == 8) {
		if ((env = malloc(ESC_ENVELOPE_MAX)) == NULL || (f = fopen(argv[7], "rb")) == NULL)
			return usage();
		envlen = fread(env, 1, ESC_ENVELOPE_MAX, f);
		fclose(f);
	}
	if (esc_store_connect(ctx, argv[2], &st) != ESC_OK)
		return fail(ctx, ESC_ERR_DB_CONNECT);
	k = open_keeper(ctx, st, argv[3]); /* only for the CA certificate */
	pthread_barrier_init(&barrier, NULL, (unsigned)n);
	memset(w, 0, sizeof(w));
	for (i = 0; i < n; i++) {
		w[i].index = i;
		w[i].rounds = m;
		w[i].conninfo = argv[2];
		w[i].pin_file = argv[3];
		w[i].profile = profile;
		w[i].env = env;
		w[i].envlen = envlen;
		w[i].barrier = &barrier;
		w[i].ca = esc_keeper_ca_cert(k);
		if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0)
			return 1;
	}
	for (i = 0; i < n; i++) {
		pthread_join(w[i].thread, NULL);
		printf("thread %d: issued %d, verified %d, transactions retried %d%s%s\n", i, w[i].issued,
		       w[i].verified, w[i].retries, w[i].msg[0] ? ": " : "", w[i].msg);
		total += w[i].issued;
		verified += w[i].verified;
		if (w[i].err != ESC_OK)
			rc = esc_err_exit_code(w[i].err);
	}
	printf("issued %d, verified %d, expected %d\n", total, verified, n * m + (n - 1) * m);
	if (rc == 0 && (total != n * m + (n - 1) * m || verified != total))
		rc = 1;
	pthread_barrier_destroy(&barrier);
	free(env);
	esc_keeper_free(k);
	esc_store_free(st);
	return rc;
}

int
main(int argc, char *argv[])
{
	struct esc_ctx *ctx = NULL;
	int rc;

	if (argc < 2 || esc_secmem_init() != ESC_OK || esc_ctx_new(&ctx) != ESC_OK)
		return 2;
	if (strcmp(argv[1], "issue") == 0)
		rc = cmd_issue(ctx, argc, argv);
	else if (strcmp(argv[1], "transport") == 0)
		rc = cmd_transport(ctx, argc, argv);
	else if (strcmp(argv[1], "store-stale") == 0)
		rc = cmd_store_stale(ctx, argc, argv);
	else if (strcmp(argv[1], "store-pipeline") == 0)
		rc = cmd_store_pipeline(ctx, argc, argv);
	else if (strcmp(argv[1], "transport-seq") == 0)
		rc = cmd_transport_seq(ctx, argc, argv);
	else if (strcmp(argv[1], "audit-flood") == 0)
		rc = cmd_audit_flood(ctx, argc, argv);
	else if (strcmp(argv[1], "client-cert") == 0)
		rc = cmd_client_cert(ctx, argc, argv);
	else if (strcmp(argv[1], "check-cert") == 0)
		rc = cmd_check_cert(ctx, argc, argv);
	else if (strcmp(argv[1], "otp-check") == 0)
		rc = cmd_otp_check(ctx, argc, argv);
	else if (strcmp(argv[1], "keygen") == 0)
		rc = cmd_keygen(ctx, argc, argv);
	else if (strcmp(argv[1], "threads") == 0)
		rc = cmd_threads(ctx, argc, argv);
	else
		rc = usage();
	esc_ctx_free(ctx);
	return rc;
}
