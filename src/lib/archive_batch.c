/*
 * p11escrow — archival of many keys at once (bulk import, issue #15).
 *
 * esc_archive_key makes about fourteen round trips per key: policy, KRAs,
 * storage key and the duplicate check read for each, then its own short
 * transaction.  esc_archive_keys does the same checks and writes the same
 * rows and audit events for up to ESC_ARCHIVE_KEYS_MAX keys with a handful
 * of statements: what every key shares is read once, the duplicate check
 * is one statement, and the records, their KRA rows and the audit events
 * go in as multi-row INSERTs in one transaction.
 *
 * The reads happen before the transaction, so the transaction checks what
 * sealing relied on: the KRAs are read again FOR SHARE (none retired
 * under it, as esc_archive_choose_kras guarantees one key), sql/012's
 * trigger refuses a record sealed to a storage generation no longer
 * current, and the unique indexes refuse a key archived meanwhile by
 * another importer.  The first two end in BUSY and the batch is sealed
 * again; the third in ARCHIVED, and then the batch's keys go one by one
 * through esc_archive_key, which names the record each duplicates.
 *
 * The transaction begins holding the audit lock for the session
 * (esc_store_audit_lock), so its snapshot sees the audit chain's end as
 * the last appender committed it: concurrent importers take turns for a
 * few milliseconds per batch instead of failing each other's chain links.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11escrow/archive.h>
#include <p11escrow/audit.h>
#include <p11escrow/ca.h>

#include "archive_internal.h"
#include "internal.h"
#include "store_internal.h"

/* One key on its way. */
struct slot {
	char *serial; /* for its audit event (esc_cert_serial_hex) */
	struct esc_archive_fields f;
	struct esc_kra_set ks;
	struct esc_archive_new n;
	char ktype[16];
	int write; /* sealed, to be written */
};

static int
fatal(enum esc_err r)
{
	return r == ESC_ERR_DB || r == ESC_ERR_DB_CONNECT || r == ESC_ERR_BUSY || r == ESC_ERR_NOMEM ||
	       r == ESC_ERR_SCHEMA_OLD;
}

/*
 * What every key shares, in one statement: the CA and policy every check
 * needs (refused for all keys when missing), then what sealing needs,
 * whose refusal is each key's (e->wrap_err).
 */
static enum esc_err
env_load(struct esc_ctx *ctx, struct esc_store *st, struct esc_archive_env *e)
{
	enum esc_err r;

	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = esc_archive_env_load(ctx, st, NULL, 0, e)) != ESC_OK)
		return r;
	if (e->ca == NULL)
		return esc_error(ctx, e->ca_err, "%s", e->ca_msg);
	if (e->allow_foreign < 0)
		return esc_error(ctx, ESC_ERR_NOT_FOUND, "policy '%s' is not set", "allow_foreign_issuers");
	return ESC_OK;
}

static void
refuse(struct esc_ctx *ctx, struct esc_archive_item *it, enum esc_err r, const char *msg)
{
	it->result = r;
	snprintf(it->reason, sizeof(it->reason), "%s", msg != NULL && *msg ? msg : esc_strerror(r));
	esc_ctx_clear_error(ctx);
}

/* The duplicate check of every key still in the batch, one statement. */
static enum esc_err
check_archived(struct esc_ctx *ctx, struct esc_store *st, struct esc_archive_item *items, struct slot *s, size_t n)
{
	PGresult *res = NULL;
	char *certs = NULL, *keys = NULL;
	const char *v[2];
	size_t i, co = 0, ko = 0;
	int row;
	enum esc_err r;

	if ((certs = malloc(n * 68 + 3)) == NULL || (keys = malloc(n * 68 + 3)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	co = (size_t)sprintf(certs, "{");
	ko = (size_t)sprintf(keys, "{");
	for (i = 0; i < n; i++)
		if (items[i].result == ESC_OK) {
			/* Hex digests: nothing to quote.  A key that did not decode has "", which matches no row. */
			co += (size_t)sprintf(certs + co, "%s\"%s\"", co > 1 ? "," : "", s[i].f.cert_sha256);
			ko += (size_t)sprintf(keys + ko, "%s\"%s\"", ko > 1 ? "," : "", s[i].f.public_key_sha256);
		}
	sprintf(certs + co, "}");
	sprintf(keys + ko, "}");
	v[0] = certs;
	v[1] = keys;
	if ((r = esc_store_exec(ctx, st,
				"SELECT id, cert_sha256, public_key_sha256 FROM archive_records WHERE cert_sha256 = "
				"ANY($1::text[]) OR public_key_sha256 = ANY($2::text[])",
				2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	for (i = 0; i < n; i++) {
		const char *same = NULL, *id = NULL;

		for (row = 0; items[i].result == ESC_OK && row < PQntuples(res) && same == NULL; row++)
			if (strcmp(PQgetvalue(res, row, 1), s[i].f.cert_sha256) == 0)
				same = "certificate", id = PQgetvalue(res, row, 0);
		for (row = 0; items[i].result == ESC_OK && row < PQntuples(res) && same == NULL; row++)
			if (strcmp(PQgetvalue(res, row, 2), s[i].f.public_key_sha256) == 0)
				same = "key", id = PQgetvalue(res, row, 0);
		if (same != NULL) {
			(void)esc_error(ctx, ESC_ERR_ARCHIVED, "already archived as record %s (same %s)", id, same);
			refuse(ctx, &items[i], ESC_ERR_ARCHIVED, esc_ctx_errmsg(ctx));
		}
	}
	r = ESC_OK;
out:
	PQclear(res);
	free(certs);
	free(keys);
	return r;
}

/* Is key i a duplicate of one sealed earlier in this batch?  Refused then, as the database would. */
static int
dup_in_batch(struct esc_ctx *ctx, struct esc_archive_item *items, struct slot *s, size_t i)
{
	size_t j;

	for (j = 0; j < i; j++) {
		const char *same = NULL;

		if (!s[j].write)
			continue;
		if (strcmp(s[j].f.cert_sha256, s[i].f.cert_sha256) == 0)
			same = "certificate";
		else if (s[i].f.public_key_sha256[0] != '\0' &&
			 strcmp(s[j].f.public_key_sha256, s[i].f.public_key_sha256) == 0)
			same = "key";
		if (same != NULL) {
			(void)esc_error(ctx, ESC_ERR_ARCHIVED, "already archived as record %s (same %s)", s[j].n.id,
					same);
			refuse(ctx, &items[i], ESC_ERR_ARCHIVED, esc_ctx_errmsg(ctx));
			return 1;
		}
	}
	return 0;
}

/* Do the KRA rows read FOR SHARE now equal those the records were sealed to? */
static int
same_kras(const PGresult *a, const PGresult *b, int bfirst)
{
	int i, c;

	if (PQntuples(a) != PQntuples(b) - bfirst)
		return 0;
	for (i = 0; i < PQntuples(a); i++)
		for (c = 0; c < 4; c++)
			if (strcmp(PQgetvalue(a, i, c), PQgetvalue(b, i + bfirst, c)) != 0)
				return 0;
	return 1;
}

/* Write the sealed records and every key's audit event, in one transaction begun under the audit lock. */
static enum esc_err
write_batch(struct esc_ctx *ctx, struct esc_store *st, const char *actor, const struct esc_archive_env *e,
	    struct esc_archive_item *items, struct slot *s, size_t n)
{
	struct esc_archive_new *rows = NULL;
	struct esc_audit_event *ev = NULL;
	char(*details)[200] = NULL;
	PGresult *now = NULL;
	size_t i, nrows = 0;
	enum esc_err r;

	if ((rows = calloc(n, sizeof(*rows))) == NULL || (ev = calloc(n, sizeof(*ev))) == NULL ||
	    (details = calloc(n, sizeof(*details))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (s[i].write) {
			rows[nrows++] = s[i].n;
			esc_archive_event(&s[i].n, actor, details[i], sizeof(details[i]), &ev[i]);
		} else {
			/* As esc_archive_key audits a refusal (esc_audit_outcome). */
			ev[i].actor = actor;
			ev[i].role = "";
			ev[i].action = "archive.store";
			ev[i].object = s[i].serial != NULL ? s[i].serial : "?";
			ev[i].outcome = esc_audit_outcome_word(items[i].result);
			ev[i].details = items[i].reason;
		}
	}
	if ((r = esc_store_audit_lock(ctx, st, 1)) != ESC_OK)
		goto out;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		goto unlock;
	if (nrows > 0) {
		if ((r = esc_archive_kras_query(ctx, st, &now)) != ESC_OK)
			goto unlock;
		if (!same_kras(now, e->res, 1)) {
			r = esc_error(ctx, ESC_ERR_BUSY, "the KRAs changed while the batch was sealed");
			goto unlock;
		}
	}
	if ((r = esc_archive_insert_rows(ctx, st, rows, nrows, 0, NULL)) != ESC_OK ||
	    (r = esc_audit_append_many(ctx, st, ev, n)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto unlock;
	r = ESC_OK;
unlock:
	esc_store_rollback(st);
	if (!esc_store_commit_unknown(st)) {
		char saved[ESC_ERRMSG_MAX];

		snprintf(saved, sizeof(saved), "%s", esc_ctx_errmsg(ctx));
		(void)esc_store_audit_lock(ctx, st, 0);
		if (r != ESC_OK)
			(void)esc_error(ctx, r, "%s", saved);
		else
			esc_ctx_clear_error(ctx);
	}
out:
	PQclear(now);
	free(rows);
	free(ev);
	free(details);
	return r;
}

static void
slots_clear(struct slot *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free(s[i].serial);
		esc_archive_fields_clear(&s[i].f);
		esc_kra_set_clear(&s[i].ks);
		esc_archive_new_clear(&s[i].n);
		memset(&s[i], 0, sizeof(s[i]));
	}
}

/* One attempt: check, seal, write.  Items' results are set only when it returns OK. */
static enum esc_err
batch_once(struct esc_ctx *ctx, struct esc_store *st, const char *actor, enum esc_archive_source source,
	   struct esc_archive_item *items, struct slot *s, size_t n)
{
	struct esc_archive_env e;
	size_t i;
	int foreign;
	enum esc_err r;

	memset(&e, 0, sizeof(e));
	for (i = 0; i < n; i++) {
		items[i].result = ESC_OK;
		items[i].reason[0] = '\0';
		memset(&items[i].info, 0, sizeof(items[i].info));
	}
	if ((r = env_load(ctx, st, &e)) != ESC_OK)
		goto out;
	for (i = 0; i < n; i++) {
		foreign = 0;
		esc_ctx_clear_error(ctx);
		if ((s[i].serial = esc_cert_serial_hex(items[i].cert)) == NULL) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		if ((r = esc_archive_check_key(ctx, items[i].cert, items[i].key, s[i].ktype, sizeof(s[i].ktype))) !=
			    ESC_OK ||
		    (r = esc_archive_env_issuer(ctx, &e, items[i].cert, &foreign)) != ESC_OK ||
		    (r = esc_archive_fields_of(ctx, items[i].cert, &s[i].f)) != ESC_OK) {
			if (fatal(r))
				goto out;
			refuse(ctx, &items[i], r, esc_ctx_errmsg(ctx));
			continue;
		}
		s[i].n.foreign = foreign;
	}
	if ((r = check_archived(ctx, st, items, s, n)) != ESC_OK)
		goto out;
	for (i = 0; i < n; i++) {
		struct esc_archive_new *w = &s[i].n;

		if (items[i].result != ESC_OK || dup_in_batch(ctx, items, s, i))
			continue;
		if (e.wrap_err != ESC_OK) {
			refuse(ctx, &items[i], e.wrap_err, e.wrap_msg);
			continue;
		}
		w->f = &s[i].f;
		w->key_type = s[i].ktype;
		w->source = source;
		w->generation = e.generation;
		w->ks = &s[i].ks;
		w->k = e.k;
		if ((w->clen = i2d_X509(items[i].cert, &w->cder)) <= 0) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		if ((r = esc_archive_kras_pick(ctx, st, e.res, 1, e.set_size, NULL, 0, &s[i].ks)) != ESC_OK ||
		    (r = esc_archive_seal_record(ctx, w, items[i].key, e.storage)) != ESC_OK) {
			if (fatal(r))
				goto out;
			refuse(ctx, &items[i], r, esc_ctx_errmsg(ctx));
			continue;
		}
		s[i].write = 1;
	}
	if ((r = write_batch(ctx, st, actor, &e, items, s, n)) != ESC_OK)
		goto out;
	for (i = 0; i < n; i++)
		if (s[i].write)
			esc_archive_info_of(&s[i].n, &items[i].info);
	r = ESC_OK;
out:
	esc_archive_env_clear(&e);
	slots_clear(s, n);
	return r;
}

enum esc_err
esc_archive_keys(struct esc_ctx *ctx, struct esc_store *st, const char *actor, enum esc_archive_source source,
		 struct esc_archive_item *items, size_t n)
{
	struct slot *s = NULL;
	size_t i;
	int attempt;
	enum esc_err r;

	if (actor == NULL || *actor == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "archival needs an actor for the audit trail");
	if (n > ESC_ARCHIVE_KEYS_MAX || esc_store_in_tx(st))
		return esc_error(ctx, ESC_ERR_USAGE, "a batch is at most %d keys, in no open transaction",
				 ESC_ARCHIVE_KEYS_MAX);
	if (n == 0)
		return ESC_OK;
	if ((s = calloc(n, sizeof(*s))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	for (attempt = 1;; attempt++) {
		r = batch_once(ctx, st, actor, source, items, s, n);
		if (r != ESC_ERR_BUSY || attempt >= ESC_STORE_TX_ATTEMPTS)
			break;
		{
			/* 0..(2^attempt) ms: concurrent losers do not come back in step. */
			unsigned char rnd = 0;
			struct timespec pause = {0, 0};

			if (RAND_bytes(&rnd, 1) != 1)
				rnd = 0;
			pause.tv_nsec = (long)(rnd % (1u << attempt)) * 1000000L;
			nanosleep(&pause, NULL);
		}
	}
	if (r == ESC_ERR_ARCHIVED || r == ESC_ERR_BUSY) {
		/* Lost to another importer of the same key, or to writers again and again: key by key. */
		for (i = 0; i < n; i++) {
			esc_ctx_clear_error(ctx);
			items[i].result =
				esc_archive_key(ctx, st, actor, items[i].cert, items[i].key, source, &items[i].info);
			if (items[i].result != ESC_OK)
				snprintf(items[i].reason, sizeof(items[i].reason), "%s",
					 *esc_ctx_errmsg(ctx) ? esc_ctx_errmsg(ctx) : esc_strerror(items[i].result));
			if (items[i].result == ESC_ERR_DB_CONNECT) {
				/* The ones before are decided; the rest are not attempted. */
				for (i++; i < n; i++) {
					items[i].result = ESC_ERR_DB_CONNECT;
					snprintf(items[i].reason, sizeof(items[i].reason), "%s", items[i - 1].reason);
				}
				free(s);
				return ESC_ERR_DB_CONNECT;
			}
		}
		esc_ctx_clear_error(ctx);
		r = ESC_OK;
	}
	if (r != ESC_OK) {
		/* Nothing of the batch is archived (or, after a lost COMMIT, nothing is known): each key says why. */
		for (i = 0; i < n; i++)
			if (items[i].result == ESC_OK || r == ESC_ERR_DB_CONNECT) {
				items[i].result = r;
				snprintf(items[i].reason, sizeof(items[i].reason), "%s",
					 *esc_ctx_errmsg(ctx) ? esc_ctx_errmsg(ctx) : esc_strerror(r));
			}
	}
	free(s);
	return r;
}
