"""A circuit breaker that stops calling upstream after consecutive failures."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Literal

from measure_service import metrics

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed, open and half-open, driven by the outcome of each upstream HTTP attempt.

    - closed: every call is allowed; ``failure_threshold`` consecutive failures open it.
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
    ) -> None:
        """Open after ``failure_threshold`` failures in a row; probe again after ``cooldown_s``."""
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
        self._threshold = failure_threshold
        self._cooldown_s = float(cooldown_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

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
                return True
            if self._state == "open":
                return False
            if self._probe_started_at is None or now - self._probe_started_at >= self._cooldown_s:
                self._probe_started_at = now
                return True
            return False

    def record_success(self) -> None:
        """Report an upstream attempt that got an answer; closes the breaker whatever its state."""
        with self._lock:
            self._failures = 0
            if self._state != "closed":
                self._transition("closed", self._clock())

    def record_failure(self) -> None:
        """Report a failed upstream attempt; may open the breaker."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if self._state == "half_open":
                self._transition("open", now)
                return
            if self._state == "open":
                # A straggler that left before the breaker opened; the cool-down already runs.
                return
            self._failures += 1
            if self._failures >= self._threshold:
                self._transition("open", now)

    def _advance(self, now: float) -> None:
        if self._state == "open" and now - self._opened_at >= self._cooldown_s:
            self._transition("half_open", now)

    def _transition(self, to: State, now: float) -> None:
        self._state = to
        self._probe_started_at = None
        if to == "open":
            self._opened_at = now
        if to == "closed":
            self._failures = 0
        metrics.BREAKER_TRANSITIONS.labels(to=to).inc()
        metrics.BREAKER_OPEN.set(0 if to == "closed" else 1)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self._state!r}, failure_threshold={self._threshold}, "
            f"cooldown_s={self._cooldown_s})"
        )
