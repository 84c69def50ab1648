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
#include "cli_json.h"

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
	       "      --json             " CLI_JSON_HELP ": module, token, serial,\n"
	       "                         manufacturer, model, mechanisms [{name, min_bits, max_bits, flags}],\n"
	       "                         key {label, type, uri, protection} (null without --key)\n"
	       "  -h, --help             this text\n",
	       PROG);
	cli_print_exit_codes();
}

static const struct {
	unsigned long flag;
	const char *name;
} flag_names[] = {
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

static void
print_flags(unsigned long f)
{
	size_t i;
	int first = 1;

	for (i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (f & flag_names[i].flag) {
			printf("%s%s", first ? "" : ",", flag_names[i].name);
			first = 0;
		}
}

/* A mechanism's name: CKM_..., else its number in hex. */
static const char *
mech_name(unsigned long type, char *buf, size_t len)
{
	const char *name = esc_ckm_name(type);

	if (name != NULL)
		return name;
	snprintf(buf, len, "0x%08lx", type);
	return buf;
}

/* --json: the token, its mechanisms and key (NULL: none asked for); 0 or an exit code. */
static int
print_json(struct esc_token *tok, const struct esc_mechanism *m, size_t n, json_t *key)
{
	json_t *list = json_array(), *flags;
	char buf[24];
	size_t i, j;
	int bad = list == NULL;

	for (i = 0; !bad && i < n; i++) {
		bad = (flags = json_array()) == NULL;
		for (j = 0; !bad && j < sizeof(flag_names) / sizeof(flag_names[0]); j++)
			if (m[i].flags & flag_names[j].flag)
				bad = json_array_append_new(flags, json_string(flag_names[j].name)) != 0;
		bad = bad || json_array_append_new(list, json_pack("{s:s, s:I, s:I, s:o}", "name",
								   mech_name(m[i].type, buf, sizeof(buf)), "min_bits",
								   (json_int_t)m[i].min_bits, "max_bits",
								   (json_int_t)m[i].max_bits, "flags", flags)) != 0;
	}
	if (bad) {
		json_decref(list);
		json_decref(key);
		return cli_json_print(CMD, NULL);
	}
	return cli_json_print(
		CMD, json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "module",
			       cli_json_text(esc_token_module_path(tok)), "token", cli_json_text(esc_token_label(tok)),
			       "serial", cli_json_text(esc_token_serial(tok)), "manufacturer",
			       cli_json_text(esc_token_manufacturer(tok)), "model", cli_json_text(esc_token_model(tok)),
			       "mechanisms", list, "key", key != NULL ? key : json_null()));
}

/*
 * The private key of uri: printed (text), or as *json (--json, not NULL).
 * A key that is not sensitive and never extractable is an error: the
 * text names why before the error line; --json prints nothing then.
 */
static enum esc_err
describe_key(struct esc_ctx *ctx, struct esc_token *tok, const char *uri, json_t **json)
{
	struct esc_token_key *key = NULL;
	char *kuri = NULL;
	enum esc_err r;

	if ((r = esc_token_find_key(ctx, tok, uri, &key)) != ESC_OK ||
	    (r = esc_token_key_uri(ctx, tok, key, &kuri)) != ESC_OK)
		goto out;
	r = esc_token_key_check_protected(ctx, tok, key);
	if (json != NULL) {
		if (r == ESC_OK &&
		    (*json = json_pack("{s:o, s:o, s:o, s:s}", "label", cli_json_text(esc_token_key_label(key)), "type",
				       cli_json_text(esc_token_key_type_name(key)), "uri", cli_json_text(kuri),
				       "protection", "sensitive, never extractable")) == NULL) {
			esc_ctx_clear_error(ctx);
			r = ESC_ERR_NOMEM;
		}
		goto out;
	}
	printf("key:          %s (%s)\n  uri:        %s\n", esc_token_key_label(key), esc_token_key_type_name(key),
	       kuri);
	printf("  protection: %s\n", r == ESC_OK ? "sensitive, never extractable" : esc_ctx_errmsg(ctx));
out:
	free(kuri);
	esc_token_key_free(key);
	return r;
}

int
token_main(int argc, char *argv[])
{
	enum { OPT_KEY = 256, OPT_JSON };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"module", required_argument, NULL, 'm'},
		{"key", required_argument, NULL, OPT_KEY},
		{"pin-file", required_argument, NULL, 'p'},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *module = NULL, *key_uri = NULL, *pin_file = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_token *tok = NULL;
	struct esc_secret *pin = NULL;
	struct esc_mechanism *mechs = NULL;
	json_t *key = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int c, rc, json = 0;

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
		case OPT_JSON:
			json = 1;
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
	if (!json) {
		printf("module:       %s\ntoken:        %s\nserial:       %s\nmanufacturer: %s\nmodel:        %s\n",
		       esc_token_module_path(tok), esc_token_label(tok), esc_token_serial(tok),
		       esc_token_manufacturer(tok), esc_token_model(tok));
		printf("mechanisms:   %zu\n", n);
	}
	for (i = 0; !json && i < n; i++) {
		char buf[24];

		printf("  %-28s %5lu..%-5lu ", mech_name(mechs[i].type, buf, sizeof(buf)), mechs[i].min_bits,
		       mechs[i].max_bits);
		print_flags(mechs[i].flags);
		printf("\n");
	}
	if (key_uri != NULL) {
		if (pin_file == NULL)
			pin_file = esc_config_get(cfg, "ca_pin_file");
		if ((r = esc_secret_obtain(ctx, pin_file, "P11ESCROW_CA_PIN", "token user PIN: ", &pin)) != ESC_OK ||
		    (r = esc_token_login(ctx, tok, pin)) != ESC_OK ||
		    (r = describe_key(ctx, tok, key_uri, json ? &key : NULL)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
	}
	rc = json ? print_json(tok, mechs, n, key) : 0;
	key = NULL; /* taken over by print_json */
out:
	json_decref(key);
	free(mechs);
	esc_secret_free(pin);
	esc_token_free(tok);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
