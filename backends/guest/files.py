"""Copying files and folders into and out of a guest over the agent (``mvmctl cp``).

No new agent request: a tar stream rides an ``exec`` of the guest's busybox tar,
on stdin (put) or stdout (get), so it gets the protocol's flow control and a
50 MiB file costs no more memory than one window. Modes are kept both ways
(setuid/setgid bits are dropped on the host side, as ``tar`` does for a non-root
user); ownership is the copier's: the guest's exec user on put (``tar -o``), this
user on get. Paths follow ``docker cp``: copying onto an existing folder puts the
source inside it, otherwise the destination is the new name. Everything runs as
the exec user (the image's entrypoint uid), so sealed images refuse it (E_SEALED).
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.from_thread
import anyio.to_thread
import attrs

from mvm.backends.guest.client import AgentClient
from mvm.backends.guest.streams import ExecSession
from mvm.engine.base.errors import AgentError, ConfigError, NotFoundError

_KIND = (
    'if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo file; '
    'elif [ -d "$(dirname "$1")" ]; then echo none; else echo noparent; fi'
)
_LIST = (
    'if [ -d "$1" ]; then find "$1" -mindepth 1 -maxdepth 1 -exec stat -c \'%f %s %Y %n\' {} +; '
    "else stat -c '%f %s %Y %n' \"$1\"; fi"
)
_SEND_CHUNK = 256 * 1024


@attrs.frozen
class FileEntry:
    """One entry of ``vm.files.list``: its guest path, size, mode bits and mtime."""

    path: str
    size: int
    mode: int  # st_mode: file type and permission bits
    mtime: int

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)


class _Sender:
    """A file object tarfile writes to from a worker thread: bytes go to the guest's stdin."""

    def __init__(self, proc: ExecSession) -> None:
        self._proc = proc
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= _SEND_CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            chunk, self._buf = bytes(self._buf), bytearray()
            anyio.from_thread.run(self._proc.write, chunk)


def _tar_into(out: _Sender, local: Path, arcname: str) -> None:
    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        tar.add(str(local), arcname=arcname, recursive=True, filter=owner)
    out.flush()


async def _send(proc: ExecSession, source: Path, name: str) -> None:
    # tar exiting early breaks the stream: its status and stderr then say why
    with suppress(anyio.BrokenResourceError, AgentError):
        await anyio.to_thread.run_sync(_tar_into, _Sender(proc), source, name)
    await proc.close_stdin()


def _keep_modes(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter (no absolute paths, nothing outside ``dest``, no device
    files, no owners), but with the member's permission bits kept (minus setuid/setgid)."""
    try:
        safe = tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        if not member.issym():
            raise
        # A symlink is copied as it is (``/etc/x -> /usr/...``, as docker cp does);
        # later members are still checked through it, so none can land outside dest.
        plain = tarfile.data_filter(member.replace(linkname=".", deep=False), dest)
        return plain.replace(linkname=member.linkname, deep=False)
    if member.issym():
        return safe
    return safe.replace(mode=member.mode & 0o1777, deep=False)


class GuestFiles:
    """``vm.files``: put, get and list over a VM's guest agent."""

    def __init__(self, client: Callable[[], Awaitable[AgentClient]]) -> None:
        self._client = client

    async def _kind(self, agent: AgentClient, remote: str) -> str:
        result = await agent.exec(["/bin/sh", "-c", _KIND, "sh", remote], timeout=60)
        return result.stdout.decode().strip()

    async def put(self, local: str | os.PathLike[str], remote: str) -> str:
        """Copy a host file or folder to ``remote``; returns the guest path written."""
        source = Path(local)
        if not source.exists():
            raise NotFoundError(f"{source} does not exist", code="E_CP_SOURCE")
        agent = await self._client()
        kind = await self._kind(agent, remote)
        if kind == "dir":
            parent, name = remote, source.resolve().name
        elif kind == "file" and source.is_dir():
            raise ConfigError(
                f"cannot copy folder {source} onto the guest file {remote}",
                code="E_CP_DEST",
                hint="name a folder or a new path",
            )
        elif kind in ("file", "none"):
            parent, name = posixpath.dirname(remote) or ".", posixpath.basename(remote)
        else:
            raise ConfigError(
                f"the guest has no folder {posixpath.dirname(remote)!r} for {remote}",
                code="E_CP_DEST",
                hint="create it first (mvmctl exec VM -- mkdir -p DIR)",
            )
        stderr = bytearray()
        async with (
            agent.open_exec(["tar", "-x", "-o", "-f", "-", "-C", parent], stdin=True) as proc,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_send, proc, source, name)
            async for fd, data in proc.output():
                if fd == 2:
                    stderr += data
        _check(proc, bytes(stderr), f"copying {source} to {remote}")
        return posixpath.join(parent, name)

    async def get(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Copy a guest file or folder to ``local``; returns the host path written."""
        dest = Path(local)
        agent = await self._client()
        kind = await self._kind(agent, remote)
        if kind not in ("dir", "file"):
            raise NotFoundError(f"the guest has no {remote!r}", code="E_CP_SOURCE")
        clean = posixpath.normpath(remote)
        if clean == "/":
            raise ConfigError(
                "copying the whole guest root is not supported",
                code="E_CP_ARGS",
                hint="name a folder under /",
            )
        parent, base = posixpath.dirname(clean) or ".", posixpath.basename(clean)
        if dest.is_dir():
            target_dir, name = dest, base
        elif dest.parent.is_dir():
            target_dir, name = dest.parent, dest.name
        else:
            raise ConfigError(f"host folder {dest.parent} does not exist", code="E_CP_DEST")
        stderr = bytearray()
        with tempfile.TemporaryFile(dir=target_dir, prefix=".mvm-cp-") as spool:
            async with agent.open_exec(["tar", "-c", "-f", "-", "-C", parent, base]) as proc:
                async for fd, data in proc.output():
                    if fd == 1:
                        spool.write(data)
                    else:
                        stderr += data
            _check(proc, bytes(stderr), f"copying {remote} from the guest")
            spool.seek(0)
            await anyio.to_thread.run_sync(_extract, spool, target_dir, base, name)
        return target_dir / name

    async def list(self, remote: str) -> list[FileEntry]:
        """The entries of a guest folder (or the one file ``remote`` names), by name."""
        agent = await self._client()
        result = await agent.exec(["/bin/sh", "-c", _LIST, "sh", remote], timeout=60)
        if result.code != 0:
            detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise NotFoundError(
                f"cannot list {remote!r} in the guest: {' '.join(detail)}", code="E_CP_SOURCE"
            )
        entries = []
        for line in result.stdout.decode(errors="replace").splitlines():
            mode, size, mtime, path = line.split(" ", 3)
            entries.append(
                FileEntry(path=path, size=int(size), mode=int(mode, 16), mtime=int(mtime))
            )
        return sorted(entries, key=lambda e: e.path)


def _check(proc: ExecSession, stderr: bytes, what: str) -> None:
    if proc.exit_code == 0:
        return
    detail = stderr.decode(errors="replace").strip().splitlines()[-1:]
    status = f"signal {proc.exit_signal}" if proc.exit_signal else f"status {proc.exit_code}"
    raise AgentError(f"{what} failed ({status}): {' '.join(detail)}", code="E_CP")


def _extract(spool: IO[bytes], target_dir: Path, base: str, name: str) -> None:
    """Unpack the guest's tar into ``target_dir``, renaming its top entry ``base`` to ``name``."""
    dest = str(target_dir.resolve())

    def rename(path: str) -> str:
        if path == base or path.startswith(base + "/"):
            return name + path[len(base) :]
        return path

    def members(tar: tarfile.TarFile) -> Any:
        for member in tar:
            member.name = rename(member.name)
            if member.islnk():
                member.linkname = rename(member.linkname)
            yield member

    with tarfile.open(fileobj=spool, mode="r|") as tar:
        # extractall sets folder modes last, so a read-only folder still gets its files
        tar.extractall(dest, members=members(tar), filter=_keep_modes)
