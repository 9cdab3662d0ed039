"""Browser benchmarks of the Burn app, in headless Debian Chromium (Playwright).

The product runs as child processes on a throw-away Postgres: migrations (``python -m web
migrate``), syncd, and the web app with its sync routes and the built UI (``python -m web
serve``; ``make ui`` first). No agents run.

``ui-first-paint``
    One user's thread holds ``--ui-events`` (1,000) messages. Each round opens a new browser
    context signed in as that user and navigates to the thread; the value is the time from
    navigation start (``performance.now()`` in the page) until every message is rendered, the
    median of ``--ui-rounds`` rounds. Baseline: the time to read the same rows over the sync
    route without a browser (``GET /api/sync/events`` from ``offset=-1`` until up to date)::

        BENCH ui-first-paint value=<ms> unit=ms baseline=<ms> ratio=<baseline/value>

``ui-live``
    Two users in one thread; the second has the thread open in the browser. The first posts
    ``--ui-messages`` (20) messages through the write API, one at a time; each delay runs from
    just before the POST until the message is in the second user's page (a MutationObserver
    stamps it). Value: p50 of the delays. Baseline: p50 of the POST's own round trip (the
    write's answer with its txid)::

        BENCH ui-live value=<p50 ms> unit=ms baseline=<p50 ms> ratio=<baseline/value>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.children import free_port, wait_http
from bench.chromium import CHROMIUM, CHROMIUM_ARGS
from bench.cluster import bench_database
from bench.fanout import percentile
from bench.stats import summary

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-ui-" + "x" * 40
PASSWORD = "correct horse battery"


def log(text: str) -> None:
    print(text, flush=True)


@dataclass
class Product:
    url: str
    dsn: str


@contextmanager
def running_product(name: str, keep: bool) -> Iterator[Product]:
    """Migrations, syncd and the web app on a fresh database; children stopped by PID."""
    if not (ROOT / "web" / "ui" / "dist" / "index.html").exists():
        raise RuntimeError("the browser app is not built: run `make ui` first")
    with bench_database(name, keep=keep) as db:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "SYNCD_"))}
        subprocess.run(
            [sys.executable, "-m", "web", "migrate", "--database-url", db.dsn],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip
        syncd_port, web_port = free_port(), free_port()
        children: list[subprocess.Popen[bytes]] = []
        with (db.base / "children.log").open("ab") as out:
            try:
                syncd = subprocess.Popen(
                    [sys.executable, "-m", "syncd", "--database-url", db.dsn,
                     "--port", str(syncd_port), "--storage-dir", str(db.base / "storage"),
                     "--log-level", "WARNING"],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
                children.append(syncd)
                wait_http(syncd, f"http://127.0.0.1:{syncd_port}/v1/health")
                web_env = env | {
                    "WEB_DATABASE_URL": db.dsn,
                    "WEB_SECRET": SECRET,
                    "WEB_PORT": str(web_port),
                    "WEB_LOG_LEVEL": "WARNING",
                    "WEB_SIGN_UP_CLIENT_LIMIT": "1000",
                    "BURN_SYNCD_URL": f"http://127.0.0.1:{syncd_port}",
                }
                web = subprocess.Popen(
                    [sys.executable, "-m", "web", "serve"],
                    cwd=ROOT, env=web_env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
                children.append(web)
                url = f"http://127.0.0.1:{web_port}"
                wait_http(web, url + "/api/health")
                yield Product(url, db.dsn)
            finally:
                for child in reversed(children):
                    child.terminate()
                    try:
                        child.wait(10)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()


def _sign_up(client: httpx.Client, name: str) -> tuple[str, str]:
    """A new user; returns (user id, session token)."""
    answer = client.post("/api/auth/sign-up", json={"name": name, "password": PASSWORD})
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return str(body["user"]["id"]), str(body["token"])


def _thread(client: httpx.Client, token: str) -> str:
    thread_id = str(uuid.uuid4())
    answer = client.post(
        "/api/threads",
        json={"id": thread_id, "name": "bench"},
        headers={"authorization": f"Bearer {token}"},
    )
    answer.raise_for_status()
    return thread_id


def _browser() -> Any:
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    return driver, driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _signed_in_page(browser: Any, url: str, token: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "burn_session", "value": token, "url": url}])
    return context.new_page()


def _read_route(url: str, token: str) -> int:
    """Rows of /api/sync/events read from offset -1 until up to date."""
    rows = 0
    params: dict[str, str] = {"offset": "-1"}
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as client:
        while True:
            answer = client.get("/api/sync/events", params=params)
            answer.raise_for_status()
            messages = answer.json()
            rows += sum(1 for m in messages if "value" in m)
            params = {
                "offset": answer.headers["electric-offset"],
                "handle": answer.headers["electric-handle"],
            }
            if any(m.get("headers", {}).get("control") == "up-to-date" for m in messages):
                return rows


def run_first_paint(events: int = 1_000, rounds: int = 3, *, keep: bool = False) -> str:
    """Run ``ui-first-paint``; return (and print) its summary line."""
    with running_product("ui_first_paint", keep) as product:
        with httpx.Client(base_url=product.url) as client:
            user_id, token = _sign_up(client, "paint")
            thread_id = _thread(client, token)
        with psycopg.connect(product.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO events (id, thread_id, user_id, kind, data)"
                " SELECT gen_random_uuid(), %s, %s, 'text',"
                " jsonb_build_object('text', 'message number ' || n)"
                " FROM generate_series(1, %s) AS n",
                (thread_id, user_id, events),
            )
        log(f"ui-first-paint: {events:,} messages, {rounds} rounds")
        driver, browser = _browser()
        paints: list[float] = []
        try:
            for _ in range(rounds):
                page = _signed_in_page(browser, product.url, token)
                page.goto(f"{product.url}/threads/{thread_id}")
                handle = page.wait_for_function(
                    "n => document.querySelectorAll('[data-testid=message]').length >= n"
                    " && performance.now()",
                    arg=events,
                    polling="raf",
                    timeout=120_000,
                )
                paints.append(float(handle.json_value()))
                arrived = page.evaluate(
                    "() => Math.max(...performance.getEntriesByType('resource')"
                    ".filter(e => e.name.includes('/api/sync/events')"
                    " && !e.name.includes('live=true')).map(e => e.responseEnd))"
                )
                log(f"  rendered at {paints[-1]:.0f} ms; events' data arrived by {arrived:.0f} ms")
                page.context.close()
        finally:
            browser.close()
            driver.stop()
        reads = []
        for _ in range(rounds):
            started = time.perf_counter()
            assert _read_route(product.url, token) >= events
            reads.append((time.perf_counter() - started) * 1000)
    value, baseline = percentile(paints, 0.5), percentile(reads, 0.5)
    line = summary("ui-first-paint", value, "ms", baseline, baseline / value)
    log(line)
    return line


WATCH = """texts => {
  window.__seen = {}
  const wanted = new Set(texts)
  const look = () => {
    for (const node of document.querySelectorAll('[data-testid=message-text]')) {
      const text = node.textContent
      if (wanted.has(text) && !(text in window.__seen)) window.__seen[text] = Date.now()
    }
  }
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                    characterData: true})
}"""


def run_live(messages: int = 20, *, keep: bool = False) -> str:
    """Run ``ui-live``; return (and print) its summary line."""
    with running_product("ui_live", keep) as product, httpx.Client(base_url=product.url) as api:
        _, poster = _sign_up(api, "poster")
        _, reader = _sign_up(api, "reader")
        thread_id = _thread(api, poster)
        auth = {"authorization": f"Bearer {poster}"}
        join = api.post(
            f"/api/threads/{thread_id}/join",
            json={"id": str(uuid.uuid4())},
            headers={"authorization": f"Bearer {reader}"},
        )
        join.raise_for_status()
        log(f"ui-live: {messages} messages, one at a time")
        driver, browser = _browser()
        delays: list[float] = []
        writes: list[float] = []
        try:
            page = _signed_in_page(browser, product.url, reader)
            page.goto(f"{product.url}/threads/{thread_id}")
            page.wait_for_selector("[data-testid=system-event]", timeout=60_000)
            texts = [f"live message {n} {uuid.uuid4().hex[:6]}" for n in range(messages)]
            page.evaluate(WATCH, texts)
            for text in texts:
                sent_at = time.time() * 1000
                answer = api.post(
                    f"/api/threads/{thread_id}/messages",
                    json={"id": str(uuid.uuid4()), "text": text},
                    headers=auth,
                )
                answer.raise_for_status()
                writes.append(time.time() * 1000 - sent_at)
                seen = page.wait_for_function(
                    f"() => window.__seen[{json.dumps(text)}]", timeout=60_000
                )
                delays.append(float(seen.json_value()) - sent_at)
        finally:
            browser.close()
            driver.stop()
    value, baseline = percentile(delays, 0.5), percentile(writes, 0.5)
    line = summary("ui-live", value, "ms", baseline, baseline / value)
    log(line)
    return line
