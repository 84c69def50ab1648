/*
 * Test tool: seal and open envelopes through libp11escrow, so integration
 * tests can cross-check the library against stock `openssl cms` with real
 * token keys.  Not installed.
 *
 *   envelope_tool seal [--sha256] CERT.pem... <plain >envelope.der
 *   envelope_tool open --token URI --key URI --cert CERT.pem --pin-file F [--module M] <envelope >plain
 *   envelope_tool genkey TOKEN-URI TYPE LABEL PIN-FILE [sign] </dev/null >public.pem
 *   envelope_tool archive CONNINFO CERT.pem KEY.pem </dev/null   (esc_archive_key; prints the record id)
 *     (a decrypt-only key pair made by esc_token_generate_key, as KRA enrollment will;
 *     with "sign", a sign-only one: no CKA_DECRYPT, no CKA_DERIVE)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include <p11escrow/archive.h>
#include <p11escrow/ctx.h>
#include <p11escrow/envelope.h>
#include <p11escrow/pin.h>
#include <p11escrow/token.h>

#define MAXIN (ESC_ENVELOPE_MAX + 1)

static unsigned char *
read_all(size_t *len)
{
	unsigned char *buf = malloc(MAXIN);
	size_t n = 0;
	ssize_t k;

	if (buf == NULL)
		return NULL;
	while (n < MAXIN && (k = read(STDIN_FILENO, buf + n, MAXIN - n)) > 0)
		n += (size_t)k;
	*len = n;
	return buf;
}

static X509 *
load_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;

	if (f)
		fclose(f);
	return x;
}

/*
 * Error paths end this one-shot test helper at once with _exit(): the
 * kernel reclaims everything, and leak checking still covers every success
 * path, which frees what it allocated.
 */
static int
fail(struct esc_ctx *ctx, enum esc_err r)
{
	fprintf(stderr, "envelope_tool: %s\n", esc_ctx_errmsg(ctx));
	fflush(NULL);
	_exit(esc_err_exit_code(r));
}

int
main(int argc, char *argv[])
{
	struct esc_ctx *ctx = NULL;
	enum esc_err r;
	unsigned char *in, *out = NULL;
	size_t inlen = 0, outlen = 0;
	int i;

	if (argc < 2 || esc_secmem_init() != ESC_OK || esc_ctx_new(&ctx) != ESC_OK)
		return 2;
	if (strcmp(argv[1], "genkey") == 0 && (argc == 6 || (argc == 7 && strcmp(argv[6], "sign") == 0))) {
		struct esc_token *tok = NULL;
		struct esc_token_key *k = NULL;
		struct esc_secret *pin = NULL;
		enum esc_key_type type;
		EVP_PKEY *pub = NULL;

		if ((r = esc_key_type_parse(ctx, argv[3], &type)) != ESC_OK ||
		    (r = esc_token_open(ctx, NULL, argv[2], &tok)) != ESC_OK ||
		    (r = esc_secret_from_file(ctx, argv[5], &pin)) != ESC_OK ||
		    (r = esc_token_login(ctx, tok, pin)) != ESC_OK ||
		    (r = esc_token_generate_key(ctx, tok, type, argc == 7 ? ESC_KEY_USE_SIGN : ESC_KEY_USE_DECRYPT,
						argv[4], &k)) != ESC_OK ||
		    (r = esc_token_key_public(ctx, tok, k, &pub)) != ESC_OK)
			return fail(ctx, r);
		PEM_write_PUBKEY(stdout, pub);
		EVP_PKEY_free(pub);
		esc_token_key_free(k);
		esc_secret_free(pin);
		esc_token_free(tok);
		esc_ctx_free(ctx);
		return 0;
	}
	if (strcmp(argv[1], "archive") == 0 && argc == 5) {
		struct esc_store *st = NULL;
		struct esc_archive_info info;
		X509 *x = load_cert(argv[3]);
		FILE *f = fopen(argv[4], "r");
		EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;

		if (f)
			fclose(f);
		if (x == NULL || k == NULL)
			return 2;
		if ((r = esc_store_connect(ctx, argv[2], &st)) != ESC_OK ||
		    (r = esc_archive_key(ctx, st, "test-tool", x, k, ESC_SOURCE_IMPORT, &info)) != ESC_OK)
			return fail(ctx, r);
		printf("%s %s\n", info.id, info.kras);
		EVP_PKEY_free(k);
		X509_free(x);
		esc_store_free(st);
		esc_ctx_free(ctx);
		return 0;
	}
	if ((in = read_all(&inlen)) == NULL)
		return 2;
	if (strcmp(argv[1], "seal") == 0) {
		enum esc_oaep_hash hash = ESC_OAEP_SHA1, hashes[8];
		X509 *certs[8];
		size_t n = 0;

		for (i = 2; i < argc && n < 8; i++) {
			if (strcmp(argv[i], "--sha256") == 0)
				hash = ESC_OAEP_SHA256;
			else if ((certs[n++] = load_cert(argv[i])) == NULL)
				return 2;
		}
		for (i = 0; i < 8; i++)
			hashes[i] = hash;
		if ((r = esc_envelope_seal(ctx, in, inlen, certs, hashes, n, &out, &outlen)) != ESC_OK)
			return fail(ctx, r);
		fwrite(out, 1, outlen, stdout);
		free(out);
		free(in);
		for (i = 0; i < (int)n; i++)
			X509_free(certs[i]);
		esc_ctx_free(ctx);
		return 0;
	}
	if (strcmp(argv[1], "open") == 0) {
		const char *token = NULL, *key = NULL, *cert = NULL, *pin_file = NULL, *module = NULL;
		struct esc_token *tok = NULL;
		struct esc_token_key *k = NULL;
		struct esc_secret *pin = NULL;
		EVP_PKEY *pkey = NULL;
		X509 *x;

		for (i = 2; i + 1 < argc; i += 2) {
			if (strcmp(argv[i], "--token") == 0)
				token = argv[i + 1];
			else if (strcmp(argv[i], "--key") == 0)
				key = argv[i + 1];
			else if (strcmp(argv[i], "--cert") == 0)
				cert = argv[i + 1];
			else if (strcmp(argv[i], "--pin-file") == 0)
				pin_file = argv[i + 1];
			else if (strcmp(argv[i], "--module") == 0)
				module = argv[i + 1];
		}
		if (token == NULL || key == NULL || cert == NULL || pin_file == NULL || (x = load_cert(cert)) == NULL)
			return 2;
		if ((r = esc_token_open(ctx, module, token, &tok)) != ESC_OK ||
		    (r = esc_secret_from_file(ctx, pin_file, &pin)) != ESC_OK ||
		    (r = esc_token_login(ctx, tok, pin)) != ESC_OK ||
		    (r = esc_token_find_key(ctx, tok, key, &k)) != ESC_OK ||
		    (r = esc_token_key_private(ctx, tok, k, &pkey)) != ESC_OK ||
		    (r = esc_envelope_open(ctx, in, inlen, pkey, x, &out, &outlen)) != ESC_OK)
			return fail(ctx, r);
		fwrite(out, 1, outlen, stdout);
		esc_envelope_plain_free(out, outlen);
		EVP_PKEY_free(pkey);
		esc_token_key_free(k);
		esc_secret_free(pin);
		esc_token_free(tok);
		X509_free(x);
		free(in);
		esc_ctx_free(ctx);
		return 0;
	}
	return 2;
}
