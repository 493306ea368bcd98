"""One typed ``Settings`` value: every ``MVM_*`` environment variable mvm reads.

The environment is read in exactly one place, :meth:`Settings.from_env`, and only
at the edge: the CLI (``mvmctl``'s ``main``), ``Engine.open(...)`` and the detached
VM's shim (a new process, so a new edge). The edge installs the value with
:func:`use_settings`; code below asks :func:`current_settings` and never looks at
``os.environ``, so an embedder can run two engines with different homes in one
process, and a bad value (``MVM_ACCEL=bogus``) is one coded line at the edge instead
of a traceback from deep inside a boot.

The value lives in a :mod:`contextvars` variable: trio and asyncio copy it into every
task, anyio into its worker threads, so a VM actor sees the settings of the engine
that started it. A child process (the shim) gets them back as environment
variables: :func:`child_environ`.

``Accel`` lives here (re-exported by :mod:`mvm.backends.abc.types`) so that the
accelerator is a typed value validated once, while this package still imports
nothing else of ours.
"""

from __future__ import annotations

import contextvars
import enum
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import attrs

from mvm.engine.base.errors import ConfigError, SettingsError


class Accel(enum.Enum):
    """The acceleration a VM asks for: KVM, TCG (emulation) or auto."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


# VMM binary overrides: program name -> the variable that names its path.
BINARY_VARS: Mapping[str, str] = MappingProxyType(
    {"firecracker": "MVM_FIRECRACKER", "cloud-hypervisor": "MVM_CLOUD_HYPERVISOR"}
)

# Every variable a Settings owns (child_environ replaces all of them).
OWNED_VARS: tuple[str, ...] = (
    "MVM_HOME",
    "MVM_CACHE",
    "MVM_ACCEL",
    "MVM_KERNEL",
    "MVM_KERNEL_JOBS",
    "MVM_NET_BRIDGE",
    "MVM_NET_SUBNET",
    "MVM_BUILDER_SSH",
    "MVM_BUILDER_SSH_KEY",
    "MVM_BUILDER_SSH_KNOWN_HOSTS",
    "MVM_BUILDER_NIX",
    "MVM_BUILDER_VSOCK",
    "MVM_BACKEND_PLUGINS",
    "MVM_NIX_DIR",
    "MVM_FAKE_SEALED",
    "MVM_LOG_LEVEL",
    "MVM_FAULT_KILL_AT",
    *BINARY_VARS.values(),
)


def _default_home() -> Path:
    return Path.home() / ".mvm"


def _default_cache() -> Path:
    return Path.home() / ".cache" / "mvm"


def _binaries(value: Mapping[str, Path]) -> Mapping[str, Path]:
    return MappingProxyType(dict(value))


def _env(var: str | tuple[str, ...], default: str, doc: str) -> dict[str, object]:
    """A field's documentation: the variable(s) that set it, the default in words and
    what it means. ``mvmctl --help``'s Environment section and the README's are made
    from these (:mod:`mvm.engine.base.env_docs`)."""
    return {"env": (var,) if isinstance(var, str) else var, "default": default, "doc": doc}


@attrs.frozen
class Settings:
    """What the environment configures. Fields are typed and already validated;
    ``None`` means "not set" (the reader uses its own default)."""

    home: Path = attrs.field(
        factory=_default_home,
        converter=Path,
        metadata=_env("MVM_HOME", "~/.mvm", "state: state.db, vms/NAME/ (console logs), volumes/"),
    )
    cache: Path = attrs.field(
        factory=_default_cache,
        converter=Path,
        metadata=_env(
            "MVM_CACHE",
            "$XDG_CACHE_HOME/mvm, else ~/.cache/mvm",
            "rebuildable artifacts: the kernel, the guest agent, images",
        ),
    )
    accel: Accel = attrs.field(
        default=Accel.AUTO,
        metadata=_env(
            "MVM_ACCEL", "auto", "auto, kvm or tcg: auto uses KVM where /dev/kvm works, else TCG"
        ),
    )
    kernel: Path | None = attrs.field(
        default=None,
        metadata=_env(
            "MVM_KERNEL", "the cached build", "a vmlinux to boot instead of `mvmctl kernel build`'s"
        ),
    )
    kernel_jobs: int | None = attrs.field(
        default=None,
        metadata=_env("MVM_KERNEL_JOBS", "the CPUs this process may use", "kernel build jobs"),
    )
    net_bridge: str = attrs.field(
        default="br-mvm", metadata=_env("MVM_NET_BRIDGE", "br-mvm", "the bridge of --net tap")
    )
    net_subnet: str = attrs.field(  # checked by NetConfig when a VM is networked
        default="172.16.0.0/24",
        metadata=_env("MVM_NET_SUBNET", "172.16.0.0/24", "the subnet --net tap VMs get"),
    )
    builder_ssh: str | None = attrs.field(  # parsed by SshTarget
        default=None,
        metadata=_env("MVM_BUILDER_SSH", "unset", "[user@]host[:port] of the ssh builder"),
    )
    builder_ssh_key: Path | None = attrs.field(
        default=None,
        metadata=_env("MVM_BUILDER_SSH_KEY", "ssh's own keys", "private key for the ssh builder"),
    )
    builder_ssh_known_hosts: str = attrs.field(
        default="default",
        metadata=_env(
            "MVM_BUILDER_SSH_KNOWN_HOSTS",
            "default",
            "default (~/.ssh/known_hosts), none (no host key check) or a known_hosts path",
        ),
    )
    builder_nix: str = attrs.field(
        default="nix", metadata=_env("MVM_BUILDER_NIX", "nix", "the nix program on the builder")
    )
    builder_vsock: str | None = attrs.field(
        default=None,
        metadata=_env(
            "MVM_BUILDER_VSOCK", "unset", "vsock:CID[:PORT] or unix:PATH of a builder VM's agent"
        ),
    )
    backend_plugins: str = attrs.field(
        default="",
        metadata=_env(
            "MVM_BACKEND_PLUGINS", "none", "more hypervisor backends: NAME=module:factory,..."
        ),
    )
    nix_dir: Path | None = attrs.field(
        default=None,
        metadata=_env("MVM_NIX_DIR", "nix/ of the installed mvm", "the mvm Nix library to use"),
    )
    binaries: Mapping[str, Path] = attrs.field(
        factory=dict,
        converter=_binaries,
        eq=False,
        hash=False,
        metadata=_env(
            tuple(BINARY_VARS.values()), "found on PATH", "path of the {program} program"
        ),
    )
    fake_sealed: bool = attrs.field(
        default=False,
        metadata=_env("MVM_FAKE_SEALED", "0", "tests: 1 boots the stub backend's agent sealed"),
    )
    log_level: str | None = attrs.field(
        default=None,
        metadata=_env(
            "MVM_LOG_LEVEL", "warning", "debug, info, warning or error (--log-level wins)"
        ),
    )
    fault_kill_at: str | None = attrs.field(
        default=None,
        metadata=_env(
            "MVM_FAULT_KILL_AT", "unset", "tests: the boot step at which to SIGKILL itself"
        ),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable (``os.environ`` unless given). Raises
        :class:`SettingsError` listing one coded error per bad variable."""
        env = os.environ if environ is None else environ
        problems: list[ConfigError] = []

        def text(name: str) -> str | None:
            value = env.get(name, "")
            return value or None

        def path(name: str) -> Path | None:
            value = text(name)
            return Path(value) if value else None

        accel = Accel.AUTO
        raw_accel = (text("MVM_ACCEL") or "").strip().lower()
        if raw_accel:
            try:
                accel = Accel(raw_accel)
            except ValueError:
                valid = ", ".join(a.value for a in Accel)
                problems.append(
                    ConfigError(
                        f"MVM_ACCEL={env['MVM_ACCEL']!r} is not one of {valid}",
                        code="E_ACCEL",
                        hint=f"set MVM_ACCEL to one of {valid}, or unset it",
                    )
                )
        jobs: int | None = None
        raw_jobs = (text("MVM_KERNEL_JOBS") or "").strip()
        if raw_jobs:
            if raw_jobs.isdigit() and int(raw_jobs) > 0:
                jobs = int(raw_jobs)
            else:
                problems.append(
                    ConfigError(
                        f"MVM_KERNEL_JOBS={raw_jobs!r} is not a positive whole number",
                        code="E_KERNEL_JOBS",
                    )
                )
        if problems:
            raise SettingsError(problems)
        xdg = path("XDG_CACHE_HOME")
        return cls(
            home=path("MVM_HOME") or _default_home(),
            cache=path("MVM_CACHE") or ((xdg / "mvm") if xdg else _default_cache()),
            accel=accel,
            kernel=path("MVM_KERNEL"),
            kernel_jobs=jobs,
            net_bridge=env.get("MVM_NET_BRIDGE", "br-mvm"),
            net_subnet=env.get("MVM_NET_SUBNET", "172.16.0.0/24"),
            builder_ssh=text("MVM_BUILDER_SSH"),
            builder_ssh_key=path("MVM_BUILDER_SSH_KEY"),
            builder_ssh_known_hosts=env.get("MVM_BUILDER_SSH_KNOWN_HOSTS", "default"),
            builder_nix=env.get("MVM_BUILDER_NIX", "nix"),
            builder_vsock=text("MVM_BUILDER_VSOCK"),
            backend_plugins=env.get("MVM_BACKEND_PLUGINS", ""),
            nix_dir=path("MVM_NIX_DIR"),
            binaries={
                prog: Path(value) for prog, var in BINARY_VARS.items() if (value := text(var))
            },
            fake_sealed=env.get("MVM_FAKE_SEALED") == "1",
            log_level=text("MVM_LOG_LEVEL"),
            fault_kill_at=text("MVM_FAULT_KILL_AT"),
        )

    def to_env(self) -> dict[str, str]:
        """The variables that make :meth:`from_env` give back this value (for a child
        process that is an edge of its own, such as the shim)."""
        env = {"MVM_HOME": str(self.home), "MVM_CACHE": str(self.cache)}
        if self.accel is not Accel.AUTO:
            env["MVM_ACCEL"] = self.accel.value
        optional = {
            "MVM_KERNEL": self.kernel,
            "MVM_KERNEL_JOBS": self.kernel_jobs,
            "MVM_BUILDER_SSH": self.builder_ssh,
            "MVM_BUILDER_SSH_KEY": self.builder_ssh_key,
            "MVM_BUILDER_VSOCK": self.builder_vsock,
            "MVM_NIX_DIR": self.nix_dir,
            "MVM_LOG_LEVEL": self.log_level,
            "MVM_FAULT_KILL_AT": self.fault_kill_at,
            **{BINARY_VARS[prog]: p for prog, p in self.binaries.items() if prog in BINARY_VARS},
        }
        env.update({k: str(v) for k, v in optional.items() if v is not None})
        env.update(
            {
                "MVM_NET_BRIDGE": self.net_bridge,
                "MVM_NET_SUBNET": self.net_subnet,
                "MVM_BUILDER_SSH_KNOWN_HOSTS": self.builder_ssh_known_hosts,
                "MVM_BUILDER_NIX": self.builder_nix,
            }
        )
        if self.backend_plugins:
            env["MVM_BACKEND_PLUGINS"] = self.backend_plugins
        if self.fake_sealed:
            env["MVM_FAKE_SEALED"] = "1"
        return env


_CURRENT: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "mvm_settings", default=None
)


def current_settings() -> Settings:
    """The settings the edge installed; where none did (library code used directly,
    tests), the environment as it is now. Not cached on purpose: an unset edge means
    "the environment", and tests change it between cases (each gets its own MVM_HOME)."""
    installed = _CURRENT.get()
    return installed if installed is not None else Settings.from_env()


@contextmanager
def use_settings(settings: Settings) -> Iterator[Settings]:
    """Install ``settings`` for this context (and every task/thread started from it)."""
    token = _CURRENT.set(settings)
    try:
        yield settings
    finally:
        _CURRENT.reset(token)


def child_environ(settings: Settings | None = None) -> dict[str, str]:
    """The environment for a child mvm process: this process's, with every variable
    a Settings owns replaced by ``settings`` (default: the current ones), so the
    child, reading its own environment at its edge, sees what the parent saw."""
    chosen = settings if settings is not None else current_settings()
    env = {k: v for k, v in os.environ.items() if k not in OWNED_VARS}
    env.update(chosen.to_env())
    return env
