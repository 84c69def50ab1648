/*
 * Replay driver for the fuzz targets when they are not built with libFuzzer
 * (p11-kit does the same): `meson test --suite fuzz` runs every target over
 * its seed corpus, in the normal and the sanitizer build.
 *
 *   fuzz_NAME FILE|DIR...   each FILE, and each regular file in each DIR
 *                           (sorted by name; names starting with "." or
 *                           "crash-" skipped: known crashers stay out of
 *                           the replay until fixed)
 *   fuzz_NAME <FILE         one input from standard input
 *
 * Each input is copied into a buffer of exactly its size, so AddressSanitizer
 * sees any read past its end.  Exit status: 0 if every input ran, 1 if an
 * input could not be read or none was found (a wrong corpus path must not
 * pass silently); a crash in a target ends the process as it would under
 * libFuzzer.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#define INPUT_MAX (16 * 1024 * 1024) /* far above any target's own limits */

/* Read all of fd (at most INPUT_MAX bytes) into a malloc'ed buffer of exactly that size. */
static int
read_fd(int fd, unsigned char **out, size_t *outlen)
{
	unsigned char *buf = NULL, *tmp;
	size_t len = 0, cap = 0;
	ssize_t n;

	for (;;) {
		if (len == cap) {
			if (cap >= INPUT_MAX) {
				errno = EFBIG;
				goto fail;
			}
			cap = cap ? cap * 2 : 4096;
			if ((tmp = realloc(buf, cap)) == NULL)
				goto fail;
			buf = tmp;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	/* Exactly len bytes (at least one, for malloc), so overreads are caught. */
	if ((tmp = malloc(len ? len : 1)) == NULL)
		goto fail;
	memcpy(tmp, buf, len);
	free(buf);
	*out = tmp;
	*outlen = len;
	return 0;
fail:
	free(buf);
	return -1;
}

static int
run_fd(int fd, const char *name)
{
	unsigned char *data;
	size_t len;

	if (read_fd(fd, &data, &len) != 0) {
		fprintf(stderr, "cannot read %s: %s\n", name, strerror(errno));
		return -1;
	}
	(void)LLVMFuzzerTestOneInput(data, len);
	free(data);
	return 0;
}

static int
run_file(const char *path)
{
	int fd, rc;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	rc = run_fd(fd, path);
	close(fd);
	return rc;
}

static int
wanted(const struct dirent *d)
{
	return d->d_name[0] != '.' && strncmp(d->d_name, "crash-", 6) != 0;
}

/* Every regular file of dir, sorted; *count gets how many ran. */
static int
run_dir(const char *dir, size_t *count)
{
	struct dirent **names = NULL;
	struct stat st;
	char *path;
	int n, i, rc = 0;

	if ((n = scandir(dir, &names, wanted, alphasort)) < 0) {
		fprintf(stderr, "cannot list %s: %s\n", dir, strerror(errno));
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (asprintf(&path, "%s/%s", dir, names[i]->d_name) < 0) {
			rc = -1;
		} else {
			if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
				if (run_file(path) != 0)
					rc = -1;
				else
					(*count)++;
			}
			free(path);
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

int
main(int argc, char *argv[])
{
	struct stat st;
	size_t count = 0;
	int i, rc = 0;

	if (argc < 2) {
		if (run_fd(STDIN_FILENO, "standard input") != 0)
			return 1;
		printf("%s: 1 input from standard input\n", argv[0]);
		return 0;
	}
	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &st) != 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			rc = 1;
		} else if (S_ISDIR(st.st_mode)) {
			if (run_dir(argv[i], &count) != 0)
				rc = 1;
		} else if (run_file(argv[i]) != 0) {
			rc = 1;
		} else {
			count++;
		}
	}
	if (count == 0) {
		fprintf(stderr, "%s: no inputs found\n", argv[0]);
		rc = 1;
	}
	printf("%s: %zu inputs ran\n", argv[0], count);
	return rc;
}
