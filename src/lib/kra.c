/*
 * Key Recovery Agents: enrollment of a key generated on a card or adopted
 * from it (locally, or through the service with proof of possession), the
 * card's probe and the KRA key policy, listing, retirement.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/envelope.h>
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

/* A KRA key type: RSA (*rsa = 1) of *bits, or EC on a curve of *bits.  0 if it is none p11escrow takes. */
static int
kra_key_size(const char *type, int *rsa, int *bits)
{
	static const struct {
		const char *name;
		int rsa, bits;
	} types[] = {
		{"rsa2048", 1, 2048}, {"rsa3072", 1, 3072}, {"rsa4096", 1, 4096},
		{"ec-p256", 0, 256},  {"ec-p384", 0, 384},
	};
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(types); i++)
		if (strcmp(type, types[i].name) == 0) {
			*rsa = types[i].rsa;
			*bits = types[i].bits;
			return 1;
		}
	return 0;
}

enum esc_err
esc_kra_choose_recipient(struct esc_ctx *ctx, const char *card, const struct esc_token_decrypt_probe *p,
			 int allow_pkcs1v15, const char **recipient, char *why, size_t whylen)
{
	if (!p->rsa) {
		if (!p->ecdh && !p->ecdh_cofactor)
			return esc_error(ctx, ESC_ERR_MECHANISM,
					 "card '%s' lists neither CKM_ECDH1_DERIVE nor CKM_ECDH1_COFACTOR_DERIVE for "
					 "derive: an EC KRA key needs ECDH",
					 card);
		snprintf(why, whylen, "EC key; the card derives with %s",
			 p->ecdh && p->ecdh_cofactor ? "CKM_ECDH1_DERIVE and CKM_ECDH1_COFACTOR_DERIVE"
			 : p->ecdh		     ? "CKM_ECDH1_DERIVE"
						     : "CKM_ECDH1_COFACTOR_DERIVE (the same on P-256 and P-384)");
		*recipient = "ecdh";
		return ESC_OK;
	}
	/* OAEP envelopes are opened on cards as raw RSA (see kra.h): no OAEP form without it. */
	if (p->raw) {
		if (p->oaep_sha256)
			snprintf(why, whylen,
				 "the card decrypted RSA-OAEP with SHA-256 (CKM_RSA_PKCS_OAEP) and raw RSA "
				 "(CKM_RSA_X_509) probes");
		else if (p->oaep_sha1)
			snprintf(why, whylen,
				 "the card decrypted RSA-OAEP only with SHA-1 (CKM_RSA_PKCS_OAEP), and raw RSA "
				 "(CKM_RSA_X_509) probes: SHA-1, which its own OAEP opens too");
		else
			snprintf(why, whylen,
				 "the card decrypted no RSA-OAEP probe itself, only raw RSA (CKM_RSA_X_509): "
				 "OAEP with SHA-256, its padding checked in software");
		*recipient = p->oaep_sha256 || !p->oaep_sha1 ? "rsa-oaep-sha256" : "rsa-oaep-sha1";
		return ESC_OK;
	}
	if (p->pkcs1 && allow_pkcs1v15) {
		snprintf(why, whylen,
			 "the card decrypted RSA only with PKCS#1 v1.5 (CKM_RSA_PKCS)%s: weaker (Bleichenbacher-style "
			 "oracles), enrolled only where policy kra_allow_rsa_pkcs1v15 is true",
			 p->oaep_sha256 || p->oaep_sha1 ? " and OAEP, but not raw RSA" : "");
		*recipient = "rsa-pkcs1v15";
		return ESC_OK;
	}
	if (p->pkcs1)
		return esc_error(
			ctx, ESC_ERR_POLICY,
			"card '%s' decrypts RSA only with PKCS#1 v1.5 (CKM_RSA_PKCS)%s: refused by policy "
			"kra_allow_rsa_pkcs1v15 (false); an administrator may accept such cards with 'p11escrow "
			"policy set kra_allow_rsa_pkcs1v15 true', which is weaker (docs/threat-model.md)",
			card, p->oaep_sha256 || p->oaep_sha1 ? " and OAEP, but not raw RSA" : "");
	if (p->oaep_sha256 || p->oaep_sha1)
		return esc_error(ctx, ESC_ERR_MECHANISM,
				 "card '%s' decrypts RSA-OAEP itself but not raw RSA (CKM_RSA_X_509), which "
				 "p11escrow's decryption on cards (through libp11) needs",
				 card);
	return esc_error(ctx, ESC_ERR_MECHANISM,
			 "card '%s' decrypted none of the probes with this key (RSA-OAEP SHA-256 and SHA-1, raw RSA, "
			 "PKCS#1 v1.5)",
			 card);
}

/* A policy value read as a whole number; dflt where unset (an older schema). */
static enum esc_err
policy_number(struct esc_ctx *ctx, struct esc_store *st, const char *key, long dflt, long *out)
{
	char *v = NULL, *end;
	enum esc_err r = esc_store_policy(ctx, st, key, &v);

	if (r == ESC_ERR_NOT_FOUND) {
		*out = dflt;
		return ESC_OK;
	}
	if (r != ESC_OK)
		return r;
	if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
		*out = strcmp(v, "true") == 0;
	else if ((*out = strtol(v, &end, 10)) <= 0 || *end != '\0')
		r = esc_error(ctx, ESC_ERR_DB, "policy %s holds '%s', not a number", key, v);
	free(v);
	return r;
}

/*
 * The KRA key policy: key_type at least kra_min_rsa_bits / kra_min_ec_bits,
 * recipient rsa-pkcs1v15 only with kra_allow_rsa_pkcs1v15 (recipient may
 * be NULL: not chosen yet).  Errors: USAGE (a key type p11escrow does not
 * take), POLICY (naming the policy to change), DB.
 */
static enum esc_err
check_key_policy(struct esc_ctx *ctx, struct esc_store *st, const char *key_type, const char *recipient)
{
	long min_rsa = 3072, min_ec = 256, pkcs1 = 0;
	int rsa = 0, bits = 0;
	enum esc_err r;

	if (!kra_key_size(key_type, &rsa, &bits))
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a KRA key is RSA 2048, 3072 or 4096 bits or EC P-256 or P-384, not %s", key_type);
	if ((r = policy_number(ctx, st, "kra_min_rsa_bits", 3072, &min_rsa)) != ESC_OK ||
	    (r = policy_number(ctx, st, "kra_min_ec_bits", 256, &min_ec)) != ESC_OK ||
	    (r = policy_number(ctx, st, "kra_allow_rsa_pkcs1v15", 0, &pkcs1)) != ESC_OK)
		return r;
	if (rsa && bits < min_rsa)
		return esc_error(ctx, ESC_ERR_POLICY,
				 "the KRA key is %s, smaller than policy kra_min_rsa_bits (%ld) allows: use a larger "
				 "key, or an administrator lowers the policy ('p11escrow policy set kra_min_rsa_bits "
				 "%d') for cards that hold no larger key",
				 key_type, min_rsa, bits);
	if (!rsa && bits < min_ec)
		return esc_error(
			ctx, ESC_ERR_POLICY,
			"the KRA key is %s, smaller than policy kra_min_ec_bits (%ld) allows: use a P-%ld key, "
			"or an administrator lowers the policy ('p11escrow policy set kra_min_ec_bits %d')",
			key_type, min_ec, min_ec, bits);
	if (recipient != NULL && strcmp(recipient, "rsa-pkcs1v15") == 0 && !pkcs1)
		return esc_error(ctx, ESC_ERR_POLICY,
				 "the card decrypts RSA only with PKCS#1 v1.5: refused by policy "
				 "kra_allow_rsa_pkcs1v15 (false); an administrator may accept such cards with "
				 "'p11escrow policy set kra_allow_rsa_pkcs1v15 true', which is weaker "
				 "(docs/threat-model.md)");
	return ESC_OK;
}

/*
 * EXISTS if pub is the key of a KRA already (active or retired, under any
 * name): one key, one KRA, or one card's records would answer to two.
 */
static enum esc_err
check_key_unused(struct esc_ctx *ctx, struct esc_store *st, EVP_PKEY *pub)
{
	PGresult *res = NULL;
	X509 *x;
	enum esc_err r;
	int i, same;

	if ((r = esc_store_exec(ctx, st, "SELECT name, certificate, state FROM kras ORDER BY id", 0, NULL, NULL, NULL,
				&res)) != ESC_OK)
		return r;
	for (i = 0; i < PQntuples(res); i++) {
		if ((x = esc_store_cert_cached(st, PQgetvalue(res, i, 1))) == NULL) {
			r = esc_error(ctx, ESC_ERR_DB, "KRA '%s' holds no readable certificate", PQgetvalue(res, i, 0));
			goto out;
		}
		same = X509_get0_pubkey(x) != NULL && EVP_PKEY_eq(X509_get0_pubkey(x), pub) == 1;
		X509_free(x);
		if (same) {
			r = esc_error(ctx, ESC_ERR_EXISTS,
				      "this key is already the key of KRA '%s' (%s): one key is one KRA",
				      PQgetvalue(res, i, 0), PQgetvalue(res, i, 2));
			goto out;
		}
	}
	r = ESC_OK;
out:
	ERR_clear_error();
	PQclear(res);
	return r;
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

/* Insert the KRA row (in the caller's transaction). */
static enum esc_err
register_kra(struct esc_ctx *ctx, struct esc_store *st, const char *name, X509 *cert, const char *key_type,
	     const char *recipient, const char *token_label, const char *token_serial, const char *uri,
	     const char *origin, const char *reason)
{
	char *serial = esc_cert_serial_hex(cert), fp[ESC_FINGERPRINT_MAX];
	unsigned char *der = NULL;
	const char *v[11];
	int len[11] = {0}, fmt[11] = {0}, dlen;
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
	v[6] = token_label;
	v[7] = token_serial;
	v[8] = uri;
	v[9] = origin;
	v[10] = reason != NULL && *reason != '\0' ? reason : NULL;
	r = esc_store_exec(
		ctx, st,
		"INSERT INTO kras (name, state, certificate, cert_serial, cert_sha256, key_type, recipient, "
		"token_label, token_serial, key_uri, key_origin, recipient_reason) VALUES ($1, 'active', $2, "
		"$3, $4, $5, $6, $7, $8, $9, $10, $11)",
		11, v, len, fmt, NULL);
out:
	OPENSSL_free(der);
	free(serial);
	return r;
}

/* EXISTS unless the name is free and the card is no active KRA. */
static enum esc_err
check_free(struct esc_ctx *ctx, struct esc_store *st, const char *name, const char *label, const char *serial)
{
	PGresult *res = NULL;
	const char *v[1] = {name};
	const char *c[2] = {label, serial};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT 1 FROM kras WHERE name = $1", 1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) > 0) {
		r = esc_error(ctx, ESC_ERR_EXISTS, "a KRA named '%s' is already enrolled", name);
		goto out;
	}
	PQclear(res);
	res = NULL;
	/* One card, one active KRA: a second key would only confuse whoever holds it. */
	if ((r = esc_store_exec(
		     ctx, st, "SELECT name FROM kras WHERE token_label = $1 AND token_serial = $2 AND state = 'active'",
		     2, c, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) > 0) {
		r = esc_error(ctx, ESC_ERR_EXISTS, "card '%s' (serial %s) is already enrolled as KRA '%s'", label,
			      serial, PQgetvalue(res, 0, 0));
		goto out;
	}
	r = ESC_OK;
out:
	PQclear(res);
	return r;
}

/* The active CA's certificate (shared: read only) and its signing key on ca_tok (logged in). */
static enum esc_err
ca_signer(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, X509 **ca, EVP_PKEY **signer)
{
	PGresult *res = NULL;
	struct esc_token_key *ca_key = NULL;
	X509 *cert = NULL;
	EVP_PKEY *key = NULL;
	enum esc_err r;

	if ((r = esc_store_active_ca(ctx, st, &cert)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(ctx, st, "SELECT uri FROM token_keys WHERE role = 'ca-sign'", 0, NULL, NULL, NULL,
				&res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_STATE, "the CA signing key is not registered");
		goto out;
	}
	if ((r = esc_token_find_key(ctx, ca_tok, PQgetvalue(res, 0, 0), &ca_key)) != ESC_OK ||
	    (r = esc_token_key_private(ctx, ca_tok, ca_key, &key)) != ESC_OK)
		goto out;
	*ca = cert;
	*signer = key;
	cert = NULL; /* transferred */
	key = NULL;
	r = ESC_OK;
out:
	PQclear(res);
	X509_free(cert);
	EVP_PKEY_free(key);
	esc_token_key_free(ca_key);
	return r;
}

/*
 * Generate the KRA key pair on the card and read what the CA and the
 * archival need of it.  On an error nothing stays on the card.
 */
static enum esc_err
card_generate(struct esc_ctx *ctx, struct esc_token *card, const char *name, enum esc_key_type type,
	      struct esc_token_key **key_out, EVP_PKEY **pub_out, const char **recipient_out,
	      struct esc_token_decrypt_probe *probe, char *why, size_t whylen)
{
	struct esc_token_key *key = NULL;
	EVP_PKEY *pub = NULL;
	char label[160];
	enum esc_err r;

	if (!valid_name(name))
		return esc_error(ctx, ESC_ERR_USAGE, "a KRA name is 1..64 letters, digits, '.', '_' or '-'");
	if (type != ESC_KEY_RSA3072 && type != ESC_KEY_RSA4096 && type != ESC_KEY_EC_P256 && type != ESC_KEY_EC_P384)
		return esc_error(ctx, ESC_ERR_USAGE, "unsupported KRA key type");
	if ((r = esc_token_require_key_mechanisms(ctx, card, type, ESC_KEY_USE_DECRYPT)) != ESC_OK)
		return r;
	snprintf(label, sizeof(label), "p11escrow KRA %s", name);
	if ((r = esc_token_generate_key(ctx, card, type, ESC_KEY_USE_DECRYPT, label, &key)) != ESC_OK)
		return r;
	/* The card made the key for OAEP or ECDH: PKCS#1 v1.5 is never chosen for it. */
	if ((r = esc_token_key_public(ctx, card, key, &pub)) != ESC_OK ||
	    (r = esc_token_probe_decrypt(ctx, card, key, pub, probe)) != ESC_OK ||
	    (r = esc_kra_choose_recipient(ctx, esc_token_label(card), probe, 0, recipient_out, why, whylen)) != ESC_OK)
		goto out;
	*key_out = key;
	*pub_out = pub;
	key = NULL; /* transferred */
	pub = NULL;
	r = ESC_OK;
out:
	/* Undo: a key whose KRA cannot be registered must not stay on the card. */
	if (key != NULL && esc_token_destroy_key(NULL, card, key) != ESC_OK)
		esc_log(ctx, ESC_LOG_ERROR, "could not remove the generated key '%s' from card '%s'", label,
			esc_token_label(card));
	esc_token_key_free(key);
	EVP_PKEY_free(pub);
	return r;
}

/* The audit event of a registration, in the open transaction. */
static enum esc_err
audit_enrolled(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	       const char *how, const char *label, const char *serial, const char *key_type, const char *recipient,
	       const char *origin, const char *reason)
{
	char roles[64], details[512];
	struct esc_audit_event ev = {esc_account_name(actor), roles, "kra.enroll", name, "ok", details};

	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	snprintf(details, sizeof(details), "%scard '%s' serial %s, %s key %s, recipient %s%s%s%s", how, label, serial,
		 key_type, strcmp(origin, "adopted") == 0 ? "adopted from the card" : "generated on the card",
		 recipient, *reason ? " (" : "", reason, *reason ? ")" : "");
	return esc_audit_append(ctx, st, &ev);
}

/* The certificate's not_after into k, and how many days are left of it (negative: expired). */
static void
cert_validity(X509 *cert, struct esc_kra *k)
{
	const ASN1_TIME *na = X509_get0_notAfter(cert);
	struct tm tm;
	int day = 0, sec = 0;

	if (na == NULL || ASN1_TIME_to_tm(na, &tm) != 1 || ASN1_TIME_diff(&day, &sec, NULL, na) != 1) {
		/* Unreadable: shown as expired, so that somebody looks. */
		k->expired = 1;
		k->days_left = -1;
		return;
	}
	strftime(k->not_after, sizeof(k->not_after), "%Y-%m-%dT%H:%M:%SZ", &tm);
	k->expired = day < 0 || sec < 0 || (day == 0 && sec == 0);
	k->days_left = day;
	ERR_clear_error();
}

static void
fill_kra(struct esc_kra *out, const char *name, const char *key_type, const char *recipient, const char *label,
	 const char *serial, const char *uri, X509 *cert, const char *origin, const char *reason)
{
	char *s = esc_cert_serial_hex(cert);

	memset(out, 0, sizeof(*out));
	snprintf(out->name, sizeof(out->name), "%s", name);
	snprintf(out->state, sizeof(out->state), "active");
	snprintf(out->key_type, sizeof(out->key_type), "%s", key_type);
	snprintf(out->recipient, sizeof(out->recipient), "%s", recipient);
	snprintf(out->token_label, sizeof(out->token_label), "%s", label);
	snprintf(out->token_serial, sizeof(out->token_serial), "%s", serial);
	snprintf(out->key_uri, sizeof(out->key_uri), "%s", uri);
	snprintf(out->cert_serial, sizeof(out->cert_serial), "%s", s ? s : "");
	snprintf(out->origin, sizeof(out->origin), "%s", origin);
	snprintf(out->recipient_reason, sizeof(out->recipient_reason), "%s", reason);
	cert_validity(cert, out);
	free(s);
}

static enum esc_err
enroll_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
	    struct esc_token *kra_tok, const char *name, enum esc_key_type type, int days, struct esc_kra *out)
{
	X509 *ca = NULL, *cert = NULL;
	X509_NAME *subject = NULL;
	struct esc_token_key *key = NULL;
	EVP_PKEY *signer = NULL, *pub = NULL;
	struct esc_token_decrypt_probe probe;
	char *uri = NULL, why[304] = "";
	const char *recipient = NULL;
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		return r;
	if (!valid_name(name))
		return esc_error(ctx, ESC_ERR_USAGE, "a KRA name is 1..64 letters, digits, '.', '_' or '-'");
	if (type != ESC_KEY_RSA3072 && type != ESC_KEY_RSA4096 && type != ESC_KEY_EC_P256 && type != ESC_KEY_EC_P384)
		return esc_error(ctx, ESC_ERR_USAGE, "unsupported KRA key type");
	/* Everything that can be checked without changing anything, first. */
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = check_key_policy(ctx, st, esc_key_type_name(type), NULL)) != ESC_OK ||
	    (r = check_free(ctx, st, name, esc_token_label(kra_tok), esc_token_serial(kra_tok))) != ESC_OK ||
	    (r = ca_signer(ctx, st, ca_tok, &ca, &signer)) != ESC_OK ||
	    (r = kra_subject(ctx, ca, name, &subject)) != ESC_OK ||
	    (r = card_generate(ctx, kra_tok, name, type, &key, &pub, &recipient, &probe, why, sizeof(why))) != ESC_OK)
		goto out;
	if ((r = esc_ca_issue(ctx, ca, signer, pub, subject, days, ESC_PROFILE_KRA, &cert)) != ESC_OK ||
	    (r = esc_token_key_uri(ctx, kra_tok, key, &uri)) != ESC_OK ||
	    (r = esc_token_store_cert(ctx, kra_tok, key, cert)) != ESC_OK || (r = esc_store_begin(ctx, st)) != ESC_OK ||
	    (r = register_kra(ctx, st, name, cert, esc_token_key_type_name(key), recipient, esc_token_label(kra_tok),
			      esc_token_serial(kra_tok), uri, "generated", why)) != ESC_OK ||
	    (r = audit_enrolled(ctx, st, actor, name, "", esc_token_label(kra_tok), esc_token_serial(kra_tok),
				esc_token_key_type_name(key), recipient, "generated", why)) != ESC_OK ||
	    (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	if (out != NULL)
		fill_kra(out, name, esc_token_key_type_name(key), recipient, esc_token_label(kra_tok),
			 esc_token_serial(kra_tok), uri, cert, "generated", why);
	r = ESC_OK;
out:
	esc_store_rollback(st);
	/* Undo: a key whose KRA was not registered must not stay on the card. */
	if (r != ESC_OK && key != NULL && esc_token_destroy_key(NULL, kra_tok, key) != ESC_OK)
		esc_log(ctx, ESC_LOG_ERROR, "could not remove the generated key '%s' from card '%s'",
			esc_token_key_label(key), esc_token_label(kra_tok));
	free(uri);
	X509_free(ca);
	X509_free(cert);
	X509_NAME_free(subject);
	EVP_PKEY_free(signer);
	EVP_PKEY_free(pub);
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

/* ---- Through the service: the workstation's half ------------------------------------------------------------ */

struct esc_kra_card {
	struct esc_token *card; /* borrowed */
	struct esc_token_key *key;
	EVP_PKEY *pub;
	const char *recipient; /* static */
	char *uri;
	unsigned char *spki;
	size_t spki_len;
	int adopted;  /* the card held the key before: never removed */
	int imported; /* adopted, and once extractable or not sensitive */
	struct esc_token_decrypt_probe probe;
	char reason[304];
};

/* The key's SubjectPublicKeyInfo into k->spki. */
static enum esc_err
card_spki(struct esc_ctx *ctx, struct esc_kra_card *k)
{
	unsigned char *der = NULL;
	int n;

	if ((n = i2d_PUBKEY(k->pub, &der)) <= 0 || (k->spki = malloc((size_t)n)) == NULL) {
		OPENSSL_free(der);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the card's public key");
	}
	memcpy(k->spki, der, (size_t)n);
	k->spki_len = (size_t)n;
	OPENSSL_free(der);
	return ESC_OK;
}

enum esc_err
esc_kra_card_generate(struct esc_ctx *ctx, struct esc_token *card, const char *name, enum esc_key_type type,
		      struct esc_kra_card **out)
{
	struct esc_kra_card *k;
	enum esc_err r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	k->card = card;
	if ((r = card_generate(ctx, card, name, type, &k->key, &k->pub, &k->recipient, &k->probe, k->reason,
			       sizeof(k->reason))) != ESC_OK) {
		free(k);
		return r;
	}
	if ((r = esc_token_key_uri(ctx, card, k->key, &k->uri)) != ESC_OK || (r = card_spki(ctx, k)) != ESC_OK)
		goto out;
	*out = k;
	k = NULL; /* transferred */
	r = ESC_OK;
out:
	if (k != NULL) {
		if (esc_kra_card_discard(NULL, k) != ESC_OK)
			esc_log(ctx, ESC_LOG_ERROR, "could not remove the generated key '%s' from card '%s'",
				esc_token_key_label(k->key), esc_token_label(card));
		esc_kra_card_free(k);
	}
	return r;
}

enum esc_err
esc_kra_card_adopt(struct esc_ctx *ctx, struct esc_token *card, const char *key_uri, struct esc_kra_card **out)
{
	struct esc_kra_card *k;
	struct esc_token_key_attrs a;
	const char *label = esc_token_label(card), *type;
	int rsa = 0, bits = 0;
	enum esc_err r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	k->card = card;
	k->adopted = 1;
	/* Nothing below writes to the card, and nothing on any path removes the key from it. */
	if ((r = esc_token_find_key(ctx, card, key_uri, &k->key)) != ESC_OK ||
	    (r = esc_token_key_attributes(ctx, card, k->key, &a)) != ESC_OK)
		goto out;
	type = esc_token_key_type_name(k->key);
	if (!kra_key_size(type, &rsa, &bits)) {
		r = esc_error(ctx, ESC_ERR_USAGE,
			      "key '%s' on card '%s' is %s: a KRA key is RSA 2048, 3072 or 4096 bits or EC P-256 or "
			      "P-384",
			      esc_token_key_label(k->key), label, type);
		goto out;
	}
	if (rsa ? !a.decrypt : !a.derive) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "key '%s' on card '%s' is not a decryption key (%s is false%s): adopt the card's "
			      "encryption (key management) key",
			      esc_token_key_label(k->key), label, rsa ? "CKA_DECRYPT" : "CKA_DERIVE",
			      a.sign ? "; it is a signing key" : "");
		goto out;
	}
	if (!a.sensitive || a.extractable) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "key '%s' on card '%s' is %s: a KRA key must be sensitive and never leave the card",
			      esc_token_key_label(k->key), label, !a.sensitive ? "not sensitive" : "extractable");
		goto out;
	}
	k->imported = !a.always_sensitive || !a.never_extractable;
	if ((r = esc_token_key_public(ctx, card, k->key, &k->pub)) != ESC_OK ||
	    (r = esc_token_probe_decrypt(ctx, card, k->key, k->pub, &k->probe)) != ESC_OK ||
	    /* PKCS#1 v1.5 is offered where it is all the card does: enrollment decides by policy. */
	    (r = esc_kra_choose_recipient(ctx, label, &k->probe, 1, &k->recipient, k->reason, sizeof(k->reason))) !=
		    ESC_OK ||
	    (r = esc_token_key_uri(ctx, card, k->key, &k->uri)) != ESC_OK || (r = card_spki(ctx, k)) != ESC_OK)
		goto out;
	*out = k;
	k = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_kra_card_free(k);
	return r;
}

const char *
esc_kra_card_origin(const struct esc_kra_card *k)
{
	return k->adopted ? "adopted" : "generated";
}

const char *
esc_kra_card_reason(const struct esc_kra_card *k)
{
	return k->reason;
}

const char *
esc_kra_card_key_label(const struct esc_kra_card *k)
{
	return esc_token_key_label(k->key);
}

const struct esc_token_decrypt_probe *
esc_kra_card_probe(const struct esc_kra_card *k)
{
	return &k->probe;
}

int
esc_kra_card_imported(const struct esc_kra_card *k)
{
	return k->imported;
}

const char *
esc_kra_card_key_type(const struct esc_kra_card *k)
{
	return esc_token_key_type_name(k->key);
}

const char *
esc_kra_card_recipient(const struct esc_kra_card *k)
{
	return k->recipient;
}

const char *
esc_kra_card_key_uri(const struct esc_kra_card *k)
{
	return k->uri;
}

const unsigned char *
esc_kra_card_public_key(const struct esc_kra_card *k, size_t *len)
{
	*len = k->spki_len;
	return k->spki;
}

enum esc_err
esc_kra_card_answer(struct esc_ctx *ctx, struct esc_kra_card *k, const unsigned char *challenge, size_t len,
		    unsigned char **secret, size_t *secretlen)
{
	EVP_PKEY *priv = NULL;
	enum esc_err r;

	if ((r = esc_token_key_private(ctx, k->card, k->key, &priv)) != ESC_OK)
		return r;
	r = esc_envelope_open_with_key(ctx, challenge, len, priv, k->pub, secret, secretlen);
	EVP_PKEY_free(priv);
	return r;
}

enum esc_err
esc_kra_card_store_cert(struct esc_ctx *ctx, struct esc_kra_card *k, const unsigned char *der, size_t len, int *stored)
{
	const unsigned char *p = der;
	X509 *cert = NULL;
	enum esc_err r;

	if (len == 0 || len > 64 * 1024 || (cert = d2i_X509(NULL, &p, (long)len)) == NULL || p != der + len) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the service's answer is not a DER certificate");
		goto out;
	}
	if (!esc_cert_matches_key(cert, k->pub)) {
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the certificate the service issued is not for the card's key");
		goto out;
	}
	if (esc_token_write_protected(k->card)) {
		esc_error_set(ctx, ESC_ERR_PKCS11, "card '%s' is write-protected (CKF_WRITE_PROTECTED)",
			      esc_token_label(k->card));
		*stored = 0;
	} else {
		*stored = esc_token_store_cert(ctx, k->card, k->key, cert) == ESC_OK;
	}
	r = ESC_OK;
out:
	X509_free(cert);
	return r;
}

enum esc_err
esc_kra_card_discard(struct esc_ctx *ctx, struct esc_kra_card *k)
{
	/* The card held it before us, and may hold the only copy: p11escrow never removes it. */
	if (k->adopted)
		return esc_error(ctx, ESC_ERR_STATE, "key '%s' was adopted from card '%s': it is never removed",
				 esc_token_key_label(k->key), esc_token_label(k->card));
	return esc_token_destroy_key(ctx, k->card, k->key);
}

void
esc_kra_card_free(struct esc_kra_card *k)
{
	if (k == NULL)
		return;
	esc_token_key_free(k->key);
	EVP_PKEY_free(k->pub);
	free(k->uri);
	free(k->spki);
	free(k);
}

/* ---- Through the service: the service's half ---------------------------------------------------------------- */

/* 1..max bytes of printable ASCII, as a card's label or serial is. */
static int
printable(const char *s, size_t max)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > max)
		return 0;
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return 0;
	return 1;
}

/* The offer's public key, decoded and checked to be of its key type, RSA (rsa) or EC of bits (strict DER). */
static enum esc_err
offer_key(struct esc_ctx *ctx, const struct esc_kra_offer *o, int rsa, int bits, EVP_PKEY **out)
{
	const unsigned char *p = o->public_key;
	unsigned char *der = NULL;
	EVP_PKEY *pub = NULL;
	char group[64] = "";
	int n, ok;
	enum esc_err r;

	if (o->public_key_len == 0 || o->public_key_len > ESC_KRA_PUBLIC_KEY_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "the public key must be 1..%d bytes of DER",
				 ESC_KRA_PUBLIC_KEY_MAX);
	if ((pub = d2i_PUBKEY(NULL, &p, (long)o->public_key_len)) == NULL || p != o->public_key + o->public_key_len ||
	    (n = i2d_PUBKEY(pub, &der)) <= 0 || (size_t)n != o->public_key_len ||
	    memcmp(der, o->public_key, (size_t)n) != 0) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the public key is not a DER SubjectPublicKeyInfo");
		goto out;
	}
	if (rsa)
		ok = EVP_PKEY_is_a(pub, "RSA") && EVP_PKEY_get_bits(pub) == bits;
	else
		ok = EVP_PKEY_is_a(pub, "EC") &&
		     EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) == 1 &&
		     strcmp(group, bits == 256 ? "prime256v1" : "secp384r1") == 0;
	if (!ok) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the public key is not an %s key", o->key_type);
		goto out;
	}
	*out = pub;
	pub = NULL; /* transferred */
	r = ESC_OK;
out:
	OPENSSL_free(der);
	EVP_PKEY_free(pub);
	return r;
}

/* Everything an offer must be before the database is asked; *pub on success. */
static enum esc_err
check_offer(struct esc_ctx *ctx, const struct esc_kra_offer *o, EVP_PKEY **pub)
{
	int rsa = 0, bits = 0;
	enum esc_err r;

	if (!valid_name(o->name))
		return esc_error(ctx, ESC_ERR_USAGE, "a KRA name is 1..64 letters, digits, '.', '_' or '-'");
	if (!printable(o->token_label, 32) || !printable(o->token_serial, 16))
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a card's label is 1..32 and its serial 1..16 printable characters");
	if (o->days < 1 || o->days > 36500)
		return esc_error(ctx, ESC_ERR_USAGE, "days must be 1..36500");
	if (!kra_key_size(o->key_type, &rsa, &bits))
		return esc_error(ctx, ESC_ERR_USAGE,
				 "unsupported KRA key type '%s' (rsa2048, rsa3072, rsa4096, ec-p256 or ec-p384)",
				 o->key_type);
	if (rsa ? strcmp(o->recipient, "rsa-oaep-sha256") != 0 && strcmp(o->recipient, "rsa-oaep-sha1") != 0 &&
			    strcmp(o->recipient, "rsa-pkcs1v15") != 0
		: strcmp(o->recipient, "ecdh") != 0)
		return esc_error(ctx, ESC_ERR_USAGE, "recipient '%s' does not fit a %s key (%s)", o->recipient,
				 o->key_type, rsa ? "rsa-oaep-sha256, rsa-oaep-sha1 or rsa-pkcs1v15" : "ecdh");
	if (o->origin != NULL && strcmp(o->origin, "generated") != 0 && strcmp(o->origin, "adopted") != 0)
		return esc_error(ctx, ESC_ERR_USAGE, "a KRA key's origin is generated or adopted, not '%s'", o->origin);
	if (o->reason != NULL && !printable(o->reason, 300))
		return esc_error(ctx, ESC_ERR_USAGE, "the probe's reason is 1..300 printable characters");
	if (strncmp(o->key_uri, "pkcs11:", 7) != 0 || strlen(o->key_uri) >= sizeof(((struct esc_kra *)0)->key_uri))
		return esc_error(ctx, ESC_ERR_URI, "the key URI must be a pkcs11: URI shorter than %zu bytes",
				 sizeof(((struct esc_kra *)0)->key_uri));
	if ((r = esc_token_uri_check(ctx, o->key_uri)) != ESC_OK)
		return r;
	return offer_key(ctx, o, rsa, bits, pub);
}

/*
 * Renewal: KRA o->name is active and its certificate certifies pub, the key
 * the card offers.  The row is read again, locked, when the answer comes.
 */
static enum esc_err
check_renewable(struct esc_ctx *ctx, struct esc_store *st, const char *name, EVP_PKEY *pub, int lock)
{
	PGresult *res = NULL;
	const char *v[1] = {name};
	X509 *x = NULL;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st,
				lock ? "SELECT state, certificate FROM kras WHERE name = $1 FOR UPDATE"
				     : "SELECT state, certificate FROM kras WHERE name = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no KRA named '%s'", name);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "active") != 0) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "KRA '%s' is retired: a retired KRA is not renewed (enroll the card again under a new "
			      "name if it is to recover new records)",
			      name);
		goto out;
	}
	if ((x = esc_store_cert_cached(st, PQgetvalue(res, 0, 1))) == NULL) {
		r = esc_error(ctx, ESC_ERR_DB, "KRA '%s' holds no readable certificate", name);
		goto out;
	}
	if (X509_get0_pubkey(x) == NULL || EVP_PKEY_eq(X509_get0_pubkey(x), pub) != 1) {
		r = esc_error(ctx, ESC_ERR_MISMATCH,
			      "the card's key is not the key of KRA '%s': a renewal certifies the key the KRA "
			      "has, on its own card",
			      name);
		goto out;
	}
	r = ESC_OK;
out:
	ERR_clear_error();
	X509_free(x);
	PQclear(res);
	return r;
}

static enum esc_err
begin_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const struct esc_kra_offer *o,
	   int renew, long long *id, unsigned char **challenge, size_t *challenge_len, char *expires,
	   size_t expires_len)
{
	PGresult *res = NULL;
	EVP_PKEY *pub = NULL;
	X509 *ca = NULL;
	unsigned char *secret = NULL, hash[32], *env = NULL;
	unsigned int hlen = 0;
	size_t envlen = 0;
	char days[16], secs[16], details[512], roles[64];
	const char *v[14], *origin = o->origin != NULL ? o->origin : "generated";
	int len[14] = {0}, fmt[14] = {0};
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK ||
	    (r = check_offer(ctx, o, &pub)) != ESC_OK)
		goto out;
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = check_key_policy(ctx, st, o->key_type, o->recipient)) != ESC_OK)
		goto out;
	if (renew ? (r = check_renewable(ctx, st, o->name, pub, 0)) != ESC_OK
		  : (r = check_free(ctx, st, o->name, o->token_label, o->token_serial)) != ESC_OK ||
			    (r = check_key_unused(ctx, st, pub)) != ESC_OK)
		goto out;
	if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK)
		goto out;
	/* The secret lives only here and, sealed, in the answer: the database keeps its hash. */
	if ((secret = OPENSSL_secure_malloc(ESC_KRA_SECRET_LEN)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (RAND_priv_bytes(secret, ESC_KRA_SECRET_LEN) != 1 ||
	    EVP_Digest(secret, ESC_KRA_SECRET_LEN, hash, &hlen, EVP_sha256(), NULL) != 1 || hlen != sizeof(hash)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot make a challenge");
		goto out;
	}
	/* Sealed in the recipient form archival will use: the answer proves the card opens that. */
	if ((r = esc_envelope_seal_to_key(ctx, secret, ESC_KRA_SECRET_LEN, pub,
					  esc_oaep_hash_of_recipient(o->recipient), &env, &envlen)) != ESC_OK)
		goto out;
	snprintf(days, sizeof(days), "%d", o->days);
	snprintf(secs, sizeof(secs), "%d", ESC_KRA_CHALLENGE_SECONDS);
	v[0] = (const char *)hash;
	len[0] = sizeof(hash);
	fmt[0] = 1;
	v[1] = o->name;
	v[2] = o->key_type;
	v[3] = o->recipient;
	v[4] = (const char *)o->public_key;
	len[4] = (int)o->public_key_len;
	fmt[4] = 1;
	v[5] = o->token_label;
	v[6] = o->token_serial;
	v[7] = o->key_uri;
	v[8] = days;
	v[9] = esc_account_name(actor);
	v[10] = secs;
	v[11] = origin;
	v[12] = o->reason;
	v[13] = renew ? "true" : "false";
	if ((r = esc_store_begin(ctx, st)) != ESC_OK ||
	    (r = esc_store_exec(
		     ctx, st,
		     "INSERT INTO kra_challenges (secret_sha256, name, key_type, recipient, public_key, "
		     "token_label, token_serial, key_uri, days, created_by, expires_at, key_origin, recipient_reason, "
		     "renews) "
		     "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::integer, $10, now() + $11::integer * interval '1 "
		     "second', $12, $13, $14::boolean) "
		     "RETURNING id, to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
		     14, v, len, fmt, &res)) != ESC_OK)
		goto out;
	{
		struct esc_audit_event ev = {esc_account_name(actor),
					     roles,
					     renew ? "kra.renew.challenge" : "kra.enroll.challenge",
					     o->name,
					     "ok",
					     details};

		esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
		snprintf(details, sizeof(details),
			 "challenge %s to card '%s' serial %s, %s key %s, recipient %s; possession to be proven by %s",
			 PQgetvalue(res, 0, 0), o->token_label, o->token_serial, o->key_type, origin, o->recipient,
			 PQgetvalue(res, 0, 1));
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	*id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	snprintf(expires, expires_len, "%s", PQgetvalue(res, 0, 1));
	*challenge = env;
	*challenge_len = envlen;
	env = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_store_rollback(st);
	PQclear(res);
	if (secret != NULL)
		OPENSSL_secure_clear_free(secret, ESC_KRA_SECRET_LEN);
	OPENSSL_cleanse(hash, sizeof(hash));
	free(env);
	X509_free(ca);
	EVP_PKEY_free(pub);
	return r;
}

enum esc_err
esc_kra_enroll_begin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
		     const struct esc_kra_offer *offer, long long *id, unsigned char **challenge, size_t *challenge_len,
		     char *expires, size_t expires_len)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = begin_impl(ctx, st, actor, offer, 0, id, challenge, challenge_len, expires, expires_len);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "kra.enroll.challenge",
				     valid_name(offer->name) ? offer->name : "-", r);
	return r;
}

/* The challenge's columns prove_impl reads, in this order. */
#define CHALLENGE_COLUMNS                                                                                              \
	"name, created_by, secret_sha256, key_type, recipient, public_key, token_label, token_serial, key_uri, days, " \
	"used_at IS NOT NULL, outcome, expires_at <= now(), "                                                          \
	"to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), key_origin, "                       \
	"coalesce(recipient_reason, ''), renews"

/* A bytea column in libpq's text form ("\\x" + hex) into buf; its length, or -1. */
static long
bytea_value(const char *text, unsigned char *buf, size_t max)
{
	size_t n = strlen(text), i;

	if (n < 2 || text[0] != '\\' || text[1] != 'x' || (n - 2) % 2 != 0 || (n - 2) / 2 > max)
		return -1;
	for (i = 0; i < (n - 2) / 2; i++) {
		int hi = OPENSSL_hexchar2int((unsigned char)text[2 + 2 * i]);
		int lo = OPENSSL_hexchar2int((unsigned char)text[3 + 2 * i]);

		if (hi < 0 || lo < 0)
			return -1;
		buf[i] = (unsigned char)(hi << 4 | lo);
	}
	return (long)((n - 2) / 2);
}

/*
 * Renewal, in the caller's transaction (the KRA row locked): the KRA's
 * certificate, serial and fingerprint replaced by cert's, and the audit
 * event kra.renew with the serial it replaced.
 */
static enum esc_err
replace_cert(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *how,
	     const char *name, X509 *cert)
{
	PGresult *res = NULL;
	char *serial = esc_cert_serial_hex(cert), fp[ESC_FINGERPRINT_MAX], roles[64], details[512];
	struct esc_audit_event ev = {esc_account_name(actor), roles, "kra.renew", name, "ok", details};
	struct esc_kra validity;
	unsigned char *der = NULL;
	const char *v[4];
	int len[4] = {0}, fmt[4] = {0}, dlen;
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
	/* Kept: records wrapped before name it (issuer and serial) as their recipient. */
	if ((r = esc_store_exec(
		     ctx, st,
		     "INSERT INTO kra_certificates (kra_id, certificate, cert_serial, cert_sha256) SELECT id, "
		     "certificate, cert_serial, cert_sha256 FROM kras WHERE name = $1 AND state = 'active'",
		     1, v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	/* The FROM list is read before the update: o.cert_serial is the serial replaced. */
	if ((r = esc_store_exec(ctx, st,
				"UPDATE kras k SET certificate = $2, cert_serial = $3, cert_sha256 = $4 FROM (SELECT "
				"id, cert_serial FROM kras WHERE name = $1) o WHERE k.id = o.id AND k.state = 'active' "
				"RETURNING o.cert_serial",
				4, v, len, fmt, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_STATE, "KRA '%s' is no longer active", name);
		goto out;
	}
	memset(&validity, 0, sizeof(validity));
	cert_validity(cert, &validity);
	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	snprintf(details, sizeof(details),
		 "%snew certificate serial %s (not after %s) for the same key, replacing serial %s; records wrapped "
		 "before keep naming the old certificate and open with the same card key",
		 how, serial, validity.not_after, PQgetvalue(res, 0, 0));
	r = esc_audit_append(ctx, st, &ev);
out:
	PQclear(res);
	OPENSSL_free(der);
	free(serial);
	return r;
}

static enum esc_err
prove_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
	   const char *via, const char *name, long long id, const unsigned char *secret, size_t secret_len,
	   struct esc_kra *out, unsigned char **cert_out, size_t *cert_len, int *renewing)
{
	PGresult *res = NULL;
	X509 *ca = NULL, *cert = NULL;
	X509_NAME *subject = NULL;
	EVP_PKEY *signer = NULL, *pub = NULL;
	unsigned char want[32], got[32], spki[ESC_KRA_PUBLIC_KEY_MAX], *der = NULL, *copy = NULL;
	unsigned int glen = 0;
	char idtext[24], how[128];
	const char *v[2] = {idtext, name};
	const unsigned char *p;
	long wlen, slen;
	int days = 0, dlen, renew;
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		return r;
	if (!valid_name(name))
		return esc_error(ctx, ESC_ERR_USAGE, "a KRA name is 1..64 letters, digits, '.', '_' or '-'");
	if (secret_len > 1024)
		return esc_error(ctx, ESC_ERR_USAGE, "the answer must be at most 1024 bytes");
	snprintf(idtext, sizeof(idtext), "%lld", id);
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK || (r = esc_store_begin(ctx, st)) != ESC_OK)
		goto out;
	/* FOR UPDATE: two answers to one challenge are one after the other, and the second sees it used. */
	if ((r = esc_store_exec(ctx, st,
				"SELECT " CHALLENGE_COLUMNS " FROM kra_challenges WHERE id = $1::bigint AND name = $2 "
				"FOR UPDATE",
				2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no challenge %lld for KRA '%s'", id, name);
		goto out;
	}
	/* What the challenge was for: a refusal is audited under that action. */
	*renewing = strcmp(PQgetvalue(res, 0, 16), "t") == 0;
	if (strcmp(PQgetvalue(res, 0, 1), esc_account_name(actor)) != 0) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "challenge %lld was issued to another administrator: the one who started the "
			      "enrollment answers it",
			      id);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 10), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "challenge %lld was answered already (%s): a challenge is answered once; start the "
			      "enrollment again",
			      id, PQgetvalue(res, 0, 11));
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 12), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "challenge %lld expired at %s; start the enrollment again", id,
			      PQgetvalue(res, 0, 13));
		goto out;
	}
	wlen = bytea_value(PQgetvalue(res, 0, 2), want, sizeof(want));
	if (wlen != (long)sizeof(want) || EVP_Digest(secret, secret_len, got, &glen, EVP_sha256(), NULL) != 1 ||
	    glen != sizeof(got)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot check the answer to challenge %lld", id);
		goto out;
	}
	if (CRYPTO_memcmp(want, got, sizeof(want)) != 0) {
		/* Used up, so that nobody can try again with it; nothing else changes. */
		if ((r = esc_store_exec(
			     ctx, st,
			     "UPDATE kra_challenges SET used_at = now(), outcome = 'wrong secret' WHERE id = "
			     "$1::bigint",
			     1, v, NULL, NULL, NULL)) != ESC_OK ||
		    (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "the answer to challenge %lld is wrong: the card did not prove that it holds the key; "
			      "nothing was registered",
			      id);
		goto out;
	}
	renew = *renewing;
	/* Possession proven.  The name, the card or the key may have been taken since the challenge. */
	if (!renew && (r = check_free(ctx, st, name, PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 7))) != ESC_OK)
		goto out;
	if ((slen = bytea_value(PQgetvalue(res, 0, 5), spki, sizeof(spki))) <= 0 ||
	    (p = spki, (pub = d2i_PUBKEY(NULL, &p, slen)) == NULL)) {
		r = esc_error_ossl(ctx, ESC_ERR_DB, "challenge %lld holds no readable public key", id);
		goto out;
	}
	/* A renewal: the KRA may have been retired meanwhile (locked now, until commit). */
	if (renew ? (r = check_renewable(ctx, st, name, pub, 1)) != ESC_OK
		  : (r = check_key_unused(ctx, st, pub)) != ESC_OK)
		goto out;
	/* And policy may have changed: it holds when the CA certifies. */
	if ((r = check_key_policy(ctx, st, PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4))) != ESC_OK)
		goto out;
	{
		char *end;
		long d = strtol(PQgetvalue(res, 0, 9), &end, 10);

		if (*end != '\0' || d < 1 || d > 36500) {
			r = esc_error(ctx, ESC_ERR_DB, "challenge %lld holds no valid validity in days", id);
			goto out;
		}
		days = (int)d;
	}
	snprintf(how, sizeof(how), "%s, possession proven (challenge %lld); ", via, id);
	if ((r = ca_signer(ctx, st, ca_tok, &ca, &signer)) != ESC_OK ||
	    (r = kra_subject(ctx, ca, name, &subject)) != ESC_OK ||
	    (r = esc_ca_issue(ctx, ca, signer, pub, subject, days, ESC_PROFILE_KRA, &cert)) != ESC_OK)
		goto out;
	if (renew) {
		if ((r = replace_cert(ctx, st, actor, how, name, cert)) != ESC_OK ||
		    (r = esc_store_exec(
			     ctx, st,
			     "UPDATE kra_challenges SET used_at = now(), outcome = 'renewed' WHERE id = $1::bigint", 1,
			     v, NULL, NULL, NULL)) != ESC_OK)
			goto out;
	} else if ((r = register_kra(ctx, st, name, cert, PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4),
				     PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 7), PQgetvalue(res, 0, 8),
				     PQgetvalue(res, 0, 14), PQgetvalue(res, 0, 15))) != ESC_OK ||
		   (r = esc_store_exec(
			    ctx, st,
			    "UPDATE kra_challenges SET used_at = now(), outcome = 'enrolled' WHERE id = $1::bigint", 1,
			    v, NULL, NULL, NULL)) != ESC_OK ||
		   (r = audit_enrolled(ctx, st, actor, name, how, PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 7),
				       PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 14),
				       PQgetvalue(res, 0, 15))) != ESC_OK)
		goto out;
	if ((dlen = i2d_X509(cert, &der)) <= 0 || (copy = malloc((size_t)dlen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	memcpy(copy, der, (size_t)dlen);
	if (out != NULL)
		fill_kra(out, name, PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4), PQgetvalue(res, 0, 6),
			 PQgetvalue(res, 0, 7), PQgetvalue(res, 0, 8), cert, PQgetvalue(res, 0, 14),
			 PQgetvalue(res, 0, 15));
	*cert_out = copy;
	*cert_len = (size_t)dlen;
	copy = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_store_rollback(st);
	OPENSSL_cleanse(got, sizeof(got));
	PQclear(res);
	OPENSSL_free(der);
	free(copy);
	X509_free(ca);
	X509_free(cert);
	X509_NAME_free(subject);
	EVP_PKEY_free(signer);
	EVP_PKEY_free(pub);
	return r;
}

enum esc_err
esc_kra_enroll_prove(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
		     struct esc_token *ca_tok, const char *name, long long id, const unsigned char *secret,
		     size_t secret_len, struct esc_kra *out, unsigned char **cert, size_t *cert_len)
{
	struct esc_store_retry t = {0};
	int renewing = 0;
	enum esc_err r;

	/* Through the service one endpoint answers both enrollment and renewal challenges. */
	do
		r = prove_impl(ctx, st, actor, ca_tok, "through the service", name, id, secret, secret_len, out, cert,
			       cert_len, &renewing);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, renewing ? "kra.renew" : "kra.enroll",
				     valid_name(name) ? name : "-", r);
	return r;
}

enum esc_err
esc_kra_enroll_card(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
		    struct esc_token *ca_tok, struct esc_kra_card *k, const char *name, int days, struct esc_kra *out,
		    unsigned char **cert, size_t *cert_len)
{
	struct esc_store_retry t = {0};
	struct esc_kra_offer offer = {name,
				      esc_token_label(k->card),
				      esc_token_serial(k->card),
				      k->uri,
				      esc_kra_card_key_type(k),
				      k->recipient,
				      k->spki,
				      k->spki_len,
				      days,
				      k->adopted ? "adopted" : "generated",
				      k->reason[0] ? k->reason : NULL};
	unsigned char *challenge = NULL, *secret = NULL;
	size_t challenge_len = 0, secret_len = 0;
	char expires[40];
	long long id = 0;
	int renewing = 0;
	enum esc_err r;

	/* The service's two steps, here: the card answers between them, as at a workstation. */
	if ((r = esc_kra_enroll_begin(ctx, st, actor, &offer, &id, &challenge, &challenge_len, expires,
				      sizeof(expires))) != ESC_OK ||
	    (r = esc_kra_card_answer(ctx, k, challenge, challenge_len, &secret, &secret_len)) != ESC_OK)
		goto out;
	do
		r = prove_impl(ctx, st, actor, ca_tok, "on the service host", name, id, secret, secret_len, out, cert,
			       cert_len, &renewing);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "kra.enroll", valid_name(name) ? name : "-", r);
out:
	esc_envelope_plain_free(secret, secret_len);
	free(challenge);
	return r;
}

enum esc_err
esc_kra_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_kra **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_kra *k = NULL;
	enum esc_err r;
	int i, rows;

	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT k.id, k.name, k.state, k.key_type, k.recipient, k.cert_serial, k.token_label, "
		     "k.token_serial, k.key_uri, (SELECT count(*) FROM archive_record_kras a WHERE a.kra_id = "
		     "k.id), k.key_origin, coalesce(k.recipient_reason, ''), k.certificate FROM kras k ORDER BY k.id",
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
		snprintf(k[i].origin, sizeof(k[i].origin), "%s", PQgetvalue(res, i, 10));
		snprintf(k[i].recipient_reason, sizeof(k[i].recipient_reason), "%s", PQgetvalue(res, i, 11));
		{
			X509 *x = esc_store_cert_cached(st, PQgetvalue(res, i, 12));

			if (x == NULL) {
				r = esc_error(ctx, ESC_ERR_DB, "KRA '%s' holds no readable certificate", k[i].name);
				goto out;
			}
			cert_validity(x, &k[i]);
			X509_free(x);
		}
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
			snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), "%s%s", i ? ", " : "",
				 PQgetvalue(res, i, 0));
		r = esc_error(ctx, ESC_ERR_STATE,
			      "retiring KRA '%s' would leave %d record(s) recoverable by no active KRA (%s%s); "
			      "nothing was changed",
			      name, n, ids, n > 3 ? ", ..." : "");
		goto out;
	}
	{
		char roles[64];
		struct esc_audit_event ev = {esc_account_name(actor),
					     roles,
					     "kra.retire",
					     name,
					     "ok",
					     "no new record is wrapped to this KRA"};

		esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
		if ((r = esc_store_exec(ctx, st,
					"UPDATE kras SET state = 'retired', retired_at = now() WHERE name = $1", 1, v,
					NULL, NULL, NULL)) != ESC_OK ||
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

/* ---- Renewal ---------------------------------------------------------------------------------------------- */

enum esc_err
esc_kra_renew_begin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
		    const unsigned char *public_key, size_t public_key_len, int days, long long *id,
		    unsigned char **challenge, size_t *challenge_len, char *expires, size_t expires_len)
{
	struct esc_store_retry t = {0};
	struct esc_kra_offer o;
	PGresult *res = NULL;
	const char *v[1] = {name};
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
		goto out;
	if (!valid_name(name)) {
		r = esc_error(ctx, ESC_ERR_USAGE, "a KRA name is 1..64 letters, digits, '.', '_' or '-'");
		goto out;
	}
	/* The offer is the KRA's own: only the public key (to be proven) and the validity come from outside. */
	if ((r = esc_store_exec(ctx, st,
				"SELECT key_type, recipient, token_label, token_serial, key_uri, key_origin, "
				"recipient_reason FROM kras WHERE name = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no KRA named '%s'", name);
		goto out;
	}
	/* Another key (of another type, too) is a mismatch before it is anything else. */
	{
		const unsigned char *p = public_key;
		EVP_PKEY *pub = NULL;

		if (public_key_len == 0 || public_key_len > ESC_KRA_PUBLIC_KEY_MAX ||
		    (pub = d2i_PUBKEY(NULL, &p, (long)public_key_len)) == NULL) {
			r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the public key is not a DER SubjectPublicKeyInfo");
			goto out;
		}
		r = check_renewable(ctx, st, name, pub, 0);
		EVP_PKEY_free(pub);
		if (r != ESC_OK)
			goto out;
	}
	memset(&o, 0, sizeof(o));
	o.name = name;
	o.key_type = PQgetvalue(res, 0, 0);
	o.recipient = PQgetvalue(res, 0, 1);
	o.token_label = PQgetvalue(res, 0, 2);
	o.token_serial = PQgetvalue(res, 0, 3);
	o.key_uri = PQgetvalue(res, 0, 4);
	o.origin = PQgetvalue(res, 0, 5);
	o.reason = PQgetisnull(res, 0, 6) ? NULL : PQgetvalue(res, 0, 6);
	o.public_key = public_key;
	o.public_key_len = public_key_len;
	o.days = days;
	do
		r = begin_impl(ctx, st, actor, &o, 1, id, challenge, challenge_len, expires, expires_len);
	while (esc_store_retry(ctx, st, &t, &r));
out:
	PQclear(res);
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "kra.renew.challenge", valid_name(name) ? name : "-", r);
	return r;
}

enum esc_err
esc_kra_renew_card(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, struct esc_token *ca_tok,
		   struct esc_kra_card *k, const char *name, int days, struct esc_kra *out, unsigned char **cert,
		   size_t *cert_len)
{
	struct esc_store_retry t = {0};
	unsigned char *challenge = NULL, *secret = NULL;
	size_t challenge_len = 0, secret_len = 0;
	char expires[40];
	long long id = 0;
	int renewing = 0;
	enum esc_err r;

	if ((r = esc_kra_renew_begin(ctx, st, actor, name, k->spki, k->spki_len, days, &id, &challenge, &challenge_len,
				     expires, sizeof(expires))) != ESC_OK ||
	    (r = esc_kra_card_answer(ctx, k, challenge, challenge_len, &secret, &secret_len)) != ESC_OK)
		goto out;
	do
		r = prove_impl(ctx, st, actor, ca_tok, "on the service host", name, id, secret, secret_len, out, cert,
			       cert_len, &renewing);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "kra.renew", valid_name(name) ? name : "-", r);
out:
	esc_envelope_plain_free(secret, secret_len);
	free(challenge);
	return r;
}

/* ---- Warnings before KRAs lapse ----------------------------------------------------------------------------- */

/*
 * k: how many usable KRAs of its set a record needs.  Policy kra_threshold
 * where the schema has it (k of n, issue #14), else 1 (any one KRA).  The
 * one place that decides it for the warnings.
 */
static enum esc_err
kra_threshold(struct esc_ctx *ctx, struct esc_store *st, int *k)
{
	long v = 1;
	enum esc_err r;

	if ((r = policy_number(ctx, st, "kra_threshold", 1, &v)) != ESC_OK)
		return r;
	*k = v >= 1 && v <= 255 ? (int)v : 1;
	return ESC_OK;
}

int
esc_kra_warning(const struct esc_kra *k, int warn_days, char *buf, size_t len)
{
	if (strcmp(k->state, "active") != 0)
		return 0;
	if (k->expired) {
		snprintf(buf, len,
			 "certificate expired %s: recovery refuses this KRA; renew it ('p11escrow kra renew %s')",
			 k->not_after, k->name);
		return 1;
	}
	if (k->days_left < warn_days) {
		snprintf(buf, len, "certificate expires %s, in %d day(s): renew it ('p11escrow kra renew %s')",
			 k->not_after, k->days_left, k->name);
		return 1;
	}
	return 0;
}

enum esc_err
esc_kra_health(struct esc_ctx *ctx, struct esc_store *st, const struct esc_kra *k, size_t n, int warn_days,
	       struct esc_kra_health *out)
{
	PGresult *res = NULL;
	struct esc_kra_health h;
	char *ids = NULL, thr[16], why[8];
	const char *v[2];
	size_t i, cap = n * 22 + 3;
	enum esc_err r;

	memset(&h, 0, sizeof(h));
	h.warn_days = warn_days;
	if ((r = kra_threshold(ctx, st, &h.threshold)) != ESC_OK)
		return r;
	if ((ids = malloc(cap)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	snprintf(ids, cap, "{");
	for (i = 0; i < n; i++) {
		if (strcmp(k[i].state, "active") != 0)
			continue;
		h.active++;
		if (k[i].expired) {
			h.expired++;
			continue;
		}
		if (esc_kra_warning(&k[i], warn_days, why, sizeof(why)))
			h.expiring++;
		h.usable++;
		snprintf(ids + strlen(ids), cap - strlen(ids), "%s%lld", h.usable > 1 ? "," : "", k[i].id);
	}
	snprintf(ids + strlen(ids), cap - strlen(ids), "}");
	snprintf(thr, sizeof(thr), "%d", h.threshold);
	v[0] = ids;
	v[1] = thr;
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT count(*), count(*) FILTER (WHERE s.n < $2::integer), count(*) FILTER (WHERE s.n = 0), "
		     "coalesce(((array_agg(s.id ORDER BY s.created_at) FILTER (WHERE s.n < $2::integer))[1])::text, "
		     "'') FROM (SELECT r.id, r.created_at, count(a.kra_id) FILTER (WHERE a.kra_id = ANY "
		     "($1::bigint[])) AS n FROM archive_records r LEFT JOIN archive_record_kras a ON a.record_id = "
		     "r.id GROUP BY r.id) s",
		     2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	h.records = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	h.records_short = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	h.records_none = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	snprintf(h.first_short, sizeof(h.first_short), "%s", PQgetvalue(res, 0, 3));
	*out = h;
	r = ESC_OK;
out:
	PQclear(res);
	free(ids);
	return r;
}

enum esc_err
esc_kra_envelope_cert(struct esc_ctx *ctx, struct esc_store *st, const char *name, const unsigned char *env,
		      size_t envlen, X509 *current, X509 **out, int *yes)
{
	PGresult *res = NULL;
	const char *v[1] = {name};
	X509 *x = NULL;
	enum esc_err r;
	int i, found = 0;

	if ((r = esc_envelope_has_recipient(ctx, env, envlen, current, &found)) != ESC_OK)
		return r;
	if (found) {
		X509_up_ref(current);
		*out = current;
		*yes = 1;
		return ESC_OK;
	}
	if ((r = esc_store_exec(ctx, st,
				"SELECT c.certificate FROM kra_certificates c JOIN kras k ON k.id = c.kra_id WHERE "
				"k.name = $1 ORDER BY c.replaced_at DESC",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	for (i = 0; i < PQntuples(res) && !found; i++) {
		if ((x = esc_store_cert_from_text(PQgetvalue(res, i, 0))) == NULL) {
			r = esc_error(ctx, ESC_ERR_DB, "an earlier certificate of KRA '%s' is unreadable", name);
			goto out;
		}
		/* Only a certificate of the KRA's key now: the card must open what it names. */
		if (EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(current)) == 1 &&
		    (r = esc_envelope_has_recipient(ctx, env, envlen, x, &found)) != ESC_OK)
			goto out;
		if (!found) {
			X509_free(x);
			x = NULL;
		}
	}
	X509_up_ref(found ? x : current);
	*out = found ? x : current;
	*yes = found;
	r = ESC_OK;
out:
	ERR_clear_error();
	X509_free(x);
	PQclear(res);
	return r;
}
