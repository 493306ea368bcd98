"""Volume disks in snapshots and clones.

A snapshot of a VM with volumes must hold its disks as they were at the instant
its memory was saved: the guest's page cache (in the memory image) and the disk
must agree, or the clone's filesystem is corrupt. ``take_snapshot`` therefore
pauses the source (QEMU drains and flushes every disk on ``stop``), migrates it
to a file, copies each volume image beside ``state.bin`` with ``cp --reflink=auto``
(a reflink where the filesystem has them, a sparse copy elsewhere), and only then
lets it run again.

A clone never writes to the snapshot: a read-only volume uses the saved image as
it is (shared by every clone), and a read-write one gets a qcow2 overlay in the
clone's run directory, backed by the saved image. The guest sees the same
virtio-blk device either way, so the restored device model matches. Overlays
are run files: a clone's writes live as long as the clone, and the snapshot
stays reusable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import attrs

from mvm.backends.abc.types import Drive
from mvm.engine.base.errors import BackendError
from mvm.engine.request.volumes import Volume, volume_disk


@attrs.frozen
class SnapshotDrive:
    """One saved volume disk, in the source's attach order (vdb, vdc, ...)."""

    ident: str  # the volume's slug: the virtio-blk serial /init mounts by
    read_only: bool
    file: str  # inside the snapshot directory


async def save_volume_disks(
    vm: str, volumes: list[Volume], run_dir: Path, dest: Path
) -> tuple[SnapshotDrive, ...]:
    """Copy the disks of ``volumes`` into ``dest``; the source must be paused."""
    saved = []
    for i, vol in enumerate(volumes):
        name = f"vol{i}-{vol.slug}.img"
        await _run(
            [
                "cp",
                "--reflink=auto",
                "--sparse=always",
                str(volume_disk(vm, vol, run_dir)),
                str(dest / name),
            ],
            "copying a volume disk",
        )
        saved.append(SnapshotDrive(ident=vol.slug, read_only=vol.read_only, file=name))
    return tuple(saved)


async def clone_drives(
    snapshot_dir: Path, drives: tuple[SnapshotDrive, ...], run_dir: Path
) -> list[Drive]:
    """The clone's disks: saved read-only images shared, overlays for read-write ones."""
    out = []
    for drive in drives:
        saved = snapshot_dir / drive.file
        if drive.read_only:
            out.append(Drive(saved, read_only=True, ident=drive.ident))
            continue
        overlay = run_dir / f"vol-{drive.ident}.qcow2"
        overlay.unlink(missing_ok=True)
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(saved)]
        await _run([*argv, str(overlay)], "creating a clone's volume overlay")
        out.append(Drive(overlay, read_only=False, ident=drive.ident, format="qcow2"))
    return out


async def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None:
        raise BackendError(
            f"{what} needs {argv[0]}, which is not installed",
            code="E_SNAPSHOT_VOLUME",
            hint="run ./scripts/setup (qemu-utils, coreutils)",
        )
    result = await anyio.run_process(argv, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise BackendError(
            f"{what} failed: {detail[-1] if detail else f'exit {result.returncode}'}",
            code="E_SNAPSHOT_VOLUME",
        )
