"""The main job end to end on real parts: kernel + ext4 rootfs under QEMU, the
guest agent's hello, exec, a forwarded HTTP page, supervised services,
dropped privileges, and a teardown that leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
import trio

from mvm import AccessDenied, ConflictError, Engine, Image, ImageSpec, PortMapping, VmRequest
from mvm.engine.base.paths import vm_dir
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import Service

from .conftest import qemu_pids

pytestmark = pytest.mark.qemu


async def _get(port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.get(f"http://127.0.0.1:{port}/")


def _leftovers(name: str) -> list[str]:
    run_dir = vm_dir(name)
    if not run_dir.exists():
        return []
    return sorted(
        p.name for p in run_dir.iterdir() if p.name not in ("console.log", "mode.json", "qemu.log")
    )


async def test_demo_boots_serves_forwarded_page_and_tears_down(
    demo_image: Image, free_port: int
) -> None:
    before = qemu_pids()
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(
                name="demo1",
                image_dir=str(demo_image.directory),
                ports=(PortMapping(free_port, 80),),
            ),
            demo_image,
        )
        assert vm.hello["sealed"] is True
        assert vm.hello["hostname"] == "demo1"
        assert vm.pid in qemu_pids()
        response = await _get(free_port)
        assert response.status_code == 200
        assert "Hello from mvm" in response.text
        with pytest.raises(AccessDenied):
            await vm.exec(["id"])
        rec = await engine.store.get_vm("demo1")
        assert rec is not None and rec.state == "running" and rec.mode == "attached"
    # Leaving the engine scope tore everything down.
    assert qemu_pids() == before
    assert _leftovers("demo1") == []
    with pytest.raises(httpx.ConnectError):
        await _get(free_port)


async def test_exec_round_trip_on_accessible_image(demo_dev_image: Image) -> None:
    async with Engine.open() as engine:
        vm = await engine.start(VmRequest(name="dev1", image_dir=str(demo_dev_image.directory)))
        assert vm.hello["sealed"] is False
        result = await vm.exec(["sh", "-c", "echo out; echo err >&2; id -u; exit 3"])
        assert result.code == 3
        assert result.stdout == b"out\n0\n"  # exec runs as the dev entrypoint uid (root)
        assert result.stderr == b"err\n"
        echoed = await vm.exec(["cat"], stdin=b"x" * 100_000)
        assert echoed.stdout == b"x" * 100_000


@pytest.fixture(scope="module")
def restart_image() -> Image:
    spec = ImageSpec(
        name="restart",
        dev=True,
        services={"web": Service(command="httpd -f -p 80 -h /srv/www", restart="always")},
        extra_files={"/srv/www/index.html": "alive\n"},
    )
    return trio.run(build_offline_image, spec)


async def test_supervised_service_is_restarted_after_kill(
    restart_image: Image, free_port: int
) -> None:
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(
                name="restart1",
                image_dir=str(restart_image.directory),
                ports=(PortMapping(free_port, 80),),
            ),
            restart_image,
        )
        assert (await _get(free_port)).text == "alive\n"
        first = (await vm.exec(["pidof", "httpd"])).stdout.split()
        assert len(first) == 1
        # The agent runs as uid 990 and cannot signal the root service itself: it asks
        # /init (PID 1) through the ctl FIFO, as a health policy would.
        await (await vm.agent()).service("web", "kill", sig=9)
        with anyio.fail_after(30):
            while True:
                now = (await vm.exec(["pidof", "httpd"])).stdout.split()
                if now and now != first:
                    break
                await anyio.sleep(0.2)
        assert (await _get(free_port)).text == "alive\n"


@pytest.fixture(scope="module")
def command_image() -> Image:
    spec = ImageSpec(
        name="cmd",
        command=(
            "/bin/sh",
            "-c",
            "echo entry-uid=$(id -u) nnp=$(grep NoNewPrivs /proc/self/status | tr -dc 0-9); exit 7",
        ),
    )
    return trio.run(build_offline_image, spec)


async def test_sealed_command_entrypoint_runs_unprivileged_and_reports_exit(
    command_image: Image,
) -> None:
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="cmd1", image_dir=str(command_image.directory)), command_image
        )
        with anyio.fail_after(60):
            code = await vm.wait()
        assert code == 7
        console = Path(vm.console_log or "").read_text(errors="replace")
        assert "entry-uid=1000 nnp=1" in console
        rec = await engine.store.get_vm("cmd1")
        assert rec is not None and rec.state == "exited" and rec.exit_code == 7


async def test_port_in_use_fails_before_boot_and_leaves_nothing(
    demo_image: Image, free_port: int
) -> None:
    before = qemu_pids()
    blocker = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=free_port)
    async with blocker, Engine.open() as engine:
        with pytest.raises(ConflictError) as info:
            await engine.start(
                VmRequest(
                    name="busy",
                    image_dir=str(demo_image.directory),
                    ports=(PortMapping(free_port, 80),),
                ),
                demo_image,
            )
        assert info.value.code == "E_PORT_IN_USE"
        assert await engine.store.get_vm("busy") is None
    assert qemu_pids() == before
    assert _leftovers("busy") == []
