"""RedisSink against a real Redis: delivery, the bridge's view of it, Redis down and back,
Redis never there, and retries recognised across paths."""

from __future__ import annotations

import secrets

import orjson

from otel_events import EventEmitter
from otel_events.bridge.batch import parse_batch
from otel_events.bridge.broker import Batch
from otel_events.bridge.redis import RedisBroker
from otel_events.redis_sink import RedisSink
from tests.bridge_support import wait_for
from tests.conftest import Telemetry
from tests.redis.server import RedisServer, free_port
from tests.test_broker_contract import read_seqs
from tests.test_http_sink import run_turn


def make_emitter(telemetry: Telemetry, thread: str, sink: RedisSink,
                 **options: int) -> EventEmitter:
    return EventEmitter(thread, tracer_provider=telemetry.tracer_provider,
                        meter_provider=telemetry.meter_provider, sinks=[sink], **options)


async def test_events_reach_redis_as_the_bridge_serves_them(
        redis_server: RedisServer, telemetry: Telemetry) -> None:
    prefix = f"sink-{secrets.token_hex(4)}"
    sink = RedisSink(redis_server.url, prefix=prefix, retention_count=8)
    emitter = make_emitter(telemetry, "agent", sink)
    run_turn(emitter, 100)
    published = emitter.log.next_seq - 1
    emitter.close(timeout=5.0)
    assert (sink.sent, sink.dropped) == (published, 0)
    broker = RedisBroker(redis_server.url, prefix=prefix, retention_count=8)
    try:
        state = orjson.loads(await broker.snapshot("agent") or b"null")
        assert state["last_seq"] == published and state["status"] == "completed"
        assert len(state["turns"][0]["items"]) == 100
        assert state["usage"]["input_tokens"] == 3
        # The sink does not fold; a replica's sweep checkpoints, so the stream is
        # trimmed back towards the retention (whole macro-nodes of 100 entries at a time).
        stream = f"{prefix}:{{agent}}:s"
        assert await broker.client.xlen(stream) == published
        await broker.expire()
        assert int(await broker.client.hget(f"{prefix}:{{agent}}:m", "ck")) == published
        assert await broker.client.xlen(stream) <= published - 100
        # Replay honours the retention, and what it serves is the emitter's events.
        reader = broker.reader("agent", None)
        reset = await reader.next()
        assert not isinstance(reset, Batch) and reset is not None
        assert (reset.reason, reset.seq) == ("history_expired", published)
        reader.close()
    finally:
        await broker.aclose()


async def test_redis_down_then_back_delivers_everything_once(
        own_redis: RedisServer, telemetry: Telemetry) -> None:
    sink = RedisSink(own_redis.url, backoff=0.02, max_backoff=0.2, timeout=1.0)
    emitter = make_emitter(telemetry, "outage", sink)
    run_turn(emitter, 1)
    wait_for(lambda: sink.sent == emitter.log.next_seq - 1, what="the first turn")
    own_redis.kill()
    requests = sink.requests
    run_turn(emitter, 4)  # never raises, never waits
    # Two attempts while Redis is down: both failed, and the batch is still in hand.
    wait_for(lambda: sink.requests >= requests + 2, what="the sink to retry")
    own_redis.start()
    published = emitter.log.next_seq - 1
    emitter.close(timeout=20.0)
    assert (sink.sent, sink.dropped) == (published, 0)
    broker = RedisBroker(own_redis.url)
    try:
        reader = broker.reader("outage", None)
        assert await read_seqs(reader, published) == list(range(1, published + 1))
        reader.close()
    finally:
        await broker.aclose()


def test_redis_never_there_counts_what_was_lost(telemetry: Telemetry) -> None:
    sink = RedisSink(f"redis://127.0.0.1:{free_port()}/0", backoff=0.01, max_backoff=0.05,
                     timeout=0.5)
    emitter = make_emitter(telemetry, "never", sink, buffer_size=16)
    run_turn(emitter, 20)
    published = emitter.log.next_seq - 1
    emitter.close(timeout=0.3)
    assert sink.sent == 0 and sink.dropped == published


async def test_a_line_the_sink_wrote_is_recognised_when_posted_again(
        redis_server: RedisServer, telemetry: Telemetry) -> None:
    prefix = f"sink-{secrets.token_hex(4)}"
    sink = RedisSink(redis_server.url, prefix=prefix)
    emitter = make_emitter(telemetry, "both", sink)
    run_turn(emitter, 2)
    entries, _, _, _ = emitter.log.read(1, limit=100)
    emitter.close(timeout=5.0)
    assert sink.sent == len(entries)
    broker = RedisBroker(redis_server.url, prefix=prefix)
    try:
        body = b"".join(entry.json + b"\n" for entry in entries)
        lines = parse_batch(body, "application/x-ndjson", "both").events
        appended = await broker.append("both", lines)  # an HttpSink retry, say
        assert (appended.accepted, appended.duplicates) == (0, len(entries))
    finally:
        await broker.aclose()


async def test_a_forked_child_appends_its_events_to_redis(
        redis_server: RedisServer, telemetry: Telemetry) -> None:
    # A RedisSink started before a fork restarts in the child (fork copies no thread);
    # redis-py gives the child connections of its own.
    from tests.test_fork import fork_and_run

    prefix = f"fork-{secrets.token_hex(4)}"
    sink = RedisSink(redis_server.url, prefix=prefix)
    emitter = make_emitter(telemetry, "forked", sink)
    with emitter.turn() as turn:
        turn.item("reasoning", "parent step").complete()
    assert fork_and_run(emitter, "child step") == 0
    emitter.close(timeout=5.0)
    broker = RedisBroker(redis_server.url, prefix=prefix)
    try:
        state = orjson.loads(await broker.snapshot("forked") or b"null")
        steps = [item["description"] for t in state["turns"] for item in t["items"]]
        assert sorted(steps) == ["child step", "parent step"]
    finally:
        await broker.aclose()
