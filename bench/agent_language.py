"""Guest agent language: the static C agent vs an equivalent minimal Python agent.

DESIGN (issue 3) asks why the guest agent is C. This measures it in a real QEMU
guest (TCG here): two images that are byte-for-byte the same except for
``/usr/bin/mvm-agent``. Both carry the host's CPython (the files and stdlib zip
that :mod:`mvm.engine.images.ir_image` puts into function images), the Python agent
(``bench/agent_py/agent.py``) and the C agent at ``/usr/lib/mvm/mvm-agent-c``.

* ``c``: ``/usr/bin/mvm-agent`` is the C agent, as in every mvm image;
* ``python``: it is a small ``sh`` launcher. /init also runs ``mvm-agent
  setpriv ...`` / ``mvm-agent reseed ...``; those go to the C binary, everything
  else execs ``python3 -s -S agent_py.py`` (same pid, so the hello's pid is the
  interpreter's). So /init is unchanged and no builder hook is needed.

Per boot (variants alternate, so host drift hits both alike) the bench records
the host's boot-to-hello wall time (QEMU spawn until the hello frame arrives;
the same hand-written command line as ``bench boot``'s bare side), the guest's
own clock (kernel's ``Run /init`` printk stamp and the hello's ``uptime_ms``),
the agent's ``VmRSS``/``VmHWM`` read through ``exec cat /proc/PID/status``
(after the hello and after the requests), the round trip of ``PINGS`` pings
and of ``EXECS`` ``exec true``. On-disk sizes come from the host files.

    mvmctl bench agent_language --runs 10 --json bench/results/agent_language.json
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from mvm.backends.guest.build import agent_binary, init_script
from mvm.backends.guest.protocol import FrameReader, encode_frame
from mvm.backends.image.builder import build_image, check_spec
from mvm.backends.kernel_build import ensure_kernel
from mvm.bench.boot import bare_qemu, connect_agent
from mvm.bench.common import host_info, summary
from mvm.engine.base.errors import AgentError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import cache_dir
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec
from mvm.engine.images.ir_image import PythonRuntime, python_runtime, shared_library_closure

log = get_logger("mvm.bench.agent_language")

AGENT_PY = Path(__file__).resolve().parent / "agent_py" / "agent.py"
AGENT_PY_GUEST = "/usr/lib/mvm/agent_py.py"
AGENT_C_GUEST = "/usr/lib/mvm/mvm-agent-c"
VARIANTS = ("c", "python")
PINGS = 200
EXECS = 20
BOOT_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
PYTHON_PROBES = {
    "bare": "pass",
    "agent_imports": "import base64, json, os, select, struct, sys, time",
}
PYTHON_PROBE_RUNS = 3
_INIT = re.compile(r"\[\s*(\d+\.\d+)\] Run /init")
_STATUS_KIB = re.compile(r"^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+) kB$", re.M)
_MEMINFO_KIB = re.compile(r"^(MemTotal|MemAvailable):\s+(\d+) kB$", re.M)


class BenchAgentError(AgentError):
    """The guest agent under test misbehaved (wrong frame, error reply, timeout)."""

    code = "E_BENCH_AGENT"


# ------------------------------------------------------------------------- images


def launcher_script(python: str) -> str:
    """``/usr/bin/mvm-agent`` of the python variant (see the module docstring)."""
    return (
        "#!/bin/sh\n"
        "# mvm agent-language bench: the Python agent serves; the C agent keeps the\n"
        "# multi-call roles /init relies on (setpriv, reseed).\n"
        f'case "$1" in setpriv | reseed) exec {AGENT_C_GUEST} "$@" ;; esac\n'
        "export PYTHONHOME=/usr PYTHONDONTWRITEBYTECODE=1\n"
        f'exec {python} -s -S {AGENT_PY_GUEST} "$@"\n'
    )


def _write_launcher(python: str) -> Path:
    """The launcher as a content-addressed cache file (the image cache keys on its hash)."""
    text = launcher_script(python)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache_dir() / "bench" / "agent-language" / f"launcher-{digest}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return path


def bench_spec(rt: PythonRuntime, agent_c: Path) -> ImageSpec:
    """One spec for both variants: python runtime + both agents, an idle entrypoint.

    Accessible (dev) so that ``exec`` can read the agent's /proc status."""
    return ImageSpec(
        name="agent-language",
        command=("sleep", "2147483647"),
        packages=rt.files,
        host_files={
            rt.zip_guest: str(rt.zip_host),
            AGENT_PY_GUEST: str(AGENT_PY),
            AGENT_C_GUEST: str(agent_c),
        },
        dev=True,
        vcpus=1,
        memory_mib=256,
    )


async def build_images() -> tuple[dict[str, Image], PythonRuntime, Path]:
    """Both variants' images (cached by content) plus the runtime and C agent used."""
    kernel = await ensure_kernel()
    agent_c: Path = await anyio.to_thread.run_sync(agent_binary)
    rt: PythonRuntime = await anyio.to_thread.run_sync(python_runtime)
    spec = bench_spec(rt, agent_c)
    await check_spec(spec)
    launcher = await anyio.to_thread.run_sync(_write_launcher, rt.executable)
    images: dict[str, Image] = {}
    for variant, agent in (("c", agent_c), ("python", launcher)):
        art = await build_image(spec, kernel=kernel, agent=agent, init=init_script())
        images[variant] = Image.load(art.rootfs.parent)
        log.info("agent_language.image", variant=variant, key=art.key)
    return images, rt, agent_c


def _size(path: str | Path) -> int:
    return Path(path).stat().st_size


def disk_sizes(rt: PythonRuntime, agent_c: Path) -> dict[str, Any]:
    """Bytes each agent needs in the image.

    ``python_minimal``: interpreter + its shared libraries + stdlib zip + agent.py
    (what a Python agent cannot do without); ``python_as_shipped``: the whole
    runtime that ir_image puts into function images (with every lib-dynload module)."""
    interp_libs = sorted(shared_library_closure([rt.executable]))
    minimal = {
        "interpreter": _size(rt.executable),
        "shared_libraries": sum(_size(p) for p in interp_libs),
        "stdlib_zip": _size(rt.zip_host),
        "agent_py": _size(AGENT_PY),
    }
    return {
        "c_agent_bytes": _size(agent_c),
        "python_minimal": {**minimal, "total": sum(minimal.values())},
        "python_as_shipped_bytes": sum(_size(p) for p in rt.files)
        + _size(rt.zip_host)
        + _size(AGENT_PY),
        "shared_libraries": interp_libs,
    }


# ------------------------------------------------------------------------- one boot


class RawAgent:
    """Just enough of a host client to time single requests on the raw framing."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._reader = FrameReader(stream)
        self._next_id = 1

    async def frame(self) -> dict[str, Any]:
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            msg = await self._reader.read()
        if msg is None:
            raise BenchAgentError("the agent closed the connection")
        return msg

    async def request(self, message: dict[str, Any], last: str) -> list[dict[str, Any]]:
        """Send one request; return its frames up to and including type ``last``."""
        ident = self._next_id
        self._next_id += 1
        await self._stream.send(encode_frame({**message, "id": ident}))
        frames: list[dict[str, Any]] = []
        while True:
            msg = await self.frame()
            if msg["id"] != ident:
                continue  # unsolicited id-0 events
            if msg["t"] == "error":
                raise BenchAgentError(f"{message['t']}: {msg.get('code')} {msg.get('message')}")
            frames.append(msg)
            if msg["t"] == last:
                return frames

    async def exec_output(self, argv: list[str]) -> tuple[int | None, str]:
        import base64

        frames = await self.request({"t": "exec", "argv": argv}, "exit")
        out = b"".join(base64.b64decode(f["data"]) for f in frames if f["t"] == "data")
        return frames[-1].get("code"), out.decode(errors="replace")


def parse_status(text: str) -> dict[str, int]:
    """kB fields of /proc/PID/status (agent) and /proc/meminfo (guest) from one ``cat``."""
    out = {k: int(v) for k, v in _STATUS_KIB.findall(text)}
    mem = {k: int(v) for k, v in _MEMINFO_KIB.findall(text)}
    if "MemTotal" in mem and "MemAvailable" in mem:
        out["GuestUsed"] = mem["MemTotal"] - mem["MemAvailable"]
    return out


async def _memory(agent: RawAgent, pid: int) -> dict[str, int]:
    code, text = await agent.exec_output(["cat", f"/proc/{pid}/status", "/proc/meminfo"])
    if code != 0:
        raise BenchAgentError(f"cat /proc/{pid}/status exited {code}: {text[-200:]}")
    return parse_status(text)


async def _python_starts(agent: RawAgent, python: str) -> dict[str, list[float]]:
    """Warm (page-cached) interpreter starts in the guest, through ``exec``.

    Splits the Python agent's start-up into the bare interpreter and the imports
    the agent needs; each sample includes one ``exec`` round trip (see exec_true_s)."""
    out: dict[str, list[float]] = {}
    for name, code in PYTHON_PROBES.items():
        argv = ["env", "PYTHONHOME=/usr", python, "-s", "-S", "-c", code]
        times: list[float] = []
        for _ in range(PYTHON_PROBE_RUNS):
            t = time.perf_counter()
            rc, text = await agent.exec_output(argv)
            times.append(time.perf_counter() - t)
            if rc != 0:
                raise BenchAgentError(f"{name}: python exited {rc}: {text[-200:]}")
        out[name] = times
    return out


async def boot_once(
    image: Image, pings: int = PINGS, execs: int = EXECS, python: str | None = None
) -> dict[str, Any]:
    """Boot, time the hello, then the requests; the VM is killed afterwards.

    With ``python`` (the guest interpreter's path) also time interpreter starts."""
    async with bare_qemu(image, "mvmal-") as (run_dir, t0):
        with anyio.fail_after(BOOT_TIMEOUT_S):
            stream = await connect_agent(run_dir / "agent.sock")
        async with stream:
            agent = RawAgent(stream)
            with anyio.fail_after(BOOT_TIMEOUT_S):
                hello = await agent.frame()
            boot_s = time.monotonic() - t0
            if hello["t"] != "hello":
                raise BenchAgentError(f"first frame is {hello['t']!r}, not hello")
            sample: dict[str, Any] = {"boot_to_hello_s": boot_s, "agent": hello["agent"]}
            sample.update(_guest_clock(run_dir / "console.log", hello))
            pid = int(hello["pid"])
            sample["memory_after_hello_kib"] = await _memory(agent, pid)
            rtts: list[float] = []
            for _ in range(pings):
                t = time.perf_counter()
                await agent.request({"t": "ping"}, "pong")
                rtts.append(time.perf_counter() - t)
            sample["ping_s"] = rtts
            execs_s: list[float] = []
            for _ in range(execs):
                t = time.perf_counter()
                code, _ = await agent.exec_output(["true"])
                execs_s.append(time.perf_counter() - t)
                if code != 0:
                    raise BenchAgentError(f"exec true exited {code}")
            sample["exec_true_s"] = execs_s
            sample["memory_after_requests_kib"] = await _memory(agent, pid)
            if python is not None:
                sample["python_start_s"] = await _python_starts(agent, python)
            return sample


def _guest_clock(console: Path, hello: dict[str, Any]) -> dict[str, float]:
    """Kernel uptime at ``Run /init`` and at the hello, from the guest's own clock."""
    out: dict[str, float] = {"uptime_at_hello_s": float(hello.get("uptime_ms", 0)) / 1000}
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return out
    if m := _INIT.search(text):
        out["kernel_s"] = float(m[1])
        out["init_to_hello_s"] = round(out["uptime_at_hello_s"] - out["kernel_s"], 4)
    return out


# ------------------------------------------------------------------------- the bench


def _variant_result(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def series(key: str) -> list[float]:
        return [float(s[key]) for s in samples if key in s]

    def mem(when: str, field: str) -> list[float]:
        return [float(s[when][field]) for s in samples if field in s.get(when, {})]

    pings = [x for s in samples for x in s["ping_s"]]
    starts = {
        name: summary([x for s in samples for x in s.get("python_start_s", {}).get(name, [])])
        for name in PYTHON_PROBES
        if any("python_start_s" in s for s in samples)
    }
    execs = [x for s in samples for x in s["exec_true_s"]]
    return {
        "agent": samples[0]["agent"] if samples else None,
        "boot_to_hello_s": summary(series("boot_to_hello_s")),
        "kernel_s": summary(series("kernel_s")),
        "init_to_hello_s": summary(series("init_to_hello_s")),
        "ping_rtt_s": summary(pings),
        "exec_true_s": summary(execs),
        "agent_rss_after_hello_kib": summary(mem("memory_after_hello_kib", "VmRSS")),
        "agent_rss_after_requests_kib": summary(mem("memory_after_requests_kib", "VmRSS")),
        "agent_hwm_kib": summary(mem("memory_after_requests_kib", "VmHWM")),
        "guest_used_after_hello_kib": summary(mem("memory_after_hello_kib", "GuestUsed")),
        **({"python_exec_start_s": starts} if starts else {}),
    }


async def run(runs: int = 10, warmup: int = 1) -> dict[str, Any]:
    """Alternate c/python boots (``warmup`` pairs discarded); images are built first."""
    os.environ["MVM_ACCEL"] = "tcg"
    images, rt, agent_c = await build_images()
    per_boot: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for i in range(warmup + runs):
        for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            probe = rt.executable if variant == "c" else None  # costs time: one variant
            sample = await boot_once(images[variant], python=probe)
            log.info(
                "agent_language.boot",
                variant=variant,
                run=i,
                boot_s=round(sample["boot_to_hello_s"], 3),
            )
            if i >= warmup:
                per_boot[variant].append(sample)
    variants = {v: _variant_result(per_boot[v]) for v in VARIANTS}
    c, py = variants["c"], variants["python"]
    sizes = disk_sizes(rt, agent_c)
    return {
        "benchmark": "agent_language",
        "backend": "qemu",
        "accel": "tcg",
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "warmup": warmup,
        "pings_per_boot": PINGS,
        "execs_per_boot": EXECS,
        "main_metric": "c_boot_to_hello_s",
        "c_boot_to_hello_s": c["boot_to_hello_s"],
        "python_boot_to_hello_s": py["boot_to_hello_s"],
        "ratio_p50": py["boot_to_hello_s"]["p50"] / c["boot_to_hello_s"]["p50"],
        "python_over_c": {
            "boot_to_hello_p50_s": py["boot_to_hello_s"]["p50"] - c["boot_to_hello_s"]["p50"],
            "init_to_hello_p50_s": py["init_to_hello_s"]["p50"] - c["init_to_hello_s"]["p50"],
            "ping_rtt_p50_ratio": py["ping_rtt_s"]["p50"] / c["ping_rtt_s"]["p50"],
            "exec_true_p50_ratio": py["exec_true_s"]["p50"] / c["exec_true_s"]["p50"],
            "rss_p50_ratio": py["agent_rss_after_requests_kib"]["p50"]
            / c["agent_rss_after_requests_kib"]["p50"],
            "disk_ratio": sizes["python_minimal"]["total"] / sizes["c_agent_bytes"],
        },
        "variants": variants,
        "disk": sizes,
        "samples": {
            f"{v}_boot_to_hello": [s["boot_to_hello_s"] for s in per_boot[v]] for v in VARIANTS
        },
        "per_boot": {
            v: [
                {k: val for k, val in s.items() if k not in ("ping_s", "exec_true_s")}
                | {
                    "ping_p50_s": summary(s["ping_s"])["p50"],
                    "exec_true_p50_s": summary(s["exec_true_s"])["p50"],
                }
                for s in per_boot[v]
            ]
            for v in VARIANTS
        },
    }


def summary_line(result: dict[str, Any]) -> str:
    c, py = result["variants"]["c"], result["variants"]["python"]
    disk = result["disk"]

    def ms(key: str) -> str:
        return f"C {c[key]['p50'] * 1e3:.1f} / Py {py[key]['p50'] * 1e3:.1f} ms"

    rss = "agent_rss_after_requests_kib"
    parts = [
        f"boot-to-hello p50 {ms('boot_to_hello_s')}",
        f"/init-to-hello {ms('init_to_hello_s')}",
        f"ping {ms('ping_rtt_s')}",
        f"exec true {ms('exec_true_s')}",
        f"RSS C {c[rss]['p50']:.0f} / Py {py[rss]['p50']:.0f} KiB",
        f"disk C {disk['c_agent_bytes'] / 1024:.0f} KiB / Py "
        f"{disk['python_minimal']['total'] / 2**20:.1f} MiB",
    ]
    return f"agent_language ({result['runs']} boots each): " + "; ".join(parts)
