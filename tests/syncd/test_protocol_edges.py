"""Protocol edges: shared secret, overload 503, path normalisation, HEAD, OPTIONS, cache headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.syncd_process import SyncdProcess

SECRET = "s3cret"


@pytest.fixture
def syncd(pg_dsn: str, tmp_path: Path) -> Iterator[SyncdProcess]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        conn.execute("INSERT INTO items VALUES (1, 'one')")
    daemon = SyncdProcess(
        pg_dsn,
        tmp_path / "storage",
        secret=SECRET,
        long_poll_timeout=3,
        max_existing_requests=1,
    )
    daemon.start()
    yield daemon
    daemon.stop()


def initial(client: httpx.Client, daemon: SyncdProcess, path: str = "/v1/shape") -> httpx.Response:
    return client.get(
        daemon.url + path, params={"table": "items", "offset": "-1", "secret": SECRET}
    )


def test_secret_is_required_except_for_preflight(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        denied = client.get(syncd.shape_url, params={"table": "items", "offset": "-1"})
        assert denied.status_code == 401
        assert denied.json() == {"message": "Unauthorized - Invalid API secret"}
        assert denied.headers["content-type"] == "application/json"
        wrong = client.get(
            syncd.shape_url, params={"table": "items", "offset": "-1", "secret": "x"}
        )
        assert wrong.status_code == 401
        legacy = client.get(
            syncd.shape_url, params={"table": "items", "offset": "-1", "api_secret": SECRET}
        )
        assert legacy.status_code == 200
        assert initial(client, syncd).status_code == 200
        preflight = client.options(
            syncd.shape_url,
            headers={
                "origin": "http://app.example",
                "access-control-request-method": "GET",
                "access-control-request-headers": "if-none-match",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-headers"] == "if-none-match"
        assert preflight.headers["access-control-max-age"] == "86400"
        assert "cache-control" not in preflight.headers


@pytest.mark.parametrize("path", ["/v1/shape/", "/v1//shape", "/v1/%73hape", "//v1/shape"])
def test_normalised_paths_are_the_shape_endpoint_and_keep_auth(
    syncd: SyncdProcess, path: str
) -> None:
    with httpx.Client(timeout=10) as client:
        answer = initial(client, syncd, path)
        assert answer.status_code == 200, answer.text
        assert answer.headers["electric-offset"] == "0_0"
        denied = client.get(syncd.url + path, params={"table": "items", "offset": "-1"})
        assert denied.status_code == 401


def test_head_answers_like_get_without_a_body(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        get = initial(client, syncd)
        head = client.head(
            syncd.shape_url, params={"table": "items", "offset": "-1", "secret": SECRET}
        )
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["electric-handle"] == get.headers["electric-handle"]


def test_cache_headers_per_request_kind(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        first = initial(client, syncd)
        assert first.headers["cache-control"] == (
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
        )
        handle = first.headers["electric-handle"]
        query = {"table": "items", "handle": handle, "secret": SECRET}
        catch_up = client.get(syncd.shape_url, params={**query, "offset": "0_0"})
        assert catch_up.headers["cache-control"] == "public, max-age=60, stale-while-revalidate=300"
        etag = catch_up.headers["etag"]
        cached = client.get(
            syncd.shape_url, params={**query, "offset": "0_0"}, headers={"if-none-match": etag}
        )
        assert cached.status_code == 304
        assert "electric-schema" not in cached.headers
        bad = client.get(syncd.shape_url, params={**query, "offset": "bogus"})
        assert bad.headers["cache-control"] == "no-store"
        stale = client.get(syncd.shape_url, params={**query, "offset": "0_0", "handle": "nope"})
        assert stale.status_code == 409
        assert stale.headers["cache-control"] == "public, max-age=60, must-revalidate"


def test_overload_answers_503_with_retry_after(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        handle = initial(client, syncd).headers["electric-handle"]
    query = {
        "table": "items",
        "handle": handle,
        "offset": "0_inf",
        "live": "true",
        "secret": SECRET,
    }
    held: list[int] = []

    def hold() -> None:
        with httpx.Client(timeout=10) as client:
            held.append(client.get(syncd.shape_url, params=query).status_code)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        with httpx.Client(timeout=10) as client:
            # refused as soon as the held request is in flight (it is held for 3 s); the probe
            # is not live, so it is never held itself and never takes the holder's place
            probe = {key: value for key, value in query.items() if key != "live"}
            while holder.is_alive():
                answer = client.get(syncd.shape_url, params=probe)
                if answer.status_code == 503:
                    break
            assert answer.status_code == 503
            assert answer.json()["code"] == "concurrent_request_limit_exceeded"
            assert 6 <= int(answer.headers["retry-after"]) <= 10
            assert answer.headers["electric-internal-known-error"] == "true"
    finally:
        holder.join()
    assert held == [200]


def test_an_open_sse_stream_counts_against_the_limit(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        handle = initial(client, syncd).headers["electric-handle"]
        query = {"table": "items", "handle": handle, "offset": "0_inf", "secret": SECRET}
        live_sse = {**query, "live": "true", "live_sse": "true"}
        with client.stream("GET", syncd.shape_url, params=live_sse) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            refused = client.get(syncd.shape_url, params=query)
            assert refused.status_code == 503, refused.text
        for _ in range(50):  # the slot frees once the server sees the stream closed
            answer = client.get(syncd.shape_url, params=query)
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer.status_code == 200


def test_a_long_poll_whose_client_left_frees_its_slot(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        handle = initial(client, syncd).headers["electric-handle"]
    query = {"table": "items", "handle": handle, "offset": "0_inf", "secret": SECRET}
    live = {**query, "live": "true"}
    sent = time.monotonic()
    with httpx.Client(timeout=0.5) as leaving, pytest.raises(httpx.ReadTimeout):
        leaving.get(syncd.shape_url, params=live)  # held for 3 s; the client leaves first
    with httpx.Client(timeout=10) as client:
        while (answer := client.get(syncd.shape_url, params=query)).status_code == 503:
            time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    freed_after = time.monotonic() - sent
    assert freed_after < 2.0, freed_after  # the abandoned hold would have lasted 3 s


def test_shutdown_answers_held_requests_instead_of_cancelling_them(
    syncd: SyncdProcess,
) -> None:
    with httpx.Client(timeout=10) as client:
        handle = initial(client, syncd).headers["electric-handle"]
    live = {"table": "items", "handle": handle, "offset": "0_inf", "secret": SECRET, "live": "true"}
    answers: list[tuple[httpx.Response, float]] = []

    def hold() -> None:
        with httpx.Client(timeout=10) as client:
            answer = client.get(syncd.shape_url, params=live)
            answers.append((answer, time.monotonic()))

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.5)
    stopping = time.monotonic()
    syncd.stop()
    holder.join(10)
    assert [answer.status_code for answer, _ in answers] == [200]
    answered_after = answers[0][1] - stopping
    assert answered_after < 1.5, answered_after  # the 3 s hold would end 2.5 s after the stop
    (message,) = answers[0][0].json()
    assert message["headers"]["control"] == "up-to-date"
    log = syncd.log_tail(200)
    assert "Exception in ASGI application" not in log and "Cancel" not in log, log


def test_changes_only_log_has_just_snapshot_end(syncd: SyncdProcess) -> None:
    with httpx.Client(timeout=10) as client:
        answer = client.get(
            syncd.shape_url,
            params={"table": "items", "offset": "-1", "log": "changes_only", "secret": SECRET},
        )
        [message] = answer.json()
        assert message["headers"]["control"] == "snapshot-end"
        assert {"xmin", "xmax", "xip_list"} <= message["headers"].keys()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_subset_snapshot_response(syncd: SyncdProcess, pg_dsn: str, method: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items SELECT g, 't' || g FROM generate_series(2, 20) g")
    query = {"table": "items", "offset": "-1", "secret": SECRET}
    subset = {"where": "id > $1", "params": {"1": "15"}, "order_by": "id DESC", "limit": 3}
    with httpx.Client(timeout=10) as client:
        if method == "GET":
            answer = client.get(
                syncd.shape_url,
                params={
                    **query,
                    "subset__where": "id > $1",
                    "subset__params": '{"1": "15"}',
                    "subset__order_by": "id DESC",
                    "subset__limit": "3",
                },
            )
        else:
            answer = client.post(syncd.shape_url, params=query, json=subset)
    assert answer.status_code == 200, answer.text
    assert answer.headers["electric-snapshot"] == "true"
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["electric-offset"] == "0_0"
    assert "electric-schema" in answer.headers and "etag" not in answer.headers
    assert answer.content.startswith(b'{"metadata":') and b', "data": [' in answer.content
    body = answer.json()
    assert set(body["metadata"]) == {"xmin", "xmax", "xip_list", "database_lsn", "snapshot_mark"}
    ids = [row["value"]["id"] for row in body["data"]]
    assert ids == ["20", "19", "18"]
    mark = body["metadata"]["snapshot_mark"]
    assert all(row["headers"]["snapshot_mark"] == mark for row in body["data"])
    assert all("txids" not in row["headers"] for row in body["data"])


def test_post_body_overrides_query_but_keeps_the_shape_where(
    syncd: SyncdProcess, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO items SELECT g, 't' || g FROM generate_series(2, 9) g")
    query = {"table": "nope", "offset": "-1", "where": "id > 3", "secret": SECRET}
    with httpx.Client(timeout=10) as client:
        answer = client.post(
            syncd.shape_url, params=query, json={"table": "items", "where": "id < 6", "offset": 0}
        )
        assert answer.status_code == 400  # offset without order_by, under subset
        assert answer.json()["errors"] == {
            "subset": {"order_by": ["order_by is required when limit or offset is present"]}
        }
        answer = client.post(
            syncd.shape_url, params=query, json={"table": "items", "where": "id < 6"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-cache"
        assert sorted(row["value"]["id"] for row in answer.json()["data"]) == ["4", "5"]
        for bad in (b"NaN", b'{"limit": Infinity, "order_by": "id"}'):
            rejected = client.post(syncd.shape_url, params=query, content=bad)
            assert rejected.status_code == 400
            assert rejected.json()["error"] == "Invalid JSON in request body"
