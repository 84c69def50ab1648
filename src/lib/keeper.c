/*
 * The keeper (keeper.h): the one holder of a logged-in CA token session.
 * It signs only certificates it builds from a profile, decrypts only CMS
 * envelopes addressed to the transport certificate whose content must be
 * a PKCS#8 private key, releases only approved recovery requests, and
 * signs only the CRL and audit checkpoints it builds itself.  It hands out
 * no token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/proverr.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/est.h>
#include <p11escrow/envelope.h>
#include <p11escrow/keeper.h>
#include <p11escrow/kra.h>
#include <p11escrow/recovery.h>
#include <p11escrow/revoke.h>
#include <p11escrow/setup.h>
#include <p11escrow/token.h>

#include "envelope_internal.h"
#include "internal.h"
#include "keeper_internal.h"
#include "profile_internal.h"
#include "store_internal.h"

struct esc_keeper {
	struct esc_token *tok;
	EVP_PKEY *signer;    /* the CA signing key, operations on the token */
	EVP_PKEY *transport; /* the transport private key, operations on the token */
	X509 *ca_cert;
	STACK_OF(X509) *chain;
	X509 *transport_cert;
	/*
	 * A PKCS#8 decoder kept between envelopes: creating one costs OpenSSL
	 * 3.0 about 0.45 ms, more than the rest of decoding a P-256 key.  It
	 * writes the key it decodes to *p8_out.  Dropped after any failure
	 * (one that failed on input that is not PKCS#8 was seen to report
	 * success without a key next time).
	 */
	OSSL_DECODER_CTX *p8_dec;
	EVP_PKEY *p8_out;
};

void
esc_keeper_free(struct esc_keeper *k)
{
	if (k == NULL)
		return;
	/* The token-backed keys first: they must not outlive the token. */
	EVP_PKEY_free(k->signer);
	EVP_PKEY_free(k->transport);
	esc_token_free(k->tok);
	OSSL_DECODER_CTX_free(k->p8_dec);
	X509_free(k->ca_cert);
	sk_X509_pop_free(k->chain, X509_free);
	X509_free(k->transport_cert);
	free(k);
}

X509 *
esc_keeper_ca_cert(const struct esc_keeper *k)
{
	return k->ca_cert;
}

STACK_OF(X509) *
esc_keeper_chain(const struct esc_keeper *k)
{
	return k->chain;
}

X509 *
esc_keeper_transport_cert(const struct esc_keeper *k)
{
	return k->transport_cert;
}

const char *
esc_keeper_token_label(const struct esc_keeper *k)
{
	return esc_token_label(k->tok);
}

/*
 * The typed operations below hand the token to exactly one library
 * function each, which reads from the database what it acts on and checks
 * it there (an approved request, the revocations, the audit chain): the
 * token never leaves this module.
 */
enum esc_err
esc_keeper_release(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, long long id)
{
	if (k == NULL || st == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_release: NULL argument");
	return esc_recovery_release(ctx, st, k->tok, id);
}

enum esc_err
esc_keeper_sign_crl(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
		    int days, X509_CRL **out)
{
	if (k == NULL || st == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_sign_crl: NULL argument");
	return by != NULL ? esc_crl_build_by(ctx, st, by, k->tok, days, out) : esc_crl_build(ctx, st, k->tok, days, out);
}

enum esc_err
esc_keeper_kra_prove(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *actor,
		     const char *name, long long id, const unsigned char *secret, size_t secret_len, struct esc_kra *out,
		     unsigned char **cert, size_t *cert_len)
{
	if (k == NULL || st == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_kra_prove: NULL argument");
	return esc_kra_enroll_prove(ctx, st, actor, k->tok, name, id, secret, secret_len, out, cert, cert_len);
}

enum esc_err
esc_keeper_checkpoint(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
		      long long events, long long seconds, long long *event_id)
{
	if (k == NULL || st == NULL || event_id == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_checkpoint: NULL argument");
	if (by != NULL)
		return esc_audit_checkpoint_by(ctx, st, by, k->tok, event_id);
	if (events == 0 && seconds == 0)
		return esc_audit_checkpoint(ctx, st, k->tok, event_id);
	return esc_audit_checkpoint_if_due(ctx, st, k->tok, events, seconds, event_id);
}

/* The active CA's certificate and the chain above it (DER certificates, concatenated). */
static enum esc_err
load_ca(struct esc_ctx *ctx, struct esc_store *st, X509 **cert, STACK_OF(X509) **chain)
{
	PGresult *res = NULL;
	STACK_OF(X509) *sk = NULL;
	unsigned char *der = NULL;
	const unsigned char *p, *end;
	X509 *ca = NULL, *x;
	long len = 0;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT certificate, chain FROM ca WHERE state = 'active'", 0, NULL, NULL,
				NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		r = esc_error(ctx, ESC_ERR_STATE, "there is no active CA: run 'p11escrow setup'");
		goto out;
	}
	if ((ca = esc_store_cert_from_text(PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the stored CA certificate is not a DER certificate");
		goto out;
	}
	if ((sk = sk_X509_new_null()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (!PQgetisnull(res, 0, 1) && PQgetlength(res, 0, 1) > 2) {
		const char *hex = PQgetvalue(res, 0, 1);

		if (strncmp(hex, "\\x", 2) != 0 || (der = OPENSSL_hexstr2buf(hex + 2, &len)) == NULL) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the stored CA chain is unreadable");
			goto out;
		}
		for (p = der, end = der + len; p < end;) {
			if ((x = d2i_X509(NULL, &p, end - p)) == NULL) {
				r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT,
						   "the stored CA chain holds something else "
						   "than DER certificates");
				goto out;
			}
			if (!sk_X509_push(sk, x)) {
				X509_free(x);
				r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
				goto out;
			}
		}
	}
	*cert = ca;
	*chain = sk;
	ca = NULL;
	sk = NULL; /* transferred */
	r = ESC_OK;
out:
	OPENSSL_free(der);
	X509_free(ca);
	sk_X509_pop_free(sk, X509_free);
	PQclear(res);
	return r;
}

/* The private key recorded for role, on tok, after checking it is cert's key. */
static enum esc_err
keeper_key(struct esc_ctx *ctx, struct esc_token *tok, const char *uri, X509 *cert, const char *what, EVP_PKEY **out)
{
	struct esc_token_key *key = NULL;
	EVP_PKEY *pub = NULL, *priv = NULL;
	enum esc_err r;

	if ((r = esc_token_find_key(ctx, tok, uri, &key)) != ESC_OK ||
	    (r = esc_token_key_public(ctx, tok, key, &pub)) != ESC_OK)
		goto out;
	if (X509_get0_pubkey(cert) == NULL || EVP_PKEY_eq(X509_get0_pubkey(cert), pub) != 1) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the %s key on token '%s' is not the key of the %s certificate",
			      what, esc_token_label(tok), what);
		goto out;
	}
	if ((r = esc_token_key_private(ctx, tok, key, &priv)) != ESC_OK)
		goto out;
	*out = priv;
	r = ESC_OK;
out:
	EVP_PKEY_free(pub);
	esc_token_key_free(key);
	return r;
}

enum esc_err
esc_keeper_open(struct esc_ctx *ctx, struct esc_store *st, const char *module, const struct esc_secret *pin,
		struct esc_keeper **out)
{
	struct esc_keeper *k = NULL;
	char *sign_uri = NULL, *transport_uri = NULL;
	enum esc_err r;

	if (st == NULL || pin == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_open: NULL argument");
	if ((k = calloc(1, sizeof(*k))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	/* Everything the database knows first: no token is touched for a CA that is not there. */
	if ((r = load_ca(ctx, st, &k->ca_cert, &k->chain)) != ESC_OK ||
	    (r = esc_setup_key_uri(ctx, st, "ca-sign", &sign_uri)) != ESC_OK ||
	    (r = esc_setup_key_uri(ctx, st, "transport", &transport_uri)) != ESC_OK)
		goto out;
	if ((r = esc_store_get_cert(ctx, st, "the transport certificate",
				    "SELECT certificate FROM token_keys WHERE role = 'transport'", 0, NULL,
				    &k->transport_cert)) != ESC_OK) {
		if (r == ESC_ERR_NOT_FOUND)
			r = esc_error(ctx, ESC_ERR_STATE,
				      "no transport certificate is recorded: run 'p11escrow setup'");
		goto out;
	}
	/*
	 * The token module is shared by every keeper of the process, and so is
	 * the login: a second C_Login answers CKR_USER_ALREADY_LOGGED_IN, which
	 * esc_token_login accepts.
	 */
	if ((r = esc_token_open(ctx, module, sign_uri, &k->tok)) != ESC_OK ||
	    (r = esc_token_login(ctx, k->tok, pin)) != ESC_OK ||
	    (r = keeper_key(ctx, k->tok, sign_uri, k->ca_cert, "CA", &k->signer)) != ESC_OK ||
	    (r = keeper_key(ctx, k->tok, transport_uri, k->transport_cert, "transport", &k->transport)) != ESC_OK)
		goto out;
	*out = k;
	k = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_keeper_free(k);
	free(sign_uri);
	free(transport_uri);
	return r;
}

enum esc_err
esc_keeper_seal_server_key(struct esc_ctx *ctx, struct esc_keeper *k, EVP_PKEY *key, X509 *cert, X509 *recipient,
			   unsigned char **der, size_t *derlen)
{
	if (k == NULL || key == NULL || cert == NULL || recipient == NULL || der == NULL || derlen == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_seal_server_key: NULL argument");
	/* The CA vouches for a key it generated for a certificate it issued, and nothing else. */
	if (!esc_cert_issued_by(cert, k->ca_cert))
		return esc_error(ctx, ESC_ERR_USAGE, "the key's certificate was not issued by this CA");
	if (X509_get0_pubkey(cert) == NULL || EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_USAGE, "the key is not the key of its certificate");
	}
	return esc_est_key_package_seal(ctx, k->ca_cert, k->chain, k->signer, key, recipient, der, derlen);
}

/*
 * Empty OpenSSL's error queue: did the failure come from an integrity check
 * (a wrapped key that does not unwrap)?  why gets the first reason.
 */
static int
integrity_failure(char *why, size_t len)
{
	unsigned long e;
	int unwrap = 0;

	why[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		/* AES key unwrap: CMS says so, or the provider's integrity check failed under it. */
		if ((ERR_GET_LIB(e) == ERR_LIB_CMS && ERR_GET_REASON(e) == CMS_R_UNWRAP_ERROR) ||
		    (ERR_GET_LIB(e) == ERR_LIB_PROV && ERR_GET_REASON(e) == PROV_R_CIPHER_OPERATION_FAILED))
			unwrap = 1;
		if (why[0] == '\0' && ERR_reason_error_string(e) != NULL)
			snprintf(why, len, ": %s", ERR_reason_error_string(e));
	}
	return unwrap;
}

/* The private key in the PKCS#8 DER der (checked to be exactly one structure); NULL if it holds none. */
static EVP_PKEY *
pkcs8_decode(struct esc_keeper *k, const unsigned char *der, size_t len)
{
	EVP_PKEY *pkey;

	if (k->p8_dec == NULL &&
	    (k->p8_dec = OSSL_DECODER_CTX_new_for_pkey(&k->p8_out, "DER", "PrivateKeyInfo", NULL, EVP_PKEY_KEYPAIR,
						       NULL, NULL)) == NULL)
		return NULL;
	k->p8_out = NULL;
	if (!OSSL_DECODER_from_data(k->p8_dec, &der, &len) || k->p8_out == NULL || len != 0) {
		EVP_PKEY_free(k->p8_out);
		k->p8_out = NULL;
		OSSL_DECODER_CTX_free(k->p8_dec);
		k->p8_dec = NULL;
		return NULL;
	}
	pkey = k->p8_out;
	k->p8_out = NULL;
	return pkey;
}

enum esc_err
esc_keeper_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env, size_t envlen,
			  EVP_PKEY **key)
{
	CMS_ContentInfo *cms = NULL;
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	EVP_PKEY *pkey = NULL;
	BIO *bout = NULL;
	BUF_MEM *mem = NULL;
	const unsigned char *p = env;
	char why[160];
	int type;
	enum esc_err r;

	if (k == NULL || env == NULL || key == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_open_transport: NULL argument");
	if (envlen == 0 || envlen > ESC_ENVELOPE_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "an archival envelope must be 1..%d bytes", ESC_ENVELOPE_MAX);
	if ((cms = d2i_CMS_ContentInfo(NULL, &p, (long)envlen)) == NULL || p != env + envlen) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the archival envelope is not one DER CMS structure");
		goto out;
	}
	type = OBJ_obj2nid(CMS_get0_type(cms));
	if (type != NID_pkcs7_enveloped && type != NID_id_smime_ct_authEnvelopedData) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the archival envelope is not a CMS EnvelopedData or AuthEnvelopedData");
		goto out;
	}
	/* The one question the keeper answers: is this addressed to our transport certificate? */
	if (!esc_envelope_cms_addressed_to(cms, k->transport_cert)) {
		r = esc_error(ctx, ESC_ERR_NOT_RECIPIENT,
			      "the archival envelope is not encrypted to this CA's transport certificate");
		goto out;
	}
	if (!esc_envelope_cms_kari_wrap_ok(cms)) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the archival envelope's key agreement uses a key wrap other than AES key wrap (RFC 3394)");
		goto out;
	}
	/*
	 * RSA key transport: OpenSSL answers success even when the token's
	 * decryption fails and goes on with a random key (the countermeasure to
	 * Bleichenbacher's attack), so a bad PKCS#1 v1.5 block shows only as
	 * content that fails below, like any tampering.  ECDH: a wrapped key
	 * that does not unwrap is tampering; anything else is the token's.
	 */
	if (CMS_decrypt_set1_pkey_and_peer(cms, k->transport, k->transport_cert, NULL) != 1) {
		if (integrity_failure(why, sizeof(why)))
			r = esc_error(ctx, ESC_ERR_TAMPERED,
				      "the archival envelope's wrapped key fails its integrity "
				      "check: it was altered");
		else
			r = esc_error(ctx, ESC_ERR_PKCS11,
				      "the transport key on the CA token could not open the archival envelope%s", why);
		goto out;
	}
	/* The plaintext is a private key: it stays in the secure heap. */
	if ((bout = BIO_new(BIO_s_secmem())) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (CMS_decrypt(cms, NULL, NULL, NULL, bout, CMS_BINARY) != 1) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "the archival envelope does not decrypt: it was altered, "
			      "corrupted or not made for this key");
		goto out;
	}
	BIO_get_mem_ptr(bout, &mem);
	p = mem != NULL ? (const unsigned char *)mem->data : NULL;
	/* Exactly one PKCS#8 structure (d2i cleanses its copy when freed), then the key out of it. */
	if (p == NULL || mem->length == 0 || mem->length > ESC_ENVELOPE_MAX ||
	    (p8 = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)mem->length)) == NULL ||
	    p != (const unsigned char *)mem->data + mem->length ||
	    (pkey = pkcs8_decode(k, (const unsigned char *)mem->data, mem->length)) == NULL) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the archival envelope does not hold an unencrypted PKCS#8 private key");
		goto out;
	}
	*key = pkey;
	pkey = NULL; /* transferred */
	r = ESC_OK;
out:
	EVP_PKEY_free(pkey);
	PKCS8_PRIV_KEY_INFO_free(p8); /* cleanses its key octets */
	BIO_free(bout);		      /* a secure-heap buffer, cleansed when freed */
	CMS_ContentInfo_free(cms);
	return r;
}

enum esc_err
esc_keeper_issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct profile_def *def, const X509_NAME *subject,
	    EVP_PKEY *pub, const GENERAL_NAMES *san, X509 **out)
{
	struct esc_ee_spec spec;
	enum esc_err r;

	if ((r = esc_profile_check_key(ctx, &def->p, pub)) != ESC_OK)
		return r;
	memset(&spec, 0, sizeof(spec));
	spec.subject = subject;
	spec.pub = pub;
	spec.san = san;
	spec.key_usage = EVP_PKEY_is_a(pub, "EC") ? def->ku_ec : def->ku_rsa;
	spec.ext_key_usage = def->eku;
	spec.days = def->p.days;
	return esc_ca_issue_ee(ctx, k->ca_cert, k->signer, &spec, out);
}
