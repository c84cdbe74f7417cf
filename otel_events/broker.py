"""Fan-out of one event stream to many readers, in bounded memory.

An ``EventLog`` is a ring of the most recent events of one stream, indexed by ``seq``.
Publishing writes one slot and, at most once per batch, wakes the readers that wait:
its cost does not grow with the number of readers. Each reader is only a cursor (the
next seq it wants), so a slow reader holds no memory of its own.

Overflow policy (the same for the emitter's subscribers and the bridge's clients):

* A reader more than ``soft_lag`` events behind skips transient events
  (``item.updated``, ``progress.update``, ``token.count``, ``item.plan.delta``): the
  lifecycle events after them carry the state that matters.
* When the ring overwrites events a reader has not read yet, the reader loses them. If
  only transient events were lost, it goes on (they are counted in ``dropped``). If any
  other event was lost (``item.completed``, ``turn.completed``, ``turn.failed`` and the
  other lifecycle events), the reader is cut off: it receives one final
  ``stream.overflow`` event saying so, and its iterator ends. Lifecycle events are never
  dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from otel_events.protocol import TRANSIENT_EVENT_TYPES, Event, StreamOverflow, parse_event

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Entry", "EventLog", "Gap", "Subscription"]

_TRANSIENT = frozenset(str(t) for t in TRANSIENT_EVENT_TYPES)


class Entry:
    """One published event: its seq, type and JSON encoding, made once for all readers.

    ``entry.event`` is the typed event, parsed on first use and then shared by every
    reader; readers that only forward bytes never pay for it. Other attributes fall
    through to it, so ``entry.item.description`` works as on the event itself.
    """

    __slots__ = ("_event", "frame", "json", "seq", "time", "transient", "type")

    def __init__(self, seq: int, type: str, json: bytes, time: float,
                 frame: bytes | None = None) -> None:
        self.seq = seq
        self.type = type
        self.json = json
        self.time = time
        self.transient = type in _TRANSIENT
        #: The event in another wire form (the bridge's SSE frame), also made once.
        self.frame = frame
        self._event: Event | None = None

    @property
    def event(self) -> Event:
        """The typed event, parsed on first use and shared by every reader."""
        if self._event is None:
            self._event = parse_event(self.json)
        return self._event

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not slots: the typed event's fields.
        return getattr(self.event, name)

    def __repr__(self) -> str:
        return f"Entry(seq={self.seq}, type={self.type!r}, json={self.json[:80]!r})"


@dataclass(frozen=True, slots=True)
class Gap:
    """Events a reader can no longer get: ``missed`` of them, ending before ``resume_seq``."""

    missed: int
    resume_seq: int


class EventLog:
    """A bounded ring of one stream's events, by seq, with wake-ups for waiting readers.

    ``append`` may be called from any thread, but from one at a time (the caller
    serialises, as the emitter does under its lock). Readers run in asyncio loops or
    threads.
    """

    def __init__(self, capacity: int = 4096, max_age: float | None = None) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self.max_age = max_age
        # Grown as events arrive, up to ``capacity``: a log that is made but little
        # used (a thread a client opened before any event) stays small.
        self._ring: list[Entry | None] = [None] * min(capacity, 64)
        #: Seq of the next event to be appended.
        self.next_seq = 1
        #: Lowest seq still held.
        self.first_seq = 1
        # Highest seq of a non-transient event that left the ring: a reader whose cursor
        # is at or below it has lost a lifecycle event.
        self._lost_lifecycle_seq = 0
        self._waiters: list[Callable[[], None]] = []
        # Weak keys: a loop that is gone takes its entry with it.
        self._loop_waits: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _LoopWaiters] = weakref.WeakKeyDictionary()
        self._closed = False

    # -- writing ---------------------------------------------------------------

    def append(self, type: str, json: bytes, now: float | None = None,
               frame: bytes | None = None) -> Entry:
        """Add the event with seq ``next_seq`` (already encoded in ``json``, and ``frame``)."""
        seq = self.next_seq
        if now is None:
            # Only age-bounded logs (the bridge's) need the time of each event.
            now = time.monotonic() if self.max_age is not None else 0.0
        entry = Entry(seq, type, json, now, frame)
        ring = self._ring
        if seq >= len(ring) and len(ring) < self.capacity:
            # Before the first wrap every seq sits at its own index, so growing keeps
            # every entry where it is.
            ring.extend([None] * min(len(ring), self.capacity - len(ring)))
        slot = seq % self.capacity
        old = ring[slot]
        if old is not None:
            self._evict(old)
        ring[slot] = entry
        self.next_seq = seq + 1
        if self.max_age is not None:
            self.trim(entry.time)
        if self._waiters:
            self._wake()
        return entry

    def trim(self, now: float | None = None) -> None:
        """Drop events older than ``max_age``."""
        if self.max_age is None:
            return
        horizon = (time.monotonic() if now is None else now) - self.max_age
        ring, cap = self._ring, self.capacity
        while self.first_seq < self.next_seq:
            entry = ring[self.first_seq % cap]
            if entry is None or entry.seq != self.first_seq or entry.time >= horizon:
                break
            ring[self.first_seq % cap] = None
            self._evict(entry)

    def _evict(self, entry: Entry) -> None:
        if not entry.transient:
            self._lost_lifecycle_seq = entry.seq
        if entry.seq >= self.first_seq:
            self.first_seq = entry.seq + 1

    def notify(self) -> None:
        """Wake every waiting reader (for example one asked to stop)."""
        self._wake()

    def close(self) -> None:
        """No more events: readers finish once they have read everything."""
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def drained(self, cursor: int, stopping: bool = False) -> bool:
        """Closed (or the reader is ``stopping``), and a reader at ``cursor`` has read
        everything: it may stop.

        Checking ``closed`` alone after an empty read would lose the events appended
        between the two (the final ones, as a rule).
        """
        return (self._closed or stopping) and cursor >= self.next_seq

    # -- reading ---------------------------------------------------------------

    def read(
        self, cursor: int, limit: int = 256, soft_lag: int | None = None
    ) -> tuple[list[Entry], int, int, Gap | None]:
        """Up to ``limit`` entries from ``cursor`` on.

        Returns ``(entries, new_cursor, skipped, gap)``: ``skipped`` transient events were
        passed over; ``gap`` is set when a lifecycle event at or after ``cursor`` is gone.
        """
        skipped = 0
        first = self.first_seq
        if cursor < first:
            if cursor <= self._lost_lifecycle_seq:
                return [], cursor, 0, Gap(first - cursor, first)
            skipped = first - cursor
            cursor = first
        end = self.next_seq
        lagging = soft_lag is not None and end - cursor > soft_lag
        ring, cap = self._ring, self.capacity
        count = min(end - cursor, limit)
        if not lagging and count > 0:
            # Fast path: one slice of the ring (a C-level copy). Seqs in the ring only
            # grow, so if both ends are the ones wanted, nothing between was overwritten.
            start = cursor % cap
            if start + count <= cap:
                block = ring[start:start + count]
            else:
                block = ring[start:] + ring[:start + count - cap]
            head, tail = block[0], block[-1]
            if (head is not None and tail is not None and head.seq == cursor
                    and tail.seq == cursor + count - 1):
                return cast(list[Entry], block), cursor + count, skipped, None
        out: list[Entry] = []
        while cursor < end and len(out) < limit:
            entry = ring[cursor % cap]
            if entry is None or entry.seq != cursor:
                # Overwritten while we read: start again from the new tail.
                return out, cursor, skipped, None if out else self._gap_at(cursor)
            cursor += 1
            if lagging and entry.transient:
                skipped += 1
                continue
            out.append(entry)
        return out, cursor, skipped, None

    def _gap_at(self, cursor: int) -> Gap | None:
        if cursor <= self._lost_lifecycle_seq:
            return Gap(self.first_seq - cursor, self.first_seq)
        return None

    def get(self, seq: int) -> Entry | None:
        """The entry with this seq, if still held."""
        if not 0 < seq < self.next_seq:
            return None
        entry = self._ring[seq % self.capacity]
        return entry if entry is not None and entry.seq == seq else None

    def __len__(self) -> int:
        return self.next_seq - self.first_seq

    # -- waiting ---------------------------------------------------------------

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    async def wait(self, cursor: int) -> None:
        """Return once there is an event at or after ``cursor``, or the log is closed.

        The readers waiting in one loop share one wake-up: a batch of appends costs the
        publisher a single ``call_soon`` however many readers there are, and that one
        loop callback then resolves every reader's future.
        """
        if cursor < self.next_seq or self._closed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiting = self._loop_waits.get(loop)
        if waiting is None:
            waiting = self._loop_waits[loop] = _LoopWaiters()
        if not waiting.armed:  # one wake-up registered per loop at a time
            waiting.armed = True
            owner = threading.get_ident()

            def wake() -> None:
                if loop.is_closed():
                    return
                if threading.get_ident() == owner:
                    loop.call_soon(waiting.resolve)
                else:
                    loop.call_soon_threadsafe(waiting.resolve)

            self._waiters.append(wake)
        waiting.futures[fut] = None
        # Re-check: an append between the test above and the registration.
        if cursor < self.next_seq or self._closed:
            _resolve(fut)
        try:
            await fut
        finally:
            # A reader that went away (cancelled) must not stay listed until the next event.
            waiting.futures.pop(fut, None)

    def wait_blocking(self, cursor: int, timeout: float | None = None) -> bool:
        """Thread version of ``wait``; returns False on timeout."""
        if cursor < self.next_seq or self._closed:
            return True
        ready = threading.Event()
        self._waiters.append(ready.set)
        if cursor < self.next_seq or self._closed or ready.wait(timeout):
            return True
        # Timed out: take the waiter back, or idle readers would pile them up for the
        # next append (on the emitter's path) to call.
        with contextlib.suppress(ValueError):
            self._waiters.remove(ready.set)
        return False

    def subscribe(self, after: int | None = None, soft_lag: int | None = None) -> Subscription:
        """A reader starting after seq ``after`` (default: only new events)."""
        cursor = self.next_seq if after is None else after + 1
        return Subscription(self, cursor, soft_lag if soft_lag is not None else self.capacity // 2)


def overflow_json(last_seq: int, missed: int) -> bytes:
    """The ``stream.overflow`` event for a reader cut off after ``last_seq``."""
    return StreamOverflow(last_seq=last_seq, missed=missed).model_dump_json(
        exclude_none=True).encode()


class _LoopWaiters:
    """The readers of one log parked in one event loop, and whether a wake-up is set."""

    __slots__ = ("armed", "futures")

    def __init__(self) -> None:
        self.futures: dict[asyncio.Future[None], None] = {}
        self.armed = False

    def resolve(self) -> None:
        self.armed = False
        futures = list(self.futures)
        self.futures.clear()
        for fut in futures:
            _resolve(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Subscription:
    """An async iterator over one stream's events, each an ``Entry``.

    An entry carries the event's seq, type and JSON bytes, and the typed event as
    ``entry.event`` (its fields are also reachable on the entry itself). ``get()``
    returns the next one, as the seed's ``asyncio.Queue`` did. The iterator ends when the
    log is closed and drained, when ``close()`` is called, or after a
    ``stream.overflow`` event.
    """

    def __init__(self, log: EventLog, cursor: int, soft_lag: int) -> None:
        self._log = log
        self.cursor = cursor
        self.soft_lag = soft_lag
        #: Transient events this reader skipped or lost.
        self.dropped = 0
        self._pending: list[Entry] = []
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Entry:
        if self._pending:  # the common case: a batch is already in hand
            return self._pending.pop()
        entry = await self._refill()
        if entry is None:
            raise StopAsyncIteration
        return entry

    async def get(self) -> Entry:
        """The next event (the seed's ``queue.get()``); raises ``StopAsyncIteration`` at the end."""
        return await self.__anext__()

    async def next_entry(self) -> Entry | None:
        """The next entry, or ``None`` at the end of the stream."""
        if self._pending:
            return self._pending.pop()
        return await self._refill()

    async def entries(self) -> AsyncIterator[Entry]:
        """The same entries as plain iteration, as an async generator."""
        while (entry := await self.next_entry()) is not None:
            yield entry

    async def _refill(self) -> Entry | None:
        while True:
            if self._closed:
                return None
            entries, self.cursor, skipped, gap = self._log.read(
                self.cursor, soft_lag=self.soft_lag
            )
            self.dropped += skipped
            if gap is not None:
                self._closed = True
                return self._overflow_entry(gap)
            if entries:
                entries.reverse()
                self._pending = entries
                return entries.pop()
            if self._log.drained(self.cursor):
                self._closed = True
                return None
            await self._log.wait(self.cursor)

    def _overflow_entry(self, gap: Gap) -> Entry:
        # seq 0: a synthetic event never moves a reader's cursor.
        return Entry(0, "stream.overflow", overflow_json(self.cursor - 1,
                                                         gap.missed + self.dropped), 0.0)

    def close(self) -> None:
        """Stop reading; a reader holds nothing else, so this is all the clean-up there is."""
        self._closed = True
        self._pending.clear()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
