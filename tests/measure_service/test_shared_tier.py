"""The shared tier against a real redis-server: envelope, reads, leases, writes, failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from measure_service import shared_tier
from measure_service.breaker import CircuitBreaker
from measure_service.config import Config
from measure_service.rows import RowKey
from measure_service.shared_tier import FETCH, WAIT, SharedRow, SharedTier, decode, encode
from measure_service.upstream import RowResult
from tests.conftest import RedisServer, require_redis_server

PREFIX = "test:v1:"
TTL_S = 100.0
STALE_S = 50.0
ERROR_TTL_S = 10.0


def key(inventory_id: str = "nytimes.com") -> RowKey:
    return RowKey(inventory_id, "2024-10-30", 1000, None, None, None, None, None, None, None)


class WallClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tier_for(
    url: str, wall: Callable[[], float], *, lease_s: float = 5.0, ping_interval_s: float = 1.0
) -> SharedTier:
    config = Config.from_env(
        {"AUTH_DISABLED": "true", "REDIS_URL": url, "REDIS_TIMEOUT_MS": "100"}
    )
    return SharedTier(
        shared_tier.connect(config), prefix=PREFIX, lease_s=lease_s, ttl_s=TTL_S,
        stale_s=STALE_S, error_ttl_s=ERROR_TTL_S, breaker=CircuitBreaker(2, 0.2),
        wall_clock=wall, ping_interval_s=ping_interval_s,
    )


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[Any]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def tiers(redis_server: RedisServer, redis_db: Any, wall: WallClock) -> Iterator[list[SharedTier]]:
    """Two workers' tiers on one Redis."""
    made = [tier_for(redis_server.url, wall), tier_for(redis_server.url, wall)]
    yield made
    for tier in made:
        tier.close()


FOUND = RowResult(66.0, "modeled", None)


# --- envelope ----------------------------------------------------------------------------------

rows = st.builds(
    SharedRow,
    st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=20),
    st.integers(0, 2**41).map(lambda ms: ms / 1000),
    st.integers(0, 2**41).map(lambda ms: ms / 1000),
).filter(lambda row: row.expires_at >= row.fetched_at)


@given(rows)
def test_an_envelope_decodes_to_the_row_it_encodes(row: SharedRow) -> None:
    assert decode(encode(row)) == row


@pytest.mark.parametrize(
    "raw",
    [b"garbage", b"\x80\x04pickle", b"[2,1,2,1.0,null,null]", b"[1,1,2,1.0,null]",
     b'{"t":1}', b'[1,"1",2,1.0,null,null]', b"[1,5,2,1.0,null,null]", b'[1,1,2,"x",null,null]',
     b"[1,1,2,1.0,7,null]", b""],
)
def test_anything_but_a_schema_1_envelope_decodes_to_nothing(raw: bytes) -> None:
    assert decode(raw) is None


def test_a_row_and_its_lease_share_one_hash_tag() -> None:
    name = shared_tier.key_name(PREFIX, key())
    tag = name[name.index("{") : name.index("}") + 1]
    assert name.startswith(PREFIX) and name.endswith(tag)


def test_rows_that_differ_in_any_field_have_different_keys() -> None:
    other = key()._replace(country="FR")
    assert shared_tier.key_name(PREFIX, key()) != shared_tier.key_name(PREFIX, other)


# --- read and write ----------------------------------------------------------------------------

def test_a_written_row_is_read_by_another_worker(tiers: list[SharedTier], wall: WallClock) -> None:
    first, second = tiers
    first.write([(key(), FOUND)])
    assert second.read([key(), key("other.com")]) == {
        key(): SharedRow(66.0, "modeled", None, wall.now, wall.now + TTL_S + STALE_S)
    }


def test_the_redis_expiry_covers_fresh_and_stale_life_plus_a_little_jitter(
    tiers: list[SharedTier], redis_db: Any
) -> None:
    tiers[0].write([(key(), FOUND)])
    ttl_ms = redis_db.pttl(shared_tier.key_name(PREFIX, key()))
    lifetime_ms = (TTL_S + STALE_S) * 1000
    assert lifetime_ms - 1000 < ttl_ms <= lifetime_ms * (1 + shared_tier.TTL_JITTER)


def test_an_error_row_lives_for_the_error_ttl(tiers: list[SharedTier], redis_db: Any) -> None:
    tiers[0].write([(key("nodot"), RowResult(None, None, "unknown inventory"))])
    ttl_ms = redis_db.pttl(shared_tier.key_name(PREFIX, key("nodot")))
    assert ERROR_TTL_S * 1000 - 1000 < ttl_ms <= ERROR_TTL_S * 1000 * 1.06


def test_a_row_past_its_stale_limit_is_not_read(tiers: list[SharedTier], wall: WallClock) -> None:
    tiers[0].write([(key(), FOUND)])
    wall.now += TTL_S + STALE_S + 1
    assert tiers[1].read([key()]) == {}


def test_garbage_at_a_key_is_a_miss_and_the_next_fetch_overwrites_it(
    tiers: list[SharedTier], redis_db: Any
) -> None:
    name = shared_tier.key_name(PREFIX, key())
    redis_db.set(name, b"\x80not json")
    assert tiers[0].read([key()]) == {}
    assert tiers[0].claim([key()]) == [FETCH]
    tiers[0].write([(key(), FOUND)])
    assert decode(redis_db.get(name)) is not None


def test_a_key_of_another_type_is_a_miss_and_gets_overwritten(
    tiers: list[SharedTier], redis_db: Any
) -> None:
    name = shared_tier.key_name(PREFIX, key())
    redis_db.hset(name, "a", "b")
    assert tiers[0].read([key()]) == {}
    assert tiers[0].claim([key()]) == [FETCH]
    tiers[0].write([(key(), FOUND)])
    assert tiers[1].read([key()])


def test_reads_of_many_keys_are_answered_in_chunks(tiers: list[SharedTier]) -> None:
    keys = [key(f"site{i}.com") for i in range(3 * shared_tier.READ_CHUNK + 7)]
    tiers[0].write([(k, FOUND) for k in keys[::2]])
    assert set(tiers[1].read(keys)) == set(keys[::2])


# --- leases ------------------------------------------------------------------------------------

def test_the_first_claim_fetches_and_the_others_wait(tiers: list[SharedTier]) -> None:
    first, second = tiers
    assert first.claim([key()]) == [FETCH]
    assert second.claim([key()]) == [WAIT]


def test_a_claim_after_the_write_gets_the_value(tiers: list[SharedTier]) -> None:
    first, second = tiers
    first.claim([key()])
    first.write([(key(), FOUND)])
    [claim] = second.claim([key()])
    assert isinstance(claim, SharedRow) and claim.total_emissions == 66.0


def test_a_stale_value_is_claimed_for_refresh_by_one_worker(
    tiers: list[SharedTier], wall: WallClock
) -> None:
    first, second = tiers
    first.write([(key(), FOUND)])
    wall.now += TTL_S + 1
    assert first.claim([key()]) == [FETCH]
    assert second.claim([key()]) == [WAIT]
    assert second.read([key()])  # still served (stale) meanwhile


def test_a_holder_whose_lease_lapsed_cannot_overwrite_a_newer_value(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    slow = tier_for(redis_server.url, wall, lease_s=0.05)
    fast = tier_for(redis_server.url, wall)
    assert slow.claim([key()]) == [FETCH]
    gevent.sleep(0.1)
    assert fast.claim([key()]) == [FETCH]
    wall.now += 1
    fast.write([(key(), RowResult(2.0, "modeled", None))])
    wall.now -= 1  # the slow holder's answer is older
    slow.write([(key(), RowResult(1.0, "modeled", None))])
    assert slow.read([key()])[key()].total_emissions == 2.0


def test_a_holder_that_stalled_past_its_lease_cannot_overwrite_the_row_of_the_one_that_took_over(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    stalled = tier_for(redis_server.url, wall, lease_s=0.05)
    took_over = tier_for(redis_server.url, wall)
    assert stalled.claim([key()]) == [FETCH]
    gevent.sleep(0.1)
    wall.now += 1
    assert took_over.claim([key()]) == [FETCH]
    wall.now += 1
    took_over.write([(key(), RowResult(2.0, "modeled", None))])
    wall.now += 1  # the stalled holder writes last, but fetched first
    stalled.write([(key(), RowResult(1.0, "modeled", None))])
    assert stalled.read([key()])[key()].total_emissions == 2.0


def test_a_row_fetched_under_a_lease_is_dated_when_the_lease_was_taken(
    tiers: list[SharedTier], wall: WallClock
) -> None:
    taken_at = wall.now
    tiers[0].claim([key()])
    wall.now += 3
    tiers[0].write([(key(), FOUND)])
    assert tiers[1].read([key()])[key()].fetched_at == taken_at


def test_a_holder_whose_lease_lapsed_cannot_overwrite_the_new_holders_lease(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    slow = tier_for(redis_server.url, wall, lease_s=0.05)
    fast = tier_for(redis_server.url, wall)
    slow.claim([key()])
    gevent.sleep(0.1)
    fast.claim([key()])
    slow.write([(key(), FOUND)])
    slow.release([key()])
    assert slow.read([key()]) == {}
    assert redis_db.exists(shared_tier.key_name(PREFIX, key()) + ":lease")


def test_a_released_lease_is_taken_by_the_next_claim(tiers: list[SharedTier]) -> None:
    first, second = tiers
    first.claim([key()])
    first.release([key()])
    assert second.claim([key()]) == [FETCH]


def test_a_lease_without_expiry_is_garbage_and_gets_replaced(
    tiers: list[SharedTier], redis_db: Any
) -> None:
    redis_db.set(shared_tier.key_name(PREFIX, key()) + ":lease", "left by hand")
    assert tiers[0].claim([key()]) == [FETCH]


def test_a_watcher_gets_the_holders_value(tiers: list[SharedTier]) -> None:
    first, second = tiers
    first.claim([key()])
    second.claim([key()])
    got: list[tuple[str, Any]] = []
    second.watch(
        key(), lambda k, row: got.append(("value", row)), lambda k: got.append(("fetch", k))
    )
    gevent.sleep(0.02)
    first.write([(key(), FOUND)])
    with gevent.Timeout(2):
        while not got:
            gevent.sleep(0.005)
    assert got[0][0] == "value" and got[0][1].total_emissions == 66.0


def test_a_watcher_takes_over_a_lease_its_holder_let_lapse(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    # Long enough that the waiter's claim comes before it lapses on a busy machine.
    dead = tier_for(redis_server.url, wall, lease_s=0.5)
    waiter = tier_for(redis_server.url, wall)
    dead.claim([key()])
    assert waiter.claim([key()]) == [WAIT]
    got: list[str] = []
    waiter.watch(key(), lambda k, row: got.append("value"), lambda k: got.append("fetch"))
    with gevent.Timeout(5):
        while not got:
            gevent.sleep(0.01)
    assert got == ["fetch"]
    assert redis_db.get(shared_tier.key_name(PREFIX, key()) + ":lease") is not None


def test_a_watcher_that_lost_the_race_for_a_lapsed_lease_backs_off(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    dead = tier_for(redis_server.url, wall, lease_s=0.5)
    winner = tier_for(redis_server.url, wall)
    loser = tier_for(redis_server.url, wall)
    dead.claim([key()])
    assert loser.claim([key()]) == [WAIT]
    gevent.sleep(0.55)
    assert winner.claim([key()]) == [FETCH]
    looks: list[int] = []
    claim = loser._claim

    def counted(*args: Any) -> Any:
        looks.append(1)
        return claim(*args)

    loser._claim = counted  # type: ignore[method-assign]
    loser.watch(key(), lambda k, row: None, lambda k: None)
    gevent.sleep(0.3)
    # The loser backs off between looks instead of polling in a loop.
    assert 1 <= len(looks) <= 10


# --- failures ----------------------------------------------------------------------------------

def test_an_unreachable_redis_reads_as_a_miss_and_claims_let_the_worker_fetch(
    wall: WallClock,
) -> None:
    tier = tier_for("redis://127.0.0.1:9/0", wall)
    assert tier.read([key()]) == {}
    assert tier.claim([key()]) == [FETCH]
    tier.write([(key(), FOUND)])  # no exception


def test_the_breaker_opens_after_failures_and_then_costs_nothing(wall: WallClock) -> None:
    tier = tier_for("redis://127.0.0.1:9/0", wall)
    tier.read([key()])
    tier.read([key()])
    assert tier.status()[0] == "degraded"
    with gevent.Timeout(0.01):
        for _ in range(100):
            tier.read([key()])


def test_a_hung_redis_costs_one_socket_timeout_until_the_breaker_opens(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    tier = tier_for(redis_server.url, wall)
    tier.read([key()])  # connected
    redis_server.pause()
    try:
        assert tier.read([key()]) == {}
        assert tier.read([key()]) == {}
        assert tier.status()[0] == "degraded"
        with gevent.Timeout(0.01):
            tier.read([key()])
    finally:
        redis_server.resume()


def test_the_tier_recovers_after_the_cool_down(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    tier = tier_for(redis_server.url, wall)
    tier.write([(key(), FOUND)])
    redis_server.pause()
    try:
        tier.read([key()])
        tier.read([key()])
    finally:
        redis_server.resume()
    gevent.sleep(0.25)
    assert tier.read([key()])
    assert tier.status() == ("ok", None)


def test_a_full_redis_refuses_writes_but_keeps_serving_reads(
    tiers: list[SharedTier], redis_db: Any
) -> None:
    first, second = tiers
    first.write([(key(), FOUND)])
    redis_db.config_set("maxmemory-policy", "noeviction")
    redis_db.config_set("maxmemory", 1)
    try:
        second.write([(key(f"new{i}.com"), FOUND) for i in range(200)])
        assert second.claim([key("other.com")]) == [FETCH]
        assert second.status()[0] == "degraded"
        assert second.read([key()])
    finally:
        redis_db.config_set("maxmemory", 0)
        redis_db.config_set("maxmemory-policy", "allkeys-lfu")


def test_readiness_notices_a_dead_redis_though_nothing_else_called_it(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    tier = tier_for(redis_server.url, wall, ping_interval_s=0)
    assert tier.status() == ("ok", None)
    redis_server.pause()
    try:
        assert tier.status()[0] == "degraded"
    finally:
        redis_server.resume()


def test_a_full_pool_is_not_a_redis_failure(
    redis_server: RedisServer, redis_db: Any, wall: WallClock
) -> None:
    config = Config.from_env({"AUTH_DISABLED": "true", "REDIS_URL": redis_server.url,
                              "REDIS_POOL_SIZE": "1", "REDIS_TIMEOUT_MS": "20"})
    client = shared_tier.connect(config)
    breaker = CircuitBreaker(1, 10.0)
    tier = SharedTier(
        client, prefix=PREFIX, lease_s=5, ttl_s=TTL_S, stale_s=STALE_S,
        error_ttl_s=ERROR_TTL_S, breaker=breaker, wall_clock=wall,
    )
    busy = client.connection_pool.get_connection()  # the pool's one connection, held elsewhere
    try:
        assert tier.read([key()]) == {}
    finally:
        client.connection_pool.release(busy)
    assert breaker.state == "closed"


def test_a_closing_worker_gives_up_its_leases(tiers: list[SharedTier]) -> None:
    first, second = tiers
    assert first.claim([key()]) == [FETCH]
    first.close()
    assert second.claim([key()]) == [FETCH]


def test_a_unix_socket_url_works(processes: Any, tmp_path: Any, wall: WallClock) -> None:
    require_redis_server()
    socket_path = tmp_path / "redis.sock"
    processes.redis("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    tier = tier_for(f"unix://{socket_path}", wall)
    tier.write([(key(), FOUND)])
    assert tier.read([key()])
    assert tier.status() == ("ok", None)


# --- invariants over any interleaving of two workers -------------------------------------------

operations = st.lists(
    st.tuples(st.sampled_from(["claim", "write", "release", "lapse", "tick"]), st.integers(0, 1)),
    min_size=1, max_size=25,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_any_interleaving_never_moves_the_row_back_in_time_nor_leaves_an_endless_lease(
    redis_server: RedisServer, ops: list[tuple[str, int]]
) -> None:
    client = redis_server.client()
    client.flushall()
    wall = WallClock()
    tiers = [tier_for(redis_server.url, wall) for _ in range(2)]
    name = shared_tier.key_name(PREFIX, key())
    claimed_at: dict[int, float] = {}
    newest = 0.0
    for op, worker in ops:
        tier = tiers[worker]
        if op == "claim":
            if tier.claim([key()]) == [FETCH]:
                claimed_at[worker] = wall.now
        elif op == "write":
            # A fetch's rows are as old as its claim: a slow holder writes an old answer.
            now, wall.now = wall.now, claimed_at.pop(worker, wall.now)
            tier.write([(key(), FOUND)])
            wall.now = now
        elif op == "release":
            claimed_at.pop(worker, None)
            tier.release([key()])
        elif op == "lapse":
            client.pexpire(name + ":lease", 1)
            gevent.sleep(0.003)
        else:
            wall.now += 1
        row = decode(client.get(name))
        fetched = row.fetched_at if row is not None else 0.0
        assert fetched >= newest, "a write moved the row back in time"
        newest = fetched
        assert client.pttl(name + ":lease") != -1, "a lease without expiry would block the row"
    for tier in tiers:
        tier.close()


def test_scripts_work_again_after_redis_forgot_them(
    tiers: list[SharedTier], redis_db: Any
) -> None:
    first, second = tiers
    first.write([(key(), FOUND)])
    redis_db.script_flush()  # as after a restart: calls by SHA fail with NOSCRIPT
    assert first.claim([key("other.com")]) == [FETCH]
    assert second.claim([key("other.com")]) == [WAIT]

