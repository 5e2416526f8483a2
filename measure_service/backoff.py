"""Exponential backoff with full jitter, for spacing upstream retries."""

from __future__ import annotations

import math
import random


class Backoff:
    """Delays that double per attempt up to a cap, each drawn uniformly from [0, ceiling].

    Full jitter (rather than a fixed or "equal" jitter) spreads the retries of many workers that
    failed at the same moment, so they do not hit a recovering upstream in lock-step.
    """

    __slots__ = ("_base_s", "_cap_s", "_rng")

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        """Build a schedule: retry ``n`` (0-based) waits up to ``min(cap_s, base_s * 2**n)``."""
        if not _is_finite_number(base_s) or base_s <= 0:
            raise ValueError(f"base_s must be a finite number > 0, got {base_s!r}")
        if not _is_finite_number(cap_s) or cap_s < base_s:
            raise ValueError(f"cap_s must be a finite number >= base_s, got {cap_s!r}")
        self._base_s = float(base_s)
        self._cap_s = float(cap_s)
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self, attempt: int) -> float:
        """Return the largest delay retry number ``attempt`` (0-based) may draw."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
        # Past 2**64 the product only overflows; the cap has long been reached by then.
        if attempt >= 64:
            return self._cap_s
        return min(self._cap_s, math.ldexp(self._base_s, attempt))

    def delay(self, attempt: int) -> float:
        """Return the seconds to wait before retry number ``attempt`` (0-based)."""
        return self._rng.uniform(0.0, self.ceiling(attempt))

    def __repr__(self) -> str:
        return f"Backoff(base_s={self._base_s}, cap_s={self._cap_s})"


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
