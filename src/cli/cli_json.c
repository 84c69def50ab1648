/*
 * --json output of the listing and show actions (cli_json.h): one builder
 * per object, shared by the local and the --server path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <p11escrow/audit.h>
#include <p11escrow/enroll.h>
#include <p11escrow/policy.h>
#include <p11escrow/recovery.h>
#include <p11escrow/storage.h>

#include "cli.h"
#include "cli_json.h"

json_t *
cli_json_text(const char *s)
{
	json_t *j;
	char *copy;
	size_t i;

	if (s == NULL)
		return json_null();
	if ((j = json_string(s)) != NULL || (copy = strdup(s)) == NULL)
		return j;
	for (i = 0; copy[i] != '\0'; i++)
		if ((unsigned char)copy[i] >= 0x80)
			copy[i] = '?';
	j = json_string(copy);
	free(copy);
	return j;
}

static json_t *
str(const char *s)
{
	return cli_json_text(s);
}

/* s, or null if it is empty: an optional value the library keeps as "". */
static json_t *
opt(const char *s)
{
	return *s != '\0' ? str(s) : json_null();
}

/*
 * A time of the library ("YYYY-MM-DD HH:MM:SS", with or without 'Z', or
 * already "YYYY-MM-DDTHH:MM:SS[.fff]Z"), every one UTC, as RFC 3339
 * "YYYY-MM-DDTHH:MM:SS[.fff]Z"; null if empty.  Anything else is kept as
 * it is, so nothing is lost.
 */
static json_t *
tm(const char *s)
{
	static const char shape[] = "dddd-dd-dd?dd:dd:dd";
	char buf[48];
	size_t len = strlen(s), i;

	if (len == 0)
		return json_null();
	if (len < sizeof(shape) - 1 || len + 2 > sizeof(buf))
		return str(s);
	for (i = 0; i < sizeof(shape) - 1; i++)
		if (shape[i] == 'd'   ? s[i] < '0' || s[i] > '9'
		    : shape[i] == '?' ? s[i] != ' ' && s[i] != 'T'
				      : s[i] != shape[i])
			return str(s);
	/* The rest: nothing, "Z", or a fraction ".fff" with or without "Z". */
	for (i = sizeof(shape) - 1; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] == '.' && i == sizeof(shape) - 1) ||
		      (s[i] == 'Z' && i == len - 1)))
			return str(s);
	memcpy(buf, s, len + 1);
	buf[10] = 'T';
	if (buf[len - 1] != 'Z') {
		buf[len] = 'Z';
		buf[len + 1] = '\0';
	}
	return str(buf);
}

/* ["a","b"] of "a,b" (a list the library keeps comma-separated); [] for "". */
static json_t *
csv(const char *s)
{
	json_t *a = json_array();
	const char *p = s, *comma;
	char one[256];
	size_t n;

	while (a != NULL && *p != '\0') {
		comma = strchr(p, ',');
		n = comma != NULL ? (size_t)(comma - p) : strlen(p);
		snprintf(one, sizeof(one), "%.*s", (int)(n < sizeof(one) ? n : sizeof(one) - 1), p);
		if (n > 0 && json_array_append_new(a, str(one)) != 0) {
			json_decref(a);
			return NULL;
		}
		p += n;
		if (*p == ',')
			p++;
	}
	return a;
}

json_t *
cli_json_record(const void *item)
{
	const struct esc_record_summary *s = item;

	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:b, s:b, s:o, s:o}", "id", str(s->id), "serial", str(s->serial),
			 "subject", str(s->subject), "email", opt(s->email), "issuer", str(s->issuer), "foreign",
			 s->foreign, "tampered", s->tampered, "created", tm(s->created), "kras", csv(s->kras));
}

json_t *
cli_json_request(const void *item)
{
	const struct esc_recovery *q = item;

	return json_pack("{s:I, s:o, s:o, s:o, s:b, s:o, s:o, s:o, s:o, s:i, s:i, s:o}", "id", (json_int_t)q->id,
			 "record", str(q->record_id), "serial", str(q->serial), "subject", str(q->subject), "tampered",
			 q->tampered, "state", str(q->state), "requester", str(q->requester), "kra", opt(q->kra),
			 "reason", str(q->reason), "approvals", q->approvals, "approvals_required",
			 q->approvals_required, "created", tm(q->created));
}

json_t *
cli_json_account(const void *item)
{
	const struct esc_account_info *a = item;
	char roles[64];

	esc_roles_format(a->roles, roles, sizeof(roles));
	return json_pack("{s:o, s:o, s:o, s:b, s:o}", "name", str(a->name), "roles", csv(roles), "kra",
			 opt(a->kra_name), "disabled", a->disabled, "scope", opt(a->scope));
}

json_t *
cli_json_account_cert(const void *item)
{
	const struct esc_account_cert *c = item;

	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "sha256", str(c->sha256), "subject", str(c->subject),
			 "issuer", str(c->issuer), "serial", str(c->serial), "not_after", tm(c->not_after), "added_at",
			 tm(c->added_at), "added_by", opt(c->added_by));
}

json_t *
cli_json_event(const void *item)
{
	const struct esc_audit_row *e = item;

	return json_pack("{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", (json_int_t)e->id, "time", tm(e->at),
			 "actor", str(e->actor), "role", str(e->role), "action", str(e->action), "object",
			 str(e->object), "outcome", str(e->outcome), "details", str(e->details));
}

json_t *
cli_json_policy(const void *item)
{
	const struct esc_policy_item *p = item;
	int dflt = p->updated_by[0] == '\0';

	/* A default was never set: no time either, whatever the row says. */
	return json_pack("{s:o, s:o, s:o, s:o}", "key", str(p->key), "value", str(p->value), "updated_by",
			 opt(p->updated_by), "updated_at", dflt ? json_null() : tm(p->updated_at));
}

json_t *
cli_json_storage_gen(const void *item)
{
	const struct esc_storage_gen *g = item;

	return json_pack("{s:i, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I}", "generation", g->generation,
			 "current", g->current, "key_type", str(g->key_type), "key_label", str(g->key_label), "key_id",
			 str(g->key_id), "token_label", str(g->token_label), "uri", str(g->uri), "fingerprint",
			 str(g->fingerprint), "created", tm(g->created), "retired", tm(g->retired), "retired_by",
			 opt(g->retired_by), "records", (json_int_t)g->records);
}

json_t *
cli_json_otp(const void *item)
{
	const struct esc_otp_info *o = item;

	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "name", str(o->name), "state", str(o->state),
			 "expires", tm(o->expires), "profile", str(o->profile), "subject", str(o->subject),
			 "created_by", str(o->created_by), "created", tm(o->created), "used", tm(o->used));
}

json_t *
cli_json_kra(const struct esc_kra *k, const char *warning)
{
	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:o, s:o, s:i, s:b, s:o}", "name",
			 str(k->name), "state", str(k->state), "key_type", str(k->key_type), "recipient",
			 str(k->recipient), "cert_serial", str(k->cert_serial), "not_after", tm(k->not_after),
			 "token_label", str(k->token_label), "token_serial", str(k->token_serial), "key_uri",
			 str(k->key_uri), "records", (json_int_t)k->records, "origin", opt(k->origin),
			 "recipient_reason", opt(k->recipient_reason), "days_left", k->days_left, "expired", k->expired,
			 "warning", warning != NULL ? opt(warning) : json_null());
}

/* The names of the ESC_EKEY_* types in mask, in the library's order. */
static json_t *
key_names(unsigned mask)
{
	json_t *a = json_array();
	unsigned bit;

	for (bit = 1; a != NULL && bit != 0 && bit <= mask; bit <<= 1)
		if ((mask & bit) && esc_enroll_key_name(bit) != NULL &&
		    json_array_append_new(a, str(esc_enroll_key_name(bit))) != 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

json_t *
cli_json_profile(const struct esc_profile *p, int is_default)
{
	return json_pack("{s:o, s:o, s:b, s:b, s:b, s:o, s:o, s:i, s:b}", "name", str(p->name), "summary",
			 str(p->summary), "enrollable", p->enrollable, "archival", p->archival, "signing", p->signing,
			 "keys", key_names(p->keys), "keygen", key_names(p->keygen), "days", p->days, "default",
			 is_default);
}

json_t *
cli_json_scope(const char *name, const struct esc_scope_item *items, size_t n)
{
	json_t *profiles = json_array(), *groups = json_array();
	size_t i;
	int bad = profiles == NULL || groups == NULL;

	for (i = 0; !bad && i < n; i++)
		bad = json_array_append_new(strcmp(items[i].kind, "profile") == 0 ? profiles : groups,
					    str(items[i].value)) != 0;
	if (bad) {
		json_decref(profiles);
		json_decref(groups);
		return NULL;
	}
	return json_pack("{s:o, s:b, s:o, s:o}", "name", str(name), "scoped", n > 0, "profiles", profiles, "groups",
			 groups);
}

json_t *
cli_json_array(const void *v, size_t n, size_t size, json_t *(*one)(const void *item))
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; a != NULL && i < n; i++)
		if (json_array_append_new(a, one((const char *)v + i * size)) != 0) {
			json_decref(a);
			a = NULL;
		}
	return a;
}

int
cli_json_print(const char *cmd, json_t *doc)
{
	char *text;

	/* The whole document first: on a failure, stdout stays empty. */
	text = doc != NULL ? json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
	json_decref(doc);
	if (text == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, cmd);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	fputs(text, stdout);
	putchar('\n');
	free(text);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "%s %s: error: cannot write the output\n", PROG, cmd);
		return esc_err_exit_code(ESC_ERR_IO);
	}
	return 0;
}
