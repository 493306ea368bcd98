"""What mvmctl accepts, apart from what it does: the argparse tree of every command.

Building the parser (``mvmctl --help``, and the start of every command) imports only
this package: each subcommand's handler is a :class:`LazyCommand` naming
``module:function`` in ``mvm.cli``, imported when that command runs. So ``--help`` does
not pay for the engine, the backends and the actors, and ``mvmctl ls`` pays only for
what ``ls`` uses. Each module here mirrors one ``mvm/cli/*_commands.py``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

Command = Callable[[argparse.Namespace], Awaitable[int]]
if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    from typing import TypeAlias

    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


class LazyCommand:
    """A command handler given as ``"module:function"`` (in ``mvm.cli``), imported on call."""

    __slots__ = ("target",)

    def __init__(self, target: str) -> None:
        self.target = target

    def resolve(self) -> Command:
        module, _, name = self.target.partition(":")
        return cast(Command, getattr(importlib.import_module(f"mvm.cli.{module}"), name))

    async def __call__(self, args: argparse.Namespace) -> int:
        return await self.resolve()(args)

    def __repr__(self) -> str:
        return f"LazyCommand({self.target!r})"


lazy = LazyCommand
