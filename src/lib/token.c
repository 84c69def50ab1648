/*
 * PKCS#11 tokens.
 *
 * The module is loaded once, by libp11 (which turns token keys into
 * EVP_PKEYs for OpenSSL).  For what libp11 does not offer — token info for
 * RFC 7512 matching, mechanism probing, key generation with exact
 * attributes, attribute reads — we call the same, already initialised module
 * instance directly through its function list: dlopen(RTLD_NOLOAD) returns
 * the handle libp11 opened, so both share one C_Initialize and one login
 * state (PKCS#11 login is per application and token).
 *
 * A module is also loaded once per process: PKCS#11 initialisation is
 * process-wide (C_Initialize once, C_Finalize ends every session of every
 * caller), so tokens opened from the same module file — one keeper per
 * worker thread, a CA token and a KRA card — share one loaded instance, and
 * the last one closed finalises it.  That registry is the library's one
 * piece of process-wide state, as the module's own state is; it is guarded
 * by a mutex, as is libp11's key list of each module.
 */
/* libp11.h uses APIs OpenSSL 3 deprecates; the compat level hides the warnings. */
#define OPENSSL_API_COMPAT 10101
#define _GNU_SOURCE /* strcasestr */

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libp11.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include <p11escrow/token.h>

#include "esc_build_config.h"
#include "internal.h"

#define MAX_FOUND 32
#define KEY_ID_LEN 16

/*
 * One loaded module, shared by every token opened from it (a CA token and a
 * KRA card on one module must not load and finalise it twice).
 */
struct module {
	int refs;
	char *path;
	PKCS11_CTX *p11;
	PKCS11_SLOT *slots;
	unsigned int nslots;
	void *dl;
	CK_FUNCTION_LIST_PTR fl;
	int own_instance;	  /* our function list is not libp11's: finalise it, log in on both */
	pthread_mutex_t p11_lock; /* libp11's key enumeration of this module's tokens */
	struct module *next;	  /* in the process-wide registry */
};

/* Modules loaded in this process (see the top of this file); refs and the list under modules_lock. */
static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct module *modules;

struct esc_token {
	struct module *mod;
	CK_FUNCTION_LIST_PTR fl; /* == mod->fl */
	PKCS11_SLOT *slot;
	CK_SLOT_ID slot_id;
	CK_SESSION_HANDLE session;
	int have_session;
	CK_TOKEN_INFO info;
	char label[33];
	char serial[17];
	char manufacturer[33];
	char model[17];
};

struct esc_token_key {
	unsigned char id[64];
	size_t id_len;
	char label[129];
	char type_name[16];
	CK_KEY_TYPE key_type;
	CK_OBJECT_HANDLE priv;
	CK_OBJECT_HANDLE pub;  /* CK_INVALID_HANDLE if the token has no public object */
	CK_OBJECT_HANDLE cert; /* the certificate written with the key (esc_token_import_key), else CK_INVALID_HANDLE */
};

static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

static const struct {
	enum esc_key_type type;
	const char *name;
} key_type_names[] = {
	{ESC_KEY_RSA3072, "rsa3072"},
	{ESC_KEY_RSA4096, "rsa4096"},
	{ESC_KEY_EC_P256, "ec-p256"},
	{ESC_KEY_EC_P384, "ec-p384"},
};

enum esc_err
esc_key_type_parse(struct esc_ctx *ctx, const char *s, enum esc_key_type *out)
{
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(key_type_names); i++) {
		if (strcmp(s, key_type_names[i].name) == 0) {
			*out = key_type_names[i].type;
			return ESC_OK;
		}
	}
	return esc_error(ctx, ESC_ERR_USAGE, "unknown key type '%s' (use rsa3072, rsa4096, ec-p256 or ec-p384)", s);
}

const char *
esc_key_type_name(enum esc_key_type t)
{
	size_t i;

	for (i = 0; i < ESC_ARRAY_LEN(key_type_names); i++)
		if (key_type_names[i].type == t)
			return key_type_names[i].name;
	return "unknown";
}

static int
is_rsa(enum esc_key_type t)
{
	return t == ESC_KEY_RSA3072 || t == ESC_KEY_RSA4096;
}

static unsigned long
key_bits(enum esc_key_type t)
{
	switch (t) {
	case ESC_KEY_RSA3072:
		return 3072;
	case ESC_KEY_RSA4096:
		return 4096;
	case ESC_KEY_EC_P256:
		return 256;
	case ESC_KEY_EC_P384:
		return 384;
	}
	return 0;
}

/* Copy a blank-padded PKCS#11 string field into a C string. */
static void
field_to_str(char *dst, size_t dstlen, const unsigned char *src, size_t srclen)
{
	size_t n = srclen < dstlen - 1 ? srclen : dstlen - 1;

	memcpy(dst, src, n);
	while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == '\0'))
		n--;
	dst[n] = '\0';
}

static enum esc_err
ckr_error(struct esc_ctx *ctx, CK_RV rv, const char *what)
{
	enum esc_err code = ESC_ERR_PKCS11;
	const char *hint = "";

	switch (rv) {
	case CKR_PIN_INCORRECT:
		code = ESC_ERR_PIN_INCORRECT;
		hint = " (the PIN is wrong)";
		break;
	case CKR_PIN_LOCKED:
		code = ESC_ERR_PIN_LOCKED;
		hint = " (the PIN is locked: the security officer must unblock it)";
		break;
	case CKR_PIN_LEN_RANGE:
		code = ESC_ERR_PIN_INCORRECT;
		hint = " (the PIN has a length the token does not accept)";
		break;
	case CKR_USER_PIN_NOT_INITIALIZED:
		hint = " (the token's user PIN was never set)";
		break;
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_DEVICE_REMOVED:
		code = ESC_ERR_TOKEN_NOT_FOUND;
		hint = " (the token was removed or is unreachable)";
		break;
	case CKR_MECHANISM_INVALID:
		code = ESC_ERR_MECHANISM;
		break;
	case CKR_USER_NOT_LOGGED_IN:
		hint = " (log in first)";
		break;
	case CKR_TOKEN_WRITE_PROTECTED:
	case CKR_SESSION_READ_ONLY:
		hint = " (the token is write-protected: nothing can be written to it)";
		break;
	default:
		break;
	}
	return esc_error(ctx, code, "%s failed: %s%s", what, esc_ckr_name(rv), hint);
}

enum esc_err
esc_token_uri_check(struct esc_ctx *ctx, const char *uri)
{
	P11KitUri *u;
	int rc;
	enum esc_err r = ESC_OK;

	if (uri == NULL)
		return esc_error(ctx, ESC_ERR_URI, "no PKCS#11 URI given");
	/* First of all, so no PIN is ever echoed in a message (found by fuzz_uri). */
	if (strcasestr(uri, "pin-value") != NULL || strcasestr(uri, "pin-source") != NULL)
		return esc_error(ctx, ESC_ERR_URI,
				 "PKCS#11 URI carries a PIN attribute: PINs never travel in URIs, use a PIN file, "
				 "the environment or the prompt");
	if (strncmp(uri, "pkcs11:", 7) != 0)
		return esc_error(ctx, ESC_ERR_URI, "'%s' is not a PKCS#11 URI (it must start with 'pkcs11:')", uri);
	if ((u = p11_kit_uri_new()) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	rc = p11_kit_uri_parse(uri, P11_KIT_URI_FOR_ANY, u);
	if (rc != P11_KIT_URI_OK)
		r = esc_error(ctx, ESC_ERR_URI, "malformed PKCS#11 URI '%s': %s", uri, p11_kit_uri_message(rc));
	else if (p11_kit_uri_any_unrecognized(u))
		r = esc_error(ctx, ESC_ERR_URI, "PKCS#11 URI '%s' has attributes this program does not understand",
			      uri);
	/*
	 * A URI may come from the database (token_keys, kras) or the network (a
	 * recovery package): if it could name the module, whoever writes those
	 * would choose the shared object loaded next to the CA PIN.  Modules
	 * come from local configuration only (esc_token_module_resolve).
	 */
	else if (p11_kit_uri_get_module_path(u) != NULL || p11_kit_uri_get_module_name(u) != NULL)
		r = esc_error(
			ctx, ESC_ERR_URI,
			"PKCS#11 URI '%s' names a module (%s): modules are chosen only by the module setting "
			"(configuration file, P11ESCROW_MODULE or --module), never by a URI; remove the attribute",
			uri, p11_kit_uri_get_module_path(u) != NULL ? "module-path" : "module-name");
	p11_kit_uri_free(u);
	return r;
}

static enum esc_err
parse_uri(struct esc_ctx *ctx, const char *uri, P11KitUri **out)
{
	P11KitUri *u;
	enum esc_err r;

	if ((r = esc_token_uri_check(ctx, uri)) != ESC_OK)
		return r;
	if ((u = p11_kit_uri_new()) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if (p11_kit_uri_parse(uri, P11_KIT_URI_FOR_ANY, u) != P11_KIT_URI_OK) {
		p11_kit_uri_free(u);
		return esc_error(ctx, ESC_ERR_URI, "malformed PKCS#11 URI '%s'", uri);
	}
	*out = u;
	return ESC_OK;
}

/* Resolve "p11-kit:NAME" to the module file p11-kit's configuration names. */
static enum esc_err
resolve_p11kit_name(struct esc_ctx *ctx, const char *name, char **out)
{
	CK_FUNCTION_LIST **mods;
	CK_FUNCTION_LIST *mod;
	char *path = NULL;
	enum esc_err r;

	if ((mods = p11_kit_modules_load(NULL, 0)) == NULL)
		return esc_error(ctx, ESC_ERR_MODULE, "p11-kit cannot load its configured modules: %s",
				 p11_kit_message() ? p11_kit_message() : "unknown reason");
	if ((mod = p11_kit_module_for_name(mods, name)) == NULL) {
		r = esc_error(ctx, ESC_ERR_MODULE, "p11-kit has no module named '%s' (see p11-kit list-modules)", name);
		goto out;
	}
	if ((path = p11_kit_module_get_filename(mod)) == NULL) {
		r = esc_error(ctx, ESC_ERR_MODULE, "p11-kit module '%s' has no file name", name);
		goto out;
	}
	*out = path;
	r = ESC_OK;
out:
	p11_kit_modules_release(mods);
	return r;
}

/*
 * Is real (a realpath) allowed by entry (one module_allow entry): the file
 * itself, or a file directly inside the directory?  Entries are resolved
 * too, so /usr/lib/softhsm/libsofthsm2.so (a symlink) names the file it
 * points to; an entry that does not exist on this system allows nothing.
 */
static int
allow_entry_matches(const char *entry, const char *real)
{
	char ereal[PATH_MAX];
	const char *slash = strrchr(real, '/');
	size_t dirlen;
	struct stat sb;

	if (realpath(entry, ereal) == NULL || stat(ereal, &sb) != 0)
		return 0;
	if (!S_ISDIR(sb.st_mode))
		return strcmp(ereal, real) == 0;
	dirlen = slash == real ? 1 : (size_t)(slash - real); /* "/x.so" is directly in "/" */
	return strlen(ereal) == dirlen && strncmp(ereal, real, dirlen) == 0;
}

/* Check real against ctx's module_allow.  Errors: CONFIG. */
static enum esc_err
check_module_allowed(struct esc_ctx *ctx, const char *module, const char *real)
{
	const char *allow = esc_ctx_module_allow(ctx), *p = allow, *colon;
	char entry[PATH_MAX];
	size_t n;

	while (*p != '\0') {
		colon = strchr(p, ':');
		n = colon != NULL ? (size_t)(colon - p) : strlen(p);
		if (n == 0 || n >= sizeof(entry) || p[0] != '/')
			return esc_error(ctx, ESC_ERR_CONFIG,
					 "module_allow '%s' must be a ':'-separated list of absolute paths", allow);
		memcpy(entry, p, n);
		entry[n] = '\0';
		if (allow_entry_matches(entry, real))
			return ESC_OK;
		p += n + (colon != NULL);
	}
	return esc_error(ctx, ESC_ERR_CONFIG,
			 "PKCS#11 module '%s' (the file %s) is not in module_allow (%s); to allow it, set "
			 "module_allow = %s%s%s in the configuration file (or P11ESCROW_MODULE_ALLOW)",
			 module, real, *allow ? allow : "empty", allow, *allow ? ":" : "", real);
}

enum esc_err
esc_token_module_resolve(struct esc_ctx *ctx, const char *module, char **out)
{
	const char *m = module != NULL && *module != '\0' ? module : ESC_DEFAULT_MODULE;
	char *named = NULL, *real = NULL;
	enum esc_err r;

	if (strncmp(m, "p11-kit:", 8) == 0) {
		if ((r = resolve_p11kit_name(ctx, m + 8, &named)) != ESC_OK)
			goto out;
	} else if ((named = strdup(m)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (named[0] != '/') {
		r = esc_error(ctx, ESC_ERR_MODULE, "PKCS#11 module '%s' must be an absolute path or p11-kit:NAME",
			      named);
		goto out;
	}
	/* The file itself, past every symlink: what is checked is what is loaded. */
	if ((real = realpath(named, NULL)) == NULL) {
		r = esc_error(ctx, errno == ENOMEM ? ESC_ERR_NOMEM : ESC_ERR_MODULE,
			      "cannot load PKCS#11 module '%s': %s", named, strerror(errno));
		goto out;
	}
	if ((r = check_module_allowed(ctx, m, real)) != ESC_OK)
		goto out;
	*out = real;
	real = NULL; /* transferred */
	r = ESC_OK;
out:
	free(real);
	free(named);
	return r;
}

static void
describe_token(char *buf, size_t len, const CK_TOKEN_INFO *ti)
{
	char label[33], serial[17];

	field_to_str(label, sizeof(label), ti->label, sizeof(ti->label));
	field_to_str(serial, sizeof(serial), ti->serialNumber, sizeof(ti->serialNumber));
	snprintf(buf, len, "'%s' (serial %s)", label, serial);
}

/* Append ", item" to a bounded list buffer. */
static void
list_append(char *list, size_t len, const char *item)
{
	size_t used = strlen(list);

	if (used + 1 >= len)
		return;
	snprintf(list + used, len - used, "%s%s", used ? ", " : "", item);
}

/* Finalise and unload; caller holds modules_lock (or mod was never registered). */
static void
module_free(struct module *mod)
{
	if (mod->own_instance)
		mod->fl->C_Finalize(NULL);
	if (mod->slots != NULL)
		PKCS11_release_all_slots(mod->p11, mod->slots, mod->nslots);
	if (mod->p11 != NULL) {
		PKCS11_CTX_unload(mod->p11);
		PKCS11_CTX_free(mod->p11);
	}
	if (mod->dl != NULL)
		dlclose(mod->dl);
	pthread_mutex_destroy(&mod->p11_lock);
	free(mod->path);
	free(mod);
}

/* Drop a reference; the last one finalises and unloads the module (under the lock, so a concurrent load waits). */
static void
module_release(struct module *mod)
{
	struct module **pp;

	if (mod == NULL)
		return;
	pthread_mutex_lock(&modules_lock);
	if (--mod->refs > 0) {
		pthread_mutex_unlock(&modules_lock);
		return;
	}
	for (pp = &modules; *pp != NULL; pp = &(*pp)->next)
		if (*pp == mod) {
			*pp = mod->next;
			break;
		}
	module_free(mod);
	pthread_mutex_unlock(&modules_lock);
}

static void
module_ref(struct module *mod)
{
	pthread_mutex_lock(&modules_lock);
	mod->refs++;
	pthread_mutex_unlock(&modules_lock);
}

static enum esc_err
module_load(struct esc_ctx *ctx, const char *module, struct module **out)
{
	struct module *mod;
	CK_C_GetFunctionList getfl;
	CK_C_INITIALIZE_ARGS init_args;
	CK_RV rv;
	enum esc_err r;

	char *path = NULL;

	if ((r = esc_token_module_resolve(ctx, module, &path)) != ESC_OK)
		return r;
	pthread_mutex_lock(&modules_lock);
	for (mod = modules; mod != NULL; mod = mod->next) {
		if (strcmp(mod->path, path) == 0) {
			/* Loaded already in this process: share it (and, as PKCS#11 has it, its logins). */
			mod->refs++;
			*out = mod;
			r = ESC_OK;
			mod = NULL;
			goto unlock;
		}
	}
	if ((mod = calloc(1, sizeof(*mod))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto unlock;
	}
	mod->refs = 1;
	mod->path = path;
	path = NULL; /* transferred */
	pthread_mutex_init(&mod->p11_lock, NULL);
	if ((mod->p11 = PKCS11_CTX_new()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (PKCS11_CTX_load(mod->p11, mod->path) != 0) {
		r = esc_error_ossl(ctx, ESC_ERR_MODULE, "cannot load PKCS#11 module '%s'", mod->path);
		PKCS11_CTX_free(mod->p11);
		mod->p11 = NULL;
		goto out;
	}
	if ((mod->dl = dlopen(mod->path, RTLD_NOW | RTLD_NOLOAD)) == NULL ||
	    (getfl = (CK_C_GetFunctionList)dlsym(mod->dl, "C_GetFunctionList")) == NULL || getfl(&mod->fl) != CKR_OK) {
		r = esc_error(ctx, ESC_ERR_MODULE, "PKCS#11 module '%s' has no usable C_GetFunctionList", mod->path);
		goto out;
	}
	/*
	 * Most modules hand out one instance, already initialised by libp11.
	 * Some (p11-kit-client.so: one RPC connection per C_GetFunctionList)
	 * give a fresh one that needs its own C_Initialize and its own login.
	 */
	memset(&init_args, 0, sizeof(init_args));
	init_args.flags = CKF_OS_LOCKING_OK;
	rv = mod->fl->C_Initialize(&init_args);
	if (rv == CKR_OK) {
		mod->own_instance = 1;
	} else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		r = ckr_error(ctx, rv, "initialising the PKCS#11 module");
		goto out;
	}
	if (PKCS11_enumerate_slots(mod->p11, &mod->slots, &mod->nslots) != 0) {
		r = esc_error_ossl(ctx, ESC_ERR_PKCS11, "cannot list the slots of PKCS#11 module '%s'", mod->path);
		goto out;
	}
	mod->next = modules;
	modules = mod;
	*out = mod;
	mod = NULL; /* transferred */
	r = ESC_OK;
out:
	if (mod != NULL)
		module_free(mod); /* never registered */
unlock:
	pthread_mutex_unlock(&modules_lock);
	free(path);
	return r;
}

/* Select the one token of mod matching u and open a session on it. */
static enum esc_err
select_token(struct esc_ctx *ctx, struct module *mod, P11KitUri *u, const char *uri, struct esc_token **out)
{
	struct esc_token *tok;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	enum esc_err r;
	unsigned int i, nmatch = 0, npresent = 0;
	char present[512] = "", matches[512] = "", desc[96];

	if ((tok = calloc(1, sizeof(*tok))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	tok->mod = mod;
	module_ref(mod);
	tok->fl = mod->fl;
	for (i = 0; i < mod->nslots; i++) {
		PKCS11_SLOT *s = &mod->slots[i];
		CK_SLOT_ID id;

		if (s->token == NULL)
			continue;
		id = PKCS11_get_slotid_from_slot(s);
		if (tok->fl->C_GetTokenInfo(id, &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
			continue;
		npresent++;
		describe_token(desc, sizeof(desc), &ti);
		list_append(present, sizeof(present), desc);
		if (!p11_kit_uri_match_token_info(u, &ti))
			continue;
		list_append(matches, sizeof(matches), desc);
		if (nmatch++ == 0) {
			tok->slot = s;
			tok->slot_id = id;
			tok->info = ti;
		}
	}
	if (nmatch == 0) {
		r = esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "no token matches '%s' in module %s (%s%s)", uri, mod->path,
			      npresent ? "tokens present: " : "the module reports no tokens", present);
		goto out;
	}
	if (nmatch > 1) {
		r = esc_error(ctx, ESC_ERR_AMBIGUOUS, "'%s' matches %u tokens: %s; name one by token= and serial=", uri,
			      nmatch, matches);
		goto out;
	}
	field_to_str(tok->label, sizeof(tok->label), tok->info.label, sizeof(tok->info.label));
	field_to_str(tok->serial, sizeof(tok->serial), tok->info.serialNumber, sizeof(tok->info.serialNumber));
	field_to_str(tok->manufacturer, sizeof(tok->manufacturer), tok->info.manufacturerID,
		     sizeof(tok->info.manufacturerID));
	field_to_str(tok->model, sizeof(tok->model), tok->info.model, sizeof(tok->info.model));
	rv = tok->fl->C_OpenSession(tok->slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &tok->session);
	if (rv != CKR_OK) {
		r = ckr_error(ctx, rv, "opening a session on the token");
		goto out;
	}
	tok->have_session = 1;
	*out = tok;
	tok = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_token_free(tok);
	return r;
}

enum esc_err
esc_token_open(struct esc_ctx *ctx, const char *module, const char *uri, struct esc_token **out)
{
	struct module *mod = NULL;
	P11KitUri *u = NULL;
	enum esc_err r;

	if ((r = parse_uri(ctx, uri, &u)) != ESC_OK || (r = module_load(ctx, module, &mod)) != ESC_OK)
		goto out;
	r = select_token(ctx, mod, u, uri, out);
out:
	module_release(mod);
	p11_kit_uri_free(u);
	return r;
}

enum esc_err
esc_token_open_sibling(struct esc_ctx *ctx, const struct esc_token *sibling, const char *uri, struct esc_token **out)
{
	P11KitUri *u = NULL;
	enum esc_err r;

	if ((r = parse_uri(ctx, uri, &u)) != ESC_OK)
		return r;
	r = select_token(ctx, sibling->mod, u, uri, out);
	p11_kit_uri_free(u);
	return r;
}

void
esc_token_free(struct esc_token *tok)
{
	if (tok == NULL)
		return;
	if (tok->have_session)
		tok->fl->C_CloseSession(tok->session);
	module_release(tok->mod);
	free(tok);
}

enum esc_err
esc_token_login(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_secret *pin)
{
	CK_RV rv;
	char what[96];

	rv = tok->fl->C_Login(tok->session, CKU_USER, (CK_UTF8CHAR_PTR)esc_secret_str(pin),
			      (CK_ULONG)esc_secret_len(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		snprintf(what, sizeof(what), "login to token '%s'", tok->label);
		return ckr_error(ctx, rv, what);
	}
	/* libp11's instance shares our login unless the module gave us our own. */
	if (tok->mod->own_instance) {
		pthread_mutex_lock(&tok->mod->p11_lock);
		rv = PKCS11_login(tok->slot, 0, esc_secret_str(pin)) != 0;
		pthread_mutex_unlock(&tok->mod->p11_lock);
		if (rv)
			return esc_error_ossl(ctx, ESC_ERR_PKCS11, "libp11 could not log in to token '%s'", tok->label);
	}
	return ESC_OK;
}

enum esc_err
esc_token_check_login(struct esc_ctx *ctx, struct esc_token *tok)
{
	CK_SESSION_INFO si;
	CK_RV rv;

	if (!tok->have_session)
		return esc_error(ctx, ESC_ERR_TOKEN_NOT_FOUND, "token '%s': no session", tok->label);
	if ((rv = tok->fl->C_GetSessionInfo(tok->session, &si)) != CKR_OK)
		return ckr_error(ctx, rv, "reading the session's state");
	if (si.state != CKS_RO_USER_FUNCTIONS && si.state != CKS_RW_USER_FUNCTIONS)
		return esc_error(ctx, ESC_ERR_PIN_MISSING, "token '%s': the session is not logged in", tok->label);
	return ESC_OK;
}

const char *
esc_token_label(const struct esc_token *tok)
{
	return tok->label;
}

const char *
esc_token_serial(const struct esc_token *tok)
{
	return tok->serial;
}

const char *
esc_token_manufacturer(const struct esc_token *tok)
{
	return tok->manufacturer;
}

const char *
esc_token_model(const struct esc_token *tok)
{
	return tok->model;
}

const char *
esc_token_module_path(const struct esc_token *tok)
{
	return tok->mod->path;
}

enum esc_err
esc_token_mechanisms(struct esc_ctx *ctx, struct esc_token *tok, struct esc_mechanism **out, size_t *n)
{
	CK_MECHANISM_TYPE *types = NULL;
	struct esc_mechanism *mechs = NULL;
	CK_MECHANISM_INFO mi;
	CK_ULONG count = 0, i;
	CK_RV rv;
	enum esc_err r;

	if ((rv = tok->fl->C_GetMechanismList(tok->slot_id, NULL, &count)) != CKR_OK) {
		r = ckr_error(ctx, rv, "C_GetMechanismList");
		goto out;
	}
	if (count > 4096) {
		r = esc_error(ctx, ESC_ERR_PKCS11, "token reports an implausible %lu mechanisms", (unsigned long)count);
		goto out;
	}
	if ((types = calloc(count + 1, sizeof(*types))) == NULL ||
	    (mechs = calloc(count + 1, sizeof(*mechs))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((rv = tok->fl->C_GetMechanismList(tok->slot_id, types, &count)) != CKR_OK) {
		r = ckr_error(ctx, rv, "C_GetMechanismList");
		goto out;
	}
	for (i = 0; i < count; i++) {
		mechs[i].type = types[i];
		if (tok->fl->C_GetMechanismInfo(tok->slot_id, types[i], &mi) == CKR_OK) {
			mechs[i].min_bits = mi.ulMinKeySize;
			mechs[i].max_bits = mi.ulMaxKeySize;
			mechs[i].flags = mi.flags;
		}
	}
	*out = mechs;
	*n = count;
	mechs = NULL; /* transferred */
	r = ESC_OK;
out:
	free(types);
	free(mechs);
	return r;
}

/*
 * Require one mechanism with the given flag; for key generation also a key
 * size range that contains bits (EC sizes are reported inconsistently by
 * tokens, so only RSA sizes are checked).
 */
static enum esc_err
require_mech(struct esc_ctx *ctx, struct esc_token *tok, CK_MECHANISM_TYPE mech, CK_FLAGS flag, unsigned long rsa_bits,
	     const char *purpose)
{
	CK_MECHANISM_INFO mi;
	CK_MECHANISM_TYPE list[512];
	CK_ULONG n = ESC_ARRAY_LEN(list), i;
	CK_RV rv;

	/*
	 * The list is authoritative: some tokens (SoftHSM2 with
	 * slots.mechanisms) answer C_GetMechanismInfo for mechanisms they
	 * have disabled.
	 */
	if ((rv = tok->fl->C_GetMechanismList(tok->slot_id, list, &n)) != CKR_OK)
		return ckr_error(ctx, rv, "C_GetMechanismList");
	for (i = 0; i < n && list[i] != mech; i++)
		;
	rv = i == n ? CKR_MECHANISM_INVALID : tok->fl->C_GetMechanismInfo(tok->slot_id, mech, &mi);
	if (rv == CKR_MECHANISM_INVALID)
		return esc_error(ctx, ESC_ERR_MECHANISM, "token '%s' lacks %s, needed %s", tok->label,
				 esc_ckm_name(mech), purpose);
	if (rv != CKR_OK)
		return ckr_error(ctx, rv, "C_GetMechanismInfo");
	if ((mi.flags & flag) == 0)
		return esc_error(ctx, ESC_ERR_MECHANISM, "token '%s' offers %s but not for this operation, needed %s",
				 tok->label, esc_ckm_name(mech), purpose);
	if (rsa_bits != 0 && (rsa_bits < mi.ulMinKeySize || rsa_bits > mi.ulMaxKeySize))
		return esc_error(ctx, ESC_ERR_MECHANISM, "token '%s' supports %s only for %lu..%lu bits, not %lu",
				 tok->label, esc_ckm_name(mech), (unsigned long)mi.ulMinKeySize,
				 (unsigned long)mi.ulMaxKeySize, rsa_bits);
	return ESC_OK;
}

enum esc_err
esc_token_require_key_mechanisms(struct esc_ctx *ctx, struct esc_token *tok, enum esc_key_type type,
				 enum esc_key_usage usage)
{
	enum esc_err r;
	unsigned long bits = is_rsa(type) ? key_bits(type) : 0;

	if (is_rsa(type)) {
		if ((r = require_mech(ctx, tok, CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, bits,
				      "to generate the RSA key")) != ESC_OK)
			return r;
		if (usage == ESC_KEY_USE_SIGN)
			return require_mech(ctx, tok, CKM_RSA_PKCS, CKF_SIGN, 0, "to sign with the RSA key");
		/*
		 * OAEP natively, or raw RSA with the OAEP padding checked in
		 * software (what p11-kit's RPC and SoftHSM2's SHA-256 OAEP need).
		 */
		if (require_mech(NULL, tok, CKM_RSA_PKCS_OAEP, CKF_DECRYPT, 0, "") == ESC_OK)
			return ESC_OK;
		return require_mech(ctx, tok, CKM_RSA_X_509, CKF_DECRYPT, 0,
				    "(or CKM_RSA_PKCS_OAEP) to decrypt with the RSA key");
	}
	if ((r = require_mech(ctx, tok, CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 0, "to generate the EC key")) !=
	    ESC_OK)
		return r;
	if (usage == ESC_KEY_USE_SIGN)
		return require_mech(ctx, tok, CKM_ECDSA, CKF_SIGN, 0, "to sign with the EC key");
	return require_mech(ctx, tok, CKM_ECDH1_DERIVE, CKF_DERIVE, 0, "for ECDH with the EC key");
}

static void
hex_id(char *buf, size_t len, const unsigned char *id, size_t idlen)
{
	size_t i;

	buf[0] = '\0';
	for (i = 0; i < idlen && 2 * i + 2 < len; i++)
		snprintf(buf + 2 * i, len - 2 * i, "%02x", id[i]);
}

/* Fill key identity from the private key object's attributes. */
static enum esc_err
load_key_attrs(struct esc_ctx *ctx, struct esc_token *tok, CK_OBJECT_HANDLE h, struct esc_token_key *key)
{
	CK_ULONG modbits = 0;
	unsigned char params[64];
	CK_ATTRIBUTE a[] = {
		{CKA_ID, key->id, sizeof(key->id)},
		{CKA_LABEL, key->label, sizeof(key->label) - 1},
		{CKA_KEY_TYPE, &key->key_type, sizeof(key->key_type)},
	};
	CK_RV rv;

	rv = tok->fl->C_GetAttributeValue(tok->session, h, a, ESC_ARRAY_LEN(a));
	if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID)
		return ckr_error(ctx, rv, "reading key attributes");
	key->id_len = a[0].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[0].ulValueLen;
	key->label[a[1].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : a[1].ulValueLen] = '\0';
	key->priv = h;
	key->pub = CK_INVALID_HANDLE;
	snprintf(key->type_name, sizeof(key->type_name), "unknown");
	if (key->key_type == CKK_RSA) {
		/* Private RSA objects carry the modulus; its length gives the size. */
		CK_ATTRIBUTE m = {CKA_MODULUS, NULL, 0};

		if (tok->fl->C_GetAttributeValue(tok->session, h, &m, 1) == CKR_OK &&
		    m.ulValueLen != CK_UNAVAILABLE_INFORMATION)
			modbits = m.ulValueLen * 8;
		snprintf(key->type_name, sizeof(key->type_name), "rsa%lu", (unsigned long)modbits);
	} else if (key->key_type == CKK_EC) {
		CK_ATTRIBUTE p = {CKA_EC_PARAMS, params, sizeof(params)};

		if (tok->fl->C_GetAttributeValue(tok->session, h, &p, 1) == CKR_OK) {
			if (p.ulValueLen == sizeof(oid_p256) && memcmp(params, oid_p256, sizeof(oid_p256)) == 0)
				snprintf(key->type_name, sizeof(key->type_name), "ec-p256");
			else if (p.ulValueLen == sizeof(oid_p384) && memcmp(params, oid_p384, sizeof(oid_p384)) == 0)
				snprintf(key->type_name, sizeof(key->type_name), "ec-p384");
			else
				snprintf(key->type_name, sizeof(key->type_name), "ec-other");
		}
	}
	return ESC_OK;
}

/* Find objects matching a template; at most MAX_FOUND handles. */
static enum esc_err
find_objects(struct esc_ctx *ctx, struct esc_token *tok, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *found,
	     CK_ULONG *nfound)
{
	CK_RV rv;

	if ((rv = tok->fl->C_FindObjectsInit(tok->session, tmpl, n)) != CKR_OK)
		return ckr_error(ctx, rv, "searching token objects");
	rv = tok->fl->C_FindObjects(tok->session, found, MAX_FOUND, nfound);
	tok->fl->C_FindObjectsFinal(tok->session);
	if (rv != CKR_OK)
		return ckr_error(ctx, rv, "searching token objects");
	return ESC_OK;
}

/* Attach the public key object with the same CKA_ID, if any. */
static void
find_public_half(struct esc_token *tok, struct esc_token_key *key)
{
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_ID, key->id, key->id_len},
	};
	CK_OBJECT_HANDLE found[MAX_FOUND];
	CK_ULONG n = 0;

	if (key->id_len == 0 || find_objects(NULL, tok, t, ESC_ARRAY_LEN(t), found, &n) != ESC_OK || n != 1)
		return;
	key->pub = found[0];
}

enum esc_err
esc_token_find_key(struct esc_ctx *ctx, struct esc_token *tok, const char *uri, struct esc_token_key **out)
{
	P11KitUri *u = NULL;
	struct esc_token_key *key = NULL;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE tmpl[3], *attrs, *a;
	CK_OBJECT_HANDLE found[MAX_FOUND];
	CK_ULONG nattrs = 0, ntmpl = 0, nfound = 0, i;
	enum esc_err r;
	char list[768] = "", item[200], idhex[80];

	if ((r = parse_uri(ctx, uri, &u)) != ESC_OK)
		goto out;
	if ((a = p11_kit_uri_get_attribute(u, CKA_CLASS)) != NULL && a->ulValueLen == sizeof(cls) &&
	    *(CK_OBJECT_CLASS *)a->pValue != CKO_PRIVATE_KEY) {
		r = esc_error(ctx, ESC_ERR_URI, "'%s' does not name a private key (use type=private)", uri);
		goto out;
	}
	tmpl[ntmpl++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
	attrs = p11_kit_uri_get_attributes(u, &nattrs);
	for (i = 0; i < nattrs; i++)
		if (attrs[i].type == CKA_ID || attrs[i].type == CKA_LABEL)
			tmpl[ntmpl++] = attrs[i];
	if (ntmpl == 1) {
		r = esc_error(ctx, ESC_ERR_URI, "'%s' names no key: give object= (label) and/or id=", uri);
		goto out;
	}
	if ((r = find_objects(ctx, tok, tmpl, ntmpl, found, &nfound)) != ESC_OK)
		goto out;
	if (nfound == 0) {
		r = esc_error(ctx, ESC_ERR_KEY_NOT_FOUND,
			      "no private key matches '%s' on token '%s' (is the PIN right and the URI's id/object?)",
			      uri, tok->label);
		goto out;
	}
	if ((key = calloc(1, sizeof(*key))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (nfound > 1) {
		/* List every candidate so the operator can pick one by id. */
		for (i = 0; i < nfound; i++) {
			if (load_key_attrs(ctx, tok, found[i], key) != ESC_OK)
				continue;
			hex_id(idhex, sizeof(idhex), key->id, key->id_len);
			snprintf(item, sizeof(item), "object='%s' id=%s (%s)", key->label, idhex, key->type_name);
			list_append(list, sizeof(list), item);
		}
		r = esc_error(ctx, ESC_ERR_AMBIGUOUS,
			      "'%s' matches %lu private keys on token '%s': %s; add id= to the URI", uri,
			      (unsigned long)nfound, tok->label, list);
		goto out;
	}
	if ((r = load_key_attrs(ctx, tok, found[0], key)) != ESC_OK)
		goto out;
	find_public_half(tok, key);
	*out = key;
	key = NULL; /* transferred */
	r = ESC_OK;
out:
	free(key);
	p11_kit_uri_free(u);
	return r;
}

enum esc_err
esc_token_generate_key(struct esc_ctx *ctx, struct esc_token *tok, enum esc_key_type type, enum esc_key_usage usage,
		       const char *label, struct esc_token_key **out)
{
	struct esc_token_key *key = NULL;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_BBOOL sign = usage == ESC_KEY_USE_SIGN ? CK_TRUE : CK_FALSE;
	CK_BBOOL rsa_dec = (usage == ESC_KEY_USE_DECRYPT && is_rsa(type)) ? CK_TRUE : CK_FALSE;
	CK_BBOOL ec_derive = (usage == ESC_KEY_USE_DECRYPT && !is_rsa(type)) ? CK_TRUE : CK_FALSE;
	CK_ULONG bits = key_bits(type);
	CK_BYTE exponent[] = {0x01, 0x00, 0x01};
	CK_MECHANISM mech = {is_rsa(type) ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pub[10], priv[12];
	CK_ULONG npub = 0, npriv = 0;
	CK_OBJECT_HANDLE hpub, hpriv;
	CK_RV rv;
	enum esc_err r;
	size_t llen = strlen(label);

	if (llen == 0 || llen > 128)
		return esc_error(ctx, ESC_ERR_USAGE, "key label must be 1..128 bytes");
	if ((r = esc_token_require_key_mechanisms(ctx, tok, type, usage)) != ESC_OK)
		return r;
	if ((key = calloc(1, sizeof(*key))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	key->id_len = KEY_ID_LEN;
	if (RAND_bytes(key->id, KEY_ID_LEN) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot draw a random key id");
		goto out;
	}
	pub[npub++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, sizeof(yes)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_PRIVATE, &no, sizeof(no)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_ID, key->id, key->id_len};
	pub[npub++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, llen};
	pub[npub++] = (CK_ATTRIBUTE){CKA_VERIFY, &sign, sizeof(sign)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_ENCRYPT, &rsa_dec, sizeof(rsa_dec)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_WRAP, &no, sizeof(no)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_TOKEN, &yes, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_PRIVATE, &yes, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &no, sizeof(no)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_ID, key->id, key->id_len};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, llen};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SIGN, &sign, sizeof(sign)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_DECRYPT, &rsa_dec, sizeof(rsa_dec)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_UNWRAP, &no, sizeof(no)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_DERIVE, &ec_derive, sizeof(ec_derive)};
	if (is_rsa(type)) {
		pub[npub++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
		pub[npub++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)};
	} else if (type == ESC_KEY_EC_P256) {
		pub[npub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256)};
	} else {
		pub[npub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, (void *)oid_p384, sizeof(oid_p384)};
	}
	rv = tok->fl->C_GenerateKeyPair(tok->session, &mech, pub, npub, priv, npriv, &hpub, &hpriv);
	if (rv != CKR_OK) {
		r = ckr_error(ctx, rv, "generating a key pair on the token");
		goto out;
	}
	if ((r = load_key_attrs(ctx, tok, hpriv, key)) != ESC_OK) {
		tok->fl->C_DestroyObject(tok->session, hpriv);
		tok->fl->C_DestroyObject(tok->session, hpub);
		goto out;
	}
	key->pub = hpub;
	*out = key;
	key = NULL; /* transferred */
	r = ESC_OK;
out:
	free(key);
	return r;
}

enum esc_err
esc_token_key_relabel(struct esc_ctx *ctx, struct esc_token *tok, struct esc_token_key *key, const char *label)
{
	size_t llen = strlen(label);
	CK_ATTRIBUTE a = {CKA_LABEL, (void *)label, (CK_ULONG)llen};
	CK_RV rv;

	if (llen == 0 || llen >= sizeof(key->label))
		return esc_error(ctx, ESC_ERR_USAGE, "key label must be 1..128 bytes");
	if ((rv = tok->fl->C_SetAttributeValue(tok->session, key->priv, &a, 1)) != CKR_OK)
		return ckr_error(ctx, rv, "labelling the private key");
	if (key->pub != CK_INVALID_HANDLE &&
	    (rv = tok->fl->C_SetAttributeValue(tok->session, key->pub, &a, 1)) != CKR_OK)
		return ckr_error(ctx, rv, "labelling the public key");
	if (key->cert != CK_INVALID_HANDLE &&
	    (rv = tok->fl->C_SetAttributeValue(tok->session, key->cert, &a, 1)) != CKR_OK)
		return ckr_error(ctx, rv, "labelling the certificate");
	memcpy(key->label, label, llen + 1);
	return ESC_OK;
}

enum esc_err
esc_token_destroy_key(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key)
{
	CK_RV rv = CKR_OK, rv2 = CKR_OK, rv3 = CKR_OK;

	if (key->cert != CK_INVALID_HANDLE)
		rv3 = tok->fl->C_DestroyObject(tok->session, key->cert);
	if (key->pub != CK_INVALID_HANDLE)
		rv2 = tok->fl->C_DestroyObject(tok->session, key->pub);
	rv = tok->fl->C_DestroyObject(tok->session, key->priv);
	if (rv != CKR_OK)
		return ckr_error(ctx, rv, "destroying the private key");
	if (rv2 != CKR_OK)
		return ckr_error(ctx, rv2, "destroying the public key");
	if (rv3 != CKR_OK)
		return ckr_error(ctx, rv3, "destroying the certificate");
	return ESC_OK;
}

void
esc_token_key_free(struct esc_token_key *key)
{
	free(key);
}

const unsigned char *
esc_token_key_id(const struct esc_token_key *key, size_t *len)
{
	*len = key->id_len;
	return key->id;
}

const char *
esc_token_key_label(const struct esc_token_key *key)
{
	return key->label;
}

const char *
esc_token_key_type_name(const struct esc_token_key *key)
{
	return key->type_name;
}

enum esc_err
esc_token_key_check_protected(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key)
{
	CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE, always = CK_FALSE, never = CK_FALSE;
	CK_ATTRIBUTE a[] = {
		{CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
		{CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
		{CKA_ALWAYS_SENSITIVE, &always, sizeof(always)},
		{CKA_NEVER_EXTRACTABLE, &never, sizeof(never)},
	};
	CK_RV rv;

	rv = tok->fl->C_GetAttributeValue(tok->session, key->priv, a, ESC_ARRAY_LEN(a));
	if (rv != CKR_OK)
		return ckr_error(ctx, rv, "reading the key's protection attributes");
	if (!sensitive || extractable)
		return esc_error(ctx, ESC_ERR_STATE,
				 "key '%s' on token '%s' is %s: keys p11escrow uses must be sensitive and "
				 "non-extractable",
				 key->label, tok->label, !sensitive ? "not sensitive" : "extractable");
	if (!always || !never)
		return esc_error(ctx, ESC_ERR_STATE,
				 "key '%s' on token '%s' was once %s: it may exist outside the token; generate a "
				 "new one",
				 key->label, tok->label, !always ? "not sensitive" : "extractable");
	return ESC_OK;
}

/* Read one variable-length attribute into a malloc'ed buffer. */
static enum esc_err
get_attr_alloc(struct esc_ctx *ctx, struct esc_token *tok, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
	       unsigned char **out, size_t *outlen)
{
	CK_ATTRIBUTE a = {type, NULL, 0};
	unsigned char *buf;
	CK_RV rv;

	if ((rv = tok->fl->C_GetAttributeValue(tok->session, h, &a, 1)) != CKR_OK)
		return ckr_error(ctx, rv, "reading a key attribute");
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0 || a.ulValueLen > 8192)
		return esc_error(ctx, ESC_ERR_PKCS11, "token returned no usable value for a public key attribute");
	if ((buf = malloc(a.ulValueLen)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	a.pValue = buf;
	if ((rv = tok->fl->C_GetAttributeValue(tok->session, h, &a, 1)) != CKR_OK) {
		free(buf);
		return ckr_error(ctx, rv, "reading a key attribute");
	}
	*out = buf;
	*outlen = a.ulValueLen;
	return ESC_OK;
}

static enum esc_err
rsa_public(struct esc_ctx *ctx, struct esc_token *tok, CK_OBJECT_HANDLE h, EVP_PKEY **out)
{
	unsigned char *n = NULL, *e = NULL;
	size_t nlen = 0, elen = 0;
	BIGNUM *bn_n = NULL, *bn_e = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	EVP_PKEY *pkey = NULL;
	enum esc_err r;

	if ((r = get_attr_alloc(ctx, tok, h, CKA_MODULUS, &n, &nlen)) != ESC_OK ||
	    (r = get_attr_alloc(ctx, tok, h, CKA_PUBLIC_EXPONENT, &e, &elen)) != ESC_OK)
		goto out;
	if ((bn_n = BN_bin2bn(n, (int)nlen, NULL)) == NULL || (bn_e = BN_bin2bn(e, (int)elen, NULL)) == NULL ||
	    (bld = OSSL_PARAM_BLD_new()) == NULL || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
	    EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the RSA public key read from the token");
		goto out;
	}
	*out = pkey;
	r = ESC_OK;
out:
	EVP_PKEY_CTX_free(pctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn_n);
	BN_free(bn_e);
	free(n);
	free(e);
	return r;
}

static enum esc_err
ec_public(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key, CK_OBJECT_HANDLE h,
	  EVP_PKEY **out)
{
	unsigned char *point = NULL;
	const unsigned char *p;
	ASN1_OCTET_STRING *os = NULL;
	size_t plen = 0;
	const char *group;
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *pctx = NULL;
	EVP_PKEY *pkey = NULL;
	enum esc_err r;

	if (strcmp(key->type_name, "ec-p256") == 0)
		group = "P-256";
	else if (strcmp(key->type_name, "ec-p384") == 0)
		group = "P-384";
	else {
		r = esc_error(ctx, ESC_ERR_CRYPTO, "key '%s' is on an EC curve p11escrow does not support", key->label);
		goto out;
	}
	if ((r = get_attr_alloc(ctx, tok, h, CKA_EC_POINT, &point, &plen)) != ESC_OK)
		goto out;
	/* CKA_EC_POINT is DER OCTET STRING per PKCS#11 2.40; accept raw too. */
	p = point;
	if ((os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)plen)) != NULL && p == point + plen) {
		params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, os->data, (size_t)os->length);
	} else {
		params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, plen);
	}
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
	params[2] = OSSL_PARAM_construct_end();
	if ((pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
	    EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the EC public key read from the token");
		goto out;
	}
	*out = pkey;
	r = ESC_OK;
out:
	ERR_clear_error();
	ASN1_OCTET_STRING_free(os);
	EVP_PKEY_CTX_free(pctx);
	free(point);
	return r;
}

/*
 * The public key of the certificate object with key's CKA_ID: cards issued
 * by a card-management system often carry a key's certificate but no
 * public key object.  The key must be of key's type and curve.
 */
static enum esc_err
cert_public(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key, EVP_PKEY **out)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_ID, (void *)key->id, key->id_len},
	};
	CK_OBJECT_HANDLE found[MAX_FOUND];
	CK_ULONG n = 0;
	unsigned char *der = NULL;
	const unsigned char *p;
	size_t dlen = 0;
	X509 *x = NULL;
	EVP_PKEY *pub;
	char group[64] = "";
	const char *want = strcmp(key->type_name, "ec-p256") == 0 ? "prime256v1" : "secp384r1";
	enum esc_err r;

	/* Any failure to find exactly one such certificate reads as "none". */
	if (key->id_len == 0 || find_objects(NULL, tok, t, ESC_ARRAY_LEN(t), found, &n) != ESC_OK || n != 1) {
		r = esc_error(ctx, ESC_ERR_KEY_NOT_FOUND,
			      "EC key '%s' has neither a public key object nor a certificate on the token", key->label);
		goto out;
	}
	if ((r = get_attr_alloc(ctx, tok, found[0], CKA_VALUE, &der, &dlen)) != ESC_OK)
		goto out;
	p = der;
	if ((x = d2i_X509(NULL, &p, (long)dlen)) == NULL || (pub = X509_get0_pubkey(x)) == NULL ||
	    !EVP_PKEY_is_a(pub, "EC") ||
	    EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) != 1 ||
	    strcmp(group, want) != 0) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_CRYPTO, "the certificate next to EC key '%s' does not hold its public key",
			      key->label);
		goto out;
	}
	if (!EVP_PKEY_up_ref(pub)) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	*out = pub;
	r = ESC_OK;
out:
	X509_free(x);
	free(der);
	return r;
}

enum esc_err
esc_token_key_public(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key, EVP_PKEY **out)
{
	if (key->key_type == CKK_RSA)
		return rsa_public(ctx, tok, key->priv, out);
	if (key->key_type == CKK_EC) {
		if (key->pub == CK_INVALID_HANDLE) {
			if (strcmp(key->type_name, "ec-p256") != 0 && strcmp(key->type_name, "ec-p384") != 0)
				return esc_error(ctx, ESC_ERR_CRYPTO,
						 "key '%s' is on an EC curve p11escrow does not support", key->label);
			return cert_public(ctx, tok, key, out);
		}
		return ec_public(ctx, tok, key, key->pub, out);
	}
	return esc_error(ctx, ESC_ERR_CRYPTO, "key '%s' has a type p11escrow does not support", key->label);
}

enum esc_err
esc_token_key_attributes(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key,
			 struct esc_token_key_attrs *out)
{
	CK_BBOOL v[7] = {CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE, CK_FALSE};
	CK_ATTRIBUTE a[] = {
		{CKA_DECRYPT, &v[0], sizeof(v[0])},
		{CKA_DERIVE, &v[1], sizeof(v[1])},
		{CKA_SIGN, &v[2], sizeof(v[2])},
		{CKA_SENSITIVE, &v[3], sizeof(v[3])},
		{CKA_EXTRACTABLE, &v[4], sizeof(v[4])},
		{CKA_ALWAYS_SENSITIVE, &v[5], sizeof(v[5])},
		{CKA_NEVER_EXTRACTABLE, &v[6], sizeof(v[6])},
	};
	CK_RV rv;
	size_t i;

	/* An attribute the token does not have comes back unavailable; the others are still filled in. */
	rv = tok->fl->C_GetAttributeValue(tok->session, key->priv, a, ESC_ARRAY_LEN(a));
	if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
		return ckr_error(ctx, rv, "reading the key's attributes");
	for (i = 0; i < ESC_ARRAY_LEN(a); i++)
		if (a[i].ulValueLen != sizeof(CK_BBOOL))
			v[i] = CK_FALSE;
	out->decrypt = v[0] == CK_TRUE;
	out->derive = v[1] == CK_TRUE;
	out->sign = v[2] == CK_TRUE;
	out->sensitive = v[3] == CK_TRUE;
	out->extractable = v[4] == CK_TRUE;
	out->always_sensitive = v[5] == CK_TRUE;
	out->never_extractable = v[6] == CK_TRUE;
	return ESC_OK;
}

int
esc_token_write_protected(const struct esc_token *tok)
{
	return (tok->info.flags & CKF_WRITE_PROTECTED) != 0;
}

/*
 * Decrypt ct on the token with mech: 1 if what comes back is want.  Raw
 * RSA may come back without want's leading zero bytes (the value is the
 * same), so the comparison is right-aligned over zeros.
 */
static int
probe_decrypt_one(struct esc_token *tok, const struct esc_token_key *key, CK_MECHANISM *mech, const unsigned char *ct,
		  size_t ctlen, const unsigned char *want, size_t wantlen)
{
	unsigned char pt[1024];
	CK_ULONG ptlen = sizeof(pt);
	size_t skip, i;
	int ok = 0;

	if (tok->fl->C_DecryptInit(tok->session, mech, key->priv) == CKR_OK &&
	    tok->fl->C_Decrypt(tok->session, (CK_BYTE_PTR)ct, (CK_ULONG)ctlen, pt, &ptlen) == CKR_OK &&
	    ptlen <= wantlen && ptlen > 0) {
		skip = wantlen - (size_t)ptlen;
		for (i = 0; i < skip && want[i] == 0; i++)
			;
		ok = i == skip && CRYPTO_memcmp(pt, want + skip, (size_t)ptlen) == 0;
	}
	OPENSSL_cleanse(pt, sizeof(pt));
	return ok;
}

/* Encrypt in to pub in software with padding (and OAEP's hash md): the probe's ciphertext. */
static enum esc_err
probe_encrypt(struct esc_ctx *ctx, EVP_PKEY *pub, int padding, const EVP_MD *md, const unsigned char *in, size_t inlen,
	      unsigned char *ct, size_t *ctlen)
{
	EVP_PKEY_CTX *pctx = NULL;
	enum esc_err r = ESC_OK;

	if ((pctx = EVP_PKEY_CTX_new(pub, NULL)) == NULL || EVP_PKEY_encrypt_init(pctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(pctx, padding) <= 0 ||
	    (md != NULL &&
	     (EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)) ||
	    EVP_PKEY_encrypt(pctx, ct, ctlen, in, inlen) <= 0)
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot prepare the card's decryption probe");
	EVP_PKEY_CTX_free(pctx);
	return r;
}

static int
mech_listed(struct esc_token *tok, CK_MECHANISM_TYPE mech, CK_FLAGS flag)
{
	return require_mech(NULL, tok, mech, flag, 0, "") == ESC_OK;
}

enum esc_err
esc_token_probe_decrypt(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key, EVP_PKEY *pub,
			struct esc_token_decrypt_probe *out)
{
	CK_RSA_PKCS_OAEP_PARAMS p256 = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
	CK_RSA_PKCS_OAEP_PARAMS p1 = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
	CK_MECHANISM oaep256 = {CKM_RSA_PKCS_OAEP, &p256, sizeof(p256)};
	CK_MECHANISM oaep1 = {CKM_RSA_PKCS_OAEP, &p1, sizeof(p1)};
	CK_MECHANISM raw = {CKM_RSA_X_509, NULL, 0};
	CK_MECHANISM pkcs1 = {CKM_RSA_PKCS, NULL, 0};
	unsigned char probe[32], block[1024], ct[1024];
	size_t ctlen, k;
	enum esc_err r;

	memset(out, 0, sizeof(*out));
	if (key->key_type == CKK_EC) {
		out->ecdh = mech_listed(tok, CKM_ECDH1_DERIVE, CKF_DERIVE);
		out->ecdh_cofactor = mech_listed(tok, CKM_ECDH1_COFACTOR_DERIVE, CKF_DERIVE);
		return ESC_OK;
	}
	if (key->key_type != CKK_RSA || !EVP_PKEY_is_a(pub, "RSA"))
		return esc_error(ctx, ESC_ERR_CRYPTO, "key '%s' is neither RSA nor EC", key->label);
	out->rsa = 1;
	k = (size_t)EVP_PKEY_get_size(pub);
	if (k < 128 || k > sizeof(block))
		return esc_error(ctx, ESC_ERR_CRYPTO, "key '%s' has an RSA size p11escrow does not support",
				 key->label);
	if (RAND_bytes(probe, sizeof(probe)) != 1 || RAND_bytes(block, (int)k) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot draw the probe's random bytes");
		goto out;
	}
	/* Raw RSA: a value below the modulus (top byte zero, the next one not). */
	block[0] = 0;
	block[1] |= 1;
	if (mech_listed(tok, CKM_RSA_PKCS_OAEP, CKF_DECRYPT)) {
		ctlen = sizeof(ct);
		if ((r = probe_encrypt(ctx, pub, RSA_PKCS1_OAEP_PADDING, EVP_sha256(), probe, sizeof(probe), ct,
				       &ctlen)) != ESC_OK)
			goto out;
		out->oaep_sha256 = probe_decrypt_one(tok, key, &oaep256, ct, ctlen, probe, sizeof(probe));
		ctlen = sizeof(ct);
		if ((r = probe_encrypt(ctx, pub, RSA_PKCS1_OAEP_PADDING, EVP_sha1(), probe, sizeof(probe), ct,
				       &ctlen)) != ESC_OK)
			goto out;
		out->oaep_sha1 = probe_decrypt_one(tok, key, &oaep1, ct, ctlen, probe, sizeof(probe));
	}
	if (mech_listed(tok, CKM_RSA_X_509, CKF_DECRYPT)) {
		ctlen = sizeof(ct);
		if ((r = probe_encrypt(ctx, pub, RSA_NO_PADDING, NULL, block, k, ct, &ctlen)) != ESC_OK)
			goto out;
		out->raw = probe_decrypt_one(tok, key, &raw, ct, ctlen, block, k);
	}
	if (mech_listed(tok, CKM_RSA_PKCS, CKF_DECRYPT)) {
		ctlen = sizeof(ct);
		if ((r = probe_encrypt(ctx, pub, RSA_PKCS1_PADDING, NULL, probe, sizeof(probe), ct, &ctlen)) != ESC_OK)
			goto out;
		out->pkcs1 = probe_decrypt_one(tok, key, &pkcs1, ct, ctlen, probe, sizeof(probe));
	}
	r = ESC_OK;
out:
	OPENSSL_cleanse(probe, sizeof(probe));
	OPENSSL_cleanse(block, sizeof(block));
	return r;
}

enum esc_err
esc_token_key_private(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key, EVP_PKEY **out)
{
	PKCS11_KEY *keys = NULL;
	EVP_PKEY *pkey;
	unsigned int n = 0, i;

	enum esc_err r;

	/* libp11 keeps one key list per token: threads sharing the module take turns here. */
	pthread_mutex_lock(&tok->mod->p11_lock);
	if (PKCS11_enumerate_keys(tok->slot->token, &keys, &n) != 0) {
		r = esc_error_ossl(ctx, ESC_ERR_PKCS11, "libp11 cannot list the keys of token '%s'", tok->label);
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (!keys[i].isPrivate || keys[i].id_len != key->id_len ||
		    memcmp(keys[i].id, key->id, key->id_len) != 0)
			continue;
		if ((pkey = PKCS11_get_private_key(&keys[i])) == NULL) {
			r = esc_error_ossl(ctx, ESC_ERR_PKCS11, "libp11 cannot use key '%s'", key->label);
			goto out;
		}
		*out = pkey;
		r = ESC_OK;
		goto out;
	}
	r = esc_error(ctx, ESC_ERR_KEY_NOT_FOUND, "libp11 does not see key '%s' on token '%s' (not logged in?)",
		      key->label, tok->label);
out:
	pthread_mutex_unlock(&tok->mod->p11_lock);
	return r;
}

enum esc_err
esc_token_key_uri(struct esc_ctx *ctx, const struct esc_token *tok, const struct esc_token_key *key, char **out)
{
	P11KitUri *u = NULL;
	CK_TOKEN_INFO *ti;
	CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE a[2] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_ID, (void *)key->id, key->id_len},
	};
	char *s = NULL;
	enum esc_err r;

	if ((u = p11_kit_uri_new()) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	ti = p11_kit_uri_get_token_info(u);
	memcpy(ti->label, tok->info.label, sizeof(ti->label));
	memcpy(ti->serialNumber, tok->info.serialNumber, sizeof(ti->serialNumber));
	memcpy(ti->manufacturerID, tok->info.manufacturerID, sizeof(ti->manufacturerID));
	memcpy(ti->model, tok->info.model, sizeof(ti->model));
	if (p11_kit_uri_set_attributes(u, a, ESC_ARRAY_LEN(a)) != P11_KIT_URI_OK ||
	    p11_kit_uri_format(u, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &s) != P11_KIT_URI_OK) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "cannot format the key's PKCS#11 URI");
		goto out;
	}
	*out = s;
	r = ESC_OK;
out:
	p11_kit_uri_free(u);
	return r;
}

/* Write cert as a token object with CKA_ID id and CKA_LABEL label; *h is its handle. */
static enum esc_err
create_cert_object(struct esc_ctx *ctx, struct esc_token *tok, const unsigned char *id, size_t idlen, const char *label,
		   X509 *cert, CK_OBJECT_HANDLE *h)
{
	CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
	CK_CERTIFICATE_TYPE ctype = CKC_X_509;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	unsigned char *der = NULL, *subj = NULL, *issuer = NULL, *serial = NULL;
	int dlen, slen, ilen, nlen;
	CK_RV rv;
	enum esc_err r;

	dlen = i2d_X509(cert, &der);
	slen = i2d_X509_NAME(X509_get_subject_name(cert), &subj);
	ilen = i2d_X509_NAME(X509_get_issuer_name(cert), &issuer);
	nlen = i2d_ASN1_INTEGER(X509_get_serialNumber(cert), &serial);
	if (dlen <= 0 || slen <= 0 || ilen <= 0 || nlen <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the certificate for the token");
		goto out;
	}
	{
		CK_ATTRIBUTE t[] = {
			{CKA_CLASS, &cls, sizeof(cls)},	      {CKA_CERTIFICATE_TYPE, &ctype, sizeof(ctype)},
			{CKA_TOKEN, &yes, sizeof(yes)},	      {CKA_PRIVATE, &no, sizeof(no)},
			{CKA_ID, (void *)id, idlen},	      {CKA_LABEL, (void *)label, strlen(label)},
			{CKA_VALUE, der, (CK_ULONG)dlen},     {CKA_SUBJECT, subj, (CK_ULONG)slen},
			{CKA_ISSUER, issuer, (CK_ULONG)ilen}, {CKA_SERIAL_NUMBER, serial, (CK_ULONG)nlen},
		};

		if ((rv = tok->fl->C_CreateObject(tok->session, t, ESC_ARRAY_LEN(t), h)) != CKR_OK) {
			r = ckr_error(ctx, rv, "storing the certificate on the token");
			goto out;
		}
	}
	r = ESC_OK;
out:
	OPENSSL_free(der);
	OPENSSL_free(subj);
	OPENSSL_free(issuer);
	OPENSSL_free(serial);
	return r;
}

enum esc_err
esc_token_store_cert(struct esc_ctx *ctx, struct esc_token *tok, const struct esc_token_key *key, X509 *cert)
{
	CK_OBJECT_HANDLE h;

	return create_cert_object(ctx, tok, key->id, key->id_len, key->label, cert, &h);
}

/* ---- Putting a software key on a token (a recovered key onto its owner's new card) -------------------------- */

/*
 * libp11 has PKCS11_store_private_key and PKCS11_store_certificate, but its
 * private key template is fixed: CKA_SIGN, CKA_DECRYPT and CKA_UNWRAP all
 * true, CKA_EXTRACTABLE left to the token's default, RSA keys only, and the
 * key's values copied through ordinary heap memory.  The recovered key needs
 * exact attributes (never CKA_SIGN unless the certificate allows signing,
 * never extractable), EC keys too, and its private values in secure memory
 * only, so it is written here with C_CreateObject on the module libp11
 * loaded.  (C_UnwrapKey would need a wrapping key already on the token,
 * which a new card does not have: the key would cross in clear anyway.)
 */

#define IMPORT_ID_LEN 20   /* SHA-1 */
#define IMPORT_INT_MAX 512 /* a big integer of an RSA key up to 4096 bits */

/* A big integer of a key in secure memory: PKCS#11's form, unsigned, most significant byte first. */
struct secint {
	unsigned char *p;
	size_t len;   /* of the value */
	size_t alloc; /* of p */
};

static void
secint_clear(struct secint *s)
{
	if (s->p != NULL)
		OPENSSL_secure_clear_free(s->p, s->alloc);
	memset(s, 0, sizeof(*s));
}

/*
 * Parameter name of params (from EVP_PKEY_todata) as a big integer in
 * secure memory: without leading zero bytes, or, with pad, exactly pad bytes.
 */
static enum esc_err
secint_of(struct esc_ctx *ctx, const OSSL_PARAM *params, const char *name, size_t pad, struct secint *out)
{
	static const int one = 1;
	const OSSL_PARAM *p = OSSL_PARAM_locate_const(params, name);
	const unsigned char *v;
	size_t n, i, skip = 0;

	if (p == NULL || p->data_type != OSSL_PARAM_UNSIGNED_INTEGER || p->data_size == 0 ||
	    p->data_size > IMPORT_INT_MAX)
		return esc_error(ctx, ESC_ERR_CRYPTO, "the key has no usable '%s' value", name);
	v = p->data;
	n = p->data_size;
	out->alloc = pad > n ? pad : n;
	if ((out->p = OPENSSL_secure_zalloc(out->alloc)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
	/* OSSL_PARAM integers are in the host's byte order; right-aligned in p, most significant byte first. */
	for (i = 0; i < n; i++)
		out->p[out->alloc - n + i] = *(const char *)&one ? v[n - 1 - i] : v[i];
	/* Leading zero bytes: all of them dropped, or as many as make the value pad bytes long. */
	while (skip + 1 < out->alloc && out->p[skip] == 0 && (pad == 0 || out->alloc - skip > pad))
		skip++;
	if (pad != 0 && out->alloc - skip != pad) {
		secint_clear(out);
		return esc_error(ctx, ESC_ERR_CRYPTO, "the key's '%s' value is too large", name);
	}
	memmove(out->p, out->p + skip, out->alloc - skip);
	out->len = out->alloc - skip;
	return ESC_OK;
}

/* Wipe every value of an EVP_PKEY_todata array (OSSL_PARAM_free does not wipe all of them), then free it. */
static void
params_clear_free(OSSL_PARAM *params)
{
	OSSL_PARAM *p;

	if (params == NULL)
		return;
	for (p = params; p->key != NULL; p++)
		if (p->data != NULL && p->data_size > 0)
			OPENSSL_cleanse(p->data, p->data_size);
	OSSL_PARAM_free(params);
}

/* CKA_ID of a key written with cert: SHA-1 of its subjectPublicKey (RFC 5280 4.2.1.2, method 1). */
static enum esc_err
import_id(struct esc_ctx *ctx, X509 *cert, unsigned char id[IMPORT_ID_LEN])
{
	unsigned int len = 0;

	if (X509_pubkey_digest(cert, EVP_sha1(), id, &len) != 1 || len != IMPORT_ID_LEN)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the certificate's public key");
	return ESC_OK;
}

/* The same CKA_ID from the public key alone, before there is a certificate. */
static enum esc_err
import_id_pub(struct esc_ctx *ctx, EVP_PKEY *pub, unsigned char id[IMPORT_ID_LEN])
{
	X509_PUBKEY *xp = NULL;
	const unsigned char *bits = NULL;
	int nbits = 0;
	unsigned int len = 0;
	enum esc_err r = ESC_OK;

	if (X509_PUBKEY_set(&xp, pub) != 1 || X509_PUBKEY_get0_param(NULL, &bits, &nbits, NULL, xp) != 1 ||
	    EVP_Digest(bits, (size_t)nbits, id, &len, EVP_sha1(), NULL) != 1 || len != IMPORT_ID_LEN)
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the public key");
	X509_PUBKEY_free(xp);
	return r;
}

/* The DER OID of an EC key's named curve (CKA_EC_PARAMS), malloc'ed. */
static enum esc_err
ec_params_der(struct esc_ctx *ctx, EVP_PKEY *pub, unsigned char **out, int *outlen)
{
	char group[64];
	size_t glen = 0;
	int nid, n;
	ASN1_OBJECT *obj;

	if (EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &glen) != 1 ||
	    ((nid = OBJ_sn2nid(group)) == NID_undef && (nid = EC_curve_nist2nid(group)) == NID_undef) ||
	    (obj = OBJ_nid2obj(nid)) == NULL || OBJ_length(obj) == 0) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_MECHANISM,
				 "the EC key is not on a named curve a token can be told about");
	}
	*out = NULL;
	if ((n = i2d_ASN1_OBJECT(obj, out)) <= 0)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the EC key's curve");
	*outlen = n;
	return ESC_OK;
}

/*
 * Can tok take the key pub (with id): logged in as the user on a writable
 * token, no object with its CKA_ID yet, and a mechanism that uses a key of
 * its type and size (RSA decryption, EC key derivation)?  With pub NULL,
 * only the first two.
 */
static enum esc_err
import_check(struct esc_ctx *ctx, struct esc_token *tok, EVP_PKEY *pub, const unsigned char id[IMPORT_ID_LEN])
{
	static const CK_MECHANISM_TYPE rsa_mechs[] = {CKM_RSA_PKCS_OAEP, CKM_RSA_PKCS, CKM_RSA_X_509};
	static const CK_MECHANISM_TYPE ec_mechs[] = {CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE};
	CK_TOKEN_INFO ti;
	CK_SESSION_INFO si;
	CK_ATTRIBUTE t[] = {{CKA_ID, (void *)id, IMPORT_ID_LEN}};
	CK_OBJECT_HANDLE found[MAX_FOUND];
	CK_ULONG nfound = 0;
	CK_RV rv;
	size_t i;
	enum esc_err r;
	char idhex[2 * IMPORT_ID_LEN + 1];
	int bits;

	if ((rv = tok->fl->C_GetTokenInfo(tok->slot_id, &ti)) != CKR_OK)
		return ckr_error(ctx, rv, "reading the token's state");
	if (ti.flags & CKF_WRITE_PROTECTED)
		return esc_error(ctx, ESC_ERR_PKCS11,
				 "token '%s' is write-protected (CKF_WRITE_PROTECTED): no key can be written to it",
				 tok->label);
	if ((rv = tok->fl->C_GetSessionInfo(tok->session, &si)) != CKR_OK)
		return ckr_error(ctx, rv, "reading the session's state");
	if (si.state != CKS_RW_USER_FUNCTIONS)
		return esc_error(ctx, ESC_ERR_PKCS11, "token '%s': %s", tok->label,
				 si.state == CKS_RO_USER_FUNCTIONS ? "the session is read-only"
								   : "not logged in as its user (log in first)");
	if (id == NULL)
		return ESC_OK;
	hex_id(idhex, sizeof(idhex), id, IMPORT_ID_LEN);
	/* Any class: a certificate or public key with this id belongs to this key already. */
	if ((r = find_objects(ctx, tok, t, ESC_ARRAY_LEN(t), found, &nfound)) != ESC_OK)
		return r;
	if (nfound > 0)
		return esc_error(ctx, ESC_ERR_EXISTS,
				 "token '%s' already holds %lu object(s) with CKA_ID %s, the id of this key: the key "
				 "is there already, or another object uses its id; nothing was written",
				 tok->label, (unsigned long)nfound, idhex);
	bits = EVP_PKEY_get_bits(pub);
	if (EVP_PKEY_is_a(pub, "RSA")) {
		for (i = 0; i < ESC_ARRAY_LEN(rsa_mechs); i++)
			if (require_mech(NULL, tok, rsa_mechs[i], CKF_DECRYPT, (unsigned long)bits, "") == ESC_OK)
				return ESC_OK;
		return esc_error(ctx, ESC_ERR_MECHANISM,
				 "token '%s' cannot use an RSA %d-bit key: it offers none of CKM_RSA_PKCS_OAEP, "
				 "CKM_RSA_PKCS and CKM_RSA_X_509 for decryption with keys of that size",
				 tok->label, bits);
	}
	if (EVP_PKEY_is_a(pub, "EC")) {
		for (i = 0; i < ESC_ARRAY_LEN(ec_mechs); i++)
			if (require_mech(NULL, tok, ec_mechs[i], CKF_DERIVE, 0, "") == ESC_OK)
				return ESC_OK;
		return esc_error(ctx, ESC_ERR_MECHANISM,
				 "token '%s' cannot use an EC key: it offers neither CKM_ECDH1_DERIVE nor "
				 "CKM_ECDH1_COFACTOR_DERIVE",
				 tok->label);
	}
	return esc_error(ctx, ESC_ERR_MECHANISM, "only RSA and EC keys are written to tokens, not %s keys",
			 EVP_PKEY_get0_type_name(pub) != NULL ? EVP_PKEY_get0_type_name(pub) : "these");
}

enum esc_err
esc_token_import_check(struct esc_ctx *ctx, struct esc_token *tok, X509 *cert)
{
	unsigned char id[IMPORT_ID_LEN];
	enum esc_err r;

	if ((r = import_id(ctx, cert, id)) != ESC_OK)
		return r;
	if (X509_get0_pubkey(cert) == NULL)
		return esc_error_ossl(ctx, ESC_ERR_BAD_INPUT, "the certificate has no usable public key");
	return import_check(ctx, tok, X509_get0_pubkey(cert), id);
}

enum esc_err
esc_token_import_check_key(struct esc_ctx *ctx, struct esc_token *tok, EVP_PKEY *pub)
{
	unsigned char id[IMPORT_ID_LEN];
	enum esc_err r;

	if (pub == NULL)
		return import_check(ctx, tok, NULL, NULL);
	if ((r = import_id_pub(ctx, pub, id)) != ESC_OK)
		return r;
	return import_check(ctx, tok, pub, id);
}

/* C_CreateObject's answers to a template the token cannot hold, told apart from other failures. */
static enum esc_err
create_error(struct esc_ctx *ctx, struct esc_token *tok, CK_RV rv, const char *what)
{
	switch (rv) {
	case CKR_ATTRIBUTE_TYPE_INVALID:
	case CKR_ATTRIBUTE_VALUE_INVALID:
	case CKR_TEMPLATE_INCONSISTENT:
	case CKR_TEMPLATE_INCOMPLETE:
	case CKR_KEY_SIZE_RANGE:
	case CKR_CURVE_NOT_SUPPORTED:
	case CKR_DOMAIN_PARAMS_INVALID:
		return esc_error(ctx, ESC_ERR_MECHANISM, "token '%s' cannot hold this key: %s failed: %s", tok->label,
				 what, esc_ckr_name(rv));
	default:
		return ckr_error(ctx, rv, what);
	}
}

/* The attributes both halves share; returns how many were set in a[]. */
static CK_ULONG
common_attrs(CK_ATTRIBUTE *a, const CK_OBJECT_CLASS *cls, const CK_KEY_TYPE *kt, const CK_BBOOL *yes,
	     const unsigned char *id, const char *label, const unsigned char *subj, int slen)
{
	CK_ULONG n = 0;

	a[n++] = (CK_ATTRIBUTE){CKA_CLASS, (void *)cls, sizeof(*cls)};
	a[n++] = (CK_ATTRIBUTE){CKA_KEY_TYPE, (void *)kt, sizeof(*kt)};
	a[n++] = (CK_ATTRIBUTE){CKA_TOKEN, (void *)yes, sizeof(*yes)};
	a[n++] = (CK_ATTRIBUTE){CKA_ID, (void *)id, IMPORT_ID_LEN};
	a[n++] = (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	a[n++] = (CK_ATTRIBUTE){CKA_SUBJECT, (void *)subj, (CK_ULONG)slen};
	return n;
}

enum esc_err
esc_token_import_key(struct esc_ctx *ctx, struct esc_token *tok, EVP_PKEY *key, X509 *cert, const char *label,
		     struct esc_token_key **out)
{
	static const char *const rsa_names[] = {
		OSSL_PKEY_PARAM_RSA_N,	       OSSL_PKEY_PARAM_RSA_E,
		OSSL_PKEY_PARAM_RSA_D,	       OSSL_PKEY_PARAM_RSA_FACTOR1,
		OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
		OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
	};
	static const CK_ATTRIBUTE_TYPE rsa_attrs[] = {
		CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1,
		CKA_PRIME_2, CKA_EXPONENT_1,	  CKA_EXPONENT_2,	CKA_COEFFICIENT,
	};
	struct esc_token_key *k = NULL;
	struct secint v[ESC_ARRAY_LEN(rsa_names)];
	OSSL_PARAM *params = NULL;
	CK_OBJECT_CLASS priv_cls = CKO_PRIVATE_KEY, pub_cls = CKO_PUBLIC_KEY;
	CK_KEY_TYPE kt;
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE, sign, is_rsa_key;
	CK_ATTRIBUTE priv[32], pub[16];
	CK_ULONG npriv, npub;
	CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE, hpub = CK_INVALID_HANDLE, hcert = CK_INVALID_HANDLE;
	unsigned char id[IMPORT_ID_LEN], *subj = NULL, *ecparams = NULL, *ecpoint = NULL;
	const void *point = NULL;
	ASN1_OCTET_STRING *os = NULL;
	size_t llen = label != NULL ? strlen(label) : 0, i, pointlen = 0;
	uint32_t ku = X509_get_key_usage(cert);
	int slen, eclen = 0, ecpointlen = 0;
	CK_RV rv;
	enum esc_err r;

	memset(v, 0, sizeof(v));
	if (llen == 0 || llen > 128)
		return esc_error(ctx, ESC_ERR_USAGE, "key label must be 1..128 bytes");
	if (EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_MISMATCH, "the key does not match the certificate written with it");
	}
	if ((r = import_id(ctx, cert, id)) != ESC_OK || (r = import_check(ctx, tok, key, id)) != ESC_OK)
		return r;
	is_rsa_key = EVP_PKEY_is_a(key, "RSA") ? CK_TRUE : CK_FALSE;
	kt = is_rsa_key ? CKK_RSA : CKK_EC;
	/* Signing only where the certificate says so: no keyUsage extension (ku all ones) does not. */
	sign = ku != UINT32_MAX && (ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION)) != 0 ? CK_TRUE : CK_FALSE;
	if ((slen = i2d_X509_NAME(X509_get_subject_name(cert), &subj)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the certificate's subject");
		goto out;
	}
	/* Every private value goes from the key to secure memory, and is wiped wherever else it was. */
	if (EVP_PKEY_todata(key, EVP_PKEY_KEYPAIR, &params) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot read the key's values");
		goto out;
	}
	npriv = common_attrs(priv, &priv_cls, &kt, &yes, id, label, subj, slen);
	npub = common_attrs(pub, &pub_cls, &kt, &yes, id, label, subj, slen);
	priv[npriv++] = (CK_ATTRIBUTE){CKA_PRIVATE, &yes, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &no, sizeof(no)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SIGN, &sign, sizeof(sign)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_SIGN_RECOVER, &no, sizeof(no)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_DECRYPT, is_rsa_key ? &yes : &no, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_UNWRAP, is_rsa_key ? &yes : &no, sizeof(yes)};
	priv[npriv++] = (CK_ATTRIBUTE){CKA_DERIVE, is_rsa_key ? &no : &yes, sizeof(yes)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_PRIVATE, &no, sizeof(no)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_VERIFY, &sign, sizeof(sign)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_ENCRYPT, is_rsa_key ? &yes : &no, sizeof(yes)};
	pub[npub++] = (CK_ATTRIBUTE){CKA_WRAP, is_rsa_key ? &yes : &no, sizeof(yes)};
	if (is_rsa_key) {
		/* Two primes only: a multi-prime key has further factors PKCS#11 cannot carry. */
		if (OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_FACTOR3) != NULL) {
			r = esc_error(ctx, ESC_ERR_MECHANISM, "a multi-prime RSA key cannot be written to a token");
			goto out;
		}
		for (i = 0; i < ESC_ARRAY_LEN(rsa_names); i++) {
			if ((r = secint_of(ctx, params, rsa_names[i], 0, &v[i])) != ESC_OK)
				goto out;
			priv[npriv++] = (CK_ATTRIBUTE){rsa_attrs[i], v[i].p, v[i].len};
		}
		pub[npub++] = (CK_ATTRIBUTE){CKA_MODULUS, v[0].p, v[0].len};
		pub[npub++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, v[1].p, v[1].len};
	} else {
		const OSSL_PARAM *pp = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PUB_KEY);

		if ((r = ec_params_der(ctx, key, &ecparams, &eclen)) != ESC_OK ||
		    (r = secint_of(ctx, params, OSSL_PKEY_PARAM_PRIV_KEY, ((size_t)EVP_PKEY_get_bits(key) + 7) / 8,
				   &v[0])) != ESC_OK)
			goto out;
		/* CKA_EC_POINT: the uncompressed point in a DER OCTET STRING (PKCS#11 2.40). */
		if (pp == NULL || OSSL_PARAM_get_octet_string_ptr(pp, &point, &pointlen) != 1 ||
		    (os = ASN1_OCTET_STRING_new()) == NULL || ASN1_OCTET_STRING_set(os, point, (int)pointlen) != 1 ||
		    (ecpointlen = i2d_ASN1_OCTET_STRING(os, &ecpoint)) <= 0) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode the EC key's public point");
			goto out;
		}
		priv[npriv++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, ecparams, (CK_ULONG)eclen};
		priv[npriv++] = (CK_ATTRIBUTE){CKA_VALUE, v[0].p, v[0].len};
		pub[npub++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, ecparams, (CK_ULONG)eclen};
		pub[npub++] = (CK_ATTRIBUTE){CKA_EC_POINT, ecpoint, (CK_ULONG)ecpointlen};
	}
	/* Private key first: if the token refuses it, nothing at all was written. */
	if ((rv = tok->fl->C_CreateObject(tok->session, priv, npriv, &hpriv)) != CKR_OK) {
		hpriv = CK_INVALID_HANDLE;
		r = create_error(ctx, tok, rv, "writing the private key");
		goto out;
	}
	if ((rv = tok->fl->C_CreateObject(tok->session, pub, npub, &hpub)) != CKR_OK) {
		hpub = CK_INVALID_HANDLE;
		r = create_error(ctx, tok, rv, "writing the public key");
		goto out;
	}
	if ((r = create_cert_object(ctx, tok, id, IMPORT_ID_LEN, label, cert, &hcert)) != ESC_OK) {
		hcert = CK_INVALID_HANDLE;
		goto out;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = load_key_attrs(ctx, tok, hpriv, k)) != ESC_OK)
		goto out;
	k->pub = hpub;
	k->cert = hcert;
	*out = k;
	k = NULL; /* transferred */
	hpriv = hpub = hcert = CK_INVALID_HANDLE;
	r = ESC_OK;
out:
	/* Nothing half-written: whatever was created of a failed write goes again. */
	if (hcert != CK_INVALID_HANDLE)
		(void)tok->fl->C_DestroyObject(tok->session, hcert);
	if (hpub != CK_INVALID_HANDLE)
		(void)tok->fl->C_DestroyObject(tok->session, hpub);
	if (hpriv != CK_INVALID_HANDLE)
		(void)tok->fl->C_DestroyObject(tok->session, hpriv);
	for (i = 0; i < ESC_ARRAY_LEN(v); i++)
		secint_clear(&v[i]);
	params_clear_free(params);
	ASN1_OCTET_STRING_free(os);
	OPENSSL_free(ecpoint);
	OPENSSL_free(ecparams);
	OPENSSL_free(subj);
	free(k);
	return r;
}

void
esc_token_default_label(X509 *cert, const char *fallback, char *buf, size_t len)
{
	X509_NAME *n = X509_get_subject_name(cert);
	int i = X509_NAME_get_index_by_NID(n, NID_commonName, -1), ok = 1;
	unsigned char *utf8 = NULL;
	int ulen, k;

	snprintf(buf, len, "%s", fallback);
	if (len < 2 || i < 0 ||
	    (ulen = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i)))) <= 0) {
		ERR_clear_error();
		return;
	}
	/* Cut at a character boundary; a name with control characters is not used. */
	if ((size_t)ulen >= len) {
		ulen = (int)len - 1;
		while (ulen > 0 && (utf8[ulen] & 0xc0) == 0x80)
			ulen--;
	}
	utf8[ulen] = '\0';
	for (k = 0; k < ulen; k++)
		if (utf8[k] < 0x20 || utf8[k] == 0x7f)
			ok = 0;
	if (ulen > 0 && ok)
		snprintf(buf, len, "%s", (const char *)utf8);
	OPENSSL_free(utf8);
}
