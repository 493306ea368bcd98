/* `console` (an interactive PTY running the image's console shell as the
 * entrypoint's uid) and `uids` (what /proc says the agent, the entrypoint and
 * the services really run as, so the host can cross-check the image's
 * declared uids). */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MVM_AGENT_SEALED
/* Not compiled into the sealed agent (MVM_AGENT_SEALED). */
void do_console(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	if (g_cfg.sealed) {
		send_error(s, id, "E_SEALED", "console is disabled on sealed images");
		return;
	}
	int64_t rows = 24, cols = 80;
	int bad = json_get_int(d, req, "rows", &rows) < 0 || json_get_int(d, req, "cols", &cols) < 0;
	char **env = bad ? NULL : build_env(d, json_get(d, req, "env"), &bad);
	if (bad) {
		send_error(s, id, "E_EXEC_ARGS", "bad console fields (rows, cols, env)");
		return;
	}
	if (rows < 1 || rows > 1000)
		rows = 24;
	if (cols < 1 || cols > 1000)
		cols = 80;
	/* The shell entrypoint's program (e.g. /bin/bash; /init passes MVM_SHELL), else sh. */
	const char *prog = g_cfg.console_shell;
	char *shell = strdup(prog && prog[0] == '/' ? prog : "/bin/sh");
	char **argv = calloc(3, sizeof *argv);
	if (!argv || !shell)
		_exit(70);
	argv[0] = shell;
	argv[1] = "-l";
	exec_spawn_ex(s, id, argv, env, NULL, 1, 1, rows, cols, 1, SPAWN_CONSOLE);
	free(shell);
}
#endif

/* Fills uid[4]/gid[4] (real, effective, saved, fs) from /proc/PID/status. */
static int proc_ids(const char *pid, long uid[4], long gid[4])
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%s/status", pid);
	char *text = read_small_file(path, 65536);
	if (!text)
		return -1;
	int got = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (!strncmp(line, "Uid:", 4))
			got += sscanf(line + 4, "%ld %ld %ld %ld", &uid[0], &uid[1], &uid[2], &uid[3]);
		else if (!strncmp(line, "Gid:", 4))
			got += sscanf(line + 4, "%ld %ld %ld %ld", &gid[0], &gid[1], &gid[2], &gid[3]);
	}
	free(text);
	return got == 8 ? 0 : -1;
}

/* `"key": {"pid", "uid", "euid", "suid", "fsuid", "gid"}`, or null if the process is gone. */
static void fw_proc(frame_t *f, const char *key, const char *pid)
{
	long uid[4], gid[4];
	if (!pid || proc_ids(pid, uid, gid)) {
		fw_null(f, key);
		return;
	}
	fw_obj_begin(f, key);
	fw_int(f, "pid", strcmp(pid, "self") ? (int64_t)atol(pid) : (int64_t)getpid());
	fw_int(f, "uid", uid[0]);
	fw_int(f, "euid", uid[1]);
	fw_int(f, "suid", uid[2]);
	fw_int(f, "fsuid", uid[3]);
	fw_int(f, "gid", gid[0]);
	fw_obj_end(f);
}

static char *read_pid(const char *path)
{
	char *p = read_small_file(path, 64);
	if (p)
		strip_trailing_ws(p);
	if (p && (!p[0] || strspn(p, "0123456789") != strlen(p))) {
		free(p);
		return NULL;
	}
	return p;
}

void uids_reply(session_t *s, int64_t id)
{
	frame_t f;
	char path[512];
	frame_begin(&f, s, "uids", id);
	fw_proc(&f, "agent", "self");
	snprintf(path, sizeof path, "%s/entrypoint.pid", g_cfg.run_dir);
	char *pid = read_pid(path);
	fw_proc(&f, "entrypoint", pid);
	free(pid);
	fw_obj_begin(&f, "services");
	snprintf(path, sizeof path, "%s/services", g_cfg.run_dir);
	DIR *dir = opendir(path);
	struct dirent *e;
	while (dir && (e = readdir(dir))) {
		size_t n = strlen(e->d_name);
		if (n < 5 || strcmp(e->d_name + n - 4, ".pid") || !valid_service_name(e->d_name, n - 4))
			continue;
		char name[64];
		snprintf(name, sizeof name, "%.*s", (int)(n - 4), e->d_name);
		snprintf(path, sizeof path, "%s/services/%s", g_cfg.run_dir, e->d_name);
		pid = read_pid(path);
		fw_proc(&f, name, pid);
		free(pid);
	}
	if (dir)
		closedir(dir);
	fw_obj_end(&f);
	frame_end(&f);
}
