"""LIKE/ILIKE matching (shapes/where_like.py): exact against a reference matcher, linear time."""

from __future__ import annotations

import statistics
import time
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapes.errors import EvaluationError
from shapes.where_like import compile_pattern, fold_case, like


def reference(text: str, pattern: str, escape: str, ignore_case: bool) -> bool | None:
    """A plain dynamic-programming LIKE (None: Postgres raises for the dangling escape)."""
    items: list[str | None] = []  # None: _, "%": percent marker kept apart from literals
    kinds: list[str] = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if escape and char == escape:
            if position >= len(pattern):
                return None
            items.append(pattern[position])
            kinds.append("lit")
            position += 1
        elif char == "%":
            items.append(None)
            kinds.append("pct")
        elif char == "_":
            items.append(None)
            kinds.append("any")
        else:
            items.append(char)
            kinds.append("lit")
    if ignore_case:
        text = fold_case(text)
        items = [fold_case(item) if item else item for item in items]

    @cache
    def match(t: int, p: int) -> bool:
        if p == len(items):
            return t == len(text)
        if kinds[p] == "pct":
            return match(t, p + 1) or (t < len(text) and match(t + 1, p))
        if t == len(text):
            return False
        if kinds[p] == "any" or items[p] == text[t]:
            return match(t + 1, p + 1)
        return False

    return match(0, 0)


alphabet = st.sampled_from(list("abA%_\\!"))


@settings(max_examples=2000, deadline=None)
@given(
    st.text(alphabet, max_size=12),
    st.text(alphabet, max_size=10),
    st.sampled_from(["\\", "!", ""]),
    st.booleans(),
)
def test_like_agrees_with_reference(text: str, pattern: str, escape: str, ignore: bool) -> None:
    expected = reference(text, pattern, escape, ignore)
    try:
        result: bool | None = like(text, pattern, escape, ignore)
    except EvaluationError:
        result = None
    if expected is None:  # dangling escape: false or the Postgres error, never true
        assert result is not True
    else:
        assert result is expected


literals = st.text(st.sampled_from("aAb%_\\"), max_size=4).map(
    lambda text: "".join("\\" + c if c in "%_\\" else c for c in text)
)
fast_shapes = st.sampled_from(["{}", "{}%", "%{}", "{}%{}", "%{}%"])


@settings(max_examples=1000, deadline=None)
@given(
    fast_shapes, literals, literals, st.text(st.sampled_from("aAb%_\\"), max_size=8), st.booleans()
)
def test_literal_patterns_take_the_fast_path_and_agree(
    shape: str, first: str, second: str, text: str, ignore: bool
) -> None:
    pattern = shape.format(first, second) if shape.count("{}") == 2 else shape.format(first)
    compiled = compile_pattern(pattern, "\\", ignore)
    assert compiled.fast is not None, pattern
    assert compiled.match(text) is reference(text, pattern, "\\", ignore)


def test_patterns_with_wildcards_or_three_pieces_take_the_general_path() -> None:
    for pattern in ("a_b", "_a%", "a%b%c", "%a_%", "a%%b_"):
        assert compile_pattern(pattern).fast is None, pattern


def test_dangling_escape_raises_only_where_postgres_reaches_it() -> None:
    # Postgres compares 'b' with 'a' first and never reaches the escape
    assert like("b", "a\\") is False
    with pytest.raises(EvaluationError) as info:
        like("ab", "a\\")
    assert info.value.condition == "invalid_escape_sequence"
    assert like("", "%\\") is False  # no text left when the % is reached
    with pytest.raises(EvaluationError):
        like("x", "%\\")


def test_ilike_folds_ascii_only_as_the_c_collation() -> None:
    assert like("ABC", "abc", ignore_case=True)
    assert not like("É", "é", ignore_case=True)


WORST_PATTERNS = [
    "%a%a%a%a%a%a%a%a%b",
    "%" + "a%" * 200 + "b",
    "%" + "a_" * 50 + "b%",
    "%" + "_" * 300 + "b",
    "_%" * 500 + "b",
    "%" + "ab" * 100 + "c%",
    "%" + "a\\%" * 50 + "b%",
]


def _median_seconds(pattern: str, text: str, ignore_case: bool) -> float:
    compiled = compile_pattern(pattern, "\\", ignore_case)
    samples = []
    for _ in range(15):
        started = time.perf_counter()
        compiled.match(text)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@pytest.mark.parametrize("ignore_case", [False, True])
@pytest.mark.parametrize("pattern", WORST_PATTERNS)
def test_pathological_patterns_on_10kb_values_are_fast(pattern: str, ignore_case: bool) -> None:
    # Backtracking regexes take seconds to years on these; the segment matcher is linear.
    for text in ("a" * 10_000, "ab" * 5_000, "a" * 9_999 + "b"):
        assert _median_seconds(pattern, text, ignore_case) < 0.005


def test_long_wildcard_segments_are_bounded() -> None:
    # A segment with _ inside costs len(segment) * len(text) / 64 word operations.
    pattern = "%" + "_a" * 2000 + "%"
    assert _median_seconds(pattern, "a" * 10_000, False) < 0.1
