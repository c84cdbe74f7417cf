"""One contract, two brokers: what the routes rely on, run against memory and Redis.

Every test gets a ``make`` factory for the broker under test with the settings it needs;
the Redis broker runs on a real redis-server (tests/redis/server.py), each test under its
own key prefix.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from otel_events.bridge.batch import parse_batch
from otel_events.bridge.broker import (
    Batch,
    Broker,
    EventLine,
    Position,
    Reset,
    ThreadReader,
    TooManyThreads,
)
from otel_events.bridge.memory import MemoryBroker
from tests.bridge_support import ndjson, turn_events
from tests.redis.server import RedisServer, redis_server

__all__ = ["redis_server"]

MakeBroker = Callable[..., Broker]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    made: list[Broker] = []
    if request.param == "memory":
        def factory(**settings: Any) -> Broker:
            broker = MemoryBroker(**settings)
            made.append(broker)
            return broker
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        from otel_events.bridge.redis import RedisBroker

        prefix = f"contract-{secrets.token_hex(4)}"

        def factory(**settings: Any) -> Broker:
            broker = RedisBroker(server.url, prefix=prefix, **settings)
            made.append(broker)
            return broker
    yield factory
    for broker in made:
        aclose = getattr(broker, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            broker.close()


def lines(events: list[dict[str, Any]], thread_id: str = "th") -> list[EventLine]:
    """The events as the ingest route hands them to a broker."""
    batch = parse_batch(ndjson(events), "application/x-ndjson", thread_id)
    assert not batch.rejected, batch.rejected
    return batch.events


def plain(count: int, kind: str = "item.updated", start: int = 0) -> list[dict[str, Any]]:
    return [{"type": kind, "item": {"id": f"i{start + n}", "type": "reasoning"}}
            for n in range(count)]


async def next_of(reader: ThreadReader, within: float = 10.0) -> Batch | Reset | None:
    return await asyncio.wait_for(reader.next(), within)


async def read_seqs(reader: ThreadReader, count: int) -> list[int]:
    """Seqs of the next ``count`` entries (batches only; a reset fails the test)."""
    seqs: list[int] = []
    while len(seqs) < count:
        got = await next_of(reader)
        assert isinstance(got, Batch), got
        seqs += [entry.seq for entry in got.entries]
    return seqs


async def test_numbers_in_order_fills_thread_id_and_keeps_fields(make: MakeBroker) -> None:
    broker = make()
    sent = [{"type": "thread.started", "thread_id": "th"},
            {"type": "turn.started", "turn_id": "t1", "custom": {"kept": True}},
            {"type": "item.started", "turn_id": "t1",
             "item": {"id": "i1", "type": "command_execution"}}]
    appended = await broker.append("th", lines(sent))
    assert (appended.accepted, appended.duplicates, appended.last_seq) == (3, 0, 3)
    appended = await broker.append("th", lines([{"type": "turn.completed", "turn_id": "t1"}]))
    assert appended.last_seq == 4
    reader = broker.reader("th", None)
    batch = await next_of(reader)
    assert isinstance(batch, Batch)
    assert batch.epoch and (batch.start, batch.end) == (1, 5)
    assert [entry.seq for entry in batch.entries] == [1, 2, 3, 4]
    assert [entry.type for entry in batch.entries] == [
        "thread.started", "turn.started", "item.started", "turn.completed"]
    decoded = [orjson.loads(entry.json) for entry in batch.entries]
    assert [event["seq"] for event in decoded] == [1, 2, 3, 4]
    assert {event["thread_id"] for event in decoded} == {"th"}
    assert decoded[1]["custom"] == {"kept": True}
    reader.close()


async def test_resumes_after_a_position_with_no_duplicate_and_no_gap(
        make: MakeBroker) -> None:
    broker = make()
    await broker.append("th", lines(plain(5, "item.started")))
    first = broker.reader("th", None)
    batch = await next_of(first)
    assert isinstance(batch, Batch)
    epoch = batch.epoch
    top = 5
    for position in (Position(3, epoch), Position(3)):  # epoch:seq, and a bare seq
        reader = broker.reader("th", position)
        assert await read_seqs(reader, top - 3) == list(range(4, top + 1))
        live = asyncio.create_task(read_seqs(reader, 2))
        await broker.append("th", lines(plain(2, "item.completed")))
        assert await asyncio.wait_for(live, 10) == [top + 1, top + 2]
        top += 2
        reader.close()
    at_top = broker.reader("th", Position(9, epoch))
    waiting = asyncio.create_task(next_of(at_top))
    await broker.append("th", lines(plain(1, "item.completed")))
    got = await waiting
    assert isinstance(got, Batch) and [e.seq for e in got.entries] == [10]
    at_top.close()
    first.close()


async def test_a_position_it_cannot_honour_gets_a_reset_with_the_state(
        make: MakeBroker) -> None:
    broker = make()
    await broker.append("th", lines(turn_events("t1", items=2)))
    reader = broker.reader("th", None)
    batch = await next_of(reader)
    assert isinstance(batch, Batch)
    epoch = batch.epoch
    reader.close()
    cases = {"epoch_changed": Position(3, "0ther"), "cursor_unknown": Position(0, ""),
             "cursor_ahead": Position(50, epoch)}
    top = 6
    for reason, position in cases.items():
        reader = broker.reader("th", position)
        reset = await next_of(reader)
        assert isinstance(reset, Reset), (reason, reset)
        assert (reset.reason, reset.epoch, reset.seq) == (reason, epoch, top)
        snapshot = orjson.loads(reset.snapshot)
        assert snapshot["last_seq"] == top
        assert [turn["turn_id"] for turn in snapshot["turns"]] == ["t1"]
        assert snapshot["turns"][0]["status"] == "completed"
        # Then it goes on after the reset, live.
        live = asyncio.create_task(read_seqs(reader, 1))
        await broker.append("th", lines(plain(1)))
        assert (await asyncio.wait_for(live, 10))[0] == reset.seq + 1
        top += 1
        reader.close()


async def test_count_retention_resets_positions_it_no_longer_holds(make: MakeBroker) -> None:
    broker = make(retention_count=4)
    await broker.append("th", lines(turn_events("t1", items=4)))  # 10 events
    reader = broker.reader("th", None)
    reset = await next_of(reader)
    assert isinstance(reset, Reset) and (reset.reason, reset.seq) == ("history_expired", 10)
    assert orjson.loads(reset.snapshot)["turns"][0]["status"] == "completed"
    reader.close()
    held = broker.reader("th", Position(7, reset.epoch))
    assert await read_seqs(held, 3) == [8, 9, 10]
    held.close()
    expired = broker.reader("th", Position(5, reset.epoch))
    got = await next_of(expired)
    assert isinstance(got, Reset) and (got.reason, got.seq) == ("cursor_expired", 10)
    expired.close()


async def test_age_retention_forgets_old_events(make: MakeBroker) -> None:
    broker = make(retention_age=0.2)
    await broker.append("th", lines(turn_events("t1", items=1)))
    reader = broker.reader("th", None)
    batch = await next_of(reader)
    assert isinstance(batch, Batch) and batch.start == 1
    reader.close()
    deadline = time.monotonic() + 10
    while True:  # poll with a deadline: the events age out after 0.2 s
        await broker.expire()
        probe = broker.reader("th", Position(0, batch.epoch))
        got = await next_of(probe)
        probe.close()
        if isinstance(got, Reset):
            break
        assert time.monotonic() < deadline, "the events never aged out"
        await asyncio.sleep(0.05)
    assert (got.reason, got.seq) == ("cursor_expired", 4)
    # The state stays: it is folded from every event, not from what is held.
    assert orjson.loads(got.snapshot)["turns"][0]["status"] == "completed"


async def test_a_producer_retry_is_accepted_once(make: MakeBroker) -> None:
    broker = make()
    events = turn_events("t1", items=1)  # producer seqs 1..4
    first = await broker.append("th", lines(events))
    assert (first.accepted, first.duplicates) == (4, 0)
    again = await broker.append("th", lines(events))
    assert (again.accepted, again.duplicates, again.last_seq) == (0, 4, None)
    # Same producer seq, other content (a restarted producer): accepted.
    changed = [dict(events[0], turn_id="t2")]
    assert (await broker.append("th", lines(changed))).accepted == 1
    # The same line twice in one request, and lines without a producer seq (never
    # de-duplicated).
    twice = [{"type": "error", "message": "x", "seq": 9}] * 2
    result = await broker.append("th", lines(twice + plain(2)))
    assert (result.accepted, result.duplicates, result.last_seq) == (3, 1, 8)
    reader = broker.reader("th", None)
    assert await read_seqs(reader, 8) == list(range(1, 9))
    reader.close()


async def test_a_reader_that_falls_behind_skips_transients_then_is_reset(
        make: MakeBroker) -> None:
    broker = make(retention_count=8)
    await broker.append("th", lines(plain(1, "turn.started")))
    reader = broker.reader("th", None)
    assert await read_seqs(reader, 1) == [1]
    # Six behind with a soft lag of 4: the transient updates are skipped.
    await broker.append("th", lines(plain(5) + plain(1, "item.completed")))
    got = await next_of(reader)
    assert isinstance(got, Batch)
    assert [(e.seq, e.type) for e in got.entries] == [(7, "item.completed")]
    assert (got.start, got.end) == (2, 8)
    # A lifecycle event overwritten before it was read: an explicit reset, never a gap.
    await broker.append("th", lines(plain(20, "item.completed")))
    reset = await next_of(reader)
    assert isinstance(reset, Reset) and (reset.reason, reset.seq) == ("fell_behind", 27)
    live = asyncio.create_task(read_seqs(reader, 1))
    await broker.append("th", lines(plain(1)))
    assert await asyncio.wait_for(live, 10) == [28]
    reader.close()


async def test_a_reader_of_an_unknown_thread_waits_without_creating_it(
        make: MakeBroker) -> None:
    broker = make()
    reader = broker.reader("later", None)
    waiting = asyncio.create_task(next_of(reader, 20))
    await broker.append("other", lines(plain(1)))
    assert await broker.snapshot("later") is None
    assert [s["thread_id"] for s in await broker.summaries()] == ["other"]
    assert not waiting.done()
    await broker.append("later", lines(plain(2, "item.started")))
    got = await waiting
    assert isinstance(got, Batch) and [e.seq for e in got.entries][:1] == [1]
    reader.close()


async def test_state_survives_retention_and_is_listed(make: MakeBroker) -> None:
    broker = make(retention_count=4)
    for n in range(1, 31):
        events = turn_events(f"t{n}", items=1, fail_item=1 if n == 30 else None)
        await broker.append("th", lines(events))
    await broker.append("th2", lines(plain(1, "turn.started")))
    data = await broker.snapshot("th")
    assert data is not None
    state = orjson.loads(data)
    assert state["last_seq"] == 120 and state["turn_count"] == 30
    assert state["turns_dropped"] == 10 and len(state["turns"]) == 20
    assert state["usage"]["input_tokens"] == 300
    assert state["turns"][-1]["failed_items"] == 1
    summaries = await broker.summaries()
    assert [s["thread_id"] for s in summaries] == ["th", "th2"]
    assert summaries[0]["last_seq"] == 120 and summaries[1]["status"] == "running"
    assert await broker.snapshot("missing") is None


async def test_close_ends_every_stream(make: MakeBroker) -> None:
    broker = make()
    await broker.append("th", lines(plain(1)))
    reader = broker.reader("th", None)
    await read_seqs(reader, 1)
    parked = asyncio.create_task(reader.next())
    waiting = broker.reader("unknown", None)
    parked_unknown = asyncio.create_task(waiting.next())
    await asyncio.sleep(0)  # both park
    broker.close()
    assert await asyncio.wait_for(parked, 10) is None
    assert await asyncio.wait_for(parked_unknown, 10) is None
    assert broker.closed and not await broker.ready()


async def test_a_thread_limit_refuses_new_threads(make: MakeBroker) -> None:
    broker = make(max_threads=2)
    await broker.append("a", lines(plain(1)))
    await broker.append("b", lines(plain(1)))
    with pytest.raises(TooManyThreads):
        await broker.append("c", lines(plain(1)))
    assert (await broker.append("a", lines(plain(1)))).last_seq == 2
    assert await broker.ready()


async def test_an_idle_thread_is_forgotten_and_comes_back_in_a_new_epoch(
        make: MakeBroker) -> None:
    broker = make(idle_expiry=0.2)
    await broker.append("idle", lines(plain(2, "item.started")))
    reader = broker.reader("idle", None)
    batch = await next_of(reader)
    assert isinstance(batch, Batch)
    reader.close()
    forgotten = 0
    deadline = time.monotonic() + 10
    while await broker.snapshot("idle") is not None:  # poll with a deadline
        assert time.monotonic() < deadline, "the idle thread was never forgotten"
        await asyncio.sleep(0.05)
        forgotten += await broker.expire()
    forgotten += await broker.expire()
    assert forgotten == 1
    assert await broker.summaries() == []
    await broker.append("idle", lines(plain(1, "item.completed")))
    again = broker.reader("idle", Position(2, batch.epoch))
    reset = await next_of(again)
    assert isinstance(reset, Reset) and reset.reason == "epoch_changed"
    assert reset.epoch != batch.epoch and reset.seq == 1
    again.close()


async def test_byte_retention_keeps_what_fits_and_always_the_newest(make: MakeBroker) -> None:
    events = [{"type": "item.completed", "item": {"id": f"i{n}", "type": "reasoning",
                                                  "text": "x" * (40 * n)}}
              for n in range(1, 9)]
    reference = make()
    await reference.append("ref", lines(events, "ref"))
    reader = reference.reader("ref", None)
    sizes = {entry.seq: len(entry.json) for entry in
             (await next_of(reader)).entries}  # type: ignore[union-attr]
    reader.close()
    limit = sizes[8] + sizes[7] + sizes[6] + 10  # the last three fit, not the fourth
    broker = make(retention_bytes=limit)
    appended = await broker.append("th", lines(events))
    assert appended.last_seq == 8
    probe = broker.reader("th", None)
    reset = await next_of(probe)
    assert isinstance(reset, Reset) and reset.reason == "history_expired"
    probe.close()
    held = broker.reader("th", Position(5, reset.epoch))
    assert await read_seqs(held, 3) == [6, 7, 8]
    held.close()
    gone = broker.reader("th", Position(4, reset.epoch))
    got = await next_of(gone)
    assert isinstance(got, Reset) and got.reason == "cursor_expired"
    gone.close()
    # One event over the bound alone: it stays, the rest goes.
    await broker.append("th", lines([{"type": "error", "message": "y" * (limit + 1)}]))
    newest = broker.reader("th", Position(8, reset.epoch))
    assert await read_seqs(newest, 1) == [9]
    newest.close()
    older = broker.reader("th", Position(7, reset.epoch))
    got = await next_of(older)
    assert isinstance(got, Reset) and got.reason == "cursor_expired"
    older.close()


async def test_usage_summed_past_64_bits_keeps_the_state_readable(make: MakeBroker) -> None:
    broker = make()
    big = 2**64 - 1  # the largest count a line may carry; two of them sum past 64 bits
    turns = [event for n in (1, 2) for event in (
        {"type": "turn.started", "turn_id": f"t{n}"},
        {"type": "turn.completed", "turn_id": f"t{n}", "usage": {"input_tokens": big}})]
    await broker.append("th", lines(turns))
    state = await broker.snapshot("th")
    assert state is not None
    assert orjson.loads(state.replace(str(2 * big).encode(), b"0"))["thread_id"] == "th"
    assert str(2 * big).encode() in state
    reader = broker.reader("th", Position(0, "another-epoch"))
    reset = await next_of(reader)
    assert isinstance(reset, Reset) and str(2 * big).encode() in reset.snapshot
    reader.close()
