"""What a caller asks for when it starts a VM, parsed and validated up front.

Everything here is checked before any process starts, so bad input fails with a
coded one-line error and leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from mvm.engine.base.errors import ConfigError
from mvm.engine.request.envvars import check_env
from mvm.engine.request.volumes import Volume, check_volumes

Mode = Literal["attached", "detached"]

_VM_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
# The same ranges mvm.toml accepts (engine/request/mvmtoml.py reads them from here).
VCPU_RANGE = (1, 64)
MEMORY_MIB_RANGE = (64, 1024 * 1024)

_PORT_SPEC = re.compile(r"^(?:(?P<addr>[0-9.]+|localhost):)?(?P<host>\d{1,5}):(?P<guest>\d{1,5})$")


@attrs.frozen
class PortMapping:
    """``-p [addr:]host:guest`` like ``docker run -p``; the host side binds on addr."""

    host_port: int
    guest_port: int
    host_addr: str = "127.0.0.1"

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """``[ADDR:]HOST:GUEST`` (``8080:80``, ``127.0.0.1:8080:80``), as ``-p`` takes it."""
        m = _PORT_SPEC.match(text.strip())
        if not m:
            raise ConfigError(
                f"port mapping {text!r} is not [ADDR:]HOST:GUEST",
                code="E_PORT_SPEC",
                hint="for example -p 8080:80",
            )
        host, guest = int(m["host"]), int(m["guest"])
        for port in (host, guest):
            if not 1 <= port <= 65535:
                raise ConfigError(
                    f"port {port} in {text!r} is out of range 1..65535", code="E_PORT_SPEC"
                )
        addr = m["addr"] or "127.0.0.1"
        if addr == "localhost":
            addr = "127.0.0.1"
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            raise ConfigError(
                f"{addr!r} in port mapping {text!r} is not an IPv4 address",
                code="E_PORT_SPEC",
                hint="use [ADDR:]HOST:GUEST, for example -p 127.0.0.1:8080:80",
            ) from None
        return cls(host_port=host, guest_port=guest, host_addr=addr)

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port}->{self.guest_port}"


def check_vm_name(name: str) -> str:
    if not _VM_NAME.match(name):
        raise ConfigError(
            f"VM name {name!r} is invalid",
            code="E_VM_NAME",
            hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_resources(vcpus: int | None, memory_mib: int | None) -> None:
    """Refuse out-of-range vCPUs/memory here, before any plan is signed or audited
    (``0`` is an error, not "the default"); every problem is reported."""
    problems: list[ConfigError] = []
    for label, value, (low, high), code in (
        ("vcpus", vcpus, VCPU_RANGE, "E_VCPUS"),
        ("memory_mib", memory_mib, MEMORY_MIB_RANGE, "E_MEMORY"),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(
                ConfigError(
                    f"{label} {value!r} is out of range {low}..{high}",
                    code=code,
                    hint=f"give {label} between {low} and {high}",
                )
            )
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigError(
            "; ".join(f"[{p.code}] {p.message}" for p in problems),
            code=problems[0].code,
            hint="; ".join(p.hint or "" for p in problems),
        )


NetMode = Literal["none", "tap"]
HealthAction = Literal["none", "restart-service", "restart-vm"]
HEALTH_ACTIONS: tuple[str, ...] = ("none", "restart-service", "restart-vm")


def check_health_action(action: str) -> None:
    """``restart-vm`` restarts the VM in place (engine/vm/runtime.py: the steps from
    ``spawn_vmm`` on are undone and done again, within a restart budget)."""
    if action not in HEALTH_ACTIONS:
        raise ConfigError(
            f"unknown health action {action!r}",
            code="E_HEALTH_ACTION",
            hint="use one of: " + ", ".join(HEALTH_ACTIONS),
        )


def _path_str(path: str | os.PathLike[str]) -> str:
    """A ``Path`` (what ``Image.directory`` is) or a string; kept as ``str`` so a request
    round-trips through JSON (the shim receives it that way)."""
    return os.fspath(path)


def _ports(ports: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    return tuple(ports)


def _volumes(volumes: Iterable[Volume]) -> tuple[Volume, ...]:
    return tuple(volumes)


def _env_pairs(value: Mapping[str, str] | Iterable[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(pair[0]), str(pair[1])) for pair in items)


@attrs.frozen
class VmRequest:
    """A VM to start from an already built image directory.

    ``image_dir`` takes a ``Path`` or a string; ``ports`` and ``volumes`` take any
    sequence (a list, as JSON has) and are kept as tuples. Every field is checked here,
    before anything starts: a bad request fails with a coded ``ConfigError``."""

    name: str = attrs.field(converter=check_vm_name)
    image_dir: str = attrs.field(converter=_path_str)
    ports: tuple[PortMapping, ...] = attrs.field(default=(), converter=_ports)
    backend: str = "qemu"
    mode: Mode = "attached"
    vcpus: int | None = None
    memory_mib: int | None = None
    boot_timeout_s: float = 90.0
    stop_grace_s: float = 5.0
    health_action: HealthAction = "none"
    volumes: tuple[Volume, ...] = attrs.field(default=(), converter=_volumes)
    net: NetMode = "none"  # "tap": a real NIC on the mvm bridge (root only)
    ir_hash: str | None = None  # set when launched from Workload IR: signed into the plan
    # Runtime environment for the guest's services, entrypoint and exec (-e/--env-file):
    # a dict is accepted and kept as ordered pairs (engine/request/envvars.py).
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_env_pairs)
    # Optional lifetime: seconds after the VM is first ready it is stopped (the one stop
    # path, exit_reason "ttl expired"); None: until stopped.
    ttl_s: float | None = None

    def __attrs_post_init__(self) -> None:
        check_resources(self.vcpus, self.memory_mib)
        if self.ttl_s is not None and not (
            isinstance(self.ttl_s, int | float) and 0 < self.ttl_s < float("inf")
        ):
            raise ConfigError(
                f"ttl_s {self.ttl_s!r} is not a positive number of seconds", code="E_VM_TTL"
            )
        check_health_action(self.health_action)
        seen: set[tuple[str, int]] = set()
        for p in self.ports:
            key = (p.host_addr, p.host_port)
            if key in seen:
                raise ConfigError(f"host port {p.host_port} is mapped twice", code="E_PORT_SPEC")
            seen.add(key)
        check_volumes(self.volumes)
        check_env(dict(self.env))
