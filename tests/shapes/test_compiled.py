"""The compiled modules' guard (shapes.compiled): extensions run only while their sources match."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shapes import compiled

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, str]:
    """A package tree with the listed modules' sources, and the record a build would write."""
    recorded = {}
    for name in compiled.COMPILED_MODULES:
        path = root / compiled.source_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""{name}"""\n')
        recorded[compiled.source_path(name)] = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "shapes" / compiled.SOURCES_FILE).write_text(json.dumps(recorded))
    return recorded


@pytest.fixture
def no_pure_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compiled.PURE_PYTHON_ENV, raising=False)


@pytest.mark.usefixtures("no_pure_request")
def test_extensions_run_while_every_source_is_the_one_compiled(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert compiled.extensions_usable(tmp_path)


@pytest.mark.usefixtures("no_pure_request")
def test_one_edited_source_sends_every_module_back_to_its_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorded = _tree(tmp_path)
    edited = sorted(recorded)[1]
    with (tmp_path / edited).open("a") as source:
        source.write("# edited after the build\n")
    assert compiled.stale_sources(tmp_path, recorded) == [edited]
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert not compiled.extensions_usable(tmp_path)
    assert edited in caplog.text and "make install" in caplog.text


@pytest.mark.usefixtures("no_pure_request")
def test_a_missing_source_counts_as_changed(tmp_path: Path) -> None:
    recorded = _tree(tmp_path)
    gone = sorted(recorded)[0]
    (tmp_path / gone).unlink()
    assert compiled.stale_sources(tmp_path, recorded) == [gone]
    assert not compiled.extensions_usable(tmp_path)


@pytest.mark.usefixtures("no_pure_request")
@pytest.mark.parametrize("record", [None, "", "{}", "[1, 2]", "{not json", '{"a.py": 1}'])
def test_without_a_usable_record_the_sources_run(tmp_path: Path, record: str | None) -> None:
    _tree(tmp_path)
    path = tmp_path / "shapes" / compiled.SOURCES_FILE
    if record is None:
        path.unlink()
    else:
        path.write_text(record)
    assert not compiled.extensions_usable(tmp_path)


@pytest.mark.usefixtures("no_pure_request")
def test_a_record_of_other_modules_is_not_this_build(tmp_path: Path) -> None:
    """The list changed since the build (a module added, or one left): the sources run."""
    recorded = _tree(tmp_path)
    first = sorted(recorded)[0]
    for changed in ({k: v for k, v in recorded.items() if k != first}, {**recorded, "x.py": "0"}):
        (tmp_path / "shapes" / compiled.SOURCES_FILE).write_text(json.dumps(changed))
        assert compiled.recorded_sources(tmp_path) == changed
        assert not compiled.extensions_usable(tmp_path)


def test_module_names_and_source_paths_correspond() -> None:
    for name in compiled.COMPILED_MODULES:
        assert compiled.module_name(compiled.source_path(name)) == name


@pytest.mark.parametrize(("value", "pure"), [("1", True), ("yes", True), ("0", False), ("", False)])
def test_the_environment_can_ask_for_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, pure: bool
) -> None:
    _tree(tmp_path)
    monkeypatch.setenv(compiled.PURE_PYTHON_ENV, value)
    assert compiled.pure_python_requested() is pure
    assert compiled.extensions_usable(tmp_path) is not pure


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """An importable package ``guarded_pkg`` with two modules, removed from the import system
    afterwards."""
    root = tmp_path / "guarded_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "listed.py").write_text("ORIGIN = 'source'\n")
    (root / "other.py").write_text("ORIGIN = 'source'\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield root
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "guarded_pkg" or n.startswith("guarded_pkg.")]:
            del sys.modules[name]


def test_the_finder_answers_only_for_listed_modules(package: Path) -> None:
    finder = compiled.SourceFinder(["guarded_pkg.listed"])
    spec = finder.find_spec("guarded_pkg.listed", [str(package)])
    assert spec is not None and spec.origin == str(package / "listed.py")
    assert finder.find_spec("guarded_pkg.other", [str(package)]) is None
    assert finder.find_spec("guarded_pkg.listed", None) is None  # a top-level name: not ours
    assert finder.find_spec("guarded_pkg.listed", [str(package / "elsewhere")]) is None


def test_the_finder_goes_ahead_of_an_extension_of_the_same_name(package: Path) -> None:
    """A file named as an extension module shadows the source for Python's own finder; with the
    guard's finder first, the source is imported."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"listed{suffix}").write_bytes(b"not a shared object")
    importlib.invalidate_caches()
    with pytest.raises(ImportError):
        importlib.import_module("guarded_pkg.listed")
    sys.modules.pop("guarded_pkg.listed", None)
    finder = compiled.SourceFinder(["guarded_pkg.listed"])
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module("guarded_pkg.listed")
    finally:
        sys.meta_path.remove(finder)
    assert module.ORIGIN == "source" and module.__file__ == str(package / "listed.py")


def _running_compiled(environment: dict[str, str]) -> list[str]:
    """The listed modules a fresh interpreter imports from extensions, with ``environment``."""
    program = (
        "import json, importlib, shapes.compiled as c\n"
        "for name in c.COMPILED_MODULES: importlib.import_module(name)\n"
        "print(json.dumps(c.running_compiled()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    env.update(environment)
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, check=True
    )
    result: list[str] = json.loads(done.stdout)
    return result


@pytest.mark.usefixtures("no_pure_request")
def test_this_installation_runs_compiled_exactly_when_its_build_recorded_the_sources() -> None:
    """After ``make install`` with a C compiler, every listed module runs compiled; the
    environment variable makes every one of them run its source."""
    expected = list(compiled.COMPILED_MODULES) if compiled.extensions_usable() else []
    assert _running_compiled({}) == expected
    assert _running_compiled({compiled.PURE_PYTHON_ENV: "1"}) == []


def test_the_makefile_rebuilds_when_a_compiled_source_changes() -> None:
    """``make`` rebuilds the extensions in place when one of these sources is newer; its list
    must be the modules the build compiles."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in makefile.splitlines() if x.startswith("COMPILED_SOURCES :="))
    listed = line.partition(":=")[2].split()
    assert listed == [compiled.source_path(name) for name in compiled.COMPILED_MODULES]


@pytest.mark.skipif(not compiled.compiler_at_hand(), reason="no C compiler or Python headers here")
@pytest.mark.usefixtures("no_pure_request")
def test_an_install_where_a_compiler_is_at_hand_runs_compiled() -> None:
    """``make install`` on a machine that can compile must not fall back to the sources unseen
    (the build says why on its output when it does)."""
    assert compiled.extensions_usable()
    assert _running_compiled({}) == list(compiled.COMPILED_MODULES)


@pytest.mark.skipif(not compiled.compiler_at_hand(), reason="no C compiler or Python headers here")
def test_a_fallback_nobody_asked_for_is_named(tmp_path: Path) -> None:
    """What ``python -m bench`` refuses to measure unaware: a machine that can compile
    running the sources without a build, or with sources edited since."""
    assert compiled.fallback_unasked(tmp_path, {}) == "no compiled modules were built"
    assert compiled.fallback_unasked(tmp_path, {compiled.PURE_PYTHON_ENV: "1"}) is None
    record = {compiled.source_path(m): "0" * 64 for m in compiled.COMPILED_MODULES}
    for relative in record:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("# edited\n")
    compiled.record_path(tmp_path).write_text(json.dumps(record))
    reason = compiled.fallback_unasked(tmp_path, {})
    assert reason is not None and reason.startswith("sources changed since the build")
    del record[compiled.source_path(compiled.COMPILED_MODULES[0])]
    compiled.record_path(tmp_path).write_text(json.dumps(record))
    assert compiled.fallback_unasked(tmp_path, {}) == (
        "the build did not compile every module of this version"
    )


@pytest.mark.skipif(not compiled.compiler_at_hand(), reason="no C compiler or Python headers here")
@pytest.mark.usefixtures("no_pure_request")
def test_the_benchmarks_refuse_a_fallback_nobody_asked_for() -> None:
    assert compiled.fallback_unasked() is None  # this install is compiled: benches may run
    root = Path(compiled.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_PYTHON_ENV}
    answer = subprocess.run(
        [sys.executable, "-c", _BENCH_WITHOUT_BUILD],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=60,
    )
    assert answer.returncode == 2, answer.stderr
    assert "would run its pure-Python sources (no compiled modules were built)" in answer.stderr
    assert "--allow-pure" in answer.stderr


_BENCH_WITHOUT_BUILD = """
from shapes import compiled
compiled.fallback_unasked = lambda: "no compiled modules were built"  # as without a build
from bench.__main__ import main
main(["--benches", "shape-creation"])
"""
"""``python -m bench`` as it starts where the build fell back (nothing is measured: the
arguments are refused first)."""
