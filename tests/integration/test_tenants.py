"""One client cannot hurt another: poisoned rows and floods, against real gunicorn + simulator.

One gevent worker, client keys A and one B per poison kind (a B whose rows spoiled a batch has
its rows batched apart for a minute: each kind needs a B that shares A's batches), misses
gathered for 100 ms so that A's and B's rows share upstream batches, and a simulator in which a
row whose inventoryId contains ``poison<kind>`` spoils the request it is in, in that kind's way
(see ``devtools.simulator``). Upstream's read timeout is 1.5 s, so that a hang is judged fast.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from devtools.probes import metric_total
from tests.conftest import Processes, Service, Simulator

pytestmark = pytest.mark.integration

KEY_A = "key-a"
KEY_B = "key-b"
# Each kind, and what B's poisoned row may get: its error (cached, when upstream was seen
# answering other requests meanwhile; else the fetch just failed), its late answer, or nothing.
FAILED = {"error", "unavailable"}
KINDS = {"5xx": FAILED, "400": {"error"}, "hang": FAILED, "reset": FAILED,
         "malformed": FAILED, "row_error": {"error"}, "slow": {"fetched"},
         "short": {"unavailable"}, "identity": {"unavailable"}}
B_KEYS = [f"key-b-{kind}" for kind in KINDS]


@pytest.fixture(scope="module")
def poisoning_simulator(module_processes: Processes) -> Simulator:
    flags = [arg for kind in KINDS
             for arg in (f"--poison-{kind.replace('_', '-')}", f"poison{kind.replace('_', '')}")]
    return module_processes.simulator(*flags, "--poison-slow-ms", "700", latency_ms=20)


@pytest.fixture(scope="module")
def shared(module_processes: Processes, poisoning_simulator: Simulator) -> Service:
    return module_processes.service(poisoning_simulator, env={
        "API_KEYS": ",".join([KEY_A, KEY_B, *B_KEYS]), "UPSTREAM_BATCH_WINDOW_MS": "100",
        "WAIT_WINDOW_MS": "3000", "UPSTREAM_TIMEOUT_MS": "1500",
    })


def post(service: Service, key: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = requests.post(
        f"{service.url}/v2/measure", json={"rows": rows},
        headers={"Authorization": f"Bearer {key}", "Connection": "close"}, timeout=15,
    )
    assert response.status_code == 200
    answered: list[dict[str, Any]] = response.json()["rows"]
    return answered


def new_rows(prefix: str, count: int) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    return [{"inventoryId": f"{prefix}-{run}-{i}.example", "utcDatetime": "2024-10-30",
             "rowIdentifier": str(i)} for i in range(count)]


def together(service: Service, *requests_: tuple[str, list[dict[str, Any]]]) -> list[Any]:
    with ThreadPoolExecutor(len(requests_)) as pool:
        futures = [pool.submit(post, service, key, rows) for key, rows in requests_]
        return [future.result() for future in futures]


def breaker_openings(service: Service) -> float:
    return metric_total(service.metrics(), "measure_upstream_breaker_transitions_total",
                        to="open")


@pytest.mark.parametrize("marker", ["poison5xx", "poison400"])
def test_a_poisoned_row_costs_the_client_sharing_its_batch_none_of_its_answers(
    shared: Service, marker: str
) -> None:
    post(shared, KEY_A, new_rows("warm", 1))  # upstream is seen answering
    ours, theirs = new_rows("a", 3), new_rows(marker, 1)
    a_answer, b_answer = together(shared, (KEY_A, ours), (KEY_B, theirs))
    assert [row["status"] for row in a_answer] == ["fetched"] * 3
    assert [row["status"] for row in b_answer] == ["error"]
    assert [row["status"] for row in post(shared, KEY_A, ours)] == ["hit"] * 3
    assert [row["status"] for row in post(shared, KEY_B, theirs)] == ["error"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_row_spoiling_its_batch_in_any_way_costs_the_client_sharing_it_none_of_its_answers(
    shared: Service, kind: str
) -> None:
    post(shared, KEY_A, new_rows("warm", 1))  # upstream is seen answering
    ours, theirs = new_rows("a", 3), new_rows(f"poison{kind.replace('_', '')}", 1)
    a_answer, b_answer = together(shared, (KEY_A, ours), (f"key-b-{kind}", theirs))
    assert [row["status"] for row in a_answer] == ["fetched"] * 3
    assert len(b_answer) == 1 and b_answer[0]["status"] in KINDS[kind]
    assert [row["status"] for row in post(shared, KEY_A, ours)] == ["hit"] * 3
    again = post(shared, f"key-b-{kind}", theirs)[0]["status"]
    assert again in KINDS[kind] | {"hit"} and (again == "hit") == ("fetched" in KINDS[kind])
    assert breaker_openings(shared) == 0


def test_poisoned_rows_never_open_the_breaker(shared: Service) -> None:
    for marker in ("poison5xx", "poison400") * 4:
        together(shared, (KEY_A, new_rows("a", 2)), (KEY_B, new_rows(marker, 1)))
    assert breaker_openings(shared) == 0


def test_a_key_over_its_pending_share_gets_unavailable_with_a_reason_and_the_other_key_not(
    processes: Processes,
) -> None:
    slow = processes.simulator(latency_ms=1000)
    service = processes.service(slow, env={
        "API_KEYS": f"{KEY_A},{KEY_B}", "MAX_PENDING_ROWS": "20", "WAIT_FOR_MISSING": "false",
    })
    flood = post(service, KEY_B, new_rows("b", 50))
    ours = post(service, KEY_A, new_rows("a", 5))
    refused = [row for row in flood if row["status"] == "unavailable"]
    assert len(refused) == 40 and {row["reason"] for row in refused} == {"tenant_pending_share"}
    assert [row["status"] for row in ours] == ["pending"] * 5
