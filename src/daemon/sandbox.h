/*
 * p11escrowd — the worker processes' seccomp filter (sandbox.c).
 */
#ifndef P11ESCROWD_SANDBOX_H
#define P11ESCROWD_SANDBOX_H

#include <stddef.h>

/*
 * Install the workers' filter on the calling process (all its threads must
 * be started after, or be this one): the system calls listed in sandbox.c
 * kill the process.  Needs no_new_privs or CAP_SYS_ADMIN.  0, or -1 with
 * the reason in err.
 */
int svc_sandbox_worker(char *err, size_t errlen);

#endif
