"""Sinks read the log off the hot path: JsonlSink's overflow line; HttpSink's batches
cut by size, retries on 5xx, one emitter per sink."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from otel_events import EventEmitter, EventLog, JsonlSink
from otel_events.http_sink import HttpSink
from tests.bridge_support import bound_socket, wait_for


class Recorder:
    """A real HTTP server on loopback that records each POST and answers as told."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.bodies: list[bytes] = []
        self.answers: list[int] = []
        self.failures = failures
        self.status = status

        async def post(request: Request) -> JSONResponse:
            body = await request.body()
            if self.failures > 0:
                self.failures -= 1
                self.answers.append(self.status)
                return JSONResponse({"detail": "try later"}, status_code=self.status)
            self.bodies.append(body)
            self.answers.append(200)
            lines = [line for line in body.split(b"\n") if line]
            return JSONResponse({"accepted": len(lines), "rejected": []})

        app = Starlette(routes=[Route("/v1/threads/{thread_id}/events", post,
                                      methods=["POST"])])
        sock = bound_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, what="the recorder to start")

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for body in self.bodies
                for line in body.split(b"\n") if line]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.stop()


class StalledStream(io.BytesIO):
    """A pipe whose reader stalls on the first write until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, data: Any) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(data)


def test_jsonl_sink_writes_an_overflow_line_and_goes_on() -> None:
    log = EventLog(capacity=4)
    out = StalledStream()
    sink = JsonlSink(stream=out)
    sink.start(log, "t")

    def append(seq: int) -> None:
        log.append("item.completed", orjson.dumps({"type": "item.completed", "seq": seq}))

    append(1)
    assert out.entered.wait(10)  # the sink holds event 1 and is stuck writing it
    for seq in range(2, 12):  # the ring (4 events) loses 2..7 meanwhile
        append(seq)
    out.release.set()
    sink.close(timeout=5)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert lines[:2] == [{"type": "item.completed", "seq": 1},
                         {"type": "stream.overflow", "last_seq": 1, "missed": 6}]
    assert [line["seq"] for line in lines[2:]] == [8, 9, 10, 11]
    assert sink.dropped == 6


def test_http_sink_cuts_batches_by_bytes(recorder: Recorder) -> None:
    sink = HttpSink(recorder.url, max_batch_bytes=2048)
    emitter = EventEmitter("bytes", sinks=[sink])
    with emitter.turn() as turn:
        for n in range(20):
            turn.item("command_execution", f"step {n}").complete(output="x" * 400)
    published = emitter.log.next_seq - 1
    emitter.close(timeout=10)
    assert (sink.sent, sink.dropped) == (published, 0)
    assert [event["seq"] for event in recorder.events()] == list(range(1, published + 1))
    # Every request stays within the bound (a single event larger than it would go alone).
    assert len(recorder.bodies) >= 2
    assert all(len(body) <= 2048 for body in recorder.bodies)


def test_http_sink_retries_5xx_then_delivers_everything_once() -> None:
    recorder = Recorder(failures=3, status=503)
    try:
        sink = HttpSink(recorder.url, backoff=0.01, max_backoff=0.02)
        emitter = EventEmitter("retry", sinks=[sink])
        with emitter.turn() as turn:
            turn.item("reasoning", "think").complete(output="ok")
        published = emitter.log.next_seq - 1
        emitter.close(timeout=10)
        assert recorder.answers[:3] == [503, 503, 503]
        assert (sink.sent, sink.dropped) == (published, 0)
        assert [e["seq"] for e in recorder.events()] == list(range(1, published + 1))
    finally:
        recorder.stop()


def test_an_http_sink_serves_one_emitter(recorder: Recorder) -> None:
    sink = HttpSink(recorder.url)
    first = EventEmitter("one", sinks=[sink])
    with pytest.raises(RuntimeError, match="serves one emitter"):
        EventEmitter("two", sinks=[sink])
    first.close(timeout=5)
