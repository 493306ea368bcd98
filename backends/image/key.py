"""The image cache key: a hash of everything that can change the image's bytes.

Images are content-addressed under ``<cache>/images/<key>/``, so the key must
cover the canonical spec, the recipe version, the contents of every input file
(kernel, agent, init, busybox, host files) and every entry of every host-path
package, and nothing else (no mtimes, not where the kernel, agent, init and
busybox lie): two checkouts with the same inputs share one image, and any change
builds a new one.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import cattrs
import rfc8785

from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import DEFAULT_SECCOMP, ImageSpec

# Bump when the rootfs layout or the mkfs recipe changes.
# 3: execute-only ELF programs in sealed images; 4: seccomp tiers, per-service uids;
# 5: the dm-verity tree appended to sealed roots
RECIPE_VERSION = "5"


def spec_json(spec: ImageSpec) -> bytes:
    """Canonical (RFC 8785) JSON of the spec: the stable identity of what was asked for."""
    data = cattrs.Converter().unstructure(spec)
    for field in ("host_files", "mvm_files", "shell", "extra_file_modes"):  # newer fields:
        if not data[field]:  # absent when unused, so images built before them keep their hash
            del data[field]
    if data["hypervisor"] == "auto":
        del data["hypervisor"]
    if data["seccomp"] == DEFAULT_SECCOMP:
        del data["seccomp"]
    for svc in data["services"].values():
        if svc["uid"] is None:
            del svc["uid"]
    encoded: bytes = rfc8785.dumps(data)
    return encoded


def _cache_key(
    spec: ImageSpec, kernel: Path, agent: Path, init: Path, busybox: Path, packages: list[Path]
) -> tuple[str, str]:
    canonical = spec_json(spec)
    spec_hash = hashlib.sha256(canonical).hexdigest()
    h = hashlib.sha256()

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    part(b"mvm-image")
    part(RECIPE_VERSION.encode())
    part(canonical)
    for path in (kernel, agent, init, busybox):
        part(_file_sha256(path).encode())
    for pkg in packages:
        part(str(pkg).encode())
        for rel, desc in _package_entries(pkg):
            part(rel.encode())
            part(desc.encode())
    for guest, source in sorted(spec.host_files.items()):
        part(guest.encode())
        part(_file_sha256(Path(source)).encode())
    return h.hexdigest(), spec_hash


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _package_entries(root: Path) -> Iterable[tuple[str, str]]:
    """Every entry a package copies, with what identifies its content, in sorted order."""
    if not root.is_dir():
        yield "", f"file {stat.S_IMODE(root.stat().st_mode):o} {_file_sha256(root)}"
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        yield str(base.relative_to(root)), "dir"
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            p = base / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                yield rel, f"symlink {os.readlink(p)}"
            elif p.is_file():
                yield rel, f"file {stat.S_IMODE(p.stat().st_mode):o} {_file_sha256(p)}"
            else:
                raise ConfigError(f"package entry {p} is not a file", code="E_SPEC_PACKAGE")
