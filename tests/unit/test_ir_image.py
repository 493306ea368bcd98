"""Workload IR -> ImageSpec for the offline builder, and the python runtime it bakes in."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from mvm.backends.image.builder import check_spec, spec_json
from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import ImageSpec
from mvm.engine.images.ir_image import (
    DEFAULT_WORKING_DIR,
    RUNNER_GUEST,
    concurrency,
    is_ir_file,
    load_ir_spec,
    python_runtime,
    workload_image_spec,
)
from mvm.engine.ir import validate

HELLO = Path(__file__).resolve().parents[1] / "fixtures" / "hello"


@pytest.fixture(scope="module")
def hello_doc() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "mvm.cli", "emit", str(HELLO / "entry.py")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _spec(doc: dict[str, Any], **kw: Any) -> ImageSpec:
    return workload_image_spec(validate(doc, base_dir=HELLO), base_dir=HELLO, **kw)


def test_hello_maps_to_a_sealed_function_image(hello_doc: dict[str, Any]) -> None:
    spec = _spec(hello_doc)
    rt = python_runtime()
    assert (spec.name, spec.vcpus, spec.memory_mib, spec.sealed) == ("hello", 1, 256, True)
    # /etc/mvm/entrypoint -> the runner (what /init boots and the agent's run execs)
    assert spec.command == (RUNNER_GUEST,) == ("/usr/lib/mvm/wrappers/runner",)
    # The seed's two files, exactly (the worked example: working_dir defaults to /app).
    assert json.loads(spec.mvm_files["wrapper.json"]) == {
        "module": "app", "function": "greet", "format": "json", "working_dir": "/app",
        "mode": "prod",
    }  # fmt: skip
    assert json.loads(spec.mvm_files["runtime.json"]) == {
        "language": "python", "module": "app", "function": "greet", "format": "json",
        "source_path": "/app",
    }  # fmt: skip
    assert sorted(spec.mvm_files) == ["runtime.json", "wrapper.json"]
    assert DEFAULT_WORKING_DIR == "/app"
    assert spec.host_files["/app/app.py"] == str(HELLO / "src" / "app.py")
    assert spec.host_files[rt.zip_guest] == str(rt.zip_host)
    runner = Path(spec.host_files[RUNNER_GUEST]).read_text()
    assert runner.startswith("#!/bin/sh\n")
    assert f'{rt.executable} -s "$0" --variant oneshot' in runner.splitlines()[1]
    assert "PYTHONHOME=/usr" in runner.splitlines()[1]
    assert "def decode_request" in runner
    assert Path(spec.host_files[RUNNER_GUEST]).stat().st_mode & 0o111
    assert rt.executable in spec.packages
    assert any(p.endswith("/ld-linux-x86-64.so.2") for p in spec.packages)
    assert any("/libc.so" in p for p in spec.packages)
    assert not any("_test" in p or "xxsub" in p for p in spec.packages)


def test_runner_answers_the_seed_protocol(hello_doc: dict[str, Any], tmp_path: Path) -> None:
    spec = _spec(hello_doc)
    cfg = json.loads(spec.mvm_files["wrapper.json"]) | {"working_dir": str(HELLO / "src")}
    (tmp_path / "wrapper.json").write_text(json.dumps(cfg))
    text = Path(spec.host_files[RUNNER_GUEST]).read_text().replace("PYTHONHOME=/usr", "")
    runner = tmp_path / "runner"
    runner.write_text(text.replace("/bin/env", "/usr/bin/env"))
    runner.chmod(0o755)
    out = subprocess.run(
        [str(runner), "--config", str(tmp_path / "wrapper.json")],
        input=b'[[], {"name": "Alice"}]', capture_output=True, timeout=60,
        env={"MVM_RUN_MODE": "oneshot", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert (out.returncode, json.loads(out.stdout)) == (0, "hello, Alice"), out.stderr


async def test_spec_passes_the_builders_checks(hello_doc: dict[str, Any]) -> None:
    await check_spec(_spec(hello_doc))


def test_dev_flag_gives_dev_envelopes(hello_doc: dict[str, Any]) -> None:
    spec = _spec(hello_doc, dev=True)
    assert spec.dev and json.loads(spec.mvm_files["wrapper.json"])["mode"] == "dev"
    assert "mode" not in json.loads(spec.mvm_files["runtime.json"])


def test_resources_env_and_ignored_mounts(hello_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(hello_doc)
    app = doc["apps"][0]
    app["resources"] = {"vcpus": 2, "memory_mb": 512, "boot_timeout_secs": 30}
    app["env"] = {"GREETING": "hi"}
    app["mounts"] = [{"volume": "data", "path": "/data", "read_only": False}]
    doc["volumes"] = [{"name": "data", "size_mb": 16}]
    with structlog.testing.capture_logs() as logs:
        spec = _spec(doc)
    assert (spec.vcpus, spec.memory_mib) == (2, 512)
    assert "GREETING=hi" in Path(spec.host_files[RUNNER_GUEST]).read_text().splitlines()[1]
    assert any(e["event"] == "ir_image.mounts_ignored" for e in logs)


def test_concurrency_extension(hello_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(hello_doc)
    doc["extensions"] = {"mvm.concurrency": {"warm": 4}}
    assert concurrency(validate(doc)) == 4
    spec = _spec(doc)
    assert json.loads(spec.mvm_files["runtime.json"])["concurrency"] == {"warm": 4}
    assert "--variant longrunning" in Path(spec.host_files[RUNNER_GUEST]).read_text()
    doc["extensions"] = {"mvm.concurrency": {"warm": "many"}}
    with pytest.raises(ConfigError) as info:
        concurrency(validate(doc))
    assert info.value.code == "E_IR_CONCURRENCY"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda d: d["apps"].append({**d["apps"][0], "name": "other"}), "E_IR_APPS"),
        (lambda d: d["apps"][0]["entrypoints"][0].update(format="msgpack"),
         "E_IR_FORMAT"),
        (lambda d: d["apps"][0].update(
            image={"kind": "oci_base", "reference": "python", "digest": "sha256:" + "a" * 64}),
         "E_IR_IMAGE"),
        (lambda d: d["apps"][0].update(source={"kind": "nix_derivation", "expr": "x"}),
         "E_IR_SOURCE"),
    ],
)  # fmt: skip
def test_unsupported_ir_is_a_coded_error(hello_doc: dict[str, Any], change: Any, code: str) -> None:
    doc = copy.deepcopy(hello_doc)
    change(doc)
    with pytest.raises(ConfigError) as info:
        _spec(doc)
    assert info.value.code == code


async def test_load_ir_spec_and_detection(hello_doc: dict[str, Any], tmp_path: Path) -> None:
    ir = HELLO / ".test-ir-image.json"
    ir.write_text(json.dumps(hello_doc))
    try:
        assert is_ir_file(ir)
        assert (await load_ir_spec(ir)).name == "hello"
    finally:
        ir.unlink()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text('{"name": "x", "command": ["true"]}')
    assert not is_ir_file(spec_file)
    with pytest.raises(ConfigError) as info:
        await load_ir_spec(tmp_path / "missing.json")
    assert info.value.code == "E_IR_MISSING"


def test_stdlib_zip_imports_with_the_system_python() -> None:
    rt = python_runtime()
    probe = (
        f"import sys; sys.path.insert(0, {str(rt.zip_host)!r}); "
        "import email.parser, json.decoder; print(email.parser.__file__)"
    )
    out = subprocess.run(
        [rt.executable, "-S", "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(str(rt.zip_host) + "/email/parser.pyc")
    assert rt.zip_host.stat().st_size < 8 * 1024 * 1024


def test_new_spec_fields_keep_old_hashes_and_are_checked(tmp_path: Path) -> None:
    spec = ImageSpec(name="plain", command=("true",))
    assert b"host_files" not in spec_json(spec) and b"mvm_files" not in spec_json(spec)
    for bad in ("mvm-meta.json", "../x.json", "wrapper.txt"):
        with pytest.raises(ConfigError) as info:
            ImageSpec(name="x", mvm_files={bad: "{}"})
        assert info.value.code == "E_SPEC_PATH"


async def test_missing_host_file_is_rejected() -> None:
    spec = ImageSpec(name="x", host_files={"/srv/a": "/nonexistent/file"})
    with pytest.raises(ConfigError) as info:
        await check_spec(spec)
    assert info.value.code == "E_SPEC_PATH"
