"""SSE framing: one client's stream of a thread, as the bytes sent on the wire.

Every event is framed as ``id: <epoch>:<seq>``, ``event: <type>``, ``data: <JSON>``.
The id is the client's position: browsers send it back as ``Last-Event-ID`` when they
reconnect, and the broker resumes after it, or sends a ``reset`` (the thread's whole
state, with the id it stands for) when it cannot resume exactly there. A bare ``<seq>``
from clients of the original interface is taken to be in the current epoch; anything
else unreadable is an unknown position, answered with a reset, never an error.

Frames of one batch are joined once and the same bytes go to every client that is
caught up. Heartbeats are comments, so they never move a position.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import orjson
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from otel_events.bridge.broker import Batch, Position, Reset, ThreadReader

__all__ = ["RESET_EVENT", "SlowClientResponse", "event_stream", "frame", "parse_position"]

_log = logging.getLogger(__name__)

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


def batch_frames(batch: Batch) -> bytes:
    """The frames of a batch, joined once for every client reading the same range."""
    key = (batch.epoch, batch.start, batch.end)
    cached = batch.shared.get("frames")
    if cached is not None and cached[0] == key:
        data: bytes = cached[1]
        return data
    epoch = batch.epoch.encode()
    data = b"".join([b"id: %s:%d\nevent: %s\ndata: %s\n\n" % (
        epoch, entry.seq, entry.type.encode(), entry.json) for entry in batch.entries])
    if batch.end - batch.start == len(batch.entries):  # nothing skipped: shareable
        batch.shared["frames"] = (key, data)
    return data


async def event_stream(reader: ThreadReader, retry_ms: int) -> AsyncIterator[bytes]:
    """Chunks of SSE bytes for one client. Ends when the broker ends the stream
    (shutdown, thread expiry); the client then reconnects with its Last-Event-ID."""
    try:
        yield b"retry: %d\n\n" % retry_ms
        while (batch := await reader.next()) is not None:
            yield reset_frame(batch) if isinstance(batch, Reset) else batch_frames(batch)
    finally:
        reader.close()


class SlowClientResponse(EventSourceResponse):
    """An ``EventSourceResponse`` that drops a client too slow to take a write in time.

    sse-starlette raises ``SendTimeoutError`` out of the application then, which servers
    log as a crash with a traceback; a slow client is an expected event, logged in one
    line. The client can resume with its Last-Event-ID.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            client = scope.get("client")
            _log.warning("SSE client %s did not take a write within %ss: disconnected",
                         f"{client[0]}:{client[1]}" if client else "?", self.send_timeout)
