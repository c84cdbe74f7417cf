"""parse_batch checks a line as the protocol does: same events, same error texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from otel_events.bridge.batch import parse_batch
from otel_events.protocol import EVENT_ADAPTER, describe_error, parse_event

FIXTURES = Path(__file__).parent / "fixtures"

INVALID: list[dict[str, Any]] = [
    {"type": "item.completed"},
    {"type": "item.started", "item": {"id": 1, "type": "x"}},
    {"type": "progress.update", "item_id": "a", "fraction": 2},
    {"type": "progress.update"},
    {"type": "turn.started", "timestamp": "yesterday"},
    {"type": "turn.failed", "error": {"type": "x"}},
    {"type": "token.count", "usage": {"input_tokens": "many"}},
    {"type": "some.new.kind", "trace_id": "not hex"},
    {"type": "error"},
]


def fixture_lines() -> list[dict[str, Any]]:
    lines = []
    for path in [FIXTURES / "codex-exec-sample.jsonl", *sorted(FIXTURES.glob("codex/*.jsonl"))]:
        lines += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def test_valid_lines_give_the_protocols_event() -> None:
    lines = fixture_lines()
    lines += [{"type": "progress.update", "item_id": "i", "fraction": 0.5, "seq": 3},
              {"type": "token.count", "usage": {"input_tokens": 1}, "extra": [1, {"a": 2}]},
              {"type": "a.future.type", "thread_id": "th", "anything": {"kept": True}}]
    assert len(lines) > 50
    for value in lines:
        value.pop("thread_id", None)
        batch = parse_batch(orjson.dumps(value), "application/x-ndjson", "th")
        assert not batch.rejected, batch.rejected
        [line] = batch.events
        # parse_event validates with the one model the union would pick: check it
        # against the union itself.
        expected = EVENT_ADAPTER.validate_python(value)
        assert type(parse_event(value)) is type(expected)
        assert type(line.event) is type(expected)
        assert line.event.model_dump() == expected.model_dump()
        assert line.event.model_fields_set == expected.model_fields_set


@pytest.mark.parametrize("value", INVALID, ids=lambda value: str(value["type"]))
def test_invalid_lines_get_the_protocols_error_text(value: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        EVENT_ADAPTER.validate_python(value)  # the union's own error
    with pytest.raises(ValidationError) as ours:
        parse_event(value)
    assert describe_error(ours.value) == describe_error(raised.value)
    batch = parse_batch(orjson.dumps(value), "application/x-ndjson", "th")
    assert not batch.events
    assert batch.rejected == [(1, describe_error(raised.value))]


@pytest.mark.parametrize("kind", [["x"], {"a": 1}, 5, None])
def test_a_type_that_is_not_a_string_is_a_validation_error(kind: object) -> None:
    # Found while moving the per-model fast path into parse_event: an unhashable type
    # raised TypeError from the union's discriminator (a crash in ingest).
    with pytest.raises(ValidationError):
        parse_event({"type": kind})
    with pytest.raises(ValidationError):
        parse_event(orjson.dumps({"type": kind}))
