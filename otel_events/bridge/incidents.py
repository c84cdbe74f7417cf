"""Expected trouble, logged without flooding: slow clients, aborted uploads, slowloris.

Each is an ordinary event for a service on a careless network, caused by the other side,
so it gets no traceback and no ERROR. A burst of them (200 producers dropping their
uploads, 400 trickling connections) must not become thousands of log lines: each kind is
logged at once the first time, then at most once per ``interval`` with how many happened
since and in all; what is still pending is logged by ``flush`` (the bridge calls it
periodically and at shutdown).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Incidents"]


@dataclass(slots=True)
class _Kind:
    message: str
    total: int = 0
    pending: int = 0
    next_log: float = 0.0


class Incidents:
    """Counts incidents by kind and logs each kind at most once per ``interval``."""

    def __init__(self, logger: logging.Logger | None = None, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger or logging.getLogger("otel_events.bridge")
        self.interval = interval
        self._clock = clock
        self._kinds: dict[str, _Kind] = {}
        # Reported from the event loop and, for the protocol guard, its callbacks; the
        # lock only makes ``flush`` from another thread (tests, shutdown) exact.
        self._lock = threading.Lock()

    def report(self, kind: str, message: str) -> None:
        """One incident of ``kind``; ``message`` says what happened (no client data)."""
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                state = self._kinds[kind] = _Kind(message)
            state.message = message
            state.total += 1
            state.pending += 1
            now = self._clock()
            if now < state.next_log:
                return
            state.next_log = now + self.interval
            line = self._line(state)
        self.logger.warning("%s", line)

    def flush(self) -> None:
        """Log the incidents not logged yet, one line per kind."""
        lines = []
        with self._lock:
            for state in self._kinds.values():
                if state.pending:
                    lines.append(self._line(state))
        for line in lines:
            self.logger.warning("%s", line)

    def counts(self) -> dict[str, int]:
        """Incidents by kind since the bridge started."""
        with self._lock:
            return {kind: state.total for kind, state in self._kinds.items()}

    @staticmethod
    def _line(state: _Kind) -> str:
        count, state.pending = state.pending, 0
        return f"{state.message} (x{count}; {state.total} since start)"
