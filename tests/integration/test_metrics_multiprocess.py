"""/metrics of a real gunicorn with 2 gevent workers: counters add up over the workers, and a
killed worker's live gauges leave the sum while its counts stay.

Each worker writes its own files in ``PROMETHEUS_MULTIPROC_DIR``; reading one file shows what
that worker alone recorded, which is how the tests know both workers served.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector

from devtools.probes import Samples, metric_total
from tests.conftest import Processes, Service, Simulator, eventually

pytestmark = pytest.mark.integration

WORKERS = 2
# The same rows in every request: each worker that served holds exactly these entries.
ROWS = [
    {"inventoryId": f"metrics-{i}.example.com", "utcDatetime": "2024-10-30", "rowIdentifier": i}
    for i in range(4)
]
MAX_COST = 50_000
MIN_REQUESTS = 40
MAX_REQUESTS = 400
REQUEST_COUNT = "flask_http_request_duration_seconds_count"
MEASURE_OK = {"method": "POST", "path": "/v2/measure", "status": "200"}


def start(processes: Processes, metrics_dir: Path) -> Service:
    simulator: Simulator = processes.simulator()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "CACHE_MAX_COST": str(MAX_COST)}
    return processes.service(simulator, env=env, workers=WORKERS)


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def two_workers(module_processes: Processes, metrics_dir: Path) -> Service:
    """Shared by the tests that only add traffic the others do not count."""
    return start(module_processes, metrics_dir)


@pytest.fixture
def doomed_dir(tmp_path: Path) -> Path:
    return tmp_path / "prometheus"


@pytest.fixture
def doomed_workers(processes: Processes, doomed_dir: Path) -> Service:
    """A service of its own, for a test that kills one of its workers."""
    return start(processes, doomed_dir)


def scrape(service: Service) -> Samples:
    """Every sample of one /metrics answer (from whichever worker took it)."""
    return service.metrics()


total = metric_total


def per_worker(directory: Path, kind: str, name: str, **labels: str) -> dict[int, float]:
    """``name`` as each worker recorded it in its own ``{kind}_{pid}.db`` file."""
    found: dict[int, float] = {}
    for path in directory.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        merged = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
        for metric in merged:
            for sample in metric.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    found[pid] = found.get(pid, 0.0) + sample.value
    return found



def post_until_both_workers_served(service: Service, metrics_dir: Path) -> int:
    """Send rounds of 20 requests, 8 in parallel, until both workers served; return the count."""
    def both_served() -> bool:
        served = per_worker(metrics_dir, "histogram", REQUEST_COUNT, **MEASURE_OK)
        return len(served) == WORKERS and all(served.values())

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while sent < MAX_REQUESTS:
            statuses = list(pool.map(lambda _: service.post(ROWS).status_code, range(20)))
            assert statuses == [200] * len(statuses)
            sent += len(statuses)
            if sent >= MIN_REQUESTS and both_served():
                return sent
            # A worker writes its counts to its file within a second: give it the time.
            time.sleep(0.1)
    eventually(both_served, timeout_s=3.0)
    return sent


def replaced(samples: dict[Any, float]) -> dict[Any, float] | None:
    """``samples`` once every worker, the replacement included, reports its cache budget."""
    return samples if total(samples, "measure_cache_max_cost") == WORKERS * MAX_COST else None


def test_request_and_row_counters_add_up_over_both_workers(
    two_workers: Service, metrics_dir: Path
) -> None:
    sent = post_until_both_workers_served(two_workers, metrics_dir)
    # Each worker writes its values to its files within a second.
    def counted_all() -> dict[Any, float] | None:
        samples = scrape(two_workers)
        return samples if total(samples, REQUEST_COUNT, **MEASURE_OK) == sent else None

    samples = eventually(counted_all)
    assert total(samples, REQUEST_COUNT, **MEASURE_OK) == sent
    assert total(samples, "flask_http_request_total", method="POST", status="200") == sent
    rows = total(samples, "measure_cache_hits_total") + total(samples, "measure_cache_misses_total")
    assert rows == sent * len(ROWS)


def test_a_killed_workers_gauges_leave_the_sum_while_its_counts_stay(
    doomed_workers: Service, doomed_dir: Path
) -> None:
    sent = post_until_both_workers_served(doomed_workers, doomed_dir)
    # Every worker writes its counts and gauges to its files each second; what a worker counted
    # after its last write dies with it.
    held = WORKERS * len(ROWS)
    eventually(lambda: total(scrape(doomed_workers), "measure_cache_entries") == held)
    eventually(lambda: sum(per_worker(doomed_dir, "histogram", REQUEST_COUNT, **MEASURE_OK)
                           .values()) == sent)
    victim = next(iter(per_worker(doomed_dir, "gauge_livesum", "measure_cache_entries")))

    os.kill(victim, signal.SIGKILL)

    eventually(lambda: not (doomed_dir / f"gauge_livesum_{victim}.db").exists())
    # The survivor holds the rows; the replacement worker starts empty.
    after = eventually(lambda: replaced(scrape(doomed_workers)))
    assert total(after, "measure_cache_entries") == len(ROWS)
    assert total(after, REQUEST_COUNT, **MEASURE_OK) == sent


def test_metrics_is_served_without_an_api_key(two_workers: Service) -> None:
    response = requests.get(f"{two_workers.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
