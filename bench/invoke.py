"""Function invocation latency: cold (a fresh wrapper per call) vs warm (pooled wrappers).

Boots the worked example (tests/fixtures/hello, ``greet(name)``) in a real guest
(QEMU; TCG here), then times ``invoke`` through the agent's run-entrypoint:

* cold: ``run`` in oneshot mode, so every call starts CPython in the guest and
  imports the function;
* warm: a :class:`WarmPool` of long-running wrappers, so a call is one framed
  request and reply on an already running interpreter.

The difference of the p50s is what the pool saves (mostly guest interpreter
start-up). The same IR path as ``mvmctl build IR.json`` builds the image.

    mvmctl bench invoke --runs 20 --json bench/results/invoke.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mvm import Engine, VmRequest
from mvm.bench.common import host_info, summary
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.ir_image import load_ir_spec
from mvm.engine.invoke import WarmPool, invoke

HELLO = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hello"


def _emit(project: Path) -> Path:
    """The project's IR next to it (its paths are relative to the file)."""
    out = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "emit", str(project / "entry.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    path = project / ".bench-invoke-ir.json"
    path.write_text(json.dumps(json.loads(out.stdout)))
    return path


async def run(runs: int = 20, warmup: int = 2, backend: str = "qemu") -> dict[str, Any]:
    os.environ.setdefault("MVM_HOME", tempfile.mkdtemp(prefix="mvmbi-", dir="/tmp"))
    ir = _emit(HELLO)
    try:
        image = await build_offline_image(await load_ir_spec(ir))
    finally:
        ir.unlink(missing_ok=True)
    cold: list[float] = []
    warm: list[float] = []
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="bench-invoke", image_dir=str(image.directory), backend=backend),
            image,
        )
        client = await vm.agent()
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            assert await invoke(client, [], {"name": f"c{i}"}) == f"hello, c{i}"
            if i >= warmup:
                cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        async with WarmPool.open(client, 1) as pool:
            pool_start = time.perf_counter() - t0
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                assert await pool.invoke([], {"name": f"w{i}"}) == f"hello, w{i}"
                if i >= warmup:
                    warm.append(time.perf_counter() - t0)
        await engine.stop("bench-invoke")
    c, w = summary(cold), summary(warm)
    return {
        "benchmark": "invoke",
        "backend": backend,
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "main_metric": "warm_invoke_s",
        "cold_invoke_s": c,
        "warm_invoke_s": w,
        "pool_start_s": pool_start,
        "speedup_p50": c["p50"] / w["p50"],
        "samples": {"cold": cold, "warm": warm},
    }


def summary_line(result: dict[str, Any]) -> str:
    c, w = result["cold_invoke_s"], result["warm_invoke_s"]
    return (
        f"invoke ({result['backend']}, {result['runs']} runs): cold p50 {c['p50'] * 1e3:.0f} ms "
        f"(p99 {c['p99'] * 1e3:.0f} ms), warm p50 {w['p50'] * 1e3:.1f} ms "
        f"(p99 {w['p99'] * 1e3:.1f} ms), {result['speedup_p50']:.0f}x; "
        f"pool start {result['pool_start_s'] * 1e3:.0f} ms"
    )
