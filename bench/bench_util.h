/*
 * p11escrow benchmarks — small helpers shared by the benchmark programs:
 * clocks, CPU time, percentiles, and reading a libpq value the library has
 * no public accessor for.  Benchmarks are front-ends: they print and exit.
 */
#ifndef P11ESCROW_BENCH_UTIL_H
#define P11ESCROW_BENCH_UTIL_H

#include <stddef.h>

/* Monotonic seconds. */
double bench_now(void);
/* CPU seconds (user + system) of this process so far. */
double bench_cpu(void);

/* A growable array of doubles (latencies in ms). */
struct bench_samples {
	double *v;
	size_t n, cap;
};
/* Append x; returns 0, or -1 when out of memory (the sample is dropped). */
int bench_samples_add(struct bench_samples *s, double x);
/* Append all of src to dst (0, or -1 when out of memory). */
int bench_samples_merge(struct bench_samples *dst, const struct bench_samples *src);
void bench_samples_free(struct bench_samples *s);
/* Sort s in place and return the q-quantile (0..1; nearest rank), 0 if empty. */
double bench_quantile(struct bench_samples *s, double q);

/*
 * One text value of a parameterless query, e.g. "SELECT uri FROM token_keys
 * WHERE role = 'ca-sign'"; malloc'ed, NULL on any failure (reason printed).
 */
char *bench_db_value(const char *conninfo, const char *sql);

/* Parse a positive integer option value or exit 2 with a message naming opt. */
long bench_parse_long(const char *prog, const char *opt, const char *s, long min, long max);

#endif
