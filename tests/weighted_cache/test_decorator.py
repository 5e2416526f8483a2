"""@cached and @cachedmethod: functools' conventions on a weighted cache."""

from __future__ import annotations

import threading

from weighted_cache import Cache, CacheInfo, cached, cachedmethod


def test_cache_info_counts_this_functions_hits_and_misses():
    cache: Cache[object, object] = Cache(100)

    @cached(cache)
    def square(x: int) -> int:
        return x * x

    square(2), square(2), square(3)
    assert square.cache_info() == CacheInfo(hits=1, misses=2, maxsize=100, currsize=2)


def test_cache_info_reports_the_budget_and_cost_in_use():
    cache: Cache[object, object] = Cache(50)

    @cached(cache, cost=len)
    def word(n: int) -> str:
        return "x" * n

    word(4), word(6)
    info = word.cache_info()
    assert (info.maxsize, info.currsize) == (50, 10)


def test_cache_clear_empties_the_cache_and_the_counts():
    cache: Cache[object, object] = Cache(100)
    calls = []

    @cached(cache)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1), f(1)
    f.cache_clear()
    assert len(cache) == 0
    assert f.cache_info() == CacheInfo(0, 0, 100, 0)
    f(1)
    assert calls == [1, 1]


def test_the_wrapper_exposes_the_function_and_the_cache():
    cache: Cache[object, object] = Cache(10)

    def f(x: int) -> int:
        """Doc."""
        return x

    wrapped = cached(cache)(f)
    assert wrapped.__wrapped__ is f
    assert wrapped.cache is cache
    assert (wrapped.__name__, wrapped.__doc__) == ("f", "Doc.")


def test_functions_sharing_a_cache_do_not_collide():
    cache: Cache[object, object] = Cache(100)

    @cached(cache)
    def double(x: int) -> int:
        return 2 * x

    @cached(cache)
    def triple(x: int) -> int:
        return 3 * x

    assert (double(5), triple(5)) == (10, 15)


def test_keyword_order_does_not_change_the_key():
    calls = []

    @cached(Cache(10))
    def f(a: int = 0, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    f(a=1, b=2), f(b=2, a=1)
    assert calls == [(1, 2)]


def test_concurrent_calls_with_one_key_run_the_function_once():
    gate = threading.Event()
    calls = []

    @cached(Cache(10))
    def slow(x: int) -> int:
        calls.append(x)
        gate.wait(5)
        return x

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(1))) for _ in range(8)]
    for thread in threads:
        thread.start()
    while not calls:
        threading.Event().wait(0.001)
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1] and results == [1] * 8
    assert slow.cache_info().hits + slow.cache_info().misses == 8


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.cache: Cache[object, object] = Cache(10)
        self.calls = 0

    @cachedmethod(lambda self: self.cache)
    def area(self, width: int, height: int = 1) -> int:
        self.calls += 1
        return width * height


def test_cachedmethod_uses_each_instances_cache_and_does_not_hash_self():
    one, two = _Unhashable(), _Unhashable()
    assert one.area(2, height=3) == 6
    assert one.area(2, height=3) == 6
    assert two.area(2, height=3) == 6
    assert (one.calls, two.calls) == (1, 1)
    assert len(one.cache) == len(two.cache) == 1


def test_cachedmethod_key_gets_the_arguments_after_self():
    class Prices:
        def __init__(self) -> None:
            self.cache: Cache[object, object] = Cache(10)

        @cachedmethod(lambda self: self.cache, key=lambda item: item.lower())
        def quote(self, item: str) -> str:
            return item

    prices = Prices()
    assert prices.quote("Tea") == prices.quote("TEA") == "Tea"
    assert list(prices.cache) == ["tea"]


def test_cached_on_a_method_with_a_key_for_self():
    class Account:
        def __init__(self, number: int) -> None:
            self.number = number

        @cached(Cache(10), key=lambda self, year: (self.number, year))
        def statement(self, year: int) -> str:
            return f"{self.number}/{year}"

    assert Account(1).statement(2020) == "1/2020"
    assert Account(1).statement.cache_info().hits == 0
    assert Account(1).statement(2020) == "1/2020"
    assert Account.statement.cache_info().hits == 1
