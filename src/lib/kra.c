/*
 * Key Recovery Agents: enrollment on a card, listing, retirement.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/kra.h>

#include "internal.h"
#include "store_internal.h"

static int
valid_name(const char *name)
{
	size_t i, n = strlen(name);

	if (n == 0 || n > 64)
		return 0;
	for (i = 0; i < n; i++)
		if (!((name[i] >= 'A' && name[i] <= 'Z') || (name[i] >= 'a' && name[i] <= 'z') ||
		      (name[i] >= '0' && name[i] <= '9') || name[i] == '.' || name[i] == '_' || name[i] == '-'))
			return 0;
	return 1;
}

/* KRA certificate subject: the CA's name without its CN, OU=Key Recovery Agents, CN=name. */
static enum esc_err
kra_subject(struct esc_ctx *ctx, X509 *ca, const char *name, X509_NAME **out)
{
	const X509_NAME *caname = X509_get_subject_name(ca);
	X509_NAME *n = X509_NAME_new();
	int i;

	if (n == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	for (i = 0; i < X509_NAME_entry_count(caname); i++) {
		const X509_NAME_ENTRY *e = X509_NAME_get_entry(caname, i);

		if (OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)) == NID_commonName)
			continue;
		if (!X509_NAME_add_entry(n, e, -1, 0))
			goto fail;
	}
	if (!X509_NAME_add_entry_by_txt(n, "OU", MBSTRING_UTF8, (const unsigned char *)"Key Recovery Agents", -1, -1,
					0) ||
	    !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1, 0))
		goto fail;
	*out = n;
	return ESC_OK;
fail:
	X509_NAME_free(n);
	return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the KRA certificate's name");
}

static enum esc_err
register_kra(struct esc_ctx *ctx, struct esc_store *st, const char *name, X509 *cert, const char *key_type,
	     const char *recipient, struct esc_token *tok, const char *uri)
{
	char *serial = esc_cert_serial_hex(cert), fp[ESC_FINGERPRINT_MAX];
	unsigned char *der = NULL;
	const char *v[9];
	int len[9] = {0}, fmt[9] = {0}, dlen;
	enum esc_err r;

	esc_cert_fingerprint(cert, fp);
	if (serial == NULL || (dlen = i2d_X509(cert, &der)) <= 0) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	v[0] = name;
	v[1] = (const char *)der;
	len[1] = dlen;
	fmt[1] = 1;
	v[2] = serial;
	v[3] = fp;
	v[4] = key_type;
	v[5] = recipient;
	v[6] = esc_token_label(tok);
	v[7] = esc_token_serial(tok);
	v[8] = uri;
	r = esc_store_exec(ctx, st,
			   "INSERT INTO kras (name, state, certificate, cert_serial, cert_sha256, key_type, recipient, "
			   "token_label, token_serial, key_uri) VALUES ($1, 'active', $2, $3, $4, $5, $6, $7, $8, $9)",
			   9, v, len, fmt, NULL);
out:
	OPENSSL_free(der);
	free(serial);
	return r;
}

static enum esc_err
enroll_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
	    struct esc_token *kra_tok, const char *name, enum esc_key_type type, int days, struct esc_kra *out)
{
	PGresult *res = NULL;
	X509 *ca = NULL, *cert = NULL;
	X509_NAME *subject = NULL;
	struct esc_token_key *ca_key = NULL, *key = NULL;
	EVP_PKEY *signer = NULL, *pub = NULL;
	char *uri = NULL, label[160] = "", ca_uri[1024];
	const char *recipient;
	const char *v[1] = {name};
	int sha256 = 0, generated = 0;
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		return r;
	if (!valid_name(name))
		return esc_error(ctx, ESC_ERR_USAGE, "a KRA name is 1..64 letters, digits, '.', '_' or '-'");
	if (type != ESC_KEY_RSA3072 && type != ESC_KEY_RSA4096 && type != ESC_KEY_EC_P256 && type != ESC_KEY_EC_P384)
		return esc_error(ctx, ESC_ERR_USAGE, "unsupported KRA key type");
	/* Everything that can be checked without changing anything, first. */
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(ctx, st, "SELECT 1 FROM kras WHERE name = $1", 1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) > 0) {
		PQclear(res);
		return esc_error(ctx, ESC_ERR_EXISTS, "a KRA named '%s' is already enrolled", name);
	}
	PQclear(res);
	res = NULL;
	/* One card, one active KRA: a second key would only confuse whoever holds it. */
	{
		const char *c[2] = {esc_token_label(kra_tok), esc_token_serial(kra_tok)};

		if ((r = esc_store_exec(ctx, st,
					"SELECT name FROM kras WHERE token_label = $1 AND token_serial = $2 AND state = "
					"'active'",
					2, c, NULL, NULL, &res)) != ESC_OK)
			goto out;
		if (PQntuples(res) > 0) {
			r = esc_error(ctx, ESC_ERR_EXISTS, "card '%s' (serial %s) is already enrolled as KRA '%s'",
				      c[0], c[1], PQgetvalue(res, 0, 0));
			goto out;
		}
		PQclear(res);
		res = NULL;
	}
	if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK)
		goto out;
	if ((r = esc_store_exec(ctx, st, "SELECT uri FROM token_keys WHERE role = 'ca-sign'", 0, NULL, NULL, NULL,
				&res)) !=
		    ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_STATE, "the CA signing key is not registered");
		goto out;
	}
	snprintf(ca_uri, sizeof(ca_uri), "%s", PQgetvalue(res, 0, 0));
	if ((r = esc_token_find_key(ctx, ca_tok, ca_uri, &ca_key)) != ESC_OK ||
	    (r = esc_token_key_private(ctx, ca_tok, ca_key, &signer)) != ESC_OK ||
	    (r = esc_token_require_key_mechanisms(ctx, kra_tok, type, ESC_KEY_USE_DECRYPT)) != ESC_OK ||
	    (r = kra_subject(ctx, ca, name, &subject)) != ESC_OK)
		goto out;
	snprintf(label, sizeof(label), "p11escrow KRA %s", name);
	if ((r = esc_token_generate_key(ctx, kra_tok, type, ESC_KEY_USE_DECRYPT, label, &key)) != ESC_OK)
		goto out;
	generated = 1;
	if ((r = esc_token_key_public(ctx, kra_tok, key, &pub)) != ESC_OK)
		goto out;
	if (EVP_PKEY_is_a(pub, "RSA")) {
		if ((r = esc_token_probe_oaep_sha256(ctx, kra_tok, key, pub, &sha256)) != ESC_OK)
			goto out;
		recipient = sha256 ? "rsa-oaep-sha256" : "rsa-oaep-sha1";
	} else {
		recipient = "ecdh";
	}
	if ((r = esc_ca_issue(ctx, ca, signer, pub, subject, days, ESC_PROFILE_KRA, &cert)) != ESC_OK ||
	    (r = esc_token_key_uri(ctx, kra_tok, key, &uri)) != ESC_OK ||
	    (r = esc_token_store_cert(ctx, kra_tok, key, cert)) != ESC_OK ||
	    (r = esc_store_begin(ctx, st)) != ESC_OK ||
	    (r = register_kra(ctx, st, name, cert, esc_token_key_type_name(key), recipient, kra_tok, uri)) != ESC_OK)
		goto out;
	{
		char roles[64], details[256];
		struct esc_audit_event ev = {esc_account_name(actor), roles, "kra.enroll", name, "ok", details};

		esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
		snprintf(details, sizeof(details), "card '%s' serial %s, %s key, recipient %s",
			 esc_token_label(kra_tok), esc_token_serial(kra_tok), esc_token_key_type_name(key), recipient);
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	if (out != NULL) {
		memset(out, 0, sizeof(*out));
		snprintf(out->name, sizeof(out->name), "%s", name);
		snprintf(out->state, sizeof(out->state), "active");
		snprintf(out->key_type, sizeof(out->key_type), "%s", esc_token_key_type_name(key));
		snprintf(out->recipient, sizeof(out->recipient), "%s", recipient);
		snprintf(out->token_label, sizeof(out->token_label), "%s", esc_token_label(kra_tok));
		snprintf(out->token_serial, sizeof(out->token_serial), "%s", esc_token_serial(kra_tok));
		snprintf(out->key_uri, sizeof(out->key_uri), "%s", uri);
		{
			char *s = esc_cert_serial_hex(cert);

			snprintf(out->cert_serial, sizeof(out->cert_serial), "%s", s ? s : "");
			free(s);
		}
	}
	generated = 0; /* keep the key: the KRA is registered */
	r = ESC_OK;
out:
	esc_store_rollback(st);
	/* Undo: a key whose KRA was not registered must not stay on the card. */
	if (generated && esc_token_destroy_key(NULL, kra_tok, key) != ESC_OK)
		esc_log(ctx, ESC_LOG_ERROR, "could not remove the generated key '%s' from card '%s'", label,
			esc_token_label(kra_tok));
	PQclear(res);
	free(uri);
	X509_free(ca);
	X509_free(cert);
	X509_NAME_free(subject);
	EVP_PKEY_free(signer);
	EVP_PKEY_free(pub);
	esc_token_key_free(ca_key);
	esc_token_key_free(key);
	return r;
}

enum esc_err
esc_kra_enroll(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
	       struct esc_token *kra_tok, const char *name, enum esc_key_type type, int days, struct esc_kra *out)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	/* A retry generates the card's key afresh: a failed attempt removed its own. */
	do
		r = enroll_impl(ctx, st, actor, ca_tok, kra_tok, name, type, days, out);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "kra.enroll", name, r);
	return r;
}

enum esc_err
esc_kra_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_kra **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_kra *k = NULL;
	enum esc_err r;
	int i, rows;

	if ((r = esc_store_exec(ctx, st,
				"SELECT k.id, k.name, k.state, k.key_type, k.recipient, k.cert_serial, k.token_label, "
				"k.token_serial, k.key_uri, (SELECT count(*) FROM archive_record_kras a WHERE a.kra_id = "
				"k.id) FROM kras k ORDER BY k.id",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if ((k = calloc((size_t)rows + 1, sizeof(*k))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		k[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		snprintf(k[i].name, sizeof(k[i].name), "%s", PQgetvalue(res, i, 1));
		snprintf(k[i].state, sizeof(k[i].state), "%s", PQgetvalue(res, i, 2));
		snprintf(k[i].key_type, sizeof(k[i].key_type), "%s", PQgetvalue(res, i, 3));
		snprintf(k[i].recipient, sizeof(k[i].recipient), "%s", PQgetvalue(res, i, 4));
		snprintf(k[i].cert_serial, sizeof(k[i].cert_serial), "%s", PQgetvalue(res, i, 5));
		snprintf(k[i].token_label, sizeof(k[i].token_label), "%s", PQgetvalue(res, i, 6));
		snprintf(k[i].token_serial, sizeof(k[i].token_serial), "%s", PQgetvalue(res, i, 7));
		snprintf(k[i].key_uri, sizeof(k[i].key_uri), "%s", PQgetvalue(res, i, 8));
		k[i].records = strtoll(PQgetvalue(res, i, 9), NULL, 10);
	}
	*out = k;
	*n = (size_t)rows;
	k = NULL; /* transferred */
	r = ESC_OK;
out:
	free(k);
	PQclear(res);
	return r;
}

static enum esc_err
retire_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name)
{
	PGresult *res = NULL;
	const char *v[1] = {name};
	char ids[200] = "";
	enum esc_err r;
	int i, n;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		return r;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	/*
	 * Before this transaction's snapshot is taken (LOCK takes none): wait
	 * for every archival that chose KRAs (FOR SHARE) to commit, and keep
	 * new ones from choosing until we do.  Enrollment archives in READ
	 * COMMITTED transactions, which serializable checking does not cover,
	 * so the record-orphan check below must see all of them.
	 */
	if ((r = esc_store_exec(ctx, st, "LOCK TABLE kras IN EXCLUSIVE MODE", 0, NULL, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	/* Lock the KRA row so no archival adds it to a set while we decide. */
	if ((r = esc_store_exec(ctx, st, "SELECT id, state FROM kras WHERE name = $1 FOR UPDATE", 1, v, NULL, NULL,
				&res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no KRA named '%s'", name);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "active") != 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "KRA '%s' is already retired", name);
		goto out;
	}
	PQclear(res);
	res = NULL;
	if ((r = esc_store_exec(ctx, st,
				"SELECT a.record_id FROM archive_record_kras a JOIN kras k ON k.id = a.kra_id "
				"WHERE k.name = $1 AND NOT EXISTS (SELECT 1 FROM archive_record_kras o JOIN kras ok ON "
				"ok.id = o.kra_id WHERE o.record_id = a.record_id AND ok.name <> $1 AND ok.state = "
				"'active') ORDER BY a.record_id",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if ((n = PQntuples(res)) > 0) {
		for (i = 0; i < n && i < 3; i++)
			snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), "%s%s", i ? ", " : "", PQgetvalue(res, i, 0));
		r = esc_error(ctx, ESC_ERR_STATE,
			      "retiring KRA '%s' would leave %d record(s) recoverable by no active KRA (%s%s); "
			      "nothing was changed",
			      name, n, ids, n > 3 ? ", ..." : "");
		goto out;
	}
	{
		char roles[64];
		struct esc_audit_event ev = {esc_account_name(actor), roles, "kra.retire", name, "ok",
					     "no new record is wrapped to this KRA"};

		esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
		if ((r = esc_store_exec(ctx, st, "UPDATE kras SET state = 'retired', retired_at = now() WHERE name = $1",
					1, v, NULL, NULL, NULL)) != ESC_OK ||
		    (r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	r = ESC_OK;
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_kra_retire(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = retire_impl(ctx, st, actor, name);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "kra.retire", name, r);
	return r;
}
