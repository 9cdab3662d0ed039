"""nginx from the system's packages in front of a syncd, configured with the repository's own
``deploy/nginx/syncd.conf``, for the tests and benchmarks of the cache deployment.

The operator's file is used as it is, with three lines changed: the upstream's address, the
port to listen on (loopback) and the cache directory. Around it goes a minimal main
configuration of our own (the pid file, logs and temporary files in a directory of the run's).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

from bench.children import free_port, stop_child

ROOT: Final = Path(__file__).resolve().parent.parent
SITE_CONFIG: Final = ROOT / "deploy" / "nginx" / "syncd.conf"
NGINX_PATHS: Final = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
MAIN_CONFIG: Final = """\
{user}worker_processes 1;
worker_rlimit_nofile 65536;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;

events {{
    worker_connections 32768;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/syncd.conf;
}}
"""


class NginxMissing(RuntimeError):
    """No nginx binary on this machine (``make nginx`` installs Debian's)."""


def nginx_binary() -> str:
    """The path of the system's nginx.

    Raises:
        NginxMissing: when there is none.
    """
    found = shutil.which("nginx")
    if found is not None:
        return found
    for path in NGINX_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise NginxMissing("nginx is not installed: `make nginx` installs Debian's package")


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{SITE_CONFIG} must hold {old!r} exactly once")
    return text.replace(old, new)


def site_config(upstream: str, port: int, cache_dir: Path) -> str:
    """The operator's ``syncd.conf`` with this run's upstream, port and cache directory."""
    text = SITE_CONFIG.read_text()
    text = _replace_once(text, "server 127.0.0.1:3000;", f"server {upstream};")
    text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{port} backlog=16384;")
    return _replace_once(text, "/var/cache/nginx/syncd", str(cache_dir))


class NginxProcess:
    """One nginx serving ``deploy/nginx/syncd.conf`` on a loopback port: a single process
    (``master_process off``), so that stopping its PID stops all of it."""

    def __init__(self, prefix: Path, upstream: str) -> None:
        self.prefix = prefix
        self.upstream = upstream
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Write the configuration, start nginx and wait until it accepts connections."""
        binary = nginx_binary()
        self.prefix.mkdir(parents=True, exist_ok=True)
        cache = self.prefix / "cache"
        cache.mkdir(exist_ok=True)
        (self.prefix / "syncd.conf").write_text(site_config(self.upstream, self.port, cache))
        user = "user root;\n" if os.geteuid() == 0 else ""
        main = MAIN_CONFIG.format(user=user, prefix=self.prefix)
        config = self.prefix / "nginx.conf"
        config.write_text(main)
        check = subprocess.run(
            [binary, "-t", "-q", "-p", str(self.prefix), "-c", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}")
        self.process = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx never listened:\n{self.error_log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), SIGKILL after 10 s."""
        process, self.process = self.process, None
        if process is not None:
            stop_child(process)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
