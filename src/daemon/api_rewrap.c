/*
 * p11escrowd — the KRA re-wrap through the service (docs/api.md,
 * "/rewrap/kra/..."; docs/archival.md, "Re-wrapping through the service").
 *
 * The workstation holds the KRA cards, the service the storage key (in its
 * keeper).  GET /rewrap/kra/plan counts; POST /rewrap/kra/batch offers a
 * batch — the keeper opens each record's outer layer, the service chooses
 * the new set — and POST /rewrap/kra/commit takes the re-sealed inner
 * layers back, checks whom each is sealed to, seals the outer layer and
 * replaces the rows.  Dual control: the administrator's session calls, and
 * each card's KRA account has logged in on its own session, whose tokens
 * come in the body ("kra_sessions"); each is resumed as any session is
 * (esc_session_resume), never checked another way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/est.h>
#include <p11escrow/keeper.h>
#include <p11escrow/rewrap.h>
#include <p11escrow/session.h>

#include "api_admin.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define CARDS_MAX 16
/* A commit body: the re-sealed records of one request (the CLI splits a batch to fit max_body). */
#define RECORDS_MAX (1024 * 1024)

static const char *const no_params[] = {NULL};

/* A record's fault (damaged, moved, of an unknown key), not the batch's: the record is skipped. */
static int
record_fault(enum esc_err e)
{
	return e == ESC_ERR_TAMPERED || e == ESC_ERR_NOT_RECIPIENT || e == ESC_ERR_BAD_INPUT || e == ESC_ERR_CRYPTO ||
	       e == ESC_ERR_KEY_NOT_FOUND || e == ESC_ERR_MISMATCH;
}

/* The KRA accounts of the sessions given (each resumed as a session is); 0 after replying. */
static int
kra_accounts(struct api_call *c, const char *const *tokens, size_t n, struct esc_account **out)
{
	struct svc_worker *w = api_call_worker(c);
	size_t i;
	enum esc_err r;

	if (n == 0) {
		api_reply_error(c, 400, "'kra_sessions': the session token of each card's KRA account", ESC_ERR_USAGE);
		return 0;
	}
	for (i = 0; i < n; i++)
		if ((r = esc_session_resume(w->ctx, w->st, tokens[i], strlen(tokens[i]), w->session_idle,
					    w->session_lifetime, &out[i])) != ESC_OK) {
			api_reply_esc(c, r);
			return 0;
		}
	return 1;
}

static void
free_accounts(struct esc_account **a, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		esc_account_free(a[i]);
}

/* A certificate as base64 DER, NULL if it cannot be encoded. */
static json_t *
cert_json(X509 *x)
{
	unsigned char *der = NULL;
	json_t *j;
	int len = i2d_X509(x, &der);

	if (len <= 0)
		return NULL;
	j = api_jb64(der, (size_t)len);
	OPENSSL_free(der);
	return j;
}

/* [{id, code, reason}] of b's skips. */
static json_t *
skips_json(const struct esc_reseal_batch *b)
{
	json_t *list = json_array(), *e;
	size_t i;

	for (i = 0; list != NULL && i < b->skipped; i++)
		if ((e = json_object()) == NULL || json_array_append_new(list, e) != 0 ||
		    api_put(e, "id", api_jstr(b->skips[i].id)) ||
		    api_put(e, "code", api_jstr(esc_strerror(b->skips[i].code))) ||
		    api_put(e, "reason", api_jstr(b->skips[i].reason))) {
			json_decref(list);
			return NULL;
		}
	return list;
}

/* The cards' KRAs, key URIs and certificates, for the workstation. */
static json_t *
cards_json(struct api_call *c, struct esc_account **kras, size_t n, enum esc_err *err)
{
	struct svc_worker *w = api_call_worker(c);
	json_t *list = json_array(), *e, *certs;
	struct esc_rewrap_card_info ci;
	size_t i, k;

	*err = ESC_OK;
	for (i = 0; list != NULL && i < n; i++) {
		if ((*err = esc_rewrap_card_info(w->ctx, w->st, kras[i], &ci)) != ESC_OK) {
			json_decref(list);
			return NULL;
		}
		if ((e = json_object()) == NULL || json_array_append_new(list, e) != 0 ||
		    (certs = json_array()) == NULL || api_put(e, "certificates", certs) ||
		    api_put(e, "account", api_jstr(esc_account_name(kras[i]))) || api_put(e, "kra", api_jstr(ci.kra)) ||
		    api_put(e, "kra_id", json_integer(ci.kra_id)) || api_put(e, "key_uri", api_jstr(ci.key_uri))) {
			esc_rewrap_card_info_clear(&ci);
			json_decref(list);
			*err = ESC_ERR_NOMEM;
			return NULL;
		}
		for (k = 0; k < ci.ncerts; k++)
			if (json_array_append_new(certs, cert_json(ci.certs[k])) != 0) {
				esc_rewrap_card_info_clear(&ci);
				json_decref(list);
				*err = ESC_ERR_NOMEM;
				return NULL;
			}
		esc_rewrap_card_info_clear(&ci);
	}
	return list;
}

/* One offer as the workstation reads it. */
static json_t *
offer_json(const struct esc_rewrap_offer *o)
{
	json_t *e = json_object(), *kras = json_array(), *k;
	char hex[65];
	size_t i;

	esc_rewrap_hash_hex(o->sha, hex);
	if (e == NULL || kras == NULL || api_put(e, "kras", kras) || api_put(e, "id", api_jstr(o->id)) ||
	    api_put(e, "sha256", api_jstr(hex)) || api_put(e, "record", api_jb64(o->content, o->contentlen)) ||
	    api_put(e, "certificate", cert_json(o->cert)) || api_put(e, "old_set", api_jstr(o->old_set)) ||
	    api_put(e, "threshold", json_integer(o->threshold))) {
		json_decref(e);
		return NULL;
	}
	for (i = 0; i < o->n; i++)
		if ((k = json_object()) == NULL || json_array_append_new(kras, k) != 0 ||
		    api_put(k, "id", json_integer(o->kra_ids[i])) || api_put(k, "name", api_jstr(o->kra_names[i])) ||
		    api_put(k, "recipient", api_jstr(o->recipients[i])) ||
		    api_put(k, "certificate", cert_json(o->kra_certs[i]))) {
			json_decref(e);
			return NULL;
		}
	return e;
}

/* GET /rewrap/kra/plan: what a re-wrap would do, by reason (--dry-run). */
void
api_rewrap_plan(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	struct esc_rewrap_plan p;
	json_t *o, *by;
	enum esc_err r;
	int i, bad;

	if (!api_params_ok(c, no_params))
		return;
	if ((r = esc_rewrap_kra_plan(w->ctx, w->st, api_call_account(c), &p)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (by = json_object()) == NULL || api_put(o, "by_reason", by) ||
	      api_put(o, "records", json_integer(p.records)) || api_put(o, "needed", json_integer(p.needed)) ||
	      api_put(o, "set_size", json_integer(p.set_size)) || api_put(o, "threshold", json_integer(p.threshold)) ||
	      api_put(o, "usable", json_integer(p.usable));
	for (i = 0; !bad && i < ESC_REWRAP_NREASONS; i++)
		bad = api_put(by, esc_rewrap_reason_name((enum esc_rewrap_reason)i), json_integer(p.by_reason[i]));
	api_reply_json(c, 200, o, bad);
}

/*
 * POST /rewrap/kra/batch {"batch": "N", "after": ID, "kra_sessions": [...]}:
 * the cards' KRAs, then up to N records after ID that need a re-wrap: those
 * the cards can open offered (the keeper opens each outer layer, the
 * service chooses the new set), the others skipped (cards_needed).
 */
void
api_rewrap_batch(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *batch_text, *after, *tokens[CARDS_MAX];
	size_t ntok = 0, nids = 0, i;
	int has_tok = 0, n = 100, end = 0, bad;
	struct api_field f[] = {
		{"batch", 0, 1, &batch_text},
		{"after", 0, 1, &after},
	};
	struct api_list lists[] = {{"kra_sessions", CARDS_MAX, tokens, &ntok, &has_tok}};
	struct api_body_spec spec = {0, NULL, 0, lists, N(lists)};
	struct esc_account *kras[CARDS_MAX] = {NULL};
	char(*ids)[ESC_RECORD_ID_LEN + 1] = NULL;
	struct esc_rewrap_offer *offers = NULL;
	size_t noffers = 0;
	long long kra_ids[CARDS_MAX];
	struct esc_reseal_batch b;
	json_t *doc = NULL, *o = NULL, *records = NULL, *cards = NULL;
	enum esc_err r = ESC_OK;

	memset(&b, 0, sizeof(b));
	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, &spec, f, N(f))) == NULL)
		return;
	if (batch_text != NULL) {
		char *end_p = NULL;
		long v = strtol(batch_text, &end_p, 10);

		n = *end_p == '\0' && v >= 1 && v <= ESC_RESEAL_BATCH_MAX ? (int)v : -1;
	}
	if (n < 0) {
		api_reply_error(c, 400, "batch must be 1..1000", ESC_ERR_USAGE);
		goto out;
	}
	if (!kra_accounts(c, tokens, ntok, kras))
		goto out;
	if ((r = esc_rewrap_check_people(w->ctx, w->st, api_call_account(c), (const struct esc_account *const *)kras,
					 ntok)) != ESC_OK)
		goto fail;
	for (i = 0; i < ntok; i++)
		kra_ids[i] = esc_account_kra_id(kras[i]);
	if ((ids = calloc((size_t)n, sizeof(*ids))) == NULL || (offers = calloc((size_t)n, sizeof(*offers))) == NULL) {
		r = ESC_ERR_NOMEM;
		goto fail;
	}
	if ((cards = cards_json(c, kras, ntok, &r)) == NULL)
		goto fail;
	if ((r = esc_rewrap_pick(w->ctx, w->st, api_call_account(c), kra_ids, ntok, after, (size_t)n, ids, &nids, &b,
				 &end)) != ESC_OK)
		goto fail;
	if ((records = json_array()) == NULL) {
		r = ESC_ERR_NOMEM;
		goto fail;
	}
	for (i = 0; i < nids; i++) {
		struct esc_rewrap_offer *off = &offers[noffers];

		/* The keeper re-reads the account and checks the record needs a re-wrap; a refusal is audited there. */
		if (w->keeper == NULL)
			r = ESC_ERR_TOKEN_NOT_FOUND;
		else
			r = esc_keeper_rewrap_open(w->ctx, w->keeper, w->st, api_call_account(c), ids[i], &off->content,
						   &off->contentlen, off->sha);
		if (r == ESC_ERR_STATE) {
			/* Re-wrapped or changed by another job since it was picked: nothing to offer. */
			esc_ctx_clear_error(w->ctx);
			continue;
		}
		if (record_fault(r)) {
			/* Damaged, moved between rows, sealed for another certificate: listed, audited, left as it was. */
			struct esc_reseal_skip *sk = &b.skips[b.skipped++];

			snprintf(sk->id, sizeof(sk->id), "%s", ids[i]);
			sk->code = r;
			snprintf(sk->reason, sizeof(sk->reason), "%s", esc_ctx_errmsg(w->ctx));
			esc_audit_outcome_by(w->ctx, w->st, api_call_account(c), "rewrap.kra", ids[i], r);
			esc_ctx_clear_error(w->ctx);
			continue;
		}
		if (r != ESC_OK)
			goto fail;
		snprintf(off->id, sizeof(off->id), "%s", ids[i]);
		noffers++;
	}
	/* The service's choices, all in one transaction. */
	if ((r = esc_rewrap_offers_make(w->ctx, w->st, api_call_account(c), offers, noffers)) != ESC_OK)
		goto fail;
	for (i = 0; i < noffers; i++)
		if (json_array_append_new(records, offer_json(&offers[i])) != 0) {
			r = ESC_ERR_NOMEM;
			goto fail;
		}
	bad = (o = json_object()) == NULL || api_put(o, "cards", cards);
	cards = NULL;
	bad = bad || api_put(o, "records", records);
	records = NULL;
	bad = bad || api_put(o, "skipped", skips_json(&b)) ||
	      api_put(o, "last", b.last[0] ? api_jstr(b.last) : json_null()) || api_put(o, "end", json_boolean(end));
	api_reply_json(c, 200, o, bad);
	goto out;
fail:
	api_reply_esc(c, r);
out:
	json_decref(cards);
	json_decref(records);
	esc_reseal_batch_clear(&b);
	for (i = 0; offers != NULL && i < (size_t)n; i++)
		esc_rewrap_offer_clear(&offers[i]);
	free(offers);
	free(ids);
	free_accounts(kras, ntok);
	json_decref(doc);
}

/*
 * Parse the commit's "records": one line per record, "ID SHA256 BASE64\n"
 * (the offer's id and hash, the new EscrowRecord).  The items point into
 * ders (malloc'd one by one).  0, or -1 (malformed; nothing to free but
 * what was set).
 */
static int
parse_records(struct svc_worker *w, const char *text, struct esc_rewrap_item *items, unsigned char **ders, size_t max,
	      size_t *n)
{
	const char *p = text;

	*n = 0;
	while (*p != '\0') {
		const char *nl = strchr(p, '\n'), *sp1, *sp2;
		size_t linelen = nl != NULL ? (size_t)(nl - p) : strlen(p);
		struct esc_rewrap_item *it = &items[*n];

		if (*n == max || linelen < ESC_RECORD_ID_LEN + 66 || p[ESC_RECORD_ID_LEN] != ' ' ||
		    p[ESC_RECORD_ID_LEN + 65] != ' ')
			return -1;
		sp1 = p + ESC_RECORD_ID_LEN;
		sp2 = sp1 + 65;
		memcpy(it->id, p, ESC_RECORD_ID_LEN);
		it->id[ESC_RECORD_ID_LEN] = '\0';
		if (esc_rewrap_hash_parse(sp1 + 1, 64, it->sha) != 0)
			return -1;
		if (esc_b64_decode_max(w->ctx, sp2 + 1, linelen - (ESC_RECORD_ID_LEN + 66), RECORDS_MAX, &ders[*n],
				       &it->contentlen) != ESC_OK) {
			esc_ctx_clear_error(w->ctx);
			return -1;
		}
		it->content = ders[*n];
		(*n)++;
		p += linelen;
		if (*p == '\n')
			p++;
	}
	return 0;
}

/*
 * POST /rewrap/kra/commit {"kra_sessions": [...], "records": "ID SHA256
 * BASE64\n...", "count": "1"}: the re-sealed records; see esc_rewrap_commit.
 */
void
api_rewrap_commit(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *tokens[CARDS_MAX], *text, *count;
	size_t ntok = 0, n = 0, stale = 0, i;
	int has_tok = 0, bad;
	struct api_field f[] = {
		{"records", 1, 0, &text},
		{"count", 0, 1, &count},
	};
	struct api_list lists[] = {{"kra_sessions", CARDS_MAX, tokens, &ntok, &has_tok}};
	struct api_body_spec spec = {w->max_body, "records", w->max_body, lists, N(lists)};
	struct esc_account *kras[CARDS_MAX] = {NULL};
	struct esc_rewrap_item *items = NULL;
	unsigned char **ders = NULL;
	struct esc_reseal_batch b;
	json_t *doc, *o;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, &spec, f, N(f))) == NULL)
		return;
	if (!kra_accounts(c, tokens, ntok, kras))
		goto out;
	if ((items = calloc(ESC_RESEAL_BATCH_MAX, sizeof(*items))) == NULL ||
	    (ders = calloc(ESC_RESEAL_BATCH_MAX, sizeof(*ders))) == NULL) {
		api_reply_esc(c, ESC_ERR_NOMEM);
		goto out;
	}
	if (parse_records(w, text, items, ders, ESC_RESEAL_BATCH_MAX, &n) != 0) {
		api_reply_error(c, 400, "'records' is one line per record: its id, the offer's sha256 and base64",
				ESC_ERR_USAGE);
		goto out;
	}
	if ((r = esc_rewrap_commit(w->ctx, w->st, api_call_account(c), (const struct esc_account *const *)kras, ntok,
				   items, n, count != NULL && strcmp(count, "1") == 0, &b, &stale)) != ESC_OK) {
		api_reply_esc(c, r);
		goto out;
	}
	bad = (o = json_object()) == NULL || api_put(o, "rewrapped", json_integer((json_int_t)b.resealed)) ||
	      api_put(o, "stale", json_integer((json_int_t)stale)) || api_put(o, "refused", skips_json(&b)) ||
	      api_put(o, "generation", json_integer(b.to)) || api_put(o, "remaining", json_integer(b.remaining));
	api_reply_json(c, 200, o, bad);
out:
	for (i = 0; ders != NULL && i < n; i++)
		free(ders[i]);
	free(ders);
	free(items);
	esc_reseal_batch_clear(&b);
	free_accounts(kras, ntok);
	json_decref(doc);
}
