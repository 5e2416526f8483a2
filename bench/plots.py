"""Charts of the library benchmarks: hit ratio against capacity per trace, and throughput bars.

It draws from the result rows that ``hit_ratio.py`` and ``throughput.py`` already compute (their
``--plot DIR`` flag calls it), so a chart always shows the figures of the run that printed them.
matplotlib is a benchmark-only dependency; charts are drawn without pyplot, so no display or
global backend state is involved.

    .venv/bin/python bench/hit_ratio.py --plot bench/charts
    .venv/bin/python bench/throughput.py --plot bench/charts
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from hit_ratio_tables import UnitRow, WeightedRow

# Each policy keeps one colour and marker in every chart.
STYLE: dict[str, dict[str, Any]] = {
    "weighted_cache": {"color": "#1f77b4", "marker": "o", "linewidth": 2.2},
    "LRU": {"color": "#7f7f7f", "marker": "s", "linewidth": 1.4},
    "theine": {"color": "#ff7f0e", "marker": "^", "linewidth": 1.4},
    "Belady (optimum)": {"color": "#2ca02c", "marker": "", "linestyle": "--", "linewidth": 1.2},
    "LRU (size-aware)": {"color": "#7f7f7f", "marker": "s", "linewidth": 1.4},
    "LRUCache+lock": {"color": "#7f7f7f"},
}
SIZE_INCHES = (4.8, 3.2)
DPI = 80  # small files: a chart is read in a README, not printed
CURVE_POINTS = 7


def curve_capacities(sizes: Sequence[int], points: int = CURVE_POINTS) -> tuple[int, ...]:
    """Capacities for a curve: ``sizes`` plus a geometric spread from half the smallest to twice
    the largest, rounded to two significant digits, without points close to a given size."""
    if not sizes:
        raise ValueError("sizes must not be empty")
    low, high = max(1, min(sizes) // 2), 2 * max(sizes)
    ratio = (high / low) ** (1 / (points - 1)) if points > 1 else 1.0
    spread = {_two_digits(low * ratio**i) for i in range(points)}
    # A spread point close to a given size adds a replay but no shape to the curve.
    apart = {c for c in spread if all(abs(math.log(c / size)) > 0.2 for size in sizes)}
    return tuple(sorted(apart | set(sizes)))


def _two_digits(value: float) -> int:
    digits = max(0, math.floor(math.log10(value)) - 1)
    return max(1, round(value / 10**digits) * 10**digits)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    # No timestamp or version in the file: an unchanged chart stays byte-identical.
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def hit_ratio_chart(trace: str, rows: Sequence[UnitRow], path: Path) -> Path:
    """Hit ratio against capacity for one unit-cost trace: ours, LRU, theine and Belady."""
    rows = sorted(rows, key=lambda row: row.size)
    sizes = [row.size for row in rows]
    series: dict[str, list[float]] = {
        "weighted_cache": [row.ours for row in rows],
        "LRU": [row.lru for row in rows],
        "Belady (optimum)": [row.optimal for row in rows],
    }
    if all(row.theine is not None for row in rows):
        series["theine"] = [row.theine for row in rows if row.theine is not None]
    figure = Figure(figsize=SIZE_INCHES)
    axes = figure.add_subplot()
    for name in ("Belady (optimum)", "theine", "LRU", "weighted_cache"):
        if name in series:
            axes.plot(sizes, series[name], label=name, markersize=4, **STYLE[name])
    if len(sizes) > 1 and sizes[-1] / sizes[0] >= 8:
        axes.set_xscale("log")
    axes.set_title(f"{trace}: hit ratio against capacity", fontsize=10)
    axes.set_xlabel("capacity (entries)", fontsize=9)
    axes.set_ylabel("hit ratio %", fontsize=9)
    axes.set_ylim(bottom=0)
    axes.tick_params(labelsize=8)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def weighted_chart(trace: str, rows: Sequence[WeightedRow], path: Path) -> Path:
    """Object and byte hit ratio against capacity on a weighted trace, beside size-aware LRU."""
    rows = sorted(rows, key=lambda row: row.fraction)
    shares = [100 * row.fraction for row in rows]
    figure = Figure(figsize=(SIZE_INCHES[0] * 1.6, SIZE_INCHES[1]))
    panels = (("object hit ratio %", "hit_ratio"), ("byte hit ratio %", "byte_hit_ratio"))
    for index, (label, attribute) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        for name, pick in (("LRU (size-aware)", "lru"), ("weighted_cache", "ours")):
            values = [getattr(getattr(row, pick), attribute) for row in rows]
            axes.plot(shares, values, label=name, markersize=4, **STYLE[name])
        axes.set_title(f"{trace}: {label}", fontsize=10)
        axes.set_xlabel("capacity (% of distinct bytes)", fontsize=9)
        axes.set_ylim(bottom=0)
        axes.tick_params(labelsize=8)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def draw_hit_ratios(
    rows: Sequence[UnitRow],
    weighted: Sequence[tuple[str, Sequence[WeightedRow]]],
    directory: Path,
) -> list[Path]:
    """One chart per trace run: ``hit_ratio_<trace>.png`` in ``directory``."""
    by_trace: dict[str, list[UnitRow]] = {}
    for row in rows:
        by_trace.setdefault(row.trace, []).append(row)
    drawn = [
        hit_ratio_chart(trace, trace_rows, directory / f"hit_ratio_{trace}.png")
        for trace, trace_rows in by_trace.items()
    ]
    drawn.extend(
        weighted_chart(trace, trace_rows, directory / f"hit_ratio_{trace}.png")
        for trace, trace_rows in weighted
    )
    return drawn


def throughput_chart(
    best: Mapping[tuple[str, str], float],
    workloads: Sequence[str],
    contenders: Sequence[str],
    path: Path,
) -> Path:
    """Grouped bars of ops/s per workload, one bar per cache, the ratio to ours on each bar."""
    figure = Figure(figsize=(SIZE_INCHES[0] * 1.3, SIZE_INCHES[1]))
    axes = figure.add_subplot()
    width = 0.8 / len(contenders)
    colours = {name: STYLE.get(name, {}).get("color") for name in contenders}
    for offset, name in enumerate(contenders):
        xs = [i + (offset - (len(contenders) - 1) / 2) * width for i in range(len(workloads))]
        values = [best[(workload, name)] / 1e6 for workload in workloads]
        bars = axes.bar(xs, values, width, label=name, color=colours.get(name))
        for bar, workload in zip(bars, workloads, strict=True):
            ratio = best[(workload, "weighted_cache")] / best[(workload, name)]
            text = "ours" if name == "weighted_cache" else f"{ratio:.2f}x"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
    axes.set_xticks(range(len(workloads)), list(workloads), fontsize=9)
    axes.set_ylabel("million ops/s (one thread)", fontsize=9)
    axes.set_title("throughput; label = weighted_cache / that cache", fontsize=10)
    axes.tick_params(labelsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=7)
    axes.margins(y=0.15)
    return _save(figure, path)
