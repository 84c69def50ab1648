/*
 * p11escrow cert — revoke certificates, sign CRLs.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include <p11escrow/revoke.h>

#include "cli.h"

#define CMD "cert"

static void
help(void)
{
	printf("Usage: %s " CMD " revoke --serial HEX --reason REASON --user NAME [OPTIONS]\n"
	       "       %s " CMD " crl --out FILE [--days N] [OPTIONS]\n\n"
	       "revoke  revoke a certificate this CA issued or an archived one (administrators and\n"
	       "        certificate managers).  REASON: unspecified, keyCompromise, affiliationChanged,\n"
	       "        superseded, cessationOfOperation.  A foreign certificate is marked revoked here\n"
	       "        only; its own CA must publish it.\n"
	       "crl     sign a CRL of every revoked certificate of this CA with the CA key on the token\n"
	       "        (needs the CA token PIN) and write it as PEM.\n\n"
	       "Options:\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string\n"
	       "  -u, --user NAME            the acting account (revoke)\n"
	       "      --password-file FILE   its password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -m, --module MODULE        PKCS#11 module of the CA token (crl)\n"
	       "  -p, --pin-file FILE        CA token PIN (crl; else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "      --serial HEX           the certificate's serial number\n"
	       "      --reason REASON        why (revoke)\n"
	       "  -o, --out FILE             where the CRL goes (crl; '-' for standard output)\n"
	       "      --days N               CRL validity (crl; default 7)\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG);
	cli_print_exit_codes();
}

static int
do_crl(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const char *out, int days)
{
	struct esc_token *ca = NULL;
	X509_CRL *crl = NULL;
	FILE *f = NULL;
	enum esc_err r;
	int rc;

	if ((rc = cli_open_ca_token(CMD, ctx, cfg, st, "ca-sign", NULL, &ca)) != 0)
		return rc;
	if ((r = esc_crl_build(ctx, st, ca, days, &crl)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	if ((f = strcmp(out, "-") == 0 ? stdout : fopen(out, "w")) == NULL || !PEM_write_X509_CRL(f, crl) ||
	    fflush(f) != 0) {
		fprintf(stderr, "%s %s: error: cannot write '%s': %s\n", PROG, CMD, out, strerror(errno));
		rc = esc_err_exit_code(ESC_ERR_IO);
		goto out;
	}
	if (strcmp(out, "-") != 0)
		printf("CRL with %d revoked certificate(s) written to %s\n", sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)),
		       out);
out:
	if (f != NULL && f != stdout)
		fclose(f);
	X509_CRL_free(crl);
	esc_token_free(ca);
	return rc;
}

int
cert_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_SERIAL, OPT_REASON, OPT_DAYS };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},	{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"module", required_argument, NULL, 'm'},	{"pin-file", required_argument, NULL, 'p'},
		{"serial", required_argument, NULL, OPT_SERIAL}, {"reason", required_argument, NULL, OPT_REASON},
		{"out", required_argument, NULL, 'o'},		{"days", required_argument, NULL, OPT_DAYS},
		{"help", no_argument, NULL, 'h'},		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *module = NULL;
	const char *pin_file = NULL, *serial = NULL, *reason = NULL, *out = NULL, *action;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *a = NULL;
	enum esc_err r;
	int c, rc, crl, days = 7;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:m:p:o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c': config = optarg; break;
		case 'd': database = optarg; break;
		case 'u': user = optarg; break;
		case OPT_PASSWORD: password_file = optarg; break;
		case 'm': module = optarg; break;
		case 'p': pin_file = optarg; break;
		case OPT_SERIAL: serial = optarg; break;
		case OPT_REASON: reason = optarg; break;
		case 'o': out = optarg; break;
		case OPT_DAYS:
			if ((rc = cli_int_option(CMD, "--days", optarg, 1, 366, &days)) != 0)
				return rc;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return cli_usage_error(CMD, "expected one action: revoke or crl");
	action = argv[optind];
	/* Decided once: the crl path below relies on out having been checked here. */
	crl = strcmp(action, "crl") == 0;
	if (crl ? out == NULL : (strcmp(action, "revoke") != 0 || serial == NULL || reason == NULL))
		return cli_usage_error(CMD, "use 'cert revoke --serial HEX --reason REASON' or 'cert crl --out FILE'");
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0 ||
	    (rc = cli_apply_common(CMD, ctx, cfg, database, module, NULL, pin_file)) != 0 ||
	    (rc = cli_open_store(CMD, ctx, cfg, &st)) != 0)
		goto out;
	if (crl) {
		rc = do_crl(ctx, cfg, st, out, days);
		goto out;
	}
	if ((rc = cli_login(CMD, ctx, st, user, password_file, &a)) != 0)
		goto out;
	if ((r = esc_cert_revoke(ctx, st, a, serial, reason)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	printf("certificate %s revoked (%s)\n", serial, reason);
	rc = 0;
out:
	esc_account_free(a);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
