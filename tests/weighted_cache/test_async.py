"""asyncio: cached results (not coroutines), one shared call per key, on real event loops."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from weighted_cache import Cache, cached


class Loader:
    """An async loader that counts its calls and can be held until released."""

    def __init__(self, value: object = "v", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


def test_cached_async_function_caches_the_result_not_the_coroutine():
    calls = []

    @cached(Cache(10))
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return x * 10

    async def main() -> list[int]:
        return [await fetch(1), await fetch(1), await fetch(2)]

    assert asyncio.run(main()) == [10, 10, 20]
    assert calls == [1, 2]
    assert fetch.cache_info()[:2] == (1, 2)


def test_concurrent_tasks_for_one_key_share_one_call():
    async def main() -> None:
        cache: Cache[str, object] = Cache(10)
        loader = Loader()
        waiters = [asyncio.create_task(cache.aget_or_load("k", loader)) for _ in range(10)]
        await loader.started.wait()
        await asyncio.sleep(0)
        loader.release.set()
        assert await asyncio.gather(*waiters) == ["v"] * 10
        assert loader.calls == 1
        assert cache["k"] == "v"

    asyncio.run(main())


def test_a_failure_reaches_every_waiter_and_is_not_cached():
    async def main() -> None:
        cache: Cache[str, object] = Cache(10)
        loader = Loader(error=RuntimeError("upstream down"))
        waiters = [asyncio.create_task(cache.aget_or_load("k", loader)) for _ in range(5)]
        await loader.started.wait()
        loader.release.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert [str(r) for r in results] == ["upstream down"] * 5
        assert "k" not in cache
        retry = Loader(value="ok")
        retry.release.set()
        assert await cache.aget_or_load("k", retry) == "ok"

    asyncio.run(main())


def test_cancelling_one_waiter_does_not_cancel_the_shared_call():
    async def main() -> None:
        cache: Cache[str, object] = Cache(10)
        loader = Loader()
        first = asyncio.create_task(cache.aget_or_load("k", loader))
        second = asyncio.create_task(cache.aget_or_load("k", loader))
        await loader.started.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        loader.release.set()
        assert await second == "v"
        assert loader.calls == 1

    asyncio.run(main())


def test_a_call_every_waiter_abandoned_still_fills_the_cache():
    async def main() -> None:
        cache: Cache[str, object] = Cache(10)
        loader = Loader()
        waiter = asyncio.create_task(cache.aget_or_load("k", loader))
        await loader.started.wait()
        waiter.cancel()
        loader.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert cache.get("k") == "v"

    asyncio.run(main())


def test_aget_or_load_returns_a_cached_value_without_calling_the_loader():
    async def main() -> None:
        cache: Cache[str, object] = Cache(10)
        cache["k"] = "cached"
        loader = Loader()
        assert await cache.aget_or_load("k", loader) == "cached"
        assert loader.calls == 0

    asyncio.run(main())


def test_aget_or_load_applies_cost_and_ttl():
    async def main() -> None:
        now = [0.0]
        cache: Cache[str, object] = Cache(10, clock=lambda: now[0])
        loader = Loader(value="abcd")
        loader.release.set()
        await cache.aget_or_load("k", loader, cost=len, ttl=5)
        assert cache.cost_used == 4
        assert cache.ttl("k") == 5

    asyncio.run(main())


def test_different_keys_load_concurrently():
    async def main() -> None:
        cache: Cache[str, object] = Cache(10)
        a, b = Loader("a"), Loader("b")
        ta = asyncio.create_task(cache.aget_or_load("a", a))
        tb = asyncio.create_task(cache.aget_or_load("b", b))
        await asyncio.gather(a.started.wait(), b.started.wait())
        a.release.set()
        b.release.set()
        assert await asyncio.gather(ta, tb) == ["a", "b"]

    asyncio.run(main())


def test_event_loops_in_two_threads_share_one_cache():
    cache: Cache[str, object] = Cache(10)
    results: list[object] = []

    def run() -> None:
        async def main() -> object:
            loader = Loader("v")
            loader.release.set()
            return await cache.aget_or_load("k", loader)

        results.append(asyncio.run(main()))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["v", "v"]


def test_a_cached_coroutine_method_shares_one_call_across_tasks():
    calls = []

    class Client:
        @cached(Cache(10), key=lambda self, x: x)
        async def get(self, x: int) -> int:
            calls.append(x)
            await asyncio.sleep(0.01)
            return x

    async def main() -> list[int]:
        client = Client()
        return await asyncio.gather(*(client.get(7) for _ in range(4)))

    assert asyncio.run(main()) == [7] * 4
    assert calls == [7]


def test_importing_the_library_leaves_asyncio_and_ssl_unimported():
    # Sync and gevent users should not pay for asyncio, nor load ssl before monkey-patching.
    probe = "import sys, weighted_cache; print('asyncio' in sys.modules, 'ssl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
