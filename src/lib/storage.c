/*
 * Storage key generations (storage.h): rotation, the re-seal job, the list.
 *
 * The storage key never leaves the CA token; only its certificate is read
 * from the database.  Rotation adds a key and retires the old one in one
 * transaction; re-sealing opens a record's outer layer with its
 * generation's key and seals the same EscrowRecord to the current
 * certificate, row by row inside one short transaction per batch.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/envelope.h>
#include <p11escrow/storage.h>

#include "archive_internal.h"
#include "internal.h"
#include "store_internal.h"

#define MAX_GENERATIONS 8 /* distinct earlier generations one batch keeps keys open for */
#define STORAGE_OU "Key Archival Storage"

/*
 * Fault injection for the tests (storage_rotation.sh), only in builds
 * configured with -Dtest_hooks=true, as enroll.c's: P11ESCROW_FAULT_KILL
 * names a point where the process SIGKILLs itself ("reseal-before-commit":
 * inside a batch's transaction, every row updated), P11ESCROW_FAULT_FAIL
 * one where the operation fails as a database error would
 * ("rotate-before-commit": the new key is on the token, nothing committed).
 */
#ifdef ESC_TEST_HOOKS
static void
fault_kill(const char *point)
{
	const char *f = getenv("P11ESCROW_FAULT_KILL");

	if (f != NULL && strcmp(f, point) == 0)
		raise(SIGKILL);
}

static int
fault_fail(const char *point)
{
	const char *f = getenv("P11ESCROW_FAULT_FAIL");

	return f != NULL && strcmp(f, point) == 0;
}
#else
static void
fault_kill(const char *point)
{
	(void)point;
}

static int
fault_fail(const char *point)
{
	(void)point;
	return 0;
}
#endif

static void
hex_of(const unsigned char *in, size_t n, char *out, size_t outlen)
{
	size_t i;

	out[0] = '\0';
	for (i = 0; i < n && 2 * i + 2 < outlen; i++)
		snprintf(out + 2 * i, 3, "%02x", in[i]);
}

/* The actor and roles an audit event names: the account, or the holder of the CA token PIN. */
static void
actor_of(const struct esc_account *by, const char **actor, char *roles, size_t len)
{
	if (by == NULL) {
		*actor = "ca-token";
		snprintf(roles, len, "ca-admin");
		return;
	}
	*actor = esc_account_name(by);
	esc_roles_format(esc_account_roles(by), roles, len);
}

/* A refusal or failure after the fact (esc_audit_outcome), for by or the PIN holder. */
static void
audit_failure(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by, const char *action,
	      const char *object, enum esc_err r)
{
	char roles[64];
	const char *actor;

	actor_of(by, &actor, roles, sizeof(roles));
	esc_audit_outcome(ctx, st, actor, roles, action, object, r);
}

/* ---- the list ------------------------------------------------------------------------------------------------- */

/*
 * Every generation, newest first: the current key (token_keys) and the
 * earlier ones, each with the records sealed to it and its times in UTC.
 */
static const char list_sql[] =
	"SELECT t.generation, true, t.key_type, t.key_label, encode(t.key_id, 'hex'), t.token_label, t.uri, "
	"t.certificate, to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'), '', '', "
	"(SELECT count(*) FROM archive_records a WHERE a.storage_generation = t.generation) "
	"FROM token_keys t WHERE t.role = 'storage' "
	"UNION ALL "
	"SELECT r.generation, false, r.key_type, r.key_label, encode(r.key_id, 'hex'), r.token_label, r.uri, "
	"r.certificate, to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'), "
	"to_char(r.retired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"Z\"'), r.retired_by, "
	"(SELECT count(*) FROM archive_records a WHERE a.storage_generation = r.generation) "
	"FROM retired_storage_keys r ORDER BY 1 DESC";

enum esc_err
esc_storage_list(struct esc_ctx *ctx, struct esc_store *st, struct esc_storage_gen **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_storage_gen *g = NULL;
	int i, rows;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, list_sql, 0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if (rows == 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "no storage key is recorded: run 'p11escrow setup'");
		goto out;
	}
	if ((g = calloc((size_t)rows, sizeof(*g))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		X509 *x = esc_store_cert_from_text(PQgetvalue(res, i, 7));

		if ((r = esc_store_get_int(ctx, res, i, 0, &g[i].generation)) != ESC_OK)
			goto out;
		g[i].current = strcmp(PQgetvalue(res, i, 1), "t") == 0;
		snprintf(g[i].key_type, sizeof(g[i].key_type), "%s", PQgetvalue(res, i, 2));
		snprintf(g[i].key_label, sizeof(g[i].key_label), "%s", PQgetvalue(res, i, 3));
		snprintf(g[i].key_id, sizeof(g[i].key_id), "%s", PQgetvalue(res, i, 4));
		snprintf(g[i].token_label, sizeof(g[i].token_label), "%s", PQgetvalue(res, i, 5));
		snprintf(g[i].uri, sizeof(g[i].uri), "%s", PQgetvalue(res, i, 6));
		if (x != NULL)
			esc_cert_fingerprint(x, g[i].fingerprint);
		else
			snprintf(g[i].fingerprint, sizeof(g[i].fingerprint), "(no certificate)");
		X509_free(x);
		ERR_clear_error();
		snprintf(g[i].created, sizeof(g[i].created), "%s", PQgetvalue(res, i, 8));
		snprintf(g[i].retired, sizeof(g[i].retired), "%s", PQgetvalue(res, i, 9));
		snprintf(g[i].retired_by, sizeof(g[i].retired_by), "%s", PQgetvalue(res, i, 10));
		g[i].records = strtoll(PQgetvalue(res, i, 11), NULL, 10);
	}
	*out = g;
	*n = (size_t)rows;
	g = NULL; /* transferred */
	r = ESC_OK;
out:
	free(g);
	PQclear(res);
	return r;
}

enum esc_err
esc_storage_remaining(struct esc_ctx *ctx, struct esc_store *st, long long *n)
{
	PGresult *res = NULL;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st,
				"SELECT count(*) FROM archive_records WHERE storage_generation < (SELECT generation "
				"FROM token_keys WHERE role = 'storage')",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	*n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return ESC_OK;
}

/* ---- rotation ------------------------------------------------------------------------------------------------- */

/* The new key and certificate, made before the transaction; what the transaction writes. */
struct rotation {
	const struct esc_account *by;
	struct esc_token *tok;
	struct esc_token_key *key;
	EVP_PKEY *pub;
	X509 *cert;
	int from;
	char *uri;
	struct esc_storage_rotation info;
};

/* The current storage row's generation and key type. */
static enum esc_err
current_row(struct esc_ctx *ctx, struct esc_store *st, int *generation, char *type, size_t len)
{
	PGresult *res = NULL;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT generation, key_type FROM token_keys WHERE role = 'storage'", 0, NULL,
				NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1)
		r = esc_error(ctx, ESC_ERR_STATE, "no storage key is recorded: run 'p11escrow setup'");
	else if ((r = esc_store_get_int(ctx, res, 0, 0, generation)) == ESC_OK)
		snprintf(type, len, "%s", PQgetvalue(res, 0, 1));
	PQclear(res);
	return r;
}

/* The storage certificate's name: the CA's plus the OU setup gives it. */
static enum esc_err
storage_cert(struct esc_ctx *ctx, X509 *ca_cert, EVP_PKEY *signer, EVP_PKEY *pub, int days, X509 **out)
{
	X509_NAME *name = X509_NAME_dup(X509_get_subject_name(ca_cert));
	enum esc_err r;

	if (name == NULL ||
	    !X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_UTF8, (const unsigned char *)STORAGE_OU, -1, -1, 0)) {
		X509_NAME_free(name);
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the storage certificate's name");
	}
	r = esc_ca_issue(ctx, ca_cert, signer, pub, name, days, ESC_PROFILE_ENCRYPTION, out);
	X509_NAME_free(name);
	return r;
}

/*
 * The transaction: lock, move the current row to retired_storage_keys,
 * write the new key into it, record the certificate, audit, commit.
 * *committing is set once COMMIT was sent: a lost connection from then on
 * leaves the outcome unknown.
 */
static enum esc_err
rotate_tx(struct esc_ctx *ctx, struct esc_store *st, struct rotation *rot, int *committing)
{
	PGresult *res = NULL;
	unsigned char *pub = NULL, *cder = NULL;
	const unsigned char *kid;
	size_t kidlen;
	char from[16], to[16], roles[64], details[512];
	const char *v[10], *actor;
	int len[10] = {0}, fmt[10] = {0}, plen, clen, gen = 0;
	enum esc_err r;

	if ((plen = i2d_PUBKEY(rot->pub, &pub)) <= 0 || (clen = i2d_X509(rot->cert, &cder)) <= 0) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot DER-encode the new storage key");
		goto out;
	}
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		goto out;
	/*
	 * Before the snapshot: wait for archivals that read the current
	 * certificate and hold their insert open, and keep new inserts out
	 * until this commits; each of those then reads the new generation
	 * (sql/012's trigger).  Milliseconds: the keys are made already.
	 */
	if ((r = esc_store_exec(ctx, st, "LOCK TABLE archive_records IN SHARE MODE", 0, NULL, NULL, NULL, NULL)) !=
		    ESC_OK ||
	    (r = esc_store_exec(ctx, st, "SELECT generation FROM token_keys WHERE role = 'storage' FOR UPDATE", 0, NULL,
				NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1 || esc_store_get_int(ctx, res, 0, 0, &gen) != ESC_OK || gen != rot->from) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "the storage key was rotated meanwhile (generation %d, not %d): nothing was changed", gen,
			      rot->from);
		goto out;
	}
	actor_of(rot->by, &actor, roles, sizeof(roles));
	snprintf(from, sizeof(from), "%d", rot->from);
	snprintf(to, sizeof(to), "%d", rot->from + 1);
	v[0] = actor;
	if ((r = esc_store_exec(ctx, st,
				"INSERT INTO retired_storage_keys (generation, token_label, token_serial, key_id, "
				"key_label, key_type, uri, public_key, certificate, generated, created_at, retired_by) "
				"SELECT generation, token_label, token_serial, key_id, key_label, key_type, uri, "
				"public_key, certificate, generated, created_at, $1 FROM token_keys WHERE role = "
				"'storage'",
				1, v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	kid = esc_token_key_id(rot->key, &kidlen);
	v[0] = esc_token_label(rot->tok);
	v[1] = esc_token_serial(rot->tok);
	v[2] = (const char *)kid;
	len[2] = (int)kidlen;
	fmt[2] = 1;
	v[3] = esc_token_key_label(rot->key);
	v[4] = esc_token_key_type_name(rot->key);
	v[5] = rot->uri;
	v[6] = (const char *)pub;
	len[6] = plen;
	fmt[6] = 1;
	v[7] = (const char *)cder;
	len[7] = clen;
	fmt[7] = 1;
	v[8] = from;
	v[9] = to;
	if ((r = esc_store_exec(
		     ctx, st,
		     "UPDATE token_keys SET token_label = $1, token_serial = $2, key_id = $3, key_label = $4, "
		     "key_type = $5, uri = $6, public_key = $7, certificate = $8, generated = true, "
		     "created_at = now(), generation = $10 WHERE role = 'storage' AND generation = $9",
		     10, v, len, fmt, NULL)) != ESC_OK ||
	    (r = esc_store_insert_cert(ctx, st, rot->cert, "storage", NULL)) != ESC_OK)
		goto out;
	snprintf(details, sizeof(details),
		 "storage key generation %d -> %d: %s key '%s' id %s on token '%s', certificate serial %s %s; "
		 "records of generation %d stay sealed to the earlier key until 'p11escrow rewrap --storage' "
		 "re-seals them",
		 rot->from, rot->from + 1, rot->info.key_type, rot->info.key_label, rot->info.key_id,
		 esc_token_label(rot->tok), rot->info.serial, rot->info.fingerprint, rot->from);
	{
		struct esc_audit_event ev = {actor, roles, "storage-key.rotate", to, "ok", details};

		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	if (fault_fail("rotate-before-commit")) {
		r = esc_error(ctx, ESC_ERR_DB, "fault injected before the rotation's commit (P11ESCROW_FAULT_FAIL)");
		goto out;
	}
	*committing = 1;
	if ((r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	esc_store_rollback(st);
	PQclear(res);
	OPENSSL_free(pub);
	OPENSSL_free(cder);
	return r;
}

enum esc_err
esc_storage_rotate(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by, struct esc_token *tok,
		   X509 *ca_cert, EVP_PKEY *signer, const char *type, int days, struct esc_storage_rotation *out)
{
	struct esc_store_retry t = {0};
	struct rotation rot;
	enum esc_key_type kt;
	char current_type[32], label[64], *serial = NULL;
	int committing = 0;
	enum esc_err r;

	memset(&rot, 0, sizeof(rot));
	rot.by = by;
	rot.tok = tok;
	if (st == NULL || tok == NULL || ca_cert == NULL || signer == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_storage_rotate: NULL argument");
	if ((r = esc_account_require(ctx, by, ESC_ROLE_ADMIN)) != ESC_OK) {
		audit_failure(ctx, st, by, "storage-key.rotate", "storage", r);
		return r;
	}
	if (days < 1 || days > 36500)
		return esc_error(ctx, ESC_ERR_USAGE, "the storage certificate's validity must be 1..36500 days");
	/* Everything that can fail without side effects first: the token is left as it was. */
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK ||
	    (r = current_row(ctx, st, &rot.from, current_type, sizeof(current_type))) != ESC_OK ||
	    (r = esc_key_type_parse(ctx, type != NULL ? type : current_type, &kt)) != ESC_OK ||
	    (r = esc_token_require_key_mechanisms(ctx, tok, kt, ESC_KEY_USE_DECRYPT)) != ESC_OK)
		goto fail;
	snprintf(label, sizeof(label), "p11escrow storage key %d", rot.from + 1);
	if ((r = esc_token_generate_key(ctx, tok, kt, ESC_KEY_USE_DECRYPT, label, &rot.key)) != ESC_OK)
		goto fail;
	/* From here on the key exists: every failure path below removes it again. */
	if ((r = esc_token_key_public(ctx, tok, rot.key, &rot.pub)) != ESC_OK ||
	    (r = esc_token_key_check_protected(ctx, tok, rot.key)) != ESC_OK ||
	    (r = storage_cert(ctx, ca_cert, signer, rot.pub, days, &rot.cert)) != ESC_OK ||
	    (r = esc_token_key_uri(ctx, tok, rot.key, &rot.uri)) != ESC_OK)
		goto fail;
	if (!esc_cert_matches_key(rot.cert, rot.pub)) {
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the new storage certificate does not certify the new key");
		goto fail;
	}
	if ((serial = esc_cert_serial_hex(rot.cert)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto fail;
	}
	{
		size_t idlen;
		const unsigned char *id = esc_token_key_id(rot.key, &idlen);

		rot.info.from = rot.from;
		rot.info.to = rot.from + 1;
		snprintf(rot.info.key_type, sizeof(rot.info.key_type), "%s", esc_token_key_type_name(rot.key));
		snprintf(rot.info.key_label, sizeof(rot.info.key_label), "%s", esc_token_key_label(rot.key));
		hex_of(id, idlen, rot.info.key_id, sizeof(rot.info.key_id));
		snprintf(rot.info.uri, sizeof(rot.info.uri), "%s", rot.uri);
		snprintf(rot.info.serial, sizeof(rot.info.serial), "%s", serial);
		esc_cert_fingerprint(rot.cert, rot.info.fingerprint);
	}
	do {
		committing = 0;
		r = rotate_tx(ctx, st, &rot, &committing);
	} while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		goto fail;
	*out = rot.info;
	r = ESC_OK;
	goto out;
fail:
	if (rot.key != NULL) {
		if (committing && r == ESC_ERR_DB_CONNECT) {
			/* COMMIT was sent and the answer lost: the database may hold this key as current now. */
			esc_log(ctx, ESC_LOG_ERROR,
				"the connection was lost while the rotation committed: the new storage key '%s' is "
				"kept on the token; check 'p11escrow storage-key list' before anything else",
				label);
		} else {
			char saved[ESC_ERRMSG_MAX];

			snprintf(saved, sizeof(saved), "%s", esc_ctx_errmsg(ctx));
			if (esc_token_destroy_key(ctx, tok, rot.key) != ESC_OK)
				esc_log(ctx, ESC_LOG_ERROR,
					"could not remove the new storage key '%s' from the token: %s", label,
					esc_ctx_errmsg(ctx));
			esc_error_set(ctx, r, "%s", saved);
		}
	}
	audit_failure(ctx, st, by, "storage-key.rotate", "storage", r);
out:
	free(serial);
	free(rot.uri);
	X509_free(rot.cert);
	EVP_PKEY_free(rot.pub);
	esc_token_key_free(rot.key);
	return r;
}

/* ---- re-sealing ----------------------------------------------------------------------------------------------- */

/* A generation's key on the token, opened once per batch (or why it cannot be). */
struct gen_key {
	int generation;
	enum esc_err error; /* ESC_OK: cert and pkey are there */
	char why[256];
	X509 *cert;
	EVP_PKEY *pkey;
};

struct reseal {
	struct esc_ctx *ctx;
	struct esc_store *st;
	struct esc_token *tok;
	struct gen_key gens[MAX_GENERATIONS];
	size_t ngens;
	X509 *current;
	int to;
};

static void
reseal_free(struct reseal *rs)
{
	size_t i;

	for (i = 0; i < rs->ngens; i++) {
		X509_free(rs->gens[i].cert);
		EVP_PKEY_free(rs->gens[i].pkey);
	}
	rs->ngens = 0;
	X509_free(rs->current);
	rs->current = NULL;
}

/* The key of generation g, opened on the token the first time a batch meets it. */
static struct gen_key *
gen_key(struct reseal *rs, int g)
{
	struct esc_token_key *key = NULL;
	struct gen_key *k;
	char uri[1024];
	size_t i;

	for (i = 0; i < rs->ngens; i++)
		if (rs->gens[i].generation == g)
			return &rs->gens[i];
	if (rs->ngens == MAX_GENERATIONS)
		return NULL;
	k = &rs->gens[rs->ngens++];
	memset(k, 0, sizeof(*k));
	k->generation = g;
	if ((k->error = esc_archive_storage_key(rs->ctx, rs->st, g, uri, sizeof(uri), &k->cert)) == ESC_OK &&
	    (k->error = esc_token_find_key(rs->ctx, rs->tok, uri, &key)) == ESC_OK)
		k->error = esc_token_key_private(rs->ctx, rs->tok, key, &k->pkey);
	if (k->error != ESC_OK)
		snprintf(k->why, sizeof(k->why), "storage key generation %d: %s", g, esc_ctx_errmsg(rs->ctx));
	esc_token_key_free(key);
	return k;
}

enum esc_err
esc_storage_current(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *tok, X509 **cert, int *generation)
{
	PGresult *res = NULL;
	struct esc_token_key *key = NULL;
	EVP_PKEY *pub = NULL;
	X509 *ca = NULL, *cur = NULL;
	int gen = 0;
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT certificate, generation, uri FROM token_keys WHERE role = 'storage'",
				0, NULL, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		r = esc_error(ctx, ESC_ERR_STATE, "no storage key is recorded: run 'p11escrow setup'");
		goto out;
	}
	if ((cur = esc_store_cert_cached(st, PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the stored storage certificate is not a DER certificate");
		goto out;
	}
	if ((r = esc_store_get_int(ctx, res, 0, 1, &gen)) != ESC_OK ||
	    (r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK)
		goto out;
	if (!esc_cert_issued_by(cur, ca)) {
		r = esc_error(ctx, ESC_ERR_MISMATCH,
			      "the current storage certificate was not issued by this CA: nothing is re-sealed to it");
		goto out;
	}
	if ((r = esc_token_find_key(ctx, tok, PQgetvalue(res, 0, 2), &key)) != ESC_OK ||
	    (r = esc_token_key_public(ctx, tok, key, &pub)) != ESC_OK)
		goto out;
	if (!esc_cert_matches_key(cur, pub)) {
		r = esc_error(ctx, ESC_ERR_MISMATCH,
			      "the current storage key on token '%s' is not the key of the storage certificate: "
			      "nothing is re-sealed to it",
			      esc_token_label(tok));
		goto out;
	}
	*cert = cur;
	cur = NULL; /* transferred */
	*generation = gen;
	r = ESC_OK;
out:
	ERR_clear_error();
	X509_free(cur);
	EVP_PKEY_free(pub);
	esc_token_key_free(key);
	X509_free(ca);
	PQclear(res);
	return r;
}

/*
 * The current storage certificate and generation, checked before anything
 * is sealed to it: issued by this CA, and its key on this token.  A
 * database writer who put another certificate in token_keys would
 * otherwise have every record moved to a key of theirs.
 */
static enum esc_err
load_current(struct reseal *rs)
{
	return esc_storage_current(rs->ctx, rs->st, rs->tok, &rs->current, &rs->to);
}

/* A failure that is the record's (damaged, moved, of an unknown key), not the job's. */
static int
damaged(enum esc_err e)
{
	return e == ESC_ERR_TAMPERED || e == ESC_ERR_NOT_RECIPIENT || e == ESC_ERR_BAD_INPUT || e == ESC_ERR_CRYPTO ||
	       e == ESC_ERR_KEY_NOT_FOUND || e == ESC_ERR_MISMATCH;
}

/*
 * Re-seal row i of res (columns: record hex, generation, ESC_ARCHIVE_ROW_SQL):
 * ESC_OK, a damaged-record error (*skip says why; nothing written) or the
 * job's failure.
 */
static enum esc_err
reseal_row(struct reseal *rs, PGresult *res, int i, struct esc_reseal_skip *skip, int *generation)
{
	struct esc_ctx *ctx = rs->ctx;
	struct esc_archive_row row;
	struct esc_archive_fields truth;
	struct gen_key *k;
	unsigned char *outer = NULL, *content = NULL, *inner = NULL, *sealed = NULL;
	size_t contentlen = 0, innerlen = 0, sealedlen = 0;
	long outerlen = 0;
	char from[16], to[16];
	const char *v[4];
	int len[4] = {0}, fmt[4] = {0};
	PGresult *up = NULL;
	enum esc_err r;

	memset(&truth, 0, sizeof(truth));
	esc_archive_row_get(res, i, 2, &row);
	if ((r = esc_store_get_int(ctx, res, i, 1, generation)) != ESC_OK)
		goto out;
	/* The checks of a recovery: the row is its certificate's, the sealed record this row's. */
	if ((r = esc_archive_row_check(ctx, &row, NULL, &truth)) != ESC_OK)
		goto out;
	if ((k = gen_key(rs, *generation)) == NULL) {
		r = esc_error(ctx, ESC_ERR_STATE, "one batch meets more than %d storage key generations",
			      MAX_GENERATIONS);
		goto out;
	}
	if (k->error != ESC_OK) {
		r = esc_error(ctx, k->error, "%s", k->why);
		goto out;
	}
	if ((outer = OPENSSL_hexstr2buf(PQgetvalue(res, i, 0), &outerlen)) == NULL) {
		ERR_clear_error();
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "record %s is unreadable", row.id);
		goto out;
	}
	if ((r = esc_envelope_open(ctx, outer, (size_t)outerlen, k->pkey, k->cert, &content, &contentlen)) != ESC_OK ||
	    (r = esc_record_parse(ctx, content, contentlen, row.id, truth.cert_sha256, &inner, &innerlen, NULL)) !=
		    ESC_OK)
		goto out;
	/* The same EscrowRecord, byte for byte, to the current key: id and certificate stay bound. */
	if ((r = esc_envelope_seal(ctx, content, contentlen, &rs->current, NULL, 1, &sealed, &sealedlen)) != ESC_OK)
		goto out;
	snprintf(from, sizeof(from), "%d", *generation);
	snprintf(to, sizeof(to), "%d", rs->to);
	v[0] = row.id;
	v[1] = (const char *)sealed;
	len[1] = (int)sealedlen;
	fmt[1] = 1;
	v[2] = to;
	v[3] = from;
	if ((r = esc_store_exec(ctx, rs->st,
				"UPDATE archive_records SET record = $2, storage_generation = $3 WHERE id = $1::uuid "
				"AND storage_generation = $4",
				4, v, len, fmt, &up)) != ESC_OK)
		goto out;
	if (strcmp(PQcmdTuples(up), "1") != 0) {
		/* The row is locked by this transaction: it cannot have changed. */
		r = esc_error(ctx, ESC_ERR_INTERNAL, "record %s changed under its row lock", row.id);
		goto out;
	}
	r = ESC_OK;
out:
	if (r != ESC_OK && damaged(r)) {
		snprintf(skip->id, sizeof(skip->id), "%s", row.id != NULL ? row.id : "?");
		skip->code = r;
		snprintf(skip->reason, sizeof(skip->reason), "%s", esc_ctx_errmsg(ctx));
	}
	ERR_clear_error();
	PQclear(up);
	esc_archive_fields_clear(&truth);
	esc_envelope_plain_free(content, contentlen);
	OPENSSL_free(outer);
	free(inner);
	free(sealed);
	return r;
}

/* The batch's audit events: one per skipped record, then the counts. */
static enum esc_err
audit_batch(struct reseal *rs, const struct esc_account *by, const struct esc_reseal_batch *b)
{
	char roles[64], details[512], from[32], obj[32];
	const char *actor;
	size_t i;
	enum esc_err r;

	actor_of(by, &actor, roles, sizeof(roles));
	for (i = 0; i < b->skipped; i++) {
		struct esc_audit_event ev = {actor, roles, "rewrap.storage", b->skips[i].id, "refused", details};

		snprintf(details, sizeof(details), "not re-sealed, left as it was (%s): %s",
			 esc_strerror(b->skips[i].code), b->skips[i].reason);
		if ((r = esc_audit_append(rs->ctx, rs->st, &ev)) != ESC_OK)
			return r;
	}
	if (b->from_low == b->from_high)
		snprintf(from, sizeof(from), "%d", b->from_low);
	else
		snprintf(from, sizeof(from), "%d..%d", b->from_low, b->from_high);
	snprintf(obj, sizeof(obj), "generation %d", rs->to);
	snprintf(details, sizeof(details), "resealed %zu, skipped %zu, storage key generation %s -> %d", b->resealed,
		 b->skipped, from, rs->to);
	{
		struct esc_audit_event ev = {actor, roles, "rewrap.storage", obj, "ok", details};

		return esc_audit_append(rs->ctx, rs->st, &ev);
	}
}

static enum esc_err
reseal_impl(struct reseal *rs, const struct esc_account *by, const char *after, size_t n, struct esc_reseal_batch *out)
{
	struct esc_ctx *ctx = rs->ctx;
	struct esc_reseal_batch b;
	PGresult *res = NULL;
	char cur[16], lim[16];
	const char *v[3];
	int i, rows, g = 0;
	enum esc_err r;

	memset(&b, 0, sizeof(b));
	reseal_free(rs);
	if ((r = esc_store_exec(ctx, rs->st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) !=
	    ESC_OK)
		goto out;
	esc_store_mark_tx(rs->st);
	if ((r = load_current(rs)) != ESC_OK)
		goto out;
	snprintf(cur, sizeof(cur), "%d", rs->to);
	snprintf(lim, sizeof(lim), "%zu", n);
	v[0] = cur;
	v[1] = after;
	v[2] = lim;
	/*
	 * Rows another job (or a recovery reading one: no, plain reads take no
	 * lock) holds are skipped, not waited for; the next pass finds them
	 * re-sealed or free.  Only these rows are locked, never the table.
	 */
	if ((r = esc_store_exec(ctx, rs->st,
				"SELECT encode(a.record, 'hex'), a.storage_generation, " ESC_ARCHIVE_ROW_SQL
				" FROM archive_records a WHERE a.storage_generation < $1 AND a.id > $2::uuid ORDER "
				"BY a.id LIMIT $3 FOR UPDATE OF a SKIP LOCKED",
				3, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	rows = PQntuples(res);
	if (rows > 0 && (b.skips = calloc((size_t)rows, sizeof(*b.skips))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		r = reseal_row(rs, res, i, &b.skips[b.skipped], &g);
		snprintf(b.last, sizeof(b.last), "%s", PQgetvalue(res, i, 2));
		if (g > 0 && (b.from_low == 0 || g < b.from_low))
			b.from_low = g;
		if (g > b.from_high)
			b.from_high = g;
		if (r == ESC_OK)
			b.resealed++;
		else if (damaged(r)) {
			b.skipped++;
			esc_ctx_clear_error(ctx);
		} else
			goto out;
	}
	b.to = rs->to;
	if (rows > 0 && (r = audit_batch(rs, by, &b)) != ESC_OK)
		goto out;
	fault_kill("reseal-before-commit");
	if ((r = esc_store_commit(ctx, rs->st)) != ESC_OK)
		goto out;
	*out = b;
	memset(&b, 0, sizeof(b)); /* transferred */
	r = ESC_OK;
out:
	esc_store_rollback(rs->st);
	esc_reseal_batch_clear(&b);
	PQclear(res);
	return r;
}

void
esc_reseal_batch_clear(struct esc_reseal_batch *b)
{
	if (b == NULL)
		return;
	free(b->skips);
	memset(b, 0, sizeof(*b));
}

enum esc_err
esc_storage_reseal_batch(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *by, struct esc_token *tok,
			 const char *after, size_t n, struct esc_reseal_batch *out)
{
	struct esc_store_retry t = {0};
	struct reseal rs;
	enum esc_err r;

	if (st == NULL || tok == NULL || out == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_storage_reseal_batch: NULL argument");
	if (by != NULL && (r = esc_account_require(ctx, by, ESC_ROLE_ADMIN)) != ESC_OK) {
		audit_failure(ctx, st, by, "rewrap.storage", "storage", r);
		return r;
	}
	if (after == NULL)
		after = "";
	if (n < 1 || n > ESC_RESEAL_BATCH_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a re-seal batch is 1..%d records", ESC_RESEAL_BATCH_MAX);
	if (!esc_archive_id_text_ok(after))
		return esc_error(ctx, ESC_ERR_USAGE, "a re-seal batch starts after a record id (a UUID in lower case)");
	if ((r = esc_store_check_schema(ctx, st)) != ESC_OK)
		return r;
	memset(&rs, 0, sizeof(rs));
	rs.ctx = ctx;
	rs.st = st;
	rs.tok = tok;
	do
		r = reseal_impl(&rs, by, *after ? after : "00000000-0000-0000-0000-000000000000", n, out);
	while (esc_store_retry(ctx, st, &t, &r));
	reseal_free(&rs);
	if (r == ESC_OK && (r = esc_storage_remaining(ctx, st, &out->remaining)) != ESC_OK)
		esc_reseal_batch_clear(out);
	if (r != ESC_OK)
		audit_failure(ctx, st, by, "rewrap.storage", "storage", r);
	return r;
}
