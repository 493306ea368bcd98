"""The boot floor of ``bench boot`` really boots: the same kernel, a static /init
that writes the hello frame, read by the same code that times the bare baseline."""

from __future__ import annotations

import subprocess

import trio

from mvm import Image
from mvm.bench.boot import bare_boot
from mvm.bench.floor import floor_image, floor_rootfs


def test_floor_rootfs_holds_only_a_static_init() -> None:
    rootfs = floor_rootfs()
    listing = subprocess.run(
        ["debugfs", "-R", "ls -p /", str(rootfs)], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6}
    assert names - {".", "..", "lost+found"} == {"init", "dev"}
    assert floor_rootfs() == rootfs  # cached by the source hash


async def _timed_boot(image: Image) -> float:
    with trio.fail_after(120):
        return await bare_boot(image)


def test_floor_and_full_rootfs_both_boot_to_the_hello_frame(demo_image: Image) -> None:
    floor = trio.run(_timed_boot, floor_image(demo_image))
    full = trio.run(_timed_boot, demo_image)
    assert 0 < floor < 60
    assert full > 0
