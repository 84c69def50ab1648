/*
 * p11escrow CLI: --json output of the listing and show actions.
 *
 * One builder per kind of object, used by the local (--local) and the
 * service (--server) path alike: the service's answer is read into the
 * library's struct first, so both paths print the same keys, made by the
 * same code.  Key names are the service's JSON API names (docs/api.md) for
 * the same object; times are RFC 3339 UTC ("2026-12-05T03:08:23Z"),
 * certificate serials lower-case hex strings as the library keeps them, an
 * absent optional value null.  Nothing secret is ever in an object.
 *
 * Each builder returns a new JSON object (json_decref it), NULL if out of
 * memory.  The void * ones take the struct their comment names, so that
 * cli_json_array can build a listing of any of them.
 */
#ifndef P11ESCROW_CLI_JSON_H
#define P11ESCROW_CLI_JSON_H

#include <stddef.h>

#include <jansson.h>

#include <p11escrow/auth.h>
#include <p11escrow/kra.h>
#include <p11escrow/profile.h>

/* The line every action taking --json shows in its --help. */
#define CLI_JSON_HELP "one JSON document on stdout (docs/operator-guide.md, JSON output)"

/* struct esc_record_summary: id, serial, subject, email, issuer, foreign, tampered, created, kras[]. */
json_t *cli_json_record(const void *item);
/* struct esc_recovery: id, record, serial, subject, tampered, state, requester, kra, reason, approvals, ... */
json_t *cli_json_request(const void *item);
/* struct esc_account_info: name, roles[], kra, disabled, scope. */
json_t *cli_json_account(const void *item);
/* struct esc_account_cert: sha256, subject, issuer, serial, not_after, added_at, added_by. */
json_t *cli_json_account_cert(const void *item);
/* struct esc_audit_row: id, time, actor, role, action, object, outcome, details. */
json_t *cli_json_event(const void *item);
/* struct esc_policy_item: key, value, updated_by, updated_at (both null for a default). */
json_t *cli_json_policy(const void *item);
/* struct esc_storage_gen: generation, current, key_type, key_label, key_id, token_label, uri, ... */
json_t *cli_json_storage_gen(const void *item);
/* struct esc_otp_info: name, state, expires, profile, subject, created_by, created, used (never a password). */
json_t *cli_json_otp(const void *item);
/* A KRA of esc_kra_list with its warning (NULL or "": none). */
json_t *cli_json_kra(const struct esc_kra *k, const char *warning);
/* A certificate profile; is_default: the service's default profile. */
json_t *cli_json_profile(const struct esc_profile *p, int is_default);

/* The scope of account name, items[0..n) (n == 0: unscoped): name, scoped, profiles[], groups[]. */
json_t *cli_json_scope(const char *name, const struct esc_scope_item *items, size_t n);

/*
 * A JSON string of s, null if s is NULL.  jansson takes UTF-8 only: text
 * that is not (a certificate's or a token's field in a legacy encoding)
 * keeps its ASCII and shows '?' for each other byte, rather than failing
 * the whole document.  NULL only if out of memory.
 */
json_t *cli_json_text(const char *s);

/* A JSON array of the n items of size bytes at v, each built by one; NULL if out of memory. */
json_t *cli_json_array(const void *v, size_t n, size_t size, json_t *(*one)(const void *item));

/*
 * Print doc (taken over, may be NULL: out of memory) on stdout, indented,
 * keys sorted, and a newline.  Returns 0, or prints why not on stderr and
 * returns the exit code; then nothing was printed.
 */
int cli_json_print(const char *cmd, json_t *doc);

#endif
