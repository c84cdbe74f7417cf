"""The event log: one stream's recent events, read by many cursors, in bounded memory.

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

import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson

from otel_events.kinds import TRANSIENT_EVENT_TYPES

if TYPE_CHECKING:
    # asyncio loads when a reader first waits: agent code that never awaits a
    # subscription does not pay ~20 ms of import for it.
    import asyncio
    from types import TracebackType

    from otel_events.protocol import Event

__all__ = ["Cursor", "Entry", "EventLog", "Gap", "Subscription", "overflow_json"]

_TRANSIENT = frozenset(str(t) for t in TRANSIENT_EVENT_TYPES)


class Entry:
    """One published event: its seq, type and JSON encoding, made once for all readers.

    ``entry.event`` is the typed event, parsed on first use and then shared by every
    reader; readers that only forward bytes never pay for it (nor for importing the
    protocol's models). Other attributes fall through to it, so
    ``entry.item.description`` works as on the event itself.
    """

    __slots__ = ("_event", "json", "seq", "transient", "type")

    def __init__(self, seq: int, type: str, json: bytes) -> None:
        self.seq = seq
        self.type = type
        self.json = json
        self.transient = type in _TRANSIENT
        self._event: Event | None = None

    @property
    def event(self) -> Event:
        """The typed event, parsed on first use and shared by every reader."""
        if self._event is None:
            from otel_events.protocol import parse_event

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
    serialises, as the emitter does under its lock). Readers are ``Cursor`` objects and
    run in asyncio loops or threads. ``max_bytes`` bounds the JSON held as well as the
    count: past it the oldest events leave (the newest always stays, however large, so
    a reader that keeps up gets it). Other rules (by age) are the owner's decision: it
    calls ``forget_before``.

    ``wake_inline``: an append made in the thread of a loop whose readers wait resolves
    them at once, so they run in the loop's next turn, instead of through a loop
    callback (one turn later). For owners that append from a task of the readers' own
    loop (the bridge's in-memory broker); the emitter keeps the callback, so an agent's
    call costs the same however many readers wait.
    """

    def __init__(self, capacity: int = 4096, start: int = 1, *,
                 max_bytes: int | None = None, wake_inline: bool = False) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        if start < 1:
            raise ValueError("start must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        #: Bytes of event JSON held now.
        self.bytes = 0
        # Grown as events arrive, up to ``capacity``: a log that is made but little
        # used stays small. Growing relies on every seq sitting at its own index until
        # the first wrap, so a log that starts later (a mirror of a stream that is
        # already numbered) takes its whole ring at once.
        self._ring: list[Entry | None] = [None] * (min(capacity, 64) if start == 1
                                                    else capacity)
        #: Seq of the next event to be appended.
        self.next_seq = start
        #: Lowest seq still held.
        self.first_seq = start
        # Highest seq of a non-transient event that left the ring: a reader whose cursor
        # is at or below it has lost a lifecycle event.
        self._lost_lifecycle_seq = 0
        self._waiters: list[Callable[[], None]] = []
        # Weak keys: a loop that is gone takes its entry with it.
        self._loop_waits: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, _LoopWaiters] = weakref.WeakKeyDictionary()
        self._closed = False
        self._wake_inline = wake_inline

    # -- writing ---------------------------------------------------------------

    def append(self, type: str, json: bytes) -> Entry:
        """Add the event with seq ``next_seq``, already encoded as ``json``."""
        seq = self.next_seq
        entry = Entry(seq, type, json)
        ring = self._ring
        slot = seq % self.capacity
        if slot >= len(ring):
            # Only while growing: before the first wrap every seq sits at its own index
            # (slot == seq), so doubling the ring keeps every entry where it is.
            ring.extend([None] * min(len(ring), self.capacity - len(ring)))
        old = ring[slot]
        if old is not None:  # the oldest event leaves (``_evict``, inlined: every append)
            if not old.transient:
                self._lost_lifecycle_seq = old.seq
            self.first_seq = old.seq + 1
            self.bytes -= len(old.json)
        ring[slot] = entry
        self.next_seq = seq + 1
        self.bytes += len(json)
        if self.max_bytes is not None and self.bytes > self.max_bytes:
            self._forget(seq, self.max_bytes)  # never this event: a reader keeping up gets it
        if self._waiters:
            self._wake()
        return entry

    def forget_before(self, seq: int) -> None:
        """Drop every event below ``seq`` (retention by age or size, decided by the owner)."""
        self._forget(min(seq, self.next_seq), None)

    def _forget(self, end: int, max_bytes: int | None) -> None:
        """Drop the oldest events below seq ``end``; with ``max_bytes``, only until no
        more than that is held."""
        ring, cap = self._ring, self.capacity
        while self.first_seq < end and (max_bytes is None or self.bytes > max_bytes):
            entry = ring[self.first_seq % cap]
            if entry is None or entry.seq != self.first_seq:
                break
            ring[self.first_seq % cap] = None
            self._evict(entry)

    def _evict(self, entry: Entry) -> None:
        if not entry.transient:
            self._lost_lifecycle_seq = entry.seq
        if entry.seq >= self.first_seq:
            self.first_seq = entry.seq + 1
        self.bytes -= len(entry.json)

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

    @property
    def waiting(self) -> int:
        """Wake-ups registered now: at most one per event loop plus one per blocked
        thread, however many readers wait (a diagnostic, and the fan-out's contract)."""
        return len(self._waiters)

    @property
    def parked(self) -> int:
        """Readers waiting in event loops for the next event now (a diagnostic)."""
        return sum(len(waiting.futures) for waiting in list(self._loop_waits.values()))

    # -- reading ---------------------------------------------------------------

    def read(
        self, cursor: int, limit: int = 256, soft_lag: int | None = None
    ) -> tuple[list[Entry], int, int, Gap | None]:
        """Up to ``limit`` entries from ``cursor`` on (the primitive under ``Cursor``).

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
        """Return once there is an event at or after ``cursor``, or on ``notify``/``close``.

        The readers waiting in one loop share one wake-up: a batch of appends costs the
        publisher a single ``call_soon`` however many readers there are, and that one
        loop callback then resolves every reader's future.
        """
        if cursor < self.next_seq or self._closed:
            return
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiting = self._loop_waits.get(loop)
        if waiting is None:
            waiting = self._loop_waits[loop] = _LoopWaiters()
        if not waiting.armed:  # one wake-up registered per loop at a time
            waiting.armed = True
            owner = threading.get_ident()
            inline = self._wake_inline

            def wake() -> None:
                if loop.is_closed():
                    return
                if threading.get_ident() != owner:
                    loop.call_soon_threadsafe(waiting.resolve)
                elif inline:
                    waiting.resolve()
                else:
                    loop.call_soon(waiting.resolve)

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

    def cursor(self, after: int | None = None, soft_lag: int | None = None) -> Cursor:
        """A reader starting after seq ``after`` (default: only new events)."""
        position = self.next_seq if after is None else after + 1
        return Cursor(self, position, self.capacity // 2 if soft_lag is None else soft_lag)

    def subscribe(self, after: int | None = None, soft_lag: int | None = None) -> Subscription:
        """An async iterator of entries starting after seq ``after`` (default: new ones)."""
        return Subscription(self.cursor(after, soft_lag))


def overflow_json(last_seq: int, missed: int) -> bytes:
    """The ``stream.overflow`` event for a reader cut off after ``last_seq``."""
    return orjson.dumps({"type": "stream.overflow", "last_seq": last_seq, "missed": missed})


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


class Cursor:
    """One reader's place in a log: the single reading loop every consumer shares.

    ``read()`` returns the next entries and applies the overflow policy: a reader more
    than ``soft_lag`` behind skips transient events, and a lost lifecycle event comes
    back as a ``Gap`` that the consumer answers in its own way (a ``stream.overflow``
    line, a reset, a count) before calling ``skip``. ``dropped`` counts every event this
    reader skipped or lost. ``close()`` ends the reader and wakes it if it is parked.
    """

    __slots__ = ("_closed", "_log", "dropped", "position", "soft_lag")

    def __init__(self, log: EventLog, position: int, soft_lag: int) -> None:
        self._log = log
        #: The seq of the next event this reader wants.
        self.position = position
        self.soft_lag = soft_lag
        self.dropped = 0
        self._closed = False

    @property
    def log(self) -> EventLog:
        return self._log

    def read(self, limit: int = 256) -> tuple[list[Entry], Gap | None]:
        """The next entries (possibly none), or a ``Gap`` where a lifecycle event was lost."""
        if self._closed:
            return [], None
        entries, self.position, skipped, gap = self._log.read(
            self.position, limit, self.soft_lag)
        self.dropped += skipped
        return entries, gap

    def skip(self, gap: Gap) -> None:
        """Go on after a gap, counting what was lost."""
        self.dropped += gap.missed
        self.position = max(self.position, gap.resume_seq)

    def at_end(self, stopping: bool = False) -> bool:
        """Closed (or the log closed, or the reader ``stopping``) with nothing left to read.

        Checking ``closed`` alone after an empty read would lose the events appended
        between the two (the final ones, as a rule).
        """
        if self._closed:
            return True
        log = self._log
        return (log.closed or stopping) and self.position >= log.next_seq

    async def wait(self) -> None:
        """Return once there is something to read, or the log or this cursor is closed."""
        if not self._closed:
            await self._log.wait(self.position)

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """Thread version of ``wait``; False on timeout."""
        return self._closed or self._log.wait_blocking(self.position, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop reading; a reader parked in ``wait`` (any task or thread) wakes up."""
        if not self._closed:
            self._closed = True
            # Close is rare: waking every parked reader of the log (they re-check and
            # park again) keeps the wait path free of per-reader bookkeeping.
            self._log.notify()


class Subscription:
    """An async iterator over one stream's events, each an ``Entry``.

    ``get()`` returns the next one, as the original design's ``asyncio.Queue`` did. The
    iterator ends when the log is closed and drained, when ``close()`` is called (from
    any task: a parked reader wakes), or after a ``stream.overflow`` event.
    """

    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor
        self._pending: list[Entry] = []
        self._ended = False

    @property
    def position(self) -> int:
        """The seq of the next event this subscription will read from the log."""
        return self._cursor.position

    @property
    def dropped(self) -> int:
        """Events this reader skipped or lost."""
        return self._cursor.dropped

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
        """The next event (the queue-like call); raises ``StopAsyncIteration`` at the end."""
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
        cursor = self._cursor
        while not self._ended:
            entries, gap = cursor.read()
            if gap is not None:
                # A lost lifecycle event: one final stream.overflow, then the end.
                self._ended = True
                cursor.skip(gap)
                cursor.close()
                return Entry(0, "stream.overflow",  # seq 0: never moves a cursor
                             overflow_json(gap.resume_seq - gap.missed - 1, cursor.dropped))
            if entries:
                entries.reverse()
                self._pending = entries
                return entries.pop()
            if cursor.at_end():
                self._ended = True
                return None
            await cursor.wait()
        return None

    def close(self) -> None:
        """Stop reading (wakes a reader parked in another task)."""
        self._pending.clear()
        self._cursor.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
