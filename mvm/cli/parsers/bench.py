"""The arguments of the commands in ``mvm/cli/bench_commands.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers

BENCHES = {
    "boot": "boot-to-agent-ready p50/p90/p99 vs a bare QEMU command line",
    "forward": "forwarded-port throughput and latency vs direct loopback",
    "scale": "control-plane CPU and RSS per idle VM at N VMs (stub VMM)",
    "health": "host CPU of N health loops at 1 s against a stub agent",
    "actors": "actor message round-trip latency and throughput",
    "clone": "clone-to-agent-ready p50/p90 vs cold boot p50 (QEMU snapshot restore)",
    "invoke": "function invoke p50: cold (oneshot) vs warm (pooled wrappers) in a real guest",
    "agent_language": "guest agent C vs Python: boot-to-hello, RSS, disk, request RTT",
    "cli": "mvmctl --help and mvmctl ls wall time vs a bare python start",
    "up": "mvmctl up until the forwarded page answers vs the engine's boot (same run)",
    "fleet": "N stub-VM starts across a 4-node Ray cluster; one fleet start vs local",
    "build": "builder VM boot, cold / warm build of the hello flake, cache hit (warm/cold)",
}


def register(sub: SubParsers) -> None:
    bench = sub.add_parser("bench", help="benchmarks with JSON results, plots and budgets")
    verbs = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, helptext in BENCHES.items():
        p = verbs.add_parser(name, help=helptext)
        p.add_argument("--runs", type=int, help="samples or rounds (default: per benchmark)")
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--backend", help="qemu (default for boot) or stub")
        p.add_argument("--count", type=int, default=None, help="N for scale/health")
        p.add_argument("--json", type=Path, help="write the result here (else stdout)")
        p.add_argument(
            "--plot",
            type=Path,
            help="write a PNG (histogram, step ECDF, p50s, ratio; boot: phase split) "
            "and the numbers drawn to NAME.plot.json",
        )
        p.add_argument("--p50-ms", type=float, help="fail if the main p50 exceeds this")
        p.add_argument("--max-ratio", type=float, help="fail if the p50 ratio exceeds this")
        p.set_defaults(handler="bench_commands:cmd_bench", bench_name=name)
    p = verbs.add_parser("compare", help="flag regressions between two result files")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--threshold", type=float, default=0.10, help="0.10 = 10 %% worse")
    p.set_defaults(handler="bench_commands:cmd_compare")
