"""Backend lookup by name, imported lazily so an unavailable backend costs nothing."""

from __future__ import annotations

from collections.abc import Callable

from mvm.backends.base import Backend
from mvm.engine.errors import ConfigError


def _qemu() -> Backend:
    from mvm.backends.qemu import QemuBackend

    return QemuBackend()


_FACTORIES: dict[str, Callable[[], Backend]] = {"qemu": _qemu}


def backend_names() -> list[str]:
    return sorted(_FACTORIES)


def get_backend(name: str) -> Backend:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}",
            code="E_BACKEND_NAME",
            hint="choose one of: " + ", ".join(backend_names()),
        ) from None
    return factory()
