"""One client's SSE stream of a thread: replay from its cursor, then live, as bytes.

Each event's frame (``id:``, ``event:``, ``data:``) was made once when the bridge
accepted it; a batch of frames is joined once and the same bytes go to every client that
is caught up. A client only holds a cursor and the batch being sent, so a slow or
stalled client costs a bounded amount of memory.

Synthetic frames carry no ``id:``, so they never move the client's Last-Event-ID:
heartbeats are comments, and ``reset`` (the thread's state, sent instead of a silent
gap) is an event without an id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from otel_events.threads import BridgeThread

__all__ = ["RESET_EVENT", "SlowClientResponse", "event_stream", "reset_frame"]

_log = logging.getLogger(__name__)

RESET_EVENT = "reset"

# Why a reset was sent, in its ``reason`` field.
CURSOR_EXPIRED = "cursor_expired"
CURSOR_AHEAD = "cursor_ahead"
FELL_BEHIND = "fell_behind"
HISTORY_EXPIRED = "history_expired"


def reset_frame(thread: BridgeThread, reason: str) -> tuple[bytes, int]:
    """The ``reset`` message with the thread's state, and the cursor right after it."""
    seq = thread.snapshot.seq
    head = orjson.dumps({"type": RESET_EVENT, "thread_id": thread.thread_id, "seq": seq,
                         "reason": reason})
    # The snapshot's JSON is made once per seq, however many clients reconnect at once.
    data = head[:-1] + b',"snapshot":' + thread.snapshot_json() + b"}"
    return b"event: reset\ndata: " + data + b"\n\n", seq + 1


async def event_stream(
    thread: BridgeThread,
    last_event_id: int | None,
    retry_ms: int,
    batch: int = 512,
) -> AsyncIterator[bytes]:
    """Chunks of SSE bytes for one client, from after ``last_event_id`` (or the start).

    Ends when the thread's log is closed (bridge shutdown or thread expiry); the client
    then reconnects with its Last-Event-ID.
    """
    log = thread.log
    soft_lag = max(1, log.capacity // 2)
    thread.readers += 1
    try:
        head = b"retry: %d\n\n" % retry_ms
        cursor = 1 if last_event_id is None else last_event_id + 1
        # The snapshot describes every event up to snapshot.seq; log.next_seq is one
        # past it, as both move together when an event is accepted.
        if cursor > log.next_seq:
            data, cursor = reset_frame(thread, CURSOR_AHEAD)
            head += data
        elif cursor < log.first_seq:
            reason = HISTORY_EXPIRED if last_event_id is None else CURSOR_EXPIRED
            data, cursor = reset_frame(thread, reason)
            head += data
        yield head
        while True:
            hit = thread.cached_chunk(cursor)
            if hit is not None:
                cursor, data = hit
                yield data
                continue
            entries, new_cursor, skipped, gap = log.read(cursor, batch, soft_lag)
            if gap is not None:
                data, cursor = reset_frame(thread, FELL_BEHIND)
                yield data
                continue
            if entries:
                frames = [entry.frame or b"" for entry in entries]
                data = b"".join(frames)
                if skipped == 0 and new_cursor - cursor == len(entries):
                    thread.remember_chunk(cursor, new_cursor, data)
                cursor = new_cursor
                yield data
                continue
            cursor = new_cursor
            if log.closed:
                return
            await log.wait(cursor)
    finally:
        thread.reader_left()


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
