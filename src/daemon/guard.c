/*
 * p11escrowd — failed logins counted per account and per client address.
 *
 * Passwords (accounts of the JSON API) and one-time enrollment passwords
 * (EST) are checked with Argon2id, so each guess costs the service about
 * 100 ms of CPU and 64 MiB: unlimited guessing would be slow for an attacker
 * and ruinous for the service.  After auth_fail_limit failures for one name
 * (an account or a one-time password's name), or auth_fail_limit_address
 * failures from one address, within auth_fail_window seconds, further
 * attempts for that name or from that address are answered 429 at once,
 * without checking the password, until auth_fail_window seconds after the
 * last failure.  A success clears the name's count.
 *
 * The table is shared by every worker process of one p11escrowd: a
 * MAP_SHARED anonymous mapping made by the supervisor before it forks them,
 * locked by a process-shared, robust mutex (a worker that dies holding it
 * does not stop the others).  It is bounded (GUARD_SLOTS) and forgets when
 * the service restarts: several services each count their own.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <openssl/lhash.h>

#include "svc.h"

#define GUARD_SLOTS 4096
#define GUARD_PROBE 16
#define GUARD_KEY_MAX 96

struct guard_slot {
	char key[GUARD_KEY_MAX]; /* "a:" + account or password name, "p:" + address; "" = free */
	unsigned fails;
	long long first; /* monotonic seconds of the first failure counted */
	long long last;	 /* ... of the latest */
};

struct svc_guard {
	pthread_mutex_t lock;
	long long limit_name, limit_address, window;
	struct guard_slot slots[GUARD_SLOTS];
};

struct svc_guard *
svc_guard_new(long long limit_name, long long limit_address, long long window)
{
	pthread_mutexattr_t attr;
	struct svc_guard *g;
	int ok;

	/* Zero-filled, and seen by every process forked after this. */
	g = mmap(NULL, sizeof(*g), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (g == MAP_FAILED)
		return NULL;
	ok = pthread_mutexattr_init(&attr) == 0;
	ok = ok && pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) == 0 &&
	     pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) == 0 && pthread_mutex_init(&g->lock, &attr) == 0;
	pthread_mutexattr_destroy(&attr);
	if (!ok) {
		munmap(g, sizeof(*g));
		return NULL;
	}
	g->limit_name = limit_name;
	g->limit_address = limit_address;
	g->window = window;
	return g;
}

void
svc_guard_free(struct svc_guard *g)
{
	if (g == NULL)
		return;
	pthread_mutex_destroy(&g->lock);
	munmap(g, sizeof(*g));
}

/* Lock the table; a worker that died holding the lock left at worst one slot half-written: counts only. */
static void
guard_lock(struct svc_guard *g)
{
	if (pthread_mutex_lock(&g->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&g->lock);
}

/* Has this slot's count run out (its last failure a window ago)? */
static int
expired(const struct svc_guard *g, const struct guard_slot *s, long long now)
{
	return s->key[0] == '\0' || now - s->last >= g->window;
}

/* Which slot to give up first: free or expired (0), counting (1), holding a name or address off (2). */
static int
rank(const struct svc_guard *g, const struct guard_slot *s, long long now)
{
	long long limit = s->key[0] == 'a' ? g->limit_name : g->limit_address;

	if (expired(g, s, now))
		return 0;
	return limit > 0 && s->fails >= (unsigned long long)limit ? 2 : 1;
}

/*
 * The slot of key (locked), or with create a fresh one: of its probe run,
 * the lowest rank, and among those the one whose last failure is oldest —
 * so a flood of new names pushes out counts before it pushes out a name
 * or address held off.  NULL if absent and not created.
 */
static struct guard_slot *
find(struct svc_guard *g, const char *key, int create, long long now)
{
	unsigned long h = OPENSSL_LH_strhash(key);
	struct guard_slot *s, *spare = NULL;
	size_t i;

	for (i = 0; i < GUARD_PROBE; i++) {
		s = &g->slots[(h + i) % GUARD_SLOTS];
		if (strcmp(s->key, key) == 0) {
			if (expired(g, s, now)) {
				s->fails = 0;
				s->first = s->last = now;
			}
			return s;
		}
		if (spare == NULL || rank(g, s, now) < rank(g, spare, now) ||
		    (rank(g, s, now) == rank(g, spare, now) && s->last < spare->last))
			spare = s;
	}
	if (!create)
		return NULL;
	snprintf(spare->key, sizeof(spare->key), "%s", key);
	spare->fails = 0;
	spare->first = spare->last = now;
	return spare;
}

static void
make_key(char *buf, size_t len, char kind, const char *value)
{
	snprintf(buf, len, "%c:%s", kind, value != NULL ? value : "");
}

/* Seconds key stays blocked (0: it is not), under the lock. */
static long long
blocked_for(struct svc_guard *g, const char *key, long long limit, long long now)
{
	struct guard_slot *s;

	if (limit <= 0 || (s = find(g, key, 0, now)) == NULL || s->fails < limit)
		return 0;
	return g->window - (now - s->last);
}

long long
svc_guard_blocked(struct svc_guard *g, const char *address, const char *name)
{
	char kn[GUARD_KEY_MAX], ka[GUARD_KEY_MAX];
	long long now = svc_mono_seconds(), a, n;

	if (g == NULL)
		return 0;
	make_key(kn, sizeof(kn), 'a', name);
	make_key(ka, sizeof(ka), 'p', address);
	guard_lock(g);
	n = name != NULL ? blocked_for(g, kn, g->limit_name, now) : 0;
	a = address != NULL ? blocked_for(g, ka, g->limit_address, now) : 0;
	pthread_mutex_unlock(&g->lock);
	return n > a ? n : a;
}

void
svc_guard_held(struct svc_guard *g, long long *names, long long *addresses)
{
	long long now = svc_mono_seconds();
	size_t i;

	*names = *addresses = 0;
	if (g == NULL)
		return;
	guard_lock(g);
	for (i = 0; i < GUARD_SLOTS; i++)
		if (rank(g, &g->slots[i], now) == 2)
			++*(g->slots[i].key[0] == 'a' ? names : addresses);
	pthread_mutex_unlock(&g->lock);
}

int
svc_guard_failed(struct svc_guard *g, const char *address, const char *name)
{
	char kn[GUARD_KEY_MAX], ka[GUARD_KEY_MAX];
	struct guard_slot *s;
	long long now = svc_mono_seconds();
	int reached = 0;

	if (g == NULL)
		return 0;
	make_key(kn, sizeof(kn), 'a', name);
	make_key(ka, sizeof(ka), 'p', address);
	guard_lock(g);
	if (name != NULL && g->limit_name > 0 && (s = find(g, kn, 1, now)) != NULL) {
		s->last = now;
		if (++s->fails == (unsigned)g->limit_name)
			reached |= SVC_GUARD_NAME;
	}
	if (address != NULL && g->limit_address > 0 && (s = find(g, ka, 1, now)) != NULL) {
		s->last = now;
		if (++s->fails == (unsigned)g->limit_address)
			reached |= SVC_GUARD_ADDRESS;
	}
	pthread_mutex_unlock(&g->lock);
	return reached;
}

void
svc_guard_succeeded(struct svc_guard *g, const char *name)
{
	char kn[GUARD_KEY_MAX];
	struct guard_slot *s;

	if (g == NULL || name == NULL)
		return;
	make_key(kn, sizeof(kn), 'a', name);
	guard_lock(g);
	if ((s = find(g, kn, 0, svc_mono_seconds())) != NULL)
		memset(s, 0, sizeof(*s));
	pthread_mutex_unlock(&g->lock);
}
