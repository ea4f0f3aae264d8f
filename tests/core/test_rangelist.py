"""CU range lists ("0-31,64-79"): round trip and strict rejection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core.rangelist import format_ranges, parse_ranges


@pytest.mark.parametrize(("bits", "text"), [
    (set(), ""), ({0}, "0"), (set(range(32)), "0-31"), (set(range(32)) | set(range(64, 80)), "0-31,64-79"),
    ({1, 3, 5}, "1,3,5"), ({7, 8}, "7-8"), ({303}, "303"), (set(range(272, 304)), "272-303"),
])
def test_known_forms(bits: set[int], text: str) -> None:
    assert format_ranges(bits) == text
    assert parse_ranges(text) == frozenset(bits)


def test_format_sorts_and_ignores_repeats() -> None:
    assert format_ranges([5, 1, 2, 2, 3]) == "1-3,5"


@given(st.frozensets(st.integers(min_value=0, max_value=1023), max_size=200))
@settings(max_examples=300, deadline=None)
def test_round_trip(bits: frozenset[int]) -> None:
    text = format_ranges(bits)
    assert parse_ranges(text) == bits
    assert format_ranges(parse_ranges(text)) == text


@pytest.mark.parametrize("text", [
    " ", "0,", ",0", "0,,1", "a", "0-", "-3", "1-2-3", " 1", "1 ", "0 - 3", "+1", "0x10", "1.5",
    "5-3", "0-3,2", "1,1", "0-31,31-40", "01", "0-031", "\u0661-\u0663", "\u00b2", "0;1",
])
def test_strict_rejection(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ranges(text)


@pytest.mark.parametrize("value", [None, 3, ["0-3"]])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        parse_ranges(value)  # type: ignore[arg-type]
