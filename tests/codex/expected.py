"""What each scenario's trace must show once ingested: one table for the live runs of the
real CLI (test_codex_cli.py) and for their recorded streams (tests/test_ingest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from ..conftest import Telemetry

AGENT = "codex"
TURN_SPAN = f"invoke_agent {AGENT}"


@dataclass(frozen=True)
class Tokens:
    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class TurnView:
    """A turn's span as a reader of the trace sees it."""

    outcome: str
    usage: Tokens
    #: Item span names in order; ``name!error_type`` when the item ended with one.
    items: tuple[str, ...]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def outcome(span: ReadableSpan) -> str:
    error_type = attrs(span).get("error.type")
    if error_type is None:
        return "completed"
    return str(error_type) if error_type in ("abandoned", "cancelled") else "failed"


def turns(telemetry: Telemetry) -> list[ReadableSpan]:
    return sorted((s for s in telemetry.spans() if s.name == TURN_SPAN),
                  key=lambda s: s.start_time or 0)


def items(telemetry: Telemetry, turn: ReadableSpan) -> list[ReadableSpan]:
    assert turn.context is not None
    found = [s for s in telemetry.spans()
             if s.parent is not None and s.parent.span_id == turn.context.span_id]
    return sorted(found, key=lambda s: (s.start_time or 0,
                                        str(attrs(s).get("otel_events.item.id"))))


def item(telemetry: Telemetry, name: str) -> ReadableSpan:
    return telemetry.span(name)


def view(telemetry: Telemetry) -> list[TurnView]:
    out = []
    for turn in turns(telemetry):
        a = attrs(turn)
        usage = Tokens(
            a.get("gen_ai.usage.input_tokens", 0),
            a.get("gen_ai.usage.cache_read.input_tokens", 0),
            a.get("gen_ai.usage.cache_write.input_tokens", 0),
            a.get("gen_ai.usage.output_tokens", 0),
            a.get("gen_ai.usage.reasoning.output_tokens", 0))
        names = []
        for span in items(telemetry, turn):
            error_type = attrs(span).get("error.type")
            names.append(span.name if error_type is None else f"{span.name}!{error_type}")
        out.append(TurnView(outcome(turn), usage, tuple(names)))
    return out


def output(span: ReadableSpan) -> Any:
    return json.loads(str(attrs(span)["otel_events.item.output"]))


def turn_outcomes(telemetry: Telemetry) -> dict[str, int]:
    """The ``otel_events.turns`` counter by outcome."""
    counts: dict[str, int] = {}
    for point in telemetry.metrics().get("otel_events.turns", []):
        key = str(point.attributes["otel_events.turn.outcome"])
        counts[key] = counts.get(key, 0) + int(point.value)
    return counts


def error_events(span: ReadableSpan) -> list[str]:
    return [str((event.attributes or {}).get("error.message"))
            for event in span.events if event.name == "error"]


TWO_CALLS = Tokens(200, 80, 10, 20, 6)
ONE_CALL = Tokens(100, 40, 5, 10, 3)
MESSAGE = "agent_message"
COMMAND = "execute_tool command_execution"

EXPECTED: dict[str, list[TurnView]] = {
    "command_ok": [TurnView("completed", TWO_CALLS, ("reasoning", COMMAND, MESSAGE))],
    "command_fails": [TurnView("completed", TWO_CALLS, (f"{COMMAND}!2", MESSAGE))],
    "http_500": [TurnView("failed", Tokens(), ())],
    "response_failed": [TurnView("failed", Tokens(), (MESSAGE,))],
    "stream_retry": [TurnView("completed", ONE_CALL, (MESSAGE,))],
    "plan": [TurnView("completed", TWO_CALLS, ("todo_list", MESSAGE))],
    "web_search": [TurnView("completed", ONE_CALL, ("execute_tool web_search", MESSAGE))],
    "file_change": [TurnView("completed", TWO_CALLS, ("file_change", MESSAGE))],
    "mcp": [TurnView("completed", TWO_CALLS, ("execute_tool add", MESSAGE))],
    "collab": [TurnView("completed", Tokens(300, 120, 15, 30, 9),
                        ("execute_tool spawn_agent", "execute_tool wait", MESSAGE))],
    # Codex reports usage summed over the session; each turn shows its own.
    "resume": [TurnView("completed", ONE_CALL, (MESSAGE,)),
               TurnView("completed", Tokens(1000, 400, 50, 100, 30), (MESSAGE,))],
    # The warning Codex writes before turn.started belongs to the turn, not a turn of its own.
    "unknown_model": [TurnView("completed", ONE_CALL, ("error", MESSAGE))],
    "sigint": [TurnView("abandoned", Tokens(), (f"{COMMAND}!abandoned",))],
}


def _command_ok(t: Telemetry) -> None:
    span = t.span(COMMAND)
    assert attrs(span)["process.exit.code"] == 0
    assert output(span) == "hello\n"
    assert span.status.status_code is StatusCode.UNSET


def _command_fails(t: Telemetry) -> None:
    span = t.span(COMMAND)
    assert attrs(span)["process.exit.code"] == 2
    assert attrs(span)["error.type"] == "2"
    assert span.status.status_code is StatusCode.ERROR
    assert "No such file or directory" in output(span)


def _failed_turn(message: str) -> Callable[[Telemetry], None]:
    def check(t: Telemetry) -> None:
        (turn,) = turns(t)
        assert turn.status.status_code is StatusCode.ERROR
        assert message in (turn.status.description or "")
        # The top-level error event that came before turn.failed is on the span too.
        assert any(message in text for text in error_events(turn))
        assert turn_outcomes(t) == {"failed": 1}
    return check


def _stream_retry(t: Telemetry) -> None:
    (turn,) = turns(t)
    assert turn.status.status_code is StatusCode.UNSET
    (reconnect,) = error_events(turn)
    assert reconnect.startswith("Reconnecting... 1/1 (stream disconnected")
    assert turn_outcomes(t) == {"completed": 1}


def _plan(t: Telemetry) -> None:
    assert output(t.span("todo_list")) == [{"text": "Read the code", "completed": True},
                                           {"text": "Fix the bug", "completed": False}]


def _web_search(t: Telemetry) -> None:
    a = attrs(t.span("execute_tool web_search"))
    # Known only at completion: the description follows the completed item.
    assert a["otel_events.item.description"] == (
        "Searching for opentelemetry genai semantic conventions")
    # Codex writes `id` twice (item_0, then the search's ws_ id): keep the item id.
    assert a["otel_events.item.id"] == "item_0"
    assert a["gen_ai.tool.call.id"] == "ws_0a1b2c"


def _file_change(t: Telemetry) -> None:
    (change,) = output(t.span("file_change"))
    assert change["kind"] == "add" and change["path"].endswith("/hello.txt")


def _mcp(t: Telemetry) -> None:
    span = t.span("execute_tool add")
    assert attrs(span)["otel_events.item.description"] == "Calling calc.add"
    assert output(span)["content"] == [{"type": "text", "text": "5"}]


def _collab(t: Telemetry) -> None:
    spawn = output(t.span("execute_tool spawn_agent"))
    (child,) = spawn["receiver_thread_ids"]
    assert spawn["agents_states"] == {child: {"status": "pending_init", "message": None}}
    wait = output(t.span("execute_tool wait"))
    assert wait["agents_states"][child] == {"status": "completed",
                                            "message": "There are 3 files."}


def _resume(t: Telemetry) -> None:
    first, second = turns(t)
    assert first.context is not None and second.context is not None
    assert first.context.trace_id != second.context.trace_id
    assert attrs(first)["gen_ai.conversation.id"] == attrs(second)["gen_ai.conversation.id"]


def _unknown_model(t: Telemetry) -> None:
    (turn,) = turns(t)  # one trace, not a phantom turn ended as abandoned
    assert turn.status.status_code is StatusCode.UNSET
    warning = t.span("error")
    assert warning.status.status_code is StatusCode.UNSET
    assert str(attrs(warning)["otel_events.item.description"]).startswith(
        "Model metadata for `no-such-model` not found")
    assert turn_outcomes(t) == {"completed": 1}


def _sigint(t: Telemetry) -> None:
    (turn,) = turns(t)
    assert turn.status.status_code is StatusCode.ERROR
    assert turn_outcomes(t) == {"abandoned": 1}


CHECKS: dict[str, Callable[[Telemetry], None]] = {
    "command_ok": _command_ok,
    "command_fails": _command_fails,
    "http_500": _failed_turn("experiencing high demand"),
    "response_failed": _failed_turn("the model fell over"),
    "stream_retry": _stream_retry,
    "plan": _plan,
    "web_search": _web_search,
    "file_change": _file_change,
    "mcp": _mcp,
    "collab": _collab,
    "resume": _resume,
    "unknown_model": _unknown_model,
    "sigint": _sigint,
}


def check(name: str, telemetry: Telemetry) -> None:
    """Everything the trace of scenario ``name`` must show."""
    assert view(telemetry) == EXPECTED[name]
    CHECKS[name](telemetry)
