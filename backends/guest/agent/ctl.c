/* `service` and `shutdown`: the agent runs unprivileged, so it asks /init
 * (root, reading the control FIFO) to act. A FIFO nobody reads is an error the
 * host sees, not a hang. */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int valid_service_name(const char *name, size_t n)
{
	if (n == 0 || n > 63 || strlen(name) < n)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-')))
			return 0;
	}
	return 1;
}

static void ctl_send(session_t *s, int64_t id, const char *line)
{
	int fd = open(g_cfg.ctl, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		send_error(s, id, "E_CTL", "control FIFO %s: %s", g_cfg.ctl,
			   errno == ENXIO ? "init is not listening" : strerror(errno));
		return;
	}
	size_t n = strlen(line);
	ssize_t w = write(fd, line, n); /* <= PIPE_BUF: atomic */
	int e = errno;
	close(fd);
	if (w != (ssize_t)n) {
		send_error(s, id, "E_CTL", "control FIFO %s: %s", g_cfg.ctl,
			   w < 0 ? strerror(e) : "short write");
		return;
	}
	send_simple(s, "ok", id);
}

void ctl_service(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	const char *name, *action;
	size_t nlen, alen;
	int64_t sig = 15;
	if (json_get_str(d, req, "name", &name, &nlen) != 1 || !valid_service_name(name, nlen)) {
		send_error(s, id, "E_SERVICE_ARGS", "name must be a service name");
		return;
	}
	if (json_get_str(d, req, "action", &action, &alen) != 1 ||
	    (strcmp(action, "restart") && strcmp(action, "kill"))) {
		send_error(s, id, "E_SERVICE_ARGS", "action must be restart or kill");
		return;
	}
	if (json_get_int(d, req, "sig", &sig) < 0 || sig < 1 || sig > 64) {
		send_error(s, id, "E_SERVICE_ARGS", "sig must be an integer 1..64");
		return;
	}
	char line[128];
	if (!strcmp(action, "restart"))
		snprintf(line, sizeof line, "restart %s\n", name);
	else
		snprintf(line, sizeof line, "kill %s %d\n", name, (int)sig);
	ctl_send(s, id, line);
}

void ctl_shutdown(session_t *s, int64_t id, const jdoc_t *d, int req)
{
	int reboot = 0;
	if (json_get_bool(d, req, "reboot", &reboot) < 0) {
		send_error(s, id, "E_SHUTDOWN_ARGS", "reboot must be a bool");
		return;
	}
	ctl_send(s, id, reboot ? "reboot\n" : "poweroff\n");
}
