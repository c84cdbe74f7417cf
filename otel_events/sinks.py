"""Sinks: readers of an emitter's event log that run off the agent's hot path."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO, Protocol

from otel_events.broker import EventLog, overflow_json

__all__ = ["JsonlSink", "Sink"]


class Sink(Protocol):
    """Something that reads an emitter's events on its own (thread or task)."""

    def start(self, log: EventLog) -> None:
        """Begin reading ``log`` from its next event."""

    def close(self, timeout: float) -> None:
        """Deliver what was published, within ``timeout`` seconds, then stop."""


class JsonlSink:
    """Writes every event as one JSON line: the same stream ``codex exec --json`` writes.

    A background thread does the writing. If it falls a whole buffer behind (a stalled
    pipe), the broker's policy applies: a ``stream.overflow`` line records the loss and
    writing resumes at the oldest event still held.
    """

    def __init__(self, path: str | Path | None = None, stream: IO[bytes] | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._stream = stream
        self._log: EventLog | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Events this sink lost because it fell behind.
        self.dropped = 0

    def start(self, log: EventLog) -> None:
        self._log = log
        cursor = log.next_seq
        out = self._stream
        if out is None:
            out = self._path.open("ab") if self._path is not None else sys.stdout.buffer
        self._thread = threading.Thread(
            target=self._run, args=(log, cursor, out), name="otel-events-jsonl", daemon=True
        )
        self._thread.start()

    def _run(self, log: EventLog, cursor: int, out: IO[bytes]) -> None:
        try:
            while True:
                entries, cursor, skipped, gap = log.read(cursor, limit=1024)
                self.dropped += skipped
                if gap is not None:
                    self.dropped += gap.missed
                    out.write(overflow_json(cursor - 1, gap.missed) + b"\n")
                    cursor = gap.resume_seq
                    continue
                if entries:
                    out.write(b"".join(entry.json + b"\n" for entry in entries))
                    continue
                out.flush()
                if log.drained(cursor, stopping=self._stop.is_set()):
                    return
                log.wait_blocking(cursor, timeout=0.5)
        finally:
            out.flush()
            if self._stream is None and self._path is not None:
                out.close()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._log is not None:
            self._log.notify()
        if self._thread is not None:
            self._thread.join(timeout)
