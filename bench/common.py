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
from pathlib import Path
from typing import Any


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
