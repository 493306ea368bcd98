"""The launch plan of a running VM, kept in its run directory for re-adoption.

A detached VM outlives the engine that started it; the engine that adopts it
later (after ``detach``, or after the first one was killed) needs the exact
sockets and paths the VMM was started with, so they are written next to it.
The plan is the whole VMM configuration (QEMU's argv, or the REST calls sent to
Firecracker / Cloud Hypervisor after spawn) and ``start`` executes it as given,
so this file records what was really sent. Plan files written before the calls
were part of the plan load with none (adoption needs only the sockets).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cattrs

from mvm.backends.abc.types import LaunchPlan
from mvm.engine.base.errors import StateError
from mvm.engine.base.paths import write_private
from mvm.engine.base.runfiles import PLAN_FILE

_conv = cattrs.Converter()
_conv.register_unstructure_hook(Path, str)
_conv.register_structure_hook(Path, lambda value, _: Path(value))


def save_plan(plan: LaunchPlan) -> Path:
    path = plan.run_dir / PLAN_FILE
    tmp = path.with_name(PLAN_FILE + ".tmp")
    write_private(tmp, json.dumps(_conv.unstructure(plan), sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load_plan(run_dir: Path) -> LaunchPlan:
    path = run_dir / PLAN_FILE
    try:
        return _conv.structure(json.loads(path.read_text()), LaunchPlan)
    except (OSError, ValueError, cattrs.BaseValidationError) as exc:
        raise StateError(
            f"cannot read the launch plan of the VM in {run_dir}: {exc}",
            code="E_PLAN_FILE",
            hint="stop the VM with `mvmctl down NAME`",
        ) from None
