/*
 * scale — the archive at a million records (bench/scale, docs/performance.md
 * "Scale"), three steps on a database that bench/scale set up:
 *
 *   fill N     N archive records with real, distinct identities: for each an
 *              EC P-256 key and a certificate from a software CA (a foreign
 *              issuer), the row's columns derived from it exactly as archival
 *              derives them (esc_archive_fields_of), its KRA rows, and an
 *              "archive.store" audit event appended through the library
 *              (esc_audit_append, so the chain is a real one and `audit
 *              verify` checks it).  The sealed record is a copy of a real
 *              record's (--template): searches and listings see a true row
 *              (its certificate matches its columns); only its key cannot be
 *              recovered, since the sealed content names another record.
 *              Generator threads write the rows with COPY, one thread
 *              appends the audit events (the chain is one sequence).
 *   search K   K random lookups each by serial, email and subject substring
 *              through esc_archive_search on one connection, as a
 *              p11escrowd worker makes them (prepared statements after the
 *              first use); p50 and p99 per kind.
 *   recover M  M full recoveries of real records: request (certificate
 *              manager), approve (a second one), release (CA token),
 *              complete (the KRA's card, PKCS#12 out); p50 and p99 of each
 *              step and of the whole.
 *
 * A benchmark, not a tool: it uses two library-internal functions (the
 * column derivation, and a transaction around a batch of audit appends).
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/keeper.h>
#include <p11escrow/kra.h>
#include <p11escrow/pin.h>
#include <p11escrow/recovery.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

#include "archive_internal.h"
#include "bench_util.h"
#include "store_internal.h"

#define PROG "scale"
#define BATCH 2000	 /* rows per COPY */
#define AUDIT_BATCH 1000 /* audit events per transaction */
#define GENERATORS_MAX 8

struct opts {
	const char *database, *pin_file, *pw_file, *module, *template_id, *actor, *manager, *approver, *agent,
		*agent_token, *subject;
	long count, first, threads, records;
};

/* ---- fill ----------------------------------------------------------------------------------------- */

struct made {
	char id[37];
	char serial[48];
	int ready; /* committed: its audit event may be written */
};

struct fill {
	const struct opts *o;
	EVP_PKEY *ca_key;
	X509 *ca_cert;
	char *tmpl_record_hex;				/* the template's sealed record, bytea text ("\\x...") */
	char tmpl_kra_id[8][24], tmpl_recipient[8][32]; /* its archive_record_kras rows */
	int tmpl_nkras;
	char key_type[32];
	struct made *made; /* count entries, filled by the generators, read by the audit thread */
	long next;	   /* next number to generate */
	int failed;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static void
hex_into(char *out, const unsigned char *p, size_t n)
{
	static const char h[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = h[p[i] >> 4];
		out[2 * i + 1] = h[p[i] & 15];
	}
	out[2 * n] = '\0';
}

/*
 * Append s to buf as a COPY text field (backslash, tab, newline escaped),
 * then end (a tab or a newline); s NULL is SQL NULL (\N).
 */
static void
put_field(char **buf, size_t *len, size_t *cap, const char *s, char end)
{
	size_t need = 2 * (s ? strlen(s) : 2) + 2;

	if (*len + need > *cap) {
		char *p;

		*cap = 2 * (*len + need);
		if ((p = realloc(*buf, *cap)) == NULL) {
			fprintf(stderr, PROG ": out of memory\n");
			exit(1);
		}
		*buf = p;
	}
	if (s == NULL) {
		(*buf)[(*len)++] = '\\';
		(*buf)[(*len)++] = 'N';
		s = "";
	}
	for (; *s; s++) {
		if (*s == '\\' || *s == '\t' || *s == '\n' || *s == '\r') {
			(*buf)[(*len)++] = '\\';
			(*buf)[(*len)++] = *s == '\t' ? 't' : *s == '\n' ? 'n' : *s == '\r' ? 'r' : '\\';
		} else
			(*buf)[(*len)++] = *s;
	}
	(*buf)[(*len)++] = end;
}

/* Certificate number n: a fresh EC P-256 key, CN=user<n>, an email SAN, keyAgreement. */
static X509 *
make_cert(struct fill *f, long n)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509V3_CTX v3;
	X509_EXTENSION *ext = NULL;
	X509_NAME *name = X509_NAME_new();
	unsigned char sn[16];
	BIGNUM *bn = NULL;
	char cn[32], ou[16], san[64];
	int ok = 0;

	if (key == NULL || x == NULL || name == NULL || RAND_bytes(sn, sizeof(sn)) != 1)
		goto out;
	sn[0] &= 0x7f;
	snprintf(cn, sizeof(cn), "user%07ld", n);
	snprintf(ou, sizeof(ou), "dept%02ld", n % 100);
	snprintf(san, sizeof(san), "email:User%07ld@Scale.example", n);
	if ((bn = BN_bin2bn(sn, sizeof(sn), NULL)) == NULL ||
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL || !X509_set_version(x, 2) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (unsigned char *)cn, -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_ASC, (unsigned char *)ou, -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (unsigned char *)"Scale Bench", -1, -1, 0) ||
	    !X509_set_subject_name(x, name) || !X509_set_issuer_name(x, X509_get_subject_name(f->ca_cert)) ||
	    X509_gmtime_adj(X509_getm_notBefore(x), -86400) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365) == NULL || !X509_set_pubkey(x, key))
		goto out;
	X509V3_set_ctx(&v3, f->ca_cert, x, NULL, NULL, 0);
	if ((ext = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,keyAgreement")) == NULL ||
	    !X509_add_ext(x, ext, -1))
		goto out;
	X509_EXTENSION_free(ext);
	if ((ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san)) == NULL || !X509_add_ext(x, ext, -1))
		goto out;
	if (X509_sign(x, f->ca_key, EVP_sha256()) <= 0)
		goto out;
	ok = 1;
out:
	X509_EXTENSION_free(ext);
	X509_NAME_free(name);
	BN_free(bn);
	EVP_PKEY_free(key);
	if (!ok) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static int
copy_send(PGconn *db, const char *sql, const char *buf, size_t len)
{
	PGresult *res = PQexec(db, sql);
	int ok = PQresultStatus(res) == PGRES_COPY_IN;

	PQclear(res);
	if (!ok || PQputCopyData(db, buf, (int)len) != 1 || PQputCopyEnd(db, NULL) != 1)
		return 0;
	res = PQgetResult(db);
	ok = PQresultStatus(res) == PGRES_COMMAND_OK;
	if (!ok)
		fprintf(stderr, PROG ": COPY: %s", PQerrorMessage(db));
	PQclear(res);
	while ((res = PQgetResult(db)) != NULL)
		PQclear(res);
	return ok;
}

static int
exec_ok(PGconn *db, const char *sql)
{
	PGresult *res = PQexec(db, sql);
	int ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok)
		fprintf(stderr, PROG ": %s: %s", sql, PQerrorMessage(db));
	PQclear(res);
	return ok;
}

static void *
generator(void *arg)
{
	struct fill *f = arg;
	struct esc_ctx *ctx = NULL;
	PGconn *db = PQconnectdb(f->o->database);
	char *rows = NULL, *kras = NULL, *certhex = NULL;
	size_t rlen, rcap = 0, klen, kcap = 0;
	struct made batch[BATCH];

	if (PQstatus(db) != CONNECTION_OK || esc_ctx_new(&ctx) != ESC_OK) {
		fprintf(stderr, PROG ": generator: %s", PQerrorMessage(db));
		goto fail;
	}
	for (;;) {
		long first, n, i;

		pthread_mutex_lock(&f->mu);
		first = f->next;
		n = f->o->count - first < BATCH ? f->o->count - first : BATCH;
		f->next += n;
		pthread_mutex_unlock(&f->mu);
		if (n <= 0 || f->failed)
			break;
		rlen = klen = 0;
		for (i = 0; i < n; i++) {
			struct esc_archive_fields fl;
			unsigned char *der = NULL, uu[16];
			X509 *x = make_cert(f, f->o->first + first + i);
			int dl;
			char uuid[37], *p;

			memset(&fl, 0, sizeof(fl));
			if (x == NULL || (dl = i2d_X509(x, &der)) <= 0 ||
			    esc_archive_fields_of(ctx, x, &fl) != ESC_OK || RAND_bytes(uu, sizeof(uu)) != 1) {
				fprintf(stderr, PROG ": cannot make certificate %ld\n", first + i);
				X509_free(x);
				OPENSSL_free(der);
				esc_archive_fields_clear(&fl);
				goto fail;
			}
			uu[6] = (uu[6] & 0x0f) | 0x40;
			uu[8] = (uu[8] & 0x3f) | 0x80;
			snprintf(uuid, sizeof(uuid),
				 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", uu[0], uu[1],
				 uu[2], uu[3], uu[4], uu[5], uu[6], uu[7], uu[8], uu[9], uu[10], uu[11], uu[12], uu[13],
				 uu[14], uu[15]);
			if ((p = realloc(certhex, 2 * (size_t)dl + 3)) == NULL)
				goto fail;
			certhex = p;
			certhex[0] = '\\';
			certhex[1] = 'x';
			hex_into(certhex + 2, der, (size_t)dl);
			put_field(&rows, &rlen, &rcap, uuid, '\t');
			put_field(&rows, &rlen, &rcap, fl.serial, '\t');
			put_field(&rows, &rlen, &rcap, fl.issuer, '\t');
			put_field(&rows, &rlen, &rcap, fl.subject, '\t');
			put_field(&rows, &rlen, &rcap, fl.email, '\t');
			put_field(&rows, &rlen, &rcap, fl.cert_sha256, '\t');
			put_field(&rows, &rlen, &rcap, fl.public_key_sha256, '\t');
			put_field(&rows, &rlen, &rcap, f->key_type, '\t');
			put_field(&rows, &rlen, &rcap, certhex, '\t');
			put_field(&rows, &rlen, &rcap, "t", '\t');
			put_field(&rows, &rlen, &rcap, "import", '\t');
			put_field(&rows, &rlen, &rcap, f->tmpl_record_hex, '\n');
			for (int k = 0; k < f->tmpl_nkras; k++) {
				put_field(&kras, &klen, &kcap, uuid, '\t');
				put_field(&kras, &klen, &kcap, f->tmpl_kra_id[k], '\t');
				put_field(&kras, &klen, &kcap, f->tmpl_recipient[k], '\n');
			}
			snprintf(batch[i].id, sizeof(batch[i].id), "%s", uuid);
			snprintf(batch[i].serial, sizeof(batch[i].serial), "%s", fl.serial);
			esc_archive_fields_clear(&fl);
			OPENSSL_free(der);
			X509_free(x);
		}
		if (!exec_ok(db, "BEGIN") ||
		    !copy_send(db,
			       "COPY archive_records (id, cert_serial, issuer, subject, email, cert_sha256, "
			       "public_key_sha256, key_type, certificate, foreign_issuer, source, record) FROM STDIN",
			       rows, rlen) ||
		    !copy_send(db, "COPY archive_record_kras (record_id, kra_id, recipient) FROM STDIN", kras, klen) ||
		    !exec_ok(db, "COMMIT"))
			goto fail;
		pthread_mutex_lock(&f->mu);
		for (i = 0; i < n; i++) {
			f->made[first + i] = batch[i];
			f->made[first + i].ready = 1;
		}
		pthread_cond_broadcast(&f->cv);
		pthread_mutex_unlock(&f->mu);
	}
	goto out;
fail:
	pthread_mutex_lock(&f->mu);
	f->failed = 1;
	pthread_cond_broadcast(&f->cv);
	pthread_mutex_unlock(&f->mu);
out:
	free(rows);
	free(kras);
	free(certhex);
	esc_ctx_free(ctx);
	PQfinish(db);
	return NULL;
}

/*
 * The audit events of the generated records, in the order they were
 * generated, AUDIT_BATCH to a READ COMMITTED transaction (as
 * esc_audit_append's own: it takes the chain's lock once, then appends to
 * the tail it wrote).  The events are those archival writes.
 */
static int
audit_events(struct fill *f, struct esc_ctx *ctx, struct esc_store *st)
{
	long j;
	int in_tx = 0;

	for (j = 0; j < f->o->count; j++) {
		char details[200];
		struct esc_audit_event ev = {f->o->actor, "", "archive.store", NULL, "ok", details};

		pthread_mutex_lock(&f->mu);
		while (!f->made[j].ready && !f->failed)
			pthread_cond_wait(&f->cv, &f->mu);
		pthread_mutex_unlock(&f->mu);
		if (f->failed)
			return 0;
		if (!in_tx) {
			if (esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL,
					   NULL) != ESC_OK)
				goto fail;
			esc_store_mark_tx(st);
			in_tx = 1;
		}
		ev.object = f->made[j].serial;
		snprintf(details, sizeof(details), "record %s, source import, foreign issuer, %d KRA(s), 1 needed",
			 f->made[j].id, f->tmpl_nkras);
		if (esc_audit_append(ctx, st, &ev) != ESC_OK)
			goto fail;
		if ((j + 1) % AUDIT_BATCH == 0 || j + 1 == f->o->count) {
			if (esc_store_commit(ctx, st) != ESC_OK)
				goto fail;
			in_tx = 0;
		}
		if ((j + 1) % 100000 == 0)
			fprintf(stderr, "== %ld records and audit events written\n", j + 1);
	}
	return 1;
fail:
	fprintf(stderr, PROG ": audit event: %s\n", esc_ctx_errmsg(ctx));
	if (in_tx)
		esc_store_rollback(st);
	return 0;
}

/* The software CA of the synthetic certificates: a new EC P-256 key, self-signed, made here. */
static int
make_ca(struct fill *f)
{
	X509_NAME *name = NULL;
	int ok = 0;

	if ((f->ca_key = EVP_EC_gen("P-256")) == NULL || (f->ca_cert = X509_new()) == NULL ||
	    (name = X509_NAME_new()) == NULL)
		goto out;
	if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (unsigned char *)"Scale Bench Foreign CA", -1, -1,
					0) ||
	    !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (unsigned char *)"Scale Bench", -1, -1, 0) ||
	    !X509_set_version(f->ca_cert, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(f->ca_cert), 1) ||
	    !X509_set_subject_name(f->ca_cert, name) || !X509_set_issuer_name(f->ca_cert, name) ||
	    X509_gmtime_adj(X509_getm_notBefore(f->ca_cert), -86400) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(f->ca_cert), 86400L * 3650) == NULL ||
	    !X509_set_pubkey(f->ca_cert, f->ca_key) || X509_sign(f->ca_cert, f->ca_key, EVP_sha256()) <= 0)
		goto out;
	ok = 1;
out:
	X509_NAME_free(name);
	return ok;
}

/* The template record: its sealed record (bytea text), key type and KRA rows. */
static int
load_template(struct fill *f)
{
	PGconn *db = PQconnectdb(f->o->database);
	PGresult *res = NULL;
	const char *v[1] = {f->o->template_id};
	int ok = 0, i;

	if (PQstatus(db) != CONNECTION_OK) {
		fprintf(stderr, PROG ": %s", PQerrorMessage(db));
		goto out;
	}
	res = PQexecParams(db, "SELECT record, key_type FROM archive_records WHERE id = $1::uuid", 1, NULL, v, NULL,
			   NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		fprintf(stderr, PROG ": no template record %s\n", f->o->template_id);
		goto out;
	}
	if ((f->tmpl_record_hex = strdup(PQgetvalue(res, 0, 0))) == NULL)
		goto out;
	snprintf(f->key_type, sizeof(f->key_type), "%s", PQgetvalue(res, 0, 1));
	PQclear(res);
	res = PQexecParams(db, "SELECT kra_id, recipient FROM archive_record_kras WHERE record_id = $1::uuid", 1, NULL,
			   v, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1 || PQntuples(res) > 8) {
		fprintf(stderr, PROG ": template record %s: 1..8 KRA rows expected\n", f->o->template_id);
		goto out;
	}
	f->tmpl_nkras = PQntuples(res);
	for (i = 0; i < f->tmpl_nkras; i++) {
		snprintf(f->tmpl_kra_id[i], sizeof(f->tmpl_kra_id[i]), "%s", PQgetvalue(res, i, 0));
		snprintf(f->tmpl_recipient[i], sizeof(f->tmpl_recipient[i]), "%s", PQgetvalue(res, i, 1));
	}
	ok = 1;
out:
	PQclear(res);
	PQfinish(db);
	return ok;
}

static int
run_fill(const struct opts *o)
{
	struct fill f;
	pthread_t th[GENERATORS_MAX];
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	long i, nth = o->threads;
	int ok = 0;
	double t0 = bench_now(), c0 = bench_cpu();

	memset(&f, 0, sizeof(f));
	f.o = o;
	pthread_mutex_init(&f.mu, NULL);
	pthread_cond_init(&f.cv, NULL);
	if (o->template_id == NULL || o->actor == NULL) {
		fprintf(stderr, PROG ": fill needs --template ID and --actor NAME\n");
		return 2;
	}
	if (!load_template(&f) || !make_ca(&f) || (f.made = calloc((size_t)o->count, sizeof(*f.made))) == NULL)
		goto out;
	if (esc_ctx_new(&ctx) != ESC_OK || esc_store_connect(ctx, o->database, &st) != ESC_OK) {
		fprintf(stderr, PROG ": database: %s\n", ctx ? esc_ctx_errmsg(ctx) : "out of memory");
		goto out;
	}
	for (i = 0; i < nth; i++)
		if (pthread_create(&th[i], NULL, generator, &f) != 0) {
			nth = i;
			f.failed = 1;
			break;
		}
	ok = audit_events(&f, ctx, st);
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	ok = ok && !f.failed;
	if (ok)
		printf("scale fill records=%ld seconds=%.1f records_per_s=%.0f cpu_s=%.1f\n", o->count,
		       bench_now() - t0, (double)o->count / (bench_now() - t0), bench_cpu() - c0);
out:
	esc_store_free(st);
	esc_ctx_free(ctx);
	free(f.made);
	free(f.tmpl_record_hex);
	EVP_PKEY_free(f.ca_key);
	X509_free(f.ca_cert);
	return ok ? 0 : 1;
}

/* ---- search --------------------------------------------------------------------------------------- */

static int
login(struct esc_ctx *ctx, struct esc_store *st, const char *name, const struct esc_secret *pw, struct esc_account **a)
{
	if (esc_account_login(ctx, st, name, pw, a) != ESC_OK) {
		fprintf(stderr, PROG ": login %s: %s\n", name, esc_ctx_errmsg(ctx));
		return 0;
	}
	return 1;
}

static void
report(const char *what, struct bench_samples *s, size_t hits)
{
	printf("scale search kind=%s lookups=%zu found=%zu p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n", what, s->n, hits,
	       bench_quantile(s, 0.5), bench_quantile(s, 0.99), bench_quantile(s, 1.0));
}

static int
run_search(const struct opts *o)
{
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_secret *pw = NULL;
	struct esc_account *a = NULL;
	struct bench_samples ser = {0}, mail = {0}, subj = {0}, wide = {0};
	size_t hit_ser = 0, hit_mail = 0, hit_subj = 0, hit_wide = 0;
	PGconn *db = NULL;
	PGresult *res = NULL;
	struct target {
		long n;
		char email[64], serial[48];
	} *targets = NULL;
	int i, rows, rc = 1;

	if (o->manager == NULL || o->pw_file == NULL || o->records < 1) {
		fprintf(stderr, PROG ": search needs --manager NAME --password-file FILE --records N\n");
		return 2;
	}
	if (esc_ctx_new(&ctx) != ESC_OK || esc_secret_from_file(ctx, o->pw_file, &pw) != ESC_OK ||
	    esc_store_connect(ctx, o->database, &st) != ESC_OK || !login(ctx, st, o->manager, pw, &a))
		goto out;
	/*
	 * The targets: 3K random numbers of the N synthetic records (CN user<n>, email User<n>@Scale.example),
	 * the serials of the first K read first, untimed.  Each kind of search looks up K records of its
	 * own, so none finds a record's pages already read by another kind's search of it (the serial
	 * search's records were read once, by email, to learn their serial).
	 */
	db = PQconnectdb(o->database);
	if ((targets = calloc(3 * (size_t)o->count, sizeof(*targets))) == NULL)
		goto out;
	for (i = 0; i < 3 * o->count; i++) {
		unsigned long long r;
		const char *v[1];

		if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
			goto out;
		targets[i].n = o->first + (long)(r % (unsigned long long)o->records);
		snprintf(targets[i].email, sizeof(targets[i].email), "user%07ld@scale.EXAMPLE", targets[i].n);
		if (i >= o->count)
			continue; /* only the serial search needs a value from the database */
		v[0] = targets[i].email;
		res = PQexecParams(db, "SELECT upper(cert_serial) FROM archive_records WHERE lower(email) = lower($1)",
				   1, NULL, v, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
			fprintf(stderr, PROG ": no synthetic record %ld (%s)\n", targets[i].n, PQerrorMessage(db));
			goto out;
		}
		snprintf(targets[i].serial, sizeof(targets[i].serial), "%s", PQgetvalue(res, 0, 0));
		PQclear(res);
		res = NULL;
	}
	rows = (int)o->count;
	for (i = 0; i < rows; i++) {
		struct esc_record_summary *s = NULL;
		size_t n = 0;
		double t;
		char sub[64];

		t = bench_now();
		if (esc_archive_search(ctx, st, a, targets[i].serial, NULL, NULL, &s, &n) != ESC_OK)
			goto fail;
		(void)bench_samples_add(&ser, (bench_now() - t) * 1e3);
		hit_ser += n == 1 && !s[0].tampered;
		free(s);
		t = bench_now();
		if (esc_archive_search(ctx, st, a, NULL, NULL, targets[rows + i].email, &s, &n) != ESC_OK)
			goto fail;
		(void)bench_samples_add(&mail, (bench_now() - t) * 1e3);
		hit_mail += n == 1 && !s[0].tampered;
		free(s);
		/* "user0123456," : exactly one record's CN, as a substring of its subject */
		snprintf(sub, sizeof(sub), "USER%07ld,", targets[2 * rows + i].n);
		t = bench_now();
		if (esc_archive_search(ctx, st, a, NULL, sub, NULL, &s, &n) != ESC_OK)
			goto fail;
		(void)bench_samples_add(&subj, (bench_now() - t) * 1e3);
		hit_subj += n == 1 && !s[0].tampered;
		free(s);
	}
	/* A substring of every synthetic subject: the 100 newest of a million (the worst case, a few times). */
	for (i = 0; i < 5; i++) {
		struct esc_record_summary *s = NULL;
		size_t n = 0;
		double t = bench_now();

		if (esc_archive_search(ctx, st, a, NULL, "O=Scale Bench", NULL, &s, &n) != ESC_OK)
			goto fail;
		(void)bench_samples_add(&wide, (bench_now() - t) * 1e3);
		hit_wide += n;
		free(s);
	}
	report("serial", &ser, hit_ser);
	report("email", &mail, hit_mail);
	report("subject", &subj, hit_subj);
	report("subject-unselective", &wide, hit_wide);
	rc = 0;
	goto out;
fail:
	fprintf(stderr, PROG ": search: %s\n", esc_ctx_errmsg(ctx));
out:
	free(targets);
	PQclear(res);
	PQfinish(db);
	bench_samples_free(&ser);
	bench_samples_free(&mail);
	bench_samples_free(&subj);
	bench_samples_free(&wide);
	esc_account_free(a);
	esc_store_free(st);
	esc_secret_free(pw);
	esc_ctx_free(ctx);
	return rc;
}

/* ---- recover -------------------------------------------------------------------------------------- */

static int
run_recover(const struct opts *o)
{
	struct esc_ctx *ctx = NULL;
	struct esc_store *st = NULL;
	struct esc_keeper *keeper = NULL;
	struct esc_token *card = NULL;
	struct esc_secret *pin = NULL, *pw = NULL, *p12pw = NULL;
	struct esc_account *mgr = NULL, *appr = NULL, *agent = NULL;
	struct esc_record_summary *recs = NULL;
	struct esc_kra *kras = NULL;
	struct bench_samples req = {0}, apv = {0}, rel = {0}, cmp = {0}, tot = {0};
	size_t nrecs = 0, nkras = 0, j;
	char kra[65] = "";
	int i, rc = 1;

	if (o->manager == NULL || o->approver == NULL || o->agent == NULL || o->agent_token == NULL ||
	    o->pw_file == NULL || o->subject == NULL) {
		fprintf(stderr, PROG ": recover needs --manager, --approver, --agent, --agent-token, --password-file, "
				     "--subject\n");
		return 2;
	}
	if (esc_ctx_new(&ctx) != ESC_OK)
		return 1;
	/* Untimed: secrets, the database, the CA token as the keeper holds it, logins, the card. */
	if (esc_secret_obtain(ctx, o->pin_file, "P11ESCROW_CA_PIN", NULL, &pin) != ESC_OK ||
	    esc_secret_from_file(ctx, o->pw_file, &pw) != ESC_OK ||
	    esc_secret_new(ctx, "benchmark-p12-password-0001", 27, &p12pw) != ESC_OK ||
	    esc_store_connect(ctx, o->database, &st) != ESC_OK ||
	    esc_keeper_open(ctx, st, o->module, pin, &keeper) != ESC_OK || !login(ctx, st, o->manager, pw, &mgr) ||
	    !login(ctx, st, o->approver, pw, &appr) || !login(ctx, st, o->agent, pw, &agent) ||
	    esc_kra_list(ctx, st, &kras, &nkras) != ESC_OK ||
	    esc_token_open(ctx, o->module, o->agent_token, &card) != ESC_OK ||
	    esc_token_login(ctx, card, pin) != ESC_OK)
		goto fail;
	for (j = 0; j < nkras; j++)
		if (kras[j].id == esc_account_kra_id(agent))
			snprintf(kra, sizeof(kra), "%s", kras[j].name);
	/* Real records (archived by `archive import`), never recovered before: the newest of the subject's. */
	if (esc_archive_search(ctx, st, mgr, NULL, o->subject, NULL, &recs, &nrecs) != ESC_OK)
		goto fail;
	if (nrecs < (size_t)o->first + (size_t)o->count) {
		fprintf(stderr, PROG ": %zu records with '%s', %ld wanted\n", nrecs, o->subject, o->first + o->count);
		goto out;
	}
	for (i = 0; i < o->count; i++) {
		unsigned char *p12 = NULL;
		size_t p12len = 0;
		long long id;
		double t0, t1, t2, t3, t4;

		t0 = bench_now();
		if (esc_recovery_request(ctx, st, mgr, recs[o->first + i].id, kra, "benchmark: recovery at scale",
					 &id) != ESC_OK)
			goto fail;
		t1 = bench_now();
		if (esc_recovery_approve(ctx, st, appr, id) != ESC_OK)
			goto fail;
		t2 = bench_now();
		if (esc_keeper_release(ctx, keeper, st, id) != ESC_OK)
			goto fail;
		t3 = bench_now();
		if (esc_recovery_complete(ctx, st, agent, id, card, p12pw, &p12, &p12len) != ESC_OK)
			goto fail;
		t4 = bench_now();
		esc_recovery_p12_free(p12, p12len);
		(void)bench_samples_add(&req, (t1 - t0) * 1e3);
		(void)bench_samples_add(&apv, (t2 - t1) * 1e3);
		(void)bench_samples_add(&rel, (t3 - t2) * 1e3);
		(void)bench_samples_add(&cmp, (t4 - t3) * 1e3);
		(void)bench_samples_add(&tot, (t4 - t0) * 1e3);
	}
	printf("scale recover count=%ld total_p50_ms=%.1f total_p99_ms=%.1f request_p50_ms=%.1f approve_p50_ms=%.1f "
	       "release_p50_ms=%.1f complete_p50_ms=%.1f\n",
	       o->count, bench_quantile(&tot, 0.5), bench_quantile(&tot, 0.99), bench_quantile(&req, 0.5),
	       bench_quantile(&apv, 0.5), bench_quantile(&rel, 0.5), bench_quantile(&cmp, 0.5));
	rc = 0;
	goto out;
fail:
	fprintf(stderr, PROG ": recover: %s\n", esc_ctx_errmsg(ctx));
out:
	bench_samples_free(&req);
	bench_samples_free(&apv);
	bench_samples_free(&rel);
	bench_samples_free(&cmp);
	bench_samples_free(&tot);
	free(recs);
	free(kras);
	esc_account_free(mgr);
	esc_account_free(appr);
	esc_account_free(agent);
	esc_token_free(card);
	esc_keeper_free(keeper);
	esc_store_free(st);
	esc_secret_free(p12pw);
	esc_secret_free(pw);
	esc_secret_free(pin);
	esc_ctx_free(ctx);
	return rc;
}

static void
usage(FILE *f)
{
	fprintf(f, "Usage: " PROG " fill --count N --template RECORD_ID --actor NAME [--first K] [--threads T]\n"
		   "       " PROG " search --count K --records N --manager NAME --password-file FILE [--first K0]\n"
		   "       " PROG " recover --count M --subject TEXT --manager NAME --approver NAME --agent NAME\n"
		   "                     --agent-token URI --password-file FILE [--pin-file FILE] [--first I]\n"
		   "common: [--database CONNINFO] (default $P11ESCROW_DATABASE) [--module PATH]\n\n"
		   "fill     N records with new keys and certificates (CN user<K..K+N-1>), the sealed record\n"
		   "         copied from RECORD_ID, and their audit events by NAME (T generator threads, default 2)\n"
		   "search   K random lookups each by serial, email and subject among the N synthetic records\n"
		   "         numbered from K0 (default 0), as certificate manager NAME\n"
		   "recover  M full recoveries (request, approve, release, complete) of the records I..I+M-1\n"
		   "         (newest first) whose subject contains TEXT\n");
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{"database", required_argument, NULL, 'd'},
		{"pin-file", required_argument, NULL, 'p'},
		{"module", required_argument, NULL, 'M'},
		{"password-file", required_argument, NULL, 'P'},
		{"count", required_argument, NULL, 'n'},
		{"first", required_argument, NULL, 'f'},
		{"threads", required_argument, NULL, 't'},
		{"records", required_argument, NULL, 'N'},
		{"template", required_argument, NULL, 'T'},
		{"actor", required_argument, NULL, 'A'},
		{"manager", required_argument, NULL, 'm'},
		{"approver", required_argument, NULL, 'a'},
		{"agent", required_argument, NULL, 'k'},
		{"agent-token", required_argument, NULL, 'K'},
		{"subject", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o = {.database = getenv("P11ESCROW_DATABASE"), .count = 100, .threads = 2};
	const char *cmd;
	int c;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'd':
			o.database = optarg;
			break;
		case 'p':
			o.pin_file = optarg;
			break;
		case 'M':
			o.module = optarg;
			break;
		case 'P':
			o.pw_file = optarg;
			break;
		case 'n':
			o.count = bench_parse_long(PROG, "--count", optarg, 1, 100000000);
			break;
		case 'f':
			o.first = bench_parse_long(PROG, "--first", optarg, 0, 100000000);
			break;
		case 't':
			o.threads = bench_parse_long(PROG, "--threads", optarg, 1, GENERATORS_MAX);
			break;
		case 'N':
			o.records = bench_parse_long(PROG, "--records", optarg, 1, 100000000);
			break;
		case 'T':
			o.template_id = optarg;
			break;
		case 'A':
			o.actor = optarg;
			break;
		case 'm':
			o.manager = optarg;
			break;
		case 'a':
			o.approver = optarg;
			break;
		case 'k':
			o.agent = optarg;
			break;
		case 'K':
			o.agent_token = optarg;
			break;
		case 's':
			o.subject = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind + 1 != argc || o.database == NULL) {
		usage(stderr);
		return 2;
	}
	(void)!esc_secmem_init();
	cmd = argv[optind];
	if (strcmp(cmd, "fill") == 0)
		return run_fill(&o);
	if (strcmp(cmd, "search") == 0)
		return run_search(&o);
	if (strcmp(cmd, "recover") == 0)
		return run_recover(&o);
	usage(stderr);
	return 2;
}
