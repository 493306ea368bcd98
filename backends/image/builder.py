"""The offline image builder: ImageSpec + kernel + agent + init -> a bootable image directory.

The output has the same layout as the Nix path (``vmlinux``, ``rootfs.ext4``,
``mvm-meta.json``) so the runtime cannot tell them apart. This module is the
orchestration and the public face; each step lives in a module of its own:

- ``checks``: reject a bad spec or missing input before any slow step;
- ``key``: the content-addressed cache key (and ``spec_json``);
- ``tree``: stage the guest tree (the filesystem contract ``/init`` reads,
  see ``_populate``);
- ``ext4``: write that tree into a reproducible ``rootfs.ext4``, without root
  and without mounting;
- ``verity``: append a sealed image's dm-verity hash tree (``verity`` in the meta).

The image is reproducible: the same spec and inputs give a byte-identical
``rootfs.ext4``. Images are content-addressed under ``<cache>/images/<key>/``
and built in a ``.build-*`` work dir that is renamed into place, so a crash or
Ctrl-C never leaves a half image behind.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import anyio
import attrs

from mvm.backends.guest.build import agent_binary
from mvm.backends.image.checks import _check_inputs, _checked_spec, check_spec
from mvm.backends.image.checks import _validate_spec as _validate_spec  # for test_nix_lib

# The steps are imported by name on purpose: build_image looks them up in this module,
# so tests can monkeypatch image_builder._populate and image_builder._make_filesystem.
from mvm.backends.image.ext4 import MIN_IMAGE_BYTES, SOURCE_DATE_EPOCH, _make_filesystem
from mvm.backends.image.key import RECIPE_VERSION, _cache_key, spec_json
from mvm.backends.image.layout import AGENT_PATH, BASE_DIRS, BUSYBOX, SETUP_HINT
from mvm.backends.image.tree import _meta_bytes, _populate, _Tree
from mvm.backends.image.verity import finalise_verity
from mvm.engine.base.errors import BuildError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir
from mvm.engine.images.imagespec import ImageSpec

log = get_logger("mvm.image")

# The seeds' boot budget (passthru.mvm.expectedBootMs): <= 300 ms cold p50.
EXPECTED_BOOT_MS = 300
# passthru.mvm.agentBinary is "stub" | "real"; ours is the real C agent.
AGENT_BINARY = "real"


@attrs.frozen
class ImageArtifacts:
    rootfs: Path
    vmlinux: Path
    meta_path: Path
    meta: dict[str, Any]
    key: str


async def build_image(
    spec: ImageSpec,
    *,
    kernel: Path,
    agent: Path,
    init: Path,
    cache: Path | None = None,
    busybox: Path = BUSYBOX,
) -> ImageArtifacts:
    """Build (or reuse) the image for ``spec``; ``cache`` replaces ``cache_dir()`` as the root."""
    agent = await anyio.to_thread.run_sync(_agent_for, spec, agent)
    _check_inputs(kernel=kernel, agent=agent, init=init, busybox=busybox)
    applets, packages = await _checked_spec(spec, busybox)
    key, spec_hash = await anyio.to_thread.run_sync(
        _cache_key, spec, kernel, agent, init, busybox, packages
    )
    images = (cache or cache_dir()) / "images"
    final = images / key
    hit = _load_existing(final, key)
    if hit is not None:
        log.debug("image.cache_hit", image=spec.name, key=key)
        return hit
    if final.exists():  # damaged by hand (a file deleted): rebuild it
        log.warning("image.cache_damaged", key=key, path=str(final))
        await anyio.to_thread.run_sync(shutil.rmtree, final, True)
    images.mkdir(parents=True, exist_ok=True)
    work = images / f".build-{key}-{uuid.uuid4().hex[:8]}"
    started = anyio.current_time()
    try:
        work.mkdir()
        out = work / "out"
        out.mkdir()
        meta = image_meta(spec, spec_hash)
        tree = _Tree(work / "tree")
        await anyio.to_thread.run_sync(
            _populate, tree, spec, meta, agent, init, busybox, applets, packages
        )
        await _make_filesystem(tree, out / "rootfs.ext4", work, key)
        _write_meta(out / "mvm-meta.json", meta)
        # host-side finalisation: the sealed root's dm-verity tree, recorded in the meta
        await anyio.to_thread.run_sync(functools.partial(finalise_verity, out, seed=key))
        await anyio.to_thread.run_sync(_link_or_copy, kernel, out / "vmlinux")
        try:
            os.rename(out, final)  # atomic promotion
        except OSError:
            if _load_existing(final, key) is None:  # not a concurrent twin: a real failure
                raise
            log.debug("image.lost_race", key=key)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, work, True)
    log.info(
        "image.built",
        image=spec.name,
        key=key,
        seconds=round(anyio.current_time() - started, 3),
    )
    result = _load_existing(final, key)
    assert result is not None
    return result


def _agent_for(spec: ImageSpec, agent: Path) -> Path:
    """The agent that goes into ``spec``'s image: a sealed image handed this host's
    accessible build gets the sealed variant (no exec/console code) instead.

    Callers pass the one agent they built; the swap lives here so every caller gets
    it. The key hashes the agent file that went in, so the two variants never share a
    cached image. Any other agent (a test's fake, a bench's variant) is used as is."""
    if not spec.sealed or not agent.is_file():
        return agent
    try:
        if agent.resolve() != agent_binary().resolve():
            return agent
    except BuildError:  # no toolchain here: then ``agent`` is not this host's build
        return agent
    return agent_binary(sealed=True)


def image_meta(spec: ImageSpec, spec_hash: str) -> dict[str, Any]:
    """mvm-meta.json: the snake_case fields of mkGuest's ``passthru.mvm`` (the IR
    seed's list) plus sizing and names; nix/lib/spec.nix ``metaJson`` writes the
    same keys and values, ``builder`` aside."""
    return {
        "name": spec.name,
        "accessible": spec.accessible,
        "sealed": spec.sealed,
        "entrypointKind": spec.entrypoint_kind,
        "init_system": "busybox",
        "expected_boot_ms": EXPECTED_BOOT_MS,
        "agent_binary": AGENT_BINARY,
        "agent_path": AGENT_PATH,
        "rootless_entrypoint": spec.entrypoint_uid != 0,
        "uids": {
            "agent": spec.uids.agent,
            "entrypoint": spec.entrypoint_uid,
            "services": spec.service_uids,
        },
        "seccomp_tier": spec.seccomp,
        "vmlinux_present": True,
        "initrd_present": False,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "services": sorted(spec.services),
        "health_checks": sorted(spec.health_checks),
        "hypervisor": spec.hypervisor,
        "spec_hash": spec_hash,
        "builder": "offline",
    }


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.write_bytes(_meta_bytes(meta))


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # cross-device, or protected_hardlinks on a file we do not own
        shutil.copyfile(source, dest)


def _load_existing(directory: Path, key: str) -> ImageArtifacts | None:
    rootfs, vmlinux, meta_path = (
        directory / "rootfs.ext4",
        directory / "vmlinux",
        directory / "mvm-meta.json",
    )
    if not (rootfs.is_file() and vmlinux.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    return ImageArtifacts(rootfs=rootfs, vmlinux=vmlinux, meta_path=meta_path, meta=meta, key=key)


__all__ = [
    "AGENT_BINARY",
    "AGENT_PATH",
    "BASE_DIRS",
    "BUSYBOX",
    "EXPECTED_BOOT_MS",
    "MIN_IMAGE_BYTES",
    "RECIPE_VERSION",
    "SETUP_HINT",
    "SOURCE_DATE_EPOCH",
    "ImageArtifacts",
    "build_image",
    "check_spec",
    "image_meta",
    "spec_json",
]
