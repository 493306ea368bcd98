"""Guest hardening on a real QEMU guest (issue 15): a sealed image's services start
with default signal dispositions (not the SIG_IGN(SIGINT/SIGQUIT) of /init's
background jobs), so SIGINT stops one, and the agent inside is the sealed build,
which has no exec code at all (it answers exec itself, not only the host's gate)."""

from __future__ import annotations

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, VmRequest
from mvm.engine.base.errors import MvmError
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import Service

pytestmark = pytest.mark.qemu

ZERO = "0000000000000000"
SPEC = ImageSpec(
    name="hardsig",
    services={
        "sig": Service(
            command="grep -E '^Sig(Ign|Blk)' /proc/self/status; exec sleep 600",
            restart="on-failure",
        )
    },
)


@pytest.fixture(scope="module")
def hard_image() -> Image:
    assert SPEC.sealed
    return trio.run(build_offline_image, SPEC)


async def test_sealed_service_gets_default_signals_and_the_agent_has_no_exec(
    hard_image: Image,
) -> None:
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="hardsig1", image_dir=str(hard_image.directory)), hard_image
        )
        try:
            agent = await vm.agent()
            async with agent.follow_logs("sig") as lines:

                async def masks() -> dict[str, str]:
                    got: dict[str, str] = {}
                    with anyio.fail_after(90):
                        async for line in lines:
                            key, _, value = line.line.partition(":")
                            got[key] = value.strip()
                            if len(got) == 2:
                                return got
                    raise AssertionError("the service log ended")

                assert await masks() == {"SigIgn": ZERO, "SigBlk": ZERO}
                # SIGINT ends it (rc 130, a failure), so /init starts it again.
                await agent.service("sig", "kill", sig=2)
                assert await masks() == {"SigIgn": ZERO, "SigBlk": ZERO}
            with pytest.raises(MvmError) as refused:
                await agent.exec(["id"])
            assert refused.value.code == "E_SEALED"
            assert "not in a sealed image's agent" in str(refused.value), str(refused.value)
        finally:
            with anyio.CancelScope(shield=True):
                await engine.stop("hardsig1")
