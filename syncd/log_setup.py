"""The daemon's log output: readable lines, or one JSON object per line for log collectors.

Layer: ``syncd``.

A JSON record holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message`` (the formatted text), ``exception`` when one is attached, and any ``extra=``
fields the call passed, so that Loki, Elasticsearch or CloudWatch can index them without a
parsing rule.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Final

import msgspec

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
_ENCODER: Final = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        data: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in data:
                data[key] = value
        try:
            return _ENCODER.encode(data).decode()
        except (TypeError, msgspec.EncodeError):  # an extra field JSON cannot hold
            return _ENCODER.encode(
                {k: v if _plain(v) else repr(v) for k, v in data.items()}
            ).decode()


def _plain(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every logger's records to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
