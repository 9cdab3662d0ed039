"""Mutation scores per file from the last ``mutmut run`` (``make mutation``).

Reads ``mutmut results --all true`` and ``tests/mutation/equivalent.md`` (the mutants judged
equivalent, one per line as ``- `name`: reason``) and prints, per mutated file, how many of the
non-equivalent mutants the fast tests killed. Exits 1 when the total is under the target.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

TARGET = 0.90
EQUIVALENT = Path(__file__).with_name("equivalent.md")
_RESULT = re.compile(r"^\s*(shapes\.\w+)\.\S+__mutmut_\d+: (.+)$")
_LISTED = re.compile(r"^- `(shapes\.\w+\.\S+__mutmut_\d+)`")


def equivalent_mutants() -> set[str]:
    """The names listed in ``equivalent.md``."""
    lines = EQUIVALENT.read_text().splitlines() if EQUIVALENT.exists() else []
    return {m.group(1) for line in lines if (m := _LISTED.match(line))}


def main() -> int:
    output = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    equivalent = equivalent_mutants()
    killed: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    survivors: list[str] = []
    for line in output.splitlines():
        match = _RESULT.match(line)
        if match is None:
            continue
        module, status = match.group(1), match.group(2).strip()
        name = line.split(":")[0].strip()
        if name in equivalent:
            skipped[module] += 1
            continue
        counted[module] += 1
        if status == "killed":
            killed[module] += 1
        else:
            survivors.append(f"{name}: {status}")
    for name in survivors:
        print("survived", name)
    for module in sorted(counted):
        share = killed[module] / counted[module]
        print(
            f"{module:20} {killed[module]:4} of {counted[module]:4} killed ({share:.1%}),"
            f" {skipped[module]} equivalent"
        )
    total_killed, total = sum(killed.values()), sum(counted.values())
    share = total_killed / total if total else 0.0
    print(f"{'total':20} {total_killed:4} of {total:4} killed ({share:.1%})")
    return 0 if share >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
