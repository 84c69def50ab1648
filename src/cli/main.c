/*
 * p11escrow — command-line front-end.  One file per subcommand; this file
 * only dispatches.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "cli.h"
#include "esc_build_config.h"

static const struct {
	const char *name;
	int (*main)(int, char *[]);
	const char *summary;
} commands[] = {
	{"setup", setup_main, "create the CA: schema, keys on the CA token, CA certificate"},
	{"account", account_main, "accounts and roles: add, list, disable, enable, passwd, scope"},
	{"db", db_main, "database schema: migrate, status, grant-service"},
	{"token", token_main, "inspect a PKCS#11 token: info and mechanisms"},
	{"kra", kra_main, "Key Recovery Agents: enroll a card, list, retire"},
	{"archive", archive_main, "manual archival: import PKCS#12 or PEM keys with their certificates"},
	{"audit", audit_main, "the audit trail: verify, show, export"},
	{"cert", cert_main, "revoke certificates, sign CRLs on the CA token"},
	{"policy", policy_main, "stored policy: show, set (administrators)"},
	{"recovery", recovery_main, "two-person key recovery: search, request, approve, release, complete"},
	{"enroll-password", enroll_password_main, "one-time passwords for EST enrollees: create, list"},
	{"service-cert", service_cert_main, "issue the service's TLS server certificate on the CA token"},
	{"profile", profile_main, "certificate profiles: list"},
	{"est", est_main, "EST client: enroll (key archived via /fullcmc or /serverkeygen), transport-cert, cacerts"},
	{"storage-key", storage_key_main, "the storage key on the CA token: rotate, list its generations"},
	{"rewrap", rewrap_main, "re-seal archive records: --storage (storage key) or --kra (KRAs and threshold)"},
};

/*
 * jansson's free: wipe the whole block.  Bodies sent to the service hold
 * passwords and key files, answers enrollment passwords; jansson's scratch
 * buffers held them too.  Blocks come from malloc itself, so free() of
 * json_dumps' result stays right.
 */
static void
wiping_free(void *p)
{
	if (p == NULL)
		return;
	OPENSSL_cleanse(p, malloc_usable_size(p));
	free(p);
}

/*
 * libcurl's allocator: the same wiping free, and a realloc that moves the
 * block and wipes the old one.  libcurl copies the Authorization header
 * and small request bodies (passwords, key files) into its own buffers.
 */
static void *
wiping_realloc(void *p, size_t n)
{
	size_t old;
	void *q;

	if (p == NULL)
		return malloc(n);
	if (n == 0) {
		wiping_free(p);
		return NULL;
	}
	old = malloc_usable_size(p);
	if ((q = malloc(n)) == NULL)
		return NULL;
	memcpy(q, p, old < n ? old : n);
	wiping_free(p);
	return q;
}

static char *
curl_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = malloc(n);

	if (p != NULL)
		memcpy(p, s, n);
	return p;
}

static void
usage(FILE *f)
{
	size_t i;

	fprintf(f,
		"Usage: %s COMMAND [OPTIONS]\n\n"
		"p11escrow %s: key archival and two-person recovery with PKCS#11 tokens.\n\nCommands:\n",
		PROG, ESC_VERSION);
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-15s %s\n", commands[i].name, commands[i].summary);
	fprintf(f,
		"\nRun '%s COMMAND --help' for a command's options.\n"
		"Options:\n  -h, --help     this text\n  -V, --version  print the version\n",
		PROG);
}

int
main(int argc, char *argv[])
{
	size_t i;
	int rc;

	json_set_alloc_funcs(malloc, wiping_free);
	/* Before any thread exists, as libcurl requires; the --server client (http_client.c) uses it. */
	if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, malloc, wiping_free, wiping_realloc, curl_strdup, calloc) !=
	    CURLE_OK) {
		fprintf(stderr, "%s: error: cannot initialise libcurl\n", PROG);
		return 70;
	}
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		cli_print_exit_codes();
		return 0;
	}
	if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
		printf("p11escrow %s\n", ESC_VERSION);
		return 0;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[1], commands[i].name) == 0) {
			rc = commands[i].main(argc - 1, argv + 1);
			curl_global_cleanup();
			return rc;
		}
	fprintf(stderr, "%s: unknown command '%s' (see '%s --help')\n", PROG, argv[1], PROG);
	return 2;
}
