/* Shared state of mvm-agent: one single-threaded poll() loop owns everything.
 * Objects are never freed while a poll round is being dispatched: handlers set
 * `dead` and the loop frees at the end of the round, so a pollfd never points
 * at freed memory. */
#ifndef MVM_AGENT_H
#define MVM_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "json.h"

#define AGENT_VERSION "mvm-agent/0.1"
#define PROTO_VERSION 1
#define MAX_FRAME (256 * 1024)
#define WINDOW (1024 * 1024)
#define CHUNK (64 * 1024)
/* Stop producing output for a session once this much is queued for its transport. */
#define OUT_HIGH (1024 * 1024)
/* Host data beyond its own window is a protocol violation, not something to buffer. */
#define IN_LIMIT (WINDOW + CHUNK)

/* ---- buf.c ---- */
typedef struct {
	char *p;
	size_t len; /* bytes written */
	size_t off; /* bytes consumed from the front */
	size_t cap;
} buf_t;

void buf_reserve(buf_t *b, size_t extra);
void buf_put(buf_t *b, const void *data, size_t n);
void buf_putc(buf_t *b, char c);
void buf_puts(buf_t *b, const char *s);
void buf_consume(buf_t *b, size_t n);
void buf_free(buf_t *b);
static inline size_t buf_avail(const buf_t *b) { return b->len - b->off; }
static inline const char *buf_data(const buf_t *b) { return b->p + b->off; }

size_t b64_encoded_len(size_t n);
void b64_encode_into(buf_t *b, const unsigned char *src, size_t n);
/* Decodes strict, padded base64; returns -1 on any invalid input. */
ssize_t b64_decode(const char *src, size_t n, unsigned char *dst);

int64_t now_ms(void);
int64_t uptime_ms(void);
/* Reads a small file into a NUL-terminated malloc'd string (NULL on error). */
char *read_small_file(const char *path, size_t max);
void strip_trailing_ws(char *s);
void set_nonblock(int fd);
void set_cloexec(int fd);
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- streams and sessions ---- */
typedef enum { ST_EXEC, ST_CONN, ST_LOGS } stream_kind;

struct session;

typedef struct logfile {
	char *service;
	off_t offset;
	buf_t partial;
	int done; /* non-follow: reached EOF */
} logfile_t;

typedef struct stream {
	struct stream *next;
	struct session *s;
	int64_t id;
	stream_kind kind;
	int dead;
	size_t unacked; /* guest->host bytes the host has not acknowledged */
	buf_t in;       /* host->guest bytes not yet written */
	int in_eof;     /* host sent eof */
	/* exec */
	pid_t pid;
	int fd_in, fd_out, fd_err;
	int pty;
	int exited, status;
	int64_t exited_at;
	/* connect */
	int sock;
	int connecting;
	int sent_eof, wr_shut;
	/* logs */
	logfile_t *files;
	size_t nfiles;
	int follow;
	char *service;
	int64_t next_scan;
} stream_t;

typedef struct session {
	struct session *next;
	int fd;
	int serial; /* virtio-serial port: host (dis)connects without the fd closing */
	int up;     /* a host is attached and has been greeted */
	int dead;
	int lost; /* the transport failed this round */
	buf_t in, out;
	stream_t *streams;
} session_t;

typedef struct {
	int sealed;
	const char *health_dir;
	const char *log_dir;
	const char *ctl;
	const char *wrapper; /* run-entrypoint: {"argv": [..], "env": {..}?, "cwd": ..?} */
	const char *spawn;   /* spawnd socket: exec/console run as the entrypoint uid (NULL: own uid) */
	const char *console_shell; /* what `console` opens: the shell entrypoint's program */
	const char *run_dir; /* /init's runtime dir: entrypoint.pid, services/NAME.pid */
} config_t;

extern config_t g_cfg;
extern session_t *g_sessions;
extern int g_more_work; /* a pump has more to do right away: poll with timeout 0 */

/* ---- session.c ---- */
session_t *session_new(int fd, int serial);
void session_greet(session_t *s);
void session_reset(session_t *s); /* host went away: drop streams and buffers */
void session_on_readable(session_t *s);
void session_on_writable(session_t *s);
void session_free(session_t *s);
stream_t *stream_new(session_t *s, int64_t id, stream_kind kind);
void stream_kill(stream_t *st); /* tear down resources now; freed later */
void stream_free(stream_t *st);
stream_t *stream_find(session_t *s, int64_t id);

/* Frame writer: begin, add fields, end. Writes straight into s->out. */
typedef struct {
	buf_t *b;
	size_t hdr;
} frame_t;
void frame_begin(frame_t *f, session_t *s, const char *type, int64_t id);
void fw_key(frame_t *f, const char *key);
void fw_str(frame_t *f, const char *key, const char *val, size_t n);
void fw_cstr(frame_t *f, const char *key, const char *val);
void fw_int(frame_t *f, const char *key, int64_t val);
void fw_bool(frame_t *f, const char *key, int val);
void fw_null(frame_t *f, const char *key);
void fw_b64(frame_t *f, const char *key, const unsigned char *data, size_t n);
void fw_obj_begin(frame_t *f, const char *key);
void fw_obj_end(frame_t *f);
void frame_end(frame_t *f);
void json_escape_into(buf_t *b, const char *s, size_t n);

void send_simple(session_t *s, const char *type, int64_t id);
void send_error(session_t *s, int64_t id, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void send_data(stream_t *st, int fd, const unsigned char *data, size_t n);
void send_ack(stream_t *st, size_t n);

/* ---- exec.c ---- */
void do_exec(session_t *s, int64_t id, const jdoc_t *d, int req);
void exec_on_child_exit(stream_t *st, int status);
void exec_on_readable(stream_t *st, int which);
void exec_on_writable(stream_t *st);
void exec_host_frame(stream_t *st, const char *t, const jdoc_t *d, int req);
void exec_tick(stream_t *st, int64_t now);
void exec_close(stream_t *st);
int exec_wants_read(const stream_t *st);
void exec_spawn(session_t *s, int64_t id, char **argv, char **env, const char *cwd,
		int want_stdin, int pty, int64_t rows, int64_t cols);
/* exec_spawn, but `as_entrypoint` starts it through spawnd (when configured);
 * flags are SPAWN_* (console: cwd defaults to the entrypoint's home). */
void exec_spawn_ex(session_t *s, int64_t id, char **argv, char **env, const char *cwd,
		   int want_stdin, int pty, int64_t rows, int64_t cols, int as_entrypoint,
		   unsigned flags);
char **string_array(const jdoc_t *d, int arr, size_t *count);
char **build_env(const jdoc_t *d, int obj, int *bad);
void free_env(char **env);

/* ---- spawnd.c ---- */
#define SPAWN_PTY 1u
#define SPAWN_CONSOLE 2u
/* In the forked exec child: hand fds 0-2 to spawnd and mirror the process; never returns. */
void spawn_proxy(const char *sock_path, char **argv, char **env, const char *cwd, int flags,
		 int status_fd) __attribute__((noreturn));
int spawnd_main(int argc, char **argv);

/* ---- console.c ---- */
void do_console(session_t *s, int64_t id, const jdoc_t *d, int req);
void uids_reply(session_t *s, int64_t id);

/* ---- run.c ---- */
void run_start(session_t *s, int64_t id, const jdoc_t *d, int req);

/* ---- conn.c ---- */
void conn_start(session_t *s, int64_t id, const jdoc_t *d, int req);
void conn_on_readable(stream_t *st);
void conn_on_writable(stream_t *st);
void conn_host_frame(stream_t *st, const char *t, const jdoc_t *d, int req);
void conn_close(stream_t *st);
int conn_wants_read(const stream_t *st);

/* ---- logs.c ---- */
void logs_start(session_t *s, int64_t id, const jdoc_t *d, int req);
void logs_pump(stream_t *st, int64_t now);
void logs_close(stream_t *st);

/* ---- health.c ---- */
void health_init(void);
void health_tick(int64_t now);
int health_on_child_exit(pid_t pid, int status); /* 1 if pid was a health check */
void health_reply(session_t *s, int64_t id);
int64_t health_next_deadline(void);

/* ---- ctl.c ---- */
void ctl_service(session_t *s, int64_t id, const jdoc_t *d, int req);
void ctl_shutdown(session_t *s, int64_t id, const jdoc_t *d, int req);
int valid_service_name(const char *name, size_t n);

/* ---- identity.c ---- */
/* Handles host `hello` (re-greet) and `identity`; 1 if t was one of them. */
int identity_dispatch(session_t *s, int64_t id, const char *t, const jdoc_t *d);
/* `mvm-agent reseed HEX`: credit a seed to the kernel RNG and reseed its CRNG (root). */
int reseed_main(int argc, char **argv);

/* ---- seccomp.c ---- */
/* "unrestricted" | "standard" | "strict" */
int seccomp_tier_valid(const char *tier);
/* Installs the tier's filter on this thread (no_new_privs or CAP_SYS_ADMIN first). */
int seccomp_apply(const char *tier);

#endif
