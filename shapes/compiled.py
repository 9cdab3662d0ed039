"""Which modules may run compiled, and the guard that keeps a compiled module true to its source.

The build (``setup.py``) compiles the modules of :data:`COMPILED_MODULES` with mypyc when it can:
the replication stream's per-row path (decoding, deciding which shapes a row is in, converting
and encoding it), where the interpreter's own overhead is most of the cost. Each compiled module
is a C extension beside its source, and Python's import system prefers an extension to a source
of the same name. The sources stay the reference: every module here is
ordinary typed Python, and the package runs the same without any extension.

Theory of operation. An extension is used only when the build that made it recorded the sources
it was made from, and those sources are unchanged. The build writes :data:`SOURCES_FILE` beside
this module: the SHA-256 of each compiled module's source. At the package's first import,
:func:`install_guard` compares them with the sources on disk. If any differs (a source edited
after an in-place build), if no record exists (no extension was built, or one was made by other
means), or if :data:`PURE_PYTHON_ENV` is set, an import finder placed ahead of Python's own loads
every listed module from its source. The decision covers all of them at once: compiled modules
call one another directly in C, so a compiled caller would keep running a stale callee's old code
even if only the callee were loaded from source.

Layer: ``shapes``. Standard library only, so that the build can read :data:`COMPILED_MODULES`
without importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

COMPILED_MODULES: Final = (
    "shapes.messages",
    "shapes.convert",
    "shapes.where_eval",
    "shapes.where_like",
    "shapes.router",
    "syncd.pgoutput.decoder",
    "syncd.change_applier",
    "syncd.message_pump",
)
"""The modules the build compiles, by import name."""

SOURCES_FILE: Final = "compiled-sources.json"
"""Written by the build beside this module: ``{"<path from the root>": "<sha256 of source>"}``."""

PURE_PYTHON_ENV: Final = "SYNCD_PURE_PYTHON"
"""Set to a non-empty value other than ``0``, at build time or at run time: no extensions."""

_ROOT: Final = Path(__file__).resolve().parent.parent
"""The directory holding the ``shapes`` and ``syncd`` packages."""

logger = logging.getLogger(__name__)


def source_path(module: str) -> str:
    """``module``'s source file, relative to the directory holding its top-level package."""
    return module.replace(".", "/") + ".py"


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pure_python_requested(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def stale_sources(root: Path, recorded: dict[str, str]) -> list[str]:
    """The recorded sources under ``root`` whose content is not what the build compiled."""
    stale = []
    for relative, digest in sorted(recorded.items()):
        path = root / relative
        try:
            if source_digest(path) != digest:
                stale.append(relative)
        except OSError:
            stale.append(relative)
    return stale


def module_name(relative: str) -> str:
    """The import name of a source path of :func:`source_path`'s form."""
    return relative.removesuffix(".py").replace("/", ".")


def record_path(root: Path) -> Path:
    """Where the build writes its record, under the directory holding the packages."""
    return root / "shapes" / SOURCES_FILE


def recorded_sources(root: Path = _ROOT) -> dict[str, str] | None:
    """The build's record under ``root`` (``None`` when missing or unreadable)."""
    try:
        recorded = json.loads(record_path(root).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()
    ):
        return None
    return recorded


def extensions_usable(root: Path = _ROOT) -> bool:
    """Whether the compiled modules under ``root`` may be imported (see the module's text)."""
    return _usable(root, recorded_sources(root))


def _usable(root: Path, recorded: dict[str, str] | None) -> bool:
    if pure_python_requested():
        return False
    if recorded is None or set(recorded) != {source_path(m) for m in COMPILED_MODULES}:
        return False
    stale = stale_sources(root, recorded)
    if stale:
        logger.warning(
            "compiled modules differ from their sources (%s): running the sources; "
            "reinstall the package (make install) to compile them again",
            ", ".join(stale),
        )
        return False
    return True


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules' sources, ahead of any extension of the same name."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or path is None:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for directory in path:
            source = Path(directory) / leaf
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


_decided = False


def install_guard() -> None:
    """Decide once per process whether the extensions run; if not, make imports take sources."""
    global _decided
    if _decided:
        return
    _decided = True
    recorded = recorded_sources()
    if not _usable(_ROOT, recorded):
        # A module compiled by an earlier build may have left the list: it gives way too.
        earlier = [module_name(relative) for relative in recorded or ()]
        sys.meta_path.insert(0, SourceFinder([*COMPILED_MODULES, *earlier]))


def compiler_at_hand() -> bool:
    """A C compiler and the Python headers are here, as the build would use them: a build
    here compiles unless something went wrong (which its output then says)."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.is_file()


def fallback_unasked(root: Path = _ROOT, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the package would run its sources although nobody asked for that and this machine
    can compile (a build that failed, or sources edited since it ran), or ``None``: what a
    benchmark must not measure unaware."""
    if pure_python_requested(environ) or not compiler_at_hand():
        return None
    recorded = recorded_sources(root)
    if recorded is None:
        return "no compiled modules were built"
    if set(recorded) != {source_path(m) for m in COMPILED_MODULES}:
        return "the build did not compile every module of this version"
    stale = stale_sources(root, recorded)
    if stale:
        return "sources changed since the build: " + ", ".join(stale)
    return None


def running_compiled() -> list[str]:
    """The listed modules imported so far from an extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in COMPILED_MODULES
        if (module := sys.modules.get(name)) is not None
        and str(getattr(module, "__file__", "")).endswith(suffixes)
    ]
