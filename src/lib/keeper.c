/*
 * The keeper (keeper.h): the one holder of a logged-in CA token session.
 * It signs only certificates it builds from a profile, decrypts only CMS
 * envelopes addressed to the transport certificate whose content must be
 * a PKCS#8 private key, releases only approved recovery requests, and
 * signs only the CRL and audit checkpoints it builds itself.  It hands out
 * no token.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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
#include <p11escrow/gate.h>
#include <p11escrow/envelope.h>
#include <p11escrow/keeper.h>
#include <p11escrow/kra.h>
#include <p11escrow/recovery.h>
#include <p11escrow/revoke.h>
#include <p11escrow/rewrap.h>
#include <p11escrow/setup.h>
#include <p11escrow/storage.h>
#include <p11escrow/token.h>

#include "envelope_internal.h"
#include "internal.h"
#include "auth_internal.h"
#include "keeper_internal.h"
#include "keeper_proto.h"
#include "profile_internal.h"
#include "store_internal.h"

struct esc_keeper {
	struct esc_token *tok;
	EVP_PKEY *signer;    /* the CA signing key, operations on the token */
	EVP_PKEY *transport; /* the transport private key, operations on the token */
	X509 *ca_cert;
	STACK_OF(X509) *chain;
	X509 *transport_cert;
	/* (PKCS#8 keys are decoded with the context's kept decoder: esc_ctx_pkcs8_decode.) */
	/* The SubjectPublicKeyInfo of each certificate asked for, with a kept decoder (d2i_PUBKEY makes one each time). */
	struct esc_kept_decoder spki;
	/* A remote keeper (esc_keeper_connect): no token, a socket to the keeper process. */
	int remote;
	int fd;	      /* -1 once the connection is lost */
	uint32_t seq; /* the last request's number */
	/* A local keeper serving a connection (esc_keeper_serve): kept across calls. */
	uint32_t served_seq; /* the last request's number */
	int greeted;	     /* HELLO answered */
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
	if (k->remote && k->fd >= 0)
		close(k->fd);
	esc_kept_decoder_free(&k->spki);
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
	return k->remote ? "keeper process" : k->tok != NULL ? esc_token_label(k->tok) : "software keys";
}

/* A keeper over software keys (esc_keeper_from_keys) has no token for what reads the database and signs on it. */
static enum esc_err
no_token(struct esc_ctx *ctx, const char *what)
{
	return esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "keeper: %s needs the CA token, and this keeper holds none",
			 what);
}

enum esc_err
esc_keeper_from_keys(struct esc_ctx *ctx, X509 *ca_cert, STACK_OF(X509) *chain, EVP_PKEY *signer, EVP_PKEY *transport,
		     X509 *transport_cert, struct esc_keeper **out)
{
	struct esc_keeper *k = NULL;
	enum esc_err r;
	int i;

	if (ca_cert == NULL || signer == NULL || transport == NULL || transport_cert == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_from_keys: NULL argument");
	if ((k = calloc(1, sizeof(*k))) == NULL || (k->chain = sk_X509_new_null()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < sk_X509_num(chain); i++) {
		if (!sk_X509_push(k->chain, sk_X509_value(chain, i))) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		X509_up_ref(sk_X509_value(chain, i));
	}
	X509_up_ref(ca_cert);
	k->ca_cert = ca_cert;
	X509_up_ref(transport_cert);
	k->transport_cert = transport_cert;
	EVP_PKEY_up_ref(signer);
	k->signer = signer;
	EVP_PKEY_up_ref(transport);
	k->transport = transport;
	*out = k;
	k = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_keeper_free(k);
	return r;
}

int
esc_keeper_lost(const struct esc_keeper *k)
{
	return k != NULL && k->remote && k->fd < 0;
}

/* The remote forms of the typed operations (below, with the protocol). */
static enum esc_err remote_status(struct esc_ctx *ctx, struct esc_keeper *k);
static enum esc_err remote_release(struct esc_ctx *ctx, struct esc_keeper *k, long long id);
static enum esc_err remote_kra_prove(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				     const struct esc_account *actor, const char *name, long long id,
				     const unsigned char *secret, size_t secret_len, struct esc_kra *out,
				     unsigned char **cert, size_t *cert_len);
static enum esc_err remote_reseal(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by,
				  const char *after, size_t n, struct esc_reseal_batch *out);
static enum esc_err remote_rewrap_open(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by,
				       const char *id, unsigned char **content, size_t *contentlen,
				       unsigned char sha[32]);
static enum esc_err remote_sign_crl(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by, int days,
				    X509_CRL **out);
static enum esc_err remote_checkpoint(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by,
				      long long events, long long seconds, long long *event_id);
static enum esc_err remote_seal(struct esc_ctx *ctx, struct esc_keeper *k, EVP_PKEY *key, X509 *cert, X509 *recipient,
				unsigned char **der, size_t *derlen);
static enum esc_err remote_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env,
					  size_t envlen, EVP_PKEY **key);
static enum esc_err remote_issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct profile_def *def,
				 const X509_NAME *subject, EVP_PKEY *pub, const GENERAL_NAMES *san, X509 **out);

/*
 * The typed operations below hand the token to exactly one library
 * function each, which reads from the database what it acts on and checks
 * it there (an approved request, the revocations, the audit chain): the
 * token never leaves this module.
 */
enum esc_err
esc_keeper_status(struct esc_ctx *ctx, struct esc_keeper *k)
{
	if (k == NULL)
		return esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "the keeper is unavailable");
	if (k->remote)
		return remote_status(ctx, k);
	return k->tok != NULL ? esc_token_check_login(ctx, k->tok) : ESC_OK;
}

enum esc_err
esc_keeper_release(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, long long id)
{
	if (k == NULL || (st == NULL && !k->remote))
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_release: NULL argument");
	if (k->remote)
		return remote_release(ctx, k, id);
	if (k->tok == NULL)
		return no_token(ctx, "a release");
	return esc_recovery_release(ctx, st, k->tok, id);
}

enum esc_err
esc_keeper_sign_crl(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
		    int days, X509_CRL **out)
{
	if (k == NULL || out == NULL || (st == NULL && !k->remote))
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_sign_crl: NULL argument");
	if (k->remote)
		return remote_sign_crl(ctx, k, by, days, out);
	if (k->tok == NULL)
		return no_token(ctx, "a CRL");
	if (days == 0)
		return esc_crl_refresh(ctx, st, k->tok, out);
	return by != NULL ? esc_crl_build_by(ctx, st, by, k->tok, days, out)
			  : esc_crl_build(ctx, st, k->tok, days, out);
}

enum esc_err
esc_keeper_kra_prove(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *actor,
		     const char *name, long long id, const unsigned char *secret, size_t secret_len,
		     struct esc_kra *out, unsigned char **cert, size_t *cert_len)
{
	if (k == NULL || st == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_kra_prove: NULL argument");
	if (k->remote)
		return remote_kra_prove(ctx, k, st, actor, name, id, secret, secret_len, out, cert, cert_len);
	if (k->tok == NULL)
		return no_token(ctx, "a KRA certificate");
	return esc_kra_enroll_prove(ctx, st, actor, k->tok, name, id, secret, secret_len, out, cert, cert_len);
}

enum esc_err
esc_keeper_checkpoint(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
		      long long events, long long seconds, long long *event_id)
{
	if (k == NULL || event_id == NULL || (st == NULL && !k->remote))
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_checkpoint: NULL argument");
	if (k->remote)
		return remote_checkpoint(ctx, k, by, events, seconds, event_id);
	if (k->tok == NULL)
		return no_token(ctx, "an audit checkpoint");
	if (by != NULL)
		return esc_audit_checkpoint_by(ctx, st, by, k->tok, event_id);
	if (events == 0 && seconds == 0)
		return esc_audit_checkpoint(ctx, st, k->tok, event_id);
	return esc_audit_checkpoint_if_due(ctx, st, k->tok, events, seconds, event_id);
}

enum esc_err
esc_keeper_rotate_storage(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
			  const char *type, int days, struct esc_storage_rotation *out)
{
	if (k == NULL || st == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_rotate_storage: NULL argument");
	if (k->remote)
		return esc_error(ctx, ESC_ERR_DENIED,
				 "the service does not rotate the storage key: run 'p11escrow storage-key rotate "
				 "--local' on the service host");
	return esc_storage_rotate(ctx, st, by, k->tok, k->ca_cert, k->signer, type, days, out);
}

enum esc_err
esc_keeper_reseal(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
		  const char *after, size_t n, struct esc_reseal_batch *out)
{
	if (k == NULL || out == NULL || (st == NULL && !k->remote))
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_reseal: NULL argument");
	if (k->remote)
		return remote_reseal(ctx, k, by, after, n, out);
	return esc_storage_reseal_batch(ctx, st, by, k->tok, after, n, out);
}

enum esc_err
esc_keeper_rewrap_open(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *by,
		       const char *id, unsigned char **content, size_t *contentlen, unsigned char sha[32])
{
	if (k == NULL || id == NULL || content == NULL || contentlen == NULL || (st == NULL && !k->remote))
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_rewrap_open: NULL argument");
	if (k->remote)
		return remote_rewrap_open(ctx, k, by, id, content, contentlen, sha);
	return esc_rewrap_open_record(ctx, st, k->tok, by, id, content, contentlen, sha);
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
	/* The same checks again in the keeper process, on what it receives. */
	if (k->remote)
		return remote_seal(ctx, k, key, cert, recipient, der, derlen);
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

/*
 * esc_keeper_open_transport; with p8 non-NULL, also the PKCS#8 bytes the
 * key was decoded from, in the secure heap (*p8, *p8len; free with
 * OPENSSL_secure_clear_free): the keeper process hands those on instead of
 * encoding the key again.
 */
static enum esc_err
open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env, size_t envlen, EVP_PKEY **key,
	       unsigned char **p8out, size_t *p8len)
{
	CMS_ContentInfo *cms = NULL;
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	EVP_PKEY *pkey = NULL;
	BIO *bout = NULL;
	BUF_MEM *mem = NULL;
	const unsigned char *p = env;
	struct esc_token_pass pass;
	char why[160];
	int type, opened;
	enum esc_err r;

	if (k == NULL || env == NULL || key == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_open_transport: NULL argument");
	if (envlen == 0 || envlen > ESC_ENVELOPE_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "an archival envelope must be 1..%d bytes", ESC_ENVELOPE_MAX);
	if (k->remote)
		return p8out == NULL
			       ? remote_open_transport(ctx, k, env, envlen, key)
			       : esc_error(ctx, ESC_ERR_INTERNAL, "open_transport: PKCS#8 bytes from a remote keeper");
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
		r = esc_error(
			ctx, ESC_ERR_BAD_INPUT,
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
	esc_token_gate_enter(ctx, &pass);
	opened = CMS_decrypt_set1_pkey_and_peer(cms, k->transport, k->transport_cert, NULL) == 1;
	esc_token_gate_leave(&pass);
	if (!opened) {
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
	    (pkey = esc_ctx_pkcs8_decode(ctx, (const unsigned char *)mem->data, mem->length)) == NULL) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "the archival envelope does not hold an unencrypted PKCS#8 private key");
		goto out;
	}
	if (p8out != NULL) {
		if ((*p8out = OPENSSL_secure_malloc(mem->length)) == NULL) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		memcpy(*p8out, mem->data, mem->length);
		*p8len = mem->length;
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

/* The public key in the SubjectPublicKeyInfo DER der (exactly one structure), as d2i_PUBKEY; NULL if none. */
static EVP_PKEY *
spki_decode(struct esc_keeper *k, const unsigned char *der, size_t len)
{
	return esc_kept_decode(&k->spki, "SubjectPublicKeyInfo", EVP_PKEY_PUBLIC_KEY, der, len);
}

enum esc_err
esc_keeper_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env, size_t envlen,
			  EVP_PKEY **key)
{
	return open_transport(ctx, k, env, envlen, key, NULL, NULL);
}

/* esc_keeper_issue; spki: NULL, or the DER pub was decoded from (the certificate carries it as it is, see ca.h). */
static enum esc_err
issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct profile_def *def, const X509_NAME *subject, EVP_PKEY *pub,
      const unsigned char *spki, size_t spkilen, const GENERAL_NAMES *san, X509 **out)
{
	struct esc_ee_spec spec;
	enum esc_err r;

	/* The profile's rules first, also for a remote keeper: a certificate it must refuse is not asked for. */
	if ((r = esc_profile_ee_spec(ctx, def, subject, pub, san, &spec)) != ESC_OK)
		return r;
	if (k->remote)
		return remote_issue(ctx, k, def, subject, pub, san, out);
	spec.spki = spki;
	spec.spkilen = spkilen;
	return esc_ca_issue_ee(ctx, k->ca_cert, k->signer, &spec, out);
}

enum esc_err
esc_keeper_issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct profile_def *def, const X509_NAME *subject,
		 EVP_PKEY *pub, const GENERAL_NAMES *san, X509 **out)
{
	return issue(ctx, k, def, subject, pub, NULL, 0, san, out);
}

/* ---- The keeper in another process: the protocol's two ends ---------------- */

/* A worker waits this long for a reply (a token operation, or its queue), then gives the keeper up. */
#define REPLY_TIMEOUT_MS (120 * 1000)
/*
 * Frames of a type that carries a private key are read into the secure
 * heap (1 MiB, pin.c), so they are bounded far below ESC_KP_MAX: a PKCS#8
 * key and two certificates fit many times over.
 */
#define SECRET_FRAME_MAX (64 * 1024)

/* Write all of buf; 0, or -1 (the peer is gone).  MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE. */
static int
write_full(int fd, const unsigned char *buf, size_t n)
{
	ssize_t w;

	while (n > 0) {
		if ((w = send(fd, buf, n, MSG_NOSIGNAL)) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Read exactly n bytes, waiting at most timeout_ms for each (-1: for
 * ever).  0: read; 1: the stream ended before the first byte and eof_ok;
 * -1: it ended early, failed or timed out.
 */
static int
read_full(int fd, unsigned char *buf, size_t n, int eof_ok, int timeout_ms)
{
	struct pollfd pfd = {fd, POLLIN, 0};
	size_t got = 0;
	ssize_t rd;
	int pr;

	while (got < n) {
		if ((pr = poll(&pfd, 1, timeout_ms)) < 0 && errno == EINTR)
			continue;
		if (pr <= 0)
			return -1;
		if ((rd = read(fd, buf + got, n - got)) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		if (rd == 0)
			return got == 0 && eof_ok ? 1 : -1;
		got += (size_t)rd;
	}
	return 0;
}

/*
 * Read one frame: *buf holds the message after its length field (*len
 * bytes), from the secure heap if its type carries a private key
 * (*secure); free it with esc_kp_free(*buf, *len, *secure).  0; 1 at a
 * clean end of stream; -1 on a frame that cannot be read, *why saying why
 * (the connection cannot go on: its next message boundary is unknown).
 */
static int
frame_read(int fd, int timeout_ms, unsigned char **buf, size_t *len, int *secure, const char **why)
{
	unsigned char hdr[4 + ESC_KP_HEADER], *b;
	size_t flen;
	int rc, sec;

	if ((rc = read_full(fd, hdr, 4, 1, timeout_ms)) != 0) {
		*why = "the connection broke or timed out";
		return rc;
	}
	if ((flen = esc_kp_frame_length(hdr)) == 0) {
		*why = "a frame length out of bounds";
		return -1;
	}
	if (read_full(fd, hdr + 4, ESC_KP_HEADER, 0, timeout_ms) != 0) {
		*why = "the connection broke within a frame";
		return -1;
	}
	/* The type decides where the frame lives, before its body is read. */
	sec = esc_kp_type_secret(hdr[5]);
	if (sec && flen > SECRET_FRAME_MAX) {
		*why = "a frame carrying a private key is longer than such frames may be";
		return -1;
	}
	if ((b = sec ? OPENSSL_secure_malloc(flen) : OPENSSL_malloc(flen)) == NULL) {
		*why = "out of memory";
		return -1;
	}
	memcpy(b, hdr + 4, ESC_KP_HEADER);
	if (read_full(fd, b + ESC_KP_HEADER, flen - ESC_KP_HEADER, 0, timeout_ms) != 0) {
		esc_kp_free(b, flen, sec);
		*why = "the connection broke within a frame";
		return -1;
	}
	*buf = b;
	*len = flen;
	*secure = sec;
	return 0;
}

/*
 * DER of obj by OpenSSL's fn (i2d_X509, i2d_PUBKEY, ...), OPENSSL_malloc'ed,
 * its length in *lenp; NULL on failure.  A macro, so each i2d keeps its
 * own type.
 */
#define DER_OF(fn, obj, lenp)                                                                    \
	({                                                                                       \
		unsigned char *d_ = NULL;                                                        \
		int n_ = fn((obj), &d_);                                                         \
		n_ > 0 ? (*(lenp) = (size_t)n_, d_) : (OPENSSL_free(d_), (unsigned char *)NULL); \
	})

/* A field holding exactly one DER certificate. */
static X509 *
field_cert(const struct esc_kp_field *f)
{
	const unsigned char *p = f->p;
	X509 *x;

	if (p == NULL || f->len > LONG_MAX || (x = d2i_X509(NULL, &p, (long)f->len)) == NULL)
		return NULL;
	if (p != f->p + f->len) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* A text field as a C string in out (cap bytes); 0, or -1 if too long or holding a NUL. */
static int
field_text(const struct esc_kp_field *f, char *out, size_t cap)
{
	if (f->p == NULL || f->len >= cap || memchr(f->p, '\0', f->len) != NULL)
		return -1;
	memcpy(out, f->p, f->len);
	out[f->len] = '\0';
	return 0;
}

/* ---- the worker's end ---- */

/* The keeper is gone, or spoke out of turn: nothing more goes over this connection. */
static enum esc_err
lost(struct esc_ctx *ctx, struct esc_keeper *k, const char *why)
{
	if (k->fd >= 0) {
		close(k->fd);
		k->fd = -1;
	}
	return esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "the keeper is unavailable: %s", why);
}

/*
 * Send request m (numbered here, encoded in the secure heap when secure)
 * and read its reply into *rep, which points into *rbuf (free with
 * esc_kp_free(*rbuf, *rlen, *rsec)).  An ERROR reply becomes its code and
 * message; anything but the reply to this request loses the connection.
 */
static enum esc_err call_untimed(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_kp_msg *m, int secure,
				 struct esc_kp_msg *rep, unsigned char **rbuf, size_t *rlen, int *rsec);

/* Timed for the context's timing sink, by operation (the request type's name). */
static enum esc_err
call(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_kp_msg *m, int secure, struct esc_kp_msg *rep,
     unsigned char **rbuf, size_t *rlen, int *rsec)
{
	struct timespec t0;
	int timed;
	enum esc_err r;

	if (k->fd < 0)
		return esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "the keeper is unavailable");
	timed = esc_timing_start(ctx, &t0);
	r = call_untimed(ctx, k, m, secure, rep, rbuf, rlen, rsec);
	esc_timing_end(ctx, timed, &t0, ESC_TIMING_TOKEN, esc_kp_type_name(m->type));
	return r;
}

static enum esc_err
call_untimed(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_kp_msg *m, int secure, struct esc_kp_msg *rep,
	     unsigned char **rbuf, size_t *rlen, int *rsec)
{
	unsigned char *out = NULL, *in = NULL;
	size_t outlen = 0, inlen = 0;
	const char *why = NULL;
	int sec = 0, w;
	enum esc_err r;

	m->seq = ++k->seq;
	if ((r = esc_kp_encode(ctx, m, secure, &out, &outlen)) != ESC_OK)
		return r;
	w = write_full(k->fd, out, outlen);
	esc_kp_free(out, outlen, secure);
	if (w != 0)
		return lost(ctx, k, "it closed the connection");
	if (frame_read(k->fd, REPLY_TIMEOUT_MS, &in, &inlen, &sec, &why) != 0)
		return lost(ctx, k, why);
	if (esc_kp_decode(ctx, in, inlen, rep) != ESC_OK || rep->seq != m->seq) {
		esc_kp_free(in, inlen, sec);
		return lost(ctx, k, "its reply is malformed or answers another request");
	}
	if (rep->type == ESC_KP_ERROR) {
		int32_t code = (int32_t)esc_kp_get32(rep, ESC_KP_T_CODE);
		const struct esc_kp_field *msg = &rep->f[ESC_KP_T_MESSAGE];

		/* The keeper's own codes, each negative; anything else is its bug. */
		r = code < 0 && code > -100 && strcmp(esc_strerror((enum esc_err)code), "unknown error") != 0
			    ? (enum esc_err)code
			    : ESC_ERR_INTERNAL;
		esc_error_set(ctx, r, "%.*s", (int)msg->len, (const char *)msg->p);
		esc_kp_free(in, inlen, sec);
		return r;
	}
	if (rep->type != (m->type | ESC_KP_REPLY)) {
		esc_kp_free(in, inlen, sec);
		return lost(ctx, k, "it answered with another type of message");
	}
	*rbuf = in;
	*rlen = inlen;
	*rsec = sec;
	return ESC_OK;
}

enum esc_err
esc_keeper_connect(struct esc_ctx *ctx, int fd, struct esc_keeper **out)
{
	struct esc_keeper *k = NULL;
	struct esc_kp_msg m, rep;
	unsigned char *in = NULL;
	const unsigned char *p, *end;
	size_t inlen = 0;
	int sec = 0;
	X509 *x;
	enum esc_err r;

	if (out == NULL || fd < 0) {
		if (fd >= 0)
			close(fd);
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_connect: bad argument");
	}
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		close(fd);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	k->remote = 1;
	k->fd = fd;
	esc_kp_init(&m, ESC_KP_HELLO, 0);
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		goto out;
	if ((k->ca_cert = field_cert(&rep.f[ESC_KP_T_CA])) == NULL ||
	    (k->transport_cert = field_cert(&rep.f[ESC_KP_T_TRANSPORT])) == NULL ||
	    (k->chain = sk_X509_new_null()) == NULL) {
		r = lost(ctx, k, "its greeting does not hold the CA's certificates");
		goto out;
	}
	p = rep.f[ESC_KP_T_CHAIN].p;
	for (end = p + rep.f[ESC_KP_T_CHAIN].len; p < end;) {
		if ((x = d2i_X509(NULL, &p, end - p)) == NULL || !sk_X509_push(k->chain, x)) {
			X509_free(x);
			r = lost(ctx, k, "its greeting holds a malformed chain");
			goto out;
		}
	}
	*out = k;
	k = NULL; /* transferred */
	r = ESC_OK;
out:
	ERR_clear_error();
	esc_kp_free(in, inlen, sec);
	esc_keeper_free(k);
	return r;
}

static enum esc_err
remote_issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct profile_def *def, const X509_NAME *subject,
	     EVP_PKEY *pub, const GENERAL_NAMES *san, X509 **out)
{
	unsigned char *name = NULL, *spki = NULL, *gens = NULL, *in = NULL;
	size_t namelen = 0, spkilen = 0, genslen = 0, inlen = 0;
	struct esc_kp_msg m, rep;
	int sec = 0;
	X509 *x = NULL;
	enum esc_err r;

	if ((name = DER_OF(i2d_X509_NAME, subject, &namelen)) == NULL ||
	    (spki = esc_pubkey_spki(pub, &spkilen)) == NULL ||
	    (san != NULL && sk_GENERAL_NAME_num(san) > 0 &&
	     (gens = DER_OF(i2d_GENERAL_NAMES, san, &genslen)) == NULL)) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the certificate request for the keeper");
		goto out;
	}
	/* The profile's name, never its rules: the keeper applies its own table. */
	esc_kp_init(&m, ESC_KP_ISSUE, 0);
	esc_kp_set(&m, ESC_KP_T_PROFILE, def->p.name, strlen(def->p.name));
	esc_kp_set(&m, ESC_KP_T_SUBJECT, name, namelen);
	esc_kp_set(&m, ESC_KP_T_SPKI, spki, spkilen);
	if (gens != NULL)
		esc_kp_set(&m, ESC_KP_T_SAN, gens, genslen);
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		goto out;
	if ((x = field_cert(&rep.f[ESC_KP_T_CERT])) == NULL || X509_get0_pubkey(x) == NULL ||
	    EVP_PKEY_eq(X509_get0_pubkey(x), pub) != 1) {
		r = lost(ctx, k, "it answered a certificate that is not the one asked for");
		goto out;
	}
	*out = x;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	ERR_clear_error();
	X509_free(x);
	OPENSSL_free(name);
	OPENSSL_free(spki);
	OPENSSL_free(gens);
	esc_kp_free(in, inlen, sec);
	return r;
}

static enum esc_err
remote_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env, size_t envlen,
		      EVP_PKEY **key)
{
	struct esc_kp_msg m, rep;
	unsigned char *in = NULL;
	size_t inlen = 0;
	int sec = 0;
	EVP_PKEY *pkey;
	enum esc_err r;

	esc_kp_init(&m, ESC_KP_OPEN_TRANSPORT, 0);
	esc_kp_set(&m, ESC_KP_T_ENVELOPE, env, envlen);
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		return r;
	/* The reply was read into the secure heap (its type says it holds a key) and is wiped when freed. */
	if ((pkey = esc_ctx_pkcs8_decode(ctx, rep.f[ESC_KP_T_PKCS8].p, rep.f[ESC_KP_T_PKCS8].len)) == NULL) {
		ERR_clear_error();
		r = lost(ctx, k, "it answered something else than a PKCS#8 private key");
	} else {
		*key = pkey;
		r = ESC_OK;
	}
	esc_kp_free(in, inlen, sec);
	return r;
}

/* key as PKCS#8 DER in the secure heap (*der, *len; free with OPENSSL_secure_clear_free). */
static enum esc_err
pkcs8_secure(struct esc_ctx *ctx, EVP_PKEY *key, unsigned char **der, size_t *len)
{
	PKCS8_PRIV_KEY_INFO *inf = EVP_PKEY2PKCS8(key);
	unsigned char *buf = NULL, *q;
	int n;

	if (inf == NULL || (n = i2d_PKCS8_PRIV_KEY_INFO(inf, NULL)) <= 0 ||
	    (buf = OPENSSL_secure_malloc((size_t)n)) == NULL) {
		PKCS8_PRIV_KEY_INFO_free(inf);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode a private key as PKCS#8");
	}
	q = buf;
	i2d_PKCS8_PRIV_KEY_INFO(inf, &q);
	PKCS8_PRIV_KEY_INFO_free(inf); /* cleanses its key octets */
	*der = buf;
	*len = (size_t)n;
	return ESC_OK;
}

static enum esc_err
remote_seal(struct esc_ctx *ctx, struct esc_keeper *k, EVP_PKEY *key, X509 *cert, X509 *recipient, unsigned char **der,
	    size_t *derlen)
{
	unsigned char *p8 = NULL, *certder = NULL, *rcpt = NULL, *in = NULL, *copy = NULL;
	size_t p8len = 0, certlen = 0, rcptlen = 0, inlen = 0;
	struct esc_kp_msg m, rep;
	int sec = 0;
	enum esc_err r;

	if ((r = pkcs8_secure(ctx, key, &p8, &p8len)) != ESC_OK)
		goto out;
	if ((certder = DER_OF(i2d_X509, cert, &certlen)) == NULL ||
	    (rcpt = DER_OF(i2d_X509, recipient, &rcptlen)) == NULL) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode a certificate for the keeper");
		goto out;
	}
	esc_kp_init(&m, ESC_KP_SEAL_KEY, 0);
	esc_kp_set(&m, ESC_KP_T_PKCS8, p8, p8len);
	esc_kp_set(&m, ESC_KP_T_CERT, certder, certlen);
	esc_kp_set(&m, ESC_KP_T_RECIPIENT, rcpt, rcptlen);
	if ((r = call(ctx, k, &m, 1, &rep, &in, &inlen, &sec)) != ESC_OK)
		goto out;
	if ((copy = malloc(rep.f[ESC_KP_T_ENVELOPE].len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(copy, rep.f[ESC_KP_T_ENVELOPE].p, rep.f[ESC_KP_T_ENVELOPE].len);
	*der = copy;
	*derlen = rep.f[ESC_KP_T_ENVELOPE].len;
	r = ESC_OK;
out:
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8len);
	OPENSSL_free(certder);
	OPENSSL_free(rcpt);
	esc_kp_free(in, inlen, sec);
	return r;
}

static enum esc_err
remote_status(struct esc_ctx *ctx, struct esc_keeper *k)
{
	struct esc_kp_msg m, rep;
	unsigned char *rbuf = NULL;
	size_t rlen = 0;
	int rsec = 0;
	enum esc_err r;

	esc_kp_init(&m, ESC_KP_STATUS, 0);
	if ((r = call(ctx, k, &m, 0, &rep, &rbuf, &rlen, &rsec)) != ESC_OK)
		return r;
	esc_kp_free(rbuf, rlen, rsec);
	return ESC_OK;
}

static enum esc_err
remote_release(struct esc_ctx *ctx, struct esc_keeper *k, long long id)
{
	struct esc_kp_msg m, rep;
	unsigned char idb[8], *in = NULL;
	size_t inlen = 0;
	int sec = 0;
	enum esc_err r;

	if (id <= 0)
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "there is no recovery request %lld", id);
	esc_kp_put64(idb, (uint64_t)id);
	esc_kp_init(&m, ESC_KP_RELEASE, 0);
	esc_kp_set(&m, ESC_KP_T_ID, idb, sizeof(idb));
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) == ESC_OK)
		esc_kp_free(in, inlen, sec);
	return r;
}

/*
 * KRA_PROVE: the account's name, the KRA's, the challenge and its answer;
 * the keeper re-reads the account and decides (esc_kra_enroll_prove in its
 * own database).  The reply is the certificate; out is then read back from
 * st (the KRA the keeper registered).
 */
static enum esc_err
remote_kra_prove(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_account *actor,
		 const char *name, long long id, const unsigned char *secret, size_t secret_len, struct esc_kra *out,
		 unsigned char **cert, size_t *cert_len)
{
	struct esc_kp_msg m, rep;
	struct esc_kra *kras = NULL;
	unsigned char idb[8], *in = NULL, *der = NULL;
	size_t inlen = 0, n = 0, i;
	int sec = 0;
	enum esc_err r;

	if (actor == NULL || name == NULL || secret == NULL || secret_len == 0 || id <= 0)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a KRA's proof needs an account, a name, a challenge and its answer");
	esc_kp_put64(idb, (uint64_t)id);
	esc_kp_init(&m, ESC_KP_KRA_PROVE, 0);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, esc_account_name(actor), strlen(esc_account_name(actor)));
	esc_kp_set(&m, ESC_KP_T_NAME, name, strlen(name));
	esc_kp_set(&m, ESC_KP_T_ID, idb, sizeof(idb));
	esc_kp_set(&m, ESC_KP_T_SECRET, secret, secret_len);
	/* The answer is a secret until it is used up: the request is framed in the secure heap. */
	if ((r = call(ctx, k, &m, 1, &rep, &in, &inlen, &sec)) != ESC_OK)
		return r;
	if ((der = malloc(rep.f[ESC_KP_T_CERT].len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(der, rep.f[ESC_KP_T_CERT].p, rep.f[ESC_KP_T_CERT].len);
	if (out != NULL) {
		if ((r = esc_kra_list(ctx, st, &kras, &n)) != ESC_OK)
			goto out;
		for (i = 0; i < n && strcmp(kras[i].name, name) != 0; i++)
			;
		if (i == n) {
			r = esc_error(ctx, ESC_ERR_STATE, "KRA '%.64s' was certified but is not registered", name);
			goto out;
		}
		*out = kras[i];
	}
	*cert = der;
	*cert_len = rep.f[ESC_KP_T_CERT].len;
	der = NULL; /* transferred */
	r = ESC_OK;
out:
	free(der);
	free(kras);
	esc_kp_free(in, inlen, sec);
	return r;
}

static enum esc_err
remote_sign_crl(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by, int days, X509_CRL **out)
{
	struct esc_kp_msg m, rep;
	unsigned char db[4], *in = NULL;
	const unsigned char *p;
	size_t inlen = 0;
	int sec = 0;
	X509_CRL *crl = NULL;
	enum esc_err r;

	if (days < 0 || days > 366)
		return esc_error(ctx, ESC_ERR_USAGE, "a CRL is valid for 1..366 days");
	esc_kp_put32(db, (uint32_t)days);
	esc_kp_init(&m, ESC_KP_SIGN_CRL, 0);
	esc_kp_set(&m, ESC_KP_T_DAYS, db, sizeof(db));
	/* The account's name only: the keeper reads its roles itself. */
	if (by != NULL)
		esc_kp_set(&m, ESC_KP_T_ACCOUNT, esc_account_name(by), strlen(esc_account_name(by)));
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		return r;
	p = rep.f[ESC_KP_T_CRL].p;
	if ((crl = d2i_X509_CRL(NULL, &p, (long)rep.f[ESC_KP_T_CRL].len)) == NULL ||
	    p != rep.f[ESC_KP_T_CRL].p + rep.f[ESC_KP_T_CRL].len) {
		ERR_clear_error();
		X509_CRL_free(crl);
		r = lost(ctx, k, "it answered something else than a CRL");
	} else {
		*out = crl;
		r = ESC_OK;
	}
	esc_kp_free(in, inlen, sec);
	return r;
}

static enum esc_err
remote_checkpoint(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by, long long events,
		  long long seconds, long long *event_id)
{
	struct esc_kp_msg m, rep;
	unsigned char eb[4], sb[4], fb[4], *in = NULL;
	size_t inlen = 0;
	int sec = 0;
	enum esc_err r;

	if (events < 0 || seconds < 0 || events > UINT32_MAX || seconds > UINT32_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "checkpoint thresholds out of range");
	esc_kp_put32(eb, (uint32_t)events);
	esc_kp_put32(sb, (uint32_t)seconds);
	esc_kp_put32(fb, 0);
	esc_kp_init(&m, ESC_KP_CHECKPOINT, 0);
	esc_kp_set(&m, ESC_KP_T_EVENTS, eb, 4);
	esc_kp_set(&m, ESC_KP_T_SECONDS, sb, 4);
	esc_kp_set(&m, ESC_KP_T_FINAL, fb, 4);
	if (by != NULL)
		esc_kp_set(&m, ESC_KP_T_ACCOUNT, esc_account_name(by), strlen(esc_account_name(by)));
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		return r;
	*event_id = (long long)esc_kp_get64(&rep, ESC_KP_T_EVENT_ID);
	esc_kp_free(in, inlen, sec);
	return ESC_OK;
}

/* The reply's TALLY: five numbers of 4 bytes, then one of 8. */
#define TALLY_LEN (5 * 4 + 8)

static uint32_t
get32_at(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/*
 * The SKIPS field (id TAB code TAB reason, a line each) into out's skips;
 * -1 if it is not what the keeper writes.
 */
static int
skips_parse(const unsigned char *p, size_t len, struct esc_reseal_batch *out)
{
	const unsigned char *end = p + len, *nl, *t1, *t2;
	size_t n = 0, cap = 0;

	for (const unsigned char *q = p; q < end; q++)
		cap += *q == '\n';
	if (cap == 0)
		return len == 0 ? 0 : -1;
	if ((out->skips = calloc(cap, sizeof(*out->skips))) == NULL)
		return -1;
	for (; p < end; p = nl + 1) {
		struct esc_reseal_skip *s = &out->skips[n];
		long code;

		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL ||
		    (t1 = memchr(p, '\t', (size_t)(nl - p))) == NULL ||
		    (t2 = memchr(t1 + 1, '\t', (size_t)(nl - t1 - 1))) == NULL || t1 - p != ESC_RECORD_ID_LEN ||
		    t2 - t1 - 1 < 2 || t2 - t1 - 1 > 4)
			return -1;
		memcpy(s->id, p, ESC_RECORD_ID_LEN);
		s->id[ESC_RECORD_ID_LEN] = '\0';
		code = strtol((const char *)t1 + 1, NULL, 10);
		s->code = code < 0 && code > -100 ? (enum esc_err)code : ESC_ERR_TAMPERED;
		snprintf(s->reason, sizeof(s->reason), "%.*s", (int)(nl - t2 - 1), (const char *)t2 + 1);
		n++;
	}
	out->skipped = n;
	return 0;
}

/*
 * RESEAL: the account's name (the keeper reads its roles itself), the
 * batch size and where the previous batch ended.  The reply counts what
 * the keeper did and names the records it left as they were.
 */
static enum esc_err
remote_reseal(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by, const char *after, size_t n,
	      struct esc_reseal_batch *out)
{
	struct esc_kp_msg m, rep;
	struct esc_reseal_batch b;
	unsigned char nb[4], *in = NULL;
	const unsigned char *t;
	size_t inlen = 0;
	int sec = 0;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	if (by == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "the keeper process re-seals records for an administrator only");
	if (n < 1 || n > ESC_RESEAL_BATCH_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-seal batch is 1..%d records", ESC_RESEAL_BATCH_MAX);
	if (after != NULL && *after != '\0' && strlen(after) != ESC_RECORD_ID_LEN)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-seal batch starts after a record id (a UUID)");
	esc_kp_put32(nb, (uint32_t)n);
	esc_kp_init(&m, ESC_KP_RESEAL, 0);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, esc_account_name(by), strlen(esc_account_name(by)));
	esc_kp_set(&m, ESC_KP_T_COUNT, nb, sizeof(nb));
	if (after != NULL && *after != '\0')
		esc_kp_set(&m, ESC_KP_T_RECORD, after, strlen(after));
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		return r;
	t = rep.f[ESC_KP_T_TALLY].p;
	b.resealed = get32_at(t);
	b.to = (int)get32_at(t + 8);
	b.from_low = (int)get32_at(t + 12);
	b.from_high = (int)get32_at(t + 16);
	b.remaining = (long long)(((uint64_t)get32_at(t + 20) << 32) | get32_at(t + 24));
	if (rep.f[ESC_KP_T_RECORD].p != NULL) {
		memcpy(b.last, rep.f[ESC_KP_T_RECORD].p, ESC_RECORD_ID_LEN);
		b.last[ESC_RECORD_ID_LEN] = '\0';
	}
	if ((rep.f[ESC_KP_T_SKIPS].p != NULL &&
	     skips_parse(rep.f[ESC_KP_T_SKIPS].p, rep.f[ESC_KP_T_SKIPS].len, &b) != 0) ||
	    b.skipped != get32_at(t + 4) || b.resealed > n || b.skipped > n) {
		r = lost(ctx, k, "its re-seal reply does not add up");
		goto out;
	}
	*out = b;
	memset(&b, 0, sizeof(b)); /* transferred */
	r = ESC_OK;
out:
	esc_reseal_batch_clear(&b);
	esc_kp_free(in, inlen, sec);
	return r;
}

/* REWRAP_OPEN: the administrator's name and the record id; the reply is the opened record and its hash. */
static enum esc_err
remote_rewrap_open(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_account *by, const char *id,
		   unsigned char **content, size_t *contentlen, unsigned char sha[32])
{
	struct esc_kp_msg m, rep;
	unsigned char *in = NULL, *c = NULL;
	size_t inlen = 0;
	int sec = 0;
	enum esc_err r;

	if (by == NULL)
		return esc_error(ctx, ESC_ERR_DENIED,
				 "the keeper process opens records for a re-wrap for an "
				 "administrator only");
	if (strlen(id) != ESC_RECORD_ID_LEN)
		return esc_error(ctx, ESC_ERR_USAGE, "a record id is a UUID");
	esc_kp_init(&m, ESC_KP_REWRAP_OPEN, 0);
	esc_kp_set(&m, ESC_KP_T_ACCOUNT, esc_account_name(by), strlen(esc_account_name(by)));
	esc_kp_set(&m, ESC_KP_T_RECORD, id, strlen(id));
	if ((r = call(ctx, k, &m, 0, &rep, &in, &inlen, &sec)) != ESC_OK)
		return r;
	if ((c = malloc(rep.f[ESC_KP_T_ENVELOPE].len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(c, rep.f[ESC_KP_T_ENVELOPE].p, rep.f[ESC_KP_T_ENVELOPE].len);
	memcpy(sha, rep.f[ESC_KP_T_DIGEST].p, 32);
	*content = c;
	*contentlen = rep.f[ESC_KP_T_ENVELOPE].len;
	r = ESC_OK;
out:
	esc_kp_free(in, inlen, sec);
	return r;
}

/* ---- the keeper process's end ---- */

/* An encoded reply, waiting to be written. */
struct serve_reply {
	unsigned char *buf;
	size_t len;
	int secure;
};

/*
 * The account a request names, as the keeper's database has it now:
 * enabled, with its roles.  The worker's view of it (roles, a session) is
 * not taken on trust.  Errors: DENIED (unknown or disabled), DB.
 */
static enum esc_err
account_reread(struct esc_ctx *ctx, struct esc_store *st, const struct esc_kp_field *f, struct esc_account **out)
{
	char name[65];
	const char *v[1] = {name};
	PGresult *res = NULL;
	enum esc_err r;

	if (field_text(f, name, sizeof(name)) != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper request: an account name that is not text");
	if ((r = esc_store_exec(ctx, st,
				"SELECT id, name, roles, coalesce(kra_id, 0) FROM accounts WHERE name = $1 AND NOT "
				"disabled",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1)
		r = esc_error(ctx, ESC_ERR_DENIED, "account '%.64s' is unknown or disabled", name);
	else
		r = esc_account_make(ctx, strtoll(PQgetvalue(res, 0, 0), NULL, 10), PQgetvalue(res, 0, 1),
				     PQgetvalue(res, 0, 2), strtoll(PQgetvalue(res, 0, 3), NULL, 10), out);
	PQclear(res);
	return r;
}

static enum esc_err
serve_hello(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_kp_msg *m, struct serve_reply *out)
{
	unsigned char *ca = NULL, *tr = NULL, *chain = NULL, *q;
	size_t calen = 0, trlen = 0, chainlen = 0;
	struct esc_kp_msg rep;
	int i, n;
	enum esc_err r;

	for (i = 0; i < sk_X509_num(k->chain); i++)
		if ((n = i2d_X509(sk_X509_value(k->chain, i), NULL)) > 0)
			chainlen += (size_t)n;
	if ((ca = DER_OF(i2d_X509, k->ca_cert, &calen)) == NULL ||
	    (tr = DER_OF(i2d_X509, k->transport_cert, &trlen)) == NULL ||
	    (chain = OPENSSL_malloc(chainlen + 1)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (q = chain, i = 0; i < sk_X509_num(k->chain); i++)
		i2d_X509(sk_X509_value(k->chain, i), &q);
	esc_kp_init(&rep, ESC_KP_HELLO | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_CA, ca, calen);
	esc_kp_set(&rep, ESC_KP_T_TRANSPORT, tr, trlen);
	esc_kp_set(&rep, ESC_KP_T_CHAIN, chain, chainlen);
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	OPENSSL_free(ca);
	OPENSSL_free(tr);
	OPENSSL_free(chain);
	return r;
}

/*
 * ISSUE: the keeper's sign_certificate.  The profile is looked up in the
 * keeper's own table and must be one enrollees may use; key type,
 * validity, key usages and extensions are that profile's; alternative
 * names are derived again from the subject (profiles with email_san) or
 * refused (the others).  What the worker checked in its transaction (the
 * one-time password or client certificate, one key per subject) is its.
 */
static enum esc_err
serve_issue(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_kp_msg *m, struct serve_reply *out)
{
	const struct esc_profile *p;
	const struct profile_def *def;
	char profile[33];
	const unsigned char *q;
	X509_NAME *subject = NULL;
	EVP_PKEY *pub = NULL;
	GENERAL_NAMES *san = NULL;
	unsigned char *want = NULL, *der = NULL;
	size_t wantlen = 0, derlen = 0;
	struct esc_kp_msg rep;
	X509 *x = NULL;
	enum esc_err r;

	if (field_text(&m->f[ESC_KP_T_PROFILE], profile, sizeof(profile)) != 0 ||
	    (p = esc_profile_find(profile)) == NULL || (def = esc_profile_def(p)) == NULL) {
		r = esc_error(ctx, ESC_ERR_POLICY, "keeper: unknown certificate profile");
		goto out;
	}
	if (!def->p.enrollable) {
		r = esc_error(ctx, ESC_ERR_POLICY, "keeper: profile '%s' is not available for enrollment", def->p.name);
		goto out;
	}
	if (m->f[ESC_KP_T_DAYS].p != NULL && esc_kp_get32(m, ESC_KP_T_DAYS) != (uint32_t)def->p.days) {
		r = esc_error(ctx, ESC_ERR_POLICY, "keeper: profile '%s' certificates are valid %d days, no other",
			      def->p.name, def->p.days);
		goto out;
	}
	q = m->f[ESC_KP_T_SUBJECT].p;
	if ((subject = d2i_X509_NAME(NULL, &q, (long)m->f[ESC_KP_T_SUBJECT].len)) == NULL ||
	    q != m->f[ESC_KP_T_SUBJECT].p + m->f[ESC_KP_T_SUBJECT].len || X509_NAME_entry_count(subject) == 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper: the subject is not one non-empty DER name");
		goto out;
	}
	/* With the keeper's kept decoder: d2i_PUBKEY would create one (≈0.2 ms) for every certificate. */
	if ((pub = spki_decode(k, m->f[ESC_KP_T_SPKI].p, m->f[ESC_KP_T_SPKI].len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper: the public key is not one DER SubjectPublicKeyInfo");
		goto out;
	}
	if (def->email_san) {
		if ((r = esc_profile_email_sans(ctx, subject, &san)) != ESC_OK)
			goto out;
		if (sk_GENERAL_NAME_num(san) > 0 && (want = DER_OF(i2d_GENERAL_NAMES, san, &wantlen)) == NULL) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
	}
	/* The names asked for must be exactly those the profile derives (none for most). */
	if (m->f[ESC_KP_T_SAN].p != NULL ? want == NULL || wantlen != m->f[ESC_KP_T_SAN].len ||
						   memcmp(want, m->f[ESC_KP_T_SAN].p, wantlen) != 0
					 : want != NULL) {
		r = esc_error(ctx, ESC_ERR_POLICY,
			      "keeper: the alternative names asked for are not those profile '%s' derives from the "
			      "subject",
			      def->p.name);
		goto out;
	}
	/* The key's bytes as the worker sent them (and pub was decoded from): not encoded again. */
	if ((r = issue(ctx, k, def, subject, pub, m->f[ESC_KP_T_SPKI].p, m->f[ESC_KP_T_SPKI].len, san, &x)) != ESC_OK)
		goto out;
	if ((der = DER_OF(i2d_X509, x, &derlen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	esc_kp_init(&rep, ESC_KP_ISSUE | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_CERT, der, derlen);
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	ERR_clear_error();
	X509_NAME_free(subject);
	EVP_PKEY_free(pub);
	GENERAL_NAMES_free(san);
	OPENSSL_free(want);
	OPENSSL_free(der);
	X509_free(x);
	return r;
}

static enum esc_err
serve_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_kp_msg *m, struct serve_reply *out)
{
	const struct esc_profile *p;
	struct esc_kp_msg rep;
	unsigned char *p8 = NULL;
	size_t p8len = 0;
	char profile[33];
	EVP_PKEY *key = NULL;
	enum esc_err r;

	if (m->f[ESC_KP_T_PROFILE].p != NULL &&
	    (field_text(&m->f[ESC_KP_T_PROFILE], profile, sizeof(profile)) != 0 ||
	     (p = esc_profile_find(profile)) == NULL || !p->archival || !p->enrollable))
		return esc_error(ctx, ESC_ERR_POLICY, "keeper: envelopes are opened only for archival profiles");
	/* The PKCS#8 bytes as decrypted and checked (one structure, a key): not encoded again (0.14 ms). */
	if ((r = open_transport(ctx, k, m->f[ESC_KP_T_ENVELOPE].p, m->f[ESC_KP_T_ENVELOPE].len, &key, &p8, &p8len)) !=
	    ESC_OK)
		goto out;
	esc_kp_init(&rep, ESC_KP_OPEN_TRANSPORT | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_PKCS8, p8, p8len);
	if ((r = esc_kp_encode(ctx, &rep, 1, &out->buf, &out->len)) == ESC_OK)
		out->secure = 1;
out:
	if (p8 != NULL)
		OPENSSL_secure_clear_free(p8, p8len);
	EVP_PKEY_free(key);
	return r;
}

static enum esc_err
serve_seal_key(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_kp_msg *m, struct serve_reply *out)
{
	struct esc_kp_msg rep;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL, *rcpt = NULL;
	unsigned char *der = NULL;
	size_t derlen = 0;
	enum esc_err r;

	/* The key was read into the secure heap with its frame; the decoder's copy is OpenSSL's, freed below. */
	if ((key = esc_ctx_pkcs8_decode(ctx, m->f[ESC_KP_T_PKCS8].p, m->f[ESC_KP_T_PKCS8].len)) == NULL ||
	    (cert = field_cert(&m->f[ESC_KP_T_CERT])) == NULL ||
	    (rcpt = field_cert(&m->f[ESC_KP_T_RECIPIENT])) == NULL) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_BAD_INPUT,
			      "keeper: a sealed key needs a PKCS#8 key and two DER certificates");
		goto out;
	}
	if ((r = esc_keeper_seal_server_key(ctx, k, key, cert, rcpt, &der, &derlen)) != ESC_OK)
		goto out;
	esc_kp_init(&rep, ESC_KP_SEAL_KEY | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_ENVELOPE, der, derlen);
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	EVP_PKEY_free(key);
	X509_free(cert);
	X509_free(rcpt);
	free(der);
	return r;
}

static enum esc_err
serve_release(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_kp_msg *m,
	      struct serve_reply *out)
{
	uint64_t id = esc_kp_get64(m, ESC_KP_T_ID);
	struct esc_kp_msg rep;
	enum esc_err r;

	if (st == NULL)
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	if (id == 0 || id > INT64_MAX)
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "keeper: no such recovery request");
	/* esc_recovery_release reads and locks the request in the keeper's database: only an approved one goes. */
	if ((r = esc_keeper_release(ctx, k, st, (long long)id)) != ESC_OK)
		return r;
	esc_kp_init(&rep, ESC_KP_RELEASE | ESC_KP_REPLY, m->seq);
	return esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
}

/* KRA_PROVE: the account re-read here; the challenge read, checked and used up in the keeper's database. */
static enum esc_err
serve_kra_prove(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_kp_msg *m,
		struct serve_reply *out)
{
	struct esc_account *by = NULL;
	struct esc_kp_msg rep;
	unsigned char *cert = NULL;
	size_t cert_len = 0;
	uint64_t id = esc_kp_get64(m, ESC_KP_T_ID);
	char name[65];
	enum esc_err r;

	if (st == NULL)
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	if (field_text(&m->f[ESC_KP_T_NAME], name, sizeof(name)) != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper request: a KRA name that is not text");
	if (id == 0 || id > INT64_MAX)
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "keeper: no such challenge");
	if ((r = account_reread(ctx, st, &m->f[ESC_KP_T_ACCOUNT], &by)) != ESC_OK ||
	    (r = esc_keeper_kra_prove(ctx, k, st, by, name, (long long)id, m->f[ESC_KP_T_SECRET].p,
				      m->f[ESC_KP_T_SECRET].len, NULL, &cert, &cert_len)) != ESC_OK)
		goto out;
	esc_kp_init(&rep, ESC_KP_KRA_PROVE | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_CERT, cert, cert_len);
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	esc_account_free(by);
	free(cert);
	return r;
}

static enum esc_err
serve_sign_crl(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_kp_msg *m,
	       struct serve_reply *out)
{
	struct esc_account *by = NULL;
	struct esc_kp_msg rep;
	X509_CRL *crl = NULL;
	unsigned char *der = NULL;
	size_t derlen = 0;
	uint32_t days;
	enum esc_err r;

	if (st == NULL)
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	if (m->f[ESC_KP_T_ACCOUNT].p != NULL && (r = account_reread(ctx, st, &m->f[ESC_KP_T_ACCOUNT], &by)) != ESC_OK)
		goto out;
	days = esc_kp_get32(m, ESC_KP_T_DAYS);
	/*
	 * A new CRL on demand only for an account whose role allows it: a
	 * worker serving an anonymous GET /crl gets the current one, newly made
	 * only when it is due (esc_crl_refresh), however often it asks.
	 */
	if (days > 0 && by == NULL) {
		r = esc_error(ctx, ESC_ERR_DENIED, "keeper: a CRL on demand needs an account that may sign one");
		goto out;
	}
	if ((r = esc_keeper_sign_crl(ctx, k, st, by, days > 366 ? -1 : (int)days, &crl)) != ESC_OK)
		goto out;
	if ((der = DER_OF(i2d_X509_CRL, crl, &derlen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	esc_kp_init(&rep, ESC_KP_SIGN_CRL | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_CRL, der, derlen);
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	esc_account_free(by);
	X509_CRL_free(crl);
	OPENSSL_free(der);
	return r;
}

/*
 * CHECKPOINT: for an account (re-read here; esc_audit_checkpoint_by checks
 * its role), or the service's if one is due by the thresholds given (FINAL:
 * if any event follows the newest checkpoint).  A checkpoint signs the
 * chain's end the keeper reads itself, so a worker's thresholds decide
 * only how often.  "Now, for the PIN holder" (no account, no threshold) is
 * the CLI's, never a worker's.
 */
static enum esc_err
serve_checkpoint(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_kp_msg *m,
		 struct serve_reply *out)
{
	long long events = esc_kp_get32(m, ESC_KP_T_EVENTS), seconds = esc_kp_get32(m, ESC_KP_T_SECONDS), id = 0;
	struct esc_account *by = NULL;
	struct esc_kp_msg rep;
	unsigned char idb[8];
	enum esc_err r;

	if (st == NULL)
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	if (esc_kp_get32(m, ESC_KP_T_FINAL) != 0) {
		events = 1;
		seconds = 0;
	}
	if (m->f[ESC_KP_T_ACCOUNT].p != NULL) {
		if ((r = account_reread(ctx, st, &m->f[ESC_KP_T_ACCOUNT], &by)) != ESC_OK)
			goto out;
	} else if (events == 0 && seconds == 0) {
		r = esc_error(ctx, ESC_ERR_DENIED, "keeper: a checkpoint on demand is signed for an account only");
		goto out;
	}
	if ((r = esc_keeper_checkpoint(ctx, k, st, by, events, seconds, &id)) != ESC_OK)
		goto out;
	esc_kp_put64(idb, (uint64_t)id);
	esc_kp_init(&rep, ESC_KP_CHECKPOINT | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_EVENT_ID, idb, sizeof(idb));
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	esc_account_free(by);
	return r;
}

/*
 * RESEAL: one batch of the storage re-seal job for an account re-read
 * here (esc_storage_reseal_batch checks that it is an administrator).  The
 * keeper picks the records itself in its own database; the worker says
 * only how many and after which record id.  Nothing of a record leaves
 * the keeper: the reply is counts, the last id and the skipped ids.
 */
static enum esc_err
serve_reseal(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_kp_msg *m,
	     struct serve_reply *out)
{
	struct esc_account *by = NULL;
	struct esc_reseal_batch b;
	struct esc_kp_msg rep;
	unsigned char tally[TALLY_LEN];
	char after[ESC_RECORD_ID_LEN + 1] = "", *skips = NULL;
	size_t used = 0, cap, i;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	if (st == NULL)
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	if (m->f[ESC_KP_T_RECORD].p != NULL && field_text(&m->f[ESC_KP_T_RECORD], after, sizeof(after)) != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper request: a record id that is not text");
	if ((r = account_reread(ctx, st, &m->f[ESC_KP_T_ACCOUNT], &by)) != ESC_OK ||
	    (r = esc_keeper_reseal(ctx, k, st, by, after, esc_kp_get32(m, ESC_KP_T_COUNT), &b)) != ESC_OK)
		goto out;
	/* A reason is cut to 160 bytes on the wire: a full batch of skips fits in its field. */
	cap = b.skipped * (ESC_RECORD_ID_LEN + 8 + 160) + 1;
	if (b.skipped > 0 && (skips = malloc(cap)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < b.skipped; i++) {
		char reason[161];
		size_t j;

		/* Text on one line: no TAB, no newline inside a reason. */
		snprintf(reason, sizeof(reason), "%.160s", b.skips[i].reason);
		for (j = 0; reason[j] != '\0'; j++)
			if (reason[j] == '\t' || reason[j] == '\n')
				reason[j] = ' ';
		used += (size_t)snprintf(skips + used, cap - used, "%s\t%d\t%s\n", b.skips[i].id, (int)b.skips[i].code,
					 reason);
	}
	esc_kp_put32(tally, (uint32_t)b.resealed);
	esc_kp_put32(tally + 4, (uint32_t)b.skipped);
	esc_kp_put32(tally + 8, (uint32_t)b.to);
	esc_kp_put32(tally + 12, (uint32_t)b.from_low);
	esc_kp_put32(tally + 16, (uint32_t)b.from_high);
	esc_kp_put64(tally + 20, (uint64_t)b.remaining);
	esc_kp_init(&rep, ESC_KP_RESEAL | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_TALLY, tally, sizeof(tally));
	if (b.last[0] != '\0')
		esc_kp_set(&rep, ESC_KP_T_RECORD, b.last, strlen(b.last));
	if (used > 0)
		esc_kp_set(&rep, ESC_KP_T_SKIPS, skips, used);
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	free(skips);
	esc_reseal_batch_clear(&b);
	esc_account_free(by);
	return r;
}

/* STATUS: is this connection's token session logged in?  An empty reply if so, else the error. */
static enum esc_err
serve_status(struct esc_ctx *ctx, struct esc_keeper *k, const struct esc_kp_msg *m, struct serve_reply *out)
{
	struct esc_kp_msg rep;
	enum esc_err r;

	if ((r = esc_keeper_status(ctx, k)) != ESC_OK)
		return r;
	esc_kp_init(&rep, ESC_KP_STATUS | ESC_KP_REPLY, m->seq);
	return esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
}

/*
 * REWRAP_OPEN: one record's outer layer opened for the KRA re-wrap, for an
 * account re-read here.  esc_rewrap_open_record checks what the request
 * means: an administrator, a record that needs a re-wrap (a record policy
 * is content with is never opened this way), the row its certificate's.
 * What leaves the keeper is the inner layer, still sealed to the KRA cards.
 */
static enum esc_err
serve_rewrap_open(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const struct esc_kp_msg *m,
		  struct serve_reply *out)
{
	struct esc_account *by = NULL;
	struct esc_kp_msg rep;
	unsigned char *content = NULL, sha[32];
	size_t contentlen = 0;
	char id[ESC_RECORD_ID_LEN + 1];
	enum esc_err r;

	if (st == NULL)
		return esc_error(ctx, ESC_ERR_DB_CONNECT, "keeper: its database connection is lost");
	if (field_text(&m->f[ESC_KP_T_RECORD], id, sizeof(id)) != 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper request: a record id that is not text");
	if ((r = account_reread(ctx, st, &m->f[ESC_KP_T_ACCOUNT], &by)) != ESC_OK ||
	    (r = esc_rewrap_open_record(ctx, st, k->tok, by, id, &content, &contentlen, sha)) != ESC_OK)
		goto out;
	esc_kp_init(&rep, ESC_KP_REWRAP_OPEN | ESC_KP_REPLY, m->seq);
	esc_kp_set(&rep, ESC_KP_T_ENVELOPE, content, contentlen);
	esc_kp_set(&rep, ESC_KP_T_DIGEST, sha, sizeof(sha));
	r = esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
out:
	free(content);
	esc_account_free(by);
	return r;
}

/* An ERROR reply to request seq: code and the context's message (never a secret). */
static enum esc_err
error_reply(struct esc_ctx *ctx, uint32_t seq, enum esc_err code, struct serve_reply *out)
{
	const char *msg = esc_ctx_errmsg(ctx);
	unsigned char cb[4];
	struct esc_kp_msg rep;
	size_t len;

	if (msg == NULL || *msg == '\0')
		msg = esc_strerror(code);
	len = strlen(msg) > 1024 ? 1024 : strlen(msg);
	esc_kp_put32(cb, (uint32_t)(int32_t)code);
	esc_kp_init(&rep, ESC_KP_ERROR, seq);
	esc_kp_set(&rep, ESC_KP_T_CODE, cb, 4);
	esc_kp_set(&rep, ESC_KP_T_MESSAGE, msg, len);
	return esc_kp_encode(ctx, &rep, 0, &out->buf, &out->len);
}

/* Decide on one frame: *out is the reply to write (an ERROR for anything refused). */
static enum esc_err
serve_one(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, const unsigned char *buf, size_t len,
	  struct serve_reply *out, enum esc_err *refused)
{
	struct esc_kp_msg m;
	uint32_t seq = len >= ESC_KP_HEADER ? (uint32_t)buf[2] << 24 | (uint32_t)buf[3] << 16 | (uint32_t)buf[4] << 8 |
						      (uint32_t)buf[5]
					    : 0;
	const char *violation = NULL;
	enum esc_err r;

	/* What a healthy worker never sends: logged as a warning, refused, and the connection goes on. */
	if ((r = esc_kp_decode(ctx, buf, len, &m)) != ESC_OK)
		violation = "malformed";
	else if (m.type & ESC_KP_REPLY)
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message '%s' is not a request", esc_kp_type_name(m.type)),
		violation = "not a request";
	else if ((r = esc_kp_next_seq(ctx, &k->served_seq, m.seq)) != ESC_OK)
		violation = "out of order or replayed";
	else if (!k->greeted && m.type != ESC_KP_HELLO)
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper request '%s' before the greeting",
			      esc_kp_type_name(m.type)),
		violation = "before the greeting";
	else if (k->greeted && m.type == ESC_KP_HELLO)
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "a second keeper greeting on one connection"),
		violation = "a second greeting";
	if (violation != NULL) {
		esc_log(ctx, ESC_LOG_WARN, "keeper: refused a request (%s): %s", violation, esc_ctx_errmsg(ctx));
		return error_reply(ctx, seq, r, out);
	}
	switch (m.type) {
	case ESC_KP_HELLO:
		if ((r = serve_hello(ctx, k, &m, out)) == ESC_OK)
			k->greeted = 1;
		break;
	case ESC_KP_ISSUE:
		r = serve_issue(ctx, k, &m, out);
		break;
	case ESC_KP_OPEN_TRANSPORT:
		r = serve_open_transport(ctx, k, &m, out);
		break;
	case ESC_KP_SEAL_KEY:
		r = serve_seal_key(ctx, k, &m, out);
		break;
	case ESC_KP_RELEASE:
		r = serve_release(ctx, k, st, &m, out);
		break;
	case ESC_KP_SIGN_CRL:
		r = serve_sign_crl(ctx, k, st, &m, out);
		break;
	case ESC_KP_KRA_PROVE:
		r = serve_kra_prove(ctx, k, st, &m, out);
		break;
	case ESC_KP_CHECKPOINT:
		r = serve_checkpoint(ctx, k, st, &m, out);
		break;
	case ESC_KP_RESEAL:
		r = serve_reseal(ctx, k, st, &m, out);
		break;
	case ESC_KP_STATUS:
		r = serve_status(ctx, k, &m, out);
		break;
	case ESC_KP_REWRAP_OPEN:
		r = serve_rewrap_open(ctx, k, st, &m, out);
		break;
	default:
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper message '%s' is not a request", esc_kp_type_name(m.type));
		esc_log(ctx, ESC_LOG_WARN, "keeper: refused a request: %s", esc_ctx_errmsg(ctx));
		break;
	}
	if (r == ESC_OK)
		return ESC_OK;
	*refused = r;
	esc_log(ctx, ESC_LOG_INFO, "keeper: %s refused: %s", esc_kp_type_name(m.type), esc_ctx_errmsg(ctx));
	return error_reply(ctx, m.seq, r, out);
}

/* Did a request fail because a connection of the keeper's is lost (database, token)? */
static int
connection_lost(enum esc_err e)
{
	switch (e) {
	case ESC_ERR_DB_CONNECT:
	case ESC_ERR_PKCS11:
	case ESC_ERR_TOKEN_NOT_FOUND:
	case ESC_ERR_MODULE:
	case ESC_ERR_KEY_NOT_FOUND:
	case ESC_ERR_PIN_INCORRECT:
	case ESC_ERR_PIN_LOCKED:
		return 1;
	default:
		return 0;
	}
}

enum esc_err
esc_keeper_serve(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, int fd)
{
	unsigned char *buf = NULL;
	size_t len = 0;
	const char *why = NULL;
	int sec = 0, rc;
	enum esc_err r;

	if (k == NULL || k->remote || fd < 0)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_keeper_serve: bad argument");
	for (;;) {
		struct serve_reply out = {NULL, 0, 0};
		enum esc_err refused = ESC_OK;
		int w;

		if ((rc = frame_read(fd, -1, &buf, &len, &sec, &why)) == 1)
			return ESC_OK;
		if (rc < 0) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "keeper: connection ended: %s", why);
			esc_log(ctx, ESC_LOG_WARN, "%s", esc_ctx_errmsg(ctx));
			return r;
		}
		r = serve_one(ctx, k, st, buf, len, &out, &refused);
		esc_kp_free(buf, len, sec); /* a request holding a key is wiped here */
		buf = NULL;
		if (r != ESC_OK) {
			esc_log(ctx, ESC_LOG_ERROR, "keeper: cannot build a reply: %s", esc_ctx_errmsg(ctx));
			return esc_error(ctx, ESC_ERR_IO, "keeper: cannot build a reply");
		}
		w = write_full(fd, out.buf, out.len);
		esc_kp_free(out.buf, out.len, out.secure);
		if (w != 0)
			return esc_error(ctx, ESC_ERR_IO, "keeper: the worker closed the connection before its reply");
		/* Answered; the caller mends what is lost and calls again to go on with this connection. */
		if (connection_lost(refused))
			return refused;
	}
}
