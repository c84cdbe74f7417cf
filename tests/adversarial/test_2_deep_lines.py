"""Item 2: every line is accepted or refused on its own before anything of its batch is
published; a deep but valid line is a per-line 422 reason, never a 500; retries are
idempotent; no input makes the bridge's state unreadable."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.bridge_support import (
    Bridge,
    read_events,
    running_bridge,
    seq_of,
    turn_events,
)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with running_bridge() as running:
        yield running


def nested(depth: int) -> bytes:
    """A JSON value ``depth`` arrays deep: the JSON parser takes up to 1024 levels."""
    return b"[" * depth + b"1" + b"]" * depth


def deep_line(seq: int, depth: int) -> bytes:
    return (b'{"type":"item.updated","seq":%d,"item":{"id":"i","type":"x","deep":%s}}'
            % (seq, nested(depth)))


@pytest.mark.parametrize("depth", [100, 300, 1000])
async def test_a_deep_line_is_refused_alone_and_a_retry_is_idempotent(
        bridge: Bridge, depth: int) -> None:
    body = b"\n".join([b'{"type":"turn.started","turn_id":"t","seq":1}', deep_line(2, depth),
                       b'{"type":"turn.completed","turn_id":"t","seq":3}'])
    first = bridge.post("th", body)
    assert first.status_code == 207, first.text
    result = first.json()
    assert (result["accepted"], result["duplicates"]) == (2, 0)
    assert [r["line"] for r in result["rejected"]] == [2]
    assert "deeper than 64 levels" in result["rejected"][0]["error"]
    # The producer (an HttpSink) sends the same batch again: nothing twice, nothing lost.
    again = bridge.post("th", body)
    assert again.status_code == 207, again.text
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 2)
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        got = await read_events(client, "/v1/threads/th/events", 2)
        # The thread's state, and a reset that carries it, are still made.
        reset = await read_events(client, "/v1/threads/th/events", 1,
                                  headers={"Last-Event-ID": "999"})
    assert [(seq_of(m.id), m.event) for m in got] == [(1, "turn.started"),
                                                      (2, "turn.completed")]
    assert reset[0].event == "reset"
    assert bridge.client.get("/v1/threads/th").json()["turns"][0]["status"] == "completed"


def test_a_deep_element_of_a_json_array_is_refused_alone(bridge: Bridge) -> None:
    body = b"[%s,%s]" % (b'{"type":"turn.started","turn_id":"t"}', deep_line(7, 300))
    response = bridge.client.post("/v1/threads/arr/events", content=body,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 207, response.text
    assert response.json()["accepted"] == 1
    assert response.json()["rejected"][0]["line"] == 2


def test_a_line_at_the_depth_limit_is_accepted(bridge: Bridge) -> None:
    # The event object is level 1, "item" 2, the arrays of "deep" 3 and on: 62 arrays
    # make 64 levels.
    response = bridge.post("th", deep_line(1, 62))
    assert response.status_code == 200, response.text
    assert bridge.post("th2", deep_line(1, 63)).status_code == 422


async def test_counts_summed_past_64_bits_do_not_break_the_thread_state(
        bridge: Bridge) -> None:
    # Each count fits 64 bits; their sum in the folded state does not.
    big = 2**64 - 1
    events = turn_events("t1", 0) + turn_events("t2", 0, seq0=3)
    for event in events:
        if event["type"] == "turn.completed":
            event["usage"] = {"input_tokens": big, "cached_input_tokens": 0,
                              "output_tokens": big}
    assert bridge.post("th", events).status_code == 200
    state = bridge.client.get("/v1/threads/th")
    assert state.status_code == 200
    assert json.loads(state.content)["usage"]["input_tokens"] == 2 * big
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        reset = await read_events(client, "/v1/threads/th/events", 1,
                                  headers={"Last-Event-ID": "999"})
    assert reset[0].event == "reset"
    assert bridge.client.get("/v1/threads").status_code == 200


def test_millions_of_bad_lines_get_an_answer_of_bounded_size(bridge: Bridge) -> None:
    # 4 MiB of two-byte lines: reporting each would answer ~120 MB (measured before).
    lines = 2 * 1024 * 1024 - 16
    body = b"{}\n" + b"1\n" * (lines - 1)
    response = bridge.post("th", body)
    assert response.status_code == 422
    result = response.json()
    assert result["rejected_count"] == lines
    assert [r["line"] for r in result["rejected"]] == list(range(1, 1001))
    assert len(response.content) < 100_000
