"""What the limits benchmarks share: one service worker in front of an upstream, and clients
that post a body to it as given, whole or framed in chunks."""

from __future__ import annotations

import http.client
import json
import socket
from contextlib import suppress
from typing import Any

from devtools.harness import LOOPBACK, Processes, Server
from measure_service.rows import QueryParams

API_KEY = "limits-key"
MIB = 1 << 20
GOOD = {"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30"}
NO_PARAMS = QueryParams(None, None)


def post(server: Server, body: bytes, timeout: float = 30.0) -> tuple[int, str, bytes]:
    """POST ``body`` to /v2/measure; (status, content type, body)."""
    conn = http.client.HTTPConnection(LOOPBACK, server.port, timeout=timeout)
    try:
        conn.request("POST", "/v2/measure", body=body, headers={
            "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def post_chunked(server: Server, body: bytes, chunk: int, timeout: float = 30.0) -> int:
    """POST ``body`` to /v2/measure in chunks of ``chunk`` bytes; the status."""
    head = (f"POST /v2/measure HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {API_KEY}"
            "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()
    framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk])
                      for i in range(0, len(body), chunk))
    with socket.create_connection((LOOPBACK, server.port), timeout=timeout) as sock:
        with suppress(OSError):  # the server may answer and close before reading it all
            sock.sendall(head + framed + b"0\r\n\r\n")
        answer = b""
        with suppress(OSError):
            while chunk_in := sock.recv(65536):
                answer += chunk_in
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def service(procs: Processes, upstream_url: str, **env: str) -> tuple[Server, int]:
    """One gunicorn worker in front of ``upstream_url``; (server, worker pid)."""
    full = {"API_KEYS": API_KEY, "SCOPE3_API_TOKEN": "limits-token", "SCOPE3_API_URL":
            upstream_url, "ACCESS_LOG": "off", "LOG_LEVEL": "WARNING", **env}
    server = procs.service(None, env=full, workers=1)
    (pid,) = server.child_pids()
    return server, pid


def body_of(*rows: Any) -> bytes:
    return json.dumps({"rows": list(rows)}).encode()
