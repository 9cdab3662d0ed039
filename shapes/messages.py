"""Wire messages of the shape protocol: change messages, control messages, row keys.

Layer: ``shapes`` (pure). Every message is serialised to JSON bytes once, when it is written to a
shape log; the HTTP layer only joins stored bytes. Values are Postgres text output or ``None``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

import msgspec

Operation = Literal["insert", "update", "delete"]
Row = Mapping[str, str | None]
Headers = Mapping[str, object]

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_encode_lines = _encoder.encode_lines

UP_TO_DATE_PREFIX: Final = b'{"headers":{"control":"up-to-date","global_last_seen_lsn":"'
MUST_REFETCH: Final = b'[{"headers":{"control":"must-refetch"}}]'


def relation_key_prefix(schema: str, table: str) -> str:
    """The ``"schema"."table"`` start of every key of a relation (``""`` doubles ``"``)."""
    return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'


def row_key(prefix: str, row: Row, key_columns: Sequence[str]) -> str:
    """A row's key: the relation prefix, then ``/"<value>"`` per key column (``/_`` for NULL).

    ``/`` inside a value is doubled so that keys never collide.
    """
    if len(key_columns) == 1:  # the common case, without the list
        return prefix + _key_part(row.get(key_columns[0]))
    return prefix + "".join([_key_part(row.get(column)) for column in key_columns])


def values_key(
    prefix: str, values: Sequence[object], positions: Mapping[str, int], key_columns: Sequence[str]
) -> str:
    """:func:`row_key` of the row whose column ``c`` is ``values[positions[c]]`` (a column
    missing from ``positions``, or a value that is not text, counts as NULL)."""
    if len(key_columns) == 1:
        return prefix + _key_part(text_at(values, positions.get(key_columns[0])))
    return prefix + "".join(
        [_key_part(text_at(values, positions.get(column))) for column in key_columns]
    )


def text_at(values: Sequence[object], at: int | None) -> str | None:
    """``values[at]`` if it is text; ``None`` for anything else, or when ``at`` is."""
    value = values[at] if at is not None else None
    return value if type(value) is str else None


def _key_part(value: str | None) -> str:
    return "/_" if value is None else '/"' + value.replace("/", "//") + '"'


def snapshot_row(
    relation: Sequence[str], key: str, value: Row, extra_headers: Headers | None = None
) -> bytes:
    """A snapshot row: an insert with only ``operation`` and ``relation`` headers (and, for
    shapes whose ``where`` has subqueries, ``tags``/``active_conditions``/``is_move_in``)."""
    headers: dict[str, object] = {"operation": "insert", "relation": relation}
    if extra_headers:
        headers.update(extra_headers)
    return _encode({"key": key, "value": value, "headers": headers})


_UNFIT_FOR_STRUCT: Final = re.compile(r'["\\\x00-\x1f]')
"""Characters msgspec does not take in a renamed struct field."""


# Made with real types rather than class annotations: the module may run compiled (see
# shapes.compiled), and a compiled module's annotations cannot be resolved by name.
_SnapshotMessage = msgspec.defstruct(
    "_SnapshotMessage", [("key", str), ("value", object), ("headers", msgspec.Raw)]
)


@functools.lru_cache(maxsize=1024)
def value_struct(columns: tuple[str, ...]) -> type[msgspec.Struct] | None:
    """The struct whose fields encode as ``columns``, in order: made from a row's values in
    that order, it encodes as the row's mapping would, faster. ``None`` when a name is one
    msgspec cannot rename to. Shared by every shape that selects the same columns: a class is
    costly to make and, being cyclic, is left for the collector when dropped."""
    if any(_UNFIT_FOR_STRUCT.search(c) for c in columns):
        return None
    fields = [f"c{i}" for i in range(len(columns))]
    return msgspec.defstruct(
        "SnapshotValue", fields, rename=dict(zip(fields, columns, strict=True))
    )


class SnapshotEncoder:
    """Encodes batches of snapshot rows into JSON lines, one insert message per row.

    A row is a sequence of text values in :attr:`columns` order: the ``value_columns`` (the
    message's ``value``, in that order), then the key columns not among them. Each line equals
    :func:`snapshot_row` of the row's :func:`row_key` and value; the messages are built as msgspec
    structs and encoded in one call per batch, a few times faster than a dict per row.
    """

    __slots__ = (
        "_headers",
        "_key_at",
        "_key_columns",
        "_null_key",
        "_prefix",
        "_value",
        "_value_columns",
        "_width",
        "columns",
    )

    def __init__(
        self,
        relation: Sequence[str],
        key_prefix: str,
        value_columns: Sequence[str],
        key_columns: Sequence[str],
    ) -> None:
        extra = [c for c in key_columns if c not in value_columns]
        self.columns: tuple[str, ...] = (*value_columns, *extra)
        """The order in which :meth:`encode` takes a row's values."""
        self._value_columns = tuple(value_columns)
        self._value = value_struct(self._value_columns)
        self._width = len(value_columns)
        self._key_columns = tuple(key_columns)
        self._key_at = [self.columns.index(c) for c in key_columns]
        self._prefix = key_prefix
        self._null_key = key_prefix + "/_"
        self._headers = msgspec.Raw(_encode({"operation": "insert", "relation": relation}))

    def encode(self, rows: Sequence[Sequence[str | None]]) -> bytes:
        """The rows' messages, each on its own line ending in a newline."""
        value, headers = self._value, self._headers
        if len(self._key_at) == 1:
            at, start, null = self._key_at[0], self._prefix + '/"', self._null_key
            keys = [
                null if (v := row[at]) is None else start + v.replace("/", "//") + '"'
                for row in rows
            ]
        else:
            names, prefix, key_columns = self.columns, self._prefix, self._key_columns
            keys = [
                row_key(prefix, dict(zip(names, row, strict=True)), key_columns) for row in rows
            ]
        values: list[object]
        if value is None:  # column names msgspec cannot rename to: a dict per row
            names = self._value_columns
            values = [dict(zip(names, row, strict=False)) for row in rows]
        elif self._width == len(self.columns):
            values = [value(*row) for row in rows]
        else:
            width = self._width
            values = [value(*row[:width]) for row in rows]
        return _encode_lines(
            [_SnapshotMessage(k, v, headers) for k, v in zip(keys, values, strict=True)]
        )


def move_event(
    kind: Literal["move-in", "move-out"], patterns: object, txids: Iterable[int]
) -> bytes:
    """A ``move-in``/``move-out`` event of a subquery shape: ``patterns`` are
    ``[{"pos": p, "value": tag}]``, ``txids`` the sorted xids that caused the move."""
    headers = {"event": kind, "patterns": patterns, "txids": sorted(set(txids))}
    return _encode({"headers": headers})


def change(
    operation: Operation,
    relation: Sequence[str],
    key: str,
    value: Row,
    *,
    lsn: int,
    op_position: int,
    xid: int,
    last: bool,
    old_value: Row | None = None,
    extra_headers: Headers | None = None,
) -> bytes:
    """A change message from the replication stream."""
    headers: dict[str, object] = {
        "operation": operation,
        "relation": relation,
        "lsn": str(lsn),
        "op_position": op_position,
        "txids": [xid],
    }
    if last:
        headers["last"] = True
    if extra_headers:
        headers.update(extra_headers)
    message: dict[str, object] = {"headers": headers, "key": key, "value": value}
    if old_value is not None:
        message["old_value"] = old_value
    return _encode(message)


_BASE_HEADERS: Final = frozenset({"operation", "relation", "lsn", "op_position", "txids", "last"})
LAST_MARK: Final = b',"last":true'
"""What :meth:`ChangeEncoder.encode` leaves out at ``cut`` for the last entry of a transaction."""


class ChangeEncoder:
    """Encodes the change messages of one relation in one transaction, fast.

    :meth:`encode` (and :meth:`insert`, its shortcut) give exactly the bytes of :func:`change`
    with ``last=False``; inserting :data:`LAST_MARK` at :meth:`cut` gives the bytes with
    ``last=True`` (right after ``"txids"``, before any extra header), so that a transaction's
    last entry can be marked once the transaction ends. The constant parts are encoded once.
    """

    __slots__ = ("_heads", "_insert", "_prefix", "_txids")

    def __init__(self, relation: Sequence[str], lsn: int, xid: int) -> None:
        self._prefix = b',"relation":' + _encode(relation) + b',"lsn":"' + b"%d" % lsn
        self._prefix += b'","op_position":'
        self._txids = b',"txids":[%d]' % xid
        self._heads: dict[str, bytes] = {}
        head = self._head("insert").replace(b"%", b"%%")
        self._insert = head + b"%d" + self._txids + b'},"key":%b,"value":%b}'

    def _head(self, operation: str) -> bytes:
        head = self._heads.get(operation)
        if head is None:
            head = b'{"headers":{"operation":' + _encode(operation) + self._prefix
            self._heads[operation] = head
        return head

    def insert(self, key: str, value: Row | msgspec.Struct, op_position: int) -> bytes:
        """``encode("insert", key, value, op_position)``; ``value`` may also be a struct of
        :func:`value_struct`."""
        return self._insert % (op_position, _encode(key), _encode(value))

    def encode(
        self,
        operation: Operation,
        key: str,
        value: Row | msgspec.Struct,
        op_position: int,
        old_value: Row | None = None,
        extra_headers: Headers | None = None,
    ) -> bytes:
        """The message (``last`` false); see the class docstring. ``value`` may also be a
        struct of :func:`value_struct`."""
        fragment = header_fragment(extra_headers) if extra_headers else b""
        return self.encode_with(operation, key, value, op_position, fragment, old_value)

    def encode_with(
        self,
        operation: Operation,
        key: str,
        value: Row | msgspec.Struct,
        op_position: int,
        fragment: bytes,
        old_value: Row | None = None,
        *,
        last: bool = False,
    ) -> bytes:
        """:meth:`encode` with the extra headers already encoded by :func:`header_fragment`
        (shapes that give many rows the same extra headers encode them once); with ``last``,
        the message already marked as its transaction's last (as :meth:`mark_last` would)."""
        end = b"}" if old_value is None else b',"old_value":' + _encode(old_value) + b"}"
        return b'%b%d%b%b%b},"key":%b,"value":%b%b' % (
            self._head(operation),
            op_position,
            self._txids,
            LAST_MARK if last else b"",
            fragment,
            _encode(key),
            _encode(value),
            end,
        )

    def cut(self, operation: Operation, op_position: int) -> int:
        """Where :data:`LAST_MARK` goes in the message of ``operation`` at ``op_position``."""
        return len(self._head(operation)) + len(b"%d" % op_position) + len(self._txids)

    def mark_last(self, data: bytes, operation: Operation, op_position: int) -> bytes:
        """The message ``data`` (encoded here) with ``"last":true``."""
        cut = self.cut(operation, op_position)
        return data[:cut] + LAST_MARK + data[cut:]


def header_fragment(extra_headers: Headers) -> bytes:
    """Extra change headers as the bytes :meth:`ChangeEncoder.encode_with` takes.

    Raises:
        ValueError: a header would replace one of the base headers.
    """
    if not _BASE_HEADERS.isdisjoint(extra_headers):
        raise ValueError(f"extra headers may not replace base headers: {extra_headers}")
    return b"," + _encode(extra_headers)[1:-1]


def snapshot_end(xmin: int, xmax: int, xip: Iterable[int]) -> bytes:
    """The ``snapshot-end`` control message; xid8 values as strings."""
    headers = {
        "control": "snapshot-end",
        "xmin": str(xmin),
        "xmax": str(xmax),
        "xip_list": [str(x) for x in xip],
    }
    return _encode({"headers": headers})


def up_to_date(global_last_seen_lsn: int) -> bytes:
    """The ``up-to-date`` control message."""
    return UP_TO_DATE_PREFIX + str(global_last_seen_lsn).encode() + b'"}}'


def json_array(items: Iterable[bytes]) -> bytes:
    """Join pre-serialised messages into a JSON array."""
    return b"[" + b",".join(items) + b"]"
