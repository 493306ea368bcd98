"""Reproducible ext4 creation from a staged tree, without root and without mounting.

The tree is written by ``mkfs.ext4 -d``; ownership is then set inside the image
with ``debugfs -w`` (``set_inode_field``), because ``mke2fs -d`` copies the
staging files' owners and its ``root_owner=`` option covers only ``/``. So a
non-root user gets the same root-owned image as root does, and no chown is
needed anywhere.

The result is byte-identical for the same tree and key: fixed UUID and htree
hash seed derived from the key, ``E2FSPROGS_FAKE_TIME`` for superblock/crtime,
fixed atime/mtime/ctime on every inode, mke2fs 1.47 sorting directory entries,
and our own ``mke2fs.conf`` so the host's defaults do not leak in.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

import anyio

from mvm.backends.image.layout import SETUP_HINT
from mvm.backends.image.tree import _Tree
from mvm.engine.base.errors import BuildError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.image")

SOURCE_DATE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: every timestamp in the image
MIN_IMAGE_BYTES = 32 * 1024 * 1024
_MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 0

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
"""


def _tree_entries(root: Path) -> tuple[list[str], int]:
    """Guest paths of every entry (sorted) and the bytes the content will need."""
    paths = ["/"]
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            paths.append("/" + str(p.relative_to(root)))
            st = p.lstat()
            size += 4096 + (-(-st.st_size // 4096) * 4096 if stat.S_ISREG(st.st_mode) else 0)
    return paths, size


def _fixed_times(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(
                Path(dirpath) / name,
                (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH),
                follow_symlinks=False,
            )
    os.utime(root, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def _fs_ids(key: str) -> tuple[str, str]:
    digest = hashlib.sha256(b"mvm-rootfs-ids" + key.encode()).digest()
    fs_uuid = uuid.UUID(bytes=digest[:16], version=4)
    hash_seed = uuid.UUID(bytes=digest[16:32], version=4)
    return str(fs_uuid), str(hash_seed)


def _e2fs_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKE2FS_", "E2FSPROGS_"))}
    conf = work / "mke2fs.conf"
    conf.write_text(_MKE2FS_CONF)
    env.update(
        LC_ALL="C",
        MKE2FS_CONFIG=str(conf),
        E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH),
        SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
    )
    return env


async def _make_filesystem(tree: _Tree, image: Path, work: Path, key: str) -> None:
    await anyio.to_thread.run_sync(_fixed_times, tree.root)
    paths, content = await anyio.to_thread.run_sync(_tree_entries, tree.root)
    size = max(MIN_IMAGE_BYTES, 2 * content)
    size = -(-size // (1 << 20)) * (1 << 20)
    inodes = 2 * len(paths) + 1024
    fs_uuid, hash_seed = _fs_ids(key)
    env = _e2fs_env(work)
    await _run_e2fs(
        [
            "mkfs.ext4", "-q", "-F", "-t", "ext4", "-L", "mvm-root",
            "-N", str(inodes), "-U", fs_uuid,
            "-E", f"hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0",
            "-d", str(tree.root), str(image), f"{size // 1024}k",
        ],
        env,
    )  # fmt: skip
    commands = work / "debugfs.cmd"
    t = f"@{SOURCE_DATE_EPOCH}"
    with commands.open("w") as f:
        for path in paths:
            uid, gid = tree.owners.get(path, (0, 0))
            q = f'"{path}"'
            f.write(f"sif {q} uid {uid}\nsif {q} gid {gid}\n")
            for field in ("atime", "mtime", "ctime", "crtime"):
                f.write(f"sif {q} {field} {t}\n")
    await _run_e2fs(["debugfs", "-w", "-f", str(commands), str(image)], env, debugfs=True)
    await _run_e2fs(["e2fsck", "-f", "-n", str(image)], env)
    log.debug("image.fs", size=size, entries=len(paths), content=content)


async def _run_e2fs(argv: list[str], env: dict[str, str], *, debugfs: bool = False) -> None:
    try:
        result = await anyio.run_process(argv, env=env, check=False)
    except FileNotFoundError:
        raise BuildError(
            f"{argv[0]} not found",
            code="E_E2FSPROGS",
            hint=f"apt-get install e2fsprogs ({SETUP_HINT})",
        ) from None
    errors = result.stderr.decode(errors="replace").strip()
    if debugfs:
        # debugfs exits 0 even when a command fails; its stderr is the only signal.
        errors = "\n".join(line for line in errors.splitlines() if not line.startswith("debugfs "))
    if result.returncode != 0 or (debugfs and errors):
        detail = (errors or result.stdout.decode(errors="replace")).strip().splitlines()
        raise BuildError(
            f"{argv[0]} failed (exit {result.returncode}): {detail[-1] if detail else ''}",
            code="E_IMAGE_FS",
        )
