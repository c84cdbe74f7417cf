"""Ingest: a Codex stream becomes the spans and metrics the emitter would have made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from opentelemetry.trace import StatusCode

from otel_events.ingest import Ingester
from otel_events.metrics import AgentMetrics

from .conftest import FIXTURES, Telemetry

SAMPLE = FIXTURES / "codex-exec-sample.jsonl"


def ingester(telemetry: Telemetry) -> Ingester:
    return Ingester(telemetry.tracer_provider.get_tracer("t"),
                    AgentMetrics(telemetry.meter_provider.get_meter("t")), "codex")


def test_codex_sample_becomes_one_trace_with_a_span_per_item(telemetry: Telemetry) -> None:
    result = ingester(telemetry).feed_lines(SAMPLE.read_text().splitlines())
    assert result.rejected == [] and result.turns == 1 and result.items == 5
    turn = telemetry.span("invoke_agent codex")
    attributes = turn.attributes or {}
    assert attributes["gen_ai.conversation.id"] == "0199a213-81c0-7800-8aa1-bbab2a035a53"
    assert attributes["gen_ai.usage.input_tokens"] == 24763
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 24448
    assert attributes["gen_ai.usage.output_tokens"] == 122
    spans = telemetry.spans()
    assert len(spans) == 6
    assert {s.context.trace_id for s in spans if s.context} == {turn.context.trace_id}  # type: ignore[union-attr]
    items = [s for s in spans if s is not turn]
    assert all(s.parent and s.parent.span_id == turn.context.span_id for s in items)  # type: ignore[union-attr]
    commands = [s for s in items if s.name == "execute_tool command_execution"]
    assert [s.status.status_code for s in commands] == [StatusCode.ERROR, StatusCode.UNSET]
    first = commands[0].attributes or {}
    assert first["error.type"] == "command_execution_failed"
    command = "bash -lc 'pytest -q tests/test_parser.py'"
    assert first["otel_events.item.description"] == f"Running {command}"
    assert json.loads(str(first["otel_events.item.output"])) == "1 failed, 11 passed in 0.41s\n"
    metrics = telemetry.metrics()
    assert sum(dp.value for dp in metrics["otel_events.turns"]) == 1


def test_timestamps_give_span_times_and_open_items_are_abandoned(telemetry: Telemetry) -> None:
    lines = [
        {"type": "turn.started", "timestamp": "2026-11-25T08:00:00Z"},
        {"type": "item.started", "timestamp": "2026-11-25T08:00:01Z",
         "item": {"id": "a", "type": "sql_execution", "description": "query"}},
        {"type": "item.started", "timestamp": "2026-11-25T08:00:02Z",
         "item": {"id": "b", "type": "reasoning"}},
        {"type": "item.completed", "timestamp": "2026-11-25T08:00:04.5Z",
         "item": {"id": "a", "type": "sql_execution", "status": "completed", "output": [1]}},
        {"type": "turn.failed", "timestamp": "2026-11-25T08:00:05Z",
         "error": {"message": "model overloaded"}},
    ]
    ingester(telemetry).feed_lines(json.dumps(line) for line in lines)
    query = telemetry.span("execute_tool sql_execution")
    assert query.end_time is not None and query.start_time is not None
    assert query.end_time - query.start_time == 3_500_000_000
    left = telemetry.span("reasoning")
    assert (left.attributes or {})["error.type"] == "abandoned"
    turn = telemetry.span("invoke_agent codex")
    assert turn.status.status_code is StatusCode.ERROR
    assert turn.status.description == "model overloaded"
    assert turn.end_time is not None and turn.start_time is not None
    assert turn.end_time - turn.start_time == 5_000_000_000


def test_each_turn_is_its_own_trace_and_an_unfinished_turn_is_abandoned(
        telemetry: Telemetry) -> None:
    lines = ['{"type":"turn.started"}', '{"type":"turn.completed","usage":{"input_tokens":1,'
             '"cached_input_tokens":0,"output_tokens":1}}', '{"type":"turn.started"}',
             '{"type":"item.started","item":{"id":"x","type":"command_execution"}}']
    result = ingester(telemetry).feed_lines(lines)
    assert result.turns == 2 and len(set(result.trace_ids)) == 2
    turns = [s for s in telemetry.spans() if s.name == "invoke_agent codex"]
    assert [s.parent for s in turns] == [None, None]
    assert (turns[1].attributes or {})["error.type"] == "abandoned"


def test_cli_reports_bad_lines_and_still_ingests_the_rest(tmp_path: Path) -> None:
    stream = SAMPLE.read_text() + "not json\n" + '{"type":"item.completed"}\n'
    run = subprocess.run(
        [sys.executable, "-m", "otel_events", "ingest", "-"], input=stream, text=True,
        capture_output=True,
        env={"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none",
             "PATH": "", "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert run.returncode == 1
    assert "line 11: event: Invalid JSON" in run.stderr
    assert "line 12: item.completed.item: Field required" in run.stderr
    assert "ingested 1 turns, 5 items from 12 lines (2 rejected)" in run.stderr
    names = [json.loads(chunk)["name"] for chunk in _json_objects(run.stdout)]
    assert sorted(names) == sorted(["invoke_agent agent", "reasoning", "file_change",
                                    "agent_message"] + ["execute_tool command_execution"] * 2)


def test_a_valid_but_unplaceable_timestamp_rejects_only_its_line(telemetry: Telemetry) -> None:
    lines = ['{"type":"turn.started","timestamp":"2016-12-31T23:59:60Z"}',  # a leap second
             '{"type":"turn.started","timestamp":"2026-11-25T08:00:00Z"}',
             '{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":0,'
             '"output_tokens":1}}']
    result = ingester(telemetry).feed_lines(lines)
    assert [number for number, _ in result.rejected] == [1]
    assert result.rejected[0][1].startswith("timestamp:")
    assert result.turns == 1


def _json_objects(text: str) -> list[str]:
    """ConsoleSpanExporter prints indented JSON objects one after another."""
    decoder, out, index = json.JSONDecoder(), [], 0
    while (index := text.find("{", index)) != -1:
        obj, end = decoder.raw_decode(text, index)
        out.append(json.dumps(obj))
        index = end
    return out
