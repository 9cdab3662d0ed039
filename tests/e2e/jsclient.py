"""Drive the official ``@electric-sql/client`` from Python tests.

``ShapeFollower`` runs ``node follow_shape.mjs`` as a subprocess. The Node program follows
one shape with ``ShapeStream`` + ``Shape`` and prints JSON lines; this module parses them and
lets a test wait until the materialised rows satisfy a predicate.

Row values are what the JS client produced after parsing with ``electric-schema``, serialised
to JSON: ``int8`` (BigInt) and non-finite numbers arrive as strings, ``int4``/``float8`` as
numbers, ``bool`` as booleans, ``json``/``jsonb`` as parsed JSON, everything else as strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

E2E_DIR = Path(__file__).resolve().parent
SCRIPT = E2E_DIR / "follow_shape.mjs"
CLIENT_PACKAGE = "@electric-sql/client"

Rows = dict[str, dict[str, Any]]
Predicate = Callable[[Rows], bool]

_TERMINATE_GRACE_S = 5.0
_STDOUT_LIMIT = 256 * 1024 * 1024  # one state line holds the whole shape
_STDERR_TAIL = 60
_HISTORY = 2000


def pinned_client_version() -> str:
    """The exact ``@electric-sql/client`` version pinned in package.json."""
    package = json.loads((E2E_DIR / "package.json").read_text())
    version: str = package["dependencies"][CLIENT_PACKAGE]
    return version


def installed_client_version() -> str | None:
    path = E2E_DIR / "node_modules" / "@electric-sql" / "client" / "package.json"
    try:
        version: str = json.loads(path.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


def node_modules_ready() -> bool:
    """True if ``node`` is on PATH and ``npm ci`` has installed the pinned client."""
    if shutil.which("node") is None:
        return False
    installed = installed_client_version()
    return installed is not None and installed == pinned_client_version()


def describe_diff(expected: Rows, actual: Rows, *, limit: int = 20) -> str:
    """A short human-readable difference between two row maps."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    lines = [
        f"expected {len(expected)} rows, got {len(actual)}: "
        f"{len(missing)} missing, {len(extra)} unexpected, {len(changed)} different"
    ]
    for key in missing[:limit]:
        lines.append(f"  - missing {key}: {_short(expected[key])}")
    for key in extra[:limit]:
        lines.append(f"  + unexpected {key}: {_short(actual[key])}")
    for key in changed[:limit]:
        exp, act = expected[key], actual[key]
        cols = sorted(set(exp) | set(act))
        diffs = [
            f"{c}: {_short(exp.get(c, '<absent>'))} != {_short(act.get(c, '<absent>'))}"
            for c in cols
            if exp.get(c, "<absent>") != act.get(c, "<absent>")
        ]
        lines.append(f"  ~ {key}: " + "; ".join(diffs))
    return "\n".join(lines)


def _summarise_change(before: Rows, after: Rows, *, limit: int = 10) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"+{len(added)} -{len(removed)} ~{len(changed)}"]
    parts += [f"  + {k}: {_short(after[k])}" for k in added[:limit]]
    parts += [f"  - {k}" for k in removed[:limit]]
    parts += [f"  ~ {k}: {_short(after[k])}" for k in changed[:limit]]
    return "\n".join(parts)


def _short(value: Any, width: int = 300) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


class ShapeFollower:
    """Follow one shape with the official JS client (async context manager).

    ``rows`` is the latest up-to-date state the client reported, keyed by message key.
    """

    def __init__(
        self,
        url: str,
        table: str,
        *,
        where: str | None = None,
        params: dict[str, str] | None = None,
        columns: list[str] | None = None,
        live_sse: bool = False,
        replica: str | None = None,
        report_types: bool = False,
        subscribe: bool = True,
        node: str = "node",
    ) -> None:
        config: dict[str, Any] = {"url": url, "table": table, "liveSse": live_sse}
        if where is not None:
            config["where"] = where
        if params is not None:
            config["params"] = params
        if columns is not None:
            config["columns"] = columns
        if replica is not None:
            config["replica"] = replica
        if report_types:
            config["reportTypes"] = True
        config["subscribe"] = subscribe
        self.config = config
        self._node = node
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()
        self._eof = False
        self._rows: Rows = {}
        self._state: dict[str, Any] | None = None
        self._history: deque[tuple[int, dict[str, Any]]] = deque(maxlen=_HISTORY)
        self._seq = 0
        self._errors: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._must_refetch = 0
        self._stderr: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._bad_lines: list[str] = []
        self.client_version: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ShapeFollower:
        self._proc = await asyncio.create_subprocess_exec(
            self._node,
            str(SCRIPT),
            json.dumps(self.config),
            cwd=str(E2E_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_STDOUT_LIMIT,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read_stdout(self._proc.stdout)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the Node process (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), _TERMINATE_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await proc.stdin.wait_closed()
        try:
            await asyncio.wait_for(asyncio.gather(*self._tasks), _TERMINATE_GRACE_S)
        except TimeoutError:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reap(self) -> None:
        """After stdout EOF: give the process a moment to exit, so returncode is known."""
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), _TERMINATE_GRACE_S)

    # ------------------------------------------------------------------ readers

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                self._handle_line(line.decode("utf-8", errors="replace"))
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self._eof = True
            async with self._changed:
                self._changed.notify_all()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._stderr.append(line.decode("utf-8", errors="replace").rstrip("\n"))

    def _handle_line(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            self._bad_lines.append(line[:500])
            return
        if not isinstance(msg, dict):
            self._bad_lines.append(line[:500])
            return
        kind = msg.get("type")
        if kind == "state":
            rows = msg.get("rows") or {}
            self._state = msg
            self._rows = rows
            self._seq += 1
            self._history.append((self._seq, msg))
            return
        self._events.append(msg)
        if kind == "error":
            self._errors.append(msg)
        elif kind == "must-refetch":
            self._must_refetch += 1
        elif kind == "hello":
            self.client_version = msg.get("clientVersion")

    # ------------------------------------------------------------------ accessors

    @property
    def rows(self) -> Rows:
        """The latest state reported by the client (empty before the first one)."""
        return self._rows

    @property
    def state(self) -> dict[str, Any] | None:
        """The whole latest ``state`` message (rows, offset, handle, types...)."""
        return self._state

    @property
    def states(self) -> list[dict[str, Any]]:
        """Every state message reported so far, oldest first (the last 2000)."""
        return [state for _seq, state in self._history]

    @property
    def types(self) -> dict[str, dict[str, str]]:
        """JS ``typeof`` of each value, per key and column (needs ``report_types=True``)."""
        if self._state is None:
            return {}
        types: dict[str, dict[str, str]] = self._state.get("types") or {}
        return types

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every error line: ``transient`` ones were retried by the client itself."""
        return self._errors

    @property
    def fatal_errors(self) -> list[dict[str, Any]]:
        return [e for e in self._errors if e.get("fatal")]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every non-state line (hello, error, must-refetch, exit), in order."""
        return self._events

    @property
    def must_refetch_count(self) -> int:
        return self._must_refetch

    @property
    def states_seen(self) -> int:
        return self._seq

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        predicate: Predicate,
        timeout: float = 60.0,  # noqa: ASYNC109 (the API the tests use)
        *,
        expected: Rows | None = None,
    ) -> Rows:
        """Wait until a reported state (the current one or a later one) satisfies ``predicate``.

        Every state reported after the call is checked, not only the newest. On timeout, or
        if the Node process ends first, raises ``AssertionError`` with diagnostics;
        ``expected`` only improves that message with a row diff.
        """
        if self._proc is None:
            raise RuntimeError("ShapeFollower is not started (use `async with`)")
        if self._state is not None and predicate(self._rows):
            return self._rows
        seen = self._seq
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                for seq, state in list(self._history):
                    if seq > seen:
                        seen = seq
                        rows: Rows = state.get("rows") or {}
                        if predicate(rows):
                            return rows
                if self._eof:
                    await self._reap()
                    raise AssertionError(self._failure("the follower process exited", expected))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(self._failure(f"timed out after {timeout}s", expected))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for_rows(
        self,
        expected: Rows,
        timeout: float = 60.0,  # noqa: ASYNC109 (the API the tests use)
    ) -> Rows:
        """Wait until the rows equal ``expected`` exactly."""
        return await self.wait_for(lambda rows: rows == expected, timeout, expected=expected)

    async def wait_for_error(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda _e: True,
        timeout: float = 60.0,  # noqa: ASYNC109 (the API the tests use)
    ) -> dict[str, Any]:
        """Wait until an error line satisfying ``predicate`` has been reported."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                for err in self._errors:
                    if predicate(err):
                        return err
                if self._eof:
                    await self._reap()
                    raise AssertionError(self._failure("the follower process exited", None))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(self._failure(f"no matching error after {timeout}s", None))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _failure(self, reason: str, expected: Rows | None) -> str:
        out = [
            f"ShapeFollower({self.config}): {reason}",
            f"client {self.client_version}, process returncode {self.returncode}, "
            f"{self._seq} states seen, {self._must_refetch} must-refetch",
        ]
        if self._state is not None:
            out.append(
                f"last state: offset={self._state.get('offset')} "
                f"handle={self._state.get('handle')} rows={len(self._rows)}"
            )
        else:
            out.append("no state was ever reported")
        if expected is not None:
            out.append("diff against expected:\n" + describe_diff(expected, self._rows))
        else:
            out.append("last rows: " + _short(self._rows, 2000))
        if len(self._history) >= 2:
            prev, last = self._history[-2][1]["rows"], self._history[-1][1]["rows"]
            out.append("last change: " + _summarise_change(prev, last))
        if self._errors:
            out.append(f"errors ({len(self._errors)}, last 10):")
            out += ["  " + _short(e, 600) for e in self._errors[-10:]]
        else:
            out.append("no errors reported")
        if self._bad_lines:
            out.append("unparseable stdout: " + _short(self._bad_lines[-5:], 1000))
        tail = [ln for ln in self._stderr if ln.strip()]
        out.append("stderr tail:" + ("\n  " + "\n  ".join(tail[-30:]) if tail else " (empty)"))
        return "\n".join(out)


def version_is_exact_1_5(version: str) -> bool:
    return re.fullmatch(r"1\.5\.\d+", version) is not None
