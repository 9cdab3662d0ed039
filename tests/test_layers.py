"""Layers import one way: ``shapes`` imports nothing of ours, ``syncd`` only ``shapes``, ``web``
and ``agents`` only ``shapes`` and ``syncd``; nothing imports ``web`` or ``agents``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "shapes": {"shapes"},
    "syncd": {"shapes", "syncd"},
    "web": {"shapes", "syncd", "web"},
    "agents": {"shapes", "syncd", "agents"},
}
OURS = {"shapes", "syncd", "web", "agents", "tests", "bench"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package: str) -> None:
    crossings = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - ALLOWED[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {name: bad for name, bad in crossings.items() if bad} == {}


@pytest.mark.parametrize("top", ["shapes", "syncd", "bench", "examples"])
def test_nothing_imports_web(top: str) -> None:
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / top).rglob("*.py"))
        if "web" in imported_packages(path)
    ]
    assert importers == []


@pytest.mark.parametrize("top", ["shapes", "syncd", "web", "bench", "examples"])
def test_nothing_imports_agents(top: str) -> None:
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / top).rglob("*.py"))
        if "agents" in imported_packages(path)
    ]
    assert importers == []


IO_EXEMPT = ROOT / "shapes" / "client"
"""The async shape client: the one part of ``shapes`` allowed to do I/O (HTTP, asyncio)."""


def test_pure_core_does_no_io() -> None:
    for path in sorted((ROOT / "shapes").rglob("*.py")):
        if path.is_relative_to(IO_EXEMPT):
            continue
        tree = ast.parse(path.read_text())
        modules = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not modules & {"asyncio", "socket", "psycopg", "httpx", "starlette"}, path
