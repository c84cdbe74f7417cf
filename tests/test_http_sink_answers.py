"""HttpSink and the bridge's answers: 413 (a smaller body limit), Retry-After, odd bodies.

Each test runs a real server on loopback (the bridge under uvicorn, or a tiny ASGI app
where the bridge cannot be made to answer so) and feeds the sink a bare ``EventLog``
of producer events, so what each batch holds is decided by the test, not by timing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import orjson
import pytest

from otel_events.http_sink import HttpSink
from otel_events.log import EventLog
from tests.bridge_support import running_bridge, turn_events, wait_for

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
