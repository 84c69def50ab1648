/*
 * p11escrowd — what the service counts and shows to its monitoring:
 * GET /metrics (Prometheus text exposition 0.0.4) and GET /readyz
 * (docs/operator-guide.md, "Monitoring").
 *
 * Counters and histograms live in a MAP_SHARED anonymous mapping the
 * supervisor makes before it forks: one slot per worker process (and one
 * for the keeper's database statements), each field a C11 atomic that only
 * its own process adds to, lock-free.  A scrape sums the slots.  A worker
 * that is forked again takes over its slot as it was: nothing is lost and
 * nothing counted twice.  The counts start at zero when p11escrowd starts.
 */
#ifndef P11ESCROWD_METRICS_H
#define P11ESCROWD_METRICS_H

#include <p11escrow/ctx.h>
#include <p11escrow/err.h>

struct svc_metrics;
struct svc_metrics_slot;
struct svc_request;

/* A new, zeroed mapping of nslots slots (shared with every process forked after this), or NULL. */
struct svc_metrics *svc_metrics_new(int nslots);
/* Unmap; accepts NULL. */
void svc_metrics_free(struct svc_metrics *m);
/* Slot i (0 <= i < nslots), or NULL if m is NULL or i out of range. */
struct svc_metrics_slot *svc_metrics_slot(struct svc_metrics *m, int i);

/* Count one request of path answered status (any slot NULL: nothing is counted). */
void svc_metrics_request(struct svc_metrics_slot *s, const char *path, int status);
/* Count one error reply with library error e. */
void svc_metrics_error(struct svc_metrics_slot *s, enum esc_err e);
/* Count a failed login (password, token or certificate), or one refused by the failed-login limits. */
void svc_metrics_login_failed(struct svc_metrics_slot *s);
void svc_metrics_login_throttled(struct svc_metrics_slot *s);
/* The library's timing sink (esc_ctx_set_timing); arg is the process's struct svc_metrics_slot. */
void svc_metrics_timing(void *arg, enum esc_timing_kind kind, const char *what, double seconds);

/*
 * The bearer token GET /metrics accepts, from the file path (mode 0600 or
 * stricter, one line, at least 16 characters): its SHA-256 into hash, the
 * token itself wiped at once.  1, 0 if path is NULL or "" (no token), or -1
 * with why filled in.
 */
int svc_metrics_token_read(struct esc_ctx *ctx, const char *path, unsigned char hash[32], char *why, size_t whylen);

/* GET /metrics and GET /readyz; each replies exactly once. */
void svc_serve_metrics(struct svc_request *r);
void svc_serve_readyz(struct svc_request *r);

#endif
