"""Shared helpers for benchmarks: host facts, percentiles, JSON output.

Every result records the host, kernel, accelerator and versions next to the raw
samples, and reports medians over N runs after warm-ups (never mixing cold and
warm runs), so numbers stay comparable and honest on noisy machines.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]
"""Where a benchmark reports each run as it happens (the CLI: a line on stderr)."""


def round_label(i: int, warmup: int, runs: int) -> str:
    """``warmup 1/2`` for warm-up rounds, then ``3/20`` for the timed ones."""
    return f"warmup {i + 1}/{warmup}" if i < warmup else f"{i - warmup + 1}/{runs}"


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50": statistics.median(samples) if samples else float("nan"),
        "p90": percentile(samples, 0.90),
        "p99": percentile(samples, 0.99),
        "min": min(samples) if samples else float("nan"),
        "max": max(samples) if samples else float("nan"),
        "mean": statistics.fmean(samples) if samples else float("nan"),
    }


def host_info() -> dict[str, Any]:
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "qemu": qemu[0] if qemu else None,
        "kvm_device": os.path.exists("/dev/kvm"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(result: dict[str, Any], out: str | None) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)


def compare(old: dict[str, Any], new: dict[str, Any], threshold: float) -> list[str]:
    """Metrics (p50s and ratios) that got worse by more than ``threshold`` (0.10 = 10 %)."""
    worse: list[str] = []
    for key, old_value, new_value in _comparable(old, new):
        if old_value > 0 and (new_value - old_value) / old_value > threshold:
            change = (new_value / old_value - 1) * 100
            worse.append(f"{key}: {old_value:.4g} -> {new_value:.4g} (+{change:.1f} %)")
    return worse


def _comparable(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Lower-is-better numbers present in both results: every ``p50`` and ``ratio_*``."""
    found: list[tuple[str, float, float]] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) & set(b)):
                if k in ("samples", "host"):
                    continue
                walk(a[k], b[k], f"{path}.{k}" if path else k)
        elif isinstance(a, int | float) and isinstance(b, int | float):
            leaf = path.rsplit(".", 1)[-1]
            if leaf == "p50" or leaf.startswith("ratio"):
                found.append((path, float(a), float(b)))

    walk(old, new, "")
    return found


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
