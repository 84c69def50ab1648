/*
 * Stored policy: validated values, administrators only.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/audit.h>
#include <p11escrow/auth.h>
#include <p11escrow/policy.h>

#include "internal.h"
#include "store_internal.h"

static const char *const one_key_choices[] = {"off", "supersede", "refuse", NULL};
static const char *const rsa_bits_choices[] = {"2048", "3072", "4096", NULL};
static const char *const ec_bits_choices[] = {"256", "384", NULL};

static const struct {
	const char *key;
	long min, max;		    /* min > max: boolean */
	const char *const *choices; /* non-NULL: one of these words */
} known[] = {
	{"kra_set_size", 1, 16, NULL},
	{"kra_threshold", 1, 16, NULL}, /* KRAs needed to recover a record (k of kra_set_size) */
	{"allow_foreign_issuers", 1, 0, NULL},
	{"recovery_approvals", 0, 10, NULL},
	{"revoke_before_recovery", 1, 0, NULL},
	{"one_key_per_subject", 0, 0, one_key_choices},
	{"release_ttl_hours", 1, 720, NULL}, /* hours a released package waits for its KRA */
	{"cert_login_roles", 0, 0, NULL},    /* roles that log in to the service with a client certificate only */
	{"kra_min_rsa_bits", 0, 0, rsa_bits_choices}, /* the smallest RSA KRA key enrolled */
	{"kra_min_ec_bits", 0, 0, ec_bits_choices},   /* the smallest EC curve of a KRA key: P-256 or P-384 */
	{"kra_allow_rsa_pkcs1v15", 1, 0, NULL},	      /* a card that decrypts only PKCS#1 v1.5 may be a KRA */
};

static enum esc_err
validate(struct esc_ctx *ctx, const char *key, const char *value)
{
	size_t i;
	char *end;
	long v;

	for (i = 0; i < ESC_ARRAY_LEN(known); i++) {
		if (strcmp(key, known[i].key) != 0)
			continue;
		if (strcmp(key, "cert_login_roles") == 0) {
			unsigned roles;

			if (esc_roles_parse_set(ctx, value, &roles) != ESC_OK)
				return esc_error(ctx, ESC_ERR_USAGE,
						 "policy cert_login_roles is empty or a comma-separated list of admin, "
						 "cert-manager, kra and auditor, none twice");
			return ESC_OK;
		}
		if (known[i].choices != NULL) {
			const char *const *c;
			char list[64] = "";

			for (c = known[i].choices; *c != NULL; c++)
				if (strcmp(value, *c) == 0)
					return ESC_OK;
			for (c = known[i].choices; *c != NULL; c++)
				snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", *c,
					 c[1] == NULL	? ""
					 : c[2] == NULL ? " or "
							: ", ");
			return esc_error(ctx, ESC_ERR_USAGE, "policy %s is %s", key, list);
		}
		if (known[i].min > known[i].max) {
			if (strcmp(value, "true") == 0 || strcmp(value, "false") == 0)
				return ESC_OK;
			return esc_error(ctx, ESC_ERR_USAGE, "policy %s is true or false", key);
		}
		/* Digits only: no sign or blank, which strtol would skip but SQL reading the value need not. */
		v = strtol(value, &end, 10);
		if (!isdigit((unsigned char)*value) || *end != '\0' || v < known[i].min || v > known[i].max)
			return esc_error(ctx, ESC_ERR_USAGE, "policy %s is a whole number from %ld to %ld", key,
					 known[i].min, known[i].max);
		return ESC_OK;
	}
	return esc_error(
		ctx, ESC_ERR_USAGE,
		"unknown policy '%.32s' (kra_set_size, kra_threshold, allow_foreign_issuers, recovery_approvals, "
		"revoke_before_recovery, one_key_per_subject, release_ttl_hours, cert_login_roles, "
		"kra_min_rsa_bits, kra_min_ec_bits, kra_allow_rsa_pkcs1v15)",
		key);
}

/*
 * k of n: kra_threshold (k) never above kra_set_size (n), whichever of the
 * two is being changed.  Read in the changing transaction, after the
 * UPDATE, so the check sees the new value.
 */
static enum esc_err
check_threshold(struct esc_ctx *ctx, struct esc_store *st)
{
	PGresult *res = NULL;
	long k, n;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st,
				"SELECT (SELECT value FROM policy WHERE key = 'kra_threshold'), (SELECT value FROM "
				"policy WHERE key = 'kra_set_size')",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 1)) {
		r = esc_error(ctx, ESC_ERR_SCHEMA_OLD, "policy kra_threshold is missing: run 'p11escrow db migrate'");
		goto out;
	}
	k = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	n = strtol(PQgetvalue(res, 0, 1), NULL, 10);
	if (k > n) {
		r = esc_error(ctx, ESC_ERR_USAGE,
			      "policy kra_threshold (%ld) may not exceed kra_set_size (%ld): a record needs k of "
			      "its n KRAs; lower kra_threshold or raise kra_set_size first",
			      k, n);
		goto out;
	}
	r = ESC_OK;
out:
	PQclear(res);
	return r;
}

static enum esc_err
set_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *key, const char *value,
	 const char *details)
{
	const char *v[3] = {key, value, NULL};
	char roles[64];
	struct esc_audit_event ev = {NULL, roles, "policy.set", key, "ok", details};
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK ||
	    (r = validate(ctx, key, value)) != ESC_OK)
		goto out;
	v[2] = ev.actor = esc_account_name(actor);
	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	/* The change and its audit event commit together. */
	if ((r = esc_store_begin(ctx, st)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"UPDATE policy SET value = $2, updated_at = now(), updated_by = $3 WHERE key = $1", 3,
				v, NULL, NULL, NULL)) != ESC_OK ||
	    (r = check_threshold(ctx, st)) != ESC_OK || (r = esc_audit_append(ctx, st, &ev)) != ESC_OK ||
	    (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
out:
	esc_store_rollback(st);
	return r;
}

enum esc_err
esc_policy_set(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *key,
	       const char *value)
{
	struct esc_store_retry t = {0};
	char details[96];
	enum esc_err r;

	snprintf(details, sizeof(details), "%.31s = %.31s", key, value);
	do
		r = set_impl(ctx, st, actor, key, value, details);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		esc_audit_outcome_by(ctx, st, actor, "policy.set", details, r);
	return r;
}

enum esc_err
esc_policy_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_policy_item **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_policy_item *p;
	enum esc_err r;
	int i, rows;

	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT key, value, coalesce(updated_by, ''), to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD "
		     "HH24:MI:SS') FROM policy ORDER BY key",
		     0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if ((p = calloc((size_t)rows + 1, sizeof(*p))) == NULL) {
		PQclear(res);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < rows; i++) {
		snprintf(p[i].key, sizeof(p[i].key), "%s", PQgetvalue(res, i, 0));
		snprintf(p[i].value, sizeof(p[i].value), "%s", PQgetvalue(res, i, 1));
		snprintf(p[i].updated_by, sizeof(p[i].updated_by), "%s", PQgetvalue(res, i, 2));
		snprintf(p[i].updated_at, sizeof(p[i].updated_at), "%s", PQgetvalue(res, i, 3));
	}
	PQclear(res);
	*out = p;
	*n = (size_t)rows;
	return ESC_OK;
}
