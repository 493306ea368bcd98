"""The Python SDK: declare a workload in code, emit it as Workload IR.

::

    import mvm

    @mvm.app(
        name="hello",
        source=mvm.source.local("."),
        image=mvm.image.nix_packages(["python3"]),
        resources=mvm.resources(vcpus=1, memory_mb=256),
        dependencies=mvm.deps.python("uv.lock"),
    )
    @mvm.function(language="python", module="app", function="greet", primary=True)
    def hello() -> None: ...

Decorators only record declarations; nothing runs or builds. ``mvmctl emit
entry.py`` runs the file with ``MVM_EMITTING=1`` and turns what was declared into
canonical IR, so entry files can guard expensive side effects with
``if not mvm.emitting(): ...``. Helpers validate eagerly where a mistake is
obvious (an OCI ref without a digest), everything else is validated on emit.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from mvm.engine.base.errors import ConfigError, IrError
from mvm.engine.ir.model import (
    SCHEMA_VERSION,
    App,
    CommandEntrypoint,
    Dependencies,
    Entrypoint,
    FunctionEntrypoint,
    FunctionFormat,
    Image,
    LocalPath,
    Mount,
    Network,
    NetworkMode,
    NixDerivation,
    NixPackages,
    NodeDeps,
    NoDeps,
    NodeTool,
    OciBase,
    OciImage,
    PythonDeps,
    PythonTool,
    Resources,
    Source,
    ThreatTier,
    Volume,
    Workload,
)

F = TypeVar("F")

_ENTRYPOINTS_ATTR = "__mvm_entrypoints__"
_DIGEST_IN_REF = re.compile(r"^(?P<ref>[^@]+)@(?P<digest>sha256:[0-9a-f]{64})$")


class _Registry:
    """What the entry file declared, in declaration order (one per process)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.apps: list[App] = []
        self.volumes: list[Volume] = []
        self.workload_id: str | None = None
        self.extensions: dict[str, Any] = {}
        self.auto_emit = False
        self.failed = False


_registry = _Registry()


def emitting() -> bool:
    """True while ``mvmctl emit`` is running this file (``MVM_EMITTING=1``)."""
    return os.environ.get("MVM_EMITTING") == "1"


def _split_oci(ref: str, digest: str | None, where: str) -> tuple[str, str]:
    match = _DIGEST_IN_REF.match(ref)
    if digest is None and match:
        return ref, match["digest"]
    if digest is None:
        raise IrError(
            where,
            f"OCI reference {ref!r} has no digest",
            code="E_OCI_DIGEST",
            hint="write it as name@sha256:<64 hex> or pass digest=",
        )
    return ref, digest


class _SourceHelpers:
    @staticmethod
    def local(
        path: str = ".", *, include: Iterable[str] = ("**",), exclude: Iterable[str] = ()
    ) -> LocalPath:
        """Code in a directory relative to the entry file's directory (glob filters)."""
        return LocalPath(path=path, include=tuple(include), exclude=tuple(exclude))

    @staticmethod
    def nix(expr: str) -> NixDerivation:
        """Source produced by a Nix expression evaluated inside the same flake."""
        return NixDerivation(expr=expr)

    @staticmethod
    def oci(ref: str, digest: str | None = None) -> OciImage:
        ref, digest = _split_oci(ref, digest, "mvm.source.oci()")
        return OciImage(reference=ref, digest=digest)


class _ImageHelpers:
    @staticmethod
    def nix_packages(packages: Iterable[str]) -> NixPackages:
        if isinstance(packages, str):
            raise ConfigError("nix_packages takes a list of package names, not one string")
        return NixPackages(packages=tuple(packages))

    @staticmethod
    def oci_base(ref: str, digest: str | None = None) -> OciBase:
        ref, digest = _split_oci(ref, digest, "mvm.image.oci_base()")
        return OciBase(reference=ref, digest=digest)


class _DepsHelpers:
    @staticmethod
    def python(lockfile: str = "uv.lock", tool: PythonTool = "uv") -> PythonDeps:
        return PythonDeps(lockfile=lockfile, tool=tool)

    @staticmethod
    def node(lockfile: str = "package-lock.json", tool: NodeTool = "npm") -> NodeDeps:
        return NodeDeps(lockfile=lockfile, tool=tool)

    @staticmethod
    def none() -> NoDeps:
        return NoDeps()


source = _SourceHelpers()
image = _ImageHelpers()
deps = _DepsHelpers()


def resources(vcpus: int = 1, memory_mb: int = 256, boot_timeout_secs: int = 30) -> Resources:
    return Resources(vcpus=vcpus, memory_mb=memory_mb, boot_timeout_secs=boot_timeout_secs)


def network(mode: NetworkMode = "none", ports: Iterable[int] = ()) -> Network:
    return Network(mode=mode, ports=tuple(ports))


def mount(volume_name: str, path: str, *, read_only: bool = False) -> Mount:
    return Mount(volume=volume_name, path=path, read_only=read_only)


def volume(name: str, size_mb: int) -> str:
    """Declare a workload volume; returns its name for use in :func:`mount`."""
    _registry.volumes.append(Volume(name=name, size_mb=size_mb))
    return name


def workload(id: str | None = None, *, extensions: Mapping[str, Any] | None = None) -> None:
    """Set workload-level fields (default id: the first app's name)."""
    if id is not None:
        _registry.workload_id = id
    if extensions:
        _registry.extensions.update(extensions)


def _add_entrypoint(target: Any, ep: Entrypoint) -> None:
    eps: list[Entrypoint] = list(getattr(target, _ENTRYPOINTS_ATTR, ()))
    eps.insert(0, ep)  # decorators apply bottom-up; keep top-down reading order
    setattr(target, _ENTRYPOINTS_ATTR, tuple(eps))


def function(
    *,
    language: str,
    module: str,
    function: str,
    format: FunctionFormat = "json",
    primary: bool = False,
    args_schema: Mapping[str, Any] | None = None,
    return_schema: Mapping[str, Any] | None = None,
    concurrency: Mapping[str, Any] | None = None,
    extra_imports: Iterable[str] = (),
    working_dir: str = "/app",
) -> Callable[[F], F]:
    """Declare a function entrypoint ``module.function`` that the guest runtime invokes."""
    ep = FunctionEntrypoint(
        language=language,
        module=module,
        function=function,
        format=format,
        primary=primary,
        args_schema=dict(args_schema) if args_schema is not None else None,
        return_schema=dict(return_schema) if return_schema is not None else None,
        concurrency=dict(concurrency) if concurrency is not None else None,
        extra_imports=tuple(extra_imports),
        working_dir=working_dir,
    )

    def decorate(target: F) -> F:
        _add_entrypoint(target, ep)
        return target

    return decorate


def command(
    argv: Iterable[str], *, working_dir: str = "/app", env: Mapping[str, str] | None = None
) -> Callable[[F], F]:
    """Declare a command entrypoint (argv executed in the guest once at boot)."""
    if isinstance(argv, str):
        raise ConfigError("command takes argv as a list, not one string")
    ep = CommandEntrypoint(command=tuple(argv), working_dir=working_dir, env=dict(env or {}))

    def decorate(target: F) -> F:
        _add_entrypoint(target, ep)
        return target

    return decorate


def app(
    *,
    name: str,
    image: Image,
    dependencies: Dependencies,
    source: Source | None = None,
    resources: Resources | None = None,
    env: Mapping[str, str] | None = None,
    mounts: Iterable[Mount] = (),
    network: Network | None = None,
    threat_tier: ThreatTier = "untrusted",
    addons: Iterable[str] = (),
) -> Callable[[F], F]:
    """Declare an app; put it above its ``@mvm.function`` / ``@mvm.command`` decorators.

    ``source`` defaults to ``mvm.source.local(".")``: the directory holding the entry
    file, which is where the seed's short example keeps ``app.py``.
    """

    def decorate(target: F) -> F:
        entrypoints = getattr(target, _ENTRYPOINTS_ATTR, ())
        _registry.apps.append(
            App(
                name=name,
                source=source if source is not None else LocalPath("."),
                image=image,
                entrypoints=tuple(entrypoints),
                dependencies=dependencies,
                env=dict(env or {}),
                mounts=tuple(mounts),
                network=network,
                resources=resources or Resources(),
                threat_tier=threat_tier,
                addons=tuple(addons),
            )
        )
        return target

    return decorate


def declared_workload() -> Workload:
    """The workload declared so far in this process (used by the emitter)."""
    if not _registry.apps:
        raise ConfigError(
            "the entry file declared no app",
            code="E_EMIT_NO_APP",
            hint="decorate a function with @mvm.app(...)",
        )
    return Workload(
        schema_version=SCHEMA_VERSION,
        id=_registry.workload_id or _registry.apps[0].name,
        apps=tuple(_registry.apps),
        volumes=tuple(_registry.volumes),
        extensions=dict(_registry.extensions),
    )


def reset_declarations() -> None:
    _registry.reset()


def arm_auto_emit() -> None:
    """Under ``MVM_EMITTING=1`` (``MVM_EMITTING=1 python entry.py``), emit at exit.

    Called when ``mvm`` is imported: the entry file declares, the interpreter exits,
    and the declared workload lands, canonical, at ``$MVM_IR_OUT`` (stdout when unset).
    An entry file that raised emits nothing. Only a ``.py`` main program arms it;
    ``mvmctl emit``'s child disarms it and reports to its parent instead.
    """
    if not emitting() or _registry.auto_emit:
        return
    if not sys.argv or not sys.argv[0].endswith(".py"):
        return  # mvmctl, python -m / -c: not an entry file; they emit (or not) themselves
    _registry.auto_emit = True
    previous = sys.excepthook

    def excepthook(*exc_info: Any) -> None:
        _registry.failed = True
        previous(*exc_info)

    sys.excepthook = excepthook
    atexit.register(_emit_at_exit)


def disarm_auto_emit() -> None:
    _registry.auto_emit = False


def _emit_at_exit() -> None:
    if not _registry.auto_emit or _registry.failed:
        return
    from mvm.emit import emit_declared  # the emitter imports the IR validator: lazy

    code = emit_declared()
    if code:
        sys.stderr.flush()
        os._exit(code)


__all__ = [
    "app",
    "command",
    "deps",
    "emitting",
    "function",
    "image",
    "mount",
    "network",
    "resources",
    "source",
    "volume",
    "workload",
]
