/*
 * Fuzz target: the JSON API's request bodies (api_body_parse in
 * src/daemon/api_body.c) for both shapes the API takes: a recovery request
 * (record, reason required; kra string or null) and an action's empty
 * object; and api_body_parse_spec for an account's scope (two lists) and
 * an uploaded file (one large field in a larger body).  The first input
 * byte says whether the Content-Type was JSON.  The whole input is also
 * offered as a session's bearer token (esc_session_token_decode, what every
 * Authorization: Bearer meets first), and as a Cookie header
 * (api_cookie_value, what a browser session's cookie meets first).
 */
#include <string.h>

#include <p11escrow/session.h>

#include "api_body.h"
#include "fuzz.h"

static void
check(const uint8_t *data, size_t size, int is_json, struct api_field *f, size_t nf)
{
	json_t *doc = NULL;
	char msg[256];
	size_t i;
	int status;

	memset(msg, 'x', sizeof(msg));
	status = api_body_parse(data, size, is_json, f, nf, &doc, msg, sizeof(msg));
	if (status != 0) {
		FUZZ_CHECK(status == 400 || status == 413 || status == 415);
		FUZZ_CHECK(memchr(msg, '\0', sizeof(msg)) != NULL && msg[0] != '\0');
		FUZZ_CHECK(size <= API_BODY_MAX || status == 413);
		for (i = 0; i < nf; i++)
			FUZZ_CHECK(*f[i].out == NULL);
		return;
	}
	FUZZ_CHECK(json_is_object(doc) && size <= API_BODY_MAX && (is_json || size == 0));
	for (i = 0; i < nf; i++) {
		const char *v = *f[i].out;

		FUZZ_CHECK(v != NULL || !f[i].required);
		if (v != NULL) {
			FUZZ_CHECK(strlen(v) <= API_FIELD_MAX);
			FUZZ_CHECK(json_is_string(json_object_get(doc, f[i].name)));
			FUZZ_CHECK(strcmp(json_string_value(json_object_get(doc, f[i].name)), v) == 0);
		}
	}
	/* Nothing but the known fields. */
	FUZZ_CHECK(json_object_size(doc) <= nf);
	json_decref(doc);
}

/* The shapes only api_body_parse_spec takes. */
static void
check_spec(const uint8_t *data, size_t size, int is_json)
{
	const char *profiles[API_LIST_MAX], *groups[API_LIST_MAX], *name, *file, *password;
	size_t np = 99, ng = 99, i;
	int hp = 7, hg = 7, status;
	struct api_list lists[] = {
		{"profiles", 16, profiles, &np, &hp},
		{"groups", 16, groups, &ng, &hg},
	};
	struct api_field f[] = {
		{"name", 1, 0, &name},
		{"file", 1, 0, &file},
		{"password", 0, 1, &password},
	};
	struct api_body_spec scope = {0, NULL, 0, lists, 2}, upload = {64 * 1024, "file", 64 * 1024, NULL, 0};
	json_t *doc = NULL;
	char msg[256];

	status = api_body_parse_spec(data, size, is_json, &scope, NULL, 0, &doc, msg, sizeof(msg));
	if (status != 0) {
		FUZZ_CHECK(status == 400 || status == 413 || status == 415);
		FUZZ_CHECK(np == 0 && ng == 0 && hp == 0 && hg == 0);
	} else {
		FUZZ_CHECK(json_is_object(doc) && np <= 16 && ng <= 16);
		FUZZ_CHECK(hp == (json_object_get(doc, "profiles") != NULL));
		FUZZ_CHECK(hg == (json_object_get(doc, "groups") != NULL));
		for (i = 0; i < np; i++)
			FUZZ_CHECK(profiles[i] != NULL && strlen(profiles[i]) <= API_FIELD_MAX);
		for (i = 0; i < ng; i++)
			FUZZ_CHECK(groups[i] != NULL && strlen(groups[i]) <= API_FIELD_MAX);
		json_decref(doc);
	}
	doc = NULL;
	status = api_body_parse_spec(data, size, is_json, &upload, f, 3, &doc, msg, sizeof(msg));
	if (status != 0) {
		FUZZ_CHECK(status == 400 || status == 413 || status == 415);
		FUZZ_CHECK(name == NULL && file == NULL && password == NULL);
		FUZZ_CHECK(size <= 64 * 1024 || status == 413);
		return;
	}
	FUZZ_CHECK(name != NULL && file != NULL && strlen(name) <= API_FIELD_MAX && strlen(file) <= 64 * 1024);
	FUZZ_CHECK(password == NULL || strlen(password) <= API_FIELD_MAX);
	json_decref(doc);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *record, *kra, *reason, *name, *label, *serial, *uri, *type, *recipient, *pub, *days, *id, *secret;
	struct api_field request[] = {
		{"record", 1, 0, &record},
		{"kra", 0, 1, &kra},
		{"reason", 1, 0, &reason},
	};
	/* POST /kras and POST /kras/{name}/prove (api_admin.c). */
	struct api_field offer[] = {
		{"name", 1, 0, &name},	    {"token_label", 1, 0, &label}, {"token_serial", 1, 0, &serial},
		{"key_uri", 1, 0, &uri},    {"key_type", 1, 0, &type},	   {"recipient", 1, 0, &recipient},
		{"public_key", 1, 0, &pub}, {"days", 0, 1, &days},
	};
	struct api_field prove[] = {
		{"challenge_id", 1, 0, &id},
		{"secret", 1, 0, &secret},
	};
	int is_json;

	unsigned char raw[ESC_SESSION_TOKEN_BYTES];

	/* A token is exactly 43 base64url characters; anything else is refused without reading past size. */
	if (esc_session_token_decode((const char *)data, size, raw) == 0) {
		static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
		size_t k;

		FUZZ_CHECK(size == ESC_SESSION_TOKEN_LEN);
		for (k = 0; k < size; k++)
			FUZZ_CHECK(data[k] != '\0' && strchr(alphabet, data[k]) != NULL);
	}
	{
		char header[1024];
		const char *v;
		size_t n = size < sizeof(header) - 1 ? size : sizeof(header) - 1, len = 0;

		memcpy(header, data, n);
		header[n] = '\0';
		if ((v = api_cookie_value(header, "p11escrow_session", ESC_SESSION_TOKEN_LEN + 1, &len)) != NULL) {
			FUZZ_CHECK(v > header && v + len <= header + strlen(header));
			FUZZ_CHECK(len > 0 && len <= ESC_SESSION_TOKEN_LEN + 1 && memchr(v, ';', len) == NULL);
			FUZZ_CHECK(strncmp(v - sizeof("p11escrow_session"), "p11escrow_session=", 18) == 0);
		}
	}
	if (size == 0)
		return 0;
	is_json = data[0] != 'T';
	check(data + 1, size - 1, is_json, request, sizeof(request) / sizeof(request[0]));
	check(data + 1, size - 1, is_json, NULL, 0);
	check(data + 1, size - 1, is_json, offer, sizeof(offer) / sizeof(offer[0]));
	check(data + 1, size - 1, is_json, prove, sizeof(prove) / sizeof(prove[0]));
	check_spec(data + 1, size - 1, is_json);
	return 0;
}
