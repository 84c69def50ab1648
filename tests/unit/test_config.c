/*
 * Unit tests for the configuration parser, validators and overrides.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <p11escrow/config.h>
#include <p11escrow/ctx.h>

struct fixture {
	struct esc_ctx *ctx;
	struct esc_config *cfg;
};

/* Tests must not see overrides from the environment they run in. */
static void
clear_env(void)
{
	char var[128];
	const char *k;
	size_t i, j;

	for (i = 0; (k = esc_config_key_name(i)) != NULL; i++) {
		snprintf(var, sizeof(var), "P11ESCROW_");
		for (j = 0; k[j] != '\0'; j++)
			var[10 + j] = (char)(k[j] >= 'a' && k[j] <= 'z' ? k[j] - 'a' + 'A' : k[j]);
		var[10 + j] = '\0';
		unsetenv(var);
	}
}

static int
setup(void **state)
{
	struct fixture *f;

	clear_env();
	if ((f = calloc(1, sizeof(*f))) == NULL)
		return -1;
	if (esc_ctx_new(&f->ctx) != ESC_OK || esc_config_new(f->ctx, &f->cfg) != ESC_OK)
		return -1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	clear_env();
	esc_config_free(f->cfg);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

static enum esc_err
load(struct fixture *f, const char *text)
{
	return esc_config_load_buffer(f->ctx, f->cfg, text, strlen(text), "t.conf");
}

/* Every key's current value, to prove a failed load changed nothing. */
struct snapshot {
	char val[64][1025]; /* values are at most 1024 bytes; room for every key */
};

static void
take_snapshot(const struct esc_config *cfg, struct snapshot *s)
{
	const char *k, *v;
	size_t i;

	for (i = 0; (k = esc_config_key_name(i)) != NULL; i++) {
		assert_true(i < sizeof(s->val) / sizeof(s->val[0]));
		assert_non_null(v = esc_config_get(cfg, k));
		assert_true(strlen(v) < sizeof(s->val[i]));
		strcpy(s->val[i], v);
	}
}

static void
assert_snapshot(const struct esc_config *cfg, const struct snapshot *s)
{
	const char *k;
	size_t i;

	for (i = 0; (k = esc_config_key_name(i)) != NULL; i++)
		assert_string_equal(esc_config_get(cfg, k), s->val[i]);
}

static void
assert_msg_contains(struct fixture *f, const char *needle)
{
	const char *msg = esc_ctx_errmsg(f->ctx);

	if (strstr(msg, needle) == NULL)
		fail_msg("message '%s' lacks '%s'", msg, needle);
}

static void
assert_msg_lacks(struct fixture *f, const char *needle)
{
	const char *msg = esc_ctx_errmsg(f->ctx);

	if (strstr(msg, needle) != NULL)
		fail_msg("message '%s' contains '%s'", msg, needle);
}

static void
test_defaults(void **state)
{
	struct fixture *f = *state;
	size_t n;

	assert_string_equal(esc_config_get(f->cfg, "database"), "");
	assert_string_equal(esc_config_get(f->cfg, "module"), "");
	/* module_allow: the build's default list, never empty. */
	assert_string_equal(esc_config_get(f->cfg, "module_allow"), esc_ctx_module_allow(f->ctx));
	assert_true(esc_config_get(f->cfg, "module_allow")[0] == '/');
	assert_string_equal(esc_config_get(f->cfg, "ca_token"), "pkcs11:token=p11escrow-ca");
	assert_string_equal(esc_config_get(f->cfg, "ca_pin_file"), "");
	assert_string_equal(esc_config_get(f->cfg, "ca_key_type"), "rsa3072");
	assert_string_equal(esc_config_get(f->cfg, "transport_key_type"), "ec-p256");
	assert_string_equal(esc_config_get(f->cfg, "storage_key_type"), "rsa3072");
	assert_string_equal(esc_config_get(f->cfg, "ca_subject"), "CN=p11escrow CA");
	assert_string_equal(esc_config_get(f->cfg, "ca_days"), "3650");
	assert_string_equal(esc_config_get(f->cfg, "listen"), "127.0.0.1:8443");
	assert_string_equal(esc_config_get(f->cfg, "log_level"), "info");
	assert_string_equal(esc_config_get(f->cfg, "log_format"), "text");
	assert_string_equal(esc_config_get(f->cfg, "metrics_token_file"), "");
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 3650);
	assert_int_equal(esc_config_get_long(f->cfg, "workers"), 2);
	assert_string_equal(esc_config_get(f->cfg, "tls_cert"), "");
	assert_string_equal(esc_config_get(f->cfg, "tls_key"), "");
	assert_string_equal(esc_config_get(f->cfg, "tls_client_auth"), "optional");
	assert_int_equal(esc_config_get_long(f->cfg, "client_cert_recheck"), 30);
	assert_int_equal(esc_config_get_long(f->cfg, "auth_fail_limit"), 10);
	assert_int_equal(esc_config_get_long(f->cfg, "auth_fail_limit_address"), 50);
	assert_int_equal(esc_config_get_long(f->cfg, "auth_fail_window"), 300);
	assert_int_equal(esc_config_get_long(f->cfg, "session_idle_timeout"), 900);
	assert_int_equal(esc_config_get_long(f->cfg, "session_lifetime"), 28800);
	assert_int_equal(esc_config_get_long(f->cfg, "max_body"), 65536);
	assert_int_equal(esc_config_get_long(f->cfg, "request_timeout"), 30);
	assert_int_equal(esc_config_get_long(f->cfg, "shutdown_grace"), 30);
	assert_int_equal(esc_config_get_long(f->cfg, "checkpoint_events"), 1000);
	assert_int_equal(esc_config_get_long(f->cfg, "checkpoint_seconds"), 3600);
	assert_string_equal(esc_config_get(f->cfg, "audit_checkpoint_file"), "");
	assert_int_equal(esc_config_get_long(f->cfg, "kra_expiry_warning_days"), 60);
	assert_string_equal(esc_config_get(f->cfg, "account_cert_ca"), "");
	assert_string_equal(esc_config_get(f->cfg, "account_cert_crl"), "");
	assert_string_equal(esc_config_get(f->cfg, "user"), "");
	assert_string_equal(esc_config_get(f->cfg, "crl_url"), "");
	assert_string_equal(esc_config_get(f->cfg, "ca_issuer_url"), "");
	assert_int_equal(esc_config_get_long(f->cfg, "crl_validity"), 604800);
	assert_int_equal(esc_config_get_long(f->cfg, "crl_refresh"), 50);
	assert_string_equal(esc_config_get(f->cfg, "console"), "on");

	assert_null(esc_config_get(f->cfg, "nope"));
	assert_null(esc_config_get(f->cfg, NULL));
	assert_int_equal(esc_config_get_long(f->cfg, "nope"), 0);
	assert_int_equal(esc_config_get_long(f->cfg, "listen"), 0);

	for (n = 0; esc_config_key_name(n) != NULL; n++)
		assert_non_null(esc_config_get(f->cfg, esc_config_key_name(n)));
	assert_int_equal(n, 41);
	assert_string_equal(esc_config_key_name(0), "database");
	assert_null(esc_config_key_name(1000));

	/* Defaults themselves must pass validation. */
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_token", esc_config_get(f->cfg, "ca_token")), ESC_OK);
	esc_config_free(NULL);
}

static void
test_valid_file(void **state)
{
	struct fixture *f = *state;
	static const char text[] = "# p11escrowd configuration\n"
				   "\n"
				   "   \t\n"
				   "  # indented comment\n"
				   "database = host=/run/postgresql dbname=escrow\r\n"
				   "\tmodule=p11-kit:softhsm2  \n"
				   "ca_token = \"pkcs11:token=My%20CA;object=ca\"\r\n"
				   "ca_subject = \"  CN=Test \\\"CA\\\" #1 \\\\ x  \"\n"
				   "ca_days=42\n"
				   "listen = [::1]:9443\n"
				   "ca_pin_file = /etc/p11escrow/ca.pin\n"
				   "ca_key_type = ec-p384\n"
				   "transport_key_type = rsa3072\n"
				   "storage_key_type = rsa4096\n"
				   "log_level = debug"; /* no final newline */

	assert_int_equal(load(f, text), ESC_OK);
	assert_string_equal(esc_config_get(f->cfg, "database"), "host=/run/postgresql dbname=escrow");
	assert_string_equal(esc_config_get(f->cfg, "module"), "p11-kit:softhsm2");
	assert_string_equal(esc_config_get(f->cfg, "ca_token"), "pkcs11:token=My%20CA;object=ca");
	assert_string_equal(esc_config_get(f->cfg, "ca_subject"), "  CN=Test \"CA\" #1 \\ x  ");
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 42);
	assert_string_equal(esc_config_get(f->cfg, "listen"), "[::1]:9443");
	assert_string_equal(esc_config_get(f->cfg, "ca_pin_file"), "/etc/p11escrow/ca.pin");
	assert_string_equal(esc_config_get(f->cfg, "ca_key_type"), "ec-p384");
	assert_string_equal(esc_config_get(f->cfg, "transport_key_type"), "rsa3072");
	assert_string_equal(esc_config_get(f->cfg, "storage_key_type"), "rsa4096");
	assert_string_equal(esc_config_get(f->cfg, "log_level"), "debug");

	/* A second file may set the same keys again: duplicates are per file. */
	assert_int_equal(load(f, "ca_days = 7\ndatabase =\n"), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 7);
	assert_string_equal(esc_config_get(f->cfg, "database"), "");
	assert_string_equal(esc_config_get(f->cfg, "log_level"), "debug");

	/* Empty input is a valid, empty file. */
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, NULL, 0, "empty"), ESC_OK);
	assert_int_equal(load(f, "\n\n# only comments\n"), ESC_OK);
}

struct bad_case {
	const char *text;
	const char *line; /* expected ":N:" */
	const char *also; /* another expected piece of the message, or NULL */
};

/* Each starts with a valid line, so a partial apply would be visible. */
static const struct bad_case bad_cases[] = {
	{"ca_days = 10\nfoo = 1\n", "t.conf:2:", "unknown key 'foo'"},
	{"ca_days = 10\nca_pin = 1234\n", "t.conf:2:", "ca_pin_file"},
	{"ca_days = 10\n\nca_days = 11\n", "t.conf:3:", "duplicate key 'ca_days'"},
	{"ca_days = 10\njust some words\n", "t.conf:2:", "key = value"},
	{"ca_days = 10\nCA_DAYS = 11\n", "t.conf:2:", "invalid key"},
	{"ca_days = 10\n = 11\n", "t.conf:2:", "invalid key"},
	{"ca_days = 10\nca_key_type = rsa2048\n", "t.conf:2:", "rsa2048"},
	{"ca_days = 10\ntransport_key_type = rsa4096\n", "t.conf:2:", "transport_key_type"},
	{"ca_days = 10\nlog_level = verbose\n", "t.conf:2:", "log_level"},
	{"log_format = xml\n", "t.conf:1:", "log_format"},
	{"log_level = warn\nca_days = ten\n", "t.conf:2:", "integer"},
	{"log_level = warn\nca_days = 10x\n", "t.conf:2:", "integer"},
	{"log_level = warn\nca_days = \n", "t.conf:2:", "integer"},
	{"log_level = warn\nca_days = 0\n", "t.conf:2:", "1 to 36500"},
	{"log_level = warn\nca_days = 36501\n", "t.conf:2:", "1 to 36500"},
	{"log_level = warn\nca_days = -5\n", "t.conf:2:", "1 to 36500"},
	{"log_level = warn\nca_days = 99999999999999999999999\n", "t.conf:2:", "1 to 36500"},
	{"ca_days = 10\nca_token = pkcs11:token=ca;pin-value=1234\n", "t.conf:2:", "PINs never travel in URIs"},
	{"ca_days = 10\nca_token = \"pkcs11:token=ca?pin-source=file:/p\"\n", "t.conf:2:", "PINs never travel"},
	{"ca_days = 10\nca_token = pkcs11:token=ca?PIN-VALUE=1\n", "t.conf:2:", "PINs never travel"},
	{"ca_days = 10\nca_token = token=ca\n", "t.conf:2:", "pkcs11:"},
	{"ca_days = 10\nca_subject = \"CN=x\n", "t.conf:2:", "unterminated"},
	{"ca_days = 10\nca_subject = \"CN=x\\\"\n", "t.conf:2:", "unterminated"},
	{"ca_days = 10\nca_subject = \"CN=x\\\n", "t.conf:2:", "unterminated"},
	{"ca_days = 10\nca_subject = \"CN=\\n\"\n", "t.conf:2:", "escape"},
	{"ca_days = 10\nca_subject = \"CN=x\" y\n", "t.conf:2:", "closing quote"},
	{"ca_days = 10\nlisten = 0.0.0.0:8443 # public\n", "t.conf:2:", "double-quoted"},
	{"ca_days = 10\nca_subject =\n", "t.conf:2:", "empty"},
	{"ca_days = 10\nca_subject = \"CN=\x1b[2J\"\n", "t.conf:2:", "control"},
	{"ca_days = 10\nmodule = libsofthsm2.so\n", "t.conf:2:", "module"},
	{"ca_days = 10\nmodule = p11-kit:\n", "t.conf:2:", "module"},
	{"ca_days = 10\nmodule_allow =\n", "t.conf:2:", "module_allow must be a ':'-separated list of absolute"},
	{"ca_days = 10\nmodule_allow = lib/pkcs11\n", "t.conf:2:", "module_allow must be"},
	{"ca_days = 10\nmodule_allow = /usr/lib::/opt/hsm\n", "t.conf:2:", "module_allow must be"},
	{"ca_days = 10\nmodule_allow = /usr/lib:\n", "t.conf:2:", "module_allow must be"},
	{"ca_days = 10\nca_token = pkcs11:token=CA?module-path=/tmp/evil.so\n", "t.conf:2:", "module-path"},
	{"ca_days = 10\nca_token = pkcs11:token=CA?MODULE-NAME=softhsm2\n", "t.conf:2:", "module setting"},
	{"ca_days = 10\nca_pin_file = ca.pin\n", "t.conf:2:", "absolute"},
	{"ca_days = 10\nlisten = 127.0.0.1\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\nlisten = 127.0.0.1:0\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\nlisten = 127.0.0.1:65536\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\nlisten = :8443\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\nlisten = ::1:8443\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\nlisten = []:8443\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\nlisten = localhost:http\n", "t.conf:2:", "HOST:PORT"},
	{"ca_days = 10\r\n\r\nlog_level = loud\r\n", "t.conf:3:", "log_level"},
};

static void
test_bad_lines(void **state)
{
	struct fixture *f = *state;
	struct snapshot snap;
	size_t i;

	for (i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		esc_ctx_clear_error(f->ctx);
		take_snapshot(f->cfg, &snap);
		if (load(f, bad_cases[i].text) != ESC_ERR_CONFIG)
			fail_msg("case %zu was accepted: %s", i, bad_cases[i].text);
		assert_int_equal(esc_ctx_errcode(f->ctx), ESC_ERR_CONFIG);
		assert_msg_contains(f, bad_cases[i].line);
		if (bad_cases[i].also != NULL)
			assert_msg_contains(f, bad_cases[i].also);
		assert_snapshot(f->cfg, &snap);
	}
}

/* A PIN in a rejected URI must not be copied into the error message. */
static void
test_pin_not_echoed(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(load(f, "ca_token = pkcs11:token=ca;pin-value=s3cr3t\n"), ESC_ERR_CONFIG);
	assert_msg_lacks(f, "s3cr3t");
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_token", "pkcs11:pin-value=s3cr3t"), ESC_ERR_CONFIG);
	assert_msg_lacks(f, "s3cr3t");
	assert_msg_contains(f, "PINs never travel in URIs");
	assert_int_equal(load(f, "ca_pin = s3cr3t\n"), ESC_ERR_CONFIG);
	assert_msg_lacks(f, "s3cr3t");
}

static void
test_line_length(void **state)
{
	struct fixture *f = *state;
	struct snapshot snap;
	size_t n = 32 + ESC_CONFIG_LINE_MAX + 8;
	char *buf;

	assert_non_null(buf = malloc(n));

	/* A comment of exactly ESC_CONFIG_LINE_MAX bytes (plus CRLF) is fine. */
	memset(buf, '#', ESC_CONFIG_LINE_MAX);
	memcpy(buf + ESC_CONFIG_LINE_MAX, "\r\nca_days = 5\n", 14);
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, buf, ESC_CONFIG_LINE_MAX + 14, "t.conf"), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 5);

	/* One byte more on line 2 is not. */
	memcpy(buf, "log_level = warn\n", 17);
	memset(buf + 17, '#', ESC_CONFIG_LINE_MAX + 1);
	buf[17 + ESC_CONFIG_LINE_MAX + 1] = '\n';
	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, buf, 17 + ESC_CONFIG_LINE_MAX + 2, "t.conf"),
			 ESC_ERR_CONFIG);
	assert_msg_contains(f, "t.conf:2:");
	assert_msg_contains(f, "longer");
	assert_snapshot(f->cfg, &snap);

	/* Same without the final newline. */
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, buf, 17 + ESC_CONFIG_LINE_MAX + 1, "t.conf"),
			 ESC_ERR_CONFIG);
	assert_msg_contains(f, "t.conf:2:");
	assert_snapshot(f->cfg, &snap);
	free(buf);
}

/* Fill n bytes with 64-byte comment lines, then a final key. */
static char *
make_big(size_t n)
{
	static const char tail[] = "ca_days = 9\n";
	char *buf;
	size_t i;

	assert_true(n > sizeof(tail));
	assert_non_null(buf = malloc(n));
	memset(buf, '#', n);
	for (i = 63; i < n; i += 64)
		buf[i] = '\n';
	buf[n - sizeof(tail)] = '\n';
	memcpy(buf + n - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
	return buf;
}

static void
test_buffer_size(void **state)
{
	struct fixture *f = *state;
	struct snapshot snap;
	char *buf;

	buf = make_big(ESC_CONFIG_FILE_MAX);
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, buf, ESC_CONFIG_FILE_MAX, "t.conf"), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 9);
	free(buf);

	assert_int_equal(load(f, "ca_days = 3650\n"), ESC_OK);
	buf = make_big(ESC_CONFIG_FILE_MAX + 1);
	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, buf, ESC_CONFIG_FILE_MAX + 1, "t.conf"),
			 ESC_ERR_CONFIG);
	assert_msg_contains(f, "t.conf");
	assert_msg_contains(f, "65536");
	assert_snapshot(f->cfg, &snap);
	free(buf);
}

static void
test_nul_byte(void **state)
{
	struct fixture *f = *state;
	struct snapshot snap;
	static const char text[] = "ca_days = 10\n# fine\nlog_level = de\0bug\nca_subject = CN=x\n";

	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, text, sizeof(text) - 1, "t.conf"), ESC_ERR_CONFIG);
	assert_msg_contains(f, "t.conf:3:");
	assert_msg_contains(f, "NUL");
	assert_snapshot(f->cfg, &snap);

	/* Also inside a comment: the file is not text. */
	assert_int_equal(esc_config_load_buffer(f->ctx, f->cfg, "#\0\n", 3, "t.conf"), ESC_ERR_CONFIG);
	assert_msg_contains(f, "t.conf:1:");
	assert_snapshot(f->cfg, &snap);
}

static void
test_set(void **state)
{
	struct fixture *f = *state;
	char big[1100];

	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_days", "36500"), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 36500);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_days", "1"), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 1);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_days", " 2"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_days", "+2"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 1);
	/* user: an account name, or empty (the default). */
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "p11escrow"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "_svc-1"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "root"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "1abc"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "Root"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "a b"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", "abcdefghijabcdefghijabcdefghijabc"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "user", ""), ESC_OK);

	assert_int_equal(esc_config_set(f->ctx, f->cfg, "bogus", "1"), ESC_ERR_CONFIG);
	assert_msg_contains(f, "bogus");
	assert_int_equal(esc_config_set(f->ctx, f->cfg, NULL, "1"), ESC_ERR_USAGE);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_days", NULL), ESC_ERR_USAGE);

	assert_int_equal(esc_config_set(f->ctx, f->cfg, "module", "/usr/lib/softhsm/libsofthsm2.so"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "module", ""), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "module_allow", "/opt/hsm/lib:/usr/lib/x/m.so"), ESC_OK);
	assert_string_equal(esc_config_get(f->cfg, "module_allow"), "/opt/hsm/lib:/usr/lib/x/m.so");
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "module_allow", "/opt/hsm/lib:relative"), ESC_ERR_CONFIG);
	/* A label may well read "module-path": only the query (after '?') names a module. */
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_token", "pkcs11:token=module-path"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "listen", "0.0.0.0:1"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "listen", "localhost:65535"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "listen", "[fe80::1%eth0]:8443"), ESC_OK);

	/* The service's keys: ranges and choices. */
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "workers", "64"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "workers", "0"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "workers", "65"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_get_long(f->cfg, "workers"), 64);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "tls_client_auth", "require"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "tls_client_auth", "sometimes"), ESC_ERR_CONFIG);
	assert_msg_contains(f, "tls_client_auth");
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "console", "off"), ESC_OK);
	assert_string_equal(esc_config_get(f->cfg, "console"), "off");
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "console", "yes"), ESC_ERR_CONFIG);
	assert_msg_contains(f, "console");
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "max_body", "1023"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "client_cert_recheck", "0"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "client_cert_recheck", "3601"), ESC_ERR_CONFIG);
	/* The keeper's token sessions: 0 (no bound) to 1024; the meter file an absolute path. */
	assert_int_equal(esc_config_get_long(f->cfg, "token_sessions"), 0);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "token_sessions", "1"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "token_sessions", "1025"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "token_sessions", "-1"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_get_long(f->cfg, "token_sessions"), 1);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "token_meter", "meter"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "token_meter", "/run/p11escrow/meter"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "auth_fail_limit", "0"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "auth_fail_window", "0"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "tls_key", "relative/key.pem"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "tls_key", "/etc/p11escrow/tls.key"), ESC_OK);
	/* Audit checkpoints: 0 turns each trigger off; no negative or absurd values; their file absolute. */
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "audit_checkpoint_file", "checkpoint"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "audit_checkpoint_file", "/var/lib/p11escrow/checkpoint"),
			 ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_events", "0"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_events", "5"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_events", "-1"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_events", "10000001"), ESC_ERR_CONFIG);
	assert_msg_contains(f, "checkpoint_events");
	assert_int_equal(esc_config_get_long(f->cfg, "checkpoint_events"), 5);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_seconds", "0"), ESC_OK);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_seconds", "1h"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "checkpoint_seconds", "31622401"), ESC_ERR_CONFIG);
	assert_int_equal(esc_config_get_long(f->cfg, "checkpoint_seconds"), 0);

	/* Values are bounded at 1024 bytes. */
	memset(big, 'a', sizeof(big));
	big[1024] = '\0';
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "database", big), ESC_OK);
	big[1024] = 'a';
	big[1025] = '\0';
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "database", big), ESC_ERR_CONFIG);
	assert_msg_contains(f, "1024");
	assert_int_equal(strlen(esc_config_get(f->cfg, "database")), 1024);
	assert_int_equal(esc_config_set(f->ctx, f->cfg, "ca_subject", big), ESC_ERR_CONFIG);
}

static void
test_env(void **state)
{
	struct fixture *f = *state;
	struct snapshot snap;

	assert_int_equal(load(f, "ca_days = 10\nlog_level = warn\n"), ESC_OK);
	assert_int_equal(esc_config_apply_env(f->ctx, f->cfg), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 10);

	assert_int_equal(setenv("P11ESCROW_CA_DAYS", "42", 1), 0);
	assert_int_equal(setenv("P11ESCROW_TRANSPORT_KEY_TYPE", "ec-p384", 1), 0);
	assert_int_equal(setenv("P11ESCROW_DATABASE", "dbname=escrow", 1), 0);
	assert_int_equal(esc_config_apply_env(f->ctx, f->cfg), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 42);
	assert_string_equal(esc_config_get(f->cfg, "transport_key_type"), "ec-p384");
	assert_string_equal(esc_config_get(f->cfg, "database"), "dbname=escrow");
	assert_string_equal(esc_config_get(f->cfg, "log_level"), "warn");

	/* One bad variable: error names it, nothing else is applied. */
	assert_int_equal(setenv("P11ESCROW_CA_DAYS", "7", 1), 0);
	assert_int_equal(setenv("P11ESCROW_LOG_LEVEL", "chatty", 1), 0);
	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_apply_env(f->ctx, f->cfg), ESC_ERR_CONFIG);
	assert_msg_contains(f, "P11ESCROW_LOG_LEVEL");
	assert_snapshot(f->cfg, &snap);

	assert_int_equal(unsetenv("P11ESCROW_LOG_LEVEL"), 0);
	assert_int_equal(setenv("P11ESCROW_CA_TOKEN", "pkcs11:token=x;pin-value=9999", 1), 0);
	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_apply_env(f->ctx, f->cfg), ESC_ERR_CONFIG);
	assert_msg_contains(f, "P11ESCROW_CA_TOKEN");
	assert_msg_lacks(f, "9999");
	assert_snapshot(f->cfg, &snap);
	assert_int_equal(unsetenv("P11ESCROW_CA_TOKEN"), 0);

	assert_int_equal(setenv("P11ESCROW_CA_DAYS", "0", 1), 0);
	assert_int_equal(esc_config_apply_env(f->ctx, f->cfg), ESC_ERR_CONFIG);
	assert_msg_contains(f, "P11ESCROW_CA_DAYS");
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 42);
}

static char *
write_temp(const char *text, size_t len)
{
	char *path;
	int fd;

	assert_non_null(path = strdup("/tmp/test_config.XXXXXX"));
	assert_true((fd = mkstemp(path)) != -1);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	return path;
}

static void
test_load_file(void **state)
{
	struct fixture *f = *state;
	static const char good[] = "# test\nca_days = 99\r\nlisten = \"localhost:8080\"\n";
	static const char bad[] = "ca_days = 1\nwhat = ever\n";
	struct snapshot snap;
	char *path, *big;

	path = write_temp(good, strlen(good));
	assert_int_equal(esc_config_load_file(f->ctx, f->cfg, path), ESC_OK);
	assert_int_equal(esc_config_get_long(f->cfg, "ca_days"), 99);
	assert_string_equal(esc_config_get(f->cfg, "listen"), "localhost:8080");
	unlink(path);
	free(path);

	/* Errors name the file and line. */
	path = write_temp(bad, strlen(bad));
	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_load_file(f->ctx, f->cfg, path), ESC_ERR_CONFIG);
	assert_msg_contains(f, path);
	assert_msg_contains(f, ":2: unknown key 'what'");
	assert_snapshot(f->cfg, &snap);
	unlink(path);
	free(path);

	/* Too large a file is refused before it is parsed. */
	big = make_big(ESC_CONFIG_FILE_MAX + 1);
	path = write_temp(big, ESC_CONFIG_FILE_MAX + 1);
	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_load_file(f->ctx, f->cfg, path), ESC_ERR_CONFIG);
	assert_msg_contains(f, path);
	assert_snapshot(f->cfg, &snap);
	unlink(path);
	free(path);
	free(big);

	take_snapshot(f->cfg, &snap);
	assert_int_equal(esc_config_load_file(f->ctx, f->cfg, "/nonexistent/p11escrowd.conf"), ESC_ERR_IO);
	assert_msg_contains(f, "cannot read config file '/nonexistent/p11escrowd.conf'");
	assert_msg_contains(f, strerror(ENOENT));

	assert_int_equal(esc_config_load_file(f->ctx, f->cfg, "/"), ESC_ERR_IO);
	assert_msg_contains(f, strerror(EISDIR));
	assert_snapshot(f->cfg, &snap);
}

/* crl_url and ca_issuer_url: http(s) or ldap with a host (ldap:/// too), no blank; the CRL timing's ranges. */
static void
test_publication_keys(void **state)
{
	static const char *const good[] = {
		"crl_url = \"http://pki.example.test/ca.crl\"",
		"crl_url = \"HTTPS://pki.example.test:8443/crl\"",
		"crl_url = \"ldap://dir.example.test/CN=CA,O=Ex?certificateRevocationList\"",
		"ca_issuer_url = \"ldap:///CN=CA,O=Ex?cACertificate\"",
		"crl_url = \"\"",
		"crl_validity = 60",
		"crl_refresh = 90",
	};
	static const char *const bad[] = {
		"crl_url = \"ftp://pki.example.test/ca.crl\"",
		"crl_url = \"http://pki.example.test/a b.crl\"",
		"crl_url = \"http:///ca.crl\"",
		"crl_url = \"http://\"",
		"ca_issuer_url = \"pki.example.test/ca.crt\"",
		"ca_issuer_url = \"http://:80/ca.crt\"",
		"crl_validity = 59",
		"crl_refresh = 9",
		"crl_refresh = 91",
	};
	struct fixture *f = *state;
	const struct esc_publication *p;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_int_equal(load(f, good[i]), ESC_OK);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(load(f, bad[i]), ESC_ERR_CONFIG);
		assert_non_null(strstr(esc_ctx_errmsg(f->ctx),
				       bad[i][0] == 'c' && bad[i][1] == 'a' ? "ca_issuer_url" : "crl_"));
	}
	assert_int_equal(load(f, "crl_url = \"http://pki.example.test/ca.crl\"\ncrl_validity = 86400\n"), ESC_OK);
	assert_int_equal(esc_config_set_publication(f->ctx, f->cfg), ESC_OK);
	p = esc_ctx_publication(f->ctx);
	assert_string_equal(p->crl_url, "http://pki.example.test/ca.crl");
	assert_string_equal(p->ca_issuer_url, "ldap:///CN=CA,O=Ex?cACertificate");
	assert_int_equal(p->crl_validity, 86400);
	assert_int_equal(p->crl_refresh, 90);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_publication_keys, setup, teardown),
		cmocka_unit_test_setup_teardown(test_valid_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pin_not_echoed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_line_length, setup, teardown),
		cmocka_unit_test_setup_teardown(test_buffer_size, setup, teardown),
		cmocka_unit_test_setup_teardown(test_nul_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set, setup, teardown),
		cmocka_unit_test_setup_teardown(test_env, setup, teardown),
		cmocka_unit_test_setup_teardown(test_load_file, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
