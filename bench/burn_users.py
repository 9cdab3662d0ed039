"""Benchmark ``burn-users``: signed-in users following the Burn web app's sync routes.

Set-up: a throw-away Postgres with the app's migrations, syncd and one web app process
(``python -m web serve``, relaying ``/api/sync/*`` to syncd), as child processes. ``users``
people, each with a session of their own (written to the database: see :func:`sign_in_all`),
meet in ``threads`` threads through the write API (one creates it, the others join), so each
thread has ``users / threads`` human members.

Measured: every user follows five live shapes through the sync routes (threads, memberships,
events, users, facts) with the Python client (SSE by default). Messages are posted through the
write API at ``rate`` per second across the threads, each by a member, for ``seconds``. For
every message and every human member of its thread, the delay runs from the moment the write
API's answer arrives to the moment that member's events shape holds the message. The baseline
is the same delay for one plain syncd subscriber (the ``events`` table straight from syncd, no
routes, no subquery) in the same run. Also reported: the resident memory that each connected
user adds to the web process and to syncd (RSS with every shape live, minus RSS before any).

Summary line::

    BENCH burn-users value=<p50 ms> unit=ms baseline=<plain subscriber p50 ms> ratio=<b/v>

The subscribers run in this process, on the same cores as the servers. ``python -m bench
--benches burn-users --users 50 --burn-seconds 5`` is a CI-sized run (under a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from itsdangerous import URLSafeTimedSerializer

from bench.children import cpu_times, stop_child
from bench.cluster import bench_database
from bench.large_txn import ROOT, _Daemon
from bench.stalled_readers import rss_mb
from shapes.client import Shape, ShapeDefinition, ShapeStream
from shapes.client.stream import LiveMode
from shapes.collector import tune_garbage_collector
from syncd.daemon import event_loop_factory

SHAPES = ("threads", "memberships", "events", "users", "facts")
SECRET = secrets.token_urlsafe(32)
SESSION_TOKEN_SALT = "burn-session"
"""The salt of the web app's session tokens (``web.accounts.TOKEN_SALT``)."""
CONNECT_CONCURRENCY = 50
POSTERS = 8
SETTLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class BurnOptions:
    users: int = 1_000
    threads: int = 100
    rate: float = 50.0
    seconds: float = 20.0
    live_mode: LiveMode = "sse"
    keep: bool = False


def raise_open_file_limit() -> None:
    """Every live shape holds a connection in this process and two in the web process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class WebApp:
    """``python -m web serve`` as a child process on a free loopback port."""

    def __init__(self, dsn: str, syncd_url: str, log_path: Path) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEB_")}
        env.update(
            WEB_DATABASE_URL=dsn,
            WEB_SECRET=SECRET,
            WEB_PORT=str(self.port),
            WEB_SYNCD_URL=syncd_url,
            WEB_SIGN_UP_CLIENT_LIMIT="1000000",
            WEB_POOL_SIZE="20",
            WEB_LOG_LEVEL="WARNING",
        )
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "web", "migrate"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "web", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the web app exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("the web app did not become healthy")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_child(self.process)
        self.process = None


@dataclass
class Person:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass
class Deliveries:
    """When each message's write answered, and when each member's client held it."""

    answered: dict[str, float] = field(default_factory=dict)
    held: dict[str, list[float]] = field(default_factory=dict)
    plain: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def hold(self, message: str) -> None:
        self.held.setdefault(message, []).append(time.monotonic())
        self.changed.set()

    def hold_all(self, batch: list[dict[str, Any]]) -> None:
        for message in inserted_ids(batch):
            self.hold(message)

    def early(self) -> int:
        """Deliveries noted before the write's answer was (a busy client's clock lags)."""
        return sum(
            1
            for message, helds in self.held.items()
            for held in helds
            if message in self.answered and held < self.answered[message]
        )

    def delays_ms(self, times: dict[str, list[float]]) -> list[float]:
        return [
            max(0.0, held - self.answered[message]) * 1000
            for message, helds in times.items()
            if message in self.answered
            for held in helds
        ]


def inserted_ids(batch: list[dict[str, Any]]) -> Iterator[str]:
    for message in batch:
        if message.get("headers", {}).get("operation") == "insert":
            yield str(message["value"]["id"])


def sign_in_all(dsn: str, count: int) -> list[Person]:
    """``count`` users, each with an open session and its token.

    The rows are written directly and the tokens signed as the app signs them (the session id,
    signed and timestamped with the app's secret), because hashing a thousand passwords with
    argon2 on the benchmark's cores would take minutes and is not what is measured.
    """
    signer = URLSafeTimedSerializer(SECRET, salt=SESSION_TOKEN_SALT)
    people = []
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for index in range(count):
            user, session = uuid.uuid4(), uuid.uuid4()
            conn.execute(
                "INSERT INTO users (id, name, kind) VALUES (%s, %s, 'human')",
                (user, f"b{index}-{secrets.token_hex(3)}"),
            )
            conn.execute(
                "INSERT INTO burn_private.sessions (id, user_id, expires_at)"
                " VALUES (%s, %s, now() + interval '1 day')",
                (session, user),
            )
            people.append(Person(str(user), signer.dumps(str(session))))
    return people


async def write(client: httpx.AsyncClient, url: str, person: Person, **body: Any) -> None:
    body.setdefault("id", str(uuid.uuid4()))
    answer = await client.post(url, json=body, headers=person.headers)
    answer.raise_for_status()


async def make_threads(
    client: httpx.AsyncClient, web: WebApp, people: list[Person], count: int
) -> dict[str, list[Person]]:
    """``count`` threads; person ``i`` is in thread ``i % count``."""
    members: dict[str, list[Person]] = {}
    groups = [people[i::count] for i in range(count)]
    for group in groups:
        thread = str(uuid.uuid4())
        await write(client, web.url + "/api/threads", group[0], id=thread, name="bench")
        members[thread] = group
    limit = asyncio.Semaphore(8)

    async def join(thread: str, person: Person) -> None:
        async with limit:
            await write(client, f"{web.url}/api/threads/{thread}/join", person)

    await asyncio.gather(*(join(thread, p) for thread, group in members.items() for p in group[1:]))
    return members


async def follow_all(
    web: WebApp, people: list[Person], deliveries: Deliveries, mode: LiveMode
) -> list[Shape]:
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    shapes: list[Shape] = []

    async def follow(person: Person, table: str) -> None:
        async with limit:
            stream = ShapeStream(
                f"{web.url}/api/sync/{table}",
                ShapeDefinition.of(table),
                headers=person.headers,
                live_mode=mode,
                parse_values=False,
            )
            shape = Shape(stream)
            if table == "events":
                shape.subscribe(deliveries.hold_all)
            shapes.append(shape.start())
            await shape.wait_until_up_to_date(600)

    await asyncio.gather(*(follow(p, t) for p in people for t in SHAPES))
    return shapes


async def follow_plain(syncd_url: str, deliveries: Deliveries, mode: LiveMode) -> Shape:
    def note(batch: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for message in inserted_ids(batch):
            deliveries.plain.setdefault(message, now)
        deliveries.changed.set()

    stream = ShapeStream(
        syncd_url + "/v1/shape",
        ShapeDefinition.of("events", columns=["id", "thread_id"]),
        live_mode=mode,
        parse_values=False,
    )
    shape = Shape(stream)
    shape.subscribe(note)
    await shape.start().wait_until_up_to_date(120)
    return shape


def post_messages(
    web: WebApp, members: dict[str, list[Person]], deliveries: Deliveries, options: BurnOptions
) -> tuple[int, int]:
    """Post the messages at the rate, from worker threads (so that a busy event loop of
    subscribers does not delay the moment an answer is noted); answers how many messages and
    how many deliveries to members they make."""
    threads = list(members)
    total = max(1, round(options.rate * options.seconds))
    interval = 1.0 / options.rate
    expected = 0
    with (
        httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=POSTERS)) as client,
        ThreadPoolExecutor(POSTERS) as pool,
    ):

        def post(thread: str) -> None:
            message = str(uuid.uuid4())
            person = random.choice(members[thread])
            answer = client.post(
                f"{web.url}/api/threads/{thread}/messages",
                json={"id": message, "text": "a bench message"},
                headers=person.headers,
            )
            deliveries.answered[message] = time.monotonic()
            answer.raise_for_status()

        started = time.monotonic()
        futures = []
        for index in range(total):
            time.sleep(max(0.0, started + index * interval - time.monotonic()))
            thread = threads[index % len(threads)]
            expected += len(members[thread])
            futures.append(pool.submit(post, thread))
        for future in futures:
            future.result()
    return total, expected


async def settle(deliveries: Deliveries, expected: int, posted: int) -> None:
    """Wait until every member holds every message (or ``SETTLE_TIMEOUT`` passes)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        held = sum(len(v) for m, v in deliveries.held.items() if m in deliveries.answered)
        plain = sum(1 for m in deliveries.plain if m in deliveries.answered)
        if held >= expected and plain >= posted:
            return
        deliveries.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(deliveries.changed.wait(), 1.0)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    return sum(cpu_times(pid))


def cpu_now(web: WebApp, syncd: _Daemon) -> tuple[float, float, float]:
    return cpu_seconds(web.pid), cpu_seconds(syncd.pid), time.process_time()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(web: WebApp, syncd: _Daemon, options: BurnOptions) -> None:
    async with httpx.AsyncClient(timeout=60.0) as client:
        started = time.monotonic()
        people = sign_in_all(web.env["WEB_DATABASE_URL"], options.users)
        members = await make_threads(client, web, people, options.threads)
        print(
            f"burn-users: {len(people)} users in {len(members)} threads "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        idle_web, idle_syncd = rss_mb(web.pid), rss_mb(syncd.pid)
        deliveries = Deliveries()
        plain = await follow_plain(syncd.url, deliveries, options.live_mode)
        started = time.monotonic()
        shapes = await follow_all(web, people, deliveries, options.live_mode)
        print(
            f"burn-users: {len(shapes)} live shapes up to date "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        await asyncio.sleep(2.0)  # let both servers reach their steady state
        live_web, live_syncd = rss_mb(web.pid), rss_mb(syncd.pid)
        cpu_before = cpu_now(web, syncd)
        try:
            posted, expected = await asyncio.to_thread(
                post_messages, web, members, deliveries, options
            )
            await settle(deliveries, expected, posted)
            used = [
                after - before
                for after, before in zip(cpu_now(web, syncd), cpu_before, strict=True)
            ]
            print(
                "burn-users: CPU seconds while messages flowed: web {:.1f}, syncd {:.1f}, "
                "clients {:.1f}".format(*used),
                flush=True,
            )
        finally:
            await asyncio.gather(*(shape.close() for shape in shapes), plain.close())
    delays = deliveries.delays_ms(deliveries.held)
    baseline = deliveries.delays_ms({m: [t] for m, t in deliveries.plain.items()})
    rss = ((idle_web, live_web), (idle_syncd, live_syncd))
    report(options, delays, baseline, (expected, deliveries.early()), *rss)


def report(
    options: BurnOptions,
    delays: list[float],
    baseline: list[float],
    counts: tuple[int, int],
    web_rss: tuple[float, float],
    syncd_rss: tuple[float, float],
) -> None:
    if not delays or not baseline:
        raise RuntimeError("no message reached the subscribers")
    expected, early = counts
    p50, p99 = statistics.median(delays), percentile(delays, 0.99)
    base50 = statistics.median(baseline)
    per_user_web = (web_rss[1] - web_rss[0]) * 1024 / options.users
    per_user_syncd = (syncd_rss[1] - syncd_rss[0]) * 1024 / options.users
    print(
        f"burn-users: {len(delays)} of {expected} deliveries ({early} before the answer was "
        f"noted), {options.live_mode}; "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; plain syncd subscriber p50 {base50:.1f} ms, "
        f"p99 {percentile(baseline, 0.99):.1f} ms",
        flush=True,
    )
    print(
        f"burn-users: RSS per connected user: web {per_user_web:.0f} KB "
        f"({web_rss[0]:.0f} -> {web_rss[1]:.0f} MB), syncd {per_user_syncd:.0f} KB "
        f"({syncd_rss[0]:.0f} -> {syncd_rss[1]:.0f} MB)",
        flush=True,
    )
    print(
        f"BENCH burn-users value={p50:.1f} unit=ms baseline={base50:.1f} "
        f"ratio={base50 / p50 if p50 else 0.0:.3f}",
        flush=True,
    )


def run_burn_users(options: BurnOptions) -> None:
    """Run the benchmark and print its summary lines."""
    if options.users < options.threads or options.threads < 1:
        raise ValueError("--users must be at least --burn-threads, and that positive")
    raise_open_file_limit()
    # the subscribers stand for a thousand separate clients: their shared heap must not make
    # every collection in this process scan all of them
    tune_garbage_collector()
    with bench_database("burn_users", keep=options.keep) as db:
        syncd = _Daemon(
            db.dsn, db.base / "storage", "syncd_burn_users", None, db.base / "syncd.log"
        )
        web = WebApp(db.dsn, "", db.base / "web.log")
        web.migrate()
        syncd.start(60)
        try:
            web.env["WEB_SYNCD_URL"] = syncd.url
            web.start()
            try:
                with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                    runner.run(measure(web, syncd, options))
            finally:
                web.stop()
        finally:
            syncd.stop()
