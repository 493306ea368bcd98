"""Building projects (flake / mvm.toml) and the persistent builder.

``build_project`` is what ``mvmctl build`` and ``mvmctl dev up`` call for a project:
pick a builder (``auto`` explains its choice and any fallback on stderr), run it in
a BuilderPool, stream the build log, return the cached Image.

``mvmctl persistent-builder start`` boots the persistent builder VM ``mvm-builder``
(Nix inside a microVM, its store on a volume that outlives it) and keeps one build pool
alive in a background process (its cache warm, single flight across submits) serving
builds on a Unix socket under ``$MVM_HOME/builder/``: newline-delimited JSON, one
request per connection. ``submit`` sends a project there and streams its log (a flake
that needs Nix builds in ``mvm-builder``); ``status`` and ``stop`` cover both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from mvm.actors.builder_vm import BuildOutcome, builder_pool
from mvm.cli.project import find_target, parse_attr
from mvm.engine.base.errors import ConfigError, MvmError, NotFoundError
from mvm.engine.base.paths import mvm_home
from mvm.engine.base.process import is_same_process, process_start_time
from mvm.engine.build_target import build_job, is_offline_failure
from mvm.engine.builder_session import (
    PERSISTENT_NAME,
    BuilderVmProvider,
    persistent_state,
    start_persistent,
    stop_persistent,
)
from mvm.engine.builders import BuildJob, ModeChoice
from mvm.engine.builders.auto import choose_builder
from mvm.engine.builders.cache import BuildCache

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, file=sys.stderr)


async def build_project(
    job: BuildJob,
    mode: ModeChoice = "auto",
    *,
    say: Say = _say,
    on_log: Callable[[str], None] | None = None,
    one_shot: bool = False,
) -> BuildOutcome:
    """Build ``job``; stderr says which builder was used and why. A flake that needs Nix
    builds in the persistent builder VM (started if it is not running) unless
    ``one_shot``; one the offline assembler expresses is built without a VM."""
    if one_shot:
        say("builder: one-shot builder requested (--no-persistent-builder)")
    outcome = await build_job(job, mode, say=say, on_log=on_log, persistent=not one_shot)
    say(
        f"built {outcome.image.name} ({'cache hit' if outcome.cache_hit else 'built'}, "
        f"{outcome.mode}, {outcome.seconds:.2f}s): {outcome.image.directory}"
    )
    return outcome


# -- persistent builder ----------------------------------------------------------------------


def _dir() -> Path:
    return mvm_home() / "builder"


def _socket() -> Path:
    return _dir() / "builder.sock"


def _pid_record() -> tuple[int, int] | None:
    try:
        pid, start = (int(x) for x in (_dir() / "pid").read_text().split(":"))
    except (OSError, ValueError):
        return None
    return (pid, start) if is_same_process(pid, start) else None


async def cmd_start(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace).expanduser().resolve()
    if not workspace.is_dir():
        raise ConfigError(f"--workspace {args.workspace}: no such folder", code="E_WORKSPACE")
    if args.size < 1:
        raise ConfigError(f"--size {args.size}: must be at least 1", code="E_BUILDER_SIZE")
    if _pid_record():
        _say(f"persistent builder already running (pid {_pid_record()[0]})")  # type: ignore[index]
        return 0
    _dir().mkdir(parents=True, exist_ok=True)
    _socket().unlink(missing_ok=True)
    argv = [sys.executable, "-P", "-m", "mvm.cli", "persistent-builder", "serve"]
    argv += ["--builder", args.builder, "--size", str(args.size)]
    with (_dir() / "builder.log").open("ab") as log_file:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    with anyio.move_on_after(15):
        while not _socket().exists():
            if proc.poll() is not None:
                raise MvmError(
                    f"the builder exited at once (see {_dir() / 'builder.log'})",
                    code="E_BUILDER_START",
                )
            await anyio.sleep(0.05)
    (_dir() / "pid").write_text(f"{proc.pid}:{process_start_time(proc.pid)}")
    (_dir() / "workspace").write_text(str(workspace))
    _say(
        f"persistent builder started (pool pid {proc.pid}, {args.builder}, {args.size} slots, "
        f"workspace {workspace})"
    )
    if args.builder in ("auto", "vm"):
        try:
            started = await start_persistent(_say)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _stop_pool()
            raise
        _say(f"builder VM {PERSISTENT_NAME}: {'started' if started else 'already running'}")
    return 0


async def _ask(request: dict[str, Any], on_line: Callable[[dict[str, Any]], None]) -> None:
    if not _socket().exists():
        raise NotFoundError(
            "no persistent builder is running",
            code="E_BUILDER_NOT_RUNNING",
            hint="mvmctl persistent-builder start",
        )
    async with await anyio.connect_unix(_socket()) as stream:
        await stream.send((json.dumps(request) + "\n").encode())
        buffer = b""
        while True:
            try:
                buffer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                on_line(json.loads(line))


async def cmd_status(args: argparse.Namespace) -> int:
    answer: dict[str, Any] = {}
    await _ask({"op": "status"}, answer.update)
    answer["builder_vm"] = await persistent_state()
    print(json.dumps(answer, indent=2))
    return 0


async def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the pool and the builder VM; either may already be gone (a crash), the
    other is still stopped, and only "neither was running" is an error."""
    vm_stopped = await stop_persistent()
    try:
        await _ask({"op": "stop"}, lambda msg: None)
    except NotFoundError:
        if not vm_stopped:
            raise
    _say("persistent builder stopped" + (f" (and its VM {PERSISTENT_NAME})" if vm_stopped else ""))
    return 0


async def _stop_pool() -> None:
    with contextlib.suppress(MvmError):
        await _ask({"op": "stop"}, lambda msg: None)


async def cmd_submit(args: argparse.Namespace) -> int:
    attr_name = parse_attr(args.attr) if args.attr else None
    source, attr = _submit_source(args.flake, args.project)
    result: dict[str, Any] = {}

    def show(msg: dict[str, Any]) -> None:
        if "log" in msg:
            _say(f"| {msg['log']}")
        else:
            result.update(msg)

    await _ask({"op": "build", "source": str(source), "attr": attr_name or attr}, show)
    if not result.get("ok"):
        raise MvmError(
            str(result.get("error", "no answer")), code=str(result.get("code", "E_BUILD"))
        )
    _say(f"built ({'cache hit' if result.get('cache_hit') else 'built'}, {result.get('mode')})")
    print(result["directory"])
    return 0


def _workspace() -> Path:
    try:
        return Path((_dir() / "workspace").read_text())
    except OSError:
        return Path.cwd()


def _submit_source(flake: str | None, project: str | None) -> tuple[Path, str]:
    """The flake dir and default attr of a submit. The seed's ``--flake path:/work``
    names the workspace as the builder VM sees it (mounted at /work): it maps to the
    workspace given to ``start``."""
    if flake is not None:
        ref = flake[len("path:") :] if flake.startswith("path:") else flake
        if ref.rstrip("/") == "/work" and not Path("/work/flake.nix").is_file():
            flake = str(_workspace())
        found = find_target(None, flake=flake)
    else:
        found = find_target(project or str(_workspace()))
    if found is None:
        raise ConfigError(
            f"{project or _workspace()} has no mvm.toml or flake.nix", code="E_BUILD_SOURCE"
        )
    return found.source, found.attr


async def cmd_serve(args: argparse.Namespace) -> int:
    """The background process: a Unix listener until ``stop``. Each build gets a pool
    for its chosen builder; the cache (and single-flight through it) is shared."""
    cache = BuildCache()
    stats_base: dict[str, Any] = {"pid": os.getpid(), "requested": args.builder}
    async with anyio.create_task_group() as tg:
        listener = await anyio.create_unix_listener(_socket())

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                raw = b""
                while not raw.endswith(b"\n"):
                    raw += await stream.receive()
                request = json.loads(raw)

                async def send(msg: dict[str, Any]) -> None:
                    await stream.send((json.dumps(msg) + "\n").encode())

                if request.get("op") == "stop":
                    await send({"ok": True})
                    tg.cancel_scope.cancel()
                elif request.get("op") == "status":
                    await send({**stats_base, "workspace": str(_workspace()), "builds": served})
                elif request.get("op") == "build":
                    await _serve_build(request, args, cache, send)
                    served.append(request.get("source"))

        served: list[Any] = []
        try:
            await listener.serve(handle)
        finally:
            _socket().unlink(missing_ok=True)
    return 0


async def _serve_build(
    request: dict[str, Any],
    args: argparse.Namespace,
    cache: BuildCache,
    send: Callable[[dict[str, Any]], Any],
) -> None:
    lines: list[str] = []
    try:
        job = BuildJob(name="submit", source=Path(request["source"]), attr=request["attr"])
        choice = await choose_builder(job, args.builder, vm=BuilderVmProvider())
        for line in choice.explanation.splitlines():
            await send({"log": line})
        try:
            async with builder_pool(choice.builder, size=args.size, cache=cache) as pool:
                outcome = await pool.build(choice.job, on_log=lines.append)
        except MvmError as exc:
            if (
                args.builder != "auto"
                or choice.mode != "host"
                or not is_offline_failure(exc.message)
            ):
                raise
            await send({"log": "host Nix cannot fetch the flake's inputs: offline builder"})
            choice = await choose_builder(job, "offline")
            async with builder_pool(choice.builder, size=args.size, cache=cache) as pool:
                outcome = await pool.build(choice.job, on_log=lines.append)
        for line in lines:
            await send({"log": line})
        await send(
            {
                "ok": True,
                "directory": str(outcome.image.directory),
                "cache_hit": outcome.cache_hit,
                "mode": outcome.mode,
            }
        )
    except MvmError as exc:
        await send({"ok": False, "code": exc.code, "error": exc.message})
