"""Deploys under load: SIGTERM to the master, SIGHUP (reload), and SIGKILL of one worker.

Real gunicorn (two gevent workers) in front of the simulator; a closed-loop load of
``CONNECTIONS`` keep-alive connections runs in this process (``bench/deploys.py``'s ``Load``,
the benchmark's own, on ``bench/loadgen.py`` and gevent).
Every request carries one new key, so it waits about ``UPSTREAM_MS`` for the upstream
answer: at any moment nearly every connection has a request in flight inside a worker.

A request fails when the connection errs (refused, reset, timeout), the answer is not 2xx, or
the body is not the service's JSON (no ``requestId``).

SIGTERM models a real deploy: the load balancer has stopped sending new requests to this
instance (deregistered, or its readiness probe failed), then the instance gets SIGTERM. The
load generator therefore stops issuing requests at the signal, and every request already in
flight must be answered. A request that opened a new connection after the signal would be
refused, since the master closes its listener first; that is a routing error, not a lost
request.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

import gevent
import pytest
from deploys import Load

from devtools.probes import client_connections, eventually
from tests.conftest import API_KEY, Processes, Service

pytestmark = pytest.mark.integration

UPSTREAM_MS = 300
CONNECTIONS = 16
GRACEFUL_TIMEOUT_S = 10
WORKERS = 2
DEPLOY_ENV = {
    # Long enough that every request waits for its fetch instead of answering "pending".
    "WAIT_WINDOW_MS": "3000",
    "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT_S),
    "ACCESS_LOG": "off",
}
# Bounds on waiting for processes; generous, since the machine may be busy.
PROCESS_DEADLINE_S = 30.0


def _eventually(check: Callable[[], bool]) -> None:
    # Polls with gevent.sleep so that the load's greenlets keep running meanwhile.
    eventually(check, PROCESS_DEADLINE_S, sleep=gevent.sleep)


def workers(service: Service) -> set[int]:
    """Pids of the master's live worker processes."""
    return service.worker_pids()



def start(processes: Processes) -> Service:
    """Two gevent workers behind a simulator slow enough to keep requests in flight."""
    simulator = processes.simulator(latency_ms=UPSTREAM_MS)
    service = processes.service(simulator, env=DEPLOY_ENV, workers=WORKERS)
    _eventually(lambda: len(workers(service)) == WORKERS)
    return service


def wait_for_exit(process: subprocess.Popen[bytes]) -> int:
    """The exit code of ``process``, waited for without blocking the load's greenlets."""
    _eventually(lambda: process.poll() is not None)
    return process.returncode


def test_sigterm_answers_every_request_in_flight_and_the_master_exits(
    processes: Processes,
) -> None:
    service = start(processes)
    load = Load(service, CONNECTIONS, api_key=API_KEY)
    load.wait_until_busy()
    in_flight = load.result.in_flight
    service.process.send_signal(signal.SIGTERM)
    assert load.stop(), "the load did not end"

    assert in_flight == CONNECTIONS
    assert load.failed() == 0, load.result.summary()
    assert load.result.started == load.result.requests
    assert wait_for_exit(service.process) == 0
    graceful_timeouts = [line for line in service.log_lines()
                         if "graceful timeout" in str(line.get("message", "")).lower()]
    assert graceful_timeouts == []


def test_sighup_replaces_every_worker_without_a_failed_request(processes: Processes) -> None:
    service = start(processes)
    old_workers = workers(service)
    load = Load(service, CONNECTIONS, api_key=API_KEY)
    load.wait_until_busy()
    service.process.send_signal(signal.SIGHUP)
    _eventually(lambda: not workers(service) & old_workers and len(workers(service)) == WORKERS)
    answered_by_old_and_new = load.result.requests
    # Proof that the new workers serve: more answers after every old worker has gone.
    _eventually(lambda: load.result.requests >= answered_by_old_and_new + 2 * CONNECTIONS)
    assert load.stop(), "the load did not end"

    # A loss logged with "Bad file descriptor" is gunicorn's listener race (bench/RELIABILITY.md).
    races = service.log_path.read_text(errors="replace").count("Bad file descriptor")
    assert load.failed() == 0, (load.result.summary(), f"Bad file descriptor lines: {races}")
    assert service.process.poll() is None


def test_sigkill_of_a_worker_loses_at_most_its_requests_in_flight(
    processes: Processes,
) -> None:
    service = start(processes)
    port = int(service.url.rsplit(":", 1)[1])
    load = Load(service, CONNECTIONS, api_key=API_KEY)
    load.wait_until_busy()
    # The busiest worker: one that holds no connection could not show that anything is lost.
    victim = max(workers(service), key=lambda pid: client_connections(pid, port))
    # Stopped, the worker can neither accept nor finish a request: its connections are final.
    os.kill(victim, signal.SIGSTOP)
    on_victim = client_connections(victim, port)
    os.kill(victim, signal.SIGKILL)
    _eventually(lambda: victim not in workers(service) and len(workers(service)) == WORKERS)
    answered = load.result.requests
    # Service continues: more answers once the replacement worker is up.
    _eventually(lambda: load.result.requests >= answered + 2 * CONNECTIONS)
    assert load.stop(), "the load did not end"

    assert on_victim > 0
    assert load.failed() <= on_victim, load.result.summary()
    assert service.process.poll() is None
