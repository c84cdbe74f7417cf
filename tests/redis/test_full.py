"""A Redis that is full (``maxmemory`` reached under ``noeviction``) recovers by retention.

Appends are refused (503) while it is full; the retention sweep must still free what
retention says is gone, so appends are taken again with no operator action, and nothing
a reader can still ask for (replay from ``lo``, the state a reset carries) is lost.

Each test runs a redis-server of its own: they reconfigure its ``maxmemory``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from otel_events.bridge.broker import Position, Reset
from otel_events.bridge.redis import RedisBroker, RedisRefused
from otel_events.redis_sink import APPEND_LUA, append_args, dedup_member, event_rest
from otel_events.retention import Retention
from tests.bridge_support import turn_events
from tests.redis.server import RedisServer, stream_seqs
from tests.test_broker_contract import lines

#: Seconds an event is kept for replay: short, so the test's events age while it polls.
AGE = 1.0
PAD = "x" * 800  # about 1 KB an event: a few MB of events in a few hundred turns


def turn(name: str, seq0: int) -> list[dict[str, Any]]:
    events = turn_events(name, items=3, seq0=seq0)
    for event in events:
        item = event.get("item")
        if isinstance(item, dict):
            item["description"] = f"{item['description']} {PAD}"
    return events


def sink_append(client: redis.Redis, thread: str, events: list[dict[str, Any]]) -> None:
    """What ``RedisSink`` sends: the append script, with no replica's checkpoint after."""
    batch = []
    for event in events:
        rest = event_rest(event, thread)
        batch.append((str(event["type"]), rest, dedup_member(int(event["seq"]), rest)))
    keys, args = append_args("otel-events", thread, Retention(), batch)
    client.eval(APPEND_LUA, len(keys), *keys, *args)


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def meta(client: redis.Redis, thread: str) -> dict[str, int]:
    raw = client.hmget(f"otel-events:{{{thread}}}:m", "top", "lo", "ck")
    return dict(zip(("top", "lo", "ck"), (int(value) for value in raw), strict=True))


def make_full(client: redis.Redis, empty: int) -> int:
    """``maxmemory`` under ``noeviction`` halfway between what Redis used ``empty`` and
    what it uses now: full, by far more than an idle client's buffers give back, and
    room again once retention has freed most of the events. Returns the limit."""
    client.config_set("maxmemory-policy", "noeviction")
    limit = (empty + used(client)) // 2
    client.config_set("maxmemory", str(limit))
    return limit


def check_held(client: redis.Redis, thread: str) -> None:
    """The stream holds every seq from the checkpoint's next (or ``lo``) to the top: a
    reset's fold and a replay from ``lo`` find all they need."""
    marks = meta(client, thread)
    seqs = stream_seqs(client, thread)
    first = seqs[0] if seqs else marks["top"] + 1
    assert seqs == list(range(first, marks["top"] + 1))
    assert first <= min(marks["lo"], marks["ck"] + 1)


async def state_as_a_client_gets_it(url: str, thread: str) -> Reset:
    """A new client's reset, from a replica that never saw the thread (no cached fold:
    the checkpoint and the stream after it are all it has)."""
    fresh = RedisBroker(url, retention_age=AGE)
    try:
        # A cursor the replica cannot place: it answers with the thread's state.
        reader = fresh.reader(thread, Position(0, ""))
        first = await asyncio.wait_for(reader.next(), 10.0)
        reader.close()
        assert isinstance(first, Reset), first
        return first
    finally:
        await fresh.aclose()


async def sweep_until(broker: RedisBroker, done: Any, what: str,
                      within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        await broker.expire()
        if await done():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s of sweeps")
        await asyncio.sleep(0.05)  # the events' age is what the sweeps wait for


async def test_a_full_redis_frees_memory_by_age_and_takes_appends_again(
        scratch_redis: RedisServer) -> None:
    """One thread a replica appends (checkpointed as it goes), one a ``RedisSink``
    appends (never checkpointed): the latter's checkpoint, refused while Redis is full,
    must not keep the sweep from trimming the former."""
    client = scratch_redis.client()
    empty = used(client)
    broker = RedisBroker(scratch_redis.url, retention_age=AGE, checkpoint_every=256)
    try:
        seq = 1
        for n in range(300):
            await broker.append("bridged", lines(turn(f"b{n}", seq), "bridged"))
            if n < 50:
                sink_append(client, "sunk", turn(f"s{n}", seq))
            seq += 8
        before = {thread: await state_as_a_client_gets_it(scratch_redis.url, thread)
                  for thread in ("bridged", "sunk")}
        held = {thread: len(stream_seqs(client, thread)) for thread in before}
        limit = make_full(client, empty)
        with pytest.raises(RedisRefused, match="out of memory"):
            await broker.append("other", lines(turn("o", 1), "other"))
        with pytest.raises(RedisRefused, match="out of memory"):
            await broker.append("bridged", lines(turn("again", seq), "bridged"))

        async def appends_again() -> bool:
            try:
                await broker.append("bridged", lines(turn("again", seq), "bridged"))
            except RedisRefused:
                return False
            return True

        await sweep_until(broker, appends_again, "a POST accepted again")

        async def trimmed() -> bool:
            return used(client) < limit and all(
                meta(client, thread)["lo"] > 1 and len(stream_seqs(client, thread)) < held[thread]
                for thread in before)

        # Every thread's retention applies in the end (the checkpoint a RedisSink's thread
        # needs before its stream is trimmed may have waited for room in Redis).
        await sweep_until(broker, trimmed, "every thread trimmed by age")
        assert used(client) < limit
        for thread in before:
            # Age retention ran: the replay window moved on, and the stream followed it.
            assert meta(client, thread)["lo"] > 1
            assert len(stream_seqs(client, thread)) < held[thread]
            check_held(client, thread)
        # Nothing a reset needs was lost: the state is the fold of every event.
        after = await state_as_a_client_gets_it(scratch_redis.url, "sunk")
        assert (after.seq, after.snapshot) == (before["sunk"].seq, before["sunk"].snapshot)
        after = await state_as_a_client_gets_it(scratch_redis.url, "bridged")
        assert after.seq == before["bridged"].seq + 8
        assert after.snapshot != before["bridged"].snapshot  # the turn taken again
    finally:
        client.config_set("maxmemory", "0")
        await broker.aclose()


async def test_a_full_redis_takes_the_checkpoint_that_lets_it_trim_a_sinks_thread(
        scratch_redis: RedisServer) -> None:
    """Redis full of a thread only a ``RedisSink`` appends: its stream is kept from its
    checkpoint on (a reset folds from there), and it has none. The sweep's checkpoint
    frees far more than it costs, so Redis takes it even full, and the trim follows."""
    client = scratch_redis.client()
    empty = used(client)
    seq = 1
    for n in range(300):
        sink_append(client, "sunk", turn(f"s{n}", seq))
        seq += 8
    broker = RedisBroker(scratch_redis.url, retention_age=AGE, checkpoint_every=256)
    try:
        before = await state_as_a_client_gets_it(scratch_redis.url, "sunk")
        held = len(stream_seqs(client, "sunk"))
        assert meta(client, "sunk")["ck"] == 0
        limit = make_full(client, empty)
        again = lines(turn("again", seq), "sunk")
        with pytest.raises(RedisRefused, match="out of memory"):
            await broker.append("sunk", again)

        async def freed() -> bool:
            return (meta(client, "sunk")["lo"] > 1
                    and len(stream_seqs(client, "sunk")) < held and used(client) < limit)

        await sweep_until(broker, freed, "the thread trimmed by age, and room again")
        assert meta(client, "sunk")["ck"] == before.seq
        check_held(client, "sunk")
        after = await state_as_a_client_gets_it(scratch_redis.url, "sunk")
        assert (after.seq, after.snapshot) == (before.seq, before.snapshot)
        appended = await broker.append("sunk", again)
        assert (appended.accepted, appended.duplicates) == (8, 0)
    finally:
        client.config_set("maxmemory", "0")
        await broker.aclose()
