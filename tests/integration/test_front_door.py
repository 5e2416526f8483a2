"""The one door of POST /v2/measure, through real gunicorn: paths, codings and slow bodies."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import Processes, Service
from tests.integration.raw_http import Raw

pytestmark = pytest.mark.integration

BODY_TIMEOUT_MS = 300
ONE_ROW = b'{"rows": [{"inventoryId": "door.example", "utcDatetime": "2024-10-30"}]}'


@pytest.fixture(scope="module")
def service(module_processes: Processes) -> Service:
    return module_processes.service(
        module_processes.simulator(), env={"BODY_TIMEOUT_MS": str(BODY_TIMEOUT_MS)}
    )


def test_a_doubled_slash_gets_a_json_404_not_a_redirect(service: Service) -> None:
    status, headers, payload = Raw(service).measure(b"", ONE_ROW, path=b"/v2//measure")
    assert (status, headers["content-type"]) == (404, "application/json")
    assert "location" not in headers and json.loads(payload)["error"]


def test_a_coding_before_chunked_gets_a_json_400(service: Service) -> None:
    status, headers, payload = Raw(service).measure(
        b"Transfer-Encoding: gzip, chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"
    )
    assert (status, headers["content-type"]) == (400, "application/json")
    assert "Transfer-Encoding" in json.loads(payload)["error"]


def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(service: Service) -> None:
    # The client does not ask to close: the read ends only because the server closes.
    started = time.monotonic()
    status, headers, payload = Raw(service).measure(
        b"Content-Length: 100\r\n", b'{"rows"', close=False
    )
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(payload)["error"]
    assert time.monotonic() - started < 5


def test_a_chunked_body_that_trickles_past_the_deadline_gets_408(service: Service) -> None:
    status, _, _ = Raw(service).measure(b"Transfer-Encoding: chunked\r\n", b'2\r\n{"\r\n')
    assert status == 408


def test_a_slow_but_timely_body_is_answered(service: Service) -> None:
    raw = Raw(service)
    head = (b"POST /v2/measure HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + raw.auth
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ONE_ROW))
    with socket.create_connection(raw.address, timeout=10) as sock:
        sock.sendall(head + ONE_ROW[:10])
        time.sleep(BODY_TIMEOUT_MS / 3000)
        sock.sendall(ONE_ROW[10:])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
