"""``mvmctl bench``: the benchmark harness as a product feature.

Every run prints a one-line summary on stderr and the full JSON result (host,
versions, raw samples) on stdout or to ``--json``; ``--plot`` draws a histogram
and CDF; budgets (``--p50-ms``, ``--max-ratio``) turn a benchmark into a gate
that exits non-zero, and ``compare`` flags regressions between two results.
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

_BENCHES = {
    "boot": "boot-to-agent-ready p50/p90/p99 vs a bare QEMU command line",
    "forward": "forwarded-port throughput and latency vs direct loopback",
    "scale": "control-plane CPU and RSS per idle VM at N VMs (stub VMM)",
    "health": "host CPU of N health loops at 1 s against a stub agent",
    "actors": "actor message round-trip latency and throughput",
    "clone": "clone-to-agent-ready p50/p90 vs cold boot p50 (QEMU snapshot restore)",
    "invoke": "function invoke p50: cold (oneshot) vs warm (pooled wrappers) in a real guest",
    "agent_language": "guest agent C vs Python: boot-to-hello, RSS, disk, request RTT",
    "cli": "mvmctl --help and mvmctl ls wall time vs a bare python start",
}


class BudgetExceeded(MvmError):
    code = "E_BENCH_BUDGET"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="benchmarks with JSON results, plots and budgets")
    verbs = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, helptext in _BENCHES.items():
        p = verbs.add_parser(name, help=helptext)
        p.add_argument("--runs", type=int, help="samples or rounds (default: per benchmark)")
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--backend", help="qemu (default for boot) or stub")
        p.add_argument("--count", type=int, default=None, help="N for scale/health")
        p.add_argument("--json", type=Path, help="write the result here (else stdout)")
        p.add_argument("--plot", type=Path, help="write a histogram + CDF PNG here")
        p.add_argument("--p50-ms", type=float, help="fail if the main p50 exceeds this")
        p.add_argument("--max-ratio", type=float, help="fail if the p50 ratio exceeds this")
        p.set_defaults(func=cmd_bench, bench_name=name)
    p = verbs.add_parser("compare", help="flag regressions between two result files")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--threshold", type=float, default=0.10, help="0.10 = 10 %% worse")
    p.set_defaults(func=cmd_compare)


async def cmd_bench(args: argparse.Namespace) -> int:
    if args.backend not in (None, "qemu") and args.bench_name == "boot":
        raise ConfigError(
            f"bench boot supports the qemu backend here, not {args.backend!r}",
            code="E_BENCH_BACKEND",
            hint="firecracker/cloud-hypervisor guests need a host with working KVM",
        )
    module = importlib.import_module(f"mvm.bench.{args.bench_name}")
    accepted = inspect.signature(module.run).parameters
    offered = {
        "runs": args.runs,
        "warmup": args.warmup,
        "count": args.count,
        "backend": args.backend,
    }
    kwargs = {k: v for k, v in offered.items() if k in accepted and v is not None}
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
        from mvm.bench.common import plot

        plot(result, str(args.plot))
    print(module.summary_line(result), file=sys.stderr)
    _gate(result, args)
    return 0


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
