"""``mvm.toml``: a project's run configuration next to its ``flake.nix``.

    flake = "."               # path to the flake (relative to mvm.toml) or a flake ref
    profile = "default"       # which package/profile of the flake to build
    vcpus = 1
    memory_mib = 256
    hypervisor = "qemu"       # qemu | firecracker | cloud-hypervisor | stub
    ports = ["8080:80"]       # like -p
    volumes = ["./data:/mnt/data:64"]   # like -v; host paths relative to mvm.toml

Every key is checked (unknown keys, wrong types, out-of-range numbers, paths that
do not exist) and each problem is one coded line that names the key; all of them
are collected (``check_mvm_toml``), loading raises the first.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from mvm.engine.base.errors import ConfigError
from mvm.engine.request.vmrequest import MEMORY_MIB_RANGE, VCPU_RANGE, PortMapping
from mvm.engine.request.volumes import Volume

HYPERVISORS = ("qemu", "firecracker", "cloud-hypervisor", "stub")
_KEYS: dict[str, type | tuple[type, ...]] = {
    "flake": str,
    "profile": str,
    "vcpus": int,
    "memory_mib": int,
    "hypervisor": str,
    "ports": list,
    "volumes": list,
}


@attrs.frozen
class MvmToml:
    path: Path
    flake: str = "."
    profile: str = "default"
    vcpus: int = 1
    memory_mib: int = 256
    hypervisor: str = "qemu"
    ports: tuple[PortMapping, ...] = ()
    volumes: tuple[Volume, ...] = ()

    def __str__(self) -> str:
        return (
            f"flake {self.flake}#{self.profile}, {self.vcpus} vCPU, {self.memory_mib} MiB, "
            f"{self.hypervisor}, {len(self.ports)} port(s), {len(self.volumes)} volume(s)"
        )


def _bad(path: Path, key: str, problem: str, code: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}", code=code, hint=hint)


def load_mvm_toml(path: Path) -> MvmToml:
    """The parsed file; raises the first problem (``mvm_toml_problems`` lists all)."""
    config, problems = check_mvm_toml(path)
    if problems:
        raise problems[0]
    assert config is not None
    return config


def check_mvm_toml(path: Path) -> tuple[MvmToml | None, list[ConfigError]]:
    """(config, every problem): each key is checked on its own, so ``mvmctl validate``
    reports all of them, one coded line each. ``config`` is None when any is bad."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None, [ConfigError(f"{path} does not exist", code="E_TOML_MISSING")]
    except tomllib.TOMLDecodeError as exc:
        return None, [ConfigError(f"{path} is not valid TOML: {exc}", code="E_TOML_SYNTAX")]
    return _check(data, path)


def parse_mvm_toml(data: dict[str, Any], path: Path) -> MvmToml:
    config, problems = _check(data, path)
    if problems:
        raise problems[0]
    assert config is not None
    return config


def _check(data: dict[str, Any], path: Path) -> tuple[MvmToml | None, list[ConfigError]]:
    problems: list[ConfigError] = []
    good: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            problems.append(
                _bad(
                    path,
                    key,
                    "unknown key",
                    "E_TOML_UNKNOWN_KEY",
                    hint=f"known keys: {', '.join(_KEYS)}",
                )
            )
            continue
        wanted = _KEYS[key]
        if not isinstance(value, wanted) or isinstance(value, bool):
            kind = wanted.__name__ if isinstance(wanted, type) else "value"
            problems.append(
                _bad(path, key, f"must be a {kind}, not {type(value).__name__}", "E_TOML_TYPE")
            )
            continue
        good[key] = value
    fields: dict[str, Any] = {k: good[k] for k in ("flake", "profile", "hypervisor") if k in good}
    for key, (low, high) in (("vcpus", VCPU_RANGE), ("memory_mib", MEMORY_MIB_RANGE)):
        if key in good:
            if not low <= good[key] <= high:
                problems.append(
                    _bad(path, key, f"must be between {low} and {high}", "E_TOML_RANGE")
                )
            else:
                fields[key] = good[key]
    if fields.get("hypervisor", "qemu") not in HYPERVISORS:
        problems.append(
            _bad(
                path,
                "hypervisor",
                f"unknown hypervisor {fields['hypervisor']!r}",
                "E_TOML_VALUE",
                hint=f"one of {', '.join(HYPERVISORS)}",
            )
        )
    flake = fields.get("flake", ".")
    is_ref = any(flake.startswith(p) for p in ("github:", "git+", "path:", "nixpkgs"))
    if not is_ref and not (path.parent / flake).exists():
        problems.append(
            _bad(path, "flake", f"{flake} does not exist (relative to mvm.toml)", "E_TOML_PATH")
        )
    fields["ports"] = tuple(_items(path, "ports", good, PortMapping.parse, problems))
    fields["volumes"] = tuple(
        _items(path, "volumes", good, lambda t: Volume.parse(_relative(path, t)), problems)
    )
    if problems:
        return None, problems
    return MvmToml(path=path, **fields), []


def _relative(path: Path, volume: str) -> str:
    host, sep, rest = volume.partition(":")
    if sep and not host.startswith(("/", "~")):
        host = str((path.parent / host).resolve())
    return host + sep + rest


def _items(
    path: Path, key: str, data: dict[str, Any], parse: Any, problems: list[ConfigError]
) -> list[Any]:
    out = []
    for i, item in enumerate(data.get(key, [])):
        if not isinstance(item, str):
            problems.append(_bad(path, f"{key}[{i}]", "must be a string", "E_TOML_TYPE"))
            continue
        try:
            out.append(parse(item))
        except ConfigError as exc:
            problems.append(_bad(path, f"{key}[{i}]", exc.message, exc.code, exc.hint))
    return out
