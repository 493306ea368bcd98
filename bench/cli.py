"""CLI start-up cost: wall time of ``mvmctl --help`` and ``mvmctl ls`` as a user runs them.

Each sample is a fresh process (the interpreter, the imports, argparse, and for ``ls``
opening the state store), started from the same venv as the running ``mvmctl``, in an
empty ``$MVM_HOME`` made for the run. The baseline, measured interleaved in the same run,
is ``python -c pass`` with the same interpreter and flags: the floor any Python CLI pays,
so ``help_over_python`` says how much of the cost is ours. Targets (issue 13/17):
``--help`` <= 0.3 s, ``ls`` <= 0.3 s here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mvm.bench.common import host_info, summary

TARGETS_S = {"help": 0.3, "ls": 0.3}


def _mvmctl() -> list[str]:
    script = Path(sys.executable).with_name("mvmctl")
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "mvm.cli"]


def _time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _measure(runs: int, warmup: int) -> dict[str, list[float]]:
    home = tempfile.mkdtemp(prefix="mvmbc-", dir="/tmp")
    env = {**os.environ, "MVM_HOME": home}
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "help": [*_mvmctl(), "--help"],
        "ls": [*_mvmctl(), "ls"],
    }
    samples: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(warmup + runs):
        for key, argv in commands.items():
            elapsed = _time(argv, env)
            if i >= warmup:
                samples[key].append(elapsed)
    return samples


async def run(runs: int = 20, warmup: int = 2) -> dict[str, Any]:
    samples = await anyio.to_thread.run_sync(_measure, runs, warmup)
    stats = {k: summary(v) for k, v in samples.items()}
    return {
        "benchmark": "cli",
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "warmup": warmup,
        "main_metric": "help_s",
        "help_s": stats["help"],
        "ls_s": stats["ls"],
        "python_s": stats["python"],
        "help_over_python": stats["help"]["p50"] / stats["python"]["p50"],
        "targets_s": TARGETS_S,
        "samples": samples,
    }


def summary_line(result: dict[str, Any]) -> str:
    ms = {k: result[f"{k}_s"]["p50"] * 1000 for k in ("help", "ls", "python")}
    return (
        f"cli: --help p50 {ms['help']:.0f} ms (target <= {TARGETS_S['help'] * 1000:.0f}), "
        f"ls p50 {ms['ls']:.0f} ms (target <= {TARGETS_S['ls'] * 1000:.0f}); "
        f"bare python {ms['python']:.0f} ms"
    )
