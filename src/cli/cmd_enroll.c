/*
 * p11escrow enroll-password, service-cert, profile — what operators do for
 * enrollment: one-time enrollment passwords for EST enrollees, the
 * service's own TLS certificate, and the certificate profiles.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/enroll.h>
#include <p11escrow/pin.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define DEFAULT_HOURS 24
#define MAX_NAMES 16

/* ---- enroll-password ------------------------------------------------------ */

#define CMD_OTP "enroll-password"

static void
otp_help(void)
{
	printf("Usage: %s " CMD_OTP " create --subject DN [--profile NAME] [--hours N] --user NAME [OPTIONS]\n"
	       "       %s " CMD_OTP " list --user NAME [--json] [OPTIONS]\n\n"
	       "create  make a one-time enrollment password: an enrollee authenticates to the EST service\n"
	       "        with it (HTTP Basic: the name as user, the password) and may enroll once, for\n"
	       "        exactly this subject under exactly this profile, before it expires.  Prints\n"
	       "        the name, the password (shown once: only its Argon2id hash is stored) and the\n"
	       "        expiry.  Administrators and certificate managers.\n"
	       "list    every enrollment password (newest first, at most 1000): name, state (unused,\n"
	       "        used, expired), expiry, profile, subject, creator.  Never a password.\n"
	       "        Administrators, certificate managers and auditors.\n\n"
	       "With --server URL both go through the service.  Straight on the database only with\n"
	       "--local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such.\n\n"
	       "Options:\n"
	       "      --server URL           the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE       CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --local                break-glass: straight on the database (audited)\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string (--local)\n"
	       "  -s, --subject DN           the subject to enroll, e.g. 'CN=Alice,O=Example,emailAddress=\n"
	       "                             alice@example.org' (an emailAddress also becomes the\n"
	       "                             certificate's rfc822Name)\n"
	       "      --profile NAME         the profile (default %s; see '%s profile list')\n"
	       "      --hours N              validity, 1..720 (default %d)\n"
	       "  -u, --user NAME            the acting account\n"
	       "      --password-file FILE   its password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "      --json                 list: " CLI_JSON_HELP "\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG, ESC_PROFILE_DEFAULT, PROG, DEFAULT_HOURS);
	cli_print_exit_codes();
}

static int
otp_create(struct esc_ctx *ctx, struct esc_store *st, struct esc_account *a, const char *subject, const char *profile,
	   int hours)
{
	struct esc_secret *pw = NULL;
	struct esc_otp_info *info = NULL;
	char *name = NULL;
	size_t n = 0;
	enum esc_err r;

	if ((r = esc_otp_create(ctx, st, a, subject, profile, hours, &name, &pw)) != ESC_OK)
		return cli_fail(CMD_OTP, ctx, r);
	/* The expiry as the database set it; the password is on stdout already if this fails. */
	printf("name: %s\npassword: %s\n", name, esc_secret_str(pw));
	esc_secret_free(pw);
	if (esc_otp_list(ctx, st, a, name, &info, &n) == ESC_OK && n == 1)
		printf("expires: %s\nprofile: %s\nsubject: %s\n", info[0].expires, info[0].profile, info[0].subject);
	else
		printf("expires: in %d hour(s)\n", hours);
	fflush(stdout);
	free(info);
	free(name);
	return 0;
}

/* The enrollment passwords (never one's password) as a table or (--json) a JSON array; 0 or an exit code. */
static int
print_otps(const struct esc_otp_info *info, size_t n, int json)
{
	size_t i;

	if (json)
		return cli_json_print(CMD_OTP, cli_json_array(info, n, sizeof(*info), cli_json_otp));
	printf("%zu enrollment password(s)\n", n);
	if (n > 0)
		printf("%-24s %-8s %-21s %-15s %-12s %s\n", "NAME", "STATE", "EXPIRES", "PROFILE", "CREATED BY",
		       "SUBJECT");
	for (i = 0; i < n; i++)
		printf("%-24s %-8s %-21s %-15s %-12s %s\n", info[i].name, info[i].state, info[i].expires,
		       info[i].profile, info[i].created_by, info[i].subject);
	return 0;
}

static int
otp_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_account *a, int json)
{
	struct esc_otp_info *info = NULL;
	size_t n = 0;
	enum esc_err r;
	int rc;

	if ((r = esc_otp_list(ctx, st, a, NULL, &info, &n)) != ESC_OK)
		return cli_fail(CMD_OTP, ctx, r);
	rc = print_otps(info, n, json);
	free(info);
	return rc;
}

static void
otp_from_json(struct esc_otp_info *p, const json_t *e)
{
	memset(p, 0, sizeof(*p));
	cli_json_copy(p->name, sizeof(p->name), e, "name");
	cli_json_copy(p->subject, sizeof(p->subject), e, "subject");
	cli_json_copy(p->profile, sizeof(p->profile), e, "profile");
	cli_json_copy(p->created_by, sizeof(p->created_by), e, "created_by");
	cli_json_copy(p->created, sizeof(p->created), e, "created");
	cli_json_copy(p->expires, sizeof(p->expires), e, "expires");
	cli_json_copy(p->used, sizeof(p->used), e, "used");
	cli_json_copy(p->state, sizeof(p->state), e, "state");
}

/* create / list through the service. */
static int
otp_remote(struct esc_ctx *ctx, const char *server, const char *server_ca, const char *user, const char *password_file,
	   int create, const char *subject, const char *profile, int hours, int json)
{
	struct cli_http *h = NULL;
	struct esc_otp_info info, *list = NULL;
	json_t *body = NULL, *doc = NULL, *pw;
	char nhours[16];
	size_t i, n;
	int rc;

	if (create) {
		snprintf(nhours, sizeof(nhours), "%d", hours);
		if ((body = json_object()) == NULL || json_object_set_new(body, "subject", json_string(subject)) != 0 ||
		    (profile != NULL && json_object_set_new(body, "profile", json_string(profile)) != 0) ||
		    json_object_set_new(body, "hours", json_string(nhours)) != 0) {
			json_decref(body);
			return cli_usage_error(CMD_OTP, "--subject and --profile must be UTF-8 text");
		}
	}
	if ((rc = cli_http_open(CMD_OTP, ctx, server, server_ca, user, password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, create ? CLI_HTTP_POST : CLI_HTTP_GET, "/enroll-passwords", body, &doc)) != 0)
		goto out;
	if (create) {
		otp_from_json(&info, doc);
		pw = json_object_get(doc, "password");
		if (!json_is_string(pw) || json_string_length(pw) == 0) {
			fprintf(stderr, "%s %s: error: the service's answer holds no password\n", PROG, CMD_OTP);
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
		/* The password is printed as the service made it: printable ASCII (checked), shown once. */
		for (i = 0; i < json_string_length(pw); i++)
			if (json_string_value(pw)[i] <= 0x20 || json_string_value(pw)[i] >= 0x7f)
				break;
		if (i != json_string_length(pw)) {
			fprintf(stderr, "%s %s: error: the service's password is not printable\n", PROG, CMD_OTP);
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
		printf("name: %s\npassword: %s\nexpires: %s\nprofile: %s\nsubject: %s\n", info.name,
		       json_string_value(pw), info.expires, info.profile, info.subject);
		fflush(stdout);
		OPENSSL_cleanse((void *)json_string_value(pw), json_string_length(pw));
		goto out;
	}
	n = json_array_size(json_object_get(doc, "enroll_passwords"));
	if ((list = calloc(n + 1, sizeof(*list))) == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD_OTP);
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	for (i = 0; i < n; i++)
		otp_from_json(&list[i], json_array_get(json_object_get(doc, "enroll_passwords"), i));
	rc = print_otps(list, n, json);
out:
	free(list);
	json_decref(body);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

int
enroll_password_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_PROFILE, OPT_HOURS, OPT_SERVER, OPT_SERVER_CA, OPT_LOCAL, OPT_JSON };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"subject", required_argument, NULL, 's'},
		{"profile", required_argument, NULL, OPT_PROFILE},
		{"hours", required_argument, NULL, OPT_HOURS},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *subject = NULL, *profile = NULL, *user = NULL;
	const char *password_file = NULL, *action, *server = NULL, *server_ca = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *a = NULL;
	int c, rc, hours = DEFAULT_HOURS, local = 0, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:s:u:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			otp_help();
			return 0;
		case 'c':
			config = optarg;
			break;
		case 'd':
			database = optarg;
			break;
		case 's':
			subject = optarg;
			break;
		case OPT_PROFILE:
			profile = optarg;
			break;
		case OPT_HOURS:
			if ((rc = cli_int_option(CMD_OTP, "--hours", optarg, 1, 720, &hours)) != 0)
				return rc;
			break;
		case 'u':
			user = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
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
		case OPT_JSON:
			json = 1;
			break;
		case ':':
			return cli_usage_error(CMD_OTP, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD_OTP, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1)
		return cli_usage_error(CMD_OTP, "expected one action: create or list");
	action = argv[optind];
	if (strcmp(action, "create") == 0) {
		if (subject == NULL)
			return cli_usage_error(CMD_OTP, "create needs --subject DN");
		if (profile != NULL && esc_profile_find(profile) == NULL)
			return cli_usage_error(CMD_OTP, "unknown profile '%s' (see '%s profile list')", profile, PROG);
	} else if (strcmp(action, "list") != 0) {
		return cli_usage_error(CMD_OTP, "unknown action '%s' (use create or list)", action);
	} else if (subject != NULL || profile != NULL) {
		return cli_usage_error(CMD_OTP, "--subject and --profile belong to create");
	}
	if (json && strcmp(action, "list") != 0)
		return cli_usage_error(CMD_OTP, "--json goes with list");
	if (user == NULL)
		return cli_usage_error(CMD_OTP, "--user NAME is required: this needs an authenticated account");
	if ((rc = cli_check_mode(CMD_OTP, server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD_OTP, config, &ctx, &cfg)) != 0)
		goto out;
	if (server != NULL) {
		rc = otp_remote(ctx, server, server_ca, user, password_file, strcmp(action, "create") == 0, subject,
				profile, hours, json);
		goto out;
	}
	if ((rc = cli_apply_common(CMD_OTP, ctx, cfg, database, NULL, NULL, NULL)) != 0 ||
	    (rc = cli_open_store_local(
		     CMD_OTP, strcmp(action, "create") == 0 ? "enroll-password create" : "enroll-password list", ctx,
		     cfg, &st)) != 0 ||
	    (rc = cli_login(CMD_OTP, ctx, st, user, password_file, &a)) != 0)
		goto out;
	if (strcmp(action, "create") == 0)
		rc = otp_create(ctx, st, a, subject, profile, hours);
	else
		rc = otp_list(ctx, st, a, json);
out:
	esc_account_free(a);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}

/* ---- service-cert ---------------------------------------------------------- */

#define CMD_SVC "service-cert"

static void
svc_help(void)
{
	printf("Usage: %s " CMD_SVC " --cert FILE --key FILE --name NAME [--name NAME...] --user ADMIN [OPTIONS]\n\n"
	       "Issue the service's TLS server certificate (profile tls-server: EC P-256 key made here,\n"
	       "digitalSignature, serverAuth, 825 days at most, never beyond the CA certificate) signed\n"
	       "with the CA key on the CA token.  Each --name becomes a subjectAltName: an IP address\n"
	       "if it is one (IPv4 or IPv6), else a DNS host name; the first is also the common name.\n"
	       "The certificate is recorded and audited.  Writes the private key (PEM, PKCS#8, mode\n"
	       "0600) and the certificate followed by the CA certificate and any chain above it (PEM).\n"
	       "Existing files are never overwritten.  Needs an administrator account and the CA\n"
	       "token's PIN.\n\n"
	       "Options:\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string\n"
	       "  -m, --module MODULE        PKCS#11 module of the CA token (path or p11-kit:NAME)\n"
	       "  -p, --pin-file FILE        CA token PIN (else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "  -n, --name NAME            a DNS name or IP address of the service (1..%d)\n"
	       "      --cert FILE            where the certificate and chain go (must not exist)\n"
	       "      --key FILE             where the private key goes (must not exist)\n"
	       "  -u, --user NAME            the acting administrator\n"
	       "      --password-file FILE   their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -h, --help                 this text\n",
	       PROG, MAX_NAMES);
	cli_print_exit_codes();
}

/* Create path (never an existing file or link): the key's mode is 0600 from the start. */
static int
create_file(const char *path, mode_t mode, FILE **out)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);

	if (fd < 0) {
		fprintf(stderr, "%s %s: error: cannot create '%s': %s%s\n", PROG, CMD_SVC, path, strerror(errno),
			errno == EEXIST ? " (existing files are never overwritten)" : "");
		return esc_err_exit_code(errno == EEXIST ? ESC_ERR_EXISTS : ESC_ERR_IO);
	}
	if ((*out = fdopen(fd, "w")) == NULL) {
		close(fd);
		fprintf(stderr, "%s %s: error: cannot write '%s': %s\n", PROG, CMD_SVC, path, strerror(errno));
		return esc_err_exit_code(ESC_ERR_IO);
	}
	return 0;
}

static int
write_outputs(FILE *kf, FILE *cf, EVP_PKEY *key, X509 *cert, struct esc_keeper *k)
{
	STACK_OF(X509) *chain = esc_keeper_chain(k);
	int i, ok;

	ok = PEM_write_PrivateKey(kf, key, NULL, NULL, 0, NULL, NULL) && PEM_write_X509(cf, cert) &&
	     PEM_write_X509(cf, esc_keeper_ca_cert(k));
	for (i = 0; ok && i < sk_X509_num(chain); i++)
		ok = PEM_write_X509(cf, sk_X509_value(chain, i));
	return ok && fflush(kf) == 0 && fsync(fileno(kf)) == 0 && fflush(cf) == 0;
}

int
service_cert_main(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_CERT, OPT_KEY };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"module", required_argument, NULL, 'm'},
		{"pin-file", required_argument, NULL, 'p'},
		{"name", required_argument, NULL, 'n'},
		{"cert", required_argument, NULL, OPT_CERT},
		{"key", required_argument, NULL, OPT_KEY},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *module = NULL, *pin_file = NULL, *cert_path = NULL;
	const char *key_path = NULL, *user = NULL, *password_file = NULL, *names[MAX_NAMES];
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *a = NULL;
	struct esc_secret *pin = NULL;
	struct esc_keeper *k = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	FILE *kf = NULL, *cf = NULL;
	size_t nnames = 0, i;
	char *serial = NULL;
	enum esc_err r;
	int c, rc, done = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:m:p:n:u:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			svc_help();
			return 0;
		case 'c':
			config = optarg;
			break;
		case 'd':
			database = optarg;
			break;
		case 'm':
			module = optarg;
			break;
		case 'p':
			pin_file = optarg;
			break;
		case 'n':
			if (nnames == MAX_NAMES)
				return cli_usage_error(CMD_SVC, "at most %d --name options", MAX_NAMES);
			names[nnames++] = optarg;
			break;
		case OPT_CERT:
			cert_path = optarg;
			break;
		case OPT_KEY:
			key_path = optarg;
			break;
		case 'u':
			user = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
			break;
		case ':':
			return cli_usage_error(CMD_SVC, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD_SVC, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc)
		return cli_usage_error(CMD_SVC, "unexpected argument '%s'", argv[optind]);
	if (cert_path == NULL || key_path == NULL || nnames == 0)
		return cli_usage_error(CMD_SVC, "--cert FILE, --key FILE and at least one --name are required");
	if (strcmp(cert_path, key_path) == 0)
		return cli_usage_error(CMD_SVC, "--cert and --key must be different files");
	if (user == NULL)
		return cli_usage_error(CMD_SVC, "--user NAME is required: this needs an administrator account");
	if ((rc = cli_init(CMD_SVC, config, &ctx, &cfg)) != 0 ||
	    (rc = cli_apply_common(CMD_SVC, ctx, cfg, database, module, NULL, pin_file)) != 0 ||
	    (rc = cli_open_store(CMD_SVC, ctx, cfg, &st)) != 0 ||
	    (rc = cli_login(CMD_SVC, ctx, st, user, password_file, &a)) != 0)
		goto out;
	if ((r = esc_account_require(ctx, a, ESC_ROLE_ADMIN)) != ESC_OK) {
		esc_audit_outcome_by(ctx, st, a, "enroll.server-cert", names[0], r);
		rc = cli_fail(CMD_SVC, ctx, r);
		goto out;
	}
	/* Both files exist (empty) before the CA signs anything: a refusal leaves no certificate behind. */
	if ((rc = create_file(key_path, 0600, &kf)) != 0)
		goto out;
	/* No stdio buffer for the key: OpenSSL wipes its own PEM buffers, libc would not. */
	setvbuf(kf, NULL, _IONBF, 0);
	if ((rc = create_file(cert_path, 0644, &cf)) != 0) {
		fclose(kf);
		kf = NULL;
		unlink(key_path);
		goto out;
	}
	if ((r = esc_secret_obtain(ctx, esc_config_get(cfg, "ca_pin_file"), "P11ESCROW_CA_PIN",
				   "CA token PIN: ", &pin)) != ESC_OK ||
	    (r = esc_keeper_open(ctx, st, esc_config_get(cfg, "module"), pin, &k)) != ESC_OK ||
	    (r = esc_enroll_server_cert_as(ctx, st, k, a, names, nnames, &key, &cert)) != ESC_OK) {
		rc = cli_fail(CMD_SVC, ctx, r);
		goto out;
	}
	if (!write_outputs(kf, cf, key, cert, k)) {
		fprintf(stderr, "%s %s: error: cannot write '%s' or '%s': %s\n", PROG, CMD_SVC, key_path, cert_path,
			strerror(errno));
		rc = esc_err_exit_code(ESC_ERR_IO);
		goto out;
	}
	done = 1;
	serial = esc_cert_serial_hex(cert);
	printf("service certificate %s issued for", serial ? serial : "?");
	for (i = 0; i < nnames; i++)
		printf("%s %s", i ? "," : "", names[i]);
	printf("\n  certificate and CA chain: %s\n  private key (mode 0600): %s\n", cert_path, key_path);
	rc = 0;
out:
	if (kf != NULL && fclose(kf) != 0 && rc == 0)
		rc = esc_err_exit_code(ESC_ERR_IO);
	if (cf != NULL && fclose(cf) != 0 && rc == 0)
		rc = esc_err_exit_code(ESC_ERR_IO);
	if ((kf != NULL || cf != NULL) && !done) {
		/* Only files this run created are removed. */
		unlink(key_path);
		unlink(cert_path);
	}
	free(serial);
	X509_free(cert);
	EVP_PKEY_free(key);
	esc_keeper_free(k);
	esc_secret_free(pin);
	esc_account_free(a);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}

/* ---- profile --------------------------------------------------------------- */

#define CMD_PROFILE "profile"

static void
profile_help(void)
{
	printf("Usage: %s " CMD_PROFILE
	       " list [--json] [--server URL [--server-ca FILE] --user NAME [--password-file FILE]]\n\n"
	       "list  the built-in certificate profiles: the EST label that selects each (the default\n"
	       "      profile, %s, has none), whether enrollees can use it, whether the key is archived\n"
	       "      (then only /fullcmc and /serverkeygen) or is a signing key (never archived: only\n"
	       "      /simpleenroll), the key types allowed and generated, and the validity in days.\n"
	       "      With --server URL: the service's profiles, through its JSON API (any account);\n"
	       "      without: this program's built-in ones (no database either way).\n\n"
	       "Options:\n"
	       "  --json       " CLI_JSON_HELP "\n"
	       "  -h, --help   this text\n",
	       PROG, ESC_PROFILE_DEFAULT);
	cli_print_exit_codes();
}

static void
key_types(unsigned types, char *buf, size_t len)
{
	static const struct {
		unsigned t;
		const char *n;
	} names[] = {
		{ESC_EKEY_RSA2048, "rsa2048"}, {ESC_EKEY_RSA3072, "rsa3072"}, {ESC_EKEY_RSA4096, "rsa4096"},
		{ESC_EKEY_EC_P256, "ec-p256"}, {ESC_EKEY_EC_P384, "ec-p384"},
	};
	size_t i, used = 0;

	snprintf(buf, len, "-");
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (types & names[i].t) {
			snprintf(buf + used, len - used, "%s%s", used ? "," : "", names[i].n);
			used = strlen(buf);
		}
}

/* The ESC_EKEY_* types of the service's array of key type names (one this program does not know: left out). */
static unsigned
names_mask(const json_t *a)
{
	const json_t *v;
	char one[32];
	unsigned mask = 0;
	size_t i;

	json_array_foreach(a, i, v)
	{
		cli_json_copy_value(one, sizeof(one), v);
		mask |= esc_enroll_key_parse(one);
	}
	return mask;
}

/* The profiles p[0..n) (dflt[i]: the default one) as a table or (--json) a JSON array; 0 or an exit code. */
static int
print_profiles(const struct esc_profile *p, const int *dflt, size_t n, int json)
{
	json_t *a;
	char keys[96], keygen[32];
	size_t i;

	if (json) {
		a = json_array();
		for (i = 0; a != NULL && i < n; i++)
			if (json_array_append_new(a, cli_json_profile(&p[i], dflt[i])) != 0) {
				json_decref(a);
				a = NULL;
			}
		return cli_json_print(CMD_PROFILE, a);
	}
	printf("%-15s %-10s %-8s %-42s %-8s %-5s %s\n", "NAME", "ENROLL", "KEY", "KEY TYPES", "KEYGEN", "DAYS",
	       "SUMMARY");
	for (i = 0; i < n; i++) {
		key_types(p[i].keys, keys, sizeof(keys));
		key_types(p[i].keygen, keygen, sizeof(keygen));
		printf("%-15s %-10s %-8s %-42s %-8s %-5d %s%s\n", p[i].name, p[i].enrollable ? "yes" : "no",
		       p[i].archival  ? "archived"
		       : p[i].signing ? "signing"
				      : "-",
		       keys, keygen, p[i].days, p[i].summary, dflt[i] ? " (default)" : "");
	}
	return 0;
}

/* The built-in profiles of this program (no database, no service). */
static int
profile_list_local(int json)
{
	struct esc_profile *p;
	int *dflt;
	size_t i, n;
	int rc;

	for (n = 0; esc_profile_at(n) != NULL; n++)
		;
	p = calloc(n + 1, sizeof(*p));
	dflt = calloc(n + 1, sizeof(*dflt));
	if (p == NULL || dflt == NULL) {
		free(p);
		free(dflt);
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD_PROFILE);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	for (i = 0; i < n; i++) {
		p[i] = *esc_profile_at(i);
		dflt[i] = strcmp(p[i].name, ESC_PROFILE_DEFAULT) == 0;
	}
	rc = print_profiles(p, dflt, n, json);
	free(p);
	free(dflt);
	return rc;
}

/* A profile's name and summary as the service gave them, control characters as '?'. */
struct profile_text {
	char name[32], summary[256];
};

/* GET /profiles, read into the library's struct and printed as locally. */
static int
profile_list_remote(struct cli_http *h, int json)
{
	struct esc_profile *p = NULL;
	struct profile_text *txt = NULL;
	int *dflt = NULL;
	const json_t *list, *e;
	json_t *doc = NULL;
	size_t i, n;
	int rc;

	if ((rc = cli_http_call(h, CLI_HTTP_GET, "/profiles", NULL, &doc)) != 0)
		return rc;
	list = json_object_get(doc, "profiles");
	n = json_array_size(list);
	p = calloc(n + 1, sizeof(*p));
	txt = calloc(n + 1, sizeof(*txt));
	dflt = calloc(n + 1, sizeof(*dflt));
	if (p == NULL || txt == NULL || dflt == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD_PROFILE);
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	json_array_foreach(list, i, e)
	{
		cli_json_copy(txt[i].name, sizeof(txt[i].name), e, "name");
		cli_json_copy(txt[i].summary, sizeof(txt[i].summary), e, "summary");
		p[i].name = txt[i].name;
		p[i].summary = txt[i].summary;
		p[i].enrollable = json_is_true(json_object_get(e, "enrollable"));
		p[i].archival = json_is_true(json_object_get(e, "archival"));
		p[i].signing = json_is_true(json_object_get(e, "signing"));
		p[i].keys = names_mask(json_object_get(e, "keys"));
		p[i].keygen = names_mask(json_object_get(e, "keygen"));
		p[i].days = (int)cli_json_int(e, "days");
		dflt[i] = json_is_true(json_object_get(e, "default"));
	}
	rc = print_profiles(p, dflt, n, json);
out:
	free(p);
	free(txt);
	free(dflt);
	json_decref(doc);
	return rc;
}

static int
profile_remote(int argc, char *argv[])
{
	enum { OPT_PASSWORD = 256, OPT_SERVER, OPT_SERVER_CA, OPT_JSON };
	static const struct option longopts[] = {
		{"json", no_argument, NULL, OPT_JSON},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"config", required_argument, NULL, 'c'},
		{NULL, 0, NULL, 0},
	};
	const char *user = NULL, *password_file = NULL, *server = NULL, *server_ca = NULL, *config = NULL;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct cli_http *h = NULL;
	int c, rc, json = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":u:c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'u':
			user = optarg;
			break;
		case 'c':
			config = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
			break;
		case OPT_SERVER:
			server = optarg;
			break;
		case OPT_SERVER_CA:
			server_ca = optarg;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case ':':
			return cli_usage_error(CMD_PROFILE, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD_PROFILE, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc - 1 || strcmp(argv[optind], "list") != 0)
		return cli_usage_error(CMD_PROFILE, "expected the action: list");
	if (server == NULL) {
		if (user != NULL || password_file != NULL || server_ca != NULL)
			return cli_usage_error(CMD_PROFILE,
					       "--user, --password-file and --server-ca go with --server URL");
		/* --config alone: the built-in table needs none of it. */
		return profile_list_local(json);
	}
	if ((rc = cli_init(CMD_PROFILE, config, &ctx, &cfg)) != 0 ||
	    (rc = cli_http_open(CMD_PROFILE, ctx, server, server_ca, user, password_file, &h)) != 0)
		goto out;
	rc = profile_list_remote(h, json);
out:
	cli_http_free(h);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}

int
profile_main(int argc, char *argv[])
{
	if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
		profile_help();
		return 0;
	}
	if (argc > 2)
		return profile_remote(argc, argv);
	if (argc != 2 || strcmp(argv[1], "list") != 0)
		return cli_usage_error(CMD_PROFILE, "expected the action: list");
	return profile_list_local(0);
}
