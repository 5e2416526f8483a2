"""Figure 5 of bench/shared_tier.py: Redis killed, then hung, under load; how the service fares."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from load_generators import Generators
from shared_tier_common import fresh, post, rows, tier_env, until

from devtools.harness import Processes, RedisServer, Server, Service, Simulator


def figure_5(procs: Processes, sim: Simulator, redis: RedisServer,
             instances: list[Service], seconds: float, work_dir: Path) -> dict[str, Any]:
    hot_body = {"rows": rows(fresh(5, "f5hot"))}
    for _ in range(40):
        for service in instances:
            post(service, [row["inventoryId"] for row in hot_body["rows"]])
    body_file = work_dir / "f5.json"
    body_file.write_text(json.dumps(hot_body))
    gens = Generators(body_file, use_wrk=False)
    report: dict[str, Any] = {}

    def load(service: Server) -> dict[str, Any]:
        result = gens.saturate(service, connections=16, duration_s=seconds)
        return {"rps": result["rps"], "non_2xx": result["non_2xx"],
                "p99_ms": result["latency_ms"]["p99"]}

    # Cold requests go to a one-worker instance that does not wait for misses, so their
    # latency is the service's own (Redis included), not upstream's.
    probe = procs.service(sim, env={**tier_env(sim, redis), "WAIT_FOR_MISSING": "false"},
                          workers=1)

    def cold_latencies(service: Service, count: int) -> list[float]:
        took = []
        for _ in range(count):
            started = time.perf_counter()
            code, _ = post(service, fresh(1, "f5cold"))
            took.append((time.perf_counter() - started) * 1000)
            assert code == 200
        return took

    report["healthy_cold_ms"] = _summary(cold_latencies(probe, 50))
    for fault, inject, heal in (
        ("killed", redis.kill, redis.restart),
        ("hung", redis.pause, redis.resume),
    ):
        healthy = load(instances[0])
        inject()
        first = cold_latencies(probe, 10)
        during = load(instances[0])
        after_open = cold_latencies(probe, 50)
        health = instances[0].get("/readyz").json()
        heal()
        returned = time.monotonic()
        shared_again_s = until(lambda: _shared(instances), timeout_s=30) - returned
        # Every worker's breaker closed again before the next fault (the probe's included).
        until(lambda: probe.get("/readyz").json()["sharedTier"] == "ok", timeout_s=30)
        report[fault] = {
            "first_cold_requests_ms": [round(ms, 1) for ms in first],
            "healthy_hit_load": healthy,
            "hit_load": during,
            "hit_rps_vs_healthy": round(during["rps"] / healthy["rps"], 3),
            "cold_after_breaker_opened_ms": _summary(after_open),
            "readyz": health,
            "cold_p50_delay_after_open_ms": round(
                _summary(after_open)["p50"] - report["healthy_cold_ms"]["p50"], 2),
            "shared_again_after_s": round(shared_again_s, 2),
        }
    return report


def _shared(instances: list[Service]) -> bool:
    site = fresh(1, "f5probe")
    if post(instances[0], site)[1] != ["fetched"]:
        return False
    return all(post(instances[1], site)[1] == ["hit"] for _ in range(6))


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}

