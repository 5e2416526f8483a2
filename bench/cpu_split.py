"""gunicorn settings that split a worker's CPU per request into parts: the project's own, plus sums.

``gunicorn -c bench/cpu_split.py APP`` serves APP exactly as ``gunicorn.conf.py`` does, and each
worker adds up its thread's CPU time (``time.thread_time_ns``) in parts of every request:

- ``app``: the WSGI app call (for any app, this includes gunicorn's body reader and
  ``start_response``, which the app calls);
- ``environ``: gunicorn building the environ; ``write``: its response write (headers and body,
  the socket sends included); ``access``: its access-log decision (and the sampled lines);
- ``handle_request``: all of gunicorn's ``handle_request``, the parts above included.

What is left of the worker's CPU outside ``handle_request`` is request parsing (which waits on
the socket, so it cannot be timed this way: another greenlet's CPU would count in it), the event
loop, and background greenlets. Every quarter second each worker writes its sums to
``CPU_SPLIT_DIR/<pid>``, one ``name=nanoseconds`` per part and ``requests=n``. The clock calls
cost about as much in every app; compare apps with it, never take a verdict from it.
``bench/service_load.py --split`` uses it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PROJECT_CONFIG = Path(__file__).resolve().parents[1] / "gunicorn.conf.py"
exec(compile(_PROJECT_CONFIG.read_text(), str(_PROJECT_CONFIG), "exec"))


def post_worker_init(worker: Any) -> None:
    """Wrap the parts of this worker's request handling in CPU-time sums; write them out often."""
    import gevent
    from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]
    from gunicorn.workers import base_async  # type: ignore[import-untyped]

    sums = dict.fromkeys(("requests", "app", "environ", "write", "access", "handle_request"), 0)
    clock = time.thread_time_ns

    def timed(part: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return func(*args, **kwargs)
            finally:
                sums[part] += clock() - started

        return call

    app = worker.wsgi
    timed_app = timed("app", app)

    def counted_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        sums["requests"] += 1
        return timed_app(environ, start_response)

    worker.wsgi = counted_app
    worker.unsplit_wsgi = app
    worker.handle_request = timed("handle_request", worker.handle_request)
    base_async.wsgi.create = timed("environ", gunicorn_wsgi.create)
    gunicorn_wsgi.Response.write = timed("write", gunicorn_wsgi.Response.write)
    worker.log.access = timed("access", worker.log.access)

    path = Path(os.environ["CPU_SPLIT_DIR"]) / str(os.getpid())

    def write_sums() -> None:
        while True:
            gevent.sleep(0.25)
            path.with_suffix(".tmp").write_text(" ".join(f"{k}={v}" for k, v in sums.items()))
            path.with_suffix(".tmp").replace(path)

    gevent.spawn(write_sums)


_project_worker_exit = worker_exit  # noqa: F821 (defined by the project's config above)


def worker_exit(server: Any, worker: Any) -> None:
    """Close the app as the project's config does: give it back its own app first."""
    worker.wsgi = getattr(worker, "unsplit_wsgi", worker.wsgi)
    _project_worker_exit(server, worker)
