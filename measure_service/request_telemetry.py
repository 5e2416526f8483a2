"""What every request needs, done once at the WSGI layer: trace id, HTTP metrics, request line.

:class:`RequestTelemetry` wraps the Flask app. For each request it

- takes the client's ``X-Trace-Id`` if safe, else makes one; makes it the current trace id (so
  every log line of the request has it, see ``logs``), returns it in the ``X-Trace-Id`` header,
  and leaves it in the environ for gunicorn's access line;
- times the request and records ``flask_http_request_duration_seconds`` (by method, path and
  status) and ``flask_http_request_total`` (by method and status), except for ``/metrics``,
  ``/healthcheck`` and ``/readyz``: probes and scrapes are not traffic. A request only appends
  its figures; ``prometheus_metrics.flush`` adds them to the series, before any scrape;
- at DEBUG, logs one "request handled" line with the fields the access log has.

Flask's before/after/teardown hooks would cost more (each hook is a coroutine check and proxy
lookups); here it is one call, around every request, ``api.MeasureEndpoint``'s included.
The ``path`` label is one of the app's fixed routes, else ``unmatched``, and an unusual method
is ``other``, so that hostile requests cannot create new time series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from measure_service import logs, prometheus_metrics

# Scrapes and probes are not traffic.
UNTRACKED_PATHS = ("/metrics", "/healthcheck", "/readyz")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LOG = logging.getLogger(__name__)
_record_http = prometheus_metrics.record_http

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class RequestTelemetry:
    """WSGI wrapper giving each request its trace id, its HTTP metrics and its DEBUG line."""

    def __init__(self, app: WSGIApp, routes: Iterable[str]) -> None:
        """Wrap ``app``; ``routes`` are the fixed paths it serves (others count as unmatched)."""
        self._app = app
        self._untracked = frozenset(UNTRACKED_PATHS)
        self._routes = frozenset(routes) - self._untracked

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve the request through the wrapped app under its trace id, then record it."""
        started = time.perf_counter()
        trace_id = logs.trace_id_from_header(environ.get("HTTP_X_TRACE_ID"))
        environ[logs.ENVIRON_TRACE_ID] = trace_id
        statuses: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            headers.append(("X-Trace-Id", trace_id))
            return start_response(status, headers, exc_info)

        token = logs.set_trace_id(trace_id)
        try:
            body = self._app(environ, start)
        finally:
            logs.reset_trace_id(token)
        if statuses:
            self._record(environ, statuses[-1], time.perf_counter() - started, trace_id)
        return body

    def _record(
        self, environ: dict[str, Any], status: str, elapsed_s: float, trace_id: str
    ) -> None:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if path not in self._untracked:
            route = path if path in self._routes else "unmatched"
            _record_http((method if method in _METHODS else "other", route, status[:3], elapsed_s))
        if _LOG.isEnabledFor(logging.DEBUG):
            _LOG.debug(
                "request handled",
                extra={
                    "trace_id": trace_id,
                    "method": method,
                    "path": path,
                    "status": int(status[:3]),
                    "duration_ms": round(elapsed_s * 1000, 3),
                    "rows": environ.get(logs.ENVIRON_ROWS),
                    "hits": environ.get(logs.ENVIRON_HITS),
                    "misses": environ.get(logs.ENVIRON_MISSES),
                },
            )

