"""Where values live: a key -> entry mapping plus the running total of cost."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

# What a new Entry's ``where`` holds: in no policy queue. The policy owns the other tags.
REMOVED = 0


class Entry:
    """One cached value with its cost, absolute expiry time and policy segment.

    ``expire`` is 0.0 for entries that never expire, so the read path can
    skip the clock call with a single truth test.  ``prev``/``next`` link the
    entry into its policy queue: two slots on an object that exists anyway
    cost far less than a node of a separate ordered container.  ``uses``
    holds the reads the policy has not yet written to its sketch, for the
    same reason.
    """

    __slots__ = ("cost", "expire", "key", "next", "prev", "uses", "value", "where")

    def __init__(self, key: Hashable, value: Any, cost: float, expire: float) -> None:
        self.key = key
        self.value = value
        self.cost = cost
        self.expire = expire
        self.where = REMOVED
        self.uses = 0
        # Any, not Entry | None: linked entries always have both links, and
        # narrowing on every hop would slow the policy's inner loops.
        self.prev: Any = None
        self.next: Any = None

    def __repr__(self) -> str:
        return f"Entry(key={self.key!r}, cost={self.cost}, expire={self.expire})"


class Store:
    """Maps keys to entries and owns the summed cost of what it holds.

    Readers may look entries up in ``data``; every write goes through
    ``add``/``update``/``remove``/``clear``, so ``cost_used`` has one owner
    and stays exact.
    """

    __slots__ = ("cost_used", "data")

    def __init__(self) -> None:
        self.data: dict[Hashable, Entry] = {}
        self.cost_used: float = 0

    def add(self, entry: Entry) -> None:
        """Insert a new entry; the key must not be present."""
        self.data[entry.key] = entry
        self.cost_used += entry.cost

    def remove(self, entry: Entry) -> None:
        """Drop ``entry`` if it is still the one stored under its key."""
        if self.data.get(entry.key) is entry:
            del self.data[entry.key]
            self.cost_used -= entry.cost

    def update(self, entry: Entry, value: Any, cost: float) -> None:
        """Give a stored entry a new value and cost, keeping the total exact."""
        entry.value = value
        self.cost_used += cost - entry.cost
        entry.cost = cost

    def clear(self) -> list[Entry]:
        """Empty the store and return what it held."""
        entries = list(self.data.values())
        self.data.clear()
        self.cost_used = 0
        return entries
