/*
 * Unit tests for recovery packages as a KRA's workstation receives them from
 * the service (esc_recovery_package_new: no database, no token), and for
 * the checks a completion's output makes before anything is decrypted
 * (esc_recovery_output_cert, esc_recovery_output_token).  The workflow
 * itself runs against real tokens and PostgreSQL in
 * tests/integration/recovery.sh, recovery_output.sh and api.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/x509v3.h>

#include "testctx.h"
#include "testkeys.h"
#include <p11escrow/recovery.h>

#define URI "pkcs11:token=KRA1;id=%01%02;type=private"

struct der {
	unsigned char *p;
	int n;
};

static struct der
der_of(X509 *x)
{
	struct der d = {NULL, 0};

	d.n = i2d_X509(x, &d.p);
	assert_true(d.n > 0);
	return d;
}

static void
test_package_new(void **state)
{
	struct esc_ctx *ctx = *state;
	struct test_keys k = {NULL, NULL, NULL, NULL, NULL, NULL};
	struct esc_recovery_package *p = NULL;
	static const unsigned char pkg[] = {0x30, 0x03, 0x02, 0x01, 0x00};
	const unsigned char *got;
	struct der user, kra;
	unsigned char *big;
	size_t len;

	assert_int_equal(test_keys_make(ctx, &k, 2048, "CN=user", "CN=kra1", "CN=other"), 0);
	user = der_of(k.rsa_cert);
	kra = der_of(k.ec_cert);

	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_OK);
	assert_int_equal(esc_recovery_package_id(p), 7);
	got = esc_recovery_package_der(p, &len);
	assert_int_equal(len, sizeof(pkg));
	assert_memory_equal(got, pkg, sizeof(pkg));
	assert_int_equal(X509_cmp(esc_recovery_package_cert(p), k.rsa_cert), 0);
	assert_int_equal(X509_cmp(esc_recovery_package_kra_cert(p), k.ec_cert), 0);
	assert_string_equal(esc_recovery_package_kra_name(p), "kra1");
	assert_string_equal(esc_recovery_package_key_uri(p), URI);
	esc_recovery_package_free(p);
	esc_recovery_package_free(NULL);

	/* Refused, with nothing returned: an empty or huge package, bad certificates, names, URIs. */
	p = NULL;
	assert_int_equal(
		esc_recovery_package_new(ctx, 7, pkg, 0, user.p, (size_t)user.n, kra.p, (size_t)kra.n, "kra1", URI, &p),
		ESC_ERR_BAD_INPUT);
	assert_non_null(big = calloc(1, 1024 * 1024 + 1));
	assert_int_equal(esc_recovery_package_new(ctx, 7, big, 1024 * 1024 + 1, user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	free(big);
	/* A truncated certificate, or one followed by anything else, is not a certificate. */
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n - 1, "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(big = calloc(1, (size_t)user.n + 1));
	memcpy(big, user.p, (size_t)user.n);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), big, (size_t)user.n + 1, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	free(big);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), pkg, sizeof(pkg), kra.p, (size_t)kra.n,
						  "kra1", URI, &p),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(
		esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, NULL, 0, "kra1", URI, &p),
		ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", "not a uri", &p),
			 ESC_ERR_BAD_INPUT);
	/* A URI carrying a PIN is refused, and the PIN is not repeated. */
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI "?pin-value=secret-4711", &p),
			 ESC_ERR_BAD_INPUT);
	assert_null(strstr(esc_ctx_errmsg(ctx), "secret-4711"));
	/* A received URI never chooses the module the workstation loads. */
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI "?module-path=/tmp/evil.so", &p),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "names a module (module-path)"));
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI "?module-name=evil", &p),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "names a module (module-name)"));
	{
		char name[200];

		memset(name, 'k', sizeof(name) - 1);
		name[sizeof(name) - 1] = '\0';
		assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
							  (size_t)kra.n, name, URI, &p),
				 ESC_ERR_BAD_INPUT);
	}
	assert_null(p);
	OPENSSL_free(user.p);
	OPENSSL_free(kra.p);
	test_keys_free(&k);
}

/*
 * A self-signed certificate for key, valid from `from` to `to` days from
 * now, with keyUsage ku ("critical,keyEncipherment"; NULL: no extension).
 */
static X509 *
recipient(EVP_PKEY *key, long from, long to, const char *ku)
{
	X509 *x = X509_new();
	X509_NAME *n = X509_get_subject_name(x);
	X509_EXTENSION *e = NULL;

	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 7), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"rcpt", -1, -1, 0),
			 1);
	assert_int_equal(X509_set_issuer_name(x, n), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from * 86400));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to * 86400));
	assert_int_equal(X509_set_pubkey(x, key), 1);
	if (ku != NULL) {
		assert_non_null(e = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, ku));
		assert_int_equal(X509_add_ext(x, e, -1), 1);
		X509_EXTENSION_free(e);
	}
	assert_true(X509_sign(x, key, EVP_PKEY_is_a(key, "ED25519") ? NULL : EVP_sha256()) > 0);
	return x;
}

/* esc_recovery_output_cert(ctx, x) with x freed; the output too, if one was made. */
static enum esc_err
try_cert(struct esc_ctx *ctx, X509 *x)
{
	struct esc_recovery_output *o = NULL;
	enum esc_err r = esc_recovery_output_cert(ctx, x, 1, &o);
	size_t len = 1;

	X509_free(x); /* the output holds its own reference */
	if (r == ESC_OK) {
		assert_int_equal(esc_recovery_output_form(o), ESC_RECOVERY_CERT);
		assert_null(esc_recovery_output_data(o, &len));
		assert_int_equal(len, 0);
		assert_string_equal(esc_recovery_output_destination(o), "");
		assert_int_equal(esc_recovery_output_undo(ctx, o), ESC_OK);
	} else
		assert_null(o);
	esc_recovery_output_free(o);
	return r;
}

/* k of n: a package's shares as the workstation adds them from the service's answer. */
static void
test_package_shares(void **state)
{
	struct esc_ctx *ctx = *state;
	struct test_keys k = {NULL, NULL, NULL, NULL, NULL, NULL};
	struct esc_recovery_package *p = NULL;
	static const unsigned char pkg[] = {0x30, 0x03, 0x02, 0x01, 0x00};
	static const char rid[] = "99e45df7-b420-4251-810c-28276b0232d6";
	unsigned char commit[32], sealed[40], *big;
	const unsigned char *got, *c;
	struct der user, kra, old;
	size_t len, i;
	unsigned x;
	X509 *cert;

	memset(commit, 0xc1, sizeof(commit));
	memset(sealed, 0x5e, sizeof(sealed));
	assert_int_equal(test_keys_make(ctx, &k, 2048, "CN=user", "CN=kra1", "CN=other"), 0);
	user = der_of(k.rsa_cert);
	kra = der_of(k.ec_cert);
	old = der_of(k.other_cert);
	assert_int_equal(esc_recovery_package_new(ctx, 7, pkg, sizeof(pkg), user.p, (size_t)user.n, kra.p,
						  (size_t)kra.n, "kra1", URI, &p),
			 ESC_OK);
	assert_int_equal(esc_recovery_package_threshold(p), 0); /* version 1 until a share is added */
	assert_int_equal(esc_recovery_package_nshares(p), 0);
	/* Its own share, sealed to an earlier certificate; a contributed one, to the KRA's certificate now. */
	assert_int_equal(
		esc_recovery_package_add_share(ctx, p, rid, 2, 1, commit, sealed, sizeof(sealed), old.p, (size_t)old.n),
		ESC_OK);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 3, commit, sealed, 20, NULL, 0), ESC_OK);
	assert_int_equal(esc_recovery_package_threshold(p), 2);
	assert_string_equal(esc_recovery_package_record_id(p), rid);
	assert_int_equal(esc_recovery_package_nshares(p), 2);
	assert_non_null(got = esc_recovery_package_share(p, 0, &x, &c, &len, &cert));
	assert_int_equal(x, 1);
	assert_int_equal(len, sizeof(sealed));
	assert_memory_equal(got, sealed, sizeof(sealed));
	assert_memory_equal(c, commit, 32);
	assert_int_equal(X509_cmp(cert, k.other_cert), 0);
	assert_non_null(esc_recovery_package_share(p, 1, &x, &c, &len, &cert));
	assert_int_equal(x, 3);
	assert_int_equal(len, 20);
	assert_int_equal(X509_cmp(cert, k.ec_cert), 0); /* none given: the package's KRA certificate */
	assert_null(esc_recovery_package_share(p, 2, &x, &c, &len, &cert));

	/* Refused, the package unchanged: x twice or out of range, k or record disagreeing, bad k, sizes, cert. */
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 3, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 0, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 256, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 3, 4, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, "11111111-b420-4251-810c-28276b0232d6", 2, 4, commit,
							sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, "short", 2, 4, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 17, 4, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 4, commit, sealed, 0, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	assert_non_null(big = calloc(1, 64 * 1024 + 1));
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 4, commit, big, 64 * 1024 + 1, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	free(big);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 4, commit, sealed, 20, sealed, 20),
			 ESC_ERR_BAD_INPUT);
	assert_int_equal(esc_recovery_package_nshares(p), 2);
	/* At most 16 shares. */
	for (i = 4; i < 18; i++)
		assert_int_equal(
			esc_recovery_package_add_share(ctx, p, rid, 2, (unsigned)i, commit, sealed, 20, NULL, 0),
			ESC_OK);
	assert_int_equal(esc_recovery_package_add_share(ctx, p, rid, 2, 18, commit, sealed, 20, NULL, 0),
			 ESC_ERR_BAD_INPUT);
	esc_recovery_package_free(p);
	OPENSSL_free(user.p);
	OPENSSL_free(kra.p);
	OPENSSL_free(old.p);
	test_keys_free(&k);
}

/* k of n: a contributor's share as its workstation rebuilds it from the service's answer. */
static void
test_share_new(void **state)
{
	struct esc_ctx *ctx = *state;
	struct test_keys k = {NULL, NULL, NULL, NULL, NULL, NULL};
	struct esc_recovery_share *s = NULL;
	struct esc_recovery_share_parts in, got, bad;
	unsigned char commit[32], sealed[40];
	struct der kra, completer;

	memset(commit, 0xc1, sizeof(commit));
	memset(sealed, 0x5e, sizeof(sealed));
	assert_int_equal(test_keys_make(ctx, &k, 2048, "CN=user", "CN=kra2", "CN=kra1"), 0);
	kra = der_of(k.ec_cert);
	completer = der_of(k.other_cert);
	memset(&in, 0, sizeof(in));
	in.id = 7;
	in.record_id = "99e45df7-b420-4251-810c-28276b0232d6";
	in.x = 2;
	in.threshold = 2;
	in.commitment = commit;
	in.sealed = sealed;
	in.sealed_len = sizeof(sealed);
	in.kra_cert = kra.p;
	in.kra_cert_len = (size_t)kra.n;
	in.kra_name = "kra2";
	in.key_uri = URI;
	in.completer_cert = completer.p;
	in.completer_cert_len = (size_t)completer.n;
	in.completer_name = "kra1";
	in.completer_recipient = "rsa-oaep-sha1";
	assert_int_equal(esc_recovery_share_new(ctx, &in, &s), ESC_OK);
	esc_recovery_share_parts(s, &got);
	assert_int_equal(got.id, 7);
	assert_string_equal(got.record_id, in.record_id);
	assert_int_equal(got.x, 2);
	assert_int_equal(got.threshold, 2);
	assert_memory_equal(got.commitment, commit, 32);
	assert_int_equal(got.sealed_len, sizeof(sealed));
	assert_memory_equal(got.sealed, sealed, sizeof(sealed));
	assert_int_equal(got.kra_cert_len, (size_t)kra.n);
	assert_memory_equal(got.kra_cert, kra.p, (size_t)kra.n);
	assert_int_equal(got.completer_cert_len, (size_t)completer.n);
	assert_memory_equal(got.completer_cert, completer.p, (size_t)completer.n);
	assert_string_equal(got.kra_name, "kra2");
	assert_string_equal(got.key_uri, URI);
	assert_string_equal(got.completer_name, "kra1");
	assert_string_equal(got.completer_recipient, "rsa-oaep-sha1");
	esc_recovery_share_free(s);
	esc_recovery_share_free(NULL);

	/* Refused, nothing returned. */
#define REFUSED(field, value)                                                               \
	do {                                                                                \
		s = NULL;                                                                   \
		bad = in;                                                                   \
		bad.field = value;                                                          \
		assert_int_equal(esc_recovery_share_new(ctx, &bad, &s), ESC_ERR_BAD_INPUT); \
		assert_null(s);                                                             \
	} while (0)
	REFUSED(x, 0);
	REFUSED(x, 256);
	REFUSED(threshold, 1);
	REFUSED(threshold, 17);
	REFUSED(record_id, "short");
	REFUSED(commitment, NULL);
	REFUSED(sealed_len, 0);
	REFUSED(sealed_len, 64 * 1024 + 1);
	REFUSED(kra_cert_len, 10);
	REFUSED(completer_cert, sealed);
	REFUSED(kra_name, "");
	REFUSED(completer_name, "bad\nname");
	REFUSED(completer_recipient, NULL);
	REFUSED(key_uri, "pkcs11:token=KRA1;pin-value=1234");
	REFUSED(key_uri, "not a uri");
#undef REFUSED
	OPENSSL_free(kra.p);
	OPENSSL_free(completer.p);
	test_keys_free(&k);
}

static void
test_output_cert(void **state)
{
	struct esc_ctx *ctx = *state;
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");

	assert_non_null(rsa);
	assert_non_null(small);
	assert_non_null(ec);
	assert_non_null(ed);
	/* Valid today, and allowed to carry a key: RSA key encipherment, EC key agreement, or no keyUsage at all. */
	assert_int_equal(try_cert(ctx, recipient(rsa, -1, 30, "critical,keyEncipherment")), ESC_OK);
	assert_int_equal(try_cert(ctx, recipient(rsa, -1, 30, "digitalSignature,keyEncipherment")), ESC_OK);
	assert_int_equal(try_cert(ctx, recipient(rsa, -1, 30, NULL)), ESC_OK);
	assert_int_equal(try_cert(ctx, recipient(ec, -1, 30, "critical,keyAgreement")), ESC_OK);
	assert_int_equal(try_cert(ctx, recipient(ec, -1, 30, NULL)), ESC_OK);
	/* Expired, or not valid yet. */
	assert_int_equal(try_cert(ctx, recipient(rsa, -30, -1, "keyEncipherment")), ESC_ERR_STATE);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "has expired"));
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "certificate SHA256:"));
	assert_non_null(strstr(esc_ctx_errmsg(ctx), ", subject 'CN=rcpt' has expired"));
	assert_int_equal(try_cert(ctx, recipient(rsa, 1, 30, "keyEncipherment")), ESC_ERR_STATE);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "not valid yet"));
	/* keyUsage that forbids it, a small RSA key, a key that is neither RSA nor EC. */
	assert_int_equal(try_cert(ctx, recipient(rsa, -1, 30, "critical,digitalSignature")), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "does not allow key encipherment"));
	assert_int_equal(try_cert(ctx, recipient(rsa, -1, 30, "critical,keyAgreement")), ESC_ERR_BAD_INPUT);
	assert_int_equal(try_cert(ctx, recipient(ec, -1, 30, "critical,keyEncipherment")), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "does not allow key agreement"));
	assert_int_equal(try_cert(ctx, recipient(ec, -1, 30, "critical,digitalSignature")), ESC_ERR_BAD_INPUT);
	assert_int_equal(try_cert(ctx, recipient(small, -1, 30, "keyEncipherment")), ESC_ERR_BAD_INPUT);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "1024 bits"));
	assert_int_equal(try_cert(ctx, recipient(ed, -1, 30, NULL)), ESC_ERR_BAD_INPUT);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(small);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(ed);
}

static void
test_output_forms(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_recovery_output *o = NULL;
	char label[130];

	assert_string_equal(esc_recovery_form_name(ESC_RECOVERY_P12), "p12");
	assert_string_equal(esc_recovery_form_name(ESC_RECOVERY_TOKEN), "token");
	assert_string_equal(esc_recovery_form_name(ESC_RECOVERY_CERT), "cert");
	/* A token output takes no token work until a completion: the label alone is checked here. */
	assert_int_equal(esc_recovery_output_token(ctx, NULL, NULL, &o), ESC_OK);
	assert_int_equal(esc_recovery_output_form(o), ESC_RECOVERY_TOKEN);
	assert_int_equal(esc_recovery_output_undo(ctx, o), ESC_OK); /* nothing written: nothing to take back */
	esc_recovery_output_free(o);
	o = NULL;
	assert_int_equal(esc_recovery_output_token(ctx, NULL, "Alice's mail key", &o), ESC_OK);
	esc_recovery_output_free(o);
	o = NULL;
	memset(label, 'a', sizeof(label) - 1);
	label[sizeof(label) - 1] = '\0';
	assert_int_equal(esc_recovery_output_token(ctx, NULL, label, &o), ESC_ERR_USAGE);
	label[128] = '\0';
	assert_int_equal(esc_recovery_output_token(ctx, NULL, label, &o), ESC_OK);
	esc_recovery_output_free(o);
	o = NULL;
	assert_int_equal(esc_recovery_output_token(ctx, NULL, "", &o), ESC_ERR_USAGE);
	assert_int_equal(esc_recovery_output_token(ctx, NULL, "two\nlines", &o), ESC_ERR_USAGE);
	assert_null(o);
	assert_int_equal(esc_recovery_output_p12(ctx, NULL, &o), ESC_OK);
	assert_int_equal(esc_recovery_output_form(o), ESC_RECOVERY_P12);
	esc_recovery_output_free(o);
	esc_recovery_output_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_package_new, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_package_shares, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_share_new, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_output_cert, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_output_forms, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
