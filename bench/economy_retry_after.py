"""Upstream economy, scenario 5: 429 with Retry-After: 2: no request from that worker for 2 s, then
the rows.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

from driver import (
    ROWS_PER_REQUEST,
    closed_loop,
    cold_rows,
    measure,
)
from economy import (
    EconomyBench,
    quiet_after_429,
)

from devtools.harness import stop


def run(bench: EconomyBench) -> None:
    """429 with Retry-After: 2: no request from that worker for 2 s, then the rows."""
    name = "5 Retry-After"
    latency_s = 0.02
    svc = bench.service(WAIT_FOR_MISSING="true", UPSTREAM_RETRIES="2")
    prefix = f"r{uuid.uuid4().hex[:8]}"
    try:
        bench.upstream.fresh(latency_ms=latency_s * 1000, jitter_ms=0, mode="429",
                            retry_after=2)
        measure(svc.port, cold_rows(prefix, 0, ROWS_PER_REQUEST))
        deadline = time.monotonic() + 5
        while (bench.upstream.stats(keys="0", recent="0")["by_status"].get("429", 0) == 0
               and time.monotonic() < deadline):
            time.sleep(0.02)
        bench.upstream.control(mode="ok")
        # More misses on new connections while the gate is closed, so both workers get some:
        # the gated one must hold them back, the other must not.
        extra = closed_loop(svc.port, (cold_rows(prefix, (1 + i) * ROWS_PER_REQUEST,
                                                 ROWS_PER_REQUEST)
                                       for i in range(60)), connections=1, fresh=True)
        bench.upstream.wait_quiet(quiet_s=1.0)
    finally:
        stop(svc)
    stats = bench.upstream.stats(by_agent="1")
    recent = stats.get("recent", [])
    quiet = quiet_after_429(recent, latency_s)
    got_429 = [e for e in recent if e["status"] == "429"]
    gated = {e["user_agent"] for e in got_429}
    last_429 = max((e["time"] for e in got_429), default=0.0)
    # The first request's rows: sent once (429), then again after the gate by the same worker.
    first = tuple(f"{prefix}-{i}.example|" for i in range(ROWS_PER_REQUEST))
    resent = {
        agent: sorted(count for key, count in stats["rows_per_key_by_agent"][agent].items()
                      if key.startswith(first))
        for agent in gated
    }
    answered_after = all(e["status"] == "200" for e in recent
                         if e["user_agent"] in gated and e["time"] > last_429)
    fetched = answered_after and any(c == [2] * ROWS_PER_REQUEST for c in resent.values())
    bench.report.add(name, f"quiet time after a 429, same worker ({len(got_429)} x 429)",
                    ">= 2.0 s", "no 429 seen" if quiet is None else f"{quiet:.2f} s",
                    quiet is not None and quiet >= 2.0)
    bench.report.add(name, "the 429'd rows re-sent by that worker, answered 200", "yes",
                    "yes" if fetched else "no", fetched)
    bench.report.details["retry_after"] = {
        "upstream_429": len(got_429), "workers_gated": len(gated),
        "first_rows_sends_per_gated_worker": resent,
        "extra_statuses": dict(Counter(s for r in extra for s in r.statuses())),
    }
