/* Health checks run by the agent itself: for each <health-dir>/<svc>/ with a
 * `cmd`, `/bin/sh -c "$cmd"` every `interval` seconds, killed after `timeout`.
 * Status changes are pushed to every greeted host as `health_changed`. */
#include "agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CHECKS 64
#define RESCAN_MS 1000
#define TIMEOUT_RC 124

enum { H_UNKNOWN, H_HEALTHY, H_UNHEALTHY };
static const char *const STATUS[] = {"unknown", "healthy", "unhealthy"};

typedef struct {
	char name[64];
	int status, rc, has_rc, timed_out;
	int64_t checked_uptime_ms, failures;
	int64_t interval_ms, timeout_ms;
	int64_t next_run, deadline;
	pid_t pid;
} check_t;

static check_t checks[MAX_CHECKS];
static size_t nchecks;
static int64_t next_rescan;

static int64_t read_seconds_ms(const char *dir, const char *file, int64_t dflt)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, file);
	char *s = read_small_file(path, 64);
	if (!s)
		return dflt;
	char *end;
	double v = strtod(s, &end);
	free(s);
	if (end == s || !(v > 0) || v > 86400.0)
		return dflt;
	int64_t ms = (int64_t)(v * 1000.0);
	return ms < 100 ? 100 : ms;
}

static void rescan(int64_t now)
{
	DIR *dir = opendir(g_cfg.health_dir);
	if (!dir)
		return;
	struct dirent *e;
	while ((e = readdir(dir)) && nchecks < MAX_CHECKS) {
		size_t len = strlen(e->d_name);
		if (!valid_service_name(e->d_name, len) || len >= sizeof checks[0].name)
			continue;
		int known = 0;
		for (size_t i = 0; i < nchecks; i++)
			if (!strcmp(checks[i].name, e->d_name))
				known = 1;
		char path[4096];
		struct stat sb;
		snprintf(path, sizeof path, "%s/%s/cmd", g_cfg.health_dir, e->d_name);
		if (known || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
			continue;
		check_t *c = &checks[nchecks++];
		memset(c, 0, sizeof *c);
		memcpy(c->name, e->d_name, len + 1);
		c->next_run = now;
	}
	closedir(dir);
}

static void run_check(check_t *c, int64_t now)
{
	char dir[4096], path[4200];
	snprintf(dir, sizeof dir, "%s/%s", g_cfg.health_dir, c->name);
	c->interval_ms = read_seconds_ms(dir, "interval", 10000);
	c->timeout_ms = read_seconds_ms(dir, "timeout", 5000);
	snprintf(path, sizeof path, "%s/cmd", dir);
	char *cmd = read_small_file(path, 16384);
	if (!cmd) { /* removed: try again later */
		c->next_run = now + c->interval_ms;
		return;
	}
	strip_trailing_ws(cmd);
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		setsid();
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
		}
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	free(cmd);
	if (pid < 0) {
		c->next_run = now + c->interval_ms;
		return;
	}
	c->pid = pid;
	c->timed_out = 0;
	c->deadline = now + c->timeout_ms;
}

static void broadcast(const check_t *c)
{
	for (session_t *s = g_sessions; s; s = s->next) {
		if (!s->up || s->dead)
			continue;
		frame_t f;
		frame_begin(&f, s, "health_changed", 0);
		fw_cstr(&f, "service", c->name);
		fw_cstr(&f, "status", STATUS[c->status]);
		frame_end(&f);
	}
}

void health_init(void) { next_rescan = 0; }

void health_tick(int64_t now)
{
	if (now >= next_rescan) {
		rescan(now);
		next_rescan = now + RESCAN_MS;
	}
	for (size_t i = 0; i < nchecks; i++) {
		check_t *c = &checks[i];
		if (c->pid > 0 && !c->timed_out && now >= c->deadline) {
			kill(-c->pid, SIGKILL);
			kill(c->pid, SIGKILL);
			c->timed_out = 1;
		} else if (c->pid == 0 && now >= c->next_run) {
			run_check(c, now);
		}
	}
}

int health_on_child_exit(pid_t pid, int status)
{
	for (size_t i = 0; i < nchecks; i++) {
		check_t *c = &checks[i];
		if (c->pid != pid)
			continue;
		c->pid = 0;
		if (c->timed_out)
			c->rc = TIMEOUT_RC;
		else if (WIFEXITED(status))
			c->rc = WEXITSTATUS(status);
		else
			c->rc = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
		c->has_rc = 1;
		c->checked_uptime_ms = uptime_ms();
		int old = c->status;
		c->status = c->rc == 0 ? H_HEALTHY : H_UNHEALTHY;
		c->failures = c->rc == 0 ? 0 : c->failures + 1;
		c->next_run = now_ms() + c->interval_ms;
		if (c->status != old)
			broadcast(c);
		return 1;
	}
	return 0;
}

int64_t health_next_deadline(void)
{
	int64_t next = next_rescan;
	for (size_t i = 0; i < nchecks; i++) {
		const check_t *c = &checks[i];
		int64_t t = c->pid > 0 ? (c->timed_out ? next : c->deadline) : c->next_run;
		if (t < next)
			next = t;
	}
	return next;
}

void health_reply(session_t *s, int64_t id)
{
	next_rescan = 0; /* pick up checks added since the last rescan */
	health_tick(now_ms());
	frame_t f;
	frame_begin(&f, s, "health", id);
	fw_obj_begin(&f, "services");
	for (size_t i = 0; i < nchecks; i++) {
		const check_t *c = &checks[i];
		fw_obj_begin(&f, c->name);
		fw_cstr(&f, "status", STATUS[c->status]);
		if (c->has_rc) {
			fw_int(&f, "rc", c->rc);
			fw_int(&f, "checked_uptime_ms", c->checked_uptime_ms);
		} else {
			fw_null(&f, "rc");
			fw_null(&f, "checked_uptime_ms");
		}
		fw_int(&f, "failures", c->failures);
		fw_obj_end(&f);
	}
	fw_obj_end(&f);
	frame_end(&f);
}
