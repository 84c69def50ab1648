/*
 * p11escrowd — the worker processes' seccomp filter (issue #12).
 *
 * A worker parses everything the network sends.  Should one of those
 * parsers be exploited, the process it runs in holds no PIN and no token
 * (the keeper does), but it is still a process on the service host, as the
 * service's user.  The filter takes away the system calls an intruder
 * would reach for next and no worker ever makes: running programs, reading
 * or writing other processes' memory, loading kernel code or BPF, new
 * namespaces and mounts, changing identity, kernel keyrings, io_uring
 * (whose operations the filter would not see).  The call kills the whole
 * process (SIGSYS, logged by the supervisor, which starts a new worker).
 *
 * A deny list, not an allow list: a worker runs OpenSSL, libpq, libevent,
 * glibc's resolver and, in test builds, the sanitizers' runtimes, whose
 * system calls vary with versions; an allow list that missed one would
 * take the service down on a path no test took.  What is denied here is
 * what an intruder needs and the service never does.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <seccomp.h>

#include "sandbox.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANDBOX_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(SANDBOX_SANITIZED)
#define SANDBOX_SANITIZED 1
#endif

static const char *const denied[] = {
	/* new programs */
	"execve",
	"execveat",
/* other processes' memory and descriptors */
#ifndef SANDBOX_SANITIZED
	/* LeakSanitizer stops the world with ptrace at exit: sanitizer builds keep it. */
	"ptrace",
#endif
	"process_vm_readv",
	"process_vm_writev",
	"pidfd_getfd",
	"kcmp",
	/* kernel code, BPF, performance counters */
	"init_module",
	"finit_module",
	"delete_module",
	"kexec_load",
	"kexec_file_load",
	"bpf",
	"perf_event_open",
	/* namespaces, mounts, roots */
	"unshare",
	"setns",
	"mount",
	"umount2",
	"pivot_root",
	"chroot",
	"open_tree",
	"move_mount",
	"fsopen",
	"fsconfig",
	"fsmount",
	"fspick",
	"mount_setattr",
	/* identity: dropped before the filter, never changed again */
	"setuid",
	"setgid",
	"setreuid",
	"setregid",
	"setresuid",
	"setresgid",
	"setgroups",
	"setfsuid",
	"setfsgid",
	"capset",
	/* kernel keyrings, file handles, userfaultfd (a classic exploit aid), io_uring */
	"add_key",
	"request_key",
	"keyctl",
	"open_by_handle_at",
	"name_to_handle_at",
	"userfaultfd",
	"io_uring_setup",
	"io_uring_enter",
	"io_uring_register",
	/* the machine itself */
	"reboot",
	"swapon",
	"swapoff",
	"acct",
	"quotactl",
	"syslog",
	"settimeofday",
	"clock_settime",
	"clock_adjtime",
	"adjtimex",
	"iopl",
	"ioperm",
	"personality",
	"mknod",
	"mknodat",
	"uselib",
	"lookup_dcookie",
	"fanotify_init",
	"vhangup",
	"sethostname",
	"setdomainname",
};

int
svc_sandbox_worker(char *err, size_t errlen)
{
	scmp_filter_ctx f;
	size_t i;
	int rc;

	if ((f = seccomp_init(SCMP_ACT_ALLOW)) == NULL) {
		snprintf(err, errlen, "seccomp_init failed");
		return -1;
	}
	/* Every thread of the process, should a library have started one. */
	if ((rc = seccomp_attr_set(f, SCMP_FLTATR_CTL_TSYNC, 1)) != 0) {
		snprintf(err, errlen, "cannot ask for a filter on every thread: %s", strerror(-rc));
		seccomp_release(f);
		return -1;
	}
	for (i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
		int nr = seccomp_syscall_resolve_name(denied[i]);

		if (nr == __NR_SCMP_ERROR)
			continue; /* not a system call on this architecture */
		if ((rc = seccomp_rule_add(f, SCMP_ACT_KILL_PROCESS, nr, 0)) != 0) {
			snprintf(err, errlen, "cannot deny %s: %s", denied[i], strerror(-rc));
			seccomp_release(f);
			return -1;
		}
	}
	/* no_new_privs is set already (drop_privileges); the filter needs it when not root. */
	if ((rc = seccomp_load(f)) != 0) {
		snprintf(err, errlen,
			 "cannot load the seccomp filter: %s (does the kernel have CONFIG_SECCOMP_FILTER?)",
			 strerror(-rc));
		seccomp_release(f);
		return -1;
	}
	seccomp_release(f);
	return 0;
}
