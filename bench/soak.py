"""Soak: the service for ten minutes at half of saturation, with a key mix 5x larger than its cache.

It starts the simulator (1% of upstream calls answered 500, ``--error-rate 0.01``) and gunicorn
(gevent, ``WEB_CONCURRENCY=2``) on free loopback ports. Each worker's cache holds
``--cache-entries`` rows (weight 0, so each row costs 100: ``CACHE_MAX_COST = 100 * entries``),
and request rows are drawn from Zipf(``--zipf-s``) over ``--key-factor`` times as many keys. It
measures saturation first (closed loop, the same key mix) unless ``--rate`` is given, then offers
half of it in open loop for ``--minutes``, sampling every 1/20 of the run (30 s for 10 minutes):
RSS of every worker, the cache's ``cost_used`` / ``max_cost`` (summed over workers, from
``/metrics``; shown as n/a when the service does not expose them), answered and failed requests,
5xx answers and upstream 500s. The cost is also polled every 2 s, to catch a transient overshoot.

Verdicts: RSS growth under 10% per worker between minute 2 and the end (20% and 100% of the run),
``cost_used`` never over ``max_cost``, 0 5xx, 0 failed requests, and no worker replaced.

Every process it starts is stopped at the end. Run from the project root::

    .venv/bin/python bench/soak.py                # 10 minutes after a 10 s saturation probe
    .venv/bin/python bench/soak.py --quick        # 1 minute after a 5 s probe
    .venv/bin/python bench/soak.py --rate 300 --minutes 3 --json soak.json
"""

# The sampler's HTTP calls and sleeps must yield to the load generator's greenlets.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import loadgen  # noqa: E402
from traces import zipf_keys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from devtools.harness import Processes, Server  # noqa: E402

API_KEY = "soak-key"
ROW_COST = 100  # weight 0 maps to cost 100 - 0
STATUS_TALLY = r'"status":\s*"(\w+)"'
RSS_GROWTH_LIMIT = 0.10
BASELINE_FRACTION = 0.2  # minute 2 of 10
COST_POLL_S = 2.0


@dataclass(frozen=True)
class ZipfBodies(loadgen.Target):
    """A target whose request ``i`` carries rows ``keys[i * rows : (i + 1) * rows]``."""

    keys: Sequence[int] = ()
    rows: int = 5

    def requests(self) -> Iterator[bytes]:
        """Yield one encoded request per ``rows`` keys, cycling through the keys."""
        while True:
            for start in range(0, len(self.keys) - self.rows + 1, self.rows):
                chunk = self.keys[start:start + self.rows]
                body = json.dumps({"rows": [_row(key, n) for n, key in enumerate(chunk)]})
                yield self._encode(body.encode())


def _row(key: int, n: int) -> dict[str, Any]:
    return {"inventoryId": f"soak-{key}.example", "utcDatetime": "2024-10-30",
            "impressions": 1000, "country": "US", "channel": "web", "rowIdentifier": f"r{n}",
            "weight": 0}


TargetFactory = Callable[[Sequence[int]], loadgen.Target]


@dataclass
class Sample:
    """One observation during the run."""

    t_s: float
    rss_mb: dict[int, float]
    cost_used: float | None
    max_cost: float | None
    requests: int
    failed: int
    status_5xx: int
    upstream_calls: int
    upstream_500: int
    interval_hit_pct: float
    interval_p99_ms: float
    interval_late_sends: int
    upstream_outcomes: dict[str, float]
    upstream_rows: float | None


@dataclass
class Soak:
    """Everything observed; :meth:`verdicts` judges it."""

    rate: float
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    cost_polls: list[tuple[float, float]] = field(default_factory=list)  # (used, max)
    worker_pids: set[int] = field(default_factory=set)

    def verdicts(self) -> dict[str, tuple[bool | None, str]]:
        """Each criterion: (passed, or None when it could not be measured; the figure)."""
        last = self.samples[-1]
        baseline = next(s for s in self.samples if s.t_s >= BASELINE_FRACTION * self.duration_s)
        growth = {pid: last.rss_mb[pid] / baseline.rss_mb[pid] - 1
                  for pid in last.rss_mb if pid in baseline.rss_mb}
        rss_ok = bool(growth) and max(growth.values()) < RSS_GROWTH_LIMIT
        rss_text = ", ".join(f"pid {pid}: {baseline.rss_mb[pid]:.1f} -> {last.rss_mb[pid]:.1f} MB "
                             f"({100 * g:+.1f}%)" for pid, g in growth.items())
        if self.cost_polls:
            worst = max(used / limit for used, limit in self.cost_polls)
            polls = len(self.cost_polls)
            cost: tuple[bool | None, str] = (
                worst <= 1.0, f"max cost_used/max_cost {worst:.3f} over {polls} polls"
            )
        else:
            cost = (None, "not measured: /metrics has no measure_cache_cost_used")
        replaced = len(self.worker_pids) - len(last.rss_mb)
        return {
            "rss_growth_under_10pct": (rss_ok, rss_text or "no worker lived through the run"),
            "cost_never_over_max": cost,
            "zero_5xx": (last.status_5xx == 0, f"{last.status_5xx} answers >= 500"),
            "zero_failed_requests": (last.failed == 0, f"{last.failed} connect/io/timeout"),
            "no_worker_replaced": (replaced == 0, f"{replaced} worker(s) replaced"),
        }


def metrics(server: Server) -> dict[str, float]:
    """Samples on ``/metrics``: each series as written, and each name summed over its labels
    ({} when not served)."""
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + number
        if name_labels != name:
            totals[name_labels] = number
    return totals


def upstream_calls(sim: Server) -> tuple[int, int]:
    """Requests the simulator has received so far, and how many it answered 500."""
    with urllib.request.urlopen(sim.url + "/_stats?keys=0&recent=0", timeout=5) as response:
        stats = json.loads(response.read())
    return int(stats["requests"]), int(stats.get("by_status", {}).get("500", 0))


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _failed(result: loadgen.Result) -> int:
    return sum(result.errors.values())


def _status_5xx(result: loadgen.Result) -> int:
    return sum(n for code, n in result.statuses.items() if code >= 500)


def saturation(target: loadgen.Target, seconds: float, connections: int) -> float:
    """Closed-loop req/s of ``target``."""
    result = loadgen.run_closed(target, connections=connections, duration_s=seconds)
    print(f"saturation probe: {result.requests} requests in {result.duration_s:.1f} s = "
          f"{result.rps:.0f} req/s, non-2xx {result.non_2xx}, errors {dict(result.errors)}",
          flush=True)
    return result.rps


def soak(service: Server, sim: Server, keys: Sequence[int], make_target: TargetFactory, *,
         rate: float, duration_s: float, connections: int,
         rows: int) -> tuple[Soak, loadgen.Result]:
    """Offer ``rate`` req/s for ``duration_s`` in 20 back-to-back open-loop runs, sampling after
    each; the key stream continues from one run to the next."""
    record = Soak(rate=rate, duration_s=duration_s)
    chunks = 20
    chunk_s = duration_s / chunks
    per_chunk = int(rate * chunk_s)
    total = loadgen.Result(mode="open", connections=connections, duration_s=0.0,
                           offered_rate=rate)
    stop = gevent.event.Event()

    def poll_cost() -> None:
        while not stop.is_set():
            values = metrics(service)
            if "measure_cache_cost_used" in values and values.get("measure_cache_max_cost"):
                record.cost_polls.append((values["measure_cache_cost_used"],
                                          values["measure_cache_max_cost"]))
            stop.wait(COST_POLL_S)

    poller = gevent.spawn(poll_cost)
    print(f"{'t_s':>6} {'rss_mb per worker':>26} {'cost_used/max':>16} {'requests':>9} "
          f"{'failed':>6} {'5xx':>4} {'upstream':>8} {'up500':>6} {'hit%':>5} {'p99_ms':>8} "
          f"{'late':>5} {'up_timeouts':>11} {'up_rows':>8}", flush=True)
    started = time.monotonic()
    try:
        for chunk in range(chunks):
            span = per_chunk * rows
            part = loadgen.run_open(make_target(keys[chunk * span:(chunk + 1) * span]),
                                    rate=rate, duration_s=chunk_s, connections=connections,
                                    tally=STATUS_TALLY)
            _merge(total, part)
            record.samples.append(
                _sample(service, sim, total, part, time.monotonic() - started, record))
    finally:
        stop.set()
        poller.join()
    total.duration_s = time.monotonic() - started
    return record, total


def _merge(total: loadgen.Result, part: loadgen.Result) -> None:
    total.requests += part.requests
    total.started += part.started
    total.non_2xx += part.non_2xx
    total.late_sends += part.late_sends
    total.errors.update(part.errors)
    total.statuses.update(part.statuses)
    total.tallies.update(part.tallies)
    total.latencies_s.extend(part.latencies_s)


def _sample(service: Server, sim: Server, live: loadgen.Result, part: loadgen.Result,
            t_s: float, record: Soak) -> Sample:
    """Observe the processes now; ``part`` is the interval just run, ``live`` the total."""
    pids = service.child_pids()
    record.worker_pids.update(pids)
    rss = {pid: value for pid in pids if (value := rss_mb(pid)) is not None}
    values = metrics(service)
    calls, calls_500 = upstream_calls(sim)
    sample = Sample(
        t_s=round(t_s, 1), rss_mb=rss, cost_used=values.get("measure_cache_cost_used"),
        max_cost=values.get("measure_cache_max_cost"), requests=live.requests,
        failed=_failed(live), status_5xx=_status_5xx(live), upstream_calls=calls,
        upstream_500=calls_500,
        interval_hit_pct=round(100 * part.tallies["hit"] / max(1, sum(part.tallies.values())), 1),
        interval_p99_ms=round(loadgen.percentile(sorted(part.latencies_s), 99) * 1000, 1),
        interval_late_sends=part.late_sends,
        upstream_outcomes={
            series.split('outcome="', 1)[1].split('"', 1)[0]: value
            for series, value in values.items()
            if series.startswith("measure_upstream_requests_total{")
        },
        upstream_rows=values.get("measure_upstream_rows_total"),
    )
    rss_text = " ".join(f"{pid}:{mb:.1f}" for pid, mb in rss.items())
    cost_text = ("n/a" if sample.cost_used is None or not sample.max_cost
                 else f"{sample.cost_used / sample.max_cost:.3f}")
    print(f"{sample.t_s:>6.0f} {rss_text:>26} {cost_text:>16} {sample.requests:>9} "
          f"{sample.failed:>6} {sample.status_5xx:>4} {sample.upstream_calls:>8} "
          f"{sample.upstream_500:>6} {sample.interval_hit_pct:>5} {sample.interval_p99_ms:>8} "
          f"{sample.interval_late_sends:>5} {sample.upstream_outcomes.get('timeout', 0):>11.0f} "
          f"{sample.upstream_rows or 0:>8.0f}", flush=True)
    return sample


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length (default 10)")
    parser.add_argument("--quick", action="store_true", help="1 minute, 5 s saturation probe")
    parser.add_argument("--rate", type=float, help="req/s to offer (default: half of saturation)")
    parser.add_argument("--probe-seconds", type=float, default=10.0, help="saturation probe")
    parser.add_argument("--cache-entries", type=int, default=20_000,
                        help="rows each worker's cache holds (default 20000)")
    parser.add_argument("--key-factor", type=float, default=5.0,
                        help="distinct keys / cache entries (default 5)")
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=5, help="rows per request (default 5)")
    parser.add_argument("--error-rate", type=float, default=0.01,
                        help="share of upstream calls answered 500 (default 0.01)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="simulator latency")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=128, help="open-loop bound")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the samples and verdicts here")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.probe_seconds = 1.0, 5.0
    if args.minutes <= 0 or args.cache_entries < 1 or args.rows < 1 or args.key_factor <= 0:
        parser.error("--minutes, --cache-entries, --rows and --key-factor must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; print samples and verdicts; exit 1 when a verdict fails."""
    args = _parse_args(argv)
    duration_s = args.minutes * 60
    n_keys = int(args.cache_entries * args.key_factor)
    env = {
        "API_KEYS": API_KEY, "SCOPE3_API_TOKEN": "soak-upstream-token",
        "CACHE_MAX_COST": str(args.cache_entries * ROW_COST),
        "WAIT_FOR_MISSING": "true", "WAIT_WINDOW_MS": "45", "ACCESS_LOG": "off",
        "LOG_LEVEL": "WARNING",
    }
    with Processes() as procs:
        sim = procs.simulator("--error-rate", str(args.error_rate), "--seed", str(args.seed),
                              latency_ms=args.latency_ms, jitter_ms=args.latency_ms / 3,
                              token=env["SCOPE3_API_TOKEN"],
                              )
        env["SCOPE3_API_URL"] = sim.url
        service = procs.gunicorn("measure_service.wsgi:app", env=env, workers=args.workers)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

        def target(keys: Sequence[int]) -> loadgen.Target:
            return ZipfBodies.from_url(service.url + "/v2/measure", headers=headers, keys=keys,
                                       rows=args.rows)

        rate = args.rate
        if rate is None:
            # The probe draws from another seed, so the soak does not start on keys it cached.
            probe_keys = zipf_keys(n_keys, int(args.probe_seconds * 3000) * args.rows,
                                   args.zipf_s, args.seed + 1000)
            rate = saturation(target(probe_keys), args.probe_seconds, 64) / 2
        print(f"soak: {args.minutes:g} min at {rate:.0f} req/s x {args.rows} rows, Zipf("
              f"{args.zipf_s}) over {n_keys} keys, {args.cache_entries} entries per worker "
              f"(CACHE_MAX_COST={env['CACHE_MAX_COST']}), {args.workers} workers, upstream "
              f"{args.latency_ms:g} ms, error rate {args.error_rate}", flush=True)
        keys = zipf_keys(n_keys, (int(rate * duration_s) + 20) * args.rows, args.zipf_s,
                         args.seed)
        record, result = soak(service, sim, keys, target, rate=rate, duration_s=duration_s,
                              connections=args.connections, rows=args.rows)
    summary = result.summary()
    verdicts = record.verdicts()
    print("load:", json.dumps({k: summary[k] for k in (
        "requests", "rps", "non_2xx", "statuses", "errors", "late_sends", "latency_ms",
        "tallies")}))
    for name, (passed, text) in verdicts.items():
        label = "n/a " if passed is None else ("PASS" if passed else "FAIL")
        print(f"{label} {name}: {text}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rate": rate, "load": summary,
            "samples": [vars(s) for s in record.samples],
            "cost_polls": record.cost_polls,
            "verdicts": {k: {"passed": p, "figure": t} for k, (p, t) in verdicts.items()},
        }, indent=1))
    return 0 if all(p is not False for p, _ in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
