"""Seccomp tiers and per-service uids in a booted guest (issue 15; seeds W2.4, W2.1).

Two small images, one boot each, on the real kernel under QEMU:

* a sealed services image with the default ``standard`` tier: services ``a`` and
  ``b`` get uids of their own (1001, 1002; ``a``'s prestart runs as ``a``, and ``a``
  writes the rw data volume, which belongs to the entrypoint's group), and the
  service ``root`` (``uid = 0``: root, so only the filter can refuse it) sees
  ``Seccomp: 2`` and EPERM from mount(2) and swapoff(2), and the agent runs filtered;
* a dev image with ``seccomp = "unrestricted"``, where the same mount as root works.

The signed plan's label and the audit entries name the tier too.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mvm import Engine, Image, ImageSpec, Service, VmRequest, Volume
from mvm.backends.guest.client import AgentClient
from mvm.engine.admission.audit import PLAN_ADMITTED, PLAN_LAUNCHED, AuditLog, audit_db_path
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.vm.uid_check import declared_uids, uid_check_line

pytestmark = pytest.mark.qemu

FOREVER = "exec sleep 100000"
ROOT_PROBE = (
    "grep ^Seccomp: /proc/self/status | tr -d '\\t'; mkdir -p /tmp/x; "
    "mount -t tmpfs x /tmp/x 2>&1; echo mount=$?; swapoff /dev/vda 2>&1; echo swapoff=$?; "
    'for c in /proc/[0-9]*/comm; do [ "$(cat $c)" = mvm-agent ] && '
    "grep ^Seccomp: ${c%comm}status | tr -d '\\t' | sed s/^/agent-/; done; "
    f"echo done; {FOREVER}"
)
UID_PROBE = (
    f"echo \"uid=$(id -u) $(grep ^Seccomp: /proc/self/status | tr -d '\\t')\"; echo done; {FOREVER}"
)
# a service with a uid of its own still writes the rw data volume (the app group's)
DATA_PROBE = (
    "echo \"uid=$(id -u) $(grep ^Seccomp: /proc/self/status | tr -d '\\t')\"; "
    "echo hi > /mnt/data/from-a && echo data=ok || echo data=refused; "
    f"echo done; {FOREVER}"
)

HARDENED = ImageSpec(
    name="seccomp-std",
    services={
        "a": Service(command=DATA_PROBE, pre_start='echo "prestart uid=$(id -u)"'),
        "b": Service(command=UID_PROBE),
        "root": Service(command=ROOT_PROBE, uid=0),
    },
)
LOOSE = ImageSpec(name="seccomp-off", shell="/bin/sh", dev=True, seccomp="unrestricted")


async def _until_done(vm_agent: AgentClient, services: tuple[str, ...]) -> dict[str, list[str]]:
    """Each service's log lines up to its ``done`` marker (followed: no polling)."""
    out: dict[str, list[str]] = {s: [] for s in services}
    pending = set(services)
    with anyio.fail_after(120):
        async with vm_agent.follow_logs() as lines:
            async for line in lines:
                if line.service in out and line.service in pending:
                    out[line.service].append(line.line)
                    if line.line == "done":
                        pending.discard(line.service)
                if not pending:
                    break
    return out


async def test_standard_tier_and_own_service_uids_then_unrestricted(tmp_path: Path) -> None:
    hardened: Image = await build_offline_image(HARDENED)
    loose: Image = await build_offline_image(LOOSE)
    assert hardened.meta["seccomp_tier"] == "standard"
    assert hardened.meta["uids"]["services"] == {"a": 1001, "b": 1002, "root": 0}
    async with Engine.open() as engine:
        data = Volume(host=str(tmp_path), guest="/mnt/data", size_mb=16)
        vm = await engine.start(
            VmRequest(name="sc-std", image_dir=str(hardened.directory), volumes=(data,))
        )
        try:
            client = await vm.agent()
            logs = await _until_done(client, ("a", "b", "root"))
            assert logs["a"] == ["prestart uid=1001", "uid=1001 Seccomp:2", "data=ok", "done"]
            assert logs["b"] == ["uid=1002 Seccomp:2", "done"]
            root = logs["root"]
            assert root[0] == "Seccomp:2"
            assert "mount=0" not in root and "swapoff=0" not in root
            assert any("ermission denied" in x or "not permitted" in x for x in root), root
            assert "agent-Seccomp:2" in root  # the agent too (what `run` starts inherits it)
            # status's cross-check: every service runs as its own declared uid
            line = uid_check_line(
                declared_uids(hardened.meta), await client.uids(), hardened.meta["uids"]["services"]
            )
            assert "service a 1001 (ok)" in line and "service b 1002 (ok)" in line, line
            assert "MISMATCH" not in line, line
        finally:
            await engine.stop("sc-std")

        vm = await engine.start(VmRequest(name="sc-off", image_dir=str(loose.directory)))
        try:
            client = await vm.agent()
            probe = "grep ^Seccomp: /proc/self/status; mkdir -p /tmp/x && mount -t tmpfs x /tmp/x"
            result = await client.exec(["sh", "-c", probe + " && echo mounted"])
            assert result.stdout.decode().split() == ["Seccomp:", "0", "mounted"], result
        finally:
            await engine.stop("sc-off")

    tiers = {
        (e.data["vm"], e.event): e.data.get("seccomp_tier")
        for e in AuditLog(audit_db_path()).entries()
        if e.event in (PLAN_ADMITTED, PLAN_LAUNCHED)
    }
    assert tiers[("sc-std", PLAN_ADMITTED)] == tiers[("sc-std", PLAN_LAUNCHED)] == "standard"
    assert tiers[("sc-off", PLAN_ADMITTED)] == "unrestricted"
