"""Guest hardening on a real QEMU guest (issue 15): a sealed image's services start
with default signal dispositions (not the SIG_IGN(SIGINT/SIGQUIT) of /init's
background jobs), so SIGINT stops one, and the agent inside is the sealed build,
which has no exec code at all (it answers exec itself, not only the host's gate).
Workload processes of a sealed image are non-dumpable (its ELF programs are
execute-only; the prod Python wrapper also sets PR_SET_DUMPABLE=0), so their
/proc/<pid>/mem belongs to root: no other guest uid, nor their own, can read it or
ptrace them."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, VmRequest
from mvm.engine.base.errors import MvmError
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import Service
from mvm.engine.images.ir_image import load_ir_spec

from .test_cli import mvmctl

pytestmark = pytest.mark.qemu

# MemOwner: busybox's stat is an execute-only ELF in a sealed image, so it runs
# non-dumpable and its /proc/self/mem belongs to root, not to the service's uid.

ZERO = "0000000000000000"
# Uid: a sealed image's service has a uid of its own (the first is 1001).
WANT = {"SigIgn": ZERO, "SigBlk": ZERO, "Uid": "1001", "MemOwner": "0"}
SPEC = ImageSpec(
    name="hardsig",
    services={
        "sig": Service(
            command=(
                "grep -E '^Sig(Ign|Blk)' /proc/self/status; echo Uid: $(id -u); "
                "echo MemOwner: $(stat -c %u /proc/self/mem); exec sleep 600"
            ),
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
                            if len(got) == 4:
                                return got
                    raise AssertionError("the service log ended")

                assert await masks() == WANT
                # SIGINT ends it (rc 130, a failure), so /init starts it again.
                await agent.service("sig", "kill", sig=2)
                assert await masks() == WANT
            with pytest.raises(MvmError) as refused:
                await agent.exec(["id"])
            assert refused.value.code == "E_SEALED"
            assert "not in a sealed image's agent" in str(refused.value), str(refused.value)
        finally:
            with anyio.CancelScope(shield=True):
                await engine.stop("hardsig1")


PROBE_IR = """{ "schema_version": "0.1", "id": "hardfn", "apps": [ { "name": "hardfn", "source": { "kind": "local_path", "path": "./src", "include": ["**"], "exclude": [] }, "image": { "kind": "nix_packages", "packages": ["python3"] }, "entrypoints": [ { "kind": "function", "language": "python", "module": "app", "function": "probe", "format": "json", "primary": true } ], "resources": { "vcpus": 1, "memory_mb": 256, "boot_timeout_secs": 30 }, "dependencies": { "kind": "none" } } ], "volumes": [], "extensions": {}}"""  # noqa: E501
PROBE_PY = """import ctypes, os

def probe() -> dict:
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {
        "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),  # PR_GET_DUMPABLE
        "uid": os.getuid(),
        "mem_owner": os.stat("/proc/self/mem").st_uid,
        "sigign": status["SigIgn"].strip(),
    }
"""


def test_sealed_python_function_is_not_dumpable(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text(PROBE_PY)
    ir = tmp_path / "workload-ir.json"
    ir.write_text(PROBE_IR)

    async def build() -> Image:
        return await build_offline_image(await load_ir_spec(ir))

    image = trio.run(build)
    assert image.sealed
    up = mvmctl("up", str(image.directory), "--name", "hardfn1")
    assert up.returncode == 0, up.stderr
    try:
        out = mvmctl("invoke", "hardfn1")
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["uid"] != 0, got  # the function runs rootless
        assert got["dumpable"] == 0 and got["mem_owner"] == 0, got
        assert int(got["sigign"], 16) & 0b110 == 0, got  # no SIGINT/SIGQUIT ignored
    finally:
        down = mvmctl("down", "hardfn1")
    assert down.returncode == 0, down.stderr
