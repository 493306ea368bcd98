"""An optional VM lifetime (issue 16): ``VmRequest(ttl_s=...)`` / ``--ttl`` stops the VM
through the one stop path once it elapses, recording exit_reason "ttl expired".
On the fake VMM (the real guest agent as a host process, tests/fakes/process_backend.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from mvm import Engine, Image, MvmError, VmRequest
from mvm.cli.vm_commands import parse_ttl

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_BACKEND_PLUGINS", "fake=fakes.process_backend:factory")
    monkeypatch.setenv("PYTHONPATH", f"{TESTS_DIR}:{os.environ.get('PYTHONPATH', '')}")
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture
def image(tmp_path: Path) -> Image:
    (tmp_path / "vmlinux").write_bytes(b"fake")
    (tmp_path / "rootfs.ext4").write_bytes(b"fake")
    (tmp_path / "mvm-meta.json").write_text(json.dumps({"name": "fake", "sealed": False}))
    return Image.load(tmp_path)


async def test_a_one_second_ttl_stops_the_vm_with_reason_ttl_expired(image: Image) -> None:
    request = VmRequest(name="brief", image_dir=image.directory, backend="fake", ttl_s=1.0)
    async with Engine.open() as engine:
        vm = await engine.start(request, image)
        started = anyio.current_time()
        with anyio.fail_after(20):
            await vm.wait()
        lived = anyio.current_time() - started
        rec = await engine.store.get_vm("brief")
    assert rec is not None and rec.state == "exited"
    assert rec.exit_reason == "ttl expired"
    assert 0.5 <= lived < 20


async def test_without_ttl_the_vm_runs_until_stopped(image: Image) -> None:
    request = VmRequest(name="longer", image_dir=image.directory, backend="fake", ttl_s=600)
    async with Engine.open() as engine:
        vm = await engine.start(request, image)
        with anyio.move_on_after(1.5):
            await vm.wait()
        assert (await engine.store.get_vm("longer")).state == "running"  # type: ignore[union-attr]
        await vm.stop("asked")
        rec = await engine.store.get_vm("longer")
    assert rec is not None and rec.exit_reason == "asked"


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_a_ttl_must_be_a_positive_finite_number(image: Image, bad: float) -> None:
    with pytest.raises(MvmError) as exc:
        VmRequest(name="x", image_dir=image.directory, ttl_s=bad)
    assert exc.value.code == "E_VM_TTL"


def test_ttl_flag_durations() -> None:
    assert [parse_ttl(t) for t in ("30s", "10m", "2h", "1d", "45", "1.5s")] == [
        30, 600, 7200, 86400, 45, 1.5,
    ]  # fmt: skip
    for bad in ("0", "0s", "ten", "-5s", "5w"):
        with pytest.raises(MvmError) as exc:
            parse_ttl(bad)
        assert exc.value.code == "E_VM_TTL"


def test_run_and_up_pass_ttl_into_the_request(image: Image) -> None:
    from mvm.cli.app import build_parser
    from mvm.cli.vm_commands import _request

    for verb in ("run", "up"):
        args = build_parser().parse_args([verb, str(image.directory), "--ttl", "2m"])
        assert _request(args, image.directory, "t", "detached", None).ttl_s == 120
        plain = build_parser().parse_args([verb, str(image.directory)])
        assert _request(plain, image.directory, "t", "detached", None).ttl_s is None
