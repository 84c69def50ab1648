/*
 * p11escrow kra — Key Recovery Agents: enroll a card (a key generated on it,
 * or adopted from it), list, retire.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <p11escrow/envelope.h>
#include <p11escrow/est.h>
#include <p11escrow/kra.h>
#include <p11escrow/pin.h>
#include <p11escrow/token.h>

#include "cli.h"
#include "cli_json.h"
#include "http_client.h"

#define CMD "kra"

static void
help(void)
{
	printf("Usage: %s " CMD " enroll --token URI --name NAME --user ADMIN [OPTIONS]\n"
	       "       %s " CMD " enroll --key URI --name NAME --user ADMIN [OPTIONS]\n"
	       "       %s " CMD
	       " enroll --server URL --token URI|--key URI --name NAME --user ADMIN [--kra-pin-file F]\n"
	       "       %s " CMD " renew NAME --user ADMIN [--days N] [--key URI] [OPTIONS]\n"
	       "       %s " CMD " renew NAME --server URL --user ADMIN [--days N] [--kra-pin-file F]\n"
	       "       %s " CMD " list [--json] [OPTIONS]\n"
	       "       %s " CMD " list --server URL --user NAME [--server-ca FILE] [--json]\n"
	       "       %s " CMD " retire NAME --user ADMIN [OPTIONS]\n\n"
	       "enroll  generate the KRA key pair on the card named by --token (decrypt-only, sensitive,\n"
	       "        never extractable), have the CA issue its Key Recovery Agent certificate, store the\n"
	       "        certificate on the card and register the KRA.  Needs the CA token's PIN and the\n"
	       "        card's PIN, and an administrator account.\n"
	       "        With --key URI instead, adopt the decryption key the card holds already (its\n"
	       "        URI names the card by token= and the key by id= and/or object=): it must be\n"
	       "        sensitive and not extractable; the card proves it holds it by decrypting a\n"
	       "        challenge, the CA certifies it, the certificate goes onto the card where the\n"
	       "        card takes it (a read-only card: the service keeps it; said in one line).  An\n"
	       "        adopted key is never removed from the card.\n"
	       "        Either way the card is probed (real decryptions) and the recipient form chosen\n"
	       "        and printed with why: RSA-OAEP SHA-256 or SHA-1, ECDH, or PKCS#1 v1.5 for a card\n"
	       "        that does nothing else, refused unless policy kra_allow_rsa_pkcs1v15 is true.\n"
	       "        Policy kra_min_rsa_bits (default 3072) and kra_min_ec_bits bound the key size.\n"
	       "renew   a new KRA certificate for the SAME key, after the card proves again that it holds\n"
	       "        it (it decrypts a challenge sealed to the key; the KRA's card and its PIN needed).\n"
	       "        The key is found on the card by the KRA's key URI (--key URI if it moved); a key\n"
	       "        that is not the KRA's is refused (exit code of a mismatch), as is a retired KRA.\n"
	       "        The KRA keeps its name, key and records; its certificate, serial and validity\n"
	       "        (--days, default 730) are replaced, the old serial kept in the audit trail.\n"
	       "        Records wrapped before the renewal open with the same card key.\n"
	       "list    every KRA with its state, key, recipient mechanism, number of records, its\n"
	       "        certificate's expiry and a WARN column: SOON (within kra_expiry_warning_days,\n"
	       "        default 60) or EXPIRED (recovery refuses it), each explained in a warning line,\n"
	       "        and a warning when records have fewer usable KRAs than they need.  --json: the\n"
	       "        KRAs only, each with its warning (the records short of KRAs: GET /kras/health).\n"
	       "retire  stop wrapping new records to a KRA; refused while a record would be left with no\n"
	       "        active KRA able to recover it.\n"
	       "With --server URL each action goes through the service's JSON API (no database here;\n"
	       "list: any account).  enroll --server runs at the security officer's workstation: the key\n"
	       "pair is generated on the card here (--kra-module, else --module, names its module), the\n"
	       "service challenges the card to decrypt a secret sealed to its public key and only then\n"
	       "has the CA certify it and registers the KRA; no CA token PIN here.  On any failure the\n"
	       "generated key is removed from the card.  Without --server, enroll needs the CA token and\n"
	       "the card on the service host.  --local (or $" CLI_LOCAL_ENV "=1) is break-glass, audited as such.\n"
	       "An adopted key (--key) is never removed, whatever fails.\n\n"
	       "Options:\n"
	       "  -c, --config FILE          configuration file\n"
	       "  -d, --database CONNINFO    libpq connection string\n"
	       "  -m, --module MODULE        PKCS#11 module of the CA token (path or p11-kit:NAME)\n"
	       "  -t, --ca-token URI         the CA token (default: the one recorded at setup)\n"
	       "  -p, --pin-file FILE        CA token PIN (else $P11ESCROW_CA_PIN, else a prompt)\n"
	       "      --token URI            the KRA card to enroll, e.g. 'pkcs11:token=KRA1'\n"
	       "      --key URI              adopt this key already on the card, e.g.\n"
	       "                             'pkcs11:token=KRA%%20card%%20one;id=%%00%%01' (no --key-type)\n"
	       "      --kra-module MODULE    the card's PKCS#11 module if not the CA token's (--server: if\n"
	       "                             not --module's)\n"
	       "      --kra-pin-file FILE    the card's PIN (else $P11ESCROW_KRA_PIN, else a prompt)\n"
	       "  -n, --name NAME            the KRA's name (letters, digits, . _ -)\n"
	       "  -k, --key-type TYPE        rsa3072 (default), rsa4096, ec-p256, ec-p384\n"
	       "      --days N               KRA certificate validity (default 730)\n"
	       "  -u, --user NAME            the acting administrator\n"
	       "      --password-file FILE   their password (else $P11ESCROW_PASSWORD, else a prompt)\n"
	       "      --server URL           through the service, e.g. https://escrow.example.org:8443\n"
	       "      --local                break-glass: straight on the database (audited)\n"
	       "      --server-ca FILE       CA certificate(s) to verify the service with (else\n"
	       "                             $P11ESCROW_SERVER_CA)\n"
	       "      --client-cert FILE     with --client-key FILE: log in to the service with this TLS client\n"
	       "                             certificate and no password (else $P11ESCROW_CLIENT_CERT/_KEY)\n"
	       "      --json                 list: " CLI_JSON_HELP "\n"
	       "  -h, --help                 this text\n",
	       PROG, PROG, PROG, PROG, PROG, PROG, PROG, PROG);
	cli_print_exit_codes();
}

struct opts {
	const char *config, *database, *module, *ca_token, *pin_file, *token, *key, *kra_module, *kra_pin_file, *name;
	const char *key_type, *user, *password_file, *server, *server_ca, *client_cert, *client_key;
	int days, local, json;
};

/* --json: the KRAs as a JSON array, each with its warning (null if none). */
static int
print_kras_json(const struct esc_kra *k, size_t n, int warn_days, char (*warnings)[256])
{
	json_t *a = json_array();
	char why[256];
	size_t i;

	for (i = 0; a != NULL && i < n; i++) {
		if (warnings != NULL)
			snprintf(why, sizeof(why), "%s", warnings[i]);
		else if (!esc_kra_warning(&k[i], warn_days, why, sizeof(why)))
			why[0] = '\0';
		if (json_array_append_new(a, cli_json_kra(&k[i], why)) != 0) {
			json_decref(a);
			a = NULL;
		}
	}
	return cli_json_print(CMD, a);
}

/*
 * The KRAs, a WARN column (EXPIRED, or SOON within warn_days) and a line
 * per warning after the table; warnings[i] is the service's where it said
 * (--server), else NULL and worked out here.  Then the records whose KRA
 * set is short of usable KRAs, where h is known (not NULL).  json: only
 * the KRAs, as a JSON array.  Returns 0 or an exit code.
 */
static int
print_kras(const struct esc_kra *k, size_t n, int warn_days, char (*warnings)[256], const struct esc_kra_health *h,
	   int json)
{
	char why[256];
	size_t i;

	if (json)
		return print_kras_json(k, n, warn_days, warnings);
	printf("%-20s %-8s %-8s %-16s %-8s %-20s %-7s %s\n", "NAME", "STATE", "KEY", "RECIPIENT", "RECORDS",
	       "NOT AFTER", "WARN", "CARD");
	for (i = 0; i < n; i++) {
		int w;

		if (warnings != NULL)
			w = warnings[i][0] != '\0';
		else
			w = esc_kra_warning(&k[i], warn_days, why, sizeof(why));
		printf("%-20s %-8s %-8s %-16s %-8lld %-20s %-7s %s (serial %s)\n", k[i].name, k[i].state, k[i].key_type,
		       k[i].recipient, k[i].records, k[i].not_after,
		       !w	      ? "-"
		       : k[i].expired ? "EXPIRED"
				      : "SOON",
		       k[i].token_label, k[i].token_serial);
	}
	for (i = 0; i < n; i++) {
		if (warnings != NULL && warnings[i][0] != '\0')
			printf("warning: KRA '%s': %s\n", k[i].name, warnings[i]);
		else if (warnings == NULL && esc_kra_warning(&k[i], warn_days, why, sizeof(why)))
			printf("warning: KRA '%s': %s\n", k[i].name, why);
	}
	if (h != NULL && h->records_short > 0)
		printf("warning: %lld of %lld record(s) have fewer than %d usable (active, unexpired) KRA(s) in their "
		       "set, %lld of them none: not recoverable until a KRA of their set is renewed (first: record "
		       "%s)\n",
		       h->records_short, h->records, h->threshold, h->records_none, h->first_short);
	return 0;
}

/* What probing the card found, and the recipient form chosen (the card's key of k). */
static void
print_probe(const struct esc_token *card, const struct esc_kra_card *k)
{
	const struct esc_token_decrypt_probe *p = esc_kra_card_probe(k);
	const char *yes = "yes", *no = "no";

	printf("card '%s' (serial %s), key '%s' (%s, %s)\n", esc_token_label(card), esc_token_serial(card),
	       esc_kra_card_key_label(k), esc_kra_card_key_type(k), esc_kra_card_origin(k));
	if (p->rsa)
		printf("  probe:       CKM_RSA_PKCS_OAEP SHA-256 %s, SHA-1 %s; CKM_RSA_X_509 %s; CKM_RSA_PKCS %s\n",
		       p->oaep_sha256 ? yes : no, p->oaep_sha1 ? yes : no, p->raw ? yes : no, p->pkcs1 ? yes : no);
	else
		printf("  probe:       CKM_ECDH1_DERIVE %s; CKM_ECDH1_COFACTOR_DERIVE %s\n", p->ecdh ? yes : no,
		       p->ecdh_cofactor ? yes : no);
	printf("  recipient:   %s: %s\n", esc_kra_card_recipient(k), esc_kra_card_reason(k));
	if (esc_kra_card_imported(k))
		printf("  note:        the key was once extractable or not sensitive (imported onto the card): "
		       "copies of it may exist off the card\n");
	fflush(stdout);
}

/* Open the card of --token (or --key's token) and log in; card on the CA token's module unless --kra-module. */
static enum esc_err
open_card(struct esc_ctx *ctx, struct esc_config *cfg, const struct esc_token *ca, const struct opts *o,
	  struct esc_token **card, struct esc_secret **pin)
{
	const char *uri = o->token != NULL ? o->token : o->key;
	enum esc_err r;

	if (o->kra_module != NULL || ca == NULL)
		r = esc_token_open(ctx, o->kra_module ? o->kra_module : esc_config_get(cfg, "module"), uri, card);
	else
		r = esc_token_open_sibling(ctx, ca, uri, card); /* shares the CA token's loaded module */
	if (r != ESC_OK ||
	    (r = esc_secret_obtain(ctx, o->kra_pin_file, "P11ESCROW_KRA_PIN", "KRA card PIN: ", pin)) != ESC_OK)
		return r;
	return esc_token_login(ctx, *card, *pin);
}

/* The enroll options make sense: --name, --token or --key (not --key-type with --key), clean URIs. */
static int
check_enroll_opts(struct esc_ctx *ctx, const struct opts *o, enum esc_key_type *type)
{
	enum esc_err r;

	if (o->name == NULL || (o->token == NULL && o->key == NULL))
		return cli_usage_error(CMD,
				       "enroll needs --name NAME and --token URI (generate the key on the card) or "
				       "--key URI (adopt a key the card holds)");
	if (o->key != NULL && o->key_type != NULL)
		return cli_usage_error(CMD, "--key-type is for a generated key: an adopted key is what the card holds");
	if ((o->key_type != NULL && (r = esc_key_type_parse(ctx, o->key_type, type)) != ESC_OK) ||
	    (o->token != NULL && (r = esc_token_uri_check(ctx, o->token)) != ESC_OK) ||
	    (o->key != NULL && (r = esc_token_uri_check(ctx, o->key)) != ESC_OK))
		return cli_fail(CMD, ctx, r);
	return 0;
}

/* kra retire through the service's JSON API. */
static int
remote_retire(struct esc_ctx *ctx, const struct opts *o)
{
	struct cli_http *h = NULL;
	json_t *doc = NULL;
	char path[256];
	const char *p;
	int rc;

	if (o->name == NULL || *o->name == '\0')
		return cli_usage_error(CMD, "retire needs the KRA's NAME");
	for (p = o->name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      strchr("._-", *p) != NULL))
			break;
	if (*p != '\0' || *o->name == '\0' || strlen(o->name) > 64)
		return cli_usage_error(CMD, "'%s' is not a KRA name (letters, digits, . _ -)", o->name);
	snprintf(path, sizeof(path), "/kras/%s/retire", o->name);
	if ((rc = cli_http_open(CMD, ctx, o->server, o->server_ca, o->user, o->password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, CLI_HTTP_POST, path, NULL, &doc)) != 0)
		goto out;
	printf("KRA '%s' retired: no new record will be wrapped to it\n", o->name);
out:
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

/* kra list through the service's JSON API. */
static int
remote_list(struct esc_ctx *ctx, const struct opts *o)
{
	struct cli_http *h = NULL;
	struct esc_kra *k = NULL;
	struct esc_kra_health health;
	char(*warnings)[256] = NULL;
	const json_t *list, *e;
	json_t *doc = NULL, *hdoc = NULL;
	size_t n = 0, i;
	int rc;

	if ((rc = cli_http_open_cert(CMD, ctx, o->server, o->server_ca, o->user, o->password_file, o->client_cert,
				     o->client_key, &h)) != 0 ||
	    (rc = cli_http_call(h, CLI_HTTP_GET, "/kras", NULL, &doc)) != 0)
		goto out;
	list = json_object_get(doc, "kras");
	n = json_array_size(list);
	if ((k = calloc(n + 1, sizeof(*k))) == NULL || (warnings = calloc(n + 1, sizeof(*warnings))) == NULL) {
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	for (i = 0; i < n; i++) {
		e = json_array_get(list, i);
		k[i].id = 0;
		cli_json_copy(k[i].name, sizeof(k[i].name), e, "name");
		cli_json_copy(k[i].state, sizeof(k[i].state), e, "state");
		cli_json_copy(k[i].key_type, sizeof(k[i].key_type), e, "key_type");
		cli_json_copy(k[i].recipient, sizeof(k[i].recipient), e, "recipient");
		cli_json_copy(k[i].cert_serial, sizeof(k[i].cert_serial), e, "cert_serial");
		cli_json_copy(k[i].not_after, sizeof(k[i].not_after), e, "not_after");
		cli_json_copy(k[i].token_label, sizeof(k[i].token_label), e, "token_label");
		cli_json_copy(k[i].token_serial, sizeof(k[i].token_serial), e, "token_serial");
		cli_json_copy(k[i].key_uri, sizeof(k[i].key_uri), e, "key_uri");
		k[i].records = cli_json_int(e, "records");
		k[i].expired = json_is_true(json_object_get(e, "expired"));
		cli_json_copy(k[i].origin, sizeof(k[i].origin), e, "origin");
		cli_json_copy(k[i].recipient_reason, sizeof(k[i].recipient_reason), e, "recipient_reason");
		k[i].days_left = (int)cli_json_int(e, "days_left");
		cli_json_copy(warnings[i], sizeof(warnings[i]), e, "warning");
	}
	memset(&health, 0, sizeof(health));
	/* --json has the KRAs only: the health is GET /kras/health's own. */
	if (!o->json && (rc = cli_http_call(h, CLI_HTTP_GET, "/kras/health", NULL, &hdoc)) != 0)
		goto out;
	health.threshold = (int)cli_json_int(hdoc, "threshold");
	health.records = cli_json_int(hdoc, "records");
	health.records_short = cli_json_int(hdoc, "records_below_threshold");
	health.records_none = cli_json_int(hdoc, "records_without_usable_kra");
	cli_json_copy(health.first_short, sizeof(health.first_short), hdoc, "first_record_below_threshold");
	rc = print_kras(k, n, 0, warnings, &health, o->json);
out:
	free(k);
	free(warnings);
	json_decref(hdoc);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

/* One-line base64 of in (malloc'ed, or secure memory if secure), NULL if out of memory; *len its size. */
static char *
b64_line(const unsigned char *in, size_t inlen, int secure, size_t *len)
{
	size_t n = (inlen + 2) / 3 * 4 + 1;
	char *out = secure ? OPENSSL_secure_malloc(n) : malloc(n);

	if (out == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, in, (int)inlen);
	*len = n;
	return out;
}

/* POST /kras with the card's key: *id and the challenge (malloc'ed) on success, else an exit code (printed). */
static int
offer_key(struct cli_http *h, struct esc_ctx *ctx, const struct opts *o, struct esc_token *card,
	  const struct esc_kra_card *k, char *id, size_t idlen, unsigned char **challenge, size_t *challenge_len)
{
	const unsigned char *spki;
	size_t spki_len, n = 0;
	char *b64 = NULL, days[16];
	json_t *body = NULL, *doc = NULL;
	int rc;

	spki = esc_kra_card_public_key(k, &spki_len);
	snprintf(days, sizeof(days), "%d", o->days);
	if ((b64 = b64_line(spki, spki_len, 0, &n)) == NULL ||
	    (body = json_pack("{ss ss ss ss ss ss ss ss ss ss}", "name", o->name, "token_label", esc_token_label(card),
			      "token_serial", esc_token_serial(card), "key_uri", esc_kra_card_key_uri(k), "key_type",
			      esc_kra_card_key_type(k), "recipient", esc_kra_card_recipient(k), "public_key", b64,
			      "days", days, "origin", esc_kra_card_origin(k), "recipient_reason",
			      esc_kra_card_reason(k))) == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	if ((rc = cli_http_call(h, CLI_HTTP_POST, "/kras", body, &doc)) != 0)
		goto out;
	cli_json_copy(id, idlen, doc, "challenge_id");
	{
		const char *c = json_string_value(json_object_get(doc, "challenge"));

		if (*id == '\0' || esc_b64_decode_max(ctx, c, c != NULL ? strlen(c) : 0, ESC_ENVELOPE_MAX, challenge,
						      challenge_len) != ESC_OK) {
			fprintf(stderr, "%s %s: error: the service answered no challenge\n", PROG, CMD);
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
	}
	rc = 0;
out:
	free(b64);
	json_decref(body);
	json_decref(doc);
	return rc;
}

/*
 * POST /kras/NAME/prove with the secret the card opened: the certificate
 * (malloc'ed DER) and the KRA on success, else an exit code (printed).  The
 * secret is in secure memory here; jansson's copies are wiped when freed
 * (main.c), the body's text by the HTTP client.
 */
static int
prove(struct cli_http *h, struct esc_ctx *ctx, const char *name, const char *id, const unsigned char *secret,
      size_t secret_len, struct esc_kra *kra, unsigned char **cert, size_t *cert_len, int *refused)
{
	char path[128], *b64 = NULL, msg[512];
	size_t n = 0;
	json_t *body = NULL, *doc = NULL;
	const char *c;
	enum esc_err e;
	int rc, status = 0;

	snprintf(path, sizeof(path), "/kras/%s/prove", name);
	if ((b64 = b64_line(secret, secret_len, 1, &n)) == NULL ||
	    (body = json_pack("{ss ss}", "challenge_id", id, "secret", b64)) == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	if ((rc = cli_http_call_quiet(h, CLI_HTTP_POST, path, body, &doc, &status, &e, msg, sizeof(msg))) != 0) {
		fprintf(stderr, "%s %s: error: %s\n", PROG, CMD, msg);
		/* Only a refusal says that nothing was registered; no answer or a server fault leaves it open. */
		*refused = status >= 400 && status < 500;
		goto out;
	}
	memset(kra, 0, sizeof(*kra));
	cli_json_copy(kra->name, sizeof(kra->name), doc, "name");
	cli_json_copy(kra->key_type, sizeof(kra->key_type), doc, "key_type");
	cli_json_copy(kra->recipient, sizeof(kra->recipient), doc, "recipient");
	cli_json_copy(kra->cert_serial, sizeof(kra->cert_serial), doc, "cert_serial");
	cli_json_copy(kra->token_label, sizeof(kra->token_label), doc, "token_label");
	cli_json_copy(kra->token_serial, sizeof(kra->token_serial), doc, "token_serial");
	cli_json_copy(kra->key_uri, sizeof(kra->key_uri), doc, "key_uri");
	c = json_string_value(json_object_get(doc, "certificate"));
	if (esc_b64_decode_max(ctx, c, c != NULL ? strlen(c) : 0, 64 * 1024, cert, cert_len) != ESC_OK)
		*cert = NULL; /* registered all the same: the caller says so */
	rc = 0;
out:
	if (body != NULL) {
		json_t *v = json_object_get(body, "secret");

		if (json_is_string(v))
			OPENSSL_cleanse((void *)json_string_value(v), json_string_length(v));
	}
	json_decref(body);
	json_decref(doc);
	if (b64 != NULL)
		OPENSSL_secure_clear_free(b64, n);
	return rc;
}

/*
 * kra enroll --server: at the security officer's workstation.  The key pair
 * is generated on the card here (or, --key, the card's own key adopted);
 * the service checks the offer, challenges the card to prove it holds the
 * key and only then has the CA certify it and registers the KRA.  No CA
 * token and no database here.  An adopted key is never removed.
 */
static int
remote_enroll(struct esc_ctx *ctx, struct esc_config *cfg, const struct opts *o)
{
	struct cli_http *h = NULL;
	struct esc_token *card = NULL;
	struct esc_secret *pin = NULL;
	struct esc_kra_card *k = NULL;
	enum esc_key_type type = ESC_KEY_RSA3072;
	unsigned char *challenge = NULL, *secret = NULL, *cert = NULL;
	size_t challenge_len = 0, secret_len = 0, cert_len = 0;
	struct esc_kra kra;
	json_t *who = NULL;
	char id[24] = "";
	enum esc_err r;
	int rc, stored = 0, registered = 0, refused = 0;

	if ((rc = check_enroll_opts(ctx, o, &type)) != 0)
		return rc;
	/* Log in before the card is touched: a wrong password costs no key. */
	if ((rc = cli_http_open(CMD, ctx, o->server, o->server_ca, o->user, o->password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, CLI_HTTP_GET, "/whoami", NULL, &who)) != 0)
		goto out;
	if ((r = open_card(ctx, cfg, NULL, o, &card, &pin)) != ESC_OK ||
	    (r = o->key != NULL ? esc_kra_card_adopt(ctx, card, o->key, &k)
				: esc_kra_card_generate(ctx, card, o->name, type, &k)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	print_probe(card, k);
	if ((rc = offer_key(h, ctx, o, card, k, id, sizeof(id), &challenge, &challenge_len)) != 0)
		goto out;
	if ((r = esc_kra_card_answer(ctx, k, challenge, challenge_len, &secret, &secret_len)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = prove(h, ctx, o->name, id, secret, secret_len, &kra, &cert, &cert_len, &refused);
	esc_envelope_plain_free(secret, secret_len);
	secret = NULL;
	if (rc != 0 && !refused && o->key == NULL) {
		/* The KRA may be registered: its key must stay. */
		fprintf(stderr,
			"%s %s: the service's answer is unknown, KRA '%s' may be registered: the key stays on the card; "
			"if 'kra list' does not show the KRA, delete the objects labelled 'p11escrow KRA %s' from the "
			"card\n",
			PROG, CMD, o->name, o->name);
		registered = 1;
	} else if (rc != 0 && !refused) {
		fprintf(stderr, "%s %s: the service's answer is unknown, KRA '%s' may be registered: see 'kra list'\n",
			PROG, CMD, o->name);
	}
	if (rc != 0)
		goto out;
	registered = 1;
	/* The service keeps the certificate; the card gets a copy where it takes one. */
	if (cert == NULL || (r = esc_kra_card_store_cert(ctx, k, cert, cert_len, &stored)) != ESC_OK) {
		fprintf(stderr,
			"%s %s: error: KRA '%s' is registered, but the service's answer holds no certificate for the "
			"card's key: %s.  Check 'kra list' and retire the KRA if in doubt\n",
			PROG, CMD, o->name, cert == NULL ? "none or not base64" : esc_ctx_errmsg(ctx));
		rc = esc_err_exit_code(cert == NULL ? ESC_ERR_BAD_INPUT : r);
		goto out;
	}
	if (!stored && o->key == NULL)
		fprintf(stderr,
			"%s %s: warning: the card did not take the KRA certificate (%s); the service keeps it\n", PROG,
			CMD, esc_ctx_errmsg(ctx));
	printf("KRA '%s' enrolled on card '%s' (serial %s) through the service, possession proven\n"
	       "  key:         %s, recipient %s, %s\n  certificate: serial %s%s\n  key URI:     %s\n",
	       kra.name, kra.token_label, kra.token_serial, kra.key_type, kra.recipient,
	       o->key != NULL ? "adopted from the card" : "generated on the card", kra.cert_serial,
	       stored ? "" : " (not on the card)", kra.key_uri);
	if (!stored && o->key != NULL)
		printf("the card did not take the certificate (%s): the service keeps it\n", esc_ctx_errmsg(ctx));
	rc = 0;
out:
	/* Undo: a generated key whose KRA was not registered must not stay on the card; an adopted one always stays. */
	if (k != NULL && !registered && o->key == NULL) {
		if (esc_kra_card_discard(ctx, k) == ESC_OK)
			fprintf(stderr, "%s %s: the key generated on card '%s' was removed again\n", PROG, CMD,
				esc_token_label(card));
		else
			fprintf(stderr,
				"%s %s: error: could not remove the key generated on card '%s' (%s): delete "
				"the objects labelled 'p11escrow KRA %s' by hand\n",
				PROG, CMD, esc_token_label(card), esc_ctx_errmsg(ctx), o->name);
	}
	esc_envelope_plain_free(secret, secret_len);
	free(challenge);
	free(cert);
	esc_kra_card_free(k);
	esc_secret_free(pin);
	esc_token_free(card);
	json_decref(who);
	cli_http_free(h);
	return rc;
}

/*
 * kra enroll --key on the service host: adopt the card's key, prove
 * possession, certify, register; the certificate onto the card where it
 * takes it.  The key is never removed, whatever fails.
 */
static enum esc_err
adopt_local(struct esc_ctx *ctx, struct esc_store *st, struct esc_account *admin, struct esc_token *ca,
	    struct esc_token *card, const struct opts *o, int *rc)
{
	struct esc_kra_card *k = NULL;
	unsigned char *cert = NULL;
	size_t cert_len = 0;
	struct esc_kra kra;
	int stored = 0;
	enum esc_err r;

	*rc = 0;
	if ((r = esc_kra_card_adopt(ctx, card, o->key, &k)) != ESC_OK)
		goto out;
	print_probe(card, k);
	if ((r = esc_kra_enroll_card(ctx, st, admin, ca, k, o->name, o->days, &kra, &cert, &cert_len)) != ESC_OK)
		goto out;
	if ((r = esc_kra_card_store_cert(ctx, k, cert, cert_len, &stored)) != ESC_OK) {
		fprintf(stderr,
			"%s %s: error: KRA '%s' is registered, but its certificate is not for the card's key: %s\n",
			PROG, CMD, o->name, esc_ctx_errmsg(ctx));
		*rc = esc_err_exit_code(r);
		goto out;
	}
	printf("KRA '%s' enrolled on card '%s' (serial %s), possession proven\n"
	       "  key:         %s, recipient %s, adopted from the card\n  certificate: serial %s%s\n"
	       "  key URI:     %s\n",
	       kra.name, kra.token_label, kra.token_serial, kra.key_type, kra.recipient, kra.cert_serial,
	       stored ? "" : " (not on the card)", kra.key_uri);
	if (!stored)
		printf("the card did not take the certificate (%s): the service keeps it\n", esc_ctx_errmsg(ctx));
	r = ESC_OK;
out:
	free(cert);
	esc_kra_card_free(k);
	return r;
}

static int
do_enroll(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const struct opts *o)
{
	struct esc_account *admin = NULL;
	struct esc_token *ca = NULL, *card = NULL;
	struct esc_secret *card_pin = NULL;
	enum esc_key_type type = ESC_KEY_RSA3072;
	struct esc_kra kra;
	enum esc_err r;
	int rc;

	if ((rc = check_enroll_opts(ctx, o, &type)) != 0)
		return rc;
	if ((rc = cli_login(CMD, ctx, st, o->user, o->password_file, &admin)) != 0)
		return rc;
	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK)
		goto out;
	if ((rc = cli_open_ca_token(CMD, ctx, cfg, st, "ca-sign", o->ca_token ? esc_config_get(cfg, "ca_token") : NULL,
				    &ca)) != 0) {
		esc_account_free(admin);
		return rc;
	}
	if ((r = open_card(ctx, cfg, ca, o, &card, &card_pin)) != ESC_OK)
		goto out;
	if (o->key != NULL) {
		r = adopt_local(ctx, st, admin, ca, card, o, &rc);
		if (rc != 0)
			goto done;
		goto out;
	}
	if ((r = esc_kra_enroll(ctx, st, admin, ca, card, o->name, type, o->days, &kra)) != ESC_OK)
		goto out;
	printf("KRA '%s' enrolled on card '%s' (serial %s)\n  key:         %s, recipient %s\n  certificate: serial %s\n"
	       "  key URI:     %s\n  recipient:   %s\n",
	       kra.name, kra.token_label, kra.token_serial, kra.key_type, kra.recipient, kra.cert_serial, kra.key_uri,
	       kra.recipient_reason);
out:
	rc = r == ESC_OK ? 0 : cli_fail(CMD, ctx, r);
done:
	esc_secret_free(card_pin);
	esc_token_free(card);
	esc_token_free(ca);
	esc_account_free(admin);
	return rc;
}

/* The renewal's outcome, one way for both modes: the certificate onto the card where it takes it. */
static int
renewed(struct esc_ctx *ctx, struct esc_kra_card *k, const char *name, const char *old_serial,
	const struct esc_kra *kra, const unsigned char *cert, size_t cert_len, const char *how)
{
	enum esc_err r;
	int stored = 0;

	if (cert == NULL || (r = esc_kra_card_store_cert(ctx, k, cert, cert_len, &stored)) != ESC_OK) {
		fprintf(stderr,
			"%s %s: error: KRA '%s' was renewed, but the answer holds no certificate for the card's key: "
			"%s.  Check 'kra list'\n",
			PROG, CMD, name, cert == NULL ? "none or not base64" : esc_ctx_errmsg(ctx));
		return esc_err_exit_code(cert == NULL ? ESC_ERR_BAD_INPUT : r);
	}
	printf("KRA '%s' renewed%s, possession proven: the same key on card '%s' (serial %s)\n"
	       "  certificate: serial %s%s, replacing serial %s\n  not after:   %s\n",
	       name, how, kra->token_label, kra->token_serial, kra->cert_serial, stored ? "" : " (not on the card)",
	       old_serial, kra->not_after);
	if (!stored)
		printf("the card did not take the certificate (%s): the service keeps it\n", esc_ctx_errmsg(ctx));
	return 0;
}

/* The renew options: a KRA name; --key, if given, a clean URI.  No --token or --key-type: the key is the KRA's. */
static int
check_renew_opts(struct esc_ctx *ctx, const struct opts *o)
{
	enum esc_err r;

	if (o->name == NULL || *o->name == '\0')
		return cli_usage_error(CMD, "renew needs the KRA's NAME");
	if (o->token != NULL || o->key_type != NULL)
		return cli_usage_error(CMD, "renew certifies the KRA's own key again: no --token or --key-type (--key "
					    "URI names the key if the card moved)");
	if (o->key != NULL && (r = esc_token_uri_check(ctx, o->key)) != ESC_OK)
		return cli_fail(CMD, ctx, r);
	return 0;
}

/*
 * kra renew --server: at the security officer's workstation, with the
 * KRA's card.  The key (the KRA's URI, or --key) is found on the card, the
 * service checks it is the KRA's and challenges the card; only then does
 * the CA issue the new certificate.  Nothing is generated or removed.
 */
static int
remote_renew(struct esc_ctx *ctx, struct esc_config *cfg, const struct opts *o)
{
	struct cli_http *h = NULL;
	struct esc_token *card = NULL;
	struct esc_secret *pin = NULL;
	struct esc_kra_card *k = NULL;
	unsigned char *challenge = NULL, *secret = NULL, *cert = NULL;
	size_t challenge_len = 0, secret_len = 0, cert_len = 0, n = 0, i, spki_len = 0;
	const unsigned char *spki;
	struct esc_kra kra;
	const json_t *list = NULL, *e = NULL;
	json_t *doc = NULL, *body = NULL, *ch = NULL;
	char id[24] = "", old_serial[64] = "", key_uri[512] = "", path[128], days[16], *b64 = NULL;
	struct opts oc;
	enum esc_err r;
	int rc, refused = 0;

	if (o->name == NULL)
		return cli_usage_error(CMD, "renew needs the KRA's NAME");
	if ((rc = check_renew_opts(ctx, o)) != 0)
		return rc;
	if ((rc = cli_http_open(CMD, ctx, o->server, o->server_ca, o->user, o->password_file, &h)) != 0 ||
	    (rc = cli_http_call(h, CLI_HTTP_GET, "/kras", NULL, &doc)) != 0)
		goto out;
	list = json_object_get(doc, "kras");
	n = json_array_size(list);
	for (i = 0; i < n; i++) {
		e = json_array_get(list, i);
		if (json_is_string(json_object_get(e, "name")) &&
		    strcmp(json_string_value(json_object_get(e, "name")), o->name) == 0)
			break;
	}
	if (i == n) {
		fprintf(stderr, "%s %s: error: no KRA named '%s'\n", PROG, CMD, o->name);
		rc = esc_err_exit_code(ESC_ERR_NOT_FOUND);
		goto out;
	}
	cli_json_copy(old_serial, sizeof(old_serial), e, "cert_serial");
	cli_json_copy(key_uri, sizeof(key_uri), e, "key_uri");
	/* The card and the key: the KRA's own URI unless --key names them. */
	oc = *o;
	if (oc.key == NULL)
		oc.key = key_uri;
	if ((r = open_card(ctx, cfg, NULL, &oc, &card, &pin)) != ESC_OK ||
	    (r = esc_kra_card_adopt(ctx, card, oc.key, &k)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	spki = esc_kra_card_public_key(k, &spki_len);
	snprintf(days, sizeof(days), "%d", o->days);
	snprintf(path, sizeof(path), "/kras/%s/renew", o->name);
	if ((b64 = b64_line(spki, spki_len, 0, &n)) == NULL ||
	    (body = json_pack("{ss ss}", "public_key", b64, "days", days)) == NULL) {
		fprintf(stderr, "%s %s: error: out of memory\n", PROG, CMD);
		rc = esc_err_exit_code(ESC_ERR_NOMEM);
		goto out;
	}
	if ((rc = cli_http_call(h, CLI_HTTP_POST, path, body, &ch)) != 0)
		goto out;
	cli_json_copy(id, sizeof(id), ch, "challenge_id");
	{
		const char *c = json_string_value(json_object_get(ch, "challenge"));

		if (*id == '\0' || esc_b64_decode_max(ctx, c, c != NULL ? strlen(c) : 0, ESC_ENVELOPE_MAX, &challenge,
						      &challenge_len) != ESC_OK) {
			fprintf(stderr, "%s %s: error: the service answered no challenge\n", PROG, CMD);
			rc = esc_err_exit_code(ESC_ERR_BAD_INPUT);
			goto out;
		}
	}
	if ((r = esc_kra_card_answer(ctx, k, challenge, challenge_len, &secret, &secret_len)) != ESC_OK) {
		rc = cli_fail(CMD, ctx, r);
		goto out;
	}
	rc = prove(h, ctx, o->name, id, secret, secret_len, &kra, &cert, &cert_len, &refused);
	if (rc != 0) {
		if (!refused)
			fprintf(stderr,
				"%s %s: the service's answer is unknown: see 'kra list' for KRA '%s''s serial\n", PROG,
				CMD, o->name);
		goto out;
	}
	/* prove() reads no validity: the certificate says it. */
	{
		const unsigned char *p = cert;
		X509 *x = cert != NULL ? d2i_X509(NULL, &p, (long)cert_len) : NULL;

		if (x != NULL) {
			const ASN1_TIME *na = X509_get0_notAfter(x);
			struct tm tm;

			if (ASN1_TIME_to_tm(na, &tm) == 1)
				strftime(kra.not_after, sizeof(kra.not_after), "%Y-%m-%dT%H:%M:%SZ", &tm);
			X509_free(x);
		}
	}
	rc = renewed(ctx, k, o->name, old_serial, &kra, cert, cert_len, " through the service");
out:
	esc_envelope_plain_free(secret, secret_len);
	free(b64);
	free(challenge);
	free(cert);
	esc_kra_card_free(k);
	esc_secret_free(pin);
	esc_token_free(card);
	json_decref(body);
	json_decref(ch);
	json_decref(doc);
	cli_http_free(h);
	return rc;
}

/* kra renew on the service host: the CA token and the KRA's card here. */
static int
do_renew(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, const struct opts *o)
{
	struct esc_account *admin = NULL;
	struct esc_token *ca = NULL, *card = NULL;
	struct esc_secret *card_pin = NULL;
	struct esc_kra_card *k = NULL;
	struct esc_kra *list = NULL, kra;
	unsigned char *cert = NULL;
	size_t cert_len = 0, n = 0, i;
	char old_serial[64] = "", key_uri[512] = "";
	struct opts oc;
	enum esc_err r;
	int rc;

	if (o->name == NULL)
		return cli_usage_error(CMD, "renew needs the KRA's NAME");
	if ((rc = check_renew_opts(ctx, o)) != 0)
		return rc;
	if ((rc = cli_login(CMD, ctx, st, o->user, o->password_file, &admin)) != 0)
		return rc;
	if ((r = esc_account_require(ctx, admin, ESC_ROLE_ADMIN)) != ESC_OK ||
	    (r = esc_kra_list(ctx, st, &list, &n)) != ESC_OK)
		goto out;
	for (i = 0; i < n && strcmp(list[i].name, o->name) != 0; i++)
		;
	if (i == n) {
		fprintf(stderr, "%s %s: error: no KRA named '%s'\n", PROG, CMD, o->name);
		rc = esc_err_exit_code(ESC_ERR_NOT_FOUND);
		goto done;
	}
	snprintf(old_serial, sizeof(old_serial), "%s", list[i].cert_serial);
	snprintf(key_uri, sizeof(key_uri), "%s", list[i].key_uri);
	/* The card and the key: the KRA's own URI unless --key names them. */
	oc = *o;
	if (oc.key == NULL)
		oc.key = key_uri;
	if ((rc = cli_open_ca_token(CMD, ctx, cfg, st, "ca-sign", o->ca_token ? esc_config_get(cfg, "ca_token") : NULL,
				    &ca)) != 0)
		goto done;
	if ((r = open_card(ctx, cfg, ca, &oc, &card, &card_pin)) != ESC_OK ||
	    (r = esc_kra_card_adopt(ctx, card, oc.key, &k)) != ESC_OK ||
	    (r = esc_kra_renew_card(ctx, st, admin, ca, k, o->name, o->days, &kra, &cert, &cert_len)) != ESC_OK)
		goto out;
	rc = renewed(ctx, k, o->name, old_serial, &kra, cert, cert_len, "");
	goto done;
out:
	rc = r == ESC_OK ? 0 : cli_fail(CMD, ctx, r);
done:
	free(cert);
	free(list);
	esc_kra_card_free(k);
	esc_secret_free(card_pin);
	esc_token_free(card);
	esc_token_free(ca);
	esc_account_free(admin);
	return rc;
}

static int
do_list(struct esc_ctx *ctx, struct esc_config *cfg, struct esc_store *st, int json)
{
	struct esc_kra *k = NULL;
	struct esc_kra_health h;
	int days = (int)esc_config_get_long(cfg, "kra_expiry_warning_days");
	size_t n = 0;
	enum esc_err r;
	int rc;

	if ((r = esc_kra_list(ctx, st, &k, &n)) != ESC_OK || (r = esc_kra_health(ctx, st, k, n, days, &h)) != ESC_OK) {
		free(k);
		return cli_fail(CMD, ctx, r);
	}
	rc = print_kras(k, n, days, NULL, &h, json);
	free(k);
	return rc;
}

static int
do_retire(struct esc_ctx *ctx, struct esc_store *st, const struct opts *o)
{
	struct esc_account *admin = NULL;
	enum esc_err r;
	int rc;

	if ((rc = cli_login(CMD, ctx, st, o->user, o->password_file, &admin)) != 0)
		return rc;
	r = esc_kra_retire(ctx, st, admin, o->name);
	esc_account_free(admin);
	if (r != ESC_OK)
		return cli_fail(CMD, ctx, r);
	printf("KRA '%s' retired: no new record will be wrapped to it\n", o->name);
	return 0;
}

int
kra_main(int argc, char *argv[])
{
	enum {
		OPT_TOKEN = 256,
		OPT_KEY,
		OPT_KRA_MODULE,
		OPT_KRA_PIN,
		OPT_DAYS,
		OPT_PASSWORD,
		OPT_SERVER,
		OPT_SERVER_CA,
		OPT_LOCAL,
		OPT_CLIENT_CERT,
		OPT_CLIENT_KEY,
		OPT_JSON
	};
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"database", required_argument, NULL, 'd'},
		{"module", required_argument, NULL, 'm'},
		{"ca-token", required_argument, NULL, 't'},
		{"pin-file", required_argument, NULL, 'p'},
		{"token", required_argument, NULL, OPT_TOKEN},
		{"key", required_argument, NULL, OPT_KEY},
		{"kra-module", required_argument, NULL, OPT_KRA_MODULE},
		{"kra-pin-file", required_argument, NULL, OPT_KRA_PIN},
		{"name", required_argument, NULL, 'n'},
		{"key-type", required_argument, NULL, 'k'},
		{"days", required_argument, NULL, OPT_DAYS},
		{"user", required_argument, NULL, 'u'},
		{"password-file", required_argument, NULL, OPT_PASSWORD},
		{"server", required_argument, NULL, OPT_SERVER},
		{"server-ca", required_argument, NULL, OPT_SERVER_CA},
		{"local", no_argument, NULL, OPT_LOCAL},
		{"client-cert", required_argument, NULL, OPT_CLIENT_CERT},
		{"client-key", required_argument, NULL, OPT_CLIENT_KEY},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct opts o;
	struct esc_ctx *ctx = NULL;
	struct esc_config *cfg = NULL;
	struct esc_store *st = NULL;
	const char *action;
	int c, rc;

	memset(&o, 0, sizeof(o));
	o.days = 730;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":c:d:m:t:p:n:k:u:h", longopts, NULL)) != -1) {
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
		case 'm':
			o.module = optarg;
			break;
		case 't':
			o.ca_token = optarg;
			break;
		case 'p':
			o.pin_file = optarg;
			break;
		case OPT_TOKEN:
			o.token = optarg;
			break;
		case OPT_KEY:
			o.key = optarg;
			break;
		case OPT_KRA_MODULE:
			o.kra_module = optarg;
			break;
		case OPT_KRA_PIN:
			o.kra_pin_file = optarg;
			break;
		case 'n':
			o.name = optarg;
			break;
		case 'k':
			o.key_type = optarg;
			break;
		case 'u':
			o.user = optarg;
			break;
		case OPT_PASSWORD:
			o.password_file = optarg;
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
		case OPT_CLIENT_CERT:
			o.client_cert = optarg;
			break;
		case OPT_CLIENT_KEY:
			o.client_key = optarg;
			break;
		case OPT_DAYS:
			if ((rc = cli_int_option(CMD, "--days", optarg, 1, 36500, &o.days)) != 0)
				return rc;
			break;
		case ':':
			return cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(CMD, "expected an action: enroll, renew, list or retire");
	action = argv[optind++];
	if (strcmp(action, "retire") == 0 || strcmp(action, "renew") == 0) {
		if (optind != argc - 1)
			return cli_usage_error(CMD, "%s takes exactly one KRA name", action);
		o.name = argv[optind++];
	}
	if (optind != argc)
		return cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
	if (strcmp(action, "enroll") != 0 && strcmp(action, "list") != 0 && strcmp(action, "retire") != 0 &&
	    strcmp(action, "renew") != 0)
		return cli_usage_error(CMD, "unknown action '%s' (use enroll, renew, list or retire)", action);
	if (o.json && strcmp(action, "list") != 0)
		return cli_usage_error(CMD, "--json goes with list");
	if ((rc = cli_check_mode(CMD, o.server, o.local)) != 0)
		return rc;
	if ((rc = cli_init(CMD, o.config, &ctx, &cfg)) != 0)
		goto out;
	if (o.server != NULL) {
		/* Only the card's module (--kra-module, else --module) is used here: no CA token, no database. */
		if (o.module != NULL && (rc = cli_set(CMD, ctx, cfg, "module", o.module)) != 0)
			goto out;
		if (strcmp(action, "enroll") == 0)
			rc = remote_enroll(ctx, cfg, &o);
		else if (strcmp(action, "renew") == 0)
			rc = remote_renew(ctx, cfg, &o);
		else
			rc = strcmp(action, "list") == 0 ? remote_list(ctx, &o) : remote_retire(ctx, &o);
		goto out;
	}
	{
		char what[32];

		snprintf(what, sizeof(what), "%s %s", CMD, action);
		if ((rc = cli_apply_common(CMD, ctx, cfg, o.database, o.module, o.ca_token, o.pin_file)) != 0 ||
		    (rc = cli_open_store_local(CMD, what, ctx, cfg, &st)) != 0)
			goto out;
	}
	if (strcmp(action, "enroll") == 0)
		rc = do_enroll(ctx, cfg, st, &o);
	else if (strcmp(action, "renew") == 0)
		rc = do_renew(ctx, cfg, st, &o);
	else if (strcmp(action, "list") == 0)
		rc = do_list(ctx, cfg, st, o.json);
	else
		rc = do_retire(ctx, st, &o);
out:
	esc_store_free(st);
	esc_config_free(cfg);
	esc_ctx_free(ctx);
	return rc;
}
