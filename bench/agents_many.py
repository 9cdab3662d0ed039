"""Benchmark ``agents-1000-threads``: a thousand threads of three agents on two workers.

Everything runs as in production, each in its own process: Postgres, syncd, the offline
Messages API (``python -m agents fake-api``) and two agents workers (``python -m agents run``,
no debounce, no streaming), on a database migrated by ``python -m web migrate``. Once both
workers are up with no agents, their resident memory (``VmRSS``) is read. Then one transaction
makes ``--agent-threads`` (1,000) threads, each with a person as owner, Sarah as producer and
Jerry and Frankie as comedians (as the web app makes a thread), and the benchmark waits until
the workers hold every agent (``agents.leases``), syncd has taken the snapshot of every
thread's shapes (:func:`syncd.storage.snapshot_sealed` on its storage) and the workers and
syncd are quiet again (each under a tenth of a core for three seconds in a row; it goes on
after five minutes without).

Measured:

- start-up: from the threads' commit until every agent is held, and until both workers are
  quiet; how the agents split between the workers (again after the load), and the lease grants
  beyond one per agent (each is an agent moving to a worker or restarting);
- idle: over ``--agent-idle-seconds`` (20) without messages, the CPU time (user plus system,
  from ``/proc``, children included) of each worker, syncd and Postgres (the postmaster and its
  backends) per wall second, in cores; then the memory per agent: the workers' RSS minus their
  RSS without agents, over the agents;
- load: for ``--agent-seconds`` (30), a person's message committed into a random thread at
  ``--agent-rate`` (50) per second. Its reaction runs from its ``COMMIT`` to the arrival at the
  fake of the first request whose context holds it (the rendered thread names every message by
  its event id), read from ``GET /_fake/requests?since=N`` every 50 ms. The baseline, in the
  same run, is the delay of the same messages to a plain subscriber (a Python
  :class:`~shapes.client.ShapeStream` following the whole ``events`` table over long-poll).
  A message still awaited 30 s after the last one counts its wait until then (a lower bound),
  so lost reactions never make the figures look better.

It prints those figures, p50 and p99 of both delays and::

    BENCH agents-1000-threads value=<p50 ms> unit=ms baseline=<subscriber p50 ms> ratio=<b/v>

The wall clocks compared are those of one machine; the benchmark shares its cores with what it
measures, so it polls and writes at a modest pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.agents import (
    SARAH,
    child,
    committing_synchronously,
    percentile,
    worker_env,
)
from bench.burn_users import raise_open_file_limit
from bench.children import free_port, stop_child, wait_http
from bench.cluster import bench_database
from bench.large_txn import ROOT, _Daemon
from bench.stalled_readers import rss_mb
from bench.stats import summary
from shapes.client import Batch, ShapeDefinition, ShapeStream
from syncd.storage import snapshot_sealed

NAME = "agents-1000-threads"
JERRY = "00000000-0000-4000-8000-000000000002"
FRANKIE = "00000000-0000-4000-8000-000000000003"
AGENT_ROLES = ((SARAH, "producer"), (JERRY, "comedian"), (FRANKIE, "comedian"))
"""The agents of every thread and their roles (``agents.personas``)."""
WORKERS = ("bench-worker-1", "bench-worker-2")
QUIET_CORES = 0.1
"""A worker under this CPU (in cores) for two one-second windows in a row has settled."""
HOLD_TIMEOUT = 900.0
"""Longest wait for the workers to hold every agent."""
QUIET_TIMEOUT = 300.0
"""Longest wait, once they do, for the workers to be quiet (the benchmark goes on anyway)."""
POLL_SECONDS = 0.05
DRAIN_SECONDS = 30.0
"""Longest wait, after the last message, for the reactions and deliveries still missing."""
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class ManyOptions:
    threads: int = 1_000
    idle_seconds: float = 20.0
    rate: float = 50.0
    """Messages per second of the load phase."""
    seconds: float = 30.0
    """Duration of the load phase."""
    keep: bool = False

    def __post_init__(self) -> None:
        if self.threads < 1 or self.rate <= 0 or self.seconds <= 0 or self.idle_seconds < 0:
            raise ValueError(
                "--agent-threads, --agent-rate and --agent-seconds must be positive,"
                " --agent-idle-seconds not negative"
            )


@dataclass(frozen=True)
class Thread:
    id: str
    person: str
    """The thread's owner, who writes its messages."""


@dataclass(frozen=True)
class CpuSample:
    at: float
    seconds: dict[str, float]


@dataclass
class Tracking:
    """The load phase's messages and when each was committed, requested and delivered."""

    posted: set[str] = field(default_factory=set)
    """Event ids, added before their ``INSERT``."""
    committed: dict[str, float] = field(default_factory=dict)
    requested: dict[str, float] = field(default_factory=dict)
    """The arrival at the fake of the first request holding the message."""
    delivered: dict[str, float] = field(default_factory=dict)
    """The arrival of the message at the plain subscriber."""
    requests: int = 0
    """Requests the fake received since the first message."""

    def complete(self) -> bool:
        return all(e in self.requested and e in self.delivered for e in list(self.posted))

    def delays(self, arrivals: Mapping[str, float], ended: float) -> Delays:
        """From each commit to the arrival; a message still awaited at ``ended`` counts until
        then (a lower bound)."""
        return Delays(
            [(arrivals.get(event, ended) - at) * 1000 for event, at in self.committed.items()],
            sum(1 for event in self.committed if event not in arrivals),
        )


@dataclass(frozen=True)
class Delays:
    ms: list[float]
    missing: int
    """Messages that never arrived (their delay is counted until the end of the wait)."""

    def describe(self) -> str:
        text = f"p50 {statistics.median(self.ms):.1f} ms, p99 {percentile(self.ms, 0.99):.1f} ms"
        if self.missing:
            text += f" ({self.missing} of {len(self.ms)} never arrived: lower bounds)"
        return text


@dataclass(frozen=True)
class LoadResult:
    messages: int
    requests: int
    reactions: Delays
    deliveries: Delays
    cores: dict[str, float]


# --- processes: CPU and memory ----------------------------------------------------------------


def _proc_stats() -> dict[int, tuple[int, int]]:
    """Each process's parent and CPU ticks: its own, plus those of its reaped children."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return stats


def cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process, with its descendants (living or reaped)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in stats.items():
        children[parent].append(pid)

    def tree(pid: int) -> int:
        return stats.get(pid, (0, 0))[1] + sum(tree(c) for c in children[pid])

    tick = os.sysconf("SC_CLK_TCK")
    return {name: tree(pid) / tick for name, pid in pids.items()}


def sample(pids: Mapping[str, int]) -> CpuSample:
    return CpuSample(time.monotonic(), cpu_seconds(pids))


def cores(before: CpuSample, after: CpuSample) -> dict[str, float]:
    wall = after.at - before.at
    return {name: (after.seconds[name] - spent) / wall for name, spent in before.seconds.items()}


THREAD_SHAPES = ("events", "memberships", "facts")
"""The shapes a worker follows per thread."""


def wait_snapshots(
    storage: Path, expected: int, deadline: float, check: Callable[[], None]
) -> bool:
    """Wait until syncd's storage holds at least ``expected`` shapes, each with its snapshot
    complete (:func:`syncd.storage.snapshot_sealed`)."""
    shapes = storage / "shapes"
    while time.monotonic() < deadline:
        check()
        directories = [d for d in shapes.iterdir() if d.is_dir()] if shapes.is_dir() else []
        done = sum(snapshot_sealed(d) for d in directories)
        if done >= expected and done == len(directories):
            return True
        time.sleep(1.0)
    return False


def wait_quiet(pids: Mapping[str, int], timeout: float, check: Callable[[], None]) -> bool:
    """Wait until every process stays under :data:`QUIET_CORES` for three seconds in a row."""
    deadline = time.monotonic() + timeout
    last, quiet = sample(pids), 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        check()
        now = sample(pids)
        quiet = quiet + 1 if max(cores(last, now).values()) < QUIET_CORES else 0
        last = now
        if quiet >= 3:
            return True
    return False


def format_cores(usage: Mapping[str, float]) -> str:
    each = ", ".join(f"{name} {value:.3f}" for name, value in usage.items())
    return f"{each}; total {sum(usage.values()):.3f} cores"


# --- children ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fake_api(env: dict[str, str], base: Path) -> Iterator[str]:
    """The offline Messages API as a child process; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fake = child(["-m", "agents", "fake-api", "--port", str(port)], env, base / "fake-api.log")
    try:
        wait_http(fake, f"{url}/_fake/requests")
        yield url
    finally:
        stop_child(fake)


@contextlib.contextmanager
def workers_running(env: dict[str, str], base: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """One ``python -m agents run`` per name of :data:`WORKERS`, stopped afterwards."""
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for name in WORKERS:
            log = base / f"{name}.log"
            workers.append(child(["-m", "agents", "run"], {**env, "AGENTS_WORKER_ID": name}, log))
        yield workers
    finally:
        for worker in workers:
            stop_child(worker)


def log_tail(path: Path, lines: int = 5) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").splitlines()[-lines:]
    return []


def alive_check(workers: Sequence[subprocess.Popen[bytes]], base: Path) -> Callable[[], None]:
    def check() -> None:
        for name, worker in zip(WORKERS, workers, strict=True):
            if worker.poll() is not None:
                tail = "\n".join(log_tail(base / f"{name}.log", 20))
                raise RuntimeError(f"{name} exited with {worker.returncode}:\n{tail}")

    return check


# --- the database -----------------------------------------------------------------------------


def make_threads(dsn: str, count: int) -> list[Thread]:
    """``count`` threads, each with a person as owner and the three agents, in one commit."""
    threads = [Thread(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(count)]
    ids, people = [t.id for t in threads], [t.person for t in threads]
    agents, roles = [a for a, _ in AGENT_ROLES], [r for _, r in AGENT_ROLES]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO users (id, name, kind) SELECT p, 'person' || n, 'human'"
            " FROM unnest(%s::uuid[]) WITH ORDINALITY AS people(p, n)",
            (people,),
        )
        conn.execute(
            "INSERT INTO threads (id, name) SELECT t, 'bench ' || n"
            " FROM unnest(%s::uuid[]) WITH ORDINALITY AS threads(t, n)",
            (ids,),
        )
        conn.execute(
            "INSERT INTO memberships (id, thread_id, user_id, role)"
            " SELECT gen_random_uuid(), t, p, 'owner'"
            " FROM unnest(%s::uuid[], %s::uuid[]) AS owners(t, p)"
            " UNION ALL SELECT gen_random_uuid(), t, a, r FROM unnest(%s::uuid[]) AS threads(t)"
            " CROSS JOIN unnest(%s::uuid[], %s::text[]) AS agents(a, r)",
            (ids, people, ids, agents, roles),
        )
    return threads


def wait_registered(dsn: str, check: Callable[[], None], timeout: float = 60.0) -> None:
    """Wait until every worker has announced itself in ``agents.workers``."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            check()
            row = conn.execute(
                "SELECT count(*) FROM agents.workers WHERE id = ANY(%s) AND expires_at > now()",
                (list(WORKERS),),
            ).fetchone()
            if row is not None and row[0] == len(WORKERS):
                return
            time.sleep(0.1)
    raise TimeoutError("the workers did not register")


def wait_held(dsn: str, expected: int, check: Callable[[], None]) -> float:
    """Wait until a worker holds each of the ``expected`` agents; returns the seconds taken."""
    started = time.monotonic()
    reported = started
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            check()
            row = conn.execute(
                "SELECT count(*) FROM agents.leases WHERE status = 'active' AND worker IS NOT NULL"
            ).fetchone()
            held = int(row[0]) if row is not None else 0
            now = time.monotonic()
            if held >= expected:
                return now - started
            if now - started > HOLD_TIMEOUT:
                raise TimeoutError(f"{held} of {expected} agents held after {HOLD_TIMEOUT:.0f} s")
            if now - reported >= 10:
                print(f"{NAME}: {held}/{expected} agents held after {now - started:.0f} s")
                reported = now
            time.sleep(0.2)


@dataclass(frozen=True)
class Spread:
    """How the active agents are spread over the workers, and the lease grants so far."""

    workers: str
    grants: int
    """Every grant of a lease increments its epoch: one per agent, plus one per move."""


def spread(dsn: str) -> Spread:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(worker, 'nobody'), count(*), count(DISTINCT thread_id)"
            " FROM agents.leases WHERE status = 'active' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        shared = conn.execute(
            "SELECT count(*) FROM (SELECT thread_id FROM agents.leases WHERE status = 'active'"
            " GROUP BY thread_id HAVING count(DISTINCT worker) > 1) AS shared"
        ).fetchone()
        grants = conn.execute("SELECT coalesce(sum(epoch), 0) FROM agents.leases").fetchone()
    each = ", ".join(
        f"{worker} {agents} agents in {threads} threads" for worker, agents, threads in rows
    )
    both = shared[0] if shared else 0
    return Spread(f"{each} ({both} threads on both)", int(grants[0]) if grants else 0)


# --- the load phase ---------------------------------------------------------------------------


def post_messages(
    dsn: str, threads: Sequence[Thread], options: ManyOptions, track: Tracking
) -> int:
    """Commit a person's message into a random thread at ``options.rate`` per second."""
    rng = random.Random(0)
    count = max(1, round(options.rate * options.seconds))
    with psycopg.connect(committing_synchronously(dsn), autocommit=True) as conn:
        start = time.monotonic()
        for n in range(count):
            pause = start + n / options.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            thread = rng.choice(threads)
            event = str(uuid.uuid4())
            track.posted.add(event)
            conn.execute(
                "INSERT INTO events (id, thread_id, user_id, kind, data)"
                " VALUES (%s, %s, %s, 'text', jsonb_build_object('text', %s::text))",
                (event, thread.id, thread.person, f"Message {n}: I have {n} houseplants."),
            )
            track.committed[event] = time.time()
    return count


async def poll_requests(http: httpx.AsyncClient, api_url: str, since: int, track: Tracking) -> None:
    """Note, for each message, the arrival of the first request to the fake that holds it."""
    while True:
        answer = await http.get(f"{api_url}/_fake/requests", params={"since": since})
        answer.raise_for_status()
        requests: list[dict[str, Any]] = answer.json()
        for request in requests:
            for event in UUID.findall(json.dumps(request["body"].get("messages", []))):
                if event in track.posted and event not in track.requested:
                    track.requested[event] = float(request["received"])
        since += len(requests)
        track.requests += len(requests)
        await asyncio.sleep(POLL_SECONDS)


async def follow_events(batches: AsyncIterator[Batch], track: Tracking) -> None:
    """Note the arrival of each message at the plain subscriber."""
    async for batch in batches:
        arrived = time.time()
        for message in batch:
            event = str((message.get("value") or {}).get("id"))
            if event in track.posted:
                track.delivered.setdefault(event, arrived)


async def load(
    dsn: str,
    shape_url: str,
    api_url: str,
    threads: Sequence[Thread],
    options: ManyOptions,
    pids: Mapping[str, int],
) -> LoadResult:
    track = Tracking()
    async with (
        httpx.AsyncClient(timeout=30) as http,
        ShapeStream(shape_url, ShapeDefinition.of("events")) as stream,
    ):
        batches = stream.batches()
        await anext(batches)  # the snapshot
        since = len((await http.get(f"{api_url}/_fake/requests")).json())
        tasks = [
            asyncio.create_task(follow_events(batches, track)),
            asyncio.create_task(poll_requests(http, api_url, since, track)),
        ]
        try:
            before = sample(pids)
            messages = await asyncio.to_thread(post_messages, dsn, threads, options, track)
            usage = cores(before, sample(pids))
            deadline = time.monotonic() + DRAIN_SECONDS
            while time.monotonic() < deadline and not track.complete():
                if any(task.done() for task in tasks):
                    break
                await asyncio.sleep(0.1)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    ended = time.time()
    reactions, deliveries = (
        track.delays(track.requested, ended),
        track.delays(track.delivered, ended),
    )
    return LoadResult(messages, track.requests, reactions, deliveries, usage)


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    options: ManyOptions
    idle_rss_mb: list[float]
    """Each worker's RSS with no agents."""
    held_seconds: float
    quiet_seconds: float | None
    """From the threads' commit until the workers and syncd were quiet (None: they never were)."""
    spreads: tuple[Spread, Spread, Spread]
    """After start-up, after the idle phase and after the load."""
    idle_cores: dict[str, float]
    rss_mb: list[float]
    """Each worker's RSS after the idle phase."""
    load: LoadResult
    logs: dict[str, list[str]]
    """The last lines of each worker's log."""

    @property
    def agents(self) -> int:
        return self.options.threads * len(AGENT_ROLES)


def run_agents_many(options: ManyOptions) -> None:
    """Run the benchmark and print its figures and summary line."""
    raise_open_file_limit()
    with bench_database("agents_many", keep=options.keep) as db:
        env = dict(os.environ, WEB_DATABASE_URL=db.dsn)
        subprocess.run([sys.executable, "-m", "web", "migrate"], cwd=ROOT, env=env, check=True)
        storage, log = db.base / "storage", db.base / "syncd.log"
        syncd = _Daemon(db.dsn, storage, "bench_agents_many", None, log)
        syncd.start(60)
        try:
            with (
                fake_api(env, db.base) as api_url,
                workers_running(worker_env(db.dsn, syncd.url, api_url), db.base) as workers,
            ):
                pids = {name: w.pid for name, w in zip(WORKERS, workers, strict=True)}
                pids["syncd"] = syncd.pid
                if db.server.pid is not None:
                    pids["postgres"] = db.server.pid
                result = measure(db.dsn, db.base, syncd.url, api_url, workers, pids, options)
        finally:
            syncd.stop()
    report(result)


def measure(
    dsn: str,
    base: Path,
    syncd_url: str,
    api_url: str,
    workers: Sequence[subprocess.Popen[bytes]],
    pids: Mapping[str, int],
    options: ManyOptions,
) -> Result:
    check = alive_check(workers, base)
    worker_pids = {name: pids[name] for name in WORKERS}
    wait_registered(dsn, check)
    wait_quiet(worker_pids, 30.0, check)
    idle_rss = [rss_mb(w.pid) for w in workers]
    print(
        f"{NAME}: {len(WORKERS)} workers up without agents, RSS "
        + " + ".join(f"{mb:.1f}" for mb in idle_rss)
        + " MB",
        flush=True,
    )
    created = time.monotonic()
    threads = make_threads(dsn, options.threads)
    expected = options.threads * len(AGENT_ROLES)
    held = wait_held(dsn, expected, check)
    print(f"{NAME}: all {expected} agents held {held:.1f} s after the threads' commit", flush=True)
    # syncd too: workers wait, quiet, while syncd still takes the new shapes' snapshots (and
    # a client told to come back later makes both quiet for a while: count the snapshots)
    busy = {name: pids[name] for name in (*WORKERS, "syncd")}
    deadline = time.monotonic() + QUIET_TIMEOUT
    quiet = wait_snapshots(base / "storage", options.threads * len(THREAD_SHAPES), deadline, check)
    quiet = quiet and wait_quiet(busy, max(deadline - time.monotonic(), 0.0), check)
    quiet_seconds = time.monotonic() - created if quiet else None
    started = spread(dsn)
    before = sample(pids)
    time.sleep(options.idle_seconds)
    check()
    idle = cores(before, sample(pids))
    rss = [rss_mb(w.pid) for w in workers]
    idled = spread(dsn)
    result = asyncio.run(load(dsn, syncd_url + "/v1/shape", api_url, threads, options, pids))
    check()
    spreads = (started, idled, spread(dsn))
    logs = {name: log_tail(base / f"{name}.log") for name in WORKERS}
    return Result(options, idle_rss, held, quiet_seconds, spreads, idle, rss, result, logs)


def report(result: Result) -> None:
    options, load_result = result.options, result.load
    settled = (
        f"workers and syncd quiet {result.quiet_seconds:.1f} s after it"
        if result.quiet_seconds is not None
        else f"the workers not quiet {QUIET_TIMEOUT:.0f} s after that"
    )
    lines = [
        f"{options.threads} threads x {len(AGENT_ROLES)} agents on {len(WORKERS)} workers:"
        f" every agent held {result.held_seconds:.1f} s after the threads' commit, {settled}",
        f"split after start-up: {result.spreads[0].workers}",
        f"split after the load: {result.spreads[2].workers}",
        f"lease grants beyond one per agent: {result.spreads[0].grants - result.agents}"
        f" during start-up, {result.spreads[1].grants - result.spreads[0].grants} while idle,"
        f" {result.spreads[2].grants - result.spreads[1].grants} under load",
        f"idle {options.idle_seconds:.0f} s, CPU in cores: {format_cores(result.idle_cores)}",
        f"RSS per agent {per_agent_kb(result):.1f} KB (workers "
        + ", ".join(
            f"{before:.1f} -> {after:.1f} MB"
            for before, after in zip(result.idle_rss_mb, result.rss_mb, strict=True)
        )
        + ")",
        f"load {load_result.messages} messages at {options.rate:g}/s for {options.seconds:g} s"
        f" ({load_result.requests} requests to the fake), CPU in cores:"
        f" {format_cores(load_result.cores)}",
    ]
    for name, tail in result.logs.items():
        lines.append(f"{name} log: " + (" | ".join(tail) if tail else "empty"))
    reactions, deliveries = load_result.reactions, load_result.deliveries
    lines.append(f"reaction {reactions.describe()}")
    lines.append(f"plain subscriber {deliveries.describe()}")
    for line in lines:
        print(f"{NAME}: {line}", flush=True)
    p50, baseline = statistics.median(reactions.ms), statistics.median(deliveries.ms)
    print(summary(NAME, p50, "ms", baseline, baseline / p50), flush=True)


def per_agent_kb(result: Result) -> float:
    return (sum(result.rss_mb) - sum(result.idle_rss_mb)) * 1024 / result.agents
