"""UpstreamClient against a mocked Scope3, and against the simulator for socket faults."""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import gevent
import pytest
import requests
import responses
from prometheus_client import REGISTRY

from devtools.harness import free_port
from measure_service.backoff import Backoff
from measure_service.breaker import CircuitBreaker
from measure_service.upstream import (
    MAX_RETRY_AFTER_S,
    RowResult,
    UpstreamClient,
    UpstreamError,
    parse_retry_after,
)
from tests.conftest import FakeClock, Processes, Simulator, TopRandom

BASE = "http://scope3.test"
URL = BASE + "/v2/measure"
TOKEN = "tok-3f9a1c77-do-not-leak"
WALL_NOW = 1_800_000_000.0


class _Clock(FakeClock):
    """A monotonic clock that only moves when the client sleeps."""

    def __init__(self) -> None:
        super().__init__(100.0)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


def _client(
    clock: _Clock, *, retries: int = 2, breaker: CircuitBreaker | None = None
) -> UpstreamClient:
    return UpstreamClient(
        BASE, TOKEN, connect_timeout_s=1.0, read_timeout_s=2.0, pool_size=4, retries=retries,
        breaker=breaker, backoff=Backoff(0.1, 1.0, rng=TopRandom()), clock=clock,
        sleep=clock.sleep, wall_clock=lambda: WALL_NOW,
    )


def _row(identifier: str, inventory: str = "nytimes.com") -> dict[str, Any]:
    return {"rowIdentifier": identifier, "inventoryId": inventory, "utcDatetime": "2024-10-30",
            "impressions": 1000, "country": "US", "channel": "web", "deviceType": "pc",
            "region": None, "network": None}


def _answer(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"requestId": "x", "totalEmissions": 1.0, "rows": list(rows)}


def _ok_row(identifier: str, grams: float = 66.0) -> dict[str, Any]:
    return {"rowIdentifier": identifier, "totalEmissions": grams, "inventoryCoverage": "modeled"}


def _count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("measure_upstream_requests_total", {"outcome": outcome})
    return value or 0.0


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


# --- answers -------------------------------------------------------------------------------------

def test_a_successful_answer_is_keyed_by_row_identifier(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("a", 66.0), _ok_row("b", 12.5)))
    results = _client(clock).measure([_row("a"), _row("b", "nba.com")], {})
    assert results == {"a": RowResult(66.0, "modeled", None), "b": RowResult(12.5, "modeled", None)}


def test_the_request_carries_token_user_agent_params_and_rows(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("a")))
    _client(clock).measure([_row("a")], {"framework": "gmsf", "latest": "true"})
    sent = mocked.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert f"(pid {os.getpid()})" in sent.headers["User-Agent"]
    assert sent.headers["User-Agent"].startswith("measure-cache/")
    assert sent.url is not None and sent.body is not None
    assert parse_qs(urlsplit(sent.url).query) == {
        "framework": ["gmsf"], "latest": ["true"], "includeRows": ["true"]}
    assert json.loads(sent.body) == {"rows": [_row("a")]}


def test_rows_are_matched_by_identifier_when_the_answer_is_out_of_order(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("c", 3.0), _ok_row("a", 1.0), _ok_row("b", 2.0)))
    results = _client(clock).measure([_row("a"), _row("b"), _row("c")], {})
    assert {key: value.total_emissions for key, value in results.items()} == {
        "a": 1.0, "b": 2.0, "c": 3.0}


def test_a_row_missing_from_the_answer_is_missing_from_the_result(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("a")))
    results = _client(clock).measure([_row("a"), _row("b")], {})
    assert set(results) == {"a"}


def test_rows_upstream_added_are_ignored(clock: _Clock, mocked: responses.RequestsMock) -> None:
    mocked.post(URL, json=_answer(_ok_row("a"), _ok_row("stranger")))
    assert set(_client(clock).measure([_row("a")], {})) == {"a"}


def test_a_row_level_error_carries_upstream_message_and_no_emissions(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    bad = {"rowIdentifier": "b", "totalEmissions": None, "error": {"message": "unknown inventory"}}
    mocked.post(URL, json=_answer(_ok_row("a"), bad))
    results = _client(clock).measure([_row("a"), _row("b", "nba")], {})
    assert results["b"] == RowResult(None, None, "unknown inventory")
    assert results["a"].error is None


def test_upstream_text_echoing_the_token_is_redacted_before_it_is_returned(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    echoed = {"rowIdentifier": "a", "inventoryCoverage": f"cov {TOKEN}",
              "error": {"message": f"bad token {TOKEN}"}}
    mocked.post(URL, json=_answer(echoed))
    result = _client(clock).measure([_row("a")], {})["a"]
    assert TOKEN not in f"{result.error} {result.inventory_coverage}"


def test_an_answer_with_row_errors_is_counted_as_row_error(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer({"rowIdentifier": "a", "error": {"message": "bad"}}))
    before = _count("row_error")
    _client(clock).measure([_row("a")], {})
    assert _count("row_error") == before + 1


def test_a_clean_answer_is_counted_as_ok(clock: _Clock, mocked: responses.RequestsMock) -> None:
    mocked.post(URL, json=_answer(_ok_row("a")))
    before = _count("ok")
    _client(clock).measure([_row("a")], {})
    assert _count("ok") == before + 1


def test_an_empty_batch_sends_nothing(clock: _Clock, mocked: responses.RequestsMock) -> None:
    assert _client(clock).measure([], {}) == {}
    assert len(mocked.calls) == 0


@pytest.mark.parametrize(
    "rows",
    [[{"inventoryId": "x.com"}], [_row("a"), _row("a")], [{"rowIdentifier": 7}]],
    ids=["missing", "duplicate", "not-a-string"],
)
def test_rows_without_unique_string_identifiers_raise_a_value_error(
    clock: _Clock, rows: list[dict[str, Any]]
) -> None:
    with pytest.raises(ValueError, match="rowIdentifier"):
        _client(clock).measure(rows, {})


# --- HTTP errors and retries ---------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_raises_http_4xx_without_retry_and_sets_auth_failure(
    clock: _Clock, mocked: responses.RequestsMock, status: int
) -> None:
    mocked.post(URL, status=status, json={"message": "no"})
    client = _client(clock)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {})
    assert (caught.value.outcome, caught.value.status) == ("http_4xx", status)
    assert len(mocked.calls) == 1
    assert client.auth_failure is not None and str(status) in client.auth_failure


def test_a_success_clears_the_auth_failure(clock: _Clock, mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=401)
    mocked.post(URL, json=_answer(_ok_row("a")))
    client = _client(clock)
    with pytest.raises(UpstreamError):
        client.measure([_row("a")], {})
    client.measure([_row("a")], {})
    assert client.auth_failure is None


def test_a_refused_token_is_logged_at_error_at_most_once_a_minute(
    clock: _Clock, mocked: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.post(URL, status=401)
    client = _client(clock)
    caplog.set_level(logging.DEBUG, logger="measure_service.upstream")

    def refused() -> None:
        with pytest.raises(UpstreamError):
            client.measure([_row("a")], {})

    for _ in range(3):
        refused()
        clock.now += 10.0
    assert len(caplog.records) == 1
    clock.now += 60.0
    refused()
    assert len(caplog.records) == 2


def test_other_4xx_are_not_retried(clock: _Clock, mocked: responses.RequestsMock) -> None:
    mocked.post(URL, status=422, json={"message": "bad rows"})
    with pytest.raises(UpstreamError) as caught:
        _client(clock).measure([_row("a")], {})
    assert (caught.value.outcome, caught.value.status) == ("http_4xx", 422)
    assert len(mocked.calls) == 1


def test_a_500_then_success_returns_the_rows_after_one_backoff(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=500)
    mocked.post(URL, json=_answer(_ok_row("a")))
    retries_before = REGISTRY.get_sample_value("measure_upstream_retries_total") or 0.0
    results = _client(clock).measure([_row("a")], {})
    assert results["a"].total_emissions == 66.0
    assert clock.sleeps == [pytest.approx(0.1)]
    assert REGISTRY.get_sample_value("measure_upstream_retries_total") == retries_before + 1


def test_persistent_5xx_gives_up_after_the_retries_with_growing_backoff(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=503)
    with pytest.raises(UpstreamError) as caught:
        _client(clock, retries=2).measure([_row("a")], {})
    assert (caught.value.outcome, caught.value.status) == ("http_5xx", 503)
    assert len(mocked.calls) == 3
    assert clock.sleeps == [pytest.approx(0.1), pytest.approx(0.2)]


def test_a_429_with_retry_after_seconds_delays_the_retry_that_long(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    sent_at: list[float] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent_at.append(clock.now)
        if len(sent_at) == 1:
            return 429, {"Retry-After": "2"}, "{}"
        return 200, {}, json.dumps(_answer(_ok_row("a")))

    mocked.add_callback(responses.POST, URL, callback=answer)
    assert _client(clock).measure([_row("a")], {})["a"].error is None
    assert sent_at[1] - sent_at[0] == pytest.approx(2.0)


def test_a_429_with_an_http_date_retry_after_is_honoured(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    when = format_datetime(datetime.fromtimestamp(WALL_NOW + 5, tz=timezone.utc), usegmt=True)
    mocked.post(URL, status=429, headers={"Retry-After": when})
    with pytest.raises(UpstreamError) as caught:
        _client(clock, retries=0).measure([_row("a")], {})
    assert (caught.value.outcome, caught.value.retry_after) == ("http_429", 5.0)


def test_retry_after_holds_back_every_later_request_from_the_client(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    sent_at: list[float] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent_at.append(clock.now)
        if len(sent_at) == 1:
            return 429, {"Retry-After": "3"}, "{}"
        return 200, {}, json.dumps(_answer(_ok_row("a")))

    mocked.add_callback(responses.POST, URL, callback=answer)
    client = _client(clock, retries=0)
    with pytest.raises(UpstreamError):
        client.measure([_row("a")], {})
    client.measure([_row("a")], {})
    assert sent_at[1] - sent_at[0] == pytest.approx(3.0)


def test_a_timeout_is_retried_then_raised_as_timeout(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, body=requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(UpstreamError) as caught:
        _client(clock, retries=1).measure([_row("a")], {})
    assert caught.value.outcome == "timeout"
    assert len(mocked.calls) == 2


def test_a_connection_error_is_retried_then_raised_as_connection_error(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(UpstreamError) as caught:
        _client(clock, retries=2).measure([_row("a")], {})
    assert caught.value.outcome == "connection_error"
    assert len(mocked.calls) == 3


def test_a_body_that_is_not_json_is_malformed_and_not_retried(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, body='{"rows": [{"rowIdent', content_type="application/json")
    with pytest.raises(UpstreamError) as caught:
        _client(clock).measure([_row("a")], {})
    assert caught.value.outcome == "malformed"
    assert len(mocked.calls) == 1


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"rows": "nope"},
        {"requestId": "x"},
        {"rows": ["a"]},
        {"rows": [{"totalEmissions": 1.0}]},
        {"rows": [{"rowIdentifier": "a", "totalEmissions": "66"}]},
        {"rows": [{"rowIdentifier": "a", "totalEmissions": True}]},
        {"rows": [{"rowIdentifier": "a", "totalEmissions": 1.0, "inventoryCoverage": 3}]},
        {"rows": [{"rowIdentifier": "a", "error": 5}]},
    ],
    ids=["list", "rows-not-list", "no-rows", "row-not-object", "no-identifier",
         "string-emissions", "bool-emissions", "number-coverage", "number-error"],
)
def test_an_answer_of_the_wrong_shape_is_malformed(
    clock: _Clock, mocked: responses.RequestsMock, document: Any
) -> None:
    mocked.post(URL, json=document)
    with pytest.raises(UpstreamError) as caught:
        _client(clock).measure([_row("a")], {})
    assert caught.value.outcome == "malformed"


def test_non_finite_emissions_are_malformed(clock: _Clock, mocked: responses.RequestsMock) -> None:
    mocked.post(URL, body='{"rows": [{"rowIdentifier": "a", "totalEmissions": NaN}]}')
    with pytest.raises(UpstreamError) as caught:
        _client(clock).measure([_row("a")], {})
    assert caught.value.outcome == "malformed"


# --- circuit breaker -----------------------------------------------------------------------------

def test_an_open_breaker_raises_breaker_open_without_calling(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    with pytest.raises(UpstreamError) as caught:
        _client(clock, breaker=breaker).measure([_row("a")], {})
    assert caught.value.outcome == "breaker_open"
    assert len(mocked.calls) == 0


def test_a_retried_call_counts_once_towards_opening_the_breaker(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=500)
    breaker = CircuitBreaker(2, 10.0, clock)
    client = _client(clock, retries=2, breaker=breaker)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {})
    assert caught.value.outcome == "http_5xx" and len(mocked.calls) == 3
    assert breaker.state == "closed"
    with pytest.raises(UpstreamError):
        client.measure([_row("a")], {})
    assert breaker.state == "open"


def test_requests_waiting_behind_a_retry_after_pause_do_not_open_the_breaker(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=429, headers={"Retry-After": "30"})
    waiting = [clock.now] * 4
    breaker = CircuitBreaker(
        5, 10.0, clock, overdue_after_s=1.0, waiting_since=lambda: waiting
    )
    client = _client(clock, retries=0, breaker=breaker)
    with pytest.raises(UpstreamError):
        client.measure([_row("a")], {})
    clock.now += 30
    assert breaker.state == "closed"


def test_a_5xx_left_to_the_caller_is_neither_retried_nor_counted(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=500)
    breaker = CircuitBreaker(1, 10.0, clock)
    client = _client(clock, retries=2, breaker=breaker)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {}, judge=True)
    assert caught.value.judged is False and len(mocked.calls) == 1
    assert breaker.state == "closed"


@pytest.mark.parametrize("failure", [
    requests.exceptions.ReadTimeout("timed out"), requests.exceptions.ConnectionError("reset"),
])
def test_no_answer_left_to_the_caller_is_neither_retried_nor_counted(
    clock: _Clock, mocked: responses.RequestsMock, failure: Exception
) -> None:
    mocked.post(URL, body=failure)
    breaker = CircuitBreaker(1, 10.0, clock)
    client = _client(clock, retries=2, breaker=breaker)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {}, judge=True)
    assert caught.value.judged is False and len(mocked.calls) == 1
    assert breaker.state == "closed"


def test_a_malformed_answer_left_to_the_caller_is_not_counted(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, body=b'{"rows": [{"rowIdent')
    breaker = CircuitBreaker(1, 10.0, clock)
    client = _client(clock, breaker=breaker)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {}, judge=True)
    assert caught.value.outcome == "malformed" and caught.value.judged is False
    assert breaker.state == "closed"


def test_an_identifier_the_answer_holds_twice_answers_neither_row(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("b", 1.0), _ok_row("a", 2.0), _ok_row("a", 3.0)))
    assert _client(clock).measure([_row("a"), _row("b")], {}) == {
        "b": RowResult(1.0, "modeled", None)
    }


def test_rows_answered_out_of_order_are_matched_by_identifier(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("b", 1.0), _ok_row("a", 2.0)))
    answers = _client(clock).measure([_row("a"), _row("b")], {})
    assert answers["a"].total_emissions == 2.0 and answers["b"].total_emissions == 1.0


def test_a_5xx_settled_as_explained_by_a_row_does_not_open_the_breaker(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=500)
    breaker = CircuitBreaker(1, 10.0, clock)
    client = _client(clock, retries=0, breaker=breaker)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {}, judge=True)
    client.settle(caught.value, explained=True)
    assert breaker.state == "closed"


def test_a_5xx_settled_as_unexplained_counts_once(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=500)
    breaker = CircuitBreaker(1, 10.0, clock)
    client = _client(clock, retries=0, breaker=breaker)
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {}, judge=True)
    client.settle(caught.value, explained=False)
    client.settle(caught.value, explained=False)
    assert breaker.state == "open" and caught.value.judged


def test_a_breaker_that_opens_between_retries_ends_the_call_with_the_real_failure(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=502)
    breaker = CircuitBreaker(1, 10.0, clock)
    client = _client(clock, retries=2, breaker=breaker)
    sleep = clock.sleep

    def other_call_fails_meanwhile(seconds: float) -> None:
        breaker.record_failure()
        sleep(seconds)

    clock.sleep = other_call_fails_meanwhile  # type: ignore[method-assign]
    client._sleep = other_call_fails_meanwhile
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {})
    assert (caught.value.outcome, caught.value.status) == ("http_5xx", 502)
    assert len(mocked.calls) == 1


def test_a_plain_4xx_does_not_trip_the_breaker(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=400)
    breaker = CircuitBreaker(1, 10.0, clock)
    with pytest.raises(UpstreamError):
        _client(clock, breaker=breaker).measure([_row("a")], {})
    assert breaker.state == "closed"


def test_a_successful_probe_closes_the_breaker(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, json=_answer(_ok_row("a")))
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 10.0
    _client(clock, breaker=breaker).measure([_row("a")], {})
    assert breaker.state == "closed"


# --- secrets -------------------------------------------------------------------------------------

def _failing_answers() -> list[Callable[[responses.RequestsMock], None]]:
    return [
        lambda m: m.post(URL, status=401, body=f"bad token {TOKEN}"),
        lambda m: m.post(URL, status=500, body=f"upstream echoed Authorization: Bearer {TOKEN}"),
        lambda m: m.post(URL, status=429, headers={"Retry-After": "1"}, body=TOKEN),
        lambda m: m.post(URL, body=f"<html>{TOKEN}</html>"),
        lambda m: m.post(URL, body=requests.exceptions.ReadTimeout("timed out")),
        lambda m: m.post(URL, body=requests.exceptions.ConnectionError("refused")),
    ]


@pytest.mark.parametrize(
    "arrange", _failing_answers(),
    ids=["401", "500", "429", "malformed", "timeout", "connection-error"],
)
def test_the_token_never_appears_in_logs_exceptions_or_reprs(
    clock: _Clock, caplog: pytest.LogCaptureFixture,
    arrange: Callable[[responses.RequestsMock], None],
) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(clock, retries=1)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        arrange(mocked)
        with pytest.raises(UpstreamError) as caught:
            client.measure([_row("a")], {})
    assert caplog.records
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(vars(record))
    rendered = "".join(traceback.format_exception(caught.value))
    assert TOKEN not in rendered
    assert TOKEN not in repr(caught.value)
    assert TOKEN not in repr(client)


# --- Retry-After parsing -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("header", "expected"),
    [("2", 2.0), (" 10 ", 10.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("", None),
     ("-3", None), ("soon", None), ("nan", None), ("99999", MAX_RETRY_AFTER_S)],
)
def test_retry_after_delta_seconds_are_parsed_and_clamped(
    header: str | None, expected: float | None
) -> None:
    assert parse_retry_after(header, WALL_NOW) == expected


def test_retry_after_http_date_is_relative_to_the_wall_clock() -> None:
    when = format_datetime(datetime.fromtimestamp(WALL_NOW + 7, tz=timezone.utc), usegmt=True)
    assert parse_retry_after(when, WALL_NOW) == 7.0


def test_retry_after_http_date_in_the_past_means_now() -> None:
    when = format_datetime(datetime.fromtimestamp(WALL_NOW - 7, tz=timezone.utc), usegmt=True)
    assert parse_retry_after(when, WALL_NOW) == 0.0


# --- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"base_url": "scope3.test"}, "base_url"), ({"connect_timeout_s": 0}, "connect_timeout_s"),
     ({"read_timeout_s": float("inf")}, "read_timeout_s"), ({"pool_size": 0}, "pool_size"),
     ({"retries": -1}, "retries"), ({"token": "a\nb"}, "token")],
)
def test_bad_settings_raise_a_value_error_naming_the_argument(
    kwargs: dict[str, Any], named: str
) -> None:
    settings: dict[str, Any] = {"base_url": BASE, "token": TOKEN, "connect_timeout_s": 1.0,
                                "read_timeout_s": 1.0, "pool_size": 2, **kwargs}
    with pytest.raises(ValueError, match=named):
        UpstreamClient(**settings)


# --- socket-level faults, against the real simulator ---------------------------------------------

@pytest.fixture(scope="module")
def simulator(module_processes: Processes) -> Simulator:
    """The simulator answering at once, with the client's token."""
    return module_processes.simulator(latency_ms=0, token=TOKEN)


def _live_client(url: str, read_timeout_s: float = 2.0) -> UpstreamClient:
    return UpstreamClient(url, TOKEN, connect_timeout_s=1.0, read_timeout_s=read_timeout_s,
                          pool_size=2, retries=0)


def test_the_simulator_answers_the_client(simulator: Simulator) -> None:
    simulator.control(mode="ok")
    results = _live_client(simulator.url).measure([_row("a"), _row("b", "nba")], {"framework": "x"})
    assert results["a"].total_emissions is not None and results["a"].error is None
    assert results["b"].error is not None


def test_a_connection_reset_is_a_connection_error(simulator: Simulator) -> None:
    simulator.control(mode="reset")
    with pytest.raises(UpstreamError) as caught:
        _live_client(simulator.url).measure([_row("a")], {})
    assert caught.value.outcome == "connection_error"


def test_a_trickling_body_is_cut_off_as_a_timeout(simulator: Simulator) -> None:
    simulator.control(mode="slow_body")
    with pytest.raises(UpstreamError) as caught:
        _live_client(simulator.url, read_timeout_s=0.3).measure([_row("a")], {})
    assert caught.value.outcome == "timeout"


def test_a_hanging_upstream_is_a_timeout(simulator: Simulator) -> None:
    simulator.control(mode="hang")
    with pytest.raises(UpstreamError) as caught:
        _live_client(simulator.url, read_timeout_s=0.2).measure([_row("a")], {})
    assert caught.value.outcome == "timeout"
    simulator.control(mode="ok")


def test_an_answer_larger_than_the_limit_for_its_rows_is_malformed_and_not_retried(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    from measure_service.upstream import answer_limit

    padding = " " * answer_limit(1)
    mocked.post(URL, body=json.dumps(_answer(_ok_row("a"))) + padding)
    with pytest.raises(UpstreamError) as caught:
        _client(clock).measure([_row("a")], {})
    assert caught.value.outcome == "malformed"
    assert len(mocked.calls) == 1


def test_a_call_is_counted_at_its_first_failure_not_after_its_retries(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=503)
    breaker = CircuitBreaker(1, 10.0, clock)
    with pytest.raises(UpstreamError):
        _client(clock, retries=2, breaker=breaker).measure([_row("a")], {})
    assert breaker.state == "open" and len(mocked.calls) == 1


def test_a_retry_that_answers_closes_the_failure_streak(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    mocked.post(URL, status=503)
    mocked.post(URL, json=_answer(_ok_row("a")))
    breaker = CircuitBreaker(2, 10.0, clock)
    client = _client(clock, retries=2, breaker=breaker)
    client.measure([_row("a")], {})
    mocked.replace(responses.POST, URL, status=503)
    with pytest.raises(UpstreamError):
        client.measure([_row("a")], {})
    assert breaker.state == "closed"


def test_a_call_stopped_on_our_side_counts_neither_way_and_frees_the_half_open_probe(
    clock: _Clock, mocked: responses.RequestsMock
) -> None:
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now += 10.0  # half-open: one probe may go
    def stopped(request: Any) -> Any:
        raise gevent.GreenletExit  # what killing the calling greenlet raises mid-request

    mocked.add_callback(responses.POST, URL, callback=stopped)
    with pytest.raises(gevent.GreenletExit):
        _client(clock, breaker=breaker).measure([_row("a")], {})
    assert breaker.state == "half_open" and breaker.allow()


def test_a_refused_connection_is_upstreams_failure_never_left_to_be_judged(clock: _Clock) -> None:
    client = UpstreamClient(
        f"http://127.0.0.1:{free_port()}", TOKEN, connect_timeout_s=1.0, read_timeout_s=1.0,
        pool_size=1, retries=0, clock=clock, sleep=clock.sleep,
    )
    with pytest.raises(UpstreamError) as caught:
        client.measure([_row("a")], {}, judge=True)
    assert caught.value.outcome == "connection_error" and caught.value.unsent
    assert caught.value.judged
