"""Memory overhead per entry of weighted_cache, beside a plain dict, cachetools and theine.

Keys and values are allocated before tracing starts, so tracemalloc sees only what each cache
allocates for itself: its table, entry records, policy links and frequency sketch.

    .venv/bin/python bench/memory.py [--entries 100000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weighted_cache import Cache

TARGET_BYTES = 200  # overhead per entry beyond key and value (bench/README.md)


def _fill_setitem(container: Any, keys: Sequence[Hashable], values: Sequence[object]) -> None:
    for key, value in zip(keys, values, strict=True):
        container[key] = value


def _fill_set(cache: Any, keys: Sequence[Hashable], values: Sequence[object]) -> None:
    put = cache.set
    for key, value in zip(keys, values, strict=True):
        put(key, value)


@dataclass(frozen=True)
class Subject:
    """A container to measure: how to build it for n entries and how to fill it."""

    name: str
    build: Callable[[int], Any]
    fill: Callable[[Any, Sequence[Hashable], Sequence[object]], None]
    note: str = ""


def _subjects() -> list[Subject]:
    found = [
        Subject("weighted_cache", lambda n: Cache(max_cost=n), _fill_set),
        Subject("dict", lambda n: {}, _fill_setitem, "no eviction bookkeeping"),
        Subject("cachetools.LRUCache", lambda n: LRUCache(maxsize=n), _fill_setitem),
    ]
    try:
        from theine import Cache as TheineCache
    except ImportError:
        return found
    found.append(
        Subject("theine", TheineCache, _fill_set, "Python heap only: its Rust core is not traced")
    )
    return found


@dataclass(frozen=True)
class Measurement:
    """Traced bytes held by a filled container, and how many entries it kept."""

    subject: Subject
    loaded: int
    entries: int
    traced_bytes: int

    @property
    def per_entry(self) -> float:
        """Traced bytes per entry held."""
        return self.traced_bytes / self.entries if self.entries else float("nan")


def measure(subject: Subject, capacity: int, keys: list[int], values: list[str]) -> Measurement:
    """Build a container for ``capacity`` entries, load ``keys``, return what tracemalloc saw."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        container = subject.build(capacity)
        subject.fill(container, keys, values)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    entries = len(container)
    close = getattr(container, "close", None)
    if close is not None:
        close()
    return Measurement(subject, len(keys), entries, held)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="capacity and keys loaded")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each container filled once (the target), and after 2x capacity distinct keys.

    The churned figure shows the steady state: dict tables grow with deleted slots.
    """
    args = parse_args(argv)
    n = args.entries
    if n < 1:
        raise SystemExit("--entries must be positive")
    # Large ints and fresh strings: real objects, all alive before tracing starts.
    keys = [10**12 + i for i in range(2 * n)]
    values = [f"value-{i}" for i in range(2 * n)]
    results: list[tuple[str, Measurement]] = []
    for subject in _subjects():
        results.append(("filled", measure(subject, n, keys[:n], values[:n])))
        if subject.name != "dict":  # a dict never evicts: churn would only double it
            results.append(("churned 2x", measure(subject, n, keys, values)))
    header = (
        f"{'cache':<21} {'load':<11} {'entries':>8} {'traced B':>11} {'B/entry':>8}  "
        f"result (target < {TARGET_BYTES} B/entry)"
    )
    print(f"\nMemory beyond keys and values, capacity {n} (tracemalloc)")
    print(header)
    print("-" * len(header))
    for load, m in results:
        if m.subject.name == "weighted_cache" and load == "filled":
            ok = m.per_entry < TARGET_BYTES
            verdict = "pass" if ok else f"FAIL +{m.per_entry - TARGET_BYTES:.0f} B"
        elif load != "filled":
            verdict = "steady state after evictions (info)"
        else:
            verdict = m.subject.note
        print(
            f"{m.subject.name:<21} {load:<11} {m.entries:>8} {m.traced_bytes:>11,} "
            f"{m.per_entry:>8.1f}  {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
