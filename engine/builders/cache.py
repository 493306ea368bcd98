"""The build cache: content-addressed image directories, promoted atomically from staging.

Key: what decides the output. For a flake that is its ``flake.lock`` (pinned
inputs), its own source tree (editing ``flake.nix`` must miss even when the lock
is unchanged) and the package attribute; for a spec or IR it is the canonical
hash. The builder family (``nix`` vs ``offline``) is part of the key because the
two paths produce different bytes for the same input.

Layout: ``<cache>/builds/<key>/{vmlinux,rootfs.ext4,mvm-meta.json,mvm-build.json}``.
A build writes into ``<cache>/builds/.staging-<key>-<rand>/`` and is renamed into
place only when complete, so a reader sees a whole image or none; failure and
cancellation delete the staging dir (shielded, so Ctrl-C cannot skip it). A crash
can leave a stale ``.staging-*``; :meth:`BuildCache.sweep` removes those. Promotion
finalises the image first: a sealed rootfs gets its dm-verity tree (backends/image/verity.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import cattrs
import rfc8785

from mvm.backends.image.verity import finalise_verity
from mvm.engine.base.errors import ConfigError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir
from mvm.engine.builders import ARTIFACTS, BuildJob, check_artifacts
from mvm.engine.images.image import Image
from mvm.engine.store import StateStore

log = get_logger("mvm.build.cache")

CACHE_VERSION = "1"
MANIFEST = "mvm-build.json"
STAGING_PREFIX = ".staging-"
# Never part of a flake's identity: VCS metadata, nix result links, editor litter.
_SKIP_NAMES = frozenset({".git", ".hg", ".direnv", "__pycache__", ".mvm"})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_hash(root: Path) -> str:
    """Hash of a directory's relative paths, exec bits, symlink targets and contents.

    Only what a flake build can see counts: ``result*`` links from earlier
    ``nix build`` runs and VCS dirs are skipped.
    """
    if not root.is_dir():
        raise ConfigError(f"flake source {root} is not a directory", code="E_BUILD_SOURCE")
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_NAMES)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel.startswith("result") and path.is_symlink():
                continue
            info = path.lstat()
            digest.update(rel.encode() + b"\0")
            if stat.S_ISLNK(info.st_mode):
                digest.update(b"L" + os.readlink(path).encode() + b"\0")
            elif stat.S_ISREG(info.st_mode):
                digest.update(b"X" if info.st_mode & 0o111 else b"F")
                digest.update(_file_hash(path).encode() + b"\0")
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@attrs.frozen
class CacheKey:
    """The key and what went into it (recorded in the manifest for humans)."""

    key: str
    inputs: dict[str, str]


@functools.cache
def library_fingerprint() -> str:
    """What of the installed mvm goes into every image: the guest's /init, agent and
    function wrapper, the Nix library (``--override-input mvm``), the offline recipe and
    the kernel config. Part of every key, so upgrading mvm never serves an image whose
    agent predates it (a user's unchanged flake.lock says nothing about that)."""
    from mvm.backends import nix_meta
    from mvm.backends.guest import build as guest_build
    from mvm.backends.image.key import RECIPE_VERSION

    guest = Path(guest_build.__file__).parent
    backends = guest.parent
    nix_lib = nix_meta.nix_dir()
    files = [*guest_build.agent_sources(), guest_build.init_script(), guest / "wrapper.py"]
    files += sorted((backends / "kernel").glob("*.config"))
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(tree_hash(nix_lib).encode())
    return digest.hexdigest()


def job_key(job: BuildJob, family: str) -> CacheKey:
    """The cache key for ``job`` when built by ``family`` (``nix`` or ``offline``).

    The offline builder's output depends only on the spec (a flake it builds was
    evaluated to one, possibly adjusted, e.g. ``dev = true``), so that is its key,
    with the library's fingerprint as for every key."""
    inputs: dict[str, str] = {
        "version": CACHE_VERSION,
        "family": family,
        "library": library_fingerprint(),
    }
    if job.source is not None and not (family == "offline" and job.spec is not None):
        lock = job.source / "flake.lock"
        inputs["kind"] = "flake"
        inputs["attr"] = job.attr
        inputs["flake_lock"] = _file_hash(lock) if lock.is_file() else "unlocked"
        inputs["source"] = tree_hash(job.source)
    else:
        assert job.spec is not None
        inputs["kind"] = "spec"
        inputs["spec"] = _sha256(rfc8785.dumps(cattrs.unstructure(job.spec)))
    return CacheKey(key=_sha256(rfc8785.dumps(inputs))[:32], inputs=inputs)


@attrs.frozen
class CacheStats:
    hits: int = 0
    misses: int = 0


class BuildCache:
    """Lookup, staging and atomic promotion under ``root`` (default ``<cache>/builds``).

    With a ``store`` every promotion and failure is also a row in the state DB's
    ``builds`` table, so ``mvmctl`` can list builds without walking the disk.
    """

    def __init__(self, root: Path | None = None, *, store: StateStore | None = None) -> None:
        self.root = root if root is not None else cache_dir() / "builds"
        self.store = store

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Image | None:
        """The cached image for ``key``, or None. A damaged entry (an artifact deleted
        by hand) is removed so the next build replaces it."""
        final = self.path(key)
        if not final.is_dir():
            return None
        try:
            check_artifacts(final, phase="cache")
            return Image.load(final)
        except MvmError as exc:
            log.warning("build.cache_damaged", key=key, error=exc.code)
            shutil.rmtree(final, ignore_errors=True)
            return None

    @asynccontextmanager
    async def staging(self, key: CacheKey, *, mode: str) -> AsyncIterator[Path]:
        """An empty staging dir; promoted to the cache when the block ends normally,
        deleted (shielded) when it raises or is cancelled."""
        self.root.mkdir(parents=True, exist_ok=True)
        work = self.root / f"{STAGING_PREFIX}{key.key}-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        started = time.monotonic()
        if self.store is not None:
            await self.store.record_build(key.key, key.inputs.get("source", ""), "", "building")
        try:
            yield work
            await self._promote(work, key, mode=mode, seconds=time.monotonic() - started)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, work, True)
                if self.store is not None:
                    await self.store.record_build(
                        key.key, key.inputs.get("source", ""), "", "failed"
                    )
            raise

    async def _promote(self, work: Path, key: CacheKey, *, mode: str, seconds: float) -> None:
        check_artifacts(work)
        # Finalisation, whatever the builder: a sealed root gets its dm-verity tree here.
        await anyio.to_thread.run_sync(functools.partial(finalise_verity, work, seed=key.key))
        manifest: dict[str, Any] = {
            "key": key.key,
            "inputs": key.inputs,
            "mode": mode,
            "seconds": round(seconds, 3),
            "built_at": time.time(),
            "artifacts": {name: (work / name).stat().st_size for name in ARTIFACTS},
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        final = self.path(key.key)
        try:
            os.rename(work, final)
        except OSError:
            # Another process promoted the same key first: theirs is equally good.
            if self.lookup(key.key) is None:
                raise
            await anyio.to_thread.run_sync(shutil.rmtree, work, True)
        if self.store is not None:
            with anyio.CancelScope(shield=True):
                await self.store.record_build(
                    key.key, key.inputs.get("source", ""), str(final), "ready"
                )
        log.info("build.promoted", key=key.key, mode=mode, seconds=round(seconds, 3))

    def staging_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith(STAGING_PREFIX))

    def sweep(self, older_than_s: float = 3600.0) -> int:
        """Remove staging dirs a crashed process left (older than ``older_than_s``, so a
        concurrent build's live staging dir is spared); returns how many."""
        cutoff = time.time() - older_than_s
        stale = [p for p in self.staging_dirs() if p.stat().st_mtime < cutoff]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)
