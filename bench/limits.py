"""Limits that hold whatever a client (or upstream) sends; figures 2, 3, 4, 7 and 8 of
``bench/LIMITS.md`` come from here.

One function per scenario; each returns a dict with its figure, target and verdict. What they
share (the service they start and the clients that post to it) is ``bench/limits_client.py``.

- ``padded_fields``   (2): 200 requests, each with ~1 MB of padding in one text field (every
  field in turn, and unknown field names and values): the worker's RSS grows by at most 5 MiB.
- ``cache_memory``    (3): a full cache of worst-case rows (longest fields, widest characters,
  weight 100) uses at most 1.5x the memory of a full cache of typical rows, same settings;
  also the measured bytes per cost unit.
- ``slow_bodies``     (4): connections that send their body one byte every 2 s, 50 of them
  open on one worker at once: each gets a JSON 408 and is closed within the body deadline,
  and ``/healthcheck`` asked on another connection meanwhile keeps its p99 under 50 ms.
- ``token_echo``      (7): an upstream that echoes our token at every offset of its error
  bodies and row errors (500, 429, 400, malformed 200, row error): no 4-character substring of
  the token in any log line or answer.
- ``hostile_bodies``  (8, in ``bench/hostile_bodies.py``): 1 MB hostile bodies (about 50
  kinds, by the class of work each targets) and 1 MB framed in small chunks; CPU time per
  request, in process and in a real gunicorn worker; every 4xx is JSON.

Processes run on free loopback ports and are stopped at the end. Run from the project root::

    .venv/bin/python bench/limits.py [--scenarios padded_fields,cache_memory] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile_bodies import hostile_bodies
from limits_client import (
    API_KEY,
    GOOD,
    MIB,
    NO_PARAMS,
    body_of,
    post,
    service,
)

from devtools import probes
from devtools.harness import LOOPBACK, Processes
from measure_service.fetcher import CachedAnswer
from measure_service.rows import (
    BYTES_PER_COST_UNIT,
    parse_body,
    validate_row,
)
from weighted_cache import Cache


def padded_rows(size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, row) with about ``size`` characters of padding in one place, each place in turn."""
    pad = " " * size
    for field in ("inventoryId", "utcDatetime", "country", "region", "channel", "deviceType",
                  "network"):
        base = {"country": "US", "region": "CA", "channel": "web", "deviceType": "pc",
                "network": "fixed"}.get(field, GOOD.get(field, ""))
        yield f"{field} value", {**GOOD, field: base + pad}
    yield "rowIdentifier value", {**GOOD, "rowIdentifier": "r" + pad}
    yield "unknown field name", {**GOOD, "x" + pad: 1}
    yield "unknown field value", {**GOOD, "adFormat": "banner" + pad}


# --- figure 2 ------------------------------------------------------------------------------

def padded_fields(procs: Processes, requests: int = 200, warmup: int = 30) -> dict[str, Any]:
    """Worker RSS across ``requests`` requests with ~1 MB of padding in one text field each."""
    sim = procs.simulator(latency_ms=5, jitter_ms=1)
    server, pid = service(procs, sim.url, WAIT_FOR_MISSING="true")
    kinds = list(padded_rows(MIB - 4096))
    statuses: dict[int, int] = {}
    invalid = 0

    def send(i: int) -> None:
        nonlocal invalid
        # A distinct length each time: a memo keyed on the raw value would keep every one.
        _, row = kinds[i % len(kinds)]
        row = {name: (value[:len(value) - i % 997] if isinstance(value, str) else value)
               for name, value in row.items()}
        status, _, answer = post(server, body_of(row))
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            invalid += json.loads(answer)["coverage"]["invalid"]

    for i in range(warmup):
        send(i)
    before = probes.rss_kib(pid)
    for i in range(warmup, warmup + requests):
        send(i)
    gc_pause = 0.5
    time.sleep(gc_pause)
    after = probes.rss_kib(pid)
    if before is None or after is None:
        raise RuntimeError(f"worker {pid} is gone")
    growth_mib = (after - before) / 1024
    return {
        "figure": f"RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB ({growth_mib:+.2f} MiB) "
                  f"over {requests} requests after {warmup} warm-up; statuses {statuses}, "
                  f"invalid rows {invalid}",
        "target": "growth <= 5 MiB", "passed": growth_mib <= 5.0,
        "kinds": [label for label, _ in kinds],
    }


# --- figure 3 ------------------------------------------------------------------------------

def typical_row(i: int) -> dict[str, Any]:
    return {"inventoryId": f"site{i}.example.com", "utcDatetime": "2024-10-30",
            "impressions": 1000, "country": "US", "channel": "web", "deviceType": "pc",
            "weight": 100}


def worst_row(i: int) -> dict[str, Any]:
    """Longest fields, 4-byte characters (CPython stores the whole string 4 bytes a char)."""
    return {"inventoryId": "\U0001f600" * 500 + f"{i:012d}",
            "utcDatetime": "2024-10-30T12:00:00.123456789Z", "impressions": 10**12 - i,
            "country": "us", "region": "\U0001f600" * 63 + chr(0x4e00 + i % 1000),
            "channel": "streaming-video", "deviceType": "smart-speaker", "network": "mobile",
            "weight": 100}


def fill(make: Callable[[int], dict[str, Any]], max_cost: int) -> dict[str, float]:
    """Fill a cache of ``max_cost`` with rows from ``make`` (as the service would store them,
    decoded from JSON) until it is full; traced bytes, entries and cost used."""
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    cache: Cache[Any, CachedAnswer] = Cache(max_cost)
    i = 0
    while cache.cost_used < max_cost * 0.999 and i < max_cost * 4:
        (raw,) = parse_body(body_of(make(i)), 1)
        row = validate_row(raw, NO_PARAMS)
        assert row.key is not None, row.error
        # The value as the fetcher builds it from upstream's parsed answer.
        value = json.loads('{"c": "modeled"}')["c"]
        cache.set(row.key, CachedAnswer(12.5 + i, value, None, float(i), row.cost), cost=row.cost)
        i += 1
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return {"bytes": used, "entries": len(cache), "cost_used": cache.cost_used}


def cache_memory(max_cost: int = 20_000) -> dict[str, Any]:
    """Figure 3: memory of a full cache of worst-case rows over one of typical rows."""
    typical = fill(typical_row, max_cost)
    worst = fill(worst_row, max_cost)
    ratio = worst["bytes"] / typical["bytes"]

    def per_unit(m: dict[str, float]) -> float:
        return m["bytes"] / m["cost_used"]

    return {
        "figure": f"max_cost {max_cost}: typical {typical['entries']} entries "
                  f"{typical['bytes'] / MIB:.2f} MiB ({per_unit(typical):.0f} B/unit), worst "
                  f"{worst['entries']} entries {worst['bytes'] / MIB:.2f} MiB "
                  f"({per_unit(worst):.0f} B/unit); ratio {ratio:.2f}; "
                  f"nominal unit {BYTES_PER_COST_UNIT} B",
        "target": "ratio <= 1.5", "passed": ratio <= 1.5,
        "typical": typical, "worst": worst,
    }


# --- figure 4 ------------------------------------------------------------------------------

def _drip(port: int, gap_s: float, out: dict[str, Any]) -> None:
    """Send a body one byte every ``gap_s``; record when the answer came and what it was."""
    sock = socket.create_connection((LOOPBACK, port), timeout=30)
    head = (f"POST /v2/measure HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {API_KEY}"
            "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    start = time.monotonic()
    sock.sendall(head)
    answer = b""
    sock.settimeout(gap_s)
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                with suppress(OSError):
                    sock.sendall(b" ")  # still within the body: one more byte
                continue
            if not chunk:
                break  # closed by the service
            answer += chunk
    except OSError:
        pass  # reset by the service after its answer
    finally:
        sock.close()
    out["closed_s"] = time.monotonic() - start
    status_line, _, rest = answer.partition(b"\r\n")
    out["status"] = int(status_line.split()[1]) if status_line.startswith(b"HTTP/") else 0
    out["json"] = b"application/json" in rest.partition(b"\r\n\r\n")[0].lower()


def slow_bodies(procs: Processes, connections: int = 50, gap_s: float = 2.0,
                deadline_ms: int = 5000) -> dict[str, Any]:
    """``connections`` slow bodies on one worker while /healthcheck is asked every 20 ms."""
    sim = procs.simulator(latency_ms=5, jitter_ms=1)
    server, _ = service(procs, sim.url, BODY_TIMEOUT_MS=str(deadline_ms))
    results: list[dict[str, Any]] = [{} for _ in range(connections)]
    drips = [threading.Thread(target=_drip, args=(server.port, gap_s, out), daemon=True)
             for out in results]
    for drip in drips:
        drip.start()
    probe = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
    latencies: list[float] = []
    health_errors = 0
    while any(drip.is_alive() for drip in drips):
        start = time.perf_counter()
        try:
            probe.request("GET", "/healthcheck")
            response = probe.getresponse()
            response.read()
            if response.status != 200:
                health_errors += 1
        except (OSError, http.client.HTTPException):
            health_errors += 1
            probe.close()
            probe = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
        latencies.append((time.perf_counter() - start) * 1000)
        time.sleep(0.02)
    probe.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    statuses = {r.get("status") for r in results}
    slowest = max(r["closed_s"] for r in results)
    # The deadline is enforced by a watcher that looks every tick; allow it one tick and the
    # time to write the answer.
    bound_s = deadline_ms / 1000 + 0.25
    passed = (statuses == {408} and all(r["json"] for r in results) and slowest <= bound_s
              and p99 < 50 and health_errors == 0)
    return {
        "figure": f"{connections} connections, one byte every {gap_s:g} s, deadline "
                  f"{deadline_ms} ms: statuses {sorted(statuses, key=str)}, all JSON "
                  f"{all(r['json'] for r in results)}, closed after "
                  f"{min(r['closed_s'] for r in results):.2f}-{slowest:.2f} s; /healthcheck "
                  f"p50 {latencies[len(latencies) // 2]:.1f} ms, p99 {p99:.1f} ms over "
                  f"{len(latencies)} probes, {health_errors} failed",
        "target": f"408 JSON, closed within {bound_s:.2f} s; /healthcheck p99 < 50 ms",
        "passed": passed,
    }


# --- figure 7 ------------------------------------------------------------------------------

TOKEN_ALPHABET = "JQXZKV"
FILLER_ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.:"


class _Echo(BaseHTTPRequestHandler):
    """Answers with the token at ``offset`` in a filler text, as chosen by the inventoryId
    ``<kind>-<offset>-<nonce>.com``: kinds 500, 429, 400, malformed, rowerror."""

    token = ""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        rows = json.loads(self.rfile.read(length))["rows"]
        kind, offset, _ = rows[0]["inventoryId"].split("-", 2)
        rng = random.Random(offset)
        filler = "".join(rng.choice(FILLER_ALPHABET) for _ in range(600))
        text = filler[:int(offset)] + self.token + filler[int(offset):]
        if kind == "rowerror":
            document = {"rows": [{"rowIdentifier": row["rowIdentifier"], "totalEmissions": None,
                                  "error": {"message": text}} for row in rows]}
            self._send(200, json.dumps(document).encode())
        elif kind == "malformed":
            self._send(200, text.encode())
        else:
            self._send(int(kind), json.dumps({"message": text}).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def echo_upstream(token: str) -> Iterator[str]:
    handler = type("Echo", (_Echo,), {"token": token})
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def token_echo(procs: Processes) -> dict[str, Any]:
    """Figure 7: the token echoed at every offset around the cuts never leaks 4 characters."""
    rng = random.Random(7)
    token = "".join(rng.choice(TOKEN_ALPHABET) for _ in range(48))
    grams = {token[i:i + 4] for i in range(len(token) - 3)}
    offsets = sorted({*range(0, 300, 7), *range(140, 262)})
    kinds = ("500", "429", "400", "malformed", "rowerror")
    answers: list[bytes] = []
    with echo_upstream(token) as url:
        full = {"API_KEYS": API_KEY, "SCOPE3_API_TOKEN": token, "SCOPE3_API_URL": url,
                "ACCESS_LOG": "on", "LOG_LEVEL": "DEBUG", "UPSTREAM_RETRIES": "0",
                "BREAKER_FAILURES": "1000000", "WAIT_FOR_MISSING": "true",
                "WAIT_WINDOW_MS": "2000"}
        server = procs.service(None, env=full, workers=1)
        for kind in kinds:
            for offset in offsets:
                row = {**GOOD, "inventoryId": f"{kind}-{offset}-{uuid.uuid4().hex[:8]}.com"}
                answers.append(post(server, body_of(row))[2])
        time.sleep(0.5)
        lines = server.log_path.read_text(errors="replace").splitlines()
    leaked_lines = [line for line in lines if any(g in line for g in grams)]
    leaked_answers = [a for a in answers if any(g.encode() in a for g in grams)]
    echoed = sum(1 for line in lines if "upstream_body" in line)
    return {
        "figure": f"{len(kinds)} kinds x {len(offsets)} offsets: {len(lines)} log lines "
                  f"({echoed} with an upstream body), {len(answers)} answers; lines with a "
                  f"4-char token substring: {len(leaked_lines)}, answers: {len(leaked_answers)}",
        "target": "0 and 0", "passed": not leaked_lines and not leaked_answers and echoed > 0,
        "examples": leaked_lines[:3],
    }


# Each scenario but cache_memory (one process, no servers) runs with its own processes.
SCENARIOS: dict[str, Callable[[Processes], dict[str, Any]]] = {
    "padded_fields": padded_fields, "slow_bodies": slow_bodies, "token_echo": token_echo,
    "hostile_bodies": hostile_bodies,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(["cache_memory", *SCENARIOS]))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    print(f"load average {os.getloadavg()}", flush=True)
    for name in args.scenarios.split(","):
        if name == "cache_memory":
            results[name] = cache_memory()
        else:
            with Processes() as procs:
                results[name] = SCENARIOS[name](procs)
        result = results[name]
        print(f"{'PASS' if result['passed'] else 'FAIL'} {name}: {result['figure']} "
              f"(target {result['target']})", flush=True)
        if name == "hostile_bodies":
            for body, row in result["bodies"].items():
                print(f"    {body:34s} {row['bytes'] / MIB:4.2f} MB  in process "
                      f"{row['in_process_ms']:5.1f} ms (old parse {row['reference_parse_ms']:5.1f}"
                      f")  worker {row['worker_ms']:5.1f} ms  {row['statuses']}  "
                      f"{row['outcome'][:44]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
