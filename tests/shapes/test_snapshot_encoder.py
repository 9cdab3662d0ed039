"""``SnapshotEncoder`` must give exactly the lines of ``messages.snapshot_row`` and
``messages.row_key``, whatever the columns, key columns, selection and values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shapes import messages
from shapes.messages import SnapshotEncoder

texts = st.text(max_size=10)
values = st.none() | st.text(alphabet=st.sampled_from('ab/"\\\n\t\u00e9\U0001f600'), max_size=8)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[str], list[str], list[str]]:
    """(all columns, key columns, value columns): the keys may be left out of the values."""
    columns = draw(st.lists(texts, min_size=1, max_size=5, unique=True))
    keys = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=3, unique=True))
    chosen = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=5, unique=True))
    return columns, keys, chosen


@given(relation=st.tuples(texts, texts), layout=layouts(), data=st.data())
def test_lines_equal_snapshot_rows(
    relation: tuple[str, str], layout: tuple[list[str], list[str], list[str]], data: st.DataObject
) -> None:
    columns, keys, chosen = layout
    prefix = messages.relation_key_prefix(*relation)
    encoder = SnapshotEncoder(relation, prefix, chosen, keys)
    assert set(encoder.columns) == set(chosen) | set(keys)
    rows = data.draw(
        st.lists(st.dictionaries(st.sampled_from(columns), values, min_size=len(columns)))
    )
    rows = [{c: row.get(c) for c in columns} for row in rows]
    expected = b"".join(
        messages.snapshot_row(
            relation, messages.row_key(prefix, row, keys), {c: row[c] for c in chosen}
        )
        + b"\n"
        for row in rows
    )
    assert encoder.encode([tuple(row[c] for c in encoder.columns) for row in rows]) == expected
