"""Backoff: exponential ceilings with full jitter, deterministic under an injected random source."""

from __future__ import annotations

import random

import pytest

from measure_service.backoff import Backoff
from tests.conftest import TopRandom


def test_ceiling_doubles_per_attempt_until_the_cap() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_delay_is_drawn_up_to_the_ceiling() -> None:
    backoff = Backoff(0.25, 2.0, rng=TopRandom())
    assert [backoff.delay(n) for n in range(5)] == pytest.approx([0.25, 0.5, 1.0, 2.0, 2.0])


def test_delays_stay_within_zero_and_the_ceiling() -> None:
    backoff = Backoff(0.1, 1.5, rng=random.Random(7))
    for attempt in range(10):
        for _ in range(50):
            assert 0.0 <= backoff.delay(attempt) <= backoff.ceiling(attempt)


def test_same_seed_gives_the_same_schedule() -> None:
    first = Backoff(0.1, 5.0, rng=random.Random(42))
    second = Backoff(0.1, 5.0, rng=random.Random(42))
    assert [first.delay(n) for n in range(8)] == [second.delay(n) for n in range(8)]


def test_jitter_spreads_delays_for_one_attempt() -> None:
    backoff = Backoff(1.0, 1.0, rng=random.Random(3))
    assert len({backoff.delay(0) for _ in range(20)}) == 20


def test_huge_attempt_numbers_return_the_cap() -> None:
    assert Backoff(0.1, 3.0).ceiling(10_000) == 3.0


@pytest.mark.parametrize(
    ("base_s", "cap_s", "named"),
    [(0, 1.0, "base_s"), (-1.0, 1.0, "base_s"), (float("nan"), 1.0, "base_s"),
     (1.0, 0.5, "cap_s"), (1.0, float("inf"), "cap_s")],
)
def test_bad_settings_raise_a_value_error_naming_the_argument(
    base_s: float, cap_s: float, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        Backoff(base_s, cap_s)


@pytest.mark.parametrize("attempt", [-1, 1.5, True])
def test_bad_attempt_raises_a_value_error(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff(0.1, 1.0).delay(attempt)
