/*
 * Revocation: the revocations table and CRLs signed on the CA token.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	return esc_crl_build(ctx, st, ca_tok, days, out);
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

enum esc_err
esc_crl_build(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, int days, X509_CRL **out)
{
	PGresult *res = NULL;
	X509 *ca = NULL;
	X509_CRL *crl = NULL;
	struct esc_token_key *key = NULL;
	EVP_PKEY *signer = NULL;
	ASN1_TIME *now = NULL, *next = NULL;
	ASN1_INTEGER *number = NULL;
	X509V3_CTX v3;
	X509_EXTENSION *aki = NULL;
	char *uri = NULL;
	enum esc_err r;
	int i;

	if (days < 1 || days > 366)
		return esc_error(ctx, ESC_ERR_USAGE, "a CRL is valid for 1..366 days");
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
	/* Times in the form ASN1_TIME_set_string_X509 takes: YYYYMMDDHHMMSSZ. */
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT r.serial, to_char(r.revoked_at AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') || 'Z', "
		     "r.reason, n.num FROM (SELECT nextval('crl_number') AS num) n LEFT JOIN revocations r ON "
		     "r.own ORDER BY r.revoked_at",
		     0, NULL, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if ((crl = X509_CRL_new()) == NULL || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) || (now = X509_gmtime_adj(NULL, 0)) == NULL ||
	    (next = X509_time_adj_ex(NULL, days, 0, NULL)) == NULL || !X509_CRL_set1_lastUpdate(crl, now) ||
	    !X509_CRL_set1_nextUpdate(crl, next) || (number = ASN1_INTEGER_new()) == NULL ||
	    !ASN1_INTEGER_set_int64(number, strtoll(PQgetvalue(res, 0, 3), NULL, 10)) ||
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
	*out = crl;
	crl = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(number);
	ASN1_TIME_free(now);
	ASN1_TIME_free(next);
	X509_CRL_free(crl);
	EVP_PKEY_free(signer);
	esc_token_key_free(key);
	X509_free(ca);
	free(uri);
	PQclear(res);
	return r;
}
