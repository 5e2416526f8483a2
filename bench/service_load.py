"""Service load benchmark: what does the hit path cost over a bare Flask handler?

It starts the Scope3 simulator, the service and the floor app (``bench/floor_app.py``) on free
loopback ports, the service and the floor under the same ``gunicorn.conf.py`` and environment
(gevent, ``WEB_CONCURRENCY=2``, ``ACCESS_LOG=sample:0.01``, auth on). It warms the cache until
a 5-row body is all hits, then measures, for the floor and the service in turn:

1. saturation req/s (closed loop: wrk if installed, else ``bench/loadgen.py``);
2. p50/p99 at a fixed offered rate, half the floor's saturation rate (always the open-loop
   mode of ``bench/loadgen.py``: plain wrk has no rate mode, and latency is measured from when
   each request was due, so stalls are not hidden by coordinated omission);
3. the miss path: cold rows per second the service absorbs (distinct cold keys,
   ``WAIT_FOR_MISSING=false``), with upstream in-flight requests sampled against the bound.

Every process it starts is stopped at the end. Run from the project root::

    .venv/bin/python bench/service_load.py [--duration 10] [--connections 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from procs import ROOT, Processes, Server

API_KEY = "bench-key"
UPSTREAM_TOKEN = "bench-upstream-token"
ROWS_PER_REQUEST = 5
UPSTREAM_CONCURRENCY = 4
THROUGHPUT_TARGET = 0.9
P99_TARGET = 1.5
LOADGEN = ROOT / "bench" / "loadgen.py"
WRK_SCRIPT = ROOT / "bench" / "wrk" / "measure.lua"
WRK_INSTALL_HINT = "wrk not found; using bench/loadgen.py. For wrk: apt-get install -y wrk"
STATUS_TALLY = r'"status":\s*"(\w+)"'


def hot_body() -> dict[str, Any]:
    """The 5-row body the hit path is measured with."""
    return {"rows": [_row(f"site{i}.com", f"r{i}") for i in range(1, ROWS_PER_REQUEST + 1)]}


def cold_body_template(nonce: str) -> str:
    """A body whose ``{seq}`` placeholder makes 5 keys that no earlier request asked for."""
    rows = [_row(f"cold-{nonce}-{{seq}}-{i}.example", f"r{i}")
            for i in range(1, ROWS_PER_REQUEST + 1)]
    return json.dumps({"rows": rows})


def _row(inventory_id: str, row_id: str) -> dict[str, Any]:
    return {"inventoryId": inventory_id, "utcDatetime": "2024-10-30", "impressions": 1000,
            "country": "US", "channel": "web", "deviceType": "pc", "rowIdentifier": row_id}


# --- HTTP helpers for set-up and checks (not on the measured path) --------------------------------

def http_json(url: str, body: Any = None, *, auth: bool = False) -> Any:
    """GET (or POST ``body`` as JSON) and decode the JSON answer; raise on non-2xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", f"Bearer {API_KEY}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def row_statuses(service: Server, body: dict[str, Any]) -> list[str]:
    """The per-row statuses the service answers for ``body``."""
    answer = http_json(service.url + "/v2/measure", body, auth=True)
    return [row["status"] for row in answer["rows"]]


def warm(service: Server, body: dict[str, Any], timeout_s: float = 15.0) -> None:
    """Send ``body`` to every worker until it is all hits several times in a row."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    # Requests land on either worker, so ask until a run of answers is all hits.
    while streak < 20:
        if time.monotonic() > deadline:
            raise SystemExit(f"warm-up: the hot body is not all hits after {timeout_s:.0f} s")
        if set(row_statuses(service, body)) == {"hit"}:
            streak += 1
        else:
            streak = 0
            time.sleep(0.05)


def metric_total(server: Server, name: str) -> float | None:
    """Sum of every sample of ``name`` on ``/metrics`` (None when it is not exposed)."""
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    values = [float(v) for v in pattern.findall(text)]
    return sum(values) if values else None


# --- load generators ------------------------------------------------------------------------------

class Generators:
    """Runs wrk or bench/loadgen.py as child processes and parses their JSON summaries."""

    def __init__(self, body_file: Path, use_wrk: bool) -> None:
        self.body_file = body_file
        self.use_wrk = use_wrk

    def saturate(self, server: Server, *, connections: int, duration_s: float) -> dict[str, Any]:
        """Closed loop at ``connections`` for ``duration_s``."""
        if self.use_wrk:
            return self._wrk(server, connections, duration_s)
        return self._loadgen(server, ["-c", str(connections), "-d", str(duration_s)])

    def fixed_rate(self, server: Server, *, rate: float, connections: int,
                   duration_s: float) -> dict[str, Any]:
        """Open loop at ``rate`` req/s; latency measured from each request's due time."""
        return self._loadgen(server, ["-c", str(connections), "-d", str(duration_s),
                                      "--rate", f"{rate:.1f}"])

    def cold(self, server: Server, template_file: Path, *, connections: int,
             duration_s: float) -> dict[str, Any]:
        """Closed loop where every request carries 5 new keys; tallies row statuses."""
        return self._loadgen(server, ["-c", str(connections), "-d", str(duration_s),
                                      "--tally", STATUS_TALLY], body=template_file, template=True)

    def _loadgen(self, server: Server, extra: list[str], *, body: Path | None = None,
                 template: bool = False) -> dict[str, Any]:
        body_flag = "--body-template-file" if template else "--body-file"
        argv = [sys.executable, str(LOADGEN), server.url + "/v2/measure", "--json",
                "-H", f"Authorization: Bearer {API_KEY}", body_flag,
                str(body or self.body_file), *extra]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        summary: dict[str, Any] = json.loads(out)
        summary["generator"] = "loadgen"
        return summary

    def _wrk(self, server: Server, connections: int, duration_s: float) -> dict[str, Any]:
        threads = min(connections, os.cpu_count() or 1)
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s",
                "-s", str(WRK_SCRIPT), server.url + "/v2/measure"]
        env = {**os.environ, "WRK_JSON": "1", "MEASURE_API_KEY": API_KEY,
               "MEASURE_BODY": self.body_file.read_text()}
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
        line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
        raw = json.loads(line.removeprefix("WRK_JSON "))
        errors = raw["errors"]
        return {"generator": "wrk", "connections": connections, "duration_s": raw["duration_s"],
                "requests": raw["requests"], "rps": raw["rps"], "non_2xx": raw["non_2xx"],
                "errors": {"connect": errors["connect"], "io": errors["read"] + errors["write"],
                           "timeout": errors["timeout"], "protocol": 0},
                "latency_ms": raw["latency_ms"]}


# --- the measurements -----------------------------------------------------------------------------

def alternate(rounds: int, targets: dict[str, Server],
              run: Callable[[Server], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Run each target in turn, ``rounds`` times, so drifting machine load hits both alike."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, server in targets.items():
            results[name].append(run(server))
    return results


def median_of(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], float]) -> float:
    """Median of one figure over a target's rounds."""
    return float(statistics.median(pick(r) for r in runs))


@contextlib.contextmanager
def sampling(interval_s: float, sample: Callable[[], float | None]) -> Iterator[list[float]]:
    """Call ``sample`` every ``interval_s`` in a thread while the block runs; collect values."""
    values: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            value = sample()
            if value is not None:
                values.append(value)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield values
    finally:
        stop.set()
        thread.join()


def upstream_totals(sim: Server) -> dict[str, int]:
    """Requests and rows the simulator has received so far."""
    stats = http_json(sim.url + "/_stats?keys=0&recent=0")
    return {"requests": int(stats["requests"]), "rows": int(stats["rows"]),
            "rows_answered": int(stats["rows_answered"])}


def wait_for_drain(sim: Server, quiet_s: float = 1.0, timeout_s: float = 30.0) -> dict[str, int]:
    """Wait until the simulator has answered every row it got and no new ones arrive."""
    deadline = time.monotonic() + timeout_s
    last = upstream_totals(sim)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = upstream_totals(sim)
        if now != last or now["rows"] != now["rows_answered"]:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return last


def miss_path(gens: Generators, service: Server, sim: Server, *, workers: int,
              connections: int, duration_s: float, work_dir: Path) -> dict[str, Any]:
    """Drive cold keys only; report what the service accepted and what reached upstream."""
    nonce = uuid.uuid4().hex[:8]
    template_file = work_dir / "cold.json"
    template_file.write_text(cold_body_template(nonce))
    http_json(sim.url + "/_reset", {})
    started = time.monotonic()
    with sampling(0.05, lambda: metric_total(service, "measure_upstream_in_flight")) as in_flight:
        load = gens.cold(service, template_file, connections=connections, duration_s=duration_s)
        during = upstream_totals(sim)
    drained = wait_for_drain(sim)
    drain_s = time.monotonic() - started
    tallies = load["tallies"]
    rows_offered = load["requests"] * ROWS_PER_REQUEST
    # Spot-check that absorbed rows really landed in the cache: resend early cold bodies.
    template = template_file.read_text()
    check = [json.loads(template.replace("{seq}", str(seq))) for seq in range(20)]
    rechecked = [status for body in check for status in row_statuses(service, body)]
    return {
        "duration_s": load["duration_s"],
        "requests": load["requests"],
        "rps": load["rps"],
        "failures": load["non_2xx"] + sum(load["errors"].values()),
        "latency_ms": load["latency_ms"],
        "rows_offered_per_s": round(rows_offered / load["duration_s"], 1),
        "row_statuses": tallies,
        "rows_accepted_per_s": round(
            (rows_offered - tallies.get("unavailable", 0)) / load["duration_s"], 1),
        "upstream_rows_during_run_per_s": round(during["rows"] / load["duration_s"], 1),
        "upstream_rows_total": drained["rows"],
        "upstream_requests_total": drained["requests"],
        "absorbed_rows_per_s_incl_drain": round(drained["rows"] / drain_s, 1),
        "rows_per_upstream_request": round(drained["rows"] / max(1, drained["requests"]), 1),
        "upstream_in_flight_peak": max(in_flight, default=None),
        "upstream_in_flight_bound": UPSTREAM_CONCURRENCY * workers,
        "recheck_hit_share": round(rechecked.count("hit") / len(rechecked), 3),
    }


def service_env(sim: Server) -> dict[str, str]:
    """The environment both the service and the floor run with."""
    return {
        "ENV": "bench", "SCOPE3_API_URL": sim.url, "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
        "API_KEYS": API_KEY, "WAIT_FOR_MISSING": "false", "ACCESS_LOG": "sample:0.01",
        "UPSTREAM_CONCURRENCY": str(UPSTREAM_CONCURRENCY), "LOG_LEVEL": "INFO",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, measure, stop everything; return the report."""
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    if not use_wrk:
        print(WRK_INSTALL_HINT, file=sys.stderr)
    work_dir = Path(tempfile.mkdtemp(prefix="service-load-"))
    body_file = work_dir / "hot.json"
    body_file.write_text(json.dumps(hot_body()))
    gens = Generators(body_file, bool(use_wrk))
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/service_load.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": os.getloadavg()},
        "saturation_generator": "wrk" if use_wrk else "loadgen (closed loop)",
        "fixed_rate_generator": "loadgen open loop (wrk has no rate mode)",
        "workers": args.workers, "duration_s": args.duration, "connections": args.connections,
        "rounds": args.rounds,
    }
    with Processes(work_dir / "logs") as procs:
        _progress("starting the simulator, the service and the floor app")
        sim = procs.simulator(latency_ms=args.upstream_latency_ms, jitter_ms=30,
                              token=UPSTREAM_TOKEN)
        env = service_env(sim)
        targets = {
            "floor": procs.gunicorn("bench.floor_app:app", env=env, workers=args.workers,
                                    name="floor"),
            "service": procs.gunicorn("measure_service.wsgi:app", env=env,
                                      workers=args.workers, name="service"),
        }
        service = targets["service"]
        warm(service, hot_body())
        misses_before = metric_total(service, "measure_cache_misses_total")
        for name, server in targets.items():  # warm connections, JITs of caches, lazy imports
            _progress(f"warm-up load on {name}")
            gens.saturate(server, connections=args.connections, duration_s=2)

        _progress(f"saturation, {args.rounds} round(s) of {args.duration:g} s per target")
        saturation = alternate(args.rounds, targets, lambda s: gens.saturate(
            s, connections=args.connections, duration_s=args.duration))
        floor_rps = median_of(saturation["floor"], lambda r: r["rps"])
        rate = args.rate or floor_rps / 2
        _progress(f"fixed rate {rate:.0f} req/s, {args.rounds} round(s) per target")
        fixed = alternate(args.rounds, targets, lambda s: gens.fixed_rate(
            s, rate=rate, connections=args.connections, duration_s=args.duration))
        misses_after = metric_total(service, "measure_cache_misses_total")
        still_hits = set(row_statuses(service, hot_body())) == {"hit"}

        report["hit_path"] = _hit_path_report(saturation, fixed, rate)
        report["hit_path"]["all_hits_after"] = still_hits
        report["hit_path"]["cache_misses_during_hit_runs"] = (
            None if misses_before is None or misses_after is None
            else misses_after - misses_before)
        if not args.skip_miss:
            _progress(f"miss path: {args.duration:g} s of cold keys")
            report["miss_path"] = miss_path(
                gens, service, sim, workers=args.workers, connections=args.connections,
                duration_s=args.duration, work_dir=work_dir)
    report["machine"]["loadavg_after"] = os.getloadavg()
    return report


def _hit_path_report(saturation: dict[str, list[dict[str, Any]]],
                     fixed: dict[str, list[dict[str, Any]]], rate: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"fixed_rate": round(rate, 1)}
    for name in ("floor", "service"):
        figures[name] = {
            "saturation_rps": median_of(saturation[name], lambda r: r["rps"]),
            "saturation_p50_ms": median_of(saturation[name], lambda r: r["latency_ms"]["p50"]),
            "saturation_p99_ms": median_of(saturation[name], lambda r: r["latency_ms"]["p99"]),
            "fixed_p50_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p50"]),
            "fixed_p99_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p99"]),
            "fixed_achieved_rps": median_of(fixed[name], lambda r: r["rps"]),
            "late_sends": sum(r["late_sends"] for r in fixed[name]),
            "failures": sum(r["non_2xx"] + sum(r["errors"].values())
                            for r in saturation[name] + fixed[name]),
            "runs": {"saturation": saturation[name], "fixed_rate": fixed[name]},
        }
    floor, service = figures["floor"], figures["service"]
    figures["throughput_ratio"] = round(service["saturation_rps"] / floor["saturation_rps"], 3)
    figures["p99_ratio"] = round(service["fixed_p99_ms"] / max(floor["fixed_p99_ms"], 1e-9), 3)
    figures["p50_ratio"] = round(service["fixed_p50_ms"] / max(floor["fixed_p50_ms"], 1e-9), 3)
    figures["throughput_ok"] = figures["throughput_ratio"] >= THROUGHPUT_TARGET
    figures["p99_ok"] = figures["p99_ratio"] <= P99_TARGET
    return figures


def print_table(report: dict[str, Any]) -> None:
    """Print the report as a small table."""
    hit = report["hit_path"]
    floor, service = hit["floor"], hit["service"]
    print(f"\nservice load benchmark, {report['date']}, {report['workers']} gevent workers, "
          f"{report['connections']} connections, {report['duration_s']:g} s runs, "
          f"median of {report['rounds']} round(s)")
    print(f"saturation: {report['saturation_generator']}; "
          f"fixed rate: {report['fixed_rate_generator']}")
    print(f"\n{'hit path (5-row all-hit body)':<40}{'floor':>12}{'service':>12}{'ratio':>10}")
    rows = [
        ("saturation req/s", "saturation_rps", hit["throughput_ratio"]),
        ("saturation p50 ms", "saturation_p50_ms", None),
        ("saturation p99 ms", "saturation_p99_ms", None),
        (f"p50 ms at {hit['fixed_rate']:.0f} req/s", "fixed_p50_ms", hit["p50_ratio"]),
        (f"p99 ms at {hit['fixed_rate']:.0f} req/s", "fixed_p99_ms", hit["p99_ratio"]),
        ("achieved req/s at fixed rate", "fixed_achieved_rps", None),
        ("late sends (generator behind)", "late_sends", None),
        ("failures (non-2xx + errors)", "failures", None),
    ]
    for label, key, ratio in rows:
        ratio_text = "" if ratio is None else f"{ratio:.2f}x"
        print(f"{label:<40}{floor[key]:>12,.2f}{service[key]:>12,.2f}{ratio_text:>10}")
    verdict = {True: "ok", False: "MISSED"}
    print(f"\ntargets: throughput >= {THROUGHPUT_TARGET}x floor: "
          f"{verdict[hit['throughput_ok']]}; p99 <= {P99_TARGET}x floor: "
          f"{verdict[hit['p99_ok']]}")
    print(f"hot body all hits after the runs: {hit['all_hits_after']}; cache misses counted "
          f"during them: {hit['cache_misses_during_hit_runs']}")
    miss = report.get("miss_path")
    if miss:
        print("\nmiss path (5 cold keys per request, WAIT_FOR_MISSING=false)")
        for key in ("rps", "rows_offered_per_s", "rows_accepted_per_s",
                    "upstream_rows_during_run_per_s", "absorbed_rows_per_s_incl_drain",
                    "rows_per_upstream_request", "upstream_in_flight_peak",
                    "upstream_in_flight_bound", "row_statuses", "failures", "latency_ms",
                    "recheck_hit_share"):
            print(f"  {key:<34}{miss[key]}")
    print(f"\nload average before/after: {report['machine']['loadavg_before']} / "
          f"{report['machine']['loadavg_after']}")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY of both apps")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate floor/service runs this many times; report medians")
    parser.add_argument("--rate", type=float,
                        help="fixed offered rate (default: half the floor's saturation rate)")
    parser.add_argument("--generator", choices=("auto", "wrk", "loadgen"), default="auto",
                        help="saturation load generator (default: wrk when on PATH)")
    parser.add_argument("--upstream-latency-ms", type=float, default=100.0)
    parser.add_argument("--skip-miss", action="store_true", help="skip the miss-path run")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report here")
    args = parser.parse_args(argv)
    for name in ("duration", "connections", "workers", "rounds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    args = _parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
