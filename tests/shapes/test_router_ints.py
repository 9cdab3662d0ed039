"""The router's integer shortcut must agree with ``where.normalise_value``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shapes.router import Router
from shapes.schema import Column
from shapes.where import normalise_value, parse_where

TYPES = ["int2", "int4", "int8"]
KEYS = [0, 1, 7, 42, 32767, 2**31 - 1, 2**63 - 1]

texts = st.one_of(
    st.integers(-(2**64), 2**64).map(str),
    st.sampled_from(
        ["007", " 7", "7 ", "+7", "-0", "0x2a", "1_0", "٤٢", "²", "", "32768", "99999999999"]
    ),
    st.text(alphabet="0123456789 +-_x", max_size=6),
)


@pytest.mark.parametrize("type_name", TYPES)
@given(text=texts)
def test_int_lookup_agrees_with_normalise_value(type_name: str, text: str) -> None:
    column = Column("n", type_name)
    columns = {"n": column}
    router: Router[int] = Router()
    for k in KEYS:
        router.add(k, "t", parse_where(f"n = {k}", columns), columns)
    try:
        expected = {k for k in KEYS if normalise_value(column, text) == k}
    except ValueError:
        expected = set()
    assert set(router.affected("t", {"n": text})) == expected
