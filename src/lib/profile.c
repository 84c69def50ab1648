/*
 * Certificate profiles: the built-in table (profile.h).  What a profile
 * allows is decided here and nowhere else: enrollment checks requests
 * against it and the keeper builds certificates from it (the alternative
 * names a profile derives, esc_profile_email_sans, and the end-entity
 * specification, esc_profile_ee_spec).  Pure: no token, no database.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/profile.h>

#include "internal.h"
#include "profile_internal.h"

#define ALL_KEYS (ESC_EKEY_RSA2048 | ESC_EKEY_RSA3072 | ESC_EKEY_RSA4096 | ESC_EKEY_EC_P256 | ESC_EKEY_EC_P384)

static const struct profile_def profiles[] = {
	{{"encryption", "encryption keys (S/MIME, files), archived at enrollment; server-generated keys are EC P-256",
	  1, 0, ALL_KEYS, ESC_EKEY_EC_P256, 365, 1},
	 "critical,keyEncipherment",
	 "critical,keyAgreement",
	 "emailProtection",
	 1},
	{{"encryption-rsa", "as encryption, but server-generated keys are RSA-2048", 1, 0, ALL_KEYS, ESC_EKEY_RSA2048,
	  365, 1},
	 "critical,keyEncipherment",
	 "critical,keyAgreement",
	 "emailProtection",
	 1},
	{{"signing", "signing keys (S/MIME signatures, TLS client authentication); never archived, never generated", 0,
	  1, ALL_KEYS, 0, 365, 1},
	 "critical,digitalSignature,nonRepudiation",
	 "critical,digitalSignature,nonRepudiation",
	 "emailProtection,clientAuth",
	 1},
	{{"tls-server", "the service's own TLS server certificate (p11escrow service-cert); not enrollable", 0, 1,
	  ESC_EKEY_EC_P256, ESC_EKEY_EC_P256, 825, 0},
	 "critical,digitalSignature",
	 "critical,digitalSignature",
	 "serverAuth",
	 0},
};

static const struct {
	unsigned type;
	const char *name;
} key_names[] = {
	{ESC_EKEY_RSA2048, "rsa2048"}, {ESC_EKEY_RSA3072, "rsa3072"}, {ESC_EKEY_RSA4096, "rsa4096"},
	{ESC_EKEY_EC_P256, "ec-p256"}, {ESC_EKEY_EC_P384, "ec-p384"},
};

const struct esc_profile *
esc_profile_find(const char *name)
{
	size_t i;

	if (name == NULL || *name == '\0')
		name = ESC_PROFILE_DEFAULT;
	for (i = 0; i < ESC_ARRAY_LEN(profiles); i++)
		if (strcmp(profiles[i].p.name, name) == 0)
			return &profiles[i].p;
	return NULL;
}

const struct esc_profile *
esc_profile_at(size_t i)
{
	return i < ESC_ARRAY_LEN(profiles) ? &profiles[i].p : NULL;
}

const struct profile_def *
esc_profile_def(const struct esc_profile *p)
{
	size_t i;

	if (p == NULL || p->name == NULL)
		return NULL;
	for (i = 0; i < ESC_ARRAY_LEN(profiles); i++)
		if (p == &profiles[i].p || strcmp(p->name, profiles[i].p.name) == 0)
			return &profiles[i];
	return NULL;
}

static const char *
key_name(unsigned type)
{
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(key_names); i++)
		if (key_names[i].type == type)
			return key_names[i].name;
	return NULL;
}

/* "rsa2048, ec-p256" for a set of key types. */
static void
key_list(unsigned types, char *buf, size_t len)
{
	size_t i, used = 0;

	buf[0] = '\0';
	for (i = 0; i < ESC_ARRAY_LEN(key_names); i++) {
		if (!(types & key_names[i].type))
			continue;
		snprintf(buf + used, len - used, "%s%s", used ? ", " : "", key_names[i].name);
		used = strlen(buf);
	}
}

static int
ec_curve_nid(EVP_PKEY *pub)
{
	char group[64];
	size_t glen = 0;
	int nid;

	if (EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &glen) != 1) {
		ERR_clear_error();
		return NID_undef;
	}
	if ((nid = OBJ_sn2nid(group)) == NID_undef)
		nid = EC_curve_nist2nid(group);
	return nid;
}

unsigned
esc_enroll_key_type(EVP_PKEY *pub)
{
	BIGNUM *e = NULL;
	unsigned type = 0;
	int bits;

	if (pub == NULL)
		return 0;
	if (EVP_PKEY_is_a(pub, "RSA")) {
		/* An odd public exponent of at least 65537, as CAs require. */
		if (EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_E, &e) != 1 || !BN_is_odd(e) ||
		    BN_num_bits(e) < 17) {
			ERR_clear_error();
			BN_free(e);
			return 0;
		}
		BN_free(e);
		bits = EVP_PKEY_get_bits(pub);
		type = bits == 2048   ? ESC_EKEY_RSA2048
		       : bits == 3072 ? ESC_EKEY_RSA3072
		       : bits == 4096 ? ESC_EKEY_RSA4096
				      : 0;
	} else if (EVP_PKEY_is_a(pub, "EC")) {
		switch (ec_curve_nid(pub)) {
		case NID_X9_62_prime256v1:
			type = ESC_EKEY_EC_P256;
			break;
		case NID_secp384r1:
			type = ESC_EKEY_EC_P384;
			break;
		default:
			break;
		}
	}
	return type;
}

/* What to call a key we do not accept, for the message. */
static void
describe_key(EVP_PKEY *pub, char *buf, size_t len)
{
	if (EVP_PKEY_is_a(pub, "RSA"))
		snprintf(buf, len, "rsa%d (or an unusual public exponent)", EVP_PKEY_get_bits(pub));
	else if (EVP_PKEY_is_a(pub, "EC"))
		snprintf(buf, len, "EC on curve %s",
			 OBJ_nid2sn(ec_curve_nid(pub)) ? OBJ_nid2sn(ec_curve_nid(pub)) : "?");
	else
		snprintf(buf, len, "%s", EVP_PKEY_get0_type_name(pub) ? EVP_PKEY_get0_type_name(pub) : "unknown type");
}

enum esc_err
esc_profile_check_key(struct esc_ctx *ctx, const struct esc_profile *p, EVP_PKEY *pub)
{
	const struct profile_def *def = esc_profile_def(p);
	unsigned type;
	char found[64], allowed[96];

	if (def == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "unknown certificate profile");
	if (pub == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "no public key to check");
	type = esc_enroll_key_type(pub);
	if (type != 0 && (def->p.keys & type))
		return ESC_OK;
	key_list(def->p.keys, allowed, sizeof(allowed));
	if (type != 0)
		snprintf(found, sizeof(found), "%s", key_name(type));
	else
		describe_key(pub, found, sizeof(found));
	return esc_error(ctx, ESC_ERR_POLICY, "profile '%s' does not allow %s keys (allowed: %s)", def->p.name, found,
			 allowed);
}

enum esc_err
esc_profile_generate_key(struct esc_ctx *ctx, const struct esc_profile *p, EVP_PKEY **out)
{
	const struct profile_def *def = esc_profile_def(p);
	EVP_PKEY *key = NULL;

	if (def == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "unknown certificate profile");
	switch (def->p.keygen) {
	case ESC_EKEY_RSA2048:
		key = EVP_RSA_gen(2048);
		break;
	case ESC_EKEY_RSA3072:
		key = EVP_RSA_gen(3072);
		break;
	case ESC_EKEY_EC_P256:
		key = EVP_EC_gen("P-256");
		break;
	case ESC_EKEY_EC_P384:
		key = EVP_EC_gen("P-384");
		break;
	case 0:
		return esc_error(ctx, ESC_ERR_POLICY, "profile '%s' has no server-generated keys%s", def->p.name,
				 def->p.signing ? ": a signing key is made by its owner and never leaves them" : "");
	default:
		return esc_error(ctx, ESC_ERR_INTERNAL, "profile '%s' names an unknown key type", def->p.name);
	}
	if (key == NULL)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot generate a %s key", key_name(def->p.keygen));
	*out = key;
	return ESC_OK;
}

/* ---- What the keeper builds from a profile ---------------------------------- */

int
esc_profile_add_name(GENERAL_NAMES *gens, int type, const unsigned char *data, int len)
{
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_STRING *s = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();

	if (gn == NULL || s == NULL || !ASN1_STRING_set(s, data, len)) {
		GENERAL_NAME_free(gn);
		ASN1_STRING_free(s);
		return 0;
	}
	GENERAL_NAME_set0_value(gn, type, s);
	if (!sk_GENERAL_NAME_push(gens, gn)) {
		GENERAL_NAME_free(gn);
		return 0;
	}
	return 1;
}

/* A plain mail address: local@domain, printable ASCII without spaces, bounded. */
static int
mail_address(const unsigned char *s, int len)
{
	int i, at = -1;

	if (len < 3 || len > 254)
		return 0;
	for (i = 0; i < len; i++) {
		if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == ',' || s[i] == '<' || s[i] == '>')
			return 0;
		if (s[i] == '@') {
			if (at >= 0)
				return 0;
			at = i;
		}
	}
	return at > 0 && at < len - 1;
}

/* S/MIME: the subject's emailAddress attributes become rfc822Name alternative names (profile_internal.h). */
enum esc_err
esc_profile_email_sans(struct esc_ctx *ctx, const X509_NAME *subject, GENERAL_NAMES **out)
{
	GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
	int i = -1;
	enum esc_err r;

	if (gens == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	while ((i = X509_NAME_get_index_by_NID(subject, NID_pkcs9_emailAddress, i)) >= 0) {
		const ASN1_STRING *v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));

		if (!mail_address(ASN1_STRING_get0_data(v), ASN1_STRING_length(v))) {
			r = esc_error(ctx, ESC_ERR_POLICY, "the subject's emailAddress is not a plain mail address");
			goto out;
		}
		if (!esc_profile_add_name(gens, GEN_EMAIL, ASN1_STRING_get0_data(v), ASN1_STRING_length(v))) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
	}
	*out = gens;
	gens = NULL; /* transferred */
	r = ESC_OK;
out:
	GENERAL_NAMES_free(gens);
	return r;
}

enum esc_err
esc_profile_ee_spec(struct esc_ctx *ctx, const struct profile_def *def, const X509_NAME *subject, EVP_PKEY *pub,
		    const GENERAL_NAMES *san, struct esc_ee_spec *spec)
{
	enum esc_err r;

	if (def == NULL || spec == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_profile_ee_spec: NULL argument");
	if ((r = esc_profile_check_key(ctx, &def->p, pub)) != ESC_OK)
		return r;
	memset(spec, 0, sizeof(*spec));
	spec->subject = subject;
	spec->pub = pub;
	spec->san = san;
	spec->key_usage = EVP_PKEY_is_a(pub, "EC") ? def->ku_ec : def->ku_rsa;
	spec->ext_key_usage = def->eku;
	spec->days = def->p.days;
	return ESC_OK;
}
