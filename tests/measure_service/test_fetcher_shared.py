"""Fetchers of several workers sharing one Redis: one upstream fetch per row, hits from Redis."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest

from measure_service.breaker import CircuitBreaker
from measure_service.config import Config
from measure_service.fetcher import CachedAnswer, Fetcher, FetcherSettings
from measure_service.rows import RowKey
from measure_service.shared_tier import SharedTier, connect
from tests.conftest import FakeClock, RedisServer
from tests.measure_service.conftest import FakeUpstream
from weighted_cache import Cache

TTL_S = 100.0
STALE_S = 50.0
WAIT_S = 2.0


def key(inventory_id: str = "nytimes.com") -> RowKey:
    return RowKey(inventory_id, "2024-10-30", 1000, None, None, None, None, None, None, None)


class Worker:
    """One worker: its own cache and fetcher, the shared Redis, the common upstream."""

    def __init__(self, url: str, upstream: FakeUpstream, clock: FakeClock, wall: FakeClock,
                 lease_s: float = 5.0) -> None:
        self.cache: Cache[RowKey, CachedAnswer] = Cache(10_000, clock=clock)
        config = Config.from_env({"AUTH_DISABLED": "true", "REDIS_URL": url})
        self.tier = SharedTier(
            connect(config), prefix="t:", lease_s=lease_s, ttl_s=TTL_S, stale_s=STALE_S,
            error_ttl_s=10.0, breaker=CircuitBreaker(3, 1.0), wall_clock=wall,
        )
        settings = FetcherSettings(
            ttl_s=TTL_S, stale_s=STALE_S, error_ttl_s=10.0, batch_window_s=0.0,
            batch_rows=100, max_pending_rows=1000, concurrency=2, wait_s=WAIT_S,
        )
        self.fetcher = Fetcher(self.cache, upstream, settings, shared=self.tier, clock=clock)

    def statuses(self, *keys: RowKey, wait_s: float = WAIT_S) -> list[str]:
        lookup = self.fetcher.lookup(keys, [100] * len(keys), wait_s)
        return [outcome.status for outcome in lookup.outcomes]


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def workers(
    redis_server: RedisServer, upstream: FakeUpstream, clock: FakeClock, wall: FakeClock
) -> Iterator[list[Worker]]:
    redis_server.client().flushall()
    made = [Worker(redis_server.url, upstream, clock, wall) for _ in range(3)]
    yield made
    for worker in made:
        worker.fetcher.close()


def test_a_row_fetched_by_one_worker_is_a_hit_on_the_others(
    workers: list[Worker], upstream: FakeUpstream
) -> None:
    first, second, third = workers
    assert first.statuses(key()) == ["fetched"]
    assert second.statuses(key()) == ["hit"]
    assert third.statuses(key()) == ["hit"]
    assert len(upstream.rows_sent) == 1


def test_a_row_found_in_redis_fills_the_workers_own_cache(workers: list[Worker]) -> None:
    workers[0].statuses(key())
    workers[1].statuses(key())
    assert workers[1].cache.get(key()) is not None


def test_concurrent_misses_on_every_worker_fetch_the_row_once(
    workers: list[Worker], upstream: FakeUpstream
) -> None:
    upstream.hold()
    asks = [gevent.spawn(worker.statuses, key()) for worker in workers for _ in range(3)]
    gevent.sleep(0.05)
    upstream.release()
    gevent.joinall(asks, timeout=5)
    assert [ask.value for ask in asks] == [["fetched"]] * len(asks)
    assert len(upstream.rows_sent) == 1


def test_without_waiting_the_others_answer_pending_then_hit(
    workers: list[Worker], upstream: FakeUpstream
) -> None:
    first, second, _ = workers
    upstream.hold()
    ask = gevent.spawn(first.statuses, key())
    gevent.sleep(0.02)
    assert second.statuses(key(), wait_s=0) == ["pending"]
    upstream.release()
    ask.join(timeout=5)
    gevent.sleep(0.3)  # the watcher polls with backoff
    assert second.statuses(key(), wait_s=0) == ["hit"]
    assert len(upstream.rows_sent) == 1


def test_a_stale_row_is_refreshed_by_one_worker_while_the_others_serve_stale(
    workers: list[Worker], upstream: FakeUpstream, clock: FakeClock, wall: FakeClock
) -> None:
    workers[0].statuses(key())
    for worker in workers[1:]:
        worker.statuses(key())
    clock.advance(TTL_S + 1)
    wall.advance(TTL_S + 1)
    upstream.hold()
    assert [worker.statuses(key(), wait_s=0) for worker in workers] == [["stale"]] * 3
    upstream.release()
    gevent.sleep(0.3)
    assert len(upstream.rows_sent) == 2
    assert [worker.statuses(key(), wait_s=0) for worker in workers] == [["hit"]] * 3


def test_a_row_error_is_shared_too(workers: list[Worker], upstream: FakeUpstream) -> None:
    assert workers[0].statuses(key("nodot")) == ["error"]
    assert workers[1].statuses(key("nodot")) == ["error"]
    assert len(upstream.rows_sent) == 1


def test_with_redis_down_misses_go_upstream_directly(
    upstream: FakeUpstream, clock: FakeClock, wall: FakeClock
) -> None:
    worker = Worker("redis://127.0.0.1:9/0", upstream, clock, wall)
    try:
        assert worker.statuses(key()) == ["fetched"]
        assert worker.statuses(key()) == ["hit"]
        assert len(upstream.rows_sent) == 1
    finally:
        worker.fetcher.close()


def test_a_worker_that_dies_holding_a_lease_delays_the_row_by_the_lease_only(
    redis_server: RedisServer, upstream: FakeUpstream, clock: FakeClock, wall: FakeClock
) -> None:
    redis_server.client().flushall()
    dead = Worker(redis_server.url, upstream, clock, wall, lease_s=0.2)
    alive = Worker(redis_server.url, upstream, clock, wall)
    try:
        assert dead.tier.claim([key()])  # takes the lease, never fetches
        assert alive.statuses(key(), wait_s=1.0) == ["fetched"]
        assert len(upstream.rows_sent) == 1
    finally:
        dead.fetcher.close()
        alive.fetcher.close()


def test_the_answer_is_the_same_as_without_the_tier(
    workers: list[Worker], upstream: FakeUpstream
) -> None:
    workers[0].statuses(key())
    here = workers[0].fetcher.lookup([key()], [100]).outcomes[0].entry
    there = workers[1].fetcher.lookup([key()], [100]).outcomes[0].entry
    assert here is not None and there is not None
    assert (here.total_emissions, here.inventory_coverage, here.error) == (
        there.total_emissions, there.inventory_coverage, there.error
    )


