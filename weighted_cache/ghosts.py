"""The climber's model: ghosts of the keys that recently left the cache.

The policy keeps two, for refused candidates and for main's victims; a key
that comes back to one counts as a hit a segment larger by its distance
would have had.
"""

from __future__ import annotations

from collections.abc import Hashable

STEPS = 5  # ghost depths: step * 2**level, up to the whole budget


class Ghost:
    """Keys that recently left, each stamped with a departure clock in cost units.

    A key that comes back within d of departures would have been hit by a
    segment larger by d: ``gains[level]`` counts those for d = step * 2**level.
    Keys live in two generations, each spanning ``depth`` of departures, so
    forgetting is one dict swap rather than a queue; a key found beyond the
    depth counts for nothing.  Large caches track only the keys whose spread
    hash falls under the policy's ghost mask (the policy marks their entries
    TRACKED), which bounds the memory; the clock then counts only their
    departures and the gains are a sample.
    """

    __slots__ = ("clock", "depth", "gains", "older", "recent", "since")

    def __init__(self) -> None:
        self.clock: float = 0
        self.depth = 0
        self.recent: dict[Hashable, float] = {}
        self.older: dict[Hashable, float] = {}
        self.since: float = 0  # the clock when ``recent`` was started
        self.gains = [0] * STEPS

    def add(self, key: Hashable) -> None:
        """Remember ``key`` as departed now."""
        clock = self.clock
        if clock - self.since > self.depth:
            self.older, self.recent, self.since = self.recent, {}, clock
        self.recent[key] = clock

    def returned(self, key: Hashable) -> None:
        """Credit the return of a departed ``key`` to every depth it is within."""
        stamp = self.recent.pop(key, None)
        older = self.older.pop(key, 0.0)
        distance = self.clock - (older if stamp is None else stamp)
        gains = self.gains
        d = self.depth
        for level in range(STEPS - 1, -1, -1):
            if distance > d:
                break
            gains[level] += 1
            d >>= 1

    def clear(self) -> None:
        """Forget every key."""
        self.recent.clear()
        self.older.clear()
