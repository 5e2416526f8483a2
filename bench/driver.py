"""What the scenario benchmarks (``upstream_economy.py``, ``tenants.py``) share: the table of
figures they print, a JSON client for the service's /v2/measure, and the simulator on a fixed
port, which can be killed and started again.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import gevent.event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools.harness import LOOPBACK, Processes, Simulator, stop

WORKERS = 2
API_KEY = "bench-key"
UPSTREAM_TOKEN = "bench-upstream-token"
SIM_LATENCY_MS = 100.0
SIM_JITTER_MS = 30.0
ROWS_PER_REQUEST = 5
# A request that gets no answer within this is counted as failed, never waited for forever.
REQUEST_TIMEOUT_S = 30.0


# --- results -----------------------------------------------------------------------------------

@dataclass
class Figure:
    """One line of the table; ``passed`` is None for a figure reported without a target."""

    scenario: str
    figure: str
    target: str
    got: str
    passed: bool | None


@dataclass
class Report:
    """Everything one run measured."""

    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, scenario: str, figure: str, target: str, got: Any,
            passed: bool | None) -> None:
        """Append one figure; floats are printed with 3 significant decimals."""
        text = f"{got:.3g}" if isinstance(got, float) else str(got)
        self.figures.append(Figure(scenario, figure, target, text, passed))


def progress(message: str) -> None:
    """Print ``message`` on stderr after the time of day: how far a long run has got."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def chosen_scenarios(parser: argparse.ArgumentParser, raw: str, known: Iterable[str]) -> list[str]:
    """The comma-separated scenario names of ``raw``; a parser error for an unknown one."""
    known = list(known)
    chosen = [name.strip() for name in raw.split(",") if name.strip()]
    if not chosen or any(name not in known for name in chosen):
        parser.error(f"--scenarios takes {', '.join(known)}, got {raw!r}")
    return chosen


def finish(report: Report, json_path: Path | None) -> int:
    """Write the report to ``json_path`` if given; the exit code: 1 when a figure failed."""
    if json_path:
        json_path.write_text(json.dumps(
            {"figures": [asdict(f) for f in report.figures], "details": report.details},
            indent=2, default=str))
    return 1 if any(fig.passed is False for fig in report.figures) else 0


def print_figures(report: Report, title: str, widths: tuple[int, int, int, int]) -> None:
    """Print ``title``, then the figures as a table, then how many failed."""
    print(f"\n{title}")
    head = ("scenario", "figure", "target", "got")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  result")
    for fig in report.figures:
        verdict = {True: "pass", False: "FAIL", None: "-"}[fig.passed]
        cells = (fig.scenario, fig.figure, fig.target, fig.got)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + f"  {verdict}")
    failed = sum(fig.passed is False for fig in report.figures)
    print(f"\n{failed} figure(s) failed")


# --- HTTP --------------------------------------------------------------------------------------

@dataclass
class Reply:
    """One answer (``status`` 0: no answer), when its request left and how long it took."""

    status: int
    document: Any
    sent_at: float
    elapsed_s: float

    def statuses(self) -> list[str]:
        """The per-row statuses of a /v2/measure answer (empty for anything else)."""
        if self.status != 200 or not isinstance(self.document, dict):
            return []
        return [str(row.get("status")) for row in self.document.get("rows", [])]


class Client:
    """JSON over one keep-alive HTTP/1.1 connection to a loopback port; reconnects on error."""

    def __init__(self, port: int, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """Connect lazily to ``127.0.0.1:port``."""
        self._conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_s)

    def connect(self) -> None:
        """Open the connection now (so a burst can start with every socket ready)."""
        self._conn.connect()

    def call(self, method: str, path: str, document: Any = None, *,
             token: str | None = None) -> Reply:
        """Send one request (with ``Authorization: Bearer <token>`` if given); read the answer."""
        body = None if document is None else json.dumps(document).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        sent_at = time.time()
        started = time.perf_counter()
        try:
            self._conn.request(method, path, body=body, headers=headers)
            response = self._conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            return Reply(0, None, sent_at, time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            # Not JSON (the Prometheus text of /metrics): keep the text.
            answer = raw.decode("utf-8", errors="replace")
        return Reply(response.status, answer, sent_at, elapsed)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def call_once(port: int, method: str, path: str, document: Any = None, *,
              token: str | None = None) -> Reply:
    """One request on a new connection: gunicorn hands each connection to either worker."""
    client = Client(port)
    try:
        return client.call(method, path, document, token=token)
    finally:
        client.close()


def measure(port: int, rows: list[dict[str, Any]], client: Client | None = None,
            query: str = "", *, token: str = API_KEY) -> Reply:
    """POST ``rows`` to the service's /v2/measure as client key ``token`` (on ``client``, else
    a new connection)."""
    path = "/v2/measure" + query
    if client is None:
        return call_once(port, "POST", path, {"rows": rows}, token=token)
    return client.call("POST", path, {"rows": rows}, token=token)


def row(inventory_id: str, row_id: str) -> dict[str, Any]:
    """One request row."""
    return {"inventoryId": inventory_id, "utcDatetime": "2024-10-30", "impressions": 1000,
            "rowIdentifier": row_id}


def cold_rows(prefix: str, start: int, count: int) -> list[dict[str, Any]]:
    """``count`` rows for keys nobody asked for before (``prefix`` is unique per run)."""
    return [row(f"{prefix}-{i}.example", f"r{i}") for i in range(start, start + count)]


def burst(port: int, bodies: Sequence[list[dict[str, Any]]], query: str = "") -> list[Reply]:
    """Send every body at once: open one connection each first, then release all requests."""
    go = gevent.event.Event()
    connected = gevent.event.Event()
    count = [0]

    def one(rows: list[dict[str, Any]]) -> Reply:
        client = Client(port)
        try:
            try:
                client.connect()
            finally:
                count[0] += 1
                if count[0] == len(bodies):
                    connected.set()
            go.wait()
            return measure(port, rows, client, query)
        except OSError:
            return Reply(0, None, time.time(), 0.0)
        finally:
            client.close()

    greenlets = [gevent.spawn(one, rows) for rows in bodies]
    connected.wait(timeout=15)
    go.set()
    gevent.joinall(greenlets, timeout=REQUEST_TIMEOUT_S + 5)
    gevent.killall([g for g in greenlets if not g.ready()], timeout=5)
    return [g.value if g.successful() and g.value else Reply(0, None, 0.0, 0.0)
            for g in greenlets]


def closed_loop(port: int, bodies: Iterable[list[dict[str, Any]]], connections: int,
                *, fresh: bool = False, token: str = API_KEY) -> list[Reply]:
    """Send ``bodies`` from ``connections`` clients, each sending when its last answer is in.

    ``fresh`` opens a new connection per request, so that both workers get a share.
    """
    feed = iter(bodies)
    replies: list[Reply] = []

    def client_loop() -> None:
        client = Client(port)
        try:
            for rows in feed:
                replies.append(measure(port, rows, None if fresh else client, token=token))
        finally:
            client.close()

    gevent.joinall([gevent.spawn(client_loop) for _ in range(connections)])
    return replies


# --- the simulator on a fixed port -------------------------------------------------------------

class RestartableSimulator:
    """The simulator on a fixed port, which can be stopped and started again on that port."""

    def __init__(self, procs: Processes, port: int) -> None:
        """Remember where to start it; :meth:`start` starts it."""
        self._procs = procs
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.server: Simulator | None = None

    def start(self) -> None:
        """Start the simulator (100 ms, jitter 30 ms) and wait until it answers."""
        self.server = self._procs.simulator(
            latency_ms=SIM_LATENCY_MS, jitter_ms=SIM_JITTER_MS, token=UPSTREAM_TOKEN, port=self.port
        )

    def stop(self) -> None:
        """Kill it at once, as a crash would: from now on connections are refused."""
        if self.server is not None:
            # SIGKILL, not a graceful stop: the moment upstream goes away is then exact.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.process.pid, signal.SIGKILL)
            stop(self.server)
            self.server = None

    def _running(self) -> Simulator:
        if self.server is None:
            raise RuntimeError("the simulator is stopped")
        return self.server

    def stats(self, **query: str) -> dict[str, Any]:
        """``GET /_stats`` with ``query`` (``keys=0``, ``recent=0``, ``by_agent=1``)."""
        return self._running().stats("?" + urlencode(query) if query else "")

    def control(self, **changes: Any) -> None:
        """Change latency, jitter, mode, retry_after, ... at runtime."""
        self._running().control(**changes)

    def reset(self) -> None:
        """Clear the counters and restore the start-up settings."""
        self._running().reset()

    def fresh(self, **changes: Any) -> None:
        """Reset it, then apply ``changes``."""
        self.reset()
        if changes:
            self.control(**changes)

    def wait_quiet(self, quiet_s: float = 0.6, timeout_s: float = 30.0) -> dict[str, Any]:
        """:meth:`Simulator.wait_quiet` of the running simulator."""
        return self._running().wait_quiet(quiet_s, timeout_s)
