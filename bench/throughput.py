"""Single-thread throughput of weighted_cache against theine and a locked cachetools.LRUCache.

Workloads (the same pre-generated key streams for every cache, best of N runs):
  get-hit     ``get`` on a warmed cache holding every key of the stream
  set-update  ``set`` of keys already in the cache
  mixed       Zipf(1.0) over 100k keys on a 10k-capacity cache: ``get``, and ``set`` on a miss

    .venv/bin/python bench/throughput.py [--ops 1000000] [--repeat 5] [--quick] [--cpu] [--plot DIR]
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import traces
from cachetools import LRUCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weighted_cache import Cache

_MISS = object()
CAPACITY = 10_000
MIXED_KEYS = 100_000
# The issues' targets: (workload, competitor) -> minimum ratio of our ops/s to theirs.
TARGETS: dict[tuple[str, str], float] = {
    ("get-hit", "theine"): 1.3,
    ("get-hit", "LRUCache+lock"): 0.7,
    ("mixed", "theine"): 1.0,
}


class LockedLRUCache:
    """cachetools.LRUCache behind a lock: the thread-safe baseline a caller would write."""

    def __init__(self, maxsize: int) -> None:
        self._lru: LRUCache[Hashable, Any] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for key (refreshing its recency), or default."""
        with self._lock:
            return self._lru.get(key, default)

    def set(self, key: Hashable, value: Any) -> None:
        """Store value under key, evicting the least recently used key when full."""
        with self._lock:
            self._lru[key] = value


# One loop per (cache API, workload). Each binds methods to locals, so the harness costs the same
# for every cache; our Cache and LockedLRUCache share the get(key, default) / set(key, value) API.
def _get_loop(cache: Any, keys: Sequence[Hashable]) -> None:
    get = cache.get
    for key in keys:
        get(key, _MISS)


def _set_loop(cache: Any, keys: Sequence[Hashable]) -> None:
    put = cache.set
    for key in keys:
        put(key, key)


def _mixed_loop(cache: Any, keys: Sequence[Hashable]) -> None:
    get = cache.get
    put = cache.set
    for key in keys:
        if get(key, _MISS) is _MISS:
            put(key, key)


def _theine_get_loop(cache: Any, keys: Sequence[Hashable]) -> None:
    get = cache.get
    for key in keys:
        get(key)


def _theine_mixed_loop(cache: Any, keys: Sequence[Hashable]) -> None:
    get = cache.get
    put = cache.set
    for key in keys:
        if not get(key)[1]:
            put(key, key)


@dataclass(frozen=True)
class Contender:
    """A cache under test: how to build it, its loops, and how to read back a key."""

    name: str
    build: Callable[[int], Any]
    loops: Mapping[str, Callable[[Any, Sequence[Hashable]], None]]
    holds: Callable[[Any, Hashable], bool]
    close: Callable[[Any], None]


def _contenders() -> list[Contender]:
    shared_loops = {"get-hit": _get_loop, "set-update": _set_loop, "mixed": _mixed_loop}
    found = [
        Contender(
            "weighted_cache",
            lambda capacity: Cache(max_cost=capacity),
            shared_loops,
            lambda cache, key: cache.get(key, _MISS) is not _MISS,
            lambda cache: cache.close(),
        ),
        Contender(
            "LRUCache+lock",
            LockedLRUCache,
            shared_loops,
            lambda cache, key: cache.get(key, _MISS) is not _MISS,
            lambda cache: None,
        ),
    ]
    try:
        from theine import Cache as TheineCache
    except ImportError:
        print("theine is not installed: its column is left empty")
    else:
        found.insert(
            1,
            Contender(
                "theine",
                TheineCache,
                {"get-hit": _theine_get_loop, "set-update": _set_loop, "mixed": _theine_mixed_loop},
                lambda cache, key: bool(cache.get(key)[1]),
                lambda cache: cache.close(),
            ),
        )
    return found


@dataclass(frozen=True)
class Workload:
    """A named key stream, and the keys to load into the cache before timing."""

    name: str
    stream: list[Hashable]
    preload: list[Hashable]


def make_workloads(ops: int, seed: int) -> list[Workload]:
    """The three workloads, with streams generated once, outside any timed region."""
    resident: list[Hashable] = list(range(CAPACITY))
    hot: list[Hashable] = list(traces.zipf_keys(CAPACITY, ops, seed=seed))
    mixed: list[Hashable] = list(traces.zipf_keys(MIXED_KEYS, ops, seed=seed + 1))
    return [
        Workload("get-hit", hot, resident),
        Workload("set-update", hot, resident),
        Workload("mixed", mixed, []),
    ]


def _prepared(contender: Contender, workload: Workload) -> Any:
    cache = contender.build(CAPACITY)
    put = cache.set
    for key in workload.preload:
        put(key, key)
    return cache


def time_once(
    contender: Contender, workload: Workload, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds for one pass of the workload's stream over a freshly prepared cache."""
    cache = _prepared(contender, workload)
    loop = contender.loops[workload.name]
    gc.collect()
    gc.disable()
    try:
        start = clock()
        loop(cache, workload.stream)
        elapsed = clock() - start
    finally:
        gc.enable()
        contender.close(cache)
    return elapsed


def resident_share(contender: Contender, workload: Workload) -> float:
    """Share of the preloaded keys that the cache actually holds (1.0 for a true get-hit run)."""
    if not workload.preload:
        return 1.0
    cache = _prepared(contender, workload)
    try:
        held = sum(contender.holds(cache, key) for key in workload.preload)
    finally:
        contender.close(cache)
    return held / len(workload.preload)


def run(
    contenders: Sequence[Contender],
    workloads: Sequence[Workload],
    repeat: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[tuple[str, str], float]:
    """Best ops/s per (workload, contender); contenders alternate within each round."""
    best: dict[tuple[str, str], float] = {}
    for workload in workloads:
        for contender in contenders:
            share = resident_share(contender, workload)
            if share < 1.0:
                print(f"  note: {contender.name} holds {share:.1%} of the {workload.name} keys")
        for round_no in range(repeat):
            for contender in contenders:
                rate = len(workload.stream) / time_once(contender, workload, clock)
                key = (workload.name, contender.name)
                best[key] = max(best.get(key, 0.0), rate)
            print(f"{workload.name}: round {round_no + 1}/{repeat} done", flush=True)
    return best


def print_report(
    contenders: Sequence[Contender],
    workloads: Sequence[Workload],
    best: dict[tuple[str, str], float],
) -> None:
    """ops/s per cache, our ratios against each competitor, and the issue's targets."""
    names = [contender.name for contender in contenders]
    rivals = [name for name in names if name != "weighted_cache"]
    header = f"{'workload':<11}" + "".join(f"{name:>16}" for name in names)
    header += "".join(f"{'vs ' + name:>20}" for name in rivals) + "  result"
    print("\nThroughput, single thread, ops/s (best run); ratio = weighted_cache / other")
    print(header)
    print("-" * len(header))
    for workload in workloads:
        ours = best[(workload.name, "weighted_cache")]
        line = f"{workload.name:<11}" + "".join(
            f"{best[(workload.name, name)]:>16,.0f}" for name in names
        )
        verdicts = []
        for rival in rivals:
            ratio = ours / best[(workload.name, rival)]
            target = TARGETS.get((workload.name, rival))
            mark = "" if target is None else f" (>={target:.1f})"
            line += f"{f'{ratio:.2f}x{mark}':>20}"
            if target is not None:
                verdicts.append(
                    "pass" if ratio >= target else f"FAIL vs {rival} by {target - ratio:.2f}x"
                )
        print(line + "  " + ("; ".join(verdicts) if verdicts else "(no target)"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="operations per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per cache; the best counts")
    parser.add_argument("--seed", type=int, default=1, help="key stream seed (default 1)")
    parser.add_argument("--quick", action="store_true", help="200k ops, 2 runs")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time runs in CPU seconds of this process (on a shared machine, other jobs' "
        "preemption then does not count)",
    )
    parser.add_argument("--plot", type=Path, metavar="DIR", help="also draw DIR/throughput.png")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the streams, time every cache on every workload, print the table."""
    args = parse_args(argv)
    ops, repeat = (200_000, 2) if args.quick else (args.ops, args.repeat)
    if ops < 1 or repeat < 1:
        raise SystemExit("--ops and --repeat must be positive")
    contenders = _contenders()
    workloads = make_workloads(ops, args.seed)
    best = run(contenders, workloads, repeat, time.process_time if args.cpu else time.perf_counter)
    print_report(contenders, workloads, best)
    if args.cpu:
        print("(timed in CPU seconds of this process, not wall-clock time)")
    if args.plot:
        import plots  # matplotlib is needed for the chart alone

        names = [contender.name for contender in contenders]
        path = plots.throughput_chart(
            best, [w.name for w in workloads], names, args.plot / "throughput.png"
        )
        print(f"drew {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
