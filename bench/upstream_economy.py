"""Upstream economy benchmark: does the service fetch each key once, in few batches, and keep
answering when Scope3 is slow, rate-limited or down?

It starts the Scope3 simulator and the service (gunicorn, gevent, ``WEB_CONCURRENCY=2``) on free
loopback ports and drives the six scenarios of issue 4, each against a freshly started service
(cold cache) and a reset simulator, then prints one table (scenario, figure, target, got,
pass/fail):

1. coalescing: 400 concurrent requests for the same 20 cold keys;
2. batching: 400 concurrent 5-row requests over 2,000 distinct cold keys;
3. wait window: a 20 ms upstream answers within the 45 ms window, a 200 ms one does not;
4. upstream down (connection refused, then hanging): hit-path throughput, 5xx, worker memory,
   breaker open and close times;
5. 429 with ``Retry-After: 2``: the worker stays quiet for 2 s, then fetches the rows;
6. stale: past the TTL with upstream down, hot keys are served ``stale``, none lost.

The simulator's ``/_stats`` tells workers apart by User-Agent (it carries the worker pid), so
"at most once per worker" is checked exactly. Every loop is bounded in count and time; every
process started here is stopped at the end, even on Ctrl-C. Run from the project root::

    .venv/bin/python bench/upstream_economy.py [--quick] [--scenarios 1,4] [--json out.json]
"""

from gevent import monkey

# The driver's own HTTP calls must yield to each other: patch before anything opens a socket.
monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterable, Iterator, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from loadgen import Target, percentile, run_closed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools.harness import LOOPBACK, Processes, Server, free_port, stop  # noqa: E402

APP = "measure_service.wsgi:app"
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
            query: str = "") -> Reply:
    """POST ``rows`` to the service's /v2/measure (on ``client``, else a new connection)."""
    path = "/v2/measure" + query
    if client is None:
        return call_once(port, "POST", path, {"rows": rows}, token=API_KEY)
    return client.call("POST", path, {"rows": rows}, token=API_KEY)


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
                *, fresh: bool = False) -> list[Reply]:
    """Send ``bodies`` from ``connections`` clients, each sending when its last answer is in.

    ``fresh`` opens a new connection per request, so that both workers get a share.
    """
    feed = iter(bodies)
    replies: list[Reply] = []

    def client_loop() -> None:
        client = Client(port)
        try:
            for rows in feed:
                replies.append(measure(port, rows, None if fresh else client))
        finally:
            client.close()

    gevent.joinall([gevent.spawn(client_loop) for _ in range(connections)])
    return replies


# --- the simulator and the service -------------------------------------------------------------

class Upstream:
    """The simulator on a fixed port, which can be stopped and started again on that port."""

    def __init__(self, procs: Processes, port: int) -> None:
        """Remember where to start it; :meth:`start` starts it."""
        self._procs = procs
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.server: Server | None = None

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

    def stats(self, **query: str) -> dict[str, Any]:
        """``GET /_stats`` with ``query`` (``keys=0``, ``recent=0``, ``by_agent=1``)."""
        path = "/_stats" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        reply = call_once(self.port, "GET", path)
        if reply.status != 200:
            raise RuntimeError(f"simulator /_stats answered {reply.status}")
        document: dict[str, Any] = reply.document
        return document

    def control(self, **changes: Any) -> None:
        """Change latency, jitter, mode, retry_after, ... at runtime."""
        reply = call_once(self.port, "POST", "/_control", changes)
        if reply.status != 200:
            raise RuntimeError(f"simulator /_control answered {reply.status}: {reply.document}")

    def reset(self) -> None:
        """Clear the counters and restore the start-up settings."""
        if call_once(self.port, "POST", "/_reset").status != 200:
            raise RuntimeError("simulator /_reset failed")

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
    """RSS and thread count from ``/proc/<pid>/status``, open fds from ``/proc/<pid>/fd``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return WorkerSample(time.time(), pid, int(fields["VmRSS"].split()[0]),
                        int(fields["Threads"]), fds)


def workers_cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


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
        self.NAME = name
        self.readings: list[tuple[float, float]] = []
        self._pattern = re.compile(rf"^{self.NAME}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
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
        text = reply.document if isinstance(reply.document, str) else None
        if text is not None:
            values = [float(v) for v in self._pattern.findall(text)]
            if values:
                self.readings.append((at, sum(values)))
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


FULL = Sizes(window_requests=400, down_seconds=10.0, stale_seconds=8.0)
QUICK = Sizes(window_requests=100, down_seconds=4.0, stale_seconds=3.0)


class Bench:
    """Runs the scenarios against one simulator, restarting the service for each."""

    def __init__(self, procs: Processes, sizes: Sizes, report: Report) -> None:
        """Use ``procs`` to start everything; write figures into ``report``."""
        self.procs = procs
        self.sizes = sizes
        self.report = report
        self.upstream = Upstream(procs, free_port())
        self.upstream.start()

    def service(self, **env: str) -> Server:
        """A fresh service (cold cache) with 2 gevent workers and ``env`` on top of the base."""
        port_dir = self.procs.log_dir / f"metrics-{uuid.uuid4().hex[:8]}"
        port_dir.mkdir()
        full = {
            "ENV": "bench", "API_KEYS": API_KEY, "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
            "SCOPE3_API_URL": self.upstream.url, "LOG_LEVEL": "INFO",
            "ACCESS_LOG": "sample:0.01", "PROMETHEUS_MULTIPROC_DIR": str(port_dir), **env,
        }
        return self.procs.gunicorn(APP, env=full, workers=WORKERS, name="service")

    def fresh_upstream(self, **changes: Any) -> None:
        """Reset the simulator, then apply ``changes``."""
        self.upstream.reset()
        if changes:
            self.upstream.control(**changes)

    # 1 ---------------------------------------------------------------------------------------
    def coalescing(self) -> None:
        """400 concurrent requests for the same 20 cold keys."""
        name = "1 coalescing"
        self.fresh_upstream()
        svc = self.service(WAIT_FOR_MISSING="true")
        try:
            rows = cold_rows(f"c{uuid.uuid4().hex[:8]}", 0, 20)
            replies = burst(svc.port, [rows] * 400)
            stats = self.upstream.wait_quiet()
        finally:
            stop(svc)
        full = self.upstream.stats(recent="0")
        repeated = sum(full["repeated_keys_by_agent"].values())
        failed = sum(r.status != 200 for r in replies)
        self.report.add(name, "simulator rows for 20 keys x 400 requests", "<= 40",
                        stats["rows"], stats["rows"] <= 2 * 20)
        self.report.add(name, "keys sent twice by one worker", "0", repeated, repeated == 0)
        self.report.add(name, "keys fetched", "20", len(full["rows_per_key"]),
                        len(full["rows_per_key"]) == 20)
        self.report.add(name, "non-200 answers", "0", failed, failed == 0)
        self.report.details["coalescing"] = {
            "upstream_requests": stats["requests"], "upstream_rows": stats["rows"],
            "row_statuses": dict(Counter(s for r in replies for s in r.statuses())),
        }

    # 2 ---------------------------------------------------------------------------------------
    def batching(self) -> None:
        """400 concurrent 5-row requests over 2,000 distinct cold keys."""
        name = "2 batching"
        self.fresh_upstream()
        svc = self.service(WAIT_FOR_MISSING="true")
        prefix = f"b{uuid.uuid4().hex[:8]}"
        try:
            bodies = [cold_rows(prefix, i * ROWS_PER_REQUEST, ROWS_PER_REQUEST)
                      for i in range(400)]
            replies = burst(svc.port, bodies)
            stats = self.upstream.wait_quiet()
        finally:
            stop(svc)
        full = self.upstream.stats(recent="0")
        repeated = sum(full["repeated_keys_by_agent"].values())
        failed = sum(r.status != 200 for r in replies)
        self.report.add(name, "upstream requests for 400 requests", "<= 40",
                        stats["requests"], stats["requests"] <= 40)
        self.report.add(name, "simulator rows", "2000", stats["rows"], stats["rows"] == 2000)
        self.report.add(name, "keys sent twice by one worker", "0", repeated, repeated == 0)
        self.report.add(name, "non-200 answers", "0", failed, failed == 0)
        self.report.add(name, "time from the burst to its last answer", "-",
                        f"{_spread_s(replies):.2f} s", None)
        self.report.details["batching"] = {
            "upstream_requests": stats["requests"], "upstream_rows": stats["rows"],
            "rows_per_upstream_request": round(stats["rows"] / max(1, stats["requests"]), 1),
            "row_statuses": dict(Counter(s for r in replies for s in r.statuses())),
        }

    # 3 ---------------------------------------------------------------------------------------
    def wait_window(self) -> None:
        """Cold rows with WAIT_FOR_MISSING=true and a 45 ms window, fast then slow upstream."""
        name = "3 wait window"
        count = self.sizes.window_requests
        svc = self.service(WAIT_FOR_MISSING="true", WAIT_WINDOW_MS="45")
        try:
            prefix = f"w{uuid.uuid4().hex[:8]}"
            self.fresh_upstream(latency_ms=20, jitter_ms=5)
            fast = closed_loop(svc.port, (cold_rows(prefix, i * ROWS_PER_REQUEST,
                                                    ROWS_PER_REQUEST)
                                          for i in range(count)), connections=8)
            # The same 8 clients asking for rows that are now cached: the machine's own tail.
            hot = cold_rows(prefix, 0, ROWS_PER_REQUEST)
            self._warm(svc.port, hot)
            hits = closed_loop(svc.port, (hot for _ in range(count)), connections=8)
            self.fresh_upstream(latency_ms=200, jitter_ms=5)
            slow = closed_loop(svc.port, (cold_rows(prefix, (count + i) * ROWS_PER_REQUEST,
                                                    ROWS_PER_REQUEST)
                                          for i in range(count)), connections=8)
            self.upstream.wait_quiet()
        finally:
            stop(svc)
        round_trip_ms = self._upstream_round_trip_ms(latency_ms=20)
        fast_statuses = Counter(s for r in fast for s in r.statuses())
        slow_statuses = Counter(s for r in slow for s in r.statuses())
        fast_rows = count * ROWS_PER_REQUEST
        fetched_share = fast_statuses["fetched"] / fast_rows
        latencies = sorted(r.elapsed_s for r in slow if r.status == 200)
        p99_ms = percentile(latencies, 99) * 1000
        self.report.add(name, f"20 ms upstream: cold rows fetched ({fast_rows} rows)",
                        ">= 99%", f"{fetched_share:.1%}", fetched_share >= 0.99)
        self.report.add(name, "200 ms upstream: p99 response time", "<= 60 ms",
                        f"{p99_ms:.1f} ms", len(latencies) == count and p99_ms <= 60)
        self.report.add(name, "200 ms upstream: cold rows pending", f"{fast_rows} (all)",
                        slow_statuses["pending"], slow_statuses["pending"] == fast_rows)
        hit_latencies = sorted(r.elapsed_s for r in hits if r.status == 200)
        self.report.add(name, "all-hit requests, same 8 clients: p50 / p99", "-",
                        f"{percentile(hit_latencies, 50) * 1000:.1f} / "
                        f"{percentile(hit_latencies, 99) * 1000:.1f} ms", None)
        self.report.add(name, "200 ms upstream: p50 response time", "-",
                        f"{percentile(latencies, 50) * 1000:.1f} ms", None)
        self.report.add(name, "simulator keep-alive round trip at 20 ms, median", "-",
                        f"{round_trip_ms:.1f} ms", None)
        self.report.details["wait_window"] = {
            "fast_statuses": dict(fast_statuses), "slow_statuses": dict(slow_statuses),
            "fast_p99_ms": round(percentile(sorted(r.elapsed_s for r in fast), 99) * 1000, 1),
            "slow_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "slow_p99_ms": round(p99_ms, 1), "slow_max_ms": round(max(latencies) * 1000, 1),
        }

    def _upstream_round_trip_ms(self, latency_ms: float) -> float:
        """Median time of 15 requests to the simulator itself on one keep-alive connection.

        Shows what the service's upstream calls cost beyond the configured latency.
        """
        self.fresh_upstream(latency_ms=latency_ms, jitter_ms=0)
        client = Client(self.upstream.port)
        body = {"rows": [{**r, "rowIdentifier": str(i)}
                         for i, r in enumerate(cold_rows("rt", 0, ROWS_PER_REQUEST))]}
        try:
            replies = [client.call("POST", "/v2/measure", body, token=UPSTREAM_TOKEN)
                       for _ in range(15)]
        finally:
            client.close()
        self.upstream.reset()
        if any(reply.status != 200 for reply in replies):
            raise RuntimeError("the simulator did not answer the round-trip probe with 200")
        times = sorted(reply.elapsed_s for reply in replies)
        return times[len(times) // 2] * 1000

    # 4 ---------------------------------------------------------------------------------------
    def upstream_down(self) -> None:
        """Hit-path throughput, errors, memory and breaker timing with upstream refused/hung."""
        name = "4 upstream down"
        sizes = self.sizes
        read_timeout_s = 1.0
        self.fresh_upstream()
        svc = self.service(
            WAIT_FOR_MISSING="false", BREAKER_COOLDOWN_S=str(sizes.cooldown_s),
            UPSTREAM_TIMEOUT_MS=str(int(read_timeout_s * 1000)),
            UPSTREAM_CONCURRENCY=str(UPSTREAM_CONCURRENCY),
        )
        pids = svc.child_pids()
        hot = [row(f"hot{i}.example", f"h{i}") for i in range(ROWS_PER_REQUEST)]
        target = Target.from_url(
            svc.url + "/v2/measure",
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            body=json.dumps({"rows": hot}).encode(),
        )
        phase_budget = 4 * sizes.down_seconds + 4 * sizes.cooldown_s + 60
        misses = MissStream(svc.port, f"m{uuid.uuid4().hex[:8]}", sizes.miss_rate, phase_budget)
        sampler = Sampler(pids, 0.25, phase_budget)
        gauge = GaugePoller(svc.port, 0.1, phase_budget)
        greenlets = GaugePoller(svc.port, 0.25, phase_budget, name="measure_background_greenlets")
        try:
            self._warm(svc.port, hot)
            misses.start()

            def hit_load() -> dict[str, Any]:
                cpu_before = workers_cpu_s(pids)
                result = run_closed(target, connections=sizes.hit_connections,
                                    duration_s=sizes.down_seconds, timeout_s=10,
                                    tally=STATUS_TALLY)
                summary = result.summary()
                # CPU per request does not depend on what else the machine runs, unlike req/s.
                summary["worker_cpu_us_per_request"] = round(
                    (workers_cpu_s(pids) - cpu_before) / max(1, result.requests) * 1e6, 1)
                return summary

            healthy_start = time.time()
            healthy = hit_load()
            healthy_end = time.time()

            # Connection refused: the simulator is gone.
            refused_at = time.time()
            self.upstream.stop()
            refused_run = hit_load()
            self.upstream.start()
            refused_recovered = time.time()
            refused_closed = self._wait_closed(misses, gauge, refused_recovered)
            refused_sim = self.upstream.stats(keys="0")

            # Hanging: connections accepted, no answer.
            hang_at = time.time()
            self.upstream.control(mode="hang")
            hang_run = hit_load()
            self.upstream.control(mode="ok")
            hang_recovered = time.time()
            hang_closed = self._wait_closed(misses, gauge, hang_recovered)
            hang_sim = self.upstream.stats(keys="0")
            # Healthy again, so that the baseline is not one unlucky run on a shared machine.
            healthy_again = hit_load()
        finally:
            misses.stop()
            sampler.stop()
            gauge.stop()
            greenlets.stop()
            pids_after = svc.child_pids()
            stop(svc)

        replies = misses.ordered(0.0)
        miss_5xx = sum(r.status >= 500 or r.status == 0 for r in misses.replies)
        hit_failures = sum(run["non_2xx"] + sum(run["errors"].values())
                           for run in (healthy, refused_run, hang_run, healthy_again))
        growth = sampler.growth((healthy_start, healthy_end), refused_at)
        # Healthy runs before and after the outages: their mean is the baseline.
        healthy_rps = (healthy["rps"] + healthy_again["rps"]) / 2
        healthy_cpu = (healthy["worker_cpu_us_per_request"]
                       + healthy_again["worker_cpu_us_per_request"]) / 2

        first_hang = min((e["time"] for e in hang_sim.get("recent", [])
                          if e["status"] == "hang"), default=None)
        opened = {
            "refused": (refused_at, start_of_run(misses.ordered(refused_at), refused, 5)),
            "hang": (None if first_hang is None else first_hang + read_timeout_s,
                     start_of_run(misses.ordered(hang_at), refused, 5)),
        }
        closed = {"refused": (refused_recovered, refused_closed),
                  "hang": (hang_recovered, hang_closed)}
        for kind, run in (("refused", refused_run), ("hang", hang_run)):
            ratio = run["rps"] / healthy_rps if healthy_rps else 0.0
            self.report.add(name, f"{kind}: hit-path req/s vs healthy "
                            f"({run['rps']:.0f} vs {healthy_rps:.0f})", ">= 0.90x",
                            f"{ratio:.2f}x", ratio >= 0.9)
            cpu = run["worker_cpu_us_per_request"]
            cpu_ratio = healthy_cpu / cpu if cpu else 0.0
            self.report.add(name, f"{kind}: same, from worker CPU per request "
                            f"({cpu:.0f} vs {healthy_cpu:.0f} us)", ">= 0.90x",
                            f"{cpu_ratio:.2f}x", cpu_ratio >= 0.9)
        self.report.add(name, "5xx or failed answers (hits + misses)", "0",
                        hit_failures + miss_5xx, hit_failures + miss_5xx == 0)
        self.report.add(name, "worker RSS rise over the healthy run", "<= 10 MiB",
                        f"{growth['rss_mib']:.1f} MiB", growth["rss_mib"] <= 10)
        self.report.add(name, "worker threads / open fds rise", "<= 2 / <= 20",
                        f"{growth['threads']:.0f} / {growth['fds']:.0f}",
                        growth["threads"] <= 2 and growth["fds"] <= 20)
        self.report.add(name, "worker restarts", "0", len(set(pids) - set(pids_after)),
                        set(pids) == set(pids_after))
        if gauge.readings:
            # /metrics is exposed: its gauge says when every worker's breaker opened and closed.
            for kind, fault in (("refused", refused_at), ("hang", hang_at)):
                opened[kind] = (opened[kind][0], gauge.first(fault, lambda v: v >= WORKERS))
            for kind, (recovered, _) in list(closed.items()):
                closed[kind] = (recovered, gauge.first(recovered, lambda v: v == 0))
        source = "/metrics" if gauge.readings else "row statuses"
        for kind in ("refused", "hang"):
            first_failure, open_at = opened[kind]
            if first_failure is None or open_at is None:
                self.report.add(name, f"{kind}: all breakers open, after 1st failure ({source})",
                                "<= 1 s", "never seen", False)
            else:
                delay = open_at - first_failure
                self.report.add(name, f"{kind}: all breakers open, after 1st failure ({source})",
                                "<= 1 s", f"{delay:.2f} s", delay <= 1.0)
            recovered, closed_at = closed[kind]
            limit = sizes.cooldown_s + 1
            if closed_at is None:
                self.report.add(name, f"{kind}: all breakers closed, after recovery ({source})",
                                f"<= {limit:g} s", "never seen", False)
            else:
                delay = closed_at - recovered
                self.report.add(name, f"{kind}: all breakers closed, after recovery ({source})",
                                f"<= {limit:g} s", f"{delay:.2f} s", delay <= limit)
        if greenlets.readings:
            # Flat: outages add at most the upstream slots' worth of hung fetches per worker.
            healthy_top = max((v for at, v in greenlets.readings
                               if healthy_start <= at <= healthy_end), default=0.0)
            outage_top = max((v for at, v in greenlets.readings if at >= refused_at), default=0.0)
            bound = healthy_top + WORKERS * UPSTREAM_CONCURRENCY
            self.report.add(name, "background greenlets, healthy max / outage max (/metrics)",
                            f"<= {bound:g}", f"{healthy_top:g} / {outage_top:g}",
                            outage_top <= bound)
        else:
            self.report.add(name, "worker greenlet count", "flat",
                            "not exposed by the service", None)
        self.report.details["upstream_down"] = {
            "breaker_by_row_statuses": {
                kind: {"open_s": _delay(start_of_run(misses.ordered(fault), refused, 5), first),
                       "closed_s": _delay(_first_closed(misses, recovered), recovered)}
                for kind, fault, first, recovered in (
                    ("refused", refused_at, refused_at, refused_recovered),
                    ("hang", hang_at, opened["hang"][0], hang_recovered))
            },
            "hang_arrivals_per_worker_s": _hang_arrivals(hang_sim),
            "healthy": healthy, "refused": refused_run, "hang": hang_run,
            "healthy_again": healthy_again,
            "worker_rise": growth, "read_timeout_s": read_timeout_s,
            "cooldown_s": sizes.cooldown_s, "miss_rate": sizes.miss_rate,
            "miss_answers": len(replies),
            "miss_statuses": dict(Counter(s for r in replies for s in r.statuses())),
            "close_per_worker_s": {
                "refused": _per_agent_close(refused_sim, refused_recovered),
                "hang": _per_agent_close(hang_sim, hang_recovered),
            },
            "worker_samples": [asdict(s) for s in sampler.samples[:: max(1, len(pids))]][-8:],
        }

    def _warm(self, port: int, rows: list[dict[str, Any]], timeout_s: float = 15.0) -> None:
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

    def _wait_closed(self, misses: MissStream, gauge: GaugePoller,
                     since: float) -> float | None:
        """When misses stopped being refused after ``since`` (None: not within the bound).

        With /metrics exposed, also wait until its gauge reads every breaker closed.
        """
        deadline = time.monotonic() + self.sizes.cooldown_s + 6
        while time.monotonic() < deadline:
            closed_at = _first_closed(misses, since)
            gauge_closed = not gauge.readings or gauge.first(since, lambda v: v == 0)
            if closed_at is not None and gauge_closed:
                return closed_at
            time.sleep(0.2)
        return None

    # 5 ---------------------------------------------------------------------------------------
    def retry_after(self) -> None:
        """429 with Retry-After: 2: no request from that worker for 2 s, then the rows."""
        name = "5 Retry-After"
        latency_s = 0.02
        svc = self.service(WAIT_FOR_MISSING="true", UPSTREAM_RETRIES="2")
        prefix = f"r{uuid.uuid4().hex[:8]}"
        try:
            self.fresh_upstream(latency_ms=latency_s * 1000, jitter_ms=0, mode="429",
                                retry_after=2)
            measure(svc.port, cold_rows(prefix, 0, ROWS_PER_REQUEST))
            deadline = time.monotonic() + 5
            while (self.upstream.stats(keys="0", recent="0")["by_status"].get("429", 0) == 0
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            self.upstream.control(mode="ok")
            # More misses on new connections while the gate is closed, so both workers get some:
            # the gated one must hold them back, the other must not.
            extra = closed_loop(svc.port, (cold_rows(prefix, (1 + i) * ROWS_PER_REQUEST,
                                                     ROWS_PER_REQUEST)
                                           for i in range(60)), connections=1, fresh=True)
            self.upstream.wait_quiet(quiet_s=1.0)
        finally:
            stop(svc)
        stats = self.upstream.stats(by_agent="1")
        recent = stats.get("recent", [])
        quiet = _quiet_after_429(recent, latency_s)
        got_429 = [e for e in recent if e["status"] == "429"]
        gated = {e["user_agent"] for e in got_429}
        last_429 = max((e["time"] for e in got_429), default=0.0)
        # The first request's rows: sent once (429), then again after the gate by the same worker.
        first = tuple(f"{prefix}-{i}.example|" for i in range(ROWS_PER_REQUEST))
        resent = {
            agent: sorted(count for key, count in stats["rows_per_key_by_agent"][agent].items()
                          if key.startswith(first))
            for agent in gated
        }
        answered_after = all(e["status"] == "200" for e in recent
                             if e["user_agent"] in gated and e["time"] > last_429)
        fetched = answered_after and any(c == [2] * ROWS_PER_REQUEST for c in resent.values())
        self.report.add(name, f"quiet time after a 429, same worker ({len(got_429)} x 429)",
                        ">= 2.0 s", "no 429 seen" if quiet is None else f"{quiet:.2f} s",
                        quiet is not None and quiet >= 2.0)
        self.report.add(name, "the 429'd rows re-sent by that worker, answered 200", "yes",
                        "yes" if fetched else "no", fetched)
        self.report.details["retry_after"] = {
            "upstream_429": len(got_429), "workers_gated": len(gated),
            "first_rows_sends_per_gated_worker": resent,
            "extra_statuses": dict(Counter(s for r in extra for s in r.statuses())),
        }

    # 6 ---------------------------------------------------------------------------------------
    def stale(self) -> None:
        """Short TTL, upstream down past it: hot keys are served stale, none lost."""
        name = "6 stale"
        ttl_s = 2
        self.fresh_upstream()
        svc = self.service(WAIT_FOR_MISSING="true", CACHE_TTL_SECONDS=str(ttl_s),
                           CACHE_STALE_SECONDS="600",
                           BREAKER_COOLDOWN_S=str(self.sizes.cooldown_s))
        prefix = f"s{uuid.uuid4().hex[:8]}"
        bodies = [cold_rows(prefix, i * ROWS_PER_REQUEST, ROWS_PER_REQUEST) for i in range(10)]
        hot_keys = 10 * ROWS_PER_REQUEST
        try:
            values = self._warm_everywhere(svc.port, bodies, hot_keys)
            self.upstream.stop()
            time.sleep(ttl_s + 0.5)
            deadline = time.monotonic() + self.sizes.stale_seconds
            bodies_forever = (bodies[i % len(bodies)] for i in range(100_000))

            def until_deadline() -> Iterator[list[dict[str, Any]]]:
                for rows in bodies_forever:
                    if time.monotonic() > deadline:
                        return
                    yield rows

            served = closed_loop(svc.port, until_deadline(), connections=8, fresh=True)
            self.upstream.start()
            recovered = time.time()
            refreshed_after = self._until_all_hits(svc.port, bodies, recovered,
                                                   timeout_s=self.sizes.cooldown_s + 10)
            self.upstream.wait_quiet()
        finally:
            stop(svc)
        statuses: Counter[str] = Counter()
        lost = 0
        for reply in served:
            if reply.status != 200:
                lost += ROWS_PER_REQUEST
                continue
            for item in reply.document["rows"]:
                statuses[item["status"]] += 1
                value = values.get(item["propertyName"])
                if item["status"] not in ("stale", "hit") or item["totalEmissions"] != value:
                    lost += 1
        total = sum(statuses.values())
        after = self.upstream.stats(recent="0")
        repeated = sum(after["repeated_keys_by_agent"].values())
        self.report.add(name, f"hot rows served stale with upstream down ({total} rows)",
                        "100%", f"{statuses['stale'] / max(1, total):.1%}",
                        total > 0 and statuses["stale"] == total)
        self.report.add(name, "rows lost (no value, wrong value, non-200)", "0", lost,
                        lost == 0 and total > 0)
        self.report.add(name, "after recovery: hot rows hits again", "yes",
                        "no" if refreshed_after is None else f"after {refreshed_after:.2f} s",
                        refreshed_after is not None)
        self.report.add(name, "after recovery: keys refreshed twice by one worker", "0",
                        repeated, repeated == 0)
        self.report.details["stale"] = {
            "ttl_s": ttl_s, "statuses": dict(statuses), "requests": len(served),
            "refresh_rows_after_recovery": after["rows"],
        }

    def _warm_everywhere(self, port: int, bodies: list[list[dict[str, Any]]],
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

    def _until_all_hits(self, port: int, bodies: list[list[dict[str, Any]]], since: float,
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


def _per_agent_close(stats: dict[str, Any], recovered: float) -> dict[str, float]:
    """Per worker: seconds from recovery to its second answered upstream request.

    Half-open lets one probe through; a second request means the breaker closed.
    """
    arrivals: dict[str, list[float]] = {}
    for entry in stats.get("recent", []):
        if entry["status"] == "200" and entry["time"] >= recovered:
            arrivals.setdefault(entry["user_agent"], []).append(entry["time"])
    return {agent: round(sorted(times)[1] - recovered, 3)
            for agent, times in arrivals.items() if len(times) >= 2}


def _delay(at: float | None, since: float | None) -> float | None:
    """Seconds from ``since`` to ``at``, or None when either is unknown."""
    return None if at is None or since is None else round(at - since, 3)


def _first_closed(misses: MissStream, since: float) -> float | None:
    """Send time of the first of 10 answers in a row, after ``since``, with no refused row."""
    return start_of_run(misses.ordered(since), not_refused, 10)


def _spread_s(replies: list[Reply]) -> float:
    """Seconds from the first request sent to the last answer received."""
    answered = [r for r in replies if r.status]
    if not answered:
        return 0.0
    return max(r.sent_at + r.elapsed_s for r in answered) - min(r.sent_at for r in answered)


def _hang_arrivals(stats: dict[str, Any]) -> dict[str, list[float]]:
    """Per worker: when its hung upstream requests arrived, in seconds after the first one."""
    hung = [e for e in stats.get("recent", []) if e["status"] == "hang"]
    if not hung:
        return {}
    first = min(e["time"] for e in hung)
    per_agent: dict[str, list[float]] = {}
    for entry in sorted(hung, key=lambda e: e["time"]):
        per_agent.setdefault(entry["user_agent"], []).append(round(entry["time"] - first, 3))
    return {agent: times[:12] for agent, times in per_agent.items()}


def _quiet_after_429(recent: list[dict[str, Any]], latency_s: float) -> float | None:
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


SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "1": Bench.coalescing, "2": Bench.batching, "3": Bench.wait_window,
    "4": Bench.upstream_down, "5": Bench.retry_after, "6": Bench.stale,
}


def run(args: argparse.Namespace) -> Report:
    """Start the simulator, run the chosen scenarios, stop everything; return the report."""
    report = Report()
    report.details["meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/upstream_economy.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "workers": WORKERS, "simulator": f"{SIM_LATENCY_MS:g} ms +- {SIM_JITTER_MS:g} ms",
        "loadavg_before": os.getloadavg(),
    }
    with Processes() as procs:
        bench = Bench(procs, QUICK if args.quick else FULL, report)
        for key in args.scenarios:
            _progress(f"scenario {key}: {SCENARIOS[key].__doc__}")
            try:
                SCENARIOS[key](bench)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                report.add(key, "scenario crashed", "runs", f"{type(exc).__name__}: {exc}",
                           False)
                if bench.upstream.server is None:
                    bench.upstream.start()
    report.details["meta"]["loadavg_after"] = os.getloadavg()
    return report


def print_table(report: Report) -> None:
    """Print the figures as a table."""
    meta = report.details["meta"]
    print(f"\nupstream economy, {meta['date']}, {meta['workers']} gevent workers, "
          f"simulator {meta['simulator']}, {meta['cpus']} CPUs")
    widths = (16, 62, 14, 22)
    head = ("scenario", "figure", "target", "got")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  result")
    for fig in report.figures:
        verdict = {True: "pass", False: "FAIL", None: "-"}[fig.passed]
        cells = (fig.scenario, fig.figure, fig.target, fig.got)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + f"  {verdict}")
    failed = sum(fig.passed is False for fig in report.figures)
    print(f"\n{failed} figure(s) failed")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs for scenarios 3, 4 and 6 (about a minute in all)")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6",
                        help="comma-separated scenario numbers to run (default: all)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report here")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        parser.error(f"--scenarios takes numbers from 1 to 6, got {args.scenarios!r}")
    args.scenarios = chosen
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a figure missed its target."""
    args = _parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(
            {"figures": [asdict(f) for f in report.figures], "details": report.details},
            indent=2, default=str))
    return 1 if any(fig.passed is False for fig in report.figures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
