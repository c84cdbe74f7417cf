"""HttpSink and the bridge's answers: 413 (a smaller body limit), Retry-After, odd bodies.

Each test runs a real server on loopback (the bridge under uvicorn, or a tiny ASGI app
where the bridge cannot be made to answer so) and feeds the sink a bare ``EventLog``
of producer events, so what each batch holds is decided by the test, not by timing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from otel_events.http_sink import HttpSink, _retry_after
from otel_events.log import EventLog
from tests.bridge_support import bound_socket, running_bridge, turn_events, wait_for

LIMIT = 64 * 1024


class _Gate(httpx.BaseTransport):
    """Forwards to the real server and records each answer (status, body size); when
    armed, holds the next request until the test opens it, so the events published
    meanwhile pile up into the next batch, as they do under load."""

    def __init__(self, rewrite_413: bool = False) -> None:
        self.inner = httpx.HTTPTransport()
        self.answers: list[tuple[int, int]] = []
        self.arrived = threading.Event()
        self.gate: threading.Event | None = None
        # A proxy's 413 says nothing of the limit: the bridge's own detail is replaced.
        self.rewrite_413 = rewrite_413

    def arm(self) -> threading.Event:
        self.arrived.clear()
        gate = self.gate = threading.Event()
        return gate

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.arrived.set()
            assert gate.wait(10.0), "the test never opened the gate"
        response = self.inner.handle_request(request)
        self.answers.append((response.status_code, len(request.content)))
        if response.status_code == 413 and self.rewrite_413:
            response.read()
            response.close()
            return httpx.Response(413, content=b"<html>Request Entity Too Large</html>",
                                  headers={"content-type": "text/html"}, request=request)
        return response

    def statuses(self) -> list[int]:
        return [status for status, _ in self.answers]


def _publish(log: EventLog, events: list[dict[str, Any]]) -> None:
    for event in events:
        log.append(event["type"], orjson.dumps(event))


def _burst(log: EventLog, transport: _Gate, events: list[dict[str, Any]]) -> None:
    """The first event goes alone and its request is held while the rest is published:
    the next batch is all of them (1000 events at most), as under load."""
    gate = transport.arm()
    _publish(log, events[:1])
    assert transport.arrived.wait(10.0), "the sink never sent"
    _publish(log, events[1:])
    gate.set()


def _held_seqs(bridge: Any, thread_id: str) -> list[int]:
    thread = bridge.broker.get(thread_id)
    if thread is None:
        return []
    entries, _, _, _ = thread.log.read(1, limit=100_000)
    return [orjson.loads(entry.json)["seq"] for entry in entries]


def _kind(event: dict[str, Any]) -> tuple[str, str | None]:
    return event["type"], event.get("item", {}).get("id")


def _held_kinds(bridge: Any, thread_id: str) -> list[tuple[str, str | None]]:
    """Type and item id of each event the bridge holds (it numbers them itself)."""
    entries, _, _, _ = bridge.thread_state(thread_id).log.read(1, limit=100_000)
    return [_kind(orjson.loads(entry.json)) for entry in entries]


@pytest.mark.parametrize("proxy", [False, True], ids=["bridge-413", "proxy-413"])
def test_a_batch_over_the_bridge_body_limit_is_split_and_the_limit_learned(
        proxy: bool) -> None:
    with running_bridge(max_body_bytes=LIMIT) as bridge:
        transport = _Gate(rewrite_413=proxy)
        sink = HttpSink(bridge.url, backoff=0.01, transport=transport)
        log = EventLog()
        sink.start(log, "split")
        first = turn_events("t1", 400)  # 802 events, ~150 kB: over the bridge's 64 KiB
        _burst(log, transport, first)
        wait_for(lambda: sink.sent + sink.dropped >= len(first), what="the first burst")
        assert (sink.sent, sink.dropped) == (len(first), 0)
        assert 413 in transport.statuses()
        if not proxy:  # the bridge says its limit: one 413 teaches it
            assert transport.statuses().count(413) == 1
        learned = len(transport.answers)
        # The next burst is cut to the limit learned: no 413 paid again.
        second = turn_events("t2", 400, seq0=len(first) + 1)
        _burst(log, transport, second)
        assert sink.close(10.0)
        assert (sink.sent, sink.dropped) == (len(first) + len(second), 0)
        later = transport.answers[learned:]
        assert [status for status, _ in later] == [200] * len(later)
        assert max(size for _, size in later) <= LIMIT
        assert _held_seqs(bridge, "split") == list(range(1, len(first) + len(second) + 1))


def test_only_an_event_larger_than_the_limit_is_refused_and_logged_once_without_content(
        caplog: pytest.LogCaptureFixture) -> None:
    with running_bridge(max_body_bytes=LIMIT) as bridge:
        transport = _Gate()
        sink = HttpSink(bridge.url, backoff=0.01, transport=transport)
        log = EventLog()
        sink.start(log, "huge")
        events = turn_events("t1", 100)
        secret = "SECRET" + "x" * LIMIT
        huge = next(e for e in events if e["type"] == "item.completed")
        huge["item"]["aggregated_output"] = secret
        with caplog.at_level(logging.WARNING, logger="otel_events"):
            _burst(log, transport, events)
            assert sink.close(10.0)
        assert (sink.sent, sink.rejected, sink.dropped) == (len(events) - 1, 1, 1)
        assert _held_kinds(bridge, "huge") == [_kind(e) for e in events if e is not huge]
        refusals = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert str(len(orjson.dumps(huge)) + 1) in refusals[0]
        assert "SECRET" not in caplog.text


# -- answers that are not the bridge's, and refusals that repeat ------------------------


def test_a_422_that_is_not_the_bridge_line_report_is_not_counted_as_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    # A thread id the route's pattern refuses: FastAPI's own 422 ({"detail": [...]}),
    # no line read. Before: every event was counted in ``sent``.
    with running_bridge() as bridge:
        sink = HttpSink(bridge.url)
        log = EventLog()
        sink.start(log, "not valid")
        events = turn_events("t1", 2)
        with caplog.at_level(logging.WARNING, logger="otel_events"):
            _publish(log, events)
            assert sink.close(10.0)
        assert (sink.sent, sink.rejected, sink.dropped) == (0, len(events), len(events))
        assert "HTTP 422" in caplog.text
        assert bridge.client.get("/v1/threads").json() == {"threads": []}


def test_a_wrong_token_is_logged_once_not_once_a_request(
        caplog: pytest.LogCaptureFixture) -> None:
    with running_bridge(token="right") as bridge:
        sink = HttpSink(bridge.url, token="wrong")
        log = EventLog()
        sink.start(log, "unauthorized")
        events = turn_events("t1", 2)
        with caplog.at_level(logging.WARNING, logger="otel_events"):
            for count, event in enumerate(events, 1):  # one request each
                _publish(log, [event])
                wait_for(lambda n=count: sink.dropped >= n, what="the refusal")
            assert sink.close(10.0)
        assert sink.requests == len(events)
        assert (sink.sent, sink.dropped) == (0, len(events))
        refusals = [r for r in caplog.records if "HTTP 401" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]


# -- Retry-After, from a server that answers what the test scripts ------------------------


Header = str | Callable[[], str]


class _Scripted:
    """An ASGI app: records when each POST arrived (after its body) and answers the next
    scripted (status, headers); 200 with a bridge-like report once the script is out.
    A header's value may be a function, called when the answer is sent (a date)."""

    def __init__(self, script: list[tuple[int, dict[str, Header]]]) -> None:
        self.script = list(script)
        self.arrivals: list[float] = []
        self.arrived = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        lines = 0
        while True:
            message = await receive()
            lines += message.get("body", b"").count(b"\n")
            if not message.get("more_body"):
                break
        self.arrivals.append(time.monotonic())
        self.arrived.set()
        status, headers = self.script.pop(0) if self.script else (200, {})
        body = orjson.dumps({"accepted": lines} if status == 200 else {"detail": "busy"})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                *((k.encode(), (v if isinstance(v, str) else v()).encode())
                                  for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": body})

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


@contextlib.contextmanager
def _serving(app: _Scripted) -> Iterator[str]:
    sock = bound_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="the scripted server")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10.0)


def _http_date(seconds_ahead: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_ahead),
                           usegmt=True)


@pytest.mark.parametrize(("status", "retry_after"), [
    (503, "1"),                       # what the bridge says when Redis is unreachable
    (429, lambda: _http_date(2.0)),   # a proxy's date: 1 to 2 s ahead at one-second grain
], ids=["503-seconds", "429-http-date"])
def test_retry_after_is_waited_before_the_next_attempt(
        status: int, retry_after: Header) -> None:
    app = _Scripted([(status, {"retry-after": retry_after})] * 2)
    with _serving(app) as url:
        sink = HttpSink(url, backoff=0.01, max_backoff=5.0)
        log = EventLog()
        sink.start(log, "busy")
        _publish(log, turn_events("t1", 1))
        wait_for(lambda: sink.sent == 4, what="the batch after two refusals")
        assert sink.close(5.0)
    assert len(app.arrivals) == 3
    assert min(app.gaps()) >= 0.95, app.gaps()  # before: 0.005 to 0.02 s


def test_a_hostile_retry_after_is_capped_by_max_backoff_and_close_still_bounded() -> None:
    app = _Scripted([(503, {"retry-after": "999999999999999999999"})] * 1000)
    with _serving(app) as url:
        sink = HttpSink(url, backoff=0.01, max_backoff=0.3)
        log = EventLog()
        sink.start(log, "hostile")
        _publish(log, turn_events("t1", 1))
        wait_for(lambda: len(app.arrivals) >= 3, what="three attempts")
        started = time.monotonic()
        assert sink.close(0.2)
        assert time.monotonic() - started < 1.0
    gaps = app.gaps()[:2]
    assert all(0.29 <= gap < 1.5 for gap in gaps), gaps
    assert (sink.sent, sink.dropped) == (0, 4)


def test_close_during_a_retry_after_still_waits_it_then_delivers() -> None:
    app = _Scripted([(503, {"retry-after": "1"})])
    with _serving(app) as url:
        sink = HttpSink(url, backoff=0.01, max_backoff=5.0)
        log = EventLog()
        sink.start(log, "closing")
        _publish(log, turn_events("t1", 1))
        assert app.arrived.wait(10.0)
        assert sink.close(5.0)  # wakes the sink's wait: the bridge's 1 s still holds
    assert (sink.sent, sink.dropped) == (4, 0)
    assert len(app.arrivals) == 2
    assert app.gaps()[0] >= 0.95, app.gaps()


@pytest.mark.parametrize(("value", "seconds"), [
    ("3", 3.0), (" 7 ", 7.0), (None, None), ("", None), ("-1", None), ("1.5", None),
    ("²", None), ("soon", None), ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert _retry_after(value) == seconds


def test_a_redirect_is_not_followed_and_says_where_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # Not followed: a POST redirected by 301/302 would come back as a GET of the stream
    # route, and the token would go wherever the Location says.
    app = _Scripted([(308, {"location": "https://bridge.example/v1/threads/r/events"})] * 2)
    with _serving(app) as url:
        sink = HttpSink(url)
        log = EventLog()
        sink.start(log, "r")
        events = turn_events("t1", 1)
        with caplog.at_level(logging.WARNING, logger="otel_events"):
            for count, event in enumerate(events[:2], 1):
                _publish(log, [event])
                wait_for(lambda n=count: sink.dropped >= n, what="the refusal")
            assert sink.close(5.0)
    assert (sink.sent, sink.dropped) == (0, 2)
    refusals = [r.getMessage() for r in caplog.records if "HTTP 308" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "https://bridge.example/v1/threads/r/events" in refusals[0]


def test_a_proxy_refusing_every_body_as_too_large_is_logged_once_not_per_event(
        caplog: pytest.LogCaptureFixture) -> None:
    app = _Scripted([(413, {})] * 1000)  # says nothing of its limit
    with _serving(app) as url:
        sink = HttpSink(url)
        log = EventLog()
        sink.start(log, "p")
        events = turn_events("t1", 3)  # events of several sizes
        with caplog.at_level(logging.WARNING, logger="otel_events"):
            _publish(log, events)
            assert sink.close(5.0)
    assert (sink.sent, sink.rejected, sink.dropped) == (0, len(events), len(events))
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1, drops
