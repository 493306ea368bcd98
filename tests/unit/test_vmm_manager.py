"""The shared VMM process manager (mvm.backends.vmm) against real child processes.

The child is a tiny Python "VMM": it optionally ignores SIGTERM, then binds its
control socket and answers every connection with ``hi``. Readiness is that
answer, so a test that waits for it knows the TERM trap is installed: every
step synchronises on an event (socket answers, process exits), never on a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import attrs
import httpx
import pytest

from mvm.backends.abc.types import Accel, ApiCall, LaunchInputs, LaunchPlan
from mvm.backends.vmm import (
    UNKNOWN_STATUS,
    SpawnOptions,
    VmmKind,
    VmmProcess,
    check_plan_inputs,
    kill,
    launch,
    stale_files,
    start_configured,
    stop,
    terminate,
    wait,
)
from mvm.backends.vmm.rest import RestApi
from mvm.engine.base.errors import BackendError, ConfigError
from mvm.engine.base.process import process_start_time
from mvm.engine.vm.planfile import load_plan, save_plan

CHILD = r"""
import os, signal, socket, sys
mode, path = sys.argv[1], sys.argv[2]
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("starting", mode, "pid", os.getpid(), flush=True)
if mode == "die":
    print("boom: no such device", flush=True)
    sys.exit(3)
if mode == "mute":
    signal.pause()
open(os.path.join(os.path.dirname(path), "made-by-child"), "w").close()
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""

KIND = VmmKind(
    label="TestVMM",
    event="testvmm",
    exec_error=lambda message: BackendError(message, code="E_TEST_EXEC"),
)


class FakeHandle(VmmProcess):
    """A backend's handle type: the manager builds whichever it is given."""


async def _answers(socket: Path) -> None:
    try:
        stream = await anyio.connect_unix(socket)
    except OSError as exc:
        raise BackendError(f"not yet: {exc}", code="E_TEST_NOT_READY") from None
    async with stream:
        if await stream.receive() != b"hi":
            raise BackendError("wrong greeting", code="E_TEST_NOT_READY")


def _plan(run_dir: Path, mode: str, *, argv0: str = sys.executable) -> LaunchPlan:
    return LaunchPlan(
        backend="test",
        argv=(argv0, "-c", CHILD, mode, str(run_dir / "ctl.sock")),
        run_dir=run_dir,
        control_socket=run_dir / "ctl.sock",
        agent_socket=run_dir / "agent.sock",
        console_log=run_dir / "console.log",
        pid_file=run_dir / "vmm.pid",
        accel=Accel.TCG,
        kernel_cmdline="",
    )


def _opts(plan: LaunchPlan) -> SpawnOptions:
    return SpawnOptions(
        output=plan.console_log,
        touch=(plan.run_dir / "metrics.log",),
        write_pid=True,
    )


async def test_launch_spawns_a_private_session_child_and_waits_for_its_socket(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path / "run", "ignore-term")
    plan.run_dir.mkdir()
    plan.control_socket.write_text("stale")  # a VMM refuses to bind an existing path
    handle = await launch(KIND, FakeHandle, plan, _opts(plan), _answers, timeout=30)
    try:
        assert isinstance(handle, FakeHandle) and handle.proc is not None
        assert handle.alive() and handle.status() is None
        assert handle.start_time == process_start_time(handle.pid)
        assert os.getsid(handle.pid) == handle.pid  # its own session: Ctrl-C does not reach it
        assert plan.pid_file.read_text() == f"{handle.pid}\n"
        assert (plan.run_dir / "metrics.log").is_file()
        made = (plan.run_dir / "made-by-child").stat()
        assert stat.S_IMODE(made.st_mode) & 0o077 == 0  # the child's umask is 077
        assert stat.S_IMODE(plan.console_log.stat().st_mode) == 0o600
        assert "starting ignore-term" in plan.console_log.read_text()
    finally:
        assert await kill(KIND, handle) == -signal.SIGKILL
    assert not handle.alive()


async def test_a_child_that_dies_during_start_reports_its_last_log_line(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "run", "die")
    with pytest.raises(BackendError) as err:
        await launch(KIND, FakeHandle, plan, _opts(plan), _answers, timeout=30)
    assert err.value.code == "E_VMM_START"
    assert "TestVMM exited during start (status 3): boom: no such device" in err.value.message
    assert not plan.pid_file.exists()


async def test_a_child_that_never_gets_ready_is_killed_and_reaped(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "run", "mute")
    spawned: list[int] = []

    @attrs.define
    class SpyHandle(FakeHandle):
        def __attrs_post_init__(self) -> None:
            spawned.append(self.pid)

    with pytest.raises(BackendError) as err:
        await launch(KIND, SpyHandle, plan, _opts(plan), _answers, timeout=0.3)
    assert err.value.code == "E_VMM_START" and "within 0.3 s" in err.value.message
    assert len(spawned) == 1
    assert not Path(f"/proc/{spawned[0]}").exists()  # killed and reaped, not left a zombie
    assert sorted(p.name for p in plan.run_dir.iterdir() if p.name.endswith(".sock")) == []


def test_the_plans_own_sockets_and_pid_file_are_stale_but_a_vsock_address_is_not(
    tmp_path: Path,
) -> None:
    plan = attrs.evolve(_plan(tmp_path, "ignore-term"), agent_socket=tmp_path / "vsock-7-5252")
    assert stale_files(plan) == (plan.control_socket, plan.pid_file)


async def _start_configured(
    plan: LaunchPlan,
    spawn: Callable[[LaunchPlan], Awaitable[FakeHandle]],
    configure: Callable[[FakeHandle, tuple[ApiCall, ...]], Awaitable[None]],
) -> FakeHandle:
    return await start_configured(
        KIND,
        plan,
        backend="test",
        plan_code="E_TEST_PLAN",
        spawn=spawn,
        configure=configure,
        restore_path="/restore",
        detached=False,
    )


async def test_start_configured_refuses_another_backends_plan_before_spawning(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path / "run", "ignore-term")
    spawned: list[LaunchPlan] = []

    async def spawn(p: LaunchPlan) -> FakeHandle:
        spawned.append(p)
        raise AssertionError("spawned")

    async def configure(h: FakeHandle, calls: tuple[ApiCall, ...]) -> None:
        raise AssertionError("configured")

    no_calls = plan
    not_ours = attrs.evolve(plan, backend="other", api_calls=(ApiCall("PUT", "/boot"),))
    for foreign in (no_calls, not_ours):
        with pytest.raises(BackendError) as err:
            await _start_configured(foreign, spawn, configure)
        assert err.value.code == "E_TEST_PLAN"
        assert "not prepared by the TestVMM backend" in err.value.message
    assert spawned == []


async def test_start_configured_kills_the_vmm_when_a_call_fails(tmp_path: Path) -> None:
    plan = attrs.evolve(
        _plan(tmp_path / "run", "ignore-term"), api_calls=(ApiCall("PUT", "/boot"),)
    )
    handles: list[FakeHandle] = []
    sent: list[tuple[ApiCall, ...]] = []

    async def spawn(p: LaunchPlan) -> FakeHandle:
        handle = await launch(KIND, FakeHandle, p, _opts(p), _answers, timeout=30)
        handles.append(handle)
        return handle

    async def configure(h: FakeHandle, calls: tuple[ApiCall, ...]) -> None:
        sent.append(calls)
        raise BackendError("the VMM refused the boot", code="E_TEST_CALL")

    with pytest.raises(BackendError) as err:
        await _start_configured(plan, spawn, configure)
    assert err.value.code == "E_TEST_CALL"
    assert sent == [plan.api_calls]
    (handle,) = handles
    assert not handle.alive() and handle.status() == -signal.SIGKILL  # killed and reaped
    assert not [p.name for p in plan.run_dir.iterdir() if p.name.endswith((".sock", ".pid"))]


async def test_binary_that_cannot_run_is_the_kinds_coded_error(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "run", "ignore-term", argv0=str(tmp_path / "absent"))
    with pytest.raises(BackendError) as err:
        await launch(KIND, FakeHandle, plan, _opts(plan), _answers, timeout=30)
    assert err.value.code == "E_TEST_EXEC" and "cannot run" in err.value.message


async def test_stop_escalates_to_sigkill_when_the_graceful_request_is_ignored(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path / "run", "ignore-term")
    handle = await launch(KIND, FakeHandle, plan, _opts(plan), _answers, timeout=30)
    asked: list[int] = []

    async def graceful(h: VmmProcess) -> None:
        asked.append(h.pid)
        assert terminate(h)  # delivered, and ignored: the trap is in place (it answered)

    assert await stop(KIND, handle, graceful, grace=0.3) == -signal.SIGKILL
    assert asked == [handle.pid]
    assert not Path(f"/proc/{handle.pid}").exists()
    # The run directory's transient files go; the log stays for `mvmctl logs`.
    assert sorted(p.name for p in plan.run_dir.iterdir()) == [
        "console.log",
        "made-by-child",
        "metrics.log",
    ]


async def test_stop_is_graceful_when_the_vmm_obeys(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "run", "obey-term")
    handle = await launch(KIND, FakeHandle, plan, _opts(plan), _answers, timeout=30)

    async def graceful(h: VmmProcess) -> None:
        terminate(h)

    assert await stop(KIND, handle, graceful, grace=30) == -signal.SIGTERM  # not SIGKILL


async def test_an_adopted_vmm_is_waited_by_pidfd_and_its_status_is_unknown(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path / "run", "obey-term")
    child = await launch(KIND, FakeHandle, plan, _opts(plan), _answers, timeout=30)
    adopted = FakeHandle.adopt(plan, child.pid)
    assert adopted.proc is None and adopted.alive()
    stale = FakeHandle(child.pid, plan, (child.start_time or 0) - 1, None)
    assert not stale.alive() and not terminate(stale)  # a recycled pid is never signalled
    assert await wait(stale) == UNKNOWN_STATUS
    async with anyio.create_task_group() as tg:

        async def reap() -> None:
            assert await wait(child) == -signal.SIGTERM

        tg.start_soon(reap)
        assert terminate(adopted)
        assert await wait(adopted) == UNKNOWN_STATUS


def test_inputs_are_checked_and_the_plan_file_records_what_is_sent(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "run", "ignore-term")
    calls = (
        ApiCall("PUT", "/boot-source", {"kernel_image_path": "/k", "boot_args": "x y"}),
        ApiCall("PUT", "/actions", {"action_type": "InstanceStart"}),
        ApiCall("PUT", "vm.boot"),
    )
    kernel = tmp_path / "vmlinux"
    kernel.write_text("")
    full = attrs.evolve(
        plan, api_calls=calls, inputs=LaunchInputs(kernel, tmp_path / "rootfs.ext4")
    )
    with pytest.raises(ConfigError) as err:
        check_plan_inputs(full.inputs)
    assert err.value.code == "E_ROOTFS_MISSING"
    plan.run_dir.mkdir()
    save_plan(full)
    loaded = load_plan(plan.run_dir)
    assert loaded == full and loaded.api_calls == calls


def test_a_plan_file_from_before_the_calls_were_recorded_still_loads(tmp_path: Path) -> None:
    """A VM started by an older mvm is still adoptable: its plan.json has no calls."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = {
        "backend": "firecracker",
        "argv": ["/usr/bin/firecracker", "--api-sock", str(run_dir / "fc.sock")],
        "run_dir": str(run_dir),
        "control_socket": str(run_dir / "fc.sock"),
        "agent_socket": str(run_dir / "vsock.sock"),
        "console_log": str(run_dir / "console.log"),
        "pid_file": str(run_dir / "firecracker.pid"),
        "accel": "kvm",
        "kernel_cmdline": "console=ttyS0",
    }
    (run_dir / "plan.json").write_text(json.dumps(old))
    plan = load_plan(run_dir)
    assert plan.control_socket == run_dir / "fc.sock"
    assert plan.api_calls == () and plan.inputs == LaunchInputs()


class _RecordingApi(RestApi):
    """A REST VMM client without a socket: ``paused`` uses only state/pause/resume."""

    def __init__(self, state: str) -> None:
        super().__init__(None, Path("/nonexistent.sock"))  # type: ignore[arg-type]
        self._state = state
        self.calls: list[str] = []

    def socket_error(self, method: str, path: str, why: str) -> BackendError:
        return BackendError(why, code="E_TEST_SOCKET")

    def api_error(self, method: str, path: str, response: httpx.Response) -> BackendError:
        return BackendError(path, code="E_TEST_API")

    async def state(self) -> str:
        return self._state

    async def pause(self) -> None:
        self.calls.append("pause")

    async def resume(self) -> None:
        self.calls.append("resume")


async def test_a_running_vm_is_resumed_after_a_failed_paused_step() -> None:
    api = _RecordingApi("Running")
    with pytest.raises(BackendError):
        async with api.paused():
            api.calls.append("snapshot")
            raise BackendError("disk full", code="E_SNAPSHOT")
    assert api.calls == ["pause", "snapshot", "resume"]
    paused_already = _RecordingApi("Paused")
    async with paused_already.paused():
        paused_already.calls.append("snapshot")
    assert paused_already.calls == ["snapshot"]  # a paused VM stays paused
