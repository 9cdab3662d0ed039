"""Tests of ``syncd.spool``: the on-disk spool of a streamed transaction."""

from __future__ import annotations

from pathlib import Path

from syncd.spool import TransactionSpool


def test_spool_replays_in_order_and_deletes(tmp_path: Path) -> None:
    spool = TransactionSpool(tmp_path, 700)
    payloads = [b"I" + bytes([k]) * k for k in range(1, 50)]
    for payload in payloads:
        spool.append(700, memoryview(payload))
    assert spool.records == len(payloads)
    assert list(spool.replay()) == payloads
    assert spool.path == tmp_path / "700.bin"
    spool.delete()
    assert not spool.path.exists()
    spool.delete()  # twice is fine


def test_subtransaction_abort_cuts_it_and_what_follows(tmp_path: Path) -> None:
    spool = TransactionSpool(tmp_path, 1)
    spool.append(1, b"top-1")
    spool.append(0, b"R-t", relation=True)
    spool.append(1, b"top-2")
    spool.append(5, b"sub5-1")  # SAVEPOINT a
    spool.append(0, b"R-u", relation=True)  # first change of table u, inside a
    spool.append(6, b"sub6-1")  # SAVEPOINT b inside a
    spool.append(5, b"sub5-2")
    assert not spool.abort_subtransaction(9)  # nothing of it was spooled
    assert spool.abort_subtransaction(5)  # ROLLBACK TO a (b goes with it)
    # The relation message of u is kept (pgoutput does not send it again in this transaction).
    assert list(spool.replay()) == [b"top-1", b"R-t", b"top-2", b"R-u"]
    assert spool.records == 4
    spool.append(7, b"sub7-1")
    spool.append(1, b"top-3")
    assert not spool.abort_subtransaction(6)  # gone with 5 already
    assert spool.abort_subtransaction(7)
    assert list(spool.replay()) == [b"top-1", b"R-t", b"top-2", b"R-u"]
    spool.append(1, b"top-4")
    assert list(spool.replay()) == [b"top-1", b"R-t", b"top-2", b"R-u", b"top-4"]
    assert spool.size == sum(4 + len(p) for p in (b"top-1", b"R-t", b"top-2", b"R-u", b"top-4"))
    spool.delete()
