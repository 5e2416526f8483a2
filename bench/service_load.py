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
import statistics
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

from devtools import probes
from devtools.harness import ROOT, Processes, Server, Service, Simulator

API_KEY = "bench-key"
UPSTREAM_TOKEN = "bench-upstream-token"
ROWS_PER_REQUEST = 5
UPSTREAM_CONCURRENCY = 4
THROUGHPUT_TARGET = 0.9
P99_TARGET = 1.5
# The hit path's worker CPU per request, at most this many times the bare WSGI app's.
BARE_CPU_TARGET = 1.5
TARGETS = ("bare", "floor", "service")
# Each worker writes its metrics to the shared files at least this often.
METRICS_FLUSH_S = 1.5
# bench/cpu_split.py, and how long its workers take to write their sums (every 0.25 s).
SPLIT_CONFIG = ROOT / "bench" / "cpu_split.py"
SPLIT_WRITE_S = 0.6
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


# --- set-up and checks (not on the measured path) -----------------------------------------------

def metric_total(server: Server, name: str) -> float | None:
    """Sum of every sample of ``name`` on ``/metrics`` (None when it cannot be read)."""
    try:
        return probes.metric_total(server.metrics(), name)
    except (requests.RequestException, ValueError):
        return None


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


def paired_ratios(runs: list[dict[str, Any]], base: list[dict[str, Any]],
                  pick: Callable[[dict[str, Any]], float]) -> list[float]:
    """Each round's figure over the base's figure of the same round.

    Both were measured within one round, seconds apart, so a ratio cancels most of the load
    that other processes put on the machine at that time; their median is steadier than a
    ratio of medians taken over different moments.
    """
    return [pick(run) / max(pick(other), 1e-9) for run, other in zip(runs, base, strict=True)]


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


def profile_hit_path(gens: Generators, service: Server, *, connections: int,
                     duration_s: float, out_dir: Path, top: int = 15) -> dict[str, Any]:
    """Sample one service worker with py-spy while the hit path is saturated.

    Runs after the measured runs, so the sampling never skews the figures above.
    """
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return {"skipped": "py-spy not found: .venv/bin/pip install py-spy"}
    out_dir.mkdir(parents=True, exist_ok=True)
    worker = service.child_pids()[0]
    raw = out_dir / "hit-path.pyspy.txt"
    argv = [py_spy, "record", "--pid", str(worker), "--duration", f"{duration_s:g}",
            "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as spy:
        time.sleep(0.5)  # let py-spy attach before the load starts
        gens.saturate(service, connections=connections, duration_s=duration_s)
        _, err = spy.communicate(timeout=duration_s + 30)
    if spy.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    stacks = raw.read_text().splitlines()
    # Time in socket send/recv is the kernel's loopback work and, on a busy machine, time spent
    # preempted there; the Python work is ranked apart from it.
    python_work = [line for line in stacks if not _leaf(line).startswith(_SOCKET_IO)]
    total = collapse(stacks)[2]
    own, inclusive, work = collapse(python_work)
    wrappers = {name for name, n in inclusive.items() if n > 0.9 * work}

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        kept = sorted(((n, name) for name, n in counts.items() if name not in wrappers),
                      reverse=True)
        return [(name, round(100 * n / max(1, work), 1)) for n, name in kept[:top]]

    return {"worker_pid": worker, "samples": total, "raw_stacks": str(raw),
            "socket_io_pct": round(100 * (total - work) / max(1, total), 1),
            "self_pct": ranked(own), "inclusive_pct": ranked(inclusive)}


def _leaf(line: str) -> str:
    return _function_of(line.rpartition(" ")[0].rpartition(";")[2])


_SOCKET_IO = ("SocketMixin.send ", "SocketMixin.recv ")


def collapse(lines: list[str]) -> tuple[dict[str, int], dict[str, int], int]:
    """Self and inclusive sample counts per function, and the total, from py-spy raw stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function_of(frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
    return own, inclusive, total


def _function_of(frame: str) -> str:
    # "handle (gevent/pywsgi.py:123)" -> "handle (gevent/pywsgi.py)": lines split one function.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


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
        _progress("starting the simulator, the service and the floor app")
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
            _progress(f"warm-up load on {name}")
            gens.saturate(server, connections=args.connections, duration_s=2)
        # After the warm-up load: the run of hits that ended the warm-up may all have come from one
        # worker, and the other's first misses then fall in that load. By now every worker's are
        # in /metrics.
        time.sleep(METRICS_FLUSH_S)
        misses_before = metric_total(service, "measure_cache_misses_total")

        _progress(f"saturation, {args.rounds} round(s) of {args.duration:g} s per target")
        saturation = alternate(args.rounds, targets, lambda s: with_cpu(s, lambda: gens.saturate(
            s, connections=args.connections, duration_s=args.duration), split_dir))
        floor_rps = median_of(saturation["floor"], lambda r: r["rps"])
        rate = args.rate or floor_rps / 2
        _progress(f"fixed rate {rate:.0f} req/s, {args.rounds} round(s) per target")
        fixed = alternate(args.rounds, targets, lambda s: with_cpu(s, lambda: gens.fixed_rate(
            s, rate=rate, connections=args.connections, duration_s=args.duration)))
        time.sleep(METRICS_FLUSH_S)
        misses_after = metric_total(service, "measure_cache_misses_total")
        still_hits = set(service.statuses(hot_rows)) == {"hit"}

        report["hit_path"] = _hit_path_report(saturation, fixed, rate)
        if args.with_redis:
            report["hit_path"]["with_redis"] = _redis_report(saturation, fixed)
        report["hit_path"]["all_hits_after"] = still_hits
        report["hit_path"]["cache_misses_during_hit_runs"] = (
            None if misses_before is None or misses_after is None
            else misses_after - misses_before)
        if not args.skip_miss:
            _progress(f"miss path: {args.duration:g} s of cold keys")
            report["miss_path"] = miss_path(
                gens, service, sim, workers=args.workers, connections=args.connections,
                duration_s=args.duration, upstream_latency_s=args.upstream_latency_ms / 1000,
                work_dir=work_dir)
        if args.profile:
            _progress(f"profiling one service worker with py-spy for {args.duration:g} s")
            report["profile"] = profile_hit_path(
                gens, service, connections=args.connections, duration_s=args.duration,
                out_dir=args.profile)
    report["machine"]["loadavg_after"] = os.getloadavg()
    return report


def _hit_path_report(saturation: dict[str, list[dict[str, Any]]],
                     fixed: dict[str, list[dict[str, Any]]], rate: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"fixed_rate": round(rate, 1)}
    for name in TARGETS:
        figures[name] = {
            "saturation_rps": median_of(saturation[name], lambda r: r["rps"]),
            "saturation_p50_ms": median_of(saturation[name], lambda r: r["latency_ms"]["p50"]),
            "saturation_p99_ms": median_of(saturation[name], lambda r: r["latency_ms"]["p99"]),
            "fixed_p50_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p50"]),
            "fixed_p99_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p99"]),
            "fixed_achieved_rps": median_of(fixed[name], lambda r: r["rps"]),
            "saturation_cpu_us_per_request": median_of(
                saturation[name], lambda r: r["cpu_us_per_request"]),
            "fixed_cpu_us_per_request": median_of(fixed[name], lambda r: r["cpu_us_per_request"]),
            "saturation_split_us": _split_medians(saturation[name]),
            "late_sends": sum(r["late_sends"] for r in fixed[name]),
            "non_2xx": sum(r["non_2xx"] for r in saturation[name] + fixed[name]),
            "non_2xx_by_status": _non_2xx_statuses(saturation[name] + fixed[name]),
            # wrk counts an answer slower than its 2 s timeout as an error.
            "client_errors": sum(sum(r["errors"].values())
                                 for r in saturation[name] + fixed[name]),
            "runs": {"saturation": saturation[name], "fixed_rate": fixed[name]},
        }
    bare, floor, service = figures["bare"], figures["floor"], figures["service"]
    figures["bare_cpu_ratio"] = round(
        service["saturation_cpu_us_per_request"] / bare["saturation_cpu_us_per_request"], 3)
    figures["bare_rps_ratio"] = round(service["saturation_rps"] / bare["saturation_rps"], 3)
    cpu_rounds = paired_ratios(saturation["service"], saturation["bare"],
                               lambda r: r["cpu_us_per_request"])
    rps_rounds = paired_ratios(saturation["service"], saturation["bare"], lambda r: r["rps"])
    figures["bare_cpu_ratio_rounds"] = [round(ratio, 3) for ratio in cpu_rounds]
    figures["bare_cpu_ratio_paired"] = round(statistics.median(cpu_rounds), 3)
    figures["bare_rps_ratio_paired"] = round(statistics.median(rps_rounds), 3)
    # The verdict is the median of the paired rounds (see paired_ratios).
    figures["bare_cpu_ok"] = figures["bare_cpu_ratio_paired"] <= BARE_CPU_TARGET
    figures["throughput_ratio"] = round(service["saturation_rps"] / floor["saturation_rps"], 3)
    figures["p99_ratio"] = round(service["fixed_p99_ms"] / max(floor["fixed_p99_ms"], 1e-9), 3)
    figures["p50_ratio"] = round(service["fixed_p50_ms"] / max(floor["fixed_p50_ms"], 1e-9), 3)
    # What the throughput ratio would be if both apps had the CPU to themselves.
    figures["cpu_throughput_ratio"] = round(
        floor["saturation_cpu_us_per_request"] / service["saturation_cpu_us_per_request"], 3)
    figures["cpu_throughput_ok"] = figures["cpu_throughput_ratio"] >= THROUGHPUT_TARGET
    figures["throughput_ok"] = figures["throughput_ratio"] >= THROUGHPUT_TARGET
    figures["p99_ok"] = figures["p99_ratio"] <= P99_TARGET
    return figures


def _split_medians(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    if "split_us" not in runs[0]:
        return None
    return {part: median_of(runs, lambda r, part=part: r["split_us"][part])
            for part in runs[0]["split_us"]}


def _redis_report(saturation: dict[str, list[dict[str, Any]]],
                  fixed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The hit path with ``REDIS_URL`` set against the same build without it, same run."""
    def pick(name: str) -> dict[str, float]:
        return {
            "saturation_rps": median_of(saturation[name], lambda r: r["rps"]),
            "saturation_cpu_us_per_request": median_of(
                saturation[name], lambda r: r["cpu_us_per_request"]),
            "fixed_p50_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p50"]),
            "fixed_p99_ms": median_of(fixed[name], lambda r: r["latency_ms"]["p99"]),
            "non_2xx": sum(r["non_2xx"] for r in saturation[name] + fixed[name]),
        }

    without, with_ = pick("service"), pick("service_redis")
    return {
        "without": without, "with": with_,
        "rps_ratio": round(with_["saturation_rps"] / without["saturation_rps"], 3),
        "cpu_ratio": round(with_["saturation_cpu_us_per_request"]
                           / without["saturation_cpu_us_per_request"], 3),
        "runs": {"saturation": saturation["service_redis"], "fixed_rate": fixed["service_redis"]},
    }


def _non_2xx_statuses(runs: list[dict[str, Any]]) -> dict[str, int]:
    # wrk reports only a count; loadgen reports each status.
    counts: dict[str, int] = {}
    for run in runs:
        for code, n in run.get("statuses", {}).items():
            if not code.startswith("2"):
                counts[code] = counts.get(code, 0) + n
    return counts


def print_table(report: dict[str, Any]) -> None:
    """Print the report as a small table."""
    hit = report["hit_path"]
    bare, floor, service = hit["bare"], hit["floor"], hit["service"]
    git = report["git"]
    dirty = f" + uncommitted changes to {', '.join(git['modified'])}" if git["modified"] else ""
    print(f"\nservice load benchmark, {report['date']}, commit {git['commit']}{dirty}")
    print(f"{report['workers']} gevent workers, "
          f"{report['connections']} connections, {report['duration_s']:g} s runs, "
          f"median of {report['rounds']} round(s)")
    print(f"saturation: {report['saturation_generator']}; "
          f"fixed rate: {report['fixed_rate_generator']}")
    print(f"\n{'hit path (5-row all-hit body)':<40}{'bare':>12}{'floor':>12}{'service':>12}"
          f"{'svc/floor':>10}")
    rows = [
        ("saturation req/s", "saturation_rps", hit["throughput_ratio"]),
        ("saturation p50 ms", "saturation_p50_ms", None),
        ("saturation p99 ms", "saturation_p99_ms", None),
        (f"p50 ms at {hit['fixed_rate']:.0f} req/s", "fixed_p50_ms", hit["p50_ratio"]),
        (f"p99 ms at {hit['fixed_rate']:.0f} req/s", "fixed_p99_ms", hit["p99_ratio"]),
        ("achieved req/s at fixed rate", "fixed_achieved_rps", None),
        ("worker CPU us/request, saturated", "saturation_cpu_us_per_request",
         1 / hit["cpu_throughput_ratio"]),
        ("worker CPU us/request, fixed rate", "fixed_cpu_us_per_request", None),
        ("late sends (generator behind)", "late_sends", None),
        ("non-2xx answers", "non_2xx", None),
        ("client errors (incl. wrk timeouts > 2 s)", "client_errors", None),
    ]
    for label, key, ratio in rows:
        ratio_text = "" if ratio is None else f"{ratio:.2f}x"
        print(f"{label:<40}{bare[key]:>12,.2f}{floor[key]:>12,.2f}{service[key]:>12,.2f}"
              f"{ratio_text:>10}")
    if report["rounds"] > 1:
        for name in TARGETS:
            runs = hit[name]["runs"]["fixed_rate"]
            p99s = ", ".join(f"{r['latency_ms']['p99']:.1f}" for r in runs)
            print(f"{name} p99 ms at the fixed rate, each round: {p99s}")
        saturated = {name: [r["cpu_us_per_request"] for r in hit[name]["runs"]["saturation"]]
                     for name in TARGETS}
        for name, cpus in saturated.items():
            print(f"{name} worker CPU us/request saturated, each round: "
                  f"{', '.join(f'{cpu:.1f}' for cpu in cpus)}")
        print(f"service/bare worker CPU per request, each round: "
              f"{', '.join(f'{ratio:.2f}x' for ratio in hit['bare_cpu_ratio_rounds'])}")
    if bare["saturation_split_us"]:
        print("\nworker CPU us/request saturated, by part (bench/cpu_split.py; medians of rounds)")
        for part in bare["saturation_split_us"]:
            figures = [hit[name]["saturation_split_us"][part] for name in TARGETS]
            print(f"  {part:<38}" + "".join(f"{us:>12,.1f}" for us in figures))
    for name in TARGETS:
        if hit[name]["non_2xx"]:
            print(f"{name} non-2xx answers by status (loadgen runs only): "
                  f"{hit[name]['non_2xx_by_status']}")
    verdict = {True: "ok", False: "MISSED"}
    print(f"\ntargets: throughput >= {THROUGHPUT_TARGET}x floor: "
          f"{verdict[hit['throughput_ok']]}; p99 <= {P99_TARGET}x floor: "
          f"{verdict[hit['p99_ok']]}")
    cpu_rounds = hit["bare_cpu_ratio_rounds"]
    print(f"service vs bare WSGI: worker CPU per request {hit['bare_cpu_ratio_paired']:.2f}x, "
          f"the median of {len(cpu_rounds)} paired round(s) (from {min(cpu_rounds):.2f}x to "
          f"{max(cpu_rounds):.2f}x; target <= {BARE_CPU_TARGET}x: {verdict[hit['bare_cpu_ok']]}); "
          f"ratio of the medians {hit['bare_cpu_ratio']:.2f}x; saturation req/s "
          f"{hit['bare_rps_ratio_paired']:.2f}x (paired; ratio of the medians "
          f"{hit['bare_rps_ratio']:.2f}x)")
    print(f"throughput ratio implied by CPU per request (floor/service, machine-load "
          f"independent): {hit['cpu_throughput_ratio']:.2f}x: "
          f"{verdict[hit['cpu_throughput_ok']]}")
    print(f"hot body all hits after the runs: {hit['all_hits_after']}; cache misses counted "
          f"during them: {hit['cache_misses_during_hit_runs']}")
    redis = hit.get("with_redis")
    if redis:
        print("\nsame build, REDIS_URL empty vs set (hit path, same run)")
        for key in ("saturation_rps", "saturation_cpu_us_per_request", "fixed_p50_ms",
                    "fixed_p99_ms", "non_2xx"):
            print(f"  {key:<34}{redis['without'][key]:>12,.2f}{redis['with'][key]:>12,.2f}")
        print(f"  req/s ratio with/without {redis['rps_ratio']:.3f}; CPU per request ratio "
              f"{redis['cpu_ratio']:.3f}")
    miss = report.get("miss_path")
    if miss:
        print("\nmiss path (5 cold keys per request, WAIT_FOR_MISSING=false)")
        for key, value in miss.items():
            print(f"  {key:<34}{value}")
    profile = report.get("profile")
    if profile:
        print("\nhit-path profile (py-spy, one service worker under saturation)")
        if "skipped" in profile:
            print(f"  skipped: {profile['skipped']}")
        else:
            print(f"  {profile['samples']} samples; raw stacks in {profile['raw_stacks']}")
            print(f"  {profile['socket_io_pct']}% in socket send/recv; the rest, ranked below, "
                  "is 100%")
            for title, key in (("self time", "self_pct"), ("inclusive", "inclusive_pct")):
                print(f"  {title}:")
                for name, pct in profile[key]:
                    print(f"    {pct:5.1f}%  {name}")
    print(f"\nload average before/after: {report['machine']['loadavg_before']} / "
          f"{report['machine']['loadavg_after']}")


def _git_state() -> dict[str, Any]:
    """The commit measured, and which tracked files differed from it (others' work in progress)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": git("diff", "--name-only", "HEAD").split()}


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
