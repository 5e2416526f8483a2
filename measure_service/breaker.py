"""A circuit breaker that stops calling upstream after consecutive failures."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from measure_service import prometheus_metrics

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed, open and half-open, driven by the outcome of each upstream HTTP attempt.

    - closed: every call is allowed; ``failure_threshold`` consecutive failures open it. With
      ``overdue_after_s``, once at least one call of the streak has failed, calls still
      unanswered after that long count towards the threshold too, and so do requests that
      have waited that long to be sent (see :meth:`__init__`).
    - open: no call is allowed until ``cooldown_s`` has passed since it opened.
    - half_open: exactly one probe is allowed. Its success closes the breaker, its failure opens
      it for another cool-down. A probe whose outcome is never reported (its caller died) is
      given up after one cool-down, so the breaker cannot stay stuck half-open.

    Safe to share between threads and greenlets: every method holds a lock for a few
    arithmetic steps and never blocks while holding it.
    """

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        overdue_after_s: float | None = None,
        waiting_since: Callable[[], Iterable[float]] | None = None,
        on_transition: Callable[[State, State], None] | None = None,
    ) -> None:
        """Open after ``failure_threshold`` failures in a row; probe again after ``cooldown_s``.

        Why ``overdue_after_s``: a hung upstream fails calls only when their read timeout
        ends, and no more calls than the connection pool holds can be out at once. With a
        threshold above the pool size (5 failures, 4 connections), the last failures needed
        come from calls started after the first timeouts, a whole timeout later. Counting
        calls that are overdue (the app uses half the read timeout, far beyond a healthy
        answer) lets those calls count before they time out. A call that answers is never
        counted, and with no real failure in the streak slowness alone never opens it.

        Why ``waiting_since`` (when each request waiting for a free upstream slot asked for
        one, on ``clock``): fewer slots than the threshold may be allowed at once (an adaptive
        limit cuts them on timeouts), and while calls upstream does not answer hold every
        slot, the next request cannot even leave. It has had no answer for as long as it
        waited, so it counts like a call out; otherwise the last failures needed would come
        only from calls sent once the hung ones time out, half a read timeout later still.
        Only after a failure with no answer, though: after an answer refusing the call (a 429
        and its Retry-After pause, a 5xx) requests wait behind answers, not behind silence.

        ``on_transition(before, after)`` is called on every state change; the default records
        the upstream breaker's metrics.
        """
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        if (
            isinstance(cooldown_s, bool)
            or not isinstance(cooldown_s, (int, float))
            or not math.isfinite(cooldown_s)
            or cooldown_s <= 0
        ):
            raise ValueError(f"cooldown_s must be a finite number > 0, got {cooldown_s!r}")
        if overdue_after_s is not None and (
            isinstance(overdue_after_s, bool)
            or not isinstance(overdue_after_s, (int, float))
            or not math.isfinite(overdue_after_s)
            or overdue_after_s <= 0
        ):
            raise ValueError(
                f"overdue_after_s must be a finite number > 0, got {overdue_after_s!r}"
            )
        self._threshold = failure_threshold
        self._cooldown_s = float(cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None
        self._overdue_after_s = overdue_after_s
        self._waiting_since = waiting_since
        self._last_failure_answered = False
        # Start times of allowed calls not yet reported, oldest first. A report removes the
        # oldest: when calls finish out of order, the ones left look younger than they are,
        # so this can only count too few calls as overdue, never too many. The bound keeps a
        # call whose caller died from growing it; more than the threshold is never needed.
        self._out: deque[float] = deque(maxlen=failure_threshold)
        self._on_transition = on_transition or _record_upstream_transition

    @property
    def state(self) -> State:
        """The current state; an open breaker whose cool-down has passed reads as half-open."""
        with self._lock:
            self._advance(self._clock())
            return self._state

    def allow(self) -> bool:
        """Return True if a request may go upstream now (in half-open: True for one caller only)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._state == "closed":
                self._out.append(now)
                return True
            if self._state == "open":
                return False
            if self._probe_started_at is None or now - self._probe_started_at >= self._cooldown_s:
                self._probe_started_at = now
                self._out.append(now)
                return True
            return False

    def record_success(self) -> None:
        """Report an upstream attempt that got an answer; closes the breaker whatever its state."""
        with self._lock:
            self._forget_oldest_call()
            self._failures = 0
            if self._state != "closed":
                self._transition("closed", self._clock())

    def record_excused(self) -> None:
        """Report an attempt whose failure was put down to its input: it counts neither way.

        A half-open probe that ends so leaves the breaker half-open, ready for another probe.
        """
        with self._lock:
            self._forget_oldest_call()
            if self._state == "half_open":
                self._probe_started_at = None

    def record_failure(self, *, answered: bool = False) -> None:
        """Report a failed upstream attempt; may open the breaker.

        ``answered``: upstream answered, refusing the call (5xx, 429, malformed), rather than
        not answering at all; requests waiting to be sent then do not count as overdue.
        """
        with self._lock:
            self._forget_oldest_call()
            self._last_failure_answered = answered
            now = self._clock()
            self._advance(now)
            if self._state == "half_open":
                self._transition("open", now)
                return
            if self._state == "open":
                # A straggler that left before the breaker opened; the cool-down already runs.
                return
            self._failures += 1
            if self._failures + self._overdue(now) >= self._threshold:
                self._transition("open", now)

    def _advance(self, now: float) -> None:
        if self._state == "open" and now - self._opened_at >= self._cooldown_s:
            self._transition("half_open", now)
        elif (
            self._state == "closed"
            and self._failures
            and self._failures + self._overdue(now) >= self._threshold
        ):
            self._transition("open", now)

    def _overdue(self, now: float) -> int:
        """Calls still out, and requests still waiting to be sent, after ``overdue_after_s``
        (0 without that setting)."""
        if self._overdue_after_s is None:
            return 0
        limit = self._overdue_after_s
        waiting: Iterable[float] = ()
        if self._waiting_since is not None and not self._last_failure_answered:
            waiting = self._waiting_since()
        return (sum(1 for started in self._out if now - started >= limit)
                + sum(1 for asked in waiting if now - asked >= limit))

    def _forget_oldest_call(self) -> None:
        if self._out:
            self._out.popleft()

    def _transition(self, to: State, now: float) -> None:
        before, self._state = self._state, to
        self._probe_started_at = None
        if to == "open":
            self._opened_at = now
        if to == "closed":
            self._failures = 0
        self._on_transition(before, to)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self._state!r}, failure_threshold={self._threshold}, "
            f"cooldown_s={self._cooldown_s})"
        )


def _record_upstream_transition(_before: State, after: State) -> None:
    prometheus_metrics.BREAKER_TRANSITIONS.labels(to=after).inc()
    prometheus_metrics.BREAKER_OPEN.set(0 if after == "closed" else 1)
    # Written now, not at the next periodic flush: alerts and dashboards act on this state,
    # and a transition is rare.
    prometheus_metrics.flush()
