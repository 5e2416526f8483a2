"""What the upstream economy scenarios share: an HTTP client, the simulator on a fixed port,
pollers and samplers of the service's workers, and :class:`EconomyBench`, which starts a fresh
service for each scenario. The scenarios are the ``economy_*.py`` modules; ``upstream_economy.py``
runs them and prints the table.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import gevent.event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools import probes
from devtools.harness import LOOPBACK, Processes, Server, Simulator, free_port, stop

WORKERS = 2
# Upstream slots per worker in scenario 4 (the service's default, set explicitly there).
UPSTREAM_CONCURRENCY = 4
API_KEY = "bench-key"
UPSTREAM_TOKEN = "bench-upstream-token"
SIM_LATENCY_MS = 100.0
SIM_JITTER_MS = 30.0
ROWS_PER_REQUEST = 5
STATUS_TALLY = r'"status":\s*"(\w+)"'
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


# --- the simulator and the service -------------------------------------------------------------

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

    def wait_quiet(self, quiet_s: float = 0.6, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until no new upstream request arrived for ``quiet_s``; return the stats."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            stats = self.stats(keys="0", recent="0")
            if stats["requests"] != last:
                last, since = stats["requests"], time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return stats
            time.sleep(0.1)
        return self.stats(keys="0", recent="0")


@dataclass(frozen=True)
class WorkerSample:
    """One look at one worker process."""

    at: float
    pid: int
    rss_kib: int
    threads: int
    fds: int


def sample_worker(pid: int) -> WorkerSample | None:
    """RSS, thread count and open fds of ``pid`` (None once it is gone)."""
    rss, count, fds = probes.rss_kib(pid), probes.threads(pid), probes.open_fds(pid)
    if rss is None or count is None or fds is None:
        return None
    return WorkerSample(time.time(), pid, rss, count, fds)


def workers_cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far."""
    return sum(probes.cpu_seconds(pid) for pid in pids)


# --- background traffic for scenario 4 ---------------------------------------------------------

class MissStream:
    """Cold 5-row requests at a fixed rate, each on a new connection, until stopped."""

    def __init__(self, port: int, prefix: str, rate: float, max_seconds: float) -> None:
        """Send ``rate`` requests a second for at most ``max_seconds``."""
        self.replies: list[Reply] = []
        self._port = port
        self._prefix = prefix
        self._rate = rate
        self._max = int(rate * max_seconds)
        self._stopped = gevent.event.Event()
        self._loop: gevent.Greenlet | None = None
        self._sends: list[gevent.Greenlet] = []

    def start(self) -> None:
        """Start sending."""
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop sending and wait (bounded) for the answers still out."""
        self._stopped.set()
        if self._loop is not None:
            self._loop.join(timeout=5)
        gevent.joinall(self._sends, timeout=REQUEST_TIMEOUT_S)

    def _run(self) -> None:
        started = time.perf_counter()
        for i in range(self._max):
            if self._stopped.wait(timeout=max(0.0, started + i / self._rate
                                               - time.perf_counter())):
                return
            rows = cold_rows(self._prefix, i * ROWS_PER_REQUEST, ROWS_PER_REQUEST)
            self._sends.append(gevent.spawn(self._send, rows))

    def _send(self, rows: list[dict[str, Any]]) -> None:
        self.replies.append(measure(self._port, rows))

    def ordered(self, since: float) -> list[Reply]:
        """Answered replies sent at or after ``since``, in order of sending."""
        return sorted((r for r in self.replies if r.sent_at >= since and r.status),
                      key=lambda r: r.sent_at)


def start_of_run(replies: list[Reply], test: Callable[[Reply], bool], run: int) -> float | None:
    """Send time of the first reply that starts ``run`` consecutive replies passing ``test``."""
    streak = 0
    for index, reply in enumerate(replies):
        streak = streak + 1 if test(reply) else 0
        if streak == run:
            return replies[index - run + 1].sent_at
    return None


def refused(reply: Reply) -> bool:
    """With WAIT_FOR_MISSING=false a miss is ``unavailable`` only when refused (breaker open)."""
    return bool(reply.statuses()) and all(s == "unavailable" for s in reply.statuses())


def not_refused(reply: Reply) -> bool:
    """No row of the answer was refused."""
    return bool(reply.statuses()) and "unavailable" not in reply.statuses()


class _Poller:
    """Calls ``_tick`` every ``interval_s`` in a greenlet until stopped (max_seconds at most)."""

    def __init__(self, interval_s: float, max_seconds: float) -> None:
        """Start polling."""
        self._interval_s = interval_s
        self._max = int(max_seconds / interval_s)
        self._stopped = gevent.event.Event()
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop polling."""
        self._stopped.set()
        self._loop.join(timeout=5)

    def _run(self) -> None:
        for _ in range(self._max):
            if self._tick() is False or self._stopped.wait(timeout=self._interval_s):
                return

    def _tick(self) -> bool | None:
        """One poll; False ends the polling."""
        raise NotImplementedError


class GaugePoller(_Poller):
    """Polls one gauge on /metrics, summed over its series: by default
    ``measure_upstream_breaker_open``, the number of workers whose breaker is open or half-open
    (a ``livesum`` gauge). ``readings`` stays empty when it is not exposed."""

    NAME = "measure_upstream_breaker_open"

    def __init__(
        self, port: int, interval_s: float, max_seconds: float, name: str = NAME
    ) -> None:
        """Poll ``127.0.0.1:port/metrics`` every ``interval_s`` for the gauge ``name``."""
        self.readings: list[tuple[float, float]] = []
        self._name = name
        self._client = Client(port)
        super().__init__(interval_s, max_seconds)

    def stop(self) -> None:
        """Stop polling and close the connection."""
        super().stop()
        self._client.close()

    def _tick(self) -> bool | None:
        at = time.time()
        reply = self._client.call("GET", "/metrics")
        if reply.status == 404:
            return False
        if isinstance(reply.document, str):
            samples = probes.parse_metrics(reply.document, self._name)
            if any(sample == self._name for sample, _ in samples):
                self.readings.append((at, probes.metric_total(samples, self._name)))
        return None

    def first(self, since: float, test: Callable[[float], bool]) -> float | None:
        """Time of the first reading at or after ``since`` whose value passes ``test``."""
        return next((at for at, value in self.readings if at >= since and test(value)), None)


class Sampler(_Poller):
    """Samples every worker every ``interval_s`` until stopped (bounded by ``max_seconds``)."""

    def __init__(self, pids: list[int], interval_s: float, max_seconds: float) -> None:
        """Watch ``pids``."""
        self.samples: list[WorkerSample] = []
        self._pids = pids
        super().__init__(interval_s, max_seconds)

    def _tick(self) -> bool | None:
        for pid in self._pids:
            sample = sample_worker(pid)
            if sample is not None:
                self.samples.append(sample)
        return None

    def growth(self, healthy: tuple[float, float], since: float) -> dict[str, float]:
        """Largest rise, over workers, from the highest sample during ``healthy`` (start, end)
        to the highest one after ``since``: RSS (MiB), threads and open fds."""
        rise = {"rss_mib": 0.0, "threads": 0.0, "fds": 0.0}
        for pid in self._pids:
            mine = [s for s in self.samples if s.pid == pid]
            before = [s for s in mine if healthy[0] <= s.at <= healthy[1]]
            after = [s for s in mine if s.at >= since]
            if not before or not after:
                continue
            for key, pick, scale in (("rss_mib", "rss_kib", 1024), ("threads", "threads", 1),
                                     ("fds", "fds", 1)):
                top_before = max(getattr(s, pick) for s in before)
                top_after = max(getattr(s, pick) for s in after)
                rise[key] = max(rise[key], (top_after - top_before) / scale)
        return rise


# --- the benchmark -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """How big and long each scenario is (``--quick`` shrinks the long ones)."""

    window_requests: int
    down_seconds: float
    stale_seconds: float
    hit_connections: int = 16
    miss_rate: float = 40.0
    cooldown_s: float = 3.0
    # Scenario 4's UPSTREAM_TIMEOUT_MS, in seconds: a hung call fails after this long.
    upstream_timeout_s: float = 1.0


FULL = Sizes(window_requests=400, down_seconds=10.0, stale_seconds=8.0)
QUICK = Sizes(window_requests=100, down_seconds=4.0, stale_seconds=3.0)


class EconomyBench:
    """Runs the scenarios against one simulator, restarting the service for each."""

    def __init__(self, procs: Processes, sizes: Sizes, report: Report) -> None:
        """Use ``procs`` to start everything; write figures into ``report``."""
        self.procs = procs
        self.sizes = sizes
        self.report = report
        self.upstream = RestartableSimulator(procs, free_port())
        self.upstream.start()

    def service(self, **env: str) -> Server:
        """A fresh service (cold cache) with 2 gevent workers and ``env`` on top of the base."""
        full = {
            "ENV": "bench", "API_KEYS": API_KEY, "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
            "SCOPE3_API_URL": self.upstream.url, "LOG_LEVEL": "INFO",
            "ACCESS_LOG": "sample:0.01", **env,
        }
        return self.procs.service(None, env=full, workers=WORKERS)

    def fresh_upstream(self, **changes: Any) -> None:
        """Reset the simulator, then apply ``changes``."""
        self.upstream.reset()
        if changes:
            self.upstream.control(**changes)

    def warm(self, port: int, rows: list[dict[str, Any]], timeout_s: float = 15.0) -> None:
        """Ask for ``rows`` on new connections until 20 answers in a row are all hits."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while streak < 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up: not all hits after {timeout_s:.0f} s")
            if set(measure(port, rows).statuses()) == {"hit"}:
                streak += 1
            else:
                streak = 0
                time.sleep(0.05)

    def wait_closed(self, misses: MissStream, gauge: GaugePoller,
                     since: float) -> float | None:
        """When misses stopped being refused after ``since`` (None: not within the bound).

        With /metrics exposed, also wait until its gauge reads every breaker closed.
        """
        deadline = time.monotonic() + self.sizes.cooldown_s + 6
        while time.monotonic() < deadline:
            closed_at = first_closed(misses, since)
            gauge_closed = not gauge.readings or gauge.first(since, lambda v: v == 0)
            if closed_at is not None and gauge_closed:
                return closed_at
            time.sleep(0.2)
        return None

    def warm_everywhere(self, port: int, bodies: list[list[dict[str, Any]]],
                         keys: int, timeout_s: float = 20.0) -> dict[str, float]:
        """Ask until both workers fetched every key; return each key's value."""
        values: dict[str, float] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for reply in closed_loop(port, bodies, connections=4, fresh=True):
                for item in reply.document["rows"] if reply.status == 200 else []:
                    if item["totalEmissions"] is not None:
                        values[item["propertyName"]] = item["totalEmissions"]
            by_agent = self.upstream.stats(recent="0", by_agent="1")["rows_per_key_by_agent"]
            if len(by_agent) == WORKERS and all(len(k) == keys for k in by_agent.values()):
                self.upstream.wait_quiet(quiet_s=0.3)
                if len(values) == keys:
                    return values
            time.sleep(0.05)
        raise RuntimeError("warm-up: the hot keys did not reach both workers")

    def until_all_hits(self, port: int, bodies: list[list[dict[str, Any]]], since: float,
                        timeout_s: float) -> float | None:
        """Seconds from ``since`` until 3 rounds in a row are all hits (None: not in time)."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            replies = closed_loop(port, bodies, connections=4, fresh=True)
            if all(set(r.statuses()) == {"hit"} for r in replies):
                streak += 1
                if streak == 3:
                    return time.time() - since
            else:
                streak = 0
            time.sleep(0.1)
        return None


def per_agent_close(stats: dict[str, Any], recovered: float) -> dict[str, float]:
    """Per worker: seconds from recovery to its second answered upstream request.

    Half-open lets one probe through; a second request means the breaker closed.
    """
    arrivals: dict[str, list[float]] = {}
    for entry in stats.get("recent", []):
        if entry["status"] == "200" and entry["time"] >= recovered:
            arrivals.setdefault(entry["user_agent"], []).append(entry["time"])
    return {agent: round(sorted(times)[1] - recovered, 3)
            for agent, times in arrivals.items() if len(times) >= 2}


def seconds_between(at: float | None, since: float | None) -> float | None:
    """Seconds from ``since`` to ``at``, or None when either is unknown."""
    return None if at is None or since is None else round(at - since, 3)


def first_closed(misses: MissStream, since: float) -> float | None:
    """Send time of the first of 10 answers in a row, after ``since``, with no refused row."""
    return start_of_run(misses.ordered(since), not_refused, 10)


def spread_s(replies: list[Reply]) -> float:
    """Seconds from the first request sent to the last answer received."""
    answered = [r for r in replies if r.status]
    if not answered:
        return 0.0
    return max(r.sent_at + r.elapsed_s for r in answered) - min(r.sent_at for r in answered)


def hang_arrivals(stats: dict[str, Any]) -> dict[str, list[float]]:
    """Per worker: when its hung upstream requests arrived, in seconds after the first one."""
    hung = [e for e in stats.get("recent", []) if e["status"] == "hang"]
    if not hung:
        return {}
    first = min(e["time"] for e in hung)
    per_agent: dict[str, list[float]] = {}
    for entry in sorted(hung, key=lambda e: e["time"]):
        per_agent.setdefault(entry["user_agent"], []).append(round(entry["time"] - first, 3))
    return {agent: times[:12] for agent, times in per_agent.items()}


def quiet_after_429(recent: list[dict[str, Any]], latency_s: float) -> float | None:
    """Shortest gap between a 429 reaching a worker and that worker's next upstream request.

    Requests that arrived before the 429 was answered were already under way, so the gap runs
    from the answer (arrival + latency) to the next arrival after it.
    """
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for entry in recent:
        by_agent.setdefault(entry["user_agent"], []).append(entry)
    gaps: list[float] = []
    for entries in by_agent.values():
        entries.sort(key=lambda e: e["time"])
        for entry in entries:
            if entry["status"] != "429":
                continue
            answered = entry["time"] + latency_s
            later = [e["time"] for e in entries if e["time"] > answered]
            if later:
                gaps.append(later[0] - answered)
    return min(gaps) if gaps else None
