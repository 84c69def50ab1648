/*
 * Enrollment: one-time enrollment passwords, client certificate checks,
 * the service's TLS certificate, and issuance that commits the
 * certificate, its archive record and the audit event in one transaction.
 * The certificate itself is the keeper's (keeper.c), built from a profile
 * (profile.c).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/proverr.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <p11escrow/audit.h>
#include <p11escrow/ca.h>
#include <p11escrow/enroll.h>
#include <p11escrow/est.h>
#include <p11escrow/envelope.h>
#include <p11escrow/setup.h>

#include "archive_internal.h"
#include "envelope_internal.h"
#include "internal.h"
#include "keeper_internal.h"
#include "profile_internal.h"
#include "store_internal.h"

/* A serial already taken is redrawn (and re-signed) at most this often: 159 random bits never collide. */
#define SERIAL_DRAWS 3
#define MAX_SERVER_NAMES 16
#define DNS_NAME_MAX 253
#define CN_MAX 64
#define OTP_PASSWORD_LEN 20
#define OTP_NAME_ATTEMPTS 3
#define OTP_HOURS_MAX 720
/* Unambiguous characters only: no 0/O/o, 1/l/I/i.  55 symbols, 20 of them: 115 bits. */
#define OTP_ALPHABET "23456789abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"

/* ---- Issuance ------------------------------------------------------------ */

/*
 * Enrollment transactions run READ COMMITTED, not SERIALIZABLE: each
 * appends to the audit chain, and under SERIALIZABLE every two concurrent
 * appenders conflict (the later one read the chain's end before the earlier
 * one committed), so a busy service would spend itself on retries (8
 * workers: most transactions failed 5 attempts in a row).  READ COMMITTED
 * reads the chain's end after taking the audit lock, as audit.c's own
 * transactions do.  What SERIALIZABLE protected is held by constraints and
 * locks instead: the password is consumed by one conditional UPDATE, the
 * serial, certificate and key are UNIQUE, and the KRAs chosen for a record
 * are locked FOR SHARE against retirement (archive.c, kra.c).
 */
static enum esc_err
begin_tx(struct esc_ctx *ctx, struct esc_store *st)
{
	enum esc_err r;

	if ((r = esc_store_exec(ctx, st, "BEGIN ISOLATION LEVEL READ COMMITTED", 0, NULL, NULL, NULL, NULL)) == ESC_OK)
		esc_store_mark_tx(st);
	return r;
}

/*
 * Fault injection for the tests of esc_enroll_issue (enroll.h): only in
 * builds configured with -Dtest_hooks=true (scripts/test does), never in a
 * default or packaged build, where an environment variable must not be able
 * to kill the service.
 */
#ifdef ESC_TEST_HOOKS
static void
fault_point(const char *point)
{
	const char *f = getenv("P11ESCROW_FAULT_KILL");

	if (f != NULL && strcmp(f, point) == 0)
		raise(SIGKILL);
}
#else
static void
fault_point(const char *point)
{
	(void)point;
}
#endif

/*
 * Sign (unless *x holds a certificate from an earlier attempt) and record
 * it, redrawing the serial — a new signature — if it is taken.
 */
static enum esc_err
sign_and_record(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const struct profile_def *def,
		const X509_NAME *subject, EVP_PKEY *pub, const GENERAL_NAMES *san, X509 **x)
{
	enum esc_err r;
	int draws, inserted = 0;

	for (draws = 0; draws < SERIAL_DRAWS; draws++) {
		if (*x == NULL) {
			if ((r = esc_keeper_issue(ctx, k, def, subject, pub, san, x)) != ESC_OK)
				return r;
			fault_point("after-sign");
		}
		if ((r = esc_store_insert_cert(ctx, st, *x, def->p.name, &inserted)) != ESC_OK)
			return r;
		if (inserted)
			return ESC_OK;
		esc_log(ctx, ESC_LOG_WARN, "certificate serial already taken: drawing another");
		X509_free(*x);
		*x = NULL;
	}
	return esc_error(ctx, ESC_ERR_EXISTS,
			 "%d random serial numbers in a row were taken already: the random "
			 "number generator is not working",
			 SERIAL_DRAWS);
}

/* Consume the one-time password in the open transaction; it must grant this subject and profile. */
static enum esc_err
consume_otp(struct esc_ctx *ctx, struct esc_store *st, const char *name, const char *subject, const char *profile)
{
	PGresult *res = NULL;
	const char *v[1] = {name};
	enum esc_err r;

	if ((r = esc_store_exec(
		     ctx, st,
		     "UPDATE enrollment_passwords SET used_at = now() WHERE name = $1 AND used_at IS NULL AND "
		     "expires_at > now() RETURNING subject, profile",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1)
		r = esc_error(ctx, ESC_ERR_AUTH, "the one-time enrollment password '%.64s' is unknown, used or expired",
			      name);
	else if (strcmp(PQgetvalue(res, 0, 1), profile) != 0)
		r = esc_error(ctx, ESC_ERR_POLICY,
			      "the one-time enrollment password '%.64s' is for profile '%s', not '%s'", name,
			      PQgetvalue(res, 0, 1), profile);
	else if (strcmp(PQgetvalue(res, 0, 0), subject) != 0)
		r = esc_error(ctx, ESC_ERR_POLICY,
			      "the one-time enrollment password '%.64s' is for subject '%.200s', not '%.200s'", name,
			      PQgetvalue(res, 0, 0), subject);
	PQclear(res);
	return r;
}

struct issue_state {
	X509 *cert; /* signed; kept across retries of the transaction */
	struct esc_archive_info info;
	char subject[512];
	int supersede;	/* policy one_key_per_subject = supersede, for this attempt */
	int superseded; /* certificates this attempt revoked */
};

/* Serialises enrollments of one subject and profile while the policy is on ("p11o", with a hash of both). */
#define ONE_KEY_LOCK "1882337647"

/*
 * Policy one_key_per_subject, in the open transaction, before the token is
 * touched: with 'refuse', fail if the subject already has a valid
 * (unexpired, unrevoked) certificate of this profile whose key is archived;
 * with 'supersede', note that such certificates are revoked once the new
 * one is recorded (supersede_prior).  Enrollments of the same subject and
 * profile wait for each other until commit, so two at once cannot both
 * see none.
 */
static enum esc_err
one_key_check(struct esc_ctx *ctx, struct esc_store *st, const char *profile, struct issue_state *is)
{
	PGresult *res = NULL;
	const char *v[2] = {is->subject, profile};
	char *mode = NULL;
	enum esc_err r;

	is->supersede = 0;
	/*
	 * The policy and, unless it is off, the lock in one statement (one
	 * round trip fewer per enrollment); the check below is a statement of
	 * its own, so it reads after the lock is held.
	 */
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT p.value FROM policy p LEFT JOIN LATERAL (SELECT pg_advisory_xact_lock(" ONE_KEY_LOCK
		     ", hashtext($1 || E'\\n' || $2)) WHERE p.value <> 'off') l ON true WHERE p.key = "
		     "'one_key_per_subject'",
		     2, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_NOT_FOUND, "policy '%s' is not set", "one_key_per_subject");
		goto out;
	}
	if ((mode = strdup(PQgetvalue(res, 0, 0))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	PQclear(res);
	res = NULL;
	if (strcmp(mode, "off") == 0)
		goto out;
	if (strcmp(mode, "supersede") == 0) {
		is->supersede = 1;
		goto out;
	}
	if ((r = esc_store_exec(ctx, st,
				"SELECT a.cert_serial FROM archive_records a JOIN certificates c ON c.serial = "
				"a.cert_serial WHERE NOT a.foreign_issuer AND c.subject = $1 AND c.profile = $2 AND "
				"c.not_after > now() AND NOT EXISTS (SELECT 1 FROM revocations v WHERE v.issuer = "
				"a.issuer AND ltrim(v.serial, '0') = ltrim(a.cert_serial, '0')) ORDER BY c.issued_at "
				"LIMIT 1",
				2, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) > 0)
		r = esc_error(ctx, ESC_ERR_POLICY,
			      "subject already has a valid archived encryption key (serial %s) under profile '%s': "
			      "policy one_key_per_subject is 'refuse' (revoke that certificate first)",
			      PQgetvalue(res, 0, 0), profile);
out:
	PQclear(res);
	free(mode);
	return r;
}

/*
 * Policy one_key_per_subject = supersede, after the new certificate
 * (serial) and its archive record are in the transaction: revoke every
 * other valid certificate of the subject and profile whose key is archived
 * (reason superseded, on the CRL), each an audit event.
 */
static enum esc_err
supersede_prior(struct esc_ctx *ctx, struct esc_store *st, const char *profile, const char *actor, const char *serial,
		struct issue_state *is)
{
	PGresult *res = NULL;
	const char *v[4] = {is->subject, profile, serial, actor};
	char details[160];
	struct esc_audit_event ev = {actor, "enrollee", "cert.revoke", NULL, "ok", details};
	enum esc_err r;
	int i;

	if ((r = esc_store_exec(
		     ctx, st,
		     "INSERT INTO revocations (serial, issuer, own, reason, revoked_by) SELECT a.cert_serial, "
		     "a.issuer, true, 'superseded', $4 FROM archive_records a JOIN certificates c ON c.serial = "
		     "a.cert_serial WHERE NOT a.foreign_issuer AND c.subject = $1 AND c.profile = $2 AND "
		     "c.serial <> $3 AND c.not_after > now() AND NOT EXISTS (SELECT 1 FROM revocations v WHERE "
		     "v.issuer = a.issuer AND ltrim(v.serial, '0') = ltrim(a.cert_serial, '0')) RETURNING serial",
		     4, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	snprintf(details, sizeof(details),
		 "reason superseded by %.64s (policy one_key_per_subject = supersede), on the CRL", serial);
	for (i = 0; i < PQntuples(res); i++) {
		ev.object = PQgetvalue(res, i, 0);
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	is->superseded = PQntuples(res);
	r = ESC_OK;
out:
	PQclear(res);
	return r;
}

#define OUTCOME_WAIT_MS 5000 /* how long a lost commit's outcome is looked for */
#define OUTCOME_STEP_MS 250  /* between attempts to reach a primary */

/*
 * The connection was lost before the answer to this enrollment's COMMIT
 * came (the primary died, a failover): did it commit?  Its certificate row
 * says so, since it commits with the archive record, the password and the
 * audit event or not at all.  On a new session (the new primary, once one
 * answers, for at most OUTCOME_WAIT_MS) the same row is inserted again in a
 * transaction that is then rolled back: the unique serial makes that insert
 * wait for the old transaction if it is still in progress on that server,
 * then say whether it committed (conflict) or not (inserted).  Looking the
 * row up instead could miss a commit still waiting for its synchronous
 * standby, invisible until then.
 *
 * ESC_OK: it committed, the enrollment is done (its certificate and record
 * are answered as if nothing happened).  BUSY: it did not; esc_store_retry
 * runs the enrollment again on the new session, with the same certificate.
 * DB_CONNECT: nobody can tell yet; the client's retry is a new enrollment,
 * and the message names the serial whose outcome is unknown.
 */
static enum esc_err
commit_outcome(struct esc_ctx *ctx, struct esc_store *st, const struct profile_def *def, struct issue_state *is,
	       const char *serial)
{
	char lost[ESC_ERRMSG_MAX];
	struct timespec pause = {0, OUTCOME_STEP_MS * 1000000L};
	PGresult *res = NULL;
	unsigned char *der = NULL;
	const char *v[2];
	int len[2] = {0, 0}, fmt[2] = {0, 1}, dlen, waited = 0, inserted = 0;
	enum esc_err r;

	snprintf(lost, sizeof(lost), "%s", esc_ctx_errmsg(ctx));
	while ((r = esc_store_reconnect(ctx, st)) == ESC_ERR_DB_CONNECT && waited < OUTCOME_WAIT_MS) {
		nanosleep(&pause, NULL);
		waited += OUTCOME_STEP_MS;
	}
	/* Whatever fails from here on leaves the outcome unknown (the message says what failed). */
	if (r != ESC_OK || begin_tx(ctx, st) != ESC_OK ||
	    esc_store_exec(ctx, st, "SET LOCAL lock_timeout = '5s'", 0, NULL, NULL, NULL, NULL) != ESC_OK ||
	    esc_store_insert_cert(ctx, st, is->cert, def->p.name, &inserted) != ESC_OK)
		goto unknown;
	if (inserted) {
		esc_store_rollback(st);
		esc_log(ctx, ESC_LOG_WARN,
			"enrollment of serial %s: the connection was lost while committing and the commit did not "
			"take effect; enrolling again on the new session",
			serial);
		r = esc_error(ctx, ESC_ERR_BUSY, "the commit of serial %s was lost with the connection (%s)", serial,
			      lost);
		goto out;
	}
	/* The serial is there: ours, or (by a 2^-159 chance) another certificate's. */
	if ((dlen = i2d_X509(is->cert, &der)) <= 0) {
		(void)esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto unknown;
	}
	v[0] = serial;
	v[1] = (const char *)der;
	len[1] = dlen;
	if (esc_store_exec(ctx, st, "SELECT der = $2 FROM certificates WHERE serial = $1", 2, v, len, fmt, &res) !=
	    ESC_OK)
		goto unknown;
	esc_store_rollback(st);
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
		r = esc_error(ctx, ESC_ERR_BUSY, "the commit of serial %s was lost with the connection (%s)", serial,
			      lost);
		goto out;
	}
	esc_log(ctx, ESC_LOG_WARN,
		"enrollment of serial %s: the connection was lost while committing, but the commit took effect "
		"(found on the database after reconnecting)",
		serial);
	esc_ctx_clear_error(ctx);
	r = ESC_OK;
	goto out;
unknown:
	esc_store_rollback(st);
	r = esc_error(ctx, ESC_ERR_DB_CONNECT,
		      "enrollment of serial %s: %s; whether it committed cannot be told (%s): a retry is a new "
		      "enrollment",
		      serial, lost, esc_ctx_errmsg(ctx));
out:
	PQclear(res);
	OPENSSL_free(der);
	return r;
}

/* The enroll.issue event of this attempt (issue_event_fill: record, its id or NULL when not archived; details kept here). */
struct issue_event {
	const struct profile_def *def;
	const struct esc_enroll_request *req;
	const struct issue_state *is;
	const char *serial;
	char details[512];
};

static void
issue_event_fill(void *arg, const char *record, struct esc_audit_event *ev)
{
	struct issue_event *ie = arg;
	const struct esc_enroll_request *req = ie->req;

	snprintf(ie->details, sizeof(ie->details), "profile %s, source %s, record %s, %s%s%s%ssubject %.300s",
		 ie->def->p.name, esc_archive_source_name(req->source), record ? record : "none (not archived)",
		 req->otp_name ? "one-time password " : "", req->otp_name ? req->otp_name : "",
		 req->otp_name ? ", " : "", ie->is->superseded > 0 ? "superseding older certificate(s), " : "",
		 ie->is->subject);
	ev->actor = req->actor;
	ev->role = "enrollee";
	ev->action = "enroll.issue";
	ev->object = ie->serial;
	ev->outcome = "ok";
	ev->details = ie->details;
}

/*
 * One attempt at the transaction: OTP, certificate, archive record, audit.
 * The enroll.issue event goes in with the record's archive.store event
 * (one statement, esc_archive_key_and), unless policy supersedes older
 * certificates: their revocations come after the record, and the event
 * after them, as it names them.
 */
static enum esc_err
issue_tx(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const struct profile_def *def,
	 const struct esc_enroll_request *req, const GENERAL_NAMES *san, struct issue_state *is)
{
	struct issue_event ie = {def, req, is, NULL, ""};
	struct esc_archive_also also = {issue_event_fill, &ie};
	struct esc_audit_event ev;
	char *serial = NULL;
	int merged = 0;
	enum esc_err r;

	memset(&is->info, 0, sizeof(is->info));
	is->superseded = 0;
	if ((r = begin_tx(ctx, st)) != ESC_OK)
		goto out;
	if (req->otp_name != NULL && (r = consume_otp(ctx, st, req->otp_name, is->subject, def->p.name)) != ESC_OK)
		goto out;
	/* One valid archived encryption key per subject and profile, if policy says so. */
	if (def->p.archival && (r = one_key_check(ctx, st, def->p.name, is)) != ESC_OK)
		goto out;
	if ((r = sign_and_record(ctx, st, k, def, req->subject, req->pub, san, &is->cert)) != ESC_OK)
		goto out;
	fault_point("after-cert-row");
	if ((serial = esc_cert_serial_hex(is->cert)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	ie.serial = serial;
	if (def->p.archival) {
		/* In this transaction: esc_archive_key_and joins it, so its rows commit with ours or not at all. */
		merged = !is->supersede;
		if ((r = esc_archive_key_and(ctx, st, req->actor, is->cert, req->key, req->source,
					     merged ? &also : NULL, &is->info)) != ESC_OK)
			goto out;
		fault_point("after-archive");
	}
	if (is->supersede && (r = supersede_prior(ctx, st, def->p.name, req->actor, serial, is)) != ESC_OK)
		goto out;
	if (!merged) {
		issue_event_fill(&ie, is->info.id[0] ? is->info.id : NULL, &ev);
		if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
			goto out;
	}
	if ((r = esc_store_commit(ctx, st)) != ESC_OK && esc_store_commit_unknown(st))
		r = commit_outcome(ctx, st, def, is, serial);
out:
	esc_store_rollback(st);
	free(serial);
	return r;
}

static enum esc_err
issue_impl(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const struct esc_enroll_request *req,
	   struct issue_state *is)
{
	const struct profile_def *def = esc_profile_def(req->profile);
	GENERAL_NAMES *san = NULL;
	char *subject = NULL;
	enum esc_err r;
	struct esc_store_retry t = {0};

	if (req->subject == NULL || X509_NAME_entry_count(req->subject) == 0 || req->pub == NULL)
		return esc_error(ctx, ESC_ERR_USAGE, "an enrollment needs a subject and a public key");
	if ((subject = esc_name_to_string(req->subject)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	/* Never cut short: a one-time password's subject is compared with this text. */
	if (strlen(subject) >= sizeof(is->subject)) {
		free(subject);
		return esc_error(ctx, ESC_ERR_POLICY, "the subject is longer than %zu characters",
				 sizeof(is->subject) - 1);
	}
	snprintf(is->subject, sizeof(is->subject), "%s", subject);
	free(subject);
	if (def == NULL)
		return esc_error(ctx, ESC_ERR_POLICY, "unknown certificate profile '%.32s'",
				 req->profile && req->profile->name ? req->profile->name : "");
	if (!def->p.enrollable)
		return esc_error(ctx, ESC_ERR_POLICY, "profile '%s' is not available for enrollment", def->p.name);
	if ((r = esc_profile_check_key(ctx, &def->p, req->pub)) != ESC_OK)
		return r;
	/* Before the token is touched: what the profile says about the private key. */
	if (def->p.archival && req->key == NULL)
		return esc_error(ctx, ESC_ERR_POLICY,
				 "profile '%s' requires key archival: use /fullcmc or /serverkeygen", def->p.name);
	if (!def->p.archival && req->key != NULL)
		return esc_error(
			ctx, ESC_ERR_POLICY,
			"profile '%s' is a %s profile: its keys are never archived, so no private key may come "
			"with the request",
			def->p.name, def->p.signing ? "signing" : "non-archival");
	if (req->key != NULL && EVP_PKEY_eq(req->key, req->pub) != 1) {
		ERR_clear_error();
		return esc_error(ctx, ESC_ERR_MISMATCH, "the private key does not match the request's public key");
	}
	if (def->email_san && (r = esc_profile_email_sans(ctx, req->subject, &san)) != ESC_OK)
		return r;
	do
		r = issue_tx(ctx, st, k, def, req, san, is);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		goto out;
	fault_point("after-commit");
	r = ESC_OK;
out:
	GENERAL_NAMES_free(san);
	return r;
}

enum esc_err
esc_enroll_issue(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const struct esc_enroll_request *req,
		 X509 **cert, struct esc_archive_info *info)
{
	struct issue_state is;
	char *serial = NULL;
	enum esc_err r;

	if (st == NULL || k == NULL || req == NULL || cert == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_enroll_issue: NULL argument");
	if (req->actor == NULL || *req->actor == '\0')
		return esc_error(ctx, ESC_ERR_USAGE, "an enrollment needs an actor for the audit trail");
	memset(&is, 0, sizeof(is));
	if ((r = issue_impl(ctx, st, k, req, &is)) != ESC_OK) {
		/* The transaction was rolled back: the refusal is recorded on its own. */
		serial = is.cert != NULL ? esc_cert_serial_hex(is.cert) : NULL;
		esc_audit_outcome(ctx, st, req->actor, "enrollee", "enroll.issue",
				  serial	  ? serial
				  : req->otp_name ? req->otp_name
				  : is.subject[0] ? is.subject
						  : "?",
				  r);
		free(serial);
		X509_free(is.cert);
		return r;
	}
	*cert = is.cert;
	if (info != NULL)
		*info = is.info;
	return ESC_OK;
}

/* ---- Client certificates ---------------------------------------------------- */

static enum esc_err
check_client_impl(struct esc_ctx *ctx, struct esc_store *st, X509 *cert, const char *serial)
{
	PGresult *res = NULL;
	X509 *ca = NULL;
	const struct esc_profile *p;
	unsigned char *der = NULL, *stored = NULL;
	const char *v[1] = {serial};
	long slen = 0;
	int dlen;
	enum esc_err r;

	if ((r = esc_store_active_ca(ctx, st, &ca)) != ESC_OK) {
		if (r == ESC_ERR_STATE)
			r = esc_error(ctx, ESC_ERR_AUTH, "there is no active CA to check certificate %s against",
				      serial);
		return r;
	}
	if (!esc_cert_issued_by(cert, ca)) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s was not issued by this CA", serial);
		goto out;
	}
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT c.der, c.profile, EXISTS (SELECT 1 FROM revocations v WHERE v.issuer = c.issuer "
		     "AND ltrim(v.serial, '0') = ltrim(c.serial, '0')) FROM certificates c WHERE c.serial = $1",
		     1, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s is not recorded as issued here", serial);
		goto out;
	}
	/* The very certificate issued, not another one with its serial. */
	if ((dlen = i2d_X509(cert, &der)) <= 0 || strncmp(PQgetvalue(res, 0, 0), "\\x", 2) != 0 ||
	    (stored = OPENSSL_hexstr2buf(PQgetvalue(res, 0, 0) + 2, &slen)) == NULL || slen != dlen ||
	    memcmp(stored, der, (size_t)dlen) != 0) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s differs from the one recorded with its serial",
			      serial);
		goto out;
	}
	/* Only certificates issued to enrollees authenticate enrollees (not the service's, not the CA's own keys). */
	if ((p = esc_profile_find(PQgetvalue(res, 0, 1))) == NULL || !p->enrollable) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s (profile '%.32s') does not authenticate enrollees",
			      serial, PQgetvalue(res, 0, 1));
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s is not valid yet", serial);
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s has expired", serial);
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
		r = esc_error(ctx, ESC_ERR_AUTH, "certificate %s is revoked", serial);
		goto out;
	}
	r = ESC_OK;
out:
	OPENSSL_free(stored);
	OPENSSL_free(der);
	X509_free(ca);
	PQclear(res);
	return r;
}

enum esc_err
esc_enroll_check_client_cert(struct esc_ctx *ctx, struct esc_store *st, X509 *cert)
{
	char *serial, actor[96];
	enum esc_err r;

	if (st == NULL || cert == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_enroll_check_client_cert: NULL argument");
	if ((serial = esc_cert_serial_hex(cert)) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((r = check_client_impl(ctx, st, cert, serial)) != ESC_OK && r != ESC_ERR_DB_CONNECT) {
		snprintf(actor, sizeof(actor), "est:cert:%.64s", serial);
		esc_audit_outcome(ctx, st, actor, "enrollee", "enroll.client-cert", serial, r);
	}
	free(serial);
	return r;
}

/* ---- One-time enrollment passwords ---------------------------------------- */

static int
valid_otp_name(const char *name)
{
	size_t i, n = strnlen(name, 65);

	if (n < 15 || n > 39 || strncmp(name, "enroll-", 7) != 0)
		return 0;
	for (i = 7; i < n; i++)
		if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
			return 0;
	return 1;
}

/* A user-supplied name, fit for a message: bounded, printable, no quotes. */
static void
shown(char *buf, size_t len, const char *name)
{
	size_t i;

	for (i = 0; name[i] != '\0' && i + 1 < len && i < 64; i++)
		buf[i] = (name[i] >= 0x20 && name[i] < 0x7f && name[i] != '\'') ? name[i] : '?';
	buf[i] = '\0';
}

/* OTP_PASSWORD_LEN characters of OTP_ALPHABET, drawn without bias, in secure memory. */
static enum esc_err
new_password(struct esc_ctx *ctx, struct esc_secret **out)
{
	const size_t nalpha = sizeof(OTP_ALPHABET) - 1;
	const unsigned limit = 256 - 256 % (unsigned)nalpha;
	unsigned char *buf = OPENSSL_secure_zalloc(OTP_PASSWORD_LEN + 1), rnd[64];
	size_t n = 0, i;
	enum esc_err r;

	if (buf == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
	while (n < OTP_PASSWORD_LEN) {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "no randomness for the password");
			goto out;
		}
		for (i = 0; i < sizeof(rnd) && n < OTP_PASSWORD_LEN; i++)
			if (rnd[i] < limit)
				buf[n++] = (unsigned char)OTP_ALPHABET[rnd[i] % nalpha];
	}
	r = esc_secret_new(ctx, buf, OTP_PASSWORD_LEN, out);
out:
	OPENSSL_cleanse(rnd, sizeof(rnd));
	OPENSSL_secure_clear_free(buf, OTP_PASSWORD_LEN + 1);
	return r;
}

static enum esc_err
otp_insert(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	   const char *hash, const char *subject, const char *profile, int hours)
{
	PGresult *res = NULL;
	char id[24], hrs[16], roles[64], details[700];
	const char *v[6] = {name, hash, subject, profile, id, hrs};
	struct esc_audit_event ev = {esc_account_name(actor), roles, "enroll.password.create", name, "ok", details};
	enum esc_err r;

	snprintf(id, sizeof(id), "%lld", esc_account_id(actor));
	snprintf(hrs, sizeof(hrs), "%d", hours);
	esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
	if ((r = begin_tx(ctx, st)) != ESC_OK)
		goto out;
	/* Still an enabled administrator or certificate manager, as at login. */
	if ((r = esc_store_exec(ctx, st,
				"SELECT 1 FROM accounts WHERE id = $1 AND NOT disabled AND roles && "
				"ARRAY['admin', 'cert-manager']",
				1, v + 4, NULL, NULL, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_DENIED,
			      "account '%s' is no longer an enabled administrator or certificate "
			      "manager",
			      esc_account_name(actor));
		goto out;
	}
	PQclear(res);
	res = NULL;
	if ((r = esc_store_exec(
		     ctx, st,
		     "INSERT INTO enrollment_passwords (name, hash, subject, profile, created_by, expires_at) "
		     "VALUES ($1, $2, $3, $4, $5, now() + $6::integer * interval '1 hour') RETURNING "
		     "to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || 'Z'",
		     6, v, NULL, NULL, &res)) != ESC_OK)
		goto out;
	snprintf(details, sizeof(details), "subject %.400s, profile %s, expires %s", subject, profile,
		 PQgetvalue(res, 0, 0));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

static enum esc_err
otp_create_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *subject,
		const char *profile, int hours, char *name, size_t namelen, struct esc_secret **password)
{
	const struct esc_profile *p;
	X509_NAME *xn = NULL, *back = NULL;
	struct esc_secret *pw = NULL;
	char *norm = NULL, *hash = NULL;
	unsigned char rnd[4];
	int attempt;
	enum esc_err r;

	if (actor == NULL || !(esc_account_roles(actor) & (ESC_ROLE_ADMIN | ESC_ROLE_CERT_MANAGER)))
		return esc_error(ctx, ESC_ERR_DENIED,
				 "account '%s' may not create enrollment passwords (administrators and certificate "
				 "managers do)",
				 actor ? esc_account_name(actor) : "(none)");
	if ((p = esc_profile_find(profile)) == NULL || !p->enrollable)
		return esc_error(ctx, ESC_ERR_USAGE,
				 "'%.32s' is not a profile enrollees can use (see 'p11escrow profile "
				 "list')",
				 profile);
	if (hours < 1 || hours > OTP_HOURS_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "an enrollment password is valid for 1..%d hours", OTP_HOURS_MAX);
	if ((r = esc_name_parse(ctx, subject, &xn)) != ESC_OK)
		return r;
	if ((norm = esc_name_to_string(xn)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (strlen(norm) > 511) {
		r = esc_error(ctx, ESC_ERR_USAGE, "the subject is longer than 511 characters");
		goto out;
	}
	/*
	 * The service parses the stored text back into the name it certifies
	 * (and esc_enroll_issue compares the two): refuse a subject whose
	 * escaped characters would not come back the same.
	 */
	if (esc_name_parse(ctx, norm, &back) != ESC_OK || X509_NAME_cmp(back, xn) != 0) {
		r = esc_error(ctx, ESC_ERR_USAGE,
			      "the subject '%.200s' holds characters that need escaping (, + ; < > \\ "
			      "\" #): enrollment passwords cannot name it",
			      norm);
		goto out;
	}
	if ((r = new_password(ctx, &pw)) != ESC_OK || (r = esc_auth_hash_password(ctx, pw, &hash)) != ESC_OK)
		goto out;
	for (attempt = 1;; attempt++) {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
			r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "no randomness for the name");
			goto out;
		}
		snprintf(name, namelen, "enroll-%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
		if ((r = otp_insert(ctx, st, actor, name, hash, norm, p->name, hours)) == ESC_OK)
			break;
		/* A name taken already (1 in 2^32 per name in use), or a lost race: draw again. */
		if ((r != ESC_ERR_EXISTS && r != ESC_ERR_BUSY) || attempt >= OTP_NAME_ATTEMPTS)
			goto out;
	}
	*password = pw;
	pw = NULL; /* transferred */
	r = ESC_OK;
out:
	esc_secret_free(pw);
	if (hash != NULL)
		OPENSSL_cleanse(hash, strlen(hash));
	free(hash);
	free(norm);
	X509_NAME_free(back);
	X509_NAME_free(xn);
	return r;
}

enum esc_err
esc_otp_create(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *subject,
	       const char *profile, int hours, char **name, struct esc_secret **password)
{
	char nbuf[65] = "";
	char *copy;
	struct esc_secret *pw = NULL;
	enum esc_err r;

	if (st == NULL || name == NULL || password == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_otp_create: NULL argument");
	if ((r = otp_create_impl(ctx, st, actor, subject, profile, hours, nbuf, sizeof(nbuf), &pw)) != ESC_OK) {
		esc_audit_outcome_by(ctx, st, actor, "enroll.password.create", nbuf[0] ? nbuf : "-", r);
		return r;
	}
	if ((copy = strdup(nbuf)) == NULL) {
		esc_secret_free(pw);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	}
	*name = copy;
	*password = pw;
	return ESC_OK;
}

enum esc_err
esc_otp_check(struct esc_ctx *ctx, struct esc_store *st, const char *name, const struct esc_secret *password,
	      struct esc_otp_grant *grant)
{
	PGresult *res = NULL;
	const char *v[1] = {name}, *hash = NULL, *why = "no such name";
	char shown_name[72], actor[96];
	int found = 0, used = 0, expired = 0;
	enum esc_err r, vr;

	if (st == NULL || name == NULL || password == NULL || grant == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_otp_check: NULL argument");
	shown(shown_name, sizeof(shown_name), name);
	/* A name that cannot exist skips the query, not the hash. */
	if (valid_otp_name(name)) {
		if ((r = esc_store_exec(ctx, st,
					"SELECT hash, subject, profile, used_at IS NOT NULL, expires_at <= now() FROM "
					"enrollment_passwords WHERE name = $1",
					1, v, NULL, NULL, &res)) != ESC_OK)
			return r;
		if (PQntuples(res) == 1) {
			found = 1;
			hash = PQgetvalue(res, 0, 0);
			used = strcmp(PQgetvalue(res, 0, 3), "t") == 0;
			expired = strcmp(PQgetvalue(res, 0, 4), "t") == 0;
		}
	}
	/* Always one Argon2id verification: neither the answer nor its time tells what was wrong. */
	vr = esc_auth_verify_or_dummy(ctx, hash, password);
	if (vr == ESC_ERR_NOMEM) {
		r = vr;
		goto out;
	}
	if (found)
		why = vr != ESC_OK ? "wrong password" : used ? "already used" : expired ? "expired" : NULL;
	if (why != NULL) {
		/* The reason goes to the audit trail only. */
		snprintf(actor, sizeof(actor), "est:otp:%s", shown_name);
		r = esc_error(ctx, ESC_ERR_AUTH, "enrollment password '%s' refused: %s", shown_name, why);
		esc_audit_outcome(ctx, st, actor, "enrollee", "enroll.password.check", shown_name, r);
		r = esc_error(ctx, ESC_ERR_AUTH, "authentication failed for enrollment password '%s'", shown_name);
		goto out;
	}
	memset(grant, 0, sizeof(*grant));
	snprintf(grant->name, sizeof(grant->name), "%s", name);
	snprintf(grant->subject, sizeof(grant->subject), "%s", PQgetvalue(res, 0, 1));
	snprintf(grant->profile, sizeof(grant->profile), "%s", PQgetvalue(res, 0, 2));
	r = ESC_OK;
out:
	/* The hash is not the password, but it is what an offline guesser wants. */
	if (found)
		OPENSSL_cleanse(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
	PQclear(res);
	return r;
}

enum esc_err
esc_otp_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *actor, const char *name,
	     struct esc_otp_info **out, size_t *n)
{
	PGresult *res = NULL;
	struct esc_otp_info *list = NULL;
	const char *v[1] = {name};
	int i, rows;
	enum esc_err r;

	if (st == NULL || out == NULL || n == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_otp_list: NULL argument");
	if (actor == NULL || !(esc_account_roles(actor) & (ESC_ROLE_ADMIN | ESC_ROLE_CERT_MANAGER | ESC_ROLE_AUDITOR)))
		return esc_error(ctx, ESC_ERR_DENIED, "account '%s' may not list enrollment passwords",
				 actor ? esc_account_name(actor) : "(none)");
	if ((r = esc_store_exec(ctx, st,
				"SELECT e.name, e.subject, e.profile, a.name, "
				"to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || 'Z', "
				"to_char(e.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || 'Z', "
				"coalesce(to_char(e.used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || 'Z', ''), "
				"CASE WHEN e.used_at IS NOT NULL THEN 'used' WHEN e.expires_at <= now() THEN 'expired' "
				"ELSE 'unused' END FROM enrollment_passwords e JOIN accounts a ON a.id = e.created_by "
				"WHERE $1::text IS NULL OR e.name = $1 ORDER BY e.id DESC LIMIT 1000",
				1, v, NULL, NULL, &res)) != ESC_OK)
		return r;
	rows = PQntuples(res);
	if ((list = calloc((size_t)rows + 1, sizeof(*list))) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < rows; i++) {
		snprintf(list[i].name, sizeof(list[i].name), "%s", PQgetvalue(res, i, 0));
		snprintf(list[i].subject, sizeof(list[i].subject), "%s", PQgetvalue(res, i, 1));
		snprintf(list[i].profile, sizeof(list[i].profile), "%s", PQgetvalue(res, i, 2));
		snprintf(list[i].created_by, sizeof(list[i].created_by), "%s", PQgetvalue(res, i, 3));
		snprintf(list[i].created, sizeof(list[i].created), "%s", PQgetvalue(res, i, 4));
		snprintf(list[i].expires, sizeof(list[i].expires), "%s", PQgetvalue(res, i, 5));
		snprintf(list[i].used, sizeof(list[i].used), "%s", PQgetvalue(res, i, 6));
		snprintf(list[i].state, sizeof(list[i].state), "%s", PQgetvalue(res, i, 7));
	}
	*out = list;
	*n = (size_t)rows;
	list = NULL; /* transferred */
	r = ESC_OK;
out:
	free(list);
	PQclear(res);
	return r;
}

/* ---- The service's TLS certificate ------------------------------------------ */

/* A DNS host name (RFC 1123 labels, no wildcard), lower-cased into buf. */
static int
dns_name(const char *in, char *buf, size_t len)
{
	size_t i, n = strlen(in), label = 0;

	if (n == 0 || n > DNS_NAME_MAX || n >= len)
		return 0;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c == '.') {
			if (label == 0 || in[i - 1] == '-')
				return 0;
			label = 0;
		} else if (isalnum(c) || (c == '-' && label > 0)) {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
		buf[i] = (char)tolower(c);
	}
	buf[n] = '\0';
	return label > 0 && in[n - 1] != '-';
}

static enum esc_err
server_names(struct esc_ctx *ctx, const char *const *names, size_t nnames, GENERAL_NAMES **san, X509_NAME **subject,
	     char *list, size_t listlen)
{
	GENERAL_NAMES *gens = NULL;
	X509_NAME *xn = NULL;
	unsigned char ip[16];
	char host[DNS_NAME_MAX + 1];
	size_t i;
	enum esc_err r;

	if (names == NULL || nnames == 0 || nnames > MAX_SERVER_NAMES)
		return esc_error(ctx, ESC_ERR_USAGE, "a server certificate needs 1..%d names", MAX_SERVER_NAMES);
	for (i = 0; i < nnames; i++)
		if (names[i] == NULL || *names[i] == '\0')
			return esc_error(ctx, ESC_ERR_USAGE, "a server certificate's names may not be empty");
	if (strlen(names[0]) > CN_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "the first name becomes the common name: at most %d characters",
				 CN_MAX);
	if ((gens = sk_GENERAL_NAME_new_null()) == NULL || (xn = X509_NAME_new()) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	list[0] = '\0';
	for (i = 0; i < nnames; i++) {
		const char *nm = names[i];
		int ok;

		if (inet_pton(AF_INET, nm, ip) == 1)
			ok = esc_profile_add_name(gens, GEN_IPADD, ip, 4);
		else if (inet_pton(AF_INET6, nm, ip) == 1)
			ok = esc_profile_add_name(gens, GEN_IPADD, ip, 16);
		else if (dns_name(nm, host, sizeof(host)))
			ok = esc_profile_add_name(gens, GEN_DNS, (const unsigned char *)host, (int)strlen(host));
		else {
			char s[72];

			shown(s, sizeof(s), nm);
			r = esc_error(ctx, ESC_ERR_USAGE, "'%s' is neither an IP address nor a DNS host name", s);
			goto out;
		}
		if (!ok) {
			r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
			goto out;
		}
		snprintf(list + strlen(list), listlen - strlen(list), "%s%s", i ? "," : "", nm);
	}
	if (!X509_NAME_add_entry_by_NID(xn, NID_commonName, MBSTRING_UTF8, (const unsigned char *)names[0], -1, -1,
					0)) {
		r = esc_error_ossl(ctx, ESC_ERR_USAGE, "'%s' cannot be a common name", names[0]);
		goto out;
	}
	*san = gens;
	*subject = xn;
	gens = NULL;
	xn = NULL; /* transferred */
	r = ESC_OK;
out:
	GENERAL_NAMES_free(gens);
	X509_NAME_free(xn);
	return r;
}

static enum esc_err
server_tx(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const char *actor, const char *roles,
	  const X509_NAME *subject, EVP_PKEY *key, const GENERAL_NAMES *san, const char *list, X509 **x)
{
	const struct profile_def *def = esc_profile_def(esc_profile_find("tls-server"));
	char details[600], *serial = NULL;
	struct esc_audit_event ev = {actor, roles, "enroll.server-cert", NULL, "ok", details};
	enum esc_err r;

	if ((r = begin_tx(ctx, st)) != ESC_OK || (r = sign_and_record(ctx, st, k, def, subject, key, san, x)) != ESC_OK)
		goto out;
	if ((serial = esc_cert_serial_hex(*x)) == NULL) {
		r = esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
		goto out;
	}
	ev.object = serial;
	snprintf(details, sizeof(details), "profile tls-server, names %.500s", list);
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK || (r = esc_store_commit(ctx, st)) != ESC_OK)
		goto out;
out:
	esc_store_rollback(st);
	free(serial);
	return r;
}

static enum esc_err
server_cert_impl(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const char *actor, const char *roles,
		 const char *const *names, size_t nnames, EVP_PKEY **keyp, X509 **certp)
{
	GENERAL_NAMES *san = NULL;
	X509_NAME *subject = NULL;
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	char list[700];
	struct esc_store_retry t = {0};
	enum esc_err r;

	if ((r = server_names(ctx, names, nnames, &san, &subject, list, sizeof(list))) != ESC_OK ||
	    (r = esc_profile_generate_key(ctx, esc_profile_find("tls-server"), &key)) != ESC_OK)
		goto out;
	do
		r = server_tx(ctx, st, k, actor, roles, subject, key, san, list, &x);
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK)
		goto out;
	*keyp = key;
	*certp = x;
	key = NULL;
	x = NULL; /* transferred */
	r = ESC_OK;
out:
	X509_free(x);
	EVP_PKEY_free(key);
	X509_NAME_free(subject);
	GENERAL_NAMES_free(san);
	return r;
}

enum esc_err
esc_enroll_server_cert_as(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k,
			  const struct esc_account *actor, const char *const *names, size_t nnames, EVP_PKEY **key,
			  X509 **cert)
{
	const char *who = "ca-token";
	char roles[64] = "service";
	enum esc_err r;

	if (st == NULL || k == NULL || key == NULL || cert == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_enroll_server_cert: NULL argument");
	if (actor != NULL) {
		who = esc_account_name(actor);
		esc_roles_format(esc_account_roles(actor), roles, sizeof(roles));
		if ((r = esc_account_require(ctx, actor, ESC_ROLE_ADMIN)) != ESC_OK)
			goto out;
	}
	r = server_cert_impl(ctx, st, k, who, roles, names, nnames, key, cert);
out:
	if (r != ESC_OK)
		esc_audit_outcome(ctx, st, who, roles, "enroll.server-cert",
				  nnames > 0 && names != NULL && names[0] != NULL ? names[0] : "-", r);
	return r;
}

enum esc_err
esc_enroll_server_cert(struct esc_ctx *ctx, struct esc_store *st, struct esc_keeper *k, const char *const *names,
		       size_t nnames, EVP_PKEY **key, X509 **cert)
{
	return esc_enroll_server_cert_as(ctx, st, k, NULL, names, nnames, key, cert);
}
