"""The service's WSGI app with tracemalloc on, for finding what holds memory in a soak.

``gunicorn ... bench.traced_app:app`` (``bench/soak.py --tracemalloc DIR`` does it). Each
worker traces its own allocations from before the app is built, and every
``TRACEMALLOC_EVERY_S`` seconds (default 120) writes a snapshot to
``TRACEMALLOC_DIR/<pid>-<n>.snap``. Taking a snapshot stops the worker for a moment, and tracing
slows every allocation: use it to find growth, not to measure speed.
"""

from __future__ import annotations

import os
import tracemalloc

import gevent

tracemalloc.start(int(os.environ.get("TRACEMALLOC_FRAMES", "1")))

from measure_service.wsgi import app  # noqa: E402

__all__ = ["app"]


def _snapshots(directory: str, every_s: float) -> None:
    count = 0
    while True:
        gevent.sleep(every_s)
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(os.path.join(directory, f"{os.getpid()}-{count:03d}.snap"))
        count += 1


gevent.spawn(
    _snapshots, os.environ["TRACEMALLOC_DIR"], float(os.environ.get("TRACEMALLOC_EVERY_S", "120"))
)
