/*
 * p11escrow — the keeper: the one holder of a logged-in CA token session.
 *
 * Nothing else touches the CA's private keys, and the keeper hands out no
 * token: it answers typed requests and decides on their meaning before the
 * token is used (DESIGN.md §2).  It signs only certificates it builds
 * itself from a profile (enroll.c's issuance calls it), opens only
 * envelopes addressed to the transport certificate and holding a private
 * key, releases only an approved recovery request it reads itself, and
 * signs only the CRL and audit checkpoints it builds from the database.
 * The CLI's local mode and p11escrowd use this same code.
 */
#ifndef P11ESCROW_KEEPER_H
#define P11ESCROW_KEEPER_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/auth.h>
#include <p11escrow/ctx.h>
#include <p11escrow/err.h>
#include <p11escrow/pin.h>
#include <p11escrow/store.h>

/* ---- The keeper: the CA token session of one thread ----------------------- */

struct esc_keeper;

/*
 * Open the CA token recorded at setup through module (NULL/"": the build
 * default; never a module the recorded URI names: such a URI is refused,
 * and the module must pass ctx's module allow-list), log in
 * with pin, and load what issuance needs: the CA certificate (and any chain
 * above it), the CA signing key and the transport key and certificate.
 * Several keepers may be open in one process (one per worker thread): the
 * module is loaded once and the login is shared, as PKCS#11 has it.
 * Errors: STATE (no active CA), those of esc_token_open/login, DB.
 */
enum esc_err esc_keeper_open(struct esc_ctx *ctx, struct esc_store *st, const char *module,
			     const struct esc_secret *pin, struct esc_keeper **out) ESC_MUST_CHECK;
void esc_keeper_free(struct esc_keeper *k);

/*
 * A keeper in another process, reached over the connected stream socket
 * fd (a socketpair end; k owns it from now on, on failure too, and closes
 * it when freed).  Sends HELLO and keeps the CA certificate, chain and
 * transport certificate of the reply, so esc_keeper_ca_cert & co. answer
 * locally.  Every typed operation below then sends one request of the
 * keeper protocol (keeper_proto.h) and waits for its reply: callers need
 * no change.  Such a keeper holds no token and no PIN; one thread at a
 * time may use it.  When the keeper process is gone (end of stream, a
 * broken or malformed reply, no reply within two minutes) the socket is
 * closed and this and every later operation fails with TOKEN_NOT_FOUND,
 * "the keeper is unavailable" (a 503 for the service): connect anew.
 * Errors: TOKEN_NOT_FOUND, NOMEM, and an error the keeper answered.
 */
enum esc_err esc_keeper_connect(struct esc_ctx *ctx, int fd, struct esc_keeper **out) ESC_MUST_CHECK;

/* Is k a keeper in another process (esc_keeper_connect) whose connection has been lost? */
int esc_keeper_lost(const struct esc_keeper *k);

/*
 * The keeper process's side of one connection: read requests from fd and
 * answer each with the local keeper k (esc_keeper_open) and st, until the
 * peer closes it.  Default deny: only the request types of
 * keeper_proto.h, HELLO first and once, numbered in order; each decided
 * from the keeper's own tables and database (ISSUE names a profile and
 * carries subject, alternative names and public key: the certificate is
 * built here; accounts named by SIGN_CRL and CHECKPOINT are re-read from
 * st, never taken from the request).  A malformed, out-of-order or
 * replayed request, or one the keeper refuses, gets an ERROR reply (code
 * and message) and is logged through ctx; the connection goes on.  A
 * frame that cannot be read (length out of bounds, a cut stream) ends the
 * connection.  Replies holding a private key are built in the secure heap
 * and wiped.  fd stays the caller's.  ctx, k and st serve this connection
 * only (one thread each); k keeps the connection's state (numbering,
 * greeting).  st may be NULL (the database is lost): requests that need
 * it are answered DB_CONNECT.
 * Returns OK when the peer closed the connection, BAD_INPUT after a
 * framing error, IO when a reply could not be written (the connection is
 * over), or, after answering a request that failed because the keeper
 * lost its database or token (DB_CONNECT, PKCS11, TOKEN_NOT_FOUND, MODULE,
 * KEY_NOT_FOUND, PIN_*), that error: the caller mends what it can (a new
 * st; a check that the token is still there) and calls again with the
 * same k and fd to go on with the connection.
 */
enum esc_err esc_keeper_serve(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st, int fd) ESC_MUST_CHECK;

X509 *esc_keeper_ca_cert(const struct esc_keeper *k);
/* Certificates above the CA certificate (external CA), possibly empty; owned by k. */
STACK_OF(X509) *esc_keeper_chain(const struct esc_keeper *k);
X509 *esc_keeper_transport_cert(const struct esc_keeper *k);
/* The CA token's label, for log lines ("keeper process" for a remote keeper). */
const char *esc_keeper_token_label(const struct esc_keeper *k);

/*
 * Is the CA token's session logged in (esc_token_check_login)?  For a
 * remote keeper one STATUS request to the keeper process, answered from
 * the session of that connection's thread: what /readyz asks.  A keeper
 * over software keys has no session to lose: ESC_OK.  Errors: PIN_MISSING
 * (not logged in), PKCS11, TOKEN_NOT_FOUND (the token or the keeper is
 * gone).
 */
enum esc_err esc_keeper_status(struct esc_ctx *ctx, struct esc_keeper *k) ESC_MUST_CHECK;

/*
 * Release approved recovery request id (esc_recovery_release): the request
 * is read and locked in st, and only an approved one is released, its
 * record's storage layer opened with the storage key on the token.
 * Errors: those of esc_recovery_release.
 */
enum esc_err esc_keeper_release(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				long long id) ESC_MUST_CHECK;

/*
 * days 1..366: sign now a CRL built from st's revocations, valid days, and
 * store it as the current CRL (esc_crl_build), on behalf of account by
 * (esc_crl_build_by: its role is checked and a refusal audited), or of the
 * CA PIN holder when by is NULL and k is local (a keeper process refuses
 * that to a worker: DENIED).  days 0: the current CRL, a new one made only
 * when it is due (esc_crl_refresh) — what a worker asks for an anonymous
 * GET /crl.  *out is the caller's.  Errors: those of esc_crl_build(_by),
 * esc_crl_refresh.
 */
enum esc_err esc_keeper_sign_crl(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				 const struct esc_account *by, int days, X509_CRL **out) ESC_MUST_CHECK;

struct esc_kra;
/*
 * Certify a KRA key whose possession a challenge proves
 * (esc_kra_enroll_prove): the challenge is read and used up in st, and only
 * the right answer, in time, by the administrator actor it was issued to,
 * gets the KRA certificate signed with the CA key.  Errors: those of
 * esc_kra_enroll_prove.
 */
enum esc_err esc_keeper_kra_prove(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				  const struct esc_account *actor, const char *name, long long id,
				  const unsigned char *secret, size_t secret_len, struct esc_kra *out,
				  unsigned char **cert, size_t *cert_len) ESC_MUST_CHECK;

/*
 * Sign an audit checkpoint of the chain's end in st with the audit key.
 * by non-NULL: now, for that account (esc_audit_checkpoint_by).  by NULL
 * with events and seconds 0: now, for the holder of the CA token PIN
 * (esc_audit_checkpoint).  Else the service's, if one is due
 * (esc_audit_checkpoint_if_due with events and seconds).  *event_id: the
 * event signed, 0 if none was due.
 */
enum esc_err esc_keeper_checkpoint(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				   const struct esc_account *by, long long events, long long seconds,
				   long long *event_id) ESC_MUST_CHECK;

struct esc_storage_rotation;
struct esc_reseal_batch;
/*
 * Rotate the storage key (esc_storage_rotate) for administrator by, with
 * this keeper's token, CA certificate and CA key.  Only a keeper of this
 * process: the keeper process offers no rotation to its workers, whose
 * database role may not change the storage key (sql/012).
 * Errors: DENIED (a remote keeper, not an administrator), those of
 * esc_storage_rotate.
 */
enum esc_err esc_keeper_rotate_storage(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				       const struct esc_account *by, const char *type, int days,
				       struct esc_storage_rotation *out) ESC_MUST_CHECK;

/*
 * One batch of the storage re-seal job (esc_storage_reseal_batch) for
 * administrator by (NULL: the PIN holder, local keepers only): up to n
 * records after record id after, picked by the keeper in its own
 * database.  Through a remote keeper by is sent by name and re-read there.
 * *out is the caller's (esc_reseal_batch_clear).  Errors: those of
 * esc_storage_reseal_batch.
 */
enum esc_err esc_keeper_reseal(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
			       const struct esc_account *by, const char *after, size_t n,
			       struct esc_reseal_batch *out) ESC_MUST_CHECK;

/*
 * KRA re-wrap through the service (rewrap.h, esc_rewrap_open_record): the
 * keeper opens record id's outer layer for administrator by, if the record
 * needs a re-wrap, and hands back *content, the record's EscrowRecord
 * (its inner layer still sealed to the KRA cards; malloc'd, free()), and
 * sha, the SHA-256 of the stored record it opened.  Through a remote
 * keeper by is sent by name and re-read there.  Errors: those of
 * esc_rewrap_open_record.
 */
enum esc_err esc_keeper_rewrap_open(struct esc_ctx *ctx, struct esc_keeper *k, struct esc_store *st,
				    const struct esc_account *by, const char *id, unsigned char **content,
				    size_t *contentlen, unsigned char sha[32]) ESC_MUST_CHECK;

/*
 * Decrypt a client's archival envelope (DER ContentInfo: CMS EnvelopedData
 * or AuthEnvelopedData) with the transport key on the token, and decode the
 * PKCS#8 inside.  The plaintext is wiped.  Errors: BAD_INPUT (not an
 * envelope, not a private key), NOT_RECIPIENT (not sealed to the transport
 * certificate), TAMPERED, PKCS11.
 */
enum esc_err esc_keeper_open_transport(struct esc_ctx *ctx, struct esc_keeper *k, const unsigned char *env,
				       size_t envlen, EVP_PKEY **key) ESC_MUST_CHECK;

/*
 * A key this CA generated, for its enrollee, encrypted to recipient as RFC
 * 7030 §4.4.2 has it (esc_est_key_package_seal): signed with the CA key on
 * the token.  The keeper signs only what that means: key must be the key
 * of cert, and cert a certificate this CA issued; recipient must be able
 * to receive keys (esc_est_key_recipient_check).  *der is malloc'ed.
 * Errors: USAGE (key and cert do not go together, cert not issued here),
 * BAD_INPUT (recipient), CRYPTO, PKCS11.
 */
enum esc_err esc_keeper_seal_server_key(struct esc_ctx *ctx, struct esc_keeper *k, EVP_PKEY *key, X509 *cert,
					X509 *recipient, unsigned char **der, size_t *derlen) ESC_MUST_CHECK;

#endif
