"""``HttpSink``: sends an emitter's events to a bridge, off the agent's hot path.

A background thread reads the emitter's ``EventLog`` and posts what it finds as one
NDJSON batch (everything published while the previous request was in flight), so the
agent only ever appends to memory. The log is the buffer, and it is bounded: while the
bridge is down, the sink retries the batch in hand with backoff and the log keeps the
newest events; what the log overwrote meanwhile is counted in ``dropped`` (with the
log's overflow policy: transient events go first). Nothing here blocks or raises into agent
code. A retried batch that had in fact arrived is de-duplicated by the bridge.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from urllib.parse import quote

import httpx

from otel_events.log import Cursor, Entry, EventLog

__all__ = ["HttpSink"]

_log = logging.getLogger(__name__)
# Answers that may succeed if the same batch is sent again later.
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpSink:
    """Posts every event of the log to ``{url}/v1/threads/{thread_id}/events``.

    ``url`` is the bridge's base URL; ``token`` its bearer token. Counters: ``sent``
    (accepted by the bridge), ``dropped`` (never delivered: overwritten while the bridge
    was unreachable, refused, or still unsent at ``close``), ``rejected`` (of those,
    lines the bridge refused).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        max_batch: int = 1000,
        max_batch_bytes: int = 1024 * 1024,
        timeout: float = 5.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sent = 0
        self.rejected = 0
        self.requests = 0
        headers = {"content-type": "application/x-ndjson"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self._client_args = {"headers": headers, "timeout": timeout, "transport": transport}
        self._cursor: Cursor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._down = False
        self._lost = 0

    # -- the Sink protocol -------------------------------------------------------

    def start(self, log: EventLog, thread_id: str) -> None:
        if self._thread is not None:
            # Its counters and thread id belong to one emitter: give each its own sink.
            raise RuntimeError("an HttpSink serves one emitter; it is started already")
        self._cursor = cursor = log.cursor()
        url = f"{self.url}/v1/threads/{quote(thread_id, safe='')}/events"
        self._thread = threading.Thread(target=self._run, args=(cursor, url),
                                        name="otel-events-http", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Events never delivered: lost while the bridge was unreachable, refused, or
        still unsent at ``close``."""
        return self._lost + (0 if self._cursor is None else self._cursor.dropped)

    def close(self, timeout: float = 5.0) -> bool:
        """Send what was published for up to ``timeout`` seconds, then stop; True when
        the sink's thread has ended."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._cursor is not None:
            self._cursor.log.notify()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            return not self._thread.is_alive()
        return True

    # -- the worker ----------------------------------------------------------------

    def _run(self, cursor: Cursor, url: str) -> None:
        client = httpx.Client(**self._client_args)  # type: ignore[arg-type]
        pending: list[Entry] = []
        attempt = 0
        try:
            while True:
                if not pending:
                    pending = self._next_batch(cursor)
                    if not pending:
                        if cursor.at_end(stopping=self._stop.is_set()):
                            return
                        cursor.wait_blocking(timeout=0.5)
                        continue
                if self._expired():
                    self._lost += len(pending) + max(0, cursor.log.next_seq - cursor.position)
                    return
                outcome = self._post(client, url, pending)
                if outcome is None:
                    attempt += 1
                    delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                    delay *= 0.5 + random.random() / 2
                    if self._deadline is not None:
                        delay = min(delay, max(0.0, self._deadline - time.monotonic()))
                    # While closing, _stop is already set: fall back to a plain sleep.
                    if not self._stop.is_set():
                        self._stop.wait(delay)
                    else:
                        time.sleep(delay)
                    continue
                attempt = 0
                pending = []
        except Exception:  # the agent must never see a sink's failure
            _log.exception("otel-events HttpSink stopped")
        finally:
            client.close()

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _next_batch(self, cursor: Cursor) -> list[Entry]:
        entries, gap = cursor.read(limit=self.max_batch)
        while gap is not None:  # lost while the bridge was down: counted, then go on
            cursor.skip(gap)
            entries, gap = cursor.read(limit=self.max_batch)
        size = 0
        for index, entry in enumerate(entries):
            size += len(entry.json) + 1
            if size > self.max_batch_bytes and index > 0:
                cursor.position = entry.seq  # the rest goes in the next batch
                return entries[:index]
        return entries

    def _post(self, client: httpx.Client, url: str, batch: list[Entry]) -> bool | None:
        """True: done with the batch (sent or refused for good); None: try again."""
        body = b"".join(entry.json + b"\n" for entry in batch)
        self.requests += 1
        try:
            response = client.post(url, content=body)
        except httpx.HTTPError as exc:
            self._went_down(type(exc).__name__)
            return None
        status = response.status_code
        if status in _RETRYABLE:
            self._went_down(f"HTTP {status}")
            return None
        if self._down:
            self._down = False
            _log.warning("otel-events HttpSink: bridge reachable again")
        if status in (200, 207, 422):
            try:
                refused = len(response.json().get("rejected", ()))
            except (ValueError, AttributeError, TypeError):  # not the bridge's answer
                refused = 0 if status == 200 else len(batch)
            self.rejected += refused
            self._lost += refused
            self.sent += len(batch) - refused
            return True
        # 401, 403, 404, 413, 415...: sending the same batch again cannot help.
        _log.warning("otel-events HttpSink: bridge refused a batch of %d events (HTTP %d)",
                     len(batch), status)
        self._lost += len(batch)
        return True

    def _went_down(self, why: str) -> None:
        if not self._down:
            self._down = True
            _log.warning("otel-events HttpSink: bridge unavailable (%s); retrying", why)
