"""Readers leave nothing behind; slow readers get a reset, never a silent gap; expiry."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from otel_events.bridge.broker import Position
from otel_events.bridge.memory import MemoryBroker, MemoryThread
from otel_events.bridge.sse import event_stream
from otel_events.protocol import parse_event
from tests.bridge_support import parse_block, running_bridge, turn_events, wait_for


async def test_10000_connect_disconnect_cycles_leave_no_subscriber_and_no_memory() -> None:
    with running_bridge(heartbeat=60) as bridge:
        bridge.post("th", turn_events("t1", 3))
        thread = bridge.thread_state("th")
        log = thread.log
        port = int(bridge.url.rsplit(":", 1)[1])
        request = b"GET /v1/threads/th/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

        async def cycles(count: int) -> None:
            # A bare socket client: the cost under test is the server's, not a client's.
            for _ in range(count):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                seen = b""
                while b"turn.completed" not in seen:
                    chunk = await reader.read(65536)
                    assert chunk, "the stream ended early"
                    seen = seen[-32:] + chunk
                writer.close()
                await writer.wait_closed()

        async def run(total: int, parallel: int = 20) -> None:
            await asyncio.gather(*(cycles(total // parallel) for _ in range(parallel)))

        def settled() -> dict[str, int]:
            wait_for(lambda: thread.readers == 0, what="every reader released")
            gc.collect()
            counts: dict[str, int] = {}
            for obj in gc.get_objects():
                name = type(obj).__name__
                counts[name] = counts.get(name, 0) + 1
            return counts

        await run(1000)  # warm-up: caches, pools, lazily built objects
        before = await asyncio.to_thread(settled)
        await run(10_000)
        after = await asyncio.to_thread(settled)
        assert thread.readers == 0
        # One shared wake-up per loop, however many readers came and went, and no
        # reader left parked on the thread.
        assert log.waiting <= 1
        assert thread.log.parked == 0
        # Anything kept per connection would show up 10,000 times over.
        grown = {name: after.get(name, 0) - count for name, count in before.items()
                 if after.get(name, 0) - count > 100}
        grown.update({name: count for name, count in after.items()
                      if name not in before and count > 100})
        assert not grown, f"objects left behind: {grown}"
        assert sum(after.values()) - sum(before.values()) < 2000


def _broker(capacity: int, batch: int = 512) -> tuple[MemoryBroker, MemoryThread]:
    broker = MemoryBroker(retention_count=capacity, batch=batch)
    return broker, broker.get_or_create("th")


def _publish(thread: MemoryThread, events: list[dict[str, object]]) -> None:
    # As the ingest endpoint does: the typed event, and the object as sent to encode.
    for event in events:
        thread.publish(parse_event(event), None, dict(event))


async def test_a_reader_that_fell_behind_gets_a_reset_then_goes_on() -> None:
    broker, thread = _broker(capacity=8, batch=4)
    stream = event_stream(broker.reader("th", None), retry_ms=1000)
    head = await anext(stream)
    assert head == b"retry: 1000\n\n"
    _publish(thread, turn_events("t1", 3))  # 8 events: fits
    first = await anext(stream)
    assert first.count(b"\n\n") == 4  # a batch of 4 frames
    _publish(thread, turn_events("t2", 10))  # the ring overwrites what it had not read
    reset = parse_block((await anext(stream)).decode().strip())
    assert reset.event == "reset" and reset.id == f"{thread.epoch}:{thread.log.next_seq - 1}"
    assert reset.json()["reason"] == "fell_behind"
    assert reset.json()["seq"] == thread.log.next_seq - 1
    _publish(thread, [{"type": "turn.started", "turn_id": "t3"}])
    live = parse_block((await anext(stream)).decode().strip())
    assert live.id == f"{thread.epoch}:{thread.log.next_seq - 1}"
    await stream.aclose()
    assert thread.readers == 0


async def test_transient_events_are_skipped_by_a_lagging_reader_not_lifecycle_ones() -> None:
    broker, thread = _broker(capacity=64, batch=1000)
    stream = event_stream(broker.reader("th", Position(0)), retry_ms=1000)
    await anext(stream)
    updates = [{"type": "item.updated", "item": {"id": "i", "type": "x"}}] * 40
    _publish(thread, [{"type": "turn.started"}, *updates, {"type": "turn.completed"}])
    data = await anext(stream)
    await stream.aclose()
    # 42 events, more than half the ring behind: the updates are passed over.
    assert data.count(b"event: item.updated") == 0
    assert data.count(b"event: turn.started") == 1
    assert data.count(b"event: turn.completed") == 1


async def test_caught_up_readers_share_one_joined_chunk() -> None:
    broker, thread = _broker(capacity=64)
    streams = [event_stream(broker.reader("th", Position(0)), retry_ms=1000)
               for _ in range(3)]
    for stream in streams:
        await anext(stream)
    _publish(thread, turn_events("t1", 2))
    chunks = [await anext(stream) for stream in streams]
    assert chunks[0] is chunks[1] is chunks[2]
    for stream in streams:
        await stream.aclose()


async def test_a_reader_of_an_unknown_thread_waits_without_creating_it() -> None:
    broker = MemoryBroker(max_threads=1)
    stream = event_stream(broker.reader("later", None), retry_ms=1000)
    await anext(stream)
    waiting = asyncio.create_task(anext(stream))
    for _ in range(1000):  # parked on the thread's first event
        if not broker.readers("later") == 0:
            break
        await asyncio.sleep(0)
    assert len(broker) == 0  # no registry capacity held by a reader
    _publish(broker.get_or_create("later"), turn_events("t1", 0))
    data = await asyncio.wait_for(waiting, 10)
    assert b"event: turn.started" in data
    await stream.aclose()
    assert broker.readers("later") == 0 and broker.awaited == 0


async def test_idle_threads_expire_unless_read() -> None:
    registry = MemoryBroker(idle_expiry=10.0)
    idle = registry.get_or_create("idle")
    read = registry.get_or_create("read")
    _publish(read, turn_events("t1", 0))
    reader = registry.reader("read", None)
    assert await reader.next() is not None  # attached: a reader of "read" now
    now = idle.last_active + 11
    assert registry.sweep(now) == 1
    assert registry.get("idle") is None and idle.log.closed
    assert registry.get("read") is read
    reader.close()
    assert read.readers == 0
    assert registry.sweep(read.last_active + 11) == 1
    assert len(registry) == 0


def test_thread_count_is_bounded() -> None:
    registry = MemoryBroker(max_threads=2, idle_expiry=None)
    registry.get_or_create("a")
    registry.get_or_create("b")
    try:
        registry.get_or_create("c")
    except RuntimeError as exc:
        assert "2 threads" in str(exc)
    else:
        raise AssertionError("a third thread was created")


def test_a_stalled_client_is_disconnected_after_the_send_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    with running_bridge(send_timeout=0.5) as bridge:
        port = int(bridge.url.rsplit(":", 1)[1])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /v1/threads/th/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        wait_for(lambda: bridge.broker.readers("th") == 1)
        big = [{"type": "item.completed", "item": {"id": f"i{n}", "type": "x",
                                                   "text": "y" * 2000}} for n in range(2000)]
        for start in range(0, len(big), 200):  # far more than the socket buffers hold
            bridge.post("th", big[start:start + 200])
        wait_for(lambda: bridge.thread_state("th").readers == 0, what="the stalled reader dropped")
        stalled.close()
    assert "did not take a write" in caplog.text
    assert "Traceback" not in caplog.text


def test_the_snapshot_is_encoded_once_per_seq() -> None:
    _, thread = _broker(capacity=8)
    _publish(thread, turn_events("t1", 1))
    first = thread.snapshot_json()
    assert thread.snapshot_json() is first
    _publish(thread, [{"type": "turn.started", "turn_id": "t2"}])
    assert thread.snapshot_json() is not first
    assert b'"running_turn":"t2"' in thread.snapshot_json()


def test_a_thread_holds_about_its_retained_bytes_and_no_more() -> None:
    import tracemalloc

    _, thread = _broker(capacity=512)
    event = {"type": "item.completed", "item": {"id": "i", "type": "x", "text": "y" * 300}}
    tracemalloc.start()
    try:
        _publish(thread, [event] * 2000)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    entry = thread.log.get(thread.log.next_seq - 1)
    assert entry is not None
    # The JSON of each retained event, with room for the objects around them; orjson's
    # 4 KiB buffers would make this about 2 MiB.
    per_event = len(entry.json)
    assert held < 512 * per_event * 2, f"{held} bytes for 512 events of {per_event}"
