"""Fetch leases across two instances of two gunicorn workers, in every order of events.

A lease holder that dies before sending upstream, one that dies after upstream answered but
before it wrote Redis, one that hangs (SIGSTOP) past its lease and then resumes, and several
workers racing for a lapsed lease: the row is fetched by one worker once the lease lapses, and
a late holder never overwrites the newer row.
"""

from __future__ import annotations

import os
import signal
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import requests

from devtools.probes import metric_total
from measure_service.rows import RowKey
from measure_service.shared_tier import key_name
from tests.conftest import (
    Processes,
    RedisServer,
    Service,
    Simulator,
    eventually,
)

pytestmark = pytest.mark.integration

LEASE_MS = 800
FAST_MS = 30
# Slow enough that a test sees the holder's request arrive and stops the holder before the
# answer comes back.
SLOW_MS = 400
TIER_ENV = {
    "WAIT_FOR_MISSING": "true",
    "WAIT_WINDOW_MS": "300",
    "REDIS_TIMEOUT_MS": "200",
    "REDIS_LEASE_MS": str(LEASE_MS),
    "UPSTREAM_TIMEOUT_MS": "5000",
}
PREFIX = "measure:v1:"


@pytest.fixture(scope="module")
def upstream_sim(module_processes: Processes) -> Simulator:
    return module_processes.simulator(latency_ms=FAST_MS)


@pytest.fixture(scope="module")
def instances(
    module_processes: Processes, upstream_sim: Simulator, module_redis: RedisServer
) -> list[Service]:
    env = {**TIER_ENV, "REDIS_URL": module_redis.url}
    return [module_processes.service(upstream_sim, env=env, workers=2) for _ in range(2)]


@pytest.fixture(autouse=True)
def fast_upstream(upstream_sim: Simulator) -> Any:
    yield
    upstream_sim.control(latency_ms=FAST_MS, jitter_ms=0)


def fresh_site() -> str:
    return f"lease-{uuid.uuid4().hex[:10]}.example.com"


def row_name(site: str) -> str:
    return key_name(PREFIX, RowKey(site, "2024-10-30", 1000, *[None] * 7))


def statuses(service: Service, site: str) -> list[str]:
    return service.statuses(
        [{"rowIdentifier": "0", "inventoryId": site, "utcDatetime": "2024-10-30"}]
    )


def answered(service: Service, site: str) -> bool:
    return statuses(service, site) in (["fetched"], ["hit"])


def fetches_of(sim: Simulator, site: str) -> int:
    """Rows upstream was sent for ``site``."""
    return sum(count for key, count in sim.stats()["rows_per_key"].items()
               if key.startswith(site + "|"))


def last_request_time(sim: Simulator) -> float:
    recent = sim.stats("?keys=0")["recent"]
    return recent[-1]["time"] if recent else 0.0


def holder_pid(sim: Simulator, after: float) -> int | None:
    """The pid of the worker whose upstream request arrived after ``after``."""
    for request in reversed(sim.stats("?keys=0")["recent"]):
        if request["time"] > after and "(pid " in request["user_agent"]:
            return int(request["user_agent"].rsplit("(pid ", 1)[1].rstrip(")"))
    return None


def start_holder(
    pool: ThreadPoolExecutor, sim: Simulator, service: Service, site: str
) -> tuple[int, Future[Any]]:
    """Ask ``service`` for ``site`` against a slow upstream; the pid of the worker that sent
    it upstream (holding its lease) as soon as the request arrives there, stopped."""
    before = last_request_time(sim)
    sim.control(latency_ms=SLOW_MS, jitter_ms=0)
    asked = pool.submit(lambda: service.post(
        [{"rowIdentifier": "0", "inventoryId": site, "utcDatetime": "2024-10-30"}], timeout=20
    ))
    pid = eventually(lambda: holder_pid(sim, before), timeout_s=5)
    os.kill(pid, signal.SIGSTOP)
    sim.control(latency_ms=FAST_MS, jitter_ms=0)
    return pid, asked


def busy_s(sim: Simulator, pid: int) -> float:
    """Seconds upstream spent answering worker ``pid``'s finished requests."""
    busy = sim.stats("?keys=0&recent=0&by_agent=1")["busy_s_by_agent"]
    return sum(s for agent, s in busy.items() if agent.endswith(f"(pid {pid})"))


def lost_leases(service: Service) -> float:
    return metric_total(service.metrics(), "measure_shared_leases_total", outcome="lost")


def test_a_lease_whose_holder_died_before_sending_is_fetched_once_after_it_lapses(
    instances: list[Service], upstream_sim: Simulator, module_redis: RedisServer
) -> None:
    site = fresh_site()
    client = module_redis.client()
    # What a worker killed between taking the lease and sending upstream leaves behind.
    client.set(row_name(site) + ":lease", "dead-holder", px=LEASE_MS)
    assert statuses(instances[1], site) == ["pending"]
    fetched_meanwhile = fetches_of(upstream_sim, site)
    if client.pttl(row_name(site) + ":lease") > 0:
        assert fetched_meanwhile == 0  # nobody fetches a row whose lease is held
    eventually(lambda: answered(instances[1], site))
    assert fetches_of(upstream_sim, site) == 1
    assert client.exists(row_name(site)) == 1


def test_workers_racing_for_a_lapsed_lease_fetch_the_row_once(
    instances: list[Service], upstream_sim: Simulator, module_redis: RedisServer
) -> None:
    site = fresh_site()
    module_redis.client().set(row_name(site) + ":lease", "dead-holder", px=LEASE_MS)
    # Fresh connections spread over both workers of both instances: four watchers.
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda i: statuses(instances[i % 2], site), range(16)))
    assert ["fetched"] not in first[:4] or fetches_of(upstream_sim, site) == 1
    for service in instances:
        eventually(lambda s=service: answered(s, site))
    assert fetches_of(upstream_sim, site) == 1


def test_a_holder_killed_after_upstream_answered_is_replaced_once_its_lease_lapses(
    instances: list[Service], upstream_sim: Simulator, module_redis: RedisServer
) -> None:
    site = fresh_site()
    client = module_redis.client()
    with ThreadPoolExecutor(1) as pool:
        pid, asked = start_holder(pool, upstream_sim, instances[0], site)
        busy_before = busy_s(upstream_sim, pid)
        # Upstream answers the stopped holder, which then dies without writing Redis.
        eventually(lambda: busy_s(upstream_sim, pid) > busy_before, timeout_s=5)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(requests.RequestException):
            asked.result(timeout=20)
    assert client.exists(row_name(site)) == 0
    eventually(lambda: answered(instances[1], site))
    assert fetches_of(upstream_sim, site) == 2  # the dead holder's, and one more
    assert client.exists(row_name(site)) == 1
    assert client.exists(row_name(site) + ":lease") == 0


def test_a_hung_holder_that_resumes_after_its_lease_lapsed_does_not_overwrite_the_newer_row(
    instances: list[Service], upstream_sim: Simulator, module_redis: RedisServer
) -> None:
    site = fresh_site()
    client = module_redis.client()
    lost_before = lost_leases(instances[0])
    with ThreadPoolExecutor(1) as pool:
        pid, asked = start_holder(pool, upstream_sim, instances[0], site)
        try:
            eventually(lambda: answered(instances[1], site))
            newer = client.get(row_name(site))
            assert newer is not None
        finally:
            os.kill(pid, signal.SIGCONT)
        assert asked.result(timeout=20).status_code == 200
    # The resumed holder's write is refused, and counted once as a lease lost.
    eventually(lambda: lost_leases(instances[0]) >= lost_before + 1)
    assert client.get(row_name(site)) == newer
    assert lost_leases(instances[0]) == lost_before + 1
    assert fetches_of(upstream_sim, site) == 2  # the holder's, and the one that took over
