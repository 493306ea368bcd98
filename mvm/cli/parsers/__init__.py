"""What mvmctl accepts, apart from what it does: the argparse tree of every command.

Each module here mirrors one ``mvm/cli/*_commands.py`` and names its handlers by
``handler="module:function"`` (a coroutine function in ``mvm.cli``), which
``mvm.cli.app`` imports only once the arguments are parsed. So building the parser
(``mvmctl --help``, and the start of every command) imports this package and nothing
of the engine, backends or actors, and ``mvmctl ls`` pays only for what ``ls`` uses.
Nothing here imports a command module.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    from typing import TypeAlias

    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
