"""SSH mode: build on a builder VM or a remote Linux host with Nix, reached with asyncssh.

One build is four phases, and every failure names its phase and has its own code:

* connect -- ``E_BUILD_SSH_AUTH`` (key refused), ``E_BUILD_SSH_HOSTKEY`` (unknown or
  changed host key), ``E_BUILD_SSH_CONNECT`` (unreachable, refused, timed out);
* stage   -- a private ``mktemp -d`` work dir, the flake streamed in as a tar on stdin;
* build   -- ``nix build`` there, its log streamed back line by line;
  ``E_BUILD_NIX_FAILED`` carries the last error line of the log;
* fetch   -- the three artifacts copied back over SFTP (``E_BUILD_FETCH``).

Losing the connection in any phase is ``E_BUILD_SSH_DISCONNECT`` naming that phase.
The remote command records its process-group id first; whatever happens afterwards
(failure, cancellation by Ctrl-C) a cleanup command on the same connection kills
that group and deletes the work dir, so no remote build keeps running unseen.
"""

from __future__ import annotations

import asyncio
import io
import shlex
import tarfile
from pathlib import Path
from typing import Literal

import asyncssh
import attrs

from mvm.engine.base.errors import BuildPhaseError, ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.settings import current_settings
from mvm.engine.builders import ARTIFACTS, BuildJob, BuildMode, LogFn, LogTail, check_artifacts
from mvm.engine.builders.bridge import caller_callback, run_on_asyncio
from mvm.engine.builders.cache import _SKIP_NAMES
from mvm.engine.builders.host import nix_build_argv

log = get_logger("mvm.build.ssh")

CONNECT_TIMEOUT_S = 10.0
CLEANUP_TIMEOUT_S = 10.0
Phase = Literal["connect", "stage", "build", "fetch"]


@attrs.frozen
class SshTarget:
    """Where to build. ``known_hosts=None`` skips host key checks (throwaway builder VMs
    whose key changes each boot only); the default is the user's known_hosts."""

    host: str
    port: int = 22
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | Literal["default"] | None = "default"
    nix: str = "nix"
    workdir: str = "/tmp"

    @classmethod
    def parse(cls, text: str, **kwargs: object) -> SshTarget:
        """``[user@]host[:port]`` (the ``MVM_BUILDER_SSH`` format)."""
        user, _, rest = text.rpartition("@")
        host, sep, port_text = rest.partition(":")
        if not host or (sep and not port_text.isdigit()):
            raise ConfigError(
                f"builder address {text!r} is not [user@]host[:port]", code="E_BUILD_SSH_TARGET"
            )
        port = int(port_text) if sep else 22
        return cls(host=host, port=port, user=user or None, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls) -> SshTarget | None:
        """The builder ``MVM_BUILDER_SSH`` (+ ``_KEY``, ``_KNOWN_HOSTS``, ``MVM_BUILDER_NIX``)
        names, from the current settings."""
        settings = current_settings()
        if not settings.builder_ssh:
            return None
        return cls.parse(
            settings.builder_ssh,
            key=settings.builder_ssh_key,
            known_hosts=_known_hosts(settings.builder_ssh_known_hosts),
            nix=settings.builder_nix,
        )

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def _known_hosts(setting: str) -> Path | Literal["default"] | None:
    if setting == "none":
        return None
    return "default" if setting == "default" else Path(setting)


def _fail(phase: Phase, message: str, code: str, hint: str | None = None) -> BuildPhaseError:
    return BuildPhaseError(phase, message, code=code, hint=hint)


def _disconnected(phase: Phase, target: SshTarget, exc: BaseException) -> BuildPhaseError:
    return _fail(
        phase,
        f"lost the connection to {target} ({type(exc).__name__}: {exc})",
        "E_BUILD_SSH_DISCONNECT",
        hint="is the builder still up? the build can simply be retried",
    )


_LOST = (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError,
         BrokenPipeError, ConnectionError, EOFError)  # fmt: skip


def flake_tarball(source: Path) -> bytes:
    """The flake dir as an uncompressed tar (VCS dirs and ``result`` links left out)."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(part in _SKIP_NAMES for part in parts):
            return None
        if len(parts) == 1 and parts[0].startswith("result") and info.issym():
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name, filter=keep)
    return buffer.getvalue()


class SshBuilder:
    def __init__(self, target: SshTarget) -> None:
        self.target = target

    @property
    def mode(self) -> BuildMode:
        return "ssh"

    async def build(self, job: BuildJob, out: Path, log_fn: LogFn) -> None:
        if job.source is None:
            raise _fail("stage", f"{job.name} has no flake source", "E_BUILD_SOURCE")
        tarball = flake_tarball(job.source)
        sink = caller_callback(log_fn)
        await run_on_asyncio(lambda: self._build(job, tarball, out, sink))
        check_artifacts(out)

    async def probe(self) -> str:
        """Connect and report the remote Nix version (``auto`` uses this)."""

        async def go() -> str:
            conn = await self._connect()
            try:
                result = await conn.run(f"{shlex.quote(self.target.nix)} --version", check=False)
            finally:
                conn.close()
            if result.exit_status != 0:
                raise _fail(
                    "connect",
                    f"{self.target.nix} does not run on {self.target}",
                    "E_BUILD_REMOTE_NIX",
                    hint="install Nix on the builder or set MVM_BUILDER_NIX",
                )
            return str(result.stdout).strip()

        return await run_on_asyncio(go)

    # -- asyncio side --------------------------------------------------------------------------

    async def _connect(self) -> asyncssh.SSHClientConnection:
        t = self.target
        options: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if t.known_hosts != "default":
            options["known_hosts"] = None if t.known_hosts is None else str(t.known_hosts)
        if t.key is not None:
            options["client_keys"] = [str(t.key)]
            options["agent_path"] = None
        try:
            return await asyncssh.connect(t.host, t.port, username=t.user, **options)
        except asyncssh.PermissionDenied as exc:
            raise _fail(
                "connect",
                f"{t} refused our key ({exc.reason})",
                "E_BUILD_SSH_AUTH",
                hint="add our key to the builder's authorized_keys or set MVM_BUILDER_SSH_KEY",
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise _fail(
                "connect",
                f"{t}'s host key is not trusted ({exc.reason})",
                "E_BUILD_SSH_HOSTKEY",
                hint="add it to known_hosts (ssh-keyscan) or set MVM_BUILDER_SSH_KNOWN_HOSTS",
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise _fail(
                "connect",
                f"cannot reach {t}: {exc}",
                "E_BUILD_SSH_CONNECT",
                hint="is the builder running and its sshd listening?",
            ) from None

    async def _build(self, job: BuildJob, tarball: bytes, out: Path, log_fn: LogFn) -> None:
        conn = await self._connect()
        async with conn:
            workdir = await self._stage(conn, tarball)
            try:
                await self._run_nix(conn, job, workdir, LogTail(log_fn))
                await self._fetch(conn, workdir, out)
            finally:
                await self._cleanup(conn, workdir)

    async def _stage(self, conn: asyncssh.SSHClientConnection, tarball: bytes) -> str:
        template = shlex.quote(f"{self.target.workdir}/mvm-build.XXXXXXXX")
        try:
            made = await conn.run(f"mktemp -d {template}", check=False)
            if made.exit_status != 0:
                raise _fail(
                    "stage",
                    f"mktemp on {self.target} failed: {str(made.stderr).strip()}",
                    "E_BUILD_STAGE",
                )
            workdir = str(made.stdout).strip()
            q = shlex.quote(workdir)
            unpack = await conn.run(
                f"mkdir {q}/src && tar -xf - -C {q}/src", input=tarball, encoding=None, check=False
            )
        except _LOST as exc:
            raise _disconnected("stage", self.target, exc) from None
        if unpack.exit_status != 0:
            raw = unpack.stderr or b""
            detail = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).strip()
            raise _fail("stage", f"unpacking the flake failed: {detail}", "E_BUILD_STAGE")
        return workdir

    async def _run_nix(
        self, conn: asyncssh.SSHClientConnection, job: BuildJob, workdir: str, tail: LogTail
    ) -> None:
        ref = f"path:{workdir}/src#{job.attr}"
        argv = nix_build_argv(self.target.nix, ref, f"{workdir}/result")
        # sshd makes the command's shell a session leader, so its pid is the group id.
        command = f"echo $$ > {shlex.quote(workdir)}/pgid && exec {shlex.join(argv)}"
        try:
            proc = await conn.create_process(command, stderr=asyncssh.STDOUT)
            try:
                async for line in proc.stdout:
                    tail(str(line))
                result = await proc.wait()
            finally:
                # Not ``async with``: its exit waits for the remote command to end,
                # which after a cancellation is exactly what must not happen first.
                proc.close()
        except _LOST as exc:
            raise _disconnected("build", self.target, exc) from None
        if result.exit_status is None:
            raise _disconnected("build", self.target, ConnectionError("no exit status"))
        if result.exit_status != 0:
            raise _fail(
                "build",
                f"nix build {job.attr} on {self.target} failed (exit {result.exit_status}): "
                f"{tail.summary()}",
                "E_BUILD_NIX_FAILED",
            )

    async def _fetch(self, conn: asyncssh.SSHClientConnection, workdir: str, out: Path) -> None:
        try:
            async with conn.start_sftp_client() as sftp:
                for name in ARTIFACTS:
                    remote = f"{workdir}/result/{name}"
                    try:
                        await sftp.get(remote, str(out / name))
                    except asyncssh.SFTPNoSuchFile:
                        raise _fail(
                            "fetch",
                            f"the build on {self.target} produced no {name}",
                            "E_BUILD_ARTIFACTS",
                            hint="the flake package must be an mkGuest image",
                        ) from None
                    except asyncssh.SFTPError as exc:
                        raise _fail(
                            "fetch", f"copying {name} failed: {exc.reason}", "E_BUILD_FETCH"
                        ) from None
        except _LOST as exc:
            raise _disconnected("fetch", self.target, exc) from None

    async def _cleanup(self, conn: asyncssh.SSHClientConnection, workdir: str) -> None:
        """Kill the build's process group (if still there) and delete the work dir.

        Runs after success, failure and cancellation alike; a lost connection makes
        it impossible, which is logged (the builder's own tmp cleaner is the backstop).
        """
        q = shlex.quote(workdir)
        script = (
            f"if [ -s {q}/pgid ]; then g=$(cat {q}/pgid); "
            'kill -TERM -- "-$g" 2>/dev/null && sleep 0.5; kill -KILL -- "-$g" 2>/dev/null; fi; '
            f"rm -rf {q}"
        )
        task = asyncio.ensure_future(conn.run(script, check=False))
        try:
            # Shield: a second cancellation must not abandon the kill half-way.
            await asyncio.wait_for(asyncio.shield(task), CLEANUP_TIMEOUT_S)
        except (*_LOST, TimeoutError, asyncio.CancelledError) as exc:
            log.warning("build.remote_cleanup_failed", target=str(self.target), error=repr(exc))
