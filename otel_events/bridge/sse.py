"""SSE framing: one client's stream of a thread, as the bytes sent on the wire.

Every event is framed as ``id: <epoch>:<seq>``, ``event: <type>``, ``data: <JSON>``.
The id is the client's position: browsers send it back as ``Last-Event-ID`` when they
reconnect, and the broker resumes after it, or sends a ``reset`` (the thread's whole
state, with the id it stands for) when it cannot resume exactly there. A bare ``<seq>``
from clients of the original interface is taken to be in the current epoch; anything
else unreadable is an unknown position, answered with a reset, never an error.

Frames of one batch are joined once and the same bytes go to every client that is
caught up. Heartbeats are comments, so they never move a position.

A write to one client holds at most ``max_write_bytes`` of events (at least one event):
the server copies each write into the connection's buffer, so a client that stops
reading pins one write, not a whole replay. A client that cannot take a write within
the send timeout is dropped for real: its connection is aborted (buffers freed, the
socket reset), not closed politely after a flush that would never come.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import orjson
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from otel_events.bridge.broker import Batch, Position, Reset, ThreadReader, entries_bytes
from otel_events.bridge.incidents import Incidents
from otel_events.log import Entry

__all__ = ["ABORT_EXTENSION", "RESET_EVENT", "SEND_DEADLINE_EXTENSION", "SlowClientResponse",
           "event_stream", "frame", "parse_position"]

#: Key in ``scope["extensions"]`` of a callable that aborts the connection (the bridge's
#: uvicorn protocol provides it; other servers may not).
ABORT_EXTENSION = "otel_events.abort"
#: Key in ``scope["extensions"]`` set when the server itself drops a connection whose
#: writes stall past a deadline (the bridge's server: its value is the deadline, s). A
#: response then needs no timer of its own around each write.
SEND_DEADLINE_EXTENSION = "otel_events.send_deadline"

RESET_EVENT = "reset"
#: A position that matches no epoch: the client gets a reset.
UNKNOWN_POSITION = Position(0, "")
_POSITION = re.compile(r"^(?:([A-Za-z0-9]{1,32}):)?([0-9]{1,19})$")


def frame(seq: int, event_type: str, data: bytes, epoch: str | None = None) -> bytes:
    """One SSE message; ``data`` is compact JSON, so it is a single line."""
    if epoch is None:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type.encode(), data)
    return b"id: %s:%d\nevent: %s\ndata: %s\n\n" % (
        epoch.encode(), seq, event_type.encode(), data)


def format_position(epoch: str, seq: int) -> str:
    return f"{epoch}:{seq}"


def parse_position(value: str | None) -> Position | None:
    """A client's ``Last-Event-ID`` (``epoch:seq`` or a bare seq); ``None`` if absent.

    Malformed or absurd values are an unknown position (a reset), never an error.
    """
    if value is None or not value.strip():
        return None
    match = _POSITION.match(value.strip())
    if match is None:
        return UNKNOWN_POSITION
    return Position(int(match.group(2)), match.group(1))


def reset_frame(reset: Reset) -> bytes:
    """The ``reset`` message: why, and the thread's state as of ``seq``."""
    head = orjson.dumps({"type": RESET_EVENT, "seq": reset.seq, "epoch": reset.epoch,
                         "reason": reset.reason})
    # The snapshot's JSON is made once per seq, however many clients reconnect at once.
    data = head[:-1] + b',"snapshot":' + reset.snapshot + b"}"
    return b"id: %s:%d\nevent: reset\ndata: %s\n\n" % (reset.epoch.encode(), reset.seq, data)


def _join(epoch: bytes, entries: list[Entry]) -> bytes:
    return b"".join([b"id: %s:%d\nevent: %s\ndata: %s\n\n" % (
        epoch, entry.seq, entry.type.encode(), entry.json) for entry in entries])


def batch_frames(batch: Batch) -> bytes:
    """The frames of a batch, joined once for every client reading the same range."""
    key = (batch.epoch, batch.start, batch.end)
    cached = batch.shared.get("frames")
    if cached is not None and cached[0] == key:
        data: bytes = cached[1]
        return data
    data = _join(batch.epoch.encode(), batch.entries)
    if batch.end - batch.start == len(batch.entries):  # nothing skipped: shareable
        batch.shared["frames"] = (key, data)
    return data


def _parts(batch: Batch, max_write_bytes: int) -> Iterator[bytes]:
    """The batch's frames in writes of at most ``max_write_bytes`` of events each (at
    least one event), each joined only when it is wanted."""
    epoch = batch.epoch.encode()
    part: list[Entry] = []
    size = 0
    for entry in batch.entries:
        if part and size + len(entry.json) > max_write_bytes:
            yield _join(epoch, part)
            part, size = [], 0
        part.append(entry)
        size += len(entry.json)
    if part:
        yield _join(epoch, part)


async def event_stream(reader: ThreadReader, retry_ms: int,
                       max_write_bytes: int | None = None) -> AsyncIterator[bytes]:
    """Chunks of SSE bytes for one client. Ends when the broker ends the stream
    (shutdown, thread expiry); the client then reconnects with its Last-Event-ID.

    The memory broker cuts its batches to ``max_write_bytes`` already; a batch over it
    (a broker that hands over more) is sent in parts, so the bound holds whatever the
    broker does.
    """
    try:
        yield b"retry: %d\n\n" % retry_ms
        while (batch := await reader.next()) is not None:
            if isinstance(batch, Reset):
                yield reset_frame(batch)
            elif (max_write_bytes is not None and len(batch.entries) > 1
                  and entries_bytes(batch.epoch, batch.entries, batch.shared)
                  > max_write_bytes):
                for part in _parts(batch, max_write_bytes):
                    yield part
            else:
                yield batch_frames(batch)
    finally:
        reader.close()


class SlowClientResponse(EventSourceResponse):
    """An ``EventSourceResponse`` that drops a client too slow to take a write in time.

    sse-starlette raises ``SendTimeoutError`` out of the application then. Returning
    would leave the server to *close* the connection, which waits for the unsent bytes
    to drain, and a stalled client never takes them: the socket and its buffer stay.
    So the connection is aborted (``ABORT_EXTENSION``). A slow client is an expected
    event: counted, logged in one line at most per interval, never with a traceback.
    The client can resume with its Last-Event-ID.
    """

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # Without a timeout, sse-starlette still enters a cancel scope around every
        # write (a scope object, task-state bookkeeping): the costliest step of a live
        # event's delivery after the write itself, for nothing.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            self._drop(scope)
        except BaseExceptionGroup as group:  # the stream and the heartbeat both timed out
            if group.split(SendTimeoutError)[1] is not None:
                raise
            self._drop(scope)

    def _drop(self, scope: Scope) -> None:
        abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
        if abort is not None and abort() is False:
            return  # the server dropped it for the same reason, and counted it
        incidents(scope).report(*send_timeout_incident(self.send_timeout))


def send_timeout_incident(timeout: float | None) -> tuple[str, str]:
    """The incident of a client dropped for not taking a write: its kind and line."""
    return ("send_timeout", f"clients dropped: they did not take a write within "
                            f"{timeout}s (SSE clients may resume)")


_fallback_incidents = Incidents()


def incidents(scope: Scope) -> Incidents:
    """The app's incident log (``app.state.incidents``), or a process-wide one."""
    state = getattr(scope.get("app"), "state", None)
    found = getattr(state, "incidents", None)
    return found if isinstance(found, Incidents) else _fallback_incidents
