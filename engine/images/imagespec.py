"""ImageSpec: the offline builder's equivalent of mkGuest's arguments.

Field names follow mkGuest (snake_case here, camelCase in Nix). Inference rules
are the same as the Nix library's (nix/lib/spec.nix) so both paths produce the
same metadata: entrypoint kind is ``command`` if a command is given, else
``shell`` if a shell is named, else ``services`` if any service is defined,
else ``shell`` (``/bin/sh``); a shell image is ``accessible`` (dev) and a
command/services image ``sealed``, unless ``dev`` says otherwise; the
entrypoint uid defaults to 0 in accessible images and 1000 in sealed ones; the
agent runs as uid 990. A string command runs under ``/bin/sh -c``. Workload
processes run under the ``standard`` seccomp tier unless ``seccomp`` says
otherwise; in a sealed image with a rootless entrypoint every service gets its
own uid (``service_uids``), in any other image services share the entrypoint's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import attrs

from mvm.engine.base.errors import ConfigError

RestartPolicy = Literal["always", "on-failure", "never"]
EntrypointKind = Literal["shell", "command", "services"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MVM_FILE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\.json$")
_BUILDER_MVM_FILES = frozenset({"mvm-meta.json"})
AGENT_UID = 990
# The guest's syscall filters (backends/guest/agent/seccomp.c has the lists).
SECCOMP_TIERS = ("unrestricted", "standard", "strict")
DEFAULT_SECCOMP = "standard"
# Per-service uids are handed out from here, by sorted service name.
FIRST_SERVICE_UID = 1001
NOBODY_UID = 65534
DEFAULT_SHELL = "/bin/sh"
# A preference the image records; "auto" = the best hypervisor available at run time.
HYPERVISORS = (
    "auto", "firecracker", "cloud-hypervisor", "qemu", "stub", "libkrun", "apple-container",
)  # fmt: skip


def _argv(command: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    """An entrypoint command as argv: a string runs under /bin/sh -c (as in mkGuest)."""
    if command is None:
        return None
    if isinstance(command, str):
        return ("/bin/sh", "-c", command)
    return tuple(command)


def _names(values: str | Iterable[str]) -> tuple[str, ...]:
    """A list (as JSON and TOML have) or tuple of names; one bare string is one name."""
    return (values,) if isinstance(values, str) else tuple(values)


def _service_command(command: str | tuple[str, ...] | list[str]) -> str | tuple[str, ...]:
    return command if isinstance(command, str) else tuple(command)


@attrs.frozen
class Service:
    """A long-running guest service: its command, environment and restart policy."""

    # A shell string (run with sh -c) or argv (exec'd as is), like mkGuest's.
    command: str | tuple[str, ...] = attrs.field(converter=_service_command)
    pre_start: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    restart: RestartPolicy = "always"
    uid: int | None = None  # None: its own uid in a sealed image, else the entrypoint's


@attrs.frozen
class HealthCheck:
    """A service's health command and how often it runs."""

    health_cmd: str
    health_interval_secs: int = 5
    health_timeout_secs: int = 3


@attrs.frozen
class Uids:
    """The uids the guest agent and the entrypoint run as."""

    agent: int = AGENT_UID
    entrypoint: int | None = None  # None: 0 in dev, 1000 when sealed


@attrs.frozen
class ImageSpec:
    """What to build: the entrypoint, services, packages and files of an image
    (``Engine.build``); lists are accepted where JSON has lists."""

    name: str
    command: tuple[str, ...] | None = attrs.field(default=None, converter=_argv)
    shell: str | None = None  # entrypoint.shell; None: /bin/sh when the kind is shell
    services: dict[str, Service] = attrs.field(factory=dict)
    packages: tuple[str, ...] = attrs.field(
        default=(), converter=_names
    )  # busybox applet names or absolute host paths
    extra_files: dict[str, str] = attrs.field(factory=dict)  # guest path -> file content
    extra_file_modes: dict[str, int] = attrs.field(factory=dict)  # guest path -> mode (0644)
    uids: Uids = attrs.field(factory=Uids)
    dev: bool | None = None  # None: inferred (shell => accessible, else sealed)
    vcpus: int = 1
    memory_mib: int = 256
    health_checks: dict[str, HealthCheck] = attrs.field(factory=dict)
    # guest path -> host file copied there (binary-safe; e.g. a runtime's stdlib zip)
    host_files: dict[str, str] = attrs.field(factory=dict)
    # file name -> text under /etc/mvm (e.g. wrapper.json, runtime.json for functions)
    mvm_files: dict[str, str] = attrs.field(factory=dict)
    hypervisor: str = "auto"
    seccomp: str = DEFAULT_SECCOMP  # one of SECCOMP_TIERS

    def __attrs_post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"image name {self.name!r} is invalid",
                code="E_SPEC_NAME",
                hint="use 1-63 lowercase letters, digits and '-'",
            )
        if self.command is not None and not self.command:
            raise ConfigError(
                "command is empty", code="E_SPEC_COMMAND", hint="omit it or give argv"
            )
        if self.shell is not None and not self.shell.startswith("/"):
            raise ConfigError(
                f"entrypoint.shell {self.shell!r} must be an absolute path",
                code="E_SPEC_ENTRYPOINT",
            )
        if self.hypervisor not in HYPERVISORS:
            raise ConfigError(
                f"unknown hypervisor {self.hypervisor!r} (one of {', '.join(HYPERVISORS)})",
                code="E_SPEC_HYPERVISOR",
            )
        if self.seccomp not in SECCOMP_TIERS:
            raise ConfigError(
                f"unknown seccomp tier {self.seccomp!r} (one of {', '.join(SECCOMP_TIERS)})",
                code="E_SPEC_SECCOMP",
            )
        for path, mode in self.extra_file_modes.items():
            if path not in self.extra_files or not 0 <= mode <= 0o777:
                raise ConfigError(
                    f"extra file {path}: mode must be 0..0777 for a file in extra_files",
                    code="E_SPEC_MODE",
                )
        if not 1 <= self.vcpus <= 64:
            raise ConfigError(f"vcpus={self.vcpus} out of range 1..64", code="E_SPEC_VCPUS")
        if not 64 <= self.memory_mib <= 65536:
            raise ConfigError(
                f"memory_mib={self.memory_mib} out of range 64..65536", code="E_SPEC_MEMORY"
            )
        for svc in self.health_checks:
            if svc not in self.services:
                raise ConfigError(
                    f"health check for unknown service {svc!r}",
                    code="E_SPEC_HEALTH",
                    hint=f"define services.{svc} or remove the check",
                )
        for path in self.extra_files:
            if not path.startswith("/") or ".." in path.split("/"):
                raise ConfigError(
                    f"extra file path {path!r} must be absolute without '..'",
                    code="E_SPEC_PATH",
                )

        for name in self.mvm_files:
            if not _MVM_FILE.match(name) or name in _BUILDER_MVM_FILES:
                raise ConfigError(
                    f"mvm file {name!r} is not a plain .json name or is the builder's own",
                    code="E_SPEC_PATH",
                )

    @property
    def entrypoint_kind(self) -> EntrypointKind:
        """What the VM runs: a command, a shell, services, or nothing."""
        if self.command is not None:
            return "command"
        if self.shell is not None:
            return "shell"
        if self.services:
            return "services"
        return "shell"

    @property
    def accessible(self) -> bool:
        """Exec and console allowed: ``dev``, or inferred (a shell image is)."""
        if self.dev is not None:
            return self.dev
        return self.entrypoint_kind == "shell"

    @property
    def shell_program(self) -> str:
        """The shell a shell entrypoint runs (``/bin/sh`` unless given)."""
        return self.shell or DEFAULT_SHELL

    @property
    def sealed(self) -> bool:
        """Not accessible: exec and console are refused."""
        return not self.accessible

    @property
    def entrypoint_uid(self) -> int:
        """The uid the entrypoint runs as: given, else 0 in dev and 1000 sealed."""
        if self.uids.entrypoint is not None:
            return self.uids.entrypoint
        return 0 if self.accessible else 1000

    @property
    def own_service_uids(self) -> bool:
        """Services get uids of their own (sealed, rootless entrypoint); else they share
        the entrypoint's, so that a dev image's exec and console (which run as the
        entrypoint uid) can still reach them."""
        return self.sealed and self.entrypoint_uid != 0

    @property
    def service_uids(self) -> dict[str, int]:
        """Each service's uid: given, else (``own_service_uids``) the next free one from
        1001 by sorted name, never the agent's, the entrypoint's, nobody's or a given
        one; else the entrypoint's. nix/lib/spec.nix ``serviceUids`` is the same rule."""
        given = {n: s.uid for n, s in self.services.items() if s.uid is not None}
        if not self.own_service_uids:
            return {n: given.get(n, self.entrypoint_uid) for n in sorted(self.services)}
        taken = {self.uids.agent, self.entrypoint_uid, NOBODY_UID, *given.values()}
        out: dict[str, int] = {}
        candidate = FIRST_SERVICE_UID
        for name in sorted(self.services):
            if name in given:
                out[name] = given[name]
                continue
            while candidate in taken:
                candidate += 1
            out[name] = candidate
            taken.add(candidate)
        return out
