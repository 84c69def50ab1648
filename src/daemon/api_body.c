/*
 * Strict request bodies for the JSON API (see api_body.h).
 */
#include <stdio.h>
#include <string.h>

#include "api_body.h"

int
api_body_parse(const unsigned char *body, size_t len, int is_json, struct api_field *f, size_t nf, json_t **doc,
	       char *msg, size_t msglen)
{
	json_error_t jerr;
	json_t *d = NULL, *v;
	const char *key;
	size_t i, required = 0;
	int status = 400;

	for (i = 0; i < nf; i++) {
		*f[i].out = NULL;
		required += f[i].required != 0;
	}
	if (len > API_BODY_MAX) {
		snprintf(msg, msglen, "the request body is larger than %d bytes", API_BODY_MAX);
		return 413;
	}
	if (len == 0 && required == 0) {
		if ((*doc = json_object()) == NULL) {
			snprintf(msg, msglen, "out of memory");
			return 500;
		}
		return 0;
	}
	if (!is_json) {
		snprintf(msg, msglen, "the request body must be application/json");
		return 415;
	}
	if (body == NULL || len == 0) {
		snprintf(msg, msglen, "a JSON object is required");
		return 400;
	}
	/* jansson refuses \u0000 in strings unless told otherwise: every field is a C string. */
	if ((d = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr)) == NULL) {
		snprintf(msg, msglen, "malformed JSON at line %d, column %d: %.120s", jerr.line, jerr.column,
			 jerr.text);
		return 400;
	}
	if (!json_is_object(d)) {
		snprintf(msg, msglen, "the request body must be a JSON object");
		goto fail;
	}
	json_object_foreach(d, key, v)
	{
		for (i = 0; i < nf && strcmp(f[i].name, key) != 0; i++)
			;
		if (i == nf) {
			snprintf(msg, msglen, "unknown field '%.64s'", key);
			goto fail;
		}
		if (json_is_null(v) && f[i].nullable)
			continue;
		if (!json_is_string(v)) {
			snprintf(msg, msglen, "field '%s' must be a string%s", key, f[i].nullable ? " or null" : "");
			goto fail;
		}
		if (json_string_length(v) > API_FIELD_MAX || strlen(json_string_value(v)) != json_string_length(v)) {
			snprintf(msg, msglen, "field '%s' is longer than %d bytes or holds a NUL", key, API_FIELD_MAX);
			goto fail;
		}
		*f[i].out = json_string_value(v);
	}
	for (i = 0; i < nf; i++)
		if (f[i].required && *f[i].out == NULL) {
			snprintf(msg, msglen, "field '%s' is required", f[i].name);
			goto fail;
		}
	*doc = d;
	return 0;
fail:
	for (i = 0; i < nf; i++)
		*f[i].out = NULL;
	json_decref(d);
	return status;
}
