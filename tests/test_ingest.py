"""Ingest: a Codex stream becomes the spans and metrics the emitter would have made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from otel_events import ingest as ingest_module
from otel_events.ingest import Ingester
from otel_events.metrics import AgentMetrics

from .codex.expected import (
    AGENT,
    EXPECTED,
    TURN_SPAN,
    attrs,
    check,
    items,
    turn_outcomes,
    turns,
)
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
    # A failed command's error.type is its exit code (GenAI command tool spans).
    assert first["error.type"] == "1" and first["process.exit.code"] == 1
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


def test_cli_gives_a_resumed_session_alone_its_own_usage_with_a_usage_state(
        tmp_path: Path) -> None:
    # Found in the Codex work: ingesting a resumed run's stream on its own reported
    # Codex's session sum (1100) as the turn's usage; only `run` kept the earlier sums.
    first, second = _split_runs(recorded("resume"))
    state = tmp_path / "usage.json"

    def ingest(lines: list[str], *options: str) -> list[int]:
        run = subprocess.run(
            [sys.executable, "-m", "otel_events", "ingest", "-", *options],
            input="\n".join(lines) + "\n", text=True, capture_output=True, check=True,
            env={"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none",
                 "PATH": "", "PYTHONPATH": str(Path(__file__).parents[1])})
        return [span["attributes"]["gen_ai.usage.input_tokens"]
                for span in map(json.loads, _json_objects(run.stdout))
                if span["name"].startswith("invoke_agent")]

    assert ingest(second) == [1100]  # alone, nothing tells the earlier sum apart
    assert ingest(first, "--usage-state", str(state)) == [100]
    assert ingest(second, "--usage-state", str(state)) == [1000]


def test_a_line_whose_type_is_not_a_string_is_rejected_alone(telemetry: Telemetry) -> None:
    lines = ['{"type":["turn.started"]}', '{"type":"turn.started"}',
             '{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":0,'
             '"output_tokens":1}}']
    result = ingester(telemetry).feed_lines(lines)
    assert [number for number, _ in result.rejected] == [1]
    assert result.turns == 1


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


# --- streams recorded from the real Codex CLI (tests/codex/, tests/fixtures/codex/) ------

CODEX = FIXTURES / "codex"


def recorded(name: str) -> list[str]:
    return (CODEX / f"{name}.jsonl").read_text().splitlines()


def codex_ingester(telemetry: Telemetry, **options: Any) -> Ingester:
    return Ingester(telemetry.tracer_provider.get_tracer("t"),
                    AgentMetrics(telemetry.meter_provider.get_meter("t")), AGENT, **options)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_recorded_codex_stream_gives_the_expected_trace(name: str,
                                                        telemetry: Telemetry) -> None:
    result = codex_ingester(telemetry).feed_lines(recorded(name))
    assert result.rejected == []
    check(name, telemetry)


def test_an_error_item_before_turn_started_opens_no_turn(telemetry: Telemetry) -> None:
    """Codex's "Model metadata ... not found" comes before turn.started: one trace, one
    completed turn, no abandoned phantom turn to page anyone."""
    result = codex_ingester(telemetry).feed_lines(recorded("unknown_model"))
    assert result.turns == 1 and len(result.trace_ids) == 1
    assert turn_outcomes(telemetry) == {"completed": 1}
    assert all(attrs(span).get("error.type") is None for span in telemetry.spans())


def test_an_error_item_with_no_turn_after_it_stays_with_the_thread(
        telemetry: Telemetry) -> None:
    lines = recorded("unknown_model")[:2]  # thread.started, the error item; then nothing
    result = codex_ingester(telemetry).feed_lines(lines)
    assert result.turns == 0 and telemetry.metrics().get("otel_events.turns") is None
    (warning,) = telemetry.spans()
    assert warning.name == "error" and warning.parent is None
    assert warning.status.status_code is StatusCode.UNSET
    assert attrs(warning)["gen_ai.conversation.id"] == json.loads(lines[0])["thread_id"]


def test_top_level_error_events_mark_the_turn_without_failing_it(
        telemetry: Telemetry) -> None:
    codex_ingester(telemetry).feed_lines(recorded("stream_retry"))
    (turn,) = turns(telemetry)
    assert [e.name for e in turn.events] == ["error"]
    assert turn.status.status_code is StatusCode.UNSET
    assert turn_outcomes(telemetry) == {"completed": 1}


def test_fields_known_at_completion_refresh_the_span(telemetry: Telemetry) -> None:
    lines = recorded("web_search")
    assert lines[2].count('"id":') == 2  # Codex writes `id` twice in web_search items
    codex_ingester(telemetry).feed_lines(lines)
    span = telemetry.span("execute_tool web_search")
    assert attrs(span)["otel_events.item.description"].startswith("Searching for ")
    assert attrs(span)["otel_events.item.id"] == "item_0"


def test_a_failed_command_carries_its_exit_code(telemetry: Telemetry) -> None:
    codex_ingester(telemetry).feed_lines(recorded("command_fails"))
    span = telemetry.span("execute_tool command_execution")
    assert attrs(span)["process.exit.code"] == 2 and attrs(span)["error.type"] == "2"
    points = telemetry.metrics()["gen_ai.execute_tool.duration"]
    assert [p.attributes.get("error.type") for p in points] == ["2"]


def test_cache_write_and_reasoning_tokens_reach_the_turn_span(telemetry: Telemetry) -> None:
    codex_ingester(telemetry).feed_lines(recorded("command_ok"))
    a = attrs(telemetry.span(TURN_SPAN))
    assert a["gen_ai.usage.cache_write.input_tokens"] == 10
    assert a["gen_ai.usage.reasoning.output_tokens"] == 6


def test_usage_of_a_resumed_session_is_reported_per_turn(telemetry: Telemetry) -> None:
    codex_ingester(telemetry).feed_lines(recorded("resume"))
    inputs = sorted(p.sum for p in telemetry.metrics()["gen_ai.client.token.usage"]
                    if p.attributes["gen_ai.token.type"] == "input")
    assert inputs == [1100]  # 100 + 1000, not 100 + 1100
    assert [attrs(t)["gen_ai.usage.input_tokens"] for t in turns(telemetry)] == [100, 1000]


def test_usage_ledger_gives_per_turn_usage_across_runs_and_replays(
        telemetry: Telemetry, tmp_path: Path) -> None:
    first, second = _split_runs(recorded("resume"))
    state = tmp_path / "usage.json"
    for lines in (first, second, second):  # the resumed run, then a replay of it
        codex_ingester(telemetry, usage=ingest_module.UsageLedger(state)).feed_lines(lines)
    assert [attrs(t)["gen_ai.usage.input_tokens"] for t in turns(telemetry)] == [
        100, 1000, 1000]


def test_a_sub_agent_thread_continues_the_trace_of_its_spawn(telemetry: Telemetry) -> None:
    parent = recorded("collab")
    spawned = json.loads(parent[3])["item"]["receiver_thread_ids"][0]
    child = [json.dumps({"type": "thread.started", "thread_id": spawned}),
             '{"type":"turn.started"}',
             '{"type":"item.completed","item":{"id":"item_0","type":"agent_message",'
             '"text":"There are 3 files."}}',
             '{"type":"turn.completed","usage":{"input_tokens":1,"cached_input_tokens":0,'
             '"output_tokens":1}}']
    ingester = codex_ingester(telemetry)
    ingester.feed_lines(parent)
    ingester.feed_lines(child)
    spawn = telemetry.span("execute_tool spawn_agent")
    child_turn = next(t for t in turns(telemetry)
                      if attrs(t)["gen_ai.conversation.id"] == spawned)
    assert spawn.context is not None and child_turn.parent is not None
    assert child_turn.parent.span_id == spawn.context.span_id
    assert child_turn.context is not None
    assert child_turn.context.trace_id == spawn.context.trace_id


def _split_runs(lines: list[str]) -> tuple[list[str], list[str]]:
    starts = [i for i, line in enumerate(lines) if '"thread.started"' in line]
    return lines[:starts[1]], lines[starts[1]:]


def test_a_new_stream_in_the_same_file_ends_what_the_last_one_left_open(
        telemetry: Telemetry) -> None:
    """An interrupted run, then another appended (`run --events` appends): the first
    turn is abandoned where its stream stopped, and the second run's early warning goes
    to the second run's turn."""
    result = codex_ingester(telemetry).feed_lines(recorded("sigint")
                                                  + recorded("unknown_model"))
    assert result.turns == 2
    first, second = turns(telemetry)
    assert attrs(first)["error.type"] == "abandoned"
    assert "error.type" not in attrs(second)
    assert [s.name for s in items(telemetry, second)] == ["error", "agent_message"]
    assert [s.name for s in items(telemetry, first)] == ["execute_tool command_execution"]


def test_a_stamped_stream_that_stops_mid_turn_ends_at_its_last_event(
        telemetry: Telemetry) -> None:
    lines = ['{"type":"turn.started","timestamp":"2026-11-25T08:00:00Z"}',
             '{"type":"item.started","timestamp":"2026-11-25T08:00:02Z",'
             '"item":{"id":"a","type":"command_execution","command":"sleep 9"}}']
    codex_ingester(telemetry).feed_lines(lines)  # replayed long after 08:00:02
    (turn,) = turns(telemetry)
    assert turn.end_time is not None and turn.start_time is not None
    assert turn.end_time - turn.start_time == 2_000_000_000
    assert attrs(turn)["error.type"] == "abandoned"
