"""SSH builder against a real OpenSSH sshd on loopback, with a fake ``nix`` on its PATH.

Each test starts its own throwaway ``sshd -D -e`` (own host key, AuthorizedKeysFile
in a temp dir, StrictModes no, SetEnv PATH with the fake nix first). The fake nix
takes the real ``nix build`` command line; files in the flake control it (``sleep``:
seconds to take, ``fail``: fail like a broken derivation, ``noresult``: succeed
without output) and it records its pid so the tests can prove it was killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from fakes.fake_nix import write_fake_nix

from mvm.actors.builder_vm import builder_pool
from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.builders import BuildJob
from mvm.engine.builders.cache import BuildCache
from mvm.engine.builders.ssh import SshBuilder, SshTarget

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    not (Path(SSHD).exists() and shutil.which("ssh-keygen") and os.geteuid() == 0),
    reason="needs OpenSSH's sshd and ssh-keygen, run as root",
)


@attrs.frozen
class Sshd:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    key: Path
    other_key: Path

    def target(self, **kwargs: object) -> SshTarget:
        fields: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "root",
            "key": self.key,
            "known_hosts": None,
            "workdir": str(self.root / "remote"),
        }
        fields.update(kwargs)
        return SshTarget(**fields)  # type: ignore[arg-type]

    def nix_pids(self) -> list[int]:
        return [int(p.name) for p in (self.root / "pids").iterdir()]

    def nix_runs(self) -> int:
        log = self.root / "nix.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def remote_dirs(self) -> list[Path]:
        return list((self.root / "remote").iterdir())

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(x) for x in out.stdout.split()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    root = tmp_path
    for sub in ("bin", "pids", "store", "remote"):
        (root / sub).mkdir()
    write_fake_nix(root / "bin").rename(root / "bin" / "nix")
    for name in ("host_key", "client_key", "other_key"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = _free_port()
    env = (
        f"PATH={root}/bin:/usr/local/bin:/usr/bin:/bin FAKE_NIX_LOG={root}/nix.log "
        f"FAKE_NIX_PIDS={root}/pids FAKE_NIX_STORE={root}/store"
    )
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/host_key\n"
        f"PidFile none\nAuthorizedKeysFile {root}/authorized_keys\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        f"SetEnv {env}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian sshd's privsep dir
    proc = subprocess.Popen(
        [SSHD, "-f", str(root / "sshd_config"), "-D", "-e"],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "sshd.log", "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "sshd.log").read_text()) from None
            time.sleep(0.02)
    server = Sshd(root, port, proc, root / "client_key", root / "other_key")
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(5)
        for pid in server.nix_pids():  # a test that lost its connection leaves these
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def make_flake(root: Path, name: str, **controls: str) -> Path:
    flake = root / "src" / name
    flake.mkdir(parents=True)
    (flake / "flake.nix").write_text(f"{{ outputs = _: {{ }}; }} # {name}\n")
    (flake / ".git").mkdir()
    (flake / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    for key, value in controls.items():
        (flake / key).write_text(value)
    return flake


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_build_over_ssh_streams_logs_fetches_artifacts_and_cleans_up(sshd: Sshd) -> None:
    flake = make_flake(sshd.root, "web")
    cache = BuildCache(sshd.root / "cache")
    logs: list[str] = []
    async with builder_pool(SshBuilder(sshd.target()), size=2, cache=cache) as pool:
        first = await pool.build(BuildJob(name="web", source=flake, attr="web"), on_log=logs.append)
        again = await pool.build(BuildJob(name="web", source=flake, attr="web"))
    assert not first.cache_hit and first.mode == "ssh"
    assert again.cache_hit and again.key == first.key
    assert first.image.kernel.read_text() == "kernel web\n"
    assert first.image.rootfs.read_text() == (flake / "flake.nix").read_text()
    assert first.image.meta["name"] == "web"
    assert "building '/nix/store/fake-web.drv'..." in logs and "done web" in logs
    assert sshd.nix_runs() == 1
    assert sshd.remote_dirs() == []  # remote work dir deleted
    assert cache.staging_dirs() == []


async def test_eight_parallel_ssh_builds_in_one_loop(sshd: Sshd) -> None:
    flakes = [make_flake(sshd.root, f"p{i}", sleep="1.5") for i in range(8)]
    cache = BuildCache(sshd.root / "cache")
    started = time.monotonic()
    results = []
    async with builder_pool(SshBuilder(sshd.target()), size=8, cache=cache) as pool:

        async def one(flake: Path) -> None:
            results.append(await pool.build(BuildJob(name=flake.name, source=flake)))

        async with anyio.create_task_group() as tg:
            for flake in flakes:
                tg.start_soon(one, flake)
        peak = pool.stats.peak_running
    elapsed = time.monotonic() - started
    assert len({r.key for r in results}) == 8 and not any(r.cache_hit for r in results)
    assert sshd.nix_runs() == 8
    assert peak == 8  # all eight ran at once in this one event loop
    assert elapsed < 8 * 1.5 / 2, elapsed  # overlapped (serial would be 12 s), with slack for load
    assert sshd.remote_dirs() == []


async def test_wrong_key_is_an_auth_error_in_the_connect_phase(sshd: Sshd) -> None:
    flake = make_flake(sshd.root, "x")
    builder = SshBuilder(sshd.target(key=sshd.other_key))
    async with builder_pool(builder, cache=BuildCache(sshd.root / "cache")) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="x", source=flake))
    assert (info.value.code, info.value.phase) == ("E_BUILD_SSH_AUTH", "connect")
    assert sshd.nix_runs() == 0


async def test_unreachable_builder_is_a_connect_error(sshd: Sshd) -> None:
    flake = make_flake(sshd.root, "x")
    builder = SshBuilder(sshd.target(port=_free_port()))
    async with builder_pool(builder, cache=BuildCache(sshd.root / "cache")) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="x", source=flake))
    assert (info.value.code, info.value.phase) == ("E_BUILD_SSH_CONNECT", "connect")


async def test_nix_failure_names_the_build_phase_and_cleans_the_remote(sshd: Sshd) -> None:
    flake = make_flake(sshd.root, "broken", fail="")
    cache = BuildCache(sshd.root / "cache")
    async with builder_pool(SshBuilder(sshd.target()), cache=cache) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="broken", source=flake))
    assert (info.value.code, info.value.phase) == ("E_BUILD_NIX_FAILED", "build")
    assert "error: builder for '/nix/store/fake-default.drv' failed" in info.value.message
    assert info.value.one_line().startswith("error[E_BUILD_NIX_FAILED]: build: nix build")
    assert sshd.remote_dirs() == [] and cache.staging_dirs() == []


async def test_missing_artifacts_fail_in_the_fetch_phase(sshd: Sshd) -> None:
    flake = make_flake(sshd.root, "empty", noresult="")
    async with builder_pool(SshBuilder(sshd.target()), cache=BuildCache(sshd.root / "c")) as pool:
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="empty", source=flake))
    assert (info.value.code, info.value.phase) == ("E_BUILD_ARTIFACTS", "fetch")
    assert sshd.remote_dirs() == []


async def test_disconnect_mid_build_is_a_phase_named_error(sshd: Sshd) -> None:
    flake = make_flake(sshd.root, "slow", sleep="30")
    cache = BuildCache(sshd.root / "cache")
    async with (
        builder_pool(SshBuilder(sshd.target()), cache=cache) as pool,
        anyio.create_task_group() as tg,
    ):

        async def cut_when_building() -> None:
            while not sshd.nix_pids():
                await anyio.sleep(0.02)
            for pid in sshd.session_pids():  # the network goes away
                os.kill(pid, signal.SIGKILL)

        tg.start_soon(cut_when_building)
        with pytest.raises(BuildPhaseError) as info:
            await pool.build(BuildJob(name="slow", source=flake))
    assert (info.value.code, info.value.phase) == ("E_BUILD_SSH_DISCONNECT", "build")
    assert cache.staging_dirs() == []


async def test_cancelled_build_leaves_no_staging_dir_and_no_remote_process(sshd: Sshd) -> None:
    flakes = [make_flake(sshd.root, f"slow{i}", sleep="30") for i in range(2)]
    cache = BuildCache(sshd.root / "cache")
    with anyio.CancelScope() as scope:  # Ctrl-C cancels the command's scope like this
        async with (
            builder_pool(SshBuilder(sshd.target()), size=2, cache=cache) as pool,
            anyio.create_task_group() as tg,
        ):
            for flake in flakes:
                tg.start_soon(pool.build, BuildJob(name=flake.name, source=flake))
            while len(sshd.nix_pids()) < 2:
                await anyio.sleep(0.02)
            assert len(cache.staging_dirs()) == 2
            scope.cancel()
    pids = sshd.nix_pids()
    assert len(pids) == 2
    assert [pid for pid in pids if _alive(pid)] == []  # remote nix killed, not orphaned
    assert sshd.remote_dirs() == []
    assert cache.staging_dirs() == []
    assert list(cache.root.iterdir()) == []


async def test_probe_reports_the_remote_nix(sshd: Sshd) -> None:
    (sshd.root / "bin" / "nix").write_text("#!/bin/sh\necho 'nix (Nix) 2.99-fake'\n")
    assert await SshBuilder(sshd.target()).probe() == "nix (Nix) 2.99-fake"


def test_target_parsing() -> None:
    t = SshTarget.parse("builder@10.0.0.2:2222")
    assert (t.user, t.host, t.port) == ("builder", "10.0.0.2", 2222)
    assert SshTarget.parse("host").port == 22
    with pytest.raises(Exception) as info:
        SshTarget.parse("host:abc")
    assert getattr(info.value, "code", None) == "E_BUILD_SSH_TARGET"
