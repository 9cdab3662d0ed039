"""Errors of the sans-IO pgoutput layer.

Layer: ``syncd.pgoutput`` (pure).
"""

from __future__ import annotations


class PgoutputError(Exception):
    """Malformed replication bytes: truncated message, unknown tag, bad tuple kind, bad UTF-8.

    The decoders raise nothing else on bad input (no ``IndexError``/``struct.error`` leaks).
    """
