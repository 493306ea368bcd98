"""``auto`` mode: pick a builder and say why, including why the others were passed over.

Order for a flake: an SSH builder (``MVM_BUILDER_SSH``) > a builder VM over vsock
(``MVM_BUILDER_VSOCK``) > the offline assembler when the flake is a plain mkGuest image
it builds identically (no VM needed) > the builder VM (Nix inside a microVM the engine
boots; the persistent ``mvm-builder`` unless ``--no-persistent-builder``). Host Nix is
only ever used when asked for (``--builder host``): a ``/nix/store`` that appears on the
host (any ``nix`` command makes one) must not silently change where builds run. A spec
is the offline assembler's native input. Each probe is cheap and returns a reason either
way; the reasons are what ``mvmctl build`` and ``mvmctl doctor`` print, so "why did it
not use my Nix?" has an answer on screen instead of in a debugger.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Protocol

import anyio
import attrs

from mvm.engine.base.errors import BuildError, ConfigError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.builders import Builder, BuildJob, BuildMode, ModeChoice
from mvm.engine.builders.host import HostNixBuilder
from mvm.engine.builders.offline import OfflineBuilder, flake_to_spec
from mvm.engine.builders.ssh import SshBuilder, SshTarget
from mvm.engine.builders.vsock import VsockBuilder, VsockTarget

log = get_logger("mvm.build.auto")

NIX_STORE = Path("/nix/store")
NIX_DAEMON_SOCKET = Path("/nix/var/nix/daemon-socket/socket")


@attrs.frozen
class Probe:
    mode: BuildMode
    ok: bool
    reason: str


class VmProvider(Protocol):
    """The builder VM, supplied from above (``mvm.engine.builder_session``): booting one
    needs the engine, which imports this module."""

    async def probe(self, job: BuildJob, *, persistent: bool) -> Probe: ...

    def builder(self, *, persistent: bool) -> Builder: ...


@attrs.frozen
class Choice:
    builder: Builder
    mode: BuildMode
    job: BuildJob
    probes: tuple[Probe, ...]

    @property
    def explanation(self) -> str:
        lines = [f"builder: {self.mode}"]
        for probe in self.probes:
            lines.append(
                f"  {'use ' if probe.mode == self.mode else 'skip'} {probe.mode}: {probe.reason}"
            )
        return "\n".join(lines)

    @property
    def fell_back(self) -> bool:
        return self.mode == "offline" and self.job.source is not None


def probe_host(nix: str = "nix") -> Probe:
    """Host Nix can build only with a store: the binary alone (Debian's nix-bin on a
    host without /nix) evaluates but cannot realise anything."""
    path = shutil.which(nix)
    if path is None:
        return Probe("host", False, f"{nix} not found on PATH")
    version = _version(path)
    if not NIX_STORE.is_dir() and not NIX_DAEMON_SOCKET.exists():
        return Probe(
            "host",
            False,
            f"{version} at {path}, but there is no Nix store ({NIX_STORE} missing, no daemon "
            "socket): it can evaluate, not build",
        )
    if NIX_STORE.is_dir() and not os.access(NIX_STORE, os.W_OK) and not NIX_DAEMON_SOCKET.exists():
        return Probe("host", False, f"{NIX_STORE} is read-only and no nix-daemon runs")
    return Probe("host", True, f"{version} at {path} with a usable store")


# Inputs Nix fetches over the network (``mvm`` is always overridden with the installed
# library, so it never needs fetching).
_REMOTE_INPUT = re.compile(
    r'^\s*(?:inputs\.)?(?P<name>[A-Za-z0-9_-]+)\.url\s*=\s*"(?P<url>(?:github|gitlab|sourcehut|'
    r'https?|git\+https?|git\+ssh|tarball\+https?):[^"]*)"',
    re.M,
)


def remote_inputs(flake_nix: str) -> list[str]:
    """The network inputs of a flake.nix (``name.url = "github:..."``), ``mvm`` excluded."""
    return [m["url"] for m in _REMOTE_INPUT.finditer(flake_nix) if m["name"] != "mvm"]


def _network_reaches(host: str = "github.com") -> bool:
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return True


def probe_inputs(source: Path, host_probe: Probe) -> Probe:
    """Host Nix can build this flake only if it can fetch its inputs: with no network
    (no name resolves) and a network input pinned, ``nix build`` would retry downloads
    and fail after seconds of noise, so ``auto`` passes over it up front, saying why.
    Inputs already in the store under a flake.lock are the exception we do not detect:
    pass ``--builder host`` explicitly then."""
    try:
        text = (source / "flake.nix").read_text(errors="replace")
    except OSError:
        return host_probe
    remote = remote_inputs(text)
    if remote and not _network_reaches():
        return Probe(
            "host",
            False,
            f"{host_probe.reason}, but it cannot fetch the flake's inputs "
            f"({', '.join(remote)}): no network here",
        )
    return host_probe


def _version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "nix"
    return out.stdout.strip() or "nix"


async def probe_ssh(target: SshTarget | None) -> Probe:
    if target is None:
        return Probe("ssh", False, "no builder configured (set MVM_BUILDER_SSH=[user@]host[:port])")
    try:
        version = await SshBuilder(target).probe()
    except MvmError as exc:
        return Probe("ssh", False, f"{target}: {exc.one_line()}")
    return Probe("ssh", True, f"{target} runs {version}")


def probe_vsock(target: VsockTarget | None) -> Probe:
    if target is None:
        if not Path("/dev/vhost-vsock").exists():
            return Probe(
                "vsock",
                False,
                "/dev/vhost-vsock is absent, so no builder VM can be reached over vsock "
                "(and booting one needs a Nix-built builder image, i.e. nixpkgs)",
            )
        return Probe("vsock", False, "no builder VM configured (set MVM_BUILDER_VSOCK=CID:PORT)")
    problem = target.unavailable()
    if problem:
        return Probe("vsock", False, problem)
    return Probe("vsock", True, f"builder VM at {target}")


async def choose_builder(
    job: BuildJob,
    requested: ModeChoice = "auto",
    *,
    nix: str = "nix",
    ssh: SshTarget | None = None,
    vsock: VsockTarget | None = None,
    persistent: bool = True,
    vm: VmProvider | None = None,
) -> Choice:
    """The builder for ``job``; for the offline builder the returned job carries the
    spec it will build. Raises with every reason when nothing can build it."""
    ssh = ssh if ssh is not None else SshTarget.from_env()
    vsock = vsock if vsock is not None else VsockTarget.from_env()
    probes: list[Probe] = []
    wants = ("ssh", "vsock", "offline", "vm") if requested == "auto" else (requested,)
    if job.source is None and requested == "auto":
        wants = ("offline",)  # a spec is the offline builder's native input
    elif requested == "auto":
        found = probe_host(nix)
        probes.append(
            Probe("host", False, f"{found.reason}; auto never builds on the host (--builder host)")
        )
    for mode in wants:
        if mode == "host":
            probe = probe_host(nix)
            if probe.ok and job.source is not None:
                probe = await anyio.to_thread.run_sync(probe_inputs, job.source, probe)
            builder: Builder = HostNixBuilder(nix)
        elif mode == "ssh":
            probe = await probe_ssh(ssh)
            builder = SshBuilder(ssh) if ssh else HostNixBuilder(nix)
        elif mode == "vsock":
            probe = probe_vsock(vsock)
            builder = VsockBuilder(vsock) if vsock else HostNixBuilder(nix)
        elif mode == "vm":
            if vm is None:
                probe = Probe("vm", False, "this caller cannot boot a builder VM")
            else:
                probe = await vm.probe(job, persistent=persistent)
                builder = vm.builder(persistent=persistent)
        else:
            probe, job = await _probe_offline(job, falls_through=requested == "auto")
            builder = OfflineBuilder()
        probes.append(probe)
        if probe.ok:
            choice = Choice(builder, probe.mode, job, tuple(probes))
            log.info("build.builder_chosen", mode=probe.mode, reasons=[p.reason for p in probes])
            return choice
    reasons = "; ".join(f"{p.mode}: {p.reason}" for p in probes)
    if requested != "auto":
        raise BuildError(f"the {requested} builder is unavailable: {reasons}", code="E_BUILD_MODE")
    raise BuildError(f"no builder can build {job.label}: {reasons}", code="E_BUILD_NO_BUILDER")


async def _probe_offline(job: BuildJob, *, falls_through: bool = False) -> tuple[Probe, BuildJob]:
    """``falls_through``: a flake the assembler cannot express (nixpkgs packages, other
    inputs) is a reason to go on to the builder VM, not an error."""
    if job.spec is not None:
        return Probe("offline", True, "the spec needs no Nix"), job
    assert job.source is not None
    try:
        spec = await flake_to_spec(job.source, job.attr)
    except ConfigError as exc:
        passable = (
            ("E_FLAKE_OFFLINE", "E_NIXPKGS_UNAVAILABLE") if falls_through else ("E_FLAKE_OFFLINE",)
        )
        if exc.code not in passable:
            raise  # the flake itself is refused (bad mkGuest input, other system)
        return Probe("offline", False, exc.message), job
    reason = (
        f"{job.source}#{job.attr} is a plain mkGuest image ({spec.name}) the offline "
        "assembler builds identically, without a builder VM"
    )
    return Probe("offline", True, reason), attrs.evolve(job, spec=spec)
