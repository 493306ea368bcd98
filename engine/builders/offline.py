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
import shutil
from pathlib import Path
from typing import Any

from mvm.backends import nix_meta
from mvm.engine.builders import ARTIFACTS, BuildJob, BuildMode, LogFn, offline_function
from mvm.engine.errors import BuildPhaseError, ConfigError, MvmError
from mvm.engine.imagespec import HealthCheck, ImageSpec, Service, Uids

_FLAKE_SPEC = """
let
  flake = import (/. + args.src + "/flake.nix");
  stub = import (/. + args.stub) { system = "x86_64-linux"; };
  known = {
    mvm = { lib = { x86_64-linux = lib; aarch64-linux = lib; }; outPath = args.nixdir; };
    nixpkgs = { legacyPackages = { x86_64-linux = stub; aarch64-linux = stub; }; };
  };
  wanted = builtins.functionArgs flake.outputs;
  missing = builtins.filter (n: n != "self" && !(known ? ${n}) && !wanted.${n})
    (builtins.attrNames wanted);
  self = outputs // { outPath = args.src; };
  outputs = flake.outputs (builtins.intersectAttrs wanted (known // { inherit self; }));
  pkgs = (outputs.packages or { }).x86_64-linux or { };
in
  if missing != [ ] then
    throw "E_FLAKE_OFFLINE: offline: the flake needs inputs ${toString missing}"
  else if !(pkgs ? ${args.attr}) then
    throw "E_FLAKE_OFFLINE: offline: the flake has no packages.x86_64-linux.${args.attr}"
  else if (pkgs.${args.attr}.passthru or { }) ? mvmFunctionWorkload then
    { inherit (pkgs.${args.attr}.passthru) mvmFunctionWorkload; }
  else if !((pkgs.${args.attr}.passthru or { }) ? spec) then
    throw "E_FLAKE_OFFLINE: offline: packages.x86_64-linux.${args.attr} is not an mkGuest image"
  else pkgs.${args.attr}.passthru.spec
"""


def _refuse(reason: str) -> ConfigError:
    return ConfigError(
        f"cannot build this flake without Nix: {reason}",
        code="E_FLAKE_OFFLINE",
        hint="configure a Nix builder (host Nix with a store, or MVM_BUILDER_SSH)",
    )


async def flake_to_spec(source: Path, attr: str) -> ImageSpec:
    """The ImageSpec of ``source#attr`` if the offline builder can express it."""
    if not (source / "flake.nix").is_file():
        raise ConfigError(f"{source} has no flake.nix", code="E_BUILD_SOURCE")
    if not nix_meta.nix_available():
        raise _refuse("nix-instantiate is missing, so the flake cannot even be evaluated")
    root = nix_meta.nix_dir()
    args = {
        "src": str(source.resolve()),
        "attr": attr,
        "stub": str(root / "stub-pkgs"),
        "nixdir": str(root),
    }
    try:
        spec = await nix_meta.evaluate(_FLAKE_SPEC, args=args)
    except MvmError as exc:
        raise _refuse(exc.message) from None
    if offline_function.KEY in spec:  # mkFunctionWorkload: built from its IR
        return await offline_function.function_workload_spec(spec[offline_function.KEY])
    return spec_from_nix(spec)


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
        services={
            name: Service(
                command=svc["command"],
                pre_start=svc.get("preStart"),
                env=dict(svc.get("env", {})),
                restart=svc.get("restart", "always"),
            )
            for name, svc in spec.get("services", {}).items()
        },
        packages=tuple(spec.get("packages", ())),
        extra_files=dict(files),
        uids=Uids(agent=uids.get("agent", 990), entrypoint=uids.get("entrypoint")),
        dev=bool(spec.get("dev", False)),
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
    )


class OfflineBuilder:
    """Builds ``job.spec`` with the offline assembler (its own content-addressed cache
    makes a rebuild cheap) and links the artifacts into the staging dir."""

    @property
    def mode(self) -> BuildMode:
        return "offline"

    async def build(self, job: BuildJob, out: Path, log_fn: LogFn) -> None:
        from mvm.engine.build import build_offline_image

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
