"""Deploy signals under load, with bigger numbers than the tests: SIGTERM, SIGHUP, SIGKILL.

Starts the simulator (``--upstream-ms`` latency) and gunicorn (two gevent workers,
``GUNICORN_GRACEFUL_TIMEOUT=10``) on free loopback ports for each scenario, and drives them with
``bench/loadgen.py``'s closed loop in this process: ``--connections`` keep-alive connections,
each request one new key, so that it waits for its upstream fetch (``WAIT_WINDOW_MS=3000``).
A request fails when its connection errs, its answer is not 2xx, or its body has no
``requestId``. Scenarios (``--rounds`` each):

``term``         the deploy sequence: the balancer has stopped routing here, then SIGTERM; the
                 load sends nothing new after the signal. Every request in flight must be
                 answered, and the master must exit 0 with no worker hitting graceful_timeout.
``term-undrained``  SIGTERM while the load keeps sending (a deploy that skips the drain).
                 Not judged: it shows what happens to requests sent after the signal.
``hup``          SIGHUP while the load keeps sending, until every worker is new: 0 failures.
``kill``         SIGKILL of one worker: failures at most its established client connections
                 at the kill (counted from /proc while the worker is SIGSTOPped).

Run from the project root::

    .venv/bin/python bench/deploys.py [--rounds 3] [--connections 64] [--only term --only kill]
    .venv/bin/python bench/deploys.py --only hup --rounds 40 --connections 128 --close
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import loadgen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools import probes
from devtools.harness import Processes, Server
from devtools.probes import client_connections

API_KEY = "deploy-key"
GRACEFUL_TIMEOUT_S = 10
WORKERS = 2
DEADLINE_S = 60.0
SCENARIOS = ("term", "term-undrained", "hup", "kill")


class Load:
    """A closed-loop load of one new key per request, running in a greenlet until stopped."""

    def __init__(self, server: Server, connections: int, *, close: bool = False,
                 api_key: str = API_KEY) -> None:
        """Start ``connections`` keep-alive connections against ``server`` (with ``close``, a
        new connection for every request)."""
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        if close:
            headers["Connection"] = "close"
        template = ('{"rows": [{"inventoryId": "deploy-' + uuid.uuid4().hex[:8]
                    + '-{seq}.example", "utcDatetime": "2024-10-30"}]}')
        target = loadgen.Target.from_url(
            server.url + "/v2/measure", body_template=template,
            headers=headers)
        self.connections = connections
        self.result = loadgen.Result(mode="closed", connections=connections, duration_s=0.0)
        self._stop = gevent.event.Event()
        self._greenlet = gevent.spawn(
            loadgen.run_closed, target, connections=connections, duration_s=600.0,
            tally=r'"(requestId)"', stop=self._stop, result=self.result)

    def wait_until_busy(self) -> None:
        """Until each connection was answered twice and all are busy."""
        eventually(lambda: self.result.requests >= 2 * self.connections
                   and self.result.in_flight == self.connections)

    def stop(self) -> bool:
        """Send nothing new; wait until the requests in flight are done (False: not in time)."""
        self._stop.set()
        self._greenlet.join(timeout=DEADLINE_S)
        return bool(self._greenlet.dead)

    def failed(self) -> int:
        """Errors, non-2xx answers and 2xx answers without the service's JSON."""
        r = self.result
        return sum(r.errors.values()) + r.non_2xx + (r.requests - r.non_2xx
                                                     - r.tallies["requestId"])


def eventually(check: Callable[[], bool]) -> float:
    """Poll ``check`` (yielding to the load) until true; return the seconds it took."""
    started = time.monotonic()
    probes.eventually(check, DEADLINE_S, interval_s=0.01, sleep=gevent.sleep)
    return time.monotonic() - started



def start(procs: Processes, upstream_ms: float, worker_class: str | None = None) -> Server:
    """Simulator and two gevent workers, as in tests/integration/test_deploys.py."""
    sim = procs.simulator(latency_ms=upstream_ms, jitter_ms=0)
    env = {
        "API_KEYS": API_KEY, "SCOPE3_API_TOKEN": "deploy-upstream-token",
        "WAIT_FOR_MISSING": "true", "WAIT_WINDOW_MS": "3000",
        "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT_S), "ACCESS_LOG": "off",
    }
    if worker_class:
        # gunicorn reads this after gunicorn.conf.py, so it overrides worker_class there.
        env["GUNICORN_CMD_ARGS"] = f"--worker-class {worker_class}"
    return procs.service(sim, env=env, workers=WORKERS)


def _graceful_timeouts(server: Server) -> int:
    return server.log_path.read_text(errors="replace").lower().count("graceful timeout")


def term(server: Server, connections: int, *, drained: bool,
         close: bool = False) -> dict[str, Any]:
    """SIGTERM the master under load; with ``drained``, send nothing after the signal."""
    load = Load(server, connections, close=close)
    load.wait_until_busy()
    in_flight, answered_before = load.result.in_flight, load.result.requests
    errors_before = sum(load.result.errors.values())
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    if drained:
        load.stop()
        last_answer_s = time.monotonic() - signalled
        exit_s = eventually(lambda: server.process.poll() is not None) + last_answer_s
    else:
        exit_s = eventually(lambda: server.process.poll() is not None)
        last_answer_s = exit_s
        load.stop()
    r = load.result
    figures = {
        "in_flight_at_signal": in_flight, "requests": r.requests + sum(r.errors.values()),
        "answered_after_signal": r.requests - answered_before,
        "failed": load.failed(), "errors_after_signal": {
            k: v for k, v in r.errors.items() if v}, "non_2xx": r.non_2xx,
        "in_flight_done_s": round(last_answer_s, 2), "master_exit_s": round(exit_s, 2),
        "exit_code": server.process.returncode,
        "graceful_timeouts": _graceful_timeouts(server),
    }
    if drained:
        figures["ok"] = (figures["failed"] == 0 and r.requests == r.started
                         and server.process.returncode == 0
                         and figures["graceful_timeouts"] == 0)
    else:
        figures["errors_before_signal"] = errors_before
    return figures


def hup(server: Server, connections: int, *, close: bool = False) -> dict[str, Any]:
    """SIGHUP under load; keep the load on until every worker is new and has served."""
    old = set(server.child_pids())
    load = Load(server, connections, close=close)
    load.wait_until_busy()
    in_flight = load.result.in_flight
    server.process.send_signal(signal.SIGHUP)
    replaced_s = eventually(lambda: not set(server.child_pids()) & old
                            and len(server.child_pids()) == WORKERS)
    answered = load.result.requests
    eventually(lambda: load.result.requests >= answered + 4 * connections)
    load.stop()
    r = load.result
    return {"in_flight_at_signal": in_flight, "requests": r.requests + sum(r.errors.values()),
            "failed": load.failed(), "errors": {k: v for k, v in r.errors.items() if v},
            "statuses": dict(r.statuses), "workers_replaced_s": round(replaced_s, 2),
            "master_alive": server.process.poll() is None,
            "ok": load.failed() == 0 and server.process.poll() is None,
            **({"log_tail": server.log_tail(40)} if load.failed() else {})}


def kill(server: Server, connections: int, *, close: bool = False) -> dict[str, Any]:
    """SIGKILL one worker under load; the master must replace it and the load go on."""
    load = Load(server, connections, close=close)
    load.wait_until_busy()
    in_flight = load.result.in_flight
    victim = max(server.child_pids(), key=lambda pid: client_connections(pid, server.port))
    os.kill(victim, signal.SIGSTOP)
    on_victim = client_connections(victim, server.port)
    os.kill(victim, signal.SIGKILL)
    replaced_s = eventually(lambda: victim not in server.child_pids()
                            and len(server.child_pids()) == WORKERS)
    answered = load.result.requests
    eventually(lambda: load.result.requests >= answered + 4 * connections)
    load.stop()
    r = load.result
    return {"in_flight_at_signal": in_flight, "on_killed_worker": on_victim,
            "requests": r.requests + sum(r.errors.values()), "failed": load.failed(),
            "errors": {k: v for k, v in r.errors.items() if v},
            "worker_replaced_s": round(replaced_s, 2),
            "ok": on_victim > 0 and load.failed() <= on_victim
            and server.process.poll() is None}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--upstream-ms", type=float, default=300.0)
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    parser.add_argument("--close", action="store_true",
                        help="a new connection per request (more accepts near a worker's stop)")
    parser.add_argument("--worker-class", help="override gunicorn.conf.py's worker_class")
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run each scenario ``--rounds`` times on fresh processes; exit 1 if a judged one fails."""
    args = _parse_args(argv)
    runs: dict[str, Callable[[Server], dict[str, Any]]] = {
        "term": lambda s: term(s, args.connections, drained=True, close=args.close),
        "term-undrained": lambda s: term(s, args.connections, drained=False, close=args.close),
        "hup": lambda s: hup(s, args.connections, close=args.close),
        "kill": lambda s: kill(s, args.connections, close=args.close),
    }
    report: dict[str, list[dict[str, Any]]] = {}
    for name in args.only or SCENARIOS:
        for round_no in range(1, args.rounds + 1):
            with Processes() as procs:
                figures = runs[name](start(procs, args.upstream_ms, args.worker_class))
            report.setdefault(name, []).append(figures)
            print(f"{name} #{round_no}: {json.dumps(figures)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    failed = [name for name, rounds in report.items() for f in rounds if f.get("ok") is False]
    print("all judged rounds passed" if not failed else f"FAILED: {sorted(set(failed))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
