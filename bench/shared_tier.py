"""Shared-tier benchmark: two instances of two workers on one redis-server and one simulator.

Figures (bench/README.md has the targets and the latest numbers):

1. one key fetched through one instance, then 20 requests on fresh connections over both
   ports: how many are ``hit``, and how many rows upstream saw;
2. cold burst: 400 requests of the same 20 cold keys spread over both instances: upstream rows;
3. restart one instance (SIGTERM, start again): the share of the hot keys its new workers
   answer ``hit`` at once, and the upstream rows that cost;
4. the L1-miss / Redis-hit path of one worker, in rows per second (in a child process, under
   gevent's monkey patching as in a worker: 100-row lookups, an in-process cache that keeps
   nothing, Redis holding every row); the L1 hit path with and without ``REDIS_URL`` is
   ``bench/service_load.py --with-redis``;
5. Redis killed, then hung (SIGSTOP): 5xx answers, hit req/s against healthy, how long cold
   requests take before and after the breaker opens, and how soon rows are shared again
   after Redis returns;
6. the lease holder SIGKILLed mid-fetch: how long until another worker has the row, against
   the lease time plus one upstream round trip;
7. Redis memory per cached row (``INFO memory`` over ``DBSIZE``).

Run from the project root::

    .venv/bin/python bench/shared_tier.py [--json out.json] [--only 1,2,...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from service_load import API_KEY, UPSTREAM_TOKEN, Generators

from devtools.harness import Processes, RedisServer, Server, Service, Simulator

LEASE_MS = 2000
COOLDOWN_S = 2.0
REDIS_TIMEOUT_MS = 50
UPSTREAM_LATENCY_MS = 100


def tier_env(sim: Simulator, redis: RedisServer) -> dict[str, str]:
    return {
        "ENV": "bench", "SCOPE3_API_URL": sim.url, "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
        "API_KEYS": API_KEY, "WAIT_FOR_MISSING": "true", "WAIT_WINDOW_MS": "1000",
        "ACCESS_LOG": "off", "LOG_LEVEL": "INFO", "REDIS_URL": redis.url,
        "REDIS_LEASE_MS": str(LEASE_MS), "REDIS_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
        "REDIS_TIMEOUT_MS": str(REDIS_TIMEOUT_MS), "UPSTREAM_RETRIES": "0",
    }


def rows(sites: list[str]) -> list[dict[str, Any]]:
    return [{"rowIdentifier": str(i), "inventoryId": s, "utcDatetime": "2024-10-30"}
            for i, s in enumerate(sites)]


def fresh(count: int, tag: str = "") -> list[str]:
    nonce = uuid.uuid4().hex[:8]
    return [f"{tag}{i}-{nonce}.example.com" for i in range(count)]


def post(service: Service, sites: list[str], timeout: float = 10) -> tuple[int, list[str]]:
    """One request on a fresh connection: its HTTP status and row statuses."""
    response = service.post(rows(sites), timeout=timeout)
    if response.status_code != 200:
        return response.status_code, []
    return 200, [row["status"] for row in response.json()["rows"]]


def upstream_rows(sim: Simulator) -> int:
    count: int = sim.stats("?keys=0")["rows"]
    return count


def tally(statuses: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


# --- figures ------------------------------------------------------------------------------------

def figure_1(sim: Simulator, instances: list[Service]) -> dict[str, Any]:
    site = fresh(1)
    before = upstream_rows(sim)
    first = post(instances[0], site)[1]
    answers = [post(instances[i % 2], site)[1][0] for i in range(20)]
    seen = upstream_rows(sim) - before
    return {"first": first[0], "of_20": tally(answers), "upstream_rows": seen,
            "ok": answers.count("hit") == 20 and seen == 1}


def figure_2(sim: Simulator, instances: list[Service]) -> dict[str, Any]:
    sites = fresh(20)
    before = upstream_rows(sim)
    targets = [instances[i % 2] for i in range(400)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda s: post(s, sites), targets))
    time.sleep(0.5)  # fetches that outlived their requests still land upstream
    seen = upstream_rows(sim) - before
    return {"requests": len(answers), "http": tally([str(code) for code, _ in answers]),
            "rows": tally([st for _, statuses in answers for st in statuses]),
            "upstream_rows": seen, "ok": seen == 20}


def figure_3(procs: Processes, sim: Simulator, redis: RedisServer,
             instances: list[Service]) -> dict[str, Any]:
    hot = fresh(2000, "hot")
    for start in range(0, len(hot), 200):
        post(instances[0], hot[start:start + 200], timeout=30)
    before = upstream_rows(sim)
    old = instances[1]
    old.process.send_signal(signal.SIGTERM)
    old.process.wait(timeout=30)
    started = time.monotonic()
    new = procs.service(sim, env=tier_env(sim, redis), workers=2)
    restart_s = time.monotonic() - started
    instances[1] = new
    answers: list[str] = []
    for start in range(0, len(hot), 100):
        answers += post(new, hot[start:start + 100], timeout=30)[1]
    seen = upstream_rows(sim) - before
    hit_share = answers.count("hit") / len(hot)
    return {"hot_keys": len(hot), "restart_s": round(restart_s, 2), "rows": tally(answers),
            "hit_share": round(hit_share, 4), "upstream_rows": seen,
            "ok": hit_share >= 0.99 and seen == 0}


def figure_4(redis: RedisServer, seconds: float) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--l2-worker", redis.url, "--seconds", str(seconds)]
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
    batches = [[(k, 1) for k in keys[start:start + 100]] for start in range(0, len(keys), 100)]
    looked = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in batches:
            lookup = fetcher.lookup(batch)
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
            keys = [key for key, _ in batches[i % len(batches)]]
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


def figure_5(procs: Processes, sim: Simulator, redis: RedisServer,
             instances: list[Service], seconds: float, work_dir: Path) -> dict[str, Any]:
    hot_body = {"rows": rows(fresh(5, "f5hot"))}
    for _ in range(40):
        for service in instances:
            post(service, [row["inventoryId"] for row in hot_body["rows"]])
    body_file = work_dir / "f5.json"
    body_file.write_text(json.dumps(hot_body))
    gens = Generators(body_file, use_wrk=False)
    report: dict[str, Any] = {}

    def load(service: Server) -> dict[str, Any]:
        result = gens.saturate(service, connections=16, duration_s=seconds)
        return {"rps": result["rps"], "non_2xx": result["non_2xx"],
                "p99_ms": result["latency_ms"]["p99"]}

    # Cold requests go to a one-worker instance that does not wait for misses, so their
    # latency is the service's own (Redis included), not upstream's.
    probe = procs.service(sim, env={**tier_env(sim, redis), "WAIT_FOR_MISSING": "false"},
                          workers=1)

    def cold_latencies(service: Service, count: int) -> list[float]:
        took = []
        for _ in range(count):
            started = time.perf_counter()
            code, _ = post(service, fresh(1, "f5cold"))
            took.append((time.perf_counter() - started) * 1000)
            assert code == 200
        return took

    report["healthy_cold_ms"] = _summary(cold_latencies(probe, 50))
    for fault, inject, heal in (
        ("killed", redis.kill, redis.restart),
        ("hung", redis.pause, redis.resume),
    ):
        healthy = load(instances[0])
        inject()
        first = cold_latencies(probe, 10)
        during = load(instances[0])
        after_open = cold_latencies(probe, 50)
        health = instances[0].get("/readyz").json()
        heal()
        returned = time.monotonic()
        shared_again_s = _until(lambda: _shared(instances), timeout_s=30) - returned
        # Every worker's breaker closed again before the next fault (the probe's included).
        _until(lambda: probe.get("/readyz").json()["sharedTier"] == "ok", timeout_s=30)
        report[fault] = {
            "first_cold_requests_ms": [round(ms, 1) for ms in first],
            "healthy_hit_load": healthy,
            "hit_load": during,
            "hit_rps_vs_healthy": round(during["rps"] / healthy["rps"], 3),
            "cold_after_breaker_opened_ms": _summary(after_open),
            "readyz": health,
            "cold_p50_delay_after_open_ms": round(
                _summary(after_open)["p50"] - report["healthy_cold_ms"]["p50"], 2),
            "shared_again_after_s": round(shared_again_s, 2),
        }
    return report


def _shared(instances: list[Service]) -> bool:
    site = fresh(1, "f5probe")
    if post(instances[0], site)[1] != ["fetched"]:
        return False
    return all(post(instances[1], site)[1] == ["hit"] for _ in range(6))


def _until(check: Callable[[], bool], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    return float("inf")


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def figure_6(sim: Simulator, redis: RedisServer, instances: list[Service]) -> dict[str, Any]:
    """SIGKILL the worker holding a row's lease mid-fetch; time the row's arrival in Redis.

    The lease's start is read from Redis (its PTTL), the row's arrival by polling Redis, while
    a client keeps asking the other instance for the row (the next asker takes the lease).
    """
    from measure_service.rows import RowKey
    from measure_service.shared_tier import key_name

    slow_ms = 1500
    client = redis.client()
    sim.control(latency_ms=slow_ms, jitter_ms=0)
    results = []
    try:
        for site in fresh(5, "f6"):
            name = key_name("measure:v1:", RowKey(site, "2024-10-30", 1000, *[None] * 7))
            recent = sim.stats("?keys=0")["recent"]
            before = recent[-1]["time"] if recent else 0
            with ThreadPoolExecutor(2) as pool:
                pool.submit(post, instances[0], [site], 30)
                _until(lambda b=before: _holder_pid(sim, b) is not None, timeout_s=5)
                pid = _holder_pid(sim, before)
                assert pid is not None
                lease_left_ms = client.pttl(name + ":lease")
                lease_started = time.monotonic() - (LEASE_MS - lease_left_ms) / 1000
                os.kill(pid, signal.SIGKILL)
                sim.control(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=0)
                asking = pool.submit(_ask_until_answered, instances[1], site)
                arrived = _until(lambda n=name: client.exists(n) == 1, timeout_s=30)
                asking.result(timeout=30)
                sim.control(latency_ms=slow_ms, jitter_ms=0)
            results.append({"holder_pid": pid, "lease_left_at_kill_ms": lease_left_ms,
                            "lease_start_to_row_s": round(arrived - lease_started, 3)})
    finally:
        sim.control(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=30)
    round_trip = _upstream_round_trip(sim)
    bound = LEASE_MS / 1000 + round_trip
    worst = max(r["lease_start_to_row_s"] for r in results)
    return {"lease_s": LEASE_MS / 1000, "upstream_round_trip_s": round(round_trip, 3),
            "bound_s": round(bound, 3), "runs": results, "worst_s": worst, "ok": worst <= bound}


def _upstream_round_trip(sim: Simulator) -> float:
    """The slowest of 10 one-row requests straight to the simulator, as the workers send them."""
    took = []
    for i in range(10):
        started = time.perf_counter()
        requests.post(f"{sim.url}/v2/measure", params={"includeRows": "true"},
                      json={"rows": rows([f"rtt{i}.example.com"])},
                      headers={"Authorization": f"Bearer {UPSTREAM_TOKEN}"}, timeout=10)
        took.append(time.perf_counter() - started)
    return max(took)


def _ask_until_answered(service: Service, site: str) -> None:
    while post(service, [site], 30)[1] not in (["fetched"], ["hit"]):
        pass


def _holder_pid(sim: Simulator, after: float) -> int | None:
    for request in reversed(sim.stats("?keys=0")["recent"]):
        if request["time"] > after and "(pid " in request.get("user_agent", ""):
            return int(request["user_agent"].rsplit("(pid ", 1)[1].rstrip(")"))
    return None


def figure_7(redis: RedisServer, count: int = 100_000) -> dict[str, Any]:
    from measure_service.breaker import CircuitBreaker
    from measure_service.config import Config
    from measure_service.rows import RowKey
    from measure_service.shared_tier import SharedTier, connect
    from measure_service.upstream import RowResult

    client = redis.client()
    client.flushall()
    empty = client.info("memory")["used_memory"]
    config = Config.from_env({"AUTH_DISABLED": "true", "REDIS_URL": redis.url})
    tier = SharedTier(connect(config), prefix=config.redis_prefix, lease_s=5, ttl_s=86_400,
                      stale_s=86_400, error_ttl_s=300, breaker=CircuitBreaker(3, 2.0))
    for start in range(0, count, 1000):
        tier.write(
            (RowKey(f"www.site-{i}.example.com", "2024-10-30", 1000, "US", None, "web", "pc",
                    None, None, None), RowResult(1000 * 0.0661234 + i / 7, "modeled", None))
            for i in range(start, start + 1000))
    keys = client.dbsize()
    used = client.info("memory")["used_memory"]
    sample = client.get(client.randomkey())
    return {"rows": keys, "used_memory": used, "used_memory_empty": empty,
            "bytes_per_row": round(used / keys, 1),
            "bytes_per_row_over_empty": round((used - empty) / keys, 1),
            "sample_value": sample.decode() if sample else None,
            "ok": used / keys <= 600}


# --- driver ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 8))
    work_dir = Path(tempfile.mkdtemp(prefix="shared-tier-"))
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/shared_tier.py", *sys.argv[1:]]),
        "loadavg_before": os.getloadavg(), "cpus": os.cpu_count(),
    }
    with Processes(work_dir / "logs") as procs:
        redis = procs.redis("--maxmemory", "512mb")
        sim = procs.simulator(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=30,
                              token=UPSTREAM_TOKEN)
        instances = [procs.service(sim, env=tier_env(sim, redis), workers=2) for _ in range(2)]
        steps: list[tuple[int, Callable[[], Any]]] = [
            (1, lambda: figure_1(sim, instances)),
            (2, lambda: figure_2(sim, instances)),
            (3, lambda: figure_3(procs, sim, redis, instances)),
            (4, lambda: figure_4(redis, args.seconds)),
            (6, lambda: figure_6(sim, redis, instances)),
            (5, lambda: figure_5(procs, sim, redis, instances, args.seconds, work_dir)),
            (7, lambda: figure_7(redis)),
        ]
        for number, step in steps:
            if number in only:
                print(f"figure {number} ...", file=sys.stderr, flush=True)
                report[f"figure_{number}"] = step()
                print(json.dumps(report[f"figure_{number}"], indent=1), file=sys.stderr)
    report["loadavg_after"] = os.getloadavg()
    report["logs"] = str(work_dir / "logs")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated figure numbers (default: all)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of timed runs")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report here")
    parser.add_argument("--l2-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.l2_worker:
        print(json.dumps(l2_worker(args.l2_worker, args.seconds)))
        return 0
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
