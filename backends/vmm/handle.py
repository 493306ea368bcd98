"""The handle on one VMM process: pid, kernel start time, and the child if it is ours.

A VMM is either our child (``proc`` set: we can reap it and get its exit status,
and its pid cannot be reused before we do) or adopted from an earlier engine
(``proc`` None: identity is pid + start time, checked before every signal, and
its exit status is unknowable).
"""

from __future__ import annotations

import subprocess
from typing import TypeVar

import attrs

from mvm.backends.abc.types import LaunchPlan, VmmHandle
from mvm.engine.base.process import is_same_process, process_start_time

UNKNOWN_STATUS = -1  # exit status of a VMM that is not our child (adopted)

H = TypeVar("H", bound="VmmProcess")


@attrs.define
class VmmProcess:
    """A VMM process; ``proc`` is set when this process spawned it (so it can reap it)."""

    _pid: int
    _plan: LaunchPlan
    start_time: int | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def plan(self) -> LaunchPlan:
        return self._plan

    @classmethod
    def adopt(cls: type[H], plan: LaunchPlan, pid: int) -> H:
        """A handle on a VMM started by another engine, identified from now on by its
        current start time (re-adoption checks the recorded one before calling this)."""
        return cls(pid, plan, process_start_time(pid), None)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return is_same_process(self._pid, self.start_time)

    def status(self) -> int | None:
        """Exit status once exited (UNKNOWN_STATUS for an adopted VMM), else None."""
        if self.proc is not None:
            return self.proc.poll()
        return None if self.alive() else UNKNOWN_STATUS


def own(handle: VmmHandle, kind: type[H]) -> H:
    """``handle`` as this backend's handle type; another backend's is a programming error."""
    if not isinstance(handle, kind):
        raise TypeError(f"not a {kind.__name__}: {handle!r}")
    return handle
