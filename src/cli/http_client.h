/*
 * p11escrow CLI: a synchronous HTTPS client for the service's JSON API
 * (docs/api.md) and its EST endpoints (docs/est.md), on libcurl.  The
 * requests of one client (one command) share one kept-alive connection.
 * A proxy comes from the environment as libcurl reads it (https_proxy,
 * all_proxy, no_proxy) unless cli_http_set_proxy names one.
 *
 * The server is verified against a CA file (--server-ca FILE, else
 * $P11ESCROW_SERVER_CA), its DNS name or IP address checked against its
 * certificate, TLS 1.2 or newer.  The account logs in once per client (one
 * command) with HTTP Basic — POST /session — or, given a TLS client
 * certificate bound to it (--client-cert/--client-key, else
 * $P11ESCROW_CLIENT_CERT/$P11ESCROW_CLIENT_KEY), with that certificate and
 * no password; every call after that sends the session's token;
 * cli_http_free logs out.  The password comes
 * from cli_password (file, environment, prompt), is wiped once the session
 * is open and is never logged or printed.  Every request has a timeout and every response
 * a maximum size.
 */
#ifndef P11ESCROW_CLI_HTTP_CLIENT_H
#define P11ESCROW_CLI_HTTP_CLIENT_H

#include <stddef.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>

#define CLI_HTTP_RESPONSE_MAX (4 * 1024 * 1024) /* the largest answer: 10000 audit events */
#define CLI_HTTP_TIMEOUT 30			/* seconds without progress */
#define CLI_HTTP_DEADLINE 120			/* seconds for a whole request */
#define CLI_HTTP_SECRET_REPLY_MAX (256 * 1024)	/* an answer holding a private key, in the secure heap */
/* The password of an encrypted --client-key (cli_http_set_client_cert), unless a file is given. */
#define CLI_CLIENT_KEY_PASSWORD_ENV "P11ESCROW_CLIENT_KEY_PASSWORD"

struct cli_http;

/*
 * A client for the service at url ("https://HOST[:PORT][/PREFIX]"),
 * trusting the CA certificates in ca_file (NULL: $P11ESCROW_SERVER_CA),
 * authenticating as user with the password cli_password obtains.  Nothing
 * is sent yet.  Returns 0 or an exit code (printed).
 */
int cli_http_open(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file, const char *user,
		  const char *password_file, struct cli_http **out);

/*
 * cli_http_open with a TLS client certificate: client_cert (PEM, may be
 * followed by its chain) and client_key (PEM, unencrypted, a regular file
 * no other user may access: chmod 600), each else from
 * $P11ESCROW_CLIENT_CERT and $P11ESCROW_CLIENT_KEY.  With a certificate no
 * password is asked for or sent: the certificate bound to the account logs
 * it in, and user (may be NULL) is checked against the account it logs in.
 * Without one, as cli_http_open.  Returns 0 or an exit code (printed).
 */
int cli_http_open_cert(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file, const char *user,
		       const char *password_file, const char *client_cert, const char *client_key,
		       struct cli_http **out);
/*
 * A client for the service at url (as cli_http_open) that logs no account
 * in: for EST, whose enrollee authenticates per request with
 * cli_http_set_client_cert and/or cli_http_set_basic.  Returns 0 or an
 * exit code (printed).
 */
int cli_http_open_anonymous(const char *cmd, struct esc_ctx *ctx, const char *url, const char *ca_file,
			    struct cli_http **out);
/*
 * Use the TLS client certificate of cert_file (PEM, may be followed by its
 * chain) with the key of key_file (PEM, a regular file no other user may
 * access; if encrypted, its password from key_password_file, else
 * $P11ESCROW_CLIENT_KEY_PASSWORD, else a prompt; read into the secure
 * heap).  Returns 0 or an exit code (printed).
 */
int cli_http_set_client_cert(struct cli_http *h, const char *cert_file, const char *key_file,
			     const char *key_password_file);
/* The client certificate and key set (owned by h), NULL if none. */
X509 *cli_http_client_cert(const struct cli_http *h);
EVP_PKEY *cli_http_client_key(const struct cli_http *h);
/* Send HTTP Basic user:pw with every request (built and kept in the secure heap).  Returns 0 or an exit code. */
int cli_http_set_basic(struct cli_http *h, const char *user, const struct esc_secret *pw);
/*
 * Reach the service through the proxy at url (http:// or https://, no
 * credentials: those belong in $https_proxy, not in argv), for every host:
 * the environment's proxy settings, no_proxy included, no longer apply.
 * NULL: nothing changes.  Returns 0 or an exit code (printed).
 */
int cli_http_set_proxy(struct cli_http *h, const char *url);

/* The account the client acts as: --user, or the one its client certificate logged in (after the first call). */
const char *cli_http_account(const struct cli_http *h);
/*
 * The session token the account logged in with (after the client's first
 * call), NUL-terminated, in the secure heap and owned by h; NULL if none.
 * For a request that carries another account's session on its behalf
 * (rewrap --kra --server: each card's KRA account).
 */
const char *cli_http_session_token(const struct cli_http *h);
/* Log out (if logged in), wipe the credentials and free; accepts NULL. */
void cli_http_free(struct cli_http *h);

enum cli_http_method { CLI_HTTP_GET, CLI_HTTP_POST, CLI_HTTP_DELETE };

/*
 * One API call: path below /api/v1 ("/recoveries", query already encoded,
 * see cli_http_query), body a JSON object to POST or NULL.  On a 2xx
 * answer *out is the JSON object answered (json_decref it).  Otherwise the
 * server's reason, or why it could not be reached, is printed and the exit
 * code of the matching library error returned (the server names it).
 */
int cli_http_call(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out);

/*
 * cli_http_call without printing: on failure *status is the HTTP status
 * (0 if no answer came), *err the library error and msg the reason that
 * would have been printed.  For batches that report per item.
 */
int cli_http_call_quiet(struct cli_http *h, enum cli_http_method method, const char *path, json_t *body, json_t **out,
			int *status, enum esc_err *err, char *msg, size_t msglen);

/* An answer of cli_http_send. */
struct cli_http_reply {
	int status;
	char ctype[256];     /* Content-Type as it came, control characters as '?' */
	unsigned char *body; /* NUL-terminated (len bytes before it) */
	size_t len, cap;
	int secure; /* body is in the secure heap */
};

/*
 * One request of any media type: method on path below the URL's path
 * ("/.well-known/est/cacerts"), body of type ctype (NULL: no body;
 * referenced, not copied), asking for accept.  No session login: Basic or
 * the client certificate as set.  secret: the answer holds a secret (a
 * private key): it is received into the secure heap, at most
 * CLI_HTTP_SECRET_REPLY_MAX bytes.  On a 2xx answer 0 and *out (clear it
 * with cli_http_reply_clear, which wipes it).  Otherwise the server's
 * reason (its first line, made printable) or why it could not be reached
 * is printed and the exit code for the status returned.
 */
int cli_http_send(struct cli_http *h, enum cli_http_method method, const char *path, const char *ctype,
		  const void *body, size_t len, const char *accept, int secret, struct cli_http_reply *out);
/* Wipe and free an answer; accepts NULL. */
void cli_http_reply_clear(struct cli_http_reply *r);

/*
 * The library error whose esc_strerror name is code (the "code" and
 * "release_code" members of the API's answers), ESC_OK if code is NULL or
 * names none.
 */
enum esc_err cli_http_error_named(const char *code);

/* Append "?key=value" or "&key=value" (URL-encoded) to buf unless value is NULL.  -1 if it does not fit. */
int cli_http_query(char *buf, size_t len, const char *key, const char *value);

/* Copy the string member key of o into dst (len bytes; "" if absent or not a string), control characters as '?'. */
void cli_json_copy(char *dst, size_t len, const json_t *o, const char *key);
/* The same for a JSON string v itself (an array's entry). */
void cli_json_copy_value(char *dst, size_t len, const json_t *v);
/* The integer member key of o, 0 if absent or not an integer. */
long long cli_json_int(const json_t *o, const char *key);

#endif
