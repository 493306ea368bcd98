"""Image finalisation: a sealed rootfs gets its dm-verity hash tree appended.

Every builder (offline assembler, host Nix, builder VM, SSH) hands the host a
directory with ``rootfs.ext4`` and ``mvm-meta.json``; :func:`finalise_verity` runs
there, host-side, once per image. For a sealed image it runs ``veritysetup format``
(Debian's cryptsetup-bin) with the tree written into the same file right after the
filesystem (``--hash-offset`` = the filesystem's size, no superblock) and records
``verity: {root_hash, salt, data_blocks, hash_offset, algorithm}`` in the meta; an
accessible (dev) image records ``verity: null``. The salt is derived from the
image's cache key, so the same inputs still give the same bytes.

Idempotent: a meta that already has a ``verity`` key is left alone (an offline
image finalised in its own cache and then promoted into the build cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs

from mvm.backends.abc.types import Verity
from mvm.backends.abc.verity import ALGORITHM, BLOCK_SIZE, check_verity, verity_from_meta
from mvm.engine.base.errors import BuildError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.image.verity")

VERITYSETUP = "veritysetup"
_FIELD = re.compile(r"^(Root hash|Salt|Data blocks|Hash algorithm):\s*(\S+)\s*$", re.MULTILINE)


def verity_salt(seed: str) -> str:
    """A reproducible 32-byte salt: the same image inputs give the same tree."""
    return hashlib.sha256(b"mvm-verity\0" + seed.encode()).hexdigest()


def format_verity(rootfs: Path, *, salt: str) -> Verity:
    """Append the hash tree to ``rootfs`` (a multiple of 4096 bytes) and return its
    parameters as veritysetup reported them."""
    size = rootfs.stat().st_size
    if size == 0 or size % BLOCK_SIZE:
        raise BuildError(
            f"{rootfs} is {size} bytes, not a whole number of 4096-byte blocks",
            code="E_VERITY_FORMAT",
        )
    tool = shutil.which(VERITYSETUP)
    if tool is None:
        raise BuildError(
            "veritysetup is not installed (needed to seal the image's root)",
            code="E_VERITY_FORMAT",
            hint="run ./scripts/setup (Debian package cryptsetup-bin)",
        )
    blocks = size // BLOCK_SIZE
    argv = [
        tool,
        "format",
        "--no-superblock",
        f"--hash={ALGORITHM}",
        f"--data-block-size={BLOCK_SIZE}",
        f"--hash-block-size={BLOCK_SIZE}",
        f"--data-blocks={blocks}",
        f"--hash-offset={size}",
        f"--salt={salt}",
        str(rootfs),
        str(rootfs),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(
            f"veritysetup format {rootfs} failed: {detail[-1] if detail else done.returncode}",
            code="E_VERITY_FORMAT",
        )
    fields = dict(_FIELD.findall(done.stdout))
    try:
        verity = Verity(
            root_hash=fields["Root hash"],
            salt=fields["Salt"],
            data_blocks=int(fields["Data blocks"]),
            hash_offset=size,
            algorithm=fields["Hash algorithm"],
        )
        check_verity(verity)
    except (KeyError, ValueError) as exc:
        raise BuildError(
            f"unexpected veritysetup output for {rootfs}: {exc}", code="E_VERITY_FORMAT"
        ) from None
    return verity


def finalise_verity(directory: Path, *, seed: str) -> Verity | None:
    """Seal ``directory``'s rootfs if its meta says sealed; record ``verity`` either way."""
    meta_path = directory / "mvm-meta.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if "verity" in meta:
        return verity_from_meta(meta)
    verity = None
    if bool(meta.get("sealed", True)):
        rootfs = directory / "rootfs.ext4"
        if not os.access(rootfs, os.W_OK):  # copied out of a Nix store: 0444
            rootfs.chmod(rootfs.stat().st_mode | 0o200)
        verity = format_verity(rootfs, salt=verity_salt(seed))
        log.info("image.verity", root_hash=verity.root_hash, data_blocks=verity.data_blocks)
    meta["verity"] = None if verity is None else attrs.asdict(verity)
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, meta_path)
    return verity
