"""Metrics: semconv names and buckets, bounded attributes, turns by outcome."""

from __future__ import annotations

import pytest

from otel_events import EventEmitter
from otel_events.metrics import AGENT_BUCKETS, TOOL_BUCKETS

from .conftest import Telemetry


def test_durations_counters_and_tokens(emitter: EventEmitter, telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("sql_execution", "q", name="sqlite").complete()
        turn.item("guardrail_check", "g").fail("blocked", error_type="blocked")
        turn.add_usage(input_tokens=50, output_tokens=7)
    with pytest.raises(ValueError), emitter.turn():
        raise ValueError("boom")
    metrics = telemetry.metrics()

    agent = metrics["gen_ai.invoke_agent.duration"]
    assert {dp.attributes.get("error.type") for dp in agent} == {None, "ValueError"}
    assert list(agent[0].explicit_bounds) == AGENT_BUCKETS
    assert AGENT_BUCKETS[0] == 0.1 and AGENT_BUCKETS[-1] == 409.6

    # Each item in exactly one histogram: tool calls in the GenAI one, with the item type
    # and status beside the tool name; the other items in otel_events.item.duration.
    tool = metrics["gen_ai.execute_tool.duration"]
    assert [dict(dp.attributes) for dp in tool] == [
        {"gen_ai.tool.name": "sqlite", "otel_events.item.type": "sql_execution",
         "otel_events.item.status": "completed"}]
    assert list(tool[0].explicit_bounds) == TOOL_BUCKETS and TOOL_BUCKETS[-1] == 81.92
    assert [dict(dp.attributes) for dp in metrics["otel_events.item.duration"]] == [
        {"otel_events.item.type": "guardrail_check", "otel_events.item.status": "failed",
         "error.type": "blocked"}]

    turns = {dp.attributes["otel_events.turn.outcome"]: dp.value
             for dp in metrics["otel_events.turns"]}
    assert turns == {"completed": 1, "failed": 1}

    tokens = {dp.attributes["gen_ai.token.type"]: dp.sum
              for dp in metrics["gen_ai.client.token.usage"]}
    assert tokens == {"input": 50, "output": 7}

    # No unbounded values (thread, turn or item ids) on any metric.
    for points in metrics.values():
        for dp in points:
            for key, value in dp.attributes.items():
                assert "id" not in key.split(".")[-1], key
                assert value not in ("thread-1", "turn_1", "item_1")


def test_a_failed_tool_step_is_one_point_with_its_status_and_error_type(
        emitter: EventEmitter, telemetry: Telemetry) -> None:
    with emitter.turn() as turn:
        turn.item("command_execution", "c", name="sh").fail(RuntimeError("exit 2"))
        turn.item("command_execution", "c", name="sh").cancel()
    metrics = telemetry.metrics()
    assert "otel_events.item.duration" not in metrics
    points = {dp.attributes["otel_events.item.status"]: dict(dp.attributes)
              for dp in metrics["gen_ai.execute_tool.duration"]}
    assert points == {
        "failed": {"gen_ai.tool.name": "sh", "otel_events.item.type": "command_execution",
                   "otel_events.item.status": "failed", "error.type": "RuntimeError"},
        "cancelled": {"gen_ai.tool.name": "sh", "otel_events.item.type": "command_execution",
                      "otel_events.item.status": "cancelled", "error.type": "cancelled"}}
