/*
 * Certificates: names, serials, self-signed CA, CSRs, issuance.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>

#include "internal.h"

#define NAME_MAX_LEN 1024
#define SERIAL_BYTES 20

enum esc_err
esc_name_parse(struct esc_ctx *ctx, const char *text, X509_NAME **out)
{
	X509_NAME *name = NULL;
	char buf[NAME_MAX_LEN + 1], *p, *comp, *eq, *save = NULL;
	const char *sep = ",";
	enum esc_err r;

	if (text == NULL || *text == '\0' || strlen(text) > NAME_MAX_LEN)
		return esc_error(ctx, ESC_ERR_USAGE, "a subject name must be 1..%d characters", NAME_MAX_LEN);
	snprintf(buf, sizeof(buf), "%s", text);
	p = buf;
	if (*p == '/') {
		sep = "/";
		p++;
	}
	if ((name = X509_NAME_new()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (comp = strtok_r(p, sep, &save); comp != NULL; comp = strtok_r(NULL, sep, &save)) {
		while (isspace((unsigned char)*comp))
			comp++;
		if ((eq = strchr(comp, '=')) == NULL || eq == comp || eq[1] == '\0') {
			r = esc_error(ctx, ESC_ERR_USAGE, "subject component '%s' is not TYPE=value", comp);
			goto out;
		}
		*eq = '\0';
		if (OBJ_txt2nid(comp) == NID_undef ||
		    !X509_NAME_add_entry_by_txt(name, comp, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1, 0)) {
			ERR_clear_error();
			r = esc_error(ctx, ESC_ERR_USAGE, "subject attribute type '%s' is unknown or its value invalid",
				      comp);
			goto out;
		}
	}
	if (X509_NAME_entry_count(name) == 0) {
		r = esc_error(ctx, ESC_ERR_USAGE, "subject '%s' has no components", text);
		goto out;
	}
	*out = name;
	name = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_NAME_free(name);
	return r;
}

char *
esc_name_to_string(const X509_NAME *name)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *s = NULL, *data;
	long n;

	if (b == NULL)
		return NULL;
	if (X509_NAME_print_ex(b, name, 0, (XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB & ~XN_FLAG_DN_REV)) >= 0 &&
	    (n = BIO_get_mem_data(b, &data)) >= 0 && (s = malloc((size_t)n + 1)) != NULL) {
		memcpy(s, data, (size_t)n);
		s[n] = '\0';
	}
	BIO_free(b);
	return s;
}

void
esc_cert_fingerprint(X509 *cert, char out[ESC_FINGERPRINT_MAX])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0, i;
	size_t off;

	snprintf(out, ESC_FINGERPRINT_MAX, "SHA256");
	if (!X509_digest(cert, EVP_sha256(), md, &n))
		return;
	off = strlen(out);
	for (i = 0; i < n && off + 3 < ESC_FINGERPRINT_MAX; i++, off += 3)
		snprintf(out + off, ESC_FINGERPRINT_MAX - off, ":%02X", md[i]);
}

char *
esc_cert_serial_hex(const X509 *cert)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex, *s = NULL;
	size_t i;

	if (bn == NULL)
		return NULL;
	if ((hex = BN_bn2hex(bn)) != NULL) {
		if ((s = strdup(hex)) != NULL)
			for (i = 0; s[i]; i++)
				s[i] = (char)tolower((unsigned char)s[i]);
		OPENSSL_free(hex);
	}
	BN_free(bn);
	return s;
}

/* A random positive serial of 159 bits (RFC 5280: at most 20 octets). */
static int
set_random_serial(X509 *x)
{
	unsigned char buf[SERIAL_BYTES];
	BIGNUM *bn = NULL;
	int ok = 0;

	if (RAND_bytes(buf, sizeof(buf)) != 1)
		return 0;
	buf[0] &= 0x7f;
	buf[0] |= 0x40; /* never a short serial */
	if ((bn = BN_bin2bn(buf, sizeof(buf), NULL)) != NULL &&
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL)
		ok = 1;
	BN_free(bn);
	return ok;
}

static const EVP_MD *
digest_for(EVP_PKEY *pub)
{
	/* Match the hash strength to the key: SHA-384 for P-384, else SHA-256. */
	if (EVP_PKEY_is_a(pub, "EC") && EVP_PKEY_get_bits(pub) > 256)
		return EVP_sha384();
	return EVP_sha256();
}

static int
add_ext(X509 *issuer, X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	if ((ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value)) == NULL)
		return 0;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

static enum esc_err
new_cert(struct esc_ctx *ctx, EVP_PKEY *pub, const X509_NAME *name, int days, X509 **out)
{
	X509 *x = NULL;
	enum esc_err r;

	if (days < 1 || days > 36500)
		return esc_error(ctx, ESC_ERR_USAGE, "validity must be 1..36500 days, not %d", days);
	if ((x = X509_new()) == NULL || !X509_set_version(x, X509_VERSION_3) || !set_random_serial(x) ||
	    !X509_set_subject_name(x, name) || X509_gmtime_adj(X509_getm_notBefore(x), -300) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) == NULL || !X509_set_pubkey(x, pub)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the certificate");
		goto out;
	}
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_free(x);
	return r;
}

/* new_cert, never valid beyond ca_cert itself (RFC 5280 path validation would fail). */
/* A uniformResourceIdentifier general name holding url (an IA5String; checked by config.c); NULL if out of memory. */
static GENERAL_NAME *
uri_name(const char *url)
{
	GENERAL_NAME *g = GENERAL_NAME_new();
	ASN1_IA5STRING *s = ASN1_IA5STRING_new();

	if (g == NULL || s == NULL || !ASN1_STRING_set(s, url, (int)strlen(url))) {
		GENERAL_NAME_free(g);
		ASN1_IA5STRING_free(s);
		return NULL;
	}
	GENERAL_NAME_set0_value(g, GEN_URI, s);
	return g;
}

/*
 * The CRL distribution point and the authority information access
 * (caIssuers) of ctx's publication settings, each when set
 * (esc_ctx_set_publication).  Built as structures, not through
 * X509V3_EXT_conf_nid's text syntax, in which a ',' in a URL would start
 * another value.  1, or 0 when out of memory.
 */
static int
add_publication(struct esc_ctx *ctx, X509 *x)
{
	const struct esc_publication *p = esc_ctx_publication(ctx);
	CRL_DIST_POINTS *cdp = NULL;
	DIST_POINT *dp = NULL;
	AUTHORITY_INFO_ACCESS *aia = NULL;
	ACCESS_DESCRIPTION *ad = NULL;
	GENERAL_NAME *g = NULL;
	int ok = 0;

	if (p->crl_url[0] != '\0') {
		if ((cdp = sk_DIST_POINT_new_null()) == NULL || (dp = DIST_POINT_new()) == NULL ||
		    (dp->distpoint = DIST_POINT_NAME_new()) == NULL ||
		    (dp->distpoint->name.fullname = GENERAL_NAMES_new()) == NULL ||
		    (g = uri_name(p->crl_url)) == NULL || !sk_GENERAL_NAME_push(dp->distpoint->name.fullname, g))
			goto out;
		g = NULL;		 /* transferred */
		dp->distpoint->type = 0; /* fullName */
		if (!sk_DIST_POINT_push(cdp, dp))
			goto out;
		dp = NULL; /* transferred */
		if (X509_add1_ext_i2d(x, NID_crl_distribution_points, cdp, 0, X509V3_ADD_REPLACE) != 1)
			goto out;
	}
	if (p->ca_issuer_url[0] != '\0') {
		if ((aia = sk_ACCESS_DESCRIPTION_new_null()) == NULL || (ad = ACCESS_DESCRIPTION_new()) == NULL ||
		    (g = uri_name(p->ca_issuer_url)) == NULL)
			goto out;
		GENERAL_NAME_free(ad->location);
		ad->location = g;
		g = NULL; /* transferred */
		ad->method = OBJ_nid2obj(NID_ad_ca_issuers);
		if (!sk_ACCESS_DESCRIPTION_push(aia, ad))
			goto out;
		ad = NULL; /* transferred */
		if (X509_add1_ext_i2d(x, NID_info_access, aia, 0, X509V3_ADD_REPLACE) != 1)
			goto out;
	}
	ok = 1;
out:
	GENERAL_NAME_free(g);
	DIST_POINT_free(dp);
	ACCESS_DESCRIPTION_free(ad);
	CRL_DIST_POINTS_free(cdp);
	AUTHORITY_INFO_ACCESS_free(aia);
	return ok;
}

/*
 * A certificate for pub under ca_cert, its validity capped at the CA's,
 * with the CRL distribution point and caIssuers of ctx's publication
 * settings: every certificate the CA signs is built here.
 */
static enum esc_err
new_cert_under(struct esc_ctx *ctx, X509 *ca_cert, EVP_PKEY *pub, const X509_NAME *name, int days, X509 **out)
{
	X509 *x = NULL;
	enum esc_err r;

	if ((r = new_cert(ctx, pub, name, days, &x)) != ESC_OK)
		return r;
	if (ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca_cert)) > 0 &&
	    !X509_set1_notAfter(x, X509_get0_notAfter(ca_cert))) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot limit the certificate's validity");
		goto out;
	}
	if (!add_publication(ctx, x)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the CRL distribution point and CA issuer URLs");
		goto out;
	}
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_free(x);
	return r;
}

/* Sign x with signer and prove the signature verifies with verify_key. */
static enum esc_err
sign_and_check(struct esc_ctx *ctx, X509 *x, EVP_PKEY *signer, EVP_PKEY *verify_key, const char *what)
{
	if (X509_sign(x, signer, digest_for(verify_key)) <= 0)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "the token could not sign the %s", what);
	if (X509_verify(x, verify_key) != 1)
		return esc_error_ossl(ctx, ESC_ERR_MISMATCH,
				      "the %s's signature does not verify with the signing key's "
				      "public half",
				      what);
	return ESC_OK;
}

enum esc_err
esc_ca_self_sign(struct esc_ctx *ctx, EVP_PKEY *signer, EVP_PKEY *pub, const char *subject, int days, X509 **out)
{
	X509 *x = NULL;
	X509_NAME *name = NULL;
	enum esc_err r;

	if ((r = esc_name_parse(ctx, subject, &name)) != ESC_OK)
		return r;
	r = new_cert(ctx, pub, name, days, &x);
	X509_NAME_free(name);
	if (r != ESC_OK)
		return r;
	if (!X509_set_issuer_name(x, X509_get_subject_name(x)) ||
	    !add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") ||
	    !add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") ||
	    !add_ext(x, x, NID_subject_key_identifier, "hash") ||
	    !add_ext(x, x, NID_authority_key_identifier, "keyid:always")) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the CA certificate's extensions");
		goto out;
	}
	/* Proves the token key and the public key we certify belong together. */
	if ((r = sign_and_check(ctx, x, signer, pub, "CA certificate")) != ESC_OK)
		goto out;
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_free(x);
	return r;
}

enum esc_err
esc_ca_make_csr(struct esc_ctx *ctx, EVP_PKEY *signer, EVP_PKEY *pub, const char *subject, X509_REQ **out)
{
	X509_REQ *req = NULL;
	X509_NAME *name = NULL;
	enum esc_err r;

	if ((r = esc_name_parse(ctx, subject, &name)) != ESC_OK)
		return r;
	if ((req = X509_REQ_new()) == NULL || !X509_REQ_set_version(req, 0) || !X509_REQ_set_subject_name(req, name) ||
	    !X509_REQ_set_pubkey(req, pub)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the certificate request");
		goto out;
	}
	if (X509_REQ_sign(req, signer, digest_for(pub)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "the token could not sign the certificate request");
		goto out;
	}
	if (X509_REQ_verify(req, pub) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_MISMATCH, "the request's signature does not verify");
		goto out;
	}
	*out = req;
	req = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_REQ_free(req);
	X509_NAME_free(name);
	return r;
}

enum esc_err
esc_ca_issue(struct esc_ctx *ctx, X509 *ca_cert, EVP_PKEY *signer, EVP_PKEY *pub, const X509_NAME *subject, int days,
	     enum esc_cert_profile profile, X509 **out)
{
	X509 *x = NULL;
	EVP_PKEY *ca_pub = X509_get0_pubkey(ca_cert);
	const char *ku;
	enum esc_err r;

	if ((r = new_cert_under(ctx, ca_cert, pub, subject, days, &x)) != ESC_OK)
		return r;
	ku = profile == ESC_PROFILE_AUDIT ? "critical,digitalSignature"
	     : EVP_PKEY_is_a(pub, "EC")	  ? "critical,keyAgreement"
					  : "critical,keyEncipherment";
	if (profile == ESC_PROFILE_KRA && !add_ext(ca_cert, x, NID_ext_key_usage, ESC_OID_KRA_EKU)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the Key Recovery Agent extended key usage");
		goto out;
	}
	if (!X509_set_issuer_name(x, X509_get_subject_name(ca_cert)) ||
	    !add_ext(ca_cert, x, NID_basic_constraints, "critical,CA:FALSE") ||
	    !add_ext(ca_cert, x, NID_key_usage, ku) || !add_ext(ca_cert, x, NID_subject_key_identifier, "hash") ||
	    !add_ext(ca_cert, x, NID_authority_key_identifier, "keyid:always")) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the certificate's extensions");
		goto out;
	}
	if ((r = sign_and_check(ctx, x, signer, ca_pub, "certificate")) != ESC_OK)
		goto out;
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_free(x);
	return r;
}

enum esc_err
esc_ca_issue_ee(struct esc_ctx *ctx, X509 *ca_cert, EVP_PKEY *signer, const struct esc_ee_spec *spec, X509 **out)
{
	X509 *x = NULL;
	EVP_PKEY *ca_pub = X509_get0_pubkey(ca_cert);
	enum esc_err r;

	if (spec->subject == NULL || X509_NAME_entry_count(spec->subject) == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "an end-entity certificate needs a subject");
	if (spec->key_usage == NULL || *spec->key_usage == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "an end-entity certificate needs a key usage");
	if (ca_pub == NULL)
		return esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the CA certificate has no usable public key");
	if (X509_cmp_current_time(X509_get0_notAfter(ca_cert)) <= 0)
		return esc_error(ctx, ESC_ERR_STATE, "the CA certificate has expired: it issues nothing more");
	if ((r = new_cert_under(ctx, ca_cert, spec->pub, spec->subject, spec->days, &x)) != ESC_OK)
		return r;
	if (!X509_set_issuer_name(x, X509_get_subject_name(ca_cert)) ||
	    !add_ext(ca_cert, x, NID_basic_constraints, "critical,CA:FALSE") ||
	    !add_ext(ca_cert, x, NID_subject_key_identifier, "hash") ||
	    !add_ext(ca_cert, x, NID_authority_key_identifier, "keyid:always")) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the certificate's extensions");
		goto out;
	}
	if (!add_ext(ca_cert, x, NID_key_usage, spec->key_usage) ||
	    (spec->ext_key_usage != NULL && !add_ext(ca_cert, x, NID_ext_key_usage, spec->ext_key_usage))) {
		r = esc_error_ossl(ctx, ESC_ERR_USAGE, "cannot add key usage '%s' / extended key usage '%s'",
				   spec->key_usage, spec->ext_key_usage ? spec->ext_key_usage : "");
		goto out;
	}
	if (spec->san != NULL && sk_GENERAL_NAME_num(spec->san) > 0 &&
	    X509_add1_ext_i2d(x, NID_subject_alt_name, (void *)spec->san, 0, X509V3_ADD_APPEND) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the subject alternative names");
		goto out;
	}
	if (X509_sign(x, signer, digest_for(ca_pub)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_PKCS11, "the CA token could not sign the certificate");
		goto out;
	}
	if (X509_verify(x, ca_pub) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_MISMATCH,
				   "the certificate's signature does not verify with the CA certificate: the token "
				   "signed with another key");
		goto out;
	}
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_free(x);
	return r;
}

int
esc_cert_issued_by(X509 *cert, X509 *ca)
{
	int yes = X509_check_issued(ca, cert) == X509_V_OK && X509_verify(cert, X509_get0_pubkey(ca)) == 1;

	ERR_clear_error();
	return yes;
}

int
esc_cert_matches_key(X509 *cert, EVP_PKEY *pub)
{
	EVP_PKEY *cpub = X509_get0_pubkey(cert);

	return cpub != NULL && EVP_PKEY_eq(cpub, pub) == 1;
}
