"""bench/plots.py draws its charts from real replay rows of a small synthetic trace."""

from __future__ import annotations

import struct
from pathlib import Path

import hit_ratio
import plots
import pytest
import traces
from traces import Trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_hit_ratio_curves_are_drawn_for_every_trace_replayed(tmp_path: Path) -> None:
    zipf = traces.zipf_trace(n_accesses=3_000, seed=3)
    sizes = plots.curve_capacities((50, 200))
    rows = hit_ratio.run_unit_trace(zipf, sizes, quick=True)
    drawn = plots.draw_hit_ratios(rows, [], tmp_path)
    assert drawn == [tmp_path / f"hit_ratio_{zipf.name}.png"]
    width, height = _png_size(drawn[0])
    assert 200 < width <= 800 and 150 < height <= 600
    assert drawn[0].stat().st_size < 100_000


def test_weighted_trace_chart_shows_both_ratios(tmp_path: Path) -> None:
    keys = [(i % 40, 1 + i % 7) for i in range(2_000)]
    trace = Trace("tiny_weighted", keys, [size for _, size in keys])
    rows = hit_ratio.run_weighted_trace(trace)
    (path,) = plots.draw_hit_ratios([], [(trace.name, rows)], tmp_path)
    assert _png_size(path)[0] > _png_size(path)[1]


def test_throughput_chart_draws_one_bar_group_per_workload(tmp_path: Path) -> None:
    best = {
        (workload, name): rate
        for workload in ("get-hit", "mixed")
        for name, rate in (("weighted_cache", 2e6), ("theine", 1e6), ("LRUCache+lock", 1.5e6))
    }
    path = plots.throughput_chart(
        best, ["get-hit", "mixed"], ["weighted_cache", "theine", "LRUCache+lock"],
        tmp_path / "throughput.png",
    )
    assert _png_size(path)[0] > 200


def test_an_unchanged_chart_is_byte_identical(tmp_path: Path) -> None:
    best = {("mixed", "weighted_cache"): 2e6, ("mixed", "theine"): 1e6}
    names = ["weighted_cache", "theine"]
    first = plots.throughput_chart(best, ["mixed"], names, tmp_path / "a.png")
    second = plots.throughput_chart(best, ["mixed"], names, tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()


def test_curve_capacities_keep_the_given_sizes_and_spread_around_them() -> None:
    capacities = plots.curve_capacities((1000, 10000))
    assert {1000, 10000} <= set(capacities)
    assert min(capacities) == 500 and max(capacities) == 20000
    assert list(capacities) == sorted(set(capacities))


def test_curve_capacities_need_a_size() -> None:
    with pytest.raises(ValueError):
        plots.curve_capacities(())
