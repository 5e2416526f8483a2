"""The fetcher: cache answers, coalesced batched fetches, bounds, stale serving and waiting."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.event
import pytest
from prometheus_client import REGISTRY

from measure_service.fetcher import CachedAnswer, Fetcher, FetcherSettings, Lookup
from measure_service.rows import RowKey
from measure_service.upstream import UpstreamError
from tests.conftest import FakeClock
from tests.measure_service.conftest import FakeUpstream
from weighted_cache import Cache

TTL_S = 100.0
STALE_S = 50.0
ERROR_TTL_S = 10.0
WAIT_S = 5.0  # long enough never to run out in these tests: each returns when its rows resolve


def key(inventory_id: str = "nytimes.com", **fields: Any) -> RowKey:
    values: dict[str, Any] = {
        "inventory_id": inventory_id, "date": "2024-10-30", "impressions": 1000,
        "country": None, "region": None, "channel": None, "device_type": None, "network": None,
        "framework": None, "latest": None,
    }
    values.update(fields)
    return RowKey(**values)


class Harness:
    """A fetcher over a real cache, a fake upstream and a fake clock."""

    def __init__(
        self, upstream: FakeUpstream, clock: FakeClock, *, max_pending_rows: int = 1000,
        breaker: Any = None, tenants: int = 1,
    ) -> None:
        self.cache: Cache[RowKey, CachedAnswer] = Cache(10_000, clock=clock)
        self.upstream = upstream
        self.clock = clock
        settings = FetcherSettings(
            ttl_s=TTL_S, stale_s=STALE_S, error_ttl_s=ERROR_TTL_S, batch_window_s=0.0,
            batch_rows=100, max_pending_rows=max_pending_rows, concurrency=2, tenants=tenants,
        )
        self.fetcher = Fetcher(self.cache, upstream, settings, breaker=breaker, clock=clock)

    def lookup(
        self, *keys: RowKey, cost: int = 100, wait_s: float = WAIT_S, tenant: str | None = None
    ) -> Lookup:
        return self.fetcher.lookup(keys, [cost] * len(keys), wait_s, tenant)

    def statuses(self, *keys: RowKey, wait_s: float = WAIT_S) -> list[str]:
        return [outcome.status for outcome in self.lookup(*keys, wait_s=wait_s).outcomes]


class OpenBreaker:
    state = "open"


@pytest.fixture
def harness(upstream: FakeUpstream, clock: FakeClock) -> Harness:
    return Harness(upstream, clock)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_miss_waited_for_comes_back_fetched_with_its_value(harness: Harness) -> None:
    outcome = harness.lookup(key()).outcomes[0]
    assert outcome.status == "fetched"
    assert outcome.entry is not None and outcome.entry.total_emissions == pytest.approx(66.0)


def test_a_fetched_row_is_then_a_hit_without_calling_upstream(harness: Harness) -> None:
    harness.lookup(key())
    assert harness.statuses(key()) == ["hit"]
    assert len(harness.upstream.calls) == 1


def test_a_miss_without_a_wait_window_is_pending_and_still_fills_the_cache(
    harness: Harness,
) -> None:
    assert harness.statuses(key(), wait_s=0) == ["pending"]
    gevent.wait(timeout=1)  # let the background fetch run
    assert harness.statuses(key(), wait_s=0) == ["hit"]


def test_a_fetch_outliving_the_window_leaves_the_row_pending_then_fills_the_cache(
    harness: Harness,
) -> None:
    harness.upstream.hold()
    assert harness.statuses(key(), wait_s=0.01) == ["pending"]
    harness.upstream.release()
    gevent.wait(timeout=1)
    assert harness.cache.get(key()) is not None


def test_concurrent_misses_for_one_key_share_one_upstream_row(harness: Harness) -> None:
    harness.upstream.hold()
    before = counter("measure_upstream_coalesced_rows_total")
    requests = [gevent.spawn(harness.statuses, key()) for _ in range(5)]
    harness.upstream.started.wait(timeout=1)
    harness.upstream.release()
    assert [r.get(timeout=1) for r in requests] == [["fetched"]] * 5
    assert len(harness.upstream.rows_sent) == 1
    assert counter("measure_upstream_coalesced_rows_total") - before == 4


def test_a_key_repeated_in_one_request_is_fetched_once(harness: Harness) -> None:
    assert harness.statuses(key(), key()) == ["fetched", "fetched"]
    assert len(harness.upstream.rows_sent) == 1


def test_misses_from_several_requests_travel_in_one_batch(harness: Harness) -> None:
    requests = [gevent.spawn(harness.statuses, key(f"site{n}.com")) for n in range(4)]
    gevent.joinall(requests, timeout=1)
    assert len(harness.upstream.calls) == 1
    assert len(harness.upstream.rows_sent) == 4


def test_rows_with_different_query_parameters_go_in_separate_batches(harness: Harness) -> None:
    harness.lookup(key("a.com"), key("b.com", latest="true"), key("c.com", framework="gmsf"))
    params = sorted(tuple(sorted(p.items())) for _, p in harness.upstream.calls)
    assert params == [(), (("framework", "gmsf"),), (("latest", "true"),)]


def test_rows_are_matched_back_by_identifier_not_position(harness: Harness) -> None:
    outcomes = harness.lookup(key("a.com", impressions=1000), key("b.com", impressions=2000))
    values = [o.entry.total_emissions for o in outcomes.outcomes if o.entry is not None]
    assert values == [pytest.approx(66.0), pytest.approx(132.0)]


def test_past_the_pending_limit_new_misses_are_unavailable(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    harness = Harness(upstream, clock, max_pending_rows=2)
    upstream.hold()
    before = counter("measure_upstream_unavailable_rows_total", reason="tenant_pending_share")
    lookup = harness.lookup(key("a.com"), key("b.com"), key("c.com"), wait_s=0)
    assert [o.status for o in lookup.outcomes] == ["pending", "pending", "unavailable"]
    after = counter("measure_upstream_unavailable_rows_total", reason="tenant_pending_share")
    assert after - before == 1
    assert lookup.outcomes[2].reason == "tenant_pending_share"
    upstream.release()


def test_an_open_breaker_makes_misses_unavailable_at_once(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    harness = Harness(upstream, clock, breaker=OpenBreaker())
    assert harness.statuses(key()) == ["unavailable"]
    gevent.wait(timeout=0.1)
    assert upstream.calls == []


def test_a_failed_fetch_is_unavailable_to_its_waiters_and_never_cached(
    harness: Harness,
) -> None:
    harness.upstream.fail_with = UpstreamError("http_5xx", "boom", status=500)
    assert harness.statuses(key()) == ["unavailable"]
    harness.upstream.fail_with = None
    assert harness.statuses(key()) == ["fetched"]


def test_a_row_error_is_cached_for_the_error_ttl(harness: Harness) -> None:
    assert harness.statuses(key("nodot")) == ["error"]
    assert harness.statuses(key("nodot")) == ["error"]
    assert len(harness.upstream.calls) == 1
    harness.clock.advance(ERROR_TTL_S + 1)
    assert harness.statuses(key("nodot")) == ["error"]
    assert len(harness.upstream.calls) == 2


def test_an_entry_past_its_ttl_is_served_stale_and_refreshed_once(harness: Harness) -> None:
    harness.lookup(key())
    harness.clock.advance(TTL_S + 1)
    harness.upstream.hold()
    assert harness.statuses(key(), key()) == ["stale", "stale"]
    assert harness.statuses(key()) == ["stale"]
    harness.upstream.release()
    gevent.wait(timeout=1)
    assert len(harness.upstream.calls) == 2
    assert harness.statuses(key()) == ["hit"]


def test_a_failed_refresh_keeps_serving_the_stale_value(harness: Harness) -> None:
    harness.lookup(key())
    harness.clock.advance(TTL_S + 1)
    harness.upstream.fail_with = UpstreamError("timeout", "slow")
    assert harness.statuses(key()) == ["stale"]
    gevent.wait(timeout=1)
    outcome = harness.lookup(key()).outcomes[0]
    assert outcome.status == "stale"
    assert outcome.entry is not None and outcome.entry.total_emissions == pytest.approx(66.0)


def test_an_entry_past_ttl_plus_stale_is_a_miss(harness: Harness) -> None:
    harness.lookup(key())
    harness.clock.advance(TTL_S + STALE_S + 1)
    assert harness.statuses(key()) == ["fetched"]
    assert len(harness.upstream.calls) == 2


def test_a_heavier_row_lowers_the_cost_of_a_cached_entry_keeping_its_expiry(
    harness: Harness,
) -> None:
    harness.lookup(key(), cost=100)
    harness.clock.advance(10)
    remaining = harness.cache.ttl(key())
    harness.lookup(key(), cost=10)
    entry = harness.cache.get(key())
    assert entry is not None and entry.cost == 10
    assert harness.cache.ttl(key()) == pytest.approx(remaining)


def test_a_lighter_row_after_a_heavier_one_in_one_request_keeps_the_lower_cost(
    harness: Harness,
) -> None:
    harness.lookup(key(), cost=100)
    lookup = harness.fetcher.lookup([key(), key()], [50, 60])
    entry = harness.cache.get(key())
    assert entry is not None and entry.cost == 50
    assert [outcome.entry.cost for outcome in lookup.outcomes if outcome.entry] == [50, 50]


def test_the_lowest_cost_asked_while_in_flight_is_stored(harness: Harness) -> None:
    harness.upstream.hold()
    harness.lookup(key(), cost=100, wait_s=0)
    heavier = gevent.spawn(harness.lookup, key(), cost=5)
    gevent.sleep(0)
    harness.upstream.release()
    heavier.get(timeout=1)
    entry = harness.cache.get(key())
    assert entry is not None and entry.cost == 5


def test_counts_report_rows_served_from_cache_and_misses(harness: Harness) -> None:
    harness.lookup(key("a.com"))
    lookup = harness.lookup(key("a.com"), key("b.com"))
    assert (lookup.hits, lookup.misses) == (1, 1)


def test_closing_fails_queued_fetches_so_no_waiter_hangs(harness: Harness) -> None:
    harness.upstream.hold()
    waiter = gevent.spawn(harness.statuses, key())
    harness.upstream.started.wait(timeout=1)
    harness.fetcher.close()
    assert waiter.get(timeout=1) == ["unavailable"]
    harness.upstream.release()


def test_a_fetch_refused_by_the_breaker_counts_as_breaker_open(harness: Harness) -> None:
    harness.upstream.fail_with = UpstreamError("breaker_open", "open")
    before = counter("measure_upstream_unavailable_rows_total", reason="breaker_open")
    assert harness.statuses(key()) == ["unavailable"]
    assert counter("measure_upstream_unavailable_rows_total", reason="breaker_open") - before == 1


def lookup_together(harness: Harness, *requests: tuple[str, list[RowKey]]) -> list[Lookup]:
    """Lookups by several clients whose misses share one batch (upstream held meanwhile)."""
    harness.upstream.hold()
    lookups = [
        gevent.spawn(harness.lookup, *keys, tenant=tenant) for tenant, keys in requests
    ]
    gevent.sleep(0.01)
    harness.upstream.release()
    gevent.joinall(lookups, timeout=5)
    return [greenlet.value for greenlet in lookups]


@pytest.mark.parametrize("poison", ["poison-500.com", "poison-400.com"])
def test_a_poisoned_row_is_cached_as_its_error_and_the_rest_of_its_batch_is_fetched(
    harness: Harness, poison: str
) -> None:
    harness.lookup(key("warm.com"))  # an answer: upstream is known to be healthy
    ours, theirs = lookup_together(
        harness, ("a", [key("a1.com"), key("a2.com")]), ("b", [key(poison)])
    )
    assert [o.status for o in ours.outcomes] == ["fetched", "fetched"]
    assert [o.status for o in theirs.outcomes] == ["error"]
    calls = len(harness.upstream.calls)
    assert harness.statuses(key(poison)) == ["error"]
    assert len(harness.upstream.calls) == calls


def test_a_poisoned_batch_does_not_count_towards_the_breaker(harness: Harness) -> None:
    harness.lookup(key("warm.com"))
    lookup_together(harness, ("a", [key("a1.com")]), ("b", [key("poison-500.com")]))
    assert harness.upstream.settled and all(harness.upstream.settled)


def test_a_client_whose_row_was_at_fault_is_batched_apart_afterwards(harness: Harness) -> None:
    harness.lookup(key("warm.com"))
    lookup_together(harness, ("a", [key("a1.com")]), ("b", [key("poison-500.com")]))
    harness.upstream.calls.clear()
    lookup_together(harness, ("a", [key("a2.com")]), ("b", [key("b2.com")]))
    batches = sorted(
        sorted(row["inventoryId"] for row in rows) for rows, _ in harness.upstream.calls
    )
    assert batches == [["a2.com"], ["b2.com"]]


def test_a_row_missing_from_the_answer_is_unavailable_and_not_cached(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = harness.upstream.measure

    def drop_one(rows: Any, params: Any, **options: Any) -> Any:
        answers = real(rows, params, **options)
        return {k: v for k, v in answers.items() if k != "1"}

    monkeypatch.setattr(harness.upstream, "measure", drop_one)
    outcomes = harness.lookup(key("a.com"), key("b.com")).outcomes
    assert [(o.status, o.reason) for o in outcomes] == [
        ("fetched", None), ("unavailable", "fetch_failed")]
    monkeypatch.setattr(harness.upstream, "measure", real)
    assert harness.statuses(key("b.com")) == ["fetched"]


def test_a_key_over_its_pending_share_never_makes_another_keys_rows_unavailable(
    upstream: FakeUpstream, clock: FakeClock
) -> None:
    harness = Harness(upstream, clock, max_pending_rows=10, tenants=2)
    upstream.hold()
    flood = harness.lookup(*(key(f"b{i}.com") for i in range(20)), wait_s=0, tenant="b")
    ours = harness.lookup(*(key(f"a{i}.com") for i in range(5)), wait_s=0, tenant="a")
    assert [o.status for o in ours.outcomes] == ["pending"] * 5
    refused = [o for o in flood.outcomes if o.status == "unavailable"]
    assert refused and {o.reason for o in refused} == {"tenant_pending_share"}
    upstream.release()


class HangingUpstream(FakeUpstream):
    """A request holding a row whose inventoryId starts with ``hang`` gets no answer until
    ``answer_hanging`` is set, whatever its read timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.answer_hanging = gevent.event.Event()

    def measure(self, rows: Any, params: Any, **options: Any) -> Any:
        if any(str(row["inventoryId"]).startswith("hang") for row in rows):
            self.calls.append(([dict(row) for row in rows], dict(params)))
            self.answer_hanging.wait()
        return super().measure(rows, params, **options)


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    """Yield until ``condition()`` holds (the greenlets under test make it so), or fail."""
    with gevent.Timeout(timeout_s):
        while not condition():
            gevent.sleep(0.005)


def test_a_client_whose_calls_hang_in_every_slot_is_set_apart_and_its_calls_cut_short(
    clock: FakeClock,
) -> None:
    upstream = HangingUpstream()
    harness = Harness(upstream, clock, tenants=2)
    harness.lookup(key("warm.com"), tenant="a")
    cut_before = counter("measure_upstream_cut_sends_total")
    for n in range(2):  # one call each, in both slots
        harness.lookup(key(f"hang{n}.com"), wait_s=0, tenant="b")
        wait_for(lambda n=n: len(upstream.calls) == n + 2)
    ours = harness.lookup(key("a1.com"), key("a2.com"), tenant="a")
    assert [outcome.status for outcome in ours.outcomes] == ["fetched", "fetched"]
    assert counter("measure_upstream_cut_sends_total") - cut_before == 2
    # Sent again in b's lane: one slot of the two, the other kept for everyone else.
    hang_calls = [rows for rows, _ in upstream.calls if rows[0]["inventoryId"].startswith("hang")]
    assert len(hang_calls) == 3
    upstream.answer_hanging.set()
    harness.fetcher.close()


def test_a_client_slow_with_no_other_client_waiting_or_answered_is_never_cut_short(
    clock: FakeClock,
) -> None:
    upstream = HangingUpstream()
    harness = Harness(upstream, clock, tenants=2)
    cut_before = counter("measure_upstream_cut_sends_total")
    for n in range(3):  # both slots, and one more of its own rows waiting
        harness.lookup(key(f"hang{n}.com"), wait_s=0, tenant="b")
        wait_for(lambda n=n: len(upstream.calls) == min(n + 1, 2))
    gevent.sleep(harness.fetcher._isolator.deadline_s() + 0.1)
    assert counter("measure_upstream_cut_sends_total") == cut_before
    upstream.answer_hanging.set()
    gevent.sleep(0.05)  # its slow answers come and are cached
    assert harness.statuses(*(key(f"hang{n}.com") for n in range(3))) == ["hit"] * 3
    harness.fetcher.close()


def test_a_client_whose_calls_hang_is_set_apart_when_another_client_comes_later(
    clock: FakeClock,
) -> None:
    upstream = HangingUpstream()
    harness = Harness(upstream, clock, tenants=2)
    harness.lookup(key("warm.com"), tenant="a")
    for n in range(2):  # both slots, before anyone else needs one
        harness.lookup(key(f"hang{n}.com"), wait_s=0, tenant="b")
        wait_for(lambda n=n: len(upstream.calls) == n + 2)
    gevent.sleep(harness.fetcher._isolator.deadline_s() * 1.5)  # its calls are overdue now
    ours = harness.lookup(key("a1.com"), tenant="a")
    assert [outcome.status for outcome in ours.outcomes] == ["fetched"]
    upstream.answer_hanging.set()
    harness.fetcher.close()
