"""The parts of the replication path that take a row's values without making it a mapping must
give exactly what the mapping gives: ``messages.values_key`` the key of ``messages.row_key``, a
struct of ``messages.value_struct`` the JSON of the row's dict, and ``convert.whole_row_update``
and ``convert.whole_row_delete`` the entries of ``convert.convert_update`` and
``convert.convert_delete``."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from shapes import convert, messages
from shapes.where_eval import ParsedRow

names = st.text(max_size=10)
values = st.none() | st.text(alphabet=st.sampled_from('ab/"\\\n\t\u00e9\U0001f600'), max_size=8)


@st.composite
def rows(draw: st.DrawFn) -> tuple[list[str], list[str | None], list[str]]:
    """(column names, their values, key columns: possibly some the row lacks)."""
    columns = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    row = draw(st.lists(values, min_size=len(columns), max_size=len(columns)))
    keys = draw(
        st.lists(st.sampled_from([*columns, "missing"]), min_size=1, max_size=3, unique=True)
    )
    return columns, row, keys


@given(relation=st.tuples(names, names), layout=rows())
def test_values_key_is_the_row_key(
    relation: tuple[str, str], layout: tuple[list[str], list[str | None], list[str]]
) -> None:
    columns, row, keys = layout
    prefix = messages.relation_key_prefix(*relation)
    positions = {name: at for at, name in enumerate(columns)}
    mapping = dict(zip(columns, row, strict=True))
    assert messages.values_key(prefix, row, positions, keys) == messages.row_key(
        prefix, mapping, keys
    )


@given(layout=rows(), op=st.integers(0, 1 << 40))
def test_a_whole_row_struct_encodes_as_the_row(
    layout: tuple[list[str], list[str | None], list[str]], op: int
) -> None:
    columns, row, _keys = layout
    struct = messages.value_struct(tuple(columns))
    mapping = dict(zip(columns, row, strict=True))
    if struct is None:  # a name msgspec cannot rename to: the caller keeps the mapping
        unfit = '"\\' + "".join(map(chr, range(32)))
        assert any(ch in unfit for name in columns for ch in name)
        return
    assert msgspec.json.encode(struct(*row)) == msgspec.json.encode(mapping)
    encoder = messages.ChangeEncoder(["s", "t"], 7, 8)
    assert encoder.insert("k", struct(*row), op) == encoder.insert("k", mapping, op)


def _whole_rows(keys: tuple[str, ...], replica_full: bool) -> convert.ShapeView:
    """A shape of ``s.t`` without a where clause or a selection, keyed by ``keys``."""
    return convert.ShapeView(
        relation=("s", "t"),
        key_prefix=messages.relation_key_prefix("s", "t"),
        key_columns=keys,
        selected=None,
        where=None,
        replica_full=replica_full,
    )


@st.composite
def updates(
    draw: st.DrawFn,
) -> tuple[list[str], list[str | None], list[str | None], tuple[str, ...]]:
    """(column names, old values, new values, key columns among the names)."""
    columns = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    old = draw(st.lists(values, min_size=len(columns), max_size=len(columns)))
    new = [draw(st.sampled_from([value, draw(values)])) for value in old]
    keys = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=3, unique=True))
    return columns, old, new, tuple(keys)


@given(layout=updates(), replica_full=st.booleans())
def test_a_whole_row_update_from_values_is_the_converted_update(
    layout: tuple[list[str], list[str | None], list[str | None], tuple[str, ...]],
    replica_full: bool,
) -> None:
    columns, old, new, keys = layout
    view = _whole_rows(keys, replica_full)
    assert convert.takes_whole_rows(view)
    positions = {name: at for at, name in enumerate(columns)}
    old_row = ParsedRow(zip(columns, old, strict=True))
    new_row = ParsedRow(zip(columns, new, strict=True))
    entries = convert.convert_update(view, old_row, new_row)
    changed = convert.key_changed(view, positions, old, new)
    assert changed == (messages.row_key("", old_row, keys) != messages.row_key("", new_row, keys))
    if changed:  # a delete and an insert: the caller converts the mappings
        assert [e.operation for e in entries] == ["delete", "insert"]
        return
    parts = convert.whole_row_update(view, columns, positions, old, new)
    if parts is None:
        assert entries == []
        return
    key, value, old_value = parts
    [entry] = entries
    assert (entry.operation, entry.key, entry.old_value) == ("update", key, old_value)
    assert entry.value == (new_row if value is None else value)
    assert list(entry.value) == list(new_row if value is None else value)  # the same order


@given(layout=updates(), replica_full=st.booleans(), old_is_full=st.booleans())
def test_a_whole_row_delete_from_values_is_the_converted_delete(
    layout: tuple[list[str], list[str | None], list[str | None], tuple[str, ...]],
    replica_full: bool,
    old_is_full: bool,
) -> None:
    columns, old, _new, keys = layout
    view = _whole_rows(keys, replica_full)
    positions = {name: at for at, name in enumerate(columns)}
    old_row = ParsedRow(zip(columns, old, strict=True))
    [entry] = convert.convert_delete(view, old_row, old_is_full)
    key, value = convert.whole_row_delete(view, positions, old, old_is_full)
    assert (entry.operation, entry.key, entry.old_value) == ("delete", key, None)
    assert entry.value == (old_row if value is None else value)
    assert list(entry.value) == list(old_row if value is None else value)
