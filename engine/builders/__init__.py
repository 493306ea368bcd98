"""Image builders behind one small protocol: a job in, three artifacts in a staging dir out.

Every builder (host Nix, a remote Linux host or builder VM over SSH, a builder VM
over vsock, the offline Python assembler) writes ``vmlinux``, ``rootfs.ext4`` and
``mvm-meta.json`` into an empty directory it is handed. It never decides where the
result lives: the cache (``cache.py``) owns staging, promotion and reuse, and the
pool (``mvm.actors.builder_vm``) owns parallelism, so a builder stays a plain
"run this build there and bring the files back".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import attrs

from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.images.imagespec import ImageSpec

BuildMode = Literal["host", "ssh", "vsock", "vm", "offline"]
ModeChoice = Literal["host", "ssh", "vsock", "vm", "offline", "auto"]
MODES: tuple[ModeChoice, ...] = ("auto", "vm", "host", "ssh", "vsock", "offline")
ARTIFACTS = ("vmlinux", "rootfs.ext4", "mvm-meta.json")

LogFn = Callable[[str], None]


def _no_log(_line: str) -> None:
    return None


@attrs.frozen
class BuildJob:
    """What to build. ``source`` is a local flake directory (copied to a remote builder
    as-is); ``attr`` the flake package (mvm.toml's ``profile``). ``spec`` is set when
    the input is (or was evaluated to) an ImageSpec the offline builder can take."""

    name: str
    source: Path | None = None
    attr: str = "default"
    spec: ImageSpec | None = None

    def __attrs_post_init__(self) -> None:
        if self.source is None and self.spec is None:
            raise ValueError("a BuildJob needs a flake source or an ImageSpec")

    @property
    def label(self) -> str:
        if self.source is not None:
            return f"{self.source}#{self.attr}"
        return f"spec:{self.name}"


class Builder(Protocol):
    """One way to run a build. ``build`` must leave nothing behind on failure or
    cancellation except what is inside ``out`` (the cache deletes that)."""

    @property
    def mode(self) -> BuildMode: ...

    async def build(self, job: BuildJob, out: Path, log: LogFn) -> None: ...


def check_artifacts(out: Path, *, phase: str = "fetch") -> None:
    """Fail with a phase-named error unless ``out`` holds all three artifacts."""
    missing = [name for name in ARTIFACTS if not (out / name).is_file()]
    if missing:
        raise BuildPhaseError(
            phase,
            f"the build produced no {', '.join(missing)}",
            code="E_BUILD_ARTIFACTS",
            hint="the flake package must be an mkGuest image (vmlinux, rootfs.ext4, mvm-meta.json)",
        )


class LogTail:
    """Forwards build log lines and keeps the last few for the error message, so a
    failed build says *why* in one line instead of "exit status 1"."""

    def __init__(self, sink: LogFn | None = None, keep: int = 20) -> None:
        self._sink = sink or _no_log
        self._keep = keep
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n")
        self.lines.append(line)
        del self.lines[: -self._keep]
        self._sink(line)

    def summary(self, default: str = "no output") -> str:
        interesting = [ln for ln in self.lines if ln.strip()]
        errors = [ln for ln in interesting if "error" in ln.lower()]
        picked = errors[-1] if errors else (interesting[-1] if interesting else default)
        return picked.strip()[:300]
