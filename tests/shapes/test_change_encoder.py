"""``ChangeEncoder`` must give exactly the bytes of ``messages.change``."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shapes import messages
from shapes.messages import ChangeEncoder, Operation

texts = st.text(max_size=12)
rows = st.dictionaries(texts, st.none() | texts, max_size=4)
operations = st.sampled_from(get_args(Operation))
extra = st.none() | st.sampled_from(
    [{}, {"key_change_to": '"public"."t"/"2"'}, {"key_change_from": 'x"%d/%s'}]
)


@given(
    relation=st.tuples(texts, texts),
    lsn=st.integers(0, 2**64 - 1),
    xid=st.integers(0, 2**32 - 1),
    operation=operations,
    key=texts,
    value=rows,
    op=st.integers(0, 2**40),
    old_value=st.none() | rows,
    headers=extra,
    last=st.booleans(),
)
def test_encoder_matches_change(
    relation: tuple[str, str],
    lsn: int,
    xid: int,
    operation: Operation,
    key: str,
    value: dict[str, str | None],
    op: int,
    old_value: dict[str, str | None] | None,
    headers: dict[str, str] | None,
    last: bool,
) -> None:
    expected = messages.change(
        operation,
        list(relation),
        key,
        value,
        lsn=lsn,
        op_position=op,
        xid=xid,
        last=last,
        old_value=old_value,
        extra_headers=headers,
    )
    encoder = ChangeEncoder(list(relation), lsn, xid)
    data = encoder.encode(operation, key, value, op, old_value, headers)
    if last:
        data = encoder.mark_last(data, operation, op)
    assert data == expected
    if operation == "insert" and old_value is None and not headers:
        plain = encoder.insert(key, value, op)
        assert (encoder.mark_last(plain, "insert", op) if last else plain) == expected


def test_encoder_refuses_extra_headers_that_replace_base_ones() -> None:
    encoder = ChangeEncoder(["public", "t"], 1, 2)
    with pytest.raises(ValueError):
        encoder.encode("insert", "k", {}, 0, None, {"lsn": "3"})
