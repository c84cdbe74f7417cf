"""Item 4: readers do not create threads. 10,000 clients opening streams of threads that
do not exist hold no registry capacity (``max_threads``, 10,000 by default), so the next
producer is served, not refused with 503."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.adversarial.support import get_request, server_sockets, spawn_bridge
from tests.bridge_support import ndjson, turn_events, wait_for


async def test_10000_reader_only_connects_then_a_producer_is_served(tmp_path: Path) -> None:
    total, parallel = 10_000, 50
    # Its own process: the clients here do not share an interpreter lock with it.
    bridge = spawn_bridge(tmp_path, "--heartbeat", "600")
    try:
        async def readers(worker: int) -> None:
            for n in range(worker, total, parallel):
                reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
                writer.write(get_request(f"/v1/threads/unknown-{n}/events"))
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                await reader.readuntil(b"retry: ")  # the stream is open, waiting
                writer.close()
                await writer.wait_closed()

        started = time.perf_counter()
        await asyncio.gather(*(readers(w) for w in range(parallel)))
        print(f"\n{total} reader-only connects in {time.perf_counter() - started:.1f} s")
        await asyncio.to_thread(wait_for, lambda: not server_sockets(bridge.port), 30,
                                "the readers' connections to close")
        async with httpx.AsyncClient(base_url=bridge.url) as client:
            assert (await client.get("/v1/threads")).json() == {"threads": []}
            response = await client.post(
                "/v1/threads/producer/events", content=ndjson(turn_events("t1", 1)),
                headers={"content-type": "application/x-ndjson"})
            assert response.status_code == 200, response.text
            threads = (await client.get("/v1/threads")).json()["threads"]
        assert [t["thread_id"] for t in threads] == ["producer"]
    finally:
        bridge.stop()
