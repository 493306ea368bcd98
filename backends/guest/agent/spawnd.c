/* Spawning as the entrypoint's uid without a privileged agent.
 *
 * The agent runs as uid 990 and cannot start a process as root (dev images) or
 * as another uid. On accessible images /init (root) also starts
 * `mvm-agent spawnd --socket /run/mvm/spawn.sock --uid ENTRYPOINT_UID
 * --peer-uid AGENT_UID`: a tiny root helper that does only one thing, start a
 * program as the image's entrypoint uid on file descriptors the agent hands it.
 * It never picks the uid from the request, only accepts connections from the
 * agent's uid (SO_PEERCRED, socket mode 0660 root:agent), and is not started on
 * sealed images at all.
 *
 * The agent's exec child becomes a *proxy* (spawn_proxy): it passes its stdin/
 * stdout/stderr (pipes or the PTY slave) with SCM_RIGHTS, forwards the signals
 * the agent sends its process group, and exits the way the real process exited,
 * so the agent's exec machinery (waitpid, exit frame, kill, close) is unchanged.
 *
 * Wire format on the unix stream socket (native endianness, same machine):
 *   proxy -> spawnd: spawn_hdr_t + SCM_RIGHTS{fd0,fd1,fd2}, then hdr.len bytes:
 *                    cwd\0 argv[0]\0 .. argv[argc-1]\0 env[0]\0 .. env[envc-1]\0
 *   spawnd -> proxy: rec_t {'S', pid} | {'E', errno}, later {'X', wait status}
 *   proxy -> spawnd: rec_t {'K', sig} (signal the process group); EOF = SIGKILL it
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MVM_AGENT_SEALED /* the sealed agent has no spawnd and no proxy */

extern char **environ;

#define SPAWN_MAGIC 0x6d766d73u /* "mvms" */
#define SPAWN_MAX_PAYLOAD (4u << 20)

typedef struct {
	uint32_t magic, flags, argc, envc, len;
} spawn_hdr_t;

typedef struct {
	int32_t type, val;
} rec_t;

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(int fd, void *p, size_t n)
{
	char *c = p;
	while (n) {
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

static int send_rec(int fd, int type, int val)
{
	rec_t r = {type, val};
	return write_all(fd, &r, sizeof r);
}

/* ---- proxy side (runs in the agent's forked exec child, as the agent's uid) ---- */

static int proxy_sock = -1;

static void proxy_forward(int sig)
{
	rec_t r = {'K', sig};
	ssize_t w = write(proxy_sock, &r, sizeof r); /* async-signal-safe */
	(void)w;
}

static void proxy_fail(int status_fd, int e)
{
	ssize_t w = write(status_fd, &e, sizeof e);
	(void)w;
	_exit(127);
}

/* The fork inherited every agent fd (session sockets, other streams' pipes); a
 * proxy that does not exec must drop them, or another stream never sees EOF. */
static void close_other_fds(int keep)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		for (int fd = 3; fd < 4096; fd++)
			if (fd != keep)
				close(fd);
		return;
	}
	int dfd = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (fd > 2 && fd != keep && fd != dfd)
			close(fd);
	}
	closedir(d);
}

void spawn_proxy(const char *sock_path, char **argv, char **env, const char *cwd, int flags,
		 int status_fd)
{
	close_other_fds(status_fd);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		proxy_fail(status_fd, errno);
	size_t argc = 0, envc = 0, len = strlen(cwd ? cwd : "") + 1;
	for (; argv[argc]; argc++)
		len += strlen(argv[argc]) + 1;
	for (; env[envc]; envc++)
		len += strlen(env[envc]) + 1;
	if (len > SPAWN_MAX_PAYLOAD)
		proxy_fail(status_fd, E2BIG);
	spawn_hdr_t h = {SPAWN_MAGIC, (uint32_t)flags, (uint32_t)argc, (uint32_t)envc,
			 (uint32_t)len};
	int fds[3] = {0, 1, 2};
	char cbuf[CMSG_SPACE(sizeof fds)];
	memset(cbuf, 0, sizeof cbuf);
	struct iovec iov = {.iov_base = &h, .iov_len = sizeof h};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof cbuf};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof fds);
	memcpy(CMSG_DATA(cm), fds, sizeof fds);
	if (sendmsg(fd, &mh, MSG_NOSIGNAL) != (ssize_t)sizeof h)
		proxy_fail(status_fd, errno ? errno : EPROTO);
	const char *c = cwd ? cwd : "";
	if (write_all(fd, c, strlen(c) + 1))
		proxy_fail(status_fd, EPIPE);
	for (size_t i = 0; i < argc; i++)
		if (write_all(fd, argv[i], strlen(argv[i]) + 1))
			proxy_fail(status_fd, EPIPE);
	for (size_t i = 0; i < envc; i++)
		if (write_all(fd, env[i], strlen(env[i]) + 1))
			proxy_fail(status_fd, EPIPE);
	/* The real process holds the streams now: only it may keep them open. */
	int null = open("/dev/null", O_RDWR);
	for (int i = 0; i < 3; i++)
		dup2(null, i);
	if (null > 2)
		close(null);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	rec_t r;
	if (read_all(fd, &r, sizeof r))
		proxy_fail(status_fd, errno == EAGAIN ? ETIMEDOUT : EPROTO);
	if (r.type != 'S')
		proxy_fail(status_fd, r.type == 'E' && r.val > 0 ? r.val : EPROTO);
	close(status_fd); /* success: the agent's read sees EOF */
	tv.tv_sec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	proxy_sock = fd;
	static const int fwd[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM,
				  SIGCONT, SIGWINCH};
	struct sigaction act = {.sa_handler = proxy_forward, .sa_flags = SA_RESTART};
	sigemptyset(&act.sa_mask);
	for (size_t i = 0; i < sizeof fwd / sizeof fwd[0]; i++)
		sigaction(fwd[i], &act, NULL);
	for (;;) {
		if (read_all(fd, &r, sizeof r))
			_exit(128 + SIGKILL); /* spawnd went away: nothing to report */
		if (r.type != 'X')
			continue;
		if (WIFEXITED(r.val))
			_exit(WEXITSTATUS(r.val));
		int sig = WIFSIGNALED(r.val) ? WTERMSIG(r.val) : SIGKILL;
		signal(sig, SIG_DFL);
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, sig);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		prctl(PR_SET_DUMPABLE, 0); /* no core file for a relayed SIGSEGV */
		kill(getpid(), sig);
		_exit(128 + sig);
	}
}

/* ---- spawnd (root) ---- */

static unsigned target_uid;
static const char *target_seccomp = "unrestricted"; /* the image's tier, from /init */

static void set_env(char ***envp, size_t *n, const char *key, const char *val)
{
	size_t kl = strlen(key);
	char *kv = malloc(kl + strlen(val) + 2);
	if (!kv)
		_exit(70);
	sprintf(kv, "%s=%s", key, val);
	for (size_t i = 0; i < *n; i++)
		if (!strncmp((*envp)[i], key, kl) && (*envp)[i][kl] == '=') {
			(*envp)[i] = kv;
			return;
		}
	(*envp)[(*n)++] = kv;
	(*envp)[*n] = NULL;
}

static void child_exec(char **argv, char **env, size_t envc, const char *cwd, unsigned flags,
		       int status_fd)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	/* /init starts us as a background job, which ignores SIGINT/SIGQUIT: a
	 * command must get the defaults back, or ^C and `kill -INT` do nothing. */
	signal(SIGINT, SIG_DFL);
	signal(SIGQUIT, SIG_DFL);
	setsid();
	if (flags & SPAWN_PTY)
		ioctl(0, TIOCSCTTY, 1);
	int root = target_uid == 0;
	const char *home = root ? "/root" : "/home/app";
	set_env(&env, &envc, "HOME", home);
	set_env(&env, &envc, "USER", root ? "root" : "app");
	set_env(&env, &envc, "LOGNAME", root ? "root" : "app");
	int e = 0;
	if (cwd[0] ? chdir(cwd) != 0 : ((flags & SPAWN_CONSOLE) ? chdir(home) && chdir("/") : chdir("/")))
		e = errno;
	/* setpriv --reuid=N --regid=N --clear-groups --no-new-privs (as /init does). */
	if (!e && getuid() == 0 && setgroups(0, NULL) != 0)
		e = errno;
	if (!e && (setresgid(target_uid, target_uid, target_uid) != 0 ||
		   setresuid(target_uid, target_uid, target_uid) != 0))
		e = errno;
	if (!e && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		e = errno;
	if (!e && seccomp_apply(target_seccomp) != 0)
		e = errno;
	if (!e) {
		environ = env;
		execvp(argv[0], argv);
		e = errno;
	}
	ssize_t w = write(status_fd, &e, sizeof e);
	(void)w;
	_exit(127);
}

static int recv_request(int conn, spawn_hdr_t *h, int fds[3])
{
	char cbuf[CMSG_SPACE(3 * sizeof(int))];
	struct iovec iov = {.iov_base = h, .iov_len = sizeof *h};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof cbuf};
	ssize_t r = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (r != (ssize_t)sizeof *h || !cm || cm->cmsg_type != SCM_RIGHTS ||
	    cm->cmsg_len != CMSG_LEN(3 * sizeof(int)) || h->magic != SPAWN_MAGIC ||
	    h->len > SPAWN_MAX_PAYLOAD || h->argc == 0 || h->argc + h->envc > h->len)
		return -1;
	memcpy(fds, CMSG_DATA(cm), 3 * sizeof(int));
	return 0;
}

/* One connection = one process: spawn it, relay signals, report its wait status. */
static void serve_conn(int conn)
{
	spawn_hdr_t h;
	int fds[3];
	if (recv_request(conn, &h, fds))
		_exit(1);
	char *payload = malloc(h.len);
	char **argv = calloc(h.argc + 1, sizeof *argv);
	char **env = calloc(h.envc + 4, sizeof *env);
	if (!payload || !argv || !env || read_all(conn, payload, h.len) || payload[h.len - 1])
		_exit(1);
	char *p = payload, *end = payload + h.len;
	const char *cwd = p;
	p += strlen(p) + 1;
	for (uint32_t i = 0; i < h.argc; i++, p += strlen(p) + 1)
		if (p >= end)
			_exit(1);
		else
			argv[i] = p;
	for (uint32_t i = 0; i < h.envc; i++, p += strlen(p) + 1)
		if (p >= end)
			_exit(1);
		else
			env[i] = p;
	int status[2];
	if (pipe2(status, O_CLOEXEC) != 0)
		_exit(1);
	pid_t pid = fork();
	if (pid == 0) {
		close(conn);
		for (int i = 0; i < 3; i++)
			if (dup2(fds[i], i) < 0)
				_exit(127);
		child_exec(argv, env, h.envc, cwd, h.flags, status[1]);
	}
	close(status[1]);
	for (int i = 0; i < 3; i++)
		close(fds[i]);
	int e = pid < 0 ? errno : 0;
	if (pid > 0 && read_all(status[0], &e, sizeof e))
		e = 0;
	close(status[0]);
	if (e) {
		send_rec(conn, 'E', e);
		if (pid > 0)
			waitpid(pid, NULL, 0);
		_exit(0);
	}
	send_rec(conn, 'S', (int)pid);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	int conn_open = 1;
	for (;;) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			send_rec(conn, 'X', st);
			_exit(0);
		}
		struct pollfd pf[2] = {{.fd = conn_open ? conn : -1, .events = POLLIN},
				       {.fd = pidfd, .events = POLLIN}};
		if (poll(pf, 2, pidfd >= 0 ? -1 : 50) < 0 && errno != EINTR)
			_exit(1);
		if (pf[0].revents) {
			rec_t r;
			if (read_all(conn, &r, sizeof r)) {
				conn_open = 0; /* the proxy died (SIGKILL, agent gone): so does the process */
				if (kill(-pid, SIGKILL) != 0)
					kill(pid, SIGKILL);
			} else if (r.type == 'K' && r.val > 0 && r.val < 65) {
				if (kill(-pid, r.val) != 0)
					kill(pid, r.val);
			}
		}
	}
}

int spawnd_main(int argc, char **argv)
{
	const char *path = NULL;
	unsigned peer = (unsigned)-1;
	int have_uid = 0;
	for (int i = 1; i + 1 < argc; i += 2) {
		char *endp;
		unsigned long v = strtoul(argv[i + 1], &endp, 10);
		if (!strcmp(argv[i], "--socket"))
			path = argv[i + 1];
		else if (!strcmp(argv[i], "--uid") && !*endp && v < 0xFFFFFFFFul)
			target_uid = (unsigned)v, have_uid = 1;
		else if (!strcmp(argv[i], "--peer-uid") && !*endp && v < 0xFFFFFFFFul)
			peer = (unsigned)v;
		else if (!strcmp(argv[i], "--seccomp") && seccomp_tier_valid(argv[i + 1]))
			target_seccomp = argv[i + 1];
		else
			path = NULL, i = argc;
	}
	if (!path || !have_uid || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		fprintf(stderr, "usage: mvm-agent spawnd --socket PATH --uid U [--peer-uid A] [--seccomp TIER]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = SIG_DFL, .sa_flags = SA_NOCLDWAIT};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL); /* connection handlers reap themselves */
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
	unlink(path);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&un, sizeof un) || listen(lfd, 16)) {
		agent_log("spawnd: %s: %s", path, strerror(errno));
		return 1;
	}
	if (peer != (unsigned)-1 && (chown(path, 0, peer) != 0 || chmod(path, 0660) != 0))
		agent_log("spawnd: cannot restrict %s: %s", path, strerror(errno));
	agent_log("spawnd: serving %s, processes run as uid %u (seccomp %s)", path, target_uid,
		  target_seccomp);
	for (;;) {
		int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0) {
			if (errno != EINTR)
				usleep(10000);
			continue;
		}
		struct ucred cr;
		socklen_t cl = sizeof cr;
		if (peer != (unsigned)-1 &&
		    (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.uid != peer)) {
			agent_log("spawnd: refusing a connection from uid %u", (unsigned)cr.uid);
			close(conn);
			continue;
		}
		pid_t h = fork();
		if (h == 0) {
			struct sigaction dfl = {.sa_handler = SIG_DFL};
			sigemptyset(&dfl.sa_mask);
			sigaction(SIGCHLD, &dfl, NULL); /* this handler waits for its process */
			close(lfd);
			serve_conn(conn);
		}
		close(conn);
	}
}
#endif
