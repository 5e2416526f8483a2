"""The one door of POST /v2/measure, through real gunicorn: paths, codings and slow bodies."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import Processes, Service

pytestmark = pytest.mark.integration

BODY_TIMEOUT_MS = 300


@pytest.fixture(scope="module")
def service(module_processes: Processes) -> Service:
    return module_processes.service(
        module_processes.simulator(), env={"BODY_TIMEOUT_MS": str(BODY_TIMEOUT_MS)}
    )


def exchange(service: Service, head: bytes, body: bytes = b"", *, linger_s: float = 0.0) -> bytes:
    """Send a request head and (part of) a body, keep the connection open, read to its close."""
    url = urlsplit(service.url)
    auth = f"Authorization: Bearer {service.api_key}\r\n".encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + b"Host: t\r\n" + auth + b"Content-Type: application/json\r\n\r\n")
        sock.sendall(body)
        time.sleep(linger_s)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def parse(received: bytes) -> tuple[int, dict[str, str], object]:
    head, _, payload = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, json.loads(payload)


def test_a_doubled_slash_gets_a_json_404_not_a_redirect(service: Service) -> None:
    received = exchange(service, b"POST /v2//measure HTTP/1.1\r\nConnection: close\r\n", b"")
    status, headers, document = parse(received)
    assert (status, headers["content-type"]) == (404, "application/json")
    assert "location" not in headers and isinstance(document, dict) and document["error"]


def test_a_coding_before_chunked_gets_a_json_400(service: Service) -> None:
    head = b"POST /v2/measure HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n"
    status, headers, document = parse(exchange(service, head, b"2\r\n{}\r\n0\r\n\r\n"))
    assert (status, headers["content-type"]) == (400, "application/json")
    assert isinstance(document, dict) and "Transfer-Encoding" in document["error"]


def test_a_body_that_stalls_gets_408_and_the_connection_is_closed(service: Service) -> None:
    # Keep-alive is asked for: the server closes the connection anyway, which ends the read.
    head = b"POST /v2/measure HTTP/1.1\r\nContent-Length: 100\r\n"
    started = time.monotonic()
    status, headers, document = parse(exchange(service, head, b'{"rows"'))
    assert (status, headers["connection"]) == (408, "close")
    assert isinstance(document, dict) and document["error"]
    assert time.monotonic() - started < 5


def test_a_chunked_body_that_trickles_past_the_deadline_gets_408(service: Service) -> None:
    head = b"POST /v2/measure HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    status, _, _ = parse(exchange(service, head, b"2\r\n{\"\r\n"))
    assert status == 408


def test_a_slow_but_timely_body_is_answered(service: Service) -> None:
    body = b'{"rows": [{"inventoryId": "door.example", "utcDatetime": "2024-10-30"}]}'
    head = b"POST /v2/measure HTTP/1.1\r\nConnection: close\r\nContent-Length: %d\r\n" % len(body)
    url = urlsplit(service.url)
    auth = f"Authorization: Bearer {service.api_key}\r\n".encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head + b"Host: t\r\n" + auth + b"Content-Type: application/json\r\n\r\n")
        sock.sendall(body[:10])
        time.sleep(BODY_TIMEOUT_MS / 3000)
        sock.sendall(body[10:])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert parse(received)[0] == 200
