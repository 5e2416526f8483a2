"""The bounds a body must keep before it is decoded: names and values, number length.

The bounds are found from the bytes (``rows._Shape``), so that a hostile body is refused before
a decoder builds its objects. They must be exact: a body the byte scan refuses holds more than
the bounds in its own reading (here, the standard decoder walked in the test), so that no
request within them is ever refused, and a body over them is always refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from measure_service import rows as rows_module
from measure_service.rows import MAX_NUMBER_DIGITS, BodyError, parse_body, token_budget

GOOD = {"inventoryId": "nytimes.com", "utcDatetime": "2024-10-30"}
MAX_ROWS = 1000


class OverBound(Exception):
    """The document's own reading holds more than the bounds allow."""


def _number(text: str, convert: Any) -> Any:
    if max(map(len, re.findall(r"\d+", text))) > MAX_NUMBER_DIGITS:
        raise OverBound(text)
    return convert(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


_READER = json.JSONDecoder(
    object_pairs_hook=tuple,
    parse_int=lambda text: _number(text, int),
    parse_float=lambda text: _number(text, float),
    parse_constant=_refuse_constant,
)


def names_and_values(value: Any) -> int:
    """Every value (lists and objects too) and every name in a decoded document."""
    if isinstance(value, tuple):
        return 1 + sum(1 + names_and_values(item) for _, item in value)
    if isinstance(value, list):
        return 1 + sum(map(names_and_values, value))
    return 1


def within_bounds(body: bytes, max_rows: int) -> bool | None:
    """True or False for a body that is JSON, by its own reading; None for one that is not."""
    try:
        document = _READER.decode(body.decode(json.detect_encoding(body)))
    except OverBound:
        return False
    except (ValueError, RecursionError):
        return None
    return names_and_values(document) <= token_budget(max_rows)


def scan_refuses(body: bytes, max_rows: int) -> bool:
    try:
        rows_module._Shape(rows_module._utf8(body), max_rows)
    except BodyError:
        return True
    return False


# Strings full of what the scan must not mistake for structure.
TEXT = st.text(alphabet=list('a",:{}[]\\1 é\ud800\x00\n'), max_size=8)
STRINGS = st.tuples(TEXT, st.booleans()).map(
    lambda pair: json.dumps(pair[0], ensure_ascii=pair[1] or "\ud800" in pair[0])
)
NUMBERS = st.one_of(
    st.integers(min_value=-(10**300), max_value=10**300).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.tuples(st.integers(1, 300), st.integers(1, 300)).map(
        lambda n: "1" * n[0] + "." + "2" * n[1]
    ),
)
SCALARS = st.one_of(STRINGS, NUMBERS, st.sampled_from(["true", "false", "null"]))
SPACE = st.sampled_from(["", " ", "\n\t "])


def _list(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str, str]]) -> str:
    return "{" + ",".join(f"{name}{space}:{space}{value}" for name, space, value in pairs) + "}"


DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=12).map(_list),
        st.lists(st.tuples(STRINGS, SPACE, inner), max_size=12).map(_object),
    ),
    max_leaves=40,
)
BODIES = st.tuples(DOCUMENTS, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"])).map(
    lambda pair: pair[0].encode(pair[1], errors="surrogatepass")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.integers(min_value=1, max_value=3))
def test_a_body_the_scan_refuses_is_over_the_bounds_in_its_own_reading(
    body: bytes, max_rows: int
) -> None:
    if scan_refuses(body, max_rows):
        assert within_bounds(body, max_rows) is not True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODIES, st.integers(min_value=1, max_value=3))
def test_a_json_body_over_the_bounds_is_refused_by_the_scan(body: bytes, max_rows: int) -> None:
    if within_bounds(body, max_rows) is False:
        assert scan_refuses(body, max_rows)


def test_a_body_of_more_values_than_max_rows_rows_need_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: Any) -> Any:
        raise AssertionError("decoded")

    monkeypatch.setattr(rows_module, "_decode_plain", never)
    monkeypatch.setattr(rows_module, "_decode_strict", never)
    body = b'{"rows":[' + b"{}," * 100_000 + b"{}]}"
    with pytest.raises(BodyError, match="JSON names and values"):
        parse_body(body, MAX_ROWS)


def test_a_full_request_of_max_rows_rows_with_every_field_is_within_the_bound() -> None:
    full = {**GOOD, "impressions": 1, "weight": 100, "rowIdentifier": "r", "country": "US",
            "region": "CA", "channel": "web", "deviceType": "pc", "network": "fixed"}
    body = json.dumps({"rows": [full] * MAX_ROWS}).encode()
    assert len(parse_body(body, MAX_ROWS)) == MAX_ROWS


def test_structure_characters_inside_a_string_do_not_count_towards_the_bound() -> None:
    note = '\\",:{}[]' * 50_000
    body = ('{"note": "' + note + '", "rows": [' + json.dumps(GOOD) + "]}").encode()
    assert parse_body(body, MAX_ROWS) == [GOOD]


def test_a_number_of_more_digits_than_the_bound_is_refused_naming_it() -> None:
    body = b'{"rows": [{"rowIdentifier": ' + b"7" * (MAX_NUMBER_DIGITS + 1) + b"}]}"
    with pytest.raises(BodyError, match=f"more than {MAX_NUMBER_DIGITS} digits"):
        parse_body(body, MAX_ROWS)


def test_a_long_run_of_digits_inside_a_string_is_text_not_a_number() -> None:
    body = json.dumps({"rows": [{**GOOD, "region": "7" * 60}], "x": "7" * 1000}).encode()
    assert parse_body(body, MAX_ROWS) == [{**GOOD, "region": "7" * 60}]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_another_json_encoding_is_read_as_its_text(encoding: str) -> None:
    body = json.dumps({"rows": [{**GOOD, "region": "Île-de-France"}]}).encode(encoding)
    assert parse_body(body, MAX_ROWS) == [{**GOOD, "region": "Île-de-France"}]


def test_a_body_that_is_not_text_in_its_encoding_is_refused_as_not_json() -> None:
    with pytest.raises(BodyError, match="not valid JSON"):
        parse_body(b"\xff\xfe{\x00\x00\xd8", MAX_ROWS)


def test_a_time_of_day_in_a_row_keeps_the_body_on_the_fast_reading() -> None:
    body = json.dumps({"rows": [{**GOOD, "utcDatetime": "2024-10-30T12:00:00Z"}]}).encode()
    shape = rows_module._Shape(body, MAX_ROWS)
    assert rows_module._decode_plain(body, shape, MAX_ROWS) is not None


def test_a_duplicate_key_hidden_by_colons_in_strings_is_still_refused() -> None:
    body = b'{"rows": [{"inventoryId": "a:b", "inventoryId": "c", "utcDatetime": "2024-10-30"}]}'
    with pytest.raises(BodyError, match="duplicate key 'inventoryId'"):
        parse_body(body, MAX_ROWS)
