"""HttpSink against a real bridge: delivery, bridge down, bridge late, retries, refusals."""

from __future__ import annotations

import httpx
import orjson

from otel_events import EventEmitter
from otel_events.http_sink import HttpSink
from tests.bridge_support import bound_socket, running_bridge, start_bridge, wait_for
from tests.conftest import Telemetry


def run_turn(emitter: EventEmitter, items: int) -> None:
    with emitter.turn() as turn:
        for n in range(items):
            with turn.item("command_execution", f"step {n}") as item:
                item.progress(0.5)
        turn.add_usage(input_tokens=3, output_tokens=2)


def test_events_reach_the_bridge_in_order(telemetry: Telemetry) -> None:
    with running_bridge(token="tok") as bridge:
        sink = HttpSink(bridge.url, token="tok")
        emitter = EventEmitter("sink-thread", tracer_provider=telemetry.tracer_provider,
                               meter_provider=telemetry.meter_provider, sinks=[sink])
        run_turn(emitter, 5)
        published = emitter.log.next_seq - 1
        emitter.close(timeout=5.0)
        assert (sink.sent, sink.dropped) == (published, 0)
        thread = bridge.thread_state("sink-thread")
        entries, _, _, _ = thread.log.read(1, limit=1000)
        events = [orjson.loads(entry.json) for entry in entries]
        assert [e["seq"] for e in events] == list(range(1, published + 1))
        types = [e["type"] for e in events]
        assert types[:2] == ["thread.started", "turn.started"]
        assert types[-1] == "turn.completed"
        state = bridge.client.get("/v1/threads/sink-thread",
                                  headers={"authorization": "Bearer tok"}).json()
        assert state["status"] == "completed"
        assert len(state["turns"][0]["items"]) == 5
        assert state["turns"][0]["trace_id"] is not None
        assert state["usage"]["input_tokens"] == 3


def test_bridge_down_never_raises_and_counts_what_was_lost(telemetry: Telemetry) -> None:
    sock = bound_socket()  # a port nobody serves: bound, then closed
    port = sock.getsockname()[1]
    sock.close()
    sink = HttpSink(f"http://127.0.0.1:{port}", backoff=0.01, max_backoff=0.05)
    emitter = EventEmitter("down", tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider, buffer_size=16,
                           sinks=[sink])
    run_turn(emitter, 20)
    published = emitter.log.next_seq - 1
    emitter.close(timeout=0.3)
    assert sink.close(0.0)  # its thread has ended: nothing keeps retrying
    assert sink.sent == 0
    assert sink.dropped == published
    assert sink.requests >= 1


def test_a_bridge_that_starts_late_gets_everything_still_buffered(
        telemetry: Telemetry) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    sink = HttpSink(f"http://127.0.0.1:{port}", backoff=0.01, max_backoff=0.05)
    emitter = EventEmitter("late", tracer_provider=telemetry.tracer_provider,
                           meter_provider=telemetry.meter_provider, sinks=[sink])
    run_turn(emitter, 3)
    published = emitter.log.next_seq - 1
    wait_for(lambda: sink.requests >= 2, what="the sink to retry")
    bridge = start_bridge(port=port)
    try:
        wait_for(lambda: bridge.broker.get("late") is not None
                 and bridge.thread_state("late").log.next_seq - 1 == published,
                 what="the buffered events to arrive")
        emitter.close(timeout=5.0)
        assert (sink.sent, sink.dropped) == (published, 0)
    finally:
        bridge.stop()


class _LoseFirstResponse(httpx.BaseTransport):
    """Delivers each request, but the first response is lost (a timeout after arrival)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.lost == 0:
            self.lost += 1
            response.read()
            response.close()
            raise httpx.ReadTimeout("response lost", request=request)
        return response


def test_a_batch_retried_after_a_lost_response_is_not_delivered_twice(
        telemetry: Telemetry) -> None:
    with running_bridge() as bridge:
        transport = _LoseFirstResponse()
        sink = HttpSink(bridge.url, backoff=0.01, transport=transport)
        emitter = EventEmitter("dup", tracer_provider=telemetry.tracer_provider,
                               meter_provider=telemetry.meter_provider, sinks=[sink])
        run_turn(emitter, 2)
        published = emitter.log.next_seq - 1
        emitter.close(timeout=5.0)
        assert transport.lost == 1
        assert sink.requests >= 2
        thread = bridge.thread_state("dup")
        assert thread.log.next_seq - 1 == published
        entries, _, _, _ = thread.log.read(1, limit=1000)
        assert [orjson.loads(e.json)["seq"] for e in entries] == list(range(1, published + 1))


def test_a_refused_batch_is_dropped_and_counted(telemetry: Telemetry) -> None:
    with running_bridge(token="right") as bridge:
        sink = HttpSink(bridge.url, token="wrong")
        emitter = EventEmitter("refused", tracer_provider=telemetry.tracer_provider,
                               meter_provider=telemetry.meter_provider, sinks=[sink])
        run_turn(emitter, 1)
        published = emitter.log.next_seq - 1
        emitter.close(timeout=5.0)
        assert (sink.sent, sink.dropped) == (0, published)
        assert bridge.broker.get("refused") is None
