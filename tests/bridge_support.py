"""A real bridge on loopback for the tests, and a small SSE client to read it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from otel_events.bridge import BridgeSettings, create_server
from otel_events.bridge.memory import MemoryBroker, MemoryThread

NDJSON = {"content-type": "application/x-ndjson"}


def bound_socket(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: a free one), handed to uvicorn."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Bridge:
    """A bridge running in a uvicorn server on a thread of the test process."""

    settings: BridgeSettings
    server: Any
    thread: threading.Thread
    url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    @property
    def broker(self) -> MemoryBroker:
        broker: MemoryBroker = self.server.config.app.state.broker
        return broker

    def thread_state(self, thread_id: str) -> MemoryThread:
        thread = self.broker.get(thread_id)
        assert thread is not None, f"no thread {thread_id}"
        return thread

    def post(self, thread_id: str, events: list[dict[str, Any]] | bytes,
             **headers: str) -> httpx.Response:
        body = events if isinstance(events, bytes) else ndjson(events)
        return self.client.post(f"/v1/threads/{thread_id}/events", content=body,
                                headers={**NDJSON, **headers})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.client.close()
        assert not self.thread.is_alive(), "the bridge did not stop"


def start_bridge(port: int = 0, **settings: Any) -> Bridge:
    """Start a bridge, poll /healthz with a deadline, return it (call ``stop()``)."""
    sock = bound_socket(port)
    port = sock.getsockname()[1]
    config = BridgeSettings(port=port, **settings)
    server = create_server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"bridge-{port}")
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not thread.is_alive():
            raise AssertionError("the bridge exited while starting")
        try:
            return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 15.0, "the bridge's /healthz")
    return Bridge(config, server, thread, url)


@contextlib.contextmanager
def running_bridge(**settings: Any) -> Iterator[Bridge]:
    bridge = start_bridge(**settings)
    try:
        yield bridge
    finally:
        bridge.stop()


def seq_of(event_id: str | None) -> int:
    """The seq in an SSE id (``epoch:seq``)."""
    assert event_id is not None
    return int(event_id.rsplit(":", 1)[-1])


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


def turn_events(turn: str, items: int, seq0: int = 1, fail_item: int | None = None,
                ) -> list[dict[str, Any]]:
    """A producer's turn: turn.started, items started and completed, turn.completed."""
    out: list[dict[str, Any]] = [{"type": "turn.started", "turn_id": turn}]
    for n in range(1, items + 1):
        item = {"id": f"{turn}-item-{n}", "type": "command_execution",
                "description": f"step {n} of {turn}"}
        out.append({"type": "item.started", "turn_id": turn,
                    "item": {**item, "status": "in_progress"}})
        status = "failed" if n == fail_item else "completed"
        done: dict[str, Any] = {**item, "status": status, "duration_ms": 1.5}
        if status == "failed":
            done["error"] = {"message": "exit 1", "type": "CommandFailed"}
        out.append({"type": "item.completed", "turn_id": turn, "item": done})
    out.append({"type": "turn.completed", "turn_id": turn,
                "usage": {"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 5}})
    for offset, event in enumerate(out):
        event["seq"] = seq0 + offset
    return out


@dataclass
class Message:
    """One SSE message (or comment) as a client sees it."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    retry: int | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return orjson.loads(self.data)


def parse_block(block: str) -> Message:
    message = Message()
    data: list[str] = []
    for line in block.split("\n"):
        if line.startswith(":"):
            message.comment = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            message.id = value
        elif name == "event":
            message.event = value
        elif name == "retry":
            message.retry = int(value)
    if data:
        message.data = "\n".join(data)
    return message


async def sse_messages(response: httpx.Response) -> AsyncIterator[Message]:
    """The messages of an SSE response, as they arrive."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if block:
                yield parse_block(block)


async def read_events(client: httpx.AsyncClient, path: str, count: int,
                      headers: dict[str, Any] | None = None,
                      keep_synthetic: bool = False,
                      params: dict[str, str] | None = None) -> list[Message]:
    """Connect, collect ``count`` messages with data (and comments if asked), disconnect."""
    out: list[Message] = []
    async with client.stream("GET", path, headers=headers or {}, params=params) as response:
        assert response.status_code == 200, response.status_code
        async for message in sse_messages(response):
            if message.data is None and not keep_synthetic:
                continue
            out.append(message)
            if len([m for m in out if m.data is not None]) >= count:
                break
    return out
