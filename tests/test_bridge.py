"""The bridge over real HTTP on loopback: order, ids, resume, reset, fan-out, clean-up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.bridge_support import (
    Bridge,
    Message,
    parse_block,
    read_events,
    running_bridge,
    seq_of,
    sse_messages,
    start_bridge,
    turn_events,
    wait_for,
)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with running_bridge(heartbeat=0.2, retry_ms=250) as running:
        yield running


def ids(messages: list[Message]) -> list[int]:
    return [seq_of(m.id) for m in messages if m.id is not None and m.event != "reset"]


async def test_events_arrive_in_order_with_seq_ids(bridge: Bridge) -> None:
    events = turn_events("t1", 5)
    assert bridge.post("th", events[:4]).status_code == 200
    assert bridge.post("th", events[4:]).status_code == 200
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        got = await read_events(client, "/v1/threads/th/events", len(events))
    assert ids(got) == list(range(1, len(events) + 1))
    for message, sent in zip(got, events, strict=True):
        data = message.json()
        assert message.event == sent["type"] == data["type"]
        assert data["seq"] == seq_of(message.id)
        assert data["thread_id"] == "th"  # filled in from the URL
        assert data.get("item", {}).get("id") == sent.get("item", {}).get("id")


async def test_first_frame_sets_retry_and_heartbeats_carry_no_id(bridge: Bridge) -> None:
    async with (httpx.AsyncClient(base_url=bridge.url) as client,
                client.stream("GET", "/v1/threads/quiet/events") as response):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        seen: list[Message] = []
        async for message in sse_messages(response):
            seen.append(message)
            if message.comment == "ping":
                break
    assert seen[0].retry == 250
    assert all(m.id is None for m in seen)


async def test_live_events_reach_a_client_connected_before_them(bridge: Bridge) -> None:
    events = turn_events("t1", 2)
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        reader = asyncio.create_task(read_events(client, "/v1/threads/live/events",
                                                 len(events)))
        await asyncio.to_thread(wait_for, lambda: bridge.broker.readers("live") == 1)
        for event in events:
            await asyncio.to_thread(bridge.post, "live", [event])
        got = await asyncio.wait_for(reader, 10)
    assert [m.event for m in got] == [e["type"] for e in events]
    assert ids(got) == list(range(1, len(events) + 1))


async def test_resume_after_dropped_connection_has_no_duplicate_and_no_gap(
        bridge: Bridge) -> None:
    first = turn_events("t1", 3)
    bridge.post("th", first)
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        part = await read_events(client, "/v1/threads/th/events", 4)
        assert ids(part) == [1, 2, 3, 4]
        # While the client is away, the run goes on.
        second = turn_events("t2", 2, seq0=len(first) + 1)
        bridge.post("th", second)
        total = len(first) + len(second)
        rest = await read_events(client, "/v1/threads/th/events", total - 4,
                                 headers={"Last-Event-ID": part[-1].id or ""})
        by_query = await read_events(client, "/v1/threads/th/events?last_event_id=4",
                                     total - 4)
    assert ids(rest) == list(range(5, total + 1))
    assert ids(by_query) == ids(rest)
    assert [m.data for m in by_query] == [m.data for m in rest]


async def test_header_cursor_wins_over_the_query(bridge: Bridge) -> None:
    bridge.post("th", turn_events("t1", 2))
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        got = await read_events(client, "/v1/threads/th/events?last_event_id=1", 1,
                                headers={"Last-Event-ID": "4"})
    assert ids(got) == [5]


async def test_expired_cursor_gets_a_reset_snapshot_then_live_events() -> None:
    with running_bridge(retention_count=8) as bridge:
        events = turn_events("t1", 10)  # 22 events, 8 retained
        bridge.post("th", events)
        async with httpx.AsyncClient(base_url=bridge.url) as client:
            got = await read_events(client, "/v1/threads/th/events", 1,
                                    headers={"Last-Event-ID": "3"})
            reset = got[0]
            body = reset.json()
            # The reset carries the position it stands for: the client goes on from there.
            assert reset.event == "reset" and reset.id == f"{body['epoch']}:{len(events)}"
            assert body["reason"] == "cursor_expired"
            assert body["seq"] == len(events)
            snapshot = body["snapshot"]
            assert snapshot["last_seq"] == len(events)
            assert snapshot["turns"][0]["status"] == "completed"
            assert len(snapshot["turns"][0]["items"]) == 10
            # After the reset the stream goes on from the snapshot's seq, live.
            await asyncio.to_thread(wait_for, lambda: bridge.thread_state("th").readers == 0)
            reader = asyncio.create_task(read_events(
                client, "/v1/threads/th/events", 2, headers={"Last-Event-ID": "3"}))
            await asyncio.to_thread(wait_for, lambda: bridge.thread_state("th").readers == 1)
            bridge.post("th", turn_events("t2", 0, seq0=100))
            after = await asyncio.wait_for(reader, 10)
        assert after[0].event == "reset"
        assert ids(after) == [len(events) + 1]
        assert after[1].event == "turn.started"


async def test_a_new_client_on_a_thread_whose_start_expired_gets_a_reset() -> None:
    with running_bridge(retention_count=4) as bridge:
        bridge.post("th", turn_events("t1", 3))
        async with httpx.AsyncClient(base_url=bridge.url) as client:
            got = await read_events(client, "/v1/threads/th/events", 1)
        assert got[0].event == "reset"
        assert got[0].json()["reason"] == "history_expired"


async def test_cursor_ahead_of_the_thread_gets_a_reset(bridge: Bridge) -> None:
    bridge.post("th", turn_events("t1", 1))
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        got = await read_events(client, "/v1/threads/th/events", 1,
                                headers={"Last-Event-ID": "900"})
    assert got[0].event == "reset"
    assert got[0].json()["reason"] == "cursor_ahead"
    assert got[0].json()["snapshot"]["last_seq"] == 4


async def test_many_clients_on_one_thread_each_get_every_event(bridge: Bridge) -> None:
    clients = 40
    events = turn_events("t1", 30)
    async with httpx.AsyncClient(
            base_url=bridge.url, limits=httpx.Limits(max_connections=clients + 5)) as client:
        readers = [asyncio.create_task(read_events(client, "/v1/threads/fan/events",
                                                   len(events))) for _ in range(clients)]
        await asyncio.to_thread(wait_for, lambda: bridge.broker.readers("fan") == clients)
        for start in range(0, len(events), 7):
            await asyncio.to_thread(bridge.post, "fan", events[start:start + 7])
        results = await asyncio.wait_for(asyncio.gather(*readers), 30)
    expected = list(range(1, len(events) + 1))
    first = [m.data for m in results[0]]
    for got in results:
        assert ids(got) == expected
        assert [m.data for m in got] == first
    wait_for(lambda: bridge.thread_state("fan").readers == 0, what="readers released")


async def test_disconnect_releases_the_subscription(bridge: Bridge) -> None:
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        streams = [client.stream("GET", "/v1/threads/gone/events") for _ in range(5)]
        responses = [await stream.__aenter__() for stream in streams]
        await asyncio.to_thread(wait_for, lambda: bridge.broker.readers("gone") == 5)
        for stream in streams:
            await stream.__aexit__(None, None, None)
        assert all(r.is_closed for r in responses)
    await asyncio.to_thread(wait_for, lambda: bridge.broker.readers("gone") == 0,
                            what="readers released after disconnect")
    # They were waiting for a thread that never got an event: nothing was created.
    assert bridge.broker.get("gone") is None and bridge.broker.awaited == 0


async def test_shutdown_ends_open_streams() -> None:
    bridge = start_bridge()
    stopped = False
    try:
        async with (httpx.AsyncClient(base_url=bridge.url) as client,
                    client.stream("GET", "/v1/threads/th/events") as response):
            await asyncio.to_thread(wait_for, lambda: bridge.broker.readers("th") == 1)
            stopper = asyncio.create_task(asyncio.to_thread(bridge.stop))
            async for _ in sse_messages(response):
                pass  # ends when the server closes the stream
            await asyncio.wait_for(stopper, 15)
            stopped = True
    finally:
        if not stopped:
            bridge.stop()


def test_thread_list_and_state(bridge: Bridge) -> None:
    bridge.post("a", turn_events("t1", 2, fail_item=2))
    bridge.post("b", turn_events("t1", 1)[:2])  # still running item 1
    listing = {t["thread_id"]: t for t in bridge.client.get("/v1/threads").json()["threads"]}
    assert listing["a"]["status"] == "completed"
    assert listing["a"]["last_seq"] == 6
    assert listing["b"]["status"] == "running"
    assert listing["b"]["running_turn"] == "t1"
    assert listing["b"]["current_item"]["description"] == "step 1 of t1"
    # Each line is made once per state (pages poll the list): never a stale one.
    bridge.post("b", turn_events("t1", 1)[2:])
    again = {t["thread_id"]: t for t in bridge.client.get("/v1/threads").json()["threads"]}
    assert (again["b"]["status"], again["b"]["current_item"]) == ("completed", None)
    assert again["a"] == listing["a"]
    state = bridge.client.get("/v1/threads/a").json()
    turn = state["turns"][0]
    assert turn["failed_items"] == 1
    assert [i["status"] for i in turn["items"]] == ["completed", "failed"]
    assert turn["items"][1]["failed"] is True
    assert turn["items"][1]["error"]["message"] == "exit 1"
    assert turn["usage"]["input_tokens"] == 10
    assert bridge.client.get("/v1/threads/nope").status_code == 404


async def test_a_position_from_another_epoch_gets_a_reset_even_inside_the_numbering(
        bridge: Bridge) -> None:
    bridge.post("th", turn_events("t1", 3))
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        first = await read_events(client, "/v1/threads/th/events", 1)
        epoch = first[0].id.split(":")[0] if first[0].id else ""
        # Same numbering, same epoch: an exact resume.
        same = await read_events(client, "/v1/threads/th/events", 1,
                                 headers={"Last-Event-ID": f"{epoch}:2"})
        assert same[0].event != "reset" and seq_of(same[0].id) == 3
        # A seq inside today's numbering but from another epoch (a restarted bridge).
        other = await read_events(client, "/v1/threads/th/events", 1,
                                  headers={"Last-Event-ID": "0badc0de:2"})
    assert other[0].event == "reset" and other[0].json()["reason"] == "epoch_changed"


@pytest.mark.parametrize("value", ["abc", "\u00b2", "9" * 5000, "-1", "1:2:3", "x:y"])
async def test_malformed_or_absurd_positions_get_a_reset_never_an_error(
        bridge: Bridge, value: str) -> None:
    bridge.post("th", turn_events("t1", 1))
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        by_header = await read_events(client, "/v1/threads/th/events", 1,
                                      headers={"Last-Event-ID": value.encode()})
        by_query = await read_events(client, "/v1/threads/th/events", 1,
                                     params={"last_event_id": value[:64]})
    for got in (by_header, by_query):
        assert got[0].event == "reset"
        assert got[0].json()["reason"] in ("cursor_unknown", "cursor_ahead")


def test_parse_block_reads_multi_line_data() -> None:
    message = parse_block("id: 3\nevent: x\ndata: a\ndata: b")
    assert (message.id, message.event, message.data) == ("3", "x", "a\nb")


async def test_a_big_batch_arrives_whole_and_in_order(bridge: Bridge) -> None:
    events = turn_events("t1", 1500)  # 3002 lines, parsed off the event loop
    response = bridge.post("big", events)
    assert response.status_code == 200
    assert response.json()["accepted"] == len(events)
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        got = await read_events(client, "/v1/threads/big/events", len(events))
    assert ids(got) == list(range(1, len(events) + 1))
    assert [m.json()["type"] for m in got] == [e["type"] for e in events]
