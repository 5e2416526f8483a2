"""Upstream economy, scenario 6: Short TTL, upstream down past it: hot keys are served stale, none
lost.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from driver import (
    ROWS_PER_REQUEST,
    closed_loop,
    cold_rows,
)
from economy import (
    EconomyBench,
)

from devtools.harness import stop


def run(bench: EconomyBench) -> None:
    """Short TTL, upstream down past it: hot keys are served stale, none lost."""
    name = "6 stale"
    ttl_s = 2
    bench.upstream.fresh()
    svc = bench.service(WAIT_FOR_MISSING="true", CACHE_TTL_SECONDS=str(ttl_s),
                       CACHE_STALE_SECONDS="600",
                       BREAKER_COOLDOWN_S=str(bench.sizes.cooldown_s))
    prefix = f"s{uuid.uuid4().hex[:8]}"
    bodies = [cold_rows(prefix, i * ROWS_PER_REQUEST, ROWS_PER_REQUEST) for i in range(10)]
    hot_keys = 10 * ROWS_PER_REQUEST
    try:
        values = bench.warm_everywhere(svc.port, bodies, hot_keys)
        bench.upstream.stop()
        time.sleep(ttl_s + 0.5)
        deadline = time.monotonic() + bench.sizes.stale_seconds
        bodies_forever = (bodies[i % len(bodies)] for i in range(100_000))

        def until_deadline() -> Iterator[list[dict[str, Any]]]:
            for rows in bodies_forever:
                if time.monotonic() > deadline:
                    return
                yield rows

        served = closed_loop(svc.port, until_deadline(), connections=8, fresh=True)
        bench.upstream.start()
        recovered = time.time()
        refreshed_after = bench.until_all_hits(svc.port, bodies, recovered,
                                               timeout_s=bench.sizes.cooldown_s + 10)
        bench.upstream.wait_quiet()
    finally:
        stop(svc)
    statuses: Counter[str] = Counter()
    lost = 0
    for reply in served:
        if reply.status != 200:
            lost += ROWS_PER_REQUEST
            continue
        for item in reply.document["rows"]:
            statuses[item["status"]] += 1
            value = values.get(item["propertyName"])
            if item["status"] not in ("stale", "hit") or item["totalEmissions"] != value:
                lost += 1
    total = sum(statuses.values())
    after = bench.upstream.stats(recent="0")
    repeated = sum(after["repeated_keys_by_agent"].values())
    bench.report.add(name, f"hot rows served stale with upstream down ({total} rows)",
                    "100%", f"{statuses['stale'] / max(1, total):.1%}",
                    total > 0 and statuses["stale"] == total)
    bench.report.add(name, "rows lost (no value, wrong value, non-200)", "0", lost,
                    lost == 0 and total > 0)
    bench.report.add(name, "after recovery: hot rows hits again", "yes",
                    "no" if refreshed_after is None else f"after {refreshed_after:.2f} s",
                    refreshed_after is not None)
    bench.report.add(name, "after recovery: keys refreshed twice by one worker", "0",
                    repeated, repeated == 0)
    bench.report.details["stale"] = {
        "ttl_s": ttl_s, "statuses": dict(statuses), "requests": len(served),
        "refresh_rows_after_recovery": after["rows"],
    }
