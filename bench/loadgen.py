"""A small gevent HTTP/1.1 load generator, for when ``wrk`` is not installed.

Two modes:

* closed loop (:func:`run_closed`): N keep-alive connections, each sending its next request as
  soon as the last answer arrives. This finds saturation throughput.
* open loop (:func:`run_open`): requests are due at a fixed rate, ``start + i / rate``, whatever
  the server does. Latency is measured from the time a request was *due*, not from when a
  connection got free to send it, so a server that stalls is charged for every request it
  delayed (no coordinated omission, as in wrk2).

Every attempt is accounted for: answered (2xx or not) or failed (connect, I/O, timeout,
protocol). Command line::

    python bench/loadgen.py http://127.0.0.1:3000/v2/measure --body-file body.json \\
        -H 'Authorization: Bearer k' -c 64 -d 10 [--rate 2000] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.socket

ERROR_KINDS = ("connect", "io", "timeout", "protocol")
# A send counts as late when it leaves this long after it was due: the generator (or its
# connection pool) could not keep up, so the offered rate was not really offered.
LATE_SEND_S = 0.002
_RECV_BYTES = 65536


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x that this client understands."""


@dataclass(frozen=True)
class Target:
    """What to send: one request, or a body template where ``{seq}`` becomes a request number."""

    host: str
    port: int
    path: str = "/"
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    body_template: str | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Target:
        """Build a target from an ``http://host:port/path`` URL."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url must be http://host[:port]/path, got {url!r}")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(host=parts.hostname, port=parts.port or 80, path=path, **kwargs)

    def requests(self) -> Iterator[bytes]:
        """Yield the raw bytes of each request, in order, forever."""
        if self.body_template is None:
            fixed = self._encode(self.body)
            while True:
                yield fixed
        pieces = self.body_template.split("{seq}")
        for seq in itertools.count():
            yield self._encode(str(seq).join(pieces).encode())

    def _encode(self, body: bytes) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        if body or self.method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Result:
    """What one run did. Latencies are seconds, one per answered request."""

    mode: str
    connections: int
    duration_s: float
    requests: int = 0
    non_2xx: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    offered_rate: float | None = None
    late_sends: int = 0
    tallies: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    started: int = 0

    @property
    def in_flight(self) -> int:
        """Requests sent and neither answered nor failed yet (read it mid-run)."""
        return self.started - self.requests - sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Answered requests per second of run time."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The result as plain JSON-ready numbers (latencies in milliseconds)."""
        ordered = sorted(self.latencies_s)
        return {
            "mode": self.mode,
            "connections": self.connections,
            "duration_s": round(self.duration_s, 3),
            "offered_rate": self.offered_rate,
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "non_2xx": self.non_2xx,
            "errors": {kind: self.errors[kind] for kind in ERROR_KINDS},
            "late_sends": self.late_sends,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "latency_ms": {
                f"p{q:g}": round(percentile(ordered, q) * 1000, 3) for q in (50, 90, 99, 99.9)
            },
            "tallies": dict(self.tallies),
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile of an ascending sequence (0.0 when it is empty)."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without float error on exact ranks
    return ordered[int(rank) - 1]


class _Connection:
    """One keep-alive HTTP/1.1 connection that reconnects after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._sock: gevent.socket.socket | None = None
        self._buffer = bytearray()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buffer.clear()

    def exchange(self, raw_request: bytes) -> tuple[int, bytes]:
        """Send one request and return the answer's status and body."""
        if self._sock is None:
            try:
                self._sock = gevent.socket.create_connection(self._address)
            except OSError as exc:
                raise ConnectionRefusedError(str(exc)) from exc
            self._sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        self._sock.sendall(raw_request)
        status, headers, keep_alive = self._read_head()
        if "transfer-encoding" in headers and "chunked" in headers["transfer-encoding"]:
            body = self._read_chunked()
        elif "content-length" in headers:
            body = self._read_exactly(int(headers["content-length"]))
        else:
            body = self._read_to_close()
            keep_alive = False
        if not keep_alive:
            self.close()
        return status, body

    def _recv(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(_RECV_BYTES)
        if not chunk:
            raise ConnectionResetError("server closed the connection mid-answer")
        self._buffer += chunk

    def _read_head(self) -> tuple[int, dict[str, str], bool]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._recv()
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
            raise ProtocolError(f"bad status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        connection = headers.get("connection", "")
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        return int(rest[:3]), headers, keep_alive

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._recv()
        body = bytes(self._buffer[:size])
        del self._buffer[:size]
        return body

    def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            self._recv()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self._read_line().split(b";")[0], 16)
            if size == 0:
                while self._read_line():  # trailers end with an empty line
                    pass
                return bytes(body)
            body += self._read_exactly(size)
            self._read_line()

    def _read_to_close(self) -> bytes:
        assert self._sock is not None
        while chunk := self._sock.recv(_RECV_BYTES):
            self._buffer += chunk
        body = bytes(self._buffer)
        self._buffer.clear()
        return body


class _Run:
    """Shared state of one run: the request stream, the counters and the tally pattern."""

    def __init__(self, target: Target, result: Result, timeout_s: float,
                 tally: str | None) -> None:
        self.target = target
        self.result = result
        self.timeout_s = timeout_s
        self.tally = re.compile(tally.encode()) if tally else None
        self._requests = target.requests()

    def attempt(self, conn: _Connection, started: float) -> None:
        """Send the next request on ``conn``; charge its latency from ``started``."""
        result = self.result
        raw = next(self._requests)
        result.started += 1
        try:
            with gevent.Timeout(self.timeout_s):
                status, body = conn.exchange(raw)
        except gevent.Timeout:
            self._fail(conn, "timeout")
        except ConnectionRefusedError:
            self._fail(conn, "connect")
        except ProtocolError:
            self._fail(conn, "protocol")
        except OSError:
            self._fail(conn, "io")
        else:
            result.latencies_s.append(time.perf_counter() - started)
            result.requests += 1
            result.statuses[status] += 1
            if not 200 <= status < 300:
                result.non_2xx += 1
            elif self.tally is not None:
                result.tallies.update(m.decode() for m in self.tally.findall(body))

    def _fail(self, conn: _Connection, kind: str) -> None:
        conn.close()
        self.result.errors[kind] += 1
        # Without a pause a refused connection would spin this greenlet at full CPU.
        gevent.sleep(0.01)


def run_closed(target: Target, *, connections: int, duration_s: float,
               max_requests: int | None = None, timeout_s: float = 10.0,
               tally: str | None = None, stop: gevent.event.Event | None = None,
               result: Result | None = None) -> Result:
    """Saturate ``target`` from ``connections`` connections for ``duration_s`` seconds.

    ``max_requests`` stops the run after that many attempts; ``tally`` is a regex with one
    group, whose matches in 2xx bodies are counted (for example each row's status). Once
    ``stop`` is set no new request is sent, and the run ends when those in flight are done.
    A ``result`` passed in is filled as the run goes, so another greenlet can read it mid-run.
    """
    _check_positive(connections=connections, duration_s=duration_s, timeout_s=timeout_s)
    if result is None:
        result = Result(mode="closed", connections=connections, duration_s=0.0)
    run = _Run(target, result, timeout_s, tally)
    tickets = itertools.count() if max_requests is None else iter(range(max_requests))
    start = time.perf_counter()
    deadline = start + duration_s

    def client() -> None:
        conn = _Connection(target.host, target.port)
        try:
            for _ in tickets:
                now = time.perf_counter()
                if now >= deadline or (stop is not None and stop.is_set()):
                    return
                run.attempt(conn, now)
        finally:
            conn.close()

    gevent.joinall([gevent.spawn(client) for _ in range(connections)])
    result.duration_s = time.perf_counter() - start
    return result


def run_open(target: Target, *, rate: float, duration_s: float, connections: int,
             max_requests: int | None = None, timeout_s: float = 10.0,
             tally: str | None = None, stop: gevent.event.Event | None = None) -> Result:
    """Offer ``rate`` requests per second for ``duration_s`` seconds, whatever the server does.

    Request ``i`` is due at ``start + i / rate``; its latency runs from then. ``connections``
    bounds the requests in flight: when all are busy, due requests queue and that wait counts.
    Once ``stop`` is set no new request is sent.
    """
    _check_positive(rate=rate, connections=connections, duration_s=duration_s,
                    timeout_s=timeout_s)
    total = int(rate * duration_s)
    if max_requests is not None:
        total = min(total, max_requests)
    result = Result(mode="open", connections=connections, duration_s=0.0, offered_rate=rate)
    run = _Run(target, result, timeout_s, tally)
    tickets = iter(range(total))
    start = time.perf_counter()

    def client() -> None:
        conn = _Connection(target.host, target.port)
        try:
            for i in tickets:
                due = start + i / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    gevent.sleep(wait)
                elif -wait > LATE_SEND_S:
                    result.late_sends += 1
                if stop is not None and stop.is_set():
                    return
                run.attempt(conn, due)
        finally:
            conn.close()

    gevent.joinall([gevent.spawn(client) for _ in range(connections)])
    result.duration_s = time.perf_counter() - start
    return result


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="http://host:port/path")
    parser.add_argument("-X", "--method", default="POST")
    parser.add_argument("-H", "--header", action="append", default=[],
                        help="'Name: value', repeatable")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", default="", help="request body")
    body.add_argument("--body-file", help="read the request body from this file")
    body.add_argument("--body-template-file",
                      help="body file in which each '{seq}' becomes the request number")
    parser.add_argument("-c", "--connections", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--rate", type=float,
                        help="open loop: requests per second (default: closed loop)")
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--tally", help="regex with one group counted in 2xx bodies")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; print a summary."""
    args = _parse_args(argv)
    headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            raise SystemExit(f"--header must be 'Name: value', got {header!r}")
        headers[name.strip()] = value.strip()
    headers.setdefault("Content-Type", "application/json")
    template = None
    body = args.body.encode()
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    if args.body_template_file:
        with open(args.body_template_file) as f:
            template = f.read()
    target = Target.from_url(args.url, method=args.method, headers=headers, body=body,
                             body_template=template)
    common = {"duration_s": args.duration, "connections": args.connections,
              "max_requests": args.max_requests, "timeout_s": args.timeout, "tally": args.tally}
    if args.rate:
        result = run_open(target, rate=args.rate, **common)
    else:
        result = run_closed(target, **common)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for name, value in summary.items():
            print(f"{name:>13}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
