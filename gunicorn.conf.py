"""gunicorn settings for measure_service: gevent workers, JSON logs on stdout, env-driven.

Run: ``gunicorn -c gunicorn.conf.py measure_service.wsgi:app``. The service's own variables
(see ``measure_service.config.Config``) are validated here, in the master, so a bad value stops
the start with one clear message instead of a crash loop of workers.

The variables read only here are declared in ``measure_service.config.ServerConfig``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from measure_service.config import (
    Config,
    ConfigError,
    ServerConfig,
    ensure_metrics_dir,
)

# Several worker processes write one set of metrics: prometheus_client's multiprocess mode needs
# one directory for all of them, set before anything imports prometheus_client (it picks its value
# class at import). The workers inherit it; a directory made here goes when the master exits.
ensure_metrics_dir()

from measure_service.logs import sampled_access_logger  # noqa: E402

try:
    _config = Config.from_env()
    _server = ServerConfig.from_env()
except ConfigError as exc:
    raise SystemExit(f"measure_service: bad configuration: {exc}") from None


# HOST exists so tests and local runs can stay on loopback; containers keep 0.0.0.0.
bind = [f"{_server.host}:{_config.port}"]
if _config.metrics_port is not None:
    # Its own listener, so that an operator can keep scrapes off the public network.
    bind.append(f"{_server.host}:{_config.metrics_port}")
workers = _server.web_concurrency
# gevent: a worker serves many requests while their misses wait on upstream. Our subclass answers
# a connection accepted just as the worker stops, and lets the app close a connection.
worker_class = "measure_service.gunicorn_worker.GeventWorker"
# Concurrent connections per worker; beyond it gunicorn stops accepting, which bounds memory.
worker_connections = _server.worker_connections
# A worker that does not heartbeat for this long (a blocked hub) is killed and replaced.
timeout = _server.gunicorn_timeout
# On SIGTERM, in-flight requests and fetches get this long to finish.
graceful_timeout = _server.gunicorn_graceful_timeout
# Longer than a typical load balancer's idle timeout would cause resets; 5 s is below them all.
keepalive = _server.gunicorn_keepalive
# Only the status atom is formatted: AccessFormatter emits the fields itself.
access_log_format = "%(s)s"
# ACCESS_LOG sampling happens before gunicorn builds a line, so skipped lines cost nothing.
logger_class = sampled_access_logger(_config.access_log_rate)
# Each worker builds its own app after the fork: its cache, connection pool and greenlets.
preload_app = False
# The control socket is an admin channel nobody here uses; leave no socket file behind.
control_socket_disable = True

_SECRET_VARIABLES = ["SCOPE3_API_TOKEN", "REDIS_URL"]
_access_handlers = ["access"] if _config.access_log_rate > 0 else []
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # gunicorn's own lines (errors, tracebacks) get the same token redaction as the app's.
        # The variable is named, not its value: gunicorn --print-config shows this dict.
        "json": {
            "()": "measure_service.logs.json_formatter", "secret_variables": _SECRET_VARIABLES,
        },
        "access": {
            "()": "measure_service.logs.AccessFormatter", "secret_variables": _SECRET_VARIABLES,
        },
    },
    "filters": {
        "trace": {"()": "measure_service.logs.TraceIdFilter"},
    },
    "handlers": {
        "error": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["trace"],
            "stream": "ext://sys.stderr",
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
        },
    },
    "root": {"level": "WARNING", "handlers": ["error"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": _access_handlers, "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    """Start each master run with an empty metrics directory: old files would add stale counts."""
    shutil.rmtree(_server.metrics_dir, ignore_errors=True)
    os.makedirs(_server.metrics_dir, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges, so they stop counting in the sum (its counters stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the worker's background fetches and close its upstream connections cleanly."""
    from flask import Flask

    from measure_service.app import close_app

    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_app(app)
