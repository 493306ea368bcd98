"""mvmctl, the command line on top of the engine."""

from mvm.cli.app import main

__all__ = ["main"]
