"""Evaluate the Nix library (nix/lib) from Python: metadata, inference and errors, no build.

The host's Nix evaluates the plain library files with ``nix-instantiate --eval
--strict --json`` against a ``dummy://`` store, so nothing is built, nothing is
written under /nix and no daemon is needed (Debian's ``nix-bin`` is enough).
By default the package set is the stub in ``nix/stub-pkgs`` (evaluation only);
``pkgs="nixpkgs"`` uses the ``<nixpkgs>`` on the host's ``NIX_PATH``.

The library reports bad input as ``throw "E_CODE: fn: message"``; this module
turns that line back into a :class:`ConfigError` with the same code, so a user
gets ``error[E_SPEC_NAME]: mkGuest: ...`` from either build path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import anyio

from mvm.engine.base.errors import BuildError, ConfigError, default_hint
from mvm.engine.base.log import get_logger
from mvm.engine.base.settings import current_settings
from mvm.engine.images.imagespec import DEFAULT_SECCOMP, ImageSpec

log = get_logger("mvm.nix")

GuestFunction = Literal["mkGuest", "mkFunctionWorkload", "mkFunctionService"]
PackageSet = Literal["stub", "nixpkgs"]

NIX_INSTANTIATE = "nix-instantiate"
EVAL_TIMEOUT_S = 60.0
_CODED = re.compile(r"\b(E_[A-Z][A-Z0-9_]*): (.+)")
_NIX_CONFIG = "build-users-group =\nexperimental-features = nix-command flakes\n"
_INSTALL_HINT = "apt-get install nix-bin, or install Nix"


def nix_dir() -> Path:
    """The library's directory: ``$MVM_NIX_DIR`` or ``nix/`` next to the mvm sources."""
    override = current_settings().nix_dir
    if override is not None:
        return override
    return Path(__file__).resolve().parent.parent / "nix"


def nix_available() -> bool:
    return shutil.which(NIX_INSTANTIATE) is not None


def _nix_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NIX_CONFIG"] = _NIX_CONFIG + env.get("NIX_CONFIG", "")
    return env


def _package_set_expr(pkgs: PackageSet, root: Path) -> str:
    if pkgs == "stub":
        return f"import {_nix_path(root / 'stub-pkgs')} {{ }}"
    return "import <nixpkgs> { }"


def _nix_path(path: Path) -> str:
    """A Nix path literal; Nix paths cannot hold spaces or quotes, so refuse those."""
    text = str(path.resolve())
    if not re.fullmatch(r"/[A-Za-z0-9._+/-]*", text):
        raise ConfigError(
            f"the Nix library path {text} has characters a Nix path literal cannot hold",
            code="E_NIX_PATH",
            hint="set MVM_NIX_DIR to a plain path",
        )
    return text


async def evaluate(
    body: str,
    *,
    args: Any = None,
    pkgs: PackageSet = "stub",
    timeout: float = EVAL_TIMEOUT_S,
) -> Any:
    """Evaluate ``body`` with ``lib`` (the library) and ``args`` (the JSON-decoded ``args``)
    in scope, strictly, and return its JSON value."""
    if not nix_available():
        raise BuildError(f"{NIX_INSTANTIATE} not found", code="E_NIX_MISSING", hint=_INSTALL_HINT)
    root = nix_dir()
    expr = (
        "{ argsJson }: let "
        f"lib = import {_nix_path(root / 'lib')} {{ pkgs = {_package_set_expr(pkgs, root)}; }}; "
        "args = builtins.fromJSON argsJson; "
        f"in {body}"
    )
    argv = [
        NIX_INSTANTIATE,
        "--store", "dummy://",
        "--eval", "--strict", "--json",
        "--argstr", "argsJson", json.dumps(args),
        "--expr", expr,
    ]  # fmt: skip
    with anyio.move_on_after(timeout) as scope:
        result = await anyio.run_process(argv, env=_nix_env(), check=False)
    if scope.cancelled_caught:
        raise BuildError(f"nix evaluation took longer than {timeout:.0f} s", code="E_NIX_TIMEOUT")
    if result.returncode != 0:
        raise _eval_error(result.stderr.decode(errors="replace"))
    log.debug("nix.eval", pkgs=pkgs, bytes=len(result.stdout))
    return json.loads(result.stdout)


class SpecErrors(ConfigError):
    """Every problem the library reported (``throw`` carries one string, so
    spec.nix joins one ``E_CODE: fn: message`` line per problem): this error is
    the first of them, ``all_errors`` holds each one as its own coded error."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.message, code=first.code, hint=first.hint)
        self.all_errors: tuple[ConfigError, ...] = tuple(errors)


# What to do about a library error, by code (the library's throw has no hint).
def _eval_error(stderr: str) -> BuildError | ConfigError:
    """The library's coded throw as a ConfigError (one per line); anything else is a
    BuildError."""
    coded = [
        ConfigError(m.group(2).strip(), code=m.group(1), hint=default_hint(m.group(1)))
        for m in (_CODED.search(line) for line in stderr.splitlines())
        if m is not None
    ]
    if coded:
        return SpecErrors(coded)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("error:")), lines[0] if lines else "")
    return BuildError(f"nix evaluation failed: {first}", code="E_NIX_EVAL")


async def guest_info(
    function: GuestFunction, args: dict[str, Any], *, pkgs: PackageSet = "stub"
) -> dict[str, Any]:
    """``passthru.mvm`` of ``lib.<function> args`` (its ``meta`` key is mvm-meta.json)."""
    value = await evaluate(f"(lib.{function} args).passthru.mvm", args=args, pkgs=pkgs)
    if not isinstance(value, dict):
        raise BuildError("passthru.mvm is not an attribute set", code="E_NIX_EVAL")
    return value


async def guests_info(
    calls: list[tuple[GuestFunction, dict[str, Any]]], *, pkgs: PackageSet = "stub"
) -> list[dict[str, Any]]:
    """Several guests in one evaluation (one process start instead of one per guest)."""
    body = "map (c: (lib.${c.fn} c.args).passthru.mvm) args"
    value = await evaluate(body, args=[{"fn": fn, "args": a} for fn, a in calls], pkgs=pkgs)
    if not isinstance(value, list):
        raise BuildError("expected a list of passthru.mvm sets", code="E_NIX_EVAL")
    return value


def spec_to_nix_args(spec: ImageSpec) -> dict[str, Any]:
    """The mkGuest arguments for an ImageSpec (field names snake_case -> camelCase).

    Host-path packages have no Nix meaning (a flake names packages, not host
    files), so a spec that uses them cannot be expressed.
    """
    for pkg in spec.packages:
        if pkg.startswith("/"):
            raise ConfigError(
                f"package {pkg} is a host path, which mkGuest cannot take",
                code="E_SPEC_PACKAGE",
                hint="name a Nix package in the flake instead",
            )
    args: dict[str, Any] = {
        "name": spec.name,
        "services": {
            name: {
                "command": svc.command if isinstance(svc.command, str) else list(svc.command),
                "preStart": svc.pre_start,
                "env": dict(svc.env),
                "restart": svc.restart,
                **({"uid": svc.uid} if svc.uid is not None else {}),
            }
            for name, svc in spec.services.items()
        },
        "packages": list(spec.packages),
        "extraFiles": {
            path: (
                {"content": text, "mode": f"{spec.extra_file_modes[path]:04o}"}
                if path in spec.extra_file_modes
                else text
            )
            for path, text in spec.extra_files.items()
        },
        "uids": {"agent": spec.uids.agent, "entrypoint": spec.uids.entrypoint},
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "healthChecks": {
            name: {
                "healthCmd": hc.health_cmd,
                "healthIntervalSecs": hc.health_interval_secs,
                "healthTimeoutSecs": hc.health_timeout_secs,
            }
            for name, hc in spec.health_checks.items()
        },
    }
    if spec.dev is not None:
        args["dev"] = spec.dev
    if spec.hypervisor != "auto":
        args["hypervisor"] = spec.hypervisor
    if spec.seccomp != DEFAULT_SECCOMP:
        args["seccomp"] = spec.seccomp
    if spec.command is not None:
        args["entrypoint"] = {"command": list(spec.command)}
    elif spec.shell is not None:
        args["entrypoint"] = {"shell": spec.shell}
    return args


async def meta_for_spec(spec: ImageSpec, *, pkgs: PackageSet = "stub") -> dict[str, Any]:
    """The mvm-meta.json the Nix path writes for the same spec the offline builder takes."""
    info = await guest_info("mkGuest", spec_to_nix_args(spec), pkgs=pkgs)
    meta = info.get("meta")
    if not isinstance(meta, dict):
        raise BuildError("passthru.mvm.meta is missing", code="E_NIX_EVAL")
    return meta


async def nixpkgs_available() -> bool:
    """True when ``<nixpkgs>`` resolves on this host (then tests also run against it)."""
    if not nix_available():
        return False
    result = await anyio.run_process(
        [NIX_INSTANTIATE, "--store", "dummy://", "--find-file", "nixpkgs"],
        env=_nix_env(),
        check=False,
    )
    return result.returncode == 0
