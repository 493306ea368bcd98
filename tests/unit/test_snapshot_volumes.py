"""Volume disks in snapshots: saved copies, shared read-only, overlaid read-write.

Real cp and qemu-img on real files; the QEMU integration test proves a clone's
guest reads and writes them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mvm.engine.base.errors import BackendError
from mvm.engine.request.volumes import Volume, persistent_volume_path, volume_disk
from mvm.engine.vm.snapshot_volumes import SnapshotDrive, clone_drives, save_volume_disks


async def test_saved_disks_are_copies_in_attach_order(tmp_path: Path) -> None:
    run_dir, dest = tmp_path / "run", tmp_path / "snap"
    run_dir.mkdir()
    dest.mkdir()
    ro = Volume(host=str(tmp_path), guest="/mnt/config")
    rw = Volume(host=str(tmp_path), guest="/mnt/data", size_mb=8)
    volume_disk("vm", ro, run_dir).write_bytes(b"config" * 1000)
    data = persistent_volume_path("vm", rw)
    data.parent.mkdir(parents=True)
    data.write_bytes(b"\0" * 65536 + b"data")

    saved = await save_volume_disks("vm", [ro, rw], run_dir, dest)

    assert saved == (
        SnapshotDrive(ident="mnt-config", read_only=True, file="vol0-mnt-config.img"),
        SnapshotDrive(ident="mnt-data", read_only=False, file="vol1-mnt-data.img"),
    )
    assert (dest / "vol1-mnt-data.img").read_bytes() == data.read_bytes()
    data.write_bytes(b"changed")  # the source goes on; the snapshot keeps its copy
    assert (dest / "vol1-mnt-data.img").read_bytes().endswith(b"data")


async def test_clone_drives_share_read_only_and_overlay_read_write(tmp_path: Path) -> None:
    snap, run_dir = tmp_path / "snap", tmp_path / "clone"
    snap.mkdir()
    run_dir.mkdir()
    (snap / "vol0-a.img").write_bytes(b"a" * 4096)
    (snap / "vol1-b.img").write_bytes(b"b" * 1024 * 1024)
    drives = (
        SnapshotDrive(ident="a", read_only=True, file="vol0-a.img"),
        SnapshotDrive(ident="b", read_only=False, file="vol1-b.img"),
    )

    ro, rw = await clone_drives(snap, drives, run_dir)

    assert (ro.path, ro.read_only, ro.format) == (snap / "vol0-a.img", True, "raw")
    assert (rw.path, rw.read_only, rw.format) == (run_dir / "vol-b.qcow2", False, "qcow2")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(rw.path)],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 1024 * 1024
    assert info["full-backing-filename"] == str(snap / "vol1-b.img")
    assert rw.path.stat().st_size < 1024 * 1024  # an overlay, not a copy


async def test_a_missing_saved_disk_is_a_coded_error(tmp_path: Path) -> None:
    drives = (SnapshotDrive(ident="b", read_only=False, file="gone.img"),)
    with pytest.raises(BackendError) as err:
        await clone_drives(tmp_path, drives, tmp_path)
    assert err.value.code == "E_SNAPSHOT_VOLUME" and "overlay" in err.value.one_line()
