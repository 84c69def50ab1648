/*
 * p11escrow — setting up the CA: schema, token keys, CA certificate.
 */
#ifndef P11ESCROW_SETUP_H
#define P11ESCROW_SETUP_H

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>
#include <p11escrow/token.h>

struct esc_setup_opts {
	const char *conninfo;	      /* libpq connection string */
	const char *module;	      /* PKCS#11 module path or p11-kit:NAME; NULL: default */
	const char *token_uri;	      /* the CA token */
	const struct esc_secret *pin; /* CA token user PIN (needed unless the CA exists) */
	enum esc_key_type ca_key_type;
	enum esc_key_type transport_key_type;
	enum esc_key_type storage_key_type;
	const char *adopt_key_uri; /* use this existing signing key instead of generating one */
	const char *subject;
	int days;
	const char *csr_out;	 /* external CA: write the CSR (PEM) here instead of self-signing */
	const char *import_cert; /* external CA: the signed certificate (PEM, chain may follow) */
};

enum esc_setup_outcome {
	ESC_SETUP_CREATED,  /* a new, active CA */
	ESC_SETUP_EXISTS,   /* a CA existed: nothing changed */
	ESC_SETUP_PENDING,  /* keys created, CSR written, waiting for the signed certificate */
	ESC_SETUP_IMPORTED, /* the external CA's certificate was imported: CA active */
};

struct esc_setup_key {
	char role[16];
	char label[129];
	char type[16];
	char *uri;
};

struct esc_setup_result {
	enum esc_setup_outcome outcome;
	char *state; /* "active" or "pending-certificate" */
	char *subject;
	char *fingerprint; /* NULL while pending */
	char *cert_pem;	   /* CA certificate, NULL while pending */
	int schema_from, schema_to;
	struct esc_setup_key keys[4];
	size_t nkeys;
	char note[512]; /* key types changed to what the token offers; "" if none */
};

/*
 * Run setup: migrate the schema, then create (or report) the CA.  On a
 * fresh database the token, PIN, mechanisms and any key to adopt are
 * checked before the schema is migrated; a failure after that leaves at
 * most the migrated (empty) schema, never a CA row, and keys this call
 * generated are destroyed again.  Errors: everything the token, store and ca modules
 * return; EXISTS when a concurrent setup won; STATE for an import without
 * a pending CA.
 */
enum esc_err esc_setup_run(struct esc_ctx *ctx, const struct esc_setup_opts *opts,
			   struct esc_setup_result **out) ESC_MUST_CHECK;
void esc_setup_result_free(struct esc_setup_result *res);

/*
 * The PKCS#11 URI recorded at setup for a CA key role ("ca-sign",
 * "transport", "storage"): it names the CA token by label and serial, so
 * front-ends can open the right token without being told.  Caller frees.
 * Errors: STATE (no such key: run setup), DB.
 */
enum esc_err esc_setup_key_uri(struct esc_ctx *ctx, struct esc_store *st, const char *role, char **out) ESC_MUST_CHECK;

#define ESC_DB_ROLE_MAX 63 /* PostgreSQL's NAMEDATALEN - 1 */

/*
 * `p11escrow db grant-service`: grant the existing database role `role`
 * exactly the privileges p11escrowd needs on this database (sql/006: it
 * reads what it serves, inserts enrollment, archival, recovery and audit
 * rows, updates only a recovery's progress and a one-time password's use;
 * INSERT and SELECT only on the audit tables), after revoking whatever it
 * had; record it so later migrations grant it what they add.  Run by the
 * owner of the tables.  Audited (db.grant-service by "db:<current_user>",
 * role "db-owner", refusals included); the grants and their event commit
 * together.
 * Errors: USAGE (bad role name), NOT_FOUND (no such role), POLICY (the role
 * is a superuser or the owner: it could bypass the grants), DENIED (the
 * caller is not the owner), SCHEMA_OLD, DB.
 */
enum esc_err esc_setup_grant_service(struct esc_ctx *ctx, struct esc_store *st, const char *role) ESC_MUST_CHECK;

#endif
