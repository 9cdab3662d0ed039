"""The differential where-clause fuzzer, bounded for ``make test`` (``make fuzz``: 20,000).

``WHERE_FUZZ_CLAUSES`` and ``WHERE_FUZZ_SEED`` set the run's size and seed.
"""

from __future__ import annotations

import os

from tests.where_fuzz.fuzzer import run


def test_evaluator_and_snapshot_decide_as_postgres(pg_dsn: str) -> None:
    clauses = int(os.environ.get("WHERE_FUZZ_CLAUSES", "500"))
    seed = int(os.environ.get("WHERE_FUZZ_SEED", "20261204"))
    report = run(pg_dsn, clauses, seed)
    assert report.mismatches == 0, report.summary()
    assert report.counts["ok_agree"] > clauses // 2  # the generator mostly makes valid clauses
