"""Upstream faults (the simulator's modes) never reach clients as 5xx, and hits keep flowing.

One gevent worker in front of the simulator. For each fault mode, concurrent clients send
requests mixing cached rows and new ones: every answer is a 200, every cached row is a ``hit``,
and the worker's resources stay bounded: upstream requests in flight never exceed
``UPSTREAM_CONCURRENCY``, open file descriptors stay within the connections in play, and the
same worker process serves throughout. When the fault clears, new rows are fetched again.

The service exposes no greenlet count, so the live greenlets are counted in process (the same
app and fetcher, a held fake upstream): they stop growing at the pending-row cap whatever the
number of requests, and fall back to the baseline once upstream answers.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gevent
import greenlet
import pytest
import requests
from flask import Flask

from devtools import probes
from measure_service.app import close_app, create_app
from measure_service.config import Config
from tests.conftest import Processes, Service, Simulator, eventually
from tests.measure_service.conftest import FakeUpstream

live = pytest.mark.integration

MODES = ("hang", "500", "429", "malformed", "reset", "slow_body")
CONCURRENCY = 2  # UPSTREAM_CONCURRENCY
CLIENTS = 8
REQUESTS_PER_MODE = 48
COLD_ROWS_PER_REQUEST = 3
MAX_PENDING_ROWS = 40
# Client connections, upstream pool, simulator control calls, and the worker's own files.
FD_HEADROOM = CLIENTS + CONCURRENCY + 16
HOT = [{"inventoryId": f"hot{n}.example.com", "utcDatetime": "2024-10-30"} for n in range(4)]


def cold() -> dict[str, Any]:
    return {"inventoryId": f"{uuid.uuid4().hex[:12]}.com", "utcDatetime": "2024-10-30"}



def gauge(service: Service, name: str) -> float:
    """The sum of the gauge ``name`` over its series on /metrics, which must show it."""
    samples = service.metrics()
    assert any(sample == name for sample, _ in samples), f"/metrics has no {name}"
    return probes.metric_total(samples, name)


def limit(service: Service) -> int:
    """The worker's adaptive limit on upstream requests in flight, from /metrics."""
    return int(gauge(service, "measure_upstream_concurrency_limit"))


def open_fds(pid: int) -> int:
    count = probes.open_fds(pid)
    assert count is not None, f"worker {pid} is gone"
    return count


def in_flight(service: Service) -> float:
    """Upstream requests in flight now, from /metrics."""
    return gauge(service, "measure_upstream_in_flight")


@pytest.fixture(scope="module")
def simulator(module_processes: Processes) -> Simulator:
    return module_processes.simulator()


@pytest.fixture(scope="module")
def service(module_processes: Processes, simulator: Simulator) -> Service:
    env = {
        # A hang lasts until the simulator is reset; the breaker stays shut so that every
        # burst reaches upstream (the breaker has its own tests).
        "UPSTREAM_CONCURRENCY": str(CONCURRENCY), "UPSTREAM_TIMEOUT_MS": "3000",
        "UPSTREAM_CONNECT_TIMEOUT_MS": "300", "MAX_PENDING_ROWS": str(MAX_PENDING_ROWS),
        "BREAKER_FAILURES": "1000", "WAIT_WINDOW_MS": "150", "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "off",
    }
    started = module_processes.service(simulator, env=env)
    assert [row["status"] for row in started.post(HOT).json()["rows"]] == ["fetched"] * len(HOT)
    return started


@pytest.fixture(scope="module")
def worker(service: Service) -> int:
    (pid,) = service.worker_pids()
    return pid


@pytest.fixture(scope="module")
def baseline_fds(worker: int) -> int:
    return open_fds(worker)


@pytest.fixture
def fault(request: pytest.FixtureRequest, simulator: Simulator) -> Iterator[str]:
    mode: str = request.param
    simulator.control(mode=mode)
    yield mode
    simulator.reset()


def burst(service: Service) -> list[requests.Response]:
    """Concurrent clients, each request two cached rows and some new ones."""
    def one(_: int) -> requests.Response:
        rows = [HOT[0], *(cold() for _ in range(COLD_ROWS_PER_REQUEST)), HOT[1]]
        return service.post(rows)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(REQUESTS_PER_MODE)))


@live
@pytest.mark.parametrize("fault", MODES, indirect=True)
def test_under_an_upstream_fault_clients_get_200_and_hits_keep_being_served(
    service: Service, fault: str
) -> None:
    responses = burst(service)
    assert sorted({r.status_code for r in responses}) == [200]
    for response in responses:
        statuses = [row["status"] for row in response.json()["rows"]]
        assert statuses[0] == statuses[-1] == "hit"
        assert set(statuses[1:-1]) <= {"pending", "unavailable"}, statuses


@live
@pytest.mark.parametrize("fault", MODES, indirect=True)
def test_under_an_upstream_fault_the_worker_stays_bounded(
    service: Service, fault: str, worker: int, baseline_fds: int
) -> None:
    burst(service)
    assert in_flight(service) <= CONCURRENCY
    assert open_fds(worker) <= baseline_fds + FD_HEADROOM
    assert service.worker_pids() == {worker}


@live
@pytest.mark.parametrize("fault", ["hang"], indirect=True)
def test_while_upstream_hangs_the_adaptive_limit_is_in_flight_and_never_the_pool_beyond(
    service: Service, fault: str
) -> None:
    burst(service)
    eventually(lambda: in_flight(service) == limit(service), timeout_s=5)
    assert 1 <= in_flight(service) == limit(service) <= CONCURRENCY


@live
@pytest.mark.parametrize("fault", ["hang"], indirect=True)
def test_misses_beyond_the_pending_cap_are_unavailable_not_queued(
    service: Service, fault: str
) -> None:
    rows = [cold() for _ in range(MAX_PENDING_ROWS * 2)]
    statuses = [row["status"] for row in service.post(rows).json()["rows"]]
    assert statuses.count("pending") <= MAX_PENDING_ROWS
    assert statuses.count("unavailable") >= MAX_PENDING_ROWS


@live
def test_after_the_faults_clear_new_rows_are_fetched_again(
    service: Service, simulator: Simulator
) -> None:
    simulator.reset()
    eventually(lambda: service.post([cold()]).json()["rows"][0]["status"] == "fetched")


# --- greenlets, counted in process -------------------------------------------------------------


def live_greenlets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


@pytest.fixture
def held_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    upstream.hold()
    yield upstream
    upstream.release()
    gevent.sleep(0.05)  # the released fetches finish here, not in the next test


@pytest.fixture
def app(held_upstream: FakeUpstream) -> Iterator[Flask]:
    config = Config(
        api_keys=("k",), wait_for_missing=False, upstream_concurrency=CONCURRENCY,
        max_pending_rows=MAX_PENDING_ROWS, upstream_batch_window_ms=0.0,
    )
    application = create_app(config, upstream=held_upstream)
    yield application
    close_app(application)


def send_misses(app: Flask, count: int, first: int = 0) -> None:
    """``count`` requests of new rows, each with its own framework (so its own batch group)."""
    client = app.test_client()
    for n in range(first, first + count):
        client.post(f"/v2/measure?framework=f{n}", json={"rows": [cold(), cold()]},
                    headers={"Authorization": "Bearer k"})
        gevent.sleep(0)  # let the batcher's greenlets start and block on upstream


def test_greenlets_stop_growing_at_the_pending_cap_while_upstream_hangs(app: Flask) -> None:
    baseline = live_greenlets()
    send_misses(app, 100)
    after_100 = live_greenlets()
    send_misses(app, 300, first=100)
    assert live_greenlets() <= after_100
    assert after_100 <= baseline + MAX_PENDING_ROWS + CONCURRENCY


def test_greenlets_fall_back_to_the_baseline_once_upstream_answers(
    app: Flask, held_upstream: FakeUpstream
) -> None:
    baseline = live_greenlets()
    send_misses(app, 100)
    assert live_greenlets() > baseline
    held_upstream.release()
    deadline = time.monotonic() + 5
    while live_greenlets() > baseline and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert live_greenlets() <= baseline
