"""The /metrics endpoint and the cache's own figures, summed over all workers.

prometheus_flask_exporter's ``GunicornInternalPrometheusMetrics`` serves ``/metrics`` from the
app itself. Every worker writes its values to its own files in ``PROMETHEUS_MULTIPROC_DIR``
(see ``prometheus_metrics``), and a scrape, which reaches one worker, reads the files of all of
them: counters and histograms add up, and the cache gauges are ``livesum``, so a worker's gauges
leave the sum once gunicorn's ``child_exit`` hook marks it dead.

The exporter's own HTTP metrics are off: its Flask hooks would cost a large share of the hit
path. ``request_telemetry`` records the same names for a fraction of that.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import gevent
from flask import Flask

from measure_service import prometheus_metrics
from weighted_cache import Cache as WeightedCache

# How often each worker copies its cache's figures into its metric files.
REFRESH_INTERVAL_S = 1.0
_LOG = logging.getLogger(__name__)


class CacheMetrics:
    """Copies one cache's counters and size into this worker's Prometheus metrics.

    Evictions and expirations are the growth of the cache's own counters since the last
    :meth:`refresh`, so the hit path pays nothing for them.
    """

    def __init__(self, cache: WeightedCache[Any, Any]) -> None:
        """Report ``cache``; counts it made before now are reported by the first refresh."""
        self._cache = cache
        self._evicted = 0.0
        self._expired = 0.0

    def refresh(self) -> None:
        """Bring the gauges up to date and add new evictions and expirations to the counters."""
        cache = self._cache
        stats = cache.metrics
        self._evicted = _add_growth(
            prometheus_metrics.CACHE_EVICTIONS, stats.keys_evicted, self._evicted
        )
        self._expired = _add_growth(
            prometheus_metrics.CACHE_EXPIRATIONS, stats.keys_expired, self._expired
        )
        prometheus_metrics.CACHE_ENTRIES.set(len(cache))
        prometheus_metrics.CACHE_COST_USED.set(cache.cost_used)
        prometheus_metrics.CACHE_MAX_COST.set(cache.max_cost)


def install(app: Flask, cache: object) -> Callable[[], None]:
    """Serve ``/metrics`` from ``app``, write this worker's values to its files each second and
    before each scrape, with a weighted_cache ``cache``'s figures; returns what stops that.
    """
    # Imported here, after ``prometheus_metrics`` has set up the multiprocess directory it needs.
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    refresh: Callable[[], None] = prometheus_metrics.flush
    if isinstance(cache, WeightedCache):
        cache_metrics = CacheMetrics(cache)

        def refresh() -> None:
            cache_metrics.refresh()
            prometheus_metrics.flush()

    refresh()
    # One exporter per app, each with its own registry: many apps in one process (tests) do not
    # collide, and the values they write all land in the same multiprocess files.
    GunicornInternalPrometheusMetrics(
        app,
        export_defaults=False,
        metrics_decorator=functools.partial(_refreshed_first, refresh),
    )
    # Each worker must write its own values: a scrape only refreshes the worker it reaches.
    refresher = gevent.spawn(_repeat, REFRESH_INTERVAL_S, refresh)

    def stop() -> None:
        # Blocking: once the app is closed, its refresher is gone (no greenlet outlives
        # close_app), and what it last counted is in the files.
        refresher.kill(block=True, timeout=1.0)
        prometheus_metrics.flush()

    return stop


def _add_growth(counter: Any, total: float, reported: float) -> float:
    """Add to ``counter`` what ``total`` grew by since ``reported``; return the new baseline."""
    if total > reported:
        counter.inc(total - reported)
    # The service never resets a cache's counters; if someone did, counting restarts from there.
    return total


def _refreshed_first(
    refresh: Callable[[], None], view: Callable[..., Any]
) -> Callable[..., Any]:
    """Wrap the /metrics view so that the worker answering a scrape reports current figures."""

    @functools.wraps(view)
    def scrape(*args: Any, **kwargs: Any) -> Any:
        refresh()
        return view(*args, **kwargs)

    return scrape


def _repeat(interval_s: float, func: Callable[[], None]) -> None:
    while True:
        gevent.sleep(interval_s)
        try:
            func()
        except Exception:
            _LOG.exception("refreshing the cache metrics failed")
