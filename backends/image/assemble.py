"""A rootfs from a spec plus a caller's own files: the guest contract first, then more.

``build_image`` is the content-addressed path for user images. The builder VM's image
is the same guest (``/init``, the agent, busybox, the ``/etc/mvm`` files) with a large
tree of Debian files added, cached by its own fingerprint elsewhere; this is the one
door it uses into the staging and mkfs steps, so both images are made the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from mvm.backends.image.checks import _checked_spec
from mvm.backends.image.ext4 import _make_filesystem
from mvm.backends.image.layout import BUSYBOX
from mvm.backends.image.tree import _populate, _Tree
from mvm.engine.images.imagespec import ImageSpec


class GuestTree:
    """What ``extend`` may do to the staged tree (a narrow face of ``_Tree``)."""

    def __init__(self, tree: _Tree) -> None:
        self._tree = tree

    @property
    def root(self) -> Path:
        return self._tree.root

    def exists(self, guest: str) -> bool:
        p = self._tree.host(guest)
        return p.exists() or p.is_symlink()

    def dir(self, guest: str, mode: int = 0o755) -> None:
        self._tree.dir(guest, mode)

    def file(self, guest: str, data: bytes | str, mode: int = 0o644) -> None:
        self._tree.file(guest, data, mode)

    def copy(self, guest: str, source: Path, mode: int) -> None:
        self._tree.copy(guest, source, mode)

    def symlink(self, guest: str, target: str) -> None:
        self._tree.symlink(guest, target)


async def assemble_rootfs(
    spec: ImageSpec,
    meta: dict[str, Any],
    *,
    agent: Path,
    init: Path,
    work: Path,
    image: Path,
    key: str,
    extend: Callable[[GuestTree], None],
    busybox: Path = BUSYBOX,
) -> None:
    """Stage ``spec``'s guest in ``work/tree``, let ``extend`` add to it (in a worker
    thread), and write ``image``. ``key`` seeds the filesystem's UUID and hash seed."""
    applets, packages = await _checked_spec(spec, busybox)
    tree = _Tree(work / "tree")
    await anyio.to_thread.run_sync(
        _populate, tree, spec, meta, agent, init, busybox, applets, packages
    )
    await anyio.to_thread.run_sync(extend, GuestTree(tree))
    await _make_filesystem(tree, image, work, key)
