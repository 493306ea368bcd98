"""Volume specs and their ext4 images (real mkfs.ext4, no root, no loop devices)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mvm import ConfigError
from mvm.engine.base.errors import default_hint
from mvm.engine.request.volumes import Volume, kernel_arg, persistent_volume_path, prepare_volume


def test_parse_read_only_and_persistent(tmp_path: Path) -> None:
    ro = Volume.parse(f"{tmp_path}:/mnt/config")
    rw = Volume.parse(f"{tmp_path}:/mnt/data:64")
    assert ro.read_only and not ro.secret and ro.size_mb is None
    assert not rw.read_only and rw.size_mb == 64
    assert Volume.parse(f"{tmp_path}:/mnt/secrets").secret
    assert kernel_arg((ro, rw)) == "mvm.volumes=vdb:/mnt/config:ro,vdc:/mnt/data:rw"
    assert kernel_arg(()) == ""


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{tmp}", "E_VOLUME_SPEC"),
        ("{tmp}:/etc/x", "E_VOLUME_SPEC"),
        ("{tmp}:/mnt", "E_VOLUME_SPEC"),
        ("{tmp}:/mnt/../etc", "E_VOLUME_SPEC"),
        ("{tmp}:/mnt/x:big", "E_VOLUME_SPEC"),
        ("{tmp}/missing:/mnt/x", "E_VOLUME_HOST"),
    ],
)
def test_bad_volumes_are_coded(tmp_path: Path, text: str, code: str) -> None:
    with pytest.raises(ConfigError) as info:
        Volume.parse(text.format(tmp=tmp_path))
    assert info.value.code == code


@pytest.mark.parametrize("guest", ["/data", "/srv/www", "/home/app", "/mnt"])
def test_the_refusal_hint_names_only_paths_the_rule_allows(tmp_path: Path, guest: str) -> None:
    """Issue 16: `-v HOST:/data` was refused by an error whose hint listed /data as allowed.
    Every path the hint suggests must parse, and the refused one must not appear in it."""
    with pytest.raises(ConfigError) as info:
        Volume.parse(f"{tmp_path}:{guest}")
    err = info.value
    assert err.code == "E_VOLUME_SPEC" and err.hint is not None
    suggested = [word.rstrip(").,") for word in err.hint.split() if word.startswith("/")]
    assert suggested, err.hint
    for path in suggested:
        if path.rstrip("/") == "/mnt":
            continue  # the folder named as the parent, not a mount point
        assert Volume.parse(f"{tmp_path}:{path}").guest == path
    assert guest not in suggested
    registry = default_hint("E_VOLUME_SPEC") or ""
    for path in (w.rstrip(").,") for w in registry.split() if w.startswith("/mnt/")):
        if path != "/mnt/":
            assert Volume.parse(f"{tmp_path}:{path}").guest == path
    assert not any(bad in registry for bad in ("/srv", "/data,", "/home"))


def _debugfs_cat(image: Path, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True
    ).stdout


async def test_read_only_snapshot_and_persistent_disk(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "token").write_text("s3cret\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ro = await prepare_volume("vm1", Volume.parse(f"{src}:/mnt/secrets"), run_dir)
    assert ro.parent == run_dir and ro.name.endswith(".overlay")  # removed with the VM
    assert _debugfs_cat(ro, "/token") == b"s3cret\n"

    vol = Volume.parse(f"{src}:/mnt/data:16")
    disk = await prepare_volume("vm1", vol, run_dir)
    assert disk == persistent_volume_path("vm1", vol) and disk.stat().st_size == 16 << 20
    stamp = disk.stat().st_mtime_ns
    (src / "token").write_text("changed\n")  # a persistent disk is seeded once, then kept
    again = await prepare_volume("vm1", vol, run_dir)
    assert again == disk and again.stat().st_mtime_ns == stamp
    assert _debugfs_cat(disk, "/token") == b"s3cret\n"
