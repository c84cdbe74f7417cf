"""The protocol: Codex's stream parses and round-trips; unknowns are kept; bad input is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from otel_events.protocol import (
    ItemCompleted,
    ItemStarted,
    ThreadStarted,
    TurnCompleted,
    TurnFailed,
    UnknownEvent,
    Usage,
    encode_event,
    event_json_schema,
    parse_event,
)

from .conftest import FIXTURES

SAMPLE = (FIXTURES / "codex-exec-sample.jsonl").read_text().splitlines()


def roundtrip(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(encode_event(parse_event(json.dumps(obj))))
    return result


@pytest.mark.parametrize("line", SAMPLE)
def test_codex_sample_parses_and_round_trips(line: str) -> None:
    assert roundtrip(json.loads(line)) == json.loads(line)


def test_codex_sample_types() -> None:
    events = [parse_event(line) for line in SAMPLE]
    assert isinstance(events[0], ThreadStarted)
    assert events[0].thread_id == "0199a213-81c0-7800-8aa1-bbab2a035a53"
    completed = [e for e in events if isinstance(e, ItemCompleted)]
    assert [e.item.type for e in completed] == [
        "reasoning", "command_execution", "file_change", "command_execution", "agent_message"]
    assert completed[1].item.exit_code == 1 and completed[1].item.status == "failed"
    assert isinstance(events[-1], TurnCompleted)
    assert events[-1].usage == Usage(input_tokens=24763, cached_input_tokens=24448,
                                     output_tokens=122)


def test_unknown_event_type_item_type_and_fields_are_kept() -> None:
    event = {"type": "turn.diff.updated", "diff": "--- a\n+++ b", "nested": {"x": [1, 2]}}
    parsed = parse_event(json.dumps(event))
    assert isinstance(parsed, UnknownEvent)
    assert roundtrip(event) == event
    item = {"type": "item.started", "item": {"id": "i", "type": "hologram", "beam": {"k": 1},
                                              "status": "warming_up"}, "extra_top": True}
    assert roundtrip(item) == item


def test_turn_failed_and_error_and_codex_extras() -> None:
    failed = {"type": "turn.failed", "error": {"message": "stream disconnected"}}
    assert isinstance(parse_event(json.dumps(failed)), TurnFailed)
    assert roundtrip(failed) == failed
    for event in (
        {"type": "error", "message": "reconnecting 1/5"},
        {"type": "item.plan.delta", "item_id": "item_3", "delta": "1. read the code"},
        {"type": "request_user_input", "id": "q1", "questions": [{"text": "Proceed?"}]},
        {"type": "item.completed", "item": {"id": "m", "type": "mcp_tool_call", "server": "db",
                                            "tool": "query", "arguments": {"q": 1},
                                            "result": None, "error": {"message": "denied"},
                                            "status": "failed"}},
        {"type": "item.completed", "item": {"id": "t", "type": "todo_list",
                                            "items": [{"text": "a", "completed": False}]}},
        {"type": "item.updated", "item": {"id": "w", "type": "web_search", "query": "otel"}},
    ):
        assert roundtrip(event) == event


def test_superset_fields_validate() -> None:
    good = {"type": "item.started", "thread_id": "t", "turn_id": "turn_1", "seq": 3,
            "timestamp": "2026-11-25T08:00:00.123456Z", "trace_id": "a" * 32,
            "span_id": "b" * 16,
            "item": {"id": "item_1", "type": "sql_execution", "description": "Revenue query",
                     "status": "in_progress", "started_at": "2026-11-25T09:00:00+01:00"}}
    assert isinstance(parse_event(json.dumps(good)), ItemStarted)
    assert roundtrip(good) == good


@pytest.mark.parametrize(("patch", "where"), [
    ({"timestamp": "2026-11-25T08:00:00"}, "timestamp"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"trace_id": "XYZ"}, "trace_id"),
    ({"span_id": "a" * 15}, "span_id"),
    ({"seq": "first"}, "seq"),
])
def test_bad_superset_fields_are_refused(patch: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps({"type": "turn.started", **patch}))
    assert where in str(info.value)


def test_missing_required_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_event('{"type": "item.completed"}')
    with pytest.raises(ValidationError):
        parse_event('{"type": "turn.failed", "error": {}}')
    with pytest.raises(ValidationError):
        parse_event('{"type": "progress.update", "item_id": "i", "fraction": 1.5}')
    with pytest.raises(ValidationError):
        parse_event("not json")


def test_events_built_in_python_write_their_type_and_full_usage() -> None:
    assert json.loads(encode_event(TurnCompleted(usage=Usage(input_tokens=3)))) == {
        "type": "turn.completed",
        "usage": {"input_tokens": 3, "cached_input_tokens": 0, "output_tokens": 0}}


def test_schema_command_prints_the_schema() -> None:
    out = subprocess.run([sys.executable, "-m", "otel_events", "schema"], check=True,
                         capture_output=True, text=True).stdout
    schema = json.loads(out)
    assert schema == json.loads(json.dumps(event_json_schema()))
    assert "item.completed" in out and "progress.update" in out


# -- property: any event of the shapes we know round-trips exactly -----------------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children,
                                                                      max_size=3),
    max_leaves=8,
)
_offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_timestamps = st.datetimes(timezones=_offsets).map(lambda d: d.isoformat())
_items = st.fixed_dictionaries(
    {"id": _text, "type": st.sampled_from(["sql_execution", "agent_message", "zz_custom"])},
    optional={
        "description": _text, "status": st.sampled_from(["in_progress", "completed", "failed",
                                                         "declined"]),
        "output": _json_values, "started_at": _timestamps, "duration_ms": st.floats(0, 1e6),
        "text": _text, "exit_code": st.none() | st.integers(-1, 255),
        "custom_field": _json_values,
    },
)
_common = {"thread_id": _text, "turn_id": _text, "seq": st.integers(1, 2**40),
           "timestamp": _timestamps, "trace_id": st.from_regex(r"\A[0-9a-f]{32}\Z"),
           "unknown_extra": _json_values}
_events = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["item.started", "item.updated",
                                                    "item.completed"]), "item": _items},
                          optional=_common),
    st.fixed_dictionaries({"type": st.just("turn.completed"), "usage": st.fixed_dictionaries(
        {k: st.integers(0, 2**40) for k in ("input_tokens", "cached_input_tokens",
                                             "output_tokens")})}, optional=_common),
    st.fixed_dictionaries({"type": st.just("progress.update"), "item_id": _text},
                          optional={"fraction": st.floats(0, 1), "message": _text, **_common}),
    st.fixed_dictionaries({"type": _text.filter(lambda t: t not in {
        "thread.started", "turn.started", "turn.completed", "turn.failed", "item.started",
        "item.updated", "item.completed", "item.plan.delta", "request_user_input", "error",
        "progress.update", "token.count", "stream.overflow"})}, optional=_common),
)


@settings(max_examples=300, deadline=None)
@given(_events)
def test_round_trip_property(event: dict[str, Any]) -> None:
    assert roundtrip(event) == event


def test_every_codex_line_is_valid_against_the_printed_schema() -> None:
    import jsonschema
    validator = jsonschema.Draft202012Validator(event_json_schema())
    from tests.conftest import FIXTURES

    lines = (FIXTURES / "codex-exec-sample.jsonl").read_text().splitlines()
    for line in lines:
        # A known event matches its own model and the catch-all: "any of", never "one of".
        validator.validate(json.loads(line))
