"""Upstream economy, scenario 4: Hit-path throughput, errors, memory and breaker timing with
upstream refused/hung.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import asdict
from typing import Any

from driver import (
    API_KEY,
    ROWS_PER_REQUEST,
    WORKERS,
    row,
)
from economy import (
    STATUS_TALLY,
    UPSTREAM_CONCURRENCY,
    EconomyBench,
    GaugePoller,
    MissStream,
    Sampler,
    first_closed,
    hang_arrivals,
    per_agent_close,
    refused,
    seconds_between,
    start_of_run,
    workers_cpu_s,
)
from loadgen import Target, run_closed

from devtools.harness import stop


def run(bench: EconomyBench) -> None:
    """Hit-path throughput, errors, memory and breaker timing with upstream refused/hung."""
    name = "4 upstream down"
    sizes = bench.sizes
    read_timeout_s = sizes.upstream_timeout_s
    bench.upstream.fresh()
    svc = bench.service(
        WAIT_FOR_MISSING="false", BREAKER_COOLDOWN_S=str(sizes.cooldown_s),
        UPSTREAM_TIMEOUT_MS=str(int(read_timeout_s * 1000)),
        UPSTREAM_CONCURRENCY=str(UPSTREAM_CONCURRENCY),
    )
    pids = svc.child_pids()
    hot = [row(f"hot{i}.example", f"h{i}") for i in range(ROWS_PER_REQUEST)]
    target = Target.from_url(
        svc.url + "/v2/measure",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        body=json.dumps({"rows": hot}).encode(),
    )
    phase_budget = 4 * sizes.down_seconds + 4 * sizes.cooldown_s + 60
    misses = MissStream(svc.port, f"m{uuid.uuid4().hex[:8]}", sizes.miss_rate, phase_budget)
    sampler = Sampler(pids, 0.25, phase_budget)
    gauge = GaugePoller(svc.port, 0.1, phase_budget)
    greenlets = GaugePoller(svc.port, 0.25, phase_budget, name="measure_background_greenlets")
    try:
        svc.warm(hot)
        misses.start()

        def hit_load() -> dict[str, Any]:
            cpu_before = workers_cpu_s(pids)
            result = run_closed(target, connections=sizes.hit_connections,
                                duration_s=sizes.down_seconds, timeout_s=10,
                                tally=STATUS_TALLY)
            summary = result.summary()
            # CPU per request does not depend on what else the machine runs, unlike req/s.
            summary["worker_cpu_us_per_request"] = round(
                (workers_cpu_s(pids) - cpu_before) / max(1, result.requests) * 1e6, 1)
            return summary

        healthy_start = time.time()
        healthy = hit_load()
        healthy_end = time.time()

        # Connection refused: the simulator is gone.
        refused_at = time.time()
        bench.upstream.stop()
        refused_run = hit_load()
        bench.upstream.start()
        refused_recovered = time.time()
        refused_closed = bench.wait_closed(misses, gauge, refused_recovered)
        refused_sim = bench.upstream.stats(keys="0")

        # Hanging: connections accepted, no answer.
        hang_at = time.time()
        bench.upstream.control(mode="hang")
        hang_run = hit_load()
        bench.upstream.control(mode="ok")
        hang_recovered = time.time()
        hang_closed = bench.wait_closed(misses, gauge, hang_recovered)
        hang_sim = bench.upstream.stats(keys="0")
        # Healthy again, so that the baseline is not one unlucky run on a shared machine.
        healthy_again = hit_load()
    finally:
        misses.stop()
        sampler.stop()
        gauge.stop()
        greenlets.stop()
        pids_after = svc.child_pids()
        stop(svc)

    replies = misses.ordered(0.0)
    miss_5xx = sum(r.status >= 500 or r.status == 0 for r in misses.replies)
    hit_failures = sum(run["non_2xx"] + sum(run["errors"].values())
                       for run in (healthy, refused_run, hang_run, healthy_again))
    growth = sampler.growth((healthy_start, healthy_end), refused_at)
    # Healthy runs before and after the outages: their mean is the baseline.
    healthy_rps = (healthy["rps"] + healthy_again["rps"]) / 2
    healthy_cpu = (healthy["worker_cpu_us_per_request"]
                   + healthy_again["worker_cpu_us_per_request"]) / 2

    first_hang = min((e["time"] for e in hang_sim.get("recent", [])
                      if e["status"] == "hang"), default=None)
    opened = {
        "refused": (refused_at, start_of_run(misses.ordered(refused_at), refused, 5)),
        "hang": (None if first_hang is None else first_hang + read_timeout_s,
                 start_of_run(misses.ordered(hang_at), refused, 5)),
    }
    closed = {"refused": (refused_recovered, refused_closed),
              "hang": (hang_recovered, hang_closed)}
    for kind, run in (("refused", refused_run), ("hang", hang_run)):
        ratio = run["rps"] / healthy_rps if healthy_rps else 0.0
        bench.report.add(name, f"{kind}: hit-path req/s vs healthy "
                        f"({run['rps']:.0f} vs {healthy_rps:.0f})", ">= 0.90x",
                        f"{ratio:.2f}x", ratio >= 0.9)
        cpu = run["worker_cpu_us_per_request"]
        cpu_ratio = healthy_cpu / cpu if cpu else 0.0
        bench.report.add(name, f"{kind}: same, from worker CPU per request "
                        f"({cpu:.0f} vs {healthy_cpu:.0f} us)", ">= 0.90x",
                        f"{cpu_ratio:.2f}x", cpu_ratio >= 0.9)
    bench.report.add(name, "5xx or failed answers (hits + misses)", "0",
                    hit_failures + miss_5xx, hit_failures + miss_5xx == 0)
    bench.report.add(name, "worker RSS rise over the healthy run", "<= 10 MiB",
                    f"{growth['rss_mib']:.1f} MiB", growth["rss_mib"] <= 10)
    bench.report.add(name, "worker threads / open fds rise", "<= 2 / <= 20",
                    f"{growth['threads']:.0f} / {growth['fds']:.0f}",
                    growth["threads"] <= 2 and growth["fds"] <= 20)
    bench.report.add(name, "worker restarts", "0", len(set(pids) - set(pids_after)),
                    set(pids) == set(pids_after))
    if gauge.readings:
        # /metrics is exposed: its gauge says when every worker's breaker opened and closed.
        for kind, fault in (("refused", refused_at), ("hang", hang_at)):
            opened[kind] = (opened[kind][0], gauge.first(fault, lambda v: v >= WORKERS))
        for kind, (recovered, _) in list(closed.items()):
            closed[kind] = (recovered, gauge.first(recovered, lambda v: v == 0))
    source = "/metrics" if gauge.readings else "row statuses"
    for kind in ("refused", "hang"):
        first_failure, open_at = opened[kind]
        if first_failure is None or open_at is None:
            bench.report.add(name, f"{kind}: all breakers open, after 1st failure ({source})",
                            "<= 1 s", "never seen", False)
        else:
            delay = open_at - first_failure
            bench.report.add(name, f"{kind}: all breakers open, after 1st failure ({source})",
                            "<= 1 s", f"{delay:.2f} s", delay <= 1.0)
        recovered, closed_at = closed[kind]
        limit = sizes.cooldown_s + 1
        if closed_at is None:
            bench.report.add(name, f"{kind}: all breakers closed, after recovery ({source})",
                            f"<= {limit:g} s", "never seen", False)
        else:
            delay = closed_at - recovered
            bench.report.add(name, f"{kind}: all breakers closed, after recovery ({source})",
                            f"<= {limit:g} s", f"{delay:.2f} s", delay <= limit)
    if greenlets.readings:
        # Flat: outages add at most the upstream slots' worth of hung fetches per worker.
        healthy_top = max((v for at, v in greenlets.readings
                           if healthy_start <= at <= healthy_end), default=0.0)
        outage_top = max((v for at, v in greenlets.readings if at >= refused_at), default=0.0)
        bound = healthy_top + WORKERS * UPSTREAM_CONCURRENCY
        bench.report.add(name, "background greenlets, healthy max / outage max (/metrics)",
                        f"<= {bound:g}", f"{healthy_top:g} / {outage_top:g}",
                        outage_top <= bound)
    else:
        bench.report.add(name, "worker greenlet count", "flat",
                        "not exposed by the service", None)
    bench.report.details["upstream_down"] = {
        "breaker_by_row_statuses": {
            kind: {
                "open_s": seconds_between(start_of_run(misses.ordered(fault), refused, 5), first),
                "closed_s": seconds_between(first_closed(misses, recovered), recovered),
            }
            for kind, fault, first, recovered in (
                ("refused", refused_at, refused_at, refused_recovered),
                ("hang", hang_at, opened["hang"][0], hang_recovered))
        },
        "hang_arrivals_per_worker_s": hang_arrivals(hang_sim),
        "healthy": healthy, "refused": refused_run, "hang": hang_run,
        "healthy_again": healthy_again,
        "worker_rise": growth, "read_timeout_s": read_timeout_s,
        "cooldown_s": sizes.cooldown_s, "miss_rate": sizes.miss_rate,
        "miss_answers": len(replies),
        "miss_statuses": dict(Counter(s for r in replies for s in r.statuses())),
        "close_per_worker_s": {
            "refused": per_agent_close(refused_sim, refused_recovered),
            "hang": per_agent_close(hang_sim, hang_recovered),
        },
        "worker_samples": [asdict(s) for s in sampler.samples[:: max(1, len(pids))]][-8:],
    }
