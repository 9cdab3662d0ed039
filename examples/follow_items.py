"""Follow the ``items`` shape of a running syncd and print every change as it arrives.

Usage: python examples/follow_items.py [http://127.0.0.1:3000] [--once]
"""

from __future__ import annotations

import asyncio
import sys

from shapes.client import Shape, ShapeDefinition, ShapeStream


async def follow(base_url: str, once: bool) -> None:
    stream = ShapeStream(base_url + "/v1/shape", ShapeDefinition.of("items"), live=not once)
    async with Shape(stream) as shape:
        await shape.wait_until_up_to_date(timeout=30)
        print(f"{len(shape.rows)} rows")  # noqa: T201
        if once:
            return
        async for batch in shape.changes():
            for message in batch:
                print(message)  # noqa: T201


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(
        follow(arguments[0] if arguments else "http://127.0.0.1:3000", "--once" in sys.argv)
    )
