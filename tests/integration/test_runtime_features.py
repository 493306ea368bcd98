"""Runtime features on real QEMU guests: port forwarding under load, health flips,
secrets that never leak, ro/rw volumes that persist, TAP networking in a private
network namespace, ``logs -f`` and a CLI race for one VM name.

All tests share one accessible image whose service is a small static echo
server compiled here (busybox ``nc -ll -e cat`` listens with a backlog of 1, so
200 simultaneous connects lose SYNs and wait out retransmits: that measures nc,
not the forward). The service runs as root, as dev images run their workload;
``exec`` runs as the agent's uid, so it kills the service the way the agent
itself does: through /init's control FIFO. A restart (not the first start) waits
a few seconds in ``pre_start`` so the unhealthy window is long enough to observe
however loaded the host is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, PortMapping, VmRequest
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import HealthCheck, Service
from mvm.engine.runtime.events import Event

from .conftest import qemu_pids
from .test_cli import MVMCTL, mvmctl

pytestmark = pytest.mark.qemu

ECHO_PORT = 7
RESTART_DELAY_S = 4

ECHOD_C = r"""
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	signal(SIGCHLD, SIG_IGN);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1024)) {
		perror("echod");
		return 1;
	}
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c < 0)
			continue;
		if (fork() == 0) {
			static char buf[65536];
			ssize_t n;
			close(s);
			while ((n = read(c, buf, sizeof buf)) > 0)
				for (ssize_t off = 0, w; off < n; off += w)
					if ((w = write(c, buf + off, n - off)) <= 0)
						_exit(1);
			_exit(0);
		}
		close(c);
	}
}
"""


def _rt_spec(echod: Path) -> ImageSpec:
    return ImageSpec(
        name="rtfeat",
        dev=True,
        services={
            "echo": Service(
                command=f"echo echo-service-start; exec /usr/bin/echod {ECHO_PORT}",
                pre_start=(
                    f"if [ -e /tmp/echo.ran ]; then sleep {RESTART_DELAY_S}; fi; "
                    "touch /tmp/echo.ran"
                ),
                restart="always",
            )
        },
        health_checks={
            "echo": HealthCheck(
                health_cmd="pidof echod", health_interval_secs=1, health_timeout_secs=2
            )
        },
        host_files={"/usr/bin/echod": str(echod)},
    )


@pytest.fixture(scope="module")
def rt_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    compiler = shutil.which("musl-gcc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the guest echo server")
    src = tmp_path_factory.mktemp("echod") / "echod.c"
    src.write_text(ECHOD_C)
    binary = src.with_suffix("")
    subprocess.run(
        [compiler, "-static", "-Os", "-Wall", "-Werror", "-s", "-o", str(binary), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return trio.run(build_offline_image, _rt_spec(binary))


def _home() -> Path:
    return Path(os.environ["MVM_HOME"])


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _our_vmms() -> set[int]:
    """QEMU processes of this test's ``$MVM_HOME`` (others may boot VMs meanwhile)."""
    home = str(_home()).encode()
    out = set()
    for pid in qemu_pids():
        try:
            if home in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except OSError:
            continue
    return out


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


# ------------------------------------------------------------------ 1. forward under load


async def _echo_once(port: int, payload: bytes) -> bytes:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    got = bytearray()
    async with stream, anyio.create_task_group() as tg:

        async def send() -> None:
            # A reset shows up on the receiving side as a short echo.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(payload)
                await stream.send_eof()

        tg.start_soon(send)
        while True:
            try:
                got += await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    return bytes(got)


async def _until_serving(port: int) -> None:
    """Ready is the agent's hello; the service inside starts a moment later."""
    with anyio.fail_after(60):
        while True:
            if await _echo_once(port, b"warm-up\n") == b"warm-up\n":
                return
            await anyio.sleep(0.2)


async def test_forward_200_concurrent_connections_byte_exact(
    rt_image: Image, free_port: int
) -> None:
    clients, size = 200, 64 * 1024
    payloads = [os.urandom(size) for _ in range(clients)]
    echoed: dict[int, bytes] = {}
    async with Engine.open() as engine:
        await engine.start(
            VmRequest(
                name="fwd200",
                image_dir=str(rt_image.directory),
                ports=(PortMapping(free_port, ECHO_PORT),),
            ),
            rt_image,
        )
        await _until_serving(free_port)
        started = time.monotonic()

        async def client(i: int) -> None:
            echoed[i] = await _echo_once(free_port, payloads[i])

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(clients):
                    tg.start_soon(client, i)
        elapsed = time.monotonic() - started
    bad = [i for i in range(clients) if echoed.get(i) != payloads[i]]
    assert not bad, f"{len(bad)} connections echoed wrong bytes, e.g. #{bad[0]}: " + (
        f"{len(echoed.get(bad[0], b''))} of {size} bytes"
    )
    print(f"200 x 64 KiB echoed through the forward in {elapsed:.1f}s")


# ------------------------------------------------------------------ 2. health flips


async def _next_health(events: AsyncIterator[Event], status: str) -> Event:
    async for event in events:
        if event.kind == "health.changed" and event.data.get("status") == status:
            return event
    raise AssertionError("event stream ended")


async def test_health_turns_unhealthy_on_kill_and_back_after_restart(rt_image: Image) -> None:
    async with Engine.open() as engine, engine.events() as events:
        vm = await engine.start(
            VmRequest(name="health1", image_dir=str(rt_image.directory)), rt_image
        )
        with anyio.fail_after(60):
            first = await _next_health(events, "healthy")
        assert first.vm == "health1" and first.data["service"] == "echo"
        killed = await vm.exec(["sh", "-c", "echo kill echo 9 > /run/mvm/ctl"])
        assert killed.code == 0, killed.stderr
        with anyio.fail_after(60):
            await _next_health(events, "unhealthy")
        # The CLI (another process, through the engine's agent mux) and the state row agree.
        health = await anyio.run_process(
            [*MVMCTL, "health", "health1"], check=False, stderr=subprocess.STDOUT
        )
        assert health.returncode == 1 and b"echo\tunhealthy" in health.stdout, health.stdout
        rec = await engine.store.get_vm("health1")
        assert rec is not None and json.loads(rec.health or "{}") == {"echo": "unhealthy"}
        # /init's restart policy brings the service back; health follows.
        with anyio.fail_after(60):
            await _next_health(events, "healthy")
        health = await anyio.run_process([*MVMCTL, "health", "health1"], check=False)
        assert health.returncode == 0 and b"echo\thealthy" in health.stdout, health.stdout
        pids = (await vm.exec(["pidof", "echod"])).stdout.split()
        assert len(pids) == 1
        # A guest that powers itself off ends the VM (health checks must not keep the
        # engine busy on the dead agent link).
        await (await vm.agent()).shutdown()
        with anyio.fail_after(30):
            assert await vm.wait() == 0


# ------------------------------------------------------------------ 3. secrets


def _files_containing(root: Path, needle: bytes, skip: set[Path]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path in skip or not path.is_file() or path.is_symlink():
            continue
        try:
            if needle in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    return hits


def test_secret_volume_is_readable_in_guest_and_never_leaks(
    rt_image: Image, tmp_path: Path
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    needle = secret.encode()
    sec_dir = tmp_path / "secrets"
    sec_dir.mkdir()
    (sec_dir / "token").write_text(secret + "\n")
    (sec_dir / "token").chmod(0o644)  # the workload (uid 990) reads it
    env = {**os.environ, "MVM_LOG_LEVEL": "debug"}  # the shim logs at debug too

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MVMCTL, "--log-level", "debug", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            check=False,
        )

    up = _ok(cli("up", str(rt_image.directory), "--name", "sec1", "-v", f"{sec_dir}:/mnt/secrets"))
    outputs = [up.stdout, up.stderr]
    try:
        read = _ok(cli("exec", "sec1", "--", "cat", "/mnt/secrets/token"))
        assert read.stdout == secret + "\n"
        outputs.append(read.stderr)
        listed = _ok(cli("exec", "sec1", "--", "ls", "-l", "/mnt/secrets"))
        assert "token" in listed.stdout
        logs = _ok(cli("logs", "sec1", "--all"))  # the raw console, where a leak would show
        assert "mvm-init: ready" in logs.stdout
        assert "/mnt/secrets" in logs.stdout  # the mount is logged, its contents are not
        outputs += [logs.stdout, logs.stderr]
        status = _ok(cli("status", "sec1"))
        outputs += [status.stdout, status.stderr]
        run_dir = _home() / "vms" / "sec1"
        (secret_image,) = run_dir.glob("vol-mnt-secrets*")
        assert stat.S_IMODE(secret_image.stat().st_mode) == 0o600
        shim_log = (run_dir / "shim.log").read_text()
        assert '"level": "debug"' in shim_log and "sec1" in shim_log  # debug really logged
        # The console log, the shim's log, the state DB (+WAL) and every run file.
        assert _files_containing(_home(), needle, skip={secret_image}) == []
    finally:
        down = cli("down", "sec1")
    outputs += [down.stdout, down.stderr]
    _ok(down)
    assert not [o for o in outputs if secret in o]
    assert _files_containing(_home(), needle, skip=set()) == []


# ------------------------------------------------------------------ 4. volumes


def test_readonly_config_and_persistent_data_volume(rt_image: Image, tmp_path: Path) -> None:
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    (config / "app.conf").write_text("mode=test\n")
    config.chmod(0o777)  # only the read-only mount may stop a write, not permissions
    (data / "seed.txt").write_text("seeded\n")
    # /init gives the volume's root to the workload's uid (root here); exec runs as the
    # agent's uid, so it writes into a world-writable folder seeded from the host.
    (data / "shared").mkdir()
    (data / "shared").chmod(0o777)
    volumes = ["-v", f"{config}:/mnt/config", "-v", f"{data}:/mnt/data:64"]

    _ok(mvmctl("up", str(rt_image.directory), "--name", "vol1", *volumes))
    try:
        assert _ok(mvmctl("exec", "vol1", "--", "cat", "/mnt/config/app.conf")).stdout == (
            "mode=test\n"
        )
        denied = mvmctl("exec", "vol1", "--", "sh", "-c", "echo x > /mnt/config/new")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        assert _ok(mvmctl("exec", "vol1", "--", "cat", "/mnt/data/seed.txt")).stdout == "seeded\n"
        _ok(
            mvmctl(
                "exec", "vol1", "--", "sh", "-c", "echo kept-$((6*7)) > /mnt/data/shared/out.txt"
            )
        )
        size_kb = _ok(mvmctl("exec", "vol1", "--", "df", "-k", "/mnt/data")).stdout
        total_kb = int(size_kb.splitlines()[1].split()[1])
        assert 50_000 < total_kb <= 65_536, size_kb
    finally:
        _ok(mvmctl("down", "vol1"))
    assert not (config / "new").exists() and not (data / "shared" / "out.txt").exists()

    _ok(mvmctl("up", str(rt_image.directory), "--name", "vol1", *volumes))
    try:
        again = _ok(mvmctl("exec", "vol1", "--", "cat", "/mnt/data/shared/out.txt"))
        assert again.stdout == "kept-42\n"
    finally:
        _ok(mvmctl("down", "vol1"))


def test_clones_get_the_snapshots_volumes_copy_on_write(rt_image: Image, tmp_path: Path) -> None:
    """A snapshot saves the volume disks at the instant of the memory image; each
    clone reads them as they were, writes to its own overlay, and neither the
    source, the snapshot nor a sibling sees those writes."""
    config, data = tmp_path / "config", tmp_path / "data"
    config.mkdir()
    data.mkdir()
    (config / "app.conf").write_text("mode=clone\n")
    (data / "shared").mkdir()
    (data / "shared").chmod(0o777)  # exec runs as the agent's uid
    vols = ["-v", f"{config}:/mnt/config", "-v", f"{data}:/mnt/data:32"]

    def sh(vm: str, script: str) -> str:
        return _ok(mvmctl("exec", vm, "--", "sh", "-c", script)).stdout

    _ok(mvmctl("up", str(rt_image.directory), "--name", "vsrc", *vols))
    try:
        # Written just before the snapshot: still in the guest's page cache.
        sh("vsrc", "echo before > /mnt/data/shared/note")
        _ok(mvmctl("snapshot", "vsrc", "--as", "volsnap"))
        sh("vsrc", "echo after-source > /mnt/data/shared/note")
        _ok(mvmctl("clone", "volsnap", "--name", "vc", "--count", "2"))
        for clone in ("vc-1", "vc-2"):
            assert sh(clone, "cat /mnt/data/shared/note") == "before\n"
            assert sh(clone, "cat /mnt/config/app.conf") == "mode=clone\n"
        sh("vc-1", "echo mine > /mnt/data/shared/c1 && sync")
        assert sh("vc-1", "cat /mnt/data/shared/c1") == "mine\n"
        assert sh("vc-2", "ls /mnt/data/shared") == "note\n"
        assert sh("vsrc", "ls /mnt/data/shared; cat /mnt/data/shared/note") == (
            "note\nafter-source\n"
        )
        overlays = sorted(p.name for p in (_home() / "vms" / "vc-1").glob("*.qcow2"))
        assert overlays == ["vol-mnt-data.qcow2"], overlays  # the ro disk is shared as is
    finally:
        down = mvmctl("down", "vc-1", "vc-2", "vsrc")
    _ok(down)
    assert not list((_home() / "vms").glob("vc-*/*.qcow2"))
    saved = sorted(p.name for p in (_home() / "snapshots" / "volsnap").iterdir())
    assert saved == ["snapshot.json", "state.bin", "vol0-mnt-config.img", "vol1-mnt-data.img"]
    _ok(mvmctl("snapshots", "--rm", "volsnap"))


# ------------------------------------------------------------------ 5. TAP networking


@pytest.fixture
def netns() -> Iterator[int]:
    """A private network namespace, held open by a sleeping process; the pid names it."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nft"):
        pytest.skip("TAP mode needs root, unshare and nft")
    holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
    try:
        ns = f"/proc/{holder.pid}/ns/net"
        _wait_for(lambda: os.readlink(ns) != os.readlink("/proc/self/ns/net"), 10, "netns")
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _in_ns(pid: int, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_ECHO_CLIENT = f"""
import socket, sys
payload = sys.argv[2].encode() * 1000
with socket.create_connection((sys.argv[1], {ECHO_PORT}), timeout=20) as s:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
sys.exit(0 if got == payload else 3)
"""


@dataclasses.dataclass(frozen=True)
class _NetState:
    taps: list[str]
    bridges: list[str]
    links: int
    nft_lines: int
    leases: list[str]


def _net_state(pid: int) -> _NetState:
    links = _ok(_in_ns(pid, "ip", "-o", "link", "show")).stdout.splitlines()
    names = [ln.split(":")[1].strip().split("@")[0] for ln in links]
    rules = _ok(_in_ns(pid, "nft", "list", "ruleset")).stdout
    leases = _home() / "net" / "leases"
    return _NetState(
        taps=sorted(n for n in names if n.startswith("mvmt")),
        bridges=sorted(n for n in names if n.startswith("brmt")),
        links=len(names),
        nft_lines=len([ln for ln in rules.splitlines() if ln.strip()]),
        leases=sorted(p.name for p in leases.iterdir()) if leases.is_dir() else [],
    )


def test_tap_mode_in_a_private_netns(
    rt_image: Image, netns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_NET_SUBNET", "10.213.7.0/28")
    monkeypatch.setenv("MVM_NET_BRIDGE", "brmt0")
    before = _net_state(netns)
    assert before.taps == [] and before.bridges == [] and before.leases == []
    up = _in_ns(netns, *MVMCTL, "up", str(rt_image.directory), "--name", "tap1", "--net", "tap")
    try:
        _ok(up)
        during = _net_state(netns)
        assert len(_our_vmms()) == 1
        assert during.leases == ["10.213.7.2"], during
        assert during.bridges == ["brmt0"] and len(during.taps) == 1, during
        assert during.links == before.links + 2 and during.nft_lines > before.nft_lines, during
        addr = _ok(_in_ns(netns, *MVMCTL, "exec", "tap1", "--", "ip", "-4", "addr", "show", "eth0"))
        assert "inet 10.213.7.2/28" in addr.stdout, addr.stdout
        route = _ok(_in_ns(netns, *MVMCTL, "exec", "tap1", "--", "ip", "route"))
        assert "default via 10.213.7.1" in route.stdout, route.stdout
        # The host side of the namespace talks to the guest's service over the bridge.
        echo = _in_ns(netns, MVMCTL[0], "-c", _ECHO_CLIENT, "10.213.7.2", "tap-ok")
        assert echo.returncode == 0, echo.stderr
    finally:
        down = _in_ns(netns, *MVMCTL, "down", "tap1")
    _ok(down)
    _wait_for(lambda: not _our_vmms(), 30, "the VMM to exit")
    assert _net_state(netns) == before


def _link_mac(pid: int, vm: str) -> str:
    link = _ok(_in_ns(pid, *MVMCTL, "exec", vm, "--", "cat", "/sys/class/net/eth0/address"))
    return link.stdout.strip()


def test_tap_clone_gets_its_own_tap_mac_and_address(
    rt_image: Image, netns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone of a TAP VM: its own TAP (a new lease), MAC and address, set by the
    agent + /init before its TAP joins the bridge; the source keeps serving."""
    monkeypatch.setenv("MVM_NET_SUBNET", "10.213.7.0/28")
    monkeypatch.setenv("MVM_NET_BRIDGE", "brmt0")
    before = _net_state(netns)
    _ok(_in_ns(netns, *MVMCTL, "up", str(rt_image.directory), "--name", "tsrc", "--net", "tap"))
    try:
        source_mac = _link_mac(netns, "tsrc")
        _ok(_in_ns(netns, *MVMCTL, "snapshot", "tsrc", "--as", "tapsnap"))
        _ok(_in_ns(netns, *MVMCTL, "clone", "tapsnap", "--name", "tclone"))
        during = _net_state(netns)
        assert during.leases == ["10.213.7.2", "10.213.7.3"], during
        assert len(during.taps) == 2, during
        addr = _ok(_in_ns(netns, *MVMCTL, "exec", "tclone", "--", "ip", "-4", "addr", "show"))
        assert "inet 10.213.7.3/28" in addr.stdout and "10.213.7.2" not in addr.stdout
        lease = json.loads((_home() / "net" / "leases" / "10.213.7.3").read_text())
        assert _link_mac(netns, "tclone") == lease["mac"] != source_mac
        route = _ok(_in_ns(netns, *MVMCTL, "exec", "tclone", "--", "ip", "route"))
        assert "default via 10.213.7.1" in route.stdout, route.stdout
        host = _ok(_in_ns(netns, *MVMCTL, "exec", "tclone", "--", "hostname"))
        assert host.stdout.strip() == "tclone"
        # Both answer on their own address, over the bridge, at the same time.
        for ip, word in (("10.213.7.3", "clone"), ("10.213.7.2", "source")):
            echo = _in_ns(netns, MVMCTL[0], "-c", _ECHO_CLIENT, ip, word)
            assert echo.returncode == 0, (ip, echo.stderr)
        assert _link_mac(netns, "tsrc") == source_mac
    finally:
        down = _in_ns(netns, *MVMCTL, "down", "tclone", "tsrc")
        _in_ns(netns, *MVMCTL, "snapshots", "--rm", "tapsnap")
    _ok(down)
    _wait_for(lambda: not _our_vmms(), 30, "the VMMs to exit")
    assert _net_state(netns) == before


# ------------------------------------------------------------------ 6. logs -f


class _LineReader:
    """Lines of a child's stdout, collected by a thread so waits can time out.

    Serial and service lines come from two sources and interleave in any order, so
    a wait looks at every line since a mark, not only at lines after the last match."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._stdout:
            self._queue.put(line)

    def mark(self) -> int:
        self._drain(0)
        return len(self.seen)

    def _drain(self, timeout: float) -> None:
        try:
            self.seen.append(
                self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
            )
            while True:
                self.seen.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def wait_for(self, needle: str, since: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.seen[since:]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {needle!r}; got:\n{''.join(self.seen)}")
            self._drain(min(left, 0.5))


def test_logs_follow_shows_new_serial_and_service_lines_and_ends_with_down(
    rt_image: Image,
) -> None:
    _ok(mvmctl("up", str(rt_image.directory), "--name", "follow1"))
    follow = subprocess.Popen(
        [*MVMCTL, "logs", "follow1", "-f", "--all"],  # --all: /init's lines too
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reader = _LineReader(follow)
        reader.wait_for("mvm-init: ready")
        reader.wait_for("[echo] echo-service-start")  # the service's log, via the agent
        # Lines that can only appear after the follow began: a kill and a restart.
        mark = reader.mark()
        _ok(mvmctl("exec", "follow1", "--", "sh", "-c", "echo kill echo 9 > /run/mvm/ctl"))
        reader.wait_for("mvm-init: service echo exited rc=137", since=mark)
        reader.wait_for("mvm-init: service echo started", since=mark, timeout=RESTART_DELAY_S + 60)
        reader.wait_for("[echo] echo-service-start", since=mark, timeout=30)
        _ok(mvmctl("down", "follow1"))
        assert follow.wait(timeout=30) == 0, follow.stderr.read() if follow.stderr else ""
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        mvmctl("down", "follow1")


# ------------------------------------------------------------------ name race


def test_two_clis_racing_for_one_name_get_one_winner(rt_image: Image) -> None:
    up = [*MVMCTL, "up", str(rt_image.directory), "--name", "same", "--boot-timeout", "30"]
    racers = [
        subprocess.Popen(up, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        results = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in racers]
        codes = sorted(rc for rc, _ in results)
        assert codes[0] == 0 and codes[1] != 0, results
        (loser,) = [err for rc, err in results if rc != 0]
        assert loser.startswith("error[E_NAME_TAKEN]") and len(loser.splitlines()) == 1, loser
        # A late third try loses the same way and leaves the winner alone too.
        late = subprocess.run(up, capture_output=True, text=True, timeout=180, check=False)
        assert late.returncode != 0 and late.stderr.startswith("error[E_NAME_TAKEN]")
        # The winner is intact: one VMM, running, its run files in place, serving exec.
        assert len(_our_vmms()) == 1
        rows = json.loads(_ok(mvmctl("ls", "--json")).stdout)
        assert [(r["name"], r["state"]) for r in rows] == [("same", "running")]
        run_dir = _home() / "vms" / "same"
        kept = {"agent.mux.sock", "agent.sock", "qmp.sock", "plan.json"}
        assert kept <= {p.name for p in run_dir.iterdir()}, sorted(run_dir.iterdir())
        assert _ok(mvmctl("exec", "same", "--", "hostname")).stdout == "same\n"
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
                p.wait()
        down = mvmctl("down", "same")
    _ok(down)
    _wait_for(lambda: not _our_vmms(), 30, "the VMM to exit")


async def test_engine_stop_keeps_a_file_just_written_to_a_data_volume(
    rt_image: Image, tmp_path: Path
) -> None:
    """Engine.stop powers the guest off (sync) before stopping the VMM, so a write
    still in the guest's page cache reaches the volume image (QMP quit alone lost it)."""
    from mvm.engine.request.volumes import Volume, persistent_volume_path

    data = tmp_path / "data"
    (data / "shared").mkdir(parents=True)
    (data / "shared").chmod(0o777)
    volume = Volume.parse(f"{data}:/mnt/data:16")
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="volsync", image_dir=str(rt_image.directory), volumes=(volume,)),
            rt_image,
        )
        wrote = await vm.exec(["sh", "-c", "echo synced-$((6*7)) > /mnt/data/shared/out.txt"])
        assert wrote.ok, wrote
        await engine.stop("volsync")
    image = persistent_volume_path("volsync", volume)
    out = subprocess.run(
        ["debugfs", "-R", "cat /shared/out.txt", str(image)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "synced-42\n"
