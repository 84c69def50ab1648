/*
 * p11escrowd — the JSON API under /api/v1 for certificate managers, KRAs,
 * auditors and administrators (docs/api.md).
 *
 * Thin over the library: every dual-control rule is the library's
 * (recovery.h), so the API enforces exactly what the CLI does.  This file
 * only authenticates the account (HTTP Basic, esc_account_login, a
 * session's bearer token, esc_session_resume, or a TLS client certificate
 * bound to it, esc_account_cert_login), routes by a table, checks
 * request bodies strictly and turns results into JSON.
 * The service is the holder of the CA token: an approved request is
 * released at once with the worker's keeper.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/est.h>
#include <p11escrow/kra.h>
#include <p11escrow/recovery.h>
#include <p11escrow/session.h>

#include "api_admin.h"
#include "api_body.h"
#include "svc.h"

#define API_PARAM_MAX 256 /* any query parameter */
#define API_AUDIT_DEFAULT 1000
#define API_AUDIT_MAX 10000
#define API_USER_MAX 128
/* Browser sessions (docs/api.md, Cookie sessions): the cookie, and the CSRF token bound to its session. */
#define API_COOKIE "p11escrow_session"
#define API_CSRF_LEN 43 /* base64url of an HMAC-SHA256, no padding */

struct api_call {
	struct svc_request *r;
	struct svc_worker *w;
	struct esc_account *a; /* the authenticated account */
	long long id;	       /* {id} of the path, 0 if none */
	int by_password;       /* authenticated with HTTP Basic (not a session) */
	int by_cert;	       /* authenticated with a TLS client certificate bound to the account */
	int by_cookie;	       /* authenticated with a browser session's cookie (the console) */
	const char *token;     /* the session's bearer token as sent (a request header), or NULL */
	size_t token_len;
	char name[API_NAME_MAX + 1]; /* {name} of the path, "" if none (api_admin.c) */
};

/* ---- replies -------------------------------------------------------------------------------------------------- */

/*
 * A JSON string of s.  jansson refuses invalid UTF-8, and text from the
 * database or from a client's own input may hold some: such bytes become '?'.
 */
static json_t *
jstr(const char *s)
{
	return svc_json_text(s);
}

/* Set obj[key] to v (consumed); -1 if v is NULL or out of memory. */
static int
put(json_t *obj, const char *key, json_t *v)
{
	return v == NULL ? -1 : json_object_set_new(obj, key, v);
}

/* Reply with obj (consumed); 500 if it could not be built. */
static void
reply_json(struct svc_request *r, int status, json_t *obj, int built)
{
	char *text = NULL;

	if (obj != NULL && built == 0)
		text = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	/* Responses name keys, people and requests: no cache keeps them. */
	svc_add_header(r, "Cache-Control", "no-store");
	if (text == NULL) {
		static const char oom[] = "{\"error\":\"internal error: cannot build the response\"}";

		svc_log(r->w, ESC_LOG_ERROR, "req=%s cannot build a JSON response", r->id);
		svc_reply(r, 500, "application/json", oom, sizeof(oom) - 1);
		return;
	}
	svc_reply(r, status, "application/json", text, strlen(text));
	free(text);
}

/* {"error": reason, "code": esc_strerror(e)}: the one error format of every /api/v1 answer (http.c). */
static void
reply_error(struct svc_request *r, int status, const char *reason, enum esc_err e)
{
	svc_reply_error_code(r, status, reason, e);
}

/*
 * The API's status for library error e: svc_http_status, except that
 * TAMPERED is 409.  Here it means a stored record failed its integrity
 * check — nothing the client sent was malformed (EST keeps 400: there the
 * client's own envelope is broken).
 */
static int
api_status(enum esc_err e)
{
	return e == ESC_ERR_TAMPERED ? 409 : svc_http_status(e);
}

/* The reply for library error e, with the context's message; details of server faults stay in the log. */
static void
reply_esc(struct api_call *c, enum esc_err e)
{
	struct svc_request *r = c->r;
	int status = api_status(e);
	const char *msg = esc_ctx_errmsg(c->w->ctx);

	if (status >= 500) {
		svc_log(c->w, ESC_LOG_ERROR, "req=%s failed: %s", r->id, msg);
		svc_worker_forget(c->w, e);
		if (status == 503)
			svc_add_header(r, "Retry-After", "5");
		reply_error(r, status,
			    status == 503 ? "service temporarily unavailable (database or HSM); try again later"
					  : "internal error; the operator's log has the details",
			    e);
		return;
	}
	svc_log(c->w, ESC_LOG_INFO, "req=%s refused: %s", r->id, msg);
	reply_error(r, status, *msg ? msg : esc_strerror(e), e);
}

/*
 * A request of the web console (X-Requested-With: p11escrow-console): its
 * 401 carries no Basic challenge, which would make the browser ask for a
 * password in its own dialog instead of the console's form.
 */
static int
console_caller(struct svc_request *r)
{
	const char *x = svc_header(r, "X-Requested-With");

	return x != NULL && strcmp(x, "p11escrow-console") == 0;
}

static void
reply_unauthorized(struct svc_request *r, int bearer)
{
	if (!console_caller(r))
		svc_add_header(r, "WWW-Authenticate", "Basic realm=\"p11escrow\", charset=\"UTF-8\"");
	/* One message for an unbound certificate, a disabled account's, a revoked one. */
	if (bearer == 2) {
		reply_error(r, 401,
			    "authentication failed: the TLS client certificate does not log in any account (not bound, "
			    "account disabled or certificate revoked)",
			    ESC_ERR_AUTH);
		return;
	}
	/* One message for an unknown name, a wrong password and a disabled account; one for every bad token. */
	if (bearer) {
		svc_add_header(r, "WWW-Authenticate", "Bearer realm=\"p11escrow\", error=\"invalid_token\"");
		reply_error(r, 401,
			    "authentication required: the session token is not valid (ended, expired or unknown)",
			    ESC_ERR_AUTH);
		return;
	}
	reply_error(r, 401, "authentication required: a valid account name and password, or a session token",
		    ESC_ERR_AUTH);
}

/* ---- input ---------------------------------------------------------------------------------------------------- */

/* Refuse (400) any query parameter not in allowed (NULL-terminated), a repeated one or an oversized one. */
static int
params_ok(struct api_call *c, const char *const *allowed)
{
	const struct evkeyval *kv, *other;
	char msg[160];
	size_t i;

	for (kv = c->r->query.tqh_first; kv != NULL; kv = kv->next.tqe_next) {
		for (i = 0; allowed[i] != NULL && strcmp(allowed[i], kv->key) != 0; i++)
			;
		if (allowed[i] == NULL) {
			snprintf(msg, sizeof(msg), "unknown query parameter '%.64s'", kv->key);
			reply_error(c->r, 400, msg, ESC_ERR_USAGE);
			return 0;
		}
		for (other = kv->next.tqe_next; other != NULL; other = other->next.tqe_next)
			if (strcmp(other->key, kv->key) == 0) {
				snprintf(msg, sizeof(msg), "query parameter '%s' given twice", kv->key);
				reply_error(c->r, 400, msg, ESC_ERR_USAGE);
				return 0;
			}
		if (strlen(kv->value) > API_PARAM_MAX) {
			snprintf(msg, sizeof(msg), "query parameter '%s' is longer than %d bytes", kv->key,
				 API_PARAM_MAX);
			reply_error(c->r, 400, msg, ESC_ERR_USAGE);
			return 0;
		}
	}
	return 1;
}

/* A query parameter; an empty one counts as absent. */
static const char *
param(struct api_call *c, const char *name)
{
	const char *v = svc_query(c->r, name);

	return v != NULL && *v != '\0' ? v : NULL;
}

/*
 * The body as one JSON object of the fields f (api_body.h), or NULL after
 * replying 413, 415 or 400.  The caller decrefs the document.
 */
static json_t *
parse_body(struct api_call *c, struct api_field *f, size_t nf)
{
	struct svc_request *r = c->r;
	json_t *doc = NULL;
	char msg[256];
	int status;

	status = api_body_parse(r->body, r->bodylen, svc_content_type_is(r, "application/json"), f, nf, &doc, msg,
				sizeof(msg));
	if (status == 0)
		return doc;
	reply_error(r, status, msg, status == 500 ? ESC_ERR_NOMEM : ESC_ERR_USAGE);
	return NULL;
}

/* Action endpoints take no parameters and an empty body (or {}). */
static int
no_input(struct api_call *c)
{
	static const char *const none[] = {NULL};
	json_t *doc;

	if (!params_ok(c, none) || (doc = parse_body(c, NULL, 0)) == NULL)
		return 0;
	json_decref(doc);
	return 1;
}

/* ---- JSON views of library results ---------------------------------------------------------------------------- */

static const struct {
	enum esc_role role;
	const char *name;
} role_names[] = {
	{ESC_ROLE_ADMIN, "admin"},
	{ESC_ROLE_CERT_MANAGER, "cert-manager"},
	{ESC_ROLE_KRA, "kra"},
	{ESC_ROLE_AUDITOR, "auditor"},
};

static json_t *
request_json(const struct esc_recovery *q)
{
	json_t *o = json_object();

	if (o == NULL || put(o, "id", json_integer(q->id)) || put(o, "record", jstr(q->record_id)) ||
	    put(o, "serial", jstr(q->serial)) || put(o, "subject", jstr(q->subject)) ||
	    put(o, "tampered", json_boolean(q->tampered)) || put(o, "state", jstr(q->state)) ||
	    put(o, "requester", jstr(q->requester)) || put(o, "kra", jstr(q->kra)) ||
	    put(o, "reason", jstr(q->reason)) || put(o, "approvals", json_integer(q->approvals)) ||
	    put(o, "approvals_required", json_integer(q->approvals_required)) || put(o, "created", jstr(q->created))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Base64 (one line, no newlines) of len bytes. */
static json_t *
jb64(const unsigned char *der, size_t len)
{
	unsigned char *b64;
	json_t *j;

	if (len > INT_MAX / 2 || (b64 = malloc(len / 3 * 4 + 8)) == NULL)
		return NULL;
	EVP_EncodeBlock(b64, der, (int)len);
	j = json_string((const char *)b64);
	free(b64);
	return j;
}

static json_t *
cert_b64(X509 *x)
{
	unsigned char *der = NULL;
	json_t *j;
	int n;

	if ((n = i2d_X509(x, &der)) <= 0)
		return NULL;
	j = jb64(der, (size_t)n);
	OPENSSL_free(der);
	return j;
}

/* ---- endpoints ------------------------------------------------------------------------------------------------ */

static void
api_whoami(struct api_call *c)
{
	static const char *const none[] = {NULL};
	json_t *o = json_object(), *roles = json_array();
	int bad = o == NULL || roles == NULL;
	size_t i;

	if (!params_ok(c, none)) {
		json_decref(o);
		json_decref(roles);
		return;
	}
	for (i = 0; !bad && i < sizeof(role_names) / sizeof(role_names[0]); i++)
		if (esc_account_has_role(c->a, role_names[i].role))
			bad = json_array_append_new(roles, json_string(role_names[i].name));
	bad = bad || put(o, "name", jstr(esc_account_name(c->a)));
	if (bad)
		json_decref(roles);
	else
		bad = put(o, "roles", roles);
	reply_json(c->r, 200, o, bad);
}

static void
api_records(struct api_call *c)
{
	static const char *const allowed[] = {"serial", "subject", "email", NULL};
	struct esc_record_summary *s = NULL;
	json_t *o = NULL, *list = NULL, *e, *kras;
	size_t n = 0, i;
	enum esc_err r;
	int bad = 0;

	if (!params_ok(c, allowed))
		return;
	if ((r = esc_archive_search(c->w->ctx, c->w->st, c->a, param(c, "serial"), param(c, "subject"),
				    param(c, "email"), &s, &n)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (list = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++) {
		char *k, *save = NULL;

		e = json_object();
		kras = json_array();
		bad = e == NULL || kras == NULL;
		for (k = strtok_r(s[i].kras, ",", &save); !bad && k != NULL; k = strtok_r(NULL, ",", &save))
			bad = json_array_append_new(kras, jstr(k));
		if (bad || put(e, "id", jstr(s[i].id)) || put(e, "serial", jstr(s[i].serial)) ||
		    put(e, "subject", jstr(s[i].subject)) || put(e, "email", jstr(s[i].email)) ||
		    put(e, "issuer", jstr(s[i].issuer)) || put(e, "foreign", json_boolean(s[i].foreign)) ||
		    put(e, "tampered", json_boolean(s[i].tampered)) || put(e, "created", jstr(s[i].created)) ||
		    put(e, "kras", json_incref(kras)) || json_array_append(list, e))
			bad = 1;
		json_decref(kras);
		json_decref(e);
	}
	if (!bad)
		bad = put(o, "records", json_incref(list));
	json_decref(list);
	free(s);
	reply_json(c->r, 200, o, bad);
}

static void
api_kras(struct api_call *c)
{
	static const char *const none[] = {NULL};
	struct esc_kra *k = NULL;
	json_t *o = NULL, *list = NULL, *e;
	size_t n = 0, i;
	char why[256];
	int warn_days = c->w->kra_warning_days;
	enum esc_err r;
	int bad;

	if (!params_ok(c, none))
		return;
	if ((r = esc_kra_list(c->w->ctx, c->w->st, &k, &n)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (list = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++) {
		e = json_object();
		if (e == NULL || put(e, "name", jstr(k[i].name)) || put(e, "state", jstr(k[i].state)) ||
		    put(e, "key_type", jstr(k[i].key_type)) || put(e, "recipient", jstr(k[i].recipient)) ||
		    put(e, "cert_serial", jstr(k[i].cert_serial)) || put(e, "not_after", jstr(k[i].not_after)) ||
		    put(e, "token_label", jstr(k[i].token_label)) || put(e, "token_serial", jstr(k[i].token_serial)) ||
		    put(e, "key_uri", jstr(k[i].key_uri)) || put(e, "records", json_integer(k[i].records)) ||
		    put(e, "origin", jstr(k[i].origin)) || put(e, "recipient_reason", jstr(k[i].recipient_reason)) ||
		    put(e, "days_left", json_integer(k[i].days_left)) ||
		    put(e, "expired", json_boolean(k[i].expired)) ||
		    (esc_kra_warning(&k[i], warn_days, why, sizeof(why)) && put(e, "warning", jstr(why))) ||
		    json_array_append(list, e))
			bad = 1;
		json_decref(e);
	}
	if (!bad)
		bad = put(o, "kras", json_incref(list));
	json_decref(list);
	free(k);
	reply_json(c->r, 200, o, bad);
}

/*
 * GET /kras/health: what would leave records unrecoverable, before it does
 * (esc_kra_health): KRA certificates expiring within
 * kra_expiry_warning_days or expired, records with fewer than k usable
 * KRAs.  "status" is "ok" or "warn".  Any account, as GET /kras.
 */
static void
api_kras_health(struct api_call *c)
{
	static const char *const none[] = {NULL};
	struct esc_kra *k = NULL;
	struct esc_kra_health h;
	json_t *o = NULL, *list = NULL, *e;
	size_t n = 0, i;
	char why[256];
	int warn_days = c->w->kra_warning_days, bad, warn;
	enum esc_err r;

	if (!params_ok(c, none))
		return;
	if ((r = esc_kra_list(c->w->ctx, c->w->st, &k, &n)) != ESC_OK ||
	    (r = esc_kra_health(c->w->ctx, c->w->st, k, n, warn_days, &h)) != ESC_OK) {
		free(k);
		reply_esc(c, r);
		return;
	}
	warn = h.records_short > 0 || h.expiring > 0 || h.expired > 0;
	bad = (o = json_object()) == NULL || (list = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++) {
		if (!esc_kra_warning(&k[i], warn_days, why, sizeof(why)))
			continue;
		e = json_object();
		if (e == NULL || put(e, "name", jstr(k[i].name)) || put(e, "not_after", jstr(k[i].not_after)) ||
		    put(e, "days_left", json_integer(k[i].days_left)) ||
		    put(e, "expired", json_boolean(k[i].expired)) || put(e, "warning", jstr(why)) ||
		    json_array_append(list, e))
			bad = 1;
		json_decref(e);
	}
	if (!bad)
		bad = put(o, "status", jstr(warn ? "warn" : "ok")) || put(o, "warning_days", json_integer(warn_days)) ||
		      put(o, "threshold", json_integer(h.threshold)) ||
		      put(o, "active", json_integer((json_int_t)h.active)) ||
		      put(o, "usable", json_integer((json_int_t)h.usable)) ||
		      put(o, "expiring", json_integer((json_int_t)h.expiring)) ||
		      put(o, "expired", json_integer((json_int_t)h.expired)) ||
		      put(o, "records", json_integer(h.records)) ||
		      put(o, "records_below_threshold", json_integer(h.records_short)) ||
		      put(o, "records_without_usable_kra", json_integer(h.records_none)) ||
		      (h.first_short[0] != '\0' && put(o, "first_record_below_threshold", jstr(h.first_short))) ||
		      put(o, "kras", json_incref(list));
	json_decref(list);
	free(k);
	reply_json(c->r, 200, o, bad);
}

static void
api_recoveries_list(struct api_call *c)
{
	static const char *const allowed[] = {"state", NULL};
	static const char *const states[] = {"pending", "approved",  "released", "completed",
					     "denied",	"cancelled", "expired",	 NULL};
	struct esc_recovery *q = NULL;
	const char *state;
	json_t *o = NULL, *list = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int bad;

	if (!params_ok(c, allowed))
		return;
	if ((state = param(c, "state")) != NULL) {
		for (i = 0; states[i] != NULL && strcmp(states[i], state) != 0; i++)
			;
		if (states[i] == NULL) {
			reply_error(
				c->r, 400,
				"state must be pending, approved, released, completed, denied, cancelled or expired",
				ESC_ERR_USAGE);
			return;
		}
	}
	if ((r = esc_recovery_list(c->w->ctx, c->w->st, c->a, state, &q, &n)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (list = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++)
		bad = json_array_append_new(list, request_json(&q[i]));
	if (!bad)
		bad = put(o, "recoveries", json_incref(list));
	json_decref(list);
	free(q);
	reply_json(c->r, 200, o, bad);
}

/*
 * Reply with request id as it is now (status 200 or 201).  release_e/msg:
 * a failed release to report with it (the request itself stands).
 */
static void
reply_request(struct api_call *c, int status, enum esc_err release_e, const char *release_msg)
{
	struct esc_recovery q;
	json_t *o;
	enum esc_err r;
	int bad;

	if (c->w->st == NULL) {
		reply_error(c->r, 503, "the database is unavailable; try again later", ESC_ERR_DB_CONNECT);
		return;
	}
	if ((r = esc_recovery_get(c->w->ctx, c->w->st, c->a, c->id, &q)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	bad = (o = request_json(&q)) == NULL;
	if (!bad && release_e != ESC_OK)
		bad = put(o, "release_error", jstr(release_msg)) ||
		      put(o, "release_code", jstr(esc_strerror(release_e)));
	if (status == 201) {
		char loc[64];

		snprintf(loc, sizeof(loc), "/api/v1/recoveries/%lld", c->id);
		svc_add_header(c->r, "Location", loc);
	}
	reply_json(c->r, status, o, bad);
}

/*
 * The service holds the CA token: release request c->id if it is approved
 * now.  Returns ESC_OK if there was nothing to do or it was released, else
 * the error with its message in msg (the request stays approved; a
 * certificate manager retries with /release).
 */
static enum esc_err
release_if_approved(struct api_call *c, char *msg, size_t msglen)
{
	struct esc_recovery q;
	enum esc_err r;

	if (esc_recovery_get(c->w->ctx, c->w->st, c->a, c->id, &q) != ESC_OK || strcmp(q.state, "approved") != 0)
		return ESC_OK; /* reply_request reports the request as it is */
	if (c->w->keeper == NULL)
		r = ESC_ERR_TOKEN_NOT_FOUND; /* svc_worker_ready checked it; a lost token is a 503 next time */
	else
		r = esc_keeper_release(c->w->ctx, c->w->keeper, c->w->st, c->id);
	if (r == ESC_OK)
		return ESC_OK;
	/* Another worker released it first (two approvals at once): nothing went wrong. */
	if (r == ESC_ERR_STATE && esc_recovery_get(c->w->ctx, c->w->st, c->a, c->id, &q) == ESC_OK &&
	    strcmp(q.state, "approved") != 0)
		return ESC_OK;
	snprintf(msg, msglen, "%s",
		 svc_http_status(r) >= 500 ? "the CA token or database failed; retry the release"
					   : esc_ctx_errmsg(c->w->ctx));
	svc_log(c->w, svc_http_status(r) >= 500 ? ESC_LOG_ERROR : ESC_LOG_WARN, "req=%s release of request %lld: %s",
		c->r->id, c->id, esc_ctx_errmsg(c->w->ctx));
	return r;
}

/* After a failed release: answer with the request, then drop a broken connection. */
static void
reply_after_release(struct api_call *c, int status, enum esc_err e, const char *msg)
{
	/* The database connection is needed for the reply; the keeper is not. */
	if (e == ESC_ERR_DB_CONNECT) {
		reply_esc(c, e);
		return;
	}
	reply_request(c, status, e, msg);
	if (e != ESC_OK && svc_http_status(e) >= 500)
		svc_worker_forget(c->w, e);
}

static void
api_recoveries_create(struct api_call *c)
{
	static const char *const none[] = {NULL};
	const char *record, *kra, *reason;
	struct api_field f[] = {
		{"record", 1, 0, &record},
		{"kra", 0, 1, &kra},
		{"reason", 1, 0, &reason},
	};
	char msg[ESC_REASON_MAX + 256];
	json_t *doc;
	enum esc_err r;

	if (!params_ok(c, none) || (doc = parse_body(c, f, sizeof(f) / sizeof(f[0]))) == NULL)
		return;
	r = esc_recovery_request(c->w->ctx, c->w->st, c->a, record, kra, reason, &c->id);
	json_decref(doc);
	if (r != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	r = release_if_approved(c, msg, sizeof(msg));
	reply_after_release(c, 201, r, msg);
}

static void
api_recovery_get(struct api_call *c)
{
	static const char *const none[] = {NULL};

	if (params_ok(c, none))
		reply_request(c, 200, ESC_OK, NULL);
}

static void
api_recovery_approve(struct api_call *c)
{
	char msg[ESC_REASON_MAX + 256];
	enum esc_err r;

	if (!no_input(c))
		return;
	if ((r = esc_recovery_approve(c->w->ctx, c->w->st, c->a, c->id)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	r = release_if_approved(c, msg, sizeof(msg));
	reply_after_release(c, 200, r, msg);
}

static void
api_recovery_release(struct api_call *c)
{
	char obj[48];
	enum esc_err r;

	if (!no_input(c))
		return;
	/* The library's release has no account (the CA token holder does it); the API asks for one. */
	if ((r = esc_account_require(c->w->ctx, c->a, ESC_ROLE_CERT_MANAGER)) != ESC_OK) {
		snprintf(obj, sizeof(obj), "request %lld", c->id);
		esc_audit_outcome_by(c->w->ctx, c->w->st, c->a, "recovery.release", obj, r);
		reply_esc(c, r);
		return;
	}
	if (c->w->keeper == NULL)
		r = ESC_ERR_TOKEN_NOT_FOUND;
	else
		r = esc_keeper_release(c->w->ctx, c->w->keeper, c->w->st, c->id);
	if (r != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	reply_request(c, 200, ESC_OK, NULL);
}

static void
api_recovery_package(struct api_call *c)
{
	static const char *const none[] = {NULL};
	struct esc_recovery_package *p = NULL;
	const unsigned char *der;
	json_t *o;
	size_t len;
	enum esc_err r;
	int bad;

	if (!params_ok(c, none))
		return;
	if ((r = esc_recovery_fetch(c->w->ctx, c->w->st, c->a, c->id, &p)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	der = esc_recovery_package_der(p, &len);
	bad = (o = json_object()) == NULL || put(o, "id", json_integer(c->id)) ||
	      put(o, "kra", jstr(esc_recovery_package_kra_name(p))) || put(o, "package", jb64(der, len)) ||
	      put(o, "certificate", cert_b64(esc_recovery_package_cert(p))) ||
	      put(o, "kra_certificate", cert_b64(esc_recovery_package_kra_cert(p))) ||
	      put(o, "kra_key_uri", jstr(esc_recovery_package_key_uri(p)));
	/* k of n (version 2): the shares the KRA's card opens, each still sealed to it; a version 1 answer is as it was. */
	if (!bad && esc_recovery_package_threshold(p) > 1) {
		json_t *list = json_array(), *e;
		const unsigned char *sealed, *commitment;
		size_t i, slen;
		unsigned x;
		X509 *cert;

		bad = list == NULL || put(o, "version", json_integer(2)) ||
		      put(o, "record", jstr(esc_recovery_package_record_id(p))) ||
		      put(o, "threshold", json_integer(esc_recovery_package_threshold(p)));
		for (i = 0; !bad && (sealed = esc_recovery_package_share(p, i, &x, &commitment, &slen, &cert)) != NULL;
		     i++)
			bad = (e = json_object()) == NULL || json_array_append_new(list, e) != 0 ||
			      put(e, "x", json_integer(x)) || put(e, "commitment", jb64(commitment, 32)) ||
			      put(e, "sealed", jb64(sealed, slen)) || put(e, "certificate", cert_b64(cert));
		if (bad)
			json_decref(list);
		else
			bad = put(o, "shares", list); /* consumes list */
	}
	esc_recovery_package_free(p);
	reply_json(c->r, 200, o, bad);
}

/*
 * k of n: the calling KRA's share of request c->id, still sealed to its
 * card, with what its workstation needs to re-seal it to the completing
 * KRA (esc_recovery_share_fetch checks who may; audited).
 */
static void
api_recovery_share(struct api_call *c)
{
	static const char *const none[] = {NULL};
	struct esc_recovery_share *s = NULL;
	struct esc_recovery_share_parts sp;
	json_t *o;
	enum esc_err r;
	int bad;

	if (!params_ok(c, none))
		return;
	if ((r = esc_recovery_share_fetch(c->w->ctx, c->w->st, c->a, c->id, &s)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	esc_recovery_share_parts(s, &sp);
	bad = (o = json_object()) == NULL || put(o, "id", json_integer(c->id)) ||
	      put(o, "record", jstr(sp.record_id)) || put(o, "x", json_integer(sp.x)) ||
	      put(o, "threshold", json_integer(sp.threshold)) || put(o, "commitment", jb64(sp.commitment, 32)) ||
	      put(o, "sealed", jb64(sp.sealed, sp.sealed_len)) || put(o, "kra", jstr(sp.kra_name)) ||
	      put(o, "kra_certificate", jb64(sp.kra_cert, sp.kra_cert_len)) ||
	      put(o, "kra_key_uri", jstr(sp.key_uri)) || put(o, "completer", jstr(sp.completer_name)) ||
	      put(o, "completer_certificate", jb64(sp.completer_cert, sp.completer_cert_len)) ||
	      put(o, "completer_recipient", jstr(sp.completer_recipient));
	esc_recovery_share_free(s);
	reply_json(c->r, 200, o, bad);
}

/*
 * k of n: body {"contributed": base64}, the calling KRA's share re-sealed
 * at its workstation to the completing KRA; stored under every check
 * again (esc_recovery_share_store).  Answers {id, have, need}.
 */
static void
api_recovery_contribute(struct api_call *c)
{
	static const char *const none[] = {NULL};
	const char *b64;
	struct api_field f[] = {
		{"contributed", 1, 0, &b64},
	};
	unsigned char *der = NULL;
	size_t len = 0;
	json_t *doc, *o;
	enum esc_err r;
	int have = 0, need = 0;

	if (!params_ok(c, none) || (doc = parse_body(c, f, sizeof(f) / sizeof(f[0]))) == NULL)
		return;
	if (esc_b64_decode_max(c->w->ctx, b64, strlen(b64), API_FIELD_MAX, &der, &len) != ESC_OK) {
		json_decref(doc);
		reply_error(c->r, 400, "'contributed' is not base64 of a re-sealed share", ESC_ERR_USAGE);
		return;
	}
	json_decref(doc);
	r = esc_recovery_share_store(c->w->ctx, c->w->st, c->a, c->id, der, len, &have, &need);
	free(der);
	if (r != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	o = json_object();
	reply_json(c->r, 200, o,
		   o == NULL || put(o, "id", json_integer(c->id)) || put(o, "have", json_integer(have)) ||
			   put(o, "need", json_integer(need)));
}

/*
 * The KRA's report: body {} (a PKCS#12), or {"output": "token"|"cert",
 * "destination": "..."} naming where its workstation put the key; the
 * library checks both and the audit event carries them.
 */
static void
api_recovery_complete(struct api_call *c)
{
	static const char *const none[] = {NULL};
	const char *output, *destination;
	struct api_field f[] = {
		{"output", 0, 1, &output},
		{"destination", 0, 1, &destination},
	};
	json_t *doc;
	enum esc_err r;

	if (!params_ok(c, none) || (doc = parse_body(c, f, sizeof(f) / sizeof(f[0]))) == NULL)
		return;
	r = esc_recovery_finish_to(c->w->ctx, c->w->st, c->a, c->id, output, destination);
	json_decref(doc);
	if (r != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	reply_request(c, 200, ESC_OK, NULL);
}

/* Deny or cancel request c->id: body {"reason": "..."}; the library decides who may (recovery.h). */
static void
api_recovery_end(struct api_call *c, int cancel)
{
	static const char *const none[] = {NULL};
	const char *reason;
	struct api_field f[] = {
		{"reason", 1, 0, &reason},
	};
	json_t *doc;
	enum esc_err r;

	if (!params_ok(c, none) || (doc = parse_body(c, f, sizeof(f) / sizeof(f[0]))) == NULL)
		return;
	if (cancel)
		r = esc_recovery_cancel(c->w->ctx, c->w->st, c->a, c->id, reason);
	else
		r = esc_recovery_deny(c->w->ctx, c->w->st, c->a, c->id, reason);
	json_decref(doc);
	if (r != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	reply_request(c, 200, ESC_OK, NULL);
}

static void
api_recovery_deny(struct api_call *c)
{
	api_recovery_end(c, 0);
}

static void
api_recovery_cancel(struct api_call *c)
{
	api_recovery_end(c, 1);
}

static void
api_audit(struct api_call *c)
{
	static const char *const allowed[] = {"since", "until", "actor", "action", "object", "serial", "limit", NULL};
	struct esc_audit_row *rows = NULL;
	const char *lim = param(c, "limit");
	json_t *o = NULL, *list = NULL, *e;
	size_t n = 0, i, limit = API_AUDIT_DEFAULT;
	enum esc_err r;
	char *end;
	int bad;

	if (!params_ok(c, allowed))
		return;
	if (lim != NULL) {
		unsigned long v = (*lim >= '0' && *lim <= '9') ? strtoul(lim, &end, 10) : 0;

		if (v == 0 || *end != '\0' || v > API_AUDIT_MAX) {
			reply_error(c->r, 400, "limit must be 1..10000", ESC_ERR_USAGE);
			return;
		}
		limit = (size_t)v;
	}
	{
		struct esc_audit_filter f = {param(c, "since"),
					     param(c, "until"),
					     param(c, "actor"),
					     param(c, "action"),
					     param(c, "object"),
					     param(c, "serial"),
					     limit};

		if ((r = esc_audit_search(c->w->ctx, c->w->st, c->a, &f, &rows, &n)) != ESC_OK) {
			reply_esc(c, r);
			return;
		}
	}
	bad = (o = json_object()) == NULL || (list = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++) {
		e = json_object();
		if (e == NULL || put(e, "id", json_integer(rows[i].id)) || put(e, "time", jstr(rows[i].at)) ||
		    put(e, "actor", jstr(rows[i].actor)) || put(e, "role", jstr(rows[i].role)) ||
		    put(e, "action", jstr(rows[i].action)) || put(e, "object", jstr(rows[i].object)) ||
		    put(e, "outcome", jstr(rows[i].outcome)) || put(e, "details", jstr(rows[i].details)) ||
		    json_array_append(list, e))
			bad = 1;
		json_decref(e);
	}
	if (!bad)
		bad = put(o, "events", json_incref(list));
	json_decref(list);
	free(rows);
	reply_json(c->r, 200, o, bad);
}

/* ---- browser sessions: cookie and CSRF ------------------------------------------------------------------------ */

/*
 * The session token in the Cookie header's p11escrow_session (the first
 * one), or NULL; *len its length, at most ESC_SESSION_TOKEN_LEN + 1 (a
 * longer one is refused by esc_session_resume as any malformed token).
 */
static const char *
session_cookie(struct svc_request *r, size_t *len)
{
	return api_cookie_value(svc_header(r, "Cookie"), API_COOKIE, ESC_SESSION_TOKEN_LEN + 1, len);
}

/*
 * The CSRF token of the session whose token is token: HMAC-SHA256 keyed
 * with the session token over a fixed label, base64url.  Bound to the
 * session and to nothing else: only a holder of the session token (the
 * browser's HttpOnly cookie, which no script reads) or of this answer can
 * know it, and it does not reveal the session token.  No state: every
 * worker and every p11escrowd derives the same.  0, or -1.
 */
static int
csrf_of(const char *token, size_t len, char out[API_CSRF_LEN + 1])
{
	static const char label[] = "p11escrow console CSRF token v1";
	unsigned char mac[32], b64[48];
	size_t maclen = 0, i;
	int rc = -1;

	if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, token, len, (const unsigned char *)label, sizeof(label) - 1,
		      mac, sizeof(mac), &maclen) == NULL ||
	    maclen != sizeof(mac) || EVP_EncodeBlock(b64, mac, (int)sizeof(mac)) != 44)
		goto out;
	for (i = 0; i < API_CSRF_LEN; i++)
		out[i] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : (char)b64[i];
	out[API_CSRF_LEN] = '\0';
	rc = 0;
out:
	OPENSSL_cleanse(mac, sizeof(mac));
	OPENSSL_cleanse(b64, sizeof(b64));
	return rc;
}

/* A method that changes state: the CSRF rules apply (GET and HEAD only read). */
static int
state_changing(const struct svc_request *r)
{
	return r->method == EVHTTP_REQ_POST || r->method == EVHTTP_REQ_PUT || r->method == EVHTTP_REQ_PATCH ||
	       r->method == EVHTTP_REQ_DELETE;
}

/*
 * Is r's Origin header, where one is sent, this service's own origin:
 * "https://" and the Host the client asked for?  A browser sends Origin
 * with every POST, same-origin included; other clients (the CLI, curl)
 * send none and are not affected.
 */
static int
origin_ok(struct svc_request *r)
{
	const char *o = svc_header(r, "Origin"), *host = svc_header(r, "Host");

	return o == NULL ||
	       (host != NULL && *host != '\0' && strncmp(o, "https://", 8) == 0 && strcasecmp(o + 8, host) == 0);
}

/* Printable ASCII of s, at most len-1 bytes, for an audit event's details. */
static void
printable(char *dst, size_t len, const char *s)
{
	size_t i;

	for (i = 0; s != NULL && s[i] != '\0' && i + 1 < len; i++)
		dst[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
	dst[i] = '\0';
}

/*
 * Refuse a cross-site request (403, code "permission denied"): audited as
 * auth.csrf refused with the account when it is known (c->a), its method
 * and path, why and the Origin sent.  Nothing the request asked for is done.
 */
static void
csrf_refuse(struct api_call *c, const char *why)
{
	struct svc_request *r = c->r;
	char roles[64] = "", object[160], origin[128], details[400];
	const char *actor = c->a != NULL ? esc_account_name(c->a) : "unauthenticated";
	struct esc_audit_event ev;

	if (c->a != NULL)
		esc_roles_format(esc_account_roles(c->a), roles, sizeof(roles));
	printable(object, sizeof(object), r->path);
	printable(origin, sizeof(origin), svc_header(r, "Origin") != NULL ? svc_header(r, "Origin") : "(none)");
	snprintf(details, sizeof(details), "%s %s refused: %s; Origin %s; client %s", r->method_name, object, why,
		 origin, r->peer[0] ? r->peer : "unknown");
	ev = (struct esc_audit_event){actor, roles, "auth.csrf", object, "refused", details};
	svc_log(c->w, ESC_LOG_WARN, "req=%s %s", r->id, details);
	if (esc_audit_append(c->w->ctx, c->w->st, &ev) != ESC_OK)
		svc_log(c->w, ESC_LOG_ERROR, "req=%s could not audit a refused cross-site request: %s", r->id,
			esc_ctx_errmsg(c->w->ctx));
	reply_error(r, 403,
		    "cross-site request refused: a browser session's state-changing call needs the service's own "
		    "Origin and its X-CSRF-Token header",
		    ESC_ERR_DENIED);
}

/*
 * After authentication: a state-changing request from a browser of another
 * origin is refused whoever it authenticates; one authenticated by the
 * session cookie also needs the session's CSRF token in X-CSRF-Token
 * (compared in constant time).  1 if it may go on, else 0 after replying.
 */
static int
csrf_ok(struct api_call *c)
{
	struct svc_request *r = c->r;
	char want[API_CSRF_LEN + 1];
	const char *got = svc_header(r, "X-CSRF-Token");
	int ok;

	if (!state_changing(r))
		return 1;
	if (!origin_ok(r)) {
		csrf_refuse(c, "the Origin is not the service's own");
		return 0;
	}
	if (!c->by_cookie)
		return 1;
	if (got == NULL) {
		csrf_refuse(c, "no X-CSRF-Token header with the session cookie");
		return 0;
	}
	ok = csrf_of(c->token, c->token_len, want) == 0 && strlen(got) == API_CSRF_LEN &&
	     CRYPTO_memcmp(got, want, API_CSRF_LEN) == 0;
	OPENSSL_cleanse(want, sizeof(want));
	if (!ok)
		csrf_refuse(c, "a wrong X-CSRF-Token for the session cookie");
	return ok;
}

/* Set-Cookie that ends the browser's session cookie (logout, a cookie no longer valid). */
static void
clear_cookie(struct svc_request *r)
{
	svc_add_header(r, "Set-Cookie", API_COOKIE "=; Path=/api/v1; Max-Age=0; Secure; HttpOnly; SameSite=Strict");
}

/*
 * GET /audit/verify: the whole chain recomputed and every checkpoint's
 * signature checked (esc_audit_verify, what `p11escrow audit verify` does),
 * for auditors and administrators: the console's chain status.  Reads the
 * whole audit table: seconds at a million events.  {"intact": true|false,
 * "events", "checkpoints", "last_signed", "first_bad", "problem"}.
 */
static void
api_audit_verify_chain(struct api_call *c)
{
	static const char *const none[] = {NULL};
	struct esc_audit_report rep;
	json_t *o;
	enum esc_err r;

	if (!params_ok(c, none))
		return;
	if (!esc_account_has_role(c->a, ESC_ROLE_ADMIN) && !esc_account_has_role(c->a, ESC_ROLE_AUDITOR)) {
		reply_error(c->r, 403, "only auditors and administrators verify the audit trail", ESC_ERR_DENIED);
		return;
	}
	memset(&rep, 0, sizeof(rep));
	r = esc_audit_verify(c->w->ctx, c->w->st, &rep);
	if (r != ESC_OK && r != ESC_ERR_TAMPERED) {
		reply_esc(c, r);
		return;
	}
	o = json_object();
	reply_json(c->r, 200, o,
		   o == NULL || put(o, "intact", json_boolean(r == ESC_OK && rep.first_bad == 0)) ||
			   put(o, "events", json_integer(rep.events)) ||
			   put(o, "checkpoints", json_integer(rep.checkpoints)) ||
			   put(o, "last_signed", json_integer(rep.last_signed)) ||
			   put(o, "first_bad", json_integer(rep.first_bad)) || put(o, "problem", jstr(rep.problem)));
}

/* ---- sessions and passwords ---------------------------------------------------------------------------------- */

/*
 * POST /session: a token for the account that logged in with its password.
 * The answer holds the token: built in secure memory and sent from there.
 */
/*
 * POST /session {"mode": "cookie"}: a browser session (the console).  The
 * token goes only into a Set-Cookie (Secure, HttpOnly, SameSite=Strict,
 * Path=/api/v1: no script reads it, no other site's request carries it);
 * the answer holds the session's CSRF token instead, which every
 * state-changing call with the cookie must send as X-CSRF-Token.
 * libevent keeps its copy of the Set-Cookie header in memory nobody wipes
 * (as it does an Authorization header it read): ours is wiped.
 */
static void
session_open_cookie(struct api_call *c, struct esc_secret *token, const char *expires)
{
	char csrf[API_CSRF_LEN + 1], *hdr = NULL;
	size_t cap = sizeof(API_COOKIE) + ESC_SESSION_TOKEN_LEN + 80;
	json_t *o = NULL, *roles = NULL;
	int n;

	if (csrf_of(esc_secret_str(token), strlen(esc_secret_str(token)), csrf) != 0 ||
	    (hdr = OPENSSL_secure_malloc(cap)) == NULL) {
		reply_error(c->r, 500, "internal error: cannot build the response", ESC_ERR_INTERNAL);
		goto out;
	}
	n = snprintf(hdr, cap, "%s=%s; Path=/api/v1; Secure; HttpOnly; SameSite=Strict", API_COOKIE,
		     esc_secret_str(token));
	if (n < 0 || (size_t)n >= cap || (o = json_object()) == NULL ||
	    (roles = api_roles_json(esc_account_roles(c->a))) == NULL) {
		json_decref(o);
		reply_error(c->r, 500, "internal error: cannot build the response", ESC_ERR_INTERNAL);
		goto out;
	}
	svc_log(c->w, ESC_LOG_INFO, "req=%s browser session opened for '%s'", c->r->id, esc_account_name(c->a));
	svc_add_header(c->r, "Set-Cookie", hdr);
	reply_json(c->r, 201, o,
		   put(o, "name", jstr(esc_account_name(c->a))) || put(o, "roles", json_incref(roles)) ||
			   put(o, "csrf", json_string(csrf)) || put(o, "expires", jstr(expires)) ||
			   put(o, "idle_timeout", json_integer(c->w->session_idle)));
out:
	json_decref(roles);
	if (hdr != NULL)
		OPENSSL_secure_clear_free(hdr, cap);
	OPENSSL_cleanse(csrf, sizeof(csrf));
}

static void
api_session_open(struct api_call *c)
{
	static const char *const none[] = {NULL};
	struct esc_secret *token = NULL;
	char expires[ESC_SESSION_EXPIRES_LEN];
	unsigned char *body = NULL;
	size_t cap = 160 + ESC_SESSION_TOKEN_LEN;
	const char *mode = NULL;
	struct api_field f[] = {{"mode", 0, 1, &mode}};
	json_t *doc;
	enum esc_err r;
	int n, cookie;

	if (!params_ok(c, none) || (doc = parse_body(c, f, sizeof(f) / sizeof(f[0]))) == NULL)
		return;
	cookie = mode != NULL && strcmp(mode, "cookie") == 0;
	if (mode != NULL && !cookie) {
		json_decref(doc);
		reply_error(c->r, 400, "mode must be \"cookie\" (a browser session) or absent (a bearer token)",
			    ESC_ERR_USAGE);
		return;
	}
	json_decref(doc);
	if (!c->by_password && !c->by_cert) {
		reply_error(c->r, 400,
			    "a session is opened with the account's name and password (HTTP Basic) or its TLS client "
			    "certificate, not a token",
			    ESC_ERR_USAGE);
		return;
	}
	if ((r = esc_session_open(c->w->ctx, c->w->st, c->a, c->w->session_lifetime, &token, expires)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	if (cookie) {
		session_open_cookie(c, token, expires);
		esc_secret_free(token);
		return;
	}
	if ((body = OPENSSL_secure_malloc(cap)) == NULL) {
		esc_secret_free(token);
		reply_error(c->r, 500, "internal error: cannot build the response", ESC_ERR_NOMEM);
		return;
	}
	/* The token is base64url and expires a timestamp: neither needs escaping in JSON. */
	n = snprintf((char *)body, cap, "{\"token\":\"%s\",\"expires\":\"%s\",\"idle_timeout\":%lld}",
		     esc_secret_str(token), expires, c->w->session_idle);
	esc_secret_free(token);
	if (n < 0 || (size_t)n >= cap) {
		OPENSSL_secure_clear_free(body, cap);
		reply_error(c->r, 500, "internal error: cannot build the response", ESC_ERR_INTERNAL);
		return;
	}
	svc_log(c->w, ESC_LOG_INFO, "req=%s session opened for '%s'", c->r->id, esc_account_name(c->a));
	svc_add_header(c->r, "Cache-Control", "no-store");
	svc_reply_secret(c->r, 201, "application/json", body, (size_t)n);
}

/* DELETE /session: end the session whose token authenticated this request (logout). */
static void
api_session_close(struct api_call *c)
{
	json_t *o;
	enum esc_err r;

	if (!no_input(c))
		return;
	if (c->token == NULL) {
		reply_error(c->r, 400,
			    "DELETE /session ends the session whose token it is sent with (Authorization: Bearer, or "
			    "the browser session's cookie)",
			    ESC_ERR_USAGE);
		return;
	}
	if ((r = esc_session_close(c->w->ctx, c->w->st, c->a, c->token, c->token_len)) != ESC_OK) {
		reply_esc(c, r);
		return;
	}
	svc_log(c->w, ESC_LOG_INFO, "req=%s session of '%s' ended (logout)", c->r->id, esc_account_name(c->a));
	if (c->by_cookie)
		clear_cookie(c->r);
	o = json_object();
	reply_json(c->r, 200, o, o == NULL || put(o, "ended", json_true()));
}

/*
 * GET /session: who this request's credentials log in and how; for a
 * browser session also its CSRF token, so the console finds it again after
 * a reload (no other origin can read this answer: no CORS).
 */
static void
api_session_get(struct api_call *c)
{
	static const char *const none[] = {NULL};
	char csrf[API_CSRF_LEN + 1];
	json_t *o;
	const char *how = c->by_cookie	     ? "cookie"
			  : c->token != NULL ? "token"
			  : c->by_cert	     ? "certificate"
					     : "password";
	int bad;

	if (!params_ok(c, none))
		return;
	bad = (o = json_object()) == NULL || put(o, "name", jstr(esc_account_name(c->a))) ||
	      put(o, "roles", api_roles_json(esc_account_roles(c->a))) || put(o, "auth", json_string(how)) ||
	      put(o, "idle_timeout", json_integer(c->w->session_idle));
	if (!bad && c->by_cookie)
		bad = csrf_of(c->token, c->token_len, csrf) != 0 || put(o, "csrf", json_string(csrf));
	OPENSSL_cleanse(csrf, sizeof(csrf));
	reply_json(c->r, 200, o, bad);
}

/* Wipe a password field of a parsed body (the document owns the string). */
static void
wipe_field(const char *v)
{
	if (v != NULL)
		OPENSSL_cleanse((char *)(uintptr_t)v, strlen(v));
}

/*
 * POST /account/password {"current", "new"}: the authenticated account
 * changes its own password, proving the current one (a session holder too),
 * counted with the failed logins.  The one call an account whose password
 * an administrator set may make.  Every session of the account ends.
 */
static void
api_account_password(struct api_call *c)
{
	static const char *const none[] = {NULL};
	const char *cur = NULL, *neu = NULL;
	struct api_field f[] = {
		{"current", 1, 0, &cur},
		{"new", 1, 0, &neu},
	};
	struct esc_secret *scur = NULL, *snew = NULL;
	const char *name = esc_account_name(c->a);
	json_t *doc, *o;
	char msg[160];
	enum esc_err r;

	if (!params_ok(c, none) || (doc = parse_body(c, f, sizeof(f) / sizeof(f[0]))) == NULL)
		return;
	r = esc_secret_new(c->w->ctx, cur, strlen(cur), &scur);
	if (r == ESC_OK)
		r = esc_secret_new(c->w->ctx, neu, strlen(neu), &snew);
	wipe_field(cur);
	wipe_field(neu);
	json_decref(doc);
	if (r != ESC_OK) {
		reply_esc(c, r);
		goto out;
	}
	if (svc_login_wait(c->r, name, msg, sizeof(msg)) > 0) {
		reply_error(c->r, 429, msg, ESC_ERR_AUTH);
		goto out;
	}
	r = esc_account_change_password(c->w->ctx, c->w->st, c->a, scur, snew);
	if (r == ESC_OK || r == ESC_ERR_AUTH)
		svc_login_result(c->r, name, r == ESC_OK);
	if (r != ESC_OK) {
		reply_esc(c, r);
		goto out;
	}
	o = json_object();
	reply_json(c->r, 200, o,
		   o == NULL || put(o, "name", jstr(name)) || put(o, "password_changed", json_true()) ||
			   put(o, "sessions_ended", json_true()));
out:
	esc_secret_free(scur);
	esc_secret_free(snew);
}

/* ---- routing -------------------------------------------------------------------------------------------------- */

static const struct route {
	const char *pattern; /* "{id}" matches a request id */
	enum evhttp_cmd_type method;
	void (*fn)(struct api_call *c);
} routes[] = {
	{"/whoami", EVHTTP_REQ_GET, api_whoami},
	{"/session", EVHTTP_REQ_POST, api_session_open},
	{"/session", EVHTTP_REQ_DELETE, api_session_close},
	{"/session", EVHTTP_REQ_GET, api_session_get},
	{"/account/password", EVHTTP_REQ_POST, api_account_password},
	{"/records", EVHTTP_REQ_GET, api_records},
	{"/kras", EVHTTP_REQ_GET, api_kras},
	{"/kras/health", EVHTTP_REQ_GET, api_kras_health},
	{"/recoveries", EVHTTP_REQ_GET, api_recoveries_list},
	{"/recoveries", EVHTTP_REQ_POST, api_recoveries_create},
	{"/recoveries/{id}", EVHTTP_REQ_GET, api_recovery_get},
	{"/recoveries/{id}/approve", EVHTTP_REQ_POST, api_recovery_approve},
	{"/recoveries/{id}/release", EVHTTP_REQ_POST, api_recovery_release},
	{"/recoveries/{id}/package", EVHTTP_REQ_GET, api_recovery_package},
	{"/recoveries/{id}/share", EVHTTP_REQ_GET, api_recovery_share},
	{"/recoveries/{id}/contribute", EVHTTP_REQ_POST, api_recovery_contribute},
	{"/recoveries/{id}/complete", EVHTTP_REQ_POST, api_recovery_complete},
	{"/recoveries/{id}/deny", EVHTTP_REQ_POST, api_recovery_deny},
	{"/recoveries/{id}/cancel", EVHTTP_REQ_POST, api_recovery_cancel},
	{"/audit", EVHTTP_REQ_GET, api_audit},
	{"/audit/verify", EVHTTP_REQ_GET, api_audit_verify_chain},
	/* Administration (api_admin.c). */
	{"/accounts", EVHTTP_REQ_GET, api_accounts_list},
	{"/accounts", EVHTTP_REQ_POST, api_accounts_create},
	{"/accounts/{name}/disable", EVHTTP_REQ_POST, api_account_disable},
	{"/accounts/{name}/enable", EVHTTP_REQ_POST, api_account_enable},
	{"/accounts/{name}/scope", EVHTTP_REQ_GET, api_account_scope_get},
	{"/accounts/{name}/scope", EVHTTP_REQ_POST, api_account_scope_set},
	{"/kras", EVHTTP_REQ_POST, api_kras_enroll},
	{"/kras/{name}/prove", EVHTTP_REQ_POST, api_kra_prove},
	{"/kras/{name}/renew", EVHTTP_REQ_POST, api_kra_renew},
	{"/kras/{name}/retire", EVHTTP_REQ_POST, api_kra_retire},
	{"/policy", EVHTTP_REQ_GET, api_policy_get},
	{"/policy/{name}", EVHTTP_REQ_POST, api_policy_set},
	{"/archive", EVHTTP_REQ_POST, api_archive},
	{"/certificates/{name}/revoke", EVHTTP_REQ_POST, api_certificate_revoke},
	{"/crl", EVHTTP_REQ_POST, api_crl},
	{"/enroll-passwords", EVHTTP_REQ_GET, api_enroll_passwords_list},
	{"/enroll-passwords", EVHTTP_REQ_POST, api_enroll_passwords_create},
	{"/audit/checkpoint", EVHTTP_REQ_POST, api_audit_checkpoint},
	{"/audit/checkpoint", EVHTTP_REQ_GET, api_audit_checkpoint_get},
	{"/audit/verify", EVHTTP_REQ_POST, api_audit_verify},
	{"/profiles", EVHTTP_REQ_GET, api_profiles},
	{"/storage-keys", EVHTTP_REQ_GET, api_storage_keys},
	{"/storage-keys/reseal", EVHTTP_REQ_POST, api_storage_reseal},
	{"/rewrap/kra/plan", EVHTTP_REQ_GET, api_rewrap_plan},
	{"/rewrap/kra/batch", EVHTTP_REQ_POST, api_rewrap_batch},
	{"/rewrap/kra/commit", EVHTTP_REQ_POST, api_rewrap_commit},
};

/* A {name} character: letters, digits and . _ @ : + - (no '/', '%', space or control character). */
static int
name_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       strchr("._@:+-", ch) != NULL;
}

/*
 * Does path match pattern?  "{id}" takes 1..18 digits without a leading
 * zero, "{name}" 1..API_NAME_MAX name characters (copied to name).
 */
static int
route_match(const char *pattern, const char *path, long long *id, char *name)
{
	while (*pattern != '\0' && *path != '\0') {
		if (strncmp(pattern, "{name}", 6) == 0) {
			size_t n = 0;

			for (; *path != '\0' && name_char(*path); path++)
				if (n >= API_NAME_MAX)
					return 0;
				else
					name[n++] = *path;
			if (n == 0)
				return 0;
			name[n] = '\0';
			pattern += 6;
			continue;
		}
		if (strncmp(pattern, "{id}", 4) == 0) {
			long long v = 0;
			size_t n = 0;

			if (*path == '0')
				return 0;
			for (; *path >= '0' && *path <= '9'; path++)
				if (++n > 18)
					return 0;
				else
					v = v * 10 + (*path - '0');
			if (n == 0)
				return 0;
			*id = v;
			pattern += 4;
			continue;
		}
		if (*pattern++ != *path++)
			return 0;
	}
	return *pattern == '\0' && *path == '\0';
}

static const char *
method_label(enum evhttp_cmd_type m)
{
	return m == EVHTTP_REQ_GET ? "GET" : m == EVHTTP_REQ_DELETE ? "DELETE" : "POST";
}

/*
 * The account of request c->r's TLS client certificate (no Authorization
 * header was sent): esc_account_cert_login, counted by the failed-login
 * limit of the client's address like a bad token.  Its success is audited
 * once per connection and client_cert_recheck seconds (not per request);
 * the binding and the account are read at every request.  ESC_OK, or an
 * error after replying.
 */
static enum esc_err
authenticate_cert(struct api_call *c)
{
	struct svc_request *r = c->r;
	int audit = svc_account_cert_audit_due(r);
	char msg[160];
	enum esc_err e;

	if (svc_login_wait(r, NULL, msg, sizeof(msg)) > 0) {
		reply_error(r, 429, msg, ESC_ERR_AUTH);
		return ESC_ERR_AUTH;
	}
	e = esc_account_cert_login(c->w->ctx, c->w->st, r->client_cert, c->w->account_crls,
				   audit ? ESC_CERT_LOGIN_AUDIT_OK : 0, &c->a);
	if (e == ESC_ERR_AUTH) {
		svc_login_result(r, NULL, 0);
		svc_log(c->w, ESC_LOG_INFO, "req=%s client certificate refused (the audit trail has the reason)",
			r->id);
		reply_unauthorized(r, 2);
		return e;
	}
	if (e != ESC_OK) {
		reply_esc(c, e);
		return e;
	}
	if (audit)
		svc_account_cert_audited(r);
	c->by_cert = 1;
	svc_log(c->w, audit ? ESC_LOG_INFO : ESC_LOG_DEBUG, "req=%s client certificate SHA256:%s logs in '%s'", r->id,
		esc_account_cert_sha256(c->a), esc_account_name(c->a));
	return ESC_OK;
}

/*
 * The account of request c->r into c->a: a session's bearer token, HTTP
 * Basic (failed-login limits, esc_account_login; policy cert_login_roles
 * may refuse it: 403), or, without an Authorization header, a TLS client
 * certificate bound to the account (authenticate_cert).  An account whose
 * password an administrator set logs in only to POST /account/password;
 * for anything else it is answered 403 "password change required".
 * ESC_OK, or an error after replying.
 */
static enum esc_err
authenticate(struct api_call *c, const char *subpath, char *user, size_t userlen)
{
	struct svc_request *r = c->r;
	struct esc_secret *pw = NULL;
	const char *h = svc_header(r, "Authorization"), *cookie;
	char msg[160];
	unsigned flags = ESC_LOGIN_REMOTE; /* policy cert_login_roles applies to the service's logins */
	size_t n;
	enum esc_err e;
	int auth;

	if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0) {
		for (h += 7; *h == ' '; h++)
			;
		for (n = strnlen(h, ESC_SESSION_TOKEN_LEN + 2); n > 0 && h[n - 1] == ' '; n--)
			;
		/* A bad token costs no password check: only the client's address is counted. */
		if (svc_login_wait(r, NULL, msg, sizeof(msg)) > 0) {
			reply_error(r, 429, msg, ESC_ERR_AUTH);
			return ESC_ERR_AUTH;
		}
		e = esc_session_resume(c->w->ctx, c->w->st, h, n, c->w->session_idle, c->w->session_lifetime, &c->a);
		if (e == ESC_ERR_AUTH) {
			svc_login_result(r, NULL, 0);
			svc_log(c->w, ESC_LOG_INFO, "req=%s session token refused", r->id);
			reply_unauthorized(r, 1);
			return e;
		}
		if (e != ESC_OK) {
			reply_esc(c, e);
			return e;
		}
		c->token = h;
		c->token_len = n;
		svc_log(c->w, ESC_LOG_DEBUG, "req=%s authenticated '%s' by session", r->id, esc_account_name(c->a));
		return ESC_OK;
	}
	if (h == NULL && (cookie = session_cookie(r, &n)) != NULL) {
		/* A browser session (the console): as a bearer token, with the CSRF rules of csrf_ok. */
		if (svc_login_wait(r, NULL, msg, sizeof(msg)) > 0) {
			reply_error(r, 429, msg, ESC_ERR_AUTH);
			return ESC_ERR_AUTH;
		}
		e = esc_session_resume(c->w->ctx, c->w->st, cookie, n, c->w->session_idle, c->w->session_lifetime,
				       &c->a);
		if (e == ESC_ERR_AUTH) {
			svc_login_result(r, NULL, 0);
			svc_log(c->w, ESC_LOG_INFO, "req=%s session cookie refused", r->id);
			if (state_changing(r) && !origin_ok(r)) {
				csrf_refuse(
					c, "the Origin is not the service's own (and the session cookie is not valid)");
				return e;
			}
			clear_cookie(r);
			reply_unauthorized(r, 1);
			return e;
		}
		if (e != ESC_OK) {
			reply_esc(c, e);
			return e;
		}
		c->token = cookie;
		c->token_len = n;
		c->by_cookie = 1;
		svc_log(c->w, ESC_LOG_DEBUG, "req=%s authenticated '%s' by session cookie", r->id,
			esc_account_name(c->a));
		return ESC_OK;
	}
	if (h == NULL && r->client_cert != NULL)
		return authenticate_cert(c);
	auth = svc_basic_auth(r, user, userlen, &pw);
	if (auth != 1) {
		esc_secret_free(pw);
		/* A cross-site form post carries no credentials (SameSite=Strict): refused and audited as such. */
		if (auth == 0 && state_changing(r) && !origin_ok(r)) {
			svc_login_result(r, NULL, 0); /* counted against the address, as a bad token */
			csrf_refuse(c, "the Origin is not the service's own (and no credentials were sent)");
			return ESC_ERR_DENIED;
		}
		reply_unauthorized(r, 0);
		return ESC_ERR_AUTH;
	}
	if (svc_login_wait(r, user, msg, sizeof(msg)) > 0) {
		esc_secret_free(pw);
		reply_error(r, 429, msg, ESC_ERR_AUTH);
		return ESC_ERR_AUTH;
	}
	/* Only the password change takes a password that must be changed (no 404 is revealed by this). */
	if (r->method == EVHTTP_REQ_POST && strcmp(subpath, "/account/password") == 0)
		flags |= ESC_LOGIN_PASSWORD_CHANGE;
	e = esc_account_login_ex(c->w->ctx, c->w->st, user, pw, flags, &c->a);
	esc_secret_free(pw);
	if (e == ESC_OK || e == ESC_ERR_AUTH || e == ESC_ERR_PASSWORD_CHANGE)
		svc_login_result(r, user, e != ESC_ERR_AUTH);
	if (e == ESC_ERR_AUTH) {
		svc_log(c->w, ESC_LOG_INFO, "req=%s authentication failed", r->id);
		reply_unauthorized(r, 0);
		return e;
	}
	if (e != ESC_OK) {
		reply_esc(c, e); /* PASSWORD_CHANGE, DENIED (cert_login_roles): 403 with its code */
		return e;
	}
	c->by_password = 1;
	/* One line per password verification: what a client that logs in once per task saves. */
	svc_log(c->w, ESC_LOG_INFO, "req=%s password verified for '%s'", r->id, esc_account_name(c->a));
	return ESC_OK;
}

void
svc_api_handle(struct svc_request *r, const char *subpath)
{
	struct api_call c;
	const struct route *hit = NULL;
	char user[API_USER_MAX], allow[32] = "";
	size_t i;
	long long id;
	char name[API_NAME_MAX + 1];
	int matched = 0;

	memset(&c, 0, sizeof(c));
	c.r = r;
	c.w = r->w;
	esc_ctx_clear_error(c.w->ctx);
	if (svc_worker_ready(c.w, r) != 0)
		return;
	/* Every endpoint needs an account: nothing, not even a 404, before authentication. */
	if (authenticate(&c, subpath, user, sizeof(user)) != ESC_OK || !csrf_ok(&c))
		goto out;
	snprintf(r->actor, sizeof(r->actor), "%s", esc_account_name(c.a));
	for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		id = 0;
		name[0] = '\0';
		if (!route_match(routes[i].pattern, subpath, &id, name))
			continue;
		if (!matched) {
			c.id = id;
			memcpy(c.name, name, sizeof(c.name));
		}
		matched = 1;
		snprintf(allow + strlen(allow), sizeof(allow) - strlen(allow), "%s%s", allow[0] ? ", " : "",
			 method_label(routes[i].method));
		if (routes[i].method == r->method)
			hit = &routes[i];
	}
	if (!matched)
		reply_error(r, 404, "no such API resource", ESC_ERR_NOT_FOUND);
	else if (hit == NULL) {
		svc_add_header(r, "Allow", allow);
		reply_error(r, 405, "method not allowed", ESC_ERR_USAGE);
	} else {
		svc_log(c.w, ESC_LOG_DEBUG, "req=%s api %s %s by '%s'", r->id, r->method_name, hit->pattern,
			esc_account_name(c.a));
		hit->fn(&c);
	}
out:
	esc_account_free(c.a);
	OPENSSL_cleanse(user, sizeof(user));
	/* The password or token in libevent's copy of the header: no longer needed (libevent frees it unwiped). */
	{
		const char *h = svc_header(r, "Authorization");

		if (h != NULL)
			OPENSSL_cleanse((char *)(uintptr_t)h, strlen(h));
		if ((h = svc_header(r, "Cookie")) != NULL)
			OPENSSL_cleanse((char *)(uintptr_t)h, strlen(h));
	}
}

/* ---- for the administrative handlers (api_admin.h) ------------------------------------------------------------ */

struct svc_request *
api_call_request(struct api_call *c)
{
	return c->r;
}

struct svc_worker *
api_call_worker(struct api_call *c)
{
	return c->w;
}

const struct esc_account *
api_call_account(struct api_call *c)
{
	return c->a;
}

const char *
api_call_name(struct api_call *c)
{
	return c->name;
}

void
api_reply_json(struct api_call *c, int status, json_t *obj, int built)
{
	reply_json(c->r, status, obj, built);
}

void
api_reply_error(struct api_call *c, int status, const char *reason, enum esc_err e)
{
	reply_error(c->r, status, reason, e);
}

void
api_reply_esc(struct api_call *c, enum esc_err e)
{
	reply_esc(c, e);
}

int
api_params_ok(struct api_call *c, const char *const *allowed)
{
	return params_ok(c, allowed);
}

const char *
api_param(struct api_call *c, const char *name)
{
	return param(c, name);
}

json_t *
api_parse_body(struct api_call *c, const struct api_body_spec *spec, struct api_field *f, size_t nf)
{
	struct svc_request *r = c->r;
	json_t *doc = NULL;
	char msg[256];
	int status;

	status = api_body_parse_spec(r->body, r->bodylen, svc_content_type_is(r, "application/json"), spec, f, nf, &doc,
				     msg, sizeof(msg));
	if (status == 0)
		return doc;
	reply_error(r, status, msg, status == 500 ? ESC_ERR_NOMEM : ESC_ERR_USAGE);
	return NULL;
}

int
api_no_input(struct api_call *c)
{
	return no_input(c);
}

json_t *
api_jstr(const char *s)
{
	return jstr(s);
}

int
api_put(json_t *obj, const char *key, json_t *v)
{
	return put(obj, key, v);
}

json_t *
api_jb64(const unsigned char *der, size_t len)
{
	return jb64(der, len);
}

json_t *
api_roles_json(unsigned roles)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; a != NULL && i < sizeof(role_names) / sizeof(role_names[0]); i++)
		if ((roles & role_names[i].role) && json_array_append_new(a, json_string(role_names[i].name)) != 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}
