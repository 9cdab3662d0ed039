"""What the Node followers of the e2e harness share: one ``node <script> '<json>'`` process.

``NodeFollower`` runs a Node program of this folder with a JSON config and reads the JSON
lines it prints: ``state`` lines (``{"type": "state", "rows": {key: row}, ...}``) are kept
as the latest state plus a bounded history, every other line is an event (``error`` ones are
also errors). A test waits until a state satisfies a predicate; on timeout, or if the
process ends first, ``AssertionError`` carries diagnostics (row diff, errors, stderr tail).

Subclasses build the config, add their own events and diagnostics, and set ``script``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

E2E_DIR = Path(__file__).resolve().parent

Rows = dict[str, dict[str, Any]]
Predicate = Callable[[Rows], bool]

T = TypeVar("T")

_TERMINATE_GRACE_S = 5.0
_STDOUT_LIMIT = 256 * 1024 * 1024  # one state line holds the whole result
_STDERR_TAIL = 60
_HISTORY = 2000


def pinned_dependencies() -> dict[str, str]:
    """The ``dependencies`` of this folder's package.json (exact versions)."""
    dependencies: dict[str, str] = json.loads((E2E_DIR / "package.json").read_text())[
        "dependencies"
    ]
    return dependencies


def installed_version(package: str) -> str | None:
    """The version ``npm ci`` installed of ``package``, None when it is not installed."""
    path = E2E_DIR / "node_modules" / package / "package.json"
    try:
        version: str = json.loads(path.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


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
        lines.append(f"  - missing {key}: {short(expected[key])}")
    for key in extra[:limit]:
        lines.append(f"  + unexpected {key}: {short(actual[key])}")
    for key in changed[:limit]:
        exp, act = expected[key], actual[key]
        cols = sorted(set(exp) | set(act))
        diffs = [
            f"{c}: {short(exp.get(c, '<absent>'))} != {short(act.get(c, '<absent>'))}"
            for c in cols
            if exp.get(c, "<absent>") != act.get(c, "<absent>")
        ]
        lines.append(f"  ~ {key}: " + "; ".join(diffs))
    return "\n".join(lines)


def summarise_change(before: Rows, after: Rows, *, limit: int = 10) -> str:
    """Counts and the first few keys added, removed and changed between two row maps."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"+{len(added)} -{len(removed)} ~{len(changed)}"]
    parts += [f"  + {k}: {short(after[k])}" for k in added[:limit]]
    parts += [f"  - {k}" for k in removed[:limit]]
    parts += [f"  ~ {k}: {short(after[k])}" for k in changed[:limit]]
    return "\n".join(parts)


def short(value: Any, width: int = 300) -> str:
    """``value`` as sorted JSON, cut to ``width`` characters."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def node_config(**options: Any) -> dict[str, Any]:
    """The JSON config of a Node program: ``options`` in order, leaving out those that are None."""
    return {key: value for key, value in options.items() if value is not None}


class NodeFollower:
    """One Node program of this folder, followed through its JSON lines (async context manager).

    ``rows`` is the latest reported state's rows.
    """

    script: ClassVar[Path]
    """The program to run, relative paths resolved against this folder."""
    _error_width: ClassVar[int] = 600
    """How much of each error line the failure report shows."""

    def __init__(self, config: dict[str, Any], *, node: str = "node") -> None:
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
        self._stderr: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._bad_lines: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            self._node,
            str(E2E_DIR / self.script),
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

    def _not_started(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__} is not started (use `async with`)")

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
        if msg.get("type") == "state":
            self._state = msg
            self._rows = msg.get("rows") or {}
            self._seq += 1
            self._history.append((self._seq, msg))
            return
        self._handle_event(msg)

    def _handle_event(self, msg: dict[str, Any]) -> None:
        """A line other than a state: kept as an event, and as an error when it is one."""
        self._events.append(msg)
        if msg.get("type") == "error":
            self._errors.append(msg)

    # ------------------------------------------------------------------ accessors

    @property
    def rows(self) -> Rows:
        """The latest reported rows (empty before the first state)."""
        return self._rows

    @property
    def states(self) -> list[dict[str, Any]]:
        """Every state message reported so far, oldest first (the last 2000)."""
        return [state for _seq, state in self._history]

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every error line: ``transient`` ones were retried by the client itself."""
        return self._errors

    @property
    def fatal_errors(self) -> list[dict[str, Any]]:
        return [e for e in self._errors if e.get("fatal")]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every line that is not a state (nor kept apart by the subclass), in order."""
        return self._events

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    # ------------------------------------------------------------------ waiting

    async def _wait_until(
        self,
        found: Callable[[], T | None],
        timeout: float,  # noqa: ASYNC109 (a deadline across several waits)
        reason: str,
        expected: Rows | None = None,
    ) -> T:
        """Return what ``found()`` finds, re-checked after every line of output.

        Raises ``AssertionError`` (``reason`` on timeout) if the process ends first or
        ``timeout`` seconds pass.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                result = found()
                if result is not None:
                    return result
                if self._eof:
                    await self._reap()
                    raise AssertionError(self._failure("the follower process exited", expected))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(self._failure(reason, expected))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

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
            raise self._not_started()
        if self._state is not None and predicate(self._rows):
            return self._rows
        seen = self._seq

        def matching_state() -> Rows | None:
            nonlocal seen
            for seq, state in list(self._history):
                if seq > seen:
                    seen = seq
                    rows: Rows = state.get("rows") or {}
                    if predicate(rows):
                        return rows
            return None

        return await self._wait_until(
            matching_state, timeout, f"timed out after {timeout}s", expected
        )

    async def wait_for_rows(
        self,
        expected: Rows,
        timeout: float = 60.0,  # noqa: ASYNC109 (the API the tests use)
    ) -> Rows:
        """Wait until the rows equal ``expected`` exactly."""
        return await self.wait_for(lambda rows: rows == expected, timeout, expected=expected)

    # ------------------------------------------------------------------ diagnostics

    def _failure(self, reason: str, expected: Rows | None) -> str:
        out = [f"{type(self).__name__}({self.config}): {reason}", *self._failure_summary()]
        if expected is not None:
            out.append("diff against expected:\n" + describe_diff(expected, self._rows))
        else:
            out.append("last rows: " + short(self._rows, 2000))
        out += self._failure_history()
        if self._errors:
            out.append(f"errors ({len(self._errors)}, last 10):")
            out += ["  " + short(e, self._error_width) for e in self._errors[-10:]]
        else:
            out.append("no errors reported")
        out += self._failure_traffic()
        if self._bad_lines:
            out.append("unparseable stdout: " + short(self._bad_lines[-5:], 1000))
        tail = [ln for ln in self._stderr if ln.strip()]
        out.append("stderr tail:" + ("\n  " + "\n  ".join(tail[-30:]) if tail else " (empty)"))
        return "\n".join(out)

    def _failure_summary(self) -> list[str]:
        """The report's lines between the headline and the rows: versions, progress."""
        return [f"process returncode {self.returncode}, {self._seq} states seen"]

    def _failure_history(self) -> list[str]:
        """The report's lines between the rows and the errors."""
        return []

    def _failure_traffic(self) -> list[str]:
        """The report's lines between the errors and the unparseable output."""
        return []
