"""The embedding API's surface (issue 16): what the public API returns or takes is
importable from ``mvm``, ``EventKind`` covers every boot step, a user script using only
``mvm``'s names passes ``mypy --strict``, and ``engine.vm(name)`` reaches a VM another
process supervises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mvm
from mvm.engine.base import errors
from mvm.engine.vm.boot import ADOPT, CLONE, COLD_START

TESTS_DIR = Path(__file__).resolve().parents[1]


def test_every_returned_or_taken_type_is_exported() -> None:
    for name in (
        "Engine", "VmHandle", "Image", "ImageSpec", "VmRequest", "PortMapping", "Volume",
        "ExecResult", "AgentClient", "VmRecord", "PortRecord", "EventRecord", "Event",
        "EventKind", "Settings", "StateStore",
    ):  # fmt: skip
        assert name in mvm.__all__, name
        assert getattr(mvm, name).__name__ == name
    error_classes = [
        n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)
    ]
    assert set(error_classes) <= set(mvm.__all__)


def test_event_kind_has_a_member_for_every_boot_step() -> None:
    names = {s.name for steps in (COLD_START, CLONE, ADOPT) for s in steps.steps}
    for name in names:
        assert mvm.EventKind.step(name) == f"vm.step.{name}"
        assert mvm.EventKind.step(name, done=True) == f"vm.step.{name}.done"
    assert mvm.EventKind.VM_STOPPED == "vm.stopped" and isinstance(mvm.EventKind.VM_READY, str)


def test_requests_and_specs_take_paths_and_lists(tmp_path: Path) -> None:
    req = mvm.VmRequest(name="p", image_dir=tmp_path, ports=[mvm.PortMapping.parse("8080:80")])
    assert req.image_dir == str(tmp_path) and isinstance(req.ports, tuple)
    spec = mvm.ImageSpec(name="s", command=["/bin/true"], packages=["busybox"])
    assert spec.packages == ("busybox",) and spec.command == ("/bin/true",)


USER_SCRIPT = """
from __future__ import annotations

import asyncio
from pathlib import Path

from mvm import Engine, Event, EventKind, ExecResult, MvmError, VmHandle, VmRecord, VmRequest


async def main(image: Path) -> int:
    async with Engine.open() as engine:
        vm: VmHandle = await engine.start(VmRequest(name="typed", image_dir=image))
        result: ExecResult = await vm.exec(["uname", "-r"])
        records: list[VmRecord] = await engine.list_vms()
        async with engine.events() as events:
            async for ev in events:
                event: Event = ev
                if event.kind == EventKind.VM_STOPPED:
                    break
        try:
            await engine.vm("other").stop()
        except MvmError as exc:
            print(exc.code)
        return (result.code or 0) + len(records)


print(asyncio.run(main(Path("/tmp/image"))))
"""


def test_a_user_script_using_only_mvm_names_passes_mypy_strict(tmp_path: Path) -> None:
    script = tmp_path / "user_app.py"
    script.write_text(USER_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and it can fail: a wrong type is seen through the exported names
    script.write_text(USER_SCRIPT.replace("result: ExecResult", "result: VmRecord"))
    bad = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "Incompatible types in assignment" in bad.stdout


@pytest.fixture
def fake_image(tmp_path: Path) -> Path:
    import json

    (tmp_path / "vmlinux").write_bytes(b"fake")
    (tmp_path / "rootfs.ext4").write_bytes(b"fake")
    (tmp_path / "mvm-meta.json").write_text(json.dumps({"name": "fake", "sealed": False}))
    return tmp_path


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_engine_vm_attaches_to_a_vm_another_process_supervises(fake_image: Path) -> None:
    up = _mvmctl("up", str(fake_image), "--backend", "stub", "--name", "elsewhere")
    assert up.returncode == 0, up.stderr
    try:
        async with mvm.Engine.open() as engine:
            assert "elsewhere" in [r.name for r in await engine.list_vms()]
            vm = engine.vm("elsewhere")
            result = await vm.exec(["echo", "via-the-mux"])
            assert result.stdout == b"via-the-mux\n" and result.code == 0
            code = await vm.stop()  # the one stop path: the owner (its shim) stops it
            assert code == -15  # the stub's "VMM" is a host process ended by SIGTERM
            assert await vm.wait() == code
            rec = await engine.store.get_vm("elsewhere")
            assert rec is not None and rec.state == "exited"
            with pytest.raises(mvm.NotFoundError) as err:
                await engine.vm("nobody").exec(["true"])
            assert err.value.code == "E_VM_NOT_FOUND"
    finally:
        _mvmctl("down", "elsewhere")
