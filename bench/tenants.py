"""Tenant benchmark: can one client hurt another through the shared upstream path?

Each scenario starts its own service (gunicorn, gevent, ``WEB_CONCURRENCY=2``, two client keys
A and B) against the Scope3 simulator on loopback, and prints its figures (figure, target, got,
pass/fail):

- ``poison_<kind>``: client B sends a poisoned row every 100 ms for 4 s, each on a new
  connection (so both workers get them), while client A sends 5 new rows every 100 ms. The
  kinds are the simulator's (see ``POISON_KINDS``): a row that makes upstream answer 500 for
  any request holding it (``5xx``), refuse the whole request with 400, hang, answer 2.5 s late
  (``slow``), reset the connection, answer a body that is not JSON (``malformed``), leave rows
  out (``short``), answer the rows out of order with the poisoned row under another row's
  identifier (``identity``), or fail every row of the request (``row_error``). ``poison`` runs
  every kind. Figures: the share of A's rows answered from the cache on A's next request (1 s
  later, on the same keep-alive connection, so the same worker's cache), breaker openings,
  5xx answers to A, upstream requests per poisoned row (requests that carried one, per
  distinct poisoned row), and what B's poisoned rows got;
- ``flood``: client B sends 11 x 1000 new rows at once while A sends 5 new rows every 50 ms,
  upstream answering in 500 +- 50 ms; with the default bounds, a small ``MAX_PENDING_ROWS``
  and a rows-per-second bound. Figure: A's rows answered ``unavailable`` (target 0), and the
  reasons B's rows got;
- ``window``: 20 concurrent clients x 5 new rows (2,000 requests, after 80 unmeasured ones that
  warm the workers up), upstream 20 +- 5 ms, ``WAIT_FOR_MISSING=true`` and a 45 ms window.
  Figures: the share ``fetched``, upstream requests in flight per worker
  against the ceiling (``UPSTREAM_CONCURRENCY``). Then 200 requests/s of 5 new rows, a 1 s
  window and a 200 ms upstream, so that the limit bounds what is in flight: 5 s healthy and
  5 s with upstream answering 429 (``Retry-After: 0``) to 30% of requests; the adaptive limit,
  mean requests in flight and request rate.

Run from the project root::

    .venv/bin/python bench/tenants.py [--scenarios poison,flood,window] [--json out.json]

The poison runs take the simulator's latency (100 +- 30 ms) and slow kind (2.5 s late) unless
``--latency-ms``, ``--jitter-ms`` or ``--poison-slow-ms`` say otherwise: the mechanism must
not depend on those.
"""

from gevent import monkey

# The driver's HTTP calls must yield to each other: patch before anything opens a socket.
monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from driver import (  # noqa: E402
    ROWS_PER_REQUEST,
    UPSTREAM_TOKEN,
    WORKERS,
    Client,
    Reply,
    Report,
    RestartableSimulator,
    chosen_scenarios,
    closed_loop,
    cold_rows,
    finish,
    measure,
    print_figures,
    progress,
)
from loadgen import percentile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools.harness import MEASURE_APP, Processes, Server, free_port, stop  # noqa: E402
from devtools.probes import metric_total  # noqa: E402
from devtools.simulator import measure_row  # noqa: E402

KEY_A = "bench-key-a"
KEY_B = "bench-key-b"
# The simulator's poison kinds, each with the inventoryId text that marks its rows.
POISON_KINDS = ("5xx", "400", "hang", "slow", "reset", "malformed", "short", "identity",
                "row_error")
FLOOD_LATENCY_MS = 500
# Upstream slots per worker (the ceiling of the adaptive limit): the service's default.
CEILING = 4


# --- answers -----------------------------------------------------------------------------------

def reasons(reply: Reply) -> list[str]:
    """The ``reason`` of each unavailable row."""
    if reply.status != 200 or not isinstance(reply.document, dict):
        return []
    return [str(r.get("reason")) for r in reply.document.get("rows", [])
            if r.get("status") == "unavailable"]


def wrong_values(body: list[dict[str, Any]], reply: Reply) -> list[dict[str, Any]]:
    """The rows of ``reply`` answered (hit or fetched) with anything but the simulator's value
    for the same row of ``body``: another row's answer, or an error."""
    if reply.status != 200 or not isinstance(reply.document, dict):
        return []
    wrong = []
    for sent, got in zip(body, reply.document.get("rows", []), strict=False):
        if got.get("status") not in ("hit", "fetched", "error"):
            continue
        expected = measure_row(sent, {})["totalEmissions"]
        if got.get("status") == "error" or got.get("totalEmissions") != expected:
            wrong.append({"row": sent["inventoryId"], "got": got, "expected": expected})
    return wrong


def every(interval_s: float, duration_s: float, action: Callable[[int], Any]) -> list[Any]:
    """Spawn ``action(i)`` every ``interval_s`` for ``duration_s``; return every result."""
    greenlets = []
    started = time.monotonic()
    for i in range(int(duration_s / interval_s)):
        gevent.sleep(max(0.0, started + i * interval_s - time.monotonic()))
        greenlets.append(gevent.spawn(action, i))
    gevent.joinall(greenlets, timeout=60)
    return [g.value for g in greenlets if g.successful()]


# --- the benchmark -----------------------------------------------------------------------------

class TenantsBench:
    """Runs the scenarios against one simulator, with a fresh service for each."""

    def __init__(
        self, procs: Processes, report: Report, ceiling: int = CEILING,
        service_root: Path | None = None, poison_upstream: dict[str, float] | None = None,
    ) -> None:
        """Start the simulator; write figures into ``report``; ``ceiling``: UPSTREAM_CONCURRENCY.

        ``service_root`` runs the service from another checkout (a baseline to compare with).
        ``poison_upstream``: simulator settings of the poison runs (its latency, the slow
        kind's delay) instead of its defaults.
        """
        self.procs = procs
        self.report = report
        self.ceiling = ceiling
        self.service_root = service_root
        self.poison_upstream = dict(poison_upstream or {})
        self.upstream = RestartableSimulator(procs, free_port())
        self.upstream.start()

    def service(self, **env: str) -> Server:
        """A fresh service (cold cache) with 2 gevent workers, keys A and B, and ``env``."""
        full = {
            "ENV": "bench", "API_KEYS": f"{KEY_A},{KEY_B}", "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
            "SCOPE3_API_URL": self.upstream.url, "LOG_LEVEL": "INFO",
            "ACCESS_LOG": "sample:0.01", "WAIT_FOR_MISSING": "true",
            "UPSTREAM_CONCURRENCY": str(self.ceiling), **env,
        }
        command = None
        if self.service_root is not None:
            root = self.service_root.resolve()
            full["PYTHONPATH"] = str(root)
            command = ["sh", "-c", f'cd "{root}" && exec "{sys.executable}" -m gunicorn '
                       f'-c gunicorn.conf.py {MEASURE_APP}']
        return self.procs.service(None, env=full, workers=WORKERS, command=command)

    # poison -------------------------------------------------------------------------------------
    def poison(self) -> None:
        """B sends a poisoned row every 100 ms (each kind in turn) while A sends new rows."""
        for kind in POISON_KINDS:
            try:
                self.poison_run(kind)
            except Exception as exc:  # one kind that could not run must not hide the others
                self.report.add(f"1 poison ({kind})", "scenario crashed", "runs",
                                f"{type(exc).__name__}: {str(exc)[:200]}", False)

    def poison_run(self, kind: str) -> None:
        """B sends a row poisoned with ``kind`` every 100 ms while A sends new rows."""
        name = f"1 poison ({kind})"
        marker = f"poison{kind.replace('_', '')}"
        self.upstream.fresh(**{f"poison_{kind}": marker}, **self.poison_upstream)
        svc = self.service()
        run = uuid.uuid4().hex[:8]
        a_next: list[list[str]] = []
        a_missed: list[dict[str, Any]] = []
        a_http: Counter[int] = Counter()
        a_wrong: list[dict[str, Any]] = []
        b_first: list[list[str]] = []
        b_http: Counter[int] = Counter()
        try:
            def client_b(i: int) -> None:
                reply = measure(svc.port, [
                    {"inventoryId": f"{marker}-{run}-{i}.example", "utcDatetime": "2024-10-30",
                     "rowIdentifier": "p"}], token=KEY_B)
                b_http[reply.status] += 1
                b_first.append(reply.statuses())

            def client_a(i: int) -> None:
                # One keep-alive connection: its worker's cache is the one asked next time.
                body = cold_rows(f"a{run}-{i}", 0, ROWS_PER_REQUEST)
                client = Client(svc.port)
                try:
                    first = measure(svc.port, body, client, token=KEY_A)
                    gevent.sleep(1.0)
                    again = measure(svc.port, body, client, token=KEY_A)
                    a_http.update((first.status, again.status))
                    a_next.append(again.statuses())
                    a_wrong.extend(wrong_values(body, again))
                    if again.statuses() != ["hit"] * ROWS_PER_REQUEST:
                        a_missed.append({"first": first.statuses() + reasons(first),
                                         "next": again.statuses() + reasons(again),
                                         "trace": first.document.get("requestId")
                                         if isinstance(first.document, dict) else None})
                finally:
                    client.close()

            b = gevent.spawn(every, 0.1, 4.0, client_b)
            a = gevent.spawn(every, 0.1, 4.0, client_a)
            gevent.joinall([a, b])
            a_done = self.upstream.stats(keys="0", recent="0")
            # B's rows may still be being judged (a hang costs a timeout or two each).
            self.upstream.wait_quiet(timeout_s=60)
            b_again = Counter(s for i in range(0, 40, 4) for s in measure(
                svc.port, [{"inventoryId": f"{marker}-{run}-{i}.example",
                            "utcDatetime": "2024-10-30", "rowIdentifier": "p"}],
                token=KEY_B).statuses())
            samples = svc.metrics()
            opened = metric_total(samples, "measure_upstream_breaker_transitions_total", to="open")
            isolated = metric_total(samples, "measure_upstream_isolated_rows_total")
            cut = metric_total(samples, "measure_upstream_cut_sends_total")
        finally:
            stop(svc)
        stats = self.upstream.stats(recent="0")
        per_key = stats.pop("rows_per_key")
        poisoned = {key: count for key, count in per_key.items() if marker in key}
        clean = sum(count for key, count in per_key.items() if marker not in key)
        a_rows = [s for reply in a_next for s in reply]
        hits = a_rows.count("hit")
        share = hits / max(1, len(a_rows))
        a_5xx = sum(count for status, count in a_http.items() if status >= 500 or status == 0)
        self.report.add(name, f"A's new rows from the cache on A's next request "
                        f"({len(a_rows)} rows)", ">= 99%", f"{share:.1%}",
                        share >= 0.99 and len(a_rows) == 40 * ROWS_PER_REQUEST)
        self.report.add(name, "breaker openings (both workers)", "0", int(opened), opened == 0)
        self.report.add(name, "A's requests answered 5xx or not at all", "0", a_5xx, a_5xx == 0)
        self.report.add(name, "A's rows answered with another row's value (or an error)", "0",
                        len(a_wrong), not a_wrong)
        per_row = sum(poisoned.values()) / max(1, len(poisoned))
        self.report.add(name, "upstream requests per poisoned row (mean / most)", "-",
                        f"{per_row:.2f} / {max(poisoned.values(), default=0)} "
                        f"({len(poisoned)} rows)", None)
        self.report.add(name, "upstream requests (while A ran / in all); clean rows sent", "-",
                        f"{a_done['requests']} / {stats['requests']}; {clean}", None)
        self.report.add(name, "upstream requests cut short (both workers)", "-", int(cut), None)
        self.report.add(name, "B's poisoned rows: first answer / asked again (10)", "-",
                        f"{dict(Counter(s for reply in b_first for s in reply))} / "
                        f"{dict(b_again)}", None)
        self.report.details[f"poison_{kind}"] = {
            "a_next_statuses": dict(Counter(a_rows)), "a_missed": a_missed,
            "a_http": dict(a_http), "b_http": dict(b_http), "rows_isolated": isolated,
            "b_first_statuses": dict(Counter(s for reply in b_first for s in reply)),
            "b_next_statuses": dict(b_again), "upstream": stats, "cut": cut,
            "sends_per_poisoned_row": poisoned, "a_wrong": a_wrong[:20],
        }

    # flood --------------------------------------------------------------------------------------
    def flood(self) -> None:
        """B sends 11 x 1000 new rows at once while A sends 5 new rows every 50 ms."""
        for label, env in (("defaults", {}),
                           ("MAX_PENDING_ROWS=2000", {"MAX_PENDING_ROWS": "2000"}),
                           ("UPSTREAM_ROWS_PER_S=2000", {"UPSTREAM_ROWS_PER_S": "2000"})):
            self._flood_run(label, env)

    def _flood_run(self, label: str, env: dict[str, str]) -> None:
        name = f"5 flood ({label})"
        # A slow upstream keeps B's rows pending for a while, as Scope3 at its slowest does.
        self.upstream.fresh(latency_ms=FLOOD_LATENCY_MS, jitter_ms=50)
        svc = self.service(**env)
        run = uuid.uuid4().hex[:8]
        try:
            b = [gevent.spawn(measure, svc.port, cold_rows(f"b{run}-{i}", 0, 1000),
                              token=KEY_B) for i in range(11)]
            gevent.sleep(0.02)
            a_replies = every(0.05, 1.0, lambda i: measure(
                svc.port, cold_rows(f"a{run}-{i}", 0, ROWS_PER_REQUEST), token=KEY_A))
            gevent.joinall(b, timeout=60)
            b_replies = [g.value for g in b if g.successful()]
            self.upstream.wait_quiet()
        finally:
            stop(svc)
        a_statuses = Counter(s for r in a_replies for s in r.statuses())
        b_statuses = Counter(s for r in b_replies for s in r.statuses())
        b_reasons = Counter(x for r in b_replies for x in reasons(r))
        a_rows = sum(a_statuses.values())
        self.report.add(name, f"A's new rows unavailable (of {a_rows})", "0",
                        a_statuses["unavailable"],
                        a_statuses["unavailable"] == 0 and a_rows == 20 * ROWS_PER_REQUEST)
        self.report.add(name, "B's rows: statuses / unavailable reasons", "-",
                        f"{dict(b_statuses)} / {dict(b_reasons)}", None)
        self.report.details[f"flood {label}"] = {
            "a_statuses": dict(a_statuses), "b_statuses": dict(b_statuses),
            "b_reasons": dict(b_reasons),
        }

    # window -------------------------------------------------------------------------------------
    def window(self, requests: int = 2000, clients: int = 20) -> None:
        """20 clients x 5 new rows at 20 ms upstream: fetched share; then the limiter and 429s."""
        name = f"6 wait window ({self.ceiling} slots)"
        svc = self.service(WAIT_WINDOW_MS="45")
        run = uuid.uuid4().hex[:8]
        try:
            self.upstream.fresh(latency_ms=20, jitter_ms=5)
            # A running service: workers that have served and fetched before (connections to
            # upstream open, code paths warm). Not measured.
            closed_loop(svc.port, (cold_rows(f"warm{run}-{i}", 0, ROWS_PER_REQUEST)
                                   for i in range(4 * clients)), clients, token=KEY_A)
            self.upstream.fresh(latency_ms=20, jitter_ms=5)
            fast = closed_loop(svc.port, (cold_rows(f"w{run}-{i}", 0, ROWS_PER_REQUEST)
                                          for i in range(requests)), clients, token=KEY_A)
            healthy = self.upstream.stats(keys="0", recent="0", by_agent="1")
            # The same clients asking for cached rows: what the machine itself costs a request.
            hot = cold_rows(f"w{run}-0", 0, ROWS_PER_REQUEST)
            hits = closed_loop(svc.port, (hot for _ in range(requests)), clients, token=KEY_A)
            self.upstream.wait_quiet()
        finally:
            stop(svc)
        fast_statuses = Counter(s for r in fast for s in r.statuses())
        share = fast_statuses["fetched"] / (requests * ROWS_PER_REQUEST)
        most = max(healthy["max_in_flight_by_agent"].values(), default=0)
        self.report.add(name, f"20 ms upstream: cold rows fetched ({requests * ROWS_PER_REQUEST})",
                        ">= 99%", f"{share:.1%}", share >= 0.99)
        hit_ms = sorted(r.elapsed_s * 1000 for r in hits if r.status == 200)
        fast_ms = sorted(r.elapsed_s * 1000 for r in fast if r.status == 200)
        self.report.add(name, "cold requests p50 / p99; all-hit requests p50 / p99", "-",
                        f"{percentile(fast_ms, 50):.1f} / {percentile(fast_ms, 99):.1f}; "
                        f"{percentile(hit_ms, 50):.1f} / {percentile(hit_ms, 99):.1f} ms", None)
        self.report.add(name, "upstream requests in flight per worker, most", f"<= {self.ceiling}",
                        most, most <= self.ceiling)
        begun = min((r.sent_at for r in fast), default=0.0)
        by_second: dict[int, Counter[str]] = {}
        for reply in fast:
            by_second.setdefault(int(reply.sent_at - begun), Counter()).update(reply.statuses())
        self.report.details["window"] = {
            "fetched_share_by_second": {
                second: round(counts["fetched"] / max(1, sum(counts.values())), 3)
                for second, counts in sorted(by_second.items())
            },
            "fast_statuses": dict(fast_statuses),
            "healthy": {k: healthy[k] for k in ("requests", "rows", "by_status",
                                                "max_in_flight_by_agent")},
        }
        self._limiter_under_429s()

    def _limiter_under_429s(self, rate: float = 200.0, phase_s: float = 5.0) -> None:
        """Requests of 5 new rows arriving at ``rate`` per second, a 1 s window and a 200 ms
        upstream (so that the limit, not the window or the CPU, bounds what is in flight),
        upstream healthy and then answering 429 to 30% of requests."""
        name = f"6 limiter ({self.ceiling} slots)"
        svc = self.service(WAIT_WINDOW_MS="1000")
        run = uuid.uuid4().hex[:8]
        phases: dict[str, dict[str, Any]] = {}
        try:
            for phase, changes in (("healthy", {}),
                                   ("429s", {"status_429_rate": 0.3, "retry_after": 0})):
                self.upstream.fresh(latency_ms=200, jitter_ms=20, **changes)
                started = time.monotonic()
                every(1.0 / rate, phase_s, lambda i, phase=phase: measure(
                    svc.port, cold_rows(f"{phase}{run}-{i}", 0, ROWS_PER_REQUEST),
                    token=KEY_A))
                elapsed = time.monotonic() - started
                stats = self.upstream.stats(keys="0", recent="0", by_agent="1")
                phases[phase] = {
                    "limit": metric_total(svc.metrics(), "measure_upstream_concurrency_limit"),
                    "requests_per_s": stats["requests"] / elapsed,
                    "mean_in_flight": sum(stats["busy_s_by_agent"].values()) / elapsed,
                    "most_in_flight": max(stats["max_in_flight_by_agent"].values(), default=0),
                    "by_status": stats["by_status"],
                }
            self.upstream.wait_quiet()
        finally:
            stop(svc)
        healthy, limited = phases["healthy"], phases["429s"]
        ceiling = self.ceiling
        self.report.add(name, "adaptive limit, sum of 2 workers: healthy / 30% 429s",
                        "lower with 429s", f"{healthy['limit']:g} / {limited['limit']:g}",
                        limited["limit"] < healthy["limit"])
        self.report.add(name, "mean upstream requests in flight, 2 workers: healthy / 429s",
                        "lower with 429s", f"{healthy['mean_in_flight']:.2f} / "
                        f"{limited['mean_in_flight']:.2f}",
                        limited["mean_in_flight"] < healthy["mean_in_flight"])
        self.report.add(name, "upstream requests/s: healthy / with 429s", "-",
                        f"{healthy['requests_per_s']:.0f} / {limited['requests_per_s']:.0f}",
                        None)
        most = max(healthy["most_in_flight"], limited["most_in_flight"])
        self.report.add(name, "upstream requests in flight per worker, most", f"<= {ceiling}",
                        most, most <= ceiling)
        self.report.details["limiter"] = phases


def _poison_scenario(kind: str) -> Callable[[TenantsBench], None]:
    def scenario(bench: TenantsBench) -> None:
        bench.poison_run(kind)

    scenario.__doc__ = f"B sends a row poisoned with {kind!r} every 100 ms while A sends new rows."
    return scenario


SCENARIOS: dict[str, Callable[[TenantsBench], None]] = {
    "poison": TenantsBench.poison,
    **{f"poison_{kind}": _poison_scenario(kind) for kind in POISON_KINDS},
    "flood": TenantsBench.flood, "window": TenantsBench.window,
}


def run(args: argparse.Namespace) -> Report:
    """Start the simulator, run the chosen scenarios, stop everything; return the report."""
    report = Report()
    report.details["meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/tenants.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "python": platform.python_version(), "workers": WORKERS,
        "service_root": str(args.service_root or "this checkout"),
        "loadavg_before": os.getloadavg(),
    }
    with Processes() as procs:
        poison_upstream = {name: value for name, value in (
            ("latency_ms", args.latency_ms), ("jitter_ms", args.jitter_ms),
            ("poison_slow_ms", args.poison_slow_ms)) if value is not None}
        report.details["meta"]["poison_upstream"] = poison_upstream
        bench = TenantsBench(procs, report, args.ceiling, args.service_root, poison_upstream)
        for key in args.scenarios:
            progress(f"{key}: {SCENARIOS[key].__doc__}")
            try:
                SCENARIOS[key](bench)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                report.add(key, "scenario crashed", "runs", f"{type(exc).__name__}: {exc}",
                           False)
    report.details["meta"]["loadavg_after"] = os.getloadavg()
    return report


def print_table(report: Report) -> None:
    """Print the figures as a table."""
    meta = report.details["meta"]
    print_figures(report, f"tenants, {meta['date']}, {meta['workers']} gevent workers, "
                  f"{meta['cpus']} CPUs, load {meta['loadavg_before'][0]:.2f} -> "
                  f"{meta['loadavg_after'][0]:.2f}", (22, 58, 16, 30))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scenarios", default="poison,flood,window",
                        help=f"comma-separated scenarios to run (of {', '.join(SCENARIOS)})")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report here")
    parser.add_argument("--service-root", type=Path, metavar="DIR",
                        help="run the service from this checkout instead (a baseline)")
    parser.add_argument("--ceiling", type=int, default=CEILING,
                        help=f"UPSTREAM_CONCURRENCY of the services (default {CEILING})")
    for flag, what in (("--latency-ms", "upstream's latency"), ("--jitter-ms", "its jitter"),
                       ("--poison-slow-ms", "how late the slow kind answers")):
        parser.add_argument(flag, type=float, default=None,
                            help=f"poison runs: {what} (default: the simulator's)")
    args = parser.parse_args(argv)
    args.scenarios = chosen_scenarios(parser, args.scenarios, SCENARIOS)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a figure missed its target."""
    args = _parse_args(argv)
    report = run(args)
    print_table(report)
    return finish(report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
