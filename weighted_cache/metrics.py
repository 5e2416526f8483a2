"""Counters describing what a cache did; cheap to update, read as a snapshot."""

from __future__ import annotations

_FIELDS = (
    "hits",
    "misses",
    "keys_added",
    "keys_updated",
    "keys_evicted",
    "keys_expired",
    "cost_added",
    "cost_evicted",
    "sets_rejected",
)


class Metrics:
    """Plain integer counters, updated by the cache under its lock.

    Reading a single counter is always safe; ``snapshot()`` gives a dict of
    all of them plus the hit ``ratio``.  Hits are added in batches as the
    cache applies its read buffer; ``Cache.metrics`` applies it first, so
    counters read through that property are exact.
    """

    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Set every counter back to zero."""
        self.hits = 0
        self.misses = 0
        self.keys_added = 0
        self.keys_updated = 0
        self.keys_evicted = 0
        self.keys_expired = 0
        self.cost_added: float = 0
        self.cost_evicted: float = 0
        self.sets_rejected = 0

    @property
    def ratio(self) -> float:
        """Hits divided by lookups, 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def snapshot(self) -> dict[str, float]:
        """Return all counters and the hit ratio as a new dict."""
        snap: dict[str, float] = {name: getattr(self, name) for name in _FIELDS}
        snap["ratio"] = self.ratio
        return snap

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"Metrics({body})"
