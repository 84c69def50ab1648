/*
 * Unit tests: certificate profiles (src/lib/profile.c): lookup, which key
 * types each allows, server-generated keys, the alternative names a
 * profile derives from the subject, and the end-entity certificate the
 * keeper builds from a profile (esc_profile_ee_spec, then esc_ca_issue_ee
 * with a software CA key), refusals included.  No token, no database.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/ctx.h>
#include <p11escrow/profile.h>

#include "profile_internal.h"
#include "testctx.h"

#define ALL_TYPES (ESC_EKEY_RSA2048 | ESC_EKEY_RSA3072 | ESC_EKEY_RSA4096 | ESC_EKEY_EC_P256 | ESC_EKEY_EC_P384)

/* Keys made once for the whole run (RSA generation is slow). */
static struct {
	EVP_PKEY *rsa2048, *rsa3072, *rsa1024, *rsa_e3, *p256, *p384, *p521, *ed25519;
	EVP_PKEY *ca_key;
	X509 *ca;
} keys;

static EVP_PKEY *
rsa_with_exponent(unsigned bits, unsigned long e)
{
	EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	BIGNUM *bn = BN_new();
	EVP_PKEY *k = NULL;

	if (kc != NULL && bn != NULL && BN_set_word(bn, e) && EVP_PKEY_keygen_init(kc) == 1 &&
	    EVP_PKEY_CTX_set_rsa_keygen_bits(kc, (int)bits) == 1 && EVP_PKEY_CTX_set1_rsa_keygen_pubexp(kc, bn) == 1)
		(void)EVP_PKEY_keygen(kc, &k);
	BN_free(bn);
	EVP_PKEY_CTX_free(kc);
	return k;
}

static int
group_setup(void **state)
{
	struct esc_ctx *ctx = NULL;
	int ok;

	(void)state;
	keys.rsa2048 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	keys.rsa3072 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	keys.rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	keys.rsa_e3 = rsa_with_exponent(2048, 3);
	keys.p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys.p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	keys.p521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	keys.ed25519 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	keys.ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	ok = keys.rsa2048 && keys.rsa3072 && keys.rsa1024 && keys.rsa_e3 && keys.p256 && keys.p384 && keys.p521 &&
	     keys.ed25519 && keys.ca_key && esc_ctx_new(&ctx) == ESC_OK &&
	     esc_ca_self_sign(ctx, keys.ca_key, keys.ca_key, "CN=Profile Test CA", 3650, &keys.ca) == ESC_OK;
	esc_ctx_free(ctx);
	return ok ? 0 : -1;
}

static int
group_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(keys.rsa2048);
	EVP_PKEY_free(keys.rsa3072);
	EVP_PKEY_free(keys.rsa1024);
	EVP_PKEY_free(keys.rsa_e3);
	EVP_PKEY_free(keys.p256);
	EVP_PKEY_free(keys.p384);
	EVP_PKEY_free(keys.p521);
	EVP_PKEY_free(keys.ed25519);
	EVP_PKEY_free(keys.ca_key);
	X509_free(keys.ca);
	return 0;
}

static const struct profile_def *
def_of(const char *name)
{
	const struct esc_profile *p = esc_profile_find(name);

	assert_non_null(p);
	assert_non_null(esc_profile_def(p));
	return esc_profile_def(p);
}

/* ---- Lookup ------------------------------------------------------------------ */

static void
test_find(void **state)
{
	const struct esc_profile *enc = esc_profile_find("encryption");

	(void)state;
	assert_non_null(enc);
	assert_string_equal(ESC_PROFILE_DEFAULT, "encryption");
	/* No label selects the default. */
	assert_ptr_equal(esc_profile_find(NULL), enc);
	assert_ptr_equal(esc_profile_find(""), enc);
	/* Names are exact. */
	assert_null(esc_profile_find("Encryption"));
	assert_null(esc_profile_find("encryption "));
	assert_null(esc_profile_find("nope"));
	assert_true(enc->archival && !enc->signing && enc->enrollable);
	assert_true(esc_profile_find("encryption-rsa")->archival);
	assert_true(esc_profile_find("signing")->signing && !esc_profile_find("signing")->archival);
	/* The service's own certificate kind is not enrollable. */
	assert_false(esc_profile_find("tls-server")->enrollable);
}

static void
test_table(void **state)
{
	static const char *const names[] = {"encryption", "encryption-rsa", "signing", "tls-server"};
	const struct esc_profile *p;
	size_t i;

	(void)state;
	for (i = 0; (p = esc_profile_at(i)) != NULL; i++) {
		assert_true(i < sizeof(names) / sizeof(names[0]));
		assert_string_equal(p->name, names[i]);
		assert_ptr_equal(esc_profile_find(p->name), p);
		assert_ptr_equal(&esc_profile_def(p)->p, p);
		assert_true(p->summary != NULL && *p->summary != '\0');
		/* A signing key is never archived, an archived one never signs. */
		assert_false(p->archival && p->signing);
		/* What /serverkeygen makes is a type the profile allows. */
		assert_true(p->keygen == 0 || (p->keys & p->keygen) == p->keygen);
		/* Enrollees make their own signing keys. */
		if (p->signing && p->enrollable)
			assert_int_equal(p->keygen, 0);
		assert_true(p->days > 0 && p->days <= 825);
		assert_int_equal(p->keys & ~(unsigned)ALL_TYPES, 0);
	}
	assert_int_equal(i, sizeof(names) / sizeof(names[0]));
	assert_null(esc_profile_at(i));
	assert_null(esc_profile_at((size_t)-1));
}

/* A caller's copy of a profile never carries its own rules: the table's apply. */
static void
test_def_is_the_tables(void **state)
{
	struct esc_ctx *ctx = *state;
	struct esc_profile copy = *esc_profile_find("tls-server"), unknown = copy;

	copy.keys = ALL_TYPES;
	copy.enrollable = 1;
	copy.days = 36500;
	assert_ptr_equal(esc_profile_def(&copy), def_of("tls-server"));
	assert_int_equal(esc_profile_def(&copy)->p.keys, ESC_EKEY_EC_P256);
	assert_int_equal(esc_profile_check_key(ctx, &copy, keys.rsa2048), ESC_ERR_POLICY);

	unknown.name = "made-up";
	assert_null(esc_profile_def(&unknown));
	assert_int_equal(esc_profile_check_key(ctx, &unknown, keys.p256), ESC_ERR_USAGE);
	assert_string_equal(esc_ctx_errmsg(ctx), "unknown certificate profile");
	unknown.name = NULL;
	assert_null(esc_profile_def(&unknown));
	assert_null(esc_profile_def(NULL));
}

/* ---- Keys -------------------------------------------------------------------- */

static void
test_key_types(void **state)
{
	(void)state;
	assert_int_equal(esc_enroll_key_type(keys.rsa2048), ESC_EKEY_RSA2048);
	assert_int_equal(esc_enroll_key_type(keys.rsa3072), ESC_EKEY_RSA3072);
	assert_int_equal(esc_enroll_key_type(keys.p256), ESC_EKEY_EC_P256);
	assert_int_equal(esc_enroll_key_type(keys.p384), ESC_EKEY_EC_P384);
	/* Too short, a small public exponent, another curve, another algorithm: no profile allows them. */
	assert_int_equal(esc_enroll_key_type(keys.rsa1024), 0);
	assert_int_equal(esc_enroll_key_type(keys.rsa_e3), 0);
	assert_int_equal(esc_enroll_key_type(keys.p521), 0);
	assert_int_equal(esc_enroll_key_type(keys.ed25519), 0);
	assert_int_equal(esc_enroll_key_type(NULL), 0);
}

static void
test_check_key(void **state)
{
	struct esc_ctx *ctx = *state;
	const struct esc_profile *enc = esc_profile_find("encryption"), *tls = esc_profile_find("tls-server");

	assert_int_equal(esc_profile_check_key(ctx, enc, keys.rsa2048), ESC_OK);
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.rsa3072), ESC_OK);
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.p256), ESC_OK);
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.p384), ESC_OK);
	assert_int_equal(esc_profile_check_key(ctx, esc_profile_find("signing"), keys.p384), ESC_OK);
	assert_int_equal(esc_profile_check_key(ctx, tls, keys.p256), ESC_OK);

	/* Refusals name what was found and what is allowed. */
	assert_int_equal(esc_profile_check_key(ctx, tls, keys.rsa2048), ESC_ERR_POLICY);
	assert_string_equal(esc_ctx_errmsg(ctx), "profile 'tls-server' does not allow rsa2048 keys (allowed: ec-p256)");
	assert_int_equal(esc_profile_check_key(ctx, tls, keys.p384), ESC_ERR_POLICY);
	assert_string_equal(esc_ctx_errmsg(ctx), "profile 'tls-server' does not allow ec-p384 keys (allowed: ec-p256)");
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.rsa1024), ESC_ERR_POLICY);
	assert_string_equal(esc_ctx_errmsg(ctx),
			    "profile 'encryption' does not allow rsa1024 (or an unusual public exponent) keys "
			    "(allowed: rsa2048, rsa3072, rsa4096, ec-p256, ec-p384)");
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.rsa_e3), ESC_ERR_POLICY);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "rsa2048 (or an unusual public exponent)"));
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.p521), ESC_ERR_POLICY);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "EC on curve secp521r1 keys"));
	assert_int_equal(esc_profile_check_key(ctx, enc, keys.ed25519), ESC_ERR_POLICY);
	assert_non_null(strstr(esc_ctx_errmsg(ctx), "does not allow ED25519 keys"));
	assert_int_equal(esc_profile_check_key(ctx, enc, NULL), ESC_ERR_USAGE);
	assert_string_equal(esc_ctx_errmsg(ctx), "no public key to check");
	assert_int_equal(esc_profile_check_key(ctx, NULL, keys.p256), ESC_ERR_USAGE);
}

static void
test_generate_key(void **state)
{
	static const struct {
		const char *profile;
		unsigned type;
	} cases[] = {{"encryption", ESC_EKEY_EC_P256},
		     {"encryption-rsa", ESC_EKEY_RSA2048},
		     {"tls-server", ESC_EKEY_EC_P256}};
	struct esc_ctx *ctx = *state;
	EVP_PKEY *k = NULL;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct esc_profile *p = esc_profile_find(cases[i].profile);

		assert_int_equal(esc_profile_generate_key(ctx, p, &k), ESC_OK);
		assert_int_equal(esc_enroll_key_type(k), cases[i].type);
		assert_int_equal(esc_profile_check_key(ctx, p, k), ESC_OK);
		EVP_PKEY_free(k);
		k = NULL;
	}
	/* A signing key is made by its owner: never here, and *out untouched. */
	assert_int_equal(esc_profile_generate_key(ctx, esc_profile_find("signing"), &k), ESC_ERR_POLICY);
	assert_string_equal(esc_ctx_errmsg(ctx), "profile 'signing' has no server-generated keys: a signing key is "
						 "made by its owner and never leaves them");
	assert_null(k);
	assert_int_equal(esc_profile_generate_key(ctx, NULL, &k), ESC_ERR_USAGE);
	assert_null(k);
}

/* ---- Alternative names ------------------------------------------------------- */

/* A subject with a common name and each of mails as an emailAddress (raw bytes, not checked). */
static X509_NAME *
subject_with(const char *const *mails, size_t n)
{
	X509_NAME *xn = X509_NAME_new();
	size_t i;

	assert_non_null(xn);
	assert_true(X509_NAME_add_entry_by_NID(xn, NID_commonName, MBSTRING_UTF8, (const unsigned char *)"Alice", -1,
					       -1, 0));
	for (i = 0; i < n; i++)
		assert_true(X509_NAME_add_entry_by_NID(xn, NID_pkcs9_emailAddress, V_ASN1_IA5STRING,
						       (const unsigned char *)mails[i], -1, -1, 0));
	return xn;
}

static void
assert_email(const GENERAL_NAMES *gens, int i, const char *want)
{
	const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
	int type = -1;
	const ASN1_STRING *s = GENERAL_NAME_get0_value(gn, &type);

	assert_int_equal(type, GEN_EMAIL);
	assert_int_equal(ASN1_STRING_length(s), (int)strlen(want));
	assert_memory_equal(ASN1_STRING_get0_data(s), want, strlen(want));
}

static void
test_email_sans(void **state)
{
	static const char *const one[] = {"alice@example.org"};
	static const char *const two[] = {"alice@example.org", "a.b+c@sub.example.net"};
	struct esc_ctx *ctx = *state;
	GENERAL_NAMES *gens = NULL;
	X509_NAME *xn;

	xn = subject_with(one, 1);
	assert_int_equal(esc_profile_email_sans(ctx, xn, &gens), ESC_OK);
	assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
	assert_email(gens, 0, "alice@example.org");
	GENERAL_NAMES_free(gens);
	gens = NULL;
	X509_NAME_free(xn);

	/* Every emailAddress, in the subject's order. */
	xn = subject_with(two, 2);
	assert_int_equal(esc_profile_email_sans(ctx, xn, &gens), ESC_OK);
	assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
	assert_email(gens, 0, two[0]);
	assert_email(gens, 1, two[1]);
	GENERAL_NAMES_free(gens);
	gens = NULL;
	X509_NAME_free(xn);

	/* None: an empty list, no extension later. */
	xn = subject_with(NULL, 0);
	assert_int_equal(esc_profile_email_sans(ctx, xn, &gens), ESC_OK);
	assert_non_null(gens);
	assert_int_equal(sk_GENERAL_NAME_num(gens), 0);
	GENERAL_NAMES_free(gens);
	gens = NULL;
	X509_NAME_free(xn);
}

static void
test_email_sans_refused(void **state)
{
	static const char *const bad[] = {
		"alice",		   /* no @ */
		"@example.org",		   /* no local part */
		"alice@",		   /* no domain */
		"a@b@example.org",	   /* two @ */
		"alice smith@example.org", /* a space */
		"<alice@example.org>",	   /* a display form */
		"alice,bob@example.org",   /* a list */
		"al\x7f"
		"ce@example.org", /* a control character */
		"a@",
	};
	struct esc_ctx *ctx = *state;
	char long_mail[300];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]) + 1; i++) {
		const char *mail = i < sizeof(bad) / sizeof(bad[0]) ? bad[i] : long_mail;
		const char *mails[2] = {"ok@example.org", mail};
		GENERAL_NAMES *gens = NULL;
		X509_NAME *xn;

		if (mail == long_mail) { /* 255 characters: one too many */
			memset(long_mail, 'a', 243);
			memcpy(long_mail + 243, "@example.org", 13);
			assert_int_equal(strlen(long_mail), 255);
		}
		xn = subject_with(mails, 2);
		assert_int_equal(esc_profile_email_sans(ctx, xn, &gens), ESC_ERR_POLICY);
		assert_string_equal(esc_ctx_errmsg(ctx), "the subject's emailAddress is not a plain mail address");
		assert_null(gens); /* nothing half-made is handed out */
		X509_NAME_free(xn);
	}
}

static void
test_add_name(void **state)
{
	static const unsigned char ip[4] = {192, 0, 2, 7};
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	const ASN1_STRING *s;
	int type = -1;

	(void)state;
	assert_non_null(gens);
	assert_int_equal(esc_profile_add_name(gens, GEN_IPADD, ip, 4), 1);
	assert_int_equal(esc_profile_add_name(gens, GEN_DNS, (const unsigned char *)"escrow.example", 14), 1);
	assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
	s = GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(gens, 0), &type);
	assert_int_equal(type, GEN_IPADD);
	assert_int_equal(ASN1_STRING_type(s), V_ASN1_OCTET_STRING);
	assert_memory_equal(ASN1_STRING_get0_data(s), ip, 4);
	s = GENERAL_NAME_get0_value(sk_GENERAL_NAME_value(gens, 1), &type);
	assert_int_equal(type, GEN_DNS);
	assert_int_equal(ASN1_STRING_type(s), V_ASN1_IA5STRING);
	assert_memory_equal(ASN1_STRING_get0_data(s), "escrow.example", 14);
	GENERAL_NAMES_free(gens);
}

/* ---- What the keeper builds ---------------------------------------------------- */

static void
test_ee_spec(void **state)
{
	static const struct {
		const char *profile;
		int ec;
		const char *ku, *eku;
		int days;
	} cases[] = {
		{"encryption", 0, "critical,keyEncipherment", "emailProtection", 365},
		{"encryption", 1, "critical,keyAgreement", "emailProtection", 365},
		{"encryption-rsa", 0, "critical,keyEncipherment", "emailProtection", 365},
		{"signing", 0, "critical,digitalSignature,nonRepudiation", "emailProtection,clientAuth", 365},
		{"signing", 1, "critical,digitalSignature,nonRepudiation", "emailProtection,clientAuth", 365},
		{"tls-server", 1, "critical,digitalSignature", "serverAuth", 825},
	};
	struct esc_ctx *ctx = *state;
	X509_NAME *xn = subject_with(NULL, 0);
	GENERAL_NAMES *san = sk_GENERAL_NAME_new_null();
	struct esc_ee_spec spec;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		EVP_PKEY *pub = cases[i].ec ? keys.p256 : keys.rsa2048;

		memset(&spec, 0, sizeof(spec));
		assert_int_equal(esc_profile_ee_spec(ctx, def_of(cases[i].profile), xn, pub, san, &spec), ESC_OK);
		assert_ptr_equal(spec.subject, xn);
		assert_ptr_equal(spec.pub, pub);
		assert_ptr_equal(spec.san, san);
		assert_string_equal(spec.key_usage, cases[i].ku);
		assert_string_equal(spec.ext_key_usage, cases[i].eku);
		assert_int_equal(spec.days, cases[i].days);
	}
	GENERAL_NAMES_free(san);
	X509_NAME_free(xn);
}

static void
test_ee_spec_refused(void **state)
{
	struct esc_ctx *ctx = *state;
	X509_NAME *xn = subject_with(NULL, 0);
	struct esc_ee_spec spec, before;

	/* A key the profile does not allow gets no specification, and *spec stays as it was. */
	memset(&spec, 0x5a, sizeof(spec));
	before = spec;
	assert_int_equal(esc_profile_ee_spec(ctx, def_of("tls-server"), xn, keys.rsa2048, NULL, &spec), ESC_ERR_POLICY);
	assert_memory_equal(&spec, &before, sizeof(spec));
	assert_int_equal(esc_profile_ee_spec(ctx, def_of("encryption"), xn, keys.rsa1024, NULL, &spec), ESC_ERR_POLICY);
	assert_int_equal(esc_profile_ee_spec(ctx, def_of("signing"), xn, keys.p521, NULL, &spec), ESC_ERR_POLICY);
	assert_int_equal(esc_profile_ee_spec(ctx, def_of("encryption"), xn, NULL, NULL, &spec), ESC_ERR_USAGE);
	assert_memory_equal(&spec, &before, sizeof(spec));
	assert_int_equal(esc_profile_ee_spec(ctx, NULL, xn, keys.p256, NULL, &spec), ESC_ERR_INTERNAL);
	X509_NAME_free(xn);
}

/* The certificate the keeper would sign: issue it with a software CA key and read it back. */
static X509 *
issue(struct esc_ctx *ctx, const char *profile, EVP_PKEY *pub, X509_NAME *xn)
{
	const struct profile_def *def = def_of(profile);
	GENERAL_NAMES *san = NULL;
	struct esc_ee_spec spec;
	X509 *x = NULL;

	if (def->email_san)
		assert_int_equal(esc_profile_email_sans(ctx, xn, &san), ESC_OK);
	assert_int_equal(esc_profile_ee_spec(ctx, def, xn, pub, san, &spec), ESC_OK);
	assert_int_equal(esc_ca_issue_ee(ctx, keys.ca, keys.ca_key, &spec, &x), ESC_OK);
	GENERAL_NAMES_free(san);
	assert_int_equal(X509_verify(x, keys.ca_key), 1);
	assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(keys.ca)), 0);
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), xn), 0);
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), pub), 1);
	assert_int_equal(X509_check_ca(x), 0); /* basicConstraints CA:FALSE */
	return x;
}

/* Validity in whole days (notBefore is set a few minutes back). */
static int
validity_days(X509 *x)
{
	int days = 0, secs = 0;

	assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
	return days;
}

static int
critical(X509 *x, int nid)
{
	int i = X509_get_ext_by_NID(x, nid, -1);

	assert_true(i >= 0);
	return X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

static void
test_built_certificates(void **state)
{
	static const char *const mail[] = {"alice@example.org"};
	struct esc_ctx *ctx = *state;
	X509_NAME *xn = subject_with(mail, 1);
	GENERAL_NAMES *gens;
	X509 *x;

	/* encryption, RSA: keyEncipherment only, S/MIME, the subject's mail as rfc822Name, 365 days. */
	x = issue(ctx, "encryption", keys.rsa2048, xn);
	assert_int_equal(X509_get_key_usage(x), KU_KEY_ENCIPHERMENT);
	assert_int_equal(critical(x, NID_key_usage), 1);
	assert_int_equal(X509_get_extended_key_usage(x), XKU_SMIME);
	assert_int_equal(validity_days(x), 365);
	gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	assert_non_null(gens);
	assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
	assert_email(gens, 0, "alice@example.org");
	GENERAL_NAMES_free(gens);
	X509_free(x);

	/* encryption, EC: keyAgreement only. */
	x = issue(ctx, "encryption", keys.p384, xn);
	assert_int_equal(X509_get_key_usage(x), KU_KEY_AGREEMENT);
	assert_int_equal(X509_get_extended_key_usage(x), XKU_SMIME);
	X509_free(x);

	/* signing: digitalSignature and nonRepudiation, S/MIME and TLS client, never encipherment. */
	x = issue(ctx, "signing", keys.p256, xn);
	assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION);
	assert_int_equal(X509_get_extended_key_usage(x), XKU_SMIME | XKU_SSL_CLIENT);
	assert_int_equal(validity_days(x), 365);
	X509_free(x);
	X509_NAME_free(xn);

	/* No mail in the subject: no subjectAltName at all. */
	xn = subject_with(NULL, 0);
	x = issue(ctx, "encryption-rsa", keys.rsa3072, xn);
	assert_int_equal(X509_get_ext_by_NID(x, NID_subject_alt_name, -1), -1);
	X509_free(x);

	/* tls-server: serverAuth, digitalSignature, 825 days. */
	x = issue(ctx, "tls-server", keys.p256, xn);
	assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
	assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_SERVER);
	assert_int_equal(validity_days(x), 825);
	X509_free(x);
	X509_NAME_free(xn);
}

/* The one URI of a GENERAL_NAME, NUL-terminated in buf. */
static const char *
uri_of(const GENERAL_NAME *g, char *buf, size_t len)
{
	const ASN1_IA5STRING *u;

	assert_int_equal(g->type, GEN_URI);
	u = g->d.uniformResourceIdentifier;
	assert_true((size_t)ASN1_STRING_length(u) < len);
	memcpy(buf, ASN1_STRING_get0_data(u), (size_t)ASN1_STRING_length(u));
	buf[ASN1_STRING_length(u)] = '\0';
	return buf;
}

/* x's CRL distribution point and caIssuers are exactly crl and issuer (each NULL: no such extension). */
static void
assert_publication(X509 *x, const char *crl, const char *issuer)
{
	CRL_DIST_POINTS *cdp = X509_get_ext_d2i(x, NID_crl_distribution_points, NULL, NULL);
	AUTHORITY_INFO_ACCESS *aia = X509_get_ext_d2i(x, NID_info_access, NULL, NULL);
	char buf[600];

	if (crl == NULL) {
		assert_null(cdp);
	} else {
		DIST_POINT *dp;

		assert_non_null(cdp);
		assert_int_equal(sk_DIST_POINT_num(cdp), 1);
		dp = sk_DIST_POINT_value(cdp, 0);
		assert_non_null(dp->distpoint);
		assert_int_equal(dp->distpoint->type, 0);
		assert_int_equal(sk_GENERAL_NAME_num(dp->distpoint->name.fullname), 1);
		assert_string_equal(uri_of(sk_GENERAL_NAME_value(dp->distpoint->name.fullname, 0), buf, sizeof(buf)),
				    crl);
		assert_int_equal(critical(x, NID_crl_distribution_points), 0);
	}
	if (issuer == NULL) {
		assert_null(aia);
	} else {
		ACCESS_DESCRIPTION *ad;

		assert_non_null(aia);
		assert_int_equal(sk_ACCESS_DESCRIPTION_num(aia), 1);
		ad = sk_ACCESS_DESCRIPTION_value(aia, 0);
		assert_int_equal(OBJ_obj2nid(ad->method), NID_ad_ca_issuers);
		assert_string_equal(uri_of(ad->location, buf, sizeof(buf)), issuer);
		assert_int_equal(critical(x, NID_info_access), 0);
	}
	CRL_DIST_POINTS_free(cdp);
	AUTHORITY_INFO_ACCESS_free(aia);
}

/*
 * crl_url and ca_issuer_url (esc_ctx_set_publication) go into every
 * certificate the CA signs, end-entity and KRA alike, as given (a ',' in a
 * URL stays in it); unset, neither extension.  Bad settings leave ctx as it was.
 */
static void
test_publication(void **state)
{
	static const char crl[] = "http://pki.example.test/crl?ca=p11escrow,v=2";
	static const char issuer[] = "ldap:///CN=p11escrow%20CA,O=Example?cACertificate";
	struct esc_ctx *ctx = *state;
	struct esc_publication p = {crl, issuer, 3600, 25}, bad = p;
	X509_NAME *xn = subject_with(NULL, 0);
	X509 *x;

	x = issue(ctx, "signing", keys.p256, xn);
	assert_publication(x, NULL, NULL);
	X509_free(x);

	assert_int_equal(esc_ctx_set_publication(ctx, &p), ESC_OK);
	assert_int_equal(esc_ctx_publication(ctx)->crl_validity, 3600);
	assert_int_equal(esc_ctx_publication(ctx)->crl_refresh, 25);
	x = issue(ctx, "encryption", keys.rsa2048, xn);
	assert_publication(x, crl, issuer);
	X509_free(x);
	x = NULL;
	assert_int_equal(esc_ca_issue(ctx, keys.ca, keys.ca_key, keys.p256, xn, 30, ESC_PROFILE_KRA, &x), ESC_OK);
	assert_publication(x, crl, issuer);
	X509_free(x);

	bad.crl_url = "http://pki.example.test/a b.crl";
	assert_int_equal(esc_ctx_set_publication(ctx, &bad), ESC_ERR_CONFIG);
	bad = p;
	bad.crl_refresh = 95;
	assert_int_equal(esc_ctx_set_publication(ctx, &bad), ESC_ERR_CONFIG);
	bad = p;
	bad.crl_validity = 59;
	assert_int_equal(esc_ctx_set_publication(ctx, &bad), ESC_ERR_CONFIG);
	assert_string_equal(esc_ctx_publication(ctx)->crl_url, crl);

	/* Only the CRL: no caIssuers. */
	p.ca_issuer_url = NULL;
	assert_int_equal(esc_ctx_set_publication(ctx, &p), ESC_OK);
	x = issue(ctx, "tls-server", keys.p256, xn);
	assert_publication(x, crl, NULL);
	X509_free(x);
	X509_NAME_free(xn);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find),
		cmocka_unit_test(test_table),
		cmocka_unit_test_setup_teardown(test_def_is_the_tables, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test(test_key_types),
		cmocka_unit_test_setup_teardown(test_check_key, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_generate_key, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_email_sans, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_email_sans_refused, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test(test_add_name),
		cmocka_unit_test_setup_teardown(test_ee_spec, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_ee_spec_refused, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_built_certificates, test_ctx_setup, test_ctx_teardown),
		cmocka_unit_test_setup_teardown(test_publication, test_ctx_setup, test_ctx_teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
