"""Follow the ``items`` shape of a running syncd and print every change as it arrives.

Usage: python examples/follow_items.py [http://127.0.0.1:3000] [--once]

The table it follows: ``items``, any table with a primary key, e.g.
CREATE TABLE items (id int PRIMARY KEY, title text)

Ctrl-C stops it quietly (exit status 130, as a shell expects of an interrupted program).
"""

from __future__ import annotations

import asyncio
import sys

try:
    from shapes.client import Shape, ShapeDefinition, ShapeStream
except KeyboardInterrupt:  # Ctrl-C while the client library loads: as quiet as later on
    sys.exit(130)

INTERRUPTED = 130


async def follow(base_url: str, once: bool) -> None:
    stream = ShapeStream(base_url + "/v1/shape", ShapeDefinition.of("items"), live=not once)
    async with Shape(stream) as shape:
        await shape.wait_until_up_to_date(timeout=30)
        print(f"{len(shape.rows)} rows", flush=True)  # noqa: T201
        if once:
            return
        async for batch in shape.changes():
            for message in batch:
                print(message, flush=True)  # noqa: T201


def main(argv: list[str]) -> int:
    """Run :func:`follow` until it ends or Ctrl-C; the process exit status."""
    arguments = [a for a in argv if not a.startswith("--")]
    base_url = arguments[0] if arguments else "http://127.0.0.1:3000"
    try:
        asyncio.run(follow(base_url, "--once" in argv))
    except KeyboardInterrupt:
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
