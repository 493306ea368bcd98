"""Every error code is registered once, with the class it is raised as (issue 13).

The scan reads the INSTALLED package's sources (Python, the guest agent's C, the
Nix library, the TypeScript SDK), so a code added anywhere that ships is caught:
* a code literal that is not in mvm.engine.base.error_codes fails;
* a registered code that nothing uses any more (a dead entry) fails;
* a raise site whose MvmError class differs from the registered one fails.

Class pairs are found statically: ``Cls(..., code="E_X")`` (or a module constant
holding the code), ``class Cls: code = "E_X"``, and one level of helper: a function
that passes one of its parameters as ``code=`` to an MvmError class, called in the
same module with a literal (``_bad(path, key, problem, "E_TOML_TYPE")``).
"""

from __future__ import annotations

import ast
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import mvm
from mvm.engine.base import error_codes
from mvm.engine.base.errors import CODES, ConfigError, IrError, MvmError, lookup

PKG = Path(mvm.__file__).resolve().parent
CODE = re.compile(r"E_[A-Z0-9_]+")
# A code inside a C / Nix / JS string: right after a quote, ending at a quote or ':'.
QUOTED = re.compile(r"[\"'`](E_[A-Z0-9_]+)(?=[\"'`:])")
C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
NIX_COMMENT = re.compile(r"/\*.*?\*/|^\s*#[^\n]*", re.S | re.M)
JS_COMMENT = re.compile(r"/\*.*?\*/|^\s*//[^\n]*", re.S | re.M)

Uses = dict[str, set[str]]  # code -> files using it
Pairs = list[tuple[str, str, str]]  # (class name, code, where)


def _docstrings(tree: ast.AST) -> set[int]:
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def python_codes(source: str) -> set[str]:
    """Code literals in Python: string constants (f-string parts too) that are exactly a
    code or start with ``E_X:``; docstrings and comments are prose, not uses."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            match = CODE.match(node.value)
            if match and (match.end() == len(node.value) or node.value[match.end()] == ":"):
                found.add(match.group())
    return found


def text_codes(source: str, comments: re.Pattern[str]) -> set[str]:
    return {m.group(1) for m in QUOTED.finditer(comments.sub("", source))}


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _code_kw(call: ast.Call) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == "code"), None)


def class_tree(sources: list[str]) -> set[str]:
    """Names of every MvmError subclass defined in the sources (MvmError included)."""
    bases: dict[str, list[str]] = {}
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                ]
    known = {"MvmError"}
    grew = True
    while grew:
        grew = False
        for name, parents in bases.items():
            if name not in known and known.intersection(parents):
                known.add(name)
                grew = True
    return known


def class_pairs(source: str, where: str, classes: set[str]) -> Pairs:
    """(class, code) for every raise site whose class and code are both literal."""
    tree = ast.parse(source)
    consts = {
        target.id: stmt.value.value
        for stmt in tree.body
        if isinstance(stmt, ast.Assign)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
        and CODE.fullmatch(stmt.value.value)
        for target in stmt.targets
        if isinstance(target, ast.Name)
    }

    def literal(node: ast.expr | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value if CODE.fullmatch(node.value) else None
        if isinstance(node, ast.Name):
            return consts.get(node.id)
        return None

    pairs: Pairs = []
    forwarders: dict[str, tuple[int, str, str]] = {}  # function -> (position, param, class)
    params_of: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in classes:
            for stmt in node.body:
                target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                    target = stmt.targets[0]
                value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
                if isinstance(target, ast.Name) and target.id == "code":
                    code = literal(value)
                    if code:
                        pairs.append((node.name, code, f"{where}: class {node.name}"))
        elif isinstance(node, ast.Call) and _callee(node) in classes:
            code = literal(_code_kw(node))
            if code:
                pairs.append((str(_callee(node)), code, f"{where}:{node.lineno}"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            params += [a.arg for a in node.args.kwonlyargs]
            params_of[node.name] = params
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and _callee(call) in classes:
                    kw = _code_kw(call)
                    if isinstance(kw, ast.Name) and kw.id in params:
                        forwarders[node.name] = (params.index(kw.id), kw.id, str(_callee(call)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in forwarders:
            position, param, cls = forwarders[str(_callee(node))]
            method = params_of[str(_callee(node))][:1] in (["self"], ["cls"])
            if method and isinstance(node.func, ast.Attribute):
                position -= 1  # a method called on an object: self is not passed
            arg = next((kw.value for kw in node.keywords if kw.arg == param), None)
            if arg is None and position < len(node.args):
                arg = node.args[position]
            code = literal(arg)
            if code:
                pairs.append((cls, code, f"{where}:{node.lineno} via {_callee(node)}()"))
    return pairs


def _package_files(suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in PKG.rglob("*") if p.is_file() and p.as_posix().endswith(suffixes))


def scan() -> tuple[Uses, Pairs, set[str]]:
    uses: Uses = defaultdict(set)
    py_files = _package_files((".py",))
    assert len(py_files) > 100, f"the installed package at {PKG} looks incomplete"
    py_sources = {p: p.read_text() for p in py_files}
    registry = PKG / "engine" / "base" / "error_codes.py"
    assert registry in py_sources
    for path, source in py_sources.items():
        if path == registry:
            continue  # the registry names every code; a use is somewhere else
        for code in python_codes(source):
            uses[code].add(str(path.relative_to(PKG)))
    other = {".c": C_COMMENT, ".h": C_COMMENT, ".nix": NIX_COMMENT}
    other |= {".js": JS_COMMENT, ".mjs": JS_COMMENT}
    other["/init"] = NIX_COMMENT  # the guest's /init (sh): '#' comments, like Nix
    for suffix, comments in other.items():
        files = _package_files((suffix,))
        if suffix in (".c", ".nix", "/init"):
            assert files, f"no {suffix} files in the installed package at {PKG}"
        for path in files:
            for code in text_codes(path.read_text(), comments):
                uses[code].add(str(path.relative_to(PKG)))
    classes = class_tree(list(py_sources.values()))
    pairs = [
        pair
        for path, source in py_sources.items()
        for pair in class_pairs(source, str(path.relative_to(PKG)), classes)
    ]
    return uses, pairs, classes


@pytest.fixture(scope="module")
def scanned() -> tuple[Uses, Pairs, set[str]]:
    return scan()


def test_every_code_used_in_the_package_is_registered(
    scanned: tuple[Uses, Pairs, set[str]],
) -> None:
    uses, _, _ = scanned
    # The sources this task found codes in: the scan must still see codes from each kind.
    assert "E_SEALED" in uses and "E_SPEC_NAME" in uses and "E_INPUT_JSON" in uses
    assert any(f.endswith(".c") for f in uses["E_EXEC"]), uses["E_EXEC"]
    assert any(f.endswith(".nix") for f in uses["E_SPEC_RESTART"]), uses["E_SPEC_RESTART"]
    missing = {code: sorted(files) for code, files in uses.items() if code not in CODES}
    assert not missing, f"unregistered codes (add them to engine/base/error_codes.py): {missing}"


def test_no_registered_code_is_dead(scanned: tuple[Uses, Pairs, set[str]]) -> None:
    uses, _, _ = scanned
    dead = sorted(set(CODES) - set(uses))
    assert not dead, f"registered codes nothing uses (remove them from error_codes.py): {dead}"


def test_each_code_is_registered_once() -> None:
    counts = Counter(info.code for info in error_codes.ENTRIES)
    assert [code for code, n in counts.items() if n > 1] == []
    assert len(CODES) == len(error_codes.ENTRIES) > 200


def test_raise_sites_use_the_registered_class(scanned: tuple[Uses, Pairs, set[str]]) -> None:
    _, pairs, classes = scanned
    assert len(pairs) > 300, "the static scan found too few raise sites to be trusted"
    wrong = [
        f"{where}: {cls}(code={code!r}) but {code} is registered as {CODES[code].cls}"
        for cls, code, where in pairs
        if code in CODES and cls != CODES[code].cls and cls not in CODES[code].also
    ]
    assert not wrong, "\n".join(wrong)
    unknown = {
        info.code: name
        for info in CODES.values()
        for name in (info.cls, *info.also)
        if name not in classes
    }
    assert not unknown, f"registered classes that are not MvmError subclasses: {unknown}"


def test_registry_entries_are_one_line_with_a_hint() -> None:
    for info in CODES.values():
        assert CODE.fullmatch(info.code), info
        assert info.meaning and "\n" not in info.meaning, info
        assert info.hint and "\n" not in info.hint, info
        assert info.cls not in info.also, info


def test_one_line_falls_back_to_the_registered_hint() -> None:
    bare = ConfigError("memory_mib=1 out of range 64..65536", code="E_SPEC_MEMORY")
    assert bare.hint is None
    assert bare.one_line() == (
        "error[E_SPEC_MEMORY]: memory_mib=1 out of range 64..65536 (give memory_mib 64..65536)"
    )
    own = ConfigError("bad", code="E_SPEC_MEMORY", hint="the site's own hint")
    assert own.one_line() == "error[E_SPEC_MEMORY]: bad (the site's own hint)"
    # A code from a guest that nobody registered is still shown, just without a hint.
    assert lookup("E_FROM_A_NEWER_GUEST") is None
    assert MvmError("odd", code="E_FROM_A_NEWER_GUEST").one_line() == (
        "error[E_FROM_A_NEWER_GUEST]: odd"
    )
    # Class-level codes get their hint too.
    assert (
        IrError("$.apps", "empty", code="E_IR_VALUE")
        .one_line()
        .endswith(f"({CODES['E_IR_VALUE'].hint})")
    )


def test_every_registered_code_has_a_hinted_one_line() -> None:
    for code in CODES:
        assert MvmError("x", code=code).one_line().endswith(")"), code


# The scanner itself, on sources written for it: it must catch what it claims to.
SAMPLE = '''
"""Docstring naming E_IN_A_DOCSTRING is prose."""
from mvm.engine.base.errors import ConfigError
E_NAMED = "E_SAMPLE_CONST"


class SampleError(ConfigError):
    code = "E_SAMPLE_CLASS"


def _bad(path, problem, code, hint=None):
    return ConfigError(f"{path}: {problem}", code=code, hint=hint)


def check(x):
    # a comment naming E_IN_A_COMMENT is not a use
    if x:
        raise SampleError("x", code="E_SAMPLE_DIRECT")
    raise _bad("p", "q", "E_SAMPLE_FORWARDED")


def other():
    raise ConfigError("y", code=E_NAMED)
'''


def test_the_scanner_finds_literals_classes_and_forwarded_codes() -> None:
    assert python_codes(SAMPLE) == {
        "E_SAMPLE_CONST",
        "E_SAMPLE_CLASS",
        "E_SAMPLE_DIRECT",
        "E_SAMPLE_FORWARDED",
    }
    classes = class_tree(["class ConfigError(MvmError): ...", SAMPLE])
    assert classes == {"MvmError", "ConfigError", "SampleError"}
    found = {(cls, code) for cls, code, _ in class_pairs(SAMPLE, "sample.py", classes)}
    assert found == {
        ("SampleError", "E_SAMPLE_CLASS"),
        ("SampleError", "E_SAMPLE_DIRECT"),
        ("ConfigError", "E_SAMPLE_FORWARDED"),
        ("ConfigError", "E_SAMPLE_CONST"),
    }


def test_the_scanner_reads_c_nix_and_js_strings_not_comments() -> None:
    c_src = '/* E_C_COMMENT */ send_error(s, id, "E_C_USED", "msg"); // "E_C_LINE"\n'
    assert text_codes(c_src, C_COMMENT) == {"E_C_USED"}
    nix_src = '  # `throw "E_NIX_COMMENT: fn: m"`\n  x = u.fail "E_NIX_USED" fn "m";\n'
    nix_src += '  y = throw "E_NIX_THROW: nixpkgs: ${n}";\n'
    assert text_codes(nix_src, NIX_COMMENT) == {"E_NIX_USED", "E_NIX_THROW"}
    js_src = "throw new Error(`E_JS_USED: ${r}`);\n  // 'E_JS_COMMENT'\n"
    assert text_codes(js_src, JS_COMMENT) == {"E_JS_USED"}
