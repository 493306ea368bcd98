"""The Python SDK and `mvmctl emit` / `mvmctl validate` logic, on real entry files."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm import sdk
from mvm.emit import emit_ir, validate_file, write_ir
from mvm.engine.base.errors import ConfigError, IrError
from mvm.engine.ir import (
    CommandEntrypoint,
    FunctionEntrypoint,
    Mount,
    OciImage,
    Volume,
    validate_text,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
HELLO_DIR = FIXTURES / "hello"
GOLDEN = FIXTURES / "ir" / "hello.json"
HELLO_HASH = "c63313ca4993c7ce013449ab77c635f7f271466dff234631a32bba4bb1a1af01"
SEED_HASH = "a092d69684c32f32d54f203d63ae8458f94f109be93c7c0a504c9987f58e16e3"
SEED_GOLDEN = FIXTURES / "ir" / "seed-hello.json"
DIGEST = "sha256:" + "12" * 32


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    sdk.reset_declarations()
    yield
    sdk.reset_declarations()


# The richer golden (tests/fixtures/ir/hello.json): uv.lock deps and argument schemas.
LOCKED_ENTRY = """
import mvm

@mvm.app(
    name="hello",
    source=mvm.source.local("./src"),
    image=mvm.image.nix_packages(["python3"]),
    resources=mvm.resources(vcpus=1, memory_mb=256, boot_timeout_secs=30),
    dependencies=mvm.deps.python(lockfile="uv.lock", tool="uv"),
)
@mvm.function(
    language="python",
    module="app",
    function="greet",
    format="json",
    primary=True,
    args_schema={
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    },
    return_schema={"type": "string"},
)
def hello() -> None: ...
"""


def project(tmp_path: Path, entry: str, *, lock: bool = True) -> Path:
    (tmp_path / "entry.py").write_text(textwrap.dedent(entry))
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "app.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    if lock:
        (tmp_path / "src" / "uv.lock").write_text((HELLO_DIR / "src" / "uv.lock").read_text())
    return tmp_path / "entry.py"


def test_hello_worked_example_emits_the_seed_ir() -> None:
    text = emit_ir(HELLO_DIR / "entry.py")
    assert text.encode() == SEED_GOLDEN.read_bytes()
    assert hashlib.sha256(text.encode()).hexdigest() == SEED_HASH
    # ...and the declared function really does what the example says.
    app = runpy.run_path(str(HELLO_DIR / "src" / "app.py"))
    assert app["greet"]("world") == "hello, world"


def test_locked_entry_emits_the_golden_ir(tmp_path: Path) -> None:
    text = emit_ir(project(tmp_path, LOCKED_ENTRY))
    assert text.encode() == GOLDEN.read_bytes()
    assert hashlib.sha256(text.encode()).hexdigest() == HELLO_HASH


def test_emit_is_deterministic_and_independent_of_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Path(os.path.relpath(HELLO_DIR / "entry.py", tmp_path))
    assert not relative.is_absolute()
    assert emit_ir(relative) == emit_ir(HELLO_DIR / "entry.py")


def test_child_runs_with_mvm_emitting_set(tmp_path: Path) -> None:
    entry = project(
        tmp_path,
        """
        import os, mvm
        assert mvm.emitting() and os.environ["MVM_EMITTING"] == "1"
        @mvm.app(name="hello", source=mvm.source.local(), image=mvm.image.nix_packages([]),
                 dependencies=mvm.deps.none())
        @mvm.command(["/bin/hello", "--loud"])
        def main(): ...
        """,
    )
    doc = json.loads(emit_ir(entry))
    assert doc["apps"][0]["entrypoints"] == [
        {"kind": "command", "command": ["/bin/hello", "--loud"], "working_dir": "/app", "env": {}}
    ]


def test_decorators_record_everything_in_order() -> None:
    sdk.volume("data", size_mb=64)
    sdk.workload(id="demo.v1", extensions={"com.example.trace": {"on": True}})

    @sdk.app(
        name="svc",
        source=sdk.source.oci(f"ghcr.io/acme/svc@{DIGEST}"),
        image=sdk.image.oci_base("debian:12", digest=DIGEST),
        dependencies=sdk.deps.python("requirements.txt", tool="pip-tools"),
        resources=sdk.resources(vcpus=2, memory_mb=512),
        env={"MODE": "prod"},
        mounts=[sdk.mount("data", "/data", read_only=True)],
        network=sdk.network("nat", ports=[8080]),
        threat_tier="untrusted",
        addons=["metrics"],
    )
    @sdk.function(language="python", module="svc.handlers", function="first", primary=True)
    @sdk.function(language="python", module="svc.handlers", function="second", format="msgpack")
    @sdk.command(["svc", "serve"])
    def declaration() -> None: ...

    workload = sdk.declared_workload()
    assert workload.id == "demo.v1"
    assert workload.volumes == (Volume("data", 64),)
    app = workload.apps[0]
    assert app.source == OciImage(reference=f"ghcr.io/acme/svc@{DIGEST}", digest=DIGEST)
    assert [type(e) for e in app.entrypoints] == [
        FunctionEntrypoint,
        FunctionEntrypoint,
        CommandEntrypoint,
    ]
    first, second = app.entrypoints[0], app.entrypoints[1]
    assert isinstance(first, FunctionEntrypoint) and isinstance(second, FunctionEntrypoint)
    assert (first.function, first.primary) == ("first", True)
    assert (second.function, second.format) == ("second", "msgpack")
    assert app.mounts == (Mount("data", "/data", read_only=True),)
    assert app.network is not None and app.network.ports == (8080,) and app.resources.vcpus == 2


def test_oci_helper_without_digest_fails_at_declaration() -> None:
    with pytest.raises(IrError) as info:
        sdk.source.oci("python:3.12")
    assert info.value.code == "E_OCI_DIGEST"


def test_oci_without_digest_in_entry_file_surfaces_with_its_code(tmp_path: Path) -> None:
    entry = project(
        tmp_path,
        """
        import mvm
        @mvm.app(name="x", source=mvm.source.oci("python:3.12"),
                 image=mvm.image.nix_packages([]), dependencies=mvm.deps.none())
        @mvm.command(["true"])
        def main(): ...
        """,
    )
    with pytest.raises(IrError) as info:
        emit_ir(entry)
    assert info.value.code == "E_OCI_DIGEST"


def test_unpinned_or_missing_lockfile_fails_emit_with_json_path(tmp_path: Path) -> None:
    entry = project(tmp_path, LOCKED_ENTRY, lock=False)
    with pytest.raises(IrError) as info:
        emit_ir(entry)
    assert info.value.code == "E_UNPINNED_DEPS"
    assert info.value.message.startswith("$.apps[0].dependencies.lockfile: ")
    (tmp_path / "src" / "uv.lock").write_text(
        'version = 1\n[[package]]\nname = "six"\nversion = "1.16.0"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
    )
    with pytest.raises(IrError, match="six"):
        emit_ir(entry)


def test_invalid_declaration_is_reported_with_a_code(tmp_path: Path) -> None:
    entry = project(
        tmp_path,
        """
        import mvm
        @mvm.app(name="x", source=mvm.source.local(), image=mvm.image.nix_packages([]),
                 dependencies=mvm.deps.none(), resources=mvm.resources(vcpus="2"))
        @mvm.function(language="ruby", module="app", function="greet")
        def main(): ...
        """,
    )
    with pytest.raises(IrError) as info:
        emit_ir(entry)
    assert (info.value.code, info.value.path) == ("E_IR_TYPE", "$.apps[0].resources.vcpus")


def test_crashing_entry_file_is_one_error_line(tmp_path: Path) -> None:
    entry = project(tmp_path, "import mvm\nraise RuntimeError('no database here')\n")
    with pytest.raises(ConfigError) as info:
        emit_ir(entry)
    assert info.value.code == "E_EMIT_FAILED"
    assert "RuntimeError: no database here" in info.value.message


def test_entry_without_app_and_missing_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        emit_ir(project(tmp_path, "import mvm\n"))
    assert info.value.code == "E_EMIT_NO_APP"
    with pytest.raises(ConfigError) as info:
        emit_ir(tmp_path / "nope.py")
    assert info.value.code == "E_EMIT_ENTRY"


def test_write_ir_honours_mvm_ir_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOLDEN.read_text()
    assert write_ir(text) is None
    assert capsys.readouterr().out == text + "\n"
    out = tmp_path / "sub" / "ir.json"
    monkeypatch.setenv("MVM_IR_OUT", str(out))
    assert write_ir(text) == out
    assert hashlib.sha256(out.read_bytes()).hexdigest() == HELLO_HASH
    assert capsys.readouterr().out == ""


def test_validate_file_checks_lockfiles_relative_to_base_dir(tmp_path: Path) -> None:
    result = validate_file(GOLDEN, base_dir=HELLO_DIR)
    assert result.ir_hash == HELLO_HASH and result.workload.apps[0].name == "hello"
    with pytest.raises(IrError) as info:
        validate_file(GOLDEN)  # fixtures/ir/ has no uv.lock next to it
    assert info.value.code == "E_UNPINNED_DEPS"
    assert validate_file(GOLDEN, check_files=False).ir_hash == HELLO_HASH
    with pytest.raises(ConfigError) as missing:
        validate_file(tmp_path / "none.json")
    assert missing.value.code == "E_IR_FILE"
    (tmp_path / "broken.json").write_text('{"schema_version": ')
    with pytest.raises(IrError) as broken:
        validate_file(tmp_path / "broken.json")
    assert broken.value.code == "E_IR_JSON"


def test_emitted_ir_validates_in_place(tmp_path: Path) -> None:
    out = tmp_path / "mvm.ir.json"
    entry = project(tmp_path, LOCKED_ENTRY)
    write_ir(emit_ir(entry), out)
    assert validate_file(out).ir_hash == HELLO_HASH
    assert validate_text(out.read_text()).apps[0].entrypoints
