"""``python -m mvm.cli``: the same as the mvmctl console script."""

from mvm.cli import main

main()
