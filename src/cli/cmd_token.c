/*
 * p11escrow token — inspect a PKCS#11 token.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

#include <p11escrow/pin.h>
#include <p11escrow/token.h>

#include "cli.h"

#define CMD "token"

static void
help(void)
{
	printf("Usage: %s " CMD " info [OPTIONS] URI\n\n"
	       "Show the token that the RFC 7512 URI selects and every mechanism it offers, with\n"
	       "key sizes and flags.  With --key URI, also show that private key's protection.\n\n"
	       "Options:\n"
	       "  -c, --config FILE      configuration file\n"
	       "  -m, --module MODULE    PKCS#11 module path or p11-kit:NAME\n"
	       "      --key URI          a private key to describe (needs the PIN)\n"
	       "  -p, --pin-file FILE    user PIN (else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "  -h, --help             this text\n",
	       PROG);
	cli_print_exit_codes();
}

static void
print_flags(unsigned long f)
{
	static const struct {
		unsigned long flag;
		const char *name;
	} names[] = {
		{CKF_HW, "hw"},
		{CKF_ENCRYPT, "encrypt"},
		{CKF_DECRYPT, "decrypt"},
		{CKF_DIGEST, "digest"},
		{CKF_SIGN, "sign"},
		{CKF_VERIFY, "verify"},
		{CKF_GENERATE, "generate"},
		{CKF_GENERATE_KEY_PAIR, "generate-key-pair"},
		{CKF_WRAP, "wrap"},
		{CKF_UNWRAP, "unwrap"},
		{CKF_DERIVE, "derive"},
	};
	size_t i;
	int first = 1;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (f & names[i].flag) {
			printf("%s%s", first ? "" : ",", names[i].name);
			first = 0;
		}
}

static enum esc_err
describe_key(struct esc_ctx *ctx, struct esc_token *tok, const char *uri)
{
	struct esc_token_key *key = NULL;
	char *kuri = NULL;
	enum esc_err r;

	if ((r = esc_token_find_key(ctx, tok, uri, &key)) != ESC_OK ||
	    (r = esc_token_key_uri(ctx, tok, key, &kuri)) != ESC_OK)
		goto out;
	printf("key:          %s (%s)\n  uri:        %s\n", esc_token_key_label(key), esc_token_key_type_name(key),
	       kuri);
	r = esc_token_key_check_protected(ctx, tok, key);
	printf("  protection: %s\n", r == ESC_OK ? "sensitive, never extractable" : esc_ctx_errmsg(ctx));
out:
	free(kuri);
	esc_token_key_free(key);
	return r;
}

int
token_main(int argc, char *argv[])
{
	enum { OPT_KEY = 256 };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},  {"module", required_argument, NULL, 'm'},
		{"key", required_argument, NULL, OPT_KEY}, {"pin-file", required_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},	   {NULL, 0, NULL, 0},
	};
	const char *config = NULL, *module = NULL, *key_uri = NULL, *pin_file = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_token *tok = NULL;
	struct esc_secret *pin = NULL;
	struct esc_mechanism *mechs = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int c, rc;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:m:p:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c':
			config = optarg;
			break;
		case 'm':
			module = optarg;
			break;
		case 'p':
			pin_file = optarg;
			break;
		case OPT_KEY:
			key_uri = optarg;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc || strcmp(argv[optind], "info") != 0)
		return cli_usage_error(CMD, "expected the action 'info'");
	if (argc - optind != 2)
		return cli_usage_error(CMD, "'info' takes exactly one PKCS#11 URI");
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (module != NULL && (rc = cli_set(CMD, ctx, cfg, "module", module)) != 0)
		goto out;
	if ((r = esc_token_open(ctx, esc_config_get(cfg, "module"), argv[optind + 1], &tok)) != ESC_OK ||
	    (r = esc_token_mechanisms(ctx, tok, &mechs, &n)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	printf("module:       %s\ntoken:        %s\nserial:       %s\nmanufacturer: %s\nmodel:        %s\n",
	       esc_token_module_path(tok), esc_token_label(tok), esc_token_serial(tok), esc_token_manufacturer(tok),
	       esc_token_model(tok));
	printf("mechanisms:   %zu\n", n);
	for (i = 0; i < n; i++) {
		const char *name = esc_ckm_name(mechs[i].type);

		if (name != NULL)
			printf("  %-28s", name);
		else
			printf("  0x%08lx                  ", mechs[i].type);
		printf(" %5lu..%-5lu ", mechs[i].min_bits, mechs[i].max_bits);
		print_flags(mechs[i].flags);
		printf("\n");
	}
	if (key_uri != NULL) {
		if (pin_file == NULL)
			pin_file = esc_config_get(cfg, "ca_pin_file");
		if ((r = esc_secret_obtain(ctx, pin_file, "P11ESCROW_CA_PIN", "token user PIN: ", &pin)) != ESC_OK ||
		    (r = esc_token_login(ctx, tok, pin)) != ESC_OK || (r = describe_key(ctx, tok, key_uri)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
	}
	rc = 0;
out:
	free(mechs);
	esc_secret_free(pin);
	esc_token_free(tok);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
