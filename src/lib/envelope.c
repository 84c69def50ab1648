/*
 * CMS AuthEnvelopedData (AES-256-GCM) envelopes through OpenSSL's CMS code:
 * no cryptography of our own, only the choice of parameters and the checks
 * around them.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <p11escrow/envelope.h>

#include "envelope_internal.h"
#include "internal.h"

const char *
esc_oaep_hash_name(enum esc_oaep_hash h)
{
	return h == ESC_OAEP_SHA256 ? "rsa-oaep-sha256" : h == ESC_RSA_PKCS1V15 ? "rsa-pkcs1v15" : "rsa-oaep-sha1";
}

enum esc_oaep_hash
esc_oaep_hash_of_recipient(const char *recipient)
{
	if (strcmp(recipient, "rsa-oaep-sha256") == 0)
		return ESC_OAEP_SHA256;
	if (strcmp(recipient, "rsa-pkcs1v15") == 0)
		return ESC_RSA_PKCS1V15;
	return ESC_OAEP_SHA1;
}

void
esc_envelope_plain_free(unsigned char *p, size_t len)
{
	if (p != NULL)
		OPENSSL_secure_clear_free(p, len);
}

/* flags: 0, or CMS_USE_KEYID to name the recipient by its subject key identifier. */
static enum esc_err
add_recipient(struct esc_ctx *ctx, CMS_ContentInfo *cms, X509 *cert, enum esc_oaep_hash hash, unsigned int flags)
{
	EVP_PKEY *pub = X509_get0_pubkey(cert);
	CMS_RecipientInfo *ri;
	EVP_PKEY_CTX *pctx;
	const EVP_MD *md = hash == ESC_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();

	if (pub == NULL)
		return esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "recipient certificate has no usable public key");
	if (EVP_PKEY_is_a(pub, "RSA") && hash == ESC_RSA_PKCS1V15) {
		/* CMS's default for RSA: rsaEncryption, PKCS#1 v1.5 (a card that does nothing else, by policy). */
		if (CMS_add1_recipient_cert(cms, cert, flags) == NULL)
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add an RSA PKCS#1 v1.5 recipient");
		return ESC_OK;
	}
	if (EVP_PKEY_is_a(pub, "RSA")) {
		/* CMS_KEY_PARAM: leave the context open so we can ask for OAEP. */
		if ((ri = CMS_add1_recipient_cert(cms, cert, CMS_KEY_PARAM | flags)) == NULL ||
		    (pctx = CMS_RecipientInfo_get0_pkey_ctx(ri)) == NULL ||
		    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
		    EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add an RSA-OAEP recipient");
		return ESC_OK;
	}
	if (EVP_PKEY_is_a(pub, "EC")) {
		if (CMS_add1_recipient_cert(cms, cert, flags) == NULL)
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add an ECDH recipient");
		return ESC_OK;
	}
	return esc_error(ctx, ESC_ERR_USAGE, "recipient keys must be RSA or EC");
}

static enum esc_err
seal(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *const *recips, const enum esc_oaep_hash *hashes,
     size_t nrecips, unsigned int flags, unsigned char **out, size_t *outlen)
{
	CMS_ContentInfo *cms = NULL;
	BIO *bin = NULL;
	unsigned char *der = NULL;
	enum esc_err r;
	size_t i;
	int n;

	if (nrecips == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "an envelope needs at least one recipient");
	if (inlen == 0 || inlen > ESC_ENVELOPE_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "envelope content must be 1..%d bytes", ESC_ENVELOPE_MAX);
	/* Content embedded, not detached (CMS_encrypt does the same). */
	if ((cms = CMS_AuthEnvelopedData_create(EVP_aes_256_gcm())) == NULL || CMS_set_detached(cms, 0) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot create a CMS AuthEnvelopedData");
		goto out;
	}
	for (i = 0; i < nrecips; i++)
		if ((r = add_recipient(ctx, cms, recips[i], hashes != NULL ? hashes[i] : ESC_OAEP_SHA1, flags)) !=
		    ESC_OK)
			goto out;
	if ((bin = BIO_new_mem_buf(in, (int)inlen)) == NULL || CMS_final(cms, bin, NULL, CMS_BINARY) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encrypt the envelope");
		goto out;
	}
	if ((n = i2d_CMS_ContentInfo(cms, NULL)) <= 0 || (der = malloc((size_t)n)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the envelope");
		goto out;
	}
	{
		unsigned char *p = der;

		if (i2d_CMS_ContentInfo(cms, &p) != n) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the envelope");
			goto out;
		}
	}
	*out = der;
	*outlen = (size_t)n;
	der = NULL; /* transferred */
	r = ESC_OK;
out:
	free(der);
	BIO_free(bin);
	CMS_ContentInfo_free(cms);
	return r;
}

enum esc_err
esc_envelope_seal(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *const *recips,
		  const enum esc_oaep_hash *hashes, size_t nrecips, unsigned char **out, size_t *outlen)
{
	return seal(ctx, in, inlen, recips, hashes, nrecips, 0, out, outlen);
}

/*
 * OpenSSL's CMS takes recipients only as certificates.  A key that has none
 * yet (a KRA key before its certificate is issued) is wrapped in a holder:
 * a certificate that carries pub and its subject key identifier (SHA-1 of
 * the public key, RFC 5280 4.2.1.2 method 1), signed by a throwaway key so
 * that it is well-formed.  The envelope names its recipient by that key
 * identifier alone (CMS_USE_KEYID): nothing of the holder but the key is
 * in it, and the opener builds the same identifier from the same key.
 * Nothing ever verifies the holder's signature.
 */
static enum esc_err
key_holder(struct esc_ctx *ctx, EVP_PKEY *pub, X509 **out)
{
	X509 *x = NULL;
	X509_NAME *name = NULL;
	EVP_PKEY *throwaway = NULL;
	ASN1_OCTET_STRING *skid = NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	enum esc_err r;

	if (!EVP_PKEY_is_a(pub, "RSA") && !EVP_PKEY_is_a(pub, "EC"))
		return esc_error(ctx, ESC_ERR_USAGE, "recipient keys must be RSA or EC");
	if ((x = X509_new()) == NULL || (name = X509_NAME_new()) == NULL || (skid = ASN1_OCTET_STRING_new()) == NULL ||
	    (throwaway = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")) == NULL || X509_set_version(x, 2) != 1 ||
	    ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"p11escrow key holder", -1, -1,
				       0) != 1 ||
	    X509_set_subject_name(x, name) != 1 || X509_set_issuer_name(x, name) != 1 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), 3600) == NULL || X509_set_pubkey(x, pub) != 1 ||
	    X509_pubkey_digest(x, EVP_sha1(), md, &mdlen) != 1 || ASN1_OCTET_STRING_set(skid, md, (int)mdlen) != 1 ||
	    X509_add1_ext_i2d(x, NID_subject_key_identifier, skid, 0, X509V3_ADD_DEFAULT) != 1 ||
	    X509_sign(x, throwaway, NULL) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot name the recipient key");
		goto out;
	}
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	ASN1_OCTET_STRING_free(skid);
	EVP_PKEY_free(throwaway);
	X509_NAME_free(name);
	X509_free(x);
	return r;
}

enum esc_err
esc_envelope_seal_to_key(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, EVP_PKEY *pub,
			 enum esc_oaep_hash hash, unsigned char **out, size_t *outlen)
{
	X509 *holder = NULL;
	enum esc_err r;

	if ((r = key_holder(ctx, pub, &holder)) != ESC_OK)
		return r;
	r = seal(ctx, in, inlen, &holder, &hash, 1, CMS_USE_KEYID, out, outlen);
	X509_free(holder);
	return r;
}

static enum esc_err
parse(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, CMS_ContentInfo **out)
{
	const unsigned char *p = in;
	CMS_ContentInfo *cms;

	if (inlen == 0 || inlen > ESC_ENVELOPE_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "an envelope must be 1..%d bytes", ESC_ENVELOPE_MAX);
	if ((cms = d2i_CMS_ContentInfo(NULL, &p, (long)inlen)) == NULL || p != in + inlen) {
		CMS_ContentInfo_free(cms);
		return esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "not a DER CMS structure");
	}
	if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_id_smime_ct_authEnvelopedData) {
		CMS_ContentInfo_free(cms);
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the CMS structure is not an AuthEnvelopedData");
	}
	*out = cms;
	return ESC_OK;
}

/* Is recipient info ri addressed to cert (key transport to it, or key agreement with one key for it)? */
static int
ri_addressed_to(CMS_RecipientInfo *ri, X509 *cert)
{
	STACK_OF(CMS_RecipientEncryptedKey) *reks;
	int j;

	switch (CMS_RecipientInfo_type(ri)) {
	case CMS_RECIPINFO_TRANS:
		return CMS_RecipientInfo_ktri_cert_cmp(ri, cert) == 0;
	case CMS_RECIPINFO_AGREE:
		reks = CMS_RecipientInfo_kari_get0_reks(ri);
		for (j = 0; j < sk_CMS_RecipientEncryptedKey_num(reks); j++)
			if (CMS_RecipientEncryptedKey_cert_cmp(sk_CMS_RecipientEncryptedKey_value(reks, j), cert) == 0)
				return 1;
		return 0;
	default:
		return 0;
	}
}

int
esc_envelope_cms_addressed_to(CMS_ContentInfo *cms, X509 *cert)
{
	STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(cms);
	int i;

	for (i = 0; i < sk_CMS_RecipientInfo_num(ris); i++)
		if (ri_addressed_to(sk_CMS_RecipientInfo_value(ris, i), cert))
			return 1;
	return 0;
}

int
esc_envelope_cms_kari_wrap_ok(CMS_ContentInfo *cms)
{
	STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(cms);
	int i;

	for (i = 0; i < sk_CMS_RecipientInfo_num(ris); i++) {
		CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);
		X509_ALGOR *alg = NULL, *wrap;
		ASN1_OCTET_STRING *ukm = NULL;
		const ASN1_OBJECT *obj, *wobj;
		const void *pval;
		const ASN1_STRING *seq;
		const unsigned char *p;
		int ptype, nid;

		if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_AGREE)
			continue;
		if (CMS_RecipientInfo_kari_get0_alg(ri, &alg, &ukm) != 1 || alg == NULL)
			return 0;
		/* keyEncryptionAlgorithm's parameter is the KeyWrapAlgorithm, parsed as OpenSSL does (RFC 5753). */
		X509_ALGOR_get0(&obj, &ptype, &pval, alg);
		if (ptype != V_ASN1_SEQUENCE || (seq = pval) == NULL)
			return 0;
		p = ASN1_STRING_get0_data(seq);
		if ((wrap = d2i_X509_ALGOR(NULL, &p, ASN1_STRING_length(seq))) == NULL)
			return 0;
		X509_ALGOR_get0(&wobj, NULL, NULL, wrap);
		nid = OBJ_obj2nid(wobj);
		X509_ALGOR_free(wrap);
		if (nid != NID_id_aes128_wrap && nid != NID_id_aes192_wrap && nid != NID_id_aes256_wrap)
			return 0;
	}
	return 1;
}

enum esc_err
esc_envelope_has_recipient(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *cert, int *yes)
{
	CMS_ContentInfo *cms = NULL;
	enum esc_err r;

	if ((r = parse(ctx, in, inlen, &cms)) != ESC_OK)
		return r;
	*yes = esc_envelope_cms_addressed_to(cms, cert);
	CMS_ContentInfo_free(cms);
	return ESC_OK;
}

/* Does recipient info ri (or, in a key agreement, its encrypted key j) name cert? */
static int
rek_or_ri_is(CMS_RecipientInfo *ri, int j, X509 *cert)
{
	if (CMS_RecipientInfo_type(ri) == CMS_RECIPINFO_TRANS)
		return CMS_RecipientInfo_ktri_cert_cmp(ri, cert) == 0;
	return CMS_RecipientEncryptedKey_cert_cmp(
		       sk_CMS_RecipientEncryptedKey_value(CMS_RecipientInfo_kari_get0_reks(ri), j), cert) == 0;
}

enum esc_err
esc_envelope_addressed_exactly(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *const *certs, size_t n,
			       int *yes)
{
	STACK_OF(CMS_RecipientInfo) *ris;
	CMS_ContentInfo *cms = NULL;
	size_t c, seen = 0;
	int i, j, nk, ok = 1;
	enum esc_err r;

	if ((r = parse(ctx, in, inlen, &cms)) != ESC_OK)
		return r;
	ris = CMS_get0_RecipientInfos(cms);
	for (i = 0; ok && i < sk_CMS_RecipientInfo_num(ris); i++) {
		CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);
		int type = CMS_RecipientInfo_type(ri);

		if (type != CMS_RECIPINFO_TRANS && type != CMS_RECIPINFO_AGREE) {
			ok = 0; /* a password or KEK recipient: someone else could open it */
			break;
		}
		nk = type == CMS_RECIPINFO_TRANS
			     ? 1
			     : sk_CMS_RecipientEncryptedKey_num(CMS_RecipientInfo_kari_get0_reks(ri));
		for (j = 0; ok && j < nk; j++) {
			int found = 0;

			for (c = 0; c < n && !found; c++)
				found = rek_or_ri_is(ri, j, certs[c]);
			ok = found;
			seen++;
		}
	}
	/* Every recipient is one of certs; as many as certs, and each of certs addressed. */
	for (c = 0; ok && c < n; c++)
		ok = esc_envelope_cms_addressed_to(cms, certs[c]);
	*yes = ok && seen == n;
	ERR_clear_error();
	CMS_ContentInfo_free(cms);
	return ESC_OK;
}

/*
 * OpenSSL has no public destructor for a recipient info or an encrypted
 * key, so those taken out of the envelope for its encoding are put back
 * afterwards, and CMS_ContentInfo_free frees them with the rest.
 */
enum esc_err
esc_envelope_keep_recipient(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, X509 *cert, unsigned char **out,
			    size_t *outlen)
{
	CMS_ContentInfo *cms = NULL;
	STACK_OF(CMS_RecipientInfo) *ris, *away_ri = NULL;
	STACK_OF(CMS_RecipientEncryptedKey) *reks = NULL, *away_rek = NULL;
	unsigned char *der = NULL, *copy = NULL;
	int i, n, kept = 0;
	enum esc_err r;

	if ((r = parse(ctx, in, inlen, &cms)) != ESC_OK)
		return r;
	ris = CMS_get0_RecipientInfos(cms);
	if ((away_ri = sk_CMS_RecipientInfo_new_null()) == NULL ||
	    (away_rek = sk_CMS_RecipientEncryptedKey_new_null()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = sk_CMS_RecipientInfo_num(ris) - 1; i >= 0; i--) {
		CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);

		if (ri_addressed_to(ri, cert)) {
			kept++;
			continue;
		}
		if (!sk_CMS_RecipientInfo_push(away_ri, ri)) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		(void)sk_CMS_RecipientInfo_delete(ris, i);
	}
	if (kept != 1) {
		r = kept == 0
			    ? esc_error(ctx, ESC_ERR_NOT_RECIPIENT, "the envelope is not addressed to this key")
			    : esc_error(ctx, ESC_ERR_BAD_INPUT, "the envelope is addressed to this key %d times", kept);
		goto out;
	}
	/* One key agreement may carry keys for several recipients: keep only this one's. */
	if (CMS_RecipientInfo_type(sk_CMS_RecipientInfo_value(ris, 0)) == CMS_RECIPINFO_AGREE) {
		reks = CMS_RecipientInfo_kari_get0_reks(sk_CMS_RecipientInfo_value(ris, 0));
		for (i = sk_CMS_RecipientEncryptedKey_num(reks) - 1; i >= 0; i--) {
			CMS_RecipientEncryptedKey *rek = sk_CMS_RecipientEncryptedKey_value(reks, i);

			if (CMS_RecipientEncryptedKey_cert_cmp(rek, cert) == 0)
				continue;
			if (!sk_CMS_RecipientEncryptedKey_push(away_rek, rek)) {
				r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
				goto out;
			}
			(void)sk_CMS_RecipientEncryptedKey_delete(reks, i);
		}
	}
	if ((n = i2d_CMS_ContentInfo(cms, &der)) <= 0 || (copy = malloc((size_t)n)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the envelope");
		goto out;
	}
	memcpy(copy, der, (size_t)n);
	*out = copy;
	*outlen = (size_t)n;
	copy = NULL; /* transferred */
	r = ESC_OK;
out:
	/* Back where CMS_ContentInfo_free finds them (see above); pushing into a stack with room cannot fail. */
	while (away_rek != NULL && sk_CMS_RecipientEncryptedKey_num(away_rek) > 0)
		(void)sk_CMS_RecipientEncryptedKey_push(reks, sk_CMS_RecipientEncryptedKey_pop(away_rek));
	while (away_ri != NULL && sk_CMS_RecipientInfo_num(away_ri) > 0)
		(void)sk_CMS_RecipientInfo_push(ris, sk_CMS_RecipientInfo_pop(away_ri));
	sk_CMS_RecipientEncryptedKey_free(away_rek);
	sk_CMS_RecipientInfo_free(away_ri);
	OPENSSL_free(der);
	free(copy);
	CMS_ContentInfo_free(cms);
	return r;
}

enum esc_err
esc_envelope_open(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, EVP_PKEY *key, X509 *cert,
		  unsigned char **out, size_t *outlen)
{
	CMS_ContentInfo *cms = NULL;
	BIO *bout = NULL;
	BUF_MEM *mem = NULL;
	unsigned char *plain = NULL;
	enum esc_err r;

	if ((r = parse(ctx, in, inlen, &cms)) != ESC_OK)
		return r;
	if (!esc_envelope_cms_addressed_to(cms, cert)) {
		r = esc_error(ctx, ESC_ERR_NOT_RECIPIENT, "the envelope is not addressed to this key");
		goto out;
	}
	if (!esc_envelope_cms_kari_wrap_ok(cms)) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the envelope's key agreement uses a key wrap other than AES key wrap (RFC 3394)");
		goto out;
	}
	/* Two steps, so a key that fails and a ciphertext that fails are told apart. */
	if (CMS_decrypt_set1_pkey_and_peer(cms, key, cert, NULL) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "the key could not decrypt its part of the envelope");
		goto out;
	}
	/* The plaintext is a private key: keep it in the secure heap. */
	if ((bout = BIO_new(BIO_s_secmem())) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (CMS_decrypt(cms, NULL, NULL, NULL, bout, CMS_BINARY) != 1) {
		r = esc_error_ossl(
			ctx, ESC_ERR_TAMPERED,
			"the envelope failed its integrity check (AES-GCM tag): it was altered or corrupted");
		goto out;
	}
	BIO_get_mem_ptr(bout, &mem);
	if (mem == NULL || mem->length == 0 || mem->length > ESC_ENVELOPE_MAX ||
	    (plain = OPENSSL_secure_malloc(mem->length)) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the envelope's content is empty or too large");
		goto out;
	}
	memcpy(plain, mem->data, mem->length);
	*out = plain;
	*outlen = mem->length;
	plain = NULL; /* transferred */
	r = ESC_OK;
out:
	BIO_free(bout);
	CMS_ContentInfo_free(cms);
	return r;
}

enum esc_err
esc_envelope_open_with_key(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, EVP_PKEY *key, EVP_PKEY *pub,
			   unsigned char **out, size_t *outlen)
{
	X509 *holder = NULL;
	enum esc_err r;

	if ((r = key_holder(ctx, pub, &holder)) != ESC_OK)
		return r;
	r = esc_envelope_open(ctx, in, inlen, key, holder, out, outlen);
	X509_free(holder);
	return r;
}

#define KEK_LEN 32
#define KEYID_MAX 64

enum esc_err
esc_envelope_seal_kek(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, const unsigned char *kek,
		      const unsigned char *keyid, size_t keyidlen, unsigned char **out, size_t *outlen)
{
	CMS_ContentInfo *cms = NULL;
	CMS_RecipientInfo *ri = NULL;
	BIO *bin = NULL;
	unsigned char *key = NULL, *id = NULL, *der = NULL;
	enum esc_err r;
	int n;

	if (inlen == 0 || inlen > ESC_ENVELOPE_MAX || keyidlen == 0 || keyidlen > KEYID_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "envelope content must be 1..%d bytes, its key id 1..%d",
				 ESC_ENVELOPE_MAX, KEYID_MAX);
	if ((cms = CMS_AuthEnvelopedData_create(EVP_aes_256_gcm())) == NULL || CMS_set_detached(cms, 0) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot create a CMS AuthEnvelopedData");
		goto out;
	}
	/*
	 * CMS_add0_recipient_key takes both buffers and would free the key with
	 * OPENSSL_clear_free, not from the secure heap: the key is lent, and
	 * taken back (set0_key NULL) before the envelope is freed.
	 */
	if ((key = OPENSSL_secure_malloc(KEK_LEN)) == NULL || (id = OPENSSL_malloc(keyidlen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(key, kek, KEK_LEN);
	memcpy(id, keyid, keyidlen);
	if ((ri = CMS_add0_recipient_key(cms, NID_id_aes256_wrap, key, KEK_LEN, id, keyidlen, NULL, NULL, NULL)) ==
	    NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add a KEK recipient");
		goto out;
	}
	id = NULL; /* transferred; key only lent */
	if ((bin = BIO_new_mem_buf(in, (int)inlen)) == NULL || CMS_final(cms, bin, NULL, CMS_BINARY) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encrypt the envelope");
		goto out;
	}
	if ((n = i2d_CMS_ContentInfo(cms, &der)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the envelope");
		goto out;
	}
	if ((*out = malloc((size_t)n)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(*out, der, (size_t)n);
	*outlen = (size_t)n;
	r = ESC_OK;
out:
	if (ri != NULL)
		(void)CMS_RecipientInfo_set0_key(ri, NULL, 0);
	if (key != NULL)
		OPENSSL_secure_clear_free(key, KEK_LEN);
	OPENSSL_free(id);
	OPENSSL_free(der);
	BIO_free(bin);
	CMS_ContentInfo_free(cms);
	return r;
}

enum esc_err
esc_envelope_open_kek(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, const unsigned char *kek,
		      const unsigned char *keyid, size_t keyidlen, unsigned char **out, size_t *outlen)
{
	CMS_ContentInfo *cms = NULL;
	STACK_OF(CMS_RecipientInfo) *ris;
	CMS_RecipientInfo *ri;
	X509_ALGOR *alg = NULL;
	ASN1_OCTET_STRING *id = NULL;
	const ASN1_OBJECT *obj;
	BIO *bout = NULL;
	BUF_MEM *mem = NULL;
	unsigned char *plain = NULL;
	enum esc_err r;

	if (keyidlen == 0 || keyidlen > KEYID_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a key id is 1..%d bytes", KEYID_MAX);
	if ((r = parse(ctx, in, inlen, &cms)) != ESC_OK)
		return r;
	ris = CMS_get0_RecipientInfos(cms);
	if (sk_CMS_RecipientInfo_num(ris) != 1 ||
	    CMS_RecipientInfo_type(ri = sk_CMS_RecipientInfo_value(ris, 0)) != CMS_RECIPINFO_KEK ||
	    CMS_RecipientInfo_kekri_get0_id(ri, &alg, &id, NULL, NULL, NULL) != 1 || alg == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the envelope is not addressed to one KEK");
		goto out;
	}
	/* Checked before any unwrapping: AES key wrap with padding is CVE-2026-63072's path (see kari_wrap_ok). */
	X509_ALGOR_get0(&obj, NULL, NULL, alg);
	if (OBJ_obj2nid(obj) != NID_id_aes256_wrap) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the envelope's KEK wraps with other than id-aes256-wrap");
		goto out;
	}
	if (CMS_RecipientInfo_kekri_id_cmp(ri, keyid, keyidlen) != 0) {
		r = esc_error(ctx, ESC_ERR_NOT_RECIPIENT, "the envelope is addressed to another KEK");
		goto out;
	}
	if (CMS_RecipientInfo_set0_key(ri, (unsigned char *)kek, KEK_LEN) != 1 ||
	    CMS_RecipientInfo_decrypt(cms, ri) != 1) {
		(void)CMS_RecipientInfo_set0_key(ri, NULL, 0); /* borrowed: never freed by the envelope */
		r = esc_error_ossl(ctx, ESC_ERR_TAMPERED, "the KEK does not unwrap the envelope's key: a wrong KEK");
		goto out;
	}
	(void)CMS_RecipientInfo_set0_key(ri, NULL, 0);
	if ((bout = BIO_new(BIO_s_secmem())) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* The content key is set; CMS_decrypt with no key and no certificate uses it. */
	if (CMS_decrypt(cms, NULL, NULL, NULL, bout, CMS_BINARY) != 1) {
		r = esc_error_ossl(
			ctx, ESC_ERR_TAMPERED,
			"the envelope failed its integrity check (AES-GCM tag): it was altered or corrupted");
		goto out;
	}
	BIO_get_mem_ptr(bout, &mem);
	if (mem == NULL || mem->length == 0 || mem->length > ESC_ENVELOPE_MAX ||
	    (plain = OPENSSL_secure_malloc(mem->length)) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the envelope's content is empty or too large");
		goto out;
	}
	memcpy(plain, mem->data, mem->length);
	*out = plain;
	*outlen = mem->length;
	r = ESC_OK;
out:
	BIO_free(bout);
	CMS_ContentInfo_free(cms);
	return r;
}
