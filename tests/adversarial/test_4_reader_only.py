"""Item 4: readers do not create threads. 10,000 clients opening streams of threads that
do not exist hold no registry capacity, so the next producer is served."""

from __future__ import annotations

import asyncio
import time

from tests.adversarial.support import get_request
from tests.bridge_support import running_bridge, turn_events, wait_for


async def test_10000_reader_only_connects_then_a_producer_is_served() -> None:
    total, parallel = 10_000, 50
    with running_bridge(max_threads=100, heartbeat=600) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])

        async def readers(worker: int) -> None:
            for n in range(worker, total, parallel):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(get_request(f"/v1/threads/unknown-{n}/events"))
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                await reader.readuntil(b"retry: ")  # the stream is open, waiting
                writer.close()
                await writer.wait_closed()

        started = time.perf_counter()
        await asyncio.gather(*(readers(w) for w in range(parallel)))
        print(f"\n{total} reader-only connects in {time.perf_counter() - started:.1f} s")
        assert len(bridge.broker) == 0
        await asyncio.to_thread(wait_for, lambda: bridge.broker.awaited == 0, 20,
                                "the waiting readers to leave")
        response = await asyncio.to_thread(bridge.post, "producer", turn_events("t1", 1))
        assert response.status_code == 200, response.text
        assert [t.thread_id for t in bridge.broker] == ["producer"]
