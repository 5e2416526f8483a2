"""The adaptive limiter: slots by earliest deadline, cut on overload, grown back when healthy."""

from __future__ import annotations

import gevent
import pytest

from measure_service.concurrency_limiter import OK, OVERLOAD, AdaptiveLimiter, Share
from tests.conftest import FakeClock


def test_it_starts_at_the_ceiling_and_never_exceeds_it(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(4, clock=clock)
    for _ in range(100):
        limiter.observe(0.02, OK)
    assert limiter.limit == 4


def test_an_overload_signal_halves_the_limit_once_per_round_trip(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(16, clock=clock)
    limiter.observe(0.1, OK)
    limiter.observe(0.1, OVERLOAD)
    limiter.observe(0.1, OVERLOAD)
    assert limiter.limit == 8
    clock.advance(0.2)
    limiter.observe(0.1, OVERLOAD)
    assert limiter.limit == 4


def test_the_limit_never_falls_below_the_floor(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(8, floor=2, clock=clock)
    for _ in range(20):
        clock.advance(1.0)
        limiter.observe(0.1, OVERLOAD)
    assert limiter.limit == 2


def test_answers_slowing_down_shrink_the_limit(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(16, clock=clock)
    for _ in range(50):
        limiter.observe(0.02, OK)
    for _ in range(5):
        limiter.observe(0.2, OK)
    assert limiter.limit < 8


def test_healthy_answers_grow_the_limit_back(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(16, clock=clock)
    limiter.observe(0.05, OK)
    limiter.observe(0.05, OVERLOAD)
    cut = limiter.limit
    for _ in range(200):
        limiter.observe(0.05, OK)
    assert cut < limiter.limit == 16


def test_a_freed_slot_goes_to_the_earliest_deadline() -> None:
    limiter = AdaptiveLimiter(1)
    limiter.acquire()
    order: list[str] = []

    def wait(name: str, deadline: float) -> None:
        with limiter.slot(deadline):
            order.append(name)

    late = gevent.spawn(wait, "late", 10.0)
    early = gevent.spawn(wait, "early", 1.0)
    gevent.sleep(0)
    limiter.release()
    gevent.joinall([late, early], timeout=2)
    assert order == ["early", "late"]


def test_a_killed_waiter_leaves_no_slot_behind() -> None:
    limiter = AdaptiveLimiter(1)
    limiter.acquire()
    waiter = gevent.spawn(limiter.acquire)
    gevent.sleep(0)
    waiter.kill()
    limiter.release()
    assert limiter.in_flight == 0


def test_a_waiting_caller_says_when_it_asked_for_its_slot(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(1, clock=clock)
    limiter.acquire()
    asked_at = clock.now
    waiter = gevent.spawn(limiter.acquire)
    gevent.sleep(0)
    clock.advance(2.0)
    assert limiter.waiting_since() == [asked_at]
    waiter.kill()


def _one_waiter(clock: FakeClock) -> tuple[AdaptiveLimiter, gevent.Greenlet]:
    """A one-slot limiter whose slot is held, and a greenlet waiting for it."""
    limiter = AdaptiveLimiter(1, clock=clock)
    limiter.acquire()
    waiter = gevent.spawn(limiter.acquire)
    gevent.sleep(0)
    return limiter, waiter


def test_a_caller_handed_a_slot_is_no_longer_waiting(clock: FakeClock) -> None:
    limiter, waiter = _one_waiter(clock)
    limiter.release()
    assert limiter.waiting_since() == []
    waiter.join(timeout=2)


def test_a_killed_waiter_is_no_longer_waiting(clock: FakeClock) -> None:
    limiter, waiter = _one_waiter(clock)
    waiter.kill()
    assert limiter.waiting_since() == []


@pytest.mark.parametrize("ceiling", [0, -1, True])
def test_a_bad_ceiling_is_refused(ceiling: int) -> None:
    with pytest.raises(ValueError, match="ceiling"):
        AdaptiveLimiter(ceiling)


def test_a_share_holds_at_most_half_of_the_limit_and_a_third_waits() -> None:
    share = Share(AdaptiveLimiter(4))
    entered: list[int] = []

    def hold(index: int) -> None:
        with share:
            entered.append(index)
            gevent.sleep(0.05)

    holders = [gevent.spawn(hold, index) for index in range(3)]
    gevent.sleep(0.01)
    assert entered == [0, 1]
    gevent.joinall(holders, timeout=2)
    assert entered == [0, 1, 2]


def test_a_share_follows_the_limit_down_but_keeps_one_slot(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(4, clock=clock)
    share = Share(limiter)
    limiter.observe(0.1, OVERLOAD)
    limiter.observe(0.1, OVERLOAD)
    clock.advance(1.0)
    limiter.observe(0.1, OVERLOAD)
    assert limiter.limit == 1 and share.bound == 1
