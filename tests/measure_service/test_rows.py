"""Row validation, body errors, query parameters and the cache key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from measure_service import rows as rows_module
from measure_service.rows import (
    BodyError,
    QueryParams,
    parse_body,
    parse_query,
    validate_row,
    weight_to_cost,
)

NO_PARAMS = QueryParams(None, None)
GOOD = {"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30"}


def row(**fields: Any) -> dict[str, Any]:
    return {**GOOD, **fields}


def test_a_minimal_row_gets_default_impressions_and_weight() -> None:
    result = validate_row(GOOD, NO_PARAMS)
    assert result.error is None
    assert result.key is not None and result.key.impressions == 1000
    assert result.weight == 0


def test_field_names_are_matched_case_insensitively() -> None:
    upper = validate_row({"inventoryID": "nytimes.com", "utcDateTime": "2024-10-30"}, NO_PARAMS)
    assert upper.key == validate_row(GOOD, NO_PARAMS).key


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"inventoryId": None}, "inventoryId"),
        ({"inventoryId": 7}, "inventoryId"),
        ({"inventoryId": "   "}, "inventoryId"),
        ({"inventoryId": "x" * 600}, "inventoryId"),
        ({"utcDatetime": None}, "utcDatetime"),
        ({"utcDatetime": 20241030}, "utcDatetime"),
        ({"utcDatetime": "30/10/2024"}, "utcDatetime"),
        ({"utcDatetime": "2024-02-30"}, "utcDatetime"),
        ({"utcDatetime": "2024-10-30T25:00:00"}, "utcDatetime"),
        ({"utcDatetime": "2024-1030"}, "utcDatetime"),
        ({"impressions": -1}, "impressions"),
        ({"impressions": True}, "impressions"),
        ({"impressions": 1.5}, "impressions"),
        ({"impressions": "1000"}, "impressions"),
        ({"impressions": float("nan")}, "impressions"),
        ({"impressions": 10**13}, "impressions"),
        ({"weight": 101}, "weight"),
        ({"weight": -1}, "weight"),
        ({"weight": "high"}, "weight"),
        ({"weight": False}, "weight"),
        ({"country": 1}, "country"),
        ({"deviceType": ["pc"]}, "deviceType"),
        ({"network": "n" * 300}, "network"),
        ({"rowIdentifier": {"id": 1}}, "rowIdentifier"),
    ],
)
def test_a_bad_field_makes_the_row_invalid_with_an_error_naming_it(
    fields: dict[str, Any], field: str
) -> None:
    result = validate_row(row(**fields), NO_PARAMS)
    assert result.key is None
    assert result.error is not None and field in result.error


def test_a_row_that_is_not_an_object_is_invalid() -> None:
    assert validate_row(["nytimes.com"], NO_PARAMS).error == "row must be a JSON object"


@pytest.mark.parametrize(
    "text",
    [
        "2024-10-30", "20241030", "2024/10/30", "2024-10-30T12:34:56", "20241030T00:00:00",
        "2024/10/30T23:59:59", "2024-10-30T12:34:56Z", " 2024-10-30 ",
    ],
)
def test_every_accepted_date_spelling_gives_the_same_key(text: str) -> None:
    result = validate_row(row(utcDatetime=text), NO_PARAMS)
    assert result.key == validate_row(GOOD, NO_PARAMS).key
    assert result.date == "2024-10-30"


def test_inventory_id_is_trimmed_and_lowercased_in_the_key() -> None:
    assert validate_row(row(inventoryId="  NYTimes.COM "), NO_PARAMS).key == validate_row(
        GOOD, NO_PARAMS
    ).key


def test_weight_and_row_identifier_are_not_part_of_the_key() -> None:
    a = validate_row(row(weight=90, rowIdentifier="a"), NO_PARAMS)
    b = validate_row(row(weight=0, rowIdentifier="b"), NO_PARAMS)
    assert a.key == b.key


@pytest.mark.parametrize(
    "change",
    [
        {"impressions": 2000}, {"country": "US"}, {"region": "CA"}, {"channel": "web"},
        {"deviceType": "pc"}, {"network": "n1"}, {"utcDatetime": "2024-10-31"},
    ],
)
def test_every_field_that_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert validate_row(row(**change), NO_PARAMS).key != validate_row(GOOD, NO_PARAMS).key


def test_query_parameters_are_part_of_the_key() -> None:
    plain = validate_row(GOOD, NO_PARAMS).key
    assert validate_row(GOOD, QueryParams("true", None)).key != plain
    assert validate_row(GOOD, QueryParams(None, "gmsf")).key != plain


def test_the_key_is_hashable() -> None:
    key = validate_row(GOOD, NO_PARAMS).key
    assert {key: 1}[key] == 1


def test_an_integral_float_is_accepted_as_impressions() -> None:
    key = validate_row(row(impressions=2000.0), NO_PARAMS).key
    assert key is not None and key.impressions == 2000


def test_the_upstream_row_is_built_from_the_key_with_a_given_identifier() -> None:
    key = validate_row(row(inventoryId="NYTimes.com", country="US", region=None), NO_PARAMS).key
    assert key is not None
    assert key.upstream_row("7") == {
        "rowIdentifier": "7", "inventoryId": "nytimes.com", "utcDatetime": "2024-10-30",
        "impressions": 1000, "country": "US",
    }


@pytest.mark.parametrize(("weight", "cost"), [(0, 100), (1, 99), (50, 50), (99, 1), (100, 1)])
def test_weight_maps_to_cost_heavier_is_cheaper(weight: int, cost: int) -> None:
    assert weight_to_cost(weight) == cost


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "JSON object"),
        (b"{}", "rows is required"),
        (b'{"rows": {"a": 1}}', "rows must be a list"),
        (b'{"rows": []}', "must not be empty"),
        (json.dumps({"rows": [GOOD] * 4}).encode(), "at most 3"),
    ],
)
def test_a_bad_body_raises_a_body_error(body: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        parse_body(body, max_rows=3)


def test_the_rows_field_name_is_case_insensitive() -> None:
    assert parse_body(b'{"Rows": [1]}', max_rows=3) == [1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [({}, QueryParams(None, None)), ({"latest": "TRUE"}, QueryParams("true", None)),
     ({"framework": "gmsf"}, QueryParams(None, "gmsf"))],
)
def test_query_parameters_are_normalised(args: dict[str, str], expected: QueryParams) -> None:
    assert parse_query(args) == expected


@pytest.mark.parametrize(
    ("args", "name"), [({"latest": "yes"}, "latest"), ({"framework": "a b"}, "framework")]
)
def test_a_bad_query_parameter_raises_a_body_error_naming_it(
    args: dict[str, str], name: str
) -> None:
    with pytest.raises(BodyError, match=name):
        parse_query(args)


# orjson reads a plain body; anything it could read differently goes to the strict decoder.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab:{}[]\"\\ 1é", max_size=6),
)
NAMES = st.sampled_from(["rows", "inventoryId", "weight", "a", "A", "ROWS"])


def object_text(pairs: list[tuple[str, str]]) -> str:
    """A JSON object from already-encoded pairs, duplicate names kept as written."""
    return "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in pairs) + "}"


VALUES = st.recursive(
    SCALARS.map(json.dumps),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(NAMES, inner), max_size=3).map(object_text),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=4).map(object_text))
def test_the_fast_decoder_reads_a_body_as_the_strict_one_does_or_not_at_all(text: str) -> None:
    body = text.encode()
    fast = rows_module._decode_plain(body)
    if fast is None:
        return
    assert fast == rows_module._decode_strict(body)
    assert repr(fast) == repr(rows_module._decode_strict(body))  # 1 and 1.0 and True differ


def test_duplicate_keys_are_refused_even_when_the_body_looks_plain() -> None:
    with pytest.raises(BodyError, match="duplicate key"):
        parse_body(b'{"rows": [{"inventoryId": "a.com", "inventoryId": "b.com"}]}', 10)


def test_an_integer_beyond_64_bits_stays_an_integer() -> None:
    raw = parse_body(b'{"rows": [{"rowIdentifier": 123456789012345678901234567890}]}', 10)
    assert raw[0]["rowIdentifier"] == 123456789012345678901234567890
