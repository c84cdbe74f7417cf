"""Item 9: 422s never echo the value; HEAD and OPTIONS work; ``seq`` is strictly a
64-bit whole number; the ingest schema in OpenAPI is the protocol's event schema."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from otel_events.protocol import event_json_schema
from tests.bridge_support import Bridge, running_bridge, turn_events

MARKER = "ECHO-MARKER-4c1d"


@pytest.fixture(scope="module")
def bridge() -> Iterator[Bridge]:
    with running_bridge(heartbeat=600) as running:
        running.post("th", turn_events("t1", 1))
        yield running


@pytest.mark.parametrize("path", [
    f"/v1/threads/{'x' * 130}{MARKER}",
    f"/v1/threads/{MARKER}%20x",
    f"/v1/threads/{MARKER}%20x/events",
    f"/v1/threads/th/events?last_event_id={'1' * 70}{MARKER}",
])
def test_path_and_query_422s_do_not_echo_the_value(bridge: Bridge, path: str) -> None:
    response = bridge.client.get(path)
    assert response.status_code == 422
    assert MARKER not in response.text
    detail = response.json()["detail"]
    assert detail and all({"loc", "msg", "type"} <= set(error) for error in detail)
    assert all("input" not in error for error in detail)


def test_an_invalid_thread_id_on_ingest_does_not_echo_it(bridge: Bridge) -> None:
    response = bridge.post(f"{MARKER} x", turn_events("t", 0))
    assert response.status_code == 422
    assert MARKER not in response.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/threads", "/v1/threads/th",
                                  "/v1/threads/th/events", "/", "/openapi.json",
                                  "/static/app.js"])
def test_head_works_wherever_get_does(bridge: Bridge, path: str) -> None:
    got = bridge.client.get(path) if not path.endswith("/events") else None
    head = bridge.client.head(path)  # the stream's HEAD must not open a stream
    assert head.status_code == 200, path
    assert head.content == b""
    if got is not None:
        assert head.headers["content-type"] == got.headers["content-type"]
    else:
        assert head.headers["content-type"].startswith("text/event-stream")
    assert bridge.client.head("/v1/threads/nope").status_code == 404


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/threads/th/events", {"GET", "HEAD", "POST", "OPTIONS"}),
    ("/v1/threads", {"GET", "HEAD", "OPTIONS"}),
    ("/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("/static/app.js", {"GET", "HEAD", "OPTIONS"}),
])
def test_options_lists_the_methods_of_the_path(bridge: Bridge, path: str,
                                               allow: set[str]) -> None:
    response = bridge.client.options(path)
    assert response.status_code == 204
    assert set(response.headers["allow"].replace(" ", "").split(",")) == allow
    assert bridge.client.options("/nope").status_code == 404


def test_options_needs_no_token_and_reveals_only_methods() -> None:
    with running_bridge(token="t") as guarded:
        response = guarded.client.options("/v1/threads/secret-thread")
        assert response.status_code == 204 and response.content == b""


@pytest.mark.parametrize("seq", [b"true", b"false", b"1.0", b'"1"', b"-1",
                                 b"18446744073709551616", b"1e30"])
def test_a_producer_seq_must_be_a_64_bit_whole_number(bridge: Bridge, seq: bytes) -> None:
    response = bridge.post("seqs", b'{"type":"turn.started","seq":%s}\n' % seq)
    assert response.status_code == 422, (seq, response.text)
    error = response.json()["rejected"][0]["error"]
    assert error.startswith("seq: must be a whole number from 0 to 18446744073709551615")


def test_the_largest_seq_is_accepted_and_true_is_not_seq_1(bridge: Bridge) -> None:
    top = b'{"type":"turn.started","turn_id":"a","seq":18446744073709551615}\n'
    assert bridge.post("top", top).json()["accepted"] == 1
    assert bridge.post("top", top).json()["duplicates"] == 1  # recognised as the same line
    one = b'{"type":"turn.started","turn_id":"b","seq":1}\n'
    assert bridge.post("bool", one).json()["accepted"] == 1
    as_true = bridge.post("bool", one.replace(b'"seq":1', b'"seq":true'))
    assert as_true.status_code == 422  # never taken for a retry of seq 1


def test_the_ingest_request_schema_is_the_protocols_event_schema(bridge: Bridge) -> None:
    document = orjson.loads(bridge.client.get("/openapi.json").content)
    body = document["paths"]["/v1/threads/{thread_id}/events"]["post"]["requestBody"]
    items = body["content"]["application/json"]["schema"]["items"]
    assert items == {"$ref": "#/components/schemas/ProtocolEvent"}
    schemas = document["components"]["schemas"]
    protocol = event_json_schema()
    branches = schemas["ProtocolEvent"]["anyOf"]
    assert len(branches) == len(protocol["anyOf"])
    for name, schema in protocol["$defs"].items():
        assert schemas[name] == orjson.loads(orjson.dumps(schema).replace(
            b"#/$defs/", b"#/components/schemas/")), name
    assert "application/x-ndjson" in body["content"]
