"""Boot-to-agent-ready latency: the mvm engine vs two hand-written QEMU baselines.

Three boots per round, interleaved so drift on a noisy host hits all alike, each
stopping the clock when a hello frame arrives on the host's agent socket:
* engine: ``Engine.start`` of the demo image (state store, actors, plan, QMP, /init,
  the agent);
* bare: the same kernel and rootfs from a hand-written QEMU command line, so
  engine / bare is the host-side overhead of mvm (target <= 1.05);
* floor: the same kernel and command line with a rootfs whose only program is a
  static /init that writes the hello frame (bench/floor.py), so engine / floor is
  everything mvm costs between the kernel and a ready agent (target <= 1.15).
Image build time is never included (images are built before the first timed run).

    mvmctl bench boot --runs 20 --json bench/results/boot.json --plot boot.png
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from mvm import Engine, Image, VmRequest
from mvm.backends.demo import DEMO_SPEC
from mvm.backends.qemu.accel import host_tsc_khz
from mvm.bench.common import Progress, host_info, round_label, summary
from mvm.bench.floor import floor_image
from mvm.engine.builders.offline_image import build_offline_image


def bare_argv(image: Image, run_dir: Path) -> list[str]:
    """A minimal microvm command line written by hand (not by mvm's plan builder)."""
    append = (
        f"console=ttyS0 reboot=t panic=-1 root=/dev/vda rw init=/init "
        f"tsc_early_khz={host_tsc_khz()} mvm.hostname=bare"
    )
    return [
        "qemu-system-x86_64",
        "-M",
        "microvm,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-append",
        append,
        "-serial",
        f"file:{run_dir}/console.log",
        "-drive",
        f"id=root,file={image.rootfs},format=raw,if=none,snapshot=on",
        "-device",
        "virtio-blk-device,drive=root",
        "-device",
        "virtio-serial-device",
        "-chardev",
        f"socket,id=agent,path={run_dir}/agent.sock,server=on,wait=off",
        "-device",
        "virtserialport,chardev=agent,name=mvm.agent",
    ]


@asynccontextmanager
async def bare_qemu(image: Image, prefix: str) -> AsyncIterator[tuple[Path, float]]:
    """The bare hand-written QEMU (``bare_argv``) in a temporary run dir: yields the
    run dir and the spawn time; the VMM is killed on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as tmp:
        run_dir = Path(tmp)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            bare_argv(image, run_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield run_dir, t0
        finally:
            proc.kill()
            proc.wait()


async def connect_agent(sock: Path) -> anyio.abc.SocketStream:
    """Dial the agent socket as soon as QEMU has created it."""
    while True:
        try:
            return await anyio.connect_unix(str(sock))
        except OSError:
            await anyio.sleep(0.002)


async def bare_boot(image: Image) -> float:
    async with bare_qemu(image, "mvmb-") as (run_dir, t0):
        async with await connect_agent(run_dir / "agent.sock") as stream:
            header = b""
            while len(header) < 4:
                header += await stream.receive(4 - len(header))
            (length,) = struct.unpack(">I", header)
            body = b""
            while len(body) < length:
                body += await stream.receive(length - len(body))
        elapsed = time.monotonic() - t0
        assert json.loads(body)["t"] == "hello"
        return elapsed


async def engine_boot(engine: Engine, image: Image, i: int) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    vm = await engine.start(VmRequest(name=f"bench{i}", image_dir=str(image.directory)), image)
    elapsed = time.monotonic() - t0
    phases = guest_phases(Path(vm.console_log or ""), vm.hello, elapsed)
    phases["steps"] = vm.step_seconds
    await engine.stop(vm.name)
    return elapsed, phases


_INIT = re.compile(r"\[\s*(\d+\.\d+)\] Run /init")
_BANNER = re.compile(r"\[\s*\d+\.\d+\] Linux version ")


def last_boot(text: str) -> str:
    """The console of the most recent boot only. QEMU appends to ``console.log``
    (``append=on``: a restore keeps the boot log), so a restarted VM - or a VM name
    reused under the same ``$MVM_HOME`` - has earlier boots above this one; their
    "Run /init" once made ``init_to_agent_s`` negative (issue 16: -0.50 s)."""
    starts = [m.start() for m in _BANNER.finditer(text)]
    return text[starts[-1] :] if starts else text


def guest_phases(console: Path, hello: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """Split one boot into phases with the guest's own clock.

    ``kernel_s``: kernel uptime when it ran /init (printk timestamp);
    ``init_to_agent_s``: from /init to the agent's hello (hello's uptime_ms);
    ``host_s``: the rest of the wall time - VMM spawn and firmware before the guest
    clock starts, plus the host's side of connecting and reading the hello.
    Only this boot's console is read (``last_boot``); a phase that still comes out
    negative means the clocks disagree, so it is left out (``phase_errors``), never
    recorded as a duration."""
    out: dict[str, Any] = {}
    uptime = float(hello.get("uptime_ms", 0)) / 1000 if hello.get("uptime_ms") else None
    try:
        text = console.read_text(errors="replace")
    except OSError:
        text = ""
    found = _INIT.findall(last_boot(text))
    candidates: dict[str, float] = {}
    if found:
        candidates["kernel_s"] = float(found[-1])
        if uptime is not None:
            candidates["init_to_agent_s"] = round(uptime - float(found[-1]), 4)
    if uptime is not None:
        out["guest_uptime_at_hello_s"] = uptime
        candidates["host_s"] = round(wall_s - uptime, 4)
    for key, value in candidates.items():
        if value >= 0:
            out[key] = value
        else:
            out.setdefault("phase_errors", {})[key] = value
    return out


async def run(runs: int = 20, warmup: int = 2, progress: Progress | None = None) -> dict[str, Any]:
    """Alternate engine and bare boots (drift hits both alike); the image is built first.
    ``progress`` gets one line per boot round (the CLI prints them on stderr)."""
    say = progress or (lambda _line: None)
    os.environ.setdefault("MVM_HOME", tempfile.mkdtemp(prefix="mvmbh-", dir="/tmp"))
    os.environ["MVM_ACCEL"] = "tcg"
    say("boot: building the demo image and the floor image (not timed)")
    image = await build_offline_image(DEMO_SPEC)
    floor = await anyio.to_thread.run_sync(floor_image, image)
    engine_samples: list[float] = []
    bare_samples: list[float] = []
    floor_samples: list[float] = []
    phases: list[dict[str, Any]] = []
    async with Engine.open() as engine:
        for i in range(warmup + runs):
            e, ph = await engine_boot(engine, image, i)
            b = await bare_boot(image)
            f = await bare_boot(floor)
            label = round_label(i, warmup, runs)
            say(f"boot {label}: engine {e:.2f} s, bare {b:.2f} s, floor {f:.2f} s")
            if i >= warmup:
                engine_samples.append(e)
                bare_samples.append(b)
                floor_samples.append(f)
                phases.append(ph)
    eng, bare, flo = summary(engine_samples), summary(bare_samples), summary(floor_samples)
    phase_medians = {
        key: summary([p[key] for p in phases if key in p])["p50"]
        for key in ("kernel_s", "init_to_agent_s", "host_s")
    }
    step_names = list(dict.fromkeys(n for p in phases for n in p.get("steps", {})))
    step_medians = {
        n: summary([p["steps"][n] for p in phases if n in p.get("steps", {})])["p50"]
        for n in step_names
    }
    return {
        "benchmark": "boot",
        "backend": "qemu",
        "accel": "tcg",
        "image": "demo",
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "warmup": warmup,
        "engine_s": eng,
        "bare_qemu_s": bare,
        "floor_s": flo,
        "phases_p50_s": phase_medians,
        "steps_p50_s": step_medians,  # the host's side, by boot step (vm.step.<name>)
        "ratio_p50": eng["p50"] / bare["p50"],
        "target_ratio_p50": 1.05,
        "ratio_floor_p50": eng["p50"] / flo["p50"],
        "target_ratio_floor_p50": 1.15,
        "samples": {"engine": engine_samples, "bare": bare_samples, "floor": floor_samples},
        "guest_phases": phases,
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"boot: engine p50 {result['engine_s']['p50'] * 1000:.0f} ms, bare qemu p50 "
        f"{result['bare_qemu_s']['p50'] * 1000:.0f} ms, ratio {result['ratio_p50']:.3f} "
        f"(target <= {result['target_ratio_p50']}); floor p50 "
        f"{result['floor_s']['p50'] * 1000:.0f} ms, engine/floor {result['ratio_floor_p50']:.3f} "
        f"(target <= {result['target_ratio_floor_p50']})"
        + _slowest_steps(result.get("steps_p50_s", {}))
    )


def _slowest_steps(steps: dict[str, float], top: int = 3) -> str:
    slow = sorted(steps.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return "; slowest steps " + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in slow) if slow else ""
