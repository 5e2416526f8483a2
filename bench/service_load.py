"""Service load benchmark: what does the hit path cost over a bare WSGI app and a Flask handler?

It starts the Scope3 simulator, the service and the two floors (``bench/floor_app.py``: ``bare``,
a plain WSGI function answering fixed bytes, the server's own limit; ``floor``, a Flask view) on
free loopback ports, all under the same ``gunicorn.conf.py`` and environment (gevent,
``WEB_CONCURRENCY=2``, ``ACCESS_LOG=sample:0.01``, auth on). It warms the cache until a 5-row
body is all hits, then measures, for each target in turn:

1. saturation req/s (closed loop: wrk if installed, else ``bench/loadgen.py``);
2. p50/p99 at a fixed offered rate, half the floor's saturation rate (always the open-loop
   mode of ``bench/loadgen.py``: plain wrk has no rate mode, and latency is measured from when
   each request was due, so stalls are not hidden by coordinated omission);
3. the workers' CPU time per request in both runs, which, unlike req/s, does not depend on
   how much CPU other processes on the machine leave to the apps;
4. the miss path: cold rows per second the service absorbs (distinct cold keys,
   ``WAIT_FOR_MISSING=false``), with upstream in-flight requests sampled against the bound;
5. with ``--profile DIR``, after all of that: py-spy samples of one saturated service worker;
6. with ``--split``, every app runs under ``bench/cpu_split.py``, and the saturated worker CPU
   per request is also given in parts: the app call, and gunicorn's own parts around it.

Its parts: ``load_generators.py`` (wrk or loadgen as a child process), ``service_load_report.py``
(the figures, their verdicts and the printed table) and ``service_load_profile.py`` (py-spy).
Every process it starts is stopped at the end. Run from the project root::

    .venv/bin/python bench/service_load.py [--duration 10] [--connections 64] [--rounds 3]
        [--json out.json] [--profile DIR] [--split]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
import requests
from driver import API_KEY, ROWS_PER_REQUEST, UPSTREAM_TOKEN, progress
from load_generators import WRK_INSTALL_HINT, Generators
from service_load_profile import profile_hit_path
from service_load_report import hit_path_report, median_of, print_table, redis_report

from devtools import probes
from devtools.harness import ROOT, Processes, Server, Service, Simulator

UPSTREAM_CONCURRENCY = 4
# Each worker writes its metrics to the shared files at least this often.
METRICS_FLUSH_S = 1.5
# bench/cpu_split.py, and how long its workers take to write their sums (every 0.25 s).
SPLIT_CONFIG = ROOT / "bench" / "cpu_split.py"
SPLIT_WRITE_S = 0.6


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


# --- set-up and checks (not on the measured path) -----------------------------------------------

def metric_total(server: Server, name: str) -> float | None:
    """Sum of every sample of ``name`` on ``/metrics`` (None when it cannot be read)."""
    try:
        return probes.metric_total(server.metrics(), name)
    except (requests.RequestException, ValueError):
        return None


# --- the measurements -----------------------------------------------------------------------------

def alternate(rounds: int, targets: dict[str, Server],
              run: Callable[[Server], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Run each target in turn, ``rounds`` times, so drifting machine load hits all alike.

    Each round starts one target later than the one before, so that no target always runs
    first, or always right after the same other one.
    """
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    names = list(targets)
    for round_index in range(rounds):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            results[name].append(run(targets[name]))
    return results


def with_cpu(server: Server, measure: Callable[[], dict[str, Any]],
             split_dir: Path | None = None) -> dict[str, Any]:
    """Run ``measure`` and add the server's CPU microseconds per answered request to its summary.

    CPU per request does not depend on how much CPU other processes left to the server, so it
    compares the two apps fairly on a busy machine, where req/s alone would not. With
    ``split_dir`` (the server runs under ``bench/cpu_split.py``), the summary's ``split_us``
    gives the parts of that CPU per request.
    """
    parts_before = split_sums(split_dir, server) if split_dir else {}
    before = server.cpu_seconds()
    summary = measure()
    used = server.cpu_seconds() - before
    summary["cpu_us_per_request"] = round(used * 1e6 / max(1, summary["requests"]), 1)
    if split_dir:
        time.sleep(SPLIT_WRITE_S)
        parts = split_sums(split_dir, server)
        requests = max(1, parts.get("requests", 0) - parts_before.get("requests", 0))
        split = {name: (total - parts_before.get(name, 0)) / 1e3 / requests
                 for name, total in parts.items() if name != "requests"}
        split["outside handle_request"] = summary["cpu_us_per_request"] - split["handle_request"]
        summary["split_us"] = {name: round(us, 1) for name, us in split.items()}
    return summary


def split_sums(directory: Path, server: Server) -> dict[str, int]:
    """The CPU nanoseconds per part (and requests) that ``server``'s workers last wrote."""
    total: dict[str, int] = {}
    for pid in server.child_pids():
        try:
            text = (directory / str(pid)).read_text()
        except OSError:
            continue
        for pair in text.split():
            name, _, value = pair.partition("=")
            total[name] = total.get(name, 0) + int(value)
    return total


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


def miss_path(gens: Generators, service: Server, sim: Simulator, *, workers: int,
              connections: int, duration_s: float, upstream_latency_s: float,
              work_dir: Path) -> dict[str, Any]:
    """Drive cold keys only; report what the service accepted and what reached upstream."""
    template_file = work_dir / "cold.json"
    template_file.write_text(cold_body_template(uuid.uuid4().hex[:8]))
    sim.reset()
    started = time.monotonic()
    with sampling(0.05, lambda: metric_total(service, "measure_upstream_in_flight")) as in_flight:
        load = gens.cold(service, template_file, connections=connections, duration_s=duration_s)
        during = sim.stats("?keys=0&recent=0")
    drained = sim.wait_quiet(1.0, drained=True)
    drain_s = time.monotonic() - started
    per_key = sim.stats("?recent=0").get("rows_per_key", {})
    seconds = load["duration_s"]
    statuses = load["tallies"]
    rows_offered = load["requests"] * ROWS_PER_REQUEST
    rows_accepted = rows_offered - statuses.get("unavailable", 0)
    upstream_rps = during["requests"] / seconds
    return {
        "duration_s": seconds,
        "requests": load["requests"],
        "rps": load["rps"],
        "failures": load["non_2xx"] + sum(load["errors"].values()),
        "latency_ms": load["latency_ms"],
        "row_statuses": statuses,
        "rows_offered_per_s": round(rows_offered / seconds, 1),
        "rows_accepted_per_s": round(rows_accepted / seconds, 1),
        "upstream_rows_during_run_per_s": round(during["rows"] / seconds, 1),
        "absorbed_rows_per_s_incl_drain": round(drained["rows"] / drain_s, 1),
        "accepted_rows_fetched_share": round(drained["rows"] / max(1, rows_accepted), 4),
        "keys_fetched_twice": sum(1 for n in per_key.values() if n > 1),
        "upstream_requests_per_s": round(upstream_rps, 1),
        "rows_per_upstream_request": round(drained["rows"] / max(1, drained["requests"]), 1),
        "upstream_in_flight_peak": max(in_flight, default=None),
        # Little's law: requests/s times the simulator's mean latency.
        "upstream_in_flight_mean_est": round(upstream_rps * upstream_latency_s, 2),
        "upstream_in_flight_bound": UPSTREAM_CONCURRENCY * workers,
    }


def as_service(server: Server) -> Service:
    """``server`` (gunicorn serving measure_service) with the benchmark's API key."""
    return Service(server.name, server.port, server.process, server.log_path, API_KEY)


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
    hot_rows = hot_body()["rows"]
    body_file.write_text(json.dumps(hot_body()))
    gens = Generators(body_file, bool(use_wrk))
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/service_load.py", *sys.argv[1:]]),
        "git": _git_state(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": os.getloadavg()},
        "saturation_generator": "wrk" if use_wrk else "loadgen (closed loop)",
        "fixed_rate_generator": "loadgen open loop (wrk has no rate mode)",
        "workers": args.workers, "duration_s": args.duration, "connections": args.connections,
        "rounds": args.rounds,
    }
    with Processes(work_dir / "logs") as procs:
        progress("starting the simulator, the service and the floor app")
        sim = procs.simulator(latency_ms=args.upstream_latency_ms, jitter_ms=30,
                              token=UPSTREAM_TOKEN)
        env = service_env(sim)
        split_dir = work_dir / "cpu-split" if args.split else None

        def gunicorn(app: str, name: str, app_env: dict[str, str]) -> Server:
            if split_dir is None:
                return procs.gunicorn(app, env=app_env, workers=args.workers, name=name)
            split_dir.mkdir(exist_ok=True)
            command = [sys.executable, "-m", "gunicorn", "-c", str(SPLIT_CONFIG), app]
            return procs.gunicorn(app, env={**app_env, "CPU_SPLIT_DIR": str(split_dir)},
                                  workers=args.workers, name=name, command=command)

        targets = {
            "bare": gunicorn("bench.floor_app:bare", "bare", env),
            "floor": gunicorn("bench.floor_app:app", "floor", env),
            "service": gunicorn("measure_service.wsgi:app", "service", env),
        }
        if args.with_redis:
            # The same build with the shared tier on: its hit path must cost what it did.
            redis = procs.redis("--maxmemory", "256mb")
            targets["service_redis"] = gunicorn(
                "measure_service.wsgi:app", "service-redis", {**env, "REDIS_URL": redis.url})
            as_service(targets["service_redis"]).warm(hot_rows)
        service = as_service(targets["service"])
        service.warm(hot_rows)
        for name, server in targets.items():  # first-request costs: lazy imports, connection set-up
            progress(f"warm-up load on {name}")
            gens.saturate(server, connections=args.connections, duration_s=2)
        # After the warm-up load: the run of hits that ended the warm-up may all have come from one
        # worker, and the other's first misses then fall in that load. By now every worker's are
        # in /metrics.
        time.sleep(METRICS_FLUSH_S)
        misses_before = metric_total(service, "measure_cache_misses_total")

        progress(f"saturation, {args.rounds} round(s) of {args.duration:g} s per target")
        saturation = alternate(args.rounds, targets, lambda s: with_cpu(s, lambda: gens.saturate(
            s, connections=args.connections, duration_s=args.duration), split_dir))
        floor_rps = median_of(saturation["floor"], lambda r: r["rps"])
        rate = args.rate or floor_rps / 2
        progress(f"fixed rate {rate:.0f} req/s, {args.rounds} round(s) per target")
        fixed = alternate(args.rounds, targets, lambda s: with_cpu(s, lambda: gens.fixed_rate(
            s, rate=rate, connections=args.connections, duration_s=args.duration)))
        time.sleep(METRICS_FLUSH_S)
        misses_after = metric_total(service, "measure_cache_misses_total")
        still_hits = set(service.statuses(hot_rows)) == {"hit"}

        report["hit_path"] = hit_path_report(saturation, fixed, rate)
        if args.with_redis:
            report["hit_path"]["with_redis"] = redis_report(saturation, fixed)
        report["hit_path"]["all_hits_after"] = still_hits
        report["hit_path"]["cache_misses_during_hit_runs"] = (
            None if misses_before is None or misses_after is None
            else misses_after - misses_before)
        if not args.skip_miss:
            progress(f"miss path: {args.duration:g} s of cold keys")
            report["miss_path"] = miss_path(
                gens, service, sim, workers=args.workers, connections=args.connections,
                duration_s=args.duration, upstream_latency_s=args.upstream_latency_ms / 1000,
                work_dir=work_dir)
        if args.profile:
            progress(f"profiling one service worker with py-spy for {args.duration:g} s")
            report["profile"] = profile_hit_path(
                gens, service, connections=args.connections, duration_s=args.duration,
                out_dir=args.profile)
    report["machine"]["loadavg_after"] = os.getloadavg()
    return report


def _git_state() -> dict[str, Any]:
    """The commit measured, and which tracked files differed from it (others' work in progress)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": git("diff", "--name-only", "HEAD").split()}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY of both apps")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the targets' runs this many times; report medians")
    parser.add_argument("--rate", type=float,
                        help="fixed offered rate (default: half the floor's saturation rate)")
    parser.add_argument("--generator", choices=("auto", "wrk", "loadgen"), default="auto",
                        help="saturation load generator (default: wrk when on PATH)")
    parser.add_argument("--upstream-latency-ms", type=float, default=100.0)
    parser.add_argument("--skip-miss", action="store_true", help="skip the miss-path run")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after measuring, py-spy one service worker under saturation")
    parser.add_argument("--with-redis", action="store_true",
                        help="also measure the same build with REDIS_URL set (shared tier on)")
    parser.add_argument("--split", action="store_true",
                        help="run every app under bench/cpu_split.py and print the parts of "
                             "their CPU per request (the timing adds a little to each)")
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
