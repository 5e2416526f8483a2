"""Figure 4 of bench/shared_tier.py: one worker's L1-miss / Redis-hit path, in rows per second."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devtools.harness import RedisServer

# The child process runs under the benchmark's own command line (its hidden --l2-worker).
SCRIPT = Path(__file__).with_name("shared_tier.py")


def figure_4(redis: RedisServer, seconds: float) -> dict[str, Any]:
    argv = [sys.executable, str(SCRIPT), "--l2-worker", redis.url, "--seconds", str(seconds)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["ok"] = result["rows_per_s"] >= 20_000
    return result


def l2_worker(url: str, seconds: float, pools: bool = True) -> dict[str, Any]:
    """Figure 4's child: one worker's L1-miss / Redis-hit path, in rows per second."""
    from gevent import monkey

    monkey.patch_all()
    from measure_service.breaker import CircuitBreaker
    from measure_service.config import Config
    from measure_service.fetcher import Fetcher, FetcherSettings
    from measure_service.rows import RowKey
    from measure_service.shared_tier import SharedTier, connect
    from measure_service.upstream import RowResult

    class NoCache:
        """An in-process cache that keeps nothing: every lookup goes to Redis."""

        def get(self, key: Any) -> None:
            return None

        def get_many(self, keys: Any) -> list[None]:
            return [None for _ in keys]

        def set(self, key: Any, value: Any, cost: Any = None, ttl: Any = None) -> bool:
            return False

        def ttl(self, key: Any) -> None:
            raise KeyError(key)

    class NoUpstream:
        def measure(self, rows: Any, params: Any) -> Any:
            raise AssertionError("every row is in Redis")

    config = Config.from_env({"AUTH_DISABLED": "true", "REDIS_URL": url})
    tier = SharedTier(connect(config), prefix="bench4:", lease_s=5, ttl_s=86_400,
                      stale_s=86_400, error_ttl_s=300, breaker=CircuitBreaker(3, 2.0))
    keys = [RowKey(f"site{i}.example.com", "2024-10-30", 1000, "US", None, "web", "pc", None,
                   None, None) for i in range(10_000)]
    for start in range(0, len(keys), 500):
        tier.write((k, RowResult(12.3456789, "modeled", None)) for k in keys[start:start + 500])
    settings = FetcherSettings(ttl_s=86_400, stale_s=86_400, error_ttl_s=300,
                               batch_window_s=0.002, batch_rows=500, max_pending_rows=10_000,
                               concurrency=4)
    fetcher = Fetcher(NoCache(), NoUpstream(), settings, shared=tier)
    batches = [keys[start:start + 100] for start in range(0, len(keys), 100)]
    looked = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            lookup = fetcher.lookup(batch, [1] * len(batch))
            assert lookup.hits == len(batch), lookup
            looked += len(batch)
    elapsed = time.perf_counter() - started
    sweep = {size: _pool_run(url, size, batches, seconds / 2) for size in (1, 2, 4, 8, 16)
             if pools}
    # The MGET alone, for comparison with what hiredis is quoted at (bench/README.md).
    names = [f"bench4:{i}" for i in range(100)]
    client = connect(config)
    mget_started = time.perf_counter()
    for _ in range(1000):
        client.mget(names)
    mget_ms = (time.perf_counter() - mget_started)
    from redis.utils import HIREDIS_AVAILABLE

    return {"rows_per_s": round(looked / elapsed), "rows_per_lookup": 100,
            "mget_100_keys_ms": round(mget_ms, 3), "hiredis": HIREDIS_AVAILABLE,
            "pool_size_64_greenlets": sweep}


def _pool_run(url: str, size: int, batches: list[Any], seconds: float) -> dict[str, float]:
    """64 greenlets doing 100-row Redis reads at once through a pool of ``size`` connections."""
    import gevent

    from measure_service.breaker import CircuitBreaker
    from measure_service.config import Config
    from measure_service.shared_tier import SharedTier, connect

    config = Config.from_env({"AUTH_DISABLED": "true", "REDIS_URL": url,
                              "REDIS_POOL_SIZE": str(size), "REDIS_TIMEOUT_MS": "5000"})
    tier = SharedTier(connect(config), prefix="bench4:", lease_s=5, ttl_s=86_400,
                      stale_s=86_400, error_ttl_s=300, breaker=CircuitBreaker(3, 2.0))
    took: list[float] = []
    failed = [0]
    deadline = time.perf_counter() + seconds

    def reader(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            keys = batches[i % len(batches)]
            started = time.perf_counter()
            if len(tier.read(keys)) == len(keys):
                took.append(time.perf_counter() - started)
            else:
                failed[0] += 1  # a timeout, or no pooled connection free in time
            i += 1

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(reader, n) for n in range(64)])
    elapsed = time.perf_counter() - started
    ordered = sorted(took)
    return {"rows_per_s": round(len(took) * 100 / elapsed), "failed_reads": failed[0],
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2)}

