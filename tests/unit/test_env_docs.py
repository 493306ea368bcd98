"""Every MVM_* variable mvm reads is documented once (the Settings fields' metadata, plus
the few the SDK's emit path reads) and that one table is what `mvmctl --help`'s
Environment section and the README's show (issue 16: seven variables read in code were
documented nowhere)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import mvm
from mvm.engine.base import settings as settings_module
from mvm.engine.base.env_docs import BEGIN, END, environment, markdown
from mvm.engine.base.settings import BINARY_VARS, OWNED_VARS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"
_QUOTED = re.compile(r'"(MVM_[A-Z_]+)"')
# A read of the process environment, os.environ["X"] / os.environ.get("X") / env.get("X").
_READ = re.compile(r'(?:environ|env)(?:\.get\(|\[)\s*"(MVM_[A-Z_]+)"')


def _documented() -> set[str]:
    return {v.name for v in environment()}


def test_every_variable_from_env_reads_is_documented() -> None:
    read = set(_QUOTED.findall(inspect.getsource(Settings.from_env))) | set(BINARY_VARS.values())
    assert "MVM_HOME" in read and "MVM_FIRECRACKER" in read  # the scan sees what it should
    assert read - _documented() == set()
    assert set(OWNED_VARS) - _documented() == set()
    assert all(v.doc and v.default for v in environment())
    assert len(_documented()) == len(environment())  # each variable once


def test_every_environment_read_in_the_package_is_documented() -> None:
    root = Path(mvm.__file__).parent
    reads: dict[str, str] = {}
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "backends" / "guest"):  # runs in the guest, set by /init
            continue
        for name in _READ.findall(path.read_text()):
            reads.setdefault(name, str(path.relative_to(root)))
    assert {"MVM_EMITTING", "MVM_IR_OUT", "MVM_TYPESCRIPT"} <= set(reads)
    undocumented = {n: where for n, where in reads.items() if n not in _documented()}
    assert undocumented == {}


def test_the_readme_holds_the_generated_table() -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == markdown(), "run ./scripts/env-docs"
    for name in _documented():
        assert f"`{name}`" in text[start:end]


def test_help_ends_with_the_environment_section() -> None:
    out = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    section = out[out.index("Environment:") :]
    for var in environment():
        assert re.search(rf"^  {var.name}\s", section, re.M), var.name
    assert "[default: ~/.mvm]" in section


def test_settings_module_documents_each_field() -> None:
    import attrs

    for field in attrs.fields(settings_module.Settings):
        assert field.metadata.get("env"), field.name
