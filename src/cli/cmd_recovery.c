/*
 * p11escrow recovery — two-person key recovery from the command line.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <p11escrow/est.h>
#include <p11escrow/keeper.h>
#include <p11escrow/pin.h>
#include <p11escrow/recovery.h>
#include <p11escrow/token.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define CMD "recovery"

static void
help(void)
{
	printf("Usage: %s " CMD " ACTION [OPTIONS]\n\n"
	       "Recovering a key takes two people: a certificate manager requests (and, if policy\n"
	       "says so, other certificate managers approve); the holder of the CA token releases the\n"
	       "package to the KRA named in the request; that KRA completes it with their card.\n\n"
	       "Actions:\n"
	       "  search  [--serial HEX] [--subject TEXT] [--email ADDR]   find archived keys, newest\n"
	       "                                  first, at most 100, matching every criterion given:\n"
	       "                                  serial (colons, case and leading zeros ignored), subject\n"
	       "                                  (TEXT anywhere, case ignored, %% and _ literal), email\n"
	       "                                  (whole address, case ignored); each an index lookup\n"
	       "  request (--serial HEX | --record ID) --reason TEXT [--kra NAME]\n"
	       "                                  file a request (certificate manager)\n"
	       "  approve ID                      approve another manager's request (certificate manager)\n"
	       "  release ID                      strip the storage layer on the CA token and release the\n"
	       "                                  package to the request's KRA (needs the CA token PIN)\n"
	       "  contribute ID --token URI       k of n (record version 2): open this KRA's share on its card\n"
	       "                                  and re-seal it to the request's KRA, who completes (KRA\n"
	       "                                  account; each of k - 1 other KRAs of the record's set)\n"
	       "  complete ID --token URI (--out FILE | --to-token URI | --to-cert FILE --out FILE)\n"
	       "                                  decrypt on the KRA card, check the key against its\n"
	       "                                  certificate and deliver it, one way only (KRA account):\n"
	       "                                  --out: a password-protected PKCS#12; --to-token: key and\n"
	       "                                  certificate onto the user's replacement token (sensitive,\n"
	       "                                  never extractable); --to-cert: CMS encrypted to that\n"
	       "                                  certificate, holding the PKCS#8 key and the certificate\n"
	       "  deny ID --reason TEXT           deny a pending or approved request (another certificate\n"
	       "                                  manager, or an administrator)\n"
	       "  cancel ID --reason TEXT         cancel a pending, approved or released request (its\n"
	       "                                  requester, or an administrator); a package is deleted\n"
	       "  expire                          expire released packages older than the policy\n"
	       "                                  release_ttl_hours (the service does it by itself)\n"
	       "  list [--state STATE]            recovery requests (pending, approved, released,\n"
	       "                                  completed, denied, cancelled, expired)\n"
	       "  show ID                         one request, as list shows it (any account)\n\n"
	       "With --server URL every action goes through the service's JSON API instead of the\n"
	       "database (no database options needed): the account logs in to the service; the service\n"
	       "holds the CA token and releases an approved request itself (release --server is a\n"
	       "certificate manager's retry); complete --server fetches the package, opens it on the\n"
	       "card here, delivers the key, reports the completion to the service (a key written to a\n"
	       "token is taken off it again if the service does not record it), then writes the file.\n"
	       "k of n: contribute --server fetches this KRA's share (still sealed to its card), opens\n"
	       "and checks it on the card here, re-seals it to the request's KRA and sends back only\n"
	       "that ciphertext; complete --server gets the shares that are in with the package and\n"
	       "combines them on the card here (fewer than k: refused before any PIN is asked for).\n\n"
	       "Options:\n"
	       "      --server URL             the service, e.g. https://escrow.example.org:8443\n"
	       "      --local                  break-glass: straight on the database (or $" CLI_LOCAL_ENV "=1;\n"
	       "                               audited as such)\n"
	       "      --server-ca FILE         CA certificate(s) to verify the service with (else\n"
	       "                               $P11ESCROW_SERVER_CA)\n"
	       "      --client-cert FILE       with --client-key FILE (PEM, chmod 600): log in to the service\n"
	       "                               with this TLS client certificate, bound to the account, and\n"
	       "                               no password (else $P11ESCROW_CLIENT_CERT, $P11ESCROW_CLIENT_KEY)\n"
	       "  -c, --config FILE            configuration file\n"
	       "  -d, --database CONNINFO      libpq connection string\n"
	       "  -u, --user NAME              the acting account (not needed for a local release)\n"
	       "      --password-file FILE     its password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "  -m, --module MODULE          PKCS#11 module of the CA token / the card\n"
	       "  -p, --pin-file FILE          CA token PIN (release; else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "      --token URI              the KRA card (complete, contribute)\n"
	       "      --kra-pin-file FILE      the card's PIN (else $P11ESCROW_KRA_PIN, else a prompt)\n"
	       "  -o, --out FILE               where complete writes the PKCS#12 or the CMS (created, mode\n"
	       "                               0600)\n"
	       "      --p12-password-file FILE the PKCS#12 password (else $P11ESCROW_P12_PASSWORD, else one\n"
	       "                               is generated and shown once)\n"
	       "      --to-token URI           complete onto this token (the user's replacement card) instead\n"
	       "      --to-token-module MODULE its PKCS#11 module (else --module / the configured module)\n"
	       "      --to-token-pin-file FILE its user PIN (else $P11ESCROW_TO_TOKEN_PIN, else a prompt)\n"
	       "      --label TEXT             CKA_LABEL of the key and certificate written there (else the\n"
	       "                               certificate's common name)\n"
	       "      --to-cert FILE           complete as CMS encrypted to this certificate (PEM or DER;\n"
	       "                               valid today, keyUsage keyEncipherment (RSA, 2048 bits or\n"
	       "                               more) or keyAgreement (EC)) instead of a PKCS#12\n"
	       "      --outform pem|der        the CMS's encoding (else PEM if --out ends in .pem, else DER)\n"
	       "      --serial HEX, --subject TEXT, --email ADDR, --record ID, --reason TEXT, --kra NAME,\n"
	       "      --state STATE            as above\n"
	       "      --json                   search, list, show: " CLI_JSON_HELP "\n"
	       "  -h, --help                   this text\n",
	       PROG);
	cli_print_exit_codes();
}

struct opts {
	const char *config, *database, *user, *password_file, *module, *pin_file, *token, *kra_pin_file;
	const char *out, *p12_password_file, *serial, *subject, *email, *record, *reason, *kra, *state;
	const char *server, *server_ca, *client_cert, *client_key;
	const char *to_token, *to_token_module, *to_token_pin_file, *label, *to_cert, *outform;
	long long id;
	int json; /* --json: search and list print one JSON document */
};

/* The records found, as text or (--json) a JSON array; 0 or an exit code. */
static int
print_records(const struct esc_record_summary *s, size_t n, int json)
{
	size_t i;

	if (json)
		return cli_json_print(CMD, cli_json_array(s, n, sizeof(*s), cli_json_record));
	for (i = 0; i < n; i++)
		printf("record %s%s\n  serial:  %s\n  subject: %s\n  email:   %s\n  issuer:  %s%s\n  KRAs:    %s\n"
		       "  archived: %s\n",
		       s[i].id,
		       s[i].tampered ? "  TAMPERED: its database row does not match its certificate (shown)" : "",
		       s[i].serial, s[i].subject, s[i].email, s[i].issuer, s[i].foreign ? " (foreign)" : "", s[i].kras,
		       s[i].created);
	printf("%zu record(s)\n", n);
	return 0;
}

/* One request as text: two or three lines. */
static void
print_one_request(const struct esc_recovery *q)
{
	printf("request %lld  %-9s record %s serial %s\n  subject: %s\n%s  requested by %s at %s, KRA %s, "
	       "approvals %d/%d\n  reason: %s\n",
	       q->id, q->state, q->record_id, q->serial, q->subject,
	       q->tampered ? "  TAMPERED: the record's database row does not match its certificate (shown)\n" : "",
	       q->requester, q->created, q->kra, q->approvals, q->approvals_required, q->reason);
}

/* The requests, as text or (--json) a JSON array; 0 or an exit code. */
static int
print_requests(const struct esc_recovery *q, size_t n, int json)
{
	size_t i;

	if (json)
		return cli_json_print(CMD, cli_json_array(q, n, sizeof(*q), cli_json_request));
	for (i = 0; i < n; i++)
		print_one_request(&q[i]);
	printf("%zu request(s)\n", n);
	return 0;
}

/* One request (show): as list prints it, or (--json) a JSON object; 0 or an exit code. */
static int
print_request(const struct esc_recovery *q, int json)
{
	if (json)
		return cli_json_print(CMD, cli_json_request(q));
	print_one_request(q);
	return 0;
}

static int
do_search(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const struct opts *o)
{
	struct esc_record_summary *s = NULL;
	size_t n = 0;
	enum esc_err r;
	int rc;

	if ((r = esc_archive_search(ctx, st, a, o->serial, o->subject, o->email, &s, &n)) != ESC_OK)
		return cli_fail(CMD, ctx, r);
	rc = print_records(s, n, o->json);
	free(s);
	return rc;
}

/*
 * complete delivers the key one way: a PKCS#12 (--out), onto a token
 * (--to-token) or to a certificate (--to-cert with --out); the options of
 * one way are refused with another, and outside complete.
 */
static int
check_complete_options(const struct opts *o, const char *action)
{
	if (strcmp(action, "complete") != 0) {
		if (o->to_token || o->to_cert || o->to_token_module || o->to_token_pin_file || o->label || o->outform)
			return cli_usage_error(CMD, "--to-token, --to-token-module, --to-token-pin-file, --label, "
						    "--to-cert and --outform are options of complete");
		return 0;
	}
	if (o->token == NULL)
		return cli_usage_error(CMD, "complete needs --token URI (the KRA card)");
	if (o->to_token != NULL && o->to_cert != NULL)
		return cli_usage_error(CMD, "complete delivers the key one way: --out FILE (PKCS#12), --to-token URI "
					    "or --to-cert FILE with --out FILE, not both --to-token and --to-cert");
	if (o->to_token != NULL) {
		if (o->out != NULL || o->p12_password_file != NULL || o->outform != NULL)
			return cli_usage_error(CMD, "--to-token writes the key onto the token: no --out, "
						    "--p12-password-file or --outform");
		return 0;
	}
	if (o->out == NULL)
		return cli_usage_error(CMD,
				       "complete needs --out FILE (PKCS#12, or the CMS of --to-cert) or --to-token "
				       "URI");
	if (o->to_token_module != NULL || o->to_token_pin_file != NULL || o->label != NULL)
		return cli_usage_error(CMD, "--to-token-module, --to-token-pin-file and --label go with --to-token");
	if (o->to_cert != NULL && o->p12_password_file != NULL)
		return cli_usage_error(CMD, "--to-cert encrypts to the certificate: no --p12-password-file");
	if (o->to_cert == NULL && o->outform != NULL)
		return cli_usage_error(CMD, "--outform goes with --to-cert");
	if (o->outform != NULL && strcmp(o->outform, "pem") != 0 && strcmp(o->outform, "der") != 0)
		return cli_usage_error(CMD, "--outform is pem or der");
	return 0;
}

/*
 * Base64 field key of o, decoded: at most max bytes, exactly exact bytes
 * if exact is not 0 (free()).  Returns 0 or the exit code (printed).
 */
static int
b64_field(struct esc_ctx *ctx, const json_t *o, const char *key, size_t max, size_t exact, unsigned char **out,
	  size_t *len)
{
	const char *b64 = json_string_value(json_object_get(o, key));

	if (esc_b64_decode_max(ctx, b64, b64 != NULL ? strlen(b64) : 0, max, out, len) != ESC_OK ||
	    (exact != 0 && *len != exact)) {
		fprintf(stderr, "%s %s: error: the service's answer has no valid '%s'\n", PROG, CMD, key);
		free(*out);
		*out = NULL;
		return esc_err_exit_code(ESC_ERR_BAD_INPUT);
	}
	return 0;
}

/*
 * k of n (record version 2): the shares of the package's JSON — this
 * KRA's own and those contributed, each still sealed to its card — added
 * to pkg.  A version 1 package has none.  Returns 0 or the exit code.
 */
static int
add_remote_shares(struct esc_ctx *ctx, struct esc_recovery_package *pkg, const json_t *doc)
{
	const json_t *list = json_object_get(doc, "shares"), *e;
	unsigned char *commitment = NULL, *sealed = NULL, *cert = NULL;
	size_t i, clen = 0, slen = 0, certlen = 0;
	char record[64];
	enum esc_err r;
	int rc = 0;

	if (list == NULL)
		return 0;
	cli_json_copy(record, sizeof(record), doc, "record");
	if (!json_is_array(list)) {
		fprintf(stderr, "%s %s: error: the service's answer has no valid 'shares'\n", PROG, CMD);
		return esc_err_exit_code(ESC_ERR_BAD_INPUT);
	}
	json_array_foreach(list, i, e)
	{
		if ((rc = b64_field(ctx, e, "commitment", 32, 32, &commitment, &clen)) != 0 ||
		    (rc = b64_field(ctx, e, "sealed", 64 * 1024, 0, &sealed, &slen)) != 0 ||
		    (rc = b64_field(ctx, e, "certificate", 64 * 1024, 0, &cert, &certlen)) != 0)
			break;
		r = esc_recovery_package_add_share(ctx, pkg, record, (unsigned)cli_json_int(doc, "threshold"),
						   (unsigned)cli_json_int(e, "x"), commitment, sealed, slen, cert,
						   certlen);
		free(commitment);
		free(sealed);
		free(cert);
		commitment = sealed = cert = NULL;
		if (r != ESC_OK) {
			rc = cli_fail(CMD, ctx, r);
			break;
		}
	}
	free(commitment);
	free(sealed);
	free(cert);
	return rc;
}

/* GET the package of request id (the service checks it is addressed to this KRA account and released). */
static int
remote_fetch(struct cli_http *h, struct esc_ctx *ctx, long long id, struct esc_recovery_package **out)
{
	static const char *const parts[] = {"package", "certificate", "kra_certificate"};
	struct esc_recovery_package *pkg = NULL;
	unsigned char *der[3] = {NULL, NULL, NULL};
	size_t len[3] = {0, 0, 0}, i;
	char path[64], kra[65], uri[512];
	json_t *doc = NULL;
	enum esc_err r;
	int rc;

	snprintf(path, sizeof(path), "/recoveries/%lld/package", id);
	if ((rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0)
		return rc;
	for (i = 0; i < 3; i++) {
		const char *b64 = json_string_value(json_object_get(doc, parts[i]));

		if (esc_b64_decode_max(ctx, b64, b64 != NULL ? strlen(b64) : 0, 1024 * 1024, &der[i], &len[i]) !=
		    ESC_OK) {
			fprintf(stderr, "%s %s: error: the service's answer has no valid '%s': %s\n", PROG, CMD,
				parts[i], esc_ctx_errmsg(ctx));
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
	}
	cli_json_copy(kra, sizeof(kra), doc, "kra");
	cli_json_copy(uri, sizeof(uri), doc, "kra_key_uri");
	if ((r = esc_recovery_package_new(ctx, id, der[0], len[0], der[1], len[1], der[2], len[2], kra, uri, &pkg)) !=
	    ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	if ((rc = add_remote_shares(ctx, pkg, doc)) != 0)
		goto out;
	*out = pkg;
	pkg = NULL; /* transferred */
out:
	esc_recovery_package_free(pkg);
	for (i = 0; i < 3; i++)
		free(der[i]);
	json_decref(doc);
	return rc;
}

/* The recipient certificate of --to-cert: one certificate, PEM or DER, at most 64 KiB. */
static int
read_recipient(const char *path, X509 **out)
{
	unsigned char buf[64 * 1024];
	const unsigned char *p = buf;
	size_t n = 0;
	BIO *b = NULL;
	X509 *x = NULL;
	FILE *f;

	if ((f = fopen(path, "rb")) == NULL) {
		fprintf(stderr, "%s %s: error: cannot read '%s': %s (nothing was changed)\n", PROG, CMD, path,
			strerror(errno));
		return esc_err_exit_code(ESC_ERR_IO);
	}
	n = fread(buf, 1, sizeof(buf), f);
	if (n == sizeof(buf) || ferror(f)) {
		fclose(f);
		fprintf(stderr, "%s %s: error: '%s' is not one certificate of at most %zu bytes\n", PROG, CMD, path,
			sizeof(buf) - 1);
		return esc_err_exit_code(ESC_ERR_BAD_INPUT);
	}
	fclose(f);
	if ((b = BIO_new_mem_buf(buf, (int)n)) != NULL)
		x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	if (x == NULL && ((x = d2i_X509(NULL, &p, (long)n)) == NULL || p != buf + n)) {
		X509_free(x);
		x = NULL;
	}
	ERR_clear_error();
	if (x == NULL) {
		fprintf(stderr, "%s %s: error: '%s' holds no X.509 certificate (PEM or DER)\n", PROG, CMD, path);
		return esc_err_exit_code(ESC_ERR_BAD_INPUT);
	}
	*out = x;
	return 0;
}

/* --outform, else the file's extension: ".pem" is PEM, anything else DER (.p7m, .der). */
static int
wants_pem(const struct opts *o)
{
	size_t n = o->out != NULL ? strlen(o->out) : 0;

	if (o->outform != NULL)
		return strcmp(o->outform, "pem") == 0;
	return n >= 4 && strcasecmp(o->out + n - 4, ".pem") == 0;
}

/*
 * The output form of a PKCS#12 (--out) or of the user's replacement token
 * (--to-token, opened and logged in to here; *target and *target_pin are
 * the caller's).  --to-cert's is made first, in do_complete.
 */
static enum esc_err
make_output(struct esc_ctx *ctx, struct esc_config *cfg, const struct opts *o, const struct esc_secret *pw,
	    struct esc_token **target, struct esc_secret **target_pin, struct esc_recovery_output **out)
{
	enum esc_err r;

	if (o->to_token == NULL)
		return esc_recovery_output_p12(ctx, pw, out);
	if ((r = esc_token_open(ctx, o->to_token_module ? o->to_token_module : esc_config_get(cfg, "module"),
				o->to_token, target)) != ESC_OK ||
	    (r = esc_secret_obtain(ctx, o->to_token_pin_file, "P11ESCROW_TO_TOKEN_PIN",
				   "Replacement token PIN: ", target_pin)) != ESC_OK ||
	    (r = esc_token_login(ctx, *target, *target_pin)) != ESC_OK)
		return r;
	return esc_recovery_output_token(ctx, *target, o->label, out);
}

/*
 * Report a completion through the service: POST …/complete, with the form
 * and destination when the key did not become a PKCS#12 (so the audit
 * event names them).  Returns 0 or the exit code (printed).
 */
static int
remote_report(struct cli_http *h, long long id, const struct esc_recovery_output *dest)
{
	enum esc_recovery_form form = esc_recovery_output_form(dest);
	json_t *body = NULL, *done = NULL;
	char path[64];
	int rc;

	snprintf(path, sizeof(path), "/recoveries/%lld/complete", id);
	if (form != ESC_RECOVERY_P12 &&
	    ((body = json_object()) == NULL ||
	     json_object_set_new(body, "output", json_string(esc_recovery_form_name(form))) != 0 ||
	     json_object_set_new(body, "destination", json_string(esc_recovery_output_destination(dest))) != 0)) {
		json_decref(body);
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	rc = cli_http_call(h, CLI_HTTP_POST, path, body, &done);
	json_decref(body);
	json_decref(done);
	return rc;
}

/*
 * Complete request o->id with the KRA card: locally (h NULL: the library
 * checks, opens, delivers and marks it completed in one transaction) or
 * through the service (h: fetch the package, open it on the card here,
 * deliver, report the completion — taking the delivery back if the
 * service does not record it — then write the file).
 */
static int
do_complete(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const struct esc_account *a,
	    struct cli_http *h, const struct opts *o)
{
	struct esc_recovery_package *pkg = NULL;
	struct esc_recovery_output *dest = NULL;
	struct esc_token *card = NULL, *target = NULL;
	struct esc_secret *pin = NULL, *pw = NULL, *target_pin = NULL;
	X509 *recipient = NULL;
	const unsigned char *data;
	size_t len = 0, off = 0;
	enum esc_err r = ESC_OK;
	int fd = -1, generated = 0, rc;
	ssize_t w;

	/* A recipient certificate that will not do is refused before anything else. */
	if (o->to_cert != NULL && (rc = read_recipient(o->to_cert, &recipient)) != 0)
		return rc;
	if (recipient != NULL && (r = esc_recovery_output_cert(ctx, recipient, wants_pem(o), &dest)) != ESC_OK)
		goto out;
	/* Refuse early and change nothing if the output cannot be created. */
	if (o->out != NULL && (fd = open(o->out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)) == -1) {
		fprintf(stderr, "%s %s: error: cannot create '%s': %s (nothing was changed)\n", PROG, CMD, o->out,
			strerror(errno));
		rc = esc_err_exit_code(ESC_ERR_IO);
		goto cleanup;
	}
	/* Through the service, ask for the package before anyone types a PIN. */
	if (h != NULL && (rc = remote_fetch(h, ctx, o->id, &pkg)) != 0)
		goto cleanup;
	if (o->to_token == NULL && o->to_cert == NULL) {
		if (o->p12_password_file != NULL || getenv("P11ESCROW_P12_PASSWORD") != NULL)
			r = esc_secret_obtain(ctx, o->p12_password_file, "P11ESCROW_P12_PASSWORD", NULL, &pw);
		else {
			r = cli_random_password(ctx, &pw);
			generated = 1;
		}
	}
	if (r != ESC_OK || (r = esc_token_open(ctx, esc_config_get(cfg, "module"), o->token, &card)) != ESC_OK ||
	    (r = esc_secret_obtain(ctx, o->kra_pin_file, "P11ESCROW_KRA_PIN", "KRA card PIN: ", &pin)) != ESC_OK ||
	    (r = esc_token_login(ctx, card, pin)) != ESC_OK ||
	    (dest == NULL && (r = make_output(ctx, cfg, o, pw, &target, &target_pin, &dest)) != ESC_OK))
		goto out;
	if (h == NULL)
		r = esc_recovery_complete_to(ctx, st, a, o->id, card, dest);
	else
		r = esc_recovery_open_package_to(ctx, pkg, card, dest);
	if (r != ESC_OK)
		goto out;
	/* The service records the completion (and deletes the package) before the file exists, as locally. */
	if (h != NULL && (rc = remote_report(h, o->id, dest)) != 0) {
		if (esc_recovery_output_undo(ctx, dest) != ESC_OK)
			fprintf(stderr, "%s %s: error: %s\n", PROG, CMD, esc_ctx_errmsg(ctx));
		fprintf(stderr,
			"%s %s: the service did not record the completion: %s; request %lld stays released, run "
			"the command again\n",
			PROG, CMD,
			esc_recovery_output_form(dest) == ESC_RECOVERY_TOKEN ? "the key was taken off the token again"
									     : "nothing was written",
			o->id);
		goto cleanup;
	}
	if (esc_recovery_output_form(dest) == ESC_RECOVERY_TOKEN) {
		printf("request %lld completed: the key matches its certificate; key and certificate written onto "
		       "token '%s': %s\n",
		       o->id, esc_token_label(target), esc_recovery_output_destination(dest));
		goto out;
	}
	data = esc_recovery_output_data(dest, &len);
	while (off < len) {
		if ((w = write(fd, data + off, len - off)) < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	if (off < len || fsync(fd) != 0 || close(fd) != 0) {
		/* The request is completed: say so plainly. */
		fprintf(stderr, "%s %s: error: writing '%s' failed: %s; request %lld is completed, file a new one\n",
			PROG, CMD, o->out, strerror(errno), o->id);
		rc = esc_err_exit_code(ESC_ERR_IO);
		goto cleanup;
	}
	fd = -1;
	if (esc_recovery_output_form(dest) == ESC_RECOVERY_CERT) {
		printf("request %lld completed: the key matches its certificate; CMS (%s) encrypted to certificate %s "
		       "written to %s\n",
		       o->id, wants_pem(o) ? "PEM" : "DER", esc_recovery_output_destination(dest), o->out);
		goto out;
	}
	printf("request %lld completed: the key matches its certificate; PKCS#12 written to %s\n", o->id, o->out);
	if (generated)
		printf("PKCS#12 password (shown once, give it to the key's owner by a separate channel): %s\n",
		       esc_secret_str(pw));
out:
	rc = r == ESC_OK ? 0 : cli_fail(CMD, ctx, r);
cleanup:
	if (fd != -1) {
		close(fd);
		unlink(o->out); /* nothing half-written */
	}
	esc_recovery_output_free(dest);
	esc_recovery_package_free(pkg);
	X509_free(recipient);
	esc_secret_free(pin);
	esc_secret_free(target_pin);
	esc_secret_free(pw);
	esc_token_free(target);
	esc_token_free(card);
	return rc;
}

/* GET this KRA account's share of request id, still sealed to its card (the service checks who may). */
static int
remote_share(struct cli_http *h, struct esc_ctx *ctx, long long id, struct esc_recovery_share **out)
{
	struct esc_recovery_share_parts sp;
	unsigned char *commitment = NULL, *sealed = NULL, *kra_cert = NULL, *completer_cert = NULL;
	size_t clen = 0, slen = 0, klen = 0, cclen = 0;
	char path[64], record[64], kra[65], uri[512], completer[65], recipient[32];
	json_t *doc = NULL;
	enum esc_err r;
	int rc;

	snprintf(path, sizeof(path), "/recoveries/%lld/share", id);
	if ((rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0)
		return rc;
	memset(&sp, 0, sizeof(sp));
	if ((rc = b64_field(ctx, doc, "commitment", 32, 32, &commitment, &clen)) != 0 ||
	    (rc = b64_field(ctx, doc, "sealed", 64 * 1024, 0, &sealed, &slen)) != 0 ||
	    (rc = b64_field(ctx, doc, "kra_certificate", 64 * 1024, 0, &kra_cert, &klen)) != 0 ||
	    (rc = b64_field(ctx, doc, "completer_certificate", 64 * 1024, 0, &completer_cert, &cclen)) != 0)
		goto out;
	cli_json_copy(record, sizeof(record), doc, "record");
	cli_json_copy(kra, sizeof(kra), doc, "kra");
	cli_json_copy(uri, sizeof(uri), doc, "kra_key_uri");
	cli_json_copy(completer, sizeof(completer), doc, "completer");
	cli_json_copy(recipient, sizeof(recipient), doc, "completer_recipient");
	sp.id = id;
	sp.record_id = record;
	sp.x = (unsigned)cli_json_int(doc, "x");
	sp.threshold = (unsigned)cli_json_int(doc, "threshold");
	sp.commitment = commitment;
	sp.sealed = sealed;
	sp.sealed_len = slen;
	sp.kra_cert = kra_cert;
	sp.kra_cert_len = klen;
	sp.kra_name = kra;
	sp.key_uri = uri;
	sp.completer_cert = completer_cert;
	sp.completer_cert_len = cclen;
	sp.completer_name = completer;
	sp.completer_recipient = recipient;
	if ((r = esc_recovery_share_new(ctx, &sp, out)) != ESC_OK)
		rc = cli_fail(CMD, ctx, r);
out:
	free(commitment);
	free(sealed);
	free(kra_cert);
	free(completer_cert);
	json_decref(doc);
	return rc;
}

/* POST the share re-sealed here to the service, which stores it under every check again. */
static int
remote_contribute(struct cli_http *h, struct esc_ctx *ctx, long long id, const unsigned char *resealed, size_t len,
		  int *have, int *need)
{
	char path[64], *b64 = NULL;
	json_t *body = NULL, *doc = NULL;
	size_t i, j, b64len = 0;
	int rc;

	if (esc_b64_encode(ctx, resealed, len, &b64, &b64len) != ESC_OK)
		return cli_fail(CMD, ctx, ESC_ERR_NOMEM);
	/* One line: esc_b64_encode breaks it with CRLF. */
	for (i = j = 0; b64[i] != '\0'; i++)
		if (b64[i] != '\r' && b64[i] != '\n')
			b64[j++] = b64[i];
	b64[j] = '\0';
	if ((body = json_object()) == NULL || json_object_set_new(body, "contributed", json_string(b64)) != 0) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	snprintf(path, sizeof(path), "/recoveries/%lld/contribute", id);
	if ((rc = cli_http_call(h, CLI_HTTP_POST, path, body, &doc)) != 0)
		goto out;
	*have = (int)cli_json_int(doc, "have");
	*need = (int)cli_json_int(doc, "need");
out:
	free(b64);
	json_decref(body);
	json_decref(doc);
	return rc;
}

/*
 * k of n: this KRA's share, opened on its card, re-sealed to the request's
 * KRA (docs/recovery.md): locally (h NULL: one transaction on the
 * database) or through the service (h: fetch the share before the PIN is
 * asked for, open and re-seal it on the card here, send back only the
 * ciphertext to the completing KRA).
 */
static int
do_contribute(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const struct esc_account *a,
	      struct cli_http *h, const struct opts *o)
{
	struct esc_recovery_share *share = NULL;
	struct esc_recovery_share_parts sp;
	struct esc_token *card = NULL;
	struct esc_secret *pin = NULL;
	unsigned char *resealed = NULL;
	size_t resealedlen = 0;
	int have = 0, need = 0, rc = 0;
	enum esc_err r;

	if (h != NULL) {
		if ((rc = remote_share(h, ctx, o->id, &share)) != 0)
			return rc;
		/* Before the PIN: whom the share will go to, to check against the request. */
		esc_recovery_share_parts(share, &sp);
		printf("request %lld: share x = %u of KRA '%s' fetched, still sealed to its card; it goes to KRA '%s', "
		       "the request's completer\n",
		       o->id, sp.x, sp.kra_name, sp.completer_name);
		fflush(stdout);
	}
	if ((r = esc_token_open(ctx, esc_config_get(cfg, "module"), o->token, &card)) != ESC_OK ||
	    (r = esc_secret_obtain(ctx, o->kra_pin_file, "P11ESCROW_KRA_PIN", "KRA card PIN: ", &pin)) != ESC_OK ||
	    (r = esc_token_login(ctx, card, pin)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	if (h == NULL)
		r = esc_recovery_contribute(ctx, st, a, o->id, card, &have, &need);
	else
		r = esc_recovery_share_reseal(ctx, share, card, &resealed, &resealedlen);
	if (r != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	if (h != NULL && (rc = remote_contribute(h, ctx, o->id, resealed, resealedlen, &have, &need)) != 0)
		goto out;
	if (h != NULL)
		printf("request %lld: share opened on card '%s', checked and re-sealed here; the service relayed "
		       "ciphertext only\n",
		       o->id, esc_token_label(card));
	printf("request %lld: share contributed, re-sealed to the request's KRA; %d of %d share(s) in%s\n", o->id, have,
	       need, have >= need ? ": it can complete" : "");
out:
	free(resealed);
	esc_recovery_share_free(share);
	esc_secret_free(pin);
	esc_token_free(card);
	return rc;
}

static int
do_release(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const struct opts *o)
{
	struct esc_keeper *k = NULL;
	enum esc_err r;
	int rc;

	/* The same keeper as the service's, on the CA token recorded at setup. */
	if ((rc = cli_open_keeper(CMD, ctx, cfg, st, &k)) != 0)
		return rc;
	if ((r = esc_keeper_release(ctx, k, st, o->id)) == ESC_OK)
		printf("request %lld released to its KRA\n", o->id);
	esc_keeper_free(k);
	return r == ESC_OK ? 0 : cli_fail(CMD, ctx, r);
}

static int
do_list(struct esc_ctx *ctx, struct esc_store *st, const struct esc_account *a, const struct opts *o)
{
	struct esc_recovery *q = NULL;
	size_t n = 0;
	enum esc_err r;
	int rc;

	if ((r = esc_recovery_list(ctx, st, a, o->state, &q, &n)) != ESC_OK)
		return cli_fail(CMD, ctx, r);
	rc = print_requests(q, n, o->json);
	free(q);
	return rc;
}

/* ---- through the service (--server) ------------------------------------------------------------------------- */

static void
request_from_json(struct esc_recovery *q, const json_t *o)
{
	memset(q, 0, sizeof(*q));
	q->id = cli_json_int(o, "id");
	cli_json_copy(q->record_id, sizeof(q->record_id), o, "record");
	cli_json_copy(q->serial, sizeof(q->serial), o, "serial");
	cli_json_copy(q->subject, sizeof(q->subject), o, "subject");
	q->tampered = json_is_true(json_object_get(o, "tampered"));
	cli_json_copy(q->state, sizeof(q->state), o, "state");
	cli_json_copy(q->requester, sizeof(q->requester), o, "requester");
	cli_json_copy(q->kra, sizeof(q->kra), o, "kra");
	cli_json_copy(q->reason, sizeof(q->reason), o, "reason");
	q->approvals = (int)cli_json_int(o, "approvals");
	q->approvals_required = (int)cli_json_int(o, "approvals_required");
	cli_json_copy(q->created, sizeof(q->created), o, "created");
}

static int
remote_search(struct cli_http *h, const struct opts *o)
{
	struct esc_record_summary *s = NULL;
	char path[1024] = "/records";
	const json_t *list, *e, *k;
	json_t *doc = NULL;
	size_t n, i, j, used;
	int rc;

	if (cli_http_query(path, sizeof(path), "serial", o->serial) != 0 ||
	    cli_http_query(path, sizeof(path), "subject", o->subject) != 0 ||
	    cli_http_query(path, sizeof(path), "email", o->email) != 0)
		return cli_usage_error(CMD, "search criteria too long");
	if ((rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0)
		return rc;
	list = json_object_get(doc, "records");
	n = json_array_size(list);
	if ((s = calloc(n + 1, sizeof(*s))) == NULL) {
		json_decref(doc);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	for (i = 0; i < n; i++) {
		e = json_array_get(list, i);
		cli_json_copy(s[i].id, sizeof(s[i].id), e, "id");
		cli_json_copy(s[i].serial, sizeof(s[i].serial), e, "serial");
		cli_json_copy(s[i].subject, sizeof(s[i].subject), e, "subject");
		cli_json_copy(s[i].email, sizeof(s[i].email), e, "email");
		cli_json_copy(s[i].issuer, sizeof(s[i].issuer), e, "issuer");
		cli_json_copy(s[i].created, sizeof(s[i].created), e, "created");
		s[i].foreign = json_is_true(json_object_get(e, "foreign"));
		s[i].tampered = json_is_true(json_object_get(e, "tampered"));
		for (j = 0, used = 0; (k = json_array_get(json_object_get(e, "kras"), j)) != NULL && json_is_string(k);
		     j++) {
			int w = snprintf(s[i].kras + used, sizeof(s[i].kras) - used, "%s%s", j ? "," : "",
					 json_string_value(k));

			if (w < 0 || (size_t)w >= sizeof(s[i].kras) - used)
				break;
			used += (size_t)w;
		}
	}
	rc = print_records(s, n, o->json);
	free(s);
	json_decref(doc);
	return rc;
}

static int
remote_list(struct cli_http *h, const struct opts *o)
{
	struct esc_recovery *q = NULL;
	char path[512] = "/recoveries";
	const json_t *list;
	json_t *doc = NULL;
	size_t n, i;
	int rc;

	if (cli_http_query(path, sizeof(path), "state", o->state) != 0)
		return cli_usage_error(CMD, "--state too long");
	if ((rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0)
		return rc;
	list = json_object_get(doc, "recoveries");
	n = json_array_size(list);
	if ((q = calloc(n + 1, sizeof(*q))) == NULL) {
		json_decref(doc);
		return esc_err_exit_code(ESC_ERR_NOMEM);
	}
	for (i = 0; i < n; i++)
		request_from_json(&q[i], json_array_get(list, i));
	rc = print_requests(q, n, o->json);
	free(q);
	json_decref(doc);
	return rc;
}

/*
 * What became of a request the service answered with (it releases an
 * approved request itself).  Returns 0, or the exit code of the release
 * error the answer carries: the request stands, but the command did not
 * do all it was asked (docs/api.md).
 */
static int
report_state(const json_t *doc)
{
	struct esc_recovery q;
	char err[512], code[64];
	enum esc_err e;

	request_from_json(&q, doc);
	cli_json_copy(err, sizeof(err), doc, "release_error");
	cli_json_copy(code, sizeof(code), doc, "release_code");
	if (strcmp(q.state, "released") == 0)
		printf("request %lld released by the service to KRA '%s'\n", q.id, q.kra);
	else if (strcmp(q.state, "pending") == 0)
		printf("request %lld is pending: %d of %d approval(s)\n", q.id, q.approvals, q.approvals_required);
	else
		printf("request %lld is %s\n", q.id, q.state);
	if (!*err && !*code)
		return 0;
	/* An answer that names no known error still reports a failed release: a server fault. */
	if ((e = cli_http_error_named(code)) == ESC_OK)
		e = ESC_ERR_INTERNAL;
	fprintf(stderr,
		"%s %s: error: the service could not release request %lld: %s (the request stays approved; a "
		"certificate manager can retry with 'recovery release %lld --server URL')\n",
		PROG, CMD, q.id, *err ? err : esc_strerror(e), q.id);
	return esc_err_exit_code(e);
}

/* Every action through the service's JSON API: no database, the service checks what the library checks. */
static int
remote_main(struct esc_ctx *ctx, struct esc_config *cfg, const struct opts *o, const char *action)
{
	struct cli_http *h = NULL;
	json_t *body = NULL, *doc = NULL;
	char path[96];
	int rc;

	if ((rc = cli_http_open_cert(CMD, ctx, o->server, o->server_ca, o->user, o->password_file, o->client_cert,
				     o->client_key, &h)) != 0)
		return rc;
	if (strcmp(action, "search") == 0)
		rc = remote_search(h, o);
	else if (strcmp(action, "list") == 0)
		rc = remote_list(h, o);
	else if (strcmp(action, "complete") == 0)
		rc = do_complete(ctx, cfg, NULL, NULL, h, o);
	else if (strcmp(action, "contribute") == 0)
		rc = do_contribute(ctx, cfg, NULL, NULL, h, o);
	else if (strcmp(action, "show") == 0) {
		struct esc_recovery q;

		snprintf(path, sizeof(path), "/recoveries/%lld", o->id);
		if ((rc = cli_http_call(h, CLI_HTTP_GET, path, NULL, &doc)) != 0)
			goto out;
		request_from_json(&q, doc);
		rc = print_request(&q, o->json);
	} else if (strcmp(action, "request") == 0) {
		if ((body = json_object()) == NULL ||
		    json_object_set_new(body, "record", json_string(o->serial ? o->serial : o->record)) != 0 ||
		    json_object_set_new(body, "reason", json_string(o->reason ? o->reason : "")) != 0 ||
		    (o->kra != NULL && json_object_set_new(body, "kra", json_string(o->kra)) != 0)) {
			rc = cli_usage_error(CMD, "--serial, --record, --kra and --reason must be UTF-8 text");
			goto out;
		}
		if ((rc = cli_http_call(h, CLI_HTTP_POST, "/recoveries", body, &doc)) != 0)
			goto out;
		printf("recovery request %lld filed\n", cli_json_int(doc, "id"));
		rc = report_state(doc);
	} else if (strcmp(action, "deny") == 0 || strcmp(action, "cancel") == 0) {
		if ((body = json_object()) == NULL ||
		    json_object_set_new(body, "reason", json_string(o->reason)) != 0) {
			rc = cli_usage_error(CMD, "--reason must be UTF-8 text");
			goto out;
		}
		snprintf(path, sizeof(path), "/recoveries/%lld/%s", o->id, action);
		if ((rc = cli_http_call(h, CLI_HTTP_POST, path, body, &doc)) != 0)
			goto out;
		printf("request %lld %s by %s\n", o->id, strcmp(action, "deny") == 0 ? "denied" : "cancelled",
		       cli_http_account(h));
	} else {
		snprintf(path, sizeof(path), "/recoveries/%lld/%s", o->id, action);
		if ((rc = cli_http_call(h, CLI_HTTP_POST, path, NULL, &doc)) != 0)
			goto out;
		if (strcmp(action, "approve") == 0) {
			printf("request %lld approved by %s\n", o->id, cli_http_account(h));
			rc = report_state(doc);
		} else {
			printf("request %lld released to its KRA\n", o->id);
		}
	}
out:
	json_decref(body);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

int
recovery_main(int argc, char *argv[])
{
	enum {
		OPT_PASSWORD = 256,
		OPT_TOKEN,
		OPT_KRA_PIN,
		OPT_P12,
		OPT_SERIAL,
		OPT_SUBJECT,
		OPT_EMAIL,
		OPT_RECORD,
		OPT_REASON,
		OPT_KRA,
		OPT_STATE,
		OPT_SERVER,
		OPT_SERVER_CA,
		OPT_LOCAL,
		OPT_CLIENT_CERT,
		OPT_CLIENT_KEY,
		OPT_TO_TOKEN,
		OPT_TO_TOKEN_MODULE,
		OPT_TO_TOKEN_PIN,
		OPT_LABEL,
		OPT_TO_CERT,
		OPT_OUTFORM,
		OPT_JSON
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"module", required_argument, NULL, 'm'},
		{"pin-file", required_argument, NULL, 'p'},
		{"token", required_argument, NULL, OPT_TOKEN},
		{"kra-pin-file", required_argument, NULL, OPT_KRA_PIN},
		{"out", required_argument, NULL, 'o'},
		{"p12-password-file", required_argument, NULL, OPT_P12},
		{"serial", required_argument, NULL, OPT_SERIAL},
		{"subject", required_argument, NULL, OPT_SUBJECT},
		{"email", required_argument, NULL, OPT_EMAIL},
		{"record", required_argument, NULL, OPT_RECORD},
		{"reason", required_argument, NULL, OPT_REASON},
		{"kra", required_argument, NULL, OPT_KRA},
		{"state", required_argument, NULL, OPT_STATE},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"client-cert", required_argument, NULL, OPT_CLIENT_CERT},
		{"client-key", required_argument, NULL, OPT_CLIENT_KEY},
		{"to-token", required_argument, NULL, OPT_TO_TOKEN},
		{"to-token-module", required_argument, NULL, OPT_TO_TOKEN_MODULE},
		{"to-token-pin-file", required_argument, NULL, OPT_TO_TOKEN_PIN},
		{"label", required_argument, NULL, OPT_LABEL},
		{"to-cert", required_argument, NULL, OPT_TO_CERT},
		{"outform", required_argument, NULL, OPT_OUTFORM},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	struct esc_account *a = NULL;
	const char *action;
	enum esc_err r;
	char *end;
	int c, rc, needs_id, ends, local = 0;

	memset(&o, 0, sizeof(o));
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:u:m:p:o:h", longopts, NULL)) != -1) {
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
		case 'u':
			o.user = optarg;
			break;
		case OPT_PASSWORD:
			o.password_file = optarg;
			break;
		case 'm':
			o.module = optarg;
			break;
		case 'p':
			o.pin_file = optarg;
			break;
		case OPT_TOKEN:
			o.token = optarg;
			break;
		case OPT_KRA_PIN:
			o.kra_pin_file = optarg;
			break;
		case 'o':
			o.out = optarg;
			break;
		case OPT_P12:
			o.p12_password_file = optarg;
			break;
		case OPT_SERIAL:
			o.serial = optarg;
			break;
		case OPT_SUBJECT:
			o.subject = optarg;
			break;
		case OPT_EMAIL:
			o.email = optarg;
			break;
		case OPT_RECORD:
			o.record = optarg;
			break;
		case OPT_REASON:
			o.reason = optarg;
			break;
		case OPT_KRA:
			o.kra = optarg;
			break;
		case OPT_STATE:
			o.state = optarg;
			break;
		case OPT_SERVER:
			o.server = optarg;
			break;
		case OPT_SERVER_CA:
			o.server_ca = optarg;
			break;
		case OPT_LOCAL:
			local = 1;
			break;
		case OPT_CLIENT_CERT:
			o.client_cert = optarg;
			break;
		case OPT_CLIENT_KEY:
			o.client_key = optarg;
			break;
		case OPT_TO_TOKEN:
			o.to_token = optarg;
			break;
		case OPT_TO_TOKEN_MODULE:
			o.to_token_module = optarg;
			break;
		case OPT_TO_TOKEN_PIN:
			o.to_token_pin_file = optarg;
			break;
		case OPT_LABEL:
			o.label = optarg;
			break;
		case OPT_TO_CERT:
			o.to_cert = optarg;
			break;
		case OPT_OUTFORM:
			o.outform = optarg;
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
		return cli_usage_error(CMD, "expected an action: search, request, approve, release, contribute, "
					    "complete, deny, cancel, expire, list or show");
	action = argv[optind++];
	ends = strcmp(action, "deny") == 0 || strcmp(action, "cancel") == 0;
	needs_id = strcmp(action, "approve") == 0 || strcmp(action, "release") == 0 ||
		   strcmp(action, "complete") == 0 || strcmp(action, "contribute") == 0 ||
		   strcmp(action, "show") == 0 || ends;
	if (!needs_id && strcmp(action, "search") != 0 && strcmp(action, "request") != 0 &&
	    strcmp(action, "list") != 0 && strcmp(action, "expire") != 0)
		return cli_usage_error(CMD, "unknown action '%s'", action);
	if (needs_id) {
		if (optind >= argc)
			return cli_usage_error(CMD, "%s needs a request id", action);
		errno = 0;
		o.id = strtoll(argv[optind], &end, 10);
		if (*argv[optind] == '\0' || *end != '\0' || errno != 0 || o.id <= 0)
			return cli_usage_error(CMD, "'%s' is not a request id", argv[optind]);
		optind++;
	}
	if (optind != argc)
		return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
	if (o.json && strcmp(action, "search") != 0 && strcmp(action, "list") != 0 && strcmp(action, "show") != 0)
		return cli_usage_error(CMD, "--json goes with search, list and show");
	if (strcmp(action, "request") == 0 && (o.serial != NULL) == (o.record != NULL))
		return cli_usage_error(CMD, "request needs exactly one of --serial and --record");
	if (ends && o.reason == NULL)
		return cli_usage_error(CMD, "%s needs --reason TEXT", action);
	if ((rc = check_complete_options(&o, action)) != 0)
		return rc;
	if (strcmp(action, "contribute") == 0 && o.token == NULL)
		return cli_usage_error(CMD, "contribute needs --token URI (the KRA card)");
	if (strcmp(action, "expire") == 0 && o.server != NULL)
		return cli_usage_error(CMD,
				       "the service expires released packages itself: expire runs without --server");
	if ((rc = cli_check_mode(CMD, o.server, local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, o.config, &ctx, &cfg)) != 0)
		goto out;
	if ((rc = cli_apply_common(CMD, ctx, cfg, o.database, o.module, NULL, o.pin_file)) != 0)
		goto out;
	if (o.server != NULL) {
		rc = remote_main(ctx, cfg, &o, action);
		goto out;
	}
	{
		char what[32];

		snprintf(what, sizeof(what), "%s %s", CMD, action);
		if ((rc = cli_open_store_local(CMD, what, ctx, cfg, &st)) != 0)
			goto out;
	}
	if (strcmp(action, "release") == 0) {
		rc = do_release(ctx, cfg, st, &o);
		goto out;
	}
	if ((rc = cli_login(CMD, ctx, st, o.user, o.password_file, &a)) != 0)
		goto out;
	if (strcmp(action, "search") == 0)
		rc = do_search(ctx, st, a, &o);
	else if (strcmp(action, "request") == 0) {
		long long id = 0;

		if ((r = esc_recovery_request(ctx, st, a, o.serial ? o.serial : o.record, o.kra, o.reason, &id)) !=
		    ESC_OK)
			rc = cli_fail(CMD, ctx, r);
		else
			printf("recovery request %lld filed\n", id);
	} else if (strcmp(action, "approve") == 0) {
		if ((r = esc_recovery_approve(ctx, st, a, o.id)) != ESC_OK)
			rc = cli_fail(CMD, ctx, r);
		else
			printf("request %lld approved by %s\n", o.id, esc_account_name(a));
	} else if (strcmp(action, "complete") == 0)
		rc = do_complete(ctx, cfg, st, a, NULL, &o);
	else if (strcmp(action, "contribute") == 0)
		rc = do_contribute(ctx, cfg, st, a, NULL, &o);
	else if (strcmp(action, "show") == 0) {
		struct esc_recovery q;

		if ((r = esc_recovery_get(ctx, st, a, o.id, &q)) != ESC_OK)
			rc = cli_fail(CMD, ctx, r);
		else
			rc = print_request(&q, o.json);
	} else if (ends) {
		int deny = strcmp(action, "deny") == 0;

		r = deny ? esc_recovery_deny(ctx, st, a, o.id, o.reason)
			 : esc_recovery_cancel(ctx, st, a, o.id, o.reason);
		if (r != ESC_OK)
			rc = cli_fail(CMD, ctx, r);
		else
			printf("request %lld %s by %s\n", o.id, deny ? "denied" : "cancelled", esc_account_name(a));
	} else if (strcmp(action, "expire") == 0) {
		int n = 0;

		if ((r = esc_recovery_expire(ctx, st, a, &n)) != ESC_OK)
			rc = cli_fail(CMD, ctx, r);
		else
			printf("%d released package(s) expired\n", n);
	} else
		rc = do_list(ctx, st, a, &o);
out:
	esc_account_free(a);
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
