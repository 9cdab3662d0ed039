"""Drive TanStack DB's electric collection (``@tanstack/electric-db-collection``) from tests.

``CollectionFollower`` runs ``node tanstack_collection.mjs`` as a subprocess. The Node program
syncs one table into a collection (``eager``, ``on-demand`` or ``progressive`` sync mode),
runs a live query over it and prints the live query's rows as JSON lines; this module parses
them, lets a test wait until the rows satisfy a predicate and sends ``awaitTxId`` commands.

Rows are keyed by ``String(row.id)`` (the collection's ``getKey``) and hold the values the
electric client parsed, serialised to JSON like ``jsclient.ShapeFollower`` does: ``int8``
(BigInt) as strings, ``int4``/``float8`` as numbers, ``bool`` as booleans.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.e2e.jsclient import describe_diff, node_modules_ready

E2E_DIR = Path(__file__).resolve().parent
SCRIPT = E2E_DIR / "tanstack_collection.mjs"
TANSTACK_PACKAGES = ("@tanstack/db", "@tanstack/electric-db-collection")

Rows = dict[str, dict[str, Any]]
Predicate = Callable[[Rows], bool]
SyncMode = Literal["eager", "on-demand", "progressive"]
Filter = tuple[Literal["lt", "lte", "gt", "gte", "eq"], str, Any]

_TERMINATE_GRACE_S = 5.0
_TXID_REPLY_GRACE_S = 5.0
_STDOUT_LIMIT = 256 * 1024 * 1024  # one state line holds the whole result
_STDERR_TAIL = 60
_HISTORY = 2000


def _installed_version(package: str) -> str | None:
    path = E2E_DIR / "node_modules" / package / "package.json"
    try:
        version: str = json.loads(path.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


def pinned_versions() -> dict[str, str]:
    """The exact TanStack package versions pinned in package.json."""
    dependencies: dict[str, str] = json.loads((E2E_DIR / "package.json").read_text())[
        "dependencies"
    ]
    return {name: dependencies[name] for name in TANSTACK_PACKAGES}


def tanstack_modules_ready() -> bool:
    """True if ``npm ci`` has installed the pinned client and TanStack packages."""
    if shutil.which("node") is None or not node_modules_ready():
        return False
    return all(_installed_version(name) == version for name, version in pinned_versions().items())


def _short(value: Any, width: int = 300) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


class CollectionFollower:
    """A TanStack DB electric collection plus a live query over it (async context manager).

    ``rows`` is the live query's latest reported result (only reported once it is ready).
    """

    def __init__(
        self,
        url: str,
        table: str,
        *,
        sync_mode: SyncMode = "eager",
        where: str | None = None,
        params: dict[str, str] | None = None,
        filters: Sequence[Filter] = (),
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        subset_method: Literal["GET", "POST"] | None = None,
        log_requests: bool = False,
        collection_id: str | None = None,
        node: str = "node",
    ) -> None:
        config: dict[str, Any] = {"url": url, "table": table, "syncMode": sync_mode}
        if where is not None:
            config["where"] = where
        if params is not None:
            config["params"] = params
        if filters:
            config["filter"] = [list(f) for f in filters]
        if order_by is not None:
            config["orderBy"] = order_by
            config["orderDir"] = "desc" if descending else "asc"
        if limit is not None:
            config["limit"] = limit
        if subset_method is not None:
            config["subsetMethod"] = subset_method
        if log_requests:
            config["logRequests"] = True
        if collection_id is not None:
            config["id"] = collection_id
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
        self._requests: list[dict[str, Any]] = []
        self._txid_replies: dict[int, dict[str, Any]] = {}
        self._command_ids = itertools.count(1)
        self._stderr: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._bad_lines: list[str] = []
        self.versions: dict[str, str | None] = {}
        self.last_txid_reply: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> CollectionFollower:
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
            self._state = msg
            self._rows = msg.get("rows") or {}
            self._seq += 1
            self._history.append((self._seq, msg))
            return
        if kind in ("request", "response"):
            self._requests.append(msg)
            return
        self._events.append(msg)
        if kind == "error":
            self._errors.append(msg)
        elif kind == "txid" and isinstance(msg.get("id"), int):
            self._txid_replies[msg["id"]] = msg
        elif kind == "hello":
            self.versions = msg.get("versions") or {}

    # ------------------------------------------------------------------ accessors

    @property
    def rows(self) -> Rows:
        """The live query's latest reported rows (empty before it is first ready)."""
        return self._rows

    @property
    def states(self) -> list[dict[str, Any]]:
        """Every state message reported so far, oldest first (the last 2000)."""
        return [state for _seq, state in self._history]

    @property
    def source_size(self) -> int | None:
        """How many rows the underlying collection held at the latest state."""
        if self._state is None:
            return None
        size = self._state.get("sourceSize")
        return size if isinstance(size, int) else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every error line (``transient`` ones were retried by the client itself)."""
        return self._errors

    @property
    def fatal_errors(self) -> list[dict[str, Any]]:
        return [e for e in self._errors if e.get("fatal")]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every line other than state, request and response, in order."""
        return self._events

    @property
    def statuses(self) -> list[tuple[str, str]]:
        """``(collection, status)`` transitions, ``collection`` being source or query."""
        return [
            (str(e.get("collection")), str(e.get("status")))
            for e in self._events
            if e.get("type") == "status"
        ]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Request and response lines, in order (needs ``log_requests=True``)."""
        return self._requests

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    # ------------------------------------------------------------------ commands

    async def await_txid(self, txid: int, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """``collection.utils.awaitTxId(txid, timeout)``: True once the txid was synced.

        False when the client gave up (``TimeoutWaitingForTxIdError`` and the like); the
        reason is in ``last_txid_reply``. Raises ``AssertionError`` if the process is gone.
        """
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeError("CollectionFollower is not started (use `async with`)")
        command_id = next(self._command_ids)
        command = {
            "cmd": "awaitTxId",
            "txid": txid,
            "timeout": int(timeout * 1000),
            "id": command_id,
        }
        proc.stdin.write((json.dumps(command) + "\n").encode())
        await proc.stdin.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout + _TXID_REPLY_GRACE_S
        async with self._changed:
            while command_id not in self._txid_replies:
                if self._eof:
                    await self._reap()
                    raise AssertionError(self._failure("the follower process exited", None))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise AssertionError(self._failure(f"no answer to {command}", None))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        reply = self._txid_replies[command_id]
        self.last_txid_reply = reply
        return reply.get("ok") is True

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        predicate: Predicate,
        timeout: float = 60.0,  # noqa: ASYNC109 (the API the tests use)
        *,
        expected: Rows | None = None,
    ) -> Rows:
        """Wait until a reported state (the current one or a later one) satisfies ``predicate``.

        On timeout, or if the Node process ends first, raises ``AssertionError`` with
        diagnostics; ``expected`` only improves that message with a row diff.
        """
        if self._proc is None:
            raise RuntimeError("CollectionFollower is not started (use `async with`)")
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

    def _failure(self, reason: str, expected: Rows | None) -> str:
        out = [
            f"CollectionFollower({self.config}): {reason}",
            f"packages {self.versions}, process returncode {self.returncode}, "
            f"{self._seq} states seen, statuses {self.statuses[-6:]}",
        ]
        if self._state is None:
            out.append("no state was ever reported (the live query never became ready)")
        if expected is not None:
            out.append("diff against expected:\n" + describe_diff(expected, self._rows))
        else:
            out.append("last rows: " + _short(self._rows, 2000))
        if self._errors:
            out.append(f"errors ({len(self._errors)}, last 10):")
            out += ["  " + _short(e, 800) for e in self._errors[-10:]]
        else:
            out.append("no errors reported")
        if self._requests:
            out.append("last requests:")
            out += ["  " + _short(r, 600) for r in self._requests[-6:]]
        if self._bad_lines:
            out.append("unparseable stdout: " + _short(self._bad_lines[-5:], 1000))
        tail = [ln for ln in self._stderr if ln.strip()]
        out.append("stderr tail:" + ("\n  " + "\n  ".join(tail[-30:]) if tail else " (empty)"))
        return "\n".join(out)
