/* One host connection: frame reassembly, the JSON frame writer, request
 * dispatch and the per-id stream table. A malformed frame ends the session
 * (never the agent). */
#include "agent.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

session_t *g_sessions;

session_t *session_new(int fd, int serial)
{
	session_t *s = calloc(1, sizeof *s);
	if (!s)
		_exit(70);
	s->fd = fd;
	s->serial = serial;
	s->next = g_sessions;
	g_sessions = s;
	return s;
}

/* ---- frame writer ---- */

void json_escape_into(buf_t *b, const char *str, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)str;
	buf_reserve(b, n + 2);
	buf_putc(b, '"');
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			buf_put(b, e, 2);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			buf_put(b, e, 6);
			i++;
		} else if (c < 0x80) {
			buf_putc(b, (char)c);
			i++;
		} else {
			/* Copy a well-formed UTF-8 sequence, replace anything else with U+FFFD
			 * so the host's JSON decoder always accepts the frame. */
			size_t len = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
			int ok = len && i + len <= n;
			for (size_t k = 1; ok && k < len; k++)
				ok = (s[i + k] & 0xC0) == 0x80;
			if (ok && len == 3) {
				unsigned cp = (c & 0x0Fu) << 12 | (s[i + 1] & 0x3Fu) << 6 | (s[i + 2] & 0x3Fu);
				ok = cp >= 0x800 && !(cp >= 0xD800 && cp < 0xE000);
			} else if (ok && len == 4) {
				unsigned cp = (c & 0x07u) << 18 | (s[i + 1] & 0x3Fu) << 12;
				ok = cp >= 0x10000 && cp <= 0x10FFFF;
			}
			if (ok) {
				buf_put(b, s + i, len);
				i += len;
			} else {
				buf_puts(b, "\\ufffd");
				i++;
			}
		}
	}
	buf_putc(b, '"');
}

static void fw_sep(frame_t *f)
{
	char last = f->b->p[f->b->len - 1];
	if (last != '{')
		buf_putc(f->b, ',');
}

void fw_key(frame_t *f, const char *key)
{
	fw_sep(f);
	json_escape_into(f->b, key, strlen(key));
	buf_putc(f->b, ':');
}

void frame_begin(frame_t *f, session_t *s, const char *type, int64_t id)
{
	f->b = &s->out;
	f->hdr = buf_avail(f->b); /* relative to off: survives compaction */
	buf_put(f->b, "\0\0\0\0{", 5);
	fw_cstr(f, "t", type);
	fw_int(f, "id", id);
}

void fw_str(frame_t *f, const char *key, const char *val, size_t n)
{
	fw_key(f, key);
	json_escape_into(f->b, val, n);
}

void fw_cstr(frame_t *f, const char *key, const char *val) { fw_str(f, key, val, strlen(val)); }

void fw_int(frame_t *f, const char *key, int64_t val)
{
	char tmp[32];
	fw_key(f, key);
	int n = snprintf(tmp, sizeof tmp, "%lld", (long long)val);
	buf_put(f->b, tmp, (size_t)n);
}

void fw_bool(frame_t *f, const char *key, int val)
{
	fw_key(f, key);
	buf_puts(f->b, val ? "true" : "false");
}

void fw_null(frame_t *f, const char *key)
{
	fw_key(f, key);
	buf_puts(f->b, "null");
}

void fw_b64(frame_t *f, const char *key, const unsigned char *data, size_t n)
{
	fw_key(f, key);
	buf_putc(f->b, '"');
	b64_encode_into(f->b, data, n);
	buf_putc(f->b, '"');
}

void fw_obj_begin(frame_t *f, const char *key)
{
	fw_key(f, key);
	buf_putc(f->b, '{');
}

void fw_obj_end(frame_t *f) { buf_putc(f->b, '}'); }

void frame_end(frame_t *f)
{
	buf_putc(f->b, '}');
	size_t start = f->b->off + f->hdr;
	size_t body = f->b->len - start - 4;
	if (body > MAX_FRAME) { /* cannot happen with 64 KiB chunks; never emit it */
		agent_log("dropping oversized frame (%zu bytes)", body);
		f->b->len = start;
		return;
	}
	unsigned char *h = (unsigned char *)f->b->p + start;
	h[0] = (unsigned char)(body >> 24);
	h[1] = (unsigned char)(body >> 16);
	h[2] = (unsigned char)(body >> 8);
	h[3] = (unsigned char)body;
}

void send_simple(session_t *s, const char *type, int64_t id)
{
	frame_t f;
	frame_begin(&f, s, type, id);
	frame_end(&f);
}

void send_error(session_t *s, int64_t id, const char *code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	frame_t f;
	frame_begin(&f, s, "error", id);
	fw_cstr(&f, "code", code);
	fw_cstr(&f, "message", msg);
	frame_end(&f);
}

void send_data(stream_t *st, int fd, const unsigned char *data, size_t n)
{
	frame_t f;
	frame_begin(&f, st->s, "data", st->id);
	if (fd >= 0)
		fw_int(&f, "fd", fd);
	fw_b64(&f, "data", data, n);
	frame_end(&f);
	st->unacked += n;
}

void send_ack(stream_t *st, size_t n)
{
	if (!n)
		return;
	frame_t f;
	frame_begin(&f, st->s, "ack", st->id);
	fw_int(&f, "n", (int64_t)n);
	frame_end(&f);
}

/* ---- hello ---- */

void session_greet(session_t *s)
{
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	char *mid = read_small_file("/etc/machine-id", 128);
	if (mid)
		strip_trailing_ws(mid);
	frame_t f;
	frame_begin(&f, s, "hello", 0);
	fw_int(&f, "v", PROTO_VERSION);
	fw_cstr(&f, "agent", AGENT_VERSION);
	fw_bool(&f, "sealed", g_cfg.sealed);
	fw_int(&f, "uptime_ms", uptime_ms());
	fw_cstr(&f, "hostname", host);
	fw_cstr(&f, "machine_id", mid ? mid : "");
	fw_int(&f, "pid", getpid());
	frame_end(&f);
	free(mid);
	s->up = 1;
}

/* ---- streams ---- */

stream_t *stream_new(session_t *s, int64_t id, stream_kind kind)
{
	stream_t *st = calloc(1, sizeof *st);
	if (!st)
		_exit(70);
	st->s = s;
	st->id = id;
	st->kind = kind;
	st->fd_in = st->fd_out = st->fd_err = st->sock = -1;
	st->next = s->streams;
	s->streams = st;
	return st;
}

stream_t *stream_find(session_t *s, int64_t id)
{
	for (stream_t *st = s->streams; st; st = st->next)
		if (st->id == id && !st->dead)
			return st;
	return NULL;
}

void stream_kill(stream_t *st)
{
	if (st->dead)
		return;
	switch (st->kind) {
	case ST_EXEC: exec_close(st); break;
	case ST_CONN: conn_close(st); break;
	case ST_LOGS: logs_close(st); break;
	}
	st->dead = 1;
}

void stream_free(stream_t *st)
{
	stream_kill(st);
	buf_free(&st->in);
	free(st);
}

void session_reset(session_t *s)
{
	for (stream_t *st = s->streams; st;) {
		stream_t *next = st->next;
		stream_free(st);
		st = next;
	}
	s->streams = NULL;
	buf_free(&s->in);
	buf_free(&s->out);
	s->up = 0;
}

void session_free(session_t *s)
{
	session_reset(s);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

/* ---- dispatch ---- */

static int is_request(const char *t)
{
	static const char *const reqs[] = {"ping", "exec", "connect", "health", "logs",
					   "service", "shutdown", "run", "console", "uids", NULL};
	for (int i = 0; reqs[i]; i++)
		if (!strcmp(t, reqs[i]))
			return 1;
	return 0;
}

static void host_stream_frame(session_t *s, int64_t id, const char *t, const jdoc_t *d)
{
	stream_t *st = stream_find(s, id);
	if (!st) /* late frame for a finished id: harmless */
		return;
	if (!strcmp(t, "ack")) {
		int64_t n = 0;
		if (json_get_int(d, 0, "n", &n) == 1 && n > 0)
			st->unacked = (size_t)n >= st->unacked ? 0 : st->unacked - (size_t)n;
		return;
	}
	if (!strcmp(t, "close")) {
		stream_kill(st);
		return;
	}
	switch (st->kind) {
	case ST_EXEC: exec_host_frame(st, t, d, 0); break;
	case ST_CONN: conn_host_frame(st, t, d, 0); break;
	case ST_LOGS: break;
	}
}

/* Returns -1 when the frame is a protocol error that ends the session. */
static int dispatch(session_t *s, const char *body, size_t len)
{
	jdoc_t d;
	int rc = -1;
	if (json_parse(&d, body, len) != 0 || d.n[0].type != J_OBJ)
		goto out;
	const char *t;
	size_t tlen;
	int64_t id = 0;
	if (json_get_str(&d, 0, "t", &t, &tlen) != 1 || strlen(t) != tlen)
		goto out;
	int has_id = json_get_int(&d, 0, "id", &id);
	if (has_id < 0 || id < 0)
		goto out;
	rc = 0;
	if (!strcmp(t, "data") || !strcmp(t, "eof") || !strcmp(t, "ack") || !strcmp(t, "kill") ||
	    !strcmp(t, "resize") || !strcmp(t, "close")) {
		host_stream_frame(s, id, t, &d);
		goto out;
	}
	if (identity_dispatch(s, id, t, &d)) /* identity.c: host hello, identity */
		goto out;
	if (!is_request(t)) {
		send_error(s, id, "E_PROTO_UNKNOWN", "unknown request type '%.64s'", t);
		goto out;
	}
	if (id == 0 || stream_find(s, id)) {
		send_error(s, id, "E_PROTO_ID", "request id must be > 0 and not in use");
		goto out;
	}
	if (!strcmp(t, "ping")) {
		frame_t f;
		frame_begin(&f, s, "pong", id);
		fw_int(&f, "uptime_ms", uptime_ms());
		frame_end(&f);
	} else if (!strcmp(t, "exec") || !strcmp(t, "console")) {
#ifdef MVM_AGENT_SEALED
		/* The sealed build has no code for these (the host's exec, cp and console). */
		send_error(s, id, "E_SEALED", "%s is not in a sealed image's agent", t);
#else
		if (t[0] == 'e')
			do_exec(s, id, &d, 0);
		else
			do_console(s, id, &d, 0);
#endif
	} else if (!strcmp(t, "uids")) {
		uids_reply(s, id);
	} else if (!strcmp(t, "run")) {
		run_start(s, id, &d, 0);
	} else if (!strcmp(t, "connect")) {
		conn_start(s, id, &d, 0);
	} else if (!strcmp(t, "health")) {
		health_reply(s, id);
	} else if (!strcmp(t, "logs")) {
		logs_start(s, id, &d, 0);
	} else if (!strcmp(t, "service")) {
		ctl_service(s, id, &d, 0);
	} else if (!strcmp(t, "shutdown")) {
		ctl_shutdown(s, id, &d, 0);
	}
out:
	json_free(&d);
	return rc;
}

static void process_frames(session_t *s)
{
	while (!s->dead && !s->lost && buf_avail(&s->in) >= 4) {
		const unsigned char *h = (const unsigned char *)buf_data(&s->in);
		size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
		if (n == 0 || n > MAX_FRAME) {
			agent_log("closing session: frame length %zu outside 1..%d", n, MAX_FRAME);
			s->dead = 1;
			return;
		}
		if (buf_avail(&s->in) < 4 + n)
			return;
		if (dispatch(s, buf_data(&s->in) + 4, n) < 0) {
			agent_log("closing session: malformed frame");
			s->dead = 1;
			return;
		}
		buf_consume(&s->in, 4 + n);
	}
}

void session_on_readable(session_t *s)
{
	/* Read a bounded amount per round so one busy host cannot starve the others. */
	for (int round = 0; round < 16 && !s->dead && !s->lost; round++) {
		buf_reserve(&s->in, CHUNK);
		ssize_t r = read(s->fd, s->in.p + s->in.len, CHUNK);
		if (r > 0) {
			s->in.len += (size_t)r;
			process_frames(s);
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		s->lost = 1; /* the loop resets (serial) or frees (socket) it after this round */
		return;
	}
}

void session_on_writable(session_t *s)
{
	while (buf_avail(&s->out)) {
		ssize_t w = write(s->fd, buf_data(&s->out), buf_avail(&s->out));
		if (w > 0) {
			buf_consume(&s->out, (size_t)w);
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		s->lost = 1;
		return;
	}
}
