"""Snapshots and clones on real parts: a running demo VM is saved while it keeps
serving, and resumed under QEMU ``-incoming`` as clones that each answer on their
own forwarded port with their own identity (hostname, machine-id, RNG), share
the read-only rootfs file, and leave nothing behind."""

from __future__ import annotations

import json
import re
from contextlib import suppress
from pathlib import Path

import anyio
import httpx
import pytest

from mvm import Engine, Image, PortMapping, VmRequest
from mvm.cli.app import build_parser, handler
from mvm.engine.base.errors import ConflictError, NotFoundError
from mvm.engine.base.paths import vm_dir
from mvm.engine.store import StateStore
from mvm.engine.vm.planfile import load_plan
from mvm.engine.vm.snapshots import list_snapshots, load_snapshot

from .conftest import qemu_pids

pytestmark = pytest.mark.qemu

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


async def _get(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.get(f"http://127.0.0.1:{port}/")


def _ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def test_clone_of_running_demo_serves_on_its_own_port_with_own_identity(
    demo_image: Image,
) -> None:
    before = qemu_pids()
    src_port, clone_port = _ports(2)
    async with Engine.open() as engine:
        src = await engine.start(
            VmRequest(
                name="src", image_dir=str(demo_image.directory), ports=(PortMapping(src_port, 80),)
            ),
            demo_image,
        )
        src_hello = dict(src.hello)
        snap_dir = await engine.snapshot("src", "web")
        assert sorted(p.name for p in snap_dir.iterdir()) == ["snapshot.json", "state.bin"]
        meta = json.loads((snap_dir / "snapshot.json").read_text())
        assert meta["source"] == "src" and meta["rootfs"] == str(demo_image.rootfs)
        assert not [p for p in snap_dir.parent.iterdir() if p.name.startswith(".")]
        with pytest.raises(ConflictError) as exists:
            await engine.snapshot("src", "web")
        assert exists.value.code == "E_SNAPSHOT_EXISTS"

        clone = await engine.clone("web", "web-clone", ports=(PortMapping(clone_port, 80),))
        assert clone.hello["hostname"] == "web-clone"
        assert _HEX32.match(clone.hello["machine_id"])
        assert clone.hello["machine_id"] != src_hello["machine_id"]
        assert clone.pid != src.pid and clone.pid in qemu_pids()
        # Its own run dir and agent channel; the image's rootfs file is shared, not copied.
        plan = load_plan(vm_dir("web-clone"))
        assert plan.run_dir == vm_dir("web-clone") and plan.agent_socket.parent == plan.run_dir
        assert f"file={demo_image.rootfs}," in " ".join(plan.argv)
        assert "readonly=on" in " ".join(plan.argv)
        assert not [p for p in plan.run_dir.iterdir() if p.stat().st_size > 1 << 20]
        # It resumed (no kernel boot in its console) and serves on its own port...
        assert "Linux version" not in Path(clone.console_log or "").read_text(errors="replace")
        assert "Hello from mvm" in (await _get(clone_port)).text
        # ...while the original keeps serving, with its identity unchanged.
        assert "Hello from mvm" in (await _get(src_port)).text
        client = await src.agent()
        assert await client.ping() > 0
        assert src.hello["hostname"] == "src"
        assert src.hello["machine_id"] == src_hello["machine_id"]
        rec = await engine.store.get_vm("web-clone")
        assert rec is not None and rec.state == "running"
        assert json.loads(rec.spec_json or "{}")["snapshot"] == "web"
        with pytest.raises(ConflictError):
            await engine.clone("web", "web-clone")
    assert qemu_pids() == before
    with pytest.raises(httpx.ConnectError):
        await _get(clone_port)


async def test_eight_parallel_clones_have_distinct_identities_and_rng(
    demo_dev_image: Image,
) -> None:
    before = qemu_pids()
    async with Engine.open() as engine:
        src = await engine.start(
            VmRequest(name="dsrc", image_dir=str(demo_dev_image.directory)), demo_dev_image
        )
        await engine.snapshot("dsrc", "dev")
        names = [f"dc-{i}" for i in range(1, 9)]
        handles = {}

        async def one(name: str) -> None:
            handles[name] = await engine.clone("dev", name)

        t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)
        elapsed = anyio.current_time() - t0
        script = (
            "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
        )
        seen: dict[str, tuple[str, str, str]] = {}
        for name in [*names, "dsrc"]:
            vm = handles.get(name) or src
            result = await vm.exec(["sh", "-c", script])
            assert result.ok, result
            host, mid, rnd = result.stdout.decode().split("\n")
            seen[name] = (host, mid, rnd)
            assert host == name
            assert vm.hello["machine_id"] == mid
        assert len({mid for _, mid, _ in seen.values()}) == 9
        assert len({rnd for _, _, rnd in seen.values()}) == 9
        pids = {h.pid for h in handles.values()}
        assert len(pids) == 8 and pids <= qemu_pids()
        print(f"8 parallel clones ready in {elapsed:.2f}s")
    assert qemu_pids() == before


async def _cli(*argv: str) -> int:
    """An mvmctl command run in this process (the real parser and handler)."""
    args = build_parser().parse_args(list(argv))
    code: int = await handler(args.handler)(args)
    return code


async def test_cli_snapshot_and_detached_clones_on_consecutive_ports(demo_image: Image) -> None:
    before = qemu_pids()
    base = _ports(1)[0]
    if base > 65000:
        base -= 1000
    try:
        assert await _cli("up", str(demo_image.directory), "--name", "cli-src") == 0
        assert await _cli("snapshot", "cli-src", "--as", "cli-snap") == 0
        assert [s.name for s in list_snapshots()] == ["cli-snap"]
        assert load_snapshot("cli-snap").source == "cli-src"
        argv = ("clone", "cli-snap", "--name", "cc", "--count", "2", "-p", f"{base}:80")
        assert await _cli(*argv) == 0
        for i, port in enumerate((base, base + 1), start=1):
            assert "Hello from mvm" in (await _get(port)).text
            async with StateStore.open() as store:
                rec = await store.get_vm(f"cc-{i}")
                assert rec is not None and rec.mode == "detached" and rec.state == "running"
                assert [p.host_port for p in await store.list_ports(f"cc-{i}")] == [port]
        with pytest.raises(NotFoundError):
            await _cli("clone", "no-such-snap", "--name", "x")
    finally:
        for name in ("cc-1", "cc-2", "cli-src"):
            with suppress(NotFoundError):
                await _cli("down", name)
        with suppress(NotFoundError):
            await _cli("snapshots", "--rm", "cli-snap")
    assert list_snapshots() == []
    assert qemu_pids() == before
