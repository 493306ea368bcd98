"""``mvmctl cp SRC VM:DST`` / ``mvmctl cp VM:SRC DST``: files and folders over the agent."""

from __future__ import annotations

import argparse
import re
import sys

from mvm.backends.guest.client import AgentClient
from mvm.backends.guest.files import GuestFiles
from mvm.engine.base.errors import ConfigError
from mvm.engine.vm.agent_access import open_vm_agent, require_accessible, running_vm

_REMOTE = re.compile(r"^(?P<vm>[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}):(?P<path>.*)$")


def split_remote(text: str) -> tuple[str, str] | None:
    """``VM:PATH`` -> (VM, PATH); a host path (``/x``, ``./a:b``, ``~/f``, ``f``) -> None."""
    if text.startswith(("/", ".", "~")):
        return None
    match = _REMOTE.match(text)
    if match is None:
        return None
    return match["vm"], match["path"] or "/"


def cp_plan(src: str, dst: str) -> tuple[str, str, str, str]:
    """(vm, direction 'put'|'get', local, remote); exactly one side names a VM."""
    remote_src, remote_dst = split_remote(src), split_remote(dst)
    if (remote_src is None) == (remote_dst is None):
        raise ConfigError(
            f"cp {src} {dst}: exactly one side must be VM:PATH",
            code="E_CP_ARGS",
            hint="mvmctl cp FILE VM:/path, or mvmctl cp VM:/path FILE",
        )
    if remote_dst is not None:
        return remote_dst[0], "put", src, remote_dst[1]
    assert remote_src is not None
    return remote_src[0], "get", dst, remote_src[1]


async def cmd_cp(args: argparse.Namespace) -> int:
    vm, direction, local, remote = cp_plan(args.src, args.dst)
    require_accessible(await running_vm(vm), "cp")
    async with open_vm_agent(vm) as client:

        async def agent() -> AgentClient:
            return client

        files = GuestFiles(agent)
        if direction == "put":
            where = await files.put(local, remote)
            print(f"{local} -> {vm}:{where}", file=sys.stderr)
        else:
            path = await files.get(remote, local)
            print(f"{vm}:{remote} -> {path}", file=sys.stderr)
    return 0
