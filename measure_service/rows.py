"""Validation of a /v2/measure request body, and the cache key of each row.

A bad body (not JSON, no ``rows`` list, too many rows) raises :class:`BodyError` and becomes a 400.
A bad row becomes an invalid :class:`Row` whose ``error`` names the field; it never goes upstream
and does not affect the other rows.

Every field a row may carry is forwarded upstream and is part of the key, except ``weight`` and
``rowIdentifier`` (ours); any other field makes the row invalid, so that no client gets the
answer to a question it did not ask. Text must be valid Unicode (no lone surrogates) without
control characters, within the limits below. Values are normalised only where Scope3 gives the
same answer: the README lists each normalisation.
"""

from __future__ import annotations

import datetime
import functools
import gc
import json
import math
import re
from collections.abc import Iterable, Mapping
from sys import intern
from typing import Any, Literal, NamedTuple, get_args

import orjson

DEFAULT_IMPRESSIONS = 1000
MAX_IMPRESSIONS = 10**12
MAX_WEIGHT = 100
MAX_INVENTORY_ID = 512
MAX_REGION = 64
MAX_ROW_IDENTIFIER = 256
# Longest utcDatetime spelling with room for surrounding spaces; checked before parsing.
MAX_DATE_TEXT = 64
# Names beside ``rows`` in a body are ignored, so a body needs few; a bound keeps a body of
# thousands of names from costing a worker its time.
MAX_TOP_LEVEL_NAMES = 16
# Names and values a body may hold beside its rows: the object, the rows list and the other
# top-level names, with room for small values of their own.
TOP_LEVEL_TOKENS = 1024
# Scope3's enums (v2 data dictionary): values are matched in any case and forwarded lower-case.
CHANNELS = frozenset(
    {"app", "ctv-bvod", "digital-audio", "dooh", "olv", "social", "streaming-video", "web"}
)
DEVICE_TYPES = frozenset({"pc", "phone", "tablet", "tv", "smart-speaker"})
NETWORKS = frozenset({"fixed", "mobile"})

# A cached entry's cost is its weight's cost times its size in units of BYTES_PER_COST_UNIT, so
# CACHE_MAX_COST bounds memory whatever the clients send. ENTRY_OVERHEAD_BYTES is what an entry
# takes beyond its own text (cache record, sketch share, key tuple, value), as measured by
# bench/limits.py; enum values, countries and dates are shared objects and count in it.
BYTES_PER_COST_UNIT = 512
ENTRY_OVERHEAD_BYTES = 400
# Sizes are rounded up to eighths of a unit: costs stay few and exact in binary floating point.
_SIZE_STEP = BYTES_PER_COST_UNIT // 8

# Optional string fields that change the upstream answer, by their canonical (upstream) name.
_OPTIONAL_TEXT = ("country", "region", "channel", "deviceType", "network")
_CANONICAL = {
    name.lower(): name
    for name in (
        "inventoryId", "utcDatetime", "impressions", "weight", "rowIdentifier", *_OPTIONAL_TEXT
    )
}
_CANONICAL_NAMES = frozenset(_CANONICAL.values())
_ACCEPTED = ", ".join(sorted(_CANONICAL_NAMES))
_MAX_ROW_PAIRS = len(_CANONICAL_NAMES) + 1
_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})-(\d{2})|/(\d{2})/(\d{2})|(\d{2})(\d{2}))"
    r"(?:T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?Z?)?"
)
_FRAMEWORK = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
# C0 and C1 controls, DEL, and lone surrogates (valid in JSON escapes, not encodable as UTF-8).
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_QUERY_NAMES = ("latest", "framework")
# Each enum's canonical values, each mapped to itself: one object per value, shared by every
# key that holds it.
_CHANNELS = {value: value for value in CHANNELS}
_DEVICE_TYPES = {value: value for value in DEVICE_TYPES}
_NETWORKS = {value: value for value in NETWORKS}
# Country codes seen in their canonical spelling (at most 26 * 26): the usual row skips checks.
_COUNTRIES: dict[str, str] = {}

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
    # The cache cost of the row's entry: its weight's cost times its size (0 for invalid rows).
    cost: float = 0.0


def weight_to_cost(weight: int) -> int:
    """Map a weight (0..100) to a cache cost: 100 and above cost 1, 0..99 cost ``100 - weight``.

    A heavier row is cheaper to keep, so the cost-aware eviction keeps it longer.
    """
    if weight >= MAX_WEIGHT:
        return 1
    return MAX_WEIGHT - max(weight, 0)


# The cost of one size step at each valid weight, read per row instead of computed: eighths
# are exact in binary floating point, so each cost is weight_to_cost(weight) * steps / 8.
_STEP_COST = {weight: weight_to_cost(weight) / 8 for weight in range(MAX_WEIGHT + 1)}


def parse_query(args: Mapping[str, str]) -> QueryParams:
    """Validate ``latest`` (true/false) and ``framework`` (a short token); raise BodyError.

    Any other parameter is refused: it would be dropped, and the client answered for another
    question. ``latest=false`` is Scope3's default, so it is the same key as no ``latest``.
    """
    for name in args:
        if name not in _QUERY_NAMES:
            raise BodyError(
                f"unknown query parameter {_quote(name)}: only latest and framework are accepted"
            )
    getlist = getattr(args, "getlist", None)
    if getlist is not None:
        for name in _QUERY_NAMES:
            if len(getlist(name)) > 1:
                raise BodyError(f"query parameter {name} is given more than once")
    latest = args.get("latest")
    if latest is not None:
        latest = latest.strip().lower()
        if latest not in ("true", "false"):
            raise BodyError("query parameter latest must be true or false")
        latest = "true" if latest == "true" else None
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

    Stricter than ``json.loads``: NaN, Infinity, duplicate keys and numbers too large for a float
    are refused (RFC 8259 has no NaN, and with duplicates the meaning is ambiguous), and so is a
    body holding more names and values than ``max_rows`` rows can need, or a number of more than
    ``MAX_NUMBER_DIGITS`` digits: both are found from the bytes before anything is decoded, so
    that no body costs much more than a full request. JSON objects are decoded as tuples of pairs
    by the C scanner, and only the top level and the rows become dicts: a Python hook per object
    would make a large body costly. Bodies whose reading by orjson is surely the same (the usual
    request) are read by orjson instead.
    """
    # ASCII first and no NUL: UTF-8 (json.detect_encoding's rule, cheaper).
    data = body if body[:1] < b"\x80" and b"\x00" not in body[:4] else _utf8(body)
    plain = _decode_plain(data, _Shape(data, max_rows), max_rows)
    if plain is not None:
        # The usual body names only ``rows``.
        rows = plain["rows"] if len(plain) == 1 and "rows" in plain else _rows_of(plain.items())
    else:
        document = _decode_strict(data)
        if not isinstance(document, tuple):
            raise BodyError("body must be a JSON object with a rows list")
        _check_names(len(document))
        rows = _rows_of(document)
    if rows is None:
        raise BodyError("rows is required")
    if not isinstance(rows, list):
        raise BodyError("rows must be a list")
    if not rows:
        raise BodyError("rows must not be empty")
    if len(rows) > max_rows:
        raise BodyError(f"rows has {len(rows)} entries; at most {max_rows} are allowed")
    # orjson built the rows of a plain body as dicts already.
    return rows if plain is not None else [_row_object(row) for row in rows]


@functools.cache
def token_budget(max_rows: int) -> int:
    """The most JSON names and values (strings, numbers, literals, lists and objects) a body of
    at most ``max_rows`` rows may hold: every row with one pair more than a row may carry, and
    ``TOP_LEVEL_TOKENS`` for the rest."""
    return max_rows * (2 * _MAX_ROW_PAIRS + 1) + TOP_LEVEL_TOKENS


def _check_names(count: int) -> None:
    if count > MAX_TOP_LEVEL_NAMES:
        raise BodyError(
            f"body has {count} top-level names; at most {MAX_TOP_LEVEL_NAMES} are allowed"
        )


def _utf8(body: bytes) -> bytes:
    """The body as UTF-8 without a byte order mark (JSON may also come as UTF-16 or UTF-32)."""
    encoding = json.detect_encoding(body)
    if encoding == "utf-8":
        return body
    try:
        return body.decode(encoding).encode()
    except UnicodeError:
        raise BodyError(f"body is not valid JSON: not valid {encoding} text") from None


class _Shape:
    """What a body's bytes say about its JSON structure, found without decoding it.

    Counts over the whole body are upper bounds of the structure (a string may hold any
    character). When they are not enough, the body is recounted outside its strings: once
    escaped backslashes and quotes are removed, every quote opens or closes a string, so the
    bytes between a closing and the next opening quote are structure, and the counts exact for
    valid JSON (and for the valid prefix of a body that is not: the decoders stop there).

    Raises BodyError when the body holds more names and values than ``token_budget`` allows,
    or a number of more than ``MAX_NUMBER_DIGITS`` digits: both cost a decoder time that no
    request needs.
    """

    __slots__ = ("_budget", "_max_rows", "_text", "braces", "colons", "exact", "long_number")

    def __init__(self, data: bytes, max_rows: int) -> None:
        """Measure ``data`` (UTF-8) for a request of at most ``max_rows`` rows."""
        text = data.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in data else data
        self._text = text
        self._max_rows = max_rows
        self._budget = budget = token_budget(max_rows)
        # Every byte counted is one byte of the text, so text shorter than a bound cannot pass
        # it: the usual body needs only the counts that describe its shape.
        if len(text) > 2 * budget:
            quotes = text.count(b'"')
            if quotes > 2 * budget:
                _check_tokens(quotes // 2, max_rows)
        self.braces = text.count(b"{")
        self.colons = text.count(b":")
        self.exact = False
        if len(text) >= budget and (
            1 + text.count(b",") + self.colons + self.braces + text.count(b"[") > budget
        ):
            self.count_outside_strings()
        else:
            # Integers past 64 bits (at least 19 digits) orjson would read as floats.
            self.long_number = _LONG_NUMBER in text.translate(_DIGITS_TO_ZERO)
            if self.long_number:
                self.count_outside_strings()

    def count_outside_strings(self) -> None:
        """Make the counts exact; raise BodyError for a body over the bounds.

        Names are the colons; values are the root, one per comma, and one more per list or
        object that is not empty.
        """
        outside = b"".join(self._text.split(b'"')[::2])
        self.braces = outside.count(b"{")
        self.colons = outside.count(b":")
        self.exact = True
        tokens = 1 + outside.count(b",") + self.colons
        _check_tokens(tokens, self._max_rows)
        containers = self.braces + outside.count(b"[")
        if tokens + containers > self._budget:
            bare = outside.translate(None, b" \t\n\r")
            empty = bare.count(b"{}") + bare.count(b"[]")
            _check_tokens(tokens + containers - empty, self._max_rows)
        digits = outside.translate(_DIGITS_TO_ZERO)
        self.long_number = _LONG_NUMBER in digits
        if self.long_number and _TOO_LONG_NUMBER in digits:
            raise BodyError(f"body has a JSON number of more than {MAX_NUMBER_DIGITS} digits")


def _check_tokens(count: int, max_rows: int) -> None:
    budget = token_budget(max_rows)
    if count > budget:
        raise BodyError(
            f"body holds at least {count} JSON names and values; {max_rows} rows (MAX_ROWS) "
            f"of every field need at most {budget}"
        )


def _decode_plain(data: bytes, shape: _Shape, max_rows: int) -> dict[str, Any] | None:
    """The document, when orjson's reading of ``data`` is surely the strict one; else None.

    Raises BodyError at once for a body that would be refused whatever the strict reading
    says (too many top-level names, or a ``rows`` list longer than ``max_rows``), so that such
    a body is not parsed a second time.

    orjson keeps the last of duplicate keys, reads integers past 64 bits as floats and refuses
    lone surrogates. Its reading is used only for an object whose objects are all items of its
    lists (the rows), with as many colons as keys parsed (no key was dropped), and without a
    19-digit number; anything else takes the strict path.
    """
    if shape.long_number:
        return None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if len(document) > MAX_TOP_LEVEL_NAMES:
        _check_names(len(document))
    # The objects read (the root and those in its lists) and their names, to hold against the
    # text's braces and colons.
    braces, colons = 1, len(document)
    for name, value in document.items():
        if isinstance(value, list):
            if len(value) > max_rows and name.lower() == "rows":
                raise BodyError(f"rows has {len(value)} entries; at most {max_rows} are allowed")
            for item in value:
                if isinstance(item, dict):
                    braces += 1
                    colons += len(item)
    if (shape.braces, shape.colons) != (braces, colons) and not shape.exact:
        # Braces or colons inside strings (a time of day, a URL), or a dropped duplicate key.
        shape.count_outside_strings()
        if shape.long_number:
            return None
    return document if (shape.braces, shape.colons) == (braces, colons) else None


# Digits are found by mapping each to "0" and everything else to " " (a regular expression
# costs more). Integers past 64 bits have at least 19 digits.
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_NUMBER = b"0" * 19
# Reading an integer costs time that grows with the square of its digits; none of our fields
# needs more (a rowIdentifier string has at most MAX_ROW_IDENTIFIER characters).
MAX_NUMBER_DIGITS = MAX_ROW_IDENTIFIER
_TOO_LONG_NUMBER = b"0" * (MAX_NUMBER_DIGITS + 1)


def _decode_strict(body: bytes) -> Any:
    """The document in UTF-8 ``body``, by the standard decoder with strict hooks; BodyError.

    Objects come back as tuples of pairs, so that duplicate keys can be seen.
    """
    # A large body holds a great many objects; collecting while they are built only slows the
    # parse (nothing can be freed before it ends). The parse never yields, so no other greenlet
    # runs meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _DECODER.decode(body.decode())
    except _NotJson as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body is not valid JSON: nested too deeply") from None
    except ValueError:
        raise BodyError("body is not valid JSON") from None
    finally:
        if collecting:
            gc.enable()


def validate_row(raw: Any, params: QueryParams) -> Row:
    """Validate one raw row; never raises, an invalid row carries ``error`` naming the field.

    One function, run for every row of every request: each field's usual value (short clean
    text, an integer in range, a canonical spelling) is accepted where it is read, and only any
    other value goes to the field's own function, which normalises it or says what is wrong.
    Rows are nearly all usual values, and a call per field would cost a row more than its checks.
    """
    if not isinstance(raw, dict):
        return Row(None, None, None, 0, None, "row must be a JSON object")
    fields: Mapping[str, Any] = raw
    # The usual row names every field canonically: nothing to rename, and lower-casing each
    # name costs.
    if not _CANONICAL_NAMES.issuperset(raw):
        try:
            fields = _canonical_fields(raw)
        except _RowError as exc:
            return Row(None, None, None, 0, None, str(exc))
    get = fields.get
    row_identifier = get("rowIdentifier")
    if isinstance(row_identifier, str):
        if len(row_identifier) > MAX_ROW_IDENTIFIER or not (
            row_identifier.isprintable() or _is_clean(row_identifier)
        ):
            return Row(
                None, None, None, 0, None,
                f"rowIdentifier must be at most {MAX_ROW_IDENTIFIER} characters, "
                "without control characters or lone surrogates",
            )
    elif row_identifier is not None and (
        isinstance(row_identifier, bool) or not isinstance(row_identifier, int)
    ):
        return Row(None, None, None, 0, None, "rowIdentifier must be a string or an integer")
    inventory_id, date = get("inventoryId"), get("utcDatetime")
    weight, impressions = get("weight"), get("impressions")
    country, region = get("country"), get("region")
    channel, device_type, network = get("channel"), get("deviceType"), get("network")
    # Fields are checked in a fixed order: a row's error names the first bad one.
    try:
        if weight is None:
            weight = 0
        elif weight.__class__ is not int or not 0 <= weight <= MAX_WEIGHT:
            weight = _whole_number("weight", weight, MAX_WEIGHT)
        if (
            inventory_id.__class__ is str
            and len(inventory_id) <= MAX_INVENTORY_ID
            and inventory_id.isprintable()
        ):
            property_name = inventory_id.strip()
        else:
            property_name = _inventory_id(inventory_id)
        if not property_name:
            raise _RowError("inventoryId must not be empty")
        if date.__class__ is str and len(date) <= MAX_DATE_TEXT:
            date = _normalise_date(date)
        else:
            date = _date(date)
        if impressions is None:
            impressions = DEFAULT_IMPRESSIONS
        elif impressions.__class__ is not int or not 0 <= impressions <= MAX_IMPRESSIONS:
            impressions = _whole_number("impressions", impressions, MAX_IMPRESSIONS)
        # Absent or null optional fields keep None; a canonical spelling is found in its map.
        if country is not None:
            country = (
                _COUNTRIES.get(country) if country.__class__ is str else None
            ) or _country(country)
        if region is not None:
            region = _region(region)
        if channel is not None:
            channel = (
                _CHANNELS.get(channel) if channel.__class__ is str else None
            ) or _choice("channel", channel, _CHANNELS)
        if device_type is not None:
            device_type = (
                _DEVICE_TYPES.get(device_type) if device_type.__class__ is str else None
            ) or _choice("deviceType", device_type, _DEVICE_TYPES)
        if network is not None:
            network = (
                _NETWORKS.get(network) if network.__class__ is str else None
            ) or _choice("network", network, _NETWORKS)
    except _RowError as exc:
        # Echo the name only when it is valid text: an invalid one may be a megabyte long.
        return Row(row_identifier, _echoable(inventory_id), None, 0, None, str(exc))
    key_id = property_name.lower()
    framework = params.framework
    # The entry's cost: its weight's cost times its size in units (see BYTES_PER_COST_UNIT).
    # str.__sizeof__ is sys.getsizeof for text (the collector does not track it), without the
    # generic lookup getsizeof makes.
    size = ENTRY_OVERHEAD_BYTES + key_id.__sizeof__()
    if region is not None:
        size += region.__sizeof__()
    if framework is not None:
        size += framework.__sizeof__()
    # Built by tuple.__new__: a NamedTuple's own __new__ is a Python call, paid per row.
    key: RowKey = _new_tuple(RowKey, (
        key_id, date, impressions, country, region, channel, device_type, network, framework,
        params.latest,
    ))
    cost = _STEP_COST[weight] * -(-size // _SIZE_STEP)
    return _new_tuple(Row, (row_identifier, property_name, date, weight, key, None, cost))


_new_tuple = tuple.__new__


class _RowError(ValueError):
    """A field of one row is bad; the message names it."""


class _NotJson(ValueError):
    """The body parses only under Python's lenient JSON rules; the message says why."""


def _object(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """A decoded JSON object as a dict; BodyError on a duplicate key or a non-finite number."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise BodyError(f"body is not valid JSON: duplicate key {_quote(name)}")
            seen.add(name)
    for value in document.values():
        if value.__class__ is float and not math.isfinite(value):
            raise BodyError("body is not valid JSON: a number is too large for a float")
    return document


def _rows_of(pairs: Iterable[tuple[str, Any]]) -> Any:
    """The value of the top-level ``rows`` (any case); other top-level names are ignored."""
    found = [value for name, value in pairs if len(name) == 4 and name.lower() == "rows"]
    if len(found) > 1:
        raise BodyError("body is not valid JSON: duplicate key 'rows'")
    return found[0] if found else None


def _row_object(row: Any) -> Any:
    """A decoded row as a dict (other JSON values as they are, for validation to refuse).

    A row has at most one pair per canonical field: of a longer one, the first pairs already
    hold an unknown or repeated name, which makes it invalid, so only those are kept.
    """
    if row.__class__ is not tuple:
        return row
    return _object(row[:_MAX_ROW_PAIRS])


def _refuse_constant(name: str) -> float:
    raise _NotJson(f"{name} is not a JSON number")


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


# Objects become tuples of pairs (a C call each); arrays stay lists, so the two stay apart.
_DECODER = json.JSONDecoder(object_pairs_hook=tuple, parse_constant=_refuse_constant)


def _canonical_fields(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Rename known fields to their canonical spelling, whatever case the client used.

    Raises _RowError for a field that is not part of the contract, and for one given twice in
    different cases (which one would count is a guess).
    """
    fields: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for field, value in raw.items():
        canonical = _CANONICAL.get(field.lower()) if isinstance(field, str) else None
        if canonical is None:
            raise _RowError(
                f"unknown field {_quote(str(field))}: not forwarded upstream, so the answer "
                f"would ignore it; accepted fields: {_ACCEPTED}"
            )
        if canonical in fields:
            raise _RowError(
                f"{canonical} is given more than once "
                f"(as {_quote(spelled[canonical])} and {_quote(field)})"
            )
        fields[canonical] = value
        spelled[canonical] = field
    return fields


def _echoable(value: Any) -> str | None:
    """``value`` trimmed, when it is short clean text that can go back in an answer."""
    if not isinstance(value, str) or len(value) > MAX_INVENTORY_ID or not _is_clean(value):
        return None
    return value.strip()


def _is_clean(text: str) -> bool:
    """Whether ``text`` has no control character and no lone surrogate (see ``_BAD_TEXT``)."""
    # Printable text has neither (both are unprintable categories), and the check is a C loop.
    return text.isprintable() or _BAD_TEXT.search(text) is None


def _text(field: str, value: str, limit: int) -> str:
    """``value`` trimmed, refused when too long or holding control characters or surrogates."""
    if len(value) > limit:
        raise _RowError(f"{field} must be at most {limit} characters")
    if not _is_clean(value):
        raise _RowError(
            f"{field} must not contain control characters or lone surrogates (not UTF-8)"
        )
    return value.strip()


def _inventory_id(value: Any) -> str:
    """The inventoryId as given, trimmed (the key holds it lower-cased); may be empty."""
    if value is None:
        raise _RowError("inventoryId is required")
    if not isinstance(value, str):
        raise _RowError("inventoryId must be a string")
    return _text("inventoryId", value, MAX_INVENTORY_ID)


def _date(value: Any) -> str:
    if value is None:
        raise _RowError("utcDatetime is required")
    if not isinstance(value, str):
        raise _RowError("utcDatetime must be a string")
    if len(value) > MAX_DATE_TEXT:
        raise _RowError(f"utcDatetime must be at most {MAX_DATE_TEXT} characters")
    return _normalise_date(value)


# Requests repeat a handful of dates: parsing each spelling once saves most of a row's cost.
# Keys are at most MAX_DATE_TEXT characters, so the memo's size is bounded.
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


def _whole_number(field: str, value: Any, most: int) -> int:
    """An int, or an integral float (``1000.0``), from 0 to ``most``; bools, fractions, NaN and
    strings are refused."""
    if isinstance(value, bool):
        raise _RowError(f"{field} must be an integer, not a boolean")
    number: int
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        raise _RowError(f"{field} must be an integer")
    if not 0 <= number <= most:
        raise _RowError(f"{field} must be between 0 and {most}")
    return number


def _optional_string(field: str, value: Any) -> str | None:
    """A given field's text, or None when it is empty (Scope3 reads it as absent or null)."""
    if not isinstance(value, str):
        raise _RowError(f"{field} must be a string or null")
    return value or None


def _country(value: Any) -> str | None:
    """A country code upper-cased, or None for an empty one (``_COUNTRIES`` holds those seen)."""
    text = _optional_string("country", value)
    if text is None:
        return None
    text = _text("country", text, MAX_REGION)
    if not text:
        return None
    if not _COUNTRY.fullmatch(text):
        raise _RowError("country must be a two-letter ISO 3166-1 code such as US")
    # At most 26 * 26 codes: sharing one object per code keeps them out of an entry's size.
    code = intern(text.upper())
    if text == code:
        _COUNTRIES[code] = code
    return code


def _region(value: Any) -> str | None:
    text = _optional_string("region", value)
    if text is None:
        return None
    return _text("region", text, MAX_REGION) or None


def _choice(field: str, value: Any, values: Mapping[str, str]) -> str | None:
    """``value`` in any case and with spaces around, as one of ``values``; None when empty."""
    text = _optional_string(field, value)
    if text is None:
        return None
    canonical = _text(field, text, MAX_REGION).lower()
    if not canonical:
        return None
    shared = values.get(canonical)
    if shared is None:
        raise _RowError(f"{field} must be one of {', '.join(sorted(values))}")
    return shared
