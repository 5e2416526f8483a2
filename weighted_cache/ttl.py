"""Expiry bookkeeping: entries grouped into time buckets, plus a sweeper.

Entries are filed under ``floor(expire / granularity)``.  A bucket whose
whole interval lies in the past holds only expired entries, so reclaiming
it needs no per-entry clock checks.  Normal cache operations pop a bounded
number of such entries; an optional background sweeper does the rest.
"""

from __future__ import annotations

import heapq
import threading
import weakref
from collections.abc import Callable
from sys import getsizeof
from typing import Protocol

from .store import Entry


class ExpiryBuckets:
    """Entries with a TTL, grouped by the time slot in which they expire."""

    __slots__ = ("_buckets", "_granularity", "_heap", "count")

    def __init__(self, granularity: float = 1.0) -> None:
        if not granularity > 0:
            raise ValueError("granularity must be positive")
        self._granularity = granularity
        self._buckets: dict[int, set[Entry]] = {}
        self._heap: list[int] = []  # bucket ids; stale ids are skipped lazily
        self.count = 0  # entries filed; an attribute so callers test it without a call

    def __len__(self) -> int:
        return self.count

    def _slot(self, expire: float) -> int:
        return int(expire // self._granularity)

    def add(self, entry: Entry) -> None:
        """File ``entry`` under its expiry time (which must be set)."""
        slot = self._slot(entry.expire)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
            heap = self._heap
            heapq.heappush(heap, slot)
            # A bucket emptied by evictions leaves its id in the heap until its time comes;
            # rebuilding from the live buckets keeps the heap O(entries).
            if len(heap) > 2 * len(self._buckets) + 64:
                heap[:] = self._buckets
                heapq.heapify(heap)
        bucket.add(entry)
        self.count += 1

    def refile(self, entry: Entry, expire: float) -> None:
        """Move ``entry`` to a new expiry time (0.0: never expires)."""
        self.remove(entry)
        entry.expire = expire
        if expire:
            self.add(entry)

    def remove(self, entry: Entry) -> None:
        """Unfile ``entry``; a no-op if it has no expiry or is not filed."""
        if not entry.expire or not self.count:
            return
        slot = self._slot(entry.expire)
        bucket = self._buckets.get(slot)
        if bucket is not None and entry in bucket:
            bucket.remove(entry)
            self.count -= 1
            left = len(bucket)
            if not left:
                del self._buckets[slot]
            elif not left & (left - 1) and getsizeof(bucket) > 64 * left + 1024:
                # A set never shrinks its table: a long-lived bucket that once held many
                # entries would keep that memory while evictions empty it. Checked at powers
                # of two only, so the copy is amortised over the removals before it.
                self._buckets[slot] = set(bucket)

    def pop_expired(self, now: float, limit: int | None = None, exact: bool = False) -> list[Entry]:
        """Remove and return up to ``limit`` entries that expired by ``now``.

        Only buckets wholly in the past are drained unless ``exact`` is set,
        in which case the current bucket is scanned entry by entry too.
        """
        out: list[Entry] = []
        heap = self._heap
        buckets = self._buckets
        done = self._slot(now)  # buckets below this id are entirely expired
        while heap and (limit is None or len(out) < limit):
            slot = heap[0]
            bucket = buckets.get(slot)
            if bucket is None:
                heapq.heappop(heap)
                continue
            if slot < done:
                while bucket and (limit is None or len(out) < limit):
                    out.append(bucket.pop())
                if not bucket:
                    del buckets[slot]
                    heapq.heappop(heap)
                continue
            if exact and slot == done:
                for entry in [e for e in bucket if e.expire <= now]:
                    if limit is not None and len(out) >= limit:
                        break
                    bucket.remove(entry)
                    out.append(entry)
                if not bucket:
                    del buckets[slot]
            break
        self.count -= len(out)
        return out

    def clear(self) -> None:
        """Forget every entry."""
        self._buckets.clear()
        self._heap.clear()
        self.count = 0


class Sweepable(Protocol):
    """What the background sweeper needs from a cache."""

    def _sweep_expired(self) -> None: ...


class Sweeper:
    """Calls ``_sweep_expired`` on a cache every ``interval`` seconds.

    It runs in a daemon thread that waits on an Event, so under gevent's
    monkey-patching it becomes a greenlet and waits cooperatively.  It holds
    the cache only weakly: an abandoned cache is collected and the thread
    ends at its next tick.
    """

    def __init__(self, cache: Sweepable, interval: float) -> None:
        if not interval > 0:
            raise ValueError("sweep_interval must be positive")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(cache), self._stop, interval),
            name="weighted_cache-sweeper",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish and wait briefly for it."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    @property
    def alive(self) -> bool:
        """Whether the sweeper thread is still running."""
        return self._thread.is_alive()


def _run(ref: Callable[[], Sweepable | None], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        cache = ref()
        if cache is None:
            return
        cache._sweep_expired()
        del cache
