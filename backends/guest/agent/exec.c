/* `exec`: a child process whose stdout/stderr (or PTY) stream to the host
 * under the ack window, with stdin streamed back. The `exit` frame is sent only
 * after both output pipes reached EOF, so it always follows all output. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#ifndef MVM_AGENT_SEALED
#include <pty.h>
#endif
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

extern char **environ;

#define MAX_ARGS 4096
/* After the process exits, how long a grandchild may keep its pipes open
 * before we stop waiting for EOF and report the exit anyway. */
#define EXIT_GRACE_MS 200

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* NULL-terminated array of NUL-free strings from a JSON array; NULL on bad input. */
char **string_array(const jdoc_t *d, int arr, size_t *count)
{
	if (arr < 0 || d->n[arr].type != J_ARR)
		return NULL;
	size_t n = 0;
	for (int32_t c = d->n[arr].child; c >= 0; c = d->n[c].next)
		if (++n > MAX_ARGS)
			return NULL;
	char **v = calloc(n + 1, sizeof *v);
	if (!v)
		return NULL;
	size_t i = 0;
	for (int32_t c = d->n[arr].child; c >= 0; c = d->n[c].next) {
		size_t len;
		const char *s = json_node_str(d, c, &len);
		if (!s || strlen(s) != len) {
			free(v);
			return NULL;
		}
		v[i++] = (char *)s;
	}
	*count = n;
	return v;
}

void free_env(char **env)
{
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}

/* The agent's environment with the request's variables laid over it. */
char **build_env(const jdoc_t *d, int obj, int *bad)
{
	size_t base = 0, extra = 0;
	while (environ && environ[base])
		base++;
	if (obj >= 0) {
		if (d->n[obj].type != J_OBJ) {
			*bad = 1;
			return NULL;
		}
		for (int32_t c = d->n[obj].child; c >= 0; c = d->n[c].next)
			if (++extra > MAX_ARGS) {
				*bad = 1;
				return NULL;
			}
	}
	char **env = calloc(base + extra + 2, sizeof *env);
	if (!env)
		_exit(70);
	size_t n = 0;
	int have_path = 0;
	for (size_t i = 0; i < base; i++) {
		const char *eq = strchr(environ[i], '=');
		size_t kl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
		int overridden = 0;
		if (obj >= 0)
			for (int32_t c = d->n[obj].child; c >= 0; c = d->n[c].next)
				if (d->n[c].klen == kl && !memcmp(d->strings + d->n[c].key, environ[i], kl))
					overridden = 1;
		if (!overridden)
			env[n++] = strdup(environ[i]);
		if (kl == 4 && !memcmp(environ[i], "PATH", 4))
			have_path = 1;
	}
	if (obj >= 0)
		for (int32_t c = d->n[obj].child; c >= 0; c = d->n[c].next) {
			size_t vl;
			const char *v = json_node_str(d, c, &vl);
			const char *k = d->strings + d->n[c].key;
			size_t kl = d->n[c].klen;
			if (!v || strlen(v) != vl || kl == 0 || strlen(k) != kl || memchr(k, '=', kl)) {
				*bad = 1;
				env[n] = NULL;
				free_env(env);
				return NULL;
			}
			char *kv = malloc(kl + vl + 2);
			if (!kv)
				_exit(70);
			memcpy(kv, k, kl);
			kv[kl] = '=';
			memcpy(kv + kl + 1, v, vl + 1);
			env[n++] = kv;
			if (kl == 4 && !memcmp(k, "PATH", 4))
				have_path = 1;
		}
	if (!have_path)
		env[n++] = strdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
	env[n] = NULL;
	return env;
}

#ifndef MVM_AGENT_SEALED
/* `exec` of a host-chosen argv: not compiled into the sealed agent (MVM_AGENT_SEALED). */
void do_exec(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	if (g_cfg.sealed) {
		send_error(s, id, "E_SEALED", "exec is disabled on sealed images");
		return;
	}
	size_t argc = 0;
	char **argv = string_array(d, json_get(d, req, "argv"), &argc);
	if (!argv || argc == 0) {
		free(argv);
		send_error(s, id, "E_EXEC_ARGS", "argv must be a non-empty array of strings");
		return;
	}
	const char *cwd = NULL;
	size_t cwdlen = 0;
	int want_stdin = 0, pty = 0, bad = 0;
	int64_t rows = 24, cols = 80;
	if (json_get_str(d, req, "cwd", &cwd, &cwdlen) < 0 || (cwd && strlen(cwd) != cwdlen))
		bad = 1;
	if (json_get_bool(d, req, "stdin", &want_stdin) < 0 || json_get_bool(d, req, "pty", &pty) < 0)
		bad = 1;
	if (json_get_int(d, req, "rows", &rows) < 0 || json_get_int(d, req, "cols", &cols) < 0)
		bad = 1;
	char **env = bad ? NULL : build_env(d, json_get(d, req, "env"), &bad);
	if (bad) {
		free(argv);
		send_error(s, id, "E_EXEC_ARGS", "bad exec fields (cwd, env, stdin, pty, rows, cols)");
		return;
	}
	if (rows < 1 || rows > 1000)
		rows = 24;
	if (cols < 1 || cols > 1000)
		cols = 80;
	exec_spawn_ex(s, id, argv, env, cwd, want_stdin, pty, rows, cols, 1, 0);
}
#endif

/* Shared by `exec` and `run`: takes ownership of the argv array (not its strings)
 * and of env; answers `started` or `error` E_EXEC. */
void exec_spawn(session_t *s, int64_t id, char **argv, char **env, const char *cwd,
		int want_stdin, int pty, int64_t rows, int64_t cols)
{
	exec_spawn_ex(s, id, argv, env, cwd, want_stdin, pty, rows, cols, 0, 0);
}

void exec_spawn_ex(session_t *s, int64_t id, char **argv, char **env, const char *cwd,
		   int want_stdin, int pty, int64_t rows, int64_t cols, int as_entrypoint,
		   unsigned flags)
{
#ifdef MVM_AGENT_SEALED
	int proxy = 0; /* no spawnd, no PTY: only `run` of the image's own entrypoint */
	(void)as_entrypoint;
	(void)flags;
	(void)rows;
	(void)cols;
#else
	int proxy = as_entrypoint && g_cfg.spawn;
#endif
	int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1}, status[2] = {-1, -1};
	int master = -1, slave = -1;
	int ok = pipe2(status, O_CLOEXEC) == 0;
	if (ok && pty) {
#ifdef MVM_AGENT_SEALED
		ok = 0;
		errno = ENOTSUP;
#else
		struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
		ok = openpty(&master, &slave, NULL, NULL, &ws) == 0;
		if (ok) {
			set_cloexec(master);
			set_cloexec(slave);
		}
#endif
	} else if (ok) {
		ok = pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0;
		if (ok && want_stdin)
			ok = pipe2(in, O_CLOEXEC) == 0;
		else if (ok)
			ok = (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;
	}
	pid_t pid = ok ? fork() : -1;
	if (pid == 0) {
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
		if (pty) {
			if (!proxy) /* else the real process takes the PTY as its terminal */
				ioctl(slave, TIOCSCTTY, 0);
			dup2(slave, 0);
			dup2(slave, 1);
			dup2(slave, 2);
		} else {
			dup2(in[0], 0);
			dup2(out[1], 1);
			dup2(err[1], 2);
		}
#ifndef MVM_AGENT_SEALED
		if (proxy)
			spawn_proxy(g_cfg.spawn, argv, env, cwd, (pty ? SPAWN_PTY : 0) | flags,
				    status[1]);
#endif
		int e = 0;
		if (cwd && chdir(cwd) != 0)
			e = errno;
		if (!e) {
			environ = env;
			execvp(argv[0], argv);
			e = errno;
		}
		ssize_t w = write(status[1], &e, sizeof e);
		(void)w;
		_exit(127);
	}
	int saved = errno;
	close_fd(&status[1]);
	close_fd(&out[1]);
	close_fd(&err[1]);
	close_fd(&in[0]);
	close_fd(&slave);
	int child_errno = 0;
	if (pid > 0) {
		ssize_t r;
		do
			r = read(status[0], &child_errno, sizeof child_errno);
		while (r < 0 && errno == EINTR);
		if (r != (ssize_t)sizeof child_errno)
			child_errno = 0;
	}
	close_fd(&status[0]);
	if (pid < 0 || child_errno) {
		int e = pid < 0 ? saved : child_errno;
		send_error(s, id, "E_EXEC", "%s: %s", argv[0], strerror(e));
		close_fd(&out[0]);
		close_fd(&err[0]);
		close_fd(&in[1]);
		close_fd(&master);
		free(argv);
		free_env(env);
		return; /* a failed child is reaped by the SIGCHLD handler like any other */
	}
	free(argv);
	free_env(env);

	stream_t *st = stream_new(s, id, ST_EXEC);
	st->pid = pid;
	st->pty = pty;
	if (pty) {
		st->fd_out = master;
		st->fd_in = dup(master);
		set_cloexec(st->fd_in);
	} else {
		st->fd_out = out[0];
		st->fd_err = err[0];
		st->fd_in = in[1];
	}
	if (st->fd_out >= 0)
		set_nonblock(st->fd_out);
	if (st->fd_err >= 0)
		set_nonblock(st->fd_err);
	if (st->fd_in >= 0)
		set_nonblock(st->fd_in);
	frame_t f;
	frame_begin(&f, s, "started", id);
	fw_int(&f, "pid", pid);
	frame_end(&f);
}

int exec_wants_read(const stream_t *st)
{
	return !st->dead && st->unacked < WINDOW && buf_avail(&st->s->out) < OUT_HIGH;
}

static void maybe_finish(stream_t *st)
{
	if (st->dead || !st->exited || st->fd_out >= 0 || st->fd_err >= 0)
		return;
	frame_t f;
	frame_begin(&f, st->s, "exit", st->id);
	if (WIFEXITED(st->status)) {
		fw_int(&f, "code", WEXITSTATUS(st->status));
		fw_null(&f, "signal");
	} else {
		fw_null(&f, "code");
		fw_int(&f, "signal", WIFSIGNALED(st->status) ? WTERMSIG(st->status) : 0);
	}
	frame_end(&f);
	close_fd(&st->fd_in);
	st->pid = 0;
	st->dead = 1;
}

void exec_on_readable(stream_t *st, int which)
{
	int *fd = which == 2 ? &st->fd_err : &st->fd_out;
	unsigned char tmp[CHUNK];
	while (*fd >= 0 && exec_wants_read(st)) {
		size_t room = WINDOW - st->unacked;
		ssize_t r = read(*fd, tmp, room < sizeof tmp ? room : sizeof tmp);
		if (r > 0) {
			send_data(st, which, tmp, (size_t)r);
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		close_fd(fd); /* EOF, or EIO: a PTY whose slave side is gone */
		if (st->pty)
			close_fd(&st->fd_in);
	}
	maybe_finish(st);
}

void exec_on_writable(stream_t *st)
{
	size_t written = 0;
	while (st->fd_in >= 0 && buf_avail(&st->in)) {
		ssize_t w = write(st->fd_in, buf_data(&st->in), buf_avail(&st->in));
		if (w > 0) {
			buf_consume(&st->in, (size_t)w);
			written += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		/* The process closed its stdin: discard, but ack so the host never stalls. */
		written += buf_avail(&st->in);
		buf_consume(&st->in, buf_avail(&st->in));
		close_fd(&st->fd_in);
	}
	if (st->fd_in < 0 && buf_avail(&st->in)) {
		written += buf_avail(&st->in);
		buf_consume(&st->in, buf_avail(&st->in));
	}
	send_ack(st, written);
	if (st->in_eof && !buf_avail(&st->in) && st->fd_in >= 0) {
		if (st->pty) {
			ssize_t w = write(st->fd_in, "\x04", 1); /* ^D: EOF for the line discipline */
			(void)w;
			st->in_eof = 0;
		} else {
			close_fd(&st->fd_in);
		}
	}
}

void exec_host_frame(stream_t *st, const char *t, const jdoc_t *d, int req)
{
	if (!strcmp(t, "data")) {
		const char *b64;
		size_t n;
		if (json_get_str(d, req, "data", &b64, &n) != 1 || n > 2 * CHUNK) {
			st->s->dead = 1;
			return;
		}
		unsigned char *raw = malloc(n / 4 * 3 + 3);
		if (!raw)
			_exit(70);
		ssize_t m = b64_decode(b64, n, raw);
		if (m < 0 || buf_avail(&st->in) + (size_t)m > IN_LIMIT) {
			free(raw);
			agent_log("closing session: bad or over-window stdin data");
			st->s->dead = 1;
			return;
		}
		buf_put(&st->in, raw, (size_t)m);
		free(raw);
		exec_on_writable(st);
	} else if (!strcmp(t, "eof")) {
		st->in_eof = 1;
		exec_on_writable(st);
	} else if (!strcmp(t, "kill")) {
		int64_t sig = 15;
		if (json_get_int(d, req, "sig", &sig) < 0 || sig < 1 || sig > 64) {
			send_error(st->s, st->id, "E_EXEC_SIGNAL", "sig must be an integer 1..64");
			return;
		}
		if (st->pid > 0 && !st->exited && kill(-st->pid, (int)sig) != 0)
			kill(st->pid, (int)sig);
#ifndef MVM_AGENT_SEALED
	} else if (!strcmp(t, "resize")) {
		int64_t rows = 0, cols = 0;
		int fd = st->fd_in >= 0 ? st->fd_in : st->fd_out;
		if (st->pty && fd >= 0 && json_get_int(d, req, "rows", &rows) == 1 &&
		    json_get_int(d, req, "cols", &cols) == 1 && rows > 0 && rows < 10000 && cols > 0 &&
		    cols < 10000) {
			struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
			ioctl(fd, TIOCSWINSZ, &ws);
		}
#endif
	}
}

void exec_on_child_exit(stream_t *st, int status)
{
	st->exited = 1;
	st->status = status;
	st->exited_at = now_ms();
	maybe_finish(st);
}

void exec_tick(stream_t *st, int64_t now)
{
	if (st->dead || !st->exited || now - st->exited_at < EXIT_GRACE_MS)
		return;
	/* A grandchild holds the pipes open. Take what is there now, then report the exit. */
	if (st->fd_out >= 0 && exec_wants_read(st))
		exec_on_readable(st, 1);
	if (st->fd_err >= 0 && exec_wants_read(st))
		exec_on_readable(st, 2);
	if (!st->dead && exec_wants_read(st)) {
		close_fd(&st->fd_out);
		close_fd(&st->fd_err);
		maybe_finish(st);
	}
}

void exec_close(stream_t *st)
{
	if (st->pid > 0 && !st->exited) {
		if (kill(-st->pid, SIGKILL) != 0)
			kill(st->pid, SIGKILL);
	}
	close_fd(&st->fd_in);
	close_fd(&st->fd_out);
	close_fd(&st->fd_err);
}
