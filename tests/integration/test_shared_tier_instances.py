"""Two instances of two gunicorn workers on one redis-server and one simulator, with faults.

Redis killed, hung (SIGSTOP), restarted, flushed and full: never a 5xx, hits keep flowing, and
while Redis is healthy a row is fetched from upstream once for all four workers.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devtools.probes import Samples, metric_total
from tests.conftest import (
    Processes,
    RedisServer,
    Service,
    Simulator,
    eventually,
)

pytestmark = pytest.mark.integration

TIER_ENV = {
    "WAIT_FOR_MISSING": "true",
    "WAIT_WINDOW_MS": "500",
    "REDIS_TIMEOUT_MS": "100",
    "REDIS_BREAKER_FAILURES": "2",
    "REDIS_BREAKER_COOLDOWN_S": "0.5",
    "REDIS_LEASE_MS": "2000",
}


@pytest.fixture(scope="module")
def upstream_sim(module_processes: Processes) -> Simulator:
    return module_processes.simulator(latency_ms=30)


@pytest.fixture(scope="module")
def instances(
    module_processes: Processes, upstream_sim: Simulator, module_redis: RedisServer
) -> list[Service]:
    env = {**TIER_ENV, "REDIS_URL": module_redis.url}
    return [module_processes.service(upstream_sim, env=env, workers=2) for _ in range(2)]


@pytest.fixture(autouse=True)
def healthy_redis(module_redis: RedisServer) -> Iterator[None]:
    """After a test that broke Redis: Redis back, and every worker's breaker cool-down over."""
    faults = module_redis.faults
    yield
    if module_redis.faults == faults:
        return
    module_redis.resume()
    if module_redis.process.poll() is not None:
        module_redis.restart()
    time.sleep(float(TIER_ENV["REDIS_BREAKER_COOLDOWN_S"]) + 0.2)


def rows(*sites: str) -> list[dict[str, Any]]:
    return [
        {"rowIdentifier": str(i), "inventoryId": site, "utcDatetime": "2024-10-30"}
        for i, site in enumerate(sites)
    ]


def fresh_sites(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:10]
    return [f"s{i}-{tag}.example.com" for i in range(count)]


def statuses(service: Service, sites: list[str]) -> list[str]:
    return service.statuses(rows(*sites))


def upstream_rows(sim: Simulator) -> int:
    rows_seen: int = sim.stats()["rows"]
    return rows_seen


def test_a_row_fetched_through_one_instance_is_a_hit_on_every_worker_of_both(
    instances: list[Service], upstream_sim: Simulator
) -> None:
    [site] = fresh_sites(1)
    before = upstream_rows(upstream_sim)
    assert statuses(instances[0], [site]) == ["fetched"]
    answers = [statuses(instances[i % 2], [site]) for i in range(20)]
    assert answers == [["hit"]] * 20
    assert upstream_rows(upstream_sim) - before == 1


def test_metrics_count_redis_hits_and_leases_per_tier(instances: list[Service]) -> None:
    [site] = fresh_sites(1)
    statuses(instances[0], [site])
    statuses(instances[1], [site])
    # Each worker writes its counts to the metrics files about once a second.
    def counted_a_redis_hit() -> Samples | None:
        samples = instances[1].metrics()
        return samples if metric_total(samples, "measure_shared_hits_total") >= 1 else None

    samples = eventually(counted_a_redis_hit)
    assert any(name == "measure_shared_seconds_bucket" for name, _ in samples)
    eventually(lambda: metric_total(
        instances[0].metrics(), "measure_shared_leases_total", outcome="won") >= 1)


def test_a_cold_burst_over_both_instances_fetches_each_row_once(
    instances: list[Service], upstream_sim: Simulator
) -> None:
    sites = fresh_sites(20)
    before = upstream_rows(upstream_sim)
    targets = [instances[i % 2] for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda s: s.post(rows(*sites)).status_code, targets))
    assert answers == [200] * len(targets)
    assert upstream_rows(upstream_sim) - before == 20


def test_a_restarted_instance_starts_warm(
    module_processes: Processes, upstream_sim: Simulator, module_redis: RedisServer,
    instances: list[Service],
) -> None:
    sites = fresh_sites(50)
    assert set(statuses(instances[0], sites)) == {"fetched"}
    before = upstream_rows(upstream_sim)
    env = {**TIER_ENV, "REDIS_URL": module_redis.url}
    fresh = module_processes.service(upstream_sim, env=env, workers=2)
    assert set(statuses(fresh, sites)) == {"hit"}
    assert upstream_rows(upstream_sim) == before


def test_with_redis_killed_there_is_no_5xx_and_readyz_says_degraded(
    instances: list[Service], module_redis: RedisServer, upstream_sim: Simulator
) -> None:
    warm = fresh_sites(5)

    def shared_hits() -> float:
        return sum(metric_total(service.metrics(), "measure_shared_hits_total")
                   for service in instances)

    before = shared_hits()

    def every_worker_holds_them() -> bool:
        # One worker fetches each row; each of the others finds it in Redis once, which puts it
        # in that worker's memory, whichever worker the connections happen to reach.
        for service in instances:
            statuses(service, warm)
        return shared_hits() - before >= len(warm) * (2 * len(instances) - 1)

    eventually(every_worker_holds_them, timeout_s=20.0)
    module_redis.kill()
    for service, _ in zip(itertools.cycle(instances), range(40), strict=False):
        assert set(statuses(service, warm)) == {"hit"}
    cold = fresh_sites(3)
    assert set(statuses(instances[0], cold)) <= {"fetched", "pending"}
    ready = instances[0].get("/readyz")
    assert ready.status_code == 200
    eventually(lambda: instances[0].get("/readyz").json()["sharedTier"] == "degraded")


def test_after_redis_comes_back_rows_are_shared_again(
    instances: list[Service], module_redis: RedisServer, upstream_sim: Simulator
) -> None:
    module_redis.kill()
    for _ in range(6):
        statuses(instances[0], fresh_sites(1))
    module_redis.restart()

    def shared_again() -> bool:
        [site] = fresh_sites(1)
        statuses(instances[0], [site])
        return all(statuses(instances[1], [site]) == ["hit"] for _ in range(4))

    eventually(shared_again, timeout_s=10)
    for service in instances:
        eventually(lambda s=service: s.get("/readyz").json()["sharedTier"] == "ok")


def test_with_redis_hung_there_is_no_5xx_and_misses_still_get_fetched(
    instances: list[Service], module_redis: RedisServer
) -> None:
    warm = fresh_sites(5)
    statuses(instances[0], warm)
    module_redis.pause()
    try:
        for service, _ in zip(itertools.cycle(instances), range(20), strict=False):
            assert set(statuses(service, warm)) <= {"hit", "fetched"}
        assert set(statuses(instances[1], fresh_sites(3))) == {"fetched"}
    finally:
        module_redis.resume()


def test_a_flushed_redis_is_refilled_with_one_fetch_per_row(
    instances: list[Service], module_redis: RedisServer, upstream_sim: Simulator
) -> None:
    module_redis.client().flushall()
    sites = fresh_sites(10)
    before = upstream_rows(upstream_sim)
    statuses(instances[0], sites)
    module_redis.client().flushall()
    statuses(instances[1], sites)  # L1 of instance 0 keeps them; instance 1 fetches again
    after_flush = upstream_rows(upstream_sim) - before
    assert after_flush <= 20
    for _ in range(8):
        assert set(statuses(instances[1], sites)) == {"hit"}
    assert upstream_rows(upstream_sim) - before == after_flush


def test_a_full_redis_costs_no_5xx_and_rows_still_get_fetched(
    instances: list[Service], module_redis: RedisServer
) -> None:
    client = module_redis.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        for service in instances:
            assert set(statuses(service, fresh_sites(5))) == {"fetched"}
        eventually(
            lambda: any(
                service.get("/readyz").json().get("sharedTier") == "degraded"
                for service in instances for _ in range(4)
            )
        )
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", "allkeys-lfu")


def test_degraded_and_recovered_are_logged_once_per_transition_not_per_request(
    instances: list[Service], module_redis: RedisServer
) -> None:
    module_redis.kill()
    for _ in range(30):
        statuses(instances[1], fresh_sites(1))
    module_redis.restart()
    eventually(lambda: instances[1].get("/readyz").json()["sharedTier"] == "ok")
    degraded = [
        line for line in instances[1].log_lines()
        if line.get("message", "").startswith("shared tier degraded: redis unreachable")
    ]
    assert 1 <= len(degraded) <= 2 * 3  # 2 workers, one line per outage (3 outages so far)


def test_the_redis_password_is_never_logged(
    processes: Processes, upstream_sim: Simulator
) -> None:
    server = processes.redis(password="hunter2-secret")
    service = processes.service(upstream_sim, env={**TIER_ENV, "REDIS_URL": server.url})
    assert statuses(service, fresh_sites(2)) == ["fetched", "fetched"]
    assert service.get("/readyz").json()["sharedTier"] == "ok"
    server.kill()
    statuses(service, fresh_sites(2))
    statuses(service, fresh_sites(2))
    eventually(lambda: "shared tier degraded" in service.log_path.read_text())
    assert "hunter2-secret" not in service.log_path.read_text()
