"""The backend contract: what the engine needs from a hypervisor.

A backend turns a ``VmSpec`` into a ``LaunchPlan`` (pure: argv, the REST calls
sent after spawn, files, sockets; nothing started), starts the VMM process from
exactly that plan (the plan file kept for adoption is what was really sent),
and controls it afterwards (stop, wait, pause/resume, snapshot/restore). It also
tells the engine how to reach the guest agent (``AgentEndpoint``). Keeping
``prepare`` pure lets tests check command lines and lets ``mvmctl doctor``
explain a plan without booting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import anyio.abc
import attrs

# Accel is defined with the settings (validated once from MVM_ACCEL) and re-exported here.
from mvm.engine.base.settings import Accel as Accel

PausedHook = Callable[[], Awaitable[None]]


@attrs.frozen
class Drive:
    """A block device given to the guest, in attach order (vda, vdb, ...)."""

    path: Path
    read_only: bool = False
    ident: str = ""
    # qcow2 only for a clone's copy-on-write overlay over a snapshot's volume disk
    format: Literal["raw", "qcow2"] = "raw"


@attrs.frozen
class NetDevice:
    """A TAP-backed virtio-net device (networked mode); absent in rootless mode."""

    tap: str
    mac: str


@attrs.frozen
class Verity:
    """dm-verity parameters of a sealed rootfs whose hash tree is appended to it.

    ``hash_offset`` (bytes) is where the tree starts in the same file: the data
    area is ``data_blocks`` blocks of 4096 bytes before it. Recorded at image
    finalisation in mvm-meta.json and bound into the signed ExecutionPlan; the
    backends build the kernel's ``dm-mod.create=`` table from the plan's copy."""

    root_hash: str
    salt: str
    data_blocks: int
    hash_offset: int
    algorithm: str = "sha256"


@attrs.frozen
class VmSpec:
    """Everything a backend needs to launch one VM. Paths are absolute."""

    name: str
    kernel: Path
    rootfs: Path
    run_dir: Path
    vcpus: int = 1
    memory_mib: int = 256
    kernel_args: tuple[str, ...] = ()
    drives: tuple[Drive, ...] = ()
    net: tuple[NetDevice, ...] = ()
    accel: Accel = Accel.AUTO
    rootfs_read_only: bool = False
    incoming: Path | None = None  # restore from this snapshot file instead of booting
    # The agent channel: None lets the backend choose (vhost-vsock where the host has
    # it); a restore passes its snapshot's, since the device model must match.
    agent_vsock: bool | None = None
    # A sealed image's verified root: root=/dev/dm-0 over a dm-verity mapping of vda.
    verity: Verity | None = None


@attrs.frozen
class ApiCall:
    """One REST request sent to a VMM's API socket after spawn: method, path, JSON body.

    Firecracker's paths are absolute (``/boot-source``); Cloud Hypervisor's are its
    endpoint names (``vm.create``), the client adds ``/api/v1/``."""

    method: str
    path: str
    body: dict[str, Any] | None = None


@attrs.frozen
class LaunchInputs:
    """The files the VMM reads when it starts; ``prepare`` checks them. QEMU's
    ``start`` checks them again before spawning (they can vanish in between), so a
    missing one is a coded error rather than QEMU's exit; Firecracker reports one in
    its API fault for the call that names it."""

    kernel: Path | None = None
    rootfs: Path | None = None
    snapshot: Path | None = None


@attrs.frozen
class LaunchPlan:
    """A fully resolved VMM invocation: what ``start`` will execute, as given.

    ``argv`` is the whole configuration for QEMU; Firecracker and Cloud Hypervisor
    start empty and get ``api_calls``, in order, once their API socket answers."""

    backend: str
    argv: tuple[str, ...]
    run_dir: Path
    control_socket: Path  # QMP / API socket
    agent_socket: Path  # where the host dials the guest agent
    console_log: Path
    pid_file: Path
    accel: Accel
    kernel_cmdline: str
    api_calls: tuple[ApiCall, ...] = ()
    inputs: LaunchInputs = attrs.field(factory=LaunchInputs)


@attrs.frozen
class Availability:
    ok: bool
    reason: str


@runtime_checkable
class AgentEndpoint(Protocol):
    """How the host reaches the guest agent for one VM (dial, not listen)."""

    async def connect(self) -> anyio.abc.ByteStream: ...


@runtime_checkable
class VmmHandle(Protocol):
    """A started VMM process; survives the engine in detached mode."""

    @property
    def pid(self) -> int: ...

    @property
    def plan(self) -> LaunchPlan: ...


class Backend(Protocol):
    """One hypervisor. Implementations live in ``mvm.backends.<name>``."""

    name: str

    def availability(self) -> Availability: ...

    def prepare(self, spec: VmSpec) -> LaunchPlan: ...

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> VmmHandle: ...

    def attach(self, plan: LaunchPlan, pid: int) -> VmmHandle:
        """A handle on a VMM started earlier by another engine (re-adoption)."""
        ...

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int: ...

    async def wait(self, handle: VmmHandle) -> int: ...

    async def pause(self, handle: VmmHandle) -> None: ...

    async def resume(self, handle: VmmHandle) -> None: ...

    async def snapshot(
        self, handle: VmmHandle, path: Path, *, while_paused: PausedHook | None = None
    ) -> None:
        """Save the VM's state at ``path``; the VM runs on afterwards if it ran.
        ``while_paused`` runs once the state is saved and before the VM runs again:
        disks copied there agree with the saved memory."""
        ...

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint: ...
