/* `logs`: lines of <log-dir>/<service>.log as `log` frames, then `end`; with
 * follow, the files are polled every 100 ms until the host closes the id.
 * Output is produced only while the session's queue is short, so a huge log
 * is streamed, never loaded. */
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FOLLOW_POLL_MS 100
#define MAX_LINE (16 * 1024)
#define MAX_FILES 256

static int has_file(const stream_t *st, const char *service)
{
	for (size_t i = 0; i < st->nfiles; i++)
		if (!strcmp(st->files[i].service, service))
			return 1;
	return 0;
}

static void add_file(stream_t *st, const char *service)
{
	if (has_file(st, service) || st->nfiles >= MAX_FILES)
		return;
	logfile_t *f = realloc(st->files, (st->nfiles + 1) * sizeof *f);
	if (!f)
		_exit(70);
	st->files = f;
	memset(&f[st->nfiles], 0, sizeof *f);
	f[st->nfiles].service = strdup(service);
	if (!f[st->nfiles].service)
		_exit(70);
	st->nfiles++;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every <name>.log in the log dir, in name order. */
static void scan_dir(stream_t *st)
{
	DIR *dir = opendir(g_cfg.log_dir);
	if (!dir)
		return;
	char *names[MAX_FILES];
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(dir)) && n < MAX_FILES) {
		size_t len = strlen(e->d_name);
		if (len > 4 && !strcmp(e->d_name + len - 4, ".log") &&
		    valid_service_name(e->d_name, len - 4)) {
			names[n] = strndup(e->d_name, len - 4);
			if (names[n])
				n++;
		}
	}
	closedir(dir);
	qsort(names, n, sizeof *names, cmp_str);
	for (size_t i = 0; i < n; i++) {
		add_file(st, names[i]);
		free(names[i]);
	}
}

void logs_start(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	const char *service = NULL;
	size_t n = 0;
	int follow = 0;
	int r = json_get_str(d, req, "service", &service, &n);
	if (r < 0 || (r == 1 && !valid_service_name(service, n)) ||
	    json_get_bool(d, req, "follow", &follow) < 0) {
		send_error(s, id, "E_LOGS_ARGS", "service must be a service name, follow a bool");
		return;
	}
	stream_t *st = stream_new(s, id, ST_LOGS);
	st->follow = follow;
	if (r == 1) {
		st->service = strdup(service);
		if (!st->service)
			_exit(70);
		add_file(st, service);
	} else {
		scan_dir(st);
	}
	logs_pump(st, now_ms());
}

static void emit_line(stream_t *st, logfile_t *f, const char *line, size_t n)
{
	if (n && line[n - 1] == '\r')
		n--;
	frame_t fr;
	frame_begin(&fr, st->s, "log", st->id);
	fw_cstr(&fr, "service", f->service);
	fw_str(&fr, "line", line, n);
	frame_end(&fr);
}

/* Reads more of one file; returns 1 if it is not at EOF yet. */
static int pump_file(stream_t *st, logfile_t *f)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s.log", g_cfg.log_dir, f->service);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return 0;
	struct stat sb;
	if (fstat(fd, &sb) == 0 && sb.st_size < f->offset) { /* truncated or rotated */
		f->offset = 0;
		buf_consume(&f->partial, buf_avail(&f->partial));
	}
	char tmp[CHUNK];
	int more = 0;
	while (buf_avail(&st->s->out) < OUT_HIGH) {
		ssize_t r = pread(fd, tmp, sizeof tmp, f->offset);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		f->offset += r;
		size_t start = 0;
		for (size_t i = 0; i < (size_t)r; i++) {
			if (tmp[i] != '\n')
				continue;
			if (buf_avail(&f->partial)) {
				buf_put(&f->partial, tmp + start, i - start);
				emit_line(st, f, buf_data(&f->partial), buf_avail(&f->partial));
				buf_consume(&f->partial, buf_avail(&f->partial));
			} else {
				emit_line(st, f, tmp + start, i - start);
			}
			start = i + 1;
		}
		buf_put(&f->partial, tmp + start, (size_t)r - start);
		if (buf_avail(&f->partial) >= MAX_LINE) { /* an endless line: ship it in pieces */
			emit_line(st, f, buf_data(&f->partial), buf_avail(&f->partial));
			buf_consume(&f->partial, buf_avail(&f->partial));
		}
	}
	if (buf_avail(&st->s->out) >= OUT_HIGH)
		more = 1;
	close(fd);
	return more;
}

void logs_pump(stream_t *st, int64_t now)
{
	if (st->dead || buf_avail(&st->s->out) >= OUT_HIGH)
		return;
	if (st->follow && now < st->next_scan)
		return;
	if (st->follow && !st->service)
		scan_dir(st);
	int more = 0;
	for (size_t i = 0; i < st->nfiles && !more; i++)
		more = pump_file(st, &st->files[i]);
	if (more) {
		g_more_work = 1;
		return;
	}
	if (st->follow) {
		st->next_scan = now + FOLLOW_POLL_MS;
		return;
	}
	for (size_t i = 0; i < st->nfiles; i++) /* a last line without its newline */
		if (buf_avail(&st->files[i].partial))
			emit_line(st, &st->files[i], buf_data(&st->files[i].partial),
				  buf_avail(&st->files[i].partial));
	send_simple(st->s, "end", st->id);
	logs_close(st);
	st->dead = 1;
}

void logs_close(stream_t *st)
{
	for (size_t i = 0; i < st->nfiles; i++) {
		free(st->files[i].service);
		buf_free(&st->files[i].partial);
	}
	free(st->files);
	free(st->service);
	st->files = NULL;
	st->service = NULL;
	st->nfiles = 0;
}
