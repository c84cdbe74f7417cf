"""Bridge replicas as separate processes on one real Redis: what production relies on.

Publish through one replica and follow through another; SIGKILL a replica mid-turn and
resume on the other; flush Redis under a client's cursor; kill Redis itself; ingest one
thread through both replicas at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from otel_events import EventEmitter
from otel_events.http_sink import HttpSink
from tests.bridge_support import NDJSON, Message, ndjson, sse_messages, turn_events, wait_for
from tests.conftest import Telemetry
from tests.redis.replicas import Replica
from tests.redis.server import RedisServer

_ids = itertools.count(1)


def thread_name(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Starts replicas on a broker URL; stops them all at the end."""
    started: list[Replica] = []

    def factory(url: str, *args: str) -> Replica:
        replica = Replica(url, *args, log=tmp_path / f"replica-{len(started)}.log")
        started.append(replica)
        return replica.start()

    yield factory
    for replica in started:
        replica.stop()


def post(replica: Replica, thread: str, events: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{replica.url}/v1/threads/{thread}/events", content=ndjson(events),
                      headers=NDJSON, timeout=10.0)


class Follower:
    """An SSE client of one replica, reading in the background into ``messages``."""

    def __init__(self, url: str, thread: str, last_event_id: str | None = None) -> None:
        self.messages: list[Message] = []
        self.comments = 0
        self.error: BaseException | None = None
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._task = asyncio.create_task(self._run(f"{url}/v1/threads/{thread}/events",
                                                   headers))

    async def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client, \
                    client.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200
                async for message in sse_messages(response):
                    if message.comment is not None and message.data is None:
                        self.comments += 1
                    if message.data is not None:
                        self.messages.append(message)
        except (httpx.HTTPError, asyncio.CancelledError) as exc:
            self.error = exc

    @property
    def events(self) -> list[Message]:
        return [m for m in self.messages if m.event != "reset"]

    def seqs(self) -> list[int]:
        return [m.json()["seq"] for m in self.events]

    async def until(self, check: Callable[[Follower], bool], within: float = 20.0,
                    what: str = "events") -> None:
        async with asyncio.timeout(within):
            while not check(self):
                if self._task.done():
                    raise AssertionError(f"the stream ended before {what}: {self.error!r}")
                await asyncio.sleep(0.01)

    async def ended(self, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            await asyncio.shield(self._task)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10.0)


def status(url: str) -> int:
    return get(url).status_code


def state(replica: Replica, path: str) -> Any:
    response = httpx.get(f"{replica.url}{path}", timeout=10.0)
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response.json()


async def test_published_through_one_replica_followed_through_another(
        redis_server: RedisServer, start: Callable[..., Replica]) -> None:
    a, b = start(redis_server.url), start(redis_server.url)
    thread = thread_name("across")
    follower = Follower(b.url, thread)  # before the thread exists: waits for it
    events = turn_events("t1", items=3)
    assert post(a, thread, events).json()["accepted"] == len(events)
    await follower.until(lambda f: len(f.events) == len(events))
    assert follower.seqs() == list(range(1, len(events) + 1))
    assert [m.event for m in follower.events] == [e["type"] for e in events]
    epoch = follower.events[0].id.split(":")[0]  # type: ignore[union-attr]
    assert [m.id for m in follower.events] == [f"{epoch}:{n}" for n in follower.seqs()]
    assert state(a, f"/v1/threads/{thread}") == state(b, f"/v1/threads/{thread}")
    assert state(b, f"/v1/threads/{thread}")["status"] == "completed"
    await follower.close()


async def test_a_replica_killed_mid_turn_loses_nothing(
        redis_server: RedisServer, start: Callable[..., Replica]) -> None:
    a, b = start(redis_server.url), start(redis_server.url)
    thread = thread_name("kill")
    events = turn_events("t1", items=6)  # 14 events; the turn ends in the second half
    first, rest = events[:7], events[7:]
    on_b = Follower(b.url, thread)
    assert post(a, thread, first).status_code == 200
    await on_b.until(lambda f: len(f.events) == len(first))
    b.kill()
    await on_b.ended()  # the connection died with the process
    assert post(a, thread, rest).status_code == 200
    last_id = on_b.events[-1].id
    on_a = Follower(a.url, thread, last_event_id=last_id)
    await on_a.until(lambda f: len(f.events) == len(rest))
    seen = on_b.seqs() + on_a.seqs()
    assert seen == list(range(1, len(events) + 1))  # no duplicate, no gap
    assert not [m for m in on_a.messages if m.event == "reset"]
    assert [m.event for m in on_b.events + on_a.events] == [e["type"] for e in events]
    await on_a.close()
    # A new replica in B's place answers exactly as A does.
    b = start(redis_server.url)
    for path in (f"/v1/threads/{thread}", "/v1/threads"):
        assert state(a, path) == state(b, path)
    assert state(b, f"/v1/threads/{thread}")["last_seq"] == len(events)


async def test_flushed_redis_gives_old_cursors_a_reset(
        own_redis: RedisServer, start: Callable[..., Replica]) -> None:
    a = start(own_redis.url)
    thread = thread_name("flush")
    assert post(a, thread, turn_events("t1", items=1)).status_code == 200
    before = Follower(a.url, thread)
    await before.until(lambda f: len(f.events) == 4)
    old_id = before.events[-1].id
    assert old_id is not None
    await before.close()
    own_redis.client().flushall()  # type: ignore[attr-defined]
    # More events than the old cursor: in the new numbering, seq 4 exists again.
    assert post(a, thread, turn_events("t2", items=3)).json()["last_seq"] == 8
    after = Follower(a.url, thread, last_event_id=old_id)
    await after.until(lambda f: len(f.messages) >= 1)
    reset = after.messages[0]
    assert reset.event == "reset"
    body = reset.json()
    assert (body["reason"], body["seq"]) == ("epoch_changed", 8)
    assert body["epoch"] != old_id.split(":")[0]
    assert [t["turn_id"] for t in body["snapshot"]["turns"]] == ["t2"]
    assert post(a, thread, [{"type": "error", "message": "later"}]).status_code == 200
    await after.until(lambda f: len(f.events) == 1)
    assert after.seqs() == [9]
    await after.close()


async def test_redis_down_then_back(own_redis: RedisServer, start: Callable[..., Replica],
                                    telemetry: Telemetry) -> None:
    a = start(own_redis.url, "--heartbeat", "0.2")
    thread = thread_name("outage")
    sink = HttpSink(a.url, backoff=0.05, max_backoff=0.3)
    emitter = EventEmitter(thread, tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider, sinks=[sink])
    follower = Follower(a.url, thread)
    turn = emitter.turn()
    await turn.__aenter__()
    await follower.until(lambda f: len(f.events) == 2)  # thread.started, turn.started

    own_redis.kill()
    response = post(a, thread, [{"type": "error", "message": "during"}])
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "Redis" in response.json()["detail"]
    assert status(f"{a.url}/readyz") == 503
    assert status(f"{a.url}/healthz") == 200
    for path in (f"/v1/threads/{thread}", "/v1/threads"):  # state: 503 too, not a 500
        answer = get(f"{a.url}{path}")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    for n in range(5):  # published while Redis is down: the sink keeps retrying
        async with turn.item("command_execution", f"step {n}") as item:
            item.complete(output={"n": n})
    comments = follower.comments
    await follower.until(lambda f: f.comments >= comments + 2, what="heartbeats")

    own_redis.start()
    wait_for(lambda: status(f"{a.url}/readyz") == 200, 20, "readiness")
    await turn.__aexit__(None, None, None)
    published = emitter.log.next_seq - 1
    await asyncio.to_thread(emitter.close, 20.0)
    assert (sink.sent, sink.dropped) == (published, 0)
    # The same stream, never reconnected, gets everything once, in order.
    await follower.until(lambda f: len(f.events) == published, within=30)
    assert follower.seqs() == list(range(1, published + 1))
    assert follower.events[-1].event == "turn.completed"
    assert state(a, f"/v1/threads/{thread}")["turns"][0]["status"] == "completed"
    await follower.close()


async def test_one_thread_ingested_through_both_replicas_at_once(
        redis_server: RedisServer, start: Callable[..., Replica]) -> None:
    a, b = start(redis_server.url), start(redis_server.url)
    thread = thread_name("both")
    requests, per_request = 60, 5

    def send(n: int) -> list[int]:
        replica = (a, b)[n % 2]
        events = [{"type": "item.completed", "seq": n * per_request + k + 1,
                   "item": {"id": f"r{n}-{k}", "type": "reasoning"}}
                  for k in range(per_request)]
        body = post(replica, thread, events).json()
        assert body["accepted"] == per_request
        return list(range(body["last_seq"] - per_request + 1, body["last_seq"] + 1))

    with ThreadPoolExecutor(max_workers=8) as pool:
        ranges = list(pool.map(send, range(requests)))
    total = requests * per_request
    assigned = sorted(seq for seqs in ranges for seq in seqs)
    assert assigned == list(range(1, total + 1))  # unique and dense
    follower = Follower(b.url, thread)
    await follower.until(lambda f: len(f.events) == total)
    assert follower.seqs() == list(range(1, total + 1))
    ids = [m.json()["item"]["id"] for m in follower.events]
    assert len(set(ids)) == total
    # Each request's lines stayed together, in order (one atomic step per append).
    by_seq = {m.json()["seq"]: m.json()["item"]["id"] for m in follower.events}
    for n, seqs in enumerate(ranges):
        assert [by_seq[s] for s in seqs] == [f"r{n}-{k}" for k in range(per_request)]
    # A producer retry landing on the other replica is recognised there.
    retry = [{"type": "item.completed", "seq": 1, "item": {"id": "r0-0", "type": "reasoning"}}]
    assert post(b, thread, retry).json()["duplicates"] == 1
    await follower.close()
    assert orjson.loads(orjson.dumps(state(a, "/v1/threads"))) == state(b, "/v1/threads")
