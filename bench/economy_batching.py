"""Upstream economy, scenario 2: 400 concurrent 5-row requests over 2,000 distinct cold keys."""

from __future__ import annotations

import uuid
from collections import Counter

from driver import (
    ROWS_PER_REQUEST,
    burst,
    cold_rows,
)
from economy import (
    EconomyBench,
    spread_s,
)

from devtools.harness import stop


def run(bench: EconomyBench) -> None:
    """400 concurrent 5-row requests over 2,000 distinct cold keys."""
    name = "2 batching"
    bench.upstream.fresh()
    svc = bench.service(WAIT_FOR_MISSING="true")
    prefix = f"b{uuid.uuid4().hex[:8]}"
    try:
        bodies = [cold_rows(prefix, i * ROWS_PER_REQUEST, ROWS_PER_REQUEST)
                  for i in range(400)]
        replies = burst(svc.port, bodies)
        stats = bench.upstream.wait_quiet()
    finally:
        stop(svc)
    full = bench.upstream.stats(recent="0")
    repeated = sum(full["repeated_keys_by_agent"].values())
    failed = sum(r.status != 200 for r in replies)
    bench.report.add(name, "upstream requests for 400 requests", "<= 40",
                    stats["requests"], stats["requests"] <= 40)
    bench.report.add(name, "simulator rows", "2000", stats["rows"], stats["rows"] == 2000)
    bench.report.add(name, "keys sent twice by one worker", "0", repeated, repeated == 0)
    bench.report.add(name, "non-200 answers", "0", failed, failed == 0)
    bench.report.add(name, "time from the burst to its last answer", "-",
                    f"{spread_s(replies):.2f} s", None)
    bench.report.details["batching"] = {
        "upstream_requests": stats["requests"], "upstream_rows": stats["rows"],
        "rows_per_upstream_request": round(stats["rows"] / max(1, stats["requests"]), 1),
        "row_statuses": dict(Counter(s for r in replies for s in r.statuses())),
    }
