"""The bridge's threads: per-thread replay log, numbering, de-duplication and expiry.

The bridge owns each thread's ``seq``: an accepted event is re-numbered, encoded once as
JSON and once as an SSE frame, and appended to the thread's ``EventLog``; every client
then reads those same bytes. The producer's own ``seq`` is only used to recognise a
batch sent twice (a retry after a timeout), which is not delivered again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import orjson

from otel_events.broker import EventLog
from otel_events.protocol import Event, encode_event
from otel_events.snapshot import ThreadSnapshot

__all__ = ["THREAD_ID_PATTERN", "BridgeThread", "ThreadRegistry", "TooManyThreads"]

#: Thread ids the bridge accepts: they end up in URLs, logs and span attributes.
THREAD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)


class TooManyThreads(RuntimeError):
    """The registry holds ``max_threads`` threads already."""


def frame(seq: int, event_type: str, data: bytes) -> bytes:
    """One SSE message; ``data`` is compact JSON, so it is a single line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type.encode(), data)


class BridgeThread:
    """One thread as the bridge holds it: its log, its folded state, its readers."""

    def __init__(self, thread_id: str, capacity: int, max_age: float | None,
                 dedup_window: int, max_turns: int = 20) -> None:
        self.thread_id = thread_id
        self.log = EventLog(capacity, max_age)
        self.snapshot = ThreadSnapshot(thread_id, max_turns=max_turns)
        #: SSE connections reading this thread now.
        self.readers = 0
        self.last_active = time.monotonic()
        self._seen: dict[tuple[int, int], None] = {}
        self._dedup_window = dedup_window
        # The frames of one seq range, joined once and sent to every reader that asks
        # for exactly that range (all readers that are caught up do).
        self._chunk: tuple[int, int, bytes] | None = None
        self._snapshot_json: tuple[int, bytes] | None = None

    def publish(self, event: Event, digest: int | None = None,
                raw: dict[str, Any] | None = None) -> int | None:
        """Number, encode and append one event; ``None`` if it was already accepted.

        ``digest`` identifies the producer's line (with the producer's ``seq``) for
        de-duplication; events without a producer ``seq`` are never de-duplicated.
        ``raw`` is the validated event as the producer sent it: encoding that (with the
        bridge's seq) is several times cheaper than serialising the model again.
        """
        producer_seq = event.seq
        if producer_seq is not None and digest is not None:
            key = (producer_seq, digest)
            seen = self._seen
            if key in seen:
                return None
            seen[key] = None
            if len(seen) > self._dedup_window:
                del seen[next(iter(seen))]
        log = self.log
        seq = log.next_seq
        if raw is not None:
            body = dict(raw)
            if body.get("thread_id") is None:
                body["thread_id"] = self.thread_id
            body["seq"] = seq
            data = orjson.dumps(body)
        else:
            event.seq = seq
            if event.thread_id is None:
                event.thread_id = self.thread_id
            data = encode_event(event)
        framed = frame(seq, event.type, data)
        # orjson's result holds a buffer of at least 4 KiB whatever its length; the ring
        # keeps an exact-size copy instead (cut from the frame), not 10x the memory.
        log.append(event.type, framed[len(framed) - len(data) - 2:-2], frame=framed)
        self.snapshot.apply(event, seq)
        self.last_active = time.monotonic()
        return seq

    def snapshot_json(self) -> bytes:
        """The folded state as JSON, encoded once per seq."""
        seq = self.snapshot.seq
        cached = self._snapshot_json
        if cached is None or cached[0] != seq:
            cached = (seq, orjson.dumps(self.snapshot.to_dict()))
            self._snapshot_json = cached
        return cached[1]

    def cached_chunk(self, start: int) -> tuple[int, bytes] | None:
        """``(end, frames)`` for seqs ``[start, end)`` if a reader already joined them."""
        cached = self._chunk
        if cached is not None and cached[0] == start:
            return cached[1], cached[2]
        return None

    def remember_chunk(self, start: int, end: int, data: bytes) -> None:
        """Keep the joined frames of ``[start, end)`` for the next reader at ``start``."""
        self._chunk = (start, end, data)

    def reader_left(self) -> None:
        self.readers -= 1
        # Idle time counts from the last reader too, not only the last event.
        self.last_active = time.monotonic()


class ThreadRegistry:
    """Every thread the bridge knows, bounded in number; idle ones expire."""

    def __init__(
        self,
        retention_count: int = 4096,
        retention_age: float | None = None,
        idle_expiry: float | None = 3600.0,
        max_threads: int = 10_000,
        max_turns: int = 20,
    ) -> None:
        self.retention_count = retention_count
        self.retention_age = retention_age
        self.idle_expiry = idle_expiry
        self.max_threads = max_threads
        self.max_turns = max_turns
        self._threads: dict[str, BridgeThread] = {}
        self.closed = False

    @staticmethod
    def valid_id(thread_id: str) -> bool:
        return _THREAD_ID.match(thread_id) is not None

    def get(self, thread_id: str) -> BridgeThread | None:
        return self._threads.get(thread_id)

    def get_or_create(self, thread_id: str) -> BridgeThread:
        """The thread, made on first use (a reader may come before its producer)."""
        thread = self._threads.get(thread_id)
        if thread is None:
            if not self.valid_id(thread_id):
                raise ValueError("invalid thread id")
            if len(self._threads) >= self.max_threads:
                self.sweep()
                if len(self._threads) >= self.max_threads:
                    raise TooManyThreads(f"the bridge holds {self.max_threads} threads")
            thread = BridgeThread(thread_id, self.retention_count, self.retention_age,
                                  dedup_window=self.retention_count, max_turns=self.max_turns)
            self._threads[thread_id] = thread
        return thread

    def __iter__(self) -> Iterator[BridgeThread]:
        return iter(list(self._threads.values()))

    def __len__(self) -> int:
        return len(self._threads)

    def sweep(self, now: float | None = None) -> int:
        """Trim aged events; drop threads idle past ``idle_expiry`` with no reader."""
        now = time.monotonic() if now is None else now
        expired = 0
        for thread_id, thread in list(self._threads.items()):
            thread.log.trim()
            if (self.idle_expiry is not None and thread.readers == 0
                    and now - thread.last_active > self.idle_expiry):
                del self._threads[thread_id]
                thread.log.close()
                expired += 1
        return expired

    def close(self) -> None:
        """End every reader's stream (they reconnect elsewhere or later)."""
        self.closed = True
        for thread in self._threads.values():
            thread.log.close()
