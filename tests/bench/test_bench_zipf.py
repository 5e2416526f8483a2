"""The Zipf generator is deterministic per seed and skewed towards low ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import traces


def test_same_seed_gives_the_same_keys() -> None:
    assert traces.zipf_keys(1000, 5000, seed=7) == traces.zipf_keys(1000, 5000, seed=7)


def test_another_seed_gives_other_keys() -> None:
    assert traces.zipf_keys(1000, 5000, seed=7) != traces.zipf_keys(1000, 5000, seed=8)


def test_keys_stay_within_the_key_space() -> None:
    keys = traces.zipf_keys(50, 5000, seed=1)
    assert len(keys) == 5000 and min(keys) >= 0 and max(keys) < 50


def test_key_zero_is_drawn_about_twice_as_often_as_key_one() -> None:
    counts = Counter(traces.zipf_keys(100, 50_000, s=1.0, seed=3))
    assert 1.8 < counts[0] / counts[1] < 2.2


def test_zipf_trace_has_unit_costs() -> None:
    trace = traces.zipf_trace(100, 10, seed=1)
    assert trace.name == "zipf" and trace.costs is None and len(trace.keys) == 10


def test_an_empty_key_space_is_refused() -> None:
    with pytest.raises(ValueError, match="n_keys"):
        traces.zipf_keys(0, 10)
