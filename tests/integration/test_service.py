"""The service end to end: real gunicorn with gevent workers in front of the real simulator."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Processes, Service, Simulator, StartError, eventually

pytestmark = pytest.mark.integration

WAIT_WINDOW_S = 0.25  # SERVICE_ENV's WAIT_WINDOW_MS
SLOW_UPSTREAM_MS = 1000


def cold(**fields: Any) -> dict[str, Any]:
    """A row no earlier test has asked for."""
    return {"inventoryId": f"{uuid.uuid4().hex[:12]}.com", "utcDatetime": "2024-10-30", **fields}



@pytest.fixture
def slow_simulator(simulator: Simulator) -> Iterator[Simulator]:
    """The module's simulator answering far slower than the wait window, for one test."""
    simulator.control(latency_ms=SLOW_UPSTREAM_MS, jitter_ms=0)
    yield simulator
    simulator.reset()


def test_a_cold_row_is_fetched_within_the_window_then_a_hit(
    service: Service, simulator: Simulator
) -> None:
    row = cold()
    first = service.post([row]).json()["rows"][0]
    second = service.post([row]).json()["rows"][0]
    assert (first["status"], second["status"]) == ("fetched", "hit")
    assert first["totalEmissions"] == second["totalEmissions"] > 0


def test_with_a_slow_upstream_the_row_is_pending_and_the_answer_does_not_wait(
    service: Service, slow_simulator: Simulator
) -> None:
    row = cold()
    started = time.monotonic()
    response = service.post([row])
    elapsed = time.monotonic() - started
    assert response.json()["rows"][0]["status"] == "pending"
    # Loose on purpose: the point is that it returned at the window, not with the upstream.
    assert elapsed < WAIT_WINDOW_S + 0.3
    assert eventually(lambda: service.post([row]).json()["rows"][0]["status"] == "hit")


def test_rows_keep_request_order_whatever_their_status(service: Service) -> None:
    warm = cold()
    service.post([warm])
    rows = [cold(rowIdentifier="a"), {**warm, "rowIdentifier": "b"}, {"rowIdentifier": "c"},
            cold(rowIdentifier="d", inventoryId="nodot"), cold(rowIdentifier="e")]
    body = service.post(rows).json()
    assert [r["rowIdentifier"] for r in body["rows"]] == ["a", "b", "c", "d", "e"]
    assert [r["status"] for r in body["rows"]] == ["fetched", "hit", "invalid", "error", "fetched"]


def test_a_request_without_the_api_key_gets_401(service: Service) -> None:
    response = service.post_body(b'{"rows": []}', headers={"Authorization": None})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_malformed_json_gets_400(service: Service) -> None:
    response = service.post_body(b"{nope")
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_a_body_over_one_mebibyte_gets_413(service: Service) -> None:
    assert service.post_body(b"x" * (1024 * 1024 + 1)).status_code == 413


def test_a_chunked_body_over_the_limit_gets_413(service: Service) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    assert service.post_body(chunks()).status_code == 413


def test_a_chunked_body_within_the_limit_is_served(service: Service) -> None:
    body = json.dumps({"rows": [cold()]}).encode()
    response = service.post_body(iter([body[:10], body[10:]]))
    assert response.status_code == 200
    assert response.json()["rows"][0]["status"] == "fetched"


def test_a_non_json_content_type_gets_415(service: Service) -> None:
    assert service.post_body(b"rows=1", "text/plain").status_code == 415


def test_the_trace_id_is_on_the_log_line_of_the_background_fetch(
    service: Service, slow_simulator: Simulator
) -> None:
    trace_id = f"it-{uuid.uuid4().hex}"
    response = service.post([cold()], headers={"X-Trace-Id": trace_id})
    assert response.headers["X-Trace-Id"] == trace_id
    assert response.json()["requestId"] == trace_id

    def fetch_line() -> list[dict[str, Any]]:
        return [
            line for line in service.log_lines()
            if line.get("message") == "upstream batch fetched" and line.get("trace_id") == trace_id
        ]

    assert eventually(fetch_line)


def test_the_access_log_line_carries_the_trace_id_and_counts(service: Service) -> None:
    trace_id = f"it-{uuid.uuid4().hex}"
    service.post([cold(), cold()], headers={"X-Trace-Id": trace_id})

    def access_line() -> list[dict[str, Any]]:
        return [
            line for line in service.log_lines()
            if line.get("trace_id") == trace_id and line.get("path") == "/v2/measure"
        ]

    line = eventually(access_line)[0]
    assert (line["method"], line["status"], line["rows"], line["misses"]) == ("POST", 200, 2, 2)


def test_healthcheck_and_readyz_answer(service: Service) -> None:
    assert service.get("/healthcheck").json()["status"] == "ok"
    assert service.get("/readyz").status_code == 200


def test_readyz_turns_503_when_upstream_refuses_our_token(processes: Processes) -> None:
    simulator = processes.simulator(token="the-right-token")
    service = processes.service(simulator, env={"SCOPE3_API_TOKEN": "a-wrong-token"})
    service.post([cold()])
    response = eventually(lambda: [r for r in [service.get("/readyz")] if r.status_code == 503])
    assert "token" in response[0].json()["reason"]
    assert "a-wrong-token" not in service.log_path.read_text()


def test_the_service_refuses_to_start_without_api_keys(processes: Processes) -> None:
    with pytest.raises(StartError, match="API_KEYS"):
        processes.service(None, env={"API_KEYS": ""})
