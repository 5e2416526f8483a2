"""The upstream token never leaves the service: no log line, no response body, no header.

Two real gunicorn services (DEBUG logs, so every log call site is live) run every path with a
known token:

- against the simulator (which checks the token): hits, misses, row errors, bad input, bad
  client keys, probes, and upstream 500, 429, malformed JSON, hang (timeout), reset and slow body;
- against an echoing upstream (in this process, on loopback) that puts the Authorization header it
  received into everything it answers: 401, 500, 429 and malformed bodies, and row error messages.

Client API keys are compared in constant time (``hmac.compare_digest``), against every key.
"""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from measure_service import api
from measure_service.app import close_app, create_app
from measure_service.config import Config
from tests.conftest import Processes, Service
from tests.measure_service.conftest import FakeUpstream

TOKEN = f"upstream-secret-{uuid.uuid4().hex}"
KEYS = ("client-one", "client-two", "client-three")
AS_THIRD_KEY = {"Authorization": f"Bearer {KEYS[2]}"}
# Everything that makes every log call site live, and keeps each failure a single attempt.
ENV = {
    "SCOPE3_API_TOKEN": TOKEN, "API_KEYS": ",".join(KEYS), "LOG_LEVEL": "DEBUG",
    "ACCESS_LOG": "on", "UPSTREAM_TIMEOUT_MS": "400", "UPSTREAM_CONNECT_TIMEOUT_MS": "400",
    "UPSTREAM_RETRIES": "0", "BREAKER_FAILURES": "1000", "WAIT_WINDOW_MS": "1500",
}
FAULTS = ("500", "429", "malformed", "hang", "reset", "slow_body")
ECHOED = ("401", "500", "429", "malformed", "badrow", "rowerror")


def cold(prefix: str = "") -> dict[str, Any]:
    return {"inventoryId": f"{prefix}{uuid.uuid4().hex[:10]}.com", "utcDatetime": "2024-10-30"}


class EchoHandler(BaseHTTPRequestHandler):
    """An upstream that answers with the Authorization header it got, chosen by the row's name.

    The first row's inventoryId starts with the answer: ``401-``, ``500-``, ``429-``,
    ``malformed-``, ``badrow-`` (a row whose totalEmissions is the header), ``rowerror-``
    (a row error whose message is the header); anything else gets a normal answer.
    """

    received: list[str] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        rows = json.loads(self.rfile.read(length))["rows"]
        secret = self.headers.get("Authorization", "")
        self.received.append(secret)
        kind = rows[0]["inventoryId"].split("-", 1)[0]
        status, body = 200, {
            "rows": [{"rowIdentifier": r["rowIdentifier"], "totalEmissions": 1.0} for r in rows]
        }
        if kind in ("401", "500", "429"):
            status, body = int(kind), {"message": f"refused {secret}"}
        elif kind == "badrow":
            body = {"rows": [{"rowIdentifier": r["rowIdentifier"], "totalEmissions": secret}
                             for r in rows]}
        elif kind == "rowerror":
            body = {"rows": [{"rowIdentifier": r["rowIdentifier"],
                              "error": {"message": f"bad row, token {secret}"}} for r in rows]}
        payload = (f"<html>{secret}</html>" if kind == "malformed" else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the service's logs, not this server's."""


@dataclass
class Exercised:
    """What running every path produced: the services' logs and every response."""

    services: list[Service]
    responses: list[requests.Response] = field(default_factory=list)

    def log_text(self) -> str:
        return "".join(s.log_path.read_text(errors="replace") for s in self.services)

    def messages(self) -> set[str]:
        return {str(line.get("message")) for s in self.services for line in s.log_lines()}


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(service: Service, rows: list[Any], key: str | None = KEYS[0]) -> requests.Response:
    return service.post(rows, headers={"Authorization": f"Bearer {key}" if key else None})


def run_client_paths(service: Service, out: list[requests.Response]) -> None:
    """Hits, misses, row errors, bad input, bad keys and the probes."""
    row = cold()
    out += [post(service, [row]), post(service, [row])]
    unknown = {"inventoryId": f"nodot{uuid.uuid4().hex}", "utcDatetime": "20241030"}
    out.append(post(service, [unknown]))
    out += [post(service, [{"inventoryId": 5}]), post(service, [], key=KEYS[1])]
    for key in (None, "wrong", TOKEN, f"{TOKEN} "):
        out.append(post(service, [cold()], key=key))
    out.append(service.post_body(b"{bad", headers=AS_THIRD_KEY))
    out.append(service.post_body(b"x" * (1024 * 1024 + 1), headers=AS_THIRD_KEY))
    out.append(service.post_body(b"rows", "text/plain", headers=AS_THIRD_KEY))
    out += probes(service)


def probes(service: Service) -> list[requests.Response]:
    return [requests.get(f"{service.url}{path}", timeout=10)
            for path in ("/healthcheck", "/readyz", "/metrics", "/openapi.json")]


@pytest.fixture(scope="module")
def exercised(module_processes: Processes, echo_upstream: str) -> Exercised:
    simulator = module_processes.simulator(token=TOKEN)
    served = module_processes.service(simulator, env=ENV)
    echoed = module_processes.service(None, env={**ENV, "SCOPE3_API_URL": echo_upstream})
    result = Exercised([served, echoed])
    run_client_paths(served, result.responses)
    for mode in FAULTS:
        simulator.control(mode=mode)
        result.responses.append(post(served, [cold()]))
        # The fetch has failed (timeout, reset, ...) once the window is over; then move on.
        simulator.reset()
    for kind in ECHOED:
        result.responses.append(post(echoed, [cold(f"{kind}-")]))
    result.responses += probes(echoed)  # /readyz explains the 401
    result.responses.append(post(echoed, [cold()]))
    return result


def test_every_upstream_outcome_and_log_call_site_was_exercised(exercised: Exercised) -> None:
    outcomes = {
        str(line.get("upstream_outcome"))
        for s in exercised.services for line in s.log_lines()
    }
    assert {"ok", "row_error", "http_4xx", "http_429", "http_5xx", "timeout", "malformed",
            "connection_error"} <= outcomes
    assert {"upstream answered", "upstream batch fetched", "request handled",
            "upstream refused the API token; check SCOPE3_API_TOKEN"} <= exercised.messages()
    assert any(m.startswith("upstream request failed") for m in exercised.messages())
    assert any(m.startswith("upstream batch failed") for m in exercised.messages())


def test_the_echoing_upstream_received_the_token_on_every_path(exercised: Exercised) -> None:
    # Without this, the echo paths could not show a leak.
    assert EchoHandler.received == [f"Bearer {TOKEN}"] * (len(ECHOED) + 1)


def test_the_token_is_in_no_log_line(exercised: Exercised) -> None:
    leaks = [line for line in exercised.log_text().splitlines() if TOKEN in line]
    assert leaks == []


def test_the_token_is_in_no_response_body(exercised: Exercised) -> None:
    leaks = [r.url for r in exercised.responses if TOKEN.encode() in r.content]
    assert leaks == []


def test_the_token_is_in_no_response_header(exercised: Exercised) -> None:
    leaks = [
        (r.url, name) for r in exercised.responses for name, value in r.headers.items()
        if TOKEN in value or TOKEN in name
    ]
    assert leaks == []


def test_the_upstream_token_is_not_accepted_as_a_client_key(exercised: Exercised) -> None:
    refused = [r for r in exercised.responses if r.status_code == 401]
    assert len(refused) == 4


# --- constant-time key comparison, in process ---------------------------------------------------


@pytest.fixture
def app() -> Iterator[Flask]:
    application = create_app(Config(api_keys=KEYS, scope3_api_token=TOKEN),
                             upstream=FakeUpstream())
    yield application
    close_app(application)


@pytest.mark.parametrize("presented", ["client-one", "client-three", "wrong", TOKEN])
def test_the_presented_key_is_compared_with_every_key_in_constant_time(
    app: Flask, monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare_digest = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(api.hmac, "compare_digest", compare_digest)
    app.test_client().post("/v2/measure", json={"rows": [cold()]},
                           headers={"Authorization": f"Bearer {presented}"})
    # Every key, even after a match: no early exit whose timing tells which key matched.
    assert set(compared) == {(presented.encode(), key.encode()) for key in KEYS}


def test_gunicorns_printed_config_holds_no_token(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    # Its own metrics directory: the master would write into this process's otherwise.
    env = {**os.environ, "SCOPE3_API_TOKEN": TOKEN, "API_KEYS": ",".join(KEYS),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    printed = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--print-config",
         "measure_service.wsgi:app"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert "logconfig_dict" in printed.stdout
    assert TOKEN not in printed.stdout + printed.stderr
