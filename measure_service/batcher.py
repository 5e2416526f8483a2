"""A micro-batcher: gathers items per group for a short window, then hands each batch to a sender.

At most ``concurrency`` batches are being sent at once. A batch is formed when its sender slot
becomes free, not when the window ends, so while upstream is busy the waiting items pile up into
bigger batches instead of more requests.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from measure_service.logs import spawn

G = TypeVar("G", bound=Hashable)
T = TypeVar("T")


class _Group(Generic[T]):
    """Items waiting for one group, and whether a flusher greenlet already owns them."""

    __slots__ = ("flusher", "full", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.full = Event()
        self.flusher: gevent.Greenlet | None = None


class Batcher(Generic[G, T]):
    """Collects items by group and calls ``send(group, items)`` with up to ``max_items`` each.

    A group's first item starts its window; the batch leaves when the window ends or the group
    reaches ``max_items``, whichever comes first, and once one of ``concurrency`` slots is free.
    ``send`` runs in a greenlet spawned in the context of the request whose item opened the batch
    (so its log lines carry that trace id); it must not raise.
    """

    def __init__(
        self,
        send: Callable[[G, list[T]], Any],
        *,
        window_s: float,
        max_items: int,
        concurrency: int,
    ) -> None:
        """Batch for ``window_s`` seconds or ``max_items`` items, ``concurrency`` sends at once."""
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s!r}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        self._send = send
        self._window_s = window_s
        self._max_items = max_items
        self._slots = BoundedSemaphore(concurrency)
        self._groups: dict[G, _Group[T]] = {}
        self._closed = False

    def add(self, group: G, item: T) -> None:
        """Queue ``item`` in ``group``; never blocks."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
        state.items.append(item)
        if len(state.items) >= self._max_items:
            state.full.set()
        if state.flusher is None:
            state.flusher = spawn(self._flush, group, state)

    def waiting(self) -> int:
        """Items queued and not yet handed to ``send``."""
        return sum(len(state.items) for state in self._groups.values())

    def close(self) -> None:
        """Stop the flushers; items still queued are dropped (the caller fails them)."""
        self._closed = True
        flushers = [s.flusher for s in self._groups.values() if s.flusher is not None]
        gevent.killall(flushers, block=False)
        self._groups.clear()

    def _flush(self, group: G, state: _Group[T]) -> None:
        state.full.wait(self._window_s)
        with self._slots:
            batch = state.items[: self._max_items]
            del state.items[: self._max_items]
            state.full.clear()
            if state.items:
                if len(state.items) >= self._max_items:
                    state.full.set()
                state.flusher = spawn(self._flush, group, state)
            else:
                state.flusher = None
                del self._groups[group]
            self._send(group, batch)
