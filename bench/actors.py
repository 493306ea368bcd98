"""Actor runtime micro-benchmark: ask/reply latency and message throughput.

One event loop, one supervisor with N echo actors (default 1,000). Per run:

* start: time to start all N actors (each ``start()`` waits for ``started()``),
* ask latency: sequential ``ask()`` round trips to one actor (request carries a
  Reply, the actor answers, the caller wakes up),
* ask throughput: one client task per actor, each doing K asks, all concurrent,
* send throughput: one-way ``send()`` of K messages to each actor, until every
  actor has counted its K messages,
* stop: leaving the supervisor (reverse-order teardown of all N actors).

Runs after 2 warm-ups; medians over runs are reported next to the host facts.
Both anyio backends are measured (trio, asyncio).

    python bench/actors.py --runs 7 --json bench/results/actors.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from typing import Any

import anyio
import anyio.abc
import attrs

from mvm.bench.common import host_info, summary, write_result
from mvm.engine.base.log import configure_logging
from mvm.engine.runtime.actor import Actor, Reply, ask
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor


@attrs.frozen
class Ping:
    value: int
    reply: Reply[int] | None = None


class Echo(Actor[Ping]):
    def __init__(self, name: str, expect: int) -> None:
        super().__init__(name, inbox_size=256)
        self.expect = expect
        self.count = 0
        self.all_seen = anyio.Event()

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for msg in self.inbox:
            if msg.reply is not None:
                msg.reply.send(msg.value)
            else:
                self.count += 1
                if self.count == self.expect:
                    self.all_seen.set()


async def one_run(actors_n: int, asks_per_actor: int, latency_samples: int) -> dict[str, Any]:
    clock = time.perf_counter
    t0 = clock()
    async with Supervisor("bench") as sup:
        actors = [Echo(f"echo{i}", asks_per_actor) for i in range(actors_n)]
        for actor in actors:
            await sup.start(actor, policy=RestartPolicy(kind="never"))
        start_s = clock() - t0

        latencies = []
        target = actors[0]
        for i in range(latency_samples):
            t = clock()
            answer = await ask(target, partial(Ping, i), timeout=5)
            latencies.append((clock() - t) * 1e6)
            assert answer == i

        async def client(actor: Echo) -> None:
            for i in range(asks_per_actor):
                await ask(actor, partial(Ping, i), timeout=30)

        t = clock()
        async with anyio.create_task_group() as tg:
            for actor in actors:
                tg.start_soon(client, actor)
        ask_elapsed = clock() - t

        t = clock()
        for i in range(asks_per_actor):
            for actor in actors:
                await actor.send(Ping(i))
        for actor in actors:
            await actor.all_seen.wait()
        send_elapsed = clock() - t

        t_stop = clock()
    stop_s = clock() - t_stop
    total = actors_n * asks_per_actor
    return {
        "start_all_s": start_s,
        "ask_latency_us_p50": statistics.median(latencies),
        "ask_latency_us": latencies,
        "ask_throughput_per_s": total / ask_elapsed,
        "send_throughput_per_s": total / send_elapsed,
        "stop_all_s": stop_s,
    }


async def bench_backend(args: argparse.Namespace) -> dict[str, Any]:
    for _ in range(args.warmups):
        await one_run(args.actors, args.asks, args.latency_samples)
    runs = [await one_run(args.actors, args.asks, args.latency_samples) for _ in range(args.runs)]
    pooled = [x for run in runs for x in run["ask_latency_us"]]
    keys = [
        "start_all_s",
        "ask_latency_us_p50",
        "ask_throughput_per_s",
        "send_throughput_per_s",
        "stop_all_s",
    ]
    return {
        "median_over_runs": {key: statistics.median(run[key] for run in runs) for key in keys},
        "per_run": [{key: run[key] for key in keys} for run in runs],
        "ask_latency_us_pooled": summary(pooled),
    }


async def run(runs: int = 7, warmup: int = 2, count: int = 1000) -> dict[str, Any]:
    """``mvmctl bench actors``: the same measurement on the caller's event loop."""
    args = argparse.Namespace(
        actors=count, asks=20, latency_samples=2000, runs=runs, warmups=warmup
    )
    configure_logging(level="warning")
    measured = await bench_backend(args)
    return {
        "benchmark": "actors",
        "backend": "engine",
        "unit": "us",
        "host": host_info(),
        "params": {"actors": count, "asks_per_actor": 20, "runs": runs, "warmups": warmup},
        "results": measured,
        "samples": {},
    }


def summary_line(result: dict[str, Any]) -> str:
    med = result["results"]["median_over_runs"]
    return (
        f"actors (N={result['params']['actors']}): ask p50 {med['ask_latency_us_p50']:.0f} us, "
        f"{med['ask_throughput_per_s']:.0f} asks/s, {med['send_throughput_per_s']:.0f} sends/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument("--asks", type=int, default=20, help="asks (and sends) per actor")
    parser.add_argument("--latency-samples", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--backend", choices=["trio", "asyncio", "both"], default="both")
    parser.add_argument("--json", dest="out", default=None, help="also write the result here")
    args = parser.parse_args()
    configure_logging(level="warning")  # lifecycle lines would dominate the timings
    backends = ["trio", "asyncio"] if args.backend == "both" else [args.backend]
    result: dict[str, Any] = {
        "benchmark": "actors",
        "params": {
            "actors": args.actors,
            "asks_per_actor": args.asks,
            "latency_samples": args.latency_samples,
            "runs": args.runs,
            "warmups": args.warmups,
        },
        "host": host_info(),
        "results": {b: anyio.run(bench_backend, args, backend=b) for b in backends},
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
