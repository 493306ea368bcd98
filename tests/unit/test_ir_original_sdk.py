"""IR emitted by the original product's published Python SDK (PyPI ``mvm`` 0.15.1) is
accepted: mapped field by field onto our model, one warning per field without effect.

The SDK is installed from PyPI into a throwaway venv; the test skips only when PyPI
cannot be reached (pip's error says so), any other install failure fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mvm.emit import validate_file
from mvm.engine.ir import FunctionEntrypoint, LocalPath, NoDeps, Resources

ORIGINAL = "mvm==0.15.1"
_UNREACHABLE = ("connection", "network is unreachable", "temporary failure", "no matching dist")

ENTRY = """
import mvm

mvm.workload(id="hello")


@mvm.app(
    name="hello",
    source=mvm.local_path("./src"),
    image=mvm.nix_packages(["python3"]),
    entrypoint=mvm.entrypoint_function(
        language="python", module="app", function="greet", format="json"
    ),
    resources=mvm.resources(cpu_cores=2, memory_mb=512, rootfs_size_mb=1024),
    dependencies=mvm.no_deps(),
    before_start="echo starting",
)
def _spec():
    pass
"""


@pytest.fixture(scope="module")
def original_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("original-sdk") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", ORIGINAL],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if pip.returncode != 0:
        if any(word in pip.stderr.lower() for word in _UNREACHABLE):
            pytest.skip(f"PyPI unreachable: {pip.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install {ORIGINAL} failed: {pip.stderr}")
    return venv / "bin" / "python"


def test_original_sdk_ir_is_accepted_field_by_field(original_python: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    (tmp_path / "entry.py").write_text(textwrap.dedent(ENTRY))
    out = tmp_path / "workload-ir.json"
    env = {**os.environ, "MVM_IR_OUT": str(out)}
    proc = subprocess.run(
        [str(original_python), "-m", "mvm", "entry.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raw = out.read_text()
    for field in ('"cpu_cores"', '"rootfs_size_mb"', '"hooks"', '"network":null', '"env":{}'):
        assert field in raw, field  # what the original emits, so the mapping is exercised

    result = validate_file(out)
    app = result.workload.apps[0]
    assert app.source == LocalPath("./src")
    assert app.resources == Resources(vcpus=2, memory_mb=512, boot_timeout_secs=30)
    assert app.dependencies == NoDeps() and app.network is None
    (ep,) = app.entrypoints
    assert isinstance(ep, FunctionEntrypoint)
    assert (ep.language, ep.module, ep.function, ep.format) == ("python", "app", "greet", "json")
    assert (ep.working_dir, ep.extra_imports, ep.args_schema) == ("/app", (), None)
    assert sorted(w.split(":")[0] for w in result.warnings) == [
        "$.apps[0].hooks",
        "$.apps[0].resources.rootfs_size_mb",
    ]

    cli = subprocess.run(
        [str(Path(sys.executable).with_name("mvmctl")), "validate", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"ok: {out} (ir_hash {result.ir_hash}")
    assert len([ln for ln in cli.stderr.splitlines() if ln.startswith("warning: ")]) == 2
