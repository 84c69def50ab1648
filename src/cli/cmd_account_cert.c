/*
 * p11escrow account cert — TLS client certificates bound to accounts: add, list, remove.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <p11escrow/auth.h>
#include <p11escrow/store.h>

#include "cli.h"
#include "cli_json.h"

#define CMD "account cert"
#define CERT_FILE_MAX (256 * 1024) /* a certificate and its chain */

static void
help(void)
{
	printf("Usage: %s " CMD " add NAME --cert FILE --user ADMIN [OPTIONS]\n"
	       "       %s " CMD " list NAME --user NAME [--json] [OPTIONS]\n"
	       "       %s " CMD " remove NAME --sha256 HEX --user ADMIN [OPTIONS]\n\n"
	       "add     bind the TLS client certificate of FILE (PEM; certificates after the first are\n"
	       "        intermediates of its chain) to account NAME: p11escrowd then logs NAME in with it,\n"
	       "        without a password.  It must verify (chain, validity, TLS client use) against this\n"
	       "        CA or the configuration's account_cert_ca, have keyUsage digitalSignature and, if it\n"
	       "        has an extendedKeyUsage, clientAuth, and not be revoked.  Administrators.\n"
	       "list    the certificates bound to NAME (administrators, and NAME itself).\n"
	       "remove  unbind the certificate with SHA-256 fingerprint HEX (64 hex digits, colons and a\n"
	       "        'SHA256:' prefix allowed) from NAME; the sessions opened with it end.  Administrators.\n\n"
	       "Options:\n"
	       "  -c, --config FILE         configuration file (account_cert_ca)\n"
	       "  -d, --database CONNINFO   libpq connection string\n"
	       "      --cert FILE           the certificate (add)\n"
	       "      --sha256 HEX          the certificate's fingerprint (remove)\n"
	       "  -u, --user NAME           the acting account\n"
	       "      --password-file FILE  the acting account's password\n"
	       "      --local               required: straight on the database, break-glass (audited); the\n"
	       "                            service has no endpoint for bindings yet\n"
	       "      --json                list: " CLI_JSON_HELP "\n"
	       "  -h, --help                this text\n",
	       PROG, PROG, PROG);
	cli_print_exit_codes();
}

/* The certificate of path and any certificates after it (its chain). */
static int
read_certs(const char *path, X509 **cert, STACK_OF(X509) **chain)
{
	STACK_OF(X509) *rest = sk_X509_new_null();
	BIO *b = NULL;
	X509 *x = NULL, *first = NULL;
	int rc = -1, n = 0;

	if (rest == NULL || (b = BIO_new_file(path, "r")) == NULL)
		goto out;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (++n > 16 || BIO_tell(b) > CERT_FILE_MAX)
			goto out;
		if (first == NULL)
			first = x;
		else if (!sk_X509_push(rest, x))
			goto out;
		x = NULL;
	}
	if (first == NULL)
		goto out;
	*cert = first;
	*chain = rest;
	first = NULL;
	rest = NULL; /* transferred */
	rc = 0;
out:
	ERR_clear_error();
	X509_free(x);
	X509_free(first);
	sk_X509_pop_free(rest, X509_free);
	BIO_free(b);
	return rc;
}

int
account_cert_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_CERT, OPT_SHA256, OPT_LOCAL, OPT_JSON };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"cert", required_argument, NULL, OPT_CERT},
		{"sha256", required_argument, NULL, OPT_SHA256},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *user = NULL, *password_file = NULL, *cert_file = NULL;
	const char *sha256 = NULL, *action, *name;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *actor = NULL;
	struct esc_account_cert *list = NULL;
	STACK_OF(X509) *chain = NULL;
	X509 *cert = NULL;
	char fp[ESC_CERT_SHA256_HEX + 1];
	size_t n = 0, i;
	enum esc_err r;
	int c, rc, local = 0, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:h", longopts, NULL)) != -1) {
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
		case OPT_CERT:
			cert_file = optarg;
			break;
		case OPT_SHA256:
			sha256 = optarg;
			break;
		case OPT_LOCAL:
			local = 1;
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
	if (optind + 2 != argc)
		return cli_usage_error(CMD, "expected an action (add, list or remove) and one account NAME");
	action = argv[optind];
	name = argv[optind + 1];
	if (strcmp(action, "add") != 0 && strcmp(action, "list") != 0 && strcmp(action, "remove") != 0)
		return cli_usage_error(CMD, "unknown action '%s' (use add, list or remove)", action);
	if (user == NULL)
		return cli_usage_error(CMD, "%s needs --user NAME", action);
	if (json && strcmp(action, "list") != 0)
		return cli_usage_error(CMD, "--json goes with list");
	/* No --server yet: only the audited break-glass mode reaches the bindings. */
	if ((rc = cli_check_mode(CMD, NULL, local)) != 0)
		return rc;
	if ((cert_file != NULL) != (strcmp(action, "add") == 0))
		return cli_usage_error(CMD, "--cert FILE is for add, which needs it");
	if ((sha256 != NULL) != (strcmp(action, "remove") == 0))
		return cli_usage_error(CMD, "--sha256 HEX is for remove, which needs it");
	if (cert_file != NULL && read_certs(cert_file, &cert, &chain) != 0) {
		fprintf(stderr, "%s %s: error: cannot read a PEM certificate from '%s'\n", PROG, CMD, cert_file);
		return esc_err_exit_code(ESC_ERR_IO);
	}
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if ((rc = cli_apply_common(CMD, ctx, cfg, database, NULL, NULL, NULL)) != 0 ||
	    (rc = cli_open_store_local(CMD,
				       strcmp(action, "add") == 0      ? "account cert add"
				       : strcmp(action, "remove") == 0 ? "account cert remove"
								       : "account cert list",
				       ctx, cfg, &st)) != 0 ||
	    (rc = cli_login(CMD, ctx, st, user, password_file, &actor)) != 0)
		goto out;
	if (strcmp(action, "add") == 0) {
		if ((r = esc_account_cert_add(ctx, st, actor, name, cert, chain, esc_config_get(cfg, "account_cert_ca"),
					      fp)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		printf("certificate SHA256:%s bound to account '%s'\n", fp, name);
	} else if (strcmp(action, "remove") == 0) {
		if ((r = esc_account_cert_remove(ctx, st, actor, name, sha256)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		printf("certificate unbound from account '%s'\n", name);
	} else {
		if ((r = esc_account_cert_list(ctx, st, actor, name, &list, &n)) != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		if (json) {
			rc = cli_json_print(CMD, cli_json_array(list, n, sizeof(*list), cli_json_account_cert));
			goto out;
		}
		if (n == 0)
			printf("account '%s' has no client certificates\n", name);
		for (i = 0; i < n; i++)
			printf("SHA256:%s\n  subject:   %s\n  issuer:    %s\n  serial:    %s\n  not after: %s UTC\n"
			       "  added:     %s UTC by %s\n",
			       list[i].sha256, list[i].subject, list[i].issuer, list[i].serial, list[i].not_after,
			       list[i].added_at, list[i].added_by);
	}
	rc = 0;
out:
	free(list);
	X509_free(cert);
	sk_X509_pop_free(chain, X509_free);
	esc_account_free(actor);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
