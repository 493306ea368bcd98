/* Clone identity: the host's `hello` (re-greet) and `identity` requests.
 *
 * A restored snapshot wakes up believing the source's host is still attached,
 * with the source's hostname, machine-id and RNG state. The host therefore
 * (1) sends `hello` to make the agent drop whatever the source's host left
 * behind and greet the new one, and (2) sends `identity` with a fresh hostname,
 * machine-id and RNG seed. The agent runs unprivileged, so it hands the values
 * to /init (root) over the control FIFO and answers once /init confirms them in
 * `<ctl dir>/identity`. That wait is inline and bounded: it happens once per
 * clone, right after restore, before the host uses the VM for anything else,
 * and keeps the poll loop free of one-off state.
 *
 * `mvm-agent reseed HEX` (run by /init as root) credits the seed to the kernel's
 * input pool and forces a CRNG reseed: merely writing to /dev/urandom would mix
 * the seed in but leave every clone's CRNG producing the source's stream until
 * the next scheduled reseed (up to a minute later). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* <linux/random.h> is not part of musl's headers. */
#define RNDADDENTROPY_COMPAT _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG_COMPAT _IO('R', 0x07)

#define IDENTITY_WAIT_MS 3000
#define SEED_BYTES 32

static int valid_hostname(const char *h, size_t n)
{
	if (n == 0 || n > 63 || strlen(h) < n || h[0] == '-' || h[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = h[i];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			 c == '-' || c == '.' || c == '_';
		if (!ok)
			return 0;
	}
	return 1;
}

static int valid_machine_id(const char *m, size_t n)
{
	if (n != 32 || strlen(m) < n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((m[i] >= '0' && m[i] <= '9') || (m[i] >= 'a' && m[i] <= 'f')))
			return 0;
	return 1;
}

/* "MAC,IP/PREFIX,GATEWAY" for a TAP clone's NIC: only the characters those use, so
 * the value can go on /init's control line unquoted. /init checks the shape. */
static int valid_net(const char *v, size_t n)
{
	if (n < 15 || n > 64 || strlen(v) < n)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = v[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == ':' || c == '.' ||
		      c == '/' || c == ','))
			return 0;
	}
	return 1;
}

/* The file /init writes once it applied an identity: next to the control FIFO. */
static void confirm_path(char *out, size_t len)
{
	const char *slash = strrchr(g_cfg.ctl, '/');
	int dir = slash ? (int)(slash - g_cfg.ctl) : 1;
	snprintf(out, len, "%.*s/identity", dir, slash ? g_cfg.ctl : ".");
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* A new host on this connection: forget the previous host's streams and output. */
static void regreet(session_t *s)
{
	for (stream_t *st = s->streams; st; st = st->next)
		stream_kill(st); /* freed by the loop's sweep, never mid-dispatch */
	buf_consume(&s->out, buf_avail(&s->out));
	session_greet(s);
}

static void set_identity(session_t *s, int64_t id, const jdoc_t *d)
{
	const char *host, *mid, *seed;
	size_t hlen, mlen, slen;
	if (json_get_str(d, 0, "hostname", &host, &hlen) != 1 || !valid_hostname(host, hlen)) {
		send_error(s, id, "E_IDENTITY_ARGS", "hostname must be 1-63 of [A-Za-z0-9._-]");
		return;
	}
	if (json_get_str(d, 0, "machine_id", &mid, &mlen) != 1 || !valid_machine_id(mid, mlen)) {
		send_error(s, id, "E_IDENTITY_ARGS", "machine_id must be 32 lowercase hex digits");
		return;
	}
	unsigned char raw[48]; /* 64 base64 chars at most */
	if (json_get_str(d, 0, "seed", &seed, &slen) != 1 || slen > 64 ||
	    b64_decode(seed, slen, raw) != SEED_BYTES) {
		send_error(s, id, "E_IDENTITY_ARGS", "seed must be %d bytes of base64", SEED_BYTES);
		return;
	}
	const char *net = "";
	size_t nlen = 0;
	int has_net = json_get_str(d, 0, "net", &net, &nlen);
	if (has_net < 0 || (has_net == 1 && !valid_net(net, nlen))) {
		send_error(s, id, "E_IDENTITY_ARGS", "net must be MAC,IP/PREFIX,GATEWAY");
		return;
	}
	if (has_net != 1)
		nlen = 0;
	char hex[2 * SEED_BYTES + 1];
	for (int i = 0; i < SEED_BYTES; i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	char want[192], line[320], path[512];
	snprintf(want, sizeof want, "%.*s %.*s%s%.*s", (int)hlen, host, (int)mlen, mid,
		 nlen ? " " : "", (int)nlen, net);
	snprintf(line, sizeof line, "identity %.*s %.*s %s%s%.*s\n", (int)hlen, host, (int)mlen,
		 mid, hex, nlen ? " " : "", (int)nlen, net);
	confirm_path(path, sizeof path);

	int fd = open(g_cfg.ctl, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		send_error(s, id, "E_CTL", "control FIFO %s: %s", g_cfg.ctl,
			   errno == ENXIO ? "init is not listening" : strerror(errno));
		return;
	}
	size_t n = strlen(line);
	ssize_t w = write(fd, line, n); /* < PIPE_BUF: atomic */
	close(fd);
	if (w != (ssize_t)n) {
		send_error(s, id, "E_CTL", "control FIFO %s: write failed", g_cfg.ctl);
		return;
	}
	for (int waited = 0; waited <= IDENTITY_WAIT_MS; waited += 2) {
		char *got = read_small_file(path, 256);
		if (got) {
			strip_trailing_ws(got);
			int done = !strcmp(got, want);
			free(got);
			if (done) {
				frame_t f;
				frame_begin(&f, s, "identity", id);
				fw_str(&f, "hostname", host, hlen);
				fw_str(&f, "machine_id", mid, mlen);
				if (nlen)
					fw_str(&f, "net", net, nlen);
				fw_int(&f, "uptime_ms", uptime_ms());
				frame_end(&f);
				agent_log("identity %s applied", want);
				return;
			}
		}
		sleep_ms(2);
	}
	send_error(s, id, "E_IDENTITY", "init did not apply the identity within %d ms",
		   IDENTITY_WAIT_MS);
}

int identity_dispatch(session_t *s, int64_t id, const char *t, const jdoc_t *d)
{
	if (!strcmp(t, "hello")) {
		regreet(s);
		return 1;
	}
	if (strcmp(t, "identity"))
		return 0;
	if (id == 0 || stream_find(s, id))
		send_error(s, id, "E_PROTO_ID", "request id must be > 0 and not in use");
	else
		set_identity(s, id, d);
	return 1;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int reseed_main(int argc, char **argv)
{
	struct {
		int entropy_count;
		int buf_size;
		unsigned char buf[SEED_BYTES];
	} req = {.entropy_count = 8 * SEED_BYTES, .buf_size = SEED_BYTES};
	if (argc != 2 || strlen(argv[1]) != 2 * SEED_BYTES) {
		fprintf(stderr, "usage: mvm-agent reseed HEX(%d bytes)\n", SEED_BYTES);
		return 2;
	}
	for (int i = 0; i < SEED_BYTES; i++) {
		int hi = hexval(argv[1][2 * i]), lo = hexval(argv[1][2 * i + 1]);
		if (hi < 0 || lo < 0) {
			fprintf(stderr, "mvm-agent reseed: not lowercase hex\n");
			return 2;
		}
		req.buf[i] = (unsigned char)(hi << 4 | lo);
	}
	int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY_COMPAT, &req) != 0 ||
	    ioctl(fd, RNDRESEEDCRNG_COMPAT) != 0) {
		perror("mvm-agent reseed");
		return 1;
	}
	close(fd);
	return 0;
}
