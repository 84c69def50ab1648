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
	return api_body_parse_spec(body, len, is_json, NULL, f, nf, doc, msg, msglen);
}

/* Clear every output of the fields and lists. */
static void
clear_outputs(struct api_field *f, size_t nf, const struct api_body_spec *spec)
{
	size_t i;

	for (i = 0; i < nf; i++)
		*f[i].out = NULL;
	for (i = 0; spec != NULL && i < spec->nlists; i++) {
		*spec->lists[i].n = 0;
		*spec->lists[i].present = 0;
	}
}

/* Check list field l's value v and set its outputs; 0, or -1 with the reason in msg. */
static int
take_list(const struct api_list *l, json_t *v, char *msg, size_t msglen)
{
	json_t *e;
	size_t i;

	if (!json_is_array(v)) {
		snprintf(msg, msglen, "field '%s' must be an array of strings", l->name);
		return -1;
	}
	if (json_array_size(v) > l->max || l->max > API_LIST_MAX) {
		snprintf(msg, msglen, "field '%s' has more than %zu entries", l->name, l->max);
		return -1;
	}
	json_array_foreach(v, i, e)
	{
		if (!json_is_string(e)) {
			snprintf(msg, msglen, "field '%s' must be an array of strings", l->name);
			return -1;
		}
		if (json_string_length(e) > API_FIELD_MAX || strlen(json_string_value(e)) != json_string_length(e)) {
			snprintf(msg, msglen, "an entry of field '%s' is longer than %d bytes or holds a NUL", l->name,
				 API_FIELD_MAX);
			return -1;
		}
		l->out[i] = json_string_value(e);
	}
	*l->n = json_array_size(v);
	*l->present = 1;
	return 0;
}

int
api_body_parse_spec(const unsigned char *body, size_t len, int is_json, const struct api_body_spec *spec,
		    struct api_field *f, size_t nf, json_t **doc, char *msg, size_t msglen)
{
	json_error_t jerr;
	json_t *d = NULL, *v;
	const char *key;
	size_t i, required = 0, body_max = API_BODY_MAX, field_max;
	int status = 400;

	clear_outputs(f, nf, spec);
	for (i = 0; i < nf; i++)
		required += f[i].required != 0;
	if (spec != NULL && spec->body_max > 0)
		body_max = spec->body_max;
	if (len > body_max) {
		snprintf(msg, msglen, "the request body is larger than %zu bytes", body_max);
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
		for (i = 0; spec != NULL && i < spec->nlists && strcmp(spec->lists[i].name, key) != 0; i++)
			;
		if (spec != NULL && i < spec->nlists) {
			if (take_list(&spec->lists[i], v, msg, msglen) != 0)
				goto fail;
			continue;
		}
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
		field_max = spec != NULL && spec->large != NULL && strcmp(spec->large, key) == 0 ? spec->large_max
												 : API_FIELD_MAX;
		if (json_string_length(v) > field_max || strlen(json_string_value(v)) != json_string_length(v)) {
			snprintf(msg, msglen, "field '%s' is longer than %zu bytes or holds a NUL", key, field_max);
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
	clear_outputs(f, nf, spec);
	json_decref(d);
	return status;
}

const char *
api_cookie_value(const char *header, const char *name, size_t max, size_t *len)
{
	const char *p = header;
	size_t n = strlen(name);

	while (p != NULL && *p != '\0') {
		while (*p == ' ' || *p == ';')
			p++;
		if (strncmp(p, name, n) == 0 && p[n] == '=') {
			p += n + 1;
			*len = strcspn(p, "; ");
			if (*len > max)
				*len = max;
			return *len > 0 ? p : NULL;
		}
		p += strcspn(p, ";");
	}
	return NULL;
}
