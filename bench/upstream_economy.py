"""Upstream economy benchmark: does the service fetch each key once, in few batches, and keep
answering when Scope3 is slow, rate-limited or down?

It starts the Scope3 simulator and the service (gunicorn, gevent, ``WEB_CONCURRENCY=2``) on free
loopback ports and drives six scenarios, each against a freshly started service
(cold cache) and a reset simulator, then prints one table (scenario, figure, target, got,
pass/fail). Each scenario is a module, ``economy_<name>.py``, with one ``run(bench)``; what they
share is in ``economy.py`` and ``driver.py``:

1. coalescing: 400 concurrent requests for the same 20 cold keys;
2. batching: 400 concurrent 5-row requests over 2,000 distinct cold keys;
3. wait window: a 20 ms upstream answers within the 45 ms window, a 200 ms one does not;
4. upstream down (connection refused, then hanging): hit-path throughput, 5xx, worker memory,
   breaker open and close times;
5. 429 with ``Retry-After: 2``: the worker stays quiet for 2 s, then fetches the rows;
6. stale: past the TTL with upstream down, hot keys are served ``stale``, none lost.

The simulator's ``/_stats`` tells workers apart by User-Agent (it carries the worker pid), so
"at most once per worker" is checked exactly. Every loop is bounded in count and time; every
process started here is stopped at the end, even on Ctrl-C. Run from the project root::

    .venv/bin/python bench/upstream_economy.py [--quick] [--scenarios 1,4] [--json out.json]
        [--upstream-timeout-ms 1000] [--miss-rate 40]
"""

from gevent import monkey

# The driver's own HTTP calls must yield to each other: patch before anything opens a socket.
monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
import economy_batching  # noqa: E402
import economy_coalescing  # noqa: E402
import economy_retry_after  # noqa: E402
import economy_stale  # noqa: E402
import economy_upstream_down  # noqa: E402
import economy_wait_window  # noqa: E402
from driver import (  # noqa: E402
    SIM_JITTER_MS,
    SIM_LATENCY_MS,
    WORKERS,
    Report,
    chosen_scenarios,
    finish,
    print_figures,
    progress,
)
from economy import (  # noqa: E402
    FULL,
    QUICK,
    EconomyBench,
)

from devtools.harness import Processes  # noqa: E402

SCENARIOS: dict[str, Callable[[EconomyBench], None]] = {
    "1": economy_coalescing.run, "2": economy_batching.run, "3": economy_wait_window.run,
    "4": economy_upstream_down.run, "5": economy_retry_after.run, "6": economy_stale.run,
}


def run(args: argparse.Namespace) -> Report:
    """Start the simulator, run the chosen scenarios, stop everything; return the report."""
    report = Report()
    report.details["meta"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/upstream_economy.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "workers": WORKERS, "simulator": f"{SIM_LATENCY_MS:g} ms +- {SIM_JITTER_MS:g} ms",
        "upstream_timeout_ms": args.upstream_timeout_ms, "miss_rate": args.miss_rate,
        "loadavg_before": os.getloadavg(),
    }
    with Processes() as procs:
        sizes = dataclasses.replace(QUICK if args.quick else FULL, miss_rate=args.miss_rate,
                                    upstream_timeout_s=args.upstream_timeout_ms / 1000)
        bench = EconomyBench(procs, sizes, report)
        for key in args.scenarios:
            progress(f"scenario {key}: {SCENARIOS[key].__doc__}")
            try:
                SCENARIOS[key](bench)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                report.add(key, "scenario crashed", "runs", f"{type(exc).__name__}: {exc}",
                           False)
                if bench.upstream.server is None:
                    bench.upstream.start()
    report.details["meta"]["loadavg_after"] = os.getloadavg()
    return report


def print_table(report: Report) -> None:
    """Print the figures as a table."""
    meta = report.details["meta"]
    print_figures(report, f"upstream economy, {meta['date']}, {meta['workers']} gevent workers, "
                  f"simulator {meta['simulator']}, {meta['cpus']} CPUs", (16, 62, 14, 22))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter runs for scenarios 3, 4 and 6 (about a minute in all)")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6",
                        help="comma-separated scenario numbers to run (default: all)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report here")
    parser.add_argument("--upstream-timeout-ms", type=float, default=FULL.upstream_timeout_s * 1000,
                        help="scenario 4: the service's UPSTREAM_TIMEOUT_MS (default: %(default)g)")
    parser.add_argument("--miss-rate", type=float, default=FULL.miss_rate,
                        help="scenario 4: cold 5-row requests a second beside the hit load "
                             "(default: %(default)g)")
    args = parser.parse_args(argv)
    if args.upstream_timeout_ms <= 0 or args.miss_rate <= 0:
        parser.error("--upstream-timeout-ms and --miss-rate must be > 0")
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
