/*
 * The token gate (gate.h): a counting semaphore over the token's private-key
 * operations and a meter of their CPU.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11escrow/gate.h>

#include "internal.h"

/* The meter's layout, in memory or in the shared file: native-endian 64-bit counters. */
#define METER_MAGIC 0x3154454d45544147ULL /* "GATEMET1" */
struct meter {
	uint64_t magic;
	uint64_t ops;
	uint64_t cpu_ns;
	uint64_t wait_ns;
};

struct esc_token_gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	long limit; /* 0: unbounded */
	long busy;
	struct meter *m;
	int mapped;
	struct meter own;
};

static int64_t
clock_ns(clockid_t id)
{
	struct timespec ts;

	if (clock_gettime(id, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

enum esc_err
esc_token_gate_new(struct esc_ctx *ctx, long sessions, const char *meter_path, struct esc_token_gate **out)
{
	struct esc_token_gate *g = NULL;
	struct stat sb;
	void *map;
	int fd = -1;
	enum esc_err r;

	if (sessions < 0 || sessions > ESC_TOKEN_GATE_MAX)
		return esc_error(ctx, ESC_ERR_CONFIG, "token_sessions must be 0..%d", ESC_TOKEN_GATE_MAX);
	if ((g = calloc(1, sizeof(*g))) == NULL)
		return esc_error(ctx, ESC_ERR_NOMEM, "out of memory");
	if (pthread_mutex_init(&g->mu, NULL) != 0) {
		free(g);
		return esc_error(ctx, ESC_ERR_NOMEM, "cannot create the token gate's lock");
	}
	if (pthread_cond_init(&g->cv, NULL) != 0) {
		pthread_mutex_destroy(&g->mu);
		free(g);
		return esc_error(ctx, ESC_ERR_NOMEM, "cannot create the token gate's condition");
	}
	g->limit = sessions;
	g->m = &g->own;
	g->own.magic = METER_MAGIC;
	if (meter_path != NULL && *meter_path != '\0') {
		if ((fd = open(meter_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0 ||
		    fstat(fd, &sb) != 0) {
			r = esc_error(ctx, ESC_ERR_IO, "token meter %s: %s", meter_path, strerror(errno));
			goto out;
		}
		if (!S_ISREG(sb.st_mode) || (sb.st_size != 0 && sb.st_size != (off_t)sizeof(struct meter))) {
			r = esc_error(ctx, ESC_ERR_IO, "token meter %s: not a meter file (%zu bytes, a regular file)",
				      meter_path, sizeof(struct meter));
			goto out;
		}
		if (sb.st_size == 0 && ftruncate(fd, sizeof(struct meter)) != 0) {
			r = esc_error(ctx, ESC_ERR_IO, "token meter %s: %s", meter_path, strerror(errno));
			goto out;
		}
		map = mmap(NULL, sizeof(struct meter), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (map == MAP_FAILED) {
			r = esc_error(ctx, ESC_ERR_IO, "token meter %s: mmap: %s", meter_path, strerror(errno));
			goto out;
		}
		g->m = map;
		g->mapped = 1;
		if (g->m->magic != METER_MAGIC) {
			memset(g->m, 0, sizeof(*g->m));
			g->m->magic = METER_MAGIC;
		}
	}
	*out = g;
	g = NULL; /* transferred */
	r = ESC_OK;
out:
	if (fd >= 0)
		close(fd);
	esc_token_gate_free(g);
	return r;
}

void
esc_token_gate_free(struct esc_token_gate *g)
{
	if (g == NULL)
		return;
	if (g->mapped)
		munmap(g->m, sizeof(struct meter));
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
	free(g);
}

void
esc_token_gate_read(const struct esc_token_gate *g, uint64_t *ops, uint64_t *cpu_ns, uint64_t *wait_ns)
{
	*ops = __atomic_load_n(&g->m->ops, __ATOMIC_RELAXED);
	*cpu_ns = __atomic_load_n(&g->m->cpu_ns, __ATOMIC_RELAXED);
	*wait_ns = __atomic_load_n(&g->m->wait_ns, __ATOMIC_RELAXED);
}

void
esc_token_gate_enter(struct esc_ctx *ctx, struct esc_token_pass *pass)
{
	struct esc_token_gate *g = ctx != NULL ? esc_ctx_token_gate(ctx) : NULL;
	int64_t t0;

	pass->g = g;
	pass->cpu0_ns = 0;
	if (g == NULL)
		return;
	if (g->limit > 0) {
		t0 = clock_ns(CLOCK_MONOTONIC);
		pthread_mutex_lock(&g->mu);
		while (g->busy >= g->limit)
			pthread_cond_wait(&g->cv, &g->mu);
		g->busy++;
		pthread_mutex_unlock(&g->mu);
		__atomic_add_fetch(&g->m->wait_ns, (uint64_t)(clock_ns(CLOCK_MONOTONIC) - t0), __ATOMIC_RELAXED);
	}
	pass->cpu0_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

void
esc_token_gate_leave(struct esc_token_pass *pass)
{
	struct esc_token_gate *g = pass->g;
	int64_t d;

	if (g == NULL)
		return;
	d = clock_ns(CLOCK_THREAD_CPUTIME_ID) - pass->cpu0_ns;
	__atomic_add_fetch(&g->m->cpu_ns, (uint64_t)(d > 0 ? d : 0), __ATOMIC_RELAXED);
	__atomic_add_fetch(&g->m->ops, 1, __ATOMIC_RELAXED);
	if (g->limit > 0) {
		pthread_mutex_lock(&g->mu);
		g->busy--;
		pthread_cond_signal(&g->cv);
		pthread_mutex_unlock(&g->mu);
	}
	pass->g = NULL;
}
