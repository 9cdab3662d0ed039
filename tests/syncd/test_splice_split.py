"""How a move-in query's snapshot splits the transactions a subquery shape held meanwhile."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shapes.xid import Snapshot
from syncd.materializer import HeldTransaction
from syncd.subquery_shape import split_held


def held(lsn: int, xid: int, *, real: bool = True) -> HeldTransaction:
    return HeldTransaction(lsn, xid, [], real=real)


def test_a_prefix_split() -> None:
    txns = [held(10, 100), held(20, 101), held(30, 102)]
    pre, post = split_held(txns, Snapshot(102, 102, ()))
    assert pre == [0, 1]
    assert post == [txns[2]]


def test_a_later_commit_the_snapshot_contains_is_not_applied_again() -> None:
    # 101 committed first in the WAL but became visible after 102: S has 102 and lacks 101
    txns = [held(10, 100), held(20, 101), held(30, 102), held(40, 103)]
    pre, post = split_held(txns, Snapshot(101, 103, (101,)))
    assert pre == [0, 2]
    assert post == [txns[1], txns[3]]


def test_a_move_between_transactions_goes_with_what_precedes_it() -> None:
    before, between, lacking, after = (
        held(10, 100),
        held(15, 0, real=False),
        held(20, 101),
        held(25, 0, real=False),
    )
    pre, post = split_held([before, between, lacking, after], Snapshot(101, 101, ()))
    assert pre == [0, 1]
    assert post == [lacking, after]


@given(st.lists(st.booleans(), max_size=12), st.data())
def test_every_transaction_lands_once_in_order(visible: list[bool], data: st.DataObject) -> None:
    xids = list(range(100, 100 + len(visible)))
    in_progress = tuple(x for x, seen in zip(xids, visible, strict=True) if not seen)
    snapshot = Snapshot(min(in_progress, default=100 + len(xids)), 100 + len(xids), in_progress)
    real = data.draw(st.lists(st.booleans(), min_size=len(xids), max_size=len(xids)))
    txns = [held(10 * i, x, real=r) for i, (x, r) in enumerate(zip(xids, real, strict=True))]
    pre, post = split_held(txns, snapshot)
    assert sorted(pre) == pre
    assert post == [t for i, t in enumerate(txns) if i not in pre]  # the rest, in order
    assert len(pre) + len(post) == len(txns)
    for i in pre:
        assert not txns[i].real or snapshot.is_visible(txns[i].xid)
    for txn in post:
        assert txn.real is False or not snapshot.is_visible(txn.xid)
