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
import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx

from otel_events.log import Entry
from otel_events.sinks import BatchingSink, fitting

__all__ = ["HttpSink"]

# Answers that may succeed if the same batch is sent again later.
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
# How the bridge's 413 states its limit (``otel_events.bridge.routes``).
_LIMIT_TEXT = re.compile(r"larger than (\d+) bytes")

_log = logging.getLogger(__name__)


class HttpSink(BatchingSink):
    """Posts every event of the log to ``{url}/v1/threads/{thread_id}/events``.

    ``url`` is the bridge's base URL; ``token`` its bearer token. Counters: ``sent``
    (accepted by the bridge), ``dropped`` (never delivered: overwritten while the bridge
    was unreachable, refused, or still unsent at ``close``), ``rejected`` (of those,
    lines the bridge refused), ``requests``.

    A batch over the bridge's body limit (413) is sent in parts, and ``max_batch_bytes``
    lowered to the limit for later batches; only an event over the limit on its own is
    refused for good.
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
        # The status of the last refusal logged, until a part is accepted again.
        self._last_refusal: int | None = None
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

    def _forget_connection(self) -> None:
        self._client = None  # the parent's pool: a TLS close here would reach its peer

    def _deliver(self, batch: list[Entry]) -> bool:
        """Post ``batch`` in parts that fit the bridge's body limit (as far as it is
        known); each part done leaves ``batch``, so a retry resumes after it."""
        assert self._client is not None
        posted = False
        while batch:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return False  # closing, out of time: the rest is counted as lost
            count = fitting(batch, self.max_batch_bytes)
            body = b"".join(entry.json + b"\n" for entry in batch[:count])
            if posted:  # BatchingSink counted the first request of this call
                self.requests += 1
            posted = True
            try:
                response = self._client.post(self._events_url, content=body)
            except httpx.HTTPError as exc:
                self._unreachable(type(exc).__name__)
                return False
            status = response.status_code
            if status in _RETRYABLE:
                self._retry_after = _retry_after(response.headers.get("retry-after"))
                self._unreachable(f"HTTP {status}")
                return False
            self._reachable()
            if status == 413 and count > 1:
                # A bridge (or a proxy) with a smaller limit than our batches: cut
                # smaller, now and for every later batch, and send the parts.
                self._learn_limit(response, len(body))
                continue
            if status == 413:  # one event larger than the limit: no cut can help
                self.rejected += 1
                self._refuse(1, 413, f"HTTP 413 to one event of {len(body)} bytes")
            else:
                self._answered(count, status, response)
            del batch[:count]
        return True

    def _learn_limit(self, response: httpx.Response, refused: int) -> None:
        """Lower ``max_batch_bytes`` below a refused body of ``refused`` bytes: to the
        limit the bridge states in its 413, or else to half the body."""
        limit = _stated_limit(response)
        if limit is None or limit >= refused:
            limit = refused // 2
        limit = max(1, limit)
        if self.max_batch_bytes is None or limit < self.max_batch_bytes:
            _log.warning("otel-events HttpSink: a body of %d bytes is over the bridge's "
                         "limit (HTTP 413); sending it in parts, and at most %d bytes a "
                         "request from now on", refused, limit)
            self.max_batch_bytes = limit

    def _answered(self, count: int, status: int, response: httpx.Response) -> None:
        """Count a part of ``count`` events the bridge answered with ``status``."""
        if status in (200, 207, 422):
            refused = _rejected_lines(response)
            if refused is None:  # not the bridge's answer
                if status == 200:
                    refused = 0
                else:  # a 422 without lines: no line was read (an invalid thread id)
                    self.rejected += count
                    self._refuse(count, status, f"HTTP {status}, not the bridge's answer")
                    return
            refused = min(refused, count)
            self.rejected += refused
            self._lost += refused
            self.sent += count - refused
            self._last_refusal = None
            return
        # 401, 403, 404, 415, a redirect...: sending the same part again cannot help.
        where = response.headers.get("location")
        self._refuse(count, status, f"HTTP {status}" + (f" to {where}" if where else ""))

    def _refuse(self, count: int, status: int, why: str) -> None:
        """Count ``count`` events lost for good; log why when the status is new since
        the last part accepted (a wrong token refuses every batch: one line, not one a
        request; a proxy refusing every event as too large: not one line an event)."""
        self._lost += count
        if status != self._last_refusal:
            self._last_refusal = status
            _log.warning("otel-events HttpSink: the bridge refused a batch (%s); "
                         "%d events dropped", why, count)


def _rejected_lines(response: httpx.Response) -> int | None:
    """The lines a bridge's 200/207/422 answer rejected; None if it is not one."""
    try:
        answer = response.json()
    except ValueError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("accepted"), int):
        return None
    count = answer.get("rejected_count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    rejected = answer.get("rejected")
    return len(rejected) if isinstance(rejected, list) else None


def _stated_limit(response: httpx.Response) -> int | None:
    """The body limit a bridge's 413 states (``the body is larger than N bytes``)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return None
    found = _LIMIT_TEXT.search(detail) if isinstance(detail, str) else None
    return int(found.group(1)) if found else None


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value[:12])  # a bigger number than that is capped anyway
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
