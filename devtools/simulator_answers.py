"""Scope3's answer for one row, as the simulator gives it, and the key that row is counted under."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

# Anchors so demos show familiar numbers; other domains get a stable pseudo-random rate.
_KNOWN_GRAMS_PER_1000: dict[str, float] = {"nytimes.com": 66.0}


def row_key(row: Mapping[str, Any], params: Mapping[str, str]) -> str:
    """The fields that change Scope3's answer for a row, joined: the unit of ``rows_per_key``."""
    fields = (
        row.get("inventoryId"), row.get("utcDatetime"), row.get("impressions"),
        row.get("country"), row.get("region"), row.get("channel"), row.get("deviceType"),
        row.get("network"), params.get("framework"), params.get("latest"),
    )
    return "|".join("" if value is None else str(value) for value in fields)


def measure_row(row: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    """Scope3's answer for one row: deterministic, linear in impressions, or a row error."""
    answer: dict[str, Any] = {"rowIdentifier": row.get("rowIdentifier")}
    inventory = row.get("inventoryId")
    impressions = row.get("impressions", 1000)
    problem = None
    if not isinstance(inventory, str) or not inventory.strip():
        problem = "inventoryId is required"
    elif "." not in inventory:
        problem = f"unknown inventoryId {inventory!r}: expected a domain such as nytimes.com"
    elif not isinstance(row.get("utcDatetime"), str) or not row["utcDatetime"]:
        problem = "utcDatetime is required"
    elif not is_number(impressions) or impressions < 0:
        problem = "impressions must be a number >= 0"
    if problem is not None:
        answer.update(totalEmissions=None, inventoryCoverage=None, error={"message": problem})
        return answer

    assert isinstance(inventory, str)
    domain = inventory.strip().lower()
    per_1000 = _KNOWN_GRAMS_PER_1000.get(domain, 20.0 + 100.0 * unit(domain))
    # The other fields nudge the rate a little either way, so distinct keys get distinct values.
    context = "|".join(
        str(row.get(name) or "")
        for name in ("utcDatetime", "country", "region", "channel", "deviceType", "network")
    ) + "|" + (params.get("framework") or "")
    factor = 0.95 + 0.10 * unit(domain + "|" + context)
    modeled = domain in _KNOWN_GRAMS_PER_1000 or unit(domain + "|coverage") < 0.8
    answer.update(
        totalEmissions=round(per_1000 * factor * float(impressions) / 1000.0, 6),
        inventoryCoverage="modeled" if modeled else "default",
    )
    return answer


def unit(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (Python's own hash() is salted per process)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )

