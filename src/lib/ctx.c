/*
 * Library context: error detail and log sink.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include <p11escrow/ctx.h>

#include "esc_build_config.h"
#include "internal.h"

struct esc_ctx {
	enum esc_err errcode;
	char errmsg[ESC_ERRMSG_MAX];
	esc_log_fn log_fn;
	void *log_arg;
	int module_allow_set; /* else ESC_DEFAULT_MODULE_ALLOW */
	char module_allow[ESC_MODULE_ALLOW_MAX + 1];
};

enum esc_err
esc_ctx_new(struct esc_ctx **out)
{
	struct esc_ctx *ctx;

	if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
		return ESC_ERR_NOMEM;
	*out = ctx;
	return ESC_OK;
}

void
esc_ctx_free(struct esc_ctx *ctx)
{
	free(ctx);
}

void
esc_ctx_set_log(struct esc_ctx *ctx, esc_log_fn fn, void *arg)
{
	ctx->log_fn = fn;
	ctx->log_arg = arg;
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

const char *
esc_ctx_module_allow(const struct esc_ctx *ctx)
{
	return ctx->module_allow_set ? ctx->module_allow : ESC_DEFAULT_MODULE_ALLOW;
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
