/*
 * p11escrow — the token gate: how many token operations run at once, and
 * what they cost.
 *
 * A gate bounds the CA token's private-key operations (certificate
 * signatures, the transport key's ECDH or decryption) that run at the same
 * time to a number of sessions S, whatever the number of worker
 * connections; request handling (TLS, the database, building certificates)
 * is not bounded by it.  With S = 0 it bounds nothing.  It also meters
 * the operations: their count, the CPU time of the calling thread inside
 * them (CLOCK_THREAD_CPUTIME_ID: the token's share where the module runs
 * in-process, like SoftHSM2; near zero for a network HSM) and the time
 * spent waiting for a session.  The meter can be a file shared by mmap
 * (the daemon's `token_meter` setting), which bench/run reads.
 *
 * One gate is shared by the threads of one process; set it on each
 * thread's context with esc_ctx_set_token_gate.
 */
#ifndef P11ESCROW_GATE_H
#define P11ESCROW_GATE_H

#include <stdint.h>

#include <p11escrow/ctx.h>

struct esc_token_gate;

#define ESC_TOKEN_GATE_MAX 1024

/*
 * A new gate of sessions concurrent operations (0: no bound, at most
 * ESC_TOKEN_GATE_MAX) into *out; meter_path NULL or "": the meter lives in
 * memory, else the file (created 0600 if missing, its counters kept if it
 * holds some) is mapped and shared.  Errors: CONFIG (sessions out of range),
 * IO (the file), NOMEM.
 */
enum esc_err esc_token_gate_new(struct esc_ctx *ctx, long sessions, const char *meter_path,
				struct esc_token_gate **out) ESC_MUST_CHECK;
/* Frees a gate no thread uses any more; accepts NULL. */
void esc_token_gate_free(struct esc_token_gate *g);

/* The counters so far: operations, CPU ns inside them, ns waited for a session. */
void esc_token_gate_read(const struct esc_token_gate *g, uint64_t *ops, uint64_t *cpu_ns, uint64_t *wait_ns);

/* The gate the token operations on ctx's thread pass (borrowed; NULL: none). */
void esc_ctx_set_token_gate(struct esc_ctx *ctx, struct esc_token_gate *g);
struct esc_token_gate *esc_ctx_token_gate(const struct esc_ctx *ctx);

/*
 * Around one token operation: enter waits for a session (if bounded) and
 * starts the thread's CPU clock; leave adds the operation and frees the
 * session.  Without a gate on ctx both do nothing.
 */
struct esc_token_pass {
	struct esc_token_gate *g;
	int64_t cpu0_ns;
};
void esc_token_gate_enter(struct esc_ctx *ctx, struct esc_token_pass *pass);
void esc_token_gate_leave(struct esc_token_pass *pass);

#endif
