"""dm-verity for sealed images without booting: the hash tree veritysetup appends (real
veritysetup on a real ext4), the meta record, the dm table every backend puts on the
kernel command line, the root hash bound into the signed plan, the host's check that the
image still matches the plan, and the console line that becomes E_VERITY."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest

from mvm.backends.abc.types import Accel, Verity, VmSpec
from mvm.backends.abc.verity import dm_create_arg, dm_table, root_args, verity_from_meta
from mvm.backends.cloud_hypervisor.config import cmdline as ch_cmdline
from mvm.backends.firecracker.config import boot_args, boot_calls
from mvm.backends.image.verity import finalise_verity, format_verity
from mvm.backends.qemu.argv import kernel_cmdline
from mvm.engine.admission.plans import Admission, ExecutionPlan, verify_plan
from mvm.engine.base.errors import ConfigError, PlanSignatureError, SecurityError
from mvm.engine.images.image import Image
from mvm.engine.ir import Resources
from mvm.engine.vm.verity_check import check_image_verity, verity_corruption

V = Verity(root_hash="ab" * 32, salt="cd" * 32, data_blocks=2048, hash_offset=2048 * 4096)
TABLE = f"0 16384 verity 1 /dev/vda /dev/vda 4096 4096 2048 2048 sha256 {'ab' * 32} {'cd' * 32}"


def _ext4(path: Path, mib: int = 8) -> Path:
    subprocess.run(["truncate", "-s", f"{mib}M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


def _image(tmp_path: Path, *, sealed: bool = True) -> Path:
    directory = tmp_path / "img"
    directory.mkdir()
    (directory / "vmlinux").write_bytes(b"kernel")
    _ext4(directory / "rootfs.ext4")
    (directory / "mvm-meta.json").write_text(json.dumps({"name": "t", "sealed": sealed}))
    return directory


# -- the dm table -------------------------------------------------------------------------------


def test_table_and_root_args() -> None:
    assert dm_table(V) == TABLE
    assert dm_create_arg(V) == f'dm-mod.create="vroot,,,ro,{TABLE}"'
    assert root_args(V) == (dm_create_arg(V), "root=/dev/dm-0")
    assert root_args(None) == ("root=/dev/vda",)


@pytest.mark.parametrize(
    "bad",
    [
        attrs.evolve(V, root_hash="AB" * 32),
        attrs.evolve(V, salt='x" init=/bin/sh'),
        attrs.evolve(V, algorithm="sha256 x"),
        attrs.evolve(V, hash_offset=4096),
        attrs.evolve(V, data_blocks=0, hash_offset=0),
    ],
)
def test_table_refuses_parameters_that_could_inject(bad: Verity) -> None:
    with pytest.raises(ValueError):
        dm_table(bad)


def test_backends_boot_the_mapping(tmp_path: Path) -> None:
    spec = VmSpec(
        name="v", kernel=tmp_path / "k", rootfs=tmp_path / "r", run_dir=tmp_path, verity=V
    )
    qemu = kernel_cmdline(attrs.evolve(spec, rootfs_read_only=True), Accel.KVM, tsc_khz=None,
                          vsock=True)  # fmt: skip
    assert dm_create_arg(V) in qemu and "root=/dev/dm-0 ro" in qemu
    assert "root=/dev/vda" not in qemu
    plain = kernel_cmdline(attrs.evolve(spec, verity=None), Accel.KVM, tsc_khz=None, vsock=True)
    assert "root=/dev/vda" in plain and "dm-mod" not in plain
    ch = ch_cmdline(spec)
    assert dm_create_arg(V) in ch and "root=/dev/dm-0" in ch and "root=/dev/vda" not in ch
    # Firecracker appends root=/dev/vda for a root drive: a verified root is none
    fc = boot_args(spec)
    assert dm_create_arg(V) in fc and "root=/dev/dm-0 ro" in fc
    root_drive = next(c for c in boot_calls(spec) if c.path == "/drives/rootfs")
    assert root_drive.body is not None and root_drive.body["is_root_device"] is False
    plain_drive = next(
        c for c in boot_calls(attrs.evolve(spec, verity=None)) if c.path == "/drives/rootfs"
    )
    assert plain_drive.body is not None and plain_drive.body["is_root_device"] is True


# -- finalisation and the meta record -----------------------------------------------------------


def test_finalise_appends_the_tree_and_records_it(tmp_path: Path) -> None:
    directory = _image(tmp_path)
    size = (directory / "rootfs.ext4").stat().st_size
    verity = finalise_verity(directory, seed="key1")
    assert verity is not None
    assert (verity.data_blocks, verity.hash_offset) == (size // 4096, size)
    assert (directory / "rootfs.ext4").stat().st_size > size  # the tree follows the fs
    meta = json.loads((directory / "mvm-meta.json").read_text())
    assert meta["verity"] == attrs.asdict(verity)
    assert Image.load(directory).verity == verity == verity_from_meta(meta)
    # the kernel's view: veritysetup verify accepts the tree with the recorded root hash
    ok = subprocess.run(
        ["veritysetup", "verify", "--no-superblock", f"--hash-offset={size}",
         f"--data-blocks={verity.data_blocks}", f"--salt={verity.salt}",
         str(directory / "rootfs.ext4"), str(directory / "rootfs.ext4"), verity.root_hash],
        capture_output=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    # idempotent: a second finalisation (promotion of an offline image) changes nothing
    grown = (directory / "rootfs.ext4").stat().st_size
    assert finalise_verity(directory, seed="other") == verity
    assert (directory / "rootfs.ext4").stat().st_size == grown


def test_same_inputs_same_tree(tmp_path: Path) -> None:
    a = format_verity(_ext4(tmp_path / "a.ext4"), salt="00" * 32)
    b = format_verity(_ext4(tmp_path / "b.ext4"), salt="00" * 32)
    assert a.salt == "00" * 32 and a.data_blocks == b.data_blocks == 2048
    assert len(a.root_hash) == 64


def test_dev_images_record_no_verity(tmp_path: Path) -> None:
    directory = _image(tmp_path, sealed=False)
    size = (directory / "rootfs.ext4").stat().st_size
    assert finalise_verity(directory, seed="k") is None
    assert json.loads((directory / "mvm-meta.json").read_text())["verity"] is None
    assert (directory / "rootfs.ext4").stat().st_size == size


def test_malformed_meta_record_is_coded(tmp_path: Path) -> None:
    directory = _image(tmp_path)
    (directory / "mvm-meta.json").write_text(json.dumps({"sealed": True, "verity": {"x": 1}}))
    with pytest.raises(ConfigError) as err:
        _ = Image.load(directory).verity
    assert err.value.code == "E_IMAGE_META"


def test_unaligned_rootfs_is_refused(tmp_path: Path) -> None:
    rootfs = tmp_path / "r.ext4"
    rootfs.write_bytes(b"x" * 5000)
    with pytest.raises(Exception) as err:
        format_verity(rootfs, salt="00")
    assert getattr(err.value, "code", None) == "E_VERITY_FORMAT"


# -- the signed plan ----------------------------------------------------------------------------


def _issue(admission: Admission, **kw: Any) -> ExecutionPlan:
    return admission.issue(
        vm_name="v",
        ir_hash="a" * 64,
        image_ref="/img",
        resources=Resources(vcpus=1, memory_mb=256, boot_timeout_secs=30),
        **kw,
    )


def test_root_hash_is_signed(mvm_home: Path) -> None:
    admission = Admission()
    plan = _issue(admission, verity=V)
    assert plan.to_dict()["verity"]["root_hash"] == V.root_hash
    verify_plan(plan, admission.key.public_key)
    assert ExecutionPlan.from_dict(plan.to_dict()) == plan  # plan.json round trip
    swapped = attrs.evolve(plan, verity=attrs.evolve(V, root_hash="ee" * 32))
    with pytest.raises(PlanSignatureError):
        verify_plan(swapped, admission.key.public_key)
    dropped = attrs.evolve(plan, verity=None)
    with pytest.raises(PlanSignatureError):
        verify_plan(dropped, admission.key.public_key)
    entry = admission.admit(plan)
    assert entry.data["verity_root_hash"] == V.root_hash


# -- the host's check before launch, and the guest's verdict ------------------------------------


def test_mismatch_is_refused(tmp_path: Path) -> None:
    directory = _image(tmp_path)
    verity = finalise_verity(directory, seed="k")
    assert verity is not None
    check_image_verity(directory, verity)  # the image the plan signed: fine
    for planned in (attrs.evolve(verity, root_hash="ee" * 32), None):
        with pytest.raises(SecurityError) as err:
            check_image_verity(directory, planned)
        assert err.value.code == "E_VERITY_MISMATCH"
    # the meta agrees but the tree was cut off the rootfs
    with (directory / "rootfs.ext4").open("r+b") as handle:
        handle.truncate(verity.hash_offset)
    with pytest.raises(SecurityError) as err:
        check_image_verity(directory, verity)
    assert err.value.code == "E_VERITY_MISMATCH"


def test_console_corruption_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(
        "[    0.5] EXT4-fs (dm-0): mounted filesystem\n"
        "[    0.6] device-mapper: verity: 254:0: data block 1234 is corrupted\n"
        "[    0.6] Kernel panic - not syncing: Requested init /init failed (error -5).\n"
    )
    assert verity_corruption(log) == "device-mapper: verity: 254:0: data block 1234 is corrupted"
    log.write_text("[    0.5] EXT4-fs (dm-0): mounted filesystem\n")
    assert verity_corruption(log) is None
    assert verity_corruption(tmp_path / "missing.log") is None
