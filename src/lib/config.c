/*
 * Configuration: a table of known keys (each with a default and a
 * validator), a bounded parser for `key = value` files and
 * P11ESCROW_<KEY> environment overrides.
 *
 * The file is outside input: every size is bounded, every value is
 * validated before it is kept, and a failed load leaves the configuration
 * exactly as it was, so a caller never runs on half a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <p11escrow/config.h>

#include "esc_build_config.h"
#include "internal.h"

/* No value needs more; the bound keeps copies and messages small. */
#define VALUE_MAX 1024
/* Longer than any known key: a longer name is simply invalid. */
#define KEY_MAX 64
#define ENV_PREFIX "P11ESCROW_"
#define REASON_MAX 256

struct key;

/* Returns 0 if v is acceptable for k, else -1 with a reason in why. */
typedef int (*check_fn)(const struct key *k, const char *v, char *why, size_t whylen);

struct key {
	const char *name;
	const char *def;
	check_fn check;
	const char *const *choices; /* check_choice: NULL-terminated */
	long min, max;		    /* check_long: inclusive range */
};

static int check_any(const struct key *, const char *, char *, size_t);
static int check_module(const struct key *, const char *, char *, size_t);
static int check_module_allow(const struct key *, const char *, char *, size_t);
static int check_uri(const struct key *, const char *, char *, size_t);
static int check_path(const struct key *, const char *, char *, size_t);
static int check_choice(const struct key *, const char *, char *, size_t);
static int check_nonempty(const struct key *, const char *, char *, size_t);
static int check_long(const struct key *, const char *, char *, size_t);
static int check_listen(const struct key *, const char *, char *, size_t);
static int check_user(const struct key *, const char *, char *, size_t);
static int check_pub_url(const struct key *, const char *, char *, size_t);

static const char *const key_types[] = {"rsa3072", "rsa4096", "ec-p256", "ec-p384", NULL};
/* The transport key does ECDH on every archival: EC first (see DESIGN §4). */
static const char *const transport_types[] = {"ec-p256", "ec-p384", "rsa3072", NULL};
static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const client_auth_modes[] = {"optional", "require", "none", NULL};
static const char *const on_off[] = {"on", "off", NULL};
static const char *const log_formats[] = {"text", "json", NULL};

/* The order here is the order esc_config_key_name() reports. */
static const struct key keys[] = {
	{"database", "", check_any, NULL, 0, 0},
	{"module", "", check_module, NULL, 0, 0},
	/* Where modules may be loaded from (esc_ctx_set_module_allow); the default is the build's. */
	{"module_allow", ESC_DEFAULT_MODULE_ALLOW, check_module_allow, NULL, 0, 0},
	{"ca_token", "pkcs11:token=p11escrow-ca", check_uri, NULL, 0, 0},
	{"ca_pin_file", "", check_path, NULL, 0, 0},
	{"ca_key_type", "rsa3072", check_choice, key_types, 0, 0},
	{"transport_key_type", "ec-p256", check_choice, transport_types, 0, 0},
	{"storage_key_type", "rsa3072", check_choice, key_types, 0, 0},
	{"ca_subject", "CN=p11escrow CA", check_nonempty, NULL, 0, 0},
	{"ca_days", "3650", check_long, NULL, 1, 36500},
	{"listen", "127.0.0.1:8443", check_listen, NULL, 0, 0},
	{"log_level", "info", check_choice, log_levels, 0, 0},
	/* p11escrowd's log lines on stderr: key=value text, or one JSON object a line. */
	{"log_format", "text", check_choice, log_formats, 0, 0},
	/* A file holding the bearer token that may read GET /metrics (read at start); empty: none. */
	{"metrics_token_file", "", check_path, NULL, 0, 0},
	{"workers", "2", check_long, NULL, 1, 64},
	/* Token operations at once in the keeper (gate.h): 0 = one per worker connection, no bound. */
	{"token_sessions", "0", check_long, NULL, 0, 1024},
	/* A file the keeper counts its token operations and their CPU in (bench/run); empty: none. */
	{"token_meter", "", check_path, NULL, 0, 0},
	{"user", "", check_user, NULL, 0, 0},
	{"tls_cert", "", check_path, NULL, 0, 0},
	{"tls_key", "", check_path, NULL, 0, 0},
	{"tls_client_auth", "optional", check_choice, client_auth_modes, 0, 0},
	{"client_cert_recheck", "30", check_long, NULL, 0, 3600},
	/* Accounts' client certificates: enterprise CAs (PEM bundle) besides this CA, and their CRLs (PEM). */
	{"account_cert_ca", "", check_path, NULL, 0, 0},
	{"account_cert_crl", "", check_path, NULL, 0, 0},
	/* Failed logins (accounts, one-time passwords) before 429: per name, per client address; 0 = off. */
	{"auth_fail_limit", "10", check_long, NULL, 0, 1000000},
	{"auth_fail_limit_address", "50", check_long, NULL, 0, 1000000},
	{"auth_fail_window", "300", check_long, NULL, 1, 86400},
	/* JSON API sessions (POST /api/v1/session): seconds without use, and in all, before one ends. */
	{"session_idle_timeout", "900", check_long, NULL, 1, 86400},
	{"session_lifetime", "28800", check_long, NULL, 1, 604800},
	{"max_body", "65536", check_long, NULL, 1024, 1048576},
	{"request_timeout", "30", check_long, NULL, 1, 3600},
	{"shutdown_grace", "30", check_long, NULL, 1, 3600},
	/* Audit checkpoints signed by the service: every N events, every T seconds (0 = off). */
	{"checkpoint_events", "1000", check_long, NULL, 0, 10000000},
	{"checkpoint_seconds", "3600", check_long, NULL, 0, 31622400},
	/* Each checkpoint the service signs is also written here (atomically, 0644) to ship off-host; empty: none. */
	{"audit_checkpoint_file", "", check_path, NULL, 0, 0},
	/* KRA certificates: warn (kra list, GET /api/v1/kras/health, the service's log) this many days ahead. */
	{"kra_expiry_warning_days", "60", check_long, NULL, 0, 36500},
	/* Where relying parties find the CRL and the CA certificate: put into every certificate the CA signs. */
	{"crl_url", "", check_pub_url, NULL, 0, 0},
	{"ca_issuer_url", "", check_pub_url, NULL, 0, 0},
	/* The service's CRLs: valid this many seconds, a new one made after crl_refresh percent of it. */
	{"crl_validity", "604800", check_long, NULL, 60, 31622400},
	{"crl_refresh", "50", check_long, NULL, 10, 90},
	/* The web console's static files under /console/ (p11escrowd); off: 404. */
	{"console", "on", check_choice, on_off, 0, 0},
};

#define NKEYS ESC_ARRAY_LEN(keys)

struct esc_config {
	char *val[NKEYS]; /* heap copies; never NULL once esc_config_new succeeded */
};

/*
 * Digits only: strtol alone would also take blanks, a sign and trailing
 * junk, and none of our integer keys is negative.
 */
static int
parse_long(const char *v, long *out)
{
	char *end;
	long n;

	if (*v < '0' || *v > '9')
		return -1;
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno != 0 || *end != '\0')
		return -1;
	*out = n;
	return 0;
}

static int
check_any(const struct key *k, const char *v, char *why, size_t whylen)
{
	(void)k;
	(void)v;
	(void)why;
	(void)whylen;
	return 0;
}

static int
check_module(const struct key *k, const char *v, char *why, size_t whylen)
{
	static const char p11kit[] = "p11-kit:";

	(void)k;
	if (*v == '\0' || *v == '/')
		return 0;
	if (strncmp(v, p11kit, sizeof(p11kit) - 1) == 0 && v[sizeof(p11kit) - 1] != '\0')
		return 0;
	snprintf(why, whylen, "must be empty, an absolute path to a PKCS#11 module or p11-kit:NAME");
	return -1;
}

/* A ':'-separated list of absolute paths, at least one. */
static int
check_module_allow(const struct key *k, const char *v, char *why, size_t whylen)
{
	const char *p = v;

	(void)k;
	do {
		if (*p != '/') {
			snprintf(why, whylen,
				 "must be a ':'-separated list of absolute paths (directories or module files)");
			return -1;
		}
		p += strcspn(p, ":");
	} while (*p++ != '\0');
	return 0;
}

static int
contains_nocase(const char *hay, const char *needle)
{
	size_t n = strlen(needle);

	for (; *hay != '\0'; hay++)
		if (strncasecmp(hay, needle, n) == 0)
			return 1;
	return 0;
}

/* The value is never echoed: a rejected URI may well hold a PIN. */
static int
check_uri(const struct key *k, const char *v, char *why, size_t whylen)
{
	(void)k;
	if (strncmp(v, "pkcs11:", 7) != 0) {
		snprintf(why, whylen, "must be a PKCS#11 URI starting with 'pkcs11:'");
		return -1;
	}
	if (contains_nocase(v, "pin-value") || contains_nocase(v, "pin-source")) {
		snprintf(why, whylen,
			 "must not contain pin-value or pin-source: PINs never travel in URIs "
			 "(use P11ESCROW_CA_PIN, ca_pin_file or the prompt)");
		return -1;
	}
	/* Only the module setting chooses the module (see esc_token_uri_check); the query follows '?'. */
	if (strchr(v, '?') != NULL &&
	    (contains_nocase(strchr(v, '?'), "module-path") || contains_nocase(strchr(v, '?'), "module-name"))) {
		snprintf(why, whylen,
			 "must not contain module-path or module-name: the PKCS#11 module is chosen by the module "
			 "setting (P11ESCROW_MODULE, --module)");
		return -1;
	}
	return 0;
}

static int
check_path(const struct key *k, const char *v, char *why, size_t whylen)
{
	(void)k;
	if (*v == '\0' || *v == '/')
		return 0;
	snprintf(why, whylen, "must be empty or an absolute path");
	return -1;
}

static int
check_choice(const struct key *k, const char *v, char *why, size_t whylen)
{
	size_t i, len;

	for (i = 0; k->choices[i] != NULL; i++)
		if (strcmp(v, k->choices[i]) == 0)
			return 0;
	snprintf(why, whylen, "must be one of");
	for (i = 0; k->choices[i] != NULL; i++) {
		len = strlen(why);
		snprintf(why + len, whylen - len, "%s %s", i == 0 ? "" : ",", k->choices[i]);
	}
	len = strlen(why);
	snprintf(why + len, whylen - len, ", not '%.64s'", v);
	return -1;
}

static int
check_nonempty(const struct key *k, const char *v, char *why, size_t whylen)
{
	(void)k;
	if (*v != '\0')
		return 0;
	snprintf(why, whylen, "must not be empty");
	return -1;
}

static int
check_long(const struct key *k, const char *v, char *why, size_t whylen)
{
	long n;

	if (parse_long(v, &n) == 0 && n >= k->min && n <= k->max)
		return 0;
	snprintf(why, whylen, "must be an integer from %ld to %ld, not '%.64s'", k->min, k->max, v);
	return -1;
}

/*
 * Empty, or an http, https or ldap URL with a host and no blank (a relying
 * party reads it from certificates: RFC 5280 §4.2.1.13, §4.2.2.1), at most
 * ESC_URL_MAX bytes.  Echoed in the message: it is a public address.
 */
static int
check_pub_url(const struct key *k, const char *v, char *why, size_t whylen)
{
	static const char *const schemes[] = {"http://", "https://", "ldap://"};
	size_t i, n = 0;

	(void)k;
	if (*v == '\0')
		return 0;
	for (i = 0; i < ESC_ARRAY_LEN(schemes) && n == 0; i++)
		if (strncasecmp(v, schemes[i], strlen(schemes[i])) == 0)
			n = strlen(schemes[i]);
	/* ldap:///DN (no host: the client's own directory) is common; http needs a host. */
	if (n > 0 && strlen(v) <= ESC_URL_MAX && strpbrk(v, " \t") == NULL && v[n] != '\0' && v[n] != ':' &&
	    (v[n] != '/' || (n == 7 && strncasecmp(v, "ldap", 4) == 0 && v[n + 1] != '\0')))
		return 0;
	snprintf(why, whylen,
		 "must be empty or an http://, https:// or ldap:// URL with a host, without blanks, of at most %d "
		 "bytes, not '%.64s'",
		 ESC_URL_MAX, v);
	return -1;
}

/* HOST:PORT; an IPv6 host needs brackets, else its colons are ambiguous. */
/* An account name as useradd takes it: [a-z_][a-z0-9_-]*, at most 32 characters; empty: the default. */
static int
check_user(const struct key *k, const char *v, char *why, size_t whylen)
{
	size_t i, n = strlen(v);

	(void)k;
	for (i = 0; i < n; i++)
		if (!((v[i] >= 'a' && v[i] <= 'z') || v[i] == '_' ||
		      (i > 0 && ((v[i] >= '0' && v[i] <= '9') || v[i] == '-'))))
			break;
	if (i == n && n <= 32)
		return 0;
	snprintf(why, whylen, "not an account name ([a-z_][a-z0-9_-]*, at most 32 characters)");
	return -1;
}

static int
check_listen(const struct key *k, const char *v, char *why, size_t whylen)
{
	const char *colon = strrchr(v, ':');
	size_t hostlen;
	long port;

	(void)k;
	if (colon == NULL)
		goto bad;
	hostlen = (size_t)(colon - v);
	if (hostlen == 0 || memchr(v, ' ', hostlen) != NULL || memchr(v, '\t', hostlen) != NULL)
		goto bad;
	if (v[0] == '[') {
		if (hostlen < 3 || v[hostlen - 1] != ']')
			goto bad;
	} else if (memchr(v, ':', hostlen) != NULL || memchr(v, ']', hostlen) != NULL)
		goto bad;
	if (parse_long(colon + 1, &port) != 0 || port < 1 || port > 65535)
		goto bad;
	return 0;
bad:
	snprintf(why, whylen, "must be HOST:PORT ([ADDRESS]:PORT for IPv6) with a port from 1 to 65535, not '%.64s'",
		 v);
	return -1;
}

/* Checks every value shares, then the key's own. */
static int
check_value(const struct key *k, const char *v, char *why, size_t whylen)
{
	const unsigned char *p;

	if (strlen(v) > VALUE_MAX) {
		snprintf(why, whylen, "is longer than %d bytes", VALUE_MAX);
		return -1;
	}
	/* Values end up in logs and messages: no terminal control sequences. */
	for (p = (const unsigned char *)v; *p != '\0'; p++) {
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f) {
			snprintf(why, whylen, "must not contain control characters");
			return -1;
		}
	}
	return k->check(k, v, why, whylen);
}

/* origin names the source; lineno is 0 when there is no line to name. */
static enum esc_err
validate(struct esc_ctx *ctx, const struct key *k, const char *v, const char *origin, size_t lineno)
{
	char why[REASON_MAX];

	if (check_value(k, v, why, sizeof(why)) == 0)
		return ESC_OK;
	if (lineno == 0)
		return esc_error(ctx, ESC_ERR_CONFIG, "%s: %s %s", origin, k->name, why);
	return esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: %s %s", origin, lineno, k->name, why);
}

static const struct key *
find_key(const char *name)
{
	size_t i;

	for (i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

static int
valid_key_name(const char *s)
{
	size_t n;

	for (n = 0; s[n] != '\0'; n++)
		if ((s[n] < 'a' || s[n] > 'z') && s[n] != '_')
			return 0;
	return n > 0 && n <= KEY_MAX;
}

static int
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static char *
skip_blanks(char *s)
{
	while (is_blank(*s))
		s++;
	return s;
}

static void
trim_right(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && is_blank(s[n - 1]))
		s[--n] = '\0';
}

/* Moves every staged value into cfg; cannot fail, so a load is all or nothing. */
static void
commit(struct esc_config *cfg, char **staged)
{
	size_t i;

	for (i = 0; i < NKEYS; i++) {
		if (staged[i] == NULL)
			continue;
		free(cfg->val[i]);
		cfg->val[i] = staged[i];
		staged[i] = NULL; /* transferred */
	}
}

static void
free_staged(char **staged)
{
	size_t i;

	for (i = 0; i < NKEYS; i++) {
		free(staged[i]);
		staged[i] = NULL;
	}
}

enum esc_err
esc_config_new(struct esc_ctx *ctx, struct esc_config **out)
{
	struct esc_config *cfg = NULL;
	size_t i;
	enum esc_err r;

	if ((cfg = calloc(1, sizeof(*cfg))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < NKEYS; i++) {
		if ((cfg->val[i] = strdup(keys[i].def)) == NULL) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
	}
	*out = cfg;
	cfg = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_config_free(cfg);
	return r;
}

void
esc_config_free(struct esc_config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < NKEYS; i++)
		free(cfg->val[i]);
	free(cfg);
}

/*
 * Strip the quotes of a quoted value in place, resolving \" and \\.  Other
 * escapes are refused rather than kept, so a Windows path or a regex does
 * not silently mean something else later.
 */
static enum esc_err
unquote(struct esc_ctx *ctx, char *val, const char *origin, size_t lineno)
{
	char *src = val + 1, *dst = val;
	enum esc_err r;

	for (;;) {
		if (*src == '\0' || (*src == '\\' && src[1] == '\0')) {
			r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: unterminated quoted value", origin, lineno);
			goto out;
		}
		if (*src == '"')
			break;
		if (*src == '\\') {
			src++;
			if (*src != '"' && *src != '\\') {
				r = esc_error(ctx, ESC_ERR_CONFIG,
					      "%s:%zu: invalid escape in quoted value (only \\\" and \\\\ are allowed)",
					      origin, lineno);
				goto out;
			}
		}
		*dst++ = *src++;
	}
	if (src[1] != '\0') {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: text after the closing quote", origin, lineno);
		goto out;
	}
	*dst = '\0';
	r = ESC_OK;
out:
	return r;
}

/*
 * One line (NUL-terminated, without its newline), parsed in place.  A key it
 * sets is staged in staged[] and its line recorded in seen[].
 */
static enum esc_err
parse_line(struct esc_ctx *ctx, char *line, const char *origin, size_t lineno, char **staged, size_t *seen)
{
	char *key, *val, *eq;
	const struct key *k;
	size_t i;
	enum esc_err r;

	key = skip_blanks(line);
	trim_right(key);
	if (*key == '\0' || *key == '#') {
		r = ESC_OK;
		goto out;
	}
	if ((eq = strchr(key, '=')) == NULL) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: expected 'key = value'", origin, lineno);
		goto out;
	}
	*eq = '\0';
	trim_right(key);
	val = skip_blanks(eq + 1);
	/* An invalid name is not echoed: it may be any bytes. */
	if (!valid_key_name(key)) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: invalid key name (lower-case letters and '_' only)", origin,
			      lineno);
		goto out;
	}
	if ((k = find_key(key)) == NULL) {
		/* Someone will try to put the PIN here: say where it belongs. */
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: unknown key '%s'%s", origin, lineno, key,
			      strstr(key, "pin") != NULL ? " (a PIN is never a config value: use ca_pin_file or "
							   "P11ESCROW_CA_PIN)"
							 : "");
		goto out;
	}
	i = (size_t)(k - keys);
	if (seen[i] != 0) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: duplicate key '%s' (first set on line %zu)", origin, lineno,
			      key, seen[i]);
		goto out;
	}
	if (*val == '"') {
		if ((r = unquote(ctx, val, origin, lineno)) != ESC_OK)
			goto out;
	} else if (strchr(val, '#') != NULL) {
		/* Comments take a whole line; a '#' here is ambiguous. */
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: a value containing '#' must be double-quoted", origin,
			      lineno);
		goto out;
	}
	if ((r = validate(ctx, k, val, origin, lineno)) != ESC_OK)
		goto out;
	/*
	 * staged[i] is NULL here: a duplicate was refused above.  clang's
	 * analyzer cannot tell this staged[i] from an earlier line's (a store at
	 * a symbolic index drops what it knew of the others) and reports that
	 * earlier copy as leaked on the next statement.
	 */
	if ((staged[i] = strdup(val)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	seen[i] = lineno; // NOLINT(clang-analyzer-unix.Malloc): false leak, see above
	r = ESC_OK;
out:
	return r;
}

enum esc_err
esc_config_load_buffer(struct esc_ctx *ctx, struct esc_config *cfg, const char *buf, size_t len, const char *origin)
{
	char *staged[NKEYS] = {NULL};
	size_t seen[NKEYS] = {0};
	char line[ESC_CONFIG_LINE_MAX + 1];
	const char *nl;
	size_t pos = 0, next, n, lineno = 0;
	enum esc_err r;

	if (origin == NULL)
		origin = "(config)";
	if (buf == NULL && len != 0) {
		r = esc_error(ctx, ESC_ERR_USAGE, "%s: no buffer", origin);
		goto out;
	}
	if (len > ESC_CONFIG_FILE_MAX) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s: larger than %d bytes", origin, ESC_CONFIG_FILE_MAX);
		goto out;
	}
	while (pos < len) {
		lineno++;
		nl = memchr(buf + pos, '\n', len - pos);
		n = nl != NULL ? (size_t)(nl - (buf + pos)) : len - pos;
		next = pos + n + 1;
		if (memchr(buf + pos, '\0', n) != NULL) {
			r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: NUL byte in line", origin, lineno);
			goto out;
		}
		if (n > 0 && buf[pos + n - 1] == '\r')
			n--;
		if (n > ESC_CONFIG_LINE_MAX) {
			r = esc_error(ctx, ESC_ERR_CONFIG, "%s:%zu: line longer than %d bytes", origin, lineno,
				      ESC_CONFIG_LINE_MAX);
			goto out;
		}
		memcpy(line, buf + pos, n);
		line[n] = '\0';
		if ((r = parse_line(ctx, line, origin, lineno, staged, seen)) != ESC_OK)
			goto out;
		pos = next;
	}
	commit(cfg, staged);
	r = ESC_OK;
out:
	free_staged(staged);
	return r;
}

enum esc_err
esc_config_load_file(struct esc_ctx *ctx, struct esc_config *cfg, const char *path)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	ssize_t got;
	int fd = -1;
	enum esc_err r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1 || fstat(fd, &st) == -1) {
		r = esc_error(ctx, ESC_ERR_IO, "cannot read config file '%s': %s", path, strerror(errno));
		goto out;
	}
	if (S_ISREG(st.st_mode) && st.st_size > ESC_CONFIG_FILE_MAX) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s: larger than %d bytes", path, ESC_CONFIG_FILE_MAX);
		goto out;
	}
	/* One byte more than allowed, so a file that grew after fstat is still caught. */
	if ((buf = malloc(ESC_CONFIG_FILE_MAX + 1)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	while (len < ESC_CONFIG_FILE_MAX + 1) {
		got = read(fd, buf + len, ESC_CONFIG_FILE_MAX + 1 - len);
		if (got == -1 && errno == EINTR)
			continue;
		if (got == -1) {
			r = esc_error(ctx, ESC_ERR_IO, "cannot read config file '%s': %s", path, strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	if (len > ESC_CONFIG_FILE_MAX) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "%s: larger than %d bytes", path, ESC_CONFIG_FILE_MAX);
		goto out;
	}
	r = esc_config_load_buffer(ctx, cfg, buf, len, path);
out:
	free(buf);
	if (fd != -1)
		close(fd);
	return r;
}

/* P11ESCROW_ + the key upper-cased; keys are short, so it always fits. */
static void
env_name(const char *key, char *var, size_t varlen)
{
	size_t n = sizeof(ENV_PREFIX) - 1, i;

	memcpy(var, ENV_PREFIX, n);
	for (i = 0; key[i] != '\0' && n + 1 < varlen; i++)
		var[n++] = key[i] >= 'a' && key[i] <= 'z' ? (char)(key[i] - 'a' + 'A') : key[i];
	var[n] = '\0';
}

enum esc_err
esc_config_apply_env(struct esc_ctx *ctx, struct esc_config *cfg)
{
	char *staged[NKEYS] = {NULL};
	char var[sizeof(ENV_PREFIX) + KEY_MAX];
	const char *v;
	size_t i;
	enum esc_err r;

	/* Staged like a file load, so one bad variable changes nothing. */
	for (i = 0; i < NKEYS; i++) {
		env_name(keys[i].name, var, sizeof(var));
		if ((v = getenv(var)) == NULL)
			continue;
		if ((r = validate(ctx, &keys[i], v, var, 0)) != ESC_OK)
			goto out;
		if ((staged[i] = strdup(v)) == NULL) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
	}
	commit(cfg, staged);
	r = ESC_OK;
out:
	free_staged(staged);
	return r;
}

enum esc_err
esc_config_set(struct esc_ctx *ctx, struct esc_config *cfg, const char *key, const char *value)
{
	const struct key *k;
	char *copy = NULL;
	size_t i;
	enum esc_err r;

	if (key == NULL || value == NULL) {
		r = esc_error(ctx, ESC_ERR_USAGE, "esc_config_set: key and value are required");
		goto out;
	}
	if (!valid_key_name(key) || (k = find_key(key)) == NULL) {
		r = esc_error(ctx, ESC_ERR_CONFIG, "unknown configuration key '%.64s'", key);
		goto out;
	}
	if ((r = validate(ctx, k, value, "configuration", 0)) != ESC_OK)
		goto out;
	if ((copy = strdup(value)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	i = (size_t)(k - keys);
	free(cfg->val[i]);
	cfg->val[i] = copy;
	copy = NULL; /* transferred */
	r = ESC_OK;
out:
	free(copy);
	return r;
}

const char *
esc_config_get(const struct esc_config *cfg, const char *key)
{
	const struct key *k;

	if (key == NULL || (k = find_key(key)) == NULL)
		return NULL;
	return cfg->val[k - keys];
}

long
esc_config_get_long(const struct esc_config *cfg, const char *key)
{
	const struct key *k;
	long n;

	if (key == NULL || (k = find_key(key)) == NULL || k->check != check_long)
		return 0;
	if (parse_long(cfg->val[k - keys], &n) != 0)
		return 0;
	return n;
}

enum esc_err
esc_config_set_publication(struct esc_ctx *ctx, const struct esc_config *cfg)
{
	struct esc_publication p = {
		esc_config_get(cfg, "crl_url"),
		esc_config_get(cfg, "ca_issuer_url"),
		esc_config_get_long(cfg, "crl_validity"),
		(int)esc_config_get_long(cfg, "crl_refresh"),
	};

	return esc_ctx_set_publication(ctx, &p);
}

const char *
esc_config_key_name(size_t i)
{
	return i < NKEYS ? keys[i].name : NULL;
}
