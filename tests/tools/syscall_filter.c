/*
 * syscall_filter — run a program under a system call allow list, as systemd's
 * SystemCallFilter= does (tests/tools/unit_syscall_filter.py computes the list
 * from packaging/p11escrowd.service with systemd-analyze).
 *
 * usage: syscall_filter LIST PROGRAM [ARG...]
 *
 * LIST holds one system call name per line. Every other system call fails
 * with EPERM (the unit's SystemCallErrorNumber=EPERM). Names this
 * architecture does not have are skipped, as systemd skips them. The filter
 * is installed with no_new_privs, then PROGRAM is executed: it and every
 * process it forks run under it, as under the unit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <seccomp.h>

int
main(int argc, char **argv)
{
	char line[128];
	scmp_filter_ctx f;
	FILE *in;
	int n = 0, rc;

	if (argc < 3) {
		fprintf(stderr, "usage: syscall_filter LIST PROGRAM [ARG...]\n");
		return 2;
	}
	if ((in = fopen(argv[1], "r")) == NULL) {
		fprintf(stderr, "syscall_filter: %s: %s\n", argv[1], strerror(errno));
		return 4;
	}
	if ((f = seccomp_init(SCMP_ACT_ERRNO(EPERM))) == NULL) {
		fprintf(stderr, "syscall_filter: seccomp_init failed\n");
		fclose(in);
		return 70;
	}
	while (fgets(line, sizeof(line), in) != NULL) {
		int nr;

		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0')
			continue;
		if ((nr = seccomp_syscall_resolve_name(line)) == __NR_SCMP_ERROR || nr < 0)
			continue; /* not a system call of this architecture */
		if ((rc = seccomp_rule_add(f, SCMP_ACT_ALLOW, nr, 0)) != 0) {
			fprintf(stderr, "syscall_filter: cannot allow %s: %s\n", line, strerror(-rc));
			fclose(in);
			seccomp_release(f);
			return 70;
		}
		n++;
	}
	fclose(in);
	if ((rc = seccomp_load(f)) != 0) {
		fprintf(stderr, "syscall_filter: cannot load the filter: %s\n", strerror(-rc));
		seccomp_release(f);
		return 70;
	}
	seccomp_release(f);
	fprintf(stderr, "syscall_filter: %d system calls allowed, the rest fail with EPERM\n", n);
	execv(argv[2], argv + 2);
	fprintf(stderr, "syscall_filter: cannot execute %s: %s\n", argv[2], strerror(errno));
	return 70;
}
