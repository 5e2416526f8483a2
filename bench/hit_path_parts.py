"""The hit path's parts in process: warm, and with the CPU caches flushed before each call.

Builds the service's app here (gevent patched; its own cache, metrics and auth; an upstream
stub), fills its cache with ``service_load.py``'s 5-row body, then times the whole app, the bare
floor app and each part of a hit request, in CPU time:

- warm: batches of ``--calls`` calls of each part in turn, the median of ``--batches``;
- cold: before each call, one byte of every 64-byte line of a ``--flush-mib`` buffer is written
  (evicting the caches, as the other processes on a busy machine do between two requests of
  a worker), then the call alone is timed; the median of ``--cold-calls``, the parts in turn,
  the order reversed every other time.

Each cold part pays alone for code the whole request shares, so cold parts add up to more than
the cold whole. Run from the project root::

    .venv/bin/python bench/hit_path_parts.py [--batches 11] [--calls 1000] [--flush-mib 16]
"""

from __future__ import annotations

import gevent
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
os.environ.update({"API_KEYS": "bench-key", "SCOPE3_API_TOKEN": "bench", "LOG_LEVEL": "WARNING"})

import floor_app  # noqa: E402
import orjson  # noqa: E402
from service_load import hot_body  # noqa: E402

from measure_service import api, rows  # noqa: E402
from measure_service.app import create_app  # noqa: E402
from measure_service.config import Config  # noqa: E402
from measure_service.request_telemetry import RequestTelemetry  # noqa: E402
from measure_service.upstream import RowResult  # noqa: E402

BODY = json.dumps(hot_body()).encode()


class _Upstream:
    """Answers every row at once (only the warm-up asks)."""

    def measure(self, rows: Sequence[Mapping[str, Any]], params: Mapping[str, str], *,
                judge: bool = False, read_timeout_s: float | None = None,
                observe_latency: bool = True) -> dict[str, RowResult]:
        return {str(row["rowIdentifier"]): RowResult(66.09, "modeled", None) for row in rows}

    def settle(self, error: Exception, *, explained: bool) -> None:
        """Nothing to settle: it never fails."""


def parts() -> dict[str, Callable[[], Any]]:
    """Each part of a hit request, ready to call; the app's cache holds the body's rows."""
    defaults = Config.from_env()
    config = Config(**{**{name: getattr(defaults, name) for name in defaults.__dataclass_fields__},
                       "wait_for_missing": True, "wait_window_ms": 2000})
    app = create_app(config, upstream=_Upstream())
    services: api.Services = app.extensions[api.EXTENSION]
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": api.MEASURE_PATH, "QUERY_STRING": "",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)),
               "HTTP_AUTHORIZATION": "Bearer bench-key"}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    def call(wsgi: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: wsgi({**environ, "wsgi.input": io.BytesIO(BODY)}, start_response)

    for _ in range(100):  # the first answer fetches; the cache is filled right after it
        answer = b"".join(call(app)())
        if answer.count(b'"status":"hit"') == 5:
            break
        gevent.sleep(0.01)
    else:
        raise SystemExit(f"the body is not all hits: {answer[:300]!r}")
    raw_rows = rows.parse_body(BODY, config.max_rows)
    checked = [rows.validate_row(raw, api._NO_QUERY) for raw in raw_rows]
    keys, costs = [row.key for row in checked], [row.cost for row in checked]
    outcomes = services.fetcher.lookup(keys, costs, 0.0, "key-1").outcomes
    document = api._document(checked, iter(outcomes), "bench-trace-id")
    return {
        "empty call (the floor of the measure)": lambda: None,
        "bare floor app": call(floor_app.bare),
        "request telemetry around the bare app": call(RequestTelemetry(floor_app.bare, [])),
        "whole app": call(app),
        "auth (_tenant)": lambda: api._tenant(services.auth_keys, "Bearer bench-key"),
        "body read (_read_body)": lambda: api._read_body(
            {**environ, "wsgi.input": io.BytesIO(BODY)}, config.max_body_bytes, 1.0),
        "body parse (rows.parse_body)": lambda: rows.parse_body(BODY, config.max_rows),
        "  of which orjson.loads": lambda: orjson.loads(BODY),
        "validation of the 5 rows": lambda: [rows.validate_row(raw, api._NO_QUERY)
                                             for raw in raw_rows],
        "lookup (Fetcher.lookup)": lambda: services.fetcher.lookup(keys, costs, 0.0, "key-1"),
        "  of which the cache's get_many": lambda: services.fetcher._cache.get_many(keys),
        "document (_document)": lambda: api._document(checked, iter(outcomes), "bench-trace-id"),
        "encoding (orjson.dumps)": lambda: api._encode(document),
    }


def main() -> None:
    """Print each part's warm and cold CPU microseconds a call."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=11)
    parser.add_argument("--calls", type=int, default=1000, help="calls per warm batch")
    parser.add_argument("--flush-mib", type=int, default=16)
    parser.add_argument("--cold-calls", type=int, default=400)
    args = parser.parse_args()
    measured = parts()
    warm: dict[str, list[float]] = {name: [] for name in measured}
    for _ in range(args.batches):
        for name, part in measured.items():
            started = time.process_time()
            for _ in range(args.calls):
                part()
            warm[name].append((time.process_time() - started) / args.calls * 1e6)
    flush = bytearray(args.flush_mib << 20)
    ones = b"\x01" * len(flush[::64])
    clock = time.thread_time_ns
    cold: dict[str, list[float]] = {name: [] for name in measured}
    order = list(measured.items())
    for turn in range(args.cold_calls):
        for name, part in order if turn % 2 else order[::-1]:
            flush[::64] = ones
            started = clock()
            part()
            cold[name].append((clock() - started) / 1e3)
    print(f"us a call, warm (median of {args.batches} x {args.calls}) and cold ({args.flush_mib} "
          f"MiB flushed before each, median of {args.cold_calls}); load {os.getloadavg()}")
    for name in measured:
        print(f"  {name:<42}{statistics.median(warm[name]):>9.2f}"
              f"{statistics.median(cold[name]):>9.1f}")


if __name__ == "__main__":
    main()
