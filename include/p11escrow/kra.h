/*
 * p11escrow — Key Recovery Agents.
 *
 * A KRA is a security officer's smart card (or HSM token) holding a
 * decryption key pair, never extractable, certified by the CA with the Key
 * Recovery Agent EKU: either generated on the card by p11escrow or adopted
 * (a decryption key the card held already, found by its RFC 7512 URI).
 * Probing the card decides the key's recipient form (RSA-OAEP with SHA-256
 * or SHA-1, PKCS#1 v1.5 where policy allows it, ECDH) and says why; policy
 * sets the smallest key (kra_min_rsa_bits, kra_min_ec_bits).  Archive
 * records are wrapped to sets of active KRAs; retiring one never orphans a
 * record.
 */
#ifndef P11ESCROW_KRA_H
#define P11ESCROW_KRA_H

#include <stddef.h>

#include <openssl/x509.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

struct esc_kra {
	long long id;
	char name[65];
	char state[16]; /* active, retired */
	char key_type[16];
	char recipient[24]; /* rsa-oaep-sha1, rsa-oaep-sha256, rsa-pkcs1v15, ecdh */
	char cert_serial[64];
	char not_after[32]; /* the certificate's, YYYY-MM-DDTHH:MM:SSZ */
	char token_label[33];
	char token_serial[17];
	char key_uri[512];
	long long records;	    /* records this KRA can recover */
	char origin[12];	    /* generated (on the card by p11escrow), adopted (the card held it) */
	char recipient_reason[304]; /* why that recipient form: the card's probe ("" before schema 11) */
	int days_left;		    /* whole days until not_after; negative once it has passed */
	int expired;		    /* the certificate's not_after has passed */
};

/*
 * Choose the recipient form of a key on card (its label, for messages)
 * from what the card decrypted (esc_token_probe_decrypt), and say why in
 * why[0..whylen).  p11escrow decrypts on a card through libp11, which
 * opens an RSA-OAEP envelope with raw RSA (CKM_RSA_X_509) and checks the
 * padding in software, and a PKCS#1 v1.5 one with CKM_RSA_PKCS.  So:
 * with raw RSA, RSA-OAEP with SHA-256 unless the card's own OAEP does
 * SHA-1 only (rsa-oaep-sha1, so that the card's OAEP opens the records
 * too); with PKCS#1 v1.5 alone, rsa-pkcs1v15 if allow_pkcs1v15 (the
 * policy kra_allow_rsa_pkcs1v15); an EC key, ecdh, if the card derives
 * (CKM_ECDH1_DERIVE or CKM_ECDH1_COFACTOR_DERIVE).  *recipient is static.
 * Errors: POLICY (PKCS#1 v1.5 only, not allowed: the message names the
 * policy), MECHANISM (nothing usable: the message says what the card did).
 */
enum esc_err esc_kra_choose_recipient(struct esc_ctx *ctx, const char *card, const struct esc_token_decrypt_probe *p,
				      int allow_pkcs1v15, const char **recipient, char *why,
				      size_t whylen) ESC_MUST_CHECK;

/*
 * Enroll a KRA: generate its key pair on kra_tok (logged in; decrypt-only,
 * sensitive, never extractable), have the CA (ca_tok, logged in) issue its
 * certificate, store the certificate on the card and register the KRA as
 * active.  actor must be an administrator.  The key type must meet policy
 * (kra_min_rsa_bits, kra_min_ec_bits) before anything is generated.  On
 * failure the generated key is removed again and nothing is registered.
 * Errors: DENIED, USAGE, EXISTS (name or card already enrolled), POLICY,
 * MECHANISM, PKCS11, STATE (no active CA), DB.
 */
enum esc_err esc_kra_enroll(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			    struct esc_token *ca_tok, struct esc_token *kra_tok, const char *name,
			    enum esc_key_type type, int days, struct esc_kra *out) ESC_MUST_CHECK;

/*
 * ---- Enrollment through the service, with proof of possession ----
 *
 * At the security officer's workstation, esc_kra_card_generate makes the
 * key pair on the card exactly as esc_kra_enroll does and describes it.
 * The service's esc_kra_enroll_begin checks that description and answers
 * a challenge: ESC_KRA_SECRET_LEN random bytes sealed (esc_envelope.h) to
 * the card's public key.  The workstation opens it on the card
 * (esc_kra_card_answer) and the service's esc_kra_enroll_prove compares
 * the answer; only then does the CA certify the key and the KRA get
 * registered.  Whatever fails, the workstation removes the key again
 * (esc_kra_card_discard).  docs/security-officer-guide.md has the steps.
 */
#define ESC_KRA_SECRET_LEN 32
#define ESC_KRA_CHALLENGE_SECONDS 300 /* a challenge is answered within this, once */
#define ESC_KRA_PUBLIC_KEY_MAX 2048   /* SubjectPublicKeyInfo DER: RSA-4096 takes 550 bytes */

/* A key pair generated on a KRA card for enrollment through the service. */
struct esc_kra_card;

/*
 * Generate the KRA key pair of KRA name on card (logged in): decrypt-only,
 * sensitive, never extractable, label "p11escrow KRA name"; read its public
 * key and its URI, probe what the card decrypts with it and choose its
 * recipient form (esc_kra_choose_recipient, PKCS#1 v1.5 never: the card
 * generated the key for OAEP).  *out borrows card, which must outlive it.  Nothing is registered.
 * Errors: USAGE (name, type), MECHANISM, PKCS11, CRYPTO, NOMEM; on an error
 * nothing stays on the card.
 */
enum esc_err esc_kra_card_generate(struct esc_ctx *ctx, struct esc_token *card, const char *name,
				   enum esc_key_type type, struct esc_kra_card **out) ESC_MUST_CHECK;
/*
 * Adopt the decryption key the card (logged in) holds already, named by
 * key_uri (its object= and/or id=; the token part selects nothing here):
 * one private key, CKA_DECRYPT (RSA) or CKA_DERIVE (EC), sensitive and not
 * extractable, RSA 2048/3072/4096 or EC P-256/P-384.  Probes what the card
 * decrypts with it (esc_token_probe_decrypt) and chooses its recipient
 * form (esc_kra_choose_recipient; PKCS#1 v1.5 is offered where it is all
 * the card does: enrollment refuses it unless policy allows).  *out
 * borrows card.  The key is never removed from the card, whatever happens
 * (esc_kra_card_discard refuses).
 * Errors: URI, KEY_NOT_FOUND, AMBIGUOUS, STATE (not a decryption key, not
 * sensitive, extractable), USAGE (key type), MECHANISM, PKCS11, CRYPTO.
 */
enum esc_err esc_kra_card_adopt(struct esc_ctx *ctx, struct esc_token *card, const char *key_uri,
				struct esc_kra_card **out) ESC_MUST_CHECK;

/*
 * What the service needs to know of the key (owned by k): "rsa3072"...,
 * "rsa-oaep-sha256"/"-sha1"/"rsa-pkcs1v15"/"ecdh", URI, "generated" or
 * "adopted", why the recipient form (the probe).
 */
const char *esc_kra_card_key_type(const struct esc_kra_card *k);
const char *esc_kra_card_recipient(const struct esc_kra_card *k);
const char *esc_kra_card_key_uri(const struct esc_kra_card *k);
const char *esc_kra_card_origin(const struct esc_kra_card *k);
const char *esc_kra_card_reason(const struct esc_kra_card *k);
/* The key's label on the card; what the probe found. */
const char *esc_kra_card_key_label(const struct esc_kra_card *k);
const struct esc_token_decrypt_probe *esc_kra_card_probe(const struct esc_kra_card *k);
/* An adopted key that was once extractable or not sensitive (imported): copies may exist off the card. */
int esc_kra_card_imported(const struct esc_kra_card *k);
/* The public key as SubjectPublicKeyInfo DER (owned by k). */
const unsigned char *esc_kra_card_public_key(const struct esc_kra_card *k, size_t *len);

/*
 * Open the challenge (an envelope of esc_kra_enroll_begin) with the card's
 * private key, on the card.  *secret is in secure memory: free it with
 * esc_envelope_plain_free.  Errors: as esc_envelope_open_with_key, PKCS11.
 */
enum esc_err esc_kra_card_answer(struct esc_ctx *ctx, struct esc_kra_card *k, const unsigned char *challenge,
				 size_t len, unsigned char **secret, size_t *secretlen) ESC_MUST_CHECK;

/*
 * The KRA certificate the service issued (DER), checked to certify the
 * card's key (BAD_INPUT, MISMATCH), then stored on the card next to the
 * key.  *stored is 1 if the card took it, 0 if it refused (a read-only
 * card, or one flagged CKF_WRITE_PROTECTED, which is not asked: the service
 * keeps the certificate anyway; the reason is the context's message).  Errors: BAD_INPUT, MISMATCH, NOMEM.
 */
enum esc_err esc_kra_card_store_cert(struct esc_ctx *ctx, struct esc_kra_card *k, const unsigned char *der, size_t len,
				     int *stored) ESC_MUST_CHECK;

/*
 * Remove the generated key pair from the card again (the enrollment
 * failed).  Errors: STATE (an adopted key: never removed), PKCS11.
 */
enum esc_err esc_kra_card_discard(struct esc_ctx *ctx, struct esc_kra_card *k) ESC_MUST_CHECK;

/* Free k (the key stays on the card unless discarded); accepts NULL. */
void esc_kra_card_free(struct esc_kra_card *k);

/* A KRA card's key as a workstation describes it to the service (POST /api/v1/kras). */
struct esc_kra_offer {
	const char *name;
	const char *token_label;	 /* the card's label, 1..32 bytes */
	const char *token_serial;	 /* its serial, 1..16 bytes */
	const char *key_uri;		 /* pkcs11: URI of the key, no PIN or module attribute */
	const char *key_type;		 /* rsa2048, rsa3072, rsa4096, ec-p256, ec-p384 */
	const char *recipient;		 /* rsa-oaep-sha256, rsa-oaep-sha1, rsa-pkcs1v15 (RSA), ecdh (EC) */
	const unsigned char *public_key; /* SubjectPublicKeyInfo DER of that type */
	size_t public_key_len;
	int days;	    /* the certificate's validity, 1..36500 */
	const char *origin; /* generated (NULL reads so) or adopted */
	const char *reason; /* why that recipient: the card's probe, NULL or 1..300 printable characters */
};

/*
 * Check an offer and answer a challenge for it: name free, card not an
 * active KRA, public key no KRA's key yet, key type allowed and of the size
 * policy asks (kra_min_rsa_bits, kra_min_ec_bits), public key well-formed
 * and of that type, recipient fitting it (rsa-pkcs1v15 only with policy
 * kra_allow_rsa_pkcs1v15), URI acceptable (esc_token_uri_check), an active
 * CA.  The challenge is ESC_KRA_SECRET_LEN random bytes sealed to the
 * public key in the recipient form (RSA-OAEP with its hash, PKCS#1 v1.5,
 * or ECDH); its SHA-256 and the offer
 * are kept (kra_challenges) for ESC_KRA_CHALLENGE_SECONDS, for actor alone.
 * *id names it; *challenge is DER, malloc'ed (free()); expires (at least 40
 * bytes) gets its expiry.  Audited (kra.enroll.challenge), refusals too.
 * actor must be an administrator.
 * Errors: DENIED, USAGE, BAD_INPUT (public key), URI, EXISTS, POLICY (key
 * size, PKCS#1 v1.5), STATE (no active CA), CRYPTO, DB.
 */
enum esc_err esc_kra_enroll_begin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  const struct esc_kra_offer *offer, long long *id, unsigned char **challenge,
				  size_t *challenge_len, char *expires, size_t expires_len) ESC_MUST_CHECK;

/*
 * Answer challenge id of KRA name with secret.  Only if its SHA-256 matches
 * the challenge's (constant time), within its lifetime, at its first
 * answer, by the administrator it was issued to, does the CA (ca_tok, logged
 * in) issue the KRA certificate and the KRA get registered as active, in
 * one transaction with its audit event (kra.enroll).  A wrong secret uses
 * the challenge up.  *cert is the certificate's DER, malloc'ed (free());
 * out (if non-NULL) the KRA.  Audited, refusals too.
 * Errors: DENIED (not an administrator, another administrator's challenge,
 * a wrong secret), NOT_FOUND (no such challenge for this name), STATE
 * (answered already, expired, no active CA), EXISTS (the name or the card
 * was taken meanwhile), PKCS11, CRYPTO, DB.
 */
enum esc_err esc_kra_enroll_prove(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				  struct esc_token *ca_tok, const char *name, long long id, const unsigned char *secret,
				  size_t secret_len, struct esc_kra *out, unsigned char **cert,
				  size_t *cert_len) ESC_MUST_CHECK;

/*
 * Enroll the key of k (adopted or generated on its card, logged in) on the
 * service host: the same proof of possession as through the service — an
 * offer (esc_kra_enroll_begin, all its checks and policy), the challenge
 * opened on the card, the answer (esc_kra_enroll_prove with ca_tok) — in
 * one call.  *cert is the KRA certificate's DER (free()); store it on the
 * card with esc_kra_card_store_cert where the card takes it.  Nothing is
 * removed from the card here.  Errors: as those three.
 */
enum esc_err esc_kra_enroll_card(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				 struct esc_token *ca_tok, struct esc_kra_card *k, const char *name, int days,
				 struct esc_kra *out, unsigned char **cert, size_t *cert_len) ESC_MUST_CHECK;

/* All KRAs, oldest first.  *out is malloc'ed (caller frees).  Errors: DB. */
enum esc_err esc_kra_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_kra **out, size_t *n) ESC_MUST_CHECK;

/*
 * Retire a KRA.  Refused (STATE, naming records) while any record would be
 * left with no active KRA in its set.  actor must be an administrator.
 * Errors: DENIED, NOT_FOUND, STATE, DB.
 */
enum esc_err esc_kra_retire(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
			    const char *name) ESC_MUST_CHECK;

/*
 * ---- Renewal: a new certificate for the same card key ----
 *
 * esc_kra_renew_begin takes the public key the card holds (SubjectPublicKeyInfo
 * DER, as esc_kra_card_public_key gives it), checks that it is the key of KRA
 * name's certificate (MISMATCH otherwise) and that the KRA is active (STATE
 * when retired), and answers a challenge exactly as esc_kra_enroll_begin
 * does, marked as a renewal (kra_challenges.renews).  esc_kra_enroll_prove
 * (and the keeper's KRA_PROVE) answers it: possession proven, the CA issues
 * a certificate for the same key and subject for days, and the KRA row's
 * certificate, serial and fingerprint are replaced in one transaction with
 * the audit event kra.renew, whose details keep the old serial.  The KRA's
 * id, name, key, card and records stay; records wrapped to the old
 * certificate open with the same key on the card.  Audited
 * (kra.renew.challenge), refusals too.
 * Errors: DENIED, USAGE, NOT_FOUND (no such KRA), STATE (retired, no active
 * CA), BAD_INPUT (public key), MISMATCH, POLICY, CRYPTO, DB.
 */
enum esc_err esc_kra_renew_begin(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				 const char *name, const unsigned char *public_key, size_t public_key_len, int days,
				 long long *id, unsigned char **challenge, size_t *challenge_len, char *expires,
				 size_t expires_len) ESC_MUST_CHECK;

/*
 * Renew KRA name's certificate on the service host with the key of k (the
 * card logged in, the key found by the KRA's URI or another: adopted, so
 * never removed): esc_kra_renew_begin, the challenge opened on the card,
 * the answer (with ca_tok) in one call.  *cert is the new certificate's DER
 * (free()); out the renewed KRA.  Errors: as esc_kra_renew_begin and esc_kra_enroll_prove.
 */
enum esc_err esc_kra_renew_card(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
				struct esc_token *ca_tok, struct esc_kra_card *k, const char *name, int days,
				struct esc_kra *out, unsigned char **cert, size_t *cert_len) ESC_MUST_CHECK;

/*
 * The certificate of KRA name (current: its certificate now) that envelope
 * env (a record's inner layer, or a recovery package) names as a recipient:
 * current if it does, else the earlier certificate of the same key that a
 * renewal replaced (kra_certificates), the one records wrapped before the
 * renewal name by issuer and serial.  *out is a new reference (X509_free)
 * to it, or to current if none is named (*yes = 0).
 * Errors: BAD_INPUT (env), DB.
 */
enum esc_err esc_kra_envelope_cert(struct esc_ctx *ctx, struct esc_store *st, const char *name,
				   const unsigned char *env, size_t envlen, X509 *current, X509 **out,
				   int *yes) ESC_MUST_CHECK;

/* ---- Warnings before KRAs lapse ---- */

/* The default of kra_expiry_warning_days (p11escrow.conf): warn this many days before a KRA certificate expires. */
#define ESC_KRA_EXPIRY_WARNING_DAYS 60

struct esc_kra_health {
	int threshold;		 /* k: usable KRAs a record needs (policy kra_threshold; 1 where it is unset) */
	int warn_days;		 /* as asked */
	size_t active;		 /* active KRAs */
	size_t usable;		 /* active KRAs whose certificate has not expired */
	size_t expiring;	 /* active KRAs whose certificate expires within warn_days */
	size_t expired;		 /* active KRAs whose certificate has expired */
	long long records;	 /* archive records */
	long long records_short; /* records whose KRA set holds fewer than threshold usable KRAs */
	long long records_none;	 /* of those, records no usable KRA can recover (k = 1: unrecoverable) */
	char first_short[40];	 /* one such record's id, "" if none */
};

/*
 * Whether the KRAs k[0..n) (esc_kra_list) stay able to recover the records:
 * their expiry (within warn_days, or past) and the records whose set holds
 * fewer than k usable (active, unexpired) KRAs.  Read only.  Errors: DB.
 */
enum esc_err esc_kra_health(struct esc_ctx *ctx, struct esc_store *st, const struct esc_kra *k, size_t n, int warn_days,
			    struct esc_kra_health *out) ESC_MUST_CHECK;

/* 1 if KRA k deserves a warning (active and expired, or expiring within warn_days), with why in buf. */
int esc_kra_warning(const struct esc_kra *k, int warn_days, char *buf, size_t len);

#endif
