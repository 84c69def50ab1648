/*
 * Secrets (PINs, passwords) in OpenSSL's secure heap, wiped when freed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <p11escrow/pin.h>

#include "internal.h"

struct esc_secret {
	size_t len;
	char *buf; /* secure heap, ESC_SECRET_MAX bytes, NUL-terminated */
};

/* 1 MiB of locked memory is far more than the PINs and keys we hold at once. */
#define SECURE_HEAP_SIZE (1024 * 1024)
#define SECURE_HEAP_MIN 32

enum esc_err
esc_secmem_init(void)
{
	if (CRYPTO_secure_malloc_initialized())
		return ESC_OK;
	/* 2: a heap exists, but neither mlock nor madvise protected it. */
	if (CRYPTO_secure_malloc_init(SECURE_HEAP_SIZE, SECURE_HEAP_MIN) != 1)
		return ESC_ERR_NOMEM;
	return ESC_OK;
}

void
esc_env_wipe(const char *var)
{
	char *v = getenv(var);
	size_t n = strlen(var);

	/*
	 * getenv points into the string "VAR=value" that environ holds (for the
	 * first environment: on the process's stack, which /proc/PID/environ
	 * shows).  Overwrite all of it, name included, then drop the variable.
	 */
	if (v != NULL && strncmp(v - n - 1, var, n) == 0 && v[-1] == '=')
		OPENSSL_cleanse(v - n - 1, n + 1 + strlen(v));
	else if (v != NULL)
		OPENSSL_cleanse(v, strlen(v));
	(void)unsetenv(var);
}

static enum esc_err
secret_alloc(struct esc_ctx *ctx, struct esc_secret **out)
{
	struct esc_secret *s;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if ((s->buf = OPENSSL_secure_zalloc(ESC_SECRET_MAX)) == NULL) {
		free(s);
		return esc_error(ctx, ESC_ERR_NOMEM, "out of secure memory");
	}
	*out = s;
	return ESC_OK;
}

void
esc_secret_free(struct esc_secret *s)
{
	if (s == NULL)
		return;
	OPENSSL_secure_clear_free(s->buf, ESC_SECRET_MAX);
	free(s);
}

const char *
esc_secret_str(const struct esc_secret *s)
{
	return s->buf;
}

size_t
esc_secret_len(const struct esc_secret *s)
{
	return s->len;
}

enum esc_err
esc_secret_new(struct esc_ctx *ctx, const void *data, size_t len, struct esc_secret **out)
{
	struct esc_secret *s = NULL;
	enum esc_err r;

	if (len >= ESC_SECRET_MAX)
		return esc_error(ctx, ESC_ERR_USAGE, "secret longer than %d bytes", ESC_SECRET_MAX - 1);
	if ((r = secret_alloc(ctx, &s)) != ESC_OK)
		return r;
	memcpy(s->buf, data, len);
	s->len = len;
	*out = s;
	return ESC_OK;
}

/* Strip one trailing "\n" or "\r\n". */
static void
chomp(struct esc_secret *s)
{
	if (s->len > 0 && s->buf[s->len - 1] == '\n')
		s->buf[--s->len] = '\0';
	if (s->len > 0 && s->buf[s->len - 1] == '\r')
		s->buf[--s->len] = '\0';
}

enum esc_err
esc_secret_from_file(struct esc_ctx *ctx, const char *path, struct esc_secret **out)
{
	struct esc_secret *s = NULL;
	struct stat st;
	enum esc_err r;
	ssize_t n;
	int fd = -1;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		r = esc_error(ctx, ESC_ERR_IO, "cannot open PIN file '%s': %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		r = esc_error(ctx, ESC_ERR_USAGE, "PIN file '%s' is not a regular file", path);
		goto out;
	}
	if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
		r = esc_error(ctx, ESC_ERR_USAGE,
			      "PIN file '%s' is accessible by other users (mode %03o): chmod o-rwx it", path,
			      (unsigned)(st.st_mode & 0777));
		goto out;
	}
	if (st.st_size >= ESC_SECRET_MAX) {
		r = esc_error(ctx, ESC_ERR_USAGE, "PIN file '%s' is larger than %d bytes", path, ESC_SECRET_MAX - 1);
		goto out;
	}
	if ((r = secret_alloc(ctx, &s)) != ESC_OK)
		goto out;
	while (s->len < ESC_SECRET_MAX - 1) {
		n = read(fd, s->buf + s->len, ESC_SECRET_MAX - 1 - s->len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			r = esc_error(ctx, ESC_ERR_IO, "cannot read PIN file '%s': %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		s->len += (size_t)n;
	}
	chomp(s);
	if (s->len == 0 || memchr(s->buf, '\0', s->len) != NULL) {
		r = esc_error(ctx, ESC_ERR_PIN_MISSING, "PIN file '%s' is empty or holds a NUL byte", path);
		goto out;
	}
	*out = s;
	s = NULL; /* transferred */
	r = ESC_OK;
out:
	if (fd != -1)
		close(fd);
	esc_secret_free(s);
	return r;
}

enum esc_err
esc_secret_from_env(struct esc_ctx *ctx, const char *var, struct esc_secret **out)
{
	const char *v = getenv(var);

	if (v == NULL || *v == '\0')
		return esc_error(ctx, ESC_ERR_PIN_MISSING, "environment variable %s is not set", var);
	return esc_secret_new(ctx, v, strlen(v), out);
}

enum esc_err
esc_secret_prompt(struct esc_ctx *ctx, const char *prompt, struct esc_secret **out)
{
	struct esc_secret *s = NULL;
	struct termios old, noecho;
	enum esc_err r;
	int fd, restore = 0;
	ssize_t n;
	char c;

	if ((fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)) == -1)
		return esc_error(ctx, ESC_ERR_PIN_MISSING, "no terminal to prompt for the PIN");
	if ((r = secret_alloc(ctx, &s)) != ESC_OK)
		goto out;
	if (tcgetattr(fd, &old) == 0) {
		noecho = old;
		noecho.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
		noecho.c_lflag |= ICANON;
		if (tcsetattr(fd, TCSAFLUSH, &noecho) == 0)
			restore = 1;
	}
	if (write(fd, prompt, strlen(prompt)) < 0) {
		r = esc_error(ctx, ESC_ERR_IO, "cannot write prompt: %s", strerror(errno));
		goto out;
	}
	/* Byte by byte so nothing beyond the line is buffered outside s. */
	for (;;) {
		n = read(fd, &c, 1);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0 || c == '\n')
			break;
		if (s->len >= ESC_SECRET_MAX - 1) {
			r = esc_error(ctx, ESC_ERR_USAGE, "input longer than %d bytes", ESC_SECRET_MAX - 1);
			goto out;
		}
		s->buf[s->len++] = c;
	}
	c = 0;
	(void)!write(fd, "\n", 1);
	chomp(s);
	if (s->len == 0) {
		r = esc_error(ctx, ESC_ERR_PIN_MISSING, "empty input at the prompt");
		goto out;
	}
	*out = s;
	s = NULL; /* transferred */
	r = ESC_OK;
out:
	OPENSSL_cleanse(&c, sizeof(c));
	if (restore)
		tcsetattr(fd, TCSAFLUSH, &old);
	close(fd);
	esc_secret_free(s);
	return r;
}

enum esc_err
esc_secret_obtain(struct esc_ctx *ctx, const char *path, const char *env_var, const char *prompt,
		  struct esc_secret **out)
{
	const char *v;

	if (path != NULL && *path != '\0')
		return esc_secret_from_file(ctx, path, out);
	if (env_var != NULL && (v = getenv(env_var)) != NULL && *v != '\0')
		return esc_secret_from_env(ctx, env_var, out);
	if (prompt != NULL && isatty(STDIN_FILENO))
		return esc_secret_prompt(ctx, prompt, out);
	/* Say which kind of secret is missing: an account's or a file's password is not a PIN. */
	{
		const char *what = env_var != NULL && strstr(env_var, "PASSWORD") != NULL ? "password" : "PIN";

		return esc_error(ctx, ESC_ERR_PIN_MISSING, "no %s given: use a %s file%s%s%s", what, what,
				 env_var ? ", set " : "", env_var ? env_var : "",
				 prompt ? " or run on a terminal to be prompted" : "");
	}
}
