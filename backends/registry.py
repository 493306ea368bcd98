"""Backend lookup by name, imported lazily so an unavailable backend costs nothing.

Extra backends can be plugged in without touching mvm through
``MVM_BACKEND_PLUGINS="name=package.module:factory,..."`` (the factory returns a
Backend). The test suite uses this for a process-level fake VMM; third parties
can use it for their hypervisors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from mvm.backends.abc.types import Backend
from mvm.engine.base.errors import ConfigError
from mvm.engine.base.settings import current_settings


def _qemu() -> Backend:
    from mvm.backends.qemu import QemuBackend

    return QemuBackend()


def _stub() -> Backend:
    from mvm.backends.stub import StubBackend

    return StubBackend()


def _firecracker() -> Backend:
    from mvm.backends.firecracker.backend import factory

    return factory()


def _cloud_hypervisor() -> Backend:
    from mvm.backends.cloud_hypervisor.backend import factory

    return factory()


_BUILTIN: dict[str, Callable[[], Backend]] = {
    "qemu": _qemu,
    "firecracker": _firecracker,
    "cloud-hypervisor": _cloud_hypervisor,
    "stub": _stub,
}


def _plugins() -> dict[str, Callable[[], Backend]]:
    found: dict[str, Callable[[], Backend]] = {}
    spec = current_settings().backend_plugins
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, target = item.partition("=")
        module_name, _, attr = target.partition(":")
        if not (name and module_name and attr):
            raise ConfigError(
                f"MVM_BACKEND_PLUGINS entry {item!r} is not NAME=module:factory",
                code="E_BACKEND_PLUGIN",
            )

        def factory(module_name: str = module_name, attr: str = attr) -> Backend:
            return cast(Backend, getattr(importlib.import_module(module_name), attr)())

        found[name] = factory
    return found


def _factories() -> dict[str, Callable[[], Backend]]:
    return {**_BUILTIN, **_plugins()}


def backend_names() -> list[str]:
    return sorted(_factories())


def get_backend(name: str) -> Backend:
    factories = _factories()
    try:
        factory = factories[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}",
            code="E_BACKEND_NAME",
            hint="choose one of: " + ", ".join(sorted(factories)),
        ) from None
    return factory()
