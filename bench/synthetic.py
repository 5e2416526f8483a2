"""Seeded synthetic traces, each built to stress one way a cache policy can go wrong.

Every generator returns a list of int keys and gives the same list for the same arguments on every
run and machine. ``GENERATORS`` lists them with the bench's default sizes of trace; the tests call
the same functions with small arguments.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable


def _zipf_sampler(n_keys: int, s: float, rng: random.Random) -> Callable[[int], list[int]]:
    """A function drawing ``k`` Zipf(s) ranks over ``range(n_keys)`` (0 the most popular)."""
    cumulative = list(itertools.accumulate(1.0 / rank**s for rank in range(1, n_keys + 1)))
    keys = range(n_keys)
    return lambda k: rng.choices(keys, cum_weights=cumulative, k=k)


def recency_bursts(n_keys: int = 200_000, min_gap: int = 16, max_gap: int = 63,
                   seed: int = 1) -> list[int]:
    """Half the keys requested once, half exactly twice, ``min_gap..max_gap`` requests apart.

    Recency is everything here: LRU and the optimum both hit every second request once the cache
    holds the last ``max_gap`` requests, while a policy that demands frequency before admitting
    a key never hits.
    """
    rng = random.Random(seed)
    due: dict[int, int] = {}
    keys: list[int] = []
    fresh = 0
    position = 0
    while fresh < n_keys or due:
        key = due.pop(position, None)
        if key is None and fresh < n_keys:
            key = fresh
            fresh += 1
            if rng.random() < 0.5:
                at = position + rng.randint(min_gap, max_gap)
                while at in due:
                    at += 1
                due[at] = key
        if key is not None:
            keys.append(key)
        position += 1
    return keys


def loop(n_keys: int = 10_000, repeats: int = 40) -> list[int]:
    """``range(n_keys)`` requested in order, ``repeats`` times: LRU never hits a shorter cache."""
    return list(range(n_keys)) * repeats


def scans_in_zipf(n_keys: int = 50_000, n_accesses: int = 600_000, scan_every: int = 20_000,
                  scan_length: int = 10_000, s: float = 0.9, seed: int = 1) -> list[int]:
    """Zipf(s) traffic interrupted every ``scan_every`` requests by a scan of never-seen keys.

    The scans are one-off keys (ids from ``n_keys`` up): a policy that lets them flush the
    popular keys loses its hits after each scan.
    """
    rng = random.Random(seed)
    draw = _zipf_sampler(n_keys, s, rng)
    keys: list[int] = []
    next_scan = n_keys
    while len(keys) < n_accesses:
        keys.extend(draw(scan_every))
        keys.extend(range(next_scan, next_scan + scan_length))
        next_scan += scan_length
    return keys[:n_accesses]


def shifting_zipf(n_keys: int = 50_000, n_accesses: int = 600_000, phases: int = 8,
                  s: float = 0.9, seed: int = 1) -> list[int]:
    """Zipf(s) whose popular keys change at each of ``phases`` phases.

    Each phase ranks the keys from a different offset, so yesterday's hot keys turn cold: a
    frequency count that does not age keeps them.
    """
    rng = random.Random(seed)
    draw = _zipf_sampler(n_keys, s, rng)
    per_phase = n_accesses // phases
    shift = n_keys // 3 + 1
    keys: list[int] = []
    for phase in range(phases):
        offset = phase * shift
        keys.extend((rank + offset) % n_keys for rank in draw(per_phase))
    return keys


def one_hit_wonders(n_keys: int = 20_000, n_accesses: int = 600_000, share: float = 0.5,
                    s: float = 0.9, seed: int = 1) -> list[int]:
    """Zipf(s) requests mixed with a ``share`` of keys requested once and never again."""
    rng = random.Random(seed)
    draw = _zipf_sampler(n_keys, s, rng)
    popular = draw(n_accesses)
    keys: list[int] = []
    fresh = n_keys
    random_ = rng.random
    for key in popular:
        if random_() < share:
            keys.append(fresh)
            fresh += 1
        else:
            keys.append(key)
    return keys


# name -> (generator with the bench's default arguments, extra capacities as shares of the
# distinct keys beyond the standard ones).
GENERATORS: dict[str, tuple[Callable[[], list[int]], tuple[float, ...]]] = {
    "recency": (recency_bursts, ()),
    "loop-syn": (loop, (0.9,)),  # a loop just larger than the cache
    "scan-zipf": (scans_in_zipf, ()),
    "shift-zipf": (shifting_zipf, ()),
    "one-hit": (one_hit_wonders, ()),
}
