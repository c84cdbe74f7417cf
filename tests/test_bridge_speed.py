"""What the bridge's delivery path leaves out to be fast, checked to stay left out, and
that the faster paths give the same answers as the plain ones."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from otel_events import protocol
from otel_events.bridge.sse import SlowClientResponse
from otel_events.protocol import parse_event


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
