"""The replay protocol, one function per policy: weighted_cache, LRU, LFU, theine, the optimum.

Protocol for every policy: ``get(k)``, and on a miss ``set(k, k, cost)`` (cost 1, or the object
size on the weighted trace). Hit ratio is hits / all accesses, cold misses included.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LFUCache, LRUCache
from traces import Trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weighted_cache import Cache


def _theine_cache_class() -> Any:
    """theine's Cache class, or None: theine is an optional reference column."""
    try:
        from theine import Cache as theine_cache
    except ImportError:
        return None
    return theine_cache


TheineCache = _theine_cache_class()

_MISS = object()


@dataclass(frozen=True)
class Tally:
    """Outcome of one replay."""

    accesses: int
    hits: int
    cost_requested: int
    cost_hit: int

    @property
    def hit_ratio(self) -> float:
        """Object hit ratio, in percent."""
        return 100.0 * self.hits / self.accesses if self.accesses else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        """Cost-weighted (byte) hit ratio, in percent."""
        return 100.0 * self.cost_hit / self.cost_requested if self.cost_requested else 0.0


def _replay(
    trace: Trace, lookup: Callable[[Hashable], bool], admit: Callable[[Hashable, int], object]
) -> Tally:
    """Run the protocol: lookup each key, admit it on a miss."""
    costs: Sequence[int] | itertools.repeat[int] = (
        trace.costs if trace.costs is not None else itertools.repeat(1)
    )
    hits = 0
    cost_hit = 0
    cost_requested = 0
    for key, cost in zip(trace.keys, costs, strict=False):
        cost_requested += cost
        if lookup(key):
            hits += 1
            cost_hit += cost
        else:
            admit(key, cost)
    return Tally(len(trace.keys), hits, cost_requested, cost_hit)


def sketch_counters(trace: Trace, capacity: int) -> int:
    """num_counters for a weighted run: 10x the entries expected to fit (mean object cost)."""
    objects = trace.distinct_keys()
    mean_cost = trace.distinct_cost() / objects
    return max(1024, int(10 * capacity / mean_cost))


def replay_weighted_cache(trace: Trace, capacity: int) -> Tally:
    """Replay against weighted_cache.Cache with its default options."""
    options: dict[str, Any] = {}
    if trace.weighted:
        # Capacity is in bytes here, so it says nothing about how many entries will fit.
        options["num_counters"] = sketch_counters(trace, capacity)
    cache = Cache(max_cost=capacity, **options)
    get = cache.get
    put = cache.set
    try:
        tally = _replay(
            trace,
            lambda key: get(key, _MISS) is not _MISS,
            lambda key, cost: put(key, key, cost=cost),
        )
        reported = cache.metrics.snapshot().get("hits")
        if reported is not None and reported != tally.hits:
            print(f"  warning: metrics report {reported} hits, replay counted {tally.hits}")
        return tally
    finally:
        cache.close()


def replay_lru(trace: Trace, capacity: int) -> Tally:
    """Replay against cachetools.LRUCache; size-aware (getsizeof) on a weighted trace."""
    return _replay_cachetools(LRUCache, trace, capacity)


def replay_lfu(trace: Trace, capacity: int) -> Tally:
    """Replay against cachetools.LFUCache; size-aware (getsizeof) on a weighted trace."""
    return _replay_cachetools(LFUCache, trace, capacity)


def _replay_cachetools(
    kind: type[LRUCache[Hashable, int]] | type[LFUCache[Hashable, int]], trace: Trace,
    capacity: int,
) -> Tally:
    # cachetools reads an item's size from its value, so the value carries the cost.
    cache = kind(maxsize=capacity, getsizeof=(lambda cost: cost) if trace.weighted else None)

    def admit(key: Hashable, cost: int) -> None:
        # cachetools refuses an item larger than the whole cache: a miss that is not cached.
        with contextlib.suppress(ValueError):
            cache[key] = cost

    return _replay(trace, lambda key: cache.get(key, _MISS) is not _MISS, admit)


def replay_theine(trace: Trace, capacity: int) -> Tally | None:
    """Replay against theine's W-TinyLFU (unit costs only), or None if theine is not installed."""
    if TheineCache is None or trace.weighted:
        return None
    cache = TheineCache(capacity)
    get = cache.get
    put = cache.set
    try:
        return _replay(trace, lambda key: bool(get(key)[1]), lambda key, _: put(key, key))
    finally:
        cache.close()


def belady_hits(keys: Sequence[Hashable], capacity: int) -> int:
    """Hits of Belady's optimal policy (unit costs): evict the key used again farthest ahead.

    A missed key whose next use is farther than every cached key's is not cached at all, which is
    the same as caching it and evicting it first.
    """
    if capacity < 1:
        return 0
    total = len(keys)
    # next_use[i]: position of the next access to keys[i]; never-again keys get unique positions
    # beyond the end, so no two live entries tie and keys are never compared.
    next_use = [0] * total
    upcoming: dict[Hashable, int] = {}
    for i in range(total - 1, -1, -1):
        key = keys[i]
        next_use[i] = upcoming.get(key, total + i)
        upcoming[key] = i
    cached: dict[Hashable, int] = {}  # key -> its next use
    farthest: list[tuple[int, Hashable]] = []  # max-heap of (-next use, key), stale entries kept
    hits = 0
    for i, key in enumerate(keys):
        nxt = next_use[i]
        if key in cached:
            hits += 1
        elif len(cached) >= capacity:
            while cached.get(farthest[0][1]) != -farthest[0][0]:
                heapq.heappop(farthest)  # stale: that key was used or evicted since
            if -farthest[0][0] < nxt:
                continue
            del cached[heapq.heappop(farthest)[1]]
        cached[key] = nxt
        heapq.heappush(farthest, (-nxt, key))
    return hits


def replay_belady(trace: Trace, capacity: int) -> Tally:
    """Belady's optimum as a Tally (unit costs only)."""
    hits = belady_hits(trace.keys, capacity)
    return Tally(len(trace.keys), hits, len(trace.keys), hits)


REPLAYS: dict[str, Callable[[Trace, int], Tally | None]] = {
    "ours": replay_weighted_cache,
    "lru": replay_lru,
    "lfu": replay_lfu,
    "theine": replay_theine,
    "opt": replay_belady,
}
