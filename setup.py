"""The build's one addition to ``pyproject.toml``: the optional compiled modules.

mypyc compiles the modules listed in ``shapes/compiled.py`` into C extensions, installed beside
their sources, and records the sources it compiled (``shapes/compiled-sources.json``) for the
import guard there. Nothing here is required:

- with ``SYNCD_PURE_PYTHON`` set, without mypyc importable (a build without isolation in an
  environment without mypy), or when mypy's analysis fails, no extension is built;
- an extension the C compiler fails on is left out with a warning (setuptools' ``optional``);
- without the record, or with a source changed since, the package runs its sources.

mypyc analyses the compiled modules with mypy, which needs the types of the packages they import:
the build requirements (``pyproject.toml``) name those, besides mypy. An editable install
(``make install``) builds the extensions in place, in the source tree.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _compiled_spec() -> Any:
    """``shapes/compiled.py``, loaded on its own: the package's dependencies are not needed."""
    path = ROOT / "shapes" / "compiled.py"
    spec = importlib.util.spec_from_file_location("_syncd_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compiled = _compiled_spec()


def extensions() -> list[Extension]:
    built = _compiled_extensions()
    if not built:
        # Extensions an earlier build left in the source tree must not run with this one's
        # sources: without the record, the guard loads the sources (build_ext, which would
        # otherwise rewrite it, does not run when there is nothing to build).
        compiled.record_path(ROOT).unlink(missing_ok=True)
    return built


def _compiled_extensions() -> list[Extension]:
    if compiled.pure_python_requested():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.stderr.write("mypyc is not available: installing syncd as pure Python\n")
        return []
    sources = [compiled.source_path(name) for name in compiled.COMPILED_MODULES]
    try:
        built: list[Extension] = mypycify(sources, opt_level="3", group_name="syncd_compiled")
    except (Exception, SystemExit) as exc:  # mypy's analysis failed: it exits on type errors
        sys.stderr.write(f"mypyc could not compile syncd ({exc!r}): installing it as pure Python\n")
        return []
    for extension in built:
        extension.optional = True  # a compiler failure leaves the module pure, not the build broken
    return built


class BuildExtensions(build_ext):
    """Builds the extensions, then records the sources of those that were built."""

    def run(self) -> None:
        super().run()
        target = ROOT if self.inplace else Path(self.build_lib)
        recorded = {}
        for name in compiled.COMPILED_MODULES:
            if Path(self.get_ext_fullpath(name)).exists():
                relative = compiled.source_path(name)
                recorded[relative] = compiled.source_digest(ROOT / relative)
        record = compiled.record_path(target)
        if len(recorded) == len(compiled.COMPILED_MODULES):
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        else:  # some failed to compile: their callers' direct calls would miss them; run sources
            record.unlink(missing_ok=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtensions})
