"""MemoryThread's delivery path: readers woken by the publish, the fold done later but
never seen stale, the de-duplication window."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from otel_events.bridge import memory
from otel_events.bridge.batch import parse_batch
from otel_events.bridge.broker import Batch
from otel_events.bridge.memory import MemoryBroker, MemoryThread
from tests.bridge_support import turn_events


def lines(events: list[dict[str, Any]], thread_id: str = "th") -> Any:
    body = b"\n".join(orjson.dumps(event) for event in events)
    return parse_batch(body, "application/x-ndjson", thread_id).events


async def test_a_parked_reader_gets_the_event_in_the_next_loop_turn() -> None:
    broker = MemoryBroker()
    thread = broker.get_or_create("th")
    reader = broker.reader("th", None)
    waiting = asyncio.create_task(reader.next())
    await asyncio.sleep(0)
    assert thread.log.parked == 1
    [line] = lines([{"type": "turn.started", "turn_id": "t1"}])
    thread.publish(line.event, line.digest, line.raw)
    assert thread.log.parked == 0  # resolved by the append itself, no loop callback between
    await asyncio.sleep(0)
    assert waiting.done()
    batch = waiting.result()
    assert isinstance(batch, Batch) and [entry.seq for entry in batch.entries] == [1]
    reader.close()


async def test_parked_readers_end_when_closed_or_when_the_thread_is_dropped() -> None:
    broker = MemoryBroker()
    thread = broker.get_or_create("th")
    first, second = broker.reader("th", None), broker.reader("th", None)
    waits = [asyncio.create_task(first.next()), asyncio.create_task(second.next())]
    await asyncio.sleep(0)
    assert thread.log.parked == 2
    first.close()  # from another task than its reader's
    assert await asyncio.wait_for(waits[0], 5) is None
    broker.close()
    assert await asyncio.wait_for(waits[1], 5) is None
    assert thread.log.parked == 0


async def test_a_cancelled_reader_leaves_nothing_parked() -> None:
    broker = MemoryBroker()
    thread = broker.get_or_create("th")
    waiting = asyncio.create_task(broker.reader("th", None).next())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert thread.log.parked == 0


async def test_the_fold_waits_but_the_state_is_never_stale() -> None:
    broker = MemoryBroker()
    await broker.append("th", lines(turn_events("t1", 2)))
    thread = broker.get("th")
    assert thread is not None
    # Asked before the deferred fold ran, the state holds every accepted event.
    state = orjson.loads(await broker.snapshot("th") or b"")
    assert state["status"] == "completed" and len(state["turns"][0]["items"]) == 2
    [summary] = await broker.summaries()
    assert summary["last_seq"] == thread.log.next_seq - 1


async def test_the_deferred_fold_runs_by_itself_and_is_cancelled_with_its_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_FOLD_DELAY", 0)  # due at once: loop turns, no waiting
    broker = MemoryBroker(idle_expiry=0)
    await broker.append("th", lines(turn_events("t1", 1)))
    thread = broker.get("th")
    assert thread is not None and thread.unfolded  # not yet: the readers go first
    for _ in range(10):
        if not thread.unfolded:
            break
        await asyncio.sleep(0)
    assert not thread.unfolded and not thread.fold_scheduled
    monkeypatch.setattr(memory, "_FOLD_DELAY", 60)
    await broker.append("th", lines(turn_events("t2", 1)))
    assert thread.fold_scheduled
    broker.sweep(now=thread.last_active + 1)  # expired: dropped with its timer
    assert broker.get("th") is None and not thread.fold_scheduled


def test_the_de_duplication_window_forgets_the_oldest_lines() -> None:
    thread = MemoryThread("th", 64, None, dedup_window=3)
    events = [{"type": "progress.update", "item_id": "i", "fraction": n / 10, "seq": n}
              for n in range(1, 6)]

    def publish(event: dict[str, Any]) -> int | None:
        [line] = lines([event])
        return thread.publish(line.event, line.digest, line.raw)

    assert [publish(event) for event in events] == [1, 2, 3, 4, 5]
    # The last three are remembered, so sent again they are duplicates...
    assert [publish(event) for event in events[2:]] == [None, None, None]
    # ...while the first two have left the window and are accepted again.
    assert publish(events[0]) == 6
    assert publish(events[1]) == 7
    assert publish(events[1]) is None


def test_de_duplication_keys_are_exact_for_every_seq_and_digest() -> None:
    # One int per (producer seq, digest): no two pairs may share it, whatever the sign
    # of the digest (a hash) or the size of the seq.
    seqs = [0, 1, 2, 2**63, 2**64 - 1]
    digests = [0, 1, -1, -2, 2**63 - 1, -(2**63), 12345, -12345]
    keys = {memory.dedup_key(seq, digest) for seq in seqs for digest in digests}
    assert len(keys) == len(seqs) * len(digests)


def test_a_line_is_a_duplicate_only_with_the_same_seq_and_content() -> None:
    thread = MemoryThread("th", 64, None, dedup_window=16)

    def publish(event: dict[str, Any]) -> int | None:
        [line] = lines([event])
        return thread.publish(line.event, line.digest, line.raw)

    first = {"type": "progress.update", "item_id": "i", "fraction": 0.5, "seq": 7}
    assert publish(first) == 1
    assert publish({**first, "fraction": 0.6}) == 2  # same seq, other content
    assert publish({**first, "seq": 8}) == 3  # same content, other seq
    # The same content with its keys in another order is the same line.
    assert publish(dict(reversed(list(first.items())))) is None


async def test_every_reader_gets_batches_within_the_byte_bound() -> None:
    events = [{"type": "item.updated" if n % 2 else "item.completed",
               "item": {"id": f"i{n}", "type": "reasoning", "text": "x" * 100}}
              for n in range(12)]
    limit = 3 * len(orjson.dumps({**events[0], "thread_id": "th", "seq": 10})) + 20
    broker = MemoryBroker(retention_count=32, batch_bytes=limit)

    async def read_to(reader: Any, last: int) -> list[list[int]]:
        batches: list[list[int]] = []
        while not batches or batches[-1][-1] < last:
            batch = await asyncio.wait_for(reader.next(), 5)
            assert isinstance(batch, Batch)
            assert sum(len(entry.json) for entry in batch.entries) <= limit
            batches.append([entry.seq for entry in batch.entries])
        return batches

    # Two readers at the same place (they share the sizing of each batch)...
    await broker.append("th", lines(events))
    readers = [broker.reader("th", None), broker.reader("th", None)]
    got = [await read_to(reader, 12) for reader in readers]
    await broker.append("th", lines(events[:8]))
    for reader, batches in zip(readers, got, strict=True):
        batches += await read_to(reader, 20)
        assert [len(batch) for batch in batches] == [3, 3, 3, 3, 3, 3, 2]
        assert [seq for batch in batches for seq in batch] == list(range(1, 21))
        reader.close()
    # ...and one more than half the ring behind, which skips transient events at first:
    # its batches between the same seqs hold other events, and are bounded all the same.
    lagging = await read_to(broker.reader("th", None), 20)
    assert lagging[0] == [1, 3, 5]
    seqs = [seq for batch in lagging for seq in batch]
    assert seqs == sorted(seqs) and seqs[-1] == 20
