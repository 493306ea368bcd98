"""Seed conformance: workload-ir-to-image.txt — the IR, both SDKs, the IR validator's errors.

Every example is the seed's text, verbatim; each test runs it through the installed
mvm (`mvmctl emit`, `MVM_EMITTING=1 python entry.py`, `mvmctl validate`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

DOC = "workload-ir-to-image.txt"

SEED_IR = """{ "schema_version": "0.1", "id": "hello", "apps": [ { "name": "hello", "source": { "kind": "local_path", "path": "./src", "include": ["**"], "exclude": [] }, "image": { "kind": "nix_packages", "packages": ["python3"] }, "entrypoints": [ { "kind": "function", "language": "python", "module": "app", "function": "greet", "format": "json", "primary": true } ], "resources": { "vcpus": 1, "memory_mb": 256, "boot_timeout_secs": 30 }, "dependencies": { "kind": "none" } } ], "volumes": [], "extensions": {}}"""  # noqa: E501

SHORT_PY = '''import mvm

@mvm.app( name="hello", image=mvm.image.nix_packages(["python3"]), resources=mvm.resources(vcpus=1, memory_mb=256), dependencies=mvm.deps.none(),)@mvm.function(language="python", module="app", function="greet", format="json")def greet(name: str) -> str: return f"hello, {name}"'''  # noqa: E501

ENTRY_PY = """import mvm
@mvm.app( name="hello", source=mvm.source.local("./src"), image=mvm.image.nix_packages(["python3"]), resources=mvm.resources(vcpus=1, memory_mb=256), dependencies=mvm.deps.none(),)@mvm.function( language="python", module="app", function="greet", format="json", primary=True,)def _spec(): pass"""  # noqa: E501

SHORT_TS = """import * as mvm from "mvm-sdk";
export const greet = mvm.app({ name: "hello", image: mvm.nixPackages(["nodejs_22"]), resources: mvm.resources({ vcpus: 1, memory_mb: 256 }), dependencies: mvm.deps.none(), entrypoint: mvm.entrypointFunction({ language: "typescript", module: "app", function: "greet", format: "json", }),})((name: string): string => `hello, ${name}`);"""  # noqa: E501

ENTRY_TS = """import * as mvm from "mvm-sdk";
export const spec = mvm.app({ name: "hello", source: mvm.source.local("./src"), image: mvm.nixPackages(["nodejs_22"]), resources: mvm.resources({ vcpus: 1, memory_mb: 256 }), dependencies: mvm.deps.none(), entrypoint: mvm.entrypointFunction({ language: "typescript", module: "app", function: "greet", format: "json", primary: true, }),})(() => undefined);"""  # noqa: E501

APP_PY = '''def greet(name: str) -> str: return f"hello, {name}"'''
APP_TS = """export function greet(name: string): string { return `hello, ${name}`;}"""


def _decorators_on_own_lines(text: str) -> str:
    """The seed's page flattened line breaks; Python needs them back between
    decorators and before ``def`` (no other character is changed)."""
    return (
        text.replace(")@mvm.", ")\n@mvm.")
        .replace(")def ", ")\ndef ")
        .replace(": return", ":\n    return")
    )


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _canonical(text: str) -> bytes:
    return bytes(rfc8785.dumps(json.loads(text)))


def _emit(entry: Path) -> bytes:
    out = entry.parent / "workload-ir.json"
    proc = subprocess.run(
        [_bin("mvmctl"), "emit", str(entry), "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def _project(tmp_path: Path, name: str, entry: str, app: str, app_name: str) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / app_name).write_text(app)
    (tmp_path / name).write_text(entry)
    return tmp_path / name


@pytest.mark.seed(DOC, "the emitted IR (mvmctl validate accepts it; ir_hash stable)")
def test_seed_ir_validates_and_hashes_stably(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "workload-ir.json"
    path.write_text(SEED_IR)
    proc = subprocess.run(
        [_bin("mvmctl"), "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256(_canonical(SEED_IR)).hexdigest()
    assert f"ir_hash {digest}" in proc.stdout
    # Equivalent documents (other key order, whitespace) hash the same.
    reordered = json.dumps(dict(reversed(list(json.loads(SEED_IR).items()))), indent=4)
    path.write_text(reordered)
    again = subprocess.run(
        [_bin("mvmctl"), "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert f"ir_hash {digest}" in again.stdout
    seed_outcome.works(f"validates; ir_hash {digest}")


@pytest.mark.seed(DOC, "entry.py (worked example) -> the emitted IR")
def test_worked_example_entry_py_emits_the_seed_ir(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    entry = _project(tmp_path, "entry.py", _decorators_on_own_lines(ENTRY_PY), APP_PY, "app.py")
    assert _emit(entry) == _canonical(SEED_IR)
    # The emit contract without mvmctl: MVM_EMITTING=1 MVM_IR_OUT=... python entry.py
    out = tmp_path / "direct.json"
    env = {**os.environ, "MVM_EMITTING": "1", "MVM_IR_OUT": str(out)}
    subprocess.run([sys.executable, "-P", str(entry)], env=env, check=True, cwd=tmp_path)
    assert out.read_bytes() == _canonical(SEED_IR)
    seed_outcome.works(
        "mvmctl emit and MVM_EMITTING=1 python entry.py: the seed's IR, byte for byte"
    )


@pytest.mark.seed(DOC, "Layer 2 Python SDK example (@mvm.app ... def greet)")
def test_short_python_example_emits(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    entry = tmp_path / "entry.py"
    entry.write_text(_decorators_on_own_lines(SHORT_PY))
    (tmp_path / "app.py").write_text(APP_PY.replace(": return", ":\n    return"))
    doc = json.loads(_emit(entry))
    app = doc["apps"][0]
    assert app["source"] == {"kind": "local_path", "path": ".", "include": ["**"], "exclude": []}
    assert app["entrypoints"] == [
        {"kind": "function", "language": "python", "module": "app", "function": "greet",
         "format": "json", "primary": False}
    ]  # fmt: skip
    seed_outcome.works("emits; source defaults to local_path '.' (the entry file's directory)")


def _node_or_refused(seed_outcome) -> bool:  # type: ignore[no-untyped-def]
    if shutil.which("node") is None:
        seed_outcome.refused("E_EMIT_NODE_MISSING", "this host has no node")
        return False
    return True


@pytest.mark.seed(DOC, "entry.ts (worked example) -> the emitted IR")
def test_worked_example_entry_ts_emits_the_seed_ir(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    if not _node_or_refused(seed_outcome):
        return
    entry = _project(tmp_path, "entry.ts", ENTRY_TS, APP_TS, "app.ts")
    expected = json.loads(SEED_IR)
    expected["apps"][0]["image"]["packages"] = ["nodejs_22"]
    expected["apps"][0]["entrypoints"][0]["language"] = "typescript"
    assert _emit(entry) == bytes(rfc8785.dumps(expected))
    seed_outcome.works("mvmctl emit entry.ts: the seed's IR with nodejs_22 / typescript")


@pytest.mark.seed(DOC, "Layer 2 TypeScript SDK example (mvm.app({...})(fn))")
def test_short_typescript_example_emits(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    if not _node_or_refused(seed_outcome):
        return
    entry = tmp_path / "entry.ts"
    entry.write_text(SHORT_TS)
    doc = json.loads(_emit(entry))
    assert doc["apps"][0]["image"] == {"kind": "nix_packages", "packages": ["nodejs_22"]}
    assert doc["apps"][0]["entrypoints"][0]["primary"] is False
    seed_outcome.works("emits canonical IR through the bundled mvm-sdk")


@pytest.mark.seed(DOC, "Error reference: E_UNPINNED_DEPS")
def test_unpinned_deps_is_refused(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(SEED_IR)
    doc["apps"][0]["dependencies"] = {"kind": "python", "lockfile": "requirements.txt",
                                      "tool": "pip-tools"}  # fmt: skip
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "requirements.txt").write_text("requests==2.32.3\n")
    path = tmp_path / "workload-ir.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.run(
        [_bin("mvmctl"), "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("error[E_UNPINNED_DEPS]: $.apps[0].dependencies.lockfile:")
    assert len(proc.stderr.strip().splitlines()) == 1
    seed_outcome.refused("E_UNPINNED_DEPS", "requirements.txt without --hash=sha256: entries")


@pytest.mark.seed(DOC, "Validation: wrong schema_version, unknown fields, unsupported language")
def test_validation_rejects_every_listed_problem(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "workload-ir.json"
    doc = json.loads(SEED_IR)
    doc["apps"][0]["gpu"] = True
    doc["apps"][0]["entrypoints"][0]["shell"] = "sh"
    path.write_text(json.dumps(doc))
    proc = subprocess.run(
        [_bin("mvmctl"), "validate", str(path)], capture_output=True, text=True, check=False
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert lines == [
        "error[E_IR_UNKNOWN_FIELD]: $.apps[0].entrypoints[0].shell: unknown field"
        " (remove the field, or upgrade mvm)",
        "error[E_IR_UNKNOWN_FIELD]: $.apps[0].gpu: unknown field"
        " (remove the field, or upgrade mvm)",
    ], proc.stderr
    doc = json.loads(SEED_IR)
    doc["schema_version"] = "0.2"
    path.write_text(json.dumps(doc))
    proc = subprocess.run(
        [_bin("mvmctl"), "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.stderr.startswith("error[E_IR_SCHEMA_VERSION]: $.schema_version:")
    doc = json.loads(SEED_IR)
    doc["apps"][0]["entrypoints"][0]["language"] = "cobol"
    path.write_text(json.dumps(doc))
    proc = subprocess.run(
        [_bin("mvmctl"), "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.stderr.startswith(
        "error[E_UNSUPPORTED_LANGUAGE]: $.apps[0].entrypoints[0].language:"
    )
    seed_outcome.refused("E_IR_UNKNOWN_FIELD", "every problem, one coded line with its JSON path")
