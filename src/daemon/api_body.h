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

#endif
