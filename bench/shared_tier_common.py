"""What every shared-tier figure uses: its settings, the services' environment, requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from driver import API_KEY, UPSTREAM_TOKEN

from devtools import probes
from devtools.harness import RedisServer, Service, Simulator

LEASE_MS = 2000
COOLDOWN_S = 2.0
REDIS_TIMEOUT_MS = 50
UPSTREAM_LATENCY_MS = 100
UPSTREAM_JITTER_MS = 30


def tier_env(sim: Simulator, redis: RedisServer) -> dict[str, str]:
    return {
        "ENV": "bench", "SCOPE3_API_URL": sim.url, "SCOPE3_API_TOKEN": UPSTREAM_TOKEN,
        "API_KEYS": API_KEY, "WAIT_FOR_MISSING": "true", "WAIT_WINDOW_MS": "1000",
        "ACCESS_LOG": "off", "LOG_LEVEL": "INFO", "REDIS_URL": redis.url,
        "REDIS_LEASE_MS": str(LEASE_MS), "REDIS_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
        "REDIS_TIMEOUT_MS": str(REDIS_TIMEOUT_MS), "UPSTREAM_RETRIES": "0",
    }


def rows(sites: list[str]) -> list[dict[str, Any]]:
    return [{"rowIdentifier": str(i), "inventoryId": s, "utcDatetime": "2024-10-30"}
            for i, s in enumerate(sites)]


def fresh(count: int, tag: str = "") -> list[str]:
    nonce = uuid.uuid4().hex[:8]
    return [f"{tag}{i}-{nonce}.example.com" for i in range(count)]


def post(service: Service, sites: list[str], timeout: float = 10) -> tuple[int, list[str]]:
    """One request on a fresh connection: its HTTP status and row statuses."""
    response = service.post(rows(sites), timeout=timeout)
    if response.status_code != 200:
        return response.status_code, []
    return 200, [row["status"] for row in response.json()["rows"]]


def upstream_rows(sim: Simulator) -> int:
    count: int = sim.stats("?keys=0")["rows"]
    return count


def tally(statuses: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def until(check: Callable[[], bool], timeout_s: float) -> float:
    """When ``check`` first held (inf: not within ``timeout_s``)."""
    try:
        probes.eventually(check, timeout_s, interval_s=0.05)
    except TimeoutError:
        return float("inf")
    return time.monotonic()

