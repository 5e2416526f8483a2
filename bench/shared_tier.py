"""Shared-tier benchmark: two instances of two workers on one redis-server and one simulator.

Figures (bench/README.md has the targets and the latest numbers):

1. one key fetched through one instance, then 20 requests on fresh connections over both
   ports: how many are ``hit``, and how many rows upstream saw;
2. cold burst: 400 requests of the same 20 cold keys spread over both instances: upstream rows;
3. restart one instance (SIGTERM, start again): the share of the hot keys its new workers
   answer ``hit`` at once, and the upstream rows that cost;
4. the L1-miss / Redis-hit path of one worker, in rows per second (in a child process, under
   gevent's monkey patching as in a worker: 100-row lookups, an in-process cache that keeps
   nothing, Redis holding every row); the L1 hit path with and without ``REDIS_URL`` is
   ``bench/service_load.py --with-redis``;
5. Redis killed, then hung (SIGSTOP): 5xx answers, hit req/s against healthy, how long cold
   requests take before and after the breaker opens, and how soon rows are shared again
   after Redis returns;
6. the lease holder SIGKILLed mid-fetch (and killed before sending, killed after upstream
   answered, hung and resumed): how long from the lease's start until another worker has the
   row in Redis, against the lease time plus the upstream round trip of that worker's fetch
   (as its upstream client measured it), with each step between stamped;
7. Redis memory per cached row (``INFO memory`` over ``DBSIZE``).

Figures 4, 5 and 6 are in ``shared_tier_l2.py``, ``shared_tier_redis_faults.py`` and
``shared_tier_leases.py``; what every figure uses is in ``shared_tier_common.py``.

Run from the project root::

    .venv/bin/python bench/shared_tier.py [--json out.json] [--only 1,2,...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools, from a checkout
from driver import UPSTREAM_TOKEN
from shared_tier_common import (
    UPSTREAM_JITTER_MS,
    UPSTREAM_LATENCY_MS,
    fresh,
    post,
    tally,
    tier_env,
    upstream_rows,
)
from shared_tier_l2 import figure_4, l2_worker
from shared_tier_leases import figure_6
from shared_tier_redis_faults import figure_5

from devtools.harness import Processes, RedisServer, Service, Simulator

# --- figures ------------------------------------------------------------------------------------

def figure_1(sim: Simulator, instances: list[Service]) -> dict[str, Any]:
    site = fresh(1)
    before = upstream_rows(sim)
    first = post(instances[0], site)[1]
    answers = [post(instances[i % 2], site)[1][0] for i in range(20)]
    seen = upstream_rows(sim) - before
    return {"first": first[0], "of_20": tally(answers), "upstream_rows": seen,
            "ok": answers.count("hit") == 20 and seen == 1}


def figure_2(sim: Simulator, instances: list[Service]) -> dict[str, Any]:
    sites = fresh(20)
    before = upstream_rows(sim)
    targets = [instances[i % 2] for i in range(400)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda s: post(s, sites), targets))
    time.sleep(0.5)  # fetches that outlived their requests still land upstream
    seen = upstream_rows(sim) - before
    return {"requests": len(answers), "http": tally([str(code) for code, _ in answers]),
            "rows": tally([st for _, statuses in answers for st in statuses]),
            "upstream_rows": seen, "ok": seen == 20}


def figure_3(procs: Processes, sim: Simulator, redis: RedisServer,
             instances: list[Service]) -> dict[str, Any]:
    hot = fresh(2000, "hot")
    for start in range(0, len(hot), 200):
        post(instances[0], hot[start:start + 200], timeout=30)
    before = upstream_rows(sim)
    old = instances[1]
    old.process.send_signal(signal.SIGTERM)
    old.process.wait(timeout=30)
    started = time.monotonic()
    new = procs.service(sim, env=tier_env(sim, redis), workers=2)
    restart_s = time.monotonic() - started
    instances[1] = new
    answers: list[str] = []
    for start in range(0, len(hot), 100):
        answers += post(new, hot[start:start + 100], timeout=30)[1]
    seen = upstream_rows(sim) - before
    hit_share = answers.count("hit") / len(hot)
    return {"hot_keys": len(hot), "restart_s": round(restart_s, 2), "rows": tally(answers),
            "hit_share": round(hit_share, 4), "upstream_rows": seen,
            "ok": hit_share >= 0.99 and seen == 0}


def figure_7(redis: RedisServer, count: int = 100_000) -> dict[str, Any]:
    from measure_service.breaker import CircuitBreaker
    from measure_service.config import Config
    from measure_service.rows import RowKey
    from measure_service.shared_tier import SharedTier, connect
    from measure_service.upstream import RowResult

    client = redis.client()
    client.flushall()
    empty = client.info("memory")["used_memory"]
    config = Config.from_env({"AUTH_DISABLED": "true", "REDIS_URL": redis.url})
    tier = SharedTier(connect(config), prefix=config.redis_prefix, lease_s=5, ttl_s=86_400,
                      stale_s=86_400, error_ttl_s=300, breaker=CircuitBreaker(3, 2.0))
    for start in range(0, count, 1000):
        tier.write(
            (RowKey(f"www.site-{i}.example.com", "2024-10-30", 1000, "US", None, "web", "pc",
                    None, None, None), RowResult(1000 * 0.0661234 + i / 7, "modeled", None))
            for i in range(start, start + 1000))
    keys = client.dbsize()
    used = client.info("memory")["used_memory"]
    sample = client.get(client.randomkey())
    return {"rows": keys, "used_memory": used, "used_memory_empty": empty,
            "bytes_per_row": round(used / keys, 1),
            "bytes_per_row_over_empty": round((used - empty) / keys, 1),
            "sample_value": sample.decode() if sample else None,
            "ok": used / keys <= 600}


# --- driver ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 8))
    work_dir = Path(tempfile.mkdtemp(prefix="shared-tier-"))
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/shared_tier.py", *sys.argv[1:]]),
        "loadavg_before": os.getloadavg(), "cpus": os.cpu_count(),
    }
    with Processes(work_dir / "logs") as procs:
        redis = procs.redis("--maxmemory", "512mb")
        sim = procs.simulator(latency_ms=UPSTREAM_LATENCY_MS, jitter_ms=UPSTREAM_JITTER_MS,
                              token=UPSTREAM_TOKEN)
        instances = [procs.service(sim, env=tier_env(sim, redis), workers=2) for _ in range(2)]
        steps: list[tuple[int, Callable[[], Any]]] = [
            (1, lambda: figure_1(sim, instances)),
            (2, lambda: figure_2(sim, instances)),
            (3, lambda: figure_3(procs, sim, redis, instances)),
            (4, lambda: figure_4(redis, args.seconds)),
            (6, lambda: figure_6(sim, redis, instances)),
            (5, lambda: figure_5(procs, sim, redis, instances, args.seconds, work_dir)),
            (7, lambda: figure_7(redis)),
        ]
        for number, step in steps:
            if number in only:
                print(f"figure {number} ...", file=sys.stderr, flush=True)
                report[f"figure_{number}"] = step()
                print(json.dumps(report[f"figure_{number}"], indent=1), file=sys.stderr)
    report["loadavg_after"] = os.getloadavg()
    report["logs"] = str(work_dir / "logs")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated figure numbers (default: all)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of timed runs")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the report here")
    parser.add_argument("--l2-worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.l2_worker:
        print(json.dumps(l2_worker(args.l2_worker, args.seconds)))
        return 0
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
