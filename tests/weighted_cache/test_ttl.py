import gc

import pytest

from weighted_cache import Cache
from weighted_cache.store import Entry
from weighted_cache.ttl import ExpiryBuckets, Sweeper


def entry(key: str, expire: float) -> Entry:
    return Entry(key, key, 1, expire)


def test_only_wholly_past_buckets_are_drained_by_default():
    buckets = ExpiryBuckets(granularity=10.0)
    buckets.add(entry("a", 101.0))
    buckets.add(entry("b", 115.0))
    assert buckets.pop_expired(105.0) == []
    assert [e.key for e in buckets.pop_expired(112.0)] == ["a"]


def test_exact_sweep_also_takes_expired_entries_of_the_current_bucket():
    buckets = ExpiryBuckets(granularity=10.0)
    buckets.add(entry("a", 101.0))
    buckets.add(entry("b", 108.0))
    assert [e.key for e in buckets.pop_expired(105.0, exact=True)] == ["a"]
    assert len(buckets) == 1


def test_sweeps_do_bounded_work():
    buckets = ExpiryBuckets(granularity=1.0)
    for i in range(100):
        buckets.add(entry(str(i), 10.0 + i / 100))
    assert len(buckets.pop_expired(50.0, limit=16)) == 16
    assert len(buckets) == 84


def test_removed_entries_are_not_swept():
    buckets = ExpiryBuckets()
    e = entry("a", 5.0)
    buckets.add(e)
    buckets.remove(e)
    assert buckets.pop_expired(100.0) == []
    assert len(buckets) == 0


def test_refiling_moves_an_entry_to_its_new_expiry():
    buckets = ExpiryBuckets(granularity=10.0)
    e = entry("a", 101.0)
    buckets.add(e)
    buckets.refile(e, 205.0)
    assert buckets.pop_expired(150.0) == []
    assert buckets.pop_expired(300.0) == [e]


def test_refiling_to_no_expiry_unfiles_the_entry():
    buckets = ExpiryBuckets()
    e = entry("a", 5.0)
    buckets.add(e)
    buckets.refile(e, 0.0)
    assert (e.expire, len(buckets)) == (0.0, 0)


def test_non_positive_granularity_is_refused():
    with pytest.raises(ValueError, match="granularity"):
        ExpiryBuckets(0)


def test_expired_entry_is_never_returned(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=5)
    clock.advance(5)
    assert cache.get("a") is None
    assert "a" not in cache


def test_entry_is_returned_until_it_expires(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=5)
    clock.advance(4.9)
    assert cache.get("a") == 1


def test_default_ttl_applies_when_set_has_none(clock):
    cache: Cache[str, int] = Cache(10, clock=clock, default_ttl=2)
    cache.set("a", 1)
    assert cache.ttl("a") == 2
    clock.advance(2)
    assert cache.get("a") is None


def test_ttl_reports_remaining_seconds_or_none(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=10)
    cache.set("b", 2)
    clock.advance(3)
    assert cache.ttl("a") == pytest.approx(7)
    assert cache.ttl("b") is None


def test_ttl_of_an_absent_or_expired_key_raises_key_error(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=1)
    clock.advance(1)
    with pytest.raises(KeyError):
        cache.ttl("a")
    with pytest.raises(KeyError):
        cache.ttl("missing")


def test_expired_cost_is_reclaimed_by_later_writes(clock):
    cache: Cache[int, int] = Cache(100, clock=clock)
    for key in range(10):
        cache.set(key, key, ttl=1)
    clock.advance(5)
    cache.set(99, 99)
    assert cache.cost_used == 1
    assert cache.metrics.keys_expired == 10


def test_len_counts_only_live_entries(clock):
    cache: Cache[int, int] = Cache(100, clock=clock)
    cache.set(1, 1, ttl=1)
    cache.set(2, 2)
    clock.advance(1)
    assert len(cache) == 1


def test_updating_the_ttl_replaces_the_old_one(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=1)
    cache.set("a", 2, ttl=100)
    clock.advance(50)
    assert cache.get("a") == 2


def test_an_update_without_ttl_removes_the_expiry(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=1)
    cache.set("a", 2)
    clock.advance(50)
    assert cache.get("a") == 2


def test_expiry_fires_on_evict_and_on_exit(clock):
    events = []
    cache: Cache[str, int] = Cache(
        10, clock=clock,
        on_evict=lambda k, v, c: events.append(("evict", k)),
        on_exit=lambda k, v: events.append(("exit", k)),
    )
    cache.set("a", 1, ttl=1)
    clock.advance(2)
    cache.get("a")
    assert events == [("evict", "a"), ("exit", "a")]


def test_background_sweep_reclaims_every_expired_entry(clock):
    cache: Cache[int, int] = Cache(100, clock=clock)
    for key in range(50):
        cache.set(key, key, ttl=1)
    clock.advance(2)
    cache._sweep_expired()  # what the sweeper thread runs each tick
    assert cache.cost_used == 0


def test_sweeper_thread_stops_on_close():
    cache: Cache[int, int] = Cache(10, sweep_interval=0.01)
    sweeper = cache._sweeper
    assert sweeper is not None and sweeper.alive
    cache.close()
    assert not sweeper.alive


def test_sweeper_ends_when_its_cache_is_collected():
    class Target:
        calls = 0

        def _sweep_expired(self) -> None:
            Target.calls += 1

    target = Target()
    sweeper = Sweeper(target, 0.001)
    del target
    gc.collect()
    sweeper._thread.join(timeout=5)
    assert not sweeper.alive


def test_sweep_interval_must_be_positive():
    with pytest.raises(ValueError, match="sweep_interval"):
        Cache(10, sweep_interval=0)


def test_rewriting_a_key_that_expired_while_reads_were_buffered_counts_one_expiry(clock):
    exits = []
    cache: Cache[str, int] = Cache(10, clock=clock, on_exit=lambda k, v: exits.append(v))
    cache.set("a", 1, ttl=1)
    cache.get("a")  # leaves a buffered read, applied by the next write
    clock.advance(2)
    assert cache.set("a", 2) is True
    assert cache.metrics.keys_expired == 1
    assert exits == [1]
    assert cache.get("a") == 2


def test_the_slot_heap_stays_proportional_to_live_buckets_under_churn() -> None:
    buckets = ExpiryBuckets(granularity=1.0)
    for second in range(10_000):
        entry = Entry(second, second, 1, float(second) + 86_400.0)
        buckets.add(entry)
        buckets.remove(entry)  # evicted long before it expires
    assert len(buckets._heap) <= 2 * len(buckets._buckets) + 65


def test_a_bucket_emptied_by_evictions_gives_back_its_memory() -> None:
    from sys import getsizeof

    buckets = ExpiryBuckets(granularity=1.0)
    filed = [Entry(key, key, 1, 100.5) for key in range(50_000)]
    for item in filed:
        buckets.add(item)
    for item in filed[:-8]:
        buckets.remove(item)  # evicted long before it expires
    assert getsizeof(buckets._buckets[100]) < 4096
    assert sorted(e.key for e in buckets.pop_expired(now=200.0)) == list(range(49_992, 50_000))
