"""``mvmctl bench --plot``: figures a person can read, and the numbers they show.

Top row: a histogram and a step ECDF of every sample series, each with a dashed
vertical line at its p50; the title carries every ``ratio*`` next to its target.
For ``boot`` a bottom row splits the boot: a stacked bar of the medians of the
guest's phases (kernel, /init to agent, host) and the host's boot steps.
Next to the PNG goes ``<name>.plot.json`` with the numbers read back from what was
drawn (the p50 lines' positions, the ratios, the bars), so a test - or a person
without an image viewer - can check the plot without looking at it.

matplotlib is optional (``./scripts/setup --bench``): ``require_matplotlib`` is
called before a benchmark runs, so a missing library costs no run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from mvm.engine.base.errors import ConfigError

PHASES = (("kernel_s", "kernel"), ("init_to_agent_s", "/init -> agent"), ("host_s", "host"))


def require_matplotlib() -> None:
    """Raise the coded error now if matplotlib is missing (before a run, not after)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which this Python lacks",
            code="E_BENCH_PLOT",
            hint="./scripts/setup --bench (or .venv/bin/pip install 'mvm-engine[bench]')",
        ) from None


def sidecar_path(png: Path) -> Path:
    """Where the drawn numbers go: ``boot.png`` -> ``boot.plot.json`` (never ``--json``'s)."""
    return png.with_name(png.stem + ".plot.json")


def sample_series(result: dict[str, Any]) -> dict[str, list[float]]:
    return {
        k: [float(x) for x in v]
        for k, v in result.get("samples", {}).items()
        if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v)
    }


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Every ``ratio*`` of the result with its ``target_ratio*`` (None when it has none)."""
    out: dict[str, dict[str, float | None]] = {}
    for key, value in sorted(result.items(), key=lambda kv: (len(kv[0]), kv[0])):  # main first
        if key.startswith("ratio") and isinstance(value, int | float):
            target = result.get(f"target_{key}")
            out[key] = {
                "value": float(value),
                "target": float(target) if isinstance(target, int | float) else None,
            }
    return out


def title(result: dict[str, Any]) -> str:
    runs = len(next(iter(sample_series(result).values()), []))
    head = (
        f"mvm bench {result.get('benchmark')} ({result.get('backend', '')}, "
        f"{result.get('accel', '')}, {runs} runs)"
    )
    parts = []
    for key, r in ratios(result).items():
        target = f" (target <= {r['target']:g})" if r["target"] is not None else ""
        parts.append(f"{key.replace('_', ' ')} {r['value']:.3f}{target}")
    cpu = result.get("host", {}).get("cpu")
    return head + (": " + ", ".join(parts) if parts else "") + (f"\non {cpu}" if cpu else "")


def plot(result: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Draw ``result`` into the PNG ``path`` and write the drawn numbers next to it."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(path)
    series = sample_series(result)
    phases = result.get("phases_p50_s") or {}
    steps = result.get("steps_p50_s") or {}
    split = bool(phases or steps)
    fig, axes = plt.subplots(2 if split else 1, 2, figsize=(12, 8 if split else 4.5), squeeze=False)
    hist, cdf = axes[0]
    unit = result.get("unit", "s")
    drawn: dict[str, Any] = {"png": str(png), "title": title(result), "unit": unit, "series": {}}
    edges = _shared_bins([v for values in series.values() for v in values])
    for name, values in series.items():
        p50 = statistics.median(values)
        bars = hist.hist(values, bins=edges, alpha=0.5, label=name)
        color = bars[2][0].get_facecolor()
        ordered = sorted(values)
        n = len(ordered)
        (ecdf,) = cdf.plot(
            [ordered[0], *ordered],
            [0.0, *((i + 1) / n for i in range(n))],
            drawstyle="steps-post",
            color=color[:3],
            label=name,
        )
        label = f"{name} p50 {p50:.3g} {unit}"
        lines = [ax.axvline(p50, color=color[:3], ls="--", label=label) for ax in (hist, cdf)]
        drawn["series"][name] = {
            "n": n,
            "p50": float(lines[0].get_xdata()[0]),
            "ecdf_drawstyle": ecdf.get_drawstyle(),
        }
    hist.set_xlabel(unit)
    hist.set_ylabel("runs")
    cdf.set_xlabel(unit)
    cdf.set_ylabel("fraction of runs <= x")
    cdf.set_ylim(0, 1.02)
    for ax in (hist, cdf):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    drawn["ratios"] = ratios(result)
    if split:
        drawn["phases_p50_s"] = _phase_bar(axes[1][0], phases)
        drawn["steps_p50_s"] = _steps_bar(axes[1][1], steps)
    fig.suptitle(drawn["title"])
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    sidecar_path(png).write_text(json.dumps(drawn, indent=2) + "\n")  # step order kept
    return drawn


def _shared_bins(values: list[float]) -> list[float]:
    """One set of bin edges for every series, so bar widths compare across them."""
    count = max(8, min(30, len(values) // 3))
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-3
    return [lo + (hi - lo) * i / count for i in range(count + 1)]


def _phase_bar(ax: Any, phases: dict[str, float]) -> dict[str, float]:
    """One stacked bar: where a median boot's wall time goes, guest clock first."""
    drawn: dict[str, float] = {}
    bottom = 0.0
    for key, label in PHASES:
        value = phases.get(key)
        if not isinstance(value, int | float) or value != value:  # missing or NaN
            continue
        (bar,) = ax.bar(
            ["boot p50"], [value], width=0.5, bottom=bottom, label=f"{label} {value:.3f} s"
        )
        ax.annotate(f"{label}\n{value:.2f} s", (0, bottom + value / 2), ha="center", va="center")
        drawn[key] = float(bar.get_height())
        bottom += value
    ax.set_xlim(-1, 1)
    ax.set_ylabel("s")
    ax.set_title("boot phases (medians; guest clock)")
    ax.legend(fontsize=8)
    return drawn


def _steps_bar(ax: Any, steps: dict[str, float]) -> dict[str, float]:
    """The host's boot steps (vm.step.<name>) in the order they ran, median seconds."""
    names = [n for n, v in steps.items() if isinstance(v, int | float)]
    values = [float(steps[n]) for n in names]
    if not names:
        ax.text(0.5, 0.5, "no host steps in this result", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
    bars = ax.barh(names, values)
    ax.bar_label(bars, labels=[f"{v * 1000:.0f} ms" for v in values], fontsize=7, padding=2)
    ax.invert_yaxis()  # first step on top
    ax.set_xlabel("s")
    ax.set_title("host boot steps (medians)")
    ax.grid(alpha=0.3, axis="x")
    return {n: float(b.get_width()) for n, b in zip(names, bars, strict=True)}
