/*
 * Library context: error detail and log sink.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <p11escrow/ctx.h>
#include <p11escrow/gate.h>

#include "esc_build_config.h"
#include "internal.h"

struct esc_ctx {
	enum esc_err errcode;
	char errmsg[ESC_ERRMSG_MAX];
	esc_log_fn log_fn;
	void *log_arg;
	int module_allow_set; /* else ESC_DEFAULT_MODULE_ALLOW */
	char module_allow[ESC_MODULE_ALLOW_MAX + 1];
	struct esc_publication pub; /* its URLs point into the arrays below */
	char crl_url[ESC_URL_MAX + 1];
	char ca_issuer_url[ESC_URL_MAX + 1];
	struct esc_token_gate *gate; /* borrowed: shared by the process's threads */
	/* PKCS#8 keys are decoded with a kept decoder (esc_ctx_pkcs8_decode; the keeper's envelopes, bulk import). */
	struct esc_kept_decoder p8;
	esc_timing_fn timing_fn;
	void *timing_arg;
};

#define CRL_VALIDITY_DEFAULT (7L * 24 * 3600)
#define CRL_REFRESH_DEFAULT 50

enum esc_err
esc_ctx_new(struct esc_ctx **out)
{
	struct esc_ctx *ctx;

	if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
		return ESC_ERR_NOMEM;
	ctx->pub.crl_url = ctx->crl_url;
	ctx->pub.ca_issuer_url = ctx->ca_issuer_url;
	ctx->pub.crl_validity = CRL_VALIDITY_DEFAULT;
	ctx->pub.crl_refresh = CRL_REFRESH_DEFAULT;
	*out = ctx;
	return ESC_OK;
}

void
esc_ctx_free(struct esc_ctx *ctx)
{
	if (ctx == NULL)
		return;
	esc_kept_decoder_free(&ctx->p8);
	free(ctx);
}

EVP_PKEY *
esc_kept_decode(struct esc_kept_decoder *kd, const char *structure, int selection, const unsigned char *der, size_t len)
{
	EVP_PKEY *pkey;

	if (der == NULL || len == 0)
		return NULL;
	if (kd->dec == NULL &&
	    (kd->dec = OSSL_DECODER_CTX_new_for_pkey(&kd->out, "DER", structure, NULL, selection, NULL, NULL)) == NULL)
		return NULL;
	kd->out = NULL;
	if (!OSSL_DECODER_from_data(kd->dec, &der, &len) || kd->out == NULL || len != 0) {
		/*
		 * Dropped after any failure: one that failed on input that is
		 * not PKCS#8 was seen to report success without a key next time.
		 */
		esc_kept_decoder_free(kd);
		return NULL;
	}
	pkey = kd->out;
	kd->out = NULL;
	return pkey;
}

void
esc_kept_decoder_free(struct esc_kept_decoder *kd)
{
	EVP_PKEY_free(kd->out);
	OSSL_DECODER_CTX_free(kd->dec);
	kd->out = NULL;
	kd->dec = NULL;
}

EVP_PKEY *
esc_ctx_pkcs8_decode(struct esc_ctx *ctx, const unsigned char *der, size_t len)
{
	return esc_kept_decode(&ctx->p8, "PrivateKeyInfo", EVP_PKEY_KEYPAIR, der, len);
}

void
esc_ctx_set_log(struct esc_ctx *ctx, esc_log_fn fn, void *arg)
{
	ctx->log_fn = fn;
	ctx->log_arg = arg;
}

void
esc_ctx_set_timing(struct esc_ctx *ctx, esc_timing_fn fn, void *arg)
{
	ctx->timing_fn = fn;
	ctx->timing_arg = arg;
}

int
esc_timing_start(const struct esc_ctx *ctx, struct timespec *t0)
{
	return ctx != NULL && ctx->timing_fn != NULL && clock_gettime(CLOCK_MONOTONIC, t0) == 0;
}

void
esc_timing_end(const struct esc_ctx *ctx, int started, const struct timespec *t0, enum esc_timing_kind kind,
	       const char *what)
{
	struct timespec t1;

	if (!started || ctx->timing_fn == NULL || clock_gettime(CLOCK_MONOTONIC, &t1) != 0)
		return;
	ctx->timing_fn(ctx->timing_arg, kind, what,
		       (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9);
}

enum esc_err
esc_ctx_set_module_allow(struct esc_ctx *ctx, const char *allow)
{
	if (allow == NULL) {
		ctx->module_allow_set = 0;
		ctx->module_allow[0] = '\0';
		return ESC_OK;
	}
	if (strlen(allow) > ESC_MODULE_ALLOW_MAX)
		return esc_error(ctx, ESC_ERR_CONFIG, "module_allow is longer than %d bytes", ESC_MODULE_ALLOW_MAX);
	memcpy(ctx->module_allow, allow, strlen(allow) + 1);
	ctx->module_allow_set = 1;
	return ESC_OK;
}

void
esc_ctx_set_token_gate(struct esc_ctx *ctx, struct esc_token_gate *g)
{
	ctx->gate = g;
}

struct esc_token_gate *
esc_ctx_token_gate(const struct esc_ctx *ctx)
{
	return ctx->gate;
}

const char *
esc_ctx_module_allow(const struct esc_ctx *ctx)
{
	return ctx->module_allow_set ? ctx->module_allow : ESC_DEFAULT_MODULE_ALLOW;
}

/* NULL or "", or a URL of at most ESC_URL_MAX bytes without blanks or control characters. */
static int
url_ok(const char *u)
{
	const unsigned char *p;

	if (u == NULL)
		return 1;
	if (strlen(u) > ESC_URL_MAX)
		return 0;
	for (p = (const unsigned char *)u; *p != '\0'; p++)
		if (*p <= 0x20 || *p == 0x7f)
			return 0;
	return 1;
}

enum esc_err
esc_ctx_set_publication(struct esc_ctx *ctx, const struct esc_publication *p)
{
	if (p == NULL)
		return esc_error(ctx, ESC_ERR_INTERNAL, "esc_ctx_set_publication: NULL argument");
	if (!url_ok(p->crl_url) || !url_ok(p->ca_issuer_url))
		return esc_error(ctx, ESC_ERR_CONFIG,
				 "crl_url and ca_issuer_url must be URLs of at most %d bytes without blanks",
				 ESC_URL_MAX);
	if (p->crl_validity < 60 || p->crl_validity > 31622400 || p->crl_refresh < 10 || p->crl_refresh > 90)
		return esc_error(ctx, ESC_ERR_CONFIG,
				 "crl_validity must be 60..31622400 seconds and crl_refresh 10..90 (percent)");
	snprintf(ctx->crl_url, sizeof(ctx->crl_url), "%s", p->crl_url != NULL ? p->crl_url : "");
	snprintf(ctx->ca_issuer_url, sizeof(ctx->ca_issuer_url), "%s",
		 p->ca_issuer_url != NULL ? p->ca_issuer_url : "");
	ctx->pub.crl_validity = p->crl_validity;
	ctx->pub.crl_refresh = p->crl_refresh;
	return ESC_OK;
}

const struct esc_publication *
esc_ctx_publication(const struct esc_ctx *ctx)
{
	return &ctx->pub;
}

const char *
esc_ctx_errmsg(const struct esc_ctx *ctx)
{
	return ctx->errmsg;
}

enum esc_err
esc_ctx_errcode(const struct esc_ctx *ctx)
{
	return ctx->errcode;
}

void
esc_ctx_clear_error(struct esc_ctx *ctx)
{
	ctx->errcode = ESC_OK;
	ctx->errmsg[0] = '\0';
}

static void set_msg(struct esc_ctx *ctx, enum esc_err code, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

static void
set_msg(struct esc_ctx *ctx, enum esc_err code, const char *fmt, va_list ap)
{
	ctx->errcode = code;
	vsnprintf(ctx->errmsg, sizeof(ctx->errmsg), fmt, ap);
}

void
esc_error_set(struct esc_ctx *ctx, enum esc_err code, const char *fmt, ...)
{
	va_list ap;

	if (ctx == NULL)
		return;
	va_start(ap, fmt);
	set_msg(ctx, code, fmt, ap);
	va_end(ap);
}

void
esc_error_ossl_set(struct esc_ctx *ctx, enum esc_err code, const char *fmt, ...)
{
	va_list ap;
	unsigned long e;
	char reason[256] = "";
	size_t len;

	/* Report the earliest error: it is the cause, later ones are context. */
	if ((e = ERR_peek_error()) != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	if (ctx == NULL)
		return;
	va_start(ap, fmt);
	set_msg(ctx, code, fmt, ap);
	va_end(ap);
	len = strlen(ctx->errmsg);
	if (reason[0] != '\0' && len < sizeof(ctx->errmsg))
		snprintf(ctx->errmsg + len, sizeof(ctx->errmsg) - len, " (OpenSSL: %s)", reason);
}

void
esc_log(struct esc_ctx *ctx, enum esc_log_level level, const char *fmt, ...)
{
	va_list ap;
	char line[ESC_ERRMSG_MAX];

	if (ctx == NULL || ctx->log_fn == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	ctx->log_fn(ctx->log_arg, level, line);
}
