"""The storage directory's record of the replication slot history its shapes follow.

Layer: ``syncd``. ``<storage_dir>/slot.json`` names the slot, the cluster (system identifier)
and the highest flush position syncd has confirmed on it. The engine writes the record (durably)
*before* the stream may confirm a position, so a slot that continues the history the shapes were
built from is never ahead of the record; one that is ahead, or missing, or on another cluster,
broke the history (``syncd.replication.history_gap``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from syncd.log_files import _atomic_write

log = logging.getLogger("syncd.slot_record")

FILE_NAME = "slot.json"


@dataclass(frozen=True)
class SlotRecord:
    """Which slot history the stored shapes follow, and how far it has been confirmed."""

    slot: str
    confirmed_lsn: int
    system_id: str | None = None

    def advanced(self, lsn: int) -> SlotRecord:
        """This record with ``confirmed_lsn`` raised to ``lsn``."""
        return replace(self, confirmed_lsn=max(self.confirmed_lsn, lsn))

    @classmethod
    def load(cls, storage_dir: Path) -> SlotRecord | None:
        """The record in ``storage_dir``, or ``None`` when there is none (or it is unreadable:
        then nothing is known of the history, which the caller must treat as such)."""
        path = storage_dir / FILE_NAME
        try:
            data: Any = json.loads(path.read_bytes())
            system_id = data.get("system_id")
            return cls(
                slot=str(data["slot"]),
                confirmed_lsn=int(data["confirmed_lsn"]),
                system_id=None if system_id is None else str(system_id),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring unreadable slot record %s: %s", path, exc)
            return None

    def save(self, storage_dir: Path) -> None:
        """Write the record atomically and durably (temporary file, fsync, rename, and the
        directory's fsync: until then the rename itself may be lost, and a crash would bring
        back a record behind a position the stream has confirmed)."""
        body = json.dumps(
            {"slot": self.slot, "system_id": self.system_id, "confirmed_lsn": self.confirmed_lsn}
        ).encode()
        _atomic_write(storage_dir, FILE_NAME, body)
