/*
 * Archive records: checks, the two envelope layers, storage.
 */
#include <limits.h>
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
#include "internal.h"
#include "store_internal.h"

#define RECORD_VERSION 1
#define MAX_KRA_SET 16

/* The outer layer's content; see archive.h. */
typedef struct {
	ASN1_INTEGER *version;
	ASN1_UTF8STRING *record_id;
	ASN1_OCTET_STRING *cert_sha256;
	ASN1_OCTET_STRING *inner;
} ESC_RECORD;

DECLARE_ASN1_ITEM(ESC_RECORD)
DECLARE_ASN1_FUNCTIONS(ESC_RECORD)

ASN1_SEQUENCE(ESC_RECORD) =
	{
		ASN1_SIMPLE(ESC_RECORD, version, ASN1_INTEGER),
		ASN1_SIMPLE(ESC_RECORD, record_id, ASN1_UTF8STRING),
		ASN1_SIMPLE(ESC_RECORD, cert_sha256, ASN1_OCTET_STRING),
		ASN1_SIMPLE(ESC_RECORD, inner, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(ESC_RECORD)

		IMPLEMENT_ASN1_FUNCTIONS(ESC_RECORD)

			struct kra_set {
	size_t n;
	long long ids[MAX_KRA_SET];
	char names[MAX_KRA_SET][65];
	char recipient[MAX_KRA_SET][24];
	X509 *certs[MAX_KRA_SET];
	enum esc_oaep_hash hashes[MAX_KRA_SET];
};

static void
kra_set_clear(struct kra_set *ks)
{
	size_t i;

	for (i = 0; i < ks->n; i++)
		X509_free(ks->certs[i]);
	ks->n = 0;
}

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

/* Is cert issued (and signed) by our CA?  Foreign certificates need policy. */
static enum esc_err
check_issuer(struct esc_ctx *ctx, struct esc_store *st, X509 *cert, int *foreign)
{
	X509 *ca = NULL;
	char *allow = NULL, *issuer = NULL;
	enum esc_err r;

	if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK)
		return r;
	*foreign = !esc_cert_issued_by(cert, ca);
	if (*foreign) {
		if ((r = esc_store_policy(ctx, st, "allow_foreign_issuers", &allow)) != ESC_OK)
			goto out;
		if (strcmp(allow, "true") != 0) {
			issuer = esc_name_to_string(X509_get_issuer_name(cert));
			r = esc_error(ctx, ESC_ERR_POLICY,
				      "the certificate was issued by '%s', not by this CA, and policy does not allow "
				      "foreign issuers",
				      issuer ? issuer : "?");
			goto out;
		}
	}
	r = ESC_OK;
out:
	free(allow);
	free(issuer);
	X509_free(ca);
	return r;
}

/* Pick the record's KRA set: n of the active, unexpired KRAs, at random. */
static enum esc_err
choose_kras(struct esc_ctx *ctx, struct esc_store *st, struct kra_set *ks)
{
	PGresult *res = NULL;
	char *size = NULL;
	long want;
	int i, rows, pick[64];
	enum esc_err r;

	if ((r = esc_store_policy(ctx, st, "kra_set_size", &size)) != ESC_OK)
		return r;
	want = strtol(size, NULL, 10);
	free(size);
	if (want < 1 || want > MAX_KRA_SET)
		return esc_error(ctx, ESC_ERR_CONFIG, "policy kra_set_size must be 1..%d", MAX_KRA_SET);
	/*
	 * FOR SHARE: a KRA chosen here cannot be retired before this record
	 * commits, and one being retired is waited for and then skipped (even
	 * in a READ COMMITTED transaction, as enrollment's; see kra.c).
	 */
	if ((r = esc_store_exec(ctx, st,
				"SELECT id, name, recipient, certificate FROM kras k WHERE state = 'active' AND NOT "
				"EXISTS (SELECT 1 FROM revocations v WHERE v.own AND ltrim(v.serial, '0') = "
				"ltrim(k.cert_serial, '0')) ORDER BY id LIMIT 64 FOR SHARE",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	/* Keep only KRAs whose certificate is still valid. */
	for (i = 0; i < rows; i++)
		pick[i] = i;
	if (rows < want) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "policy wraps each record to %ld KRA(s) but only %d active KRA(s) with an unrevoked "
			      "certificate exist: enroll more with 'p11escrow kra enroll'",
			      want, rows);
		goto out;
	}
	/* Fisher-Yates with RAND_bytes. */
	for (i = rows - 1; i > 0; i--) {
		unsigned int rnd;
		int j, t;

		if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "no randomness");
			goto out;
		}
		j = (int)(rnd % (unsigned int)(i + 1));
		t = pick[i];
		pick[i] = pick[j];
		pick[j] = t;
	}
	for (i = 0; i < rows && ks->n < (size_t)want; i++) {
		int row = pick[i];
		X509 *x = esc_store_cert_cached(st, PQgetvalue(res, row, 3));

		if (x == NULL) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "KRA '%s' has an unreadable certificate",
				      PQgetvalue(res, row, 1));
			goto out;
		}
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
	if (ks->n < (size_t)want) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "policy wraps each record to %ld KRA(s) but only %zu have a valid "
			      "certificate",
			      want, ks->n);
		goto out;
	}
	r = ESC_OK;
out:
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
	int len;

	if (cert != NULL) {
		if (!X509_digest(cert, EVP_sha256(), md, &n))
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the certificate");
	} else {
		if ((len = i2d_PUBKEY(pub, &der)) <= 0 || !EVP_Digest(der, (size_t)len, md, &n, EVP_sha256(), NULL)) {
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

static enum esc_err
check_not_archived(struct esc_ctx *ctx, struct esc_store *st, const char *cert_hash, const char *key_hash)
{
	PGresult *res = NULL;
	const char *v[2] = {cert_hash, key_hash};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st,
				"SELECT id, cert_sha256 = $1 FROM archive_records WHERE cert_sha256 = $1 OR "
				"public_key_sha256 = $2",
				2, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) > 0)
		r = esc_error(ctx, ESC_ERR_ARCHIVED, "already archived as record %s (same %s)", PQgetvalue(res, 0, 0),
			      strcmp(PQgetvalue(res, 0, 1), "t") == 0 ? "certificate" : "key");
	PQclear(res);
	return r;
}

const char *
esc_archive_source_name(enum esc_archive_source s)
{
	return s == ESC_SOURCE_IMPORT ? "import" : s == ESC_SOURCE_ENROLL_CLIENT ? "enroll-client" : "enroll-server";
}

/* Build the outer layer's content (DER) binding id and certificate to inner. */
static enum esc_err
record_content(struct esc_ctx *ctx, const char *id, const unsigned char cert_sha[32], const unsigned char *inner,
	       size_t innerlen, unsigned char **out, int *outlen)
{
	ESC_RECORD *rec = ESC_RECORD_new();
	unsigned char *der = NULL;
	int n;

	if (rec == NULL || !ASN1_INTEGER_set(rec->version, RECORD_VERSION) ||
	    !ASN1_STRING_set(rec->record_id, id, -1) || !ASN1_OCTET_STRING_set(rec->cert_sha256, cert_sha, 32) ||
	    !ASN1_OCTET_STRING_set(rec->inner, inner, (int)innerlen) || (n = i2d_ESC_RECORD(rec, &der)) <= 0) {
		ESC_RECORD_free(rec);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the archive record");
	}
	ESC_RECORD_free(rec);
	*out = der;
	*outlen = n;
	return ESC_OK;
}

/* The derived columns are f's (esc_archive_fields_of): the same derivation that reading a row checks them with. */
static enum esc_err
insert_record(struct esc_ctx *ctx, struct esc_store *st, const char *actor, const char *id, X509 *cert,
	      const struct esc_archive_fields *f, const char *key_type, int foreign, enum esc_archive_source source,
	      const unsigned char *outer, size_t outerlen, const char *generation, const struct kra_set *ks)
{
	char kid[24];
	unsigned char *cder = NULL;
	const char *v[13];
	int len[13] = {0}, fmt[13] = {0}, clen, own_tx = !esc_store_in_tx(st);
	enum esc_err r;
	size_t i;

	if ((clen = i2d_X509(cert, &cder)) <= 0) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (own_tx && (r = esc_store_begin(ctx, st)) != ESC_OK)
		goto out;
	v[0] = id;
	v[1] = f->serial;
	v[2] = f->issuer;
	v[3] = f->subject;
	v[4] = f->email;
	v[5] = f->cert_sha256;
	v[6] = f->public_key_sha256;
	v[7] = key_type;
	v[8] = (const char *)cder;
	len[8] = clen;
	fmt[8] = 1;
	v[9] = foreign ? "true" : "false";
	v[10] = esc_archive_source_name(source);
	v[11] = (const char *)outer;
	len[11] = (int)outerlen;
	fmt[11] = 1;
	v[12] = generation;
	/* A rotation committed since the generation was read: 40001, BUSY, retried (sql/012's trigger). */
	if ((r = esc_store_exec(ctx, st,
				"INSERT INTO archive_records (id, cert_serial, issuer, subject, email, cert_sha256, "
				"public_key_sha256, key_type, certificate, foreign_issuer, source, record, "
				"storage_generation) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
				13, v, len, fmt, NULL)) != ESC_OK)
		goto out;
	{
		char details[200];
		struct esc_audit_event ev = {actor, "", "archive.store", f->serial, "ok", details};

		snprintf(details, sizeof(details), "record %s, source %s, %s issuer, %zu KRA(s)", id,
			 esc_archive_source_name(source), foreign ? "foreign" : "own", ks->n);
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	for (i = 0; i < ks->n; i++) {
		snprintf(kid, sizeof(kid), "%lld", ks->ids[i]);
		v[0] = id;
		v[1] = kid;
		v[2] = ks->recipient[i];
		if ((r = esc_store_exec(
			     ctx, st,
			     "INSERT INTO archive_record_kras (record_id, kra_id, recipient) VALUES ($1,$2,$3)", 3, v,
			     NULL, NULL, NULL)) != ESC_OK)
			goto out;
	}
	if (own_tx && (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	if (own_tx)
		esc_store_rollback(st);
	OPENSSL_free(cder);
	return r;
}

/*
 * The current storage certificate and its generation (decimal), read in
 * one statement, so the record is sealed to the certificate of the
 * generation written beside it.
 */
static enum esc_err
current_storage(struct esc_ctx *ctx, struct esc_store *st, X509 **cert, char *generation, size_t len)
{
	PGresult *res = NULL;
	X509 *x;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT certificate, generation FROM token_keys WHERE role = 'storage'", 0,
				NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		r = esc_error(ctx, ESC_ERR_STATE, "no storage certificate is recorded: run 'p11escrow setup'");
		goto out;
	}
	if ((x = esc_store_cert_cached(st, PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the stored storage certificate is not a DER certificate");
		goto out;
	}
	snprintf(generation, len, "%s", PQgetvalue(res, 0, 1));
	*cert = x;
	r = ESC_OK;
out:
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

static enum esc_err
archive_impl(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert, EVP_PKEY *key,
	     enum esc_archive_source source, struct esc_archive_info *info)
{
	struct kra_set ks;
	struct esc_archive_fields f;
	X509 *storage = NULL;
	unsigned char *p8 = NULL, *inner = NULL, *content = NULL, *outer = NULL;
	size_t p8len = 0, innerlen = 0, outerlen = 0, i;
	char id[ESC_RECORD_ID_LEN + 1], ktype[16], generation[16];
	int contentlen = 0, foreign = 0;
	enum esc_err r;

	memset(&ks, 0, sizeof(ks));
	memset(&f, 0, sizeof(f));
	if (key_type_of(key, ktype, sizeof(ktype)) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "only RSA and EC keys can be archived");
		goto out;
	}
	if (X509_get0_pubkey(cert) == NULL || EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the private key does not match the certificate's public key");
		goto out;
	}
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK || (r = check_usage(ctx, cert)) != ESC_OK ||
	    (r = check_issuer(ctx, st, cert, &foreign)) != ESC_OK ||
	    (r = esc_archive_fields_of(ctx, cert, &f)) != ESC_OK ||
	    (r = check_not_archived(ctx, st, f.cert_sha256, f.public_key_sha256)) != ESC_OK ||
	    (r = choose_kras(ctx, st, &ks)) != ESC_OK ||
	    (r = current_storage(ctx, st, &storage, generation, sizeof(generation))) != ESC_OK ||
	    (r = new_uuid(ctx, id)) != ESC_OK)
		goto out;
	if ((r = pkcs8_of(ctx, key, &p8, &p8len)) != ESC_OK ||
	    (r = esc_envelope_seal(ctx, p8, p8len, ks.certs, ks.hashes, ks.n, &inner, &innerlen)) != ESC_OK ||
	    (r = record_content(ctx, id, f.cert_sha256_raw, inner, innerlen, &content, &contentlen)) != ESC_OK ||
	    (r = esc_envelope_seal(ctx, content, (size_t)contentlen, &storage, NULL, 1, &outer, &outerlen)) != ESC_OK)
		goto out;
	if ((r = insert_record(ctx, st, actor, id, cert, &f, ktype, foreign, source, outer, outerlen, generation,
			       &ks)) != ESC_OK)
		goto out;
	if (info != NULL) {
		memset(info, 0, sizeof(*info));
		snprintf(info->id, sizeof(info->id), "%s", id);
		info->foreign = foreign;
		info->nkras = ks.n;
		for (i = 0; i < ks.n; i++) {
			size_t used = strlen(info->kras);

			snprintf(info->kras + used, sizeof(info->kras) - used, "%s%s", i ? "," : "", ks.names[i]);
		}
	}
	r = ESC_OK;
out:
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8len);
	kra_set_clear(&ks);
	esc_archive_fields_clear(&f);
	X509_free(storage);
	free(inner);
	OPENSSL_free(content);
	free(outer);
	return r;
}

enum esc_err
esc_archive_key(struct esc_ctx *ctx, struct esc_store *st, const char *actor, X509 *cert, EVP_PKEY *key,
		enum esc_archive_source source, struct esc_archive_info *info)
{
	struct esc_store_retry t = {0};
	enum esc_err r;
	char *serial;

	if (actor == NULL || *actor == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "archival needs an actor for the audit trail");
	/* In a caller's transaction (enrollment) the caller retries all of it; esc_store_retry knows. */
	do
		r = archive_impl(ctx, st, actor, cert, key, source, info);
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
esc_record_parse(struct esc_ctx *ctx, const unsigned char *content, size_t contentlen, const char *id,
		 const char *cert_hash, unsigned char **inner, size_t *innerlen)
{
	ESC_RECORD *rec = NULL;
	const unsigned char *p = content;
	unsigned char *out = NULL;
	char sealed_hash[65];
	size_t idlen = strlen(id);
	enum esc_err r;

	if (contentlen == 0 || contentlen > LONG_MAX || (rec = d2i_ESC_RECORD(NULL, &p, (long)contentlen)) == NULL ||
	    p != content + contentlen) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s does not hold an archive record", id);
		goto out;
	}
	/* The row's identity must be the one sealed inside: no swapped records. */
	if (ASN1_INTEGER_get(rec->version) != RECORD_VERSION || (size_t)ASN1_STRING_length(rec->record_id) != idlen ||
	    memcmp(ASN1_STRING_get0_data(rec->record_id), id, idlen) != 0 ||
	    ASN1_STRING_length(rec->cert_sha256) != 32) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "the record stored in row %s belongs to another row: tampering",
			      id);
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
	if ((out = malloc((size_t)ASN1_STRING_length(rec->inner))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(out, ASN1_STRING_get0_data(rec->inner), (size_t)ASN1_STRING_length(rec->inner));
	*inner = out;
	*innerlen = (size_t)ASN1_STRING_length(rec->inner);
	r = ESC_OK;
out:
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

enum esc_err
esc_archive_open_outer(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, const char *id,
		       unsigned char **inner, size_t *innerlen)
{
	PGresult *res = NULL;
	const char *v[1] = {id};
	struct esc_token_key *key = NULL;
	struct esc_archive_row row;
	struct esc_archive_fields truth;
	EVP_PKEY *pkey = NULL;
	X509 *storage = NULL;
	unsigned char *outer = NULL, *content = NULL;
	size_t outerlen = 0, contentlen = 0;
	char uri[1024];
	int generation = 0;
	enum esc_err r;

	memset(&truth, 0, sizeof(truth));
	if ((r = esc_store_exec(ctx, st,
				"SELECT encode(a.record, 'hex'), a.storage_generation, " ESC_ARCHIVE_ROW_SQL
				" FROM archive_records a WHERE a.id::text = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no archive record %s", id);
		goto out;
	}
	/* The row must be its certificate's, before anything is opened for it. */
	esc_archive_row_get(res, 0, 2, &row);
	if ((r = esc_archive_row_check(ctx, &row, NULL, &truth)) != ESC_OK ||
	    (r = esc_store_get_int(ctx, res, 0, 1, &generation)) != ESC_OK)
		goto out;
	{
		long l = 0;

		if ((outer = OPENSSL_hexstr2buf(PQgetvalue(res, 0, 0), &l)) == NULL) {
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
	if ((r = esc_record_parse(ctx, content, contentlen, id, truth.cert_sha256, inner, innerlen)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	esc_archive_fields_clear(&truth);
	esc_envelope_plain_free(content, contentlen);
	OPENSSL_free(outer);
	X509_free(storage);
	EVP_PKEY_free(pkey);
	esc_token_key_free(key);
	PQclear(res);
	return r;
}
