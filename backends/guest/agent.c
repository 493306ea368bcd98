/* mvm-agent: the guest side of the mvm agent protocol (see PROTOCOL.md).
 *
 * One static binary, one thread, one poll() loop. It serves any number of host
 * sessions over TCP (tests, and the engine's fake VMM), AF_VSOCK, or a
 * virtio-serial port, where the host (QEMU's chardev socket) connects and
 * disconnects without the guest fd ever closing: the agent watches POLLHUP,
 * greets each new host and drops everything the previous one left running.
 *
 * `mvm-agent setpriv --reuid=U --regid=G --clear-groups --no-new-privs PROG..`
 * is a drop-in for util-linux setpriv, which busybox lacks; /init uses it.
 * Its `--seccomp=TIER` (not util-linux's) installs the image's syscall filter
 * (agent/seccomp.c) last, right before exec.
 */
#define _GNU_SOURCE
#include "agent/agent.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
/* <linux/vm_sockets.h> is not part of musl's headers. */
struct sockaddr_vm_compat {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};
#define VMADDR_CID_ANY_COMPAT 0xFFFFFFFFu

#define SERIAL_HUP_POLL_MS 20
#define SERIAL_REOPEN_MS 200
#define MAX_LISTENERS 4
#define OUT_LIMIT (64u << 20)

config_t g_cfg = {
	.health_dir = "/etc/mvm/health",
	.log_dir = "/var/log/mvm",
	.ctl = "/run/mvm/ctl",
	.wrapper = "/etc/mvm/wrapper.json",
	.console_shell = "/bin/sh",
	.run_dir = "/run/mvm",
};
int g_more_work;

static int listeners[MAX_LISTENERS];
static int nlisteners;
static int sigpipe_fds[2] = {-1, -1};
static const char *serial_spec; /* a /dev path, or a virtio-serial port name */
static session_t *serial_session;
static int64_t serial_next_open;

static void usage(void)
{
	fprintf(stderr,
		"usage: mvm-agent [--serial DEV|NAME] [--vsock PORT] [--tcp-listen HOST:PORT]\n"
		"                 [--sealed] [--health-dir DIR] [--log-dir DIR] [--ctl FIFO]\n"
		"                 [--wrapper FILE] [--spawn SOCKET] [--console-shell PROG]\n"
		"                 [--run-dir DIR]\n"
#ifndef MVM_AGENT_SEALED
		"       mvm-agent spawnd --socket PATH --uid U [--peer-uid A] [--seccomp TIER]\n"
#endif
		"       mvm-agent setpriv [--reuid=U] [--regid=G] [--clear-groups|--groups=G] [--no-new-privs] "
		"[--seccomp=TIER] PROG [ARGS..]\n");
	exit(2);
}

/* ---- setpriv ---- */

static int parse_id(const char *s, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > 0xFFFFFFFEul)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* /init starts every workload from a background job of a non-interactive ash,
 * which sets SIGINT and SIGQUIT to SIG_IGN for good (a trap cannot undo it), and
 * an ignored disposition survives execve. Everything /init runs goes through
 * setpriv, so this is where the program gets the defaults back: otherwise
 * `kill -INT` and ^C do nothing to services, the entrypoint and the agent's
 * children. The signal mask is cleared for the same reason. */
static void reset_signals(void)
{
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			signal(sig, SIG_DFL); /* fails harmlessly for the libc-reserved ones */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

static int setpriv_main(int argc, char **argv)
{
	unsigned uid = 0, gid = 0, group = 0;
	int set_uid = 0, set_gid = 0, clear = 0, set_group = 0, nnp = 0, i = 1;
	const char *tier = "unrestricted";
	for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--")) {
			i++;
			break;
		} else if (!strncmp(a, "--reuid=", 8) && !parse_id(a + 8, &uid)) {
			set_uid = 1;
		} else if (!strncmp(a, "--regid=", 8) && !parse_id(a + 8, &gid)) {
			set_gid = 1;
		} else if (!strcmp(a, "--clear-groups")) {
			clear = 1;
		} else if (!strncmp(a, "--groups=", 9) && !parse_id(a + 9, &group)) {
			set_group = 1; /* exactly this one supplementary group */
		} else if (!strcmp(a, "--no-new-privs") || !strcmp(a, "--nnp")) {
			nnp = 1;
		} else if (!strncmp(a, "--seccomp=", 10) && seccomp_tier_valid(a + 10)) {
			tier = a + 10;
		} else {
			fprintf(stderr, "mvm-agent setpriv: bad option %s\n", a);
			return 2;
		}
	}
	if (i >= argc)
		usage();
	if (set_group) {
		gid_t g = (gid_t)group;
		if (setgroups(1, &g) != 0) {
			perror("mvm-agent setpriv: setgroups");
			return 126;
		}
	} else if (clear && setgroups(0, NULL) != 0) {
		perror("mvm-agent setpriv: setgroups");
		return 126;
	}
	if (set_gid && setresgid(gid, gid, gid) != 0) {
		perror("mvm-agent setpriv: setresgid");
		return 126;
	}
	if (set_uid && setresuid(uid, uid, uid) != 0) {
		perror("mvm-agent setpriv: setresuid");
		return 126;
	}
	if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		perror("mvm-agent setpriv: no_new_privs");
		return 126;
	}
	reset_signals();
	/* Last: the filter applies to this exec and everything after it. */
	if (seccomp_apply(tier) != 0) {
		perror("mvm-agent setpriv: seccomp");
		return 126;
	}
	execvp(argv[i], argv + i);
	fprintf(stderr, "mvm-agent setpriv: %s: %s\n", argv[i], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}

/* ---- transports ---- */

static void add_listener(int fd)
{
	if (nlisteners >= MAX_LISTENERS) {
		agent_log("too many listeners");
		exit(2);
	}
	listeners[nlisteners++] = fd;
}

static void listen_tcp(const char *spec)
{
	const char *colon = strrchr(spec, ':');
	if (!colon) {
		agent_log("--tcp-listen wants HOST:PORT, got %s", spec);
		exit(2);
	}
	char host[64];
	size_t hl = (size_t)(colon - spec);
	if (hl >= sizeof host)
		exit(2);
	memcpy(host, spec, hl);
	host[hl] = '\0';
	unsigned port;
	struct sockaddr_in sa = {.sin_family = AF_INET};
	if (parse_id(colon + 1, &port) || port > 65535 ||
	    inet_pton(AF_INET, hl ? host : "0.0.0.0", &sa.sin_addr) != 1) {
		agent_log("--tcp-listen: bad address %s", spec);
		exit(2);
	}
	sa.sin_port = htons((uint16_t)port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 128)) {
		agent_log("tcp listen %s: %s", spec, strerror(errno));
		exit(1);
	}
	add_listener(fd);
	agent_log("listening on tcp %s", spec);
}

static void listen_vsock(const char *spec)
{
	unsigned port;
	if (parse_id(spec, &port)) {
		agent_log("--vsock wants a port number, got %s", spec);
		exit(2);
	}
	struct sockaddr_vm_compat sa = {.svm_family = AF_VSOCK, .svm_port = port,
					.svm_cid = VMADDR_CID_ANY_COMPAT};
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 128)) {
		agent_log("vsock listen %u: %s", port, strerror(errno));
		exit(1);
	}
	add_listener(fd);
	agent_log("listening on vsock port %u", port);
}

/* A virtio-serial port by name: /sys/class/virtio-ports/vportNpM/name -> /dev/vportNpM. */
static int find_port(const char *name, char *out, size_t outlen)
{
	DIR *dir = opendir("/sys/class/virtio-ports");
	if (!dir)
		return -1;
	struct dirent *e;
	int found = -1;
	while ((e = readdir(dir))) {
		if (e->d_name[0] == '.')
			continue;
		char path[512];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		char *n = read_small_file(path, 256);
		if (!n)
			continue;
		strip_trailing_ws(n);
		if (!strcmp(n, name)) {
			snprintf(out, outlen, "/dev/%s", e->d_name);
			found = 0;
		}
		free(n);
		if (!found)
			break;
	}
	closedir(dir);
	return found;
}

static void open_serial(int64_t now)
{
	if (serial_session || now < serial_next_open)
		return;
	serial_next_open = now + SERIAL_REOPEN_MS;
	char path[512];
	if (serial_spec[0] == '/')
		snprintf(path, sizeof path, "%s", serial_spec);
	else if (find_port(serial_spec, path, sizeof path))
		return;
	int fd = open(path, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		static int warned;
		if (!warned++)
			agent_log("open %s: %s (retrying)", path, strerror(errno));
		return;
	}
	serial_session = session_new(fd, 1);
	agent_log("serving on %s", path);
}

/* virtio-serial: POLLHUP means no host on the other side. Greet on the edge up. */
static void serial_check(void)
{
	session_t *s = serial_session;
	if (!s)
		return;
	struct pollfd p = {.fd = s->fd, .events = POLLIN};
	if (poll(&p, 1, 0) < 0)
		return;
	int connected = !(p.revents & POLLHUP);
	if (connected && !s->up) {
		session_reset(s);
		session_greet(s);
	} else if (!connected && s->up) {
		agent_log("host disconnected from the serial port");
		session_reset(s);
	}
}

static void on_accept(int lfd)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		session_greet(session_new(fd, 0));
	}
}

/* ---- children ---- */

static void on_sigchld(int sig)
{
	(void)sig;
	int e = errno;
	ssize_t w = write(sigpipe_fds[1], "c", 1);
	(void)w;
	errno = e;
}

static void reap(void)
{
	char tmp[64];
	while (read(sigpipe_fds[0], tmp, sizeof tmp) > 0) {
	}
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (health_on_child_exit(pid, status))
			continue;
		for (session_t *s = g_sessions; s; s = s->next)
			for (stream_t *st = s->streams; st; st = st->next)
				if (st->kind == ST_EXEC && st->pid == pid && !st->exited)
					exec_on_child_exit(st, status);
	}
}

/* ---- the loop ---- */

typedef enum { H_LISTEN, H_SIGNAL, H_SESSION, H_EXEC_OUT, H_EXEC_ERR, H_EXEC_IN, H_CONN } htype_t;
typedef struct {
	htype_t type;
	void *obj;
	int fd;
} handler_t;

static struct pollfd *pfds;
static handler_t *hands;
static size_t npfd, cap_pfd;

static void watch(int fd, short events, htype_t type, void *obj)
{
	if (fd < 0 || !events)
		return;
	if (npfd == cap_pfd) {
		cap_pfd = cap_pfd ? cap_pfd * 2 : 64;
		pfds = realloc(pfds, cap_pfd * sizeof *pfds);
		hands = realloc(hands, cap_pfd * sizeof *hands);
		if (!pfds || !hands)
			_exit(70);
	}
	pfds[npfd] = (struct pollfd){.fd = fd, .events = events};
	hands[npfd] = (handler_t){.type = type, .obj = obj, .fd = fd};
	npfd++;
}

static void build_watches(void)
{
	npfd = 0;
	watch(sigpipe_fds[0], POLLIN, H_SIGNAL, NULL);
	for (int i = 0; i < nlisteners; i++)
		watch(listeners[i], POLLIN, H_LISTEN, NULL);
	for (session_t *s = g_sessions; s; s = s->next) {
		if (s->dead || !s->up)
			continue; /* a serial port with no host is polled by serial_check */
		short ev = POLLIN;
		if (buf_avail(&s->out))
			ev |= POLLOUT;
		watch(s->fd, ev, H_SESSION, s);
		for (stream_t *st = s->streams; st; st = st->next) {
			if (st->dead)
				continue;
			if (st->kind == ST_EXEC) {
				short rd = exec_wants_read(st) ? POLLIN : 0;
				watch(st->fd_out, rd, H_EXEC_OUT, st);
				watch(st->fd_err, rd, H_EXEC_ERR, st);
				if (buf_avail(&st->in) || st->in_eof)
					watch(st->fd_in, POLLOUT, H_EXEC_IN, st);
			} else if (st->kind == ST_CONN) {
				short ev2 = conn_wants_read(st) ? POLLIN : 0;
				if (st->connecting || buf_avail(&st->in) || (st->in_eof && !st->wr_shut))
					ev2 |= POLLOUT;
				watch(st->sock, ev2, H_CONN, st);
			}
		}
	}
}

static void dispatch_events(void)
{
	for (size_t i = 0; i < npfd; i++) {
		short re = pfds[i].revents;
		if (!re)
			continue;
		handler_t *h = &hands[i];
		switch (h->type) {
		case H_SIGNAL:
			reap();
			break;
		case H_LISTEN:
			on_accept(h->fd);
			break;
		case H_SESSION: {
			session_t *s = h->obj;
			if (s->dead || s->lost || s->fd != h->fd || !s->up)
				break;
			if (re & POLLOUT)
				session_on_writable(s);
			if (re & (POLLIN | POLLHUP | POLLERR))
				session_on_readable(s);
			if (s->serial && (re & POLLHUP))
				s->lost = 1;
			break;
		}
		case H_EXEC_OUT:
		case H_EXEC_ERR: {
			stream_t *st = h->obj;
			int fd = h->type == H_EXEC_OUT ? st->fd_out : st->fd_err;
			if (!st->dead && fd == h->fd)
				exec_on_readable(st, h->type == H_EXEC_OUT ? 1 : 2);
			break;
		}
		case H_EXEC_IN: {
			stream_t *st = h->obj;
			if (!st->dead && st->fd_in == h->fd)
				exec_on_writable(st);
			break;
		}
		case H_CONN: {
			stream_t *st = h->obj;
			if (st->dead || st->sock != h->fd)
				break;
			if (re & (POLLOUT | POLLERR | POLLHUP))
				conn_on_writable(st);
			if (!st->dead && (re & (POLLIN | POLLHUP | POLLERR)))
				conn_on_readable(st);
			break;
		}
		}
	}
}

static void sweep(int64_t now)
{
	g_more_work = 0;
	for (session_t **sp = &g_sessions; *sp;) {
		session_t *s = *sp;
		if (s->lost && s->serial) {
			agent_log("serial transport lost its host");
			session_reset(s);
			s->lost = 0;
		}
		if (s->lost)
			s->dead = 1;
		if (buf_avail(&s->out) > OUT_LIMIT) { /* a host that sends but never reads */
			agent_log("closing session: %zu bytes unread by the host", buf_avail(&s->out));
			s->dead = 1;
		}
		if (s->dead) {
			*sp = s->next;
			if (s == serial_session)
				serial_session = NULL;
			session_free(s);
			continue;
		}
		for (stream_t **tp = &s->streams; *tp;) {
			stream_t *st = *tp;
			if (!st->dead && st->kind == ST_EXEC)
				exec_tick(st, now);
			if (!st->dead && st->kind == ST_LOGS)
				logs_pump(st, now);
			if (st->dead) {
				*tp = st->next;
				stream_free(st);
			} else {
				tp = &st->next;
			}
		}
		/* Output that was throttled by a full session queue may resume now. */
		if (buf_avail(&s->out) && s->up)
			session_on_writable(s);
		sp = &s->next;
	}
}

static int poll_timeout(int64_t now)
{
	if (g_more_work)
		return 0;
	int64_t t = health_next_deadline() - now;
	if (t > 1000)
		t = 1000;
	if (serial_spec && t > (serial_session ? SERIAL_HUP_POLL_MS : SERIAL_REOPEN_MS))
		t = serial_session ? SERIAL_HUP_POLL_MS : SERIAL_REOPEN_MS;
	for (session_t *s = g_sessions; s; s = s->next)
		for (stream_t *st = s->streams; st; st = st->next) {
			if (st->kind == ST_LOGS && t > 100)
				t = 100;
			if (st->kind == ST_EXEC && st->exited && t > 50)
				t = 50;
		}
	return t < 0 ? 0 : (int)t;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "setpriv"))
		return setpriv_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "reseed")) /* identity.c */
		return reseed_main(argc - 1, argv + 1);
#ifndef MVM_AGENT_SEALED
	if (argc > 1 && !strcmp(argv[1], "spawnd")) /* spawnd.c, root: started by /init */
		return spawnd_main(argc - 1, argv + 1);
#else
	g_cfg.sealed = 1; /* the sealed build is sealed whatever /init passes */
#endif
	const char *tcp = NULL, *vsock = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--sealed")) {
			g_cfg.sealed = 1;
			continue;
		}
		if (!v)
			usage();
		if (!strcmp(a, "--serial"))
			serial_spec = v;
		else if (!strcmp(a, "--vsock"))
			vsock = v;
		else if (!strcmp(a, "--tcp-listen"))
			tcp = v;
		else if (!strcmp(a, "--health-dir"))
			g_cfg.health_dir = v;
		else if (!strcmp(a, "--log-dir"))
			g_cfg.log_dir = v;
		else if (!strcmp(a, "--ctl"))
			g_cfg.ctl = v;
		else if (!strcmp(a, "--wrapper"))
			g_cfg.wrapper = v;
		else if (!strcmp(a, "--spawn"))
			g_cfg.spawn = v;
		else if (!strcmp(a, "--console-shell"))
			g_cfg.console_shell = v;
		else if (!strcmp(a, "--run-dir"))
			g_cfg.run_dir = v;
		else
			usage();
		i++;
	}
	if (!serial_spec && !vsock && !tcp) { /* the guest default */
		char path[512];
		if (find_port("mvm.agent", path, sizeof path) == 0)
			serial_spec = "mvm.agent";
		else
			vsock = "5252";
	}

	signal(SIGPIPE, SIG_IGN);
	if (pipe2(sigpipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
		agent_log("pipe: %s", strerror(errno));
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);

	if (tcp)
		listen_tcp(tcp);
	if (vsock)
		listen_vsock(vsock);
	health_init();
	agent_log("%s ready (pid %d, %s)", AGENT_VERSION, (int)getpid(),
		  g_cfg.sealed ? "sealed" : "accessible");

	for (;;) {
		int64_t now = now_ms();
		if (serial_spec)
			open_serial(now);
		serial_check();
		health_tick(now);
		build_watches();
		int n = poll(pfds, npfd, poll_timeout(now));
		if (n < 0 && errno != EINTR) {
			agent_log("poll: %s", strerror(errno));
			return 1;
		}
		if (n > 0)
			dispatch_events();
		reap(); /* cheap, and covers a signal that raced the pipe */
		sweep(now_ms());
	}
}
