/*
 * Test tool: the keeper in a process of its own (esc_keeper_connect,
 * esc_keeper_serve) against a real SoftHSM2 CA token and PostgreSQL, for
 * tests/integration/keeper.sh.  Each subcommand forks: the child opens a
 * keeper on the CA token (it alone reads the PIN file) and serves one or
 * two socketpairs, each on its own thread with its own token session and
 * database connection; the parent, which never sees the PIN, is the
 * worker.  Not installed.  Exit status: 0, or the p11escrow exit code of
 * the library error (1: a check failed).
 *
 *   keeper_tool session CONNINFO PIN-FILE KEY.pem ENVELOPE.der OTHER.der RECIPIENT.pem
 *       Through the keeper: issue (signing, and encryption with archival: esc_enroll_issue),
 *       open ENVELOPE (which must hold KEY), refuse OTHER (another recipient), seal a
 *       generated key to RECIPIENT, sign a CRL and a checkpoint; then raw frames on a second
 *       connection: unknown type, duplicate field, replayed and skipped numbers, requests
 *       before the greeting, a second greeting, certificates outside their profile's rules
 *       (profile not enrollable, validity, alternative names, key type), an oversized length
 *       (ends that connection) — each refused while the keeper goes on answering; finally
 *       the keeper is killed and the next request fails with TOKEN_NOT_FOUND.  Prints
 *       "ok: ..." per check and "archived SERIAL" for the archived certificate.
 *   keeper_tool release CONNINFO PIN-FILE ID
 *       esc_keeper_release through the keeper; exits with the error's code.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/enroll.h>
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/profile.h>
#include <p11escrow/store.h>

#include "keeper_proto.h"
#include "store_internal.h"

#define MAX_CONN 2

static int
usage(void)
{
	fprintf(stderr, "keeper_tool: bad arguments (see the comment at the top of tests/tools/keeper_tool.c)\n");
	return 2;
}

static void
die(const char *what, struct esc_ctx *ctx)
{
	fprintf(stderr, "keeper_tool: FAILED: %s%s%s\n", what, ctx ? ": " : "", ctx ? esc_ctx_errmsg(ctx) : "");
	fflush(NULL);
	_exit(1);
}

static void
ok(const char *what)
{
	printf("ok: %s\n", what);
	fflush(stdout);
}

/* ---- the keeper process ---- */

struct serve_arg {
	const char *conninfo;
	const struct esc_secret *pin;
	int fd;
	pthread_t thread;
};

static void
child_log(void *arg, enum esc_log_level level, const char *msg)
{
	(void)arg;
	fprintf(stderr, "keeper[%d] level=%d %s\n", (int)getpid(), (int)level, msg);
}

static void *
serve_main(void *p)
{
	struct serve_arg *a = p;
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_keeper *k = NULL;
	enum esc_err r;

	if (esc_ctx_new(&ctx) != ESC_OK)
		_exit(70);
	esc_ctx_set_log(ctx, child_log, NULL);
	if (esc_store_connect(ctx, a->conninfo, &st) != ESC_OK ||
	    esc_keeper_open(ctx, st, NULL, a->pin, &k) != ESC_OK) {
		fprintf(stderr, "keeper: %s\n", esc_ctx_errmsg(ctx));
		_exit(70);
	}
	/* A lost database or token is answered and reported: this test goes on with the same connection. */
	while ((r = esc_keeper_serve(ctx, k, st, a->fd)) != ESC_OK && r != ESC_ERR_BAD_INPUT && r != ESC_ERR_IO)
		;
	if (r != ESC_OK)
		fprintf(stderr, "keeper: connection ended: %s\n", esc_ctx_errmsg(ctx));
	close(a->fd);
	esc_keeper_free(k);
	esc_store_free(st);
	esc_ctx_free(ctx);
	return NULL;
}

/* Fork the keeper serving n socketpairs; the parent's ends in fds[]. */
static pid_t
spawn_keeper(const char *conninfo, const char *pin_file, int n, int fds[])
{
	int sp[MAX_CONN][2], i;
	pid_t pid;

	for (i = 0; i < n; i++)
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp[i]) != 0)
			die("socketpair", NULL);
	fflush(NULL);
	if ((pid = fork()) < 0)
		die("fork", NULL);
	if (pid == 0) {
		struct serve_arg a[MAX_CONN];
		struct esc_ctx *ctx = NULL;
		struct esc_secret *pin = NULL;

		for (i = 0; i < n; i++)
			close(sp[i][0]);
		/* Only the keeper reads the PIN. */
		if (esc_ctx_new(&ctx) != ESC_OK || esc_secret_from_file(ctx, pin_file, &pin) != ESC_OK)
			_exit(70);
		for (i = 0; i < n; i++) {
			a[i].conninfo = conninfo;
			a[i].pin = pin;
			a[i].fd = sp[i][1];
			if (pthread_create(&a[i].thread, NULL, serve_main, &a[i]) != 0)
				_exit(70);
		}
		for (i = 0; i < n; i++)
			pthread_join(a[i].thread, NULL);
		esc_secret_free(pin);
		esc_ctx_free(ctx);
		_exit(0);
	}
	for (i = 0; i < n; i++) {
		close(sp[i][1]);
		fds[i] = sp[i][0];
	}
	return pid;
}

/* ---- raw frames, as a compromised worker might write them ---- */

static void
raw_send(int fd, const unsigned char *buf, size_t len)
{
	if (write(fd, buf, len) != (ssize_t)len)
		die("writing a raw frame", NULL);
}

/* Encode and send m as it is (no checks of ours beyond the encoder's). */
static void
raw_msg(struct esc_ctx *ctx, int fd, const struct esc_kp_msg *m)
{
	unsigned char *buf = NULL;
	size_t len = 0;

	if (esc_kp_encode(ctx, m, 0, &buf, &len) != ESC_OK)
		die("encoding a raw frame", ctx);
	raw_send(fd, buf, len);
	esc_kp_free(buf, len, 0);
}

/* Read one reply: its type, seq and (for ERROR) code.  -1 at the end of the stream. */
static int
raw_reply(struct esc_ctx *ctx, int fd, uint8_t *type, uint32_t *seq, int32_t *code)
{
	unsigned char hdr[4], *buf;
	size_t len, got = 0;
	struct esc_kp_msg m;
	ssize_t n;

	while (got < 4) {
		if ((n = read(fd, hdr + got, 4 - got)) <= 0)
			return -1;
		got += (size_t)n;
	}
	if ((len = esc_kp_frame_length(hdr)) == 0 || (buf = malloc(len)) == NULL)
		die("a reply of bad length", NULL);
	for (got = 0; got < len; got += (size_t)n)
		if ((n = read(fd, buf + got, len - got)) <= 0)
			die("a reply cut short", NULL);
	if (esc_kp_decode(ctx, buf, len, &m) != ESC_OK)
		die("a malformed reply", ctx);
	*type = m.type;
	*seq = m.seq;
	*code = m.type == ESC_KP_ERROR ? (int32_t)esc_kp_get32(&m, ESC_KP_T_CODE) : 0;
	free(buf);
	return 0;
}

/* Send m and expect an ERROR reply numbered seq with code (0: any error), or the request's reply (want_ok). */
static void
expect(struct esc_ctx *ctx, int fd, const struct esc_kp_msg *m, int want_ok, int32_t code, const char *what)
{
	uint8_t type;
	uint32_t seq;
	int32_t got;
	char msg[300];

	raw_msg(ctx, fd, m);
	if (raw_reply(ctx, fd, &type, &seq, &got) != 0) {
		snprintf(msg, sizeof(msg), "%s: the keeper closed the connection", what);
		die(msg, NULL);
	}
	if (want_ok ? type != (m->type | ESC_KP_REPLY) : type != ESC_KP_ERROR || (code != 0 && got != code)) {
		snprintf(msg, sizeof(msg), "%s: reply type %u code %d", what, type, got);
		die(msg, NULL);
	}
	ok(what);
}

/* A checkpoint request "if 1 event is new": always acceptable, the keeper's proof of life. */
static void
checkpoint_msg(struct esc_kp_msg *m, uint32_t seq)
{
	static unsigned char one[4] = {0, 0, 0, 1}, zero[4] = {0, 0, 0, 0};

	esc_kp_init(m, ESC_KP_CHECKPOINT, seq);
	esc_kp_set(m, ESC_KP_T_EVENTS, one, 4);
	esc_kp_set(m, ESC_KP_T_SECONDS, zero, 4);
	esc_kp_set(m, ESC_KP_T_FINAL, zero, 4);
}

static void
raw_checks(struct esc_ctx *ctx, int fd, EVP_PKEY *eckey)
{
	unsigned char *name = NULL, *spki = NULL, *rsa_spki = NULL, *gens = NULL, days[4];
	int namelen, spkilen, rsalen, genslen;
	X509_NAME *subject = X509_NAME_new();
	GENERAL_NAMES *san = GENERAL_NAMES_new();
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_IA5STRING *dns = ASN1_IA5STRING_new();
	EVP_PKEY *rsa = NULL;
	struct esc_kp_msg m;
	unsigned char bad[4 + ESC_KP_HEADER];
	uint8_t type;
	uint32_t seq = 0, rseq;
	int32_t code;

	if (subject == NULL ||
	    !X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC, (const unsigned char *)"Mallory", -1, -1, 0) ||
	    (namelen = i2d_X509_NAME(subject, &name)) <= 0 || (spkilen = i2d_PUBKEY(eckey, &spki)) <= 0 ||
	    san == NULL || gn == NULL || dns == NULL || !ASN1_STRING_set(dns, "ca.example.org", -1))
		die("building raw requests", NULL);
	GENERAL_NAME_set0_value(gn, GEN_DNS, dns);
	if (!sk_GENERAL_NAME_push(san, gn) || (genslen = i2d_GENERAL_NAMES(san, &gens)) <= 0)
		die("building raw requests", NULL);
	/* A 1024-bit RSA key: no profile allows it. */
	if ((rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024)) == NULL ||
	    (rsalen = i2d_PUBKEY(rsa, &rsa_spki)) <= 0)
		die("generating an RSA key", NULL);

	/* Before the greeting: refused, and the numbering goes on from there. */
	checkpoint_msg(&m, ++seq);
	expect(ctx, fd, &m, 0, ESC_ERR_BAD_INPUT, "a request before the greeting is refused");
	esc_kp_init(&m, ESC_KP_HELLO, ++seq);
	expect(ctx, fd, &m, 1, 0, "the greeting is answered");
	esc_kp_init(&m, ESC_KP_HELLO, ++seq);
	expect(ctx, fd, &m, 0, ESC_ERR_BAD_INPUT, "a second greeting is refused");

	/* Unknown type: a frame the encoder would not make, written by hand. */
	{
		unsigned char f[4 + ESC_KP_HEADER];

		esc_kp_put32(f, ESC_KP_HEADER);
		f[4] = ESC_KP_VERSION;
		f[5] = 0x42;
		esc_kp_put32(f + 6, ++seq);
		raw_send(fd, f, sizeof(f));
		if (raw_reply(ctx, fd, &type, &rseq, &code) != 0 || type != ESC_KP_ERROR || code != ESC_ERR_BAD_INPUT)
			die("an unknown type was not refused", NULL);
		ok("a message of unknown type is refused");
		/* The keeper never numbered it: the same number is due again. */
		seq--;
	}
	/* Duplicate field: a valid ISSUE with its profile field written twice. */
	{
		unsigned char *buf = NULL, *dup;
		size_t len = 0, dlen;

		esc_kp_init(&m, ESC_KP_ISSUE, ++seq);
		esc_kp_set(&m, ESC_KP_T_PROFILE, "signing", 7);
		esc_kp_set(&m, ESC_KP_T_SUBJECT, name, (size_t)namelen);
		esc_kp_set(&m, ESC_KP_T_SPKI, spki, (size_t)spkilen);
		if (esc_kp_encode(ctx, &m, 0, &buf, &len) != ESC_OK || (dup = malloc(len + 12)) == NULL)
			die("encoding", ctx);
		dlen = len + 5 + 7;
		memcpy(dup, buf, len);
		dup[len] = ESC_KP_T_PROFILE;
		esc_kp_put32(dup + len + 1, 7);
		memcpy(dup + len + 5, "signing", 7);
		esc_kp_put32(dup, (uint32_t)(dlen - 4));
		raw_send(fd, dup, dlen);
		if (raw_reply(ctx, fd, &type, &rseq, &code) != 0 || type != ESC_KP_ERROR || code != ESC_ERR_BAD_INPUT)
			die("a duplicate field was not refused", NULL);
		ok("a message with a field given twice is refused");
		seq--;
		free(dup);
		esc_kp_free(buf, len, 0);
	}
	/* Numbering: a valid request, then the same number again (replay), then one skipped ahead. */
	checkpoint_msg(&m, ++seq);
	expect(ctx, fd, &m, 1, 0, "a checkpoint request in order is answered");
	checkpoint_msg(&m, seq);
	expect(ctx, fd, &m, 0, ESC_ERR_BAD_INPUT, "a replayed request number is refused");
	checkpoint_msg(&m, seq + 5);
	expect(ctx, fd, &m, 0, ESC_ERR_BAD_INPUT, "a request number skipped ahead is refused");
	checkpoint_msg(&m, ++seq);
	expect(ctx, fd, &m, 1, 0, "the keeper answers the next request in order");

	/* Certificates outside their profile's rules: refused before anything is signed. */
	esc_kp_init(&m, ESC_KP_ISSUE, ++seq);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "tls-server", 10);
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, (size_t)namelen);
	esc_kp_set(&m, ESC_KP_T_SPKI, spki, (size_t)spkilen);
	expect(ctx, fd, &m, 0, ESC_ERR_POLICY, "a certificate of a profile enrollees may not use is refused");
	esc_kp_init(&m, ESC_KP_ISSUE, ++seq);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "nonsense", 8);
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, (size_t)namelen);
	esc_kp_set(&m, ESC_KP_T_SPKI, spki, (size_t)spkilen);
	expect(ctx, fd, &m, 0, ESC_ERR_POLICY, "a certificate of an unknown profile is refused");
	esc_kp_init(&m, ESC_KP_ISSUE, ++seq);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "signing", 7);
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, (size_t)namelen);
	esc_kp_set(&m, ESC_KP_T_SPKI, spki, (size_t)spkilen);
	esc_kp_put32(days, 3650);
	esc_kp_set(&m, ESC_KP_T_DAYS, days, 4);
	expect(ctx, fd, &m, 0, ESC_ERR_POLICY, "a validity other than the profile's is refused");
	esc_kp_init(&m, ESC_KP_ISSUE, ++seq);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "signing", 7);
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, (size_t)namelen);
	esc_kp_set(&m, ESC_KP_T_SPKI, spki, (size_t)spkilen);
	esc_kp_set(&m, ESC_KP_T_SAN, gens, (size_t)genslen);
	expect(ctx, fd, &m, 0, ESC_ERR_POLICY, "alternative names the profile does not derive are refused");
	esc_kp_init(&m, ESC_KP_ISSUE, ++seq);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "signing", 7);
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, (size_t)namelen);
	esc_kp_set(&m, ESC_KP_T_SPKI, rsa_spki, (size_t)rsalen);
	expect(ctx, fd, &m, 0, ESC_ERR_POLICY, "a key type the profile does not allow is refused");
	/* A checkpoint on demand without an account is the CLI's (the PIN holder's), never a worker's. */
	{
		static unsigned char zero[4] = {0, 0, 0, 0};

		esc_kp_init(&m, ESC_KP_CHECKPOINT, ++seq);
		esc_kp_set(&m, ESC_KP_T_EVENTS, zero, 4);
		esc_kp_set(&m, ESC_KP_T_SECONDS, zero, 4);
		esc_kp_set(&m, ESC_KP_T_FINAL, zero, 4);
		expect(ctx, fd, &m, 0, ESC_ERR_DENIED, "a checkpoint on demand without an account is refused");
		esc_kp_init(&m, ESC_KP_CHECKPOINT, ++seq);
		esc_kp_set(&m, ESC_KP_T_EVENTS, zero, 4);
		esc_kp_set(&m, ESC_KP_T_SECONDS, zero, 4);
		esc_kp_set(&m, ESC_KP_T_FINAL, zero, 4);
		esc_kp_set(&m, ESC_KP_T_ACCOUNT, "nobody", 6);
		expect(ctx, fd, &m, 0, ESC_ERR_DENIED, "a checkpoint for an unknown account is refused");
	}
	/* A reply type sent as a request. */
	esc_kp_init(&m, ESC_KP_RELEASE | ESC_KP_REPLY, ++seq);
	expect(ctx, fd, &m, 0, ESC_ERR_BAD_INPUT, "a reply sent as a request is refused");
	seq--;
	checkpoint_msg(&m, ++seq);
	expect(ctx, fd, &m, 1, 0, "the keeper still answers on this connection");

	/* An oversized length: the keeper cannot find the next frame, so it ends this connection. */
	esc_kp_put32(bad, ESC_KP_MAX + 1);
	bad[4] = ESC_KP_VERSION;
	bad[5] = ESC_KP_ISSUE;
	esc_kp_put32(bad + 6, ++seq);
	raw_send(fd, bad, sizeof(bad));
	if (raw_reply(ctx, fd, &type, &rseq, &code) != -1)
		die("an oversized frame did not end the connection", NULL);
	ok("an oversized frame ends its connection");
	OPENSSL_free(name);
	OPENSSL_free(spki);
	OPENSSL_free(rsa_spki);
	OPENSSL_free(gens);
	GENERAL_NAMES_free(san);
	X509_NAME_free(subject);
	EVP_PKEY_free(rsa);
}

/* ---- subcommands ---- */

static EVP_PKEY *
load_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;

	if (f)
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

static unsigned char *
load_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf = malloc(256 * 1024);

	if (f == NULL || buf == NULL)
		die(path, NULL);
	*len = fread(buf, 1, 256 * 1024, f);
	fclose(f);
	return buf;
}

static X509 *
issue(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const char *profile, const char *subj,
      EVP_PKEY *key, int archive, char *record, size_t reclen)
{
	struct esc_enroll_request req;
	struct esc_archive_info info;
	X509_NAME *subject = NULL;
	X509 *cert = NULL;

	memset(&req, 0, sizeof(req));
	memset(&info, 0, sizeof(info));
	req.profile = esc_profile_find(profile);
	req.actor = "est:keeper-tool";
	req.source = ESC_SOURCE_ENROLL_CLIENT;
	req.pub = key;
	req.key = archive ? key : NULL;
	if (esc_name_parse(ctx, subj, &subject) != ESC_OK)
		die("subject", ctx);
	req.subject = subject;
	if (esc_enroll_issue(ctx, st, k, &req, &cert, &info) != ESC_OK)
		die("issue through the keeper", ctx);
	X509_NAME_free(subject);
	if (record != NULL)
		snprintf(record, reclen, "%s", info.id);
	return cert;
}

static int
cmd_session(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_store *st = NULL;
	struct esc_keeper *k = NULL;
	EVP_PKEY *key, *opened = NULL, *gen = NULL;
	X509 *ca = NULL, *cert, *rcpt;
	X509_CRL *crl = NULL;
	unsigned char *env, *other, *sealed = NULL;
	size_t envlen, otherlen, sealedlen = 0;
	char record[64], *serial;
	long long id = -1;
	int fds[2], status;
	pid_t pid;
	enum esc_err r;

	if (argc != 8 || (key = load_key(argv[4])) == NULL || (rcpt = load_cert(argv[7])) == NULL)
		return usage();
	env = load_file(argv[5], &envlen);
	other = load_file(argv[6], &otherlen);
	pid = spawn_keeper(argv[2], argv[3], 2, fds);
	if (esc_store_connect(ctx, argv[2], &st) != ESC_OK || esc_store_active_ca(ctx, st, &ca) != ESC_OK)
		die("database", ctx);
	if (esc_keeper_connect(ctx, fds[0], &k) != ESC_OK)
		die("connect", ctx);
	if (X509_cmp(esc_keeper_ca_cert(k), ca) != 0 || esc_keeper_transport_cert(k) == NULL)
		die("the greeting's CA certificate is not the active CA's", NULL);
	ok("connected: the greeting carries the CA and transport certificates");

	cert = issue(ctx, st, k, "signing", "CN=Remote Bob,O=Example", key, 0, NULL, 0);
	if (X509_verify(cert, X509_get0_pubkey(ca)) != 1 || EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1)
		die("the issued certificate does not verify", NULL);
	X509_free(cert);
	ok("issue (signing) through the keeper: the certificate verifies with the CA key");

	cert = issue(ctx, st, k, "encryption", "CN=Remote Alice,O=Example,emailAddress=alice@example.org", key, 1,
		     record, sizeof(record));
	if (X509_verify(cert, X509_get0_pubkey(ca)) != 1 || record[0] == '\0' ||
	    X509_get_ext_by_NID(cert, NID_subject_alt_name, -1) < 0)
		die("the archived certificate", NULL);
	serial = esc_cert_serial_hex(cert);
	printf("archived %s\n", serial ? serial : "?");
	free(serial);
	X509_free(cert);
	ok("issue (encryption, archived, alternative name from the subject) through the keeper");

	if (esc_keeper_open_transport(ctx, k, env, envlen, &opened) != ESC_OK || EVP_PKEY_eq(opened, key) != 1)
		die("open_transport", ctx);
	ok("open_transport: the envelope's key comes back");
	if ((r = esc_keeper_open_transport(ctx, k, other, otherlen, &gen)) != ESC_ERR_NOT_RECIPIENT)
		die("an envelope to another recipient was not refused with NOT_RECIPIENT", ctx);
	ok("open_transport: an envelope to another recipient is refused");

	/* /serverkeygen's sealed key: a key generated here, its certificate through the keeper. */
	if (esc_profile_generate_key(ctx, esc_profile_find("encryption"), &gen) != ESC_OK)
		die("keygen", ctx);
	cert = issue(ctx, st, k, "encryption", "CN=Remote Carol,O=Example", gen, 1, NULL, 0);
	if (esc_keeper_seal_server_key(ctx, k, gen, cert, rcpt, &sealed, &sealedlen) != ESC_OK || sealedlen == 0)
		die("seal_server_key", ctx);
	free(sealed);
	ok("seal_server_key: the key is sealed to the recipient");
	if ((r = esc_keeper_seal_server_key(ctx, k, key, cert, rcpt, &sealed, &sealedlen)) != ESC_ERR_USAGE)
		die("a key that is not its certificate's was sealed", ctx);
	ok("seal_server_key: a key that is not its certificate's is refused");
	X509_free(cert);

	if (esc_keeper_sign_crl(ctx, k, NULL, NULL, 0, &crl) != ESC_OK ||
	    X509_CRL_verify(crl, X509_get0_pubkey(ca)) != 1)
		die("sign_crl", ctx);
	ok("sign_crl: the CRL verifies with the CA key");
	{
		X509_CRL *again = NULL;
		const ASN1_BIT_STRING *s1 = NULL, *s2 = NULL;

		/* Not due: the same CRL (the same signature), not a new one; a new one on demand needs an account. */
		if (esc_keeper_sign_crl(ctx, k, NULL, NULL, 0, &again) != ESC_OK)
			die("sign_crl twice", ctx);
		X509_CRL_get0_signature(crl, &s1, NULL);
		X509_CRL_get0_signature(again, &s2, NULL);
		if (ASN1_STRING_cmp(s1, s2) != 0)
			die("sign_crl twice: not the stored CRL", ctx);
		X509_CRL_free(again);
		again = NULL;
		if ((r = esc_keeper_sign_crl(ctx, k, NULL, NULL, 7, &again)) != ESC_ERR_DENIED)
			die("a CRL on demand without an account was not refused", ctx);
		ok("sign_crl: the stored CRL while it is not due; none on demand without an account");
	}
	X509_CRL_free(crl);
	if (esc_keeper_checkpoint(ctx, k, NULL, NULL, 1, 0, &id) != ESC_OK || id < 0)
		die("checkpoint", ctx);
	ok("checkpoint: signed when due");
	if ((r = esc_keeper_release(ctx, k, NULL, 987654321)) != ESC_ERR_NOT_FOUND)
		die("releasing an unknown request was not NOT_FOUND", ctx);
	ok("release: an unknown request is refused");

	raw_checks(ctx, fds[1], key);
	close(fds[1]);

	/* The first connection still works after the second one misbehaved and was ended. */
	if (esc_keeper_sign_crl(ctx, k, NULL, NULL, 0, &crl) != ESC_OK)
		die("sign_crl after the other connection ended", ctx);
	X509_CRL_free(crl);
	ok("the keeper goes on serving its other connection");

	/* The keeper dies: the next request fails as "unavailable", a 503 for the service. */
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	if ((r = esc_keeper_sign_crl(ctx, k, NULL, NULL, 7, &crl)) != ESC_ERR_TOKEN_NOT_FOUND ||
	    strstr(esc_ctx_errmsg(ctx), "the keeper is unavailable") == NULL || !esc_keeper_lost(k))
		die("a dead keeper did not give TOKEN_NOT_FOUND", ctx);
	if ((r = esc_keeper_checkpoint(ctx, k, NULL, NULL, 1, 0, &id)) != ESC_ERR_TOKEN_NOT_FOUND)
		die("a lost connection answered again", ctx);
	ok("a dead keeper: TOKEN_NOT_FOUND, 'the keeper is unavailable'");

	esc_keeper_free(k);
	EVP_PKEY_free(key);
	EVP_PKEY_free(opened);
	EVP_PKEY_free(gen);
	X509_free(ca);
	X509_free(rcpt);
	free(env);
	free(other);
	esc_store_free(st);
	return 0;
}

static int
cmd_release(struct esc_ctx *ctx, int argc, char *argv[])
{
	struct esc_keeper *k = NULL;
	int fds[1], status;
	pid_t pid;
	enum esc_err r;

	if (argc != 5)
		return usage();
	pid = spawn_keeper(argv[2], argv[3], 1, fds);
	if ((r = esc_keeper_connect(ctx, fds[0], &k)) == ESC_OK)
		r = esc_keeper_release(ctx, k, NULL, atoll(argv[4]));
	if (r != ESC_OK)
		fprintf(stderr, "keeper_tool: %s\n", esc_ctx_errmsg(ctx));
	esc_keeper_free(k); /* closes the connection: the keeper's thread ends, then the keeper */
	waitpid(pid, &status, 0);
	return r == ESC_OK ? 0 : esc_err_exit_code(r);
}

int
main(int argc, char *argv[])
{
	struct esc_ctx *ctx = NULL;
	int rc;

	if (argc < 2 || esc_secmem_init() != ESC_OK || esc_ctx_new(&ctx) != ESC_OK)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	if (strcmp(argv[1], "session") == 0)
		rc = cmd_session(ctx, argc, argv);
	else if (strcmp(argv[1], "release") == 0)
		rc = cmd_release(ctx, argc, argv);
	else
		rc = usage();
	esc_ctx_free(ctx);
	return rc;
}
