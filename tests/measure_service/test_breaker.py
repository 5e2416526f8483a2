"""CircuitBreaker: closed -> open -> half-open -> closed/open, driven by an injected clock."""

from __future__ import annotations

import os

import gevent
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from measure_service.breaker import CircuitBreaker
from measure_service.concurrency_limiter import OVERLOAD, AdaptiveLimiter
from measure_service.config import METRICS_DIR_VARIABLE
from tests.conftest import FakeClock


def _breaker(threshold: int = 3, cooldown_s: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(threshold, cooldown_s, clock), clock


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure()


def _transitions(to: str) -> float:
    value = REGISTRY.get_sample_value("measure_upstream_breaker_transitions_total", {"to": to})
    return value or 0.0


def test_a_new_breaker_is_closed_and_allows_calls() -> None:
    breaker, _ = _breaker()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_it_stays_closed_below_the_failure_threshold() -> None:
    breaker, _ = _breaker(threshold=3)
    _fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.allow()


def test_it_opens_after_the_threshold_of_consecutive_failures() -> None:
    breaker, _ = _breaker(threshold=3)
    _fail(breaker, 3)
    assert breaker.state == "open"
    assert not breaker.allow()


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker, _ = _breaker(threshold=3)
    _fail(breaker, 2)
    breaker.record_success()
    _fail(breaker, 2)
    assert breaker.state == "closed"


def test_an_open_breaker_refuses_until_the_cooldown_passes() -> None:
    breaker, clock = _breaker(cooldown_s=10.0)
    _fail(breaker, 3)
    clock.now += 9.99
    assert not breaker.allow()
    assert breaker.state == "open"


def test_after_the_cooldown_it_is_half_open_and_allows_exactly_one_probe() -> None:
    breaker, clock = _breaker(cooldown_s=10.0)
    _fail(breaker, 3)
    clock.now += 10.0
    assert breaker.state == "half_open"
    assert [breaker.allow() for _ in range(5)] == [True, False, False, False, False]


def test_a_successful_probe_closes_the_breaker() -> None:
    breaker, clock = _breaker()
    _fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_a_failed_probe_reopens_it_for_another_cooldown() -> None:
    breaker, clock = _breaker(cooldown_s=10.0)
    _fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 9.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_a_probe_that_never_reports_is_given_up_after_a_cooldown() -> None:
    breaker, clock = _breaker(cooldown_s=10.0)
    _fail(breaker, 3)
    clock.now += 10.0
    assert breaker.allow()
    clock.now += 10.0
    assert breaker.allow()


def test_after_closing_it_needs_the_full_threshold_to_open_again() -> None:
    breaker, clock = _breaker(threshold=3)
    _fail(breaker, 3)
    clock.now += 10.0
    breaker.allow()
    breaker.record_success()
    _fail(breaker, 2)
    assert breaker.state == "closed"


def test_transitions_are_counted_by_target_state() -> None:
    breaker, clock = _breaker()
    before = {to: _transitions(to) for to in ("open", "half_open", "closed")}
    _fail(breaker, 3)
    clock.now += 10.0
    breaker.allow()
    breaker.record_success()
    after = {to: _transitions(to) for to in ("open", "half_open", "closed")}
    assert {to: after[to] - before[to] for to in after} == {"open": 1, "half_open": 1, "closed": 1}


def test_the_open_gauge_follows_the_state() -> None:
    breaker, clock = _breaker()
    _fail(breaker, 3)
    assert REGISTRY.get_sample_value("measure_upstream_breaker_open") == 1.0
    clock.now += 10.0
    breaker.allow()
    breaker.record_success()
    assert REGISTRY.get_sample_value("measure_upstream_breaker_open") == 0.0


def _open_gauge_in_the_files() -> float | None:
    """The gauge as /metrics reads it: from the metric files every worker writes."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ[METRICS_DIR_VARIABLE])
    return registry.get_sample_value("measure_upstream_breaker_open")


def test_the_open_gauge_reaches_the_metric_files_at_each_transition() -> None:
    breaker, clock = _breaker()
    _fail(breaker, 3)
    assert _open_gauge_in_the_files() == 1.0
    clock.now += 10.0
    breaker.allow()
    breaker.record_success()
    assert _open_gauge_in_the_files() == 0.0


@pytest.mark.parametrize(
    ("threshold", "cooldown_s", "named"),
    [(0, 1.0, "failure_threshold"), (2.5, 1.0, "failure_threshold"),
     (True, 1.0, "failure_threshold"), (3, 0, "cooldown_s"), (3, float("nan"), "cooldown_s")],
)
def test_bad_settings_raise_a_value_error_naming_the_argument(
    threshold: int, cooldown_s: float, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        CircuitBreaker(threshold, cooldown_s)


@pytest.mark.parametrize("overdue_after_s", [0, -1.0, float("nan"), float("inf"), True])
def test_a_bad_overdue_limit_raises_a_value_error_naming_it(overdue_after_s: float) -> None:
    with pytest.raises(ValueError, match="overdue_after_s"):
        CircuitBreaker(3, 1.0, overdue_after_s=overdue_after_s)


# --- calls still out past the overdue limit (a hung upstream) -----------------------------------

OVERDUE_S = 0.5


def _timed_breaker(threshold: int = 3) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(threshold, 10.0, clock, overdue_after_s=OVERDUE_S), clock


def _start_calls(breaker: CircuitBreaker, count: int) -> None:
    for _ in range(count):
        assert breaker.allow()


def test_once_a_call_has_failed_overdue_calls_count_towards_the_threshold() -> None:
    breaker, clock = _timed_breaker(threshold=3)
    _start_calls(breaker, 3)
    clock.now += OVERDUE_S
    breaker.record_failure()  # one failure and two calls still out past the limit
    assert breaker.state == "open"


def test_the_breaker_opens_when_enough_calls_become_overdue_after_a_failure() -> None:
    breaker, clock = _timed_breaker(threshold=3)
    _start_calls(breaker, 3)
    breaker.record_failure()
    assert breaker.state == "closed"
    clock.now += OVERDUE_S
    assert breaker.state == "open"


def test_slow_calls_alone_never_open_the_breaker() -> None:
    breaker, clock = _timed_breaker(threshold=3)
    _start_calls(breaker, 5)
    clock.now += 100 * OVERDUE_S
    assert breaker.state == "closed"


def test_calls_out_for_less_than_the_overdue_limit_do_not_count() -> None:
    breaker, clock = _timed_breaker(threshold=3)
    _start_calls(breaker, 3)
    clock.now += OVERDUE_S * 0.9
    breaker.record_failure()
    assert breaker.state == "closed"


def test_a_call_that_answered_is_not_counted_as_overdue() -> None:
    breaker, clock = _timed_breaker(threshold=3)
    _start_calls(breaker, 3)
    clock.now += OVERDUE_S
    breaker.record_success()
    breaker.record_failure()  # one failure and one call still out
    assert breaker.state == "closed"


def test_without_an_overdue_limit_only_reported_failures_count() -> None:
    breaker, clock = _breaker(threshold=3)
    _start_calls(breaker, 3)
    clock.now += 1000.0
    breaker.record_failure()
    assert breaker.state == "closed"


def _waiting_breaker(
    waiting: list[float], threshold: int = 3
) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(
        threshold, 10.0, clock, overdue_after_s=OVERDUE_S, waiting_since=lambda: waiting
    )
    return breaker, clock


def test_once_a_call_has_failed_requests_waiting_to_be_sent_count_as_overdue() -> None:
    waiting: list[float] = []
    breaker, clock = _waiting_breaker(waiting, threshold=3)
    _start_calls(breaker, 2)
    waiting.append(clock.now)
    clock.now += OVERDUE_S
    breaker.record_failure()  # one failure, one call out and one request waiting, both overdue
    assert breaker.state == "open"


def test_requests_waiting_less_than_the_overdue_limit_do_not_count() -> None:
    waiting: list[float] = []
    breaker, clock = _waiting_breaker(waiting, threshold=3)
    _start_calls(breaker, 2)
    clock.now += OVERDUE_S
    waiting.append(clock.now - OVERDUE_S / 2)
    breaker.record_failure()
    assert breaker.state == "closed"


def test_after_an_answered_failure_requests_waiting_to_be_sent_do_not_count() -> None:
    # A 429 and its Retry-After pause keep requests waiting: behind an answer, not silence.
    waiting: list[float] = []
    breaker, clock = _waiting_breaker(waiting, threshold=2)
    _start_calls(breaker, 1)
    waiting.extend([clock.now] * 3)
    clock.now += OVERDUE_S
    breaker.record_failure(answered=True)
    assert breaker.state == "closed"


def test_waiting_requests_without_a_failure_never_open_the_breaker() -> None:
    waiting: list[float] = []
    breaker, clock = _waiting_breaker(waiting, threshold=3)
    waiting.extend([clock.now] * 5)
    clock.now += 100 * OVERDUE_S
    assert breaker.state == "closed"


def test_a_hang_opens_the_breaker_within_half_a_timeout_when_the_limit_is_cut_below_it() -> None:
    # Five failures needed, four slots, and the limit cut to one by the first timeout: the
    # request waiting behind the hung calls counts, so no sixth call has to be sent first.
    clock = FakeClock()
    limiter = AdaptiveLimiter(4, clock=clock)
    breaker = CircuitBreaker(5, 10.0, clock, overdue_after_s=OVERDUE_S,
                             waiting_since=limiter.waiting_since)
    for _ in range(4):
        limiter.acquire()
        assert breaker.allow()
    waiter = gevent.spawn(limiter.acquire)
    gevent.sleep(0)
    clock.now += 2 * OVERDUE_S  # the first call times out
    limiter.observe(2 * OVERDUE_S, OVERLOAD)
    breaker.record_failure()
    limiter.release()
    assert limiter.limit < 4
    assert breaker.state == "open"
    waiter.kill()
