/*
 * p11escrow — PKCS#11 tokens: module loading, RFC 7512 URIs, login,
 * mechanism probing, key generation and token keys as EVP_PKEY.
 *
 * A struct esc_token is one loaded module with one selected token and one
 * read-write session.  Modules are loaded by path or by the name p11-kit
 * knows them under ("p11-kit:NAME"), as local configuration names them, and
 * only from the files and directories the context's module allow-list
 * names (esc_ctx_set_module_allow).  Tokens and keys are selected only by
 * RFC 7512 URIs (token label/serial/manufacturer/model, object label, id,
 * type), parsed with p11-kit's URI API; never by slot number, which
 * renumbers.  PINs are never part of a URI: a URI holding pin-value or
 * pin-source is refused.  Nor is a module: URIs are stored in the database
 * and received from the service, so a URI holding module-path or
 * module-name is refused too.
 *
 * Errors carry the CK_RV name, e.g. "CKR_PIN_INCORRECT", in the ctx message.
 */
#ifndef P11ESCROW_TOKEN_H
#define P11ESCROW_TOKEN_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>

struct esc_token;
struct esc_token_key;

enum esc_key_type {
	ESC_KEY_RSA3072,
	ESC_KEY_RSA4096,
	ESC_KEY_EC_P256,
	ESC_KEY_EC_P384,
};

/* What a generated private key may do; the token enforces it. */
enum esc_key_usage {
	ESC_KEY_USE_SIGN,    /* CKA_SIGN only */
	ESC_KEY_USE_DECRYPT, /* RSA: CKA_DECRYPT (OAEP); EC: CKA_DERIVE (ECDH) */
};

struct esc_mechanism {
	unsigned long type; /* CKM_* */
	unsigned long min_bits;
	unsigned long max_bits;
	unsigned long flags; /* CKF_* */
};

/* Parse "rsa3072", "rsa4096", "ec-p256", "ec-p384".  Errors: USAGE. */
enum esc_err esc_key_type_parse(struct esc_ctx *ctx, const char *s, enum esc_key_type *out) ESC_MUST_CHECK;
const char *esc_key_type_name(enum esc_key_type t);

/* "CKR_PIN_INCORRECT", or "CKR_VENDOR_OR_UNKNOWN" for codes not in PKCS#11 2.40. */
const char *esc_ckr_name(unsigned long rv);
/* "CKM_RSA_PKCS" or NULL if unknown. */
const char *esc_ckm_name(unsigned long mech);

/*
 * Check that uri is a syntactically valid PKCS#11 URI without PIN
 * attributes (pin-value, pin-source) and without module attributes
 * (module-path, module-name).  Every function here taking a URI checks it
 * so.  Errors: URI (the message names the attribute, never a PIN).
 */
enum esc_err esc_token_uri_check(struct esc_ctx *ctx, const char *uri) ESC_MUST_CHECK;

/*
 * The module file module names, checked against ctx's module allow-list
 * (esc_ctx_module_allow): module is an absolute path, "p11-kit:NAME" (the
 * file p11-kit's module configuration names) or NULL/"" for the build
 * default.  The file is resolved with realpath(3) and must be an allowed
 * file or lie directly in an allowed directory (entries resolved too), so a
 * symlink out of an allowed directory is refused.  *out is the resolved
 * path, malloc'ed: the caller frees it; it is what esc_token_open loads.
 * Errors: MODULE (relative, missing, unknown p11-kit name), CONFIG (not
 * allowed, or a malformed allow-list: the message says what to set), NOMEM.
 */
enum esc_err esc_token_module_resolve(struct esc_ctx *ctx, const char *module, char **out) ESC_MUST_CHECK;

/*
 * Load the module (esc_token_module_resolve) and select the one token
 * matching uri.  The URI never selects the module (esc_token_uri_check).
 * Errors: URI, MODULE, CONFIG (module not allowed), TOKEN_NOT_FOUND
 * (message lists tokens present), AMBIGUOUS (message lists candidates),
 * PKCS11.
 */
enum esc_err esc_token_open(struct esc_ctx *ctx, const char *module, const char *uri,
			    struct esc_token **out) ESC_MUST_CHECK;
/*
 * Open another token of the module sibling was opened from, sharing the
 * loaded module (and, as PKCS#11 has it, its login state per token).
 * Errors: as esc_token_open.
 */
enum esc_err esc_token_open_sibling(struct esc_ctx *ctx, const struct esc_token *sibling, const char *uri,
				    struct esc_token **out) ESC_MUST_CHECK;
/* Close the session; unload the module when its last token goes; accepts NULL. */
void esc_token_free(struct esc_token *tok);

/* Log in as the token user.  Errors: PIN_INCORRECT, PIN_LOCKED, PKCS11. */
enum esc_err esc_token_login(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_secret *pin) ESC_MUST_CHECK;

/*
 * Is tok's session logged in as the token user (C_GetSessionInfo, a cheap
 * call that also finds a token that is gone)?  ESC_OK if so.  Errors:
 * PIN_MISSING (the session is not logged in), PKCS11 or TOKEN_NOT_FOUND
 * (the call failed).
 */
enum esc_err esc_token_check_login(struct esc_ctx *ctx, struct esc_token *tok) ESC_MUST_CHECK;

const char *esc_token_label(const struct esc_token *tok);
const char *esc_token_serial(const struct esc_token *tok);
const char *esc_token_manufacturer(const struct esc_token *tok);
const char *esc_token_model(const struct esc_token *tok);
/* The module file loaded, as esc_token_module_resolve resolved it. */
const char *esc_token_module_path(const struct esc_token *tok);

/*
 * The token's mechanisms.  *out is a malloc'ed array the caller frees.
 * Errors: NOMEM, PKCS11.
 */
enum esc_err esc_token_mechanisms(struct esc_ctx *ctx, struct esc_token *tok, struct esc_mechanism **out,
				  size_t *n) ESC_MUST_CHECK;

/*
 * Fail with ESC_ERR_MECHANISM (naming the mechanism and why) unless the
 * token offers everything needed to generate and use a key of this type for
 * this usage.
 */
enum esc_err esc_token_require_key_mechanisms(struct esc_ctx *ctx, struct esc_token *tok, enum esc_key_type type,
					      enum esc_key_usage usage) ESC_MUST_CHECK;

/*
 * Generate a key pair on the token: private half sensitive, never
 * extractable, restricted to usage; a random 16-byte CKA_ID; the label
 * given.  Errors: MECHANISM, PKCS11, NOMEM.
 */
enum esc_err esc_token_generate_key(struct esc_ctx *ctx, struct esc_token *tok, enum esc_key_type type,
				    enum esc_key_usage usage, const char *label,
				    struct esc_token_key **out) ESC_MUST_CHECK;

/*
 * Find the one private key matching uri (object label and/or id; the token
 * part of the URI is ignored here).  Errors: URI, KEY_NOT_FOUND, AMBIGUOUS
 * (message lists each candidate's label and id), PKCS11.
 */
enum esc_err esc_token_find_key(struct esc_ctx *ctx, struct esc_token *tok, const char *uri,
				struct esc_token_key **out) ESC_MUST_CHECK;

/*
 * Destroy both halves of a key pair on the token (undo of a generation),
 * and the certificate esc_token_import_key wrote with it.
 */
enum esc_err esc_token_destroy_key(struct esc_ctx *ctx, struct esc_token *tok,
				   const struct esc_token_key *key) ESC_MUST_CHECK;

/*
 * Set CKA_LABEL of key's objects (private, public, the certificate written
 * with it) to label (1..128 bytes), e.g. once its certificate names it.
 * Errors: USAGE (label), PKCS11 (the token refuses: some objects may then
 * carry the new label, some the old).
 */
enum esc_err esc_token_key_relabel(struct esc_ctx *ctx, struct esc_token *tok, struct esc_token_key *key,
				   const char *label) ESC_MUST_CHECK;

/*
 * The label a key written for cert gets when none is given: the
 * certificate's common name (cut to len - 1 bytes at a character boundary),
 * else fallback; a name with control characters is not used.
 */
void esc_token_default_label(X509 *cert, const char *fallback, char *buf, size_t len);

/*
 * Write key, a private key held in software (a recovered one), and cert,
 * its certificate, onto the token (logged in as its user) with
 * C_CreateObject: the private key (CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,
 * not CKA_EXTRACTABLE), its public key and the certificate, all three with
 * CKA_ID = SHA-1 of the certificate's subjectPublicKey (RFC 5280 4.2.1.2
 * method 1) and CKA_LABEL label (1..128 bytes).  Usage: RSA CKA_DECRYPT and
 * CKA_UNWRAP, EC CKA_DERIVE; CKA_SIGN only where cert's keyUsage has
 * digitalSignature or nonRepudiation.  The key's private values pass only
 * through secure memory and are wiped.  Checked first, before anything is
 * written (esc_token_import_check).  Nothing is left half-written: if an
 * object cannot be created, those already created are destroyed.  *out
 * names the three objects (esc_token_destroy_key removes them; caller
 * frees with esc_token_key_free).
 * Errors: USAGE (label), MISMATCH (key is not cert's), EXISTS (an object
 * with that CKA_ID is on the token), MECHANISM (the token cannot hold or use
 * a key of this type and size), PKCS11 (write-protected, not logged in, the
 * token failed), CRYPTO, NOMEM.
 */
enum esc_err esc_token_import_key(struct esc_ctx *ctx, struct esc_token *tok, EVP_PKEY *key, X509 *cert,
				  const char *label, struct esc_token_key **out) ESC_MUST_CHECK;

/*
 * Could esc_token_import_key write the key of cert here: the session
 * logged in as the user and writable, the token not write-protected, no
 * object with the key's CKA_ID yet, and a mechanism that uses a key of its
 * type and size (RSA decryption, EC key derivation)?  Needs only the
 * certificate: a caller checks before it decrypts anything.
 * Errors: as esc_token_import_key.
 */
enum esc_err esc_token_import_check(struct esc_ctx *ctx, struct esc_token *tok, X509 *cert) ESC_MUST_CHECK;

/*
 * The same check before there is a certificate, from the public key pub
 * the certificate will hold (the CKA_ID is the same SHA-1 of its
 * subjectPublicKey): a client checks the token before it enrolls the key.
 * pub NULL (the key is not known yet, the service makes it): only the
 * session and the token's write protection are checked.
 * Errors: as esc_token_import_check.
 */
enum esc_err esc_token_import_check_key(struct esc_ctx *ctx, struct esc_token *tok, EVP_PKEY *pub) ESC_MUST_CHECK;

void esc_token_key_free(struct esc_token_key *key);

/* Key identity. */
const unsigned char *esc_token_key_id(const struct esc_token_key *key, size_t *len);
const char *esc_token_key_label(const struct esc_token_key *key);
/* "rsa3072", "ec-p256", ... or "rsa2048"-style for adopted keys. */
const char *esc_token_key_type_name(const struct esc_token_key *key);

/*
 * Is the private key protected as it must be: CKA_SENSITIVE and not
 * CKA_EXTRACTABLE (and never was extractable)?  Errors: STATE (says which
 * attribute is wrong), PKCS11.
 */
enum esc_err esc_token_key_check_protected(struct esc_ctx *ctx, struct esc_token *tok,
					   const struct esc_token_key *key) ESC_MUST_CHECK;

/*
 * The public key read from the token: RSA from the private object's
 * modulus, EC from the public key object with the same CKA_ID or, where a
 * card has none, from the certificate object with that CKA_ID.  Caller
 * frees.  Errors: KEY_NOT_FOUND (EC: neither object), PKCS11, CRYPTO.
 */
enum esc_err esc_token_key_public(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key,
				  EVP_PKEY **out) ESC_MUST_CHECK;

/*
 * The private key as an EVP_PKEY whose operations run on the token (through
 * libp11).  Requires login.  Caller frees; the EVP_PKEY must not outlive
 * tok.  Errors: KEY_NOT_FOUND, PKCS11.
 */
enum esc_err esc_token_key_private(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key,
				   EVP_PKEY **out) ESC_MUST_CHECK;

/* What a private key object says of itself (1 = CK_TRUE). */
struct esc_token_key_attrs {
	int decrypt;	       /* CKA_DECRYPT */
	int derive;	       /* CKA_DERIVE */
	int sign;	       /* CKA_SIGN */
	int sensitive;	       /* CKA_SENSITIVE */
	int extractable;       /* CKA_EXTRACTABLE */
	int always_sensitive;  /* CKA_ALWAYS_SENSITIVE */
	int never_extractable; /* CKA_NEVER_EXTRACTABLE */
};

/*
 * Read the usage and protection attributes of key's private object (an
 * attribute the token does not report reads as 0).  Errors: PKCS11.
 */
enum esc_err esc_token_key_attributes(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key,
				      struct esc_token_key_attrs *out) ESC_MUST_CHECK;

/*
 * What a key can decrypt with on this token.  RSA: each mechanism the
 * token lists for decryption is tried with a real decryption of random
 * bytes encrypted to pub — RSA-OAEP with SHA-256 (and MGF1-SHA-256) and
 * with SHA-1 (CKM_RSA_PKCS_OAEP), raw RSA (CKM_RSA_X_509) and PKCS#1 v1.5
 * (CKM_RSA_PKCS) — and counts only if the bytes come back.  EC: whether
 * CKM_ECDH1_DERIVE and CKM_ECDH1_COFACTOR_DERIVE are listed for derive
 * (the proof of possession then derives for real).  Requires login.
 */
struct esc_token_decrypt_probe {
	int rsa;	   /* 1 for an RSA key, 0 for EC */
	int oaep_sha256;   /* CKM_RSA_PKCS_OAEP, SHA-256: decrypted the probe */
	int oaep_sha1;	   /* CKM_RSA_PKCS_OAEP, SHA-1 */
	int raw;	   /* CKM_RSA_X_509 */
	int pkcs1;	   /* CKM_RSA_PKCS */
	int ecdh;	   /* CKM_ECDH1_DERIVE listed for derive */
	int ecdh_cofactor; /* CKM_ECDH1_COFACTOR_DERIVE listed for derive */
};
/* Errors: CRYPTO (the software half of a probe failed), PKCS11. */
enum esc_err esc_token_probe_decrypt(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key,
				     EVP_PKEY *pub, struct esc_token_decrypt_probe *out) ESC_MUST_CHECK;

/* Does the token say it is write-protected (CKF_WRITE_PROTECTED)? */
int esc_token_write_protected(const struct esc_token *tok);

/* Store cert on the token next to key (same CKA_ID and label).  Errors: PKCS11. */
enum esc_err esc_token_store_cert(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key,
				  X509 *cert) ESC_MUST_CHECK;

/*
 * RFC 7512 URI naming this key on this token (token label+serial, id,
 * type=private), without any PIN.  Caller frees with free().
 */
enum esc_err esc_token_key_uri(struct esc_ctx *ctx, const struct esc_token *tok, const struct esc_token_key *key,
			       char **out) ESC_MUST_CHECK;

#endif
