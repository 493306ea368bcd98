"""`mvmctl bench --plot` (issue 16): plots a person can read, checked without looking.

Recorded results (bench/results/boot.json, clone.json) are drawn with the Agg
backend; the PNG must exist and the ``.plot.json`` written next to it must carry
the numbers drawn (p50 lines read back from the figure, ratio and target, the
boot's phase split). matplotlib is checked before a benchmark runs, each run
prints a line on stderr, and boot phases are never negative.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mvm.bench.boot import guest_phases, last_boot
from mvm.bench.common import round_label

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def _draw(name: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    pytest.importorskip(
        "matplotlib", reason="matplotlib absent: ./scripts/setup --test installs it"
    )
    from mvm.bench.plot import plot, sidecar_path

    result = _recorded(name)
    png = tmp_path / "plots" / f"{name}.png"
    returned = plot(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    sidecar = json.loads(sidecar_path(png).read_text())
    assert sidecar == json.loads(json.dumps(returned))
    assert sidecar_path(png).name == f"{name}.plot.json"  # never the --json result's name
    return result, sidecar, png


@pytest.mark.parametrize("name", ["boot", "clone"])
def test_plot_draws_p50_lines_step_ecdf_and_ratio_with_target(name: str, tmp_path: Path) -> None:
    result, drawn, _png = _draw(name, tmp_path)
    assert set(drawn["series"]) == set(result["samples"])
    for series, values in result["samples"].items():
        assert drawn["series"][series]["n"] == len(values)
        assert drawn["series"][series]["p50"] == pytest.approx(statistics.median(values))
        assert drawn["series"][series]["ecdf_drawstyle"] == "steps-post"
    ratio = drawn["ratios"]["ratio_p50"]
    assert ratio == {"value": result["ratio_p50"], "target": result["target_ratio_p50"]}
    assert f"ratio p50 {result['ratio_p50']:.3f}" in drawn["title"]
    assert f"target <= {result['target_ratio_p50']:g}" in drawn["title"]


def test_boot_plot_draws_the_phase_split_and_host_steps(tmp_path: Path) -> None:
    result, drawn, _png = _draw("boot", tmp_path)
    assert drawn["phases_p50_s"] == pytest.approx(result["phases_p50_s"])
    assert set(drawn["phases_p50_s"]) == {"kernel_s", "init_to_agent_s", "host_s"}
    # A fresh result carries the host's boot steps too: they are drawn, in order.
    steps = {"plan": 0.01, "spawn": 0.12, "qmp": 0.05, "agent": 1.4}
    from mvm.bench.plot import plot, sidecar_path

    png = tmp_path / "with-steps.png"
    plot({**result, "steps_p50_s": steps}, png)
    again = json.loads(sidecar_path(png).read_text())
    assert list(again["steps_p50_s"]) == list(steps)
    assert again["steps_p50_s"] == pytest.approx(steps)


def test_clone_plot_has_no_phase_panel(tmp_path: Path) -> None:
    _result, drawn, _png = _draw("clone", tmp_path)
    assert "phases_p50_s" not in drawn and "steps_p50_s" not in drawn


# The console of a VM whose log already held an earlier boot (QEMU appends: append=on).
# The earlier boot ran /init at 1.90 s; this one at 0.80 s, and its hello says 1.40 s.
APPENDED_CONSOLE = """\
[    0.000000] Linux version 6.1.0 (mvm@build) #1 SMP PREEMPT_DYNAMIC
[    0.412000] virtio_blk virtio1: [vda] 65536 512-byte logical blocks
[    1.900000] Run /init as init process
mvm-agent: ready
[    9.100000] reboot: Power down
[    0.000000] Linux version 6.1.0 (mvm@build) #1 SMP PREEMPT_DYNAMIC
[    0.390000] virtio_blk virtio1: [vda] 65536 512-byte logical blocks
[    0.800000] Run /init as init process
mvm-agent: ready
"""


def test_phases_come_from_this_boot_not_an_earlier_one_in_the_same_log(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text(APPENDED_CONSOLE)
    phases = guest_phases(console, {"t": "hello", "uptime_ms": 1400}, wall_s=1.9)
    assert phases["kernel_s"] == 0.8  # the first "Run /init" (1.90 s) gave -0.50 s
    assert phases["init_to_agent_s"] == pytest.approx(0.6)
    assert phases["host_s"] == pytest.approx(0.5)
    assert "phase_errors" not in phases
    assert last_boot(APPENDED_CONSOLE).count("Run /init") == 1


def test_a_phase_the_clocks_make_negative_is_reported_not_recorded(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text(APPENDED_CONSOLE)
    phases = guest_phases(console, {"t": "hello", "uptime_ms": 700}, wall_s=0.5)
    assert "init_to_agent_s" not in phases and "host_s" not in phases
    assert phases["phase_errors"] == {"init_to_agent_s": -0.1, "host_s": -0.2}
    assert all(v >= 0 for k, v in phases.items() if k.endswith("_s"))


def test_round_labels_tell_warmups_from_timed_runs() -> None:
    assert [round_label(i, 2, 3) for i in range(5)] == [
        "warmup 1/2",
        "warmup 2/2",
        "1/3",
        "2/3",
        "3/3",
    ]


def _mvmctl_with(patch: str, *args: str) -> subprocess.CompletedProcess[str]:
    """mvmctl in a child whose Python first runs ``patch`` (block a module, fake a run)."""
    code = f"import sys\n{patch}\nfrom mvm.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_matplotlib_is_refused_before_the_benchmark_runs(tmp_path: Path) -> None:
    patch = (
        "sys.modules['matplotlib'] = None\n"  # import matplotlib -> ImportError
        "import mvm.bench.cli as b\n"
        "async def run(**kw): raise SystemExit('the benchmark ran')\n"
        "b.run = run\n"
    )
    proc = _mvmctl_with(patch, "bench", "cli", "--runs", "1", "--plot", str(tmp_path / "c.png"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error[E_BENCH_PLOT]: ") and "./scripts/setup --bench" in lines[0]
    assert "the benchmark ran" not in proc.stderr + proc.stdout
    assert not (tmp_path / "c.png").exists()


def test_each_run_prints_a_line_on_stderr_as_it_happens(tmp_path: Path) -> None:
    patch = (
        "import mvm.bench.cli as b\n"
        "async def run(runs=1, warmup=0, progress=None):\n"
        "    for i in range(warmup + runs):\n"
        "        progress(f'cli {i}: 0.10 s')\n"
        "    return {'benchmark': 'cli', 'help_s': {'p50': 0.1}}\n"
        "b.run = run\n"
        "b.summary_line = lambda r: 'cli: summary'\n"
    )
    out = tmp_path / "r.json"
    proc = _mvmctl_with(patch, "bench", "cli", "--runs", "2", "--warmup", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "cli 0: 0.10 s",
        "cli 1: 0.10 s",
        "cli 2: 0.10 s",
        "cli: summary",
    ]
    assert json.loads(out.read_text())["benchmark"] == "cli"
