"""The guest /init without a VM: syntax, then a real run as PID 1 of a container.

The container is the real image tree (written by the image builder's
``_populate``, the same contract a VM boots) in fresh mount/PID/net/UTS
namespaces, so /init mounts, drops privileges, supervises and reads its control
FIFO exactly as in a guest; only the kernel is the host's. Booting a real
kernel is the QEMU integration tests' job.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm.backends.guest.build import agent_binary, init_script
from mvm.backends.image.builder import BUSYBOX, image_meta
from mvm.backends.image.tree import _populate, _Tree
from mvm.engine.images.imagespec import ImageSpec, Service, Uids


def test_init_is_executable_posix_sh() -> None:
    init = init_script()
    assert init.is_file() and os.access(init, os.X_OK)
    assert init.read_text().startswith("#!/bin/busybox sh\n")
    for shell in ("busybox sh", "dash", "bash --posix"):
        argv = [*shell.split(), "-n", str(init)]
        if shutil.which(argv[0]) is None:
            continue
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{shell}: {result.stderr}"


def test_init_uses_only_busybox_applets() -> None:
    """Every command /init runs exists in the guest (busybox applets or our agent)."""
    applets = set(
        subprocess.run(
            [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    text = init_script().read_text()
    used = {
        "mount",
        "mkfifo",
        "chown",
        "chmod",
        "sysctl",
        "hostname",
        "ip",
        "setsid",
        "cttyhack",
        "poweroff",
        "reboot",
        "usleep",
        "kill",
        "sleep",
        "date",
        "grep",
        "cat",
        "mkdir",
        "rm",
        "ln",
        "sync",
    }
    for name in used:
        assert re.search(rf"\b{name}\b", text), name
        assert name in applets or name in ("kill",), f"{name} is not a busybox applet"
    assert "setpriv --reuid" not in text.replace("$SETPRIV --reuid", "")  # busybox lacks it


def _namespaces_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--uts", "--fork", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_ns = pytest.mark.skipif(not _namespaces_usable(), reason="needs root and namespaces")


class Guest:
    """/init as PID 1 of a throwaway container; console lines arrive on a queue."""

    def __init__(self, tree: Path) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork",
             "--kill-child", "chroot", str(tree), "/init"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.console: list[str] = []
        self.claimed: set[int] = set()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first console line matching pattern that no earlier wait claimed.

        Lines of concurrent supervisors interleave in any order, so earlier
        unclaimed lines are searched too."""
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            for i in range(scanned, len(self.console)):
                match = re.search(pattern, self.console[i])
                if match and i not in self.claimed:
                    self.claimed.add(i)
                    return match
            scanned = len(self.console)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no console line matching {pattern!r}: {self.console}")
            try:
                self.console.append(self.lines.get(timeout=left))
            except queue.Empty:
                continue

    def init_pid(self) -> int:
        """Host pid of the container's PID 1 (the child of unshare)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                return int(pids[0])
            time.sleep(0.01)
        raise AssertionError("container init did not start")

    def run(self, script: str) -> str:
        """A root shell inside the container's namespaces and root."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.init_pid()), "-m", "-p", "-u", "-n", "-r", "-w",
             "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.init_pid(), 9)
            except (AssertionError, ProcessLookupError):
                self.proc.kill()
        self.proc.wait(timeout=10)


def _tree(tmp_path: Path, spec: ImageSpec) -> Path:
    applets = sorted(
        subprocess.run(
            [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    tree = _Tree(tmp_path / "tree")
    _populate(tree, spec, image_meta(spec, "0" * 64), agent_binary(), init_script(), BUSYBOX,
              applets, [])  # fmt: skip
    return tree.root


@pytest.fixture
def guest_factory(tmp_path: Path) -> Iterator[list[Guest]]:
    guests: list[Guest] = []
    yield guests
    for g in guests:
        g.stop()


@needs_ns
def test_command_entrypoint_prints_exit_status(tmp_path: Path, guest_factory: list[Guest]) -> None:
    spec = ImageSpec(
        name="cmd",
        command=("sh", "-c", "echo uid=$(id -u) home=$HOME; echo oops >&2; exit 7"),
        uids=Uids(entrypoint=1000),
    )
    guest = Guest(_tree(tmp_path, spec))
    guest_factory.append(guest)
    guest.wait_line(r"^mvm-init: filesystems mounted$")
    guest.wait_line(
        r"^mvm-init: image cmd kind=command uid=1000 sealed=1 seccomp=standard host=cmd$"
    )
    guest.wait_line(r"^uid=1000 home=/home/app$")
    # stderr is tagged for `run --attached` and always precedes the exit line
    guest.wait_line(r"^mvm-err: oops$")
    guest.wait_line(r"^mvm-exit: 7$")
    guest.wait_line(r"^mvm-init: poweroff$")


@needs_ns
def test_services_are_supervised_and_controlled(tmp_path: Path, guest_factory: list[Guest]) -> None:
    spec = ImageSpec(
        name="svc",
        services={
            "web": Service(
                command='echo "web up as $(id -u) $GREETING"; exec sleep 300',
                pre_start="echo prestart ran",
                env={"GREETING": "hi there"},
                restart="always",
            ),
            "once": Service(command="echo once done", restart="on-failure"),
        },
        uids=Uids(entrypoint=1000),
        dev=True,
    )
    guest = Guest(_tree(tmp_path, spec))
    guest_factory.append(guest)
    first = int(guest.wait_line(r"^mvm-init: service web started pid=(\d+)$")[1])
    guest.wait_line(r"^mvm-init: service once stays down \(restart=on-failure\)$")
    guest.wait_line(r"^mvm-init: service once exited rc=0$")
    # Accessible: the agent execs through spawnd (root), which only the agent's uid may use.
    guest.wait_line(
        r"^mvm-init: agent started pid=\d+ "
        r"\(--vsock 5252 --spawn /run/mvm/spawn.sock --console-shell /bin/sh\)$"
    )
    spawnd = int(guest.wait_line(r"^mvm-init: spawnd started pid=(\d+) \(uid 1000\)$")[1])
    assert re.search(r"^Uid:\s+0\s", guest.run(f"cat /proc/{spawnd}/status"), re.M)
    sock = guest.run("stat -c '%a %u:%g %F' /run/mvm/spawn.sock").strip()
    assert sock == "660 0:990 socket"

    ctl = guest.run("stat -c '%a %u:%g %F' /run/mvm/ctl").strip()
    assert ctl == "620 0:990 fifo"
    assert guest.run("hostname").strip() == "svc"
    assert guest.run("cat /proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "0"
    status = guest.run(f"cat /proc/{first}/status")  # pid as the container sees it
    assert re.search(r"^Uid:\s+1000\s+1000\s+1000\s+1000$", status, re.M)
    assert re.search(r"^Groups:\s*$", status, re.M)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    # A background job of ash ignores SIGINT/SIGQUIT; setpriv gives the defaults back.
    assert re.search(r"^SigIgn:\s+0+$", status, re.M), status
    assert re.search(r"^SigBlk:\s+0+$", status, re.M), status

    # The agent's request lines, as it writes them into the FIFO.
    guest.run("echo 'kill web 9' > /run/mvm/ctl")
    guest.wait_line(r"^mvm-init: service web exited rc=137$")
    second = int(guest.wait_line(r"^mvm-init: service web started pid=(\d+)$")[1])
    assert second != first
    guest.run("echo 'restart once' > /run/mvm/ctl")
    guest.wait_line(r"^mvm-init: service once started pid=\d+$")
    guest.wait_line(r"^mvm-init: service once exited rc=0$")  # its output is logged by now

    logs = guest.run("cat /var/log/mvm/web.log /var/log/mvm/once.log")
    assert logs.count("prestart ran") == 2
    assert logs.count("web up as 1000 hi there") == 2
    assert logs.count("once done") == 2
    guest.run("echo poweroff > /run/mvm/ctl")
    guest.wait_line(r"^mvm-init: poweroff$")


def test_init_defines_functions_before_calling_them_at_top_level() -> None:
    """ash runs /init top to bottom: a top-level call above its definition is 'not found'."""
    lines = init_script().read_text().splitlines()
    defined: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = re.match(r"^([a-z_]+)\(\) \{", line)
        if match:
            defined[match.group(1)] = number
    assert {"mount_volumes", "configure_network", "setup_machine_id"} <= defined.keys()
    for number, line in enumerate(lines):
        words = line.split()
        if not words or line[0].isspace():
            continue  # only calls made while /init runs top level (not inside bodies)
        name = words[0]
        if name in defined and not line.startswith(f"{name}()"):
            assert defined[name] < number, f"line {number + 1}: {name} called before defined"


@needs_ns
def test_shell_entrypoint_runs_the_console_shell_as_its_uid(
    tmp_path: Path, guest_factory: list[Guest]
) -> None:
    """/init runs the image's console shell (entrypoint.shell) and records its pid,
    which the agent's `uids` request reads for `mvmctl status`."""
    spec = ImageSpec(
        name="sh",
        shell="/bin/sh",
        services={"bg": Service(command="exec sleep 300")},  # dev-image.txt: shell + services
        uids=Uids(entrypoint=1000),
        dev=True,
    )
    tree = _tree(tmp_path, spec)
    assert "MVM_SHELL=/bin/sh\n" in (tree / "etc/mvm/image.env").read_text()
    guest = Guest(tree)
    guest_factory.append(guest)
    guest.wait_line(r"^mvm-init: shell /bin/sh as uid 1000$")
    guest.wait_line(r"^mvm-init: service bg started pid=\d+$")
    pid = guest.run("cat /run/mvm/entrypoint.pid").strip()
    status = guest.run(f"cat /proc/{pid}/status")
    assert re.search(r"^Uid:\s+1000\s+1000\s+1000\s+1000$", status, re.M)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert guest.run(f"cat /proc/{pid}/cmdline | tr '\\0' ' '").strip() == "/bin/sh -l"


@needs_ns
def test_sealed_image_starts_no_spawnd(tmp_path: Path, guest_factory: list[Guest]) -> None:
    spec = ImageSpec(name="cmd", command=("sleep", "300"))
    guest = Guest(_tree(tmp_path, spec))
    guest_factory.append(guest)
    guest.wait_line(r"^mvm-init: agent started pid=\d+ \(--vsock 5252 --sealed\)$")
    guest.wait_line(r"^mvm-init: entrypoint command as uid 1000$")
    assert "spawnd" not in "\n".join(guest.console)
    assert guest.run("test -e /run/mvm/spawn.sock || echo absent").strip() == "absent"
    pid = guest.run("cat /run/mvm/entrypoint.pid").strip()
    assert re.search(r"^Uid:\s+1000\s", guest.run(f"cat /proc/{pid}/status"), re.M)


@needs_ns
def test_top_level_services_run_next_to_a_command_entrypoint(
    tmp_path: Path, guest_factory: list[Guest]
) -> None:
    """mkGuest's top-level `services` are auxiliary: they run in the background while the
    command entrypoint keeps the foreground (argv service commands are exec'd as is)."""
    spec = ImageSpec(
        name="aux",
        command=(
            "sh",
            "-c",
            "until [ -s /tmp/aux-up ]; do sleep 0.05; done; cat /tmp/aux-up; exit 3",
        ),
        services={
            "aux": Service(command=("sh", "-c", "echo aux-ran > /tmp/aux-up; exec sleep 300"))
        },
        dev=True,
    )
    guest = Guest(_tree(tmp_path, spec))
    guest_factory.append(guest)
    guest.wait_line(r"^mvm-init: service aux started pid=\d+$")
    guest.wait_line(r"^mvm-init: services started: aux$")
    guest.wait_line(r"^mvm-init: entrypoint command as uid 0$")
    guest.wait_line(r"^aux-ran$")
    guest.wait_line(r"^mvm-exit: 3$")
