"""Coalescing, batching, bounds, Retry-After, the breaker and stale serving, with real processes."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import Processes, Service, Simulator, eventually

pytestmark = pytest.mark.integration

CONCURRENT_REQUESTS = 20


def cold() -> dict[str, Any]:
    return {"inventoryId": f"{uuid.uuid4().hex[:12]}.com", "utcDatetime": "2024-10-30"}


def post_concurrently(service: Service, bodies: list[list[dict[str, Any]]]) -> list[list[str]]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda rows: service.statuses(rows), bodies))


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
    assert service.statuses([cold(), cold(), cold()]) == ["pending", "pending", "unavailable"]


def test_an_open_breaker_answers_misses_unavailable_until_upstream_recovers(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(
        sim, env={"BREAKER_FAILURES": "1", "BREAKER_COOLDOWN_S": "1", "WAIT_WINDOW_MS": "1000"}
    )
    sim.control(mode="500")
    assert service.statuses([cold()]) == ["unavailable"]  # the fetch failed: the breaker opens
    requests_seen = sim.stats()["requests"]
    assert service.statuses([cold()]) == ["unavailable"]
    assert sim.stats()["requests"] == requests_seen  # refused without calling upstream
    sim.control(mode="ok")
    time.sleep(1.1)  # the cool-down; real processes cannot take a fake clock
    assert service.statuses([cold()]) == ["fetched"]


@pytest.fixture
def aged_rows(processes: Processes, sim: Simulator) -> tuple[Service, list[dict[str, Any]]]:
    """A service holding two cached rows that are past their 1 s TTL but not stale-expired."""
    service = processes.service(
        sim, env={"CACHE_TTL_SECONDS": "1", "CACHE_STALE_SECONDS": "600", "WAIT_WINDOW_MS": "1000"}
    )
    rows = [cold(), cold()]
    assert service.statuses(rows) == ["fetched", "fetched"]
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
    eventually(lambda: service.statuses([rows[0]]) == ["hit"], timeout_s=5)
    assert sim.stats()["rows"] == 1


def test_a_failed_refresh_keeps_serving_the_stale_value(
    aged_rows: tuple[Service, list[dict[str, Any]]], sim: Simulator
) -> None:
    service, rows = aged_rows
    sim.control(mode="500")
    for _ in range(5):
        assert service.statuses([rows[1]]) == ["stale"]
        time.sleep(0.05)
    # Refreshes were tried, and failed: a failed one is judged only after a short wait for
    # evidence of upstream's health, so the next refresh may start a little later.
    for _ in range(100):
        if sim.stats()["requests"] >= 2:
            break
        assert service.statuses([rows[1]]) == ["stale"]
        time.sleep(0.05)
    assert sim.stats()["requests"] >= 2


# --- Batches by query parameters, Retry-After, one refresh while upstream hangs -------------------
# Where misses must pile up, the simulator hangs one request so that the only upstream slot stays
# busy: what queues behind it is then known exactly, whatever the machine's speed.



def fresh_rows(count: int) -> list[dict[str, Any]]:
    """Rows (with identifiers) for keys that no earlier request asked for."""
    prefix = uuid.uuid4().hex[:10]
    return [
        {"inventoryId": f"{prefix}-{i}.com", "utcDatetime": "2024-10-30", "rowIdentifier": f"r{i}"}
        for i in range(count)
    ]


def all_hits(service: Service, rows: list[dict[str, Any]], query: str = "") -> bool:
    """True when every row is answered from the cache."""
    return set(service.statuses(rows, query=query)) == {"hit"}


def sends_per_key(simulator: Simulator, rows: list[dict[str, Any]]) -> list[int]:
    """How many times the simulator received each row's key (whatever the query parameters)."""
    per_key = simulator.stats()["rows_per_key"]
    return [
        sum(count for key, count in per_key.items() if key.startswith(row["inventoryId"] + "|"))
        for row in rows
    ]


def single_slot_service(processes: Processes, simulator: Simulator) -> Service:
    """One worker with one upstream slot, answering misses without waiting."""
    return processes.service(simulator, env={
        "UPSTREAM_CONCURRENCY": "1", "WAIT_FOR_MISSING": "false", "UPSTREAM_TIMEOUT_MS": "30000",
    })


def block_the_only_slot(service: Service, simulator: Simulator) -> None:
    """Leave one upstream request hanging, so that new misses queue behind it."""
    simulator.control(mode="hang")
    assert service.statuses(fresh_rows(1)) == ["pending"]
    eventually(lambda: simulator.stats()["requests"] == 1)


def rows_per_request_after_the_blocker(simulator: Simulator) -> list[int]:
    """Rows carried by each upstream request that followed the hanging one."""
    return [entry["rows"] for entry in simulator.stats()["recent"][1:]]


def test_misses_queued_behind_a_busy_upstream_leave_as_one_batch(
    processes: Processes, sim: Simulator
) -> None:
    service = single_slot_service(processes, sim)
    block_the_only_slot(service, sim)
    bodies = [fresh_rows(5) for _ in range(10)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda rows: service.statuses(rows), bodies))
    assert answers == [["pending"] * 5] * 10

    sim.control(mode="ok")
    every_row = [row for rows in bodies for row in rows]
    eventually(lambda: all_hits(service, every_row))
    assert rows_per_request_after_the_blocker(sim) == [50]
    assert sends_per_key(sim, every_row) == [1] * 50


def test_rows_with_different_latest_or_framework_go_in_separate_batches(
    processes: Processes, sim: Simulator
) -> None:
    service = single_slot_service(processes, sim)
    block_the_only_slot(service, sim)
    queries = ("", "?latest=true", "?framework=ghg-v1")
    bodies = {query: fresh_rows(2) for query in queries}
    for query, rows in bodies.items():
        assert service.statuses(rows, query=query) == ["pending", "pending"]

    sim.control(mode="ok")
    for query, rows in bodies.items():
        eventually(functools.partial(all_hits, service, rows, query))
    assert rows_per_request_after_the_blocker(sim) == [2, 2, 2]
    per_key = sim.stats()["rows_per_key"]
    # The simulator's key ends with the framework and latest its request carried.
    for query, tail in zip(queries, ("|", "|true", "ghg-v1|"), strict=True):
        for row in bodies[query]:
            assert f"{row['inventoryId']}|2024-10-30|1000||||||{tail}" in per_key


def test_after_a_429_no_request_leaves_the_worker_before_retry_after(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(sim, env={"UPSTREAM_RETRIES": "2", "WAIT_FOR_MISSING": "false"})
    sim.control(mode="429", retry_after=1)
    rate_limited = fresh_rows(3)
    assert service.statuses(rate_limited) == ["pending"] * 3
    eventually(lambda: sim.stats()["by_status"].get("429"))
    sim.control(mode="ok")
    asked_during_the_wait = fresh_rows(3)
    service.statuses(asked_during_the_wait)

    eventually(lambda: all_hits(service, rate_limited + asked_during_the_wait))
    recent = sim.stats()["recent"]
    refused_at = next(entry["time"] for entry in recent if entry["status"] == "429")
    later = [entry["time"] - refused_at for entry in recent if entry["time"] > refused_at]
    assert later and min(later) >= 1.0
    assert sends_per_key(sim, rate_limited) == [2] * 3  # the 429, then the retry


def test_with_upstream_hanging_every_stale_read_shares_one_refresh(
    processes: Processes, sim: Simulator
) -> None:
    service = processes.service(sim, env={
        "CACHE_TTL_SECONDS": "1", "UPSTREAM_TIMEOUT_MS": "30000", "UPSTREAM_RETRIES": "0",
    })
    rows = fresh_rows(2)
    first = service.post(rows).json()["rows"]
    assert [row["status"] for row in first] == ["fetched", "fetched"]
    values = [row["totalEmissions"] for row in first]

    sim.control(mode="hang")
    eventually(lambda: service.statuses(rows) == ["stale", "stale"])
    for _ in range(5):
        answer = service.post(rows).json()["rows"]
        assert [(r["status"], r["totalEmissions"]) for r in answer] == [
            ("stale", value) for value in values
        ]
    assert sends_per_key(sim, rows) == [2, 2]  # the first fetch, then one refresh that hangs

    sim.control(mode="ok")
    eventually(lambda: all_hits(service, rows))
    assert [row["totalEmissions"] for row in service.post(rows).json()["rows"]] == values
