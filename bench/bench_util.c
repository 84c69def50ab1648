/*
 * p11escrow benchmarks — shared helpers (see bench_util.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <libpq-fe.h>

#include "bench_util.h"

double
bench_now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

double
bench_cpu(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       (double)ru.ru_stime.tv_usec / 1e6;
}

int
bench_samples_add(struct bench_samples *s, double x)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 1024;
		double *v = realloc(s->v, cap * sizeof(*v));

		if (v == NULL)
			return -1;
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = x;
	return 0;
}

int
bench_samples_merge(struct bench_samples *dst, const struct bench_samples *src)
{
	size_t i;

	for (i = 0; i < src->n; i++)
		if (bench_samples_add(dst, src->v[i]) != 0)
			return -1;
	return 0;
}

void
bench_samples_free(struct bench_samples *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double
bench_quantile(struct bench_samples *s, double q)
{
	size_t k;

	if (s->n == 0)
		return 0;
	qsort(s->v, s->n, sizeof(*s->v), cmp_double);
	/* Nearest rank: the smallest value with at least q of the samples at or below it. */
	k = (size_t)(q * (double)s->n + 0.999999);
	if (k < 1)
		k = 1;
	if (k > s->n)
		k = s->n;
	return s->v[k - 1];
}

char *
bench_db_value(const char *conninfo, const char *sql)
{
	PGconn *c = PQconnectdb(conninfo);
	PGresult *res = NULL;
	char *v = NULL;

	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "database: %s", PQerrorMessage(c));
		goto out;
	}
	res = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		fprintf(stderr, "database: '%s' gave no single value %s", sql, PQerrorMessage(c));
		goto out;
	}
	if ((v = strdup(PQgetvalue(res, 0, 0))) == NULL)
		fprintf(stderr, "out of memory\n");
out:
	PQclear(res);
	PQfinish(c);
	return v;
}

long
bench_parse_long(const char *prog, const char *opt, const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "%s: %s needs a number from %ld to %ld, not '%s'\n", prog, opt, min, max, s);
		exit(2);
	}
	return v;
}
