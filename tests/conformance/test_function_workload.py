"""Seed workload-ir-to-image: mkFunctionWorkload / mkFunctionService, verbatim.

The worked example (src/app.py, the emitted IR, the flake) is built offline (this
host has no nixpkgs: the flake is evaluated with the repo's stub package set and its
rootfs assembled from the IR with the host's python), and the rootfs is inspected
with debugfs exactly as the seed's "Inspecting build output" does. The seed's error
reference is reproduced through nix-instantiate with the stub packages.
"""

# ruff: noqa: E501  (the seed examples are verbatim strings)
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mvm.backends import nix_meta
from mvm.engine.base.errors import ConfigError
from mvm.engine.builders.offline import flake_to_spec
from mvm.engine.builders.offline_image import build_offline_image

DOC = "workload-ir-to-image.txt"

SEED_APP_PY = """def greet(name: str) -> str: return f"hello, {name}"
"""
SEED_IR = """{ "schema_version": "0.1", "id": "hello", "apps": [ { "name": "hello", "source": { "kind": "local_path", "path": "./src", "include": ["**"], "exclude": [] }, "image": { "kind": "nix_packages", "packages": ["python3"] }, "entrypoints": [ { "kind": "function", "language": "python", "module": "app", "function": "greet", "format": "json", "primary": true } ], "resources": { "vcpus": 1, "memory_mb": 256, "boot_timeout_secs": 30 }, "dependencies": { "kind": "none" } } ], "volumes": [], "extensions": {}}"""
SEED_FLAKE = """{ inputs.mvm.url = "github:tinylabscom/mvm?dir=nix"; inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  outputs = { mvm, nixpkgs, ... }: let system = "aarch64-linux"; in { packages.${system}.default = mvm.lib.${system}.mkFunctionWorkload { irFile = ./workload-ir.json; appPkg = ./src; }; };}"""
SEED_WRAPPER_JSON = """{ "module": "app", "function": "greet", "format": "json", "working_dir": "/app", "mode": "prod"}"""
SEED_RUNTIME_JSON = """{ "language": "python", "module": "app", "function": "greet", "format": "json", "source_path": "/app"}"""
SEED_ENTRYPOINT = "/usr/lib/mvm/wrappers/runner"


def _project(root: Path, flake: str, ir: str = SEED_IR) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(SEED_APP_PY)
    (root / "workload-ir.json").write_text(ir)
    (root / "flake.nix").write_text(flake)
    return root


def _debugfs(rootfs: Path, request: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", request, str(rootfs)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


@pytest.mark.seed(DOC, "flake.nix mkFunctionWorkload (system = x86_64-linux), rootfs via debugfs")
async def test_seed_flake_builds_offline_with_the_seed_rootfs(
    tmp_path: Path, seed_outcome: Any
) -> None:
    flake = SEED_FLAKE.replace('system = "aarch64-linux"', 'system = "x86_64-linux"')
    root = _project(tmp_path / "proj", flake)
    spec = await flake_to_spec(root, "default")
    image = await build_offline_image(spec)
    rootfs = image.directory / "rootfs.ext4"
    listing = _debugfs(rootfs, "ls /etc/mvm")
    for name in ("entrypoint", "wrapper.json", "runtime.json"):
        assert name in listing, listing
    assert json.loads(_debugfs(rootfs, "cat /etc/mvm/runtime.json")) == json.loads(
        SEED_RUNTIME_JSON
    )
    assert json.loads(_debugfs(rootfs, "cat /etc/mvm/wrapper.json")) == json.loads(
        SEED_WRAPPER_JSON
    )
    assert SEED_ENTRYPOINT in _debugfs(rootfs, "cat /etc/mvm/entrypoint")
    runner = _debugfs(rootfs, f"cat {SEED_ENTRYPOINT}")
    assert "--variant oneshot" in runner and "def decode_request" in runner
    assert _debugfs(rootfs, "cat /app/app.py") == SEED_APP_PY
    seed_outcome.works("built offline; /etc/mvm/{entrypoint,wrapper.json,runtime.json} = seed")


@pytest.mark.seed(DOC, "flake.nix mkFunctionWorkload (verbatim, aarch64-linux)")
async def test_seed_flake_verbatim_aarch64_is_refused(tmp_path: Path, seed_outcome: Any) -> None:
    root = _project(tmp_path / "proj", SEED_FLAKE)
    with pytest.raises(ConfigError) as info:
        await flake_to_spec(root, "default")
    assert info.value.code == "E_FLAKE_SYSTEM"
    assert "x86_64-linux" in info.value.message
    seed_outcome.refused(
        "E_FLAKE_SYSTEM", "an x86_64 host builds only packages.x86_64-linux images"
    )


# ------------------------------------------------------------------------- nix/lib


def _eval(expr: str) -> subprocess.CompletedProcess[str]:
    lib = nix_meta.nix_dir()
    full = (
        f'let lib = import {lib}/lib {{ pkgs = import {lib}/stub-pkgs {{ system = "x86_64-linux"; }}; }};'
        f" in {expr}"
    )
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", full],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _workload(tmp_path: Path, ir: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "p"
    root.mkdir(exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    (root / "workload-ir.json").write_text(json.dumps(ir))
    return _eval(
        f"(lib.mkFunctionWorkload {{ irFile = {root}/workload-ir.json; appPkg = {root}/src; }}).drvPath"
    )


@pytest.mark.seed(DOC, "mkFunctionService extraFiles for the worked example")
def test_mkfunctionworkload_bakes_the_seed_files(tmp_path: Path, seed_outcome: Any) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text(SEED_APP_PY)
    (root / "workload-ir.json").write_text(SEED_IR)
    out = _eval(
        f"let w = lib.mkFunctionWorkload {{ irFile = {root}/workload-ir.json; appPkg = {root}/src; }};"
        " in { files = w.functionService.extraFiles; trees = builtins.attrNames w.passthru.spec.extraTrees;"
        " pkgs = map (p: p.name) w.passthru.spec.packages; }"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    files = doc["files"]
    assert json.loads(files["/etc/mvm/wrapper.json"]) == json.loads(SEED_WRAPPER_JSON)
    assert json.loads(files["/etc/mvm/runtime.json"]) == json.loads(SEED_RUNTIME_JSON)
    assert SEED_ENTRYPOINT in files["/etc/mvm/entrypoint"]
    assert "--variant oneshot" in files[SEED_ENTRYPOINT].splitlines()[1]
    assert doc["trees"] == ["/app"]
    assert "python3" in doc["pkgs"]
    # A concurrency block: verbatim into runtime.json, and the longrunning wrapper.
    ir = json.loads(SEED_IR)
    ir["apps"][0]["entrypoints"][0]["concurrency"] = {"warm": 4, "max": 8}
    (root / "workload-ir.json").write_text(json.dumps(ir))
    out = _eval(
        f"(lib.mkFunctionWorkload {{ irFile = {root}/workload-ir.json; appPkg = {root}/src; }})"
        ".functionService.extraFiles"
    )
    files = json.loads(out.stdout)
    assert json.loads(files["/etc/mvm/runtime.json"])["concurrency"] == {"warm": 4, "max": 8}
    assert "--variant longrunning" in files[SEED_ENTRYPOINT]
    seed_outcome.works("wrapper.json and runtime.json equal the seed's; oneshot/longrunning picked")


def _seed_ir() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SEED_IR)
    return doc


def _two_apps(ir: dict[str, Any]) -> None:
    ir["apps"].append({**ir["apps"][0], "name": "other"})


def _oci(ir: dict[str, Any]) -> None:
    ir["apps"][0]["image"] = {
        "kind": "oci_base",
        "reference": "python",
        "digest": "sha256:" + "a" * 64,
    }


def _no_primary(ir: dict[str, Any]) -> None:
    ir["apps"][0]["entrypoints"][0]["primary"] = False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_two_apps, "mkFunctionWorkload: IR must have exactly one app"),
        (_oci, 'mkFunctionWorkload: app.image.kind must be "nix_packages"'),
        (_no_primary, "mkFunctionWorkload: expected exactly one primary function entrypoint"),
    ],
)
@pytest.mark.seed(DOC, "Error reference: mkFunctionWorkload")
def test_mkfunctionworkload_errors_verbatim(
    tmp_path: Path, change: Any, message: str, seed_outcome: Any
) -> None:
    ir = _seed_ir()
    change(ir)
    out = _workload(tmp_path, ir)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "error: E_IR_" in out.stderr  # coded, the seed's text verbatim after the code
    seed_outcome.refused(out.stderr.split("error: ")[-1].split(":")[0], message)


@pytest.mark.seed(DOC, 'Error reference: mkFunctionService language "<x>"')
def test_mkfunctionservice_unknown_language_verbatim(seed_outcome: Any) -> None:
    out = _eval(
        '(lib.mkFunctionService { language = "cobol"; module = "app"; function = "greet"; }).extraFiles'
    )
    assert out.returncode != 0
    message = 'mkFunctionService: language "cobol" has no entry in the language registry'
    assert message in out.stderr, out.stderr
    assert "E_IR_LANGUAGE" in out.stderr
    seed_outcome.refused("E_IR_LANGUAGE", message)
