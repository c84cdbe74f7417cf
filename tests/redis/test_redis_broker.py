"""RedisBroker's own parts: the state checkpoint, two brokers (replicas) in one process,
and a Redis outage seen from the broker."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from otel_events.bridge.broker import Batch, BrokerUnavailable, Position, Reset
from otel_events.bridge.redis import RedisBroker, decode_state, encode_state
from otel_events.bridge.snapshot import ThreadSnapshot
from otel_events.protocol import parse_event
from tests.bridge_support import turn_events
from tests.redis.server import RedisServer, require_redis_server
from tests.test_broker_contract import lines, next_of, plain, read_seqs


def varied_events() -> list[dict[str, object]]:
    """Turns that pass max_turns, failures, loose items, progress, token counts."""
    events: list[dict[str, object]] = []
    for n in range(1, 8):
        events += turn_events(f"t{n}", items=3, fail_item=2 if n % 3 == 0 else None)
        events.insert(-1, {"type": "progress.update", "turn_id": f"t{n}",
                           "item_id": f"t{n}-item-3", "fraction": 0.5, "message": "half"})
        events.insert(-1, {"type": "token.count", "turn_id": f"t{n}",
                           "usage": {"input_tokens": n, "output_tokens": 1}})
    events.append({"type": "item.started", "item": {"id": "loose", "type": "reasoning"}})
    events.append({"type": "turn.started", "turn_id": "open"})
    events.append({"type": "error", "message": "boom"})
    return events


def test_the_checkpoint_keeps_everything_the_fold_goes_on_from() -> None:
    events = [parse_event(orjson.dumps(e)) for e in varied_events()]
    whole = ThreadSnapshot("th", max_turns=4, max_items=2)
    for cut in range(len(events) + 1):
        # Fold to ``cut``, checkpoint, restore, fold the rest: the same as in one go.
        resumed = ThreadSnapshot("th", max_turns=4, max_items=2)
        for seq, event in enumerate(events[:cut], 1):
            resumed.apply(event, seq)
        restored = decode_state(encode_state(resumed))
        assert restored.to_dict() == resumed.to_dict()
        for seq, event in enumerate(events[cut:], cut + 1):
            restored.apply(event, seq)
        if cut == 0:
            for seq, event in enumerate(events, 1):
                whole.apply(event, seq)
        assert restored.to_dict() == whole.to_dict(), cut
    assert whole.turns_dropped > 0 and whole.running_turn is not None


def test_a_field_the_checkpoint_cannot_keep_fails_loudly() -> None:
    snapshot = ThreadSnapshot("th")
    snapshot.new_field = object()  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        encode_state(snapshot)


async def test_another_replica_builds_the_same_state_from_checkpoint_and_tail(
        redis_server: RedisServer) -> None:
    prefix = f"state-{secrets.token_hex(4)}"
    a = RedisBroker(redis_server.url, prefix=prefix, retention_count=4, checkpoint_every=3)
    b = RedisBroker(redis_server.url, prefix=prefix, retention_count=4)
    try:
        for event in varied_events():  # one request per event, as a slow producer sends
            await a.append("th", lines([event]))
        meta = await a.client.hgetall(f"{prefix}:{{th}}:m")
        top, checkpoint = int(meta[b"top"]), int(meta[b"ck"])
        assert top - checkpoint < 3 and checkpoint > 0
        # The stream holds everything after the checkpoint, whatever the retention.
        held = await a.client.xrange(f"{prefix}:{{th}}:s", min=checkpoint + 1)
        assert len(held) == top - checkpoint
        assert await b.snapshot("th") == await a.snapshot("th")
        assert await b.summaries() == await a.summaries()
        # A retry that lands on the other replica is recognised there.
        retry = lines([e for e in varied_events() if "seq" in e][-1:])  # in the window
        assert (await b.append("th", retry)).duplicates == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_broker_through_a_redis_outage(own_redis: RedisServer) -> None:
    broker = RedisBroker(own_redis.url, timeout=2.0)
    try:
        await broker.append("th", lines(plain(2, "item.started")))
        reader = broker.reader("th", None)
        first = await next_of(reader)
        assert isinstance(first, Batch)
        parked = asyncio.create_task(next_of(reader, 60))
        own_redis.kill()
        with pytest.raises(BrokerUnavailable):
            await broker.append("th", lines(plain(1)))
        assert not await broker.ready()
        with pytest.raises(BrokerUnavailable):
            await broker.snapshot("th")
        assert not parked.done()  # the reader outlives the outage
        own_redis.start()
        assert await broker.ready()
        await broker.append("th", lines(plain(1, "item.completed")))
        got = await parked
        assert isinstance(got, Batch) and [e.seq for e in got.entries] == [3]
        assert got.epoch == first.epoch  # persisted: the same history, no reset
        resumed = broker.reader("th", Position(1, first.epoch))
        assert await read_seqs(resumed, 2) == [2, 3]
        resumed.close()
        reader.close()
    finally:
        await broker.aclose()


async def test_a_mirror_that_keeps_up_takes_events_from_notifications(
        redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, prefix=f"notify-{secrets.token_hex(4)}")
    try:
        await broker.append("th", lines(plain(1)))
        reader = broker.reader("th", None)
        assert await read_seqs(reader, 1) == [1]
        fetches = broker.fetches
        for n in range(5):
            waiting = asyncio.create_task(read_seqs(reader, 2))
            await broker.append("th", lines(plain(2, "item.completed")))
            assert await asyncio.wait_for(waiting, 10) == [2 + 2 * n, 3 + 2 * n]
        assert broker.fetches == fetches  # no stream read: one message per append
        reader.close()
    finally:
        await broker.aclose()


async def test_a_reader_open_across_a_flush_gets_the_new_epoch_as_a_reset(
        own_redis: RedisServer) -> None:
    broker = RedisBroker(own_redis.url)
    try:
        await broker.append("th", lines(plain(3, "item.started")))
        reader = broker.reader("th", None)
        first = await next_of(reader)
        assert isinstance(first, Batch) and first.end == 4
        parked = asyncio.create_task(next_of(reader, 30))
        await broker.client.flushall()
        await broker.expire()  # a flush sends no notification: the sweep looks
        fresh = broker.reader("th", None)  # a new client waits: there is no thread now
        waiting = asyncio.create_task(next_of(fresh, 30))
        assert await broker.snapshot("th") is None
        await broker.append("th", lines(plain(5, "item.completed")))
        reset = await parked
        assert isinstance(reset, Reset) and reset.reason == "epoch_changed"
        assert reset.epoch != first.epoch and reset.seq == 5
        got = await waiting  # the new client sees the new numbering from its start
        assert isinstance(got, Batch) and got.epoch == reset.epoch
        assert [e.seq for e in got.entries] == [1, 2, 3, 4, 5]
        live = asyncio.create_task(read_seqs(reader, 1))
        await broker.append("th", lines(plain(1)))
        assert await asyncio.wait_for(live, 10) == [6]
        reader.close()
        fresh.close()
    finally:
        await broker.aclose()


async def test_a_password_in_the_url_is_used_and_a_wrong_one_is_unavailable(
        tmp_path: Path) -> None:
    server = RedisServer(require_redis_server(), tmp_path, password="s3cret/+")
    server.start()
    right = RedisBroker(f"redis://:{quote('s3cret/+', safe='')}@127.0.0.1:{server.port}/0")
    wrong = RedisBroker(f"redis://:nope@127.0.0.1:{server.port}/0")
    try:
        assert (await right.append("th", lines(plain(1)))).last_seq == 1
        assert await right.ready()
        with pytest.raises(BrokerUnavailable):
            await wrong.append("th", lines(plain(1)))
        assert not await wrong.ready()
    finally:
        await right.aclose()
        await wrong.aclose()
        server.stop()
