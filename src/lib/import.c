/*
 * Reading keys and certificates for manual archival: PKCS#12 and PEM.
 *
 * Only parsing happens here.  Whether a key may be archived (it matches its
 * certificate, the certificate allows encryption, the issuer, duplicates) is
 * decided by esc_archive_key alone, so the rules live in one place.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include <p11escrow/import.h>

#include "internal.h"

#define MAX_CERTS 64 /* certificates accepted in one PEM input */

struct esc_import_file {
	unsigned char *data; /* anonymous mapping of map_len bytes */
	size_t len, map_len;
	int locked;
};

const unsigned char *
esc_import_file_data(const struct esc_import_file *f)
{
	return f->data;
}

size_t
esc_import_file_len(const struct esc_import_file *f)
{
	return f->len;
}

void
esc_import_file_free(struct esc_import_file *f)
{
	if (f == NULL)
		return;
	if (f->data != NULL) {
		OPENSSL_cleanse(f->data, f->map_len);
		if (f->locked)
			munlock(f->data, f->map_len);
		munmap(f->data, f->map_len);
	}
	free(f);
}

enum esc_err
esc_import_file_read(struct esc_ctx *ctx, const char *path, struct esc_import_file **out)
{
	struct esc_import_file *f = NULL;
	struct stat st;
	long page = sysconf(_SC_PAGESIZE);
	enum esc_err r;
	ssize_t n;
	int fd = -1;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		r = esc_error(ctx, ESC_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		r = esc_error(ctx, ESC_ERR_IO, "'%s' is not a regular file", path);
		goto out;
	}
	if (st.st_size > ESC_IMPORT_MAX) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' is larger than %d bytes: not a key file", path,
			      ESC_IMPORT_MAX);
		goto out;
	}
	if (st.st_size == 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' is empty", path);
		goto out;
	}
	if ((f = calloc(1, sizeof(*f))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (page <= 0)
		page = 4096;
	/* One byte more than the file's size, to notice a file that grows. */
	f->map_len = (((size_t)st.st_size + 1 + (size_t)page - 1) / (size_t)page) * (size_t)page;
	f->data = mmap(NULL, f->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (f->data == MAP_FAILED) {
		f->data = NULL;
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory for '%s'", path);
		goto out;
	}
	/* An unencrypted PEM key is in here: keep it out of swap and core dumps. */
#ifdef MADV_DONTDUMP
	(void)madvise(f->data, f->map_len, MADV_DONTDUMP);
#endif
	f->locked = mlock(f->data, f->map_len) == 0; /* best effort: RLIMIT_MEMLOCK may be small */
	while (f->len < f->map_len) {
		n = read(fd, f->data + f->len, f->map_len - f->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = esc_error(ctx, ESC_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		f->len += (size_t)n;
	}
	if (f->len != (size_t)st.st_size) {
		r = esc_error(ctx, ESC_ERR_IO, "'%s' changed while it was being read", path);
		goto out;
	}
	*out = f;
	f = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_import_file_free(f);
	if (fd != -1)
		close(fd);
	return r;
}

/* Does buf contain the NUL-free string s? */
static int
contains(const unsigned char *buf, size_t len, const char *s)
{
	size_t n = strlen(s), i;

	for (i = 0; n <= len && i <= len - n; i++)
		if (memcmp(buf + i, s, n) == 0)
			return 1;
	return 0;
}

/* ---------------------------------------------------------------- PKCS#12 */

/*
 * The MAC did not verify with this password.  Does the password open any
 * encrypted part of the file?  Then the password is right and the file was
 * damaged; otherwise the password is wrong.  1: opens, 0: does not, -1: the
 * file's structure is unreadable.
 */
static int
password_opens(PKCS12 *p12, const char *pass)
{
	STACK_OF(PKCS7) *safes = PKCS12_unpack_authsafes(p12);
	STACK_OF(PKCS12_SAFEBAG) *bags;
	PKCS8_PRIV_KEY_INFO *p8;
	int i, j, opens = 0;

	if (safes == NULL)
		return -1;
	for (i = 0; i < sk_PKCS7_num(safes) && !opens; i++) {
		PKCS7 *p7 = sk_PKCS7_value(safes, i);

		if (PKCS7_type_is_encrypted(p7)) {
			bags = PKCS12_unpack_p7encdata(p7, pass, -1);
			opens = bags != NULL;
		} else if (PKCS7_type_is_data(p7)) {
			bags = PKCS12_unpack_p7data(p7);
			for (j = 0; j < sk_PKCS12_SAFEBAG_num(bags) && !opens; j++) {
				const PKCS12_SAFEBAG *bag = sk_PKCS12_SAFEBAG_value(bags, j);

				if (PKCS12_SAFEBAG_get_nid(bag) != NID_pkcs8ShroudedKeyBag)
					continue;
				if ((p8 = PKCS12_decrypt_skey(bag, pass, -1)) != NULL) {
					opens = 1;
					PKCS8_PRIV_KEY_INFO_free(p8); /* cleanses the key */
				}
			}
		} else {
			bags = NULL;
		}
		sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
	}
	sk_PKCS7_pop_free(safes, PKCS7_free);
	ERR_clear_error();
	return opens;
}

static enum esc_err
load_p12(struct esc_ctx *ctx, const unsigned char *buf, size_t len, const char *name, const struct esc_secret *password,
	 EVP_PKEY **key, X509 **cert)
{
	const unsigned char *p = buf;
	PKCS12 *p12 = NULL;
	EVP_PKEY *pkey = NULL;
	X509 *x = NULL;
	STACK_OF(X509) *others = NULL;
	const char *pass = password != NULL ? esc_secret_str(password) : NULL;
	unsigned long e;
	enum esc_err r;
	int opens;

	if ((p12 = d2i_PKCS12(NULL, &p, (long)len)) == NULL || p != buf + len) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "'%s' is not a readable PKCS#12 file (corrupt or truncated)",
				   name);
		goto out;
	}
	if (PKCS12_mac_present(p12)) {
		r = ESC_OK;
		if (pass == NULL || *pass == '\0') {
			/* Files exported "without a password" use the empty one (or none). */
			if (PKCS12_verify_mac(p12, "", 0))
				pass = "";
			else if (PKCS12_verify_mac(p12, NULL, 0))
				pass = NULL;
			else if (password == NULL) {
				ERR_clear_error();
				r = esc_error(ctx, ESC_ERR_PIN_MISSING, "'%s' is protected by a password", name);
				goto out;
			} else {
				r = ESC_ERR_AUTH; /* diagnosed below */
			}
		} else if (!PKCS12_verify_mac(p12, pass, -1)) {
			r = ESC_ERR_AUTH;
		}
		if (r == ESC_ERR_AUTH) {
			/* A wrong password, or a file altered after it was written? */
			if ((opens = password_opens(p12, pass)) != 0) {
				r = esc_error(
					ctx, ESC_ERR_BAD_INPUT,
					opens > 0 ? "'%s' is damaged: its integrity check fails although the password "
						    "is right"
						  : "'%s' is damaged: its contents cannot be read",
					name);
				goto out;
			}
			r = esc_error(ctx, ESC_ERR_AUTH, "wrong password for the PKCS#12 file '%s'", name);
			goto out;
		}
	} else if (pass == NULL) {
		pass = ""; /* no MAC, no password given: try the empty one */
	}
	ERR_clear_error();
	if (!PKCS12_parse(p12, pass, &pkey, &x, &others)) {
		e = ERR_peek_last_error();
		if (!PKCS12_mac_present(p12) && password == NULL) {
			ERR_clear_error();
			r = esc_error(ctx, ESC_ERR_PIN_MISSING, "'%s' is protected by a password", name);
		} else if (!PKCS12_mac_present(p12) && password_opens(p12, pass) == 0) {
			r = esc_error(ctx, ESC_ERR_AUTH, "wrong password for the PKCS#12 file '%s'", name);
		} else {
			/* The password is right: an algorithm OpenSSL does not offer, or damage. */
			r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "cannot read the contents of '%s'%s", name,
					   ERR_GET_REASON(e) == ERR_R_UNSUPPORTED ||
							   ERR_GET_REASON(e) == EVP_R_UNSUPPORTED_ALGORITHM
						   ? " (it uses an algorithm OpenSSL keeps in its legacy provider, "
						     "e.g. RC2-40)"
						   : "");
		}
		goto out;
	}
	if (pkey == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' holds no private key", name);
		goto out;
	}
	if (x == NULL) {
		/* PKCS12_parse keeps as the certificate only one that matches the key. */
		if (sk_X509_num(others) == 1) {
			x = sk_X509_shift(others); /* esc_archive_key reports the mismatch */
		} else if (sk_X509_num(others) > 1) {
			r = esc_error(ctx, ESC_ERR_MISMATCH,
				      "none of the %d certificates in '%s' matches its private key",
				      sk_X509_num(others), name);
			goto out;
		} else {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' holds no certificate", name);
			goto out;
		}
	}
	*key = pkey;
	*cert = x;
	pkey = NULL; /* transferred */
	x = NULL;
	r = ESC_OK;
out:
	ERR_clear_error();
	EVP_PKEY_free(pkey);
	X509_free(x);
	sk_X509_pop_free(others, X509_free);
	PKCS12_free(p12);
	return r;
}

/* -------------------------------------------------------------------- PEM */

struct found {
	EVP_PKEY *key;
	STACK_OF(X509) *certs;
};

static int
is_cert_block(const char *pname)
{
	return strcmp(pname, PEM_STRING_X509) == 0 || strcmp(pname, PEM_STRING_X509_OLD) == 0 ||
	       strcmp(pname, PEM_STRING_X509_TRUSTED) == 0;
}

static int
is_key_block(const char *pname)
{
	size_t n = strlen(pname), k = strlen("PRIVATE KEY");

	return n >= k && strcmp(pname + n - k, "PRIVATE KEY") == 0;
}

/* Decode one private key block; data is decrypted in place if encrypted. */
static enum esc_err
pem_key(struct esc_ctx *ctx, const char *name, const char *pname, char *header, unsigned char *data, long dlen,
	const struct esc_secret *password, EVP_PKEY **out)
{
	const unsigned char *p = data;
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	X509_SIG *sig = NULL;
	EVP_CIPHER_INFO cipher;
	EVP_PKEY *pkey = NULL;
	enum esc_err r;
	int type, encrypted = 0;

	if (strcmp(pname, PEM_STRING_PKCS8INF) == 0) {
		/* The kept decoder: EVP_PKCS82PKEY would build one for every key of a bulk import. */
		if (dlen <= 0 || (pkey = esc_ctx_pkcs8_decode(ctx, data, (size_t)dlen)) == NULL) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the private key in '%s' cannot be read", name);
			goto out;
		}
		*out = pkey;
		r = ESC_OK;
		goto out;
	} else if (strcmp(pname, PEM_STRING_PKCS8) == 0) {
		if ((sig = d2i_X509_SIG(NULL, &p, dlen)) == NULL || p != data + dlen) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the encrypted private key in '%s' cannot be read", name);
			goto out;
		}
		if (password == NULL) {
			r = esc_error(ctx, ESC_ERR_PIN_MISSING, "the private key in '%s' is protected by a password",
				      name);
			goto out;
		}
		if ((p8 = PKCS8_decrypt(sig, esc_secret_str(password), (int)esc_secret_len(password))) == NULL) {
			r = esc_error(ctx, ESC_ERR_AUTH, "wrong password for the private key in '%s'", name);
			goto out;
		}
	}
	if (p8 != NULL) {
		if ((pkey = EVP_PKCS82PKEY(p8)) == NULL) {
			r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the private key in '%s' cannot be used", name);
			goto out;
		}
		*out = pkey;
		r = ESC_OK;
		goto out;
	}
	/* Traditional forms, possibly encrypted under a "Proc-Type: 4,ENCRYPTED" header. */
	if (strcmp(pname, PEM_STRING_RSA) == 0)
		type = EVP_PKEY_RSA;
	else if (strcmp(pname, PEM_STRING_ECPRIVATEKEY) == 0)
		type = EVP_PKEY_EC;
	else {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' holds a '%s' block: only RSA and EC keys are archived",
			      name, pname);
		goto out;
	}
	if (!PEM_get_EVP_CIPHER_INFO(header, &cipher)) {
		r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the private key in '%s' has an unreadable header", name);
		goto out;
	}
	if (cipher.cipher != NULL) {
		encrypted = 1;
		if (password == NULL) {
			r = esc_error(ctx, ESC_ERR_PIN_MISSING, "the private key in '%s' is protected by a password",
				      name);
			goto out;
		}
		/* No callback: OpenSSL takes the password from the last argument. */
		if (!PEM_do_header(&cipher, data, &dlen, NULL, (void *)esc_secret_str(password))) {
			r = esc_error(ctx, ESC_ERR_AUTH, "wrong password for the private key in '%s'", name);
			goto out;
		}
	}
	p = data;
	if ((pkey = d2i_PrivateKey(type, NULL, &p, dlen)) == NULL) {
		/* A wrong password passes the padding check one time in 256. */
		r = encrypted ? esc_error(ctx, ESC_ERR_AUTH, "wrong password for the private key in '%s'", name)
			      : esc_error(ctx, ESC_ERR_BAD_INPUT, "the private key in '%s' cannot be read", name);
		goto out;
	}
	*out = pkey;
	r = ESC_OK;
out:
	ERR_clear_error();
	PKCS8_PRIV_KEY_INFO_free(p8); /* cleanses the key bytes */
	X509_SIG_free(sig);
	return r;
}

/*
 * Collect the key (if want_key) and the certificates (if want_certs) of a
 * PEM buffer into *found.  Other blocks (parameters, requests) are skipped.
 */
static enum esc_err
pem_scan(struct esc_ctx *ctx, const unsigned char *buf, size_t len, const char *name, const struct esc_secret *password,
	 int want_key, int want_certs, struct found *found)
{
	BIO *bio = BIO_new_mem_buf(buf, (int)len);
	char *pname = NULL, *header = NULL;
	unsigned char *data = NULL;
	long dlen = 0, alloc_len = 0;
	unsigned long e;
	enum esc_err r;

	if (bio == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	for (;;) {
		const unsigned char *p;
		X509 *x;

		/* Decoded blocks go to the secure heap: a block may be a plaintext key. */
		if (!PEM_read_bio_ex(bio, &pname, &header, &data, &dlen, PEM_FLAG_SECURE | PEM_FLAG_EAY_COMPATIBLE)) {
			e = ERR_peek_last_error();
			if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
				ERR_clear_error();
				break; /* no more blocks */
			}
			r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "'%s' holds a malformed PEM block", name);
			goto out;
		}
		alloc_len = dlen;
		if (is_cert_block(pname) && want_certs) {
			p = data;
			x = strcmp(pname, PEM_STRING_X509_TRUSTED) == 0 ? d2i_X509_AUX(NULL, &p, dlen)
									: d2i_X509(NULL, &p, dlen);
			if (x == NULL || p != data + dlen) {
				X509_free(x);
				r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT,
						   "'%s' holds a certificate that cannot be read", name);
				goto out;
			}
			if (sk_X509_num(found->certs) >= MAX_CERTS || !sk_X509_push(found->certs, x)) {
				X509_free(x);
				r = esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' holds more than %d certificates", name,
					      MAX_CERTS);
				goto out;
			}
		} else if (is_key_block(pname) && want_key) {
			if (found->key != NULL) {
				r = esc_error(ctx, ESC_ERR_BAD_INPUT,
					      "'%s' holds more than one private key: give one key per file", name);
				goto out;
			}
			if ((r = pem_key(ctx, name, pname, header, data, dlen, password, &found->key)) != ESC_OK)
				goto out;
		}
		OPENSSL_secure_free(pname);
		OPENSSL_secure_free(header);
		OPENSSL_secure_clear_free(data, (size_t)alloc_len);
		pname = header = NULL;
		data = NULL;
	}
	r = ESC_OK;
out:
	OPENSSL_secure_free(pname);
	OPENSSL_secure_free(header);
	OPENSSL_secure_clear_free(data, (size_t)alloc_len);
	BIO_free(bio);
	return r;
}

/* The found key and the certificate that goes with it: the matching one, else the first. */
static enum esc_err
pem_finish(struct esc_ctx *ctx, struct found *found, const char *key_name, const char *cert_name, EVP_PKEY **key,
	   X509 **cert)
{
	X509 *x = NULL;
	int i;

	if (found->key == NULL)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' holds no private key", key_name);
	if (sk_X509_num(found->certs) == 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' holds no certificate", cert_name);
	for (i = 0; i < sk_X509_num(found->certs) && x == NULL; i++)
		if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(found->certs, i)), found->key) == 1)
			x = sk_X509_value(found->certs, i);
	ERR_clear_error();
	if (x == NULL)
		x = sk_X509_value(found->certs, 0); /* esc_archive_key reports the mismatch */
	if (!X509_up_ref(x))
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	*cert = x;
	*key = found->key;
	found->key = NULL; /* transferred */
	return ESC_OK;
}

static void
found_clear(struct found *found)
{
	EVP_PKEY_free(found->key);
	sk_X509_pop_free(found->certs, X509_free);
}

static int
looks_like_pem(const unsigned char *buf, size_t len)
{
	return contains(buf, len, "-----BEGIN ");
}

static int
is_pkcs12(const unsigned char *buf, size_t len)
{
	const unsigned char *p = buf;
	PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
	int yes = p12 != NULL;

	PKCS12_free(p12);
	ERR_clear_error();
	return yes;
}

static enum esc_err
check_size(struct esc_ctx *ctx, size_t len, const char *name)
{
	if (len == 0)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' is empty", name);
	if (len > ESC_IMPORT_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' is larger than %d bytes: not a key file", name,
				 ESC_IMPORT_MAX);
	return ESC_OK;
}

enum esc_err
esc_import_load(struct esc_ctx *ctx, const unsigned char *buf, size_t len, const char *name,
		const struct esc_secret *password, EVP_PKEY **key, X509 **cert)
{
	struct found found = {NULL, NULL};
	enum esc_err r;

	if (name == NULL)
		name = "input";
	if ((r = check_size(ctx, len, name)) != ESC_OK)
		return r;
	/* PKCS#12 is DER: a SEQUENCE.  PEM is text with a BEGIN line (and may start with '0'). */
	if (buf[0] == 0x30 && (!looks_like_pem(buf, len) || is_pkcs12(buf, len)))
		return load_p12(ctx, buf, len, name, password, key, cert);
	if (!looks_like_pem(buf, len))
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' is neither PKCS#12 nor PEM", name);
	if ((found.certs = sk_X509_new_null()) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = pem_scan(ctx, buf, len, name, password, 1, 1, &found)) == ESC_OK)
		r = pem_finish(ctx, &found, name, name, key, cert);
	found_clear(&found);
	return r;
}

enum esc_err
esc_import_load_pair(struct esc_ctx *ctx, const unsigned char *key_buf, size_t key_len, const char *key_name,
		     const unsigned char *cert_buf, size_t cert_len, const char *cert_name,
		     const struct esc_secret *password, EVP_PKEY **key, X509 **cert)
{
	struct found found = {NULL, NULL};
	const unsigned char *p = cert_buf;
	X509 *x = NULL;
	enum esc_err r;

	if (key_name == NULL)
		key_name = "key";
	if (cert_name == NULL)
		cert_name = "certificate";
	if ((r = check_size(ctx, key_len, key_name)) != ESC_OK || (r = check_size(ctx, cert_len, cert_name)) != ESC_OK)
		return r;
	if (!looks_like_pem(key_buf, key_len))
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "'%s' is not a PEM key file", key_name);
	if ((found.certs = sk_X509_new_null()) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = pem_scan(ctx, key_buf, key_len, key_name, password, 1, 0, &found)) != ESC_OK)
		goto out;
	if (looks_like_pem(cert_buf, cert_len)) {
		if ((r = pem_scan(ctx, cert_buf, cert_len, cert_name, NULL, 0, 1, &found)) != ESC_OK)
			goto out;
	} else {
		/* A DER certificate. */
		if ((x = d2i_X509(NULL, &p, (long)cert_len)) == NULL || p != cert_buf + cert_len ||
		    !sk_X509_push(found.certs, x)) {
			X509_free(x);
			r = esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "'%s' is not a certificate (PEM or DER)", cert_name);
			goto out;
		}
	}
	r = pem_finish(ctx, &found, key_name, cert_name, key, cert);
out:
	found_clear(&found);
	return r;
}
