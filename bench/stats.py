"""Small helpers shared by the benchmarks: medians and the one-line summaries."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (which must not be empty)."""
    return float(statistics.median(values))


def fmt(value: float) -> str:
    """A number for a summary line: integers above 100, else three significant digits."""
    if abs(value) >= 100:
        return str(round(value))
    return f"{value:.3g}"


def summary(name: str, value: float, unit: str, baseline: float, ratio: float) -> str:
    """The ``BENCH ...`` line that ends a benchmark's output."""
    return f"BENCH {name} value={fmt(value)} unit={unit} baseline={fmt(baseline)} ratio={ratio:.3f}"
