"""Upstream text that reaches a log line or an answer carries no part of our token."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from measure_service.upstream import redact_and_cut

# Tokens and filler come from disjoint alphabets, so any token substring in the output leaked.
_tokens = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=8, max_size=64)
_filler = st.text(st.characters(blacklist_characters="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                                blacklist_categories=("Cs",)), max_size=400)


def _substrings(token: str, size: int = 4) -> set[str]:
    return {token[i:i + size] for i in range(len(token) - size + 1)}


@settings(max_examples=300, deadline=None)
@given(_tokens, _filler, _filler, st.integers(1, 300), st.booleans())
def test_no_four_characters_of_the_token_survive_a_cut_at_any_offset(
    token: str, before: str, after: str, limit: int, as_bytes: bool
) -> None:
    text = before + token + after
    out = redact_and_cut(text.encode() if as_bytes else text, token, limit)
    assert len(out) <= limit
    assert not any(part in out for part in _substrings(token))


@settings(max_examples=200, deadline=None)
@given(_tokens, _filler, st.integers(1, 63))
def test_a_token_cut_short_at_the_end_of_the_body_is_dropped(
    token: str, before: str, keep: int
) -> None:
    out = redact_and_cut(before + token[:keep], token, 10_000)
    assert not any(part in out for part in _substrings(token))


def test_text_without_the_token_is_only_cut() -> None:
    assert redact_and_cut("upstream said no", "SECRET", 8) == "upstream"


def test_a_whole_token_inside_the_limit_is_replaced_by_the_marker() -> None:
    assert redact_and_cut("bad SECRET here", "SECRET", 100) == "bad [redacted] here"


def test_a_whole_text_keeps_a_last_letter_that_begins_the_token() -> None:
    assert redact_and_cut("modeled", "demo-upstream-token", 256) == "modeled"


def test_a_cut_text_drops_even_one_letter_that_begins_the_token() -> None:
    text = "x" * 9 + "demo-up" + "y" * 50
    assert redact_and_cut(text, "demo-upstream-token", 10) == "x" * 9
