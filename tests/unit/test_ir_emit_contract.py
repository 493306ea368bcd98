"""The emit contract: MVM_EMITTING=1 python entry.py, python -m mvm, Node entry files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mvm.emit import emit_ir
from mvm.engine.base.errors import ConfigError
from mvm.engine.ir import legacy

ENTRY = """
import mvm
CALLED = []

@mvm.app(name="hello", image=mvm.image.nix_packages(["python3"]), dependencies=mvm.deps.none())
@mvm.function(language="python", module="app", function="greet")
def greet(name):
    CALLED.append(name)
    raise SystemExit("the workload function ran on the host")
"""


def _entry(tmp_path: Path, text: str = ENTRY, name: str = "entry.py") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "app.py").write_text("def greet(name):\n    return name\n")
    return tmp_path / name


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "MVM_IR_OUT"}
    full.update(MVM_EMITTING="1", **env)
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


def test_python_entry_under_mvm_emitting_writes_ir_at_exit(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    expected = emit_ir(entry)
    proc = _run([sys.executable, "-P", str(entry)], tmp_path)
    assert (proc.returncode, proc.stdout) == (0, expected + "\n"), proc.stderr
    out = tmp_path / "ir.json"
    proc = _run([sys.executable, "-P", str(entry)], tmp_path, MVM_IR_OUT=str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    assert out.read_text() == expected


def test_without_mvm_emitting_nothing_is_written(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("MVM_EMITTING", "MVM_IR_OUT")}
    proc = subprocess.run([sys.executable, "-P", str(entry)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "")


def test_an_invalid_declaration_at_exit_is_one_coded_line_per_problem(tmp_path: Path) -> None:
    entry = _entry(tmp_path, ENTRY.replace('language="python"', 'language="cobol"'))
    proc = _run([sys.executable, "-P", str(entry)], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error[E_UNSUPPORTED_LANGUAGE]: $.apps[0].entrypoints[0]")


def test_an_entry_that_raises_emits_nothing(tmp_path: Path) -> None:
    entry = _entry(tmp_path, ENTRY + "\nraise RuntimeError('boom')\n")
    proc = _run([sys.executable, "-P", str(entry)], tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and "boom" in proc.stderr


def test_python_dash_m_mvm_emits_the_same(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    proc = _run([sys.executable, "-P", "-m", "mvm", str(entry)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == emit_ir(entry) + "\n"
    usage = _run([sys.executable, "-P", "-m", "mvm"], tmp_path)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def test_ts_entry_without_node_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(tmp_path, "export {};\n", name="entry.ts")
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(ConfigError) as info:
        emit_ir(entry)
    assert info.value.code == "E_EMIT_NODE_MISSING"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_ts_entry_without_typescript_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mvm.emit

    entry = _entry(tmp_path, "export {};\n", name="entry.ts")
    monkeypatch.setattr(mvm.emit, "typescript_path", lambda: None)
    with pytest.raises(ConfigError) as info:
        emit_ir(entry)
    assert info.value.code == "E_EMIT_TYPESCRIPT_MISSING"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_entry_errors_surface_with_their_code(tmp_path: Path) -> None:
    entry = _entry(tmp_path, 'import * as mvm from "mvm-sdk";\n', name="entry.mjs")
    with pytest.raises(ConfigError) as info:
        emit_ir(entry)
    assert info.value.code == "E_EMIT_NO_APP"
    entry.write_text('import "mvm-sdk";\nthrow new Error("no database here");\n')
    with pytest.raises(ConfigError) as info:
        emit_ir(entry)
    assert info.value.code == "E_EMIT_FAILED" and "no database here" in info.value.message


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_and_python_sdks_agree_byte_for_byte(tmp_path: Path) -> None:
    js = """
    import * as mvm from "mvm-sdk";
    mvm.app({
      name: "svc", image: mvm.nixPackages(["python3"]), dependencies: mvm.deps.none(),
      env: { MODE: "prod" }, threat_tier: "trusted",
      entrypoint: mvm.entrypointFunction({ language: "python", module: "app", function: "greet",
        args_schema: { type: "object", properties: { "n\u00e9": { type: "integer" } } },
        extra_imports: ["json"], working_dir: "/srv" }),
    })(() => undefined);
    """
    py = """
    import mvm
    @mvm.app(name="svc", image=mvm.image.nix_packages(["python3"]), dependencies=mvm.deps.none(),
             env={"MODE": "prod"}, threat_tier="trusted")
    @mvm.function(language="python", module="app", function="greet",
                  args_schema={"type": "object", "properties": {"n\u00e9": {"type": "integer"}}},
                  extra_imports=["json"], working_dir="/srv")
    def spec(): ...
    """
    a = emit_ir(_entry(tmp_path, js, name="entry.mjs"))
    b = emit_ir(_entry(tmp_path, py))
    assert a == b and '"working_dir":"/srv"' in a and '"threat_tier":"trusted"' in a


def test_legacy_translation_maps_and_warns() -> None:
    app_doc = {
        "resources": {"cpu_cores": 2, "memory_mb": 64, "rootfs_size_mb": 9},
        "hooks": None,
        "network": None,
        "env": {"A": {"kind": "literal", "value": "1"}},
        "entrypoints": [{"kind": "function", "env": {"X": "y"}, "args_schema": None}],
    }
    doc = {"apps": [app_doc]}
    assert legacy.is_original(doc) and not legacy.is_original({"apps": [{"name": "x"}]})
    out, warnings = legacy.translate(doc)
    app = out["apps"][0]
    assert app["resources"] == {"vcpus": 2, "memory_mb": 64}
    # One entrypoint: its env is the wrapper's, i.e. the app's (merged, no warning).
    assert "hooks" not in app and "network" not in app and app["env"] == {"A": "1", "X": "y"}
    assert app["entrypoints"][0] == {"kind": "function", "primary": True}  # the first function
    assert [w.split(":")[0] for w in warnings] == ["$.apps[0].resources.rootfs_size_mb"]
    app_doc["entrypoints"].append({"kind": "function", "env": {"Z": "1"}})
    _, warnings = legacy.translate(doc)  # two: one wrapper serves both, so no effect
    assert [w.split(":")[0] for w in warnings] == [
        "$.apps[0].resources.rootfs_size_mb",
        "$.apps[0].entrypoints[0].env",
        "$.apps[0].entrypoints[1].env",
    ]
    assert doc["apps"][0]["hooks"] is None  # the input is not changed
