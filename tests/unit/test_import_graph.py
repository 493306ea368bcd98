"""The package import graph follows DESIGN §2: folders form a DAG and dependencies point down.

Every module of the installed `mvm` package is parsed with `ast` (nothing is imported, so
the test also sees imports that only run inside a function). Each module belongs to the
package of its folder (`mvm.backends.qemu.accel` -> `mvm.backends.qemu`; a package's
`__init__` belongs to the package itself), and an import of `mvm.x.y` is an edge from the
importing module's package to the package that holds `mvm.x.y`. A parent package importing
a child is an edge like any other, so a root module of `mvm.backends` that imports
`mvm.backends.qemu` while `qemu` imports a root module of `mvm.backends` is a cycle.

Imports under `if TYPE_CHECKING:` are left out: they never run, so they cannot make an
import-time cycle, and they are how a lower layer names a higher layer's type in an
annotation without depending on it at run time. Function-local imports are counted: they
run, and hiding an upward dependency inside a function is still an upward dependency; so
is `importlib.import_module("mvm....")` (an f-string counts as its literal prefix). That
Python runs `mvm/__init__` and `mvm/x/__init__` before `mvm.x.y` is not an edge: only what
a module names is.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mvm

ROOT = Path(mvm.__file__).resolve().parent

# DESIGN §2: the engine's orchestration (root modules of mvm.engine) and the lifecycle
# (mvm.engine.vm) sit above actors and backends.
ENGINE_ROOT = "mvm.engine"
ENGINE_VM = "mvm.engine.vm"
BASE = "mvm.engine.base"
CLI = "mvm.cli"


def _module_files() -> dict[str, Path]:
    """Every Python module of the installed package, by dotted name."""
    out: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if not all(p.isidentifier() for p in parts):
            continue
        # Only modules reachable as mvm.* (every folder on the way is a package).
        if any(
            not (ROOT.parent / Path(*parts[:i]) / "__init__.py").exists()
            for i in range(1, len(parts))
        ):
            continue
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_files()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def package_of(module: str) -> str:
    """The folder a module lives in: a package is its own folder."""
    if module in PACKAGES:
        return module
    return module.rpartition(".")[0]


def _resolve(name: str) -> str | None:
    """The longest known module that `name` (a dotted import target) is or lies in."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module"
    )


def _literal_prefix(arg: ast.expr) -> str | None:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values:
        first = arg.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported mvm module, line) for every run-time import in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target is not None:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_pkg = module if module in PACKAGES else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base_pkg = base_pkg.rpartition(".")[0]
                base = f"{base_pkg}.{node.module}" if node.module else base_pkg
            else:
                base = node.module or ""
            if base == "mvm" or base.startswith("mvm."):
                for alias in node.names:
                    # `from mvm.x import y`: y is a submodule or a name in mvm.x.
                    target = _resolve(f"{base}.{alias.name}")
                    if target is not None:
                        found.append((target, node.lineno))
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            # importlib.import_module("mvm.x.y") or f"mvm.x.{name}": a lazy import is
            # still a dependency; an f-string counts as its literal prefix's package.
            name = _literal_prefix(node.args[0])
            if name is not None and (name == "mvm" or name.startswith("mvm.")):
                target = _resolve(name.rstrip("."))
                if target is not None:
                    found.append((target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    """Package-level edges, each with the module-level imports that make it."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in MODULES.items():
        src = package_of(module)
        for target, line in _imports(module, path):
            dst = package_of(target)
            edge = f"{module}:{line} -> {target}"
            if dst != src and edge not in edges[(src, dst)]:
                edges[(src, dst)].append(edge)
    return edges


EDGES = _edges()


def _cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def _describe(pairs: list[tuple[str, str]]) -> str:
    lines = []
    for pair in pairs:
        lines.append(f"  {pair[0]} -> {pair[1]}:")
        lines.extend(f"    {edge}" for edge in EDGES[pair])
    return "\n".join(lines)


def test_the_scan_sees_the_package() -> None:
    """A scan that found nothing would pass every check below."""
    assert {"mvm.engine.base", "mvm.engine.vm", "mvm.backends.vmm", "mvm.cli"} <= PACKAGES
    assert ("mvm.backends.qemu", "mvm.backends.vmm") in EDGES
    assert ("mvm.cli", "mvm.engine") in EDGES


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {("a", "b"): ["a.x:1 -> b.y"], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_type_checking_imports_are_left_out_and_lazy_ones_count(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mvm.cli import app\n"
        "def f(name: str) -> None:\n    from mvm.engine.base import errors\n"
        "    importlib.import_module(f'mvm.bench.{name}')\n"
        "    importlib.import_module('mvm.engine.shim')\n"
    )
    assert _imports("mvm.x", source) == [
        ("mvm.engine.base.errors", 6),
        ("mvm.bench", 7),
        ("mvm.engine.shim", 8),
    ]


def test_packages_form_no_cycle() -> None:
    cycles = _cycles(EDGES)
    report = []
    for comp in cycles:
        members = set(comp)
        inner = sorted(pair for pair in EDGES if pair[0] in members and pair[1] in members)
        report.append(f"cycle {' <-> '.join(comp)}:\n{_describe(inner)}")
    assert not cycles, "\n".join(report)
