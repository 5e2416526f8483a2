"""Coalescing, batching, bounds, the breaker and stale serving, with real processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import Processes, Service, Simulator

pytestmark = pytest.mark.integration

CONCURRENT_REQUESTS = 20


def cold() -> dict[str, Any]:
    return {"inventoryId": f"{uuid.uuid4().hex[:12]}.com", "utcDatetime": "2024-10-30"}


def statuses(service: Service, rows: list[dict[str, Any]]) -> list[str]:
    response = service.post(rows)
    assert response.status_code == 200, response.text
    return [row["status"] for row in response.json()["rows"]]


def post_concurrently(service: Service, bodies: list[list[dict[str, Any]]]) -> list[list[str]]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda rows: statuses(service, rows), bodies))


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    """The module's simulator with fresh counters, restored after the test."""
    simulator.reset()
    yield simulator
    simulator.reset()


def test_concurrent_requests_for_the_same_cold_keys_fetch_each_key_once(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(sim, env={"WAIT_WINDOW_MS": "2000"})
    rows = [cold() for _ in range(3)]
    sim.control(latency_ms=100)
    results = post_concurrently(service, [rows] * CONCURRENT_REQUESTS)
    # A request that arrives after the fetch landed is a hit; none is pending or lost.
    assert all(set(result) <= {"fetched", "hit"} for result in results)
    assert sim.stats()["rows"] == 3


def test_misses_of_concurrent_requests_share_upstream_batches(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(sim, env={"UPSTREAM_CONCURRENCY": "1", "WAIT_WINDOW_MS": "3000"})
    sim.control(latency_ms=100)
    bodies = [[cold(), cold()] for _ in range(CONCURRENT_REQUESTS)]
    results = post_concurrently(service, bodies)
    assert all(result == ["fetched", "fetched"] for result in results)
    stats = sim.stats()
    assert stats["rows"] == 2 * CONCURRENT_REQUESTS
    assert stats["requests"] < CONCURRENT_REQUESTS / 2


def test_past_the_pending_limit_misses_are_unavailable(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(sim, env={"MAX_PENDING_ROWS": "2", "WAIT_WINDOW_MS": "50"})
    sim.control(mode="hang")
    assert statuses(service, [cold(), cold(), cold()]) == ["pending", "pending", "unavailable"]


def test_an_open_breaker_answers_misses_unavailable_until_upstream_recovers(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(
        sim, env={"BREAKER_FAILURES": "1", "BREAKER_COOLDOWN_S": "1", "WAIT_WINDOW_MS": "1000"}
    )
    sim.control(mode="500")
    assert statuses(service, [cold()]) == ["unavailable"]  # the fetch failed: the breaker opens
    requests_seen = sim.stats()["requests"]
    assert statuses(service, [cold()]) == ["unavailable"]
    assert sim.stats()["requests"] == requests_seen  # refused without calling upstream
    sim.control(mode="ok")
    time.sleep(1.1)  # the cool-down; real processes cannot take a fake clock
    assert statuses(service, [cold()]) == ["fetched"]


@pytest.fixture
def aged_rows(processes: Processes, sim: Simulator) -> tuple[Service, list[dict[str, Any]]]:
    """A service holding two cached rows that are past their 1 s TTL but not stale-expired."""
    service = processes.service(
        sim, env={"CACHE_TTL_SECONDS": "1", "CACHE_STALE_SECONDS": "600", "WAIT_WINDOW_MS": "1000"}
    )
    rows = [cold(), cold()]
    assert statuses(service, rows) == ["fetched", "fetched"]
    time.sleep(1.1)  # past the TTL; real processes cannot take a fake clock
    sim.reset()
    return service, rows


def test_stale_rows_are_served_while_one_refresh_runs(
    aged_rows: tuple[Service, list[dict[str, Any]]], sim: Simulator
) -> None:
    service, rows = aged_rows
    sim.control(latency_ms=200)
    results = post_concurrently(service, [[rows[0]]] * CONCURRENT_REQUESTS)
    assert all(result in (["stale"], ["hit"]) for result in results)
    assert ["stale"] in results
    deadline = time.monotonic() + 5
    while statuses(service, [rows[0]]) != ["hit"]:
        assert time.monotonic() < deadline, "the refresh never landed"
        time.sleep(0.02)
    assert sim.stats()["rows"] == 1


def test_a_failed_refresh_keeps_serving_the_stale_value(
    aged_rows: tuple[Service, list[dict[str, Any]]], sim: Simulator
) -> None:
    service, rows = aged_rows
    sim.control(mode="500")
    for _ in range(5):
        assert statuses(service, [rows[1]]) == ["stale"]
        time.sleep(0.05)  # lets each refresh fail before the next request
    assert sim.stats()["requests"] >= 2  # refreshes were tried, and failed
