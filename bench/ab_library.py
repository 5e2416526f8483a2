"""Paired A/B of two checkouts of weighted_cache on throughput.py's mixed loop, in one process.

Each tree's ``weighted_cache`` is imported under its own module name; each library gets its own
10k cache, and both replay the same Zipf(1.0) stream over 100k keys (``get``, ``set`` on a miss)
in alternating chunks, so the machine's load falls on both alike. Each tree is imported twice, in
the order A B B A: where a module sits in memory moves its speed by a few percent, so one copy
each would measure the layout as well; the two copies of one tree give that spread (A'/A). CPU
time per copy is summed over a round; the report gives B/A (both copies pooled) per round and its
median and range.

``--workload get-hit`` replays throughput.py's get-hit instead: every key of a 10k cache preloaded,
then ``get`` on a Zipf(1.0) stream over those keys.

    .venv/bin/python bench/ab_library.py A_TREE B_TREE [--workload mixed|get-hit] [--ops 300000]
        [--chunk 5000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import traces

_MISS = object()
CAPACITY = 10_000
KEYS = 100_000


def load(tree: str, name: str) -> ModuleType:
    """Import ``tree``/weighted_cache as the top-level module ``name``."""
    package = Path(tree).resolve() / "weighted_cache"
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def mixed(cache: Any, keys: Sequence[Hashable]) -> int:
    """The mixed loop; returns its misses."""
    get = cache.get
    put = cache.set
    misses = 0
    for key in keys:
        if get(key, _MISS) is _MISS:
            put(key, key)
            misses += 1
    return misses


def get_hit(cache: Any, keys: Sequence[Hashable]) -> int:
    """The get-hit loop; returns its misses."""
    get = cache.get
    misses = 0
    for key in keys:
        if get(key, _MISS) is _MISS:
            misses += 1
    return misses


LOOPS = {"mixed": mixed, "get-hit": get_hit}


def one_round(libraries: list[ModuleType], stream: list[Hashable], chunk: int,
              first: int, workload: str = "mixed") -> tuple[list[float], list[int]]:
    """CPU seconds and misses per library over the stream, chunks alternating from ``first``."""
    caches = [lib.Cache(max_cost=CAPACITY) for lib in libraries]
    loop = LOOPS[workload]
    if workload == "get-hit":
        for cache in caches:
            for key in range(CAPACITY):
                cache.set(key, key)
    spent = [0.0] * len(libraries)
    misses = [0] * len(libraries)
    order = list(range(len(libraries)))
    order = order[first:] + order[:first]
    gc.collect()
    gc.disable()
    try:
        for start in range(0, len(stream), chunk):
            part = stream[start:start + chunk]
            for i in order:
                t0 = time.process_time()
                misses[i] += loop(caches[i], part)
                spent[i] += time.process_time() - t0
            order.reverse()
    finally:
        gc.enable()
    return spent, misses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="tree holding weighted_cache/ (the reference)")
    parser.add_argument("b", help="tree holding weighted_cache/ (the candidate)")
    parser.add_argument("--workload", choices=sorted(LOOPS), default="mixed")
    parser.add_argument("--ops", type=int, default=300_000)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)
    libraries = [load(args.a, "wc_a1"), load(args.b, "wc_b1"), load(args.b, "wc_b2"),
                 load(args.a, "wc_a2")]
    keys = KEYS if args.workload == "mixed" else CAPACITY
    stream: list[Hashable] = list(traces.zipf_keys(keys, args.ops, seed=args.seed))
    print(f"A = {args.a}\nB = {args.b}\n{args.workload}: Zipf(1.0) over {keys} keys, "
          f"{CAPACITY}-entry cache, {args.ops} requests in {args.chunk}-request chunks, "
          f"load {os.getloadavg()[0]:.1f}")
    ratios = []
    controls = []
    for r in range(args.rounds):
        spent, misses = one_round(libraries, stream, args.chunk, r % len(libraries),
                                  args.workload)
        a, b = spent[0] + spent[3], spent[1] + spent[2]
        ratios.append(b / a)
        controls.append(spent[3] / spent[0])
        print(f"round {r + 1}: A {a:.3f} s, B {b:.3f} s, B/A {ratios[-1]:.3f} (A'/A "
              f"{controls[-1]:.3f}, B'/B {spent[2] / spent[1]:.3f}); hit ratio A "
              f"{1 - misses[0] / args.ops:.4f}, B {1 - misses[1] / args.ops:.4f}")
    print(f"B/A CPU time: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-"
          f"{max(ratios):.3f}; A'/A median {statistics.median(controls):.3f}; "
          f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
