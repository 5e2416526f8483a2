"""A single-flight table: concurrent misses for one key share one in-flight fetch."""

from __future__ import annotations

from typing import Generic, TypeVar

from gevent.event import AsyncResult

K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Maps each key being fetched to the one AsyncResult all its waiters share.

    The first caller for a key becomes the leader and must later call :meth:`resolve` or
    :meth:`fail`; every other caller joins. Resolving removes the key, so the next miss starts a
    new fetch. Not thread-safe: one table serves the greenlets of one gevent hub.
    """

    def __init__(self) -> None:
        """Start with nothing in flight."""
        self._flights: dict[K, AsyncResult] = {}

    def join(self, key: K) -> AsyncResult | None:
        """The result of the fetch in flight for ``key``, or None if there is none."""
        return self._flights.get(key)

    def start(self, key: K) -> AsyncResult:
        """Register a new fetch for ``key``; raise KeyError if one is already in flight."""
        if key in self._flights:
            raise KeyError(f"a fetch for {key!r} is already in flight")
        result = AsyncResult()
        self._flights[key] = result
        return result

    def resolve(self, key: K, value: V) -> None:
        """Finish the fetch for ``key`` with ``value``, waking every waiter."""
        result = self._flights.pop(key, None)
        if result is not None:
            result.set(value)

    def fail(self, key: K, error: BaseException) -> None:
        """Finish the fetch for ``key`` with ``error``, waking every waiter."""
        result = self._flights.pop(key, None)
        if result is not None:
            result.set_exception(error)

    def __contains__(self, key: object) -> bool:
        """True while a fetch for ``key`` is in flight."""
        return key in self._flights

    def __len__(self) -> int:
        """The number of keys in flight."""
        return len(self._flights)

    def in_flight(self) -> list[K]:
        """A snapshot of the keys in flight."""
        return list(self._flights)
