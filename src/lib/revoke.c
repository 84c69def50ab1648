/*
 * Revocation: the revocations table and CRLs signed on the CA token.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/revoke.h>

#include "internal.h"
#include "store_internal.h"

static const struct {
	const char *name;
	int code;
} reasons[] = {
	{"unspecified", CRL_REASON_UNSPECIFIED},
	{"keyCompromise", CRL_REASON_KEY_COMPROMISE},
	{"affiliationChanged", CRL_REASON_AFFILIATION_CHANGED},
	{"superseded", CRL_REASON_SUPERSEDED},
	{"cessationOfOperation", CRL_REASON_CESSATION_OF_OPERATION},
};

static int
reason_code(const char *name)
{
	size_t i;

	for (i = 0; name != NULL && i < ESC_ARRAY_LEN(reasons); i++)
		if (strcmp(name, reasons[i].name) == 0)
			return reasons[i].code;
	return -1;
}

static enum esc_err
revoke_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *serial,
	    const char *reason, char *nserial, size_t nlen)
{
	PGresult *res = NULL;
	const char *v[5];
	char roles[64], details[300];
	struct esc_audit_event ev = {NULL, roles, "cert.revoke", nserial, "ok", details};
	size_t n = 0;
	enum esc_err r;

	if (actor == NULL || !(esc_account_roles(actor) & (ESC_ROLE_ADMIN | ESC_ROLE_CERT_MANAGER)))
		return esc_error(ctx, ESC_ERR_DENIED, "account '%s' may not revoke certificates",
				 actor ? esc_account_name(actor) : "(none)");
	if (reason_code(reason) < 0)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "reason must be unspecified, keyCompromise, affiliationChanged, "
				 "superseded or cessationOfOperation");
	for (; *serial == '0' || *serial == ':'; serial++)
		;
	for (; *serial && n + 1 < nlen; serial++) {
		if (*serial == ':')
			continue;
		if (!isxdigit((unsigned char)*serial))
			return esc_error(ctx, ESC_ERR_USAGE, "a serial number is hexadecimal");
		nserial[n++] = (char)tolower((unsigned char)*serial);
	}
	nserial[n] = '\0';
	if (n == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "empty serial number");
	v[0] = nserial;
	/* Our own issued certificates, KRA certificates (ours too), and archived ones (own or foreign). */
	if ((r = esc_store_exec(ctx, st,
				"SELECT issuer, false FROM certificates WHERE ltrim(serial, '0') = $1 UNION "
				"SELECT c.subject, false FROM kras k, ca c WHERE c.id = 1 AND "
				"ltrim(k.cert_serial, '0') = $1 UNION "
				"SELECT issuer, foreign_issuer FROM archive_records WHERE ltrim(cert_serial, '0') = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) == 0) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no certificate with serial %s is known here", nserial);
		goto out;
	}
	if (PQntuples(res) > 1) {
		r = esc_error(ctx, ESC_ERR_USAGE, "serial %s belongs to certificates of several issuers", nserial);
		goto out;
	}
	v[1] = PQgetvalue(res, 0, 0);
	v[2] = strcmp(PQgetvalue(res, 0, 1), "t") == 0 ? "false" : "true";
	v[3] = reason;
	v[4] = ev.actor = esc_account_name(actor);
	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	snprintf(details, sizeof(details), "reason %s, issuer %.200s%s", reason, v[1],
		 v[2][0] == 't' ? "" : " (foreign: marked here, not on this CA's CRL)");
	if ((r = esc_store_begin(ctx, st)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"INSERT INTO revocations (serial, issuer, own, reason, revoked_by) VALUES ($1, $2, "
				"$3::boolean, $4, $5)",
				5, v, NULL, NULL, NULL)) != ESC_OK ||
	    (r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_cert_revoke(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *serial,
		const char *reason)
{
	char nserial[128] = "";
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = revoke_impl(ctx, st, actor, serial, reason, nserial, sizeof(nserial));
	while (esc_store_retry(ctx, st, &t, &r));

	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "cert.revoke", nserial[0] ? nserial : serial, r);
	return r;
}

enum esc_err
esc_cert_record_revoked(struct esc_ctx *ctx, struct esc_store *st, const char *record_id, int *yes)
{
	PGresult *res = NULL;
	const char *v[1] = {record_id};
	enum esc_err r;

	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT EXISTS (SELECT 1 FROM revocations v WHERE v.issuer = a.issuer AND "
		     "ltrim(v.serial, '0') = ltrim(a.cert_serial, '0')) FROM archive_records a WHERE a.id::text "
		     "= $1",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1)
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no archive record %s", record_id);
	else
		*yes = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return r;
}

static int
add_revoked(X509_CRL *crl, const char *serial_hex, const char *revoked_at, const char *reason)
{
	X509_REVOKED *rev = X509_REVOKED_new();
	ASN1_INTEGER *serial = NULL;
	ASN1_TIME *when = ASN1_TIME_new();
	ASN1_ENUMERATED *code = ASN1_ENUMERATED_new();
	BIGNUM *bn = NULL;
	int ok = rev != NULL && when != NULL && code != NULL && BN_hex2bn(&bn, serial_hex) > 0 &&
		 (serial = BN_to_ASN1_INTEGER(bn, NULL)) != NULL && X509_REVOKED_set_serialNumber(rev, serial) &&
		 ASN1_TIME_set_string_X509(when, revoked_at) && X509_REVOKED_set_revocationDate(rev, when) &&
		 ASN1_ENUMERATED_set(code, reason_code(reason)) &&
		 X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, code, 0, 0) && X509_CRL_add0_revoked(crl, rev);

	if (!ok)
		X509_REVOKED_free(rev);
	ASN1_INTEGER_free(serial);
	ASN1_TIME_free(when);
	ASN1_ENUMERATED_free(code);
	BN_free(bn);
	return ok;
}

/*
 * One current CRL for the whole service (sql/016_current_crl.sql): every
 * CRL the CA signs is stored in crls, and the one with the highest number
 * is what every worker of every p11escrowd serves.  A new one is made under
 * this advisory lock, in a READ COMMITTED transaction whose statements,
 * once the lock is ours, see what the previous holder committed: two
 * keepers deciding at once sign once, the second returns the first's.
 */
#define CRL_LOCK "1882536301"

/* The newest stored CRL, and whether a new one is due (stale: a revocation since; or past its refresh_at). */
#define CRL_NEWEST                                                                                                 \
	"SELECT c.number, c.revision < s.revision OR now() >= c.refresh_at, CASE WHEN c.number = $1::bigint THEN " \
	"NULL ELSE c.der END FROM crl_state s JOIN LATERAL (SELECT number, revision, refresh_at, der FROM crls "   \
	"WHERE ca_id = s.ca_id ORDER BY number DESC LIMIT 1) c ON true WHERE s.ca_id = 1"

/* bytea in libpq's text form (hex) to malloc'ed DER. */
static enum esc_err
der_of_bytea(struct esc_ctx *ctx, const char *text, unsigned char **der, size_t *len)
{
	unsigned char *u;
	size_t n = 0;

	if ((u = PQunescapeBytea((const unsigned char *)text, &n)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if (n == 0 || (*der = malloc(n)) == NULL) {
		PQfreemem(u);
		return esc_error(ctx, n == 0 ? ESC_ERR_BAD_INPUT : ESC_ERR_NOMEM,
				 n == 0 ? "a stored CRL is empty" : "out of memory");
	}
	memcpy(*der, u, n);
	*len = n;
	PQfreemem(u);
	return ESC_OK;
}

enum esc_err
esc_crl_current(struct esc_ctx *ctx, struct esc_store *st, long long have, unsigned char **der, size_t *len,
		long long *number, int *due)
{
	PGresult *res = NULL;
	char hv[24];
	const char *v[1] = {hv};
	enum esc_err r;

	snprintf(hv, sizeof(hv), "%lld", have);
	if ((r = esc_store_exec(ctx, st, CRL_NEWEST, 1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no CRL has been made yet");
		goto out;
	}
	*der = NULL;
	*len = 0;
	if (!PQgetisnull(res, 0, 2) && (r = der_of_bytea(ctx, PQgetvalue(res, 0, 2), der, len)) != ESC_OK)
		goto out;
	*number = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	*due = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	r = ESC_OK;
out:
	PQclear(res);
	return r;
}

/* The newest stored CRL, decoded, if it is not due (else *out stays NULL).  In the caller's transaction. */
static enum esc_err
current_if_fresh(struct esc_ctx *ctx, struct esc_store *st, X509_CRL **out)
{
	unsigned char *der = NULL;
	const unsigned char *p;
	size_t len = 0;
	long long number = 0;
	int due = 1;
	enum esc_err r;

	*out = NULL;
	if ((r = esc_crl_current(ctx, st, 0, &der, &len, &number, &due)) == ESC_ERR_NOT_FOUND)
		return ESC_OK;
	if (r != ESC_OK || due)
		goto out;
	p = der;
	if (len > LONG_MAX || (*out = d2i_X509_CRL(NULL, &p, (long)len)) == NULL || p != der + len) {
		X509_CRL_free(*out);
		*out = NULL;
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "stored CRL %lld is not a DER CRL", number);
	}
out:
	free(der);
	return r;
}

/*
 * Build and sign, in the caller's transaction (holding CRL_LOCK), a CRL of
 * every revoked certificate of this CA, valid from now for validity
 * seconds, with the next number; *revision is the revocation count it was
 * built from, read in the same statement as the revocations it lists.
 */
static enum esc_err
sign_crl(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, time_t now, long validity, X509_CRL **out,
	 long long *number_out, long long *revision)
{
	PGresult *res = NULL;
	X509 *ca = NULL;
	X509_CRL *crl = NULL;
	struct esc_token_key *key = NULL;
	EVP_PKEY *signer = NULL;
	ASN1_TIME *this_update = NULL, *next_update = NULL;
	ASN1_INTEGER *number = NULL;
	X509V3_CTX v3;
	X509_EXTENSION *aki = NULL;
	char *uri = NULL;
	long long num;
	enum esc_err r;
	int i;

	if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(ctx, st, "SELECT uri FROM token_keys WHERE role = 'ca-sign'", 0, NULL, NULL, NULL,
				&res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1 || (uri = strdup(PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_STATE, "the CA signing key is not recorded");
		goto out;
	}
	PQclear(res);
	res = NULL;
	if ((r = esc_token_find_key(ctx, ca_tok, uri, &key)) != ESC_OK ||
	    (r = esc_token_key_private(ctx, ca_tok, key, &signer)) != ESC_OK)
		goto out;
	/*
	 * Times in the form ASN1_TIME_set_string_X509 takes: YYYYMMDDHHMMSSZ.
	 * The number: the sequence's next, and above every stored number (a
	 * sequence can be reset by a restore; the store's trigger refuses less).
	 */
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT r.serial, to_char(r.revoked_at AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') || 'Z', "
		     "r.reason, n.num, n.revision FROM (SELECT s.revision, GREATEST(nextval('crl_number'), "
		     "coalesce((SELECT max(c.number) FROM crls c WHERE c.ca_id = s.ca_id), 0) + 1) AS num FROM "
		     "crl_state s WHERE s.ca_id = 1) n LEFT JOIN revocations r ON r.own ORDER BY r.revoked_at",
		     0, NULL, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) < 1) {
		r = esc_error(ctx, ESC_ERR_STATE, "the CRL state is missing (schema older than 16?)");
		goto out;
	}
	num = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	if ((crl = X509_CRL_new()) == NULL || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) ||
	    (this_update = ASN1_TIME_adj(NULL, now, 0, 0)) == NULL ||
	    (next_update = ASN1_TIME_adj(NULL, now, 0, validity)) == NULL ||
	    !X509_CRL_set1_lastUpdate(crl, this_update) || !X509_CRL_set1_nextUpdate(crl, next_update) ||
	    (number = ASN1_INTEGER_new()) == NULL || !ASN1_INTEGER_set_int64(number, num) ||
	    !X509_CRL_add1_ext_i2d(crl, NID_crl_number, number, 0, 0)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the CRL");
		goto out;
	}
	X509V3_set_ctx(&v3, ca, NULL, NULL, crl, 0);
	if ((aki = X509V3_EXT_conf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always")) == NULL ||
	    !X509_CRL_add_ext(crl, aki, -1)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot add the CRL's authority key identifier");
		goto out;
	}
	for (i = 0; i < PQntuples(res); i++) {
		if (PQgetisnull(res, i, 0))
			continue; /* the row that carries only the CRL number */
		if (!add_revoked(crl, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2))) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot list serial %s on the CRL",
					   PQgetvalue(res, i, 0));
			goto out;
		}
	}
	if (!X509_CRL_sort(crl) || X509_CRL_sign(crl, signer, EVP_sha256()) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_PKCS11, "the CA token could not sign the CRL");
		goto out;
	}
	if (X509_CRL_verify(crl, X509_get0_pubkey(ca)) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_MISMATCH,
				   "the CRL's signature does not verify with the CA certificate");
		goto out;
	}
	*revision = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
	*number_out = num;
	*out = crl;
	crl = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(number);
	ASN1_TIME_free(this_update);
	ASN1_TIME_free(next_update);
	X509_CRL_free(crl);
	EVP_PKEY_free(signer);
	esc_token_key_free(key);
	X509_free(ca);
	free(uri);
	PQclear(res);
	return r;
}

/*
 * One attempt of publish: under CRL_LOCK, the stored CRL if it is fresh
 * and fresh is wanted, else a new one signed, stored and audited (cert.crl
 * ok, as actor, or as the service when actor is NULL).
 */
static enum esc_err
publish_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
	     long validity, int force, X509_CRL **out)
{
	const struct esc_publication *pub = esc_ctx_publication(ctx);
	X509_CRL *crl = NULL;
	unsigned char *der = NULL;
	int derlen, nrev;
	long long number = 0, revision = 0;
	time_t now = time(NULL);
	char v_num[24], v_rev[24], v_this[24], v_next[24], v_refresh[24], v_count[16], roles[64] = "service";
	char details[200];
	const char *v[8] = {v_num, NULL, v_this, v_next, v_refresh, v_rev, v_count, NULL};
	int lens[8] = {0}, fmts[8] = {0};
	struct esc_audit_event ev = {NULL, roles, "cert.crl", v_num, "ok", details};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) != ESC_OK)
		return r;
	esc_store_mark_tx(st);
	if ((r = esc_store_exec(ctx, st, "SELECT pg_advisory_xact_lock(" CRL_LOCK ")", 0, NULL, NULL, NULL, NULL)) !=
	    ESC_OK)
		goto out;
	if (!force) {
		if ((r = current_if_fresh(ctx, st, &crl)) != ESC_OK)
			goto out;
		if (crl != NULL) {
			/* Another keeper made it while we waited for the lock: theirs is ours. */
			if ((r = esc_store_commit(ctx, st)) != ESC_OK)
				goto out;
			goto done;
		}
	}
	if ((r = sign_crl(ctx, st, ca_tok, now, validity, &crl, &number, &revision)) != ESC_OK)
		goto out;
	if ((derlen = i2d_X509_CRL(crl, &der)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the CRL");
		goto out;
	}
	nrev = sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl));
	snprintf(v_num, sizeof(v_num), "%lld", number);
	snprintf(v_rev, sizeof(v_rev), "%lld", revision);
	snprintf(v_this, sizeof(v_this), "%lld", (long long)now);
	snprintf(v_next, sizeof(v_next), "%lld", (long long)now + validity);
	snprintf(v_refresh, sizeof(v_refresh), "%lld", (long long)now + validity * pub->crl_refresh / 100);
	snprintf(v_count, sizeof(v_count), "%d", nrev < 0 ? 0 : nrev);
	v[1] = (const char *)der;
	lens[1] = derlen;
	fmts[1] = 1;
	/* An account (the API), the CA PIN holder (the CLI's local mode) or the service (a due CRL). */
	v[7] = ev.actor = actor != NULL ? esc_account_name(actor) : force ? "ca-token" : "service";
	if (actor != NULL)
		esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	snprintf(details, sizeof(details), "CRL number %lld, %s revoked, valid %ld s%s", number, v_count, validity,
		 force ? ", on demand" : "");
	if ((r = esc_store_exec(ctx, st,
				"INSERT INTO crls (number, der, this_update, next_update, refresh_at, revision, "
				"revoked, made_by) VALUES ($1, $2, to_timestamp($3), to_timestamp($4), "
				"to_timestamp($5), $6, $7, $8)",
				8, v, lens, fmts, NULL)) != ESC_OK ||
	    (r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	esc_log(ctx, ESC_LOG_INFO, "CRL %lld made (%s revoked, valid %ld s)", number, v_count, validity);
done:
	*out = crl;
	crl = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_store_rollback(st);
	OPENSSL_free(der);
	X509_CRL_free(crl);
	return r;
}

static enum esc_err
publish(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
	long validity, int force, X509_CRL **out)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	if (ca_tok == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "CRL: NULL argument");
	do
		r = publish_impl(ctx, st, actor, ca_tok, validity, force, out);
	while (esc_store_retry(ctx, st, &t, &r));
	/* A failed CRL on demand is audited; the service's own attempts (at a client's GET) are only logged. */
	if (r != ESC_OK && actor != NULL)
		esc_audit_outcome_by(ctx, st, actor, "cert.crl", "crl", r);
	else if (r != ESC_OK && force)
		esc_audit_outcome(ctx, st, "ca-token", "service", "cert.crl", "crl", r);
	return r;
}

enum esc_err
esc_crl_build(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, int days, X509_CRL **out)
{
	if (days < 1 || days > 366)
		return esc_error(ctx, ESC_ERR_USAGE, "a CRL is valid for 1..366 days");
	return publish(ctx, st, NULL, ca_tok, days * 86400L, 1, out);
}

enum esc_err
esc_crl_build_by(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
		 int days, X509_CRL **out)
{
	enum esc_err r;

	if (actor == NULL ||
	    (!esc_account_has_role(actor, ESC_ROLE_ADMIN) && !esc_account_has_role(actor, ESC_ROLE_CERT_MANAGER))) {
		r = esc_error(
			ctx, ESC_ERR_DENIED,
			"account '%s' is neither an administrator nor a certificate manager: it cannot have a CRL "
			"signed",
			actor ? esc_account_name(actor) : "unknown");
		esc_audit_outcome_by(ctx, st, actor, "cert.crl", "crl", r);
		return r;
	}
	if (days < 1 || days > 366)
		return esc_error(ctx, ESC_ERR_USAGE, "a CRL is valid for 1..366 days");
	return publish(ctx, st, actor, ca_tok, days * 86400L, 1, out);
}

enum esc_err
esc_crl_refresh(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, X509_CRL **out)
{
	return publish(ctx, st, NULL, ca_tok, esc_ctx_publication(ctx)->crl_validity, 0, out);
}

int
esc_crl_default_days(const struct esc_ctx *ctx)
{
	long d = esc_ctx_publication(ctx)->crl_validity / 86400;

	return d < 1 ? 1 : d > 366 ? 366 : (int)d;
}
