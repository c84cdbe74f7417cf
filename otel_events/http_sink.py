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

from urllib.parse import quote

import httpx

from otel_events.log import Entry
from otel_events.sinks import BatchingSink

__all__ = ["HttpSink"]

# Answers that may succeed if the same batch is sent again later.
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpSink(BatchingSink):
    """Posts every event of the log to ``{url}/v1/threads/{thread_id}/events``.

    ``url`` is the bridge's base URL; ``token`` its bearer token. Counters: ``sent``
    (accepted by the bridge), ``dropped`` (never delivered: overwritten while the bridge
    was unreachable, refused, or still unsent at ``close``), ``rejected`` (of those,
    lines the bridge refused), ``requests``.
    """

    kind = "HttpSink"
    destination = "bridge"

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
        super().__init__(max_batch=max_batch, max_batch_bytes=max_batch_bytes,
                         backoff=backoff, max_backoff=max_backoff)
        self.url = url.rstrip("/")
        self.rejected = 0
        headers = {"content-type": "application/x-ndjson"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self._client_args = {"headers": headers, "timeout": timeout, "transport": transport}
        self._client: httpx.Client | None = None
        self._events_url = ""

    def _connect(self, thread_id: str) -> None:
        self._client = httpx.Client(**self._client_args)  # type: ignore[arg-type]
        self._events_url = f"{self.url}/v1/threads/{quote(thread_id, safe='')}/events"

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()

    def _deliver(self, batch: list[Entry]) -> bool:
        assert self._client is not None
        body = b"".join(entry.json + b"\n" for entry in batch)
        try:
            response = self._client.post(self._events_url, content=body)
        except httpx.HTTPError as exc:
            self._unreachable(type(exc).__name__)
            return False
        status = response.status_code
        if status in _RETRYABLE:
            self._unreachable(f"HTTP {status}")
            return False
        self._reachable()
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
        self._refused(batch, f"HTTP {status}")
        return True
