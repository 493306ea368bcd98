"""The ``stub`` backend: the real guest agent as a host process, no hypervisor.

The "VM" is ``mvm-agent --tcp-listen`` running on the host, so the whole engine
stack (RuntimeVM, AgentConnection, PortForward, shim, reconcile, down) runs for
real in milliseconds. It is what control-plane benchmarks (``mvmctl bench scale``,
``bench forward --backend stub``) and the engine's unit tests use to measure and
test mvm itself without a guest kernel; real VMs are proven by the QEMU tests.

It ISOLATES NOTHING: ``exec`` runs commands on the host, as the user running mvm
(root if mvm runs as root), with the host's filesystem and network. Never use it
for untrusted code; ``doctor`` and the availability reason say so.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
from pathlib import Path

import anyio
import anyio.abc
import attrs

from mvm.backends import vmm
from mvm.backends.abc.types import (
    Accel,
    AgentEndpoint,
    Availability,
    LaunchPlan,
    PausedHook,
    VmmHandle,
    VmSpec,
)
from mvm.backends.guest.build import agent_binary
from mvm.engine.base.errors import BackendUnavailable
from mvm.engine.base.paths import ensure_private_dir
from mvm.engine.base.settings import current_settings

NO_ISOLATION = (
    "host process running the guest agent; ISOLATES NOTHING: exec runs on the host "
    "as the calling user (root if mvm runs as root) - tests and benchmarks only"
)


@functools.cache
def _cached_agent() -> Path:
    return agent_binary()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class ProcessHandle(vmm.VmmProcess):
    """The agent's host process (the shared VMM handle: pid + start time)."""


KIND = vmm.VmmKind(
    label="stub agent",
    event="stub",
    exec_error=lambda message: BackendUnavailable(message, code="E_STUB_AGENT"),
)


@attrs.frozen
class TcpEndpoint:
    port: int

    async def connect(self) -> anyio.abc.ByteStream:
        while True:
            try:
                return await anyio.connect_tcp("127.0.0.1", self.port)
            except OSError:
                await anyio.sleep(0.01)


class StubBackend(vmm.ProcessControl[ProcessHandle]):
    name = "stub"
    handle_type = ProcessHandle
    kind = KIND

    @staticmethod
    def _agent_path() -> Path:
        """Resolved once per process: the build cache check runs the compiler."""
        return _cached_agent()

    def availability(self) -> Availability:
        return Availability(True, NO_ISOLATION)

    def prepare(self, spec: VmSpec) -> LaunchPlan:
        port = _free_port()
        run_dir = spec.run_dir
        health = run_dir / "health"
        argv = [
            str(self._agent_path()),
            "--tcp-listen",
            f"127.0.0.1:{port}",
            "--health-dir",
            str(health),
            "--log-dir",
            str(run_dir / "logs"),
            "--ctl",
            str(run_dir / "ctl.fifo"),
        ]
        if current_settings().fake_sealed:
            argv.append("--sealed")
        return LaunchPlan(
            backend=self.name,
            argv=tuple(argv),
            run_dir=run_dir,
            control_socket=run_dir / "fake.sock",
            agent_socket=run_dir / f"tcp-{port}",
            console_log=run_dir / "console.log",
            pid_file=run_dir / "fake.pid",
            accel=Accel.TCG,
            kernel_cmdline="",
        )

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> ProcessHandle:
        """Spawn the agent; no wait for readiness (the endpoint's dial retries)."""
        ensure_private_dir(plan.run_dir)
        (plan.run_dir / "health").mkdir(exist_ok=True)
        (plan.run_dir / "logs").mkdir(exist_ok=True)
        fifo = plan.run_dir / "ctl.fifo"
        if not fifo.exists():
            os.mkfifo(fifo)
        opts = vmm.SpawnOptions(output=plan.console_log, append=True)
        handle = vmm.spawn(KIND, ProcessHandle, plan, opts)
        plan.pid_file.write_text(str(handle.pid))
        return handle

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        """SIGTERM, ``grace`` s, SIGKILL (signals checked against the start time)."""

        async def term(h: vmm.VmmProcess) -> None:
            vmm.terminate(h)

        code = await self.stop_with(handle, term, grace)
        (handle.plan.run_dir / "ctl.fifo").unlink(missing_ok=True)
        return code

    async def pause(self, handle: VmmHandle) -> None:
        os.kill(handle.pid, signal.SIGSTOP)

    async def resume(self, handle: VmmHandle) -> None:
        os.kill(handle.pid, signal.SIGCONT)

    async def snapshot(
        self, handle: VmmHandle, path: Path, *, while_paused: PausedHook | None = None
    ) -> None:
        raise BackendUnavailable(
            "the stub backend has no guest memory to snapshot", code="E_SNAPSHOT_UNSUPPORTED"
        )

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        port = int(plan.agent_socket.name.split("-", 1)[1])
        return TcpEndpoint(port)


def factory() -> StubBackend:
    return StubBackend()
