/*
 * EST (RFC 7030, RFC 8951) and CMC (RFC 5272) message codecs.
 *
 * Everything cryptographic is OpenSSL's (CMS, PKCS#7, X509_REQ, base64
 * blocks); this file only chooses parameters, describes the CMC and
 * CsrAttrs structures OpenSSL has no types for (ASN.1 templates below) and
 * checks what arrives from outside: sizes, counts, content types, the
 * PKCS#10 self-signature, the base64 alphabet and padding.
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/enroll.h>
#include <p11escrow/est.h>

#include "internal.h"

/* At most this many entries in each sequence of a PKIData: ours have one or none. */
#define CMC_SEQ_MAX 16
/* Longest AsymmetricDecryptKeyIdentifier accepted (a key identifier is usually a 20-byte hash). */
#define KID_MAX 256
/* id-aa-asymmDecryptKeyID (RFC 7030 §4.4.1.2): OpenSSL has no NID for it. */
#define OID_ASYMM_DECRYPT_KEY_ID "1.2.840.113549.1.9.16.2.54"
/* id-aa-decryptKeyID (RFC 7030 §4.4.1.1): a symmetric key shared with the server. */
#define OID_DECRYPT_KEY_ID "1.2.840.113549.1.9.16.2.37"
/* id-ct-KP-aKeyPackage (RFC 5958 §3): the eContentType of an asymmetric key package. */
#define OID_A_KEY_PACKAGE "2.16.840.1.101.2.1.2.78.5"

/* bodyPartIDs of what esc_cmc_request_build puts into the PKIData. */
#define BODY_PART_TCR 1
#define BODY_PART_ENVELOPE 2

/* ---- ASN.1 of CMC (RFC 5272 §3.2, module with IMPLICIT TAGS) --------------- */

/* Templates as OpenSSL lays them out: clang-format cannot follow these macros. */
/* clang-format off */

/*
 * TaggedAttribute ::= SEQUENCE {
 *     bodyPartID BodyPartID, attrType OBJECT IDENTIFIER, attrValues SET OF AttributeValue }
 */
typedef struct {
	ASN1_INTEGER *body_part_id;
	ASN1_OBJECT *attr_type;
	STACK_OF(ASN1_TYPE) *attr_values;
} TAGGED_ATTRIBUTE;

ASN1_SEQUENCE(TAGGED_ATTRIBUTE) = {
	ASN1_SIMPLE(TAGGED_ATTRIBUTE, body_part_id, ASN1_INTEGER),
	ASN1_SIMPLE(TAGGED_ATTRIBUTE, attr_type, ASN1_OBJECT),
	ASN1_SET_OF(TAGGED_ATTRIBUTE, attr_values, ASN1_ANY),
} static_ASN1_SEQUENCE_END(TAGGED_ATTRIBUTE)

/* TaggedCertificationRequest ::= SEQUENCE { bodyPartID BodyPartID, certificationRequest CertificationRequest } */
typedef struct {
	ASN1_INTEGER *body_part_id;
	X509_REQ *req;
} TAGGED_CERT_REQUEST;

ASN1_SEQUENCE(TAGGED_CERT_REQUEST) = {
	ASN1_SIMPLE(TAGGED_CERT_REQUEST, body_part_id, ASN1_INTEGER),
	ASN1_SIMPLE(TAGGED_CERT_REQUEST, req, X509_REQ),
} static_ASN1_SEQUENCE_END(TAGGED_CERT_REQUEST)

/*
 * TaggedRequest ::= CHOICE {
 *     tcr [0] TaggedCertificationRequest,
 *     crm [1] CertReqMsg,
 *     orm [2] SEQUENCE { bodyPartID, requestMessageType OBJECT IDENTIFIER, requestMessageValue ANY } }
 *
 * Implicit tags (the module's default).  CRMF and other request messages are
 * decoded only as far as telling them apart, then refused.
 */
#define TAGGED_REQUEST_TCR 0
#define TAGGED_REQUEST_CRM 1
#define TAGGED_REQUEST_ORM 2

typedef struct {
	int type;
	union {
		TAGGED_CERT_REQUEST *tcr;
		STACK_OF(ASN1_TYPE) *crm;
		STACK_OF(ASN1_TYPE) *orm;
	} value;
} TAGGED_REQUEST;

ASN1_CHOICE(TAGGED_REQUEST) = {
	ASN1_IMP(TAGGED_REQUEST, value.tcr, TAGGED_CERT_REQUEST, 0),
	ASN1_IMP_SEQUENCE_OF(TAGGED_REQUEST, value.crm, ASN1_ANY, 1),
	ASN1_IMP_SEQUENCE_OF(TAGGED_REQUEST, value.orm, ASN1_ANY, 2),
} static_ASN1_CHOICE_END(TAGGED_REQUEST)

/*
 * TaggedContentInfo ::= SEQUENCE { bodyPartID BodyPartID, contentInfo ContentInfo }
 *
 * The ContentInfo is kept as its encoding (ANY, a SEQUENCE) and decoded with
 * d2i_CMS_ContentInfo on its own, so OpenSSL's CMS code sees it exactly as
 * it sees a top-level structure.
 */
typedef struct {
	ASN1_INTEGER *body_part_id;
	ASN1_TYPE *content_info;
} TAGGED_CONTENT_INFO;

ASN1_SEQUENCE(TAGGED_CONTENT_INFO) = {
	ASN1_SIMPLE(TAGGED_CONTENT_INFO, body_part_id, ASN1_INTEGER),
	ASN1_SIMPLE(TAGGED_CONTENT_INFO, content_info, ASN1_ANY),
} static_ASN1_SEQUENCE_END(TAGGED_CONTENT_INFO)

/* OtherMsg ::= SEQUENCE { bodyPartID BodyPartID, otherMsgType OBJECT IDENTIFIER, otherMsgValue ANY } */
typedef struct {
	ASN1_INTEGER *body_part_id;
	ASN1_OBJECT *msg_type;
	ASN1_TYPE *msg_value;
} OTHER_MSG;

ASN1_SEQUENCE(OTHER_MSG) = {
	ASN1_SIMPLE(OTHER_MSG, body_part_id, ASN1_INTEGER),
	ASN1_SIMPLE(OTHER_MSG, msg_type, ASN1_OBJECT),
	ASN1_SIMPLE(OTHER_MSG, msg_value, ASN1_ANY),
} static_ASN1_SEQUENCE_END(OTHER_MSG)

DEFINE_STACK_OF(TAGGED_ATTRIBUTE)
DEFINE_STACK_OF(TAGGED_REQUEST)
DEFINE_STACK_OF(TAGGED_CONTENT_INFO)
DEFINE_STACK_OF(OTHER_MSG)

/*
 * PKIData ::= SEQUENCE {
 *     controlSequence  SEQUENCE SIZE(0..MAX) OF TaggedAttribute,
 *     reqSequence      SEQUENCE SIZE(0..MAX) OF TaggedRequest,
 *     cmsSequence      SEQUENCE SIZE(0..MAX) OF TaggedContentInfo,
 *     otherMsgSequence SEQUENCE SIZE(0..MAX) OF OtherMsg }
 *
 * SEQUENCE OF, not SET OF: the encoder keeps the order.  ASN1_item_new
 * gives each field an empty stack, so an empty sequence encodes as 30 00.
 */
typedef struct {
	STACK_OF(TAGGED_ATTRIBUTE) *controls;
	STACK_OF(TAGGED_REQUEST) *reqs;
	STACK_OF(TAGGED_CONTENT_INFO) *cms;
	STACK_OF(OTHER_MSG) *others;
} PKI_DATA;

ASN1_SEQUENCE(PKI_DATA) = {
	ASN1_SEQUENCE_OF(PKI_DATA, controls, TAGGED_ATTRIBUTE),
	ASN1_SEQUENCE_OF(PKI_DATA, reqs, TAGGED_REQUEST),
	ASN1_SEQUENCE_OF(PKI_DATA, cms, TAGGED_CONTENT_INFO),
	ASN1_SEQUENCE_OF(PKI_DATA, others, OTHER_MSG),
} static_ASN1_SEQUENCE_END(PKI_DATA)

/* ---- ASN.1 of CsrAttrs (RFC 7030 §4.5.2) -------------------------------------- */

/* AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute } */
#define ATTR_OR_OID_OID 0
#define ATTR_OR_OID_ATTRIBUTE 1

typedef struct {
	int type;
	union {
		ASN1_OBJECT *oid;
		X509_ATTRIBUTE *attribute;
	} value;
} ATTR_OR_OID;

ASN1_CHOICE(ATTR_OR_OID) = {
	ASN1_SIMPLE(ATTR_OR_OID, value.oid, ASN1_OBJECT),
	ASN1_SIMPLE(ATTR_OR_OID, value.attribute, X509_ATTRIBUTE),
} static_ASN1_CHOICE_END(ATTR_OR_OID)

DEFINE_STACK_OF(ATTR_OR_OID)

/* CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID */
ASN1_ITEM_TEMPLATE(CSR_ATTRS) = ASN1_EX_TEMPLATE_TYPE(ASN1_TFLG_SEQUENCE_OF, 0, CsrAttrs, ATTR_OR_OID)
static_ASN1_ITEM_TEMPLATE_END(CSR_ATTRS)

typedef STACK_OF(ATTR_OR_OID) CSR_ATTRS;
/* clang-format on */

/* ---- helpers --------------------------------------------------------------------- */

/* The DER of any ASN.1 value into a malloc'ed buffer (callers free() it, like every output here). */
static enum esc_err
item_to_der(struct esc_ctx *ctx, const ASN1_VALUE *val, const ASN1_ITEM *it, const char *what, unsigned char **der,
	    size_t *derlen)
{
	unsigned char *tmp = NULL, *buf;
	int n;

	if ((n = ASN1_item_i2d(val, &tmp, it)) <= 0)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the %s", what);
	if ((buf = malloc((size_t)n)) == NULL) {
		OPENSSL_free(tmp);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	memcpy(buf, tmp, (size_t)n);
	OPENSSL_free(tmp);
	*der = buf;
	*derlen = (size_t)n;
	return ESC_OK;
}

static enum esc_err
cms_to_der(struct esc_ctx *ctx, CMS_ContentInfo *cms, const char *what, unsigned char **der, size_t *derlen)
{
	return item_to_der(ctx, (const ASN1_VALUE *)cms, ASN1_ITEM_rptr(CMS_ContentInfo), what, der, derlen);
}

/* Decode a whole CMS ContentInfo (DER, or BER as OpenSSL reads it): nothing may follow it. */
static CMS_ContentInfo *
cms_from_der(const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	CMS_ContentInfo *cms;

	if (len == 0 || len > ESC_EST_BODY_MAX)
		return NULL;
	if ((cms = d2i_CMS_ContentInfo(NULL, &p, (long)len)) != NULL && p != der + len) {
		CMS_ContentInfo_free(cms);
		cms = NULL;
	}
	return cms;
}

/* ---- base64 (RFC 8951 §3.2: RFC 4648 §4 base64, whitespace tolerated) ---------------- */

static int
b64_is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The 6-bit value of a base64 alphabet character, or -1 (also for '='). */
static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

enum esc_err
esc_b64_decode(struct esc_ctx *ctx, const char *in, size_t inlen, unsigned char **out, size_t *outlen)
{
	return esc_b64_decode_max(ctx, in, inlen, ESC_EST_BODY_MAX, out, outlen);
}

/* Free what b64_decode allocated (n bytes), wiping it. */
static void
b64_free(void *p, size_t n, int secure)
{
	if (p == NULL)
		return;
	if (secure)
		OPENSSL_secure_clear_free(p, n);
	else
		free(p);
}

static enum esc_err b64_decode(struct esc_ctx *ctx, const char *in, size_t inlen, size_t max, int secure,
			       unsigned char **out, size_t *outlen);

enum esc_err
esc_b64_decode_max(struct esc_ctx *ctx, const char *in, size_t inlen, size_t max, unsigned char **out, size_t *outlen)
{
	return b64_decode(ctx, in, inlen, max, 0, out, outlen);
}

enum esc_err
esc_b64_decode_secure(struct esc_ctx *ctx, const char *in, size_t inlen, size_t max, unsigned char **out,
		      size_t *outlen)
{
	return b64_decode(ctx, in, inlen, max, 1, out, outlen);
}

/* secure: the copy of the text and the result in the secure heap (a key), both wiped when freed. */
static enum esc_err
b64_decode(struct esc_ctx *ctx, const char *in, size_t inlen, size_t max, int secure, unsigned char **out,
	   size_t *outlen)
{
	/* At most this many non-blank characters can decode to max bytes. */
	const size_t chars_max = (max + 2) / 3 * 4;
	unsigned char *chars = NULL, *buf = NULL;
	size_t i, n = 0, pad = 0, len;
	enum esc_err r;
	int dec;

	if (in == NULL && inlen > 0)
		return esc_error(ctx, ESC_ERR_USAGE, "no base64 input");
	/* First pass: the alphabet, and the size, before allocating anything. */
	for (i = 0; i < inlen; i++) {
		unsigned char c = (unsigned char)in[i];

		if (b64_is_space(c))
			continue;
		if (c != '=' && b64_value(c) < 0)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the base64 text has a character outside the alphabet");
		if (++n > chars_max)
			return esc_error(ctx, ESC_ERR_BAD_INPUT, "the base64 text decodes to more than %zu bytes", max);
	}
	if (n == 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the base64 text is empty");
	if (n % 4 != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the base64 text is truncated or not padded");
	if ((chars = secure ? OPENSSL_secure_malloc(n + 1) : malloc(n + 1)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	for (i = 0, n = 0; i < inlen; i++)
		if (!b64_is_space((unsigned char)in[i]))
			chars[n++] = (unsigned char)in[i];
	chars[n] = '\0';

	/*
	 * Padding: '=' only as the last one or two characters.  EVP_DecodeBlock
	 * decodes padding as zero bytes without saying how many, so count them
	 * here; and the bits the padding leaves unused must be zero (RFC 4648
	 * §3.5), so each byte string has exactly one encoding.
	 */
	while (pad < n && chars[n - 1 - pad] == '=')
		pad++;
	if (pad > 2 || memchr(chars, '=', n - pad) != NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the base64 text is badly padded");
		goto out;
	}
	if ((pad == 2 && (b64_value(chars[n - 3]) & 0x0f) != 0) ||
	    (pad == 1 && (b64_value(chars[n - 2]) & 0x03) != 0)) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the base64 text is badly padded (non-zero bits in its last group)");
		goto out;
	}
	len = n / 4 * 3 - pad;
	if (len == 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the base64 text is empty");
		goto out;
	}
	if (len > max) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the base64 text decodes to more than %zu bytes", max);
		goto out;
	}
	if ((buf = secure ? OPENSSL_secure_malloc(n / 4 * 3) : malloc(n / 4 * 3)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((dec = EVP_DecodeBlock(buf, chars, (int)n)) < 0 || (size_t)dec != n / 4 * 3) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the base64 text does not decode");
		goto out;
	}
	*out = buf;
	*outlen = len;
	buf = NULL; /* transferred */
	r = ESC_OK;
out:
	b64_free(buf, n / 4 * 3, secure);
	b64_free(chars, n + 1, secure);
	return r;
}

enum esc_err
esc_b64_encode(struct esc_ctx *ctx, const unsigned char *in, size_t inlen, char **out, size_t *outlen)
{
	size_t lines, total, i, pos = 0;
	char *buf;

	if (in == NULL && inlen > 0)
		return esc_error(ctx, ESC_ERR_USAGE, "no input to encode");
	/* 4 characters per 3 bytes plus 2 per 48: well under 2 * inlen + 8. */
	if (inlen > (SIZE_MAX - 8) / 2)
		return esc_error(ctx, ESC_ERR_NOMEM, "input too large to encode");
	lines = (inlen + 47) / 48;
	total = (inlen + 2) / 3 * 4 + 2 * lines;
	if ((buf = malloc(total + 1)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	for (i = 0; i < inlen; i += 48) {
		size_t chunk = inlen - i < 48 ? inlen - i : 48;

		/* Writes 4 * ceil(chunk / 3) characters and a NUL, which the CRLF overwrites. */
		pos += (size_t)EVP_EncodeBlock((unsigned char *)buf + pos, in + i, (int)chunk);
		buf[pos++] = '\r';
		buf[pos++] = '\n';
	}
	buf[pos] = '\0';
	*out = buf;
	*outlen = pos;
	return ESC_OK;
}

/* ---- PKCS#10 ------------------------------------------------------------------------ */

/* What esc_csr_decode checks of a decoded request: a public key, and its self-signature. */
static enum esc_err
csr_check(struct esc_ctx *ctx, X509_REQ *req)
{
	EVP_PKEY *pub;

	if ((pub = X509_REQ_get0_pubkey(req)) == NULL)
		return esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the request has no usable public key");
	/* 1 is a good signature; 0 a bad one, -1 one that cannot be checked: both refused. */
	if (X509_REQ_verify(req, pub) != 1)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "the request's signature does not verify");
	return ESC_OK;
}

enum esc_err
esc_csr_decode(struct esc_ctx *ctx, const unsigned char *der, size_t len, X509_REQ **out)
{
	const unsigned char *p = der;
	X509_REQ *req = NULL;
	enum esc_err r;

	if (der == NULL || len == 0 || len > ESC_EST_BODY_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "a PKCS#10 request must be 1..%d bytes", ESC_EST_BODY_MAX);
	if ((req = d2i_X509_REQ(NULL, &p, (long)len)) == NULL)
		return esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "not a PKCS#10 request");
	if (p != der + len) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "data follows the PKCS#10 request");
		goto out;
	}
	if ((r = csr_check(ctx, req)) != ESC_OK)
		goto out;
	*out = req;
	req = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_REQ_free(req);
	return r;
}

enum esc_err
esc_csr_asymmetric_kid(struct esc_ctx *ctx, X509_REQ *req, unsigned char **kid, size_t *kidlen)
{
	ASN1_OBJECT *oid = NULL;
	X509_ATTRIBUTE *attr;
	ASN1_TYPE *val;
	unsigned char *buf;
	enum esc_err r;
	int idx, len;

	if (req == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "no request");
	if ((oid = OBJ_txt2obj(OID_ASYMM_DECRYPT_KEY_ID, 1)) == NULL)
		return esc_error_ossl(ctx, ESC_ERR_NOMEM, "cannot make the id-aa-asymmDecryptKeyID object identifier");
	if ((idx = X509_REQ_get_attr_by_OBJ(req, oid, -1)) < 0) {
		*kid = NULL;
		*kidlen = 0;
		r = ESC_OK;
		goto out;
	}
	if (X509_REQ_get_attr_by_OBJ(req, oid, idx) >= 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the request has more than one AsymmetricDecryptKeyIdentifier");
		goto out;
	}
	/* Attribute { id-aa-asymmDecryptKeyID, SET { OCTET STRING } }: one value, a key identifier. */
	attr = X509_REQ_get_attr(req, idx);
	if (attr == NULL || X509_ATTRIBUTE_count(attr) != 1 || (val = X509_ATTRIBUTE_get0_type(attr, 0)) == NULL ||
	    val->type != V_ASN1_OCTET_STRING) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the request's AsymmetricDecryptKeyIdentifier is not a single OCTET STRING");
		goto out;
	}
	len = ASN1_STRING_length(val->value.octet_string);
	if (len < 1 || len > KID_MAX) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the request's AsymmetricDecryptKeyIdentifier must be 1..%d bytes", KID_MAX);
		goto out;
	}
	if ((buf = malloc((size_t)len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(buf, ASN1_STRING_get0_data(val->value.octet_string), (size_t)len);
	*kid = buf;
	*kidlen = (size_t)len;
	r = ESC_OK;
out:
	ASN1_OBJECT_free(oid);
	return r;
}

enum esc_err
esc_csr_wants_symmetric(struct esc_ctx *ctx, X509_REQ *req, int *yes)
{
	ASN1_OBJECT *oid;

	if (req == NULL || yes == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "no request");
	if ((oid = OBJ_txt2obj(OID_DECRYPT_KEY_ID, 1)) == NULL)
		return esc_error_ossl(ctx, ESC_ERR_NOMEM, "cannot make the id-aa-decryptKeyID object identifier");
	/* Present in any form, well-formed or not: either way the key must not go out in clear. */
	*yes = X509_REQ_get_attr_by_OBJ(req, oid, -1) >= 0;
	ASN1_OBJECT_free(oid);
	return ESC_OK;
}

/* ---- CMC Full PKI Request ------------------------------------------------------------- */

/* PKCS#8 DER of key in secure memory (as archive.c makes it). */
static enum esc_err
pkcs8_encode(struct esc_ctx *ctx, EVP_PKEY *key, unsigned char **out, size_t *outlen)
{
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(key);
	unsigned char *buf = NULL, *p;
	int n;

	if (p8 == NULL || (n = i2d_PKCS8_PRIV_KEY_INFO(p8, NULL)) <= 0) {
		PKCS8_PRIV_KEY_INFO_free(p8);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the private key as PKCS#8");
	}
	if ((buf = OPENSSL_secure_malloc((size_t)n)) == NULL) {
		PKCS8_PRIV_KEY_INFO_free(p8);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
	}
	p = buf;
	if (i2d_PKCS8_PRIV_KEY_INFO(p8, &p) != n) {
		PKCS8_PRIV_KEY_INFO_free(p8);
		OPENSSL_secure_clear_free(buf, (size_t)n);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the private key as PKCS#8");
	}
	PKCS8_PRIV_KEY_INFO_free(p8); /* frees its key copy with cleansing */
	*out = buf;
	*outlen = (size_t)n;
	return ESC_OK;
}

/*
 * content (of type content_nid) in an EnvelopedData, AES-256-CBC, to cert:
 * RSA-OAEP with SHA-256 for an RSA key (as esc_envelope_seal does with
 * ESC_OAEP_SHA256), OpenSSL's ECDH key agreement for an EC one.  what names
 * the certificate in errors.
 */
static enum esc_err
seal_content(struct esc_ctx *ctx, const unsigned char *content, size_t len, int content_nid, X509 *cert,
	     const char *what, unsigned char **env, size_t *envlen)
{
	CMS_ContentInfo *cms = NULL;
	CMS_RecipientInfo *ri;
	EVP_PKEY_CTX *pctx;
	EVP_PKEY *pub = X509_get0_pubkey(cert);
	BIO *cmsbio = NULL;
	enum esc_err r;

	if (len > INT_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "content too large to encrypt");
	if (pub == NULL)
		return esc_error_ossl(ctx, ESC_ERR_USAGE, "the %s has no usable public key", what);
	if (!EVP_PKEY_is_a(pub, "RSA") && !EVP_PKEY_is_a(pub, "EC"))
		return esc_error(ctx, ESC_ERR_USAGE, "the %s's key must be RSA or EC", what);
	/* Content embedded, not detached (CMS_encrypt does the same). */
	if ((cms = CMS_EnvelopedData_create(EVP_aes_256_cbc())) == NULL || CMS_set_detached(cms, 0) != 1 ||
	    (content_nid != NID_pkcs7_data && CMS_set1_eContentType(cms, OBJ_nid2obj(content_nid)) != 1)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot create a CMS EnvelopedData");
		goto out;
	}
	if (EVP_PKEY_is_a(pub, "RSA")) {
		/* CMS_KEY_PARAM: leave the context open so we can ask for OAEP. */
		if ((ri = CMS_add1_recipient_cert(cms, cert, CMS_KEY_PARAM)) == NULL ||
		    (pctx = CMS_RecipientInfo_get0_pkey_ctx(ri)) == NULL ||
		    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
		    EVP_PKEY_CTX_set_rsa_oaep_md(pctx, EVP_sha256()) <= 0 ||
		    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) <= 0) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the %s (RSA-OAEP) as recipient", what);
			goto out;
		}
	} else if (CMS_add1_recipient_cert(cms, cert, 0) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the %s (ECDH) as recipient", what);
		goto out;
	}
	/*
	 * CMS_final's steps without its copy loop: the key goes straight into
	 * the cipher BIO (which wipes its buffer when freed), not through
	 * CMS_final's unwiped stack and buffer-BIO copies.
	 */
	if ((cmsbio = CMS_dataInit(cms, NULL)) == NULL || BIO_write(cmsbio, content, (int)len) != (int)len ||
	    BIO_flush(cmsbio) != 1 || CMS_dataFinal(cms, cmsbio) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encrypt the private key to the %s", what);
		goto out;
	}
	r = cms_to_der(ctx, cms, "key envelope", env, envlen);
out:
	BIO_free_all(cmsbio);
	CMS_ContentInfo_free(cms);
	return r;
}

/* PKIData { {}, { tcr [0] { 1, csr } }, { { 2, envelope } }, {} } as DER. */
static enum esc_err
pki_data_encode(struct esc_ctx *ctx, X509_REQ *csr, const unsigned char *env, size_t envlen, unsigned char **der,
		size_t *derlen)
{
	PKI_DATA *pd = NULL;
	TAGGED_REQUEST *tr = NULL;
	TAGGED_CONTENT_INFO *tci = NULL;
	ASN1_STRING *seq = NULL;
	enum esc_err r;

	if (envlen > INT_MAX) {
		r = esc_error(ctx, ESC_ERR_INTERNAL, "envelope too large");
		goto out;
	}
	if ((pd = (PKI_DATA *)ASN1_item_new(ASN1_ITEM_rptr(PKI_DATA))) == NULL ||
	    (tr = (TAGGED_REQUEST *)ASN1_item_new(ASN1_ITEM_rptr(TAGGED_REQUEST))) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* The selector first: ASN1_item_free frees only the chosen member. */
	tr->type = TAGGED_REQUEST_TCR;
	if ((tr->value.tcr = (TAGGED_CERT_REQUEST *)ASN1_item_new(ASN1_ITEM_rptr(TAGGED_CERT_REQUEST))) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	X509_REQ_free(tr->value.tcr->req);
	if ((tr->value.tcr->req = X509_REQ_dup(csr)) == NULL ||
	    ASN1_INTEGER_set(tr->value.tcr->body_part_id, BODY_PART_TCR) != 1 ||
	    sk_TAGGED_REQUEST_push(pd->reqs, tr) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot put the request into the PKIData");
		goto out;
	}
	tr = NULL; /* transferred */

	if ((tci = (TAGGED_CONTENT_INFO *)ASN1_item_new(ASN1_ITEM_rptr(TAGGED_CONTENT_INFO))) == NULL ||
	    (seq = ASN1_STRING_type_new(V_ASN1_SEQUENCE)) == NULL || ASN1_STRING_set(seq, env, (int)envlen) != 1 ||
	    ASN1_INTEGER_set(tci->body_part_id, BODY_PART_ENVELOPE) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* An ANY of type SEQUENCE is written out as its stored encoding: the envelope's DER. */
	ASN1_TYPE_set(tci->content_info, V_ASN1_SEQUENCE, seq);
	seq = NULL; /* transferred */
	if (sk_TAGGED_CONTENT_INFO_push(pd->cms, tci) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	tci = NULL; /* transferred */
	r = item_to_der(ctx, (const ASN1_VALUE *)pd, ASN1_ITEM_rptr(PKI_DATA), "PKIData", der, derlen);
out:
	ASN1_STRING_free(seq);
	ASN1_item_free((ASN1_VALUE *)tci, ASN1_ITEM_rptr(TAGGED_CONTENT_INFO));
	ASN1_item_free((ASN1_VALUE *)tr, ASN1_ITEM_rptr(TAGGED_REQUEST));
	ASN1_item_free((ASN1_VALUE *)pd, ASN1_ITEM_rptr(PKI_DATA));
	return r;
}

/*
 * SignedData { version 3, digestAlgorithms {}, encapContentInfo { id-cct-PKIData,
 * [0] OCTET STRING PKIData }, certificates and signerInfos absent or empty } as
 * DER: no signer, since the PKCS#10 signature is the proof of possession (see
 * est.h).  Through the PKCS#7 structures, not CMS_final: OpenSSL's CMS code
 * cannot put content into a SignedData without signers (CMS_dataInit finds
 * no digest to write it through), and setting it by hand would leave the
 * version at 1, where RFC 5652 §5.1 wants 3 for any eContentType but id-data.
 * The inner content as ANY holding an OCTET STRING is exactly CMS's eContent.
 */
static enum esc_err
pki_data_wrap(struct esc_ctx *ctx, const unsigned char *pki, size_t pkilen, unsigned char **der, size_t *derlen)
{
	PKCS7 *p7 = NULL, *inner = NULL;
	ASN1_OCTET_STRING *os = NULL;
	enum esc_err r;

	if (pkilen > INT_MAX) {
		r = esc_error(ctx, ESC_ERR_INTERNAL, "PKIData too large");
		goto out;
	}
	if ((p7 = PKCS7_new()) == NULL || PKCS7_set_type(p7, NID_pkcs7_signed) != 1 ||
	    ASN1_INTEGER_set(p7->d.sign->version, 3) != 1 || (inner = PKCS7_new()) == NULL ||
	    (inner->d.other = ASN1_TYPE_new()) == NULL || (os = ASN1_OCTET_STRING_new()) == NULL ||
	    ASN1_OCTET_STRING_set(os, pki, (int)pkilen) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	inner->type = OBJ_nid2obj(NID_id_cct_PKIData);
	ASN1_TYPE_set(inner->d.other, V_ASN1_OCTET_STRING, os);
	os = NULL; /* transferred */
	if (PKCS7_set_content(p7, inner) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot wrap the PKIData in a SignedData");
		goto out;
	}
	inner = NULL; /* transferred */
	r = item_to_der(ctx, (const ASN1_VALUE *)p7, ASN1_ITEM_rptr(PKCS7), "Full PKI Request", der, derlen);
out:
	ASN1_OCTET_STRING_free(os);
	PKCS7_free(inner);
	PKCS7_free(p7);
	return r;
}

enum esc_err
esc_cmc_request_build(struct esc_ctx *ctx, X509_REQ *csr, EVP_PKEY *key, X509 *transport_cert, unsigned char **der,
		      size_t *derlen)
{
	unsigned char *p8 = NULL, *env = NULL, *pki = NULL;
	size_t p8len = 0, envlen = 0, pkilen = 0;
	EVP_PKEY *pub;
	enum esc_err r;

	if (csr == NULL || key == NULL || transport_cert == NULL)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a Full PKI Request needs a request, its key and a transport certificate");
	if ((pub = X509_REQ_get0_pubkey(csr)) == NULL || EVP_PKEY_eq(pub, key) != 1) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_USAGE, "the private key does not match the request's public key");
	}
	if ((r = pkcs8_encode(ctx, key, &p8, &p8len)) != ESC_OK ||
	    (r = seal_content(ctx, p8, p8len, NID_pkcs7_data, transport_cert, "transport certificate", &env,
			      &envlen)) != ESC_OK ||
	    (r = pki_data_encode(ctx, csr, env, envlen, &pki, &pkilen)) != ESC_OK)
		goto out;
	r = pki_data_wrap(ctx, pki, pkilen, der, derlen);
out:
	free(pki);
	free(env);
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8len);
	return r;
}

/* The one envelope of a PKIData, as DER, after checking it is a CMS (Auth)EnvelopedData. */
static enum esc_err
envelope_take(struct esc_ctx *ctx, TAGGED_CONTENT_INFO *tci, unsigned char **env, size_t *envlen)
{
	ASN1_TYPE *ci = tci->content_info;
	CMS_ContentInfo *cms = NULL;
	enum esc_err r;
	int nid;

	if (ci == NULL || ci->type != V_ASN1_SEQUENCE || ci->value.sequence == NULL ||
	    (cms = cms_from_der(ASN1_STRING_get0_data(ci->value.sequence),
				(size_t)ASN1_STRING_length(ci->value.sequence))) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the PKIData's TaggedContentInfo is not a CMS ContentInfo");
		goto out;
	}
	nid = OBJ_obj2nid(CMS_get0_type(cms));
	if (nid != NID_pkcs7_enveloped && nid != NID_id_smime_ct_authEnvelopedData) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the PKIData's TaggedContentInfo is not an EnvelopedData or AuthEnvelopedData");
		goto out;
	}
	/* Re-encoded, so the caller gets DER even from a BER request. */
	r = cms_to_der(ctx, cms, "key envelope", env, envlen);
out:
	CMS_ContentInfo_free(cms);
	return r;
}

enum esc_err
esc_cmc_request_parse(struct esc_ctx *ctx, const unsigned char *der, size_t len, X509_REQ **csr, unsigned char **env,
		      size_t *envlen)
{
	CMS_ContentInfo *cms = NULL;
	ASN1_OCTET_STRING **content;
	const unsigned char *p;
	PKI_DATA *pd = NULL;
	TAGGED_CERT_REQUEST *tcr = NULL;
	unsigned char *envbuf = NULL;
	size_t envbuflen = 0;
	X509_REQ *req;
	enum esc_err r;
	int i, clen;

	if (der == NULL || len == 0 || len > ESC_EST_BODY_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "a Full PKI Request must be 1..%d bytes", ESC_EST_BODY_MAX);
	if ((cms = cms_from_der(der, len)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT,
				   "the Full PKI Request is not a CMS structure, or data follows it");
		goto out;
	}
	if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the Full PKI Request is not a CMS SignedData");
		goto out;
	}
	if (OBJ_obj2nid(CMS_get0_eContentType(cms)) != NID_id_cct_PKIData) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the SignedData does not hold a PKIData (id-cct-PKIData)");
		goto out;
	}
	if ((content = CMS_get0_content(cms)) == NULL || *content == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the SignedData's PKIData is detached, not embedded");
		goto out;
	}
	p = ASN1_STRING_get0_data(*content);
	clen = ASN1_STRING_length(*content);
	if (clen <= 0 || (pd = (PKI_DATA *)ASN1_item_d2i(NULL, &p, clen, ASN1_ITEM_rptr(PKI_DATA))) == NULL ||
	    p != ASN1_STRING_get0_data(*content) + clen) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT,
				   "the SignedData's content is not a PKIData, or data follows it");
		goto out;
	}
	if (sk_TAGGED_ATTRIBUTE_num(pd->controls) > CMC_SEQ_MAX || sk_TAGGED_REQUEST_num(pd->reqs) > CMC_SEQ_MAX ||
	    sk_TAGGED_CONTENT_INFO_num(pd->cms) > CMC_SEQ_MAX || sk_OTHER_MSG_num(pd->others) > CMC_SEQ_MAX) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the PKIData has more than %d entries in a sequence",
			      CMC_SEQ_MAX);
		goto out;
	}
	for (i = 0; i < sk_TAGGED_REQUEST_num(pd->reqs); i++) {
		TAGGED_REQUEST *tr = sk_TAGGED_REQUEST_value(pd->reqs, i);

		switch (tr->type) {
		case TAGGED_REQUEST_TCR:
			if (tcr != NULL) {
				r = esc_error(ctx, ESC_ERR_BAD_INPUT,
					      "the PKIData holds more than one request: send exactly one PKCS#10");
				goto out;
			}
			tcr = tr->value.tcr;
			break;
		case TAGGED_REQUEST_CRM:
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "CRMF requests are not supported: send a PKCS#10 (tcr)");
			goto out;
		default:
			r = esc_error(ctx, ESC_ERR_BAD_INPUT,
				      "other request messages (orm) are not supported: send a PKCS#10 (tcr)");
			goto out;
		}
	}
	if (tcr == NULL || tcr->req == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the PKIData holds no request: send exactly one PKCS#10 (tcr)");
		goto out;
	}
	if (sk_TAGGED_CONTENT_INFO_num(pd->cms) != 1) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the PKIData must hold exactly one envelope with the private key");
		goto out;
	}
	if ((r = envelope_take(ctx, sk_TAGGED_CONTENT_INFO_value(pd->cms, 0), &envbuf, &envbuflen)) != ESC_OK)
		goto out;
	if ((r = csr_check(ctx, tcr->req)) != ESC_OK)
		goto out;
	req = tcr->req;
	tcr->req = NULL; /* transferred */
	*csr = req;
	*env = envbuf;
	*envlen = envbuflen;
	envbuf = NULL; /* transferred */
	r = ESC_OK;
out:
	free(envbuf);
	ASN1_item_free((ASN1_VALUE *)pd, ASN1_ITEM_rptr(PKI_DATA));
	CMS_ContentInfo_free(cms);
	return r;
}

/* ---- Server-generated key, encrypted (RFC 7030 §4.4.2) --------------------------------- */

enum esc_err
esc_est_key_recipient_check(struct esc_ctx *ctx, X509 *cert)
{
	EVP_PKEY *pub = cert != NULL ? X509_get0_pubkey(cert) : NULL;
	uint32_t ku;

	if (pub == NULL) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "the TLS client certificate cannot receive encrypted keys: no usable public key");
	}
	/* UINT32_MAX: no keyUsage extension, so no restriction (RFC 5280 §4.2.1.3). */
	ku = X509_get_key_usage(cert);
	if (EVP_PKEY_is_a(pub, "RSA")) {
		if (ku != UINT32_MAX && (ku & KU_KEY_ENCIPHERMENT) == 0)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the TLS client certificate cannot receive encrypted keys: its key usage "
					 "lacks keyEncipherment (RSA); ask for the key without "
					 "AsymmetricDecryptKeyIdentifier, over TLS only");
		return ESC_OK;
	}
	if (EVP_PKEY_is_a(pub, "EC")) {
		if (ku != UINT32_MAX && (ku & KU_KEY_AGREEMENT) == 0)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the TLS client certificate cannot receive encrypted keys: its key usage "
					 "lacks keyAgreement (EC); ask for the key without "
					 "AsymmetricDecryptKeyIdentifier, over TLS only");
		return ESC_OK;
	}
	return esc_error(ctx, ESC_ERR_BAD_INPUT,
			 "the TLS client certificate cannot receive encrypted keys: its key is neither RSA nor EC");
}

/*
 * AsymmetricKeyPackage ::= SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey (RFC
 * 5958 §2) holding the one PKCS#8 p8, in secure memory.
 */
static enum esc_err
key_package_encode(struct esc_ctx *ctx, const unsigned char *p8, size_t p8len, unsigned char **out, size_t *outlen)
{
	unsigned char *buf, *p;
	int total;

	if (p8len > INT_MAX / 2 || (total = ASN1_object_size(1, (int)p8len, V_ASN1_SEQUENCE)) <= 0)
		return esc_error(ctx, ESC_ERR_USAGE, "private key too large");
	if ((buf = OPENSSL_secure_malloc((size_t)total)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
	p = buf;
	ASN1_put_object(&p, 1, (int)p8len, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
	memcpy(p, p8, p8len);
	*out = buf;
	*outlen = (size_t)total;
	return ESC_OK;
}

/*
 * pkg in a SignedData { id-ct-KP-aKeyPackage } signed by key (certificate
 * cert, chain added), as DER in secure memory.  Through CMS_dataInit as
 * seal_content does: CMS_final would copy the key through unwiped buffers.
 * The eContent OpenSSL keeps (the memory BIO's buffer, grown with
 * BUF_MEM_grow_clean) is wiped before the structure is freed.
 */
static enum esc_err
key_package_sign(struct esc_ctx *ctx, X509 *cert, STACK_OF(X509) *chain, EVP_PKEY *key, const unsigned char *pkg,
		 size_t pkglen, unsigned char **out, size_t *outlen)
{
	CMS_ContentInfo *cms = NULL;
	ASN1_OCTET_STRING **content;
	ASN1_OBJECT *type = NULL;
	BIO *cmsbio = NULL;
	unsigned char *buf = NULL, *p;
	enum esc_err r;
	int n;

	if (pkglen > INT_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "key package too large");
	if ((type = OBJ_txt2obj(OID_A_KEY_PACKAGE, 1)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "cannot make the id-ct-KP-aKeyPackage object identifier");
		goto out;
	}
	/* Signed attributes (content type, digest, time) are kept: RFC 5652 wants them for this content type. */
	if ((cms = CMS_sign(cert, key, chain, NULL, CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP)) == NULL ||
	    CMS_set1_eContentType(cms, type) != 1 || CMS_set_detached(cms, 0) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot create the key package's SignedData");
		goto out;
	}
	if ((cmsbio = CMS_dataInit(cms, NULL)) == NULL || BIO_write(cmsbio, pkg, (int)pkglen) != (int)pkglen ||
	    BIO_flush(cmsbio) != 1 || CMS_dataFinal(cms, cmsbio) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot sign the key package with the CA key");
		goto out;
	}
	if ((n = i2d_CMS_ContentInfo(cms, NULL)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the key package's SignedData");
		goto out;
	}
	if ((buf = OPENSSL_secure_malloc((size_t)n)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	p = buf;
	if (i2d_CMS_ContentInfo(cms, &p) != n) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the key package's SignedData");
		goto out;
	}
	*out = buf;
	*outlen = (size_t)n;
	buf = NULL; /* transferred */
	r = ESC_OK;
out:
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, (size_t)n);
	BIO_free_all(cmsbio);
	if (cms != NULL && (content = CMS_get0_content(cms)) != NULL && *content != NULL &&
	    ASN1_STRING_length(*content) > 0)
		OPENSSL_cleanse((*content)->data, (size_t)(*content)->length);
	CMS_ContentInfo_free(cms);
	ASN1_OBJECT_free(type);
	return r;
}

enum esc_err
esc_est_key_package_seal(struct esc_ctx *ctx, X509 *signer_cert, STACK_OF(X509) *chain, EVP_PKEY *signer_key,
			 EVP_PKEY *key, X509 *recipient, unsigned char **der, size_t *derlen)
{
	unsigned char *p8 = NULL, *pkg = NULL, *sd = NULL;
	size_t p8len = 0, pkglen = 0, sdlen = 0;
	enum esc_err r;

	if (signer_cert == NULL || signer_key == NULL || key == NULL || recipient == NULL)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a key package needs a signer, its certificate, a key and a recipient");
	if ((r = esc_est_key_recipient_check(ctx, recipient)) != ESC_OK)
		return r;
	if ((r = pkcs8_encode(ctx, key, &p8, &p8len)) != ESC_OK ||
	    (r = key_package_encode(ctx, p8, p8len, &pkg, &pkglen)) != ESC_OK ||
	    (r = key_package_sign(ctx, signer_cert, chain, signer_key, pkg, pkglen, &sd, &sdlen)) != ESC_OK)
		goto out;
	r = seal_content(ctx, sd, sdlen, NID_pkcs7_signed, recipient, "TLS client certificate", der, derlen);
out:
	if (sd != NULL)
		OPENSSL_secure_clear_free(sd, sdlen);
	if (pkg != NULL)
		OPENSSL_secure_clear_free(pkg, pkglen);
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8len);
	return r;
}

/* ---- certs-only SignedData ---------------------------------------------------------- */

/*
 * Through the PKCS#7 API, not CMS: PKCS7_SIGNED encodes its certificates as
 * an IMPLICIT SEQUENCE OF, so they stay in the order given, where CMS's SET
 * OF would be sorted by DER.  The bytes are the same SignedData either way.
 */
enum esc_err
esc_certs_only_build(struct esc_ctx *ctx, X509 *const *certs, size_t ncerts, unsigned char **der, size_t *derlen)
{
	PKCS7 *p7 = NULL;
	enum esc_err r;
	size_t i;

	if (certs == NULL || ncerts == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "a certs-only response needs at least one certificate");
	/* version 1, no digest algorithms, eContentType id-data without content, no signers. */
	if ((p7 = PKCS7_new()) == NULL || PKCS7_set_type(p7, NID_pkcs7_signed) != 1 ||
	    PKCS7_content_new(p7, NID_pkcs7_data) != 1 || PKCS7_set_detached(p7, 1) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot create a PKCS#7 SignedData");
		goto out;
	}
	for (i = 0; i < ncerts; i++) {
		if (certs[i] == NULL) {
			r = esc_error(ctx, ESC_ERR_USAGE, "certificate %zu of the response is missing", i);
			goto out;
		}
		if (PKCS7_add_certificate(p7, certs[i]) != 1) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add a certificate to the SignedData");
			goto out;
		}
	}
	r = item_to_der(ctx, (const ASN1_VALUE *)p7, ASN1_ITEM_rptr(PKCS7), "certs-only SignedData", der, derlen);
out:
	PKCS7_free(p7);
	return r;
}

enum esc_err
esc_certs_only_parse(struct esc_ctx *ctx, const unsigned char *der, size_t len, STACK_OF(X509) **out)
{
	const unsigned char *p = der;
	STACK_OF(X509) *certs = NULL, *sk = NULL;
	PKCS7 *p7 = NULL;
	enum esc_err r;
	int i;

	if (der == NULL || len == 0 || len > ESC_EST_BODY_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "a certs-only response must be 1..%d bytes", ESC_EST_BODY_MAX);
	if ((p7 = d2i_PKCS7(NULL, &p, (long)len)) == NULL || p != der + len) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT,
				   "the certs-only response is not a PKCS#7/CMS structure, or data follows it");
		goto out;
	}
	/* The signed content is [0] EXPLICIT OPTIONAL: a SignedData type may come without one. */
	if (!PKCS7_type_is_signed(p7) || p7->d.sign == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the certs-only response is not a SignedData");
		goto out;
	}
	/* Signers, CRLs and content of a degenerate SignedData are ignored: only the certificates count. */
	sk = p7->d.sign->cert;
	if (sk_X509_num(sk) <= 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the certs-only response holds no certificate");
		goto out;
	}
	if ((certs = sk_X509_new_reserve(NULL, sk_X509_num(sk))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < sk_X509_num(sk); i++) {
		X509 *x = sk_X509_value(sk, i);

		if (X509_up_ref(x) != 1) {
			r = esc_error_ossl(ctx, ESC_ERR_INTERNAL, "cannot reference a certificate");
			goto out;
		}
		(void)sk_X509_push(certs, x); /* cannot fail: reserved */
	}
	*out = certs;
	certs = NULL; /* transferred */
	r = ESC_OK;
out:
	sk_X509_pop_free(certs, X509_free);
	PKCS7_free(p7);
	return r;
}

/* ---- CsrAttrs --------------------------------------------------------------------------- */

/* A curve by short name ("prime256v1", "secp384r1") or NIST name ("P-256"), or NID_undef. */
static int
curve_nid(const char *name)
{
	EC_GROUP *g;
	int nid = OBJ_sn2nid(name);

	if (nid == NID_undef)
		nid = EC_curve_nist2nid(name);
	if (nid == NID_undef)
		return NID_undef;
	/* Only a curve OpenSSL knows as one (OBJ_sn2nid knows every short name). */
	if ((g = EC_GROUP_new_by_curve_name(nid)) == NULL) {
		ERR_clear_error();
		return NID_undef;
	}
	EC_GROUP_free(g);
	return nid;
}

static enum esc_err
csrattrs_push(struct esc_ctx *ctx, CSR_ATTRS *attrs, ATTR_OR_OID *a)
{
	if (sk_ATTR_OR_OID_push(attrs, a) <= 0) {
		ASN1_item_free((ASN1_VALUE *)a, ASN1_ITEM_rptr(ATTR_OR_OID));
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	return ESC_OK;
}

/* Attribute { type, SET { values } } appended to attrs; takes attr. */
static enum esc_err
csrattrs_push_attribute(struct esc_ctx *ctx, CSR_ATTRS *attrs, X509_ATTRIBUTE *attr)
{
	ATTR_OR_OID *a;

	if ((a = (ATTR_OR_OID *)ASN1_item_new(ASN1_ITEM_rptr(ATTR_OR_OID))) == NULL) {
		X509_ATTRIBUTE_free(attr);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	a->type = ATTR_OR_OID_ATTRIBUTE;
	a->value.attribute = attr;
	return csrattrs_push(ctx, attrs, a);
}

/* id-ecPublicKey with one curve OID per allowed curve (RFC 7030 §4.5.2's example has one). */
static enum esc_err
csrattrs_curves(struct esc_ctx *ctx, CSR_ATTRS *attrs, const char *const *curves, size_t n)
{
	X509_ATTRIBUTE *attr;
	size_t i;
	int nid;

	if ((attr = X509_ATTRIBUTE_new()) == NULL ||
	    X509_ATTRIBUTE_set1_object(attr, OBJ_nid2obj(NID_X9_62_id_ecPublicKey)) != 1) {
		X509_ATTRIBUTE_free(attr);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot make the id-ecPublicKey attribute");
	}
	for (i = 0; i < n; i++) {
		if (curves[i] == NULL || (nid = curve_nid(curves[i])) == NID_undef) {
			X509_ATTRIBUTE_free(attr);
			return esc_error(ctx, ESC_ERR_USAGE, "'%s' is not an elliptic curve OpenSSL knows",
					 curves[i] != NULL ? curves[i] : "(null)");
		}
		if (X509_ATTRIBUTE_set1_data(attr, V_ASN1_OBJECT, OBJ_nid2obj(nid), -1) != 1) {
			X509_ATTRIBUTE_free(attr);
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot make the id-ecPublicKey attribute");
		}
	}
	return csrattrs_push_attribute(ctx, attrs, attr);
}

/* rsaEncryption with one INTEGER (modulus bits) per allowed size, as RFC 9908's examples give a size. */
static enum esc_err
csrattrs_rsa(struct esc_ctx *ctx, CSR_ATTRS *attrs, const int *bits, size_t n)
{
	X509_ATTRIBUTE *attr;
	ASN1_INTEGER *v = NULL;
	size_t i;

	if ((attr = X509_ATTRIBUTE_new()) == NULL ||
	    X509_ATTRIBUTE_set1_object(attr, OBJ_nid2obj(NID_rsaEncryption)) != 1) {
		X509_ATTRIBUTE_free(attr);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot make the rsaEncryption attribute");
	}
	for (i = 0; i < n; i++) {
		if (bits[i] < 1024 || bits[i] > 16384) {
			X509_ATTRIBUTE_free(attr);
			return esc_error(ctx, ESC_ERR_USAGE, "%d is not an RSA key size", bits[i]);
		}
		if ((v = ASN1_INTEGER_new()) == NULL || ASN1_INTEGER_set(v, bits[i]) != 1 ||
		    X509_ATTRIBUTE_set1_data(attr, V_ASN1_INTEGER, v, -1) != 1) {
			ASN1_INTEGER_free(v);
			X509_ATTRIBUTE_free(attr);
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot make the rsaEncryption attribute");
		}
		ASN1_INTEGER_free(v);
		v = NULL;
	}
	return csrattrs_push_attribute(ctx, attrs, attr);
}

enum esc_err
esc_csrattrs_build(struct esc_ctx *ctx, const struct esc_csrattrs *spec, unsigned char **der, size_t *derlen)
{
	CSR_ATTRS *attrs = NULL;
	ATTR_OR_OID *a;
	ASN1_OBJECT *obj;
	enum esc_err r;
	size_t i;

	if (spec == NULL || (spec->oids == NULL && spec->noids > 0) || (spec->curves == NULL && spec->ncurves > 0) ||
	    (spec->rsa_bits == NULL && spec->nrsa > 0))
		return esc_error(ctx, ESC_ERR_USAGE, "no CSR attribute list");
	if ((attrs = sk_ATTR_OR_OID_new_null()) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	for (i = 0; i < spec->noids; i++) {
		/* no_name = 1: dotted numbers only, as documented. */
		if (spec->oids[i] == NULL || (obj = OBJ_txt2obj(spec->oids[i], 1)) == NULL) {
			ERR_clear_error();
			r = esc_error(ctx, ESC_ERR_USAGE, "CSR attribute %zu is not a dotted object identifier", i + 1);
			goto out;
		}
		if ((a = (ATTR_OR_OID *)ASN1_item_new(ASN1_ITEM_rptr(ATTR_OR_OID))) == NULL) {
			ASN1_OBJECT_free(obj);
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		a->type = ATTR_OR_OID_OID;
		a->value.oid = obj;
		if ((r = csrattrs_push(ctx, attrs, a)) != ESC_OK)
			goto out;
	}
	if (spec->ncurves > 0 && (r = csrattrs_curves(ctx, attrs, spec->curves, spec->ncurves)) != ESC_OK)
		goto out;
	if (spec->nrsa > 0 && (r = csrattrs_rsa(ctx, attrs, spec->rsa_bits, spec->nrsa)) != ESC_OK)
		goto out;
	r = item_to_der(ctx, (const ASN1_VALUE *)attrs, ASN1_ITEM_rptr(CSR_ATTRS), "CsrAttrs", der, derlen);
out:
	ASN1_item_free((ASN1_VALUE *)attrs, ASN1_ITEM_rptr(CSR_ATTRS));
	return r;
}

enum esc_err
esc_csrattrs_for_profile(struct esc_ctx *ctx, const struct esc_profile *p, unsigned char **der, size_t *derlen)
{
	static const struct {
		const char *curve;
		unsigned type;
		int bits;
	} keys[] = {
		{"prime256v1", ESC_EKEY_EC_P256, 0}, {"secp384r1", ESC_EKEY_EC_P384, 0}, {NULL, ESC_EKEY_RSA2048, 2048},
		{NULL, ESC_EKEY_RSA3072, 3072},	     {NULL, ESC_EKEY_RSA4096, 4096},
	};
	const char *oids[2], *curves[ESC_ARRAY_LEN(keys)];
	int bits[ESC_ARRAY_LEN(keys)];
	struct esc_csrattrs spec;
	size_t i;

	if (p == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "no profile");
	memset(&spec, 0, sizeof(spec));
	spec.oids = oids;
	spec.curves = curves;
	spec.rsa_bits = bits;
	for (i = 0; i < ESC_ARRAY_LEN(keys); i++) {
		if ((p->keys & keys[i].type) == 0)
			continue;
		if (keys[i].curve != NULL)
			curves[spec.ncurves++] = keys[i].curve;
		else
			bits[spec.nrsa++] = keys[i].bits;
	}
	/* The signature each family's request is expected to carry, before the key attributes (RFC 7030 §4.5.2). */
	if (spec.ncurves > 0)
		oids[spec.noids++] = "1.2.840.10045.4.3.2"; /* ecdsa-with-SHA256 */
	if (spec.nrsa > 0)
		oids[spec.noids++] = "1.2.840.113549.1.1.11"; /* sha256WithRSAEncryption */
	return esc_csrattrs_build(ctx, &spec, der, derlen);
}
