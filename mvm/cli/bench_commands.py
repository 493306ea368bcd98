"""``mvmctl bench``: the benchmark harness as a product feature.

Every run prints a one-line summary on stderr and the full JSON result (host,
versions, raw samples) on stdout or to ``--json``; ``--plot`` draws histograms,
step ECDFs with p50 lines and (boot) the phase split; a line per run goes to
stderr as it happens; budgets (``--p50-ms``, ``--max-ratio``) turn a benchmark
into a gate that exits non-zero, and ``compare`` flags regressions between two results.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from mvm.engine.base.errors import ConfigError, MvmError


class BudgetExceeded(MvmError):
    code = "E_BENCH_BUDGET"


async def cmd_bench(args: argparse.Namespace) -> int:
    if args.backend not in (None, "qemu") and args.bench_name == "boot":
        raise ConfigError(
            f"bench boot supports the qemu backend here, not {args.backend!r}",
            code="E_BENCH_BACKEND",
            hint="firecracker/cloud-hypervisor guests need a host with working KVM",
        )
    if args.plot:
        from mvm.bench.plot import require_matplotlib

        require_matplotlib()  # before the run: a missing library must not cost one
    module = importlib.import_module(f"mvm.bench.{args.bench_name}")
    accepted = inspect.signature(module.run).parameters
    offered = {
        "runs": args.runs,
        "warmup": args.warmup,
        "count": args.count,
        "backend": args.backend,
        "progress": _progress,
    }
    kwargs = {k: v for k, v in offered.items() if k in accepted and v is not None}
    if "progress" not in accepted:  # it reports no runs: at least say it started
        _progress(f"bench {args.bench_name}: running (no line per run for this benchmark)")
    from mvm.bench.home import throwaway_home

    # The VMs a benchmark starts never land in the user's `mvmctl ls` (issue 13).
    with throwaway_home(f"mvmb{args.bench_name[:2]}-"):
        result: dict[str, Any] = await module.run(**kwargs)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    else:
        print(text)
    if args.plot:
        from mvm.bench.plot import plot, sidecar_path

        plot(result, args.plot)
        print(f"plot: {args.plot} (numbers drawn: {sidecar_path(args.plot)})", file=sys.stderr)
    print(module.summary_line(result), file=sys.stderr)
    _gate(result, args)
    return 0


def _progress(line: str) -> None:
    """A benchmark's line per run: a long run shows it is alive, and how it goes."""
    print(line, file=sys.stderr, flush=True)


def _gate(result: dict[str, Any], args: argparse.Namespace) -> None:
    main_key = result.get("main_metric", "engine_s")
    p50 = result.get(main_key, {}).get("p50")
    if args.p50_ms is not None and p50 is not None and p50 * 1000 > args.p50_ms:
        raise BudgetExceeded(f"p50 {p50 * 1000:.1f} ms exceeds the budget of {args.p50_ms} ms")
    ratio = result.get("ratio_p50")
    if args.max_ratio is not None and ratio is not None and ratio > args.max_ratio:
        raise BudgetExceeded(f"p50 ratio {ratio:.3f} exceeds the budget of {args.max_ratio}")


async def cmd_compare(args: argparse.Namespace) -> int:
    from mvm.bench.common import compare

    try:
        old, new = (json.loads(Path(p).read_text()) for p in (args.old, args.new))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a result file: {exc}", code="E_BENCH_RESULT") from None
    worse = compare(old, new, args.threshold)
    for line in worse:
        print(f"regression: {line}")
    if worse:
        return 1
    print(f"no regression beyond {args.threshold * 100:.0f} %")
    return 0
