"""A built image on disk, as the runtime sees it: ``vmlinux``, ``rootfs.ext4``, ``mvm-meta.json``.

Both build paths (offline builder and Nix) produce this layout, so the runtime
never cares which one made the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from mvm.backends.abc.types import Verity
from mvm.backends.abc.verity import verity_from_meta
from mvm.engine.base.errors import ConfigError, NotFoundError


@attrs.frozen
class Image:
    """A built image directory (kernel, rootfs, ``mvm-meta.json``), as ``Engine.build`` returns
    it."""

    directory: Path
    kernel: Path
    rootfs: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        """The image name recorded at build time (else the folder name)."""
        return str(self.meta.get("name", self.directory.name))

    @property
    def sealed(self) -> bool:
        """True when exec and console are refused (a non-dev image)."""
        return bool(self.meta.get("sealed", True))

    @property
    def verity(self) -> Verity | None:
        """The dm-verity parameters recorded at finalisation (None: an accessible image,
        or one built before verity); a malformed record is E_IMAGE_META."""
        try:
            return verity_from_meta(self.meta)
        except ValueError as exc:
            raise ConfigError(
                f"{self.directory / 'mvm-meta.json'}: {exc}", code="E_IMAGE_META"
            ) from None

    @property
    def vcpus(self) -> int:
        """The vCPU count the image asks for (a VmRequest may override it)."""
        return int(self.meta.get("vcpus", 1))

    @property
    def memory_mib(self) -> int:
        """The guest memory the image asks for, in MiB."""
        return int(self.meta.get("memory_mib", 256))

    @property
    def seccomp_tier(self) -> str:
        """The syscall filter the guest's workload runs under; images built before
        seccomp tiers record none and install no filter (``unrestricted``)."""
        return str(self.meta.get("seccomp_tier", "unrestricted"))

    @property
    def health_checks(self) -> tuple[str, ...]:
        """Services with a health check; the guest agent runs them, the host tracks them."""
        return tuple(str(name) for name in self.meta.get("health_checks", ()))

    @classmethod
    def load(cls, directory: Path) -> Image:
        """Open a built image directory; a coded error names what is missing."""
        directory = directory.resolve()
        if not directory.is_dir():
            raise NotFoundError(
                f"image directory {directory} does not exist", code="E_IMAGE_MISSING"
            )
        kernel, rootfs, meta_path = (
            directory / "vmlinux",
            directory / "rootfs.ext4",
            directory / "mvm-meta.json",
        )
        if not kernel.is_file():
            raise ConfigError(
                f"image {directory} has no vmlinux",
                code="E_KERNEL_MISSING",
                hint="rebuild the image (mvmctl build) or set MVM_KERNEL",
            )
        if not rootfs.is_file():
            raise ConfigError(f"image {directory} has no rootfs.ext4", code="E_ROOTFS_MISSING")
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"image {directory} has no mvm-meta.json", code="E_IMAGE_META"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{meta_path} is not valid JSON: {exc.msg} at line {exc.lineno}",
                code="E_IMAGE_META",
            ) from None
        if not isinstance(meta, dict):
            raise ConfigError(f"{meta_path} must hold a JSON object", code="E_IMAGE_META")
        return cls(directory=directory, kernel=kernel, rootfs=rootfs, meta=meta)
