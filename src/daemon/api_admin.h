/*
 * p11escrowd — the administrative part of the JSON API (docs/api.md):
 * accounts, KRAs, policy, manual archival, revocation and CRLs, enrollment
 * passwords, audit checkpoints, profiles.  The handlers live in
 * api_admin.c; api.c keeps the route table, authenticates and calls them
 * with the account.  Every rule is the library's: a handler only checks its
 * request's shape and calls the function the local CLI calls.
 */
#ifndef P11ESCROWD_API_ADMIN_H
#define P11ESCROWD_API_ADMIN_H

#include <stddef.h>

#include <jansson.h>

#include <p11escrow/auth.h>
#include <p11escrow/err.h>

#include "api_body.h"
#include "svc.h"

/* The largest {name} of a path: an account, KRA or policy name, a certificate serial. */
#define API_NAME_MAX 128

/* One authenticated API request (api.c). */
struct api_call;

/* ---- what api.c offers its handlers ---- */
struct svc_request *api_call_request(struct api_call *c);
struct svc_worker *api_call_worker(struct api_call *c);
const struct esc_account *api_call_account(struct api_call *c);
/* The {name} of the path ("" if the route has none): 1..API_NAME_MAX of [A-Za-z0-9._@:+-]. */
const char *api_call_name(struct api_call *c);

/* Reply with obj (consumed; 500 if built != 0 or obj is NULL), Cache-Control: no-store. */
void api_reply_json(struct api_call *c, int status, json_t *obj, int built);
/* The documented error reply: {"error": reason, "code": esc_strerror(e)}. */
void api_reply_error(struct api_call *c, int status, const char *reason, enum esc_err e);
/* The reply for library error e with the context's message (server faults: generic, detail in the log). */
void api_reply_esc(struct api_call *c, enum esc_err e);
/* 0 after replying 400 for a query parameter not in allowed (NULL-terminated), else 1. */
int api_params_ok(struct api_call *c, const char *const *allowed);
/* A query parameter, NULL if absent or empty. */
const char *api_param(struct api_call *c, const char *name);
/* The body per spec (NULL: the usual limits), or NULL after replying 413/415/400; decref the document. */
json_t *api_parse_body(struct api_call *c, const struct api_body_spec *spec, struct api_field *f, size_t nf);
/* Action endpoints: no parameters, body empty or {}.  0 after replying, else 1. */
int api_no_input(struct api_call *c);
/* A JSON string (invalid UTF-8 as '?'), NULL if out of memory. */
json_t *api_jstr(const char *s);
/* Set obj[key] to v (consumed); -1 if v is NULL or out of memory. */
int api_put(json_t *obj, const char *key, json_t *v);
/* Base64 (one line) of len bytes as a JSON string. */
json_t *api_jb64(const unsigned char *der, size_t len);
/* The names of roles ("admin,kra") as a JSON array. */
json_t *api_roles_json(unsigned roles);

/*
 * Make jansson wipe every block it frees (request bodies carry passwords and
 * key files; the parser's scratch buffers held them too).  Call once, first
 * thing in main, before any JSON is parsed or built.
 */
void api_json_wipe_on_free(void);

/* ---- the handlers (api_admin.c) ---- */
void api_accounts_list(struct api_call *c);
void api_accounts_create(struct api_call *c);
void api_account_disable(struct api_call *c);
void api_account_enable(struct api_call *c);
void api_account_scope_get(struct api_call *c);
void api_account_scope_set(struct api_call *c);
void api_kra_retire(struct api_call *c);
void api_kras_enroll(struct api_call *c);
void api_kra_prove(struct api_call *c);
void api_kra_renew(struct api_call *c);
void api_policy_get(struct api_call *c);
void api_policy_set(struct api_call *c);
void api_archive(struct api_call *c);
void api_certificate_revoke(struct api_call *c);
void api_crl(struct api_call *c);
void api_enroll_passwords_list(struct api_call *c);
void api_enroll_passwords_create(struct api_call *c);
void api_audit_checkpoint(struct api_call *c);
void api_audit_checkpoint_get(struct api_call *c);
void api_audit_verify(struct api_call *c);
void api_profiles(struct api_call *c);
void api_storage_keys(struct api_call *c);
void api_storage_reseal(struct api_call *c);
/* The KRA re-wrap through the service (api_rewrap.c). */
void api_rewrap_plan(struct api_call *c);
void api_rewrap_batch(struct api_call *c);
void api_rewrap_commit(struct api_call *c);

#endif
