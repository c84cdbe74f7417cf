"""examples/chat_app.py under a real uvicorn: a turn streams as SSE and the stream ends."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import orjson
import pytest
import uvicorn

from tests.bridge_support import bound_socket, parse_block, running_bridge, wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "chat_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chat_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, ModuleType, str]]:
    with running_bridge() as bridge:
        monkeypatch.setenv("OTEL_EVENTS_BRIDGE_URL", bridge.url)
        module = load_example()
        sock = bound_socket()
        server = uvicorn.Server(uvicorn.Config(module.app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        wait_for(lambda: server.started, what="the example app")
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", module, bridge.url
        finally:
            server.should_exit = True
            thread.join(10)
            for emitter in module._emitters.values():
                emitter.close(timeout=2.0)


def test_chat_stream_sends_the_turn_and_ends_with_it(
        chat: tuple[str, ModuleType, str]) -> None:
    url, module, bridge_url = chat
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/chat/stream", json={"message": "orders last week?"})
    assert response.status_code == 200
    messages = [parse_block(block) for block in response.text.split("\n\n") if block]
    events = [orjson.loads(m.data or "") for m in messages if m.data]
    types = [event["type"] for event in events]
    assert types[0] in ("thread.started", "turn.started")
    assert types[-1] == "turn.completed"  # the stream closed at the end of the turn
    assert [int(m.id or 0) for m in messages if m.id] == [e["seq"] for e in events]
    assert any(e.get("item", {}).get("type") == "sql_execution" for e in events)
    thread_id = response.headers["x-thread-id"]
    # The same events went to the bridge through the HttpSink.
    wait_for(lambda: httpx.get(f"{bridge_url}/v1/threads/{thread_id}").status_code == 200
             and httpx.get(f"{bridge_url}/v1/threads/{thread_id}").json()["status"]
             == "completed", what="the bridge to see the turn")
    wait_for(lambda: not module._tasks, what="the agent task to finish")


def test_a_client_that_leaves_early_cancels_the_turn(
        chat: tuple[str, ModuleType, str]) -> None:
    url, module, bridge_url = chat
    with httpx.Client(base_url=url, timeout=10) as client, client.stream(
            "POST", "/chat/stream", json={"message": "hi"}) as response:
        for chunk in response.iter_bytes():
            if b"item.started" in chunk:
                break  # the client goes away mid-turn
        thread_id = response.headers["x-thread-id"]
    wait_for(lambda: not module._tasks, what="the agent task to end")

    def ended() -> dict[str, object] | None:
        state = httpx.get(f"{bridge_url}/v1/threads/{thread_id}")
        turns = state.json()["turns"] if state.status_code == 200 else []
        return turns[-1] if turns and turns[-1]["status"] != "running" else None

    turn = wait_for(ended, what="the bridge to see the turn end")
    # Stopped on purpose by its user: cancelled, not failed and not abandoned.
    assert turn["error"] == {"message": "client disconnected", "type": "cancelled"}
