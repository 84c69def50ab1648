/*
 * p11escrowd — the web console's static files, embedded at build time
 * (www/embed.py writes console_files.c from www/console/).
 */
#ifndef P11ESCROWD_CONSOLE_FILES_H
#define P11ESCROWD_CONSOLE_FILES_H

#include <stddef.h>

struct console_file {
	const char *name;	  /* the file's name under /console/, e.g. "app.js" */
	const char *content_type; /* from its extension */
	const char *etag;	  /* a quoted strong validator: the start of its SHA-256 */
	const unsigned char *data;
	size_t len;
};

extern const struct console_file console_files[];
extern const unsigned console_files_count;

#endif
