"""Row validation, body errors, query parameters and the cache key."""

from __future__ import annotations

import json
import sys
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
        ({"network": "satellite"}, "network"),
        ({"channel": "television"}, "channel"),
        ({"deviceType": "fridge"}, "deviceType"),
        ({"country": "USA"}, "country"),
        ({"country": "U1"}, "country"),
        ({"region": "r" * 65}, "region"),
        ({"inventoryId": "p1-\ud800.com"}, "inventoryId"),
        ({"inventoryId": "nytimes.com\x00"}, "inventoryId"),
        ({"inventoryId": "ny\ntimes.com"}, "inventoryId"),
        ({"inventoryId": "nytimes.com\x85"}, "inventoryId"),
        ({"region": "CA\udc00"}, "region"),
        ({"region": "C\tA"}, "region"),
        ({"utcDatetime": "2024-10-30" + " " * 100}, "utcDatetime"),
        ({"rowIdentifier": "r\ud800"}, "rowIdentifier"),
        ({"rowIdentifier": "r" * 257}, "rowIdentifier"),
        ({"adFormat": "banner"}, "adFormat"),
        ({"appStore": "apple-app-store"}, "appStore"),
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
        {"deviceType": "pc"}, {"network": "mobile"}, {"utcDatetime": "2024-10-31"},
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
        (b"[" * 100_000, "not valid JSON|JSON names and values"),
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


def test_a_field_given_twice_in_different_cases_makes_the_row_invalid() -> None:
    result = validate_row(row(country="US", Country="FR"), NO_PARAMS)
    assert result.key is None
    assert result.error is not None and "country is given more than once" in result.error


def test_an_unknown_field_name_of_a_megabyte_is_quoted_short_in_the_error() -> None:
    result = validate_row(row(**{"x" * 1_000_000: 1}), NO_PARAMS)
    assert result.error is not None and len(result.error) < 400


def test_an_invalid_row_does_not_echo_a_megabyte_inventory_id() -> None:
    result = validate_row(row(inventoryId="x" * 1_000_000), NO_PARAMS)
    assert result.key is None and result.property_name is None


@pytest.mark.parametrize("spelling", ["US", "us", " US", "uS "])
def test_country_case_and_surrounding_spaces_give_the_same_key(spelling: str) -> None:
    assert validate_row(row(country=spelling), NO_PARAMS).key == validate_row(
        row(country="US"), NO_PARAMS
    ).key


@pytest.mark.parametrize("field", ["country", "region", "channel", "deviceType", "network"])
def test_an_empty_optional_field_is_the_same_key_as_an_absent_one(field: str) -> None:
    plain = validate_row(GOOD, NO_PARAMS).key
    assert validate_row(row(**{field: ""}), NO_PARAMS).key == plain
    assert validate_row(row(**{field: None}), NO_PARAMS).key == plain


@pytest.mark.parametrize(("field", "spelling", "canonical"), [
    ("channel", " Web", "web"), ("deviceType", "PC", "pc"), ("network", "Mobile ", "mobile"),
])
def test_enum_values_are_forwarded_in_their_canonical_spelling(
    field: str, spelling: str, canonical: str
) -> None:
    key = validate_row(row(**{field: spelling}), NO_PARAMS).key
    assert key is not None and key.upstream_row("0")[field] == canonical


def test_latest_false_is_the_same_key_as_no_latest() -> None:
    assert parse_query({"latest": "false"}) == parse_query({})


def test_an_unknown_query_parameter_is_refused_naming_it() -> None:
    with pytest.raises(BodyError, match="includeRows"):
        parse_query({"includeRows": "true"})


def test_a_query_parameter_given_twice_is_refused() -> None:
    from werkzeug.datastructures import MultiDict

    with pytest.raises(BodyError, match="latest is given more than once"):
        parse_query(MultiDict([("latest", "true"), ("latest", "false")]))


def test_a_padded_date_is_refused_before_it_reaches_the_memo() -> None:
    from measure_service.rows import _normalise_date

    before = _normalise_date.cache_info().currsize
    for n in range(50):
        validate_row(row(utcDatetime="2024-10-30" + " " * (100 + n)), NO_PARAMS)
    assert _normalise_date.cache_info().currsize == before


# --- invariants ----------------------------------------------------------------------------

FORWARDED = ("inventoryId", "utcDatetime", "impressions", "country", "region", "channel",
             "deviceType", "network")
_texts = st.text(
    st.characters(codec=None, blacklist_categories=()), max_size=12
) | st.sampled_from(["US", " us", "web", "PC", "mobile", "", "2024-10-30", "20241031", "CA"])
_values = st.none() | st.integers(-5, 3000) | _texts
_raw_rows = st.dictionaries(
    st.sampled_from([*FORWARDED, "weight", "rowIdentifier", "adFormat", "Country"]), _values,
    max_size=9,
).map(lambda fields: {"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30", **fields})


class _Text(str):
    """Text that no inline acceptance takes (they test the exact class)."""


class _Integer(int):
    """An integer that no inline acceptance takes."""


def _unusual(value: Any) -> Any:
    if isinstance(value, str):
        return _Text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _Integer(value)
    return value


# Values at and beyond each field's bounds, and text that needs trimming or folding.
_edge_values = (
    st.none()
    | st.sampled_from([-1, 0, 1, 100, 101, 10**12, 10**12 + 1, 1000.0, 2.5, True, False])
    | st.sampled_from([" nytimes.com ", "", " ", "NYTimes.com", "x" * 512, "x" * 513, "us",
                       "US ", "Web", "web", "pc", "fixed", "2024-10-30 ", "2024-10-30T10:00:00Z",
                       "a\x00b", "\ud800", "é" * 3])
    | _texts
)
_edge_rows = st.dictionaries(
    st.sampled_from([*FORWARDED, "weight", "rowIdentifier"]), _edge_values, max_size=9
).map(lambda fields: {"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30", **fields})


@settings(max_examples=500, deadline=None)
@given(_edge_rows)
def test_a_field_accepted_where_it_is_read_gets_what_its_own_check_would_give(
    raw: dict[str, Any]
) -> None:
    # The same values as subclasses take every field's own function instead.
    unusual = {name: _unusual(value) for name, value in raw.items()}
    assert validate_row(raw, NO_PARAMS) == validate_row(unusual, NO_PARAMS)


@settings(max_examples=300, deadline=None)
@given(_raw_rows)
def test_any_accepted_row_encodes_to_utf8_and_round_trips_upstream(raw: dict[str, Any]) -> None:
    result = validate_row(raw, NO_PARAMS)
    if result.key is None:
        return
    sent = result.key.upstream_row("0")
    wire = json.dumps(sent, ensure_ascii=False).encode("utf-8")
    assert json.loads(wire.decode("utf-8")) == sent


@settings(max_examples=300, deadline=None)
@given(_raw_rows)
def test_every_field_of_an_accepted_row_is_forwarded_or_is_ours(raw: dict[str, Any]) -> None:
    result = validate_row(raw, NO_PARAMS)
    if result.key is None:
        return
    sent = {name.lower() for name in result.key.upstream_row("0")}
    for name, value in raw.items():
        if name in ("weight", "rowIdentifier") or value is None:
            continue
        assert name.lower() in sent or (isinstance(value, str) and not value.strip())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FORWARDED), _values, _values)
def test_the_key_changes_exactly_when_the_forwarded_row_changes(
    field: str, first: Any, second: Any
) -> None:
    a, b = validate_row(row(**{field: first}), NO_PARAMS), validate_row(
        row(**{field: second}), NO_PARAMS
    )
    if a.key is None or b.key is None:
        return
    assert (a.key == b.key) == (a.key.upstream_row("0") == b.key.upstream_row("0"))


def test_a_typical_weight_100_row_costs_one_unit() -> None:
    assert validate_row(row(weight=100, country="US", channel="web"), NO_PARAMS).cost == 1.0


def test_a_longer_inventory_id_costs_more_at_the_same_weight() -> None:
    short = validate_row(row(weight=50), NO_PARAMS)
    long = validate_row(row(weight=50, inventoryId="x" * 500 + ".com"), NO_PARAMS)
    assert long.cost > short.cost


def test_non_ascii_text_costs_by_the_memory_it_takes() -> None:
    ascii_row = validate_row(row(region="r" * 64), NO_PARAMS)
    wide_row = validate_row(row(region="\U0001f600" * 64), NO_PARAMS)
    assert wide_row.cost > ascii_row.cost


@settings(max_examples=200, deadline=None)
@given(_raw_rows)
def test_an_accepted_rows_cost_is_its_weights_cost_times_eighths_of_a_unit(
    raw: dict[str, Any]
) -> None:
    result = validate_row(raw, NO_PARAMS)
    if result.key is None:
        assert result.cost == 0
        return
    units = result.cost / weight_to_cost(result.weight)
    assert units >= 1 and (units * 8).is_integer()


@given(st.integers(min_value=0, max_value=100), st.text(alphabet="abc.-", min_size=1, max_size=500))
def test_a_rows_cost_is_its_weights_cost_times_its_size_in_eighths(
    weight: int, inventory_id: str
) -> None:
    result = validate_row(row(weight=weight, inventoryId=inventory_id), NO_PARAMS)
    size = rows_module.ENTRY_OVERHEAD_BYTES + sys.getsizeof(inventory_id)
    steps = -(-size // (rows_module.BYTES_PER_COST_UNIT // 8))
    assert result.cost == weight_to_cost(weight) * steps / 8


def test_a_duplicate_key_in_a_row_refuses_the_body() -> None:
    with pytest.raises(BodyError, match="duplicate key 'country'"):
        parse_body(b'{"rows": [{"country": "US", "country": "FR"}]}', max_rows=3)


def test_rows_given_twice_in_different_cases_refuses_the_body() -> None:
    with pytest.raises(BodyError, match="duplicate key 'rows'"):
        parse_body(b'{"rows": [1], "Rows": [2]}', max_rows=3)


def test_a_number_too_large_for_a_float_in_a_row_refuses_the_body() -> None:
    with pytest.raises(BodyError, match="too large"):
        parse_body(b'{"rows": [{"impressions": 1e999}]}', max_rows=3)


def test_an_object_nested_in_a_row_field_makes_only_that_row_invalid() -> None:
    raws = parse_body(b'{"rows": [{"inventoryId": {"a": 1, "a": 2}}, {"x": 1}]}', max_rows=3)
    assert [validate_row(raw, NO_PARAMS).error for raw in raws] == [
        "inventoryId must be a string", validate_row({"x": 1}, NO_PARAMS).error,
    ]


def test_a_row_with_more_pairs_than_fields_is_invalid_naming_an_unknown_field() -> None:
    text = '{"rows": [{' + ",".join(f'"k{i}": 1' for i in range(5000)) + "}]}"
    (raw,) = parse_body(text.encode(), max_rows=1000)
    error = validate_row(raw, NO_PARAMS).error
    assert error is not None and "unknown field 'k0'" in error


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
    try:
        fast = rows_module._decode_plain(body, rows_module._Shape(body, 1000), max_rows=1000)
    except BodyError:
        return  # refused whatever the strict reading says
    if fast is None:
        return
    strict = as_dicts(rows_module._decode_strict(body))
    assert fast == strict
    assert repr(fast) == repr(strict)  # 1 and 1.0 and True differ


def as_dicts(value: Any) -> Any:
    """The strict decoder's objects (tuples of pairs) as dicts, for comparison."""
    if isinstance(value, tuple):
        return {name: as_dicts(item) for name, item in value}
    if isinstance(value, list):
        return [as_dicts(item) for item in value]
    return value


def test_duplicate_keys_are_refused_even_when_the_body_looks_plain() -> None:
    with pytest.raises(BodyError, match="duplicate key"):
        parse_body(b'{"rows": [{"inventoryId": "a.com", "inventoryId": "b.com"}]}', 10)


def test_an_integer_beyond_64_bits_stays_an_integer() -> None:
    raw = parse_body(b'{"rows": [{"rowIdentifier": 123456789012345678901234567890}]}', 10)
    assert raw[0]["rowIdentifier"] == 123456789012345678901234567890


def test_a_body_with_many_top_level_names_is_refused_naming_the_bound() -> None:
    names = ",".join(f'"n{i}": 1' for i in range(100))
    with pytest.raises(BodyError, match="top-level names"):
        parse_body(('{"rows": [{}], ' + names + "}").encode(), max_rows=1000)


def test_too_many_rows_are_refused_before_any_second_parse() -> None:
    with pytest.raises(BodyError, match="rows has 5 entries"):
        parse_body(b'{"rows": [{}, {}, {}, {}, {}]}', max_rows=3)


def _has_control_or_surrogate(text: str) -> bool:
    return any(
        code <= 0x1F or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF
        for code in map(ord, text)
    )


@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=40))
def test_text_is_refused_exactly_when_it_holds_a_control_character_or_a_lone_surrogate(
    text: str,
) -> None:
    bad = _has_control_or_surrogate(text)
    as_identifier = validate_row(row(rowIdentifier=text), NO_PARAMS)
    assert (as_identifier.error is not None) == bad
    as_region = validate_row(row(region=text), NO_PARAMS)
    assert (as_region.error is not None) == bad
