/*
 * p11escrowd — the administrative endpoints of the JSON API (api_admin.h,
 * docs/api.md): what an administrator, a certificate manager or an auditor
 * did with the local CLI and the database credentials, now through the
 * service.  Each handler checks its request's shape and calls the library
 * function the local command calls, with the authenticated account: the
 * roles, the audit events and the refusals are the library's.
 *
 * Secrets that arrive in a body (a new account's password, a PKCS#12
 * password, an unencrypted PEM key) are copied into secure memory and
 * wiped in the parsed document before it is freed; the raw body is wiped
 * by svc_request_done.  An enrollment password is answered with
 * svc_reply_secret.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/archive.h>
#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/enroll.h>
#include <p11escrow/import.h>
#include <p11escrow/kra.h>
#include <p11escrow/pin.h>
#include <p11escrow/policy.h>
#include <p11escrow/revoke.h>
#include <p11escrow/storage.h>

#include "api_admin.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const char *const no_params[] = {NULL};

/* A decimal in min..max, else -1. */
static int
small_int(const char *s, int min, int max)
{
	long v = 0;

	if (*s == '\0' || strlen(s) > 6)
		return -1;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return -1;
		else
			v = v * 10 + (*s - '0');
	return v < min || v > max ? -1 : (int)v;
}

/* jansson's free: wipe the whole block (malloc'ed by malloc itself, so free() of json_dumps' result stays right). */
static void
wiping_free(void *p)
{
	if (p == NULL)
		return;
	OPENSSL_cleanse(p, malloc_usable_size(p));
	free(p);
}

void
api_json_wipe_on_free(void)
{
	json_set_alloc_funcs(malloc, wiping_free);
}

/* Overwrite the string member key of doc (a secret the client sent) before the document is freed. */
static void
wipe_member(json_t *doc, const char *key)
{
	json_t *v = json_object_get(doc, key);

	if (json_is_string(v))
		OPENSSL_cleanse((void *)json_string_value(v), json_string_length(v));
}

/* The array {key: [...]} of obj built; 0 or -1. */
static int
put_list(json_t *obj, const char *key, json_t *list)
{
	return api_put(obj, key, list);
}

/* ---- accounts ------------------------------------------------------------------------------------------------- */

void
api_accounts_list(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	struct esc_account_info *list = NULL;
	json_t *o = NULL, *arr = NULL, *e;
	size_t n = 0, i;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params))
		return;
	if ((r = esc_account_list(w->ctx, w->st, api_call_account(c), &list, &n)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (arr = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++) {
		e = json_object();
		if (e == NULL || api_put(e, "name", api_jstr(list[i].name)) ||
		    api_put(e, "roles", api_roles_json(list[i].roles)) ||
		    api_put(e, "kra", list[i].kra_name[0] ? api_jstr(list[i].kra_name) : json_null()) ||
		    api_put(e, "disabled", json_boolean(list[i].disabled)) ||
		    api_put(e, "scope", api_jstr(list[i].scope)) || json_array_append(arr, e))
			bad = 1;
		json_decref(e);
	}
	if (!bad)
		bad = put_list(o, "accounts", json_incref(arr));
	json_decref(arr);
	free(list);
	api_reply_json(c, 200, o, bad);
}

void
api_accounts_create(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *name, *roles_text, *kra, *password;
	struct api_field f[] = {
		{"name", 1, 0, &name},
		{"roles", 1, 0, &roles_text},
		{"kra", 0, 1, &kra},
		{"password", 1, 0, &password},
	};
	struct esc_secret *pw = NULL;
	char formatted[64];
	unsigned roles = 0;
	json_t *doc, *o = NULL;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	r = esc_secret_new(w->ctx, password, strlen(password), &pw);
	wipe_member(doc, "password");
	if (r == ESC_OK)
		r = esc_roles_parse(w->ctx, roles_text, &roles);
	/* An administrator: the service never creates the first one (that is setup's, on the service host). */
	if (r == ESC_OK)
		r = esc_account_create(w->ctx, w->st, api_call_account(c), name, roles, kra, pw);
	esc_secret_free(pw);
	if (r != ESC_OK) {
		json_decref(doc);
		api_reply_esc(c, r);
		return;
	}
	esc_roles_format(roles, formatted, sizeof(formatted));
	bad = (o = json_object()) == NULL || api_put(o, "name", api_jstr(name)) ||
	      api_put(o, "roles", api_roles_json(roles)) || api_put(o, "kra", kra ? api_jstr(kra) : json_null()) ||
	      api_put(o, "disabled", json_false());
	json_decref(doc);
	api_reply_json(c, 201, o, bad);
}

static void
set_disabled(struct api_call *c, int disabled)
{
	struct svc_worker *w = api_call_worker(c);
	json_t *o;
	enum esc_err r;
	int bad;

	if (!api_no_input(c))
		return;
	if ((r = esc_account_set_disabled(w->ctx, w->st, api_call_account(c), api_call_name(c), disabled)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "name", api_jstr(api_call_name(c))) ||
	      api_put(o, "disabled", json_boolean(disabled));
	api_reply_json(c, 200, o, bad);
}

void
api_account_disable(struct api_call *c)
{
	set_disabled(c, 1);
}

void
api_account_enable(struct api_call *c)
{
	set_disabled(c, 0);
}

/* Reply with account name's scope as it is now. */
static void
reply_scope(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	struct esc_scope_item *items = NULL;
	json_t *o = NULL, *profiles = NULL, *groups = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int bad;

	if ((r = esc_account_get_scope(w->ctx, w->st, api_call_account(c), api_call_name(c), &items, &n)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (profiles = json_array()) == NULL || (groups = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++)
		bad = json_array_append_new(strcmp(items[i].kind, "profile") == 0 ? profiles : groups,
					    api_jstr(items[i].value)) != 0;
	free(items);
	if (bad) {
		json_decref(profiles);
		json_decref(groups);
	} else {
		bad = api_put(o, "name", api_jstr(api_call_name(c))) || api_put(o, "scoped", json_boolean(n > 0)) ||
		      api_put(o, "profiles", profiles) || api_put(o, "groups", groups);
	}
	api_reply_json(c, 200, o, bad);
}

void
api_account_scope_get(struct api_call *c)
{
	if (api_params_ok(c, no_params))
		reply_scope(c);
}

void
api_account_scope_set(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *profiles[API_LIST_MAX], *groups[API_LIST_MAX];
	size_t np = 0, ng = 0;
	int has_p = 0, has_g = 0;
	struct api_list lists[] = {
		{"profiles", ESC_SCOPE_MAX, profiles, &np, &has_p},
		{"groups", ESC_SCOPE_MAX, groups, &ng, &has_g},
	};
	struct api_body_spec spec = {0, NULL, 0, lists, N(lists)};
	json_t *doc;
	enum esc_err r;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, &spec, NULL, 0)) == NULL)
		return;
	/* An empty body must not clear a scope by accident: clearing is saying [] and []. */
	if (!has_p && !has_g) {
		json_decref(doc);
		api_reply_error(c, 400, "give 'profiles' or 'groups' (both [] clears the scope)", ESC_ERR_USAGE);
		return;
	}
	r = esc_account_set_scope(w->ctx, w->st, api_call_account(c), api_call_name(c), profiles, np, groups, ng);
	json_decref(doc);
	if (r != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	reply_scope(c);
}

/* ---- KRAs ----------------------------------------------------------------------------------------------------- */

void
api_kra_retire(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	json_t *o;
	enum esc_err r;
	int bad;

	if (!api_no_input(c))
		return;
	if ((r = esc_kra_retire(w->ctx, w->st, api_call_account(c), api_call_name(c))) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "name", api_jstr(api_call_name(c))) ||
	      api_put(o, "state", json_string("retired"));
	api_reply_json(c, 200, o, bad);
}

/* ---- policy --------------------------------------------------------------------------------------------------- */

static json_t *
policy_json(const struct esc_policy_item *p)
{
	json_t *e = json_object();

	if (e == NULL || api_put(e, "key", api_jstr(p->key)) || api_put(e, "value", api_jstr(p->value)) ||
	    api_put(e, "updated_by", p->updated_by[0] ? api_jstr(p->updated_by) : json_null()) ||
	    api_put(e, "updated_at", p->updated_at[0] ? api_jstr(p->updated_at) : json_null())) {
		json_decref(e);
		return NULL;
	}
	return e;
}

/* Reply with every policy value, or (key non-NULL) with that one. */
static void
reply_policy(struct api_call *c, const char *key)
{
	struct svc_worker *w = api_call_worker(c);
	struct esc_policy_item *items = NULL;
	json_t *o = NULL, *arr = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int bad = 0;

	if ((r = esc_policy_list(w->ctx, w->st, &items, &n)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	if (key != NULL) {
		for (i = 0; i < n && strcmp(items[i].key, key) != 0; i++)
			;
		o = i < n ? policy_json(&items[i]) : NULL;
		free(items);
		api_reply_json(c, 200, o, o == NULL);
		return;
	}
	bad = (o = json_object()) == NULL || (arr = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++)
		bad = json_array_append_new(arr, policy_json(&items[i])) != 0;
	if (!bad)
		bad = put_list(o, "policy", json_incref(arr));
	json_decref(arr);
	free(items);
	api_reply_json(c, 200, o, bad);
}

void
api_policy_get(struct api_call *c)
{
	if (api_params_ok(c, no_params))
		reply_policy(c, NULL);
}

void
api_policy_set(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *value;
	struct api_field f[] = {{"value", 1, 0, &value}};
	json_t *doc;
	enum esc_err r;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	r = esc_policy_set(w->ctx, w->st, api_call_account(c), api_call_name(c), value);
	json_decref(doc);
	if (r != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	reply_policy(c, api_call_name(c));
}

/* ---- manual archival ------------------------------------------------------------------------------------------ */

/*
 * Strict base64 (no whitespace, padded) of field what into secure memory:
 * an unencrypted PEM key is a secret.  Returns 0, or -1 after replying 400.
 */
static int
b64_secure(struct api_call *c, const char *what, const char *in, unsigned char **out, size_t *outlen)
{
	size_t len = strlen(in), i, pad = 0;
	unsigned char *buf;
	char msg[128];
	int n;

	for (i = 0; i < len; i++) {
		char ch = in[i];

		if (ch == '=' && i + 2 >= len && (i + 1 == len || in[i + 1] == '='))
			pad++;
		else if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
			   ch == '+' || ch == '/') ||
			 pad > 0)
			break;
	}
	if (len == 0 || len % 4 != 0 || i != len) {
		snprintf(msg, sizeof(msg), "field '%s' is not base64 (one line, padded)", what);
		api_reply_error(c, 400, msg, ESC_ERR_BAD_INPUT);
		return -1;
	}
	if ((buf = OPENSSL_secure_malloc(len / 4 * 3)) == NULL) {
		api_reply_error(c, 500, "internal error; the operator's log has the details", ESC_ERR_NOMEM);
		return -1;
	}
	if ((n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)len)) < 0 || (size_t)n < pad) {
		OPENSSL_secure_clear_free(buf, len / 4 * 3);
		snprintf(msg, sizeof(msg), "field '%s' is not base64", what);
		api_reply_error(c, 400, msg, ESC_ERR_BAD_INPUT);
		return -1;
	}
	*out = buf;
	*outlen = (size_t)n - pad;
	return 0;
}

/* Free what b64_secure returned. */
static void
b64_secure_free(unsigned char *buf, size_t len)
{
	if (buf != NULL)
		OPENSSL_secure_clear_free(buf, (len + 2) / 3 * 3);
}

void
api_archive(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const struct esc_account *a = api_call_account(c);
	const char *name, *file, *cert_name, *cert_file, *password;
	struct api_field f[] = {
		{"name", 1, 0, &name},	    {"file", 1, 0, &file},	   {"cert_name", 0, 1, &cert_name},
		{"cert", 0, 1, &cert_file}, {"password", 0, 1, &password},
	};
	/* One file per request, up to the service's max_body: the body's own limit here. */
	struct api_body_spec spec = {w->max_body, "file", w->max_body, NULL, 0};
	struct esc_secret *pw = NULL;
	struct esc_archive_info info;
	unsigned char *kbuf = NULL, *cbuf = NULL;
	size_t klen = 0, clen = 0;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	json_t *doc, *o = NULL;
	enum esc_err r;
	int bad, status;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, &spec, f, N(f))) == NULL)
		return;
	memset(&info, 0, sizeof(info));
	/* Importing is an administrator's, as locally: refuse before any secret is decoded. */
	if ((r = esc_account_require(w->ctx, a, ESC_ROLE_ADMIN)) != ESC_OK)
		goto fail;
	if ((cert_file == NULL) != (cert_name == NULL)) {
		api_reply_error(c, 400, "'cert' and 'cert_name' go together", ESC_ERR_USAGE);
		goto out;
	}
	if (password != NULL && (r = esc_secret_new(w->ctx, password, strlen(password), &pw)) != ESC_OK)
		goto fail;
	if (b64_secure(c, "file", file, &kbuf, &klen) != 0 ||
	    (cert_file != NULL && b64_secure(c, "cert", cert_file, &cbuf, &clen) != 0))
		goto out;
	/* The library's bounded parser, then every archival check is esc_archive_key's. */
	if (cert_file != NULL)
		r = esc_import_load_pair(w->ctx, kbuf, klen, name, cbuf, clen, cert_name, pw, &key, &cert);
	else
		r = esc_import_load(w->ctx, kbuf, klen, name, pw, &key, &cert);
	if (r == ESC_OK)
		r = esc_archive_key(w->ctx, w->st, esc_account_name(a), cert, key, ESC_SOURCE_IMPORT, &info);
	if (r != ESC_OK)
		goto fail;
	bad = (o = json_object()) == NULL || api_put(o, "name", api_jstr(name)) ||
	      api_put(o, "record", api_jstr(info.id)) || api_put(o, "kras", api_jstr(info.kras)) ||
	      api_put(o, "foreign", json_boolean(info.foreign));
	api_reply_json(c, 201, o, bad);
	goto out;
fail:
	/*
	 * The file's password is the client's input, not the account's or the
	 * token's: a missing or wrong one is 400 (its code tells the CLI to ask
	 * for it), not 401 or 503.
	 */
	status = r == ESC_ERR_PIN_MISSING || r == ESC_ERR_AUTH ? 400 : 0;
	if (status != 0)
		api_reply_error(c, status, esc_ctx_errmsg(w->ctx), r);
	else
		api_reply_esc(c, r);
out:
	EVP_PKEY_free(key);
	X509_free(cert);
	b64_secure_free(kbuf, klen);
	b64_secure_free(cbuf, clen);
	esc_secret_free(pw);
	wipe_member(doc, "password");
	wipe_member(doc, "file");
	json_decref(doc);
}

/* ---- KRA enrollment through the service ----------------------------------------------------------------------- */

/* A challenge id as the API carries it: a decimal string of a positive bigint; -1 if it is not one. */
static long long
challenge_id(const char *s)
{
	long long v = 0;

	if (*s == '\0' || strlen(s) > 18 || *s == '0')
		return -1;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return -1;
		else
			v = v * 10 + (*s - '0');
	return v;
}

/* 201 with a proof-of-possession challenge: KRA name, challenge id, the sealed challenge, its expiry. */
static void
reply_challenge(struct api_call *c, const char *name, long long id, const unsigned char *challenge,
		size_t challenge_len, const char *expires)
{
	char idtext[24];
	json_t *o;
	int bad;

	snprintf(idtext, sizeof(idtext), "%lld", id);
	bad = (o = json_object()) == NULL || api_put(o, "name", api_jstr(name)) ||
	      api_put(o, "challenge_id", api_jstr(idtext)) ||
	      api_put(o, "challenge", api_jb64(challenge, challenge_len)) || api_put(o, "expires", api_jstr(expires));
	api_reply_json(c, 201, o, bad);
}

/*
 * POST /kras: an administrator offers a key generated on a KRA card, or one
 * the card held already (origin "adopted"); the answer is a challenge
 * sealed to it (esc_kra_enroll_begin).  Nothing is certified or registered
 * yet.
 */
void
api_kras_enroll(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *name, *label, *serial, *uri, *key_type, *recipient, *public_key, *days_text, *origin, *reason;
	struct api_field f[] = {
		{"name", 1, 0, &name},
		{"token_label", 1, 0, &label},
		{"token_serial", 1, 0, &serial},
		{"key_uri", 1, 0, &uri},
		{"key_type", 1, 0, &key_type},
		{"recipient", 1, 0, &recipient},
		{"public_key", 1, 0, &public_key},
		{"days", 0, 1, &days_text},
		{"origin", 0, 1, &origin},
		{"recipient_reason", 0, 1, &reason},
	};
	struct esc_kra_offer offer;
	unsigned char *spki = NULL, *challenge = NULL;
	size_t spki_len = 0, challenge_len = 0;
	char expires[40] = "";
	long long id = 0;
	json_t *doc;
	enum esc_err r;
	int days = 730;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if (days_text != NULL && (days = small_int(days_text, 1, 36500)) < 0) {
		api_reply_error(c, 400, "days must be 1..36500", ESC_ERR_USAGE);
		goto out;
	}
	if (b64_secure(c, "public_key", public_key, &spki, &spki_len) != 0)
		goto out;
	offer = (struct esc_kra_offer){name, label,    serial, uri,    key_type, recipient,
				       spki, spki_len, days,   origin, reason};
	if ((r = esc_kra_enroll_begin(w->ctx, w->st, api_call_account(c), &offer, &id, &challenge, &challenge_len,
				      expires, sizeof(expires))) != ESC_OK) {
		/* The key URI is the client's input here, not the service's configuration: 400, not 500. */
		if (r == ESC_ERR_URI)
			api_reply_error(c, 400, esc_ctx_errmsg(w->ctx), r);
		else
			api_reply_esc(c, r);
		goto out;
	}
	reply_challenge(c, name, id, challenge, challenge_len, expires);
out:
	free(challenge);
	b64_secure_free(spki, spki_len);
	json_decref(doc);
}

/*
 * POST /kras/{name}/renew: an administrator offers the public key on KRA
 * name's card for a new certificate for the same key; the answer is a
 * challenge sealed to it (esc_kra_renew_begin), answered at
 * POST /kras/{name}/prove as an enrollment's.  Nothing changes yet.
 */
void
api_kra_renew(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *public_key, *days_text;
	struct api_field f[] = {
		{"public_key", 1, 0, &public_key},
		{"days", 0, 1, &days_text},
	};
	unsigned char *spki = NULL, *challenge = NULL;
	size_t spki_len = 0, challenge_len = 0;
	char expires[40] = "";
	long long id = 0;
	json_t *doc;
	enum esc_err r;
	int days = 730;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if (days_text != NULL && (days = small_int(days_text, 1, 36500)) < 0) {
		api_reply_error(c, 400, "days must be 1..36500", ESC_ERR_USAGE);
		goto out;
	}
	if (b64_secure(c, "public_key", public_key, &spki, &spki_len) != 0)
		goto out;
	if ((r = esc_kra_renew_begin(w->ctx, w->st, api_call_account(c), api_call_name(c), spki, spki_len, days, &id,
				     &challenge, &challenge_len, expires, sizeof(expires))) != ESC_OK) {
		api_reply_esc(c, r);
		goto out;
	}
	reply_challenge(c, api_call_name(c), id, challenge, challenge_len, expires);
out:
	free(challenge);
	b64_secure_free(spki, spki_len);
	json_decref(doc);
}

/*
 * POST /kras/{name}/prove: the challenge's secret, opened on the card.
 * Only a right answer has the CA (this worker's keeper) certify the key
 * and registers the KRA (esc_kra_enroll_prove); the answer carries the
 * certificate for the card.
 */
void
api_kra_prove(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *id_text, *secret_text;
	struct api_field f[] = {
		{"challenge_id", 1, 0, &id_text},
		{"secret", 1, 0, &secret_text},
	};
	unsigned char *secret = NULL, *cert = NULL;
	size_t secret_len = 0, cert_len = 0;
	struct esc_kra k;
	long long id;
	json_t *doc, *o = NULL;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if ((id = challenge_id(id_text)) < 0) {
		api_reply_error(c, 400, "challenge_id must be the decimal number POST /kras answered", ESC_ERR_USAGE);
		goto out;
	}
	if (b64_secure(c, "secret", secret_text, &secret, &secret_len) != 0)
		goto out;
	/* Certified on this worker's CA token session, as a CRL is signed. */
	if (w->keeper == NULL)
		r = ESC_ERR_TOKEN_NOT_FOUND; /* svc_worker_ready checked it; a lost token is a 503 */
	else
		r = esc_keeper_kra_prove(w->ctx, w->keeper, w->st, api_call_account(c), api_call_name(c), id, secret,
					 secret_len, &k, &cert, &cert_len);
	if (r != ESC_OK) {
		api_reply_esc(c, r);
		goto out;
	}
	bad = (o = json_object()) == NULL || api_put(o, "name", api_jstr(k.name)) ||
	      api_put(o, "state", api_jstr(k.state)) || api_put(o, "key_type", api_jstr(k.key_type)) ||
	      api_put(o, "recipient", api_jstr(k.recipient)) || api_put(o, "cert_serial", api_jstr(k.cert_serial)) ||
	      api_put(o, "not_after", api_jstr(k.not_after)) || api_put(o, "origin", api_jstr(k.origin)) ||
	      api_put(o, "recipient_reason", api_jstr(k.recipient_reason)) ||
	      api_put(o, "token_label", api_jstr(k.token_label)) ||
	      api_put(o, "token_serial", api_jstr(k.token_serial)) || api_put(o, "key_uri", api_jstr(k.key_uri)) ||
	      api_put(o, "certificate", api_jb64(cert, cert_len));
	api_reply_json(c, 201, o, bad);
out:
	free(cert);
	b64_secure_free(secret, secret_len);
	wipe_member(doc, "secret");
	json_decref(doc);
}

/* ---- revocation and CRLs -------------------------------------------------------------------------------------- */

void
api_certificate_revoke(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *reason;
	struct api_field f[] = {{"reason", 1, 0, &reason}};
	json_t *doc, *o = NULL;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if ((r = esc_cert_revoke(w->ctx, w->st, api_call_account(c), api_call_name(c), reason)) != ESC_OK) {
		json_decref(doc);
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "serial", api_jstr(api_call_name(c))) ||
	      api_put(o, "reason", api_jstr(reason));
	json_decref(doc);
	api_reply_json(c, 200, o, bad);
}

void
api_crl(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *days_text;
	struct api_field f[] = {{"days", 0, 1, &days_text}};
	unsigned char *der = NULL;
	X509_CRL *crl = NULL;
	json_t *doc, *o = NULL;
	enum esc_err r;
	int days = esc_crl_default_days(api_call_worker(c)->ctx), len, bad;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if (days_text != NULL && (days = small_int(days_text, 1, 366)) < 0) {
		json_decref(doc);
		api_reply_error(c, 400, "days must be 1..366", ESC_ERR_USAGE);
		return;
	}
	json_decref(doc);
	/* Signed by the keeper and published as the current CRL, which GET /crl then serves. */
	if (w->keeper == NULL)
		r = ESC_ERR_TOKEN_NOT_FOUND; /* svc_worker_ready checked it; a lost token is a 503 */
	else
		r = esc_keeper_sign_crl(w->ctx, w->keeper, w->st, api_call_account(c), days, &crl);
	if (r != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	if ((len = i2d_X509_CRL(crl, &der)) <= 0) {
		X509_CRL_free(crl);
		api_reply_json(c, 500, NULL, 1);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "crl", api_jb64(der, (size_t)len)) ||
	      api_put(o, "revoked", json_integer(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)))) ||
	      api_put(o, "number", json_integer(svc_crl_number(crl)));
	OPENSSL_free(der);
	X509_CRL_free(crl);
	api_reply_json(c, 200, o, bad);
}

/* ---- enrollment passwords ------------------------------------------------------------------------------------- */

static json_t *
otp_json(const struct esc_otp_info *p)
{
	json_t *e = json_object();

	if (e == NULL || api_put(e, "name", api_jstr(p->name)) || api_put(e, "state", api_jstr(p->state)) ||
	    api_put(e, "expires", api_jstr(p->expires)) || api_put(e, "profile", api_jstr(p->profile)) ||
	    api_put(e, "subject", api_jstr(p->subject)) || api_put(e, "created_by", api_jstr(p->created_by)) ||
	    api_put(e, "created", api_jstr(p->created)) ||
	    api_put(e, "used", p->used[0] ? api_jstr(p->used) : json_null())) {
		json_decref(e);
		return NULL;
	}
	return e;
}

void
api_enroll_passwords_list(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	struct esc_otp_info *info = NULL;
	json_t *o = NULL, *arr = NULL;
	size_t n = 0, i;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params))
		return;
	if ((r = esc_otp_list(w->ctx, w->st, api_call_account(c), NULL, &info, &n)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (arr = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++)
		bad = json_array_append_new(arr, otp_json(&info[i])) != 0;
	if (!bad)
		bad = put_list(o, "enroll_passwords", json_incref(arr));
	json_decref(arr);
	free(info);
	api_reply_json(c, 200, o, bad);
}

void
api_enroll_passwords_create(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	struct svc_request *rq = api_call_request(c);
	const char *subject, *profile, *hours_text;
	struct api_field f[] = {
		{"subject", 1, 0, &subject},
		{"profile", 0, 1, &profile},
		{"hours", 0, 1, &hours_text},
	};
	struct esc_secret *pw = NULL;
	struct esc_otp_info *info = NULL;
	unsigned char *body = NULL;
	char *name = NULL, *text = NULL;
	size_t n = 0, len = 0;
	json_t *doc, *o = NULL;
	enum esc_err r;
	int hours = 24;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if (hours_text != NULL && (hours = small_int(hours_text, 1, 720)) < 0) {
		api_reply_error(c, 400, "hours must be 1..720", ESC_ERR_USAGE);
		goto out;
	}
	if ((r = esc_otp_create(w->ctx, w->st, api_call_account(c), subject, profile, hours, &name, &pw)) != ESC_OK) {
		api_reply_esc(c, r);
		goto out;
	}
	/* The expiry as the database set it. */
	if (esc_otp_list(w->ctx, w->st, api_call_account(c), name, &info, &n) != ESC_OK || n != 1 ||
	    (o = otp_json(&info[0])) == NULL ||
	    api_put(o, "password", json_stringn(esc_secret_str(pw), esc_secret_len(pw))) ||
	    (text = json_dumps(o, JSON_COMPACT)) == NULL || (len = strlen(text)) == 0 ||
	    (body = OPENSSL_secure_malloc(len)) == NULL) {
		/* The password exists (hashed) but cannot be shown: it is useless, nobody knows it. */
		svc_log(w, ESC_LOG_ERROR, "req=%s enrollment password %s created but not answered", rq->id, name);
		api_reply_json(c, 500, NULL, 1);
		goto out;
	}
	memcpy(body, text, len);
	svc_add_header(rq, "Cache-Control", "no-store");
	svc_reply_secret(rq, 201, "application/json", body, len); /* takes body */
out:
	if (text != NULL) {
		OPENSSL_cleanse(text, strlen(text));
		free(text);
	}
	if (o != NULL)
		wipe_member(o, "password");
	json_decref(o);
	free(info);
	free(name);
	esc_secret_free(pw);
	json_decref(doc);
}

/* ---- audit checkpoint ----------------------------------------------------------------------------------------- */

void
api_audit_checkpoint(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	long long id = 0;
	char *text = NULL;
	json_t *o;
	enum esc_err r;
	int bad;

	if (!api_no_input(c))
		return;
	/* Signed with the audit key on this worker's CA token session. */
	if (w->keeper == NULL)
		r = ESC_ERR_TOKEN_NOT_FOUND; /* svc_worker_ready checked it; a lost token is a 503 */
	else
		r = esc_keeper_checkpoint(w->ctx, w->keeper, w->st, api_call_account(c), 0, 0, &id);
	if (r != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	svc_checkpoint_published(w, id);
	/* The file form too, for the caller to keep off-host (audit checkpoint --export). */
	if ((r = esc_audit_checkpoint_export(w->ctx, w->st, id, 1, &text, NULL)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "event", json_integer(id)) ||
	      api_put(o, "checkpoint", api_jstr(text));
	free(text);
	api_reply_json(c, 200, o, bad);
}

/* A verification's finding (the database rolled back, the trail or a checkpoint altered) is a 409 with the reason. */
static void
reply_finding(struct api_call *c, enum esc_err r)
{
	struct svc_worker *w = api_call_worker(c);

	if (r != ESC_ERR_ROLLED_BACK && r != ESC_ERR_TAMPERED) {
		api_reply_esc(c, r);
		return;
	}
	svc_log(w, ESC_LOG_WARN, "audit verification failed: %s", esc_ctx_errmsg(w->ctx));
	api_reply_error(c, 409, esc_ctx_errmsg(w->ctx), r);
}

/* GET /audit/checkpoint: the newest checkpoint in the file form (administrators and auditors). */
void
api_audit_checkpoint_get(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	struct esc_audit_anchor a;
	char *text = NULL;
	json_t *o;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params))
		return;
	if ((r = esc_audit_checkpoint_export_by(w->ctx, w->st, api_call_account(c), 0, &text, &a)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "event", json_integer(a.event)) ||
	      api_put(o, "time", api_jstr(a.at)) || api_put(o, "checkpoint", api_jstr(text));
	free(text);
	api_reply_json(c, 200, o, bad);
}

/*
 * POST /audit/verify {"checkpoint": TEXT}: check this database against a
 * checkpoint kept outside it (administrators and auditors; audited).  Two
 * short queries: the whole chain (esc_audit_verify, linear in the events)
 * is verified on the service host, not in a worker.
 */
void
api_audit_verify(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *text = NULL;
	struct api_field f[] = {{"checkpoint", 1, 0, &text}};
	struct api_body_spec spec = {2 * ESC_AUDIT_CHECKPOINT_MAX, "checkpoint", ESC_AUDIT_CHECKPOINT_MAX, NULL, 0};
	struct esc_audit_anchor a;
	json_t *doc, *o = NULL;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, &spec, f, N(f))) == NULL)
		return;
	r = esc_audit_verify_checkpoint_by(w->ctx, w->st, api_call_account(c), text, strlen(text), &a);
	json_decref(doc);
	if (r != ESC_OK) {
		reply_finding(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || api_put(o, "event", json_integer(a.event)) ||
	      api_put(o, "time", api_jstr(a.at)) || api_put(o, "newest", json_integer(a.newest));
	api_reply_json(c, 200, o, bad);
}

/* ---- profiles ------------------------------------------------------------------------------------------------- */

static json_t *
key_types_json(unsigned types)
{
	static const struct {
		unsigned t;
		const char *n;
	} names[] = {
		{ESC_EKEY_RSA2048, "rsa2048"}, {ESC_EKEY_RSA3072, "rsa3072"}, {ESC_EKEY_RSA4096, "rsa4096"},
		{ESC_EKEY_EC_P256, "ec-p256"}, {ESC_EKEY_EC_P384, "ec-p384"},
	};
	json_t *a = json_array();
	size_t i;

	for (i = 0; a != NULL && i < N(names); i++)
		if ((types & names[i].t) && json_array_append_new(a, json_string(names[i].n)) != 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

void
api_profiles(struct api_call *c)
{
	const struct esc_profile *p;
	json_t *o = NULL, *arr = NULL, *e;
	size_t i;
	int bad;

	if (!api_params_ok(c, no_params))
		return;
	bad = (o = json_object()) == NULL || (arr = json_array()) == NULL;
	for (i = 0; !bad && (p = esc_profile_at(i)) != NULL; i++) {
		e = json_object();
		if (e == NULL || api_put(e, "name", api_jstr(p->name)) || api_put(e, "summary", api_jstr(p->summary)) ||
		    api_put(e, "enrollable", json_boolean(p->enrollable)) ||
		    api_put(e, "archival", json_boolean(p->archival)) ||
		    api_put(e, "signing", json_boolean(p->signing)) || api_put(e, "keys", key_types_json(p->keys)) ||
		    api_put(e, "keygen", key_types_json(p->keygen)) || api_put(e, "days", json_integer(p->days)) ||
		    api_put(e, "default", json_boolean(strcmp(p->name, ESC_PROFILE_DEFAULT) == 0)) ||
		    json_array_append(arr, e))
			bad = 1;
		json_decref(e);
	}
	if (!bad)
		bad = put_list(o, "profiles", json_incref(arr));
	json_decref(arr);
	api_reply_json(c, 200, o, bad);
}

/* ---- storage key generations ---------------------------------------------------------------------------------- */

/*
 * GET /storage-keys: every storage key generation, the current one first,
 * with the number of records sealed to each (administrators and auditors:
 * public data only, URIs and certificate fingerprints).
 */
void
api_storage_keys(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const struct esc_account *a = api_call_account(c);
	struct esc_storage_gen *g = NULL;
	size_t n = 0, i;
	json_t *o = NULL, *list = NULL;
	enum esc_err r;
	int bad;

	if (!api_params_ok(c, no_params))
		return;
	if (!esc_account_has_role(a, ESC_ROLE_ADMIN) && !esc_account_has_role(a, ESC_ROLE_AUDITOR)) {
		api_reply_error(c, 403, "only administrators and auditors see the storage keys", ESC_ERR_DENIED);
		return;
	}
	if ((r = esc_storage_list(w->ctx, w->st, &g, &n)) != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (list = json_array()) == NULL;
	for (i = 0; !bad && i < n; i++) {
		json_t *e = json_object();

		bad = e == NULL || api_put(e, "generation", json_integer(g[i].generation)) ||
		      api_put(e, "current", json_boolean(g[i].current)) ||
		      api_put(e, "key_type", api_jstr(g[i].key_type)) ||
		      api_put(e, "key_label", api_jstr(g[i].key_label)) ||
		      api_put(e, "key_id", api_jstr(g[i].key_id)) ||
		      api_put(e, "token_label", api_jstr(g[i].token_label)) || api_put(e, "uri", api_jstr(g[i].uri)) ||
		      api_put(e, "fingerprint", api_jstr(g[i].fingerprint)) ||
		      api_put(e, "created", api_jstr(g[i].created)) ||
		      api_put(e, "retired", g[i].retired[0] ? api_jstr(g[i].retired) : json_null()) ||
		      api_put(e, "retired_by", g[i].retired_by[0] ? api_jstr(g[i].retired_by) : json_null()) ||
		      api_put(e, "records", json_integer(g[i].records));
		if (bad)
			json_decref(e);
		else
			bad = json_array_append_new(list, e) != 0; /* takes e, also when it fails */
	}
	if (!bad) {
		bad = json_object_set_new(o, "generations", list) != 0;
		list = NULL;
	}
	json_decref(list);
	free(g);
	api_reply_json(c, 200, o, bad);
}

/*
 * POST /storage-keys/reseal: one batch of the re-seal job (administrators),
 * run by this worker's keeper, which holds the CA token and picks the
 * records itself: {"batch": "N", "after": "<record id>"} (both optional;
 * after: the "last" of the previous answer).  The answer counts what the
 * batch did and names the records it left as they were.
 */
void
api_storage_reseal(struct api_call *c)
{
	struct svc_worker *w = api_call_worker(c);
	const char *batch_text, *after;
	struct api_field f[] = {
		{"batch", 0, 1, &batch_text},
		{"after", 0, 1, &after},
	};
	struct esc_reseal_batch b;
	json_t *doc, *o = NULL, *skips = NULL;
	enum esc_err r;
	size_t i;
	int n = 100, bad;

	memset(&b, 0, sizeof(b));
	if (!api_params_ok(c, no_params) || (doc = api_parse_body(c, NULL, f, N(f))) == NULL)
		return;
	if (batch_text != NULL && (n = small_int(batch_text, 1, ESC_RESEAL_BATCH_MAX)) < 0) {
		json_decref(doc);
		api_reply_error(c, 400, "batch must be 1..1000", ESC_ERR_USAGE);
		return;
	}
	/* The keeper re-reads the account and checks its role; a refusal is audited there. */
	if (w->keeper == NULL)
		r = ESC_ERR_TOKEN_NOT_FOUND; /* svc_worker_ready checked it; a lost keeper is a 503 */
	else
		r = esc_keeper_reseal(w->ctx, w->keeper, w->st, api_call_account(c), after, (size_t)n, &b);
	json_decref(doc);
	if (r != ESC_OK) {
		api_reply_esc(c, r);
		return;
	}
	bad = (o = json_object()) == NULL || (skips = json_array()) == NULL;
	for (i = 0; !bad && i < b.skipped; i++) {
		json_t *e = json_object();

		bad = e == NULL || api_put(e, "id", api_jstr(b.skips[i].id)) ||
		      api_put(e, "code", api_jstr(esc_strerror(b.skips[i].code))) ||
		      api_put(e, "reason", api_jstr(b.skips[i].reason));
		if (bad)
			json_decref(e);
		else
			bad = json_array_append_new(skips, e) != 0; /* takes e, also when it fails */
	}
	if (!bad) {
		bad = api_put(o, "skipped", skips); /* takes skips, also when it fails */
		skips = NULL;
		bad = bad || api_put(o, "resealed", json_integer((json_int_t)b.resealed)) ||
		      api_put(o, "generation", json_integer(b.to)) ||
		      api_put(o, "from_low", json_integer(b.from_low)) ||
		      api_put(o, "from_high", json_integer(b.from_high)) ||
		      api_put(o, "last", b.last[0] ? api_jstr(b.last) : json_null()) ||
		      api_put(o, "remaining", json_integer(b.remaining));
	}
	json_decref(skips);
	esc_reseal_batch_clear(&b);
	api_reply_json(c, 200, o, bad);
}
