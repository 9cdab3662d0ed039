"""Shape retention: shapes nobody asked for in a while are removed, and a storage quota is kept
by evicting the least recently used shapes.

Layer: ``syncd``.

A sweep runs every ``interval`` seconds on the event loop:

1. **Expiry.** A shape that no request has asked for in ``shape_ttl`` seconds, and that no
   held long-poll or open SSE stream is reading, is removed. Its clients' next request gets the
   protocol's 409 with a new handle, and they start over.
2. **Quota.** The shape directories are measured on a thread (bytes allocated on disk). When
   they hold more than ``storage_quota`` bytes, or the filesystem has less than
   ``min_free_bytes`` free, shapes are evicted, least recently used first, until enough is
   freed. Shapes being read right now go last; shapes still taking their snapshot are kept
   (their size is not final, and a client waits for them).

"Used" means asked for by a request since this process started: a restart counts as a use
of every stored shape, so a daemon that was down for longer than the retention time does not
remove every shape at once when it comes back.

Every removal is logged with its cause and counted (``syncd_shapes_removed_total``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from syncd.log_files import REMOVED_SUFFIX
from syncd.shape_state import Retire, ShapeState

log = logging.getLogger("syncd.retention")


@dataclass(frozen=True)
class RetentionSettings:
    """When shapes are removed; ``None`` turns a rule off."""

    shape_ttl: float | None = None
    """Seconds a shape may go unused before it is removed."""
    storage_quota: int | None = None
    """Most bytes the shape logs may take on disk."""
    min_free_bytes: int | None = None
    """Fewest bytes to keep free on the storage filesystem."""
    interval: float = 10.0
    """Seconds between sweeps."""

    @property
    def measures(self) -> bool:
        """Whether a sweep must measure the shapes on disk."""
        return self.storage_quota is not None or self.min_free_bytes is not None

    @property
    def active(self) -> bool:
        """Whether any rule is on."""
        return self.shape_ttl is not None or self.measures


class StorageUsage(NamedTuple):
    """What the shape logs take on disk, as measured at ``measured`` (``time.monotonic``)."""

    shape_bytes: dict[str, int]
    """Bytes allocated by each shape directory, by handle."""
    other_bytes: int
    """Bytes allocated by the rest of the storage directory (spooled transactions, records)."""
    free_bytes: int
    """Bytes available to syncd on the storage filesystem."""
    measured: float

    @property
    def total(self) -> int:
        """Bytes allocated by the whole storage directory."""
        return sum(self.shape_bytes.values()) + self.other_bytes


def _entries(path: str | Path) -> list[os.DirEntry[str]]:
    """The entries of the directory ``path``; none when it is missing."""
    try:
        return list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _entry_bytes(entry: os.DirEntry[str]) -> int:
    """Bytes allocated on disk by a file, or by the files under a directory (not following
    links); 0 for an entry removed meanwhile."""
    try:
        if entry.is_dir(follow_symlinks=False):
            return sum(map(_entry_bytes, _entries(entry.path)))
        return entry.stat(follow_symlinks=False).st_blocks * 512
    except FileNotFoundError:
        return 0


def measure_usage(storage_dir: Path, shapes_dir: Path) -> StorageUsage:
    """Measure the storage directory (blocking: call it on a thread)."""
    shape_bytes = {
        entry.name: _entry_bytes(entry)
        for entry in _entries(shapes_dir)
        if entry.is_dir(follow_symlinks=False) and not entry.name.endswith(REMOVED_SUFFIX)
    }
    other = sum(
        _entry_bytes(entry)
        for entry in _entries(storage_dir)
        if entry.path != os.fspath(shapes_dir)
    )
    stats = os.statvfs(storage_dir)
    return StorageUsage(shape_bytes, other, stats.f_bavail * stats.f_frsize, time.monotonic())


def eviction_order(shapes: Iterable[ShapeState]) -> list[ShapeState]:
    """Shapes that may be evicted, in the order they should be: the ones nobody reads first,
    then the least recently used. Shapes still taking their snapshot are left out."""
    candidates = [shape for shape in shapes if shape.status == "ready"]
    candidates.sort(key=lambda shape: (shape.readers > 0, shape.last_used))
    return candidates


def bytes_to_free(usage: StorageUsage, settings: RetentionSettings) -> int:
    """How many bytes must go for the quota and the free-space floor to hold (0: none)."""
    needed = 0
    if settings.storage_quota is not None:
        needed = max(needed, sum(usage.shape_bytes.values()) - settings.storage_quota)
    if settings.min_free_bytes is not None:
        needed = max(needed, settings.min_free_bytes - usage.free_bytes)
    return needed


class Retention:
    """Runs the sweeps for one engine's shapes (module docstring)."""

    def __init__(
        self,
        settings: RetentionSettings,
        *,
        shapes: Callable[[], Iterable[ShapeState]],
        retire: Retire,
        storage_dir: Path,
        shapes_dir: Path,
    ) -> None:
        self.settings = settings
        self._shapes = shapes
        self._retire = retire
        self._storage_dir = storage_dir
        self._shapes_dir = shapes_dir
        self.usage: StorageUsage | None = None
        """The latest measurement, if any."""
        self._measuring: asyncio.Future[StorageUsage] | None = None

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.interval)
            try:
                await self.sweep()
            except Exception:  # a sweep that failed is tried again at the next interval
                log.exception("shape retention sweep failed")

    async def sweep(self) -> None:
        """Remove the expired shapes, then evict for the quota (module docstring)."""
        self.expire(time.monotonic())
        if self.settings.measures:
            await self.keep_quota(await self.measure())

    def expire(self, now: float) -> int:
        """Remove the shapes unused for longer than the retention time; how many went."""
        ttl = self.settings.shape_ttl
        if ttl is None:
            return 0
        expired = [
            shape
            for shape in self._shapes()
            if shape.status == "ready" and shape.readers == 0 and now - shape.last_used > ttl
        ]
        for shape in expired:
            idle = now - shape.last_used
            log.info("shape %s expired: unused for %.0f s", shape.handle, idle)
            self._retire(shape, f"unused for {idle:.0f} s", cause="expired")
        return len(expired)

    async def measure(self, max_age: float = 0.0) -> StorageUsage:
        """The storage directory's usage, measured on a thread unless the latest measurement
        is at most ``max_age`` seconds old (concurrent callers share one measurement)."""
        usage = self.usage
        if usage is not None and time.monotonic() - usage.measured <= max_age:
            return usage
        measuring = self._measuring
        if measuring is None:
            measuring = asyncio.ensure_future(
                asyncio.to_thread(measure_usage, self._storage_dir, self._shapes_dir)
            )
            self._measuring = measuring
            measuring.add_done_callback(lambda _done: setattr(self, "_measuring", None))
        self.usage = usage = await asyncio.shield(measuring)
        return usage

    async def keep_quota(self, usage: StorageUsage) -> int:
        """Evict shapes until the quota and the free-space floor hold; how many went."""
        needed = bytes_to_free(usage, self.settings)
        if needed <= 0:
            return 0
        evicted = freed = 0
        for shape in eviction_order(self._shapes()):
            if freed >= needed:
                break
            size = usage.shape_bytes.get(shape.handle, 0)
            log.warning(
                "evicting shape %s (%d bytes, unused for %.0f s): the shape logs need %d bytes "
                "less to keep the storage quota",
                shape.handle,
                size,
                time.monotonic() - shape.last_used,
                needed - freed,
            )
            self._retire(shape, "evicted for the storage quota", cause="evicted")
            freed += size
            evicted += 1
        if freed < needed:
            log.error(
                "the storage quota cannot be kept: %d bytes over after evicting every shape",
                needed - freed,
            )
        return evicted
