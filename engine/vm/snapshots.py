"""Snapshots of running VMs, and what a clone of one needs.

A snapshot is a directory ``$MVM_HOME/snapshots/<name>/`` holding ``state.bin``
(the VMM's saved state: a QEMU migration stream) and ``snapshot.json`` (the
source and the device model a clone must rebuild exactly: image, kernel,
rootfs, vCPUs, memory, accelerator, agent transport). It is written into a
temporary directory and renamed into place, so a crash or a failed migration
never leaves a half snapshot under the final name. The source VM keeps running;
QEMU pauses it only for the last pass of the migration.

Clones share the image's rootfs file untouched: mvm mounts the rootfs read-only
(``ro``, ``readonly=on``) and keeps every runtime write on tmpfs, so sharing is
the zero-copy answer (no reflink, no overlay, nothing to clean up). Volume disks
are saved with the state and given to clones copy-on-write (``snapshot_volumes``).
What a clone must not share is identity, which ``new_identity`` makes fresh.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from mvm.backends.abc.types import Backend, VmmHandle
from mvm.backends.registry import get_backend
from mvm.engine.base.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    NotFoundError,
    StateError,
)
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import mvm_home
from mvm.engine.base.process import is_same_process
from mvm.engine.images.image import Image
from mvm.engine.request.vmrequest import NetMode
from mvm.engine.request.volumes import Volume
from mvm.engine.store import StateStore
from mvm.engine.vm.planfile import load_plan
from mvm.engine.vm.snapshot_volumes import SnapshotDrive, save_volume_disks

log = get_logger("mvm.snapshots")

META_FILE = "snapshot.json"
STATE_FILE = "state.bin"
FORMAT = 1
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")

AgentTransport = Literal["serial", "vsock"]

_conv = cattrs.Converter()
_conv.register_unstructure_hook(Path, str)
_conv.register_structure_hook(Path, lambda value, _: Path(value))


@attrs.frozen
class SnapshotMeta:
    """What a clone needs to rebuild the source's device model (host paths aside)."""

    name: str
    source: str
    backend: str
    image: Path
    kernel: Path
    rootfs: Path
    vcpus: int
    memory_mib: int
    accel: str  # resolved: a TCG snapshot cannot resume under KVM and vice versa
    agent_transport: AgentTransport
    sealed: bool
    created_at: float
    state_bytes: int
    format: int = FORMAT
    net: NetMode = "none"  # "tap": each clone gets its own TAP, MAC and address
    drives: tuple[SnapshotDrive, ...] = ()  # volume disks saved with the state

    @property
    def directory(self) -> Path:
        return snapshot_dir(self.name)

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE


@attrs.frozen
class Identity:
    """A clone's own identity: never shared with its source or siblings."""

    hostname: str
    machine_id: str
    seed: bytes


def new_identity(hostname: str) -> Identity:
    return Identity(hostname=hostname, machine_id=uuid.uuid4().hex, seed=secrets.token_bytes(32))


def snapshots_root() -> Path:
    return mvm_home() / "snapshots"


def check_snapshot_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"snapshot name {name!r} is invalid",
            code="E_SNAPSHOT_NAME",
            hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def snapshot_dir(name: str) -> Path:
    return snapshots_root() / check_snapshot_name(name)


def default_snapshot_name(vm: str, now: float | None = None) -> str:
    return f"{vm}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def clone_names(base: str, count: int) -> list[str]:
    """``count`` clone names: ``base`` itself for one, ``base-1..base-K`` for more."""
    if count < 1:
        raise ConfigError(f"--count must be >= 1, not {count}", code="E_CLONE_COUNT")
    return [base] if count == 1 else [f"{base}-{i}" for i in range(1, count + 1)]


def load_snapshot(name: str) -> SnapshotMeta:
    directory = snapshot_dir(name)
    try:
        raw = json.loads((directory / META_FILE).read_text())
    except FileNotFoundError:
        raise NotFoundError(
            f"no snapshot named {name!r}",
            code="E_SNAPSHOT_NOT_FOUND",
            hint="take one with: mvmctl snapshot VM --as NAME",
        ) from None
    except (OSError, ValueError) as exc:
        raise StateError(
            f"snapshot {name!r} is unreadable: {exc}", code="E_SNAPSHOT_CORRUPT"
        ) from None
    try:
        meta = _conv.structure(raw, SnapshotMeta)
    except cattrs.BaseValidationError as exc:
        raise StateError(
            f"snapshot {name!r} has an invalid {META_FILE}: {exc}", code="E_SNAPSHOT_CORRUPT"
        ) from None
    if meta.format != FORMAT or meta.name != name:
        raise StateError(
            f"snapshot {name!r} has format {meta.format} for {meta.name!r}",
            code="E_SNAPSHOT_CORRUPT",
        )
    if not meta.state_path.is_file():
        raise StateError(f"snapshot {name!r} lacks {STATE_FILE}", code="E_SNAPSHOT_CORRUPT")
    return meta


def list_snapshots() -> list[SnapshotMeta]:
    root = snapshots_root()
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not _NAME.match(entry.name):
            continue  # temporary directories of snapshots being written
        try:
            out.append(load_snapshot(entry.name))
        except (StateError, NotFoundError) as exc:
            log.warning("snapshot.unreadable", name=entry.name, error=exc.message)
    return out


def delete_snapshot(name: str) -> None:
    directory = snapshot_dir(name)
    if not directory.is_dir():
        raise NotFoundError(f"no snapshot named {name!r}", code="E_SNAPSHOT_NOT_FOUND")
    shutil.rmtree(directory)


def write_meta(directory: Path, meta: SnapshotMeta) -> None:
    (directory / META_FILE).write_text(
        json.dumps(_conv.unstructure(meta), indent=2, sort_keys=True) + "\n"
    )


def publish(tmp_dir: Path, name: str) -> Path:
    """Move a fully written snapshot directory to its final name (atomic rename)."""
    final = snapshot_dir(name)
    try:
        os.rename(tmp_dir, final)
    except OSError as exc:  # ENOTEMPTY/EEXIST: someone published the name first
        raise ConflictError(f"snapshot {name!r} already exists", code="E_SNAPSHOT_EXISTS") from exc
    return final


async def take_snapshot(store: StateStore, vm: str, name: str) -> SnapshotMeta:
    """Save the running VM ``vm`` as snapshot ``name``; the VM keeps running.

    Works for any running VM in the state store (attached to this engine or
    supervised by a detached shim): the VMM is reached through its recorded plan."""
    check_snapshot_name(name)
    if snapshot_dir(name).exists():
        raise ConflictError(f"snapshot {name!r} already exists", code="E_SNAPSHOT_EXISTS")
    rec = await store.get_vm(vm)
    if rec is None:
        raise NotFoundError(f"no VM named {vm!r}", code="E_VM_NOT_FOUND", hint="see mvmctl ls")
    if rec.state != "running" or not is_same_process(rec.pid, rec.pid_start_time):
        raise ConflictError(f"VM {vm!r} is not running ({rec.state})", code="E_VM_NOT_RUNNING")
    assert rec.pid is not None
    spec: dict[str, Any] = json.loads(rec.spec_json or "{}")
    _check_snapshottable(vm, rec.backend, spec)
    plan = load_plan(Path(rec.run_dir))
    # Clones get a new guest CID with their new run dir (see QemuBackend._use_vsock).
    transport: AgentTransport = "vsock" if plan.agent_socket.name.startswith("vsock-") else "serial"
    image = Image.load(Path(rec.image))
    backend = get_backend(rec.backend)
    root = snapshots_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    t0 = time.monotonic()
    try:
        drives = await _save_state(vm, spec, backend, backend.attach(plan, rec.pid), tmp_dir)
        meta = SnapshotMeta(
            name=name,
            source=vm,
            backend=rec.backend,
            image=image.directory,
            kernel=image.kernel,
            rootfs=image.rootfs,
            vcpus=spec.get("vcpus") or image.vcpus,
            memory_mib=spec.get("memory_mib") or image.memory_mib,
            accel=plan.accel.value,
            agent_transport=transport,
            sealed=image.sealed,
            created_at=time.time(),
            state_bytes=(tmp_dir / STATE_FILE).stat().st_size,
            net="tap" if spec.get("net") == "tap" else "none",
            drives=drives,
        )
        write_meta(tmp_dir, meta)
        publish(tmp_dir, name)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info(
        "snapshot.taken",
        vm=vm,
        snapshot=name,
        bytes=meta.state_bytes,
        ms=round((time.monotonic() - t0) * 1000, 1),
    )
    return meta


async def _save_state(
    vm: str, spec: dict[str, Any], backend: Backend, handle: VmmHandle, dest: Path
) -> tuple[SnapshotDrive, ...]:
    """Memory (and, with volumes, their disks at the same instant) into ``dest``."""
    volumes = [_recorded_volume(text) for text in spec.get("volumes") or []]
    saved: tuple[SnapshotDrive, ...] = ()

    async def copy_disks() -> None:  # the VM is paused: disks agree with the saved memory
        nonlocal saved
        saved = await save_volume_disks(vm, volumes, handle.plan.run_dir, dest)

    # Not pause + snapshot + resume: QEMU records the run state in the stream, and a
    # clone of a paused source would wake up paused.
    await backend.snapshot(handle, dest / STATE_FILE, while_paused=copy_disks if volumes else None)
    return saved


def _recorded_volume(text: str) -> Volume:
    """A volume as the VM's row recorded it (``Volume.parse`` would also insist that
    the host folder still exists, which a snapshot does not need)."""
    host, guest, *size = text.split(":")
    return Volume(host=host, guest=guest, size_mb=int(size[0]) if size else None)


def _check_snapshottable(vm: str, backend: str, spec: dict[str, Any]) -> None:
    if backend != "qemu":
        raise BackendError(
            f"snapshots of {backend} VMs are not implemented here",
            code="E_SNAPSHOT_UNSUPPORTED",
            hint="the qemu backend supports snapshot and clone",
        )
