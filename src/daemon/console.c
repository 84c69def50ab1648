/*
 * p11escrowd — the web console under /console/ (docs/console.md).
 *
 * Static files only, embedded at build time (console_files.h): the pages
 * talk to the JSON API like any other client, so every rule stays in the
 * library.  Every answer under /console carries a strict
 * Content-Security-Policy (no inline script or style, nothing from another
 * origin, no framing), nosniff and no referrer; the files are revalidated
 * on every load (ETag), so an upgraded service never runs a stale console.
 * Configuration key console = off answers 404 for all of it.
 */
#include <string.h>

#include "console_files.h"
#include "svc.h"

#define CONSOLE_CSP                                                                                     \
	"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " \
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

/* The headers of every answer under /console, errors included. */
static void
console_headers(struct svc_request *r)
{
	svc_add_header(r, "Content-Security-Policy", CONSOLE_CSP);
	svc_add_header(r, "Referrer-Policy", "no-referrer");
	/* For browsers without frame-ancestors: clickjacking refused either way. */
	svc_add_header(r, "X-Frame-Options", "DENY");
	svc_add_header(r, "Cross-Origin-Opener-Policy", "same-origin");
	svc_add_header(r, "Cross-Origin-Resource-Policy", "same-origin");
	svc_add_header(r, "Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()");
}

/* The embedded file named name ("" is index.html), or NULL. */
static const struct console_file *
console_file(const char *name)
{
	unsigned i;

	if (*name == '\0')
		name = "index.html";
	for (i = 0; i < console_files_count; i++)
		if (strcmp(console_files[i].name, name) == 0)
			return &console_files[i];
	return NULL;
}

/* Does an If-None-Match header list etag (or "*")? */
static int
etag_matches(const char *inm, const char *etag)
{
	size_t n = strlen(etag);
	const char *p;

	if (inm == NULL)
		return 0;
	if (strcmp(inm, "*") == 0)
		return 1;
	for (p = inm; (p = strstr(p, etag)) != NULL; p += n)
		if ((p == inm || p[-1] == ' ' || p[-1] == ',' || p[-1] == '/') &&
		    (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
			return 1;
	return 0;
}

void
svc_console_handle(struct svc_request *r, const char *rest)
{
	const struct console_file *f;

	if (!r->w->console) {
		svc_reply_error(r, 404, "no such resource");
		return;
	}
	console_headers(r);
	if (r->method != EVHTTP_REQ_GET) {
		svc_add_header(r, "Allow", "GET");
		svc_reply_error(r, 405, "method not allowed");
		return;
	}
	if (*rest == '\0') { /* /console: the pages' relative links need the slash */
		svc_add_header(r, "Location", "/console/");
		svc_reply(r, 301, "text/plain; charset=utf-8", "see /console/\n", 14);
		return;
	}
	if (*rest != '/' || strchr(rest + 1, '/') != NULL || (f = console_file(rest + 1)) == NULL) {
		svc_reply_error(r, 404, "no such resource");
		return;
	}
	/* Revalidated at every load: small files, and never a stale console after an upgrade. */
	svc_add_header(r, "Cache-Control", "no-cache");
	svc_add_header(r, "ETag", f->etag);
	if (etag_matches(svc_header(r, "If-None-Match"), f->etag)) {
		svc_reply(r, 304, f->content_type, NULL, 0);
		return;
	}
	svc_reply(r, 200, f->content_type, f->data, f->len);
}
