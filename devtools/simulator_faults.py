"""The simulator's fault settings (modes, rates, poisoned rows) and what poison does to answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from devtools.simulator_answers import is_number

MODES = ("ok", "hang", "500", "429", "malformed", "reset", "slow_body")
# What a poisoned row does to its request (the ``poison_<kind>`` fields).
POISON_KINDS = (
    "5xx", "400", "hang", "slow", "reset", "malformed", "short", "identity", "row_error"
)
# The kinds that replace the request's outcome; the others change the answer's rows.
POISON_OUTCOMES = {"5xx": "500", "400": "400", "hang": "hang", "reset": "reset",
                    "malformed": "malformed"}


@dataclasses.dataclass(frozen=True)
class Faults:
    """Latency and fault settings; every field can be changed at runtime via ``/_control``."""

    latency_ms: float = 100.0
    jitter_ms: float = 30.0
    error_rate: float = 0.0
    status_429_rate: float = 0.0
    retry_after: float = 2.0
    hang_rate: float = 0.0
    mode: str = "ok"
    poison_5xx: str = ""
    poison_400: str = ""
    poison_hang: str = ""
    poison_slow: str = ""
    poison_reset: str = ""
    poison_malformed: str = ""
    poison_short: str = ""
    poison_identity: str = ""
    poison_row_error: str = ""
    poison_slow_ms: float = 2500.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "retry_after", "poison_slow_ms"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("error_rate", "status_429_rate", "hang_rate"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for kind in POISON_KINDS:
            if not isinstance(getattr(self, f"poison_{kind}"), str):
                raise ValueError(f"poison_{kind} must be a string (empty: off)")

    def poison(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, int] | None:
        """The kind of the first poisoned row among ``rows`` and its index, else None."""
        markers = [(kind, marker) for kind in POISON_KINDS
                   if (marker := getattr(self, f"poison_{kind}"))]
        if not markers:
            return None
        for index, row in enumerate(rows):
            inventory = row.get("inventoryId")
            if not isinstance(inventory, str):
                continue
            for kind, marker in markers:
                if marker in inventory:
                    return kind, index
        return None

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """Return a copy with ``changes`` applied; ValueError names an unknown or bad field."""
        known = {field.name for field in dataclasses.fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)



def spoil(answered: list[dict[str, Any]], poison: tuple[str, int] | None) -> list[dict[str, Any]]:
    """The answer's rows as a poisoned row of the kinds that answer 200 leaves them."""
    if poison is None:
        return answered
    kind, index = poison
    if kind == "short":
        return answered[:index]
    if kind == "row_error":
        return [{"rowIdentifier": row["rowIdentifier"], "totalEmissions": None,
                 "inventoryCoverage": None, "error": {"message": "the batch failed"}}
                for row in answered]
    if kind == "identity":
        others = [row["rowIdentifier"] for i, row in enumerate(answered) if i != index]
        spoiled = dict(answered[index])
        spoiled["rowIdentifier"] = others[0] if others else f"{spoiled['rowIdentifier']}-x"
        return [spoiled if i == index else row for i, row in enumerate(answered)][::-1]
    return answered

