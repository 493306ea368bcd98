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


def plot(result: dict[str, Any], path: str) -> None:
    """Histogram + CDF of every sample series in ``result["samples"]`` (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from mvm.engine.base.errors import ConfigError

        raise ConfigError(
            "--plot needs matplotlib",
            code="E_BENCH_PLOT",
            hint="./scripts/setup --bench (or .venv/bin/pip install 'mvm-engine[bench]')",
        ) from None
    series = {
        k: [float(x) for x in v]
        for k, v in result.get("samples", {}).items()
        if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v)
    }
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in series.items():
        hist.hist(values, bins=min(30, max(5, len(values) // 2)), alpha=0.6, label=name)
        ordered = sorted(values)
        cdf.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=name)
    unit = result.get("unit", "s")
    hist.set_xlabel(unit)
    hist.set_ylabel("runs")
    cdf.set_xlabel(unit)
    cdf.set_ylabel("fraction of runs")
    for ax in (hist, cdf):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"mvm bench {result.get('benchmark')} ({result.get('backend', '')}, "
        f"{result.get('accel', '')}) on {result.get('host', {}).get('cpu', '?')}"
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
