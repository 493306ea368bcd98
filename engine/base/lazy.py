"""PEP 562 lazy exports: a package names what it exports without importing it.

``mvmctl --help`` and ``import mvm`` must stay cheap, yet the packages export names
whose modules pull in cattrs, jsonschema or the whole engine. A package keeps a table
``{name: module}`` and sets ``__getattr__ = lazy_exports(__name__, table, globals())``;
the first access imports the module and caches the value in the package's namespace,
so later accesses never reach the hook. (A name must not also be a submodule's name:
importing ``pkg.x`` sets the attribute ``pkg.x`` to the module, hiding a lazy ``x``.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
