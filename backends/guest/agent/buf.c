/* Growable byte buffers, base64 and small OS helpers. Allocation failure is
 * fatal: the agent is supervised by /init, and a half-built frame is worse
 * than a restart. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void buf_reserve(buf_t *b, size_t extra)
{
	if (b->off && b->off == b->len) {
		b->off = b->len = 0;
	}
	if (b->len + extra <= b->cap)
		return;
	if (b->off > 0 && b->off >= b->cap / 2) { /* reclaim the consumed prefix first */
		memmove(b->p, b->p + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		if (b->len + extra <= b->cap)
			return;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		agent_log("out of memory (%zu bytes)", cap);
		_exit(70);
	}
	b->p = p;
	b->cap = cap;
}

void buf_put(buf_t *b, const void *data, size_t n)
{
	if (!n)
		return;
	buf_reserve(b, n);
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

void buf_putc(buf_t *b, char c) { buf_put(b, &c, 1); }

void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

void buf_consume(buf_t *b, size_t n)
{
	b->off += n;
	if (b->off >= b->len) {
		b->off = b->len = 0;
		if (b->cap > (4u << 20)) { /* give a burst's memory back */
			free(b->p);
			b->p = NULL;
			b->cap = 0;
		}
	}
}

void buf_free(buf_t *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }

void b64_encode_into(buf_t *b, const unsigned char *src, size_t n)
{
	buf_reserve(b, b64_encoded_len(n));
	char *o = b->p + b->len;
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8 | src[i + 2];
		*o++ = B64[v >> 18];
		*o++ = B64[(v >> 12) & 63];
		*o++ = B64[(v >> 6) & 63];
		*o++ = B64[v & 63];
	}
	if (n - i == 1) {
		unsigned v = (unsigned)src[i] << 16;
		*o++ = B64[v >> 18];
		*o++ = B64[(v >> 12) & 63];
		*o++ = '=';
		*o++ = '=';
	} else if (n - i == 2) {
		unsigned v = (unsigned)src[i] << 16 | (unsigned)src[i + 1] << 8;
		*o++ = B64[v >> 18];
		*o++ = B64[(v >> 12) & 63];
		*o++ = B64[(v >> 6) & 63];
		*o++ = '=';
	}
	b->len = (size_t)(o - b->p);
}

static int b64_val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

ssize_t b64_decode(const char *src, size_t n, unsigned char *dst)
{
	if (n % 4)
		return -1;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		int v[4];
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			char c = src[i + k];
			if (c == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad) /* data after padding */
				return -1;
			v[k] = b64_val(c);
			if (v[k] < 0)
				return -1;
		}
		unsigned x = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
		dst[o++] = (unsigned char)(x >> 16);
		if (pad < 2)
			dst[o++] = (unsigned char)(x >> 8);
		if (pad < 1)
			dst[o++] = (unsigned char)x;
	}
	return (ssize_t)o;
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t uptime_ms(void)
{
	char *s = read_small_file("/proc/uptime", 128);
	if (!s) {
		struct timespec ts;
		clock_gettime(CLOCK_BOOTTIME, &ts);
		return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	}
	int64_t sec = 0, frac = 0, scale = 1000;
	const char *p = s;
	while (*p >= '0' && *p <= '9')
		sec = sec * 10 + (*p++ - '0');
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9' && scale > 1) {
			scale /= 10;
			frac += (*p++ - '0') * scale;
		}
	}
	free(s);
	return sec * 1000 + frac;
}

char *read_small_file(const char *path, size_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *s = malloc(max + 1);
	if (!s) {
		close(fd);
		return NULL;
	}
	size_t n = 0;
	while (n < max) {
		ssize_t r = read(fd, s + n, max - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	s[n] = '\0';
	return s;
}

void strip_trailing_ws(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
}

void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void set_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl >= 0)
		fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

void agent_log(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	char out[600];
	int m = snprintf(out, sizeof out, "mvm-agent: %.*s", n, line);
	if (m > 0) {
		ssize_t w = write(2, out, (size_t)m < sizeof out ? (size_t)m : sizeof out - 1);
		(void)w;
	}
}
