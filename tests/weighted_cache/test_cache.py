import math

import pytest

from weighted_cache import Cache, cached


def test_get_after_a_successful_set_finds_the_value():
    cache: Cache[str, str] = Cache(10)
    assert cache.set("a", "x") is True
    assert cache.get("a") == "x"


def test_get_returns_the_default_on_a_miss():
    cache: Cache[str, str] = Cache(10)
    assert cache.get("a", "dflt") == "dflt"


def test_get_many_returns_each_value_in_order_and_the_default_for_the_others():
    cache: Cache[str, str] = Cache(10)
    cache.set("a", "x")
    cache.set("c", "z")
    assert cache.get_many(["a", "b", "c", "a"]) == ["x", None, "z", "x"]
    assert cache.get_many(["b"], "dflt") == ["dflt"]


def test_get_many_counts_hits_and_misses_as_get_does():
    cache: Cache[str, str] = Cache(10)
    cache.set("a", "x")
    cache.get_many(["a", "b", "a"])
    assert (cache.metrics.hits, cache.metrics.misses) == (2, 1)


def test_get_many_takes_the_lock_once():
    cache: Cache[int, int] = Cache(10)
    acquired = []
    lock = cache._lock

    class CountingLock:
        def acquire(self) -> bool:
            acquired.append(1)
            return lock.acquire()

        def release(self) -> None:
            lock.release()

    cache._lock = CountingLock()  # type: ignore[assignment]
    cache.get_many(range(300))
    assert len(acquired) == 1


def test_get_many_drops_an_expired_entry_as_get_does():
    now = [0.0]
    expired = []
    cache: Cache[str, int] = Cache(
        10, clock=lambda: now[0], on_evict=lambda k, v, c: expired.append(k)
    )
    cache.set("a", 1, ttl=1)
    cache.set("b", 2)
    now[0] = 2.0
    assert cache.get_many(["a", "b"]) == [None, 2]
    assert expired == ["a"] and "a" not in cache


def test_getitem_raises_key_error_on_a_miss():
    cache: Cache[str, str] = Cache(10)
    with pytest.raises(KeyError):
        cache["a"]


def test_contains_and_len_reflect_stored_keys():
    cache: Cache[str, int] = Cache(10)
    cache.set("a", 1)
    assert "a" in cache and "b" not in cache
    assert len(cache) == 1


def test_updates_are_always_applied_even_when_costlier():
    cache: Cache[int, int] = Cache(10)
    for key in range(10):
        cache.set(key, key)
    assert cache.set(3, 33, cost=8) is True
    assert cache.get(3) == 33
    assert cache.cost_used <= 10


def test_cost_used_never_exceeds_max_cost():
    cache: Cache[int, int] = Cache(100)
    for key in range(2000):
        cache.set(key % 300, key, cost=key % 13 + 1)
        cache.get((key * 7) % 300)
        assert cache.cost_used <= 100


def test_item_costlier_than_the_budget_is_refused_with_on_reject():
    rejected = []
    cache: Cache[str, int] = Cache(10, on_reject=lambda k, v, c: rejected.append((k, v, c)))
    assert cache.set("big", 1, cost=11) is False
    assert rejected == [("big", 1, 11)]
    assert "big" not in cache


def test_a_refused_update_removes_the_stale_value():
    cache: Cache[str, int] = Cache(10)
    cache.set("a", 1)
    assert cache.set("a", 2, cost=50) is False
    assert cache.get("a") is None


def test_cost_fn_gives_the_cost_when_set_has_none():
    cache: Cache[str, bytes] = Cache(100, cost_fn=len)
    cache.set("a", b"12345")
    assert cache.cost_used == 5


def test_delete_reports_whether_a_value_was_removed():
    cache: Cache[str, int] = Cache(10)
    cache.set("a", 1)
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.cost_used == 0


def test_clear_empties_the_cache_and_fires_on_exit():
    gone = []
    cache: Cache[str, int] = Cache(10, on_exit=lambda k, v: gone.append(k))
    cache.set("a", 1)
    cache.set("b", 2)
    cache.clear()
    assert len(cache) == 0 and cache.cost_used == 0
    assert sorted(gone) == ["a", "b"]


def test_shrinking_max_cost_evicts_until_it_fits():
    cache: Cache[int, int] = Cache(100)
    for key in range(100):
        cache.set(key, key)
    cache.max_cost = 10
    assert cache.max_cost == 10
    assert cache.cost_used <= 10
    assert len(cache) <= 10


def test_evictions_fire_on_evict_and_on_exit():
    evicted, exited = [], []
    cache: Cache[int, int] = Cache(
        3, on_evict=lambda k, v, c: evicted.append(k), on_exit=lambda k, v: exited.append(k)
    )
    for key in range(3):
        cache.set(key, key)
    cache.set(0, 0, cost=2)
    assert len(evicted) == 1 and evicted[0] in (1, 2)
    assert evicted[0] in exited


def test_an_update_passes_the_old_value_to_on_exit():
    exited = []
    cache: Cache[str, str] = Cache(10, on_exit=lambda k, v: exited.append(v))
    cache.set("a", "old")
    cache.set("a", "new")
    assert exited == ["old"]


def test_callbacks_run_outside_the_lock_and_may_use_the_cache():
    cache: Cache[str, int]

    def on_reject(key: str, value: int, cost: float) -> None:
        cache.set("note", value)

    cache = Cache(10, on_reject=on_reject)
    cache.set("big", 7, cost=20)
    assert cache.get("note") == 7


def test_a_failing_callback_still_lets_the_others_run():
    seen = []

    def boom(key: str, value: int) -> None:
        raise RuntimeError("boom")

    cache: Cache[str, int] = Cache(10, on_exit=boom,
                                   on_reject=lambda k, v, c: seen.append(k))
    with pytest.raises(RuntimeError):
        cache.set("big", 1, cost=99)
    assert seen == ["big"]


def test_hot_keys_survive_a_scan():
    cache: Cache[int, int] = Cache(100)
    for _ in range(5):
        for key in range(50):
            if cache.get(key) is None:
                cache.set(key, key)
    for key in range(1000, 3000):
        if cache.get(key) is None:
            cache.set(key, key)
    assert sum(key in cache for key in range(50)) >= 45


@pytest.mark.parametrize("cost", [-1, math.nan, math.inf])
def test_bad_cost_raises_value_error_naming_cost(cost):
    with pytest.raises(ValueError, match="cost"):
        Cache(10).set("a", 1, cost=cost)


def test_non_number_cost_raises_type_error_naming_cost():
    with pytest.raises(TypeError, match="cost"):
        Cache(10).set("a", 1, cost="3")  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [-1, 0, math.nan])
def test_bad_ttl_raises_value_error_naming_ttl(ttl):
    with pytest.raises(ValueError, match="ttl"):
        Cache(10).set("a", 1, ttl=ttl)


def test_non_number_ttl_raises_type_error_naming_ttl():
    with pytest.raises(TypeError, match="ttl"):
        Cache(10).set("a", 1, ttl="5")  # type: ignore[arg-type]


@pytest.mark.parametrize("max_cost", [0, -5])
def test_non_positive_max_cost_raises_value_error(max_cost):
    with pytest.raises(ValueError, match="max_cost"):
        Cache(max_cost)


def test_setting_a_bad_max_cost_raises_value_error():
    cache: Cache[str, int] = Cache(10)
    with pytest.raises(ValueError, match="max_cost"):
        cache.max_cost = 0


def test_unhashable_key_raises_type_error_naming_key():
    cache: Cache[object, int] = Cache(10)
    for call in (lambda: cache.set([1], 1), lambda: cache.get([1]), lambda: [1] in cache,
                 lambda: cache.delete([1]), lambda: cache.get_many([[1]])):
        with pytest.raises(TypeError, match="key"):
            call()


def test_bad_default_ttl_is_refused():
    with pytest.raises(ValueError, match="default_ttl"):
        Cache(10, default_ttl=-3)


def test_get_or_load_calls_the_loader_only_on_a_miss():
    calls = []
    cache: Cache[str, int] = Cache(10)

    def loader() -> int:
        calls.append(1)
        return 5

    assert cache.get_or_load("a", loader) == 5
    assert cache.get_or_load("a", loader) == 5
    assert len(calls) == 1


def test_get_or_load_does_not_cache_loader_errors():
    cache: Cache[str, int] = Cache(10)

    def fail() -> int:
        raise LookupError("nope")

    with pytest.raises(LookupError):
        cache.get_or_load("a", fail)
    assert cache.get_or_load("a", lambda: 3) == 3


def test_get_or_load_accepts_a_cost_function():
    cache: Cache[str, str] = Cache(100)
    cache.get_or_load("a", lambda: "abcd", cost=len)
    assert cache.cost_used == 4


def test_cached_memoises_by_arguments():
    calls = []
    cache: Cache[object, int] = Cache(10)

    @cached(cache)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]


def test_cached_uses_a_custom_key_and_ttl(clock):
    calls = []
    cache: Cache[object, int] = Cache(10, clock=clock)

    @cached(cache, key=lambda x, scale=1: x, ttl=5)
    def f(x: int, scale: int = 1) -> int:
        calls.append(x)
        return x * scale

    f(2, scale=3)
    f(2, scale=4)
    clock.advance(6)
    f(2)
    assert calls == [2, 2]


def test_cached_keeps_the_function_name():
    @cached(Cache(10))
    def named() -> int:
        return 1

    assert named.__name__ == "named"
