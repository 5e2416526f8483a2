"""Upstream economy, scenario 3: Cold rows with WAIT_FOR_MISSING=true and a 45 ms window, fast then
slow upstream.
"""

from __future__ import annotations

import uuid
from collections import Counter

from driver import (
    ROWS_PER_REQUEST,
    UPSTREAM_TOKEN,
    Client,
    closed_loop,
    cold_rows,
)
from economy import (
    EconomyBench,
)
from loadgen import percentile

from devtools.harness import stop


def run(bench: EconomyBench) -> None:
    """Cold rows with WAIT_FOR_MISSING=true and a 45 ms window, fast then slow upstream."""
    name = "3 wait window"
    count = bench.sizes.window_requests
    svc = bench.service(WAIT_FOR_MISSING="true", WAIT_WINDOW_MS="45")
    try:
        prefix = f"w{uuid.uuid4().hex[:8]}"
        bench.upstream.fresh(latency_ms=20, jitter_ms=5)
        fast = closed_loop(svc.port, (cold_rows(prefix, i * ROWS_PER_REQUEST,
                                                ROWS_PER_REQUEST)
                                      for i in range(count)), connections=8)
        # The same 8 clients asking for rows that are now cached: the machine's own tail.
        hot = cold_rows(prefix, 0, ROWS_PER_REQUEST)
        svc.warm(hot)
        hits = closed_loop(svc.port, (hot for _ in range(count)), connections=8)
        bench.upstream.fresh(latency_ms=200, jitter_ms=5)
        slow = closed_loop(svc.port, (cold_rows(prefix, (count + i) * ROWS_PER_REQUEST,
                                                ROWS_PER_REQUEST)
                                      for i in range(count)), connections=8)
        bench.upstream.wait_quiet()
    finally:
        stop(svc)
    round_trip_ms = upstream_round_trip_ms(bench, latency_ms=20)
    fast_statuses = Counter(s for r in fast for s in r.statuses())
    slow_statuses = Counter(s for r in slow for s in r.statuses())
    fast_rows = count * ROWS_PER_REQUEST
    fetched_share = fast_statuses["fetched"] / fast_rows
    latencies = sorted(r.elapsed_s for r in slow if r.status == 200)
    p99_ms = percentile(latencies, 99) * 1000
    bench.report.add(name, f"20 ms upstream: cold rows fetched ({fast_rows} rows)",
                    ">= 99%", f"{fetched_share:.1%}", fetched_share >= 0.99)
    bench.report.add(name, "200 ms upstream: p99 response time", "<= 60 ms",
                    f"{p99_ms:.1f} ms", len(latencies) == count and p99_ms <= 60)
    bench.report.add(name, "200 ms upstream: cold rows pending", f"{fast_rows} (all)",
                    slow_statuses["pending"], slow_statuses["pending"] == fast_rows)
    hit_latencies = sorted(r.elapsed_s for r in hits if r.status == 200)
    bench.report.add(name, "all-hit requests, same 8 clients: p50 / p99", "-",
                    f"{percentile(hit_latencies, 50) * 1000:.1f} / "
                    f"{percentile(hit_latencies, 99) * 1000:.1f} ms", None)
    bench.report.add(name, "200 ms upstream: p50 response time", "-",
                    f"{percentile(latencies, 50) * 1000:.1f} ms", None)
    bench.report.add(name, "simulator keep-alive round trip at 20 ms, median", "-",
                    f"{round_trip_ms:.1f} ms", None)
    bench.report.details["wait_window"] = {
        "fast_statuses": dict(fast_statuses), "slow_statuses": dict(slow_statuses),
        "fast_p99_ms": round(percentile(sorted(r.elapsed_s for r in fast), 99) * 1000, 1),
        "slow_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "slow_p99_ms": round(p99_ms, 1), "slow_max_ms": round(max(latencies) * 1000, 1),
    }


def upstream_round_trip_ms(bench: EconomyBench, latency_ms: float) -> float:
    """Median time of 15 requests to the simulator itself on one keep-alive connection.

    Shows what the service's upstream calls cost beyond the configured latency.
    """
    bench.upstream.fresh(latency_ms=latency_ms, jitter_ms=0)
    client = Client(bench.upstream.port)
    body = {"rows": [{**r, "rowIdentifier": str(i)}
                     for i, r in enumerate(cold_rows("rt", 0, ROWS_PER_REQUEST))]}
    try:
        replies = [client.call("POST", "/v2/measure", body, token=UPSTREAM_TOKEN)
                   for _ in range(15)]
    finally:
        client.close()
    bench.upstream.reset()
    if any(reply.status != 200 for reply in replies):
        raise RuntimeError("the simulator did not answer the round-trip probe with 200")
    times = sorted(reply.elapsed_s for reply in replies)
    return times[len(times) // 2] * 1000
