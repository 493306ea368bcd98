"""mvmctl imports a command's modules only when that command runs (issue 13).

``mvmctl --help`` used to import 100 of the package's modules (the engine, the three
VMM backends, the actors, the builders with asyncssh) because every command module
was imported to build the parser. These tests read a fresh child's ``sys.modules`` and
assert on module names; the wall times are ``mvmctl bench cli``'s.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mvm.cli.app import build_parser, handler

# Never needed to list VMs or to print help: VM boot machinery and build machinery.
BOOT_AND_BUILD = (
    "mvm.engine.engine",
    "mvm.engine.vm.runtime",
    "mvm.engine.vm.shim",
    "mvm.engine.vm.snapshots",
    "mvm.engine.admission",
    "mvm.engine.builders.",
    "mvm.engine.invoke",
    "mvm.backends",
    "mvm.actors",
    "asyncssh",
)


_DUMP = "mvm-test-modules:"
# Print sys.modules at exit: after the command ran (or argparse exited for --help).
_CHILD = (
    "import atexit, sys\n"
    f"atexit.register(lambda: print({_DUMP!r}, *sorted(sys.modules), file=sys.stderr))\n"
)


def _imported(*args: str, code: str | None = None) -> set[str]:
    """The modules loaded by a fresh ``mvmctl ARGS`` (or by ``python -c CODE``).

    Read from ``sys.modules`` at exit rather than ``-X importtime``, which does not
    see modules loaded with ``importlib.import_module`` (as the handlers are)."""
    body = code if code is not None else "from mvm.cli.app import main\nmain()\n"
    # -P: keep the cwd off sys.path (from the repo root ./mvm is a partial package).
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _CHILD + body, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MVM_EMITTING": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith(_DUMP)]
    return set(line.split()[1:])


def _matching(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for p in prefixes if n == p or n.startswith(p.rstrip(".") + "."))


def test_help_imports_no_command_module_no_engine_and_no_event_loop() -> None:
    names = _imported("--help")
    assert _matching(names, BOOT_AND_BUILD) == []
    command_modules = sorted(n for n in names if n.startswith("mvm.cli.") and "_commands" in n)
    assert command_modules == []
    # Parsing --help runs nothing: neither trio nor the logging setup is loaded.
    assert _matching(names, ("trio", "structlog", "mvm.engine.store")) == []


def test_ls_opens_the_store_without_backends_actors_or_the_engine() -> None:
    names = _imported("ls")
    assert "mvm.cli.ls_commands" in names and "mvm.engine.store" in names
    # The reconciler reads the plan file's name, whose module types it with the
    # backends' data types (mvm.backends.abc); no backend, VMM manager or agent client.
    backends = {n for n in names if n.startswith("mvm.backends")}
    assert backends <= {"mvm.backends", "mvm.backends.abc", "mvm.backends.abc.types"}
    assert _matching(names - backends, BOOT_AND_BUILD) == []
    assert "mvm.cli.vm_commands" not in names
    # ls runs on asyncio and logs nothing here: neither trio nor structlog (a quarter of
    # its start-up) is loaded; loggers import structlog on first use.
    assert _matching(names, ("trio", "structlog")) == []


def test_import_mvm_loads_the_sdk_but_not_the_engine_or_the_ir_converter() -> None:
    bare = _imported(code="import mvm")
    assert "mvm.sdk" not in bare and "mvm.engine.ir.model" not in bare
    names = _imported(code="import mvm\nassert callable(mvm.app)")
    assert "mvm.sdk" in names
    assert _matching(names, (*BOOT_AND_BUILD, "mvm.engine.ir.convert", "cattrs")) == []


def test_the_lazy_public_names_resolve() -> None:
    import mvm
    from mvm import Engine, ImageSpec, VmRequest
    from mvm.engine.engine import Engine as EngineClass

    assert Engine is EngineClass and mvm.Engine is EngineClass
    assert ImageSpec.__module__ == "mvm.engine.images.imagespec"
    assert VmRequest.__module__ == "mvm.engine.request.vmrequest"
    assert set(mvm.__all__) <= set(dir(mvm))
    for name in mvm.__all__:
        assert getattr(mvm, name) is not None
    with pytest.raises(AttributeError):
        _ = mvm.NoSuchThing  # type: ignore[attr-defined]


def _handlers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                target = child.get_default("handler")
                if target is not None:
                    yield name, target
                yield from _handlers(child)


def test_every_command_names_a_handler_that_exists() -> None:
    handlers = list(_handlers(build_parser()))
    assert len(handlers) > 40
    for name, target in handlers:
        assert inspect.iscoroutinefunction(handler(target)), (name, target)


def test_the_invoke_timeout_default_is_the_engines() -> None:
    from mvm.cli.parsers.invoke import DEFAULT_TIMEOUT
    from mvm.engine.invoke import DEFAULT_TIMEOUT as ENGINE_DEFAULT

    assert DEFAULT_TIMEOUT == ENGINE_DEFAULT


def test_the_parsers_builder_modes_are_the_engines() -> None:
    from mvm.cli.parsers.build import BUILDER_MODES
    from mvm.engine.builders import MODES

    assert BUILDER_MODES == MODES


def test_no_lazy_export_is_hidden_by_a_submodule_of_the_same_name() -> None:
    """Importing ``pkg.x`` sets the attribute ``pkg.x`` to the submodule, which then hides
    a lazily exported ``x`` (``mvm.engine.ir.validate`` the function was once shadowed by
    the module of that name, for whoever imported the module first)."""
    import importlib
    import pkgutil

    for package in ("mvm", "mvm.engine.ir", "mvm.engine.images"):
        pkg = importlib.import_module(package)
        submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
        clashes = submodules & set(getattr(pkg, "__all__", ()))
        assert not clashes, f"{package}: exported names that are also submodules: {clashes}"
