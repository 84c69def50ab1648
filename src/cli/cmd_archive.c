/*
 * p11escrow archive — manual archival: import PKCS#12 or PEM keys with their
 * certificates, one file or many.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/provider.h>

#include <p11escrow/archive.h>
#include <p11escrow/import.h>
#include <p11escrow/pin.h>

#include "cli.h"

#define CMD "archive"
#define MAX_ITEMS 100000   /* files in one run */
#define MAX_LIST_LINE 4096 /* a path in a --list file */
#define BAR_WIDTH 30
#define REASON_MAX 1536

static void
help(void)
{
	printf("Usage: %s " CMD " import --user ADMIN [OPTIONS] FILE|DIR...\n"
	       "       %s " CMD " import --user ADMIN [OPTIONS] --list FILE\n"
	       "       %s " CMD " import --user ADMIN [OPTIONS] --key KEY.pem --cert CERT.pem\n\n"
	       "import  archive private keys with their certificates: PKCS#12 (.p12, .pfx) or PEM holding\n"
	       "        a key (PKCS#8 or traditional, possibly encrypted) and its certificate.  A directory\n"
	       "        means every .p12, .pfx and .pem file in it (not recursive, in name order).\n"
	       "        Before anything is written, each key must match its certificate's public key, its\n"
	       "        certificate must allow encryption (signing keys are never archived), be issued by\n"
	       "        this CA or by another CA when policy allow_foreign_issuers is true, and the key must\n"
	       "        not be archived already (it is then reported, not stored twice).  Each key is\n"
	       "        archived in its own transaction; a refused or failed file never stops the batch.\n"
	       "        On a terminal a progress bar is shown, otherwise one line per file; a summary ends.\n"
	       "        Needs an administrator account.\n\n"
	       "Options:\n"
	       "  -c, --config FILE                configuration file\n"
	       "  -d, --database CONNINFO          libpq connection string\n"
	       "  -l, --list FILE                  read paths from FILE, one per line ('-' for stdin;\n"
	       "                                   empty lines and lines starting with '#' are skipped)\n"
	       "      --key FILE                   a PEM private key ...\n"
	       "      --cert FILE                  ... and its certificate (PEM or DER)\n"
	       "      --password-file FILE         password of the PKCS#12 files or encrypted PEM keys (else\n"
	       "                                   $P11ESCROW_P12_PASSWORD, else a prompt; asked once, only\n"
	       "                                   when a file needs one, and used for every file)\n"
	       "  -u, --user NAME                  the acting administrator\n"
	       "      --account-password-file FILE their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -h, --help                       this text\n\n"
	       "Exit status is 0 when every file was archived or was archived already; otherwise that of\n"
	       "the first file refused or failed:\n",
	       PROG, PROG, PROG);
	cli_print_exit_codes();
}

struct item {
	char *path;
	char *cert; /* the certificate file of a --key/--cert pair, else NULL */
};

struct items {
	struct item *v;
	size_t n, cap;
};

struct batch {
	struct esc_ctx *ctx;
	struct esc_store *st;
	const char *actor; /* the administrator, for the audit trail */
	const char *password_file;
	struct esc_secret *password; /* obtained once, when a file first needs it */
	enum esc_err password_err;   /* ... or why it could not be: never asked twice */
	char password_why[512];
	int tty, bar_shown;
	size_t total, done, archived, already, refused, failed;
	int rc; /* exit code of the first file refused or failed */
};

static void
items_free(struct items *it)
{
	size_t i;

	for (i = 0; i < it->n; i++) {
		free(it->v[i].path);
		free(it->v[i].cert);
	}
	free(it->v);
}

static int
items_add(struct items *it, const char *path, const char *cert)
{
	struct item *v;
	size_t cap;

	if (it->n >= MAX_ITEMS)
		return cli_usage_error(CMD, "more than %d files in one run: split the import", MAX_ITEMS);
	if (it->n == it->cap) {
		cap = it->cap ? it->cap * 2 : 32;
		if ((v = realloc(it->v, cap * sizeof(*v))) == NULL)
			goto nomem;
		it->v = v;
		it->cap = cap;
	}
	it->v[it->n].path = strdup(path);
	it->v[it->n].cert = cert != NULL ? strdup(cert) : NULL;
	if (it->v[it->n].path == NULL || (cert != NULL && it->v[it->n].cert == NULL)) {
		free(it->v[it->n].path);
		free(it->v[it->n].cert);
		goto nomem;
	}
	it->n++;
	return 0;
nomem:
	fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
	return esc_err_exit_code(ESC_ERR_NOMEM);
}

static int
importable(const char *name)
{
	static const char *const ext[] = {".p12", ".pfx", ".pem"};
	size_t n = strlen(name), i;

	for (i = 0; i < sizeof(ext) / sizeof(ext[0]); i++)
		if (n > 4 && strcasecmp(name + n - 4, ext[i]) == 0)
			return 1;
	return 0;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular .p12/.pfx/.pem file directly in dir, in name order. */
static int
add_dir(struct items *it, const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	struct stat st;
	char **names = NULL, **tmp, *full;
	size_t n = 0, cap = 0, i, flen;
	int rc = 0;

	if (d == NULL) {
		fprintf(stderr, "%s %s: error: cannot read directory '%s': %s\n", PROG, CMD, dir, strerror(errno));
		return esc_err_exit_code(ESC_ERR_IO);
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || !importable(e->d_name))
			continue;
		flen = strlen(dir) + strlen(e->d_name) + 2;
		if ((full = malloc(flen)) == NULL) {
			fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
			rc = esc_err_exit_code(ESC_ERR_NOMEM);
			goto out;
		}
		snprintf(full, flen, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", e->d_name);
		if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) {
			free(full);
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			if (cap > MAX_ITEMS || (tmp = realloc(names, cap * sizeof(*names))) == NULL) {
				free(full);
				rc = cli_usage_error(CMD, "too many files in '%s'", dir);
				goto out;
			}
			names = tmp;
		}
		names[n++] = full;
	}
	if (n > 0) /* qsort must not be handed NULL, even for zero items */
		qsort(names, n, sizeof(*names), cmp_str);
	for (i = 0; i < n && rc == 0; i++)
		rc = items_add(it, names[i], NULL);
out:
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return rc;
}

static int
add_path(struct items *it, const char *path)
{
	struct stat st;

	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return add_dir(it, path);
	return items_add(it, path, NULL); /* missing files fail in the batch, with the rest */
}

static int
add_list(struct items *it, const char *list)
{
	FILE *f = strcmp(list, "-") == 0 ? stdin : fopen(list, "r");
	char line[MAX_LIST_LINE + 2];
	size_t len, lineno = 0;
	int rc = 0;

	if (f == NULL) {
		fprintf(stderr, "%s %s: error: cannot open list '%s': %s\n", PROG, CMD, list, strerror(errno));
		return esc_err_exit_code(ESC_ERR_IO);
	}
	while (rc == 0 && fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		len = strlen(line);
		if (len > 0 && line[len - 1] == '\n')
			line[--len] = '\0';
		else if (!feof(f)) {
			rc = cli_usage_error(CMD, "%s:%zu: line longer than %d bytes", list, lineno, MAX_LIST_LINE);
			break;
		}
		if (len > 0 && line[len - 1] == '\r')
			line[--len] = '\0';
		if (len == 0 || line[0] == '#')
			continue;
		rc = add_path(it, line);
	}
	if (rc == 0 && ferror(f)) {
		fprintf(stderr, "%s %s: error: cannot read list '%s'\n", PROG, CMD, list);
		rc = esc_err_exit_code(ESC_ERR_IO);
	}
	if (f != stdin)
		fclose(f);
	return rc;
}

static void
draw_bar(struct batch *b)
{
	char bar[BAR_WIDTH + 1];
	size_t fill = b->total ? b->done * BAR_WIDTH / b->total : BAR_WIDTH;

	memset(bar, '#', fill);
	memset(bar + fill, ' ', BAR_WIDTH - fill);
	bar[BAR_WIDTH] = '\0';
	printf("\r[%s] %zu/%zu archived %zu, already %zu, refused %zu, failed %zu", bar, b->done, b->total, b->archived,
	       b->already, b->refused, b->failed);
	fflush(stdout);
	b->bar_shown = 1;
}

/* Take the progress bar off its line before printing anything else. */
static void
clear_bar(struct batch *b)
{
	if (b->bar_shown) {
		printf("\r\033[K");
		fflush(stdout);
		b->bar_shown = 0;
	}
}

/* Read, parse and archive one item; reason gets the sentence for a failure. */
static enum esc_err
archive_one(struct batch *b, const struct item *it, struct esc_archive_info *info, char *reason, size_t rlen)
{
	struct esc_import_file *kf = NULL, *cf = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	enum esc_err r;
	int attempt;

	if ((r = esc_import_file_read(b->ctx, it->path, &kf)) != ESC_OK ||
	    (it->cert != NULL && (r = esc_import_file_read(b->ctx, it->cert, &cf)) != ESC_OK))
		goto out;
	for (attempt = 0; attempt < 2; attempt++) {
		if (it->cert != NULL)
			r = esc_import_load_pair(b->ctx, esc_import_file_data(kf), esc_import_file_len(kf), it->path,
						 esc_import_file_data(cf), esc_import_file_len(cf), it->cert,
						 b->password, &key, &cert);
		else
			r = esc_import_load(b->ctx, esc_import_file_data(kf), esc_import_file_len(kf), it->path,
					    b->password, &key, &cert);
		if (r != ESC_ERR_PIN_MISSING || b->password != NULL)
			break;
		/* The first file that needs a password: ask for it once, for all files. */
		if (b->password_err == ESC_OK) {
			clear_bar(b);
			if ((b->password_err = esc_secret_obtain(
				     b->ctx, b->password_file, "P11ESCROW_P12_PASSWORD",
				     "Password of the PKCS#12 files / encrypted keys: ", &b->password)) != ESC_OK)
				snprintf(b->password_why, sizeof(b->password_why), "%s", esc_ctx_errmsg(b->ctx));
		}
		if (b->password_err != ESC_OK) {
			r = b->password_err;
			snprintf(reason, rlen, "'%s' is protected by a password and none is available (%s)", it->path,
				 b->password_why);
			goto out;
		}
	}
	if (r != ESC_OK)
		goto out;
	/* Every check (match, usage, issuer, duplicates, KRA set) is the library's. */
	r = esc_archive_key(b->ctx, b->st, b->actor, cert, key, ESC_SOURCE_IMPORT, info);
out:
	if (r != ESC_OK && reason[0] == '\0')
		snprintf(reason, rlen, "%s", *esc_ctx_errmsg(b->ctx) ? esc_ctx_errmsg(b->ctx) : esc_strerror(r));
	EVP_PKEY_free(key);
	X509_free(cert);
	esc_import_file_free(kf);
	esc_import_file_free(cf);
	return r;
}

static void
report(struct batch *b, const struct item *it, enum esc_err r, const struct esc_archive_info *info, const char *reason)
{
	const char *prefix = "already archived ";
	FILE *out = b->tty ? stderr : stdout;

	b->done++;
	if (r == ESC_OK) {
		b->archived++;
		if (!b->tty)
			printf("archived %s: record %s (KRAs: %s)%s\n", it->path, info->id, info->kras,
			       info->foreign ? ", foreign issuer" : "");
	} else {
		/* Only the library's own "already archived": any other failure is a failure, whatever its text. */
		if (r == ESC_ERR_ARCHIVED) {
			b->already++;
			/* "already archived as record X (same key)": say it once. */
			if (strncmp(reason, prefix, strlen(prefix)) == 0)
				reason += strlen(prefix);
		} else if (r == ESC_ERR_POLICY || r == ESC_ERR_MISMATCH) {
			b->refused++;
		} else {
			b->failed++;
		}
		if (r != ESC_ERR_ARCHIVED && b->rc == 0)
			b->rc = esc_err_exit_code(r);
		clear_bar(b);
		fprintf(out, "%s %s: %s\n",
			r == ESC_ERR_ARCHIVED			       ? "already archived"
			: r == ESC_ERR_POLICY || r == ESC_ERR_MISMATCH ? "refused"
								       : "failed",
			it->path, reason);
		fflush(out);
	}
	if (b->tty)
		draw_bar(b);
}

static int
do_import(struct esc_ctx *ctx, struct esc_store *st, const char *actor, const struct items *items,
	  const char *password_file)
{
	struct batch b;
	struct esc_archive_info info;
	char reason[REASON_MAX];
	size_t i;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	b.ctx = ctx;
	b.st = st;
	b.actor = actor;
	b.password_file = password_file;
	b.tty = isatty(STDOUT_FILENO);
	b.total = items->n;
	if (b.tty)
		draw_bar(&b);
	for (i = 0; i < items->n; i++) {
		esc_ctx_clear_error(ctx);
		memset(&info, 0, sizeof(info));
		reason[0] = '\0';
		r = archive_one(&b, &items->v[i], &info, reason, sizeof(reason));
		report(&b, &items->v[i], r, &info, reason);
		if (r == ESC_ERR_DB_CONNECT && i + 1 < items->n) {
			/* Every further file would fail the same way. */
			clear_bar(&b);
			fprintf(stderr, "%s %s: error: the database connection is lost: %zu file(s) not attempted\n",
				PROG, CMD, items->n - i - 1);
			b.failed += items->n - i - 1;
			break;
		}
	}
	clear_bar(&b);
	printf("archived %zu, already archived %zu, refused %zu, failed %zu\n", b.archived, b.already, b.refused,
	       b.failed);
	esc_secret_free(b.password);
	return b.rc;
}

int
archive_main(int argc, char *argv[])
{
	enum { OPT_KEY = 256, OPT_CERT, OPT_PASSWORD, OPT_ACCOUNT_PASSWORD };
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"list", required_argument, NULL, 'l'},
		{"key", required_argument, NULL, OPT_KEY},
		{"cert", required_argument, NULL, OPT_CERT},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"user", required_argument, NULL, 'u'},
		{"account-password-file", required_argument, NULL, OPT_ACCOUNT_PASSWORD},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *list = NULL, *key = NULL, *cert = NULL, *password_file = NULL;
	const char *user = NULL, *account_password_file = NULL, *action;
	struct items items = {NULL, 0, 0};
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *admin = NULL;
	OSSL_PROVIDER *legacy = NULL, *deflt = NULL;
	enum esc_err r;
	int c, rc = 0;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:l:u:h", longopts, NULL)) != -1) {
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
		case 'l':
			list = optarg;
			break;
		case OPT_KEY:
			key = optarg;
			break;
		case OPT_CERT:
			cert = optarg;
			break;
		case OPT_PASSWORD:
			password_file = optarg;
			break;
		case 'u':
			user = optarg;
			break;
		case OPT_ACCOUNT_PASSWORD:
			account_password_file = optarg;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(CMD, "expected an action: import");
	action = argv[optind++];
	if (strcmp(action, "import") != 0)
		return cli_usage_error(CMD, "unknown action '%s' (use import)", action);
	if ((key == NULL) != (cert == NULL))
		return cli_usage_error(CMD, "--key and --cert go together");
	if (optind >= argc && list == NULL && key == NULL)
		return cli_usage_error(CMD, "import needs files or directories, --list FILE, or --key and --cert");
	if (user == NULL)
		return cli_usage_error(CMD, "--user NAME is required: importing needs an administrator account");
	/* Collect the work first: a bad list or directory is reported before any login. */
	for (; optind < argc && rc == 0; optind++)
		rc = add_path(&items, argv[optind]);
	if (rc == 0 && list != NULL)
		rc = add_list(&items, list);
	if (rc == 0 && key != NULL)
		rc = items_add(&items, key, cert);
	if (rc != 0)
		goto out;
	if (items.n == 0) {
		fprintf(stderr, "%s %s: error: nothing to import: no .p12, .pfx or .pem file found\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_NOT_FOUND);
		goto out;
	}
	if ((rc = cli_init(CMD, config, &ctx, &cfg)) != 0)
		goto out;
	if ((rc = cli_apply_common(CMD, ctx, cfg, database, NULL, NULL, NULL)) != 0)
		goto out;
	/*
	 * PKCS#12 files exported by older software (Windows, other CAs) often
	 * protect certificates with RC2-40, which OpenSSL 3 keeps in its legacy
	 * provider.  This process only decrypts with it; records are always
	 * sealed with AES-256-GCM.  Without the provider such files are reported.
	 */
	if ((legacy = OSSL_PROVIDER_load(NULL, "legacy")) != NULL)
		deflt = OSSL_PROVIDER_load(NULL, "default");
	ERR_clear_error();
	if ((rc = cli_open_store(CMD, ctx, cfg, &st)) != 0 ||
	    (rc = cli_login(CMD, ctx, st, user, account_password_file, &admin)) != 0)
		goto out;
	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = do_import(ctx, st, esc_account_name(admin), &items, password_file);
out:
	esc_account_free(admin);
	esc_store_free(st);
	OSSL_PROVIDER_unload(deflt);
	OSSL_PROVIDER_unload(legacy);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	items_free(&items);
	return rc;
}
