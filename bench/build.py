"""Image builds in the builder VM (issue 14): the Builder VM seed's "build benchmark".

Phases, each its own sample list (never mixed): ``builder_boot`` (the persistent
builder VM from its cached image to an answering agent), ``cold`` (a builder VM with
an empty Nix store: the offline package set's packages, the agent, the rootfs),
``warm`` (the same flake with one changed file, on the running builder whose store
has the rest), ``cache_hit`` (the unchanged flake again: answered from the host's
artifact cache, no builder). The flake is the beginner guide's ``hello`` (python3 +
curl), its page made unique per run so the artifact cache cannot answer a cold or warm
build. Target: warm <= 50 % of cold (``warm_over_cold``). Runs default to 1: a cold
build under TCG takes minutes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mvm.bench.common import Progress, host_info, summary
from mvm.engine.base.paths import mvm_home
from mvm.engine.build_target import build_job
from mvm.engine.builder_session import PERSISTENT_NAME, start_persistent, stop_persistent
from mvm.engine.builders import BuildJob

TARGET_WARM_OVER_COLD = 0.5
HELLO = """{
  inputs = {
    mvm.url = "github:auser/mvm?dir=nix";
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  };
  outputs = { mvm, nixpkgs, ... }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; };
    in {
      packages.${system}.default = mvm.lib.${system}.mkGuest {
        name = "hello";
        packages = [ pkgs.python3 pkgs.curl ];
        services.hello = {
          preStart = ''
            mkdir -p /tmp/www
            echo '<h1>PAGE</h1>' > /tmp/www/index.html
          '';
          command = "${pkgs.python3}/bin/python3 -m http.server 8080 --directory /tmp/www";
        };
        healthChecks.hello = {
          healthCmd = "${pkgs.curl}/bin/curl -sf http://localhost:8080/";
          healthIntervalSecs = 5;
        };
      };
    };
}
"""


def _quiet(_line: str) -> None:
    return None


async def _build(source: Path, page: str) -> tuple[float, bool]:
    (source / "flake.nix").write_text(HELLO.replace("PAGE", page))
    t0 = time.perf_counter()
    outcome = await build_job(
        BuildJob(name="hello", source=source), "vm", say=_quiet, on_log=_quiet
    )
    return time.perf_counter() - t0, outcome.cache_hit


async def _empty_store() -> None:
    await stop_persistent()
    shutil.rmtree(mvm_home() / "volumes" / PERSISTENT_NAME, ignore_errors=True)


async def run(runs: int = 1, warmup: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    say = progress or _quiet
    samples: dict[str, list[float]] = {"builder_boot": [], "cold": [], "warm": [], "cache_hit": []}
    source = Path(tempfile.mkdtemp(prefix="mvm-bench-build-"))
    try:
        for i in range(runs):
            await _empty_store()
            await start_persistent(_quiet)  # assembles the builder image if it must
            await stop_persistent()
            t0 = time.perf_counter()
            await start_persistent(_quiet)
            samples["builder_boot"].append(time.perf_counter() - t0)
            await _empty_store()
            page = uuid.uuid4().hex
            cold, _ = await _build(source, page)
            samples["cold"].append(cold)
            warm, _ = await _build(source, page + " again")
            samples["warm"].append(warm)
            hit, was_hit = await _build(source, page + " again")
            assert was_hit, "the unchanged flake was rebuilt"
            samples["cache_hit"].append(hit)
            say(f"bench build: run {i + 1}/{runs}: cold {cold:.1f}s, warm {warm:.1f}s, "
                f"hit {hit * 1000:.0f}ms")  # fmt: skip
    finally:
        await stop_persistent()
        shutil.rmtree(source, ignore_errors=True)
    stats = {k: summary(v) for k, v in samples.items()}
    return {
        "benchmark": "build",
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "warmup": warmup,
        "main_metric": "warm_s",
        **{f"{k}_s": v for k, v in stats.items()},
        "warm_over_cold": stats["warm"]["p50"] / stats["cold"]["p50"],
        "target_warm_over_cold": TARGET_WARM_OVER_COLD,
        "samples": samples,
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"build: builder VM boot p50 {result['builder_boot_s']['p50']:.1f}s, cold "
        f"{result['cold_s']['p50']:.1f}s, warm {result['warm_s']['p50']:.1f}s "
        f"({result['warm_over_cold']:.0%} of cold, target <= {TARGET_WARM_OVER_COLD:.0%}), "
        f"cache hit {result['cache_hit_s']['p50'] * 1000:.0f}ms"
    )
