"""Streamed (large) transactions: spooled while they run, replayed in pieces once committed.

Layer: ``syncd``.

Theory of operation
-------------------
The daemon asks for ``streaming`` (proto 2), so Postgres sends any transaction whose decoded
changes exceed ``logical_decoding_work_mem`` (64 MB by default) in Stream Start ... Stop blocks
while it is still running. Those changes come through :meth:`StreamReplayer.on_stream_change`
with their raw pgoutput bytes and go, unapplied, to a spool file per top-level xid
(``<storage_dir>/spool/<xid>.bin``, ``syncd.spool``); relation messages are spooled too and take
effect at replay, in transaction order, as for Postgres' own apply worker. Stream Abort deletes
the spool (whole transaction) or cuts off one subtransaction's changes (``ROLLBACK TO
SAVEPOINT``; changes carry the xid of the subtransaction that made them). Stream Commit is
applied at the stream's next ``on_idle`` call, which the stream makes at once: the spool is
decoded again and replayed through the ordinary change path with offsets ``(commit LSN, op)``
and the transaction's xid, and every few thousand changes (fewer when they produce much output,
aiming at ``_PIECE_BYTES``) the entries gathered so far, except each shape's latest, are
appended to the shape logs as a piece of an open transaction
(``ShapeLog.append_transaction(..., final=False)``): readers see nothing of it until the final
piece, which carries the ``"last":true`` entry. Memory therefore stays bounded by a piece, not
by the transaction. Transactions below ``logical_decoding_work_mem`` are not streamed and are
held in memory until their Commit as before, which bounds them by that setting (times the JSON
expansion and the number of shapes a change reaches); shapes still taking their snapshot hold
even a streamed transaction in memory.

Flush rules for streamed transactions. The confirmed LSN is the end of the last *applied*
commit; while any spool exists, keepalive positions are not confirmed either. So it never
passes the commit of a streamed transaction that has not been committed and applied, and pieces
written before a crash belong to a transaction Postgres will send again. After a reconnect or a
crash, Postgres sends every uncommitted streamed transaction again from its first block
(``first=True``): a new session (``on_session_start``) and a first block for a known xid drop the
old spool, and start-up deletes every spool (the xids are unknown to the new process). Shape-log
recovery cuts the pieces of a transaction whose final piece was never written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from syncd.change_applier import ChangeApplier
from syncd.pgoutput import messages as pg
from syncd.pgoutput.decoder import PgoutputDecoder
from syncd.spool import TransactionSpool

log = logging.getLogger("syncd.engine")

_PIECE_BYTES = 8 * 1024 * 1024
"""While a streamed transaction is replayed, aim at pieces of about this many bytes of entries."""
_PIECE_CHANGES = (16, 256, 8192)
"""Changes between pieces (and event-loop yields) of a replay: minimum, first, maximum."""


class StreamReplayer:
    """The spools of streamed transactions and the replay of the committed ones."""

    def __init__(
        self,
        spool_dir: Path,
        applier: ChangeApplier,
        changes: dict[type, Callable[[Any], None]],
    ) -> None:
        self._spool_dir = spool_dir
        self._applier = applier
        self._changes = changes
        """Handlers of the row and schema changes a spool may hold."""
        self._spools: dict[int, TransactionSpool] = {}
        self._spool: TransactionSpool | None = None
        """The spool of the open stream block."""
        self._stream_commits: list[pg.StreamCommit] = []
        """Stream Commits received and not applied yet (applied at the next ``on_idle``)."""
        self._replay_decoder = PgoutputDecoder()

    @property
    def spooling(self) -> bool:
        """Whether any streamed transaction is spooled and not yet applied or aborted."""
        return bool(self._spools)

    @property
    def commits_pending(self) -> bool:
        """Whether Stream Commits wait to be applied."""
        return bool(self._stream_commits)

    def on_stream_commit(self, msg: pg.StreamCommit) -> None:
        self._stream_commits.append(msg)

    def on_stream_stop(self, msg: pg.StreamStop) -> None:
        self._spool = None

    def on_stream_change(self, msg: pg.Message, payload: memoryview) -> None:
        """Spool one message of a stream block (``payload``: its pgoutput bytes)."""
        spool = self._spool
        if spool is None:
            raise RuntimeError("a streamed change outside a stream block")
        kind = type(msg)
        if kind is pg.Relation:
            spool.append(0, payload, relation=True)
        elif kind is pg.Insert or kind is pg.Update or kind is pg.Delete or kind is pg.Truncate:
            xid = cast(pg.Insert | pg.Update | pg.Delete | pg.Truncate, msg).xid
            spool.append(spool.xid if xid is None else xid, payload)
        # Type, Origin and logical messages carry nothing a shape needs.

    def on_session_start(self) -> None:
        """A new replication session: every spool and pending Stream Commit is forgotten."""
        self.drop_spools()
        self._stream_commits.clear()

    def drop_spools(self) -> None:
        for spool in self._spools.values():
            spool.delete()
        self._spools.clear()
        self._spool = None

    def on_stream_start(self, msg: pg.StreamStart) -> None:
        spool = self._spools.get(msg.xid)
        if msg.first or spool is None:
            if not msg.first:
                raise RuntimeError(f"stream block of transaction {msg.xid} without its start")
            if spool is not None:  # sent again after a reconnect
                spool.delete()
            spool = self._spools[msg.xid] = TransactionSpool(self._spool_dir, msg.xid)
        self._spool = spool

    def on_stream_abort(self, msg: pg.StreamAbort) -> None:
        spool = self._spools.get(msg.xid)
        if spool is None:
            return
        if msg.subxid == msg.xid:
            del self._spools[msg.xid]
            if self._spool is spool:
                self._spool = None
            spool.delete()
            log.info("streamed transaction %d aborted", msg.xid)
        else:
            spool.abort_subtransaction(msg.subxid)

    async def apply_commits(self) -> None:
        """Apply pending Stream Commits, yielding to the event loop after each piece."""
        while self._stream_commits:
            commit = self._stream_commits.pop(0)
            for _ in self._replay(commit):
                await asyncio.sleep(0)

    def apply_commits_now(self) -> None:
        """Apply pending Stream Commits without yielding (a message follows before on_idle)."""
        while self._stream_commits:
            commit = self._stream_commits.pop(0)
            for _ in self._replay(commit):
                pass

    def _replay(self, commit: pg.StreamCommit) -> Iterator[None]:
        """Apply a committed streamed transaction from its spool, yielding after each piece."""
        applier = self._applier
        spool = self._spools.pop(commit.xid, None)
        if self._spool is spool:
            self._spool = None
        applier.on_begin(pg.Begin(commit.commit_lsn, commit.commit_time, commit.xid))
        end = pg.Commit(commit.flags, commit.commit_lsn, commit.end_lsn, commit.commit_time)
        if spool is None:  # nothing of it was published
            applier.on_commit(end)
            return
        started = time.monotonic()
        decode = self._replay_decoder.decode_streamed
        changes = self._changes
        low, every, high = _PIECE_CHANGES
        count = 0
        try:
            for payload in spool.replay():
                msg = decode(payload)
                apply = changes.get(type(msg))
                if apply is not None:
                    apply(msg)
                count += 1
                if count >= every:
                    written = applier.write_pieces()
                    per_change = max(written // count, 1)
                    every = min(max(_PIECE_BYTES // per_change, low), high)
                    count = 0
                    yield
            applier.on_commit(end)
        except BaseException:
            applier.abandon_pieces()
            raise
        finally:
            spool.delete()
        log.info(
            "applied streamed transaction %d (%d changes, %d MB spooled) in %.1fs",
            commit.xid,
            spool.records,
            spool.size >> 20,
            time.monotonic() - started,
        )
