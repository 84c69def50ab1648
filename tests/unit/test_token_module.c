/*
 * Unit tests: which PKCS#11 module files may be loaded (module_allow,
 * esc_token_module_resolve), and that a token URI never picks one.
 *
 * Each test works in its own temporary directory:
 *   allowed/real.so               a file in the allowed directory
 *   allowed/inner.so -> real.so   a symlink that stays inside
 *   allowed/out.so -> ../outside/mod.so   a symlink out of it
 *   allowed/sub/deep.so           below, not directly in, the directory
 *   outside/mod.so                a file elsewhere
 *   alias -> allowed              the allowed directory under another name
 * The files are not modules: resolving never loads anything.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "esc_build_config.h"
#include <p11escrow/ctx.h>
#include <p11escrow/token.h>

struct fixture {
	struct esc_ctx *ctx;
	char dir[PATH_MAX]; /* realpath of the temporary directory */
};

static void
path_of(const struct fixture *f, const char *rel, char *out, size_t len)
{
	assert_true((size_t)snprintf(out, len, "%s/%s", f->dir, rel) < len);
}

static void
touch(const struct fixture *f, const char *rel)
{
	char p[PATH_MAX];
	FILE *fp;

	path_of(f, rel, p, sizeof(p));
	assert_non_null(fp = fopen(p, "w"));
	fclose(fp);
}

static int
setup(void **state)
{
	struct fixture *f;
	char tmpl[] = "/tmp/p11escrow-module.XXXXXX", p[PATH_MAX];

	if ((f = calloc(1, sizeof(*f))) == NULL || esc_ctx_new(&f->ctx) != ESC_OK || mkdtemp(tmpl) == NULL ||
	    realpath(tmpl, f->dir) == NULL)
		return -1;
	*state = f;
	path_of(f, "allowed", p, sizeof(p));
	assert_int_equal(mkdir(p, 0700), 0);
	path_of(f, "allowed/sub", p, sizeof(p));
	assert_int_equal(mkdir(p, 0700), 0);
	path_of(f, "outside", p, sizeof(p));
	assert_int_equal(mkdir(p, 0700), 0);
	touch(f, "allowed/real.so");
	touch(f, "allowed/sub/deep.so");
	touch(f, "outside/mod.so");
	path_of(f, "allowed/inner.so", p, sizeof(p));
	assert_int_equal(symlink("real.so", p), 0);
	path_of(f, "allowed/out.so", p, sizeof(p));
	assert_int_equal(symlink("../outside/mod.so", p), 0);
	path_of(f, "alias", p, sizeof(p));
	assert_int_equal(symlink("allowed", p), 0);
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	static const char *const rel[] = {"alias",	    "allowed/out.so",	   "allowed/inner.so",
					  "outside/mod.so", "allowed/sub/deep.so", "allowed/real.so",
					  "outside",	    "allowed/sub",	   "allowed"};
	char p[PATH_MAX];
	size_t i;

	for (i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		path_of(f, rel[i], p, sizeof(p));
		(void)remove(p);
	}
	(void)rmdir(f->dir);
	esc_ctx_free(f->ctx);
	free(f);
	return 0;
}

/* Set module_allow to the ':'-joined fixture paths given. */
static void
allow(struct fixture *f, const char *a, const char *b)
{
	char list[2 * PATH_MAX + 2], pa[PATH_MAX], pb[PATH_MAX];

	path_of(f, a, pa, sizeof(pa));
	if (b != NULL)
		path_of(f, b, pb, sizeof(pb));
	snprintf(list, sizeof(list), "%s%s%s", pa, b != NULL ? ":" : "", b != NULL ? pb : "");
	assert_int_equal(esc_ctx_set_module_allow(f->ctx, list), ESC_OK);
}

/* Resolve the fixture path rel: expect code, and on success the fixture path want. */
static void
expect(struct fixture *f, const char *rel, enum esc_err code, const char *want)
{
	char p[PATH_MAX], w[PATH_MAX];
	char *out = NULL;

	path_of(f, rel, p, sizeof(p));
	assert_int_equal(esc_token_module_resolve(f->ctx, p, &out), code);
	if (code != ESC_OK) {
		assert_null(out);
		return;
	}
	path_of(f, want, w, sizeof(w));
	assert_non_null(out);
	assert_string_equal(out, w);
	free(out);
}

static void
test_directory_entry(void **state)
{
	struct fixture *f = *state;

	allow(f, "allowed", NULL);
	expect(f, "allowed/real.so", ESC_OK, "allowed/real.so");
	/* A symlink staying inside resolves to its target, which is what gets loaded. */
	expect(f, "allowed/inner.so", ESC_OK, "allowed/real.so");
	/* Not below: directly in the directory only. */
	expect(f, "allowed/sub/deep.so", ESC_ERR_CONFIG, NULL);
	expect(f, "outside/mod.so", ESC_ERR_CONFIG, NULL);
	/* "..", a trailing slash on the entry and an alias of the directory change nothing. */
	expect(f, "allowed/../outside/mod.so", ESC_ERR_CONFIG, NULL);
	allow(f, "allowed/", NULL);
	expect(f, "allowed/real.so", ESC_OK, "allowed/real.so");
	allow(f, "alias", NULL);
	expect(f, "allowed/real.so", ESC_OK, "allowed/real.so");
	expect(f, "alias/real.so", ESC_OK, "allowed/real.so");
}

static void
test_symlink_out_refused(void **state)
{
	struct fixture *f = *state;
	char out_real[PATH_MAX];

	allow(f, "allowed", NULL);
	expect(f, "allowed/out.so", ESC_ERR_CONFIG, NULL);
	/* The message names the file it resolved to and exactly what to set. */
	path_of(f, "outside/mod.so", out_real, sizeof(out_real));
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), out_real));
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "is not in module_allow"));
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "set module_allow = "));
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "P11ESCROW_MODULE_ALLOW"));
}

static void
test_file_entry(void **state)
{
	struct fixture *f = *state;

	allow(f, "outside/mod.so", NULL);
	expect(f, "outside/mod.so", ESC_OK, "outside/mod.so");
	/* The file, by whatever name: the symlink resolves to the allowed file. */
	expect(f, "allowed/out.so", ESC_OK, "outside/mod.so");
	expect(f, "allowed/real.so", ESC_ERR_CONFIG, NULL);
	/* A file entry does not allow its directory's other files. */
	touch(f, "outside/other.so");
	expect(f, "outside/other.so", ESC_ERR_CONFIG, NULL);
	{
		char p[PATH_MAX];

		path_of(f, "outside/other.so", p, sizeof(p));
		(void)remove(p);
	}
	/* Several entries: any one allows. */
	allow(f, "outside/mod.so", "allowed");
	expect(f, "allowed/real.so", ESC_OK, "allowed/real.so");
	expect(f, "outside/mod.so", ESC_OK, "outside/mod.so");
}

static void
test_bad_module_and_list(void **state)
{
	struct fixture *f = *state;
	char *out = NULL;
	char big[ESC_MODULE_ALLOW_MAX + 2];

	allow(f, "allowed", NULL);
	assert_int_equal(esc_token_module_resolve(f->ctx, "relative/real.so", &out), ESC_ERR_MODULE);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "must be an absolute path"));
	assert_int_equal(esc_token_module_resolve(f->ctx, "/nonexistent/module.so", &out), ESC_ERR_MODULE);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "/nonexistent/module.so"));
	/* A list entry that does not exist allows nothing, and does not stop the search. */
	assert_int_equal(esc_ctx_set_module_allow(f->ctx, "/nonexistent/dir"), ESC_OK);
	expect(f, "allowed/real.so", ESC_ERR_CONFIG, NULL);
	/* A malformed list refuses everything, saying so. */
	assert_int_equal(esc_ctx_set_module_allow(f->ctx, "relative/dir"), ESC_OK);
	expect(f, "allowed/real.so", ESC_ERR_CONFIG, NULL);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "list of absolute paths"));
	assert_int_equal(esc_ctx_set_module_allow(f->ctx, ""), ESC_OK);
	expect(f, "allowed/real.so", ESC_ERR_CONFIG, NULL);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "not in module_allow (empty)"));
	memset(big, '/', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(esc_ctx_set_module_allow(f->ctx, big), ESC_ERR_CONFIG);
	assert_null(out);
}

static void
test_build_default(void **state)
{
	struct fixture *f = *state;
	char *out = NULL, real[PATH_MAX];

	/* A new context has the build default; NULL restores it. */
	assert_string_equal(esc_ctx_module_allow(f->ctx), ESC_DEFAULT_MODULE_ALLOW);
	allow(f, "allowed", NULL);
	assert_string_not_equal(esc_ctx_module_allow(f->ctx), ESC_DEFAULT_MODULE_ALLOW);
	assert_int_equal(esc_ctx_set_module_allow(f->ctx, NULL), ESC_OK);
	assert_string_equal(esc_ctx_module_allow(f->ctx), ESC_DEFAULT_MODULE_ALLOW);
	/* A file in /tmp is not a system module. */
	expect(f, "allowed/real.so", ESC_ERR_CONFIG, NULL);
	if (realpath(ESC_DEFAULT_MODULE, real) == NULL)
		skip();
	/* The build default module (a symlink into LIBDIR/softhsm on Debian) passes, by every name. */
	assert_int_equal(esc_token_module_resolve(f->ctx, NULL, &out), ESC_OK);
	assert_string_equal(out, real);
	free(out);
	out = NULL;
	assert_int_equal(esc_token_module_resolve(f->ctx, "", &out), ESC_OK);
	assert_string_equal(out, real);
	free(out);
	out = NULL;
	assert_int_equal(esc_token_module_resolve(f->ctx, real, &out), ESC_OK);
	free(out);
	out = NULL;
	/* ... but not where module_allow does not list it. */
	allow(f, "allowed", NULL);
	assert_int_equal(esc_token_module_resolve(f->ctx, ESC_DEFAULT_MODULE, &out), ESC_ERR_CONFIG);
	assert_null(out);
}

/* p11-kit's registered modules are checked like any other. */
static void
test_p11kit_name(void **state)
{
	struct fixture *f = *state;
	char *out = NULL, real[PATH_MAX];

	if (realpath(ESC_DEFAULT_MODULE, real) == NULL ||
	    access("/usr/share/p11-kit/modules/softhsm2.module", R_OK) != 0)
		skip();
	assert_int_equal(esc_token_module_resolve(f->ctx, "p11-kit:softhsm2", &out), ESC_OK);
	assert_string_equal(out, real);
	free(out);
	out = NULL;
	allow(f, "allowed", NULL);
	assert_int_equal(esc_token_module_resolve(f->ctx, "p11-kit:softhsm2", &out), ESC_ERR_CONFIG);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "'p11-kit:softhsm2'"));
	assert_null(out);
}

/*
 * esc_token_open never loads what a URI names: the URI is refused before
 * any module is loaded (a file that is no module would otherwise fail to
 * load, ESC_ERR_MODULE), whatever module_allow says.
 */
static void
test_open_refuses_module_in_uri(void **state)
{
	struct fixture *f = *state;
	struct esc_token *tok = NULL;
	char uri[PATH_MAX + 64];

	allow(f, "allowed", NULL);
	snprintf(uri, sizeof(uri), "pkcs11:token=CA?module-path=%s/allowed/real.so", f->dir);
	assert_int_equal(esc_token_open(f->ctx, NULL, uri, &tok), ESC_ERR_URI);
	assert_non_null(strstr(esc_ctx_errmsg(f->ctx), "module-path"));
	assert_int_equal(esc_token_open(f->ctx, "", "pkcs11:token=CA?module-name=softhsm2", &tok), ESC_ERR_URI);
	assert_null(tok);
	/* The module setting is checked before anything is loaded. */
	assert_int_equal(esc_token_open(f->ctx, ESC_DEFAULT_MODULE, "pkcs11:token=CA", &tok), ESC_ERR_CONFIG);
	assert_null(tok);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_directory_entry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_out_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_entry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_module_and_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_build_default, setup, teardown),
		cmocka_unit_test_setup_teardown(test_p11kit_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_refuses_module_in_uri, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
