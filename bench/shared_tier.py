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
6. the lease holder SIGKILLed mid-fetch (and killed before sending, killed after upstream
   answered, hung and resumed): how long from the lease's start until another worker has the
   row in Redis, against the lease time plus the upstream round trip of that worker's fetch
   (as its upstream client measured it), with each step between stamped;
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
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from service_load import API_KEY, UPSTREAM_TOKEN, Generators

from devtools import probes
from devtools.harness import Processes, RedisServer, Server, Service, Simulator

LEASE_MS = 2000
COOLDOWN_S = 2.0
REDIS_TIMEOUT_MS = 50
UPSTREAM_LATENCY_MS = 100
UPSTREAM_JITTER_MS = 30


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
    """When ``check`` first held (inf: not within ``timeout_s``)."""
    try:
        probes.eventually(check, timeout_s, interval_s=0.05)
    except TimeoutError:
        return float("inf")
    return time.monotonic()


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


# How the lease holder fails, and how many times each is run: SIGKILLed while upstream answers
# (the figure), killed before it sent upstream (a lease left with no fetch behind it), killed
# after upstream answered but before it wrote Redis, and hung (SIGSTOP) past its lease and then
# resumed (its late write must be refused).
ORDERS = {"mid_fetch": 5, "before_send": 2, "after_answer": 2, "hung_then_resumed": 2}


def figure_6(sim: Simulator, redis: RedisServer, instances: list[Service]) -> dict[str, Any]:
    """Lease holders that fail (see ``ORDERS``); time each step to the row in Redis.

    Each step is stamped as it happens, on this machine's one clock: the lease's start, every
    look a waiting worker takes at the lease (the PTTL its claim script runs), the takeover (a
    second lease on the row) and the row's arrival by Redis's own timestamps in its MONITOR
    feed, the takeover's upstream send by the simulator's log, and the takeover's upstream
    round trip as the taking-over worker's upstream client measured it (its ``upstream batch
    fetched`` line). The bound for each kill is the lease plus that measured round trip. A
    client keeps asking the other instance for the row (the next asker takes the lease when it
    lapses).
    """
    from measure_service.rows import RowKey
    from measure_service.shared_tier import key_name

    slow_ms = 1500
    sim.control(latency_ms=slow_ms, jitter_ms=0)
    report: dict[str, Any] = {
        "lease_s": LEASE_MS / 1000,
        "simulator_latency_ms": f"{UPSTREAM_LATENCY_MS} +- {UPSTREAM_JITTER_MS}",
    }
    try:
        for order, runs in ORDERS.items():
            results = []
            for site in fresh(runs, "f6"):
                name = key_name("measure:v1:", RowKey(site, "2024-10-30", 1000, *[None] * 7))
                monitor = _Monitor(redis, name)
                try:
                    results.append(
                        _fail_holder(order, sim, redis, instances, site, name, monitor, slow_ms)
                    )
                finally:
                    monitor.close()
            report[order] = {
                "runs": results,
                "worst_lease_start_to_row_s": max(r["lease_start_to_row_s"] for r in results),
                "worst_over_bound_ms": max(r["over_bound_ms"] for r in results),
            }
    finally:
        sim.control(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=UPSTREAM_JITTER_MS)
    report["worst_over_bound_ms"] = max(report[order]["worst_over_bound_ms"] for order in ORDERS)
    report["rows_overwritten_by_late_holders"] = sum(
        r["overwritten_by_the_holder"] for r in report["hung_then_resumed"]["runs"])
    report["ok"] = (report["worst_over_bound_ms"] <= 0
                    and report["rows_overwritten_by_late_holders"] == 0)
    return report


def _fail_holder(order: str, sim: Simulator, redis: RedisServer, instances: list[Service],
                 site: str, name: str, monitor: _Monitor, slow_ms: float) -> dict[str, Any]:
    """Let the lease holder of ``site`` fail as ``order`` says; the timeline of its takeover."""
    before = _last_request_time(sim)
    client = redis.client()
    pid: int | None = None
    extra: dict[str, Any] = {}
    with ThreadPoolExecutor(2) as pool:
        if order == "before_send":
            client.set(name + ":lease", "killed-before-send", px=LEASE_MS)
        else:
            holder = pool.submit(post, instances[0], [site], 30)
            _until(lambda: _holder_pid(sim, before) is not None, timeout_s=5)
            pid = _holder_pid(sim, before)
            assert pid is not None
            os.kill(pid, signal.SIGKILL if order == "mid_fetch" else signal.SIGSTOP)
            if order == "after_answer":
                busy = _busy_s(sim, pid)
                _until(lambda p=pid: _busy_s(sim, p) > busy, timeout_s=10)
                os.kill(pid, signal.SIGKILL)
        killed = time.time()
        sim.control(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=UPSTREAM_JITTER_MS)
        asking = pool.submit(_ask_until_answered, instances[1], site)
        _until(lambda: client.exists(name) == 1, timeout_s=30)
        asking.result(timeout=30)
        if order == "hung_then_resumed":
            assert pid is not None
            taken_over = client.get(name)
            resumed = time.time()
            os.kill(pid, signal.SIGCONT)
            holder.result(timeout=30)
            # The holder's write script reads the lease first (a claim reads the row first).
            _until(lambda: any(t > resumed for t in monitor.times("GET", name + ":lease")),
                   timeout_s=10)
            extra["overwritten_by_the_holder"] = client.get(name) != taken_over
        sim.control(latency_ms=slow_ms, jitter_ms=0)
    lease_start, takeover = monitor.times("SET", name + ":lease")[:2]
    row_at = monitor.times("SET", name)[0]
    extra["rows_written"] = len(monitor.times("SET", name))
    looks = monitor.times("PTTL", name + ":lease")
    lapse = lease_start + LEASE_MS / 1000
    send = _request_time(sim, after=killed, not_pid=-1 if pid is None else pid)
    round_trip_ms = _takeover_round_trip_ms(instances[1], takeover)

    def ms(t: float | None) -> float | None:
        return None if t is None else round((t - lease_start) * 1000, 1)

    took_ms = (row_at - lease_start) * 1000
    bound_ms = LEASE_MS + round_trip_ms
    return {
        "holder_pid": pid, **extra,
        "ms_after_lease_start": {
            "kill": ms(killed), "lapse": ms(lapse),
            "last_look_before_lapse": ms(max((t for t in looks if t < lapse), default=None)),
            "takeover_start": ms(takeover), "upstream_send": ms(send), "row_in_redis": ms(row_at),
        },
        "looks_at_the_lease": len(looks),
        "takeover_upstream_round_trip_ms": round_trip_ms,
        "lapse_to_takeover_ms": _ms_between(lapse, takeover),
        "takeover_to_upstream_send_ms": _ms_between(takeover, send),
        "upstream_send_to_row_minus_round_trip_ms":
            None if send is None else round((row_at - send) * 1000 - round_trip_ms, 1),
        "lease_start_to_row_s": round(took_ms / 1000, 4),
        "bound_s": round(bound_ms / 1000, 4),
        "over_bound_ms": round(took_ms - bound_ms, 1),
    }


def _ms_between(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)


class _Monitor:
    """The commands Redis runs on one row's keys (scripts' inner commands included), with
    Redis's own timestamps, from its MONITOR feed."""

    def __init__(self, redis: RedisServer, name: str) -> None:
        self._redis = redis
        self._name = name
        self._seen: list[tuple[float, str, str]] = []  # time, command, key
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5)

    def _listen(self) -> None:
        with self._redis.client().monitor() as feed:
            self._ready.set()
            while not self._stop.is_set():
                command = feed.next_command()
                words = command["command"].split(" ", 2)
                # Commands the scripts run, and the lease a bench sets by hand.
                if len(words) > 1 and words[1].startswith(self._name) and (
                    command["client_type"] == "lua" or words[0].upper() == "SET"
                ):
                    self._seen.append((float(command["time"]), words[0].upper(), words[1]))

    def times(self, command: str, key: str) -> list[float]:
        return [t for t, seen, on in list(self._seen) if seen == command and on == key]

    def close(self) -> None:
        self._stop.set()
        self._redis.client().ping()  # the feed's next line wakes the listener
        self._thread.join(timeout=5)


def _busy_s(sim: Simulator, pid: int) -> float:
    """Seconds the simulator spent answering worker ``pid``'s finished requests."""
    busy = sim.stats("?keys=0&recent=0&by_agent=1")["busy_s_by_agent"]
    return float(sum(s for agent, s in busy.items() if agent.endswith(f"(pid {pid})")))


def _last_request_time(sim: Simulator) -> float:
    recent = sim.stats("?keys=0")["recent"]
    return float(recent[-1]["time"]) if recent else 0.0


def _request_time(sim: Simulator, after: float, not_pid: int) -> float | None:
    """When the first upstream request after ``after`` from a worker other than ``not_pid``
    arrived at the simulator."""
    for request in sim.stats("?keys=0")["recent"]:
        if request["time"] > after and not request["user_agent"].endswith(f"(pid {not_pid})"):
            return float(request["time"])
    return None


def _takeover_round_trip_ms(service: Service, takeover: float) -> float:
    """The upstream round trip of the first batch ``service`` fetched after ``takeover``, as
    its upstream client measured it (its log line comes soon after the row)."""

    def logged() -> float | None:
        for line in service.log_lines():
            if (line.get("message") == "upstream batch fetched"
                    and datetime.fromisoformat(line["timestamp"]).timestamp() >= takeover):
                return float(line["upstream_ms"])
        return None

    _until(lambda: logged() is not None, timeout_s=5)
    found = logged()
    if found is None:
        raise LookupError("no upstream batch logged after the takeover")
    return found


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
        sim = procs.simulator(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=UPSTREAM_JITTER_MS,
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
