/*
 * p11escrow setup — create or report the CA.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/pin.h>
#include <p11escrow/setup.h>
#include <p11escrow/token.h>

#include "cli.h"

#define CMD "setup"

static void
help(void)
{
	printf("Usage: %s " CMD " [OPTIONS]\n\n"
	       "Migrate the database schema, then create the CA on the CA token: the signing key\n"
	       "(or adopt an existing one), the transport key and the storage key, a self-signed CA\n"
	       "certificate (or a CSR for an external CA), the transport and storage certificates. Key\n"
	       "references (PKCS#11 URIs, CKA_IDs) go to PostgreSQL; PINs never do. A second run\n"
	       "creates nothing and reports the existing CA.\n\n"
	       "Options (each overrides the configuration file and P11ESCROW_* environment):\n"
	       "  -c, --config FILE          configuration file (default %s if present)\n"
	       "  -d, --database CONNINFO    libpq connection string\n"
	       "  -m, --module MODULE        PKCS#11 module path or p11-kit:NAME\n"
	       "  -t, --token URI            CA token, e.g. 'pkcs11:token=p11escrow-ca'\n"
	       "  -p, --pin-file FILE        file holding the CA token's user PIN\n"
	       "                             (else $P11ESCROW_CA_PIN, else a prompt on a terminal)\n"
	       "  -k, --key-type TYPE        CA signing key: rsa3072 (default), rsa4096, ec-p256, ec-p384\n"
	       "      --transport-key-type T transport key: ec-p256 (default), ec-p384, rsa3072\n"
	       "      --storage-key-type T   storage key: rsa3072 (default), rsa4096, ec-p256, ec-p384\n"
	       "      --adopt-key URI        use this existing private key on the token as CA signing key\n"
	       "  -s, --subject DN           CA subject, e.g. 'CN=Example Escrow CA,O=Example'\n"
	       "      --days N               CA certificate validity in days (default 3650)\n"
	       "      --csr FILE             external CA: write a CSR (PEM) instead of self-signing\n"
	       "      --import-cert FILE     external CA: import the signed CA certificate (PEM/DER)\n"
	       "  -h, --help                 this text\n",
	       PROG, ESC_CONFIG_DEFAULT_PATH);
	cli_print_exit_codes();
}

static void
print_result(const struct esc_setup_result *res)
{
	size_t i;
	static const char *const what[] = {"created", "already set up: nothing changed",
					   "pending: send the CSR to the external CA, then run setup --import-cert",
					   "external CA certificate imported"};

	printf("CA %s\n", what[res->outcome]);
	printf("  state:       %s\n", res->state ? res->state : "?");
	printf("  subject:     %s\n", res->subject ? res->subject : "?");
	if (res->fingerprint != NULL)
		printf("  fingerprint: %s\n", res->fingerprint);
	if (res->schema_from != res->schema_to)
		printf("  schema:      migrated from version %d to %d\n", res->schema_from, res->schema_to);
	else
		printf("  schema:      version %d (current)\n", res->schema_to);
	if (res->note[0] != '\0')
		printf("  note:        %s\n", res->note);
	for (i = 0; i < res->nkeys; i++)
		printf("  key %-10s %s (%s)\n             %s\n", res->keys[i].role, res->keys[i].label,
		       res->keys[i].type, res->keys[i].uri ? res->keys[i].uri : "");
}

int
setup_main(int argc, char *argv[])
{
	enum { OPT_TRANSPORT = 256, OPT_STORAGE, OPT_ADOPT, OPT_DAYS, OPT_CSR, OPT_IMPORT };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"module", required_argument, NULL, 'm'},
		{"token", required_argument, NULL, 't'},
		{"pin-file", required_argument, NULL, 'p'},
		{"key-type", required_argument, NULL, 'k'},
		{"transport-key-type", required_argument, NULL, OPT_TRANSPORT},
		{"storage-key-type", required_argument, NULL, OPT_STORAGE},
		{"adopt-key", required_argument, NULL, OPT_ADOPT},
		{"subject", required_argument, NULL, 's'},
		{"days", required_argument, NULL, OPT_DAYS},
		{"csr", required_argument, NULL, OPT_CSR},
		{"import-cert", required_argument, NULL, OPT_IMPORT},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct {
		int opt;
		const char *key;
	} keyed[] = {
		{'d', "database"},
		{'m', "module"},
		{'t', "ca_token"},
		{'p', "ca_pin_file"},
		{'k', "ca_key_type"},
		{OPT_TRANSPORT, "transport_key_type"},
		{OPT_STORAGE, "storage_key_type"},
		{'s', "ca_subject"},
		{OPT_DAYS, "ca_days"},
	};
	const char *set[sizeof(keyed) / sizeof(keyed[0])] = {NULL};
	const char *config = NULL;
	struct esc_setup_opts o;
	struct esc_setup_result *res = NULL;
	struct esc_secret *pin = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	enum esc_err r;
	size_t i;
	int c, rc;

	memset(&o, 0, sizeof(o));
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:m:t:p:k:s:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c':
			config = optarg;
			break;
		case OPT_ADOPT:
			o.adopt_key_uri = optarg;
			break;
		case OPT_CSR:
			o.csr_out = optarg;
			break;
		case OPT_IMPORT:
			o.import_cert = optarg;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		case '?':
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		default:
			for (i = 0; i < sizeof(keyed) / sizeof(keyed[0]); i++)
				if (keyed[i].opt == c)
					set[i] = optarg;
			break;
		}
	}
	if (optind < argc)
		return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
	if (o.csr_out != NULL && o.import_cert != NULL)
		return cli_usage_error(CMD, "--csr and --import-cert are two separate steps");
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	for (i = 0; i < sizeof(keyed) / sizeof(keyed[0]); i++)
		if (set[i] != NULL && (rc = cli_set(CMD, ctx, cfg, keyed[i].key, set[i])) != 0)
			goto out;
	if ((o.adopt_key_uri != NULL && (r = esc_token_uri_check(ctx, o.adopt_key_uri)) != ESC_OK) ||
	    (r = esc_key_type_parse(ctx, esc_config_get(cfg, "ca_key_type"), &o.ca_key_type)) != ESC_OK ||
	    (r = esc_key_type_parse(ctx, esc_config_get(cfg, "transport_key_type"), &o.transport_key_type)) != ESC_OK ||
	    (r = esc_key_type_parse(ctx, esc_config_get(cfg, "storage_key_type"), &o.storage_key_type)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	o.conninfo = esc_config_get(cfg, "database");
	o.module = esc_config_get(cfg, "module");
	o.token_uri = esc_config_get(cfg, "ca_token");
	o.subject = esc_config_get(cfg, "ca_subject");
	o.days = (int)esc_config_get_long(cfg, "ca_days");
	/*
	 * The PIN is read now but only used if the CA must be created: a
	 * missing PIN source is reported by setup only when it matters.
	 */
	r = esc_secret_obtain(ctx, esc_config_get(cfg, "ca_pin_file"), "P11ESCROW_CA_PIN", "CA token user PIN: ", &pin);
	if (r != ESC_OK && r != ESC_ERR_PIN_MISSING) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	esc_ctx_clear_error(ctx);
	o.pin = pin;
	if ((r = esc_setup_run(ctx, &o, &res)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	print_result(res);
	if (res->cert_pem != NULL)
		printf("\n%s", res->cert_pem);
	rc = 0;
out:
	esc_setup_result_free(res);
	esc_secret_free(pin);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
