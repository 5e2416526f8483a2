"""What the upstream economy scenarios share beyond ``driver.py``: pollers and samplers of the
service's workers, background misses, and :class:`EconomyBench`, which starts a fresh service for
each scenario. The scenarios are the ``economy_*.py`` modules; ``upstream_economy.py`` runs them
and prints the table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from driver import (
    API_KEY,
    REQUEST_TIMEOUT_S,
    ROWS_PER_REQUEST,
    UPSTREAM_TOKEN,
    WORKERS,
    Client,
    Reply,
    Report,
    RestartableSimulator,
    closed_loop,
    cold_rows,
    measure,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools import probes
from devtools.harness import Processes, Service, free_port

# Upstream slots per worker in scenario 4 (the service's default, set explicitly there).
UPSTREAM_CONCURRENCY = 4
STATUS_TALLY = r'"status":\s*"(\w+)"'


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

    def service(self, **env: str) -> Service:
        """A fresh service (cold cache) with 2 gevent workers and ``env`` on top of the base."""
        full = {
            "ENV": "bench", "API_KEYS": API_KEY, "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
            "SCOPE3_API_URL": self.upstream.url, "LOG_LEVEL": "INFO",
            "ACCESS_LOG": "sample:0.01", **env,
        }
        return self.procs.service(None, env=full, workers=WORKERS)

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
