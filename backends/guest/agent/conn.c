/* `connect`: a TCP connection to 127.0.0.1:port in the guest, spliced onto a
 * stream id (the guest leg of a port forward). Reads stop while the host has
 * a full window unacknowledged, so a slow host never makes us buffer. */
#include "agent.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void conn_fail(stream_t *st, int err)
{
	send_error(st->s, st->id, "E_CONNECT", "connect to 127.0.0.1 failed: %s", strerror(err));
	conn_close(st);
	st->dead = 1;
}

static void send_close_and_finish(stream_t *st)
{
	send_simple(st->s, "close", st->id);
	conn_close(st);
	st->dead = 1;
}

void conn_start(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	int64_t port = 0;
	if (json_get_int(d, req, "port", &port) != 1 || port < 1 || port > 65535) {
		send_error(s, id, "E_CONNECT", "port must be an integer 1..65535");
		return;
	}
	stream_t *st = stream_new(s, id, ST_CONN);
	st->sock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (st->sock < 0) {
		conn_fail(st, errno);
		return;
	}
	int one = 1;
	setsockopt(st->sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(st->sock, (struct sockaddr *)&sa, sizeof sa) == 0) {
		send_simple(s, "ok", id);
	} else if (errno == EINPROGRESS) {
		st->connecting = 1;
	} else {
		conn_fail(st, errno);
	}
}

int conn_wants_read(const stream_t *st)
{
	return !st->dead && !st->connecting && !st->sent_eof && st->unacked < WINDOW &&
	       buf_avail(&st->s->out) < OUT_HIGH;
}

void conn_on_readable(stream_t *st)
{
	unsigned char tmp[CHUNK];
	while (st->sock >= 0 && conn_wants_read(st)) {
		size_t room = WINDOW - st->unacked;
		ssize_t r = recv(st->sock, tmp, room < sizeof tmp ? room : sizeof tmp, 0);
		if (r > 0) {
			send_data(st, -1, tmp, (size_t)r);
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (r < 0) { /* reset by the guest service */
			send_close_and_finish(st);
			return;
		}
		send_simple(st->s, "eof", st->id);
		st->sent_eof = 1;
		if (st->wr_shut)
			send_close_and_finish(st);
		return;
	}
}

void conn_on_writable(stream_t *st)
{
	if (st->sock < 0)
		return;
	if (st->connecting) {
		int err = 0;
		socklen_t len = sizeof err;
		if (getsockopt(st->sock, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
			err = errno;
		if (err == EINPROGRESS || err == EALREADY)
			return;
		if (err) {
			conn_fail(st, err);
			return;
		}
		st->connecting = 0;
		send_simple(st->s, "ok", st->id);
	}
	size_t written = 0;
	while (buf_avail(&st->in)) {
		ssize_t w = send(st->sock, buf_data(&st->in), buf_avail(&st->in), MSG_NOSIGNAL);
		if (w > 0) {
			buf_consume(&st->in, (size_t)w);
			written += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		send_ack(st, written);
		send_close_and_finish(st);
		return;
	}
	send_ack(st, written);
	if (st->in_eof && !buf_avail(&st->in) && !st->wr_shut) {
		shutdown(st->sock, SHUT_WR);
		st->wr_shut = 1;
		if (st->sent_eof)
			send_close_and_finish(st);
	}
}

void conn_host_frame(stream_t *st, const char *t, const jdoc_t *d, int req)
{
	if (!strcmp(t, "data")) {
		const char *b64;
		size_t n;
		if (st->in_eof || json_get_str(d, req, "data", &b64, &n) != 1 || n > 2 * CHUNK) {
			st->s->dead = 1;
			return;
		}
		unsigned char *raw = malloc(n / 4 * 3 + 3);
		if (!raw)
			_exit(70);
		ssize_t m = b64_decode(b64, n, raw);
		if (m < 0 || buf_avail(&st->in) + (size_t)m > IN_LIMIT) {
			free(raw);
			agent_log("closing session: bad or over-window stream data");
			st->s->dead = 1;
			return;
		}
		buf_put(&st->in, raw, (size_t)m);
		free(raw);
		if (!st->connecting)
			conn_on_writable(st);
	} else if (!strcmp(t, "eof")) {
		st->in_eof = 1;
		if (!st->connecting)
			conn_on_writable(st);
	}
}

void conn_close(stream_t *st)
{
	if (st->sock >= 0)
		close(st->sock);
	st->sock = -1;
}
