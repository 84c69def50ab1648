/*
 * p11escrow est — a first-party EST (RFC 7030) client for the service's
 * /.well-known/est endpoints: the CA certificates, the transport
 * certificate, and enrollment with the key archived (/fullcmc: the key made
 * here and sent encrypted to the transport certificate; /serverkeygen: the
 * key made by the service), without archival (/simpleenroll, signing
 * profiles) and renewal (/simplereenroll).  Everything received is checked
 * against /cacerts before a file is written.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/ca.h>
#include <p11escrow/est.h>
#include <p11escrow/pin.h>
#include <p11escrow/profile.h>
#include <p11escrow/token.h>

#include "cli.h"
#include "http_client.h"

#define CMD "est"
#define EST_PATH "/.well-known/est"
#define OTP_PASSWORD_ENV "P11ESCROW_OTP_PASSWORD"
#define KEY_PASSWORD_ENV "P11ESCROW_KEY_PASSWORD"
#define TO_TOKEN_PIN_ENV "P11ESCROW_TO_TOKEN_PIN"
#define TOKEN_LABEL_MAX 128 /* CKA_LABEL (esc_token_import_key) */
#define DEFAULT_KEY_TYPE "ec-p256"

#define CT_PKCS10 "application/pkcs10"
#define CT_CMC_REQUEST "application/pkcs7-mime; smime-type=CMC-request"
#define CT_CERTS "application/pkcs7-mime"

enum mode { MODE_FULLCMC, MODE_SERVERKEYGEN, MODE_SIMPLEENROLL, MODE_SIMPLEREENROLL };
static const char *const mode_op[] = {"fullcmc", "serverkeygen", "simpleenroll", "simplereenroll"};

struct opts {
	const char *server, *server_ca, *proxy, *label, *config;
	const char *otp, *otp_file;	      /* HTTP Basic with a one-time password */
	const char *client_cert, *client_key; /* or a TLS client certificate */
	const char *client_key_password_file;
	const char *subject, *key_type;
	const char *out, *out_cert, *out_key, *out_p12, *out_ca, *key_password_file;
	const char *to_token, *to_token_module, *to_token_pin_file, *to_token_label; /* the key onto a token */
	enum mode mode;
	int modes;   /* how many mode options were given */
	int new_key; /* simplereenroll: a new key instead of the current one */
};

static void
help(void)
{
	printf("Usage: %s " CMD " enroll --server URL [--label LABEL] [--fullcmc|--serverkeygen|--simpleenroll]\n"
	       "                 (--otp NAME [--otp-file FILE] | --client-cert FILE --client-key FILE)\n"
	       "                 (--out-cert FILE --out-key FILE | --out-p12 FILE | --to-token URI) [OPTIONS]\n"
	       "       %s " CMD " enroll --simplereenroll --server URL [--label LABEL] --client-cert FILE\n"
	       "                 --client-key FILE --out-cert FILE [--new-key --out-key FILE] [OPTIONS]\n"
	       "       %s " CMD " transport-cert --server URL [-o FILE] [OPTIONS]\n"
	       "       %s " CMD " cacerts --server URL [-o FILE] [OPTIONS]\n\n"
	       "An EST client (RFC 7030) for the service's /.well-known/est/[LABEL/] endpoints; LABEL is\n"
	       "a certificate profile ('%s profile list'; none: %s).\n\n"
	       "enroll          get a certificate.  The CA certificates come first from /cacerts, and\n"
	       "                every certificate received must chain to them (and certify the key)\n"
	       "                before anything is written.  Modes:\n"
	       "  --fullcmc       (the default) your own key, made here (--key-type), is sent encrypted\n"
	       "                  to the CA's transport certificate (fetched and checked as\n"
	       "                  transport-cert does) in a CMC Full PKI Request: the service archives\n"
	       "                  it, then issues.  For archival profiles (encryption).\n"
	       "  --serverkeygen  the service makes the key (the profile's type), archives it and\n"
	       "                  returns it with the certificate, over TLS.\n"
	       "  --simpleenroll  no archival, for profiles that never archive (signing): your own key.\n"
	       "  --simplereenroll renew the certificate of --client-cert (the TLS client credentials):\n"
	       "                  same subject, same key unless --new-key.  Non-archival profiles.\n"
	       "                The enrollee authenticates with a one-time enrollment password (--otp\n"
	       "                NAME: its name; the password from --otp-file, else $" OTP_PASSWORD_ENV ",\n"
	       "                else a prompt) or a TLS client certificate this CA issued.  The service\n"
	       "                takes the subject from the password or the certificate.  The key is\n"
	       "                written encrypted: PKCS#8 PEM (--out-key) or PKCS#12 with the certificate\n"
	       "                and the CA certificates (--out-p12), with a password from\n"
	       "                --key-password-file, else $" KEY_PASSWORD_ENV ", else a prompt (twice).\n"
	       "                Output files must not exist yet; they are created before anything is\n"
	       "                sent and removed again if the enrollment fails.  Prints the serial,\n"
	       "                subject and expiry of the certificate.\n"
	       "                --to-token URI instead writes key and certificate onto that token\n"
	       "                (same CKA_ID; the key sensitive, never extractable).  The token is\n"
	       "                opened, logged in to and checked (writable, no object with the key's\n"
	       "                CKA_ID) before anything is sent, so a wrong PIN costs no one-time\n"
	       "                password.  fullcmc and serverkeygen: the key exists in software (the\n"
	       "                secure heap) for the enrollment, as archival needs, then goes onto the\n"
	       "                token and is wiped here; if that write fails, key and certificate are\n"
	       "                kept in ./p11escrow-est-SERIAL.p12 (encrypted: --key-password-file or\n"
	       "                $" KEY_PASSWORD_ENV ", else a generated password printed once) and the\n"
	       "                error names it.  simpleenroll: the key is made on the token and the\n"
	       "                request signed there; it never leaves it.\n"
	       "transport-cert  fetch the CA's transport certificate (public; what /fullcmc encrypts keys\n"
	       "                to), check it is issued by the CA of /cacerts, is no CA and may receive\n"
	       "                keys (keyEncipherment for RSA, keyAgreement for EC), and print it as PEM\n"
	       "                (or write it to -o FILE).\n"
	       "cacerts         fetch the CA certificates (/cacerts) and print them as PEM (or -o FILE).\n\n"
	       "Options:\n"
	       "      --server URL              the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE          CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --proxy URL               through this HTTP(S) proxy, for every host (else $https_proxy\n"
	       "                                and $no_proxy apply); no credentials in URL\n"
	       "      --label LABEL             the EST label: a certificate profile (default: none, %s)\n"
	       "      --fullcmc, --serverkeygen, --simpleenroll, --simplereenroll   the enroll mode\n"
	       "      --otp NAME                the one-time enrollment password's name\n"
	       "      --otp-file FILE           its password (else $" OTP_PASSWORD_ENV ", else a prompt)\n"
	       "      --client-cert FILE        TLS client certificate (PEM, may be followed by its chain)\n"
	       "      --client-key FILE         its key (PEM, chmod 600; may be encrypted)\n"
	       "      --client-key-password-file FILE   that key's password (else $" CLI_CLIENT_KEY_PASSWORD_ENV ",\n"
	       "                                else a prompt)\n"
	       "      --subject DN              the subject in the request (default: the client\n"
	       "                                certificate's, else empty; the service decides)\n"
	       "      --key-type TYPE           the key made here: ec-p256 (default), ec-p384, rsa2048,\n"
	       "                                rsa3072, rsa4096\n"
	       "      --new-key                 simplereenroll: a new key of --key-type (written to --out-key)\n"
	       "      --out-cert FILE           the certificate (PEM)\n"
	       "      --out-key FILE            the private key (encrypted PKCS#8 PEM, mode 0600)\n"
	       "      --out-p12 FILE            key, certificate and CA certificates (PKCS#12, mode 0600)\n"
	       "      --out-ca FILE             also the CA certificates of /cacerts (PEM)\n"
	       "      --key-password-file FILE  the password for --out-key/--out-p12 (else\n"
	       "                                $" KEY_PASSWORD_ENV ", else a prompt)\n"
	       "      --to-token URI            key and certificate onto this token (pkcs11: URI, no PIN)\n"
	       "      --to-token-module MODULE  its PKCS#11 module (else the configured module)\n"
	       "      --to-token-pin-file FILE  its user PIN (else $" TO_TOKEN_PIN_ENV ", else a prompt)\n"
	       "      --to-token-label TEXT     CKA_LABEL of the objects written (else the certificate's CN;\n"
	       "                                --label is the EST label)\n"
	       "  -o, --out FILE                transport-cert, cacerts: where the PEM goes (default: standard\n"
	       "                                output)\n"
	       "  -c, --config FILE             configuration file\n"
	       "  -h, --help                    this text\n",
	       PROG, PROG, PROG, PROG, PROG, ESC_PROFILE_DEFAULT, ESC_PROFILE_DEFAULT);
	cli_print_exit_codes();
}

/* "/.well-known/est[/LABEL]/OP" into buf. */
static void
est_path(char *buf, size_t len, const char *label, const char *op)
{
	snprintf(buf, len, EST_PATH "%s%s/%s", label != NULL ? "/" : "", label != NULL ? label : "", op);
}

/* An error the library reported: one line and its exit code. */
static int
fail_lib(struct esc_ctx *ctx, enum esc_err e, const char *what)
{
	fprintf(stderr, "%s %s: error: %s: %s\n", PROG, CMD, what, esc_ctx_errmsg(ctx));
	return esc_err_exit_code(e);
}

/* GET a certs-only answer at op and decode it. */
static int
get_certs(struct esc_ctx *ctx, struct cli_http *h, const char *label, const char *op, STACK_OF(X509) **out)
{
	struct cli_http_reply rep;
	char path[160], what[64];
	enum esc_err e;
	int rc;

	est_path(path, sizeof(path), label, op);
	if ((rc = cli_http_send(h, CLI_HTTP_GET, path, NULL, NULL, 0, CT_CERTS, 0, &rep)) != 0)
		return rc;
	snprintf(what, sizeof(what), "the answer of /%s", op);
	e = esc_est_certs_decode(ctx, (const char *)rep.body, rep.len, out);
	cli_http_reply_clear(&rep);
	return e == ESC_OK ? 0 : fail_lib(ctx, e, what);
}

/* Write certs as PEM to f. */
static int
write_certs_pem(FILE *f, STACK_OF(X509) *certs)
{
	int i;

	for (i = 0; i < sk_X509_num(certs); i++)
		if (PEM_write_X509(f, sk_X509_value(certs, i)) != 1)
			return -1;
	return 0;
}

/* ---- output files ------------------------------------------------------------ */

/* A file to write, created (exclusively) before anything is sent. */
struct outfile {
	const char *path;
	int fd;
	int written;
};

static int
out_create(struct outfile *o, const char *path, mode_t mode)
{
	o->path = path;
	o->written = 0;
	if (path == NULL) {
		o->fd = -1;
		return 0;
	}
	if ((o->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)) == -1) {
		fprintf(stderr, "%s %s: error: cannot create '%s': %s%s\n", PROG, CMD, path, strerror(errno),
			errno == EEXIST ? " (output files are never overwritten)" : "");
		return esc_err_exit_code(ESC_ERR_IO);
	}
	return 0;
}

static int
out_write(struct outfile *o, const void *data, size_t len)
{
	const unsigned char *p = data;
	ssize_t n;

	while (len > 0) {
		if ((n = write(o->fd, p, len)) <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			fprintf(stderr, "%s %s: error: cannot write '%s': %s\n", PROG, CMD, o->path, strerror(errno));
			return esc_err_exit_code(ESC_ERR_IO);
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Close; a file never completely written is removed. */
static int
out_close(struct outfile *o)
{
	int rc = 0;

	if (o->fd == -1)
		return 0;
	if ((fsync(o->fd) != 0 || close(o->fd) != 0) && o->written) {
		fprintf(stderr, "%s %s: error: cannot write '%s': %s\n", PROG, CMD, o->path, strerror(errno));
		o->written = 0;
		rc = esc_err_exit_code(ESC_ERR_IO);
	}
	o->fd = -1;
	if (!o->written)
		(void)unlink(o->path);
	return rc;
}

/* The PEM of certs into o. */
static int
out_certs(struct outfile *o, STACK_OF(X509) *certs)
{
	BIO *b = BIO_new(BIO_s_mem());
	BUF_MEM *mem = NULL;
	int i, rc;

	for (i = 0; b != NULL && i < sk_X509_num(certs); i++)
		if (PEM_write_bio_X509(b, sk_X509_value(certs, i)) != 1)
			break;
	if (b == NULL || i != sk_X509_num(certs) || BIO_get_mem_ptr(b, &mem) != 1) {
		BIO_free(b);
		fprintf(stderr, "%s %s: error: cannot encode the certificate(s) for '%s'\n", PROG, CMD, o->path);
		return esc_err_exit_code(ESC_ERR_CRYPTO);
	}
	rc = out_write(o, mem->data, mem->length);
	BIO_free(b);
	if (rc == 0)
		o->written = 1;
	return rc;
}

/*
 * The password that protects the key written: --key-password-file, else
 * $P11ESCROW_KEY_PASSWORD, else a prompt, twice.
 */
static int
key_password(struct esc_ctx *ctx, const char *file, struct esc_secret **out)
{
	struct esc_secret *a = NULL, *b = NULL;
	const char *env = getenv(KEY_PASSWORD_ENV);
	enum esc_err e;

	if ((file != NULL && *file != '\0') || (env != NULL && *env != '\0')) {
		if ((e = esc_secret_obtain(ctx, file, KEY_PASSWORD_ENV, NULL, &a)) != ESC_OK)
			return cli_fail(CMD, ctx, e);
	} else {
		if ((e = esc_secret_prompt(ctx, "Password for the new key file: ", &a)) != ESC_OK ||
		    (e = esc_secret_prompt(ctx, "Again: ", &b)) != ESC_OK) {
			esc_secret_free(a);
			return cli_fail(CMD, ctx, e);
		}
		if (esc_secret_len(a) != esc_secret_len(b) ||
		    CRYPTO_memcmp(esc_secret_str(a), esc_secret_str(b), esc_secret_len(a)) != 0) {
			esc_secret_free(a);
			esc_secret_free(b);
			fprintf(stderr, "%s %s: error: the passwords differ\n", PROG, CMD);
			return esc_err_exit_code(ESC_ERR_USAGE);
		}
		esc_secret_free(b);
	}
	if (esc_secret_len(a) < 8) {
		esc_secret_free(a);
		return cli_usage_error(CMD, "the key file's password must have at least 8 characters");
	}
	*out = a;
	return 0;
}

/* ---- enroll ----------------------------------------------------------------------- */

/* The certificate of certs whose key is key (the answer may hold the CA certificates too), NULL if none. */
static X509 *
cert_for_key(STACK_OF(X509) *certs, EVP_PKEY *key)
{
	int i;

	for (i = 0; i < sk_X509_num(certs); i++)
		if (esc_cert_matches_key(sk_X509_value(certs, i), key))
			return sk_X509_value(certs, i);
	return NULL;
}

/* The request's body: the DER of csr (or of a Full PKI Request), base64 as RFC 8951 has it. */
static int
b64_body(struct esc_ctx *ctx, const unsigned char *der, size_t len, char **b64, size_t *b64len)
{
	enum esc_err e = esc_b64_encode(ctx, der, len, b64, b64len);

	return e == ESC_OK ? 0 : fail_lib(ctx, e, "cannot encode the request");
}

static int
csr_der(struct esc_ctx *ctx, X509_REQ *csr, unsigned char **der, size_t *len)
{
	unsigned char *tmp = NULL;
	int n = i2d_X509_REQ(csr, &tmp);

	if (n <= 0 || (*der = malloc((size_t)n)) == NULL) {
		OPENSSL_free(tmp);
		fprintf(stderr, "%s %s: error: cannot encode the certification request\n", PROG, CMD);
		return esc_err_exit_code(ESC_ERR_CRYPTO);
	}
	memcpy(*der, tmp, (size_t)n);
	*len = (size_t)n;
	OPENSSL_free(tmp);
	(void)ctx;
	return 0;
}

/*
 * Send the request of mode o->mode for key (NULL for serverkeygen: the
 * answer's) and return the certificate issued, checked against cacerts,
 * with *key_out the key it certifies.
 */
static int
enroll_request(struct esc_ctx *ctx, struct cli_http *h, const struct opts *o, STACK_OF(X509) *cacerts,
	       const X509_NAME *subject, EVP_PKEY *key, X509 **cert_out, EVP_PKEY **key_out)
{
	struct cli_http_reply rep = {0};
	STACK_OF(X509) *certs = NULL, *tr = NULL;
	X509_REQ *csr = NULL;
	EVP_PKEY *carrier = NULL, *got_key = NULL;
	unsigned char *der = NULL;
	char *b64 = NULL, path[160];
	size_t derlen = 0, b64len = 0;
	X509 *cert;
	enum esc_err e;
	int rc;

	if (o->mode == MODE_SERVERKEYGEN) {
		/* The request's key only carries the subject (docs/est.md): a throwaway P-256 key. */
		if ((e = esc_enroll_key_generate(ctx, ESC_EKEY_EC_P256, &carrier)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, e);
			goto out;
		}
		key = carrier;
	}
	if ((e = esc_est_csr_build(ctx, key, subject, &csr)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, e);
		goto out;
	}
	if (o->mode == MODE_FULLCMC) {
		/* The key goes to the transport certificate: only one the CA issued for receiving keys. */
		if ((rc = get_certs(ctx, h, o->label, "transportcert", &tr)) != 0)
			goto out;
		if ((e = esc_est_transport_check(ctx, sk_X509_value(tr, 0), cacerts)) != ESC_OK) {
			rc = fail_lib(ctx, e, "the transport certificate is refused");
			goto out;
		}
		if ((e = esc_cmc_request_build(ctx, csr, key, sk_X509_value(tr, 0), &der, &derlen)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, e);
			goto out;
		}
	} else if ((rc = csr_der(ctx, csr, &der, &derlen)) != 0) {
		goto out;
	}
	if ((rc = b64_body(ctx, der, derlen, &b64, &b64len)) != 0)
		goto out;
	est_path(path, sizeof(path), o->label, mode_op[o->mode]);
	if ((rc = cli_http_send(h, CLI_HTTP_POST, path, o->mode == MODE_FULLCMC ? CT_CMC_REQUEST : CT_PKCS10, b64,
				b64len, o->mode == MODE_SERVERKEYGEN ? "multipart/mixed" : CT_CERTS,
				o->mode == MODE_SERVERKEYGEN, &rep)) != 0)
		goto out;
	if (o->mode == MODE_SERVERKEYGEN) {
		e = esc_est_serverkeygen_parse(ctx, rep.ctype, rep.body, rep.len, &got_key, &certs);
		key = got_key;
	} else {
		e = esc_est_certs_decode(ctx, (const char *)rep.body, rep.len, &certs);
	}
	if (e != ESC_OK) {
		rc = fail_lib(ctx, e, "the service's answer");
		goto out;
	}
	if ((cert = cert_for_key(certs, key)) == NULL) {
		fprintf(stderr, "%s %s: error: the service's answer holds no certificate for the key%s\n", PROG, CMD,
			o->mode == MODE_SERVERKEYGEN ? " it returned" : " enrolled");
		rc = esc_err_exit_code(ESC_ERR_MISMATCH);
		goto out;
	}
	if ((e = esc_est_cert_check(ctx, cert, cacerts, key)) != ESC_OK) {
		rc = fail_lib(ctx, e, "the certificate issued is refused");
		goto out;
	}
	if (X509_up_ref(cert) != 1 || (key_out != NULL && EVP_PKEY_up_ref(key) != 1)) {
		rc = esc_err_exit_code(ESC_ERR_INTERNAL);
		goto out;
	}
	*cert_out = cert;
	if (key_out != NULL)
		*key_out = key;
	rc = 0;
out:
	cli_http_reply_clear(&rep);
	sk_X509_pop_free(certs, X509_free);
	sk_X509_pop_free(tr, X509_free);
	X509_REQ_free(csr);
	EVP_PKEY_free(carrier);
	EVP_PKEY_free(got_key);
	free(der);
	free(b64);
	return rc;
}

/* ---- --to-token ---------------------------------------------------------------- */

/*
 * Test hooks, only in builds configured with -Dtest_hooks=true (never in a
 * packaged build): P11ESCROW_TEST_EST_KEY=FILE makes the key "generated"
 * here the PEM key in FILE (so a test can enroll a key whose CKA_ID is on
 * the token already), P11ESCROW_FAULT_FAIL=est-token-write fails the write
 * onto the token after the enrollment (so a test sees the fallback file).
 */
#ifdef ESC_TEST_HOOKS
/* 1: no hook; 0: *out is the hook's key; else the exit code (printed). */
static int
test_key(EVP_PKEY **out)
{
	const char *f = getenv("P11ESCROW_TEST_EST_KEY");
	FILE *fp;

	if (f == NULL || *f == '\0')
		return 1;
	if ((fp = fopen(f, "r")) != NULL) {
		*out = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
		fclose(fp);
		if (*out != NULL)
			return 0;
	}
	ERR_clear_error();
	fprintf(stderr, "%s %s: error: P11ESCROW_TEST_EST_KEY: no key in '%s'\n", PROG, CMD, f);
	return esc_err_exit_code(ESC_ERR_BAD_INPUT);
}

static int
fault(const char *point)
{
	const char *f = getenv("P11ESCROW_FAULT_FAIL");

	return f != NULL && strcmp(f, point) == 0;
}
#else
static int
test_key(EVP_PKEY **out)
{
	(void)out;
	return 1;
}

static int
fault(const char *point)
{
	(void)point;
	return 0;
}
#endif

/* A new key of type made here (in the secure heap), or the test hook's.  Returns 0 or the exit code (printed). */
static int
new_key(struct esc_ctx *ctx, unsigned type, EVP_PKEY **out)
{
	int rc = test_key(out);
	enum esc_err e;

	if (rc != 1)
		return rc;
	if ((e = esc_enroll_key_generate(ctx, type, out)) != ESC_OK)
		return cli_fail(CMD, ctx, e);
	return 0;
}

/*
 * Open --to-token, log in with its PIN (--to-token-pin-file, else
 * $P11ESCROW_TO_TOKEN_PIN, else a prompt) and keep the session: before
 * anything is sent, so a wrong PIN costs no one-time password.
 */
static int
token_open(struct esc_ctx *ctx, struct esc_config *cfg, const struct opts *o, struct esc_token **out)
{
	struct esc_token *tok = NULL;
	struct esc_secret *pin = NULL;
	enum esc_err e;

	if ((e = esc_token_open(ctx, o->to_token_module != NULL ? o->to_token_module : esc_config_get(cfg, "module"),
				o->to_token, &tok)) != ESC_OK ||
	    (e = esc_secret_obtain(ctx, o->to_token_pin_file, TO_TOKEN_PIN_ENV, "Token PIN: ", &pin)) != ESC_OK ||
	    (e = esc_token_login(ctx, tok, pin)) != ESC_OK) {
		esc_secret_free(pin);
		esc_token_free(tok);
		return fail_lib(ctx, e, "--to-token");
	}
	esc_secret_free(pin);
	*out = tok;
	return 0;
}

/* Text a token label may carry: no control characters. */
static int
printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

/*
 * The enrollment succeeded but the key did not get onto the token: keep
 * key and certificate in an encrypted PKCS#12, ./p11escrow-est-SERIAL.p12
 * (never overwritten), under the key password given, else a generated one
 * printed once on standard error.  Returns the exit code of why (printed).
 */
static int
fallback_p12(struct esc_ctx *ctx, EVP_PKEY *key, X509 *cert, STACK_OF(X509) *cacerts, const struct esc_secret *kpw,
	     enum esc_err why, const char *whymsg)
{
	struct outfile f = {NULL, -1, 0};
	struct esc_secret *gen = NULL;
	char *serial = esc_cert_serial_hex(cert), path[128];
	unsigned char *der = NULL;
	size_t len = 0;
	enum esc_err e = ESC_OK;
	int ok = 0;

	fprintf(stderr, "%s %s: error: the key and certificate could not be written onto the token: %s\n", PROG, CMD,
		whymsg);
	snprintf(path, sizeof(path), "p11escrow-est-%.64s.p12", serial != NULL ? serial : "unknown");
	if (kpw == NULL && (e = cli_random_password(ctx, &gen)) == ESC_OK)
		kpw = gen;
	if (e == ESC_OK && (e = esc_est_key_p12(ctx, key, cert, cacerts, "p11escrow est", kpw, &der, &len)) == ESC_OK &&
	    out_create(&f, path, 0600) == 0) {
		if (out_write(&f, der, len) == 0)
			f.written = 1;
		ok = out_close(&f) == 0 && f.written;
	}
	if (!ok) {
		/* The service archived the key: it can still be recovered. */
		fprintf(stderr,
			"%s %s: error: no PKCS#12 could be written either%s%s%s; the key is archived: a recovery "
			"request brings it back\n",
			PROG, CMD, e != ESC_OK ? " (" : "", e != ESC_OK ? esc_strerror(e) : "", e != ESC_OK ? ")" : "");
	} else {
		fprintf(stderr,
			"%s %s: the enrolled key and its certificate are in '%s' (encrypted PKCS#12, %s); import "
			"them from there\n",
			PROG, CMD, path, gen == NULL ? "the key password given" : "password below");
		if (gen != NULL)
			fprintf(stderr, "%s %s: PKCS#12 password (shown once): %s\n", PROG, CMD, esc_secret_str(gen));
	}
	free(der); /* ciphertext */
	esc_secret_free(gen);
	free(serial);
	return esc_err_exit_code(why);
}

/*
 * Write the enrolled key and its certificate onto tok: sensitive, never
 * extractable from then on (esc_token_import_key).  The software copy is
 * the caller's, freed (wiped) when it returns.
 */
static int
to_token(struct esc_ctx *ctx, const struct opts *o, struct esc_token *tok, EVP_PKEY *key, X509 *cert,
	 STACK_OF(X509) *cacerts, const struct esc_secret *kpw)
{
	struct esc_token_key *k = NULL;
	char label[TOKEN_LABEL_MAX + 1], *uri = NULL, why[512];
	enum esc_err e;

	if (o->to_token_label != NULL)
		snprintf(label, sizeof(label), "%s", o->to_token_label);
	else
		esc_token_default_label(cert, "enrolled key", label, sizeof(label));
	if (fault("est-token-write")) {
		snprintf(why, sizeof(why), "test fault est-token-write");
		return fallback_p12(ctx, key, cert, cacerts, kpw, ESC_ERR_PKCS11, why);
	}
	if ((e = esc_token_import_check(ctx, tok, cert)) != ESC_OK ||
	    (e = esc_token_import_key(ctx, tok, key, cert, label, &k)) != ESC_OK) {
		snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
		return fallback_p12(ctx, key, cert, cacerts, kpw, e, why);
	}
	if (esc_token_key_uri(ctx, tok, k, &uri) != ESC_OK)
		uri = NULL;
	printf("key and certificate written onto token '%s' (sensitive, not extractable), label '%s': %s\n",
	       esc_token_label(tok), label, uri != NULL ? uri : "?");
	free(uri);
	esc_token_key_free(k);
	return 0;
}

/*
 * --simpleenroll --to-token: the key is made on the token (C_GenerateKeyPair:
 * sensitive, never extractable, CKA_SIGN only) and the request signed there;
 * it never exists anywhere else.  *tkey names it on the token (undone by the
 * caller if the enrollment fails), *key is its EVP_PKEY (operations on the
 * token; freed before tok).  Labelled provisionally until the certificate
 * names it.
 */
static int
token_keygen(struct esc_ctx *ctx, struct esc_token *tok, unsigned type, struct esc_token_key **tkey, EVP_PKEY **key)
{
	enum esc_key_type tt;
	enum esc_err e;

	switch (type) {
	case ESC_EKEY_EC_P256:
		tt = ESC_KEY_EC_P256;
		break;
	case ESC_EKEY_EC_P384:
		tt = ESC_KEY_EC_P384;
		break;
	case ESC_EKEY_RSA3072:
		tt = ESC_KEY_RSA3072;
		break;
	case ESC_EKEY_RSA4096:
		tt = ESC_KEY_RSA4096;
		break;
	default:
		return cli_usage_error(CMD, "--to-token makes ec-p256, ec-p384, rsa3072 or rsa4096 keys");
	}
	if ((e = esc_token_generate_key(ctx, tok, tt, ESC_KEY_USE_SIGN, "p11escrow est: enrolling", tkey)) != ESC_OK)
		return fail_lib(ctx, e, "--to-token (nothing was sent)");
	if ((e = esc_token_key_private(ctx, tok, *tkey, key)) != ESC_OK) {
		if (esc_token_destroy_key(ctx, tok, *tkey) != ESC_OK)
			fprintf(stderr, "%s %s: error: %s\n", PROG, CMD, esc_ctx_errmsg(ctx));
		esc_token_key_free(*tkey);
		*tkey = NULL;
		return fail_lib(ctx, e, "--to-token (nothing was sent)");
	}
	return 0;
}

/*
 * The certificate of the key made on the token next to it (same CKA_ID),
 * both labelled --to-token-label or the certificate's CN.  If that fails
 * the key stays (it is certified) and the certificate goes to
 * ./p11escrow-est-SERIAL.pem, named in the error.
 */
static int
token_store_cert(struct esc_ctx *ctx, const struct opts *o, struct esc_token *tok, struct esc_token_key *tkey,
		 X509 *cert)
{
	struct outfile f = {NULL, -1, 0};
	STACK_OF(X509) *one = NULL;
	char label[TOKEN_LABEL_MAX + 1], *uri = NULL, *serial = NULL, path[128];
	enum esc_err e;
	int rc;

	if (o->to_token_label != NULL)
		snprintf(label, sizeof(label), "%s", o->to_token_label);
	else
		esc_token_default_label(cert, "enrolled key", label, sizeof(label));
	if ((e = esc_token_key_relabel(ctx, tok, tkey, label)) == ESC_OK &&
	    (e = esc_token_store_cert(ctx, tok, tkey, cert)) == ESC_OK) {
		if (esc_token_key_uri(ctx, tok, tkey, &uri) != ESC_OK)
			uri = NULL;
		printf("key made on token '%s' (sensitive, never extractable), certificate stored with it, label "
		       "'%s': %s\n",
		       esc_token_label(tok), label, uri != NULL ? uri : "?");
		free(uri);
		return 0;
	}
	fprintf(stderr, "%s %s: error: the certificate could not be stored on the token: %s\n", PROG, CMD,
		esc_ctx_errmsg(ctx));
	serial = esc_cert_serial_hex(cert);
	snprintf(path, sizeof(path), "p11escrow-est-%.64s.pem", serial != NULL ? serial : "unknown");
	free(serial);
	if ((one = sk_X509_new_null()) != NULL && sk_X509_push(one, cert) > 0 && X509_up_ref(cert) == 1 &&
	    out_create(&f, path, 0644) == 0 && out_certs(&f, one) == 0 && out_close(&f) == 0)
		fprintf(stderr, "%s %s: the key is on the token (label '%s'); its certificate is in '%s'\n", PROG, CMD,
			tkey != NULL ? esc_token_key_label(tkey) : "?", path);
	else
		(void)out_close(&f);
	sk_X509_pop_free(one, X509_free);
	rc = esc_err_exit_code(e);
	return rc;
}

/* "serial: ...", "subject: ...", "not after: ..." of cert on standard output. */
static void
print_cert(X509 *cert, const char *what)
{
	char *serial = esc_cert_serial_hex(cert), *subject = esc_name_to_string(X509_get_subject_name(cert));
	char fp[ESC_FINGERPRINT_MAX], after[64] = "?";
	BIO *b = BIO_new(BIO_s_mem());
	int n;

	esc_cert_fingerprint(cert, fp);
	if (b != NULL && ASN1_TIME_print(b, X509_get0_notAfter(cert)) == 1 &&
	    (n = BIO_read(b, after, (int)sizeof(after) - 1)) > 0)
		after[n] = '\0';
	printf("%s\nserial: %s\nsubject: %s\nnot after: %s\nfingerprint: %s\n", what, serial != NULL ? serial : "?",
	       subject != NULL ? subject : "?", after, fp);
	BIO_free(b);
	free(serial);
	free(subject);
}

static int
do_enroll(struct esc_ctx *ctx, struct esc_config *cfg, const struct opts *o)
{
	struct outfile f_cert = {NULL, -1, 0}, f_key = {NULL, -1, 0}, f_p12 = {NULL, -1, 0}, f_ca = {NULL, -1, 0};
	struct cli_http *h = NULL;
	struct esc_token *tok = NULL;
	struct esc_token_key *tkey = NULL; /* simpleenroll --to-token: the key made on the token */
	struct esc_secret *otp = NULL, *kpw = NULL;
	STACK_OF(X509) *cacerts = NULL, *one = NULL;
	X509_NAME *subject = NULL;
	EVP_PKEY *key = NULL, *issued_key = NULL;
	X509 *cert = NULL;
	unsigned type = esc_enroll_key_parse(o->key_type != NULL ? o->key_type : DEFAULT_KEY_TYPE);
	int reenroll = o->mode == MODE_SIMPLEREENROLL, writes_key = !reenroll || o->new_key, rc, rc2;
	enum esc_err e;

	/* Everything that can be refused without the network first, then the files, then the service. */
	if (type == 0)
		return cli_usage_error(CMD, "--key-type must be ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096");
	if (o->subject != NULL && esc_name_parse(ctx, o->subject, &subject) != ESC_OK)
		return cli_usage_error(CMD, "--subject: %s", esc_ctx_errmsg(ctx));
	if (o->to_token != NULL) {
		const char *l = o->to_token_label;

		if (o->out_cert != NULL || o->out_key != NULL || o->out_p12 != NULL) {
			rc = cli_usage_error(CMD,
					     "the key goes one way: --to-token URI or files (--out-cert, --out-key, "
					     "--out-p12), not both");
			goto out;
		}
		if (reenroll) {
			rc = cli_usage_error(CMD, "--to-token goes with --fullcmc, --serverkeygen or --simpleenroll "
						  "(--simplereenroll writes files)");
			goto out;
		}
		if (l != NULL && (*l == '\0' || strlen(l) > TOKEN_LABEL_MAX || !printable(l))) {
			rc = cli_usage_error(CMD, "--to-token-label has 1..%d bytes and no control characters",
					     TOKEN_LABEL_MAX);
			goto out;
		}
		writes_key = 0;
	} else if (o->to_token_module != NULL || o->to_token_pin_file != NULL || o->to_token_label != NULL) {
		rc = cli_usage_error(CMD, "--to-token-module, --to-token-pin-file and --to-token-label go with "
					  "--to-token");
		goto out;
	}
	if (o->to_token != NULL && o->mode != MODE_SIMPLEENROLL) {
		/* The fallback file's password, if one is given; else one is made if it is needed. */
		const char *env = getenv(KEY_PASSWORD_ENV);

		if (((o->key_password_file != NULL && *o->key_password_file != '\0') ||
		     (env != NULL && *env != '\0')) &&
		    (rc = key_password(ctx, o->key_password_file, &kpw)) != 0)
			goto out;
	} else if (writes_key && o->out_p12 == NULL && o->out_key == NULL) {
		rc = cli_usage_error(CMD,
				     "where does the key go? --out-key FILE (with --out-cert FILE) or --out-p12 FILE");
		goto out;
	}
	if (o->to_token == NULL && o->out_p12 == NULL && o->out_cert == NULL) {
		rc = cli_usage_error(CMD, "--out-cert FILE is needed (or --out-p12 FILE, or --to-token URI)");
		goto out;
	}
	if (!writes_key && (o->out_key != NULL || o->out_p12 != NULL)) {
		rc = cli_usage_error(CMD, "--simplereenroll keeps the current key: --out-key and --out-p12 only with "
					  "--new-key");
		goto out;
	}
	if (writes_key && (rc = key_password(ctx, o->key_password_file, &kpw)) != 0)
		goto out;
	if (o->otp != NULL) {
		char prompt[128];

		snprintf(prompt, sizeof(prompt), "One-time password for %s: ", o->otp);
		if ((e = esc_secret_obtain(ctx, o->otp_file, OTP_PASSWORD_ENV, prompt, &otp)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, e);
			goto out;
		}
	}
	if ((rc = out_create(&f_cert, o->out_cert, 0644)) != 0 || (rc = out_create(&f_key, o->out_key, 0600)) != 0 ||
	    (rc = out_create(&f_p12, o->out_p12, 0600)) != 0 || (rc = out_create(&f_ca, o->out_ca, 0644)) != 0)
		goto out;
	if (o->to_token != NULL && (rc = token_open(ctx, cfg, o, &tok)) != 0)
		goto out;

	if ((rc = cli_http_open_anonymous(CMD, ctx, o->server, o->server_ca, &h)) != 0 ||
	    (rc = cli_http_set_proxy(h, o->proxy)) != 0)
		goto out;
	if (o->client_cert != NULL &&
	    (rc = cli_http_set_client_cert(h, o->client_cert, o->client_key, o->client_key_password_file)) != 0)
		goto out;
	if (otp != NULL && (rc = cli_http_set_basic(h, o->otp, otp)) != 0)
		goto out;
	esc_secret_free(otp); /* now in the Authorization header, in the secure heap */
	otp = NULL;
	if (reenroll && subject == NULL &&
	    (subject = X509_NAME_dup(X509_get_subject_name(cli_http_client_cert(h)))) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	if (!reenroll && subject == NULL && o->client_cert != NULL &&
	    (subject = X509_NAME_dup(X509_get_subject_name(cli_http_client_cert(h)))) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	/* The key: made here, or the current one for a renewal (the service makes it for serverkeygen). */
	if (o->mode != MODE_SERVERKEYGEN) {
		if (reenroll && !o->new_key) {
			key = cli_http_client_key(h);
			EVP_PKEY_up_ref(key);
		} else if (tok != NULL && o->mode == MODE_SIMPLEENROLL) {
			if ((rc = token_keygen(ctx, tok, type, &tkey, &key)) != 0)
				goto out;
		} else if ((rc = new_key(ctx, type, &key)) != 0) {
			goto out;
		}
	}
	/*
	 * The token takes the key (logged in, writable, no object with its
	 * CKA_ID, a mechanism for it)?  Asked before the request is sent:
	 * the one-time password is spent only on a key that will get there.
	 * For serverkeygen the key is not known yet: the state only.
	 */
	if (tok != NULL && tkey == NULL && (e = esc_token_import_check_key(ctx, tok, key)) != ESC_OK) {
		rc = fail_lib(ctx, e, "--to-token (nothing was sent)");
		goto out;
	}
	/* Also the one connection to the service: every request below reuses it. */
	if ((rc = get_certs(ctx, h, o->label, "cacerts", &cacerts)) != 0)
		goto out;
	if ((rc = enroll_request(ctx, h, o, cacerts, subject, key, &cert, &issued_key)) != 0)
		goto out;

	if (f_cert.fd != -1) {
		if ((one = sk_X509_new_null()) == NULL || sk_X509_push(one, cert) <= 0) {
			rc = esc_err_exit_code(ESC_ERR_NOMEM);
			goto out;
		}
		X509_up_ref(cert);
		if ((rc = out_certs(&f_cert, one)) != 0)
			goto out;
	}
	if (f_ca.fd != -1 && (rc = out_certs(&f_ca, cacerts)) != 0)
		goto out;
	if (tkey != NULL) {
		print_cert(cert, "enrolled");
		/* Certified: the key stays on the token whatever happens to its certificate now. */
		rc = fflush(stdout) != 0 ? esc_err_exit_code(ESC_ERR_IO) : token_store_cert(ctx, o, tok, tkey, cert);
		esc_token_key_free(tkey);
		tkey = NULL;
		goto out;
	}
	if (tok != NULL) {
		print_cert(cert, o->mode == MODE_FULLCMC
					 ? "enrolled; key archived by the service (fullcmc)"
					 : "enrolled; key made and archived by the service (serverkeygen)");
		if (fflush(stdout) != 0 || (rc = to_token(ctx, o, tok, issued_key, cert, cacerts, kpw)) != 0)
			goto out;
		rc = 0;
		goto out;
	}
	if (f_key.fd != -1) {
		char *pem = NULL;
		size_t len = 0;

		if ((e = esc_est_key_pem(ctx, issued_key, kpw, &pem, &len)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, e);
			goto out;
		}
		rc = out_write(&f_key, pem, len);
		free(pem); /* ciphertext */
		if (rc != 0)
			goto out;
		f_key.written = 1;
	}
	if (f_p12.fd != -1) {
		unsigned char *der = NULL;
		size_t len = 0;

		if ((e = esc_est_key_p12(ctx, issued_key, cert, cacerts, "p11escrow est", kpw, &der, &len)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, e);
			goto out;
		}
		rc = out_write(&f_p12, der, len);
		free(der);
		if (rc != 0)
			goto out;
		f_p12.written = 1;
	}
	print_cert(cert, o->mode == MODE_SIMPLEREENROLL ? "renewed"
			 : o->mode == MODE_SIMPLEENROLL ? "enrolled"
			 : o->mode == MODE_FULLCMC	? "enrolled; key archived by the service (fullcmc)"
						   : "enrolled; key made and archived by the service (serverkeygen)");
	rc = 0;
out:
	/* Written files are kept only if everything succeeded. */
	if (rc != 0)
		f_cert.written = f_key.written = f_p12.written = f_ca.written = 0;
	if ((rc2 = out_close(&f_cert)) != 0 && rc == 0)
		rc = rc2;
	if ((rc2 = out_close(&f_key)) != 0 && rc == 0)
		rc = rc2;
	if ((rc2 = out_close(&f_p12)) != 0 && rc == 0)
		rc = rc2;
	if ((rc2 = out_close(&f_ca)) != 0 && rc == 0)
		rc = rc2;
	esc_secret_free(otp);
	esc_secret_free(kpw);
	sk_X509_pop_free(cacerts, X509_free);
	sk_X509_pop_free(one, X509_free);
	X509_NAME_free(subject);
	EVP_PKEY_free(key);
	EVP_PKEY_free(issued_key);
	X509_free(cert);
	cli_http_free(h);
	/* A key made on the token for an enrollment that failed is taken off again. */
	if (tkey != NULL && esc_token_destroy_key(ctx, tok, tkey) != ESC_OK)
		fprintf(stderr, "%s %s: error: the key made on the token could not be removed again: %s\n", PROG, CMD,
			esc_ctx_errmsg(ctx));
	esc_token_key_free(tkey);
	esc_token_free(tok);
	return rc;
}

/* ---- transport-cert, cacerts ------------------------------------------------------- */

static int
do_fetch(struct esc_ctx *ctx, const struct opts *o, int transport)
{
	struct outfile f = {NULL, -1, 0};
	struct cli_http *h = NULL;
	STACK_OF(X509) *cacerts = NULL, *tr = NULL;
	char fp[ESC_FINGERPRINT_MAX];
	enum esc_err e;
	int rc, rc2;

	if ((rc = out_create(&f, o->out, 0644)) != 0)
		return rc;
	if ((rc = cli_http_open_anonymous(CMD, ctx, o->server, o->server_ca, &h)) != 0 ||
	    (rc = cli_http_set_proxy(h, o->proxy)) != 0 || (rc = get_certs(ctx, h, o->label, "cacerts", &cacerts)) != 0)
		goto out;
	if (transport) {
		if ((rc = get_certs(ctx, h, o->label, "transportcert", &tr)) != 0)
			goto out;
		if (sk_X509_num(tr) != 1) {
			fprintf(stderr, "%s %s: error: the answer of /transportcert holds %d certificates, not one\n",
				PROG, CMD, sk_X509_num(tr));
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
		if ((e = esc_est_transport_check(ctx, sk_X509_value(tr, 0), cacerts)) != ESC_OK) {
			rc = fail_lib(ctx, e, "the transport certificate is refused");
			goto out;
		}
	}
	if (f.fd == -1) {
		if (write_certs_pem(stdout, transport ? tr : cacerts) != 0 || fflush(stdout) != 0) {
			fprintf(stderr, "%s %s: error: cannot write to standard output\n", PROG, CMD);
			rc = esc_err_exit_code(ESC_ERR_IO);
		}
		goto out;
	}
	if ((rc = out_certs(&f, transport ? tr : cacerts)) != 0)
		goto out;
	esc_cert_fingerprint(sk_X509_value(transport ? tr : cacerts, 0), fp);
	printf("%s written to %s (%s)\n",
	       transport ? "transport certificate (issued by the CA, may receive keys)" : "CA certificate(s)", o->out,
	       fp);
	rc = 0;
out:
	if (rc != 0)
		f.written = 0;
	if ((rc2 = out_close(&f)) != 0 && rc == 0)
		rc = rc2;
	sk_X509_pop_free(cacerts, X509_free);
	sk_X509_pop_free(tr, X509_free);
	cli_http_free(h);
	return rc;
}

/* A label: a profile name as a path segment (letters, digits, '-', '_', '.'; not "." or ".."). */
static int
label_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 64 &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n &&
	       strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int
set_mode(struct opts *o, enum mode m)
{
	o->mode = m;
	o->modes++;
	return 0;
}

int
est_main(int argc, char *argv[])
{
	enum {
		OPT_SERVER = 256,
		OPT_SERVER_CA,
		OPT_PROXY,
		OPT_LABEL,
		OPT_FULLCMC,
		OPT_SERVERKEYGEN,
		OPT_SIMPLEENROLL,
		OPT_SIMPLEREENROLL,
		OPT_OTP,
		OPT_OTP_FILE,
		OPT_CLIENT_CERT,
		OPT_CLIENT_KEY,
		OPT_CLIENT_KEY_PW,
		OPT_SUBJECT,
		OPT_KEY_TYPE,
		OPT_NEW_KEY,
		OPT_OUT_CERT,
		OPT_OUT_KEY,
		OPT_OUT_P12,
		OPT_OUT_CA,
		OPT_KEY_PW,
		OPT_TO_TOKEN,
		OPT_TO_TOKEN_MODULE,
		OPT_TO_TOKEN_PIN,
		OPT_TO_TOKEN_LABEL,
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"proxy", required_argument, NULL, OPT_PROXY},
		{"label", required_argument, NULL, OPT_LABEL},
		{"fullcmc", no_argument, NULL, OPT_FULLCMC},
		{"serverkeygen", no_argument, NULL, OPT_SERVERKEYGEN},
		{"simpleenroll", no_argument, NULL, OPT_SIMPLEENROLL},
		{"simplereenroll", no_argument, NULL, OPT_SIMPLEREENROLL},
		{"otp", required_argument, NULL, OPT_OTP},
		{"otp-file", required_argument, NULL, OPT_OTP_FILE},
		{"client-cert", required_argument, NULL, OPT_CLIENT_CERT},
		{"client-key", required_argument, NULL, OPT_CLIENT_KEY},
		{"client-key-password-file", required_argument, NULL, OPT_CLIENT_KEY_PW},
		{"subject", required_argument, NULL, OPT_SUBJECT},
		{"key-type", required_argument, NULL, OPT_KEY_TYPE},
		{"new-key", no_argument, NULL, OPT_NEW_KEY},
		{"out-cert", required_argument, NULL, OPT_OUT_CERT},
		{"out-key", required_argument, NULL, OPT_OUT_KEY},
		{"out-p12", required_argument, NULL, OPT_OUT_P12},
		{"out-ca", required_argument, NULL, OPT_OUT_CA},
		{"key-password-file", required_argument, NULL, OPT_KEY_PW},
		{"to-token", required_argument, NULL, OPT_TO_TOKEN},
		{"to-token-module", required_argument, NULL, OPT_TO_TOKEN_MODULE},
		{"to-token-pin-file", required_argument, NULL, OPT_TO_TOKEN_PIN},
		{"to-token-label", required_argument, NULL, OPT_TO_TOKEN_LABEL},
		{"out", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	const char *action;
	int c, rc;

	memset(&o, 0, sizeof(o));
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c':
			o.config = optarg;
			break;
		case 'o':
			o.out = optarg;
			break;
		case OPT_SERVER:
			o.server = optarg;
			break;
		case OPT_SERVER_CA:
			o.server_ca = optarg;
			break;
		case OPT_PROXY:
			o.proxy = optarg;
			break;
		case OPT_LABEL:
			o.label = optarg;
			break;
		case OPT_FULLCMC:
			set_mode(&o, MODE_FULLCMC);
			break;
		case OPT_SERVERKEYGEN:
			set_mode(&o, MODE_SERVERKEYGEN);
			break;
		case OPT_SIMPLEENROLL:
			set_mode(&o, MODE_SIMPLEENROLL);
			break;
		case OPT_SIMPLEREENROLL:
			set_mode(&o, MODE_SIMPLEREENROLL);
			break;
		case OPT_OTP:
			o.otp = optarg;
			break;
		case OPT_OTP_FILE:
			o.otp_file = optarg;
			break;
		case OPT_CLIENT_CERT:
			o.client_cert = optarg;
			break;
		case OPT_CLIENT_KEY:
			o.client_key = optarg;
			break;
		case OPT_CLIENT_KEY_PW:
			o.client_key_password_file = optarg;
			break;
		case OPT_SUBJECT:
			o.subject = optarg;
			break;
		case OPT_KEY_TYPE:
			o.key_type = optarg;
			break;
		case OPT_NEW_KEY:
			o.new_key = 1;
			break;
		case OPT_OUT_CERT:
			o.out_cert = optarg;
			break;
		case OPT_OUT_KEY:
			o.out_key = optarg;
			break;
		case OPT_OUT_P12:
			o.out_p12 = optarg;
			break;
		case OPT_OUT_CA:
			o.out_ca = optarg;
			break;
		case OPT_KEY_PW:
			o.key_password_file = optarg;
			break;
		case OPT_TO_TOKEN:
			o.to_token = optarg;
			break;
		case OPT_TO_TOKEN_MODULE:
			o.to_token_module = optarg;
			break;
		case OPT_TO_TOKEN_PIN:
			o.to_token_pin_file = optarg;
			break;
		case OPT_TO_TOKEN_LABEL:
			o.to_token_label = optarg;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return cli_usage_error(CMD, "expected one action: enroll, transport-cert or cacerts");
	action = argv[optind];
	if (strcmp(action, "enroll") != 0 && strcmp(action, "transport-cert") != 0 && strcmp(action, "cacerts") != 0)
		return cli_usage_error(CMD, "unknown action '%s' (enroll, transport-cert, cacerts)", action);
	if (o.server == NULL)
		return cli_usage_error(CMD, "--server URL is required: the EST service");
	if (o.label != NULL && !label_ok(o.label))
		return cli_usage_error(CMD, "--label wants a profile name (letters, digits, '-', '_', '.')");
	if (strcmp(action, "enroll") != 0) {
		if (o.modes > 0 || o.otp || o.client_cert || o.out_cert || o.out_key || o.out_p12 || o.out_ca ||
		    o.new_key || o.subject || o.key_type || o.to_token || o.to_token_module || o.to_token_pin_file ||
		    o.to_token_label)
			return cli_usage_error(CMD, "%s takes --server, --server-ca, --proxy, --label and -o only",
					       action);
	} else {
		if (o.modes > 1)
			return cli_usage_error(CMD, "--fullcmc, --serverkeygen, --simpleenroll and --simplereenroll "
						    "exclude each other");
		if (o.out != NULL)
			return cli_usage_error(CMD, "enroll writes --out-cert, --out-key, --out-p12 and --out-ca, "
						    "not -o");
		if ((o.client_cert == NULL) != (o.client_key == NULL))
			return cli_usage_error(CMD, "--client-cert FILE and --client-key FILE go together");
		if (o.otp != NULL && o.client_cert != NULL)
			return cli_usage_error(CMD, "--otp and --client-cert exclude each other: the service takes "
						    "the certificate");
		if (o.otp == NULL && o.client_cert == NULL)
			return cli_usage_error(CMD, "how does the enrollee authenticate? --otp NAME (a one-time "
						    "enrollment password) or --client-cert FILE --client-key FILE");
		if (o.otp_file != NULL && o.otp == NULL)
			return cli_usage_error(CMD, "--otp-file goes with --otp NAME");
		if (o.mode == MODE_SIMPLEREENROLL && o.client_cert == NULL)
			return cli_usage_error(CMD, "--simplereenroll renews the certificate of --client-cert FILE "
						    "(with --client-key FILE)");
		if (o.new_key && o.mode != MODE_SIMPLEREENROLL)
			return cli_usage_error(CMD, "--new-key is for --simplereenroll (the other modes always make "
						    "a new key)");
		if (o.mode == MODE_SERVERKEYGEN && o.key_type != NULL)
			return cli_usage_error(CMD, "--serverkeygen: the service makes the key of the profile's type "
						    "(no --key-type)");
		if (o.mode == MODE_SIMPLEREENROLL && !o.new_key && o.key_type != NULL)
			return cli_usage_error(CMD, "--key-type goes with --new-key here");
	}
	if ((rc = cli_init(CMD, o.config, &ctx, &cfg)) != 0)
		goto out;
	if (strcmp(action, "enroll") == 0)
		rc = do_enroll(ctx, cfg, &o);
	else
		rc = do_fetch(ctx, &o, strcmp(action, "transport-cert") == 0);
out:
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
