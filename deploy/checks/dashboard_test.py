"""``make dashboard-test``: every query of the Grafana dashboard, answered by a real Prometheus.

Starts the Scope3 simulator, the service (gunicorn, 2 gevent workers, from the checkout) and
Debian's ``prometheus`` scraping it every second, all on loopback. Then drives traffic in phases,
so that every panel has something to show: hits and misses, stale hits, evictions, rejections and
expirations (a small cache with a short TTL), coalesced misses, a slow upstream with some 429s
(wait-window timeouts, requests in flight, retries), then an upstream answering 500 (the breaker
opening, unavailable rows) and its recovery (the breaker half-opening and closing).

Each query of each panel of ``deploy/grafana-dashboard.json``, and each PromQL example of the
README, is then evaluated through
Prometheus' HTTP API, with the dashboard's variables interpolated as Grafana does
(``$job``/``$instance`` as "All" and as the values its variable queries find, ``$__rate_interval``
as four scrape intervals). A query passes when it parses and returns at least one series with a
finite, non-zero value over the run: a panel that would draw only zeros or nothing fails.

The alert rules ``deploy/prometheus-rules.yml`` are checked with ``promtool check rules``, their
unit tests with ``promtool test rules``, and loaded into the live Prometheus: every rule must
evaluate without error, and the breaker alert must be pending or firing while the breaker is open.

Without ``prometheus`` and not root (no apt): one line says why and it exits 0, except in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    ROOT,
    UPSTREAM_TOKEN,
    Processes,
    Skip,
    ensure_commands,
    free_port,
    measure_rows,
    say,
    skip_or_fail,
    wait_until,
)

NAME = "dashboard-test"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
README = ROOT / "README.md"
RULES = ROOT / "deploy" / "prometheus-rules.yml"
RULES_TESTS = ROOT / "deploy" / "prometheus-rules.test.yml"
JOB = "measure-cache"
SCRAPE_INTERVAL_S = 1
# Grafana: max($__interval + scrape interval, 4 * scrape interval); over a short time range the
# second term wins.
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
WORKERS = 2
SERVICE_ENV = {
    "API_KEYS": API_KEY,
    "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
    "WEB_CONCURRENCY": str(WORKERS),
    "WAIT_FOR_MISSING": "true",
    "WAIT_WINDOW_MS": "100",
    # Small and short-lived on purpose: evictions, rejections, stale hits and expirations.
    "CACHE_MAX_COST": "3000",
    "CACHE_TTL_SECONDS": "3",
    "CACHE_STALE_SECONDS": "3",
    "UPSTREAM_RETRIES": "1",
    "UPSTREAM_TIMEOUT_MS": "1000",
    "BREAKER_FAILURES": "3",
    "BREAKER_COOLDOWN_S": "2",
    "ACCESS_LOG": "off",
    "LOG_LEVEL": "WARNING",
}

# Label values the phases drive, by metric: where a panel splits a metric by that label, each
# value must draw non-zero data. A first increment lost to rate() (a series born at 1) fails here.
DRIVEN_LABELS: dict[str, tuple[str, frozenset[str]]] = {
    "flask_http_request_duration_seconds": ("status", frozenset({"200", "401"})),
    "flask_http_request_total": ("status", frozenset({"200", "401"})),
    "measure_upstream_requests_total": ("outcome", frozenset({"ok", "http_429", "http_5xx"})),
    "measure_upstream_unavailable_rows_total": ("reason", frozenset({"breaker_open"})),
    "measure_upstream_breaker_transitions_total": (
        "to", frozenset({"open", "half_open", "closed"})),
    "measure_wait_window_total": ("outcome", frozenset({"all_fetched", "timed_out"})),
}


@dataclass(frozen=True)
class Query:
    """One target of one panel."""

    panel: str
    ref_id: str
    expr: str


def dashboard_queries(dashboard: dict[str, Any]) -> tuple[int, list[Query]]:
    """The number of graph panels (rows excluded) and every target's query, in dashboard order."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    count, queries = 0, []
    for panel in panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        count += 1
        targets = panel.get("targets") or []
        if not targets:
            raise AssertionError(f"panel {panel.get('title')!r} has no query")
        for target in targets:
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                raise AssertionError(f"panel {panel.get('title')!r} has a target with no expr")
            queries.append(Query(str(panel.get("title")), str(target.get("refId")), expr))
    return count, queries


def readme_queries(text: str) -> list[Query]:
    """The README's ``promql`` examples: each titled by the comment above it.

    An expression runs on while its brackets are open or the next line starts with an operator.
    """
    queries: list[Query] = []
    for block in re.findall(r"```promql\n(.*?)```", text, flags=re.DOTALL):
        title, lines = "", list[str]()
        for line in [*block.splitlines(), ""]:
            stripped = line.strip()
            joined = " ".join(lines)
            open_brackets = sum(joined.count(c) for c in "([{") - sum(joined.count(c)
                                                                     for c in ")]}")
            continues = bool(lines) and (open_brackets > 0 or stripped[:1] in {"/", "+", "-", "*"})
            if lines and not continues:
                queries.append(Query(f"README: {title}", str(len(queries) + 1), joined))
                lines = []
            if stripped.startswith("#"):
                title = stripped.lstrip("# ")
            elif stripped:
                lines.append(stripped)
    return queries


def interpolate(expr: str, variables: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` as Grafana does; an unknown variable is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into ``=~"..."``: escaped, joined by ``|``."""
    escaped = [re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


class Prometheus:
    """A client of Prometheus' HTTP API."""

    def __init__(self, url: str) -> None:
        """Talk to the server at ``url``."""
        self.url = url

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; return ``data``, or raise with Prometheus' error."""
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        document = response.json()
        if document.get("status") != "success":
            raise AssertionError(f"{document.get('errorType')}: {document.get('error')}")
        return document["data"]

    def label_values(self, metric: str, label: str, match: str = "") -> list[str]:
        """Grafana's ``label_values(metric{match}, label)``, through the series API."""
        series = self.api("series", **{"match[]": f"{metric}{{{match}}}" if match else metric})
        return sorted({item[label] for item in series if label in item})


class DashboardTraffic:
    """Clients sending measure requests from threads until stopped; counts what they got."""

    def __init__(self, url: str) -> None:
        """Send to the service at ``url``."""
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: dict[str, int] = {}
        self.row_statuses: dict[str, int] = {}
        self.sent = 0
        self._serial = 0
        self._threads: list[threading.Thread] = []

    def fresh(self, prefix: str, count: int) -> list[dict[str, Any]]:
        """Rows never asked before (weight 0: cost 100 each, so they churn the small cache)."""
        with self.lock:
            self._serial += 1
            serial = self._serial
        return measure_rows(f"{prefix}-{os.getpid()}-{serial}", count, weight=0)

    def post(self, session: requests.Session, rows: list[dict[str, Any]],
             key: str = API_KEY) -> None:
        """One request; its HTTP status and row statuses are counted, failures too."""
        try:
            response = session.post(f"{self.url}/v2/measure", json={"rows": rows}, timeout=10,
                                    headers={"Authorization": f"Bearer {key}"})
            status = str(response.status_code)
            rows_back = response.json().get("rows", []) if response.ok else []
        except (requests.RequestException, ValueError) as exc:
            status, rows_back = type(exc).__name__, []
        with self.lock:
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            for row in rows_back:
                name = str(row.get("status"))
                self.row_statuses[name] = self.row_statuses.get(name, 0) + 1

    def start(self, clients: int, pause_s: float) -> None:
        """``clients`` threads, each sending a mixed request, then pausing ``pause_s``."""
        hot = measure_rows(f"hot-{os.getpid()}", 40, weight=100)

        def client(number: int) -> None:
            with requests.Session() as session:
                turn = 0
                while not self.stop.is_set():
                    turn += 1
                    # Hot rows (cheap, cost 1) hit; fresh ones miss and churn the cache.
                    rows = [hot[(number * 7 + turn + i) % len(hot)] for i in range(6)]
                    self.post(session, rows + self.fresh("cold", 3))
                    if turn % 10 == 0:
                        self.post(session, self.fresh("bad", 1), key="not-a-key")
                        session.get(f"{self.url}/openapi.json", timeout=10)
                    self.stop.wait(pause_s)

        self._threads = [threading.Thread(target=client, args=(n,), daemon=True)
                         for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def coalesce(self, rounds: int) -> None:
        """Rounds of four clients asking for the same new rows at once: misses that coalesce."""
        for _ in range(rounds):
            rows = self.fresh("shared", 4)
            barrier = threading.Barrier(4)

            def one(rows: list[dict[str, Any]] = rows,
                    barrier: threading.Barrier = barrier) -> None:
                with requests.Session() as session:
                    barrier.wait(timeout=10)
                    self.post(session, rows)

            threads = [threading.Thread(target=one) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=20)

    def finish(self) -> None:
        """Stop the clients and wait for them."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=20)


def run_phases(load: DashboardTraffic, simulator: str, phase_s: float,
               on_breaker_open: Callable[[], None]) -> list[tuple[str, float]]:
    """Drive the service through its situations; return (phase, start time) pairs."""

    def control(**changes: Any) -> None:
        requests.post(f"{simulator}/_control", json=changes, timeout=5).raise_for_status()

    marks: list[tuple[str, float]] = []

    def phase(name: str) -> None:
        marks.append((name, time.time()))
        say(NAME, f"phase {name}")

    phase("normal: hits, misses, coalesced misses, stale hits, evictions")
    load.start(clients=3, pause_s=0.05)
    load.coalesce(rounds=10)
    time.sleep(phase_s)
    load.coalesce(rounds=10)

    # A 5xx is judged by the fetcher (split, re-sent), not retried by the client: the retries
    # come from 429s, which the client retries after their Retry-After.
    phase("slow upstream, some 429s: wait-window timeouts, requests in flight, retries")
    control(latency_ms=300, jitter_ms=50, status_429_rate=0.3, retry_after=0.2)
    time.sleep(phase_s / 2)

    phase("upstream answers 500: breaker open, unavailable rows")
    control(latency_ms=20, jitter_ms=5, status_429_rate=0.0, mode="500")
    time.sleep(phase_s / 2)
    on_breaker_open()

    phase("recovery: breaker half-open, then closed")
    control(mode="ok")
    time.sleep(phase_s)
    load.finish()
    marks.append(("end", time.time()))
    return marks


def evaluate(prom: Prometheus, queries: list[Query], variables: dict[str, str],
             start: float, end: float, driven: bool = True) -> list[dict[str, Any]]:
    """Each query, instant (does it parse) and over [start, end] (what would the panel draw)."""
    results = []
    for query in queries:
        expr = interpolate(query.expr, variables)
        result: dict[str, Any] = {"panel": query.panel, "ref": query.ref_id, "expr": expr}
        try:
            prom.api("query", query=expr, time=end)
            data = prom.api("query_range", query=expr, start=start, end=end,
                            step=SCRAPE_INTERVAL_S)
            series = data["result"]
            values = [[float(v) for _, v in item["values"]] for item in series]
            drawn = [any(math.isfinite(v) and v != 0 for v in vs) for vs in values]
            result["series"] = len(series)
            result["drawn"] = sum(drawn)
            result["labels"] = [item["metric"] for item in series]
            result["zero_only"] = [item["metric"]
                                   for item, ok in zip(series, drawn, strict=True) if not ok]
            result["missing"] = sorted(missing_driven(expr, series, drawn)) if driven else []
            result["points"] = sum(1 for vs in values for v in vs if math.isfinite(v))
            result["error"] = None
        except AssertionError as exc:
            result.update(series=0, drawn=0, points=0, missing=[], error=str(exc))
        results.append(result)
    return results


def missing_driven(expr: str, series: list[dict[str, Any]], drawn: list[bool]) -> set[str]:
    """``label=value`` pairs the traffic drove that this query splits by but did not draw."""
    missing: set[str] = set()
    for metric, (label, wanted) in DRIVEN_LABELS.items():
        if metric not in expr or not any(label in item["metric"] for item in series):
            continue
        seen = {item["metric"].get(label) for item, ok in zip(series, drawn, strict=True) if ok}
        missing.update(f"{label}={value}" for value in wanted - seen)
    return missing


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; its output is kept for the report."""
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    """Run the dashboard test; 0 when every query passed (or, outside CI, when skipped)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=12.0,
                        help="length of the normal and recovery phases (the others: half)")
    parser.add_argument("--json", action="store_true", help="print every result as JSON")
    args = parser.parse_args(argv)
    try:
        ensure_commands(NAME, {"prometheus": "prometheus", "promtool": "prometheus"})
    except Skip as exc:
        return skip_or_fail(NAME, str(exc))

    passed, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(what)
        say(NAME, f"{'ok' if ok else 'FAILED'}: {what}")

    # The rules first: cheap, and no service needed.
    checked = promtool("check", "rules", str(RULES))
    verdict = (checked.stdout.strip().splitlines() or [""])[-1].strip()
    check(checked.returncode == 0,
          f"promtool check rules {RULES.relative_to(ROOT)}: {verdict}"
          + (f" {checked.stderr.strip()}" if checked.returncode else ""))
    tested = promtool("test", "rules", str(RULES_TESTS))
    check(tested.returncode == 0,
          f"promtool test rules {RULES_TESTS.relative_to(ROOT)}"
          + (f": {tested.stdout.strip()[-1500:]} {tested.stderr.strip()[-500:]}"
             if tested.returncode else ""))

    panel_count, queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    work = Path(tempfile.mkdtemp(prefix="measure-dashboard-test-"))
    processes = Processes(work)
    started = time.monotonic()
    try:
        simulator = processes.simulator(latency_ms=20, jitter_ms=5, token=UPSTREAM_TOKEN)
        service = processes.service(simulator, env=SERVICE_ENV)
        port, url = service.port, service.url

        prom_port = free_port()
        config = work / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                       "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [
                {"targets": [f"127.0.0.1:{port}"]}]}],
        }))
        processes.start("prometheus", [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn",
        ], port=prom_port, ready_path="/-/ready")
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait_until(lambda: prom.api("query", query=f'up{{job="{JOB}"}} == 1')["result"], 30,
                   "Prometheus scraping the service", interval_s=0.5)

        breaker_alert: list[str] = []

        def on_breaker_open() -> None:
            alerts = prom.api("alerts")["alerts"]
            breaker_alert.extend(a["state"] for a in alerts
                                 if a["labels"].get("alertname") == "MeasureUpstreamBreakerOpen")

        load = DashboardTraffic(url)
        marks = run_phases(load, simulator.url, args.phase_seconds, on_breaker_open)
        time.sleep(2 * SCRAPE_INTERVAL_S + 0.5)
        start, end = marks[0][1], time.time()
        say(NAME, f"load: {load.sent} requests, HTTP {dict(sorted(load.statuses.items()))}, "
            f"rows {dict(sorted(load.row_statuses.items()))}")

        # The dashboard's variables, by its own variable queries.
        jobs = prom.label_values("measure_cache_hits_total", "job")
        instances = prom.label_values("measure_cache_hits_total", "instance",
                                      f'job=~"{regex_value(jobs)}"' if jobs else "")
        check(jobs == [JOB] and instances == [f"127.0.0.1:{port}"],
              f"variable queries find job {jobs} and instance {instances}")
        variables = {"__rate_interval": RATE_INTERVAL}
        selections = {
            "All": {**variables, "job": ".*", "instance": ".*"},
            "selected": {**variables, "job": regex_value(jobs or [JOB]),
                         "instance": regex_value(instances or ["none"])},
        }
        by_selection = {name: evaluate(prom, queries, chosen, start, end)
                        for name, chosen in selections.items()}
        # Users copy the README's examples: each must parse and draw data too (some filter out
        # label values on purpose, so the driven values are not asked of them).
        by_selection["README"] = evaluate(prom, readme_queries(README.read_text()), {},
                                          start, end, driven=False)
        for name, results in by_selection.items():
            for result in results:
                check(result["error"] is None and result["drawn"] > 0 and not result["missing"],
                      f"[{name}] {result['panel']} / {result['ref']}: "
                      + (result["error"] or f"{result['series']} series, {result['drawn']} with "
                         f"non-zero data, {result['points']} points")
                      + (f"; no data for {', '.join(result['missing'])}"
                         if result["missing"] else ""))

        rules = prom.api("rules")["groups"]
        rule_list = [rule for group in rules for rule in group["rules"]]
        broken = [f"{rule['name']}: {rule.get('lastError')}" for rule in rule_list
                  if rule.get("health") != "ok"]
        check(bool(rule_list) and not broken,
              f"{len(rule_list)} rules loaded by Prometheus evaluate without error"
              + (f"; broken: {broken}" if broken else ""))
        check(any(state in {"pending", "firing"} for state in breaker_alert),
              f"MeasureUpstreamBreakerOpen is pending or firing while the breaker is open "
              f"({breaker_alert or 'not active'})")

        all_results = by_selection["All"]
        summary = {
            "panels": panel_count, "queries": len(queries),
            "readme_queries": len(by_selection["README"]),
            "series": sum(r["series"] for r in all_results),
            "series_with_data": sum(r["drawn"] for r in all_results),
            "queries_with_data": sum(1 for r in all_results if r["drawn"] > 0),
            "rules": len(rule_list), "requests": load.sent,
            "seconds": round(time.monotonic() - started, 1),
        }
        if args.json:
            print(json.dumps({"results": by_selection}, indent=1))
        print(json.dumps({"dashboard_test": summary}), flush=True)
        say(NAME, f"{panel_count} panels, {len(queries)} queries: "
            f"{summary['queries_with_data']} drew data, {summary['series']} series "
            f"({summary['series_with_data']} with non-zero data), each also with $job/$instance "
            f"selected; {summary['readme_queries']} README examples; {len(rule_list)} rules; "
            f"{summary['seconds']} s")
    except (AssertionError, RuntimeError, requests.RequestException, OSError) as exc:
        failures.append(str(exc))
        say(NAME, f"FAILED: {exc}")
        for log in sorted(processes.log_dir.glob("*.log")):
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            if tail:
                say(NAME, f"last lines of {log.stem}:\n{tail}")
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{NAME}: {passed} passed, {len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
