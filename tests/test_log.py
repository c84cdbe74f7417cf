"""The event log: fan-out, one wake per batch, and the documented overflow policy."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest

from otel_events.log import EventLog
from otel_events.protocol import StreamOverflow


def put(log: EventLog, kind: str) -> None:
    body: dict[str, object] = {"type": kind, "seq": log.next_seq}
    if kind.startswith("item."):
        body["item"] = {"id": "item_1", "type": "reasoning"}
    elif kind == "progress.update":
        body["item_id"] = "item_1"
    log.append(kind, orjson.dumps(body))


async def test_many_subscribers_each_get_every_event_in_order() -> None:
    log = EventLog(capacity=64)
    subs = [log.subscribe() for _ in range(20)]

    async def drain(index: int) -> list[int]:
        seqs = []
        async for event in subs[index]:
            seqs.append(event.seq or 0)
        return seqs

    readers = [asyncio.create_task(drain(i)) for i in range(len(subs))]
    for _ in range(10):
        put(log, "item.started")
        await asyncio.sleep(0)  # let readers park between batches
    log.close()
    results = await asyncio.gather(*readers)
    assert all(seqs == list(range(1, 11)) for seqs in results)


async def test_publisher_wakes_once_per_batch_whatever_the_number_of_readers() -> None:
    log = EventLog(capacity=64)
    subs = [log.subscribe() for _ in range(50)]
    tasks = [asyncio.create_task(sub.get()) for sub in subs]
    await asyncio.sleep(0)  # every reader is now parked
    assert log.waiting == 1  # one waiter for the whole loop
    for _ in range(5):
        put(log, "item.updated")
    assert log.waiting == 0  # the first append woke the batch; later ones had nothing to do
    events = await asyncio.gather(*tasks)
    assert {e.seq for e in events} == {1}


async def test_entries_are_encoded_once_and_shared() -> None:
    log = EventLog(capacity=8)
    a, b = log.subscribe(), log.subscribe()
    put(log, "turn.started")
    ea, eb = await a.next_entry(), await b.next_entry()
    assert ea is eb and ea is not None
    assert (await_event := ea.event) is eb.event  # parsed once too
    assert await_event.type == "turn.started"


async def test_lagging_reader_skips_transient_events_but_keeps_lifecycle_ones() -> None:
    log = EventLog(capacity=16)
    sub = log.subscribe(soft_lag=4)
    for kind in ["item.started"] + ["item.updated"] * 8 + ["progress.update", "item.completed"]:
        put(log, kind)
    got = []
    log.close()
    async for event in sub:
        got.append(event.type)
    assert got == ["item.started", "item.completed"]
    assert sub.dropped == 9


async def test_lost_transient_events_do_not_cut_a_reader_off() -> None:
    log = EventLog(capacity=4)
    sub = log.subscribe(soft_lag=100)
    put(log, "turn.started")
    assert (await sub.get()).type == "turn.started"
    for _ in range(6):
        put(log, "progress.update")  # overwrites only transient events the reader missed
    put(log, "item.completed")
    log.close()
    rest = [event.type async for event in sub]
    assert rest[-1] == "item.completed"
    assert "stream.overflow" not in rest
    assert sub.dropped >= 3


async def test_reader_that_lost_a_lifecycle_event_is_cut_off_with_a_final_event() -> None:
    log = EventLog(capacity=4)
    sub = log.subscribe()
    put(log, "turn.started")
    assert (await sub.get()).seq == 1
    for _ in range(3):
        put(log, "item.started")
    for _ in range(3):
        put(log, "item.completed")  # the ring now lost item.started events the reader needs
    last = (await sub.get()).event
    assert isinstance(last, StreamOverflow)
    assert last.last_seq == 1 and last.missed >= 2
    with pytest.raises(StopAsyncIteration):
        await sub.get()
    # Memory stayed bounded: the log never held more than its capacity.
    assert len(log) == 4


def test_forget_before_drops_old_events_and_gap_is_reported() -> None:
    log = EventLog(capacity=100)
    put(log, "turn.started")
    put(log, "item.updated")
    put(log, "item.started")
    log.forget_before(3)  # the owner's retention (age, bytes) let the first two go
    assert log.first_seq == 3
    entries, _, _, gap = log.read(1)
    assert gap is not None and gap.resume_seq == 3 and entries == []
    entries, _cursor, skipped, gap = log.read(2)
    assert gap is None and [e.seq for e in entries] == [3] and skipped == 1


def test_thread_reader_wakes_on_append() -> None:
    log = EventLog(capacity=8)
    seen: list[int] = []

    def reader() -> None:
        cursor = 1
        while len(seen) < 3:
            assert log.wait_blocking(cursor, timeout=10)
            entries, cursor, _, _ = log.read(cursor)
            seen.extend(e.seq for e in entries)

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(3):
        put(log, "item.started")
    thread.join(10)
    assert seen == [1, 2, 3]


async def test_append_from_another_thread_wakes_an_async_reader() -> None:
    log = EventLog(capacity=8)
    sub = log.subscribe()
    task = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    threading.Thread(target=put, args=(log, "turn.started")).start()
    event = await asyncio.wait_for(task, 10)
    assert event.seq == 1


async def test_closed_subscription_ends_and_holds_nothing() -> None:
    log = EventLog(capacity=8)
    sub = log.subscribe()
    put(log, "turn.started")
    sub.close()
    assert [e async for e in sub] == []
    assert log.waiting == 0


def test_capacity_must_be_sane() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventLog(capacity=1)


def test_reads_across_the_ring_boundary_and_detect_overwrites() -> None:
    log = EventLog(capacity=8)
    for _ in range(6):
        put(log, "item.started")
    entries, cursor, _, gap = log.read(1, limit=4)
    assert [e.seq for e in entries] == [1, 2, 3, 4] and cursor == 5 and gap is None
    for _ in range(6):
        put(log, "item.started")  # seqs 7..12 wrap around the ring, overwriting 1..4
    entries, cursor, _, gap = log.read(cursor)
    assert [e.seq for e in entries] == list(range(5, 13)) and cursor == 13 and gap is None
    for _ in range(8):
        put(log, "item.completed")  # a full lap: the reader at 13 lost nothing yet
    entries, _, _, gap = log.read(13, limit=3)
    assert [e.seq for e in entries] == [13, 14, 15]
    put(log, "item.completed")  # now seq 13 is gone
    entries, _, _, gap = log.read(13)
    assert entries == [] and gap is not None and gap.resume_seq == 14


def test_a_thread_reader_that_timed_out_leaves_no_waiter_behind() -> None:
    log = EventLog(capacity=8)
    for _ in range(3):
        assert log.wait_blocking(1, timeout=0.01) is False
    assert log.waiting == 0


def test_the_ring_grows_with_use_and_then_wraps() -> None:
    log = EventLog(capacity=300)
    assert len(log._ring) == 64  # a log nobody writes to stays small
    for _ in range(200):
        put(log, "item.started")
    assert 200 < len(log._ring) <= 300
    entries, _, _, _ = log.read(1, limit=1000)
    assert [e.seq for e in entries] == list(range(1, 201))
    for _ in range(250):
        put(log, "item.started")
    assert len(log._ring) == 300 and log.first_seq == 151
    entries, _, _, _ = log.read(151, limit=1000)
    assert [e.seq for e in entries] == list(range(151, 451))
    assert log.get(150) is None and log.get(450) is not None and log.get(451) is None


async def test_close_from_another_task_wakes_a_parked_reader() -> None:
    log = EventLog(capacity=8)
    sub = log.subscribe()
    reader = asyncio.create_task(sub.next_entry())
    for _ in range(1000):  # parked: its wake-up is registered
        if not log.waiting == 0:
            break
        await asyncio.sleep(0)
    sub.close()
    assert await asyncio.wait_for(reader, 10) is None


def test_cursor_close_from_another_thread_wakes_a_blocked_reader() -> None:
    log = EventLog(capacity=8)
    cursor = log.cursor()
    woke = threading.Event()

    def reader() -> None:
        cursor.wait_blocking(timeout=30)
        woke.set()

    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 10
    while log.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    cursor.close()
    thread.join(10)
    assert woke.is_set() and cursor.at_end()


def test_cursor_skips_transients_when_lagging_and_reports_a_lost_lifecycle_event() -> None:
    log = EventLog(capacity=8)
    cursor = log.cursor(after=0, soft_lag=2)
    for kind in ("turn.started", "item.updated", "progress.update", "item.started"):
        put(log, kind)
    entries, gap = cursor.read()
    assert gap is None and [e.type for e in entries] == ["turn.started", "item.started"]
    assert cursor.dropped == 2
    for _ in range(10):
        put(log, "item.completed")  # overwrites what the cursor has not read
    cursor.position = 5
    entries, gap = cursor.read()
    assert entries == [] and gap is not None
    cursor.skip(gap)
    assert cursor.position == gap.resume_seq and cursor.dropped == 2 + gap.missed


def test_a_log_may_start_later_in_a_numbering_and_wraps_from_there() -> None:
    log = EventLog(capacity=4, start=100)
    assert (log.first_seq, log.next_seq, len(log)) == (100, 100, 0)
    for _ in range(6):
        put(log, "item.started")
    assert (log.first_seq, log.next_seq) == (102, 106)
    entries, _, _, gap = log.read(102)
    assert gap is None and [e.seq for e in entries] == [102, 103, 104, 105]
    assert log.get(101) is None and log.get(105) is not None


@pytest.mark.parametrize(("inline", "turns"), [(True, 1), (False, 2)])
async def test_an_inline_log_wakes_its_readers_a_loop_turn_sooner(inline: bool,
                                                                  turns: int) -> None:
    # The bridge's broker appends from a task of its readers' loop (inline: they run in
    # the next turn); the emitter's log wakes them through one loop callback, so the
    # agent's call does not resolve every parked reader itself.
    log = EventLog(8, wake_inline=inline)
    waiters = [asyncio.create_task(log.cursor().wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert log.parked == 3 and log.waiting == 1
    log.append("turn.started", b'{"type":"turn.started"}')
    assert log.parked == (0 if inline else 3)
    taken = 0
    while not all(waiter.done() for waiter in waiters):
        await asyncio.sleep(0)
        taken += 1
        assert taken <= turns
    assert taken == turns


def test_max_bytes_bounds_the_json_held_and_keeps_the_newest_event() -> None:
    log = EventLog(capacity=100, max_bytes=1000)
    reader = log.cursor(after=0)
    line = b"x" * 300
    for _ in range(10):
        log.append("item.completed", line)
    # Three 300-byte events fit in 1000 bytes; the older seven left, oldest first.
    assert (log.first_seq, log.next_seq, log.bytes) == (8, 11, 900)
    entries, gap = reader.read()
    assert entries == [] and gap is not None and gap.resume_seq == 8  # a lifecycle loss
    # One event larger than the bound on its own is still held, alone, for readers.
    log.append("item.completed", b"y" * 5000)
    assert (len(log), log.bytes) == (1, 5000)
    assert log.get(11) is not None and log.get(11).json == b"y" * 5000  # type: ignore[union-attr]
    # The count bound and forget_before keep the byte count right too.
    small = EventLog(capacity=4, max_bytes=10_000)
    for i in range(10):
        small.append("item.updated", b"z" * (i + 1))
    assert small.bytes == 7 + 8 + 9 + 10
    small.forget_before(9)
    assert small.bytes == 9 + 10
    with pytest.raises(ValueError, match="max_bytes"):
        EventLog(max_bytes=0)
