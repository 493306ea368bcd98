"""Builds in a builder VM: Nix inside a microVM the engine boots, reached over its agent.

``VmNixBuilder`` is a ``Builder`` (mode ``vm``). Each build stages the workspace into
``/nix/var/mvm/jobs/<id>/src`` through the agent's file transfer, runs ``nix build`` there
with the log streamed to the host line by line, and copies ``vmlinux``, ``rootfs.ext4``
and ``mvm-meta.json`` back out of the result; its folder in the guest is removed
whatever happens (shielded), the Nix store on the ``/nix`` volume stays warm.

Persistent (the default): the VM ``mvm-builder`` runs detached under its own shim and
outlives the command; a build attaches to it through its owner's agent mux, starting it
first when it is not running. One-shot (``--no-persistent-builder``): a VM of this
process, its own ``/nix`` volume, both gone when the build ends or is interrupted.
"""

from __future__ import annotations

import functools
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from mvm.backends.guest.client import AgentClient
from mvm.backends.guest.files import GuestFiles
from mvm.engine.base.errors import BuildPhaseError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import mvm_home
from mvm.engine.builders import ARTIFACTS, BuildJob, BuildMode, LogFn, LogTail, check_artifacts
from mvm.engine.builders.auto import Probe
from mvm.engine.builders.builder_vm import cache_root, ensure_builder_image, inspect, nix_job
from mvm.engine.builders.builder_vm.layout import NIX_VOLUME, WORK
from mvm.engine.engine import Engine
from mvm.engine.images.image import Image
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.request.volumes import Volume
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.detached import remove_vm, start_detached, stop_vm_record

log = get_logger("mvm.builder_vm")

PERSISTENT_NAME = "mvm-builder"
NIX_VOLUME_MB = 16 * 1024  # sparse: what the store may grow to, not what it takes
BOOT_TIMEOUT_S = 180.0
ClientFactory = Callable[[], Awaitable[AgentClient]]


def builder_request(image: Image, name: str, *, detached: bool) -> VmRequest:
    seed = cache_root() / "nix-seed"  # an empty folder: the volume starts empty
    seed.mkdir(parents=True, exist_ok=True)
    return VmRequest(
        name=name,
        image_dir=str(image.directory),
        mode="detached" if detached else "attached",
        vcpus=2,
        memory_mib=2048,
        boot_timeout_s=BOOT_TIMEOUT_S,
        volumes=(Volume(host=str(seed), guest=NIX_VOLUME, size_mb=NIX_VOLUME_MB),),
    )


async def _persistent_row() -> VmRecord | None:
    async with StateStore.open() as store:
        return await store.get_vm(PERSISTENT_NAME)


async def persistent_running() -> bool:
    rec = await _persistent_row()
    return rec is not None and rec.state == "running"


async def persistent_state() -> dict[str, object]:
    """``persistent-builder status``: the builder VM's state and its image cache's
    readiness (no rebuild, no fingerprint: ``dev cache inspect`` checks that)."""
    rec = await _persistent_row()
    cache = await anyio.to_thread.run_sync(inspect, None)
    return {
        "name": PERSISTENT_NAME,
        "state": rec.state if rec is not None else "absent",
        "image": cache.summary(),
    }


async def stop_persistent() -> bool:
    """Stop and forget ``mvm-builder`` (its ``/nix`` volume stays: the next start is
    warm); False if it was not there."""
    async with StateStore.open() as store:
        rec = await store.get_vm(PERSISTENT_NAME)
        if rec is None:
            return False
        await stop_vm_record(store, rec)
    return True


async def start_persistent(log_fn: LogFn) -> bool:
    """Start ``mvm-builder`` detached unless it runs; True if it was started here."""
    if await persistent_running():
        return False
    image, state = await ensure_builder_image(log_fn)
    log_fn(f"builder image: {state.reason}; booting the persistent builder VM {PERSISTENT_NAME}")
    await start_detached(builder_request(image, PERSISTENT_NAME, detached=True))
    return True


class BuilderVmProvider:
    """What ``choose_builder`` is handed to consider the builder VM (it cannot import
    this module: the engine sits above the builders)."""

    async def probe(self, job: BuildJob, *, persistent: bool) -> Probe:
        """A builder VM needs a flake, QEMU to boot it and Debian's nix-bin to put in it."""
        if job.source is None:
            return Probe("vm", False, "a spec needs no Nix")
        if persistent and await persistent_running():
            return Probe("vm", True, f"the persistent builder VM {PERSISTENT_NAME} is running")
        missing = [] if shutil.which("qemu-system-x86_64") else ["qemu-system-x86_64"]
        if not Path("/usr/bin/nix").is_file():
            missing.append("nix-bin (Debian's Nix, for the VM)")
        if missing:
            why = f"a builder VM needs {', '.join(missing)} (run ./scripts/setup)"
            return Probe("vm", False, why)
        kind = (
            f"the persistent builder VM {PERSISTENT_NAME}"
            if persistent
            else "a one-shot builder VM"
        )
        return Probe("vm", True, f"{kind} runs nix build (Nix inside a microVM)")

    def builder(self, *, persistent: bool) -> VmNixBuilder:
        return VmNixBuilder(persistent=persistent)


class VmNixBuilder:
    """``nix build`` in a builder VM (``persistent``: the shared ``mvm-builder``)."""

    def __init__(self, *, persistent: bool = True) -> None:
        self.persistent = persistent

    @property
    def mode(self) -> BuildMode:
        return "vm"

    async def build(self, job: BuildJob, out: Path, log_fn: LogFn) -> None:
        if job.source is None:
            raise BuildPhaseError("stage", f"{job.name} has no flake source", code="E_BUILD_SOURCE")
        async with self._client(log_fn) as client:
            await run_job(client, job, out, log_fn)

    @asynccontextmanager
    async def _client(self, log_fn: LogFn) -> AsyncIterator[ClientFactory]:
        if self.persistent:
            from mvm.engine.vm.agent_access import open_vm_agent

            await start_persistent(log_fn)
            async with open_vm_agent(PERSISTENT_NAME) as client:

                async def same() -> AgentClient:
                    return client

                yield same
            return
        image, state = await ensure_builder_image(log_fn)
        name = f"mvm-builder-{uuid.uuid4().hex[:6]}"
        log_fn(f"builder image: {state.reason}; booting a one-shot builder VM {name}")
        try:
            async with Engine.open() as engine:
                vm = await engine.start(builder_request(image, name, detached=False), image)
                yield vm.agent
        finally:
            with anyio.CancelScope(shield=True):
                await _forget(name)  # a one-shot VM leaves no row in `ls`, no volume


async def _forget(name: str) -> None:
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
        if rec is not None:
            await remove_vm(store, rec)
    await anyio.to_thread.run_sync(
        functools.partial(shutil.rmtree, mvm_home() / "volumes" / name, ignore_errors=True)
    )


async def run_job(client: ClientFactory, job: BuildJob, out: Path, log_fn: LogFn) -> None:
    """Stage, build, fetch; the guest folder is removed on every way out."""
    assert job.source is not None
    workdir = f"{WORK}/{uuid.uuid4().hex[:12]}"
    agent = await client()
    files = GuestFiles(client)
    try:
        await _checked(agent, ["mkdir", "-p", workdir], "stage")
        log_fn(f"stage: copying {job.source} into the builder VM")
        await files.put(job.source, f"{workdir}/src")
        flake = (job.source / "flake.nix").read_text(errors="replace")
        inputs = nix_job.declared_inputs(flake)
        if "nixpkgs" in inputs:
            log_fn("nixpkgs: the offline package set (no network for github:NixOS/nixpkgs)")
        script = nix_job.build_script(workdir, job.attr, inputs)
        tail = LogTail(log_fn, keep=200)  # what a failure is read from
        status = await _stream(agent, ["/bin/sh", "-c", script], tail)
        if status != 0:
            raise nix_job.failure(status, tail.lines, job.label)
        result = (
            await _checked(agent, ["readlink", "-f", f"{workdir}/result"], "artifact extraction")
        ).strip()
        for name in ARTIFACTS:
            try:
                await files.get(f"{result}/{name}", out / name)
            except MvmError as exc:
                raise BuildPhaseError(
                    "artifact extraction",
                    f"the build of {job.label} left no {name} ({exc})",
                    code="E_BUILD_FETCH",
                    hint="the flake's package must be an mkGuest image",
                ) from None
        check_artifacts(out)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                await (await client()).exec(["rm", "-rf", workdir], timeout=30)
            except MvmError as exc:
                log.warning("builder_vm.cleanup_failed", error=str(exc))


async def _checked(agent: AgentClient, argv: list[str], phase: str) -> str:
    result = await agent.exec(argv, timeout=120)
    if result.code != 0:
        why = result.stderr.decode(errors="replace").strip()
        raise BuildPhaseError(
            phase,
            f"{' '.join(argv)} failed in the builder VM: {why}",
            code="E_BUILDER_EXEC",
        )
    return result.stdout.decode(errors="replace")


async def _stream(agent: AgentClient, argv: list[str], log_fn: LogFn) -> int:
    """Run ``argv`` in the guest, each output line to ``log_fn``; its exit status."""
    pending = b""
    async with agent.open_exec(argv) as proc:
        async for _fd, data in proc.output():
            *complete, pending = (pending + data).split(b"\n")
            for raw in complete:
                log_fn(raw.decode(errors="replace"))
    if pending:
        log_fn(pending.decode(errors="replace"))
    return proc.exit_code if proc.exit_code is not None else 128 + (proc.exit_signal or 0)
