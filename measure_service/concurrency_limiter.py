"""How many upstream requests one worker may have in flight: an adaptive limit under a ceiling.

The limit follows upstream's health, in the manner of Netflix's concurrency-limits:

- a 429 or a timeout means upstream is overloaded: the limit is cut multiplicatively (AIMD's
  decrease), at most once per round trip so that one burst of refusals is one signal;
- otherwise each answer's latency is compared with the long-run latency (a slow average): while
  answers come about as fast as usual the limit grows by about one per round trip (AIMD's
  increase, as the gradient limiter's queue allowance), and when they slow down the limit
  shrinks by the ratio (the gradient), since more requests would only queue at upstream.

The limit never leaves ``[floor, ceiling]``; the ceiling is the connection pool's size. Callers
wait for a slot in order of their deadline, earliest first: a batch that callers are waiting
for goes before one nobody waits for. Not thread-safe: one limiter serves one gevent hub.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gevent.event import Event

from measure_service import prometheus_metrics

# The answer latency may rise this far above the long-run latency before the limit shrinks:
# batches of different sizes and jitter vary it that much without upstream being overloaded.
LATENCY_TOLERANCE = 2.0
# Share of the limit kept after an overload signal.
BACKOFF_RATIO = 0.5
# Weight of one sample in the long-run latency: about the last 50 answers.
_LONG_WEIGHT = 0.02
# The gradient never cuts the limit by more than half in one answer.
_MIN_GRADIENT = 0.5

# How often a party waiting for its share looks at the limit again.
_SHARE_RECHECK_S = 0.1

# What an answer says about upstream's load.
OK = "ok"
OVERLOAD = "overload"


class AdaptiveLimiter:
    """Slots for upstream requests; their number adapts to latency and overload signals."""

    def __init__(
        self,
        ceiling: int,
        *,
        floor: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start at ``ceiling`` slots; adapt between ``floor`` and ``ceiling``."""
        if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 1:
            raise ValueError(f"ceiling must be an int >= 1, got {ceiling!r}")
        if isinstance(floor, bool) or not isinstance(floor, int) or not 1 <= floor <= ceiling:
            raise ValueError(f"floor must be an int in 1..ceiling, got {floor!r}")
        self._ceiling = ceiling
        self._floor = floor
        self._clock = clock
        self._limit = float(ceiling)
        self._in_flight = 0
        self._long_rtt_s: float | None = None
        self._last_backoff = -math.inf
        # (deadline, place in line, when it asked, its event) for each caller waiting now.
        self._waiters: list[tuple[float, int, float, Event]] = []
        self._order = itertools.count()
        prometheus_metrics.UPSTREAM_LIMIT.set(self.limit)

    @property
    def limit(self) -> int:
        """Requests that may be in flight now."""
        return max(self._floor, min(self._ceiling, int(self._limit)))

    @property
    def ceiling(self) -> int:
        """The most requests ever in flight."""
        return self._ceiling

    @property
    def in_flight(self) -> int:
        """Slots held now."""
        return self._in_flight

    def waiting_since(self) -> list[float]:
        """When each caller still waiting for a slot asked for it (on this limiter's clock).

        A request waiting here has had no answer either: the circuit breaker counts it with
        the calls out when every slot is held by calls upstream does not answer.
        """
        return [asked for _, _, asked, _ in self._waiters]

    @contextmanager
    def slot(self, deadline: float = math.inf) -> Iterator[None]:
        """Hold one slot for the block; wait for it behind callers with earlier deadlines."""
        self.acquire(deadline)
        try:
            yield
        finally:
            self.release()

    def acquire(self, deadline: float = math.inf) -> None:
        """Take a slot, waiting while all are held or earlier deadlines wait for one."""
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return
        event = Event()
        entry = (deadline, next(self._order), self._clock(), event)
        heapq.heappush(self._waiters, entry)
        try:
            event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # the slot was handed over as this waiter was killed
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        """Give back a slot; it goes to the waiter with the earliest deadline."""
        self._in_flight -= 1
        self._wake()

    def observe(self, rtt_s: float, signal: str) -> None:
        """Adapt to one upstream answer: its latency, and whether it signalled overload."""
        now = self._clock()
        if signal == OVERLOAD:
            # One cut per round trip: requests refused together are one signal.
            if now - self._last_backoff >= (self._long_rtt_s or rtt_s):
                self._last_backoff = now
                self._set(self._limit * BACKOFF_RATIO)
            return
        if not math.isfinite(rtt_s) or rtt_s <= 0:
            return
        if self._long_rtt_s is None:
            self._long_rtt_s = rtt_s
        else:
            self._long_rtt_s += _LONG_WEIGHT * (rtt_s - self._long_rtt_s)
        gradient = max(_MIN_GRADIENT, min(1.0, LATENCY_TOLERANCE * self._long_rtt_s / rtt_s))
        # About +1 per round trip: each of the ``limit`` answers of a round trip adds 1/limit.
        self._set(self._limit * gradient + 1.0 / max(1.0, self._limit))

    def _set(self, limit: float) -> None:
        self._limit = max(float(self._floor), min(float(self._ceiling), limit))
        prometheus_metrics.UPSTREAM_LIMIT.set(self.limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            _, _, _, event = heapq.heappop(self._waiters)
            self._in_flight += 1
            event.set()

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimiter(limit={self.limit}, ceiling={self._ceiling}, "
            f"in_flight={self._in_flight})"
        )


class Share:
    """One party's share of a limiter's slots: at most half of its current limit (at least one).

    Held *before* a slot is taken, so that a party whose requests hang (a client whose rows
    make upstream slow) waits here, never holding every slot the others need. The bound
    follows the limit as it adapts.
    """

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        """A share of ``limiter``'s slots."""
        self._limiter = limiter
        self._held = 0
        self._freed = Event()

    @property
    def bound(self) -> int:
        """Slots the party may hold now."""
        return max(1, self._limiter.limit // 2)

    def __enter__(self) -> None:
        while self._held >= self.bound:
            self._freed.clear()
            # The limit may also grow while nothing is freed: look again now and then.
            self._freed.wait(_SHARE_RECHECK_S)
        self._held += 1

    def __exit__(self, *exc: object) -> None:
        self._held -= 1
        self._freed.set()
