/*
 * Login sessions of the JSON API (session.h).
 *
 * A token is looked up by its SHA-256: the hash of 256 random bits is as
 * unguessable as the token, and an index lookup takes the same time for
 * every wrong token, so there is nothing for a timing attack to learn.
 * The lookup and the verdict (idle, lifetime, account disabled, password
 * changed) are one read; a write follows only to end a session or, at
 * most every few seconds, to record its use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <p11escrow/audit.h>
#include <p11escrow/session.h>

#include "auth_internal.h"
#include "internal.h"
#include "store_internal.h"

#define LIFETIME_MAX (31LL * 86400) /* sanity bound; the configuration's is lower */
#define TOUCH_MAX 60		    /* seconds: last_used_at is at most this stale */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int
b64url_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

int
esc_session_token_decode(const char *text, size_t len, unsigned char raw[ESC_SESSION_TOKEN_BYTES])
{
	unsigned long acc = 0;
	size_t i, o = 0;
	int bits = 0, v;

	if (text == NULL || len != ESC_SESSION_TOKEN_LEN)
		return -1;
	for (i = 0; i < len; i++) {
		if ((v = b64url_value(text[i])) < 0)
			return -1;
		acc = (acc << 6) | (unsigned long)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o < ESC_SESSION_TOKEN_BYTES)
				raw[o++] = (unsigned char)(acc >> bits);
			acc &= (1UL << bits) - 1;
		}
	}
	/* 43 characters carry 258 bits: the last 2 must be zero (one text per token). */
	return o == ESC_SESSION_TOKEN_BYTES && bits == 2 && acc == 0 ? 0 : -1;
}

static void
token_encode(const unsigned char raw[ESC_SESSION_TOKEN_BYTES], char out[ESC_SESSION_TOKEN_LEN + 1])
{
	unsigned long acc = 0;
	size_t i, o = 0;
	int bits = 0;

	for (i = 0; i < ESC_SESSION_TOKEN_BYTES; i++) {
		acc = (acc << 8) | raw[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out[o++] = b64url[(acc >> bits) & 63];
		}
		acc &= (1UL << bits) - 1;
	}
	out[o++] = b64url[(acc << (6 - bits)) & 63]; /* 2 bits left, padded with zeros */
	out[o] = '\0';
	OPENSSL_cleanse(&acc, sizeof(acc));
}

/* SHA-256 of the token as the client sent it; -1 if it is no token. */
static int
token_hash(const char *text, size_t len, unsigned char hash[32])
{
	unsigned char raw[ESC_SESSION_TOKEN_BYTES];
	unsigned int hlen = 0;
	int rc = -1;

	if (esc_session_token_decode(text, len, raw) == 0 &&
	    EVP_Digest(raw, sizeof(raw), hash, &hlen, EVP_sha256(), NULL) == 1 && hlen == 32)
		rc = 0;
	OPENSSL_cleanse(raw, sizeof(raw));
	return rc;
}

static enum esc_err
open_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, long long lifetime,
	  const unsigned char hash[32], char *expires, size_t explen)
{
	PGresult *res = NULL;
	char id[32], life[32], roles[64], details[192];
	const char *v[4];
	int by_cert = *esc_account_cert_sha256(a) != '\0';
	int lens[4] = {0, 0, 32, 0}, fmts[4] = {0, 0, 1, 0};
	struct esc_audit_event ev = {esc_account_name(a), roles, "auth.login", esc_account_name(a), "ok", details};
	enum esc_err r;

	snprintf(id, sizeof(id), "%lld", esc_account_id(a));
	snprintf(life, sizeof(life), "%lld", lifetime);
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	/*
	 * The account as it was at the password login: still enabled, not
	 * reset, the same password; or at the certificate login: still
	 * enabled, the certificate still bound and not revoked.
	 * (SERIALIZABLE: a change committing meanwhile makes one of the two
	 * transactions fail and retry.)
	 */
	v[0] = id;
	v[1] = by_cert ? esc_account_cert_sha256(a) : esc_account_pw_stamp(a);
	v[2] = (const char *)hash;
	v[3] = life;
	if ((r = esc_store_exec(
		     ctx, st,
		     by_cert ? "INSERT INTO sessions (token_hash, account_id, expires_at, cert_sha256) "
			       "SELECT $3, a.id, now() + $4::bigint * interval '1 second', c.sha256 FROM accounts a "
			       "JOIN account_certs c ON c.account_id = a.id AND c.sha256 = $2 "
			       "WHERE a.id = $1::bigint AND NOT a.disabled AND NOT EXISTS (SELECT 1 FROM revocations v "
			       "WHERE v.issuer = c.issuer AND ltrim(v.serial, '0') = ltrim(c.serial, '0')) "
			       "RETURNING to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
			     : "INSERT INTO sessions (token_hash, account_id, expires_at) "
			       "SELECT $3, a.id, now() + $4::bigint * interval '1 second' FROM accounts a "
			       "WHERE a.id = $1::bigint AND a.password_changed_at = $2::timestamptz AND NOT a.disabled "
			       "AND NOT a.must_change_password "
			       "RETURNING to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
		     4, v, lens, fmts, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_AUTH, "account '%s' changed since it logged in: log in again",
			      esc_account_name(a));
		goto out;
	}
	snprintf(expires, explen, "%s", PQgetvalue(res, 0, 0));
	if (by_cert)
		snprintf(details, sizeof(details),
			 "session opened, ends by %s at the latest; client certificate SHA256:%s", expires,
			 esc_account_cert_sha256(a));
	else
		snprintf(details, sizeof(details), "session opened, ends by %s at the latest", expires);
	esc_roles_format(esc_account_roles(a), roles, sizeof(roles));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_session_open(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, long long lifetime,
		 struct esc_secret **token, char expires[ESC_SESSION_EXPIRES_LEN])
{
	unsigned char raw[ESC_SESSION_TOKEN_BYTES], hash[32];
	char text[ESC_SESSION_TOKEN_LEN + 1], exp[ESC_SESSION_EXPIRES_LEN] = "";
	struct esc_secret *tok = NULL;
	struct esc_store_retry t = {0};
	unsigned int hlen = 0;
	enum esc_err r;

	if (st == NULL || a == NULL || token == NULL || expires == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_session_open: NULL argument");
	if (lifetime < 1 || lifetime > LIFETIME_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "a session lasts 1 to %lld seconds", LIFETIME_MAX);
	if ((*esc_account_pw_stamp(a) == '\0' && *esc_account_cert_sha256(a) == '\0') || esc_account_must_change(a))
		return esc_error(ctx, ESC_ERR_DENIED,
				 "a session is opened with the account's password or client certificate only");
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot draw a random session token");
		goto out;
	}
	token_encode(raw, text);
	if (EVP_Digest(raw, sizeof(raw), hash, &hlen, EVP_sha256(), NULL) != 1 || hlen != 32) {
		r = esc_error_ossl(ctx, ESC_ERR_CRYPTO, "cannot hash the session token");
		goto out;
	}
	if ((r = esc_secret_new(ctx, text, ESC_SESSION_TOKEN_LEN, &tok)) != ESC_OK)
		goto out;
	do
		r = open_impl(ctx, st, a, lifetime, hash, exp, sizeof(exp));
	while (esc_store_retry(ctx, st, &t, &r));
	if (r != ESC_OK) {
		esc_audit_outcome_by(ctx, st, a, "auth.login", esc_account_name(a), r);
		goto out;
	}
	*token = tok;
	tok = NULL; /* transferred */
	memcpy(expires, exp, sizeof(exp));
out:
	OPENSSL_cleanse(raw, sizeof(raw));
	OPENSSL_cleanse(text, sizeof(text));
	esc_secret_free(tok);
	return r;
}

/* End session id for reason (outside a transaction of the caller's). */
static enum esc_err
end_session(struct esc_ctx *ctx, struct esc_store *st, const char *id, const char *reason)
{
	const char *v[2] = {id, reason};

	return esc_store_exec(ctx, st,
			      "UPDATE sessions SET ended_at = now(), end_reason = $2 WHERE id = $1::bigint AND "
			      "ended_at IS NULL",
			      2, v, NULL, NULL, NULL);
}

enum esc_err
esc_session_resume(struct esc_ctx *ctx, struct esc_store *st, const char *token, size_t len, long long idle,
		   long long lifetime, struct esc_account **out)
{
	PGresult *res = NULL;
	unsigned char hash[32];
	char sidle[32], slife[32], stouch[32], sid[32];
	const char *v[4] = {(const char *)hash, sidle, slife, stouch};
	int lens[4] = {32, 0, 0, 0}, fmts[4] = {1, 0, 0, 0};
	long long touch = idle / 10 > TOUCH_MAX ? TOUCH_MAX : idle / 10;
	enum esc_err r;

	if (st == NULL || out == NULL || idle < 1 || lifetime < 1)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_session_resume: bad argument");
	if (token_hash(token, len, hash) != 0)
		return esc_error(ctx, ESC_ERR_AUTH, "the session token is not valid (ended, expired or unknown)");
	snprintf(sidle, sizeof(sidle), "%lld", idle);
	snprintf(slife, sizeof(slife), "%lld", lifetime);
	snprintf(stouch, sizeof(stouch), "%lld", touch);
	/* One read: the session, its verdict, and the account as it is now. */
	if ((r = esc_store_exec(
		     ctx, st,
		     "SELECT s.id, a.id, a.name, a.roles, coalesce(a.kra_id, 0), "
		     "CASE WHEN a.disabled THEN 'account disabled' "
		     "WHEN s.cert_sha256 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM account_certs c "
		     "WHERE c.sha256 = s.cert_sha256 AND c.account_id = a.id) THEN 'certificate removed' "
		     "WHEN s.cert_sha256 IS NOT NULL AND EXISTS (SELECT 1 FROM account_certs c JOIN revocations v "
		     "ON v.issuer = c.issuer AND ltrim(v.serial, '0') = ltrim(c.serial, '0') "
		     "WHERE c.sha256 = s.cert_sha256) THEN 'certificate revoked' "
		     "WHEN (s.cert_sha256 IS NULL AND a.must_change_password) OR a.password_changed_at > s.created_at "
		     "THEN 'password changed' "
		     "WHEN now() >= least(s.expires_at, s.created_at + $3::bigint * interval '1 second') THEN 'lifetime' "
		     "WHEN now() >= s.last_used_at + $2::bigint * interval '1 second' THEN 'idle' END, "
		     "now() >= s.last_used_at + $4::bigint * interval '1 second' "
		     "FROM sessions s JOIN accounts a ON a.id = s.account_id "
		     "WHERE s.token_hash = $1 AND s.ended_at IS NULL",
		     4, v, lens, fmts, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_AUTH, "the session token is not valid (ended, expired or unknown)");
		goto out;
	}
	snprintf(sid, sizeof(sid), "%s", PQgetvalue(res, 0, 0));
	if (!PQgetisnull(res, 0, 5)) {
		if ((r = end_session(ctx, st, sid, PQgetvalue(res, 0, 5))) != ESC_OK)
			goto out;
		r = esc_error(ctx, ESC_ERR_AUTH, "the session token is not valid (ended, expired or unknown)");
		goto out;
	}
	if (strcmp(PQgetvalue(res, 0, 6), "t") == 0) {
		const char *w[1] = {sid};

		if ((r = esc_store_exec(
			     ctx, st,
			     "UPDATE sessions SET last_used_at = now() WHERE id = $1::bigint AND ended_at IS NULL", 1,
			     w, NULL, NULL, NULL)) != ESC_OK)
			goto out;
	}
	r = esc_account_make(ctx, strtoll(PQgetvalue(res, 0, 1), NULL, 10), PQgetvalue(res, 0, 2),
			     PQgetvalue(res, 0, 3), strtoll(PQgetvalue(res, 0, 4), NULL, 10), out);
out:
	OPENSSL_cleanse(hash, sizeof(hash));
	PQclear(res);
	return r;
}

static enum esc_err
close_impl(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const unsigned char hash[32])
{
	PGresult *res = NULL;
	char id[32], roles[64];
	const char *v[2] = {(const char *)hash, id};
	int lens[2] = {32, 0}, fmts[2] = {1, 0};
	struct esc_audit_event ev = {esc_account_name(a), roles, "auth.logout",
				     esc_account_name(a), "ok",	 "session ended"};
	enum esc_err r;

	snprintf(id, sizeof(id), "%lld", esc_account_id(a));
	if ((r = esc_store_begin(ctx, st)) != ESC_OK)
		return r;
	if ((r = esc_store_exec(ctx, st,
				"UPDATE sessions SET ended_at = now(), end_reason = 'logout' WHERE token_hash = $1 AND "
				"account_id = $2::bigint AND ended_at IS NULL RETURNING id",
				2, v, lens, fmts, &res)) != ESC_OK)
		goto out;
	if (PQntuples(res) != 1) {
		r = esc_error(ctx, ESC_ERR_AUTH, "the session token is not valid (ended, expired or unknown)");
		goto out;
	}
	esc_roles_format(esc_account_roles(a), roles, sizeof(roles));
	if ((r = esc_audit_append(ctx, st, &ev)) != ESC_OK)
		goto out;
	r = esc_store_commit(ctx, st);
out:
	esc_store_rollback(st);
	PQclear(res);
	return r;
}

enum esc_err
esc_session_close(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const char *token, size_t len)
{
	struct esc_store_retry t = {0};
	unsigned char hash[32];
	enum esc_err r;

	if (st == NULL || a == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_session_close: NULL argument");
	if (token_hash(token, len, hash) != 0)
		return esc_error(ctx, ESC_ERR_AUTH, "the session token is not valid (ended, expired or unknown)");
	do
		r = close_impl(ctx, st, a, hash);
	while (esc_store_retry(ctx, st, &t, &r));
	OPENSSL_cleanse(hash, sizeof(hash));
	return r;
}
