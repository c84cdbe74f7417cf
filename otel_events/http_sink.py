"""``HttpSink``: sends an emitter's events to a bridge, off the agent's hot path.

A background thread reads the emitter's ``EventLog`` and posts what it finds as one
NDJSON batch (everything published while the previous request was in flight), so the
agent only ever appends to memory. The log is the buffer, and it is bounded: while the
bridge is down, the sink retries the batch in hand with backoff and the log keeps the
newest events; what the log overwrote meanwhile is counted in ``dropped`` (with the
broker's policy: transient events go first). Nothing here blocks or raises into agent
code. A retried batch that had in fact arrived is de-duplicated by the bridge.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from urllib.parse import quote

import httpx
import orjson

from otel_events.broker import Entry, EventLog

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
        self.dropped = 0
        self.rejected = 0
        self.requests = 0
        headers = {"content-type": "application/x-ndjson"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self._client_args = {"headers": headers, "timeout": timeout, "transport": transport}
        self._log: EventLog | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread_id: str | None = None
        self._down = False

    # -- the Sink protocol -------------------------------------------------------

    def start(self, log: EventLog) -> None:
        if self._thread is not None:
            # Its counters and thread id belong to one emitter: give each its own sink.
            raise RuntimeError("an HttpSink serves one emitter; it is started already")
        self._log = log
        self._thread = threading.Thread(target=self._run, args=(log, log.next_seq),
                                        name="otel-events-http", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Send what was published for up to ``timeout`` seconds, then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._log is not None:
            self._log.notify()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)

    # -- the worker ----------------------------------------------------------------

    def _run(self, log: EventLog, cursor: int) -> None:
        client = httpx.Client(**self._client_args)  # type: ignore[arg-type]
        pending: list[Entry] = []
        attempt = 0
        try:
            while True:
                if not pending:
                    pending, cursor = self._next_batch(log, cursor)
                    if not pending:
                        if log.drained(cursor, stopping=self._stop.is_set()):
                            return
                        log.wait_blocking(cursor, timeout=0.5)
                        continue
                if self._expired():
                    self.dropped += len(pending) + max(0, log.next_seq - cursor)
                    return
                outcome = self._post(client, pending)
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

    def _next_batch(self, log: EventLog, cursor: int) -> tuple[list[Entry], int]:
        while True:
            entries, new_cursor, skipped, gap = log.read(cursor, limit=self.max_batch)
            self.dropped += skipped
            if gap is not None:
                self.dropped += gap.missed
                cursor = gap.resume_seq
                continue
            break
        size = 0
        for index, entry in enumerate(entries):
            size += len(entry.json) + 1
            if size > self.max_batch_bytes and index > 0:
                return entries[:index], entries[index].seq
        return entries, new_cursor

    def _post(self, client: httpx.Client, batch: list[Entry]) -> bool | None:
        """True: done with the batch (sent or refused for good); None: try again."""
        if self._thread_id is None:
            thread_id = orjson.loads(batch[0].json).get("thread_id")
            if not isinstance(thread_id, str):
                self.dropped += len(batch)
                return True
            self._thread_id = thread_id
        url = f"{self.url}/v1/threads/{quote(self._thread_id, safe='')}/events"
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
            self.dropped += refused
            self.sent += len(batch) - refused
            return True
        # 401, 403, 404, 413, 415...: sending the same batch again cannot help.
        _log.warning("otel-events HttpSink: bridge refused a batch of %d events (HTTP %d)",
                     len(batch), status)
        self.dropped += len(batch)
        return True

    def _went_down(self, why: str) -> None:
        if not self._down:
            self._down = True
            _log.warning("otel-events HttpSink: bridge unavailable (%s); retrying", why)
