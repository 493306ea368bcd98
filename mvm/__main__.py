"""``python -m mvm entry.py``: the same as ``mvmctl emit entry.py`` (canonical IR to
``$MVM_IR_OUT`` or stdout). The entry file runs in a child under ``MVM_EMITTING=1``;
its workload functions are never called."""

from __future__ import annotations

import sys
from pathlib import Path

from mvm.emit import emit_ir, write_ir
from mvm.engine.base.errors import MvmError


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        sys.stderr.write("usage: python -m mvm ENTRY.py|ENTRY.ts\n")
        return 2
    try:
        write_ir(emit_ir(Path(argv[0])))
    except MvmError as exc:
        for err in getattr(exc, "all_errors", (exc,)):
            sys.stderr.write(err.one_line() + "\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
