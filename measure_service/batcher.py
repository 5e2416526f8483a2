"""A micro-batcher: gathers items per group for a short window, then hands each batch to a sender.

The release rule, per group (a group is one set of upstream query parameters):

- no batch of the group in flight: the batch leaves when the window ends, or at once when full;
- a batch of the group in flight, and the upstream too slow to answer the batch's most
  pressed caller in time anyway (or nobody waits for it): the next batch is *held* until it is
  full, the one in flight comes back, or its oldest item has waited one recent send duration,
  whichever comes first.

A lone miss therefore leaves after the window, but a burst against a slow upstream cannot turn
every free slot into a small request: a group has one non-full batch out per round trip, so
the number of requests follows the upstream latency and the rows, not how long the burst takes
to arrive. Every item carries the deadline of the caller waiting for it, so a batch is held
only when that cannot cost anyone an answer, and batches wait for a free upstream slot (from the
limiter, see ``concurrency_limiter``) in order of their earliest deadline.

An item added ``at_once`` has been waited for long enough already (a fetch taken over from a
worker that never finished it): it goes to the head of its group's queue, and the batch that
carries it leaves now, with no window and no hold, first in line for a slot.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import gevent
from gevent.event import Event

from measure_service.concurrency_limiter import AdaptiveLimiter
from measure_service.greenlets import spawn

G = TypeVar("G", bound=Hashable)
T = TypeVar("T")

# What a send is assumed to take until the first one comes back (a fast Scope3 answer).
# The first measured send replaces it.
INITIAL_LATENCY_S = 0.1
# Weight of the newest send in the latency average: a few sends follow a change of upstream
# speed, one straggler does not double the hold.
_LATENCY_WEIGHT = 0.3
# Recent sends whose fastest decides whether a batch could still be answered in time: a batch
# is held only when even that one would be too slow (jitter and a busy CPU lengthen many sends,
# and holding on the average would give up answers that would have come in time). Few, so that
# holding starts a few sends after upstream slows down, not once a long memory of fast sends
# has rolled over.
_RECENT_SENDS = 4


def _wait_event(event: Event, timeout: float) -> None:
    event.wait(timeout)


class _GroupState(Generic[T]):
    """One group's waiting items, its flusher greenlet, and how many of its batches are out."""

    __slots__ = ("deadlines", "flusher", "in_flight", "items", "rush", "wake")

    def __init__(self) -> None:
        self.items: list[T] = []
        # When the caller waiting for each item stops waiting (infinite: nobody waits).
        self.deadlines: list[float] = []
        # Set when the group fills up or one of its batches comes back.
        self.wake = Event()
        self.flusher: gevent.Greenlet | None = None
        self.in_flight = 0
        # The next batch carries an item added at once: it leaves without window or hold.
        self.rush = False


class Batcher(Generic[G, T]):
    """Collects items by group and calls ``send(group, items)`` with up to ``max_items`` each.

    A group's first item starts its window. The batch leaves at the end of the window, or at
    once when the group reaches ``max_items``; while a batch of the same group is being sent, a
    non-full batch may also be held for up to :attr:`hold_s` from its first item (see the
    module docstring). Then it takes one of the ``limiter``'s slots (by default a limiter of
    ``concurrency`` slots), in order of its earliest deadline.

    ``gate(group)``, when given, may return a context that a batch of ``group`` enters before it
    waits for its slot and holds while it is sent (a lane bounding that group's share of the
    slots); such a group's sends are not timed, since they are set apart for being slow or bad.
    ``answer_within_s`` is how long callers wait for an item added without its own deadline:
    0 when nobody waits, infinite (the default) when every answer is awaited.
    ``send`` runs in a greenlet spawned in the context of the request whose item opened the batch
    (so its log lines carry that trace id); it must not raise. A send that returns False is not
    timed: it failed in a way that says nothing of upstream's speed. ``clock`` times the sends and
    ``wait(event, timeout)`` waits for a group's wake-up event; tests inject both.
    """

    def __init__(
        self,
        send: Callable[[G, list[T]], Any],
        *,
        window_s: float,
        max_items: int,
        concurrency: int,
        answer_within_s: float = math.inf,
        limiter: AdaptiveLimiter | None = None,
        gate: Callable[[G], contextlib.AbstractContextManager[Any] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[Event, float], Any] = _wait_event,
    ) -> None:
        """Batch for ``window_s`` seconds or ``max_items`` items, ``concurrency`` sends at once."""
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s!r}")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        if math.isnan(answer_within_s) or answer_within_s < 0:
            raise ValueError(f"answer_within_s must be >= 0, got {answer_within_s!r}")
        self._send = send
        self._window_s = window_s
        self._max_items = max_items
        self._limiter = limiter if limiter is not None else AdaptiveLimiter(concurrency)
        self._answer_within_s = answer_within_s
        self._gate = gate
        self._clock = clock
        self._wait = wait
        self._latency_s: float | None = None
        self._recent_s: deque[float] = deque(maxlen=_RECENT_SENDS)
        self._groups: dict[G, _GroupState[T]] = {}
        self._closed = False

    @property
    def latency_s(self) -> float:
        """Recent duration of a send (a weighted average), or a guess before the first one."""
        return INITIAL_LATENCY_S if self._latency_s is None else self._latency_s

    @property
    def fastest_s(self) -> float:
        """The fastest of the recent sends; 0 before the first one comes back.

        Until a send says otherwise, upstream is taken to be fast enough for the waiting
        callers: holding the first batches of a cold start would lose answers for sure.
        """
        return min(self._recent_s, default=0.0)

    @property
    def hold_s(self) -> float:
        """How long a non-full batch whose callers wait ``answer_within_s`` may be held."""
        return self._hold_s(self._answer_within_s)

    def _hold_s(self, time_left_s: float) -> float:
        """How long a non-full batch may wait behind one of its group in flight, when its most
        pressed caller stops waiting ``time_left_s`` after the batch opened."""
        latency = self.latency_s
        # Holding saves requests but delays answers, so it happens only when it cannot cost a
        # waiting caller its answer: nobody waits, or even the fastest recent send, leaving now,
        # would come back after the batch's most pressed caller stopped waiting (an upstream
        # slower than the window). The hold lasts one send: a batch waiting that long leaves about
        # when the one ahead comes back anyway, so a longer hold saves nothing, and the cap only
        # cuts short a straggler or a hung call (the breaker needs the next failures to come
        # soon).
        if self._window_s + self.fastest_s > time_left_s:
            return latency
        return 0.0

    def add(
        self, group: G, item: T, deadline: float | None = None, *, at_once: bool = False
    ) -> None:
        """Queue ``item`` in ``group``, awaited until ``deadline`` (on ``clock``); never blocks.

        ``at_once``: send it now, in the group's next batch, ahead of other batches waiting for
        a slot (see the module docstring).
        """
        if self._closed:
            raise RuntimeError("batcher is closed")
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _GroupState()
        due = self._clock() + self._answer_within_s if deadline is None else deadline
        if at_once:
            state.items.insert(0, item)
            state.deadlines.insert(0, due)
            state.rush = True
        else:
            state.items.append(item)
            state.deadlines.append(due)
        if at_once or len(state.items) >= self._max_items:
            state.wake.set()
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

    def _flush(self, group: G, state: _GroupState[T]) -> None:
        opened = self._clock()
        self._wait_until(state, opened + self._window_s, self._must_go)
        # Callers who stopped waiting do not count: only those an early send could still serve.
        ahead = self._earliest_ahead(state)
        hold_s = self._hold_s(0.0 if ahead is None else ahead - opened)
        self._wait_until(state, opened + max(self._window_s, hold_s), self._may_leave)
        gate = self._gate(group) if self._gate is not None else None
        with gate if gate is not None else contextlib.nullcontext():
            self._send_next(group, state, timed=gate is None)

    def _send_next(self, group: G, state: _GroupState[T], *, timed: bool) -> None:
        """Take a slot and send the group's next batch."""
        ahead = -math.inf if state.rush else self._earliest_ahead(state)
        with self._limiter.slot(math.inf if ahead is None else ahead):
            batch = state.items[: self._max_items]
            del state.items[: self._max_items]
            del state.deadlines[: self._max_items]
            state.rush = False
            state.wake.clear()
            state.flusher = spawn(self._flush, group, state) if state.items else None
            state.in_flight += 1
            started = self._clock()
            answered = None
            try:
                answered = self._send(group, batch)
            finally:
                if timed and answered is not False:
                    self._note_latency(max(0.0, self._clock() - started))
                state.in_flight -= 1
                state.wake.set()
                if state.flusher is None and state.in_flight == 0 and not self._closed:
                    del self._groups[group]

    def _note_latency(self, elapsed: float) -> None:
        self._recent_s.append(elapsed)
        if self._latency_s is None:
            self._latency_s = elapsed
        else:
            self._latency_s += _LATENCY_WEIGHT * (elapsed - self._latency_s)

    def _earliest_ahead(self, state: _GroupState[T]) -> float | None:
        """The earliest deadline still ahead in the batch that would leave now; None when
        nobody waits for any of its items any more."""
        now = self._clock()
        return min((d for d in state.deadlines[: self._max_items] if d > now), default=None)

    def _must_go(self, state: _GroupState[T]) -> bool:
        return state.rush or len(state.items) >= self._max_items

    def _may_leave(self, state: _GroupState[T]) -> bool:
        return state.rush or state.in_flight == 0 or len(state.items) >= self._max_items

    def _wait_until(
        self, state: _GroupState[T], deadline: float, done: Callable[[_GroupState[T]], bool]
    ) -> None:
        """Wait until ``done(state)`` or ``deadline``; the group's wake-up event re-checks."""
        while not done(state):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            state.wake.clear()
            self._wait(state.wake, remaining)
