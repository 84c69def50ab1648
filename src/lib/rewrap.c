/*
 * Re-wrap of the KRA layer (rewrap.h): which records, the job and its
 * cards, one batch.
 *
 * The batch follows esc_storage_reseal_batch: rows picked in id order FOR
 * UPDATE SKIP LOCKED, each re-wrapped or skipped, one short READ COMMITTED
 * transaction and one audit event per batch.  What archival seals with —
 * the set drawn, the threshold, the inner layer, the KRA set rows — is
 * archive.c's own code (archive_internal.h), so a re-wrapped record is
 * exactly what archival would write for the same key today.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/envelope.h>
#include <p11escrow/rewrap.h>

#include "archive_internal.h"
#include "internal.h"
#include "shamir_internal.h"
#include "store_internal.h"

#define MAX_CARDS ESC_KRA_SET_MAX
#define CARD_CERTS 8  /* a KRA's certificate and the earlier ones of its key (renewals) a card is tried with */
#define MAX_KRAS 1024 /* KRAs a database holds, retired ones included */
#define ACTION "rewrap.kra"

/* A card the job was given: the KRA's key on it and the certificates records may name it by. */
struct card {
	const struct esc_account *account;
	long long kra_id;
	char kra[65];
	EVP_PKEY *key;
	X509 *certs[CARD_CERTS]; /* the current certificate first */
	unsigned char sha[CARD_CERTS][32];
	size_t ncerts;
	int used; /* opened a record in this batch */
};

struct esc_rewrap_job {
	struct esc_ctx *ctx;
	struct esc_store *st;
	const struct esc_account *admin;
	struct esc_token *ca_tok;
	struct card cards[MAX_CARDS];
	size_t ncards;
	/* Per batch. */
	X509 *storage;
	int generation;
	long fault_hits; /* test builds: times the fault point was reached */
};

/*
 * Fault injection for the tests (rewrap_kra.sh), only in builds configured
 * with -Dtest_hooks=true, as storage.c's: P11ESCROW_FAULT_KILL names a
 * point where the process SIGKILLs itself ("rewrap-kra-before-commit":
 * inside a batch's transaction, every row of the batch rewritten), the
 * first time or, with P11ESCROW_FAULT_KILL_SKIP=N, the N+1st time it is
 * reached (so that N batches have committed).
 */
#ifdef ESC_TEST_HOOKS
static void
fault_kill(struct esc_rewrap_job *j, const char *point)
{
	const char *f = getenv("P11ESCROW_FAULT_KILL"), *skip = getenv("P11ESCROW_FAULT_KILL_SKIP");

	if (f != NULL && strcmp(f, point) == 0 && j->fault_hits++ >= (skip != NULL ? strtol(skip, NULL, 10) : 0))
		raise(SIGKILL);
}
#else
static void
fault_kill(struct esc_rewrap_job *j, const char *point)
{
	(void)j;
	(void)point;
}
#endif

/* The KRAs as a plan or batch sees them: ids by state, as PostgreSQL arrays ("{1,2}"). */
struct kra_state {
	char valid[MAX_KRAS * 21 + 3], retired[MAX_KRAS * 21 + 3], revoked[MAX_KRAS * 21 + 3],
		expired[MAX_KRAS * 21 + 3];
	int usable;
};

const char *
esc_rewrap_reason_name(enum esc_rewrap_reason r)
{
	static const char *const names[ESC_REWRAP_NREASONS] = {
		"retired KRA", "revoked KRA certificate", "expired KRA certificate", "set size",
		"threshold",   "recipient form",
	};

	return (unsigned)r < ESC_REWRAP_NREASONS ? names[r] : "?";
}

static void
append_id(char *arr, size_t len, const char *id)
{
	size_t used = strlen(arr);

	snprintf(arr + used, len - used, "%s%s", used > 1 ? "," : "", id);
}

/* Every KRA, sorted into valid (a new set may hold it) and the reasons one is not. */
static enum esc_err
load_kras(struct esc_ctx *ctx, struct esc_store *st, struct kra_state *ks)
{
	PGresult *res = NULL;
	int i, rows;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st,
				"SELECT k.id, k.state, k.certificate, EXISTS (SELECT 1 FROM revocations v WHERE v.own "
				"AND ltrim(v.serial, '0') = ltrim(k.cert_serial, '0')) FROM kras k ORDER BY k.id",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if (rows > MAX_KRAS) {
		r = esc_error(ctx, ESC_ERR_STATE, "more than %d KRAs are recorded", MAX_KRAS);
		goto out;
	}
	snprintf(ks->valid, sizeof(ks->valid), "{");
	snprintf(ks->retired, sizeof(ks->retired), "{");
	snprintf(ks->revoked, sizeof(ks->revoked), "{");
	snprintf(ks->expired, sizeof(ks->expired), "{");
	ks->usable = 0;
	for (i = 0; i < rows; i++) {
		const char *id = PQgetvalue(res, i, 0);
		X509 *x = esc_store_cert_cached(st, PQgetvalue(res, i, 2));
		int retired = strcmp(PQgetvalue(res, i, 1), "active") != 0;
		int revoked = strcmp(PQgetvalue(res, i, 3), "t") == 0;
		int expired;

		if (x == NULL) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "KRA %s has an unreadable certificate", id);
			goto out;
		}
		expired = X509_cmp_current_time(X509_get0_notAfter(x)) <= 0;
		X509_free(x);
		if (retired)
			append_id(ks->retired, sizeof(ks->retired), id);
		if (revoked)
			append_id(ks->revoked, sizeof(ks->revoked), id);
		if (expired)
			append_id(ks->expired, sizeof(ks->expired), id);
		if (!retired && !revoked && !expired) {
			append_id(ks->valid, sizeof(ks->valid), id);
			ks->usable++;
		}
	}
	strcat(ks->valid, "}");
	strcat(ks->retired, "}");
	strcat(ks->revoked, "}");
	strcat(ks->expired, "}");
	r = ESC_OK;
out:
	ERR_clear_error();
	PQclear(res);
	return r;
}

/* Policy kra_set_size and kra_threshold, as text for the queries and as numbers. */
static enum esc_err
load_policy(struct esc_ctx *ctx, struct esc_store *st, char size[8], char k[8], int *nsize, unsigned *nk)
{
	char *v = NULL;
	enum esc_err r;

	if ((r = esc_store_policy(ctx, st, "kra_set_size", &v)) != ESC_OK)
		return r;
	*nsize = (int)strtol(v, NULL, 10);
	free(v);
	v = NULL;
	if ((r = esc_store_policy(ctx, st, "kra_threshold", &v)) != ESC_OK)
		return r;
	*nk = (unsigned)strtoul(v, NULL, 10);
	free(v);
	if (*nsize < 1 || *nsize > ESC_KRA_SET_MAX || *nk < 1 || *nk > (unsigned)*nsize)
		return esc_error(ctx, ESC_ERR_CONFIG,
				 "policy kra_set_size (%d) and kra_threshold (%u) are out of range", *nsize, *nk);
	snprintf(size, 8, "%d", *nsize);
	snprintf(k, 8, "%u", *nk);
	return ESC_OK;
}

/*
 * Is record a's KRA layer not what policy would write?  $1 kra_set_size,
 * $2 kra_threshold, $3 the valid KRAs' ids.  wrap_version is the record's
 * threshold (archival and re-wrap write it; 1 for version 1).
 */
#define NEEDS_SQL                                                                                                     \
	"(a.wrap_version <> $2::integer OR (SELECT count(*) FROM archive_record_kras x WHERE x.record_id = a.id) <> " \
	"$1::integer OR EXISTS (SELECT 1 FROM archive_record_kras x JOIN kras k ON k.id = x.kra_id WHERE "            \
	"x.record_id = a.id AND (x.kra_id <> ALL ($3::bigint[]) OR x.recipient <> k.recipient)))"

enum esc_err
esc_rewrap_kra_plan(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by,
		    struct esc_rewrap_plan *out)
{
	struct kra_state *ks = NULL;
	struct esc_rewrap_plan p;
	PGresult *res = NULL;
	char size[8], k[8];
	const char *v[6];
	int i;
	enum esc_err r;

	memset(&p, 0, sizeof(p));
	if ((r = esc_account_require(ctx, by, ESC_ROLE_ADMIN)) != ESC_OK) {
		esc_audit_outcome_by(ctx, st, by, ACTION, "plan", r);
		return r;
	}
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK || (r = load_kras(ctx, st, ks)) != ESC_OK ||
	    (r = load_policy(ctx, st, size, k, &p.set_size, &p.threshold)) != ESC_OK)
		goto out;
	v[0] = size;
	v[1] = k;
	v[2] = ks->valid;
	v[3] = ks->retired;
	v[4] = ks->revoked;
	v[5] = ks->expired;
	/* One pass over the records; the same rule as a batch's (NEEDS_SQL), split by reason. */
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT count(*), count(*) FILTER (WHERE s.needs), count(*) FILTER (WHERE s.retired), count(*) "
		     "FILTER (WHERE s.revoked), count(*) FILTER (WHERE s.expired), count(*) FILTER (WHERE s.size), "
		     "count(*) FILTER (WHERE s.threshold), count(*) FILTER (WHERE s.recipient) FROM (SELECT " NEEDS_SQL
		     " AS needs, EXISTS (SELECT 1 FROM archive_record_kras x WHERE x.record_id = a.id AND x.kra_id = "
		     "ANY ($4::bigint[])) AS retired, EXISTS (SELECT 1 FROM archive_record_kras x WHERE x.record_id = "
		     "a.id AND x.kra_id = ANY ($5::bigint[])) AS revoked, EXISTS (SELECT 1 FROM archive_record_kras x "
		     "WHERE x.record_id = a.id AND x.kra_id = ANY ($6::bigint[])) AS expired, (SELECT count(*) FROM "
		     "archive_record_kras x WHERE x.record_id = a.id) <> $1::integer AS size, a.wrap_version <> "
		     "$2::integer AS threshold, EXISTS (SELECT 1 FROM archive_record_kras x JOIN kras k ON k.id = "
		     "x.kra_id WHERE x.record_id = a.id AND x.recipient <> k.recipient) AS recipient FROM "
		     "archive_records a) s",
		     6, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	p.records = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	p.needed = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	for (i = 0; i < ESC_REWRAP_NREASONS; i++)
		p.by_reason[i] = strtoll(PQgetvalue(res, 0, 2 + i), NULL, 10);
	p.usable = ks->usable;
	*out = p;
	r = ESC_OK;
out:
	PQclear(res);
	free(ks);
	return r;
}

/* ---- the job ---------------------------------------------------------------------------------------------------- */

enum esc_err
esc_rewrap_job_new(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin, struct esc_token *ca_tok,
		   struct esc_rewrap_job **out)
{
	struct esc_rewrap_job *j;
	enum esc_err r;

	if (st == NULL || ca_tok == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_rewrap_job_new: NULL argument");
	/* Never the CA token PIN alone: a re-wrap opens keys, so an administrator account answers for it. */
	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK) {
		esc_audit_outcome_by(ctx, st, admin, ACTION, "job", r);
		return r;
	}
	if ((j = calloc(1, sizeof(*j))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	j->ctx = ctx;
	j->st = st;
	j->admin = admin;
	j->ca_tok = ca_tok;
	*out = j;
	return ESC_OK;
}

/* Free what card c holds and empty it. */
static void
card_clear(struct card *c)
{
	size_t i;

	EVP_PKEY_free(c->key);
	for (i = 0; i < c->ncerts; i++)
		X509_free(c->certs[i]);
	memset(c, 0, sizeof(*c));
}

void
esc_rewrap_job_free(struct esc_rewrap_job *j)
{
	size_t i;

	if (j == NULL)
		return;
	for (i = 0; i < j->ncards; i++)
		card_clear(&j->cards[i]);
	X509_free(j->storage);
	free(j);
}

/* A refused card (the error already set): audited against the KRA account that offered it. */
static enum esc_err
refused(struct esc_rewrap_job *j, const struct esc_account *kra, enum esc_err r)
{
	esc_audit_outcome_by(j->ctx, j->st, kra, ACTION, "card", r);
	return r;
}

/*
 * Dual control: kra is a KRA account with a KRA, not admin, and neither
 * its account nor its KRA is one of prev[0..n)'s: each card is another
 * person's.  Errors: DENIED (not audited here).
 */
static enum esc_err
check_kra(struct esc_ctx *ctx, const struct esc_account *admin, const struct esc_account *const *prev, size_t n,
	  const struct esc_account *kra)
{
	size_t i;
	enum esc_err r;

	if ((r = esc_account_require(ctx, kra, ESC_ROLE_KRA)) != ESC_OK)
		return r;
	if (esc_account_id(kra) == esc_account_id(admin))
		return esc_error(ctx, ESC_ERR_DENIED,
				 "account '%s' runs the job as administrator and cannot also be one of its KRAs",
				 esc_account_name(kra));
	for (i = 0; i < n; i++)
		if (esc_account_id(prev[i]) == esc_account_id(kra) ||
		    esc_account_kra_id(prev[i]) == esc_account_kra_id(kra))
			return esc_error(ctx, ESC_ERR_DENIED,
					 "account '%s' or its KRA is given twice: each card is another person's",
					 esc_account_name(kra));
	return ESC_OK;
}

/* The card's key of KRA c->kra (key_uri, the key of cert) into c->key: it must be cert's.  */
static enum esc_err
card_key(struct esc_ctx *ctx, struct card *c, struct esc_token *card, const char *key_uri, X509 *cert)
{
	struct esc_token_key *key = NULL;
	EVP_PKEY *pub = NULL;
	enum esc_err r;

	if ((r = esc_token_find_key(ctx, card, key_uri, &key)) != ESC_OK) {
		if (r == ESC_ERR_KEY_NOT_FOUND)
			r = esc_error(ctx, r, "card '%s' does not hold the key of KRA '%s'", esc_token_label(card),
				      c->kra);
		goto out;
	}
	if ((r = esc_token_key_public(ctx, card, key, &pub)) != ESC_OK)
		goto out;
	if (!esc_cert_matches_key(cert, pub)) {
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the key on card '%s' is not the key of KRA '%s''s certificate",
			      esc_token_label(card), c->kra);
		goto out;
	}
	r = esc_token_key_private(ctx, card, key, &c->key);
out:
	ERR_clear_error();
	EVP_PKEY_free(pub);
	esc_token_key_free(key);
	return r;
}

/* c->certs[0..ncerts): hash each (a version 2 share names its KRA by its certificate's hash). */
static enum esc_err
card_hashes(struct esc_ctx *ctx, struct card *c)
{
	unsigned int mdlen = 0;
	size_t i;

	for (i = 0; i < c->ncerts; i++)
		if (!X509_digest(c->certs[i], EVP_sha256(), c->sha[i], &mdlen))
			return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash a KRA certificate");
	return ESC_OK;
}

/* The KRA's certificate and the earlier ones of the same key (kra_certificates), into c. */
static enum esc_err
card_certs(struct esc_rewrap_job *j, struct card *c, X509 *current)
{
	PGresult *res = NULL;
	char kid[24];
	const char *v[1] = {kid};
	int i;
	enum esc_err r;

	X509_up_ref(current);
	c->certs[c->ncerts++] = current;
	snprintf(kid, sizeof(kid), "%lld", c->kra_id);
	if ((r = esc_store_exec(j->ctx, j->st,
				"SELECT certificate FROM kra_certificates WHERE kra_id = $1 ORDER BY replaced_at DESC",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	for (i = 0; i < PQntuples(res) && c->ncerts < CARD_CERTS; i++) {
		X509 *x = esc_store_cert_from_text(PQgetvalue(res, i, 0));

		/* Only a certificate of the card's key: the card must open what it names. */
		if (x != NULL && EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(current)) == 1)
			c->certs[c->ncerts++] = x;
		else
			X509_free(x);
	}
	r = card_hashes(j->ctx, c);
	ERR_clear_error();
	PQclear(res);
	return r;
}

enum esc_err
esc_rewrap_job_add_card(struct esc_ctx *ctx, struct esc_rewrap_job *j, const struct esc_account *kra,
			struct esc_token *card)
{
	PGresult *res = NULL;
	X509 *cert = NULL;
	struct card *c;
	char kid[24];
	const char *v[1] = {kid};
	size_t i;
	enum esc_err r;

	if (j == NULL || card == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_rewrap_job_add_card: NULL argument");
	{
		const struct esc_account *prev[MAX_CARDS];

		for (i = 0; i < j->ncards; i++)
			prev[i] = j->cards[i].account;
		if ((r = check_kra(ctx, j->admin, prev, j->ncards, kra)) != ESC_OK)
			return refused(j, kra, r);
	}
	if (j->ncards == MAX_CARDS)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap job takes at most %d cards", MAX_CARDS);
	c = &j->cards[j->ncards];
	memset(c, 0, sizeof(*c));
	c->account = kra;
	c->kra_id = esc_account_kra_id(kra);
	snprintf(kid, sizeof(kid), "%lld", c->kra_id);
	if ((r = esc_store_exec(ctx, j->st, "SELECT name, key_uri, certificate FROM kras WHERE id = $1", 1, v, NULL,
				NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "account '%s' names no KRA", esc_account_name(kra));
		goto out;
	}
	snprintf(c->kra, sizeof(c->kra), "%s", PQgetvalue(res, 0, 0));
	if ((cert = esc_store_cert_from_text(PQgetvalue(res, 0, 2))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "KRA '%s' has an unreadable certificate", c->kra);
		goto out;
	}
	if ((r = card_key(ctx, c, card, PQgetvalue(res, 0, 1), cert)) != ESC_OK ||
	    (r = card_certs(j, c, cert)) != ESC_OK)
		goto out;
	j->ncards++;
	r = ESC_OK;
out:
	if (r != ESC_OK)
		card_clear(c);
	ERR_clear_error();
	X509_free(cert);
	PQclear(res);
	return r;
}

/* "kra1 (account a1), kra2 (account a2)" for the cards marked (only: used in this batch), or all. */
static void
card_names(const struct esc_rewrap_job *j, int only_used, char *buf, size_t len)
{
	size_t i, used;

	buf[0] = '\0';
	for (i = 0; i < j->ncards; i++) {
		if (only_used && !j->cards[i].used)
			continue;
		used = strlen(buf);
		snprintf(buf + used, len - used, "%s%s (account %s)", used ? ", " : "", j->cards[i].kra,
			 esc_account_name(j->cards[i].account));
	}
	if (buf[0] == '\0')
		snprintf(buf, len, "none");
}

enum esc_err
esc_rewrap_job_event(struct esc_ctx *ctx, struct esc_rewrap_job *j, const char *what, const char *details)
{
	char roles[64], cards[1200], text[2048];
	struct esc_audit_event ev = {esc_account_name(j->admin), roles, ACTION, what, "ok", text};

	esc_roles_format(esc_account_roles(j->admin), roles, sizeof(roles));
	card_names(j, 0, cards, sizeof(cards));
	snprintf(text, sizeof(text), "%s; administrator %s, the cards of KRA(s) %s", details ? details : "",
		 esc_account_name(j->admin), cards);
	return esc_audit_append(ctx, j->st, &ev);
}

/* ---- one record ------------------------------------------------------------------------------------------------- */

/* A failure that is the record's (damaged, moved, of an unknown key), not the job's: skipped. */
static int
record_fault(enum esc_err e)
{
	return e == ESC_ERR_TAMPERED || e == ESC_ERR_NOT_RECIPIENT || e == ESC_ERR_BAD_INPUT || e == ESC_ERR_CRYPTO ||
	       e == ESC_ERR_KEY_NOT_FOUND || e == ESC_ERR_MISMATCH || e == ESC_ERR_CARDS_NEEDED;
}

/* Version 1: the first card given that the envelope names (by its certificate or an earlier one) opens it. */
static enum esc_err
open_v1(struct esc_rewrap_job *j, const char *id, const char *set, const unsigned char *inner, size_t innerlen,
	unsigned char **p8, size_t *p8len)
{
	size_t i, c;
	int yes = 0;
	enum esc_err r;

	for (i = 0; i < j->ncards; i++)
		for (c = 0; c < j->cards[i].ncerts; c++) {
			if ((r = esc_envelope_has_recipient(j->ctx, inner, innerlen, j->cards[i].certs[c], &yes)) !=
			    ESC_OK)
				return r;
			if (!yes)
				continue;
			if ((r = esc_envelope_open(j->ctx, inner, innerlen, j->cards[i].key, j->cards[i].certs[c], p8,
						   p8len)) == ESC_OK)
				j->cards[i].used = 1;
			return r;
		}
	return esc_error(j->ctx, ESC_ERR_CARDS_NEEDED, "record %s (version 1) needs the card of one of KRA(s) %s", id,
			 set);
}

/* Version 2: k shares, each opened on the card of the KRA it is sealed to, checked, then combined. */
static enum esc_err
open_v2(struct esc_rewrap_job *j, const char *id, const char *set, const struct esc_record_shares *sh,
	const unsigned char *inner, size_t innerlen, unsigned char **p8, size_t *p8len)
{
	unsigned char *buf = NULL, *shares[ESC_SHAMIR_MAX_SHARES], xs[ESC_SHAMIR_MAX_SHARES];
	int taken[MAX_CARDS] = {0};
	unsigned have = 0;
	size_t i, c, n;
	enum esc_err r;

	if ((buf = OPENSSL_secure_zalloc(sh->threshold * ESC_KEK_LEN)) == NULL)
		return esc_error(j->ctx, ESC_ERR_NOMEM, "out of memory");
	for (i = 0; i < sh->n && have < sh->threshold; i++) {
		const struct esc_record_share *e = &sh->share[i];
		struct card *found = NULL;

		/* A card serves one share of a record: the same KRA twice counts once. */
		for (c = 0; c < j->ncards && found == NULL; c++)
			for (n = 0; n < j->cards[c].ncerts && !taken[c]; n++)
				if (memcmp(j->cards[c].sha[n], e->kra_cert_sha256, 32) == 0) {
					found = &j->cards[c];
					taken[c] = 1;
					break;
				}
		if (found == NULL)
			continue;
		shares[have] = buf + have * ESC_KEK_LEN;
		xs[have] = (unsigned char)e->x;
		if ((r = esc_share_open(j->ctx, id, sh->threshold, e, found->key, found->certs[n], shares[have])) !=
		    ESC_OK)
			goto out;
		found->used = 1;
		have++;
	}
	if (have < sh->threshold) {
		r = esc_error(j->ctx, ESC_ERR_CARDS_NEEDED,
			      "record %s (version 2) needs the cards of %u of KRA(s) %s; %u of the cards given %s", id,
			      sh->threshold, set, have, have == 1 ? "is one of them" : "are among them");
		goto out;
	}
	r = esc_shares_open_inner(j->ctx, id, xs, shares, sh->threshold, inner, innerlen, p8, p8len);
out:
	OPENSSL_secure_clear_free(buf, sh->threshold * ESC_KEK_LEN);
	return r;
}

/* The record's PKCS#8 key must be its certificate's: nothing else is sealed again. */
static enum esc_err
check_key(struct esc_ctx *ctx, const char *id, X509 *cert, const unsigned char *p8, size_t p8len)
{
	PKCS8_PRIV_KEY_INFO *inf = NULL;
	EVP_PKEY *k = NULL;
	const unsigned char *p = p8;
	enum esc_err r = ESC_OK;

	if ((inf = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)p8len)) == NULL || (k = EVP_PKCS82PKEY(inf)) == NULL)
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s does not hold a private key", id);
	else if (EVP_PKEY_eq(X509_get0_pubkey(cert), k) != 1)
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the key in record %s does not match its certificate", id);
	ERR_clear_error();
	EVP_PKEY_free(k);
	PKCS8_PRIV_KEY_INFO_free(inf);
	return r;
}

/*
 * Open record id's key (its inner layer, and a version 2 record's shares
 * sh) with the job's cards and check it is its certificate's: *p8 in the
 * secure heap (esc_envelope_plain_free).  set: the names of its KRAs, for
 * the message when the cards cannot open it.
 */
static enum esc_err
open_key(struct esc_rewrap_job *j, const char *id, const char *set, X509 *cert, const unsigned char *inner,
	 size_t innerlen, const struct esc_record_shares *sh, unsigned char **p8, size_t *p8len)
{
	unsigned char *k = NULL;
	size_t klen = 0;
	enum esc_err r;

	if (sh == NULL)
		r = open_v1(j, id, set, inner, innerlen, &k, &klen);
	else
		r = open_v2(j, id, set, sh, inner, innerlen, &k, &klen);
	if (r == ESC_OK && (r = check_key(j->ctx, id, cert, k, klen)) == ESC_OK) {
		*p8 = k;
		*p8len = klen;
		return ESC_OK;
	}
	esc_envelope_plain_free(k, klen);
	return r;
}

/*
 * Seal key p8 of record id again to set ks at threshold k, as archival
 * would today: *content the new EscrowRecord, same id, same certificate
 * hash (OPENSSL_free).
 */
static enum esc_err
seal_key(struct esc_ctx *ctx, const char *id, const unsigned char cert_sha[32], const unsigned char *p8, size_t p8len,
	 const struct esc_kra_set *ks, unsigned k, unsigned char **content, int *contentlen)
{
	struct esc_record_shares *sh = NULL;
	unsigned char *inner = NULL;
	size_t innerlen = 0;
	enum esc_err r;

	if ((r = esc_archive_seal_inner(ctx, id, p8, p8len, ks, k, &inner, &innerlen, &sh)) == ESC_OK)
		r = esc_record_encode(ctx, id, cert_sha, inner, innerlen, sh, content, contentlen);
	esc_record_shares_free(sh);
	free(inner);
	return r;
}

/* Parse "1,2,3" into ids (at most max), appending to *n those not there yet. */
static void
parse_ids(const char *s, long long *ids, size_t *n, size_t max)
{
	char *end;
	size_t i;

	while (*s != '\0' && *n < max) {
		long long v = strtoll(s, &end, 10);
		int dup = 0;

		if (end == s)
			break;
		for (i = 0; i < *n; i++)
			dup |= ids[i] == v;
		if (!dup)
			ids[(*n)++] = v;
		s = *end == ',' ? end + 1 : end;
	}
}

/*
 * The members a record's new set keeps: of its set (set_ids, "1,2,3"),
 * those still valid (valid, "{1,2}") — first a KRA a pending or approved
 * recovery request names (req_ids), so that request is released against
 * the new wrap as it would have been against the old — into keep (room
 * for ESC_KRA_SET_MAX * 2); archival's draw adds the rest.
 */
static void
keep_members(const char *valid, const char *set_ids, const char *req_ids, long long *keep, size_t *nkeep)
{
	long long valids[MAX_KRAS];
	long long set[ESC_KRA_SET_MAX * 2], req[ESC_KRA_SET_MAX * 2];
	size_t nset = 0, nreq = 0, nvalid = 0, m, q;

	*nkeep = 0;
	parse_ids(valid + 1, valids, &nvalid, MAX_KRAS);
	parse_ids(set_ids, set, &nset, ESC_KRA_SET_MAX * 2);
	parse_ids(req_ids, req, &nreq, ESC_KRA_SET_MAX * 2);
	for (m = 0; m < nreq + nset && *nkeep < ESC_KRA_SET_MAX * 2; m++) {
		long long cand = m < nreq ? req[m] : set[m - nreq];
		int in_set = 0, ok = 0, dup = 0;

		for (q = 0; q < nset; q++)
			in_set |= set[q] == cand;
		for (q = 0; q < nvalid; q++)
			ok |= valids[q] == cand;
		for (q = 0; q < *nkeep; q++)
			dup |= keep[q] == cand;
		if (in_set && ok && !dup)
			keep[(*nkeep)++] = cand;
	}
}

/* Columns of a batch's rows: ESC_ARCHIVE_OPEN_SQL, then these. */
#define COL_SET_IDS ESC_ARCHIVE_OPEN_NCOLS
#define COL_SET_NAMES (ESC_ARCHIVE_OPEN_NCOLS + 1)
#define COL_REQUEST_KRAS (ESC_ARCHIVE_OPEN_NCOLS + 2)

/*
 * Re-wrap row i of res: ESC_OK, a record's fault (*skip says why; nothing
 * written) or the job's failure.
 */
static enum esc_err
rewrap_row(struct esc_rewrap_job *j, PGresult *res, int i, const char *valid, struct esc_reseal_skip *skip)
{
	struct esc_ctx *ctx = j->ctx;
	struct esc_archive_fields truth;
	struct esc_kra_set ks;
	struct esc_record_shares *sh = NULL;
	X509 *cert = NULL;
	unsigned char *inner = NULL, *p8 = NULL, *content = NULL, *outer = NULL;
	size_t innerlen = 0, p8len = 0, outerlen = 0, nkeep = 0;
	long long keep[ESC_KRA_SET_MAX * 2];
	const char *id = PQgetvalue(res, i, 2), *v[5];
	char gen[16], version[8], k_text[8];
	int contentlen = 0, len[5] = {0}, fmt[5] = {0};
	unsigned k = 1;
	PGresult *up = NULL;
	enum esc_err r;

	memset(&truth, 0, sizeof(truth));
	memset(&ks, 0, sizeof(ks));
	/* The checks of a recovery: the row is its certificate's, the sealed record this row's. */
	if ((r = esc_archive_open_row(ctx, j->st, j->ca_tok, res, i, &cert, &truth, &inner, &innerlen, &sh)) != ESC_OK)
		goto out;
	if ((r = open_key(j, id, PQgetvalue(res, i, COL_SET_NAMES), cert, inner, innerlen, sh, &p8, &p8len)) != ESC_OK)
		goto out;
	/*
	 * The new set keeps the record's members that are still valid — first a
	 * KRA a pending or approved recovery request names, so that request
	 * is released against the new wrap as it would have been against the
	 * old — and draws the rest as archival does.
	 */
	keep_members(valid, PQgetvalue(res, i, COL_SET_IDS), PQgetvalue(res, i, COL_REQUEST_KRAS), keep, &nkeep);
	if ((r = esc_archive_choose_kras(ctx, j->st, keep, nkeep, &ks)) != ESC_OK ||
	    (r = esc_archive_threshold(ctx, j->st, ks.n, &k)) != ESC_OK ||
	    (r = seal_key(ctx, id, truth.cert_sha256_raw, p8, p8len, &ks, k, &content, &contentlen)) != ESC_OK ||
	    (r = esc_envelope_seal(ctx, content, (size_t)contentlen, &j->storage, NULL, 1, &outer, &outerlen)) !=
		    ESC_OK)
		goto out;
	snprintf(gen, sizeof(gen), "%d", j->generation);
	snprintf(version, sizeof(version), "%d", k > 1 ? 2 : 1);
	snprintf(k_text, sizeof(k_text), "%u", k);
	v[0] = id;
	v[1] = (const char *)outer;
	len[1] = (int)outerlen;
	fmt[1] = 1;
	v[2] = gen;
	v[3] = version;
	v[4] = k_text;
	if ((r = esc_store_exec(ctx, j->st,
				"UPDATE archive_records SET record = $2, storage_generation = $3, record_version = $4, "
				"wrap_version = $5 WHERE id = $1::uuid",
				5, v, len, fmt, &up)) != ESC_OK)
		goto out;
	if (strcmp(PQcmdTuples(up), "1") != 0) {
		r = esc_error(ctx, ESC_ERR_INTERNAL, "record %s changed under its row lock", id);
		goto out;
	}
	if ((r = esc_store_exec(ctx, j->st, "DELETE FROM archive_record_kras WHERE record_id = $1::uuid", 1, v, NULL,
				NULL, NULL)) != ESC_OK ||
	    (r = esc_archive_insert_kras(ctx, j->st, id, &ks)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	if (r != ESC_OK && record_fault(r)) {
		snprintf(skip->id, sizeof(skip->id), "%s", id);
		skip->code = r;
		snprintf(skip->reason, sizeof(skip->reason), "%s", esc_ctx_errmsg(ctx));
	}
	ERR_clear_error();
	PQclear(up);
	esc_envelope_plain_free(p8, p8len);
	esc_kra_set_clear(&ks);
	esc_record_shares_free(sh);
	esc_archive_fields_clear(&truth);
	X509_free(cert);
	free(inner);
	OPENSSL_free(content);
	free(outer);
	return r;
}

/* ---- one batch -------------------------------------------------------------------------------------------------- */

/* The batch's audit events: one per skipped record, then the counts. */
static enum esc_err
audit_batch(struct esc_rewrap_job *j, const struct esc_reseal_batch *b, int size, unsigned k)
{
	char roles[64], details[1600], used[1200];
	const char *actor = esc_account_name(j->admin);
	size_t i, needed = 0;
	enum esc_err r;

	esc_roles_format(esc_account_roles(j->admin), roles, sizeof(roles));
	for (i = 0; i < b->skipped; i++) {
		struct esc_audit_event ev = {actor, roles, ACTION, b->skips[i].id, "refused", details};

		needed += b->skips[i].code == ESC_ERR_CARDS_NEEDED;
		snprintf(details, sizeof(details), "not re-wrapped, left as it was (%s): %s",
			 esc_strerror(b->skips[i].code), b->skips[i].reason);
		if ((r = esc_audit_append(j->ctx, j->st, &ev)) != ESC_OK)
			return r;
	}
	card_names(j, 1, used, sizeof(used));
	snprintf(details, sizeof(details),
		 "rewrapped %zu, skipped %zu (%zu need other cards, %zu damaged); opened with the cards of %s; "
		 "policy %d KRA(s), %u needed; outer layer to storage key generation %d",
		 b->resealed, b->skipped, needed, b->skipped - needed, used, size, k, j->generation);
	{
		struct esc_audit_event ev = {actor, roles, ACTION, "records", "ok", details};

		return esc_audit_append(j->ctx, j->st, &ev);
	}
}

static enum esc_err
batch_impl(struct esc_rewrap_job *j, struct kra_state *ks, const char *after, size_t n, struct esc_reseal_batch *out)
{
	struct esc_ctx *ctx = j->ctx;
	struct esc_reseal_batch b;
	PGresult *res = NULL;
	char size[8], k[8], lim[16];
	const char *v[5];
	int i, rows, nsize = 0;
	unsigned nk = 0;
	size_t c;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	for (c = 0; c < j->ncards; c++)
		j->cards[c].used = 0;
	X509_free(j->storage);
	j->storage = NULL;
	if ((r = esc_store_exec(ctx, j->st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) !=
	    ESC_OK)
		goto out;
	esc_store_mark_tx(j->st);
	if ((r = esc_storage_current(ctx, j->st, j->ca_tok, &j->storage, &j->generation)) != ESC_OK ||
	    (r = load_kras(ctx, j->st, ks)) != ESC_OK || (r = load_policy(ctx, j->st, size, k, &nsize, &nk)) != ESC_OK)
		goto out;
	snprintf(lim, sizeof(lim), "%zu", n);
	v[0] = size;
	v[1] = k;
	v[2] = ks->valid;
	v[3] = after;
	v[4] = lim;
	/* Rows another job holds are skipped, not waited for; only these rows are locked, never the table. */
	if ((r = esc_store_exec(
		     ctx, j->st,
		     "SELECT " ESC_ARCHIVE_OPEN_SQL ", array_to_string(ARRAY(SELECT x.kra_id FROM archive_record_kras "
		     "x WHERE x.record_id = a.id ORDER BY x.kra_id), ','), array_to_string(ARRAY(SELECT k.name FROM "
		     "archive_record_kras x JOIN kras k ON k.id = x.kra_id WHERE x.record_id = a.id ORDER BY k.name), "
		     "', '), array_to_string(ARRAY(SELECT r.kra_id FROM recovery_requests r WHERE r.record_id = a.id "
		     "AND r.state IN ('pending', 'approved') ORDER BY r.id), ',') FROM archive_records a WHERE a.id > "
		     "$4::uuid AND " NEEDS_SQL " ORDER BY a.id LIMIT $5 FOR UPDATE OF a SKIP LOCKED",
		     5, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	rows = PQntuples(res);
	if (rows > 0 && (b.skips = calloc((size_t)rows, sizeof(*b.skips))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		r = rewrap_row(j, res, i, ks->valid, &b.skips[b.skipped]);
		snprintf(b.last, sizeof(b.last), "%s", PQgetvalue(res, i, 2));
		if (r == ESC_OK)
			b.resealed++;
		else if (record_fault(r)) {
			b.skipped++;
			esc_ctx_clear_error(ctx);
		} else
			goto out;
	}
	b.to = b.from_low = b.from_high = j->generation;
	b.remaining = -1;
	if (rows > 0 && (r = audit_batch(j, &b, nsize, nk)) != ESC_OK)
		goto out;
	fault_kill(j, "rewrap-kra-before-commit");
	if ((r = esc_store_commit(ctx, j->st)) != ESC_OK)
		goto out;
	/* The end of this job's pass: how many records (all jobs) still need a re-wrap. */
	if ((size_t)rows < n) {
		PQclear(res);
		res = NULL;
		if ((r = esc_store_exec(ctx, j->st, "SELECT count(*) FROM archive_records a WHERE " NEEDS_SQL, 3, v,
					NULL, NULL, &res)) != ESC_OK)
			goto out;
		b.remaining = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	}
	*out = b;
	memset(&b, 0, sizeof(b)); /* transferred */
	r = ESC_OK;
out:
	esc_store_rollback(j->st);
	esc_reseal_batch_clear(&b);
	PQclear(res);
	return r;
}

enum esc_err
esc_rewrap_kra_batch(struct esc_ctx *ctx, struct esc_rewrap_job *j, const char *after, size_t n,
		     struct esc_reseal_batch *out)
{
	struct esc_store_retry t = {0};
	struct kra_state *ks = NULL;
	enum esc_err r;

	if (j == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_rewrap_kra_batch: NULL argument");
	if (after == NULL)
		after = "";
	if (n < 1 || n > ESC_RESEAL_BATCH_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap batch is 1..%d records", ESC_RESEAL_BATCH_MAX);
	if (!esc_archive_id_text_ok(after))
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap batch starts after a record id (a UUID in lower case)");
	if ((r = esc_store_check_schema(ctx, j->st)) != ESC_OK)
		return r;
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	do
		r = batch_impl(j, ks, *after ? after : "00000000-0000-0000-0000-000000000000", n, out);
	while (esc_store_retry(ctx, j->st, &t, &r));
	free(ks);
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, j->st, j->admin, ACTION, "records", r);
	return r;
}

/* ---- through the service ---------------------------------------------------------------------------------------- */

void
esc_rewrap_offer_clear(struct esc_rewrap_offer *o)
{
	size_t i;

	if (o == NULL)
		return;
	free(o->content);
	X509_free(o->cert);
	for (i = 0; i < o->n && i < ESC_REWRAP_SET_MAX; i++)
		X509_free(o->kra_certs[i]);
	memset(o, 0, sizeof(*o));
}

int
esc_rewrap_hash_parse(const char *text, size_t len, unsigned char out[32])
{
	size_t i;

	if (len != 64 || strspn(text, "0123456789abcdef") < 64)
		return -1;
	for (i = 0; i < 32; i++) {
		char two[3] = {text[2 * i], text[2 * i + 1], '\0'};

		out[i] = (unsigned char)strtoul(two, NULL, 16);
	}
	return 0;
}

void
esc_rewrap_hash_hex(const unsigned char in[32], char out[65])
{
	size_t i;

	for (i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", in[i]);
}

enum esc_err
esc_rewrap_open_record(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok,
		       const struct esc_account *by, const char *id, unsigned char **content, size_t *contentlen,
		       unsigned char sha[32])
{
	struct kra_state *ks = NULL;
	struct esc_archive_fields truth;
	struct esc_record_shares *sh = NULL;
	PGresult *res = NULL;
	unsigned char *inner = NULL, *c = NULL, digest[32];
	size_t innerlen = 0;
	char size[8], k[8];
	const char *v[4];
	int clen = 0, nsize = 0;
	unsigned nk = 0;
	enum esc_err r;

	memset(&truth, 0, sizeof(truth));
	if ((r = esc_account_require(ctx, by, ESC_ROLE_ADMIN)) != ESC_OK) {
		esc_audit_outcome_by(ctx, st, by, ACTION, "open", r);
		return r;
	}
	if (id == NULL || *id == '\0' || !esc_archive_id_text_ok(id))
		return esc_error(ctx, ESC_ERR_USAGE, "a record id is a UUID in lower case");
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK || (r = load_kras(ctx, st, ks)) != ESC_OK ||
	    (r = load_policy(ctx, st, size, k, &nsize, &nk)) != ESC_OK)
		goto out;
	v[0] = size;
	v[1] = k;
	v[2] = ks->valid;
	v[3] = id;
	/* Only a record the re-wrap rule names: a record policy is content with is never opened this way. */
	if ((r = esc_store_exec(ctx, st,
				"SELECT " ESC_ARCHIVE_OPEN_SQL
				", encode(sha256(a.record), 'hex') FROM archive_records a "
				"WHERE a.id = $4::uuid AND " NEEDS_SQL,
				4, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_STATE, "record %s needs no re-wrap (or is not there)", id);
		goto out;
	}
	if (esc_rewrap_hash_parse(PQgetvalue(res, 0, ESC_ARCHIVE_OPEN_NCOLS),
				  strlen(PQgetvalue(res, 0, ESC_ARCHIVE_OPEN_NCOLS)), digest) != 0) {
		r = esc_error(ctx, ESC_ERR_DB, "the database answered an unreadable record hash");
		goto out;
	}
	if ((r = esc_archive_open_row(ctx, st, ca_tok, res, 0, NULL, &truth, &inner, &innerlen, &sh)) != ESC_OK ||
	    (r = esc_record_encode(ctx, id, truth.cert_sha256_raw, inner, innerlen, sh, &c, &clen)) != ESC_OK)
		goto out;
	if ((*content = malloc((size_t)clen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(*content, c, (size_t)clen);
	*contentlen = (size_t)clen;
	memcpy(sha, digest, 32);
	r = ESC_OK;
out:
	OPENSSL_free(c);
	free(inner);
	esc_record_shares_free(sh);
	esc_archive_fields_clear(&truth);
	PQclear(res);
	free(ks);
	return r;
}

enum esc_err
esc_rewrap_check_people(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
			const struct esc_account *const *kras, size_t n)
{
	size_t i;
	enum esc_err r;

	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK) {
		esc_audit_outcome_by(ctx, st, admin, ACTION, "job", r);
		return r;
	}
	if (n < 1 || n > MAX_CARDS)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap takes the cards of 1..%d KRA accounts", MAX_CARDS);
	for (i = 0; i < n; i++)
		if ((r = check_kra(ctx, admin, kras, i, kras[i])) != ESC_OK) {
			esc_audit_outcome_by(ctx, st, kras[i], ACTION, "card", r);
			return r;
		}
	return ESC_OK;
}

/* "{1,2,3}" of ids[0..n). */
static void
id_array(const long long *ids, size_t n, char *buf, size_t len)
{
	size_t i, used;

	snprintf(buf, len, "{");
	for (i = 0; i < n; i++) {
		used = strlen(buf);
		snprintf(buf + used, len - used, "%s%lld", i ? "," : "", ids[i]);
	}
	used = strlen(buf);
	snprintf(buf + used, len - used, "}");
}

enum esc_err
esc_rewrap_pick(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin, const long long *card_kras,
		size_t ncards, const char *after, size_t n, char (*ids)[ESC_RECORD_ID_LEN + 1], size_t *nids,
		struct esc_reseal_batch *out, int *end)
{
	struct kra_state *ks = NULL;
	struct esc_reseal_batch b;
	PGresult *res = NULL;
	char size[8], k[8], lim[16], cards[MAX_CARDS * 21 + 3], roles[64];
	const char *v[6];
	int i, rows, nsize = 0;
	unsigned nk = 0;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	*nids = 0;
	if (after == NULL || *after == '\0')
		after = "00000000-0000-0000-0000-000000000000";
	if (n < 1 || n > ESC_RESEAL_BATCH_MAX || ncards > MAX_CARDS || !esc_archive_id_text_ok(after))
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap batch is 1..%d records after a record id",
				 ESC_RESEAL_BATCH_MAX);
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK || (r = load_kras(ctx, st, ks)) != ESC_OK ||
	    (r = load_policy(ctx, st, size, k, &nsize, &nk)) != ESC_OK)
		goto out;
	id_array(card_kras, ncards, cards, sizeof(cards));
	snprintf(lim, sizeof(lim), "%zu", n);
	v[0] = size;
	v[1] = k;
	v[2] = ks->valid;
	v[3] = after;
	v[4] = lim;
	v[5] = cards;
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT a.id, a.record_version, a.wrap_version, (SELECT count(*) FROM archive_record_kras x WHERE "
		     "x.record_id = a.id AND x.kra_id = ANY ($6::bigint[])), array_to_string(ARRAY(SELECT k.name FROM "
		     "archive_record_kras x JOIN kras k ON k.id = x.kra_id WHERE x.record_id = a.id ORDER BY k.name), "
		     "', ') FROM archive_records a WHERE a.id > $4::uuid AND " NEEDS_SQL " ORDER BY a.id LIMIT $5",
		     6, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	rows = PQntuples(res);
	if (rows > 0 && (b.skips = calloc((size_t)rows, sizeof(*b.skips))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	esc_roles_format(esc_account_roles(admin), roles, sizeof(roles));
	for (i = 0; i < rows; i++) {
		const char *id = PQgetvalue(res, i, 0), *set = PQgetvalue(res, i, 4);
		long version = strtol(PQgetvalue(res, i, 1), NULL, 10);
		long need = version >= 2 ? strtol(PQgetvalue(res, i, 2), NULL, 10) : 1;
		long have = strtol(PQgetvalue(res, i, 3), NULL, 10);

		snprintf(b.last, sizeof(b.last), "%s", id);
		if (have >= need) {
			snprintf(ids[(*nids)++], ESC_RECORD_ID_LEN + 1, "%s", id);
			continue;
		}
		/* The cards present cannot open it: said as a local job says it, audited on its own. */
		{
			struct esc_reseal_skip *sk = &b.skips[b.skipped++];
			char details[400];
			struct esc_audit_event ev = {esc_account_name(admin), roles, ACTION, id, "refused", details};

			snprintf(sk->id, sizeof(sk->id), "%s", id);
			sk->code = ESC_ERR_CARDS_NEEDED;
			if (version >= 2)
				snprintf(sk->reason, sizeof(sk->reason),
					 "record %s (version 2) needs the cards of %ld of KRA(s) %s; %ld of the cards "
					 "given %s",
					 id, need, set, have, have == 1 ? "is one of them" : "are among them");
			else
				snprintf(sk->reason, sizeof(sk->reason),
					 "record %s (version 1) needs the card of one of KRA(s) %s", id, set);
			snprintf(details, sizeof(details), "not re-wrapped, left as it was (%s): %s",
				 esc_strerror(sk->code), sk->reason);
			if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
				goto out;
		}
	}
	b.remaining = -1;
	*end = (size_t)rows < n;
	*out = b;
	memset(&b, 0, sizeof(b)); /* transferred */
	r = ESC_OK;
out:
	esc_reseal_batch_clear(&b);
	PQclear(res);
	free(ks);
	return r;
}

/* Forget what the service chose for o (a retried transaction chooses again); keep its id, hash and record. */
static void
offer_reset(struct esc_rewrap_offer *o)
{
	size_t i;

	X509_free(o->cert);
	o->cert = NULL;
	for (i = 0; i < o->n && i < ESC_REWRAP_SET_MAX; i++)
		X509_free(o->kra_certs[i]);
	memset(o->kra_certs, 0, sizeof(o->kra_certs));
	o->n = 0;
	o->threshold = 0;
	o->old_set[0] = '\0';
}

/* The new set and threshold of record o->id, recorded as its offer (in the caller's transaction). */
static enum esc_err
offer_one(struct esc_ctx *ctx, struct esc_store *st, const char *by, const struct kra_state *ks,
	  struct esc_rewrap_offer *o)
{
	struct esc_kra_set set;
	PGresult *res = NULL;
	long long keep[ESC_KRA_SET_MAX * 2];
	size_t nkeep = 0, i;
	char hex[65], ids[ESC_KRA_SET_MAX * 21 + 3], kt[8];
	const char *v[5];
	unsigned k = 1;
	enum esc_err r;

	memset(&set, 0, sizeof(set));
	v[0] = o->id;
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT a.certificate, array_to_string(ARRAY(SELECT x.kra_id FROM archive_record_kras x "
		     "WHERE x.record_id = a.id ORDER BY x.kra_id), ','), array_to_string(ARRAY(SELECT r.kra_id "
		     "FROM recovery_requests r WHERE r.record_id = a.id AND r.state IN ('pending', 'approved') "
		     "ORDER BY r.id), ','), array_to_string(ARRAY(SELECT k.name FROM archive_record_kras x JOIN "
		     "kras k ON k.id = x.kra_id WHERE x.record_id = a.id ORDER BY k.name), ', ') FROM "
		     "archive_records a WHERE a.id = $1::uuid",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "record %s is not there", o->id);
		goto out;
	}
	if ((o->cert = esc_store_cert_from_text(PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "record %s has an unreadable certificate", o->id);
		goto out;
	}
	snprintf(o->old_set, sizeof(o->old_set), "%s", PQgetvalue(res, 0, 3));
	keep_members(ks->valid, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), keep, &nkeep);
	if ((r = esc_archive_choose_kras(ctx, st, keep, nkeep, &set)) != ESC_OK ||
	    (r = esc_archive_threshold(ctx, st, set.n, &k)) != ESC_OK)
		goto out;
	esc_rewrap_hash_hex(o->sha, hex);
	id_array(set.ids, set.n, ids, sizeof(ids));
	snprintf(kt, sizeof(kt), "%u", k);
	v[1] = hex;
	v[2] = ids;
	v[3] = kt;
	v[4] = by;
	/* A stale offer of the record (an earlier batch that never committed) is replaced. */
	if ((r = esc_store_exec(
		     ctx, st,
		     "INSERT INTO rewrap_offers (record_id, record_sha256, kra_ids, threshold, offered_by) "
		     "VALUES ($1::uuid, decode($2, 'hex'), $3::bigint[], $4::integer, $5::bigint) ON CONFLICT "
		     "(record_id) DO UPDATE SET record_sha256 = EXCLUDED.record_sha256, kra_ids = "
		     "EXCLUDED.kra_ids, threshold = EXCLUDED.threshold, offered_by = EXCLUDED.offered_by, "
		     "offered_at = now()",
		     5, v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	o->threshold = k;
	o->n = set.n;
	for (i = 0; i < set.n; i++) {
		o->kra_ids[i] = set.ids[i];
		snprintf(o->kra_names[i], sizeof(o->kra_names[i]), "%s", set.names[i]);
		snprintf(o->recipients[i], sizeof(o->recipients[i]), "%s", set.recipient[i]);
		o->kra_certs[i] = set.certs[i];
		set.certs[i] = NULL; /* transferred */
	}
	r = ESC_OK;
out:
	esc_kra_set_clear(&set);
	PQclear(res);
	return r;
}

/* Every offer of a batch in one short transaction: one commit, the KRAs read once. */
static enum esc_err
offers_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin, struct kra_state *ks,
	    struct esc_rewrap_offer *offers, size_t n)
{
	char by[24];
	size_t i;
	enum esc_err r;

	snprintf(by, sizeof(by), "%lld", esc_account_id(admin));
	for (i = 0; i < n; i++)
		offer_reset(&offers[i]);
	if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	esc_store_mark_tx(st);
	if ((r = load_kras(ctx, st, ks)) != ESC_OK)
		goto out;
	for (i = 0; i < n; i++)
		if ((r = offer_one(ctx, st, by, ks, &offers[i])) != ESC_OK)
			goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	return r;
}

enum esc_err
esc_rewrap_offers_make(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
		       struct esc_rewrap_offer *offers, size_t n)
{
	struct esc_store_retry t = {0};
	struct kra_state *ks = NULL;
	size_t i;
	enum esc_err r;

	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK)
		goto out;
	if (n == 0)
		return ESC_OK;
	if ((ks = calloc(1, sizeof(*ks))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	do
		r = offers_impl(ctx, st, admin, ks, offers, n);
	while (esc_store_retry(ctx, st, &t, &r));
	free(ks);
out:
	if (r != ESC_OK)
		for (i = 0; i < n; i++)
			esc_rewrap_offer_clear(&offers[i]);
	return r;
}

enum esc_err
esc_rewrap_job_new_remote(struct esc_ctx *ctx, struct esc_rewrap_job **out)
{
	struct esc_rewrap_job *j;

	if ((j = calloc(1, sizeof(*j))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	j->ctx = ctx;
	*out = j;
	return ESC_OK;
}

enum esc_err
esc_rewrap_job_add_remote_card(struct esc_ctx *ctx, struct esc_rewrap_job *j, long long kra_id, const char *kra,
			       const char *key_uri, X509 *const *certs, size_t n, struct esc_token *card)
{
	struct card *c;
	size_t i;
	enum esc_err r;

	if (j == NULL || card == NULL || kra == NULL || key_uri == NULL || certs == NULL || n < 1)
		return esc_error(ctx, ESC_ERR_USAGE, "a card is given with its KRA's name, key and certificate");
	if (j->ncards == MAX_CARDS)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap job takes at most %d cards", MAX_CARDS);
	for (i = 0; i < j->ncards; i++)
		if (j->cards[i].kra_id == kra_id)
			return esc_error(ctx, ESC_ERR_USAGE, "KRA '%s' is given twice", kra);
	c = &j->cards[j->ncards];
	memset(c, 0, sizeof(*c));
	c->kra_id = kra_id;
	snprintf(c->kra, sizeof(c->kra), "%s", kra);
	if ((r = card_key(ctx, c, card, key_uri, certs[0])) != ESC_OK)
		goto out;
	for (i = 0; i < n && c->ncerts < CARD_CERTS; i++)
		/* Only a certificate of the card's key: the card must open what it names. */
		if (i == 0 || EVP_PKEY_eq(X509_get0_pubkey(certs[i]), X509_get0_pubkey(certs[0])) == 1) {
			X509_up_ref(certs[i]);
			c->certs[c->ncerts++] = certs[i];
		}
	if ((r = card_hashes(ctx, c)) != ESC_OK)
		goto out;
	j->ncards++;
	r = ESC_OK;
out:
	if (r != ESC_OK)
		card_clear(c);
	ERR_clear_error();
	return r;
}

enum esc_err
esc_rewrap_offer_seal(struct esc_ctx *ctx, struct esc_rewrap_job *j, const struct esc_rewrap_offer *o,
		      unsigned char **content, size_t *contentlen)
{
	struct esc_kra_set ks;
	struct esc_record_shares *sh = NULL;
	unsigned char *inner = NULL, *p8 = NULL, *c = NULL, cert_sha[32];
	size_t innerlen = 0, p8len = 0, i;
	unsigned int mdlen = 0;
	char hex[65];
	int clen = 0;
	enum esc_err r;

	memset(&ks, 0, sizeof(ks));
	if (j == NULL || o == NULL || o->cert == NULL || o->n < 1 || o->n > ESC_REWRAP_SET_MAX || o->threshold < 1 ||
	    o->threshold > o->n)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap offer names a set of 1..%d KRAs and a threshold",
				 ESC_REWRAP_SET_MAX);
	if (!X509_digest(o->cert, EVP_sha256(), cert_sha, &mdlen))
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash record %s's certificate", o->id);
	esc_rewrap_hash_hex(cert_sha, hex);
	/* The record offered must be the row's: its id and its certificate, as a recovery checks. */
	if ((r = esc_record_parse(ctx, o->content, o->contentlen, o->id, hex, &inner, &innerlen, &sh)) != ESC_OK ||
	    (r = open_key(j, o->id, o->old_set, o->cert, inner, innerlen, sh, &p8, &p8len)) != ESC_OK)
		goto out;
	for (i = 0; i < o->n; i++) {
		ks.ids[i] = o->kra_ids[i];
		snprintf(ks.names[i], sizeof(ks.names[i]), "%s", o->kra_names[i]);
		snprintf(ks.recipient[i], sizeof(ks.recipient[i]), "%s", o->recipients[i]);
		X509_up_ref(o->kra_certs[i]);
		ks.certs[i] = o->kra_certs[i];
		ks.hashes[i] = esc_oaep_hash_of_recipient(o->recipients[i]);
		ks.n++;
	}
	if ((r = seal_key(ctx, o->id, cert_sha, p8, p8len, &ks, o->threshold, &c, &clen)) != ESC_OK)
		goto out;
	if ((*content = malloc((size_t)clen)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(*content, c, (size_t)clen);
	*contentlen = (size_t)clen;
	r = ESC_OK;
out:
	ERR_clear_error();
	esc_envelope_plain_free(p8, p8len);
	esc_kra_set_clear(&ks);
	esc_record_shares_free(sh);
	free(inner);
	OPENSSL_free(c);
	return r;
}

/*
 * Check item it against its offer: *stale when the offer is gone or the
 * record changed since (ESC_OK); NOT_RECIPIENT or TAMPERED when the new
 * record is not the row's or its inner layer not addressed to exactly the
 * offered set at the offered threshold (the service cannot open it: it
 * checks whom it is for, as a contribution's envelope is checked).
 */
static enum esc_err
check_item(struct esc_ctx *ctx, struct esc_store *st, const struct esc_rewrap_item *it, int *stale)
{
	struct esc_record_shares *sh = NULL;
	PGresult *res = NULL;
	X509 *certs[ESC_REWRAP_SET_MAX] = {NULL};
	unsigned char *inner = NULL, sha[ESC_REWRAP_SET_MAX][32];
	size_t innerlen = 0, n = 0, i, c;
	unsigned int mdlen = 0;
	char hex[65], names[ESC_REWRAP_SET_MAX * 70] = "";
	const char *v[2] = {it->id, hex};
	int used[ESC_REWRAP_SET_MAX] = {0}, yes = 0;
	unsigned k;
	enum esc_err r;

	*stale = 0;
	esc_rewrap_hash_hex(it->sha, hex);
	if ((r = esc_store_exec(ctx, st,
				"SELECT o.threshold, o.record_sha256 = decode($2, 'hex') AND sha256(a.record) = "
				"o.record_sha256, a.cert_sha256, k.certificate, k.name FROM rewrap_offers o JOIN "
				"archive_records a ON a.id = o.record_id JOIN kras k ON k.id = ANY (o.kra_ids) WHERE "
				"o.record_id = $1::uuid ORDER BY k.id",
				2, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) < 1 || PQntuples(res) > ESC_REWRAP_SET_MAX || strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
		*stale = 1;
		r = ESC_OK;
		goto out;
	}
	k = (unsigned)strtoul(PQgetvalue(res, 0, 0), NULL, 10);
	for (n = 0; n < (size_t)PQntuples(res); n++) {
		size_t used_len = strlen(names);

		if ((certs[n] = esc_store_cert_from_text(PQgetvalue(res, (int)n, 3))) == NULL ||
		    !X509_digest(certs[n], EVP_sha256(), sha[n], &mdlen)) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "KRA '%s' has an unreadable certificate",
				      PQgetvalue(res, (int)n, 4));
			goto out;
		}
		snprintf(names + used_len, sizeof(names) - used_len, "%s%s", n ? ", " : "", PQgetvalue(res, (int)n, 4));
	}
	if ((r = esc_record_parse(ctx, it->content, it->contentlen, it->id, PQgetvalue(res, 0, 2), &inner, &innerlen,
				  &sh)) != ESC_OK)
		goto out;
	if (k == 1) {
		if (sh == NULL && (r = esc_envelope_addressed_exactly(ctx, inner, innerlen, certs, n, &yes)) != ESC_OK)
			goto out;
	} else if (sh != NULL && sh->threshold == k && sh->n == n) {
		/* One share per KRA of the set, each sealed to that KRA alone. */
		yes = 1;
		for (i = 0; i < sh->n && yes; i++) {
			for (c = 0; c < n; c++)
				if (!used[c] && memcmp(sha[c], sh->share[i].kra_cert_sha256, 32) == 0)
					break;
			if (c == n) {
				yes = 0;
				break;
			}
			used[c] = 1;
			if ((r = esc_envelope_addressed_exactly(ctx, sh->share[i].sealed, sh->share[i].sealedlen,
								&certs[c], 1, &yes)) != ESC_OK)
				goto out;
		}
	}
	if (!yes) {
		r = esc_error(
			ctx, ESC_ERR_NOT_RECIPIENT,
			"record %s: the new KRA layer is not sealed to exactly the KRA set the service chose (%s, "
			"%u needed)",
			it->id, names, k);
		goto out;
	}
	r = ESC_OK;
out:
	ERR_clear_error();
	for (i = 0; i < ESC_REWRAP_SET_MAX; i++)
		X509_free(certs[i]);
	esc_record_shares_free(sh);
	free(inner);
	PQclear(res);
	return r;
}

/* "a1, a2": the KRA accounts whose cards a commit came with. */
static void
account_names(const struct esc_account *const *kras, size_t n, char *buf, size_t len)
{
	size_t i, used;

	buf[0] = '\0';
	for (i = 0; i < n; i++) {
		used = strlen(buf);
		snprintf(buf + used, len - used, "%s%s", i ? ", " : "", esc_account_name(kras[i]));
	}
}

static enum esc_err
commit_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
	    const struct esc_account *const *kras, size_t nkras, const struct esc_rewrap_item *items, size_t n,
	    struct esc_reseal_batch *out, size_t *stale)
{
	struct esc_reseal_batch b;
	X509 *storage = NULL;
	PGresult *res = NULL;
	unsigned char *outer = NULL;
	size_t outerlen = 0, i, nstale = 0;
	char gen[16], hex[65], roles[64], who[1200], details[1600];
	const char *actor = esc_account_name(admin);
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	esc_store_mark_tx(st);
	if ((r = esc_archive_current_storage(ctx, st, &storage, gen, sizeof(gen))) != ESC_OK)
		goto out;
	if (n > 0 && (b.skips = calloc(n, sizeof(*b.skips))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	esc_roles_format(esc_account_roles(admin), roles, sizeof(roles));
	for (i = 0; i < n; i++) {
		int is_stale = 0, len[4] = {0}, fmt[4] = {0};
		const char *v[4];

		if ((r = check_item(ctx, st, &items[i], &is_stale)) != ESC_OK) {
			struct esc_reseal_skip *sk = &b.skips[b.skipped];
			struct esc_audit_event ev = {actor, roles, ACTION, items[i].id, "refused", details};

			if (r != ESC_ERR_NOT_RECIPIENT && r != ESC_ERR_TAMPERED)
				goto out;
			snprintf(sk->id, sizeof(sk->id), "%s", items[i].id);
			sk->code = r;
			snprintf(sk->reason, sizeof(sk->reason), "%s", esc_ctx_errmsg(ctx));
			esc_ctx_clear_error(ctx);
			snprintf(details, sizeof(details),
				 "not re-wrapped, left as it was: the workstation's new KRA layer is refused (%s): %s",
				 esc_strerror(sk->code), sk->reason);
			b.skipped++;
			if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
				goto out;
			continue;
		}
		if (is_stale) {
			nstale++;
			continue;
		}
		free(outer);
		outer = NULL;
		PQclear(res);
		res = NULL;
		if ((r = esc_envelope_seal(ctx, items[i].content, items[i].contentlen, &storage, NULL, 1, &outer,
					   &outerlen)) != ESC_OK)
			goto out;
		esc_rewrap_hash_hex(items[i].sha, hex);
		v[0] = items[i].id;
		v[1] = hex;
		v[2] = (const char *)outer;
		len[2] = (int)outerlen;
		fmt[2] = 1;
		v[3] = gen;
		if ((r = esc_store_exec(ctx, st,
					"SELECT p11escrow_rewrap_kra($1::uuid, decode($2, 'hex'), $3, $4::integer)", 4,
					v, len, fmt, &res)) != ESC_OK)
			goto out;
		if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
			b.resealed++;
		else
			nstale++;
	}
	account_names(kras, nkras, who, sizeof(who));
	snprintf(details, sizeof(details),
		 "through the service: rewrapped %zu, changed since offered %zu (left for the next batch), refused "
		 "%zu; opened at the workstation with the cards of KRA account(s) %s; administrator %s; outer layer "
		 "to storage key generation %s",
		 b.resealed, nstale, b.skipped, who, actor, gen);
	{
		struct esc_audit_event ev = {actor, roles, ACTION, "records", "ok", details};

		if (n > 0 && (r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	if ((r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	b.to = b.from_low = b.from_high = (int)strtol(gen, NULL, 10);
	b.remaining = -1;
	*out = b;
	memset(&b, 0, sizeof(b)); /* transferred */
	*stale = nstale;
	r = ESC_OK;
out:
	esc_store_rollback(st);
	esc_reseal_batch_clear(&b);
	free(outer);
	X509_free(storage);
	PQclear(res);
	return r;
}

enum esc_err
esc_rewrap_commit(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *admin,
		  const struct esc_account *const *kras, size_t nkras, const struct esc_rewrap_item *items, size_t n,
		  int count, struct esc_reseal_batch *out, size_t *stale)
{
	struct esc_store_retry t = {0};
	struct kra_state *ks = NULL;
	PGresult *res = NULL;
	char size[8], k[8];
	const char *v[3];
	int nsize = 0;
	unsigned nk = 0;
	enum esc_err r;

	if (n > ESC_RESEAL_BATCH_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-wrap batch is at most %d records", ESC_RESEAL_BATCH_MAX);
	if ((r = esc_rewrap_check_people(ctx, st, admin, kras, nkras)) != ESC_OK ||
	    (r = esc_store_check_schema(ctx, st)) != ESC_OK)
		return r;
	do
		r = commit_impl(ctx, st, admin, kras, nkras, items, n, out, stale);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		esc_audit_outcome_by(ctx, st, admin, ACTION, "records", r);
		return r;
	}
	if (!count)
		return ESC_OK;
	/* The end of the workstation's pass: how many records (all jobs) still need a re-wrap. */
	if ((ks = calloc(1, sizeof(*ks))) == NULL)
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	else if ((r = load_kras(ctx, st, ks)) == ESC_OK && (r = load_policy(ctx, st, size, k, &nsize, &nk)) == ESC_OK) {
		v[0] = size;
		v[1] = k;
		v[2] = ks->valid;
		if ((r = esc_store_exec(ctx, st, "SELECT count(*) FROM archive_records a WHERE " NEEDS_SQL, 3, v, NULL,
					NULL, &res)) == ESC_OK)
			out->remaining = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	}
	if (r != ESC_OK)
		esc_reseal_batch_clear(out);
	PQclear(res);
	free(ks);
	return r;
}

void
esc_rewrap_card_info_clear(struct esc_rewrap_card_info *ci)
{
	size_t i;

	if (ci == NULL)
		return;
	for (i = 0; i < ci->ncerts; i++)
		X509_free(ci->certs[i]);
	memset(ci, 0, sizeof(*ci));
}

enum esc_err
esc_rewrap_card_info(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *kra,
		     struct esc_rewrap_card_info *out)
{
	struct esc_rewrap_card_info ci;
	PGresult *res = NULL;
	char kid[24];
	const char *v[1] = {kid};
	int i;
	enum esc_err r;

	memset(&ci, 0, sizeof(ci));
	snprintf(kid, sizeof(kid), "%lld", esc_account_kra_id(kra));
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT k.name, k.key_uri, k.certificate, 0, now() FROM kras k WHERE k.id = $1 UNION ALL "
		     "SELECT '', '', c.certificate, 1, c.replaced_at FROM kra_certificates c WHERE c.kra_id = $1 "
		     "ORDER BY 4, 5 DESC",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) < 1 || strcmp(PQgetvalue(res, 0, 3), "0") != 0) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "account '%s' names no KRA", esc_account_name(kra));
		goto out;
	}
	ci.kra_id = esc_account_kra_id(kra);
	snprintf(ci.kra, sizeof(ci.kra), "%s", PQgetvalue(res, 0, 0));
	snprintf(ci.key_uri, sizeof(ci.key_uri), "%s", PQgetvalue(res, 0, 1));
	for (i = 0; i < PQntuples(res) && ci.ncerts < 8; i++)
		if ((ci.certs[ci.ncerts] = esc_store_cert_from_text(PQgetvalue(res, i, 2))) != NULL)
			ci.ncerts++;
		else if (i == 0) {
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "KRA '%s' has an unreadable certificate", ci.kra);
			goto out;
		}
	*out = ci;
	memset(&ci, 0, sizeof(ci)); /* transferred */
	r = ESC_OK;
out:
	esc_rewrap_card_info_clear(&ci);
	PQclear(res);
	return r;
}
