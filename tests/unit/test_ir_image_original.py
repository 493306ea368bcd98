"""IR as the original's SDK (PyPI ``mvm`` 0.15.1) writes it builds the image it means:
its local_path globs select the copied files, its working_dir is where they land and
what the wrapper uses, a single function's env reaches the wrapper process, and
``@mvm.func``'s emit-time module name is refused before any build.

The documents are what 0.15.1 emits (tests/unit/test_ir_original_sdk.py runs that SDK
itself); here they are literal, so these run without PyPI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mvm.engine.base.errors import IrError
from mvm.engine.images.ir_image import RUNNER_GUEST, source_selects, workload_image_spec
from mvm.engine.ir import CommandEntrypoint, FunctionEntrypoint, PythonDeps, validate

# `python -m mvm entry.py` output of the 0.15.1 SDK for mvm.workload + mvm.app(
# entrypoint=mvm.entrypoint_function(module="app", function="greet")) (canonical JSON).
ORIGINAL = (
    '{"apps":[{"dependencies":{"kind":"none"},"entrypoints":[{"args_schema":null,'
    '"concurrency":null,"env":{},"extra_imports":[],"format":"json","function":"greet",'
    '"kind":"function","language":"python","module":"app","primary":false,'
    '"return_schema":null,"working_dir":"/app"}],"env":{},"hooks":null,"image":'
    '{"kind":"nix_packages","packages":["python3"]},"mounts":[],"name":"orig","network":'
    'null,"resources":{"cpu_cores":1,"memory_mb":256,"rootfs_size_mb":512},"source":'
    '{"exclude":[],"include":["**"],"kind":"local_path","path":"./src"}}],"extensions":{},'
    '"id":"orig","schema_version":"0.1","volumes":[]}'
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "tests").mkdir(parents=True)
    (src / "pkg").mkdir()
    (src / "app.py").write_text("def greet(name):\n    return f'hello, {name}'\n")
    (src / "pkg" / "util.py").write_text("X = 1\n")
    (src / "README.md").write_text("docs\n")
    (src / "tests" / "test_app.py").write_text("def test(): pass\n")
    return tmp_path


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ORIGINAL)
    return doc


def test_source_globs() -> None:
    assert source_selects("a/b/c.py", ("**",), ())
    assert source_selects("c.py", ("*.py",), ()) and source_selects("a/c.py", ("*.py",), ())
    assert not source_selects("README.md", ("*.py",), ())
    assert not source_selects("tests/t.py", ("**",), ("tests",))  # a directory above
    assert not source_selects("a/t_x.py", ("**",), ("*/t_*",))
    assert source_selects("testsuite.py", ("**",), ("tests",))


def test_default_original_ir_copies_everything_to_app(project: Path) -> None:
    w = validate(_doc(), base_dir=project)
    spec = workload_image_spec(w, base_dir=project)
    app_files = sorted(p for p in spec.host_files if p.startswith("/app/"))
    assert app_files == ["/app/README.md", "/app/app.py", "/app/pkg/util.py",
                         "/app/tests/test_app.py"]  # fmt: skip
    assert (spec.name, spec.vcpus, spec.memory_mib) == ("orig", 1, 256)


def test_globs_working_dir_and_function_env_take_effect(project: Path) -> None:
    doc = _doc()
    app = doc["apps"][0]
    app["source"].update(include=["*.py"], exclude=["tests"])
    app["resources"]["cpu_cores"] = 2
    app["env"] = {"A": {"kind": "literal", "value": "1"}}
    ep = app["entrypoints"][0]
    ep.update(working_dir="/srv/fn", env={"MODE": {"kind": "literal", "value": "prod"}})
    warnings: list[str] = []
    w = validate(doc, base_dir=project, warnings=warnings)
    assert [x.split(":")[0] for x in warnings] == ["$.apps[0].resources.rootfs_size_mb"]
    assert w.apps[0].env == {"A": "1", "MODE": "prod"}
    spec = workload_image_spec(w, base_dir=project)
    assert sorted(p for p in spec.host_files if p.startswith("/srv/fn/")) == [
        "/srv/fn/app.py",
        "/srv/fn/pkg/util.py",
    ]
    assert json.loads(spec.mvm_files["wrapper.json"])["working_dir"] == "/srv/fn"
    assert json.loads(spec.mvm_files["runtime.json"])["source_path"] == "/srv/fn"
    header = Path(spec.host_files[RUNNER_GUEST]).read_text().splitlines()[1]
    assert "A=1" in header and "MODE=prod" in header
    assert spec.vcpus == 2


def test_original_concurrency_block_selects_the_longrunning_wrapper(project: Path) -> None:
    doc = _doc()
    block = {"kind": "warm_process", "in_process": "serial", "max_calls_per_worker": 1000,
             "max_queue_depth": None, "max_rss_mb": 128, "pool_size": 2}  # fmt: skip
    doc["apps"][0]["entrypoints"][0]["concurrency"] = block
    warnings: list[str] = []
    w = validate(doc, base_dir=project, warnings=warnings)
    assert sorted(x.split(":")[0].rsplit(".", 1)[1] for x in warnings) == [
        "max_calls_per_worker", "max_rss_mb", "pool_size", "rootfs_size_mb",
    ]  # fmt: skip
    spec = workload_image_spec(w, base_dir=project)
    assert json.loads(spec.mvm_files["runtime.json"])["concurrency"] == block  # verbatim
    assert "--variant longrunning" in Path(spec.host_files[RUNNER_GUEST]).read_text()


def test_command_entrypoint_env_literals(project: Path) -> None:
    doc = _doc()
    doc["apps"][0]["entrypoints"] = [
        {"command": ["python3", "-m", "http.server"], "kind": "command", "working_dir": "/app",
         "env": {"PORT": {"kind": "literal", "value": "8080"}}}
    ]  # fmt: skip
    (ep,) = validate(doc, base_dir=project).apps[0].entrypoints
    assert isinstance(ep, CommandEntrypoint) and ep.env == {"PORT": "8080"}


def test_emit_time_module_name_is_refused(project: Path) -> None:
    doc = _doc()
    doc["apps"][0]["entrypoints"][0]["module"] = "__mvm_entry__"
    doc["apps"][0]["dependencies"] = {"kind": "bogus"}  # every problem is reported
    with pytest.raises(IrError) as exc:
        validate(doc, base_dir=project)
    codes = [(e.path, e.code) for e in exc.value.all_errors]
    assert codes[0] == ("$.apps[0].entrypoints[0].module", "E_IR_MODULE")
    assert any(path.startswith("$.apps[0].dependencies") for path, _ in codes[1:]), codes


def test_the_first_function_is_primary_when_none_is_marked(project: Path) -> None:
    """As the original's app() dispatches (and mkFunctionWorkload wants one primary)."""
    (ep,) = validate(_doc(), base_dir=project).apps[0].entrypoints
    assert isinstance(ep, FunctionEntrypoint)
    assert (ep.module, ep.primary, ep.working_dir, ep.extra_imports) == ("app", True, "/app", ())
    doc = _doc()
    second = dict(doc["apps"][0]["entrypoints"][0], function="shout", primary=True)
    doc["apps"][0]["entrypoints"].append(second)
    eps = validate(doc, base_dir=project).apps[0].entrypoints
    assert [(e.function, e.primary) for e in eps if isinstance(e, FunctionEntrypoint)] == [
        ("greet", False),
        ("shout", True),
    ]


def test_pip_tools_dependencies_are_checked_like_ours(project: Path) -> None:
    """The original writes ``"tool": "pip_tools"`` (its enum), ours ``"pip-tools"``;
    the lockfile is relative to the source dir in both, and checked the same."""
    doc = _doc()
    doc["apps"][0]["dependencies"] = {
        "kind": "python", "lockfile": "requirements.txt", "tool": "pip_tools",
    }  # fmt: skip
    lock = project / "src" / "requirements.txt"
    lock.write_text("attrs==23.2.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    deps = validate(doc, base_dir=project).apps[0].dependencies
    assert isinstance(deps, PythonDeps) and deps.tool == "pip-tools"
    lock.write_text("attrs==23.2.0\n")
    with pytest.raises(IrError) as exc:
        validate(doc, base_dir=project)
    assert exc.value.code == "E_UNPINNED_DEPS"
