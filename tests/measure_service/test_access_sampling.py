"""ACCESS_LOG sampling decides before gunicorn builds an access line."""

from __future__ import annotations

from typing import Any

import pytest
from gunicorn.glogging import Logger as GunicornLogger  # type: ignore[import-untyped]

from measure_service import logs


def access_calls(monkeypatch: pytest.MonkeyPatch, rate: float, requests: int) -> int:
    """How many of ``requests`` reach gunicorn's own (costly) access logging at ``rate``."""
    calls: list[Any] = []
    monkeypatch.setattr(GunicornLogger, "access", lambda self, *args: calls.append(args))
    logger_class = logs.sampled_access_logger(rate)
    logger = logger_class.__new__(logger_class)  # gunicorn's set-up is not under test
    for _ in range(requests):
        logger.access(None, None, {}, 0.001)
    return len(calls)


def test_access_log_off_never_reaches_gunicorns_access_logging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert access_calls(monkeypatch, 0.0, 50) == 0


def test_access_log_on_passes_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    assert access_calls(monkeypatch, 1.0, 50) == 50


def test_a_sample_keeps_the_draws_below_the_rate() -> None:
    draws = iter([0.05, 0.5, 0.09, 0.95])
    sampler = logs.SampleFilter(0.1, rand=lambda: next(draws))
    assert [sampler.keep() for _ in range(4)] == [True, False, True, False]
