"""The kernel command line of a verified root: a dm-verity mapping built by dm-init.

The guest kernel has DM_INIT, so the mapping is created from the command line
before the root is mounted (no initramfs, no dmsetup in the guest): ``vroot`` maps
the data area of ``/dev/vda`` and checks every block read against the hash tree
appended to the same disk, whose root hash is the one in the signed plan. A
single disk keeps the volume device names (vdb, ...) unchanged. A block that does
not match reads as an I/O error and the kernel logs ``data block N is corrupted``.

Pure functions: every backend calls :func:`root_args` from its ``prepare``, so the
dm table is part of the LaunchPlan (and of ``plan.json``).
"""

from __future__ import annotations

import re
from typing import Any

from mvm.backends.abc.types import Verity

ALGORITHM = "sha256"
BLOCK_SIZE = 4096
SECTOR_SIZE = 512
DM_NAME = "vroot"
ROOT_DEVICE = "/dev/vda"
VERITY_ROOT = "/dev/dm-0"
_HEX = re.compile(r"^[0-9a-f]+$")


def check_verity(verity: Verity) -> None:
    """Refuse parameters that could smuggle text into the command line (they come
    from a signed plan, but the table is built by string formatting)."""
    if not (_HEX.match(verity.root_hash) and _HEX.match(verity.salt)):
        raise ValueError("verity root hash and salt must be lowercase hex")
    if not re.fullmatch(r"[a-z0-9]+", verity.algorithm):
        raise ValueError(f"bad verity hash algorithm {verity.algorithm!r}")
    if verity.data_blocks <= 0 or verity.hash_offset != verity.data_blocks * BLOCK_SIZE:
        raise ValueError("verity hash_offset must be data_blocks * 4096 (tree after the data)")


def dm_table(verity: Verity, device: str = ROOT_DEVICE) -> str:
    """The verity target line (Documentation/admin-guide/device-mapper/verity.rst)."""
    check_verity(verity)
    sectors = verity.data_blocks * BLOCK_SIZE // SECTOR_SIZE
    hash_start = verity.hash_offset // BLOCK_SIZE  # no superblock: the tree starts there
    return (
        f"0 {sectors} verity 1 {device} {device} {BLOCK_SIZE} {BLOCK_SIZE} "
        f"{verity.data_blocks} {hash_start} {verity.algorithm} {verity.root_hash} {verity.salt}"
    )


def dm_create_arg(verity: Verity, device: str = ROOT_DEVICE) -> str:
    """``dm-mod.create="name,uuid,minor,flags,table"`` (dm-init.rst): read-only ``vroot``."""
    return f'dm-mod.create="{DM_NAME},,,ro,{dm_table(verity, device)}"'


def root_args(verity: Verity | None) -> tuple[str, ...]:
    """The root= arguments: the plain disk, or the verity mapping over it."""
    if verity is None:
        return (f"root={ROOT_DEVICE}",)
    return (dm_create_arg(verity), f"root={VERITY_ROOT}")


def verity_from_meta(meta: dict[str, Any]) -> Verity | None:
    """The ``verity`` of an mvm-meta.json (absent or null: none); ValueError if malformed.
    Here, not with the formatter (backends/image), so that engine/images can read an
    image's meta without importing the image assembler (which imports engine/images)."""
    raw = meta.get("verity")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("verity must be an object or null")
    try:
        verity = Verity(
            root_hash=str(raw["root_hash"]),
            salt=str(raw["salt"]),
            data_blocks=int(raw["data_blocks"]),
            hash_offset=int(raw["hash_offset"]),
            algorithm=str(raw.get("algorithm", ALGORITHM)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"verity is malformed: {exc}") from None
    check_verity(verity)
    return verity
