/*
 * Archive records: checks, the two envelope layers, storage.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/archive.h>
#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/envelope.h>

#include "archive_internal.h"
#include "audit_internal.h"
#include "internal.h"
#include "shamir_internal.h"
#include "store_internal.h"

#define RECORD_VERSION 1
#define RECORD_VERSION_SHARES 2
#define MAX_KRA_SET ESC_KRA_SET_MAX

/*
 * The outer layer's content; see archive.h and docs/archival.md.  Version
 * 1: inner is the CMS envelope to the KRA set.  Version 2 (k of n): inner
 * is the CMS envelope to the record's KEK, and shares [0] holds k and the
 * KEK's shares, each sealed to one KRA of the set.
 */
typedef struct {
	ASN1_OCTET_STRING *kra_cert_sha256;
	ASN1_INTEGER *x;
	ASN1_OCTET_STRING *commitment; /* SHA-256 of the share's plaintext (ESC_SHARE_PLAIN DER) */
	ASN1_OCTET_STRING *sealed;     /* CMS AuthEnvelopedData of that plaintext to the KRA */
} ESC_SEALED_SHARE;

DECLARE_ASN1_ITEM(ESC_SEALED_SHARE)
DECLARE_ASN1_FUNCTIONS(ESC_SEALED_SHARE)
DEFINE_STACK_OF(ESC_SEALED_SHARE)

ASN1_SEQUENCE(ESC_SEALED_SHARE) =
	{
		ASN1_SIMPLE(ESC_SEALED_SHARE, kra_cert_sha256, ASN1_OCTET_STRING),
		ASN1_SIMPLE(ESC_SEALED_SHARE, x, ASN1_INTEGER),
		ASN1_SIMPLE(ESC_SEALED_SHARE, commitment, ASN1_OCTET_STRING),
		ASN1_SIMPLE(ESC_SEALED_SHARE, sealed, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(ESC_SEALED_SHARE)

		IMPLEMENT_ASN1_FUNCTIONS(ESC_SEALED_SHARE)

			typedef struct {
	ASN1_INTEGER *threshold;
	STACK_OF(ESC_SEALED_SHARE) *shares;
} ESC_SHARES;

DECLARE_ASN1_ITEM(ESC_SHARES)

ASN1_SEQUENCE(ESC_SHARES) =
	{
		ASN1_SIMPLE(ESC_SHARES, threshold, ASN1_INTEGER),
		ASN1_SEQUENCE_OF(ESC_SHARES, shares, ESC_SEALED_SHARE),
} ASN1_SEQUENCE_END(ESC_SHARES)

		typedef struct {
	ASN1_INTEGER *version;
	ASN1_UTF8STRING *record_id;
	ASN1_OCTET_STRING *cert_sha256;
	ASN1_OCTET_STRING *inner;
	ESC_SHARES *shares;
} ESC_RECORD;

DECLARE_ASN1_ITEM(ESC_RECORD)
DECLARE_ASN1_FUNCTIONS(ESC_RECORD)

ASN1_SEQUENCE(ESC_RECORD) =
	{
		ASN1_SIMPLE(ESC_RECORD, version, ASN1_INTEGER),
		ASN1_SIMPLE(ESC_RECORD, record_id, ASN1_UTF8STRING),
		ASN1_SIMPLE(ESC_RECORD, cert_sha256, ASN1_OCTET_STRING),
		ASN1_SIMPLE(ESC_RECORD, inner, ASN1_OCTET_STRING),
		ASN1_EXP_OPT(ESC_RECORD, shares, ESC_SHARES, 0),
} ASN1_SEQUENCE_END(ESC_RECORD)

		IMPLEMENT_ASN1_FUNCTIONS(ESC_RECORD)

	/* A share's plaintext, bound to its record, index and threshold. */
	typedef struct {
	ASN1_UTF8STRING *record_id;
	ASN1_INTEGER *x;
	ASN1_INTEGER *threshold;
	ASN1_OCTET_STRING *share;
} ESC_SHARE_PLAIN;

DECLARE_ASN1_ITEM(ESC_SHARE_PLAIN)
DECLARE_ASN1_FUNCTIONS(ESC_SHARE_PLAIN)

ASN1_SEQUENCE(ESC_SHARE_PLAIN) =
	{
		ASN1_SIMPLE(ESC_SHARE_PLAIN, record_id, ASN1_UTF8STRING),
		ASN1_SIMPLE(ESC_SHARE_PLAIN, x, ASN1_INTEGER),
		ASN1_SIMPLE(ESC_SHARE_PLAIN, threshold, ASN1_INTEGER),
		ASN1_SIMPLE(ESC_SHARE_PLAIN, share, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(ESC_SHARE_PLAIN)

		IMPLEMENT_ASN1_FUNCTIONS(ESC_SHARE_PLAIN)

	/* Declared here: clang-format takes the line after the ASN.1 macros for their continuation. */
	static void hex_of(const unsigned char *in, size_t n, char *out);

static void
hex_of(const unsigned char *in, size_t n, char *out)
{
	size_t i;

	for (i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", in[i]);
}

static enum esc_err
new_uuid(struct esc_ctx *ctx, char out[ESC_RECORD_ID_LEN + 1])
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof(b)) != 1)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot draw a record id");
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	snprintf(out, ESC_RECORD_ID_LEN + 1, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	return ESC_OK;
}

/* Refuse keys whose certificate only allows signing. */
static enum esc_err
check_usage(struct esc_ctx *ctx, X509 *cert)
{
	uint32_t ku = X509_get_key_usage(cert);
	const uint32_t enc = KU_KEY_ENCIPHERMENT | KU_DATA_ENCIPHERMENT | KU_KEY_AGREEMENT;

	/* UINT32_MAX: no keyUsage extension, every usage allowed. */
	if (ku == UINT32_MAX || (ku & enc) != 0)
		return ESC_OK;
	return esc_error(ctx, ESC_ERR_POLICY,
			 "signing keys are never archived: the certificate allows %s but no encryption",
			 (ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION)) ? "digitalSignature/nonRepudiation"
									    : "no encryption use");
}

static enum esc_err
issuer_check(struct esc_ctx *ctx, X509 *cert, X509 *ca, int allow_foreign, int *foreign)
{
	char *issuer;
	enum esc_err r;

	*foreign = !esc_cert_issued_by(cert, ca);
	if (!*foreign || allow_foreign)
		return ESC_OK;
	issuer = esc_name_to_string(X509_get_issuer_name(cert));
	r = esc_error(ctx, ESC_ERR_POLICY,
		      "the certificate was issued by '%s', not by this CA, and policy does not allow foreign issuers",
		      issuer ? issuer : "?");
	free(issuer);
	return r;
}

void
esc_kra_set_clear(struct esc_kra_set *ks)
{
	size_t i;

	for (i = 0; i < ks->n; i++)
		X509_free(ks->certs[i]);
	ks->n = 0;
}

/* Is id one of keep[0..nkeep)? */
static int
kept(const long long *keep, size_t nkeep, long long id)
{
	size_t i;

	for (i = 0; i < nkeep; i++)
		if (keep[i] == id)
			return 1;
	return 0;
}

/* Policy kra_set_size's value (NULL: unset) as *want.  Errors: NOT_FOUND, CONFIG. */
static enum esc_err
set_size_of(struct esc_ctx *ctx, const char *value, long *want)
{
	if (value == NULL)
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "policy '%s' is not set", "kra_set_size");
	*want = strtol(value, NULL, 10);
	if (*want < 1 || *want > MAX_KRA_SET)
		return esc_error(ctx, ESC_ERR_CONFIG, "policy kra_set_size must be 1..%d", MAX_KRA_SET);
	return ESC_OK;
}

enum esc_err
esc_archive_set_size(struct esc_ctx *ctx, struct esc_store *st, long *want)
{
	char *size = NULL;
	enum esc_err r;

	if ((r = esc_store_policy(ctx, st, "kra_set_size", &size)) != ESC_OK)
		return r;
	r = set_size_of(ctx, size, want);
	free(size);
	return r;
}

/* The KRAs a set may be drawn from: active, certificate not revoked by us, in id order, locked FOR SHARE. */
#define KRAS_SQL                                                                                                    \
	"SELECT id, name, recipient, certificate FROM kras k WHERE state = 'active' AND NOT EXISTS (SELECT 1 FROM " \
	"revocations v WHERE v.own AND ltrim(v.serial, '0') = ltrim(k.cert_serial, '0')) ORDER BY id LIMIT 64 "     \
	"FOR SHARE"

enum esc_err
esc_archive_kras_query(struct esc_ctx *ctx, struct esc_store *st, PGresult **res)
{
	/*
	 * FOR SHARE: a KRA chosen here cannot be retired before this record
	 * commits, and one being retired is waited for and then skipped (even
	 * in a READ COMMITTED transaction, as enrollment's; see kra.c).
	 */
	return esc_store_exec(ctx, st, KRAS_SQL, 0, NULL, NULL, NULL, res);
}

enum esc_err
esc_archive_kras_pick(struct esc_ctx *ctx, struct esc_store *st, const PGresult *res, int first, long want,
		      const long long *keep, size_t nkeep, struct esc_kra_set *ks)
{
	size_t j;
	int i, rows = PQntuples(res) - first, nfirst = 0, pick[64];

	/* The KRAs to keep (a re-wrap keeps a record's valid members) first, in keep's order; the others after. */
	for (j = 0; j < nkeep; j++)
		for (i = first; i < first + rows; i++)
			if (strtoll(PQgetvalue(res, i, 0), NULL, 10) == keep[j] && !kept(keep, j, keep[j]))
				pick[nfirst++] = i;
	{
		int n = nfirst;

		for (i = first; i < first + rows; i++)
			if (!kept(keep, nkeep, strtoll(PQgetvalue(res, i, 0), NULL, 10)))
				pick[n++] = i;
	}
	if (rows < want)
		return esc_error(ctx, ESC_ERR_STATE,
				 "policy wraps each record to %ld KRA(s) but only %d active KRA(s) with an unrevoked "
				 "certificate exist: enroll more with 'p11escrow kra enroll'",
				 want, rows);
	/* Fisher-Yates with RAND_bytes, over the others only: the kept ones stay first. */
	for (i = rows - 1; i > nfirst; i--) {
		unsigned int rnd;
		int o, t;

		if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1)
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "no randomness");
		o = nfirst + (int)(rnd % (unsigned int)(i - nfirst + 1));
		t = pick[i];
		pick[i] = pick[o];
		pick[o] = t;
	}
	/* Keep only KRAs whose certificate is still valid. */
	for (i = 0; i < rows && ks->n < (size_t)want; i++) {
		int row = pick[i];
		X509 *x = esc_store_cert_cached(st, PQgetvalue(res, row, 3));

		if (x == NULL)
			return esc_error(ctx, ESC_ERR_BAD_INPUT, "KRA '%s' has an unreadable certificate",
					 PQgetvalue(res, row, 1));
		if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
			X509_free(x); /* expired: never a recipient */
			continue;
		}
		ks->certs[ks->n] = x;
		ks->ids[ks->n] = strtoll(PQgetvalue(res, row, 0), NULL, 10);
		snprintf(ks->names[ks->n], sizeof(ks->names[0]), "%s", PQgetvalue(res, row, 1));
		snprintf(ks->recipient[ks->n], sizeof(ks->recipient[0]), "%s", PQgetvalue(res, row, 2));
		ks->hashes[ks->n] = esc_oaep_hash_of_recipient(ks->recipient[ks->n]);
		ks->n++;
	}
	if (ks->n < (size_t)want)
		return esc_error(ctx, ESC_ERR_STATE,
				 "policy wraps each record to %ld KRA(s) but only %zu have a valid certificate", want,
				 ks->n);
	return ESC_OK;
}

enum esc_err
esc_archive_choose_kras(struct esc_ctx *ctx, struct esc_store *st, const long long *keep, size_t nkeep,
			struct esc_kra_set *ks)
{
	PGresult *res = NULL;
	long want;
	enum esc_err r;

	if ((r = esc_archive_set_size(ctx, st, &want)) == ESC_OK &&
	    (r = esc_archive_kras_query(ctx, st, &res)) == ESC_OK)
		r = esc_archive_kras_pick(ctx, st, res, 0, want, keep, nkeep, ks);
	PQclear(res);
	return r;
}

/* PKCS#8 DER of key, in secure memory. */
static enum esc_err
pkcs8_of(struct esc_ctx *ctx, EVP_PKEY *key, unsigned char **out, size_t *outlen)
{
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(key);
	unsigned char *buf = NULL, *p;
	int n;

	if (p8 == NULL || (n = i2d_PKCS8_PRIV_KEY_INFO(p8, NULL)) <= 0 ||
	    (buf = OPENSSL_secure_malloc((size_t)n)) == NULL) {
		PKCS8_PRIV_KEY_INFO_free(p8);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the private key as PKCS#8");
	}
	p = buf;
	i2d_PKCS8_PRIV_KEY_INFO(p8, &p);
	PKCS8_PRIV_KEY_INFO_free(p8); /* frees its key copy with cleansing */
	*out = buf;
	*outlen = (size_t)n;
	return ESC_OK;
}

static enum esc_err
digest_hex(struct esc_ctx *ctx, X509 *cert, EVP_PKEY *pub, char out[65], unsigned char raw[32])
{
	unsigned char md[EVP_MAX_MD_SIZE], *der = NULL;
	unsigned int n = 0;
	size_t dlen = 0;

	if (cert != NULL) {
		if (!X509_digest(cert, EVP_sha256(), md, &n))
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the certificate");
	} else {
		/* The bytes of i2d_PUBKEY, without OpenSSL 3.0's encoder for EC keys (0.4 ms). */
		if ((der = esc_pubkey_spki(pub, &dlen)) == NULL || !EVP_Digest(der, dlen, md, &n, EVP_sha256(), NULL)) {
			OPENSSL_free(der);
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the public key");
		}
		OPENSSL_free(der);
	}
	hex_of(md, n, out);
	if (raw != NULL)
		memcpy(raw, md, 32);
	return ESC_OK;
}

enum esc_err
esc_archive_fields_of(struct esc_ctx *ctx, X509 *cert, struct esc_archive_fields *out)
{
	struct esc_archive_fields f;
	STACK_OF(OPENSSL_STRING) *emails = NULL;
	enum esc_err r;

	memset(&f, 0, sizeof(f));
	if ((f.serial = esc_cert_serial_hex(cert)) == NULL ||
	    (f.issuer = esc_name_to_string(X509_get_issuer_name(cert))) == NULL ||
	    (f.subject = esc_name_to_string(X509_get_subject_name(cert))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* The first address only, as archival has always stored it (the column is for searching). */
	emails = X509_get1_email(cert);
	if (sk_OPENSSL_STRING_num(emails) > 0 && (f.email = strdup(sk_OPENSSL_STRING_value(emails, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = digest_hex(ctx, cert, NULL, f.cert_sha256, f.cert_sha256_raw)) != ESC_OK)
		goto out;
	/* A key that does not decode has no hash: "" then, which no stored row holds (archival refuses such keys). */
	if (X509_get0_pubkey(cert) == NULL)
		ERR_clear_error();
	else if ((r = digest_hex(ctx, NULL, X509_get0_pubkey(cert), f.public_key_sha256, NULL)) != ESC_OK)
		goto out;
	*out = f;
	memset(&f, 0, sizeof(f)); /* transferred */
	r = ESC_OK;
out:
	X509_email_free(emails);
	esc_archive_fields_clear(&f);
	return r;
}

void
esc_archive_fields_clear(struct esc_archive_fields *f)
{
	if (f == NULL)
		return;
	free(f->serial);
	free(f->issuer);
	free(f->subject);
	free(f->email);
	memset(f, 0, sizeof(*f));
}

void
esc_archive_row_get(const PGresult *res, int row, int col, struct esc_archive_row *out)
{
	out->id = PQgetvalue(res, row, col);
	out->serial = PQgetvalue(res, row, col + 1);
	out->issuer = PQgetvalue(res, row, col + 2);
	out->subject = PQgetvalue(res, row, col + 3);
	out->email = PQgetisnull(res, row, col + 4) ? NULL : PQgetvalue(res, row, col + 4);
	out->cert_sha256 = PQgetvalue(res, row, col + 5);
	out->public_key_sha256 = PQgetvalue(res, row, col + 6);
	out->certificate = PQgetvalue(res, row, col + 7);
}

/* Add name to the list in cols (", "-separated) when the column's value is not want. */
static void
differs(char *cols, size_t len, const char *name, const char *have, const char *want)
{
	size_t used = strlen(cols);

	if (have == NULL && want == NULL)
		return;
	if (have != NULL && want != NULL && strcmp(have, want) == 0)
		return;
	snprintf(cols + used, len - used, "%s%s", used ? ", " : "", name);
}

enum esc_err
esc_archive_row_compare(struct esc_ctx *ctx, const struct esc_archive_row *row, const struct esc_archive_fields *f)
{
	char cols[128] = "";

	/* Not secrets: plain comparisons.  Every column is named, so the message says what was changed. */
	differs(cols, sizeof(cols), "cert_serial", row->serial, f->serial);
	differs(cols, sizeof(cols), "issuer", row->issuer, f->issuer);
	differs(cols, sizeof(cols), "subject", row->subject, f->subject);
	differs(cols, sizeof(cols), "email", row->email, f->email);
	differs(cols, sizeof(cols), "cert_sha256", row->cert_sha256, f->cert_sha256);
	differs(cols, sizeof(cols), "public_key_sha256", row->public_key_sha256, f->public_key_sha256);
	if (cols[0] != '\0')
		return esc_error(ctx, ESC_ERR_TAMPERED,
				 "archive record %s was altered: its %s %s not match its certificate (serial %s, "
				 "subject '%s'): tampering",
				 row->id ? row->id : "?", cols, strchr(cols, ',') ? "do" : "does", f->serial,
				 f->subject);
	return ESC_OK;
}

enum esc_err
esc_archive_row_check(struct esc_ctx *ctx, const struct esc_archive_row *row, X509 **cert,
		      struct esc_archive_fields *truth)
{
	struct esc_archive_fields f;
	X509 *x = NULL;
	enum esc_err r;

	memset(&f, 0, sizeof(f));
	/* Not the per-connection cache: a user's certificate is read once, and would push out the CA's and the KRAs'. */
	if (row->certificate == NULL || (x = esc_store_cert_from_text(row->certificate)) == NULL) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "archive record %s was altered: its certificate column does not hold one certificate: "
			      "tampering",
			      row->id ? row->id : "?");
		goto out;
	}
	if ((r = esc_archive_fields_of(ctx, x, &f)) != ESC_OK || (r = esc_archive_row_compare(ctx, row, &f)) != ESC_OK)
		goto out;
	if (cert != NULL) {
		*cert = x;
		x = NULL; /* transferred */
	}
	if (truth != NULL) {
		*truth = f;
		memset(&f, 0, sizeof(f)); /* transferred */
	}
	r = ESC_OK;
out:
	esc_archive_fields_clear(&f);
	X509_free(x);
	return r;
}

const char *
esc_archive_source_name(enum esc_archive_source s)
{
	return s == ESC_SOURCE_IMPORT ? "import" : s == ESC_SOURCE_ENROLL_CLIENT ? "enroll-client" : "enroll-server";
}

void
esc_record_shares_free(struct esc_record_shares *sh)
{
	size_t i;

	if (sh == NULL)
		return;
	for (i = 0; i < sh->n; i++)
		free(sh->share[i].sealed);
	free(sh);
}

/* Set os to len bytes of p; 1 on success (ASN1_OCTET_STRING_set's int length). */
static int
os_set(ASN1_OCTET_STRING *os, const unsigned char *p, size_t len)
{
	return len <= INT_MAX && ASN1_OCTET_STRING_set(os, p, (int)len);
}

enum esc_err
esc_record_encode(struct esc_ctx *ctx, const char *id, const unsigned char cert_sha[32], const unsigned char *inner,
		  size_t innerlen, const struct esc_record_shares *sh, unsigned char **out, int *outlen)
{
	ESC_RECORD *rec = ESC_RECORD_new();
	ESC_SEALED_SHARE *ss = NULL;
	unsigned char *der = NULL;
	enum esc_err r = ESC_ERR_CRYPTO;
	size_t i;
	int n;

	if (rec == NULL || !ASN1_INTEGER_set(rec->version, sh != NULL ? RECORD_VERSION_SHARES : RECORD_VERSION) ||
	    !ASN1_STRING_set(rec->record_id, id, -1) || !os_set(rec->cert_sha256, cert_sha, 32) ||
	    !os_set(rec->inner, inner, innerlen))
		goto out;
	if (sh != NULL) {
		if ((rec->shares = (ESC_SHARES *)ASN1_item_new(ASN1_ITEM_rptr(ESC_SHARES))) == NULL ||
		    !ASN1_INTEGER_set(rec->shares->threshold, (long)sh->threshold))
			goto out;
		for (i = 0; i < sh->n; i++) {
			const struct esc_record_share *e = &sh->share[i];

			if ((ss = ESC_SEALED_SHARE_new()) == NULL ||
			    !os_set(ss->kra_cert_sha256, e->kra_cert_sha256, 32) ||
			    !ASN1_INTEGER_set(ss->x, (long)e->x) || !os_set(ss->commitment, e->commitment, 32) ||
			    !os_set(ss->sealed, e->sealed, e->sealedlen) ||
			    !sk_ESC_SEALED_SHARE_push(rec->shares->shares, ss))
				goto out;
			ss = NULL; /* transferred */
		}
	}
	if ((n = i2d_ESC_RECORD(rec, &der)) <= 0)
		goto out;
	*out = der;
	*outlen = n;
	r = ESC_OK;
out:
	if (r != ESC_OK)
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the archive record");
	ESC_SEALED_SHARE_free(ss);
	ESC_RECORD_free(rec);
	return r;
}

/* A small non-negative ASN.1 INTEGER, or -1. */
static long
small_int(const ASN1_INTEGER *a, long max)
{
	int64_t v;

	if (a == NULL || ASN1_INTEGER_get_int64(&v, a) != 1) {
		ERR_clear_error();
		return -1;
	}
	return v < 0 || v > max ? -1 : (long)v;
}

/* Version 2's shares: 2 <= k <= n <= 16, x distinct in 1..255, hashes 32 bytes, sealed shares bounded. */
static enum esc_err
shares_of(struct esc_ctx *ctx, const ESC_SHARES *in, const char *id, struct esc_record_shares **out)
{
	struct esc_record_shares *sh = NULL;
	long k, x;
	int i, n = sk_ESC_SEALED_SHARE_num(in->shares);
	size_t j;
	enum esc_err r;

	k = small_int(in->threshold, ESC_SHAMIR_MAX_SHARES);
	if (k < 2 || n < k || n > ESC_SHAMIR_MAX_SHARES) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "record %s is version 2 but its threshold (%ld) and share count (%d) are not 2 <= k "
			      "<= n <= %d: tampering",
			      id, k, n, ESC_SHAMIR_MAX_SHARES);
		goto out;
	}
	if ((sh = calloc(1, sizeof(*sh))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	sh->threshold = (unsigned)k;
	for (i = 0; i < n; i++) {
		const ESC_SEALED_SHARE *ss = sk_ESC_SEALED_SHARE_value(in->shares, i);
		struct esc_record_share *e = &sh->share[i];
		int slen = ASN1_STRING_length(ss->sealed);

		x = small_int(ss->x, 255);
		if (x < 1 || ASN1_STRING_length(ss->kra_cert_sha256) != 32 ||
		    ASN1_STRING_length(ss->commitment) != 32 || slen <= 0 || slen > ESC_ENVELOPE_MAX) {
			r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s has a malformed share (number %d): tampering",
				      id, i + 1);
			goto out;
		}
		for (j = 0; j < (size_t)i; j++)
			if (sh->share[j].x == (unsigned)x) {
				r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s has two shares at x = %ld: tampering",
					      id, x);
				goto out;
			}
		e->x = (unsigned)x;
		memcpy(e->kra_cert_sha256, ASN1_STRING_get0_data(ss->kra_cert_sha256), 32);
		memcpy(e->commitment, ASN1_STRING_get0_data(ss->commitment), 32);
		if ((e->sealed = malloc((size_t)slen)) == NULL) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		memcpy(e->sealed, ASN1_STRING_get0_data(ss->sealed), (size_t)slen);
		e->sealedlen = (size_t)slen;
		sh->n++;
	}
	*out = sh;
	sh = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_record_shares_free(sh);
	return r;
}

enum esc_err
esc_share_plain_encode(struct esc_ctx *ctx, const char *id, unsigned x, unsigned k, const unsigned char *share,
		       size_t sharelen, unsigned char **out, size_t *outlen)
{
	ESC_SHARE_PLAIN *sp = ESC_SHARE_PLAIN_new();
	unsigned char *buf = NULL, *p;
	enum esc_err r;
	int n;

	if (sp == NULL || !ASN1_STRING_set(sp->record_id, id, -1) || !ASN1_INTEGER_set(sp->x, (long)x) ||
	    !ASN1_INTEGER_set(sp->threshold, (long)k) || !os_set(sp->share, share, sharelen) ||
	    (n = i2d_ESC_SHARE_PLAIN(sp, NULL)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode a key share");
		goto out;
	}
	/* The share is a secret: its encoding goes straight into secure memory. */
	if ((buf = OPENSSL_secure_malloc((size_t)n)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	p = buf;
	if (i2d_ESC_SHARE_PLAIN(sp, &p) != n) {
		OPENSSL_secure_clear_free(buf, (size_t)n);
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode a key share");
		goto out;
	}
	*out = buf;
	*outlen = (size_t)n;
	r = ESC_OK;
out:
	if (sp != NULL && ASN1_STRING_length(sp->share) > 0)
		OPENSSL_cleanse((void *)ASN1_STRING_get0_data(sp->share), (size_t)ASN1_STRING_length(sp->share));
	ESC_SHARE_PLAIN_free(sp);
	return r;
}

enum esc_err
esc_share_plain_parse(struct esc_ctx *ctx, const unsigned char *plain, size_t plainlen, const char *id, unsigned x,
		      unsigned k, unsigned char share[ESC_KEK_LEN])
{
	ESC_SHARE_PLAIN *sp = NULL;
	const unsigned char *p = plain;
	size_t idlen = strlen(id);
	enum esc_err r;

	if (plainlen == 0 || plainlen > 1024 || (sp = d2i_ESC_SHARE_PLAIN(NULL, &p, (long)plainlen)) == NULL ||
	    p != plain + plainlen || ASN1_STRING_length(sp->share) != ESC_KEK_LEN) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_TAMPERED, "a share of record %s is not a key share: tampering", id);
		goto out;
	}
	if ((size_t)ASN1_STRING_length(sp->record_id) != idlen ||
	    memcmp(ASN1_STRING_get0_data(sp->record_id), id, idlen) != 0) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "the share given for record %s is another record's: tampering",
			      id);
		goto out;
	}
	if (small_int(sp->x, 255) != (long)x || small_int(sp->threshold, ESC_SHAMIR_MAX_SHARES) != (long)k) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "the share given for record %s as number %u of %u needed is another share: tampering", id,
			      x, k);
		goto out;
	}
	memcpy(share, ASN1_STRING_get0_data(sp->share), ESC_KEK_LEN);
	r = ESC_OK;
out:
	if (sp != NULL && ASN1_STRING_length(sp->share) > 0)
		OPENSSL_cleanse((void *)ASN1_STRING_get0_data(sp->share), (size_t)ASN1_STRING_length(sp->share));
	ESC_SHARE_PLAIN_free(sp);
	return r;
}

enum esc_err
esc_archive_insert_kras(struct esc_ctx *ctx, struct esc_store *st, const char *id, const struct esc_kra_set *ks)
{
	/* Each id at most 20 digits and a comma, each recipient at most 20 characters, quotes and a comma. */
	char ids_lit[MAX_KRA_SET * 22 + 3], rcpts_lit[MAX_KRA_SET * 24 + 3];
	const char *v[3];
	size_t i, ko, ro;

	/* The set's rows in one statement (one round trip, not one per KRA): two arrays, unnested in step. */
	ko = (size_t)snprintf(ids_lit, sizeof(ids_lit), "{");
	ro = (size_t)snprintf(rcpts_lit, sizeof(rcpts_lit), "{");
	for (i = 0; i < ks->n && i < MAX_KRA_SET; i++) {
		ko += (size_t)snprintf(ids_lit + ko, sizeof(ids_lit) - ko, "%s%lld", i ? "," : "", ks->ids[i]);
		/* A recipient is one of sql/011's few words: no quote or backslash to escape. */
		ro += (size_t)snprintf(rcpts_lit + ro, sizeof(rcpts_lit) - ro, "%s\"%.20s\"", i ? "," : "",
				       ks->recipient[i]);
	}
	snprintf(ids_lit + ko, sizeof(ids_lit) - ko, "}");
	snprintf(rcpts_lit + ro, sizeof(rcpts_lit) - ro, "}");
	v[0] = id;
	v[1] = ids_lit;
	v[2] = rcpts_lit;
	return esc_store_exec(ctx, st,
			      "INSERT INTO archive_record_kras (record_id, kra_id, recipient) SELECT $1, k, c FROM "
			      "unnest($2::bigint[], $3::text[]) AS u(k, c)",
			      3, v, NULL, NULL, NULL);
}

enum esc_err
esc_share_open(struct esc_ctx *ctx, const char *id, unsigned k, const struct esc_record_share *e, EVP_PKEY *key,
	       X509 *cert, unsigned char share[ESC_KEK_LEN])
{
	unsigned char *plain = NULL, md[32];
	size_t plainlen = 0;
	unsigned int mdlen = 0;
	enum esc_err r;

	if ((r = esc_envelope_open(ctx, e->sealed, e->sealedlen, key, cert, &plain, &plainlen)) != ESC_OK) {
		char why[256];

		snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
		r = esc_error(ctx, r, "share x = %u of record %s does not open on this card: %s", e->x, id, why);
		goto out;
	}
	if (!EVP_Digest(plain, plainlen, md, &mdlen, EVP_sha256(), NULL)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash a share");
		goto out;
	}
	/* Checked before the share is used at all: a damaged or swapped share is never combined. */
	if (CRYPTO_memcmp(md, e->commitment, 32) != 0) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "share x = %u of record %s does not match the record's commitment: damaged or swapped; "
			      "nothing combined",
			      e->x, id);
		goto out;
	}
	r = esc_share_plain_parse(ctx, plain, plainlen, id, e->x, k, share);
out:
	esc_envelope_plain_free(plain, plainlen);
	return r;
}

enum esc_err
esc_shares_open_inner(struct esc_ctx *ctx, const char *id, const unsigned char *xs, unsigned char *const *shares,
		      unsigned k, const unsigned char *inner, size_t innerlen, unsigned char **p8, size_t *p8len)
{
	unsigned char *kek = OPENSSL_secure_zalloc(ESC_KEK_LEN);
	enum esc_err r;

	if (kek == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = esc_shamir_combine(ctx, xs, shares, k, ESC_KEK_LEN, kek)) == ESC_OK)
		r = esc_envelope_open_kek(ctx, inner, innerlen, kek, (const unsigned char *)id, strlen(id), p8, p8len);
	OPENSSL_secure_clear_free(kek, ESC_KEK_LEN);
	return r;
}

/* The derived columns are f's (esc_archive_fields_of): the same derivation that reading a row checks them with. */
/* The parameters of one archive_records row ($1..$15 of INSERT_COLUMNS, from v[0]). */
#define INSERT_COLUMNS                                                                                         \
	"archive_records (id, cert_serial, issuer, subject, email, cert_sha256, public_key_sha256, key_type, " \
	"certificate, foreign_issuer, source, record, storage_generation, record_version, wrap_version)"
#define INSERT_NPARAMS 15

static void
row_params(struct esc_archive_new *n, const char **v, int *len, int *fmt)
{
	v[0] = n->id;
	v[1] = n->f->serial;
	v[2] = n->f->issuer;
	v[3] = n->f->subject;
	v[4] = n->f->email;
	v[5] = n->f->cert_sha256;
	v[6] = n->f->public_key_sha256;
	v[7] = n->key_type;
	v[8] = (const char *)n->cder;
	len[8] = n->clen;
	fmt[8] = 1;
	v[9] = n->foreign ? "true" : "false";
	v[10] = esc_archive_source_name(n->source);
	v[11] = (const char *)n->outer;
	len[11] = (int)n->outerlen;
	fmt[11] = 1;
	v[12] = n->generation;
	snprintf(n->version_text, sizeof(n->version_text), "%d", n->k > 1 ? RECORD_VERSION_SHARES : RECORD_VERSION);
	snprintf(n->k_text, sizeof(n->k_text), "%u", n->k);
	v[13] = n->version_text;
	v[14] = n->k_text;
}

/* The KRA rows of every record: three arrays, unnested in step ($p, $p+1, $p+2; ids are UUIDs). */
#define INSERT_KRAS                                                                                                      \
	"INSERT INTO archive_record_kras (record_id, kra_id, recipient) SELECT r::uuid, k, c FROM unnest($%zu::text[], " \
	"$%zu::bigint[], $%zu::text[]) AS u(r, k, c)"

enum esc_err
esc_archive_insert_rows(struct esc_ctx *ctx, struct esc_store *st, struct esc_archive_new *rows, size_t n,
			size_t nevents, PGresult **events)
{
	const char **v = NULL;
	int *len = NULL, *fmt = NULL;
	char *sql = NULL, *ids = NULL, *kras = NULL, *rcpts = NULL, count[24];
	size_t i, j, off, cap, ko = 0, ro = 0, io = 0, nk = 0, p = n * INSERT_NPARAMS;
	enum esc_err r;

	if (n == 0)
		return ESC_OK;
	if (n > ESC_ARCHIVE_BATCH_MAX || (nevents > 0) != (events != NULL))
		return esc_error(ctx, ESC_ERR_USAGE,
				 "at most %d records in one statement, and audit ids only with a result for them",
				 ESC_ARCHIVE_BATCH_MAX);
	for (i = 0; i < n; i++)
		nk += rows[i].ks->n;
	cap = 256 + strlen(INSERT_COLUMNS) + strlen(INSERT_KRAS) + strlen(ESC_AUDIT_RESERVE_SQL) +
	      n * (INSERT_NPARAMS * 6 + 4);
	/* The records' parameters, then the three KRA arrays, then the number of audit ids. */
	v = calloc(p + 4, sizeof(*v));
	len = calloc(p + 4, sizeof(*len));
	fmt = calloc(p + 4, sizeof(*fmt));
	sql = malloc(cap);
	/* The KRA rows of every record in one statement: three arrays, unnested in step (ids are UUIDs). */
	ids = malloc(nk * (ESC_RECORD_ID_LEN + 1) + 3);
	kras = malloc(nk * 22 + 3);
	rcpts = malloc(nk * 24 + 3);
	if (v == NULL || len == NULL || fmt == NULL || sql == NULL || ids == NULL || kras == NULL || rcpts == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/*
	 * One statement: the records in a data-modifying WITH, their KRA rows
	 * (the foreign key is checked at the statement's end, when both are
	 * in), and the audit ids if asked for.
	 */
	off = (size_t)snprintf(sql, cap, "WITH ins_records AS (INSERT INTO " INSERT_COLUMNS " VALUES ");
	for (i = 0; i < n; i++) {
		row_params(&rows[i], v + i * INSERT_NPARAMS, len + i * INSERT_NPARAMS, fmt + i * INSERT_NPARAMS);
		for (j = 0; j < INSERT_NPARAMS; j++)
			off += (size_t)snprintf(sql + off, cap - off, "%s$%zu%s", j == 0 ? (i ? ",(" : "(") : ",",
						i * INSERT_NPARAMS + j + 1, j + 1 == INSERT_NPARAMS ? ")" : "");
	}
	if (nevents == 0)
		(void)snprintf(sql + off, cap - off, ") " INSERT_KRAS, p + 1, p + 2, p + 3);
	else
		(void)snprintf(sql + off, cap - off,
			       "), ins_kras AS (" INSERT_KRAS ") " ESC_AUDIT_RESERVE_SQL "$%zu::int)", p + 1, p + 2,
			       p + 3, p + 4);
	io = (size_t)sprintf(ids, "{");
	ko = (size_t)sprintf(kras, "{");
	ro = (size_t)sprintf(rcpts, "{");
	for (i = 0; i < n; i++)
		for (j = 0; j < rows[i].ks->n; j++) {
			int first = io == 1;

			io += (size_t)sprintf(ids + io, "%s%s", first ? "" : ",", rows[i].id);
			ko += (size_t)sprintf(kras + ko, "%s%lld", first ? "" : ",", rows[i].ks->ids[j]);
			/* A recipient is one of sql/011's few words: no quote or backslash to escape. */
			ro += (size_t)sprintf(rcpts + ro, "%s\"%.20s\"", first ? "" : ",", rows[i].ks->recipient[j]);
		}
	sprintf(ids + io, "}");
	sprintf(kras + ko, "}");
	sprintf(rcpts + ro, "}");
	snprintf(count, sizeof(count), "%zu", nevents);
	v[p] = ids;
	v[p + 1] = kras;
	v[p + 2] = rcpts;
	v[p + 3] = count;
	/* A rotation committed since the generation was read: 40001, BUSY, retried (sql/012's trigger). */
	r = esc_store_exec(ctx, st, sql, (int)(p + (nevents > 0 ? 4 : 3)), v, len, fmt, events);
out:
	free(v);
	free(len);
	free(fmt);
	free(sql);
	free(ids);
	free(kras);
	free(rcpts);
	return r;
}

/* The audit event of an archived record (action archive.store, outcome ok); details[len]. */
void
esc_archive_event(const struct esc_archive_new *n, const char *actor, char *details, size_t len,
		  struct esc_audit_event *ev)
{
	snprintf(details, len, "record %s, source %s, %s issuer, %zu KRA(s), %u needed", n->id,
		 esc_archive_source_name(n->source), n->foreign ? "foreign" : "own", n->ks->n, n->k);
	ev->actor = actor;
	ev->role = "";
	ev->action = "archive.store";
	ev->object = n->f->serial;
	ev->outcome = "ok";
	ev->details = details;
}

/*
 * Write n and its audit event (and also's, if given) in the open
 * transaction or one of its own: the record, its KRA rows and the audit
 * ids in one statement, the events in another.  locked: the audit lock is
 * held already (esc_archive_env_load took it).
 */
static enum esc_err
write_record(struct esc_ctx *ctx, struct esc_store *st, const char *actor, struct esc_archive_new *n,
	     const struct esc_archive_also *also, int locked)
{
	char details[200];
	struct esc_audit_event ev[2];
	PGresult *ids = NULL;
	size_t nev = 1;
	int own_tx = !esc_store_in_tx(st);
	enum esc_err r;

	if (own_tx) {
		if ((r = esc_store_begin(ctx, st)) != ESC_OK)
			return r;
		locked = 0;
	}
	esc_archive_event(n, actor, details, sizeof(details), &ev[0]);
	if (also != NULL) {
		memset(&ev[1], 0, sizeof(ev[1]));
		also->fill(also->arg, n->id, &ev[1]);
		nev = 2;
	}
	if ((!locked && (r = esc_store_exec(ctx, st, "SELECT pg_advisory_xact_lock(" ESC_STORE_AUDIT_LOCK ")", 0, NULL,
					    NULL, NULL, NULL)) != ESC_OK) ||
	    (r = esc_archive_insert_rows(ctx, st, n, 1, nev, &ids)) != ESC_OK ||
	    (r = esc_audit_append_reserved(ctx, st, ev, nev, ids)) != ESC_OK)
		goto out;
	if (own_tx && (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	PQclear(ids);
	if (own_tx)
		esc_store_rollback(st);
	return r;
}

/* The storage certificate and generation from their stored text (certificate NULL: none).  Errors: STATE, BAD_INPUT. */
static enum esc_err
storage_of(struct esc_ctx *ctx, struct esc_store *st, const char *certificate, const char *gen, X509 **cert,
	   char *generation, size_t len)
{
	if (certificate == NULL)
		return esc_error(ctx, ESC_ERR_STATE, "no storage certificate is recorded: run 'p11escrow setup'");
	if ((*cert = esc_store_cert_cached(st, certificate)) == NULL)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the stored storage certificate is not a DER certificate");
	snprintf(generation, len, "%s", gen);
	return ESC_OK;
}

/*
 * The current storage certificate and its generation (decimal), read in
 * one statement, so the record is sealed to the certificate of the
 * generation written beside it.
 */
enum esc_err
esc_archive_current_storage(struct esc_ctx *ctx, struct esc_store *st, X509 **cert, char *generation, size_t len)
{
	PGresult *res = NULL;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT certificate, generation FROM token_keys WHERE role = 'storage'", 0,
				NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	r = storage_of(ctx, st, PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : NULL,
		       PQntuples(res) == 1 ? PQgetvalue(res, 0, 1) : "", cert, generation, len);
	PQclear(res);
	return r;
}

static const char *
key_type_of(EVP_PKEY *key, char *buf, size_t len)
{
	if (EVP_PKEY_is_a(key, "RSA"))
		snprintf(buf, len, "rsa%d", EVP_PKEY_get_bits(key));
	else if (EVP_PKEY_is_a(key, "EC"))
		snprintf(buf, len, "ec-p%d", EVP_PKEY_get_bits(key));
	else
		return NULL;
	return buf;
}

/* Policy kra_threshold's value (NULL: unset) as *k for a set of nkras.  Errors: NOT_FOUND, CONFIG. */
static enum esc_err
threshold_of(struct esc_ctx *ctx, const char *value, size_t nkras, unsigned *k)
{
	long t;

	if (value == NULL)
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "policy '%s' is not set", "kra_threshold");
	t = strtol(value, NULL, 10);
	if (t < 1 || (size_t)t > nkras)
		return esc_error(ctx, ESC_ERR_CONFIG,
				 "policy kra_threshold (%ld) must be 1..kra_set_size (%zu): set it with 'p11escrow "
				 "policy set kra_threshold K'",
				 t, nkras);
	*k = (unsigned)t;
	return ESC_OK;
}

/* Policy kra_threshold (k), refused above the set (sql/014 sets it in every database). */
enum esc_err
esc_archive_threshold(struct esc_ctx *ctx, struct esc_store *st, size_t nkras, unsigned *k)
{
	char *v = NULL;
	enum esc_err r;

	if ((r = esc_store_policy(ctx, st, "kra_threshold", &v)) != ESC_OK)
		return r;
	r = threshold_of(ctx, v, nkras, k);
	free(v);
	return r;
}

/*
 * Version 2's inner layer and shares: a fresh KEK seals the PKCS#8 key
 * (KEKRecipientInfo, key id the record id), and is split k of n; share i
 * (x = i + 1, the KRA's place in the set) is bound to the record, x and k
 * (ShareInfo), committed to (SHA-256 of that plaintext) and sealed to KRA
 * i alone, in its recipient form.  The KEK and the shares never leave
 * secure memory and are wiped before returning.
 */
static enum esc_err
seal_shares(struct esc_ctx *ctx, const char *id, const unsigned char *p8, size_t p8len, const struct esc_kra_set *ks,
	    unsigned k, unsigned char **inner, size_t *innerlen, struct esc_record_shares **out)
{
	struct esc_record_shares *sh = NULL;
	unsigned char *kek = NULL, *sbuf = NULL, *shares[ESC_SHAMIR_MAX_SHARES], xs[ESC_SHAMIR_MAX_SHARES];
	unsigned char *plain = NULL, *in = NULL;
	size_t plainlen = 0, inlen = 0, i, n = ks->n;
	unsigned int mdlen;
	enum esc_err r;

	if ((sh = calloc(1, sizeof(*sh))) == NULL || (kek = OPENSSL_secure_malloc(ESC_KEK_LEN)) == NULL ||
	    (sbuf = OPENSSL_secure_zalloc(n * ESC_KEK_LEN)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (RAND_priv_bytes(kek, ESC_KEK_LEN) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot draw a record KEK");
		goto out;
	}
	for (i = 0; i < n; i++) {
		xs[i] = (unsigned char)(i + 1);
		shares[i] = sbuf + i * ESC_KEK_LEN;
	}
	if ((r = esc_envelope_seal_kek(ctx, p8, p8len, kek, (const unsigned char *)id, strlen(id), &in, &inlen)) !=
		    ESC_OK ||
	    (r = esc_shamir_split(ctx, kek, ESC_KEK_LEN, k, (unsigned)n, xs, shares)) != ESC_OK)
		goto out;
	sh->threshold = k;
	for (i = 0; i < n; i++) {
		struct esc_record_share *e = &sh->share[i];

		e->x = xs[i];
		if ((r = esc_share_plain_encode(ctx, id, e->x, k, shares[i], ESC_KEK_LEN, &plain, &plainlen)) != ESC_OK)
			goto out;
		if (!EVP_Digest(plain, plainlen, e->commitment, &mdlen, EVP_sha256(), NULL) ||
		    !X509_digest(ks->certs[i], EVP_sha256(), e->kra_cert_sha256, &mdlen)) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash a key share");
			goto out;
		}
		if ((r = esc_envelope_seal(ctx, plain, plainlen, &ks->certs[i], &ks->hashes[i], 1, &e->sealed,
					   &e->sealedlen)) != ESC_OK)
			goto out;
		sh->n++;
		OPENSSL_secure_clear_free(plain, plainlen);
		plain = NULL;
	}
	*inner = in;
	*innerlen = inlen;
	in = NULL; /* transferred */
	*out = sh;
	sh = NULL;
	r = ESC_OK;
out:
	if (plain != NULL)
		OPENSSL_secure_clear_free(plain, plainlen);
	if (sbuf != NULL)
		OPENSSL_secure_clear_free(sbuf, n * ESC_KEK_LEN);
	if (kek != NULL)
		OPENSSL_secure_clear_free(kek, ESC_KEK_LEN);
	free(in);
	esc_record_shares_free(sh);
	return r;
}

enum esc_err
esc_archive_seal_inner(struct esc_ctx *ctx, const char *id, const unsigned char *p8, size_t p8len,
		       const struct esc_kra_set *ks, unsigned k, unsigned char **inner, size_t *innerlen,
		       struct esc_record_shares **shares)
{
	/* k = 1: version 1, the key sealed to every KRA of the set, as always.  k > 1: version 2. */
	*shares = NULL;
	if (k == 1)
		return esc_envelope_seal(ctx, p8, p8len, ks->certs, ks->hashes, ks->n, inner, innerlen);
	return seal_shares(ctx, id, p8, p8len, ks, k, inner, innerlen, shares);
}

enum esc_err
esc_archive_check_key(struct esc_ctx *ctx, X509 *cert, EVP_PKEY *key, char *ktype, size_t len)
{
	if (key_type_of(key, ktype, len) == NULL)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "only RSA and EC keys can be archived");
	if (X509_get0_pubkey(cert) == NULL || EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_MISMATCH, "the private key does not match the certificate's public key");
	}
	return check_usage(ctx, cert);
}

enum esc_err
esc_archive_seal_record(struct esc_ctx *ctx, struct esc_archive_new *n, EVP_PKEY *key, X509 *storage)
{
	unsigned char *p8 = NULL, *inner = NULL, *content = NULL;
	size_t p8len = 0, innerlen = 0;
	int contentlen = 0;
	struct esc_record_shares *sh = NULL;
	enum esc_err r;

	if ((r = new_uuid(ctx, n->id)) != ESC_OK || (r = pkcs8_of(ctx, key, &p8, &p8len)) != ESC_OK)
		goto out;
	if ((r = esc_archive_seal_inner(ctx, n->id, p8, p8len, n->ks, n->k, &inner, &innerlen, &sh)) != ESC_OK ||
	    (r = esc_record_encode(ctx, n->id, n->f->cert_sha256_raw, inner, innerlen, sh, &content, &contentlen)) !=
		    ESC_OK ||
	    (r = esc_envelope_seal(ctx, content, (size_t)contentlen, &storage, NULL, 1, &n->outer, &n->outerlen)) !=
		    ESC_OK)
		goto out;
	r = ESC_OK;
out:
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8len);
	esc_record_shares_free(sh);
	free(inner);
	OPENSSL_free(content);
	return r;
}

void
esc_archive_new_clear(struct esc_archive_new *n)
{
	free(n->outer);
	OPENSSL_free(n->cder);
	n->outer = NULL;
	n->outerlen = 0;
	n->cder = NULL;
	n->clen = 0;
}

void
esc_archive_info_of(const struct esc_archive_new *n, struct esc_archive_info *info)
{
	size_t i;

	memset(info, 0, sizeof(*info));
	snprintf(info->id, sizeof(info->id), "%s", n->id);
	info->foreign = n->foreign;
	info->nkras = n->ks->n;
	info->threshold = n->k;
	for (i = 0; i < n->ks->n; i++) {
		size_t used = strlen(info->kras);

		snprintf(info->kras + used, sizeof(info->kras) - used, "%s%s", i ? "," : "", n->ks->names[i]);
	}
}

/*
 * esc_archive_env_load's statement.  Row 0 holds the CA, the policies, the
 * storage key, the duplicate and the lock (columns 4..12, sort key 0); the
 * KRA rows follow (columns 0..3 as esc_archive_kras_query's, sort key 1).
 * The audit lock is taken only after every KRA row is locked: l counts k,
 * which is materialised first.  A MATERIALIZED CTE with FOR SHARE locks
 * each row as it is read, as esc_archive_kras_query does.
 */
#define ENV_SQL                                                                                                     \
	"WITH k AS MATERIALIZED (" KRAS_SQL "), "                                                                   \
	"l AS (SELECT pg_advisory_xact_lock(" ESC_STORE_AUDIT_LOCK ") FROM (SELECT count(*) FROM k) c WHERE "       \
	"$3::boolean) "                                                                                             \
	"SELECT NULL::bigint, NULL::text, NULL::text, NULL::bytea, (SELECT certificate FROM ca WHERE state = "      \
	"'active'), (SELECT value FROM policy WHERE key = 'allow_foreign_issuers'), (SELECT value FROM policy "     \
	"WHERE key = 'kra_set_size'), (SELECT value FROM policy WHERE key = 'kra_threshold'), s.certificate, "      \
	"s.generation::text, d.id::text, d.same, (SELECT count(*) FROM l), 0 AS o FROM (SELECT 1) one LEFT JOIN "   \
	"token_keys s ON s.role = 'storage' LEFT JOIN LATERAL (SELECT id, cert_sha256 = $1 FROM archive_records "   \
	"WHERE cert_sha256 = $1 OR public_key_sha256 = $2 LIMIT 1) d(id, same) ON true "                            \
	"UNION ALL SELECT id, name, recipient, certificate, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, " \
	"1 FROM k ORDER BY 14, 1"

/* Column c of row 0 of res, NULL if SQL NULL. */
static const char *
env_value(const PGresult *res, int c)
{
	return PQgetisnull(res, 0, c) ? NULL : PQgetvalue(res, 0, c);
}

/* Keep ctx's error as *err / msg[ESC_ERRMSG_MAX] (the first one kept) and clear it. */
static void
env_keep(struct esc_ctx *ctx, enum esc_err r, enum esc_err *err, char *msg)
{
	if (r != ESC_OK && *err == ESC_OK) {
		*err = r;
		snprintf(msg, ESC_ERRMSG_MAX, "%s", esc_ctx_errmsg(ctx));
	}
	esc_ctx_clear_error(ctx);
}

enum esc_err
esc_archive_env_load(struct esc_ctx *ctx, struct esc_store *st, const struct esc_archive_fields *f, int audit_lock,
		     struct esc_archive_env *e)
{
	const char *v[3] = {f != NULL ? f->cert_sha256 : NULL, f != NULL ? f->public_key_sha256 : NULL,
			    audit_lock ? "true" : "false"};
	const char *ca, *foreign;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, ENV_SQL, 3, v, NULL, NULL, &e->res)) != ESC_OK)
		return r;
	if (PQntuples(e->res) < 1 || PQnfields(e->res) != 14)
		return esc_error(ctx, ESC_ERR_DB, "the archival settings came back in an unexpected form");
	if ((ca = env_value(e->res, 4)) == NULL)
		env_keep(ctx, esc_error(ctx, ESC_ERR_STATE, "there is no active CA: run 'p11escrow setup'"), &e->ca_err,
			 e->ca_msg);
	else if ((e->ca = esc_store_cert_cached(st, ca)) == NULL)
		env_keep(ctx, esc_error(ctx, ESC_ERR_BAD_INPUT, "stored the CA certificate is not a DER certificate"),
			 &e->ca_err, e->ca_msg);
	foreign = env_value(e->res, 5);
	e->allow_foreign = foreign == NULL ? -1 : strcmp(foreign, "true") == 0;
	if (env_value(e->res, 10) != NULL) {
		snprintf(e->archived_id, sizeof(e->archived_id), "%s", env_value(e->res, 10));
		e->archived_same_cert = strcmp(PQgetvalue(e->res, 0, 11), "t") == 0;
	}
	/* As sealing needs them: the set's size, the storage key, the threshold for a set of that size. */
	if ((r = set_size_of(ctx, env_value(e->res, 6), &e->set_size)) == ESC_OK &&
	    (r = storage_of(ctx, st, env_value(e->res, 8), PQgetvalue(e->res, 0, 9), &e->storage, e->generation,
			    sizeof(e->generation))) == ESC_OK)
		r = threshold_of(ctx, env_value(e->res, 7), (size_t)e->set_size, &e->k);
	env_keep(ctx, r, &e->wrap_err, e->wrap_msg);
	return ESC_OK;
}

void
esc_archive_env_clear(struct esc_archive_env *e)
{
	PQclear(e->res);
	X509_free(e->ca);
	X509_free(e->storage);
	memset(e, 0, sizeof(*e));
}

enum esc_err
esc_archive_env_issuer(struct esc_ctx *ctx, const struct esc_archive_env *e, X509 *cert, int *foreign)
{
	if (e->ca == NULL)
		return esc_error(ctx, e->ca_err, "%s", e->ca_msg);
	if (e->allow_foreign < 0 && !esc_cert_issued_by(cert, e->ca))
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "policy '%s' is not set", "allow_foreign_issuers");
	return issuer_check(ctx, cert, e->ca, e->allow_foreign > 0, foreign);
}

static enum esc_err
archive_impl(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert, EVP_PKEY *key,
	     enum esc_archive_source source, const struct esc_archive_also *also, struct esc_archive_info *info)
{
	struct esc_kra_set ks;
	struct esc_archive_fields f;
	struct esc_archive_new n;
	struct esc_archive_env e;
	char ktype[16];
	int foreign = 0, locked = esc_store_in_tx(st);
	enum esc_err r;

	memset(&ks, 0, sizeof(ks));
	memset(&f, 0, sizeof(f));
	memset(&n, 0, sizeof(n));
	memset(&e, 0, sizeof(e));
	if ((r = esc_archive_check_key(ctx, cert, key, ktype, sizeof(ktype))) != ESC_OK)
		goto out;
	/*
	 * Everything sealing needs in one statement; in the caller's
	 * transaction it also takes the audit lock, so the write that follows
	 * reserves the audit ids in the same statement as the record.
	 */
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK || (r = esc_archive_fields_of(ctx, cert, &f)) != ESC_OK ||
	    (r = esc_archive_env_load(ctx, st, &f, locked, &e)) != ESC_OK ||
	    (r = esc_archive_env_issuer(ctx, &e, cert, &foreign)) != ESC_OK)
		goto out;
	if (e.archived_id[0] != '\0') {
		r = esc_error(ctx, ESC_ERR_ARCHIVED, "already archived as record %s (same %s)", e.archived_id,
			      e.archived_same_cert ? "certificate" : "key");
		goto out;
	}
	if (e.wrap_err != ESC_OK) {
		r = esc_error(ctx, e.wrap_err, "%s", e.wrap_msg);
		goto out;
	}
	if ((r = esc_archive_kras_pick(ctx, st, e.res, 1, e.set_size, NULL, 0, &ks)) != ESC_OK)
		goto out;
	n.f = &f;
	n.key_type = ktype;
	n.foreign = foreign;
	n.source = source;
	n.generation = e.generation;
	n.ks = &ks;
	n.k = e.k;
	if ((n.clen = i2d_X509(cert, &n.cder)) <= 0) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = esc_archive_seal_record(ctx, &n, key, e.storage)) != ESC_OK ||
	    (r = write_record(ctx, st, actor, &n, also, locked)) != ESC_OK)
		goto out;
	if (info != NULL)
		esc_archive_info_of(&n, info);
	r = ESC_OK;
out:
	esc_archive_new_clear(&n);
	esc_kra_set_clear(&ks);
	esc_archive_fields_clear(&f);
	esc_archive_env_clear(&e);
	return r;
}

enum esc_err
esc_archive_key_and(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert, EVP_PKEY *key,
		    enum esc_archive_source source, const struct esc_archive_also *also, struct esc_archive_info *info)
{
	struct esc_store_retry t = {0};
	enum esc_err r;
	char *serial;

	if (actor == NULL || *actor == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "archival needs an actor for the audit trail");
	/* In a caller's transaction (enrollment) the caller retries all of it; esc_store_retry knows. */
	do
		r = archive_impl(ctx, st, actor, cert, key, source, also, info);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK && !esc_store_in_tx(st)) {
		/* Refusals are security events too ("signing keys are never archived"). */
		serial = esc_cert_serial_hex(cert);
		esc_audit_outcome(ctx, st, actor, "", "archive.store", serial ? serial : "?", r);
		free(serial);
	}
	return r;
}

enum esc_err
esc_archive_key(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert, EVP_PKEY *key,
		enum esc_archive_source source, struct esc_archive_info *info)
{
	return esc_archive_key_and(ctx, st, actor, cert, key, source, NULL, info);
}

enum esc_err
esc_record_parse(struct esc_ctx *ctx, const unsigned char *content, size_t contentlen, const char *id,
		 const char *cert_hash, unsigned char **inner, size_t *innerlen, struct esc_record_shares **shares)
{
	ESC_RECORD *rec = NULL;
	struct esc_record_shares *sh = NULL;
	const unsigned char *p = content;
	unsigned char *out = NULL;
	char sealed_hash[65];
	size_t idlen = strlen(id);
	long version;
	enum esc_err r;

	if (contentlen == 0 || contentlen > LONG_MAX || (rec = d2i_ESC_RECORD(NULL, &p, (long)contentlen)) == NULL ||
	    p != content + contentlen) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s does not hold an archive record", id);
		goto out;
	}
	/* The row's identity must be the one sealed inside: no swapped records. */
	version = small_int(rec->version, 255);
	if ((version != RECORD_VERSION && version != RECORD_VERSION_SHARES) ||
	    (size_t)ASN1_STRING_length(rec->record_id) != idlen ||
	    memcmp(ASN1_STRING_get0_data(rec->record_id), id, idlen) != 0 ||
	    ASN1_STRING_length(rec->cert_sha256) != 32) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "the record stored in row %s belongs to another row: tampering",
			      id);
		goto out;
	}
	/* Version 1 has no shares, version 2 must: a record is never read as the other version. */
	if ((version == RECORD_VERSION) != (rec->shares == NULL)) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s is version %ld but %s key shares: tampering", id,
			      version, rec->shares == NULL ? "has no" : "carries");
		goto out;
	}
	hex_of(ASN1_STRING_get0_data(rec->cert_sha256), 32, sealed_hash);
	if (strcmp(sealed_hash, cert_hash) != 0) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s was sealed for another certificate: tampering", id);
		goto out;
	}
	if (ASN1_STRING_length(rec->inner) <= 0) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s has an empty inner layer: tampering", id);
		goto out;
	}
	if (rec->shares != NULL && (r = shares_of(ctx, rec->shares, id, &sh)) != ESC_OK)
		goto out;
	if ((out = malloc((size_t)ASN1_STRING_length(rec->inner))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(out, ASN1_STRING_get0_data(rec->inner), (size_t)ASN1_STRING_length(rec->inner));
	*inner = out;
	*innerlen = (size_t)ASN1_STRING_length(rec->inner);
	if (shares != NULL) {
		*shares = sh;
		sh = NULL; /* transferred */
	}
	r = ESC_OK;
out:
	esc_record_shares_free(sh);
	ESC_RECORD_free(rec);
	return r;
}

enum esc_err
esc_archive_storage_key(struct esc_ctx *ctx, struct esc_store *st, int generation, char *uri, size_t urilen,
			X509 **cert)
{
	PGresult *res = NULL;
	char g[16];
	const char *v[1] = {g};
	X509 *x;
	enum esc_err r;

	snprintf(g, sizeof(g), "%d", generation);
	if ((r = esc_store_exec(ctx, st,
				"SELECT uri, certificate FROM token_keys WHERE role = 'storage' AND generation = $1 "
				"UNION ALL SELECT uri, certificate FROM retired_storage_keys WHERE generation = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 1)) {
		r = esc_error(ctx, ESC_ERR_KEY_NOT_FOUND,
			      "no storage key of generation %d is recorded (token_keys, retired_storage_keys)",
			      generation);
		goto out;
	}
	if ((x = esc_store_cert_cached(st, PQgetvalue(res, 0, 1))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the stored certificate of storage key generation %d is not a DER certificate",
			      generation);
		goto out;
	}
	if (strlen(PQgetvalue(res, 0, 0)) >= urilen) {
		X509_free(x);
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the URI of storage key generation %d is too long", generation);
		goto out;
	}
	snprintf(uri, urilen, "%s", PQgetvalue(res, 0, 0));
	*cert = x;
	r = ESC_OK;
out:
	PQclear(res);
	return r;
}

int
esc_archive_id_text_ok(const char *s)
{
	size_t i;

	if (*s == '\0')
		return 1;
	if (strlen(s) != ESC_RECORD_ID_LEN)
		return 0;
	for (i = 0; i < ESC_RECORD_ID_LEN; i++)
		if ((i == 8 || i == 13 || i == 18 || i == 23)
			    ? s[i] != '-'
			    : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

enum esc_err
esc_archive_open_row(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, const PGresult *res, int i,
		     X509 **cert, struct esc_archive_fields *fields, unsigned char **inner, size_t *innerlen,
		     struct esc_record_shares **shares)
{
	struct esc_token_key *key = NULL;
	struct esc_archive_row row;
	struct esc_archive_fields truth;
	EVP_PKEY *pkey = NULL;
	X509 *storage = NULL, *x = NULL;
	struct esc_record_shares *sh = NULL;
	unsigned char *outer = NULL, *content = NULL, *in = NULL;
	size_t outerlen = 0, contentlen = 0, inlen = 0;
	char uri[1024];
	const char *id;
	int generation = 0;
	enum esc_err r;

	memset(&truth, 0, sizeof(truth));
	/* The row must be its certificate's, before anything is opened for it. */
	esc_archive_row_get(res, i, 2, &row);
	id = row.id;
	if ((r = esc_archive_row_check(ctx, &row, &x, &truth)) != ESC_OK ||
	    (r = esc_store_get_int(ctx, res, i, 1, &generation)) != ESC_OK)
		goto out;
	{
		long l = 0;

		if ((outer = OPENSSL_hexstr2buf(PQgetvalue(res, i, 0), &l)) == NULL) {
			ERR_clear_error();
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "record %s is unreadable", id);
			goto out;
		}
		outerlen = (size_t)l;
	}
	/*
	 * The key of the record's generation: the current storage key, or an
	 * earlier one the record was sealed to before a rotation and has not
	 * been re-sealed from yet.  A generation column changed by a database
	 * writer only names a key that is not a recipient (NOT_RECIPIENT).
	 */
	if ((r = esc_archive_storage_key(ctx, st, generation, uri, sizeof(uri), &storage)) != ESC_OK ||
	    (r = esc_token_find_key(ctx, ca_tok, uri, &key)) != ESC_OK ||
	    (r = esc_token_key_private(ctx, ca_tok, key, &pkey)) != ESC_OK ||
	    (r = esc_envelope_open(ctx, outer, outerlen, pkey, storage, &content, &contentlen)) != ESC_OK)
		goto out;
	/*
	 * The sealed hash against the hash of the certificate column itself
	 * (computed above), not the cert_sha256 column: a certificate moved
	 * here from another row with all its columns is another certificate.
	 */
	if ((r = esc_record_parse(ctx, content, contentlen, id, truth.cert_sha256, &in, &inlen, &sh)) != ESC_OK)
		goto out;
	/* A caller that cannot take shares (it hands the inner layer to one KRA) is told why, not given a KEK box. */
	if (sh != NULL && shares == NULL) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "record %s is recovered by %u of its %zu KRAs (record version 2), not by one: see "
			      "docs/recovery.md, \"k of n\"",
			      id, sh->threshold, sh->n);
		goto out;
	}
	*inner = in;
	*innerlen = inlen;
	in = NULL; /* transferred */
	if (shares != NULL) {
		*shares = sh;
		sh = NULL; /* transferred */
	}
	if (cert != NULL) {
		*cert = x;
		x = NULL; /* transferred */
	}
	if (fields != NULL) {
		*fields = truth;
		memset(&truth, 0, sizeof(truth)); /* transferred */
	}
	r = ESC_OK;
out:
	esc_record_shares_free(sh);
	free(in);
	esc_archive_fields_clear(&truth);
	esc_envelope_plain_free(content, contentlen);
	OPENSSL_free(outer);
	X509_free(storage);
	X509_free(x);
	EVP_PKEY_free(pkey);
	esc_token_key_free(key);
	return r;
}

enum esc_err
esc_archive_open_outer(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, const char *id,
		       unsigned char **inner, size_t *innerlen, struct esc_record_shares **shares)
{
	PGresult *res = NULL;
	const char *v[1] = {id};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT " ESC_ARCHIVE_OPEN_SQL " FROM archive_records a WHERE a.id::text = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1)
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no archive record %s", id);
	else
		r = esc_archive_open_row(ctx, st, ca_tok, res, 0, NULL, NULL, inner, innerlen, shares);
	PQclear(res);
	return r;
}
