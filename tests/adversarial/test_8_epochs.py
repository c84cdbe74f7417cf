"""Item 8 (in-memory broker): after a restart a client's old position, even one that
falls inside the new numbering, gets a reset, never a silent mis-resume."""

from __future__ import annotations

import asyncio

import httpx

from tests.bridge_support import read_events, seq_of, start_bridge, turn_events, wait_for


async def test_a_position_from_before_a_restart_gets_a_reset_inside_the_new_numbering(
        ) -> None:
    bridge = start_bridge(heartbeat=600)
    port = int(bridge.url.rsplit(":", 1)[1])
    try:
        bridge.post("th", turn_events("t1", 2))  # seqs 1-6
        async with httpx.AsyncClient(base_url=bridge.url) as client:
            seen = await read_events(client, "/v1/threads/th/events", 3)
    finally:
        bridge.stop()
    last_id = seen[-1].id
    assert last_id is not None and seq_of(last_id) == 3
    restarted = start_bridge(port=port, heartbeat=600)
    try:
        # The producer carries on: the new numbering passes the client's seq (3).
        restarted.post("th", turn_events("t2", 3, seq0=100))  # seqs 1-8
        async with httpx.AsyncClient(base_url=restarted.url) as client:
            reader = asyncio.create_task(read_events(
                client, "/v1/threads/th/events", 2, headers={"Last-Event-ID": last_id}))
            await asyncio.to_thread(wait_for, lambda: restarted.broker.readers("th") == 1)
            await asyncio.to_thread(restarted.post, "th",
                                    [{"type": "turn.started", "turn_id": "t3"}])
            got = await asyncio.wait_for(reader, 10)
    finally:
        restarted.stop()
    reset = got[0]
    assert reset.event == "reset"
    body = reset.json()
    assert body["reason"] == "epoch_changed"
    assert body["snapshot"]["last_seq"] == 8
    assert reset.id == f"{body['epoch']}:8" and not last_id.startswith(body["epoch"])
    assert body["snapshot"]["turns"][0]["turn_id"] == "t2"
    # Then the stream goes on from the reset's position, in the new epoch: nothing of
    # the new numbering was passed off as the continuation of the old one.
    assert got[1].id == f"{body['epoch']}:9" and got[1].event == "turn.started"
