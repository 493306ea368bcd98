"""``--health-action restart-vm`` on real QEMU: an unhealthy service makes the VM stop and
boot again in place (same name, same bound host port, a new VMM, a fresh guest), within
a restart budget; the engine and its other VMs are untouched."""

from __future__ import annotations

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, PortMapping, VmRequest
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import HealthCheck, Service

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def sick_image() -> Image:
    spec = ImageSpec(
        name="sickable",
        dev=True,
        services={"web": Service(command="httpd -f -p 80 -h /etc", restart="always")},
        # healthy until someone creates /tmp/sick (a tmpfs: a new boot forgets it)
        health_checks={
            "web": HealthCheck(
                health_cmd="test ! -e /tmp/sick", health_interval_secs=1, health_timeout_secs=2
            )
        },
    )
    return trio.run(build_offline_image, spec)


async def test_unhealthy_service_restarts_the_vm_in_place(
    sick_image: Image, free_port: int
) -> None:
    async with Engine.open() as engine, engine.events() as events:
        vm = await engine.start(
            VmRequest(
                name="sick",
                image_dir=str(sick_image.directory),
                ports=(PortMapping(free_port, 80),),
                health_action="restart-vm",
            ),
            sick_image,
        )
        first_pid = vm.pid
        assert (await vm.exec(["touch", "/tmp/sick"])).code == 0
        with anyio.fail_after(120):
            async for event in events:
                if event.vm == "sick" and event.kind == "vm.ready" and vm.pid != first_pid:
                    break
        assert vm.pid is not None and vm.pid != first_pid
        # A fresh guest: the marker is gone, and the page is served on the same port.
        assert (await vm.exec(["test", "-e", "/tmp/sick"])).code != 0
        rec = await engine.store.get_vm("sick")
        assert rec is not None and rec.state == "running" and rec.pid == vm.pid
        with anyio.fail_after(30):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", free_port)
                    async with stream:
                        await stream.send(b"GET /hostname HTTP/1.0\r\n\r\n")
                        reply = await stream.receive()
                    if reply.startswith(b"HTTP/1."):
                        break
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
                await anyio.sleep(0.2)  # the service starts a moment after ready
        await engine.stop("sick")
        rec = await engine.store.get_vm("sick")
    assert rec is not None and rec.state == "exited" and rec.exit_reason == "stopped", rec
