"""The broker interface: what the bridge's routes need from wherever threads are kept.

A broker numbers and de-duplicates what producers post, keeps each thread's recent
events and folded state, and gives each client a reader that replays from the client's
position and then follows live. ``MemoryBroker`` (``otel_events.bridge.memory``) keeps
all of it in the process; a second implementation is a new module behind this same
interface, and the routes, SSE framing, snapshot and page do not change.

Positions carry an *epoch*: a token that changes whenever a thread's history is lost
(the process restarted, the thread expired, the store was flushed). A client's position
from another epoch can never be mistaken for one in the current numbering: it gets a
``Reset``, the thread's whole state, and goes on from there.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from otel_events.log import Entry
    from otel_events.protocol import Event

__all__ = [
    "CURSOR_AHEAD",
    "CURSOR_EXPIRED",
    "CURSOR_UNKNOWN",
    "EPOCH_CHANGED",
    "FELL_BEHIND",
    "HISTORY_EXPIRED",
    "Appended",
    "Batch",
    "Broker",
    "BrokerUnavailable",
    "EventLine",
    "Position",
    "Reset",
    "ThreadReader",
    "TooManyThreads",
    "entries_bytes",
    "resume_at",
]

# Why a client gets a reset instead of the events after its position (``reason``).
CURSOR_EXPIRED = "cursor_expired"  # its next event is no longer held
CURSOR_AHEAD = "cursor_ahead"  # beyond the thread's numbering
CURSOR_UNKNOWN = "cursor_unknown"  # unreadable
EPOCH_CHANGED = "epoch_changed"  # from another history of the thread (restart, expiry)
FELL_BEHIND = "fell_behind"  # too slow: events it had not read were overwritten
HISTORY_EXPIRED = "history_expired"  # a new client, and the thread's start is gone


class TooManyThreads(RuntimeError):
    """The broker holds as many threads as it may."""


class BrokerUnavailable(RuntimeError):
    """The broker's store cannot be reached now (retry later)."""


@dataclass(slots=True)
class EventLine:
    """One validated line of an ingest request (not frozen: a frozen dataclass is built
    through ``object.__setattr__`` field by field, a cost paid on every line)."""

    #: 1-based line of the request body.
    line: int
    event: Event
    #: Identifies the producer's line (with its ``seq``) to recognise a retry; ``None``
    #: when the producer sent no ``seq`` (never de-duplicated).
    digest: int | None
    #: The validated object as the producer sent it (cheaper to re-encode than the model).
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append did."""

    accepted: int
    duplicates: int
    #: The broker's seq of the last event accepted, if any.
    last_seq: int | None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client is: the last seq it has, in the numbering of ``epoch``.

    ``epoch`` is ``None`` for a bare seq from a client of the original interface: it
    is taken to be in the current epoch.
    """

    seq: int
    epoch: str | None = None


@dataclass(slots=True)
class Batch:
    """Entries for one client, in seq order, in the numbering of ``epoch``."""

    epoch: str
    entries: list[Entry]
    #: The client's position before and after this batch (``end`` is the next seq).
    start: int
    end: int
    #: Per-thread scratch space to share work between the clients that read the same
    #: batch (frames joined once, sizes summed once: ``entries_bytes``).
    shared: dict[Any, Any] = field(default_factory=dict)


_JSON = operator.attrgetter("json")


def entries_bytes(epoch: str, entries: list[Entry], shared: dict[Any, Any]) -> int:
    """Bytes of JSON in ``entries`` (at least one), summed once for every reader of the
    same range of ``epoch`` (``shared`` is the thread's ``Batch.shared``).

    Every reader of a live thread reads the same new entries at each append; a lagging
    reader skips events, so only a contiguous range is shared.
    """
    first, last = entries[0].seq, entries[-1].seq
    if last - first + 1 != len(entries):
        return sum(map(len, map(_JSON, entries)))
    key = (epoch, first, last)
    cached = shared.get("entries_bytes")
    if cached is not None and cached[0] == key:
        size: int = cached[1]
        return size
    size = sum(map(len, map(_JSON, entries)))  # at C speed
    shared["entries_bytes"] = (key, size)
    return size


@dataclass(frozen=True, slots=True)
class Reset:
    """The client cannot resume where it was: here is the thread's whole state instead.

    ``seq`` is the last seq ``snapshot`` reflects; the client goes on after it.
    """

    reason: str
    epoch: str
    seq: int
    snapshot: bytes


def resume_at(position: Position | None, epoch: str, first_seq: int,
              next_seq: int) -> int | str:
    """Where a client at ``position`` goes on, in a history ``epoch`` that holds seqs
    ``[first_seq, next_seq)``: the seq of its next event, or why it gets a reset.

    Recovery is all or nothing: either every event after the position is still held,
    or the client starts again from the thread's state.
    """
    if position is None:
        return HISTORY_EXPIRED if first_seq > 1 else first_seq
    if position.epoch == "":
        return CURSOR_UNKNOWN
    if position.epoch is not None and position.epoch != epoch:
        return EPOCH_CHANGED
    start = position.seq + 1
    if start > next_seq:
        return CURSOR_AHEAD
    if start < first_seq:
        return CURSOR_EXPIRED
    return start


class ThreadReader(Protocol):
    """One client's reader of one thread: replay from its position, then live."""

    async def next(self) -> Batch | Reset | None:
        """The next batch or reset; ``None`` when the stream ends (shutdown, expiry).

        Waits while there is nothing new; a reader of a thread that does not exist yet
        waits for its first event without creating it.
        """
        ...

    def close(self) -> None:
        """Stop reading (the client left)."""
        ...


class Broker(Protocol):
    """Where the bridge keeps threads: numbering, history, state, readers."""

    @property
    def closed(self) -> bool:
        """Shutting down: no new appends or readers."""
        ...

    async def append(self, thread_id: str, lines: Sequence[EventLine]) -> Appended:
        """Number and store ``lines`` in order, skipping producer retries.

        Creates the thread on its first accepted event. Raises ``TooManyThreads`` or
        ``BrokerUnavailable``.
        """
        ...

    def reader(self, thread_id: str, position: Position | None) -> ThreadReader:
        """A reader from after ``position`` (``None``: everything still held)."""
        ...

    async def snapshot(self, thread_id: str) -> bytes | None:
        """The thread's folded state as JSON, or ``None`` if there is no such thread."""
        ...

    async def summaries(self) -> list[dict[str, Any]]:
        """One summary per thread (``GET /v1/threads``)."""
        ...

    async def expire(self) -> int:
        """Apply retention and forget idle threads; returns how many were forgotten."""
        ...

    async def ready(self) -> bool:
        """Whether appends and readers can be served now."""
        ...

    def close(self) -> None:
        """Shut down: end every reader's stream (clients resume elsewhere or later)."""
        ...
