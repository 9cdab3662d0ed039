"""Drive the official ``@electric-sql/client`` from Python tests.

``ShapeFollower`` runs ``node follow_shape.mjs`` as a subprocess. The Node program follows
one shape with ``ShapeStream`` + ``Shape`` and prints JSON lines; this module parses them and
lets a test wait until the materialised rows satisfy a predicate.

Row values are what the JS client produced after parsing with ``electric-schema``, serialised
to JSON: ``int8`` (BigInt) and non-finite numbers arrive as strings, ``int4``/``float8`` as
numbers, ``bool`` as booleans, ``json``/``jsonb`` as parsed JSON, everything else as strings.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from typing import Any

from tests.e2e.node_process import (
    E2E_DIR,
    NodeFollower,
    Predicate,
    Rows,
    describe_diff,
    installed_version,
    node_config,
    pinned_dependencies,
    summarise_change,
)

__all__ = [
    "CLIENT_PACKAGE",
    "E2E_DIR",
    "SCRIPT",
    "Predicate",
    "Rows",
    "ShapeFollower",
    "describe_diff",
    "installed_client_version",
    "node_modules_ready",
    "pinned_client_version",
    "version_is_exact_1_5",
]

SCRIPT = E2E_DIR / "follow_shape.mjs"
CLIENT_PACKAGE = "@electric-sql/client"


def pinned_client_version() -> str:
    """The exact ``@electric-sql/client`` version pinned in package.json."""
    return pinned_dependencies()[CLIENT_PACKAGE]


def installed_client_version() -> str | None:
    return installed_version(CLIENT_PACKAGE)


def node_modules_ready() -> bool:
    """True if ``node`` is on PATH and ``npm ci`` has installed the pinned client."""
    if shutil.which("node") is None:
        return False
    installed = installed_client_version()
    return installed is not None and installed == pinned_client_version()


class ShapeFollower(NodeFollower):
    """Follow one shape with the official JS client (async context manager).

    ``rows`` is the latest up-to-date state the client reported, keyed by message key.
    """

    script = SCRIPT

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
        headers: dict[str, str] | None = None,
        node: str = "node",
    ) -> None:
        config = node_config(url=url, table=table, liveSse=live_sse, where=where, params=params)
        config |= node_config(columns=columns, replica=replica, reportTypes=report_types or None)
        config["subscribe"] = subscribe
        config |= node_config(headers=headers)
        super().__init__(config, node=node)
        self._must_refetch = 0
        self.client_version: str | None = None

    def _handle_event(self, msg: dict[str, Any]) -> None:
        super()._handle_event(msg)
        kind = msg.get("type")
        if kind == "must-refetch":
            self._must_refetch += 1
        elif kind == "hello":
            self.client_version = msg.get("clientVersion")

    # ------------------------------------------------------------------ accessors

    @property
    def state(self) -> dict[str, Any] | None:
        """The whole latest ``state`` message (rows, offset, handle, types...)."""
        return self._state

    @property
    def types(self) -> dict[str, dict[str, str]]:
        """JS ``typeof`` of each value, per key and column (needs ``report_types=True``)."""
        if self._state is None:
            return {}
        types: dict[str, dict[str, str]] = self._state.get("types") or {}
        return types

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

    # ------------------------------------------------------------------ waiting

    async def wait_for_error(
        self,
        predicate: Callable[[dict[str, Any]], bool] = lambda _e: True,
        timeout: float = 60.0,  # noqa: ASYNC109 (the API the tests use)
    ) -> dict[str, Any]:
        """Wait until an error line satisfying ``predicate`` has been reported."""

        def matching_error() -> dict[str, Any] | None:
            return next((err for err in self._errors if predicate(err)), None)

        return await self._wait_until(
            matching_error, timeout, f"no matching error after {timeout}s"
        )

    # ------------------------------------------------------------------ diagnostics

    def _failure_summary(self) -> list[str]:
        out = [
            f"client {self.client_version}, process returncode {self.returncode}, "
            f"{self._seq} states seen, {self._must_refetch} must-refetch"
        ]
        if self._state is not None:
            out.append(
                f"last state: offset={self._state.get('offset')} "
                f"handle={self._state.get('handle')} rows={len(self._rows)}"
            )
        else:
            out.append("no state was ever reported")
        return out

    def _failure_history(self) -> list[str]:
        if len(self._history) < 2:
            return []
        prev, last = self._history[-2][1]["rows"], self._history[-1][1]["rows"]
        return ["last change: " + summarise_change(prev, last)]


def version_is_exact_1_5(version: str) -> bool:
    return re.fullmatch(r"1\.5\.\d+", version) is not None
