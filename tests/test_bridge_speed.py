"""What the bridge's delivery path leaves out to be fast, checked to stay left out, and
that the faster paths give the same answers as the plain ones."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from pydantic import ValidationError

from otel_events import protocol
from otel_events.bridge import BridgeSettings, create_app
from otel_events.bridge.sse import SlowClientResponse
from otel_events.protocol import parse_event

from .bridge_support import bound_socket, start_bridge, wait_for


async def _stream(send_timeout: float | None) -> list[bytes]:
    async def chunks() -> Any:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            sent.append(message["body"])

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays: the stream ends by itself
        raise AssertionError("unreachable")

    response = SlowClientResponse(chunks(), ping=0, send_timeout=send_timeout)
    scope = {"type": "http", "method": "GET", "extensions": {}}
    await response(scope, receive, send)
    return sent


@pytest.mark.parametrize("send_timeout", [None, 5.0])
async def test_a_send_opens_a_cancel_scope_only_with_a_timeout(
        monkeypatch: pytest.MonkeyPatch, send_timeout: float | None) -> None:
    scopes: list[float | None] = []
    move_on_after = anyio.move_on_after

    def counting(delay: float | None, *args: Any, **kwargs: Any) -> Any:
        scopes.append(delay)
        return move_on_after(delay, *args, **kwargs)

    monkeypatch.setattr(anyio, "move_on_after", counting)  # what sse-starlette calls
    assert await _stream(send_timeout) == [b"data: 1\n\n", b"data: 2\n\n"]
    if send_timeout is None:
        assert scopes == []
    else:
        assert scopes.count(send_timeout) >= 2  # the response head and each chunk


@pytest.mark.parametrize("event", [
    {"type": "item.completed", "seq": 3, "extra": [1, {"a": None}],
     "item": {"id": "i", "type": "command_execution", "status": "completed",
              "started_at": "2026-11-25T10:00:00Z", "unknown": True}},
    {"type": "turn.completed", "usage": {"input_tokens": 5}},
    {"type": "a.new.kind", "anything": 1},
])
def test_parse_event_gives_what_model_validate_gives(event: dict[str, Any]) -> None:
    model = protocol._KNOWN.get(event["type"], protocol.UnknownEvent)
    expected = model.model_validate(event)
    got = parse_event(event)
    assert type(got) is type(expected)
    assert got.model_dump() == expected.model_dump()
    assert got.model_fields_set == expected.model_fields_set
    assert protocol.encode_event(got) == protocol.encode_event(expected)


def test_parse_event_errors_are_still_the_unions() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event({"type": "item.completed", "item": {"id": 5}})
    assert caught.value.errors()[0]["loc"][0] == "item.completed"


def test_the_fold_keeps_content_set_any_way_and_skips_items_without_any() -> None:
    from otel_events.bridge.snapshot import ThreadSnapshot
    from otel_events.protocol import ItemCompleted, ThreadItem

    item = ThreadItem(id="a", type="command_execution")
    item.aggregated_output = "ok"  # set after construction: still the producer's
    snapshot = ThreadSnapshot("th")
    snapshot.apply(ItemCompleted(item=item, turn_id="t"), 1)
    snapshot.apply(ItemCompleted(item=ThreadItem(id="b", type="reasoning", text=None),
                                 turn_id="t"), 2)
    items = {item["id"]: item for item in snapshot.to_dict()["turns"][0]["items"]}
    assert items["a"]["aggregated_output"] == "ok"
    assert "text" not in items["b"] and items["b"]["truncated"] == []


def _read_events(url: str, thread_id: str, count: int) -> None:
    with httpx.stream("GET", f"{url}/v1/threads/{thread_id}/events", timeout=10) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data:")
            if seen == count:
                return


@pytest.mark.parametrize("server", ["bridge", "plain uvicorn"])
def test_writes_are_timed_once_per_connection_under_the_bridges_server(
        monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    # The bridge's server drops a connection whose writes stall (``pause_writing``, one
    # timer per connection: tests/adversarial/test_1_stalled_clients.py); under it a
    # stream opens no cancel scope per write. Under another server the stream keeps
    # its own deadline on each write.
    timed: list[float | None] = []
    move_on_after = anyio.move_on_after

    def counting(delay: float | None, *args: Any, **kwargs: Any) -> Any:
        timed.append(delay)
        return move_on_after(delay, *args, **kwargs)

    monkeypatch.setattr(anyio, "move_on_after", counting)
    settings = {"send_timeout": 7.25, "heartbeat": 600}
    if server == "bridge":
        bridge = start_bridge(**settings)
        url, stop = bridge.url, bridge.stop
    else:
        sock = bound_socket()
        config = uvicorn.Config(create_app(BridgeSettings(**settings)), log_level="warning")
        plain = uvicorn.Server(config)
        thread = threading.Thread(target=plain.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        wait_for(lambda: plain.started, what="uvicorn started")

        def stop() -> None:
            plain.should_exit = True
            thread.join(10)
    try:
        events = [{"type": "item.completed", "item": {"id": f"i{n}", "type": "x"}}
                  for n in range(3)]
        assert httpx.post(f"{url}/v1/threads/th/events", json=events).status_code == 200
        _read_events(url, "th", 3)
    finally:
        stop()
    writes_timed = timed.count(7.25)
    assert writes_timed == 0 if server == "bridge" else writes_timed >= 2


class _Clock:
    """A loop's ``time`` and ``call_later``, advanced by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []
        self.made = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Any:
        timer = (self.now + delay, callback)
        self.timers.append(timer)
        self.made += 1
        return type("Handle", (), {"cancel": lambda _: self.timers.remove(timer)})()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(t for t in self.timers if t[0] <= self.now):
            self.timers.remove(timer)
            timer[1]()


def test_one_write_timer_per_connection_drops_only_a_pause_past_the_send_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from otel_events.bridge.command import GuardedH11Protocol

    monkeypatch.setattr(H11Protocol, "pause_writing", lambda self: None)
    monkeypatch.setattr(H11Protocol, "resume_writing", lambda self: None)
    clock = _Clock()
    protocol = GuardedH11Protocol.__new__(GuardedH11Protocol)
    protocol.loop = clock  # type: ignore[assignment]
    protocol.send_timeout = 10.0
    protocol.incidents = type(protocol.incidents)()
    protocol._write_deadline, protocol._paused_at, protocol._aborted = None, None, False
    aborted: list[bool] = []
    monkeypatch.setattr(protocol, "abort", lambda cycle=None: aborted.append(True) or True)

    # A busy stream: paused at each large write, resumed when the client read it. The
    # timer, when due, finds a short pause and waits for the rest of it: 25 s of this
    # make three timers, not fifty, and drop nothing.
    for _ in range(50):
        protocol.pause_writing()
        clock.advance(0.5)
        protocol.resume_writing()
    assert clock.made <= 3 and len(clock.timers) <= 1 and not aborted
    # A pause that lasts the whole send timeout drops the connection, not before.
    clock.advance(9.0)
    protocol.pause_writing()
    clock.advance(9.9)
    assert not aborted
    clock.advance(0.2)
    assert aborted == [True]
