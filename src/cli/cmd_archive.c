/*
 * p11escrow archive — manual archival: import PKCS#12 or PEM keys with their
 * certificates, one file or many.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/provider.h>

#include <p11escrow/archive.h>
#include <p11escrow/import.h>
#include <p11escrow/pin.h>

#include "cli.h"
#include "http_client.h"

#define CMD "archive"
#define MAX_ITEMS 100000   /* files in one run */
#define MAX_LIST_LINE 4096 /* a path in a --list file */
#define BAR_WIDTH 30
#define REASON_MAX 1536
#define MAX_JOBS 16	  /* --jobs */
#define DEFAULT_BATCH 100 /* --batch */

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
	       "        not be archived already (it is then reported, not stored twice).  A refused or\n"
	       "        failed file never stops the others.\n"
	       "        On a terminal a progress bar is shown, otherwise one line per file; a summary ends.\n"
	       "        Needs an administrator account.\n\n"
	       "With --server URL each file is sent to the service over TLS, one per request (its bytes\n"
	       "base64 in JSON, the password with it when a file needs one); the service parses and\n"
	       "archives it with the same checks, and its max_body bounds a file.  Straight on the\n"
	       "database only with --local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such; there\n"
	       "--jobs threads, each with its own database session, take --batch files at a time, and\n"
	       "each batch is archived in one transaction (its records, KRA rows and audit events, one\n"
	       "event per file as always); a file is reported archived only once its batch committed.\n"
	       "Lines then come batch by batch, in file order within a batch.\n\n"
	       "Options:\n"
	       "      --server URL                 the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE             CA certificate(s) to verify it with (else\n"
	       "                                   $P11ESCROW_SERVER_CA)\n"
	       "      --local                      break-glass: straight on the database (audited)\n"
	       "  -c, --config FILE                configuration file\n"
	       "  -d, --database CONNINFO          libpq connection string (--local)\n"
	       "  -l, --list FILE                  read paths from FILE, one per line ('-' for stdin;\n"
	       "                                   empty lines and lines starting with '#' are skipped)\n"
	       "      --key FILE                   a PEM private key ...\n"
	       "      --cert FILE                  ... and its certificate (PEM or DER)\n"
	       "      --password-file FILE         password of the PKCS#12 files or encrypted PEM keys (else\n"
	       "                                   $P11ESCROW_P12_PASSWORD, else a prompt; asked once, only\n"
	       "                                   when a file needs one, and used for every file)\n"
	       "      --jobs N                     --local: archiving threads (default: the CPUs online,\n"
	       "                                   at most 16)\n"
	       "      --batch N                    --local: files per transaction (default 100, at most 500)\n"
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
	struct cli_http *h; /* through the service (--server), else NULL */
	const char *actor;  /* the administrator, for the audit trail */
	const char *password_file;
	struct esc_secret *password; /* obtained once, when a file first needs it */
	enum esc_err password_err;   /* ... or why it could not be: never asked twice */
	char password_why[512];
	int tty, bar_shown;
	size_t total, done, archived, already, refused, failed;
	int rc;	       /* exit code of the first file refused or failed */
	int no_answer; /* the service did not answer the last file */
	/* --local: the threads share what is above (report, password) under lock, and the next file. */
	pthread_mutex_t lock;
	size_t chunk; /* files per batch */
	size_t next;  /* the first file no thread has taken */
	int stop;     /* the database connection is lost: take no more */
	int nomem;
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

/*
 * The first file that needs a password: ask for it once, for all files.
 * Returns ESC_OK once b->password is there, else why not (reason set).
 */
static enum esc_err
obtain_password(struct batch *b, struct esc_ctx *ctx, const struct item *it, char *reason, size_t rlen)
{
	if (b->password_err == ESC_OK && b->password == NULL) {
		clear_bar(b);
		if ((b->password_err = esc_secret_obtain(
			     ctx, b->password_file, "P11ESCROW_P12_PASSWORD",
			     "Password of the PKCS#12 files / encrypted keys: ", &b->password)) != ESC_OK)
			snprintf(b->password_why, sizeof(b->password_why), "%s", esc_ctx_errmsg(ctx));
	}
	if (b->password_err != ESC_OK)
		snprintf(reason, rlen, "'%s' is protected by a password and none is available (%s)", it->path,
			 b->password_why);
	return b->password_err;
}

/* Base64 (one line) of f's bytes, in secure memory: a PEM file may hold an unencrypted key. */
static char *
b64_secure(const struct esc_import_file *f, size_t *size)
{
	size_t len = esc_import_file_len(f), n = (len + 2) / 3 * 4 + 1;
	char *out = OPENSSL_secure_malloc(n);

	if (out != NULL)
		EVP_EncodeBlock((unsigned char *)out, esc_import_file_data(f), (int)len);
	*size = n;
	return out;
}

/* Overwrite the string member key of o before it is freed. */
static void
wipe_member(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	if (json_is_string(v))
		OPENSSL_cleanse((void *)json_string_value(v), json_string_length(v));
}

/*
 * Send one item to the service (POST /archive), which parses and archives
 * it with the library's checks; reason gets the service's sentence.
 */
static enum esc_err
archive_remote(struct batch *b, const struct item *it, struct esc_archive_info *info, char *reason, size_t rlen)
{
	struct esc_import_file *kf = NULL, *cf = NULL;
	char *kb64 = NULL, *cb64 = NULL, name[512];
	size_t kn = 0, cn = 0;
	json_t *body = NULL, *doc = NULL;
	enum esc_err r;
	int attempt, status = 0;

	if ((r = esc_import_file_read(b->ctx, it->path, &kf)) != ESC_OK ||
	    (it->cert != NULL && (r = esc_import_file_read(b->ctx, it->cert, &cf)) != ESC_OK))
		goto out;
	if ((kb64 = b64_secure(kf, &kn)) == NULL || (cf != NULL && (cb64 = b64_secure(cf, &cn)) == NULL)) {
		r = ESC_ERR_NOMEM;
		snprintf(reason, rlen, "out of secure memory");
		goto out;
	}
	for (attempt = 0; attempt < 2; attempt++) {
		/* The service names the file in its messages: the path, or its printable form if not UTF-8. */
		if ((body = json_object()) == NULL ||
		    (json_object_set_new(body, "name", json_string(it->path)) != 0 &&
		     (snprintf(name, sizeof(name), "file %zu", b->done + 1),
		      json_object_set_new(body, "name", json_string(name)) != 0)) ||
		    json_object_set_new(body, "file", json_string(kb64)) != 0 ||
		    (cb64 != NULL && (json_object_set_new(body, "cert", json_string(cb64)) != 0 ||
				      json_object_set_new(body, "cert_name", json_string("certificate file")) != 0)) ||
		    (b->password != NULL && json_object_set_new(body, "password",
								json_stringn(esc_secret_str(b->password),
									     esc_secret_len(b->password))) != 0)) {
			r = ESC_ERR_BAD_INPUT;
			snprintf(reason, rlen, "'%s' cannot be sent (the password is not UTF-8 text?)", it->path);
			goto out;
		}
		cli_http_call_quiet(b->h, CLI_HTTP_POST, "/archive", body, &doc, &status, &r, reason, rlen);
		wipe_member(body, "password");
		wipe_member(body, "file");
		json_decref(body);
		body = NULL;
		b->no_answer = r != ESC_OK && status == 0;
		if (status == 413) {
			r = ESC_ERR_BAD_INPUT;
			snprintf(
				reason, rlen,
				"'%s' is larger than the service takes in one request (its max_body): import it on the "
				"service host with --local",
				it->path);
		}
		if (r != ESC_ERR_PIN_MISSING || b->password != NULL)
			break;
		if ((r = obtain_password(b, b->ctx, it, reason, rlen)) != ESC_OK)
			goto out;
		reason[0] = '\0';
	}
	if (r == ESC_OK) {
		cli_json_copy(info->id, sizeof(info->id), doc, "record");
		cli_json_copy(info->kras, sizeof(info->kras), doc, "kras");
		info->foreign = json_is_true(json_object_get(doc, "foreign"));
	}
out:
	if (r != ESC_OK && reason[0] == '\0')
		snprintf(reason, rlen, "%s", *esc_ctx_errmsg(b->ctx) ? esc_ctx_errmsg(b->ctx) : esc_strerror(r));
	json_decref(body);
	json_decref(doc);
	if (kb64 != NULL)
		OPENSSL_secure_clear_free(kb64, kn);
	if (cb64 != NULL)
		OPENSSL_secure_clear_free(cb64, cn);
	esc_import_file_free(kf);
	esc_import_file_free(cf);
	return r;
}

/*
 * Read and parse one item with ctx (the calling thread's) into *key and
 * *cert; a password, when a file needs one, is asked for once under the
 * batch's lock.  reason gets the sentence for a failure.
 */
static enum esc_err
load_item(struct batch *b, struct esc_ctx *ctx, const struct item *it, EVP_PKEY **key, X509 **cert, char *reason,
	  size_t rlen)
{
	struct esc_import_file *kf = NULL, *cf = NULL;
	const struct esc_secret *password;
	enum esc_err r;
	int attempt;

	if ((r = esc_import_file_read(ctx, it->path, &kf)) != ESC_OK ||
	    (it->cert != NULL && (r = esc_import_file_read(ctx, it->cert, &cf)) != ESC_OK))
		goto out;
	for (attempt = 0; attempt < 2; attempt++) {
		pthread_mutex_lock(&b->lock);
		password = b->password;
		pthread_mutex_unlock(&b->lock);
		if (it->cert != NULL)
			r = esc_import_load_pair(ctx, esc_import_file_data(kf), esc_import_file_len(kf), it->path,
						 esc_import_file_data(cf), esc_import_file_len(cf), it->cert, password,
						 key, cert);
		else
			r = esc_import_load(ctx, esc_import_file_data(kf), esc_import_file_len(kf), it->path, password,
					    key, cert);
		if (r != ESC_ERR_PIN_MISSING || password != NULL)
			break;
		pthread_mutex_lock(&b->lock);
		r = obtain_password(b, ctx, it, reason, rlen);
		pthread_mutex_unlock(&b->lock);
		if (r != ESC_OK)
			goto out;
	}
out:
	if (r != ESC_OK && reason[0] == '\0')
		snprintf(reason, rlen, "%s", *esc_ctx_errmsg(ctx) ? esc_ctx_errmsg(ctx) : esc_strerror(r));
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

/* The outcome of one file of a chunk. */
struct outcome {
	enum esc_err r;
	char reason[REASON_MAX];
	struct esc_archive_info info;
};

/* One archiving thread (--local): its own library context and database session. */
struct worker {
	struct batch *b;
	const struct items *items;
	struct esc_ctx *ctx;
	struct esc_store *st;
	pthread_t thread;
	int started;
};

/* Parse one chunk's files, archive them as one batch (esc_archive_keys), report them in order. */
static void
import_chunk(struct worker *w, size_t first, size_t m, struct esc_archive_item *ai, struct outcome *oc, size_t *map)
{
	struct batch *b = w->b;
	size_t i, j, na = 0;
	enum esc_err r;

	for (i = 0; i < m; i++) {
		EVP_PKEY *key = NULL;
		X509 *cert = NULL;

		memset(&oc[i].info, 0, sizeof(oc[i].info));
		oc[i].reason[0] = '\0';
		esc_ctx_clear_error(w->ctx);
		if ((oc[i].r = load_item(b, w->ctx, &w->items->v[first + i], &key, &cert, oc[i].reason,
					 sizeof(oc[i].reason))) != ESC_OK)
			continue;
		memset(&ai[na], 0, sizeof(ai[na]));
		ai[na].cert = cert;
		ai[na].key = key;
		map[na++] = i;
	}
	/* Every check (match, usage, issuer, duplicates, KRA set) and the audit events are the library's. */
	esc_ctx_clear_error(w->ctx);
	r = esc_archive_keys(w->ctx, w->st, b->actor, ESC_SOURCE_IMPORT, ai, na);
	for (j = 0; j < na; j++) {
		struct outcome *o = &oc[map[j]];

		o->r = ai[j].result;
		snprintf(o->reason, sizeof(o->reason), "%s", ai[j].reason);
		o->info = ai[j].info;
		EVP_PKEY_free(ai[j].key);
		X509_free(ai[j].cert);
	}
	pthread_mutex_lock(&b->lock);
	for (i = 0; i < m; i++)
		report(b, &w->items->v[first + i], oc[i].r, &oc[i].info, oc[i].reason);
	/* Every further file would fail the same way. */
	if (r == ESC_ERR_DB_CONNECT)
		b->stop = 1;
	pthread_mutex_unlock(&b->lock);
}

static void *
import_worker(void *arg)
{
	struct worker *w = arg;
	struct batch *b = w->b;
	struct esc_archive_item *ai = calloc(b->chunk, sizeof(*ai));
	struct outcome *oc = calloc(b->chunk, sizeof(*oc));
	size_t *map = calloc(b->chunk, sizeof(*map)), first, m;

	if (ai == NULL || oc == NULL || map == NULL) {
		pthread_mutex_lock(&b->lock);
		b->stop = b->nomem = 1;
		pthread_mutex_unlock(&b->lock);
		goto out;
	}
	for (;;) {
		pthread_mutex_lock(&b->lock);
		if (b->stop || b->next >= w->items->n) {
			pthread_mutex_unlock(&b->lock);
			break;
		}
		first = b->next;
		m = w->items->n - first < b->chunk ? w->items->n - first : b->chunk;
		b->next += m;
		pthread_mutex_unlock(&b->lock);
		import_chunk(w, first, m, ai, oc, map);
	}
out:
	free(ai);
	free(oc);
	free(map);
	return NULL;
}

/*
 * Straight on the database (--local): jobs threads, each with its own
 * session, take chunks of b->chunk files in turn; a chunk is parsed by its
 * thread and archived as one batch.  Lines come chunk by chunk, in file
 * order within a chunk.
 */
static void
import_local(struct batch *b, struct esc_config *cfg, const struct items *items, unsigned jobs)
{
	struct worker *w = calloc(jobs, sizeof(*w));
	unsigned j, n = 0;

	if (w == NULL) {
		b->nomem = 1;
		return;
	}
	w[0].ctx = b->ctx;
	w[0].st = b->st;
	/* More threads than chunks would only open sessions. */
	if ((size_t)jobs > (items->n + b->chunk - 1) / b->chunk)
		jobs = (unsigned)((items->n + b->chunk - 1) / b->chunk);
	/* A thread whose session cannot be opened is not started: the others do its share. */
	for (n = 1; n < jobs; n++) {
		if (esc_ctx_new(&w[n].ctx) != ESC_OK)
			break;
		if (esc_store_connect(w[n].ctx, esc_config_get(cfg, "database"), &w[n].st) != ESC_OK) {
			fprintf(stderr, "%s %s: warning: %u of %u jobs: another database session failed: %s\n", PROG,
				CMD, n, jobs, esc_ctx_errmsg(w[n].ctx));
			esc_ctx_free(w[n].ctx);
			break;
		}
	}
	for (j = 0; j < n; j++) {
		w[j].b = b;
		w[j].items = items;
		w[j].started = j > 0 && pthread_create(&w[j].thread, NULL, import_worker, &w[j]) == 0;
	}
	(void)import_worker(&w[0]);
	for (j = 1; j < n; j++) {
		if (w[j].started)
			pthread_join(w[j].thread, NULL);
		esc_store_free(w[j].st);
		esc_ctx_free(w[j].ctx);
	}
	free(w);
}

static int
do_import(struct esc_ctx *ctx, struct esc_store *st, struct cli_http *h, struct esc_config *cfg, const char *actor,
	  const struct items *items, const char *password_file, unsigned jobs, size_t chunk)
{
	struct batch b;
	struct esc_archive_info info;
	char reason[REASON_MAX];
	size_t i;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	pthread_mutex_init(&b.lock, NULL);
	b.ctx = ctx;
	b.st = st;
	b.h = h;
	b.actor = actor;
	b.password_file = password_file;
	b.tty = isatty(STDOUT_FILENO);
	b.total = items->n;
	b.chunk = chunk;
	if (b.tty)
		draw_bar(&b);
	if (h == NULL) {
		import_local(&b, cfg, items, jobs);
		if (b.next < items->n) {
			clear_bar(&b);
			fprintf(stderr, "%s %s: error: %s: %zu file(s) not attempted\n", PROG, CMD,
				b.nomem ? "out of memory" : "the database connection is lost", items->n - b.next);
			b.failed += items->n - b.next;
			if (b.rc == 0)
				b.rc = esc_err_exit_code(b.nomem ? ESC_ERR_NOMEM : ESC_ERR_DB_CONNECT);
		}
	}
	for (i = 0; h != NULL && i < items->n; i++) {
		esc_ctx_clear_error(ctx);
		memset(&info, 0, sizeof(info));
		reason[0] = '\0';
		r = archive_remote(&b, &items->v[i], &info, reason, sizeof(reason));
		report(&b, &items->v[i], r, &info, reason);
		if (b.no_answer && i + 1 < items->n) {
			clear_bar(&b);
			fprintf(stderr, "%s %s: error: the service does not answer: %zu file(s) not attempted\n", PROG,
				CMD, items->n - i - 1);
			b.failed += items->n - i - 1;
			break;
		}
	}
	clear_bar(&b);
	printf("archived %zu, already archived %zu, refused %zu, failed %zu\n", b.archived, b.already, b.refused,
	       b.failed);
	esc_secret_free(b.password);
	pthread_mutex_destroy(&b.lock);
	return b.rc;
}

int
archive_main(int argc, char *argv[])
{
	enum {
		OPT_KEY = 256,
		OPT_CERT,
		OPT_PASSWORD,
		OPT_ACCOUNT_PASSWORD,
		OPT_SERVER,
		OPT_SERVER_CA,
		OPT_LOCAL,
		OPT_JOBS,
		OPT_BATCH
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"list", required_argument, NULL, 'l'},
		{"key", required_argument, NULL, OPT_KEY},
		{"cert", required_argument, NULL, OPT_CERT},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"user", required_argument, NULL, 'u'},
		{"account-password-file", required_argument, NULL, OPT_ACCOUNT_PASSWORD},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"jobs", required_argument, NULL, OPT_JOBS},
		{"batch", required_argument, NULL, OPT_BATCH},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *config = NULL, *database = NULL, *list = NULL, *key = NULL, *cert = NULL, *password_file = NULL;
	const char *user = NULL, *account_password_file = NULL, *action, *server = NULL, *server_ca = NULL;
	struct items items = {NULL, 0, 0};
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *admin = NULL;
	OSSL_PROVIDER *legacy = NULL, *deflt = NULL;
	struct cli_http *h = NULL;
	json_t *who = NULL;
	enum esc_err r;
	int c, rc = 0, local = 0, jobs_given = 0;
	long n = 0, online = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned jobs = online < 1 ? 1 : online > MAX_JOBS ? MAX_JOBS : (unsigned)online;
	size_t chunk = DEFAULT_BATCH;
	char *end;

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
		case OPT_SERVER:
			server = optarg;
			break;
		case OPT_SERVER_CA:
			server_ca = optarg;
			break;
		case OPT_LOCAL:
			local = 1;
			break;
		case OPT_JOBS:
		case OPT_BATCH:
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' || n < 1 ||
			    n > (c == OPT_JOBS ? MAX_JOBS : ESC_ARCHIVE_KEYS_MAX))
				return cli_usage_error(CMD, "%s must be a number from 1 to %d",
						       c == OPT_JOBS ? "--jobs" : "--batch",
						       c == OPT_JOBS ? MAX_JOBS : ESC_ARCHIVE_KEYS_MAX);
			if (c == OPT_JOBS)
				jobs = (unsigned)n;
			else
				chunk = (size_t)n;
			jobs_given = 1;
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
	if ((rc = cli_check_mode(CMD, server, local)) != 0)
		return rc;
	if (server != NULL && jobs_given)
		return cli_usage_error(CMD, "--jobs and --batch are for --local: through the service each file is "
					    "one request");
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
	if (server != NULL) {
		/* Log in once before the batch, as locally: a wrong password or a non-administrator stops here. */
		if ((rc = cli_http_open(CMD, ctx, server, server_ca, user, account_password_file, &h)) != 0 ||
		    (rc = cli_http_call(h, CLI_HTTP_GET, "/whoami", NULL, &who)) != 0)
			goto out;
		{
			const json_t *role;
			size_t i;
			int is_admin = 0;

			json_array_foreach(json_object_get(who, "roles"), i, role) is_admin |=
				json_is_string(role) && strcmp(json_string_value(role), "admin") == 0;
			if (!is_admin) {
				fprintf(stderr, "%s %s: error: account '%s' is not an administrator\n", PROG, CMD,
					user);
				rc = esc_err_exit_code(ESC_ERR_DENIED);
				goto out;
			}
		}
		rc = do_import(ctx, NULL, h, cfg, user, &items, password_file, 1, 1);
		goto out;
	}
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
	if ((rc = cli_open_store_local(CMD, "archive import", ctx, cfg, &st)) != 0 ||
	    (rc = cli_login(CMD, ctx, st, user, account_password_file, &admin)) != 0)
		goto out;
	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = do_import(ctx, st, NULL, cfg, esc_account_name(admin), &items, password_file, jobs, chunk);
out:
	json_decref(who);
	cli_http_free(h);
	esc_account_free(admin);
	esc_store_free(st);
	OSSL_PROVIDER_unload(deflt);
	OSSL_PROVIDER_unload(legacy);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	items_free(&items);
	return rc;
}
