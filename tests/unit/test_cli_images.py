"""`mvmctl images` / `rmi` / `image prune` over a fake cache (issue 16: image listing and
removal). Cache entries are crafted directories with mvm-meta.json under a temp MVM_CACHE;
VM rows are real store rows, so "in use" is what a running or stopped VM's row names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvm.engine.store import StateStore, VmRecord


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _image(cache: Path, sub: str, key: str, name: str, age_s: float, size: int = 1000) -> Path:
    d = cache / sub / key
    d.mkdir(parents=True)
    (d / "vmlinux").write_bytes(b"k" * size)
    (d / "rootfs.ext4").write_bytes(b"r" * size)
    (d / "mvm-meta.json").write_text(json.dumps({"name": name, "sealed": False}))
    when = time.time() - age_s
    os.utime(d / "mvm-meta.json", (when, when))
    return d


def _row(name: str, image: Path, state: str) -> VmRecord:
    now = time.time()
    return VmRecord(
        name=name, backend="qemu", mode="detached", state=state, pid=None,
        pid_start_time=None, run_dir=f"/tmp/{name}", image=str(image), sealed=False,
        created_at=now, started_at=now, exited_at=None, exit_code=None, exit_reason=None,
        control_socket=None, agent_socket=None, console_log=None, spec_json="{}",
        owner=None, health=None,
    )  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MVM_CACHE", str(root))
    return root


async def _fill(cache: Path, home: Path) -> dict[str, Path]:
    imgs = {
        "old": _image(cache, "images", "aaaa1111" + "0" * 24, "web", age_s=300),
        "new": _image(cache, "images", "aaaa2222" + "0" * 24, "web", age_s=100),
        "used": _image(cache, "builds", "bbbb1111" + "0" * 24, "db", age_s=200, size=3000),
        "lone": _image(cache, "images", "cccc1111" + "0" * 24, "tool", age_s=50),
    }
    (cache / "images" / ".build-xyz").mkdir()  # a build in progress is no image
    async with StateStore.open(home / "state.db") as store:
        await store.insert_vm(_row("dbvm", imgs["used"], "exited"))
    return imgs


async def test_images_lists_every_cached_image_with_its_users(cache: Path, mvm_home: Path) -> None:
    await _fill(cache, mvm_home)
    out = _mvmctl("images", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["name"], r["key"][:8], r["used_by"]) for r in rows] == [
        ("web", "aaaa1111", []),
        ("db", "bbbb1111", ["dbvm"]),
        ("web", "aaaa2222", []),
        ("tool", "cccc1111", []),
    ]
    assert rows[1]["size_bytes"] >= 6000
    table = _mvmctl("images")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "KEY", "SIZE"]
    db = next(line for line in lines if line.startswith("db"))
    assert "bbbb11110000" in db and db.rstrip().endswith("dbvm")


async def test_rmi_refuses_an_image_a_stopped_vm_uses_unless_forced(
    cache: Path, mvm_home: Path
) -> None:
    imgs = await _fill(cache, mvm_home)
    refused = _mvmctl("rmi", "db")
    assert refused.returncode != 0
    assert refused.stderr.startswith("error[E_IMAGE_IN_USE]") and "dbvm" in refused.stderr
    assert imgs["used"].is_dir()
    unknown = _mvmctl("rmi", "nope")
    assert unknown.stderr.startswith("error[E_IMAGE_UNKNOWN]")
    ambiguous = _mvmctl("rmi", "aaaa")
    assert ambiguous.stderr.startswith("error[E_IMAGE_AMBIGUOUS]")
    by_key = _mvmctl("rmi", "aaaa1")
    assert by_key.returncode == 0, by_key.stderr
    assert not imgs["old"].exists() and imgs["new"].is_dir()
    forced = _mvmctl("rmi", "-f", "db")
    assert forced.returncode == 0 and "freed" in forced.stdout
    assert not imgs["used"].exists()


async def test_prune_keeps_used_and_newest_and_all_drops_the_newest(
    cache: Path, mvm_home: Path
) -> None:
    imgs = await _fill(cache, mvm_home)
    pruned = _mvmctl("image", "prune", "--json")
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert [r["key"][:8] for r in report["removed"]] == ["aaaa1111"]
    assert report["freed_bytes"] >= 2000
    assert not imgs["old"].exists() and imgs["new"].is_dir() and imgs["lone"].is_dir()
    everything = _mvmctl("image", "prune", "--all")
    assert everything.returncode == 0, everything.stderr
    assert "freed" in everything.stdout
    assert not imgs["new"].exists() and not imgs["lone"].exists()
    assert imgs["used"].is_dir()  # dbvm's row still names it


def test_a_kernel_hard_linked_into_images_is_shared_and_freed_once(tmp_path: Path) -> None:
    """Every image hard-links one cached vmlinux: SIZE counts it, SHARED says it is not
    the image's own, and removing images frees it only with its last link."""
    from mvm.engine.builders.image_cache import list_images, remove

    cache = tmp_path / "cache"
    kernel = cache / "kernel" / "vmlinux"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"k" * 5000)
    one = _image(cache, "images", "a" * 32, "one", age_s=20, size=1000)
    two = _image(cache, "images", "b" * 32, "two", age_s=10, size=1000)
    for image in (one, two):
        (image / "vmlinux").unlink()
        os.link(kernel, image / "vmlinux")
    images = list_images(cache=cache)
    meta = len((one / "mvm-meta.json").read_bytes())
    assert [(i.size_bytes, i.shared_bytes) for i in images] == [(6000 + meta, 5000)] * 2
    assert remove(images[:1]) == 1000 + meta  # the kernel still has two links
    assert remove(list_images(cache=cache)) == 1000 + meta  # and still the cache's own
    kernel.unlink()
    again = _image(cache, "images", "c" * 32, "three", age_s=5, size=1000)
    os.link(again / "vmlinux", again / "vmlinux.copy")  # two links, both inside
    meta = len((again / "mvm-meta.json").read_bytes())
    assert remove(list_images(cache=cache)) == 2000 + meta
