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

from mvm.backends.image_builder import check_spec, spec_json
from mvm.engine.errors import ConfigError
from mvm.engine.imagespec import ImageSpec
from mvm.engine.ir import validate
from mvm.engine.ir_image import (
    APP_DIR,
    WRAPPER_GUEST,
    concurrency,
    is_ir_file,
    load_ir_spec,
    python_runtime,
    workload_image_spec,
)

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
    assert spec.command is not None and spec.command[0] == "/bin/env"
    assert spec.command[-3:] == ("-s", WRAPPER_GUEST, "--boot")
    runtime = json.loads(spec.mvm_files["runtime.json"])
    assert runtime | {"workload": "x"} == {
        "language": "python", "module": "app", "function": "greet", "format": "json",
        "app_dir": APP_DIR, "mode": "prod", "concurrency": {"warm": 0}, "workload": "x",
    }  # fmt: skip
    wrapper = json.loads(spec.mvm_files["wrapper.json"])
    assert wrapper["argv"] == [rt.executable, "-s", WRAPPER_GUEST]
    assert wrapper["cwd"] == APP_DIR and wrapper["env"]["PYTHONHOME"] == "/usr"
    assert spec.host_files[f"{APP_DIR}/app.py"] == str(HELLO / "src" / "app.py")
    assert spec.host_files[rt.zip_guest] == str(rt.zip_host)
    assert "def decode_request" in spec.extra_files[WRAPPER_GUEST]
    assert rt.executable in spec.packages
    assert any(p.endswith("/ld-linux-x86-64.so.2") for p in spec.packages)
    assert any("/libc.so" in p for p in spec.packages)
    assert not any("_test" in p or "xxsub" in p for p in spec.packages)


async def test_spec_passes_the_builders_checks(hello_doc: dict[str, Any]) -> None:
    await check_spec(_spec(hello_doc))


def test_dev_flag_gives_dev_envelopes(hello_doc: dict[str, Any]) -> None:
    spec = _spec(hello_doc, dev=True)
    assert spec.dev and json.loads(spec.mvm_files["runtime.json"])["mode"] == "dev"


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
    assert json.loads(spec.mvm_files["wrapper.json"])["env"]["GREETING"] == "hi"
    assert "GREETING=hi" in (spec.command or ())
    assert any(e["event"] == "ir_image.mounts_ignored" for e in logs)


def test_concurrency_extension(hello_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(hello_doc)
    doc["extensions"] = {"mvm.concurrency": {"warm": 4}}
    assert concurrency(validate(doc)) == 4
    assert json.loads(_spec(doc).mvm_files["runtime.json"])["concurrency"] == {"warm": 4}
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
