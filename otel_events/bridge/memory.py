"""``MemoryBroker``: the bridge's threads kept in this process (the embedded default).

Each thread is an ``EventLog`` (its recent events, read by every client's cursor), its
folded ``ThreadSnapshot``, and a window of producer lines already accepted. The bridge
owns each thread's ``seq``: an accepted event is re-numbered and encoded once as JSON;
every client then reads those same bytes. A thread's epoch is made when the thread is:
a restart or an expiry gives a new one, so no old position can be misread.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import orjson

from otel_events.bridge.broker import (
    FELL_BEHIND,
    Appended,
    Batch,
    EventLine,
    Position,
    Reset,
    TooManyThreads,
    entries_bytes,
    resume_at,
)
from otel_events.bridge.snapshot import ThreadSnapshot
from otel_events.log import Cursor, Entry, EventLog
from otel_events.protocol import Event, encode_event
from otel_events.retention import DEFAULTS

__all__ = ["THREAD_ID_PATTERN", "MemoryBroker", "MemoryThread", "valid_thread_id"]

#: Thread ids the bridge accepts: they end up in URLs, logs and span attributes.
THREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)


# Most accepted events a thread holds before folding them into its state.
_MAX_UNFOLDED = 64
# How long after an append its events are folded into the thread's state: long enough
# that the readers have sent them (and, on a busy machine, that the clients have had the
# CPU to take them), short enough that few events wait.
_FOLD_DELAY = 0.001


def dedup_key(producer_seq: int, digest: int) -> int:
    """The producer's seq and the line's digest as one int, exactly (both fit 64 bits).

    An int, not a tuple: the window holds thousands of keys per thread, and a tuple is
    an object the garbage collector tracks, so each accepted line would bring the next
    collection (a pause on the streams' path) closer.
    """
    return producer_seq << 64 | digest & _DIGEST_BITS


_DIGEST_BITS = 2**64 - 1


def valid_thread_id(thread_id: str) -> bool:
    return _THREAD_ID.match(thread_id) is not None


def new_epoch() -> str:
    """A short random token: two epochs of one thread never collide in practice."""
    return secrets.token_hex(4)


class ByteBudget:
    """Bytes of event JSON held for replay by every thread of a broker, and its bound."""

    __slots__ = ("limit", "total")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0

    @property
    def over(self) -> bool:
        return self.limit is not None and self.total > self.limit


class MemoryThread:
    """One thread as the bridge holds it: its log, its folded state, its readers."""

    def __init__(self, thread_id: str, capacity: int, max_age: float | None,
                 dedup_window: int, max_turns: int = 20, max_bytes: int | None = None,
                 budget: ByteBudget | None = None) -> None:
        self.thread_id = thread_id
        self.epoch = new_epoch()
        # Appends come from request tasks of the readers' own loop: they wake the
        # readers at once (see ``EventLog``), a loop turn sooner than a callback would.
        # The log counts the bytes it holds and keeps within ``max_bytes`` itself.
        self.log = EventLog(capacity, max_bytes=max_bytes, wake_inline=True)
        self._snapshot = ThreadSnapshot(thread_id, max_turns=max_turns)
        # Accepted events not folded into the snapshot yet: the fold waits until the
        # readers have their batch (see MemoryBroker.append), or until someone asks.
        self._unfolded: list[tuple[Event, int]] = []
        self._fold_timer: asyncio.TimerHandle | None = None
        self.max_age = max_age
        self._budget = budget if budget is not None else ByteBudget(None)
        #: SSE connections reading this thread now.
        self.readers = 0
        self.last_active = time.monotonic()
        # (arrival time, seq), oldest first: what age-based retention trims.
        self._arrivals: deque[tuple[float, int]] = deque()
        # Producer lines accepted recently, and the same keys oldest first: forgetting
        # the oldest from a dict (``next(iter(...))``) gets slower with each deletion,
        # as the dict's head fills with dead slots, until it is rebuilt.
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._dedup_window = dedup_window
        # What is derived from the folded state (its JSON, its summary), by seq.
        self._per_seq: dict[str, tuple[int, object]] = {}
        #: Scratch space of the SSE layer (see ``Batch.shared``).
        self.shared: dict[Any, Any] = {}

    def publish(self, event: Event, digest: int | None = None,
                raw: dict[str, Any] | None = None) -> int | None:
        """Number, encode and append one event; ``None`` if it was already accepted.

        ``raw`` is the validated event as the producer sent it: encoding that (with the
        bridge's seq) is several times cheaper than serialising the model again.
        """
        producer_seq = event.seq
        key: int | None = None
        if producer_seq is not None and digest is not None:
            key = dedup_key(producer_seq, digest)
            if key in self._seen:
                return None
        log = self.log
        seq = log.next_seq
        # Encoded before anything is recorded: if encoding ever failed, the line would
        # not be remembered as seen, so a retry could still deliver it.
        if raw is not None:
            body = dict(raw)
            if body.get("thread_id") is None:
                body["thread_id"] = self.thread_id
            body["seq"] = seq
            # orjson's result holds a buffer of at least 4 KiB whatever its length; the
            # log keeps an exact-size copy (slicing one off makes one).
            data = orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)[:-1]
        else:
            event.seq = seq
            if event.thread_id is None:
                event.thread_id = self.thread_id
            data = encode_event(event)
        if key is not None:
            self._seen.add(key)
            self._seen_order.append(key)
            if len(self._seen_order) > self._dedup_window:
                self._seen.discard(self._seen_order.popleft())
        held = log.bytes
        log.append(event.type, data)  # may let the oldest go: by count or by bytes
        self._budget.total += log.bytes - held
        self._unfolded.append((event, seq))
        if len(self._unfolded) >= _MAX_UNFOLDED:  # bounded, whoever publishes
            self.fold()
        now = time.monotonic()
        self.last_active = now
        if self.max_age is not None:
            self._arrivals.append((now, seq))
            self.trim(now)
        return seq

    @property
    def bytes(self) -> int:
        """Bytes of event JSON this thread holds for replay."""
        return self.log.bytes

    @property
    def max_bytes(self) -> int | None:
        """The thread's own bound on them (the log keeps the newest event whatever)."""
        return self.log.max_bytes

    def forget_before(self, seq: int) -> None:
        """Forget every event below ``seq`` (keeping the byte budget right)."""
        held = self.log.bytes
        self.log.forget_before(seq)
        self._budget.total -= held - self.log.bytes

    def trim_bytes(self, limit: int) -> None:
        """Forget the oldest events until at most ``limit`` bytes are held, the newest
        too: the total bound may take them all, else one event per thread would escape
        it. The folded state stays."""
        log = self.log
        excess = log.bytes - limit
        keep_from = log.first_seq
        while excess > 0 and keep_from < log.next_seq:
            entry = log.get(keep_from)
            if entry is not None:
                excess -= len(entry.json)
            keep_from += 1
        if keep_from > log.first_seq:
            self.forget_before(keep_from)

    def trim(self, now: float | None = None) -> None:
        """Forget events older than ``max_age``."""
        if self.max_age is None:
            return
        horizon = (time.monotonic() if now is None else now) - self.max_age
        arrivals = self._arrivals
        keep_from = 0
        while arrivals and (arrivals[0][0] < horizon or arrivals[0][1] < self.log.first_seq):
            keep_from = arrivals.popleft()[1] + 1
        if keep_from:
            self.forget_before(keep_from)

    @property
    def snapshot(self) -> ThreadSnapshot:
        """The thread's state, with every accepted event folded in."""
        self.fold()
        return self._snapshot

    def fold_later(self) -> None:
        """Fold what is pending a moment from now, out of the readers' way."""
        if self._fold_timer is None and self._unfolded:
            self._fold_timer = asyncio.get_running_loop().call_later(
                _FOLD_DELAY, self._fold_due)

    def _fold_due(self) -> None:
        self._fold_timer = None
        self.fold()

    def fold(self) -> None:
        """Fold the accepted events the snapshot has not seen yet."""
        if self._unfolded:
            pending, self._unfolded = self._unfolded, []
            apply = self._snapshot.apply
            for event, seq in pending:
                apply(event, seq)

    def snapshot_json(self) -> builtins.bytes:  # ``bytes`` is the property above, here
        """The folded state as JSON, encoded once per seq."""
        return cast(builtins.bytes, self._once_per_seq("json", self._snapshot.to_json))

    def summary(self) -> dict[str, Any]:
        """The thread's line of ``GET /v1/threads``, made once per seq: every open page
        polls the list, and a bridge may hold thousands of threads."""
        return cast(dict[str, Any], self._once_per_seq("summary", self._snapshot.summary))

    def _once_per_seq(self, key: str, make: Callable[[], object]) -> object:
        """``make()`` of the folded state, made again only once the state has moved on."""
        seq = self.snapshot.seq  # folds what is pending first
        cached = self._per_seq.get(key)
        if cached is None or cached[0] != seq:
            cached = self._per_seq[key] = (seq, make())
        return cached[1]

    def drop(self) -> None:
        """The thread is forgotten: its bytes leave the budget, its readers end."""
        self._budget.total -= self.log.bytes
        # Its readers may still drain what it holds; none of that counts any more.
        self._budget = ByteBudget(None)
        self.log.close()
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None

    @property
    def unfolded(self) -> int:
        """Accepted events not folded into the state yet (a diagnostic)."""
        return len(self._unfolded)

    @property
    def fold_scheduled(self) -> bool:
        """A deferred fold is due (a diagnostic)."""
        return self._fold_timer is not None

    def reset(self, reason: str) -> Reset:
        return Reset(reason, self.epoch, self.snapshot.seq, self.snapshot_json())


class MemoryReader:
    """A client's reader of one ``MemoryThread`` (a cursor on its log)."""

    def __init__(self, broker: MemoryBroker, thread_id: str, position: Position | None,
                 batch: int, batch_bytes: int | None = None) -> None:
        self._broker = broker
        self._thread_id = thread_id
        self._position = position
        self._batch = batch
        self._batch_bytes = batch_bytes
        self._thread: MemoryThread | None = None
        self._cursor: Cursor | None = None
        self._closed = False

    async def next(self) -> Batch | Reset | None:
        while self._thread is None:
            if self._closed or self._broker.closed:
                return None
            thread = self._broker.get(self._thread_id)
            if thread is None:
                # Unknown thread: wait for its first event without creating it.
                await self._broker.wait_created(self._thread_id)
                continue
            thread.readers += 1
            self._thread = thread
            first = self._attach(thread)
            if first is not None:
                return first
        thread, cursor = self._thread, self._cursor
        assert cursor is not None
        log = thread.log
        while True:
            if self._closed:
                return None
            start = cursor.position
            # A reader that has just sent what there was parks straight away: with
            # many clients, each one's way back to the wait delays the next one's send.
            if start < log.next_seq:
                entries, gap = cursor.read(self._batch)
                if gap is not None:
                    cursor.skip(gap)
                    reset = thread.reset(FELL_BEHIND)
                    cursor.position = reset.seq + 1
                    return reset
                if entries:
                    if self._batch_bytes is not None and len(entries) > 1:
                        entries = self._cut(entries, self._batch_bytes, cursor, thread)
                    return Batch(thread.epoch, entries, start, cursor.position,
                                 thread.shared)
            if cursor.at_end():
                return None
            await cursor.wait()

    @staticmethod
    def _cut(entries: list[Entry], limit: int, cursor: Cursor,
             thread: MemoryThread) -> list[Entry]:
        """At most ``limit`` bytes of events (at least one): a client that stops reading
        pins one write, never a whole replay."""
        if entries_bytes(thread.epoch, entries, thread.shared) <= limit:
            return entries
        size = 0
        for index, entry in enumerate(entries):
            size += len(entry.json)
            if size > limit and index:
                cursor.position = entries[index - 1].seq + 1
                return entries[:index]
        return entries

    def _attach(self, thread: MemoryThread) -> Reset | None:
        """Place the cursor from the client's position; a reset if it cannot resume."""
        log = thread.log
        soft_lag = max(1, log.capacity // 2)
        start = resume_at(self._position, thread.epoch, log.first_seq, log.next_seq)
        if isinstance(start, str):
            reset = thread.reset(start)
            self._cursor = log.cursor(after=reset.seq, soft_lag=soft_lag)
            return reset
        self._cursor = log.cursor(after=start - 1, soft_lag=soft_lag)
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._cursor is not None:
            self._cursor.close()
        if self._thread is not None:
            self._thread.readers -= 1
            # Idle time counts from the last reader too, not only the last event.
            self._thread.last_active = time.monotonic()


class _Awaited:
    """Readers waiting for one thread id's first event."""

    __slots__ = ("created", "readers")

    def __init__(self) -> None:
        self.created: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.readers = 0

    def wake(self) -> None:
        if not self.created.done():
            self.created.set_result(None)


class MemoryBroker:
    """Every thread the bridge knows, in memory, bounded in number; idle ones expire.

    The retention defaults are the deployed bridge's (``Retention``), so a broker built
    directly is bounded in memory as the bridge is; pass ``None`` to lift a bound.
    """

    def __init__(
        self,
        retention_count: int = DEFAULTS.count,
        retention_age: float | None = DEFAULTS.age,
        idle_expiry: float | None = DEFAULTS.idle_expiry,
        max_threads: int = DEFAULTS.max_threads,
        max_turns: int = 20,
        batch: int = 512,
        batch_bytes: int | None = 256 * 1024,
        retention_bytes: int | None = DEFAULTS.bytes,
        retention_total_bytes: int | None = DEFAULTS.total_bytes,
    ) -> None:
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.idle_expiry = idle_expiry
        self.max_threads = max_threads
        self.max_turns = max_turns
        self.batch = batch
        #: Most bytes of events in one batch for one client (at least one event).
        self.batch_bytes = batch_bytes
        #: Bytes of event JSON kept per thread; the budget bounds all threads together.
        self.retention_bytes = retention_bytes
        self.budget = ByteBudget(retention_total_bytes)
        self._threads: dict[str, MemoryThread] = {}
        # Readers waiting for a thread's first event: a future per thread id, made
        # and dropped with its readers (it holds no registry capacity).
        self._awaited: dict[str, _Awaited] = {}
        self._closed = False

    # -- the Broker interface ----------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def append(self, thread_id: str, lines: Sequence[EventLine]) -> Appended:
        thread = self.get_or_create(thread_id)
        accepted = duplicates = 0
        last_seq: int | None = None
        for index, line in enumerate(lines, 1):
            if index % 500 == 0:
                # A big batch lets the streams run now and then (order is kept: each
                # event still gets the next seq, and other appends wait on nothing).
                await asyncio.sleep(0)
            seq = thread.publish(line.event, line.digest, line.raw)
            if seq is None:
                duplicates += 1
            else:
                accepted += 1
                last_seq = seq
            if self.budget.over:
                self.enforce_budget()
        if accepted:
            # The readers first: appending resolved the parked readers' futures, so
            # their tasks are queued ahead of this one, and one loop turn lets them send
            # before this request goes on to build its answer (or even sets the timer of
            # the fold). The events are folded into the thread's state a moment later,
            # when the clients have had their bytes (the state is folded on demand too,
            # so a reset or a GET never sees it stale).
            try:
                await asyncio.sleep(0)
            finally:
                thread.fold_later()
        return Appended(accepted, duplicates, last_seq)

    def reader(self, thread_id: str, position: Position | None) -> MemoryReader:
        return MemoryReader(self, thread_id, position, self.batch, self.batch_bytes)

    def enforce_budget(self) -> None:
        """Bring the bytes held by all threads under the total bound, trimming the
        biggest threads first (to 90 % of it, so this runs once per tenth of the bound
        appended, not on every event once full). Clients that needed what went get a
        reset; a thread trimmed to nothing keeps its state and its numbering."""
        budget = self.budget
        if budget.limit is None:
            return
        target = budget.limit * 9 // 10
        heap = [(-thread.bytes, index, thread)
                for index, thread in enumerate(self._threads.values())]
        heapq.heapify(heap)
        while budget.total > target and heap:
            _, index, thread = heapq.heappop(heap)
            before = thread.bytes
            # Halve the biggest thread, or take just what is missing: threads even out.
            thread.trim_bytes(max(before - (budget.total - target), before // 2))
            if 0 < thread.bytes < before:
                heapq.heappush(heap, (-thread.bytes, index, thread))

    async def snapshot(self, thread_id: str) -> bytes | None:
        thread = self._threads.get(thread_id)
        return None if thread is None else thread.snapshot_json()

    async def summaries(self) -> list[dict[str, Any]]:
        return [thread.summary() for thread in list(self._threads.values())]

    async def expire(self) -> int:
        return self.sweep()

    async def ready(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True
        for thread in self._threads.values():
            thread.drop()
        for entry in self._awaited.values():
            entry.wake()

    # -- in-process access (tests, benchmarks, diagnostics) ------------------------

    def get(self, thread_id: str) -> MemoryThread | None:
        return self._threads.get(thread_id)

    def get_or_create(self, thread_id: str) -> MemoryThread:
        """The thread, made on its first accepted event."""
        thread = self._threads.get(thread_id)
        if thread is None:
            if not valid_thread_id(thread_id):
                raise ValueError("invalid thread id")
            if len(self._threads) >= self.max_threads:
                self.sweep()
                if len(self._threads) >= self.max_threads:
                    raise TooManyThreads(f"the bridge holds {self.max_threads} threads")
            thread = MemoryThread(thread_id, self.retention_count, self.retention_age,
                                  dedup_window=self.retention_count, max_turns=self.max_turns,
                                  max_bytes=self.retention_bytes, budget=self.budget)
            self._threads[thread_id] = thread
            entry = self._awaited.pop(thread_id, None)
            if entry is not None:
                entry.wake()
        return thread

    async def wait_created(self, thread_id: str) -> None:
        """Return once ``thread_id`` exists (or the broker closes)."""
        if thread_id in self._threads or self._closed:
            return
        entry = self._awaited.get(thread_id)
        if entry is None:
            entry = self._awaited[thread_id] = _Awaited()
        entry.readers += 1
        try:
            # shield: one reader leaving must not cancel the future the others share.
            await asyncio.shield(entry.created)
        finally:
            entry.readers -= 1
            if entry.readers == 0 and self._awaited.get(thread_id) is entry:
                del self._awaited[thread_id]

    def __iter__(self) -> Iterator[MemoryThread]:
        return iter(list(self._threads.values()))

    def __len__(self) -> int:
        return len(self._threads)

    @property
    def awaited(self) -> int:
        """Thread ids that readers wait for (they hold no thread)."""
        return len(self._awaited)

    def readers(self, thread_id: str) -> int:
        """Clients reading ``thread_id`` now, or waiting for its first event."""
        thread = self._threads.get(thread_id)
        if thread is not None:
            return thread.readers
        entry = self._awaited.get(thread_id)
        return 0 if entry is None else entry.readers

    def sweep(self, now: float | None = None) -> int:
        """Trim aged events; drop threads idle past ``idle_expiry`` with no reader."""
        now = time.monotonic() if now is None else now
        expired = 0
        for thread_id, thread in list(self._threads.items()):
            thread.trim(now)
            if (self.idle_expiry is not None and thread.readers == 0
                    and now - thread.last_active > self.idle_expiry):
                del self._threads[thread_id]
                thread.drop()
                expired += 1
        return expired
