"""Belady's optimum, the replays and the verdicts of bench/hit_ratio.py, on tiny inputs."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from functools import cache

import hit_ratio_tables
import pytest
import replays
from traces import Trace


def _exhaustive_optimum(keys: Sequence[Hashable], capacity: int) -> int:
    """Most hits any policy can get: try every bypass/eviction choice on every miss."""

    @cache
    def best(i: int, held: frozenset[Hashable]) -> int:
        if i == len(keys):
            return 0
        key = keys[i]
        if key in held:
            return 1 + best(i + 1, held)
        options = [best(i + 1, held)]  # bypass
        if len(held) < capacity:
            options.append(best(i + 1, held | {key}))
        else:
            options.extend(best(i + 1, (held - {victim}) | {key}) for victim in held)
        return max(options)

    return best(0, frozenset())


def test_belady_keeps_the_keys_needed_soonest() -> None:
    # a b c a b d a b c at capacity 2: keeping a and b gives 4 hits; c and d are never worth it.
    assert replays.belady_hits(list("abcabdabc"), 2) == 4


def test_belady_evicts_the_key_used_farthest_ahead() -> None:
    # a b c a c b at capacity 2: c evicts b (next use farthest), then a and c hit.
    assert replays.belady_hits(list("abcacb"), 2) == 2


def test_belady_misses_only_cold_keys_when_everything_fits() -> None:
    keys = [1, 2, 3, 1, 2, 3, 4, 1]
    assert replays.belady_hits(keys, 4) == len(keys) - 4


def test_belady_with_no_capacity_never_hits() -> None:
    assert replays.belady_hits([1, 1, 1], 0) == 0


@pytest.mark.parametrize("seed", range(40))
def test_belady_matches_an_exhaustive_search_on_short_random_sequences(seed: int) -> None:
    rng = random.Random(seed)
    keys = [rng.randrange(5) for _ in range(11)]
    capacity = rng.randrange(1, 4)
    assert replays.belady_hits(keys, capacity) == _exhaustive_optimum(keys, capacity)


def test_lru_counts_an_object_larger_than_the_cache_as_an_uncached_miss() -> None:
    trace = Trace("w", [(1, 10), (1, 10), (2, 3), (2, 3)], [10, 10, 3, 3])
    tally = replays.replay_lru(trace, 5)
    assert (tally.hits, tally.cost_hit, tally.cost_requested) == (1, 3, 26)


def test_byte_hit_ratio_weights_hits_by_cost() -> None:
    tally = replays.Tally(accesses=4, hits=1, cost_requested=26, cost_hit=13)
    assert (tally.hit_ratio, tally.byte_hit_ratio) == (25.0, 50.0)


def test_a_point_below_ristretto_fails_even_above_the_reference_target() -> None:
    row = hit_ratio_tables.UnitRow("gli", 1000, 45.0, 11.0, 40.0, 53.0, (11.2, 40.0, 53.1))
    assert row.verdict().startswith("FAIL")


def test_a_point_within_one_of_the_better_reference_passes() -> None:
    row = hit_ratio_tables.UnitRow("zipf", 1000, 58.4, 50.0, 59.0, 66.0, (50.6, 59.3, 66.5))
    assert row.verdict() == "pass"


def test_a_point_exactly_one_below_the_better_reference_passes() -> None:
    row = hit_ratio_tables.UnitRow("oltp", 2000, 43.9, 42.0, 44.5, 60.0, (42.5, 44.9, 60.4))
    assert row.verdict() == "pass"


def test_a_point_a_tenth_short_of_the_target_fails() -> None:
    row = hit_ratio_tables.UnitRow("oltp", 2000, 43.8, 42.0, 44.5, 60.0, (42.5, 44.9, 60.4))
    assert row.verdict().startswith("FAIL -0.1")


def test_a_point_is_judged_against_the_measured_theine_too() -> None:
    row = hit_ratio_tables.UnitRow("web07", 2048, 53.0, 55.7, 54.2, 68.1)
    assert row.verdict().startswith("FAIL -1.7")


def test_a_dip_of_more_than_half_a_point_at_twice_the_size_fails() -> None:
    row = hit_ratio_tables.UnitRow("recency", 1000, 33.0, 33.3, 31.4, 33.4, ours_double=32.4)
    assert "dips" in row.verdict()


def test_a_synthetic_point_far_from_the_optimum_fails_where_lru_is_near_it() -> None:
    row = hit_ratio_tables.UnitRow("recency", 1000, 32.4, 33.4, 31.4, 38.0, synthetic=True)
    assert "under OPT" in row.verdict()


def test_a_synthetic_point_far_from_the_optimum_passes_where_lru_and_theine_are_too() -> None:
    row = hit_ratio_tables.UnitRow("loop-syn", 5000, 40.0, 0.0, 39.0, 48.8, synthetic=True)
    assert row.verdict() == "pass"


def test_dips_between_listed_sizes_are_reported() -> None:
    rows = [hit_ratio_tables.UnitRow("t", 100, 30.0, 0, 0, 0),
            hit_ratio_tables.UnitRow("t", 400, 29.0, 0, 0, 0)]
    assert hit_ratio_tables.dips(rows) == ["t: 30.0 at 100, 29.0 at 400"]


def test_the_weighted_point_must_reach_both_lru_and_lfu() -> None:
    ours = replays.Tally(100, 30, 1000, 300)
    lru = replays.Tally(100, 29, 1000, 310)
    lfu = replays.Tally(100, 31, 1000, 250)
    assert hit_ratio_tables.WeightedRow(0.05, 10, ours, lru, lfu).verdict() == (
        "FAIL object -1.0, bytes -1.0")


def test_lfu_counts_an_object_larger_than_the_cache_as_an_uncached_miss() -> None:
    trace = Trace("w", [(1, 10), (1, 10), (2, 3), (2, 3)], [10, 10, 3, 3])
    tally = replays.replay_lfu(trace, 5)
    assert (tally.hits, tally.cost_hit, tally.cost_requested) == (1, 3, 26)
