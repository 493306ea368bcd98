"""Volumes: host folders given to a guest as ext4 block devices.

``-v HOST:GUEST`` is read-only: the folder is packed into a fresh ext4 image in
the VM's run directory (removed at teardown) so the guest sees a snapshot and
can never write back. ``-v HOST:GUEST:SIZE_MB`` is read-write and persistent: an
image under ``$MVM_HOME/volumes/<vm>/`` seeded once from the folder and reused
on every later start of a VM with that name. A guest path under ``/mnt/secrets``
marks a secret volume: its contents are never read into logs or events.
Images are built with ``mkfs.ext4 -d`` (no root, no loop devices).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import anyio
import attrs

from mvm.engine.base.errors import BuildError, ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import mvm_home

log = get_logger("mvm.volumes")

_GUEST_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")
_MIN_RO_BYTES = 8 * 1024 * 1024
_MAX_SIZE_MB = 1024 * 1024


@attrs.frozen
class Volume:
    """A host folder given to the VM at ``guest``: read-only copy taken at boot (``size_mb``
    None) or a writable disk."""

    host: str  # absolute host folder (a str so requests round-trip through JSON)
    guest: str
    size_mb: int | None = None  # None: read-only snapshot of the folder

    @property
    def read_only(self) -> bool:
        return self.size_mb is None

    @property
    def secret(self) -> bool:
        return self.guest == "/mnt/secrets" or self.guest.startswith("/mnt/secrets/")

    @property
    def slug(self) -> str:
        return self.guest.strip("/").replace("/", "-") or "root"

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}" + (f":{self.size_mb}" if self.size_mb else "")

    @classmethod
    def parse(cls, text: str) -> Volume:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ConfigError(
                f"volume {text!r} is not HOST:GUEST or HOST:GUEST:SIZE_MB", code="E_VOLUME_SPEC"
            )
        host, guest = Path(parts[0]).expanduser().resolve(), parts[1].rstrip("/") or "/"
        size: int | None = None
        if len(parts) == 3:
            if not parts[2].isdigit() or not 1 <= int(parts[2]) <= _MAX_SIZE_MB:
                raise ConfigError(
                    f"volume {text!r}: SIZE_MB must be a whole number of MiB",
                    code="E_VOLUME_SPEC",
                )
            size = int(parts[2])
        if not _GUEST_PATH.match(guest) or ".." in PurePosixPath(guest).parts:
            raise ConfigError(
                f"volume guest path {guest!r} is not a plain absolute path", code="E_VOLUME_SPEC"
            )
        if not guest.startswith("/mnt/") or guest.count("/") < 2:
            # /init mounts volumes on the read-only rootfs only where it has a writable
            # place for the mount point: a folder of /mnt (a tmpfs).
            raise ConfigError(
                f"volume guest path {guest} is not a folder under /mnt/",
                code="E_VOLUME_SPEC",
                hint=f"mount it in a folder of /mnt/, e.g. {_under_mnt(guest)}",
            )
        if not host.is_dir():
            raise ConfigError(
                f"volume host folder {host} does not exist",
                code="E_VOLUME_HOST",
                hint="create it first (an empty folder is fine)",
            )
        return cls(host=str(host), guest=guest, size_mb=size)


def _under_mnt(guest: str) -> str:
    """The nearest allowed guest path: ``/data`` -> ``/mnt/data``."""
    return f"/mnt/{PurePosixPath(guest).name or 'data'}"


def check_volumes(volumes: tuple[Volume, ...]) -> None:
    seen: set[str] = set()
    for vol in volumes:
        if vol.guest in seen:
            raise ConfigError(f"guest path {vol.guest} is mounted twice", code="E_VOLUME_SPEC")
        seen.add(vol.guest)


def persistent_volume_path(vm: str, vol: Volume) -> Path:
    return mvm_home() / "volumes" / vm / f"{vol.slug}.ext4"


def _folder_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        try:
            total += path.lstat().st_size + 4096
        except OSError:
            continue
    return total


async def _mkfs(image: Path, source: Path, size_bytes: int, label: str) -> None:
    tmp = image.with_name(image.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # 0600 from the first byte: a volume image holds the folder's contents (secrets
    # included), and only the VMM, running as this user, needs to read it.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.truncate(size_bytes)
    argv = [
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        label[:16],
        "-E",
        "root_owner=0:0",
        "-d",
        str(source),
        str(tmp),
    ]
    try:
        result = await anyio.run_process(argv, check=False)
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        raise BuildError(
            "mkfs.ext4 is not installed",
            code="E_VOLUME_BUILD",
            hint="install e2fsprogs: run ./scripts/setup",
        ) from None
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        # stderr names files, never contents, so it is safe to show even for secrets
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise BuildError(
            f"building the volume image for {source} failed: {' '.join(detail)}",
            code="E_VOLUME_BUILD",
        )
    tmp.rename(image)


def volume_disk(vm: str, vol: Volume, run_dir: Path) -> Path:
    """Where the block image of ``vol`` lives while ``vm`` runs (snapshots copy it)."""
    if vol.read_only:
        return run_dir / f"vol-{vol.slug}.overlay"
    return persistent_volume_path(vm, vol)


async def prepare_volume(vm: str, vol: Volume, run_dir: Path) -> Path:
    """The block image for one volume: a fresh read-only snapshot, or the persistent disk."""
    if vol.read_only:
        image = volume_disk(vm, vol, run_dir)
        size = max(_MIN_RO_BYTES, int(_folder_bytes(Path(vol.host)) * 1.3))
        await _mkfs(image, Path(vol.host), size, vol.slug)
        return image
    image = volume_disk(vm, vol, run_dir)
    if image.exists():
        return image
    image.parent.mkdir(parents=True, exist_ok=True)
    wanted = vol.size_mb * 1024 * 1024 if vol.size_mb else _MIN_RO_BYTES
    if _folder_bytes(Path(vol.host)) > wanted:
        raise ConfigError(
            f"volume {vol.host} holds more than {vol.size_mb} MiB",
            code="E_VOLUME_SIZE",
            hint="give a larger SIZE_MB",
        )
    await _mkfs(image, Path(vol.host), wanted, vol.slug)
    log.info("volume.created", vm=vm, guest=vol.guest, size_mb=vol.size_mb)
    return image


def kernel_arg(volumes: tuple[Volume, ...], first_letter: str = "b") -> str:
    """``mvm.volumes=vdb:/mnt/config:ro,vdc:/mnt/data:rw`` for /init to mount."""
    start = ord(first_letter)
    items = [
        f"vd{chr(start + i)}:{vol.guest}:{'ro' if vol.read_only else 'rw'}"
        for i, vol in enumerate(volumes)
    ]
    return "mvm.volumes=" + ",".join(items) if items else ""
