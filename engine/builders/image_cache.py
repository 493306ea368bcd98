"""The built images on disk, for ``mvmctl images`` / ``rmi`` / ``image prune``.

Both build paths cache whole image directories: the offline builder under
``<cache>/images/<key>/`` and the build cache (flakes, Nix) under ``<cache>/builds/<key>/``.
Each holds ``mvm-meta.json`` (whose ``name`` is the image's name). A VM row records the
resolved image directory it booted, so "in use" is a path comparison: an image any VM
row (running or stopped) names is kept, because ``start`` boots that VM from it again.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from mvm.engine.base.errors import ConflictError, NotFoundError
from mvm.engine.base.paths import cache_dir
from mvm.engine.store import VmRecord

CACHE_SUBDIRS = ("images", "builds")


@attrs.frozen(kw_only=True)
class CachedImage:
    """One image directory of the cache."""

    name: str
    key: str
    directory: Path
    size_bytes: int
    created_at: float
    # bytes in files hard-linked from elsewhere too (the kernel every image links from the
    # kernel cache): removing this image alone does not free them
    shared_bytes: int = 0
    used_by: tuple[str, ...] = ()

    @property
    def short_key(self) -> str:
        return self.key[:12]


def _files(directory: Path) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(device, inode) -> (size, link count, links under ``directory``) of every regular
    file under ``directory``."""
    out: dict[tuple[int, int], tuple[int, int, int]] = {}
    for path in directory.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            here = out[inode][2] if inode in out else 0
            out[inode] = (st.st_size, st.st_nlink, here + 1)
    return out


def _sizes(directory: Path) -> tuple[int, int]:
    """(total, shared) bytes: shared ones are in files with links outside this image."""
    files = _files(directory).values()
    return sum(f[0] for f in files), sum(size for size, links, here in files if links > here)


def _name(meta_path: Path, fallback: str) -> str:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return fallback
    return str(meta.get("name", fallback)) if isinstance(meta, dict) else fallback


def list_images(vms: Iterable[VmRecord] = (), cache: Path | None = None) -> list[CachedImage]:
    """Every complete image directory of the cache (staging dirs skipped), oldest first,
    each with the VMs whose rows name it."""
    users: dict[Path, list[str]] = {}
    for vm in vms:
        try:
            users.setdefault(Path(vm.image).resolve(), []).append(vm.name)
        except (OSError, ValueError):
            continue
    root = cache if cache is not None else cache_dir()
    out: list[CachedImage] = []
    for sub in CACHE_SUBDIRS:
        base = root / sub
        if not base.is_dir():
            continue
        for directory in base.iterdir():
            meta = directory / "mvm-meta.json"
            if directory.name.startswith(".") or not meta.is_file():
                continue
            resolved = directory.resolve()
            total, shared = _sizes(directory)
            out.append(
                CachedImage(
                    name=_name(meta, directory.name),
                    key=directory.name,
                    directory=resolved,
                    size_bytes=total,
                    shared_bytes=shared,
                    created_at=meta.stat().st_mtime,
                    used_by=tuple(sorted(users.get(resolved, ()))),
                )
            )
    return sorted(out, key=lambda i: (i.created_at, i.key))


def select(images: Sequence[CachedImage], ref: str) -> list[CachedImage]:
    """The images ``ref`` names: its name exactly, else a unique key prefix."""
    by_name = [i for i in images if i.name == ref]
    if by_name:
        return by_name
    by_key = [i for i in images if i.key.startswith(ref)]
    if len(by_key) > 1:
        raise ConflictError(
            f"image key prefix {ref!r} matches {len(by_key)} images",
            code="E_IMAGE_AMBIGUOUS",
        )
    if not by_key:
        raise NotFoundError(
            f"no cached image is named {ref!r} or has that key", code="E_IMAGE_UNKNOWN"
        )
    return by_key


def remove(images: Sequence[CachedImage], *, force: bool = False) -> int:
    """Delete ``images`` from the cache; refuses (before deleting any) one a VM row
    still uses unless ``force``. Returns the bytes really freed: a file counts once, and
    only if every one of its links was inside the removed images."""
    if not force:
        for image in images:
            if image.used_by:
                raise ConflictError(
                    f"image {image.name} ({image.short_key}) is used by VM "
                    f"{', '.join(image.used_by)}",
                    code="E_IMAGE_IN_USE",
                )
    links_seen: dict[tuple[int, int], list[int]] = {}  # inode -> [size, links, seen]
    for image in images:
        for inode, (size, links, here) in _files(image.directory).items():
            links_seen.setdefault(inode, [size, links, 0])[2] += here
    for image in images:
        shutil.rmtree(image.directory, ignore_errors=True)
    return sum(size for size, links, seen in links_seen.values() if seen >= links)


def prunable(images: Sequence[CachedImage], *, all_images: bool = False) -> list[CachedImage]:
    """What ``image prune`` removes: images no VM row uses. Without ``--all`` the newest
    image of each name is kept too (the one a rebuild would hit); ``--all`` drops that."""
    unused = [i for i in images if not i.used_by]
    if all_images:
        return unused
    newest: dict[str, CachedImage] = {}
    for image in images:  # oldest first, so the last seen is the newest
        newest[image.name] = image
    keep = {i.directory for i in newest.values()}
    return [i for i in unused if i.directory not in keep]
