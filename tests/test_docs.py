"""Every shell and Python snippet of README.md and docs/*.md runs as written, on a fresh copy of
the repository.

A page's fenced blocks run in order, each one on its own: ``sh`` blocks with bash (``-e``,
``pipefail``), ``python`` blocks as a program. Other languages (``ini``, ``dockerfile``,
``nginx``, ``sql``, ``http``, ``text``, ...) are not programs and do not run. An HTML comment on
the line before a block changes that:

- ``<!-- not run: <why> -->``: the block is left out (a few are: ``make test`` would run this
  test, ``systemctl`` needs a service manager); each says why.
- ``<!-- from: <path> -->``: the block is an excerpt of that file of the repository (which
  other tests run), and is checked to be one, line for line.
- ``<!-- background -->``: the block starts syncd, which runs until the page ends; the next
  block runs once syncd's health check answers ``active``.
- ``<!-- after stopping syncd -->``: syncd started in the background is stopped (SIGTERM)
  before the block runs.

What a page gets, as a reader who followed the set-up would have:

- a directory with the repository's files (the working tree, tracked and new files) and its
  installed ``.venv``, as ``make dev`` leaves a fresh clone;
- ``DATABASE_URL``: a new, empty database (the role comes from ``PGUSER``), also in
  ``.dev/dsn`` where ``make syncd-dev`` writes it;
- syncd's address: the pages say ``127.0.0.1:3000``; each page gets a free port instead (the
  text is rewritten, and ``SYNCD_PORT`` set).

Roles a page creates are dropped afterwards, with its database.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from syncd.pgprovider import PostgresServer
from tests.syncd_process import ROOT, free_port

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = frozenset({"sh", "bash", "shell"})
PYTHON = frozenset({"python", "py"})
DOCUMENT_ONLY = frozenset(
    {"ini", "dockerfile", "nginx", "sql", "http", "text", "json", "yaml", "console"}
)
MAX_LEFT_OUT = 8
"""Blocks marked ``not run`` in all pages together: the exceptions stay few."""
SYNCD_ADDRESS = "127.0.0.1:3000"
BLOCK_SECONDS = 90
MARKER = re.compile(r"<!--\s*(.*?)\s*-->")
ACTIVE_SLOTS = "SELECT 1 FROM pg_replication_slots WHERE database = current_database() AND active"


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and its marker."""

    page: Path
    line: int
    language: str
    text: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` (in lists too: indented), each with the marker comment
    right above it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.lstrip().startswith("```"):
            index += 1
            continue
        indent = len(line) - len(line.lstrip())
        language = line.strip()[3:].strip()
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip().startswith("```"))
        above = MARKER.fullmatch(lines[index - 1].strip()) if index > 0 else None
        text = "\n".join(part[indent:] for part in lines[index + 1 : end]) + "\n"
        found.append(Block(page, index + 1, language, text, above.group(1) if above else None))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in blocks(page)]


def test_every_block_names_its_language_and_few_are_left_out() -> None:
    known = SHELL | PYTHON | DOCUMENT_ONLY
    unnamed = [b.where for b in all_blocks() if b.language not in known]
    assert unnamed == [], "blocks without a known language"
    left_out = [b for b in all_blocks() if (b.marker or "").startswith("not run")]
    assert all(b.marker and len(b.marker) > len("not run: ") + 10 for b in left_out)
    assert len(left_out) <= MAX_LEFT_OUT, [b.where for b in left_out]


@pytest.mark.parametrize(
    "block",
    [b for b in all_blocks() if (b.marker or "").startswith("from:")],
    ids=lambda b: b.where,
)
def test_excerpts_match_their_files(block: Block) -> None:
    assert block.marker is not None
    source = ROOT / block.marker.removeprefix("from:").strip()
    excerpt = [line.rstrip() for line in block.text.splitlines()]
    whole = [line.rstrip() for line in source.read_text().splitlines()]
    starts = [i for i in range(len(whole)) if whole[i : i + len(excerpt)] == excerpt]
    assert starts, f"{block.where} is not an excerpt of {source.relative_to(ROOT)}"


def repository_entries() -> list[str]:
    """The top-level files and folders of the repository: those git tracks or would (outside a
    git checkout, every one not hidden)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return sorted(entry.name for entry in ROOT.iterdir() if not entry.name.startswith("."))
    return sorted({path.split("/", 1)[0] for path in listed if (ROOT / path).exists()})


def fresh_copy(directory: Path) -> None:
    """The repository's files, linked into ``directory``, with an installed ``.venv`` (the
    repository's, else the environment running the tests)."""
    for name in repository_entries():
        (directory / name).symlink_to(ROOT / name)
    installed = ROOT / ".venv" if (ROOT / ".venv").is_dir() else Path(sys.prefix)
    venv = directory / ".venv"
    venv.mkdir()
    for entry in installed.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()  # installed after pyproject.toml: make installs nothing


@dataclass
class Page:
    """Where a page's blocks run, and what it started."""

    directory: Path
    env: dict[str, str]
    port: int
    dsn: str
    """The page's database, as the test connects to it."""
    background: list[subprocess.Popen[bytes]]

    def rewrite(self, text: str) -> str:
        return text.replace(SYNCD_ADDRESS, f"127.0.0.1:{self.port}")

    def run(self, block: Block) -> None:
        if block.marker == "after stopping syncd":
            self.stop_background()
        text = self.rewrite(block.text)
        if block.language in PYTHON:
            program = self.directory / f"snippet_{block.line}.py"
            program.write_text(text)
            command = [sys.executable, program.name]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", text]
        if block.marker == "background":
            self.start(command, block)
            return
        started = time.monotonic()
        done = subprocess.run(
            command,
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_SECONDS,
        )
        output = f"{done.stdout}\n{done.stderr}\n({time.monotonic() - started:.2f} s)"
        (self.directory / f"snippet_{block.line}.out").write_text(output)
        assert done.returncode == 0, f"{block.where} failed:\n{output}"

    def start(self, command: list[str], block: Block) -> None:
        log = (self.directory / f"background_{block.line}.log").open("wb")
        process = subprocess.Popen(
            command,
            cwd=self.directory,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.background.append(process)
        deadline = time.monotonic() + BLOCK_SECONDS
        while not self.syncd_active():
            output = (self.directory / f"background_{block.line}.log").read_text()
            assert process.poll() is None, f"{block.where} ended:\n{output}"
            assert time.monotonic() < deadline, f"{block.where} never became active:\n{output}"
            time.sleep(0.1)

    def syncd_active(self) -> bool:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.port}/v1/health", timeout=1)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json() == {"status": "active"}

    def stop_background(self) -> None:
        """Stop what the page started in the background; return once its replication
        connections have gone too (a slot is free to drop)."""
        self._stop_processes()
        deadline = time.monotonic() + 15
        with psycopg.connect(self.dsn) as conn:
            while conn.execute(ACTIVE_SLOTS).fetchone() is not None:
                assert time.monotonic() < deadline, "a replication slot stayed active"
                time.sleep(0.05)

    def _stop_processes(self) -> None:
        for process in self.background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.background:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.background.clear()


def page_environment(pg_dsn: str, port: int, directory: Path) -> dict[str, str]:
    """What the page's programs see: the database without its role (``PGUSER`` gives it)."""
    params = conninfo_to_dict(pg_dsn)
    user = str(params.pop("user", "postgres"))
    password = params.pop("password", None)
    database_url = make_conninfo("", **params)
    (directory / ".dev").mkdir()
    (directory / ".dev" / "dsn").write_text(database_url + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "PG"))}
    env.update(
        DATABASE_URL=database_url,
        PGUSER=user,
        SYNCD_PORT=str(port),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return env


@pytest.fixture
def roles_dropped_after(pg_server: PostgresServer, pg_dsn: str) -> Iterator[None]:
    """Drop the roles a page creates (roles belong to the whole cluster)."""
    query = "SELECT rolname FROM pg_roles"
    with psycopg.connect(pg_server.dsn) as conn:
        before = {row[0] for row in conn.execute(query).fetchall()}
    yield
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for (name,) in conn.execute(query).fetchall():
            if name not in before:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(
    page: Path, pg_dsn: str, pg_bindir: Path, tmp_path: Path, roles_dropped_after: None
) -> None:
    runnable = [b for b in blocks(page) if b.language in SHELL | PYTHON]
    runnable = [b for b in runnable if not (b.marker or "").startswith(("not run", "from:"))]
    if not runnable:
        pytest.skip("nothing to run")
    directory = tmp_path / "clone"
    directory.mkdir()
    fresh_copy(directory)
    port = free_port()
    env = page_environment(pg_dsn, port, directory)
    env["PATH"] = os.pathsep.join([str(pg_bindir), env["PATH"]])
    run = Page(directory, env, port, pg_dsn, [])
    try:
        for block in runnable:
            run.run(block)
    finally:
        run.stop_background()
        shutil.rmtree(directory / ".dev", ignore_errors=True)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {
        anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_pages_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (fragment and fragment not in anchors(linked)):
            broken.append(target)
    assert broken == []
