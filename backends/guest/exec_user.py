"""``exec -u USER[:GROUP]``: run a guest command as another user, resolved in the guest.

The agent never gains a privilege (PROTOCOL.md: exec runs as the image's entrypoint
uid through spawnd, which never takes a uid from a request). So ``-u`` does not widen
the agent: when exec already runs as root (a root entrypoint), the command is wrapped
in the image's own ``mvm-agent setpriv --reuid=U --regid=G --clear-groups
--no-new-privs``, the drop /init itself uses. The name is looked up in the guest's
/etc/passwd (and the group in /etc/group); a number needs no entry. When exec runs
as a non-root uid, only that same uid is possible and any other is refused with
E_EXEC_USER: asking for more would need spawnd to trust the request.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import AccessDenied, ConfigError, NotFoundError

SETPRIV = "/usr/bin/mvm-agent"
_PROBE = "id -u; echo ---; cat /etc/passwd 2>/dev/null; echo ---; cat /etc/group 2>/dev/null"


@attrs.frozen
class GuestUser:
    uid: int
    gid: int
    name: str
    home: str


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str, passwd: str, group: str) -> GuestUser:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` against the guest's files."""
    user, _, grp = spec.partition(":")
    if not user:
        raise ConfigError(
            f"-u {spec!r}: no user",
            code="E_EXEC_USER_SPEC",
            hint="give -u NAME, -u UID or -u UID:GID",
        )
    users = [row for row in _table(passwd) if len(row) >= 7]
    entry = next((r for r in users if r[0] == user), None)
    if entry is None and user.isdigit():
        entry = next((r for r in users if r[2] == user), None)
    if entry is None and not user.isdigit():
        raise NotFoundError(
            f"the guest has no user {user!r} in /etc/passwd",
            code="E_EXEC_USER_UNKNOWN",
            hint="give a uid, or a user the image has",
        )
    uid = int(entry[2]) if entry else int(user)
    gid = int(entry[3]) if entry and entry[3].isdigit() else uid
    name = entry[0] if entry else str(uid)
    home = entry[5] if entry and entry[5] else "/"
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            row = next((r for r in _table(group) if len(r) >= 3 and r[0] == grp), None)
            if row is None or not row[2].isdigit():
                raise NotFoundError(
                    f"the guest has no group {grp!r} in /etc/group",
                    code="E_EXEC_USER_UNKNOWN",
                    hint="give a gid, or a group the image has",
                )
            gid = int(row[2])
    return GuestUser(uid=uid, gid=gid, name=name, home=home)


async def exec_as(
    client: AgentClient, spec: str, argv: Sequence[str], env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and env that run ``argv`` as ``spec`` (see the module docstring)."""
    probe = await client.exec(["/bin/sh", "-c", _PROBE], timeout=30)
    parts = probe.stdout.decode(errors="replace").split("---\n")
    if probe.code != 0 or len(parts) != 3 or not parts[0].strip().isdigit():
        raise ConfigError(
            "cannot read the guest's uid and /etc/passwd for -u",
            code="E_EXEC_USER_SPEC",
            hint="the image needs busybox id and cat",
        )
    current = int(parts[0].strip())
    user = resolve_user(spec, parts[1], parts[2])
    if user.uid == current and (current != 0 or user.gid == 0):
        return list(argv), env
    if current != 0:
        raise AccessDenied(
            f"-u {spec}: exec runs as the image's entrypoint uid {current}, and the guest "
            "agent never gains privileges to become another user",
            code="E_EXEC_USER",
            hint="build the image with a root entrypoint for -u, or drop -u",
        )
    wrapper = [
        SETPRIV,
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--",
    ]
    # spawnd sets HOME/USER/LOGNAME of the entrypoint uid after the request's env,
    # so the target user's own go in through env(1), after the drop.
    names = {"HOME": user.home, "USER": user.name, "LOGNAME": user.name}
    names.update({k: v for k, v in env.items() if k in names})
    return [*wrapper, "env", *(f"{k}={v}" for k, v in names.items()), *argv], env
