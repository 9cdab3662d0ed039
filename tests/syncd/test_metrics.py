"""``GET /metrics`` against a live daemon: parsed with Prometheus' own text parser, each metric
checked to move when its event happens."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.shape_reader import ShapeCursor, catch_up
from tests.syncd_process import SyncdProcess

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(daemon: SyncdProcess, **kwargs: object) -> Samples:
    """Every sample of a scrape, by name and labels (the text must parse as Prometheus')."""
    answer = httpx.get(daemon.url + "/metrics", timeout=10, **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 10) g")
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", max_existing_requests=2)
    daemon.start()
    yield daemon
    daemon.stop()


def test_metrics_move_with_shapes_changes_and_requests(syncd: SyncdProcess, pg_dsn: str) -> None:
    before = scrape(syncd)
    assert value(before, "syncd_replication_connected") == 1
    assert value(before, "syncd_database_up") == 1
    assert value(before, "syncd_shapes", state="ready") == 0
    assert value(before, "syncd_storage_bytes") > 0
    assert value(before, "syncd_storage_free_bytes") > 0

    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        catch_up(client, syncd.shape_url, cursor)
    created = scrape(syncd)
    assert value(created, "syncd_shapes_created_total") == 1
    assert value(created, "syncd_shapes", state="ready") == 1
    assert value(created, "syncd_snapshot_duration_seconds_count") == 1
    responses = value(created, "syncd_http_responses_total", route="shape", status="200")
    assert responses >= 1
    initial = value(
        created, "syncd_http_request_duration_seconds_count", route="shape", mode="initial"
    )
    assert initial == 1

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (100, 'a'), (101, 'b')")
            conn.execute("UPDATE items SET title = 'c' WHERE id = 1")
        lsn = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert lsn is not None

    def applied() -> bool:
        now = scrape(syncd)
        return (
            value(now, "syncd_transactions_total") >= value(created, "syncd_transactions_total") + 1
            and value(now, "syncd_replication_lag_seconds", position="durable") == 0
            and value(now, "syncd_flush_duration_seconds_count")
            > value(created, "syncd_flush_duration_seconds_count")
        )

    wait_until(applied)
    after = scrape(syncd)
    changes = value(after, "syncd_changes_total") - value(created, "syncd_changes_total")
    assert changes >= 3
    assert value(after, "syncd_last_commit_timestamp_seconds") == pytest.approx(time.time(), abs=60)
    for position in ("received", "durable", "confirmed"):
        lag = value(after, "syncd_replication_lag_bytes", position=position)
        assert 0 <= lag < 16 * 1024 * 1024


def test_live_requests_sse_streams_and_refusals_are_counted(syncd: SyncdProcess) -> None:
    cursor = ShapeCursor({"table": "items"})
    with httpx.Client(timeout=30) as client:
        catch_up(client, syncd.shape_url, cursor)
    live = {"table": "items", "handle": cursor.handle or "", "offset": cursor.offset}
    finished: list[int] = []

    def hold_long_poll() -> None:
        answer = httpx.get(syncd.shape_url, params={**live, "live": "true"}, timeout=60)
        finished.append(answer.status_code)

    holder = threading.Thread(target=hold_long_poll)
    holder.start()
    wait_until(lambda: value(scrape(syncd), "syncd_live_long_polls") == 1)

    with httpx.Client(timeout=60) as client:
        sse = {**live, "live": "true", "live_sse": "true"}
        with client.stream("GET", syncd.shape_url, params=sse) as stream:
            assert stream.status_code == 200
            samples = scrape(syncd)
            assert value(samples, "syncd_sse_streams") == 1
            assert value(samples, "syncd_requests_in_flight", kind="existing") == 2
            # a third existing request is over SYNCD_MAX_EXISTING_REQUESTS=2
            refused = client.get(syncd.shape_url, params=live)
            assert refused.status_code == 503
        wait_until(lambda: value(scrape(syncd), "syncd_sse_streams") == 0)
        wait_until(lambda: value(scrape(syncd), "syncd_requests_in_flight", kind="existing") == 1)
    samples = scrape(syncd)
    assert value(samples, "syncd_admission_refusals_total", kind="existing") == 1
    assert value(samples, "syncd_http_responses_total", route="shape", status="503") == 1

    deleted = httpx.delete(syncd.shape_url, params={"table": "items"}, timeout=10)
    assert deleted.status_code == 202
    holder.join(30)
    assert finished and finished[0] in (200, 409)
    samples = scrape(syncd)
    assert value(samples, "syncd_shapes_removed_total", cause="deleted") == 1
    assert value(samples, "syncd_live_long_polls") == 0
    assert value(samples, "syncd_shapes", state="ready") == 0


def test_metrics_need_the_secret_when_one_is_set(pg_dsn: str, tmp_path: Path) -> None:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", secret="s3cret")
    daemon.start()
    try:
        assert httpx.get(daemon.url + "/metrics", timeout=10).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert httpx.get(daemon.url + "/metrics", headers=wrong, timeout=10).status_code == 401
        scrape(daemon, headers={"authorization": "Bearer s3cret"})
        samples = scrape(daemon, params={"secret": "s3cret"})
        unauthorised = value(samples, "syncd_http_responses_total", route="metrics", status="401")
        assert unauthorised == 2
    finally:
        daemon.stop()


def test_json_log_format_writes_one_object_per_line(pg_dsn: str, tmp_path: Path) -> None:
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", log_format="json")
    daemon.start()
    daemon.stop()
    lines = [line for line in daemon.log_path.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert record["time"].endswith("Z")
    assert any("serving the shape API" in record["message"] for record in records)


def test_the_grafana_dashboard_queries_only_metrics_syncd_exports(
    pg_dsn: str, tmp_path: Path
) -> None:
    dashboard_path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "syncd.json"
    dashboard = json.loads(dashboard_path.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for query in queries for name in re.findall(r"\bsyncd_[a-z_]+", query)}
    assert len(used) >= 15
    daemon = SyncdProcess(pg_dsn, tmp_path / "storage", storage_quota="1G")
    daemon.start()
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        httpx.get(daemon.shape_url, params={"table": "items", "offset": "-1"}, timeout=30)
        exported = {name for name, _labels in scrape(daemon)}
    finally:
        daemon.stop()
    assert used <= exported, used - exported
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
