"""Upstream economy, scenario 1: 400 concurrent requests for the same 20 cold keys."""

from __future__ import annotations

import uuid
from collections import Counter

from driver import (
    burst,
    cold_rows,
)
from economy import (
    EconomyBench,
)

from devtools.harness import stop


def run(bench: EconomyBench) -> None:
    """400 concurrent requests for the same 20 cold keys."""
    name = "1 coalescing"
    bench.upstream.fresh()
    svc = bench.service(WAIT_FOR_MISSING="true")
    try:
        rows = cold_rows(f"c{uuid.uuid4().hex[:8]}", 0, 20)
        replies = burst(svc.port, [rows] * 400)
        stats = bench.upstream.wait_quiet()
    finally:
        stop(svc)
    full = bench.upstream.stats(recent="0")
    repeated = sum(full["repeated_keys_by_agent"].values())
    failed = sum(r.status != 200 for r in replies)
    bench.report.add(name, "simulator rows for 20 keys x 400 requests", "<= 40",
                    stats["rows"], stats["rows"] <= 2 * 20)
    bench.report.add(name, "keys sent twice by one worker", "0", repeated, repeated == 0)
    bench.report.add(name, "keys fetched", "20", len(full["rows_per_key"]),
                    len(full["rows_per_key"]) == 20)
    bench.report.add(name, "non-200 answers", "0", failed, failed == 0)
    bench.report.details["coalescing"] = {
        "upstream_requests": stats["requests"], "upstream_rows": stats["rows"],
        "row_statuses": dict(Counter(s for r in replies for s in r.statuses())),
    }
