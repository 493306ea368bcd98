"""Offline mode: the Python image assembler, for inputs it can express without Nix.

A spec (``demo``, ``SPEC.json``, an IR) always can. A flake can when its image is
a plain ``mkGuest`` call: the flake's ``outputs`` function is evaluated with the
mvm library (stub package set) standing in for its ``mvm`` input and the stub
package set for ``nixpkgs``, and the package's ``passthru.spec`` (the normalised
mkGuest arguments) becomes an ImageSpec. Anything that needs real packages
(derivations, extra trees, other inputs) is refused with the reason, so a user
learns why their flake needs a real Nix builder.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

from mvm.backends import nix_meta
from mvm.engine.base.errors import BuildPhaseError, ConfigError, MvmError, default_hint
from mvm.engine.builders import ARTIFACTS, BuildJob, BuildMode, LogFn, offline_function
from mvm.engine.images.imagespec import DEFAULT_SECCOMP, HealthCheck, ImageSpec, Service, Uids

SYSTEMS = ("x86_64-linux", "aarch64-linux")

# The user's flake with its inputs substituted: `mvm` is this repository's
# library (per system), `nixpkgs` the offline package set (nix/stub-pkgs/offline,
# importable as `import nixpkgs { inherit system; }`), which decides what is
# available. The package is looked up for the host system first.
_FLAKE_SPEC = """
let
  flake = import (/. + args.src + "/flake.nix");
  stubs = /. + args.stub;
  systems = [ "x86_64-linux" "aarch64-linux" ];
  forAll = f: builtins.listToAttrs (map (s: { name = s; value = f s; }) systems);
  offlineDir = /. + args.offline;
  offlinePkgs = system: import offlineDir { inherit system; };
  libFor = system: import (/. + args.nixdir + "/lib") {
    pkgs = import stubs { inherit system; } // offlinePkgs system;
  };
  known = {
    mvm = { lib = forAll libFor; outPath = args.nixdir; };
    nixpkgs = { outPath = offlineDir; legacyPackages = forAll offlinePkgs; };
  };
  wanted = builtins.functionArgs flake.outputs;
  missing = builtins.filter (n: n != "self" && !(known ? ${n}) && !wanted.${n})
    (builtins.attrNames wanted);
  self = outputs // { outPath = args.src; };
  outputs = flake.outputs (builtins.intersectAttrs wanted (known // { inherit self; }));
  pkgsFor = s: (outputs.packages or { }).${s} or { };
  order = [ args.system ] ++ builtins.filter (s: s != args.system) systems;
  found = builtins.filter (s: (pkgsFor s) ? ${args.attr}) order;
  system = builtins.head found;
  drv = (pkgsFor system).${args.attr};
in
  if missing != [ ] then
    throw "E_FLAKE_OFFLINE: offline: the flake needs inputs ${toString missing}"
  else if found == [ ] then
    throw "E_FLAKE_OFFLINE: offline: the flake has no packages.${args.system}.${args.attr}"
  else if (drv.passthru or { }) ? mvmFunctionWorkload then
    { inherit system; inherit (drv.passthru) mvmFunctionWorkload; }
  else if !((drv.passthru or { }) ? spec) then
    throw "E_FLAKE_OFFLINE: offline: packages.${system}.${args.attr} is not an mkGuest image"
  else { inherit system; inherit (drv.passthru) spec mvm; }
"""
_UNDEFINED = re.compile(r"undefined variable '([^']+)'")


def _refuse(reason: str) -> ConfigError:
    return ConfigError(
        f"cannot build this flake without Nix: {reason}",
        code="E_FLAKE_OFFLINE",
        hint="configure a Nix builder (host Nix with a store, or MVM_BUILDER_SSH)",
    )


def host_system() -> str:
    """The Nix system name of this host (what the offline builder's binaries run on)."""
    machine = platform.machine().lower()
    return "aarch64-linux" if machine in ("aarch64", "arm64") else "x86_64-linux"


async def flake_info(source: Path, attr: str, *, offline_set: Path | None = None) -> dict[str, Any]:
    """``{system, spec, mvm}`` of ``source#attr``: the flake evaluated offline, its
    ``mvm`` and ``nixpkgs`` inputs substituted (see ``_FLAKE_SPEC``). ``nixpkgs`` is the
    placeholder set, or ``offline_set``: an offline package set with this machine's
    manifest (``offline_pkgs.write_offline_nixpkgs``), what the builder VM builds with."""
    if not (source / "flake.nix").is_file():
        raise ConfigError(f"{source} has no flake.nix", code="E_BUILD_SOURCE")
    if not nix_meta.nix_available():
        raise _refuse("nix-instantiate is missing, so the flake cannot even be evaluated")
    root = nix_meta.nix_dir()
    args = {
        "src": str(source.resolve()),
        "attr": attr,
        "stub": str(root / "stub-pkgs"),
        "offline": str(offline_set or root / "stub-pkgs" / "offline"),
        "nixdir": str(root),
        "system": host_system(),
    }
    try:
        info = await nix_meta.evaluate(_FLAKE_SPEC, args=args)
    except ConfigError:
        raise  # the library's (or the offline package set's) own coded errors
    except MvmError as exc:
        raise _translate(exc.message) from None
    if not isinstance(info, dict):  # pragma: no cover - the expression returns a set
        raise _refuse("the flake evaluated to something else than an image")
    return info


def _translate(message: str) -> ConfigError:
    """A raw Nix error while evaluating a user flake, as one coded line."""
    undefined = _UNDEFINED.search(message)
    if undefined:
        name = undefined.group(1)
        return ConfigError(
            f"{name!r} is not defined here; if it is a nixpkgs package, pkgs.{name} needs "
            "nixpkgs, which cannot be fetched here (no network for github:NixOS/nixpkgs)",
            code="E_NIXPKGS_UNAVAILABLE",
            hint=default_hint("E_NIXPKGS_UNAVAILABLE"),
        )
    return _refuse(message)


async def flake_to_spec(source: Path, attr: str) -> ImageSpec:
    """The ImageSpec of ``source#attr`` if the offline builder can express it."""
    info = await flake_info(source, attr)
    system = info["system"]
    if system != host_system():
        raise ConfigError(
            f"{source}#{attr} is an image for {system} (packages.{system}.{attr}); this host "
            f"is {host_system()} and the offline builder only assembles {host_system()} images",
            code="E_FLAKE_SYSTEM",
            hint=f"add packages.{host_system()}.{attr}, or build on a {system} host",
        )
    if offline_function.KEY in info:  # mkFunctionWorkload: built from its IR
        return await offline_function.function_workload_spec(info[offline_function.KEY])
    return spec_from_nix(info["spec"])


def spec_from_nix(spec: dict[str, Any]) -> ImageSpec:
    """``passthru.spec`` (camelCase, normalised) -> ImageSpec, or why not."""
    if spec.get("extraTrees"):
        raise _refuse("extraTrees need the Nix store")
    packages = [p for p in spec.get("packages", []) if not isinstance(p, str) or "/" in p]
    if packages:
        raise _refuse(f"packages {packages} are Nix derivations, not busybox applets")
    files = spec.get("extraFiles", {})
    if any(not isinstance(v, str) or v.startswith("/nix/store/") for v in files.values()):
        raise _refuse("extraFiles from derivations or paths need the Nix store")
    uids = spec.get("uidsGiven") or {}
    command = spec.get("command")
    return ImageSpec(
        name=spec["name"],
        command=tuple(command) if command is not None else None,
        shell=spec.get("shell"),
        services={
            name: Service(
                command=svc["command"],
                pre_start=svc.get("preStart"),
                env=dict(svc.get("env", {})),
                restart=svc.get("restart", "always"),
                uid=svc.get("uid"),
            )
            for name, svc in spec.get("services", {}).items()
        },
        packages=tuple(spec.get("packages", ())),
        extra_files=dict(files),
        extra_file_modes={k: int(v) for k, v in spec.get("extraFileModes", {}).items()},
        uids=Uids(agent=uids.get("agent", 990), entrypoint=uids.get("entrypoint")),
        dev=spec.get("devGiven"),
        vcpus=int(spec.get("vcpus", 1)),
        memory_mib=int(spec.get("memoryMib", 256)),
        health_checks={
            name: HealthCheck(
                health_cmd=hc["healthCmd"],
                health_interval_secs=int(hc.get("healthIntervalSecs", 5)),
                health_timeout_secs=int(hc.get("healthTimeoutSecs", 3)),
            )
            for name, hc in spec.get("healthChecks", {}).items()
        },
        hypervisor=str(spec.get("hypervisor", "auto")),
        seccomp=str(spec.get("seccomp", DEFAULT_SECCOMP)),
    )


class OfflineBuilder:
    """Builds ``job.spec`` with the offline assembler (its own content-addressed cache
    makes a rebuild cheap) and links the artifacts into the staging dir."""

    @property
    def mode(self) -> BuildMode:
        return "offline"

    async def build(self, job: BuildJob, out: Path, log_fn: LogFn) -> None:
        from mvm.engine.builders.offline_image import build_offline_image

        spec = job.spec
        if spec is None:
            if job.source is None:  # pragma: no cover - BuildJob forbids it
                raise BuildPhaseError("stage", "nothing to build", code="E_BUILD_SOURCE")
            spec = await flake_to_spec(job.source, job.attr)
        log_fn(f"offline builder: {spec.name} (kernel + busybox + agent, no Nix)")

        def progress(stage: str, fraction: float | None) -> None:
            log_fn(f"offline: {stage}" + (f" {fraction:.0%}" if fraction is not None else ""))

        image = await build_offline_image(spec, progress=progress)
        for name in ARTIFACTS:
            _link_or_copy(image.directory / name, out / name)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
