"""Cache as a collections.abc.MutableMapping: the dict protocol, honest about expiry and cost."""

from __future__ import annotations

import threading
from collections.abc import MutableMapping

import pytest

from weighted_cache import Cache


def test_a_cache_is_a_mutable_mapping():
    assert isinstance(Cache(10), MutableMapping)


def test_setitem_stores_with_the_default_cost():
    cache: Cache[str, bytes] = Cache(100, cost_fn=len)
    cache["a"] = b"12345"
    assert cache["a"] == b"12345"
    assert cache.cost_used == 5


def test_setitem_without_cost_fn_costs_one():
    cache: Cache[str, int] = Cache(100)
    cache["a"] = 7
    assert cache.cost_used == 1


def test_setitem_applies_the_default_ttl(clock):
    cache: Cache[str, int] = Cache(10, default_ttl=5, clock=clock)
    cache["a"] = 1
    clock.advance(5)
    assert "a" not in cache


def test_setitem_of_a_value_costlier_than_the_budget_raises_and_drops_the_old_value():
    cache: Cache[str, str] = Cache(5, cost_fn=len)
    cache["a"] = "xx"
    with pytest.raises(ValueError, match="value too large"):
        cache["a"] = "x" * 6
    assert "a" not in cache
    assert cache.cost_used == 0


def test_setitem_refused_by_admission_returns_quietly_and_is_reported():
    rejected = []
    cache: Cache[object, object] = Cache(
        10, cost_fn=lambda value: value, on_reject=lambda k, v, c: rejected.append(k)
    )
    for key in range(10):
        cache[key] = 1
    for _ in range(5):
        for key in range(10):
            cache[key]
    # Larger than the window: judged at once against the frequent residents, and refused.
    cache["newcomer"] = 5
    assert "newcomer" not in cache
    assert rejected == ["newcomer"]
    assert cache.metrics.sets_rejected == 1
    assert cache.cost_used <= cache.max_cost


def test_delitem_removes_a_live_key():
    cache: Cache[str, int] = Cache(10)
    cache["a"] = 1
    del cache["a"]
    assert "a" not in cache
    assert cache.cost_used == 0


def test_delitem_of_an_absent_key_raises_key_error():
    with pytest.raises(KeyError):
        del Cache(10)["a"]


def test_delitem_of_an_expired_key_raises_key_error(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=1)
    clock.advance(1)
    with pytest.raises(KeyError):
        del cache["a"]
    assert cache.metrics.keys_expired == 1


def test_pop_returns_the_value_and_removes_it():
    gone = []
    cache: Cache[str, int] = Cache(10, on_exit=lambda k, v: gone.append((k, v)))
    cache["a"] = 1
    assert cache.pop("a") == 1
    assert "a" not in cache
    assert gone == [("a", 1)]


def test_pop_of_a_missing_key_returns_the_default_or_raises():
    cache: Cache[str, int] = Cache(10)
    assert cache.pop("a", None) is None
    with pytest.raises(KeyError):
        cache.pop("a")


def test_pop_never_returns_an_expired_value(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("a", 1, ttl=1)
    clock.advance(2)
    assert cache.pop("a", "gone") == "gone"


def test_popitem_removes_the_live_entry_stored_longest_ago(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache.set("old", 0, ttl=1)
    cache["a"] = 1
    cache["b"] = 2
    clock.advance(1)
    assert cache.popitem() == ("a", 1)
    assert list(cache) == ["b"]


def test_popitem_of_an_empty_cache_raises_key_error():
    with pytest.raises(KeyError):
        Cache(10).popitem()


def test_iteration_lists_live_keys_only(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache["a"] = 1
    cache.set("b", 2, ttl=1)
    cache["c"] = 3
    clock.advance(1)
    assert sorted(cache) == ["a", "c"]
    assert sorted(cache.keys()) == ["a", "c"]
    assert sorted(cache.values()) == [1, 3]
    assert sorted(cache.items()) == [("a", 1), ("c", 3)]


def test_views_answer_membership_for_live_entries_only(clock):
    cache: Cache[str, int] = Cache(10, clock=clock)
    cache["a"] = 1
    cache.set("b", 2, ttl=1)
    clock.advance(1)
    keys = cache.keys()
    assert "a" in keys and "b" not in keys
    assert ("a", 1) in cache.items()
    assert ("a", 2) not in cache.items() and ("b", 2) not in cache.items()
    assert 1 in cache.values() and 2 not in cache.values()


def test_iterating_and_membership_do_not_count_as_uses():
    cache: Cache[str, int] = Cache(10)
    cache["a"] = 1
    list(cache), list(cache.values()), list(cache.items())
    assert "a" in cache and ("a", 1) in cache.items()
    snapshot = cache.metrics.snapshot()
    assert (snapshot["hits"], snapshot["misses"]) == (0, 0)


def test_a_snapshot_is_unaffected_by_writes_during_iteration():
    cache: Cache[int, int] = Cache(100)
    for key in range(10):
        cache[key] = key
    seen = []
    for key, value in cache.items():
        seen.append((key, value))
        cache[key + 100] = value
        cache.pop(9 - key, None)
    assert seen == [(key, key) for key in range(10)]


def test_mixin_methods_work():
    cache: Cache[str, int] = Cache(10)
    cache.update({"a": 1}, b=2)
    assert cache.setdefault("a", 5) == 1
    assert cache.setdefault("c", 3) == 3
    assert dict(cache) == {"a": 1, "b": 2, "c": 3}
    assert cache == {"a": 1, "b": 2, "c": 3}
    assert len(cache.keys()) == 3


def test_iterating_while_other_threads_write_never_raises_or_breaks_the_budget():
    cache: Cache[int, tuple[int, int]] = Cache(200, default_ttl=0.05, cost_fn=lambda v: v[1])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        n = seed
        try:
            while not stop.is_set():
                n = (n * 1103515245 + 12345) % (1 << 31)
                key = n % 500
                if n % 7 == 0:
                    cache.pop(key, None)
                else:
                    cache[key] = (key, n % 5 + 1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(300):
            pairs = list(cache.items())
            assert all(value[0] == key for key, value in pairs)
            assert sum(value[1] for _, value in pairs) <= cache.max_cost
            keys = list(cache)
            assert len(set(keys)) == len(keys)
            assert cache.cost_used <= cache.max_cost
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
