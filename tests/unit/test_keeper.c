/*
 * Unit tests: the keeper's typed operations (src/lib/keeper.c) on a keeper
 * over software keys (esc_keeper_from_keys): the same code as on the CA
 * token, without a token or a database.  Called directly, across the
 * process boundary (esc_keeper_connect to esc_keeper_serve on a thread,
 * over a socketpair), and with raw frames from a worker that does not play
 * by the rules.  What needs the token or the database (a release, which
 * reads and locks the request, the CRL, checkpoints, KRA certificates) is
 * the integration tests' (keeper, privsep): here it must be refused for
 * want of a database, and the keeper must go on answering.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/envelope.h>
#include <p11escrow/gate.h>
#include <p11escrow/keeper.h>
#include <p11escrow/profile.h>

#include "internal.h"
#include "keeper_internal.h"
#include "keeper_proto.h"
#include "profile_internal.h"

/* Keys and certificates made once for the run. */
static struct {
	EVP_PKEY *ca_key, *transport_key, *other_key, *rsa2048, *rsa1024, *p256;
	X509 *ca, *transport_cert, *other_cert, *stranger; /* stranger: self-signed, for p256 */
} keys;

/* One test's keeper; for the boundary tests also the keeper thread serving the other end of a socketpair. */
struct fixture {
	struct esc_ctx *ctx;
	struct esc_keeper *local;  /* the keeper itself (served, when a test serves it) */
	struct esc_keeper *remote; /* a worker's keeper (esc_keeper_connect), or NULL */
	int worker_fd;		   /* the worker's end, for raw frames (-1 once remote owns it) */
	int keeper_fd;
	pthread_t thread;
	int serving;
	enum esc_err served; /* what esc_keeper_serve returned last */
};

static X509_NAME *
name_of(const char *cn, const char *mail)
{
	X509_NAME *xn = X509_NAME_new();

	assert_non_null(xn);
	assert_true(
		X509_NAME_add_entry_by_NID(xn, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0));
	if (mail != NULL)
		assert_true(X509_NAME_add_entry_by_NID(xn, NID_pkcs9_emailAddress, V_ASN1_IA5STRING,
						       (const unsigned char *)mail, -1, -1, 0));
	return xn;
}

static int
group_setup(void **state)
{
	struct esc_ctx *ctx = NULL;
	X509_NAME *tn = NULL, *on = NULL;
	int ok;

	(void)state;
	keys.ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys.transport_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys.other_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys.p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys.rsa2048 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	keys.rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	tn = X509_NAME_new();
	on = X509_NAME_new();
	ok = keys.ca_key && keys.transport_key && keys.other_key && keys.p256 && keys.rsa2048 && keys.rsa1024 && tn &&
	     on && X509_NAME_add_entry_by_txt(tn, "CN", MBSTRING_UTF8, (const unsigned char *)"transport", -1, -1, 0) &&
	     X509_NAME_add_entry_by_txt(on, "CN", MBSTRING_UTF8, (const unsigned char *)"another recipient", -1, -1,
					0) &&
	     esc_ctx_new(&ctx) == ESC_OK &&
	     esc_ca_self_sign(ctx, keys.ca_key, keys.ca_key, "CN=Keeper Test CA", 3650, &keys.ca) == ESC_OK &&
	     esc_ca_issue(ctx, keys.ca, keys.ca_key, keys.transport_key, tn, 365, ESC_PROFILE_ENCRYPTION,
			  &keys.transport_cert) == ESC_OK &&
	     esc_ca_issue(ctx, keys.ca, keys.ca_key, keys.other_key, on, 365, ESC_PROFILE_ENCRYPTION,
			  &keys.other_cert) == ESC_OK &&
	     esc_ca_self_sign(ctx, keys.p256, keys.p256, "CN=stranger", 30, &keys.stranger) == ESC_OK;
	X509_NAME_free(tn);
	X509_NAME_free(on);
	esc_ctx_free(ctx);
	return ok ? 0 : -1;
}

static int
group_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(keys.ca_key);
	EVP_PKEY_free(keys.transport_key);
	EVP_PKEY_free(keys.other_key);
	EVP_PKEY_free(keys.p256);
	EVP_PKEY_free(keys.rsa2048);
	EVP_PKEY_free(keys.rsa1024);
	X509_free(keys.ca);
	X509_free(keys.transport_cert);
	X509_free(keys.other_cert);
	X509_free(keys.stranger);
	return 0;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL || esc_ctx_new(&f->ctx) != ESC_OK ||
	    esc_keeper_from_keys(f->ctx, keys.ca, NULL, keys.ca_key, keys.transport_key, keys.transport_cert,
				 &f->local) != ESC_OK)
		return -1;
	f->worker_fd = f->keeper_fd = -1;
	*state = f;
	return 0;
}

/*
 * The keeper process's loop, on a thread with its own context: answer
 * until the worker closes its end, going on after requests that failed for
 * want of the database (st is NULL: the keeper has lost it).
 */
static void *
keeper_thread(void *arg)
{
	struct fixture *f = arg;
	struct esc_ctx *ctx = NULL;
	enum esc_err r;

	if (esc_ctx_new(&ctx) != ESC_OK) {
		f->served = ESC_ERR_NOMEM;
		close(f->keeper_fd);
		return NULL;
	}
	do
		r = esc_keeper_serve(ctx, f->local, NULL, f->keeper_fd);
	while (r == ESC_ERR_DB_CONNECT);
	f->served = r;
	close(f->keeper_fd);
	esc_ctx_free(ctx);
	return NULL;
}

/* Serve f->local on a socketpair; the worker's end in f->worker_fd. */
static int
setup_served(void **state)
{
	struct fixture *f;
	int sp[2];

	if (setup(state) != 0)
		return -1;
	f = *state;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
		return -1;
	f->worker_fd = sp[0];
	f->keeper_fd = sp[1];
	if (pthread_create(&f->thread, NULL, keeper_thread, f) != 0)
		return -1;
	f->serving = 1;
	return 0;
}

/* As setup_served, with a worker's keeper connected (HELLO answered). */
static int
setup_remote(void **state)
{
	struct fixture *f;
	int fd;

	if (setup_served(state) != 0)
		return -1;
	f = *state;
	fd = f->worker_fd;
	f->worker_fd = -1; /* the remote keeper's now, failure included */
	return esc_keeper_connect(f->ctx, fd, &f->remote) == ESC_OK ? 0 : -1;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	/* Closing the worker's end ends the keeper's loop: OK, the peer closed. */
	esc_keeper_free(f->remote);
	if (f->worker_fd >= 0)
		close(f->worker_fd);
	if (f->serving) {
		pthread_join(f->thread, NULL);
		assert_int_equal(f->served, ESC_OK);
	}
	esc_keeper_free(f->local);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

/* ---- Helpers ----------------------------------------------------------------- */

/* The certificate is this CA's, for pub, with the keyUsage bits given. */
static void
assert_issued(X509 *x, EVP_PKEY *pub, uint32_t ku)
{
	assert_non_null(x);
	assert_int_equal(esc_cert_issued_by(x, keys.ca), 1);
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), pub), 1);
	assert_int_equal(X509_get_key_usage(x), ku);
	assert_int_equal(X509_check_ca(x), 0);
}

/* The PKCS#8 of key sealed (AuthEnvelopedData) to recipient: *der for free(). */
static void
seal_key(struct esc_ctx *ctx, EVP_PKEY *key, X509 *recipient, unsigned char **der, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *info = EVP_PKEY2PKCS8(key);
	unsigned char *p8 = NULL;
	int n;

	assert_non_null(info);
	assert_true((n = i2d_PKCS8_PRIV_KEY_INFO(info, &p8)) > 0);
	PKCS8_PRIV_KEY_INFO_free(info);
	assert_int_equal(esc_envelope_seal(ctx, p8, (size_t)n, &recipient, NULL, 1, der, len), ESC_OK);
	OPENSSL_clear_free(p8, (size_t)n);
}

/* ---- Called directly ------------------------------------------------------------ */

static void
test_issue(void **state)
{
	struct fixture *f = *state;
	X509_NAME *xn = name_of("Alice", "alice@example.org");
	GENERAL_NAMES *san = NULL, *got;
	X509 *x = NULL;

	assert_int_equal(esc_profile_email_sans(f->ctx, xn, &san), ESC_OK);
	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.rsa2048, san, &x),
			 ESC_OK);
	assert_issued(x, keys.rsa2048, KU_KEY_ENCIPHERMENT);
	assert_int_equal(X509_get_extended_key_usage(x), XKU_SMIME);
	got = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	assert_non_null(got);
	assert_int_equal(sk_GENERAL_NAME_num(got), 1);
	GENERAL_NAMES_free(got);
	X509_free(x);
	x = NULL;

	/* An EC key under the same profile: key agreement, not encipherment. */
	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.p256, san, &x),
			 ESC_OK);
	assert_issued(x, keys.p256, KU_KEY_AGREEMENT);
	X509_free(x);
	GENERAL_NAMES_free(san);
	X509_NAME_free(xn);
	assert_string_equal(esc_keeper_token_label(f->local), "software keys");
}

/* A certificate outside the profile's rules is never signed. */
static void
test_issue_refused(void **state)
{
	struct fixture *f = *state;
	X509_NAME *xn = name_of("Bob", NULL);
	X509 *x = NULL;

	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.rsa1024, NULL, &x),
			 ESC_ERR_POLICY);
	assert_string_equal(esc_ctx_errmsg(f->ctx),
			    "profile 'encryption' does not allow rsa1024 (or an unusual public "
			    "exponent) keys (allowed: rsa2048, rsa3072, rsa4096, ec-p256, ec-p384)");
	assert_null(x);
	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("tls-server")), xn,
					  keys.rsa2048, NULL, &x),
			 ESC_ERR_POLICY);
	assert_null(x);
	X509_NAME_free(xn);
}

static void
test_open_transport(void **state)
{
	struct fixture *f = *state;
	EVP_PKEY *keys_in[2] = {keys.p256, keys.rsa2048}, *got = NULL;
	unsigned char *env = NULL;
	size_t len = 0, i;

	for (i = 0; i < 2; i++) {
		seal_key(f->ctx, keys_in[i], keys.transport_cert, &env, &len);
		assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, env, len, &got), ESC_OK);
		assert_int_equal(EVP_PKEY_eq(got, keys_in[i]), 1);
		EVP_PKEY_free(got);
		got = NULL;
		free(env);
	}
}

static void
test_open_transport_refused(void **state)
{
	struct fixture *f = *state;
	static const unsigned char garbage[] = {0x30, 0x03, 0x02, 0x01, 0x00};
	unsigned char *env = NULL, *longer = NULL;
	size_t len = 0;
	EVP_PKEY *got = NULL;
	BIO *b = BIO_new_mem_buf("x", 1);
	CMS_ContentInfo *data = NULL;
	unsigned char *dder = NULL;
	int dlen;

	/* To another recipient: the keeper does not even try. */
	seal_key(f->ctx, keys.p256, keys.other_cert, &env, &len);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, env, len, &got), ESC_ERR_NOT_RECIPIENT);
	assert_string_equal(esc_ctx_errmsg(f->ctx),
			    "the archival envelope is not encrypted to this CA's transport certificate");
	assert_null(got);
	free(env);

	/* To the transport certificate, but no private key inside. */
	assert_int_equal(esc_envelope_seal(f->ctx, (const unsigned char *)"not a key", 9, &keys.transport_cert, NULL, 1,
					   &env, &len),
			 ESC_OK);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, env, len, &got), ESC_ERR_BAD_INPUT);
	assert_string_equal(esc_ctx_errmsg(f->ctx),
			    "the archival envelope does not hold an unencrypted PKCS#8 private key");
	free(env);

	/* Altered: the GCM tag, the last bytes, no longer matches. */
	seal_key(f->ctx, keys.p256, keys.transport_cert, &env, &len);
	env[len - 1] ^= 0xff;
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, env, len, &got), ESC_ERR_TAMPERED);
	assert_null(got);
	env[len - 1] ^= 0xff;

	/* One DER structure and nothing after it. */
	assert_non_null(longer = malloc(len + 1));
	memcpy(longer, env, len);
	longer[len] = 0;
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, longer, len + 1, &got), ESC_ERR_BAD_INPUT);
	assert_string_equal(esc_ctx_errmsg(f->ctx), "the archival envelope is not one DER CMS structure");
	free(longer);
	free(env);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, garbage, sizeof(garbage), &got),
			 ESC_ERR_BAD_INPUT);

	/* CMS, but not an envelope. */
	assert_non_null(data = CMS_data_create(b, CMS_BINARY));
	assert_true((dlen = i2d_CMS_ContentInfo(data, &dder)) > 0);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, dder, (size_t)dlen, &got), ESC_ERR_BAD_INPUT);
	assert_string_equal(esc_ctx_errmsg(f->ctx),
			    "the archival envelope is not a CMS EnvelopedData or AuthEnvelopedData");
	OPENSSL_free(dder);
	CMS_ContentInfo_free(data);
	BIO_free(b);

	/* Bounded before anything is parsed. */
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, garbage, 0, &got), ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->local, garbage, ESC_ENVELOPE_MAX + 1, &got),
			 ESC_ERR_BAD_INPUT);
	assert_null(got);
}

static void
test_seal_server_key(void **state)
{
	struct fixture *f = *state;
	X509_NAME *xn = name_of("Carol", NULL);
	X509 *cert = NULL, *signing = NULL;
	unsigned char *der = NULL;
	size_t len = 0;
	const unsigned char *p;
	CMS_ContentInfo *cms;
	STACK_OF(X509) *certs, *signers;
	BIO *plain = BIO_new(BIO_s_mem());

	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.p256, NULL, &cert),
			 ESC_OK);
	assert_int_equal(esc_keeper_seal_server_key(f->ctx, f->local, keys.p256, cert, keys.other_cert, &der, &len),
			 ESC_OK);
	/* An EnvelopedData that the recipient's key opens, holding a SignedData the CA key signed. */
	p = der;
	assert_non_null(cms = d2i_CMS_ContentInfo(NULL, &p, (long)len));
	assert_int_equal(OBJ_obj2nid(CMS_get0_type(cms)), NID_pkcs7_enveloped);
	assert_int_equal(CMS_decrypt(cms, keys.other_key, keys.other_cert, NULL, plain, CMS_BINARY), 1);
	CMS_ContentInfo_free(cms);
	assert_non_null(cms = d2i_CMS_bio(plain, NULL));
	assert_int_equal(OBJ_obj2nid(CMS_get0_type(cms)), NID_pkcs7_signed);
	assert_non_null(certs = sk_X509_new_null());
	assert_true(sk_X509_push(certs, keys.ca));
	assert_int_equal(CMS_verify(cms, certs, NULL, NULL, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY), 1);
	signers = CMS_get0_signers(cms);
	assert_int_equal(sk_X509_num(signers), 1);
	assert_int_equal(X509_cmp(sk_X509_value(signers, 0), keys.ca), 0);
	sk_X509_free(signers);
	sk_X509_free(certs);
	CMS_ContentInfo_free(cms);
	BIO_free(plain);
	free(der);
	der = NULL;

	/* Only a key this CA certified, for that certificate, to a recipient that can take keys. */
	assert_int_equal(
		esc_keeper_seal_server_key(f->ctx, f->local, keys.p256, keys.stranger, keys.other_cert, &der, &len),
		ESC_ERR_USAGE);
	assert_string_equal(esc_ctx_errmsg(f->ctx), "the key's certificate was not issued by this CA");
	assert_int_equal(
		esc_keeper_seal_server_key(f->ctx, f->local, keys.other_key, cert, keys.other_cert, &der, &len),
		ESC_ERR_USAGE);
	assert_string_equal(esc_ctx_errmsg(f->ctx), "the key is not the key of its certificate");
	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("signing")), xn,
					  keys.other_key, NULL, &signing),
			 ESC_OK);
	assert_int_equal(esc_keeper_seal_server_key(f->ctx, f->local, keys.p256, cert, signing, &der, &len),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "lacks keyAgreement"));
	assert_null(der);
	X509_free(signing);
	X509_free(cert);
	X509_NAME_free(xn);
}

/* ---- Across the process boundary ---------------------------------------------------- */

static void
test_remote_hello(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(X509_cmp(esc_keeper_ca_cert(f->remote), keys.ca), 0);
	assert_int_equal(X509_cmp(esc_keeper_transport_cert(f->remote), keys.transport_cert), 0);
	assert_int_equal(sk_X509_num(esc_keeper_chain(f->remote)), 0);
	assert_string_equal(esc_keeper_token_label(f->remote), "keeper process");
	assert_false(esc_keeper_lost(f->remote));
}

static void
test_remote_issue(void **state)
{
	struct fixture *f = *state;
	X509_NAME *xn = name_of("Dave", "dave@example.org");
	GENERAL_NAMES *san = NULL;
	X509 *x = NULL;

	assert_int_equal(esc_profile_email_sans(f->ctx, xn, &san), ESC_OK);
	assert_int_equal(esc_keeper_issue(f->ctx, f->remote, esc_profile_def(esc_profile_find("signing")), xn,
					  keys.p256, san, &x),
			 ESC_OK);
	assert_issued(x, keys.p256, KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION);
	X509_free(x);
	x = NULL;
	/* The worker may ask for nothing an enrollee may not have: the service's own kind of certificate. */
	assert_int_equal(esc_keeper_issue(f->ctx, f->remote, esc_profile_def(esc_profile_find("tls-server")), xn,
					  keys.p256, NULL, &x),
			 ESC_ERR_POLICY);
	assert_string_equal(esc_ctx_errmsg(f->ctx), "keeper: profile 'tls-server' is not available for enrollment");
	assert_null(x);
	/* A key the profile refuses is refused before anything is sent. */
	assert_int_equal(esc_keeper_issue(f->ctx, f->remote, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.rsa1024, san, &x),
			 ESC_ERR_POLICY);
	assert_false(esc_keeper_lost(f->remote));
	GENERAL_NAMES_free(san);
	X509_NAME_free(xn);
}

/* esc_pubkey_spki gives i2d_PUBKEY's bytes, by the template for EC keys and by OpenSSL's encoder otherwise. */
static void
assert_spki_same(EVP_PKEY *pub)
{
	unsigned char *want = NULL, *got;
	size_t len = 0;
	int n = i2d_PUBKEY(pub, &want);

	assert_true(n > 0);
	got = esc_pubkey_spki(pub, &len);
	assert_non_null(got);
	assert_int_equal(len, (size_t)n);
	assert_memory_equal(got, want, len);
	OPENSSL_free(got);
	OPENSSL_free(want);
}

static void
test_pubkey_spki(void **state)
{
	EVP_PKEY *p384 = EVP_EC_gen("P-384"), *compressed = EVP_EC_gen("P-256");

	(void)state;
	assert_spki_same(keys.p256);
	assert_spki_same(keys.rsa2048);
	assert_non_null(p384);
	assert_spki_same(p384);
	/* A key whose point is compressed is encoded compressed by i2d_PUBKEY: the encoder's way, the same bytes. */
	assert_non_null(compressed);
	assert_int_equal(EVP_PKEY_set_utf8_string_param(compressed, "point-format", "compressed"), 1);
	assert_spki_same(compressed);
	EVP_PKEY_free(p384);
	EVP_PKEY_free(compressed);
}

/* The token gate: issuance through a keeper counts one token operation and its CPU, in a shared meter file. */
static void
test_token_gate(void **state)
{
	struct fixture *f = *state;
	struct esc_token_gate *g = NULL, *g2 = NULL;
	X509_NAME *xn = name_of("Gate", "gate@example.org");
	GENERAL_NAMES *san = NULL;
	char path[] = "/tmp/p11escrow-meter.XXXXXX";
	uint64_t ops, cpu, wait;
	X509 *x = NULL;
	FILE *fp;
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(esc_token_gate_new(f->ctx, -1, NULL, &g), ESC_ERR_CONFIG);
	assert_int_equal(esc_token_gate_new(f->ctx, ESC_TOKEN_GATE_MAX + 1, NULL, &g), ESC_ERR_CONFIG);
	assert_null(g);
	assert_int_equal(esc_token_gate_new(f->ctx, 1, path, &g), ESC_OK);
	esc_ctx_set_token_gate(f->ctx, g);
	assert_int_equal(esc_profile_email_sans(f->ctx, xn, &san), ESC_OK);
	assert_int_equal(esc_keeper_issue(f->ctx, f->local, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.p256, san, &x),
			 ESC_OK);
	assert_issued(x, keys.p256, KU_KEY_AGREEMENT);
	esc_token_gate_read(g, &ops, &cpu, &wait);
	assert_int_equal(ops, 1);
	assert_true(cpu > 0);
	/* Another process's view of the same file (the daemon's keeper and bench/run): the same counters. */
	assert_int_equal(esc_token_gate_new(f->ctx, 0, path, &g2), ESC_OK);
	esc_token_gate_read(g2, &ops, &cpu, &wait);
	assert_int_equal(ops, 1);
	esc_ctx_set_token_gate(f->ctx, NULL);
	esc_token_gate_free(g);
	esc_token_gate_free(g2);
	/* A file that is not a meter is refused, not overwritten. */
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("not a meter", fp);
	fclose(fp);
	assert_int_equal(esc_token_gate_new(f->ctx, 0, path, &g), ESC_ERR_IO);
	unlink(path);
	X509_free(x);
	GENERAL_NAMES_free(san);
	X509_NAME_free(xn);
}

static void
test_remote_transport(void **state)
{
	struct fixture *f = *state;
	unsigned char *env = NULL;
	size_t len = 0;
	EVP_PKEY *got = NULL;

	seal_key(f->ctx, keys.rsa2048, keys.transport_cert, &env, &len);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->remote, env, len, &got), ESC_OK);
	assert_int_equal(EVP_PKEY_eq(got, keys.rsa2048), 1);
	EVP_PKEY_free(got);
	got = NULL;
	free(env);
	seal_key(f->ctx, keys.rsa2048, keys.other_cert, &env, &len);
	assert_int_equal(esc_keeper_open_transport(f->ctx, f->remote, env, len, &got), ESC_ERR_NOT_RECIPIENT);
	assert_string_equal(esc_ctx_errmsg(f->ctx),
			    "the archival envelope is not encrypted to this CA's transport certificate");
	assert_null(got);
	free(env);
}

/* What reads the keeper's database is refused while it has none; the keeper goes on. */
static void
test_remote_needs_database(void **state)
{
	struct fixture *f = *state;
	X509_CRL *crl = NULL;
	long long id = -1;
	X509_NAME *xn = name_of("Erin", NULL);
	X509 *x = NULL;

	assert_int_equal(esc_keeper_release(f->ctx, f->remote, NULL, 4), ESC_ERR_DB_CONNECT);
	assert_string_equal(esc_ctx_errmsg(f->ctx), "keeper: its database connection is lost");
	assert_int_equal(esc_keeper_sign_crl(f->ctx, f->remote, NULL, NULL, 7, &crl), ESC_ERR_DB_CONNECT);
	assert_null(crl);
	assert_int_equal(esc_keeper_checkpoint(f->ctx, f->remote, NULL, NULL, 1, 0, &id), ESC_ERR_DB_CONNECT);
	assert_int_equal(id, -1);
	assert_false(esc_keeper_lost(f->remote));
	assert_int_equal(esc_keeper_issue(f->ctx, f->remote, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.p256, NULL, &x),
			 ESC_OK);
	X509_free(x);
	X509_NAME_free(xn);
}

/* The library's timing sink: what it was told, in order. */
struct timings {
	int n;
	enum esc_timing_kind kind[8];
	char what[8][32];
	double seconds[8];
};

static void
record_timing(void *arg, enum esc_timing_kind kind, const char *what, double seconds)
{
	struct timings *t = arg;

	if (t->n < 8) {
		t->kind[t->n] = kind;
		snprintf(t->what[t->n], sizeof(t->what[t->n]), "%s", what);
		t->seconds[t->n] = seconds;
	}
	t->n++;
}

/* STATUS (what /readyz asks): answered by the keeper process; each request to it timed by its name. */
static void
test_remote_status(void **state)
{
	struct fixture *f = *state;
	struct timings t = {0};
	X509_NAME *xn = name_of("Frank", NULL);
	X509 *x = NULL;

	/* No sink: nothing is timed (and no clock read). */
	assert_int_equal(esc_keeper_status(f->ctx, f->remote), ESC_OK);
	esc_ctx_set_timing(f->ctx, record_timing, &t);
	/* Software keys: no session to lose, so ready. */
	assert_int_equal(esc_keeper_status(f->ctx, f->remote), ESC_OK);
	assert_int_equal(esc_keeper_issue(f->ctx, f->remote, esc_profile_def(esc_profile_find("encryption")), xn,
					  keys.p256, NULL, &x),
			 ESC_OK);
	assert_int_equal(t.n, 2);
	assert_int_equal(t.kind[0], ESC_TIMING_TOKEN);
	assert_string_equal(t.what[0], "status");
	assert_string_equal(t.what[1], "issue");
	assert_true(t.seconds[0] >= 0 && t.seconds[0] < 10 && t.seconds[1] > 0);
	esc_ctx_set_timing(f->ctx, NULL, NULL);
	assert_int_equal(esc_keeper_status(f->ctx, NULL), ESC_ERR_TOKEN_NOT_FOUND);
	assert_false(esc_keeper_lost(f->remote));
	X509_free(x);
	X509_NAME_free(xn);
}

/* ---- Raw frames: a worker that does not play by the rules ------------------------------ */

static void
send_msg(struct esc_ctx *ctx, int fd, const struct esc_kp_msg *m)
{
	unsigned char *buf = NULL;
	size_t len = 0;

	assert_int_equal(esc_kp_encode(ctx, m, 0, &buf, &len), ESC_OK);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	esc_kp_free(buf, len, 0);
}

static void
read_exact(int fd, unsigned char *buf, size_t n)
{
	size_t got = 0;
	ssize_t r;

	while (got < n) {
		r = read(fd, buf + got, n - got);
		assert_true(r > 0);
		got += (size_t)r;
	}
}

/* The keeper's reply: *buf (for free()) holds it, m's fields point into it. */
static void
recv_msg(struct esc_ctx *ctx, int fd, unsigned char **buf, struct esc_kp_msg *m)
{
	unsigned char hdr[4];
	size_t len;

	read_exact(fd, hdr, 4);
	assert_true((len = esc_kp_frame_length(hdr)) > 0);
	assert_non_null(*buf = malloc(len));
	read_exact(fd, *buf, len);
	assert_int_equal(esc_kp_decode(ctx, *buf, len, m), ESC_OK);
}

/* Send m; the reply must be ERROR with code and a message containing what. */
static void
refused(struct fixture *f, const struct esc_kp_msg *m, enum esc_err code, const char *what)
{
	struct esc_kp_msg rep;
	unsigned char *buf = NULL;
	char msg[1100];

	send_msg(f->ctx, f->worker_fd, m);
	recv_msg(f->ctx, f->worker_fd, &buf, &rep);
	assert_int_equal(rep.type, ESC_KP_ERROR);
	assert_int_equal((int32_t)esc_kp_get32(&rep, ESC_KP_T_CODE), code);
	assert_true(rep.f[ESC_KP_T_MESSAGE].len < sizeof(msg));
	memcpy(msg, rep.f[ESC_KP_T_MESSAGE].p, rep.f[ESC_KP_T_MESSAGE].len);
	msg[rep.f[ESC_KP_T_MESSAGE].len] = '\0';
	if (strstr(msg, what) == NULL)
		fail_msg("keeper said '%s', expected '%s'", msg, what);
	free(buf);
}

static void
hello(struct fixture *f, uint32_t seq)
{
	struct esc_kp_msg m, rep;
	unsigned char *buf = NULL;

	esc_kp_init(&m, ESC_KP_HELLO, seq);
	send_msg(f->ctx, f->worker_fd, &m);
	recv_msg(f->ctx, f->worker_fd, &buf, &rep);
	assert_int_equal(rep.type, ESC_KP_HELLO | ESC_KP_REPLY);
	assert_int_equal(rep.seq, seq);
	assert_non_null(rep.f[ESC_KP_T_CA].p);
	free(buf);
}

/* DER encodings an ISSUE request carries. */
struct issue_fields {
	unsigned char *subject, *spki, *san;
	int subject_len, spki_len, san_len;
	unsigned char days[4];
};

static void
issue_fields(struct issue_fields *w, X509_NAME *xn, EVP_PKEY *pub, const GENERAL_NAMES *san)
{
	memset(w, 0, sizeof(*w));
	assert_true((w->subject_len = i2d_X509_NAME(xn, &w->subject)) > 0);
	assert_true((w->spki_len = i2d_PUBKEY(pub, &w->spki)) > 0);
	if (san != NULL)
		assert_true((w->san_len = i2d_GENERAL_NAMES(san, &w->san)) > 0);
	esc_kp_put32(w->days, 365);
}

static void
issue_fields_free(struct issue_fields *w)
{
	OPENSSL_free(w->subject);
	OPENSSL_free(w->spki);
	OPENSSL_free(w->san);
}

static void
issue_msg(struct esc_kp_msg *m, uint32_t seq, const char *profile, const struct issue_fields *w)
{
	esc_kp_init(m, ESC_KP_ISSUE, seq);
	esc_kp_set(m, ESC_KP_T_PROFILE, profile, strlen(profile));
	esc_kp_set(m, ESC_KP_T_SUBJECT, w->subject, (size_t)w->subject_len);
	esc_kp_set(m, ESC_KP_T_SPKI, w->spki, (size_t)w->spki_len);
	esc_kp_set(m, ESC_KP_T_DAYS, w->days, 4);
	if (w->san != NULL)
		esc_kp_set(m, ESC_KP_T_SAN, w->san, (size_t)w->san_len);
}

static void
test_frames_order(void **state)
{
	struct fixture *f = *state;
	struct esc_kp_msg m;
	unsigned char id[8], code[4];

	/* Nothing before the greeting. */
	esc_kp_init(&m, ESC_KP_RELEASE, 1);
	esc_kp_put64(id, 1);
	esc_kp_set(&m, ESC_KP_T_ID, id, 8);
	refused(f, &m, ESC_ERR_BAD_INPUT, "before the greeting");
	hello(f, 2);
	/* One greeting per connection. */
	esc_kp_init(&m, ESC_KP_HELLO, 3);
	refused(f, &m, ESC_ERR_BAD_INPUT, "a second keeper greeting");
	/* Numbered in order: a replayed or skipped number is refused. */
	esc_kp_init(&m, ESC_KP_RELEASE, 3);
	esc_kp_set(&m, ESC_KP_T_ID, id, 8);
	refused(f, &m, ESC_ERR_BAD_INPUT, "");
	esc_kp_init(&m, ESC_KP_RELEASE, 9);
	esc_kp_set(&m, ESC_KP_T_ID, id, 8);
	refused(f, &m, ESC_ERR_BAD_INPUT, "");
	/* A reply is no request (and uses up no number). */
	esc_kp_init(&m, ESC_KP_ERROR, 4);
	esc_kp_put32(code, 1);
	esc_kp_set(&m, ESC_KP_T_CODE, code, 4);
	esc_kp_set(&m, ESC_KP_T_MESSAGE, "x", 1);
	refused(f, &m, ESC_ERR_BAD_INPUT, "is not a request");
	/* A release of a request the keeper cannot read is no release: it has no database here. */
	esc_kp_init(&m, ESC_KP_RELEASE, 4);
	esc_kp_set(&m, ESC_KP_T_ID, id, 8);
	refused(f, &m, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	/* The connection goes on after every refusal, in order. */
	esc_kp_init(&m, ESC_KP_HELLO, 5);
	refused(f, &m, ESC_ERR_BAD_INPUT, "a second keeper greeting");
}

static void
test_frames_issue(void **state)
{
	struct fixture *f = *state;
	X509_NAME *with_mail = name_of("Frank", "frank@example.org"), *plain = name_of("Grace", NULL),
		  *empty = X509_NAME_new();
	GENERAL_NAMES *san = NULL, *wrong = sk_GENERAL_NAME_new_null();
	struct issue_fields w;
	struct esc_kp_msg m, rep;
	unsigned char *buf = NULL, days[4];
	const unsigned char *p;
	uint32_t seq = 1;
	X509 *x;

	assert_non_null(empty);
	assert_non_null(wrong);
	assert_int_equal(esc_profile_email_sans(f->ctx, with_mail, &san), ESC_OK);
	assert_int_equal(esc_profile_add_name(wrong, GEN_EMAIL, (const unsigned char *)"mallory@example.org", 19), 1);
	hello(f, seq++);

	/* Profiles: known, and one enrollees may use. */
	issue_fields(&w, with_mail, keys.p256, san);
	issue_msg(&m, seq++, "nope", &w);
	refused(f, &m, ESC_ERR_POLICY, "keeper: unknown certificate profile");
	issue_msg(&m, seq++, "tls-server", &w);
	refused(f, &m, ESC_ERR_POLICY, "keeper: profile 'tls-server' is not available for enrollment");
	/* The profile's validity and no other. */
	issue_msg(&m, seq++, "encryption", &w);
	esc_kp_put32(days, 3650);
	esc_kp_set(&m, ESC_KP_T_DAYS, days, 4);
	refused(f, &m, ESC_ERR_POLICY, "keeper: profile 'encryption' certificates are valid 365 days, no other");
	issue_fields_free(&w);

	/* Alternative names: exactly those the profile derives from the subject. */
	issue_fields(&w, with_mail, keys.p256, NULL);
	issue_msg(&m, seq++, "encryption", &w);
	refused(f, &m, ESC_ERR_POLICY, "alternative names asked for are not those profile 'encryption' derives");
	issue_fields_free(&w);
	issue_fields(&w, with_mail, keys.p256, wrong);
	issue_msg(&m, seq++, "encryption", &w);
	refused(f, &m, ESC_ERR_POLICY, "alternative names asked for are not those");
	issue_fields_free(&w);
	issue_fields(&w, plain, keys.p256, wrong);
	issue_msg(&m, seq++, "signing", &w);
	refused(f, &m, ESC_ERR_POLICY, "alternative names asked for are not those profile 'signing' derives");
	issue_fields_free(&w);

	/* The profile's key types; a subject and a key that are what they say. */
	issue_fields(&w, plain, keys.rsa1024, NULL);
	issue_msg(&m, seq++, "encryption", &w);
	refused(f, &m, ESC_ERR_POLICY, "does not allow rsa1024");
	issue_fields_free(&w);
	issue_fields(&w, plain, keys.p256, NULL);
	w.spki_len--; /* cut short */
	issue_msg(&m, seq++, "encryption", &w);
	refused(f, &m, ESC_ERR_BAD_INPUT, "keeper: the public key is not one DER SubjectPublicKeyInfo");
	issue_fields_free(&w);
	/* One structure and nothing after it (the keeper's kept decoder must see all of the field). */
	issue_fields(&w, plain, keys.p256, NULL);
	{
		unsigned char *longer = OPENSSL_malloc((size_t)w.spki_len + 1);

		assert_non_null(longer);
		memcpy(longer, w.spki, (size_t)w.spki_len);
		longer[w.spki_len] = 0;
		OPENSSL_free(w.spki);
		w.spki = longer;
		w.spki_len++;
	}
	issue_msg(&m, seq++, "encryption", &w);
	refused(f, &m, ESC_ERR_BAD_INPUT, "keeper: the public key is not one DER SubjectPublicKeyInfo");
	issue_fields_free(&w);
	issue_fields(&w, empty, keys.p256, NULL);
	issue_msg(&m, seq++, "encryption", &w);
	refused(f, &m, ESC_ERR_BAD_INPUT, "keeper: the subject is not one non-empty DER name");
	issue_fields_free(&w);

	/* Envelopes are opened for archival profiles only. */
	esc_kp_init(&m, ESC_KP_OPEN_TRANSPORT, seq++);
	esc_kp_set(&m, ESC_KP_T_PROFILE, "signing", 7);
	esc_kp_set(&m, ESC_KP_T_ENVELOPE, "0", 1);
	refused(f, &m, ESC_ERR_POLICY, "keeper: envelopes are opened only for archival profiles");

	/* After all that, a request by the rules is answered: a certificate the keeper built. */
	issue_fields(&w, with_mail, keys.rsa2048, san);
	issue_msg(&m, seq, "encryption", &w);
	send_msg(f->ctx, f->worker_fd, &m);
	recv_msg(f->ctx, f->worker_fd, &buf, &rep);
	assert_int_equal(rep.type, ESC_KP_ISSUE | ESC_KP_REPLY);
	assert_int_equal(rep.seq, seq);
	p = rep.f[ESC_KP_T_CERT].p;
	assert_non_null(x = d2i_X509(NULL, &p, (long)rep.f[ESC_KP_T_CERT].len));
	assert_issued(x, keys.rsa2048, KU_KEY_ENCIPHERMENT);
	X509_free(x);
	free(buf);
	issue_fields_free(&w);

	GENERAL_NAMES_free(san);
	GENERAL_NAMES_free(wrong);
	X509_NAME_free(with_mail);
	X509_NAME_free(plain);
	X509_NAME_free(empty);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_issue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_issue_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_transport, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_transport_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seal_server_key, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remote_hello, setup_remote, teardown),
		cmocka_unit_test_setup_teardown(test_remote_issue, setup_remote, teardown),
		cmocka_unit_test_setup_teardown(test_remote_transport, setup_remote, teardown),
		cmocka_unit_test(test_pubkey_spki),
		cmocka_unit_test_setup_teardown(test_token_gate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remote_needs_database, setup_remote, teardown),
		cmocka_unit_test_setup_teardown(test_remote_status, setup_remote, teardown),
		cmocka_unit_test_setup_teardown(test_frames_order, setup_served, teardown),
		cmocka_unit_test_setup_teardown(test_frames_issue, setup_served, teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
