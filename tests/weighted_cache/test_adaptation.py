"""The policy adapts its window to the workload: small versions of the bench's synthetic traces.

The cache replays each trace through its public API (``get``; on a miss ``set(k, k)``), as
bench/hit_ratio.py does on the full-size traces.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import pytest
import synthetic  # bench/, on the path through tests/conftest.py
from hypothesis import given, settings
from hypothesis import strategies as st

from weighted_cache import Cache
from weighted_cache.policy import (
    PROBATION,
    PROTECTED,
    PROTECTED_HOT,
    SAMPLED,
    TRACKED,
    WINDOW,
    WINDOW_NEW,
    Policy,
)
from weighted_cache.sketch import FrequencySketch
from weighted_cache.store import Entry

_MISS = object()


def hit_ratio(keys: Sequence[int], capacity: int) -> float:
    cache: Cache[int, int] = Cache(capacity)
    hits = 0
    for key in keys:
        if cache.get(key, _MISS) is _MISS:
            cache.set(key, key)
        else:
            hits += 1
    return 100.0 * hits / len(keys)


def lru_hit_ratio(keys: Sequence[int], capacity: int) -> float:
    held: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in keys:
        if key in held:
            hits += 1
            held.move_to_end(key)
        else:
            held[key] = None
            if len(held) > capacity:
                held.popitem(last=False)
    return 100.0 * hits / len(keys)


RECENCY = synthetic.recency_bursts(n_keys=8000)
TRACES = {
    "recency": RECENCY,
    "loop": synthetic.loop(n_keys=600, repeats=30),
    "scans in zipf": synthetic.scans_in_zipf(n_keys=3000, n_accesses=30_000, scan_every=3000,
                                             scan_length=600),
    "shifting zipf": synthetic.shifting_zipf(n_keys=3000, n_accesses=30_000, phases=4),
    "one-hit wonders": synthetic.one_hit_wonders(n_keys=2000, n_accesses=30_000),
}


@pytest.mark.parametrize("capacity", [80, 400, 2000])
def test_a_recency_trace_where_a_zero_window_is_fatal_reaches_lru(capacity: int) -> None:
    # Every second request comes 16-63 requests after the first: only the window can keep it.
    assert hit_ratio(RECENCY, capacity) >= lru_hit_ratio(RECENCY, capacity) - 1.0


def test_a_loop_just_longer_than_the_cache_keeps_most_of_the_cache_hitting() -> None:
    keys = TRACES["loop"]
    # The loop is slightly longer than the cache: LRU never hits, and keeping a fixed part of
    # the loop resident is the best any policy can do.
    assert lru_hit_ratio(keys, 540) == 0.0
    assert hit_ratio(keys, 540) >= 80.0


def test_a_small_cache_on_a_loop_half_again_its_size_keeps_most_of_it_hitting() -> None:
    # A small cache sees few events per request: a climber that moves on short samples walks
    # its window up on chance and loses the part of the loop a frequency policy keeps resident
    # (LRU keeps none of it).
    keys = synthetic.loop(n_keys=150, repeats=80)
    assert lru_hit_ratio(keys, 100) == 0.0
    assert hit_ratio(keys, 100) >= 60.0


@pytest.mark.parametrize("name", sorted(TRACES))
def test_the_hit_ratio_never_drops_by_more_than_half_a_point_when_the_capacity_doubles(
    name: str,
) -> None:
    keys = TRACES[name]
    distinct = len(set(keys))
    sizes = [max(8, distinct // 200), distinct // 50, distinct // 25, distinct // 10]
    ratios = [hit_ratio(keys, size) for size in sizes]
    for smaller, larger in itertools.pairwise(ratios):
        assert larger >= smaller - 0.5, (name, sizes, ratios)


@pytest.mark.parametrize("name", ["scans in zipf", "shifting zipf", "one-hit wonders"])
def test_frequency_skewed_traces_hit_at_least_as_often_as_lru(name: str) -> None:
    keys = TRACES[name]
    capacity = len(set(keys)) // 20
    assert hit_ratio(keys, capacity) >= lru_hit_ratio(keys, capacity) - 1.0


# -- invariants under any sequence of events ------------------------------------------------------

EVENTS = st.lists(
    st.tuples(st.sampled_from(["add", "hit", "remove", "update", "resize"]),
              st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=9)),
    max_size=300,
)
_SEGMENT_OF = {WINDOW: "window", WINDOW_NEW: "window", PROBATION: "probation",
               PROTECTED: "protected", PROTECTED_HOT: "protected"}
_SEGMENT_OF.update({where | marks: name for where, name in _SEGMENT_OF.items()
                    for marks in (TRACKED, SAMPLED | TRACKED)})


def check(policy: Policy, live: dict[int, Entry]) -> None:
    segments = {"window": policy.window, "probation": policy.probation,
                "protected": policy.protected}
    tracked: list[Entry] = []
    for name, segment in segments.items():
        entries = list(segment)
        assert len(entries) == segment.count
        assert sum(e.cost for e in entries) == segment.cost
        assert all(_SEGMENT_OF[e.where] == name for e in entries)
        tracked.extend(entries)
    assert policy.total_cost == sum(e.cost for e in tracked) <= policy.max_cost
    assert {id(e) for e in tracked} == {id(e) for e in live.values()}
    assert 1 <= policy.window_max <= policy.max_cost


@settings(max_examples=150, deadline=None)
@given(budget=st.integers(min_value=1, max_value=30), events=EVENTS)
def test_the_policy_tracks_every_entry_once_and_within_budget(
    budget: int, events: list[tuple[str, int, int]]
) -> None:
    policy = Policy(budget, FrequencySketch(64))
    live: dict[int, Entry] = {}
    for action, key, number in events:
        entry = live.get(key)
        if action == "add" and entry is None:
            entry = Entry(key, key, min(number, policy.max_cost), 0.0)  # as Cache guarantees
            live[key] = entry
            out = policy.add(entry)
        elif action == "hit" and entry is not None:
            policy.record_hits([entry] * (number + 1))
            out = []
        elif action == "remove" and entry is not None:
            policy.remove(entry)
            out = [entry]
        elif action == "update" and entry is not None:
            old, entry.cost = entry.cost, min(number, policy.max_cost)
            out = policy.update(entry, old)
            assert entry not in out
        elif action == "resize":
            out = policy.resize(number + 1)
        else:
            continue
        for gone in out:
            assert live.pop(gone.key) is gone
        check(policy, live)
