"""Sinks: readers of an emitter's event log that run off the agent's hot path."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Protocol

from otel_events.log import Cursor, Entry, EventLog, overflow_json

__all__ = ["BatchingSink", "JsonlSink", "Sink"]

_log = logging.getLogger(__name__)

# Sinks started in this process. fork copies no thread: a child restarts its sinks, as
# the SDK's span processors restart theirs, or its events would go nowhere, unsaid.
_started: weakref.WeakSet[JsonlSink | BatchingSink] = weakref.WeakSet()


def _restart_in_child() -> None:
    for sink in list(_started):
        sink._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)


def fitting(entries: list[Entry], max_bytes: int | None) -> int:
    """How many entries from the start fit ``max_bytes`` as NDJSON lines (one at least:
    a single larger event is sent, for the destination to judge)."""
    if max_bytes is None:
        return len(entries)
    size = 0
    for index, entry in enumerate(entries):
        size += len(entry.json) + 1
        if size > max_bytes and index > 0:
            return index
    return len(entries)


class Sink(Protocol):
    """Something that reads an emitter's events on its own (thread or task)."""

    def start(self, log: EventLog, thread_id: str) -> None:
        """Begin reading ``log`` (the events of thread ``thread_id``) from its next event."""

    def close(self, timeout: float) -> None:
        """Deliver what was published, within ``timeout`` seconds, then stop."""


class JsonlSink:
    """Writes every event as one JSON line: the same stream ``codex exec --json`` writes.

    A background thread does the writing. If it falls a whole buffer behind (a stalled
    pipe), the log's overflow policy applies: a ``stream.overflow`` line records the loss and
    writing resumes at the oldest event still held. If a write fails (a full disk), its
    events are counted in ``dropped``, the failure is logged once, and writing goes on
    with the next events (a line the failure cut short is ended first, so every line
    after it is whole); a pipe whose reader left (``| head``) ends the sink quietly.
    """

    def __init__(self, path: str | Path | None = None, stream: IO[bytes] | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._stream = stream
        self._cursor: Cursor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lost = 0
        # The failure logged, until a write succeeds again.
        self._failing: str | None = None

    def start(self, log: EventLog, thread_id: str) -> None:
        out = self._stream
        if out is None:
            # Unbuffered: each batch is one write that succeeds or fails here, so a loss
            # is counted for the events it hit (a buffer would fail later, for others).
            out = (self._path.open("ab", buffering=0) if self._path is not None
                   else sys.stdout.buffer)
        self._log, self._out = log, out
        self._spawn()
        _started.add(self)

    def _spawn(self) -> None:
        cursor = self._cursor = self._log.cursor()
        self._thread = threading.Thread(
            target=self._run, args=(cursor, self._out), name="otel-events-jsonl",
            daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: a thread of its own, from the child's first event (the
        parent writes what came before; the file is shared, opened for appending)."""
        if not self._stop.is_set():
            self._spawn()

    @property
    def dropped(self) -> int:
        """Events this sink lost: it fell a whole buffer behind, or could not write them."""
        return self._lost + (0 if self._cursor is None else self._cursor.dropped)

    def _run(self, cursor: Cursor, out: IO[bytes]) -> None:
        torn = False  # a failed write may have left half a line
        broken = False  # the pipe's reader left: events are counted, not written
        try:
            while True:
                entries, gap = cursor.read(limit=1024)
                if gap is not None:
                    data, count = overflow_json(cursor.position - 1, gap.missed) + b"\n", 0
                    cursor.skip(gap)
                elif entries:
                    data = b"".join(entry.json + b"\n" for entry in entries)
                    count = len(entries)
                elif cursor.at_end(stopping=self._stop.is_set()):
                    return
                else:
                    cursor.wait_blocking(timeout=0.5)
                    continue
                if broken:
                    self._lost += count
                    continue
                try:
                    _write_all(out, b"\n" + data if torn else data)
                except BrokenPipeError:
                    # Its reader left (``agent | head``): nothing will be read again, and
                    # that is no failure to report; what follows is only counted.
                    broken = True
                    self._lost += count
                    continue
                except OSError as exc:
                    torn = True
                    self._lost += count
                    self._failed(exc)
                    continue
                torn = False
                if self._failing is not None:
                    self._failing = None
                    _log.warning("otel-events JsonlSink: writing to %s again (%d events "
                                 "dropped so far)", self._where(), self.dropped)
        finally:
            if self._stream is None and self._path is not None:
                with contextlib.suppress(OSError):
                    out.close()

    def _failed(self, error: OSError) -> None:
        why = error.strerror or type(error).__name__
        if why != self._failing:
            self._failing = why
            _log.warning("otel-events JsonlSink: cannot write to %s (%s); its events are "
                         "dropped until it can", self._where(), why)

    def _where(self) -> str:
        return str(self._path) if self._path is not None else "its stream"

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._cursor is not None:
            self._cursor.log.notify()
        if self._thread is not None:
            self._thread.join(timeout)


def _write_all(out: IO[bytes], data: bytes) -> None:
    """Write ``data`` whole and flush it: a raw file may take part of it at a time."""
    view = memoryview(data)
    while view:
        written = out.write(view)
        if written is None:  # a non-blocking stream with no room: a failed write
            raise BlockingIOError(errno.EAGAIN, "the stream would block")
        view = view[written:]
    out.flush()


class BatchingSink:
    """What every sink that delivers batches over a network shares: a thread of its own
    reading the log, batches cut by count and size, retries with backoff and jitter,
    ``close`` bounded in time, counters. Subclasses say how a batch is delivered.

    Counters: ``sent`` (delivered), ``requests`` (attempts), ``dropped`` (never
    delivered: overwritten while the destination was unreachable, refused, or still
    unsent at ``close``). Nothing here blocks or raises into agent code.
    """

    #: Names the thread and the log lines (``HttpSink``, ``RedisSink``).
    kind = "sink"
    #: What is unreachable when a batch cannot go (``bridge``, ``Redis``).
    destination = "destination"

    def __init__(self, *, max_batch: int, max_batch_bytes: int | None, backoff: float,
                 max_backoff: float) -> None:
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sent = 0
        self.requests = 0
        self._lost = 0
        self._cursor: Cursor | None = None
        self._thread: threading.Thread | None = None
        #: The thread (conversation) whose events this sink delivers, once started.
        self._thread_id = ""
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._down = False
        #: Seconds the destination asked to wait before the next attempt (a subclass's
        #: ``_deliver`` sets it with a retryable answer; see ``max_backoff``).
        self._retry_after: float | None = None

    # -- the Sink protocol ---------------------------------------------------------------

    def start(self, log: EventLog, thread_id: str) -> None:
        if self._thread is not None:
            # Its counters and thread id belong to one emitter: give each its own sink.
            raise RuntimeError(f"a {self.kind} serves one emitter; it is started already")
        self._log, self._thread_id = log, thread_id
        self._spawn()
        _started.add(self)

    def _spawn(self) -> None:
        self._cursor = cursor = self._log.cursor()
        self._thread = threading.Thread(
            target=self._run, args=(cursor, self._thread_id),
            name=f"otel-events-{self.kind.removesuffix('Sink').lower()}", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: new connections and a thread of its own, from the child's
        first event (the parent delivers what came before)."""
        if not self._stop.is_set():
            self._forget_connection()
            self._spawn()

    @property
    def dropped(self) -> int:
        """Events never delivered (see the class's docstring)."""
        return self._lost + (0 if self._cursor is None else self._cursor.dropped)

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what was published for up to ``timeout`` seconds, then stop; True when
        the sink's thread has ended."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._cursor is not None:
            self._cursor.log.notify()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            return not self._thread.is_alive()
        return True

    # -- what a subclass provides ----------------------------------------------------------

    def _connect(self, thread_id: str) -> None:
        """Prepare to deliver thread ``thread_id``'s events (on the sink's thread)."""

    def _deliver(self, batch: list[Entry]) -> bool:
        """True: done with the batch (delivered, or refused for good); False: retry it.

        A subclass that delivers a batch in parts removes each part done from the front
        of ``batch`` before it returns False: the retry sends only what is left."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Release what ``_connect`` took (on the sink's thread)."""

    def _forget_connection(self) -> None:
        """In a forked child: drop what ``_connect`` took without closing it (the
        parent's connections: closing them here could disturb the parent's)."""

    # -- shared by subclasses ----------------------------------------------------------------

    def _unreachable(self, why: str) -> None:
        if not self._down:
            self._down = True
            _log.warning("otel-events %s: %s unavailable (%s); retrying", self.kind,
                         self.destination, why)

    def _reachable(self) -> None:
        if self._down:
            self._down = False
            _log.warning("otel-events %s: %s reachable again", self.kind, self.destination)

    def _refused(self, batch: list[Entry], why: str) -> None:
        _log.warning("otel-events %s: %s refused a batch of %d events (%s)", self.kind,
                     self.destination, len(batch), why)
        self._lost += len(batch)

    # -- the worker --------------------------------------------------------------------------

    def _run(self, cursor: Cursor, thread_id: str) -> None:
        pending: list[Entry] = []
        attempt = 0
        try:
            self._connect(thread_id)
            while True:
                if not pending:
                    pending = self._next_batch(cursor)
                    if not pending:
                        if cursor.at_end(stopping=self._stop.is_set()):
                            return
                        cursor.wait_blocking(timeout=0.5)
                        continue
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._lost += len(pending) + max(0, cursor.log.next_seq - cursor.position)
                    return
                self.requests += 1
                if self._deliver(pending):
                    attempt = 0
                    pending = []
                    continue
                attempt += 1
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                # The destination said how long to wait (Retry-After): at least that,
                # but no longer than max_backoff, whatever it said.
                floor = 0.0
                if self._retry_after is not None:
                    floor = min(max(0.0, self._retry_after), self.max_backoff)
                    self._retry_after = None
                    delay = max(delay, floor)
                self._pause(delay, floor)
        except Exception:  # the agent must never see a sink's failure
            _log.exception("otel-events %s stopped", self.kind)
        finally:
            self._disconnect()

    def _pause(self, delay: float, floor: float) -> None:
        """Wait ``delay`` seconds before a retry, never past the ``close`` deadline.
        ``close`` cuts a backoff short (what is left goes sooner), but not the ``floor``
        the destination asked for."""
        start = time.monotonic()
        end, floor_end = start + delay, start + floor
        if self._deadline is not None:
            end, floor_end = min(end, self._deadline), min(floor_end, self._deadline)
        # While closing, _stop is already set: fall back to a plain sleep.
        if not self._stop.is_set():
            self._stop.wait(max(0.0, end - start))
            end = floor_end
        deadline = self._deadline  # set by close before it sets _stop
        if deadline is not None:
            end = min(end, deadline)
        rest = end - time.monotonic()
        if rest > 0:
            time.sleep(rest)

    def _next_batch(self, cursor: Cursor) -> list[Entry]:
        entries, gap = cursor.read(limit=self.max_batch)
        while gap is not None:  # lost while unreachable: counted, then go on
            cursor.skip(gap)
            entries, gap = cursor.read(limit=self.max_batch)
        count = fitting(entries, self.max_batch_bytes)
        if count < len(entries):
            cursor.position = entries[count].seq  # the rest goes in the next batch
            return entries[:count]
        return entries
