/*
 * p11escrow cert — revoke certificates, sign CRLs.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <limits.h>

#include <openssl/pem.h>

#include <p11escrow/est.h>
#include <p11escrow/keeper.h>

#include <p11escrow/revoke.h>

#include "cli.h"
#include "http_client.h"

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
	       "        (needs the CA token PIN), publish it as the service's current CRL (what\n"
	       "        GET /crl serves from then on; its number is above every earlier one) and\n"
	       "        write it as PEM.  p11escrowd makes new ones by itself after a revocation\n"
	       "        and when crl_refresh percent of crl_validity has passed.\n\n"
	       "With --server URL both go through the service, which holds the CA token (crl:\n"
	       "administrators and certificate managers; no PIN here).  Straight on the database and\n"
	       "the CA token only with --local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such.\n\n"
	       "Options:\n"
	       "      --server URL           the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE       CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --local                break-glass: straight on the database (audited)\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string (--local)\n"
	       "  -u, --user NAME            the acting account (revoke; crl with --server)\n"
	       "      --password-file FILE   its password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -m, --module MODULE        PKCS#11 module of the CA token (crl)\n"
	       "  -p, --pin-file FILE        CA token PIN (crl; else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "      --serial HEX           the certificate's serial number\n"
	       "      --reason REASON        why (revoke)\n"
	       "  -o, --out FILE             where the CRL goes (crl; '-' for standard output)\n"
	       "      --days N               CRL validity in days (crl; default: crl_validity, in whole days)\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG);
	cli_print_exit_codes();
}

/* Write crl as PEM to out ('-': standard output). */
static int
write_crl(const char *out, X509_CRL *crl)
{
	FILE *f = NULL;
	int rc = 0;

	if ((f = strcmp(out, "-") == 0 ? stdout : fopen(out, "w")) == NULL || !PEM_write_X509_CRL(f, crl) ||
	    fflush(f) != 0) {
		fprintf(stderr, "%s %s: error: cannot write '%s': %s\n", PROG, CMD, out, strerror(errno));
		rc = esc_err_exit_code(ESC_ERR_IO);
	} else if (strcmp(out, "-") != 0) {
		printf("CRL with %d revoked certificate(s) written to %s\n",
		       sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), out);
	}
	if (f != NULL && f != stdout)
		fclose(f);
	return rc;
}

static int
do_crl(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const char *out, int days)
{
	struct esc_keeper *k = NULL;
	X509_CRL *crl = NULL;
	enum esc_err r;
	int rc;

	if ((rc = cli_open_keeper(CMD, ctx, cfg, st, &k)) != 0)
		return rc;
	if ((r = esc_keeper_sign_crl(ctx, k, st, NULL, days, &crl)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = write_crl(out, crl);
out:
	X509_CRL_free(crl);
	esc_keeper_free(k);
	return rc;
}

/* revoke / crl through the service (it holds the CA token). */
static int
remote(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *user, const char *password_file,
       const char *serial, const char *reason, const char *out, int days)
{
	struct cli_http *h = NULL;
	json_t *body = NULL, *doc = NULL;
	unsigned char *der = NULL;
	const unsigned char *p;
	X509_CRL *crl = NULL;
	char path[256] = "", ndays[16];
	const char *b64, *s;
	size_t len = 0;
	int rc;

	if (serial != NULL) {
		for (s = serial; *s && ((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') ||
					(*s >= 'A' && *s <= 'F') || *s == ':');
		     s++)
			;
		if (*s != '\0' || *serial == '\0' || strlen(serial) > 128)
			return cli_usage_error(CMD, "--serial wants a hexadecimal serial number");
		snprintf(path, sizeof(path), "/certificates/%s/revoke", serial);
		if ((body = json_object()) == NULL || json_object_set_new(body, "reason", json_string(reason)) != 0) {
			json_decref(body);
			return cli_usage_error(CMD, "--reason must be UTF-8 text");
		}
	} else {
		/* No --days: the service's own crl_validity decides. */
		snprintf(ndays, sizeof(ndays), "%d", days);
		if ((body = json_object()) == NULL ||
		    (days > 0 && json_object_set_new(body, "days", json_string(ndays)) != 0)) {
			json_decref(body);
			return esc_err_exit_code(ESC_ERR_NOMEM);
		}
	}
	if ((rc = cli_http_open(CMD, ctx, server, server_ca, user, password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, CLI_HTTP_POST, serial ? path : "/crl", body, &doc)) != 0)
		goto out;
	if (serial != NULL) {
		printf("certificate %s revoked (%s)\n", serial, reason);
		goto out;
	}
	b64 = json_string_value(json_object_get(doc, "crl"));
	if (esc_b64_decode_max(ctx, b64, b64 ? strlen(b64) : 0, 4 * 1024 * 1024, &der, &len) != ESC_OK ||
	    len > LONG_MAX || (p = der, crl = d2i_X509_CRL(NULL, &p, (long)len)) == NULL || p != der + len) {
		fprintf(stderr, "%s %s: error: the service's answer holds no valid CRL\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
		goto out;
	}
	rc = write_crl(out, crl);
out:
	X509_CRL_free(crl);
	free(der);
	json_decref(body);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

int
cert_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_SERIAL, OPT_REASON, OPT_DAYS, OPT_SERVER, OPT_SERVER_CA, OPT_LOCAL };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"module", required_argument, NULL, 'm'},
		{"pin-file", required_argument, NULL, 'p'},
		{"serial", required_argument, NULL, OPT_SERIAL},
		{"reason", required_argument, NULL, OPT_REASON},
		{"out", required_argument, NULL, 'o'},
		{"days", required_argument, NULL, OPT_DAYS},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *module = NULL;
	const char *pin_file = NULL, *serial = NULL, *reason = NULL, *out = NULL, *action;
	const char *server = NULL, *server_ca = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *a = NULL;
	enum esc_err r;
	int c, rc, crl, days = 0, local = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:m:p:o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c':
			config = optarg;
			break;
		case 'd':
			database = optarg;
			break;
		case 'u':
			user = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
			break;
		case 'm':
			module = optarg;
			break;
		case 'p':
			pin_file = optarg;
			break;
		case OPT_SERIAL:
			serial = optarg;
			break;
		case OPT_REASON:
			reason = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case OPT_SERVER:
			server = optarg;
			break;
		case OPT_SERVER_CA:
			server_ca = optarg;
			break;
		case OPT_LOCAL:
			local = 1;
			break;
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
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if (server != NULL) {
		rc = remote(ctx, server, server_ca, user, password_file, crl ? NULL : serial, reason, out, days);
		goto out;
	}
	if ((rc = cli_apply_common(CMD, ctx, cfg, database, module, NULL, pin_file)) != 0 ||
	    (rc = cli_open_store_local(CMD, crl ? "cert crl" : "cert revoke", ctx, cfg, &st)) != 0)
		goto out;
	if (crl) {
		rc = do_crl(ctx, cfg, st, out, days > 0 ? days : esc_crl_default_days(ctx));
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
