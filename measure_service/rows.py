"""Validation of a /v2/measure request body, and the cache key of each row.

A bad body (not JSON, no ``rows`` list, too many rows) raises :class:`BodyError` and becomes a 400.
A bad row becomes an invalid :class:`Row` whose ``error`` names the field; it never goes upstream
and does not affect the other rows.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, get_args

DEFAULT_IMPRESSIONS = 1000
MAX_IMPRESSIONS = 10**12
MAX_WEIGHT = 100
MAX_TEXT = 256
MAX_INVENTORY_ID = 512

# Optional string fields that change the upstream answer, by their canonical (upstream) name.
_OPTIONAL_TEXT = ("country", "region", "channel", "deviceType", "network")
_CANONICAL = {
    name.lower(): name
    for name in (
        "inventoryId", "utcDatetime", "impressions", "weight", "rowIdentifier", *_OPTIONAL_TEXT
    )
}
_CANONICAL_NAMES = frozenset(_CANONICAL.values())
_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})-(\d{2})|/(\d{2})/(\d{2})|(\d{2})(\d{2}))"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?Z?)?"
)
_FRAMEWORK = re.compile(r"[A-Za-z0-9._-]{1,64}")

# What the service says about each row: the one vocabulary of the code, the answer's ``coverage``
# and ``openapi.yaml`` (a test holds them equal). Meanings are in the README.
RowStatus = Literal["hit", "fetched", "stale", "pending", "error", "unavailable", "invalid"]
ROW_STATUSES: tuple[RowStatus, ...] = get_args(RowStatus)


class BodyError(ValueError):
    """The request as a whole is unusable (answered 400 with this message)."""


class QueryParams(NamedTuple):
    """The validated query parameters that are forwarded upstream and are part of the key."""

    latest: str | None
    framework: str | None

    def upstream(self) -> dict[str, str]:
        """The parameters as sent upstream, leaving out those the client did not give."""
        params: dict[str, str] = {}
        if self.latest is not None:
            params["latest"] = self.latest
        if self.framework is not None:
            params["framework"] = self.framework
        return params


class RowKey(NamedTuple):
    """Every input that changes the upstream answer for one row (weight and id excluded)."""

    inventory_id: str
    date: str
    impressions: int
    country: str | None
    region: str | None
    channel: str | None
    device_type: str | None
    network: str | None
    framework: str | None
    latest: str | None

    @property
    def params(self) -> QueryParams:
        """The query parameters this row must be fetched with."""
        return QueryParams(self.latest, self.framework)

    def upstream_row(self, row_identifier: str) -> dict[str, Any]:
        """The row as sent upstream: built from the key alone, so one fetch serves every alias."""
        row: dict[str, Any] = {
            "rowIdentifier": row_identifier,
            "inventoryId": self.inventory_id,
            "utcDatetime": self.date,
            "impressions": self.impressions,
        }
        for name, value in zip(_OPTIONAL_TEXT, self[3:8], strict=True):
            if value is not None:
                row[name] = value
        return row


class Row(NamedTuple):
    """One request row after validation: a key to look up, or an error naming the bad field.

    A NamedTuple rather than a frozen dataclass: rows are built per request row, on the hit path.
    """

    row_identifier: Any
    property_name: str | None
    date: str | None
    weight: int
    key: RowKey | None
    error: str | None

    @property
    def cost(self) -> int:
        """The cache cost this row's weight asks for."""
        return weight_to_cost(self.weight)


def weight_to_cost(weight: int) -> int:
    """Map a weight (0..100) to a cache cost: 100 and above cost 1, 0..99 cost ``100 - weight``.

    A heavier row is cheaper to keep, so the cost-aware eviction keeps it longer.
    """
    if weight >= MAX_WEIGHT:
        return 1
    return MAX_WEIGHT - max(weight, 0)


def parse_query(args: Mapping[str, str]) -> QueryParams:
    """Validate ``latest`` (true/false) and ``framework`` (a short token); raise BodyError."""
    latest = args.get("latest")
    if latest is not None:
        latest = latest.strip().lower()
        if latest not in ("true", "false"):
            raise BodyError("query parameter latest must be true or false")
    framework = args.get("framework")
    if framework is not None:
        framework = framework.strip()
        if not _FRAMEWORK.fullmatch(framework):
            raise BodyError(
                "query parameter framework must be 1-64 letters, digits, '.', '_' or '-'"
            )
    return QueryParams(latest, framework)


def parse_body(body: bytes, max_rows: int) -> list[Any]:
    """Decode the JSON body and return its ``rows`` list; raise BodyError on a bad body.

    Stricter than ``json.loads``: NaN, Infinity, numbers too large for a float and duplicate
    keys are refused (RFC 8259 has no NaN, and with duplicates the meaning is ambiguous).
    """
    try:
        text = body.decode(json.detect_encoding(body))
        document = _DECODER.decode(text)
    except _NotJson as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body is not valid JSON: nested too deeply") from None
    except ValueError:
        raise BodyError("body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BodyError("body must be a JSON object with a rows list")
    rows = _lookup(document, "rows")
    if rows is None:
        raise BodyError("rows is required")
    if not isinstance(rows, list):
        raise BodyError("rows must be a list")
    if not rows:
        raise BodyError("rows must not be empty")
    if len(rows) > max_rows:
        raise BodyError(f"rows has {len(rows)} entries; at most {max_rows} are allowed")
    return rows


def validate_row(raw: Any, params: QueryParams) -> Row:
    """Validate one raw row; never raises, an invalid row carries ``error`` naming the field."""
    if not isinstance(raw, dict):
        return Row(None, None, None, 0, None, "row must be a JSON object")
    fields = _canonical_fields(raw)
    row_identifier = fields.get("rowIdentifier")
    if isinstance(row_identifier, bool) or not isinstance(row_identifier, (str, int, type(None))):
        return Row(None, None, None, 0, None, "rowIdentifier must be a string or an integer")
    inventory = fields.get("inventoryId")
    name = inventory.strip() if isinstance(inventory, str) else None
    try:
        weight = _weight(fields.get("weight"))
        inventory_id = _inventory_id(inventory)
        date = _date(fields.get("utcDatetime"))
        impressions = _impressions(fields.get("impressions"))
        country = _optional_text("country", fields.get("country"))
        region = _optional_text("region", fields.get("region"))
        channel = _optional_text("channel", fields.get("channel"))
        device_type = _optional_text("deviceType", fields.get("deviceType"))
        network = _optional_text("network", fields.get("network"))
    except _RowError as exc:
        return Row(row_identifier, name, None, 0, None, str(exc))
    key = RowKey(
        inventory_id, date, impressions, country, region, channel, device_type, network,
        params.framework, params.latest,
    )
    return Row(row_identifier, name, date, weight, key, None)


class _RowError(ValueError):
    """A field of one row is bad; the message names it."""


class _NotJson(ValueError):
    """The body parses only under Python's lenient JSON rules; the message says why."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _NotJson(f"duplicate key {_quote(name)}")
            seen.add(name)
    return document


def _refuse_constant(name: str) -> float:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJson(f"number {_quote(text)} is too large")
    return number


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_refuse_constant, parse_float=_finite_float
)


def _lookup(document: Mapping[str, Any], name: str) -> Any:
    if name in document:
        return document[name]
    for field, value in document.items():
        if field.lower() == name:
            return value
    return None


def _canonical_fields(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Rename known fields to their canonical spelling, whatever case the client used."""
    if raw.keys() <= _CANONICAL_NAMES:
        return raw  # the usual row: nothing to rename, and lower-casing each name costs 2 us
    fields: dict[str, Any] = {}
    for field, value in raw.items():
        canonical = _CANONICAL.get(field.lower()) if isinstance(field, str) else None
        if canonical is not None:
            fields[canonical] = value
    return fields


def _inventory_id(value: Any) -> str:
    if value is None:
        raise _RowError("inventoryId is required")
    if not isinstance(value, str):
        raise _RowError("inventoryId must be a string")
    text = value.strip().lower()
    if not text:
        raise _RowError("inventoryId must not be empty")
    if len(text) > MAX_INVENTORY_ID:
        raise _RowError(f"inventoryId must be at most {MAX_INVENTORY_ID} characters")
    return text


def _date(value: Any) -> str:
    if value is None:
        raise _RowError("utcDatetime is required")
    if not isinstance(value, str):
        raise _RowError("utcDatetime must be a string")
    return _normalise_date(value)


# Requests repeat a handful of dates: parsing each spelling once saves most of a row's cost.
@functools.lru_cache(maxsize=4096)
def _normalise_date(value: str) -> str:
    match = _DATE.fullmatch(value.strip())
    if match is None:
        raise _RowError("utcDatetime must look like 2024-10-30, 20241030 or 2024/10/30")
    year, m1, d1, m2, d2, m3, d3, hour, minute, second = match.groups()
    month, day = m1 or m2 or m3, d1 or d2 or d3
    try:
        date = datetime.date(int(year), int(month), int(day))
        if hour is not None:
            datetime.time(int(hour), int(minute), int(second))
    except ValueError:
        raise _RowError("utcDatetime is not a real calendar date and time") from None
    # Emissions are daily figures: the time of day does not change the answer.
    return date.isoformat()


def _impressions(value: Any) -> int:
    if value is None:
        return DEFAULT_IMPRESSIONS
    number = _whole_number(value, "impressions")
    if not 0 <= number <= MAX_IMPRESSIONS:
        raise _RowError(f"impressions must be between 0 and {MAX_IMPRESSIONS}")
    return number


def _weight(value: Any) -> int:
    if value is None:
        return 0
    number = _whole_number(value, "weight")
    if not 0 <= number <= MAX_WEIGHT:
        raise _RowError(f"weight must be between 0 and {MAX_WEIGHT}")
    return number


def _whole_number(value: Any, field: str) -> int:
    """Accept ints and integral floats (``1000.0``); refuse bools, fractions, NaN and strings."""
    if isinstance(value, bool):
        raise _RowError(f"{field} must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _RowError(f"{field} must be an integer")


def _optional_text(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RowError(f"{field} must be a string or null")
    if len(value) > MAX_TEXT:
        raise _RowError(f"{field} must be at most {MAX_TEXT} characters")
    return value
