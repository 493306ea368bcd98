/* `run`: the run-entrypoint (function invocation). Unlike `exec` it is allowed
 * on sealed images, because the host cannot choose the program: the argv comes
 * from the image's baked wrapper file (g_cfg.wrapper, /etc/mvm/wrapper.json),
 * and the host only picks the mode, which is passed on as `--mode MODE`.
 * A wrapper file in the seed's shape ({module, function, format, working_dir,
 * mode}: no argv) is the wrapper's own config; then the program is the image's
 * /etc/mvm/entrypoint (-> /usr/lib/mvm/wrappers/runner), told the mode by
 * MVM_RUN_MODE (and `--mode MODE`).
 * Everything after the spawn is an ordinary exec stream with stdin. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRAPPER_MAX (64 * 1024)
#define ENTRYPOINT "/etc/mvm/entrypoint"

/* The seed's layout: exec /etc/mvm/entrypoint with MVM_RUN_MODE=mode. */
static void run_entrypoint(session_t *s, int64_t id, const char *mode)
{
	char text[64];
	snprintf(text, sizeof text, "{\"MVM_RUN_MODE\":\"%s\"}", mode);
	jdoc_t e;
	int bad = 0;
	if (json_parse(&e, text, strlen(text)) != 0)
		_exit(70);
	char **env = build_env(&e, 0, &bad);
	json_free(&e);
	if (bad) {
		send_error(s, id, "E_RUN_CONFIG", "cannot build the entrypoint environment");
		return;
	}
	char **argv = calloc(4, sizeof *argv); /* exec_spawn owns the array */
	if (!argv)
		_exit(70);
	argv[0] = ENTRYPOINT;
	argv[1] = "--mode";
	argv[2] = (char *)mode;
	exec_spawn(s, id, argv, env, NULL, 1, 0, 24, 80);
}

void run_start(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	const char *mode = NULL;
	size_t ml = 0;
	if (json_get_str(d, req, "mode", &mode, &ml) < 0 ||
	    (mode && strcmp(mode, "oneshot") && strcmp(mode, "longrunning"))) {
		send_error(s, id, "E_RUN_ARGS", "mode must be \"oneshot\" or \"longrunning\"");
		return;
	}
	if (!mode)
		mode = "oneshot";
	char *text = read_small_file(g_cfg.wrapper, WRAPPER_MAX);
	if (!text) {
		send_error(s, id, "E_RUN_NO_ENTRYPOINT", "this image has no function entrypoint (%s: %s)",
			   g_cfg.wrapper, strerror(errno));
		return;
	}
	jdoc_t w;
	size_t argc = 0;
	char **base = NULL;
	if (json_parse(&w, text, strlen(text)) != 0) {
		free(text);
		send_error(s, id, "E_RUN_CONFIG", "%s is not valid JSON", g_cfg.wrapper);
		return;
	}
	int bad = w.n[0].type != J_OBJ;
	if (!bad && json_get(&w, 0, "argv") < 0 && json_get(&w, 0, "module") >= 0) {
		json_free(&w);
		free(text);
		run_entrypoint(s, id, mode);
		return;
	}
	if (!bad)
		base = string_array(&w, json_get(&w, 0, "argv"), &argc);
	const char *cwd = NULL;
	size_t cwdlen = 0;
	if (!base || argc == 0 || json_get_str(&w, 0, "cwd", &cwd, &cwdlen) < 0 ||
	    (cwd && strlen(cwd) != cwdlen))
		bad = 1;
	char **env = bad ? NULL : build_env(&w, json_get(&w, 0, "env"), &bad);
	if (bad) {
		free(base);
		json_free(&w);
		free(text);
		send_error(s, id, "E_RUN_CONFIG", "%s needs argv [str..] and optional env, cwd",
			   g_cfg.wrapper);
		return;
	}
	char **argv = calloc(argc + 3, sizeof *argv);
	if (!argv)
		_exit(70);
	memcpy(argv, base, argc * sizeof *argv);
	argv[argc] = "--mode";
	argv[argc + 1] = (char *)mode;
	free(base);
	exec_spawn(s, id, argv, env, cwd, 1, 0, 24, 80);
	json_free(&w);
	free(text);
}
