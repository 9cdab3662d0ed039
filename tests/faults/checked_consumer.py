"""A shape consumer that checks every change it applies, for fault tests.

:class:`CheckedConsumer` follows one shape of a running syncd over HTTP (raw ``httpx``, the
protocol as the official client speaks it) and refuses anything a correct server never sends:

- within one handle, the ``electric-offset`` of successive responses never goes back, and the
  ``(lsn, op_position)`` of successive changes strictly increases (no change twice, none out of
  order);
- an ``insert`` of a key it already holds, or an ``update``/``delete`` of a key it does not;
- a handle that changes without a 409 once it is past ``offset=-1``;
- a 200 without ``electric-handle``/``electric-offset``, or any status but 200, 409 and a
  transient 503/429 (retried).

A 409 (or a ``must-refetch`` control message) is handled as a client must: the rows are dropped
and the shape is fetched again from ``offset=-1`` (with the new handle the 409 names). A
violation raises :class:`ConsumerViolation` at once and is kept in :attr:`CheckedConsumer.failure`
when the consumer runs in a thread.

Typical use in a fault test::

    consumer = CheckedConsumer(syncd.shape_url, {"table": "items", "where": "grp = 1"})
    consumer.start()                      # follows live in a thread
    ... provoke the fault, write rows ...
    consumer.stop()                       # raises what the thread found, if anything
    consumer.catch_up(min_lsn=current_wal_lsn(dsn))
    assert_rows_equal_select(consumer, dsn, "items", "grp = 1")

``consumer.refetches`` counts the 409s / must-refetch messages it went through.

Subquery shapes: the consumer keeps each held row's ``tags`` and ``active_conditions`` (an
update adds its ``tags`` and drops its ``removed_tags``; a non-empty ``active_conditions``
replaces the stored one) and applies ``move-out``/``move-in`` events as the official clients
do: a pattern ``{pos, value}`` flips position ``pos`` of every held row whose tag has ``value``
in slot ``pos`` (false for move-out, true for move-in); a row stays while some tag (one per
disjunct) has all its non-empty slots true, and is dropped otherwise. An ``is_move_in`` insert
of a key already held is applied as an update (counted in ``move_in_overlaps``); any other
insert of a held key is still a violation. ``events`` keeps the move events received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import httpx
import psycopg
from psycopg import sql

from shapes.messages import relation_key_prefix, row_key
from shapes.offset import BEFORE_ALL, parse_offset

Row = dict[str, Any]

__all__ = [
    "CheckedConsumer",
    "RowTags",
    "ConsumerViolation",
    "assert_rows_equal_select",
    "current_wal_lsn",
    "select_rows",
]

_TRANSIENT = frozenset({429, 503})
_MOVE_EVENTS = frozenset({"move-in", "move-out"})


@dataclass
class RowTags:
    """The tag state of one held row of a subquery shape."""

    tags: set[str] = field(default_factory=set)
    active_conditions: list[bool] = field(default_factory=list)

    def merge(self, headers: Mapping[str, Any]) -> None:
        """Take a change message's ``tags``, ``removed_tags`` and ``active_conditions``."""
        self.tags |= set(headers.get("tags") or ())
        self.tags -= set(headers.get("removed_tags") or ())
        conditions = headers.get("active_conditions")
        if conditions:
            self.active_conditions = [bool(c) for c in conditions]

    def matches(self, position: int, value: str) -> bool:
        """True if some tag holds ``value`` in slot ``position``."""
        for tag in self.tags:
            slots = tag.split("/")
            if position < len(slots) and slots[position] == value:
                return True
        return False

    def set_condition(self, position: int, value: bool) -> None:
        if position < len(self.active_conditions):
            self.active_conditions[position] = value

    def drop_tags_matching(self, position: int, value: str) -> None:
        """Without active_conditions (older servers): forget the tags that match."""
        self.tags = {
            tag
            for tag in self.tags
            if not (position < len(tag.split("/")) and tag.split("/")[position] == value)
        }

    def satisfied(self) -> bool:
        """A row stays while one disjunct (tag) has all its participating positions true."""
        if not self.active_conditions:
            return bool(self.tags)
        for tag in self.tags:
            positions = [i for i, slot in enumerate(tag.split("/")) if slot != ""]
            if all(
                i < len(self.active_conditions) and self.active_conditions[i] for i in positions
            ):
                return True
        return False


class ConsumerViolation(AssertionError):
    """The server sent something a correct shape log never contains."""


class CheckedConsumer:
    """Follows one shape over HTTP and checks every change before applying it.

    ``url`` is the shape endpoint (``.../v1/shape``), ``params`` the shape's query parameters
    (``table``, ``where``, ``columns``, ...) without ``offset``/``handle``/``live``.
    """

    def __init__(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        name: str | None = None,
        timeout: float = 60.0,
        keep_messages: bool = False,
    ) -> None:
        self.url = url
        self.params = dict(params)
        self.name = name or json.dumps(self.params, sort_keys=True)
        self.rows: dict[str, Row] = {}
        """The rows held, by protocol key."""
        self.handle: str | None = None
        self.offset = BEFORE_ALL
        self.up_to_date = False
        self.last_seen_lsn = 0
        """``global_last_seen_lsn`` of the latest up-to-date message."""
        self.refetches = 0
        """How many times the server sent it back to ``offset=-1`` (409 or must-refetch)."""
        self.changes_applied = 0
        self.row_tags: dict[str, RowTags] = {}
        """Tags and active_conditions of the held rows that carried any (subquery shapes)."""
        self.events: list[dict[str, Any]] = []
        """Every ``move-in``/``move-out`` event received, in order."""
        self.move_in_rows = 0
        self.move_in_overlaps = 0
        """``is_move_in`` inserts of keys already held (applied as updates)."""
        self.moved_out = 0
        """Rows dropped because a move-out left none of their disjuncts satisfied."""
        self.snapshot_requests = 0
        """Requests made with ``offset=-1``."""
        self.keep_messages = keep_messages
        self.received: list[dict[str, Any]] = []
        """Every message of every 200 response, in order (with ``keep_messages``)."""
        self.failure: BaseException | None = None
        """What ended the follower thread, if anything."""
        self._position = (-1, -1)
        self._client = httpx.Client(timeout=timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one request ---------------------------------------------------------------------------

    def poll(self, *, live: bool = False) -> None:
        """Make one request (long-poll when ``live`` and up to date) and apply its answer."""
        query = dict(self.params, offset=str(self.offset))
        if self.handle is not None:
            query["handle"] = self.handle
        if live and self.up_to_date:
            query["live"] = "true"
        if self.offset == BEFORE_ALL:
            self.snapshot_requests += 1
        answer = self._client.get(self.url, params=query)
        if answer.status_code == 409:
            self._refetch(answer.headers.get("electric-handle"))
            return
        if answer.status_code in _TRANSIENT:
            time.sleep(0.05)
            return
        if answer.status_code != 200:
            self._fail(f"unexpected status {answer.status_code}: {answer.text[:300]}")
        handle = answer.headers.get("electric-handle")
        offset_text = answer.headers.get("electric-offset")
        if handle is None or offset_text is None:
            self._fail(f"a 200 without electric-handle/offset: {dict(answer.headers)}")
        # At offset -1 the server serves the definition's current shape whatever the handle.
        if self.offset != BEFORE_ALL and handle != self.handle:
            self._fail(f"handle changed from {self.handle} to {handle} without a 409")
        offset = parse_offset(offset_text)
        if offset < self.offset:
            self._fail(f"offset went back from {self.offset} to {offset}")
        self.handle = handle
        for message in json.loads(answer.content):
            if self.keep_messages:
                self.received.append(message)
            if self._apply(message):
                return  # must-refetch: everything after it belongs to the old handle
        self.offset = offset

    def _apply(self, message: Mapping[str, Any]) -> bool:
        """Check and apply one message; ``True`` for must-refetch."""
        headers = message.get("headers", {})
        control = headers.get("control")
        if control == "must-refetch":
            self._refetch(None)
            return True
        if control == "up-to-date":
            self.up_to_date = True
            seen = headers.get("global_last_seen_lsn")
            if seen is not None:
                self.last_seen_lsn = max(self.last_seen_lsn, int(seen))
            return False
        if control is not None:
            return False
        if headers.get("event") in _MOVE_EVENTS:
            self._apply_move(headers)
            return False
        if "lsn" in headers:
            position = (int(headers["lsn"]), int(headers["op_position"]))
            if position <= self._position:
                self._fail(f"change at {position} after {self._position}: {message}")
            self._position = position
        key = message["key"]
        operation = headers.get("operation")
        held = key in self.rows
        if operation == "insert":
            move_in = bool(headers.get("is_move_in"))
            self.move_in_rows += move_in
            if held and not move_in:
                self._fail(f"insert of key {key} it already holds: {message}")
            if held:
                self.move_in_overlaps += 1
                self.rows[key].update(message["value"])
            else:
                self.rows[key] = dict(message["value"])
                self.row_tags.pop(key, None)
            self._merge_tags(key, headers)
        elif operation == "update":
            if not held:
                self._fail(f"update of key {key} it does not hold: {message}")
            self.rows[key].update(message["value"])
            self._merge_tags(key, headers)
        elif operation == "delete":
            if not held:
                self._fail(f"delete of key {key} it does not hold: {message}")
            del self.rows[key]
            self.row_tags.pop(key, None)
        else:
            self._fail(f"unknown operation {operation!r}: {message}")
        self.changes_applied += 1
        return False

    def _merge_tags(self, key: str, headers: Mapping[str, Any]) -> None:
        if "tags" in headers or "active_conditions" in headers or key in self.row_tags:
            self.row_tags.setdefault(key, RowTags()).merge(headers)

    def _apply_move(self, headers: Mapping[str, Any]) -> None:
        """A move-out drops the rows it leaves with no satisfied disjunct; a move-in only
        sets the position on held rows (its new rows follow as inserts)."""
        self.events.append(dict(headers))
        moving_in = headers["event"] == "move-in"
        if not isinstance(headers.get("txids"), list):
            self._fail(f"move event without a txids list: {headers}")
        for pattern in headers.get("patterns") or ():
            position, value = int(pattern["pos"]), str(pattern["value"])
            for key, state in list(self.row_tags.items()):
                if not state.matches(position, value):
                    continue
                if not state.active_conditions and not moving_in:
                    state.drop_tags_matching(position, value)
                else:
                    state.set_condition(position, moving_in)
                if not moving_in and not state.satisfied():
                    del self.rows[key]
                    del self.row_tags[key]
                    self.moved_out += 1

    def _refetch(self, handle: str | None) -> None:
        self.refetches += 1
        self.rows = {}
        self.row_tags = {}
        self.handle = handle
        self.offset = BEFORE_ALL
        self.up_to_date = False
        self._position = (-1, -1)

    def _fail(self, what: str) -> NoReturn:
        raise ConsumerViolation(f"consumer {self.name}: {what}")

    # -- following -----------------------------------------------------------------------------

    def catch_up(self, *, min_lsn: int = 0, max_requests: int = 10_000) -> None:
        """Request (not live) until up to date and the server has seen WAL up to ``min_lsn``
        (every transaction committed before that position has then been processed)."""
        for _ in range(max_requests):
            self.up_to_date = False
            self.poll()
            if self.up_to_date and self.last_seen_lsn >= min_lsn:
                return
            if self.up_to_date:
                time.sleep(0.02)
        raise AssertionError(f"consumer {self.name} never caught up to {min_lsn}")

    def start(self) -> None:
        """Follow the shape live in a background thread until :meth:`stop`."""
        assert self._thread is None, "already started"
        self._thread = threading.Thread(target=self._follow, name=f"consumer {self.name}")
        self._thread.start()

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.poll(live=True)
                except httpx.TransportError:
                    time.sleep(0.05)  # syncd restarting or the connection cut: try again
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> None:
        """Stop following (waits for the current long poll) and re-raise what the thread found."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Stop and close the HTTP client."""
        try:
            self.stop()
        finally:
            self._client.close()

    def __enter__(self) -> CheckedConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def select_rows(
    dsn: str, table: str, where: str | None = None, *, schema: str = "public"
) -> dict[str, Row]:
    """``SELECT`` every column as text (``None`` for NULL), keyed like the shape protocol."""
    with psycopg.connect(dsn) as conn:
        relation = sql.Identifier(schema, table).as_string(conn)
        columns = [
            name
            for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (relation,),
            )
        ]
        key_columns = [
            name
            for (name,) in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary"
                " ORDER BY array_position(i.indkey, a.attnum)",
                (relation,),
            )
        ]
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(schema, table),
        )
        if where is not None:
            query = sql.Composed([query, sql.SQL(" WHERE "), sql.SQL(where)])
        prefix = relation_key_prefix(schema, table)
        rows: dict[str, Row] = {}
        for values in conn.execute(query):
            row = dict(zip(columns, values, strict=True))
            rows[row_key(prefix, row, key_columns)] = row
    return rows


def current_wal_lsn(dsn: str) -> int:
    """The WAL position after every transaction committed so far."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8").fetchone()
    assert row is not None
    return int(row[0])


def assert_rows_equal_select(
    consumer: CheckedConsumer, dsn: str, table: str, where: str | None = None
) -> None:
    """Catch ``consumer`` up with every transaction committed so far, then assert that its
    rows are exactly ``SELECT * FROM table WHERE where`` (values as Postgres' text output)."""
    consumer.catch_up(min_lsn=current_wal_lsn(dsn))
    expected = select_rows(dsn, table, where)
    if consumer.rows != expected:
        missing = sorted(expected.keys() - consumer.rows.keys())[:10]
        extra = sorted(consumer.rows.keys() - expected.keys())[:10]
        differ = sorted(
            k for k in expected.keys() & consumer.rows.keys() if expected[k] != consumer.rows[k]
        )[:10]
        raise AssertionError(
            f"consumer {consumer.name}: rows differ from SELECT (missing {missing}, "
            f"extra {extra}, different {differ})"
        )
