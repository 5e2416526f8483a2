"""Fakes for measure_service unit tests: an in-process upstream, and a settable clock fixture.

The integration fixtures (real simulator and gunicorn) live in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from gevent.event import Event

from measure_service.upstream import RowResult, UpstreamError
from tests.conftest import FakeClock

GRAMS_PER_IMPRESSION = 0.066


class FakeUpstream:
    """Answers like Scope3 (an inventoryId without a dot is a row error), recording each call.

    ``hold()`` keeps calls waiting until ``release()``; ``fail_with`` makes calls raise. A
    request holding a row whose inventoryId starts with ``poison`` fails as a whole: with 400 if
    the id contains ``400``, else with 500.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], dict[str, str]]] = []
        self.fail_with: UpstreamError | None = None
        # Verdicts reported with settle(): True when a failure was put down to a row.
        self.settled: list[bool] = []
        self._gate = Event()
        self._gate.set()
        self.started = Event()

    @property
    def rows_sent(self) -> list[dict[str, Any]]:
        return [row for rows, _ in self.calls for row in rows]

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def measure(
        self, rows: Sequence[Mapping[str, Any]], params: Mapping[str, str], *,
        judge: bool = False, read_timeout_s: float | None = None, observe_latency: bool = True,
    ) -> dict[str, RowResult]:
        self.calls.append(([dict(row) for row in rows], dict(params)))
        self.started.set()
        self._gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        poisoned = [row for row in rows if str(row["inventoryId"]).startswith("poison")]
        if poisoned:
            status = 400 if "400" in poisoned[0]["inventoryId"] else 500
            error = UpstreamError(
                "http_4xx" if status == 400 else "http_5xx", f"upstream answered {status}",
                status=status,
            )
            if status == 500 and judge:
                error.judged = False
            raise error
        return {str(row["rowIdentifier"]): _answer(row) for row in rows}

    def settle(self, error: UpstreamError, *, explained: bool) -> None:
        self.settled.append(explained)


def _answer(row: Mapping[str, Any]) -> RowResult:
    if "." not in row["inventoryId"]:
        return RowResult(None, None, f"unknown inventory {row['inventoryId']}")
    return RowResult(row["impressions"] * GRAMS_PER_IMPRESSION, "modeled", None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()
