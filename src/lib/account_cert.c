/*
 * TLS client certificates bound to accounts (auth.h, docs/accounts.md
 * "Client certificates").
 *
 * A binding is the SHA-256 of one certificate's DER encoding: the very
 * certificate an administrator bound logs its account in, not another one
 * with the same subject or serial from the same CA.  The chain was verified
 * by the TLS handshake (p11escrowd: this CA or account_cert_ca); here the
 * certificate's own fitness (validity now, key usage), its binding, its
 * account's state and its revocation are checked, at every login.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/ca.h>

#include "auth_internal.h"
#include "internal.h"
#include "store_internal.h"

#define CERT_LOGIN_FAILED "authentication failed: the client certificate does not log in any account"
#define CRL_FILE_MAX 256 /* CRLs in account_cert_crl */

int
esc_cert_sha256_parse(const char *text, char out[ESC_CERT_SHA256_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0, i;
	const char *p;

	if (text == NULL)
		return -1;
	if (strncasecmp(text, "SHA256:", 7) == 0)
		text += 7;
	if (strlen(text) > 3 * ESC_CERT_SHA256_HEX)
		return -1;
	for (i = 0; text[i] != '\0'; i++) {
		char c = text[i];

		if (c == ':')
			continue;
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if ((p = strchr(hex, c)) == NULL || c == '\0' || n >= ESC_CERT_SHA256_HEX)
			return -1;
		out[n++] = *p;
	}
	if (n != ESC_CERT_SHA256_HEX)
		return -1;
	out[n] = '\0';
	return 0;
}

int
esc_cert_sha256_hex(X509 *cert, char out[ESC_CERT_SHA256_HEX + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0, i;

	if (cert == NULL || X509_digest(cert, EVP_sha256(), md, &len) != 1 || len * 2 != ESC_CERT_SHA256_HEX)
		return -1;
	for (i = 0; i < len; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	return 0;
}

enum esc_err
esc_account_cert_usable(struct esc_ctx *ctx, X509 *cert)
{
	uint32_t flags;

	if (cert == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_cert_usable: NULL argument");
	flags = X509_get_extension_flags(cert); /* also caches the extensions; EXFLAG_INVALID for broken ones */
	if (flags & EXFLAG_INVALID)
		return esc_error(ctx, ESC_ERR_AUTH, "the certificate has malformed extensions");
	if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0)
		return esc_error(ctx, ESC_ERR_AUTH, "the certificate is not valid yet");
	if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0)
		return esc_error(ctx, ESC_ERR_AUTH, "the certificate has expired");
	if (X509_check_ca(cert) != 0)
		return esc_error(ctx, ESC_ERR_AUTH, "the certificate is a CA certificate");
	if (!(flags & EXFLAG_KUSAGE) || !(X509_get_key_usage(cert) & KU_DIGITAL_SIGNATURE))
		return esc_error(ctx, ESC_ERR_AUTH, "the certificate's keyUsage lacks digitalSignature");
	if ((flags & EXFLAG_XKUSAGE) && !(X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT))
		return esc_error(ctx, ESC_ERR_AUTH, "the certificate's extendedKeyUsage lacks clientAuth");
	return ESC_OK;
}

/* ---- CRLs of the enterprise CAs ---------------------------------------------------------------------------- */

enum esc_err
esc_account_cert_crls_load(struct esc_ctx *ctx, const char *crl_path, const char *ca_path, STACK_OF(X509_CRL) **out)
{
	STACK_OF(X509_CRL) *crls = NULL;
	STACK_OF(X509) *cas = NULL;
	X509_CRL *crl = NULL;
	X509 *x = NULL;
	BIO *b = NULL;
	enum esc_err r;
	int i, ok;

	if (crl_path == NULL || ca_path == NULL || *ca_path == '\0' || out == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "account_cert_crl needs account_cert_ca (the CRLs' issuers)");
	if ((crls = sk_X509_CRL_new_null()) == NULL || (cas = sk_X509_new_null()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((b = BIO_new_file(ca_path, "r")) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_IO, "cannot read account_cert_ca '%s'", ca_path);
		goto out;
	}
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(cas, x)) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		x = NULL;
	}
	ERR_clear_error();
	BIO_free(b);
	if ((b = BIO_new_file(crl_path, "r")) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_IO, "cannot read account_cert_crl '%s'", crl_path);
		goto out;
	}
	while ((crl = PEM_read_bio_X509_CRL(b, NULL, NULL, NULL)) != NULL) {
		char *issuer = esc_name_to_string(X509_CRL_get_issuer(crl));

		for (i = 0, ok = 0; !ok && i < sk_X509_num(cas); i++) {
			X509 *ca = sk_X509_value(cas, i);

			ok = X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) == 0 &&
			     X509_CRL_verify(crl, X509_get0_pubkey(ca)) == 1;
		}
		ERR_clear_error();
		if (!ok) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT,
				      "account_cert_crl '%s': the CRL of '%.200s' is not signed by a certificate of "
				      "account_cert_ca",
				      crl_path, issuer != NULL ? issuer : "?");
			free(issuer);
			goto out;
		}
		if (sk_X509_CRL_num(crls) >= CRL_FILE_MAX) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "account_cert_crl '%s' holds more than %d CRLs", crl_path,
				      CRL_FILE_MAX);
			free(issuer);
			goto out;
		}
		free(issuer);
		if (X509_CRL_get0_nextUpdate(crl) == NULL) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "account_cert_crl '%s': a CRL without nextUpdate",
				      crl_path);
			goto out;
		}
		if (!sk_X509_CRL_push(crls, crl)) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		crl = NULL;
	}
	ERR_clear_error();
	if (sk_X509_CRL_num(crls) == 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "account_cert_crl '%s' holds no PEM CRL", crl_path);
		goto out;
	}
	*out = crls;
	crls = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_CRL_free(crl);
	X509_free(x);
	BIO_free(b);
	sk_X509_pop_free(cas, X509_free);
	sk_X509_CRL_pop_free(crls, X509_CRL_free);
	return r;
}

/*
 * cert against the CRLs of its issuer (name) in crls: 0 current and not
 * listing it, else -1 with why.  No current CRL of its issuer: -1 (when
 * CRLs are configured, an enterprise certificate is never taken unchecked).
 */
static int
crl_check(const STACK_OF(X509_CRL) *crls, X509 *cert, const char **why)
{
	X509_REVOKED *rev = NULL;
	int i, current = 0;

	for (i = 0; i < sk_X509_CRL_num(crls); i++) {
		X509_CRL *crl = sk_X509_CRL_value(crls, i);

		if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_issuer_name(cert)) != 0)
			continue;
		if (X509_CRL_get0_by_cert(crl, &rev, cert) == 1) {
			*why = "revoked (account_cert_crl)";
			return -1;
		}
		if (X509_cmp_current_time(X509_CRL_get0_lastUpdate(crl)) < 0 &&
		    X509_cmp_current_time(X509_CRL_get0_nextUpdate(crl)) > 0)
			current = 1;
	}
	if (!current) {
		*why = "no current CRL of its issuer in account_cert_crl";
		return -1;
	}
	return 0;
}

/* ---- Login ------------------------------------------------------------------------------------------------- */

enum esc_err
esc_account_cert_login(struct esc_ctx *ctx, struct esc_store *st, X509 *cert, const STACK_OF(X509_CRL) *crls,
		       unsigned flags, struct esc_account **out)
{
	struct esc_account *a = NULL;
	PGresult *res = NULL;
	X509 *ca = NULL;
	char fp[ESC_CERT_SHA256_HEX + 1], details[ESC_ERRMSG_MAX], roles[64] = "unknown", who[72] = "unknown";
	const char *v[1] = {fp}, *why = NULL;
	struct esc_audit_event ev = {who, roles, "auth.login", who, "refused", details};
	enum esc_err r;

	if (st == NULL || cert == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_cert_login: NULL argument");
	if (esc_cert_sha256_hex(cert, fp) != 0)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the client certificate");
	if ((r = esc_account_cert_usable(ctx, cert)) != ESC_OK) {
		if (r != ESC_ERR_AUTH)
			return r;
		snprintf(details, sizeof(details), "client certificate SHA256:%s: %s", fp, esc_ctx_errmsg(ctx));
		goto refuse;
	}
	/* The binding, the account as it is now, and the revocations table: one read. */
	if ((r = esc_store_exec(ctx, st,
				"SELECT a.id, a.name, a.roles, coalesce(a.kra_id, 0), a.disabled, "
				"EXISTS (SELECT 1 FROM revocations v WHERE v.issuer = c.issuer AND "
				"ltrim(v.serial, '0') = ltrim(c.serial, '0')) "
				"FROM account_certs c JOIN accounts a ON a.id = c.account_id WHERE c.sha256 = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		snprintf(details, sizeof(details), "client certificate SHA256:%s: bound to no account", fp);
		goto refuse;
	}
	snprintf(who, sizeof(who), "%.64s", PQgetvalue(res, 0, 1));
	snprintf(roles, sizeof(roles), "%.60s", PQgetvalue(res, 0, 2));
	if (strcmp(PQgetvalue(res, 0, 4), "t") == 0)
		why = "the account is disabled";
	else if (strcmp(PQgetvalue(res, 0, 5), "t") == 0)
		why = "revoked";
	else if (crls != NULL) {
		/* Enterprise certificates only: this CA's revocations are its table's. */
		if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK && r != ESC_ERR_STATE)
			goto out;
		if (ca == NULL || !esc_cert_issued_by(cert, ca))
			(void)crl_check(crls, cert, &why);
		ERR_clear_error();
	}
	if (why != NULL) {
		snprintf(details, sizeof(details), "client certificate SHA256:%s: %s", fp, why);
		goto refuse;
	}
	if ((r = esc_account_make(ctx, strtoll(PQgetvalue(res, 0, 0), NULL, 10), PQgetvalue(res, 0, 1),
				  PQgetvalue(res, 0, 2), strtoll(PQgetvalue(res, 0, 3), NULL, 10), &a)) != ESC_OK)
		goto out;
	esc_account_set_cert(a, fp);
	if (flags & ESC_CERT_LOGIN_AUDIT_OK) {
		esc_roles_format(esc_account_roles(a), roles, sizeof(roles));
		snprintf(details, sizeof(details), "client certificate SHA256:%s", fp);
		ev.outcome = "ok";
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	*out = a;
	a = NULL; /* transferred */
	r = ESC_OK;
	goto out;
refuse:
	/* The reason goes to the audit trail; the client learns only that it failed. */
	if (esc_audit_append(ctx, st, &ev) != ESC_OK)
		esc_log(ctx, ESC_LOG_ERROR, "could not write the audit event auth.login: %s", esc_ctx_errmsg(ctx));
	r = esc_error(ctx, ESC_ERR_AUTH, CERT_LOGIN_FAILED);
out:
	X509_free(ca);
	PQclear(res);
	esc_account_free(a);
	return r;
}

/* ---- Binding ----------------------------------------------------------------------------------------------- */

/* Verify cert's chain to this CA or a certificate of ca_path, for TLS client use, now. */
static enum esc_err
verify_chain(struct esc_ctx *ctx, struct esc_store *st, X509 *cert, STACK_OF(X509) *untrusted, const char *ca_path)
{
	X509_STORE *store = NULL;
	X509_STORE_CTX *vctx = NULL;
	X509 *ca = NULL;
	enum esc_err r;
	int err;

	if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK)
		return r;
	if ((store = X509_STORE_new()) == NULL || (vctx = X509_STORE_CTX_new()) == NULL ||
	    X509_STORE_add_cert(store, ca) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_NOMEM, "cannot set up certificate verification");
		goto out;
	}
	if (ca_path != NULL && *ca_path != '\0' && X509_STORE_load_file(store, ca_path) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_IO, "cannot read account_cert_ca '%s'", ca_path);
		goto out;
	}
	/* Every certificate of the bundle is a trust anchor, as in p11escrowd's TLS. */
	X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
	if (X509_STORE_CTX_init(vctx, store, cert, untrusted) != 1 ||
	    X509_STORE_CTX_set_purpose(vctx, X509_PURPOSE_SSL_CLIENT) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot set up certificate verification");
		goto out;
	}
	if (X509_verify_cert(vctx) != 1) {
		err = X509_STORE_CTX_get_error(vctx);
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_USAGE, "the certificate does not verify against this CA%s: %s",
			      ca_path != NULL && *ca_path != '\0' ? " or account_cert_ca"
								  : " (account_cert_ca is not set)",
			      X509_verify_cert_error_string(err));
		goto out;
	}
	r = ESC_OK;
out:
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(store);
	X509_free(ca);
	return r;
}

struct cert_row {
	char fp[ESC_CERT_SHA256_HEX + 1];
	char *subject, *issuer, *serial, *der_hex;
	char not_after[32];
};

static enum esc_err
add_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	 const struct cert_row *c)
{
	PGresult *res = NULL;
	char id[24], roles[64], details[640];
	const char *v[8];
	struct esc_audit_event ev = {esc_account_name(actor), roles, "account.cert-add", name, "ok", details};
	enum esc_err r;

	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_account_recheck_admin(ctx, st, actor)) != ESC_OK)
		goto out;
	v[0] = name;
	if ((r = esc_store_exec(ctx, st, "SELECT id FROM accounts WHERE name = $1 FOR UPDATE", 1, v, NULL, NULL,
				&res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	res = NULL;
	v[0] = c->issuer;
	v[1] = c->serial;
	if ((r = esc_store_exec(ctx, st,
				"SELECT 1 FROM revocations WHERE issuer = $1 AND ltrim(serial, '0') = ltrim($2, '0')",
				2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) > 0) {
		r = esc_error(ctx, ESC_ERR_USAGE, "the certificate (serial %.64s) is revoked", c->serial);
		goto out;
	}
	PQclear(res);
	res = NULL;
	v[0] = id;
	v[1] = c->fp;
	v[2] = c->issuer;
	v[3] = c->serial;
	v[4] = c->subject;
	v[5] = c->not_after;
	v[6] = c->der_hex;
	v[7] = esc_account_name(actor);
	if ((r = esc_store_exec(
		     ctx, st,
		     "INSERT INTO account_certs (account_id, sha256, issuer, serial, subject, not_after, der, "
		     "added_by) VALUES ($1::bigint, $2, $3, $4, $5, $6::timestamptz, decode($7, 'hex'), $8) "
		     "ON CONFLICT (sha256) DO NOTHING RETURNING id",
		     8, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		PQclear(res);
		res = NULL;
		v[0] = c->fp;
		if ((r = esc_store_exec(ctx, st,
					"SELECT a.name FROM account_certs c JOIN accounts a ON a.id = c.account_id "
					"WHERE c.sha256 = $1",
					1, v, NULL, NULL, &res)) != ESC_OK)
			goto out;
		r = esc_error(ctx, ESC_ERR_EXISTS, "certificate SHA256:%s is already bound to account '%.64s'", c->fp,
			      PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "?");
		goto out;
	}
	snprintf(details, sizeof(details), "SHA256:%s; serial %.64s; issuer %.180s; subject %.180s", c->fp, c->serial,
		 c->issuer, c->subject);
	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_account_cert_add(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
		     X509 *cert, STACK_OF(X509) *untrusted, const char *ca_path, char sha256[ESC_CERT_SHA256_HEX + 1])
{
	struct esc_store_retry t = {0};
	struct cert_row c = {0};
	unsigned char *der = NULL;
	char object[80];
	struct tm tm;
	enum esc_err r;
	int len, i;

	if (st == NULL || name == NULL || cert == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_cert_add: NULL argument");
	snprintf(object, sizeof(object), "%.64s", name);
	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		goto out;
	if (esc_cert_sha256_hex(cert, c.fp) != 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the certificate");
		goto out;
	}
	if ((r = esc_account_cert_usable(ctx, cert)) != ESC_OK) {
		char why[160]; /* the message is rewritten from itself: copy it first */

		snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
		r = esc_error(ctx, ESC_ERR_USAGE, "certificate SHA256:%s cannot log in: %s", c.fp, why);
		goto out;
	}
	if ((r = verify_chain(ctx, st, cert, untrusted, ca_path)) != ESC_OK)
		goto out;
	c.subject = esc_name_to_string(X509_get_subject_name(cert));
	c.issuer = esc_name_to_string(X509_get_issuer_name(cert));
	c.serial = esc_cert_serial_hex(cert);
	if ((len = i2d_X509(cert, &der)) <= 0 || c.subject == NULL || c.issuer == NULL || c.serial == NULL ||
	    (c.der_hex = malloc(2 * (size_t)len + 1)) == NULL || !ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm)) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < len; i++)
		snprintf(c.der_hex + 2 * i, 3, "%02x", der[i]);
	strftime(c.not_after, sizeof(c.not_after), "%Y-%m-%d %H:%M:%S+00", &tm);
	do
		r = add_impl(ctx, st, actor, object, &c);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r == ESC_OK && sha256 != NULL)
		memcpy(sha256, c.fp, sizeof(c.fp));
out:
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "account.cert-add", object, r);
	OPENSSL_free(der);
	free(c.subject);
	free(c.issuer);
	free(c.serial);
	free(c.der_hex);
	return r;
}

static enum esc_err
remove_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	    const char *fp)
{
	PGresult *res = NULL;
	char roles[64], details[256];
	const char *v[2] = {name, fp};
	struct esc_audit_event ev = {esc_account_name(actor), roles, "account.cert-remove", name, "ok", details};
	enum esc_err r;

	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_account_recheck_admin(ctx, st, actor)) != ESC_OK)
		goto out;
	if ((r = esc_store_exec(
		     ctx, st,
		     "DELETE FROM account_certs c USING accounts a WHERE a.id = c.account_id AND a.name = $1 "
		     "AND c.sha256 = $2 RETURNING c.serial",
		     2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no certificate SHA256:%s is bound to account '%.64s'", fp, name);
		goto out;
	}
	PQclear(res);
	res = NULL;
	v[0] = fp;
	if ((r = esc_store_exec(ctx, st,
				"UPDATE sessions SET ended_at = now(), end_reason = 'certificate removed' "
				"WHERE cert_sha256 = $1 AND ended_at IS NULL",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	snprintf(details, sizeof(details), "SHA256:%s; %s session(s) ended", fp, PQcmdTuples(res));
	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_account_cert_remove(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
			const char *sha256)
{
	struct esc_store_retry t = {0};
	char fp[ESC_CERT_SHA256_HEX + 1], object[80];
	enum esc_err r;

	if (st == NULL || name == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_cert_remove: NULL argument");
	snprintf(object, sizeof(object), "%.64s", name);
	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		goto out;
	if (esc_cert_sha256_parse(sha256, fp) != 0) {
		r = esc_error(ctx, ESC_ERR_USAGE,
			      "--sha256 wants the certificate's SHA-256 fingerprint (64 hex digits)");
		goto out;
	}
	do
		r = remove_impl(ctx, st, actor, object, fp);
	while (esc_store_retry(ctx, st, &t, &r));
out:
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "account.cert-remove", object, r);
	return r;
}

enum esc_err
esc_account_cert_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
		      struct esc_account_cert **out, size_t *n)
{
	struct esc_account_cert *items = NULL;
	PGresult *res = NULL;
	const char *v[1] = {name};
	enum esc_err r;
	size_t count = 0;
	int i, rows;

	if (st == NULL || name == NULL || out == NULL || n == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_account_cert_list: NULL argument");
	if (actor == NULL ||
	    (!esc_account_has_role(actor, ESC_ROLE_ADMIN) && strcmp(esc_account_name(actor), name) != 0))
		return esc_error(ctx, ESC_ERR_DENIED,
				 "only an administrator or the account itself lists its certificates");
	if ((r = esc_store_exec(ctx, st,
				"SELECT c.sha256, c.subject, c.issuer, c.serial, "
				"to_char(c.not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), "
				"to_char(c.added_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), c.added_by "
				"FROM accounts a LEFT JOIN account_certs c ON c.account_id = a.id WHERE a.name = $1 "
				"ORDER BY c.added_at, c.id",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if ((rows = PQntuples(res)) == 0) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no account named '%.64s'", name);
		goto out;
	}
	if ((items = calloc((size_t)rows + 1, sizeof(*items))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		struct esc_account_cert *c = &items[count];

		if (PQgetisnull(res, i, 0))
			continue; /* the account without certificates */
		snprintf(c->sha256, sizeof(c->sha256), "%s", PQgetvalue(res, i, 0));
		snprintf(c->subject, sizeof(c->subject), "%s", PQgetvalue(res, i, 1));
		snprintf(c->issuer, sizeof(c->issuer), "%s", PQgetvalue(res, i, 2));
		snprintf(c->serial, sizeof(c->serial), "%s", PQgetvalue(res, i, 3));
		snprintf(c->not_after, sizeof(c->not_after), "%s", PQgetvalue(res, i, 4));
		snprintf(c->added_at, sizeof(c->added_at), "%s", PQgetvalue(res, i, 5));
		snprintf(c->added_by, sizeof(c->added_by), "%s", PQgetvalue(res, i, 6));
		count++;
	}
	*out = items;
	*n = count;
	items = NULL; /* transferred */
	r = ESC_OK;
out:
	free(items);
	PQclear(res);
	return r;
}
