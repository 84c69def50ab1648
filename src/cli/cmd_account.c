/*
 * p11escrow account — accounts and roles: add, list, disable, enable, passwd, scope.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <p11escrow/auth.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define CMD "account"
#define NEW_PASSWORD_ENV "P11ESCROW_NEW_PASSWORD"

static void
help(void)
{
	printf("Usage: %s " CMD " add NAME --role ROLES [--kra KRA] [--user ADMIN] [OPTIONS]\n"
	       "       %s " CMD " list --user NAME [--json] [OPTIONS]\n"
	       "       %s " CMD " disable|enable NAME --user ADMIN [OPTIONS]\n"
	       "       %s " CMD " passwd [NAME] --user NAME [OPTIONS]\n"
	       "       %s " CMD " scope NAME [--profile P]... [--group G]... | --clear --user ADMIN [OPTIONS]\n"
	       "       %s " CMD " cert add|list|remove NAME ... (see '%s " CMD " cert --help')\n\n"
	       "add   create an account with a password.  ROLES is a comma-separated list of admin,\n"
	       "      cert-manager, kra and auditor; one account holds at most one of admin, cert-manager\n"
	       "      and kra (a certificate manager is never a KRA).  A kra\n"
	       "      account is bound to one registered, active KRA (--kra), and a KRA to one account.\n"
	       "      Needs an administrator (--user) — except while no administrator exists: then\n"
	       "      --user is left out and the account created must have the admin role.\n"
	       "list  every account with its roles, KRA binding and whether it is disabled (any\n"
	       "      authenticated account).\n"
	       "disable, enable  stop or allow an account's logins (administrators; the last enabled\n"
	       "      administrator stays enabled).\n"
	       "passwd  set a new password: your own, or any account's as an administrator (the new\n"
	       "      password comes like a new account's).  A password an administrator sets for\n"
	       "      another account is single-use: that account's next login (here or through the\n"
	       "      service) may only change it.  Every session of the account ends.\n"
	       "scope  limit a certificate manager to some records (administrators; replaces the earlier\n"
	       "      scope): it then searches, requests recovery of and approves only records whose\n"
	       "      profile is one of the --profile values (if any are given) and whose subject has an O\n"
	       "      or OU value among the --group values (if any; compared without regard to case).\n"
	       "      Records archived without a profile (imports, foreign certificates) have the profile\n"
	       "      '%s'.  --clear: unscoped again (every record).  Without options: show the scope.\n\n"
	       "Every action but passwd goes through the service with --server URL (the service checks\n"
	       "what the library checks; no database credentials here).  Straight on the database only\n"
	       "with --local (or $" CLI_LOCAL_ENV "=1): break-glass, audited as such; passwd and creating\n"
	       "the first administrator (add without --user) are local only.\n\n"
	       "Passwords are never taken from the command line.  The acting account's password comes\n"
	       "from --password-file, else $P11ESCROW_PASSWORD, else a prompt; the new account's from\n"
	       "--new-password-file, else $" NEW_PASSWORD_ENV ", else a prompt (asked twice).  Password\n"
	       "files must not be accessible by other users.  At least %d characters.\n\n"
	       "Options:\n"
	       "      --server URL             the service, e.g. https://escrow.example.org:8443\n"
	       "      --server-ca FILE         CA certificate(s) to verify it with (else $P11ESCROW_SERVER_CA)\n"
	       "      --local                  break-glass: straight on the database (audited)\n"
	       "  -c, --config FILE            configuration file\n"
	       "  -d, --database CONNINFO      libpq connection string (--local)\n"
	       "  -r, --role ROLES             roles of the new account (add)\n"
	       "      --kra KRA                the KRA a kra account is bound to (add)\n"
	       "  -u, --user NAME              the acting account\n"
	       "      --password-file FILE     the acting account's password\n"
	       "      --new-password-file FILE the new account's password (add)\n"
	       "      --profile PROFILE        a profile of the scope; repeat for more (scope)\n"
	       "      --group GROUP            an O or OU value of the scope; repeat for more (scope)\n"
	       "      --clear                  remove the scope (scope)\n"
	       "      --json                   list, scope: " CLI_JSON_HELP "\n"
	       "  -h, --help                   this text\n",
	       PROG, PROG, PROG, PROG, PROG, PROG, PROG, ESC_SCOPE_PROFILE_IMPORTED, ESC_PASSWORD_MIN);
	cli_print_exit_codes();
}

struct opts {
	const char *config, *database, *role, *kra, *user, *password_file, *new_password_file;
	const char *server, *server_ca;
	const char *profiles[ESC_SCOPE_MAX + 1], *groups[ESC_SCOPE_MAX + 1];
	size_t nprofiles, ngroups;
	int clear, local, json;
};

/* The new account's password: file, environment, or a prompt twice. */
static int
new_password(struct esc_ctx *ctx, const struct opts *o, const char *name, struct esc_secret **out)
{
	struct esc_secret *a = NULL, *b = NULL;
	const char *env = getenv(NEW_PASSWORD_ENV);
	char prompt[128];
	enum esc_err r;
	int rc;

	if ((o->new_password_file != NULL && *o->new_password_file != '\0') || (env != NULL && *env != '\0')) {
		if ((r = esc_secret_obtain(ctx, o->new_password_file, NEW_PASSWORD_ENV, NULL, out)) != ESC_OK)
			return cli_fail(CMD, ctx, r);
		return 0;
	}
	if (!isatty(STDIN_FILENO)) {
		fprintf(stderr,
			"%s %s: error: no password for the new account: use --new-password-file, set %s or run on a "
			"terminal to be prompted\n",
			PROG, CMD, NEW_PASSWORD_ENV);
		return esc_err_exit_code(ESC_ERR_PIN_MISSING);
	}
	snprintf(prompt, sizeof(prompt), "New password for %s: ", name);
	if ((r = esc_secret_prompt(ctx, prompt, &a)) != ESC_OK ||
	    (r = esc_secret_prompt(ctx, "Repeat the new password: ", &b)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	if (esc_secret_len(a) != esc_secret_len(b) ||
	    CRYPTO_memcmp(esc_secret_str(a), esc_secret_str(b), esc_secret_len(a)) != 0) {
		fprintf(stderr, "%s %s: error: the two passwords differ\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_USAGE);
		goto out;
	}
	*out = a;
	a = NULL; /* transferred */
	rc = 0;
out:
	esc_secret_free(a);
	esc_secret_free(b);
	return rc;
}

static int
do_add(struct esc_ctx *ctx, struct esc_store *st, const struct opts *o, const char *name)
{
	struct esc_account *admin = NULL;
	struct esc_secret *pw = NULL;
	char roles_text[64];
	unsigned roles = 0;
	enum esc_err r;
	int rc, exists = 0;

	if (o->role == NULL)
		return cli_usage_error(CMD, "add needs --role ROLES");
	if ((r = esc_roles_parse(ctx, o->role, &roles)) != ESC_OK)
		return cli_fail(CMD, ctx, r);
	if (o->user == NULL) {
		/* Only the very first administrator is created without one. */
		if ((r = esc_account_admin_exists(ctx, st, &exists)) != ESC_OK)
			return cli_fail(CMD, ctx, r);
		if (exists)
			return cli_usage_error(CMD, "--user ADMIN is required: an administrator already exists");
		if (o->password_file != NULL)
			return cli_usage_error(CMD, "--password-file is for the acting --user");
	} else if ((rc = cli_login(CMD, ctx, st, o->user, o->password_file, &admin)) != 0) {
		return rc;
	}
	if ((rc = new_password(ctx, o, name, &pw)) != 0)
		goto out;
	if ((r = esc_account_create(ctx, st, admin, name, roles, o->kra, pw)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	esc_roles_format(roles, roles_text, sizeof(roles_text));
	printf("account '%s' created with roles %s", name, roles_text);
	if (o->kra != NULL)
		printf(", bound to KRA '%s'", o->kra);
	printf("%s\n", admin == NULL ? " (the first administrator)" : "");
	rc = 0;
out:
	esc_secret_free(pw);
	esc_account_free(admin);
	return rc;
}

/* disable, enable, passwd: one account named on the command line. */
static int
do_change(struct esc_ctx *ctx, struct esc_store *st, const struct opts *o, const char *action, const char *name)
{
	struct esc_account *me = NULL;
	struct esc_secret *pw = NULL;
	enum esc_err r;
	int rc, self = name == NULL || strcmp(name, o->user) == 0;

	/* A password an administrator set logs in for one thing: its owner changing it. */
	if ((rc = cli_login_flags(CMD, ctx, st, o->user, o->password_file,
				  strcmp(action, "passwd") == 0 && self ? ESC_LOGIN_PASSWORD_CHANGE : 0, &me)) != 0)
		return rc;
	if (name == NULL)
		name = esc_account_name(me);
	if (strcmp(action, "passwd") == 0) {
		if ((rc = new_password(ctx, o, name, &pw)) != 0)
			goto out;
		r = esc_account_set_password(ctx, st, me, name, pw);
	} else {
		r = esc_account_set_disabled(ctx, st, me, name, strcmp(action, "disable") == 0);
	}
	if (r != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	printf("account '%s': %s\n", name,
	       strcmp(action, "passwd") == 0
		       ? (self ? "password changed" : "password reset: it must be changed at the account's next login")
	       : strcmp(action, "disable") == 0 ? "disabled"
						: "enabled");
	rc = 0;
out:
	esc_secret_free(pw);
	esc_account_free(me);
	return rc;
}

/* The scope of account name as text or (--json) a JSON object; 0 or an exit code. */
static int
print_scope(const char *name, const struct esc_scope_item *items, size_t n, int json)
{
	size_t i;

	if (json)
		return cli_json_print(CMD, cli_json_scope(name, items, n));
	if (n == 0)
		printf("account '%s': unscoped (every record)\n", name);
	for (i = 0; i < n; i++)
		printf("account '%s': %s %s\n", name, items[i].kind, items[i].value);
	return 0;
}

/* scope NAME: set, clear or (no options) show a certificate manager's scope. */
static int
do_scope(struct esc_ctx *ctx, struct esc_store *st, const struct opts *o, const char *name)
{
	struct esc_account *me = NULL;
	struct esc_scope_item *items = NULL;
	size_t n = 0;
	enum esc_err r;
	int rc;

	if ((rc = cli_login(CMD, ctx, st, o->user, o->password_file, &me)) != 0)
		return rc;
	if (o->clear || o->nprofiles > 0 || o->ngroups > 0) {
		if ((r = esc_account_set_scope(ctx, st, me, name, o->profiles, o->nprofiles, o->groups, o->ngroups)) !=
		    ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			goto out;
		}
		if (o->clear && !o->json) {
			printf("account '%s': scope cleared (every record)\n", name);
			rc = 0;
			goto out;
		}
	}
	if ((r = esc_account_get_scope(ctx, st, me, name, &items, &n)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = print_scope(name, items, n, o->json);
out:
	free(items);
	esc_account_free(me);
	return rc;
}

/* The accounts as a table or (--json) a JSON array; 0 or an exit code. */
static int
print_accounts(const struct esc_account_info *list, size_t n, int json)
{
	char roles_text[64];
	size_t i;

	if (json)
		return cli_json_print(CMD, cli_json_array(list, n, sizeof(*list), cli_json_account));
	printf("%-24s %-30s %-20s %-8s %s\n", "NAME", "ROLES", "KRA", "DISABLED", "SCOPE (if any)");
	for (i = 0; i < n; i++) {
		esc_roles_format(list[i].roles, roles_text, sizeof(roles_text));
		/* Only a scoped certificate manager's line goes on to SCOPE: others end at DISABLED, as they always did. */
		if (list[i].scope[0] != '\0')
			printf("%-24s %-30s %-20s %-8s %s\n", list[i].name, roles_text,
			       list[i].kra_name[0] ? list[i].kra_name : "-", list[i].disabled ? "yes" : "no",
			       list[i].scope);
		else
			printf("%-24s %-30s %-20s %s\n", list[i].name, roles_text,
			       list[i].kra_name[0] ? list[i].kra_name : "-", list[i].disabled ? "yes" : "no");
	}
	return 0;
}

static int
do_list(struct esc_ctx *ctx, struct esc_store *st, const struct opts *o)
{
	struct esc_account *me = NULL;
	struct esc_account_info *list = NULL;
	size_t n = 0;
	enum esc_err r;
	int rc;

	if ((rc = cli_login(CMD, ctx, st, o->user, o->password_file, &me)) != 0)
		return rc;
	r = esc_account_list(ctx, st, me, &list, &n);
	esc_account_free(me);
	if (r != ESC_OK)
		return cli_fail(CMD, ctx, r);
	rc = print_accounts(list, n, o->json);
	free(list);
	return rc;
}

/* ---- through the service (--server) ------------------------------------------------------------------------- */

/* A JSON array of n strings; NULL if one is not UTF-8 or out of memory. */
static json_t *
str_array(const char *const *v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; a != NULL && i < n; i++)
		if (json_array_append_new(a, json_string(v[i])) != 0) {
			json_decref(a);
			return NULL;
		}
	return a;
}

/* "admin,kra" from the service's array of role names. */
static void
roles_text(const json_t *roles, char *buf, size_t len)
{
	const json_t *r;
	size_t i, used = 0;

	buf[0] = '\0';
	json_array_foreach(roles, i, r)
	{
		char one[32];

		cli_json_copy_value(one, sizeof(one), r);
		if (used + strlen(one) + 2 >= len)
			break;
		snprintf(buf + used, len - used, "%s%s", used ? "," : "", one);
		used = strlen(buf);
	}
}

static int
remote_add(struct esc_ctx *ctx, struct cli_http *h, const struct opts *o, const char *name)
{
	struct esc_secret *pw = NULL;
	json_t *body = NULL, *doc = NULL;
	char roles[64], kra[72];
	int rc;

	if ((rc = new_password(ctx, o, name, &pw)) != 0)
		return rc;
	if ((body = json_object()) == NULL || json_object_set_new(body, "name", json_string(name)) != 0 ||
	    json_object_set_new(body, "roles", json_string(o->role)) != 0 ||
	    (o->kra != NULL && json_object_set_new(body, "kra", json_string(o->kra)) != 0) ||
	    json_object_set_new(body, "password", json_stringn(esc_secret_str(pw), esc_secret_len(pw))) != 0) {
		rc = cli_usage_error(CMD, "the name, roles, KRA and password must be UTF-8 text");
		goto out;
	}
	if ((rc = cli_http_call(h, CLI_HTTP_POST, "/accounts", body, &doc)) != 0)
		goto out;
	roles_text(json_object_get(doc, "roles"), roles, sizeof(roles));
	cli_json_copy(kra, sizeof(kra), doc, "kra");
	printf("account '%s' created with roles %s", name, roles);
	if (kra[0] != '\0')
		printf(", bound to KRA '%s'", kra);
	printf("\n");
out:
	if (body != NULL) {
		json_t *v = json_object_get(body, "password");

		if (json_is_string(v))
			OPENSSL_cleanse((void *)json_string_value(v), json_string_length(v));
	}
	json_decref(body);
	json_decref(doc);
	esc_secret_free(pw);
	return rc;
}

/* GET /accounts, read into the library's struct and printed as locally. */
static int
remote_list(struct esc_ctx *ctx, struct cli_http *h, const struct opts *o)
{
	struct esc_account_info *list = NULL;
	const json_t *accounts, *e;
	json_t *doc = NULL;
	char roles[64];
	size_t i, n;
	int rc;

	if ((rc = cli_http_call(h, CLI_HTTP_GET, "/accounts", NULL, &doc)) != 0)
		return rc;
	accounts = json_object_get(doc, "accounts");
	n = json_array_size(accounts);
	if ((list = calloc(n + 1, sizeof(*list))) == NULL) {
		json_decref(doc);
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	json_array_foreach(accounts, i, e)
	{
		cli_json_copy(list[i].name, sizeof(list[i].name), e, "name");
		roles_text(json_object_get(e, "roles"), roles, sizeof(roles));
		/* Roles this program cannot read (a newer service's) show as none rather than failing the list. */
		if (esc_roles_parse(ctx, roles, &list[i].roles) != ESC_OK)
			list[i].roles = 0;
		cli_json_copy(list[i].kra_name, sizeof(list[i].kra_name), e, "kra");
		cli_json_copy(list[i].scope, sizeof(list[i].scope), e, "scope");
		list[i].disabled = json_is_true(json_object_get(e, "disabled"));
	}
	rc = print_accounts(list, n, o->json);
	free(list);
	json_decref(doc);
	return rc;
}

/* "/accounts/NAME/what": the service takes letters, digits and . _ @ : + - in a name only. */
static int
path_for(char *buf, size_t len, const char *name, const char *what)
{
	const char *p;

	if (name == NULL || *name == '\0')
		return cli_usage_error(CMD, "an account NAME is needed");
	for (p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      strchr("._@:+-", *p) != NULL))
			return cli_usage_error(CMD, "'%s' is not a valid account name", name);
	if (*name == '\0' || strlen(name) > 128 || (size_t)snprintf(buf, len, "/accounts/%s/%s", name, what) >= len)
		return cli_usage_error(CMD, "'%s' is not a valid account name", name);
	return 0;
}

static int
remote_scope(struct cli_http *h, const struct opts *o, const char *name)
{
	json_t *body = NULL, *doc = NULL, *profiles = NULL, *groups = NULL;
	struct esc_scope_item *items = NULL;
	const json_t *v;
	char path[200];
	size_t i, n;
	int rc;

	if ((rc = path_for(path, sizeof(path), name, "scope")) != 0)
		return rc;
	if (o->clear || o->nprofiles > 0 || o->ngroups > 0) {
		if ((body = json_object()) == NULL || (profiles = str_array(o->profiles, o->nprofiles)) == NULL ||
		    (groups = str_array(o->groups, o->ngroups)) == NULL ||
		    json_object_set_new(body, "profiles", profiles) != 0 ||
		    json_object_set_new(body, "groups", groups) != 0) {
			json_decref(body);
			return cli_usage_error(CMD, "--profile and --group must be UTF-8 text");
		}
		rc = cli_http_call(h, CLI_HTTP_POST, path, body, &doc);
		json_decref(body);
		if (rc != 0)
			return rc;
		if (o->clear && !o->json) {
			printf("account '%s': scope cleared (every record)\n", name);
			json_decref(doc);
			return 0;
		}
	} else if ((rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0) {
		return rc;
	}
	/* Read into the library's struct, profiles first as locally, and printed as locally. */
	n = json_array_size(json_object_get(doc, "profiles")) + json_array_size(json_object_get(doc, "groups"));
	if ((items = calloc(n + 1, sizeof(*items))) == NULL) {
		json_decref(doc);
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	n = 0;
	json_array_foreach(json_object_get(doc, "profiles"), i, v)
	{
		snprintf(items[n].kind, sizeof(items[n].kind), "profile");
		cli_json_copy_value(items[n++].value, sizeof(items[0].value), v);
	}
	json_array_foreach(json_object_get(doc, "groups"), i, v)
	{
		snprintf(items[n].kind, sizeof(items[n].kind), "group");
		cli_json_copy_value(items[n++].value, sizeof(items[0].value), v);
	}
	rc = print_scope(name, items, n, o->json);
	free(items);
	json_decref(doc);
	return rc;
}

static int
remote_main(struct esc_ctx *ctx, const struct opts *o, const char *action, const char *name)
{
	struct cli_http *h = NULL;
	json_t *doc = NULL;
	char path[200];
	int rc;

	if (strcmp(action, "passwd") == 0)
		return cli_usage_error(CMD,
				       "passwd does not go through the service yet: use --local on the service host");
	if (strcmp(action, "add") == 0 && o->user == NULL)
		return cli_usage_error(CMD, "--user ADMIN is required with --server (the first administrator is "
					    "created with --local on the service host)");
	if (name != NULL && strcmp(action, "add") != 0 && (rc = path_for(path, sizeof(path), name, action)) != 0)
		return rc;
	if ((rc = cli_http_open(CMD, ctx, o->server, o->server_ca, o->user, o->password_file, &h)) != 0)
		return rc;
	if (strcmp(action, "add") == 0)
		rc = remote_add(ctx, h, o, name);
	else if (strcmp(action, "list") == 0)
		rc = remote_list(ctx, h, o);
	else if (strcmp(action, "scope") == 0)
		rc = remote_scope(h, o, name);
	else if ((rc = cli_http_call(h, CLI_HTTP_POST, path, NULL, &doc)) == 0)
		printf("account '%s': %s\n", name, strcmp(action, "disable") == 0 ? "disabled" : "enabled");
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

int
account_main(int argc, char *argv[])
{
	enum {
		OPT_KRA = 256,
		OPT_PASSWORD,
		OPT_NEW_PASSWORD,
		OPT_PROFILE,
		OPT_GROUP,
		OPT_CLEAR,
		OPT_SERVER,
		OPT_SERVER_CA,
		OPT_LOCAL,
		OPT_JSON
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"role", required_argument, NULL, 'r'},
		{"kra", required_argument, NULL, OPT_KRA},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"new-password-file", required_argument, NULL, OPT_NEW_PASSWORD},
		{"profile", required_argument, NULL, OPT_PROFILE},
		{"group", required_argument, NULL, OPT_GROUP},
		{"clear", no_argument, NULL, OPT_CLEAR},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o = {0};
	const char *action;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	int c, rc, add;

	/* Client certificates bound to accounts: their own subcommand (cmd_account_cert.c). */
	if (argc >= 2 && strcmp(argv[1], "cert") == 0)
		return account_cert_main(argc - 1, argv + 1);
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:r:u:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			help();
			return 0;
		case 'c':
			o.config = optarg;
			break;
		case 'd':
			o.database = optarg;
			break;
		case 'r':
			o.role = optarg;
			break;
		case OPT_KRA:
			o.kra = optarg;
			break;
		case 'u':
			o.user = optarg;
			break;
		case OPT_PASSWORD:
			o.password_file = optarg;
			break;
		case OPT_NEW_PASSWORD:
			o.new_password_file = optarg;
			break;
		case OPT_PROFILE:
			if (o.nprofiles > ESC_SCOPE_MAX)
				return cli_usage_error(CMD, "at most %d --profile options", ESC_SCOPE_MAX);
			o.profiles[o.nprofiles++] = optarg;
			break;
		case OPT_GROUP:
			if (o.ngroups > ESC_SCOPE_MAX)
				return cli_usage_error(CMD, "at most %d --group options", ESC_SCOPE_MAX);
			o.groups[o.ngroups++] = optarg;
			break;
		case OPT_CLEAR:
			o.clear = 1;
			break;
		case OPT_SERVER:
			o.server = optarg;
			break;
		case OPT_SERVER_CA:
			o.server_ca = optarg;
			break;
		case OPT_LOCAL:
			o.local = 1;
			break;
		case OPT_JSON:
			o.json = 1;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(CMD, "expected an action: add or list");
	action = argv[optind];
	if (o.json && strcmp(action, "list") != 0 && strcmp(action, "scope") != 0)
		return cli_usage_error(CMD, "--json goes with list and scope");
	if (strcmp(action, "scope") != 0 && (o.nprofiles > 0 || o.ngroups > 0 || o.clear))
		return cli_usage_error(CMD, "--profile, --group and --clear are for scope");
	if (strcmp(action, "scope") == 0) {
		add = 3;
		if (optind + 2 != argc)
			return cli_usage_error(CMD, "scope takes one account NAME");
		if (o.clear && (o.nprofiles > 0 || o.ngroups > 0))
			return cli_usage_error(CMD, "--clear takes no --profile or --group");
		if (o.user == NULL)
			return cli_usage_error(CMD, "scope needs --user NAME");
	} else if (strcmp(action, "add") == 0) {
		add = 1;
		if (optind + 2 != argc)
			return cli_usage_error(CMD, "add takes one account NAME");
	} else if (strcmp(action, "list") == 0) {
		add = 0;
		if (optind + 1 != argc)
			return cli_usage_error(CMD, "list takes no arguments");
		if (o.role != NULL || o.kra != NULL || o.new_password_file != NULL)
			return cli_usage_error(CMD, "--role, --kra and --new-password-file are for add");
		if (o.user == NULL)
			return cli_usage_error(CMD, "list needs --user NAME");
	} else if (strcmp(action, "disable") == 0 || strcmp(action, "enable") == 0 || strcmp(action, "passwd") == 0) {
		add = 2;
		if (optind + 2 < argc || (strcmp(action, "passwd") != 0 && optind + 2 != argc))
			return cli_usage_error(CMD, "%s takes one account NAME%s", action,
					       strcmp(action, "passwd") == 0 ? " (default: yourself)" : "");
		if (o.user == NULL)
			return cli_usage_error(CMD, "%s needs --user NAME", action);
	} else {
		return cli_usage_error(CMD, "unknown action '%s' (use add, list, disable, enable, passwd or scope)",
				       action);
	}
	if ((rc = cli_check_mode(CMD, o.server, o.local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, o.config, &ctx, &cfg)) != 0)
		goto out;
	if (o.server != NULL) {
		rc = remote_main(ctx, &o, action, optind + 1 < argc ? argv[optind + 1] : NULL);
		goto out;
	}
	{
		char what[32];

		snprintf(what, sizeof(what), "%s %s", CMD, action);
		if ((rc = cli_apply_common(CMD, ctx, cfg, o.database, NULL, NULL, NULL)) != 0 ||
		    (rc = cli_open_store_local(CMD, what, ctx, cfg, &st)) != 0)
			goto out;
	}
	if (add == 3)
		rc = do_scope(ctx, st, &o, argv[optind + 1]);
	else if (add == 2)
		rc = do_change(ctx, st, &o, action, optind + 1 < argc ? argv[optind + 1] : NULL);
	else
		rc = add ? do_add(ctx, st, &o, argv[optind + 1]) : do_list(ctx, st, &o);
out:
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
