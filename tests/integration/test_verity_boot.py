"""dm-verity on a real QEMU guest (issue 15): a sealed image boots its root from the
``vroot`` mapping the plan's root hash built (root is device 254:0, /dev/dm-0), and a
copy of it with one byte of /init flipped after the build does not run: the kernel
refuses the block (``data block N is corrupted``), the guest cannot start /init, and
the launch fails with E_VERITY. One sealed image, two boots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, VmRequest
from mvm.engine.base.errors import MvmError
from mvm.engine.base.paths import vm_dir
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import Service

pytestmark = pytest.mark.qemu

SPEC = ImageSpec(
    name="verity",
    services={
        "probe": Service(
            command=(
                "echo dm-name: $(cat /sys/block/dm-0/dm/name); echo dm-dev: $(cat "
                "/sys/block/dm-0/dev); echo root-dev: $(grep -m1 ' / / ' /proc/self/mountinfo "
                "| cut -d' ' -f3,6); exec sleep 600"
            ),
        )
    },
)


@pytest.fixture(scope="module")
def sealed_image() -> Image:
    assert SPEC.sealed
    return trio.run(build_offline_image, SPEC)


def _flip_init_byte(rootfs: Path) -> None:
    """One byte of /init's first data block, at its physical place in the file."""
    out = subprocess.run(
        ["debugfs", "-R", "bmap /init 0", str(rootfs)], capture_output=True, text=True, check=True
    ).stdout.strip()
    block = int(out.splitlines()[-1])
    with rootfs.open("r+b") as handle:
        handle.seek(block * 4096 + 16)
        byte = handle.read(1)
        handle.seek(block * 4096 + 16)
        handle.write(bytes([byte[0] ^ 0xFF]))


async def test_sealed_root_is_verified_and_a_tampered_copy_does_not_run(
    sealed_image: Image, tmp_path: Path
) -> None:
    verity = sealed_image.verity
    assert verity is not None
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="verity1", image_dir=str(sealed_image.directory)), sealed_image
        )
        try:
            plan = json.loads((vm_dir("verity1") / "plan.json").read_text())
            assert (
                f"verity 1 /dev/vda /dev/vda 4096 4096 {verity.data_blocks}"
                in (plan["kernel_cmdline"])
            )
            assert verity.root_hash in plan["kernel_cmdline"]
            assert "root=/dev/dm-0" in plan["kernel_cmdline"]
            agent = await vm.agent()
            got: dict[str, str] = {}
            async with agent.follow_logs("probe") as lines:
                with anyio.fail_after(90):
                    async for line in lines:
                        key, _, value = line.line.partition(":")
                        got[key] = value.strip()
                        if {"dm-name", "dm-dev", "root-dev"} <= set(got):
                            break
            assert got["dm-name"] == "vroot"
            dev, options = got["root-dev"].split()
            assert dev == got["dm-dev"] != ""  # / is mounted from the mapping, read-only
            assert options.split(",")[0] == "ro"
        finally:
            with anyio.CancelScope(shield=True):
                await engine.stop("verity1")

        tampered_dir = tmp_path / "tampered"
        shutil.copytree(sealed_image.directory, tampered_dir)
        _flip_init_byte(tampered_dir / "rootfs.ext4")
        tampered = Image.load(tampered_dir)
        assert tampered.verity == verity  # the meta (and so the plan) still say the build's hash
        with pytest.raises(MvmError) as refused:
            await engine.start(VmRequest(name="verity2", image_dir=str(tampered_dir)), tampered)
        assert refused.value.code == "E_VERITY", refused.value.one_line()
        assert re.search(r"data block \d+ is corrupted", refused.value.message)
