"""Sinks: readers of an emitter's event log that run off the agent's hot path."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO, Protocol

from otel_events.log import Cursor, EventLog, overflow_json

__all__ = ["JsonlSink", "Sink"]


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
    writing resumes at the oldest event still held.
    """

    def __init__(self, path: str | Path | None = None, stream: IO[bytes] | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._stream = stream
        self._cursor: Cursor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, log: EventLog, thread_id: str) -> None:
        cursor = self._cursor = log.cursor()
        out = self._stream
        if out is None:
            out = self._path.open("ab") if self._path is not None else sys.stdout.buffer
        self._thread = threading.Thread(
            target=self._run, args=(cursor, out), name="otel-events-jsonl", daemon=True
        )
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Events this sink lost because it fell behind."""
        return 0 if self._cursor is None else self._cursor.dropped

    def _run(self, cursor: Cursor, out: IO[bytes]) -> None:
        try:
            while True:
                entries, gap = cursor.read(limit=1024)
                if gap is not None:
                    out.write(overflow_json(cursor.position - 1, gap.missed) + b"\n")
                    cursor.skip(gap)
                    continue
                if entries:
                    out.write(b"".join(entry.json + b"\n" for entry in entries))
                    continue
                out.flush()
                if cursor.at_end(stopping=self._stop.is_set()):
                    return
                cursor.wait_blocking(timeout=0.5)
        finally:
            out.flush()
            if self._stream is None and self._path is not None:
                out.close()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._cursor is not None:
            self._cursor.log.notify()
        if self._thread is not None:
            self._thread.join(timeout)
