"""Engine logic on a fake VMM (the real guest agent as a host process).

Fast checks of what the QEMU integration tests prove on real VMs: start order,
forwards, naming conflicts, teardown leaving nothing, VMM death, orphan
reconciliation and detached lifecycle through the shim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import attrs
import pytest

from mvm import ConflictError, Engine, Image, MvmError, PortMapping, VmRequest
from mvm.engine.admission.audit import AuditLog
from mvm.engine.base.paths import vm_dir
from mvm.engine.base.process import is_same_process, process_start_time
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.detached import start_detached, stop_vm_record
from mvm.engine.vm.reconcile import reconcile

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MVM_BACKEND_PLUGINS",
        "fake=fakes.process_backend:factory,mute=fakes.process_backend:mute_factory",
    )
    monkeypatch.setenv("PYTHONPATH", f"{TESTS_DIR}:{os.environ.get('PYTHONPATH', '')}")
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture
def image(tmp_path: Path) -> Image:
    (tmp_path / "vmlinux").write_bytes(b"fake")
    (tmp_path / "rootfs.ext4").write_bytes(b"fake")
    (tmp_path / "mvm-meta.json").write_text(json.dumps({"name": "fake", "sealed": False}))
    return Image.load(tmp_path)


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server standing in for a guest service (the fake agent is on the host)."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.cancel_scope.cancel()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _roundtrip(port: int, payload: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as conn:
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                await conn.send(payload)
                await conn.send_eof()

            tg.start_soon(send)
            got = b""
            async for chunk in conn:
                got += chunk
        return got


def _request(image: Image, name: str, *ports: PortMapping) -> VmRequest:
    return VmRequest(name=name, image_dir=str(image.directory), ports=ports, backend="fake")


async def test_forward_is_byte_exact_and_teardown_leaves_nothing(
    image: Image, echo_server: int
) -> None:
    host_port = _free_port()
    async with Engine.open() as engine:
        vm = await engine.start(_request(image, "f1", PortMapping(host_port, echo_server)), image)
        pid = vm.pid
        assert pid is not None and is_same_process(pid, process_start_time(pid))
        payload = os.urandom(3 * 1024 * 1024)
        assert await _roundtrip(host_port, payload) == payload
        async with anyio.create_task_group() as tg:
            results: list[bool] = []

            async def one(i: int) -> None:
                data = bytes([i]) * (1000 + i * 7919)
                results.append(await _roundtrip(host_port, data) == data)

            for i in range(40):
                tg.start_soon(one, i)
        assert results == [True] * 40
        rec = await engine.store.get_vm("f1")
        assert rec is not None and rec.state == "running"
    assert not Path(f"/proc/{pid}").exists() or not is_same_process(pid, None)
    leftovers = [p.name for p in vm_dir("f1").iterdir() if p.name.endswith((".sock", ".pid"))]
    assert leftovers == []
    async with StateStore.open() as store:
        rec = await store.get_vm("f1")
        assert rec is not None and rec.state == "exited"
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", host_port)


async def test_name_conflict_and_port_in_use(image: Image) -> None:
    async with Engine.open() as engine:
        await engine.start(_request(image, "dup"), image)
        with pytest.raises(ConflictError) as info:
            await engine.start(_request(image, "dup"), image)
        assert info.value.code == "E_NAME_TAKEN"
        blocker = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with blocker:
            port = blocker.extra(anyio.abc.SocketAttribute.local_port)
            with pytest.raises(ConflictError) as info:
                await engine.start(_request(image, "busy", PortMapping(port, 80)), image)
            assert info.value.code == "E_PORT_IN_USE"
        assert await engine.store.get_vm("busy") is None


async def test_vmm_killed_externally_marks_vm_exited(image: Image) -> None:
    async with Engine.open() as engine:
        vm = await engine.start(_request(image, "victim"), image)
        assert vm.pid is not None
        os.kill(vm.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            code = await vm.wait()
        assert code == -signal.SIGKILL
        rec = await engine.store.get_vm("victim")
        assert rec is not None and rec.state == "exited"


async def test_reconcile_kills_orphan_of_dead_attached_engine(image: Image) -> None:
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    try:
        async with StateStore.open() as store:
            await store.insert_vm(
                VmRecord(
                    name="orphan",
                    backend="fake",
                    mode="attached",
                    state="running",
                    pid=orphan.pid,
                    pid_start_time=process_start_time(orphan.pid),
                    run_dir=str(vm_dir("orphan")),
                    image="x",
                    sealed=True,
                    created_at=time.time(),
                    started_at=time.time(),
                    exited_at=None,
                    exit_code=None,
                    exit_reason=None,
                    control_socket=None,
                    agent_socket=None,
                    console_log=None,
                    spec_json="{}",
                    owner=f"{dead_owner.pid}:1",
                )
            )
            changed = await reconcile(store)
            assert [r.name for r in changed] == ["orphan"]
            assert orphan.wait(timeout=5) == -signal.SIGKILL
            rec = await store.get_vm("orphan")
            assert rec is not None and rec.state == "exited"
            assert rec.exit_reason is not None and "orphan" in rec.exit_reason
    finally:
        orphan.kill()
        orphan.wait()


async def test_detached_vm_survives_and_down_removes_it(image: Image, echo_server: int) -> None:
    host_port = _free_port()
    info = await start_detached(
        VmRequest(
            name="bg",
            image_dir=str(image.directory),
            backend="fake",
            mode="detached",
            ports=(PortMapping(host_port, echo_server),),
        )
    )
    shim_pid = info["pid"]
    try:
        assert await _roundtrip(host_port, b"still here") == b"still here"
        async with StateStore.open() as store:
            rec = await store.get_vm("bg")
            assert rec is not None and rec.mode == "detached" and rec.state == "running"
            vmm = (rec.pid, rec.pid_start_time)
            await stop_vm_record(store, rec)
            assert await store.get_vm("bg") is None
        assert not is_same_process(*vmm)
        assert not vm_dir("bg").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(shim_pid, signal.SIGKILL)


async def test_down_works_when_the_shim_was_sigkilled(image: Image) -> None:
    info = await start_detached(
        VmRequest(name="lost", image_dir=str(image.directory), backend="fake", mode="detached")
    )
    os.kill(info["pid"], signal.SIGKILL)
    async with StateStore.open() as store:
        rec = await store.get_vm("lost")
        assert rec is not None
        assert is_same_process(rec.pid, rec.pid_start_time)  # the VMM outlived its shim
        await stop_vm_record(store, rec)
        assert not is_same_process(rec.pid, rec.pid_start_time)
        assert await store.get_vm("lost") is None


def test_engine_public_api_on_asyncio(image: Image) -> None:
    """An asyncio application embeds the engine the same way (anyio underneath): start
    with a forward, exec in the guest agent, the event stream, stop leaving nothing."""

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream):
                async for chunk in stream:
                    await stream.send(chunk)

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        host_port = _free_port()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        guest_port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            async with Engine.open() as engine, engine.events() as events:
                vm = await engine.start(
                    _request(image, "aio", PortMapping(host_port, guest_port)), image
                )
                seen["stdout"] = (await vm.exec(["echo", "from asyncio"])).stdout
                payload = os.urandom(256 * 1024)
                seen["echo_exact"] = await _roundtrip(host_port, payload) == payload
                await vm.stop()
                kinds: list[str] = []
                with anyio.move_on_after(5):
                    async for event in events:
                        kinds.append(event.kind)
                        if event.kind == "vm.stopped":
                            break
                seen["kinds"] = kinds
            tg.cancel_scope.cancel()
        async with StateStore.open() as store:
            row = await store.get_vm("aio")
        seen["state"] = row.state if row else None
        return seen

    seen = anyio.run(scenario, backend="asyncio")
    assert seen["stdout"] == b"from asyncio\n"
    assert seen["echo_exact"] is True
    kinds = seen["kinds"]
    assert isinstance(kinds, list) and kinds.index("vm.ready") < kinds.index("vm.stopped"), kinds
    assert seen["state"] == "exited"
    assert [p for p in vm_dir("aio").iterdir() if p.name.endswith((".sock", ".pid"))] == []


async def test_every_launch_is_admitted_and_its_outcome_audited(image: Image) -> None:
    """plan.admitted before the VMM starts, then plan.launched once the agent greeted
    or plan.failed with the error's code; the chain verifies."""
    async with Engine.open() as engine:
        await engine.start(_request(image, "good"), image)
        bad = attrs.evolve(_request(image, "bad"), backend="mute", boot_timeout_s=0.5)
        with pytest.raises(MvmError) as err:
            await engine.start(bad, image)
        assert err.value.code == "E_BOOT_TIMEOUT"
    log = AuditLog()
    events = [(e.event, e.data["vm"]) for e in log.entries()]
    assert events == [
        ("plan.admitted", "good"),
        ("plan.launched", "good"),
        ("plan.admitted", "bad"),
        ("plan.failed", "bad"),
    ]
    first, launched, _, failed = log.entries()
    meta_hash = hashlib.sha256((image.directory / "mvm-meta.json").read_bytes()).hexdigest()
    assert first.data["ir_hash"] == meta_hash  # no IR, no spec hash: the image's metadata
    assert first.data["admission_profile"] == "dev" and first.data["plan"] == launched.data["plan"]
    assert failed.data["code"] == "E_BOOT_TIMEOUT"
    assert log.verify().ok


async def test_the_hello_is_recorded_before_the_steps_after_it(
    image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-shot command can be done and its guest off before ``mark_running``: the row's
    ``started_at`` (what ``logs --since`` places the console on) is written at the hello."""
    from mvm.engine.vm import boot
    from mvm.engine.vm.runtime import RuntimeVM

    seen: list[float | None] = []
    mux_step = next(s for s in boot.COLD_START.steps if s.name == "mux")

    async def mux_after_looking(vm: RuntimeVM) -> None:
        rec = await vm.store.get_vm(vm.request.name)
        seen.append(rec.started_at if rec is not None else None)
        await mux_step.do(vm)

    edited = boot.COLD_START.replace("mux", attrs.evolve(mux_step, do=mux_after_looking))
    monkeypatch.setattr(boot, "COLD_START", edited)
    before = time.time()
    async with Engine.open() as engine:
        await engine.start(_request(image, "hello1"), image)
    assert len(seen) == 1 and seen[0] is not None and seen[0] >= before
