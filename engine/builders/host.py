"""Host mode: ``nix build`` of the flake with this machine's own Nix.

The build runs in its own process group so cancellation (Ctrl-C) can stop Nix
*and* everything it spawned: SIGTERM to the group, a grace period, then SIGKILL,
shielded so the kill cannot itself be cancelled. Artifacts are copied out of the
``result`` link (store files are read-only and belong to the store's GC), and the
link is removed so the cache never holds GC roots.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.base.log import get_logger
from mvm.engine.builders import ARTIFACTS, BuildJob, BuildMode, LogFn, LogTail, check_artifacts

log = get_logger("mvm.build.host")

NIX_FEATURES = "nix-command flakes"
KILL_GRACE_S = 2.0


def nix_build_argv(nix: str, flake_ref: str, out_link: str) -> list[str]:
    """The one ``nix build`` command line every mode runs (locally or on a builder)."""
    return [
        nix,
        "--extra-experimental-features", NIX_FEATURES,
        "build",
        "--print-build-logs",
        "--out-link", out_link,
        flake_ref,
    ]  # fmt: skip


class HostNixBuilder:
    """Builds with the host's ``nix`` (``nix`` may name another binary, e.g. in tests)."""

    def __init__(self, nix: str = "nix", *, env: dict[str, str] | None = None) -> None:
        self.nix = nix
        self.env = env

    @property
    def mode(self) -> BuildMode:
        return "host"

    async def build(self, job: BuildJob, out: Path, log_fn: LogFn) -> None:
        if job.source is None:
            raise BuildPhaseError("stage", f"{job.name} has no flake source", code="E_BUILD_SOURCE")
        link = out / "result"
        argv = nix_build_argv(self.nix, f"path:{job.source.resolve()}#{job.attr}", str(link))
        tail = LogTail(log_fn)
        status = await run_logged(argv, tail, env=self.env)
        if status != 0:
            raise BuildPhaseError(
                "build",
                f"nix build {job.label} failed (exit {status}): {tail.summary()}",
                code="E_BUILD_NIX_FAILED",
            )
        await anyio.to_thread.run_sync(_copy_result, link, out)
        check_artifacts(out)


def _copy_result(link: Path, out: Path) -> None:
    if not link.exists():
        raise BuildPhaseError("fetch", f"nix build left no {link.name} link", code="E_BUILD_FETCH")
    for name in ARTIFACTS:
        source = link / name
        if source.is_file():
            shutil.copyfile(source, out / name)
    if link.is_symlink():
        link.unlink()
    else:
        shutil.rmtree(link)


async def run_logged(
    argv: Sequence[str], log_fn: LogFn, *, env: dict[str, str] | None = None
) -> int:
    """Run ``argv`` in its own process group, feeding stdout+stderr lines to ``log_fn``;
    its exit status. Cancellation kills the whole group before it propagates."""
    try:
        proc = await anyio.open_process(
            list(argv),
            stdin=None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
        )
    except FileNotFoundError:
        raise BuildPhaseError(
            "build", f"{argv[0]} not found", code="E_NIX_MISSING", hint="install Nix"
        ) from None
    try:
        assert proc.stdout is not None
        pending = ""
        async for chunk in TextReceiveStream(proc.stdout, errors="replace"):
            *lines, pending = (pending + chunk).split("\n")
            for line in lines:
                log_fn(line)
        if pending:
            log_fn(pending)
        return await proc.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await kill_group(proc)


async def kill_group(proc: anyio.abc.Process) -> None:
    """SIGTERM the process group, wait ``KILL_GRACE_S``, then SIGKILL it."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with anyio.move_on_after(KILL_GRACE_S):
            await proc.wait()
    # Children may outlive the leader: always sweep the group.
    _signal_group(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()
    await proc.aclose()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("build.kill_denied", pgid=pgid)
