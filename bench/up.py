"""What a user waits for: ``mvmctl up demo -p PORT:80`` until the forwarded page answers,
against the engine's own boot (``Engine.start`` until the agent's hello), in one run.

Rounds alternate, so drift on a noisy host hits both alike:

* engine: ``engine.start`` of the demo image with the same port forward, timed to ready
  (the number every other boot benchmark reports), then to the first HTTP 200 through
  the forward (what the engine adds before a page can be served: httpd's own start);
* cli: a fresh ``mvmctl up`` process (Python start, argument parsing, the image cache
  lookup, the detached supervisor, the boot) until the first HTTP 200 on the host port,
  then ``mvmctl down``.

The target (issue 17) is cli-to-page / engine boot <= 1.2 at p50. The page is polled
every 5 ms: the poll is the measurement, not a synchronisation.

    mvmctl bench up --runs 10 --json bench/results/up.json
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from mvm import Engine, Image, PortMapping, VmRequest
from mvm.backends.demo import DEMO_SPEC
from mvm.bench.common import Progress, free_port, host_info, round_label, summary
from mvm.engine.builders.offline_image import build_offline_image

TARGET_RATIO = 1.2
POLL_S = 0.005
PAGE_TIMEOUT_S = 60.0


def _status_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return False
    return head.startswith(b"HTTP/1.") and head.split(b" ", 2)[1:2] == [b"200"]


async def _until_page(port: int, t0: float) -> float:
    deadline = t0 + PAGE_TIMEOUT_S
    while not await anyio.to_thread.run_sync(_status_ok, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no HTTP 200 on 127.0.0.1:{port} within {PAGE_TIMEOUT_S} s")
        await anyio.sleep(POLL_S)
    return time.monotonic() - t0


async def engine_round(engine: Engine, image: Image, i: int) -> tuple[float, float]:
    """(boot to ready, boot to first page) of one engine start with a forward."""
    port = free_port()
    request = VmRequest(
        name=f"eng{i}", image_dir=str(image.directory), ports=(PortMapping(port, 80),)
    )
    t0 = time.monotonic()
    vm = await engine.start(request, image)
    ready = time.monotonic() - t0
    page = await _until_page(port, t0)
    await engine.stop(vm.name)
    return ready, page


async def cli_round(i: int) -> float:
    """A fresh `mvmctl up demo -p PORT:80` process until the page answers; then down."""
    port = free_port()
    name = f"cli{i}"
    script = Path(sys.executable).with_name("mvmctl")  # what the user types, when installed
    mvmctl = [str(script)] if script.is_file() else [sys.executable, "-m", "mvm.cli"]
    t0 = time.monotonic()
    up = await anyio.open_process(
        [*mvmctl, "up", "demo", "--name", name, "-p", f"{port}:80"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",  # never a checkout's mvm/ shadowing the installed package
    )
    try:
        page = await _until_page(port, t0)
    finally:
        rc = await up.wait()
        await anyio.run_process([*mvmctl, "down", name], check=False, cwd="/")
    if rc != 0:
        raise RuntimeError(f"mvmctl up exited {rc}")
    return page


async def run(runs: int = 10, warmup: int = 2, progress: Progress | None = None) -> dict[str, Any]:
    """``runs`` interleaved rounds (after ``warmup``) of an engine start and a CLI up."""
    say = progress or (lambda _line: None)
    os.environ["MVM_ACCEL"] = "tcg"
    say("up: building the demo image (not timed)")
    image = await build_offline_image(DEMO_SPEC)
    ready: list[float] = []
    engine_page: list[float] = []
    cli_page: list[float] = []
    async with Engine.open() as engine:
        for i in range(warmup + runs):
            r, p = await engine_round(engine, image, i)
            c = await cli_round(i)
            say(
                f"up {round_label(i, warmup, runs)}: engine ready {r:.2f} s (page {p:.2f} s), "
                f"mvmctl up to page {c:.2f} s"
            )
            if i >= warmup:
                ready.append(r)
                engine_page.append(p)
                cli_page.append(c)
    ready_s, page_s, cli_s = summary(ready), summary(engine_page), summary(cli_page)
    return {
        "benchmark": "up",
        "backend": "qemu",
        "accel": "tcg",
        "image": "demo",
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "warmup": warmup,
        "engine_ready_s": ready_s,
        "engine_page_s": page_s,
        "cli_page_s": cli_s,
        "main_metric": "cli_page_s",
        "ratio_p50": cli_s["p50"] / ready_s["p50"],
        "ratio_engine_page_p50": page_s["p50"] / ready_s["p50"],
        "target_ratio_p50": TARGET_RATIO,
        "samples": {"engine_ready": ready, "engine_page": engine_page, "cli_page": cli_page},
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"up: mvmctl up to forwarded page p50 {result['cli_page_s']['p50'] * 1000:.0f} ms, "
        f"engine boot p50 {result['engine_ready_s']['p50'] * 1000:.0f} ms (engine to page "
        f"{result['engine_page_s']['p50'] * 1000:.0f} ms), ratio {result['ratio_p50']:.2f} "
        f"(target <= {result['target_ratio_p50']})"
    )
