/*
 * Unit tests: the CLI's --json builders (src/cli/cli_json.c): the keys of
 * each object, times made RFC 3339 UTC from every form the library gives
 * (and anything else kept as it is), comma lists as arrays, empty values
 * as null, text that is not UTF-8 kept readable.  No database, no service.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <p11escrow/audit.h>
#include <p11escrow/enroll.h>
#include <p11escrow/policy.h>
#include <p11escrow/recovery.h>
#include <p11escrow/storage.h>

#include "cli_json.h"

/* The compact, sorted text of o (taken over), compared with want. */
static void
assert_json(json_t *o, const char *want)
{
	char *text;

	assert_non_null(o);
	text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
	json_decref(o);
	assert_non_null(text);
	assert_string_equal(text, want);
	free(text);
}

static void
test_record(void **state)
{
	struct esc_record_summary s;

	(void)state;
	memset(&s, 0, sizeof(s));
	strcpy(s.id, "99e45df7");
	strcpy(s.serial, "0a2b");
	strcpy(s.subject, "CN=Alice,O=Example");
	strcpy(s.issuer, "CN=CA");
	strcpy(s.kras, "kra1,kra2");
	strcpy(s.created, "2026-11-23 12:28:54");
	s.foreign = 1;
	assert_json(cli_json_record(&s),
		    "{\"created\":\"2026-11-23T12:28:54Z\",\"email\":null,\"foreign\":true,\"id\":\"99e45df7\","
		    "\"issuer\":\"CN=CA\",\"kras\":[\"kra1\",\"kra2\"],\"serial\":\"0a2b\","
		    "\"subject\":\"CN=Alice,O=Example\",\"tampered\":false}");
	/* No KRA: an empty array; a subject that is not UTF-8: '?' for each such byte. */
	s.kras[0] = '\0';
	strcpy(s.subject, "CN=\xe9t\xe9");
	strcpy(s.email, "alice@example.org");
	assert_json(cli_json_record(&s),
		    "{\"created\":\"2026-11-23T12:28:54Z\",\"email\":\"alice@example.org\",\"foreign\":true,"
		    "\"id\":\"99e45df7\",\"issuer\":\"CN=CA\",\"kras\":[],\"serial\":\"0a2b\","
		    "\"subject\":\"CN=?t?\",\"tampered\":false}");
}

/* Every time form of the library, and what is not one. */
static void
test_times(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{"2026-11-23 12:28:54", "\"2026-11-23T12:28:54Z\""},
		{"2026-12-04 21:49:07Z", "\"2026-12-04T21:49:07Z\""},
		{"2026-12-14T22:46:50Z", "\"2026-12-14T22:46:50Z\""},
		{"2026-11-23T12:30:02.118Z", "\"2026-11-23T12:30:02.118Z\""},
		{"", "null"},
		{"yesterday", "\"yesterday\""},
		{"2026-11-23 12:28:54+05:30", "\"2026-11-23 12:28:54+05:30\""},
		{"2026-11-23x12:28:54", "\"2026-11-23x12:28:54\""},
		{"2026-11-23 12:28:54ZZ", "\"2026-11-23 12:28:54ZZ\""},
	};
	struct esc_storage_gen g;
	char want[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(&g, 0, sizeof(g));
		g.generation = 2;
		g.current = 1;
		g.records = 400;
		strcpy(g.retired, cases[i].in);
		strcpy(g.created, "2026-12-04 21:49:07Z");
		snprintf(want, sizeof(want),
			 "{\"created\":\"2026-12-04T21:49:07Z\",\"current\":true,\"fingerprint\":\"\",\"generation\":2,"
			 "\"key_id\":\"\",\"key_label\":\"\",\"key_type\":\"\",\"records\":400,\"retired\":%s,"
			 "\"retired_by\":null,\"token_label\":\"\",\"uri\":\"\"}",
			 cases[i].out);
		assert_json(cli_json_storage_gen(&g), want);
	}
}

static void
test_request_and_event(void **state)
{
	struct esc_recovery q;
	struct esc_audit_row e;

	(void)state;
	memset(&q, 0, sizeof(q));
	q.id = 7;
	strcpy(q.record_id, "99e45df7");
	strcpy(q.serial, "2a");
	strcpy(q.subject, "CN=Alice");
	strcpy(q.state, "pending");
	strcpy(q.requester, "cm1");
	strcpy(q.kra, "kra1");
	strcpy(q.reason, "lost \"laptop\"");
	q.approvals_required = 1;
	strcpy(q.created, "2026-11-23 12:30:02");
	assert_json(cli_json_request(&q),
		    "{\"approvals\":0,\"approvals_required\":1,\"created\":\"2026-11-23T12:30:02Z\",\"id\":7,"
		    "\"kra\":\"kra1\",\"reason\":\"lost \\\"laptop\\\"\",\"record\":\"99e45df7\",\"requester\":\"cm1\","
		    "\"serial\":\"2a\",\"state\":\"pending\",\"subject\":\"CN=Alice\",\"tampered\":false}");
	memset(&e, 0, sizeof(e));
	e.id = 57;
	strcpy(e.at, "2026-11-23T12:30:02.118Z");
	strcpy(e.actor, "cm1");
	strcpy(e.role, "cert-manager");
	strcpy(e.action, "recovery.request");
	strcpy(e.object, "request 7");
	strcpy(e.outcome, "ok");
	assert_json(cli_json_event(&e), "{\"action\":\"recovery.request\",\"actor\":\"cm1\",\"details\":\"\",\"id\":57,"
					"\"object\":\"request 7\",\"outcome\":\"ok\",\"role\":\"cert-manager\","
					"\"time\":\"2026-11-23T12:30:02.118Z\"}");
}

static void
test_account_policy_otp(void **state)
{
	struct esc_account_info a;
	struct esc_policy_item p;
	struct esc_otp_info o;

	(void)state;
	memset(&a, 0, sizeof(a));
	strcpy(a.name, "kent");
	a.roles = ESC_ROLE_KRA | ESC_ROLE_AUDITOR;
	strcpy(a.kra_name, "kra1");
	assert_json(cli_json_account(&a), "{\"disabled\":false,\"kra\":\"kra1\",\"name\":\"kent\","
					  "\"roles\":[\"kra\",\"auditor\"],\"scope\":null}");
	/* A default policy value: never set, so no time either, whatever the row holds. */
	memset(&p, 0, sizeof(p));
	strcpy(p.key, "kra_threshold");
	strcpy(p.value, "1");
	strcpy(p.updated_at, "2026-11-23 12:00:00");
	assert_json(cli_json_policy(&p),
		    "{\"key\":\"kra_threshold\",\"updated_at\":null,\"updated_by\":null,\"value\":\"1\"}");
	strcpy(p.updated_by, "admin");
	assert_json(cli_json_policy(&p), "{\"key\":\"kra_threshold\",\"updated_at\":\"2026-11-23T12:00:00Z\","
					 "\"updated_by\":\"admin\",\"value\":\"1\"}");
	memset(&o, 0, sizeof(o));
	strcpy(o.name, "enroll-6c1e09a2");
	strcpy(o.state, "unused");
	strcpy(o.expires, "2026-11-24 12:00:00Z");
	strcpy(o.created, "2026-11-23 12:00:00Z");
	assert_json(cli_json_otp(&o),
		    "{\"created\":\"2026-11-23T12:00:00Z\",\"created_by\":\"\","
		    "\"expires\":\"2026-11-24T12:00:00Z\",\"name\":\"enroll-6c1e09a2\",\"profile\":\"\","
		    "\"state\":\"unused\",\"subject\":\"\",\"used\":null}");
}

static void
test_profile_scope_array(void **state)
{
	struct esc_profile p = {"encryption",	  "keys", 1, 0, ESC_EKEY_RSA2048 | ESC_EKEY_EC_P384,
				ESC_EKEY_EC_P256, 365,	  1};
	struct esc_scope_item items[2] = {{"group", "Sales"}, {"profile", "encryption"}};
	struct esc_policy_item two[2];
	json_t *a;

	(void)state;
	assert_json(cli_json_profile(&p, 1), "{\"archival\":true,\"days\":365,\"default\":true,\"enrollable\":true,"
					     "\"keygen\":[\"ec-p256\"],\"keys\":[\"rsa2048\",\"ec-p384\"],"
					     "\"name\":\"encryption\",\"signing\":false,\"summary\":\"keys\"}");
	assert_json(cli_json_scope("cm1", items, 2),
		    "{\"groups\":[\"Sales\"],\"name\":\"cm1\",\"profiles\":[\"encryption\"],\"scoped\":true}");
	assert_json(cli_json_scope("cm1", NULL, 0),
		    "{\"groups\":[],\"name\":\"cm1\",\"profiles\":[],\"scoped\":false}");
	memset(two, 0, sizeof(two));
	strcpy(two[0].key, "a");
	strcpy(two[1].key, "b");
	a = cli_json_array(two, 2, sizeof(two[0]), cli_json_policy);
	assert_json(a, "[{\"key\":\"a\",\"updated_at\":null,\"updated_by\":null,\"value\":\"\"},"
		       "{\"key\":\"b\",\"updated_at\":null,\"updated_by\":null,\"value\":\"\"}]");
	assert_json(cli_json_array(NULL, 0, sizeof(two[0]), cli_json_policy), "[]");
	assert_json(cli_json_text(NULL), "null");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_record),
		cmocka_unit_test(test_times),
		cmocka_unit_test(test_request_and_event),
		cmocka_unit_test(test_account_policy_otp),
		cmocka_unit_test(test_profile_scope_array),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
