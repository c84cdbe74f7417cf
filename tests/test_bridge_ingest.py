"""Ingest and security paths: 200/207/422/413/415/401, de-duplication, CORS, logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.bridge_support import Bridge, ndjson, running_bridge, turn_events


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with running_bridge(max_body_bytes=4096) as running:
        yield running


def last_seq(bridge: Bridge, thread_id: str) -> int:
    thread = bridge.broker.get(thread_id)
    return 0 if thread is None else thread.log.next_seq - 1


def test_some_lines_rejected_gives_207_and_keeps_the_valid_ones(bridge: Bridge) -> None:
    body = b"\n".join([
        b'{"type":"turn.started","turn_id":"t1"}',
        b"{not json",
        b'{"type":"item.started","turn_id":"t1","item":{"id":"i1","type":"x"}}',
        b'{"type":"item.started","item":{"type":"x"}}',  # item.id missing
        b"",
        b'{"type":"turn.started","thread_id":"someone-else"}',
        b'["an", "array"]',
        b'{"type":"reset"}',
        b'{"type":"has space"}',
        b'{"type":"turn.completed","turn_id":"t1","usage":{"input_tokens":1}}',
    ])
    response = bridge.post("th", body)
    assert response.status_code == 207
    result = response.json()
    assert result["accepted"] == 3
    assert result["last_seq"] == 3
    rejected = {entry["line"]: entry["error"] for entry in result["rejected"]}
    assert sorted(rejected) == [2, 4, 6, 7, 8, 9]
    assert "JSON" in rejected[2]
    assert "item.id" in rejected[4]
    assert "thread_id" in rejected[6]
    assert "object" in rejected[7]
    assert "reserved" in rejected[8]
    assert "type" in rejected[9]
    state = bridge.client.get("/v1/threads/th").json()
    assert state["status"] == "completed"
    assert [i["id"] for i in state["turns"][0]["items"]] == ["i1"]


def test_no_valid_line_gives_422_and_changes_nothing(bridge: Bridge) -> None:
    bridge.post("th", turn_events("t1", 0))
    before = last_seq(bridge, "th")
    response = bridge.post("th", b'{"type":"item.started"}\n[]\n')
    assert response.status_code == 422
    assert response.json()["accepted"] == 0
    assert [e["line"] for e in response.json()["rejected"]] == [1, 2]
    assert last_seq(bridge, "th") == before
    assert bridge.post("th", b"\n\n").status_code == 422


def test_json_array_body_numbers_elements(bridge: Bridge) -> None:
    body = orjson.dumps([{"type": "turn.started"}, {"type": 3}, {"type": "turn.completed"}])
    response = bridge.client.post("/v1/threads/arr/events", content=body,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 207
    assert response.json()["accepted"] == 2
    assert [e["line"] for e in response.json()["rejected"]] == [2]
    broken = bridge.client.post("/v1/threads/arr/events", content=b"[{",
                                headers={"content-type": "application/json"})
    assert broken.status_code == 422


def test_body_over_the_limit_gets_413_and_nothing_is_accepted(bridge: Bridge) -> None:
    event = {"type": "item.updated", "item": {"id": "i", "type": "x", "text": "y" * 200}}
    big = ndjson([event] * 30)
    assert len(big) > 4096
    assert bridge.post("th", big).status_code == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        yield from (big[i:i + 500] for i in range(0, len(big), 500))

    response = bridge.client.post("/v1/threads/th/events", content=chunked(),
                                  headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 413
    assert bridge.broker.get("th") is None


def test_other_media_types_get_415(bridge: Bridge) -> None:
    response = bridge.client.post("/v1/threads/th/events", content=b"{}",
                                  headers={"content-type": "text/csv"})
    assert response.status_code == 415


@pytest.mark.parametrize("thread_id", ["has space", "a" * 129, "-leading", "ünï"])
def test_invalid_thread_ids_get_422(bridge: Bridge, thread_id: str) -> None:
    assert bridge.post(thread_id, turn_events("t", 0)).status_code in (404, 422)
    assert bridge.client.get(f"/v1/threads/{thread_id}/events").status_code in (404, 422)
    assert len(bridge.broker) == 0


def test_a_resent_batch_is_not_delivered_twice(bridge: Bridge) -> None:
    events = turn_events("t1", 2)
    assert bridge.post("th", events).json()["accepted"] == len(events)
    again = bridge.post("th", events)
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicates": len(events), "rejected": [],
                            "rejected_count": 0, "last_seq": None}
    # The same batch as a JSON array is the same events.
    as_array = bridge.client.post("/v1/threads/th/events", content=orjson.dumps(events[:2]),
                                  headers={"content-type": "application/json"})
    assert as_array.json()["duplicates"] == 2
    assert last_seq(bridge, "th") == len(events)
    # A producer that restarted numbers from 1 again, with other content: accepted.
    restarted = turn_events("t2", 1)
    assert bridge.post("th", restarted).json()["accepted"] == len(restarted)
    # Events without a producer seq are never taken for duplicates.
    bare = [{"type": "turn.started"}]
    assert bridge.post("th", bare).json()["accepted"] == 1
    assert bridge.post("th", bare).json()["accepted"] == 1


def test_token_guards_reading_and_ingest_and_reveals_nothing() -> None:
    with running_bridge(token="s3cret") as bridge:
        auth = {"authorization": "Bearer s3cret"}
        assert bridge.post("th", turn_events("t1", 1), **auth).status_code == 200
        for method, path in [("GET", "/v1/threads"), ("GET", "/v1/threads/th"),
                             ("GET", "/v1/threads/nope"), ("GET", "/v1/threads/th/events"),
                             ("GET", "/v1/threads/bad%20id/events"),
                             ("POST", "/v1/threads/th/events")]:
            for headers in ({}, {"authorization": "Bearer wrong"},
                            {"authorization": "Basic czNjcmV0"}):
                response = bridge.client.request(method, path, headers=headers,
                                                  content=b'{"type":"x"}')
                assert response.status_code == 401, (method, path, headers)
                assert response.json() == {"detail": "unauthorized"}
                assert response.headers["www-authenticate"] == "Bearer"
        assert bridge.client.get("/v1/threads/th/events?access_token=wrong").status_code == 401
        assert bridge.client.get("/v1/threads", headers=auth).status_code == 200
        with bridge.client.stream("GET", "/v1/threads/th/events?access_token=s3cret") as ok:
            assert ok.status_code == 200
        assert bridge.thread_state("th").log.next_seq == 5  # the rejected posts added none
        assert bridge.client.get("/healthz").status_code == 200
        assert bridge.client.get("/readyz").status_code == 200


def test_cors_is_an_allow_list_empty_by_default(bridge: Bridge) -> None:
    preflight = {"origin": "http://app.example", "access-control-request-method": "GET"}
    response = bridge.client.options("/v1/threads", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    with running_bridge(cors_origins=("http://app.example",), token="t") as allowed:
        ok = allowed.client.options("/v1/threads", headers=preflight)
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "http://app.example"
        other = allowed.client.options(
            "/v1/threads", headers={**preflight, "origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_event_content_never_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    marker = "CONTENT-MARKER-7f3a"
    with running_bridge() as bridge:
        good = {"type": "item.started", "item": {"id": "i", "type": "x", "text": marker}}
        bad = {"type": "item.started", "item": {"type": marker}}
        bridge.post("th", ndjson([good, bad]) + marker.encode())
        async with (httpx.AsyncClient(base_url=bridge.url) as client,
                    client.stream("GET", "/v1/threads/th/events") as response):
            async for chunk in response.aiter_bytes():
                if marker.encode() in chunk:
                    break
    assert caplog.records, "expected the server to log something at DEBUG"
    assert marker not in caplog.text
