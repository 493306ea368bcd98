"""Who owns a VM: the process that runs its RuntimeVM (an engine, or a detached VM's shim).

The store keeps the owner as ``"<pid>:<start time>"`` (its column predates this type);
this module is the only place that reads or writes that text. An owner is alive only if
a process with that pid exists and started at that time, so a recycled pid never keeps
a dead VM's row alive.
"""

from __future__ import annotations

import os

import attrs

from mvm.engine.base.process import is_same_process, process_start_time


@attrs.frozen
class Owner:
    pid: int
    start_time: int

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, process_start_time(pid) or 0)

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        if not text or ":" not in text:
            return None
        pid_text, start_text = text.split(":", 1)
        try:
            return cls(int(pid_text), int(start_text))
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.pid}:{self.start_time}"

    @property
    def alive(self) -> bool:
        return is_same_process(self.pid, self.start_time)

    @property
    def is_me(self) -> bool:
        return self.pid == os.getpid()


def owner_alive(text: str | None) -> bool:
    owner = Owner.parse(text)
    return owner is not None and owner.alive


def engine_owner() -> str:
    """This process as the owner text the store keeps."""
    return str(Owner.me())
