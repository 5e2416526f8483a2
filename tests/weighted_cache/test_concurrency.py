"""Threads and greenlets hammering one cache keep it consistent."""

import subprocess
import sys
import textwrap
import threading

import pytest

from weighted_cache import Cache


def test_get_or_load_calls_the_loader_once_per_key_across_threads():
    cache: Cache[int, int] = Cache(1000)
    calls: dict[int, int] = {}
    release = threading.Event()
    lock = threading.Lock()

    def loader_for(key: int):
        def load() -> int:
            with lock:
                calls[key] = calls.get(key, 0) + 1
            release.wait(5)
            return key * 10

        return load

    results: list[int] = []

    def worker(key: int) -> None:
        results.append(cache.get_or_load(key, loader_for(key)))

    threads = [threading.Thread(target=worker, args=(i % 4,)) for i in range(32)]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert calls == {0: 1, 1: 1, 2: 1, 3: 1}
    assert sorted(results) == sorted((i % 4) * 10 for i in range(32))


def wait_for_waiters(cache: Cache[str, int], key: str, count: int) -> None:
    """Block until ``count`` callers are parked on the in-flight load of ``key``."""
    flight = cache._flights[key]
    while len(flight.done._cond._waiters) < count:  # type: ignore[attr-defined]
        threading.Event().wait(0.001)


def test_loader_errors_reach_every_waiting_thread_and_are_not_cached():
    cache: Cache[str, int] = Cache(10)
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []
    errors: list[BaseException] = []

    def failing() -> int:
        calls.append(1)
        started.set()
        release.wait(5)
        raise ValueError("upstream down")

    def worker() -> None:
        try:
            cache.get_or_load("k", failing)
        except ValueError as exc:
            errors.append(exc)

    leader = threading.Thread(target=worker)
    leader.start()
    started.wait(5)
    followers = [threading.Thread(target=worker) for _ in range(5)]
    for t in followers:
        t.start()
    wait_for_waiters(cache, "k", 5)
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert len(calls) == 1
    assert len(errors) == 6
    assert "k" not in cache


def test_concurrent_writers_never_exceed_the_budget():
    cache: Cache[int, int] = Cache(200)
    violations: list[float] = []

    def writer(seed: int) -> None:
        for i in range(3000):
            key = (i * 31 + seed) % 500
            if cache.get(key) is None:
                cache.set(key, i, cost=1 + key % 5)
            used = cache.cost_used
            if used > 200:
                violations.append(used)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert violations == []
    assert cache.cost_used == sum(e.cost for e in cache._data.values())


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from weighted_cache import Cache

    cache = Cache(100)
    calls = []

    def load():
        calls.append(1)
        gevent.sleep(0.01)  # yields to the other greenlets waiting on the key
        return 42

    results = gevent.joinall([gevent.spawn(cache.get_or_load, "k", load) for _ in range(50)])
    assert [g.value for g in results] == [42] * 50, [g.value for g in results]
    assert len(calls) == 1, calls

    def churn(seed):
        for i in range(2000):
            key = (i * 7 + seed) % 300
            if cache.get(key) is None:
                cache.set(key, i, cost=1 + key % 3)
            assert cache.cost_used <= 100
            if i % 100 == 0:
                assert sum(1 for _ in cache.items()) <= 100
                gevent.sleep(0)

    gevent.joinall([gevent.spawn(churn, s) for s in range(8)], raise_error=True)

    swept = Cache(10, sweep_interval=0.01)
    sweeper = swept._sweeper
    gevent.sleep(0.05)
    assert sweeper.alive
    swept.close()
    assert not sweeper.alive
    print("ok")
    """
)


def test_greenlets_share_one_loader_call_and_respect_the_budget():
    # gevent's monkey-patching is process-wide, so it runs in a child process.
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


class _CountingLock:
    """A lock that counts how often it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.taken += 1
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_cache_given_a_lock_takes_it_for_every_read_and_write():
    lock = _CountingLock()
    cache: Cache[str, int] = Cache(10, lock=lock)
    cache.set("a", 1)
    assert lock.taken == 1
    cache.get("a")
    assert lock.taken == 2
    cache.get_many(["a", "b"])
    assert lock.taken == 3
    assert lock._lock.acquire(blocking=False)  # every taking was released


def test_a_lock_without_acquire_and_release_is_refused_naming_the_argument():
    with pytest.raises(TypeError, match="lock must have acquire and release"):
        Cache(10, lock=object())  # type: ignore[arg-type]
