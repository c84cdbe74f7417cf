"""A reachable Redis that refuses: full (``maxmemory`` under ``noeviction``), a replica
in a failover (``READONLY``), busy with a long script (``BUSY``). No route may answer
500: a write answers 503 with ``Retry-After`` and says why (never quoting events), reads
that Redis still serves answer, readiness says not ready, the background parts go on,
and once Redis takes writes again a retry is accepted once, with nothing lost.

Each test runs a redis-server of its own: they reconfigure it at runtime.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import redis

from otel_events import EventEmitter
from otel_events.bridge.broker import Batch
from otel_events.bridge.redis import RedisBroker
from otel_events.redis_sink import RedisSink
from tests.bridge_support import Bridge, read_events, running_bridge, turn_events, wait_for
from tests.conftest import Telemetry
from tests.redis.server import RedisServer, free_port, stream_seqs
from tests.test_broker_contract import lines
from tests.test_http_sink import run_turn

SECRET = "do-not-echo-this-text"


def fill(client: redis.Redis) -> None:
    """Memory over ``maxmemory`` with ``noeviction``: every write that grows is refused."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")


def unfill(client: redis.Redis) -> None:
    client.config_set("maxmemory", "0")


def demote(client: redis.Redis) -> None:
    """A replica of a primary that is not there: it serves reads, refuses writes."""
    client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))


def promote(client: redis.Redis) -> None:
    client.execute_command("REPLICAOF", "NO", "ONE")


def batch(turn: str) -> list[dict[str, Any]]:
    events = turn_events(turn, items=2)
    # Content that must never come back in an error text.
    events[1]["item"]["text"] = SECRET  # type: ignore[index]
    return events


def assert_refused(response: httpx.Response, words: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers.get("retry-after") == "1"
    detail = response.json()["detail"]
    assert words in detail, detail
    assert SECRET not in response.text and "EVALSHA" not in response.text


def check_reads(bridge: Bridge, thread: str, last_seq: int) -> None:
    """What Redis still serves while it refuses writes is served."""
    threads = bridge.client.get("/v1/threads")
    assert threads.status_code == 200, threads.text
    assert [t["thread_id"] for t in threads.json()["threads"]] == [thread]
    state = bridge.client.get(f"/v1/threads/{thread}")
    assert state.status_code == 200 and state.json()["last_seq"] == last_seq


def check_refusal_and_recovery(bridge: Bridge, server: RedisServer, refuse: Any,
                               restore: Any, words: str) -> None:
    first, second = batch("t1"), batch("t2")
    assert bridge.post("th", first).status_code == 200
    client = server.client()
    refuse(client)
    try:
        assert_refused(bridge.post("th", second), words)
        assert_refused(bridge.post("other", second), words)  # a new thread alike
        check_reads(bridge, "th", len(first))
        ready = bridge.client.get("/readyz")
        assert ready.status_code == 503, ready.text
    finally:
        restore(client)
    wait_for(lambda: bridge.client.get("/readyz").status_code == 200, what="ready again")
    # The producer's retry goes through, once; nothing earlier was lost or doubled.
    retried = bridge.post("th", second)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["accepted"], retried.json()["duplicates"]) == (len(second), 0)
    assert stream_seqs(server.client(), "th") == list(range(1, len(first) + len(second) + 1))
    assert bridge.post("th", second).json()["duplicates"] == len(second)


def test_redis_out_of_memory_answers_503_and_the_retry_is_accepted_once(
        scratch_redis: RedisServer) -> None:
    with running_bridge(broker_url=scratch_redis.url) as bridge:
        check_refusal_and_recovery(bridge, scratch_redis, fill, unfill, "out of memory")


def test_redis_read_only_in_a_failover_answers_503_and_the_retry_is_accepted_once(
        scratch_redis: RedisServer) -> None:
    with running_bridge(broker_url=scratch_redis.url) as bridge:
        check_refusal_and_recovery(bridge, scratch_redis, demote, promote, "read-only replica")


def test_redis_busy_with_a_script_answers_503_on_every_route(scratch_redis: RedisServer) -> None:
    client = scratch_redis.client()
    # Redis answers BUSY to others once a script has run this long.
    client.config_set("busy-reply-threshold", "50")
    with running_bridge(broker_url=scratch_redis.url) as bridge:
        assert bridge.post("th", batch("t1")).status_code == 200
        done = threading.Event()

        def long_script() -> None:
            # Its own connection: a script that spins on Redis's clock for 3 s (a
            # script sees no other client, so it cannot be told to end sooner).
            blocker = redis.Redis(port=scratch_redis.port, socket_timeout=30.0)
            try:
                blocker.eval("local t = redis.call('TIME') "
                             "while true do local n = redis.call('TIME') "
                             "if tonumber(n[1]) - tonumber(t[1]) >= 3 then break end end "
                             "return 1", 0)
            finally:
                blocker.close()
                done.set()

        runner = threading.Thread(target=long_script, daemon=True)
        runner.start()

        def busy() -> bool:
            try:
                client.get("probe")
            except redis.exceptions.ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False

        wait_for(busy, 5.0, "Redis to answer BUSY")
        responses = [bridge.post("th", batch("t2")), bridge.client.get("/v1/threads"),
                     bridge.client.get("/v1/threads/th")]
        ready = bridge.client.get("/readyz")
        still_busy = busy()
        assert done.wait(15.0)
        runner.join(5.0)
        assert still_busy, "the script ended before the requests: the test proves nothing"
        for response in responses:
            assert_refused(response, "busy")
        assert ready.status_code == 503
        # Afterwards every route answers again.
        assert bridge.post("th", batch("t2")).status_code == 200
        check_reads(bridge, "th", 2 * len(batch("t1")))


async def test_an_open_stream_outlives_a_refusal_and_misses_nothing(
        scratch_redis: RedisServer) -> None:
    with running_bridge(broker_url=scratch_redis.url) as bridge:
        first, second = batch("t1"), batch("t2")
        assert bridge.post("th", first).status_code == 200
        async with httpx.AsyncClient(base_url=bridge.url, timeout=30.0) as client:
            total = len(first) + len(second)
            reading = asyncio.create_task(read_events(client, "/v1/threads/th/events", total))
            client_sync = scratch_redis.client()
            await asyncio.to_thread(demote, client_sync)
            try:
                refused = await asyncio.to_thread(bridge.post, "th", second)
                assert_refused(refused, "read-only replica")
            finally:
                await asyncio.to_thread(promote, client_sync)
            accepted = await asyncio.to_thread(bridge.post, "th", second)
            assert accepted.status_code == 200, accepted.text
            messages = await asyncio.wait_for(reading, 20.0)
        assert [int((m.id or "").rsplit(":", 1)[1]) for m in messages] == \
            list(range(1, total + 1))


async def test_the_sweep_and_the_broker_absorb_refusals(scratch_redis: RedisServer) -> None:
    broker = RedisBroker(scratch_redis.url)
    client = scratch_redis.client()
    try:
        await broker.append("th", lines(batch("t1")))
        reader = broker.reader("th", None)
        first = await reader.next()
        assert isinstance(first, Batch)
        for refuse, restore in ((demote, promote), (fill, unfill)):
            refuse(client)
            try:
                assert await broker.expire() == 0  # refreshes the reader's TTLs: a write
                assert await broker.ready() is False
            finally:
                restore(client)
            await broker.expire()
            assert await broker.ready() is True
        reader.close()
    finally:
        await broker.aclose()


async def test_redis_sink_keeps_and_retries_a_batch_redis_refuses(
        scratch_redis: RedisServer, telemetry: Telemetry) -> None:
    client = scratch_redis.client()
    fill(client)
    sink = RedisSink(scratch_redis.url, backoff=0.02, max_backoff=0.1)
    emitter = EventEmitter("agent", tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider, sinks=[sink])
    try:
        run_turn(emitter, 3)
        # Refused twice at least: the batch is kept in hand, not counted as lost.
        wait_for(lambda: sink.requests >= 2, what="the sink to retry")
        assert (sink.sent, sink.dropped) == (0, 0)
    finally:
        unfill(client)
    published = emitter.log.next_seq - 1
    emitter.close(timeout=10.0)
    assert (sink.sent, sink.dropped) == (published, 0)
    assert stream_seqs(scratch_redis.client(), "agent") == list(range(1, published + 1))


def test_a_refusal_is_named_by_its_code_and_its_text_never_repeated() -> None:
    from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

    from otel_events.redis_sink import refusal

    # redis-py's own classes (it strips the code from their text).
    assert refusal(OutOfMemoryError(f"command not allowed {SECRET}")) == \
        "Redis refused the write: out of memory (maxmemory)"
    assert "read-only replica" in (refusal(ReadOnlyError(SECRET)) or "")
    # A plain ResponseError by its first word, in a pipeline too (where redis-py puts
    # the command and its arguments before it).
    busy = ResponseError(f"Command # 1 (EVALSHA abc 1 k {SECRET}) of pipeline caused "
                         "error: BUSY Redis is busy running a script.")
    assert refusal(busy) == "Redis is busy running a script"
    assert "persist" in (refusal(ResponseError(f"MISCONF {SECRET}")) or "")
    # Anything else is not a refusal that passes: it is not answered as one.
    assert refusal(ResponseError(f"ERR Error running script: {SECRET}")) is None
    assert refusal(ResponseError(f"OOMPH {SECRET}")) is None
    assert refusal(ValueError("OOM")) is None
