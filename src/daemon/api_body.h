/*
 * p11escrowd — request bodies of the JSON API: one JSON object of known
 * string fields, strictly checked.  Apart from the HTTP layer (api.c) so
 * that it is fuzzed on its own (tests/fuzz/fuzz_api.c).
 */
#ifndef P11ESCROWD_API_BODY_H
#define P11ESCROWD_API_BODY_H

#include <stddef.h>

#include <jansson.h>

#define API_BODY_MAX (16 * 1024) /* the largest request is a reason of 1000 characters */
#define API_FIELD_MAX 4096	 /* any string in a body; the library checks each one exactly */

struct api_field {
	const char *name;
	int required;
	int nullable;	  /* null is accepted and reads as absent */
	const char **out; /* set to the string (owned by the document), or NULL if absent */
};

/*
 * Parse body (len bytes, not necessarily NUL-terminated; is_json: its
 * Content-Type is application/json) as one JSON object holding only the
 * fields f, each a string (or null where nullable) of at most
 * API_FIELD_MAX bytes without NUL, each required one present, no key twice.
 * With no field required, an empty body reads as {}.
 * Returns 0 and *doc (json_decref it; the *out strings live in it), or the
 * HTTP status to refuse with — 413 (too large), 415 (not JSON), 400 — and
 * the reason in msg (never longer than msglen-1; no secret: field names and
 * jansson's position and message only).
 */
int api_body_parse(const unsigned char *body, size_t len, int is_json, struct api_field *f, size_t nf, json_t **doc,
		   char *msg, size_t msglen);

#define API_LIST_MAX 16 /* items of a list field (an account's scope: ESC_SCOPE_MAX) */

/* A field that is an array of at most max (<= API_LIST_MAX) strings, each of at most API_FIELD_MAX bytes. */
struct api_list {
	const char *name;
	size_t max;
	const char **out; /* out[0..*n-1]: the strings (owned by the document); max entries */
	size_t *n;	  /* 0 if absent */
	int *present;	  /* set to 1 if the field was given (even as []), else 0 */
};

/*
 * The shapes api_body_parse does not take: list fields, and one "large"
 * string field (an uploaded file, base64) of up to large_max bytes in a
 * body of up to body_max bytes (both 0: API_BODY_MAX and no large field).
 */
struct api_body_spec {
	size_t body_max;
	const char *large; /* the one field allowed up to large_max bytes, or NULL */
	size_t large_max;
	struct api_list *lists;
	size_t nlists;
};

/*
 * As api_body_parse, with spec (NULL: api_body_parse's limits).  A list
 * field must be an array of strings (no null, no other type, no NUL, at
 * most its max entries).  Returns 0 or 413/415/400 as api_body_parse.
 */
int api_body_parse_spec(const unsigned char *body, size_t len, int is_json, const struct api_body_spec *spec,
			struct api_field *f, size_t nf, json_t **doc, char *msg, size_t msglen);

/*
 * The value of the first cookie called name in a Cookie header
 * ("a=1; name=value; b=2", RFC 6265 §5.4), or NULL if header is NULL, has
 * none or its value is empty; *len its length, cut at max (the caller
 * refuses a value of max bytes as malformed).  A pointer into header.
 */
const char *api_cookie_value(const char *header, const char *name, size_t max, size_t *len);

#endif
