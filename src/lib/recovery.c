/*
 * Two-person key recovery: request, approve, release, complete.
 */
#define _GNU_SOURCE /* strcasestr */

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/buffer.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/envelope.h>
#include <p11escrow/kra.h>
#include <p11escrow/recovery.h>
#include <p11escrow/revoke.h>

#include "archive_internal.h"
#include "internal.h"
#include "shamir_internal.h"
#include "store_internal.h"

#define P12_ITER 600000 /* PBKDF2 iterations protecting the recovered key */

/*
 * The hours a released package waits for its KRA (policy release_ttl_hours;
 * sql/007 keeps it a number from 1 to 720), 24 if the row is missing.  SQL
 * text, no values.
 */
#define TTL_HOURS_SQL "coalesce((SELECT p.value::int FROM policy p WHERE p.key = 'release_ttl_hours'), 24)"
/* Is released request r's package past its time? */
#define OVERDUE_SQL "(r.released_at + make_interval(hours => " TTL_HOURS_SQL ") <= now())"

static void
copy(char *dst, size_t len, const char *src)
{
	snprintf(dst, len, "%s", src ? src : "");
}

/* The success event, written inside the operation's transaction. */
static enum esc_err
audit_ok(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *actor, const char *action,
	 const char *object, const char *details)
{
	char roles[64] = "service";
	struct esc_audit_event ev = {actor, roles, action, object, "ok", details};

	if (a != NULL) {
		esc_roles_format(esc_account_roles(a), roles, sizeof(roles));
		ev.actor = esc_account_name(a);
	}
	return esc_audit_append(ctx, st, &ev);
}

static int
require_any(struct esc_ctx *ctx, const struct esc_account *a, unsigned roles, const char *what)
{
	if (a != NULL && (esc_account_roles(a) & roles) != 0)
		return 0;
	(void)esc_error(ctx, ESC_ERR_DENIED, "account '%s' may not %s", a ? esc_account_name(a) : "(none)", what);
	return -1;
}

/* Serial as the database keeps it: lower-case hex, no separators or leading zeros. */
static enum esc_err
normalise_serial(struct esc_ctx *ctx, const char *in, char *out, size_t len)
{
	size_t n = 0;

	for (; *in == '0' || *in == ':'; in++)
		;
	for (; *in; in++) {
		if (*in == ':')
			continue;
		if (!isxdigit((unsigned char)*in) || n + 1 >= len)
			return esc_error(ctx, ESC_ERR_USAGE, "a serial number is hexadecimal");
		out[n++] = (char)tolower((unsigned char)*in);
	}
	out[n] = '\0';
	if (n == 0)
		return esc_error(ctx, ESC_ERR_USAGE, "empty serial number");
	return ESC_OK;
}

/*
 * What row's certificate says, for showing (*f, cleared by the caller),
 * and whether the row disagrees with it (*tampered).  A certificate that
 * does not decode leaves *f empty and counts as tampering.  Only running
 * out of memory (or OpenSSL failing) is an error: a listing shows
 * tampered rows, it does not fail on them.
 */
static enum esc_err
row_truth(struct esc_ctx *ctx, const struct esc_archive_row *row, struct esc_archive_fields *f, int *tampered)
{
	X509 *x = esc_store_cert_from_text(row->certificate);
	enum esc_err r;

	memset(f, 0, sizeof(*f));
	*tampered = 1;
	if (x == NULL) {
		ERR_clear_error();
		return ESC_OK;
	}
	r = esc_archive_fields_of(ctx, x, f);
	X509_free(x);
	if (r != ESC_OK)
		return r;
	if (esc_archive_row_compare(ctx, row, f) == ESC_OK)
		*tampered = 0;
	else
		esc_ctx_clear_error(ctx); /* shown as a flag, not a failure of the listing */
	return ESC_OK;
}

/*
 * Archive record rid, checked against its certificate (esc_archive_row_check);
 * *truth (optional; esc_archive_fields_clear) is what the certificate says.
 * Errors: NOT_FOUND, TAMPERED, NOMEM, CRYPTO, DB.
 */
static enum esc_err
checked_record(struct esc_ctx *ctx, struct esc_store *st, const char *rid, struct esc_archive_fields *truth)
{
	PGresult *res = NULL;
	struct esc_archive_row row;
	const char *v[1] = {rid};
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "SELECT " ESC_ARCHIVE_ROW_SQL " FROM archive_records a WHERE a.id::text = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no archive record %s", rid);
		goto out;
	}
	esc_archive_row_get(res, 0, 0, &row);
	r = esc_archive_row_check(ctx, &row, NULL, truth);
out:
	PQclear(res);
	return r;
}

/*
 * The search's SQL, built from fixed fragments for the criteria given (never
 * from their values, which stay parameters): one statement per combination,
 * each with plain indexable predicates.  A single statement with "$1 IS NULL
 * OR col = $1" would be planned once per connection as a generic plan that
 * can use no index (sql/015).
 */
#define SEARCH_SQL_HEAD                                                                                            \
	"SELECT " ESC_ARCHIVE_ROW_SQL                                                                              \
	", a.foreign_issuer, to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), "                  \
	"coalesce((SELECT string_agg(k.name, ',' ORDER BY k.name) FROM archive_record_kras x JOIN kras k ON k.id " \
	"= x.kra_id WHERE x.record_id = a.id), '') FROM archive_records a WHERE (NOT EXISTS (SELECT 1 FROM "       \
	"manager_scopes WHERE account_id = $1::bigint) OR p11escrow_record_in_scope(a.id, $1::bigint))"
#define SEARCH_SQL_TAIL " ORDER BY a.created_at DESC LIMIT 100"

/*
 * A LIKE pattern matching text anywhere, with LIKE's own characters in text
 * (%, _ and the escape \) taken literally: "%" + escaped + "%", malloc'd.
 */
static char *
like_anywhere(const char *text)
{
	size_t n = strlen(text), i, j = 0;
	char *p;

	if ((p = malloc(2 * n + 3)) == NULL)
		return NULL;
	p[j++] = '%';
	for (i = 0; i < n; i++) {
		if (text[i] == '%' || text[i] == '_' || text[i] == '\\')
			p[j++] = '\\';
		p[j++] = text[i];
	}
	p[j++] = '%';
	p[j] = '\0';
	return p;
}

enum esc_err
esc_archive_search(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *serial,
		   const char *subject, const char *email, struct esc_record_summary **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_record_summary *s = NULL;
	char nserial[128], aid[24], sql[sizeof(SEARCH_SQL_HEAD) + sizeof(SEARCH_SQL_TAIL) + 160], *pattern = NULL;
	const char *v[4];
	enum esc_err r;
	int i, rows, nv = 0;

	if (require_any(ctx, actor, ESC_ROLE_CERT_MANAGER | ESC_ROLE_AUDITOR | ESC_ROLE_ADMIN, "search archived keys"))
		return ESC_ERR_DENIED;
	if (serial != NULL && (r = normalise_serial(ctx, serial, nserial, sizeof(nserial))) != ESC_OK)
		return r;
	if (subject != NULL && strlen(subject) > ESC_SEARCH_TEXT_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a subject to search for is at most %d bytes",
				 ESC_SEARCH_TEXT_MAX);
	if (subject != NULL && (pattern = like_anywhere(subject)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	snprintf(aid, sizeof(aid), "%lld", esc_account_id(actor));
	v[nv++] = aid;
	/*
	 * A scoped certificate manager sees only the records in scope (sql/006); anyone else every record.
	 * The criteria select rows by their columns, each through its index (sql/015): the normalised
	 * serial, lower(email), the subject's trigrams (ILIKE, as case-blind as the lower() it replaced).
	 * What is shown comes from each row's certificate, and a row whose columns disagree with it is
	 * flagged, not hidden: a relabelled row found under someone else's serial shows its true owner
	 * and the mark.
	 */
	snprintf(sql, sizeof(sql), "%s", SEARCH_SQL_HEAD);
	if (serial != NULL) {
		v[nv++] = nserial;
		snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), " AND ltrim(a.cert_serial, '0') = $%d", nv);
	}
	if (subject != NULL) {
		v[nv++] = pattern;
		snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), " AND a.subject ILIKE $%d", nv);
	}
	if (email != NULL) {
		v[nv++] = email;
		snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), " AND lower(a.email) = lower($%d)", nv);
	}
	snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), "%s", SEARCH_SQL_TAIL);
	if ((r = esc_store_exec(ctx, st, sql, nv, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	rows = PQntuples(res);
	if ((s = calloc((size_t)rows + 1, sizeof(*s))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		struct esc_archive_row row;
		struct esc_archive_fields f;
		const int c = ESC_ARCHIVE_ROW_NCOLS;

		esc_archive_row_get(res, i, 0, &row);
		copy(s[i].id, sizeof(s[i].id), row.id);
		if ((r = row_truth(ctx, &row, &f, &s[i].tampered)) != ESC_OK)
			goto out;
		copy(s[i].serial, sizeof(s[i].serial), f.serial);
		copy(s[i].subject, sizeof(s[i].subject), f.subject);
		copy(s[i].email, sizeof(s[i].email), f.email);
		copy(s[i].issuer, sizeof(s[i].issuer), f.issuer);
		esc_archive_fields_clear(&f);
		s[i].foreign = strcmp(PQgetvalue(res, i, c), "t") == 0;
		copy(s[i].created, sizeof(s[i].created), PQgetvalue(res, i, c + 1));
		copy(s[i].kras, sizeof(s[i].kras), PQgetvalue(res, i, c + 2));
	}
	*out = s;
	*n = (size_t)rows;
	s = NULL; /* transferred */
	r = ESC_OK;
out:
	free(pattern);
	free(s);
	PQclear(res);
	return r;
}

/* A record named by id (UUID) or by certificate serial; exactly one. */
static enum esc_err
resolve_record(struct esc_ctx *ctx, struct esc_store *st, const char *record, char id[ESC_RECORD_ID_LEN + 1])
{
	PGresult *res = NULL;
	char nserial[128], list[200] = "";
	const char *v[1];
	enum esc_err r;
	int i, rows;

	if (strlen(record) == ESC_RECORD_ID_LEN && record[8] == '-') {
		v[0] = record;
		r = esc_store_exec(ctx, st, "SELECT id FROM archive_records WHERE id::text = lower($1)", 1, v, NULL,
				   NULL, &res);
	} else {
		if ((r = normalise_serial(ctx, record, nserial, sizeof(nserial))) != ESC_OK)
			return r;
		v[0] = nserial;
		r = esc_store_exec(ctx, st, "SELECT id FROM archive_records WHERE ltrim(cert_serial, '0') = $1", 1, v,
				   NULL, NULL, &res);
	}
	if (r != ESC_OK)
		return r;
	rows = PQntuples(res);
	if (rows == 0)
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no archived key for '%s'", record);
	else if (rows > 1) {
		for (i = 0; i < rows && i < 3; i++)
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
				 PQgetvalue(res, i, 0));
		r = esc_error(ctx, ESC_ERR_USAGE, "serial '%s' matches %d records (%s): name the record id", record,
			      rows, list);
	} else {
		copy(id, ESC_RECORD_ID_LEN + 1, PQgetvalue(res, 0, 0));
		r = ESC_OK;
	}
	PQclear(res);
	return r;
}

/*
 * Is record rid within actor's scope (always true for an unscoped account)?
 * DENIED otherwise — naming neither the record's profile nor its groups,
 * which a manager outside the scope has no business learning.
 */
static enum esc_err
check_scope(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *rid,
	    const char *shown)
{
	PGresult *res = NULL;
	char aid[24];
	const char *v[2] = {rid, aid};
	enum esc_err r;

	snprintf(aid, sizeof(aid), "%lld", esc_account_id(actor));
	if ((r = esc_store_exec(ctx, st, "SELECT p11escrow_record_in_scope($1::uuid, $2::bigint)", 2, v, NULL, NULL,
				&res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "%s is outside the scope of account '%s' (its profiles and groups: 'p11escrow account "
			      "list')",
			      shown, esc_account_name(actor));
	PQclear(res);
	return r;
}

static enum esc_err
check_reason(struct esc_ctx *ctx, const char *reason)
{
	size_t i, n = reason ? strlen(reason) : 0;

	if (n < 3 || n > ESC_REASON_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a reason of 3..%d characters is required", ESC_REASON_MAX);
	for (i = 0; i < n; i++)
		if ((unsigned char)reason[i] < 0x20 || reason[i] == 0x7f)
			return esc_error(ctx, ESC_ERR_USAGE, "the reason may not hold control characters");
	return ESC_OK;
}

/* Is this KRA certificate usable now? */
static int
kra_cert_valid(const char *hex)
{
	X509 *x = esc_store_cert_from_text(hex);
	int ok = x != NULL && X509_cmp_current_time(X509_get0_notAfter(x)) > 0 &&
		 X509_cmp_current_time(X509_get0_notBefore(x)) < 0;

	X509_free(x);
	return ok;
}

static enum esc_err
request_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *record,
	     const char *kra_name, const char *reason, long long *id)
{
	PGresult *res = NULL;
	struct esc_archive_fields truth;
	char rid[ESC_RECORD_ID_LEN + 1], kid[24] = "", set[256] = "", actor_id[24], *approvals = NULL;
	const char *v[6];
	enum esc_err r;
	int i, rows, active = 0;

	memset(&truth, 0, sizeof(truth));
	if (record == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "name the record: a record id or a certificate serial");
	if ((r = esc_account_require(ctx, actor, ESC_ROLE_CERT_MANAGER)) != ESC_OK ||
	    (r = check_reason(ctx, reason)) != ESC_OK || (r = resolve_record(ctx, st, record, rid)) != ESC_OK)
		return r;
	{
		char shown[80];

		snprintf(shown, sizeof(shown), "the archived key of '%.40s'", record);
		if ((r = check_scope(ctx, st, actor, rid, shown)) != ESC_OK)
			return r;
	}
	/* What the requester decides on is the certificate's, so the row must be the certificate's. */
	if ((r = checked_record(ctx, st, rid, &truth)) != ESC_OK)
		return r;
	v[0] = rid;
	if ((r = esc_store_exec(ctx, st,
				"SELECT k.id, k.name, k.state, k.certificate, EXISTS (SELECT 1 FROM revocations v "
				"WHERE v.own AND ltrim(v.serial, '0') = ltrim(k.cert_serial, '0')) FROM "
				"archive_record_kras x JOIN kras k ON k.id = x.kra_id WHERE x.record_id::text = $1 "
				"ORDER BY k.name",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	rows = PQntuples(res);
	for (i = 0; i < rows; i++) {
		int revoked = strcmp(PQgetvalue(res, i, 4), "t") == 0;
		int usable = strcmp(PQgetvalue(res, i, 2), "active") == 0 && kra_cert_valid(PQgetvalue(res, i, 3)) &&
			     !revoked;

		snprintf(set + strlen(set), sizeof(set) - strlen(set), "%s%s%s", i ? ", " : "", PQgetvalue(res, i, 1),
			 usable	   ? ""
			 : revoked ? " (certificate revoked)"
				   : " (retired or expired)");
		if (kra_name != NULL && strcmp(kra_name, PQgetvalue(res, i, 1)) == 0) {
			if (!usable) {
				r = esc_error(ctx, ESC_ERR_STATE,
					      revoked ? "KRA '%s''s certificate is revoked"
						      : "KRA '%s' is retired or its certificate expired",
					      kra_name);
				goto out;
			}
			copy(kid, sizeof(kid), PQgetvalue(res, i, 0));
		}
		if (kra_name == NULL && usable) {
			active++;
			copy(kid, sizeof(kid), PQgetvalue(res, i, 0));
		}
	}
	if (kra_name != NULL && kid[0] == '\0') {
		r = esc_error(ctx, ESC_ERR_STATE, "KRA '%s' cannot recover this record (its KRA set: %s)", kra_name,
			      set);
		goto out;
	}
	if (kra_name == NULL && active != 1) {
		r = esc_error(ctx, active ? ESC_ERR_USAGE : ESC_ERR_STATE,
			      active ? "choose the KRA to recover with --kra (the record's KRA set: %s)"
				     : "no active KRA can recover this record (its KRA set: %s)",
			      set);
		goto out;
	}
	/* Policy may demand that the certificate be revoked before its key comes back. */
	{
		char *must = NULL;
		int revoked = 0;

		if ((r = esc_store_policy(ctx, st, "revoke_before_recovery", &must)) != ESC_OK)
			goto out;
		if (strcmp(must, "true") == 0 && (r = esc_cert_record_revoked(ctx, st, rid, &revoked)) == ESC_OK &&
		    !revoked)
			r = esc_error(ctx, ESC_ERR_POLICY,
				      "policy requires the certificate to be revoked before its key is recovered: "
				      "run 'p11escrow cert revoke' first");
		free(must);
		if (r != ESC_OK)
			goto out;
	}
	if ((r = esc_store_policy(ctx, st, "recovery_approvals", &approvals)) != ESC_OK)
		goto out;
	PQclear(res);
	res = NULL;
	snprintf(actor_id, sizeof(actor_id), "%lld", esc_account_id(actor));
	v[0] = rid;
	v[1] = actor_id;
	v[2] = reason;
	v[3] = kid;
	v[4] = approvals;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"INSERT INTO recovery_requests (record_id, requested_by, reason, kra_id, state, "
				"approvals_required) VALUES ($1::uuid, $2, $3, $4, CASE WHEN $5::int = 0 THEN "
				"'approved' ELSE 'pending' END, $5::int) RETURNING id",
				5, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	{
		char obj[48], details[ESC_REASON_MAX + 512];

		snprintf(obj, sizeof(obj), "request %s", PQgetvalue(res, 0, 0));
		snprintf(details, sizeof(details),
			 "record %s (serial %s, subject '%.200s'), KRA id %s, approvals needed %s, reason: %s", rid,
			 truth.serial, truth.subject, kid, approvals, reason);
		if ((r = audit_ok(ctx, st, actor, NULL, "recovery.request", obj, details)) != ESC_OK ||
		    (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	*id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	r = ESC_OK;
out:
	esc_store_rollback(st);
	esc_archive_fields_clear(&truth);
	free(approvals);
	PQclear(res);
	return r;
}

enum esc_err
esc_recovery_request(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *record,
		     const char *kra_name, const char *reason, long long *id)
{
	struct esc_store_retry t = {0};
	char nserial[128];
	enum esc_err r;

	do
		r = request_impl(ctx, st, actor, record, kra_name, reason, id);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		/* A serial as the trail records serials elsewhere, so 'audit show --serial' finds the refusal. */
		const char *obj = record != NULL ? record : "?";
		char saved[ESC_ERRMSG_MAX];
		enum esc_err code = esc_ctx_errcode(ctx);

		snprintf(saved, sizeof(saved), "%s", esc_ctx_errmsg(ctx));
		if (record != NULL && !(strlen(record) == ESC_RECORD_ID_LEN && record[8] == '-') &&
		    normalise_serial(ctx, record, nserial, sizeof(nserial)) == ESC_OK)
			obj = nserial;
		(void)esc_error(ctx, code, "%s", saved);
		esc_audit_outcome_by(ctx, st, actor, "recovery.request", obj, r);
	}
	return r;
}

static enum esc_err
approve_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id)
{
	PGresult *res = NULL;
	char sid[24], aid[24];
	const char *v[2] = {sid, aid};
	enum esc_err r;
	int required, have;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_CERT_MANAGER)) != ESC_OK)
		return r;
	snprintf(sid, sizeof(sid), "%lld", id);
	snprintf(aid, sizeof(aid), "%lld", esc_account_id(actor));
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT requested_by, state, approvals_required, record_id FROM recovery_requests WHERE "
		     "id = $1 FOR UPDATE",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
		goto out;
	}
	{
		char shown[64];

		snprintf(shown, sizeof(shown), "the key of request %lld", id);
		if ((r = check_scope(ctx, st, actor, PQgetvalue(res, 0, 3), shown)) != ESC_OK)
			goto out;
		/* An approval is a decision on the record too: never on a row relabelled since the request. */
		if ((r = checked_record(ctx, st, PQgetvalue(res, 0, 3), NULL)) != ESC_OK)
			goto out;
	}
	if (strtoll(PQgetvalue(res, 0, 0), NULL, 10) == esc_account_id(actor)) {
		r = esc_error(ctx, ESC_ERR_DENIED, "a requester cannot approve their own recovery request");
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "pending") != 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "request %lld is %s, not pending", id, PQgetvalue(res, 0, 1));
		goto out;
	}
	if ((r = esc_store_get_int(ctx, res, 0, 2, &required)) != ESC_OK)
		goto out;
	PQclear(res);
	res = NULL;
	if ((r = esc_store_exec(ctx, st, "INSERT INTO recovery_approvals (request_id, approver) VALUES ($1, $2)", 2, v,
				NULL, NULL, NULL)) != ESC_OK) {
		if (r == ESC_ERR_EXISTS)
			r = esc_error(ctx, ESC_ERR_EXISTS, "account '%s' already approved request %lld",
				      esc_account_name(actor), id);
		goto out;
	}
	if ((r = esc_store_exec(ctx, st, "SELECT count(*) FROM recovery_approvals WHERE request_id = $1", 1, v, NULL,
				NULL, &res)) != ESC_OK)
		goto out;
	if ((r = esc_store_get_int(ctx, res, 0, 0, &have)) != ESC_OK)
		goto out;
	if (have >= required &&
	    (r = esc_store_exec(ctx, st, "UPDATE recovery_requests SET state = 'approved' WHERE id = $1", 1, v, NULL,
				NULL, NULL)) != ESC_OK)
		goto out;
	{
		char obj[48], details[64];

		snprintf(obj, sizeof(obj), "request %lld", id);
		snprintf(details, sizeof(details), "approval %d of %d", have, required);
		if ((r = audit_ok(ctx, st, actor, NULL, "recovery.approve", obj, details)) != ESC_OK)
			goto out;
	}
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

/* Failure events name the request like success events do. */
static void
audit_failed(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *actor,
	     const char *action, long long id, enum esc_err r)
{
	char obj[48];

	snprintf(obj, sizeof(obj), "request %lld", id);
	if (a != NULL)
		esc_audit_outcome_by(ctx, st, a, action, obj, r);
	else
		esc_audit_outcome(ctx, st, actor, "service", action, obj, r);
}

enum esc_err
esc_recovery_approve(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = approve_impl(ctx, st, actor, id);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		audit_failed(ctx, st, actor, NULL, "recovery.approve", id, r);
	return r;
}

/*
 * The state column says "approved", but a state is only what the last
 * writer left: the workers that write it parse the network. Before the
 * CA token opens anything the decision is counted again from what it is
 * made of: a requester who is an enabled certificate manager, and at
 * least as many approvals as the request recorded and the policy now
 * demands, each by an enabled certificate manager other than the
 * requester (a certificate manager is never a KRA: the accounts table's
 * CHECK). Run inside the release's transaction, after the row lock.
 */
static enum esc_err
recount_decision(struct esc_ctx *ctx, struct esc_store *st, long long id)
{
	static const char *const q = "SELECT (SELECT NOT a.disabled AND 'cert-manager' = ANY (a.roles) FROM accounts a "
				     "WHERE a.id = r.requested_by), "
				     "(SELECT count(*) FROM recovery_approvals p JOIN accounts a ON a.id = p.approver "
				     "WHERE p.request_id = r.id AND p.approver <> r.requested_by AND NOT a.disabled "
				     "AND 'cert-manager' = ANY (a.roles)), "
				     "r.approvals_required, "
				     "(SELECT count(*) FROM recovery_approvals p WHERE p.request_id = r.id) "
				     "FROM recovery_requests r WHERE r.id = $1";
	PGresult *res = NULL;
	char sid[24], *policy = NULL;
	const char *v[1] = {sid};
	int valid = 0, recorded = 0, all = 0, now = 0, need;
	enum esc_err r;

	snprintf(sid, sizeof(sid), "%lld", id);
	if ((r = esc_store_exec(ctx, st, q, 1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "request %lld: its requester is not an enabled certificate manager: nothing released",
			      id);
		goto out;
	}
	if ((r = esc_store_get_int(ctx, res, 0, 1, &valid)) != ESC_OK ||
	    (r = esc_store_get_int(ctx, res, 0, 2, &recorded)) != ESC_OK ||
	    (r = esc_store_get_int(ctx, res, 0, 3, &all)) != ESC_OK ||
	    (r = esc_store_policy(ctx, st, "recovery_approvals", &policy)) != ESC_OK)
		goto out;
	now = (int)strtol(policy, NULL, 10);
	need = recorded > now ? recorded : now;
	if (valid < need) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "request %lld is marked approved but has %d valid approval(s) of the %d required "
			      "(%d recorded; policy recovery_approvals is %d now): nothing released",
			      id, valid, need, all, now);
		goto out;
	}
	r = ESC_OK;
out:
	free(policy);
	PQclear(res);
	return r;
}

/*
 * Release of a version 2 record: one recovery_shares row per share, each
 * matched by its KRA certificate's hash to a KRA of the record's set (a
 * share for a KRA outside the set is tampering), still sealed to that
 * KRA's card.  A share sealed before its KRA's certificate was renewed
 * names the earlier certificate (kra_certificates): it matches too, if
 * that certificate is of the KRA's key now (the card opens it).  The
 * request's KRA (kra_id), who completes, must hold exactly one of them.
 */
static enum esc_err
release_shares(struct esc_ctx *ctx, struct esc_store *st, long long id, const char *rid, const char *kra_id,
	       const struct esc_record_shares *sh)
{
	PGresult *res = NULL;
	char sid[24], kid[24], x[8], k[8];
	const char *v[6];
	int len[6] = {0}, fmt[6] = {0, 0, 0, 0, 1, 1}, rows, j, mine = 0;
	size_t i;
	enum esc_err r;

	v[0] = rid;
	/* Each KRA of the set: its certificate now, and each earlier one with the one now beside it. */
	if ((r = esc_store_exec(ctx, st,
				"SELECT k.id, k.certificate, NULL FROM archive_record_kras x JOIN kras k ON k.id = "
				"x.kra_id WHERE x.record_id::text = $1 UNION ALL SELECT k.id, c.certificate, "
				"k.certificate FROM archive_record_kras x JOIN kras k ON k.id = x.kra_id JOIN "
				"kra_certificates c ON c.kra_id = k.id WHERE x.record_id::text = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	snprintf(sid, sizeof(sid), "%lld", id);
	snprintf(k, sizeof(k), "%u", sh->threshold);
	for (i = 0; i < sh->n; i++) {
		const struct esc_record_share *e = &sh->share[i];

		kid[0] = '\0';
		for (j = 0; j < rows && kid[0] == '\0'; j++) {
			X509 *c = esc_store_cert_cached(st, PQgetvalue(res, j, 1)), *now = NULL;
			unsigned char cmd[32];
			unsigned int cl = 0;
			int same = 1;

			if (!PQgetisnull(res, j, 2)) {
				now = esc_store_cert_cached(st, PQgetvalue(res, j, 2));
				same = c != NULL && now != NULL &&
				       EVP_PKEY_eq(X509_get0_pubkey(c), X509_get0_pubkey(now)) == 1;
			}
			if (c != NULL && same && X509_digest(c, EVP_sha256(), cmd, &cl) &&
			    memcmp(cmd, e->kra_cert_sha256, 32) == 0)
				copy(kid, sizeof(kid), PQgetvalue(res, j, 0));
			X509_free(c);
			X509_free(now);
		}
		if (kid[0] == '\0') {
			r = esc_error(ctx, ESC_ERR_TAMPERED,
				      "record %s has a share (x = %u) for a KRA outside its KRA set: tampering", rid,
				      e->x);
			goto out;
		}
		mine += strcmp(kid, kra_id) == 0;
		snprintf(x, sizeof(x), "%u", e->x);
		v[0] = sid;
		v[1] = kid;
		v[2] = x;
		v[3] = k;
		v[4] = (const char *)e->commitment;
		len[4] = 32;
		v[5] = (const char *)e->sealed;
		len[5] = (int)e->sealedlen;
		if ((r = esc_store_exec(
			     ctx, st,
			     "INSERT INTO recovery_shares (request_id, kra_id, x, threshold, commitment, sealed) "
			     "VALUES ($1, $2, $3, $4, $5, $6)",
			     6, v, len, fmt, NULL)) != ESC_OK)
			goto out;
	}
	if (mine != 1) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s holds %s share for the request's KRA: tampering", rid,
			      mine ? "more than one" : "no");
		goto out;
	}
	r = ESC_OK;
out:
	ERR_clear_error();
	PQclear(res);
	return r;
}

static enum esc_err
release_impl(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, long long id)
{
	PGresult *res = NULL;
	X509 *kra_cert = NULL;
	struct esc_record_shares *shares = NULL;
	unsigned char *inner = NULL, *pkg = NULL;
	size_t innerlen = 0, pkglen = 0;
	char sid[24], rid[ESC_RECORD_ID_LEN + 1], kra_name[65];
	const char *v[2];
	int len[2] = {0, 0}, fmt[2] = {0, 1}, yes = 0;
	enum esc_err r;

	snprintf(sid, sizeof(sid), "%lld", id);
	v[0] = sid;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT r.state, r.record_id, k.state, k.certificate, k.name, EXISTS (SELECT 1 FROM "
		     "revocations v WHERE v.own AND ltrim(v.serial, '0') = ltrim(k.cert_serial, '0')), k.id "
		     "FROM recovery_requests r JOIN kras k ON k.id = r.kra_id WHERE r.id = $1 FOR UPDATE OF r",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "approved") != 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "request %lld is %s: only an approved request is released", id,
			      PQgetvalue(res, 0, 0));
		goto out;
	}
	if ((r = recount_decision(ctx, st, id)) != ESC_OK)
		goto out;
	if (strcmp(PQgetvalue(res, 0, 2), "active") != 0 || !kra_cert_valid(PQgetvalue(res, 0, 3))) {
		r = esc_error(ctx, ESC_ERR_STATE, "KRA '%s' is retired or its certificate expired: nothing released",
			      PQgetvalue(res, 0, 4));
		goto out;
	}
	/* A revoked KRA certificate: its card is lost or compromised; no package goes to it. */
	if (strcmp(PQgetvalue(res, 0, 5), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "KRA '%s''s certificate is revoked: nothing released",
			      PQgetvalue(res, 0, 4));
		goto out;
	}
	copy(rid, sizeof(rid), PQgetvalue(res, 0, 1));
	copy(kra_name, sizeof(kra_name), PQgetvalue(res, 0, 4));
	if ((kra_cert = esc_store_cert_from_text(PQgetvalue(res, 0, 3))) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "the KRA's stored certificate is unreadable");
		goto out;
	}
	/*
	 * The record and its KRA rows are read in separate statements below: lock the record (FOR SHARE) so a
	 * re-wrap (rewrap --kra, which takes its records FOR UPDATE SKIP LOCKED) cannot replace them in between.
	 */
	v[0] = rid;
	if ((r = esc_store_exec(ctx, st, "SELECT 1 FROM archive_records WHERE id::text = $1 FOR SHARE", 1, v, NULL,
				NULL, NULL)) != ESC_OK)
		goto out;
	v[0] = sid;
	if ((r = esc_archive_open_outer(ctx, st, ca_tok, rid, &inner, &innerlen, &shares)) != ESC_OK)
		goto out;
	if (shares != NULL) {
		/* k of n: the KEK's envelope as the package, every KRA's sealed share beside it. */
		if ((r = release_shares(ctx, st, id, rid, PQgetvalue(res, 0, 6), shares)) != ESC_OK)
			goto out;
		pkg = inner;
		pkglen = innerlen;
		inner = NULL; /* moved */
		goto store;
	}
	/* A record wrapped before the KRA's certificate was renewed names the earlier one (the same key). */
	{
		X509 *named = NULL;

		if ((r = esc_kra_envelope_cert(ctx, st, kra_name, inner, innerlen, kra_cert, &named, &yes)) != ESC_OK)
			goto out;
		X509_free(kra_cert);
		kra_cert = named;
	}
	if (!yes) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "record %s is not wrapped to the request's KRA", rid);
		goto out;
	}
	/*
	 * The package is for the request's KRA alone: every other recipient of
	 * the record's KRA set is removed, so no other card opens it (the
	 * record itself is unchanged).
	 */
	if ((r = esc_envelope_keep_recipient(ctx, inner, innerlen, kra_cert, &pkg, &pkglen)) != ESC_OK)
		goto out;
store:
	v[1] = (const char *)pkg;
	len[1] = (int)pkglen;
	if ((r = esc_store_exec(ctx, st,
				"UPDATE recovery_requests SET state = 'released', package = $2, released_at = now() "
				"WHERE id = $1",
				2, v, len, fmt, NULL)) != ESC_OK)
		goto out;
	{
		char obj[48], details[192];

		snprintf(obj, sizeof(obj), "request %lld", id);
		if (shares != NULL)
			snprintf(details, sizeof(details),
				 "record %s released for KRA '%s' to complete with %u of its %zu KRAs' shares", rid,
				 kra_name, shares->threshold, shares->n);
		else
			snprintf(details, sizeof(details), "record %s released to KRA '%s' (its recipient only)", rid,
				 kra_name);
		if ((r = audit_ok(ctx, st, NULL, "ca-token", "recovery.release", obj, details)) != ESC_OK ||
		    (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	r = ESC_OK;
out:
	esc_store_rollback(st);
	esc_record_shares_free(shares);
	free(inner);
	free(pkg);
	X509_free(kra_cert);
	PQclear(res);
	return r;
}

enum esc_err
esc_recovery_release(struct esc_ctx *ctx, struct esc_store *st, struct esc_token *ca_tok, long long id)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = release_impl(ctx, st, ca_tok, id);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		audit_failed(ctx, st, NULL, "ca-token", "recovery.release", id, r);
	return r;
}

/* A PKCS#12 of key and cert: AES-256-CBC with PBKDF2, SHA-256 MAC; DER in secure memory. */
static enum esc_err
make_p12(struct esc_ctx *ctx, EVP_PKEY *key, X509 *cert, const struct esc_secret *password, unsigned char **out,
	 size_t *outlen)
{
	PKCS12 *p12 = NULL;
	unsigned char *buf = NULL, *p;
	enum esc_err r;
	int n;

	p12 = PKCS12_create(esc_secret_str(password), "recovered key", key, cert, NULL, NID_aes_256_cbc,
			    NID_aes_256_cbc, P12_ITER, -1, 0);
	if (p12 == NULL || !PKCS12_set_mac(p12, esc_secret_str(password), -1, NULL, 0, P12_ITER, EVP_sha256())) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot build the PKCS#12");
		goto out;
	}
	if ((n = i2d_PKCS12(p12, NULL)) <= 0 || (buf = OPENSSL_secure_malloc((size_t)n)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	p = buf;
	i2d_PKCS12(p12, &p);
	*out = buf;
	*outlen = (size_t)n;
	r = ESC_OK;
out:
	PKCS12_free(p12);
	return r;
}

void
esc_recovery_p12_free(unsigned char *p12, size_t len)
{
	if (p12 != NULL)
		OPENSSL_secure_clear_free(p12, len);
}

/* ---- Completion: the package, opened on the KRA's card ----------------------------------------------------- */

/* A KRA's state as completion sees it: 'revoked' when this CA revoked its certificate (a lost card). */
#define KRA_STATE_SQL                                                                           \
	"CASE WHEN EXISTS (SELECT 1 FROM revocations v WHERE v.own AND ltrim(v.serial, '0') = " \
	"ltrim(k.cert_serial, '0')) THEN 'revoked' ELSE k.state END"

#define PACKAGE_MAX (1024 * 1024)    /* an inner envelope is a few KiB; anything near this is not one */
#define SHARE_SEALED_MAX (64 * 1024) /* a sealed share is well under 2 KiB; anything near this is not one */

struct esc_recovery_package {
	long long id;
	unsigned char *der; /* the inner envelope: ciphertext, not a secret */
	size_t derlen;
	X509 *cert;	/* the record's certificate */
	X509 *kra_cert; /* the request's KRA */
	char kra_name[65];
	char key_uri[512];
	/* Version 2 (k of n): the completer's own share and those contributed, all sealed to its card. */
	char record_id[ESC_RECORD_ID_LEN + 1];
	unsigned threshold; /* 0: version 1 */
	size_t nshares;
	struct {
		unsigned x;
		unsigned char commitment[32];
		unsigned char *sealed;
		size_t sealedlen;
		X509 *cert; /* the certificate it is sealed to: kra_cert, or an earlier one of the same key */
	} share[ESC_SHAMIR_MAX_SHARES];
};

void
esc_recovery_package_free(struct esc_recovery_package *p)
{
	size_t i;

	if (p == NULL)
		return;
	for (i = 0; i < p->nshares; i++) {
		OPENSSL_free(p->share[i].sealed);
		X509_free(p->share[i].cert);
	}
	OPENSSL_free(p->der);
	X509_free(p->cert);
	X509_free(p->kra_cert);
	free(p);
}

long long
esc_recovery_package_id(const struct esc_recovery_package *p)
{
	return p->id;
}

const unsigned char *
esc_recovery_package_der(const struct esc_recovery_package *p, size_t *len)
{
	*len = p->derlen;
	return p->der;
}

X509 *
esc_recovery_package_cert(const struct esc_recovery_package *p)
{
	return p->cert;
}

X509 *
esc_recovery_package_kra_cert(const struct esc_recovery_package *p)
{
	return p->kra_cert;
}

const char *
esc_recovery_package_kra_name(const struct esc_recovery_package *p)
{
	return p->kra_name;
}

const char *
esc_recovery_package_key_uri(const struct esc_recovery_package *p)
{
	return p->key_uri;
}

unsigned
esc_recovery_package_threshold(const struct esc_recovery_package *p)
{
	return p->threshold;
}

const char *
esc_recovery_package_record_id(const struct esc_recovery_package *p)
{
	return p->record_id;
}

size_t
esc_recovery_package_nshares(const struct esc_recovery_package *p)
{
	return p->nshares;
}

const unsigned char *
esc_recovery_package_share(const struct esc_recovery_package *p, size_t i, unsigned *x,
			   const unsigned char **commitment, size_t *sealed_len, X509 **cert)
{
	if (i >= p->nshares)
		return NULL;
	*x = p->share[i].x;
	*commitment = p->share[i].commitment;
	*sealed_len = p->share[i].sealedlen;
	*cert = p->share[i].cert != NULL ? p->share[i].cert : p->kra_cert;
	return p->share[i].sealed;
}

static X509 *
cert_from_der(const unsigned char *der, size_t len)
{
	const unsigned char *p = der;
	X509 *x;

	if (der == NULL || len == 0 || len > 64 * 1024)
		return NULL;
	/* The whole buffer must be the one certificate. */
	if ((x = d2i_X509(NULL, &p, (long)len)) != NULL && p != der + len) {
		X509_free(x);
		x = NULL;
	}
	return x;
}

enum esc_err
esc_recovery_package_new(struct esc_ctx *ctx, long long id, const unsigned char *package, size_t package_len,
			 const unsigned char *cert, size_t cert_len, const unsigned char *kra_cert, size_t kra_cert_len,
			 const char *kra_name, const char *key_uri, struct esc_recovery_package **out)
{
	struct esc_recovery_package *p = NULL;
	enum esc_err r;

	if (package == NULL || package_len == 0 || package_len > PACKAGE_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the package is empty or too large", id);
	if (kra_name == NULL || strlen(kra_name) >= sizeof(p->kra_name) || key_uri == NULL ||
	    strlen(key_uri) >= sizeof(p->key_uri))
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the KRA's name or key URI is too long", id);
	/*
	 * The URI only selects the key on the card; it must still be a clean one
	 * (no PIN, no module: esc_token_uri_check's message says which, and
	 * never holds a PIN).
	 */
	if (esc_token_uri_check(ctx, key_uri) != ESC_OK) {
		char why[ESC_ERRMSG_MAX];

		snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the KRA's key URI is refused: %s", id, why);
	}
	if ((p = calloc(1, sizeof(*p))) == NULL || (p->der = OPENSSL_malloc(package_len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((p->cert = cert_from_der(cert, cert_len)) == NULL ||
	    (p->kra_cert = cert_from_der(kra_cert, kra_cert_len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: a certificate of the package does not decode", id);
		goto out;
	}
	memcpy(p->der, package, package_len);
	p->derlen = package_len;
	p->id = id;
	copy(p->kra_name, sizeof(p->kra_name), kra_name);
	copy(p->key_uri, sizeof(p->key_uri), key_uri);
	*out = p;
	p = NULL; /* transferred */
	r = ESC_OK;
out:
	ERR_clear_error();
	esc_recovery_package_free(p);
	return r;
}

enum esc_err
esc_recovery_package_add_share(struct esc_ctx *ctx, struct esc_recovery_package *p, const char *record_id,
			       unsigned threshold, unsigned x, const unsigned char commitment[32],
			       const unsigned char *sealed, size_t sealed_len, const unsigned char *cert,
			       size_t cert_len)
{
	size_t i;

	if (record_id == NULL || strlen(record_id) != ESC_RECORD_ID_LEN || threshold < 2 ||
	    threshold > ESC_SHAMIR_MAX_SHARES || x < 1 || x > 255 || commitment == NULL || sealed == NULL ||
	    sealed_len == 0 || sealed_len > SHARE_SEALED_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: a share of the package is malformed", p->id);
	if (p->nshares == ESC_SHAMIR_MAX_SHARES ||
	    (p->nshares > 0 && (p->threshold != threshold || strcmp(p->record_id, record_id) != 0)))
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "request %lld: the package's shares disagree on their record or k, or are too many",
				 p->id);
	for (i = 0; i < p->nshares; i++)
		if (p->share[i].x == x)
			return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the package holds share x = %u twice",
					 p->id, x);
	if ((p->share[p->nshares].sealed = OPENSSL_memdup(sealed, sealed_len)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if (cert != NULL && (p->share[p->nshares].cert = cert_from_der(cert, cert_len)) == NULL) {
		ERR_clear_error();
		OPENSSL_free(p->share[p->nshares].sealed);
		p->share[p->nshares].sealed = NULL;
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: a share's certificate does not decode", p->id);
	}
	p->share[p->nshares].sealedlen = sealed_len;
	p->share[p->nshares].x = x;
	memcpy(p->share[p->nshares].commitment, commitment, 32);
	p->nshares++;
	p->threshold = threshold;
	copy(p->record_id, sizeof(p->record_id), record_id);
	return ESC_OK;
}

/*
 * A released version 2 request's shares that its KRA can open: its own
 * (sealed to its card by archival) and those contributed (re-sealed to it).
 * None: a version 1 request.  Fewer than k: refused, saying how many are in.
 */
static enum esc_err
load_shares(struct esc_ctx *ctx, struct esc_store *st, struct esc_recovery_package *p)
{
	PGresult *res = NULL;
	char sid[24];
	const char *v[1] = {sid};
	int i, rows, total, yes = 0;
	long len = 0;
	enum esc_err r;

	snprintf(sid, sizeof(sid), "%lld", p->id);
	if ((r = esc_store_exec(ctx, st,
				"SELECT s.x, s.threshold, encode(s.commitment, 'hex'), encode(coalesce(s.contributed, "
				"s.sealed), 'hex'), s.kra_id = r.kra_id OR s.contributed IS NOT NULL, (SELECT count(*) "
				"FROM recovery_shares t WHERE t.request_id = r.id) FROM recovery_shares s JOIN "
				"recovery_requests r ON r.id = s.request_id WHERE s.request_id = $1 ORDER BY s.x",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if (rows == 0) {
		r = ESC_OK;
		goto out;
	}
	total = (int)strtol(PQgetvalue(res, 0, 5), NULL, 10);
	p->threshold = (unsigned)strtoul(PQgetvalue(res, 0, 1), NULL, 10);
	if (p->threshold < 2 || p->threshold > ESC_SHAMIR_MAX_SHARES || rows > ESC_SHAMIR_MAX_SHARES) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "request %lld's shares are malformed: tampering", p->id);
		goto out;
	}
	for (i = 0; i < rows; i++) {
		unsigned char *c;

		if (strcmp(PQgetvalue(res, i, 4), "t") != 0)
			continue;
		p->share[p->nshares].x = (unsigned)strtoul(PQgetvalue(res, i, 0), NULL, 10);
		if ((c = OPENSSL_hexstr2buf(PQgetvalue(res, i, 2), &len)) == NULL || len != 32) {
			OPENSSL_free(c);
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld's stored shares are unreadable", p->id);
			goto out;
		}
		memcpy(p->share[p->nshares].commitment, c, 32);
		OPENSSL_free(c);
		if ((p->share[p->nshares].sealed = OPENSSL_hexstr2buf(PQgetvalue(res, i, 3), &len)) == NULL ||
		    len <= 0) {
			p->nshares++; /* freed with p */
			r = esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld's stored shares are unreadable", p->id);
			goto out;
		}
		p->share[p->nshares].sealedlen = (size_t)len;
		/* Its own share may name the KRA's certificate before a renewal; contributed ones the one now. */
		if ((r = esc_kra_envelope_cert(ctx, st, p->kra_name, p->share[p->nshares].sealed, (size_t)len,
					       p->kra_cert, &p->share[p->nshares].cert, &yes)) != ESC_OK) {
			p->nshares++;
			goto out;
		}
		p->nshares++;
	}
	if (p->nshares < p->threshold) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "request %lld has %zu of the %u shares it needs (its KRA's own included; %d KRAs hold "
			      "one): %zu more KRA(s) of the record's set must run 'p11escrow recovery contribute "
			      "%lld' first",
			      p->id, p->nshares, p->threshold, total, p->threshold - p->nshares, p->id);
		goto out;
	}
	r = ESC_OK;
out:
	ERR_clear_error();
	PQclear(res);
	return r;
}

/*
 * Request id with every check completion makes: actor is the KRA account the
 * request names, that KRA is active with an unexpired certificate, the
 * request is released.  lock: inside the caller's transaction, lock the row.
 */
static enum esc_err
load_released(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id, int lock,
	      struct esc_recovery_package **out)
{
	static const char q[] = "SELECT r.state, r.kra_id, encode(r.package, 'hex'), " KRA_STATE_SQL ", k.certificate, "
				"k.key_uri, k.name, coalesce(" OVERDUE_SQL ", false), " TTL_HOURS_SQL
				", " ESC_ARCHIVE_ROW_SQL " FROM recovery_requests r JOIN kras k ON "
				"k.id = r.kra_id JOIN archive_records a ON a.id = r.record_id WHERE r.id = $1";
	static const char q_lock[] =
		"SELECT r.state, r.kra_id, encode(r.package, 'hex'), " KRA_STATE_SQL ", k.certificate, "
		"k.key_uri, k.name, coalesce(" OVERDUE_SQL ", false), " TTL_HOURS_SQL ", " ESC_ARCHIVE_ROW_SQL
		" FROM recovery_requests r JOIN kras k "
		"ON k.id = r.kra_id JOIN archive_records a ON a.id = r.record_id WHERE r.id = $1 "
		"FOR UPDATE OF r";
	struct esc_archive_row row;
	struct esc_recovery_package *p = NULL;
	PGresult *res = NULL;
	char sid[24];
	const char *v[1] = {sid};
	long pkglen = 0;
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_KRA)) != ESC_OK)
		return r;
	snprintf(sid, sizeof(sid), "%lld", id);
	if ((r = esc_store_exec(ctx, st, lock ? q_lock : q, 1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
		goto out;
	}
	/* Only the KRA the request names; never another, never a retired one. */
	if (strtoll(PQgetvalue(res, 0, 1), NULL, 10) != esc_account_kra_id(actor)) {
		r = esc_error(ctx, ESC_ERR_DENIED, "request %lld is not addressed to account '%s' (its KRA is '%s')",
			      id, esc_account_name(actor), PQgetvalue(res, 0, 6));
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 3), "active") != 0) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      strcmp(PQgetvalue(res, 0, 3), "revoked") == 0 ? "KRA '%s''s certificate is revoked"
									    : "KRA '%s' is retired",
			      PQgetvalue(res, 0, 6));
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "released") != 0) {
		r = esc_error(ctx, ESC_ERR_STATE, "request %lld is %s, not released%s", id, PQgetvalue(res, 0, 0),
			      strcmp(PQgetvalue(res, 0, 0), "completed") == 0 ? ": a package completes once" : "");
		goto out;
	}
	/* Past its time the package is refused even before the sweep (esc_recovery_expire) deletes it. */
	if (strcmp(PQgetvalue(res, 0, 7), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "request %lld's package expired: released more than %s hour(s) ago (policy "
			      "release_ttl_hours); file a new request",
			      id, PQgetvalue(res, 0, 8));
		goto out;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* The key goes to the KRA with this certificate: the row must still be the certificate's. */
	esc_archive_row_get(res, 0, 9, &row);
	if ((r = esc_archive_row_check(ctx, &row, &p->cert, NULL)) != ESC_OK)
		goto out;
	if ((p->kra_cert = esc_store_cert_from_text(PQgetvalue(res, 0, 4))) == NULL ||
	    (p->der = OPENSSL_hexstr2buf(PQgetvalue(res, 0, 2), &pkglen)) == NULL || pkglen <= 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld's stored data is unreadable", id);
		goto out;
	}
	p->derlen = (size_t)pkglen;
	if (X509_cmp_current_time(X509_get0_notAfter(p->kra_cert)) <= 0) {
		r = esc_error(ctx, ESC_ERR_DENIED, "KRA '%s''s certificate has expired", PQgetvalue(res, 0, 6));
		goto out;
	}
	/* Released before the KRA's certificate was renewed: addressed to the earlier one (the same key). */
	{
		X509 *named = NULL;
		int yes = 0;

		if ((r = esc_kra_envelope_cert(ctx, st, PQgetvalue(res, 0, 6), p->der, p->derlen, p->kra_cert, &named,
					       &yes)) != ESC_OK)
			goto out;
		X509_free(p->kra_cert);
		p->kra_cert = named;
	}
	p->id = id;
	copy(p->kra_name, sizeof(p->kra_name), PQgetvalue(res, 0, 6));
	copy(p->key_uri, sizeof(p->key_uri), PQgetvalue(res, 0, 5));
	copy(p->record_id, sizeof(p->record_id), row.id);
	if ((r = load_shares(ctx, st, p)) != ESC_OK)
		goto out;
	*out = p;
	p = NULL; /* transferred */
	r = ESC_OK;
out:
	ERR_clear_error();
	esc_recovery_package_free(p);
	PQclear(res);
	return r;
}

/* ---- Where the key goes: a PKCS#12, a token, or an envelope to a certificate ------------------------------- */

#define LABEL_MAX 128	    /* CKA_LABEL of a key written to a token (esc_token_import_key) */
#define DESTINATION_MAX 600 /* what the audit event says about the destination */

struct esc_recovery_output {
	enum esc_recovery_form form;
	const struct esc_secret *password; /* P12, borrowed */
	struct esc_token *target;	   /* TOKEN, borrowed */
	char label[LABEL_MAX + 1];	   /* TOKEN; "" = the certificate's common name */
	struct esc_token_key *written;	   /* TOKEN: the objects written, until taken back */
	X509 *recipient;		   /* CERT */
	int pem;			   /* CERT */
	unsigned char *data;		   /* P12, CERT: secure memory */
	size_t datalen;
	char destination[DESTINATION_MAX + 1];
};

const char *
esc_recovery_form_name(enum esc_recovery_form f)
{
	switch (f) {
	case ESC_RECOVERY_TOKEN:
		return "token";
	case ESC_RECOVERY_CERT:
		return "cert";
	case ESC_RECOVERY_P12:
		break;
	}
	return "p12";
}

static enum esc_err
output_new(struct esc_ctx *ctx, enum esc_recovery_form form, struct esc_recovery_output **out)
{
	struct esc_recovery_output *o;

	if ((o = calloc(1, sizeof(*o))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	o->form = form;
	*out = o;
	return ESC_OK;
}

enum esc_err
esc_recovery_output_p12(struct esc_ctx *ctx, const struct esc_secret *password, struct esc_recovery_output **out)
{
	enum esc_err r;

	if ((r = output_new(ctx, ESC_RECOVERY_P12, out)) == ESC_OK)
		(*out)->password = password;
	return r;
}

/* Text the audit trail and a token may carry: no control characters. */
static int
printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

enum esc_err
esc_recovery_output_token(struct esc_ctx *ctx, struct esc_token *target, const char *label,
			  struct esc_recovery_output **out)
{
	enum esc_err r;

	if (label != NULL && (*label == '\0' || strlen(label) > LABEL_MAX || !printable(label)))
		return esc_error(ctx, ESC_ERR_USAGE, "a key label has 1..%d bytes and no control characters",
				 LABEL_MAX);
	if ((r = output_new(ctx, ESC_RECOVERY_TOKEN, out)) != ESC_OK)
		return r;
	(*out)->target = target;
	copy((*out)->label, sizeof((*out)->label), label);
	return ESC_OK;
}

/*
 * "SHA256:AB:CD:…, subject 'CN=Alice,O=Example'": a certificate as the
 * audit trail names it.  What identifies it comes first: the trail keeps
 * an event's first 511 characters.
 */
static void
cert_destination(X509 *x, char *buf, size_t len)
{
	char fp[ESC_FINGERPRINT_MAX], *subject = esc_name_to_string(X509_get_subject_name(x));

	esc_cert_fingerprint(x, fp);
	ERR_clear_error();
	snprintf(buf, len, "%s, subject '%.200s'", fp, subject != NULL ? subject : "?");
	free(subject);
}

enum esc_err
esc_recovery_output_cert(struct esc_ctx *ctx, X509 *recipient, int pem, struct esc_recovery_output **out)
{
	EVP_PKEY *pub = X509_get0_pubkey(recipient);
	uint32_t ku = X509_get_key_usage(recipient);
	char who[DESTINATION_MAX + 1];
	enum esc_err r;

	ERR_clear_error();
	cert_destination(recipient, who, sizeof(who));
	if (X509_cmp_current_time(X509_get0_notAfter(recipient)) <= 0)
		return esc_error(ctx, ESC_ERR_STATE,
				 "the recipient certificate %s has expired: nothing is encrypted to it", who);
	if (X509_cmp_current_time(X509_get0_notBefore(recipient)) >= 0)
		return esc_error(ctx, ESC_ERR_STATE, "the recipient certificate %s is not valid yet", who);
	if (pub != NULL && EVP_PKEY_is_a(pub, "RSA")) {
		if (EVP_PKEY_get_bits(pub) < 2048)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the recipient certificate %s has an RSA key of %d bits: at least 2048 are "
					 "needed",
					 who, EVP_PKEY_get_bits(pub));
		/* No keyUsage extension (ku all ones) allows every use (RFC 5280 4.2.1.3). */
		if ((ku & KU_KEY_ENCIPHERMENT) == 0)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the recipient certificate %s does not allow key encipherment (keyUsage)",
					 who);
	} else if (pub != NULL && EVP_PKEY_is_a(pub, "EC")) {
		if ((ku & KU_KEY_AGREEMENT) == 0)
			return esc_error(ctx, ESC_ERR_BAD_INPUT,
					 "the recipient certificate %s does not allow key agreement (keyUsage)", who);
	} else {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "the recipient certificate %s has neither an RSA nor an EC key", who);
	}
	if ((r = output_new(ctx, ESC_RECOVERY_CERT, out)) != ESC_OK)
		return r;
	X509_up_ref(recipient);
	(*out)->recipient = recipient;
	(*out)->pem = pem != 0;
	return ESC_OK;
}

enum esc_recovery_form
esc_recovery_output_form(const struct esc_recovery_output *o)
{
	return o->form;
}

const unsigned char *
esc_recovery_output_data(const struct esc_recovery_output *o, size_t *len)
{
	*len = o->datalen;
	return o->data;
}

const char *
esc_recovery_output_destination(const struct esc_recovery_output *o)
{
	return o->destination;
}

enum esc_err
esc_recovery_output_undo(struct esc_ctx *ctx, struct esc_recovery_output *o)
{
	enum esc_err r = ESC_OK;

	if (o->data != NULL)
		OPENSSL_secure_clear_free(o->data, o->datalen);
	o->data = NULL;
	o->datalen = 0;
	if (o->written != NULL) {
		char idhex[2 * 64 + 1] = "";
		const unsigned char *id;
		size_t idlen = 0, i;

		id = esc_token_key_id(o->written, &idlen);
		for (i = 0; i < idlen && i < 64; i++)
			snprintf(idhex + 2 * i, sizeof(idhex) - 2 * i, "%02x", id[i]);
		if ((r = esc_token_destroy_key(ctx, o->target, o->written)) != ESC_OK) {
			char why[ESC_ERRMSG_MAX];

			snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
			r = esc_error(ctx, r,
				      "the key written to token '%s' could not be removed again (%.300s): remove the "
				      "objects with CKA_ID %s by hand",
				      esc_token_label(o->target), why, idhex);
		}
		esc_token_key_free(o->written);
		o->written = NULL;
	}
	o->destination[0] = '\0';
	return r;
}

void
esc_recovery_output_free(struct esc_recovery_output *o)
{
	if (o == NULL)
		return;
	if (o->data != NULL)
		OPENSSL_secure_clear_free(o->data, o->datalen);
	esc_token_key_free(o->written);
	X509_free(o->recipient);
	free(o);
}

/*
 * A delivery failed after the key reached its destination: take it back,
 * keeping the first failure's code, and saying so if that failed too.
 */
static void
undo_after_failure(struct esc_ctx *ctx, struct esc_recovery_output *o)
{
	char first[ESC_ERRMSG_MAX];
	enum esc_err code = esc_ctx_errcode(ctx);

	snprintf(first, sizeof(first), "%s", esc_ctx_errmsg(ctx));
	if (esc_recovery_output_undo(ctx, o) != ESC_OK) {
		char second[ESC_ERRMSG_MAX];

		snprintf(second, sizeof(second), "%s", esc_ctx_errmsg(ctx));
		(void)esc_error(ctx, code, "%.400s; %.500s", first, second);
	} else
		(void)esc_error(ctx, code, "%s", first);
}

/* The key and its certificate onto o's token. */
static enum esc_err
deliver_token(struct esc_ctx *ctx, struct esc_recovery_output *o, EVP_PKEY *user, X509 *cert)
{
	struct esc_token_key *k = NULL;
	char label[LABEL_MAX + 1], *uri = NULL;
	enum esc_err r;

	if (o->label[0] != '\0')
		copy(label, sizeof(label), o->label);
	else
		esc_token_default_label(cert, "recovered key", label, sizeof(label));
	if ((r = esc_token_import_key(ctx, o->target, user, cert, label, &k)) != ESC_OK)
		return r;
	o->written = k;
	if ((r = esc_token_key_uri(ctx, o->target, k, &uri)) != ESC_OK) {
		undo_after_failure(ctx, o);
		return r;
	}
	/* Serial and label first: the audit trail keeps an event's first 511 characters. */
	snprintf(o->destination, sizeof(o->destination), "serial %s, key label '%.64s', key %.480s",
		 esc_token_serial(o->target), label, uri);
	free(uri);
	return ESC_OK;
}

/*
 * The PKCS#8 key (as it was archived) and its certificate, both PEM, sealed
 * to o's recipient: RSA-OAEP with SHA-256, or ECDH (esc_envelope_seal).
 */
static enum esc_err
deliver_cert(struct esc_ctx *ctx, struct esc_recovery_output *o, const unsigned char *p8, size_t p8len, X509 *cert)
{
	const enum esc_oaep_hash hash = ESC_OAEP_SHA256;
	BIO *plain = NULL, *pem = NULL;
	BUF_MEM *mem = NULL;
	unsigned char *der = NULL, *buf = NULL;
	size_t derlen = 0, len;
	enum esc_err r;

	/* The content is the key in clear: written only to the secure heap (BIO_s_secmem). */
	if ((plain = BIO_new(BIO_s_secmem())) == NULL ||
	    PEM_write_bio(plain, PEM_STRING_PKCS8INF, "", p8, (long)p8len) <= 0 ||
	    PEM_write_bio_X509(plain, cert) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot write the key and its certificate as PEM");
		goto out;
	}
	BIO_get_mem_ptr(plain, &mem);
	if ((r = esc_envelope_seal(ctx, (const unsigned char *)mem->data, mem->length, &o->recipient, &hash, 1, &der,
				   &derlen)) != ESC_OK)
		goto out;
	if (o->pem) {
		BUF_MEM *pm = NULL;

		if ((pem = BIO_new(BIO_s_mem())) == NULL || PEM_write_bio(pem, "CMS", "", der, (long)derlen) <= 0) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot write the envelope as PEM");
			goto out;
		}
		BIO_get_mem_ptr(pem, &pm);
		len = pm->length;
		if ((buf = OPENSSL_secure_malloc(len)) != NULL)
			memcpy(buf, pm->data, len);
	} else if ((buf = OPENSSL_secure_malloc(len = derlen)) != NULL)
		memcpy(buf, der, len);
	if (buf == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
		goto out;
	}
	o->data = buf;
	o->datalen = len;
	cert_destination(o->recipient, o->destination, sizeof(o->destination));
	r = ESC_OK;
out:
	BIO_free(pem);
	BIO_free(plain);
	free(der);
	return r;
}

/* Deliver the checked key user (p8: its PKCS#8 as archived) with its certificate to o. */
static enum esc_err
deliver(struct esc_ctx *ctx, struct esc_recovery_output *o, EVP_PKEY *user, const unsigned char *p8, size_t p8len,
	X509 *cert)
{
	switch (o->form) {
	case ESC_RECOVERY_TOKEN:
		return deliver_token(ctx, o, user, cert);
	case ESC_RECOVERY_CERT:
		return deliver_cert(ctx, o, p8, p8len, cert);
	case ESC_RECOVERY_P12:
		break;
	}
	o->destination[0] = '\0';
	return make_p12(ctx, user, cert, o->password, &o->data, &o->datalen);
}

/* "as PKCS#12", "onto token serial …", "as CMS … to certificate SHA256:…": the audit event's words. */
static void
delivered_words(enum esc_recovery_form form, const char *destination, char *buf, size_t len)
{
	switch (form) {
	case ESC_RECOVERY_TOKEN:
		snprintf(buf, len, "onto token %s", destination);
		return;
	case ESC_RECOVERY_CERT:
		snprintf(buf, len, "as CMS AuthEnvelopedData encrypted to certificate %s", destination);
		return;
	case ESC_RECOVERY_P12:
		break;
	}
	snprintf(buf, len, "as PKCS#12");
}

/*
 * k of n, on the completer's card: open each share (its own and those
 * contributed, all sealed to this card), check it against its commitment
 * and its binding (this record, its x, k) before anything is combined,
 * combine k of them into the KEK and open the inner layer with it.  Shares
 * and KEK live in secure memory only, wiped on every path.
 */
static enum esc_err
open_shares(struct esc_ctx *ctx, const struct esc_recovery_package *pkg, EVP_PKEY *cardkey, unsigned char **p8,
	    size_t *p8len)
{
	unsigned char *buf = NULL, *shares[ESC_SHAMIR_MAX_SHARES], xs[ESC_SHAMIR_MAX_SHARES];
	size_t i, n = pkg->threshold;
	enum esc_err r;

	if ((buf = OPENSSL_secure_zalloc(n * ESC_KEK_LEN)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	/* Each share opened and checked (commitment, binding) as a re-wrap checks it, before any is combined. */
	for (i = 0; i < n; i++) {
		struct esc_record_share e;

		memset(&e, 0, sizeof(e));
		e.x = pkg->share[i].x;
		memcpy(e.commitment, pkg->share[i].commitment, sizeof(e.commitment));
		e.sealed = pkg->share[i].sealed;
		e.sealedlen = pkg->share[i].sealedlen;
		shares[i] = buf + i * ESC_KEK_LEN;
		xs[i] = (unsigned char)e.x;
		if ((r = esc_share_open(ctx, pkg->record_id, pkg->threshold, &e, cardkey,
					pkg->share[i].cert != NULL ? pkg->share[i].cert : pkg->kra_cert, shares[i])) !=
		    ESC_OK)
			goto out;
	}
	r = esc_shares_open_inner(ctx, pkg->record_id, xs, shares, (unsigned)n, pkg->der, pkg->derlen, p8, p8len);
out:
	OPENSSL_secure_clear_free(buf, n * ESC_KEK_LEN);
	return r;
}

enum esc_err
esc_recovery_open_package_to(struct esc_ctx *ctx, const struct esc_recovery_package *pkg, struct esc_token *card,
			     struct esc_recovery_output *o)
{
	struct esc_token_key *key = NULL;
	EVP_PKEY *cardkey = NULL, *user = NULL;
	PKCS8_PRIV_KEY_INFO *p8inf = NULL;
	unsigned char *p8 = NULL;
	const unsigned char *p;
	size_t p8len = 0;
	enum esc_err r;

	if (o->data != NULL || o->written != NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "an output serves one completion");
	if (pkg->threshold > 1 && pkg->nshares < pkg->threshold)
		return esc_error(ctx, ESC_ERR_STATE,
				 "request %lld has %zu of the %u shares it needs: %zu more KRA(s) of the record's set "
				 "must run 'p11escrow recovery contribute %lld' first",
				 pkg->id, pkg->nshares, pkg->threshold, pkg->threshold - pkg->nshares, pkg->id);
	if (o->form == ESC_RECOVERY_TOKEN) {
		/* The user's key never goes onto the KRA's own card. */
		if (strcmp(esc_token_module_path(o->target), esc_token_module_path(card)) == 0 &&
		    strcmp(esc_token_serial(o->target), esc_token_serial(card)) == 0 &&
		    strcmp(esc_token_label(o->target), esc_token_label(card)) == 0)
			return esc_error(ctx, ESC_ERR_USAGE,
					 "the target token '%s' is the KRA card: the key goes onto the user's token",
					 esc_token_label(card));
		/* Refused before the card decrypts anything: a duplicate, a read-only or unsuitable token. */
		if ((r = esc_token_import_check(ctx, o->target, pkg->cert)) != ESC_OK)
			return r;
	}
	if ((r = esc_token_find_key(ctx, card, pkg->key_uri, &key)) != ESC_OK) {
		if (r == ESC_ERR_KEY_NOT_FOUND)
			r = esc_error(ctx, ESC_ERR_KEY_NOT_FOUND, "card '%s' does not hold the key of KRA '%s'",
				      esc_token_label(card), pkg->kra_name);
		goto out;
	}
	if ((r = esc_token_key_private(ctx, card, key, &cardkey)) != ESC_OK)
		goto out;
	if (pkg->threshold > 1)
		r = open_shares(ctx, pkg, cardkey, &p8, &p8len);
	else
		r = esc_envelope_open(ctx, pkg->der, pkg->derlen, cardkey, pkg->kra_cert, &p8, &p8len);
	if (r != ESC_OK)
		goto out;
	p = p8;
	if ((p8inf = d2i_PKCS8_PRIV_KEY_INFO(NULL, &p, (long)p8len)) == NULL ||
	    (user = EVP_PKCS82PKEY(p8inf)) == NULL) {
		r = esc_error(ctx, ESC_ERR_TAMPERED, "the recovered data is not a private key");
		goto out;
	}
	if (EVP_PKEY_eq(X509_get0_pubkey(pkg->cert), user) != 1) {
		r = esc_error(ctx, ESC_ERR_MISMATCH, "the recovered key does not match the record's certificate");
		goto out;
	}
	r = deliver(ctx, o, user, p8, p8len, pkg->cert);
out:
	ERR_clear_error();
	esc_envelope_plain_free(p8, p8len);
	PKCS8_PRIV_KEY_INFO_free(p8inf);
	EVP_PKEY_free(user);
	EVP_PKEY_free(cardkey);
	esc_token_key_free(key);
	return r;
}

/* Move a PKCS#12 output's bytes to the caller (esc_recovery_p12_free). */
static void
take_p12(struct esc_recovery_output *o, unsigned char **p12, size_t *p12len)
{
	*p12 = o->data;
	*p12len = o->datalen;
	o->data = NULL; /* transferred */
	o->datalen = 0;
}

enum esc_err
esc_recovery_open_package(struct esc_ctx *ctx, const struct esc_recovery_package *pkg, struct esc_token *card,
			  const struct esc_secret *password, unsigned char **p12, size_t *p12len)
{
	struct esc_recovery_output *o = NULL;
	enum esc_err r;

	if ((r = esc_recovery_output_p12(ctx, password, &o)) == ESC_OK &&
	    (r = esc_recovery_open_package_to(ctx, pkg, card, o)) == ESC_OK)
		take_p12(o, p12, p12len);
	esc_recovery_output_free(o);
	return r;
}

static enum esc_err
complete_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
	      struct esc_token *card, struct esc_recovery_output *o)
{
	struct esc_recovery_package *pkg = NULL;
	char sid[24];
	const char *v[1] = {sid};
	int delivered = 0;
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_KRA)) != ESC_OK)
		return r;
	snprintf(sid, sizeof(sid), "%lld", id);
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = load_released(ctx, st, actor, id, 1, &pkg)) != ESC_OK ||
	    (r = esc_recovery_open_package_to(ctx, pkg, card, o)) != ESC_OK)
		goto out;
	delivered = 1;
	if ((r = esc_store_exec(
		     ctx, st,
		     "UPDATE recovery_requests SET state = 'completed', package = NULL, completed_at = now() "
		     "WHERE id = $1 AND state = 'released'",
		     1, v, NULL, NULL, NULL)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"UPDATE recovery_shares SET sealed = NULL, contributed = NULL WHERE request_id = $1", 1,
				v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	{
		char obj[48], words[DESTINATION_MAX + 96], details[DESTINATION_MAX + 256];

		snprintf(obj, sizeof(obj), "request %lld", id);
		delivered_words(o->form, o->destination, words, sizeof(words));
		snprintf(details, sizeof(details),
			 "key decrypted on the KRA card, checked against its certificate, delivered %s", words);
		if ((r = audit_ok(ctx, st, actor, NULL, "recovery.complete", obj, details)) != ESC_OK ||
		    (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	r = ESC_OK;
out:
	esc_store_rollback(st);
	/* Not completed, so not delivered: the token gets its objects back, the bytes are dropped. */
	if (r != ESC_OK && delivered)
		undo_after_failure(ctx, o);
	esc_recovery_package_free(pkg);
	return r;
}

/* ---- k of n: a contributing KRA's share ------------------------------------------------------------------ */

struct esc_recovery_share {
	long long id;
	char record_id[ESC_RECORD_ID_LEN + 1];
	unsigned x, threshold;
	unsigned char commitment[32];
	unsigned char *sealed; /* the share sealed to the contributor's card: ciphertext, not a secret */
	size_t sealedlen;
	X509 *kra_cert; /* the certificate the share is sealed to: the KRA's now, or an earlier one of its key */
	char kra_name[65];
	char key_uri[512];
	X509 *completer_cert; /* the request's KRA's certificate now: the re-sealed share's recipient */
	char completer_name[65];
	char completer_recipient[32];
	/* DER of the two certificates, for esc_recovery_share_parts. */
	unsigned char *kra_der, *completer_der;
	size_t kra_derlen, completer_derlen;
};

void
esc_recovery_share_free(struct esc_recovery_share *s)
{
	if (s == NULL)
		return;
	OPENSSL_free(s->sealed);
	OPENSSL_free(s->kra_der);
	OPENSSL_free(s->completer_der);
	X509_free(s->kra_cert);
	X509_free(s->completer_cert);
	free(s);
}

void
esc_recovery_share_parts(const struct esc_recovery_share *s, struct esc_recovery_share_parts *out)
{
	memset(out, 0, sizeof(*out));
	out->id = s->id;
	out->record_id = s->record_id;
	out->x = s->x;
	out->threshold = s->threshold;
	out->commitment = s->commitment;
	out->sealed = s->sealed;
	out->sealed_len = s->sealedlen;
	out->kra_cert = s->kra_der;
	out->kra_cert_len = s->kra_derlen;
	out->kra_name = s->kra_name;
	out->key_uri = s->key_uri;
	out->completer_cert = s->completer_der;
	out->completer_cert_len = s->completer_derlen;
	out->completer_name = s->completer_name;
	out->completer_recipient = s->completer_recipient;
}

/* x's DER in *der (OPENSSL_malloc'd).  Errors: CRYPTO. */
static enum esc_err
cert_der(struct esc_ctx *ctx, X509 *x, unsigned char **der, size_t *len)
{
	int n;

	*der = NULL;
	if ((n = i2d_X509(x, der)) <= 0)
		return esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot encode a certificate");
	*len = (size_t)n;
	return ESC_OK;
}

/* A name or a recipient form as the service sends it: 1..len-1 printable characters. */
static int
short_text(const char *s, size_t len)
{
	return s != NULL && *s != '\0' && strlen(s) < len && printable(s);
}

enum esc_err
esc_recovery_share_new(struct esc_ctx *ctx, const struct esc_recovery_share_parts *in, struct esc_recovery_share **out)
{
	struct esc_recovery_share *s = NULL;
	enum esc_err r;

	if (in->record_id == NULL || strlen(in->record_id) != ESC_RECORD_ID_LEN || in->x < 1 || in->x > 255 ||
	    in->threshold < 2 || in->threshold > ESC_SHAMIR_MAX_SHARES || in->commitment == NULL ||
	    in->sealed == NULL || in->sealed_len == 0 || in->sealed_len > SHARE_SEALED_MAX ||
	    !short_text(in->kra_name, sizeof(s->kra_name)) || !short_text(in->completer_name, sizeof(s->kra_name)) ||
	    !short_text(in->completer_recipient, sizeof(s->completer_recipient)) || in->key_uri == NULL ||
	    strlen(in->key_uri) >= sizeof(s->key_uri))
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the share is malformed", in->id);
	if (esc_token_uri_check(ctx, in->key_uri) != ESC_OK) {
		char why[ESC_ERRMSG_MAX];

		snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the KRA's key URI is refused: %s", in->id, why);
	}
	if ((s = calloc(1, sizeof(*s))) == NULL || (s->sealed = OPENSSL_memdup(in->sealed, in->sealed_len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((s->kra_cert = cert_from_der(in->kra_cert, in->kra_cert_len)) == NULL ||
	    (s->completer_cert = cert_from_der(in->completer_cert, in->completer_cert_len)) == NULL) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: a certificate of the share does not decode",
			      in->id);
		goto out;
	}
	if ((r = cert_der(ctx, s->kra_cert, &s->kra_der, &s->kra_derlen)) != ESC_OK ||
	    (r = cert_der(ctx, s->completer_cert, &s->completer_der, &s->completer_derlen)) != ESC_OK)
		goto out;
	s->id = in->id;
	s->x = in->x;
	s->threshold = in->threshold;
	s->sealedlen = in->sealed_len;
	memcpy(s->commitment, in->commitment, 32);
	copy(s->record_id, sizeof(s->record_id), in->record_id);
	copy(s->kra_name, sizeof(s->kra_name), in->kra_name);
	copy(s->key_uri, sizeof(s->key_uri), in->key_uri);
	copy(s->completer_name, sizeof(s->completer_name), in->completer_name);
	copy(s->completer_recipient, sizeof(s->completer_recipient), in->completer_recipient);
	*out = s;
	s = NULL; /* transferred */
	r = ESC_OK;
out:
	ERR_clear_error();
	esc_recovery_share_free(s);
	return r;
}

/*
 * The share of released request id that actor's KRA holds, with every
 * check a contribution makes: actor is a KRA account whose KRA holds a
 * share of the request's record, is active (not retired, not revoked),
 * its certificate unexpired, is not the request's KRA (who completes) and
 * has not contributed yet; the request is released and not past its time.
 * lock: inside the caller's transaction, lock the share's row (the
 * contribution is stored under that lock).
 */
static enum esc_err
load_share(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id, int lock,
	   struct esc_recovery_share **out)
{
	static const char q[] =
		"SELECT r.state, r.kra_id = s.kra_id, s.contributed IS NOT NULL, s.x, s.threshold, "
		"encode(s.commitment, 'hex'), encode(s.sealed, 'hex'), " KRA_STATE_SQL ", k.certificate, "
		"k.key_uri, k.name, ck.certificate, ck.recipient, ck.name, r.record_id, coalesce(" OVERDUE_SQL
		", false) FROM recovery_requests r JOIN recovery_shares s ON s.request_id = r.id AND s.kra_id = "
		"$2 JOIN kras k ON k.id = s.kra_id JOIN kras ck ON ck.id = r.kra_id WHERE r.id = $1";
	static const char q_lock[] =
		"SELECT r.state, r.kra_id = s.kra_id, s.contributed IS NOT NULL, s.x, s.threshold, "
		"encode(s.commitment, 'hex'), encode(s.sealed, 'hex'), " KRA_STATE_SQL ", k.certificate, "
		"k.key_uri, k.name, ck.certificate, ck.recipient, ck.name, r.record_id, coalesce(" OVERDUE_SQL
		", false) FROM recovery_requests r JOIN recovery_shares s ON s.request_id = r.id AND s.kra_id = "
		"$2 JOIN kras k ON k.id = s.kra_id JOIN kras ck ON ck.id = r.kra_id WHERE r.id = $1 FOR UPDATE "
		"OF s";
	PGresult *res = NULL;
	struct esc_recovery_share *s = NULL;
	X509 *own = NULL;
	unsigned char *commit = NULL;
	long sealedlen = 0, commitlen = 0;
	char sid[24], kid[24];
	const char *v[2] = {sid, kid};
	int yes = 0;
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_KRA)) != ESC_OK)
		return r;
	snprintf(sid, sizeof(sid), "%lld", id);
	snprintf(kid, sizeof(kid), "%lld", esc_account_kra_id(actor));
	if ((r = esc_store_exec(ctx, st, lock ? q_lock : q, 2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "request %lld holds no share for account '%s''s KRA: it is not released, not a k-of-n "
			      "recovery, or the record's KRA set does not include this KRA",
			      id, esc_account_name(actor));
		goto out;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	s->id = id;
	copy(s->kra_name, sizeof(s->kra_name), PQgetvalue(res, 0, 10));
	copy(s->key_uri, sizeof(s->key_uri), PQgetvalue(res, 0, 9));
	copy(s->completer_name, sizeof(s->completer_name), PQgetvalue(res, 0, 13));
	copy(s->completer_recipient, sizeof(s->completer_recipient), PQgetvalue(res, 0, 12));
	copy(s->record_id, sizeof(s->record_id), PQgetvalue(res, 0, 14));
	s->x = (unsigned)strtoul(PQgetvalue(res, 0, 3), NULL, 10);
	s->threshold = (unsigned)strtoul(PQgetvalue(res, 0, 4), NULL, 10);
	if (strcmp(PQgetvalue(res, 0, 0), "released") != 0 || strcmp(PQgetvalue(res, 0, 15), "t") == 0) {
		r = esc_error(
			ctx, ESC_ERR_STATE, "request %lld is %s: shares are contributed to a released request only", id,
			strcmp(PQgetvalue(res, 0, 15), "t") == 0 ? "past its release time" : PQgetvalue(res, 0, 0));
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "KRA '%s' completes request %lld: its own share is opened at completion, not contributed",
			      s->kra_name, id);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_STATE,
			      "KRA '%s' has already contributed its share to request %lld: a KRA counts once",
			      s->kra_name, id);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 7), "active") != 0) {
		r = esc_error(ctx, ESC_ERR_DENIED, "KRA '%s' is %s: it contributes nothing", s->kra_name,
			      strcmp(PQgetvalue(res, 0, 7), "revoked") == 0 ? "revoked" : "retired");
		goto out;
	}
	if ((own = esc_store_cert_from_text(PQgetvalue(res, 0, 8))) == NULL ||
	    (s->completer_cert = esc_store_cert_from_text(PQgetvalue(res, 0, 11))) == NULL ||
	    (commit = OPENSSL_hexstr2buf(PQgetvalue(res, 0, 5), &commitlen)) == NULL || commitlen != 32 ||
	    (s->sealed = OPENSSL_hexstr2buf(PQgetvalue(res, 0, 6), &sealedlen)) == NULL || sealedlen <= 0) {
		r = esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld's stored share is unreadable", id);
		goto out;
	}
	s->sealedlen = (size_t)sealedlen;
	memcpy(s->commitment, commit, 32);
	if (X509_cmp_current_time(X509_get0_notAfter(own)) <= 0) {
		r = esc_error(ctx, ESC_ERR_DENIED, "KRA '%s''s certificate has expired: it contributes nothing",
			      s->kra_name);
		goto out;
	}
	/* Sealed before the KRA's certificate was renewed: addressed to the earlier one (the same key). */
	if ((r = esc_kra_envelope_cert(ctx, st, s->kra_name, s->sealed, s->sealedlen, own, &s->kra_cert, &yes)) !=
	    ESC_OK)
		goto out;
	if (!yes) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "KRA '%s''s share of request %lld is sealed to none of its certificates: tampering",
			      s->kra_name, id);
		goto out;
	}
	if ((r = cert_der(ctx, s->kra_cert, &s->kra_der, &s->kra_derlen)) != ESC_OK ||
	    (r = cert_der(ctx, s->completer_cert, &s->completer_der, &s->completer_derlen)) != ESC_OK)
		goto out;
	*out = s;
	s = NULL; /* transferred */
	r = ESC_OK;
out:
	ERR_clear_error();
	esc_recovery_share_free(s);
	OPENSSL_free(commit);
	X509_free(own);
	PQclear(res);
	return r;
}

enum esc_err
esc_recovery_share_reseal(struct esc_ctx *ctx, const struct esc_recovery_share *s, struct esc_token *card,
			  unsigned char **out, size_t *outlen)
{
	struct esc_token_key *key = NULL;
	EVP_PKEY *cardkey = NULL;
	X509 *recips[1] = {s->completer_cert};
	enum esc_oaep_hash hash = esc_oaep_hash_of_recipient(s->completer_recipient);
	unsigned char *plain = NULL, md[32], share[ESC_KEK_LEN];
	size_t plainlen = 0;
	unsigned int mdlen = 0;
	enum esc_err r;

	if ((r = esc_token_find_key(ctx, card, s->key_uri, &key)) != ESC_OK) {
		if (r == ESC_ERR_KEY_NOT_FOUND)
			r = esc_error(ctx, ESC_ERR_KEY_NOT_FOUND, "card '%s' does not hold the key of KRA '%s'",
				      esc_token_label(card), s->kra_name);
		goto out;
	}
	/* The card's key must be the one of the certificate the share is sealed to. */
	if ((r = esc_token_key_private(ctx, card, key, &cardkey)) != ESC_OK)
		goto out;
	if ((r = esc_envelope_open(ctx, s->sealed, s->sealedlen, cardkey, s->kra_cert, &plain, &plainlen)) != ESC_OK) {
		char why[256];

		snprintf(why, sizeof(why), "%s", esc_ctx_errmsg(ctx));
		r = esc_error(ctx, r, "KRA '%s''s share of request %lld does not open on card '%s': %s", s->kra_name,
			      s->id, esc_token_label(card), why);
		goto out;
	}
	if (!EVP_Digest(plain, plainlen, md, &mdlen, EVP_sha256(), NULL) || CRYPTO_memcmp(md, s->commitment, 32) != 0) {
		r = esc_error(ctx, ESC_ERR_TAMPERED,
			      "KRA '%s''s share of request %lld does not match the record's commitment: damaged or "
			      "swapped; nothing contributed",
			      s->kra_name, s->id);
		goto out;
	}
	/* Its binding: this record's share, at its x, for its k. */
	if ((r = esc_share_plain_parse(ctx, plain, plainlen, s->record_id, s->x, s->threshold, share)) != ESC_OK)
		goto out;
	r = esc_envelope_seal(ctx, plain, plainlen, recips, &hash, 1, out, outlen);
out:
	OPENSSL_cleanse(share, sizeof(share));
	esc_envelope_plain_free(plain, plainlen);
	EVP_PKEY_free(cardkey);
	esc_token_key_free(key);
	ERR_clear_error();
	return r;
}

/*
 * Store share s (loaded under its row's lock, in the caller's
 * transaction) re-sealed, as resealed, and audit the contribution with
 * how many shares are in.  The service cannot read what it stores: it
 * checks only that it is an envelope addressed to the completer.
 */
static enum esc_err
store_share(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor,
	    const struct esc_recovery_share *s, const unsigned char *resealed, size_t resealedlen, int *have, int *need)
{
	PGresult *res = NULL;
	char sid[24], kid[24], aid[24];
	const char *v[4] = {sid, kid, (const char *)resealed, aid};
	int len[4] = {0, 0, (int)resealedlen, 0}, fmt[4] = {0, 0, 1, 0}, yes = 0;
	enum esc_err r;

	if (resealed == NULL || resealedlen == 0 || resealedlen > SHARE_SEALED_MAX)
		return esc_error(ctx, ESC_ERR_BAD_INPUT, "request %lld: the re-sealed share is empty or too large",
				 s->id);
	if (esc_envelope_has_recipient(ctx, resealed, resealedlen, s->completer_cert, &yes) != ESC_OK || !yes) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_BAD_INPUT,
				 "request %lld: the re-sealed share is not an envelope to KRA '%s''s certificate: "
				 "nothing stored",
				 s->id, s->completer_name);
	}
	snprintf(sid, sizeof(sid), "%lld", s->id);
	snprintf(kid, sizeof(kid), "%lld", esc_account_kra_id(actor));
	snprintf(aid, sizeof(aid), "%lld", esc_account_id(actor));
	if ((r = esc_store_exec(ctx, st,
				"UPDATE recovery_shares SET contributed = $3, contributed_by = $4, contributed_at = "
				"now() WHERE request_id = $1 AND kra_id = $2 AND contributed IS NULL",
				4, v, len, fmt, NULL)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"SELECT count(*) FILTER (WHERE s.contributed IS NOT NULL OR s.kra_id = r.kra_id) FROM "
				"recovery_shares s JOIN recovery_requests r ON r.id = s.request_id WHERE r.id = $1",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	*have = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
	*need = (int)s->threshold;
	{
		char obj[48], details[256];

		snprintf(obj, sizeof(obj), "request %lld", s->id);
		snprintf(details, sizeof(details),
			 "KRA '%s' opened its share (x = %u) on its card and re-sealed it to KRA '%s'; %d of %u in",
			 s->kra_name, s->x, s->completer_name, *have, s->threshold);
		r = audit_ok(ctx, st, actor, NULL, "recovery.contribute", obj, details);
	}
out:
	PQclear(res);
	return r;
}

/*
 * A contributing KRA (not the one the request names), on the service
 * host: the share loaded under its lock, opened and re-sealed on the
 * card (esc_recovery_share_reseal, as at a workstation), stored — one
 * transaction.  The plaintext share exists only in secure memory, there.
 */
static enum esc_err
contribute_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		struct esc_token *card, int *have, int *need)
{
	struct esc_recovery_share *s = NULL;
	unsigned char *resealed = NULL;
	size_t resealedlen = 0;
	enum esc_err r;

	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = load_share(ctx, st, actor, id, 1, &s)) != ESC_OK ||
	    (r = esc_recovery_share_reseal(ctx, s, card, &resealed, &resealedlen)) != ESC_OK ||
	    (r = store_share(ctx, st, actor, s, resealed, resealedlen, have, need)) != ESC_OK ||
	    (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	esc_store_rollback(st);
	free(resealed);
	esc_recovery_share_free(s);
	return r;
}

enum esc_err
esc_recovery_contribute(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
			struct esc_token *card, int *have, int *need)
{
	struct esc_store_retry t = {0};
	int h = 0, n = 0;
	enum esc_err r;

	do
		r = contribute_impl(ctx, st, actor, id, card, &h, &n);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		audit_failed(ctx, st, actor, NULL, "recovery.contribute", id, r);
		return r;
	}
	if (have != NULL)
		*have = h;
	if (need != NULL)
		*need = n;
	return ESC_OK;
}

static enum esc_err
share_fetch_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		 struct esc_recovery_share **out)
{
	struct esc_recovery_share *s = NULL;
	char obj[48], details[256];
	enum esc_err r;

	if ((r = load_share(ctx, st, actor, id, 0, &s)) != ESC_OK)
		return r;
	snprintf(obj, sizeof(obj), "request %lld", id);
	snprintf(details, sizeof(details),
		 "share (x = %u) fetched by KRA '%s' to re-seal to KRA '%s' (still ciphertext to its card)", s->x,
		 s->kra_name, s->completer_name);
	/* No event, no share. */
	if ((r = audit_ok(ctx, st, actor, NULL, "recovery.share.fetch", obj, details)) != ESC_OK) {
		esc_recovery_share_free(s);
		return r;
	}
	*out = s;
	return ESC_OK;
}

enum esc_err
esc_recovery_share_fetch(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
			 struct esc_recovery_share **out)
{
	enum esc_err r = share_fetch_impl(ctx, st, actor, id, out);

	if (r != ESC_OK)
		audit_failed(ctx, st, actor, NULL, "recovery.share.fetch", id, r);
	return r;
}

static enum esc_err
share_store_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		 const unsigned char *resealed, size_t resealedlen, int *have, int *need)
{
	struct esc_recovery_share *s = NULL;
	enum esc_err r;

	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	/* Every check again, under the row's lock: released, not overdue, not the completer, once per KRA. */
	if ((r = load_share(ctx, st, actor, id, 1, &s)) != ESC_OK ||
	    (r = store_share(ctx, st, actor, s, resealed, resealedlen, have, need)) != ESC_OK ||
	    (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	r = ESC_OK;
out:
	esc_store_rollback(st);
	esc_recovery_share_free(s);
	return r;
}

enum esc_err
esc_recovery_share_store(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
			 const unsigned char *resealed, size_t resealedlen, int *have, int *need)
{
	struct esc_store_retry t = {0};
	int h = 0, n = 0;
	enum esc_err r;

	do
		r = share_store_impl(ctx, st, actor, id, resealed, resealedlen, &h, &n);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		audit_failed(ctx, st, actor, NULL, "recovery.contribute", id, r);
		return r;
	}
	if (have != NULL)
		*have = h;
	if (need != NULL)
		*need = n;
	return ESC_OK;
}

enum esc_err
esc_recovery_complete_to(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
			 struct esc_token *card, struct esc_recovery_output *o)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	/* A retry decrypts on the card again: nothing of a failed attempt is kept. */
	do
		r = complete_impl(ctx, st, actor, id, card, o);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		audit_failed(ctx, st, actor, NULL, "recovery.complete", id, r);
	return r;
}

enum esc_err
esc_recovery_complete(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		      struct esc_token *card, const struct esc_secret *password, unsigned char **p12, size_t *p12len)
{
	struct esc_recovery_output *o = NULL;
	enum esc_err r;

	if ((r = esc_recovery_output_p12(ctx, password, &o)) == ESC_OK &&
	    (r = esc_recovery_complete_to(ctx, st, actor, id, card, o)) == ESC_OK)
		take_p12(o, p12, p12len);
	esc_recovery_output_free(o);
	return r;
}

static enum esc_err
fetch_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
	   struct esc_recovery_package **out)
{
	struct esc_recovery_package *pkg = NULL;
	char obj[48], details[160];
	enum esc_err r;

	if ((r = load_released(ctx, st, actor, id, 0, &pkg)) != ESC_OK)
		return r;
	snprintf(obj, sizeof(obj), "request %lld", id);
	if (pkg->threshold > 1)
		snprintf(details, sizeof(details),
			 "package fetched by KRA '%s' with %zu of the %u shares needed (still ciphertext to its card)",
			 pkg->kra_name, pkg->nshares, pkg->threshold);
	else
		snprintf(details, sizeof(details), "package fetched by KRA '%s' (still ciphertext to its card)",
			 pkg->kra_name);
	/* No event, no package. */
	if ((r = audit_ok(ctx, st, actor, NULL, "recovery.fetch", obj, details)) != ESC_OK) {
		esc_recovery_package_free(pkg);
		return r;
	}
	*out = pkg;
	return ESC_OK;
}

enum esc_err
esc_recovery_fetch(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		   struct esc_recovery_package **out)
{
	enum esc_err r = fetch_impl(ctx, st, actor, id, out);

	if (r != ESC_OK)
		audit_failed(ctx, st, actor, NULL, "recovery.fetch", id, r);
	return r;
}

static enum esc_err
finish_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
	    const char *details)
{
	PGresult *res = NULL;
	char sid[24], kid[24];
	const char *v[2] = {sid, kid};
	enum esc_err r;

	if ((r = esc_account_require(ctx, actor, ESC_ROLE_KRA)) != ESC_OK)
		return r;
	snprintf(sid, sizeof(sid), "%lld", id);
	snprintf(kid, sizeof(kid), "%lld", esc_account_kra_id(actor));
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	/* One statement decides: a second call, or another KRA, changes no row. */
	if ((r = esc_store_exec(
		     ctx, st,
		     "UPDATE recovery_requests r SET state = 'completed', package = NULL, completed_at = now() "
		     "WHERE r.id = $1 AND r.state = 'released' AND r.kra_id = $2 AND NOT " OVERDUE_SQL
		     " RETURNING r.id",
		     2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		/* Say why, from the row as it is now. */
		PQclear(res);
		res = NULL;
		if ((r = esc_store_exec(ctx, st,
					"SELECT r.state, r.kra_id, k.name, coalesce(" OVERDUE_SQL
					", false), " TTL_HOURS_SQL
					" FROM recovery_requests r JOIN kras k ON k.id = r.kra_id WHERE r.id = $1",
					1, v, NULL, NULL, &res)) != ESC_OK)
			goto out;
		if (PQntuples(res) != 1)
			r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
		else if (strcmp(PQgetvalue(res, 0, 1), kid) != 0)
			r = esc_error(ctx, ESC_ERR_DENIED,
				      "request %lld is not addressed to account '%s' (its KRA is '%s')", id,
				      esc_account_name(actor), PQgetvalue(res, 0, 2));
		else if (strcmp(PQgetvalue(res, 0, 0), "released") == 0 && strcmp(PQgetvalue(res, 0, 3), "t") == 0)
			r = esc_error(ctx, ESC_ERR_STATE,
				      "request %lld's package expired: released more than %s hour(s) ago (policy "
				      "release_ttl_hours); file a new request",
				      id, PQgetvalue(res, 0, 4));
		else
			r = esc_error(
				ctx, ESC_ERR_STATE, "request %lld is %s, not released%s", id, PQgetvalue(res, 0, 0),
				strcmp(PQgetvalue(res, 0, 0), "completed") == 0 ? ": a package completes once" : "");
		goto out;
	}
	/* k of n: the shares go with the package (who contributed when stays). */
	if ((r = esc_store_exec(ctx, st,
				"UPDATE recovery_shares SET sealed = NULL, contributed = NULL WHERE request_id = $1", 1,
				v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	{
		char obj[48];

		snprintf(obj, sizeof(obj), "request %lld", id);
		if ((r = audit_ok(ctx, st, actor, NULL, "recovery.complete", obj, details)) != ESC_OK ||
		    (r = esc_store_commit(ctx, st)) != ESC_OK)
			goto out;
	}
	r = ESC_OK;
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

/*
 * The audit event's details of a completion the workstation reports
 * (esc_recovery_finish_to): a known form, and a destination the audit trail
 * can carry.
 */
static enum esc_err
reported_details(struct esc_ctx *ctx, const char *form, const char *destination, char *buf, size_t len)
{
	static const enum esc_recovery_form forms[] = {ESC_RECOVERY_P12, ESC_RECOVERY_TOKEN, ESC_RECOVERY_CERT};
	size_t i, n = destination != NULL ? strlen(destination) : 0;
	char words[DESTINATION_MAX + 96];

	for (i = 0; i < ESC_ARRAY_LEN(forms); i++)
		if (strcmp(form != NULL ? form : "p12", esc_recovery_form_name(forms[i])) == 0)
			break;
	if (i == ESC_ARRAY_LEN(forms))
		return esc_error(ctx, ESC_ERR_USAGE, "a completion's output is p12, token or cert");
	if (forms[i] == ESC_RECOVERY_P12) {
		if (n != 0)
			return esc_error(ctx, ESC_ERR_USAGE, "a PKCS#12 completion has no destination");
	} else if (n == 0 || n > DESTINATION_MAX || !printable(destination) ||
		   strcasestr(destination, "pin-value") != NULL || strcasestr(destination, "pin-source") != NULL)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "a completion onto a token or to a certificate names its destination: 1..%d "
				 "characters, no control characters, no PIN",
				 DESTINATION_MAX);
	delivered_words(forms[i], n ? destination : "", words, sizeof(words));
	if (forms[i] == ESC_RECOVERY_P12)
		snprintf(buf, len,
			 "key decrypted on the KRA card at its workstation, checked against its certificate, "
			 "delivered %s; package deleted",
			 words);
	else
		snprintf(buf, len,
			 "key decrypted on the KRA card at its workstation, checked against its certificate, package "
			 "deleted; delivered, as the workstation reports, %s",
			 words);
	return ESC_OK;
}

enum esc_err
esc_recovery_finish_to(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		       const char *form, const char *destination)
{
	struct esc_store_retry t = {0};
	char details[DESTINATION_MAX + 256];
	enum esc_err r;

	if ((r = reported_details(ctx, form, destination, details, sizeof(details))) == ESC_OK) {
		do
			r = finish_impl(ctx, st, actor, id, details);
		while (esc_store_retry(ctx, st, &t, &r));
	}
	if (r != ESC_OK)
		audit_failed(ctx, st, actor, NULL, "recovery.complete", id, r);
	return r;
}

enum esc_err
esc_recovery_finish(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id)
{
	return esc_recovery_finish_to(ctx, st, actor, id, NULL, NULL);
}

/* ---- Requests that end without completing: denied, cancelled, expired ------------------------------------- */

enum end_kind { END_DENY, END_CANCEL };

/*
 * Deny (a certificate manager other than the requester, in scope; or an
 * administrator) or cancel (the requester or an administrator) request id.
 * One locked row decides; its package, if any, is deleted with the state
 * change (sql/002's CHECK: a package exists only while released).
 */
static enum esc_err
end_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id, const char *reason,
	 enum end_kind kind)
{
	static const char *const deny_from[] = {"pending", "approved", NULL};
	static const char *const cancel_from[] = {"pending", "approved", "released", NULL};
	const char *const *from = kind == END_DENY ? deny_from : cancel_from;
	PGresult *res = NULL;
	char sid[24], was[16];
	const char *v[4] = {sid, kind == END_DENY ? "denied" : "cancelled", NULL, reason};
	int admin, requester, had_package, i;
	enum esc_err r;

	/* Never a KRA or an auditor: the roles are exclusive of certificate manager and administrator. */
	if (require_any(ctx, actor, ESC_ROLE_CERT_MANAGER | ESC_ROLE_ADMIN,
			kind == END_DENY ? "deny recovery requests" : "cancel recovery requests"))
		return ESC_ERR_DENIED;
	if ((r = check_reason(ctx, reason)) != ESC_OK)
		return r;
	admin = esc_account_has_role(actor, ESC_ROLE_ADMIN);
	v[2] = esc_account_name(actor);
	snprintf(sid, sizeof(sid), "%lld", id);
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(ctx, st,
				"SELECT requested_by, state, record_id, package IS NOT NULL FROM recovery_requests "
				"WHERE id = $1 FOR UPDATE",
				1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
		goto out;
	}
	requester = strtoll(PQgetvalue(res, 0, 0), NULL, 10) == esc_account_id(actor);
	copy(was, sizeof(was), PQgetvalue(res, 0, 1));
	had_package = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
	if (kind == END_DENY && !admin) {
		char shown[64];

		snprintf(shown, sizeof(shown), "the key of request %lld", id);
		if ((r = check_scope(ctx, st, actor, PQgetvalue(res, 0, 2), shown)) != ESC_OK)
			goto out;
		/* A denial is another person's decision; the requester withdraws their own. */
		if (requester) {
			r = esc_error(ctx, ESC_ERR_DENIED,
				      "a requester does not deny their own request: cancel it ('recovery cancel')");
			goto out;
		}
	}
	if (kind == END_CANCEL && !admin && !requester) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "only the requester of request %lld or an administrator may cancel it (a certificate "
			      "manager denies: 'recovery deny')",
			      id);
		goto out;
	}
	for (i = 0; from[i] != NULL && strcmp(from[i], was) != 0; i++)
		;
	if (from[i] == NULL) {
		r = esc_error(ctx, ESC_ERR_STATE, "request %lld is %s: only a pending%s request can be %s", id, was,
			      kind == END_DENY ? " or approved" : ", approved or released",
			      kind == END_DENY ? "denied" : "cancelled");
		goto out;
	}
	PQclear(res);
	res = NULL;
	if ((r = esc_store_exec(ctx, st,
				"UPDATE recovery_requests SET state = $2, package = NULL, ended_at = now(), ended_by = "
				"$3, end_reason = $4 WHERE id = $1",
				4, v, NULL, NULL, NULL)) != ESC_OK ||
	    (r = esc_store_exec(ctx, st,
				"UPDATE recovery_shares SET sealed = NULL, contributed = NULL WHERE request_id = $1", 1,
				v, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	{
		char obj[48], details[ESC_REASON_MAX + 128];

		snprintf(obj, sizeof(obj), "request %lld", id);
		snprintf(details, sizeof(details), "%s request %s%s; reason: %s", was,
			 kind == END_DENY ? "denied" : "cancelled", had_package ? ", its package deleted" : "", reason);
		if ((r = audit_ok(ctx, st, actor, NULL, kind == END_DENY ? "recovery.deny" : "recovery.cancel", obj,
				  details)) != ESC_OK)
			goto out;
	}
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

static enum esc_err
end_request(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
	    const char *reason, enum end_kind kind)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = end_impl(ctx, st, actor, id, reason, kind);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		audit_failed(ctx, st, actor, NULL, kind == END_DENY ? "recovery.deny" : "recovery.cancel", id, r);
	return r;
}

enum esc_err
esc_recovery_deny(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		  const char *reason)
{
	return end_request(ctx, st, actor, id, reason, END_DENY);
}

enum esc_err
esc_recovery_cancel(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		    const char *reason)
{
	return end_request(ctx, st, actor, id, reason, END_CANCEL);
}

/* Every overdue released request expired, its package deleted, one event each; all in one transaction. */
static enum esc_err
expire_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, int *n)
{
	PGresult *res = NULL;
	const char *v[1] = {actor != NULL ? esc_account_name(actor) : "service"};
	enum esc_err r;
	int i, rows;

	if (actor != NULL &&
	    require_any(ctx, actor, ESC_ROLE_CERT_MANAGER | ESC_ROLE_ADMIN, "expire released recovery packages"))
		return ESC_ERR_DENIED;
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(ctx, st,
				"UPDATE recovery_requests r SET state = 'expired', package = NULL, ended_at = now(), "
				"ended_by = $1, end_reason = 'not completed within ' || " TTL_HOURS_SQL
				" || ' hour(s) of its release (policy release_ttl_hours)' FROM kras k WHERE k.id = "
				"r.kra_id AND r.state = 'released' AND " OVERDUE_SQL " RETURNING r.id, k.name, "
				"to_char(r.released_at, 'YYYY-MM-DD HH24:MI:SS'), r.end_reason",
				1, v, NULL, NULL, &res)) != ESC_OK ||
	    (r = esc_store_exec(
		     ctx, st,
		     "UPDATE recovery_shares s SET sealed = NULL, contributed = NULL FROM recovery_requests r "
		     "WHERE r.id = s.request_id AND r.state = 'expired' AND (s.sealed IS NOT NULL OR "
		     "s.contributed IS NOT NULL)",
		     0, NULL, NULL, NULL, NULL)) != ESC_OK)
		goto out;
	rows = PQntuples(res);
	for (i = 0; i < rows; i++) {
		char obj[48], details[ESC_REASON_MAX + 256];

		snprintf(obj, sizeof(obj), "request %s", PQgetvalue(res, i, 0));
		snprintf(details, sizeof(details), "released to KRA '%s' at %s, %s; its package deleted",
			 PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
		if ((r = audit_ok(ctx, st, actor, actor != NULL ? NULL : "service", "recovery.expire", obj, details)) !=
		    ESC_OK)
			goto out;
	}
	if ((r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
	*n = rows;
	r = ESC_OK;
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_recovery_expire(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, int *n)
{
	struct esc_store_retry t = {0};
	enum esc_err r;

	do
		r = expire_impl(ctx, st, actor, n);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		if (actor != NULL)
			esc_audit_outcome_by(ctx, st, actor, "recovery.expire", "released requests", r);
		else
			esc_audit_outcome(ctx, st, "service", "service", "recovery.expire", "released requests", r);
	}
	return r;
}

/* ---- Listing ----------------------------------------------------------------------------------------------- */

/* Requests with state (NULL: any) and id (NULL: any), newest first. */
static enum esc_err
query_requests(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *state,
	       const char *id, struct esc_recovery **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_recovery *q = NULL;
	char aid[24];
	const char *v[3] = {state, id, aid};
	enum esc_err r;
	int i, rows;

	if (actor == NULL)
		return esc_error(ctx, ESC_ERR_DENIED, "listing requests needs an authenticated account");
	/* A scoped certificate manager sees only the requests of records in scope. */
	snprintf(aid, sizeof(aid), "%lld", esc_account_id(actor));
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT r.id, r.record_id, r.state, u.name, k.name, r.reason, (SELECT count(*) FROM "
		     "recovery_approvals p WHERE p.request_id = r.id), r.approvals_required, "
		     "to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), " ESC_ARCHIVE_ROW_SQL " FROM "
		     "recovery_requests r JOIN archive_records a ON a.id = r.record_id JOIN accounts u ON u.id "
		     "= r.requested_by JOIN kras k ON k.id = r.kra_id WHERE ($1::text IS NULL OR r.state = $1) "
		     "AND ($2::bigint IS NULL OR r.id = $2::bigint) AND (NOT EXISTS (SELECT 1 FROM "
		     "manager_scopes WHERE account_id = $3::bigint) OR p11escrow_record_in_scope(r.record_id, "
		     "$3::bigint)) ORDER BY r.id DESC LIMIT 200",
		     3, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if ((q = calloc((size_t)rows + 1, sizeof(*q))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		int j;

		q[i].id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		copy(q[i].record_id, sizeof(q[i].record_id), PQgetvalue(res, i, 1));
		copy(q[i].state, sizeof(q[i].state), PQgetvalue(res, i, 2));
		copy(q[i].requester, sizeof(q[i].requester), PQgetvalue(res, i, 3));
		copy(q[i].kra, sizeof(q[i].kra), PQgetvalue(res, i, 4));
		copy(q[i].reason, sizeof(q[i].reason), PQgetvalue(res, i, 5));
		if ((r = esc_store_get_int(ctx, res, i, 6, &q[i].approvals)) != ESC_OK ||
		    (r = esc_store_get_int(ctx, res, i, 7, &q[i].approvals_required)) != ESC_OK)
			goto out;
		copy(q[i].created, sizeof(q[i].created), PQgetvalue(res, i, 8));
		/* Serial and subject from the certificate; a record's several requests decode it once. */
		for (j = 0; j < i && strcmp(q[j].record_id, q[i].record_id) != 0; j++)
			;
		if (j < i) {
			copy(q[i].serial, sizeof(q[i].serial), q[j].serial);
			copy(q[i].subject, sizeof(q[i].subject), q[j].subject);
			q[i].tampered = q[j].tampered;
		} else {
			struct esc_archive_row row;
			struct esc_archive_fields f;

			esc_archive_row_get(res, i, 9, &row);
			if ((r = row_truth(ctx, &row, &f, &q[i].tampered)) != ESC_OK)
				goto out;
			copy(q[i].serial, sizeof(q[i].serial), f.serial);
			copy(q[i].subject, sizeof(q[i].subject), f.subject);
			esc_archive_fields_clear(&f);
		}
	}
	*out = q;
	*n = (size_t)rows;
	q = NULL; /* transferred */
	r = ESC_OK;
out:
	free(q);
	PQclear(res);
	return r;
}

enum esc_err
esc_recovery_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *state,
		  struct esc_recovery **out, size_t *n)
{
	return query_requests(ctx, st, actor, state, NULL, out, n);
}

enum esc_err
esc_recovery_get(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, long long id,
		 struct esc_recovery *out)
{
	struct esc_recovery *q = NULL;
	size_t n = 0;
	char sid[24];
	enum esc_err r;

	snprintf(sid, sizeof(sid), "%lld", id);
	if ((r = query_requests(ctx, st, actor, NULL, sid, &q, &n)) != ESC_OK)
		return r;
	if (n != 1)
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "no recovery request %lld", id);
	else
		*out = q[0];
	free(q);
	return r;
}
