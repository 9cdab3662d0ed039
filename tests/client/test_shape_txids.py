"""``Shape.wait_for_txid`` against snapshot bounds and change txids, across xid epochs."""

from __future__ import annotations

import pytest

from shapes.client import Shape, ShapeDefinition, ShapeStream
from shapes.xid import XID_SPACE

EPOCH = 3 << 32


def shape_after_snapshot(xmin: int, xmax: int, xip: list[int]) -> Shape:
    stream = ShapeStream("http://127.0.0.1:9/v1/shape", ShapeDefinition.of("items"), live=False)
    shape = Shape(stream)
    end = {"control": "snapshot-end", "xmin": str(xmin), "xmax": str(xmax), "xip_list": xip}
    shape._apply([{"headers": end}, {"headers": {"control": "up-to-date"}}])
    return shape


async def test_txids_of_the_previous_epoch_are_in_the_snapshot() -> None:
    shape = shape_after_snapshot(EPOCH - 5, EPOCH + 5, [EPOCH - 2])
    await shape.wait_for_txid(XID_SPACE - 10, timeout=0)  # 32-bit xid, before the epoch
    await shape.wait_for_txid(3, timeout=0)  # 32-bit xid just after the epoch
    await shape.wait_for_txid(EPOCH + 3, timeout=0)  # the same as a 64-bit xid
    for not_visible in (XID_SPACE - 2, 7, EPOCH + 7):
        with pytest.raises(TimeoutError):
            await shape.wait_for_txid(not_visible, timeout=0.01)
    await shape.stream.aclose()


async def test_a_change_carrying_the_txid_satisfies_the_wait() -> None:
    shape = shape_after_snapshot(EPOCH - 5, EPOCH + 5, [])
    with pytest.raises(TimeoutError):
        await shape.wait_for_txid(EPOCH + 9, timeout=0.01)
    change = {
        "headers": {"operation": "insert", "lsn": "100", "op_position": 0, "txids": [9]},
        "key": '"public"."items"/"1"',
        "value": {"id": "1"},
    }
    shape._apply([change, {"headers": {"control": "up-to-date"}}])
    await shape.wait_for_txid(EPOCH + 9, timeout=0)
    await shape.wait_for_txid(9, timeout=0)
    await shape.stream.aclose()
