"""The builder VM's image: assembled from Debian packages, cached by its fingerprint.

``~/.cache/mvm/builder-vm/<arch>/current/`` holds ``vmlinux``, ``rootfs.ext4``,
``mvm-meta.json`` and ``provenance.json``: the source fingerprint (the Debian package
versions, the guest /init and agent, the kernel, the mvm Nix library and offline package
set it carries, and this recipe), the artifacts' SHA-256 and a summary without paths or
digests. A lookup answers one of the seed's safe reason codes; anything but ``hit``
rebuilds in a hidden ``.staging-*`` directory that is renamed over ``current`` only when
complete, so Ctrl-C or a crash never leaves a half image in use.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs

from mvm.backends.guest.build import agent_binary, init_script
from mvm.backends.image import assemble_rootfs, image_meta
from mvm.backends.kernel_build import ensure_kernel
from mvm.backends.nix_meta import nix_dir
from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir
from mvm.engine.builders import offline_pkgs
from mvm.engine.builders.builder_vm import layout
from mvm.engine.builders.builder_vm.debian import BUILDER_ROOTS, DebianClosure, closure
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec

log = get_logger("mvm.builder_vm")

RECIPE = "builder-vm/1"
ARTIFACTS = ("vmlinux", "rootfs.ext4", "mvm-meta.json")
PROVENANCE = "provenance.json"
ProgressFn = Callable[[str], None]

SPEC = ImageSpec(name="mvm-builder", shell="/bin/sh", dev=True, vcpus=2, memory_mib=2048)


@attrs.frozen
class CacheState:
    """A lookup's answer: ``reason`` is one of the seed's safe codes (``hit``,
    ``missing_artifact``, ``missing_fingerprint``, ``fingerprint_mismatch``,
    ``missing_artifact_digest_manifest``, ``artifact_digest_mismatch``,
    ``missing_provenance``, ``provenance_mismatch``); never a path or digest."""

    reason: str
    directory: Path

    @property
    def ready(self) -> bool:
        return self.reason == "hit"

    def summary(self) -> dict[str, object]:
        return {"kind": "builder-vm", "arch": arch(), "ready": self.ready, "reason": self.reason}


def arch() -> str:
    return platform.machine() or "x86_64"


def cache_root() -> Path:
    return cache_dir() / "builder-vm" / arch()


def _roots() -> tuple[str, ...]:
    return tuple(dict.fromkeys((*BUILDER_ROOTS, *offline_pkgs.debian_packages())))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_digest(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(
            p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ):
            digest.update(f"{path.relative_to(root.parent)}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@attrs.frozen
class Inputs:
    """Everything the image is made of; ``fingerprint`` changes when any of it does."""

    debian: DebianClosure
    kernel: Path
    agent: Path
    init: Path
    library: Path  # the installed mvm's nix/ (with ../backends/guest next to it)

    @property
    def guest_sources(self) -> Path:
        return self.library.parent / "backends" / "guest"

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for line in (
            RECIPE,
            *self.debian.fingerprint_lines,
            _sha256(self.kernel),
            _sha256(self.agent),
            _sha256(self.init),
            _tree_digest(self.library, self.guest_sources),
            _tree_digest(Path(__file__).resolve().parent),  # this recipe's own code
        ):
            digest.update(line.encode() + b"\n")
        return digest.hexdigest()


async def gather_inputs(progress: ProgressFn | None = None) -> Inputs:
    debian = await anyio.to_thread.run_sync(closure, _roots())
    kernel = await ensure_kernel(progress=(lambda text, _f: progress(text)) if progress else None)
    agent = await anyio.to_thread.run_sync(agent_binary)
    return Inputs(debian=debian, kernel=kernel, agent=agent, init=init_script(), library=nix_dir())


def inspect(fingerprint: str | None, root: Path | None = None) -> CacheState:
    """The cache's state against ``fingerprint`` (None: only what needs no inputs)."""
    current = (root or cache_root()) / "current"
    if not all((current / name).is_file() for name in ARTIFACTS):
        return CacheState("missing_artifact", current)
    try:
        prov = json.loads((current / PROVENANCE).read_text())
    except (OSError, ValueError):
        return CacheState("missing_provenance", current)
    if not isinstance(prov, dict):
        return CacheState("missing_provenance", current)
    recorded = prov.get("fingerprint")
    if not isinstance(recorded, str):
        return CacheState("missing_fingerprint", current)
    if fingerprint is not None and recorded != fingerprint:
        return CacheState("fingerprint_mismatch", current)
    digests = prov.get("artifacts")
    if not isinstance(digests, dict):
        return CacheState("missing_artifact_digest_manifest", current)
    summary = prov.get("summary")
    if not isinstance(summary, dict) or sorted(summary.get("artifacts", [])) != sorted(digests):
        return CacheState("provenance_mismatch", current)
    for name in ARTIFACTS:
        if digests.get(name) != _sha256(current / name):
            return CacheState("artifact_digest_mismatch", current)
    return CacheState("hit", current)


async def ensure_builder_image(progress: ProgressFn | None = None) -> tuple[Image, CacheState]:
    """The builder image, rebuilt first unless the cache is a hit; the lookup's state."""
    report = progress or (lambda _t: None)
    inputs = await gather_inputs(progress)
    fingerprint = await anyio.to_thread.run_sync(inputs.fingerprint)
    root = cache_root()
    state = await anyio.to_thread.run_sync(inspect, fingerprint, root)
    log.info("builder_vm.cache", reason=state.reason)
    if not state.ready:
        report(f"builder image: {state.reason}, assembling it from Debian packages")
        await _build(inputs, fingerprint, root)
        state = await anyio.to_thread.run_sync(inspect, fingerprint, root)
        if not state.ready:
            raise BuildPhaseError(
                "builder bootstrap",
                f"the builder image just built does not check out ({state.reason})",
                code="E_BUILDER_IMAGE",
            )
    return Image.load(state.directory), state


async def _build(inputs: Inputs, fingerprint: str, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        out = staging / "out"
        out.mkdir(parents=True)
        meta = image_meta(SPEC, fingerprint) | {"builder": "builder-vm"}
        await assemble_rootfs(
            SPEC, meta, agent=inputs.agent, init=inputs.init, work=staging,
            image=out / "rootfs.ext4", key=fingerprint,
            extend=lambda tree: layout.extend(tree, inputs.debian, inputs.kernel, inputs.library),
        )  # fmt: skip
        (out / "mvm-meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(inputs.kernel, out / "vmlinux")
        digests = {name: await anyio.to_thread.run_sync(_sha256, out / name) for name in ARTIFACTS}
        provenance = {
            "fingerprint": fingerprint,
            "artifacts": digests,
            "summary": {
                "recipe": RECIPE,
                "artifacts": sorted(digests),
                "debian_packages": len(inputs.debian.versions),
                "files": len(inputs.debian.files),
                "built_at": int(time.time()),
            },
        }
        (out / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        _promote(out, root)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, staging, True)
    log.info("builder_vm.image_built", seconds=round(time.monotonic() - started, 1))


def _promote(out: Path, root: Path) -> None:
    """``current`` is replaced in two renames; a crash between them leaves ``.old-*``
    (removed next time) and no ``current``, which reads as ``missing_artifact``."""
    current = root / "current"
    for stale in root.glob(".old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if current.exists():
        os.rename(current, root / f".old-{uuid.uuid4().hex[:8]}")
    os.rename(out, current)
    for stale in root.glob(".old-*"):
        shutil.rmtree(stale, ignore_errors=True)
