"""Turn a row change into the log entries of a shape whose ``where`` has subqueries.

Layer: ``shapes`` (pure). The rules of :mod:`shapes.convert` (old and new row judged, a
primary-key change split in two, ``replica`` deciding what values are carried) with what
subquery shapes add on the wire: every entry carries the row's ``tags`` (one per disjunct of the
clause, see :meth:`shapes.where.Where.tags`) and ``active_conditions`` (one bool per position),
and updates carry ``removed_tags``. Rows are judged against *views*: the value set of each
subquery as the shape's log reflects it (the caller owns them; they change by move-in and
move-out). An update of a row that stays in the shape is never dropped, even when no selected
column changed, so that clients refresh its tags and active conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

from shapes.convert import Entry, ShapeView, WhereEvaluationFailed
from shapes.messages import ChangeEncoder, Row, header_fragment, row_key
from shapes.subquery import RowMeta as Meta

Views = Sequence[AbstractSet[Hashable]]


class SubqueryPredicate(Protocol):
    """What conversion needs of a compiled ``where`` clause with subqueries."""

    def evaluate(self, row: Row, views: Views) -> Meta: ...

    def tags(self, row: Row, prefix: str) -> list[str]: ...


class CachedTags:
    """A clause whose :meth:`tags` are remembered by the values of the columns they depend on
    (the left sides of the subqueries): rows of one thread share their tags, and hashing them
    again for every row would cost more than the rest of the conversion."""

    __slots__ = ("_cache", "_columns", "_fragments", "_only_column", "_where", "evaluate")

    LIMIT = 4096
    """Entries kept (the cache starts over when it is full)."""

    def __init__(self, where: SubqueryPredicate, columns: Sequence[str]) -> None:
        self._where = where
        self._columns = tuple(columns)
        self._only_column = columns[0] if len(columns) == 1 else None
        self._cache: dict[tuple[object, ...], list[str]] = {}
        self._fragments: dict[tuple[object, ...], bytes] = {}
        self.evaluate: Callable[[Row, Views], Meta] = where.evaluate

    def fragment(self, row: Row, prefix: str, meta: Meta) -> bytes:
        """The row's ``tags`` and ``active_conditions`` headers, encoded
        (:func:`shapes.messages.header_fragment`)."""
        only = self._only_column
        key: tuple[object, ...]
        if only is not None:  # most clauses have one left-side column
            key = (prefix, meta.active_conditions, row.get(only))
        else:
            key = (prefix, meta.active_conditions, *[row.get(c) for c in self._columns])
        found = self._fragments.get(key)
        if found is None:
            if len(self._fragments) >= self.LIMIT:
                self._fragments.clear()
            found = header_fragment(_headers(self.tags(row, prefix), meta))
            self._fragments[key] = found
        return found

    def tags(self, row: Row, prefix: str) -> list[str]:
        key = (prefix, *(row.get(c) for c in self._columns))
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self.LIMIT:
                self._cache.clear()
            found = self._cache[key] = self._where.tags(row, prefix)
        return found


@dataclass(frozen=True, slots=True)
class SubqueryView:
    """A shape's conversion parts: the plain ones, its clause and its tag prefix."""

    base: ShapeView
    where: CachedTags
    tag_prefix: str


def _judge(view: SubqueryView, row: Row, views: Views) -> Meta:
    try:
        return view.where.evaluate(row, views)
    except Exception as exc:  # contained in the shape, as in shapes.convert
        raise WhereEvaluationFailed(view.base.relation, exc) from exc


def _select(view: ShapeView, row: Row) -> Row:
    if view.selected is None:
        return row
    return {name: row.get(name) for name in view.selected if name in row}


def _key_only(view: ShapeView, row: Row) -> dict[str, str | None]:
    return {name: row.get(name) for name in view.key_columns}


def _headers(tags: list[str], meta: Meta) -> dict[str, object]:
    return {"tags": tags, "active_conditions": list(meta.active_conditions)}


def row_headers(view: SubqueryView, row: Row, views: Views) -> dict[str, object] | None:
    """The ``tags``/``active_conditions`` headers of a row in the shape, ``None`` if it is out."""
    meta = _judge(view, row, views)
    if not meta.included:
        return None
    return _headers(view.where.tags(row, view.tag_prefix), meta)


def convert_insert(view: SubqueryView, new: Row, views: Views) -> list[Entry]:
    """Entries for an inserted row (raises :class:`WhereEvaluationFailed`, as all of these)."""
    headers = row_headers(view, new, views)
    if headers is None:
        return []
    base = view.base
    return [
        Entry(
            "insert",
            row_key(base.key_prefix, new, base.key_columns),
            _select(base, new),
            headers=headers,
        )
    ]


def encode_insert(
    view: SubqueryView,
    new: Row,
    views: Views,
    encoder: ChangeEncoder,
    at: int,
    *,
    last: bool = False,
) -> bytes | None:
    """:func:`convert_insert` and its encoding in one step (the common change, made cheap):
    the message of an inserted row at op position ``at`` (marked as the transaction's last
    with ``last``), ``None`` when the row is out."""
    meta = _judge(view, new, views)
    if not meta.included:
        return None
    base = view.base
    return encoder.encode_with(
        "insert",
        row_key(base.key_prefix, new, base.key_columns),
        _select(base, new),
        at,
        view.where.fragment(new, view.tag_prefix, meta),
        last=last,
    )


def convert_delete(view: SubqueryView, old: Row, old_is_full: bool, views: Views) -> list[Entry]:
    """Entries for a deleted row; ``old`` may hold only the key columns (then no tags)."""
    base = view.base
    key = row_key(base.key_prefix, old, base.key_columns)
    if not old_is_full:
        return [Entry("delete", key, _key_only(base, old))]
    headers = row_headers(view, old, views)
    if headers is None:
        return []
    value = _select(base, old) if base.replica_full else _key_only(base, old)
    return [Entry("delete", key, value, headers=headers)]


def convert_update(view: SubqueryView, old: Row | None, new: Row, views: Views) -> list[Entry]:
    """Entries for an updated row (``old`` is ``None`` when Postgres did not send it)."""
    base = view.base
    new_meta = _judge(view, new, views)
    old_meta = new_meta if old is None else _judge(view, old, views)
    if not new_meta.included and not old_meta.included:
        return []
    if old is not None and old_meta.included and not new_meta.included:
        return convert_delete(view, old, True, views)
    new_tags = view.where.tags(new, view.tag_prefix)
    new_key = row_key(base.key_prefix, new, base.key_columns)
    if not old_meta.included:
        return [Entry("insert", new_key, _select(base, new), headers=_headers(new_tags, new_meta))]
    old_tags = new_tags if old is None else view.where.tags(old, view.tag_prefix)
    removed = [tag for tag in old_tags if tag not in new_tags]
    if old is not None:
        old_key = row_key(base.key_prefix, old, base.key_columns)
        if old_key != new_key:
            old_value = _select(base, old) if base.replica_full else _key_only(base, old)
            delete_headers: dict[str, object] = {
                "key_change_to": new_key,
                "tags": new_tags + removed,
                "active_conditions": list(old_meta.active_conditions),
            }
            insert_headers = {"key_change_from": old_key, **_headers(new_tags, new_meta)}
            return [
                Entry("delete", old_key, old_value, headers=delete_headers),
                Entry("insert", new_key, _select(base, new), headers=insert_headers, split=1),
            ]
    headers = _headers(new_tags, new_meta)
    headers["removed_tags"] = removed
    selected = _select(base, new)
    if old is None:
        return [Entry("update", new_key, selected, headers=headers)]
    changed = [name for name, value in selected.items() if old.get(name) != value]
    if base.replica_full:
        old_value = {name: old.get(name) for name in changed}
        return [Entry("update", new_key, selected, old_value=old_value, headers=headers)]
    value = _key_only(base, new)
    for name in changed:
        value[name] = selected[name]
    return [Entry("update", new_key, value, headers=headers)]
