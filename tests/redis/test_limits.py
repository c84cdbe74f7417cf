"""One set of limits for every writer of a thread in Redis: the bridge's, stored under
its prefix, applied by the append script whoever calls it (a replica or a RedisSink)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest

from otel_events.bridge.redis import RedisBroker
from otel_events.redis_sink import LIMIT_FIELDS, RedisSink, limit_values, limits_key
from tests.conftest import Telemetry
from tests.redis.server import RedisServer
from tests.redis.test_redis_sink import make_emitter
from tests.test_broker_contract import lines, plain
from tests.test_http_sink import run_turn

BRIDGE_RETENTION = 50


async def held(broker: RedisBroker, thread: str) -> tuple[int, int]:
    """The thread's last seq, and how many events it holds for replay."""
    top, lo = await broker.client.hmget(f"{broker.prefix}:{{{thread}}}:m", "top", "lo")
    return int(top), int(top) - int(lo) + 1


async def stored_limits(broker: RedisBroker) -> list[int] | None:
    values = await broker.client.hmget(limits_key(broker.prefix), *LIMIT_FIELDS)
    return None if values[0] is None else [int(value) for value in values]


def sink_events(telemetry: Telemetry, url: str, prefix: str, thread: str, items: int,
                **options: Any) -> int:
    """Events a RedisSink appended to ``thread``, all of them delivered."""
    sink = RedisSink(url, prefix=prefix, **options)
    emitter = make_emitter(telemetry, thread, sink)
    run_turn(emitter, items)
    published = emitter.log.next_seq - 1
    emitter.close(timeout=10.0)
    assert (sink.sent, sink.dropped) == (published, 0)
    return published


@pytest.mark.parametrize("sink_options", [{}, {"retention_count": 8}],
                         ids=["sink-defaults", "sink-smaller"])
async def test_the_thread_keeps_what_the_bridge_says_whoever_appends(
        redis_server: RedisServer, telemetry: Telemetry, sink_options: dict[str, int]) -> None:
    # The sink is not told the bridge's retention: with its defaults its appends used to
    # let the thread grow to 4096 events, and with a smaller one trim it below the 50.
    prefix = f"limits-{secrets.token_hex(4)}"
    broker = RedisBroker(redis_server.url, prefix=prefix, retention_count=BRIDGE_RETENTION)
    try:
        await broker.append("th", lines(plain(10)))
        sink_events(telemetry, redis_server.url, prefix, "th", 60, **sink_options)
        top, kept = await held(broker, "th")
        assert top > BRIDGE_RETENTION
        assert kept == BRIDGE_RETENTION
    finally:
        await broker.aclose()


async def test_replicas_with_other_limits_the_last_started_wins_and_both_say_so(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"limits-{secrets.token_hex(4)}"
    first = RedisBroker(redis_server.url, prefix=prefix, retention_count=BRIDGE_RETENTION)
    later = RedisBroker(redis_server.url, prefix=prefix, retention_count=20)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_events.bridge.redis"):
            await first.append("th", lines(plain(5)))
            assert not caplog.records  # nothing stored before it: nothing replaced
            assert await later.ready()  # its readiness check stores its limits
            assert await stored_limits(later) == limit_values(later.retention)
            assert [r.message for r in caplog.records if "replace them" in r.message]
            caplog.clear()
            # The first replica's appends apply the stored limits, not its own...
            await first.append("th", lines(plain(40, start=5)))
            assert await held(first, "th") == (45, 20)
            # ...and its sweep notices, says so once, and sweeps by them.
            await first.expire()
            await first.expire()
            assert first.limits_in_force == limit_values(later.retention)
            assert len([r for r in caplog.records if "not this replica's" in r.message]) == 1
    finally:
        await first.aclose()
        await later.aclose()


async def test_limits_gone_with_a_flush_are_stored_again(
        own_redis: RedisServer, telemetry: Telemetry) -> None:
    broker = RedisBroker(own_redis.url, retention_count=BRIDGE_RETENTION)
    mine = limit_values(broker.retention)
    try:
        await broker.append("th", lines(plain(1)))
        assert await stored_limits(broker) == mine
        await broker.client.flushall()
        # Until a replica stores them again, a sink's own limits are the fallback.
        sink_events(telemetry, own_redis.url, broker.prefix, "sunk", 20, retention_count=8)
        assert (await held(broker, "sunk"))[1] == 8
        assert await stored_limits(broker) is None
        # The replica's next sweep stores them again...
        await broker.expire()
        assert await stored_limits(broker) == mine
        # ...and so does its next append, before it trims anything.
        await broker.client.flushall()
        await broker.append("th", lines(plain(1)))
        assert await stored_limits(broker) == mine
    finally:
        await broker.aclose()
