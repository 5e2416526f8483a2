"""Every Prometheus metric the service records, defined in one place.

The objects live at module level because prometheus_client refuses to register a name twice,
and the app factory may run many times in one process (tests). Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` is set by ``gunicorn.conf.py`` before this module is imported, so
every value here is written to the shared multiprocess directory and summed across workers.

Hot paths increment once per request with a count (``inc(n)``), never once per row. Values
are buffered in memory and written to the files by :func:`flush` (see :class:`BufferedValue`).

prometheus_client picks its value class (in-memory or multiprocess files) when it is first
imported, so this module must be imported before it. When no directory is set (a test process, a
script), ``config.ensure_metrics_dir`` makes a private one: every process then records metrics the
way gunicorn workers do, and ``/metrics`` reads them the same way.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from measure_service.config import METRICS_DIR_VARIABLE, ensure_metrics_dir

ensure_metrics_dir()

from prometheus_client import Counter, Gauge, Histogram, values  # noqa: E402
from prometheus_client.mmap_dict import MmapedDict, mmap_key  # noqa: E402

if not getattr(values.ValueClass, "_multiprocess", False):
    raise RuntimeError(
        "prometheus_client was imported before measure_service.prometheus_metrics without "
        "PROMETHEUS_MULTIPROC_DIR set: its values would not reach /metrics. Set the variable, or "
        "import measure_service.prometheus_metrics first."
    )



class BufferedValue:
    """One metric value of this process: changed in memory, written to its file by :func:`flush`.

    prometheus_client's multiprocess value takes a lock, checks the process id and writes its
    mmap on every change; the hit path makes several changes a request. Here a change is an
    addition, and the files (what ``/metrics`` reads, summed over workers) are written by
    :func:`flush`: each second, before every scrape this worker answers, and when the app
    closes. A worker killed outright loses at most its last second of counts.
    """

    _multiprocess = True
    __slots__ = ("_file", "_key", "_prefix", "_timestamp", "_value")

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: list[str],
        labelvalues: list[str],
        help_text: str,
        multiprocess_mode: str = "",
        **kwargs: Any,
    ) -> None:
        """Open (or continue) this value in this process's file of its type."""
        self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
        self._open()
        _VALUES.append(self)

    def _open(self) -> None:
        self._file = _file(self._prefix)
        found = self._file.read_value(self._key)  # type: ignore[no-untyped-call]
        self._value: float = found[0]
        self._timestamp: float = found[1]

    def inc(self, amount: float) -> None:
        """Add ``amount``."""
        self._value += amount
        _DIRTY.add(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        """Set the value."""
        self._value = value
        self._timestamp = timestamp or 0.0
        _DIRTY.add(self)

    def set_exemplar(self, exemplar: Any) -> None:
        """Exemplars are not kept in multiprocess mode."""

    def get(self) -> float:
        """The value in this process."""
        return self._value

    def get_exemplar(self) -> None:
        """Exemplars are not kept in multiprocess mode."""
        return None


_VALUES: list[BufferedValue] = []
_DIRTY: set[BufferedValue] = set()
_FILES: dict[str, MmapedDict] = {}


def _file(prefix: str) -> MmapedDict:
    found = _FILES.get(prefix)
    if found is None:
        path = os.path.join(os.environ[METRICS_DIR_VARIABLE], f"{prefix}_{os.getpid()}.db")
        found = _FILES[prefix] = MmapedDict(path)  # type: ignore[no-untyped-call]
    return found


def flush() -> None:
    """Write every value changed since the last flush to this process's files.

    Requests recorded with :func:`record_http` are added to their series first: call this
    before reading the HTTP series from the registry.
    """
    _add_http_requests()
    while _DIRTY:
        value = _DIRTY.pop()
        value._file.write_value(  # type: ignore[no-untyped-call]
            value._key, value._value, value._timestamp
        )


def _start_afresh_in_child() -> None:
    """A forked worker starts its own files, from zero, and never writes its parent's."""
    for opened in _FILES.values():
        opened.close()  # type: ignore[no-untyped-call]
    _FILES.clear()
    _DIRTY.clear()
    _HTTP_PENDING.clear()
    for value in _VALUES:
        value._open()


os.register_at_fork(after_in_child=_start_afresh_in_child)
values.ValueClass = BufferedValue

# Latency buckets fine enough to read a 1 ms p50 and a 10 ms p99.
FAST_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 1.0, 2.0, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# --- HTTP (recorded by request_telemetry; names as prometheus_flask_exporter's defaults) -------
HTTP_LATENCY = Histogram(
    "flask_http_request_duration_seconds",
    "HTTP request duration in seconds, by method, route (path) and status.",
    ["method", "path", "status"],
    buckets=FAST_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "flask_http_request_total", "HTTP requests by method and status.", ["method", "status"]
)



# Requests served since the last flush, as (method, route, status, seconds): a request only
# appends, and :func:`flush` adds them to the histogram and counter, one series at a time.
_HTTP_PENDING: list[tuple[str, str, str, float]] = []
record_http: Callable[[tuple[str, str, str, float]], None] = _HTTP_PENDING.append
"""Record one request (method, route, status, seconds); it reaches the series at :func:`flush`."""
# Per (method, route, status): the histogram's bounds, buckets and sum, and the counter's value.
_HTTP_SERIES: dict[
    tuple[str, str, str], tuple[list[float], list[BufferedValue], BufferedValue, BufferedValue]
] = {}


def _add_http_requests() -> None:
    """Add the pending requests to their series.

    The same changes as ``HTTP_LATENCY.labels(...).observe(seconds)`` and
    ``HTTP_REQUESTS.labels(...).inc()``, made on the children's values directly.
    """
    pending = _HTTP_PENDING[:]
    del _HTTP_PENDING[: len(pending)]
    for method, route, status, seconds in pending:
        key = (method, route, status)
        series = _HTTP_SERIES.get(key)
        if series is None:
            latency = HTTP_LATENCY.labels(method, route, status)
            series = _HTTP_SERIES[key] = (
                latency._upper_bounds, latency._buckets, latency._sum,
                HTTP_REQUESTS.labels(method, status)._value,
            )
        bounds, buckets, total, count = series
        total.inc(seconds)
        # The first bucket whose upper bound holds it (the last bound is +Inf).
        buckets[bisect_left(bounds, seconds)].inc(1)
        count.inc(1)


def adder(counter: Counter) -> Callable[[float], None]:
    """What adds a count to ``counter``, a counter without labels.

    The same change as ``counter.inc(n)``, made on its value directly: the wrapper's checks
    (labels given, amount not negative) hold by construction for a count, and cost more than
    the addition on every request.
    """
    value: BufferedValue = counter._value
    return value.inc


# --- cache -------------------------------------------------------------------------------------
CACHE_HITS = Counter("measure_cache_hits_total", "Rows answered from the cache (fresh).")
CACHE_MISSES = Counter("measure_cache_misses_total", "Rows not in the cache.")
CACHE_STALE = Counter(
    "measure_cache_stale_served_total", "Rows answered from an entry past its TTL (stale)."
)
CACHE_REJECTED = Counter(
    "measure_cache_sets_rejected_total", "Cache sets refused by TinyLFU admission."
)
CACHE_EVICTIONS = Counter("measure_cache_evictions_total", "Entries evicted to make room.")
CACHE_EXPIRATIONS = Counter("measure_cache_expirations_total", "Entries removed on expiry.")
CACHE_ENTRIES = Gauge(
    "measure_cache_entries", "Entries held in the cache.", multiprocess_mode="livesum"
)
CACHE_COST_USED = Gauge(
    "measure_cache_cost_used", "Cost units held in the cache.", multiprocess_mode="livesum"
)
CACHE_MAX_COST = Gauge(
    "measure_cache_max_cost", "Cost budget of the cache.", multiprocess_mode="livesum"
)

# --- upstream ----------------------------------------------------------------------------------
UPSTREAM_OUTCOMES = (
    "ok", "row_error", "http_4xx", "http_429", "http_5xx", "timeout", "connection_error",
    "malformed",
)
UPSTREAM_REQUESTS = Counter(
    "measure_upstream_requests_total", "Upstream HTTP requests by outcome.", ["outcome"]
)
UPSTREAM_ROWS = Counter("measure_upstream_rows_total", "Rows sent upstream.")
UPSTREAM_LATENCY = Histogram(
    "measure_upstream_request_seconds", "Upstream request latency.", buckets=UPSTREAM_BUCKETS
)
UPSTREAM_BATCH_ROWS = Histogram(
    "measure_upstream_batch_rows", "Rows per upstream request.", buckets=BATCH_SIZE_BUCKETS
)
UPSTREAM_IN_FLIGHT = Gauge(
    "measure_upstream_in_flight", "Upstream requests in flight.", multiprocess_mode="livesum"
)
UPSTREAM_LIMIT = Gauge(
    "measure_upstream_concurrency_limit",
    "Upstream requests a worker may have in flight now (adaptive, under UPSTREAM_CONCURRENCY).",
    multiprocess_mode="livesum",
)
UPSTREAM_ISOLATED_ROWS = Counter(
    "measure_upstream_isolated_rows_total",
    "Rows found to fail an upstream batch alone (cached as their row error).",
)
UPSTREAM_CUT = Counter(
    "measure_upstream_cut_sends_total",
    "Upstream requests cut short because their client was set apart (sent again in its lane).",
)
UPSTREAM_RETRIES = Counter("measure_upstream_retries_total", "Upstream requests retried.")
UPSTREAM_COALESCED = Counter(
    "measure_upstream_coalesced_rows_total",
    "Missed rows that joined a fetch already in flight instead of starting one.",
)
UNAVAILABLE_REASONS = (
    "tenant_pending_share", "tenant_rows_share", "tenant_requests_share", "breaker_open",
    "fetch_failed",
)
UPSTREAM_UNAVAILABLE = Counter(
    "measure_upstream_unavailable_rows_total",
    "Missed rows answered unavailable, by reason: over a fair share, breaker open, fetch failed.",
    ["reason"],
)
BREAKER_OPEN = Gauge(
    "measure_upstream_breaker_open",
    "1 while this worker's circuit breaker is open or half-open, else 0.",
    multiprocess_mode="livesum",
)
BREAKER_STATES = ("open", "half_open", "closed")
BREAKER_TRANSITIONS = Counter(
    "measure_upstream_breaker_transitions_total", "Breaker state changes.", ["to"]
)

# --- worker ------------------------------------------------------------------------------------
BACKGROUND_GREENLETS = Gauge(
    "measure_background_greenlets",
    "Background greenlets alive (batch flushes and upstream fetches); bounded, never per row.",
    multiprocess_mode="livesum",
)

# --- wait window -------------------------------------------------------------------------------
WAIT_RESULTS = ("all_fetched", "timed_out")
WAIT_OUTCOMES = Counter(
    "measure_wait_window_total",
    "Requests that waited for misses, by outcome (all_fetched, timed_out).",
    ["outcome"],
)
WAIT_SECONDS = Histogram(
    "measure_wait_window_seconds", "Time a request waited for its misses.", buckets=FAST_BUCKETS
)

# --- shared tier (Redis) -----------------------------------------------------------------------
SHARED_HITS = Counter(
    "measure_shared_hits_total", "Rows missed in memory and found in Redis (answered hit/stale)."
)
SHARED_MISSES = Counter(
    "measure_shared_misses_total", "Rows missed in memory and not in Redis (or not decodable)."
)
SHARED_ERRORS = Counter(
    "measure_shared_errors_total",
    "Redis failures by kind: timeout, connection, full (OOM), response_error, undecodable,"
    " pool_exhausted.",
    ["kind"],
)
SHARED_LATENCY = Histogram(
    "measure_shared_seconds",
    "Redis round trips by operation (read, claim, write, release).",
    ["op"],
    buckets=FAST_BUCKETS,
)
SHARED_LEASES = Counter(
    "measure_shared_leases_total",
    "Fetch leases: won (this worker fetches), waited (another's value arrived), expired "
    "(taken over from a holder that never wrote), lost (a lapsed holder's write was refused).",
    ["outcome"],
)
SHARED_BREAKER_OPEN = Gauge(
    "measure_shared_breaker_open",
    "1 while this worker's Redis breaker is open or half-open, else 0.",
    multiprocess_mode="livesum",
)
SHARED_BREAKER_TRANSITIONS = Counter(
    "measure_shared_breaker_transitions_total", "Redis breaker state changes.", ["to"]
)

# A labelled series born at its first increment starts at 1, and rate() and increase() never
# count that increment: the first breaker opening after a start would not show. Every known label
# value starts at 0 instead.
for _counter, _values in (
    (UPSTREAM_REQUESTS, UPSTREAM_OUTCOMES),
    (UPSTREAM_UNAVAILABLE, UNAVAILABLE_REASONS),
    (BREAKER_TRANSITIONS, BREAKER_STATES),
    (WAIT_OUTCOMES, WAIT_RESULTS),
):
    for _value in _values:
        _counter.labels(_value)
