"""Every Prometheus metric the service records, defined in one place.

The objects live at module level because prometheus_client refuses to register a name twice,
and the app factory may run many times in one process (tests). Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` is set by ``gunicorn.conf.py`` before this module is imported, so
every value here is written to the shared multiprocess directory and summed across workers.

Hot paths increment once per request with a count (``inc(n)``), never once per row.

prometheus_client picks its value class (in-memory or multiprocess files) when it is first
imported, so this module must be imported before it. When no directory is set (a test process, a
script), ``config.ensure_metrics_dir`` makes a private one: every process then records metrics the
way gunicorn workers do, and ``/metrics`` reads them the same way.
"""

from __future__ import annotations

import os

from measure_service.config import ensure_metrics_dir

ensure_metrics_dir()

from prometheus_client import Counter, Gauge, Histogram, values  # noqa: E402

if not getattr(values.ValueClass, "_multiprocess", False):
    raise RuntimeError(
        "prometheus_client was imported before measure_service.metrics without "
        "PROMETHEUS_MULTIPROC_DIR set: its values would not reach /metrics. Set the variable, or "
        "import measure_service.metrics first."
    )

# Every increment asks for the process id, to notice a fork, and os.getpid is a system call on
# the hit path. The id is kept here, renewed in a child.
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
    process_identifier=lambda: _PID[0]
)

# Latency buckets fine enough to read a 1 ms p50 and a 10 ms p99.
FAST_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 1.0, 2.0, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# --- HTTP (recorded by bookkeeping; names as prometheus_flask_exporter's defaults) -------------
HTTP_LATENCY = Histogram(
    "flask_http_request_duration_seconds",
    "HTTP request duration in seconds, by method, route (path) and status.",
    ["method", "path", "status"],
    buckets=FAST_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "flask_http_request_total", "HTTP requests by method and status.", ["method", "status"]
)

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
UPSTREAM_RETRIES = Counter("measure_upstream_retries_total", "Upstream requests retried.")
UPSTREAM_COALESCED = Counter(
    "measure_upstream_coalesced_rows_total",
    "Missed rows that joined a fetch already in flight instead of starting one.",
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
WAIT_OUTCOMES = Counter(
    "measure_wait_window_total",
    "Requests that waited for misses, by outcome (all_fetched, timed_out).",
    ["outcome"],
)
WAIT_SECONDS = Histogram(
    "measure_wait_window_seconds", "Time a request waited for its misses.", buckets=FAST_BUCKETS
)
