/* Seccomp tiers: the classic-BPF syscall filter `setpriv --seccomp=TIER` (and
 * spawnd, for exec'd processes) installs right before exec.
 *
 * No libseccomp (the agent is one static binary with musl): the program is built
 * here from a table. Every tier kills a process calling with a foreign
 * architecture (an x86_64 process could otherwise reach the i386 or x32 tables,
 * whose numbers the table below does not describe) and answers the listed
 * syscalls with EPERM, so a workload sees an ordinary "operation not permitted"
 * rather than a SIGSYS. This table is THE list; PROTOCOL.md ("Seccomp tiers")
 * describes it for people.
 *
 *   unrestricted  no filter
 *   standard      what a workload never needs and what kernel escapes use:
 *                 kexec, kernel modules, mounts and the new mount API, swap,
 *                 reboot, bpf, perf events, the kernel keyring, userfaultfd,
 *                 open_by_handle_at, port I/O, acct, quotas, the clock, syslog,
 *                 host/domain name, lookup_dcookie, uselib, vhangup, nfsservctl
 *   strict        standard + ptrace, process_vm_readv/writev, unshare, setns,
 *                 clone() with namespace flags (clone3 answers ENOSYS: its flags
 *                 live in memory a filter cannot read; libcs fall back to clone),
 *                 personality, chroot, io_uring, name_to_handle_at
 *
 * The filter is inherited by every child and cannot be removed; no_new_privs
 * (which setpriv sets first) lets an unprivileged process install it.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* <linux/filter.h>, <linux/seccomp.h> and <linux/audit.h> are not musl's: the
 * few ABI constants they define. */
struct bpf_insn_compat {
	uint16_t code;
	uint8_t jt, jf;
	uint32_t k;
};
struct bpf_prog_compat {
	unsigned short len;
	struct bpf_insn_compat *filter;
};
#define LD_ABS 0x20u  /* BPF_LD | BPF_W | BPF_ABS */
#define JEQ_K 0x15u   /* BPF_JMP | BPF_JEQ | BPF_K */
#define JGE_K 0x35u   /* BPF_JMP | BPF_JGE | BPF_K */
#define JSET_K 0x45u  /* BPF_JMP | BPF_JSET | BPF_K */
#define RET_K 0x06u   /* BPF_RET | BPF_K */
#define RET_KILL_PROCESS 0x80000000u
#define RET_ERRNO 0x00050000u
#define RET_ALLOW 0x7fff0000u
#define OFF_NR 0u    /* offsetof(struct seccomp_data, nr) */
#define OFF_ARCH 4u  /* offsetof(struct seccomp_data, arch) */
#define OFF_ARG0 16u /* args[0], its low 32 bits on little-endian machines */
#ifndef PR_SET_SECCOMP
#define PR_SET_SECCOMP 22
#endif
#define MODE_FILTER 2

#if defined(__x86_64__)
#define MVM_AUDIT_ARCH 0xC000003Eu
#define X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define MVM_AUDIT_ARCH 0xC00000B7u
#else
#error "seccomp.c: unsupported architecture (add its AUDIT_ARCH)"
#endif

/* Syscalls newer than some libc headers: one number on every architecture. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_fspick
#define SYS_fspick 433
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
#ifndef SYS_io_uring_enter
#define SYS_io_uring_enter 426
#endif
#ifndef SYS_io_uring_register
#define SYS_io_uring_register 427
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

/* standard: denied with EPERM (the ones an architecture lacks are left out). */
static const int standard_deny[] = {
	SYS_kexec_load,
#ifdef SYS_kexec_file_load
	SYS_kexec_file_load,
#endif
	SYS_init_module, SYS_finit_module, SYS_delete_module,
#ifdef SYS_create_module
	SYS_create_module,
#endif
	SYS_mount, SYS_umount2, SYS_pivot_root, SYS_open_tree, SYS_move_mount, SYS_fsopen,
	SYS_fsconfig, SYS_fsmount, SYS_fspick, SYS_mount_setattr,
	SYS_swapon, SYS_swapoff, SYS_reboot, SYS_bpf, SYS_perf_event_open,
	SYS_keyctl, SYS_add_key, SYS_request_key, SYS_userfaultfd, SYS_open_by_handle_at,
#ifdef SYS_iopl
	SYS_iopl,
#endif
#ifdef SYS_ioperm
	SYS_ioperm,
#endif
	SYS_acct, SYS_quotactl, SYS_quotactl_fd,
	SYS_settimeofday, SYS_clock_settime, SYS_adjtimex, SYS_clock_adjtime,
	SYS_syslog, SYS_sethostname, SYS_setdomainname, SYS_lookup_dcookie, SYS_vhangup,
#ifdef SYS_uselib
	SYS_uselib,
#endif
#ifdef SYS_nfsservctl
	SYS_nfsservctl,
#endif
#ifdef SYS__sysctl
	SYS__sysctl,
#endif
};

/* strict: standard's list plus these. */
static const int strict_deny[] = {
	SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_unshare, SYS_setns,
	SYS_personality, SYS_chroot, SYS_io_uring_setup, SYS_io_uring_enter,
	SYS_io_uring_register, SYS_name_to_handle_at,
};

/* CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET (clone() has no NEWTIME) */
#define CLONE_NS_FLAGS (0x00020000u | 0x02000000u | 0x04000000u | 0x08000000u | \
			0x10000000u | 0x20000000u | 0x40000000u)

#define NDENY(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_INSNS (16 + NDENY(standard_deny) + NDENY(strict_deny))

int seccomp_tier_valid(const char *tier)
{
	return !strcmp(tier, "unrestricted") || !strcmp(tier, "standard") ||
	       !strcmp(tier, "strict");
}

static struct bpf_insn_compat insn(uint16_t code, uint8_t jt, uint8_t jf, uint32_t k)
{
	struct bpf_insn_compat i = {code, jt, jf, k};
	return i;
}

int seccomp_apply(const char *tier)
{
	if (!seccomp_tier_valid(tier)) {
		errno = EINVAL;
		return -1;
	}
	if (!strcmp(tier, "unrestricted"))
		return 0;
	int strict = !strcmp(tier, "strict");
	static struct bpf_insn_compat p[MAX_INSNS];
	size_t n = 0;
	/* Layout: arch check, [x32 check], one JEQ per denied nr jumping to the
	 * EPERM return, [clone / clone3 checks], ALLOW, EPERM, KILL. */
	size_t ndeny = NDENY(standard_deny) + (strict ? NDENY(strict_deny) : 0);
	p[n++] = insn(LD_ABS, 0, 0, OFF_ARCH);
	size_t arch_at = n;
	p[n++] = insn(JEQ_K, 0, 0, MVM_AUDIT_ARCH); /* jf patched to KILL below */
	p[n++] = insn(LD_ABS, 0, 0, OFF_NR);
#ifdef X32_BIT
	size_t x32_at = n;
	p[n++] = insn(JGE_K, 0, 0, X32_BIT); /* jt patched to KILL */
#endif
	size_t deny_at = n;
	for (size_t i = 0; i < ndeny; i++) {
		int nr = i < NDENY(standard_deny) ? standard_deny[i]
						   : strict_deny[i - NDENY(standard_deny)];
		p[n++] = insn(JEQ_K, 0, 0, (uint32_t)nr); /* jt patched to EPERM */
	}
	size_t enosys_at = 0, clone_at = 0;
	if (strict) {
		enosys_at = n;
		p[n++] = insn(JEQ_K, 0, 1, SYS_clone3); /* -> ENOSYS return */
		p[n++] = insn(RET_K, 0, 0, RET_ERRNO | ENOSYS);
		clone_at = n;
		p[n++] = insn(JEQ_K, 0, 2, SYS_clone); /* not clone: -> ALLOW */
		p[n++] = insn(LD_ABS, 0, 0, OFF_ARG0);
		p[n++] = insn(JSET_K, 0, 0, CLONE_NS_FLAGS); /* jt patched to EPERM */
	}
	size_t allow_at = n;
	p[n++] = insn(RET_K, 0, 0, RET_ALLOW);
	size_t eperm_at = n;
	p[n++] = insn(RET_K, 0, 0, RET_ERRNO | EPERM);
	size_t kill_at = n;
	p[n++] = insn(RET_K, 0, 0, RET_KILL_PROCESS);
	p[arch_at].jf = (uint8_t)(kill_at - arch_at - 1);
#ifdef X32_BIT
	p[x32_at].jt = (uint8_t)(kill_at - x32_at - 1);
#endif
	for (size_t i = deny_at; i < deny_at + ndeny; i++)
		p[i].jt = (uint8_t)(eperm_at - i - 1);
	if (strict)
		p[clone_at + 2].jt = (uint8_t)(eperm_at - clone_at - 3);
	(void)enosys_at;
	(void)allow_at;
	if (kill_at >= 255) { /* every jump offset must fit the 8-bit jt/jf */
		errno = E2BIG;
		return -1;
	}
	struct bpf_prog_compat prog = {(unsigned short)n, p};
	return prctl(PR_SET_SECCOMP, MODE_FILTER, &prog, 0, 0);
}
