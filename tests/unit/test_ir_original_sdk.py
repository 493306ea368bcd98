"""IR emitted by the original product's published Python SDK (PyPI ``mvm`` 0.15.1) is
accepted: mapped field by field onto our model, one warning per field without effect.

The SDK is installed from PyPI into a cached venv (tests/helpers/original_sdk.py); the
test skips only when PyPI cannot be reached (pip's error says so), any other install
failure fails it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import original_sdk

from mvm.emit import validate_file
from mvm.engine.ir import FunctionEntrypoint, LocalPath, NoDeps, Resources

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
def original_python() -> Path:
    return original_sdk.original_python()


def test_original_sdk_ir_is_accepted_field_by_field(original_python: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    (tmp_path / "entry.py").write_text(textwrap.dedent(ENTRY))
    out = tmp_path / "workload-ir.json"
    proc = original_sdk.emit(original_python, tmp_path / "entry.py", out)
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


# Every field of every IR type the 0.15.1 SDK serialises (its mvm/_ir/workload.py; the
# DSL's _to_plain writes all dataclass fields, so each is emitted by default): "effect"
# (mapped onto something that acts here) or "warn" (no effect here: one warning line
# when set). A field the SDK gains or loses fails the first assertion below.
FIELDS: dict[str, dict[str, str]] = {
    "Workload": {"apps": "effect", "id": "effect", "schema_version": "effect",
                 "extensions": "effect", "volumes": "effect"},
    "Volume": {"name": "effect", "size_mb": "effect", "persist": "warn"},
    "App": {"entrypoints": "effect", "image": "effect", "name": "effect",
            "resources": "effect", "source": "effect", "dependencies": "effect",
            "env": "effect", "threat_tier": "effect", "addons": "warn", "hooks": "warn",
            "mounts": "warn", "network": "warn"},
    "Resources": {"cpu_cores": "effect", "memory_mb": "effect", "rootfs_size_mb": "warn"},
    "Source1": {"kind": "effect", "path": "effect", "include": "effect", "exclude": "effect"},
    "Image1": {"kind": "effect", "packages": "effect"},
    "Dependencies1": {"kind": "effect", "lockfile": "effect", "tool": "effect"},
    "Dependencies2": {"kind": "effect", "lockfile": "effect", "tool": "effect"},
    "Entrypoint1": {"command": "effect", "kind": "effect", "env": "effect",
                    "working_dir": "effect"},
    "Entrypoint2": {"format": "effect", "function": "effect", "kind": "effect",
                    "language": "effect", "module": "effect", "primary": "effect",
                    "working_dir": "effect", "args_schema": "effect",
                    "return_schema": "effect", "concurrency": "effect", "env": "effect",
                    "extra_imports": "warn"},
    "Concurrency1": {"kind": "effect", "in_process": "effect", "pool_size": "warn",
                     "max_calls_per_worker": "warn", "max_rss_mb": "warn",
                     "max_queue_depth": "warn"},
}  # fmt: skip

DUMP_FIELDS = """
import dataclasses, json
from mvm._ir import workload as ir
names = %r
print(json.dumps({n: [f.name for f in dataclasses.fields(getattr(ir, n))] for n in names}))
"""

# The SDK's defaults only (the @mvm.func shortcut: image, resources, deps, primary, env,
# working_dir all defaulted): the one field without effect is rootfs_size_mb.
DEFAULTS_ENTRY = """
import mvm


@mvm.func(name="plain", module="app", source=mvm.local_path("./src"))
def greet(name: str) -> str:
    return f"hello, {name}"
"""

# Every "warn" field the DSL can set, set (plus in_process="serial", which is what runs).
KNOBS_ENTRY = """
import mvm
from mvm._ir import workload as ir

mvm.workload(id="knobs")


@mvm.app(
    name="knobs",
    source=mvm.local_path("./src"),
    image=mvm.nix_packages(["python3"]),
    entrypoint=mvm.entrypoint_function(
        module="app",
        function="greet",
        extra_imports=["json"],
        env={"MODE": mvm.literal("prod"), "TOKEN": mvm.secret("api-token")},
        concurrency=mvm.warm_process(
            max_calls_per_worker=1000, max_rss_mb=128, pool_size=2, max_queue_depth=8
        ),
    ),
    resources=mvm.resources(cpu_cores=1, memory_mb=256, rootfs_size_mb=512),
    dependencies=mvm.no_deps(),
    network=mvm.network(mode="none"),
    mounts=[ir.Mount(mode=ir.MountMode.ro, target="/scratch",
                     source=ir.MountSource3(kind=ir.Kind16.tmpfs, size_mb=16))],
    addons=[mvm.addon_use("postgres", version="16")],
    before_start="echo starting",
)
def _spec():
    pass
"""


def _validate_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("mvmctl")), "validate", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _emit(python: Path, root: Path, entry: str) -> Path:
    (root / "src").mkdir(exist_ok=True)
    (root / "src" / "app.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    (root / "entry.py").write_text(textwrap.dedent(entry))
    out = root / "workload-ir.json"
    proc = original_sdk.emit(python, root / "entry.py", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _warned(stderr: str) -> list[str]:
    return [ln.split(":")[1].strip() for ln in stderr.splitlines() if ln.startswith("warning: ")]


def test_every_field_the_original_emits_is_classified(original_python: Path) -> None:
    dump = subprocess.run(
        [str(original_python), "-c", DUMP_FIELDS % sorted(FIELDS)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    emitted = {name: sorted(fields) for name, fields in json.loads(dump.stdout).items()}
    assert emitted == {name: sorted(fields) for name, fields in FIELDS.items()}


def test_defaults_warn_only_for_rootfs_size(original_python: Path, tmp_path: Path) -> None:
    out = _emit(original_python, tmp_path, DEFAULTS_ENTRY)
    cli = _validate_cli(out)
    assert cli.returncode == 0, cli.stderr
    assert _warned(cli.stderr) == ["$.apps[0].resources.rootfs_size_mb"]


def test_one_warning_per_field_without_effect(original_python: Path, tmp_path: Path) -> None:
    out = _emit(original_python, tmp_path, KNOBS_ENTRY)
    cli = _validate_cli(out)
    assert cli.returncode == 0, cli.stderr
    warned = _warned(cli.stderr)
    assert sorted(warned) == sorted(
        [
            "$.apps[0].hooks",
            "$.apps[0].resources.rootfs_size_mb",
            "$.apps[0].network",
            "$.apps[0].mounts",
            "$.apps[0].addons",
            "$.apps[0].entrypoints[0].extra_imports",
            "$.apps[0].entrypoints[0].env.TOKEN",
            "$.apps[0].entrypoints[0].concurrency.pool_size",
            "$.apps[0].entrypoints[0].concurrency.max_calls_per_worker",
            "$.apps[0].entrypoints[0].concurrency.max_rss_mb",
            "$.apps[0].entrypoints[0].concurrency.max_queue_depth",
        ]
    )
    # Every app/entrypoint/resources/concurrency field classified "warn" is covered
    # (persist: the DSL has no way to declare volumes, it always writes []).
    leaves = {w.rsplit(".", 1)[-1].split("[")[0] for w in warned}
    expected = {f for n, fs in FIELDS.items() for f, kind in fs.items() if kind == "warn"}
    assert leaves - {"TOKEN"} == expected - {"persist"}  # TOKEN: a secret ref in env
    # What has an effect arrived: the literal env (merged into the app's), the block.
    result = validate_file(out)
    app = result.workload.apps[0]
    (ep,) = app.entrypoints
    assert app.env == {"MODE": "prod"}
    assert isinstance(ep, FunctionEntrypoint) and ep.concurrency is not None
    assert ep.concurrency["kind"] == "warm_process"


def test_func_without_module_is_refused(original_python: Path, tmp_path: Path) -> None:
    """``@mvm.func`` infers module from ``fn.__module__``: ``__mvm_entry__`` while the
    original emits; no such module exists in the guest, so validate says so."""
    entry = DEFAULTS_ENTRY.replace('module="app", ', "")
    out = _emit(original_python, tmp_path, entry)
    assert '"module":"__mvm_entry__"' in out.read_text()
    cli = _validate_cli(out)
    assert cli.returncode != 0
    assert "error[E_IR_MODULE]: $.apps[0].entrypoints[0].module" in cli.stderr, cli.stderr
